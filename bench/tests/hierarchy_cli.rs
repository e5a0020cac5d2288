//! An end-to-end run of `freight-bench hierarchy` with the real freight binary (three site
//! servers and two DPs as its daemons), a private sshd and rsync, on a small tree.

mod common;

use common::{require_tools, temp_dir};
use freight_test_support::bins;

/// Heavy tier: needs sshd and rsync (the peer side).
#[test]
fn heavy_hierarchy_measures_three_tiers_one_hop_and_chained_rsync_and_checks_the_copy() {
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
        "hierarchy",
        "8MiB",
        &work,
        &bins::appliance("freight"),
        &["--runs", "1", "--json", json.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "DP copy at SS1 byte-identical after materialise: yes",
        "goal: three tiers at least 3x faster than rsync -a chained hop by hop: ",
        "goal: three tiers in at most 1.3x the time of one hop: ",
        "goal: peak RSS of every freightd at most 200 MiB: ",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in\n{stdout}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (chain, tiers, hop) = (
        r["rsync_chain_s"][0].as_f64().unwrap(),
        r["three_tier_s"][0].as_f64().unwrap(),
        r["one_hop_s"][0].as_f64().unwrap(),
    );
    assert!(chain > 0.0 && tiers > 0.0 && hop > 0.0, "{r}");
    assert!((r["vs_rsync"].as_f64().unwrap() - chain / tiers).abs() < 1e-9);
    assert!((r["vs_one_hop"].as_f64().unwrap() - tiers / hop).abs() < 1e-9);
    assert_eq!(
        r["rsync_runs"].as_array().unwrap().len(),
        3,
        "three rsync hops"
    );
    assert_eq!(
        r["max_rss_mib"].as_array().unwrap().len(),
        5,
        "five daemons"
    );
    assert_eq!(r["freight_identical"], true);
}
