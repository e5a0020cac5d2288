//! Package manifests: what a package version contains, and their canonical encoding.
//!
//! # Canonical encoding, format 1
//! All integers little-endian. `bytes` = u32 length + that many bytes.
//! ```text
//! magic     8   "FRMANIF\0"
//! format    u16 = 1
//! package   u8 length + ASCII package ID
//! version   u32
//! count     u64 number of entries
//! entry*    kind u8 (0 dir, 1 file, 2 symlink), path bytes, mode u32 (permission bits),
//!           mtime seconds i64, mtime nanoseconds u32, then by kind:
//!             file:    size u64, chunk count u32, (chunk id [32], length u32)*
//!             symlink: target bytes
//! ```
//! Entries are sorted by path bytes and unique; the first is the tree root (empty path, a dir);
//! every other entry's parent is a dir entry. Paths are relative, `/`-separated, with no empty,
//! `.` or `..` component. Decoding accepts exactly what encoding produces: nothing trails, every
//! limit is checked before anything is allocated. The package hash is BLAKE3 of these bytes.

use crate::codec::Reader;
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackageId};
use std::collections::{BTreeMap, HashSet};

const MAGIC: &[u8; 8] = b"FRMANIF\0";
/// The manifest format this code writes and reads.
pub const FORMAT: u16 = 1;
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;
/// Largest chunk a manifest may name.
pub const MAX_CHUNK: u32 = 64 << 20;

/// One chunk of a file, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's uncompressed bytes.
    pub id: ChunkId,
    /// Uncompressed length.
    pub len: u32,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file and its chunks.
    File {
        /// Size in bytes (= sum of chunk lengths).
        size: u64,
        /// Chunks in file order.
        chunks: Vec<ChunkRef>,
    },
    /// A symlink that stays inside the tree.
    Symlink {
        /// The link target, relative.
        target: Vec<u8>,
    },
}

/// One file, directory or symlink of a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path bytes, `/`-separated; empty for the root.
    pub path: Vec<u8>,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Kind and content.
    pub kind: EntryKind,
}

impl Entry {
    /// The path for display.
    pub fn display_path(&self) -> String {
        if self.path.is_empty() {
            ".".into()
        } else {
            String::from_utf8_lossy(&self.path).into_owned()
        }
    }

    fn kind_byte(&self) -> u8 {
        match self.kind {
            EntryKind::Dir => 0,
            EntryKind::File { .. } => 1,
            EntryKind::Symlink { .. } => 2,
        }
    }
}

/// A package version: its ID, version number and entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Package ID.
    pub package: PackageId,
    /// Version number (source version).
    pub version: u32,
    /// Entries in canonical order, root first.
    pub entries: Vec<Entry>,
}

/// What changed between two versions of a package.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Paths only in the new version.
    pub added: Vec<String>,
    /// Paths only in the old version.
    pub removed: Vec<String>,
    /// Paths in both whose content or kind differs.
    pub changed: Vec<String>,
    /// Paths in both whose content is equal but mode or mtime differ.
    pub metadata: Vec<String>,
    /// Chunks the new version uses that the old one does not.
    pub new_chunks: Vec<ChunkId>,
    /// Uncompressed bytes of `new_chunks`.
    pub new_bytes: u64,
}

