//! The `freight library` commands as a user runs them.

use freight_test_support::bins;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

fn freight(lib: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bins::appliance("freight"));
    c.arg("library")
        .arg("--library")
        .arg(lib)
        .arg("--quiet")
        .args(args);
    c
}

/// `freight library ... ARGS PATH`.
fn freight_at(lib: &Path, args: &[&str], path: &Path) -> Command {
    let mut c = freight(lib, args);
    c.arg(path);
    c
}

fn ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn one_line_error(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

fn tree_state(dir: &Path) -> Vec<(std::path::PathBuf, u64, Vec<u8>)> {
    freight_test_support::tree::snapshot(dir)
        .unwrap()
        .into_iter()
        .filter(|(_, n)| n.kind != "dir")
        .map(|(p, n)| (p, n.size, n.content))
        .collect()
}

#[test]
fn ingest_stats_diff_verify_materialize_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/a.txt"), "hello ".repeat(10_000)).unwrap();
    std::fs::write(src.join("b.txt"), "b").unwrap();
    let lib = t.path().join("lib");
    let out = ok(freight_at(
        &lib,
        &["ingest", "-p", "CAS00001", "--json"],
        &src,
    ));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["version"], 1);
    assert_eq!(r["files"], 2);
    std::fs::write(src.join("b.txt"), "changed").unwrap();
    ok(freight_at(&lib, &["ingest", "-p", "CAS00001"], &src));
    let stats: serde_json::Value =
        serde_json::from_slice(&ok(freight(&lib, &["stats", "--json"])).stdout).unwrap();
    assert_eq!(stats["packages"][0]["versions"], serde_json::json!([1, 2]));
    let diff =
        String::from_utf8(ok(freight(&lib, &["diff", "-p", "CAS00001", "1", "2"])).stdout).unwrap();
    assert!(diff.lines().any(|l| l == "M b.txt"), "{diff}");
    assert!(!diff.contains("a.txt"), "{diff}");
    ok(freight(&lib, &["verify"]));
    let dest = t.path().join("out");
    ok(freight_at(&lib, &["materialize", "-p", "CAS00001"], &dest));
    assert_eq!(std::fs::read(dest.join("b.txt")).unwrap(), b"changed");
    // Errors are one line naming the object.
    let err = one_line_error(freight_at(
        &lib,
        &["materialize", "-p", "CAS00001", "-v", "9"],
        &t.path().join("x"),
    ));
    assert!(err.contains("CAS00001 version 9"), "{err}");
    let err = one_line_error(freight_at(&lib, &["ingest", "-p", "bad"], &src));
    assert!(err.contains("\"bad\": not a package ID"), "{err}");
}

/// A tree of small files is read a few files at a time: the read-ahead window counts open
/// descriptors as well as bytes, so a process limited to 200 descriptors ingests 5,000 files
/// (16 MiB of read-ahead would otherwise hold thousands of them open at once).
#[test]
fn many_small_files_ingest_within_a_small_descriptor_limit() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..5 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            std::fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let lib = t.path().join("lib");
    let mut c = freight_at(&lib, &["ingest", "-p", "CAS00001", "--json"], &src);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 200,
                rlim_max: 200,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = ok(c);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["files"], 5000);
    ok(freight(&lib, &["verify"]));
}

