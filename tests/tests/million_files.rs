//! Issue 11, item 2: memory bounded by design, not by package size. A package of 1,000,000
//! small files (and a few multi-MiB ones) is snapshotted, snapshotted again unchanged,
//! materialised and verified by the real `freight` binary, each process's peak RSS measured
//! with `wait4` and held to 200 MiB; the unchanged re-snapshot reads no content (its time
//! against the first one's is `freight-bench scale`'s goal).

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FILES: usize = 1_000_000;
const PER_FOLDER: usize = 1000;
/// Peak resident memory each process may reach.
const LIMIT_MIB: f64 = 200.0;

/// `FILES` small files of distinct content (so every file is a chunk of its own) in folders
/// of `PER_FOLDER`, and three 8 MiB files of pseudo-random bytes (several chunks each).
fn make_tree(src: &Path) {
    for d in 0..FILES.div_ceil(PER_FOLDER) {
        let dir = src.join(format!("d{d:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..PER_FOLDER.min(FILES - d * PER_FOLDER) {
            let n = d * PER_FOLDER + f;
            std::fs::write(
                dir.join(format!("f{n:07}.txt")),
                format!("file {n} of the package, distinct content {}\n", n * 7919),
            )
            .unwrap();
        }
    }
    let big = src.join("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..3 {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(big.join(format!("blob{i}"))).unwrap());
        for _ in 0..(8 << 20) / 8 {
            // xorshift64: incompressible, so the chunks are as large as they come.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.write_all(&x.to_le_bytes()).unwrap();
        }
        f.flush().unwrap();
    }
}

/// One `freight library` run: its peak RSS in MiB, its wall time, and its standard output.
fn run(lib: &Path, args: &[&str], src: Option<&Path>) -> (f64, Duration, String) {
    let freight = freight_test_support::bins::appliance("freight");
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(&freight);
    cmd.arg("library").arg("-q").arg("-l").arg(lib).args(args);
    if let Some(src) = src {
        cmd.arg(src);
    }
    cmd.stdout(out_file.reopen().unwrap())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    // Reaped by `wait4` below (for its resource usage), which `Child::wait` cannot give.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid and writable for the call.
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(reaped, child.id() as libc::pid_t, "wait4");
    let stdout = std::fs::read_to_string(out_file.path()).unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "freight library {args:?} failed ({status}): {stdout}"
    );
    // ru_maxrss is in KiB on Linux.
    (usage.ru_maxrss as f64 / 1024.0, wall, stdout)
}

/// Heavy tier: writing 1,000,000 files and running four passes over them takes several
/// minutes on a 2-core machine.
///
/// Every process streams: the chunk index lives in runs on disk, and the first snapshot
/// commits in steps of `ingest::COMMIT_EVERY` new chunks, so what it holds per new chunk (the
/// writer's index entries, the hashers' claimed set) is one step's (it peaked at 287 MiB when
/// it committed once, at the end; 73 MiB since).
#[test]
fn heavy_a_million_file_package_is_snapshotted_materialised_and_verified_in_bounded_memory() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (a loop-device file system); the heavy tier runs as root");
        return;
    }
    // A file system of its own, without the host's online discard (which makes each unlink
    // of the trees' two million files wait for the device) and discarded whole at the end.
    let fs = freight_test_support::loopfs::LoopFs::new(
        24 << 30,
        &["-b", "1024", "-i", "4096", "-O", "large_dir"],
        "",
    );
    let t = fs.mnt.as_path();
    let src = t.join("src");
    let lib = t.join("lib");
    let out = t.join("out");
    let made = Instant::now();
    make_tree(&src);
    eprintln!("tree of {FILES} files written in {:.0?}", made.elapsed());
    run(&lib, &["init"], None);

    let (rss1, t1, _) = run(&lib, &["ingest", "-p", "CAS00001", "--json"], Some(&src));
    let (rss2, t2, again) = run(
        &lib,
        &["ingest", "-p", "CAS00001", "--quick", "--json"],
        Some(&src),
    );
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    let mat_dest: OsString = out.clone().into_os_string();
    let (rss3, t3, _) = run(
        &lib,
        &["materialize", "-p", "CAS00001", mat_dest.to_str().unwrap()],
        None,
    );
    let (rss4, t4, verified) = run(&lib, &["verify"], None);
    for (what, rss, time) in [
        ("ingest", rss1, t1),
        ("re-ingest", rss2, t2),
        ("materialize", rss3, t3),
        ("verify", rss4, t4),
    ] {
        eprintln!("{what:<12} peak RSS {rss:7.1} MiB  wall {time:7.1?}");
    }
    assert_eq!(
        again["read_bytes"], 0,
        "an unchanged tree is not read: {again}"
    );
    assert_eq!(again["unchanged_files"], FILES as u64 + 3, "{again}");
    for (what, rss) in [
        ("ingest", rss1),
        ("re-ingest", rss2),
        ("materialize", rss3),
        ("verify", rss4),
    ] {
        assert!(
            rss <= LIMIT_MIB,
            "{what} peaked at {rss:.1} MiB, above {LIMIT_MIB} MiB"
        );
    }
    // The time goal (a quarter of the first snapshot's) is a benchmark's, not a test's:
    // `freight-bench scale` measures and reports it; here only what is not a matter of
    // timing holds: the unchanged tree is not read (read_bytes above).
    eprintln!(
        "re-snapshot / first snapshot: {:.3}",
        t2.as_secs_f64() / t1.as_secs_f64()
    );
    assert!(
        verified.contains("verified 2 version(s)") && verified.trim_end().ends_with(": clean"),
        "{verified}"
    );
    // The materialised tree is the source.
    let sample = format!("d0123/f{:07}.txt", 123 * PER_FOLDER + 45);
    assert_eq!(
        std::fs::read(out.join(&sample)).unwrap(),
        std::fs::read(src.join(&sample)).unwrap()
    );
    assert_eq!(
        std::fs::read(out.join("big/blob2")).unwrap(),
        std::fs::read(src.join("big/blob2")).unwrap()
    );
    let count = std::fs::read_dir(out.join("d0999")).unwrap().count();
    assert_eq!(count, PER_FOLDER);
}
