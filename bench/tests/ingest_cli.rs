//! End-to-end runs of `freight-bench ingest` against stub freight binaries.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{require_peer_tools, stub, temp_dir};

fn bench(work: &Path, freight: &Path, extra: &[&str]) -> Output {
    common::bench("ingest", work, freight, extra)
}

#[test]
fn ingest_runs_both_sides_and_reports() {
    require_peer_tools();
    let dir = temp_dir();
    // Records its arguments and fills the library like a tiny ingest would.
    let freight = stub(
        dir.path(),
        "freight",
        r#"echo "$@" >> "$(dirname "$0")/args"
lib=$4; src=${@: -1}
mkdir -p "$lib"; tar -cf - -C "$src" . | zstd -1 -q > "$lib/blob.zst""#,
    );
    let work = dir.path().join("work");
    let json = dir.path().join("report.json");
    let out = bench(
        &work,
        &freight,
        &[
            "--runs",
            "2",
            "--freight-arg",
            "--jobs=1",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("median MB/s"), "{stdout}");
    assert!(
        stdout.contains("goal: freight peak RSS <= 200 MiB"),
        "{stdout}"
    );

    let args = fs::read_to_string(dir.path().join("args")).unwrap();
    let src = work.join("src");
    let expected = format!(
        "library ingest --library {} --package CAS00001 --version 1 --jobs=1 {}\n",
        work.join("lib").display(),
        src.display()
    );
    assert_eq!(args, expected.repeat(2));
    assert!(work.join("peer.tar.zst").is_file());
    assert!(work.join("src.spec").is_file());

    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let sides: Vec<&str> = runs.iter().map(|r| r["side"].as_str().unwrap()).collect();
    assert_eq!(sides, ["peer", "freight", "peer", "freight"]);
    assert_eq!(report["dataset"]["bytes"], 3 << 20);
    assert!(report["peer_output_bytes"].as_u64().unwrap() > 0);
    assert!(report["freight_library_bytes"].as_u64().unwrap() > 0);
    assert!(report["ratio_median"].as_f64().unwrap() > 0.0);
    assert!(report["goals"]["rss_met"].as_bool().unwrap());

    // A second invocation reuses the dataset.
    let out = bench(&work, &freight, &["--runs", "1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reusing dataset"));
}

#[test]
fn ingest_fails_when_freight_fails() {
    require_peer_tools();
    let dir = temp_dir();
    let freight = stub(dir.path(), "freight", "exit 3");
    let out = bench(&dir.path().join("work"), &freight, &["--runs", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("freight run 1/1 failed"), "{stderr}");

    let missing = bench(&dir.path().join("work"), &dir.path().join("nope"), &[]);
    assert!(!missing.status.success());
}
