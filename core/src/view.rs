//! Reading a library beside its writer: `freight library verify`, `stats`, `materialize` and
//! `diff` on a library a running `freightd` (or an ingest, a gc) holds.
//!
//! A reader takes no lock. It reads the manifests first, each with the identity of the file
//! it came from (device, inode, size, mtime: manifests are replaced by atomic renames, never
//! written in place), then opens a view of the packs ([`Library::open_read_only`]: committed
//! entries only, every pack file held open). Every chunk a manifest names is committed before
//! the manifest appears, and a collection keeps every chunk a present manifest names; so a
//! manifest whose file is still the same once the view is open has all its chunks in the view
//! (a collection that moved them meanwhile is followed by the view's listings), and reads of
//! them cannot be taken away by a later collection (the view holds the files open). A version
//! whose file went or changed in between was removed (or replaced) by the writer: it is left
//! out and named (`skipped`), never reported as damage.
//!
//! Verification checks each chunk that fails once more, in a fresh view opened after the
//! failure and against the versions still present then: only a chunk that fails again while
//! a version that needs it is still there is reported. What is gone since the view was
//! opened is thereby told from what is damaged.

use crate::IoMode;
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackageId};
use crate::library::{Damaged, Library, ManifestDir, StoredManifest};
use crate::manifest::{EntryKind, EntrySource, Manifest};
use crate::progress::Progress;
use crate::stream::for_each_chunk;
use crate::verify::{VerifyReport, verify_sources};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Which file a manifest was read from: (device, inode, size, mtime in nanoseconds).
type FileKey = (u64, u64, u64, i128);

