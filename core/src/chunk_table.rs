//! A package version's distinct chunks, sorted by ID, with their uncompressed lengths.
//!
//! What a transfer checks a peer's `Need` lists and each arriving chunk's length against:
//! 36 bytes a chunk, built while a manifest streams past, instead of the decoded manifest
//! (paths, modes and the per-file chunk lists of a million files). Sessions index their own
//! per-chunk state (needed, sent, arrived) by a chunk's position in the table.

use crate::error::{Error, Result};
use crate::id::{ChunkId, PackageId};
use crate::manifest::{EntryKind, Manifest};

/// What a transfer needs of a manifest: whose version it is and its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestChunks {
    /// The package.
    pub package: PackageId,
    /// Its version.
    pub version: u32,
    /// The version's distinct chunks.
    pub chunks: ChunkTable,
}

impl ManifestChunks {
    /// Of a decoded manifest.
    pub fn of(m: &Manifest) -> Result<ManifestChunks> {
        Ok(ManifestChunks {
            package: m.package.clone(),
            version: m.version,
            chunks: ChunkTable::of(m)?,
        })
    }
}

/// The distinct chunks of one package version, sorted by ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkTable {
    ids: Vec<ChunkId>,
    lens: Vec<u32>,
}

/// Collects a manifest's chunk references in any order, with repeats, into a [`ChunkTable`].
#[derive(Debug, Default)]
pub struct ChunkTableBuilder {
    what: String,
    refs: Vec<(ChunkId, u32)>,
    /// Length of `refs` after its last sort and dedup: repeats are folded whenever the vector
    /// doubles past it, so a package naming one chunk a million times stays small.
    folded: usize,
}

impl ChunkTableBuilder {
    /// A builder for the chunks of `what` (named in errors, e.g. "manifest of PS100001 v2").
    pub fn new(what: impl Into<String>) -> Self {
        ChunkTableBuilder {
            what: what.into(),
            refs: Vec::new(),
            folded: 0,
        }
    }

    /// Adds one chunk reference.
    pub fn push(&mut self, id: ChunkId, len: u32) -> Result<()> {
        self.refs.push((id, len));
        if self.refs.len() >= 2 * self.folded.max(1 << 16) {
            self.fold()?;
        }
        Ok(())
    }

    /// Sorts and drops repeats; the same ID with two lengths is a lying manifest (an ID is the
    /// hash of the bytes, so it has one length).
    fn fold(&mut self) -> Result<()> {
        self.refs.sort_unstable_by_key(|r| r.0);
        let mut bad = None;
        self.refs.dedup_by(|b, a| {
            if a.0 == b.0 {
                if a.1 != b.1 {
                    bad.get_or_insert((a.0, a.1, b.1));
                }
                true
            } else {
                false
            }
        });
        if let Some((id, x, y)) = bad {
            return Err(Error::BadManifest {
                what: self.what.clone(),
                offset: 0,
                reason: format!(
                    "chunk {} is named with two lengths ({x} and {y})",
                    id.short()
                ),
            });
        }
        self.folded = self.refs.len();
        Ok(())
    }

    /// The table.
    pub fn finish(mut self) -> Result<ChunkTable> {
        self.fold()?;
        self.refs.shrink_to_fit();
        let (ids, lens) = self.refs.into_iter().unzip();
        Ok(ChunkTable { ids, lens })
    }
}

impl ChunkTable {
    /// The chunks of a decoded manifest.
    pub fn of(m: &Manifest) -> Result<ChunkTable> {
        let mut b = ChunkTableBuilder::new(format!("manifest of {} v{}", m.package, m.version));
        for e in &m.entries {
            if let EntryKind::File { chunks, .. } = &e.kind {
                for c in chunks {
                    b.push(c.id, c.len)?;
                }
            }
        }
        b.finish()
    }

    /// Distinct chunks.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the version has no chunk (only empty files, dirs and symlinks).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Where `id` sits in the table, if the version names it.
    pub fn position(&self, id: &ChunkId) -> Option<usize> {
        self.ids.binary_search(id).ok()
    }

    /// The uncompressed length of `id`, if the version names it.
    pub fn chunk_len(&self, id: &ChunkId) -> Option<u32> {
        self.position(id).map(|i| self.lens[i])
    }

    /// The chunk at `position`.
    pub fn id(&self, position: usize) -> ChunkId {
        self.ids[position]
    }

    /// Every chunk and its length, in ID order.
    pub fn iter(&self) -> impl Iterator<Item = (ChunkId, u32)> + '_ {
        self.ids.iter().copied().zip(self.lens.iter().copied())
    }

    /// Every chunk ID, in order.
    pub fn ids(&self) -> &[ChunkId] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::of(&[n])
    }

    #[test]
    fn repeats_fold_and_lookups_find_each_chunk_once() {
        let mut b = ChunkTableBuilder::new("t");
        for _ in 0..3 {
            for n in (0..200u8).rev() {
                b.push(id(n), u32::from(n)).unwrap();
            }
        }
        let t = b.finish().unwrap();
        assert_eq!(t.len(), 200);
        for n in 0..200u8 {
            assert_eq!(t.chunk_len(&id(n)), Some(u32::from(n)));
            let p = t.position(&id(n)).unwrap();
            assert_eq!(t.id(p), id(n));
        }
        assert_eq!(t.chunk_len(&id(255)), None);
        assert!(t.ids().windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn one_id_with_two_lengths_is_refused() {
        let mut b = ChunkTableBuilder::new("manifest of X");
        b.push(id(1), 10).unwrap();
        b.push(id(1), 11).unwrap();
        let e = b.finish().unwrap_err().to_string();
        assert!(
            e.contains("manifest of X") && e.contains("two lengths"),
            "{e}"
        );
    }

    #[test]
    fn many_repeats_stay_folded() {
        let mut b = ChunkTableBuilder::new("t");
        for _ in 0..1_000_000 {
            b.push(id(7), 1).unwrap();
        }
        assert!(b.refs.capacity() <= 1 << 18, "{}", b.refs.capacity());
        assert_eq!(b.finish().unwrap().len(), 1);
    }
}
