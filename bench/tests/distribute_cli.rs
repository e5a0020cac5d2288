//! An end-to-end run of `freight-bench distribute` with the real freight binary (its daemon
//! and CLI), a private sshd and rsync, on a small tree.

mod common;

use common::{require_tools, temp_dir};
use freight_test_support::bins;

/// Heavy tier: needs sshd and rsync (the peer side).
#[test]
fn heavy_distribute_measures_every_phase_against_rsync_and_checks_the_copy() {
    require_tools(&[
        ("rsync", "rsync"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("/usr/sbin/sshd", "openssh-server"),
    ]);
    let dir = temp_dir();
    let work = dir.path().join("work");
    let json = dir.path().join("report.json");
    let out = common::bench_sized(
        "distribute",
        "8MiB",
        &work,
        &bins::appliance("freight"),
        &[
            "--runs",
            "1",
            "--dps",
            "2",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "(a) distribute to one DP vs rsync",
        "(b) 2 DPs vs one DP",
        "(c) update 5% vs rsync",
        "DP copy byte-identical after materialise: yes",
        "goal: (a) distribute to one DP at least 4x faster than rsync -a over ssh: ",
        "goal: (d) peak RSS of freightd at most 200 MiB: ",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in\n{stdout}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // Every phase measured something, and the ratios are what the medians say.
    for phase in ["one_dp", "many_dps", "update"] {
        let p = &r[phase];
        let (peer, freight) = (
            p["peer_s"].as_f64().unwrap(),
            p["freight_s"].as_f64().unwrap(),
        );
        assert!(peer > 0.0 && freight > 0.0, "{phase}: {p}");
    }
    let one = &r["one_dp"];
    let want = one["peer_s"].as_f64().unwrap() / one["freight_s"].as_f64().unwrap();
    assert!((one["ratio"].as_f64().unwrap() - want).abs() < 1e-9);
    assert!(r["update_bytes_rsync"].as_u64().unwrap() > 0);
    assert!(r["update_bytes_freight"].as_u64().unwrap() > 0);
    assert!(r["dp_max_rss_mib"].as_f64().unwrap() > 1.0);
    assert_eq!(r["freight_identical"], true);
}