fn key_of(m: &std::fs::Metadata) -> FileKey {
    (
        m.dev(),
        m.ino(),
        m.size(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    )
}

/// A manifest read beside a writer, with the file it was read from.
struct Held {
    manifest: StoredManifest,
    key: FileKey,
}

impl Held {
    /// Opens the stored manifest (held open, read as a stream) and records its file's
    /// identity; `None` when it is not there.
    fn read(md: &ManifestDir, package: &PackageId, version: u32) -> Result<Option<Held>> {
        let stored = match md.open_manifest(package, version) {
            Ok(m) => m,
            Err(Error::NoSuchVersion { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = stored
            .file()
            .metadata()
            .map_err(|e| Error::io(stored.path(), "stat manifest", e))?;
        Ok(Some(Held {
            manifest: stored,
            key: key_of(&meta),
        }))
    }

    fn still_there(&self, md: &ManifestDir) -> bool {
        let path = md.path(self.manifest.package(), self.manifest.version());
        std::fs::symlink_metadata(path).is_ok_and(|m| key_of(&m) == self.key)
    }
}

/// Opens a view of the library at `dir` holding `version` (the newest when `None`) of
/// `package` whole: the view and the version's manifest. Fails with one line saying to retry
/// when the version was removed or replaced while the view was being opened.
pub fn open_version(
    dir: &Path,
    package: &PackageId,
    version: Option<u32>,
    io: Option<IoMode>,
) -> Result<(Library, Manifest)> {
    let (lib, stored) = open_stored_version(dir, package, version, io)?;
    let m = stored.load()?;
    Ok((lib, m))
}

/// [`open_version`] without loading the manifest: the stored manifest, held open (so it
/// reads as it was when the view was taken, even if the version is removed meanwhile), to be
/// streamed ([`crate::materialize::materialize_from`]).
pub fn open_stored_version(
    dir: &Path,
    package: &PackageId,
    version: Option<u32>,
    io: Option<IoMode>,
) -> Result<(Library, StoredManifest)> {
    let md = ManifestDir::open(dir)?;
    let version = match version {
        Some(v) => v,
        None => *md
            .versions_of(package)?
            .last()
            .ok_or_else(|| Error::NoSuchPackage(package.to_string()))?,
    };
    let held = Held::read(&md, package, version)?.ok_or_else(|| Error::NoSuchVersion {
        package: package.to_string(),
        version,
    })?;
    let lib = Library::open_read_only(dir, io)?;
    if !held.still_there(&md) {
        return Err(Error::BadLibrary {
            path: md.path(package, version),
            reason: format!(
                "package {package} version {version} was removed or replaced while it was being opened; retry"
            ),
        });
    }
    Ok((lib, held.manifest))
}

/// What [`verify`] found: the report (with the versions removed meanwhile in `skipped`) and
/// the damaged packs the view left out.
pub struct Verified {
    /// The verification.
    pub report: VerifyReport,
    /// Packs left out of the view because they are damaged.
    pub damage: Vec<Damaged>,
}

/// Verifies one version, all versions of one package, or (with `None`) every version of the
/// library at `dir`, beside whoever writes it (see the module's documentation).
pub fn verify(
    dir: &Path,
    only: Option<(&PackageId, Option<u32>)>,
    io: Option<IoMode>,
    progress: &Progress,
) -> Result<Verified> {
    let md = ManifestDir::open(dir)?;
    let wanted: Vec<(PackageId, u32)> = match only {
        None => md
            .versions()?
            .into_iter()
            .flat_map(|(p, vs)| vs.into_iter().map(move |v| (p.clone(), v)))
            .collect(),
        Some((p, Some(v))) => vec![(p.clone(), v)],
        Some((p, None)) => {
            let vs = md.versions_of(p)?;
            if vs.is_empty() {
                return Err(Error::NoSuchPackage(p.to_string()));
            }
            vs.into_iter().map(|v| (p.clone(), v)).collect()
        }
    };
    let mut held = Vec::with_capacity(wanted.len());
    for (p, v) in wanted {
        match Held::read(&md, &p, v)? {
            Some(h) => held.push(h),
            None if matches!(only, Some((_, Some(_)))) => {
                return Err(Error::NoSuchVersion {
                    package: p.to_string(),
                    version: v,
                });
            }
            // Removed between the listing and the reading.
            None => {}
        }
    }
    let lib = Library::open_read_only(dir, io)?;
    let mut skipped = Vec::new();
    held.retain(|h| {
        let there = h.still_there(&md);
        if !there {
            skipped.push(name(&h.manifest));
        }
        there
    });
    let sources: Vec<&dyn EntrySource> = held
        .iter()
        .map(|h| &h.manifest as &dyn EntrySource)
        .collect();
    let mut report = verify_sources(&lib, &sources, progress)?;
    if report.bad.is_empty() {
        report.skipped = skipped;
        return Ok(Verified {
            report,
            damage: lib.damage().to_vec(),
        });
    }
    // Check what failed again, in a view opened after the failure, for the versions still
    // there once it is open.
    drop(lib);
    let lib = Library::open_read_only(dir, io)?;
    held.retain(|h| {
        let there = h.still_there(&md);
        if !there {
            skipped.push(name(&h.manifest));
        }
        there
    });
    // The suspects some version still there needs (streamed: only those are kept).
    let bad: HashSet<ChunkId> = report.bad.iter().map(|b| b.id).collect();
    let mut needed: HashSet<ChunkId> = HashSet::new();
    for h in &held {
        for e in h.manifest.reader()? {
            if let EntryKind::File { chunks, .. } = &e?.kind {
                needed.extend(chunks.iter().map(|c| c.id).filter(|id| bad.contains(id)));
            }
        }
    }
    report.versions = held.len() as u64;
    let suspects: Vec<ChunkId> = report
        .bad
        .iter()
        .map(|b| b.id)
        .filter(|id| needed.contains(id))
        .collect();
    let mut still_bad: HashMap<ChunkId, String> = HashMap::new();
    for_each_chunk(
        &lib,
        suspects.into_iter().map(|id| ((), id)),
        16,
        |(), id, res| {
            if let Err(e) = res {
                still_bad.insert(id, crate::verify::reason(e));
            }
            Ok(())
        },
    )?;
    report.bad.retain_mut(|b| match still_bad.remove(&b.id) {
        Some(reason) => {
            b.reason = reason;
            true
        }
        None => false,
    });
    skipped.sort();
    skipped.dedup();
    report.skipped = skipped;
    Ok(Verified {
        report,
        damage: lib.damage().to_vec(),
    })
}

fn name(m: &StoredManifest) -> String {
    format!("{} v{}", m.package(), m.version())
}
