//! End-to-end runs of `freight-bench quic-raw` (against iperf3) and `freight-bench throttle`,
//! kept to a few seconds each.

mod common;

use std::fs;
use std::process::{Command, Output};

use common::{require_tools, temp_dir};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_freight-bench"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `freight-bench ARGS --json JSON`, requires success and every `expected` line piece on
/// standard output, and returns the output and the JSON report.
fn bench_reporting(
    args: &[&str],
    json: &std::path::Path,
    expected: &[&str],
) -> (String, serde_json::Value) {
    let mut all = args.to_vec();
    all.extend(["--json", json.to_str().unwrap()]);
    let out = bench(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for e in expected {
        assert!(stdout.contains(e), "{e:?} not in\n{stdout}");
    }
    let report = serde_json::from_str(&fs::read_to_string(json).unwrap()).unwrap();
    (stdout, report)
}

/// Heavy tier: needs iperf3 (the peer side).
#[test]
fn heavy_quic_raw_runs_both_sides_and_reports_the_ratio() {
    require_tools(&[("iperf3", "iperf3")]);
    let dir = temp_dir();
    let work = dir.path().join("work");
    let json = dir.path().join("quic.json");
    let (_, report) = bench_reporting(
        &[
            "quic-raw",
            "--seconds",
            "1",
            "--runs",
            "1",
            "--work",
            work.to_str().unwrap(),
        ],
        &json,
        &[
            "iperf3 server: iperf3 -s -1 -B 127.0.0.1 -p ",
            " -t 1 -J\n",
            "freight quic:  in this process",
            "\nmedian MB/s ",
            "goal: freight quic / iperf3 tcp median throughput >= 0.35: ",
        ],
    );
    let runs = report["runs"].as_array().unwrap();
    let sides: Vec<&str> = runs.iter().map(|r| r["side"].as_str().unwrap()).collect();
    assert_eq!(sides, ["iperf3 tcp", "freight quic"]);
    for run in runs {
        assert!(run["mb_per_s"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["bytes"].as_u64().unwrap() > 0, "{run}");
    }
    // Whole 1 MiB chunks arrived, and quinn's path statistics came along.
    assert_eq!(runs[1]["bytes"].as_u64().unwrap() % (1 << 20), 0);
    assert!(runs[1]["path"]["mtu"].as_u64().unwrap() >= 1200);
    let ratio = report["ratio_median"].as_f64().unwrap();
    assert_eq!(report["goal_met"], ratio >= 0.35);
}

#[test]
fn quic_raw_takes_node_settings() {
    let dir = temp_dir();
    let out = bench(&[
        "quic-raw",
        "--skip-iperf3",
        "--seconds",
        "1",
        "--runs",
        "1",
        "--streams",
        "2",
        "--initial-mtu",
        "1500",
        "--max-udp-payload",
        "1500",
        "--send-window",
        "4MiB",
        "--work",
        dir.path().join("work").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("2 unidirectional streams"), "{stdout}");
    assert!(stdout.contains("send_window: 4194304"), "{stdout}");
    assert!(
        stdout.contains("max_udp_payload: 1500, initial_mtu: 1500"),
        "{stdout}"
    );
    assert!(stdout.contains("no ratio, no goal"), "{stdout}");
    assert!(!stdout.contains("goal:"), "{stdout}");
}

#[test]
fn throttle_holds_rates_and_changes() {
    let dir = temp_dir();
    let json = dir.path().join("throttle.json");
    let (_, report) = bench_reporting(
        &[
            "throttle",
            "--rates",
            "2MB/s",
            "--seconds",
            "3",
            "--change-rates",
            "2MB/s,4MB/s",
            "--change-at",
            "1.5",
            "--change-seconds",
            "3",
            "--work",
            dir.path().join("work").to_str().unwrap(),
        ],
        &json,
        &[
            "goal: 2MB/s held within ±3% over 3 s: ",
            "goal: rate change 2MB/s -> 4MB/s applies within 1 s: ",
            "goal: rate change 4MB/s -> 2MB/s applies within 1 s: ",
            "\n2MB/s -> 4MB/s ",
        ],
    );
    let held = &report["rates"][0];
    assert_eq!(held["configured_bytes_per_s"], 2_000_000);
    // Pacing works at all: a busy machine may slow it, never speed it past the limit.
    let measured = held["measured_bytes_per_s"].as_f64().unwrap();
    assert!(
        (1.5e6..2.1e6).contains(&measured),
        "measured {measured} B/s"
    );
    let changes = report["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    for c in changes {
        let at = c["changed_at_s"].as_f64().unwrap();
        assert!((1.5..1.7).contains(&at), "{c}");
    }
    // Before the change the first rate held, after it the second.
    let before = changes[0]["before_bytes_per_s"].as_f64().unwrap();
    assert!((1.5e6..2.1e6).contains(&before), "{before}");
    let after = changes[0]["after_bytes_per_s"].as_f64().unwrap();
    assert!((3.0e6..4.2e6).contains(&after), "{after}");

    // Nonsense is refused with a message.
    let out = bench(&["throttle", "--rates", "unlimited", "--seconds", "2"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not pace at a fixed rate"), "{stderr}");
}
