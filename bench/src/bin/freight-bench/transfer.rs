//! `freight-bench transfer`: library-to-library transfer over loopback QUIC
//! (`freight transfer serve` + `freight transfer send`) against `rsync -a` over ssh to
//! localhost, through a private sshd, of the same source tree.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use clap::Args;
use freight_bench::harness::{self, RunRecord, SideStats, Table};
use freight_test_support::tree::disk_usage;

use crate::serve::Serve;
use freight_bench::servers::Sshd;
use serde::Serialize;

use crate::{
    BenchError, CommonArgs, Comparison, DatasetReport, LabeledCommand, PACKAGE, VERSION,
    command_line, ctx, prepare, print_goal, print_header, quote, remove_path,
    run_measured_keeping_stdout, run_setup, write_report,
};

/// Goal: `freight transfer send` at least this many times faster than `rsync -a` (median times).
const GOAL_SPEEDUP: f64 = 4.0;
/// Site codes of the sending and the receiving site.
const SENDER: &str = "CAS";
const RECEIVER: &str = "PS1";
const RSYNC_SIDE: &str = "rsync";
const FREIGHT_SIDE: &str = "freight";

/// Arguments of `freight-bench transfer`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Extra argument for `freight transfer send`, placed after its options (repeatable).
    #[arg(long = "send-arg", value_name = "ARG", allow_hyphen_values = true)]
    send_args: Vec<String>,
}

/// The receiving side of one Freight run.
#[derive(Debug, Serialize)]
struct ReceiverRun {
    run: usize,
    /// Peak RSS of `freight transfer serve`, MiB (freight-measure, after SIGTERM).
    max_rss_mib: f64,
    /// Its CPU seconds (user + system), readiness and shutdown included.
    cpu_s: f64,
}

/// Bytes each side's application sent (transport overhead not counted).
#[derive(Debug, Serialize)]
struct WireBytes {
    /// `rsync --stats` "Total bytes sent", last run.
    rsync_total_bytes_sent: Option<u64>,
    /// `freight transfer send --json` `bytes_sent` (stored, compressed chunk bytes), last run.
    freight_bytes_sent: u64,
}

/// Goal of `transfer`.
#[derive(Debug, Serialize)]
struct SpeedupGoal {
    ratio_min: f64,
    /// Median rsync seconds / median freight seconds.
    ratio: f64,
    met: bool,
}

/// Everything `transfer` measured; the JSON report.
#[derive(Debug, Serialize)]
struct TransferReport {
    benchmark: &'static str,
    dataset: DatasetReport,
    commands: Vec<LabeledCommand>,
    runs: Vec<RunRecord>,
    receiver_runs: Vec<ReceiverRun>,
    comparison: Comparison,
    /// Median rsync seconds / median freight seconds.
    time_ratio_median: f64,
    /// Best rsync seconds / best freight seconds.
    time_ratio_best: f64,
    wire: WireBytes,
    /// The receiver's library, materialised after the last run, equals the source.
    freight_identical: bool,
    /// The first difference, if any.
    freight_difference: Option<String>,
    /// rsync's copy equals the source.
    rsync_identical: bool,
    rsync_difference: Option<String>,
    goal: SpeedupGoal,
}

/// `rsync --stats`' "Total bytes sent: 1,234" as a number.
pub(crate) fn rsync_bytes_sent(stats: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let n = line.trim().strip_prefix("Total bytes sent:")?;
        n.trim().replace([',', '.'], "").parse().ok()
    })
}

/// One measured run of `rsync` (a [`Sshd::rsync`] command) into `out`, its standard output
/// (`--stats`) kept in `stats`: the run's record (side `side`, output `out`'s apparent size)
/// and rsync's "Total bytes sent", or why `stats` could not be read. `what` names the run in
/// progress lines and errors.
pub(crate) fn rsync_measured(
    rsync: &mut Command,
    what: &str,
    side: &str,
    run: usize,
    out: &Path,
    stats: &Path,
    source_bytes: u64,
) -> Result<(RunRecord, io::Result<Option<u64>>), BenchError> {
    let stats_file =
        fs::File::create(stats).map_err(ctx(format!("creating {}", stats.display())))?;
    rsync.stdout(stats_file);
    let m = run_measured_keeping_stdout(what, rsync, source_bytes)?;
    let sent = fs::read_to_string(stats)
        .map_err(ctx(stats.display()))
        .map(|s| rsync_bytes_sent(&s));
    let out_bytes = disk_usage(out)?.apparent_bytes;
    Ok((RunRecord::new(side, run, &m, source_bytes, out_bytes), sent))
}

