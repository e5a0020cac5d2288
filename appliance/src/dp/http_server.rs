//! The DP's HTTP listener: its own accept loop around hyper's HTTP/1 connections, serving the
//! content router of [`super::http`], with the limits a server on an open network needs.
//! `axum::serve` has none of them: there, a client that sends half a request holds its
//! connection (and its descriptor) for ever, and enough such clients starve the whole daemon.
//!
//! **Connection caps** ([`Limits::max_connections`], [`Limits::max_per_address`]): a connection
//! above either cap is answered with one static 503 line (no allocation, no task, no await) and
//! closed at once, before hyper sees it. The per-address cap keeps one client from taking the
//! whole budget; the total cap keeps the HTTP side within its share of the descriptors.
//!
//! **Eviction**: at the total cap, a new connection from an address under its own cap takes
//! the place of the connection that has waited longest without being answered (a request
//! head still arriving, or kept alive between requests); connections being answered are never
//! cut. So idle clients from many addresses cannot shut real clients out: they only push each
//! other out, oldest first. At most [`MAX_EVICTING`] connections are being closed at once
//! (each over the cap until its task has ended); beyond that, newcomers are refused.
//!
//! **Descriptors** ([`connection_cap`]): one HTTP connection is one descriptor. `freightd`
//! raises `RLIMIT_NOFILE` to its hard limit at start (`daemon::raise_fd_limit`); of that limit
//! `N`, [`RESERVED_FDS`] stay out of reach of HTTP and the HTTP cap is at most half of the rest,
//! `(N − 512) / 2`. The other half plus the reserve are for everything else the daemon opens:
//! the QUIC endpoint's UDP socket (every QUIC connection shares it), the library's pack and
//! index files, manifests being read, the block engine's io_uring and the runtime's epoll and
//! event descriptors, the share folder's files while materialising, the site database, the
//! admin socket and its clients. So a flood of idle HTTP connections can never make the QUIC
//! side or the library fail with "Too many open files". With the common hard limit of 524288
//! the configured cap (4096 by default) applies; with a soft limit of 1024 that cannot be
//! raised, HTTP gets 256.
//!
//! **Timeouts**, per connection, measured by a watchdog around the socket that knows which
//! phase the connection is in:
//! - *request* (a new connection, or the first byte of the next request on a kept-alive one):
//!   the whole request head must arrive within [`Limits::header_timeout`]; trickling bytes
//!   does not extend it.
//! - *busy* (the request is being answered): each write of the response must make progress
//!   within [`Limits::send_timeout`], so a client that stops reading (or reads so slowly that
//!   the socket's send buffer never drains) is cut instead of holding its connection, its
//!   chunk buffers and a listing slot. Answers that have to wait (a listing slot, a manifest
//!   decode) give up well within this time.
//! - *idle* (between requests of a kept-alive connection): closed after
//!   [`Limits::idle_timeout`] without a new request.
//!
//! Request bodies are never read (the DP serves GET and HEAD only); hyper drains what is
//! already buffered and otherwise closes the connection after the answer. Request heads are
//! bounded by hyper's buffer limit ([`MAX_BUF`]); a larger head is refused with 431.

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Descriptors kept out of the HTTP side's reach whatever the limit (see the module docs).
pub const RESERVED_FDS: u64 = 512;

/// Connections closed to make room whose tasks have not ended yet, at most: the cap may be
/// exceeded by this many for the moment it takes a connection's task to see it was evicted.
pub const MAX_EVICTING: usize = 32;

/// The smallest HTTP connection cap, however low the descriptor limit.
pub const MIN_CONNECTIONS: usize = 8;

/// hyper's read and write buffer limit per connection: a request head larger than this is
/// refused (431), and an idle connection never holds more than this.
pub const MAX_BUF: usize = 16 * 1024;

/// The limits of a DP's HTTP content server (`[dp]` of `freightd.toml`; defaults in
/// [`Limits::default`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A request head must arrive whole within this, from the connection's start or from the
    /// first byte of a later request on the same connection.
    pub header_timeout: Duration,
    /// A kept-alive connection without a new request is closed after this.
    pub idle_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection.
    pub send_timeout: Duration,
    /// Connections open at once, all clients together (see [`connection_cap`]).
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_per_address: usize,
    /// Listings built and sent at once; more wait a little, then get 503.
    pub max_listings: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_per_address: 64,
            max_listings: 4,
        }
    }
}

