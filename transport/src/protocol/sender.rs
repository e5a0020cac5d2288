//! The sending side's state machine.

use super::wire::{MAX_CHUNK_DATA, MAX_FRAME, Message, ProtocolError, VERSION_MAX, VERSION_MIN};
use super::{Link, version_mismatch};
use crate::error::{Error, Result};
use freight_core::{ChunkId, Manifest, PackageId};
use std::collections::{BTreeMap, HashSet, VecDeque};

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

    /// The peer's bytes did not decode (an error of [`FrameDecoder`](super::FrameDecoder)): queues `Abort` with the
    /// error's code and returns the error.
    pub fn decode_failed(&mut self, e: Error) -> Error {
        match e {
            Error::Protocol { code, detail } => self.fail(code, detail),
            other => other,
        }
    }
}
