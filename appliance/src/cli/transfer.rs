//! `freight transfer ...`: send a package version from one library to another over QUIC.
//!
//! `serve` runs a receiving site on a UDP port until stopped (SIGTERM or Ctrl-C); `send`
//! pushes one package version to it with a progress bar, resuming after cuts. Both sides
//! authenticate with their site keys and pin each other against their trust stores.

use crate::cli::error::CliError;
use crate::cli::output::print_json;
use crate::cli::progress_bar::Bar;
use crate::cli::site::site_dir;
use crate::home::Home;
use clap::{Args, Subcommand};
use freight_core::units::human;
use freight_core::{IoMode, Library, PackageId, Progress, SiteCode};
use freight_transport::quic::{Node, NodeConfig};
use freight_transport::session::{self, PushOptions, Resume};
use freight_transport::store::SharedLibrary;
use freight_transport::tls::SiteTls;
use freight_transport::{Priority, RouteLimiter, RouteThrottle};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `freight transfer`.
#[derive(Args)]
pub struct TransferArgs {
    /// The site folder (code, key, trust store).
    #[arg(long, env = "FREIGHT_SITE", global = true)]
    site: Option<PathBuf>,
    /// The library directory.
    #[arg(long, short = 'l', env = "FREIGHT_LIBRARY", global = true)]
    library: Option<PathBuf>,
    /// Seconds without a packet after which a connection counts as cut.
    #[arg(long, global = true, default_value = "30", value_parser = parse_secs)]
    idle_timeout: Duration,
    /// Largest UDP payload MTU discovery may reach (1200..=65527; loopback and jumbo-frame
    /// links carry large ones).
    #[arg(long, global = true, default_value_t = NodeConfig::default().max_udp_payload, value_parser = clap::value_parser!(u16).range(1200..=65527))]
    max_udp_payload: u16,
    #[command(subcommand)]
    cmd: TransferCmd,
}

#[derive(Subcommand)]
enum TransferCmd {
    /// Receive package versions from trusted sites into the library until stopped.
    Serve {
        /// UDP address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "0.0.0.0:4433")]
        listen: SocketAddr,
        /// Received bytes between durable commits: less loses less to a crash (it is sent
        /// again), more syncs the disk less often.
        #[arg(long, default_value = "16MiB", value_parser = freight_core::units::parse_size)]
        commit_every: u64,
    },
    /// Push a package version to a receiving site; only the chunks it lacks travel.
    Send {
        /// Address of the receiving site.
        #[arg(long)]
        to: SocketAddr,
        /// The receiving site's code (its certificate must be its trusted key).
        #[arg(long)]
        peer: String,
        /// Package ID.
        #[arg(long, short)]
        package: String,
        /// Version (default: newest).
        #[arg(long, short)]
        version: Option<u32>,
        /// Parallel data streams.
        #[arg(long, default_value = "4")]
        streams: u16,
        /// Sessions to try before giving up (a cut connection resumes in the next one).
        #[arg(long, default_value = "5")]
        attempts: u32,
        /// Seconds to wait before resuming after a cut.
        #[arg(long, default_value = "1", value_parser = parse_secs)]
        retry_delay: Duration,
        /// The route's bandwidth windows in the compact form, e.g.
        /// `link 100Mbit/s; Mon-Fri 08:00-18:00 high 2MiB/s; Sat-Sun closed`.
        #[arg(long, conflicts_with = "throttle_file")]
        throttle: Option<String>,
        /// The route's bandwidth windows as a TOML file.
        #[arg(long)]
        throttle_file: Option<PathBuf>,
        /// The package's priority: low, medium or high.
        #[arg(long, default_value = "medium")]
        priority: Priority,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A positive number of seconds (fractions allowed), for duration options.
pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v < 1e6) {
        return Err(format!("{s:?}: give a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)
}

/// Runs `freight transfer`.
pub fn run(a: TransferArgs, io: Option<IoMode>, quiet: bool) -> Result<(), CliError> {
    let home = Home::open(&site_dir(a.site)?)?;
    let lib_dir = a.library.ok_or_else(|| {
        CliError::Usage("no library given; pass --library DIR or set FREIGHT_LIBRARY".into())
    })?;
    let lib = Library::open_or_init(&lib_dir, io)?;
    let tls = SiteTls::new(&home.key, &home.trust_dir())?;
    let base = NodeConfig {
        idle_timeout: a.idle_timeout,
        keep_alive: (a.idle_timeout / 4).min(Duration::from_secs(5)),
        max_udp_payload: a.max_udp_payload,
        ..NodeConfig::default()
    };
    let rt = runtime()?;
    match a.cmd {
        TransferCmd::Serve {
            listen,
            commit_every,
        } => rt.block_on(serve(listen, tls, base, lib, commit_every)),
        TransferCmd::Send {
            to,
            peer,
            package,
            version,
            streams,
            attempts,
            retry_delay,
            throttle,
            throttle_file,
            priority,
            json,
        } => {
            let peer = SiteCode::parse(&peer)?;
            let package = PackageId::parse(&package)?;
            let version = match version {
                Some(v) => v,
                None => lib.latest(&package)?.ok_or_else(|| {
                    CliError::Usage(format!(
                        "package {package} has no version in {}; ingest it first",
                        lib_dir.display()
                    ))
                })?,
            };
            // Offered from its stored file (read in parts, never decoded whole); checked here so
            // a missing version fails before any connection.
            lib.manifest_dir().open_manifest(&package, version)?;
            let cfg = NodeConfig {
                data_streams: streams.max(1),
                ..base
            };
            let resume = Resume {
                attempts: attempts.max(1),
                delay: retry_delay,
            };
            let throttle = match (throttle, throttle_file) {
                (Some(text), _) => Some(RouteThrottle::parse(&text)?),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        CliError::Usage(format!(
                            "{}: cannot read throttle file: {e}",
                            path.display()
                        ))
                    })?;
                    Some(RouteThrottle::from_toml(&text)?)
                }
                (None, None) => None,
            };
            let opts = PushOptions {
                progress: Some(Arc::new(Progress::default())),
                limiter: throttle
                    .map(|t| RouteLimiter::new(t, Arc::new(freight_transport::SystemClock))),
                priority,
            };
            rt.block_on(send(
                to, peer, tls, cfg, lib, package, version, resume, opts, json, quiet,
            ))
        }
    }
}

