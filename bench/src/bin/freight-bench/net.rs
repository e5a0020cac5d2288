//! `freight-bench quic-raw` and `freight-bench throttle`: chunk transport over loopback QUIC
//! inside this process ([`freight_bench::loopback`]), against `iperf3` over loopback TCP, and
//! the accuracy of the route limiter on the real clock.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use freight_bench::harness::{self, Table};
use freight_bench::loopback::{self, PathReport, Sites, StreamOptions, StreamRun};
use freight_bench::servers;
use freight_transport::quic::NodeConfig;
use freight_transport::{RouteLimiter, RouteThrottle, SystemClock};
use serde::Serialize;

use crate::{BenchError, LabeledCommand, command_line, ctx, print_goal, remove_path, write_report};

/// `quic-raw` goal: Freight's QUIC chunk throughput at least this fraction of iperf3's TCP.
const GOAL_QUIC_RATIO: f64 = 0.35;
/// `throttle` goal: measured rates within this fraction of the configured ones.
const GOAL_THROTTLE_TOLERANCE: f64 = 0.03;
/// `throttle` goal: a rate change is reached (see [`loopback::reach_time`]) within this long.
const GOAL_CHANGE_LATENCY: Duration = Duration::from_secs(1);
/// Distinct in-memory chunks the sender cycles through.
const MEMORY_CHUNKS: usize = 16;
/// Moving-rate window of the rate-change measurement.
const CHANGE_WINDOW: Duration = Duration::from_millis(250);
/// Arrival bins of the throttle runs (finer than reported, for the moving window).
const THROTTLE_BIN: Duration = Duration::from_millis(10);
/// Arrival bins reported in the JSON.
const REPORT_BIN: Duration = Duration::from_millis(100);

/// QUIC endpoint tunables, passed to both nodes (default: `NodeConfig::default()`).
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Parallel unidirectional data streams.
    #[arg(long, default_value_t = NodeConfig::default().data_streams)]
    streams: u16,
    /// UDP payload size to start with (NodeConfig::initial_mtu).
    #[arg(long)]
    initial_mtu: Option<u16>,
    /// Largest UDP payload MTU discovery may reach (NodeConfig::max_udp_payload).
    #[arg(long)]
    max_udp_payload: Option<u16>,
    /// Receive window per stream, e.g. 4MiB (NodeConfig::stream_window).
    #[arg(long, value_parser = harness::parse_size)]
    stream_window: Option<u64>,
    /// Receive window per connection (NodeConfig::connection_window).
    #[arg(long, value_parser = harness::parse_size)]
    connection_window: Option<u64>,
    /// Unacknowledged bytes in flight per connection (NodeConfig::send_window).
    #[arg(long, value_parser = harness::parse_size)]
    send_window: Option<u64>,
}

impl NodeArgs {
    fn config(&self) -> Result<NodeConfig, BenchError> {
        let d = NodeConfig::default();
        let window = |v: Option<u64>, dflt: u32, what: &str| -> Result<u32, BenchError> {
            v.map_or(Ok(dflt), |v| {
                u32::try_from(v)
                    .map_err(|_| BenchError::Failed(format!("--{what} {v}: at most 4 GiB - 1")))
            })
        };
        Ok(NodeConfig {
            data_streams: self.streams.max(1),
            initial_mtu: self.initial_mtu.unwrap_or(d.initial_mtu),
            max_udp_payload: self.max_udp_payload.unwrap_or(d.max_udp_payload),
            stream_window: window(self.stream_window, d.stream_window, "stream-window")?,
            connection_window: window(
                self.connection_window,
                d.connection_window,
                "connection-window",
            )?,
            send_window: self.send_window.unwrap_or(d.send_window),
            ..d
        })
    }
}

