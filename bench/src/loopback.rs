//! Chunk transport over loopback QUIC inside one process, for the `quic-raw` and `throttle`
//! benchmarks: two sites that trust each other ([`Sites`]), a sending and a receiving
//! [`Node`], and a timed stream of framed chunks from memory to memory ([`stream_chunks`]).
//!
//! The sender writes `Chunk` frames ([`chunk_header`] + data, the data handed to quinn as
//! [`Bytes`] slices without copying) on several unidirectional streams, like a push session's
//! data streams do, optionally paced by a [`RouteLimiter`] slice by slice. The receiver reads
//! each stream with `read_chunk` and decodes every frame with a [`FrameDecoder`], so what is
//! measured is chunk transport, not a byte sink. Arrivals are counted in time bins, from which
//! the rate over a window ([`rate_between`]), the time a rate change takes to show
//! ([`reach_time`]) and how steadily a rate holds ([`worst_window_error`]) are computed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use freight_core::{ChunkId, Role, SiteCode, SiteKey, TrustStore};
use freight_transport::protocol::chunk_header;
use freight_transport::quic::{Conn, Node, NodeConfig};
use freight_transport::tls::SiteTls;
use freight_transport::{FrameDecoder, Message, Priority, RouteLimiter, RouteThrottle};

/// What can go wrong while setting up or running a loopback stream.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// A site key or trust store could not be made.
    #[error(transparent)]
    Core(#[from] freight_core::Error),
    /// The QUIC shell failed (bind, handshake, TLS).
    #[error(transparent)]
    Transport(#[from] freight_transport::Error),
    /// A stream failed or carried something else than whole `Chunk` frames.
    #[error("loopback stream: {0}")]
    Stream(String),
}

/// Longest wait for the loopback handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait, past the sending duration, for every stream to finish.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// Site code of the sending side.
pub const SENDER: &str = "CAS";
/// Site code of the receiving side.
pub const RECEIVER: &str = "PS1";

/// Two sites with keys and trust stores in one folder, each trusting the other.
pub struct Sites {
    sender: SiteKey,
    receiver: SiteKey,
    sender_trust: PathBuf,
    receiver_trust: PathBuf,
}

impl Sites {
    /// Creates (or reopens) the two sites' keys and trust stores in `dir`.
    pub fn create(dir: &Path) -> Result<Sites, LoopbackError> {
        let site = |code: &str| -> Result<(SiteKey, PathBuf), LoopbackError> {
            let code = SiteCode::parse(code)?;
            let key = SiteKey::load_or_create(&dir.join(format!("{code}.key")), code)?;
            let trust = dir.join(format!("{code}-trust"));
            TrustStore::open(&trust)?;
            Ok((key, trust))
        };
        let (sender, sender_trust) = site(SENDER)?;
        let (receiver, receiver_trust) = site(RECEIVER)?;
        // The sender is the receiver's parent site: it may push into the receiver's library.
        TrustStore::open(&sender_trust)?.import(&receiver.identity(), Role::Child)?;
        TrustStore::open(&receiver_trust)?.import(&sender.identity(), Role::Parent)?;
        Ok(Sites {
            sender,
            receiver,
            sender_trust,
            receiver_trust,
        })
    }

    /// The receiving site's code.
    pub fn receiver_code(&self) -> SiteCode {
        self.receiver.code()
    }

    /// TLS of the sending site.
    pub fn sender_tls(&self) -> Result<SiteTls, LoopbackError> {
        Ok(SiteTls::new(&self.sender, &self.sender_trust)?)
    }

    /// TLS of the receiving site.
    pub fn receiver_tls(&self) -> Result<SiteTls, LoopbackError> {
        Ok(SiteTls::new(&self.receiver, &self.receiver_trust)?)
    }
}

/// A chunk held in memory, ready to be framed.
#[derive(Clone)]
pub struct MemoryChunk {
    /// BLAKE3 of the data.
    pub id: ChunkId,
    /// The data (sent as stored, flags 0: raw).
    pub data: Bytes,
}

/// `count` chunks of `size` pseudo-random (incompressible) bytes each.
pub fn random_chunks(count: usize, size: usize) -> Vec<MemoryChunk> {
    (0..count)
        .map(|i| {
            let data = freight_test_support::noise(&format!("loopback chunk {i}"), size);
            MemoryChunk {
                id: ChunkId(*blake3::hash(&data).as_bytes()),
                data: Bytes::from(data),
            }
        })
        .collect()
}

/// How [`stream_chunks`] sends.
#[derive(Clone)]
pub struct StreamOptions {
    /// Tunables of both nodes; `data_streams` is the number of parallel streams.
    pub node: NodeConfig,
    /// The sender starts no new chunk after this long; the chunks under way are finished
    /// (without pacing, so that the run ends promptly), and every stream is closed.
    pub duration: Duration,
    /// Largest piece handed to quinn at once (and paced at once). Push sessions use
    /// [`freight_transport::throttle::SLICE`] (64 KiB).
    pub slice: usize,
    /// Width of the receiver's arrival bins.
    pub bin: Duration,
    /// Paces every slice (and admits every chunk) when given, as a push session does.
    pub limiter: Option<RouteLimiter>,
    /// Throttles to set on the limiter at these offsets from the start.
    pub changes: Vec<(Duration, RouteThrottle)>,
}

/// Path statistics of the sending side's connection, as quinn reports them at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PathReport {
    /// The UDP payload size MTU discovery reached, bytes.
    pub mtu: u16,
    /// Packets sent.
    pub sent_packets: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Congestion events (loss or ECN).
    pub congestion_events: u64,
    /// Smoothed round-trip time at the end, microseconds.
    pub rtt_us: u64,
    /// Congestion window at the end, bytes.
    pub cwnd: u64,
    /// UDP datagrams sent.
    pub udp_datagrams: u64,
    /// UDP send system calls (fewer than datagrams with GSO).
    pub udp_ios: u64,
}