async fn serve(
    listen: SocketAddr,
    tls: SiteTls,
    cfg: NodeConfig,
    lib: Library,
    commit_every: u64,
) -> Result<(), CliError> {
    let code = tls.code();
    let node = Node::bind(listen, tls, cfg)?;
    let lib = SharedLibrary::with_commit_bytes(lib, commit_every.max(1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(session::serve(node.clone(), lib.clone(), Some(tx), None));
    // The readiness line: tests and scripts wait for it.
    println!("serving site {code} on {}", node.local_addr()?);
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let what = ev
                    .package
                    .as_ref()
                    .map_or("a package".to_string(), |(p, v)| format!("{p} v{v}"));
                match ev.result {
                    Ok(()) => println!("received {what} from {}", ev.peer),
                    Err(e) => eprintln!("freight: receiving {what} from {} failed: {e}", ev.peer),
                }
                std::io::stdout().flush()?;
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    node.close();
    lib.flush().await?;
    Ok(())
}

#[derive(serde::Serialize)]
struct SendSummary {
    package: String,
    version: u32,
    peer: String,
    sessions: usize,
    chunks_sent: u64,
    bytes_sent: u64,
    bytes_needed_first: u64,
    /// The most a session may re-send after a cut or a receiver crash (see
    /// `freight_transport::session::in_flight_window`), for a receiver with default settings.
    in_flight_window: u64,
    seconds: f64,
    per_session: Vec<SessionJson>,
}

#[derive(serde::Serialize)]
struct SessionJson {
    chunks_needed: u64,
    bytes_needed: u64,
    chunks_sent: u64,
    bytes_sent: u64,
    committed: bool,
    seconds: f64,
    chunk_latency: Option<freight_transport::session::ChunkLatency>,
}

#[allow(clippy::too_many_arguments)]
async fn send(
    to: SocketAddr,
    peer: SiteCode,
    tls: SiteTls,
    cfg: NodeConfig,
    lib: Library,
    package: PackageId,
    version: u32,
    resume: Resume,
    opts: PushOptions,
    json: bool,
    quiet: bool,
) -> Result<(), CliError> {
    let node = Node::bind("0.0.0.0:0".parse().expect("address"), tls, cfg)?;
    let lib = SharedLibrary::new(lib);
    let progress = opts.progress.clone().unwrap_or_default();
    let bar = Bar::start(progress, quiet || json);
    let started = Instant::now();
    let (reports, res) = session::push_resuming(
        &node,
        to,
        peer,
        &lib,
        session::Offer::Stored(&package, version),
        &opts,
        &resume,
    )
    .await;
    drop(bar);
    node.close();
    tokio::time::timeout(Duration::from_secs(2), node.wait_idle())
        .await
        .ok();
    res?;
    let summary = SendSummary {
        package: package.to_string(),
        version,
        peer: peer.to_string(),
        sessions: reports.len(),
        chunks_sent: reports.iter().map(|r| r.chunks_sent).sum(),
        bytes_sent: reports.iter().map(|r| r.bytes_sent).sum(),
        bytes_needed_first: reports.first().map_or(0, |r| r.bytes_needed),
        in_flight_window: session::in_flight_window(
            node.config(),
            reports.iter().map(|r| r.max_chunk).max().unwrap_or(0),
            freight_transport::store::COMMIT_BYTES,
        ),
        seconds: started.elapsed().as_secs_f64(),
        per_session: reports
            .iter()
            .map(|r| SessionJson {
                chunks_needed: r.chunks_needed,
                bytes_needed: r.bytes_needed,
                chunks_sent: r.chunks_sent,
                bytes_sent: r.bytes_sent,
                committed: r.committed,
                seconds: r.elapsed.as_secs_f64(),
                chunk_latency: r.chunk_latency.clone(),
            })
            .collect(),
    };
    if json {
        return print_json(&summary);
    }
    let rate = summary.bytes_sent as f64 / summary.seconds.max(1e-9);
    println!(
        "sent {} v{} to {peer}: {} chunks, {} in {:.2} s ({}/s), {} session(s)",
        summary.package,
        summary.version,
        summary.chunks_sent,
        human(summary.bytes_sent),
        summary.seconds,
        human(rate as u64),
        summary.sessions
    );
    Ok(())
}
