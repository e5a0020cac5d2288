//! `freight-bench`: compares Freight against conventional tools on a
//! generated, realistic package tree.
//!
//! ```text
//! freight-bench ingest --size 2GiB --work /tmp/freight-bench-data \
//!     --freight target/release/freight --runs 2 --json ingest.json
//! freight-bench parcel --size 2GiB --work /tmp/freight-bench-data \
//!     --freight target/release/freight --runs 2 --json parcel.json
//! freight-bench transfer --size 2GiB --work /tmp/freight-bench-data \
//!     --freight target/release/freight --runs 2 --json transfer.json
//! freight-bench quic-raw --seconds 10 --runs 2 --json quic-raw.json
//! freight-bench throttle --rates 1MB/s,10MB/s,50MB/s --seconds 20 --json throttle.json
//! ```

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use freight_bench::harness::{self, Measurement, RunRecord, SideStats, Table};
use freight_test_support::dataset::{self, DatasetSpec};
use freight_test_support::tree::disk_usage;
use serde::Serialize;

mod distribute;
mod hierarchy;
mod net;
mod scale;
mod serve;
mod transfer;

/// Benchmarks Freight against conventional tools.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Library ingest vs `tar | zstd -1 -T2` of the same tree.
    Ingest(IngestArgs),
    /// Parcel create and import vs `tar | zstd -1 -T2` and `zstd -dc | tar -x`
    /// of the same tree.
    Parcel(ParcelArgs),
    /// Library-to-library transfer over loopback QUIC (`freight transfer serve` +
    /// `send`) vs `rsync -a` over ssh to localhost of the same tree.
    Transfer(transfer::TransferArgs),
    /// A site server and DPs (real daemons) on loopback: distribute to one DP and to many, and
    /// update, vs `rsync -a` over ssh to localhost of the same tree; peak RSS of the daemons.
    Distribute(distribute::DistributeArgs),
    /// A package from the CAS to a DP at SS1 through PS1 vs `rsync -a` chained hop by hop,
    /// and against one hop.
    Hierarchy(hierarchy::HierarchyArgs),
    /// Real package sizes: a million small files through the library verbs and a site
    /// server, a standard DP and a pull DP; peak RSS of every process.
    Scale(scale::ScaleArgs),
    /// Chunk transport from memory to memory over loopback QUIC (in this process)
    /// vs `iperf3` over loopback TCP.
    QuicRaw(net::QuicRawArgs),
    /// Accuracy of the route limiter on the real clock over loopback QUIC: held
    /// rates and rate changes.
    Throttle(net::ThrottleArgs),
}

/// Throughput goal: Freight must be at least this many times faster than the peer (median).
const GOAL_RATIO: f64 = 1.5;
/// Memory goal: Freight's peak RSS must stay at or below this many MiB.
const GOAL_RSS_MIB: f64 = 200.0;
/// Package name and version given to `freight library ingest`.
const PACKAGE: &str = "CAS00001";
const VERSION: &str = "1";
/// Parcel create goal: at least this many times the peer's `tar | zstd` throughput (median).
const GOAL_CREATE_RATIO: f64 = 3.0;
/// Parcel import goal: at least this many times the peer's `zstd -dc | tar -x` throughput (median).
const GOAL_IMPORT_RATIO: f64 = 1.5;
/// Site codes of the parcel's origin (owner of [`PACKAGE`]) and destination.
const ORIGIN: &str = "CAS";
const DESTINATION: &str = "PS1";

/// Arguments shared by every subcommand: the dataset, the scratch directory,
/// the binary under test, the number of runs and the JSON report.
#[derive(Debug, Args)]
struct CommonArgs {
    /// Size of the generated source tree (e.g. 2GiB, 256MiB, 64KiB).
    #[arg(long, value_parser = harness::parse_size, default_value = "2GiB")]
    size: u64,
    /// Scratch directory: holds src/ (the dataset, reused when it matches)
    /// and the outputs of the benchmark (deleted before every run).
    #[arg(long, default_value = "/tmp/freight-bench-data")]
    work: PathBuf,
    /// The freight binary to benchmark.
    #[arg(long, default_value = "target/release/freight")]
    freight: PathBuf,
    /// Number of runs of each side (peer and Freight alternate).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Seed of the generated dataset.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Regenerate the dataset even if a matching one exists.
    #[arg(long)]
    regenerate: bool,
}