/// What [`stream_chunks`] measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StreamRun {
    /// Chunk data bytes the receiver decoded from whole frames.
    pub payload_bytes: u64,
    /// Whole `Chunk` frames the receiver decoded.
    pub chunks: u64,
    /// Every byte read from the streams (frames with their headers).
    pub stream_bytes: u64,
    /// Chunk data bytes the sender wrote.
    pub sent_payload_bytes: u64,
    /// From the start (both ends connected) to the end of the last stream at the receiver.
    pub elapsed: Duration,
    /// Payload throughput over `elapsed`, bytes per second.
    pub payload_bytes_per_s: f64,
    /// Width of a bin.
    pub bin: Duration,
    /// Stream bytes read by the receiver, by time of reading: bin `i` covers
    /// `[i·bin, (i+1)·bin)` after the start.
    pub bins: Vec<u64>,
    /// When each throttle change was applied, from the start.
    pub changes_at: Vec<Duration>,
    /// The sending connection's path statistics.
    pub path: PathReport,
}

fn stream_err(what: &str) -> impl FnOnce(String) -> LoopbackError + '_ {
    move |e| LoopbackError::Stream(format!("{what}: {e}"))
}

/// Connects a sending and a receiving node of `sites` on 127.0.0.1 and sends `chunks`
/// round-robin as `Chunk` frames on `opts.node.data_streams` streams for `opts.duration`.
/// Must run inside a multi-threaded Tokio runtime.
///
/// The start instant is taken once the handshake completed on both ends; bins, the
/// elapsed time and the change offsets count from it.
pub async fn stream_chunks(
    sites: &Sites,
    chunks: &[MemoryChunk],
    opts: &StreamOptions,
) -> Result<StreamRun, LoopbackError> {
    if chunks.is_empty() || opts.slice == 0 || opts.bin.is_zero() {
        return Err(LoopbackError::Stream(
            "nothing to send: give chunks, a slice and a bin width".into(),
        ));
    }
    let any = "127.0.0.1:0".parse().expect("address");
    let rx_node = Node::bind(any, sites.receiver_tls()?, opts.node.clone())?;
    let tx_node = Node::bind(any, sites.sender_tls()?, opts.node.clone())?;
    let addr = rx_node.local_addr()?;
    let accepting = {
        let rx_node = rx_node.clone();
        tokio::spawn(async move {
            match rx_node.accept().await {
                Some(a) => Some(a.establish().await),
                None => None,
            }
        })
    };
    let handshake = async {
        let tx_conn = tx_node.connect(addr, sites.receiver_code()).await?;
        let rx_conn = accepting
            .await
            .map_err(|e| LoopbackError::Stream(format!("accept task: {e}")))?
            .ok_or_else(|| LoopbackError::Stream("receiving endpoint closed".into()))??;
        Ok::<_, LoopbackError>((tx_conn, rx_conn))
    };
    let (tx_conn, rx_conn) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            LoopbackError::Stream(format!(
                "the QUIC handshake on loopback did not complete within {HANDSHAKE_TIMEOUT:?}"
            ))
        })??;
    let streams = usize::from(opts.node.data_streams.max(1));
    let start = Instant::now();

    let receiving = tokio::spawn(receive(rx_conn.clone(), streams, start, opts.bin));
    let changing = opts.limiter.clone().map(|limiter| {
        let changes = opts.changes.clone();
        tokio::spawn(async move {
            let mut applied = Vec::new();
            for (at, throttle) in changes {
                tokio::time::sleep_until((start + at).into()).await;
                limiter.set_throttle(throttle);
                applied.push(start.elapsed());
            }
            applied
        })
    });
    let chunks: Arc<[MemoryChunk]> = chunks.into();
    let mut senders = tokio::task::JoinSet::new();
    for index in 0..streams {
        let (conn, chunks, opts) = (tx_conn.clone(), chunks.clone(), opts.clone());
        senders.spawn(send(conn, chunks, index, streams, start, opts));
    }
    let transfer = async {
        let mut sent_payload_bytes = 0;
        while let Some(joined) = senders.join_next().await {
            let sent =
                joined.map_err(|e| LoopbackError::Stream(format!("sending task: {e}")))??;
            sent_payload_bytes += sent;
        }
        let received = receiving
            .await
            .map_err(|e| LoopbackError::Stream(format!("receiving task: {e}")))??;
        Ok::<_, LoopbackError>((sent_payload_bytes, received))
    };
    let limit = opts.duration + FINISH_TIMEOUT;
    let finished = tokio::time::timeout(limit, transfer).await;
    let Ok(finished) = finished else {
        let stats = tx_conn.stats();
        tx_conn.close("timed out");
        return Err(LoopbackError::Stream(format!(
            "the streams did not finish within {limit:?} (sent {} packets, {} lost, MTU {})",
            stats.path.sent_packets, stats.path.lost_packets, stats.path.current_mtu
        )));
    };
    let (sent_payload_bytes, received) = finished?;
    let changes_at = match changing {
        Some(task) => {
            task.abort();
            task.await.unwrap_or_default()
        }
        None => Vec::new(),
    };
    let stats = tx_conn.stats();
    let path = PathReport {
        mtu: stats.path.current_mtu,
        sent_packets: stats.path.sent_packets,
        lost_packets: stats.path.lost_packets,
        congestion_events: stats.path.congestion_events,
        rtt_us: u64::try_from(stats.path.rtt.as_micros()).unwrap_or(u64::MAX),
        cwnd: stats.path.cwnd,
        udp_datagrams: stats.udp_tx.datagrams,
        udp_ios: stats.udp_tx.ios,
    };
    tx_conn.close("done");
    tx_node.close();
    rx_node.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tx_node.wait_idle()).await;
    let elapsed = received.last.saturating_duration_since(start);
    Ok(StreamRun {
        payload_bytes: received.payload_bytes,
        chunks: received.chunks,
        stream_bytes: received.stream_bytes,
        sent_payload_bytes,
        elapsed,
        payload_bytes_per_s: received.payload_bytes as f64 / elapsed.as_secs_f64().max(1e-9),
        bin: opts.bin,
        bins: received.bins,
        changes_at,
        path,
    })
}

