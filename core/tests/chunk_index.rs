//! The global chunk index (`freight_core::chunk_index`): lookups, duplicates, flushes and
//! merges, reopening, crash leftovers, stale and damaged index files (rebuilt, never
//! trusted), collections, readers beside a writer, and a 10,000,000-chunk library in bounded
//! memory (heavy tier).

use freight_core::chunk_index::{ChunkIndex, Covered, TABLE_MAX};
use freight_core::gc::gc;
use freight_core::library::{Access, INDEX_DIR};
use freight_core::pack::{FLAG_ZSTD, Loc};
use freight_core::{ChunkId, Library, Progress};
use freight_test_support::synthetic::{self, chunk_bytes, chunk_id};
use std::path::Path;
use std::time::Instant;

fn loc(pack: u32, i: u64) -> Loc {
    Loc {
        pack,
        offset: 64 + i * 100,
        clen: 10,
        ulen: 20,
        flags: FLAG_ZSTD,
    }
}

fn open(dir: &Path) -> Library {
    Library::open(dir, Access::Write, None).unwrap()
}

fn index_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(INDEX_DIR))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Appends chunks `range` (synthetic 8-byte chunks) in one committed transaction.
fn append(lib: &mut Library, range: std::ops::Range<u64>) {
    let mut w = lib.writer(true);
    for i in range {
        w.append(chunk_id(i), 8, 0, &chunk_bytes(i)).unwrap();
    }
    let c = w.commit().unwrap();
    lib.apply(c);
}

#[test]
fn runs_and_table_answer_every_lookup_oldest_entry_first_and_survive_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("index");
    let live_all = |_: u32| true;
    let mut ix = ChunkIndex::empty(&dir, true, &dir);
    // 5 flushes of 30,000 entries (runs merge as they grow), then a table of 10,000.
    let n = 160_000u64;
    for i in 0..n {
        let pack = 1 + (i / 30_000) as u32;
        ix.insert(chunk_id(i), loc(pack, i), false);
        if (i + 1) % 30_000 == 0 {
            ix.flush(&live_all).unwrap();
        }
    }
    // Duplicates: chunks 0..100 again in a later pack; the first entry stays the answer.
    for i in 0..100 {
        ix.insert(chunk_id(i), loc(99, i), true);
    }
    assert!(ix.runs() >= 1 && ix.runs() <= 6, "runs: {}", ix.runs());
    assert_eq!(ix.count(&live_all).unwrap(), n);
    for i in (0..n).step_by(7) {
        let want = loc(1 + (i / 30_000) as u32, i);
        assert_eq!(ix.get(&chunk_id(i), &live_all).unwrap(), Some(want), "{i}");
    }
    assert_eq!(ix.get(&chunk_id(n + 1), &live_all).unwrap(), None);
    // With pack 1 gone, its chunks that have another entry are found there.
    let no_1 = |p: u32| p != 1;
    assert_eq!(ix.get(&chunk_id(5), &no_1).unwrap(), Some(loc(99, 5)));
    assert_eq!(ix.get(&chunk_id(500), &no_1).unwrap(), None);
    // The merged pass is sorted, each chunk once.
    let mut last: Option<ChunkId> = None;
    let mut seen = 0u64;
    ix.for_each_located(&live_all, &mut |id, _| {
        assert!(last.is_none_or(|l| l < id));
        last = Some(id);
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, n);
    // Flush the rest, compact without pack 1, reopen from the catalog.
    ix.flush(&live_all).unwrap();
    for p in 1..=6 {
        ix.set_covered(
            p,
            Covered {
                format: 2,
                idx_len: 32,
                data_end: 8,
                last_check: [0; 8],
            },
        );
    }
    ix.compact(&no_1).unwrap();
    assert_eq!(ix.runs(), 1);
    assert_eq!(ix.count(&no_1).unwrap(), n - 30_000 + 100);
    drop(ix);
    let re = ChunkIndex::open(&dir, true, &dir).unwrap();
    assert!(re.discarded.is_none());
    let re = re.index;
    assert_eq!(re.count(&no_1).unwrap(), n - 30_000 + 100);
    assert_eq!(re.covered(1), None, "a dead pack's coverage is dropped");
    assert!(re.covered(2).is_some());
    assert_eq!(re.get(&chunk_id(5), &live_all).unwrap(), Some(loc(99, 5)));
    assert_eq!(
        re.get(&chunk_id(40_000), &live_all).unwrap(),
        Some(loc(2, 40_000))
    );
    assert_eq!(re.get(&chunk_id(500), &live_all).unwrap(), None);
}

