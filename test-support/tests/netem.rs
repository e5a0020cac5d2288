//! Tests of the UDP impairment proxy against a UDP echo server on loopback.
//! They wait on the proxy's counters and on short read timeouts, never on
//! long sleeps.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use freight_test_support::netem::QUEUE_LIMIT;
use freight_test_support::{Impairment, ProxyStats, UdpProxy};

/// Longest any single wait in these tests may take before it fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// A thread that sends every datagram back to where it came from.
struct Echo {
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
    received: Arc<AtomicU64>,
    last_peer: Arc<Mutex<Option<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let socket = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let last_peer = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, received, last_peer, stop) = (
                Arc::clone(&socket),
                Arc::clone(&received),
                Arc::clone(&last_peer),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((len, peer)) = socket.recv_from(&mut buf) {
                        // Counted before the reply, so a client that got it sees the count.
                        *last_peer.lock().unwrap() = Some(peer);
                        received.fetch_add(1, Ordering::SeqCst);
                        socket.send_to(&buf[..len], peer).unwrap();
                    }
                }
            })
        };
        Echo {
            addr: socket.local_addr().unwrap(),
            socket,
            received,
            last_peer,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// A client socket (a new flow) connected to the proxy.
fn client(proxy: &UdpProxy) -> UdpSocket {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.connect(proxy.addr()).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket
}

/// Sends `payload` and expects it back intact.
fn ping(socket: &UdpSocket, payload: &[u8]) {
    socket.send(payload).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let len = socket.recv(&mut buf).unwrap();
    assert_eq!(
        len,
        payload.len(),
        "echo of a {}-byte datagram",
        payload.len()
    );
    assert!(
        buf[..len] == *payload,
        "echo of a {len}-byte datagram differs"
    );
}

/// Asserts that nothing arrives on `socket` within `within`.
fn assert_silent(socket: &UdpSocket, within: Duration) {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    match socket.recv(&mut buf) {
        Ok(len) => panic!("a {len}-byte datagram got through"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{e}"
        ),
    }
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
}

/// Polls the proxy's counters until `done` holds.
fn wait_for(proxy: &UdpProxy, what: &str, done: impl Fn(&ProxyStats) -> bool) -> ProxyStats {
    let start = Instant::now();
    loop {
        let stats = proxy.stats();
        if done(&stats) {
            return stats;
        }
        assert!(start.elapsed() < PATIENCE, "waiting for {what}: {stats:#?}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Datagram number `seq`: the number, then `len - 4` bytes derived from it
/// (`len` at least 4).
fn numbered(seq: u32, len: usize) -> Vec<u8> {
    let mut out = seq.to_be_bytes().to_vec();
    out.extend((4..len).map(|i| (i as u32 ^ seq.wrapping_mul(31)) as u8));
    out
}

fn seq_of(datagram: &[u8]) -> u32 {
    u32::from_be_bytes(datagram[..4].try_into().unwrap())
}

/// Sends `count` numbered datagrams with at most `window` unanswered, and
/// returns the numbers of the echoes in the order they came back.
fn exchange(socket: &UdpSocket, count: u32, window: u32, len: impl Fn(u32) -> usize) -> Vec<u32> {
    let mut buf = vec![0u8; 1 << 16];
    let mut order = Vec::new();
    let mut sent = 0;
    while (order.len() as u32) < count {
        while sent < count && sent - (order.len() as u32) < window {
            socket.send(&numbered(sent, len(sent))).unwrap();
            sent += 1;
        }
        let n = socket.recv(&mut buf).unwrap();
        let seq = seq_of(&buf[..n]);
        assert!(
            buf[..n] == numbered(seq, len(seq)),
            "datagram {seq} came back altered"
        );
        order.push(seq);
    }
    order
}

#[test]
fn forwards_every_size_intact_and_in_order() {
    let echo = Echo::start();
    let proxy = UdpProxy::start(echo.addr, Impairment::default()).unwrap();
    let socket = client(&proxy);

    // One at a time from 1 byte to the largest IPv4 UDP payload.
    let sizes = [
        1, 2, 3, 4, 100, 1199, 1200, 1472, 1500, 4096, 8192, 9000, 16_384, 32_768, 50_000, 65_000,
        65_507,
    ];
    for &size in &sizes {
        ping(
            &socket,
            &freight_test_support::noise(&format!("size {size}"), size),
        );
    }

    // A stream, which must come back in order.
    let count = 2000;
    let order = exchange(&socket, count, 32, |seq| 4 + (seq as usize * 37) % 1400);
    assert_eq!(order, (0..count).collect::<Vec<_>>());

    let datagrams = sizes.len() as u64 + u64::from(count);
    // The proxy counts a datagram just after sending it, so the last echo
    // can arrive before its count.
    let stats = wait_for(&proxy, "the last echo's count", |s| {
        s.to_client.datagrams == datagrams
    });
    let bytes = sizes.iter().sum::<usize>() as u64
        + (0..count).map(|s| 4 + (s as u64 * 37) % 1400).sum::<u64>();
    for path in [stats.to_upstream, stats.to_client] {
        assert_eq!(path.datagrams, datagrams);
        assert_eq!(path.bytes, bytes);
        assert_eq!(path.dropped(), 0);
        assert_eq!(path.reordered, 0);
    }
    assert_eq!(stats.flows, 1);
    assert_eq!(stats.queued, 0);
    assert_eq!(proxy.last_error(), None);
}

/// Sends `count` datagrams through a proxy with `loss` in batches, waiting
/// for each batch to settle, and returns the numbers that came back and the
/// proxy's counters.
fn lossy_run(loss: f64, seed: u64, count: u32) -> (Vec<u32>, ProxyStats) {
    let echo = Echo::start();
    let imp = Impairment {
        loss,
        seed,
        ..Impairment::default()
    };
    let proxy = UdpProxy::start(echo.addr, imp).unwrap();
    let socket = client(&proxy);
    let mut buf = vec![0u8; 1 << 16];
    let mut back = Vec::new();
    let mut sent = 0;
    while sent < count {
        for _ in 0..50.min(count - sent) {
            socket.send(&numbered(sent, 100)).unwrap();
            sent += 1;
        }
        let settled = wait_for(&proxy, "the batch to settle", |s| {
            s.to_upstream.datagrams + s.to_upstream.dropped_loss == u64::from(sent)
                && s.to_client.datagrams + s.to_client.dropped_loss == s.to_upstream.datagrams
        });
        // Exactly what the proxy forwarded must arrive, and nothing more.
        while (back.len() as u64) < settled.to_client.datagrams {
            let n = socket.recv(&mut buf).unwrap();
            back.push(seq_of(&buf[..n]));
        }
    }
    assert_silent(&socket, Duration::from_millis(20));
    let stats = proxy.stats();
    assert_eq!(echo.received(), stats.to_upstream.datagrams);
    assert_eq!(back.len() as u64, stats.to_client.datagrams);
    (back, stats)
}

#[test]
fn loss_drops_the_configured_fraction_deterministically() {
    let count = 5000;
    let (back, stats) = lossy_run(0.3, 7, count);
    let up = stats.to_upstream;
    let down = stats.to_client;
    assert_eq!(up.dropped_loss + up.datagrams, u64::from(count));
    let up_fraction = up.dropped_loss as f64 / f64::from(count);
    let down_fraction = down.dropped_loss as f64 / up.datagrams as f64;
    assert!(
        (up_fraction - 0.3).abs() < 0.03,
        "to upstream: {up_fraction}"
    );
    assert!(
        (down_fraction - 0.3).abs() < 0.03,
        "to client: {down_fraction}"
    );
    // Loss alone neither reorders nor duplicates.
    assert!(back.windows(2).all(|w| w[0] < w[1]), "out of order");

    // The same seed drops the same datagrams; another seed, others.
    let (again, _) = lossy_run(0.3, 7, count);
    assert_eq!(back, again);
    let (other, _) = lossy_run(0.3, 8, count);
    assert_ne!(back, other);
}

/// Round-trip time of one small datagram.
fn round_trip(socket: &UdpSocket) -> Duration {
    let start = Instant::now();
    ping(socket, b"ping");
    start.elapsed()
}

#[test]
fn delay_applies_in_both_directions() {
    let echo = Echo::start();
    let delay = Duration::from_millis(50);
    let imp = Impairment {
        delay,
        ..Impairment::default()
    };
    let proxy = UdpProxy::start(echo.addr, imp).unwrap();
    let socket = client(&proxy);
    for _ in 0..2 {
        let rtt = round_trip(&socket);
        assert!(rtt >= 2 * delay, "round trip {rtt:?} under twice {delay:?}");
        assert!(
            rtt < 2 * delay + Duration::from_millis(100),
            "round trip {rtt:?}"
        );
    }

    // Jitter: each direction's delay is within 20 ± 10 ms.
    proxy.set_impairment(Impairment {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
        seed: 3,
        ..Impairment::default()
    });
    for _ in 0..3 {
        let rtt = round_trip(&socket);
        assert!(rtt >= Duration::from_millis(20), "round trip {rtt:?}");
        assert!(rtt < Duration::from_millis(60 + 100), "round trip {rtt:?}");
    }

    // And live back to none.
    proxy.set_impairment(Impairment::default());
    let rtt = round_trip(&socket);
    assert!(rtt < Duration::from_millis(40), "round trip {rtt:?}");
}

#[test]
fn reorder_shuffles_without_loss_or_duplicates() {
    let echo = Echo::start();
    let imp = Impairment {
        reorder: 0.2,
        seed: 11,
        ..Impairment::default()
    };
    let proxy = UdpProxy::start(echo.addr, imp).unwrap();
    let socket = client(&proxy);
    let count = 1000;
    let order = exchange(&socket, count, 16, |_| 64);

    let distinct: HashSet<u32> = order.iter().copied().collect();
    assert_eq!(distinct.len(), order.len(), "duplicates");
    assert_eq!(distinct, (0..count).collect());
    let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 0, "nothing was reordered");
    assert_silent(&socket, Duration::from_millis(30));

    let stats = wait_for(&proxy, "the last echo's count", |s| {
        s.to_client.datagrams == u64::from(count)
    });
    assert!(stats.to_upstream.reordered > 0 && stats.to_client.reordered > 0);
    for path in [stats.to_upstream, stats.to_client] {
        assert_eq!(path.datagrams, u64::from(count));
        assert_eq!(path.dropped(), 0);
    }
    assert_eq!(stats.queued, 0);
}

#[test]
fn cut_blackholes_existing_flows_and_lets_new_ones_through() {
    let echo = Echo::start();
    let proxy = UdpProxy::start(echo.addr, Impairment::default()).unwrap();
    let old = client(&proxy);
    ping(&old, b"before");
    let flow = echo
        .last_peer
        .lock()
        .unwrap()
        .expect("the echo saw the flow");

    // One datagram in the delay queue when the cut comes, one after it.
    proxy.set_impairment(Impairment {
        delay: Duration::from_millis(30),
        ..Impairment::default()
    });
    old.send(b"in flight").unwrap();
    proxy.cut();
    old.send(b"after").unwrap();
    wait_for(&proxy, "two datagrams cut towards the upstream", |s| {
        s.to_upstream.dropped_cut == 2
    });
    assert_eq!(echo.received(), 1);

    // The upstream's side of the old flow is cut too.
    echo.socket.send_to(b"late reply", flow).unwrap();
    wait_for(&proxy, "a datagram cut towards the client", |s| {
        s.to_client.dropped_cut == 1
    });
    assert_silent(&old, Duration::from_millis(20));

    // A new socket is a new flow, which passes; the old one stays cut.
    let new = client(&proxy);
    ping(&new, b"reconnected");
    old.send(b"still there?").unwrap();
    let stats = wait_for(&proxy, "the old flow to stay cut", |s| {
        s.to_upstream.dropped_cut == 3
    });
    assert_silent(&old, Duration::from_millis(20));
    assert_eq!(stats.flows, 2);
    assert_eq!(echo.received(), 2);
}

#[test]
fn pause_drops_everything_until_resume() {
    let echo = Echo::start();
    let proxy = UdpProxy::start(echo.addr, Impairment::default()).unwrap();
    let socket = client(&proxy);
    ping(&socket, b"before");
    proxy.pause();
    socket.send(b"paused").unwrap();
    wait_for(&proxy, "a paused drop", |s| {
        s.to_upstream.dropped_paused == 1
    });
    assert_silent(&socket, Duration::from_millis(20));
    proxy.resume();
    ping(&socket, b"resumed");
    assert_eq!(echo.received(), 2);
}

#[test]
fn set_upstream_sends_new_flows_to_the_new_upstream() {
    let first = Echo::start();
    let second = Echo::start();
    let proxy = UdpProxy::start(first.addr, Impairment::default()).unwrap();
    let early = client(&proxy);
    ping(&early, b"one");
    proxy.set_upstream(second.addr);
    assert_eq!(proxy.upstream(), second.addr);

    // The existing flow keeps its upstream; a new one goes to the new one.
    ping(&early, b"two");
    let late = client(&proxy);
    ping(&late, b"three");
    assert_eq!(first.received(), 2);
    assert_eq!(second.received(), 1);
}

#[test]
fn overflow_drops_instead_of_growing() {
    let echo = Echo::start();
    let imp = Impairment {
        delay: Duration::from_secs(60),
        ..Impairment::default()
    };
    let proxy = UdpProxy::start(echo.addr, imp).unwrap();
    let socket = client(&proxy);
    let size = 65_000;
    let count = QUEUE_LIMIT / size + 50;
    let mut sent = 0;
    while sent < count {
        // Batches the proxy's socket buffer holds, so that the kernel drops nothing.
        for _ in 0..16.min(count - sent) {
            socket.send(&numbered(sent as u32, size)).unwrap();
            sent += 1;
        }
        wait_for(&proxy, "the batch to be queued or dropped", |s| {
            s.queued + s.to_upstream.dropped_overflow == sent as u64
        });
    }
    let stats = proxy.stats();
    assert_eq!(stats.queued_bytes, stats.queued * size as u64);
    assert!(stats.queued_bytes <= QUEUE_LIMIT as u64);
    assert_eq!(stats.to_upstream.dropped_overflow, 50);
    assert_eq!(echo.received(), 0);
}

#[test]
fn drop_stops_the_threads_promptly() {
    let echo = Echo::start();
    let imp = Impairment {
        delay: Duration::from_secs(60),
        reorder: 0.5,
        ..Impairment::default()
    };
    let proxy = UdpProxy::start(echo.addr, imp).unwrap();
    let socket = client(&proxy);
    for seq in 0..20 {
        socket.send(&numbered(seq, 100)).unwrap();
    }
    wait_for(&proxy, "the datagrams to be queued", |s| s.queued == 20);

    let start = Instant::now();
    drop(proxy);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(500), "dropping took {took:?}");

    // Every thread held the proxy's socket: it is closed only once all have
    // ended, and then the kernel refuses datagrams to its port.
    socket.send(b"anyone?").unwrap();
    let mut buf = [0u8; 16];
    let err = socket.recv(&mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(echo.received(), 0);
}
