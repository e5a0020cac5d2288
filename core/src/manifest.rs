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

use crate::error::{Error, Result};
use crate::id::{ChunkId, PackageId};
use std::collections::BTreeMap;
use std::io::{Read, Write};

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
        encode_header(
            &mut out,
            &self.package,
            self.version,
            self.entries.len() as u64,
        );
        for e in &self.entries {
            encode_entry(&mut out, e);
        }
        out
    }

    /// The package hash: BLAKE3 of the canonical encoding.
    pub fn hash(&self) -> blake3::Hash {
        blake3::hash(&self.encode())
    }

    /// Decodes and validates canonical bytes; `what` names the manifest in errors. This is
    /// [`Reader`] collected: there is one decoder.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Manifest> {
        let mut r = Reader::new(bytes, bytes.len() as u64, what)?;
        // The count was checked against the input size, which bounds this allocation.
        let mut entries = Vec::with_capacity(r.entry_count() as usize);
        while let Some(e) = r.next_entry()? {
            entries.push(e);
        }
        Ok(Manifest {
            package: r.package().clone(),
            version: r.version(),
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

    /// Compares this (older) version with `new` ([`diff_entries`] over both).
    pub fn diff(&self, new: &Manifest) -> Diff {
        diff_entries(
            self.entries.iter().cloned().map(Ok),
            new.entries.iter().cloned().map(Ok),
        )
        .expect("entries in memory cannot fail to read")
    }
}

/// Compares an older version's entries with a newer one's, both in canonical order (two
/// [`Reader`]s, or any [`EntrySource`]): a merge join by path, one entry of each at a time.
/// The chunk IDs of both are gathered for `new_chunks` as sorted vectors (36 bytes a chunk,
/// repeats dropped as they grow), not as maps.
pub fn diff_entries(
    old: impl Iterator<Item = Result<Entry>>,
    new: impl Iterator<Item = Result<Entry>>,
) -> Result<Diff> {
    let mut d = Diff::default();
    let mut old_chunks = ChunkList::default();
    let mut new_chunks = ChunkList::default();
    let mut old = old.peekable();
    let mut new = new.peekable();
    loop {
        // Errors surface as they are met.
        if let Some(Err(_)) = old.peek() {
            return Err(old.next().expect("peeked").expect_err("peeked an error"));
        }
        if let Some(Err(_)) = new.peek() {
            return Err(new.next().expect("peeked").expect_err("peeked an error"));
        }
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(Ok(o)), Some(Ok(n))) => o.path.cmp(&n.path),
            _ => unreachable!("errors returned above"),
        };
        match order {
            std::cmp::Ordering::Less => {
                let o = old.next().expect("peeked")?;
                old_chunks.add(&o);
                d.removed.push(o.display_path());
            }
            std::cmp::Ordering::Greater => {
                let e = new.next().expect("peeked")?;
                new_chunks.add(&e);
                d.added.push(e.display_path());
            }
            std::cmp::Ordering::Equal => {
                let o = old.next().expect("peeked")?;
                let e = new.next().expect("peeked")?;
                old_chunks.add(&o);
                new_chunks.add(&e);
                if o.kind != e.kind {
                    d.changed.push(e.display_path());
                } else if o.mode != e.mode
                    || (o.mtime_sec, o.mtime_nsec) != (e.mtime_sec, e.mtime_nsec)
                {
                    d.metadata.push(e.display_path());
                }
            }
        }
    }
    let old_chunks = old_chunks.finish();
    for (id, len) in new_chunks.finish() {
        if old_chunks.binary_search_by_key(&id, |c| c.0).is_err() {
            d.new_chunks.push(id);
            d.new_bytes += u64::from(len);
        }
    }
    Ok(d)
}

/// Chunk IDs with their lengths, gathered into a vector kept free of repeats as it grows.
#[derive(Default)]
struct ChunkList(Vec<(ChunkId, u32)>);

impl ChunkList {
    fn add(&mut self, e: &Entry) {
        if let EntryKind::File { chunks, .. } = &e.kind {
            for c in chunks {
                if self.0.len() == self.0.capacity() && self.0.len() >= 1 << 16 {
                    self.0.sort_unstable_by_key(|c| c.0);
                    self.0.dedup_by_key(|c| c.0);
                    self.0.reserve(self.0.len());
                }
                self.0.push((c.id, c.len));
            }
        }
    }

