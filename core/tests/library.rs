//! Content library behaviour on real files: round trips, deduplication, deltas, gc, corruption.

mod common;

use common::*;
use freight_core::library::Access;
use freight_core::{Library, LibraryConfig, PackageId, Progress};
use freight_test_support::tmpfs::Tmpfs;
use freight_test_support::{DatasetSpec, generate};
use std::path::Path;

fn pid(s: &str) -> PackageId {
    PackageId::parse(s).unwrap()
}

fn materialize_to(lib: &Library, pkg: &str, v: u32, dest: &Path) -> freight_core::Result<()> {
    let m = lib.manifest(&pid(pkg), v)?;
    freight_core::materialize::materialize(lib, &m, dest, &Progress::default()).map(|_| ())
}

#[test]
fn ten_thousand_files_and_large_files_round_trip_identically() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let spec = DatasetSpec {
        total_bytes: 420 << 20,
        seed: 11,
        small_files: 10_200,
        large_file_bytes: vec![110 << 20, 104 << 20 | 12345],
    };
    let sum = generate(&src, &spec).unwrap();
    assert!(sum.files >= 10_000, "{} files", sum.files);
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    let r = ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    assert_eq!(r.files, sum.files);
    let out = t.path().join("out");
    materialize_to(&lib, "CAS00001", 1, &out).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(&src, &out).unwrap(),
        None
    );
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean());
}

#[test]
fn same_tree_twice_adds_nothing_and_packages_share_chunks() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    generate(&src, &DatasetSpec::mixed(40 << 20, 3)).unwrap();
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &LibraryConfig::default());
    let first = ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    assert!(first.new_chunks > 0 && first.stored_bytes > 0);
    let stored = freight_core::stats::stats(&lib).unwrap().stored_bytes;
    // The same tree again as a new version, and as another package.
    let again = ingest_v(&mut lib, &src, "CAS00001", 2).unwrap();
    assert_eq!((again.new_chunks, again.stored_bytes), (0, 0));
    let other = ingest_v(&mut lib, &src, "CAS00002", 1).unwrap();
    assert_eq!((other.new_chunks, other.stored_bytes), (0, 0));
    // Re-running an identical ingest of an existing version is accepted and changes nothing.
    let rerun = ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    assert!(!rerun.created);
    let s = freight_core::stats::stats(&lib).unwrap();
    assert_eq!(s.stored_bytes, stored);
    // A package sharing only some files shares exactly their chunks.
    let part = t.path().join("part");
    std::fs::create_dir_all(part.join("own")).unwrap();
    let shared_file = walk_files(&src)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    std::fs::copy(&shared_file, part.join("shared.bin")).unwrap();
    std::fs::write(part.join("own/new.bin"), noise("own", 3 << 20)).unwrap();
    let p3 = ingest_v(&mut lib, &part, "CAS00003", 1).unwrap();
    let m = lib.manifest(&pid("CAS00003"), 1).unwrap();
    let own_chunks = m.chunks().len() as u64
        - lib
            .manifest(&pid("CAS00001"), 1)
            .unwrap()
            .chunks()
            .keys()
            .filter(|id| m.chunks().contains_key(id))
            .count() as u64;
    assert_eq!(p3.new_chunks, own_chunks);
    assert!(p3.stored_bytes <= 3 << 20, "only the new file is stored");
    // A version that differs under an existing number is refused.
    let err = ingest_v(&mut lib, &part, "CAS00001", 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("already stored with different content"),
        "{err}"
    );
}

