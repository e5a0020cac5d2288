//! The transfer protocol, sans-IO: message framing and the sender/receiver state machines.
//!
//! Nothing here touches a socket, a thread, a clock or a file. The I/O shell (QUIC streams, the
//! content library) feeds received bytes into a [`FrameDecoder`], hands each [`Message`] to a
//! [`Sender`] or [`Receiver`], reports its streams opening and ending, performs the events
//! they return (read a chunk, store a chunk, commit a package) and sends whatever
//! `poll_transmit` yields, encoded with [`encode`], on the stream it names.
//!
//! The code is split along the protocol's seams:
//! - [`wire`]: framing ([`FrameDecoder`], [`encode`]), the [`Message`]s and their byte layouts,
//!   the limits, and the error codes ([`ProtocolError`]);
//! - [`sender`] and [`receiver`]: the two state machines;
//! - [`verify`]: [`ChunkVerifier`], which checks chunks on any thread, and the
//!   [`VerifiedChunk`]s it makes, the only chunks a [`Receiver`] takes.
//!
//! # Streams
//! A session is a control stream and any number of data streams (announced up front; 0 means
//! chunks travel on the control stream). Which stream a message takes, and when `Done` may be
//! sent and acted on, are protocol decisions, so they are made here and not in the shell:
//! - the [`Sender`] tags everything it queues with its stream ([`Transmit`]): the conversation
//!   on the control stream, chunks on any data stream (the shell picks whichever is free,
//!   chunks need no order), then [`Transmit::FinishData`]; it queues `Done` only after the
//!   shell reported every data stream finished ([`Sender::data_stream_finished`]);
//! - the [`Receiver`] refuses a chunk on the control stream and anything but a chunk on a data
//!   stream, accepts each announced data stream once, after its `Need`
//!   ([`Receiver::data_stream_opened`]), and acts on `Done` only once the shell reported every
//!   data stream ended ([`Receiver::data_stream_ended`]); a `Done` that overtook chunks still on
//!   their way is held, not refused, as the streams are not ordered against each other.
//!
//! # Sequence
//! ```text
//! Sender                                   Receiver
//!   Hello(min,max)        ───────────►     (picks the highest common version, replies)
//!                         ◄───────────     Hello(min,max)
//!   Offer(pkg,ver,len,hash) ─────────►     checks len <= MAX_MANIFEST_LEN
//!   ReadManifest event, shell answers
//!   manifest_part(..), one part at a time
//!   ManifestPart * n (≤ 1 MiB each) ───►   checks each part's place, hashes it, ManifestPart
//!                                          event (shell appends it to a temporary file);
//!                                          after the last, hash == offered: ManifestComplete,
//!                                          shell decodes the file, manifest_loaded(..),
//!                                          Lookup event, shell answers lacking(ids)
//!                         ◄───────────     Need(≤ 32,768 ids) * n, NeedEnd
//!   ReadChunk events, shell answers        data_stream_opened(i) per data stream
//!   chunk_ready(..) per ID
//!   Chunk * n  (data streams) ────────►    verifies each (decompress, BLAKE3 == id), Store event
//!   FinishData; the shell finishes the     data_stream_ended(i) per data stream
//!   data streams, data_stream_finished(i)
//!   Done       (control)  ───────────►     after every data stream ended: all needed present?
//!                                          Commit event, shell commits, calls committed()
//!                         ◄───────────     Committed(hash)
//!   hash == manifest hash: done
//! ```
//! Versions: each side announces the range it speaks (today only 2..=2: version 2 carries the
//! manifest and the `Need` list in bounded parts; version 1 carried each in one frame); both
//! pick the highest version in both ranges; no overlap ends the session with
//! `VersionMismatch`, so a version-1 peer is refused in one line naming both ranges.
//!
//! No package is too large for one frame: the sender reads its stored manifest one part at a
//! time and the receiver writes each part to disk as it arrives, so neither holds more than a
//! part of the manifest's bytes in flight. What a receiver accepts is bounded against hostile
//! peers: a declared length above [`MAX_MANIFEST_LEN`] (`ManifestTooLarge`), a part out of
//! place or beyond the declared length, or bytes not hashing to the offered hash
//! (`BadManifest`); a sender refuses `Need` parts naming chunks the manifest does not, naming
//! one twice, or listing more than the manifest names (`UnexpectedChunk`).
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

pub mod receiver;
pub mod sender;
pub mod verify;
pub mod wire;

#[cfg(test)]
mod tests;

pub use receiver::{Receiver, ReceiverEvent};
pub use sender::{Sender, SenderEvent, Transmit};
pub use verify::{ChunkVerifier, VerifiedChunk};
pub use wire::{
    CHUNK_HEADER, FLAG_ZSTD, FrameDecoder, MAX_CHUNK_DATA, MAX_CHUNK_FRAME, MAX_FRAME,
    MAX_MANIFEST_LEN, MAX_MANIFEST_PART, MAX_NEED_FRAME, MAX_NEED_IDS, MAX_PART_FRAME, MAX_REASON,
    MAX_ULEN, Message, ProtocolError, VERSION_MAX, VERSION_MIN, chunk_header, encode,
};

use crate::error::Error;
use std::collections::VecDeque;
use wire::proto;

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

/// What both ends of a session share: the outbox (of [`Message`]s for the receiver, which only
/// ever speaks on the control stream, of [`Transmit`]s for the sender), the negotiated version,
/// and how a session ends (our Abort queued once, or the peer's Abort received).
#[derive(Debug)]
pub(super) struct Link<T> {
    pub(super) outbox: VecDeque<T>,
    protocol_version: Option<u16>,
    aborted: bool,
}

impl<T> Default for Link<T> {
    fn default() -> Self {
        Link {
            outbox: VecDeque::new(),
            protocol_version: None,
            aborted: false,
        }
    }
}

impl<T: From<Message>> Link<T> {
    /// Drops whatever was still queued (chunks and stream ends included: the session is over)
    /// and queues one `Abort`, which goes on the control stream; returns the error to report.
    fn fail(&mut self, code: ProtocolError, detail: String) -> Error {
        if !self.aborted {
            self.aborted = true;
            self.outbox.clear();
            self.outbox
                .push_back(T::from(Message::abort(code, &detail)));
        }
        proto(code, detail)
    }

    /// The peer aborted: nothing more is sent. Its reason is the peer's text: control
    /// characters are escaped before it reaches a log, a database or a terminal.
    fn peer_aborted(&mut self, code: u16, reason: String) -> Error {
        self.aborted = true;
        self.outbox.clear();
        Error::PeerAborted {
            code,
            reason: freight_core::text::printable(&reason),
        }
    }

    /// Records the version agreed with the peer's `Hello`; false when the ranges do not meet.
    fn hello(&mut self, version_min: u16, version_max: u16) -> bool {
        self.protocol_version = negotiate(version_min, version_max);
        self.protocol_version.is_some()
    }
}
