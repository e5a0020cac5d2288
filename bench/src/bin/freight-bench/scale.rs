//! `freight-bench scale`: Freight at real package sizes. A tree of very many small files (a
//! million by default) plus a few large ones goes through the library verbs as CLI processes
//! and through a site server, a standard DP and a pull DP as `freight daemon` processes on
//! loopback. Every process's peak RSS is measured (freight-measure) against the 200 MiB goal, and the
//! re-snapshot of the unchanged tree against a quarter of the first snapshot's time.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clap::Args;
use freight_bench::harness::Table;
use freight_test_support::many;
use serde::Serialize;

use crate::distribute::{Hosts, PACKAGE, SITE_ROLE};
use crate::{BenchError, LabeledCommand, ctx, print_goal, remove_path, run_measured, write_report};

/// Peak RSS goal of every process, MiB.
const GOAL_RSS_MIB: f64 = 200.0;
/// The unchanged re-snapshot takes at most this share of the first snapshot's time.
const GOAL_RESNAPSHOT: f64 = 0.25;
/// Package ID of the library verbs.
const LIB_PACKAGE: &str = "CAS00001";

/// Arguments of `freight-bench scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Small files in the tree.
    #[arg(long, default_value_t = 1_000_000)]
    files: u64,
    /// Large files in the tree.
    #[arg(long, default_value_t = 4)]
    large: u32,
    /// Size of each large file.
    #[arg(long, value_parser = freight_bench::harness::parse_size, default_value = "64MiB")]
    large_size: u64,
    /// Seed of the tree's content.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scratch directory: the tree (reused when it matches) and every library.
    #[arg(long, default_value = "/tmp/freight-bench-scale")]
    work: PathBuf,
    /// The freight binary to benchmark.
    #[arg(long, default_value = "target/release/freight")]
    freight: PathBuf,
    /// Only the library verbs, no daemons.
    #[arg(long)]
    no_daemons: bool,
    /// Chunk index entries of the synthetic library (0: skip that part).
    #[arg(long, default_value_t = 10_000_000)]
    chunks: u64,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// One measured process.
#[derive(Debug, Serialize)]
struct Step {
    what: String,
    seconds: f64,
    max_rss_mib: f64,
}

/// Everything `scale` measured; the JSON report.
#[derive(Debug, Serialize)]
struct ScaleReport {
    benchmark: &'static str,
    files: u64,
    bytes: u64,
    commands: Vec<LabeledCommand>,
    /// CLI processes and daemons, in order.
    steps: Vec<Step>,
    resnapshot_ratio: f64,
    /// Files and bytes the 1% update changed, and the bytes each DP's copy of it moved.
    update_files: u64,
    update_bytes: u64,
    update_sent: Vec<(String, Option<u64>)>,
    /// Copies that differ from the tree (none when every copy is byte-identical).
    differences: Vec<String>,
    max_rss_mib: f64,
}

/// Makes sure `work/tree` holds the tree `args` asks for.
fn prepare_tree(args: &ScaleArgs) -> Result<(PathBuf, many::Summary), BenchError> {
    let tree = args.work.join("tree");
    let marker = args.work.join("tree.marker");
    let want = format!(
        "many v1 files={} large={} large_size={} seed={}\n",
        args.files, args.large, args.large_size, args.seed
    );
    let summary_of = |t: &str| -> Option<many::Summary> {
        let mut it = t.lines().nth(1)?.split(' ');
        Some(many::Summary {
            files: it.next()?.parse().ok()?,
            bytes: it.next()?.parse().ok()?,
        })
    };
    if let Ok(t) = fs::read_to_string(&marker)
        && t.starts_with(&want)
        && let Some(s) = summary_of(&t)
    {
        eprintln!("reusing the tree in {}", tree.display());
        return Ok((tree, s));
    }
    remove_path(&marker)?;
    remove_path(&tree)?;
    eprintln!(
        "generating {} small files and {} large ones in {} ...",
        args.files,
        args.large,
        tree.display()
    );
    let started = Instant::now();
    let s = many::generate(&tree, args.files, args.large, args.large_size, args.seed)
        .map_err(ctx(tree.display()))?;
    eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());
    fs::write(&marker, format!("{want}{} {}\n", s.files, s.bytes))
        .map_err(ctx(marker.display()))?;
    Ok((tree, s))
}

