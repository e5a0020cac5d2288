//! A userspace UDP impairment proxy for tests and benchmarks ([`UdpProxy`]).
//!
//! It sits between a UDP (QUIC) client and server on loopback and delays,
//! drops, reorders and cuts datagrams as an [`Impairment`] says, because
//! `tc netem` is not available on every machine.
//!
//! Each client address gets its own upstream socket (a *flow*), like a NAT,
//! so a client that reconnects from a new socket is a new flow: that is how
//! [`UdpProxy::cut`] black-holes the existing connections while letting a
//! reconnection through.
//!
//! Threads: one receives from the clients, one per flow receives from the
//! upstream, and one releases delayed and held-back datagrams from a queue
//! ordered by release time. Every blocking call returns within a few tens
//! of milliseconds or is woken through a condition variable, so dropping
//! the proxy stops and joins them promptly.

use std::cmp::{Ordering, Reverse};
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};

/// Bytes of datagrams the proxy keeps for delay or reordering at most. A
/// datagram that would go beyond is dropped (counted in
/// [`PathStats::dropped_overflow`]) rather than let memory grow without bound.
pub const QUEUE_LIMIT: usize = 64 << 20;

/// How long a held-back datagram waits past its due time for a following
/// datagram to overtake it; after that it is released anyway.
pub const HOLD_LIMIT: Duration = Duration::from_millis(10);

/// Longest a receiving thread blocks before it checks whether the proxy is
/// being dropped.
const TICK: Duration = Duration::from_millis(20);

/// Receive buffer: larger than any UDP payload (65,507 bytes over IPv4,
/// 65,527 over IPv6), so nothing is truncated.
const MAX_DATAGRAM: usize = 1 << 16;

/// Kernel socket buffer size asked for: the default (about 208 KiB) holds
/// only three 64 KiB datagrams, and a burst from a QUIC sender would be lost
/// in the proxy's socket rather than by the impairment.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// What the proxy does to every datagram, in each direction independently.
///
/// The default is no impairment: every datagram is forwarded at once.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairment {
    /// Probability in `0..=1` that a datagram is dropped, drawn for each
    /// datagram in each direction.
    pub loss: f64,
    /// One-way latency added to every datagram, so a round trip gets twice it.
    pub delay: Duration,
    /// Each datagram's delay is drawn uniformly from
    /// `delay - jitter ..= delay + jitter` (at least zero). As with netem,
    /// jitter can reorder datagrams.
    pub jitter: Duration,
    /// Probability in `0..=1` that a datagram is held back and released just
    /// after the next datagram of the same flow and direction (or
    /// [`HOLD_LIMIT`] after its due time if none follows by then).
    pub reorder: f64,
    /// Seed of the random choices. Each flow and direction draws from its
    /// own generator seeded from this, the flow's number (flows are numbered
    /// in order of their first datagram) and the direction, so a run that
    /// sends the same datagrams in the same order sees the same drops.
    pub seed: u64,
}

/// Counters of one direction of all flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Datagrams forwarded.
    pub datagrams: u64,
    /// Payload bytes forwarded.
    pub bytes: u64,
    /// Datagrams dropped by [`Impairment::loss`].
    pub dropped_loss: u64,
    /// Datagrams dropped because their flow was cut ([`UdpProxy::cut`]).
    pub dropped_cut: u64,
    /// Datagrams dropped while the proxy was paused ([`UdpProxy::pause`]).
    pub dropped_paused: u64,
    /// Datagrams dropped because the delay queue was full ([`QUEUE_LIMIT`]).
    pub dropped_overflow: u64,
    /// Datagrams held back and released after a later one.
    pub reordered: u64,
    /// Datagrams the operating system refused to send (see
    /// [`UdpProxy::last_error`]).
    pub send_errors: u64,
}

impl PathStats {
    /// Datagrams dropped for any reason, send errors included.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_cut
            + self.dropped_paused
            + self.dropped_overflow
            + self.send_errors
    }
}

