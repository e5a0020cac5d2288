//! Parcels: round trip, deltas, tampering and truncation.

mod common;

use common::*;
use freight_core::library::Access;
use freight_core::parcel::{self, Header};
use freight_core::{Library, LibraryConfig, PackageId, Progress};
use std::path::Path;

fn pid() -> PackageId {
    PackageId::parse("CAS00001").unwrap()
}

fn accept_all(_: &Header) -> freight_core::Result<()> {
    Ok(())
}

struct Fixture {
    _t: tempfile::TempDir,
    src: std::path::PathBuf,
    a: Library,
    b_dir: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn fixture(big: usize) -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    let src = root.join("src");
    std::fs::create_dir_all(src.join("docs/empty")).unwrap();
    std::fs::write(src.join("docs/readme.txt"), "read me\n".repeat(5000)).unwrap();
    std::fs::write(src.join("big.bin"), noise("big", big)).unwrap();
    std::fs::write(src.join("empty.cfg"), b"").unwrap();
    std::os::unix::fs::symlink("../big.bin", src.join("docs/big")).unwrap();
    let mut a = new_lib(&root.join("a"), &LibraryConfig::default());
    ingest_v(&mut a, &src, "CAS00001", 1).unwrap();
    let b_dir = root.join("b");
    Library::init(&b_dir, &LibraryConfig::default()).unwrap();
    Fixture {
        _t: t,
        src,
        a,
        b_dir,
        root,
    }
}

fn create(f: &Fixture, v: u32, base: Option<u32>, out: &Path) -> parcel::CreateReport {
    let md = f.a.manifest_dir();
    let m = md.open_manifest(&pid(), v).unwrap();
    let b = base.map(|b| md.open_manifest(&pid(), b).unwrap());
    parcel::create(
        &f.a,
        &m,
        b.as_ref(),
        b"signed-instruction-bytes",
        out,
        &Progress::default(),
    )
    .unwrap()
}

fn import(dir: &Path, p: &Path) -> freight_core::Result<parcel::ImportReport> {
    let mut lib = Library::open(dir, Access::Write, io()).unwrap();
    parcel::import(&mut lib, p, accept_all, &Progress::default())
}

#[test]
fn full_and_delta_parcels_round_trip() {
    let mut f = fixture(12 << 20);
    let p1 = f.root.join("v1.parcel");
    let r1 = create(&f, 1, None, &p1);
    assert!(!r1.delta);
    let info = parcel::inspect(&p1).unwrap();
    assert_eq!(info.header.instruction, b"signed-instruction-bytes");
    assert_eq!(
        (info.header.package.clone(), info.header.version),
        (pid(), 1)
    );
    assert_eq!(info.bytes, std::fs::metadata(&p1).unwrap().len());
    let imp = import(&f.b_dir, &p1).unwrap();
    assert!(imp.created && imp.new_chunks == r1.chunks);
    // Importing the same parcel again is accepted and changes nothing.
    assert!(!import(&f.b_dir, &p1).unwrap().created);

    // v2: 1 MiB changed in the big file; the delta carries only the new chunks.
    let mut big = std::fs::read(f.src.join("big.bin")).unwrap();
    big[5 << 20..6 << 20].copy_from_slice(&noise("edit", 1 << 20));
    std::fs::write(f.src.join("big.bin"), &big).unwrap();
    ingest_v(&mut f.a, &f.src, "CAS00001", 2).unwrap();
    let d =
        f.a.manifest(&pid(), 1)
            .unwrap()
            .diff(&f.a.manifest(&pid(), 2).unwrap());
    let p2 = f.root.join("v2.delta");
    let r2 = create(&f, 2, Some(1), &p2);
    assert!(r2.delta);
    assert_eq!(r2.chunks, d.new_chunks.len() as u64);
    let manifest_len = f.a.manifest(&pid(), 2).unwrap().encode().len() as u64;
    assert!(
        r2.bytes < d.new_bytes + manifest_len + 4096,
        "delta parcel {} bytes for {} new bytes",
        r2.bytes,
        d.new_bytes
    );
    assert!(r2.bytes < r1.bytes / 2);
    import(&f.b_dir, &p2).unwrap();
    let b = Library::open(&f.b_dir, Access::Read, io()).unwrap();
    let out = f.root.join("out");
    let m2 = b.manifest(&pid(), 2).unwrap();
    freight_core::materialize::materialize(&b, &m2, &out, &Progress::default()).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(&f.src, &out).unwrap(),
        None
    );
    assert!(
        freight_core::verify::verify(&b, None, &Progress::default())
            .unwrap()
            .is_clean()
    );
}

#[test]
fn delta_without_its_base_is_refused_naming_the_base() {
    let mut f = fixture(3 << 20);
    std::fs::write(f.src.join("new.txt"), b"new").unwrap();
    ingest_v(&mut f.a, &f.src, "CAS00001", 2).unwrap();
    let p = f.root.join("v2.delta");
    create(&f, 2, Some(1), &p);
    let before = lib_state(&f.b_dir);
    let err = import(&f.b_dir, &p).unwrap_err().to_string();
    assert!(err.contains("needs base version 1"), "{err}");
    assert_eq!(lib_state(&f.b_dir), before);
}

