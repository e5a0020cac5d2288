//! Damage a crash cannot leave, on real library files: opening for writing refuses it with one
//! line naming the file and `freight library repair`, changes nothing, and repair recovers
//! every chunk whose bytes are intact and names the versions that lost data. Also: what a
//! crash does leave is still cleaned up on its own, format-1 libraries keep working, pack
//! numbers are never reused, a missing storage root is refused, and gc on a full disk still
//! deletes packs that are all garbage.

mod common;

use common::*;
use freight_core::library::Access;
use freight_core::pack::{self, ENTRY_LEN, IDX_HEADER, Loc, PACK_HEADER, RECORD_HEADER};
use freight_core::repair::{RepairReport, repair};
use freight_core::{ChunkId, ChunkParams, Library, LibraryConfig, PackageId, Progress};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn pid(s: &str) -> PackageId {
    PackageId::parse(s).unwrap()
}

/// A library of three packages with small chunks in 1 MiB packs, so each pack holds many
/// chunks and a package spans several packs.
struct Fix {
    _t: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
}

fn config() -> LibraryConfig {
    LibraryConfig {
        pack_size: 1 << 20,
        chunk: ChunkParams {
            min: 8 << 10,
            avg: 32 << 10,
            max: 128 << 10,
        },
        ..LibraryConfig::default()
    }
}

fn fixture() -> Fix {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("lib");
    let mut lib = new_lib(&dir, &config());
    for (i, pkg) in ["CAS00001", "CAS00002", "CAS00003"].iter().enumerate() {
        let src = t.path().join(format!("src{i}"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("noise.bin"), noise(pkg, 1_500_000)).unwrap();
        let text: Vec<u8> = format!("{pkg} line of text that compresses well\n")
            .repeat(20_000)
            .into_bytes();
        std::fs::write(src.join("sub/text.txt"), text).unwrap();
        ingest_v(&mut lib, &src, pkg, 1).unwrap();
    }
    drop(lib);
    Fix {
        root: dir.join("store"),
        dir,
        _t: t,
    }
}

impl Fix {
    /// The pack numbers on disk.
    fn packs(&self) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(self.root.join("packs"))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                match pack::parse_name(&name) {
                    Some((n, pack::PackFile::Data)) => Some(n),
                    _ => None,
                }
            })
            .collect();
        v.sort_unstable();
        v
    }

    fn data(&self, n: u32) -> PathBuf {
        pack::paths(&self.root, n).0
    }

    fn idx(&self, n: u32) -> PathBuf {
        pack::paths(&self.root, n).1
    }

    /// A pack in the middle with at least three chunks.
    fn middle_pack(&self) -> u32 {
        let packs = self.packs();
        assert!(packs.len() >= 3, "fixture has {} packs", packs.len());
        let n = packs[packs.len() / 2];
        assert!(self.entries(n).len() >= 3);
        n
    }

    fn entries(&self, n: u32) -> Vec<(ChunkId, Loc)> {
        pack::read_index(&self.idx(n), n).unwrap().unwrap().entries
    }

    /// The versions naming any of `ids`.
    fn users(&self, ids: &BTreeSet<ChunkId>) -> BTreeSet<(String, u32)> {
        let lib = Library::open(&self.dir, Access::Read, io()).unwrap();
        lib.stored_manifests()
            .unwrap()
            .into_iter()
            .map(|m| m.load().unwrap())
            .filter(|m| m.chunks().keys().any(|id| ids.contains(id)))
            .map(|m| (m.package.to_string(), m.version))
            .collect()
    }
}

