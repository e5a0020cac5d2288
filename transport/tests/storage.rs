//! The shared library under transfers and maintenance at once: chunks received before their
//! manifest survive collection (leases), one session's store failure reaches only that
//! session, reads never park an async worker behind maintenance, a transfer with a small
//! commit interval completes while the receiver ingests, removes and collects other packages
//! in a loop, and a sender whose packs are collected mid-session completes.

mod common;

use common::*;
use freight_core::verify::verify_manifests;
use freight_core::{ChunkId, Library, LibraryConfig, Manifest, PackageId, Progress};
use freight_transport::quic::Node;
use freight_transport::session::{PushOptions, PushReport, push};
use freight_transport::store::{ReceivedManifest, SharedLibrary};
use freight_transport::{RouteLimiter, RouteThrottle, SystemClock};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn pid(s: &str) -> PackageId {
    PackageId::parse(s).unwrap()
}

/// Small chunks in 1 MiB packs, so a few MiB make many chunks and packs.
fn small_lib(dir: &Path) -> Library {
    if !dir.join("library.toml").exists() {
        let cfg = LibraryConfig {
            pack_size: 1 << 20,
            chunk: freight_core::ChunkParams {
                min: 16 << 10,
                avg: 64 << 10,
                max: 256 << 10,
            },
            ..LibraryConfig::default()
        };
        Library::init(dir, &cfg).unwrap();
    }
    library(dir)
}

/// A tree of `n` files of noise (incompressible, so stored bytes are the sizes).
fn tree(dir: &Path, tag: &str, n: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(
            dir.join(format!("f{i:03}.bin")),
            noise(&format!("{tag}{i}"), size),
        )
        .unwrap();
    }
}

use freight_test_support::noise;

/// Each chunk of `m` in its stored form, as a sender would send it.
fn stored_chunks(lib: &Library, m: &Manifest) -> Vec<(ChunkId, u32, u8, Vec<u8>)> {
    m.chunks()
        .into_keys()
        .map(|id| {
            let loc = lib.locate(&id).unwrap();
            let data = lib.read_checked(&id, &loc).unwrap().wait().unwrap();
            (id, loc.ulen, loc.flags, data)
        })
        .collect()
}

