//! On-disk formats of pack files and their indexes.
//!
//! A pack (`pack-NNNNNNNN.dat`) holds stored chunks (zstd-compressed or raw) back to back; its
//! index (`pack-NNNNNNNN.idx`, same folder) names them. Both start with an 8-byte magic whose
//! last byte is the format version. All integers are little-endian.
//!
//! # Format 2 (written since issue 17)
//! ```text
//! data   "FRPACK\0\x02"
//!        record*   record = header (56 bytes) + stored bytes (clen)
//!                  header = "FRC2" | chunk ID [32] | clen u32 | ulen u32 | flags u8 |
//!                           zero [3] | check [8] = BLAKE3(header[..48])[..8]
//! index  header (32 bytes) = "FRPIDX\0\x02" | committed u64 | zero [8] |
//!                            check [8] = BLAKE3(header[..24])[..8]
//!        entry* (64 bytes) = chunk ID [32] | offset u64 | clen u32 | ulen u32 | flags u8 |
//!                            zero [7] | check [8] = BLAKE3(entry[..56])[..8]
//! ```
//! An entry's `offset` is where the stored bytes start, just past their record header.
//! `committed` is the length of the index (header included) that commits have made durable:
//! a commit fdatasyncs the pack, appends its entries and fdatasyncs them, and only then
//! rewrites the header with the new length (and fdatasyncs again). So after a crash:
//! - bytes of the index past `committed` and bytes of the pack past the last committed record
//!   are an interrupted commit (never visible, named by no manifest) and may be cut;
//! - anything wrong before `committed` (a bad header or entry, an entry past the end of the
//!   pack) is damage, not a crash: the library refuses to open for writing and
//!   `freight library repair` rebuilds the index from the records alone (each record names
//!   its chunk and lengths, and the chunk hash checks its bytes).
//!
//! A pack is created index first: the index header is written and synced, and the folder
//! synced, before the data file exists; so a data file never lacks its index after a crash,
//! and an index without a data file holds no committed entry. Packs are deleted index first
//! too, by renaming the index to a tombstone (`pack-NNNNNNNN.del`, folder synced) before
//! anything is unlinked: a tombstone tells the next open to finish the deletion.
//!
//! # Format 1 (read only)
//! ```text
//! data   "FRPACK\0\x01" stored bytes back to back, no record headers
//! index  "FRPIDX\0\x01" entry* (as in format 2)
//! ```
//! Format 1 has no committed length: an invalid entry followed by a valid one is damage; a
//! run of invalid entries at the end is treated as a torn tail and ignored (the files are
//! never changed, since nothing is appended to a format-1 pack again). Its data cannot be
//! re-indexed without the index: repair keeps only the chunks its index still names. Garbage
//! collection rewrites format-1 packs into format 2 as it compacts them.

use crate::error::{IoContext, Result};
use crate::id::ChunkId;
use crate::manifest::MAX_CHUNK;
use std::path::{Path, PathBuf};

/// Header of a pack data file of the current format.
pub const PACK_MAGIC: &[u8; 8] = b"FRPACK\x00\x02";
/// Header of a format-1 pack data file.
pub const PACK_MAGIC_V1: &[u8; 8] = b"FRPACK\x00\x01";
/// Magic of a pack index file of the current format.
pub const IDX_MAGIC: &[u8; 8] = b"FRPIDX\x00\x02";
/// Header of a format-1 pack index file.
pub const IDX_MAGIC_V1: &[u8; 8] = b"FRPIDX\x00\x01";
/// The pack format this build writes.
pub const FORMAT: u8 = 2;
/// Size of the data file's header.
pub const PACK_HEADER: usize = 8;
/// Size of a format-2 index header.
pub const IDX_HEADER: usize = 32;
/// Size of a format-1 index header.
pub const IDX_HEADER_V1: usize = 8;
/// Size of one index entry.
pub const ENTRY_LEN: usize = 64;
/// Size of a format-2 record header (before each chunk's stored bytes).
pub const RECORD_HEADER: usize = 56;
/// Magic of a format-2 record header.
pub const RECORD_MAGIC: &[u8; 4] = b"FRC2";
/// Flag: the stored bytes are zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
/// Largest uncompressed chunk any manifest may name.
pub const MAX_ULEN: u32 = MAX_CHUNK;
/// Largest stored form of a chunk: zstd's worst case for [`MAX_ULEN`] bytes, with margin.
pub const MAX_CLEN: u32 = MAX_ULEN + (MAX_ULEN >> 8) + 1024;

