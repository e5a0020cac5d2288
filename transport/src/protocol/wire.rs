//! The protocol's bytes: framing, messages, limits and error codes.
//!
//! # Framing
//! All integers little-endian. A frame is
//! ```text
//! length  u32   bytes of type + payload: 1 ..= the type's limit: MAX_FRAME (8 MiB + 64) for
//!               most, MAX_PART_FRAME (1 MiB + 9) for ManifestPart, MAX_NEED_FRAME
//!               (1 MiB + 5) for Need, MAX_CHUNK_FRAME for a Chunk (a 64 MiB chunk stored
//!               raw and its header)
//! type    u8    message type, below
//! payload       length - 1 bytes
//! ```
//! The length is checked against its type's limit as soon as the length and type bytes arrive,
//! before anything else is buffered for the frame; the decoder never allocates more than the bytes it was given, and a count inside a
//! payload is checked against the bytes that remain before anything is reserved. A payload must
//! be consumed exactly (nothing trails), except `Chunk` whose data is the rest of the frame.
//!
//! # Messages
//! ```text
//! 1 Hello      version_min u16, version_max u16
//! 2 Offer        package (u8 length + ASCII package ID), version u32,
//!                manifest length u64 (1 ..= MAX_MANIFEST_LEN), manifest hash [32]
//!                (BLAKE3 of the canonical manifest bytes, freight_core::manifest: the
//!                package hash); the manifest follows in ManifestParts
//! 8 ManifestPart offset u64 (= bytes of the manifest sent before it), data = rest of frame
//!                (1 ..= MAX_MANIFEST_PART bytes); parts follow the Offer in order, without
//!                gaps or overlaps, until the declared length is reached
//! 3 Need         count u32 (<= MAX_NEED_IDS), chunk id [32] * count (may be empty): one
//!                part of the list of chunks the receiver lacks
//! 9 NeedEnd      (empty): the list is complete
//! 4 Chunk        id [32], ulen u32 (<= 64 MiB), flags u8 (bit0 = zstd), data = rest of frame
//! 5 Done         (empty)
//! 6 Committed    hash [32] = BLAKE3 of the offered manifest bytes
//! 7 Abort        code u16 (ProtocolError), reason (u16 length + UTF-8, <= 1 KiB)
//! ```
//! Protocol version 2 introduced the manifest and the `Need` list in parts (version 1 carried
//! each in one frame, which limited a manifest to 8 MiB); versions 1 and 2 do not overlap, so
//! a version-1 peer is refused at `Hello` with `VersionMismatch`.
//!
//! Limits: a chunk's stored form carries at most [`MAX_CHUNK_DATA`] bytes, the library's
//! largest chunk (so every chunk a library holds can travel). The size of a package is not
//! limited by a frame: its manifest travels in parts of at most [`MAX_MANIFEST_PART`] bytes
//! and its `Need` in parts of at most [`MAX_NEED_IDS`] IDs. [`MAX_FRAME`] and
//! [`MAX_MANIFEST_LEN`] are defences against hostile peers (what one frame, and one
//! announced manifest, may make the other side buffer or write), far above what real
//! packages need.

use crate::error::{Error, Result};
use freight_core::codec::Reader;
use freight_core::manifest::MAX_CHUNK;
use freight_core::{ChunkId, PackageId};
use std::fmt;

