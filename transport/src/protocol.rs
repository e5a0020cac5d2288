//! The transfer protocol, sans-IO: message framing and the sender/receiver state machines.
//!
//! Nothing here touches a socket, a thread, a clock or a file. The I/O shell (QUIC streams, the
//! content library) feeds received bytes into a [`FrameDecoder`], hands each [`Message`] to a
//! [`Sender`] or [`Receiver`], performs the events they return (read a chunk, store a chunk,
//! commit a package) and sends whatever `poll_transmit` yields, encoded with [`encode`].
//!
//! # Framing
//! All integers little-endian. A frame is
//! ```text
//! length  u32   bytes of type + payload, 1 ..= MAX_FRAME (8 MiB + 64)
//! type    u8    message type, below
//! payload       length - 1 bytes
//! ```
//! The length is checked as soon as its four bytes arrive, before anything else is buffered for
//! the frame; the decoder never allocates more than the bytes it was given, and a count inside a
//! payload is checked against the bytes that remain before anything is reserved. A payload must
//! be consumed exactly (nothing trails), except `Chunk` whose data is the rest of the frame.
//!
//! # Messages
//! ```text
//! 1 Hello      version_min u16, version_max u16
//! 2 Offer      package (u8 length + ASCII package ID), version u32,
//!              manifest (u32 length + canonical manifest bytes, freight_core::manifest)
//! 3 Need       count u32, chunk id [32] * count        (may be empty)
//! 4 Chunk      id [32], ulen u32 (<= 64 MiB), flags u8 (bit0 = zstd), data = rest of frame
//! 5 Done       (empty)
//! 6 Committed  hash [32] = BLAKE3 of the offered manifest bytes
//! 7 Abort      code u16 (ProtocolError), reason (u16 length + UTF-8, <= 1 KiB)
//! ```
//! Limits that follow from the frame size: a chunk's stored form carries at most
//! [`MAX_CHUNK_DATA`] bytes, a manifest at most `MAX_FRAME` minus its header, and a `Need` at
//! most (`MAX_FRAME` - 5) / 32 IDs (never more than the manifest names).
//!
//! # Sequence
//! ```text
//! Sender                                   Receiver
//!   Hello(min,max)        ───────────►     (picks the highest common version, replies)
//!                         ◄───────────     Hello(min,max)
//!   Offer(pkg,ver,manifest) ─────────►     decodes + validates manifest, Lookup event,
//!                                          shell answers lacking(ids)
//!                         ◄───────────     Need(ids it lacks)
//!   ReadChunk events, shell answers
//!   chunk_ready(..) per ID
//!   Chunk * n             ───────────►     verifies each (decompress, BLAKE3 == id), Store event
//!   Done                  ───────────►     all needed present? Commit event, shell commits and
//!                                          calls committed()
//!                         ◄───────────     Committed(hash)
//!   hash == manifest hash: done
//! ```
//! Versions: each side announces the range it speaks (today only 1..=1); both pick the highest
//! version in both ranges; no overlap ends the session with `VersionMismatch`.
//!
//! Resume after a cut is simply the same session again: the receiver's library now holds the
//! chunks that arrived before the cut, so its `Need` lists only the rest.
//!
//! Any violation (bad frame, message out of order, unknown or duplicate chunk, chunk whose bytes
//! do not hash to its ID, bad manifest, wrong commit hash) makes `handle` return
//! [`Error::Protocol`] and queues an `Abort` with the matching [`ProtocolError`] code for the
//! peer (replacing any messages not yet sent); an `Abort` from the peer becomes
//! [`Error::PeerAborted`]. After either, the session is over: later messages are refused without
//! a second `Abort`; start a new session to resume. Mistakes of the I/O shell itself (answering
//! an event that was not asked for) are [`Error::Misuse`] and send nothing.

use crate::error::{Error, Result};
use freight_core::manifest::MAX_CHUNK;
use freight_core::{ChunkId, Manifest, PackageId};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

/// Largest frame length (type byte + payload): 8 MiB + 64.
pub const MAX_FRAME: u32 = (8 << 20) + 64;
/// Largest stored chunk data one `Chunk` frame carries (frame minus type, id, ulen, flags).
pub const MAX_CHUNK_DATA: usize = MAX_FRAME as usize - 1 - 32 - 4 - 1;
/// Largest `Abort` reason, in bytes.
pub const MAX_REASON: usize = 1024;
/// Largest uncompressed chunk length (`ulen`): the manifest's limit, 64 MiB.
pub const MAX_ULEN: u32 = MAX_CHUNK;
/// Chunk flag: the data is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
/// Lowest protocol version this code speaks.
pub const VERSION_MIN: u16 = 1;
/// Highest protocol version this code speaks.
pub const VERSION_MAX: u16 = 1;

const T_HELLO: u8 = 1;
const T_OFFER: u8 = 2;
const T_NEED: u8 = 3;
const T_CHUNK: u8 = 4;
const T_DONE: u8 = 5;
const T_COMMITTED: u8 = 6;
const T_ABORT: u8 = 7;

/// Why a session ended; sent in `Abort` as a u16.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolError {
    /// A payload did not parse (truncated, trailing bytes, bad count, bad text).
    Malformed = 1,
    /// A frame's length field is 0 or above `MAX_FRAME`.
    FrameTooLarge = 2,
    /// A frame's type byte is not a known message.
    UnknownType = 3,
    /// The two sides' version ranges do not overlap.
    VersionMismatch = 4,
    /// A message arrived that the session's current state does not allow.
    UnexpectedMessage = 5,
    /// The offered manifest does not decode or does not match the offer.
    BadManifest = 6,
    /// A chunk (or a Need entry) that was not asked for, not in the manifest, or duplicated.
    UnexpectedChunk = 7,
    /// A chunk's bytes do not decompress to `ulen` bytes hashing to its ID.
    BadChunk = 8,
    /// `Done` arrived while needed chunks were still missing.
    Incomplete = 9,
    /// `Committed` carried a hash other than the offered manifest's.
    BadCommit = 10,
    /// The peer's I/O shell gave up (library read or write failed, shutdown).
    Aborted = 11,
}

