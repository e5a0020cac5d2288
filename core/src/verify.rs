//! Verification: re-read and re-hash every chunk that package versions use.

use crate::error::{Error, Result};
use crate::id::{ChunkId, PackageId};
use crate::library::Library;
use crate::manifest::{EntryKind, EntrySource, Manifest};
use crate::progress::Progress;
use crate::stream::for_each_chunk;

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

/// Verifies `manifests` against `lib`.
pub fn verify_manifests(
    lib: &Library,
    manifests: &[Manifest],
    progress: &Progress,
) -> Result<VerifyReport> {
    let sources: Vec<&dyn EntrySource> = manifests.iter().map(|m| m as &dyn EntrySource).collect();
    verify_sources(lib, &sources, progress)
}

/// [`verify_manifests`] over entry sources (stored manifests streamed from their files): the
/// manifests are read one entry at a time, once to list their chunks and again, only when a
/// chunk is bad, to name the files that use it. The chunk list is a plain sorted vector (32
/// bytes a chunk, duplicates dropped as it grows), not a map of names per chunk.
pub fn verify_sources(
    lib: &Library,
    sources: &[&dyn EntrySource],
    progress: &Progress,
) -> Result<VerifyReport> {
    let mut order: Vec<ChunkId> = Vec::new();
    for m in sources {
        for e in m.entries()? {
            if let EntryKind::File { chunks, .. } = &e?.kind {
                for c in chunks {
                    if order.len() == order.capacity() && order.len() >= 1 << 16 {
                        // Drop repeats before growing: the list stays as long as the chunks
                        // are many, not as the files are.
                        order.sort_unstable();
                        order.dedup();
                        order.reserve(order.len());
                    }
                    order.push(c.id);
                }
            }
        }
    }
    order.sort_unstable();
    order.dedup();
    order.shrink_to_fit();
    let mut report = VerifyReport {
        versions: sources.len() as u64,
        ..Default::default()
    };
    let total: u64 = order
        .iter()
        .filter_map(|id| lib.locate(id))
        .map(|l| u64::from(l.ulen))
        .sum();
    order.sort_by_key(|id| lib.locate(id).map(|l| (l.pack, l.offset)));
    progress.start("verify", order.len() as u64, total);
    for_each_chunk(
        lib,
        order.into_iter().map(|id| ((), id)),
        64,
        |(), id, res| {
            report.chunks += 1;
            progress.add_file();
            match res {
                Ok(data) => {
                    report.bytes += data.len() as u64;
                    progress.add_bytes(data.len() as u64);
                }
                Err(e) => {
                    report.bad.push(BadChunk {
                        id,
                        reason: reason(e),
                        files: Vec::new(),
                    });
                }
            }
            Ok(())
        },
    )?;
    report.bad.sort_by_key(|b| b.id);
    if !report.bad.is_empty() {
        // Name the files that use each bad chunk (a few of them).
        for m in sources {
            for e in m.entries()? {
                let e = e?;
                if let EntryKind::File { chunks, .. } = &e.kind {
                    for c in chunks {
                        let Ok(i) = report.bad.binary_search_by_key(&c.id, |b| b.id) else {
                            continue;
                        };
                        let files = &mut report.bad[i].files;
                        let name = format!("{} v{} {}", m.package(), m.version(), e.display_path());
                        if files.len() < NAMES_PER_CHUNK && files.last() != Some(&name) {
                            files.push(name);
                        }
                    }
                }
            }
        }
    }
    Ok(report)
}

/// Verifies one version, all versions of one package, or (with `None`) the whole library.
pub fn verify(
    lib: &Library,
    only: Option<(&PackageId, Option<u32>)>,
    progress: &Progress,
) -> Result<VerifyReport> {
    let manifests = match only {
        None => lib.manifests()?,
        Some((p, Some(v))) => vec![lib.manifest(p, v)?],
        Some((p, None)) => {
            let vs = lib
                .versions()?
                .remove(p)
                .ok_or_else(|| Error::NoSuchPackage(p.to_string()))?;
            vs.into_iter()
                .map(|v| lib.manifest(p, v))
                .collect::<Result<Vec<_>>>()?
        }
    };
    verify_manifests(lib, &manifests, progress)
}
