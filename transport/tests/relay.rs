//! Relaying without waiting (issue 13 item 8) on real QUIC sessions over loopback: a middle
//! site offers a version to its child while the version is still arriving from its parent,
//! sending each chunk once it is stored and verified here; a relay whose source session dies
//! ends with an error instead of waiting for ever.

mod common;

use common::*;
use freight_core::{Manifest, PackageId};
use freight_transport::quic::{Conn, Node, NodeConfig};
use freight_transport::session::{Offer, PushOptions, PushReport, push};
use freight_transport::store::SharedLibrary;
use freight_transport::{RouteLimiter, RouteThrottle, SystemClock};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Chain {
    _t: tempfile::TempDir,
    cas: Node,
    cas_lib: SharedLibrary,
    ps1: Receiving,
    ss1: Receiving,
    m: Manifest,
}

/// CAS → PS1 → SS1, each trusting its neighbours; the CAS holds a package of `bytes` in small
/// chunks; PS1 and SS1 commit every 256 KiB, so chunks become visible as they arrive.
fn chain(bytes: u64, ps1_cfg: NodeConfig) -> Chain {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1, ss1) = (
        Site::new(t.path(), "CAS"),
        Site::new(t.path(), "PS1"),
        Site::new(t.path(), "SS1"),
    );
    for (a, b) in [(&cas, &ps1), (&ps1, &ss1)] {
        a.trusts(b);
        b.trusts(a);
    }
    let mut lib = small_chunk_library(&t.path().join("cas-lib"));
    let src = t.path().join("src");
    freight_test_support::dataset::generate(
        &src,
        &freight_test_support::dataset::DatasetSpec::mixed(bytes, 77),
    )
    .unwrap();
    let m = ingest_into(&mut lib, &src, "CAS00001", 1);
    let shared = |dir: &str| {
        SharedLibrary::with_commit_bytes(small_chunk_library(&t.path().join(dir)), 256 << 10)
    };
    let ps1 = receiving_with(&ps1, shared("ps1-lib"), ps1_cfg);
    let ss1 = receiving_with(&ss1, shared("ss1-lib"), fast_config());
    let node = Node::bind("127.0.0.1:0".parse().unwrap(), cas.tls(), fast_config()).unwrap();
    Chain {
        _t: t,
        cas: node,
        cas_lib: SharedLibrary::new(lib),
        ps1,
        ss1,
        m,
    }
}

impl Chain {
    /// The package's manifest hash (what a relay offers it by).
    fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.m.encode()).as_bytes()
    }

    /// Connections CAS → PS1 and PS1 → SS1.
    async fn links(&self) -> (Conn, Conn) {
        let up = self
            .cas
            .connect(self.ps1.node.local_addr().unwrap(), code("PS1"))
            .await
            .unwrap();
        let down = self
            .ps1
            .node
            .connect(self.ss1.node.local_addr().unwrap(), code("SS1"))
            .await
            .unwrap();
        (up, down)
    }
}