pub fn transfer(args: &TransferArgs) -> Result<(), BenchError> {
    let common = &args.common;
    let work = &common.work;
    let dataset = prepare(common)?;
    let source_bytes = dataset.bytes;
    let freight = |f: &dyn Fn(&mut Command) -> &mut Command| {
        let mut cmd = Command::new(&common.freight);
        f(&mut cmd);
        cmd
    };
    let (site_a, site_b) = (work.join("siteA"), work.join("siteB"));
    let (lib_a, lib_b) = (work.join("libA"), work.join("libB"));
    let (id_a, id_b) = (
        work.join(format!("{SENDER}.id")),
        work.join(format!("{RECEIVER}.id")),
    );
    let freight_out = work.join("freight-out");
    let rsync_out = work.join("rsync-out");
    let ssh_dir = work.join("ssh");
    let send_json = work.join("send.json");
    let rsync_stats = work.join("rsync-stats.txt");

    // Fresh sites and a fresh sending library every time (untimed).
    let stale = [&site_a, &site_b, &id_a, &id_b, &lib_a];
    for path in stale {
        remove_path(path)?;
    }
    let stale = stale.map(|p| quote(p.as_os_str())).join(" ");
    let mut commands = vec![LabeledCommand::new("setup", format!("rm -rf {stale}"))];
    let site = |dir: &Path, args: &[&str], file: Option<&Path>| {
        freight(&|c| {
            c.args(["site", "--site"]).arg(dir).args(args);
            if let Some(f) = file {
                c.arg(f);
            }
            c
        })
    };
    let setup = [
        site(&site_a, &["init", "--code", SENDER], None),
        site(&site_b, &["init", "--code", RECEIVER], None),
        site(&site_a, &["identity", "export", "--out"], Some(&id_a)),
        site(&site_b, &["identity", "export", "--out"], Some(&id_b)),
        // The receiver trusts the sender as its parent site, which may push to it.
        site(
            &site_a,
            &["identity", "import", "--role", "child"],
            Some(&id_b),
        ),
        site(
            &site_b,
            &["identity", "import", "--role", "parent"],
            Some(&id_a),
        ),
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

    eprintln!("starting a private sshd in {} ...", ssh_dir.display());
    let sshd = Sshd::start(&ssh_dir)?;
    commands.push(LabeledCommand::new(
        "setup",
        format!(
            "/usr/sbin/sshd -D -e -f {} (127.0.0.1:{}, keys made with ssh-keygen in {})",
            quote(ssh_dir.join("sshd_config").as_os_str()),
            sshd.port(),
            quote(ssh_dir.as_os_str())
        ),
    ));

    let mut rsync = sshd.rsync(&dataset.root, &rsync_out);
    let mut serve = freight(&|c| {
        c.args(["transfer", "--site"])
            .arg(&site_b)
            .arg("--library")
            .arg(&lib_b)
            .args(["serve", "--listen", "127.0.0.1:0"])
    });
    let send_for = |addr: &str| {
        freight(&|c| {
            c.args(["transfer", "--site"])
                .arg(&site_a)
                .arg("--library")
                .arg(&lib_a)
                .args(["send", "--to", addr, "--peer", RECEIVER])
                .args(["--package", PACKAGE, "--version", VERSION, "--json"])
                .args(&args.send_args)
        })
    };
    let out = |p: &Path| quote(p.as_os_str());
    commands.push(LabeledCommand::new(
        RSYNC_SIDE,
        format!(
            "rm -rf {0} && mkdir {0} && {1} > {2}",
            out(&rsync_out),
            command_line(&rsync),
            out(&rsync_stats)
        ),
    ));
    commands.push(LabeledCommand::new(
        "freight serve",
        format!(
            "rm -rf {} && {} & (untimed; wait for `serving site {RECEIVER} on ADDR`; SIGTERM after the send)",
            out(&lib_b),
            command_line(&serve)
        ),
    ));
    commands.push(LabeledCommand::new(
        FREIGHT_SIDE,
        format!("{} > {}", command_line(&send_for("ADDR")), out(&send_json)),
    ));

    let mut records = Vec::new();
    let mut receiver_runs = Vec::new();
    let mut wire_rsync = None;
    let mut wire_freight = 0;
    for run in 1..=common.runs {
        let run_no = run as usize;
        // rsync into an empty folder: a fresh copy, as Freight's into an empty library.
        remove_path(&rsync_out)?;
        fs::create_dir(&rsync_out).map_err(ctx(format!("creating {}", rsync_out.display())))?;
        let (record, sent) = rsync_measured(
            &mut rsync,
            &format!("{RSYNC_SIDE} run {run}/{}", common.runs),
            RSYNC_SIDE,
            run_no,
            &rsync_out,
            &rsync_stats,
            source_bytes,
        )?;
        wire_rsync = sent?;
        records.push(record);

        remove_path(&lib_b)?;
        let (server, addr) = Serve::start(&mut serve, |ready| {
            ready
                .strip_prefix("serving site ")
                .and_then(|rest| rest.split(" on ").nth(1))
                .map(|a| a.trim().to_owned())
        })?;
        let mut send = send_for(&addr);
        let json_file = fs::File::create(&send_json)
            .map_err(ctx(format!("creating {}", send_json.display())))?;
        send.stdout(json_file);
        let what = format!("{FREIGHT_SIDE} run {run}/{}", common.runs);
        let m = run_measured_keeping_stdout(&what, &mut send, source_bytes)?;
        let (rm, lines) = server.stop()?;
        if !lines.iter().any(|l| l.starts_with("received ")) {
            return Err(BenchError::Failed(format!(
                "freight transfer serve did not report the received package (its output: {lines:?})"
            )));
        }
        eprintln!(
            "  receiver: max RSS {:.1} MiB, CPU {:.2} s",
            rm.max_rss_mib(),
            rm.cpu().as_secs_f64()
        );
        receiver_runs.push(ReceiverRun {
            run: run_no,
            max_rss_mib: rm.max_rss_mib(),
            cpu_s: rm.cpu().as_secs_f64(),
        });
        let summary: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(&send_json).map_err(ctx(send_json.display()))?,
        )
        .map_err(|e| {
            BenchError::Failed(format!(
                "{}: not the send summary: {e}",
                send_json.display()
            ))
        })?;
        wire_freight = summary["bytes_sent"].as_u64().unwrap_or(0);
        records.push(RunRecord::new(
            FREIGHT_SIDE,
            run_no,
            &m,
            source_bytes,
            disk_usage(&lib_b)?.apparent_bytes,
        ));
    }
    drop(sshd);

    // Byte-identical after materialise (untimed).
    remove_path(&freight_out)?;
    let materialize = freight(&|c| {
        c.args(["library", "--library"])
            .arg(&lib_b)
            .args(["materialize", "--package", PACKAGE, "--version", VERSION])
            .arg(&freight_out)
    });
    run_setup(materialize, &mut commands)?;
    if let Some(c) = commands.last_mut() {
        c.step = "check".to_owned();
    }
    eprintln!("comparing the trees with the source ...");
    let freight_difference = freight_test_support::tree::difference(&dataset.root, &freight_out)?;
    // rsync over ssh here does not always keep symlink mtimes: that alone does not fail the
    // peer (Freight's copy is compared strictly).
    let rsync_difference =
        freight_test_support::tree::difference_with(&dataset.root, &rsync_out, true)?;

    let comparison = Comparison::of(&records, RSYNC_SIDE, FREIGHT_SIDE);
    let (rsync_s, freight_s) = (
        SideStats::of(RSYNC_SIDE, &records),
        SideStats::of(FREIGHT_SIDE, &records),
    );
    let (Some(rsync_s), Some(freight_s)) = (rsync_s, freight_s) else {
        unreachable!("at least one run of each side");
    };
    let time_ratio_median = rsync_s.median_wall_s / freight_s.median_wall_s;
    let report = TransferReport {
        benchmark: "transfer",
        dataset,
        commands,
        runs: records,
        receiver_runs,
        comparison,
        time_ratio_median,
        time_ratio_best: rsync_s.best_wall_s / freight_s.best_wall_s,
        wire: WireBytes {
            rsync_total_bytes_sent: wire_rsync,
            freight_bytes_sent: wire_freight,
        },
        freight_identical: freight_difference.is_none(),
        freight_difference,
        rsync_identical: rsync_difference.is_none(),
        rsync_difference,
        goal: SpeedupGoal {
            ratio_min: GOAL_SPEEDUP,
            ratio: time_ratio_median,
            met: time_ratio_median >= GOAL_SPEEDUP,
        },
    };
    print_transfer(&report);
    write_report(common.json.as_deref(), &report)?;
    if let Some(diff) = &report.freight_difference {
        return Err(BenchError::Failed(format!(
            "the transferred package is not byte-identical after materialise: {diff}"
        )));
    }
    if let Some(diff) = &report.rsync_difference {
        return Err(BenchError::Failed(format!(
            "rsync's copy differs from the source: {diff}"
        )));
    }
    Ok(())
}

