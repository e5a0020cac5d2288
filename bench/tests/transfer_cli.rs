//! End-to-end runs of `freight-bench transfer` with the real freight binary, a private sshd
//! and rsync, on a small tree.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{require_tools, stub, temp_dir};
use freight_test_support::bins;

fn require_transfer_tools() {
    require_tools(&[
        ("rsync", "rsync"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("/usr/sbin/sshd", "openssh-server"),
    ]);
}

fn bench(work: &Path, freight: &Path, extra: &[&str]) -> Output {
    common::bench_sized("transfer", "8MiB", work, freight, extra)
}

/// Heavy tier: needs sshd and rsync (the peer side).
#[test]
fn heavy_transfer_runs_both_sides_and_checks_the_copies() {
    require_transfer_tools();
    let dir = temp_dir();
    let work = dir.path().join("work");
    let json = dir.path().join("report.json");
    let freight = bins::appliance("freight");
    let out = bench(
        &work,
        &freight,
        &["--runs", "1", "--json", json.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let w = |name: &str| work.join(name).display().to_string();
    for expected in [
        format!(
            "setup:         {} site --site {} init --code CAS",
            freight.display(),
            w("siteA")
        ),
        format!(
            "setup:         {} site --site {} identity import --role parent {}",
            freight.display(),
            w("siteB"),
            w("CAS.id")
        ),
        format!(
            "rsync:         rm -rf {0} && mkdir {0} && rsync -a --stats -e 'ssh -p ",
            w("rsync-out")
        ),
        format!("{}/ root@127.0.0.1:{}/ > ", w("src"), w("rsync-out")),
        format!(
            "freight:       {} transfer --site {} --library {} send --to ADDR --peer PS1 --package CAS00001 --version 1 --json > {}",
            freight.display(),
            w("siteA"),
            w("libA"),
            w("send.json")
        ),
        format!(
            "check:         {} library --library {} materialize --package CAS00001 --version 1 {}",
            freight.display(),
            w("libB"),
            w("freight-out")
        ),
        "\nmedian s ".to_owned(),
        "\nreceiver max RSS MiB ".to_owned(),
        "\nbytes sent (app level) ".to_owned(),
        "byte-identical after materialise: yes\n".to_owned(),
        "rsync copy identical to source (symlink mtimes not compared): yes\n".to_owned(),
        "goal: rsync time / freight time (median) >= 4.0x: ".to_owned(),
    ] {
        assert!(stdout.contains(&expected), "{expected:?} not in\n{stdout}");
    }
    // Child output (rsync --stats, the JSON summary) stays out of the report.
    assert!(!stdout.contains("Total bytes sent"), "{stdout}");
    assert!(!stdout.contains("\"chunks_sent\""), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["benchmark"], "transfer");
    let sides: Vec<&str> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["side"].as_str().unwrap())
        .collect();
    assert_eq!(sides, ["rsync", "freight"]);
    assert_eq!(report["dataset"]["bytes"], 8 << 20);
    assert_eq!(report["freight_identical"], true);
    assert_eq!(report["rsync_identical"], true);
    assert!(report["receiver_runs"][0]["max_rss_mib"].as_f64().unwrap() > 0.0);
    // rsync sends the whole tree; Freight sends the compressed chunks of all of it.
    let rsync_sent = report["wire"]["rsync_total_bytes_sent"].as_u64().unwrap();
    let freight_sent = report["wire"]["freight_bytes_sent"].as_u64().unwrap();
    assert!(rsync_sent >= 8 << 20, "{rsync_sent}");
    assert!(
        freight_sent > 0 && freight_sent <= 9 << 20,
        "{freight_sent}"
    );
    let ratio = report["time_ratio_median"].as_f64().unwrap();
    assert!(ratio > 0.0);
    assert_eq!(report["goal"]["ratio"], ratio);
    assert_eq!(report["goal"]["met"], ratio >= 4.0);
    assert!(work.join("freight-out").is_dir());
    // The private sshd is gone.
    let pid = fs::read_to_string(work.join("ssh/sshd.pid")).unwrap_or_default();
    if let Ok(pid) = pid.trim().parse::<i32>() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "sshd {pid} still runs"
        );
    }
}

/// Heavy tier: needs sshd and rsync (the peer side).
#[test]
fn heavy_transfer_fails_when_the_copy_differs() {
    require_transfer_tools();
    let dir = temp_dir();
    let real = bins::appliance("freight");
    // The real freight, except that materialise damages one file of what it wrote.
    let freight = stub(
        dir.path(),
        "freight",
        &format!(
            r#"real={}
if [ "$1" = library ] && [ "$4" = materialize ]; then
  "$real" "$@"
  out=${{@: -1}}
  f=$(find "$out" -type f | sort | head -n 1)
  chmod u+w "$f"; echo damaged >> "$f"
  exit 0
fi
exec "$real" "$@""#,
            real.display()
        ),
    );
    let out = bench(&dir.path().join("work"), &freight, &["--runs", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("byte-identical after materialise: no ("),
        "{stdout}"
    );
    assert!(
        stderr.contains("not byte-identical after materialise"),
        "{stderr}"
    );
}