    /// Sorted by ID, each once.
    fn finish(mut self) -> Vec<(ChunkId, u32)> {
        self.0.sort_unstable_by_key(|c| c.0);
        self.0.dedup_by_key(|c| c.0);
        self.0
    }
}

/// A package version's entries, read from the first in canonical order as often as a caller
/// needs (a materialise goes through them several times): a [`Manifest`] in memory, or a
/// stored one streamed from its file ([`crate::library::StoredManifest`]).
pub trait EntrySource: Sync {
    /// The package.
    fn package(&self) -> &PackageId;
    /// The version.
    fn version(&self) -> u32;
    /// The entries from the first; each is checked as it is read.
    fn entries(&self) -> Result<Box<dyn Iterator<Item = Result<Entry>> + Send + '_>>;
}

impl EntrySource for Manifest {
    fn package(&self) -> &PackageId {
        &self.package
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn entries(&self) -> Result<Box<dyn Iterator<Item = Result<Entry>> + Send + '_>> {
        Ok(Box::new(self.entries.iter().cloned().map(Ok)))
    }
}

/// Appends an entry's canonical bytes to `out`.
fn encode_entry(out: &mut Vec<u8>, e: &Entry) {
    out.push(e.kind_byte());
    put_bytes(out, &e.path);
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
        EntryKind::Symlink { target } => put_bytes(out, target),
    }
}

/// Appends the header (magic to entry count) to `out`.
fn encode_header(out: &mut Vec<u8>, package: &PackageId, version: u32, count: u64) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    let pkg = package.as_str().as_bytes();
    out.push(pkg.len() as u8);
    out.extend_from_slice(pkg);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
}

/// Byte offset of the entry count in the encoding of a manifest of `package`.
pub fn count_offset(package: &PackageId) -> u64 {
    8 + 2 + 1 + package.as_str().len() as u64 + 4
}

/// Byte offset of the version number in the encoding of a manifest of `package`.
pub fn version_offset(package: &PackageId) -> u64 {
    8 + 2 + 1 + package.as_str().len() as u64
}

/// The streaming decoder of the canonical encoding: reads the header, then yields one
/// [`Entry`] at a time with every check of the format (see the module documentation), in
/// memory bounded by one entry plus the folders still open above it, whatever the manifest's
/// size. [`Manifest::decode`] is this reader collected.
///
/// `len` is the length of the whole input (a file's size): the entry count and every length
/// read are checked against what is left of it before anything is allocated, exactly as a
/// decoder holding the whole input would. An input that ends before `len` is truncated, one
/// that goes on past it has trailing bytes.
///
/// ```
/// use freight_core::manifest::{Manifest, Reader};
/// # let m = Manifest { package: freight_core::PackageId::parse("CAS00001").unwrap(), version: 1,
/// #     entries: vec![freight_core::manifest::Entry { path: vec![], mode: 0o755, mtime_sec: 0,
/// #     mtime_nsec: 0, kind: freight_core::manifest::EntryKind::Dir }] };
/// let bytes = m.encode();
/// let mut r = Reader::new(&bytes[..], bytes.len() as u64, "example").unwrap();
/// while let Some(entry) = r.next_entry().unwrap() {
///     assert_eq!(entry.path, b"");
/// }
/// ```
pub struct Reader<R> {
    src: std::io::BufReader<R>,
    what: String,
    pos: u64,
    len: u64,
    /// Set by the header (always once `new` returned).
    package: Option<PackageId>,
    version: u32,
    count: u64,
    read: u64,
    hasher: Option<blake3::Hasher>,
    /// The previous entry's path (order and uniqueness).
    prev: Option<Vec<u8>>,
    /// Folders whose subtree may still hold entries, root first. A folder is dropped once an
    /// entry sorts past `folder/` without that prefix: byte order puts `a/b.txt` between `a/b`
    /// and `a/b/c`, so the folder on top is not always the parent, but every path under
    /// `folder/` comes in one run right after `folder/`.
    open: Vec<Vec<u8>>,
    /// Set by [`Reader::resume`]: reading starts at an entry past the first, so the folders
    /// above it are not known and parents are not checked (the manifest was checked whole
    /// before the position was taken).
    partial: bool,
    done: bool,
    scratch: Vec<u8>,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header of the manifest `src` of `len` bytes; `what` names it in
    /// errors.
    pub fn new(src: R, len: u64, what: &str) -> Result<Reader<R>> {
        Self::start(src, len, what, false)
    }

