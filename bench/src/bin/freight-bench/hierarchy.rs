//! `freight-bench hierarchy`: a package from the CAS to a DP at SS1 through PS1 (three site
//! servers and two DPs as real daemons on loopback, driven by the `freight` CLI), against
//! `rsync -a` over ssh chained hop by hop through the same three places in the same run:
//! - (a) three tiers: `distribute --site SS1` at the CAS until the CAS's rolled-up status shows
//!   SS1's DP Installed, vs rsync CAS → PS1 → SS1 → DP (three rsyncs, one after the other);
//! - (b) one hop: the same package from the CAS to its own DP (time ratio against (a));
//! - (c) peak RSS of every daemon over the run (freight-measure, after SIGTERM);
//! - the daemons' CPU time during (a) and (b), and the floor it puts under each on two cores.
//!
//! Each side runs once per `--runs` on fresh hosts (a package cannot be sent to a site twice
//! without removing it from every tier first, which is not what is measured).

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;
use freight_bench::harness::{self, RunRecord, SideStats, Table};
use freight_bench::servers::Sshd;
use serde::Serialize;

use crate::distribute::{Hosts, SITE_ROLE};
use crate::serve::Serve;
use crate::transfer::rsync_measured;
use crate::{
    BenchError, CommonArgs, DatasetReport, LabeledCommand, command_line, ctx, prepare, print_goal,
    remove_path, run_setup, write_report,
};

/// Goals of issue 13.
const GOAL_VS_RSYNC: f64 = 3.0;
const GOAL_VS_ONE_HOP: f64 = 1.3;
const GOAL_RSS_MIB: f64 = 200.0;
/// The CAS's first package.
const PACKAGE: &str = "CAS00001";

/// Arguments of `freight-bench hierarchy`.
#[derive(Debug, Args)]
pub struct HierarchyArgs {
    #[command(flatten)]
    common: CommonArgs,
}

/// Everything `hierarchy` measured; the JSON report.
#[derive(Debug, Serialize)]
struct HierarchyReport {
    benchmark: &'static str,
    dataset: DatasetReport,
    commands: Vec<LabeledCommand>,
    /// Every rsync hop of every run.
    rsync_runs: Vec<RunRecord>,
    /// Seconds of the three chained rsync hops, per run.
    rsync_chain_s: Vec<f64>,
    /// Seconds of Freight's three tiers, per run.
    three_tier_s: Vec<f64>,
    /// Seconds of Freight's one hop (CAS → its DP), per run.
    one_hop_s: Vec<f64>,
    /// Medians: chained rsync / three tiers (goal ≥ 3).
    vs_rsync: f64,
    vs_rsync_met: bool,
    /// Medians: three tiers / one hop (goal ≤ 1.3).
    vs_one_hop: f64,
    vs_one_hop_met: bool,
    /// CPU seconds all daemons used during the three tiers, per run.
    three_tier_cpu_s: Vec<f64>,
    /// CPU seconds all daemons used during the one hop, per run.
    one_hop_cpu_s: Vec<f64>,
    /// Peak RSS per daemon, MiB, the highest over the runs.
    max_rss_mib: Vec<(String, f64)>,
    rss_met: bool,
    /// The DP at SS1 serves the source's bytes (its library materialised and compared).
    freight_identical: bool,
    freight_difference: Option<String>,
}

/// The hosts of one run: names, site codes and roles.
const SITES: [(&str, &str); 3] = [("cas", "CAS"), ("ps1", "PS1"), ("ss1", "SS1")];