/// Arguments of `freight-bench quic-raw`.
#[derive(Debug, Args)]
pub struct QuicRawArgs {
    /// Seconds each run sends (QUIC) or runs (`iperf3 -t`).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Runs of each side (iperf3 and QUIC alternate).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    #[command(flatten)]
    node: NodeArgs,
    /// Size of each chunk.
    #[arg(long, value_parser = harness::parse_size, default_value = "1MiB")]
    chunk_size: u64,
    /// Largest piece handed to quinn at once (push sessions use 64 KiB).
    #[arg(long, value_parser = harness::parse_size, default_value = "64KiB")]
    slice: u64,
    /// The iperf3 binary.
    #[arg(long, default_value = "iperf3")]
    iperf3: PathBuf,
    /// Run only the QUIC side (for sweeps of the node settings): no ratio, no goal.
    #[arg(long)]
    skip_iperf3: bool,
    /// Scratch directory (the two sites' keys go in WORK/quic-sites).
    #[arg(long, default_value = "/tmp/freight-bench-data")]
    work: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Arguments of `freight-bench throttle`.
#[derive(Debug, Args)]
pub struct ThrottleArgs {
    /// Rates to hold, comma-separated (MB = 10^6 bytes), each as in `daily RATE`.
    #[arg(long, value_delimiter = ',', default_value = "1MB/s,10MB/s,50MB/s")]
    rates: Vec<String>,
    /// Seconds each rate is held.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..))]
    seconds: u32,
    /// Seconds at the start of each run left out of the measured rate.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The two rates of the rate-change runs: A→B, then B→A.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 1,
        default_value = "10MB/s,50MB/s"
    )]
    change_rates: Vec<String>,
    /// Seconds into a rate-change run at which the rate changes.
    #[arg(long, default_value_t = 5.0)]
    change_at: f64,
    /// Length of a rate-change run, seconds.
    #[arg(long, default_value_t = 10.0)]
    change_seconds: f64,
    #[command(flatten)]
    node: NodeArgs,
    /// Scratch directory (the two sites' keys go in WORK/quic-sites).
    #[arg(long, default_value = "/tmp/freight-bench-data")]
    work: PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Fresh sites in `WORK/quic-sites`.
fn fresh_sites(work: &std::path::Path) -> Result<Sites, BenchError> {
    let dir = work.join("quic-sites");
    remove_path(&dir)?;
    fs::create_dir_all(&dir).map_err(ctx(format!("creating {}", dir.display())))?;
    Ok(Sites::create(&dir)?)
}

/// CPU time (user + system) this process used so far.
fn process_cpu() -> Duration {
    // SAFETY: rusage is a plain C struct for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid and writable for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn in_process_description(opts: &StreamOptions, chunk_size: u64) -> String {
    format!(
        "in this process (tokio multi-thread runtime): freight_transport::quic nodes CAS -> PS1 on \
         127.0.0.1, {} unidirectional streams, {MEMORY_CHUNKS} distinct {} random chunks from memory \
         round-robin as Chunk frames (chunk_header + data as {} write_chunk slices), receiver \
         read_chunk + FrameDecoder; {:?}",
        opts.node.data_streams,
        freight_core::units::human(chunk_size),
        freight_core::units::human(opts.slice as u64),
        opts.node
    )
}

/// One run of one side of `quic-raw`.
#[derive(Debug, Serialize)]
struct NetRun {
    side: &'static str,
    run: u32,
    /// Seconds the receiver measured over.
    seconds: f64,
    /// Payload bytes received.
    bytes: u64,
    /// Payload MB/s (10^6 bytes per second).
    mb_per_s: f64,
    /// CPU seconds of both ends (iperf3: host + remote as iperf3 reports them; QUIC: this
    /// process during the run).
    cpu_s: f64,
    /// TCP retransmits (iperf3) or lost packets (QUIC).
    lost: u64,
    /// The QUIC connection's path statistics (QUIC side only).
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathReport>,
    /// MB/s in each whole second of the run (QUIC side only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    per_second_mb: Vec<f64>,
}

/// Summary of one side over all runs.
#[derive(Debug, Serialize)]
struct NetSide {
    best_mb_per_s: f64,
    median_mb_per_s: f64,
    median_cpu_s: f64,
}

impl NetSide {
    fn of(side: &str, runs: &[NetRun]) -> NetSide {
        let mine: Vec<&NetRun> = runs.iter().filter(|r| r.side == side).collect();
        let speeds: Vec<f64> = mine.iter().map(|r| r.mb_per_s).collect();
        NetSide {
            best_mb_per_s: speeds.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median_mb_per_s: harness::median(&speeds),
            median_cpu_s: harness::median(&mine.iter().map(|r| r.cpu_s).collect::<Vec<_>>()),
        }
    }
}