/// Where a chunk's stored bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Pack number.
    pub pack: u32,
    /// Byte offset of the stored bytes in the pack file (past the record header).
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

    /// Whether the lengths and flags are ones a writer can produce: `ulen` within
    /// [`MAX_ULEN`], `clen` within [`MAX_CLEN`] (equal to `ulen` when raw), known flags.
    /// Values read from disk are checked with this before anything is allocated for them.
    pub fn is_plausible(&self) -> bool {
        self.ulen > 0
            && self.ulen <= MAX_ULEN
            && self.clen > 0
            && self.clen <= MAX_CLEN
            && self.flags & !FLAG_ZSTD == 0
            && (self.flags & FLAG_ZSTD != 0 || self.clen == self.ulen)
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

/// File name of pack `n`'s deletion tombstone (its index, renamed).
pub fn tombstone_name(n: u32) -> String {
    format!("pack-{n:08}.del")
}

/// What a file in a `packs` folder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackFile {
    /// `.dat`: chunk data.
    Data,
    /// `.idx`: the index.
    Index,
    /// `.del`: the tombstone of a pack being deleted.
    Tombstone,
}

/// Parses a pack number and file kind out of a file name of a `packs` folder.
pub fn parse_name(name: &str) -> Option<(u32, PackFile)> {
    let rest = name.strip_prefix("pack-")?;
    let (num, ext) = rest.split_once('.')?;
    if num.len() != 8 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = num.parse().ok()?;
    match ext {
        "dat" => Some((n, PackFile::Data)),
        "idx" => Some((n, PackFile::Index)),
        "del" => Some((n, PackFile::Tombstone)),
        _ => None,
    }
}

fn check(bytes: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(bytes).as_bytes()[..8]);
    c
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
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

/// Decodes one index entry; `None` when its check value does not match or its values are
/// implausible (see [`Loc::is_plausible`]).
pub fn decode_entry(e: &[u8], pack: u32) -> Option<(ChunkId, Loc)> {
    if e.len() != ENTRY_LEN || check(&e[..56]) != e[56..] {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&e[..32]);
    let loc = Loc {
        pack,
        offset: u64_at(e, 32),
        clen: u32_at(e, 40),
        ulen: u32_at(e, 44),
        flags: e[48],
    };
    if loc.offset < PACK_HEADER as u64 || !loc.is_plausible() {
        return None;
    }
    Some((ChunkId(id), loc))
}

/// Encodes the format-2 index header stating `committed` bytes of index.
pub fn encode_idx_header(committed: u64) -> [u8; IDX_HEADER] {
    let mut h = [0u8; IDX_HEADER];
    h[..8].copy_from_slice(IDX_MAGIC);
    h[8..16].copy_from_slice(&committed.to_le_bytes());
    let c = check(&h[..24]);
    h[24..].copy_from_slice(&c);
    h
}

/// Encodes the record header written before a chunk's stored bytes (format 2).
pub fn encode_record(id: &ChunkId, clen: u32, ulen: u32, flags: u8) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[..4].copy_from_slice(RECORD_MAGIC);
    h[4..36].copy_from_slice(&id.0);
    h[36..40].copy_from_slice(&clen.to_le_bytes());
    h[40..44].copy_from_slice(&ulen.to_le_bytes());
    h[44] = flags;
    let c = check(&h[..48]);
    h[48..].copy_from_slice(&c);
    h
}

/// A decoded record header: the chunk it names and its lengths (`pack` 0, `offset` just past
/// the header when decoded at `at` with [`decode_record`]).
pub fn decode_record(h: &[u8], pack: u32, at: u64) -> Option<(ChunkId, Loc)> {
    if h.len() < RECORD_HEADER || &h[..4] != RECORD_MAGIC || check(&h[..48]) != h[48..56] {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[4..36]);
    let loc = Loc {
        pack,
        offset: at + RECORD_HEADER as u64,
        clen: u32_at(h, 36),
        ulen: u32_at(h, 40),
        flags: h[44],
    };
    loc.is_plausible().then_some((ChunkId(id), loc))
}

/// The format version a data or index magic names, if it is a Freight pack file at all.
fn magic_version(bytes: &[u8], stem: &[u8; 7]) -> Option<u8> {
    (bytes.len() >= 8 && &bytes[..7] == stem).then(|| bytes[7])
}

