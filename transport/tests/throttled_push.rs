//! The route limiter on a real push over loopback QUIC: a limited window never runs faster than
//! its rate, a closed window sends nothing until it opens, and one limiter is shared by two
//! sessions at once. (Accuracy within ±3% on the real clock is measured by
//! `freight-bench throttle`; the week-long schedule runs on a simulated clock in
//! `throttle_sim.rs`.)

mod common;

use common::*;
use freight_core::{Manifest, Progress};
use freight_transport::quic::Node;
use freight_transport::session::{PushOptions, PushReport, push};
use freight_transport::store::SharedLibrary;
use freight_transport::{Priority, RouteLimiter, RouteThrottle, SystemClock};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Setup {
    _t: tempfile::TempDir,
    node: Node,
    rx: Receiving,
    lib: SharedLibrary,
    packages: Vec<Manifest>,
}

async fn setup(sizes: &[u64]) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    let mut lib = small_chunk_library(&t.path().join("cas-lib"));
    let mut packages = Vec::new();
    for (i, &bytes) in sizes.iter().enumerate() {
        let src = t.path().join(format!("src{i}"));
        freight_test_support::dataset::generate(
            &src,
            &freight_test_support::dataset::DatasetSpec::mixed(bytes, 30 + i as u64),
        )
        .unwrap();
        packages.push(ingest_into(&mut lib, &src, &format!("CAS0000{}", i + 1), 1));
    }
    let rx = receiving(&ps1, &t.path().join("ps1-lib"), fast_config());
    let node = Node::bind("127.0.0.1:0".parse().unwrap(), cas.tls(), fast_config()).unwrap();
    Setup {
        _t: t,
        node,
        rx,
        lib: SharedLibrary::new(lib),
        packages,
    }
}

fn limiter(text: &str) -> RouteLimiter {
    RouteLimiter::new(RouteThrottle::parse(text).unwrap(), Arc::new(SystemClock))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_window_is_never_faster_than_its_rate() {
    let s = setup(&[6 << 20]).await;
    let conn = s
        .node
        .connect(s.rx.node.local_addr().unwrap(), code("PS1"))
        .await
        .unwrap();
    let rate = 2_000_000u64;
    let opts = PushOptions {
        limiter: Some(limiter("daily 2MB/s")),
        ..PushOptions::default()
    };
    let started = Instant::now();
    let mut report = PushReport::default();
    push(&conn, &s.lib, &s.packages[0], &opts, &mut report)
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    // The limiter allows at most one small burst beyond the rate.
    let floor = (report.bytes_sent.saturating_sub(128 << 10)) as f64 / rate as f64;
    assert!(
        elapsed >= floor,
        "{} bytes in {elapsed:.3} s at {rate} B/s",
        report.bytes_sent
    );
    assert!(
        report.bytes_sent > 2 * rate / 2,
        "the package is big enough to measure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_window_holds_the_transfer_until_it_opens() {
    let s = setup(&[1 << 20]).await;
    let conn = s
        .node
        .connect(s.rx.node.local_addr().unwrap(), code("PS1"))
        .await
        .unwrap();
    // Closed for medium priority at every hour; high would pass.
    let route = limiter("daily high");
    let progress = Arc::new(Progress::default());
    let opts = PushOptions {
        limiter: Some(route.clone()),
        priority: Priority::Medium,
        progress: Some(progress.clone()),
    };
    let lib = s.lib.clone();
    let m = s.packages[0].clone();
    let task = tokio::spawn(async move {
        let mut report = PushReport::default();
        push(&conn, &lib, &m, &opts, &mut report)
            .await
            .map(|_| report)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        progress.bytes().0,
        0,
        "nothing may be sent while the window is closed"
    );
    assert!(!task.is_finished());
    route.set_throttle(RouteThrottle::parse("daily all").unwrap());
    let report = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.committed && report.bytes_sent > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_share_one_route_limit() {
    let s = setup(&[2 << 20, 2 << 20]).await;
    let route = limiter("daily 3MB/s");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for m in s.packages.clone() {
        let conn = s
            .node
            .connect(s.rx.node.local_addr().unwrap(), code("PS1"))
            .await
            .unwrap();
        let lib = s.lib.clone();
        let opts = PushOptions {
            limiter: Some(route.clone()),
            ..PushOptions::default()
        };
        tasks.push(tokio::spawn(async move {
            let mut report = PushReport::default();
            push(&conn, &lib, &m, &opts, &mut report)
                .await
                .map(|_| report)
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap().unwrap().bytes_sent;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let floor = (sent.saturating_sub(256 << 10)) as f64 / 3_000_000.0;
    assert!(
        elapsed >= floor,
        "{sent} bytes in {elapsed:.3} s, together over 3 MB/s"
    );
}