/// Everything `quic-raw` measured; the JSON report.
#[derive(Debug, Serialize)]
struct QuicRawReport {
    benchmark: &'static str,
    commands: Vec<LabeledCommand>,
    runs: Vec<NetRun>,
    /// `None` with `--skip-iperf3`, as are the ratios and the goal.
    iperf3: Option<NetSide>,
    quic: NetSide,
    /// QUIC median / iperf3 median throughput.
    ratio_median: Option<f64>,
    /// QUIC best / iperf3 best throughput.
    ratio_best: Option<f64>,
    goal_ratio_min: f64,
    goal_met: Option<bool>,
}

const IPERF3_SIDE: &str = "iperf3 tcp";
const QUIC_SIDE: &str = "freight quic";

pub fn quic_raw(args: &QuicRawArgs) -> Result<(), BenchError> {
    let node = args.node.config()?;
    let chunk_size = usize::try_from(args.chunk_size)
        .ok()
        .filter(|&s| s > 0 && s <= freight_transport::protocol::MAX_CHUNK_DATA)
        .ok_or_else(|| {
            BenchError::Failed(format!(
                "--chunk-size {}: give 1 byte to {} bytes",
                args.chunk_size,
                freight_transport::protocol::MAX_CHUNK_DATA
            ))
        })?;
    let slice = usize::try_from(args.slice)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| BenchError::Failed("--slice must be at least 1 byte".into()))?;
    fs::create_dir_all(&args.work).map_err(ctx(format!("creating {}", args.work.display())))?;
    let sites = fresh_sites(&args.work)?;
    let chunks = loopback::random_chunks(MEMORY_CHUNKS, chunk_size);
    let opts = StreamOptions {
        node,
        duration: Duration::from_secs(args.seconds.into()),
        slice,
        bin: REPORT_BIN,
        limiter: None,
        changes: Vec::new(),
    };
    let port = servers::free_tcp_port()?;
    let mut server = Command::new(&args.iperf3);
    server.args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()]);
    let mut client = Command::new(&args.iperf3);
    client.args(["-c", "127.0.0.1", "-p", &port.to_string()]);
    client.args(["-t", &args.seconds.to_string(), "-J"]);
    let mut commands = Vec::new();
    if !args.skip_iperf3 {
        commands.push(LabeledCommand::new("iperf3 server", command_line(&server)));
        commands.push(LabeledCommand::new("iperf3 client", command_line(&client)));
    }
    commands.push(LabeledCommand::new(
        QUIC_SIDE,
        in_process_description(&opts, args.chunk_size),
    ));
    let rt = runtime()?;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        if !args.skip_iperf3 {
            let r = iperf3_run(&mut server, &mut client, port, run)?;
            eprintln!(
                "{IPERF3_SIDE} run {run}/{}: {:.1} MB/s",
                args.runs, r.mb_per_s
            );
            runs.push(r);
        }
        let cpu = process_cpu();
        let m = rt.block_on(loopback::stream_chunks(&sites, &chunks, &opts))?;
        let cpu = process_cpu().saturating_sub(cpu);
        let r = quic_run(&m, run, cpu);
        eprintln!(
            "{QUIC_SIDE} run {run}/{}: {:.1} MB/s (MTU {}, {} lost packets)",
            args.runs, r.mb_per_s, m.path.mtu, m.path.lost_packets
        );
        runs.push(r);
    }
    let iperf3 = (!args.skip_iperf3).then(|| NetSide::of(IPERF3_SIDE, &runs));
    let quic = NetSide::of(QUIC_SIDE, &runs);
    let ratio_median = iperf3
        .as_ref()
        .map(|i| quic.median_mb_per_s / i.median_mb_per_s);
    let report = QuicRawReport {
        benchmark: "quic-raw",
        commands,
        runs,
        ratio_best: iperf3
            .as_ref()
            .map(|i| quic.best_mb_per_s / i.best_mb_per_s),
        ratio_median,
        iperf3,
        quic,
        goal_ratio_min: GOAL_QUIC_RATIO,
        goal_met: ratio_median.map(|r| r >= GOAL_QUIC_RATIO),
    };
    print_quic_raw(&report);
    write_report(args.json.as_deref(), &report)
}

