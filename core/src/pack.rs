//! On-disk formats of pack files and their indexes.
//!
//! A pack (`pack-NNNNNNNN.dat`) is an 8-byte header followed by stored chunks back to back,
//! each compressed with zstd or raw. Its index (`pack-NNNNNNNN.idx`, same folder) is an 8-byte
//! header followed by 64-byte entries: chunk ID, offset, stored length, uncompressed length,
//! flags, and a check value over the rest of the entry, so a torn tail is recognised and cut.
//! Index entries are written only after the pack bytes they name are durable: an entry never
//! points at data that is not on disk.

use crate::error::{IoContext, Result};
use crate::id::ChunkId;
use std::path::{Path, PathBuf};

/// Header of a pack data file.
pub const PACK_MAGIC: &[u8; 8] = b"FRPACK\x00\x01";
/// Header of a pack index file.
pub const IDX_MAGIC: &[u8; 8] = b"FRPIDX\x00\x01";
/// Size of one index entry.
pub const ENTRY_LEN: usize = 64;
/// Flag: the stored bytes are zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;

/// Where a chunk's stored bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Pack number.
    pub pack: u32,
    /// Byte offset in the pack file.
    pub offset: u64,
    /// Stored (possibly compressed) length.
    pub clen: u32,
    /// Uncompressed length.
    pub ulen: u32,
    /// `FLAG_*` bits.
    pub flags: u8,
}

impl Loc {
    /// End offset of the stored bytes.
    pub fn end(&self) -> u64 {
        self.offset + self.clen as u64
    }
}

/// File name of pack `n`'s data.
pub fn pack_name(n: u32) -> String {
    format!("pack-{n:08}.dat")
}

/// File name of pack `n`'s index.
pub fn idx_name(n: u32) -> String {
    format!("pack-{n:08}.idx")
}

/// Parses a pack number out of a data or index file name.
pub fn parse_name(name: &str) -> Option<(u32, bool)> {
    let rest = name.strip_prefix("pack-")?;
    let (num, ext) = rest.split_once('.')?;
    if num.len() != 8 {
        return None;
    }
    let n = num.parse().ok()?;
    match ext {
        "dat" => Some((n, false)),
        "idx" => Some((n, true)),
        _ => None,
    }
}

fn check(bytes: &[u8]) -> [u8; 8] {
    blake3::hash(bytes).as_bytes()[..8]
        .try_into()
        .expect("8 bytes")
}

/// Encodes one index entry.
pub fn encode_entry(id: &ChunkId, loc: &Loc) -> [u8; ENTRY_LEN] {
    let mut e = [0u8; ENTRY_LEN];
    e[..32].copy_from_slice(&id.0);
    e[32..40].copy_from_slice(&loc.offset.to_le_bytes());
    e[40..44].copy_from_slice(&loc.clen.to_le_bytes());
    e[44..48].copy_from_slice(&loc.ulen.to_le_bytes());
    e[48] = loc.flags;
    let c = check(&e[..56]);
    e[56..].copy_from_slice(&c);
    e
}

/// Decodes one index entry; `None` when its check value does not match.
pub fn decode_entry(e: &[u8], pack: u32) -> Option<(ChunkId, Loc)> {
    if e.len() != ENTRY_LEN || check(&e[..56]) != e[56..] {
        return None;
    }
    let id = ChunkId(e[..32].try_into().ok()?);
    let loc = Loc {
        pack,
        offset: u64::from_le_bytes(e[32..40].try_into().ok()?),
        clen: u32::from_le_bytes(e[40..44].try_into().ok()?),
        ulen: u32::from_le_bytes(e[44..48].try_into().ok()?),
        flags: e[48],
    };
    if loc.offset < PACK_MAGIC.len() as u64 || loc.flags & !FLAG_ZSTD != 0 {
        return None;
    }
    Some((id, loc))
}

/// An index file as read: its valid entries and the byte length they span.
pub struct IndexFile {
    /// Valid entries in file order.
    pub entries: Vec<(ChunkId, Loc)>,
    /// Length of the valid prefix (header + whole valid entries).
    pub valid_len: u64,
    /// Actual file length.
    pub file_len: u64,
}

/// Reads an index file, stopping at the first torn or invalid entry.
pub fn read_index(path: &Path, pack: u32) -> Result<IndexFile> {
    let bytes = std::fs::read(path).ctx(path, "read index")?;
    let file_len = bytes.len() as u64;
    if bytes.len() < IDX_MAGIC.len() || &bytes[..8] != IDX_MAGIC {
        return Ok(IndexFile {
            entries: Vec::new(),
            valid_len: 0,
            file_len,
        });
    }
    let mut entries = Vec::with_capacity((bytes.len() - 8) / ENTRY_LEN);
    for e in bytes[8..].chunks(ENTRY_LEN) {
        match decode_entry(e, pack) {
            Some(x) => entries.push(x),
            None => break,
        }
    }
    let valid_len = 8 + (entries.len() * ENTRY_LEN) as u64;
    Ok(IndexFile {
        entries,
        valid_len,
        file_len,
    })
}

/// Paths of pack `n` inside a root.
pub fn paths(root: &Path, n: u32) -> (PathBuf, PathBuf) {
    let dir = root.join("packs");
    (dir.join(pack_name(n)), dir.join(idx_name(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip_and_torn_detection() {
        let id = ChunkId::of(b"x");
        let loc = Loc {
            pack: 3,
            offset: 8,
            clen: 10,
            ulen: 20,
            flags: FLAG_ZSTD,
        };
        let e = encode_entry(&id, &loc);
        assert_eq!(decode_entry(&e, 3), Some((id, loc)));
        for i in 0..ENTRY_LEN {
            let mut bad = e;
            bad[i] ^= 1;
            assert_eq!(decode_entry(&bad, 3), None, "byte {i}");
        }
        assert_eq!(parse_name("pack-00000003.idx"), Some((3, true)));
        assert_eq!(parse_name("pack-3.idx"), None);
    }
}
