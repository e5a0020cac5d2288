//! The receiving side's state machine.
//!
//! It speaks only on the control stream, so its outbox is plain [`Message`]s. It decides what
//! each of the session's streams may carry (chunks only on data streams when there are any,
//! nothing but chunks there) and when `Done` may be acted on: only after the shell has
//! reported every data stream ended, so that no chunk can still be on its way. A `Done` that
//! arrives earlier is held, not refused: the streams are not ordered against each other.

use super::verify::{ChunkVerifier, VerifiedChunk};
use super::wire::{
    MAX_MANIFEST_LEN, MAX_NEED_IDS, Message, ProtocolError, VERSION_MAX, VERSION_MIN,
};
use super::{Link, version_mismatch};
use crate::error::{Error, Result};
use freight_core::{ChunkId, ChunkTable, ManifestChunks, PackageId};
use std::sync::Arc;

/// What the receiver's I/O shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// The next part of the offered manifest's bytes, in order: append it to the session's
    /// temporary manifest file (create it at the first part; remove it when the session
    /// ends). The receiver has checked its place and hashes the parts as they come.
    ManifestPart {
        /// The part's bytes.
        data: Vec<u8>,
    },
    /// Every byte of the manifest arrived, as long as the offer said and hashing to the
    /// offered hash: decode the manifest from the temporary file and call
    /// [`Receiver::manifest_loaded`].
    ManifestComplete,
    /// Find which of the manifest's chunks the library lacks and call [`Receiver::lacking`].
    Lookup {
        /// The offered, validated manifest's chunks.
        chunks: Arc<ChunkTable>,
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
    /// Every needed chunk arrived: commit the received manifest (the bytes of the
    /// `ManifestPart`s), then call [`Receiver::committed`].
    Commit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReceiverState {
    AwaitHello,
    AwaitOffer,
    /// After `Offer`: its `ManifestPart`s arrive.
    ReceivingManifest,
    /// Every part arrived and hashed right; the shell decodes the manifest.
    AwaitManifestLoad,
    AwaitLacking,
    /// After `Need`; chunks are taken until `Done` is acted on (it may be held, see
    /// [`Receiver::data_stream_ended`]).
    Receiving,
    AwaitCommitCall,
    Done,
    Failed,
}

/// The receiving side of one package transfer.
///
/// Waits for the sender's `Hello`. Feed every message of the control stream to
/// [`handle`](Self::handle), act on the returned events, send what
/// [`poll_transmit`](Self::poll_transmit) yields on the control stream. With data streams,
/// report each as it opens ([`data_stream_opened`](Self::data_stream_opened), which gives the
/// verifier for its chunks) and ends ([`data_stream_ended`](Self::data_stream_ended)), and
/// hand it the verified chunks ([`handle_checked`](Self::handle_checked)). Finished when
/// [`is_done`](Self::is_done).
#[derive(Debug)]
pub struct Receiver {
    state: ReceiverState,
    /// The package version offered, once `Offer` arrived.
    offered: Option<(PackageId, u32)>,
    /// The offered manifest's length, the bytes received so far and their hash so far.
    manifest_len: u64,
    manifest_received: u64,
    manifest_hasher: blake3::Hasher,
    /// Most IDs per `Need` part ([`MAX_NEED_IDS`]; smaller in tests).
    pub(super) need_part: usize,
    hash: [u8; 32],
    verifier: Option<ChunkVerifier>,
    /// Per position in the manifest's chunk table: asked for and not yet arrived; and how
    /// many are.
    missing: Vec<bool>,
    missing_left: usize,
    /// Where the next `Need` part starts in `missing`, while parts are left to send. Parts
    /// are made as the outbox drains, so asking for a million chunks holds one part, not
    /// the whole list.
    need_from: Option<usize>,
    /// Data streams the sender announced; 0 = chunks come on the control stream.
    data_streams: u16,
    /// Each data stream's progress, by index.
    streams: Vec<DataStream>,
    /// `Done` arrived and waits for the data streams to end.
    done_held: bool,
    pub(super) link: Link<Message>,
}

/// Where one data stream of a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataStream {
    Unopened,
    Open,
    Ended,
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// A receiver awaiting the sender's `Hello`, in a session without data streams: chunks
    /// come on the control stream, to [`handle`](Self::handle).
    pub fn new() -> Receiver {
        Receiver::with_data_streams(0)
    }

    /// A receiver for a session whose sender announced `data_streams` data streams (0 is
    /// [`new`](Self::new)): chunks come only on them, and `Done` is acted on only once every
    /// one has ended.
    pub fn with_data_streams(data_streams: u16) -> Receiver {
        Receiver {
            state: ReceiverState::AwaitHello,
            link: Link::default(),
            offered: None,
            manifest_len: 0,
            manifest_received: 0,
            manifest_hasher: blake3::Hasher::new(),
            need_part: MAX_NEED_IDS,
            hash: [0; 32],
            verifier: None,
            missing: Vec::new(),
            missing_left: 0,
            need_from: None,
            data_streams,
            streams: vec![DataStream::Unopened; usize::from(data_streams)],
            done_held: false,
        }
    }

    /// The next message to send, if any; all go on the control stream.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(m) = self.link.outbox.pop_front() {
            return Some(m);
        }
        self.next_need_part()
    }

    /// The next `Need` part (or `NeedEnd` after the last) while they are left to send: the
    /// needed positions of `missing` from `need_from` on. A chunk that already arrived is
    /// not asked for again.
    fn next_need_part(&mut self) -> Option<Message> {
        let from = self.need_from?;
        if self.link.aborted {
            self.need_from = None;
            return None;
        }
        let table = &self.verifier.as_ref().expect("verifier set").lens;
        let per_part = self.need_part.max(1);
        let mut chunks = Vec::new();
        let mut at = from;
        while at < self.missing.len() && chunks.len() < per_part {
            if self.missing[at] {
                chunks.push(table.id(at));
            }
            at += 1;
        }
        if chunks.is_empty() {
            self.need_from = None;
            return Some(Message::NeedEnd);
        }
        self.need_from = Some(at);
        Some(Message::Need { chunks })
    }

    /// True once `Committed` has been queued.
    pub fn is_done(&self) -> bool {
        self.state == ReceiverState::Done
    }

    /// True while chunks are expected (after `Need`, until `Done` is acted on).
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
        match &self.offered {
            Some((p, v)) => format!("receiver of {p} v{v}"),
            None => "receiver".to_string(),
        }
    }

    fn fail(&mut self, code: ProtocolError, detail: String) -> Error {
        self.state = ReceiverState::Failed;
        self.link.fail(code, detail)
    }

    /// Processes one message from the sender's control stream.
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
                    manifest_len,
                    manifest_hash,
                },
            ) => self.offer(package, version, manifest_len, manifest_hash),
            (ReceiverState::ReceivingManifest, Message::ManifestPart { offset, data }) => {
                self.manifest_part(offset, data)
            }
            (ReceiverState::Receiving, Message::Chunk { .. }) if self.data_streams > 0 => {
                let detail = format!(
                    "{}: sending peer sent a Chunk on the control stream of a session with {} data streams",
                    self.role(),
                    self.data_streams
                );
                Err(self.fail(ProtocolError::UnexpectedMessage, detail))
            }
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
            (ReceiverState::Receiving, Message::Done) if !self.done_held => {
                self.done_held = true;
                self.done_if_streams_ended()
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
        len: u64,
        hash: [u8; 32],
    ) -> Result<Vec<ReceiverEvent>> {
        self.offered = Some((package, version));
        if len > MAX_MANIFEST_LEN {
            let detail = format!(
                "{}: offered manifest is {len} bytes, more than this receiver accepts ({MAX_MANIFEST_LEN})",
                self.role()
            );
            return Err(self.fail(ProtocolError::ManifestTooLarge, detail));
        }
        if len == 0 {
            let detail = format!("{}: offered manifest is 0 bytes long", self.role());
            return Err(self.fail(ProtocolError::BadManifest, detail));
        }
        self.manifest_len = len;
        self.hash = hash;
        self.state = ReceiverState::ReceivingManifest;
        Ok(Vec::new())
    }

    /// One part of the manifest: exactly where the previous one ended, not beyond the
    /// declared length; after the last, the hash of all of them must be the offered one.
    fn manifest_part(&mut self, offset: u64, data: Vec<u8>) -> Result<Vec<ReceiverEvent>> {
        if offset != self.manifest_received {
            let detail = format!(
                "{}: sending peer sent the manifest part at offset {offset}, expected {} (out of order or duplicated)",
                self.role(),
                self.manifest_received
            );
            return Err(self.fail(ProtocolError::BadManifest, detail));
        }
        let end = offset + data.len() as u64;
        if end > self.manifest_len {
            let detail = format!(
                "{}: sending peer sent a manifest part ending at {end}, beyond the offered length {}",
                self.role(),
                self.manifest_len
            );
            return Err(self.fail(ProtocolError::BadManifest, detail));
        }
        self.manifest_hasher.update(&data);
        self.manifest_received = end;
        let mut events = vec![ReceiverEvent::ManifestPart { data }];
        if end == self.manifest_len {
            let got = *self.manifest_hasher.finalize().as_bytes();
            if got != self.hash {
                let detail = format!(
                    "{}: offered manifest hashes to {}, the offer said {}",
                    self.role(),
                    ChunkId(got).short(),
                    ChunkId(self.hash).short()
                );
                return Err(self.fail(ProtocolError::BadManifest, detail));
            }
            self.state = ReceiverState::AwaitManifestLoad;
            events.push(ReceiverEvent::ManifestComplete);
        }
        Ok(events)
    }

    /// The shell's answer to [`ReceiverEvent::ManifestComplete`]: what the decoder read from
    /// the received bytes (whose version it is and its chunks), or the decoder's error (which
    /// ends the session with `BadManifest`). The manifest must be the offered package
    /// version. Returns the `Lookup` event.
    pub fn manifest_loaded(
        &mut self,
        decoded: freight_core::Result<ManifestChunks>,
    ) -> Result<Vec<ReceiverEvent>> {
        if self.state != ReceiverState::AwaitManifestLoad {
            return Err(Error::Misuse(format!(
                "{}: manifest_loaded() called in state {:?}, expected after a ManifestComplete event",
                self.role(),
                self.state
            )));
        }
        let manifest = match decoded {
            Ok(m) => m,
            Err(e) => {
                let detail = format!("{}: {e}", self.role());
                return Err(self.fail(ProtocolError::BadManifest, detail));
            }
        };
        if self
            .offered
            .as_ref()
            .is_some_and(|(p, v)| *p != manifest.package || *v != manifest.version)
        {
            let detail = format!(
                "{}: offered manifest is really {} v{}",
                self.role(),
                manifest.package,
                manifest.version
            );
            return Err(self.fail(ProtocolError::BadManifest, detail));
        }
        let chunks = Arc::new(manifest.chunks);
        self.verifier = Some(ChunkVerifier {
            lens: chunks.clone(),
            hash: self.hash,
            role: self.role().into(),
        });
        self.state = ReceiverState::AwaitLacking;
        Ok(vec![ReceiverEvent::Lookup { chunks }])
    }

    /// The offered package version, once an `Offer` arrived.
    pub fn offered(&self) -> Option<&(PackageId, u32)> {
        self.offered.as_ref()
    }

    /// The verifier of the offered manifest's chunks, once an `Offer` was accepted.
    pub fn verifier(&self) -> Option<ChunkVerifier> {
        self.verifier.clone()
    }

    /// Takes a chunk that the shell verified with the verifier of its data stream
    /// ([`data_stream_opened`](Self::data_stream_opened), or [`verifier`](Self::verifier)), or
    /// the verification error, which ends the session as a bad chunk handed to
    /// [`handle`](Self::handle) would. Chunks are taken until `Done` is acted on, also while
    /// it is held.
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
        let table = &self
            .verifier
            .as_ref()
            .expect("verifier set in Receiving")
            .lens;
        let at = table.position(&chunk.id).filter(|&i| self.missing[i]);
        if let Some(i) = at {
            self.missing[i] = false;
            self.missing_left -= 1;
        } else {
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

    /// Acts on a held `Done` once every data stream has ended (at once without data streams):
    /// every needed chunk must have arrived, then the manifest may be committed.
    fn done_if_streams_ended(&mut self) -> Result<Vec<ReceiverEvent>> {
        if self.streams.iter().any(|s| *s != DataStream::Ended) {
            return Ok(Vec::new());
        }
        if self.missing_left > 0 {
            let table = &self
                .verifier
                .as_ref()
                .expect("verifier set in Receiving")
                .lens;
            let first = self.missing.iter().position(|&m| m).map(|i| table.id(i));
            let detail = format!(
                "{}: sending peer said Done with {} needed chunks missing (first {})",
                self.role(),
                self.missing_left,
                first.map_or_else(String::new, |id| id.short())
            );
            return Err(self.fail(ProtocolError::Incomplete, detail));
        }
        self.state = ReceiverState::AwaitCommitCall;
        Ok(vec![ReceiverEvent::Commit])
    }

    /// The shell's report that the sender opened data stream `index` (from the stream's
    /// preamble). Allowed once per announced stream, after `Need`; gives the verifier for the
    /// stream's chunks. Anything else is the peer's error: it ends the session with
    /// `UnexpectedMessage`.
    pub fn data_stream_opened(&mut self, index: u16) -> Result<ChunkVerifier> {
        let i = usize::from(index);
        let why = match (self.state, self.streams.get(i)) {
            (ReceiverState::Receiving, Some(DataStream::Unopened)) => {
                self.streams[i] = DataStream::Open;
                return Ok(self.verifier.clone().expect("verifier set in Receiving"));
            }
            (ReceiverState::Receiving, Some(_)) => "which was already opened".to_string(),
            (ReceiverState::Receiving, None) => {
                format!("beyond the {} it announced", self.data_streams)
            }
            (state, _) => format!("in state {state:?}, not after the receiver asked for chunks"),
        };
        let detail = format!(
            "{}: sending peer opened data stream {index} {why}",
            self.role()
        );
        Err(self.fail(ProtocolError::UnexpectedMessage, detail))
    }

    /// The shell's report that open data stream `index` ended cleanly (at a frame boundary,
    /// every chunk on it handed to [`handle_checked`](Self::handle_checked)). Once every data
    /// stream has ended, a held `Done` is acted on: the returned events are then `Commit`, or
    /// the error is `Incomplete`. After the session failed there is nothing to do.
    pub fn data_stream_ended(&mut self, index: u16) -> Result<Vec<ReceiverEvent>> {
        let i = usize::from(index);
        if self.streams.get(i) != Some(&DataStream::Open) {
            return Err(Error::Misuse(format!(
                "{}: data_stream_ended({index}) for a data stream that is not open ({:?})",
                self.role(),
                self.streams.get(i)
            )));
        }
        self.streams[i] = DataStream::Ended;
        match self.state {
            ReceiverState::Receiving if self.done_held => self.done_if_streams_ended(),
            _ => Ok(Vec::new()),
        }
    }

    /// The shell's answer to [`ReceiverEvent::Lookup`]: the manifest's chunk IDs its library
    /// lacks (duplicates are ignored). [`poll_transmit`](Self::poll_transmit) then yields them
    /// as `Need` parts of at most [`MAX_NEED_IDS`] IDs, then `NeedEnd`.
    pub fn lacking(&mut self, ids: impl IntoIterator<Item = ChunkId>) -> Result<()> {
        self.expect_lacking()?;
        let table = self.verifier.as_ref().expect("verifier set").lens.clone();
        let mut missing = vec![false; table.len()];
        for id in ids {
            let Some(i) = table.position(&id) else {
                return Err(Error::Misuse(format!(
                    "{}: lacking() names chunk {} which the manifest does not",
                    self.role(),
                    id.short()
                )));
            };
            missing[i] = true;
        }
        self.lacking_mask(missing)
    }

    /// [`lacking`](Self::lacking) by position: `missing[i]` says the library lacks the chunk
    /// at position `i` of the [`ReceiverEvent::Lookup`]'s table (one byte per chunk, where
    /// a list of IDs would take 32).
    pub fn lacking_mask(&mut self, missing: Vec<bool>) -> Result<()> {
        self.expect_lacking()?;
        let table_len = self.verifier.as_ref().expect("verifier set").lens.len();
        if missing.len() != table_len {
            return Err(Error::Misuse(format!(
                "{}: lacking_mask() has {} positions, the manifest's table {}",
                self.role(),
                missing.len(),
                table_len
            )));
        }
        self.missing_left = missing.iter().filter(|&&m| m).count();
        self.missing = missing;
        self.need_from = Some(0);
        self.state = ReceiverState::Receiving;
        Ok(())
    }

    fn expect_lacking(&self) -> Result<()> {
        if self.state != ReceiverState::AwaitLacking {
            return Err(Error::Misuse(format!(
                "{}: lacking() called in state {:?}, expected after a Lookup event",
                self.role(),
                self.state
            )));
        }
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
        // A session that failed already (a bad frame, the peer's own Abort) said so once.
        if self.state != ReceiverState::Failed {
            let _ = self.fail(ProtocolError::Aborted, reason.to_string());
        }
    }

    /// The peer's bytes did not decode (an error of [`FrameDecoder`](super::FrameDecoder)), or arrived where the
    /// shell does not allow them: queues `Abort` with the error's code, returns the error.
    pub fn decode_failed(&mut self, e: Error) -> Error {
        match e {
            Error::Protocol { code, detail } => self.fail(code, detail),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{Lib, assert_abort, code_of, fixture, receiving_on};
    use freight_core::Manifest;

    /// A receiver of `m` with `streams` data streams that asked for every chunk, its Hello,
    /// Need and NeedEnd taken.
    fn receiving(m: &Manifest, streams: u16) -> Receiver {
        receiving_on(m, Receiver::with_data_streams(streams))
    }

    fn chunk(lib: &Lib, id: &ChunkId) -> Message {
        let (ulen, flags, data) = lib[id].clone();
        Message::Chunk {
            id: *id,
            ulen,
            flags,
            data,
        }
    }

    /// Hands `ids` to `r` as chunks read from a data stream, checked by `v`.
    fn deliver(r: &mut Receiver, v: &ChunkVerifier, lib: &Lib, ids: &[ChunkId]) {
        for id in ids {
            let event = r.handle_checked(v.verify_data(chunk(lib, id))).unwrap();
            assert!(matches!(event, ReceiverEvent::Store { id: got, .. } if got == *id));
        }
    }

    #[test]
    fn a_failure_is_told_to_the_sender_once() {
        let (m, _) = fixture();
        // The shell's own reason (a data stream stalled): one Abort.
        let mut r = receiving(&m, 1);
        r.abort("no chunk bytes within 2 s");
        assert_abort(r.poll_transmit(), ProtocolError::Aborted);
        r.abort("and again");
        assert!(r.poll_transmit().is_none());
        // A bad frame queued its own Abort, with its code; the shell's abort adds none.
        let mut r = receiving(&m, 1);
        let _ = r.decode_failed(Error::Protocol {
            code: ProtocolError::Malformed,
            detail: "data stream ended inside a frame".into(),
        });
        assert_abort(r.poll_transmit(), ProtocolError::Malformed);
        r.abort("the session failed");
        assert!(r.poll_transmit().is_none());
    }

    #[test]
    fn done_is_held_until_every_data_stream_has_ended() {
        let (m, lib) = fixture();
        let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
        let (first, rest) = ids.split_at(8);
        let mut r = receiving(&m, 2);
        let v0 = r.data_stream_opened(0).unwrap();
        let v1 = r.data_stream_opened(1).unwrap();
        deliver(&mut r, &v0, &lib, first);
        assert!(r.data_stream_ended(0).unwrap().is_empty());
        // Done overtakes the chunks still on stream 1: held, not refused.
        assert!(r.handle(Message::Done).unwrap().is_empty());
        assert!(r.is_receiving() && r.poll_transmit().is_none());
        deliver(&mut r, &v1, &lib, rest);
        // The last stream's end lets the receiver act on Done.
        let events = r.data_stream_ended(1).unwrap();
        assert!(matches!(&events[..], [ReceiverEvent::Commit]));
        r.committed().unwrap();
        assert!(matches!(r.poll_transmit(), Some(Message::Committed { .. })));
        assert!(r.is_done());
    }

    #[test]
    fn done_after_every_data_stream_ended_commits_at_once() {
        let (m, lib) = fixture();
        let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
        let mut r = receiving(&m, 1);
        let v = r.data_stream_opened(0).unwrap();
        deliver(&mut r, &v, &lib, &ids);
        assert!(r.data_stream_ended(0).unwrap().is_empty());
        let events = r.handle(Message::Done).unwrap();
        assert!(matches!(&events[..], [ReceiverEvent::Commit]));
    }

    #[test]
    fn a_held_done_with_chunks_missing_is_incomplete_when_the_last_stream_ends() {
        let (m, lib) = fixture();
        let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
        let mut r = receiving(&m, 2);
        let v = r.data_stream_opened(0).unwrap();
        r.data_stream_opened(1).unwrap();
        deliver(&mut r, &v, &lib, &ids[1..]);
        assert!(r.data_stream_ended(0).unwrap().is_empty());
        assert!(r.handle(Message::Done).unwrap().is_empty());
        let err = r.data_stream_ended(1).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::Incomplete));
        assert_abort(r.poll_transmit(), ProtocolError::Incomplete);
        assert!(r.is_failed());
    }

    #[test]
    fn with_data_streams_the_control_stream_carries_no_chunk() {
        let (m, lib) = fixture();
        let id = *m.chunks().keys().next().unwrap();
        let mut r = receiving(&m, 3);
        let err = r.handle(chunk(&lib, &id)).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
        assert!(err.to_string().contains("control stream"), "{err}");
        assert_abort(r.poll_transmit(), ProtocolError::UnexpectedMessage);
    }

    #[test]
    fn a_data_stream_carries_only_chunks() {
        let (m, _) = fixture();
        let mut r = receiving(&m, 1);
        let v = r.data_stream_opened(0).unwrap();
        let err = r.handle_checked(v.verify_data(Message::Done)).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
        assert!(err.to_string().contains("data stream"), "{err}");
        assert_abort(r.poll_transmit(), ProtocolError::UnexpectedMessage);
    }

    #[test]
    fn data_streams_open_once_each_after_need_and_done_comes_once() {
        let (m, _) = fixture();
        // Before the receiver asked for chunks.
        let mut r = Receiver::with_data_streams(2);
        let err = r.data_stream_opened(0).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
        assert_abort(r.poll_transmit(), ProtocolError::UnexpectedMessage);
        // Beyond those announced, or twice.
        for (index, phrase) in [(2, "beyond the 2"), (0, "already opened")] {
            let mut r = receiving(&m, 2);
            r.data_stream_opened(0).unwrap();
            let err = r.data_stream_opened(index).unwrap_err();
            assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
            assert!(err.to_string().contains(phrase), "{err}");
        }
        // A session without data streams has none to open.
        let mut r = receiving(&m, 0);
        assert!(r.data_stream_opened(0).is_err());
        // A second Done is the peer's error, even while the first is held.
        let mut r = receiving(&m, 1);
        r.data_stream_opened(0).unwrap();
        assert!(r.handle(Message::Done).unwrap().is_empty());
        let err = r.handle(Message::Done).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
        // Reporting the end of a stream that is not open is the shell's bug: nothing is sent.
        let mut r = receiving(&m, 2);
        r.data_stream_opened(0).unwrap();
        assert!(matches!(r.data_stream_ended(1), Err(Error::Misuse(_))));
        assert!(matches!(r.data_stream_ended(5), Err(Error::Misuse(_))));
        assert!(r.data_stream_ended(0).unwrap().is_empty());
        assert!(matches!(r.data_stream_ended(0), Err(Error::Misuse(_))));
        assert!(r.poll_transmit().is_none());
    }

    #[test]
    fn a_stream_ending_after_the_session_failed_changes_nothing() {
        let (m, _) = fixture();
        let mut r = receiving(&m, 1);
        r.data_stream_opened(0).unwrap();
        r.abort("disk full");
        assert_abort(r.poll_transmit(), ProtocolError::Aborted);
        assert!(r.data_stream_ended(0).unwrap().is_empty());
        assert!(r.poll_transmit().is_none());
    }
}