fn quic_run(m: &StreamRun, run: u32, cpu: Duration) -> NetRun {
    if m.sent_payload_bytes != m.payload_bytes {
        eprintln!(
            "warning: sent {} payload bytes, received {}",
            m.sent_payload_bytes, m.payload_bytes
        );
    }
    let whole_seconds = m.elapsed.as_secs();
    let per_second_mb = (0..whole_seconds)
        .filter_map(|s| {
            let from = Duration::from_secs(s);
            loopback::rate_between(&m.bins, m.bin, from, from + Duration::from_secs(1))
        })
        .map(|r| r / 1e6)
        .collect();
    NetRun {
        side: QUIC_SIDE,
        run,
        seconds: m.elapsed.as_secs_f64(),
        bytes: m.payload_bytes,
        mb_per_s: m.payload_bytes_per_s / 1e6,
        cpu_s: cpu.as_secs_f64(),
        lost: m.path.lost_packets,
        path: Some(m.path),
        per_second_mb,
    }
}

/// Starts `server` (`iperf3 -s -1`), waits until it listens on `port`, runs `client`
/// (`iperf3 -c ... -J`) and reads the receiver's throughput from its JSON.
fn iperf3_run(
    server: &mut Command,
    client: &mut Command,
    port: u16,
    run: u32,
) -> Result<NetRun, BenchError> {
    let mut child = server
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(ctx(format!(
            "starting {} (apt-get install iperf3)",
            command_line(server)
        )))?;
    let listening = servers::wait_listening(port, Duration::from_secs(10), || {
        servers::still_running(&mut child, "iperf3 server")
    });
    let out = listening.and_then(|()| client.stdin(Stdio::null()).output());
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.into());
        }
    };
    // `-s -1` exits after its one test; do not wait forever if it does not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        BenchError::Failed(format!(
            "iperf3 client printed no JSON ({e}): {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        return Err(BenchError::Failed(format!("iperf3 client: {err}")));
    }
    if !out.status.success() {
        return Err(BenchError::ChildFailed {
            what: command_line(client),
            status: out.status,
        });
    }
    let end = &json["end"];
    let received = &end["sum_received"];
    let (Some(bps), Some(bytes), Some(seconds)) = (
        received["bits_per_second"].as_f64(),
        received["bytes"].as_u64(),
        received["seconds"].as_f64(),
    ) else {
        return Err(BenchError::Failed(format!(
            "iperf3 JSON has no end.sum_received bits_per_second/bytes/seconds: {}",
            text.trim()
        )));
    };
    let cpu = &end["cpu_utilization_percent"];
    let cpu_pct =
        cpu["host_total"].as_f64().unwrap_or(0.0) + cpu["remote_total"].as_f64().unwrap_or(0.0);
    Ok(NetRun {
        side: IPERF3_SIDE,
        run,
        seconds,
        bytes,
        mb_per_s: bps / 8.0 / 1e6,
        cpu_s: cpu_pct / 100.0 * seconds,
        lost: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        path: None,
        per_second_mb: Vec::new(),
    })
}

fn print_commands(commands: &[LabeledCommand]) {
    let width = commands.iter().map(|c| c.step.len() + 1).max().unwrap_or(0);
    for c in commands {
        println!("{:<width$} {}", format!("{}:", c.step), c.command);
    }
    println!();
}

fn print_quic_raw(r: &QuicRawReport) {
    print_commands(&r.commands);
    let mut runs = Table::new([
        "side",
        "run",
        "seconds",
        "MB/s",
        "CPU s",
        "lost/retr",
        "MTU",
        "datagrams",
        "send calls",
    ]);
    for run in &r.runs {
        let (mtu, datagrams, ios) = match run.path {
            Some(p) => (
                p.mtu.to_string(),
                p.udp_datagrams.to_string(),
                p.udp_ios.to_string(),
            ),
            None => Default::default(),
        };
        runs.row([
            run.side.to_owned(),
            run.run.to_string(),
            format!("{:.2}", run.seconds),
            format!("{:.1}", run.mb_per_s),
            format!("{:.2}", run.cpu_s),
            run.lost.to_string(),
            mtu,
            datagrams,
            ios,
        ]);
    }
    print!("{runs}");
    println!();
    let (Some(iperf3), Some(ratio_median), Some(ratio_best), Some(met)) =
        (&r.iperf3, r.ratio_median, r.ratio_best, r.goal_met)
    else {
        println!("no iperf3 runs (--skip-iperf3): no ratio, no goal");
        return;
    };
    let mut summary = Table::new(["", "iperf3 tcp", "freight quic", "quic/iperf3"]);
    summary
        .figures(
            "best MB/s",
            iperf3.best_mb_per_s,
            r.quic.best_mb_per_s,
            1,
            format!("{ratio_best:.3}"),
        )
        .figures(
            "median MB/s",
            iperf3.median_mb_per_s,
            r.quic.median_mb_per_s,
            1,
            format!("{ratio_median:.3}"),
        )
        .figures(
            "median CPU s",
            iperf3.median_cpu_s,
            r.quic.median_cpu_s,
            2,
            String::new(),
        );
    print!("{summary}");
    println!();
    print_goal(
        &format!(
            "freight quic / iperf3 tcp median throughput >= {:.2}",
            r.goal_ratio_min
        ),
        met,
        &format!("{ratio_median:.3}"),
    );
}

