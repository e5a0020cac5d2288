//! `gc::drop_chunks`: a repair's drop of bad chunks rewrites only the packs that hold them.

mod common;

use common::*;
use freight_core::manifest::EntryKind;
use freight_core::{ChunkId, LibraryConfig, PackageId, Progress};
use std::collections::HashSet;

fn pid(s: &str) -> PackageId {
    PackageId::parse(s).unwrap()
}

#[test]
fn dropping_chunks_rewrites_only_the_packs_that_hold_them_and_leaves_other_garbage() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }
    // 1 MiB packs and files below the smallest chunk (one chunk each): the first pack takes
    // version 1 (kept, changed, filler: about 900 KB), the second the rest.
    let cfg = LibraryConfig {
        pack_size: 1 << 20,
        ..LibraryConfig::default()
    };
    let mut lib = new_lib(&t.path().join("lib"), &cfg);
    std::fs::write(a.join("kept.bin"), noise("kept", 200_000)).unwrap();
    std::fs::write(a.join("changed.bin"), noise("old", 200_000)).unwrap();
    std::fs::write(a.join("filler.bin"), noise("filler", 250_000)).unwrap();
    std::fs::write(a.join("filler2.bin"), noise("filler2", 250_000)).unwrap();
    ingest_v(&mut lib, &a, "CAS00001", 1).unwrap();
    std::fs::write(a.join("changed.bin"), noise("new", 200_000)).unwrap();
    ingest_v(&mut lib, &a, "CAS00001", 2).unwrap();
    // Version 1's copy of changed.bin becomes garbage in the first pack, beside live content.
    lib.remove_version(&pid("CAS00001"), 1).unwrap();
    std::fs::write(b.join("bad.bin"), noise("bad", 200_000)).unwrap();
    std::fs::write(b.join("good.bin"), noise("good", 200_000)).unwrap();
    ingest_v(&mut lib, &b, "CAS00002", 1).unwrap();
    let packs_before: HashSet<u32> = lib.packs().keys().copied().collect();
    assert_eq!(packs_before.len(), 2, "{packs_before:?}");

    let m = lib.manifest(&pid("CAS00002"), 1).unwrap();
    let bad: HashSet<ChunkId> = m
        .entries
        .iter()
        .filter(|e| e.path == b"bad.bin")
        .flat_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => chunks.iter().map(|c| c.id).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert!(!bad.is_empty());
    let r = freight_core::gc::drop_chunks(&mut lib, &bad, &Progress::default()).unwrap();
    // Only the pack holding the dropped chunk was rewritten; the first pack keeps its garbage.
    assert_eq!((r.packs_compacted, r.packs_deleted), (1, 0), "{r:?}");
    assert_eq!(r.chunks_removed, bad.len() as u64, "{r:?}");
    let packs_after: HashSet<u32> = lib.packs().keys().copied().collect();
    assert_eq!(packs_before.difference(&packs_after).count(), 1);
    for id in &bad {
        assert!(!lib.has_chunk(id));
    }
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    let failed: HashSet<ChunkId> = v.bad.iter().map(|b| b.id).collect();
    assert_eq!(failed, bad, "only the dropped chunks are missing");
    // A full collection still finds the garbage the drop left alone.
    let full = freight_core::gc::gc(&mut lib, &Progress::default()).unwrap();
    assert!(full.packs_compacted >= 1, "{full:?}");
}