#[test]
fn a_synthetic_library_is_indexed_once_and_then_opened_from_its_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lib");
    let syn = synthetic::library(&dir, 250_000).unwrap();
    assert_eq!(syn.packs, 3);
    // First open: no index yet; built from the pack indexes (spilled and merged) and published.
    let lib = open(&dir);
    assert_eq!(lib.chunk_count(), 250_000);
    let files = index_files(&dir);
    assert!(files.contains(&"catalog".to_string()), "{files:?}");
    assert_eq!(files.len(), 2, "one run and the catalog: {files:?}");
    drop(lib);
    // Second open: from the catalog, nothing rebuilt.
    let lib = open(&dir);
    assert_eq!(index_files(&dir), files);
    assert_eq!(lib.chunk_count(), 250_000);
    for i in (0..250_000).step_by(997) {
        let l = lib.locate(&chunk_id(i)).expect("indexed");
        assert_eq!(
            lib.read_chunk(&chunk_id(i)).unwrap(),
            chunk_bytes(i),
            "{l:?}"
        );
    }
    assert!(!lib.has_chunk(&chunk_id(250_000)));
    let m = lib.manifest(&syn.package, syn.version).unwrap();
    assert!(lib.missing(&m).is_empty());
    // A manifest naming most of the library: `missing` merge-joins it with the index.
    let mut big = m.clone();
    big.version = 2;
    let ids: Vec<u64> = (100_000..250_100).collect();
    big.entries[1].kind = freight_core::EntryKind::File {
        size: ids.len() as u64 * 8,
        chunks: ids
            .iter()
            .map(|&i| freight_core::manifest::ChunkRef {
                id: chunk_id(i),
                len: 8,
            })
            .collect(),
    };
    let mut want: Vec<ChunkId> = (250_000..250_100).map(chunk_id).collect();
    want.sort();
    assert_eq!(lib.missing(&big), want);
    let report = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.chunks, syn.referenced.len() as u64);
    let st = freight_core::stats::stats(&lib).unwrap();
    assert_eq!(st.chunks, 250_000);
    assert_eq!(st.referenced_chunks, syn.referenced.len() as u64);
}

#[test]
fn commits_past_the_table_are_flushed_published_and_read_back_after_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lib");
    synthetic::library(&dir, 1000).unwrap();
    let mut lib = open(&dir);
    assert_eq!(lib.chunk_count(), 1000);
    // Small: kept in the table, nothing published.
    assert!(!index_files(&dir).contains(&"catalog".to_string()));
    append(&mut lib, 1000..1000 + TABLE_MAX as u64 + 10);
    let files = index_files(&dir);
    assert!(files.contains(&"catalog".to_string()), "{files:?}");
    append(&mut lib, 200_000..200_050);
    let total = 1000 + TABLE_MAX + 10 + 50;
    assert_eq!(lib.chunk_count(), total);
    drop(lib);
    // The 50 chunks of the last commit are a tail past the catalog: read from the pack index.
    let lib = open(&dir);
    assert_eq!(lib.chunk_count(), total);
    for i in [
        0,
        999,
        1000,
        50_000,
        1000 + TABLE_MAX as u64 + 9,
        200_000,
        200_049,
    ] {
        assert_eq!(lib.read_chunk(&chunk_id(i)).unwrap(), chunk_bytes(i), "{i}");
    }
    // Duplicates across packs: the first indexed stays the answer, after reopening too.
    let first = lib.locate(&chunk_id(5)).unwrap();
    drop(lib);
    let mut lib = open(&dir);
    let mut w = lib.writer(false);
    w.append(chunk_id(5), 8, 0, &chunk_bytes(5)).unwrap();
    let c = w.commit().unwrap();
    let second = c.entries[0].1;
    assert_ne!(second.pack, first.pack);
    lib.apply(c);
    assert_eq!(lib.locate(&chunk_id(5)), Some(first));
    assert_eq!(lib.chunk_count(), total);
    drop(lib);
    let lib = open(&dir);
    assert_eq!(lib.locate(&chunk_id(5)), Some(first));
    assert_eq!(lib.chunk_count(), total);
}