/// `m` as a receiving session holds it: its bytes in a file of the library's `pending/`.
fn received(lib_dir: &std::path::Path, m: &Manifest) -> ReceivedManifest {
    let dir = lib_dir.join("pending");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(".recv-test-{}.tmp", m.package));
    std::fs::write(&file, m.encode()).unwrap();
    ReceivedManifest {
        file,
        hash: m.hash(),
        package: m.package.clone(),
        version: m.version,
        chunks: std::sync::Arc::new(freight_core::ChunkTable::of(m).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeps_received_chunks_through_collection_until_the_manifest_commits() {
    let t = tempfile::tempdir().unwrap();
    let mut src_lib = small_lib(&t.path().join("src-lib"));
    tree(&t.path().join("a"), "a", 8, 200_000);
    tree(&t.path().join("b"), "b", 4, 200_000);
    let ma = ingest_into(&mut src_lib, &t.path().join("a"), "CAS00001", 1);
    let mb = ingest_into(&mut src_lib, &t.path().join("b"), "CAS00002", 1);
    let chunks_a = stored_chunks(&src_lib, &ma);
    let chunks_b = stored_chunks(&src_lib, &mb);
    let lib = SharedLibrary::with_commit_bytes(small_lib(&t.path().join("rx")), 64 << 10);
    let ra = received(&t.path().join("rx"), &ma);

    // Half of A arrives and is committed; then the receiver collects garbage.
    assert_eq!(lacking_count(&lib, &ra).await, chunks_a.len());
    let half = chunks_a.len() / 2;
    for (id, ulen, flags, data) in chunks_a[..half].iter().cloned() {
        lib.append(id, ulen, flags, data).await.unwrap();
    }
    lib.flush().await.unwrap();
    let r = lib
        .exclusive(|l| freight_core::gc::gc(l, &Progress::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.chunks_removed, 0, "{r:?}");
    assert_eq!(r.chunks_leased, half as u64, "{r:?}");
    assert_eq!(
        lacking_count(&lib, &ra).await,
        chunks_a.len() - half,
        "collection took received chunks"
    );
    for (id, ulen, flags, data) in chunks_a[half..].iter().cloned() {
        lib.append(id, ulen, flags, data).await.unwrap();
    }
    assert!(lib.commit_manifest(&ra).await.unwrap());
    let pending = t.path().join("rx/pending");
    assert_eq!(
        std::fs::read_dir(&pending).unwrap().count(),
        0,
        "the lease outlived its commit, or the received file was not moved into place"
    );

    // An abandoned transfer's lease expires: then its chunks are garbage like any other. The
    // session's own file is gone (its session ended); the lease, a second name, holds.
    let rb = received(&t.path().join("rx"), &mb);
    lib.lacking(&rb).await.unwrap();
    std::fs::remove_file(&rb.file).unwrap();
    for (id, ulen, flags, data) in chunks_b.iter().cloned() {
        lib.append(id, ulen, flags, data).await.unwrap();
    }
    lib.flush().await.unwrap();
    let r = lib
        .exclusive(|l| {
            l.set_lease_timeout(Duration::ZERO);
            freight_core::gc::gc(l, &Progress::default())
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.chunks_removed, chunks_b.len() as u64, "{r:?}");
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 0);
    // A's version is intact.
    let l = lib.read_async(move |l| l.missing(&ma)).await.unwrap();
    assert!(l.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_reported_only_to_the_session_whose_chunks_it_lost() {
    let t = tempfile::tempdir().unwrap();
    let mut src_lib = small_lib(&t.path().join("src-lib"));
    tree(&t.path().join("a"), "a", 3, 100_000);
    tree(&t.path().join("b"), "b", 3, 100_000);
    let ma = ingest_into(&mut src_lib, &t.path().join("a"), "CAS00001", 1);
    let mb = ingest_into(&mut src_lib, &t.path().join("b"), "CAS00002", 1);
    let chunks_a = stored_chunks(&src_lib, &ma);
    let chunks_b = stored_chunks(&src_lib, &mb);
    let lib = SharedLibrary::with_commit_bytes(small_lib(&t.path().join("rx")), 64 << 20);
    let (ra, rb) = (
        received(&t.path().join("rx"), &ma),
        received(&t.path().join("rx"), &mb),
    );

    // Session B stores its chunks.
    lib.lacking(&rb).await.unwrap();
    for (id, ulen, flags, data) in chunks_b.iter().cloned() {
        lib.append(id, ulen, flags, data).await.unwrap();
    }
    lib.flush().await.unwrap();
    // Session A's batch fails (a chunk the writer refuses stands for a full disk).
    lib.lacking(&ra).await.unwrap();
    let (id, _, flags, data) = chunks_a[0].clone();
    lib.append(id, 0, flags, data).await.unwrap();
    // B, which lost nothing, commits; A is told why its chunk is missing.
    assert!(lib.commit_manifest(&rb).await.unwrap());
    let err = lib.commit_manifest(&ra).await.unwrap_err().to_string();
    assert!(
        err.contains("CAS00001 v1") && err.contains("could not be stored"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    // A runs again: it is asked for what it lost, and commits.
    assert_eq!(lacking_count(&lib, &ra).await, chunks_a.len());
    for (id, ulen, flags, data) in chunks_a.iter().cloned() {
        lib.append(id, ulen, flags, data).await.unwrap();
    }
    assert!(lib.commit_manifest(&ra).await.unwrap());
}

/// Reads a sender makes (its read view, a read on the blocking pool) never park the async
/// worker while maintenance holds the library: a ticker on the same single-threaded runtime
/// keeps ticking.
#[tokio::test(flavor = "current_thread")]
async fn reads_never_wait_for_maintenance_on_an_async_worker() {
    let t = tempfile::tempdir().unwrap();
    let mut l = small_lib(&t.path().join("lib"));
    tree(&t.path().join("a"), "a", 2, 100_000);
    let m = ingest_into(&mut l, &t.path().join("a"), "CAS00001", 1);
    let lib = SharedLibrary::new(l);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let maintenance = tokio::spawn({
        let lib = lib.clone();
        async move {
            lib.exclusive(move |_| {
                started_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(1200));
            })
            .await
        }
    });
    // Wait (without blocking the runtime for long) until maintenance holds the library.
    while started_rx.try_recv().is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ticker = tokio::spawn(async {
        let mut worst = Duration::ZERO;
        let mut last = Instant::now();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            worst = worst.max(last.elapsed());
            last = Instant::now();
        }
        worst
    });
    let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
    let view = lib
        .read_view(ids.clone(), m.package.clone(), m.version)
        .await
        .unwrap();
    assert_eq!(view.chunks().len(), ids.len());
    let n = lib.read_async(|l| l.chunk_count()).await.unwrap();
    assert!(n > 0);
    maintenance.await.unwrap().unwrap();
    let worst = ticker.await.unwrap();
    assert!(
        worst < Duration::from_millis(400),
        "the runtime stalled for {worst:?}"
    );
}

fn limiter(text: &str) -> RouteLimiter {
    RouteLimiter::new(RouteThrottle::parse(text).unwrap(), Arc::new(SystemClock))
}

fn assert_complete(lib: &Library, m: &Manifest) {
    assert_eq!(&lib.manifest(&m.package, m.version).unwrap(), m);
    let report = verify_manifests(lib, std::slice::from_ref(m), &Progress::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// The receiver commits every 256 KiB and, all through the transfer, ingests other packages,
/// removes older ones and collects garbage: the transfer completes and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_completes_while_the_receiver_ingests_removes_and_collects_in_a_loop() {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    let mut src_lib = small_lib(&t.path().join("cas-lib"));
    tree(&t.path().join("big"), "big", 24, 400_000);
    let m = ingest_into(&mut src_lib, &t.path().join("big"), "CAS00001", 1);
    let rx_lib = SharedLibrary::with_commit_bytes(small_lib(&t.path().join("ps1-lib")), 256 << 10);
    let rx = receiving_with(&ps1, rx_lib.clone(), fast_config());
    let node = Node::bind("127.0.0.1:0".parse().unwrap(), cas.tls(), fast_config()).unwrap();
    let conn = node
        .connect(rx.node.local_addr().unwrap(), code("PS1"))
        .await
        .unwrap();
    let sender = SharedLibrary::new(src_lib);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The receiver's own churn: other packages come and go, and every round collects.
    let churn = tokio::spawn({
        let (lib, done, root) = (rx_lib.clone(), done.clone(), t.path().to_path_buf());
        async move {
            let mut rounds = 0u32;
            let mut freed = 0u64;
            while !done.load(Ordering::Relaxed) || rounds < 3 {
                rounds += 1;
                let src = root.join(format!("other{rounds}"));
                tree(&src, &format!("o{rounds}"), 2, 150_000);
                let r = lib
                    .exclusive(move |l| {
                        let v = rounds;
                        freight_test_support::ingest_version(l, &src, "PS100002", v).unwrap();
                        if v > 1 {
                            l.remove_version(&pid("PS100002"), v - 1).unwrap();
                        }
                        freight_core::gc::gc(l, &Progress::default()).unwrap()
                    })
                    .await
                    .unwrap();
                freed += r.chunks_removed;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (rounds, freed)
        }
    });
    let opts = PushOptions {
        limiter: Some(limiter("daily 4MB/s")),
        ..PushOptions::default()
    };
    let mut report = PushReport::default();
    let res = push(&conn, &sender, &m, &opts, &mut report).await;
    done.store(true, Ordering::Relaxed);
    let (rounds, freed) = churn.await.unwrap();
    res.unwrap();
    assert!(
        rounds >= 5,
        "only {rounds} rounds of churn during the transfer"
    );
    assert!(freed > 0, "the churn never collected anything");
    assert_complete(&rx_lib.read(), &m);
}

/// The sender's packs are compacted and deleted while it sends: it completes from the packs
/// it holds open, and every chunk arrives intact (the receiver re-hashes each one, and every
/// sender read checks the record it finds names the chunk asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_packs_are_collected_mid_session_completes() {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    let mut src_lib = small_lib(&t.path().join("cas-lib"));
    // v1 interleaves the files v2 keeps with files it drops, so once v1 is removed every
    // pack holding v2 has garbage and a collection rewrites all of them.
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..48 {
        std::fs::write(
            src.join(format!("f{i:03}.bin")),
            noise(&format!("s{i}"), 300_000),
        )
        .unwrap();
    }
    ingest_into(&mut src_lib, &src, "CAS00001", 1);
    for i in (1..48).step_by(2) {
        std::fs::remove_file(src.join(format!("f{i:03}.bin"))).unwrap();
    }
    let m = ingest_into(&mut src_lib, &src, "CAS00001", 2);
    src_lib.remove_version(&pid("CAS00001"), 1).unwrap();
    let before: Vec<u32> = src_lib.packs().keys().copied().collect();
    let rx = receiving(&ps1, &t.path().join("ps1-lib"), fast_config());
    let node = Node::bind("127.0.0.1:0".parse().unwrap(), cas.tls(), fast_config()).unwrap();
    let conn = node
        .connect(rx.node.local_addr().unwrap(), code("PS1"))
        .await
        .unwrap();
    let sender = SharedLibrary::new(src_lib);
    let progress = Arc::new(Progress::default());
    let opts = PushOptions {
        limiter: Some(limiter("daily 3MB/s")),
        progress: Some(progress.clone()),
        ..PushOptions::default()
    };
    let collector = tokio::spawn({
        let (lib, progress) = (sender.clone(), progress.clone());
        async move {
            // Once a fifth of the package is on its way, collect.
            loop {
                let (done, total) = progress.bytes();
                if total > 0 && done * 5 >= total {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let at = progress.bytes().0;
            let r = lib
                .exclusive(|l| freight_core::gc::gc(l, &Progress::default()))
                .await
                .unwrap()
                .unwrap();
            (r, at)
        }
    });
    let mut report = PushReport::default();
    push(&conn, &sender, &m, &opts, &mut report).await.unwrap();
    let (gc, at) = collector.await.unwrap();
    let (done, total) = progress.bytes();
    assert!(done >= total, "{done} of {total}");
    assert!(
        at < total / 2,
        "collected only after {at} of {total} bytes were sent"
    );
    assert!(gc.packs_compacted + gc.packs_deleted > 0, "{gc:?}");
    let after: Vec<u32> = sender
        .read_async(|l| l.packs().keys().copied().collect())
        .await
        .unwrap();
    assert!(
        before.iter().all(|n| !after.contains(n)),
        "every pack the session started with was collected: before {before:?}, after {after:?}"
    );
    assert_complete(&rx.lib.read(), &m);
}

/// What a peer's abandoned transfers leave on the receiver's disk is bounded by its quota:
/// transfers that commit free their share at once (so transfers one after the other never add
/// up), a single transfer larger than the quota is never limited by it, but once a cut
/// transfer holds more than the quota the peer's other transfers are aborted with one line
/// naming the peer and the quota, until it resumes and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_unfinished_transfers_stay_within_its_disk_quota() {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    let mut src_lib = small_lib(&t.path().join("cas-lib"));
    // Incompressible, so stored bytes are the file sizes: 3 MiB, and 3 × 600 KB.
    tree(&t.path().join("big"), "big", 12, 256 << 10);
    let big = ingest_into(&mut src_lib, &t.path().join("big"), "CAS00001", 1);
    let smalls: Vec<Manifest> = (0..3)
        .map(|i| {
            let dir = t.path().join(format!("small{i}"));
            tree(&dir, &format!("s{i}"), 3, 200_000);
            ingest_into(&mut src_lib, &dir, &format!("CAS0000{}", i + 2), 1)
        })
        .collect();
    let quota = 1 << 20;
    let cfg = freight_transport::quic::NodeConfig {
        unfinished_per_peer: quota,
        ..fast_config()
    };
    let rx_lib = SharedLibrary::new(small_lib(&t.path().join("ps1-lib")));
    let rx = receiving_with(&ps1, rx_lib.clone(), cfg);
    let node = Node::bind("127.0.0.1:0".parse().unwrap(), cas.tls(), fast_config()).unwrap();
    let conn = node
        .connect(rx.node.local_addr().unwrap(), code("PS1"))
        .await
        .unwrap();
    let sender = SharedLibrary::new(src_lib);
    let opts = PushOptions::default();
    let limits = rx.node.limits().clone();

    // Two packages of 600 KB, one after the other: more than the quota in all.
    for m in &smalls[..2] {
        let mut report = PushReport::default();
        push(&conn, &sender, m, &opts, &mut report).await.unwrap();
        assert_complete(&rx_lib.read(), m);
    }
    assert_eq!(limits.unfinished_bytes(code("CAS")), 0);

    // The 3 MiB package at 1 MB/s, cut after 2 s: about 2 MB of it stay, unfinished.
    let cut = node
        .connect(rx.node.local_addr().unwrap(), code("PS1"))
        .await
        .unwrap();
    let slow = PushOptions {
        limiter: Some(limiter("daily 1MB/s")),
        ..PushOptions::default()
    };
    let mut report = PushReport::default();
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        push(&cut, &sender, &big, &slow, &mut report),
    )
    .await;
    assert!(r.is_err(), "the slow push ended before the cut");
    cut.close("cut");
    let mut rx = rx;
    // The receiver reported the two committed sessions, then the cut one.
    loop {
        let ended = tokio::time::timeout(Duration::from_secs(10), rx.events.recv())
            .await
            .unwrap()
            .unwrap();
        if ended.package.as_ref().map(|p| &p.0) == Some(&big.package) {
            assert!(ended.result.is_err());
            break;
        }
        ended.result.unwrap();
    }
    let held = limits.unfinished_bytes(code("CAS"));
    assert!(held > quota, "the cut transfer holds only {held} bytes");

    // Another transfer of the peer is refused while the cut one holds more than the quota.
    let mut report = PushReport::default();
    let err = push(&conn, &sender, &smalls[2], &opts, &mut report)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("site CAS holds") && err.contains(&format!("quota of {quota}")),
        "{err}"
    );
    let s2 = smalls[2].clone();
    assert!(
        !rx_lib
            .read_async(move |l| l.missing(&s2))
            .await
            .unwrap()
            .is_empty()
    );

    // The cut transfer itself resumes past the quota and commits, which frees its bytes; then
    // the refused one goes through.
    let mut report = PushReport::default();
    push(&conn, &sender, &big, &opts, &mut report)
        .await
        .unwrap();
    assert_complete(&rx_lib.read(), &big);
    assert_eq!(limits.unfinished_bytes(code("CAS")), 0);
    let mut report = PushReport::default();
    push(&conn, &sender, &smalls[2], &opts, &mut report)
        .await
        .unwrap();
    assert_complete(&rx_lib.read(), &smalls[2]);
}

/// How many chunks of `m` the library lacks (positions set in its lacking mask).
async fn lacking_count(lib: &SharedLibrary, m: &ReceivedManifest) -> usize {
    lib.lacking(m).await.unwrap().iter().filter(|&&b| b).count()
}
