//! `freight-bench distribute`: a site server and DPs (real daemons, `freight daemon`) on
//! loopback, driven by the `freight` CLI, against `rsync -a` over ssh to localhost of the
//! same tree:
//! - (a) distribute a package to one DP vs rsync of the tree into an empty folder;
//! - (b) distribute to N DPs vs to one (time ratio);
//! - (c) update with 5% of the files changed (snapshot + distribution) vs rsync of the changed
//!   tree onto the previous copy, and the bytes each sent;
//! - (d) peak RSS of the site server and the DP daemons during (a) (freight-measure, after SIGTERM).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;
use freight_bench::harness::{self, RunRecord, SideStats, Table};
use freight_bench::servers::Sshd;
use serde::Serialize;

use crate::serve::Serve;
use crate::transfer::rsync_measured;
use crate::{
    BenchError, CommonArgs, DatasetReport, LabeledCommand, command_line, ctx, prepare, print_goal,
    quote, remove_path, run_setup, write_report,
};

/// Goals of issue 5.
const GOAL_ONE_DP: f64 = 4.0;
const GOAL_MANY_DPS: f64 = 2.0;
const GOAL_UPDATE: f64 = 5.0;
const GOAL_RSS_MIB: f64 = 200.0;
/// The site server's role section of `freightd.toml`.
pub(crate) const SITE_ROLE: &str =
    "[site]\ndatabase = \"site.db\"\nadmin_socket = \"admin.sock\"\npoll_interval = \"50ms\"\n";
/// The site's first package.
pub(crate) const PACKAGE: &str = "PS100001";

/// Arguments of `freight-bench distribute`.
#[derive(Debug, Args)]
pub struct DistributeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// DPs of the many-DP distribution (b).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=20))]
    dps: u32,
}

/// One timed Freight action (CLI calls until every DP settled).
#[derive(Debug, Serialize)]
struct Timed {
    phase: &'static str,
    run: u32,
    seconds: f64,
}

/// Medians and the goal of one comparison.
#[derive(Debug, Serialize)]
struct Ratio {
    /// What is compared, e.g. "rsync s / freight s".
    what: String,
    peer_s: f64,
    freight_s: f64,
    ratio: f64,
    goal: f64,
    met: bool,
}

/// Everything `distribute` measured; the JSON report.
#[derive(Debug, Serialize)]
struct DistributeReport {
    benchmark: &'static str,
    dataset: DatasetReport,
    commands: Vec<LabeledCommand>,
    /// rsync runs (a) and (c).
    rsync_runs: Vec<RunRecord>,
    /// Freight runs of every phase.
    freight_runs: Vec<Timed>,
    /// Seconds of `package create` (the snapshot, untimed in (a)).
    snapshot_s: f64,
    one_dp: Ratio,
    /// (b): median time to N DPs / median time to one.
    many_dps: Ratio,
    dps: u32,
    update: Ratio,
    /// Bytes sent by the update, last run: rsync's "Total bytes sent" and the DP copy's.
    update_bytes_rsync: Option<u64>,
    update_bytes_freight: Option<u64>,
    update_fewer_bytes: bool,
    /// Peak RSS during (a), MiB.
    site_server_max_rss_mib: f64,
    dp_max_rss_mib: f64,
    rss_met: bool,
    /// The DP's copy, materialised at the end, equals the source.
    freight_identical: bool,
    freight_difference: Option<String>,
}

/// The site and its DPs.
pub(crate) struct Hosts {
    pub(crate) root: PathBuf,
    pub(crate) freight: PathBuf,
    pub(crate) admin: PathBuf,
    pub(crate) dps: u32,
}

