//! An ingest commits in bounded steps (`ingest::COMMIT_EVERY` new chunks; a few here, through
//! the test hook), so that what it holds in memory does not grow with the package: content met
//! again in a later step is still stored once, and a failure after some steps committed leaves
//! a consistent library whose extra chunks are garbage that gc reclaims, also after a reopen
//! (as after a crash).

mod common;

use common::*;
use freight_core::library::Access;
use freight_core::{Library, LibraryConfig, PackageId, Progress};
use std::path::Path;

fn pid(s: &str) -> PackageId {
    PackageId::parse(s).unwrap()
}

/// Small enough to be one chunk, distinct for each `i`.
fn small(i: usize) -> Vec<u8> {
    format!("small file {i}, content of its own {}\n", i * 7919).into_bytes()
}

fn verify_clean(lib: &Library) {
    let v = freight_core::verify::verify(lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean(), "verify found {:?}", v.bad);
}

#[test]
fn an_ingest_in_many_steps_stores_repeated_content_once() {
    freight_core::ingest::set_commit_every(7);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in ["a", "m", "z"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    for i in 0..300 {
        // Each file twice in a row (the same step, or the next), and again at the end of the
        // walk, many steps later.
        std::fs::write(src.join(format!("a/f{i:04}")), small(i)).unwrap();
        std::fs::write(src.join(format!("a/f{i:04}-copy")), small(i)).unwrap();
        std::fs::write(src.join(format!("z/f{i:04}")), small(i)).unwrap();
    }
    // A file of several chunks between them, and its copy.
    let big = noise("big", 6 << 20);
    std::fs::write(src.join("m/big.bin"), &big).unwrap();
    std::fs::write(src.join("z/big-copy.bin"), &big).unwrap();

    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &LibraryConfig::default());
    let r = ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    // 900 small files of one chunk each, the large file and its copy.
    let big_chunks = (r.chunks - 900) / 2;
    assert!(big_chunks > 1, "the large file has several chunks: {r:?}");
    assert_eq!(r.new_chunks, 300 + big_chunks, "{r:?}");
    assert_eq!(lib.chunk_count() as u64, r.new_chunks);
    verify_clean(&lib);
    let s = freight_core::stats::stats(&lib).unwrap();
    assert_eq!(s.garbage_bytes, 0, "{s:?}");

    // The steps' commits are durable and the reopened library agrees.
    drop(lib);
    let lib = Library::open(&lib_dir, Access::Write, io()).unwrap();
    assert_eq!(lib.chunk_count() as u64, r.new_chunks);
    verify_clean(&lib);
    let out = t.path().join("out");
    let m = lib.manifest(&pid("CAS00001"), 1).unwrap();
    freight_core::materialize::materialize(&lib, &m, &out, &Progress::default()).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(&src, &out).unwrap(),
        None
    );
}

fn failing_source(src: &Path, files: usize) {
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(src.join("zz")).unwrap();
    for i in 0..files {
        std::fs::write(src.join(format!("a/f{i:04}")), small(1000 + i)).unwrap();
    }
    // Refused when the walk reaches it, after every file of `a`.
    std::os::unix::fs::symlink("/etc/passwd", src.join("zz/escape")).unwrap();
}

#[test]
fn a_failure_after_committed_steps_leaves_only_garbage_that_gc_reclaims() {
    freight_core::ingest::set_commit_every(5);
    let t = tempfile::tempdir().unwrap();
    let first = t.path().join("first");
    std::fs::create_dir_all(&first).unwrap();
    for i in 0..20 {
        std::fs::write(first.join(format!("f{i}")), small(i)).unwrap();
    }
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &LibraryConfig::default());
    ingest_v(&mut lib, &first, "CAS00001", 1).unwrap();
    let before = lib.chunk_count();
    assert_eq!(before, 20);

    let src = t.path().join("src");
    failing_source(&src, 400);
    let err = ingest_v(&mut lib, &src, "CAS00001", 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("zz/escape") && !err.contains('\n'), "{err}");
    assert_eq!(lib.versions_of(&pid("CAS00001")).unwrap(), vec![1]);
    // The reader cannot reach the last folder before all but its read-ahead (64 files) of
    // the first folder went to the hashers, and every hashed chunk is appended, so most of
    // them were committed in steps before the failure: named by nothing.
    let after = lib.chunk_count();
    assert!(after >= before + 300, "{before} -> {after}");
    verify_clean(&lib);
    let s = freight_core::stats::stats(&lib).unwrap();
    assert!(s.garbage_bytes > 0, "{s:?}");

    // Reopened, as after a crash: the same consistent state.
    drop(lib);
    let mut lib = Library::open(&lib_dir, Access::Write, io()).unwrap();
    assert_eq!(lib.chunk_count(), after);
    for (p, vs) in lib.versions().unwrap() {
        for v in vs {
            let m = lib.manifest(&p, v).unwrap();
            assert!(lib.missing(&m).is_empty(), "{p} v{v}");
        }
    }
    verify_clean(&lib);

    let report = freight_core::gc::gc(&mut lib, &Progress::default()).unwrap();
    assert_eq!(report.chunks_removed as usize, after - before);
    assert_eq!(lib.chunk_count(), before);
    let s = freight_core::stats::stats(&lib).unwrap();
    assert_eq!(s.garbage_bytes, 0, "{s:?}");
    verify_clean(&lib);

    // The source put right, the ingest stores what gc took back.
    std::fs::remove_file(src.join("zz/escape")).unwrap();
    let r = ingest_v(&mut lib, &src, "CAS00001", 2).unwrap();
    assert_eq!(r.new_chunks, 400, "{r:?}");
    verify_clean(&lib);
}

#[test]
fn a_quick_check_by_one_pass_reads_only_the_files_whose_chunks_the_library_lost() {
    // The base's chunks are checked against the index in one merged pass, not one by one.
    freight_core::ingest::set_absent_pass_min(10);
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..300 {
        std::fs::write(src.join(format!("f{i:04}")), small(i)).unwrap();
    }
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &LibraryConfig::default());
    ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    let quick = |lib: &mut Library, v: u32| {
        let opts = freight_core::ingest::IngestOptions {
            package: pid("CAS00001"),
            version: Some(v),
            quick_check: Some(v - 1),
            skip_if_unchanged_from: None,
        };
        freight_core::ingest::ingest(lib, &src, &opts, &Progress::default()).unwrap()
    };
    let r = quick(&mut lib, 2);
    assert_eq!((r.unchanged_files, r.read_bytes), (300, 0), "{r:?}");

    // The library loses the chunks of two files (as a repair drops bad ones).
    let lost: std::collections::HashSet<_> = [7, 123]
        .iter()
        .map(|&i| freight_core::ChunkId::of(&small(i)))
        .collect();
    freight_core::gc::drop_chunks(&mut lib, &lost, &Progress::default()).unwrap();
    let r = quick(&mut lib, 3);
    assert_eq!(r.unchanged_files, 298, "{r:?}");
    assert_eq!(
        r.read_bytes,
        (small(7).len() + small(123).len()) as u64,
        "{r:?}"
    );
    assert_eq!(r.new_chunks, 2, "{r:?}");
    let m = lib.manifest(&pid("CAS00001"), 3).unwrap();
    assert!(lib.missing(&m).is_empty());
    verify_clean(&lib);
}