impl ProtocolError {
    const ALL: [ProtocolError; 11] = [
        ProtocolError::Malformed,
        ProtocolError::FrameTooLarge,
        ProtocolError::UnknownType,
        ProtocolError::VersionMismatch,
        ProtocolError::UnexpectedMessage,
        ProtocolError::BadManifest,
        ProtocolError::UnexpectedChunk,
        ProtocolError::BadChunk,
        ProtocolError::Incomplete,
        ProtocolError::BadCommit,
        ProtocolError::Aborted,
    ];

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The error for a wire code, if known.
    pub fn from_code(code: u16) -> Option<ProtocolError> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// Short name, e.g. `bad-chunk`.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolError::Malformed => "malformed",
            ProtocolError::FrameTooLarge => "frame-too-large",
            ProtocolError::UnknownType => "unknown-type",
            ProtocolError::VersionMismatch => "version-mismatch",
            ProtocolError::UnexpectedMessage => "unexpected-message",
            ProtocolError::BadManifest => "bad-manifest",
            ProtocolError::UnexpectedChunk => "unexpected-chunk",
            ProtocolError::BadChunk => "bad-chunk",
            ProtocolError::Incomplete => "incomplete",
            ProtocolError::BadCommit => "bad-commit",
            ProtocolError::Aborted => "aborted",
        }
    }

    /// Short name of a wire code; `unknown` for codes this version does not know.
    pub fn name_of(code: u16) -> &'static str {
        Self::from_code(code).map_or("unknown", Self::name)
    }

    /// What to do about it, for error messages.
    pub fn remedy(self) -> &'static str {
        match self {
            ProtocolError::Malformed
            | ProtocolError::FrameTooLarge
            | ProtocolError::UnknownType
            | ProtocolError::UnexpectedMessage => {
                "the peer runs an incompatible or broken Freight; upgrade it, then retry"
            }
            ProtocolError::VersionMismatch => {
                "upgrade the older side so both speak a common protocol version"
            }
            ProtocolError::BadManifest => {
                "verify the package on the sending library (`freight library verify`) and re-offer it"
            }
            ProtocolError::UnexpectedChunk | ProtocolError::Incomplete => {
                "retry the transfer; if it persists, the peer's Freight is broken, upgrade it"
            }
            ProtocolError::BadChunk => {
                "run `freight library verify` on the sending library (corrupt chunk) and retry; nothing bad was stored"
            }
            ProtocolError::BadCommit => {
                "the receiver committed a different manifest; verify both libraries, then retry"
            }
            ProtocolError::Aborted => "see the logs of the side that aborted, fix the cause, retry",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn proto(code: ProtocolError, detail: String) -> Error {
    Error::Protocol { code, detail }
}

/// One protocol message. See the module documentation for layouts.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// Version range the sending side speaks.
    Hello {
        /// Lowest version.
        version_min: u16,
        /// Highest version.
        version_max: u16,
    },
    /// The package version the sender offers.
    Offer {
        /// Package ID.
        package: PackageId,
        /// Package version.
        version: u32,
        /// Canonical manifest bytes.
        manifest: Vec<u8>,
    },
    /// The chunk IDs the receiver lacks (may be empty).
    Need {
        /// IDs, each once.
        chunks: Vec<ChunkId>,
    },
    /// One chunk in its stored form.
    Chunk {
        /// BLAKE3 of the uncompressed bytes.
        id: ChunkId,
        /// Uncompressed length.
        ulen: u32,
        /// Bit 0: zstd-compressed; other bits must be 0.
        flags: u8,
        /// Stored bytes.
        data: Vec<u8>,
    },
    /// Sender: every needed chunk has been sent.
    Done,
    /// Receiver: the package is verified and committed.
    Committed {
        /// BLAKE3 of the manifest bytes.
        hash: [u8; 32],
    },
    /// Either side: the session is over.
    Abort {
        /// A [`ProtocolError`] code.
        code: u16,
        /// One line, at most 1 KiB.
        reason: String,
    },
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Hello {
                version_min,
                version_max,
            } => write!(f, "Hello({version_min}..={version_max})"),
            Message::Offer {
                package,
                version,
                manifest,
            } => write!(f, "Offer({package} v{version}, {} bytes)", manifest.len()),
            Message::Need { chunks } => write!(f, "Need({} chunks)", chunks.len()),
            Message::Chunk {
                id,
                ulen,
                flags,
                data,
            } => write!(
                f,
                "Chunk({} ulen {ulen} flags {flags} {} bytes)",
                id.short(),
                data.len()
            ),
            Message::Done => f.write_str("Done"),
            Message::Committed { hash } => write!(f, "Committed({})", ChunkId(*hash).short()),
            Message::Abort { code, reason } => write!(f, "Abort({code}: {reason})"),
        }
    }
}

impl Message {
    /// The message's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Offer { .. } => "Offer",
            Message::Need { .. } => "Need",
            Message::Chunk { .. } => "Chunk",
            Message::Done => "Done",
            Message::Committed { .. } => "Committed",
            Message::Abort { .. } => "Abort",
        }
    }

    /// Builds an `Abort`, cutting `reason` to one line of at most [`MAX_REASON`] bytes.
    pub fn abort(code: ProtocolError, reason: &str) -> Message {
        let line = reason.lines().next().unwrap_or("");
        let mut end = line.len().min(MAX_REASON);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        Message::Abort {
            code: code.code(),
            reason: line[..end].to_string(),
        }
    }

    /// Appends the framed message to `out`. Messages built by [`Sender`] and [`Receiver`] always
    /// fit `MAX_FRAME`; a hand-built one that does not is rejected by the peer's decoder.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Message::Hello {
                version_min,
                version_max,
            } => {
                out.push(T_HELLO);
                out.extend_from_slice(&version_min.to_le_bytes());
                out.extend_from_slice(&version_max.to_le_bytes());
            }
            Message::Offer {
                package,
                version,
                manifest,
            } => {
                out.push(T_OFFER);
                let p = package.as_str().as_bytes();
                out.push(p.len() as u8);
                out.extend_from_slice(p);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
                out.extend_from_slice(manifest);
            }
            Message::Need { chunks } => {
                out.push(T_NEED);
                out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
                for c in chunks {
                    out.extend_from_slice(&c.0);
                }
            }
            Message::Chunk {
                id,
                ulen,
                flags,
                data,
            } => {
                out.extend_from_slice(&chunk_header(id, *ulen, *flags, data.len())[4..]);
                out.extend_from_slice(data);
            }
            Message::Done => out.push(T_DONE),
            Message::Committed { hash } => {
                out.push(T_COMMITTED);
                out.extend_from_slice(hash);
            }
            Message::Abort { code, reason } => {
                out.push(T_ABORT);
                out.extend_from_slice(&code.to_le_bytes());
                out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes one frame body (type byte + payload), as counted by the length field.
    pub fn decode_frame(frame: &[u8]) -> Result<Message> {
        let Some((&ty, payload)) = frame.split_first() else {
            return Err(proto(
                ProtocolError::Malformed,
                "frame from peer is empty (no type byte)".into(),
            ));
        };
        let name = match ty {
            T_HELLO => "Hello",
            T_OFFER => "Offer",
            T_NEED => "Need",
            T_CHUNK => "Chunk",
            T_DONE => "Done",
            T_COMMITTED => "Committed",
            T_ABORT => "Abort",
            _ => {
                return Err(proto(
                    ProtocolError::UnknownType,
                    format!("frame from peer has unknown message type {ty}"),
                ));
            }
        };
        let mut r = Reader {
            buf: payload,
            pos: 0,
            name,
        };
        let msg = match ty {
            T_HELLO => Message::Hello {
                version_min: r.u16()?,
                version_max: r.u16()?,
            },
            T_OFFER => {
                let n = r.u8()? as usize;
                let p = r.take(n)?;
                let package = std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| PackageId::parse(s).ok())
                    .ok_or_else(|| r.err("package ID is not valid"))?;
                let version = r.u32()?;
                let n = r.u32()? as usize;
                let manifest = r.take(n)?.to_vec();
                Message::Offer {
                    package,
                    version,
                    manifest,
                }
            }
            T_NEED => {
                let n = r.u32()? as usize;
                if n > r.remaining() / 32 {
                    return Err(r.err(&format!("counts {n} chunk IDs but carries fewer")));
                }
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    chunks.push(ChunkId(r.id()?));
                }
                Message::Need { chunks }
            }
            T_CHUNK => {
                let id = ChunkId(r.id()?);
                let ulen = r.u32()?;
                let flags = r.u8()?;
                let data = r.take(r.remaining())?.to_vec();
                Message::Chunk {
                    id,
                    ulen,
                    flags,
                    data,
                }
            }
            T_DONE => Message::Done,
            T_COMMITTED => Message::Committed { hash: r.id()? },
            _ => {
                let code = r.u16()?;
                let n = r.u16()? as usize;
                if n > MAX_REASON {
                    return Err(r.err(&format!("reason is {n} bytes, more than {MAX_REASON}")));
                }
                let reason = std::str::from_utf8(r.take(n)?)
                    .map_err(|_| r.err("reason is not UTF-8"))?
                    .to_string();
                Message::Abort { code, reason }
            }
        };
        if r.remaining() != 0 {
            return Err(r.err(&format!("{} trailing bytes", r.remaining())));
        }
        Ok(msg)
    }
}

/// Bytes of a `Chunk` frame before its data.
pub const CHUNK_HEADER: usize = 4 + 1 + 32 + 4 + 1;

/// The start of a `Chunk` frame whose data (`data_len` bytes) follows separately, so an I/O
/// shell can send the data without copying it. The peer checks the frame length as usual.
pub fn chunk_header(id: &ChunkId, ulen: u32, flags: u8, data_len: usize) -> [u8; CHUNK_HEADER] {
    let mut h = [0u8; CHUNK_HEADER];
    h[..4].copy_from_slice(&((CHUNK_HEADER - 4 + data_len) as u32).to_le_bytes());
    h[4] = T_CHUNK;
    h[5..37].copy_from_slice(&id.0);
    h[37..41].copy_from_slice(&ulen.to_le_bytes());
    h[41] = flags;
    h
}