/// Largest frame length (type byte + payload) of the messages without a tighter limit of
/// their own (`Hello`, `Offer`, `Done`, `Committed`, `Abort`, all small): 8 MiB + 64. A
/// defence against a hostile peer (how much one frame makes the decoder buffer), not a limit
/// on packages: manifests and `Need` lists travel in bounded parts.
pub const MAX_FRAME: u32 = (8 << 20) + 64;
/// Largest part of a manifest one `ManifestPart` carries: 1 MiB.
pub const MAX_MANIFEST_PART: usize = 1 << 20;
/// Largest `ManifestPart` frame length: type, offset and [`MAX_MANIFEST_PART`] bytes.
pub const MAX_PART_FRAME: u32 = 1 + 8 + MAX_MANIFEST_PART as u32;
/// Most chunk IDs one `Need` part carries: 1 MiB of IDs.
pub const MAX_NEED_IDS: usize = (1 << 20) / 32;
/// Largest `Need` frame length: type, count and [`MAX_NEED_IDS`] IDs.
pub const MAX_NEED_FRAME: u32 = 1 + 4 + 32 * MAX_NEED_IDS as u32;
/// Largest manifest a receiver accepts: 1 GiB (some 7 million files). A defence limit: a
/// hostile sender cannot make a receiver write more than this to its disk for one offer. A
/// sender refuses to offer a larger manifest, with an error naming the package.
pub const MAX_MANIFEST_LEN: u64 = 1 << 30;
/// Largest stored chunk data one `Chunk` frame carries: the library's largest chunk, which it
/// stores raw when it does not shrink ([`MAX_CHUNK`], 64 MiB). One constant for library and
/// wire, so any chunk a library holds can be pushed.
pub const MAX_CHUNK_DATA: usize = MAX_CHUNK as usize;
/// Largest `Chunk` frame length: type, id, ulen, flags and [`MAX_CHUNK_DATA`] bytes.
pub const MAX_CHUNK_FRAME: u32 = 1 + 32 + 4 + 1 + MAX_CHUNK;
/// Largest `Abort` reason, in bytes.
pub const MAX_REASON: usize = 1024;
/// Largest uncompressed chunk length (`ulen`): the manifest's limit, 64 MiB.
pub const MAX_ULEN: u32 = MAX_CHUNK;
/// Chunk flag: the data is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
/// Lowest protocol version this code speaks: 2, manifests and `Need` lists in parts.
pub const VERSION_MIN: u16 = 2;
/// Highest protocol version this code speaks.
pub const VERSION_MAX: u16 = 2;

const T_HELLO: u8 = 1;
const T_OFFER: u8 = 2;
const T_NEED: u8 = 3;
const T_CHUNK: u8 = 4;
const T_DONE: u8 = 5;
const T_COMMITTED: u8 = 6;
const T_ABORT: u8 = 7;
const T_MANIFEST_PART: u8 = 8;
const T_NEED_END: u8 = 9;

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
    /// The authorization table does not let this peer do this (see `authz`).
    Unauthorized = 12,
    /// The offered manifest is larger than [`MAX_MANIFEST_LEN`], the receiver's defence limit.
    ManifestTooLarge = 13,
}