fn paced(rate: &str) -> PushOptions {
    PushOptions {
        limiter: Some(RouteLimiter::new(
            RouteThrottle::parse(&format!("daily {rate}")).unwrap(),
            Arc::new(SystemClock),
        )),
        ..PushOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middle_site_sends_chunks_on_while_they_arrive() {
    let c = chain(12 << 20, fast_config());
    let (hash, pkg) = (c.hash(), PackageId::parse("CAS00001").unwrap());
    let (up, down) = c.links().await;
    // When the first chunks become visible at SS1.
    let mut ss1_arrivals = c.ss1.lib.arrivals();
    let first_at_ss1 = tokio::spawn(async move {
        ss1_arrivals.changed().await.unwrap();
        Instant::now()
    });
    let started = Instant::now();
    // The parent's push is paced (about 3 s); the relay starts at once and waits for the
    // manifest to arrive.
    let (cas_lib, m) = (c.cas_lib.clone(), c.m.clone());
    let upstream = tokio::spawn(async move {
        let mut r = PushReport::default();
        push(&up, &cas_lib, &m, &paced("4MB/s"), &mut r)
            .await
            .unwrap();
        (Instant::now(), r)
    });
    let mut relayed = PushReport::default();
    push(
        &down,
        &c.ps1.lib,
        Offer::Relay(&pkg, 1, hash),
        &PushOptions::default(),
        &mut relayed,
    )
    .await
    .unwrap();
    let relay_done = Instant::now();
    let (up_done, up_report) = upstream.await.unwrap();
    let first = first_at_ss1.await.unwrap();
    eprintln!(
        "upstream {:.2} s ({} chunks), first chunks at SS1 after {:.2} s, relay done after {:.2} s ({} chunks)",
        (up_done - started).as_secs_f64(),
        up_report.chunks_sent,
        (first - started).as_secs_f64(),
        (relay_done - started).as_secs_f64(),
        relayed.chunks_sent
    );
    assert!(relayed.committed);
    assert_eq!(relayed.chunks_sent, up_report.chunks_sent);
    // Pipelined: SS1 stored chunks while the upstream push still had more than a second to go.
    assert!(
        first + Duration::from_secs(1) < up_done,
        "SS1's first chunks came {:?} before the upstream push ended",
        up_done.saturating_duration_since(first)
    );
    assert!(relay_done >= up_done - Duration::from_millis(500));
    // Every copy is the CAS's version.
    for (site, lib) in [("PS1", &c.ps1.lib), ("SS1", &c.ss1.lib)] {
        let (p, m) = (pkg.clone(), c.m.clone());
        let (stored, missing) = lib
            .read_async(move |l| (l.manifest(&p, 1).unwrap(), l.missing(&m)))
            .await
            .unwrap();
        assert_eq!(stored, c.m, "{site}");
        assert!(missing.is_empty(), "{site}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_source_dies_ends_with_an_error() {
    let cfg = NodeConfig {
        progress_timeout: Duration::from_secs(2),
        ..fast_config()
    };
    let c = chain(12 << 20, cfg);
    let (hash, pkg) = (c.hash(), PackageId::parse("CAS00001").unwrap());
    let (up, down) = c.links().await;
    let (cas_lib, m) = (c.cas_lib.clone(), c.m.clone());
    let upstream = tokio::spawn(async move {
        let mut r = PushReport::default();
        let _ = push(&up, &cas_lib, &m, &paced("2MB/s"), &mut r).await;
    });
    let relay = tokio::spawn(async move {
        let mut r = PushReport::default();
        let res = push(
            &down,
            &c.ps1.lib,
            Offer::Relay(&pkg, 1, hash),
            &PushOptions::default(),
            &mut r,
        )
        .await;
        (res, r, c.ps1)
    });
    // The parent dies a second into its push.
    tokio::time::sleep(Duration::from_secs(1)).await;
    upstream.abort();
    drop(c.cas);
    let cut = Instant::now();
    let (res, r, _ps1) = tokio::time::timeout(Duration::from_secs(20), relay)
        .await
        .expect("the relay ends")
        .unwrap();
    let err = res.expect_err("the relay cannot finish without its source");
    eprintln!(
        "relay ended {:.2} s after the cut with {} chunks sent: {err}",
        cut.elapsed().as_secs_f64(),
        r.chunks_sent
    );
    assert!(err.to_string().contains("did not arrive"), "{err}");
    assert!(r.chunks_sent > 0, "the relay sent what had arrived");
    assert!(!r.committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_of_a_version_nobody_sends_is_refused_after_the_wait() {
    let cfg = NodeConfig {
        progress_timeout: Duration::from_secs(1),
        ..fast_config()
    };
    let c = chain(1 << 20, cfg);
    let pkg = PackageId::parse("CAS00001").unwrap();
    let down = c
        .ps1
        .node
        .connect(c.ss1.node.local_addr().unwrap(), code("SS1"))
        .await
        .unwrap();
    let started = Instant::now();
    let mut r = PushReport::default();
    let err = push(
        &down,
        &c.ps1.lib,
        Offer::Relay(&pkg, 1, [7; 32]),
        &PushOptions::default(),
        &mut r,
    )
    .await
    .expect_err("nothing to relay");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("CAS00001"), "{err}");
    assert_eq!(r.bytes_sent, 0);
}