/// A rate as given and as the limiter paces it.
struct Rate {
    text: String,
    throttle: RouteThrottle,
    bytes_per_s: u64,
}

fn parse_rate(text: &str) -> Result<Rate, BenchError> {
    // Only a fixed rate can be held and measured: a size or a bit rate per second, read as
    // every rate in Freight is.
    let bytes_per_s = freight_core::units::parse_rate(text).map_err(|e| {
        BenchError::Failed(format!("rate {text:?} does not pace at a fixed rate: {e}"))
    })?;
    let throttle = RouteThrottle::constant(freight_transport::Rate::BytesPerSec(bytes_per_s))?;
    Ok(Rate {
        text: text.to_owned(),
        throttle,
        bytes_per_s,
    })
}

/// One held rate of `throttle`.
#[derive(Debug, Serialize)]
struct HeldRate {
    rate: String,
    configured_bytes_per_s: u64,
    /// Bytes per second received from the end of the warm-up to the end of the run.
    measured_bytes_per_s: f64,
    error_pct: f64,
    /// The largest error of any whole second after the warm-up.
    worst_second_error_pct: f64,
    met: bool,
    /// Stream bytes received per 100 ms.
    bins_100ms: Vec<u64>,
}

/// One rate-change run of `throttle`.
#[derive(Debug, Serialize)]
struct RateChange {
    from: String,
    to: String,
    /// When `set_throttle` was called, seconds from the start.
    changed_at_s: f64,
    /// Rate from the end of the warm-up to the change, bytes per second.
    before_bytes_per_s: Option<f64>,
    /// See [`loopback::reach_time`]; `None` if the new rate was never reached.
    reach_s: Option<f64>,
    /// Rate from the later of (change + reach time) and (change + window) to the end, bytes
    /// per second, and its error against the new rate.
    after_bytes_per_s: Option<f64>,
    after_error_pct: Option<f64>,
    /// The largest error of the moving rate over that span ([`loopback::worst_window_error`]).
    worst_window_error_pct: Option<f64>,
    /// Reach time within the goal and the rate after it within the tolerance.
    met: bool,
    bins_100ms: Vec<u64>,
}

/// Everything `throttle` measured; the JSON report.
#[derive(Debug, Serialize)]
struct ThrottleReport {
    benchmark: &'static str,
    setup: String,
    seconds: u32,
    warmup_s: f64,
    tolerance_pct: f64,
    change_window_s: f64,
    change_latency_max_s: f64,
    rates: Vec<HeldRate>,
    changes: Vec<RateChange>,
    goals_met: bool,
}

/// Sums `bins` of width `bin` into bins of width `to` (a multiple of `bin`).
fn rebin(bins: &[u64], bin: Duration, to: Duration) -> Vec<u64> {
    let n = usize::try_from(to.as_nanos() / bin.as_nanos().max(1))
        .unwrap_or(1)
        .max(1);
    bins.chunks(n).map(|c| c.iter().sum()).collect()
}

fn secs(s: f64, what: &str) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| BenchError::Failed(format!("--{what} {s}: give a number of seconds")))
}