/// Frames `msg`: length, type, payload.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode_into(&mut out);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    name: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: &str) -> Error {
        proto(
            ProtocolError::Malformed,
            format!(
                "{} frame from peer is malformed at payload offset {}: {reason}",
                self.name, self.pos
            ),
        )
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(&format!("truncated (wants {n} more bytes)")));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn id(&mut self) -> Result<[u8; 32]> {
        Ok(self.take(32)?.try_into().unwrap())
    }
}

/// Reassembles messages from a byte stream delivered in arbitrary slices.
///
/// [`push`](Self::push) bytes as they arrive, then call [`next_message`](Self::next_message)
/// until it returns `Ok(None)` ("need more"). After an error the decoder is poisoned and keeps
/// returning that error: the stream cannot be resynchronised.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    failed: Option<(ProtocolError, String)>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes (any amount, any split). Ignored once the decoder has failed.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= 64 << 10 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message; `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        if let Some((code, detail)) = &self.failed {
            return Err(proto(*code, detail.clone()));
        }
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[..4].try_into().unwrap());
        if len == 0 || len > MAX_FRAME {
            return Err(self.fail(proto(
                ProtocolError::FrameTooLarge,
                format!("frame from peer declares length {len}, outside 1..={MAX_FRAME}"),
            )));
        }
        let end = 4 + len as usize;
        if avail.len() < end {
            return Ok(None);
        }
        match Message::decode_frame(&avail[4..end]) {
            Ok(m) => {
                self.start += end;
                Ok(Some(m))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        if let Error::Protocol { code, detail } = &e {
            self.failed = Some((*code, detail.clone()));
        }
        self.buf = Vec::new();
        self.start = 0;
        e
    }
}

fn negotiate(peer_min: u16, peer_max: u16) -> Option<u16> {
    let lo = peer_min.max(VERSION_MIN);
    let hi = peer_max.min(VERSION_MAX);
    (peer_min <= peer_max && lo <= hi).then_some(hi)
}

fn version_mismatch(role: &str, min: u16, max: u16) -> String {
    format!(
        "{role}: peer speaks protocol versions {min}..={max}, this side {VERSION_MIN}..={VERSION_MAX}, no overlap"
    )
}

/// What both ends of a session share: the outbox, the negotiated version, and how a session
/// ends (our Abort queued once, or the peer's Abort received).
#[derive(Debug, Default)]
struct Link {
    outbox: VecDeque<Message>,
    protocol_version: Option<u16>,
    aborted: bool,
}

impl Link {
    /// Drops whatever was still queued and queues one `Abort`; returns the error to report.
    fn fail(&mut self, code: ProtocolError, detail: String) -> Error {
        if !self.aborted {
            self.aborted = true;
            self.outbox.clear();
            self.outbox.push_back(Message::abort(code, &detail));
        }
        proto(code, detail)
    }

    /// The peer aborted: nothing more is sent.
    fn peer_aborted(&mut self, code: u16, reason: String) -> Error {
        self.aborted = true;
        self.outbox.clear();
        Error::PeerAborted { code, reason }
    }

    /// Records the version agreed with the peer's `Hello`; false when the ranges do not meet.
    fn hello(&mut self, version_min: u16, version_max: u16) -> bool {
        self.protocol_version = negotiate(version_min, version_max);
        self.protocol_version.is_some()
    }
}

/// What the sender's I/O shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// Read this chunk's stored form from the library and call [`Sender::chunk_ready`].
    ReadChunk(ChunkId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SenderState {
    AwaitHello,
    AwaitNeed,
    Sending,
    AwaitCommit,
    Done,
    Failed,
}

/// The sending side of one package transfer.
///
/// Queues `Hello` on creation. Feed every received message to [`handle`](Self::handle), act on
/// the returned events, and send everything [`poll_transmit`](Self::poll_transmit) yields.
/// Finished when [`is_done`](Self::is_done).
#[derive(Debug)]
pub struct Sender {
    package: PackageId,
    version: u32,
    manifest: Vec<u8>,
    hash: [u8; 32],
    chunks: BTreeMap<ChunkId, u32>,
    pending: HashSet<ChunkId>,
    state: SenderState,
    link: Link,
}

impl Sender {
    /// A session offering `manifest`. Fails if its canonical bytes do not fit one frame.
    pub fn new(manifest: &Manifest) -> Result<Sender> {
        let bytes = manifest.encode();
        let max = MAX_FRAME as usize - 1 - 1 - 8 - 4 - 4;
        if bytes.len() > max {
            return Err(Error::TooLarge {
                what: format!("manifest of {} v{}", manifest.package, manifest.version),
                size: bytes.len() as u64,
                max: max as u64,
            });
        }
        let mut outbox = VecDeque::new();
        outbox.push_back(Message::Hello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
        });
        Ok(Sender {
            package: manifest.package.clone(),
            version: manifest.version,
            hash: *blake3::hash(&bytes).as_bytes(),
            manifest: bytes,
            chunks: manifest.chunks(),
            pending: HashSet::new(),
            state: SenderState::AwaitHello,
            link: Link {
                outbox,
                ..Link::default()
            },
        })
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.link.outbox.pop_front()
    }

    /// True once the receiver confirmed the commit with the right hash.
    pub fn is_done(&self) -> bool {
        self.state == SenderState::Done
    }

    /// True once the session ended in an error (either side's).
    pub fn is_failed(&self) -> bool {
        self.state == SenderState::Failed
    }

    /// The negotiated protocol version, once the peer's `Hello` arrived.
    pub fn protocol_version(&self) -> Option<u16> {
        self.link.protocol_version
    }

    fn role(&self) -> String {
        format!("sender of {} v{}", self.package, self.version)
    }

    fn fail(&mut self, code: ProtocolError, detail: String) -> Error {
        self.state = SenderState::Failed;
        self.link.fail(code, detail)
    }

    fn unexpected(&mut self, msg: &Message) -> Error {
        let detail = format!(
            "{}: receiving peer sent {} in state {:?}",
            self.role(),
            msg.name(),
            self.state
        );
        self.fail(ProtocolError::UnexpectedMessage, detail)
    }

    /// Processes one message from the receiver.
    pub fn handle(&mut self, msg: Message) -> Result<Vec<SenderEvent>> {
        if let Message::Abort { code, reason } = msg {
            self.state = SenderState::Failed;
            return Err(self.link.peer_aborted(code, reason));
        }
        match (&self.state, msg) {
            (
                SenderState::AwaitHello,
                Message::Hello {
                    version_min,
                    version_max,
                },
            ) => match self.link.hello(version_min, version_max) {
                true => {
                    self.link.outbox.push_back(Message::Offer {
                        package: self.package.clone(),
                        version: self.version,
                        manifest: self.manifest.clone(),
                    });
                    self.state = SenderState::AwaitNeed;
                    Ok(Vec::new())
                }
                false => {
                    let detail = version_mismatch(&self.role(), version_min, version_max);
                    Err(self.fail(ProtocolError::VersionMismatch, detail))
                }
            },
            (SenderState::AwaitNeed, Message::Need { chunks }) => {
                let mut seen = HashSet::with_capacity(chunks.len());
                for id in &chunks {
                    if !self.chunks.contains_key(id) || !seen.insert(*id) {
                        let detail = format!(
                            "{}: receiving peer needs chunk {} which the manifest does not name or which it listed twice",
                            self.role(),
                            id.short()
                        );
                        return Err(self.fail(ProtocolError::UnexpectedChunk, detail));
                    }
                }
                self.pending = seen;
                if self.pending.is_empty() {
                    self.link.outbox.push_back(Message::Done);
                    self.state = SenderState::AwaitCommit;
                } else {
                    self.state = SenderState::Sending;
                }
                Ok(chunks.into_iter().map(SenderEvent::ReadChunk).collect())
            }
            (SenderState::AwaitCommit, Message::Committed { hash }) => {
                if hash != self.hash {
                    let detail = format!(
                        "{}: receiving peer committed manifest hash {}, offered {}",
                        self.role(),
                        ChunkId(hash).short(),
                        ChunkId(self.hash).short()
                    );
                    return Err(self.fail(ProtocolError::BadCommit, detail));
                }
                self.state = SenderState::Done;
                Ok(Vec::new())
            }
            (_, msg) => Err(self.unexpected(&msg)),
        }
    }

    /// The shell's answer to [`SenderEvent::ReadChunk`]: the chunk's stored form as in the
    /// library (`flags` bit 0 = zstd). Queues the `Chunk`, and `Done` after the last one.
    pub fn chunk_ready(&mut self, id: ChunkId, ulen: u32, flags: u8, data: Vec<u8>) -> Result<()> {
        if self.state != SenderState::Sending || !self.pending.contains(&id) {
            return Err(Error::Misuse(format!(
                "{}: chunk_ready for chunk {} which is not awaited (state {:?})",
                self.role(),
                id.short(),
                self.state
            )));
        }
        if data.len() > MAX_CHUNK_DATA {
            return Err(Error::TooLarge {
                what: format!("chunk {} of {} v{}", id.short(), self.package, self.version),
                size: data.len() as u64,
                max: MAX_CHUNK_DATA as u64,
            });
        }
        self.pending.remove(&id);
        self.link.outbox.push_back(Message::Chunk {
            id,
            ulen,
            flags,
            data,
        });
        if self.pending.is_empty() {
            self.link.outbox.push_back(Message::Done);
            self.state = SenderState::AwaitCommit;
        }
        Ok(())
    }

    /// Ends the session from the shell's side (library read failed, shutdown): queues `Abort`
    /// with code [`ProtocolError::Aborted`] and `reason`.
    pub fn abort(&mut self, reason: &str) {
        let _ = self.fail(ProtocolError::Aborted, reason.to_string());
    }

    /// The peer's bytes did not decode (an error of [`FrameDecoder`]): queues `Abort` with the
    /// error's code and returns the error.
    pub fn decode_failed(&mut self, e: Error) -> Error {
        match e {
            Error::Protocol { code, detail } => self.fail(code, detail),
            other => other,
        }
    }
}