/// The HTTP connection cap for a configured cap and a descriptor limit `nofile`: the
/// configured cap, but at most half of the descriptors above [`RESERVED_FDS`] (that share
/// never counted below [`MIN_CONNECTIONS`], so a tiny limit still serves someone).
pub fn connection_cap(configured: usize, nofile: u64) -> usize {
    let share = nofile.saturating_sub(RESERVED_FDS) / 2;
    let share = usize::try_from(share).unwrap_or(usize::MAX);
    configured.min(share.max(MIN_CONNECTIONS))
}

// ---------------------------------------------------------------------------------------------
// Connection caps.

/// Open connections, in total and per client address.
#[derive(Clone)]
struct Gate(Arc<GateInner>);

struct GateInner {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
    /// Every admitted connection's clock, by slot number (the eviction candidates).
    conns: HashMap<u64, Arc<ConnClock>>,
    next_slot: u64,
    /// Evicted connections whose slots are still held.
    evicting: usize,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Total,
    Address,
}

/// One admitted connection; dropping it frees its place.
struct Slot {
    gate: Arc<GateInner>,
    ip: IpAddr,
    id: u64,
}

impl GateInner {
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Gate {
    fn new(max_total: usize, max_per_address: usize) -> Gate {
        Gate(Arc::new(GateInner {
            max_total,
            max_per_address,
            open: Mutex::new(Open::default()),
        }))
    }

    /// Admits the connection whose clock is `clock`, from `ip`: within the per-address cap,
    /// and within the total cap or by evicting the longest-waiting unanswered connection.
    fn admit(&self, ip: IpAddr, clock: Arc<ConnClock>) -> Result<Slot, Refusal> {
        // An IPv4 client on a dual-stack socket is one address however it is written.
        let ip = ip.to_canonical();
        let mut open = self.0.open();
        if open.by_address.get(&ip).copied().unwrap_or(0) >= self.0.max_per_address {
            return Err(Refusal::Address);
        }
        if open.total >= self.0.max_total + open.evicting {
            if open.evicting >= MAX_EVICTING {
                return Err(Refusal::Total);
            }
            // The victim: the unanswered connection waiting longest. A scan of at most the
            // cap's connections, only when the cap is reached.
            let victim = open
                .conns
                .values()
                .filter_map(|c| c.waiting_since().map(|since| (since, c)))
                .min_by_key(|(since, _)| *since)
                .map(|(_, c)| c.clone());
            match victim {
                Some(c) if c.evict() => open.evicting += 1,
                _ => return Err(Refusal::Total),
            }
        }
        *open.by_address.entry(ip).or_insert(0) += 1;
        open.total += 1;
        let id = open.next_slot;
        open.next_slot += 1;
        open.conns.insert(id, clock);
        Ok(Slot {
            gate: self.0.clone(),
            ip,
            id,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.gate.open();
        open.total -= 1;
        if let Some(c) = open.conns.remove(&self.id)
            && c.state().evicted
        {
            open.evicting -= 1;
        }
        if let Some(n) = open.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.ip);
            }
        }
    }
}

/// The whole answer to a refused connection: static bytes, written without waiting.
const REFUSED_TOTAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 74\r\n\r\nthis DP has as many HTTP connections open as it allows; retry in a moment\n";
const REFUSED_ADDRESS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 91\r\n\r\nthis DP has as many HTTP connections open from your address as it allows; close some first\n";

fn refuse(stream: TcpStream, why: Refusal) {
    let answer = match why {
        Refusal::Total => REFUSED_TOTAL,
        Refusal::Address => REFUSED_ADDRESS,
    };
    // Best effort: a full send buffer or a gone client just gets the close.
    let _ = stream.try_write(answer);
    // What the client already sent is taken (into the stack) so that the close is a FIN
    // after the answer, not a reset that may destroy the answer in the client's buffer.
    let mut sink = [0u8; 1024];
    let _ = stream.try_read(&mut sink);
    drop(stream);
}

/// Counts refusals and says so at most every [`REPORT_EVERY`], so a flood costs a few lines.
struct RefusalLog {
    last_report: Option<Instant>,
    total: u64,
    address: u64,
    last_address: Option<IpAddr>,
}