fn flip(path: &Path, at: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[at as usize] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

/// Opening for writing fails with one line naming `file` and the repair verb, and changes no
/// file of the library.
fn assert_refused(f: &Fix, file: &Path) -> String {
    let before = lib_state(&f.dir);
    let err = match Library::open(&f.dir, Access::Write, io()) {
        Ok(_) => panic!("a damaged library opened for writing"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains('\n'), "not one line: {err}");
    assert!(
        err.contains(&file.display().to_string()),
        "names no file: {err}"
    );
    assert!(
        err.contains("freight library repair"),
        "names no remedy: {err}"
    );
    assert_eq!(
        lib_state(&f.dir),
        before,
        "a refused open changed the library"
    );
    // Reading still works: the damaged pack is left out and listed.
    let r = Library::open(&f.dir, Access::Read, io()).unwrap();
    assert_eq!(r.damage().len(), 1, "{:?}", r.damage());
    assert_eq!(lib_state(&f.dir), before, "a read open changed the library");
    err
}

fn run_repair(f: &Fix) -> RepairReport {
    let mut lib = Library::open(&f.dir, Access::Repair, io()).unwrap();
    repair(&mut lib, &Progress::default()).unwrap()
}

/// After repair the library opens for writing; verify's bad chunks are exactly `lost_ids`
/// and every other chunk any version names reads back intact.
fn assert_repaired(f: &Fix, r: &RepairReport, lost_ids: &BTreeSet<ChunkId>) {
    let lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    assert!(lib.damage().is_empty());
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    let bad: BTreeSet<ChunkId> = v.bad.iter().map(|b| b.id).collect();
    assert_eq!(&bad, lost_ids, "verify after repair");
    let named: BTreeSet<(String, u32)> = r
        .lost
        .iter()
        .map(|l| (l.package.clone(), l.version))
        .collect();
    drop(lib);
    assert_eq!(
        named,
        f.users(lost_ids),
        "versions named as having lost data"
    );
    assert!(!r.quarantined.is_empty(), "nothing was set aside");
    for q in &r.quarantined {
        assert!(
            q.exists() && q.starts_with(f.root.join("quarantine")),
            "{q:?}"
        );
    }
}

#[test]
fn flipped_index_header_refuses_and_repair_recovers_every_chunk() {
    let f = fixture();
    let n = f.middle_pack();
    flip(&f.idx(n), 3);
    assert_refused(&f, &f.idx(n));
    let r = run_repair(&f);
    assert_eq!(r.damaged.len(), 1);
    assert_eq!(r.chunks_recovered, f.entries_count_before_damage(n, &r));
    assert_repaired(&f, &r, &BTreeSet::new());
    assert!(r.lost.is_empty());
}

impl Fix {
    /// The chunks repair recovered should be every chunk the damaged pack held (read from its
    /// quarantined index, which still has all its entries).
    fn entries_count_before_damage(&self, n: u32, r: &RepairReport) -> u64 {
        let q = r
            .quarantined
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy() == pack::pack_name(n))
            .expect("data file quarantined");
        // Walk the record headers of the quarantined data file.
        let b = std::fs::read(q).unwrap();
        let mut pos = PACK_HEADER;
        let mut k = 0;
        while pos + RECORD_HEADER <= b.len() {
            let (_, loc) = pack::decode_record(&b[pos..], n, pos as u64).unwrap();
            pos = loc.end() as usize;
            k += 1;
        }
        k
    }
}

#[test]
fn flipped_byte_in_a_middle_index_entry_refuses_and_repair_recovers_every_chunk() {
    let f = fixture();
    let n = f.middle_pack();
    flip(&f.idx(n), (IDX_HEADER + ENTRY_LEN + 40) as u64);
    let err = assert_refused(&f, &f.idx(n));
    assert!(err.contains("entry at byte"), "{err}");
    let r = run_repair(&f);
    assert_eq!(r.chunks_recovered, f.entries_count_before_damage(n, &r));
    assert_repaired(&f, &r, &BTreeSet::new());
}

#[test]
fn deleted_index_refuses_and_repair_rebuilds_it_from_the_data() {
    let f = fixture();
    let n = f.middle_pack();
    let held = f.entries(n).len() as u64;
    std::fs::remove_file(f.idx(n)).unwrap();
    let err = assert_refused(&f, &f.idx(n));
    assert!(err.contains("index is missing"), "{err}");
    let r = run_repair(&f);
    assert_eq!(r.chunks_recovered, held);
    assert_repaired(&f, &r, &BTreeSet::new());
}

#[test]
fn index_of_a_newer_format_refuses_and_repair_reads_the_data() {
    let f = fixture();
    let n = f.middle_pack();
    let held = f.entries(n).len() as u64;
    let mut b = std::fs::read(f.idx(n)).unwrap();
    b[7] = pack::FORMAT + 1;
    std::fs::write(f.idx(n), b).unwrap();
    let err = assert_refused(&f, &f.idx(n));
    assert!(err.contains("newer"), "{err}");
    let r = run_repair(&f);
    assert_eq!(r.chunks_recovered, held);
    assert_repaired(&f, &r, &BTreeSet::new());
}

#[test]
fn pack_of_a_newer_format_is_set_aside_unread_and_its_versions_named() {
    let f = fixture();
    let n = f.middle_pack();
    let ids: BTreeSet<ChunkId> = f.entries(n).into_iter().map(|(id, _)| id).collect();
    for p in [f.data(n), f.idx(n)] {
        let mut b = std::fs::read(&p).unwrap();
        b[7] = pack::FORMAT + 1;
        std::fs::write(&p, b).unwrap();
    }
    assert_refused(&f, &f.idx(n));
    let r = run_repair(&f);
    assert_eq!(r.chunks_recovered, 0);
    assert!(!r.lost.is_empty());
    assert_repaired(&f, &r, &ids);
}

#[test]
fn damaged_records_lose_only_their_chunks_and_repair_names_the_versions() {
    let f = fixture();
    let n = f.middle_pack();
    let entries = f.entries(n);
    let held = entries.len() as u64;
    // No index, the stored bytes of one chunk damaged and the header of another: the scan
    // finds its way past the bad header, the hash refuses the bad bytes.
    let (bad_bytes, l1) = entries[0];
    let (bad_header, l2) = entries[entries.len() / 2];
    std::fs::remove_file(f.idx(n)).unwrap();
    flip(&f.data(n), l1.offset + l1.clen as u64 / 2);
    flip(&f.data(n), l2.offset - RECORD_HEADER as u64 + 10);
    assert_refused(&f, &f.idx(n));
    let r = run_repair(&f);
    assert_eq!(r.chunks_recovered, held - 2);
    assert_eq!(r.chunks_unreadable, 1);
    let lost = BTreeSet::from([bad_bytes, bad_header]);
    assert!(!r.lost.is_empty());
    assert_repaired(&f, &r, &lost);
}

#[test]
fn missing_data_file_refuses_and_repair_names_the_versions() {
    let f = fixture();
    let n = f.middle_pack();
    let ids: BTreeSet<ChunkId> = f.entries(n).into_iter().map(|(id, _)| id).collect();
    std::fs::remove_file(f.data(n)).unwrap();
    let err = assert_refused(&f, &f.data(n));
    assert!(err.contains("data file is missing"), "{err}");
    let r = run_repair(&f);
    assert_repaired(&f, &r, &ids);
}

#[test]
fn an_interrupted_commit_is_cut_on_its_own_and_nothing_else_is_touched() {
    let f = fixture();
    let n = *f.packs().last().unwrap();
    let (idx_len, data_len) = (
        std::fs::metadata(f.idx(n)).unwrap().len(),
        std::fs::metadata(f.data(n)).unwrap().len(),
    );
    // What a crash between the data sync and the header update leaves: records past the
    // committed end, and entries past the committed length (valid ones and a torn one).
    let id = ChunkId::of(b"uncommitted");
    let mut data = std::fs::read(f.data(n)).unwrap();
    data.extend_from_slice(&pack::encode_record(&id, 11, 11, 0));
    data.extend_from_slice(b"uncommitted");
    std::fs::write(f.data(n), &data).unwrap();
    let loc = Loc {
        pack: n,
        offset: data_len + RECORD_HEADER as u64,
        clen: 11,
        ulen: 11,
        flags: 0,
    };
    let mut idx = std::fs::read(f.idx(n)).unwrap();
    idx.extend_from_slice(&pack::encode_entry(&id, &loc));
    idx.extend_from_slice(&[7u8; 30]);
    std::fs::write(f.idx(n), &idx).unwrap();
    let lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    assert!(!lib.has_chunk(&id), "an uncommitted entry became visible");
    assert_eq!(std::fs::metadata(f.idx(n)).unwrap().len(), idx_len);
    assert_eq!(std::fs::metadata(f.data(n)).unwrap().len(), data_len);
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean());
}

