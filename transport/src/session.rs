//! Push sessions over QUIC: the sans-IO [`protocol`](crate::protocol) state machines driven on
//! a connection's streams, reading from and writing to content libraries.
//!
//! The sender ([`push`]) reads the chunks the receiver lacks from its library through the
//! block engine, spreads them over the session's data streams and paces them with the route's
//! limiter. The receiver ([`serve_connection`]) verifies every chunk on a blocking thread
//! before the state machine accepts it, hands it to the library's store thread, and commits
//! the manifest when the state machine says so. Resuming after a cut or a restart is
//! [`push_resuming`]: the same session again, on a new connection, where the receiver now
//! lacks only what it had not stored.
//!
//! Which stream each message takes and when `Done` may be sent or acted on are the state
//! machines' decisions (see [`protocol`](crate::protocol#streams)); this module routes what
//! they queue to the streams they name and reports each data stream's opening, finish and end.

use crate::authz::Request;
use crate::command::{self, CommandHandler};
use crate::error::{Error, Result};
use crate::protocol::{
    FrameDecoder, Message, ProtocolError, Receiver, ReceiverEvent, Sender, SenderEvent, Transmit,
    chunk_header,
};
use crate::quic::{Conn, KIND_COMMAND, KIND_DATA, KIND_PUSH, Node, conn_error};
use crate::route_limiter::RouteLimiter;
use crate::schedule::Priority;
use crate::store::{ReceivedManifest, SharedLibrary};
use crate::throttle;
use bytes::Bytes;
use freight_core::library::{FileAt, ReadView};
use freight_core::{ChunkId, Manifest, ManifestChunks, PackageId, Progress, SiteCode};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// Data of a chunk is written in slices of at most [`throttle::SLICE`] bytes, each paced on its
/// own, so a limiter's bursts stay small and a rate change applies within a slice.
const SLICE: usize = throttle::SLICE as usize;
/// Chunk reads in flight on the block engine per session.
const READ_AHEAD: usize = 16;
/// Chunks read but not yet written to a data stream, per session (memory bound).
const QUEUED: usize = 8;

/// The most chunk bytes one push session can count as sent that the receiver has not made
/// durable when the connection is cut or the receiver dies, so the most a resumed session sends
/// again. `max_chunk` is the largest stored chunk of the package, `commit_bytes` the receiver's
/// commit batch ([`SharedLibrary::with_commit_bytes`]). The terms:
/// - the sender's unacknowledged data (`send_window`);
/// - data the receiver's QUIC holds that its streams have not read (`connection_window`);
/// - per data stream, a frame being reassembled and a chunk being verified;
/// - chunks queued for the store thread ([`crate::store::STORE_QUEUE`]) and the one it appends;
/// - the store's uncommitted batch (`commit_bytes`).
///
/// After a cut (receiver alive) only the first three can be lost; after a crash all of them.
pub fn in_flight_window(cfg: &crate::quic::NodeConfig, max_chunk: u64, commit_bytes: u64) -> u64 {
    let chunks = 2 * cfg.data_streams as u64 + crate::store::STORE_QUEUE as u64 + 1;
    cfg.send_window + cfg.connection_window as u64 + chunks * max_chunk + commit_bytes
}

/// How one push behaves.
#[derive(Clone, Default)]
pub struct PushOptions {
    /// Byte counters for a progress bar: total = bytes the receiver lacks, done = sent.
    pub progress: Option<Arc<Progress>>,
    /// The route's limiter (shared by every session on the route); `None` = unlimited.
    pub limiter: Option<RouteLimiter>,
    /// The package's priority: which of the route's windows it may use.
    pub priority: Priority,
}

impl std::fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushOptions").finish_non_exhaustive()
    }
}

/// What one push session did, also when it failed part-way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushReport {
    /// Chunks the receiver said it lacked.
    pub chunks_needed: u64,
    /// Their stored (compressed) bytes.
    pub bytes_needed: u64,
    /// The largest of them, stored bytes.
    pub max_chunk: u64,
    /// Chunks written to data streams.
    pub chunks_sent: u64,
    /// Stored chunk bytes written to data streams (frame headers not counted).
    pub bytes_sent: u64,
    /// True once the receiver confirmed the commit.
    pub committed: bool,
    /// How long chunks took to go out, when any did.
    pub chunk_latency: Option<ChunkLatency>,
    /// Wall time of the session.
    pub elapsed: Duration,
}

#[derive(Default)]
struct Counters {
    chunks: AtomicU64,
    bytes: AtomicU64,
    /// Microseconds from a chunk's first byte written to its last, pacing included.
    latency: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl Counters {
    fn record(&self, took: Duration) {
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = h.get_or_insert_with(|| {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
        });
        h.saturating_record(took.as_micros() as u64);
    }
}

/// Time to write one chunk onto its data stream (pacing and flow control included).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ChunkLatency {
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Slowest, milliseconds.
    pub max_ms: f64,
}

/// A chunk read from the library, ready to go on a data stream.
struct Outgoing {
    id: ChunkId,
    ulen: u32,
    flags: u8,
    data: Bytes,
}

/// Most control messages encoded into one write (a `Need` part is up to 2 MiB).
const CONTROL_BATCH: usize = 4;

async fn write_control(send: &mut quinn::SendStream, who: &str, msgs: Vec<Message>) -> Result<()> {
    if msgs.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::new();
    for m in &msgs {
        m.encode_into(&mut buf);
    }
    send.write_all(&buf).await.map_err(|e| write_error(who, e))
}

/// Waits for `fut` at most `limit`; past it, the peer stalled at `step` ([`stalled`]).
pub(crate) async fn within<T>(
    limit: Duration,
    who: &str,
    step: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(stalled(who, step, limit)),
    }
}

/// The peer did not do `step` within `limit`: a connection error naming the peer and the step,
/// retried like a cut (the transfer resumes with what was stored).
pub(crate) fn stalled(who: &str, step: &str, limit: Duration) -> Error {
    let limit = if limit.as_secs() >= 120 {
        format!("{} min", limit.as_secs() / 60)
    } else {
        format!("{:.1} s", limit.as_secs_f64())
    };
    Error::Connection {
        peer: who.to_string(),
        reason: format!("no {step} within {limit}"),
        remedy: "the peer stalled; the transfer resumes when it answers again",
    }
}

pub(crate) fn write_error(who: &str, e: quinn::WriteError) -> Error {
    match e {
        quinn::WriteError::ConnectionLost(c) => conn_error(who, c),
        other => Error::Connection {
            peer: who.to_string(),
            reason: format!("stream closed by the peer: {other}"),
            remedy: "see the peer's log; retry to resume",
        },
    }
}

pub(crate) fn read_error(who: &str, e: quinn::ReadError) -> Error {
    match e {
        quinn::ReadError::ConnectionLost(c) => conn_error(who, c),
        other => Error::Connection {
            peer: who.to_string(),
            reason: format!("stream failed: {other}"),
            remedy: "see the peer's log; retry to resume",
        },
    }
}