fn walk_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn one_mib_edit_in_a_200_mib_file_costs_at_most_four_chunks() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("other")).unwrap();
    std::fs::write(src.join("other/a.txt"), b"unchanged").unwrap();
    let big = src.join("big.bin");
    let mut data = noise("big", 200 << 20);
    std::fs::write(&big, &data).unwrap();
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    let mid = data.len() / 2 + 12_345;
    data[mid..mid + (1 << 20)].copy_from_slice(&noise("patch", 1 << 20));
    std::fs::write(&big, &data).unwrap();
    let r = ingest_v(&mut lib, &src, "CAS00001", 2).unwrap();
    assert!(r.new_chunks <= 4, "{} new chunks", r.new_chunks);
    let d = lib
        .manifest(&pid("CAS00001"), 1)
        .unwrap()
        .diff(&lib.manifest(&pid("CAS00001"), 2).unwrap());
    assert_eq!(d.changed, vec!["big.bin".to_string()]);
    assert!(
        d.added.is_empty() && d.removed.is_empty() && d.metadata.is_empty(),
        "{d:?}"
    );
    assert_eq!(d.new_chunks.len() as u64, r.new_chunks);
    let out = t.path().join("out");
    materialize_to(&lib, "CAS00001", 2, &out).unwrap();
    assert!(std::fs::read(out.join("big.bin")).unwrap() == data);
}

#[test]
fn remove_and_gc_free_unshared_content_and_keep_shared() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("shared.bin"), noise("shared", 6 << 20)).unwrap();
    }
    std::fs::write(a.join("only-a.bin"), noise("only-a", 9 << 20)).unwrap();
    let cfg = LibraryConfig {
        pack_size: 4 << 20,
        ..Default::default()
    };
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &cfg);
    ingest_v(&mut lib, &a, "CAS00001", 1).unwrap();
    ingest_v(&mut lib, &b, "CAS00002", 1).unwrap();
    let before = freight_core::stats::stats(&lib).unwrap();
    lib.remove_version(&pid("CAS00001"), 1).unwrap();
    let report = freight_core::gc::gc(&mut lib, &Progress::default()).unwrap();
    assert!(report.chunks_removed > 0);
    let after = freight_core::stats::stats(&lib).unwrap();
    assert_eq!(after.garbage_bytes, 0);
    assert!(before.stored_bytes - after.stored_bytes >= 9 << 20);
    let pack_bytes: u64 = after.roots.iter().map(|r| r.pack_bytes).sum();
    assert!(
        pack_bytes < (6 << 20) + (1 << 20),
        "space reclaimed on disk: {pack_bytes}"
    );
    drop(lib);
    let lib = Library::open(&lib_dir, Access::Read, io()).unwrap();
    let out = t.path().join("out");
    materialize_to(&lib, "CAS00002", 1, &out).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(&b, &out).unwrap(),
        None
    );
    assert!(
        freight_core::verify::verify(&lib, None, &Progress::default())
            .unwrap()
            .is_clean()
    );
}

#[test]
fn corrupted_chunk_is_reported_by_verify_and_refused_by_materialize() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("good.txt"), b"fine content").unwrap();
    std::fs::write(src.join("victim.bin"), noise("victim", 2 << 20)).unwrap();
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &LibraryConfig::default());
    ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    let m = lib.manifest(&pid("CAS00001"), 1).unwrap();
    let victim = m.entries.iter().find(|e| e.path == b"victim.bin").unwrap();
    let freight_core::EntryKind::File { chunks, .. } = &victim.kind else {
        panic!()
    };
    let loc = lib.locate(&chunks[0].id).unwrap();
    let pack = lib.pack_path(loc.pack);
    drop(lib);
    // Flip one byte in the middle of the stored chunk.
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(loc.offset + loc.clen as u64 / 2) as usize] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();

    let lib = Library::open(&lib_dir, Access::Read, io()).unwrap();
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert_eq!(v.bad.len(), 1, "{v:?}");
    assert_eq!(v.bad[0].id, chunks[0].id);
    assert!(
        v.bad[0].files.iter().any(|f| f.ends_with("victim.bin")),
        "{v:?}"
    );
    let out = t.path().join("out");
    let err = materialize_to(&lib, "CAS00001", 1, &out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("victim.bin") && err.contains("not written"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    // Nothing with wrong content was left behind, nor anything else of the package.
    assert!(!out.join("victim.bin").exists());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn second_writer_is_refused_while_the_library_is_locked() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("lib");
    let _lib = new_lib(&dir, &LibraryConfig::default());
    let err = Library::open(&dir, Access::Write, io())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("locked") && err.contains(dir.to_str().unwrap()),
        "{err}"
    );
    assert!(
        Library::open(&dir, Access::Read, io()).is_err(),
        "readers wait for the writer"
    );
}

