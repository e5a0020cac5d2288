//! Library maintenance shared by the roles that host packages: install a version (checked
//! against the hash the site server expects), drop a package and the content only it used,
//! and the optional share folder of materialised copies.
//!
//! Changes to the library run on its store thread ([`SharedLibrary::exclusive`]), so they
//! never race content arriving in push sessions; an install's long half (writing the share)
//! only reads the library and runs beside its readers (see [`install_shared`]).
//!
//! [`SharedLibrary::exclusive`]: freight_transport::store::SharedLibrary::exclusive

use freight_core::gc::{GcReport, drop_chunks, gc_dropping, gc_partial};
use freight_core::library::StoredManifest;
use freight_core::{ChunkId, Library, PackageId, Progress};
use freight_transport::store::SharedLibrary;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Share of a pack's bytes that must be garbage before an install rewrites it.
const GC_MIN_GARBAGE: f64 = 0.5;

/// Whether a failure can go away by itself (retry later) or can never succeed as things stand
/// (fail at once). A DP says which in its reply; the site server's job machine acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Peer unreachable, a timeout, a lost connection, a full disk: worth retrying.
    #[default]
    Transient,
    /// A name or path the file system refuses, a hash that does not match, a refused
    /// authorization: retrying changes nothing.
    Permanent,
}

/// Errors a file system gives for a name or path it will never take: too long, not valid
/// for it (`EINVAL`), or not in its encoding (`EILSEQ`).
const PERMANENT_ERRNOS: [i32; 3] = [libc::ENAMETOOLONG, libc::EINVAL, libc::EILSEQ];

/// The kind of an I/O failure: permanent for [`PERMANENT_ERRNOS`], transient otherwise
/// (`ENOSPC`, `EIO`, `EACCES`, ...: space can be made, permissions fixed).
pub fn io_kind(e: &std::io::Error) -> FailureKind {
    match e.raw_os_error() {
        Some(n) if PERMANENT_ERRNOS.contains(&n) => FailureKind::Permanent,
        _ => FailureKind::Transient,
    }
}

/// The kind of the first I/O error in `e`'s source chain (transient when there is none).
pub fn chain_kind(e: &(dyn std::error::Error + 'static)) -> FailureKind {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_kind(io);
        }
        cur = e.source();
    }
    FailureKind::Transient
}

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

impl ContentError {
    /// Whether retrying can help (see [`FailureKind`]).
    pub fn kind(&self) -> FailureKind {
        match self {
            // A chunk that fails its hash stays where it is through every retry (a push sends
            // only what is missing); a redistribute replaces it.
            ContentError::Library(
                freight_core::Error::CorruptChunk { .. } | freight_core::Error::RefusedFile { .. },
            ) => FailureKind::Permanent,
            ContentError::Library(e) => chain_kind(e),
            ContentError::Share { reason, .. } => io_kind(reason),
            ContentError::HashMismatch { .. } | ContentError::NewerHeld { .. } => {
                FailureKind::Permanent
            }
            ContentError::Stopped(_) => FailureKind::Transient,
        }
    }
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
    match std::fs::remove_file(installed_marker(lib, p)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            let path = installed_marker(lib, p);
            return Err(freight_core::Error::io(&path, "remove", e).into());
        }
    }
    remove_share(share, p);
    clear_repaired(lib.dir(), p);
    Ok(gc_dropping(lib, bad, &Progress::default())?)
}

/// Where a library records, per package, the chunks a redistribute dropped because they
/// failed verification (`LIB/repaired/<PKG>`, hex IDs one a line), until the install that
/// follows has checked the shares of the other packages that use them.
const REPAIRED: &str = "repaired";

fn repaired_record(lib_dir: &Path, p: &PackageId) -> PathBuf {
    lib_dir.join(REPAIRED).join(p.as_str())
}

/// The chunks recorded by [`drop_bad_chunks`] for `p` (none when there is no record; an
/// unreadable line is skipped: the record only widens a check).
fn repaired_chunks(lib_dir: &Path, p: &PackageId) -> HashSet<ChunkId> {
    std::fs::read_to_string(repaired_record(lib_dir, p))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| blake3::Hash::from_hex(l.trim()).ok())
        .map(|h| ChunkId(*h.as_bytes()))
        .collect()
}

fn clear_repaired(lib_dir: &Path, p: &PackageId) {
    match std::fs::remove_file(repaired_record(lib_dir, p)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(package = %p, error = %e, "could not remove the record of repaired chunks; the next install checks the shares again")
        }
    }
}