/// What the receiver's I/O shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Find which of the manifest's chunks the library lacks and call [`Receiver::lacking`].
    Lookup {
        /// The offered, validated manifest.
        manifest: Manifest,
    },
    /// A verified chunk: store it in the library as is.
    Store {
        /// Chunk ID (verified).
        id: ChunkId,
        /// Uncompressed length.
        ulen: u32,
        /// Stored-form flags (bit 0 = zstd).
        flags: u8,
        /// Stored bytes.
        data: Vec<u8>,
    },
    /// Every needed chunk arrived: commit the manifest, then call [`Receiver::committed`].
    Commit {
        /// The manifest to commit.
        manifest: Manifest,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReceiverState {
    AwaitHello,
    AwaitOffer,
    AwaitLacking,
    Receiving,
    AwaitCommitCall,
    Done,
    Failed,
}

/// The receiving side of one package transfer.
///
/// Waits for the sender's `Hello`. Feed every received message to [`handle`](Self::handle),
/// act on the returned events, send what [`poll_transmit`](Self::poll_transmit) yields.
/// Finished when [`is_done`](Self::is_done).
#[derive(Debug)]
pub struct Receiver {
    state: ReceiverState,
    manifest: Option<Manifest>,
    hash: [u8; 32],
    verifier: Option<ChunkVerifier>,
    missing: HashSet<ChunkId>,
    link: Link,
}

/// Checks chunks against one offered manifest. Cheap to clone and `Send`, so the I/O shell can
/// verify chunks on several threads and hand only [`VerifiedChunk`]s to the [`Receiver`].
#[derive(Debug, Clone)]
pub struct ChunkVerifier {
    lens: Arc<BTreeMap<ChunkId, u32>>,
    hash: [u8; 32],
    role: Arc<str>,
}

/// A chunk whose bytes were checked against its ID and the manifest; only a
/// [`ChunkVerifier`] makes one.
#[derive(Debug)]
pub struct VerifiedChunk {
    id: ChunkId,
    ulen: u32,
    flags: u8,
    data: Vec<u8>,
    manifest_hash: [u8; 32],
}

impl VerifiedChunk {
    /// The chunk's ID.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// Stored bytes (compressed when `flags` has [`FLAG_ZSTD`]).
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

impl ChunkVerifier {
    /// Verifies one received chunk: named by the manifest, flags known, length as the manifest
    /// says, bytes decompress to exactly that and hash to the ID. Pure; safe on any thread.
    pub fn verify(
        &self,
        id: ChunkId,
        ulen: u32,
        flags: u8,
        data: Vec<u8>,
    ) -> Result<VerifiedChunk> {
        let Some(&expected) = self.lens.get(&id) else {
            return Err(proto(
                ProtocolError::UnexpectedChunk,
                format!(
                    "{}: sending peer sent chunk {} which the manifest does not name",
                    self.role,
                    id.short()
                ),
            ));
        };
        if let Err(why) = verify_chunk(id, ulen, flags, &data, expected) {
            return Err(proto(
                ProtocolError::BadChunk,
                format!(
                    "{}: chunk {} from the sending peer is bad: {why}; not stored",
                    self.role,
                    id.short()
                ),
            ));
        }
        Ok(VerifiedChunk {
            id,
            ulen,
            flags,
            data,
            manifest_hash: self.hash,
        })
    }
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// A receiver awaiting the sender's `Hello`.
    pub fn new() -> Receiver {
        Receiver {
            state: ReceiverState::AwaitHello,
            link: Link::default(),
            manifest: None,
            hash: [0; 32],
            verifier: None,
            missing: HashSet::new(),
        }
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.link.outbox.pop_front()
    }

    /// True once `Committed` has been queued.
    pub fn is_done(&self) -> bool {
        self.state == ReceiverState::Done
    }

    /// True while chunks are expected (after `Need`, before `Done`).
    pub fn is_receiving(&self) -> bool {
        self.state == ReceiverState::Receiving
    }

    /// True once the session ended in an error (either side's).
    pub fn is_failed(&self) -> bool {
        self.state == ReceiverState::Failed
    }

    /// The negotiated protocol version, once the peer's `Hello` arrived.
    pub fn protocol_version(&self) -> Option<u16> {
        self.link.protocol_version
    }

    fn role(&self) -> String {
        match &self.manifest {
            Some(m) => format!("receiver of {} v{}", m.package, m.version),
            None => "receiver".to_string(),
        }
    }

    fn fail(&mut self, code: ProtocolError, detail: String) -> Error {
        self.state = ReceiverState::Failed;
        self.link.fail(code, detail)
    }

    /// Processes one message from the sender.
    pub fn handle(&mut self, msg: Message) -> Result<Vec<ReceiverEvent>> {
        if let Message::Abort { code, reason } = msg {
            self.state = ReceiverState::Failed;
            return Err(self.link.peer_aborted(code, reason));
        }
        match (self.state, msg) {
            (
                ReceiverState::AwaitHello,
                Message::Hello {
                    version_min,
                    version_max,
                },
            ) => match self.link.hello(version_min, version_max) {
                true => {
                    self.link.outbox.push_back(Message::Hello {
                        version_min: VERSION_MIN,
                        version_max: VERSION_MAX,
                    });
                    self.state = ReceiverState::AwaitOffer;
                    Ok(Vec::new())
                }
                false => {
                    let detail = version_mismatch(&self.role(), version_min, version_max);
                    Err(self.fail(ProtocolError::VersionMismatch, detail))
                }
            },
            (
                ReceiverState::AwaitOffer,
                Message::Offer {
                    package,
                    version,
                    manifest,
                },
            ) => self.offer(package, version, manifest),
            (
                ReceiverState::Receiving,
                Message::Chunk {
                    id,
                    ulen,
                    flags,
                    data,
                },
            ) => {
                let verifier = self.verifier.clone().expect("verifier set in Receiving");
                let checked = verifier.verify(id, ulen, flags, data);
                self.handle_checked(checked).map(|e| vec![e])
            }
            (ReceiverState::Receiving, Message::Done) => {
                if !self.missing.is_empty() {
                    let mut first: Vec<&ChunkId> = self.missing.iter().collect();
                    first.sort();
                    let detail = format!(
                        "{}: sending peer said Done with {} needed chunks missing (first {})",
                        self.role(),
                        self.missing.len(),
                        first[0].short()
                    );
                    return Err(self.fail(ProtocolError::Incomplete, detail));
                }
                self.state = ReceiverState::AwaitCommitCall;
                let manifest = self.manifest.clone().expect("manifest set in Receiving");
                Ok(vec![ReceiverEvent::Commit { manifest }])
            }
            (state, msg) => {
                let detail = format!(
                    "{}: sending peer sent {} in state {state:?}",
                    self.role(),
                    msg.name()
                );
                Err(self.fail(ProtocolError::UnexpectedMessage, detail))
            }
        }
    }

    fn offer(
        &mut self,
        package: PackageId,
        version: u32,
        bytes: Vec<u8>,
    ) -> Result<Vec<ReceiverEvent>> {
        let what = format!("offered manifest of {package} v{version}");
        let manifest = match Manifest::decode(&bytes, &what) {
            Ok(m) => m,
            Err(e) => {
                let detail = format!("receiver: {e}");
                return Err(self.fail(ProtocolError::BadManifest, detail));
            }
        };
        if manifest.package != package || manifest.version != version {
            let detail = format!(
                "receiver: {what} is really {} v{}",
                manifest.package, manifest.version
            );
            return Err(self.fail(ProtocolError::BadManifest, detail));
        }
        self.hash = *blake3::hash(&bytes).as_bytes();
        self.manifest = Some(manifest.clone());
        self.verifier = Some(ChunkVerifier {
            lens: Arc::new(manifest.chunks()),
            hash: self.hash,
            role: self.role().into(),
        });
        self.state = ReceiverState::AwaitLacking;
        Ok(vec![ReceiverEvent::Lookup { manifest }])
    }

    /// The verifier of the offered manifest's chunks, once an `Offer` was accepted.
    pub fn verifier(&self) -> Option<ChunkVerifier> {
        self.verifier.clone()
    }

    /// Takes a chunk of a `Chunk` message that the shell verified with
    /// [`verifier`](Self::verifier), or the verification error, which ends the session as a bad
    /// chunk handed to [`handle`](Self::handle) would.
    pub fn handle_checked(&mut self, checked: Result<VerifiedChunk>) -> Result<ReceiverEvent> {
        if self.state != ReceiverState::Receiving {
            let detail = format!(
                "{}: sending peer sent Chunk in state {:?}",
                self.role(),
                self.state
            );
            return Err(self.fail(ProtocolError::UnexpectedMessage, detail));
        }
        let chunk = match checked {
            Ok(c) => c,
            Err(Error::Protocol { code, detail }) => return Err(self.fail(code, detail)),
            Err(e) => return Err(e),
        };
        if chunk.manifest_hash != self.hash {
            return Err(Error::Misuse(format!(
                "{}: chunk {} was verified against another manifest",
                self.role(),
                chunk.id.short()
            )));
        }
        if !self.missing.remove(&chunk.id) {
            let detail = format!(
                "{}: sending peer sent chunk {} which was not needed or already received",
                self.role(),
                chunk.id.short()
            );
            return Err(self.fail(ProtocolError::UnexpectedChunk, detail));
        }
        Ok(ReceiverEvent::Store {
            id: chunk.id,
            ulen: chunk.ulen,
            flags: chunk.flags,
            data: chunk.data,
        })
    }

    /// The shell's answer to [`ReceiverEvent::Lookup`]: the manifest's chunk IDs its library
    /// lacks (duplicates are ignored). Queues `Need`.
    pub fn lacking(&mut self, ids: impl IntoIterator<Item = ChunkId>) -> Result<()> {
        if self.state != ReceiverState::AwaitLacking {
            return Err(Error::Misuse(format!(
                "{}: lacking() called in state {:?}, expected after a Lookup event",
                self.role(),
                self.state
            )));
        }
        let mut need = Vec::new();
        let mut seen = HashSet::new();
        for id in ids {
            if !self
                .verifier
                .as_ref()
                .is_some_and(|v| v.lens.contains_key(&id))
            {
                return Err(Error::Misuse(format!(
                    "{}: lacking() names chunk {} which the manifest does not",
                    self.role(),
                    id.short()
                )));
            }
            if seen.insert(id) {
                need.push(id);
            }
        }
        self.missing = seen;
        self.link.outbox.push_back(Message::Need { chunks: need });
        self.state = ReceiverState::Receiving;
        Ok(())
    }

    /// The shell's answer to [`ReceiverEvent::Commit`] once the manifest is durably committed.
    /// Queues `Committed` with the manifest hash.
    pub fn committed(&mut self) -> Result<()> {
        if self.state != ReceiverState::AwaitCommitCall {
            return Err(Error::Misuse(format!(
                "{}: committed() called in state {:?}, expected after a Commit event",
                self.role(),
                self.state
            )));
        }
        self.link
            .outbox
            .push_back(Message::Committed { hash: self.hash });
        self.state = ReceiverState::Done;
        Ok(())
    }

    /// Ends the session from the shell's side (store or commit failed, shutdown): queues
    /// `Abort` with code [`ProtocolError::Aborted`] and `reason`.
    pub fn abort(&mut self, reason: &str) {
        let _ = self.fail(ProtocolError::Aborted, reason.to_string());
    }

    /// The peer's bytes did not decode (an error of [`FrameDecoder`]), or arrived where the
    /// shell does not allow them: queues `Abort` with the error's code, returns the error.
    pub fn decode_failed(&mut self, e: Error) -> Error {
        match e {
            Error::Protocol { code, detail } => self.fail(code, detail),
            other => other,
        }
    }
}

/// Checks a stored chunk purely: flags known, `ulen` within limits and equal to the manifest's
/// length, data decompresses to exactly `ulen` bytes, and those hash to `id`.
fn verify_chunk(
    id: ChunkId,
    ulen: u32,
    flags: u8,
    data: &[u8],
    expected_len: u32,
) -> std::result::Result<(), String> {
    if flags & !FLAG_ZSTD != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    if ulen > MAX_ULEN || ulen != expected_len {
        return Err(format!(
            "length {ulen} differs from the manifest's {expected_len}"
        ));
    }
    let loc = freight_core::pack::Loc {
        pack: 0,
        offset: 0,
        clen: data.len() as u32,
        ulen,
        flags,
    };
    freight_core::library::check_chunk(&id, &loc, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use freight_core::manifest::{ChunkRef, Entry, EntryKind};
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A library: chunk ID → (ulen, flags, stored data).
    type Lib = HashMap<ChunkId, (u32, u8, Vec<u8>)>;

    /// Deterministic xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            mode: 0o755,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
            kind: EntryKind::Dir,
        }
    }

    /// A manifest of 5 files × 4 chunks (every third chunk zstd-compressed) and the sender's
    /// library holding them.
    fn fixture() -> (Manifest, Lib) {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut lib = Lib::new();
        let mut entries = vec![dir("")];
        for f in 0..5 {
            let mut chunks = Vec::new();
            for c in 0..4 {
                let i = f * 4 + c;
                let len = 200 + rng.below(3000);
                let (raw, compress) = if i % 3 == 0 {
                    let mut v = vec![i as u8; len];
                    v[0] = 0xAA; // distinct from other chunks
                    v[1] = i as u8;
                    (v, true)
                } else {
                    let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    v[0] = i as u8;
                    (v, false)
                };
                let id = ChunkId::of(&raw);
                let stored = if compress {
                    (
                        raw.len() as u32,
                        FLAG_ZSTD,
                        zstd::bulk::compress(&raw, 3).unwrap(),
                    )
                } else {
                    (raw.len() as u32, 0, raw.clone())
                };
                lib.insert(id, stored);
                chunks.push(ChunkRef {
                    id,
                    len: raw.len() as u32,
                });
            }
            entries.push(Entry {
                path: format!("f{f}").into_bytes(),
                mode: 0o644,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 0,
                kind: EntryKind::File {
                    size: chunks.iter().map(|c| c.len as u64).sum(),
                    chunks,
                },
            });
        }
        let m = Manifest {
            package: PackageId::parse("CAS00001").unwrap(),
            version: 3,
            entries,
        };
        assert_eq!(m.chunks().len(), 20);
        (m, lib)
    }

    #[derive(Debug, Default)]
    struct Outcome {
        need: Option<Vec<ChunkId>>,
        chunks_sent: usize,
        sender_err: Option<Error>,
        receiver_err: Option<Error>,
        committed: Option<Manifest>,
    }

    fn move_bytes(pipe: &mut Vec<u8>, dec: &mut FrameDecoder, rng: &mut Rng) {
        let n = if pipe.is_empty() {
            0
        } else {
            1 + rng.below(pipe.len().min(700))
        };
        dec.push(&pipe[..n]);
        pipe.drain(..n);
    }

    /// Runs a whole session through encode → byte pipes cut in random slices → FrameDecoder.
    fn run(manifest: &Manifest, send_lib: &Lib, recv_lib: &mut Lib, seed: u64) -> Outcome {
        let mut rng = Rng(seed | 1);
        let mut out = Outcome::default();
        let mut s = Sender::new(manifest).unwrap();
        let mut r = Receiver::new();
        let (mut s2r, mut r2s) = (Vec::new(), Vec::new());
        let (mut sdec, mut rdec) = (FrameDecoder::new(), FrameDecoder::new());
        for _ in 0..100_000 {
            while let Some(m) = s.poll_transmit() {
                if matches!(m, Message::Chunk { .. }) {
                    out.chunks_sent += 1;
                }
                m.encode_into(&mut s2r);
            }
            while let Some(m) = r.poll_transmit() {
                if let Message::Need { chunks } = &m {
                    out.need = Some(chunks.clone());
                }
                m.encode_into(&mut r2s);
            }
            let finished = |s: &Sender, r: &Receiver| {
                (s.is_done() || s.is_failed()) && (r.is_done() || r.is_failed())
            };
            if s2r.is_empty() && r2s.is_empty() && finished(&s, &r) {
                break;
            }
            move_bytes(&mut s2r, &mut rdec, &mut rng);
            loop {
                match rdec.next_message() {
                    Ok(Some(m)) => match r.handle(m) {
                        Ok(events) => {
                            for ev in events {
                                match ev {
                                    ReceiverEvent::Lookup { manifest } => {
                                        let lack: Vec<ChunkId> = manifest
                                            .chunks()
                                            .into_keys()
                                            .filter(|id| !recv_lib.contains_key(id))
                                            .collect();
                                        r.lacking(lack).unwrap();
                                    }
                                    ReceiverEvent::Store {
                                        id,
                                        ulen,
                                        flags,
                                        data,
                                    } => {
                                        recv_lib.insert(id, (ulen, flags, data));
                                    }
                                    ReceiverEvent::Commit { manifest } => {
                                        out.committed = Some(manifest);
                                        r.committed().unwrap();
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            out.receiver_err.get_or_insert(e);
                        }
                    },
                    Ok(None) => break,
                    Err(e) => panic!("receiver decoder: {e}"),
                }
            }
            move_bytes(&mut r2s, &mut sdec, &mut rng);
            loop {
                match sdec.next_message() {
                    Ok(Some(m)) => match s.handle(m) {
                        Ok(events) => {
                            for SenderEvent::ReadChunk(id) in events {
                                let (ulen, flags, data) = send_lib[&id].clone();
                                s.chunk_ready(id, ulen, flags, data).unwrap();
                            }
                        }
                        Err(e) => {
                            out.sender_err.get_or_insert(e);
                        }
                    },
                    Ok(None) => break,
                    Err(e) => panic!("sender decoder: {e}"),
                }
            }
        }
        out
    }

    fn code_of(e: &Error) -> Option<ProtocolError> {
        match e {
            Error::Protocol { code, .. } => Some(*code),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn full_exchange_in_random_slices(seed in any::<u64>()) {
            let (m, send_lib) = fixture();
            let mut recv_lib = Lib::new();
            let out = run(&m, &send_lib, &mut recv_lib, seed);
            prop_assert!(out.sender_err.is_none(), "{:?}", out.sender_err);
            prop_assert!(out.receiver_err.is_none(), "{:?}", out.receiver_err);
            prop_assert_eq!(out.chunks_sent, 20);
            prop_assert_eq!(out.committed.as_ref(), Some(&m));
            prop_assert_eq!(&recv_lib, &send_lib);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048),
                                    cut in 1usize..64) {
            let mut d = FrameDecoder::new();
            for piece in data.chunks(cut) {
                d.push(piece);
                while let Ok(Some(_)) = d.next_message() {}
            }
            // Random bytes behind a plausible header, for every type.
            for ty in 0u8..=8 {
                let mut frame = ((data.len() + 1) as u32).to_le_bytes().to_vec();
                frame.push(ty);
                frame.extend_from_slice(&data);
                let mut d = FrameDecoder::new();
                d.push(&frame);
                let _ = d.next_message();
            }
        }
    }

    #[test]
    fn sender_and_receiver_finish() {
        let (m, send_lib) = fixture();
        let mut recv_lib = Lib::new();
        let out = run(&m, &send_lib, &mut recv_lib, 7);
        assert!(out.sender_err.is_none() && out.receiver_err.is_none());
        assert_eq!(recv_lib.len(), 20);
        let mut ids: Vec<ChunkId> = recv_lib.keys().copied().collect();
        ids.sort();
        assert_eq!(ids, m.chunks().into_keys().collect::<Vec<_>>());
    }

    #[test]
    fn resume_sends_only_missing_chunks() {
        let (m, send_lib) = fixture();
        let all: Vec<ChunkId> = m.chunks().into_keys().collect();
        let mut recv_lib: Lib = all
            .iter()
            .step_by(2)
            .map(|id| (*id, send_lib[id].clone()))
            .collect();
        let mut expected: Vec<ChunkId> = all.iter().skip(1).step_by(2).copied().collect();
        let out = run(&m, &send_lib, &mut recv_lib, 42);
        assert!(out.sender_err.is_none() && out.receiver_err.is_none());
        let mut need = out.need.unwrap();
        need.sort();
        expected.sort();
        assert_eq!(need, expected);
        assert_eq!(out.chunks_sent, 10);
        assert_eq!(recv_lib, send_lib);

        // Everything present: Need is empty, no chunk flows, still committed.
        let out = run(&m, &send_lib, &mut recv_lib, 43);
        assert_eq!(out.need, Some(vec![]));
        assert_eq!(out.chunks_sent, 0);
        assert_eq!(out.committed.as_ref(), Some(&m));
    }

    /// A receiver driven to the Receiving state for `m`, lacking everything.
    fn receiving(m: &Manifest) -> Receiver {
        let mut r = Receiver::new();
        r.handle(Message::Hello {
            version_min: 1,
            version_max: 1,
        })
        .unwrap();
        let ev = r
            .handle(Message::Offer {
                package: m.package.clone(),
                version: m.version,
                manifest: m.encode(),
            })
            .unwrap();
        assert!(matches!(&ev[..], [ReceiverEvent::Lookup { .. }]));
        r.lacking(m.chunks().into_keys()).unwrap();
        assert!(matches!(r.poll_transmit(), Some(Message::Hello { .. })));
        assert!(matches!(r.poll_transmit(), Some(Message::Need { .. })));
        r
    }

    fn assert_abort(r: Option<Message>, code: ProtocolError) -> String {
        match r {
            Some(Message::Abort { code: c, reason }) => {
                assert_eq!(c, code.code(), "{reason}");
                reason
            }
            other => panic!("expected Abort {code}, got {other:?}"),
        }
    }

    #[test]
    fn chunk_not_matching_its_id_is_rejected() {
        let (m, lib) = fixture();
        let (raw_id, compressed_id) = {
            let mut raw = None;
            let mut comp = None;
            for (id, (_, flags, _)) in &lib {
                if *flags == 0 {
                    raw = Some(*id);
                } else {
                    comp = Some(*id);
                }
            }
            (raw.unwrap(), comp.unwrap())
        };
        for id in [raw_id, compressed_id] {
            let mut r = receiving(&m);
            let (ulen, flags, mut data) = lib[&id].clone();
            if flags == 0 {
                data[5] ^= 1;
            } else {
                let mut raw = zstd::bulk::decompress(&data, ulen as usize).unwrap();
                raw[5] ^= 1;
                data = zstd::bulk::compress(&raw, 3).unwrap();
            }
            let err = r
                .handle(Message::Chunk {
                    id,
                    ulen,
                    flags,
                    data,
                })
                .unwrap_err();
            assert_eq!(code_of(&err), Some(ProtocolError::BadChunk));
            assert!(err.to_string().contains(&id.short()), "{err}");
            let reason = assert_abort(r.poll_transmit(), ProtocolError::BadChunk);
            assert!(reason.contains(&id.short()), "{reason}");
            assert!(r.is_failed());
        }

        // Through the whole session: the corrupt chunk is never stored, the sender sees Abort.
        let mut bad_lib = lib.clone();
        bad_lib.get_mut(&raw_id).unwrap().2[0] ^= 0xFF;
        let mut recv_lib = Lib::new();
        let out = run(&m, &bad_lib, &mut recv_lib, 5);
        assert_eq!(
            out.receiver_err.as_ref().and_then(code_of),
            Some(ProtocolError::BadChunk)
        );
        assert!(matches!(
            out.sender_err,
            Some(Error::PeerAborted { code: 8, .. })
        ));
        assert!(!recv_lib.contains_key(&raw_id));
        assert!(out.committed.is_none());
    }

    #[test]
    fn wrong_length_flags_and_garbage_zstd_are_bad_chunks() {
        let (m, lib) = fixture();
        let (id, (ulen, flags, data)) = lib.iter().find(|(_, v)| v.1 == 0).unwrap();
        for (ulen, flags, data) in [
            (*ulen + 1, *flags, data.clone()),
            (*ulen, 0x80, data.clone()),
            (*ulen, FLAG_ZSTD, data.clone()),
            (MAX_ULEN + 1, *flags, data.clone()),
        ] {
            let mut r = receiving(&m);
            let err = r
                .handle(Message::Chunk {
                    id: *id,
                    ulen,
                    flags,
                    data,
                })
                .unwrap_err();
            assert_eq!(code_of(&err), Some(ProtocolError::BadChunk), "{err}");
        }
    }

    #[test]
    fn unneeded_duplicate_chunks_and_early_done() {
        let (m, lib) = fixture();
        let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
        let chunk = |id: &ChunkId| {
            let (ulen, flags, data) = lib[id].clone();
            Message::Chunk {
                id: *id,
                ulen,
                flags,
                data,
            }
        };
        // Not in the manifest.
        let mut r = receiving(&m);
        let stray = ChunkId::of(b"stray");
        let err = r
            .handle(Message::Chunk {
                id: stray,
                ulen: 5,
                flags: 0,
                data: b"stray".to_vec(),
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedChunk));
        assert_abort(r.poll_transmit(), ProtocolError::UnexpectedChunk);
        // Duplicate.
        let mut r = receiving(&m);
        assert!(r.handle(chunk(&ids[0])).is_ok());
        let err = r.handle(chunk(&ids[0])).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedChunk));
        // Done too early.
        let mut r = receiving(&m);
        r.handle(chunk(&ids[0])).unwrap();
        let err = r.handle(Message::Done).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::Incomplete));
        assert_abort(r.poll_transmit(), ProtocolError::Incomplete);
    }

    #[test]
    fn bad_manifest_is_aborted() {
        let (m, _) = fixture();
        let mut r = Receiver::new();
        r.handle(Message::Hello {
            version_min: 1,
            version_max: 3,
        })
        .unwrap();
        assert_eq!(r.protocol_version(), Some(1));
        let mut bytes = m.encode();
        bytes.truncate(bytes.len() - 3);
        let err = r
            .handle(Message::Offer {
                package: m.package.clone(),
                version: m.version,
                manifest: bytes,
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::BadManifest));
        // Unsent messages (the Hello) are dropped: the Abort goes out alone.
        assert_abort(r.poll_transmit(), ProtocolError::BadManifest);

        // Offer naming another version than its manifest.
        let mut r = Receiver::new();
        r.handle(Message::Hello {
            version_min: 1,
            version_max: 1,
        })
        .unwrap();
        let err = r
            .handle(Message::Offer {
                package: m.package.clone(),
                version: m.version + 1,
                manifest: m.encode(),
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::BadManifest));
    }

    #[test]
    fn unexpected_order_aborts() {
        let (m, _) = fixture();
        // Receiver: Chunk before Offer.
        let mut r = Receiver::new();
        let err = r
            .handle(Message::Chunk {
                id: ChunkId::of(b"x"),
                ulen: 1,
                flags: 0,
                data: b"x".to_vec(),
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
        assert_abort(r.poll_transmit(), ProtocolError::UnexpectedMessage);
        // Later messages are refused without a second Abort.
        assert!(r.handle(Message::Done).is_err());
        assert!(r.poll_transmit().is_none());

        // Sender: Chunk is never valid.
        let mut s = Sender::new(&m).unwrap();
        assert!(matches!(s.poll_transmit(), Some(Message::Hello { .. })));
        let err = s
            .handle(Message::Chunk {
                id: ChunkId::of(b"x"),
                ulen: 1,
                flags: 0,
                data: b"x".to_vec(),
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
        assert_abort(s.poll_transmit(), ProtocolError::UnexpectedMessage);

        // Sender: Need twice.
        let hello = Message::Hello {
            version_min: 1,
            version_max: 1,
        };
        let mut s = Sender::new(&m).unwrap();
        s.handle(hello.clone()).unwrap();
        let ev = s.handle(Message::Need { chunks: vec![] }).unwrap();
        assert!(ev.is_empty());
        let err = s.handle(Message::Need { chunks: vec![] }).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
        let sent: Vec<Message> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert!(matches!(sent.last(), Some(Message::Abort { code: 5, .. })));

        // Sender: Committed before Done, then with the wrong hash.
        let mut s = Sender::new(&m).unwrap();
        s.handle(hello.clone()).unwrap();
        let id = *m.chunks().keys().next().unwrap();
        s.handle(Message::Need { chunks: vec![id] }).unwrap();
        let err = s.handle(Message::Committed { hash: [0; 32] }).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
        let mut s = Sender::new(&m).unwrap();
        s.handle(hello.clone()).unwrap();
        s.handle(Message::Need { chunks: vec![] }).unwrap();
        let err = s.handle(Message::Committed { hash: [7; 32] }).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::BadCommit));
        let sent: Vec<Message> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert!(matches!(sent.last(), Some(Message::Abort { code: 10, .. })));
        s.handle(hello.clone()).unwrap_err();

        // Sender: Need naming a chunk outside the manifest.
        let mut s = Sender::new(&m).unwrap();
        s.handle(hello.clone()).unwrap();
        let err = s
            .handle(Message::Need {
                chunks: vec![ChunkId::of(b"nope")],
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedChunk));

        // Shell misuse is reported, not sent.
        let mut s = Sender::new(&m).unwrap();
        assert!(matches!(
            s.chunk_ready(id, 1, 0, vec![0]),
            Err(Error::Misuse(_))
        ));
        let mut r = Receiver::new();
        assert!(matches!(r.committed(), Err(Error::Misuse(_))));
        assert!(matches!(r.lacking([id]), Err(Error::Misuse(_))));
        assert!(r.poll_transmit().is_none());
    }

    #[test]
    fn peer_abort_becomes_error() {
        let (m, _) = fixture();
        let mut s = Sender::new(&m).unwrap();
        let err = s
            .handle(Message::abort(ProtocolError::Aborted, "disk full"))
            .unwrap_err();
        assert!(
            matches!(&err, Error::PeerAborted { code: 11, reason } if reason == "disk full"),
            "{err:?}"
        );
        assert!(err.to_string().contains("aborted"));
        assert!(s.is_failed());
        let mut r = Receiver::new();
        r.abort("shutting down");
        assert_abort(r.poll_transmit(), ProtocolError::Aborted);
    }

    #[test]
    fn version_negotiation() {
        let (m, _) = fixture();
        let mut r = Receiver::new();
        let err = r
            .handle(Message::Hello {
                version_min: 2,
                version_max: 5,
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::VersionMismatch));
        assert_abort(r.poll_transmit(), ProtocolError::VersionMismatch);
        // Inverted range: no overlap either.
        let mut r = Receiver::new();
        let err = r
            .handle(Message::Hello {
                version_min: 1,
                version_max: 0,
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::VersionMismatch));

        let mut s = Sender::new(&m).unwrap();
        s.poll_transmit();
        let err = s
            .handle(Message::Hello {
                version_min: 0,
                version_max: 0,
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::VersionMismatch));
        assert_abort(s.poll_transmit(), ProtocolError::VersionMismatch);

        let mut s = Sender::new(&m).unwrap();
        s.handle(Message::Hello {
            version_min: 0,
            version_max: 9,
        })
        .unwrap();
        assert_eq!(s.protocol_version(), Some(1));
    }

    fn all_messages() -> Vec<Message> {
        let (m, _) = fixture();
        vec![
            Message::Hello {
                version_min: 1,
                version_max: 1,
            },
            Message::Offer {
                package: m.package.clone(),
                version: 3,
                manifest: m.encode(),
            },
            Message::Need {
                chunks: m.chunks().into_keys().collect(),
            },
            Message::Need { chunks: vec![] },
            Message::Chunk {
                id: ChunkId::of(b"abc"),
                ulen: 3,
                flags: 0,
                data: b"abc".to_vec(),
            },
            Message::Done,
            Message::Committed { hash: [9; 32] },
            Message::abort(ProtocolError::BadChunk, "chunk 0123 is bad"),
        ]
    }

    #[test]
    fn messages_round_trip() {
        let msgs = all_messages();
        let mut stream = Vec::new();
        for m in &msgs {
            m.encode_into(&mut stream);
        }
        let mut d = FrameDecoder::new();
        d.push(&stream);
        let mut got = Vec::new();
        while let Some(m) = d.next_message().unwrap() {
            got.push(m);
        }
        assert_eq!(got, msgs);
        assert_eq!(d.buffered(), 0);
        for e in ProtocolError::ALL {
            assert_eq!(ProtocolError::from_code(e.code()), Some(e));
        }
        assert_eq!(ProtocolError::from_code(0), None);
        assert_eq!(ProtocolError::name_of(999), "unknown");
    }

    #[test]
    fn every_truncation_needs_more_or_errors() {
        let msgs = all_messages();
        let mut stream = Vec::new();
        let mut frames = Vec::new();
        for m in &msgs {
            let f = encode(m);
            stream.extend_from_slice(&f);
            frames.push(f);
        }
        // Prefixes of a valid stream: a prefix of the messages, then "need more".
        for cut in 0..stream.len() {
            let mut d = FrameDecoder::new();
            d.push(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            assert_eq!(&got[..], &msgs[..got.len()]);
            assert!(got.len() < msgs.len());
        }
        // Each frame with its payload cut short but the length field patched to match:
        // an error or (only where data runs to the end) a shorter message, never a panic.
        for (f, m) in frames.iter().zip(&msgs) {
            for len in 0..f.len() - 4 {
                let mut g = (len as u32).to_le_bytes().to_vec();
                g.extend_from_slice(&f[4..4 + len]);
                let mut d = FrameDecoder::new();
                d.push(&g);
                match d.next_message() {
                    Ok(Some(got)) => assert!(
                        matches!(got, Message::Chunk { .. } | Message::Need { .. }),
                        "{m:?} cut to {len} decoded as {got:?}"
                    ),
                    Ok(None) => panic!("complete frame reported as incomplete"),
                    Err(Error::Protocol { .. }) => {}
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        for len in [MAX_FRAME + 1, u32::MAX] {
            let mut d = FrameDecoder::new();
            d.push(&len.to_le_bytes());
            d.push(&[T_CHUNK; 8]);
            let err = d.next_message().unwrap_err();
            assert_eq!(code_of(&err), Some(ProtocolError::FrameTooLarge));
            assert!(err.to_string().contains(&len.to_string()), "{err}");
            assert_eq!(d.buffered(), 0);
            // Poisoned: the same error again, further input ignored.
            d.push(&[0; 16]);
            assert_eq!(d.next_message().unwrap_err().to_string(), err.to_string());
        }
        // The largest legal length only waits for more.
        let mut d = FrameDecoder::new();
        d.push(&MAX_FRAME.to_le_bytes());
        d.push(&[T_CHUNK]);
        assert_eq!(d.next_message().unwrap(), None);
        assert_eq!(d.buffered(), 5);
        assert!(d.buf.capacity() < 1024);
        // A zero length is rejected too.
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(
            code_of(&d.next_message().unwrap_err()),
            Some(ProtocolError::FrameTooLarge)
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let frame = |ty: u8, payload: &[u8]| {
            let mut f = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
            f.push(ty);
            f.extend_from_slice(payload);
            f
        };
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (frame(99, &[]), ProtocolError::UnknownType),
            (frame(0, &[]), ProtocolError::UnknownType),
            (frame(T_HELLO, &[1, 0, 1, 0, 0]), ProtocolError::Malformed),
            (frame(T_DONE, &[0]), ProtocolError::Malformed),
            // Need counting a billion IDs but carrying one: refused before reserving.
            (
                frame(
                    T_NEED,
                    &[&0x4000_0000u32.to_le_bytes()[..], &[0; 32]].concat(),
                ),
                ProtocolError::Malformed,
            ),
            // Abort with a 2000-byte reason.
            (
                frame(
                    T_ABORT,
                    &[&[1, 0][..], &2000u16.to_le_bytes(), &[b'x'; 2000]].concat(),
                ),
                ProtocolError::Malformed,
            ),
            // Abort with invalid UTF-8.
            (
                frame(T_ABORT, &[1, 0, 1, 0, 0xFF]),
                ProtocolError::Malformed,
            ),
            // Offer with a bad package ID.
            (
                frame(T_OFFER, &[&[3][..], b"abc", &[0; 8]].concat()),
                ProtocolError::Malformed,
            ),
        ];
        for (f, code) in cases {
            let mut d = FrameDecoder::new();
            d.push(&f);
            let err = d.next_message().unwrap_err();
            assert_eq!(code_of(&err), Some(code), "{err}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn abort_reason_is_cut_to_one_kib_line() {
        let long = "é".repeat(2000);
        let Message::Abort { reason, .. } = Message::abort(ProtocolError::Aborted, &long) else {
            unreachable!()
        };
        assert!(reason.len() <= MAX_REASON);
        let Message::Abort { reason, .. } = Message::abort(ProtocolError::Aborted, "a\nb") else {
            unreachable!()
        };
        assert_eq!(reason, "a");
        let m = Message::abort(ProtocolError::Aborted, &long);
        let mut d = FrameDecoder::new();
        d.push(&encode(&m));
        assert_eq!(d.next_message().unwrap(), Some(m));
    }
}
