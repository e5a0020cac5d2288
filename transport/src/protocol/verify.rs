//! Chunk verification, apart from the [`Receiver`](super::Receiver) so that the I/O shell can
//! run it on any thread: decompressing and hashing is the CPU work of a transfer.

use super::wire::{FLAG_ZSTD, MAX_ULEN, Message, ProtocolError, proto};
use crate::error::Result;
use freight_core::{ChunkId, ChunkTable};
use std::sync::Arc;

/// Checks chunks against one offered manifest. Cheap to clone and `Send`, so the I/O shell can
/// verify chunks on several threads and hand only [`VerifiedChunk`]s to the [`Receiver`](super::Receiver).
#[derive(Debug, Clone)]
pub struct ChunkVerifier {
    pub(super) lens: Arc<ChunkTable>,
    pub(super) hash: [u8; 32],
    pub(super) role: Arc<str>,
}

/// A chunk whose bytes were checked against its ID and the manifest; only a
/// [`ChunkVerifier`] makes one.
#[derive(Debug)]
pub struct VerifiedChunk {
    pub(super) id: ChunkId,
    pub(super) ulen: u32,
    pub(super) flags: u8,
    pub(super) data: Vec<u8>,
    pub(super) manifest_hash: [u8; 32],
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
        let Some(expected) = self.lens.chunk_len(&id) else {
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

    /// Verifies one message read from a data stream: a data stream carries nothing but
    /// chunks, so anything else is `UnexpectedMessage`; a chunk is checked as by
    /// [`verify`](Self::verify). Hand the result, good or bad, to
    /// [`Receiver::handle_checked`](super::Receiver::handle_checked), which ends the session
    /// on an error.
    pub fn verify_data(&self, msg: Message) -> Result<VerifiedChunk> {
        match msg {
            Message::Chunk {
                id,
                ulen,
                flags,
                data,
            } => self.verify(id, ulen, flags, data),
            other => Err(proto(
                ProtocolError::UnexpectedMessage,
                format!(
                    "{}: sending peer sent {} on a data stream, which carries only chunks",
                    self.role,
                    other.name()
                ),
            )),
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