/// One sending stream: chunks `index`, `index + streams`, ... round-robin from `chunks`
/// until the deadline. Returns the chunk data bytes written.
async fn send(
    conn: Conn,
    chunks: Arc<[MemoryChunk]>,
    index: usize,
    streams: usize,
    start: Instant,
    opts: StreamOptions,
) -> Result<u64, LoopbackError> {
    let what = format!("sending stream {index}");
    let mut s = conn
        .connection()
        .open_uni()
        .await
        .map_err(|e| stream_err(&what)(e.to_string()))?;
    let deadline = start + opts.duration;
    let mut sent = 0u64;
    let mut next = index;
    while Instant::now() < deadline {
        let chunk = &chunks[next % chunks.len()];
        next += streams;
        if let Some(l) = &opts.limiter {
            l.admit(Priority::Medium).await;
        }
        let header = chunk_header(&chunk.id, chunk.data.len() as u32, 0, chunk.data.len());
        s.write_all(&header)
            .await
            .map_err(|e| stream_err(&what)(e.to_string()))?;
        let mut off = 0;
        while off < chunk.data.len() {
            let end = (off + opts.slice).min(chunk.data.len());
            if let Some(l) = &opts.limiter
                && Instant::now() < deadline
            {
                l.pace((end - off) as u64).await;
            }
            s.write_chunk(chunk.data.slice(off..end))
                .await
                .map_err(|e| stream_err(&what)(e.to_string()))?;
            sent += (end - off) as u64;
            off = end;
        }
    }
    s.finish().map_err(|e| stream_err(&what)(e.to_string()))?;
    // Wait until the peer has read everything, so the connection is not closed under it.
    let _ = s.stopped().await;
    Ok(sent)
}