/// Runs `cmd` as a measured step (wall time and peak RSS); returns its seconds.
fn measure(
    what: &str,
    cmd: &mut Command,
    commands: &mut Vec<LabeledCommand>,
    steps: &mut Vec<Step>,
    bytes: u64,
) -> Result<f64, BenchError> {
    commands.push(LabeledCommand::new(what, crate::command_line(cmd)));
    let m = run_measured(what, cmd, bytes)?;
    steps.push(Step {
        what: what.to_owned(),
        seconds: m.wall.as_secs_f64(),
        max_rss_mib: m.max_rss_mib(),
    });
    Ok(m.wall.as_secs_f64())
}

/// Runs the benchmark.
pub fn scale(args: &ScaleArgs) -> Result<(), BenchError> {
    let freight = fs::canonicalize(&args.freight).map_err(|source| BenchError::Freight {
        path: args.freight.clone(),
        source,
    })?;
    fs::create_dir_all(&args.work).map_err(ctx(args.work.display()))?;
    let (tree, summary) = prepare_tree(args)?;
    // Each tree of a changed run is generated again, so a previous run's update is undone.
    let mut commands = Vec::new();
    let mut steps = Vec::new();
    let bytes = summary.bytes;
    let measured =
        |what: &str,
         cmd: &mut Command,
         commands: &mut Vec<LabeledCommand>,
         steps: &mut Vec<Step>| { measure(what, cmd, commands, steps, bytes) };

    // The library verbs as CLI processes.
    let lib = args.work.join("library");
    let out = args.work.join("out");
    remove_path(&lib)?;
    remove_path(&out)?;
    let cli = |verb: &[&str]| {
        let mut c = Command::new(&freight);
        c.arg("--quiet").arg("library").arg("--library").arg(&lib);
        c.args(verb);
        c
    };
    let tree_s = tree.to_string_lossy().into_owned();
    let out_s = out.to_string_lossy().into_owned();
    measured(
        "library init",
        &mut cli(&["init"]),
        &mut commands,
        &mut steps,
    )?;
    let first = measured(
        "library ingest (first)",
        &mut cli(&["ingest", "--package", LIB_PACKAGE, &tree_s]),
        &mut commands,
        &mut steps,
    )?;
    let again = measured(
        "library ingest --quick (unchanged)",
        &mut cli(&["ingest", "--package", LIB_PACKAGE, "--quick", &tree_s]),
        &mut commands,
        &mut steps,
    )?;
    measured(
        "library stats",
        &mut cli(&["stats"]),
        &mut commands,
        &mut steps,
    )?;
    measured(
        "library verify",
        &mut cli(&["verify"]),
        &mut commands,
        &mut steps,
    )?;
    measured(
        "library materialize",
        &mut cli(&["materialize", "--package", LIB_PACKAGE, &out_s]),
        &mut commands,
        &mut steps,
    )?;
    let mut differences = Vec::new();
    if let Some(d) = freight_test_support::tree::difference(&tree, &out)? {
        differences.push(format!("library materialize: {d}"));
    }
    remove_path(&out)?;

    let (mut update_files, mut update_bytes, mut update_sent) = (0, 0, Vec::new());
    if !args.no_daemons {
        let root = args.work.join("hosts");
        remove_path(&root)?;
        fs::create_dir_all(&root).map_err(ctx(root.display()))?;
        let hosts = Hosts {
            admin: root.join("ps1/admin.sock"),
            freight: freight.clone(),
            root: root.clone(),
            dps: 0,
        };
        // SPEC's retry delays: an update reaching the pull DP before its source holds it
        // waits for the source's install, not for the 30-minute pull retry delay.
        hosts.init("ps1", "PS1", SITE_ROLE, &mut commands)?;
        let dp_role = |kind: &str| -> Result<String, BenchError> {
            Ok(format!(
                "[dp]\nkind = \"{kind}\"\nhttp = \"127.0.0.1:{}\"\n",
                freight_bench::servers::free_tcp_port()?
            ))
        };
        hosts.init("dp1", "D01", &dp_role("standard")?, &mut commands)?;
        hosts.init("pull1", "D02", &dp_role("pull")?, &mut commands)?;
        for dp in ["dp1", "pull1"] {
            hosts.trust(dp, "ps1", "site-server", &mut commands)?;
        }
        hosts.trust("pull1", "dp1", "dp", &mut commands)?;
        hosts.trust("dp1", "pull1", "pull-dp", &mut commands)?;
        let (site, _) = hosts.start("ps1")?;
        let (dp1, dp1_addr) = hosts.start("dp1")?;
        let (pull1, pull1_addr) = hosts.start("pull1")?;
        let id = |n: &str| root.join(format!("{n}.id")).to_string_lossy().into_owned();
        hosts.run(&[
            "dp",
            "add",
            "dp1",
            "--address",
            &dp1_addr,
            "--identity",
            &id("dp1"),
        ])?;
        hosts.run(&[
            "dp",
            "add",
            "pull1",
            "--address",
            &pull1_addr,
            "--identity",
            &id("pull1"),
            "--pull",
            "--source",
            "dp1",
        ])?;
        let mut timed = |what: &str, action: &[&str]| -> Result<(), BenchError> {
            let s = hosts.timed(action)?;
            eprintln!("{what}: {s:.2} s");
            steps.push(Step {
                what: what.to_owned(),
                seconds: s,
                max_rss_mib: f64::NAN,
            });
            Ok(())
        };
        timed(
            "package create + settle (site server snapshot)",
            &["package", "create", "--name", "scale", "--source", &tree_s],
        )?;
        timed(
            "distribute to dp1 (standard)",
            &["distribute", PACKAGE, "--dp", "dp1"],
        )?;
        timed(
            "distribute to pull1 (pulls from dp1)",
            &["distribute", PACKAGE, "--dp", "pull1"],
        )?;
        // The update: 1% of the small files rewritten.
        let changed = many::change_every(&tree, args.files, 100, 7, 1, args.seed)
            .map_err(ctx(tree.display()))?;
        (update_files, update_bytes) = (changed.files, changed.bytes);
        // The tree is no longer the one the marker names.
        remove_path(&args.work.join("tree.marker"))?;
        timed(
            "package update (1% changed) + settle on both DPs",
            &["package", "update", PACKAGE],
        )?;
        let status: serde_json::Value =
            serde_json::from_str(&hosts.run(&["status", PACKAGE, "--json"])?)
                .map_err(|e| BenchError::Failed(format!("freight status --json: {e}")))?;
        for dp in ["dp1", "pull1"] {
            let sent = status
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["dp"] == dp))
                .and_then(|r| r["last_bytes"].as_u64());
            update_sent.push((dp.to_owned(), sent));
        }
        for (name, serve) in [("site server", site), ("dp1", dp1), ("pull1", pull1)] {
            let (m, _) = serve.stop()?;
            steps.push(Step {
                what: format!("freightd {name} (whole run)"),
                seconds: m.wall.as_secs_f64(),
                max_rss_mib: m.max_rss_mib(),
            });
        }
        for dp in ["dp1", "pull1"] {
            let mut c = Command::new(&freight);
            c.arg("--quiet")
                .arg("library")
                .arg("--library")
                .arg(hosts.dir(dp).join("library"))
                .args(["materialize", "--package", PACKAGE, &out_s]);
            measured(
                &format!("{dp}: library materialize"),
                &mut c,
                &mut commands,
                &mut steps,
            )?;
            if let Some(d) = freight_test_support::tree::difference(&tree, &out)? {
                differences.push(format!("{dp}: {d}"));
            }
            remove_path(&out)?;
        }
    }

    if args.chunks > 0 {
        // A library whose chunk index holds `chunks` entries (real packs and pack indexes,
        // tiny chunks): its first opening builds the index, later ones read only its summary.
        let syn = args.work.join("synthetic");
        remove_path(&syn)?;
        eprintln!("writing a synthetic library of {} chunks ...", args.chunks);
        let started = Instant::now();
        freight_test_support::synthetic::library(&syn, args.chunks)
            .map_err(|e| BenchError::Failed(format!("synthetic library: {e}")))?;
        eprintln!("written in {:.1} s", started.elapsed().as_secs_f64());
        let syn_cli = |verb: &[&str]| {
            let mut c = Command::new(&freight);
            c.arg("--quiet").arg("library").arg("--library").arg(&syn);
            c.args(verb);
            c
        };
        let small = args.work.join("small");
        remove_path(&small)?;
        many::generate(&small, 1000, 0, 0, args.seed).map_err(ctx(small.display()))?;
        let small_s = small.to_string_lossy().into_owned();
        let n = args.chunks;
        for (what, verb) in [
            (
                format!("{n}-chunk library: first open (index built) + stats"),
                vec!["stats"],
            ),
            (format!("{n}-chunk library: open + stats"), vec!["stats"]),
            (format!("{n}-chunk library: verify"), vec!["verify"]),
            (
                format!("{n}-chunk library: ingest of 1,000 files"),
                vec!["ingest", "--package", LIB_PACKAGE, &small_s],
            ),
            (format!("{n}-chunk library: gc"), vec!["gc"]),
        ] {
            measured(&what, &mut syn_cli(&verb), &mut commands, &mut steps)?;
        }
        remove_path(&syn)?;
    }

    let max_rss_mib = steps
        .iter()
        .map(|s| s.max_rss_mib)
        .filter(|r| r.is_finite())
        .fold(0.0, f64::max);
    let report = ScaleReport {
        benchmark: "scale",
        files: summary.files,
        bytes: summary.bytes,
        commands,
        steps,
        resnapshot_ratio: again / first,
        update_files,
        update_bytes,
        update_sent,
        differences,
        max_rss_mib,
    };
    print_scale(&report);
    write_report(args.json.as_deref(), &report)?;
    if !report.differences.is_empty() {
        return Err(BenchError::Failed(format!(
            "copies differ from the tree: {}",
            report.differences.join("; ")
        )));
    }
    Ok(())
}