fn print_transfer(r: &TransferReport) {
    print_header(&r.dataset, &r.commands, &r.runs);
    let c = &r.comparison;
    let (p, f) = (&c.peer, &c.freight);
    let max_rx = r
        .receiver_runs
        .iter()
        .map(|x| x.max_rss_mib)
        .fold(0.0, f64::max);
    let median_rx_cpu =
        harness::median(&r.receiver_runs.iter().map(|x| x.cpu_s).collect::<Vec<_>>());
    let mut t = Table::new(["", "rsync", "freight", "rsync/freight"]);
    t.figures(
        "best s",
        p.best_wall_s,
        f.best_wall_s,
        2,
        format!("{:.2}x", r.time_ratio_best),
    )
    .figures(
        "median s",
        p.median_wall_s,
        f.median_wall_s,
        2,
        format!("{:.2}x", r.time_ratio_median),
    )
    .figures(
        "best MB/s",
        p.best_mb_per_s,
        f.best_mb_per_s,
        1,
        String::new(),
    )
    .figures(
        "median MB/s",
        p.median_mb_per_s,
        f.median_mb_per_s,
        1,
        String::new(),
    )
    .figures(
        "sender max RSS MiB",
        p.max_rss_mib,
        f.max_rss_mib,
        1,
        String::new(),
    )
    .row([
        "receiver max RSS MiB".to_owned(),
        "-".to_owned(),
        format!("{max_rx:.1}"),
        String::new(),
    ])
    .figures(
        "sender median CPU s",
        p.median_cpu_s,
        f.median_cpu_s,
        2,
        String::new(),
    )
    .row([
        "receiver median CPU s".to_owned(),
        "-".to_owned(),
        format!("{median_rx_cpu:.2}"),
        String::new(),
    ])
    .row([
        "bytes sent (app level)".to_owned(),
        r.wire
            .rsync_total_bytes_sent
            .map_or("-".to_owned(), |b| b.to_string()),
        r.wire.freight_bytes_sent.to_string(),
        r.wire.rsync_total_bytes_sent.map_or(String::new(), |b| {
            format!("{:.2}x", b as f64 / r.wire.freight_bytes_sent.max(1) as f64)
        }),
    ])
    .row([
        "output bytes".to_owned(),
        p.output_bytes.to_string(),
        f.output_bytes.to_string(),
        String::new(),
    ]);
    print!("{t}");
    println!(
        "rsync: sender = the local rsync and the ssh it waits for (freight-measure); the remote rsync under sshd is not measured. \
         freight: sender = `freight transfer send` (connect, handshake, transfer, commit); receiver = `freight transfer serve` \
         (freight-measure, after SIGTERM). output bytes: rsync's copy / the receiver's library."
    );
    println!();
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!(
        "byte-identical after materialise: {}{}",
        yes(r.freight_identical),
        r.freight_difference
            .as_deref()
            .map_or(String::new(), |d| format!(" ({d})"))
    );
    println!(
        "rsync copy identical to source (symlink mtimes not compared): {}{}",
        yes(r.rsync_identical),
        r.rsync_difference
            .as_deref()
            .map_or(String::new(), |d| format!(" ({d})"))
    );
    println!();
    print_goal(
        &format!(
            "rsync time / freight time (median) >= {:.1}x",
            r.goal.ratio_min
        ),
        r.goal.met,
        &format!("{:.2}x", r.goal.ratio),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_stats_parse() {
        let stats =
            "Number of files: 3\nTotal bytes sent: 2,147,912,345\nTotal bytes received: 1,234\n";
        assert_eq!(rsync_bytes_sent(stats), Some(2_147_912_345));
        assert_eq!(rsync_bytes_sent("Total bytes sent: 99"), Some(99));
        assert_eq!(rsync_bytes_sent("nothing"), None);
    }
}