#[test]
fn implausible_lengths_in_a_committed_entry_are_refused_not_allocated() {
    let f = fixture();
    let n = f.middle_pack();
    let (id, loc) = f.entries(n)[1];
    let bad = Loc {
        ulen: u32::MAX,
        ..loc
    };
    let mut idx = std::fs::read(f.idx(n)).unwrap();
    let at = IDX_HEADER + ENTRY_LEN;
    idx[at..at + ENTRY_LEN].copy_from_slice(&pack::encode_entry(&id, &bad));
    std::fs::write(f.idx(n), &idx).unwrap();
    assert_refused(&f, &f.idx(n));
    // An entry that points past the end of the pack is damage too (the pack was cut short).
    let f = fixture();
    let n = f.middle_pack();
    let last = *f.entries(n).last().unwrap();
    let len = std::fs::metadata(f.data(n)).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(f.data(n))
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let err = assert_refused(&f, &f.data(n));
    assert!(err.contains(&format!("{}", last.1.end())), "{err}");
}

#[test]
fn a_missing_storage_root_is_refused_and_not_created() {
    let f = fixture();
    let moved = f.dir.join("unmounted");
    std::fs::rename(&f.root, &moved).unwrap();
    for access in [Access::Write, Access::Read, Access::Repair] {
        let err = match Library::open(&f.dir, access, io()) {
            Ok(_) => panic!("opened without its storage root ({access:?})"),
            Err(e) => e.to_string(),
        };
        assert!(!err.contains('\n'));
        assert!(err.contains("storage root is missing"), "{err}");
        assert!(
            err.contains(&f.root.join("packs").display().to_string()),
            "{err}"
        );
        assert!(!f.root.exists(), "the missing root was created");
    }
    std::fs::rename(&moved, &f.root).unwrap();
    Library::open(&f.dir, Access::Write, io()).unwrap();
}