pub fn hierarchy(args: &HierarchyArgs) -> Result<(), BenchError> {
    let common = &args.common;
    let dataset = prepare(common)?;
    let bytes = dataset.bytes;
    let root = common.work.join("hierarchy");
    remove_path(&root)?;
    fs::create_dir_all(&root).map_err(ctx(root.display()))?;
    let freight = fs::canonicalize(&common.freight).map_err(ctx(common.freight.display()))?;
    let mut commands = Vec::new();

    eprintln!("starting a private sshd ...");
    let sshd = Sshd::start(&root.join("ssh"))?;
    let (mut rsync_runs, mut chain_s) = (Vec::new(), Vec::new());
    let (mut tier_s, mut hop_s) = (Vec::new(), Vec::new());
    let (mut tier_cpu, mut hop_cpu) = (Vec::new(), Vec::new());
    let mut rss: Vec<(String, f64)> = Vec::new();
    let mut difference = None;
    for run in 1..=common.runs {
        // rsync, hop by hop: the dataset → cas-copy → ps1-copy → dp-copy.
        let hops = ["rsync-ps1", "rsync-ss1", "rsync-dp"];
        for h in hops {
            let d = root.join(h);
            remove_path(&d)?;
            fs::create_dir_all(&d).map_err(ctx(d.display()))?;
        }
        harness::sync_filesystems();
        harness::warm_page_cache(&dataset.root)?;
        let mut from = dataset.root.clone();
        let mut total = 0.0;
        for (i, h) in hops.iter().enumerate() {
            let to = root.join(h);
            let mut rsync = sshd.rsync(&from, &to);
            if run == 1 && i == 0 {
                commands.push(LabeledCommand::new("rsync hop", command_line(&rsync)));
            }
            let (rec, _) = rsync_measured(
                &mut rsync,
                &format!("rsync hop {} run {run}", i + 1),
                &format!("rsync hop {}", i + 1),
                run as usize,
                &to,
                &root.join("rsync-stats.txt"),
                bytes,
            )?;
            total += rec.wall_s;
            rsync_runs.push(rec);
            from = to;
        }
        eprintln!("rsync chained run {run}: {total:.2} s");
        chain_s.push(total);

        // Freight: fresh hosts each run.
        let hosts = Hosts {
            admin: root.join("run/cas/admin.sock"),
            freight: freight.clone(),
            root: root.join("run"),
            dps: 0,
        };
        remove_path(&hosts.root)?;
        fs::create_dir_all(&hosts.root).map_err(ctx(hosts.root.display()))?;
        let mut setup = Vec::new();
        for (name, code) in SITES {
            hosts.init(name, code, SITE_ROLE, &mut setup)?;
        }
        for (name, code, site) in [("casdp", "CDP", "cas"), ("ssdp", "SDP", "ss1")] {
            let role = format!(
                "[dp]\nhttp = \"127.0.0.1:{}\"\n",
                freight_bench::servers::free_tcp_port()?
            );
            hosts.init(name, code, &role, &mut setup)?;
            hosts.trust(name, site, "site-server", &mut setup)?;
        }
        let mut daemons: Vec<(String, Serve, String)> = Vec::new();
        for name in ["cas", "ps1", "ss1", "casdp", "ssdp"] {
            let (s, quic) = hosts.start(name)?;
            daemons.push((name.to_string(), s, quic));
        }
        let quic = |n: &str| {
            daemons
                .iter()
                .find(|d| d.0 == n)
                .map(|d| d.2.clone())
                .unwrap_or_default()
        };
        let admin = |n: &str| hosts.dir(n).join("admin.sock");
        let id = |n: &str| hosts.root.join(format!("{n}.id")).display().to_string();
        let at = |site: &str, a: &[&str]| -> Result<String, BenchError> {
            let mut c = Command::new(&hosts.freight);
            c.arg("--quiet").args(a).arg("--admin").arg(admin(site));
            let out = c.output().map_err(ctx(command_line(&c)))?;
            if !out.status.success() {
                return Err(BenchError::Failed(format!(
                    "`{}` failed: {}",
                    command_line(&c),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        for (up, down, code) in [("cas", "ps1", "PS1"), ("ps1", "ss1", "SS1")] {
            let parent_code = if up == "cas" { "CAS" } else { "PS1" };
            at(up, &["site", "add-child", code, "--identity", &id(down)])?;
            at(up, &["address", "add", code, "--endpoint", &quic(down)])?;
            at(
                down,
                &[
                    "site",
                    "set-parent",
                    parent_code,
                    "--identity",
                    &id(up),
                    "--address",
                    &quic(up),
                ],
            )?;
        }
        at(
            "cas",
            &[
                "dp",
                "add",
                "casdp",
                "--address",
                &quic("casdp"),
                "--identity",
                &id("casdp"),
            ],
        )?;
        at(
            "ss1",
            &[
                "dp",
                "add",
                "ssdp",
                "--address",
                &quic("ssdp"),
                "--identity",
                &id("ssdp"),
            ],
        )?;
        if run == 1 {
            commands.push(LabeledCommand::new(
                "setup",
                "freight daemon for CAS, PS1, SS1 and a DP at CAS and at SS1; freight site add-child / set-parent, freight address add, freight dp add".to_string(),
            ));
            commands.push(LabeledCommand::new(
                "freight",
                format!("freight distribute {PACKAGE} --site SS1 (three tiers); freight distribute {PACKAGE} --dp casdp (one hop)"),
            ));
        }
        at(
            "cas",
            &[
                "package",
                "create",
                "--name",
                "bench",
                "--source",
                &dataset.root.to_string_lossy(),
            ],
        )?;
        // The CAS routes to SS1 once PS1 reported it: the distribute is refused until then,
        // and the timer starts at the call that is accepted.
        let mut started = Instant::now();
        let cpu_before = cpu(&daemons);
        wait(Duration::from_secs(60), || {
            started = Instant::now();
            Ok(at("cas", &["distribute", PACKAGE, "--site", "SS1"]).is_ok())
        })
        .map_err(|_| BenchError::Failed("the CAS never learnt of SS1".into()))?;
        wait(Duration::from_secs(3600), || installed(&at, "SS1/ssdp"))?;
        let s = started.elapsed().as_secs_f64();
        let c = cpu(&daemons) - cpu_before;
        eprintln!("freight three tiers run {run}: {s:.2} s, {c:.1} CPU-s in the daemons");
        tier_s.push(s);
        tier_cpu.push(c);
        harness::sync_filesystems();
        let cpu_before = cpu(&daemons);
        let started = Instant::now();
        at("cas", &["distribute", PACKAGE, "--dp", "casdp"])?;
        wait(Duration::from_secs(3600), || installed(&at, "casdp"))?;
        let s = started.elapsed().as_secs_f64();
        let c = cpu(&daemons) - cpu_before;
        eprintln!("freight one hop run {run}: {s:.2} s, {c:.1} CPU-s in the daemons");
        hop_s.push(s);
        hop_cpu.push(c);
        for (name, d, _) in daemons.drain(..) {
            let m = d.stop()?.0.max_rss_mib();
            match rss.iter_mut().find(|r| r.0 == name) {
                Some(r) => r.1 = r.1.max(m),
                None => rss.push((name, m)),
            }
        }
        if run == common.runs {
            let out = root.join("ssdp-out");
            remove_path(&out)?;
            let mut c = Command::new(&hosts.freight);
            c.args(["library", "--library"])
                .arg(hosts.dir("ssdp").join("library"))
                .args(["materialize", "--package", PACKAGE])
                .arg(&out);
            run_setup(c, &mut commands)?;
            difference = freight_test_support::tree::difference(&dataset.root, &out)?;
        }
    }
    drop(sshd);
    let (chain, tiers, hop) = (
        harness::median(&chain_s),
        harness::median(&tier_s),
        harness::median(&hop_s),
    );
    let report = HierarchyReport {
        benchmark: "hierarchy",
        dataset,
        commands,
        rsync_runs,
        vs_rsync: chain / tiers,
        vs_rsync_met: chain / tiers >= GOAL_VS_RSYNC,
        vs_one_hop: tiers / hop,
        vs_one_hop_met: tiers / hop <= GOAL_VS_ONE_HOP,
        rss_met: rss.iter().all(|r| r.1 <= GOAL_RSS_MIB),
        max_rss_mib: rss,
        three_tier_cpu_s: tier_cpu,
        one_hop_cpu_s: hop_cpu,
        rsync_chain_s: chain_s,
        three_tier_s: tier_s,
        one_hop_s: hop_s,
        freight_identical: difference.is_none(),
        freight_difference: difference,
    };
    print_report(&report);
    write_report(common.json.as_deref(), &report)?;
    if let Some(d) = &report.freight_difference {
        return Err(BenchError::Failed(format!(
            "the DP's copy at SS1 is not byte-identical to the source: {d}"
        )));
    }
    Ok(())
}

/// CPU seconds the daemons have used so far, all together.
fn cpu(daemons: &[(String, Serve, String)]) -> f64 {
    daemons
        .iter()
        .filter_map(|d| d.1.cpu_so_far())
        .map(|c| c.as_secs_f64())
        .sum()
}

/// A `freight` admin call at a site: (site, arguments) → standard output.
type AtSite<'a> = dyn Fn(&str, &[&str]) -> Result<String, BenchError> + 'a;

/// Whether the CAS's rolled-up status shows `dp` Installed.
fn installed(at: &AtSite<'_>, dp: &str) -> Result<bool, BenchError> {
    let rows: serde_json::Value = serde_json::from_str(&at("cas", &["status", PACKAGE, "--json"])?)
        .map_err(|e| BenchError::Failed(format!("freight status --json: {e}")))?;
    Ok(rows.as_array().is_some_and(|rows| {
        rows.iter().any(|r| {
            let name = match r["site"].as_str() {
                Some(s) => format!("{s}/{}", r["dp"].as_str().unwrap_or_default()),
                None => r["dp"].as_str().unwrap_or_default().to_string(),
            };
            name == dp && r["state"] == "Installed"
        })
    }))
}

/// Polls `f` every 20 ms until it holds, at most `limit`.
fn wait(
    limit: Duration,
    mut f: impl FnMut() -> Result<bool, BenchError>,
) -> Result<(), BenchError> {
    let end = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(BenchError::Failed(format!(
                "nothing happened in {} s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn print_report(r: &HierarchyReport) {
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
    let mut runs = Table::new([
        "run",
        "rsync chained s",
        "three tiers s",
        "CPU-s",
        "one hop s",
        "CPU-s",
    ]);
    for i in 0..r.three_tier_s.len() {
        runs.row([
            (i + 1).to_string(),
            format!("{:.2}", r.rsync_chain_s[i]),
            format!("{:.2}", r.three_tier_s[i]),
            format!("{:.1}", r.three_tier_cpu_s[i]),
            format!("{:.2}", r.one_hop_s[i]),
            format!("{:.1}", r.one_hop_cpu_s[i]),
        ]);
    }
    print!("{runs}");
    // The floor two cores put under each: the daemons' CPU time spread over both.
    let (tc, hc) = (
        harness::median(&r.three_tier_cpu_s),
        harness::median(&r.one_hop_cpu_s),
    );
    println!(
        "CPU floor on 2 cores: three tiers {:.1} s, one hop {:.1} s (ratio {:.2}); CPU per GiB per hop: {:.1} s",
        tc / 2.0,
        hc / 2.0,
        tc / hc,
        hc / (r.dataset.bytes as f64 / (1u64 << 30) as f64)
    );
    let hop1 = SideStats::of("rsync hop 1", &r.rsync_runs).map_or(f64::NAN, |s| s.median_wall_s);
    println!("rsync one hop (median): {hop1:.2} s");
    for (name, m) in &r.max_rss_mib {
        println!("peak RSS {name}: {m:.1} MiB");
    }
    println!(
        "DP copy at SS1 byte-identical after materialise: {}",
        if r.freight_identical { "yes" } else { "no" }
    );
    println!();
    print_goal(
        &format!("three tiers at least {GOAL_VS_RSYNC}x faster than rsync -a chained hop by hop"),
        r.vs_rsync_met,
        &format!("{:.2}x", r.vs_rsync),
    );
    print_goal(
        &format!("three tiers in at most {GOAL_VS_ONE_HOP}x the time of one hop"),
        r.vs_one_hop_met,
        &format!("{:.2}x", r.vs_one_hop),
    );
    print_goal(
        &format!("peak RSS of every freightd at most {GOAL_RSS_MIB} MiB"),
        r.rss_met,
        &format!(
            "{:.1} MiB",
            r.max_rss_mib.iter().map(|x| x.1).fold(0.0, f64::max)
        ),
    );
}