/// What a [`UdpProxy`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// From the clients to the upstream.
    pub to_upstream: PathStats,
    /// From the upstream back to the clients.
    pub to_client: PathStats,
    /// Flows opened (distinct client addresses seen).
    pub flows: u64,
    /// Datagrams dropped because their flow could not be opened (each
    /// datagram from such a client tries again; see [`UdpProxy::last_error`]).
    pub flow_errors: u64,
    /// Datagrams waiting in the delay queue or held back for reordering now.
    pub queued: u64,
    /// Their payload bytes (at most [`QUEUE_LIMIT`]).
    pub queued_bytes: u64,
}

/// A UDP proxy on 127.0.0.1 that impairs the traffic between its clients and
/// one upstream address. Dropping it stops and joins its threads.
pub struct UdpProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    front_thread: Option<JoinHandle<()>>,
    delay_thread: Option<JoinHandle<()>>,
}

impl UdpProxy {
    /// Listens on 127.0.0.1 (an ephemeral port, see [`UdpProxy::addr`]) and
    /// forwards to `upstream`. Each distinct client address gets its own
    /// upstream socket (a flow), so a new client socket is a new flow.
    pub fn start(upstream: SocketAddr, imp: Impairment) -> io::Result<UdpProxy> {
        let front = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| context(e, "binding the UDP proxy's socket on 127.0.0.1"))?;
        front
            .set_read_timeout(Some(TICK))
            .map_err(|e| context(e, "setting the UDP proxy socket's read timeout"))?;
        enlarge_buffers(&front);
        let addr = front
            .local_addr()
            .map_err(|e| context(e, "reading the UDP proxy socket's address"))?;
        let shared = Arc::new(Shared {
            front,
            impairment: Mutex::new((imp, 0)),
            upstream: Mutex::new(upstream),
            cut_epoch: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            paths: [PathCounters::default(), PathCounters::default()],
            flows: AtomicU64::new(0),
            flow_errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        // Built before the threads, so that a failed spawn drops it and
        // joins whatever already started.
        let mut proxy = UdpProxy {
            shared,
            addr,
            front_thread: None,
            delay_thread: None,
        };
        let shared = Arc::clone(&proxy.shared);
        proxy.delay_thread = Some(spawn("netem-delay", move || run_delay(&shared))?);
        let shared = Arc::clone(&proxy.shared);
        proxy.front_thread = Some(spawn("netem-front", move || run_front(&shared))?);
        Ok(proxy)
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address new flows are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        *lock(&self.shared.upstream)
    }

    /// Forwards flows that start from now on to `upstream` (say, a receiver
    /// restarted on a new port); existing flows keep theirs.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = upstream;
    }

    /// The impairment in force.
    pub fn impairment(&self) -> Impairment {
        lock(&self.shared.impairment).0
    }

    /// Changes the impairment of every flow, for datagrams that arrive from
    /// now on. The random generators are reseeded from `imp.seed`.
    pub fn set_impairment(&self, imp: Impairment) {
        let mut current = lock(&self.shared.impairment);
        *current = (imp, current.1 + 1);
    }

    /// Black-holes every existing flow for good, in both directions,
    /// including its datagrams still in the delay queue. Flows that start
    /// afterwards pass, so a client that reconnects from a new socket gets
    /// through while the old connection sees a dead network.
    pub fn cut(&self) {
        self.shared.cut_epoch.fetch_add(1, SeqCst);
    }

    /// Drops every datagram, in both directions and of every flow, until
    /// [`UdpProxy::resume`].
    pub fn pause(&self) {
        self.shared.paused.store(true, SeqCst);
    }

    /// Ends a [`UdpProxy::pause`].
    pub fn resume(&self) {
        self.shared.paused.store(false, SeqCst);
    }