/// Arguments of `freight-bench ingest`.
#[derive(Debug, Args)]
struct IngestArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Extra argument for `freight library ingest`, placed before the source
    /// path (repeatable).
    #[arg(long = "freight-arg", value_name = "ARG", allow_hyphen_values = true)]
    freight_args: Vec<String>,
}

/// Arguments of `freight-bench parcel`.
#[derive(Debug, Args)]
struct ParcelArgs {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{what} failed: {status}")]
    ChildFailed { what: String, status: ExitStatus },
    #[error("freight binary {}: {source} (build it with `cargo build --release -p freight-appliance`, or pass --freight)", path.display())]
    Freight { path: PathBuf, source: io::Error },
    #[error(
        "{} exists but was not generated by freight-bench (no matching marker); remove it or use another --work",
        .0.display()
    )]
    ForeignSource(PathBuf),
    #[error("writing JSON report {}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Loopback(#[from] freight_bench::loopback::LoopbackError),
    #[error(transparent)]
    Transport(#[from] freight_transport::Error),
    #[error("{0}")]
    Failed(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Ingest(args) => ingest(&args),
        Cmd::Parcel(args) => parcel(&args),
        Cmd::Transfer(args) => transfer::transfer(&args),
        Cmd::Distribute(args) => distribute::distribute(&args),
        Cmd::Hierarchy(args) => hierarchy::hierarchy(&args),
        Cmd::Scale(args) => scale::scale(&args),
        Cmd::QuicRaw(args) => net::quic_raw(&args),
        Cmd::Throttle(args) => net::throttle(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("freight-bench: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Adds context to an I/O error.
fn ctx(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Description of the dataset a benchmark ran on.
#[derive(Debug, Serialize)]
struct DatasetReport {
    root: PathBuf,
    requested_bytes: u64,
    seed: u64,
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    /// Seconds spent generating, or `None` when an existing tree was reused.
    generate_s: Option<f64>,
}

/// Makes sure `<work>/src` holds the dataset for `spec`, generating it if needed.
fn prepare_dataset(
    work: &Path,
    spec: &DatasetSpec,
    regenerate: bool,
) -> Result<DatasetReport, BenchError> {
    let src = work.join("src");
    let mut generate_s = None;
    if regenerate || !dataset::is_generated(&src, spec) {
        let marker = dataset::marker_path(&src).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "work dir has no src name")
        })?;
        if src.exists() {
            // Only ever delete a tree that we generated (some marker exists).
            if !marker.exists()
                && fs::read_dir(&src)
                    .map_err(ctx(src.display()))?
                    .next()
                    .is_some()
            {
                return Err(BenchError::ForeignSource(src));
            }
            fs::remove_file(&marker)
                .or_else(ignore_not_found)
                .map_err(ctx(marker.display()))?;
            fs::remove_dir_all(&src).map_err(ctx(format!("removing {}", src.display())))?;
        }
        eprintln!(
            "generating {} dataset (seed {}) in {} ...",
            freight_core::units::human(spec.total_bytes),
            spec.seed,
            src.display()
        );
        let start = Instant::now();
        dataset::generate(&src, spec)?;
        let secs = start.elapsed().as_secs_f64();
        dataset::write_marker(&src, spec)?;
        eprintln!(
            "generated in {secs:.1} s ({:.0} MB/s)",
            spec.total_bytes as f64 / 1e6 / secs
        );
        generate_s = Some(secs);
    } else {
        eprintln!("reusing dataset in {}", src.display());
    }
    let usage = disk_usage(&src)?;
    Ok(DatasetReport {
        root: src,
        requested_bytes: spec.total_bytes,
        seed: spec.seed,
        files: usage.files,
        dirs: usage.dirs.saturating_sub(1),
        symlinks: usage.symlinks,
        bytes: usage.apparent_bytes,
        generate_s,
    })
}

fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Checks the freight binary, makes sure `<work>/src` holds the dataset and
/// warms the page cache: the untimed setup every subcommand starts with.
fn prepare(args: &CommonArgs) -> Result<DatasetReport, BenchError> {
    fs::metadata(&args.freight).map_err(|source| BenchError::Freight {
        path: args.freight.clone(),
        source,
    })?;
    fs::create_dir_all(&args.work).map_err(ctx(format!("creating {}", args.work.display())))?;
    let spec = DatasetSpec::mixed(args.size, args.seed);
    let dataset = prepare_dataset(&args.work, &spec, args.regenerate)?;
    eprintln!("warming the page cache ...");
    harness::warm_page_cache(&dataset.root)?;
    Ok(dataset)
}

/// Removes a file or a directory tree (symlinks not followed); a missing path is fine.
fn remove_path(path: &Path) -> Result<(), BenchError> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    removed
        .or_else(ignore_not_found)
        .map_err(ctx(format!("removing {}", path.display())))?;
    Ok(())
}

/// Runs `cmd` (after a `sync`), fails on an unsuccessful exit, and reports progress.
/// The child's standard output goes to our standard error, keeping the report clean.
fn run_measured(
    what: &str,
    cmd: &mut Command,
    source_bytes: u64,
) -> Result<Measurement, BenchError> {
    run_measured_keeping_stdout(what, cmd.stdout(io::stderr()), source_bytes)
}

/// [`run_measured`], with the standard output `cmd` was given (a file, for a report the
/// benchmark reads).
fn run_measured_keeping_stdout(
    what: &str,
    cmd: &mut Command,
    source_bytes: u64,
) -> Result<Measurement, BenchError> {
    harness::sync_filesystems();
    let m = harness::measure(cmd.stdin(Stdio::null()))?;
    if !m.status.success() {
        return Err(BenchError::ChildFailed {
            what: what.to_owned(),
            status: m.status,
        });
    }
    eprintln!(
        "{what}: {:.2} s, {:.1} MB/s, max RSS {:.1} MiB",
        m.wall.as_secs_f64(),
        harness::mb_per_s(source_bytes, m.wall),
        m.max_rss_mib()
    );
    Ok(m)
}

/// `bash -c SCRIPT bash WORK`: a peer pipeline, with the scratch directory as `$1`.
fn peer_command(script: &str, work: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script, "bash"]).arg(work);
    cmd
}

