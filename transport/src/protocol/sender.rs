//! The sending side's state machine.
//!
//! Besides what to send, it decides where: [`Transmit`] tags each item with its stream, and
//! the end of the data (finish the data streams, then `Done`) is its decision too, taken from
//! the shell's reports that each data stream has finished. The shell only routes and reports.

use super::wire::{
    MAX_CHUNK_DATA, MAX_MANIFEST_LEN, MAX_MANIFEST_PART, Message, ProtocolError, VERSION_MAX,
    VERSION_MIN,
};
use super::{Link, version_mismatch};
use crate::error::{Error, Result};
use freight_core::{ChunkId, ChunkTable, Manifest, PackageId};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

/// What the sender's I/O shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// Read `len` bytes of the offered manifest's canonical bytes (the stored manifest file)
    /// from `offset` and call [`Sender::manifest_part`]. Asked for one part at a time, so at
    /// most one part of a manifest is in the sender's hands at once.
    ReadManifest {
        /// Where the part starts.
        offset: u64,
        /// Its length, 1 ..= [`MAX_MANIFEST_PART`].
        len: usize,
    },
    /// Read this chunk's stored form from the library and call [`Sender::chunk_ready`].
    ReadChunk(ChunkId),
}

/// Something the sender's I/O shell must send, and where it goes.
///
/// A session has a control stream and, if [`Sender::with_data_streams`] says so, data streams.
/// The control stream carries the conversation in order; chunks go on data streams so that
/// one slow stream never blocks the others. `Done` must not overtake a chunk, but data streams
/// are not ordered against the control stream, so the sender finishes every data stream first
/// and sends `Done` only once the shell has reported them all finished; the receiver likewise
/// acts on `Done` only once it has seen every data stream end.
#[derive(Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A message for the control stream, in order: `Hello`, `Offer`, the `ManifestPart`s,
    /// `Done`, `Abort`, and the chunks too in a session without data streams.
    Control(Message),
    /// A chunk for any one of the data streams. The shell picks the stream (whichever is free
    /// first): the receiver takes chunks in any order.
    Data {
        /// BLAKE3 of the uncompressed bytes.
        id: ChunkId,
        /// Uncompressed length.
        ulen: u32,
        /// Stored-form flags (bit 0 = zstd).
        flags: u8,
        /// Stored bytes.
        data: Vec<u8>,
    },
    /// Every chunk has been queued: finish each data stream once what was queued to it is
    /// written, and report each with [`Sender::data_stream_finished`]. `Done` follows on the
    /// control stream after the last report.
    FinishData,
}

impl Transmit {
    /// The message this item puts on a stream (`Data` as a `Chunk`); `None` for `FinishData`.
    /// For shells and tests that carry every stream over one pipe.
    pub fn into_message(self) -> Option<Message> {
        match self {
            Transmit::Control(m) => Some(m),
            Transmit::Data {
                id,
                ulen,
                flags,
                data,
            } => Some(Message::Chunk {
                id,
                ulen,
                flags,
                data,
            }),
            Transmit::FinishData => None,
        }
    }
}

/// Short, like [`Message`]'s: a chunk's bytes are counted, not printed.
impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transmit::Control(m) => write!(f, "Control({m:?})"),
            Transmit::Data {
                id,
                ulen,
                flags,
                data,
            } => write!(
                f,
                "Data(Chunk({} ulen {ulen} flags {flags} {} bytes))",
                id.short(),
                data.len()
            ),
            Transmit::FinishData => f.write_str("FinishData"),
        }
    }
}