#[test]
fn crash_leftovers_in_the_index_folder_are_removed_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lib");
    synthetic::library(&dir, 150_000).unwrap();
    drop(open(&dir));
    let files = index_files(&dir);
    let ix = dir.join(INDEX_DIR);
    // A half-written run of an interrupted flush, an orphaned run of an interrupted merge,
    // a half-written catalog.
    std::fs::write(
        ix.join(".run-0000000000000099.fci.tmp"),
        b"FRCIRUN\x01 torn",
    )
    .unwrap();
    std::fs::write(ix.join("run-0000000000000098.fci"), vec![7u8; 5000]).unwrap();
    std::fs::write(ix.join(".catalog.tmp"), b"FRCI").unwrap();
    let lib = open(&dir);
    assert_eq!(index_files(&dir), files);
    assert_eq!(lib.chunk_count(), 150_000);
    assert_eq!(
        lib.read_chunk(&chunk_id(149_999)).unwrap(),
        chunk_bytes(149_999)
    );
}

#[test]
fn a_damaged_index_is_rebuilt_from_the_packs_never_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lib");
    synthetic::library(&dir, 150_000).unwrap();
    drop(open(&dir));
    let ix = dir.join(INDEX_DIR);
    let run = index_files(&dir)
        .into_iter()
        .find(|f| f.starts_with("run-"))
        .unwrap();
    let flip = |path: &Path, at: u64| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x40;
        f.write_all_at(&b, at).unwrap();
    };
    // A damaged block: the open still succeeds (header and fence are fine), a lookup in that
    // block finds the damage and answers from the pack indexes, and drops the catalog.
    flip(&ix.join(&run), 64 + 4096 * 10 + 100);
    let lib = open(&dir);
    for i in 0..150_000 {
        let l = lib.locate(&chunk_id(i)).expect("found despite the damage");
        assert_eq!(l.pack as u64, 1 + i / synthetic::PER_PACK, "{i}");
    }
    for i in (0..150_000).step_by(50) {
        assert_eq!(lib.read_chunk(&chunk_id(i)).unwrap(), chunk_bytes(i), "{i}");
    }
    drop(lib);
    assert!(
        !ix.join("catalog").exists(),
        "the damaged index is no longer published"
    );
    // The next open rebuilds a sound one.
    let lib = open(&dir);
    assert!(ix.join("catalog").exists());
    assert_eq!(lib.chunk_count(), 150_000);
    drop(lib);
    // A damaged catalog or fence: rebuilt at open.
    let cat = ix.join("catalog");
    flip(&cat, 20);
    let lib = open(&dir);
    assert_eq!(lib.chunk_count(), 150_000);
    assert_eq!(
        lib.read_chunk(&chunk_id(77_777)).unwrap(),
        chunk_bytes(77_777)
    );
    drop(lib);
    let run = index_files(&dir)
        .into_iter()
        .find(|f| f.starts_with("run-"))
        .unwrap();
    let len = std::fs::metadata(ix.join(&run)).unwrap().len();
    flip(&ix.join(&run), len - 20);
    let lib = open(&dir);
    assert_eq!(lib.chunk_count(), 150_000);
    assert_eq!(lib.read_chunk(&chunk_id(3)).unwrap(), chunk_bytes(3));
}

