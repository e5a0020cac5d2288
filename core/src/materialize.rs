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
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat, renameat};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags, fchmodat, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
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
    /// Its name in the staging folder (its number, in hex).
    tmp: String,
    /// Its path below the destination (the manifest's path).
    path: Vec<u8>,
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

/// Makes everything written to the file system holding `dir` durable.
fn sync_fs(dir: &OwnedFd, path: &Path) -> Result<()> {
    nix::unistd::syncfs(dir).map_err(|e| Error::io(path, "syncfs", std::io::Error::from(e)))
}

/// The destination folder, opened: every operation below names its object relative to it (or
/// to the staging folder), so a path of the package is limited by what one system call takes
/// (4,095 bytes), however long the destination's own path is.
struct Root<'a> {
    fd: OwnedFd,
    path: &'a Path,
}

impl Root<'_> {
    /// The full path of `rel`, for messages only.
    fn show(&self, rel: &[u8]) -> PathBuf {
        self.path.join(OsStr::from_bytes(rel))
    }

    fn err(&self, rel: &[u8], op: &'static str) -> impl FnOnce(Errno) -> Error + use<> {
        let p = self.show(rel);
        move |e| Error::io(p, op, std::io::Error::from(e))
    }
}

fn set_times_at(root: &Root, dir: &OwnedFd, name: &[u8], shown: &[u8], e: &Entry) -> Result<()> {
    let t = TimeSpec::new(e.mtime_sec, e.mtime_nsec as i64);
    utimensat(
        dir,
        OsStr::from_bytes(name),
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(root.err(shown, "set mtime"))
}

fn open_dir_at(dir: impl AsFd, name: &Path) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
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
    let root = Root {
        fd: open_dir_at(AT_FDCWD, dest)
            .map_err(|e| Error::io(dest, "open destination", std::io::Error::from(e)))?,
        path: dest,
    };
    let res = write_tree(lib, m, &root, progress);
    if res.is_err() {
        // Leave no half-written package behind: the destination was empty when we started.
        if let Err(e) = empty_dir(&root.fd, dest) {
            tracing::warn!(error = %e, "could not clean up after a failed materialise");
        }
    }
    res
}