/// The format of a data file from its first bytes: `Ok(version)` or why it is unusable.
pub fn data_format(head: &[u8]) -> std::result::Result<u8, String> {
    match magic_version(head, b"FRPACK\x00") {
        Some(v @ (1 | 2)) => Ok(v),
        Some(v) => Err(format!(
            "pack format {v} is newer than this Freight reads ({FORMAT})"
        )),
        None if head.len() < PACK_HEADER => Err("pack header is torn".into()),
        None => Err("not a pack file (bad header)".into()),
    }
}

/// Why an index could not be taken as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexDamage {
    /// The file is shorter than its header.
    ShortHeader,
    /// The header's magic or check value is wrong.
    BadHeader,
    /// Written by a newer Freight.
    Newer(u8),
    /// The committed length in the header is impossible for this file.
    BadCommitted(u64),
    /// The entry at this byte offset, inside the committed part, does not decode.
    BadEntry(u64),
}

impl std::fmt::Display for IndexDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexDamage::ShortHeader => write!(f, "index header is torn"),
            IndexDamage::BadHeader => write!(f, "index header is damaged"),
            IndexDamage::Newer(v) => write!(
                f,
                "index format {v} is newer than this Freight reads ({FORMAT})"
            ),
            IndexDamage::BadCommitted(c) => {
                write!(
                    f,
                    "index header claims {c} committed bytes, which the file does not hold"
                )
            }
            IndexDamage::BadEntry(at) => write!(f, "index entry at byte {at} is damaged"),
        }
    }
}

/// An index file as read.
#[derive(Debug)]
pub struct IndexFile {
    /// Format version (1 or 2).
    pub format: u8,
    /// Committed entries in file order.
    pub entries: Vec<(ChunkId, Loc)>,
    /// Length of the committed part (header + committed entries).
    pub committed: u64,
    /// Actual file length; bytes past `committed` are a torn tail.
    pub file_len: u64,
    /// Individually valid entries found in the torn tail (format 1: none are used).
    pub tail_valid: usize,
}

/// Parses an index file's bytes: the committed entries, or the damage that prevents it.
pub fn parse_index(bytes: &[u8], pack: u32) -> std::result::Result<IndexFile, IndexDamage> {
    let file_len = bytes.len() as u64;
    let Some(version) = magic_version(bytes, b"FRPIDX\x00") else {
        return Err(if bytes.len() < IDX_HEADER_V1 {
            IndexDamage::ShortHeader
        } else {
            IndexDamage::BadHeader
        });
    };
    match version {
        1 => {
            let mut entries = Vec::new();
            let mut bad_at = None;
            for (i, e) in bytes[IDX_HEADER_V1..].chunks(ENTRY_LEN).enumerate() {
                let at = (IDX_HEADER_V1 + i * ENTRY_LEN) as u64;
                match (decode_entry(e, pack), bad_at) {
                    (Some(x), None) => entries.push(x),
                    // A valid entry after an invalid one: damage in the middle, not a tear.
                    (Some(_), Some(bad)) => return Err(IndexDamage::BadEntry(bad)),
                    (None, None) => bad_at = Some(at),
                    (None, Some(_)) => {}
                }
            }
            let committed = (IDX_HEADER_V1 + entries.len() * ENTRY_LEN) as u64;
            Ok(IndexFile {
                format: 1,
                entries,
                committed,
                file_len,
                tail_valid: 0,
            })
        }
        2 => {
            if bytes.len() < IDX_HEADER {
                return Err(IndexDamage::ShortHeader);
            }
            if check(&bytes[..24]) != bytes[24..32] || bytes[16..24] != [0; 8] {
                return Err(IndexDamage::BadHeader);
            }
            let committed = u64_at(bytes, 8);
            if committed < IDX_HEADER as u64
                || committed > file_len
                || !(committed - IDX_HEADER as u64).is_multiple_of(ENTRY_LEN as u64)
            {
                return Err(IndexDamage::BadCommitted(committed));
            }
            let mut entries = Vec::with_capacity((committed as usize - IDX_HEADER) / ENTRY_LEN);
            for (i, e) in bytes[IDX_HEADER..committed as usize]
                .chunks(ENTRY_LEN)
                .enumerate()
            {
                let at = (IDX_HEADER + i * ENTRY_LEN) as u64;
                let (id, loc) = decode_entry(e, pack).ok_or(IndexDamage::BadEntry(at))?;
                if loc.offset < (PACK_HEADER + RECORD_HEADER) as u64 {
                    return Err(IndexDamage::BadEntry(at));
                }
                entries.push((id, loc));
            }
            let tail_valid = bytes[committed as usize..]
                .chunks(ENTRY_LEN)
                .filter(|e| decode_entry(e, pack).is_some())
                .count();
            Ok(IndexFile {
                format: 2,
                entries,
                committed,
                file_len,
                tail_valid,
            })
        }
        v if v > FORMAT => Err(IndexDamage::Newer(v)),
        _ => Err(IndexDamage::BadHeader),
    }
}