#[test]
fn a_stale_index_from_before_a_collection_is_corrected_from_the_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lib");
    let syn = synthetic::library(&dir, 250_000).unwrap();
    drop(open(&dir));
    // Keep the index as it was, collect (every pack rewritten or deleted), put the old
    // index back: it names packs that are gone and misses the new ones.
    let saved = tmp.path().join("saved-index");
    std::fs::create_dir(&saved).unwrap();
    for f in index_files(&dir) {
        std::fs::copy(dir.join(INDEX_DIR).join(&f), saved.join(&f)).unwrap();
    }
    let mut lib = open(&dir);
    let report = gc(&mut lib, &Progress::default()).unwrap();
    assert_eq!(
        report.chunks_removed,
        250_000 - syn.referenced.len() as u64,
        "{report:?}"
    );
    assert_eq!(lib.chunk_count(), syn.referenced.len());
    for &i in &syn.referenced {
        assert_eq!(lib.read_chunk(&chunk_id(i)).unwrap(), chunk_bytes(i));
    }
    assert!(!lib.has_chunk(&chunk_id(1)));
    drop(lib);
    std::fs::remove_dir_all(dir.join(INDEX_DIR)).unwrap();
    std::fs::create_dir(dir.join(INDEX_DIR)).unwrap();
    for f in std::fs::read_dir(&saved).unwrap().flatten() {
        std::fs::copy(f.path(), dir.join(INDEX_DIR).join(f.file_name())).unwrap();
    }
    for view in [false, true, false] {
        let lib = if view {
            Library::open_read_only(&dir, None).unwrap()
        } else {
            open(&dir)
        };
        assert_eq!(lib.chunk_count(), syn.referenced.len());
        assert!(!lib.has_chunk(&chunk_id(1)));
        for &i in &syn.referenced {
            assert_eq!(lib.read_chunk(&chunk_id(i)).unwrap(), chunk_bytes(i));
        }
        let report = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
        assert!(report.is_clean());
    }
}

#[test]
fn a_reader_keeps_its_index_while_the_writer_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lib");
    let syn = synthetic::library(&dir, 250_000).unwrap();
    drop(open(&dir));
    let view = Library::open_read_only(&dir, None).unwrap();
    assert_eq!(view.chunk_count(), 250_000);
    let mut lib = open(&dir);
    gc(&mut lib, &Progress::default()).unwrap();
    // The runs the view opened were replaced and unlinked; it still reads through them,
    // and its pinned packs.
    for i in (0..250_000).step_by(1009) {
        assert!(view.locate(&chunk_id(i)).is_some(), "{i}");
    }
    for &i in &syn.referenced {
        assert_eq!(view.read_chunk(&chunk_id(i)).unwrap(), chunk_bytes(i));
    }
    // A new view sees the collected library.
    let fresh = Library::open_read_only(&dir, None).unwrap();
    assert_eq!(fresh.chunk_count(), syn.referenced.len());
    assert!(!fresh.has_chunk(&chunk_id(1)));
}