/// Rewrites every pack of the library in format 1 (what Freight wrote before format 2).
fn downgrade_to_format_1(f: &Fix) {
    for n in f.packs() {
        let entries = f.entries(n);
        let old = std::fs::read(f.data(n)).unwrap();
        let mut data = pack::PACK_MAGIC_V1.to_vec();
        let mut idx = pack::IDX_MAGIC_V1.to_vec();
        for (id, loc) in entries {
            let new = Loc {
                offset: data.len() as u64,
                ..loc
            };
            data.extend_from_slice(&old[loc.offset as usize..loc.end() as usize]);
            idx.extend_from_slice(&pack::encode_entry(&id, &new));
        }
        std::fs::write(f.data(n), data).unwrap();
        std::fs::write(f.idx(n), idx).unwrap();
    }
}

#[test]
fn format_1_libraries_open_verify_take_new_versions_and_gc_rewrites_them() {
    let f = fixture();
    downgrade_to_format_1(&f);
    let mut lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    assert!(lib.packs().values().all(|p| p.format == 1));
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean() && v.chunks > 0);
    // New content goes to a new, format-2 pack; format-1 packs are never appended to.
    let src = f.dir.join("../new");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("n.bin"), noise("new", 300_000)).unwrap();
    let before: BTreeMap<u32, u64> = lib.packs().iter().map(|(n, p)| (*n, p.len)).collect();
    ingest_v(&mut lib, &src, "CAS00004", 1).unwrap();
    for (n, len) in &before {
        assert_eq!(
            lib.packs()[n].len,
            *len,
            "format-1 pack {n} was appended to"
        );
    }
    assert!(lib.packs().values().any(|p| p.format == 2));
    // gc rewrites the format-1 packs it compacts into format 2.
    let v1_before = lib.packs().values().filter(|p| p.format == 1).count();
    lib.remove_version(&pid("CAS00002"), 1).unwrap();
    let r = freight_core::gc::gc(&mut lib, &Progress::default()).unwrap();
    assert!(r.packs_compacted > 0 && r.bytes_moved > 0, "{r:?}");
    drop(lib);
    let lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    let v1_after = lib.packs().values().filter(|p| p.format == 1).count();
    assert!(
        v1_after < v1_before,
        "{v1_after} of {v1_before} format-1 packs left"
    );
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean());
}

#[test]
fn format_1_damage_refuses_and_repair_keeps_what_the_index_still_names() {
    let f = fixture();
    downgrade_to_format_1(&f);
    let n = f.middle_pack();
    let entries = f.entries(n);
    // One entry in the middle damaged: format 1 has no record headers, so that chunk is
    // lost, but every other entry's chunk is recovered.
    flip(&f.idx(n), (8 + ENTRY_LEN + 3) as u64);
    assert_refused(&f, &f.idx(n));
    let r = run_repair(&f);
    assert_eq!(r.chunks_recovered, entries.len() as u64 - 1);
    assert_repaired(&f, &r, &BTreeSet::from([entries[1].0]));
}