#[test]
fn every_flipped_byte_and_every_truncation_is_detected_and_changes_nothing() {
    let f = fixture(2 << 20);
    let p = f.root.join("v1.parcel");
    create(&f, 1, None, &p);
    let good = std::fs::read(&p).unwrap();
    let before = lib_state(&f.b_dir);
    let bad = f.root.join("bad.parcel");
    // Every byte of the small sections and of the tail, and a spread across chunk data.
    let n = good.len();
    let mut offsets: Vec<usize> = (0..600.min(n)).collect();
    offsets.extend((n.saturating_sub(400)..n).collect::<Vec<_>>());
    offsets.extend((600..n.saturating_sub(400)).step_by(997));
    offsets.sort_unstable();
    offsets.dedup();
    let mut imports = 0;
    for (i, &off) in offsets.iter().enumerate() {
        let mut b = good.clone();
        b[off] ^= 1 << (i % 8);
        std::fs::write(&bad, &b).unwrap();
        let inspected = parcel::inspect(&bad);
        let err = match inspected {
            Err(e) => e.to_string(),
            Ok(_) => panic!("flip at {off} not detected by inspect"),
        };
        assert!(err.contains("at byte") && err.contains("parcel"), "{err}");
        if i % 7 == 0 {
            imports += 1;
            assert!(import(&f.b_dir, &bad).is_err(), "flip at {off} imported");
        }
    }
    for cut in (0..n).step_by(n / 97 + 1).chain([n - 1, n - 40, n - 48]) {
        std::fs::write(&bad, &good[..cut]).unwrap();
        let err = parcel::inspect(&bad).unwrap_err().to_string();
        assert!(err.contains("at byte"), "{err}");
        assert!(
            import(&f.b_dir, &bad).is_err(),
            "truncation at {cut} imported"
        );
    }
    assert!(imports > 50);
    assert_eq!(
        lib_state(&f.b_dir),
        before,
        "a refused parcel changed the library"
    );
    // And the good parcel still imports.
    import(&f.b_dir, &p).unwrap();
}

/// Issue 11: a package with a manifest far above the transfer protocol's old one-frame limit
/// (8 MiB) travels by parcel too: 150,000 files naming 2,000 small chunks, some 13 MB of
/// manifest, created, inspected and imported byte for byte.
#[test]
fn a_manifest_of_150_000_files_travels_by_parcel() {
    use freight_core::manifest::{ChunkRef, Entry, EntryKind};
    use freight_core::{ChunkId, Manifest};
    let t = tempfile::tempdir().unwrap();
    let mut a = new_lib(&t.path().join("a"), &LibraryConfig::default());
    let mut w = a.writer(false);
    let mut refs = Vec::new();
    for i in 0..2_000 {
        let data = format!("small chunk {i}\n").into_bytes();
        let id = ChunkId::of(&data);
        w.append(id, data.len() as u32, 0, &data).unwrap();
        refs.push(ChunkRef {
            id,
            len: data.len() as u32,
        });
    }
    let committed = w.commit().unwrap();
    a.apply(committed);
    let node = |path: String, kind: EntryKind| Entry {
        path: path.into_bytes(),
        mode: 0o644,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
        kind,
    };
    let mut entries = vec![node(String::new(), EntryKind::Dir)];
    for d in 0..150 {
        entries.push(node(format!("d{d:03}"), EntryKind::Dir));
        for f in 0..1000 {
            let i = d * 1000 + f;
            let chunks = vec![refs[i % refs.len()]];
            entries.push(node(
                format!("d{d:03}/file-{i:06}.txt"),
                EntryKind::File {
                    size: u64::from(chunks[0].len),
                    chunks,
                },
            ));
        }
    }
    let m = Manifest {
        package: pid(),
        version: 1,
        entries,
    };
    a.store_manifest(&m).unwrap();
    let stored = std::fs::read(a.manifest_path(&pid(), 1)).unwrap();
    assert!(stored.len() > 12 << 20, "{} bytes", stored.len());

    let out = t.path().join("big.parcel");
    let sm = a.manifest_dir().open_manifest(&pid(), 1).unwrap();
    parcel::create(&a, &sm, None, b"instr", &out, &Progress::default()).unwrap();
    let info = parcel::inspect(&out).unwrap();
    assert_eq!(
        (
            &info.header.package,
            info.header.version,
            info.header.entries
        ),
        (&m.package, m.version, m.entries.len() as u64)
    );
    assert_eq!(info.header.manifest_hash, *m.hash().as_bytes());
    let b_dir = t.path().join("b");
    Library::init(&b_dir, &LibraryConfig::default()).unwrap();
    import(&b_dir, &out).unwrap();
    let b = Library::open(&b_dir, Access::Read, io()).unwrap();
    assert!(std::fs::read(b.manifest_path(&pid(), 1)).unwrap() == stored);
    assert!(b.missing(&m).is_empty());
}