pub fn throttle(args: &ThrottleArgs) -> Result<(), BenchError> {
    let rates = args
        .rates
        .iter()
        .map(|t| parse_rate(t))
        .collect::<Result<Vec<_>, _>>()?;
    let [a, b] = args.change_rates.as_slice() else {
        return Err(BenchError::Failed(
            "--change-rates takes two rates, e.g. 10MB/s,50MB/s".into(),
        ));
    };
    let (a, b) = (parse_rate(a)?, parse_rate(b)?);
    let warmup = secs(args.warmup, "warmup")?;
    let change_at = secs(args.change_at, "change-at")?;
    let change_len = secs(args.change_seconds, "change-seconds")?;
    let seconds = Duration::from_secs(args.seconds.into());
    if warmup >= seconds || change_at <= warmup || change_at >= change_len {
        return Err(BenchError::Failed(
            "need warm-up < change-at < change-seconds and warm-up < seconds".into(),
        ));
    }
    fs::create_dir_all(&args.work).map_err(ctx(format!("creating {}", args.work.display())))?;
    let sites = fresh_sites(&args.work)?;
    let chunks = loopback::random_chunks(MEMORY_CHUNKS, 1 << 20);
    let base = StreamOptions {
        node: args.node.config()?,
        duration: seconds,
        slice: freight_transport::throttle::SLICE as usize,
        bin: THROTTLE_BIN,
        limiter: None,
        changes: Vec::new(),
    };
    let setup = format!(
        "{}; every 64 KiB slice paced by one RouteLimiter (SystemClock) with `daily RATE`, \
         each chunk admitted first, as push sessions do",
        in_process_description(&base, 1 << 20)
    );
    let rt = runtime()?;
    let tolerance = GOAL_THROTTLE_TOLERANCE;

    let mut held = Vec::new();
    for rate in &rates {
        eprintln!("holding {} for {} s ...", rate.text, args.seconds);
        let limiter = RouteLimiter::new(rate.throttle.clone(), Arc::new(SystemClock));
        let opts = StreamOptions {
            limiter: Some(limiter),
            ..base.clone()
        };
        let m = rt.block_on(loopback::stream_chunks(&sites, &chunks, &opts))?;
        let target = rate.bytes_per_s as f64;
        let measured = loopback::rate_between(&m.bins, m.bin, warmup, seconds).unwrap_or(0.0);
        let error = measured / target - 1.0;
        let first = warmup.as_secs_f64().ceil() as u64;
        let worst = (first..seconds.as_secs())
            .filter_map(|s| {
                let from = Duration::from_secs(s);
                loopback::rate_between(&m.bins, m.bin, from, from + Duration::from_secs(1))
            })
            .map(|r| r / target - 1.0)
            .fold(0.0f64, |w, e| if e.abs() > w.abs() { e } else { w });
        eprintln!(
            "{}: measured {:.4} MB/s ({:+.2}%)",
            rate.text,
            measured / 1e6,
            error * 100.0
        );
        held.push(HeldRate {
            rate: rate.text.clone(),
            configured_bytes_per_s: rate.bytes_per_s,
            measured_bytes_per_s: measured,
            error_pct: error * 100.0,
            worst_second_error_pct: worst * 100.0,
            met: error.abs() <= tolerance,
            bins_100ms: rebin(&m.bins, m.bin, REPORT_BIN),
        });
    }

    let mut changes = Vec::new();
    for (from, to) in [(&a, &b), (&b, &a)] {
        eprintln!(
            "changing {} -> {} after {:.1} s ...",
            from.text,
            to.text,
            change_at.as_secs_f64()
        );
        let limiter = RouteLimiter::new(from.throttle.clone(), Arc::new(SystemClock));
        let opts = StreamOptions {
            duration: change_len,
            limiter: Some(limiter),
            changes: vec![(change_at, to.throttle.clone())],
            ..base.clone()
        };
        let m = rt.block_on(loopback::stream_chunks(&sites, &chunks, &opts))?;
        let changed = m.changes_at.first().copied().ok_or_else(|| {
            BenchError::Failed("the rate change was not applied before the run ended".into())
        })?;
        let target = to.bytes_per_s as f64;
        let reach = loopback::reach_time(
            &m.bins,
            m.bin,
            CHANGE_WINDOW,
            changed,
            change_len,
            target,
            tolerance,
        );
        // Once the rate is reached and the window holds only bytes sent after the change.
        let settled = changed + reach.unwrap_or(change_len).max(CHANGE_WINDOW);
        let after = loopback::rate_between(&m.bins, m.bin, settled, change_len);
        let after_error = after.map(|r| r / target - 1.0);
        let worst = loopback::worst_window_error(
            &m.bins,
            m.bin,
            CHANGE_WINDOW,
            settled,
            change_len,
            target,
        );
        eprintln!(
            "{} -> {}: reached after {}",
            from.text,
            to.text,
            reach.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()))
        );
        changes.push(RateChange {
            from: from.text.clone(),
            to: to.text.clone(),
            changed_at_s: changed.as_secs_f64(),
            before_bytes_per_s: loopback::rate_between(&m.bins, m.bin, warmup, changed),
            reach_s: reach.map(|d| d.as_secs_f64()),
            after_bytes_per_s: after,
            after_error_pct: after_error.map(|e| e * 100.0),
            worst_window_error_pct: worst.map(|e| e * 100.0),
            met: reach.is_some_and(|d| d <= GOAL_CHANGE_LATENCY)
                && after_error.is_some_and(|e| e.abs() <= tolerance),
            bins_100ms: rebin(&m.bins, m.bin, REPORT_BIN),
        });
    }
    let report = ThrottleReport {
        benchmark: "throttle",
        setup,
        seconds: args.seconds,
        warmup_s: warmup.as_secs_f64(),
        tolerance_pct: tolerance * 100.0,
        change_window_s: CHANGE_WINDOW.as_secs_f64(),
        change_latency_max_s: GOAL_CHANGE_LATENCY.as_secs_f64(),
        goals_met: held.iter().all(|h| h.met) && changes.iter().all(|c| c.met),
        rates: held,
        changes,
    };
    print_throttle(&report);
    write_report(args.json.as_deref(), &report)
}