/// The header of an index file: its format and how much of it is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHead {
    /// Format version (1 or 2).
    pub format: u8,
    /// Length of the committed part (format 2; for format 1 the whole file, whose committed
    /// part only a full parse finds).
    pub committed: u64,
    /// Actual file length.
    pub file_len: u64,
}

/// Checks an index file's first bytes (`head`, up to [`IDX_HEADER`]) given its length.
pub fn parse_index_head(head: &[u8], file_len: u64) -> std::result::Result<IndexHead, IndexDamage> {
    let Some(version) = magic_version(head, b"FRPIDX\x00") else {
        return Err(if head.len() < IDX_HEADER_V1 {
            IndexDamage::ShortHeader
        } else {
            IndexDamage::BadHeader
        });
    };
    match version {
        1 => Ok(IndexHead {
            format: 1,
            committed: file_len,
            file_len,
        }),
        2 => {
            if head.len() < IDX_HEADER {
                return Err(IndexDamage::ShortHeader);
            }
            if check(&head[..24]) != head[24..32] || head[16..24] != [0; 8] {
                return Err(IndexDamage::BadHeader);
            }
            let committed = u64_at(head, 8);
            if committed < IDX_HEADER as u64
                || committed > file_len
                || !(committed - IDX_HEADER as u64).is_multiple_of(ENTRY_LEN as u64)
            {
                return Err(IndexDamage::BadCommitted(committed));
            }
            Ok(IndexHead {
                format: 2,
                committed,
                file_len,
            })
        }
        v if v > FORMAT => Err(IndexDamage::Newer(v)),
        _ => Err(IndexDamage::BadHeader),
    }
}

/// Bytes of a format-2 index read at once by [`read_entries`].
const ENTRIES_READ: usize = ENTRY_LEN * 16384;

/// Streams the format-2 index entries of `f` (pack `pack`) between byte `from` and `to`,
/// calling `each` with each entry and its check value, without holding more than a buffer
/// of them: the index of a pack of many small chunks can be large. Stops at the first entry
/// that does not decode (`BadEntry`).
pub fn read_entries(
    f: &std::fs::File,
    path: &Path,
    pack: u32,
    from: u64,
    to: u64,
    each: &mut dyn FnMut(ChunkId, Loc, [u8; 8]) -> Result<()>,
) -> Result<std::result::Result<(), IndexDamage>> {
    let mut buf = vec![0u8; ENTRIES_READ.min((to.saturating_sub(from)) as usize)];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        let got = crate::library::read_full_at(f, &mut buf[..n], at).ctx(path, "read index")?;
        if got != n {
            return Ok(Err(IndexDamage::BadCommitted(to)));
        }
        for (i, e) in buf[..n].chunks(ENTRY_LEN).enumerate() {
            let eat = at + (i * ENTRY_LEN) as u64;
            match decode_entry(e, pack) {
                Some((id, loc)) if loc.offset >= (PACK_HEADER + RECORD_HEADER) as u64 => {
                    each(id, loc, e[56..64].try_into().expect("8 bytes"))?;
                }
                _ => return Ok(Err(IndexDamage::BadEntry(eat))),
            }
        }
        at += n as u64;
    }
    Ok(Ok(()))
}

/// The check value of an encoded entry (what [`read_entries`] reports).
pub fn entry_check(id: &ChunkId, loc: &Loc) -> [u8; 8] {
    encode_entry(id, loc)[56..64].try_into().expect("8 bytes")
}

/// Reads and parses an index file.
pub fn read_index(path: &Path, pack: u32) -> Result<std::result::Result<IndexFile, IndexDamage>> {
    let bytes = std::fs::read(path).ctx(path, "read index")?;
    Ok(parse_index(&bytes, pack))
}