fn write_tree(
    lib: &Library,
    m: &Manifest,
    root: &Root,
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
    let staging_name = staging_name(m)?;
    mkdirat(
        &root.fd,
        staging_name.as_str(),
        Mode::from_bits_truncate(0o700),
    )
    .map_err(root.err(staging_name.as_bytes(), "create staging folder"))?;
    let staging = open_dir_at(&root.fd, Path::new(&staging_name))
        .map_err(root.err(staging_name.as_bytes(), "open staging folder"))?;
    // Directories first, owner-writable until the end.
    for e in &m.entries {
        if e.kind == EntryKind::Dir {
            report.dirs += 1;
            if !e.path.is_empty() {
                mkdirat(
                    &root.fd,
                    OsStr::from_bytes(&e.path),
                    Mode::from_bits_truncate(0o700),
                )
                .map_err(root.err(&e.path, "create directory"))?;
            }
        }
    }
    // Files: one staged file each, opened when its first chunk arrives and closed when its last
    // one is written (so open files stay bounded by the read window), chunks written at their
    // offsets as they verify.
    let mut jobs: Vec<Option<FileJob>> = Vec::new();
    let mut staged: Vec<(String, Vec<u8>)> = Vec::new();
    let mut plan: Vec<((usize, u64), crate::id::ChunkId)> = Vec::new();
    let ctx = Ctx {
        root,
        staging: &staging,
        staging_name: &staging_name,
        m,
    };
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
                tmp: format!("{job_no:x}"),
                path: e.path.clone(),
                file: None,
                remaining: chunks.len(),
                entry: i,
            };
            if chunks.is_empty() {
                ctx.open_job(&mut job)?;
                staged.push(ctx.finish_job(job)?);
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
                    staged: &mut Vec<(String, Vec<u8>)>,
                    (job_no, len, p): (usize, u64, Pending<()>)|
     -> Result<()> {
        let job = jobs[job_no].as_mut().expect("live job");
        p.wait().ctx(ctx.tmp_path(&job.tmp), "write")?;
        progress.add_bytes(len);
        job.remaining -= 1;
        if job.remaining == 0 {
            let job = jobs[job_no].take().expect("live job");
            staged.push(ctx.finish_job(job)?);
            progress.add_file();
        }
        Ok(())
    };
    for_each_chunk(lib, plan.into_iter(), WINDOW, |(job_no, off), id, data| {
        let job = jobs[job_no].as_mut().expect("live job");
        let data = data.map_err(|e| match e {
            Error::CorruptChunk { .. } => Error::RefusedFile {
                path: root.show(&job.path),
                id: id.to_hex(),
            },
            other => other,
        })?;
        if job.file.is_none() {
            ctx.open_job(job)?;
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
    sync_fs(&root.fd, root.path)?;
    for (tmp, path) in &staged {
        renameat(&staging, tmp.as_str(), &root.fd, OsStr::from_bytes(path))
            .map_err(root.err(path, "rename into place"))?;
    }
    // Symlinks after files, so no write can ever follow one.
    for e in &m.entries {
        if let EntryKind::Symlink { target } = &e.kind {
            symlinkat(
                OsStr::from_bytes(target),
                &root.fd,
                OsStr::from_bytes(&e.path),
            )
            .map_err(root.err(&e.path, "create symlink"))?;
            set_times_at(root, &root.fd, &e.path, &e.path, e)?;
            report.symlinks += 1;
        }
    }
    drop(staging);
    unlinkat(&root.fd, staging_name.as_str(), UnlinkatFlags::RemoveDir)
        .map_err(root.err(staging_name.as_bytes(), "remove staging folder"))?;
    for e in m.entries.iter().rev() {
        if e.kind == EntryKind::Dir {
            let rel: &OsStr = if e.path.is_empty() {
                OsStr::new(".")
            } else {
                OsStr::from_bytes(&e.path)
            };
            fchmodat(
                &root.fd,
                rel,
                Mode::from_bits_truncate(e.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(root.err(&e.path, "set mode"))?;
            set_times_at(root, &root.fd, rel.as_bytes(), &e.path, e)?;
        }
    }
    // The names (renames, symlinks, folders, modes) are durable before this returns.
    sync_fs(&root.fd, root.path)?;
    Ok(report)
}

/// What a file job needs of the tree being written.
struct Ctx<'a> {
    root: &'a Root<'a>,
    staging: &'a OwnedFd,
    staging_name: &'a str,
    m: &'a Manifest,
}

impl Ctx<'_> {
    fn tmp_path(&self, tmp: &str) -> PathBuf {
        self.root.path.join(self.staging_name).join(tmp)
    }

    fn open_job(&self, job: &mut FileJob) -> Result<()> {
        let fd = openat(
            self.staging,
            job.tmp.as_str(),
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Error::io(self.tmp_path(&job.tmp), "create", std::io::Error::from(e)))?;
        job.file = Some(Arc::new(File::from(fd)));
        Ok(())
    }

    /// Applies mode and mtime to a fully written staged file and closes it; returns (staged
    /// name, final path) for the rename once everything is durable.
    fn finish_job(&self, job: FileJob) -> Result<(String, Vec<u8>)> {
        let e = &self.m.entries[job.entry];
        let f = job.file.as_ref().expect("open file");
        let tmp = || self.tmp_path(&job.tmp);
        f.set_permissions(Permissions::from_mode(e.mode))
            .ctx(tmp(), "set mode")?;
        let t = std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::new(
                e.mtime_sec.max(0) as u64,
                e.mtime_nsec,
            ))
            .filter(|_| e.mtime_sec >= 0);
        match t {
            Some(t) => f
                .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
                .ctx(tmp(), "set mtime")?,
            None => {
                let shown = format!("{}/{}", self.staging_name, job.tmp);
                set_times_at(
                    self.root,
                    self.staging,
                    job.tmp.as_bytes(),
                    shown.as_bytes(),
                    e,
                )?
            }
        }
        Ok((job.tmp, job.path))
    }
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

/// Removes a tree, making its folders writable first where their modes say otherwise. Works
/// by descriptors, folder by folder, so no path longer than one name is ever handed to the
/// kernel: trees deeper than `PATH_MAX` go too.
pub fn remove_tree(path: &Path) -> Result<()> {
    let _ = std::fs::set_permissions(path, Permissions::from_mode(0o700));
    let fd = match open_dir_at(AT_FDCWD, path) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        // Not a folder (or a symlink): remove the name itself.
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            return std::fs::remove_file(path).ctx(path, "remove tree");
        }
        Err(e) => return Err(Error::io(path, "remove tree", std::io::Error::from(e))),
    };
    empty_dir(&fd, path)?;
    drop(fd);
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, "remove tree", e)),
    }
}

/// Removes everything inside the open folder `dir` (shown as `path` in errors).
fn empty_dir(dir: &OwnedFd, path: &Path) -> Result<()> {
    let err = |op: &'static str| move |e: Errno| Error::io(path, op, std::io::Error::from(e));
    let names: Vec<(std::ffi::CString, bool)> = {
        let dup = dir.try_clone().ctx(path, "read folder")?;
        let mut d = nix::dir::Dir::from_fd(dup).map_err(err("read folder"))?;
        let mut names = Vec::new();
        for entry in d.iter() {
            let entry = entry.map_err(err("read folder"))?;
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                Some(t) => t == nix::dir::Type::Directory,
                None => {
                    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                        .map_err(err("stat"))?
                }
            };
            names.push((name.to_owned(), is_dir));
        }
        names
    };
    for (name, is_dir) in names {
        let shown = path.join(OsStr::from_bytes(name.to_bytes()));
        if is_dir {
            let _ = fchmodat(
                dir,
                name.as_c_str(),
                Mode::from_bits_truncate(0o700),
                FchmodatFlags::FollowSymlink,
            );
            let sub = open_dir_at(dir, Path::new(OsStr::from_bytes(name.to_bytes())))
                .map_err(|e| Error::io(&shown, "remove tree", std::io::Error::from(e)))?;
            empty_dir(&sub, &shown)?;
            drop(sub);
            unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir)
                .map_err(|e| Error::io(&shown, "remove tree", std::io::Error::from(e)))?;
        } else {
            unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| Error::io(&shown, "remove tree", std::io::Error::from(e)))?;
        }
    }
    Ok(())
}
