//! End to end: real `freightd` processes (a site server and DPs) on loopback, driven through
//! the admin API, checked over HTTP with `curl` and in the site database.

use freight_test_support::bins;
use freight_test_support::dataset::{DatasetSpec, generate};
use freight_test_support::tree::disk_usage;
use freight_tests::hosts::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(90);

/// Position of the first `seq` of IDs in `ids`, in order (each after the previous).
fn in_order(ids: &[u64], seq: &[u64]) -> bool {
    let mut it = ids.iter();
    seq.iter().all(|want| it.any(|id| id == want))
}

fn tree(dir: &Path, bytes: u64, seed: u64) {
    generate(dir, &DatasetSpec::mixed(bytes, seed)).unwrap();
}

/// Rewrites every 20th file (5%) with new content and deletes one other file; returns the
/// bytes written and the deleted file.
fn change_five_percent(src: &Path) -> (u64, String) {
    let (_, written) = freight_test_support::rewrite_every_20th(src, 7).unwrap();
    let all = files(src);
    let gone = all[all.len() / 2 + 1].clone();
    std::fs::remove_file(src.join(&gone)).unwrap();
    (written, gone)
}

#[test]
fn distribute_update_redistribute_validate_and_remove_end_with_the_right_status_everywhere() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    // dp1 also keeps a materialised share of what it hosts.
    let mut dp1 = net.dp("dp1", "DP1", "standard", "share = \"share\"\n");
    let share = net.p("dp1/share");
    let mut dp2 = net.dp("dp2", "DP2", "standard", "");
    for h in [&mut site, &mut dp1, &mut dp2] {
        h.start();
    }
    site.add_dp(&dp1, "dp1", &[]);
    site.add_dp(&dp2, "dp2", &[]);
    site.ok(
        "POST",
        "/v1/dpgroups",
        Some(json!({"name": "all", "members": ["dp1", "dp2"]})),
    );

    let src = net.p("src");
    tree(&src, 24 << 20, 1);
    let id = site.create("office", &src);
    assert_eq!(id, "PS100001");

    // Distribute to a group.
    site.act(&id, "distribute", json!({"groups": ["all"]}));
    site.settle(SETTLE);
    for (dp, state, v) in site.status(&id) {
        assert_eq!((state.as_str(), v), ("Installed", Some(1)), "{dp}");
    }
    for dp in ["dp1", "dp2"] {
        let ids = site.message_ids(&id, Some(dp));
        assert!(
            in_order(
                &ids,
                &[2376, 2311, 2300, 2342, 2357, 8200, 2329, 8210, 2330, 2301]
            ),
            "{dp}: {ids:?}"
        );
    }
    assert_serves(&dp1, &id, "1", &src);
    assert_serves(&dp2, &id, "latest", &src);
    assert_eq!(
        freight_test_support::tree::difference(&src, &share.join(&id)).unwrap(),
        None
    );
    let summary = &site.ok("GET", &format!("/v1/packages/{id}"), None)["package"]["summary"];
    assert_eq!(
        summary,
        &json!({"targeted": 2, "installed": 2, "retrying": 0, "failed": 0})
    );
    let first = site.bytes_sent(&id, 1, "dp1", "install");
    assert!(first > 0);

    // Update with 5% of the files changed and one dropped: only new chunks move.
    let (changed, gone) = change_five_percent(&src);
    let v2 = site.act(&id, "update", json!({}));
    assert_eq!(v2["version"], 2);
    site.settle(SETTLE);
    for (dp, state, v) in site.status(&id) {
        assert_eq!((state.as_str(), v), ("Installed", Some(2)), "{dp}");
    }
    for dp in ["dp1", "dp2"] {
        let sent = site.bytes_sent(&id, 2, dp, "install");
        // New chunks are at most the changed files plus the chunks at their edges (≤ 4 MiB
        // per file boundary is far more than ever needed; files here are small).
        assert!(
            sent > 0 && sent <= changed + (2 << 20),
            "{dp}: sent {sent}, changed {changed}"
        );
        assert!(
            sent * 5 < first,
            "{dp}: update sent {sent} of a {first}-byte first copy"
        );
    }
    assert_serves(&dp1, &id, "2", &src);
    assert_eq!(
        freight_test_support::tree::difference(&src, &share.join(&id)).unwrap(),
        None
    );
    assert!(
        fetch(dp1.http.as_deref().unwrap(), &id, "2", &gone).is_none(),
        "{gone} dropped"
    );
    assert!(
        fetch(dp1.http.as_deref().unwrap(), &id, "1", &files(&src)[0]).is_none(),
        "v1 gone"
    );

    // An update with nothing changed makes no version and says so (issue 10 point 10).
    let (code, answer) = site.api(
        "POST",
        &format!("/v1/packages/{id}/update"),
        Some(json!({})),
    );
    assert_eq!(code, 409, "{answer}");
    let msg = format!("package {id}: nothing changed since version 2; no version made");
    assert_eq!(answer["error"], msg.as_str(), "{answer}");
    assert_eq!(
        site.ok("GET", &format!("/v1/packages/{id}"), None)["package"]["version"],
        2
    );

    // Validate everywhere: clean.
    site.act(&id, "validate", json!({}));
    site.settle(SETTLE);
    let ids = site.message_ids(&id, None);
    assert_eq!(ids.iter().filter(|i| **i == 2384).count(), 2, "{ids:?}");

    // Corrupt a pack on dp2: validate reports it, redistribute repairs it.
    corrupt_a_pack(&dp2.library);
    site.act(&id, "validate", json!({"dps": ["dp2"]}));
    site.settle(SETTLE);
    assert!(site.message_ids(&id, Some("dp2")).contains(&2386));
    let st = site.status(&id);
    assert!(
        st.contains(&("dp2".into(), "Failed".into(), Some(2))),
        "{st:?}"
    );
    site.act(&id, "redistribute", json!({"dps": ["dp2"]}));
    site.settle(SETTLE);
    let st = site.status(&id);
    assert!(
        st.contains(&("dp2".into(), "Installed".into(), Some(2))),
        "{st:?}"
    );
    assert_serves(&dp2, &id, "2", &src);
    // Only what failed verification moves again (issue 11 item 4: the DP keeps its good
    // content and serves it throughout), not the whole package.
    let again = site.bytes_sent(&id, 2, "dp2", "redistribute");
    assert!(
        again > 0 && again < first / 2,
        "redistribute re-sent {again} of {first}"
    );

    // A second package sharing content: removing the first from dp1 keeps the shared content.
    let src2 = net.p("src2");
    std::fs::create_dir_all(&src2).unwrap();
    let shared = files(&src).into_iter().next_back().unwrap();
    std::fs::copy(src.join(&shared), src2.join("shared.bin")).unwrap();
    std::fs::write(src2.join("own.txt"), b"only in the second package").unwrap();
    let id2 = site.create("tools", &src2);
    site.act(&id2, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    let held = disk_usage(&dp1.library.join("store"))
        .unwrap()
        .apparent_bytes;
    site.ok("DELETE", &format!("/v1/packages/{id}?dp=dp1"), None);
    site.settle(SETTLE);
    let st = site.status(&id);
    assert!(
        st.contains(&("dp1".into(), "Removed".into(), None)),
        "{st:?}"
    );
    assert!(site.message_ids(&id, Some("dp1")).contains(&2332));
    assert!(!share.join(&id).exists(), "the share goes with the package");
    assert!(fetch(dp1.http.as_deref().unwrap(), &id, "latest", &shared).is_none());
    assert_serves(&dp1, &id2, "1", &src2);
    // What stays on dp1 is the second package's content and nothing else.
    dp1.stop();
    let stats = dp1.library_stats();
    let kept: u64 = stats["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pack_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(stats["packages"].as_array().unwrap().len(), 1, "{stats}");
    assert_eq!(stats["packages"][0]["package"], id2.as_str(), "{stats}");
    assert_eq!(stats["garbage_bytes"], 0, "{stats}");
    assert!(
        kept <= disk_usage(&src2).unwrap().apparent_bytes + (256 << 10) && kept < held,
        "dp1 keeps {kept} bytes of packs after the removal (held {held})"
    );

    // The whole package goes: dp2 drops it and the package leaves the list.
    site.ok("DELETE", &format!("/v1/packages/{id}"), None);
    site.settle(SETTLE);
    assert!(site.status(&id).iter().all(|(_, s, _)| s == "Removed"));
    let (code, _) = site.api("GET", &format!("/v1/packages/{id}"), None);
    assert_eq!(code, 404);

    for h in [&mut site, &mut dp1, &mut dp2] {
        h.stop();
    }
}

/// Flips bytes in the middle of the largest pack data file.
fn corrupt_a_pack(lib: &Path) {
    let mut packs: Vec<_> = files(lib)
        .into_iter()
        .map(|f| lib.join(f))
        .filter(|p| {
            p.to_string_lossy().contains("/packs/") && !p.to_string_lossy().ends_with(".idx")
        })
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let p = packs.last().expect("a pack file");
    let mut data = std::fs::read(p).unwrap();
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(p, data).unwrap();
}

#[test]
fn an_unreachable_dp_retries_then_fails_and_recovers_on_redistribute() {
    let net = Net::new();
    let (site, mut dp) = net.site_and_dp("");
    dp.stop();
    let src = net.p("src");
    tree(&src, 2 << 20, 3);
    let id = site.create("p", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.wait_for("Retrying", SETTLE, |s| {
        s.status(&id).first().is_some_and(|r| r.1 == "Retrying")
    });
    site.settle(SETTLE);
    let st = site.status(&id);
    assert_eq!(st[0].1, "Failed", "{st:?}");
    let ids = site.message_ids(&id, Some("dp1"));
    assert_eq!(ids.iter().filter(|i| **i == 8201).count(), 2, "{ids:?}");
    assert!(ids.contains(&8202) && ids.contains(&2302), "{ids:?}");
    dp.start();
    site.act(&id, "redistribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    assert_eq!(site.status(&id)[0].1, "Installed");
    assert_serves(&dp, &id, "1", &src);

    // A removal from a DP that is down stays Removal Pending through its retries, fails, and
    // succeeds once asked again with the DP back.
    dp.stop();
    site.ok("DELETE", &format!("/v1/packages/{id}?dp=dp1"), None);
    site.wait_for("a retry of the removal", SETTLE, |s| {
        s.message_ids(&id, Some("dp1"))
            .iter()
            .filter(|i| **i == 8201)
            .count()
            >= 3
    });
    assert_eq!(site.status(&id)[0].1, "Removal Pending");
    site.settle(SETTLE);
    assert_eq!(site.status(&id)[0].1, "Failed");
    dp.start();
    assert_serves(&dp, &id, "1", &src);
    site.ok("DELETE", &format!("/v1/packages/{id}?dp=dp1"), None);
    site.settle(SETTLE);
    assert_eq!(site.status(&id), [("dp1".into(), "Removed".into(), None)]);
    assert!(fetch(dp.http.as_deref().unwrap(), &id, "latest", &files(&src)[0]).is_none());
}

#[test]
fn a_dp_with_an_untrusted_key_is_refused() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let mut dp = net.dp("dp", "DP1", "standard", "");
    // Another host claims to be DP1 with its own key: the site trusts that key, not the DP's.
    let impostor = net.dp("imp", "DP1", "standard", "");
    site.start();
    dp.start();
    dp.trust(&site, "site-server");
    site.ok(
        "POST",
        "/v1/dps",
        Some(json!({"name": "dp1", "kind": "standard", "address": dp.quic, "identity": impostor.identity()})),
    );
    let src = net.p("src");
    tree(&src, 1 << 20, 4);
    let id = site.create("p", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    assert_eq!(site.status(&id)[0].1, "Failed");
    let msgs = site.messages(&id);
    let refusal = msgs.iter().find(|m| m["id"] == 8202).expect("8202");
    let text = refusal["text"].as_str().unwrap();
    assert!(
        text.contains("key") || text.contains("certificate"),
        "{text}"
    );
    assert!(fetch(dp.http.as_deref().unwrap(), &id, "1", &files(&src)[0]).is_none());
}

#[test]
fn bad_requests_are_refused_with_one_line_naming_the_object() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    site.start();
    for (method, path, body, want) in [
        (
            "POST",
            "/v1/packages/PS100009/distribute",
            json!({"dps": ["x"]}),
            "no package PS100009",
        ),
        (
            "POST",
            "/v1/packages",
            json!({"name": "a", "source": "/nonexistent/src"}),
            "/nonexistent/src",
        ),
        (
            "POST",
            "/v1/packages",
            json!({"name": "a", "source": "relative"}),
            "not absolute",
        ),
        ("DELETE", "/v1/dps/nope", json!(null), "no DP named nope"),
        (
            "POST",
            "/v1/dps",
            json!({"name": "d", "kind": "standard", "address": "nowhere", "identity": ""}),
            "not host:port",
        ),
        (
            "POST",
            "/v1/dps",
            json!({"name": "d", "kind": "standard", "address": "127.0.0.1:1", "identity": "junk"}),
            "identity not readable",
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (code, v) = site.api(method, path, body);
        assert!((400..500).contains(&code), "{path}: {code} {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(want) && !e.contains('\n'), "{path}: {e}");
    }
    let src = net.p("src");
    tree(&src, 1 << 20, 5);
    let id = site.create("p", &src);
    let (code, v) = site.api(
        "POST",
        &format!("/v1/packages/{id}/distribute"),
        Some(json!({"dps": ["ghost"]})),
    );
    assert_eq!(code, 404);
    assert!(v["error"].as_str().unwrap().contains("no DP named ghost"));
}

#[test]
fn freightd_refuses_a_bad_config_a_locked_library_and_an_unreadable_key() {
    let net = Net::new();
    let run = |config: &Path| {
        let out = std::process::Command::new(bins::appliance("freightd"))
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        // 78: a refused start, which the appliance's unit does not restart.
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        err
    };
    let bad = net.p("bad.toml");
    std::fs::write(&bad, "home = \"h\"\nlibrary = \"l\"\nlisten = \"127.0.0.1:0\"\n[dp]\nhttp = \"127.0.0.1:0\"\nspeed = 3\n").unwrap();
    assert!(run(&bad).contains("unknown field"));

    let mut a = net.dp("a", "DP1", "standard", "");
    a.start();
    // A second daemon on the same library.
    let second = net.p("a/second.toml");
    std::fs::write(
        &second,
        format!("home = \"home\"\nlibrary = \"library\"\nlisten = \"127.0.0.1:0\"\n[dp]\nhttp = \"127.0.0.1:{}\"\n", free_port()),
    )
    .unwrap();
    let e = run(&second);
    assert!(e.contains("library") && e.contains("lock"), "{e}");
    a.stop();

    let b = net.dp("b", "DP2", "standard", "");
    let key = b.home().join("site.key");
    std::fs::write(&key, b"not a key").unwrap();
    let e = run(&b.config);
    assert!(e.contains("site.key"), "{e}");
}

#[test]
fn a_pull_dp_waits_for_a_source_pulls_from_the_first_that_works_and_reports_capacity() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let mut dp1 = net.dp("dp1", "DP1", "standard", "");
    let mut dp2 = net.dp("dp2", "DP2", "standard", "");
    let mut pull = net.dp("pull", "PD1", "pull", "pull_capacity = 1\n");
    // A dead source holds the pull back for a whole idle timeout: long enough that a second
    // notification meets a full pull DP.
    let text = std::fs::read_to_string(&pull.config)
        .unwrap()
        .replace("\"3s\"", "\"10s\"");
    std::fs::write(&pull.config, text).unwrap();
    for h in [&mut site, &mut dp1, &mut dp2, &mut pull] {
        h.start();
    }
    for s in [&dp1, &dp2] {
        pull.pull_from(s);
    }
    site.add_dp(&dp1, "dp1", &[]);
    site.add_dp(&dp2, "dp2", &[]);
    site.add_dp(&pull, "pull", &["dp2", "dp1"]);
    let (a, b) = (net.p("a"), net.p("b"));
    tree(&a, 4 << 20, 10);
    tree(&b, 4 << 20, 11);
    let (ida, idb) = (site.create("a", &a), site.create("b", &b));

    // A is on both sources; then the first-ranked source dies.
    site.act(&ida, "distribute", json!({"dps": ["dp1", "dp2"]}));
    site.settle(SETTLE);
    dp2.kill();

    // B is on no source yet: 8212 and retries.
    site.act(&idb, "distribute", json!({"dps": ["pull"]}));
    site.wait_for("8212", SETTLE, |s| {
        s.message_ids(&idb, Some("pull")).contains(&8212)
    });
    assert_eq!(site.status(&idb)[0].1, "Retrying");

    // A to the pull DP: it tries dp2 (dead) for a whole idle timeout, meanwhile B's source
    // appears and B's notification finds the pull DP full (capacity 1): 8211.
    site.act(&ida, "distribute", json!({"dps": ["pull"]}));
    site.act(&idb, "distribute", json!({"dps": ["dp1"]}));
    site.wait_for("8211", SETTLE, |s| {
        s.message_ids(&idb, Some("pull")).contains(&8211)
    });
    site.settle(SETTLE);
    for id in [&ida, &idb] {
        let st = site.status(id);
        assert!(
            st.contains(&("pull".into(), "Installed".into(), Some(1))),
            "{id}: {st:?}"
        );
        assert!(in_order(
            &site.message_ids(id, Some("pull")),
            &[2357, 8200, 2330]
        ));
    }
    assert_serves(&pull, &ida, "1", &a);
    assert_serves(&pull, &idb, "1", &b);
}

/// With SPEC's pull retry delay (30 minutes), a pull DP whose version no source holds yet
/// (8212) gets it as soon as a source installs it (the source's install wakes the waiting
/// job instead of leaving it to its retry delay); and a pull DP's copy distributed with its
/// source's is held until the source has it, instead of failing to find a source.
#[test]
fn a_pull_dp_waiting_for_its_source_starts_when_the_source_installs_not_after_the_retry_delay() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let text = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace("pull_retry_delay = \"1s\"", "pull_retry_delay = \"30min\"");
    std::fs::write(&site.config, text).unwrap();
    let mut dp1 = net.dp("dp1", "DP1", "standard", "");
    let mut pull = net.dp("pull", "PD1", "pull", "");
    for h in [&mut site, &mut dp1, &mut pull] {
        h.start();
    }
    pull.pull_from(&dp1);
    site.add_dp(&dp1, "dp1", &[]);
    site.add_dp(&pull, "pull", &["dp1"]);
    let src = net.p("src");
    tree(&src, 6 << 20, 41);
    let id = site.create("p", &src);

    // The pull DP first: no source holds the version, so it waits (8212) 30 minutes...
    site.act(&id, "distribute", json!({"dps": ["pull"]}));
    site.wait_for("8212", SETTLE, |s| {
        s.message_ids(&id, Some("pull")).contains(&8212)
    });
    // ...until its source installs it.
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    for (dp, state, v) in site.status(&id) {
        assert_eq!((state.as_str(), v), ("Installed", Some(1)), "{dp}");
    }
    assert_serves(&pull, &id, "1", &src);

    // An update goes to both at once: the pull DP's job is held while its source is given
    // the version (no 8212, no attempt spent), then runs.
    change_five_percent(&src);
    let v2 = site.act(&id, "update", json!({}));
    assert_eq!(v2["version"], 2);
    site.settle(SETTLE);
    for (dp, state, v) in site.status(&id) {
        assert_eq!((state.as_str(), v), ("Installed", Some(2)), "{dp}");
    }
    assert_serves(&pull, &id, "2", &src);
    let waited: Vec<_> = site
        .messages(&id)
        .into_iter()
        .filter(|m| m["dp"] == "pull" && m["id"] == 8212 && m["version"] == 2)
        .collect();
    assert!(waited.is_empty(), "{waited:?}");
}

/// A snapshot large enough to commit its chunks in steps (over 65,536 new chunks) that fails
/// at its last file leaves no package, and the site server gives back what its committed
/// steps stored: nobody runs gc on an unattended site server.
#[test]
fn a_large_snapshot_that_fails_at_its_end_leaves_no_garbage_on_the_site_server() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    site.start();
    let src = net.p("src");
    // 70,000 files of distinct content: more new chunks than one ingest step holds.
    freight_test_support::many::generate(&src, 70_000, 0, 0, 3).unwrap();
    // The walk reaches this last and refuses it: a symlink out of the tree.
    std::fs::create_dir_all(src.join("zz")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("zz/escape")).unwrap();
    let (code, body) = site.api(
        "POST",
        "/v1/packages",
        Some(json!({"name": "big", "source": src})),
    );
    assert_ne!(code, 200, "{body}");
    assert!(body.to_string().contains("escape"), "{body}");
    assert_eq!(
        site.ok("GET", "/v1/packages", None)
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // The library beside the running daemon: nothing stored, nothing left as garbage.
    let stats: serde_json::Value = serde_json::from_str(&freight_tests::freight(&[
        "library",
        "-l",
        net.p("site").join("library").to_str().unwrap(),
        "stats",
        "--json",
    ]))
    .unwrap();
    assert_eq!(stats["garbage_bytes"], 0, "{stats}");
    assert_eq!(stats["chunks"], 0, "{stats}");
    site.stop();
}

#[test]
fn sigkill_of_the_site_server_and_dps_at_ten_moments_loses_no_job_and_duplicates_none() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let mut dp1 = net.dp("dp1", "DP1", "standard", "");
    let mut dp2 = net.dp("dp2", "DP2", "standard", "");
    for h in [&mut site, &mut dp1, &mut dp2] {
        h.start();
    }
    site.add_dp(&dp1, "dp1", &[]);
    site.add_dp(&dp2, "dp2", &[]);
    let mut rng = StdRng::seed_from_u64(freight_test_support::replay_seed("FREIGHT_CRASH_SEED"));
    let mut ids = Vec::new();
    let mut srcs = Vec::new();
    for i in 0..3 {
        let src = net.p(&format!("src{i}"));
        tree(&src, 12 << 20, 20 + i);
        let id = site.create(&format!("p{i}"), &src);
        site.act(&id, "distribute", json!({"dps": ["dp1", "dp2"]}));
        ids.push(id);
        srcs.push(src);
    }
    for k in 0..10 {
        std::thread::sleep(Duration::from_millis(rng.random_range(0..700)));
        match k % 3 {
            0 => {
                site.kill();
                site.start();
            }
            1 => {
                dp1.kill();
                dp1.start();
            }
            _ => {
                site.kill();
                dp2.kill();
                dp2.start();
                site.start();
            }
        }
    }
    site.settle(Duration::from_secs(180));
    let window = freight_transport::session::in_flight_window(
        &freight_transport::quic::NodeConfig::default(),
        4 << 20,
        freight_transport::store::COMMIT_BYTES,
    );
    for (id, src) in ids.iter().zip(&srcs) {
        for (dp, state, v) in site.status(id) {
            assert_eq!((state.as_str(), v), ("Installed", Some(1)), "{id} on {dp}");
        }
        assert_serves(&dp1, id, "1", src);
        assert_serves(&dp2, id, "1", src);
        let size = disk_usage(src).unwrap().apparent_bytes;
        for dp in ["dp1", "dp2"] {
            let sent = site.bytes_sent(id, 1, dp, "install");
            assert!(
                sent <= size + 10 * window,
                "{id} to {dp}: sent {sent} for {size}"
            );
        }
    }
    let db = rusqlite::Connection::open(net.p("site/site.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let live: i64 = db
        .query_row(
            "SELECT count(*) FROM distribution_jobs WHERE state != 'done'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(live, 0);
    let done: i64 = db
        .query_row(
            "SELECT count(*) FROM distribution_jobs WHERE state = 'done'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(done, 6, "one job per package and DP, none duplicated");
    for h in [&mut site, &mut dp1, &mut dp2] {
        h.stop();
    }
    for dp in [&dp1, &dp2] {
        dp.library_cmd(&["verify"]);
    }
}

/// Runs `freight ARGS --admin ADMIN --json` and parses its output.
fn freight_json(admin: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--admin", admin, "--json"]);
    let out = freight(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("freight {args:?}: {e}: {out}"))
}

/// Every verb of the CLI, in the order an administrator would use them, against a real site
/// server and DP: groups, schedules, create, distribute, update, validate, redistribute, remove.
#[test]
fn the_freight_cli_drives_a_real_site_server() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let mut dp = net.dp("dp", "DP1", "standard", "");
    site.start();
    dp.start();
    dp.trust(&site, "site-server");
    let admin = site.admin.clone().unwrap();
    let admin = admin.to_str().unwrap();
    let id_file = net.p("dp.id");
    std::fs::write(&id_file, dp.identity()).unwrap();
    let adm = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--admin", admin]);
        freight(&all)
    };
    adm(&[
        "dp",
        "add",
        "dp1",
        "--address",
        &dp.quic,
        "--identity",
        id_file.to_str().unwrap(),
    ]);
    adm(&["dpgroup", "create", "branch", "--dp", "dp1"]);
    let groups = freight_json(admin, &["dpgroup", "list"]);
    assert_eq!(groups[0]["name"], "branch", "{groups}");
    assert_eq!(groups[0]["members"], json!(["dp1"]), "{groups}");
    adm(&["dp", "schedule", "dp1", "--throttle", "daily unlimited"]);
    let dps = freight_json(admin, &["dp", "list"]);
    assert_eq!(dps[0]["name"], "dp1", "{dps}");
    assert_eq!(dps[0]["address"], dp.quic.as_str(), "{dps}");
    assert_eq!(dps[0]["groups"], json!(["branch"]), "{dps}");
    let shown = freight_json(admin, &["dp", "show", "dp1"]);
    assert!(
        shown["dp"]["throttle"]
            .as_str()
            .unwrap()
            .contains("unlimited"),
        "{shown}"
    );

    let src = net.p("src");
    tree(&src, 2 << 20, 30);
    let created = freight_json(
        admin,
        &[
            "package",
            "create",
            "--name",
            "tools",
            "--source",
            src.to_str().unwrap(),
        ],
    );
    let id = created["id"].as_str().unwrap().to_string();
    adm(&["distribute", &id, "--group", "branch"]);
    let out = adm(&["watch", &id, "--until-settled"]);
    assert!(out.contains("Installed"), "{out}");
    let status = adm(&["status", &id]);
    assert!(
        status.contains("dp1") && status.contains("Installed"),
        "{status}"
    );
    let msgs = adm(&["messages", "--package", &id]);
    assert!(
        msgs.contains("2330") && msgs.contains("successfully distributed"),
        "{msgs}"
    );
    assert_serves(&dp, &id, "1", &src);
    let listed = freight_json(admin, &["package", "list"]);
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed[0]["summary"]["installed"], 1, "{listed}");

    // Update: a new version reaches the DP.
    change_five_percent(&src);
    adm(&["package", "update", &id]);
    adm(&["watch", &id, "--until-settled"]);
    let detail = freight_json(admin, &["package", "show", &id]);
    let versions: Vec<u64> = detail["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2], "{detail}");
    assert_eq!(detail["status"][0]["state"], "Installed", "{detail}");
    assert_eq!(detail["status"][0]["version"], 2, "{detail}");
    assert_serves(&dp, &id, "2", &src);

    // Validate and redistribute, each followed by its messages.
    let since = freight_json(admin, &["messages", "--package", &id])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .max()
        .unwrap()
        .to_string();
    adm(&["validate", &id]);
    adm(&["watch", &id, "--until-settled"]);
    adm(&["redistribute", &id, "--dp", "dp1"]);
    adm(&["watch", &id, "--until-settled"]);
    let new: Vec<u64> = freight_json(admin, &["messages", "--package", &id, "--since", &since])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(in_order(&new, &[2384, 2300, 2330]), "{new:?}");
    assert_serves(&dp, &id, "2", &src);

    // A DP holding a package cannot go; once the package is removed from it, it can.
    let err = net.fail(&["dp", "remove", "dp1", "--admin", admin]);
    assert!(err.contains("DP dp1 still holds"), "{err}");
    adm(&["package", "remove", &id, "--dp", "dp1"]);
    adm(&["watch", &id, "--until-settled"]);
    assert_eq!(site.status(&id), [("dp1".into(), "Removed".into(), None)]);
    assert!(fetch(dp.http.as_deref().unwrap(), &id, "latest", &files(&src)[0]).is_none());
    adm(&["dp", "remove", "dp1"]);
    assert_eq!(freight_json(admin, &["dp", "list"]), json!([]));

    let err = net.fail(&["distribute", "PS1FFFFF", "--dp", "dp1", "--admin", admin]);
    assert!(err.contains("no package PS1FFFFF"), "{err}");
}

/// A folder of `mib` MiB of incompressible bytes in two files.
fn noise_tree(dir: &Path, mib: usize, seed: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let half = (mib << 20) / 2;
    std::fs::write(
        dir.join("a.bin"),
        freight_test_support::noise(&format!("{seed}a"), half),
    )
    .unwrap();
    std::fs::write(
        dir.join("b.bin"),
        freight_test_support::noise(&format!("{seed}b"), half),
    )
    .unwrap();
}

#[test]
fn a_dp_route_holds_its_rate_and_its_windows_admit_by_priority() {
    let net = Net::new();
    let (site, dp) = net.site_and_dp("");
    let rate = 2u64 << 20;
    site.ok(
        "PUT",
        "/v1/dps/dp1/schedule",
        Some(json!({"throttle": "daily 2MiB/s"})),
    );

    // The rate: a 6 MiB incompressible package takes its time, never faster than the limit.
    let src = net.p("paced");
    noise_tree(&src, 6, "paced");
    let id = site.create("paced", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    let st = site.ok("GET", &format!("/v1/status?package={id}"), None);
    let bytes = st[0]["last_bytes"].as_u64().unwrap();
    let msgs = site.messages(&id);
    let sent = msgs.iter().find(|m| m["id"] == 8200).expect("8200");
    let secs: f64 = sent["strings"][4].as_str().unwrap().parse().unwrap();
    let measured = bytes as f64 / secs;
    assert!(bytes >= 6 << 20, "{bytes}");
    // One burst (at most 64 KiB) may go ahead of the pace.
    assert!(
        measured <= rate as f64 * 1.05 + (64 << 10) as f64 / secs,
        "{measured:.0} B/s over a {rate} B/s route"
    );

    // Windows: only high priority may send now. A low package waits (and does not hold the DP)
    // while a high one goes; once the window opens for all, the low one follows.
    site.ok(
        "PUT",
        "/v1/dps/dp1/schedule",
        Some(json!({"throttle": "daily high 8MiB/s"})),
    );
    let (low_src, high_src) = (net.p("low"), net.p("high"));
    noise_tree(&low_src, 1, "low");
    noise_tree(&high_src, 1, "high");
    let low = site.create_with(json!({"name": "low", "source": low_src, "priority": "low"}));
    site.act(&low, "distribute", json!({"dps": ["dp1"]}));
    let high = site.create_with(json!({"name": "high", "source": high_src, "priority": "high"}));
    site.act(&high, "distribute", json!({"dps": ["dp1"]}));
    site.wait_for("the high package", SETTLE, |s| {
        s.status(&high).first().is_some_and(|r| r.1 == "Installed")
    });
    assert_eq!(site.status(&low)[0].1, "Install Pending");
    assert!(!site.message_ids(&low, None).contains(&8200));
    site.ok(
        "PUT",
        "/v1/dps/dp1/schedule",
        Some(json!({"throttle": "daily unlimited"})),
    );
    site.settle(SETTLE);
    assert_eq!(site.status(&low)[0].1, "Installed");
    assert_serves(&dp, &low, "1", &low_src);
}

#[test]
fn validation_runs_on_its_schedule_and_reports_a_corrupt_copy() {
    let net = Net::new();
    let (site, dp) = net.site_and_dp("validate_every = \"1s\"\n");
    let src = net.p("src");
    noise_tree(&src, 2, "v");
    let id = site.create("v", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    // Nobody asks for a validation: the schedule does.
    site.wait_for("a scheduled 2384", SETTLE, |s| {
        s.message_ids(&id, None).contains(&2384)
    });
    corrupt_a_pack(&dp.library);
    site.wait_for("a scheduled 2386", SETTLE, |s| {
        s.message_ids(&id, None).contains(&2386)
    });
    site.wait_for("Failed", SETTLE, |s| s.status(&id)[0].1 == "Failed");
}

/// `[health] listen` on a real site server: /health is ready with its queues, and /metrics
/// count the job of a distribution and the bytes it sent to the DP.
#[test]
fn the_health_endpoint_and_metrics_of_a_real_site_server() {
    let net = Net::new();
    let health = format!("127.0.0.1:{}", free_port());
    let (site, _dp) = net.site_and_dp(&format!("[health]\nlisten = \"{health}\"\n"));
    let src = net.p("src");
    noise_tree(&src, 3, "health");
    let id = site.create("h", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    let get = |path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                &format!("http://{health}{path}"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, body) = get("/health");
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready", "{body}");
    assert_eq!(v["site"], "PS1", "{body}");
    assert_eq!(v["installed_copies"], 1, "{body}");
    assert_eq!(v["queues"]["jobs_waiting"], 0, "{body}");
    let (code, m) = get("/metrics");
    assert_eq!(code, "200", "{m}");
    assert!(m.contains("freight_jobs{state=\"done\"} 1\n"), "{m}");
    let sent: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("freight_route_sent_bytes_total{route=\"dp\",to=\"dp1\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent > 0, "{m}");

    // Idle and slow clients of the monitoring port: 40 connections that never send a request
    // (more than the listener takes from one address) are closed by the server (its header
    // deadline, 5 s, or a refusal at once), so they hold nothing for long, and a probe is
    // answered again afterwards.
    let idle: Vec<std::net::TcpStream> = (0..40)
        .filter_map(|_| std::net::TcpStream::connect(&health).ok())
        .collect();
    assert!(!idle.is_empty());
    let closed_by = Instant::now() + Duration::from_secs(20);
    for mut c in idle {
        let left = closed_by.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 256];
        let r = std::io::Read::read(&mut c, &mut buf);
        assert!(
            r.is_ok() || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle health connection was still open after 20 s: {r:?}"
        );
    }
    let (code, body) = get("/health");
    assert_eq!(code, "200", "a probe after 40 idle connections: {body}");
}

#[test]
fn freightd_tells_systemd_it_is_ready() {
    let net = Net::new();
    let dp = net.dp("dp", "DP1", "standard", "");
    let sock_path = net.p("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = std::process::Command::new(bins::appliance("freightd"))
        .arg("--config")
        .arg(&dp.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    let _ = child.kill();
    let _ = child.wait();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
}

/// Heavy tier: needs root (mounts a small tmpfs as the DP's library).
#[test]
fn heavy_a_full_dp_disk_fails_the_copy_cleanly_and_a_redistribute_recovers_once_there_is_room() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    let mut dp = net.dp("dp", "DP1", "standard", "");
    // The DP's library lives on a 12 MiB file system (less than its reserve); the package
    // needs 16 MiB.
    let fs = freight_test_support::tmpfs::Tmpfs::mount(&dp.library, 12 << 20);
    site.start();
    dp.start();
    site.add_dp(&dp, "dp1", &[]);
    let src = net.p("src");
    noise_tree(&src, 16, "full");
    let id = site.create("big", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    let st = site.status(&id);
    assert_eq!(st[0].1, "Failed", "{st:?}");
    let msgs = site.messages(&id);
    let last = msgs.iter().rev().find(|m| m["id"] == 8202).expect("8202");
    let text = last["text"].as_str().unwrap();
    assert!(text.contains("space") || text.contains("full"), "{text}");
    assert!(fetch(dp.http.as_deref().unwrap(), &id, "1", "a.bin").is_none());
    // Nothing half-written is visible: the DP's library verifies clean.
    dp.stop();
    dp.library_cmd(&["verify"]);
    // More room (a bigger file system, as an administrator would give): redistribute recovers.
    drop(fs);
    let _fs = freight_test_support::tmpfs::Tmpfs::mount(&dp.library, 256 << 20);
    dp.start();
    site.act(&id, "redistribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    assert_eq!(site.status(&id)[0].1, "Installed");
    assert_serves(&dp, &id, "1", &src);
}