/// Reads protocol messages from a stream into a channel until it ends or fails. A clean end
/// of stream closes the channel.
fn spawn_reader(mut recv: quinn::RecvStream, who: String) -> mpsc::Receiver<Result<Message>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut dec = FrameDecoder::new();
        loop {
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => {
                    dec.push(&chunk.bytes);
                    loop {
                        match dec.next_message() {
                            Ok(Some(m)) => {
                                if tx.send(Ok(m)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                }
                Ok(None) => {
                    if dec.buffered() > 0 {
                        let _ = tx
                            .send(Err(Error::Protocol {
                                code: ProtocolError::Malformed,
                                detail: format!("{who}: stream ended inside a frame"),
                            }))
                            .await;
                    }
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(read_error(&who, e))).await;
                    return;
                }
            }
        }
    });
    rx
}

/// What a push offers: a version stored in the pushing library, read from its manifest file
/// in parts and never held whole, or a manifest in memory (offered from its stored file when
/// the library holds it, else from its encoding: tests, a version not stored).
#[derive(Clone, Copy, Debug)]
pub enum Offer<'a> {
    /// A version the library stores.
    Stored(&'a PackageId, u32),
    /// A manifest in memory.
    Manifest(&'a Manifest),
    /// A version that may still be arriving here, named by its manifest hash: a relay (issue
    /// 13 item 8). Offered from the stored manifest when the library holds the version, else
    /// from the manifest file of a session receiving it (waiting up to the progress timeout
    /// for one to register); chunks are sent as they are committed here, each waited for at
    /// most the progress timeout.
    Relay(&'a PackageId, u32, [u8; 32]),
}

impl<'a> From<&'a Manifest> for Offer<'a> {
    fn from(m: &'a Manifest) -> Offer<'a> {
        Offer::Manifest(m)
    }
}

impl Offer<'_> {
    /// The offered package version.
    pub fn version(&self) -> (PackageId, u32) {
        match self {
            Offer::Stored(p, v) | Offer::Relay(p, v, _) => ((*p).clone(), *v),
            Offer::Manifest(m) => (m.package.clone(), m.version),
        }
    }
}

/// Pushes the offered package version from `lib` to the peer of `conn` in one session.
/// Returns when the receiver confirmed the commit; `report` counts what was sent even when
/// the session fails (a cut connection, an abort by the peer).
pub async fn push(
    conn: &Conn,
    lib: &SharedLibrary,
    offer: impl Into<Offer<'_>>,
    opts: &PushOptions,
    report: &mut PushReport,
) -> Result<()> {
    let manifest = offer.into();
    let started = Instant::now();
    let who = conn.describe();
    let counters = Arc::new(Counters::default());
    let res = push_inner(conn, lib, manifest, opts, report, &counters, &who).await;
    report.chunks_sent += counters.chunks.load(Ordering::Relaxed);
    if let Some(h) = counters
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        let ms = |us: u64| us as f64 / 1000.0;
        report.chunk_latency = Some(ChunkLatency {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        });
    }
    report.bytes_sent += counters.bytes.load(Ordering::Relaxed);
    report.committed = res.is_ok();
    report.elapsed = started.elapsed();
    res
}