/// What the receiving streams counted, merged.
struct Received {
    payload_bytes: u64,
    chunks: u64,
    stream_bytes: u64,
    bins: Vec<u64>,
    /// The last read of any stream.
    last: Instant,
}

async fn receive(
    conn: Conn,
    streams: usize,
    start: Instant,
    bin: Duration,
) -> Result<Received, LoopbackError> {
    let mut readers = tokio::task::JoinSet::new();
    for index in 0..streams {
        let recv = conn
            .connection()
            .accept_uni()
            .await
            .map_err(|e| LoopbackError::Stream(format!("accepting stream {index}: {e}")))?;
        readers.spawn(read_stream(recv, index, start, bin));
    }
    let mut total = Received {
        payload_bytes: 0,
        chunks: 0,
        stream_bytes: 0,
        bins: Vec::new(),
        last: start,
    };
    while let Some(joined) = readers.join_next().await {
        let r = joined.map_err(|e| LoopbackError::Stream(format!("receiving task: {e}")))??;
        total.payload_bytes += r.payload_bytes;
        total.chunks += r.chunks;
        total.stream_bytes += r.stream_bytes;
        total.last = total.last.max(r.last);
        if total.bins.len() < r.bins.len() {
            total.bins.resize(r.bins.len(), 0);
        }
        for (sum, b) in total.bins.iter_mut().zip(&r.bins) {
            *sum += b;
        }
    }
    Ok(total)
}