/// Before a redistribute: drops the chunks in `bad` (those of `p` that failed verification)
/// from the library, even where other packages name them, so that the push that follows
/// sends them again and every package using them is repaired. The versions, the install
/// record and the share stay: every file whose chunks are good keeps being served, and a file
/// with a dropped chunk answers an error (as its corrupt chunk did), never wrong bytes.
///
/// The chunks are recorded first (durably, added to what an interrupted redistribute
/// recorded), so the install that follows checks the shares of the other packages that use
/// them, whatever crash comes in between. Nothing is dropped when `bad` is empty.
pub fn drop_bad_chunks(
    lib: &mut Library,
    p: &PackageId,
    bad: &HashSet<ChunkId>,
) -> Result<u64, ContentError> {
    if bad.is_empty() {
        return Ok(0);
    }
    let mut all = repaired_chunks(lib.dir(), p);
    all.extend(bad.iter().copied());
    let mut text: Vec<String> = all.iter().map(|c| c.to_hex()).collect();
    text.sort();
    let path = repaired_record(lib.dir(), p);
    let dir = path.parent().expect("record folder");
    std::fs::create_dir_all(dir).map_err(|e| freight_core::Error::io(dir, "create folder", e))?;
    freight_core::library::write_atomic(&path, (text.join("\n") + "\n").as_bytes())?;
    // Only the packs holding them are rewritten: the library is held no longer than the
    // damage needs, while HTTP readers wait.
    Ok(drop_chunks(lib, bad, &Progress::default())?.bytes_freed)
}

/// After an install of `p`: the other installed packages whose files use a chunk a
/// redistribute of `p` repaired ([`drop_bad_chunks`]) get their share checked, file by file
/// against the chunk hashes, and materialised again (staging and swap) where a file is wrong
/// or missing; then the record goes. Only reads the library. Without a share there is
/// nothing to check (HTTP reads the library, where the chunks are repaired for every package).
fn recheck_shares(lib: &Library, p: &PackageId, share: Option<&Path>) -> Result<(), ContentError> {
    let repaired = repaired_chunks(lib.dir(), p);
    if repaired.is_empty() {
        return Ok(());
    }
    if let Some(share) = share {
        for q in lib.versions()?.into_keys().filter(|q| q != p) {
            let Some(v) = installed_version(lib, &q) else {
                continue;
            };
            let m = lib.manifest_dir().open_manifest(&q, v)?;
            if !share_holds(&share.join(q.as_str()), &m, &repaired)? {
                tracing::info!(package = %q, version = v, "rewriting a share copy that uses repaired content");
                materialise_share(lib, &m, share)?;
            }
        }
    }
    clear_repaired(lib.dir(), p);
    Ok(())
}