    /// Counters of what the proxy has forwarded and dropped so far.
    pub fn stats(&self) -> ProxyStats {
        let (queued, queued_bytes) = {
            let queue = lock(&self.shared.queue);
            (queue.heap.len() + queue.held.len(), queue.bytes)
        };
        ProxyStats {
            to_upstream: self.shared.paths[Dir::ToUpstream as usize].snapshot(),
            to_client: self.shared.paths[Dir::ToClient as usize].snapshot(),
            flows: self.shared.flows.load(Relaxed),
            flow_errors: self.shared.flow_errors.load(Relaxed),
            queued: queued as u64,
            queued_bytes: queued_bytes as u64,
        }
    }

    /// The latest failure to open a flow, send or receive, if any: the proxy
    /// keeps going after one, so this says why traffic is missing.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }
}

impl fmt::Debug for UdpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream())
            .field("impairment", &self.impairment())
            .finish_non_exhaustive()
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        {
            // Notifying under the lock: the delay thread checks `stop` under
            // it before it waits, so the wake-up cannot be lost.
            let _queue = lock(&self.shared.queue);
            self.shared.wake.notify_all();
        }
        // A panicked thread has already printed its message; there is
        // nothing more to do with it while dropping.
        if let Some(thread) = self.delay_thread.take() {
            let _ = thread.join();
        }
        // The front thread joins the flow threads it started.
        if let Some(thread) = self.front_thread.take() {
            let _ = thread.join();
        }
    }
}

/// Direction of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dir {
    ToUpstream = 0,
    ToClient = 1,
}

/// One client address and its upstream socket.
struct Flow {
    /// Number in order of creation, for seeding.
    id: u64,
    client: SocketAddr,
    upstream: SocketAddr,
    /// Bound to an ephemeral port and connected to `upstream`, so that it
    /// only receives the upstream's replies.
    socket: UdpSocket,
    /// [`Shared::cut_epoch`] when the flow was opened; a later cut ends it.
    epoch: u64,
}

/// State shared by the handle and the threads.
struct Shared {
    /// The socket clients send to; also sends the replies back to them.
    front: UdpSocket,
    /// The impairment and a generation number bumped on every change.
    impairment: Mutex<(Impairment, u64)>,
    upstream: Mutex<SocketAddr>,
    cut_epoch: AtomicU64,
    paused: AtomicBool,
    stop: AtomicBool,
    /// Indexed by [`Dir`].
    paths: [PathCounters; 2],
    flows: AtomicU64,
    flow_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    queue: Mutex<Queue>,
    /// Wakes the delay thread when something is due earlier than it
    /// planned, or when the proxy is dropped.
    wake: Condvar,
}

impl Shared {
    fn is_cut(&self, flow: &Flow) -> bool {
        flow.epoch < self.cut_epoch.load(SeqCst)
    }

    fn record(&self, message: String) {
        *lock(&self.last_error) = Some(message);
    }

    /// Handles a receive error: timeouts and the ICMP errors a connected
    /// socket reports are routine; anything else is recorded and slows the
    /// loop down so that a lasting error does not spin.
    fn receive_failed(&self, e: &io::Error, what: impl FnOnce() -> String) {
        match e.kind() {
            io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused => {}
            _ => {
                self.record(format!("{}: {e}", what()));
                thread::sleep(TICK);
            }
        }
    }
}

#[derive(Default)]
struct PathCounters {
    datagrams: AtomicU64,
    bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_cut: AtomicU64,
    dropped_paused: AtomicU64,
    dropped_overflow: AtomicU64,
    reordered: AtomicU64,
    send_errors: AtomicU64,
}