async fn read_stream(
    mut recv: quinn::RecvStream,
    index: usize,
    start: Instant,
    bin: Duration,
) -> Result<Received, LoopbackError> {
    let what = format!("receiving stream {index}");
    let mut dec = FrameDecoder::new();
    let mut r = Received {
        payload_bytes: 0,
        chunks: 0,
        stream_bytes: 0,
        bins: Vec::new(),
        last: start,
    };
    while let Some(got) = recv
        .read_chunk(usize::MAX, true)
        .await
        .map_err(|e| stream_err(&what)(e.to_string()))?
    {
        let now = Instant::now();
        let i = bin_index(now.saturating_duration_since(start), bin);
        if r.bins.len() <= i {
            r.bins.resize(i + 1, 0);
        }
        r.bins[i] += got.bytes.len() as u64;
        r.stream_bytes += got.bytes.len() as u64;
        r.last = now;
        dec.push(&got.bytes);
        while let Some(msg) = dec
            .next_message()
            .map_err(|e| stream_err(&what)(e.to_string()))?
        {
            let Message::Chunk { data, .. } = msg else {
                return Err(stream_err(&what)(format!("unexpected {}", msg.name())));
            };
            r.payload_bytes += data.len() as u64;
            r.chunks += 1;
        }
    }
    if dec.buffered() > 0 {
        return Err(stream_err(&what)("ended inside a frame".into()));
    }
    Ok(r)
}

fn bin_index(at: Duration, bin: Duration) -> usize {
    usize::try_from(at.as_nanos() / bin.as_nanos().max(1)).unwrap_or(usize::MAX)
}

/// Bytes per second received in `[from, to)`, from `bins` of width `bin`. Only whole bins
/// count: the window is rounded inwards to bin boundaries (bins past the end of `bins`
/// count as empty). `None` when no whole bin fits.
pub fn rate_between(bins: &[u64], bin: Duration, from: Duration, to: Duration) -> Option<f64> {
    let bin_ns = bin.as_nanos().max(1);
    let first = usize::try_from(from.as_nanos().div_ceil(bin_ns)).ok()?;
    let end = usize::try_from(to.as_nanos() / bin_ns).ok()?;
    if end <= first {
        return None;
    }
    let bytes: u64 = (first..end)
        .map(|i| bins.get(i).copied().unwrap_or(0))
        .sum();
    Some(bytes as f64 / (bin.as_secs_f64() * (end - first) as f64))
}

/// The moving rate over `window` (a whole number of bins) at every bin boundary `g` from
/// `window` to `to`: bytes received in `[g - window, g)` divided by `window`, in bytes per
/// second. Returned as `(g, rate)` pairs.
pub fn moving_rates(
    bins: &[u64],
    bin: Duration,
    window: Duration,
    to: Duration,
) -> Vec<(Duration, f64)> {
    let bin_ns = bin.as_nanos().max(1);
    let w = usize::try_from(window.as_nanos() / bin_ns)
        .unwrap_or(usize::MAX)
        .max(1);
    let last = usize::try_from(to.as_nanos() / bin_ns).unwrap_or(usize::MAX);
    let at = |i: usize| bins.get(i).copied().unwrap_or(0);
    let secs = bin.as_secs_f64() * w as f64;
    let mut out = Vec::new();
    let mut sum: u64 = (0..w.min(last)).map(at).sum();
    for g in w..=last {
        if g > w {
            sum = sum + at(g - 1) - at(g - 1 - w);
        }
        out.push((bin * g as u32, sum as f64 / secs));
    }
    out
}

/// How long after a rate change at `change` the moving rate over `window` first comes
/// within `tolerance` (a fraction, 0.03 = ±3%) of the new rate `target` (bytes per second):
/// the first bin boundary `g >= change` whose moving rate is within it, minus `change`.
/// `None` when that does not happen by `end`.
///
/// The moving rate at `g` still holds bytes sent before the change until `g - window` passes
/// `change`, so a perfect step change reads as nearly one window: from 10 to 50 units over a
/// 250 ms window with ±3%, 0.25 s. Whether the new rate then holds is for
/// [`rate_between`] and [`worst_window_error`] to say.
pub fn reach_time(
    bins: &[u64],
    bin: Duration,
    window: Duration,
    change: Duration,
    end: Duration,
    target: f64,
    tolerance: f64,
) -> Option<Duration> {
    moving_rates(bins, bin, window, end)
        .into_iter()
        .find(|&(g, rate)| g >= change && (rate / target - 1.0).abs() <= tolerance)
        .map(|(g, _)| g - change)
}