/// Whether every file of `m` using a chunk in `chunks` is in the tree at `dir` with exactly
/// the manifest's bytes (size and each chunk's hash). The manifest is streamed, one entry at a
/// time; only a manifest that cannot be read is an error.
fn share_holds(
    dir: &Path,
    m: &StoredManifest,
    chunks: &HashSet<ChunkId>,
) -> Result<bool, ContentError> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let mut buf = Vec::new();
    for e in m.reader()? {
        let e = e?;
        let freight_core::manifest::EntryKind::File { size, chunks: refs } = &e.kind else {
            continue;
        };
        if !refs.iter().any(|c| chunks.contains(&c.id)) {
            continue;
        }
        let path = dir.join(std::ffi::OsStr::from_bytes(&e.path));
        let Ok(mut f) = std::fs::File::open(&path) else {
            return Ok(false);
        };
        if f.metadata().map(|md| md.len()).ok() != Some(*size) {
            return Ok(false);
        }
        let same = refs.iter().all(|c| {
            buf.resize(c.len as usize, 0);
            f.read_exact(&mut buf).is_ok() && ChunkId::of(&buf) == c.id
        });
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
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
/// disk, whatever happens next. Returns the pack bytes freed. When it fails, the version is
/// dropped from the library unless an install of it succeeded before ([`abandon`]), so a DP
/// never serves a version it could not install.
pub fn install(
    lib: &mut Library,
    p: &PackageId,
    version: u32,
    hash: &str,
    share: Option<&Path>,
) -> Result<u64, ContentError> {
    let res = prepare_install(lib, p, version, hash, share)
        .and_then(|()| finish_install(lib, p, version, hash));
    if res.is_err() {
        abandon(lib, p, version);
        return res;
    }
    recheck_shares(lib, p, share)?;
    res
}

/// Where a library records, per package, the version whose install last succeeded
/// (`LIB/installed/<PKG>`, the version as text).
const INSTALLED: &str = "installed";

fn installed_marker(lib: &Library, p: &PackageId) -> PathBuf {
    marker_in(lib.dir(), p)
}

fn marker_in(lib_dir: &Path, p: &PackageId) -> PathBuf {
    lib_dir.join(INSTALLED).join(p.as_str())
}

/// The version of `p` whose install last succeeded here, if any.
pub fn installed_version(lib: &Library, p: &PackageId) -> Option<u32> {
    installed_version_at(lib.dir(), p)
}

/// [`installed_version`] of the library at `lib_dir` (read without the library, by the DP's
/// content server).
pub fn installed_version_at(lib_dir: &Path, p: &PackageId) -> Option<u32> {
    std::fs::read_to_string(marker_in(lib_dir, p))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn mark_installed(lib: &Library, p: &PackageId, version: u32) -> Result<(), ContentError> {
    let path = installed_marker(lib, p);
    let dir = path.parent().expect("marker folder");
    std::fs::create_dir_all(dir).map_err(|e| freight_core::Error::io(dir, "create folder", e))?;
    freight_core::library::write_atomic(&path, version.to_string().as_bytes())?;
    Ok(())
}

/// After a failed install of `version`: drops it from the library (its chunks go with the next
/// collection) unless an install of it succeeded before, so HTTP never serves a version whose
/// install failed and nothing of it is left named. A version that was installed stays: the
/// share still holds it complete.
fn abandon(lib: &mut Library, p: &PackageId, version: u32) {
    if installed_version(lib, p) == Some(version) {
        return;
    }
    if lib.versions_of(p).is_ok_and(|vs| vs.contains(&version))
        && let Err(e) = lib.remove_version(p, version)
    {
        tracing::warn!(package = %p, version, error = %e, "could not drop a version whose install failed");
    }
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
/// the first half), the version recorded as installed, then older versions and their content
/// dropped. A failed collection is only logged: the version is installed by then.
fn finish_install(
    lib: &mut Library,
    p: &PackageId,
    version: u32,
    hash: &str,
) -> Result<u64, ContentError> {
    check_install(lib, p, version, hash)?;
    mark_installed(lib, p, version)?;
    drop_versions(lib, p, |v| v < version)?;
    // An update drops a little of many packs: rewrite only packs that are mostly garbage.
    match gc_partial(lib, GC_MIN_GARBAGE, &Progress::default()) {
        Ok(r) => Ok(r.bytes_freed),
        Err(e) => {
            tracing::warn!(package = %p, version, error = %e, "installed, but collecting the content older versions used failed; the next install or `freight library gc` collects it");
            Ok(0)
        }
    }
}

/// The stored manifest of `version` (opened for streaming, checked whole in one pass), if
/// its hash is `hash` and no newer version is held.
fn check_install(
    lib: &Library,
    p: &PackageId,
    version: u32,
    hash: &str,
) -> Result<StoredManifest, ContentError> {
    let m = lib.manifest_dir().open_manifest(p, version)?;
    let have = m.hash()?.to_hex();
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
    let (p2, hash2, share2) = (p.clone(), hash.clone(), share.clone());
    let res = match lib
        .read_async(move |lib| {
            crate::test_pause::point("install");
            prepare_install(lib, &p2, version, &hash2, share2.as_deref())
        })
        .await
    {
        Ok(Ok(())) => {
            let p = p.clone();
            lib.exclusive(move |lib| finish_install(lib, &p, version, &hash))
                .await
                .map_err(ContentError::from)
                .and_then(|r| r)
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(e.into()),
    };
    if res.is_err() {
        let _ = lib.exclusive(move |lib| abandon(lib, &p, version)).await;
        return res;
    }
    // The version is installed: content a redistribute repaired is checked in the other
    // packages' share copies (a failure here is retried by the job, the record stays).
    lib.read_async(move |lib| recheck_shares(lib, &p, share.as_deref()))
        .await??;
    res
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
/// The manifest is streamed from its file ([`freight_core::materialize::materialize_from`]).
fn materialise_share(lib: &Library, m: &StoredManifest, share: &Path) -> Result<(), ContentError> {
    std::fs::create_dir_all(share).map_err(share_error(share))?;
    clean_staging(share, m.package());
    let new = staging_path(share, m.package().as_str())?;
    let res = freight_core::materialize::materialize_from(lib, m, &new, &Progress::default())
        .and_then(|_| {
            crate::test_pause::point("materialised");
            freight_core::materialize::replace_tree(&new, &share.join(m.package().as_str()))
        })
        .inspect(|_| crate::test_pause::point("swapped"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn io(errno: i32) -> ContentError {
        freight_core::Error::io(
            "/share/x",
            "create",
            std::io::Error::from_raw_os_error(errno),
        )
        .into()
    }

    #[test]
    fn names_the_file_system_refuses_are_permanent_and_a_full_disk_is_transient() {
        for errno in [libc::ENAMETOOLONG, libc::EINVAL, libc::EILSEQ] {
            assert_eq!(io(errno).kind(), FailureKind::Permanent, "{errno}");
            let share = ContentError::Share {
                path: "/share".into(),
                reason: std::io::Error::from_raw_os_error(errno),
            };
            assert_eq!(share.kind(), FailureKind::Permanent, "{errno}");
        }
        for errno in [libc::ENOSPC, libc::EIO, libc::EACCES, libc::EDQUOT] {
            assert_eq!(io(errno).kind(), FailureKind::Transient, "{errno}");
        }
        let p = PackageId::parse("PS100001").unwrap();
        let mismatch = ContentError::HashMismatch {
            package: p,
            version: 1,
            have: "a".into(),
            want: "b".into(),
        };
        assert_eq!(mismatch.kind(), FailureKind::Permanent);
    }
}
