//! Package transfers between two libraries over real QUIC on loopback.

mod common;

use common::*;
use freight_core::materialize::materialize;
use freight_core::{PackageId, Progress};
use freight_transport::quic::Node;
use freight_transport::session::{PushOptions, PushReport, push};
use freight_transport::store::SharedLibrary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_byte_identical_and_resends_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    let src = t.path().join("src");
    let m1 = ingest_tree(&t.path().join("cas-lib"), &src, "CAS00001", 1, 24 << 20, 7);
    let mut rx = receiving(&ps1, &t.path().join("ps1-lib"), fast_config());
    let addr = rx.node.local_addr().unwrap();

    let node = Node::bind("127.0.0.1:0".parse().unwrap(), cas.tls(), fast_config()).unwrap();
    let lib = SharedLibrary::new(library(&t.path().join("cas-lib")));
    let conn = node.connect(addr, code("PS1")).await.unwrap();
    assert_eq!(conn.peer(), ps1.key.identity());

    let mut first = PushReport::default();
    push(&conn, &lib, &m1, &PushOptions::default(), &mut first)
        .await
        .unwrap();
    let stored: u64 = {
        let l = lib.read();
        m1.chunks()
            .keys()
            .map(|id| l.locate(id).unwrap().clen as u64)
            .sum()
    };
    assert!(first.committed);
    assert_eq!(first.chunks_needed, m1.chunks().len() as u64);
    assert_eq!(first.bytes_needed, stored);
    assert_eq!(first.bytes_sent, stored, "every stored byte once");
    let ev = rx.events.recv().await.unwrap();
    assert!(ev.result.is_ok(), "{:?}", ev.result);
    assert_eq!(ev.peer, code("CAS"));

    // The same version again: the receiver lacks nothing, nothing is sent.
    let mut again = PushReport::default();
    push(&conn, &lib, &m1, &PushOptions::default(), &mut again)
        .await
        .unwrap();
    assert_eq!((again.chunks_needed, again.bytes_sent), (0, 0));

    // Version 2 changes one file: only its new chunks travel.
    let changed = std::fs::read_dir(src.join("small"))
        .ok()
        .and_then(|mut d| d.next())
        .map(|e| e.unwrap().path());
    let victim = changed.unwrap_or_else(|| walk_files(&src).into_iter().next().expect("a file"));
    std::fs::write(&victim, b"version two of this file").unwrap();
    let m2 = {
        let src = src.clone();
        lib.exclusive(move |l| ingest_into(l, &src, "CAS00001", 2))
            .await
            .unwrap()
    };
    let mut delta = PushReport::default();
    push(&conn, &lib, &m2, &PushOptions::default(), &mut delta)
        .await
        .unwrap();
    let new_chunks = m2
        .chunks()
        .keys()
        .filter(|id| !m1.chunks().contains_key(id))
        .count() as u64;
    assert_eq!(delta.chunks_needed, new_chunks);
    assert!(
        delta.chunks_needed >= 1 && delta.chunks_needed <= 2,
        "{delta:?}"
    );

    conn.close("done");
    // Materialise version 2 at the receiver and compare with the source tree.
    let recv = rx.lib.clone();
    tokio::task::spawn_blocking(move || {
        let recv = recv.read();
        let m = recv
            .manifest(&PackageId::parse("CAS00001").unwrap(), 2)
            .unwrap();
        assert_eq!(m, m2);
        let out = t.path().join("out");
        materialize(&recv, &m, &out, &Progress::default()).unwrap();
        assert_eq!(
            freight_test_support::tree::difference(&src, &out).unwrap(),
            None
        );
    })
    .await
    .unwrap();
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(walk_files(&e.path()));
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// The full-size case: the 2 GiB mixed dataset (thousands of small files, text,
/// binary-like, already-compressed and two large files) through QUIC into an empty library,
/// materialised and compared byte for byte, with modes, mtimes and symlinks. The trees and
/// libraries (about 7 GiB at the peak) live on a RAM-backed tmpfs, so the test does not depend on
/// how much disk the machine has free; the sender's library goes once pushed.
///
/// Heavy tier: needs root for a 10 GiB RAM tmpfs and runs over 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_two_gib_mixed_dataset_is_byte_identical_after_materialise() {
    let t = tempfile::tempdir().unwrap();
    let ram = freight_test_support::tmpfs::Tmpfs::mount(&t.path().join("ram"), 10 << 30);
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    let (src, cas_lib) = (ram.0.join("src"), ram.0.join("cas-lib"));
    let m = tokio::task::spawn_blocking({
        let (lib, src) = (cas_lib.clone(), src.clone());
        move || ingest_tree(&lib, &src, "CAS00002", 1, 2 << 30, 1)
    })
    .await
    .unwrap();
    let rx = receiving(&ps1, &ram.0.join("ps1-lib"), fast_config());
    let lib = SharedLibrary::new(library(&cas_lib));
    let (_node, conn) = connect(&cas, &rx, "PS1").await;
    let mut report = PushReport::default();
    push(&conn, &lib, &m, &PushOptions::default(), &mut report)
        .await
        .unwrap();
    assert_eq!(report.bytes_sent, report.bytes_needed);
    drop(lib);
    std::fs::remove_dir_all(&cas_lib).unwrap();
    let recv = rx.lib.clone();
    tokio::task::spawn_blocking(move || {
        let recv = recv.read();
        let got = recv.manifest(&m.package, 1).unwrap();
        assert_eq!(got, m);
        assert!(got.total_bytes() >= 2 << 30);
        let out = ram.0.join("out");
        materialize(&recv, &got, &out, &Progress::default()).unwrap();
        assert_eq!(
            freight_test_support::tree::difference(&src, &out).unwrap(),
            None
        );
    })
    .await
    .unwrap();
}
