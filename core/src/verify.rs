//! Verification: re-read and re-hash every chunk that package versions use.

use crate::error::{Error, Result};
use crate::id::{ChunkId, PackageId};
use crate::library::Library;
use crate::manifest::{EntryKind, EntrySource, Manifest};
use crate::pack::Loc;
use crate::progress::Progress;
use crate::spill::{SORT_MEMORY, Sorter};
use crate::stream::for_each_chunk;
use std::collections::HashMap;

const NAMES_PER_CHUNK: usize = 8;

fn as_hex<S: serde::Serializer>(id: &ChunkId, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

/// One chunk that failed verification.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BadChunk {
    /// Chunk ID (hex in JSON).
    #[serde(serialize_with = "as_hex")]
    pub id: ChunkId,
    /// Why it failed.
    pub reason: String,
    /// Files using it, as `PKG vN path` (the first few).
    pub files: Vec<String>,
}

/// Outcome of a verification.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Package versions checked.
    pub versions: u64,
    /// Distinct chunks checked.
    pub chunks: u64,
    /// Uncompressed bytes checked.
    pub bytes: u64,
    /// Chunks that are missing or corrupt.
    pub bad: Vec<BadChunk>,
    /// Versions removed (or replaced) by a writer while a reader beside it verified them, as
    /// `PKG vN`: not checked, and not damage ([`crate::view::verify`]).
    pub skipped: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.bad.is_empty()
    }
}

/// Why a chunk failed verification, for a report.
pub(crate) fn reason(e: Error) -> String {
    match e {
        Error::MissingChunk { .. } => "missing from the library".to_string(),
        Error::CorruptChunk { reason, pack, .. } => format!("{reason} in {}", pack.display()),
        other => other.to_string(),
    }
}

/// Verifies `manifests` against `lib`: each distinct chunk they use is read once, in storage
/// order (so packs are read sequentially), decompressed and hashed. Bounded memory: the
/// chunks are collected and put in storage order by sorting on disk ([`crate::spill`]), and
/// file names are gathered afterwards for the chunks that failed only.
pub fn verify_manifests(
    lib: &Library,
    manifests: &[Manifest],
    progress: &Progress,
) -> Result<VerifyReport> {
    let sources: Vec<&dyn EntrySource> = manifests.iter().map(|m| m as &dyn EntrySource).collect();
    verify_sources(lib, &sources, progress)
}

/// [`verify_manifests`] over entry sources (stored manifests streamed from their files, one
/// entry at a time): read once to list their chunks and again, only when a chunk is bad, to
/// name the files that use it.
pub fn verify_sources(
    lib: &Library,
    sources: &[&dyn EntrySource],
    progress: &Progress,
) -> Result<VerifyReport> {
    let spill = lib.spill_dir();
    let mut ids = Sorter::<32>::new(&spill, SORT_MEMORY);
    for m in sources {
        for e in m.entries()? {
            if let EntryKind::File { chunks, .. } = &e?.kind {
                for c in chunks {
                    ids.push(c.id.0)?;
                }
            }
        }
    }
    let ids = ids.finish()?;
    // Storage order: (pack, offset) big-endian, then the ID; missing chunks last.
    let mut order = Sorter::<ORDER>::new(&spill, SORT_MEMORY);
    let mut bytes = 0u64;
    let mut put = |id: [u8; 32], loc: Option<Loc>| {
        let mut k = [0u8; ORDER];
        k[..4].copy_from_slice(&loc.map_or(u32::MAX, |l| l.pack).to_be_bytes());
        k[4..12].copy_from_slice(&loc.map_or(u64::MAX, |l| l.offset).to_be_bytes());
        k[12..].copy_from_slice(&id);
        bytes += loc.map_or(0, |l| l.ulen as u64);
        order.push(k)
    };
    if ids.len().saturating_mul(16) < lib.chunk_count() as u64 {
        // A few versions of a large library: look each chunk up.
        let mut r = ids.reader();
        while let Some(id) = r.next_rec()? {
            put(id, lib.locate(&ChunkId(id)))?;
        }
    } else {
        // Most of it: one merged pass over the index.
        let mut r = ids.reader();
        let mut cur = r.next_rec()?;
        lib.for_each_chunk(&mut |id, loc| {
            while let Some(c) = cur
                && c < id.0
            {
                put(c, None)?;
                cur = r.next_rec()?;
            }
            if cur == Some(id.0) {
                put(id.0, Some(loc))?;
                cur = r.next_rec()?;
            }
            Ok(())
        })?;
        while let Some(c) = cur {
            put(c, None)?;
            cur = r.next_rec()?;
        }
    }
    let order = order.finish()?;
    let mut report = VerifyReport {
        versions: sources.len() as u64,
        ..Default::default()
    };
    progress.start("verify", order.len(), bytes);
    let mut rd = order.reader();
    let mut read_err: Option<Error> = None;
    let items = std::iter::from_fn(|| match rd.next_rec() {
        Ok(Some(k)) => Some(((), ChunkId(k[12..].try_into().expect("32 bytes")))),
        Ok(None) => None,
        Err(e) => {
            read_err = Some(e);
            None
        }
    });
    let mut bad: Vec<(ChunkId, String)> = Vec::new();
    for_each_chunk(lib, items, 64, |(), id, res| {
        report.chunks += 1;
        progress.add_file();
        match res {
            Ok(data) => {
                report.bytes += data.len() as u64;
                progress.add_bytes(data.len() as u64);
            }
            Err(e) => bad.push((id, reason(e))),
        }
        Ok(())
    })?;
    if let Some(e) = read_err {
        return Err(e);
    }
    if !bad.is_empty() {
        let mut names: HashMap<ChunkId, Vec<String>> =
            bad.iter().map(|(id, _)| (*id, Vec::new())).collect();
        for m in sources {
            for e in m.entries()? {
                let e = e?;
                if let EntryKind::File { chunks, .. } = &e.kind {
                    for c in chunks {
                        if let Some(u) = names.get_mut(&c.id) {
                            let name =
                                format!("{} v{} {}", m.package(), m.version(), e.display_path());
                            if u.len() < NAMES_PER_CHUNK && u.last() != Some(&name) {
                                u.push(name);
                            }
                        }
                    }
                }
            }
        }
        report.bad = bad
            .into_iter()
            .map(|(id, reason)| BadChunk {
                id,
                reason,
                files: names.remove(&id).unwrap_or_default(),
            })
            .collect();
    }
    report.bad.sort_by_key(|b| b.id);
    Ok(report)
}

/// Width of a storage-order sort key: pack u32, offset u64 (big-endian), chunk ID.
const ORDER: usize = 44;

/// Verifies one version, all versions of one package, or (with `None`) the whole library.
pub fn verify(
    lib: &Library,
    only: Option<(&PackageId, Option<u32>)>,
    progress: &Progress,
) -> Result<VerifyReport> {
    // Streamed from their files (held open), never decoded whole.
    let md = lib.manifest_dir();
    let manifests = match only {
        None => lib.stored_manifests()?,
        Some((p, Some(v))) => vec![md.open_manifest(p, v)?],
        Some((p, None)) => {
            let vs = lib.versions_of(p)?;
            if vs.is_empty() {
                return Err(Error::NoSuchPackage(p.to_string()));
            }
            vs.into_iter()
                .map(|v| md.open_manifest(p, v))
                .collect::<Result<Vec<_>>>()?
        }
    };
    let sources: Vec<&dyn EntrySource> = manifests.iter().map(|m| m as &dyn EntrySource).collect();
    verify_sources(lib, &sources, progress)
}