const REPORT_EVERY: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn new() -> RefusalLog {
        RefusalLog {
            last_report: None,
            total: 0,
            address: 0,
            last_address: None,
        }
    }

    /// Whether it is time to say what was counted (the first time, then every 10 s).
    fn due(&self) -> bool {
        self.last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY)
    }

    fn note(&mut self, ip: IpAddr, why: Refusal, limits: &Limits, cap: usize) {
        match why {
            Refusal::Total => self.total += 1,
            Refusal::Address => {
                self.address += 1;
                self.last_address = Some(ip);
            }
        }
        if !self.due() {
            return;
        }
        if self.total > 0 {
            tracing::warn!(
                refused = self.total,
                cap,
                "DP content server: refused connections above its cap of {cap}; raise [dp] http_max_connections (and the descriptor limit) if these are real clients"
            );
        }
        if self.address > 0 {
            tracing::warn!(
                refused = self.address,
                address = ?self.last_address,
                per_address = limits.max_per_address,
                "DP content server: refused connections above the cap of {} per client address; raise [dp] http_max_per_address if many clients share that address",
                limits.max_per_address
            );
        }
        *self = RefusalLog {
            last_report: Some(Instant::now()),
            ..RefusalLog::new()
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Per-connection phases and the watchdog.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head to complete.
    Request,
    /// Answering a request.
    Busy,
    /// Between requests.
    Idle,
}

struct PhaseState {
    phase: Phase,
    since: Instant,
    last_write: Instant,
    /// Bytes of a further request arrived while answering (pipelining or an early next head).
    read_while_busy: bool,
    /// Responses handed to hyper and not yet finished.
    open_responses: u32,
    /// The task of the watchdog's last wait: a phase change that brings the deadline nearer
    /// wakes it to re-arm (hyper does not poll an idle connection's socket again by itself).
    waiter: Option<std::task::Waker>,
    /// Closed to make room for a newer client (see the module docs): the deadline has passed.
    evicted: bool,
}

/// Where a connection is, shared by its socket watchdog, its service and its response bodies
/// (all polled by the connection's one task, so the lock is never contended).
struct ConnClock {
    header: Duration,
    idle: Duration,
    send: Duration,
    state: Mutex<PhaseState>,
}

impl ConnClock {
    fn new(limits: &Limits, now: Instant) -> ConnClock {
        ConnClock {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
            send: limits.send_timeout,
            state: Mutex::new(PhaseState {
                phase: Phase::Request,
                since: now,
                last_write: now,
                read_while_busy: false,
                open_responses: 0,
                waiter: None,
                evicted: false,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, PhaseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, now: Instant) {
        let mut s = self.state();
        match s.phase {
            Phase::Idle => {
                s.phase = Phase::Request;
                s.since = now;
            }
            Phase::Busy => s.read_while_busy = true,
            Phase::Request => {}
        }
    }

    fn wrote(&self, now: Instant) {
        self.state().last_write = now;
    }

    /// hyper parsed a whole request head and calls the service.
    fn request_started(&self, now: Instant) {
        let mut s = self.state();
        s.phase = Phase::Busy;
        s.since = now;
        s.read_while_busy = false;
        s.open_responses += 1;
    }

    /// A response body was finished (or dropped: the connection is going away).
    fn response_done(&self, now: Instant) {
        let mut s = self.state();
        s.open_responses = s.open_responses.saturating_sub(1);
        if s.open_responses == 0 && s.phase == Phase::Busy {
            // A further request that already started arriving gets the header timeout from now.
            s.phase = if s.read_while_busy {
                Phase::Request
            } else {
                Phase::Idle
            };
            s.since = now;
            if let Some(w) = s.waiter.take() {
                w.wake();
            }
        }
    }

    fn wait_with(&self, waker: &std::task::Waker) {
        let mut s = self.state();
        if !s.waiter.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.waiter = Some(waker.clone());
        }
    }

    /// When the connection is cut if nothing changes, and why it would be.
    fn deadline(&self) -> (Instant, &'static str) {
        let s = self.state();
        if s.evicted {
            return (s.since, "closed to make room for a newer client");
        }
        match s.phase {
            Phase::Request => (
                s.since + self.header,
                "closed: no whole request head in time",
            ),
            Phase::Busy => (
                s.since.max(s.last_write) + self.send,
                "closed: the client did not read the answer in time",
            ),
            Phase::Idle => (
                s.since.max(s.last_write) + self.idle,
                "closed: no next request in time",
            ),
        }
    }

    /// Since when the connection has waited for its client without being answered (a request
    /// head arriving, or idle between requests); `None` while it is answered or already
    /// evicted.
    fn waiting_since(&self) -> Option<Instant> {
        let s = self.state();
        (s.phase != Phase::Busy && !s.evicted).then_some(s.since)
    }

    /// Closes the connection to make room, unless it is being answered meanwhile: its
    /// watchdog is woken and fails the pending read. Whether it was evicted.
    fn evict(&self) -> bool {
        let mut s = self.state();
        if s.phase == Phase::Busy || s.evicted {
            return false;
        }
        s.evicted = true;
        if let Some(w) = s.waiter.take() {
            w.wake();
        }
        true
    }
}

/// A socket whose reads and writes fail with `TimedOut` once its connection's phase deadline
/// passes while it waits.
struct Watched {
    io: TcpStream,
    clock: Arc<ConnClock>,
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
}

impl Watched {
    fn new(io: TcpStream, clock: Arc<ConnClock>) -> Watched {
        let (deadline, _) = clock.deadline();
        Watched {
            io,
            clock,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: deadline,
        }
    }

    /// Called when an operation would block: `Some` error once the deadline has passed,
    /// otherwise the timer is armed for it (the task wakes then and the operation is retried).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        loop {
            let (deadline, why) = self.clock.deadline();
            if Instant::now() >= deadline {
                return Some(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            if self.armed != deadline {
                self.sleep.as_mut().reset(deadline);
                self.armed = deadline;
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                self.clock.wait_with(cx.waker());
                return None;
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.read(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.clock.wrote(Instant::now());
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.clock.wrote(Instant::now());
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Marks its connection's response finished when dropped (hyper drops a response body once
/// it is written, or when the connection goes away).
struct ResponseEnd(Arc<ConnClock>);

impl Drop for ResponseEnd {
    fn drop(&mut self) {
        self.0.response_done(Instant::now());
    }
}

/// The router as one connection's hyper service, telling the connection's clock when a
/// request starts and when its answer ends.
#[derive(Clone)]
struct ConnService {
    app: Router,
    clock: Arc<ConnClock>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.clock.request_started(Instant::now());
        let end = ResponseEnd(self.clock.clone());
        let mut app = self.app.clone();
        Box::pin(async move {
            let resp = tower_service::Service::call(&mut app, req).await?;
            // The guard lives in the body: its drop is the end of the answer.
            Ok(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    // A named binding, so the closure owns `end` (`let _` would not capture).
                    let _owned = &end;
                    frame
                }))
            }))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The accept loop.

/// Serves `app` on `listener` within `limits` until the task is dropped. `nofile` is the
/// process's descriptor limit (the HTTP cap is derived from it, see [`connection_cap`]).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, nofile: u64) {
    let cap = connection_cap(limits.max_connections, nofile);
    if cap < limits.max_connections {
        tracing::warn!(
            "DP content server: at most {cap} HTTP connections (not {}) so that they leave descriptors for the rest of freightd (limit {nofile}); raise the hard RLIMIT_NOFILE (LimitNOFILE= in the unit) for more",
            limits.max_connections
        );
    }
    let gate = Gate::new(cap, limits.max_per_address);
    let mut refusals = RefusalLog::new();
    let mut accept_failures = RefusalLog::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                accept_failed(e, &mut accept_failures).await;
                continue;
            }
        };
        let clock = Arc::new(ConnClock::new(&limits, Instant::now()));
        let slot = match gate.admit(peer.ip(), clock.clone()) {
            Ok(s) => s,
            Err(why) => {
                refuse(stream, why);
                refusals.note(peer.ip(), why, &limits, cap);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Watched::new(stream, clock.clone()));
        let service = ConnService {
            app: app.clone(),
            clock,
        };
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                // The watchdog times requests out per phase; hyper's own header timer would
                // also close idle kept-alive connections after the (shorter) header timeout.
                .header_read_timeout(None)
                .keep_alive(true)
                .max_buf_size(MAX_BUF)
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!(client = %peer, "DP content server: connection ended: {e}");
            }
        });
    }
}

