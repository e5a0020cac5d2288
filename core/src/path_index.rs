//! Finding an entry of a stored manifest by its path without holding the manifest: a sparse
//! index of the manifest file ([`PathIndex`]).
//!
//! A manifest's entries are sorted by path bytes, so every `stride`-th entry's path and byte
//! offset is enough to find any path: binary search for the last indexed path not after it,
//! then read forward from that offset (at most `stride` entries) with a resumed
//! [`Reader`](crate::manifest::Reader). The index is built in one streamed pass that checks the
//! whole manifest and hashes it; it holds the manifest's file open, so what it points into is
//! the file that was checked, even once a newer file is renamed over its name.
//!
//! Memory is bounded by [`MAX_INDEX_BYTES`] whatever the manifest's size or its paths'
//! lengths: when the indexed paths outgrow it, every other point is dropped and the stride
//! doubles, so a larger package costs a little more reading per lookup, not more memory.

use crate::error::Result;
use crate::library::{FileAt, StoredManifest};
use crate::manifest::{Entry, Reader};

/// The most memory one index holds (indexed paths and their offsets).
pub const MAX_INDEX_BYTES: usize = 4 << 20;

/// Entries between two indexed ones while the index is under [`MAX_INDEX_BYTES`]: a lookup
/// reads at most this many entries (a few kilobytes).
pub const STRIDE: u64 = 32;

/// Read buffer of a lookup: about a stride's entries of typical size.
const LOOKUP_BUFFER: usize = 8 << 10;

/// One indexed entry: where it starts in the file, and where its path ends in `paths`.
#[derive(Clone, Copy, Debug)]
struct Point {
    offset: u64,
    path_end: u32,
}

/// A sparse index of one stored manifest by path (see the module documentation).
#[derive(Debug)]
pub struct PathIndex {
    stored: StoredManifest,
    hash: blake3::Hash,
    count: u64,
    /// Entries between two points: point `i` is entry `i * stride`.
    stride: u64,
    /// The points' paths, one after the other.
    paths: Vec<u8>,
    points: Vec<Point>,
}

impl PathIndex {
    /// Reads `stored` once from the start, checking every entry and hashing it, and keeps
    /// every `stride`-th entry's path and offset.
    pub fn build(stored: StoredManifest) -> Result<PathIndex> {
        Self::build_within(stored, MAX_INDEX_BYTES)
    }

    /// [`build`](Self::build) holding at most about `max_bytes`.
    fn build_within(stored: StoredManifest, max_bytes: usize) -> Result<PathIndex> {
        let mut r = stored.hashing_reader()?;
        let mut ix = PathIndex {
            hash: blake3::Hash::from_bytes([0; 32]),
            count: r.entry_count(),
            stride: STRIDE,
            paths: Vec::new(),
            points: Vec::new(),
            stored: stored.clone(),
        };
        loop {
            let (offset, n) = (r.position(), r.entries_read());
            let Some(e) = r.next_entry()? else { break };
            if n % ix.stride == 0 {
                ix.paths.extend_from_slice(&e.path);
                ix.points.push(Point {
                    offset,
                    path_end: ix.paths.len() as u32,
                });
                if ix.memory() > max_bytes {
                    ix.thin();
                }
            }
        }
        ix.hash = r
            .hash()
            .expect("a hashing reader read to the end has a hash");
        ix.paths.shrink_to_fit();
        ix.points.shrink_to_fit();
        Ok(ix)
    }

    /// Keeps every other point and doubles the stride.
    fn thin(&mut self) {
        let mut paths = Vec::with_capacity(self.paths.len() / 2 + 1);
        let mut points = Vec::with_capacity(self.points.len() / 2 + 1);
        for i in (0..self.points.len()).step_by(2) {
            paths.extend_from_slice(self.path(i));
            points.push(Point {
                offset: self.points[i].offset,
                path_end: paths.len() as u32,
            });
        }
        self.paths = paths;
        self.points = points;
        self.stride *= 2;
    }

    fn path(&self, i: usize) -> &[u8] {
        let start = if i == 0 {
            0
        } else {
            self.points[i - 1].path_end as usize
        };
        &self.paths[start..self.points[i].path_end as usize]
    }

    /// The manifest it indexes (its file held open).
    pub fn stored(&self) -> &StoredManifest {
        &self.stored
    }

    /// The package hash (BLAKE3 of the file, computed while the index was built).
    pub fn hash(&self) -> blake3::Hash {
        self.hash
    }

    /// The number of entries.
    pub fn entry_count(&self) -> u64 {
        self.count
    }

    /// Entries between two indexed ones (at most this many are read by a lookup).
    pub fn stride(&self) -> u64 {
        self.stride
    }

    /// Heap bytes the index holds (what a cache of indexes counts).
    pub fn memory(&self) -> usize {
        self.paths.capacity() + self.points.capacity() * std::mem::size_of::<Point>()
    }