    /// Like [`new`](Self::new), and hashes every byte read: after the last entry,
    /// [`hash`](Self::hash) is the package hash.
    pub fn hashing(src: R, len: u64, what: &str) -> Result<Reader<R>> {
        Self::start(src, len, what, true)
    }

    /// A reader of the entries of a manifest of `len` bytes from entry number `index` on,
    /// whose first byte is at `at` (a [`position`](Self::position) taken while the manifest
    /// was read whole and checked), `src` reading from there. The header is not read again:
    /// `package`, `version` and the entry `count` are the ones the whole read found. Every
    /// entry is checked as [`next_entry`](Self::next_entry) checks it (fields, limits, order
    /// among the entries this reader reads, the end of the input after the last one) except
    /// that its parent folder is an entry: those folders precede `at`. `buffer` is the read
    /// buffer's size (a lookup reads a few entries, a listing many).
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        src: R,
        len: u64,
        what: &str,
        package: &PackageId,
        version: u32,
        count: u64,
        at: u64,
        index: u64,
        buffer: usize,
    ) -> Result<Reader<R>> {
        let r = Reader {
            src: std::io::BufReader::with_capacity(buffer.max(64), src),
            what: what.to_string(),
            pos: at,
            len,
            package: Some(package.clone()),
            version,
            count,
            read: index,
            hasher: None,
            prev: None,
            open: Vec::new(),
            partial: index > 0,
            done: false,
            scratch: Vec::new(),
        };
        if at > len || index > count || count > len / 21 {
            return Err(r.err(at, "resumed past the end of the manifest"));
        }
        Ok(r)
    }

    fn start(src: R, len: u64, what: &str, hash: bool) -> Result<Reader<R>> {
        let mut r = Reader {
            src: std::io::BufReader::with_capacity(64 << 10, src),
            what: what.to_string(),
            pos: 0,
            len,
            package: None,
            version: 0,
            count: 0,
            read: 0,
            hasher: hash.then(blake3::Hasher::new),
            prev: None,
            open: Vec::new(),
            partial: false,
            done: false,
            scratch: Vec::new(),
        };
        if r.read_n(8)? != MAGIC {
            return Err(r.err(0, "not a Freight manifest (bad magic)"));
        }
        let format = r.u16()?;
        if format != FORMAT {
            return Err(r.err(
                8,
                &format!("format {format} is not supported (this build reads {FORMAT})"),
            ));
        }
        let at = r.pos;
        let n = r.u8()? as usize;
        let pkg = r.read_n(n)?.to_vec();
        let pkg = std::str::from_utf8(&pkg).map_err(|_| r.err(at, "package ID is not text"))?;
        r.package = Some(PackageId::parse(pkg).map_err(|_| r.err(at, "bad package ID"))?);
        r.version = r.u32()?;
        r.count = r.u64()?;
        // Each entry takes at least 21 bytes, which bounds the count by the input size.
        if r.count > len / 21 {
            return Err(r.err(r.pos - 8, "entry count exceeds the manifest size"));
        }
        Ok(r)
    }

    /// The package the manifest is of.
    pub fn package(&self) -> &PackageId {
        self.package.as_ref().expect("read with the header")
    }

    /// Its version number.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The number of entries its header announces (checked against the input size; the entries
    /// read must match it).
    pub fn entry_count(&self) -> u64 {
        self.count
    }

    /// The byte offset of the next entry (after the last one: the input's length); with
    /// [`entries_read`](Self::entries_read), where a [`resume`](Self::resume)d reader can start.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Entries read so far (counting from the first entry of the manifest, also when resumed):
    /// the number of the next entry.
    pub fn entries_read(&self) -> u64 {
        self.read
    }

    /// The package hash, once every entry was read by a reader made with
    /// [`hashing`](Self::hashing).
    pub fn hash(&self) -> Option<blake3::Hash> {
        match &self.hasher {
            Some(h) if self.done => Some(h.finalize()),
            _ => None,
        }
    }

    fn err(&self, offset: u64, reason: &str) -> Error {
        Error::BadManifest {
            what: self.what.clone(),
            offset: offset as usize,
            reason: reason.to_string(),
        }
    }

    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// The next `n` bytes (in a buffer reused from call to call).
    fn read_n(&mut self, n: usize) -> Result<&[u8]> {
        if self.remaining() < n as u64 {
            let reason = format!("truncated (wants {n} bytes, {} left)", self.remaining());
            return Err(self.err(self.pos, &reason));
        }
        self.scratch.resize(n, 0);
        if let Err(e) = self.src.read_exact(&mut self.scratch) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Err(self.err(self.pos, "truncated (the input ended before its length)"));
            }
            return Err(Error::io(&self.what, "read manifest", e));
        }
        if let Some(h) = &mut self.hasher {
            h.update(&self.scratch);
        }
        self.pos += n as u64;
        Ok(&self.scratch)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.read_n(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.read_n(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64> {
        self.array().map(i64::from_le_bytes)
    }

    /// A u32-length-prefixed byte string of at most `max` bytes, the limit checked before the
    /// length is trusted.
    fn bytes(&mut self, max: usize) -> Result<Vec<u8>> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.err(at, &format!("length {n} exceeds the limit of {max}")));
        }
        Ok(self.read_n(n)?.to_vec())
    }

    /// The next entry, checked; `None` after the last one, once the input was found to end
    /// there.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        if self.read == self.count {
            if self.count == 0 {
                return Err(self.err(self.pos, "manifest has no root entry"));
            }
            let mut probe = [0u8; 1];
            let more = loop {
                match self.src.read(&mut probe) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io(&self.what, "read manifest", e)),
                }
            };
            if self.remaining() != 0 || more != 0 {
                return Err(self.err(self.pos, "trailing bytes after the last entry"));
            }
            self.done = true;
            return Ok(None);
        }
        let start = self.pos;
        let kind = self.u8()?;
        let path = self.bytes(MAX_PATH)?;
        let mode = self.u32()?;
        let mtime_sec = self.i64()?;
        let mtime_nsec = self.u32()?;
        if mode & !0o7777 != 0 {
            return Err(self.err(start, "mode has bits beyond 0o7777"));
        }
        if mtime_nsec >= 1_000_000_000 {
            return Err(self.err(start, "mtime nanoseconds out of range"));
        }
        let kind = match kind {
            0 => EntryKind::Dir,
            1 => {
                let size = self.u64()?;
                let n = self.u32()? as usize;
                if n as u64 > self.remaining() / 36 {
                    return Err(self.err(start, "chunk count exceeds the manifest size"));
                }
                let mut chunks = Vec::with_capacity(n);
                let mut sum = 0u64;
                for _ in 0..n {
                    let id = ChunkId(self.array()?);
                    let len = self.u32()?;
                    if len == 0 || len > MAX_CHUNK {
                        return Err(self.err(start, "chunk length out of range"));
                    }
                    sum += len as u64;
                    chunks.push(ChunkRef { id, len });
                }
                if sum != size {
                    return Err(self.err(start, "file size differs from its chunk lengths"));
                }
                EntryKind::File { size, chunks }
            }
            2 => {
                let target = self.bytes(MAX_PATH)?;
                check_symlink_target(&path, &target).map_err(|reason| self.err(start, reason))?;
                EntryKind::Symlink { target }
            }
            k => return Err(self.err(start, &format!("unknown entry kind {k}"))),
        };
        match &self.prev {
            None if self.partial => {
                check_path(&path).map_err(|reason| self.err(start, reason))?;
            }
            None => {
                if !path.is_empty() || kind != EntryKind::Dir {
                    return Err(self.err(start, "first entry must be the root directory"));
                }
            }
            Some(prev) => {
                check_path(&path).map_err(|reason| self.err(start, reason))?;
                if prev.as_slice() >= path.as_slice() {
                    return Err(self.err(start, "entries out of order or duplicated"));
                }
                // A resumed reader does not know the folders above where it started.
                if !self.partial {
                    // Drop the folders whose run of entries is over (see `open`).
                    while let Some(top) = self.open.last() {
                        if top.is_empty() || !past_subtree(top, &path) {
                            break;
                        }
                        self.open.pop();
                    }
                    let parent = parent_of(&path);
                    if !self.open.iter().rev().any(|d| d.as_slice() == parent) {
                        return Err(
                            self.err(start, "parent of entry is not a directory in the manifest")
                        );
                    }
                }
            }
        }
        if kind == EntryKind::Dir && !self.partial {
            self.open.push(path.clone());
        }
        self.prev = Some(path.clone());
        self.read += 1;
        Ok(Some(Entry {
            path,
            mode,
            mtime_sec,
            mtime_nsec,
            kind,
        }))
    }

    /// Reads every remaining entry (checking them all) and returns the package hash when
    /// hashing; for a caller that only wants the manifest validated and hashed.
    pub fn finish(&mut self) -> Result<Option<blake3::Hash>> {
        while self.next_entry()?.is_some() {}
        Ok(self.hash())
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Entry>;

    /// The entries as an iterator; after an error it ends.
    fn next(&mut self) -> Option<Result<Entry>> {
        match self.next_entry() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Whether `path` sorts past every path below the folder `dir` (after `dir/`, without that
/// prefix): then no later entry of a sorted manifest is below `dir`.
pub fn past_subtree(dir: &[u8], path: &[u8]) -> bool {
    let under = path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/';
    if under {
        return false;
    }
    // Compare with `dir/`.
    let n = dir.len().min(path.len());
    match path[..n].cmp(&dir[..n]) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => path.len() > dir.len() && path[dir.len()] > b'/',
    }
}

/// The streaming encoder: writes the header, then entries one at a time, hashing the bytes as
/// it goes. The entry count is either known up front ([`Writer::new`] with `Some`), and then
/// checked by [`finish`](Writer::finish), or written as 0 and patched by the caller at
/// [`count_offset`] (a file: [`finish_file`]).
///
/// Entries must come in canonical order (sorted by path bytes, root first): an entry out of
/// order is refused, so the writer never produces bytes [`Reader`] would refuse for order.
pub struct Writer<W: Write> {
    out: std::io::BufWriter<W>,
    what: String,
    declared: Option<u64>,
    count: u64,
    hasher: Option<blake3::Hasher>,
    prev: Option<Vec<u8>>,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Starts a manifest of `version` of `package` on `out`; `count` is the number of entries
    /// if known. `what` names the manifest in errors.
    pub fn new(
        out: W,
        package: &PackageId,
        version: u32,
        count: Option<u64>,
        what: &str,
    ) -> Result<Writer<W>> {
        let mut w = Writer {
            out: std::io::BufWriter::with_capacity(256 << 10, out),
            what: what.to_string(),
            declared: count,
            count: 0,
            hasher: count.map(|_| blake3::Hasher::new()),
            prev: None,
            buf: Vec::new(),
        };
        let mut head = Vec::new();
        encode_header(&mut head, package, version, count.unwrap_or(0));
        w.write(&head)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        if let Some(h) = &mut self.hasher {
            h.update(b);
        }
        self.out
            .write_all(b)
            .map_err(|e| Error::io(&self.what, "write manifest", e))
    }

    /// Appends one entry, which must sort after the previous one.
    pub fn push(&mut self, e: &Entry) -> Result<()> {
        let in_order = match &self.prev {
            None => e.path.is_empty() && e.kind == EntryKind::Dir,
            Some(p) => p.as_slice() < e.path.as_slice(),
        };
        if !in_order {
            return Err(Error::BadManifest {
                what: self.what.clone(),
                offset: 0,
                reason: format!(
                    "entry {} written out of order (a bug: please report it)",
                    e.display_path()
                ),
            });
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_entry(&mut buf, e);
        let res = self.write(&buf);
        self.buf = buf;
        res?;
        self.prev = Some(e.path.clone());
        self.count += 1;
        Ok(())
    }

    /// Entries written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Flushes and returns the output, the entry count, and the package hash when the count
    /// was declared up front (it must then match).
    pub fn finish(self) -> Result<(W, u64, Option<blake3::Hash>)> {
        if let Some(n) = self.declared
            && n != self.count
        {
            return Err(Error::BadManifest {
                what: self.what.clone(),
                offset: 0,
                reason: format!(
                    "{} entries written where {n} were announced (a bug: please report it)",
                    self.count
                ),
            });
        }
        let hash = self.hasher.as_ref().map(|h| h.finalize());
        let count = self.count;
        let what = self.what;
        let out = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&what, "write manifest", e.into_error()))?;
        Ok((out, count, hash))
    }
}

/// Finishes a manifest written to `file` with an undeclared count: writes the count into the
/// header and hashes the file (read again from its start). Returns the package hash and the
/// file's length.
pub fn finish_file(
    w: Writer<std::fs::File>,
    package: &PackageId,
    what: &str,
) -> Result<(std::fs::File, blake3::Hash, u64)> {
    use std::os::unix::fs::FileExt;
    let (file, count, _) = w.finish()?;
    file.write_all_at(&count.to_le_bytes(), count_offset(package))
        .map_err(|e| Error::io(what, "write manifest", e))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut at = 0u64;
    loop {
        let n = file
            .read_at(&mut buf, at)
            .map_err(|e| Error::io(what, "read manifest", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok((file, h.finalize(), at))
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

    /// The reason of a `BadManifest` error, for asserting which check refused an input.
    fn reason_of(bytes: &[u8]) -> String {
        match Manifest::decode(bytes, "t") {
            Err(Error::BadManifest { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Encodes `entries` as they are (no sorting, no checks), with `count` in the header.
    fn raw(entries: &[Entry], count: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_header(&mut out, &PackageId::parse("CAS00001").unwrap(), 3, count);
        for e in entries {
            encode_entry(&mut out, e);
        }
        out
    }

    #[test]
    fn reader_refuses_every_broken_rule() {
        let ok = sample().entries;
        let n = ok.len() as u64;
        assert!(Manifest::decode(&raw(&ok, n), "t").is_ok());
        // Out of order.
        let mut swapped = ok.clone();
        swapped.swap(2, 3);
        assert_eq!(
            reason_of(&raw(&swapped, n)),
            "entries out of order or duplicated"
        );
        // Duplicated.
        let mut dup = ok.clone();
        dup.insert(3, dup[2].clone());
        assert_eq!(
            reason_of(&raw(&dup, n + 1)),
            "entries out of order or duplicated"
        );
        // Missing parent, and a parent that is a file.
        let mut orphan = ok.clone();
        orphan.push(file("c/d", &[]));
        assert_eq!(
            reason_of(&raw(&orphan, n + 1)),
            "parent of entry is not a directory in the manifest"
        );
        let mut under_file = ok.clone();
        under_file.push(file("b/x", &[]));
        assert_eq!(
            reason_of(&raw(&under_file, n + 1)),
            "parent of entry is not a directory in the manifest"
        );
        // Root not first.
        assert_eq!(
            reason_of(&raw(&ok[1..], n - 1)),
            "first entry must be the root directory"
        );
        // Trailing bytes, and a count lower than the entries (the rest trails).
        let mut long = raw(&ok, n);
        long.push(0);
        assert_eq!(reason_of(&long), "trailing bytes after the last entry");
        assert_eq!(
            reason_of(&raw(&ok, n - 1)),
            "trailing bytes after the last entry"
        );
        // A count higher than the entries: the input ends early.
        assert!(reason_of(&raw(&ok, n + 1)).starts_with("truncated"));
        assert_eq!(reason_of(&raw(&ok, 0)), "manifest has no root entry");
        // A count the input cannot hold is refused before anything is allocated.
        assert_eq!(
            reason_of(&raw(&ok, u64::MAX)),
            "entry count exceeds the manifest size"
        );
        // Oversized fields: a path, a symlink target, a chunk count, a chunk length.
        let mut long_path = ok.clone();
        long_path.push(file(&"z".repeat(MAX_PATH + 1), &[]));
        assert!(reason_of(&raw(&long_path, n + 1)).starts_with("length 4097 exceeds"));
        let mut long_target = ok.clone();
        long_target.push(Entry {
            path: b"z".to_vec(),
            mode: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            kind: EntryKind::Symlink {
                target: vec![b'a'; MAX_PATH + 1],
            },
        });
        assert!(reason_of(&raw(&long_target, n + 1)).starts_with("length 4097 exceeds"));
        let mut bytes = raw(&ok[..1], 2);
        let mut f = Vec::new();
        encode_entry(&mut f, &file("z", &[]));
        let at = f.len() - 4;
        f[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&f);
        assert_eq!(reason_of(&bytes), "chunk count exceeds the manifest size");
        let mut big = file("z", &[b"x"]);
        if let EntryKind::File { chunks, size } = &mut big.kind {
            chunks[0].len = MAX_CHUNK + 1;
            *size = u64::from(MAX_CHUNK) + 1;
        }
        assert_eq!(
            reason_of(&raw(&[ok[0].clone(), big], 2)),
            "chunk length out of range"
        );
        let mut lying = file("z", &[b"x"]);
        if let EntryKind::File { size, .. } = &mut lying.kind {
            *size = 2;
        }
        assert_eq!(
            reason_of(&raw(&[ok[0].clone(), lying], 2)),
            "file size differs from its chunk lengths"
        );
        let mut bad_mode = ok.clone();
        bad_mode[1].mode = 0o10000;
        assert_eq!(reason_of(&raw(&bad_mode, n)), "mode has bits beyond 0o7777");
    }

    /// Byte order puts `a/b.txt` between `a/b` and `a/b/c`: the parent of `a/b/c` is still
    /// found, and one that was never there still is not.
    #[test]
    fn reader_finds_parents_across_sibling_runs() {
        let entries = vec![
            dir(""),
            dir("a"),
            dir("a/b"),
            dir("a/b.d"),
            file("a/b.d/x", &[b"1"]),
            file("a/b.txt", &[b"2"]),
            dir("a/b/c"),
            file("a/b/c/y", &[b"3"]),
            file("a/b0", &[]),
            dir("b"),
            file("b/z", &[]),
        ];
        let m = Manifest {
            package: PackageId::parse("CAS00001").unwrap(),
            version: 1,
            entries,
        };
        let mut sorted = m.entries.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            sorted, m.entries,
            "the test's entries are in canonical order"
        );
        assert_eq!(Manifest::decode(&m.encode(), "t").unwrap(), m);
        // `a/b.d/q` after `a/b/c`: its folder's run is over, so it is out of order anyway; a
        // file below a folder that was dropped as finished cannot come back.
        let mut late = m.entries.clone();
        late.push(file("b/z/q", &[]));
        assert_eq!(
            reason_of(&raw(&late, late.len() as u64)),
            "parent of entry is not a directory in the manifest"
        );
    }

    #[test]
    fn past_subtree_follows_byte_order() {
        assert!(!past_subtree(b"a/b", b"a/b.txt"));
        assert!(!past_subtree(b"a/b", b"a/b/c"));
        assert!(past_subtree(b"a/b", b"a/b0"));
        assert!(past_subtree(b"a/b", b"a/c"));
        assert!(!past_subtree(b"a/b", b"a/a"));
    }

    /// What the streaming writer produces is `encode`'s bytes, and the reader gives back the
    /// entries and the package hash.
    #[test]
    fn writer_and_reader_round_trip() {
        let m = sample();
        let mut w = Writer::new(Vec::new(), &m.package, m.version, Some(5), "t").unwrap();
        for e in &m.entries {
            w.push(e).unwrap();
        }
        let (bytes, count, hash) = w.finish().unwrap();
        assert_eq!(bytes, m.encode());
        assert_eq!((count, hash), (5, Some(m.hash())));
        let mut r = Reader::hashing(&bytes[..], bytes.len() as u64, "t").unwrap();
        let got: Vec<Entry> = (&mut r).collect::<Result<_>>().unwrap();
        assert_eq!(got, m.entries);
        assert_eq!(r.hash(), Some(m.hash()));
        // An undeclared count is patched into the file, and the file hashed.
        let t = tempfile::tempfile().unwrap();
        let mut w = Writer::new(t, &m.package, m.version, None, "t").unwrap();
        for e in &m.entries {
            w.push(e).unwrap();
        }
        let (f, hash, len) = finish_file(w, &m.package, "t").unwrap();
        assert_eq!((hash, len), (m.hash(), bytes.len() as u64));
        let mut back = vec![0u8; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut back, 0).unwrap();
        assert_eq!(back, bytes);
        // Out of order and a wrong declared count are refused.
        let mut w = Writer::new(Vec::new(), &m.package, 1, Some(2), "t").unwrap();
        assert!(w.push(&m.entries[1]).is_err(), "root first");
        w.push(&m.entries[0]).unwrap();
        w.push(&m.entries[2]).unwrap();
        assert!(w.push(&m.entries[1]).is_err(), "order");
        let mut w = Writer::new(Vec::new(), &m.package, 1, Some(2), "t").unwrap();
        w.push(&m.entries[0]).unwrap();
        assert!(w.finish().is_err(), "count");
    }

    /// A source shorter than the length it was announced with is truncated, not accepted.
    #[test]
    fn reader_refuses_a_short_source() {
        let bytes = sample().encode();
        let mut r = Reader::new(&bytes[..bytes.len() - 1], bytes.len() as u64, "t").unwrap();
        let res: Result<Vec<Entry>> = (&mut r).collect();
        assert!(res.is_err());
        let mut r = Reader::new(&bytes[..], bytes.len() as u64 - 1, "t").unwrap();
        let res: Result<Vec<Entry>> = (&mut r).collect();
        assert!(res.is_err());
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