impl PathCounters {
    fn snapshot(&self) -> PathStats {
        PathStats {
            datagrams: self.datagrams.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            dropped_loss: self.dropped_loss.load(Relaxed),
            dropped_cut: self.dropped_cut.load(Relaxed),
            dropped_paused: self.dropped_paused.load(Relaxed),
            dropped_overflow: self.dropped_overflow.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// A datagram on its way.
struct Packet {
    flow: Arc<Flow>,
    dir: Dir,
    data: Vec<u8>,
}

/// A packet in the delay queue, ordered by release time, then by arrival.
struct Scheduled {
    at: Instant,
    seq: u64,
    packet: Packet,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A packet held back for reordering.
struct Held {
    /// When it would have been released had it not been held.
    due: Instant,
    packet: Packet,
}

/// Packets waiting for their release time, and those held back for reordering.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Scheduled>>,
    /// At most one per flow and direction.
    held: HashMap<(u64, Dir), Held>,
    /// Payload bytes in `heap` and `held`.
    bytes: usize,
    seq: u64,
    /// Whether the delay thread is waiting, and until when (`None`: until woken).
    waiting: bool,
    wake_at: Option<Instant>,
}

impl Queue {
    /// Queues `packet` for release at `at`; false (and nothing queued) if
    /// the queue is full.
    fn push(&mut self, at: Instant, packet: Packet) -> bool {
        if self.bytes + packet.data.len() > QUEUE_LIMIT {
            return false;
        }
        self.bytes += packet.data.len();
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            packet,
        }));
        true
    }

    /// Holds `packet` back; false (and nothing held) if the queue is full.
    fn hold(&mut self, due: Instant, packet: Packet) -> bool {
        if self.bytes + packet.data.len() > QUEUE_LIMIT {
            return false;
        }
        self.bytes += packet.data.len();
        self.held
            .insert((packet.flow.id, packet.dir), Held { due, packet });
        true
    }

    fn take_held(&mut self, key: (u64, Dir)) -> Option<Held> {
        let held = self.held.remove(&key)?;
        self.bytes -= held.packet.data.len();
        Some(held)
    }

    /// Whether the delay thread must be woken to release something at `at`.
    fn must_wake(&self, at: Instant) -> bool {
        self.waiting && self.wake_at.is_none_or(|w| at < w)
    }
}

/// One flow and direction's random generator, reseeded when the impairment
/// changes.
struct PathRng {
    rng: Xoshiro256PlusPlus,
    generation: Option<u64>,
}

impl PathRng {
    fn new() -> Self {
        PathRng {
            rng: Xoshiro256PlusPlus::seed_from_u64(0),
            generation: None,
        }
    }

    /// The impairment in force, reseeding if it changed since the last call.
    fn impairment(&mut self, shared: &Shared, flow: u64, dir: Dir) -> Impairment {
        let (imp, generation) = *lock(&shared.impairment);
        if self.generation != Some(generation) {
            let path = mix64(flow.wrapping_mul(2).wrapping_add(dir as u64 + 1));
            self.rng = Xoshiro256PlusPlus::seed_from_u64(mix64(imp.seed ^ path));
            self.generation = Some(generation);
        }
        imp
    }

    /// True with probability `p` (never for NaN or `p <= 0`, always for `p >= 1`).
    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits make a uniform f64 in [0, 1).
        p > 0.0 && (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) < p
    }

    /// This datagram's delay: uniform in `delay ± jitter`, at least zero.
    fn delay(&mut self, imp: &Impairment) -> Duration {
        if imp.jitter.is_zero() {
            return imp.delay;
        }
        // Capped so that the arithmetic below cannot overflow; 2^62 ns is
        // over a century.
        let cap = 1u128 << 62;
        let jitter = imp.jitter.as_nanos().min(cap);
        let delay = imp.delay.as_nanos().min(cap);
        let span = 2 * jitter + 1;
        let offset = (u128::from(self.rng.next_u64()) * span) >> 64;
        let nanos = (delay + offset).saturating_sub(jitter);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// SplitMix64's finalizer: spreads seeds that differ in a few bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Receives from the clients, opening a flow for each new address.
fn run_front(shared: &Arc<Shared>) {
    let mut flows: HashMap<SocketAddr, (Arc<Flow>, PathRng)> = HashMap::new();
    let mut threads = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stop.load(SeqCst) {
        let (len, client) = match shared.front.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) => {
                shared.receive_failed(&e, || {
                    format!(
                        "receiving from clients on the proxy's {}",
                        describe(&shared.front)
                    )
                });
                continue;
            }
        };
        let next_id = flows.len() as u64;
        let (flow, rng) = match flows.entry(client) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => match open_flow(shared, next_id, client) {
                Ok((flow, thread)) => {
                    threads.push(thread);
                    bump(&shared.flows);
                    entry.insert((flow, PathRng::new()))
                }
                Err(e) => {
                    bump(&shared.flow_errors);
                    shared.record(e.to_string());
                    continue;
                }
            },
        };
        admit(shared, flow, Dir::ToUpstream, rng, &buf[..len]);
    }
    for thread in threads {
        let _ = thread.join();
    }
}