    /// The entry at exactly `path`, if there is one: at most one stride of entries read from
    /// the nearest indexed one before it.
    pub fn find(&self, path: &[u8]) -> Result<Option<Entry>> {
        // The last point whose path is not after `path`; point 0 is the root (the empty
        // path), never after any path.
        let (mut lo, mut hi) = (0, self.points.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.path(mid) <= path {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let i = lo;
        let mut r = self.stored.reader_at(
            self.count,
            self.points[i].offset,
            i as u64 * self.stride,
            LOOKUP_BUFFER,
        )?;
        for _ in 0..self.stride {
            let Some(e) = r.next_entry()? else {
                return Ok(None);
            };
            match e.path.as_slice().cmp(path) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return Ok(Some(e)),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
        // The next point's path sorts after `path`.
        Ok(None)
    }

    /// A reader of every entry from the first (each checked as it is read), for a listing.
    pub fn entries(&self) -> Result<Reader<FileAt>> {
        self.stored.reader()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ChunkId, PackageId};
    use crate::manifest::{ChunkRef, EntryKind, Manifest};

    fn entry(path: String, kind: EntryKind) -> Entry {
        Entry {
            path: path.into_bytes(),
            mode: 0o644,
            mtime_sec: 7,
            mtime_nsec: 0,
            kind,
        }
    }

    /// Folders of files (names long enough to make thinning happen in a small budget), links.
    fn manifest() -> Manifest {
        let mut entries = vec![entry(String::new(), EntryKind::Dir)];
        for d in 0..30 {
            entries.push(entry(format!("dir{d:02}"), EntryKind::Dir));
            entries.push(entry(format!("dir{d:02}/sub"), EntryKind::Dir));
            for f in 0..40 {
                let id = ChunkId(*blake3::hash(format!("{d}/{f}").as_bytes()).as_bytes());
                entries.push(entry(
                    format!("dir{d:02}/file-with-a-longish-name-{f:03}.txt"),
                    EntryKind::File {
                        size: 10,
                        chunks: vec![ChunkRef { id, len: 10 }],
                    },
                ));
                entries.push(entry(
                    format!("dir{d:02}/sub/f{f:03}"),
                    EntryKind::Symlink {
                        target: b"../x".to_vec(),
                    },
                ));
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            package: PackageId::parse("PS100001").unwrap(),
            version: 3,
            entries,
        }
    }

    fn stored(dir: &std::path::Path, m: &Manifest) -> StoredManifest {
        let path = dir.join("m.fmf");
        std::fs::write(&path, m.encode()).unwrap();
        StoredManifest::open(&path, &m.package, m.version).unwrap()
    }

    #[test]
    fn finds_every_entry_and_nothing_else_however_thin() {
        let t = tempfile::tempdir().unwrap();
        let m = manifest();
        let s = stored(t.path(), &m);
        for budget in [MAX_INDEX_BYTES, 2048, 1] {
            let ix = PathIndex::build_within(s.clone(), budget).unwrap();
            assert_eq!(ix.hash(), m.hash());
            assert_eq!(ix.entry_count(), m.entries.len() as u64);
            if budget < 4096 {
                assert!(ix.stride() > STRIDE, "thinned at {budget}");
            }
            for e in &m.entries {
                assert_eq!(ix.find(&e.path).unwrap().as_ref(), Some(e));
            }
            for absent in [
                &b"a"[..],
                b"dir00/",
                b"dir00/file",
                b"dir05/sub/f0395",
                b"dir29/sub/f040",
                b"zzz",
                b"dir07/file-with-a-longish-name-999.txt",
            ] {
                assert_eq!(ix.find(absent).unwrap(), None, "{absent:?}");
            }
            let listed: Vec<Entry> = ix.entries().unwrap().map(|e| e.unwrap()).collect();
            assert_eq!(listed, m.entries);
        }
    }

    #[test]
    fn a_damaged_manifest_is_refused_and_a_resumed_read_past_the_end_fails() {
        let t = tempfile::tempdir().unwrap();
        let m = manifest();
        let path = t.path().join("m.fmf");
        let bytes = m.encode();
        // Cut short, and with bytes after its end: both refused by the one pass.
        for damaged in [&bytes[..bytes.len() - 5], &[&bytes[..], b"x"].concat()[..]] {
            std::fs::write(&path, damaged).unwrap();
            let s = StoredManifest::open(&path, &m.package, m.version).unwrap();
            assert!(PathIndex::build(s).is_err());
        }
        let s = stored(t.path(), &m);
        let count = m.entries.len() as u64;
        assert!(s.reader_at(count, s.len() + 1, 1, 64).is_err());
        // Started mid-entry: an error, never a panic or a huge allocation.
        for at in [s.len() / 3, s.len() / 2 + 1, s.len() - 3] {
            let mut r = s.reader_at(count, at, 5, 64).unwrap();
            while let Ok(Some(_)) = r.next_entry() {}
        }
    }
}