/// Everything the state machine queues for the peer outside the data is a control message.
impl From<Message> for Transmit {
    fn from(m: Message) -> Transmit {
        Transmit::Control(m)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SenderState {
    AwaitHello,
    /// `Offer` queued; the manifest's parts are read and queued one at a time.
    SendingManifest,
    /// The whole manifest queued; `Need` parts arrive until `NeedEnd`.
    AwaitNeed,
    Sending,
    /// Every chunk queued, `FinishData` given; waiting for the data streams to finish.
    FinishingData,
    AwaitCommit,
    Done,
    Failed,
}

/// The sending side of one package transfer.
///
/// Queues `Hello` on creation. Feed every received message to [`handle`](Self::handle), act on
/// the returned events, and send everything [`poll_transmit`](Self::poll_transmit) yields on
/// the stream it names. Finished when [`is_done`](Self::is_done).
#[derive(Debug)]
pub struct Sender {
    package: PackageId,
    version: u32,
    manifest_len: u64,
    hash: [u8; 32],
    /// Bytes of the manifest queued so far, and their hash so far (checked against the
    /// offered hash once all are queued).
    manifest_sent: u64,
    manifest_hasher: blake3::Hasher,
    /// Largest manifest part asked for ([`MAX_MANIFEST_PART`]; smaller in tests).
    pub(super) part_len: usize,
    /// The offered version's distinct chunks: what a `Need` may name.
    chunks: Arc<ChunkTable>,
    /// The `Need` parts received so far, in order, as positions in `chunks`.
    need: Vec<u32>,
    /// Per position in `chunks`: needed and not yet queued; and how many are.
    pending: Vec<bool>,
    pending_left: usize,
    state: SenderState,
    /// Data streams of the session; 0 = chunks go on the control stream.
    data_streams: u16,
    /// Which data streams the shell reported finished, once `FinishData` was given.
    finished: Vec<bool>,
    link: Link<Transmit>,
}

impl Sender {
    /// A session offering `manifest` on one stream: chunks travel on the control stream,
    /// between `Need` and `Done`. Fails if the manifest is above [`MAX_MANIFEST_LEN`].
    pub fn new(manifest: &Manifest) -> Result<Sender> {
        Sender::with_data_streams(manifest, 0)
    }

    /// A session offering `manifest` whose chunks travel on `data_streams` data streams (the
    /// number the shell announces to the receiver; 0 is [`new`](Self::new)). Encodes the
    /// manifest once to learn its length and hash; a shell that has the stored manifest file
    /// uses [`offering`](Self::offering) instead.
    pub fn with_data_streams(manifest: &Manifest, data_streams: u16) -> Result<Sender> {
        let bytes = manifest.encode();
        let hash = *blake3::hash(&bytes).as_bytes();
        Sender::offering(
            manifest.package.clone(),
            manifest.version,
            Arc::new(ChunkTable::of(manifest)?),
            bytes.len() as u64,
            hash,
            data_streams,
        )
    }

    /// A session offering `package` `version`, whose manifest names `chunks` and whose
    /// canonical bytes are `manifest_len` bytes long and hash to `manifest_hash` (the shell
    /// learnt all three from the stored manifest file, which it reads again part by part on
    /// [`SenderEvent::ReadManifest`]; the decoded manifest is never needed). Fails if the
    /// manifest is above [`MAX_MANIFEST_LEN`], the receivers' defence limit.
    pub fn offering(
        package: PackageId,
        version: u32,
        chunks: Arc<ChunkTable>,
        manifest_len: u64,
        manifest_hash: [u8; 32],
        data_streams: u16,
    ) -> Result<Sender> {
        if manifest_len > MAX_MANIFEST_LEN {
            return Err(Error::TooLarge {
                what: format!("manifest of {package} v{version}"),
                size: manifest_len,
                max: MAX_MANIFEST_LEN,
            });
        }
        if manifest_len == 0 {
            return Err(Error::Misuse(format!(
                "manifest of {package} v{version} offered with length 0"
            )));
        }
        let mut outbox = VecDeque::new();
        outbox.push_back(Transmit::Control(Message::Hello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
        }));
        Ok(Sender {
            package,
            version,
            manifest_len,
            hash: manifest_hash,
            manifest_sent: 0,
            manifest_hasher: blake3::Hasher::new(),
            part_len: MAX_MANIFEST_PART,
            pending: vec![false; chunks.len()],
            pending_left: 0,
            chunks,
            need: Vec::new(),
            state: SenderState::AwaitHello,
            data_streams,
            finished: vec![false; usize::from(data_streams)],
            link: Link {
                outbox,
                ..Link::default()
            },
        })
    }

    /// The next item to send, and on which stream; `None` when nothing is queued.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.link.outbox.pop_front()
    }