impl Manifest {
    /// Encodes to canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        let pkg = self.package.as_str().as_bytes();
        out.push(pkg.len() as u8);
        out.extend_from_slice(pkg);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.push(e.kind_byte());
            put_bytes(&mut out, &e.path);
            out.extend_from_slice(&e.mode.to_le_bytes());
            out.extend_from_slice(&e.mtime_sec.to_le_bytes());
            out.extend_from_slice(&e.mtime_nsec.to_le_bytes());
            match &e.kind {
                EntryKind::Dir => {}
                EntryKind::File { size, chunks } => {
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
                    for c in chunks {
                        out.extend_from_slice(&c.id.0);
                        out.extend_from_slice(&c.len.to_le_bytes());
                    }
                }
                EntryKind::Symlink { target } => put_bytes(&mut out, target),
            }
        }
        out
    }

    /// The package hash: BLAKE3 of the canonical encoding.
    pub fn hash(&self) -> blake3::Hash {
        blake3::hash(&self.encode())
    }

    /// Decodes and validates canonical bytes; `what` names the manifest in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Manifest> {
        let mut r = Reader::new(bytes, |offset, reason: &str| Error::BadManifest {
            what: what.to_string(),
            offset,
            reason: reason.to_string(),
        });
        if r.take(8)? != MAGIC {
            return Err(r.err(0, "not a Freight manifest (bad magic)"));
        }
        let format = r.u16()?;
        if format != FORMAT {
            return Err(r.err(
                8,
                &format!("format {format} is not supported (this build reads {FORMAT})"),
            ));
        }
        let at = r.pos();
        let len = r.u8()? as usize;
        let pkg =
            std::str::from_utf8(r.take(len)?).map_err(|_| r.err(at, "package ID is not text"))?;
        let package = PackageId::parse(pkg).map_err(|_| r.err(at, "bad package ID"))?;
        let version = r.u32()?;
        let count = r.u64()?;
        // Each entry takes at least 21 bytes, which bounds the allocation by the input size.
        if count > (bytes.len() as u64) / 21 {
            return Err(r.err(r.pos() - 8, "entry count exceeds the manifest size"));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(count as usize);
        let mut dirs: HashSet<Vec<u8>> = HashSet::new();
        for _ in 0..count {
            let start = r.pos();
            let kind = r.u8()?;
            let path = r.bytes(MAX_PATH)?.to_vec();
            let mode = r.u32()?;
            let mtime_sec = r.i64()?;
            let mtime_nsec = r.u32()?;
            if mode & !0o7777 != 0 {
                return Err(r.err(start, "mode has bits beyond 0o7777"));
            }
            if mtime_nsec >= 1_000_000_000 {
                return Err(r.err(start, "mtime nanoseconds out of range"));
            }
            let kind = match kind {
                0 => EntryKind::Dir,
                1 => {
                    let size = r.u64()?;
                    let n = r.u32()? as usize;
                    if n > r.remaining() / 36 {
                        return Err(r.err(start, "chunk count exceeds the manifest size"));
                    }
                    let mut chunks = Vec::with_capacity(n);
                    let mut sum = 0u64;
                    for _ in 0..n {
                        let id = ChunkId(r.array()?);
                        let len = r.u32()?;
                        if len == 0 || len > MAX_CHUNK {
                            return Err(r.err(start, "chunk length out of range"));
                        }
                        sum += len as u64;
                        chunks.push(ChunkRef { id, len });
                    }
                    if sum != size {
                        return Err(r.err(start, "file size differs from its chunk lengths"));
                    }
                    EntryKind::File { size, chunks }
                }
                2 => {
                    let target = r.bytes(MAX_PATH)?.to_vec();
                    check_symlink_target(&path, &target).map_err(|reason| r.err(start, reason))?;
                    EntryKind::Symlink { target }
                }
                k => return Err(r.err(start, &format!("unknown entry kind {k}"))),
            };
            if entries.is_empty() {
                if !path.is_empty() || kind != EntryKind::Dir {
                    return Err(r.err(start, "first entry must be the root directory"));
                }
            } else {
                check_path(&path).map_err(|reason| r.err(start, reason))?;
                if entries.last().map(|p| p.path.as_slice() >= path.as_slice()) == Some(true) {
                    return Err(r.err(start, "entries out of order or duplicated"));
                }
                let parent = parent_of(&path);
                if !dirs.contains(parent) {
                    return Err(r.err(start, "parent of entry is not a directory in the manifest"));
                }
            }
            if kind == EntryKind::Dir {
                dirs.insert(path.clone());
            }
            entries.push(Entry {
                path,
                mode,
                mtime_sec,
                mtime_nsec,
                kind,
            });
        }
        if entries.is_empty() {
            return Err(r.err_here("manifest has no root entry"));
        }
        if r.remaining() != 0 {
            return Err(r.err_here("trailing bytes after the last entry"));
        }
        Ok(Manifest {
            package,
            version,
            entries,
        })
    }

    /// Every chunk the manifest names, once each, with its uncompressed length.
    pub fn chunks(&self) -> BTreeMap<ChunkId, u32> {
        let mut m = BTreeMap::new();
        for e in &self.entries {
            if let EntryKind::File { chunks, .. } = &e.kind {
                for c in chunks {
                    m.insert(c.id, c.len);
                }
            }
        }
        m
    }

    /// Total bytes of regular files.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }

    /// Compares this (older) version with `new`.
    pub fn diff(&self, new: &Manifest) -> Diff {
        let old: BTreeMap<&[u8], &Entry> = self
            .entries
            .iter()
            .map(|e| (e.path.as_slice(), e))
            .collect();
        let mut d = Diff::default();
        let mut seen = HashSet::new();
        for e in &new.entries {
            seen.insert(e.path.as_slice());
            match old.get(e.path.as_slice()) {
                None => d.added.push(e.display_path()),
                Some(o) if o.kind != e.kind => d.changed.push(e.display_path()),
                Some(o)
                    if o.mode != e.mode
                        || (o.mtime_sec, o.mtime_nsec) != (e.mtime_sec, e.mtime_nsec) =>
                {
                    // A directory's mtime moves whenever its listing does; only report it when
                    // nothing inside explains it.
                    d.metadata.push(e.display_path())
                }
                Some(_) => {}
            }
        }
        for e in &self.entries {
            if !seen.contains(e.path.as_slice()) {
                d.removed.push(e.display_path());
            }
        }
        let old_chunks = self.chunks();
        for (id, len) in new.chunks() {
            if !old_chunks.contains_key(&id) {
                d.new_chunks.push(id);
                d.new_bytes += len as u64;
            }
        }
        d
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The parent path of a relative path (empty for top-level entries).
pub fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => &path[..i],
        None => &[],
    }
}

