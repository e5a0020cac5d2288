//! End to end on real `freightd` processes (issue 11 item 4): a redistribute never empties a
//! DP. The DP keeps serving its installed copy while the repaired one arrives, and switches
//! only once it is installed; SIGKILL of the DP at five moments of a redistribute, and during
//! updates, never lets an HTTP client see an error status or wrong bytes. A chunk shared by two
//! packages is repaired for both. A pull DP fails a permanent failure at once and retries a
//! transient one.

use freight_tests::hosts::*;
use serde_json::json;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(120);

/// What an HTTP poller saw.
#[derive(Debug, Default)]
struct Seen {
    /// 200 answers with one of the expected bodies, counted per body (index in `expected`).
    good: Vec<u64>,
    /// Connections refused (the DP was down).
    refused: u64,
    /// Transfers cut by the connection breaking (the DP killed or stopped mid-answer).
    cut: u64,
    /// Anything else: an HTTP error status, a body that is none of the expected ones, or an
    /// older body after a newer one.
    bad: Vec<String>,
}

/// Fetches `url` with `curl` in a loop until stopped. `expected` lists the acceptable bodies
/// in the order they may appear: once body `i` was seen, a body before `i` is a failure.
struct Poller {
    stop: Arc<AtomicBool>,
    expected: Arc<Mutex<Vec<Vec<u8>>>>,
    handle: Option<JoinHandle<Seen>>,
}

impl Poller {
    fn start(url: String, expected: Vec<Vec<u8>>, scratch: PathBuf) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let expected = Arc::new(Mutex::new(expected));
        let (s, e) = (stop.clone(), expected.clone());
        let handle = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut newest = 0usize;
            while !s.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&scratch);
                let out = Command::new("curl")
                    .args(["-s", "--max-time", "20", "-o"])
                    .arg(&scratch)
                    .args(["-w", "%{http_code}", &url])
                    .output()
                    .unwrap();
                let status = String::from_utf8_lossy(&out.stdout).to_string();
                match out.status.code() {
                    Some(0) if status == "200" => {
                        let body = std::fs::read(&scratch).unwrap_or_default();
                        let exp = e.lock().unwrap();
                        seen.good.resize(exp.len(), 0);
                        match exp.iter().position(|b| *b == body) {
                            Some(i) if i >= newest => {
                                newest = i;
                                seen.good[i] += 1;
                            }
                            Some(i) => seen.bad.push(format!(
                                "body {i} after body {newest} (an older copy served again)"
                            )),
                            None => seen.bad.push(format!(
                                "200 with a body of {} bytes that is none of the expected ones",
                                body.len()
                            )),
                        }
                    }
                    Some(0) => {
                        let body = std::fs::read_to_string(&scratch).unwrap_or_default();
                        seen.bad.push(format!("status {status}: {body}"));
                    }
                    // Couldn't connect: the DP is down.
                    Some(7) => seen.refused += 1,
                    // Empty reply, partial file, receive error: the DP died mid-answer.
                    Some(18 | 52 | 56) => seen.cut += 1,
                    other => seen.bad.push(format!("curl exit {other:?}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        Poller {
            stop,
            expected,
            handle: Some(handle),
        }
    }

    /// Adds an acceptable body (a newer one).
    fn expect(&self, body: Vec<u8>) {
        self.expected.lock().unwrap().push(body);
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = self.handle.take().unwrap().join().unwrap();
        let n = self.expected.lock().unwrap().len();
        seen.good.resize(n, 0);
        seen
    }
}

/// Flips 64 bytes at a third of the largest pack data file of `lib`, in place.
fn corrupt_largest_pack(lib: &Path) {
    let mut packs: Vec<PathBuf> = files(lib)
        .into_iter()
        .map(|f| lib.join(f))
        .filter(|p| {
            p.to_string_lossy().contains("/packs/") && !p.to_string_lossy().ends_with(".idx")
        })
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let p = packs.last().expect("a pack file");
    let len = std::fs::metadata(p).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let at = len / 3;
    let mut buf = [0u8; 64];
    f.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    for b in &mut buf {
        *b ^= 0x5a;
    }
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&buf).unwrap();
    f.sync_all().unwrap();
}

/// Waits until `path` exists.
fn wait_file(path: &Path, what: &str) {
    let end = Instant::now() + SETTLE;
    while !path.exists() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the library at `lib` holds a transfer lease (a push is receiving).
fn leased(lib: &Path) -> bool {
    std::fs::read_dir(lib.join("pending"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".fmf") && !n.starts_with('.')
        })
}

fn url(dp: &Host, id: &str, version: &str, path: &str) -> String {
    format!(
        "http://{}/packages/{id}/{version}/files/{path}",
        dp.http.as_deref().unwrap()
    )
}

