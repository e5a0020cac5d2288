//! The library's largest chunk travels: a package whose one file is a single 64 MiB
//! incompressible chunk (stored raw) is pushed over QUIC, served to a pull DP by the same
//! push from a source, and carried by a parcel (issue 18: library and wire agree on sizes).

mod common;

use common::*;
use freight_core::manifest::MAX_CHUNK;
use freight_core::parcel;
use freight_core::{ChunkParams, EntryKind, Library, LibraryConfig, PackageId, Progress};
use freight_transport::session::{PushOptions, PushReport, push};
use freight_transport::store::SharedLibrary;
use std::path::Path;

/// A library with the largest chunks the cutter allows (16 MiB / 32 MiB / 64 MiB).
fn big_chunk_library(dir: &Path) -> Library {
    let cfg = LibraryConfig {
        chunk: ChunkParams {
            min: 16 << 20,
            avg: freight_core::chunker::MAX_AVG,
            max: 64 << 20,
        },
        ..LibraryConfig::default()
    };
    Library::init(dir, &cfg).unwrap();
    library(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_incompressible_chunk_pushes_and_travels_by_parcel() {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("big.bin"),
        // This noise has no cut point before 64 MiB (asserted below).
        freight_test_support::noise("big0", 64 << 20),
    )
    .unwrap();
    let mut lib = big_chunk_library(&t.path().join("cas-lib"));
    let m = ingest_into(&mut lib, &src, "CAS00001", 1);
    // The precondition the test is about: one chunk of the library's largest size, stored
    // raw (incompressible), larger than any other frame the wire carries.
    let big = m
        .entries
        .iter()
        .find_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => chunks.iter().map(|c| c.len).max(),
            _ => None,
        })
        .unwrap();
    assert_eq!(big, MAX_CHUNK);
    let loc = lib.locate(&m.chunks().into_keys().next().unwrap()).unwrap();
    assert_eq!(loc.clen, MAX_CHUNK, "stored raw");
    assert!(loc.clen > freight_transport::MAX_FRAME);

    // Pushed over QUIC (a pull DP's source pushes with the same code).
    let mut rx = receiving(&ps1, &t.path().join("ps1-lib"), fast_config());
    let shared = SharedLibrary::new(lib);
    let (_node, conn) = connect(&cas, &rx, "PS1").await;
    let mut report = PushReport::default();
    push(&conn, &shared, &m, &PushOptions::default(), &mut report)
        .await
        .unwrap();
    assert!(report.committed);
    assert_eq!(report.max_chunk, MAX_CHUNK as u64);
    rx.events.recv().await.unwrap().result.unwrap();
    let got = rx.lib.clone();
    let m2 = m.clone();
    tokio::task::spawn_blocking(move || {
        let got = got.read();
        assert_eq!(
            got.manifest(&PackageId::parse("CAS00001").unwrap(), 1)
                .unwrap(),
            m2
        );
    })
    .await
    .unwrap();

    // By parcel.
    let lib = shared.close().await.unwrap();
    let out = t.path().join("big.parcel");
    let stored = lib.manifest_dir().open_manifest(&m.package, 1).unwrap();
    parcel::create(&lib, &stored, None, b"instr", &out, &Progress::default()).unwrap();
    let mut dst = library(&t.path().join("dst-lib"));
    parcel::import(&mut dst, &out, |_| Ok(()), &Progress::default()).unwrap();
    assert_eq!(dst.manifest(&m.package, 1).unwrap(), m);
    let v = freight_core::verify::verify(&dst, None, &Progress::default()).unwrap();
    assert!(v.is_clean(), "{v:?}");
}
