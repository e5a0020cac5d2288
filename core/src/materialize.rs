//! Restoring a package version as a tree on disk (materialise).
//!
//! Files are written into a private staging folder inside the destination, each under a short
//! name of its own (its number), so a temporary name can neither collide with an entry of the
//! package (a tree may hold both `x` and `.x.tmp`) nor exceed the file system's name limit where
//! the final name is already 255 bytes long. Once every chunk of every file has been read,
//! decompressed and matched against its ID, the file system is synced (`syncfs`: all file data
//! durable at once, rather than one fsync per file), the files are renamed to their final
//! names, symlinks made, the staging folder removed, and the file system synced again, so the
//! tree's names are durable too before [`materialize`] returns: a caller that reports the tree
//! as installed after that has it on disk, whatever a power cut does next. A file with wrong
//! content never appears under its name. Modes and mtimes are applied after the content;
//! directories get theirs last, deepest first, since writing inside a directory moves its mtime.
//!
//! [`replace_tree`] puts a materialised tree in place of another with one rename
//! (`RENAME_EXCHANGE`), so a share always holds either the old tree or the new one.

use crate::engine::Pending;
use crate::error::{Error, IoContext, Result};
use crate::library::Library;
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::progress::Progress;
use crate::stream::for_each_chunk;
use crate::writer::sync_dir;
use bytes::Bytes;
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const WINDOW: usize = 64;
const MAX_WRITES: usize = 32;

/// What a materialise wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MaterializeReport {
    /// Regular files.
    pub files: u64,
    /// Directories (including the root).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

struct FileJob {
    tmp: PathBuf,
    path: PathBuf,
    file: Option<Arc<File>>,
    remaining: usize,
    entry: usize,
}

/// A name in `dir` for private use that no entry of `m` at the top of the tree has.
fn staging_name(m: &Manifest) -> Result<String> {
    let top: std::collections::HashSet<&[u8]> = m
        .entries
        .iter()
        .filter_map(|e| e.path.split(|b| *b == b'/').next())
        .collect();
    loop {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r)
            .map_err(|e| Error::io("<random>", "staging name", std::io::Error::other(e)))?;
        let name = format!(".freight-staging-{}", u64::from_le_bytes(r));
        if !top.contains(name.as_bytes()) {
            return Ok(name);
        }
    }
}

/// Makes everything written to the file system holding `path` durable.
fn sync_fs(path: &Path) -> Result<()> {
    let d = File::open(path).ctx(path, "open")?;
    nix::unistd::syncfs(&d).map_err(|e| Error::io(path, "syncfs", std::io::Error::from(e)))
}

fn rel(dest: &Path, e: &Entry) -> PathBuf {
    dest.join(OsStr::from_bytes(&e.path))
}

fn set_times(path: &Path, e: &Entry) -> Result<()> {
    let t = TimeSpec::new(e.mtime_sec, e.mtime_nsec as i64);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|err| Error::io(path, "set mtime", std::io::Error::from(err)))
}

/// Writes package version `m` from `lib` into `dest`, which must be absent or empty, and makes
/// it durable (see the module docs). On failure nothing of the package is left in `dest`.
pub fn materialize(
    lib: &Library,
    m: &Manifest,
    dest: &Path,
    progress: &Progress,
) -> Result<MaterializeReport> {
    match std::fs::read_dir(dest) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(Error::DestinationNotEmpty(dest.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).ctx(dest, "create destination")?
        }
        Err(e) => return Err(Error::io(dest, "open destination", e)),
    }
    if let Some(id) = lib.missing(m).first() {
        return Err(Error::MissingChunk {
            id: id.to_hex(),
            package: m.package.to_string(),
            version: m.version,
        });
    }
    let res = write_tree(lib, m, dest, progress);
    if res.is_err() {
        // Leave no half-written package behind: the destination was empty when we started.
        if let Ok(rd) = std::fs::read_dir(dest) {
            for item in rd.flatten() {
                let p = item.path();
                let _ = if item.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&p).map_err(|_| ())
                } else {
                    std::fs::remove_file(&p).map_err(|_| ())
                };
            }
        }
    }
    res
}