/// The peer of packing: `tar | zstd -1 -T2` of `$1/src` into `$1/peer.tar.zst`.
const PEER_PACK: &str =
    r#"set -o pipefail; tar -cf - -C "$1" src | zstd -1 -T2 -q > "$1/peer.tar.zst""#;

/// The peer of unpacking: `zstd -dc | tar -x` of `$1/peer.tar.zst` into `$1/peer-out`.
const PEER_UNPACK: &str =
    r#"set -o pipefail; zstd -dc -q "$1/peer.tar.zst" | tar -xf - -C "$1/peer-out""#;

/// One timed command of a benchmark, run once per run.
struct Step {
    /// Side name in the records, e.g. `peer` or `freight import`.
    side: &'static str,
    /// The command (spawned afresh for every run).
    cmd: Command,
    /// What the command writes: removed before every run, measured after it.
    output: PathBuf,
    /// Re-create `output` as an empty directory before every run.
    empty_dir: bool,
}

impl Step {
    /// A step whose `output` is removed before every run.
    fn new(side: &'static str, cmd: Command, output: PathBuf) -> Self {
        Step {
            side,
            cmd,
            output,
            empty_dir: false,
        }
    }

    /// The shell equivalent of one run of this step, preparation included.
    fn shell_line(&self) -> String {
        let out = quote(self.output.as_os_str());
        let mkdir = if self.empty_dir {
            format!("mkdir {out} && ")
        } else {
            String::new()
        };
        format!("rm -rf {out} && {mkdir}{}", command_line(&self.cmd))
    }
}