async fn push_inner(
    conn: &Conn,
    lib: &SharedLibrary,
    manifest: Offer<'_>,
    opts: &PushOptions,
    report: &mut PushReport,
    counters: &Arc<Counters>,
    who: &str,
) -> Result<()> {
    let streams = conn.config.data_streams.max(1);
    let (mut csend, crecv) = conn.inner.open_bi().await.map_err(|e| conn_error(who, e))?;
    let session = quinn::VarInt::from(csend.id()).into_inner();
    let mut preamble = vec![KIND_PUSH];
    preamble.extend_from_slice(&streams.to_le_bytes());
    csend
        .write_all(&preamble)
        .await
        .map_err(|e| write_error(who, e))?;
    // The manifest is offered from its stored file, read one part at a time.
    let (package, version) = manifest.version();
    let source = ManifestSource::open(lib, manifest, conn.config.progress_timeout).await?;
    let mut sender = Sender::offering(
        package.clone(),
        version,
        source.chunks.clone(),
        source.len,
        source.hash,
        streams,
    )?;
    let mut ctl = spawn_reader(crecv, who.to_string());

    // Hello, then Offer and the manifest's parts, until the receiver's Need parts and
    // NeedEnd name what it lacks.
    let (step, stall) = (conn.config.step_timeout, conn.config.progress_timeout);
    let mut needed = None;
    let mut todo: VecDeque<SenderEvent> = VecDeque::new();
    while needed.is_none() {
        let flushed = within(stall, who, "reading by the receiver", async {
            flush_sender(&mut sender, &mut csend, who).await
        })
        .await;
        if let Err(e) = flushed {
            return Err(abort_reason(&mut sender, &mut ctl, &mut csend, who, e).await);
        }
        if let Some(event) = todo.pop_front() {
            let SenderEvent::ReadManifest { offset, len } = event else {
                return Err(Error::Misuse(format!(
                    "{who}: the sender asked for {event:?} before the receiver's Need ended"
                )));
            };
            let part = match source.read(offset, len).await {
                Ok(p) => p,
                Err(e) => {
                    sender.abort(&e.to_string());
                    flush_sender(&mut sender, &mut csend, who).await?;
                    return Err(e);
                }
            };
            match sender.manifest_part(offset, part) {
                Ok(events) => todo.extend(events),
                Err(e) => {
                    let _ = flush_sender(&mut sender, &mut csend, who).await;
                    return Err(e);
                }
            }
            continue;
        }
        let msg = match tokio::time::timeout(step, next_control(&mut ctl, who)).await {
            Ok(m) => m,
            Err(_) => return Err(stalled(who, "Hello or Need from the receiver", step)),
        };
        let need_end = matches!(msg, Ok(Message::NeedEnd));
        let events = handle_or_abort(&mut sender, msg, &mut csend, who).await?;
        if need_end {
            let mut ids = Vec::with_capacity(events.len());
            for event in events {
                match event {
                    SenderEvent::ReadChunk(id) => ids.push(id),
                    other => {
                        return Err(Error::Misuse(format!(
                            "{who}: the sender asked for {other:?} after the receiver's Need"
                        )));
                    }
                }
            }
            needed = Some(ids);
        } else {
            todo.extend(events);
        }
    }
    drop(source);
    let needed = needed.unwrap_or_default();
    // Located once and their packs held open: a collection on this host during the session
    // moves chunks and deletes packs, but cannot take these bytes away (and every read checks
    // the record it finds names the chunk asked for). A relay locates what is here now and
    // the rest as it arrives (`feed_relay`).
    let relay = matches!(manifest, Offer::Relay(..));
    let first = if relay {
        lib.read_view_present(needed).await
    } else {
        lib.read_view(needed, package.clone(), version)
            .await
            .map(|v| (v, Vec::new()))
    };
    let (view, arriving) = match first {
        Ok(v) => v,
        Err(e) => {
            sender.abort(&e.to_string());
            flush_sender(&mut sender, &mut csend, who).await?;
            return Err(e);
        }
    };
    let clens = || view.chunks().iter().map(|(_, l)| l.clen as u64);
    report.chunks_needed += (view.chunks().len() + arriving.len()) as u64;
    report.bytes_needed += clens().sum::<u64>();
    report.max_chunk = clens().max().unwrap_or(0);
    if let Some(p) = &opts.progress {
        p.start(
            "send",
            (view.chunks().len() + arriving.len()) as u64,
            clens().sum(),
        );
    }

    // Data streams pull chunks from one queue, so a slow stream never holds the others up.
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(QUEUED);
    let out_rx = Arc::new(tokio::sync::Mutex::new(out_rx));
    let mut writers = tokio::task::JoinSet::new();
    for index in 0..streams {
        let conn = conn.inner.clone();
        let rx = out_rx.clone();
        let counters = counters.clone();
        let progress = opts.progress.clone();
        let limiter = opts.limiter.clone();
        let priority = opts.priority;
        let who = who.to_string();
        writers.spawn(async move {
            let mut s = within(stall, &who, "credit for a data stream", async {
                conn.open_uni().await.map_err(|e| conn_error(&who, e))
            })
            .await?;
            let mut head = vec![KIND_DATA];
            head.extend_from_slice(&session.to_le_bytes());
            head.extend_from_slice(&index.to_le_bytes());
            // A receiver that stops reading stalls these writes: past the progress deadline
            // the stream fails and everything the push holds is released.
            let reading = "reading by the receiver";
            within(stall, &who, reading, async {
                s.write_all(&head).await.map_err(|e| write_error(&who, e))
            })
            .await?;
            loop {
                let next = rx.lock().await.recv().await;
                let Some(c) = next else { break };
                // A closing window stops the transfer between chunks, never inside one.
                if let Some(l) = &limiter {
                    l.admit(priority).await;
                }
                let begun = Instant::now();
                let header = chunk_header(&c.id, c.ulen, c.flags, c.data.len());
                within(stall, &who, reading, async {
                    s.write_all(&header).await.map_err(|e| write_error(&who, e))
                })
                .await?;
                let mut off = 0;
                while off < c.data.len() {
                    let end = (off + SLICE).min(c.data.len());
                    if let Some(l) = &limiter {
                        l.pace((end - off) as u64).await;
                    }
                    within(stall, &who, reading, async {
                        s.write_chunk(c.data.slice(off..end)).await.map_err(|e| {
                            tracing::debug!(index, error = %e, "data stream write failed");
                            write_error(&who, e)
                        })
                    })
                    .await?;
                    counters
                        .bytes
                        .fetch_add((end - off) as u64, Ordering::Relaxed);
                    if let Some(p) = &progress {
                        p.add_bytes((end - off) as u64);
                    }
                    off = end;
                }
                counters.chunks.fetch_add(1, Ordering::Relaxed);
                counters.record(begun.elapsed());
                if let Some(p) = &progress {
                    p.add_file();
                }
            }
            tracing::debug!(index, "data stream done");
            s.finish().map_err(|e| Error::Connection {
                peer: who.clone(),
                reason: format!("cannot finish a data stream: {e}"),
                remedy: "retry to resume",
            })?;
            Ok::<u16, Error>(index)
        });
    }

    // Only the writers hold the queue's receiving end: when they have all failed, sending to
    // it fails instead of waiting forever. Dropping the sending end (on FinishData) lets each
    // writer drain the queue and finish its stream.
    drop(out_rx);
    let mut out_tx = Some(out_tx);

    // Chunk reads run on a blocking thread with several in flight on the block engine, view
    // by view: one for a stored version, more as chunks arrive for a relay.
    let (read_tx, mut read_rx) = mpsc::channel::<Result<ReadChunk>>(QUEUED);
    let (view_tx, view_rx) = std::sync::mpsc::channel::<ReadView>();
    let _ = view_tx.send(view);
    // Bytes and the largest chunk of the views after the first (a relay's), for the report.
    let later = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let feeder = match (relay, arriving.is_empty()) {
        (true, false) => Some(tokio::spawn(feed_relay(
            lib.clone(),
            arriving,
            (package.clone(), version),
            view_tx,
            read_tx.clone(),
            (stall, who.to_string()),
            (later.clone(), opts.progress.clone()),
        ))),
        _ => {
            drop(view_tx);
            None
        }
    };
    let reader = tokio::task::spawn_blocking(move || {
        for view in view_rx {
            let mut inflight = VecDeque::new();
            let mut todo = 0..view.chunks().len();
            loop {
                while inflight.len() < READ_AHEAD {
                    let Some(i) = todo.next() else { break };
                    inflight.push_back((view.chunks()[i], view.read(i)));
                }
                let Some(((id, loc), read)) = inflight.pop_front() else {
                    break;
                };
                let item = read
                    .wait()
                    .map(|data| (id, loc.ulen, loc.flags, data))
                    .map_err(Error::from);
                let failed = item.is_err();
                if read_tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        }
    });

    tracing::debug!(peer = %who, chunks = report.chunks_needed, "sending chunks");
    let result: Result<()> = async {
        loop {
            // The state machine says where each item goes; until FinishData, chunks keep
            // coming from the reader.
            while let Some(t) = sender.poll_transmit() {
                match t {
                    Transmit::Data {
                        id,
                        ulen,
                        flags,
                        data,
                    } => {
                        let Some(tx) = &out_tx else {
                            return Err(Error::Misuse(format!(
                                "{who}: the sender queued a chunk after FinishData"
                            )));
                        };
                        let c = Outgoing {
                            id,
                            ulen,
                            flags,
                            data: Bytes::from(data),
                        };
                        if tx.send(c).await.is_err() {
                            // Every writer failed: its error is reported below.
                            return Ok(());
                        }
                    }
                    Transmit::FinishData => out_tx = None,
                    Transmit::Control(m) => write_control(&mut csend, who, vec![m]).await?,
                }
            }
            if out_tx.is_none() {
                return Ok(());
            }
            tokio::select! {
                item = read_rx.recv() => {
                    let Some(item) = item else {
                        return Err(Error::Misuse(format!(
                            "{who}: the chunk reader stopped before every needed chunk was read"
                        )));
                    };
                    let (id, ulen, flags, data) = item?;
                    sender.chunk_ready(id, ulen, flags, data)?;
                }
                msg = next_control(&mut ctl, who) => {
                    // The receiver speaks before Done only to abort.
                    handle_or_abort(&mut sender, msg, &mut csend, who).await?;
                }
            }
        }
    }
    .await;
    drop(out_tx);
    tracing::debug!(peer = %who, ok = result.is_ok(), "chunks dispatched");
    if let Some(f) = &feeder {
        f.abort();
    }
    report.bytes_needed += later.0.load(Ordering::Relaxed);
    report.max_chunk = report.max_chunk.max(later.1.load(Ordering::Relaxed));
    if let Err(e) = result {
        reader.abort();
        writers.abort_all();
        if !matches!(e, Error::Connection { .. } | Error::PeerAborted { .. }) {
            if !sender.is_failed() {
                sender.abort(&e.to_string());
            }
            let _ = flush_sender(&mut sender, &mut csend, who).await;
        }
        return Err(e);
    }
    // Let the reader finish (it stops when nobody takes its chunks) and release its library
    // handle.
    drop(read_rx);
    let _ = reader.await;
    tracing::debug!(peer = %who, "joining data streams");
    while let Some(joined) = writers.join_next().await {
        match joined {
            Ok(Ok(index)) => sender.data_stream_finished(index)?,
            Ok(Err(e)) => {
                writers.abort_all();
                return Err(abort_reason(&mut sender, &mut ctl, &mut csend, who, e).await);
            }
            Err(e) => return Err(Error::Misuse(format!("a data stream task failed: {e}"))),
        }
    }
    // Every data stream finished: the state machine queued Done for the control stream.
    let done = control_messages(&mut sender, who)?;
    if !done.contains(&Message::Done) {
        return Err(Error::Misuse(format!(
            "{who}: every data stream finished but the sender queued no Done"
        )));
    }
    write_control(&mut csend, who, done).await?;
    while !sender.is_done() {
        // The receiver commits (syncs its library, stores the manifest) before it answers.
        let msg = match tokio::time::timeout(stall, next_control(&mut ctl, who)).await {
            Ok(m) => m,
            Err(_) => return Err(stalled(who, "Committed from the receiver", stall)),
        };
        handle_or_abort(&mut sender, msg, &mut csend, who).await?;
    }
    let _ = csend.finish();
    Ok(())
}

/// Chunks a relay looks up at a time, at most (see `feed_relay`).
const RELAY_LOOKUPS: usize = 8192;

/// A chunk read for sending: ID, uncompressed length, flags, stored bytes.
type ReadChunk = (ChunkId, u32, u8, Vec<u8>);

/// A relay's chunks that were not here when the receiver asked: each time the store commits,
/// the ones now present are located and handed to the reader as one more view. A chunk that
/// does not arrive within `stall` of the last progress ends the push with an error (through
/// the reader's queue), and the relay's sender retries later from what the receiver holds.
async fn feed_relay(
    lib: SharedLibrary,
    mut arriving: Vec<ChunkId>,
    (package, version): (PackageId, u32),
    views: std::sync::mpsc::Sender<ReadView>,
    errors: mpsc::Sender<Result<ReadChunk>>,
    (stall, who): (Duration, String),
    (later, progress): (Arc<(AtomicU64, AtomicU64)>, Option<Arc<Progress>>),
) {
    let mut arrivals = lib.arrivals();
    // Progress is a chunk of this version arriving, not any commit (other sessions' too).
    let mut deadline = tokio::time::Instant::now() + stall;
    // Whether the last look found chunks: then the next look needs no new commit (what it
    // checks may all be here already).
    let mut found = false;
    while !arriving.is_empty() {
        if !found
            && tokio::time::timeout_at(deadline, arrivals.changed())
                .await
                .map_or(true, |r| r.is_err())
        {
            let _ = errors
                .send(Err(Error::Connection {
                    peer: who.clone(),
                    reason: format!(
                        "relaying {package} v{version}: {} chunks did not arrive at this site within {stall:?}",
                        arriving.len()
                    ),
                    remedy: "the send is retried once the version is stored here",
                }))
                .await;
            return;
        }
        arrivals.borrow_and_update();
        // Only the first chunks still missing are looked up at a time: chunks arrive in about
        // the order this push needs them (both in ID order), and looking up every remaining
        // chunk at every commit would cost the square of the package's chunk count.
        let look = arriving.len().min(RELAY_LOOKUPS);
        let todo: Vec<ChunkId> = arriving.drain(..look).collect();
        let (view, mut rest) = match lib.read_view_present(todo).await {
            Ok(v) => v,
            Err(e) => {
                let _ = errors.send(Err(e)).await;
                return;
            }
        };
        rest.append(&mut arriving);
        arriving = rest;
        found = !view.chunks().is_empty();
        if !found {
            continue;
        }
        deadline = tokio::time::Instant::now() + stall;
        let bytes: u64 = view.chunks().iter().map(|(_, l)| l.clen as u64).sum();
        let max = view.chunks().iter().map(|(_, l)| l.clen as u64).max();
        later.0.fetch_add(bytes, Ordering::Relaxed);
        later.1.fetch_max(max.unwrap_or(0), Ordering::Relaxed);
        if let Some(p) = &progress {
            p.add_total(0, bytes);
        }
        if views.send(view).is_err() {
            return;
        }
    }
}

/// Where a push reads the manifest it offers: the library's stored manifest file, checked,
/// hashed and its chunks listed in one streamed pass, then read one part at a time (so a large
/// manifest is never held whole), or, for a manifest the library has not stored, its
/// canonical encoding.
struct ManifestSource {
    len: u64,
    hash: [u8; 32],
    chunks: Arc<freight_core::ChunkTable>,
    bytes: ManifestBytes,
}

enum ManifestBytes {
    File(Arc<std::fs::File>, std::path::PathBuf),
    Memory(Arc<Vec<u8>>),
}

impl ManifestSource {
    /// Opens the offered version's stored manifest (or, for a relay, the manifest file of a
    /// session receiving it, waited for up to `wait`) and reads it through once.
    async fn open(lib: &SharedLibrary, offer: Offer<'_>, wait: Duration) -> Result<ManifestSource> {
        let (package, version) = offer.version();
        let p = package.clone();
        let path = lib
            .read_async(move |l| l.manifest_path(&p, version))
            .await?;
        let stored = Self::open_file(path, package.clone(), version).await?;
        if let (Some(s), Offer::Relay(_, _, hash)) = (&stored, offer)
            && s.hash != hash
        {
            return Err(freight_core::Error::BadManifest {
                what: format!("stored manifest of {package} v{version}"),
                offset: 0,
                reason: format!(
                    "it hashes to {}, the relayed version to {}",
                    freight_core::text::hex(&s.hash),
                    freight_core::text::hex(&hash)
                ),
            }
            .into());
        }
        match (stored, offer) {
            (Some(s), _) => Ok(s),
            (None, Offer::Manifest(m)) => {
                let bytes = m.encode();
                Ok(ManifestSource {
                    len: bytes.len() as u64,
                    hash: *blake3::hash(&bytes).as_bytes(),
                    chunks: Arc::new(freight_core::ChunkTable::of(m)?),
                    bytes: ManifestBytes::Memory(Arc::new(bytes)),
                })
            }
            (None, Offer::Relay(p, v, hash)) => Self::open_incoming(lib, p, v, hash, wait).await,
            (None, Offer::Stored(p, v)) => Err(freight_core::Error::NoSuchVersion {
                package: p.to_string(),
                version: v,
            }
            .into()),
        }
    }

    /// A relay's manifest: the file of a session receiving `hash` here. Waits up to `wait`
    /// for one to register; a file gone meanwhile (its session committed) is the stored one.
    async fn open_incoming(
        lib: &SharedLibrary,
        package: &PackageId,
        version: u32,
        hash: [u8; 32],
        wait: Duration,
    ) -> Result<ManifestSource> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut arrivals = lib.arrivals();
        loop {
            arrivals.borrow_and_update();
            for path in lib.incoming(&hash).into_iter().rev() {
                if let Some(s) = Self::open_file(path, package.clone(), version).await?
                    && s.hash == hash
                {
                    return Ok(s);
                }
            }
            let p = package.clone();
            let path = lib
                .read_async(move |l| l.manifest_path(&p, version))
                .await?;
            if let Some(s) = Self::open_file(path, package.clone(), version).await?
                && s.hash == hash
            {
                return Ok(s);
            }
            if tokio::time::timeout_at(deadline, arrivals.changed())
                .await
                .is_err()
            {
                return Err(freight_core::Error::NoSuchVersion {
                    package: package.to_string(),
                    version,
                }
                .into());
            }
        }
    }

    /// The manifest in the file at `path`, read through once; None when there is no such file.
    async fn open_file(
        path: std::path::PathBuf,
        package: PackageId,
        version: u32,
    ) -> Result<Option<ManifestSource>> {
        tokio::task::spawn_blocking(move || -> Result<Option<ManifestSource>> {
            let file = match std::fs::File::open(&path) {
                Ok(f) => Arc::new(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(freight_core::Error::io(&path, "open manifest", e).into()),
            };
            let len = file
                .metadata()
                .map_err(|e| freight_core::Error::io(&path, "stat manifest", e))?
                .len();
            let src = std::io::BufReader::with_capacity(1 << 16, FileAt::new(file.clone(), 0));
            let what = path.display().to_string();
            let (m, hash) = read_chunks(src, len, &what)?;
            if m.package != package || m.version != version {
                return Err(freight_core::Error::BadManifest {
                    what,
                    offset: 0,
                    reason: format!("file holds {} v{}", m.package, m.version),
                }
                .into());
            }
            Ok(Some(ManifestSource {
                len,
                hash: *hash.as_bytes(),
                chunks: Arc::new(m.chunks),
                bytes: ManifestBytes::File(file, path),
            }))
        })
        .await
        .map_err(|e| Error::Misuse(format!("reading a manifest panicked: {e}")))?
    }

    /// `len` bytes from `offset`.
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        match &self.bytes {
            ManifestBytes::Memory(b) => Ok(b[offset as usize..][..len].to_vec()),
            ManifestBytes::File(f, path) => {
                let (f, path) = (f.clone(), path.clone());
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    std::os::unix::fs::FileExt::read_exact_at(&*f, &mut buf, offset)
                        .map_err(|e| freight_core::Error::io(&path, "read manifest", e))?;
                    Ok(buf)
                })
                .await
                .map_err(|e| Error::Misuse(format!("reading a manifest panicked: {e}")))?
            }
        }
    }
}