fn print_scale(r: &ScaleReport) {
    println!(
        "tree: {} files, {} ({} bytes)",
        r.files,
        freight_core::units::human(r.bytes),
        r.bytes
    );
    for c in &r.commands {
        println!("{}: {}", c.step, c.command);
    }
    let mut t = Table::new(["step", "s", "peak RSS MiB"]);
    for s in &r.steps {
        let rss = if s.max_rss_mib.is_finite() {
            format!("{:.1}", s.max_rss_mib)
        } else {
            "-".to_owned()
        };
        t.row([s.what.clone(), format!("{:.2}", s.seconds), rss]);
    }
    print!("{t}");
    if r.update_files > 0 {
        let sent: Vec<String> = r
            .update_sent
            .iter()
            .map(|(dp, b)| format!("{dp} {}", b.map_or("-".to_owned(), |b| b.to_string())))
            .collect();
        println!(
            "update: {} files changed ({} bytes); bytes moved: {}",
            r.update_files,
            r.update_bytes,
            sent.join(", ")
        );
    }
    println!();
    print_goal(
        &format!("every process at most {GOAL_RSS_MIB} MiB peak RSS"),
        r.max_rss_mib <= GOAL_RSS_MIB,
        &format!("{:.1} MiB", r.max_rss_mib),
    );
    print_goal(
        &format!(
            "re-snapshot of the unchanged tree in at most {GOAL_RESNAPSHOT} of the first's time"
        ),
        r.resnapshot_ratio <= GOAL_RESNAPSHOT,
        &format!("{:.3}", r.resnapshot_ratio),
    );
    print_goal(
        "every copy byte-identical",
        r.differences.is_empty(),
        &format!("{} differ", r.differences.len()),
    );
}
