//! A package whose manifest is far larger than one protocol frame (issue 11: a 65,696-file
//! tree's 8.9 MB manifest never arrived) pushes over real QUIC: the manifest travels in
//! parts, the receiver stores it byte for byte, and a resumed push asks only for what is
//! missing (its `Need` list in several parts too).

mod common;

use common::*;
use freight_core::manifest::{ChunkRef, Entry, EntryKind};
use freight_core::{ChunkId, Library, Manifest, PackageId};
use freight_transport::session::{PushOptions, PushReport, push};
use freight_transport::store::SharedLibrary;
use freight_transport::{MAX_FRAME, MAX_NEED_IDS};
use std::path::Path;
use std::time::Instant;

/// Files of the package, and the distinct chunks they share (each file names two).
const FILES: usize = 150_000;
const CHUNKS: usize = 45_000;

fn chunk_bytes(i: usize) -> Vec<u8> {
    format!("chunk {i:06} of a package with a very large manifest\n").into_bytes()
}

fn entry(path: String, kind: EntryKind) -> Entry {
    Entry {
        path: path.into_bytes(),
        mode: if matches!(kind, EntryKind::Dir) {
            0o755
        } else {
            0o644
        },
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
        kind,
    }
}

/// Stores `CHUNKS` small chunks in `lib` and returns the manifest of `FILES` files naming
/// them (stored too): 150 folders of 1,000 files, some 13 MB of manifest.
fn big_package(lib: &mut Library, pkg: &str) -> Manifest {
    let refs = store_chunks(lib, 0..CHUNKS);
    let mut entries = vec![entry(String::new(), EntryKind::Dir)];
    for d in 0..FILES / 1000 {
        entries.push(entry(format!("d{d:03}"), EntryKind::Dir));
        for f in 0..1000 {
            let i = d * 1000 + f;
            let chunks = vec![refs[i % CHUNKS], refs[(i * 7 + 1) % CHUNKS]];
            let size = chunks.iter().map(|c| u64::from(c.len)).sum();
            entries.push(entry(
                format!("d{d:03}/file-{i:06}.txt"),
                EntryKind::File { size, chunks },
            ));
        }
    }
    let m = Manifest {
        package: PackageId::parse(pkg).unwrap(),
        version: 1,
        entries,
    };
    assert!(lib.store_manifest(&m).unwrap());
    m
}

/// Appends chunks `range` (raw) to `lib` and commits them.
fn store_chunks(lib: &mut Library, range: std::ops::Range<usize>) -> Vec<ChunkRef> {
    let mut w = lib.writer(false);
    let mut refs = Vec::new();
    for i in range {
        let data = chunk_bytes(i);
        let id = ChunkId::of(&data);
        w.append(id, data.len() as u32, 0, &data).unwrap();
        refs.push(ChunkRef {
            id,
            len: data.len() as u32,
        });
    }
    let committed = w.commit().unwrap();
    lib.apply(committed);
    refs
}

fn temporaries(lib_dir: &Path) -> Vec<String> {
    std::fs::read_dir(lib_dir.join("pending"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_far_above_one_frame_pushes_in_parts_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    let mut lib = library(&t.path().join("cas-lib"));
    let m = big_package(&mut lib, "CAS00001");
    let stored = std::fs::read(lib.manifest_path(&m.package, 1)).unwrap();
    // The precondition: the manifest is well above what one frame carries.
    assert!(
        stored.len() > 12 << 20 && stored.len() as u64 > u64::from(MAX_FRAME),
        "{} bytes",
        stored.len()
    );
    assert_eq!(m.chunks().len(), CHUNKS);

    // The receiver already holds the first 10,000 chunks, committed before a cut (no
    // manifest): the push is the resumed session, and asks for the other 35,000, a Need in
    // parts (more than one part's IDs).
    let rx_dir = t.path().join("ps1-lib");
    let mut rx_lib = library(&rx_dir);
    store_chunks(&mut rx_lib, 0..10_000);
    let missing = CHUNKS - 10_000;
    assert!(missing > MAX_NEED_IDS);
    let mut rx = receiving_with(&ps1, SharedLibrary::new(rx_lib), fast_config());
    let shared = SharedLibrary::new(lib);
    let (_node, conn) = connect(&cas, &rx, "PS1").await;
    let started = Instant::now();
    let mut report = PushReport::default();
    push(&conn, &shared, &m, &PushOptions::default(), &mut report)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(report.committed);
    assert_eq!(report.chunks_needed, missing as u64);
    assert_eq!(report.chunks_sent, missing as u64);
    rx.events.recv().await.unwrap().result.unwrap();
    eprintln!(
        "manifest {} bytes, {} files, {} chunks sent, push {:.2} s, peak RSS of the test process (both sides) {} MiB",
        stored.len(),
        FILES,
        report.chunks_sent,
        took.as_secs_f64(),
        peak_rss_kib() / 1024
    );

    // The receiver's library holds the byte-identical manifest and every chunk; the
    // temporary manifest file is gone.
    let got = rx.lib.clone();
    let (m2, stored2) = (m.clone(), stored.clone());
    let dir = rx_dir.clone();
    tokio::task::spawn_blocking(move || {
        let l = got.read();
        let path = l.manifest_path(&m2.package, 1);
        assert!(std::fs::read(path).unwrap() == stored2, "manifest differs");
        assert!(l.missing(&m2).is_empty());
        for (i, id) in m2.chunks().keys().enumerate().step_by(997) {
            assert_eq!(ChunkId::of(&l.read_chunk(id).unwrap()), *id, "chunk {i}");
        }
        assert_eq!(temporaries(&dir), Vec::<String>::new());
    })
    .await
    .unwrap();

    // Pushed again: the manifest travels, nothing else does.
    let mut again = PushReport::default();
    push(&conn, &shared, &m, &PushOptions::default(), &mut again)
        .await
        .unwrap();
    assert!(again.committed);
    assert_eq!((again.chunks_needed, again.chunks_sent), (0, 0));
    rx.events.recv().await.unwrap().result.unwrap();
    assert_eq!(temporaries(&rx_dir), Vec::<String>::new());
}