/// Heavy tier: writes a 10,000,000-chunk library (1.3 GB of disk, in `/var/tmp` or
/// `$FREIGHT_SCALE_DIR`) and takes about a minute on two cores. The process's peak RSS must stay within 200 MiB through building the index,
/// reopening, lookups, an ingest past the table, gc, verify and stats.
#[test]
fn heavy_ten_million_chunks_open_and_work_in_bounded_memory() {
    const N: u64 = 10_000_000;
    const LIMIT: u64 = 200 << 20;
    let tmp = tempfile::tempdir_in(
        std::env::var_os("FREIGHT_SCALE_DIR").unwrap_or_else(|| "/var/tmp".into()),
    )
    .unwrap();
    let dir = tmp.path().join("lib");
    let t = Instant::now();
    let syn = synthetic::library(&dir, N).unwrap();
    eprintln!("generate {N} chunks: {:.1?}", t.elapsed());
    let t = Instant::now();
    let lib = open(&dir);
    eprintln!(
        "first open (index built from the pack indexes): {:.2?}, peak RSS {} MiB",
        t.elapsed(),
        synthetic::peak_rss() >> 20
    );
    drop(lib);
    let t = Instant::now();
    let mut lib = open(&dir);
    let open_time = t.elapsed();
    eprintln!(
        "open from the index: {open_time:.2?}, index memory {} KiB, RSS {} MiB",
        lib.index_memory() >> 10,
        synthetic::rss() >> 20
    );
    assert_eq!(lib.chunk_count() as u64, N);
    let t = Instant::now();
    let k = 200_000u64;
    for j in 0..k {
        let i = j.wrapping_mul(0x9E37_79B9_7F4A_7C15) % N;
        assert!(lib.locate(&chunk_id(i)).is_some(), "{i}");
    }
    let hit = t.elapsed();
    let t = Instant::now();
    for j in 0..k {
        assert!(!lib.has_chunk(&chunk_id(N + j)));
    }
    let miss = t.elapsed();
    eprintln!(
        "lookups: {:.0}/s hits, {:.0}/s misses",
        k as f64 / hit.as_secs_f64(),
        k as f64 / miss.as_secs_f64()
    );
    let t = Instant::now();
    append(&mut lib, N..N + 300_000);
    eprintln!(
        "append + commit 300,000 chunks: {:.2?} ({:.0}/s)",
        t.elapsed(),
        300_000.0 / t.elapsed().as_secs_f64()
    );
    assert_eq!(lib.chunk_count() as u64, N + 300_000);
    assert!(lib.has_chunk(&chunk_id(N + 299_999)));
    let st = freight_core::stats::stats(&lib).unwrap();
    assert_eq!(st.chunks, N + 300_000);
    assert_eq!(st.referenced_chunks, syn.referenced.len() as u64);
    // A reader beside the writer: the published runs plus the pack index tails.
    let t = Instant::now();
    let view = Library::open_read_only(&dir, None).unwrap();
    eprintln!("read-only view beside the writer: {:.2?}", t.elapsed());
    assert_eq!(view.chunk_count() as u64, N + 300_000);
    assert!(view.has_chunk(&chunk_id(N + 299_999)) && view.has_chunk(&chunk_id(N / 2)));
    drop(view);
    let t = Instant::now();
    let report = gc(&mut lib, &Progress::default()).unwrap();
    eprintln!("gc: {:.2?} {report:?}", t.elapsed());
    assert_eq!(lib.chunk_count(), syn.referenced.len());
    for &i in syn.referenced.iter().step_by(10) {
        assert_eq!(lib.read_chunk(&chunk_id(i)).unwrap(), chunk_bytes(i));
    }
    let v = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
    assert!(v.is_clean());
    drop(lib);
    let view = Library::open_read_only(&dir, None).unwrap();
    assert_eq!(view.chunk_count(), syn.referenced.len());
    let peak = synthetic::peak_rss();
    eprintln!("peak RSS of the whole test: {} MiB", peak >> 20);
    assert!(peak <= LIMIT, "peak RSS {} MiB > 200 MiB", peak >> 20);
    assert!(
        open_time.as_secs_f64() < 5.0,
        "opening a 10 M-chunk library took {open_time:?}"
    );
}

#[test]
fn repair_reads_every_entry_again_and_leaves_a_sound_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lib");
    let syn = synthetic::library(&dir, 250_000).unwrap();
    drop(open(&dir));
    // Damage an entry of pack 2's index inside what the published index covers: an ordinary
    // open does not read it again, gc (which streams every pack index) refuses.
    let idx = dir
        .join("store/packs")
        .join(freight_core::pack::idx_name(2));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&idx).unwrap();
        f.write_all_at(&[0xAB], 32 + 64 * 500 + 40).unwrap();
    }
    let mut lib = open(&dir);
    let err = gc(&mut lib, &Progress::default()).unwrap_err();
    assert!(
        matches!(err, freight_core::Error::NeedsRepair { .. }),
        "{err}"
    );
    drop(lib);
    let mut lib = Library::open(&dir, Access::Repair, None).unwrap();
    assert_eq!(lib.damage().len(), 1, "repair sees the damaged entry");
    let report = freight_core::repair::repair(&mut lib, &Progress::default()).unwrap();
    assert!(report.lost.is_empty(), "{report:?}");
    drop(lib);
    let mut lib = open(&dir);
    assert_eq!(lib.chunk_count(), 250_000);
    for i in (100_000..200_000).step_by(97) {
        assert_eq!(lib.read_chunk(&chunk_id(i)).unwrap(), chunk_bytes(i), "{i}");
    }
    gc(&mut lib, &Progress::default()).unwrap();
    assert_eq!(lib.chunk_count(), syn.referenced.len());
    drop(lib);
    let lib = open(&dir);
    assert_eq!(lib.chunk_count(), syn.referenced.len());
}