impl Hosts {
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.freight);
        c.arg("--quiet").args(args).arg("--admin").arg(&self.admin);
        c
    }

    /// Runs a CLI command that must succeed; returns its standard output.
    pub(crate) fn run(&self, args: &[&str]) -> Result<String, BenchError> {
        let mut c = self.cli(args);
        let out = c.output().map_err(ctx(command_line(&c)))?;
        if !out.status.success() {
            return Err(BenchError::Failed(format!(
                "`{}` failed: {}",
                command_line(&c),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `freight daemon` of host `name`.
    pub(crate) fn start(&self, name: &str) -> Result<(Serve, String), BenchError> {
        let mut c = Command::new(&self.freight);
        c.arg("daemon")
            .arg("--config")
            .arg(self.dir(name).join("freightd.toml"));
        Serve::start(&mut c, |line| {
            let rest = line.strip_prefix("freightd ready: ")?;
            rest.split("; ")
                .find_map(|p| p.strip_prefix("quic "))
                .map(str::to_owned)
        })
    }

    /// Creates host `name` (untimed setup): its site folder with a key for site `code`, its
    /// identity in `ROOT/NAME.id`, and its `freightd.toml` (QUIC on a free loopback port) with
    /// the `role` section.
    pub(crate) fn init(
        &self,
        name: &str,
        code: &str,
        role: &str,
        commands: &mut Vec<LabeledCommand>,
    ) -> Result<(), BenchError> {
        let dir = self.dir(name);
        let home = dir.join("home");
        let mut c = Command::new(&self.freight);
        c.arg("site")
            .arg("--site")
            .arg(&home)
            .args(["init", "--code", code]);
        run_setup(c, commands)?;
        let mut c = Command::new(&self.freight);
        c.arg("site")
            .arg("--site")
            .arg(&home)
            .args(["identity", "export", "--out"])
            .arg(self.root.join(format!("{name}.id")));
        run_setup(c, commands)?;
        let port = freight_bench::servers::free_tcp_port()?;
        fs::write(
            dir.join("freightd.toml"),
            format!(
                "home = \"home\"\nlibrary = \"library\"\nlisten = \"127.0.0.1:{port}\"\n{role}"
            ),
        )
        .map_err(ctx(dir.display()))?;
        Ok(())
    }

    /// Host `name` trusts host `other` (created before) in `role` (`site-server`, `dp`, ...).
    pub(crate) fn trust(
        &self,
        name: &str,
        other: &str,
        role: &str,
        commands: &mut Vec<LabeledCommand>,
    ) -> Result<(), BenchError> {
        let mut c = Command::new(&self.freight);
        c.arg("site")
            .arg("--site")
            .arg(self.dir(name).join("home"))
            .args(["identity", "import", "--role", role])
            .arg(self.root.join(format!("{other}.id")));
        run_setup(c, commands)
    }

    /// Runs `action` and waits until every copy of the package settled; returns seconds.
    pub(crate) fn timed(&self, action: &[&str]) -> Result<f64, BenchError> {
        let started = Instant::now();
        self.run(action)?;
        self.settle()?;
        Ok(started.elapsed().as_secs_f64())
    }

    pub(crate) fn settle(&self) -> Result<(), BenchError> {
        self.run(&["watch", PACKAGE, "--until-settled", "--interval", "0.05"])
            .map(|_| ())
    }

    fn dp_names(&self, n: u32) -> Vec<String> {
        (1..=n).map(|i| format!("dp{i}")).collect()
    }

    /// Removes the package from `dps` and waits (untimed).
    fn clear(&self, dps: &[String]) -> Result<(), BenchError> {
        for dp in dps {
            self.run(&["package", "remove", PACKAGE, "--dp", dp])?;
        }
        self.settle()
    }

    /// Starts every daemon: the site server and the DPs.
    fn start_all(&self) -> Result<(Serve, Vec<(Serve, String)>), BenchError> {
        let (site, _) = self.start("ps1")?;
        let dps = self
            .dp_names(self.dps)
            .iter()
            .map(|d| self.start(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((site, dps))
    }
}

fn ratio(what: &str, peer_s: f64, freight_s: f64, goal: f64, higher_is_better: bool) -> Ratio {
    let ratio = if higher_is_better {
        peer_s / freight_s
    } else {
        freight_s / peer_s
    };
    Ratio {
        what: what.to_owned(),
        peer_s,
        freight_s,
        ratio,
        goal,
        met: if higher_is_better {
            ratio >= goal
        } else {
            ratio <= goal
        },
    }
}

pub fn distribute(args: &DistributeArgs) -> Result<(), BenchError> {
    let common = &args.common;
    let dataset = prepare(common)?;
    let bytes = dataset.bytes;
    let root = common.work.join("distribute");
    remove_path(&root)?;
    fs::create_dir_all(&root).map_err(ctx(root.display()))?;
    let hosts = Hosts {
        admin: root.join("ps1/admin.sock"),
        freight: fs::canonicalize(&common.freight).map_err(ctx(common.freight.display()))?,
        root: root.clone(),
        dps: args.dps,
    };
    let mut commands = Vec::new();
    let freight = |a: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut c = Command::new(&hosts.freight);
        c.args(a);
        c
    };

    // Hosts: folders, keys, configs, trust (untimed).
    let mut names = vec!["ps1".to_string()];
    names.extend(hosts.dp_names(args.dps));
    for (i, name) in names.iter().enumerate() {
        if i == 0 {
            hosts.init(name, "PS1", SITE_ROLE, &mut commands)?;
        } else {
            let role = format!(
                "[dp]\nhttp = \"127.0.0.1:{}\"\n",
                freight_bench::servers::free_tcp_port()?
            );
            hosts.init(name, &format!("D{i:02}"), &role, &mut commands)?;
            hosts.trust(name, "ps1", "site-server", &mut commands)?;
        }
    }
    // The package's source: a copy of the dataset, since (c) changes it.
    let src = root.join("source");
    run_setup(freight_cp(&dataset.root, &src), &mut commands)?;

    let (site, mut dps) = hosts.start_all()?;
    for (i, (_, addr)) in dps.iter().enumerate() {
        let name = format!("dp{}", i + 1);
        let id = root.join(format!("{name}.id"));
        let id = id.to_string_lossy().into_owned();
        hosts.run(&["dp", "add", &name, "--address", addr, "--identity", &id])?;
    }
    commands.push(LabeledCommand::new(
        "setup",
        format!(
            "{} daemon --config HOST/freightd.toml for the site server and {} DPs; freight dp add ...",
            quote(hosts.freight.as_os_str()),
            args.dps
        ),
    ));
    let started = Instant::now();
    hosts.run(&[
        "package",
        "create",
        "--name",
        "bench",
        "--source",
        &src.to_string_lossy(),
    ])?;
    let snapshot_s = started.elapsed().as_secs_f64();
    eprintln!("package create (snapshot): {snapshot_s:.2} s");

    eprintln!("starting a private sshd ...");
    let sshd = Sshd::start(&root.join("ssh"))?;
    let rsync_out = root.join("rsync-out");
    let rsync_stats = root.join("rsync-stats.txt");
    let mut rsync = sshd.rsync(&src, &rsync_out);
    commands.push(LabeledCommand::new("rsync", command_line(&rsync)));
    let one = ["distribute", PACKAGE, "--dp", "dp1"];
    commands.push(LabeledCommand::new(
        "freight",
        format!(
            "freight {} && freight watch {PACKAGE} --until-settled --interval 0.05",
            one.join(" ")
        ),
    ));
    // An unreadable stats file only leaves the bytes sent unknown here.
    let mut rsync_run = |phase: &str, run: u32| -> Result<(RunRecord, Option<u64>), BenchError> {
        let (rec, sent) = rsync_measured(
            &mut rsync,
            &format!("rsync {phase} run {run}"),
            &format!("rsync {phase}"),
            run as usize,
            &rsync_out,
            &rsync_stats,
            bytes,
        )?;
        Ok((rec, sent.unwrap_or_default()))
    };

    // (a) one DP, alternating with rsync into an empty folder.
    let mut rsync_runs = Vec::new();
    let mut freight_runs = Vec::new();
    for run in 1..=common.runs {
        remove_path(&rsync_out)?;
        fs::create_dir(&rsync_out).map_err(ctx(rsync_out.display()))?;
        rsync_runs.push(rsync_run("a", run)?.0);
        harness::sync_filesystems();
        let s = hosts.timed(&one)?;
        eprintln!("freight (a) run {run}: {s:.2} s to one DP");
        freight_runs.push(Timed {
            phase: "a",
            run,
            seconds: s,
        });
        if run < common.runs {
            hosts.clear(&["dp1".to_owned()])?;
        }
    }
    // (d) the daemons' peak RSS over (a).
    let (site_m, _) = site.stop()?;
    let mut dp_rss: f64 = 0.0;
    for (d, _) in dps.drain(..) {
        dp_rss = dp_rss.max(d.stop()?.0.max_rss_mib());
    }
    let site_rss = site_m.max_rss_mib();
    eprintln!("peak RSS during (a): site server {site_rss:.1} MiB, DP {dp_rss:.1} MiB");
    let (_site, _dps) = hosts.start_all()?;

    // (b) N DPs (all empty) against (a).
    let all = hosts.dp_names(args.dps);
    hosts.clear(&["dp1".to_owned()])?;
    let mut many = vec!["distribute", PACKAGE];
    for d in &all {
        many.extend(["--dp", d.as_str()]);
    }
    for run in 1..=common.runs {
        harness::sync_filesystems();
        let s = hosts.timed(&many)?;
        eprintln!("freight (b) run {run}: {s:.2} s to {} DPs", args.dps);
        freight_runs.push(Timed {
            phase: "b",
            run,
            seconds: s,
        });
        let keep = if run < common.runs {
            &all[..]
        } else {
            &all[1..]
        };
        hosts.clear(keep)?;
    }

    // (c) update with 5% of the files changed: dp1 and rsync's copy hold the previous tree.
    let (mut sent_rsync, mut sent_freight) = (None, None);
    for run in 1..=common.runs {
        let (n, _) = freight_test_support::rewrite_every_20th(&src, run as usize)?;
        eprintln!("changed {n} files");
        harness::warm_page_cache(&src)?;
        let (rec, sent) = rsync_run("c", run)?;
        rsync_runs.push(rec);
        sent_rsync = sent;
        harness::sync_filesystems();
        let s = hosts.timed(&["package", "update", PACKAGE])?;
        eprintln!("freight (c) run {run}: {s:.2} s (snapshot and distribution)");
        freight_runs.push(Timed {
            phase: "c",
            run,
            seconds: s,
        });
        let status: serde_json::Value =
            serde_json::from_str(&hosts.run(&["status", PACKAGE, "--json"])?)
                .map_err(|e| BenchError::Failed(format!("freight status --json: {e}")))?;
        sent_freight = status
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["dp"] == "dp1"))
            .and_then(|r| r["last_bytes"].as_u64());
    }
    drop(sshd);
    drop(_dps);
    drop(_site);

    // The DP's copy equals the source (untimed).
    let out = root.join("dp1-out");
    run_setup(
        freight(&[
            &"library",
            &"--library",
            &hosts.dir("dp1").join("library"),
            &"materialize",
            &"--package",
            &PACKAGE,
            &out,
        ]),
        &mut commands,
    )?;
    let freight_difference = freight_test_support::tree::difference(&src, &out)?;

    let median = |phase: &str| {
        harness::median(
            &freight_runs
                .iter()
                .filter(|t| t.phase == phase)
                .map(|t| t.seconds)
                .collect::<Vec<_>>(),
        )
    };
    let rsync_median =
        |side: &str| SideStats::of(side, &rsync_runs).map_or(f64::NAN, |s| s.median_wall_s);
    let report = DistributeReport {
        benchmark: "distribute",
        dataset,
        commands,
        one_dp: ratio(
            "rsync s / freight s",
            rsync_median("rsync a"),
            median("a"),
            GOAL_ONE_DP,
            true,
        ),
        many_dps: ratio(
            &format!("{} DPs s / one DP s", args.dps),
            median("a"),
            median("b"),
            GOAL_MANY_DPS,
            false,
        ),
        dps: args.dps,
        update: ratio(
            "rsync s / freight s",
            rsync_median("rsync c"),
            median("c"),
            GOAL_UPDATE,
            true,
        ),
        update_fewer_bytes: matches!((sent_freight, sent_rsync), (Some(f), Some(r)) if f < r),
        update_bytes_rsync: sent_rsync,
        update_bytes_freight: sent_freight,
        rsync_runs,
        freight_runs,
        snapshot_s,
        rss_met: site_rss.max(dp_rss) <= GOAL_RSS_MIB,
        site_server_max_rss_mib: site_rss,
        dp_max_rss_mib: dp_rss,
        freight_identical: freight_difference.is_none(),
        freight_difference,
    };
    print_distribute(&report);
    write_report(common.json.as_deref(), &report)?;
    if let Some(d) = &report.freight_difference {
        return Err(BenchError::Failed(format!(
            "the DP's copy is not byte-identical to the source: {d}"
        )));
    }
    Ok(())
}

/// `cp -a FROM TO`.
fn freight_cp(from: &Path, to: &Path) -> Command {
    let mut c = Command::new("cp");
    c.arg("-a").arg(from).arg(to);
    c
}

fn print_distribute(r: &DistributeReport) {
    let d = &r.dataset;
    println!(
        "dataset: {} ({} bytes) in {} files at {}",
        freight_core::units::human(d.bytes),
        d.bytes,
        d.files,
        d.root.display()
    );
    for c in &r.commands {
        println!("{}: {}", c.step, c.command);
    }
    println!();
    print!("{}", Table::of_runs(&r.rsync_runs));
    let mut runs = Table::new(["phase", "run", "freight s"]);
    for t in &r.freight_runs {
        runs.row([
            t.phase.to_owned(),
            t.run.to_string(),
            format!("{:.2}", t.seconds),
        ]);
    }
    print!("{runs}");
    println!();
    let mut t = Table::new(["", "peer s", "freight s", "ratio"]);
    t.figures(
        "(a) distribute to one DP vs rsync",
        r.one_dp.peer_s,
        r.one_dp.freight_s,
        2,
        format!("{:.2}x", r.one_dp.ratio),
    )
    .figures(
        &format!("(b) {} DPs vs one DP", r.dps),
        r.many_dps.peer_s,
        r.many_dps.freight_s,
        2,
        format!("{:.2}x", r.many_dps.ratio),
    )
    .figures(
        "(c) update 5% vs rsync",
        r.update.peer_s,
        r.update.freight_s,
        2,
        format!("{:.2}x", r.update.ratio),
    );
    print!("{t}");
    println!(
        "snapshot (package create, not in (a)): {:.2} s; (c) includes the update's snapshot",
        r.snapshot_s
    );
    let b = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    println!(
        "(c) bytes sent: rsync {}, freight {}",
        b(r.update_bytes_rsync),
        b(r.update_bytes_freight)
    );
    println!(
        "(d) peak RSS during (a): site server {:.1} MiB, DP {:.1} MiB",
        r.site_server_max_rss_mib, r.dp_max_rss_mib
    );
    println!(
        "DP copy byte-identical after materialise: {}",
        if r.freight_identical { "yes" } else { "no" }
    );
    println!();
    print_goal(
        &format!("(a) distribute to one DP at least {GOAL_ONE_DP}x faster than rsync -a over ssh"),
        r.one_dp.met,
        &format!("{:.2}x", r.one_dp.ratio),
    );
    print_goal(
        &format!(
            "(b) {} DPs in at most {GOAL_MANY_DPS}x the time of one",
            r.dps
        ),
        r.many_dps.met,
        &format!("{:.2}x", r.many_dps.ratio),
    );
    print_goal(
        &format!("(c) update at least {GOAL_UPDATE}x faster than rsync, fewer bytes sent"),
        r.update.met && r.update_fewer_bytes,
        &format!(
            "{:.2}x, {} vs {} bytes",
            r.update.ratio,
            b(r.update_bytes_freight),
            b(r.update_bytes_rsync)
        ),
    );
    print_goal(
        &format!("(d) peak RSS of freightd at most {GOAL_RSS_MIB} MiB"),
        r.rss_met,
        &format!("{:.1} MiB", r.site_server_max_rss_mib.max(r.dp_max_rss_mib)),
    );
}