/// A receiving session's temporary manifest file, `LIB/pending/.recv-<pid>-<n>.tmp`: the
/// parts are appended as they arrive, the manifest is checked and its chunks listed from it in
/// one streamed pass, and the store thread leases it (a second name) and commits it (moves it
/// into place); never is it held in memory. Removed when dropped uncommitted (the session
/// failed or moved on); a crash leaves it for the next opening of the library, which removes
/// temporary files under `pending/`.
#[derive(Default)]
struct IncomingManifest {
    file: Option<(Arc<std::fs::File>, std::path::PathBuf)>,
    /// The complete, checked manifest, for the store thread.
    received: Option<ReceivedManifest>,
    /// Its registration as a relay's source, from its lease until it is committed or removed.
    relay: Option<crate::store::IncomingGuard>,
}

impl IncomingManifest {
    async fn append(&mut self, lib: &SharedLibrary, data: Vec<u8>) -> Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        if self.file.is_none() {
            let dir = lib.read_async(|l| l.dir().join("pending")).await?;
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".recv-{}-{n}.tmp", std::process::id()));
            let p = path.clone();
            let file = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| freight_core::Error::io(&dir, "create lease folder", e))?;
                std::fs::File::options()
                    .read(true)
                    .append(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(|e| freight_core::Error::io(&p, "create temporary manifest", e))
            })
            .await
            .map_err(|e| Error::Misuse(format!("writing a manifest panicked: {e}")))??;
            self.file = Some((Arc::new(file), path));
        }
        let (file, path) = self.file.clone().expect("created above");
        tokio::task::spawn_blocking(move || {
            std::io::Write::write_all(&mut &*file, &data)
                .map_err(|e| freight_core::Error::io(&path, "write temporary manifest", e))
        })
        .await
        .map_err(|e| Error::Misuse(format!("writing a manifest panicked: {e}")))??;
        Ok(())
    }

    /// Reads the received manifest from the file one entry at a time (every check of the
    /// decoder) and lists its chunks (the outer error is the file's, the inner the
    /// decoder's): what the receiver checks of it.
    async fn load(&mut self, what: String) -> Result<freight_core::Result<ManifestChunks>> {
        let Some((file, path)) = self.file.clone() else {
            return Err(Error::Misuse(format!(
                "{what}: the manifest is complete but no part was written"
            )));
        };
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let len = file
                .metadata()
                .map_err(|e| freight_core::Error::io(&p, "stat temporary manifest", e))?
                .len();
            let src = std::io::BufReader::with_capacity(1 << 16, FileAt::new(file, 0));
            Ok::<_, Error>(read_chunks(src, len, &what))
        })
        .await
        .map_err(|e| Error::Misuse(format!("reading a manifest panicked: {e}")))??;
        Ok(match loaded {
            Ok((m, hash)) => {
                self.received = Some(ReceivedManifest {
                    file: path,
                    hash,
                    package: m.package.clone(),
                    version: m.version,
                    chunks: Arc::new(m.chunks.clone()),
                });
                Ok(m)
            }
            Err(e) => Err(e),
        })
    }

    /// The manifest [`load`](Self::load) checked.
    fn received(&self) -> Result<&ReceivedManifest> {
        self.received
            .as_ref()
            .ok_or_else(|| Error::Misuse("the received manifest was not loaded".into()))
    }

    /// The store thread moved the file into place: nothing to remove any more (a relay now
    /// finds the version stored).
    fn committed(&mut self) {
        self.relay = None;
        self.file = None;
    }

    fn remove(&mut self) {
        self.relay = None;
        if let Some((_, path)) = self.file.take() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// One streamed pass over manifest bytes: every check of the decoder, the chunk table and
/// the package hash; nothing but the table is kept.
fn read_chunks(
    src: impl std::io::Read,
    len: u64,
    what: &str,
) -> freight_core::Result<(ManifestChunks, blake3::Hash)> {
    let mut r = freight_core::manifest::Reader::hashing(src, len, what)?;
    let mut table = freight_core::ChunkTableBuilder::new(what);
    while let Some(e) = r.next_entry()? {
        if let freight_core::EntryKind::File { chunks, .. } = &e.kind {
            for c in chunks {
                table.push(c.id, c.len)?;
            }
        }
    }
    let hash = r
        .finish()?
        .expect("a hashing reader read to the end has a hash");
    Ok((
        ManifestChunks {
            package: r.package().clone(),
            version: r.version(),
            chunks: table.finish()?,
        },
        hash,
    ))
}

impl Drop for IncomingManifest {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A receiver that aborts a session stops its data streams too, and a writer may see the stop
/// before the Abort on the control stream is read. The Abort says why: prefer it over the bare
/// stream error. Waits at most a second (a dead connection fails the read at once).
async fn abort_reason(
    sender: &mut Sender,
    ctl: &mut mpsc::Receiver<Result<Message>>,
    csend: &mut quinn::SendStream,
    who: &str,
    e: Error,
) -> Error {
    if !matches!(e, Error::Connection { .. }) {
        return e;
    }
    match tokio::time::timeout(Duration::from_secs(1), next_control(ctl, who)).await {
        Ok(msg @ Ok(Message::Abort { .. })) => match handle_or_abort(sender, msg, csend, who).await
        {
            Err(aborted @ Error::PeerAborted { .. }) => aborted,
            _ => e,
        },
        _ => e,
    }
}

/// Writes what the sender queued for the control stream.
async fn flush_sender(sender: &mut Sender, send: &mut quinn::SendStream, who: &str) -> Result<()> {
    let msgs = control_messages(sender, who)?;
    write_control(send, who, msgs).await
}

/// Takes what the sender queued, all of it for the control stream: this is called only where
/// the state machine queues nothing else (before `Need`, after the data, after a failure), so
/// anything else is a bug of this shell.
fn control_messages(sender: &mut Sender, who: &str) -> Result<Vec<Message>> {
    let mut msgs = Vec::new();
    while let Some(t) = sender.poll_transmit() {
        match t {
            Transmit::Control(m) => msgs.push(m),
            other => {
                return Err(Error::Misuse(format!(
                    "{who}: the sender queued {other:?} where only control messages can go"
                )));
            }
        }
    }
    Ok(msgs)
}

async fn next_control(ctl: &mut mpsc::Receiver<Result<Message>>, who: &str) -> Result<Message> {
    match ctl.recv().await {
        Some(m) => m,
        None => Err(Error::Connection {
            peer: who.to_string(),
            reason: "the peer closed the session's control stream".into(),
            remedy: "see the peer's log; retry to resume",
        }),
    }
}

/// Hands `msg` (or the error reading it) to the sender; on a protocol error the queued Abort
/// goes out before returning.
async fn handle_or_abort(
    sender: &mut Sender,
    msg: Result<Message>,
    send: &mut quinn::SendStream,
    who: &str,
) -> Result<Vec<SenderEvent>> {
    let res = match msg {
        Ok(m) => sender.handle(m),
        Err(e @ Error::Protocol { .. }) => Err(sender.decode_failed(e)),
        Err(e) => return Err(e),
    };
    match res {
        Ok(ev) => Ok(ev),
        Err(e) => {
            let _ = flush_sender(sender, send, who).await;
            let _ = send.finish();
            Err(e)
        }
    }
}

/// How [`push_resuming`] retries after a connection fails.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Sessions to try in all (the first included).
    pub attempts: u32,
    /// Wait between attempts.
    pub delay: Duration,
}

impl Default for Resume {
    fn default() -> Self {
        Resume {
            attempts: 3,
            delay: Duration::from_secs(1),
        }
    }
}

/// Pushes until the receiver committed: after a cut connection or a restart of the receiver,
/// connects again and runs the same session, in which the receiver asks only for what it still
/// lacks. Only connection failures are retried; a refusal or a protocol error is final.
/// Returns one report per session tried.
pub async fn push_resuming(
    node: &Node,
    addr: SocketAddr,
    peer: SiteCode,
    lib: &SharedLibrary,
    offer: impl Into<Offer<'_>>,
    opts: &PushOptions,
    resume: &Resume,
) -> (Vec<PushReport>, Result<()>) {
    let manifest = offer.into();
    let mut reports = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut report = PushReport::default();
        let res = match node.connect(addr, peer).await {
            Ok(conn) => {
                let r = push(&conn, lib, manifest, opts, &mut report).await;
                let stats = conn.stats();
                tracing::debug!(peer = %conn.describe(), mtu = stats.path.current_mtu, rtt = ?stats.path.rtt, cwnd = stats.path.cwnd, lost = stats.path.lost_packets, sent_packets = stats.path.sent_packets, congestion_events = stats.path.congestion_events, "session ended");
                if r.is_ok() {
                    conn.close("done");
                }
                r
            }
            Err(e) => Err(e),
        };
        reports.push(report);
        match res {
            Err(Error::Connection { .. }) if attempt < resume.attempts => {
                tracing::info!(attempt, "connection to {peer} at {addr} failed; resuming");
                tokio::time::sleep(resume.delay).await;
            }
            other => return (reports, other),
        }
    }
}

