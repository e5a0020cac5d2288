//! Library maintenance shared by the roles that host packages: install a version (checked
//! against the hash the site server expects), drop a package and the content only it used,
//! and the optional share folder of materialised copies.
//!
//! Callers run these on the library's store thread ([`SharedLibrary::exclusive`]), so they
//! never race content arriving in push sessions.
//!
//! [`SharedLibrary::exclusive`]: freight_transport::store::SharedLibrary::exclusive

use freight_core::gc::{GcReport, gc_dropping, gc_partial};
use freight_core::{ChunkId, Library, Manifest, PackageId, Progress};
use freight_transport::store::SharedLibrary;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Share of a pack's bytes that must be garbage before an install rewrites it.
const GC_MIN_GARBAGE: f64 = 0.5;

/// Why a maintenance step failed; one line naming the object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The content library failed (names the file and the fix).
    #[error(transparent)]
    Library(#[from] freight_core::Error),
    /// The stored version is not the one the site server expects.
    #[error(
        "{package} v{version} here has hash {have}, the site server expects {want}; redistribute the package"
    )]
    HashMismatch {
        /// Package ID.
        package: PackageId,
        /// Version.
        version: u32,
        /// Hex hash of the stored manifest.
        have: String,
        /// Hex hash the site server sent.
        want: String,
    },
    /// A newer version is stored; an older one never replaces it.
    #[error(
        "this DP already holds {package} v{newer}, newer than v{version}; a newer version is never replaced by an older one"
    )]
    NewerHeld {
        /// Package ID.
        package: PackageId,
        /// The version offered.
        version: u32,
        /// The newer version held.
        newer: u32,
    },
    /// The library's store thread is gone (the daemon is stopping).
    #[error("content library: {0}")]
    Stopped(#[from] freight_transport::Error),
    /// The share folder could not be written.
    #[error("{}: {reason}; check the share folder and its free space", path.display())]
    Share {
        /// The folder.
        path: PathBuf,
        /// The file system's reason.
        reason: std::io::Error,
    },
}

/// Drops every version of `p` and its share folder (if `share`), then collects garbage, also
/// dropping the chunks in `bad` even where another package still names them.
pub fn drop_package(
    lib: &mut Library,
    p: &PackageId,
    bad: &HashSet<ChunkId>,
    share: Option<&Path>,
) -> Result<GcReport, ContentError> {
    drop_versions(lib, p, |_| true)?;
    remove_share(share, p);
    Ok(gc_dropping(lib, bad, &Progress::default())?)
}

/// Removes the versions of `p` that `which` selects.
fn drop_versions(
    lib: &mut Library,
    p: &PackageId,
    which: impl Fn(u32) -> bool,
) -> Result<(), ContentError> {
    for v in lib.versions_of(p)?.into_iter().filter(|v| which(*v)) {
        lib.remove_version(p, v)?;
    }
    Ok(())
}

/// Hosts `version` of `p`: checks its manifest hash against `hash` (hex), refuses to replace
/// a newer version, drops older versions and the content only they used, and materialises
/// the share. Returns the pack bytes freed.
pub fn install(
    lib: &mut Library,
    p: &PackageId,
    version: u32,
    hash: &str,
    share: Option<&Path>,
) -> Result<u64, ContentError> {
    let m = lib.manifest(p, version)?;
    let have = m.hash().to_hex();
    if have.as_str() != hash {
        return Err(ContentError::HashMismatch {
            package: p.clone(),
            version,
            have: have.to_string(),
            want: hash.to_string(),
        });
    }
    if let Some(newer) = lib.latest(p)?.filter(|n| *n > version) {
        return Err(ContentError::NewerHeld {
            package: p.clone(),
            version,
            newer,
        });
    }
    drop_versions(lib, p, |v| v < version)?;
    // An update drops a little of many packs: rewrite only packs that are mostly garbage.
    let r = gc_partial(lib, GC_MIN_GARBAGE, &Progress::default())?;
    if let Some(share) = share {
        materialise_share(lib, &m, share)?;
    }
    Ok(r.bytes_freed)
}

/// [`install`] on the store thread of a shared library.
pub async fn install_shared(
    lib: &SharedLibrary,
    p: PackageId,
    version: u32,
    hash: String,
    share: Option<PathBuf>,
) -> Result<u64, ContentError> {
    lib.exclusive(move |lib| install(lib, &p, version, &hash, share.as_deref()))
        .await?
}

/// Writes the package under `SHARE/PKG` (a temporary folder renamed into place).
fn materialise_share(lib: &Library, m: &Manifest, share: &Path) -> Result<(), ContentError> {
    let dest = share.join(m.package.as_str());
    let tmp = share.join(format!(".{}.tmp", m.package));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(share).map_err(|reason| ContentError::Share {
        path: share.to_path_buf(),
        reason,
    })?;
    freight_core::materialize::materialize(lib, m, &tmp, &Progress::default())?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(|reason| ContentError::Share { path: dest, reason })
}

fn remove_share(share: Option<&Path>, p: &PackageId) {
    if let Some(share) = share {
        let _ = std::fs::remove_dir_all(share.join(p.as_str()));
    }
}