fn write_tree(
    lib: &Library,
    m: &Manifest,
    dest: &Path,
    progress: &Progress,
) -> Result<MaterializeReport> {
    let mut report = MaterializeReport::default();
    progress.start(
        "materialize",
        m.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count() as u64,
        m.total_bytes(),
    );
    let staging = dest.join(staging_name(m)?);
    std::fs::create_dir(&staging).ctx(&staging, "create staging folder")?;
    // Directories first, owner-writable until the end.
    for e in &m.entries {
        if e.kind == EntryKind::Dir {
            report.dirs += 1;
            if !e.path.is_empty() {
                let p = rel(dest, e);
                std::fs::create_dir(&p).ctx(&p, "create directory")?;
            }
        }
    }
    // Files: one staged file each, opened when its first chunk arrives and closed when its last
    // one is written (so open files stay bounded by the read window), chunks written at their
    // offsets as they verify.
    let mut jobs: Vec<Option<FileJob>> = Vec::new();
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut plan: Vec<((usize, u64), crate::id::ChunkId)> = Vec::new();
    for (i, e) in m.entries.iter().enumerate() {
        if let EntryKind::File { chunks, size } = &e.kind {
            let job_no = jobs.len();
            let mut off = 0u64;
            for c in chunks {
                plan.push(((job_no, off), c.id));
                off += c.len as u64;
            }
            report.files += 1;
            report.bytes += size;
            let mut job = FileJob {
                tmp: staging.join(format!("{job_no:x}")),
                path: rel(dest, e),
                file: None,
                remaining: chunks.len(),
                entry: i,
            };
            if chunks.is_empty() {
                open_job(&mut job)?;
                staged.push(finish_job(job, m)?);
                progress.add_file();
                jobs.push(None);
            } else {
                jobs.push(Some(job));
            }
        }
    }
    let engine = lib.engine().clone();
    let mut writes: VecDeque<(usize, u64, Pending<()>)> = VecDeque::new();
    let complete = |jobs: &mut Vec<Option<FileJob>>,
                    staged: &mut Vec<(PathBuf, PathBuf)>,
                    (job_no, len, p): (usize, u64, Pending<()>)|
     -> Result<()> {
        let job = jobs[job_no].as_mut().expect("live job");
        p.wait().ctx(&job.tmp, "write")?;
        progress.add_bytes(len);
        job.remaining -= 1;
        if job.remaining == 0 {
            let job = jobs[job_no].take().expect("live job");
            staged.push(finish_job(job, m)?);
            progress.add_file();
        }
        Ok(())
    };
    for_each_chunk(lib, plan.into_iter(), WINDOW, |(job_no, off), id, data| {
        let job = jobs[job_no].as_mut().expect("live job");
        let data = data.map_err(|e| match e {
            Error::CorruptChunk { .. } => Error::RefusedFile {
                path: job.path.clone(),
                id: id.to_hex(),
            },
            other => other,
        })?;
        if job.file.is_none() {
            open_job(job)?;
        }
        let f = job.file.as_ref().expect("open");
        let len = data.len() as u64;
        writes.push_back((job_no, len, engine.write_at(f, off, Bytes::from(data))));
        while writes.len() > MAX_WRITES {
            let w = writes.pop_front().expect("write");
            complete(&mut jobs, &mut staged, w)?;
        }
        Ok(())
    })?;
    while let Some(w) = writes.pop_front() {
        complete(&mut jobs, &mut staged, w)?;
    }
    // Every file's content is durable before any of them takes its name.
    sync_fs(dest)?;
    for (tmp, path) in &staged {
        std::fs::rename(tmp, path).ctx(path, "rename into place")?;
    }
    // Symlinks after files, so no write can ever follow one.
    for e in &m.entries {
        if let EntryKind::Symlink { target } = &e.kind {
            let p = rel(dest, e);
            std::os::unix::fs::symlink(OsStr::from_bytes(target), &p).ctx(&p, "create symlink")?;
            set_times(&p, e)?;
            report.symlinks += 1;
        }
    }
    std::fs::remove_dir(&staging).ctx(&staging, "remove staging folder")?;
    for e in m.entries.iter().rev() {
        if e.kind == EntryKind::Dir {
            let p = rel(dest, e);
            std::fs::set_permissions(&p, Permissions::from_mode(e.mode)).ctx(&p, "set mode")?;
            set_times(&p, e)?;
        }
    }
    // The names (renames, symlinks, folders, modes) are durable before this returns.
    sync_fs(dest)?;
    Ok(report)
}