fn expect_refusal(setup: impl FnOnce(&Path), needle: &str) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/ok.txt"), b"ok").unwrap();
    setup(&src);
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &LibraryConfig::default());
    let before = lib_state(&lib_dir);
    let err = ingest_v(&mut lib, &src, "CAS00001", 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains(needle), "{err:?} should name {needle:?}");
    assert!(!err.contains('\n'), "one line: {err:?}");
    assert_eq!(lib_state(&lib_dir), before, "library changed after: {err}");
    assert!(lib.versions().unwrap().is_empty());
}

#[test]
fn missing_source_is_refused() {
    expect_refusal(
        |src| std::fs::remove_dir_all(src).unwrap(),
        "src: source folder does not exist",
    );
}

#[test]
fn fifo_and_socket_are_refused() {
    use nix::sys::stat::Mode;
    expect_refusal(
        |src| nix::unistd::mkfifo(&src.join("sub/pipe"), Mode::from_bits_truncate(0o644)).unwrap(),
        "sub/pipe: fifo cannot be part of a package",
    );
    expect_refusal(
        |src| {
            std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
        },
        "sock: socket cannot be part of a package",
    );
}

/// Heavy tier: needs root (mknod of device files).
#[test]
fn heavy_devices_are_refused() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    expect_refusal(
        |src| {
            mknod(
                &src.join("null"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o644),
                makedev(1, 3),
            )
            .unwrap()
        },
        "null: character device",
    );
    expect_refusal(
        |src| {
            mknod(
                &src.join("blk"),
                SFlag::S_IFBLK,
                Mode::from_bits_truncate(0o644),
                makedev(7, 0),
            )
            .unwrap()
        },
        "blk: block device",
    );
}

#[test]
fn symlinks_leaving_the_tree_are_refused() {
    for target in ["../../etc/passwd", "/etc/passwd", "../.."] {
        expect_refusal(
            |src| std::os::unix::fs::symlink(target, src.join("sub/escape")).unwrap(),
            "sub/escape: symlink points outside the package",
        );
    }
}

/// Heavy tier: needs root (mounts a 16 MiB tmpfs as the full storage root).
#[test]
fn heavy_storage_root_full_fails_cleanly_and_leaves_the_library_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("small-root");
    let _fs = Tmpfs::mount(&root, 16 << 20);
    let cfg = LibraryConfig {
        roots: vec![root.clone()],
        reserve_bytes: 1 << 20,
        ..Default::default()
    };
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &cfg);
    let small = t.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("a.bin"), noise("a", 2 << 20)).unwrap();
    ingest_v(&mut lib, &small, "CAS00001", 1).unwrap();
    let before = (lib_state(&lib_dir), lib_state(&root));
    let big = t.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("b.bin"), noise("b", 40 << 20)).unwrap();
    let err = ingest_v(&mut lib, &big, "CAS00002", 1).unwrap_err();
    let msg = err.to_string();
    assert!(err.is_no_space(), "{msg}");
    assert!(
        msg.contains(root.to_str().unwrap()) && msg.contains("storage root is full"),
        "{msg}"
    );
    assert_eq!((lib_state(&lib_dir), lib_state(&root)), before);
    assert!(free_bytes(&root) >= 1 << 20, "the reserve was used");
    // The library still works: verify is clean, a small ingest fits.
    assert!(
        freight_core::verify::verify(&lib, None, &Progress::default())
            .unwrap()
            .is_clean()
    );
    std::fs::write(small.join("c.bin"), noise("c", 1 << 20)).unwrap();
    ingest_v(&mut lib, &small, "CAS00001", 2).unwrap();
}