/// Opens the upstream socket of a new flow and starts its receiving thread.
fn open_flow(
    shared: &Arc<Shared>,
    id: u64,
    client: SocketAddr,
) -> io::Result<(Arc<Flow>, JoinHandle<()>)> {
    let upstream = *lock(&shared.upstream);
    let what = || format!("opening a flow from client {client} to upstream {upstream}");
    let socket = match upstream {
        SocketAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)),
    }
    .map_err(|e| context(e, &format!("{}: binding a socket", what())))?;
    socket.connect(upstream).map_err(|e| {
        context(
            e,
            &format!("{}: connecting (is it a reachable address?)", what()),
        )
    })?;
    socket
        .set_read_timeout(Some(TICK))
        .map_err(|e| context(e, &format!("{}: setting the read timeout", what())))?;
    enlarge_buffers(&socket);
    let flow = Arc::new(Flow {
        id,
        client,
        upstream,
        socket,
        epoch: shared.cut_epoch.load(SeqCst),
    });
    let thread = {
        let shared = Arc::clone(shared);
        let flow = Arc::clone(&flow);
        spawn(&format!("netem-flow-{id}"), move || {
            run_flow(&shared, &flow)
        })
        .map_err(|e| context(e, &what()))?
    };
    Ok((flow, thread))
}

/// Receives the upstream's replies to one flow.
fn run_flow(shared: &Shared, flow: &Arc<Flow>) {
    let mut rng = PathRng::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stop.load(SeqCst) {
        match flow.socket.recv(&mut buf) {
            Ok(len) => admit(shared, flow, Dir::ToClient, &mut rng, &buf[..len]),
            Err(e) => shared.receive_failed(&e, || {
                format!(
                    "receiving from upstream {} for client {}",
                    flow.upstream, flow.client
                )
            }),
        }
    }
}

/// Applies the impairment to a datagram just received: drops it, sends it,
/// queues it for later, or holds it back behind the next one.
fn admit(shared: &Shared, flow: &Arc<Flow>, dir: Dir, rng: &mut PathRng, data: &[u8]) {
    let counters = &shared.paths[dir as usize];
    if shared.is_cut(flow) {
        return bump(&counters.dropped_cut);
    }
    if shared.paused.load(SeqCst) {
        return bump(&counters.dropped_paused);
    }
    let imp = rng.impairment(shared, flow.id, dir);
    if rng.chance(imp.loss) {
        return bump(&counters.dropped_loss);
    }
    let now = Instant::now();
    let due = now + rng.delay(&imp);
    let hold = rng.chance(imp.reorder);
    if due <= now && !hold && imp.reorder <= 0.0 {
        // The common undelayed case, without the queue's lock. A datagram
        // still held from an earlier impairment is released by the delay
        // thread at its deadline.
        return deliver(shared, flow, dir, data);
    }
    let packet = || Packet {
        flow: Arc::clone(flow),
        dir,
        data: data.to_vec(),
    };
    let mut queue = lock(&shared.queue);
    let held = queue.take_held((flow.id, dir));
    let Some(held) = held else {
        if hold {
            if queue.hold(due, packet()) {
                if queue.must_wake(due + HOLD_LIMIT) {
                    shared.wake.notify_one();
                }
            } else {
                bump(&counters.dropped_overflow);
            }
            return;
        }
        if due <= now {
            drop(queue);
            return deliver(shared, flow, dir, data);
        }
        if !queue.push(due, packet()) {
            return bump(&counters.dropped_overflow);
        }
        if queue.must_wake(due) {
            shared.wake.notify_one();
        }
        return;
    };
    // This datagram overtakes the held one, which goes right after it.
    bump(&counters.reordered);
    let after = due.max(held.due);
    if after <= now {
        drop(queue);
        deliver(shared, flow, dir, data);
        return deliver(shared, &held.packet.flow, dir, &held.packet.data);
    }
    if !queue.push(due, packet()) {
        bump(&counters.dropped_overflow);
    }
    // Its bytes were counted before it was taken, so this fits unless the
    // line above filled the queue.
    if !queue.push(after, held.packet) {
        bump(&counters.dropped_overflow);
    }
    if queue.must_wake(due) {
        shared.wake.notify_one();
    }
}