impl ProtocolError {
    pub(crate) const ALL: [ProtocolError; 13] = [
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
        ProtocolError::Unauthorized,
        ProtocolError::ManifestTooLarge,
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
            ProtocolError::Unauthorized => "unauthorized",
            ProtocolError::ManifestTooLarge => "manifest-too-large",
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
            ProtocolError::Unauthorized => {
                "the receiver does not let this site do that; if it should, trust it there in a role that may"
            }
            ProtocolError::ManifestTooLarge => {
                "the manifest is above the receiver's defence limit (1 GiB); split the package"
            }
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) fn proto(code: ProtocolError, detail: String) -> Error {
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
        /// Length of the canonical manifest bytes that follow in `ManifestPart`s.
        manifest_len: u64,
        /// BLAKE3 of those bytes (the package hash).
        manifest_hash: [u8; 32],
    },
    /// A part of the offered manifest's bytes.
    ManifestPart {
        /// Where the part starts in the manifest (the bytes sent before it).
        offset: u64,
        /// The part's bytes, 1 ..= [`MAX_MANIFEST_PART`].
        data: Vec<u8>,
    },
    /// A part of the list of chunk IDs the receiver lacks (may be empty).
    Need {
        /// IDs, each once in the whole list; at most [`MAX_NEED_IDS`].
        chunks: Vec<ChunkId>,
    },
    /// Receiver: the list of chunks it lacks is complete.
    NeedEnd,
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
                manifest_len,
                manifest_hash,
            } => write!(
                f,
                "Offer({package} v{version}, {manifest_len} bytes, {})",
                ChunkId(*manifest_hash).short()
            ),
            Message::ManifestPart { offset, data } => {
                write!(f, "ManifestPart(at {offset}, {} bytes)", data.len())
            }
            Message::Need { chunks } => write!(f, "Need({} chunks)", chunks.len()),
            Message::NeedEnd => f.write_str("NeedEnd"),
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
            Message::ManifestPart { .. } => "ManifestPart",
            Message::Need { .. } => "Need",
            Message::NeedEnd => "NeedEnd",
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

    /// Appends the framed message to `out`. Messages built by [`Sender`](super::Sender) and [`Receiver`](super::Receiver) always
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
                manifest_len,
                manifest_hash,
            } => {
                out.push(T_OFFER);
                let p = package.as_str().as_bytes();
                out.push(p.len() as u8);
                out.extend_from_slice(p);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&manifest_len.to_le_bytes());
                out.extend_from_slice(manifest_hash);
            }
            Message::ManifestPart { offset, data } => {
                out.push(T_MANIFEST_PART);
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(data);
            }
            Message::NeedEnd => out.push(T_NEED_END),
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
            T_MANIFEST_PART => "ManifestPart",
            T_NEED_END => "NeedEnd",
            _ => {
                return Err(proto(
                    ProtocolError::UnknownType,
                    format!("frame from peer has unknown message type {ty}"),
                ));
            }
        };
        let mut r = Reader::new(payload, |offset, reason: &str| {
            proto(
                ProtocolError::Malformed,
                format!("{name} frame from peer is malformed at payload offset {offset}: {reason}"),
            )
        });
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
                    .ok_or_else(|| r.err_here("package ID is not valid"))?;
                let version = r.u32()?;
                let manifest_len = r.u64()?;
                let manifest_hash = r.array()?;
                Message::Offer {
                    package,
                    version,
                    manifest_len,
                    manifest_hash,
                }
            }
            T_MANIFEST_PART => {
                let offset = r.u64()?;
                let data = r.rest();
                if data.is_empty() || data.len() > MAX_MANIFEST_PART {
                    return Err(r.err_here(&format!(
                        "carries {} bytes, outside 1..={MAX_MANIFEST_PART}",
                        data.len()
                    )));
                }
                Message::ManifestPart {
                    offset,
                    data: data.to_vec(),
                }
            }
            T_NEED_END => Message::NeedEnd,
            T_NEED => {
                let n = r.u32()? as usize;
                if n > MAX_NEED_IDS {
                    return Err(
                        r.err_here(&format!("counts {n} chunk IDs, more than {MAX_NEED_IDS}"))
                    );
                }
                if n > r.remaining() / 32 {
                    return Err(r.err_here(&format!("counts {n} chunk IDs but carries fewer")));
                }
                let mut chunks = Vec::with_capacity(n);
                for _ in 0..n {
                    chunks.push(ChunkId(r.array()?));
                }
                Message::Need { chunks }
            }
            T_CHUNK => {
                let id = ChunkId(r.array()?);
                let ulen = r.u32()?;
                let flags = r.u8()?;
                let data = r.rest().to_vec();
                Message::Chunk {
                    id,
                    ulen,
                    flags,
                    data,
                }
            }
            T_DONE => Message::Done,
            T_COMMITTED => Message::Committed { hash: r.array()? },
            _ => {
                let code = r.u16()?;
                let n = r.u16()? as usize;
                if n > MAX_REASON {
                    return Err(r.err_here(&format!("reason is {n} bytes, more than {MAX_REASON}")));
                }
                let reason = std::str::from_utf8(r.take(n)?)
                    .map_err(|_| r.err_here("reason is not UTF-8"))?
                    .to_string();
                Message::Abort { code, reason }
            }
        };
        if r.remaining() != 0 {
            return Err(r.err_here(&format!("{} trailing bytes", r.remaining())));
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

/// Largest frame length for message type `t`.
fn frame_limit(t: u8) -> u32 {
    match t {
        T_CHUNK => MAX_CHUNK_FRAME,
        T_MANIFEST_PART => MAX_PART_FRAME,
        T_NEED => MAX_NEED_FRAME,
        _ => MAX_FRAME,
    }
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

    /// The declared length of the frame being assembled, once its length and type arrived
    /// (and were accepted): the shell reserves memory for a large frame before it buffers it.
    pub fn pending(&self) -> Option<u32> {
        let avail = &self.buf[self.start..];
        (self.failed.is_none() && avail.len() >= 5)
            .then(|| u32::from_le_bytes(avail[..4].try_into().unwrap()))
            .filter(|&len| len > 0 && len <= frame_limit(avail[4]))
    }

    /// For a `Chunk` frame being assembled whose header has arrived: its frame length, `ulen`
    /// and flags, so the shell can reserve the frame's bytes and the plain length it will
    /// decompress to before it reads the rest.
    pub fn pending_chunk(&self) -> Option<(u32, u32, u8)> {
        let len = self.pending()?;
        let avail = &self.buf[self.start..];
        if avail[4] != T_CHUNK || avail.len() < 4 + 1 + 32 + 4 + 1 {
            return None;
        }
        let ulen = u32::from_le_bytes(avail[37..41].try_into().unwrap());
        Some((len, ulen, avail[41]))
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
        // The largest limit is checked at once; the type's own once its byte is here.
        let limit = avail.get(4).map_or(MAX_CHUNK_FRAME, |t| frame_limit(*t));
        if len == 0 || len > limit {
            return Err(self.fail(proto(
                ProtocolError::FrameTooLarge,
                format!("frame from peer declares length {len}, outside 1..={limit}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{code_of, fixture};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

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
                manifest_len: m.encode().len() as u64,
                manifest_hash: *m.hash().as_bytes(),
            },
            Message::ManifestPart {
                offset: 0,
                data: m.encode(),
            },
            Message::ManifestPart {
                offset: 1 << 40,
                data: vec![7],
            },
            Message::Need {
                chunks: m.chunks().into_keys().collect(),
            },
            Message::Need { chunks: vec![] },
            Message::NeedEnd,
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
                        matches!(
                            got,
                            Message::Chunk { .. }
                                | Message::Need { .. }
                                | Message::ManifestPart { .. }
                        ),
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
        // Each type's own limit: a chunk frame may carry the library's largest chunk, any
        // other message at most MAX_FRAME.
        for (len, ty) in [
            (MAX_FRAME + 1, T_OFFER),
            (MAX_NEED_FRAME + 1, T_NEED),
            (MAX_PART_FRAME + 1, T_MANIFEST_PART),
            (MAX_CHUNK_FRAME + 1, T_CHUNK),
            (u32::MAX, T_CHUNK),
            (u32::MAX, T_HELLO),
        ] {
            let mut d = FrameDecoder::new();
            d.push(&len.to_le_bytes());
            d.push(&[ty; 8]);
            let err = d.next_message().unwrap_err();
            assert_eq!(code_of(&err), Some(ProtocolError::FrameTooLarge));
            assert!(err.to_string().contains(&len.to_string()), "{err}");
            assert_eq!(d.buffered(), 0);
            // Poisoned: the same error again, further input ignored.
            d.push(&[0; 16]);
            assert_eq!(d.next_message().unwrap_err().to_string(), err.to_string());
        }
        // The largest legal lengths only wait for more, and say what they will need.
        for (len, ty) in [
            (MAX_FRAME, T_OFFER),
            (MAX_CHUNK_FRAME, T_CHUNK),
            (MAX_PART_FRAME, T_MANIFEST_PART),
            (MAX_NEED_FRAME, T_NEED),
        ] {
            let mut d = FrameDecoder::new();
            d.push(&len.to_le_bytes());
            d.push(&[ty]);
            assert_eq!(d.next_message().unwrap(), None);
            assert_eq!(d.buffered(), 5);
            assert_eq!(d.pending(), Some(len));
            assert!(d.buf.capacity() < 1024);
        }
        // A chunk frame's header tells its plain length before its data arrives.
        let mut d = FrameDecoder::new();
        d.push(&MAX_CHUNK_FRAME.to_le_bytes());
        d.push(&[T_CHUNK]);
        d.push(&[9; 32]);
        assert_eq!(d.pending_chunk(), None);
        d.push(&(64u32 << 20).to_le_bytes());
        d.push(&[FLAG_ZSTD]);
        assert_eq!(
            d.pending_chunk(),
            Some((MAX_CHUNK_FRAME, 64 << 20, FLAG_ZSTD))
        );
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
            // A version-1 Offer (the manifest inline, u32 length): too short for a hash.
            (
                frame(
                    T_OFFER,
                    &[&[8][..], b"CAS00001", &[3, 0, 0, 0], &[4, 0, 0, 0], b"abcd"].concat(),
                ),
                ProtocolError::Malformed,
            ),
            // An empty manifest part.
            (frame(T_MANIFEST_PART, &[0; 8]), ProtocolError::Malformed),
            // A Need part counting more IDs than a part may carry (the frame holds them all).
            (
                frame(
                    T_NEED,
                    &[
                        &((MAX_NEED_IDS + 1) as u32).to_le_bytes()[..],
                        &vec![0; 32 * (MAX_NEED_IDS + 1)],
                    ]
                    .concat(),
                ),
                ProtocolError::FrameTooLarge,
            ),
            // NeedEnd carries nothing.
            (frame(T_NEED_END, &[1]), ProtocolError::Malformed),
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
