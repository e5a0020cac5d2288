//! End to end on real processes: names at the file system's limits (a 255-byte name, a
//! 4,000-byte path) through `freight library ingest`/`materialize` and an install into a DP's
//! share; a failed install leaves nothing served and nothing behind; permanent failures fail
//! at once while transient ones retry; an older version at a DP holding a newer one is
//! dropped with an informational message.

use freight_test_support::bins;
use freight_tests::hosts::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(90);

/// 38 folders of 100-byte names and a 162-byte file name: a path of 4,000 bytes.
fn deep_parts() -> Vec<String> {
    let mut parts: Vec<String> = (0..38)
        .map(|i| format!("{i:02}{}", "d".repeat(98)))
        .collect();
    parts.push("f".repeat(162));
    assert_eq!(parts.join("/").len(), 4000);
    parts
}

fn long_name() -> String {
    "n".repeat(255)
}

/// A source with a 4,000-byte path and a 255-byte name; returns their contents.
fn long_source(src: &Path) -> (Vec<u8>, Vec<u8>) {
    let parts = deep_parts();
    let (file, dirs) = parts.split_last().unwrap();
    std::fs::create_dir_all(src.join(dirs.join("/"))).unwrap();
    let deep = freight_test_support::noise("deep", 300_000);
    std::fs::write(src.join(dirs.join("/")).join(file), &deep).unwrap();
    let named = freight_test_support::noise("named", 70_000);
    std::fs::write(src.join(long_name()), &named).unwrap();
    (deep, named)
}

/// Reads `parts` below `base` one name at a time (the full path may exceed `PATH_MAX`).
fn read_deep(base: &Path, parts: &[String]) -> Vec<u8> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    let mut dir = std::fs::File::open(base).unwrap();
    let (file, dirs) = parts.split_last().unwrap();
    for d in dirs {
        let fd = openat(
            &dir,
            d.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("{}: {d}: {e}", base.display()));
        dir = std::fs::File::from(fd);
    }
    let fd = openat(&dir, file.as_str(), OFlag::O_RDONLY, Mode::empty()).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut out).unwrap();
    out
}