/// Paths of pack `n` inside a root: data, index.
pub fn paths(root: &Path, n: u32) -> (PathBuf, PathBuf) {
    let dir = root.join("packs");
    (dir.join(pack_name(n)), dir.join(idx_name(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> Loc {
        Loc {
            pack: 3,
            offset: 64,
            clen: 10,
            ulen: 20,
            flags: FLAG_ZSTD,
        }
    }

    #[test]
    fn entry_round_trip_and_torn_detection() {
        let id = ChunkId::of(b"x");
        let e = encode_entry(&id, &loc());
        assert_eq!(decode_entry(&e, 3), Some((id, loc())));
        for i in 0..ENTRY_LEN {
            let mut bad = e;
            bad[i] ^= 1;
            assert_eq!(decode_entry(&bad, 3), None, "byte {i}");
        }
        assert_eq!(parse_name("pack-00000003.idx"), Some((3, PackFile::Index)));
        assert_eq!(
            parse_name("pack-00000003.del"),
            Some((3, PackFile::Tombstone))
        );
        assert_eq!(parse_name("pack-3.idx"), None);
        assert_eq!(parse_name("pack-+0000003.idx"), None);
    }

    #[test]
    fn implausible_lengths_are_refused_even_with_a_good_check() {
        let id = ChunkId::of(b"x");
        for bad in [
            Loc {
                ulen: MAX_ULEN + 1,
                ..loc()
            },
            Loc {
                clen: MAX_CLEN + 1,
                ..loc()
            },
            Loc { ulen: 0, ..loc() },
            Loc { flags: 0, ..loc() }, // raw, but clen != ulen
            Loc { flags: 4, ..loc() },
        ] {
            assert_eq!(decode_entry(&encode_entry(&id, &bad), 3), None, "{bad:?}");
        }
    }

    #[test]
    fn record_header_round_trip() {
        let id = ChunkId::of(b"y");
        let h = encode_record(&id, 10, 20, FLAG_ZSTD);
        let (rid, rloc) = decode_record(&h, 3, 8).unwrap();
        assert_eq!(rid, id);
        assert_eq!((rloc.offset, rloc.clen, rloc.ulen), (64, 10, 20));
        for i in 0..RECORD_HEADER {
            let mut bad = h;
            bad[i] ^= 1;
            assert!(decode_record(&bad, 3, 8).is_none(), "byte {i}");
        }
    }

    fn index(entries: usize, committed_entries: usize) -> Vec<u8> {
        let mut b = encode_idx_header((IDX_HEADER + committed_entries * ENTRY_LEN) as u64).to_vec();
        for i in 0..entries {
            let l = Loc {
                offset: 64 + 100 * i as u64,
                ..loc()
            };
            b.extend_from_slice(&encode_entry(&ChunkId::of(&[i as u8]), &l));
        }
        b
    }

    #[test]
    fn index_v2_committed_prefix_torn_tail_and_damage() {
        let ix = parse_index(&index(5, 3), 3).unwrap();
        assert_eq!((ix.entries.len(), ix.tail_valid), (3, 2));
        // Damage inside the committed part is never a torn tail.
        let mut b = index(5, 5);
        b[IDX_HEADER + ENTRY_LEN + 7] ^= 1;
        assert_eq!(
            parse_index(&b, 3).unwrap_err(),
            IndexDamage::BadEntry((IDX_HEADER + ENTRY_LEN) as u64)
        );
        let mut b = index(2, 2);
        b[3] ^= 1;
        assert_eq!(parse_index(&b, 3).unwrap_err(), IndexDamage::BadHeader);
        let mut b = index(2, 2);
        b[12] ^= 1; // committed length, caught by the header check
        assert_eq!(parse_index(&b, 3).unwrap_err(), IndexDamage::BadHeader);
        let mut b = index(2, 2);
        b[7] = 9;
        assert_eq!(parse_index(&b, 3).unwrap_err(), IndexDamage::Newer(9));
        let b = index(2, 4);
        assert!(matches!(
            parse_index(&b, 3).unwrap_err(),
            IndexDamage::BadCommitted(_)
        ));
        assert_eq!(
            parse_index(&b[..20], 3).unwrap_err(),
            IndexDamage::ShortHeader
        );
    }

    #[test]
    fn index_v1_tail_and_middle() {
        let mut b = IDX_MAGIC_V1.to_vec();
        for i in 0..4u64 {
            let l = Loc {
                offset: 8 + 10 * i,
                ..loc()
            };
            b.extend_from_slice(&encode_entry(&ChunkId::of(&[i as u8]), &l));
        }
        let ok = parse_index(&b, 3).unwrap();
        assert_eq!((ok.format, ok.entries.len()), (1, 4));
        let mut torn = b.clone();
        torn.truncate(b.len() - 5);
        assert_eq!(parse_index(&torn, 3).unwrap().entries.len(), 3);
        let mut mid = b.clone();
        mid[8 + ENTRY_LEN + 3] ^= 1;
        assert_eq!(
            parse_index(&mid, 3).unwrap_err(),
            IndexDamage::BadEntry((8 + ENTRY_LEN) as u64)
        );
    }
}