/// Heavy tier: needs root (mounts two small tmpfs storage roots).
#[test]
fn heavy_new_content_goes_to_the_root_with_most_space_and_never_into_the_reserve() {
    let t = tempfile::tempdir().unwrap();
    let (ra, rb) = (t.path().join("root-a"), t.path().join("root-b"));
    let _a = Tmpfs::mount(&ra, 24 << 20);
    let _b = Tmpfs::mount(&rb, 40 << 20);
    let reserve = 6 << 20;
    let cfg = LibraryConfig {
        roots: vec![ra.clone(), rb.clone()],
        reserve_bytes: reserve,
        pack_size: 4 << 20,
        ..Default::default()
    };
    let lib_dir = t.path().join("lib");
    let mut lib = new_lib(&lib_dir, &cfg);
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("one.bin"), noise("one", 3 << 20)).unwrap();
    ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    let s = freight_core::stats::stats(&lib).unwrap();
    assert_eq!(
        (s.roots[0].packs, s.roots[1].packs),
        (0, 1),
        "first pack on the larger root"
    );
    // Fill both roots as far as the reserve allows.
    std::fs::write(src.join("two.bin"), noise("two", 36 << 20)).unwrap();
    ingest_v(&mut lib, &src, "CAS00001", 2).unwrap();
    let s = freight_core::stats::stats(&lib).unwrap();
    assert!(s.roots[0].packs > 0 && s.roots[1].packs > 0, "{s:?}");
    assert!(free_bytes(&ra) >= reserve && free_bytes(&rb) >= reserve);
    std::fs::write(src.join("three.bin"), noise("three", 20 << 20)).unwrap();
    let err = ingest_v(&mut lib, &src, "CAS00001", 3).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert!(free_bytes(&ra) >= reserve && free_bytes(&rb) >= reserve);
    let out = t.path().join("out");
    materialize_to(&lib, "CAS00001", 2, &out).unwrap();
    assert_eq!(
        std::fs::read(out.join("two.bin")).unwrap(),
        noise("two", 36 << 20)
    );
}

#[test]
fn io_engine_follows_the_configured_mode() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("lib");
    let lib = new_lib(&dir, &LibraryConfig::default());
    let expect = match io() {
        Some(freight_core::IoMode::Fallback) => freight_core::EngineKind::Fallback,
        _ => freight_core::EngineKind::Uring,
    };
    assert_eq!(lib.engine().kind(), expect);
}

#[test]
fn quick_check_reads_only_changed_files_and_stores_the_same_version_as_a_full_read() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    generate(&src, &DatasetSpec::mixed(24 << 20, 17)).unwrap();
    let ingest = |lib: &mut Library, v: u32, quick: bool| {
        let progress = Progress::default();
        let opts = freight_core::ingest::IngestOptions {
            package: pid("CAS00001"),
            version: Some(v),
            quick_check: if quick { v.checked_sub(1) } else { None },
            skip_if_unchanged_from: None,
        };
        let r = freight_core::ingest::ingest(lib, &src, &opts, &progress).unwrap();
        (r, progress.bytes().1)
    };
    let mut quick = new_lib(&t.path().join("quick"), &LibraryConfig::default());
    let mut full = new_lib(&t.path().join("full"), &LibraryConfig::default());
    let (first, read_first) = ingest(&mut quick, 1, true);
    assert_eq!((first.unchanged_files, read_first), (0, first.bytes));
    ingest(&mut full, 1, false);

    // Change two files (new content, new mtime), drop one, add one.
    let files = walk_files(&src);
    let changed: u64 = files[..2]
        .iter()
        .map(|f| {
            let mut d = std::fs::read(f).unwrap();
            d.iter_mut().for_each(|b| *b ^= 0x33);
            d.push(1);
            std::fs::write(f, &d).unwrap();
            d.len() as u64
        })
        .sum();
    std::fs::remove_file(&files[2]).unwrap();
    std::fs::write(src.join("added.txt"), b"new file").unwrap();

    let (second, read) = ingest(&mut quick, 2, true);
    assert_eq!(
        read,
        changed + 8,
        "only the changed and the added files are read"
    );
    assert_eq!(second.unchanged_files, files.len() as u64 - 3);
    let (reference, _) = ingest(&mut full, 2, false);
    assert_eq!(
        second.hash, reference.hash,
        "the same version as a full read"
    );
    let out = t.path().join("out");
    materialize_to(&quick, "CAS00001", 2, &out).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(&src, &out).unwrap(),
        None
    );
}