#[test]
fn pack_numbers_are_never_reused_after_the_highest_pack_is_collected() {
    let f = fixture();
    let highest = *f.packs().last().unwrap();
    let mut lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    // Drop every package, so gc deletes every pack, the highest included.
    for p in ["CAS00001", "CAS00002", "CAS00003"] {
        lib.remove_version(&pid(p), 1).unwrap();
    }
    let r = freight_core::gc::gc(&mut lib, &Progress::default()).unwrap();
    assert!(r.packs_deleted > 0);
    assert!(lib.packs().is_empty());
    let src = f.dir.join("../again");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), noise("again", 100_000)).unwrap();
    ingest_v(&mut lib, &src, "CAS00005", 1).unwrap();
    assert!(
        *lib.packs().keys().next().unwrap() > highest,
        "in-process reuse"
    );
    drop(lib);
    // And after a restart.
    let mut lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    lib.remove_version(&pid("CAS00005"), 1).unwrap();
    freight_core::gc::gc(&mut lib, &Progress::default()).unwrap();
    let gone = highest + 1;
    drop(lib);
    let mut lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    ingest_v(&mut lib, &src, "CAS00005", 2).unwrap();
    assert!(
        *lib.packs().keys().next().unwrap() > gone,
        "reuse after restart"
    );
}

#[test]
fn gc_on_a_full_disk_still_deletes_packs_that_are_all_garbage() {
    let f = fixture();
    let mut lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    let all_garbage: Vec<u32> = {
        // Packs holding only CAS00003's chunks (it was ingested last, into its own packs).
        let m3 = lib.manifest(&pid("CAS00003"), 1).unwrap().chunks();
        lib.packs()
            .keys()
            .copied()
            .filter(|n| f.entries(*n).iter().all(|(id, _)| m3.contains_key(id)))
            .collect()
    };
    assert!(!all_garbage.is_empty());
    lib.remove_version(&pid("CAS00003"), 1).unwrap();
    // Some garbage in a mixed pack too, so the collection also wants to rewrite one.
    lib.remove_version(&pid("CAS00002"), 1).unwrap();
    drop(lib);
    // "Full": a reserve larger than the free space leaves no room for a new pack.
    let mut cfg = LibraryConfig::load(&f.dir).unwrap();
    cfg.reserve_bytes = free_bytes(&f.dir) * 2;
    std::fs::write(f.dir.join("library.toml"), cfg.to_toml()).unwrap();
    let mut lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    let err = freight_core::gc::gc(&mut lib, &Progress::default());
    for n in &all_garbage {
        assert!(!f.data(*n).exists(), "all-garbage pack {n} survived");
        assert!(!lib.packs().contains_key(n));
    }
    if let Err(e) = err {
        assert!(e.is_no_space(), "{e}");
    }
    drop(lib);
    let lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean());
}

#[test]
fn a_stale_or_wrong_location_never_returns_another_chunks_bytes() {
    let f = fixture();
    let mut lib = Library::open(&f.dir, Access::Write, io()).unwrap();
    let n = f.middle_pack();
    let entries = f.entries(n);
    let ((a, la), (b, lb)) = (entries[0], entries[1]);
    // Asking for A where B is stored is refused by the record header, not served as A.
    let err = lib.read_checked(&a, &lb).unwrap().wait().unwrap_err();
    assert!(
        err.to_string().contains("does not name this chunk"),
        "{err}"
    );
    // A view taken before a collection keeps reading the right bytes after the pack is gone.
    let m = lib.manifest(&pid("CAS00002"), 1).unwrap();
    let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
    let view = lib.read_view(ids.clone(), &m.package, m.version).unwrap();
    for p in ["CAS00001", "CAS00002", "CAS00003"] {
        lib.remove_version(&pid(p), 1).unwrap();
    }
    freight_core::gc::gc(&mut lib, &Progress::default()).unwrap();
    assert_eq!(lib.chunk_count(), 0);
    assert!(!f.data(n).exists());
    for (i, (id, loc)) in view.chunks().iter().enumerate() {
        let stored = view.read(i).wait().unwrap();
        freight_core::library::decode_chunk(id, loc, &stored).unwrap();
    }
    // A location looked up before the collection, without a view: an error, never bytes.
    assert!(lib.read_checked(&a, &la).is_err());
    assert!(lib.read_checked(&b, &lb).is_err());
}