/// Runs every step `runs` times, the steps alternating within each run, and
/// records each run's measurement and output size.
fn run_steps(
    steps: &mut [Step],
    runs: u32,
    source_bytes: u64,
) -> Result<Vec<RunRecord>, BenchError> {
    let mut records = Vec::new();
    for run in 1..=runs {
        for step in steps.iter_mut() {
            remove_path(&step.output)?;
            if step.empty_dir {
                fs::create_dir(&step.output)
                    .map_err(ctx(format!("creating {}", step.output.display())))?;
            }
            let what = format!("{} run {run}/{runs}", step.side);
            let m = run_measured(&what, &mut step.cmd, source_bytes)?;
            let output_bytes = disk_usage(&step.output)?.apparent_bytes;
            records.push(RunRecord::new(
                step.side,
                run as usize,
                &m,
                source_bytes,
                output_bytes,
            ));
        }
    }
    Ok(records)
}

/// A peer side and a Freight side of one comparison.
#[derive(Debug, Serialize)]
struct Comparison {
    peer: SideStats,
    freight: SideStats,
    /// Freight throughput / peer throughput, medians.
    ratio_median: f64,
    /// Freight throughput / peer throughput, best runs.
    ratio_best: f64,
}

impl Comparison {
    /// Compares the records of side `peer` with those of side `freight`.
    fn of(records: &[RunRecord], peer: &str, freight: &str) -> Self {
        let (Some(peer), Some(freight)) = (
            SideStats::of(peer, records),
            SideStats::of(freight, records),
        ) else {
            unreachable!("at least one run of each side");
        };
        Comparison {
            ratio_median: freight.median_mb_per_s / peer.median_mb_per_s,
            ratio_best: freight.best_mb_per_s / peer.best_mb_per_s,
            peer,
            freight,
        }
    }

    /// Summary table: best and median throughput, peak RSS, CPU and output
    /// size of both sides; `title` heads the first column.
    fn table(&self, title: &str) -> Table {
        let (p, f) = (&self.peer, &self.freight);
        let mut table = Table::new([title, "peer", "freight", "freight/peer"]);
        table
            .figures(
                "best MB/s",
                p.best_mb_per_s,
                f.best_mb_per_s,
                1,
                format!("{:.2}x", self.ratio_best),
            )
            .figures(
                "median MB/s",
                p.median_mb_per_s,
                f.median_mb_per_s,
                1,
                format!("{:.2}x", self.ratio_median),
            )
            .figures(
                "max RSS MiB",
                p.max_rss_mib,
                f.max_rss_mib,
                1,
                String::new(),
            )
            .figures(
                "median CPU s",
                p.median_cpu_s,
                f.median_cpu_s,
                2,
                String::new(),
            )
            .row([
                "output bytes".to_owned(),
                p.output_bytes.to_string(),
                f.output_bytes.to_string(),
                format!("{:.2}x", f.output_bytes as f64 / p.output_bytes as f64),
            ]);
        table
    }
}

/// A command as the report shows it.
#[derive(Debug, Serialize)]
struct LabeledCommand {
    /// What the command is for, e.g. `peer` or `setup`.
    step: String,
    /// Shell rendering of the command.
    command: String,
}

impl LabeledCommand {
    fn new(step: &str, command: String) -> Self {
        LabeledCommand {
            step: step.to_owned(),
            command,
        }
    }
}

