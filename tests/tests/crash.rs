//! SIGKILL of real `freight` processes at random moments during ingest and gc: afterwards the
//! library opens, verifies clean, no manifest names a missing chunk, and the interrupted
//! command completes when run again.

use freight_core::library::Access;
use freight_core::{IoMode, Library, LibraryConfig, Progress};
use freight_test_support::{DatasetSpec, bins, generate};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn freight(lib: &Path) -> Command {
    let mut c = Command::new(bins::appliance("freight"));
    c.arg("library").arg("--library").arg(lib).arg("--quiet");
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

use freight_test_support::noise;

/// Runs `cmd` and kills it after `delay`; true when the kill hit a running process.
fn run_and_kill(mut cmd: Command, delay: Duration) -> bool {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let hit = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    hit
}

fn run_ok(mut cmd: Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// The library must open (repairing crash leftovers), verify clean, and name no missing chunk.
fn check_library(dir: &Path, ctx: &str) {
    let lib = Library::open(dir, Access::Write, IoMode::from_env())
        .unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
    for m in lib.stored_manifests().unwrap() {
        let m = m.load().unwrap();
        assert!(
            lib.missing(&m).is_empty(),
            "{ctx}: {} v{} names missing chunks",
            m.package,
            m.version
        );
    }
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean(), "{ctx}: verify found {:?}", v.bad);
}

/// Heavy tier: runs over 30 s on a 2-core machine (12 kills during ingest and 10 during gc,
/// each followed by a full verify).
#[test]
fn heavy_sigkill_during_ingest_and_gc_never_breaks_the_library() {
    let seed = freight_test_support::replay_seed("FREIGHT_CRASH_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    generate(&src, &DatasetSpec::mixed(64 << 20, 5)).unwrap();
    let lib = t.path().join("lib");
    let cfg = LibraryConfig {
        pack_size: 6 << 20,
        ..Default::default()
    };
    Library::init(&lib, &cfg).unwrap();

    // How long a full ingest takes here sets the range of kill moments.
    let probe = t.path().join("probe");
    Library::init(&probe, &cfg).unwrap();
    let full = run_ok({
        let mut c = freight(&probe);
        c.args(["ingest", "-p", "CAS000FF", "-v", "1"]).arg(&src);
        c
    });
    std::fs::remove_dir_all(&probe).unwrap();

    let mut version = 0u32;
    let mut ingest_hits = 0;
    let mut attempts = 0;
    while ingest_hits < 12 {
        attempts += 1;
        assert!(attempts < 60, "could not land kills during ingest");
        version += 1;
        // New content each round, so every ingest has real work to do.
        std::fs::write(
            src.join(format!("extra-{version}.bin")),
            noise(&format!("x{version}"), 4 << 20),
        )
        .unwrap();
        let delay = full.mul_f64(rng.random_range(0.0..1.1));
        let mut c = freight(&lib);
        c.args(["ingest", "-p", "CAS00001", "-v", &version.to_string()])
            .arg(&src);
        if run_and_kill(c, delay) {
            ingest_hits += 1;
        }
        check_library(&lib, &format!("after ingest kill {version} at {delay:?}"));
        let mut c = freight(&lib);
        c.args(["ingest", "-p", "CAS00001", "-v", &version.to_string()])
            .arg(&src);
        run_ok(c);
        check_library(&lib, &format!("after re-running ingest {version}"));
    }

    let mut gc_hits = 0;
    attempts = 0;
    while gc_hits < 10 {
        attempts += 1;
        assert!(attempts < 60, "could not land kills during gc");
        // Make garbage: a new version with new content, then drop the oldest version.
        version += 1;
        std::fs::write(
            src.join(format!("extra-{version}.bin")),
            noise(&format!("x{version}"), 4 << 20),
        )
        .unwrap();
        std::fs::remove_file(src.join(format!("extra-{}.bin", version - 1))).unwrap();
        let mut c = freight(&lib);
        c.args(["ingest", "-p", "CAS00001", "-v", &version.to_string()])
            .arg(&src);
        run_ok(c);
        let oldest = {
            let l = Library::open(&lib, Access::Read, None).unwrap();
            l.versions().unwrap().values().next().unwrap()[0]
        };
        let mut c = freight(&lib);
        c.args(["remove", "-p", "CAS00001", "-v", &oldest.to_string()]);
        run_ok(c);
        let probe_gc = {
            // Time a gc on a copy, so kills spread over a real gc's duration.
            let copy = t.path().join("gc-probe");
            let _ = std::fs::remove_dir_all(&copy);
            copy_tree(&lib, &copy);
            let mut c = freight(&copy);
            c.arg("gc");
            let d = run_ok(c);
            std::fs::remove_dir_all(&copy).unwrap();
            d
        };
        let delay = probe_gc.mul_f64(rng.random_range(0.0..1.1));
        let mut c = freight(&lib);
        c.arg("gc");
        if run_and_kill(c, delay) {
            gc_hits += 1;
        }
        check_library(&lib, &format!("after gc kill at {delay:?}"));
        let mut c = freight(&lib);
        c.arg("gc");
        run_ok(c);
        check_library(&lib, "after re-running gc");
        let l = Library::open(&lib, Access::Read, None).unwrap();
        assert_eq!(freight_core::stats::stats(&l).unwrap().garbage_bytes, 0);
    }
    eprintln!("kills during work: {ingest_hits} ingest, {gc_hits} gc");

    // The newest version still restores to exactly the source.
    let l = Library::open(&lib, Access::Read, None).unwrap();
    let m = l
        .manifest(
            &freight_core::PackageId::parse("CAS00001").unwrap(),
            version,
        )
        .unwrap();
    let out = t.path().join("out");
    freight_core::materialize::materialize(&l, &m, &out, &Progress::default()).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(&src, &out).unwrap(),
        None
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
