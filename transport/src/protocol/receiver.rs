//! The receiving side's state machine.

use super::verify::{ChunkVerifier, VerifiedChunk};
use super::wire::{Message, ProtocolError, VERSION_MAX, VERSION_MIN};
use super::{Link, version_mismatch};
use crate::error::{Error, Result};
use freight_core::{ChunkId, Manifest, PackageId};
use std::collections::HashSet;
use std::sync::Arc;

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

    /// The peer's bytes did not decode (an error of [`FrameDecoder`](super::FrameDecoder)), or arrived where the
    /// shell does not allow them: queues `Abort` with the error's code, returns the error.
    pub fn decode_failed(&mut self, e: Error) -> Error {
        match e {
            Error::Protocol { code, detail } => self.fail(code, detail),
            other => other,
        }
    }
}
