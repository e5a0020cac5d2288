//! Transfers through a lossy, reordering link and across cuts: every package completes and
//! verifies, and each resumed session re-sends at most the in-flight window.

mod common;

use common::*;
use freight_core::verify::verify_manifests;
use freight_core::{Manifest, Progress};
use freight_test_support::netem::{Impairment, UdpProxy};
use freight_transport::quic::{Node, NodeConfig};
use freight_transport::session::{
    PushOptions, PushReport, Resume, in_flight_window, push_resuming,
};
use freight_transport::store::SharedLibrary;
use rand::{RngExt, SeedableRng};
use std::sync::Arc;
use std::time::Duration;

/// Small windows so that a package of a few dozen MiB is many windows long.
fn tight() -> NodeConfig {
    NodeConfig {
        stream_window: 512 << 10,
        connection_window: 2 << 20,
        send_window: 2 << 20,
        data_streams: 3,
        idle_timeout: Duration::from_millis(700),
        keep_alive: Duration::from_millis(150),
        ..NodeConfig::default()
    }
}
const COMMIT: u64 = 2 << 20;

struct Setup {
    t: tempfile::TempDir,
    cas: Site,
    ps1: Site,
    m: Manifest,
}

fn setup(bytes: u64, seed: u64) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    let src = t.path().join("src");
    freight_test_support::dataset::generate(
        &src,
        &freight_test_support::dataset::DatasetSpec::mixed(bytes, seed),
    )
    .unwrap();
    let m = ingest_into(
        &mut small_chunk_library(&t.path().join("cas-lib")),
        &src,
        "CAS00001",
        1,
    );
    Setup { t, cas, ps1, m }
}

/// The receiver holds the package, and every chunk of it re-hashes to its ID.
fn assert_complete(lib: &SharedLibrary, m: &Manifest) {
    let l = lib.read();
    assert_eq!(&l.manifest(&m.package, m.version).unwrap(), m);
    let report = verify_manifests(&l, std::slice::from_ref(m), &Progress::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_percent_loss_with_delay_and_reordering_still_completes() {
    let s = setup(8 << 20, 11);
    // Ethernet-size datagrams, as on a WAN: many packets, so 1% of them is many losses.
    let wan = NodeConfig {
        max_udp_payload: 1452,
        ..NodeConfig::default()
    };
    let rx = receiving_with(
        &s.ps1,
        SharedLibrary::with_commit_bytes(small_chunk_library(&s.t.path().join("ps1-lib")), COMMIT),
        wan.clone(),
    );
    let proxy = UdpProxy::start(
        rx.node.local_addr().unwrap(),
        Impairment {
            loss: 0.01,
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(1),
            reorder: 0.01,
            seed: 42,
        },
    )
    .unwrap();
    let node = Node::bind("127.0.0.1:0".parse().unwrap(), s.cas.tls(), wan).unwrap();
    let lib = SharedLibrary::new(small_chunk_library(&s.t.path().join("cas-lib")));
    let (reports, res) = push_resuming(
        &node,
        proxy.addr(),
        code("PS1"),
        &lib,
        &s.m,
        &PushOptions::default(),
        &Resume::default(),
    )
    .await;
    res.unwrap();
    let stats = proxy.stats();
    assert!(
        stats.to_upstream.dropped_loss > 15 && stats.to_client.dropped_loss > 0,
        "{stats:?}"
    );
    assert!(stats.to_upstream.reordered > 0, "{stats:?}");
    assert_eq!(
        reports.len(),
        1,
        "loss alone does not break the session: {reports:?}"
    );
    assert_complete(&rx.lib, &s.m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_cuts_resume_and_resend_at_most_the_in_flight_window() {
    let seed = freight_test_support::replay_seed("FREIGHT_CUT_SEED");
    let s = setup(48 << 20, 12);
    let rx = receiving_with(
        &s.ps1,
        SharedLibrary::with_commit_bytes(small_chunk_library(&s.t.path().join("ps1-lib")), COMMIT),
        tight(),
    );
    let proxy =
        Arc::new(UdpProxy::start(rx.node.local_addr().unwrap(), Impairment::default()).unwrap());
    let node = Node::bind("127.0.0.1:0".parse().unwrap(), s.cas.tls(), tight()).unwrap();
    let lib = SharedLibrary::new(small_chunk_library(&s.t.path().join("cas-lib")));
    let stored: u64 = {
        let l = lib.read();
        s.m.chunks()
            .keys()
            .map(|id| l.locate(id).unwrap().clen as u64)
            .sum()
    };
    // Ten cut points at random, spread over the package's bytes on the wire.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut points: Vec<u64> = (0..10)
        .map(|i| stored * (5 + i * 9) / 100 + rng.random_range(0..stored / 25))
        .collect();
    points.sort();
    // A cut drops every packet for longer than the idle timeout, so both sides give the
    // connection up; then the link comes back and the sender resumes on a new connection.
    let outage = tight().idle_timeout * 3 / 2;
    let cutter = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            let mut cuts = 0;
            let mut floor = 0;
            for p in points {
                // Each cut hits a session that is moving data.
                while proxy.stats().to_upstream.bytes < p.max(floor) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                proxy.pause();
                tokio::time::sleep(outage).await;
                proxy.resume();
                cuts += 1;
                floor = proxy.stats().to_upstream.bytes + (256 << 10);
            }
            cuts
        }
    });
    let resume = Resume {
        attempts: 30,
        delay: Duration::from_millis(50),
    };
    let (reports, res) = push_resuming(
        &node,
        proxy.addr(),
        code("PS1"),
        &lib,
        &s.m,
        &PushOptions::default(),
        &resume,
    )
    .await;
    res.unwrap();
    assert_eq!(cutter.await.unwrap(), 10);
    assert_complete(&rx.lib, &s.m);

    // Per cut: what was sent in the session minus what it delivered (the next session's Need
    // is smaller by exactly that) is what went to waste.
    let window = in_flight_window(
        &tight(),
        reports.iter().map(|r| r.max_chunk).max().unwrap(),
        COMMIT,
    );
    let sessions: Vec<&PushReport> = reports
        .iter()
        .filter(|r| r.chunks_needed > 0 || r.committed)
        .collect();
    assert!(sessions.len() >= 11, "{reports:#?}");
    let mut wasted_total = 0;
    for w in sessions.windows(2) {
        let delivered = w[0].bytes_needed - w[1].bytes_needed;
        let wasted = w[0].bytes_sent.saturating_sub(delivered);
        eprintln!(
            "session sent {} delivered {delivered} wasted {wasted} (window {window})",
            w[0].bytes_sent
        );
        assert!(
            wasted <= window,
            "re-sent {wasted} > in-flight window {window}: {reports:#?}"
        );
        wasted_total += wasted;
    }
    let last = sessions.last().unwrap();
    assert!(last.committed && last.bytes_sent == last.bytes_needed);
    let sent: u64 = reports.iter().map(|r| r.bytes_sent).sum();
    assert_eq!(sent, stored + wasted_total, "every byte accounted for");
}