/// One session on the receiving side, shared by its control and data stream tasks.
struct Session {
    receiver: Mutex<Receiver>,
    /// When the sender last sent anything on this session (a message or chunk bytes).
    active: Mutex<Instant>,
    /// Woken when a data stream ends or a data stream task fails.
    changed: Notify,
    failure: Mutex<Option<Error>>,
    /// The package version offered (the transfer whose stored bytes count against the peer's
    /// quota of unfinished transfers).
    transfer: Mutex<Option<crate::limits::Transfer>>,
    /// Events a data stream's end released (the receiver acting on a held `Done`), for the
    /// control stream's task to perform.
    released: Mutex<Vec<ReceiverEvent>>,
}

impl Session {
    fn fail(&self, e: Error) {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        self.changed.notify_one();
    }

    fn take_failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn release(&self, events: Vec<ReceiverEvent>) {
        self.released
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(events);
        self.changed.notify_one();
    }

    fn take_released(&self) -> Vec<ReceiverEvent> {
        std::mem::take(&mut *self.released.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn receiver(&self) -> std::sync::MutexGuard<'_, Receiver> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sender did something now.
    fn touch(&self) {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn last_active(&self) -> Instant {
        *self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Sessions = Arc<Mutex<HashMap<u64, Arc<Session>>>>;

/// What a receiving session ended with.
#[derive(Debug)]
pub struct Received {
    /// The peer's site.
    pub peer: SiteCode,
    /// The package and version offered, once known.
    pub package: Option<(freight_core::PackageId, u32)>,
    /// Ok once committed.
    pub result: Result<()>,
}

/// Serves push sessions on one connection into `lib` until the connection closes. Each
/// finished session is reported on `events` (if given). A push is allowed only if the
/// authorization table lets the peer make `push` ([`Request::Push`] on a connection it
/// opened, [`Request::RequestedPush`] on one this host opened to ask for it); otherwise its
/// session is aborted with [`ProtocolError::Unauthorized`] before anything is read. Command
/// streams are answered by `commands`; without a handler they are refused like any unknown
/// stream kind.
pub async fn serve_connection(
    conn: Conn,
    lib: SharedLibrary,
    events: Option<mpsc::UnboundedSender<Received>>,
    commands: Option<Arc<dyn CommandHandler>>,
    push: Request,
) {
    let sessions: Sessions = Arc::default();
    let who = conn.describe();
    loop {
        tokio::select! {
            bi = conn.inner.accept_bi() => match bi {
                Ok((send, mut recv)) => {
                    let (lib, sessions, who, events) = (lib.clone(), sessions.clone(), who.clone(), events.clone());
                    let (commands, conn) = (commands.clone(), conn.clone());
                    let peer = conn.peer().code;
                    tokio::spawn(async move {
                        let mut kind = [0u8; 1];
                        if let Err(e) = recv.read_exact(&mut kind).await {
                            tracing::debug!(peer = %who, error = %e, "stream ended before its kind");
                            return;
                        }
                        let mut offered = None;
                        let result = match (kind[0], commands.as_deref()) {
                            (KIND_COMMAND, Some(h)) => {
                                if let Err(e) = command::answer(conn, send, recv, h).await {
                                    tracing::warn!(peer = %who, error = %e, "command failed");
                                }
                                return;
                            }
                            (KIND_PUSH, _) => match conn.authorize(push) {
                                Ok(()) => match conn.limits.begin_session(peer) {
                                    Some(_slot) => {
                                        let r = receive_session(send, recv, &lib, &sessions, &who, &conn.config, &mut offered).await;
                                        if let (Ok(()), Some(t)) = (&r, &offered) {
                                            conn.limits.settle(peer, t);
                                        }
                                        r
                                    }
                                    None => {
                                        let busy = format!(
                                            "site {peer} already runs {} push sessions into this host; retry when one ended",
                                            conn.limits.sessions_per_peer()
                                        );
                                        abort_session(send, &who, ProtocolError::Aborted, busy).await
                                    }
                                },
                                Err(refused) => abort_session(send, &who, ProtocolError::Unauthorized, refused.to_string()).await,
                            },
                            // Without a handler a command stream is refused like any unknown
                            // kind; its streams end at once.
                            (other, _) => {
                                drop((send, recv));
                                Err(Error::Protocol {
                                    code: ProtocolError::UnknownType,
                                    detail: format!("{who}: control stream of unknown kind {other}"),
                                })
                            }
                        };
                        if let Err(e) = &result {
                            tracing::warn!(peer = %who, error = %e, "receiving session failed");
                            // Keep what was verified: the resumed session will not ask for it.
                            if let Err(e) = lib.flush().await {
                                tracing::warn!(error = %e, "storing received chunks failed");
                            }
                        }
                        if let Some(tx) = events {
                            let _ = tx.send(Received { peer, package: offered, result });
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(peer = %who, error = %e, "connection ended");
                    break;
                }
            },
            uni = conn.inner.accept_uni() => match uni {
                Ok(recv) => {
                    let (lib, sessions, who) = (lib.clone(), sessions.clone(), who.clone());
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        // A bad data stream ends itself (and its session, if it names one),
                        // never the connection's other sessions.
                        if let Err(e) = receive_data(recv, &lib, &sessions, &who, &conn).await {
                            tracing::warn!(peer = %who, error = %e, "data stream refused");
                        }
                    });
                }
                Err(_) => break,
            },
        }
    }
    let _ = lib.flush().await;
}

/// Aborts a push session before it starts (refused by the authorization table, or the peer
/// over its budget), telling the sender why.
async fn abort_session(
    mut send: quinn::SendStream,
    who: &str,
    code: ProtocolError,
    reason: String,
) -> Result<()> {
    let _ = write_control(&mut send, who, vec![Message::abort(code, &reason)]).await;
    let _ = send.finish();
    Err(Error::Protocol {
        code,
        detail: reason,
    })
}

/// Receives one push session on a control stream whose kind byte was already read.
async fn receive_session(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    lib: &SharedLibrary,
    sessions: &Sessions,
    who: &str,
    cfg: &crate::quic::NodeConfig,
    offered: &mut Option<(freight_core::PackageId, u32)>,
) -> Result<()> {
    let mut streams = [0u8; 2];
    within(cfg.step_timeout, who, "session preamble", async {
        recv.read_exact(&mut streams)
            .await
            .map_err(|e| Error::Connection {
                peer: who.to_string(),
                reason: format!("session preamble not received: {e}"),
                remedy: "retry to resume",
            })
    })
    .await?;
    let id = quinn::VarInt::from(send.id()).into_inner();
    let session = Arc::new(Session {
        active: Mutex::new(Instant::now()),
        receiver: Mutex::new(Receiver::with_data_streams(u16::from_le_bytes(streams))),
        changed: Notify::new(),
        failure: Mutex::new(None),
        transfer: Mutex::new(None),
        released: Mutex::new(Vec::new()),
    });
    sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, session.clone());
    let res = drive_receiver(&session, &mut send, recv, lib, who, cfg, offered).await;
    sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    if res.is_err() {
        let abort: Vec<Message> =
            std::iter::from_fn(|| session.receiver().poll_transmit()).collect();
        let _ = write_control(&mut send, who, abort).await;
    }
    let _ = send.finish();
    res
}

async fn drive_receiver(
    session: &Arc<Session>,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
    lib: &SharedLibrary,
    who: &str,
    cfg: &crate::quic::NodeConfig,
    offered: &mut Option<(freight_core::PackageId, u32)>,
) -> Result<()> {
    let mut ctl = spawn_reader(recv, who.to_string());
    let mut incoming = IncomingManifest::default();
    loop {
        // In batches: a Need for a million chunks is made part by part as it is written.
        loop {
            let msgs: Vec<Message> = std::iter::from_fn(|| session.receiver().poll_transmit())
                .take(CONTROL_BATCH)
                .collect();
            if msgs.is_empty() {
                break;
            }
            write_control(send, who, msgs).await?;
        }
        if session.receiver().is_done() {
            return Ok(());
        }
        // Until the Offer, the sender has one step's time; then the session lives as long as
        // the sender keeps sending something (data streams touch it with every read).
        let (limit, step) = if offered.is_none() {
            (cfg.step_timeout, "Hello and Offer from the sender")
        } else {
            (cfg.progress_timeout, "data from the sender")
        };
        let deadline = tokio::time::Instant::from_std(session.last_active() + limit);
        let msg = tokio::select! {
            m = next_control(&mut ctl, who) => match m {
                Ok(m) => {
                    session.touch();
                    m
                }
                Err(e) => return Err(session.receiver().decode_failed(e)),
            },
            _ = tokio::time::sleep_until(deadline) => {
                if session.last_active() + limit > Instant::now() {
                    continue;
                }
                let e = stalled(who, step, limit);
                return Err(abort_with(session, e));
            }
            _ = session.changed.notified() => {
                if let Some(e) = session.take_failure() {
                    // A data stream failed (stalled, cut, bad bytes): the sender is told why
                    // on the control stream, unless the receiver already queued its Abort.
                    return Err(abort_with(session, e));
                }
                // The last data stream's end let the receiver act on a held Done.
                perform(session, session.take_released(), lib, who, &mut incoming).await?;
                continue;
            }
        };
        if let Message::Offer {
            package, version, ..
        } = &msg
        {
            *offered = Some((package.clone(), *version));
            *session.transfer.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((package.clone(), *version));
        }
        let events = session.receiver().handle(msg)?;
        perform(session, events, lib, who, &mut incoming).await?;
    }
}

/// Does what the receiver asked, answering it where it waits for an answer.
async fn perform(
    session: &Session,
    events: Vec<ReceiverEvent>,
    lib: &SharedLibrary,
    who: &str,
    incoming: &mut IncomingManifest,
) -> Result<()> {
    let mut events = VecDeque::from(events);
    while let Some(ev) = events.pop_front() {
        match ev {
            ReceiverEvent::ManifestPart { data } => {
                if let Err(e) = incoming.append(lib, data).await {
                    return Err(abort_with(session, e));
                }
            }
            ReceiverEvent::ManifestComplete => {
                let what = match session.receiver().offered() {
                    Some((p, v)) => format!("manifest of {p} v{v} offered by {who}"),
                    None => format!("manifest offered by {who}"),
                };
                let decoded = match incoming.load(what).await {
                    Ok(d) => d,
                    Err(e) => return Err(abort_with(session, e)),
                };
                let next = session.receiver().manifest_loaded(decoded)?;
                events.extend(next);
            }
            ReceiverEvent::Lookup { chunks: _ } => {
                let lacking = match lib.lacking(incoming.received()?).await {
                    Ok(l) => l,
                    Err(e) => return Err(abort_with(session, e)),
                };
                // Leased, so complete and kept: a relay may offer it from here on.
                incoming.relay = Some(lib.register_incoming(incoming.received()?));
                session.receiver().lacking_mask(lacking)?;
            }
            ReceiverEvent::Commit => {
                let received = incoming.received()?.clone();
                if let Err(e) = lib.commit_manifest(&received).await {
                    return Err(abort_with(session, e));
                }
                incoming.committed();
                session.receiver().committed()?;
                tracing::info!(peer = %who, package = %received.package, version = received.version, "received and stored package version");
            }
            // Only a session without data streams carries chunks on its control stream
            // (Freight's sender always opens some); the receiver verified them in `handle`.
            ReceiverEvent::Store {
                id,
                ulen,
                flags,
                data,
            } => lib.append(id, ulen, flags, data).await?,
        }
    }
    Ok(())
}

fn abort_with(session: &Session, e: Error) -> Error {
    session.receiver().abort(&e.to_string());
    e
}

async fn receive_data(
    mut recv: quinn::RecvStream,
    lib: &SharedLibrary,
    sessions: &Sessions,
    who: &str,
    conn: &Conn,
) -> Result<()> {
    let mut pre = [0u8; 11];
    let read = within(
        conn.config.step_timeout,
        who,
        "data stream preamble",
        async {
            recv.read_exact(&mut pre)
                .await
                .map_err(|e| Error::Connection {
                    peer: who.to_string(),
                    reason: format!("data stream preamble not received: {e}"),
                    remedy: "retry to resume",
                })
        },
    )
    .await;
    if let Err(e) = read {
        let _ = recv.stop(0u32.into());
        return Err(e);
    }
    let id = u64::from_le_bytes(pre[1..9].try_into().expect("8 bytes"));
    let index = u16::from_le_bytes(pre[9..11].try_into().expect("2 bytes"));
    let session = sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned();
    let (true, Some(session)) = (pre[0] == KIND_DATA, session) else {
        let _ = recv.stop(0u32.into());
        return Err(Error::Protocol {
            code: ProtocolError::UnexpectedMessage,
            detail: format!(
                "{who}: data stream (kind {}) for unknown session {id}",
                pre[0]
            ),
        });
    };
    match receive_chunks(&mut recv, lib, &session, index, who, conn).await {
        Ok(released) => session.release(released),
        Err(e) => {
            let _ = recv.stop(0u32.into());
            session.fail(e);
        }
    }
    Ok(())
}

/// Receives the chunks of data stream `index` until it ends; returns what its end released.
async fn receive_chunks(
    recv: &mut quinn::RecvStream,
    lib: &SharedLibrary,
    session: &Session,
    index: u16,
    who: &str,
    conn: &Conn,
) -> Result<Vec<ReceiverEvent>> {
    let mut dec = FrameDecoder::new();
    let verifier = session.receiver().data_stream_opened(index)?;
    let (peer, limits) = (conn.peer().code, conn.limits.clone());
    let stall = conn.config.progress_timeout;
    // Memory for the chunk being assembled: its frame (when large) and the plain length it
    // decompresses to, reserved in one piece as soon as its header is here, before the rest
    // is read. One reservation per chunk at a time, so streams never wait on each other's.
    let mut memory: Option<crate::limits::Reservation> = None;
    loop {
        if memory.is_none()
            && let Some((len, ulen, flags)) = dec.pending_chunk()
        {
            let need = need_for(len, ulen, flags);
            if need > 0 {
                memory = Some(limits.reserve(peer, need).await);
            }
        }
        let chunk = within(stall, who, "chunk bytes from the sender", async {
            recv.read_chunk(usize::MAX, true)
                .await
                .map_err(|e| read_error(who, e))
        })
        .await?;
        session.touch();
        let Some(chunk) = chunk else {
            if dec.buffered() > 0 {
                let e = Error::Protocol {
                    code: ProtocolError::Malformed,
                    detail: format!("{who}: data stream ended inside a frame"),
                };
                return Err(session.receiver().decode_failed(e));
            }
            return session.receiver().data_stream_ended(index);
        };
        dec.push(&chunk.bytes);
        loop {
            let msg = match dec.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(session.receiver().decode_failed(e)),
            };
            // A chunk whose whole frame arrived in one read was not reserved yet: reserve its
            // plain length before it is decompressed. Held until it is stored.
            let _memory = match (memory.take(), &msg) {
                (Some(m), _) => Some(m),
                (None, Message::Chunk { ulen, flags, .. }) => match need_for(0, *ulen, *flags) {
                    0 => None,
                    n => Some(limits.reserve(peer, n).await),
                },
                (None, _) => None,
            };
            // Decompressing and hashing is CPU work: off the async workers, one per core.
            let _cpu = limits.verify_slot().await;
            let v = verifier.clone();
            let checked = tokio::task::spawn_blocking(move || v.verify_data(msg))
                .await
                .map_err(|e| Error::Misuse(format!("chunk verification task failed: {e}")))?;
            drop(_cpu);
            let event = session.receiver().handle_checked(checked)?;
            if let ReceiverEvent::Store {
                id,
                ulen,
                flags,
                data,
            } = event
            {
                // Stored bytes of an unfinished transfer count against the peer's quota.
                let transfer = session
                    .transfer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(t) = transfer
                    && let Err(over) = limits.charge(peer, &t, data.len() as u64)
                {
                    return Err(session.receiver().decode_failed(Error::Protocol {
                        code: ProtocolError::Aborted,
                        detail: over.to_string(),
                    }));
                }
                lib.append(id, ulen, flags, data).await?;
            }
        }
    }
}

/// Receive memory a chunk frame of `len` bytes needs: the frame when it is large (smaller
/// ones are bounded by the stream windows) and, when compressed, the plain bytes it
/// decompresses to.
fn need_for(len: u32, ulen: u32, flags: u8) -> u64 {
    let frame = if len > crate::limits::RESERVE_ABOVE {
        len as u64
    } else {
        0
    };
    let plain = if flags & crate::protocol::FLAG_ZSTD != 0 {
        ulen as u64
    } else {
        0
    };
    frame + plain
}

/// Accepts connections on `node` and serves each (see [`serve_connection`]) until the
/// endpoint closes. Refused handshakes are logged with the peer's fingerprint.
pub async fn serve(
    node: Node,
    lib: SharedLibrary,
    events: Option<mpsc::UnboundedSender<Received>>,
    commands: Option<Arc<dyn CommandHandler>>,
) {
    let refusals = Arc::new(std::sync::Mutex::new(RefusalLog::default()));
    while let Some(accepting) = node.accept().await {
        let (lib, events, commands) = (lib.clone(), events.clone(), commands.clone());
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let from = accepting.remote();
            match accepting.establish().await {
                Ok(conn) => {
                    tracing::info!(peer = %conn.describe(), "accepted connection");
                    serve_connection(conn, lib, events, commands, Request::Push).await;
                }
                Err(e) => refusals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .note(from, &e),
            }
        });
    }
}

/// Refused handshakes, logged one in full and then counted: a flood of them (any host can
/// start a handshake) costs a line every [`REFUSAL_REPORT_EVERY`], not a line each.
#[derive(Default)]
struct RefusalLog {
    last_report: Option<std::time::Instant>,
    since: u64,
}

/// How often refused handshakes are reported at most.
const REFUSAL_REPORT_EVERY: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn note(&mut self, from: std::net::SocketAddr, e: &Error) {
        self.since += 1;
        if self
            .last_report
            .is_some_and(|t| t.elapsed() < REFUSAL_REPORT_EVERY)
        {
            return;
        }
        if self.since == 1 {
            tracing::warn!(%from, error = %e, "refused a connection");
        } else {
            tracing::warn!(
                refused = self.since,
                %from,
                error = %e,
                "refused {} connections since the last report; the last one",
                self.since
            );
        }
        self.last_report = Some(std::time::Instant::now());
        self.since = 0;
    }
}