fn mb(bytes_per_s: f64) -> String {
    format!("{:.4}", bytes_per_s / 1e6)
}

fn print_throttle(r: &ThrottleReport) {
    println!("freight throttle: {}", r.setup);
    println!(
        "measured rate: stream bytes the receiver read from t = {:.0} s to t = {} s (whole 10 ms bins) / {:.0} s; \
         t = 0 when both ends are connected; MB = 10^6 bytes",
        r.warmup_s,
        r.seconds,
        r.seconds as f64 - r.warmup_s
    );
    println!(
        "rate change: reached after = from set_throttle until the receiver's {w:.0} ms moving rate \
         (bytes read in the last {w:.0} ms, at every 10 ms boundary) first comes within ±{t:.0}% of the \
         new rate (an ideal step reads about {w:.0} ms, the window still holding bytes sent before); \
         after = the rate from then (at least {w:.0} ms after the change) to the end of the run; \
         goal: reached within {l:.0} s and after within ±{t:.0}%",
        w = r.change_window_s * 1000.0,
        t = r.tolerance_pct,
        l = r.change_latency_max_s,
    );
    println!();
    let mut held = Table::new([
        "configured",
        "configured MB/s",
        "measured MB/s",
        "error %",
        "worst 1 s error %",
        &format!("±{:.0}%", r.tolerance_pct),
    ]);
    for h in &r.rates {
        held.row([
            h.rate.clone(),
            mb(h.configured_bytes_per_s as f64),
            mb(h.measured_bytes_per_s),
            format!("{:+.2}", h.error_pct),
            format!("{:+.2}", h.worst_second_error_pct),
            verdict(h.met).to_owned(),
        ]);
    }
    print!("{held}");
    println!();
    let mut changes = Table::new([
        "change",
        "at s",
        "before MB/s",
        "reached after s",
        "after MB/s",
        "after error %",
        "worst 250 ms error %",
        &format!(
            "<= {:.0} s, ±{:.0}%",
            r.change_latency_max_s, r.tolerance_pct
        ),
    ]);
    let pct = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:+.2}"));
    for c in &r.changes {
        changes.row([
            format!("{} -> {}", c.from, c.to),
            format!("{:.3}", c.changed_at_s),
            c.before_bytes_per_s.map_or("-".into(), mb),
            c.reach_s.map_or("never".into(), |s| format!("{s:.2}")),
            c.after_bytes_per_s.map_or("-".into(), mb),
            pct(c.after_error_pct),
            pct(c.worst_window_error_pct),
            verdict(c.met).to_owned(),
        ]);
    }
    print!("{changes}");
    println!();
    for h in &r.rates {
        print_goal(
            &format!(
                "{} held within ±{:.0}% over {} s",
                h.rate, r.tolerance_pct, r.seconds
            ),
            h.met,
            &format!("{:+.2}%", h.error_pct),
        );
    }
    for c in &r.changes {
        print_goal(
            &format!(
                "rate change {} -> {} applies within {:.0} s",
                c.from, c.to, r.change_latency_max_s
            ),
            c.met,
            &match (c.reach_s, c.after_error_pct) {
                (Some(s), Some(e)) => format!("reached after {s:.2} s, then {e:+.2}%"),
                _ => "never reached".into(),
            },
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}
