//! Library maintenance shared by the roles that host packages: install a version (checked
//! against the hash the site server expects), drop a package and the content only it used,
//! and the optional share folder of materialised copies.
//!
//! Changes to the library run on its store thread ([`SharedLibrary::exclusive`]), so they
//! never race content arriving in push sessions; an install's long half (writing the share)
//! only reads the library and runs beside its readers (see [`install_shared`]).
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
/// a newer version, materialises the share (durable, swapped in with one rename), then drops
/// older versions and the content only they used. When this returns Ok the version is on
/// disk, whatever happens next. Returns the pack bytes freed.
pub fn install(
    lib: &mut Library,
    p: &PackageId,
    version: u32,
    hash: &str,
    share: Option<&Path>,
) -> Result<u64, ContentError> {
    prepare_install(lib, p, version, hash, share)?;
    finish_install(lib, p, version, hash)
}

/// The half of an install that only reads the library: the checks, and the share
/// materialised and swapped in. The new share is in place (and durable) before the old
/// version goes: a crash at any point leaves the version last reported installed both in the
/// library and in the share, or the new one complete in both.
fn prepare_install(
    lib: &Library,
    p: &PackageId,
    version: u32,
    hash: &str,
    share: Option<&Path>,
) -> Result<(), ContentError> {
    let m = check_install(lib, p, version, hash)?;
    if let Some(share) = share {
        materialise_share(lib, &m, share)?;
    }
    Ok(())
}

/// The half that changes the library: the checks again (the library may have changed since
/// the first half), then older versions and their content dropped.
fn finish_install(
    lib: &mut Library,
    p: &PackageId,
    version: u32,
    hash: &str,
) -> Result<u64, ContentError> {
    check_install(lib, p, version, hash)?;
    drop_versions(lib, p, |v| v < version)?;
    // An update drops a little of many packs: rewrite only packs that are mostly garbage.
    let r = gc_partial(lib, GC_MIN_GARBAGE, &Progress::default())?;
    Ok(r.bytes_freed)
}

/// The stored manifest of `version`, if its hash is `hash` and no newer version is held.
fn check_install(
    lib: &Library,
    p: &PackageId,
    version: u32,
    hash: &str,
) -> Result<Manifest, ContentError> {
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
    Ok(m)
}

/// [`install`] on a shared library: the reading half (materialising the share, which takes
/// as long as writing the package does) under the library's read lock, beside the DP's HTTP
/// readers and push sessions; only the short second half on the store thread.
pub async fn install_shared(
    lib: &SharedLibrary,
    p: PackageId,
    version: u32,
    hash: String,
    share: Option<PathBuf>,
) -> Result<u64, ContentError> {
    // One install at a time in this process: two installs of one package would clean each
    // other's staging trees, and on a DP's few cores parallel installs gain nothing.
    static INSTALLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = INSTALLS.lock().await;
    let (p2, hash2) = (p.clone(), hash.clone());
    lib.read_async(move |lib| prepare_install(lib, &p2, version, &hash2, share.as_deref()))
        .await??;
    lib.exclusive(move |lib| finish_install(lib, &p, version, &hash))
        .await?
}

/// Where the share keeps trees being built or removed; package IDs never start with a dot.
const STAGING: &str = ".freight-staging";

fn share_error(path: &Path) -> impl FnOnce(std::io::Error) -> ContentError + '_ {
    move |reason| ContentError::Share {
        path: path.to_path_buf(),
        reason,
    }
}

/// A fresh name under the share's staging folder.
fn staging_path(share: &Path, what: &str) -> Result<PathBuf, ContentError> {
    let staging = share.join(STAGING);
    std::fs::create_dir_all(&staging).map_err(share_error(&staging))?;
    Ok(staging.join(format!("{what}-{:016x}", rand::random::<u64>())))
}

/// Writes the package under `SHARE/PKG`: materialised (and made durable) in the share's
/// private staging folder, then swapped in with one rename, so `SHARE/PKG` always holds a
/// complete version, the old one or the new one, and the new one is on disk before the
/// install is reported. Leftovers of an interrupted install are removed first.
fn materialise_share(lib: &Library, m: &Manifest, share: &Path) -> Result<(), ContentError> {
    std::fs::create_dir_all(share).map_err(share_error(share))?;
    clean_staging(share, &m.package);
    let new = staging_path(share, m.package.as_str())?;
    let res =
        freight_core::materialize::materialize(lib, m, &new, &Progress::default()).and_then(|_| {
            freight_core::materialize::replace_tree(&new, &share.join(m.package.as_str()))
        });
    if res.is_err() {
        let _ = freight_core::materialize::remove_tree(&new);
    }
    Ok(res?)
}

/// Removes what interrupted installs and removals of package `p` left in the share's staging
/// folder. Only `p`'s: installs of other packages may be building their trees there now.
fn clean_staging(share: &Path, p: &PackageId) {
    let staging = share.join(STAGING);
    let (mine, gone) = (format!("{p}-"), format!("gone-{p}-"));
    for e in std::fs::read_dir(&staging).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(&mine) && !name.starts_with(&gone) {
            continue;
        }
        if let Err(err) = freight_core::materialize::remove_tree(&e.path()) {
            tracing::warn!(error = %err, "could not remove a leftover of an interrupted install");
        }
    }
}

/// Removes `SHARE/PKG`: renamed into the staging folder first (one rename, synced), so the
/// share never shows part of a tree under the package's name, then deleted.
fn remove_share(share: Option<&Path>, p: &PackageId) {
    let Some(share) = share else { return };
    let dest = share.join(p.as_str());
    if std::fs::symlink_metadata(&dest).is_err() {
        return;
    }
    let res = staging_path(share, &format!("gone-{p}"))
        .and_then(|gone| {
            std::fs::rename(&dest, &gone).map_err(share_error(&dest))?;
            std::fs::File::open(share)
                .and_then(|d| d.sync_all())
                .map_err(share_error(share))?;
            Ok(gone)
        })
        .and_then(|gone| freight_core::materialize::remove_tree(&gone).map_err(ContentError::from));
    if let Err(e) = res {
        tracing::warn!(error = %e, "removing a package's share folder failed");
    }
}