fn library(lib: &Path, args: &[&str]) -> String {
    let out = Command::new(bins::appliance("freight"))
        .arg("library")
        .arg("--library")
        .arg(lib)
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "freight library {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_255_byte_name_and_a_4000_byte_path_ingest_materialise_and_install_into_a_share() {
    let net = Net::new();
    let src = net.p("src");
    let (deep, named) = long_source(&src);
    let parts = deep_parts();

    // The library verbs: ingest, then materialise below a folder whose own path takes the
    // deep file past PATH_MAX.
    let lib = net.p("lib");
    library(&lib, &["ingest", "-p", "CAS00001", src.to_str().unwrap()]);
    let dest = net.p(&"o".repeat(200)).join("out");
    assert!(dest.as_os_str().len() + 4001 > 4096);
    library(
        &lib,
        &["materialize", "-p", "CAS00001", dest.to_str().unwrap()],
    );
    assert!(
        read_deep(&dest, &parts) == deep,
        "materialised deep file differs"
    );
    assert!(std::fs::read(dest.join(long_name())).unwrap() == named);
    assert_eq!(names(&dest), [parts[0].clone(), long_name()], "leftovers");

    // A DP with a share whose path also takes the deep file past PATH_MAX.
    let share = net.p("dp").join("s".repeat(200));
    let mut site = net.site("site", "PS1", "");
    let mut dp = net.dp(
        "dp",
        "DP1",
        "standard",
        &format!("share = {:?}\n", share.to_str().unwrap()),
    );
    site.start();
    dp.start();
    site.add_dp(&dp, "dp1", &[]);
    let id = site.create("long", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    let st = site.status(&id);
    assert_eq!(st, [("dp1".into(), "Installed".into(), Some(1))], "{st:?}");
    assert!(
        read_deep(&share.join(&id), &parts) == deep,
        "share's deep file differs"
    );
    assert!(std::fs::read(share.join(&id).join(long_name())).unwrap() == named);
    assert!(names(&share.join(".freight-staging")).is_empty());
    let http = dp.http.as_deref().unwrap();
    assert!(fetch(http, &id, "1", &parts.join("/")).expect("deep file served") == deep);
    assert!(fetch(http, &id, "1", &long_name()).expect("long name served") == named);
}

/// Heavy tier: needs root (mounts a small tmpfs as the DP's share).
#[test]
fn heavy_an_install_that_fills_the_share_is_retried_and_leaves_nothing_served_or_behind() {
    let net = Net::new();
    let share = net.p("share");
    let _fs = freight_test_support::tmpfs::Tmpfs::mount(&share, 2 << 20);
    let mut site = net.site("site", "PS1", "");
    let mut dp = net.dp(
        "dp",
        "DP1",
        "standard",
        &format!("share = {:?}\n", share.to_str().unwrap()),
    );
    site.start();
    dp.start();
    site.add_dp(&dp, "dp1", &[]);
    let src = net.p("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.bin"), freight_test_support::noise("a", 1 << 20)).unwrap();
    std::fs::write(
        src.join("sub/b.bin"),
        freight_test_support::noise("b", 3 << 20),
    )
    .unwrap();
    let id = site.create("big", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.wait_for("Retrying", SETTLE, |s| {
        s.status(&id).first().is_some_and(|r| r.1 == "Retrying")
    });
    site.settle(SETTLE);
    // A full share is transient: every attempt was made (3 in the tests' policy), then Failed.
    let st = site.status(&id);
    assert_eq!(st[0].1, "Failed", "{st:?}");
    let ids = site.message_ids(&id, Some("dp1"));
    assert_eq!(ids.iter().filter(|i| **i == 8201).count(), 2, "{ids:?}");
    assert!(ids.contains(&8202), "{ids:?}");
    let msgs = site.messages(&id);
    let last = msgs.iter().rev().find(|m| m["id"] == 8202).expect("8202");
    let text = last["text"].as_str().unwrap();
    assert!(text.contains("space"), "{text}");
    // Nothing served, nothing in the share.
    let http = dp.http.as_deref().unwrap();
    assert!(fetch(http, &id, "1", "a.bin").is_none());
    assert!(fetch(http, &id, "latest", "a.bin").is_none());
    assert_eq!(names(&share), [".freight-staging"]);
    assert!(names(&share.join(".freight-staging")).is_empty());
}

#[test]
fn a_permanent_failure_fails_at_once_and_an_unreachable_dp_still_retries() {
    let net = Net::new();
    // Long retry delays: a job that retried would still be live when the test looks.
    let mut site = net.site("site", "PS1", "");
    let text = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace("dp_retry_delay = \"1s\"", "dp_retry_delay = \"10m\"");
    std::fs::write(&site.config, text).unwrap();
    let mut dp = net.dp("dp", "DP1", "standard", "");
    let mut down = net.dp("down", "DP2", "standard", "");
    // dp1 trusts the site as its parent, not as its site server: content may be pushed, but
    // the install command is refused by its authorization table. No retry can change that.
    // (Imported before dp1 starts: a running DP reloads its trust store a moment later.)
    dp.trust(&site, "parent");
    site.start();
    dp.start();
    down.start();
    site.ok(
        "POST",
        "/v1/dps",
        Some(
            json!({"name": "dp1", "kind": "standard", "address": dp.quic, "http": dp.http,
                    "identity": dp.identity()}),
        ),
    );
    site.add_dp(&down, "dp2", &[]);
    down.stop();
    let src = net.p("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), freight_test_support::noise("a", 200_000)).unwrap();
    let id = site.create("p", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1", "dp2"]}));
    site.wait_for("dp1 Failed and dp2 Retrying", SETTLE, |s| {
        let st = s.status(&id);
        st.iter().any(|r| r.0 == "dp1" && r.1 == "Failed")
            && st.iter().any(|r| r.0 == "dp2" && r.1 == "Retrying")
    });
    let ids = site.message_ids(&id, Some("dp1"));
    let dp1: Vec<u64> = site
        .messages(&id)
        .iter()
        .filter(|m| m["dp"].as_str() == Some("dp1"))
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(!dp1.contains(&8201), "dp1 was retried: {ids:?}");
    assert_eq!(dp1.iter().filter(|i| **i == 8202).count(), 1, "{dp1:?}");
    let msgs = site.messages(&id);
    let fail = msgs
        .iter()
        .find(|m| m["id"] == 8202 && m["dp"] == "dp1")
        .unwrap();
    let text = fail["text"].as_str().unwrap();
    assert!(text.contains("after 1 attempt"), "{text}");
    assert!(text.contains("manage this DP"), "{text}");
    // The unreachable DP is retried (8201), not failed.
    let dp2: Vec<u64> = msgs
        .iter()
        .filter(|m| m["dp"].as_str() == Some("dp2"))
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert!(dp2.contains(&8201) && !dp2.contains(&8202), "{dp2:?}");
    // The version was pushed into dp1's library, but its install never ran (the command was
    // refused before it): a DP serves only what it installed, so it is not served.
    let http = dp.http.as_deref().unwrap();
    for v in ["latest", "1"] {
        assert!(
            fetch(http, &id, v, "a.bin").is_none(),
            "dp1 serves {id} {v}, which it never installed"
        );
    }
    let listing = Command::new("curl")
        .args(["-s", &format!("http://{http}/packages")])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(!listing.contains(&id), "{listing}");
}

#[test]
fn an_older_version_at_a_dp_holding_a_newer_one_is_dropped_with_an_informational_message() {
    let net = Net::new();
    let (site, mut dp) = net.site_and_dp("");
    let src = net.p("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"version 1").unwrap();
    let id = site.create("p", &src);
    // The DP already holds version 2 of the package (as another route would have brought it).
    let newer = net.p("newer");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::write(newer.join("a.txt"), b"version 2").unwrap();
    dp.stop();
    library(
        &dp.library,
        &["ingest", "-p", &id, "-v", "2", newer.to_str().unwrap()],
    );
    // ... and installed it (the record an install leaves, `LIB/installed/<PKG>`).
    std::fs::create_dir_all(dp.library.join("installed")).unwrap();
    std::fs::write(dp.library.join("installed").join(&id), "2").unwrap();
    dp.start();
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    let st = site.status(&id);
    assert_eq!(st, [("dp1".into(), "Installed".into(), Some(2))], "{st:?}");
    let msgs = site.messages(&id);
    let ids: Vec<u64> = msgs.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(ids.contains(&2345), "{ids:?}");
    assert!(
        !ids.iter().any(|i| [8201, 8202, 2302].contains(i)),
        "{ids:?}"
    );
    let info = msgs.iter().find(|m| m["id"] == 2345).unwrap();
    assert_eq!(info["severity"], "info", "{info}");
    let text = info["text"].as_str().unwrap();
    assert!(text.contains("newer version (2)"), "{text}");
    assert!(text.contains("already arrived"), "{text}");
    // The DP serves version 2 only.
    let http = dp.http.as_deref().unwrap();
    assert_eq!(fetch(http, &id, "latest", "a.txt").unwrap(), b"version 2");
    assert!(fetch(http, &id, "1", "a.txt").is_none());
}