    /// The session's data streams (0: chunks go on the control stream).
    pub fn data_streams(&self) -> u16 {
        self.data_streams
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
                    self.link
                        .outbox
                        .push_back(Transmit::Control(Message::Offer {
                            package: self.package.clone(),
                            version: self.version,
                            manifest_len: self.manifest_len,
                            manifest_hash: self.hash,
                        }));
                    self.state = SenderState::SendingManifest;
                    Ok(vec![self.next_part()])
                }
                false => {
                    let detail = version_mismatch(&self.role(), version_min, version_max);
                    Err(self.fail(ProtocolError::VersionMismatch, detail))
                }
            },
            (SenderState::AwaitNeed, Message::Need { chunks }) => {
                // A list that never ends: more IDs than the manifest names.
                if self.need.len() + chunks.len() > self.chunks.len() {
                    let detail = format!(
                        "{}: receiving peer's Need lists {} chunks so far, more than the {} the manifest names",
                        self.role(),
                        self.need.len() + chunks.len(),
                        self.chunks.len()
                    );
                    return Err(self.fail(ProtocolError::UnexpectedChunk, detail));
                }
                for id in chunks {
                    let at = self.chunks.position(&id);
                    if at.is_none_or(|i| std::mem::replace(&mut self.pending[i], true)) {
                        let detail = format!(
                            "{}: receiving peer needs chunk {} which the manifest does not name or which it listed twice",
                            self.role(),
                            id.short()
                        );
                        return Err(self.fail(ProtocolError::UnexpectedChunk, detail));
                    }
                    self.pending_left += 1;
                    // A table has fewer than 2^32 chunks: a manifest is at most 1 GiB.
                    self.need.push(at.map_or(0, |i| i as u32));
                }
                Ok(Vec::new())
            }
            (SenderState::AwaitNeed, Message::NeedEnd) => {
                self.state = SenderState::Sending;
                if self.pending_left == 0 {
                    self.all_chunks_queued();
                }
                let need = std::mem::take(&mut self.need);
                let chunks = &self.chunks;
                Ok(need
                    .into_iter()
                    .map(|i| SenderEvent::ReadChunk(chunks.id(i as usize)))
                    .collect())
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

    /// The next part of the manifest to read.
    fn next_part(&self) -> SenderEvent {
        let left = self.manifest_len - self.manifest_sent;
        SenderEvent::ReadManifest {
            offset: self.manifest_sent,
            len: (self.part_len as u64).min(left) as usize,
        }
    }

    /// The shell's answer to [`SenderEvent::ReadManifest`]: the part's bytes. Queues the part
    /// and returns the event for the next one; after the last, none (the receiver's `Need`
    /// follows). When the parts together do not hash to the offered hash (the stored file
    /// changed under the shell), the session is aborted: the receiver would refuse them.
    pub fn manifest_part(&mut self, offset: u64, data: Vec<u8>) -> Result<Vec<SenderEvent>> {
        let expected = match self.next_part() {
            SenderEvent::ReadManifest { offset: o, len } if o == offset && len == data.len() => len,
            _ => 0,
        };
        if self.state != SenderState::SendingManifest || expected == 0 {
            return Err(Error::Misuse(format!(
                "{}: manifest_part at {offset} of {} bytes, not the part asked for (state {:?}, {} of {} bytes sent)",
                self.role(),
                data.len(),
                self.state,
                self.manifest_sent,
                self.manifest_len
            )));
        }
        self.manifest_hasher.update(&data);
        self.manifest_sent += data.len() as u64;
        self.link
            .outbox
            .push_back(Transmit::Control(Message::ManifestPart { offset, data }));
        if self.manifest_sent < self.manifest_len {
            return Ok(vec![self.next_part()]);
        }
        if *self.manifest_hasher.finalize().as_bytes() != self.hash {
            let detail = format!(
                "{}: the manifest's bytes read for the offer do not hash to the offered {} (did the stored manifest change?)",
                self.role(),
                ChunkId(self.hash).short()
            );
            return Err(self.fail(ProtocolError::Aborted, detail));
        }
        self.state = SenderState::AwaitNeed;
        Ok(Vec::new())
    }

    /// The shell's answer to [`SenderEvent::ReadChunk`]: the chunk's stored form as in the
    /// library (`flags` bit 0 = zstd). Queues the chunk, and after the last one the end of
    /// the data (see [`Transmit`]).
    pub fn chunk_ready(&mut self, id: ChunkId, ulen: u32, flags: u8, data: Vec<u8>) -> Result<()> {
        let at = self.chunks.position(&id).filter(|&i| self.pending[i]);
        if self.state != SenderState::Sending || at.is_none() {
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
        if let Some(i) = at {
            self.pending[i] = false;
            self.pending_left -= 1;
        }
        self.link.outbox.push_back(match self.data_streams {
            0 => Transmit::Control(Message::Chunk {
                id,
                ulen,
                flags,
                data,
            }),
            _ => Transmit::Data {
                id,
                ulen,
                flags,
                data,
            },
        });
        if self.pending_left == 0 {
            self.all_chunks_queued();
        }
        Ok(())
    }

    /// Every needed chunk is queued: `Done` follows at once on a single stream; with data
    /// streams, they are finished first and `Done` waits for the shell to report them all.
    fn all_chunks_queued(&mut self) {
        if self.data_streams == 0 {
            self.link.outbox.push_back(Transmit::Control(Message::Done));
            self.state = SenderState::AwaitCommit;
        } else {
            self.link.outbox.push_back(Transmit::FinishData);
            self.state = SenderState::FinishingData;
        }
    }

    /// The shell's report that data stream `index` (0-based, below
    /// [`data_streams`](Self::data_streams)) is finished: everything queued to it was written
    /// and its end sent. After the last one, queues `Done` on the control stream.
    pub fn data_stream_finished(&mut self, index: u16) -> Result<()> {
        let i = usize::from(index);
        if self.state != SenderState::FinishingData || self.finished.get(i) != Some(&false) {
            return Err(Error::Misuse(format!(
                "{}: data_stream_finished({index}) in state {:?}, with {} data streams; expected once per stream after FinishData",
                self.role(),
                self.state,
                self.data_streams
            )));
        }
        self.finished[i] = true;
        if self.finished.iter().all(|&f| f) {
            self.link.outbox.push_back(Transmit::Control(Message::Done));
            self.state = SenderState::AwaitCommit;
        }
        Ok(())
    }

    /// Ends the session from the shell's side (library read failed, shutdown): queues `Abort`
    /// with code [`ProtocolError::Aborted`] and `reason`.
    pub fn abort(&mut self, reason: &str) {
        let _ = self.fail(ProtocolError::Aborted, reason.to_string());
    }

    /// The peer's bytes did not decode (an error of [`FrameDecoder`](super::FrameDecoder)): queues `Abort` with the
    /// error's code and returns the error.
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
    use crate::protocol::tests::{Lib, answer, code_of, fixture};

    const HELLO: Message = Message::Hello {
        version_min: VERSION_MIN,
        version_max: VERSION_MAX,
    };

    /// A sender with `streams` data streams that got the receiver's Hello and a Need for
    /// `need`, its Hello and Offer taken; the chunks are read from `lib`.
    fn sending(m: &Manifest, lib: &Lib, streams: u16, need: &[ChunkId]) -> Sender {
        let mut s = Sender::with_data_streams(m, streams).unwrap();
        let ev = s.handle(HELLO).unwrap();
        answer(&mut s, ev, &m.encode(), lib);
        assert!(matches!(
            s.poll_transmit(),
            Some(Transmit::Control(Message::Hello { .. }))
        ));
        assert!(matches!(
            s.poll_transmit(),
            Some(Transmit::Control(Message::Offer { .. }))
        ));
        assert!(matches!(
            s.poll_transmit(),
            Some(Transmit::Control(Message::ManifestPart { .. }))
        ));
        let events = s
            .handle(Message::Need {
                chunks: need.to_vec(),
            })
            .unwrap();
        assert!(events.is_empty());
        let events = s.handle(Message::NeedEnd).unwrap();
        answer(&mut s, events, &[], lib);
        s
    }

    fn queued(s: &mut Sender) -> Vec<Transmit> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    #[test]
    fn chunks_go_on_data_streams_and_done_waits_for_every_stream_to_finish() {
        let (m, lib) = fixture();
        let need: Vec<ChunkId> = m.chunks().into_keys().take(3).collect();
        let mut s = sending(&m, &lib, 3, &need);
        let out = queued(&mut s);
        // Every chunk tagged for the data streams, then the order to finish them; no Done.
        assert_eq!(out.len(), 4, "{out:?}");
        for (t, id) in out.iter().zip(&need) {
            assert!(
                matches!(t, Transmit::Data { id: got, .. } if got == id),
                "{t:?}"
            );
        }
        assert_eq!(out[3], Transmit::FinishData);
        // Done only after the last stream is reported finished, in any order.
        s.data_stream_finished(2).unwrap();
        s.data_stream_finished(0).unwrap();
        assert!(queued(&mut s).is_empty());
        s.data_stream_finished(1).unwrap();
        assert_eq!(queued(&mut s), [Transmit::Control(Message::Done)]);
        let hash = *blake3::hash(&m.encode()).as_bytes();
        s.handle(Message::Committed { hash }).unwrap();
        assert!(s.is_done());
    }

    #[test]
    fn without_data_streams_chunks_and_done_go_on_the_control_stream() {
        let (m, lib) = fixture();
        let need: Vec<ChunkId> = m.chunks().into_keys().take(2).collect();
        let mut s = sending(&m, &lib, 0, &need);
        assert_eq!(s.data_streams(), 0);
        let out = queued(&mut s);
        assert!(matches!(
            &out[..],
            [
                Transmit::Control(Message::Chunk { .. }),
                Transmit::Control(Message::Chunk { .. }),
                Transmit::Control(Message::Done)
            ]
        ));
        // Nothing to finish.
        assert!(matches!(s.data_stream_finished(0), Err(Error::Misuse(_))));
    }

    #[test]
    fn an_empty_need_finishes_the_data_streams_before_done() {
        let (m, lib) = fixture();
        let mut s = sending(&m, &lib, 2, &[]);
        assert_eq!(queued(&mut s), [Transmit::FinishData]);
        s.data_stream_finished(0).unwrap();
        s.data_stream_finished(1).unwrap();
        assert_eq!(queued(&mut s), [Transmit::Control(Message::Done)]);
    }

    #[test]
    fn stream_reports_out_of_turn_are_shell_bugs_and_commits_before_done_are_refused() {
        let (m, lib) = fixture();
        // Before every chunk is queued, a stream may not be finished.
        let mut early = Sender::with_data_streams(&m, 2).unwrap();
        assert!(matches!(
            early.data_stream_finished(0),
            Err(Error::Misuse(_))
        ));
        let mut s = sending(&m, &lib, 2, &[]);
        assert_eq!(queued(&mut s), [Transmit::FinishData]);
        // Out of range, or twice.
        assert!(matches!(s.data_stream_finished(2), Err(Error::Misuse(_))));
        s.data_stream_finished(1).unwrap();
        assert!(matches!(s.data_stream_finished(1), Err(Error::Misuse(_))));
        // Misuse sends nothing.
        assert!(queued(&mut s).is_empty());
        // The receiver cannot have committed while the data streams are finishing: no Done.
        let hash = *blake3::hash(&m.encode()).as_bytes();
        let err = s.handle(Message::Committed { hash }).unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
        assert!(matches!(
            &queued(&mut s)[..],
            [Transmit::Control(Message::Abort { code: 5, .. })]
        ));
    }

    #[test]
    fn an_abort_drops_queued_chunks_and_goes_on_the_control_stream() {
        let (m, lib) = fixture();
        let need: Vec<ChunkId> = m.chunks().into_keys().take(2).collect();
        let mut s = sending(&m, &lib, 4, &need);
        s.abort("library read failed");
        assert!(matches!(
            &queued(&mut s)[..],
            [Transmit::Control(Message::Abort { code: 11, .. })]
        ));
        assert!(s.is_failed());
    }

    #[test]
    fn debug_counts_a_chunks_bytes_instead_of_printing_them() {
        let t = Transmit::Data {
            id: ChunkId::of(b"x"),
            ulen: 1,
            flags: 0,
            data: vec![0xAB; 4096],
        };
        let text = format!("{t:?}");
        assert!(text.contains("4096 bytes") && text.len() < 100, "{text}");
        assert_eq!(
            t.into_message().map(|m| m.name()),
            Some("Chunk"),
            "a data item is a Chunk on its stream"
        );
        assert_eq!(Transmit::FinishData.into_message(), None);
    }
}