#[test]
fn unreadable_source_file_is_refused_and_the_library_unchanged() {
    // Root reads everything, so as root the ingest runs as `nobody` against a file only root
    // may read. Any other user cannot read a mode-000 file either: it runs the ingest itself.
    let root = nix::unistd::geteuid().is_root();
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/readable.txt"), "x".repeat(100_000)).unwrap();
    let secret = src.join("sub/secret.bin");
    std::fs::write(&secret, "top secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let lib = t.path().join("lib");
    // A copy of the binary where `nobody` can reach it: the checkout may sit under /root.
    let bin = t.path().join("freight");
    std::fs::copy(bins::appliance("freight"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let without_read_access = |c: Command| {
        let mut n = Command::new(&bin);
        n.args(c.get_args());
        if root {
            n.uid(65534).gid(65534);
        }
        n
    };
    if !root {
        eprintln!("not root: the ingest runs as this user, who cannot read a mode-000 file either");
        assert!(
            std::fs::File::open(&secret).is_err(),
            "this user reads a mode-000 file; run the test as root"
        );
    }
    ok(without_read_access(freight(&lib, &["init"])));
    let before = tree_state(&lib);
    let err = one_line_error(without_read_access(freight_at(
        &lib,
        &["ingest", "-p", "CAS00001"],
        &src,
    )));
    assert!(
        err.contains(secret.to_str().unwrap()) && err.contains("cannot read source file"),
        "{err}"
    );
    assert_eq!(tree_state(&lib), before);
}

/// A damaged index: every writing verb refuses with one line naming the file and the repair
/// verb, verify lists the damaged pack, and `freight library repair` brings every chunk back
/// (the data is intact) so the library verifies clean again.
#[test]
fn a_damaged_index_is_refused_and_freight_library_repair_recovers_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), freight_test_support::noise("a", 3 << 20)).unwrap();
    let lib = t.path().join("lib");
    ok(freight_at(&lib, &["ingest", "-p", "CAS00001"], &src));
    let idx = std::fs::read_dir(lib.join("store/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "idx"))
        .unwrap();
    let mut b = std::fs::read(&idx).unwrap();
    b[2] ^= 0x20;
    std::fs::write(&idx, b).unwrap();
    let before = tree_state(&lib);
    for verb in [&["gc"][..], &["remove", "-p", "CAS00001", "-v", "1"]] {
        let err = one_line_error(freight(&lib, verb));
        assert!(
            err.contains(&idx.display().to_string()) && err.contains("freight library repair"),
            "{err}"
        );
    }
    assert_eq!(
        tree_state(&lib),
        before,
        "a refused verb changed the library"
    );
    let out = freight(&lib, &["verify"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("DAMAGED"));
    let out = ok(freight(&lib, &["repair", "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["damaged"].as_array().unwrap().len(), 1, "{r}");
    assert!(r["chunks_recovered"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["lost"], serde_json::json!([]), "{r}");
    ok(freight(&lib, &["verify"]));
    let out = ok(freight(&lib, &["repair"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy"));
}

#[test]
fn a_running_writer_locks_out_a_second_one() {
    let t = tempfile::tempdir().unwrap();
    let lib = t.path().join("lib");
    ok(freight(&lib, &["init"]));
    let held =
        freight_core::Library::open(&lib, freight_core::library::Access::Write, None).unwrap();
    for verb in [
        &["gc"][..],
        &["remove", "-p", "CAS00001", "-v", "1"],
        &["repair"],
    ] {
        let err = one_line_error(freight(&lib, verb));
        assert!(err.contains("locked by another freight process"), "{err}");
    }
    let err = one_line_error(freight_at(&lib, &["ingest", "-p", "CAS00001"], t.path()));
    assert!(err.contains("locked by another freight process"), "{err}");
    // Readers are not writers: they read beside it.
    ok(freight(&lib, &["verify"]));
    ok(freight(&lib, &["stats"]));
    drop(held);
    ok(freight(&lib, &["gc"]));
}

/// Files of `len` bytes each under `dir`, named `f0..fN`, with seeded noise.
fn noise_tree(dir: &Path, seed: &str, files: usize, len: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        std::fs::write(
            dir.join(format!("f{i}")),
            freight_test_support::noise(&format!("{seed}{i}"), len),
        )
        .unwrap();
    }
}

/// Issue 11 point 7: `freight library verify`, `stats`, `diff` and `materialize` on the library
/// of a running site server (`freightd` holds it for writing) read a consistent view instead of
/// failing with "locked", while a second writer is still refused.
#[test]
fn read_verbs_work_on_the_library_of_a_running_freightd() {
    use freight_tests::hosts::Net;
    let net = Net::new();
    let mut site = net.site("site", "PS1", "");
    site.start();
    let src = net.p("src");
    noise_tree(&src.join("sub"), "v1-", 8, 300 << 10);
    std::fs::write(src.join("note.txt"), "first").unwrap();
    let id = site.create("readers", &src);
    std::fs::write(src.join("note.txt"), "second").unwrap();
    noise_tree(&src.join("more"), "v2-", 3, 200 << 10);
    site.act(&id, "update", serde_json::json!({}));
    let lib = site.library.clone();

    let out = ok(freight(&lib, &["verify", "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["versions"], 2, "{r}");
    assert_eq!(r["bad"], serde_json::json!([]), "{r}");
    assert!(r["chunks"].as_u64().unwrap() > 0, "{r}");
    let stats: serde_json::Value =
        serde_json::from_slice(&ok(freight(&lib, &["stats", "--json"])).stdout).unwrap();
    assert_eq!(stats["packages"][0]["package"], id.as_str(), "{stats}");
    assert_eq!(
        stats["packages"][0]["versions"],
        serde_json::json!([1, 2]),
        "{stats}"
    );
    let diff = String::from_utf8(ok(freight(&lib, &["diff", "-p", &id, "1", "2"])).stdout).unwrap();
    assert!(diff.lines().any(|l| l == "M note.txt"), "{diff}");
    assert!(diff.lines().any(|l| l == "A more/f0"), "{diff}");
    let dest = net.p("out");
    ok(freight_at(&lib, &["materialize", "-p", &id], &dest));
    assert_eq!(
        freight_test_support::tree::difference(&src, &dest).unwrap(),
        None
    );
    let dest1 = net.p("out1");
    ok(freight_at(
        &lib,
        &["materialize", "-p", &id, "-v", "1"],
        &dest1,
    ));
    assert_eq!(std::fs::read(dest1.join("note.txt")).unwrap(), b"first");
    // A second writer is still refused, and the daemon still works after the readers.
    let err = one_line_error(freight(&lib, &["gc"]));
    assert!(err.contains("locked by another freight process"), "{err}");
    std::fs::write(src.join("note.txt"), "third").unwrap();
    let v3 = site.act(&id, "update", serde_json::json!({}));
    assert_eq!(v3["version"], 3, "{v3}");
    ok(freight(&lib, &["verify"]));
    site.stop();
}

/// Issue 11 point 7: one process ingests new versions, removes old ones and collects garbage
/// in a loop (packs of 1 MiB, so every collection deletes and compacts packs) while `freight
/// library verify` and `stats` run in a loop beside it: verify never reports damage, and
/// fails only with the one-line message saying to retry. Then real damage is still found.
#[test]
fn verify_beside_ingests_and_gc_in_a_loop_never_reports_false_damage() {
    use freight_core::library::Access;
    use freight_core::{Library, LibraryConfig, PackageId, Progress};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const FILES: usize = 24;
    const FILE_LEN: usize = 1 << 20;
    let t = tempfile::tempdir().unwrap();
    let lib = t.path().join("lib");
    let cfg = LibraryConfig {
        pack_size: 1 << 20,
        ..LibraryConfig::default()
    };
    Library::init(&lib, &cfg).unwrap();
    let src = t.path().join("src");
    noise_tree(&src, "base", FILES, FILE_LEN);
    let stop = AtomicBool::new(false);
    let (rounds, collected) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut clean, mut retried) = (0u64, 0u64);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut l = Library::open(&lib, Access::Write, None).unwrap();
            let pkg = PackageId::parse("CAS00001").unwrap();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // A quarter of the files change each round.
                for i in 0..FILES / 4 {
                    let f = (n * FILES / 4 + i) % FILES;
                    std::fs::write(
                        src.join(format!("f{f}")),
                        freight_test_support::noise(&format!("round{n}-{f}"), FILE_LEN),
                    )
                    .unwrap();
                }
                let opts = freight_core::ingest::IngestOptions {
                    package: pkg.clone(),
                    version: None,
                    quick_check: None,
                    skip_if_unchanged_from: None,
                };
                freight_core::ingest::ingest(&mut l, &src, &opts, &Progress::default()).unwrap();
                let vs = l.versions_of(&pkg).unwrap();
                if vs.len() > 2 {
                    l.remove_version(&pkg, vs[0]).unwrap();
                }
                let g = freight_core::gc::gc(&mut l, &Progress::default()).unwrap();
                collected.fetch_add(g.packs_deleted + g.packs_compacted, Ordering::Relaxed);
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        });
        while rounds.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(12) || clean < 3 {
            assert!(!writer.is_finished(), "the writer stopped");
            let out = freight(&lib, &["verify", "--json"]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                assert_eq!(r["bad"], serde_json::json!([]), "{r}");
                assert!(r["versions"].as_u64().unwrap() >= 1, "{r}");
                clean += 1;
            } else {
                assert!(
                    stderr.trim_end().lines().count() == 1 && stderr.contains("retry"),
                    "verify beside a writer failed: {stdout}{stderr}"
                );
                assert!(!stdout.contains("\"bad\": [{"), "{stdout}");
                retried += 1;
            }
            let out = freight(&lib, &["stats", "--json"]).output().unwrap();
            assert!(
                out.status.success() || String::from_utf8_lossy(&out.stderr).contains("retry"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(120));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    let (rounds, collected) = (rounds.into_inner(), collected.into_inner());
    eprintln!(
        "{clean} clean verifies, {retried} asked to retry, beside {rounds} rounds of ingest + gc ({collected} packs collected)"
    );
    assert!(
        rounds >= 3 && collected > 0,
        "{rounds} rounds, {collected} packs collected"
    );
    // The same verify still finds real damage: one stored byte flipped.
    let l = Library::open(&lib, Access::Read, None).unwrap();
    let m = l.stored_manifests().unwrap().pop().unwrap().load().unwrap();
    let chunk = m.chunks().into_keys().next().unwrap();
    let loc = l.locate(&chunk).unwrap();
    let pack = l.pack_path(loc.pack);
    drop(l);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(loc.offset + u64::from(loc.clen) / 2) as usize] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
    let out = freight(&lib, &["verify"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("BAD chunk {}", chunk.to_hex())),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Runs `freight --quiet demo EXTRA --size 8MiB --dir DIR`; asserts success, returns stdout.
fn demo(extra: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new(bins::appliance("freight"))
        .args(["--quiet", "demo"])
        .args(extra)
        .args(["--size", "8MiB", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_site_demo_runs_a_three_tier_hierarchy_and_rolls_status_up_then_stops_its_daemons() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("demo");
    let stdout = demo(&[], &dir);
    // The last status table, at the CAS: every DP of the hierarchy holds version 2 of the
    // first package, the DPs of the sites below named SITE/DP.
    let last = stdout.rsplit("== status").next().unwrap();
    for dp in ["casdp", "PS1/dp1", "PS1/dp2", "PS1/pd1", "SS1/ssdp"] {
        let row = last
            .lines()
            .find(|l| l.starts_with("CAS00001") && l.split_whitespace().nth(1) == Some(dp))
            .unwrap_or_else(|| panic!("no status row for {dp} in\n{last}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[2..4], ["Installed", "2"], "{row}");
    }
    for needle in [
        "[CAS] Distribution Manager is sending a compressed copy of package CAS00001 version 1 to site PS1 (for site(s) PS1, SS1)",
        "[PS1] Despooler received package CAS00001 version 1 from site CAS",
        "[SS1] Despooler received package CAS00001 version 1 from site PS1",
        "[CAS] Distribution Manager is sending a delta of package CAS00001 version 2",
        "redistribute package CAS00001 on distribution point dp1",
        "demo complete",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from\n{stdout}");
    }
    let at = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from\n{stdout}"))
    };
    // The pull DP waited for a source: its copy of version 1 went after a source had it.
    let pulled = at(
        "[PS1] Package Transfer Manager sent package CAS00001 version 1 to distribution point pd1",
    );
    let sourced =
        at("successfully distributed package CAS00001 version 1 to distribution point dp1").min(
            at("successfully distributed package CAS00001 version 1 to distribution point dp2"),
        );
    assert!(
        sourced < pulled,
        "the pull DP did not wait for a source:\n{stdout}"
    );
    // The window held the low-priority package while the high-priority one went: the outbox
    // shown after the hotfix arrived has the wallpapers queued, sent only after it opened.
    let before_open = &stdout[..at("== the window opens")];
    let outbox = &before_open[before_open.rfind("CAS's Sender outbox:").unwrap()..];
    let held = outbox
        .lines()
        .find(|l| l.contains("CAS00002") && l.contains("low"))
        .unwrap_or_else(|| panic!("no outbox row of the low-priority package:\n{stdout}"));
    assert!(held.contains("queued"), "{held}");
    assert!(at("[CAS] Sender sent package CAS00002") > at("the window opens"));
    // Stopped cleanly: a daemon removes its admin socket on SIGTERM.
    for s in ["cas", "ps1", "ss1"] {
        assert!(!dir.join(s).join("admin.sock").exists(), "{s}");
    }
}

#[test]
fn the_library_demo_runs_end_to_end() {
    let t = tempfile::tempdir().unwrap();
    let stdout = demo(&["--library"], &t.path().join("demo"));
    for needle in [
        "installer identical = true",
        "delta v2:",
        "signature checked",
        "clean",
        "demo complete",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from\n{stdout}");
    }
}