fn open_job(job: &mut FileJob) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&job.tmp)
        .ctx(&job.tmp, "create")?;
    job.file = Some(Arc::new(f));
    Ok(())
}

/// Applies mode and mtime to a fully written staged file and closes it; returns (staged
/// path, final path) for the rename once everything is durable.
fn finish_job(job: FileJob, m: &Manifest) -> Result<(PathBuf, PathBuf)> {
    let e = &m.entries[job.entry];
    let f = job.file.as_ref().expect("open file");
    f.set_permissions(Permissions::from_mode(e.mode))
        .ctx(&job.tmp, "set mode")?;
    let t = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::new(
            e.mtime_sec.max(0) as u64,
            e.mtime_nsec,
        ))
        .filter(|_| e.mtime_sec >= 0);
    match t {
        Some(t) => f
            .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
            .ctx(&job.tmp, "set mtime")?,
        None => set_times(&job.tmp, e)?,
    }
    Ok((job.tmp, job.path))
}

/// Puts the materialised tree `new` at `dest` with one rename: when `dest` exists the two are
/// exchanged (`RENAME_EXCHANGE`) and the old tree, now at `new`, is removed afterwards; so
/// `dest` always holds a complete tree, the old or the new one, even across a power cut. The
/// folder holding `dest` (and the one holding `new`) is synced before the old tree goes.
/// `new` and `dest` must be on one file system.
pub fn replace_tree(new: &Path, dest: &Path) -> Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    let dest_dir = dest.parent().unwrap_or(Path::new("."));
    let new_dir = new.parent().unwrap_or(Path::new("."));
    let sync_dirs = || -> Result<()> {
        sync_dir(dest_dir)?;
        if new_dir != dest_dir {
            sync_dir(new_dir)?;
        }
        Ok(())
    };
    let exists = std::fs::symlink_metadata(dest).is_ok();
    if !exists {
        match renameat2(AT_FDCWD, new, AT_FDCWD, dest, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {}
            // A file system without renameat2 flags: nothing is at `dest` to lose.
            Err(nix::errno::Errno::EINVAL) => {
                std::fs::rename(new, dest).ctx(dest, "rename into place")?
            }
            Err(e) => {
                return Err(Error::io(
                    dest,
                    "rename into place",
                    std::io::Error::from(e),
                ));
            }
        }
        return sync_dirs();
    }
    match renameat2(AT_FDCWD, new, AT_FDCWD, dest, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {}
        Err(nix::errno::Errno::EINVAL) => {
            // No exchange on this file system: move the old tree aside first. A crash between
            // the two renames leaves the old tree beside `new` instead of at `dest`.
            let aside = new.with_extension("old");
            std::fs::rename(dest, &aside).ctx(dest, "move old tree aside")?;
            std::fs::rename(new, dest).ctx(dest, "rename into place")?;
            sync_dirs()?;
            return std::fs::remove_dir_all(&aside).ctx(&aside, "remove old tree");
        }
        Err(e) => return Err(Error::io(dest, "exchange trees", std::io::Error::from(e))),
    }
    sync_dirs()?;
    remove_tree(new)
}

/// Removes a tree, making its folder writable first where its mode says otherwise.
pub fn remove_tree(path: &Path) -> Result<()> {
    for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::set_permissions(e.path(), Permissions::from_mode(0o700));
            remove_tree(&e.path())?;
        }
    }
    let _ = std::fs::set_permissions(path, Permissions::from_mode(0o700));
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, "remove tree", e)),
    }
}