/// A site server and a DP with a share, both running; the route paced at `rate`.
fn site_and_dp_with_share(net: &Net) -> (Host, Host) {
    let mut site = net.site("site", "PS1", "");
    let mut dp = net.dp("dp", "DP1", "standard", "share = \"share\"\n");
    site.start();
    dp.start();
    site.add_dp(&dp, "dp1", &[]);
    (site, dp)
}

/// Heavy tier: more than 30 s on 2 cores (five redistributes, each with a DP killed and
/// restarted and the site server's retry).
#[test]
fn heavy_a_redistribute_killed_at_five_moments_serves_only_whole_copies_and_ends_verified() {
    let net = Net::new();
    let (site, mut dp) = site_and_dp_with_share(&net);
    // A paced route, so that a push lasts long enough to be killed in the middle.
    site.ok(
        "PUT",
        "/v1/dps/dp1/schedule",
        Some(json!({"throttle": "daily 1MiB/s"})),
    );
    let src = net.p("src");
    std::fs::create_dir_all(&src).unwrap();
    let small = freight_test_support::noise("small", 100_000);
    std::fs::write(src.join("small.bin"), &small).unwrap();
    std::fs::write(
        src.join("big.bin"),
        freight_test_support::noise("big", 6 << 20),
    )
    .unwrap();
    let id = site.create("p", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    assert_serves(&dp, &id, "1", &src);

    let poller = Poller::start(
        url(&dp, &id, "latest", "small.bin"),
        vec![small.clone()],
        net.p("poll.body"),
    );
    let paused = net.p("paused");
    let pause_file = paused.to_str().unwrap().to_string();
    let mut kills = 0;
    for moment in ["repaired", "push", "install", "materialised", "swapped"] {
        // A chunk of big.bin goes bad on the DP: the redistribute has something to repair.
        dp.stop();
        corrupt_largest_pack(&dp.library);
        let _ = std::fs::remove_file(&paused);
        if moment == "push" {
            dp.start();
        } else {
            dp.start_with(&[
                ("FREIGHT_TEST_PAUSE", moment),
                ("FREIGHT_TEST_PAUSE_FILE", &pause_file),
            ]);
        }
        assert!(
            fetch(dp.http.as_deref().unwrap(), &id, "1", "big.bin").is_none(),
            "{moment}: the corruption hit big.bin"
        );
        site.act(&id, "redistribute", json!({"dps": ["dp1"]}));
        if moment == "push" {
            let end = Instant::now() + SETTLE;
            while !leased(&dp.library) {
                assert!(Instant::now() < end, "no push began");
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(300));
        } else {
            wait_file(&paused, moment);
        }
        dp.kill();
        kills += 1;
        dp.start();
        site.settle(SETTLE);
        let st = site.status(&id);
        assert_eq!(
            st,
            [("dp1".into(), "Installed".into(), Some(1))],
            "{moment}"
        );
        assert_serves(&dp, &id, "1", &src);
        let ids = site.message_ids(&id, Some("dp1"));
        let retried = ids.iter().filter(|i| **i == 8201).count();
        assert!(
            retried >= kills as usize,
            "{moment}: the killed attempt was retried: {ids:?}"
        );
    }
    let seen = poller.finish();
    eprintln!("poller: {seen:?}");
    assert!(seen.bad.is_empty(), "{:?}", seen.bad);
    assert!(seen.good[0] >= 20, "{seen:?}");
    // Each stop or kill cuts at most the one answer in flight.
    assert!(seen.cut <= 2 * kills, "{seen:?}");
    dp.stop();
    dp.library_cmd(&["verify"]);
    assert_eq!(
        freight_test_support::tree::difference(&src, &net.p("dp/share").join(&id)).unwrap(),
        None
    );
    // Nothing of the interrupted installs stays in the share's staging folder.
    let staging = net.p("dp/share/.freight-staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// An update keeps the older version served until the newer one is installed, then switches;
/// SIGKILL of the DP with the newer tree complete but not swapped in, and right after the swap,
/// changes nothing of that.
#[test]
fn an_update_serves_the_older_version_until_the_newer_is_installed_even_through_sigkill() {
    let net = Net::new();
    let (site, mut dp) = site_and_dp_with_share(&net);
    let src = net.p("src");
    std::fs::create_dir_all(&src).unwrap();
    let body = |v: u32| format!("version {v} of the file the client polls\n").repeat(2000);
    std::fs::write(src.join("polled.txt"), body(1)).unwrap();
    std::fs::write(
        src.join("data.bin"),
        freight_test_support::noise("d1", 2 << 20),
    )
    .unwrap();
    let id = site.create("p", &src);
    site.act(&id, "distribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    let poller = Poller::start(
        url(&dp, &id, "latest", "polled.txt"),
        vec![body(1).into_bytes()],
        net.p("poll.body"),
    );
    let paused = net.p("paused");
    let pause_file = paused.to_str().unwrap().to_string();
    for (v, moment) in [(2u32, "materialised"), (3, "swapped")] {
        dp.stop();
        let _ = std::fs::remove_file(&paused);
        dp.start_with(&[
            ("FREIGHT_TEST_PAUSE", moment),
            ("FREIGHT_TEST_PAUSE_FILE", &pause_file),
        ]);
        poller.expect(body(v).into_bytes());
        std::fs::write(src.join("polled.txt"), body(v)).unwrap();
        std::fs::write(
            src.join("data.bin"),
            freight_test_support::noise(&format!("d{v}"), 2 << 20),
        )
        .unwrap();
        let up = site.act(&id, "update", json!({}));
        assert_eq!(up["version"], v);
        wait_file(&paused, moment);
        // Paused with the newer version stored and its tree built (or swapped in): HTTP
        // still serves the older one, which is the one installed.
        let http = dp.http.clone().unwrap();
        assert_eq!(
            fetch(&http, &id, "latest", "polled.txt").unwrap(),
            body(v - 1).into_bytes(),
            "{moment}"
        );
        assert!(fetch(&http, &id, &v.to_string(), "polled.txt").is_none());
        dp.kill();
        dp.start();
        site.settle(SETTLE);
        assert_eq!(
            site.status(&id),
            [("dp1".into(), "Installed".into(), Some(v as u64))]
        );
        assert_serves(&dp, &id, &v.to_string(), &src);
        assert_eq!(
            fetch(&http, &id, "latest", "polled.txt").unwrap(),
            body(v).into_bytes()
        );
    }
    let seen = poller.finish();
    eprintln!("poller: {seen:?}");
    assert!(seen.bad.is_empty(), "{:?}", seen.bad);
    assert!(seen.good.iter().all(|n| *n > 0), "{seen:?}");
    assert!(seen.cut <= 4, "{seen:?}");
    dp.stop();
    dp.library_cmd(&["verify"]);
    assert_eq!(
        freight_test_support::tree::difference(&src, &net.p("dp/share").join(&id)).unwrap(),
        None
    );
}

/// A chunk two packages share goes bad on the DP, and so does the second package's share
/// copy of the file: a redistribute of the first package repairs the chunk for both, rewrites
/// the second package's share copy, and the good files of both are served throughout.
#[test]
fn a_redistribute_repairs_a_chunk_another_package_shares_for_both_and_keeps_serving_good_files() {
    let net = Net::new();
    let (site, dp) = site_and_dp_with_share(&net);
    let shared = freight_test_support::noise("shared", 3 << 20);
    let (a, b) = (net.p("a"), net.p("b"));
    for (dir, own) in [(&a, "only in a\n"), (&b, "only in b\n")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("shared.bin"), &shared).unwrap();
        std::fs::write(dir.join("own.txt"), own.repeat(1000)).unwrap();
    }
    let ida = site.create("a", &a);
    let idb = site.create("b", &b);
    for id in [&ida, &idb] {
        site.act(id, "distribute", json!({"dps": ["dp1"]}));
    }
    site.settle(SETTLE);
    corrupt_largest_pack(&dp.library);
    let http = dp.http.clone().unwrap();
    assert!(
        fetch(&http, &idb, "1", "shared.bin").is_none(),
        "the corruption hit the shared file"
    );
    // The second package's share copy of the shared file goes bad too.
    let share_b = net.p("dp/share").join(&idb).join("shared.bin");
    let mut bad = std::fs::read(&share_b).unwrap();
    bad[1000] ^= 0xff;
    std::fs::write(&share_b, bad).unwrap();

    let pollers: Vec<Poller> = [(&ida, &a), (&idb, &b)]
        .iter()
        .enumerate()
        .map(|(i, (id, dir))| {
            Poller::start(
                url(&dp, id, "latest", "own.txt"),
                vec![std::fs::read(dir.join("own.txt")).unwrap()],
                net.p(&format!("poll{i}.body")),
            )
        })
        .collect();
    site.act(&ida, "redistribute", json!({"dps": ["dp1"]}));
    site.settle(SETTLE);
    std::thread::sleep(Duration::from_millis(300));
    for p in pollers {
        let seen = p.finish();
        assert!(seen.bad.is_empty(), "{:?}", seen.bad);
        assert!(
            seen.good[0] > 0 && seen.refused == 0 && seen.cut == 0,
            "{seen:?}"
        );
    }
    assert_eq!(
        site.status(&ida),
        [("dp1".into(), "Installed".into(), Some(1))]
    );
    // Only the bad chunk moved again, not the package.
    let again = site.bytes_sent(&ida, 1, "dp1", "redistribute");
    let first = site.bytes_sent(&ida, 1, "dp1", "install");
    assert!(again > 0 && again < first, "re-sent {again} of {first}");
    assert_serves(&dp, &ida, "1", &a);
    assert_serves(&dp, &idb, "1", &b);
    for (id, dir) in [(&ida, &a), (&idb, &b)] {
        assert_eq!(
            freight_test_support::tree::difference(dir, &net.p("dp/share").join(id)).unwrap(),
            None,
            "{id}'s share copy"
        );
    }
    let mut dp = dp;
    dp.stop();
    dp.library_cmd(&["verify"]);
    assert!(
        !dp.library.join("repaired").join(&ida).exists(),
        "the record of repaired chunks goes once the shares are checked"
    );
}

/// A pull DP: a failure no retry can change (its share at a path its file system refuses, an
/// older version where it holds a newer one) ends the job at once; a source that is down is
/// retried until it comes back.
#[test]
fn a_pull_dp_fails_permanent_failures_at_once_and_retries_transient_ones() {
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    // Enough attempts to outlast the source's downtime below.
    let text = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace("dp_attempts = 3", "dp_attempts = 20");
    std::fs::write(&site.config, text).unwrap();
    let mut src_dp = net.dp("src", "DP1", "standard", "");
    // A share path longer than PATH_MAX: creating it fails with ENAMETOOLONG every time.
    let long = net.p(&vec!["x".repeat(200); 22].join("/"));
    let mut bad = net.dp(
        "bad",
        "PD1",
        "pull",
        &format!("share = \"{}\"\n", long.display()),
    );
    let mut good = net.dp("good", "PD2", "pull", "");
    for h in [&mut site, &mut src_dp, &mut bad, &mut good] {
        h.start();
    }
    for p in [&bad, &good] {
        p.trust(&src_dp, "dp");
        src_dp.trust(p, "pull-dp");
    }
    site.add_dp(&src_dp, "src", &[]);
    site.add_dp(&bad, "bad", &["src"]);
    site.add_dp(&good, "good", &["src"]);
    let dir = net.p("pkg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), b"version 1").unwrap();
    let id = site.create("p", &dir);
    site.act(&id, "distribute", json!({"dps": ["src"]}));
    site.settle(SETTLE);

    // Permanent: the share the pull DP cannot create. One attempt, 8202, no 8213.
    site.act(&id, "distribute", json!({"dps": ["bad"]}));
    site.settle(SETTLE);
    let row = |dp: &str| {
        site.status(&id)
            .into_iter()
            .find(|r| r.0 == dp)
            .unwrap_or_else(|| panic!("no status row for {dp}"))
    };
    assert_eq!(row("bad").1, "Failed");
    let msgs = site.messages(&id);
    let of = |dp: &str| -> Vec<u64> {
        msgs.iter()
            .filter(|m| m["dp"].as_str() == Some(dp))
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    };
    assert!(
        of("bad").contains(&8202) && !of("bad").contains(&8213),
        "{:?}",
        of("bad")
    );
    let fail = msgs
        .iter()
        .find(|m| m["id"] == 8202 && m["dp"] == "bad")
        .unwrap();
    let text = fail["text"].as_str().unwrap();
    assert!(
        text.contains("after 1 attempt") && text.contains("too long"),
        "{text}"
    );

    // Transient: the source is down; the pull DP's failure is retried (8213) and the copy
    // completes once the source is back.
    src_dp.stop();
    site.act(&id, "distribute", json!({"dps": ["good"]}));
    site.wait_for("a retried pull", SETTLE, |s| {
        s.message_ids(&id, Some("good")).contains(&8213)
    });
    assert_eq!(row("good").1, "Retrying");
    src_dp.start();
    site.settle(SETTLE);
    assert_eq!(row("good"), ("good".into(), "Installed".into(), Some(1)));
    assert_eq!(
        fetch(good.http.as_deref().unwrap(), &id, "1", "a.txt").unwrap(),
        b"version 1"
    );

    // Permanent and informational: the good pull DP already holds a newer version (installed
    // by another route); an older one is not fetched: 2345, Installed with the newer one.
    let newer = net.p("newer");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::write(newer.join("a.txt"), b"version 5").unwrap();
    good.stop();
    good.library_cmd(&["ingest", "-p", &id, "-v", "5", newer.to_str().unwrap()]);
    std::fs::write(good.library.join("installed").join(&id), "5").unwrap();
    good.start();
    site.act(&id, "redistribute", json!({"dps": ["good"]}));
    site.settle(SETTLE);
    assert_eq!(row("good"), ("good".into(), "Installed".into(), Some(5)));
    let ids = site.message_ids(&id, Some("good"));
    assert!(ids.contains(&2345), "{ids:?}");
    assert_eq!(
        fetch(good.http.as_deref().unwrap(), &id, "latest", "a.txt").unwrap(),
        b"version 5"
    );
}