/// The largest relative error (signed, 0.05 = 5% above) of the moving rate over `window`
/// against `target`, at the bin boundaries from `from` to `to`; `None` if there are none.
pub fn worst_window_error(
    bins: &[u64],
    bin: Duration,
    window: Duration,
    from: Duration,
    to: Duration,
    target: f64,
) -> Option<f64> {
    moving_rates(bins, bin, window, to)
        .into_iter()
        .filter(|&(g, _)| g >= from)
        .map(|(_, rate)| rate / target - 1.0)
        .reduce(|worst, e| if e.abs() > worst.abs() { e } else { worst })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS10: Duration = Duration::from_millis(10);

    #[test]
    fn rate_over_whole_bins() {
        // 100 bytes per 10 ms bin = 10 kB/s; the first second (bins 0..100) ignored.
        let mut bins = vec![0u64; 100];
        bins.extend(std::iter::repeat_n(100, 200));
        let r = rate_between(&bins, MS10, Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(r, Some(10_000.0));
        // Partial bins at both ends are left out: [1.005, 1.015) holds no whole bin.
        let r = rate_between(
            &bins,
            MS10,
            Duration::from_millis(1005),
            Duration::from_millis(1015),
        );
        assert_eq!(r, None);
        // Past the recorded bins counts as silence.
        let r = rate_between(&bins, MS10, Duration::from_secs(2), Duration::from_secs(4));
        assert_eq!(r, Some(5_000.0));
    }

    #[test]
    fn moving_rate_follows_a_step() {
        // 10 bytes per bin for 1 s, then 50.
        let mut bins = vec![10u64; 100];
        bins.extend(std::iter::repeat_n(50, 100));
        let window = Duration::from_millis(250);
        let rates = moving_rates(&bins, MS10, window, Duration::from_secs(2));
        assert_eq!(rates.first(), Some(&(window, 1000.0)));
        assert_eq!(rates.last(), Some(&(Duration::from_secs(2), 5000.0)));
        let at = |ms: u64| {
            rates
                .iter()
                .find(|(g, _)| *g == Duration::from_millis(ms))
                .unwrap()
                .1
        };
        assert_eq!(at(1000), 1000.0);
        assert_eq!(at(1100), (15.0 * 10.0 + 10.0 * 50.0) / 0.25);
        assert_eq!(at(1250), 5000.0);
    }

    #[test]
    fn reaching_a_new_rate() {
        let mut bins = vec![10u64; 100];
        bins.extend(std::iter::repeat_n(50, 100));
        let window = Duration::from_millis(250);
        let end = Duration::from_secs(2);
        let one = Duration::from_secs(1);
        // One old bin left in the window reads 4840 B/s (-3.2%): reached once it is gone.
        let d = reach_time(&bins, MS10, window, one, end, 5000.0, 0.03);
        assert_eq!(d, Some(window));
        let d = reach_time(&bins, MS10, window, one, end, 5000.0, 0.04);
        assert_eq!(d, Some(Duration::from_millis(240)));
        // Never at the target.
        assert_eq!(
            reach_time(&bins, MS10, window, one, end, 9000.0, 0.03),
            None
        );
        // A later dip shows in the worst window, not in the reach time.
        bins[150] = 0;
        let d = reach_time(&bins, MS10, window, one, end, 5000.0, 0.03);
        assert_eq!(d, Some(window));
        let worst = worst_window_error(&bins, MS10, window, one + window, end, 5000.0).unwrap();
        assert!((worst + 0.04).abs() < 1e-9, "{worst}");
        let worst = worst_window_error(&bins, MS10, window, end, end, 5000.0);
        assert_eq!(worst, Some(0.0));
        assert_eq!(
            worst_window_error(&bins, MS10, window, end + MS10, end, 5000.0),
            None
        );
    }

    #[test]
    fn random_chunks_are_distinct_and_identified() {
        let chunks = random_chunks(3, 1000);
        assert_eq!(chunks.len(), 3);
        assert_ne!(chunks[0].data, chunks[1].data);
        for c in &chunks {
            assert_eq!(c.id.0, *blake3::hash(&c.data).as_bytes());
        }
    }
}