/// Releases queued datagrams when they are due, and held ones whose
/// follower did not come in time.
fn run_delay(shared: &Shared) {
    let mut queue = lock(&shared.queue);
    let mut due = Vec::new();
    loop {
        if shared.stop.load(SeqCst) {
            return;
        }
        let now = Instant::now();
        while let Some(Reverse(top)) = queue.heap.peek()
            && top.at <= now
        {
            if let Some(Reverse(scheduled)) = queue.heap.pop() {
                queue.bytes -= scheduled.packet.data.len();
                due.push(scheduled.packet);
            }
        }
        let expired: Vec<_> = queue
            .held
            .iter()
            .filter(|(_, held)| held.due + HOLD_LIMIT <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            if let Some(held) = queue.take_held(key) {
                due.push(held.packet);
            }
        }
        if !due.is_empty() {
            // Sending without the lock, so receiving threads are not held up.
            drop(queue);
            for packet in due.drain(..) {
                deliver(shared, &packet.flow, packet.dir, &packet.data);
            }
            queue = lock(&shared.queue);
            continue;
        }
        let next_heap = queue.heap.peek().map(|Reverse(top)| top.at);
        let next_held = queue.held.values().map(|held| held.due + HOLD_LIMIT).min();
        let wake_at = match (next_heap, next_held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        queue.waiting = true;
        queue.wake_at = wake_at;
        queue = match wake_at {
            Some(at) => {
                shared
                    .wake
                    .wait_timeout(queue, at.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner),
        };
        queue.waiting = false;
    }
}

/// Sends a datagram on, unless its flow was cut or the proxy paused since it
/// arrived.
fn deliver(shared: &Shared, flow: &Flow, dir: Dir, data: &[u8]) {
    let counters = &shared.paths[dir as usize];
    if shared.is_cut(flow) {
        return bump(&counters.dropped_cut);
    }
    if shared.paused.load(SeqCst) {
        return bump(&counters.dropped_paused);
    }
    let sent = match dir {
        Dir::ToUpstream => flow.socket.send(data),
        Dir::ToClient => shared.front.send_to(data, flow.client),
    };
    match sent {
        Ok(_) => {
            bump(&counters.datagrams);
            counters.bytes.fetch_add(data.len() as u64, Relaxed);
        }
        Err(e) => {
            bump(&counters.send_errors);
            shared.record(match dir {
                Dir::ToUpstream => format!(
                    "forwarding a datagram from client {} to upstream {}: {e} (is the upstream listening?)",
                    flow.client, flow.upstream
                ),
                Dir::ToClient => format!(
                    "returning a datagram from upstream {} to client {}: {e} (is the client still open?)",
                    flow.upstream, flow.client
                ),
            });
        }
    }
}

/// Asks for [`SOCKET_BUFFER`]-sized kernel buffers. Best effort: the kernel
/// caps the size at `net.core.rmem_max` / `wmem_max`, and a smaller buffer
/// only means more drops under bursts.
fn enlarge_buffers(socket: &UdpSocket) {
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: the descriptor is open for the call, and the value points
        // to a live c_int whose size is passed.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn describe(socket: &UdpSocket) -> String {
    match socket.local_addr() {
        Ok(addr) => format!("socket {addr}"),
        Err(_) => "socket".to_string(),
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| context(e, &format!("starting the UDP proxy's thread {name}")))
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves
/// its data consistent even if a thread panicked in it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