/// Prints the dataset line, the commands and the per-run table.
fn print_header(d: &DatasetReport, commands: &[LabeledCommand], runs: &[RunRecord]) {
    println!(
        "dataset: {} ({} bytes) in {} files, {} dirs, {} symlinks at {}",
        freight_core::units::human(d.bytes),
        d.bytes,
        d.files,
        d.dirs,
        d.symlinks,
        d.root.display()
    );
    let width = commands.iter().map(|c| c.step.len() + 1).max().unwrap_or(0);
    for c in commands {
        println!("{:<width$} {}", format!("{}:", c.step), c.command);
    }
    println!();
    print!("{}", Table::of_runs(runs));
    println!();
}

/// Prints one goal line: `goal: WHAT: MET (ACTUAL)` or `NOT MET`.
fn print_goal(what: &str, met: bool, actual: &str) {
    let verdict = if met { "MET" } else { "NOT MET" };
    println!("goal: {what}: {verdict} ({actual})");
}

/// Goals and whether they were met.
#[derive(Debug, Serialize)]
struct Goals {
    throughput_ratio_min: f64,
    throughput_ratio_met: bool,
    rss_max_mib: f64,
    rss_met: bool,
}

/// Everything `ingest` measured; the JSON report.
#[derive(Debug, Serialize)]
struct IngestReport {
    benchmark: &'static str,
    dataset: DatasetReport,
    peer_command: String,
    freight_command: String,
    runs: Vec<RunRecord>,
    #[serde(flatten)]
    comparison: Comparison,
    peer_output_bytes: u64,
    freight_library_bytes: u64,
    freight_library_disk_bytes: u64,
    goals: Goals,
}

fn ingest(args: &IngestArgs) -> Result<(), BenchError> {
    let common = &args.common;
    let dataset = prepare(common)?;
    let source_bytes = dataset.bytes;

    let lib = common.work.join("lib");
    let mut freight_cmd = Command::new(&common.freight);
    freight_cmd
        .args(["library", "ingest", "--library"])
        .arg(&lib)
        .args(["--package", PACKAGE, "--version", VERSION])
        .args(&args.freight_args)
        .arg(&dataset.root);
    let mut steps = [
        Step::new(
            "peer",
            peer_command(PEER_PACK, &common.work),
            common.work.join("peer.tar.zst"),
        ),
        Step::new("freight", freight_cmd, lib.clone()),
    ];
    let records = run_steps(&mut steps, common.runs, source_bytes)?;
    let comparison = Comparison::of(&records, "peer", "freight");
    let lib_usage = disk_usage(&lib)?;
    let [peer_step, freight_step] = &steps;
    let report = IngestReport {
        benchmark: "ingest",
        peer_command: command_line(&peer_step.cmd),
        freight_command: command_line(&freight_step.cmd),
        dataset,
        runs: records,
        goals: Goals {
            throughput_ratio_min: GOAL_RATIO,
            throughput_ratio_met: comparison.ratio_median >= GOAL_RATIO,
            rss_max_mib: GOAL_RSS_MIB,
            rss_met: comparison.freight.max_rss_mib <= GOAL_RSS_MIB,
        },
        peer_output_bytes: comparison.peer.output_bytes,
        freight_library_bytes: lib_usage.apparent_bytes,
        freight_library_disk_bytes: lib_usage.disk_bytes,
        comparison,
    };
    print_ingest(&report);
    write_report(common.json.as_deref(), &report)
}

fn print_ingest(r: &IngestReport) {
    let commands = [
        LabeledCommand::new("peer", r.peer_command.clone()),
        LabeledCommand::new("freight", r.freight_command.clone()),
    ];
    print_header(&r.dataset, &commands, &r.runs);
    let mut summary = r.comparison.table("");
    summary.row([
        "output on disk".to_owned(),
        String::new(),
        r.freight_library_disk_bytes.to_string(),
        String::new(),
    ]);
    print!("{summary}");
    println!();
    print_goal(
        &format!(
            "freight/peer median throughput >= {:.1}x",
            r.goals.throughput_ratio_min
        ),
        r.goals.throughput_ratio_met,
        &format!("{:.2}x", r.comparison.ratio_median),
    );
    print_goal(
        &format!("freight peak RSS <= {:.0} MiB", r.goals.rss_max_mib),
        r.goals.rss_met,
        &format!("{:.1} MiB", r.comparison.freight.max_rss_mib),
    );
}