#[test]
fn partial_gc_leaves_packs_with_little_garbage_and_full_gc_reclaims_them() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    generate(&src, &DatasetSpec::mixed(32 << 20, 19)).unwrap();
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    freight_test_support::ingest_version(&mut lib, &src, "CAS00001", 1).unwrap();
    // Version 2 changes one file of 64 KiB to 1 MiB: version 1's copy of it is a little garbage.
    let f = walk_files(&src)
        .into_iter()
        .find(|f| (64 << 10..1 << 20).contains(&std::fs::metadata(f).unwrap().len()))
        .unwrap();
    std::fs::write(&f, b"changed").unwrap();
    freight_test_support::ingest_version(&mut lib, &src, "CAS00001", 2).unwrap();
    lib.remove_version(&pid("CAS00001"), 1).unwrap();

    let partial = freight_core::gc::gc_partial(&mut lib, 0.5, &Progress::default()).unwrap();
    assert_eq!(
        (partial.packs_compacted, partial.bytes_moved),
        (0, 0),
        "{partial:?}"
    );
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean());
    let full = freight_core::gc::gc(&mut lib, &Progress::default()).unwrap();
    assert!(
        full.packs_compacted > 0 && full.chunks_removed > 0,
        "{full:?}"
    );
    let out = t.path().join("out");
    materialize_to(&lib, "CAS00001", 2, &out).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(&src, &out).unwrap(),
        None
    );
}

#[test]
fn versions_of_lists_one_package_as_versions_does_and_numbers_new_versions() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"a").unwrap();
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    for (pkg, v) in [("CAS00001", 2), ("CAS00001", 10), ("CAS00002", 1)] {
        ingest_v(&mut lib, &src, pkg, v).unwrap();
    }
    let all = lib.versions().unwrap();
    assert_eq!(all.len(), 2);
    for (p, vs) in &all {
        assert_eq!(&lib.versions_of(p).unwrap(), vs);
    }
    assert_eq!(lib.versions_of(&pid("CAS00001")).unwrap(), vec![2, 10]);
    assert_eq!(
        lib.versions_of(&pid("CAS00003")).unwrap(),
        Vec::<u32>::new()
    );
    assert_eq!(lib.latest(&pid("CAS00001")).unwrap(), Some(10));
    assert_eq!(lib.latest(&pid("CAS00003")).unwrap(), None);

    // Without a version number, ingest takes the one after the newest.
    for (pkg, expect) in [("CAS00001", 11), ("CAS00003", 1)] {
        let opts = freight_core::ingest::IngestOptions {
            package: pid(pkg),
            version: None,
            quick_check: lib.latest(&pid(pkg)).unwrap(),
            skip_if_unchanged_from: None,
        };
        let r = freight_core::ingest::ingest(&mut lib, &src, &opts, &Progress::default()).unwrap();
        assert_eq!(r.version, expect);
    }
}

