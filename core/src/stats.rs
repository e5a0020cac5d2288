//! Library statistics.

use crate::engine::EngineKind;
use crate::error::Result;
use crate::library::Library;
use crate::writer::usable_space;

/// Usage of one storage root.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RootStats {
    /// Root path.
    pub path: String,
    /// Packs on it.
    pub packs: u64,
    /// Bytes of its pack files.
    pub pack_bytes: u64,
    /// Bytes still usable (free minus the reserve).
    pub usable_bytes: u64,
}

/// A package and its stored versions.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PackageStats {
    /// Package ID.
    pub package: String,
    /// Versions held.
    pub versions: Vec<u32>,
}

/// What a library holds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stats {
    /// Packages and their versions.
    pub packages: Vec<PackageStats>,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Their stored (compressed) bytes.
    pub stored_bytes: u64,
    /// Their uncompressed bytes.
    pub logical_bytes: u64,
    /// Chunks referenced by at least one manifest.
    pub referenced_chunks: u64,
    /// Stored bytes no manifest references (reclaimed by gc).
    pub garbage_bytes: u64,
    /// Per storage root.
    pub roots: Vec<RootStats>,
    /// "uring" or "fallback".
    pub io: String,
}

/// Computes statistics for `lib`.
pub fn stats(lib: &Library) -> Result<Stats> {
    // Referenced chunks, sorted on disk, merge-joined with the index in ID order.
    let named = lib.referenced_ids()?;
    let mut s = Stats {
        packages: lib
            .versions()?
            .into_iter()
            .map(|(p, v)| PackageStats {
                package: p.to_string(),
                versions: v,
            })
            .collect(),
        chunks: 0,
        stored_bytes: 0,
        logical_bytes: 0,
        referenced_chunks: 0,
        garbage_bytes: 0,
        roots: Vec::new(),
        io: match lib.engine().kind() {
            EngineKind::Uring => "uring",
            EngineKind::Fallback => "fallback",
        }
        .into(),
    };
    let mut names = named.reader();
    let mut cur = names.next_rec()?;
    lib.for_each_chunk(&mut |id, loc| {
        s.chunks += 1;
        s.stored_bytes += loc.clen as u64;
        s.logical_bytes += loc.ulen as u64;
        while cur.is_some_and(|c| c < id.0) {
            cur = names.next_rec()?;
        }
        if cur == Some(id.0) {
            s.referenced_chunks += 1;
        } else {
            s.garbage_bytes += loc.clen as u64;
        }
        Ok(())
    })?;
    for (i, root) in lib.roots().iter().enumerate() {
        let packs: Vec<_> = lib.packs.values().filter(|p| p.root == i).collect();
        s.roots.push(RootStats {
            path: root.display().to_string(),
            packs: packs.len() as u64,
            pack_bytes: packs
                .iter()
                .map(|p| std::fs::metadata(&p.data).map(|m| m.len()).unwrap_or(0))
                .sum(),
            usable_bytes: usable_space(root, lib.config().reserve_bytes).unwrap_or(0),
        });
    }
    Ok(s)
}