/// Writes `report` as JSON to `path`, if one was given.
fn write_report(path: Option<&Path>, report: &impl Serialize) -> Result<(), BenchError> {
    let Some(path) = path else {
        return Ok(());
    };
    let json_err = |source| BenchError::Json {
        path: path.to_owned(),
        source,
    };
    let mut text = serde_json::to_string_pretty(report).map_err(json_err)?;
    text.push('\n');
    fs::write(path, text).map_err(ctx(format!("writing {}", path.display())))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Runs an untimed setup command and logs it; its output goes to our standard
/// error. Fails on an unsuccessful exit.
fn run_setup(mut cmd: Command, log: &mut Vec<LabeledCommand>) -> Result<(), BenchError> {
    let line = command_line(&cmd);
    eprintln!("setup: {line}");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(io::stderr())
        .status()
        .map_err(ctx(format!("spawning {}", cmd.get_program().display())))?;
    if !status.success() {
        return Err(BenchError::ChildFailed {
            what: format!("setup command `{line}`"),
            status,
        });
    }
    log.push(LabeledCommand::new("setup", line));
    Ok(())
}

/// A minimum speed-up of Freight over the peer (median throughputs).
#[derive(Debug, Serialize)]
struct RatioGoal {
    ratio_min: f64,
    /// The measured median ratio.
    ratio: f64,
    met: bool,
}

impl RatioGoal {
    fn new(ratio_min: f64, comparison: &Comparison) -> Self {
        RatioGoal {
            ratio_min,
            ratio: comparison.ratio_median,
            met: comparison.ratio_median >= ratio_min,
        }
    }
}

/// Goals of `parcel`.
#[derive(Debug, Serialize)]
struct ParcelGoals {
    create: RatioGoal,
    import: RatioGoal,
}

/// Everything `parcel` measured; the JSON report.
#[derive(Debug, Serialize)]
struct ParcelReport {
    benchmark: &'static str,
    dataset: DatasetReport,
    /// The untimed setup commands, then the timed ones (one run each).
    commands: Vec<LabeledCommand>,
    runs: Vec<RunRecord>,
    /// `tar | zstd` vs `freight parcel create`.
    create: Comparison,
    /// `zstd -dc | tar -x` vs `freight parcel import`.
    import: Comparison,
    /// Size of `peer.tar.zst`, last run.
    peer_archive_bytes: u64,
    /// Size of the parcel file, last run.
    parcel_bytes: u64,
    goals: ParcelGoals,
}

fn parcel(args: &ParcelArgs) -> Result<(), BenchError> {
    let common = &args.common;
    let work = &common.work;
    let dataset = prepare(common)?;
    let source_bytes = dataset.bytes;

    // `freight ARGS...`, with the arguments added by `args`.
    let freight = |args: &dyn Fn(&mut Command) -> &mut Command| {
        let mut cmd = Command::new(&common.freight);
        args(&mut cmd);
        cmd
    };
    let (site_a, site_b) = (work.join("siteA"), work.join("siteB"));
    let (lib_a, lib_b) = (work.join("libA"), work.join("libB"));
    let identity = work.join(format!("{ORIGIN}.id"));
    let parcel_file = work.join("p.parcel");

    // Fresh sites every time, so that the identity exchange never meets an old trust store.
    let stale = [&site_a, &site_b, &identity, &lib_a];
    for path in stale {
        remove_path(path)?;
    }
    let stale = stale.map(|p| quote(p.as_os_str())).join(" ");
    let mut commands = vec![LabeledCommand::new("setup", format!("rm -rf {stale}"))];
    let setup = [
        freight(&|c| {
            c.args(["site", "--site"])
                .arg(&site_a)
                .args(["init", "--code", ORIGIN])
        }),
        freight(&|c| {
            c.args(["site", "--site"])
                .arg(&site_b)
                .args(["init", "--code", DESTINATION])
        }),
        freight(&|c| {
            c.args(["site", "--site"])
                .arg(&site_a)
                .args(["identity", "export", "--out"])
                .arg(&identity)
        }),
        freight(&|c| {
            c.args(["site", "--site"])
                .arg(&site_b)
                .args(["identity", "import"])
                .arg(&identity)
                .args(["--role", "parent"])
        }),
        freight(&|c| {
            c.args(["library", "--library"])
                .arg(&lib_a)
                .args(["ingest", "--package", PACKAGE, "--version", VERSION])
                .arg(&dataset.root)
        }),
    ];
    for cmd in setup {
        run_setup(cmd, &mut commands)?;
    }

    let create = freight(&|c| {
        c.args(["--quiet", "parcel", "--site"])
            .arg(&site_a)
            .arg("--library")
            .arg(&lib_a)
            .args(["create", "--package", PACKAGE, "--version", VERSION])
            .args(["--to", DESTINATION, "--out"])
            .arg(&parcel_file)
    });
    let import = freight(&|c| {
        c.args(["--quiet", "parcel", "--site"])
            .arg(&site_b)
            .arg("--library")
            .arg(&lib_b)
            .arg("import")
            .arg(&parcel_file)
    });
    let mut steps = [
        Step::new(
            "peer create",
            peer_command(PEER_PACK, work),
            work.join("peer.tar.zst"),
        ),
        Step::new("freight create", create, parcel_file),
        Step {
            empty_dir: true,
            ..Step::new(
                "peer import",
                peer_command(PEER_UNPACK, work),
                work.join("peer-out"),
            )
        },
        Step::new("freight import", import, lib_b),
    ];
    commands.extend(
        steps
            .iter()
            .map(|s| LabeledCommand::new(s.side, s.shell_line())),
    );
    let records = run_steps(&mut steps, common.runs, source_bytes)?;
    let create = Comparison::of(&records, "peer create", "freight create");
    let import = Comparison::of(&records, "peer import", "freight import");
    let report = ParcelReport {
        benchmark: "parcel",
        dataset,
        commands,
        runs: records,
        peer_archive_bytes: create.peer.output_bytes,
        parcel_bytes: create.freight.output_bytes,
        goals: ParcelGoals {
            create: RatioGoal::new(GOAL_CREATE_RATIO, &create),
            import: RatioGoal::new(GOAL_IMPORT_RATIO, &import),
        },
        create,
        import,
    };
    print_parcel(&report);
    write_report(common.json.as_deref(), &report)
}

fn print_parcel(r: &ParcelReport) {
    print_header(&r.dataset, &r.commands, &r.runs);
    print!("{}", r.create.table("create"));
    println!();
    print!("{}", r.import.table("import"));
    println!();
    let human = freight_core::units::human;
    println!(
        "sizes: peer.tar.zst {} ({} bytes), parcel {} ({} bytes), parcel/peer {:.2}x",
        human(r.peer_archive_bytes),
        r.peer_archive_bytes,
        human(r.parcel_bytes),
        r.parcel_bytes,
        r.parcel_bytes as f64 / r.peer_archive_bytes as f64
    );
    println!();
    for (what, goal) in [("create", &r.goals.create), ("import", &r.goals.import)] {
        print_goal(
            &format!(
                "freight/peer median {what} throughput >= {:.1}x",
                goal.ratio_min
            ),
            goal.met,
            &format!("{:.2}x", goal.ratio),
        );
    }
}

/// A shell rendering of a command, for the report.
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `arg` for a POSIX shell when it holds anything but plainly safe characters.
fn quote(arg: &OsStr) -> String {
    let text = arg.to_string_lossy();
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