/// Issue 11 point 7: a read-only view beside a writer (in the same process here, as nothing
/// locks it out) takes no lock and changes nothing, not even what a crash leaves (a torn index
/// tail, uncommitted pack bytes, a temporary manifest, which an open for writing cleans);
/// it keeps reading every chunk it holds after the writer removes versions and collects the
/// packs (their files stay open), and ignores what the writer commits after it was opened.
#[test]
fn a_read_only_view_beside_a_writer_changes_nothing_and_survives_its_gc() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("a.bin"), noise("view a", 3 << 20)).unwrap();
    std::fs::write(b.join("b.bin"), noise("view b", 3 << 20)).unwrap();
    let dir = t.path().join("lib");
    let cfg = LibraryConfig {
        pack_size: 1 << 20,
        ..LibraryConfig::default()
    };
    let mut w = new_lib(&dir, &cfg);
    ingest_v(&mut w, &a, "CAS00001", 1).unwrap();
    let (last, info) = w
        .packs()
        .iter()
        .next_back()
        .map(|(n, i)| (*n, i.clone()))
        .unwrap();
    // What a crash in the middle of a commit leaves, and a temporary manifest.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&info.idx)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xAB; 100]).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&info.data)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xCD; 1000]).unwrap();
    let tmp = dir.join("manifests/CAS00001/.0000000009.fmf.tmp");
    std::fs::write(&tmp, b"partial").unwrap();
    let before = lib_state(&dir);

    let view = Library::open_read_only(&dir, io()).unwrap();
    assert!(view.is_view() && view.damage().is_empty());
    assert_eq!(
        lib_state(&dir),
        before,
        "opening a view changed the library"
    );
    assert_eq!(view.chunk_count(), w.chunk_count());
    assert!(view.packs().contains_key(&last));
    let m1 = view.manifest(&pid("CAS00001"), 1).unwrap();
    assert!(
        freight_core::verify::verify_manifests(
            &view,
            std::slice::from_ref(&m1),
            &Progress::default()
        )
        .unwrap()
        .is_clean()
    );

    // The writer adds a version, removes the first and collects every one of its packs.
    drop(w);
    let mut w = Library::open(&dir, Access::Write, io()).unwrap();
    ingest_v(&mut w, &b, "CAS00002", 1).unwrap();
    w.remove_version(&pid("CAS00001"), 1).unwrap();
    let g = freight_core::gc::gc(&mut w, &Progress::default()).unwrap();
    assert!(g.packs_deleted > 0, "{g:?}");
    assert!(
        !dir.join("store/packs")
            .join(format!("pack-{last:08}.dat"))
            .exists()
    );
    // The view still reads and verifies what it held, and knows nothing of the new version.
    let out = t.path().join("out");
    freight_core::materialize::materialize(&view, &m1, &out, &Progress::default()).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(&a, &out).unwrap(),
        None
    );
    let m2 = w.manifest(&pid("CAS00002"), 1).unwrap();
    assert!(!view.missing(&m2).is_empty());
    // A view opened now holds the new version and not the collected one.
    let fresh = Library::open_read_only(&dir, io()).unwrap();
    assert!(fresh.missing(&m2).is_empty());
    assert!(!fresh.missing(&m1).is_empty());
    let r = freight_core::view::verify(&dir, None, io(), &Progress::default()).unwrap();
    assert!(r.report.is_clean() && r.damage.is_empty(), "{:?}", r.report);
    assert_eq!(r.report.versions, 1);
}

/// The chunks of a sorted list with repeats that a library lacks: each distinct one once, in
/// order, by a lookup per ID and by one merge join with the index alike; an error from the
/// callback ends the pass.
#[test]
fn missing_chunks_of_a_sorted_list_with_repeats_are_named_once() {
    use freight_core::ChunkId;
    use freight_core::spill::Sorter;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    generate(&src, &DatasetSpec::mixed(2 << 20, 5)).unwrap();
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    let present: Vec<ChunkId> = lib
        .manifest(&pid("CAS00001"), 1)
        .unwrap()
        .chunks()
        .into_keys()
        .collect();
    assert!(present.len() > 5, "{} chunks", present.len());
    let absent: Vec<ChunkId> = (0u8..6)
        .map(|i| ChunkId([i.wrapping_mul(41); 32]))
        .collect();
    let mut sorter = Sorter::<32>::new(t.path(), 1 << 10);
    for (i, id) in present.iter().chain(&absent).enumerate() {
        // Every ID twice, some three times.
        for _ in 0..(2 + i % 2) {
            sorter.push(id.0).unwrap();
        }
    }
    let ids = sorter.finish().unwrap();
    let mut want = absent.clone();
    want.sort();
    for merge in [false, true] {
        let mut got = Vec::new();
        let mut note = |id| {
            got.push(id);
            Ok(())
        };
        if merge {
            lib.merge_missing_sorted(&ids, &mut note).unwrap();
        } else {
            lib.for_each_missing_sorted(&ids, &mut note).unwrap();
        }
        assert_eq!(got, want, "merge join: {merge}");
        // The first missing one stops the pass.
        let mut calls = 0;
        let err = lib
            .merge_missing_sorted(&ids, &mut |id| {
                calls += 1;
                Err(freight_core::Error::MissingChunk {
                    id: id.to_hex(),
                    package: "CAS00001".into(),
                    version: 1,
                })
            })
            .unwrap_err();
        assert_eq!(calls, 1, "{err}");
    }
}