/// An accept that failed. Out of descriptors (or memory) is waited out briefly instead of
/// spinning; a connection that died in the backlog is just skipped.
async fn accept_failed(e: io::Error, log: &mut RefusalLog) {
    let starved = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if !starved {
        tracing::debug!("DP content server: accept failed: {e}");
        return;
    }
    log.total += 1;
    if log.due() {
        tracing::error!(
            failures = log.total,
            "DP content server: cannot accept connections ({e}); freightd is out of descriptors or memory, raise its RLIMIT_NOFILE or lower [dp] http_max_connections"
        );
        *log = RefusalLog {
            last_report: Some(Instant::now()),
            ..RefusalLog::new()
        };
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_and_half_the_rest() {
        assert_eq!(connection_cap(4096, 1024), 256);
        assert_eq!(connection_cap(4096, 4096), 1792);
        assert_eq!(connection_cap(4096, 524_288), 4096);
        assert_eq!(connection_cap(100, 524_288), 100);
        assert_eq!(connection_cap(4096, 256), MIN_CONNECTIONS);
        assert_eq!(connection_cap(4096, u64::MAX), 4096);
        assert_eq!(connection_cap(5, 256), 5);
    }

    #[test]
    fn refusals_are_well_formed_answers() {
        for answer in [REFUSED_TOTAL, REFUSED_ADDRESS] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{text}");
            assert_eq!(body.lines().count(), 1);
        }
    }

    fn clock() -> Arc<ConnClock> {
        Arc::new(ConnClock::new(&Limits::default(), Instant::now()))
    }

    /// A clock whose connection is being answered (never evicted).
    fn busy() -> Arc<ConnClock> {
        let c = clock();
        c.request_started(Instant::now());
        c
    }

    #[test]
    fn the_gate_counts_per_address_and_in_total() {
        let gate = Gate::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a6: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let s1 = gate.admit(a, busy()).unwrap();
        let s2 = gate.admit(a6, busy()).unwrap();
        assert_eq!(gate.admit(a, busy()).err(), Some(Refusal::Address));
        let s3 = gate.admit(b, busy()).unwrap();
        // Every connection is being answered: none may be cut for a newcomer.
        assert_eq!(gate.admit(b, busy()).err(), Some(Refusal::Total));
        drop(s1);
        let s4 = gate.admit(b, busy()).unwrap();
        drop((s2, s3));
        {
            let open = gate.0.open();
            assert_eq!((open.total, open.by_address.len()), (1, 1));
        }
        drop(s4);
        let open = gate.0.open();
        assert!(open.by_address.is_empty() && open.conns.is_empty());
    }

    #[test]
    fn at_the_cap_the_longest_waiting_unanswered_connection_makes_room() {
        let gate = Gate::new(3, 2);
        let idle: IpAddr = "10.0.0.1".parse().unwrap();
        let idle2: IpAddr = "10.0.0.3".parse().unwrap();
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        let oldest = clock();
        let s1 = gate.admit(idle, oldest.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let newer = clock();
        let s2 = gate.admit(idle2, newer.clone()).unwrap();
        let answered = busy();
        let s3 = gate.admit(client, answered.clone()).unwrap();
        // Full: the newcomer evicts the oldest half-request, not the newer one nor the
        // connection being answered.
        let s4 = gate.admit(client, clock()).unwrap();
        assert_eq!(
            oldest.deadline().1,
            "closed to make room for a newer client"
        );
        assert!(oldest.deadline().0 <= Instant::now());
        assert!(newer.waiting_since().is_some());
        assert!(answered.waiting_since().is_none());
        // A per-address cap still refuses before any eviction.
        assert_eq!(gate.admit(client, clock()).err(), Some(Refusal::Address));
        assert_eq!(gate.0.open().evicting, 1);
        // The evicted connection's task ends: its slot goes, and the count of evictions too.
        drop(s1);
        {
            let open = gate.0.open();
            assert_eq!((open.total, open.evicting), (3, 0));
        }
        // Evictions in progress are bounded.
        drop((s2, s3, s4));
        let gate = Gate::new(1, 1000);
        let mut slots = vec![gate.admit(idle, clock()).unwrap()];
        for _ in 0..MAX_EVICTING {
            slots.push(gate.admit(idle, clock()).unwrap());
        }
        assert_eq!(gate.0.open().evicting, MAX_EVICTING);
        assert_eq!(gate.admit(idle, clock()).err(), Some(Refusal::Total));
    }

    #[test]
    fn phases_set_the_deadline() {
        let limits = Limits::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let c = ConnClock::new(&limits, t0);
        assert_eq!(c.deadline().0, t0 + limits.header_timeout);
        // Bytes of the head do not extend it.
        c.read(at(3));
        assert_eq!(c.deadline().0, t0 + limits.header_timeout);
        c.request_started(at(4));
        assert_eq!(c.deadline().0, at(4) + limits.send_timeout);
        c.wrote(at(24));
        assert_eq!(c.deadline().0, at(24) + limits.send_timeout);
        c.response_done(at(25));
        assert_eq!(c.deadline().0, at(25) + limits.idle_timeout);
        // The first byte of the next request starts its header timeout.
        c.read(at(50));
        assert_eq!(c.deadline().0, at(50) + limits.header_timeout);
        c.read(at(52));
        assert_eq!(c.deadline().0, at(50) + limits.header_timeout);
        // A head that began arriving during an answer is timed from the answer's end.
        c.request_started(at(53));
        c.read(at(54));
        c.response_done(at(55));
        assert_eq!(c.deadline().0, at(55) + limits.header_timeout);
    }
}