/// Checks a relative entry path: no empty, `.` or `..` component, no NUL, bounded lengths.
pub fn check_path(path: &[u8]) -> std::result::Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > MAX_PATH {
        return Err("path too long");
    }
    if path.contains(&0) {
        return Err("path contains NUL");
    }
    if path[0] == b'/' {
        return Err("absolute path");
    }
    for comp in path.split(|&c| c == b'/') {
        match comp {
            b"" => return Err("empty path component"),
            b"." | b".." => return Err("`.` or `..` path component"),
            c if c.len() > MAX_NAME => return Err("path component too long"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks that a symlink at `link` with `target` stays inside the tree.
///
/// The rule is structural, not lexical, so that links through other links cannot climb out:
/// the target is relative, its `..` components all come first and climb no higher than the
/// root, and the rest are plain names. Every link in a tree obeys it, so following any chain of
/// them only ever descends from a real directory inside the tree.
pub fn check_symlink_target(link: &[u8], target: &[u8]) -> std::result::Result<(), &'static str> {
    if target.is_empty() {
        return Err("empty symlink target");
    }
    if target.contains(&0) || target.len() > MAX_PATH {
        return Err("symlink target contains NUL or is too long");
    }
    if target[0] == b'/' {
        return Err("absolute symlink target");
    }
    let depth = parent_of(link)
        .split(|&c| c == b'/')
        .filter(|c| !c.is_empty())
        .count();
    let mut climbs = 0;
    let mut named = false;
    for comp in target.split(|&c| c == b'/') {
        match comp {
            b"" | b"." => {}
            b".." if named => return Err("symlink target has `..` after a name"),
            b".." => climbs += 1,
            _ => named = true,
        }
    }
    if climbs > depth {
        return Err("symlink target climbs above the package root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            mode: 0o755,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            kind: EntryKind::Dir,
        }
    }

    fn file(path: &str, data: &[&[u8]]) -> Entry {
        let chunks: Vec<ChunkRef> = data
            .iter()
            .map(|d| ChunkRef {
                id: ChunkId::of(d),
                len: d.len() as u32,
            })
            .collect();
        Entry {
            path: path.as_bytes().to_vec(),
            mode: 0o644,
            mtime_sec: -3,
            mtime_nsec: 999_999_999,
            kind: EntryKind::File {
                size: chunks.iter().map(|c| c.len as u64).sum(),
                chunks,
            },
        }
    }

    fn sample() -> Manifest {
        Manifest {
            package: PackageId::parse("CAS00001").unwrap(),
            version: 3,
            entries: vec![
                dir(""),
                dir("a"),
                file("a/x", &[b"hello", b"world"]),
                Entry {
                    path: b"a/y".to_vec(),
                    mode: 0o777,
                    mtime_sec: 0,
                    mtime_nsec: 0,
                    kind: EntryKind::Symlink {
                        target: b"x".to_vec(),
                    },
                },
                file("b", &[]),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes, "t").unwrap(), m);
        assert_eq!(m.hash(), blake3::hash(&bytes));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..n], "t").is_err(), "prefix {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Manifest::decode(&long, "t").is_err());
    }

    #[test]
    fn hostile_paths_rejected() {
        for p in ["../x", "a/../b", "/etc/passwd", "a//b", "./a", "a/", "a\0b"] {
            let mut m = sample();
            m.entries.push(file(p, &[]));
            m.entries.sort_by(|a, b| a.path.cmp(&b.path));
            assert!(Manifest::decode(&m.encode(), "t").is_err(), "{p:?}");
        }
    }

    #[test]
    fn symlink_rules() {
        assert!(check_symlink_target(b"a/l", b"../b").is_ok());
        assert!(check_symlink_target(b"a/l", b"x/y").is_ok());
        assert!(check_symlink_target(b"l", b"../b").is_err());
        assert!(check_symlink_target(b"a/l", b"../../b").is_err());
        assert!(check_symlink_target(b"a/l", b"/etc").is_err());
        assert!(check_symlink_target(b"a/l", b"s/../..").is_err());
    }

    #[test]
    fn parent_must_be_dir() {
        let mut m = sample();
        m.entries.push(file("b/c", &[b"z"]));
        assert!(Manifest::decode(&m.encode(), "t").is_err());
    }

    #[test]
    fn diff_lists_changes() {
        let old = sample();
        let mut new = sample();
        new.entries[2] = file("a/x", &[b"hello", b"there"]);
        let d = old.diff(&new);
        assert_eq!(d.changed, vec!["a/x".to_string()]);
        assert!(d.added.is_empty() && d.removed.is_empty());
        assert_eq!(d.new_chunks, vec![ChunkId::of(b"there")]);
        assert_eq!(d.new_bytes, 5);
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.-]{1,12}".prop_filter("no dots", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(names in proptest::collection::btree_set(arb_name(), 0..20),
                                    version in any::<u32>(), mtime in any::<i64>(),
                                    sizes in proptest::collection::vec(1u32..5000, 0..20)) {
            let mut entries = vec![dir("")];
            for (i, n) in names.iter().enumerate() {
                let mut e = file(n, &[]);
                e.mtime_sec = mtime;
                if let Some(&s) = sizes.get(i) {
                    let data = vec![i as u8; s as usize];
                    e = file(n, &[&data]);
                }
                entries.push(e);
            }
            let m = Manifest { package: PackageId::parse("PS1000AB").unwrap(), version, entries };
            let bytes = m.encode();
            prop_assert_eq!(Manifest::decode(&bytes, "p").unwrap(), m);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(&bytes, "fuzz");
        }

        #[test]
        fn single_byte_flips_never_panic(pos in 0usize..200, val in any::<u8>()) {
            let mut bytes = sample().encode();
            let p = pos % bytes.len();
            bytes[p] = val;
            let _ = Manifest::decode(&bytes, "flip");
        }
    }
}
