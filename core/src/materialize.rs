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
use crate::id::ChunkId;
use crate::library::Library;
use crate::manifest::{Entry, EntryKind, EntrySource, Manifest, past_subtree};
use crate::progress::Progress;
use crate::stream::for_each_chunk;
use crate::writer::sync_dir;
use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat, renameat};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags, fchmodat, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const WINDOW: usize = 64;
const MAX_WRITES: usize = 32;
/// Most bytes of writes under way.
const MAX_WRITE_BYTES: u64 = 16 << 20;

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
    size: u64,
    mode: u32,
    mtime: (i64, u32),
}

impl FileJob {
    fn new(job_no: usize, e: Entry) -> FileJob {
        let (size, remaining) = match &e.kind {
            EntryKind::File { size, chunks } => (*size, chunks.len()),
            _ => (0, 0),
        };
        FileJob {
            tmp: format!("{job_no:x}"),
            path: e.path,
            file: None,
            remaining,
            size,
            mode: e.mode,
            mtime: (e.mtime_sec, e.mtime_nsec),
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
    materialize_from(lib, m, dest, progress)
}

/// [`materialize`] from any [`EntrySource`], such as a stored manifest streamed from its file:
/// the entries are read several times over (checks, folders, files, names, symlinks, folder
/// modes), one at a time, so memory does not grow with the package.
pub fn materialize_from(
    lib: &Library,
    m: &dyn EntrySource,
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
    // Every chunk present, the totals, and a staging name no top-level entry has.
    let (staging_name, files, bytes) = loop {
        let name = staging_candidate()?;
        let (mut files, mut bytes, mut clash) = (0u64, 0u64, false);
        for e in m.entries()? {
            let e = e?;
            clash |= e.path.split(|b| *b == b'/').next() == Some(name.as_bytes());
            if let EntryKind::File { chunks, size } = &e.kind {
                files += 1;
                bytes += size;
                if let Some(c) = chunks.iter().find(|c| !lib.has_chunk(&c.id)) {
                    return Err(Error::MissingChunk {
                        id: c.id.to_hex(),
                        package: m.package().to_string(),
                        version: m.version(),
                    });
                }
            }
        }
        if !clash {
            break (name, files, bytes);
        }
    };
    let root = Root {
        fd: open_dir_at(AT_FDCWD, dest)
            .map_err(|e| Error::io(dest, "open destination", std::io::Error::from(e)))?,
        path: dest,
    };
    progress.start("materialize", files, bytes);
    let res = write_tree(lib, m, &root, &staging_name, progress);
    if res.is_err() {
        // Leave no half-written package behind: the destination was empty when we started.
        if let Err(e) = empty_dir(&root.fd, dest) {
            tracing::warn!(error = %e, "could not clean up after a failed materialise");
        }
    }
    res
}

/// A random name for the private staging folder.
fn staging_candidate() -> Result<String> {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r)
        .map_err(|e| Error::io("<random>", "staging name", std::io::Error::other(e)))?;
    Ok(format!(".freight-staging-{}", u64::from_le_bytes(r)))
}

fn write_tree(
    lib: &Library,
    m: &dyn EntrySource,
    root: &Root,
    staging_name: &str,
    progress: &Progress,
) -> Result<MaterializeReport> {
    let mut report = MaterializeReport::default();
    mkdirat(&root.fd, staging_name, Mode::from_bits_truncate(0o700))
        .map_err(root.err(staging_name.as_bytes(), "create staging folder"))?;
    let staging = open_dir_at(&root.fd, Path::new(staging_name))
        .map_err(root.err(staging_name.as_bytes(), "open staging folder"))?;
    // Directories first, owner-writable until the end.
    for e in m.entries()? {
        let e = e?;
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
    let ctx = Ctx {
        root,
        staging: &staging,
        staging_name,
    };
    // Files: one staged file each, named by its number among the files (the same on every
    // pass), opened when its first chunk arrives and closed when its last one is written (so
    // open files stay bounded by the read window), chunks written at their offsets as they
    // verify. Empty files first, then the others as their chunks stream in.
    for (job_no, e) in files_of(m)?.enumerate() {
        let e = e?;
        if let EntryKind::File { chunks, .. } = &e.kind
            && chunks.is_empty()
        {
            let mut job = FileJob::new(job_no, e);
            ctx.open_job(&mut job)?;
            ctx.finish_job(job)?;
            report.files += 1;
            progress.add_file();
        }
    }
    // The jobs whose chunks are under way, registered by the plan's thread before it names
    // their chunks; a failure to read the manifest there ends the plan and is reported here.
    let live: Mutex<HashMap<usize, FileJob>> = Mutex::new(HashMap::new());
    let plan_failure: Mutex<Option<Error>> = Mutex::new(None);
    let plan = {
        let (live, plan_failure) = (&live, &plan_failure);
        let mut files = files_of(m)?.enumerate();
        let mut current: std::vec::IntoIter<((usize, u64), ChunkId)> = Vec::new().into_iter();
        std::iter::from_fn(move || {
            loop {
                if let Some(item) = current.next() {
                    return Some(item);
                }
                let (job_no, e) = files.next()?;
                let e = match e {
                    Ok(e) => e,
                    Err(err) => {
                        *plan_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                        return None;
                    }
                };
                let EntryKind::File { chunks, .. } = &e.kind else {
                    continue;
                };
                if chunks.is_empty() {
                    continue;
                }
                let mut off = 0u64;
                let items: Vec<_> = chunks
                    .iter()
                    .map(|c| {
                        let item = ((job_no, off), c.id);
                        off += u64::from(c.len);
                        item
                    })
                    .collect();
                live.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(job_no, FileJob::new(job_no, e));
                current = items.into_iter();
            }
        })
    };
    let engine = lib.engine().clone();
    let mut writes: VecDeque<(usize, u64, Pending<()>)> = VecDeque::new();
    let mut writing = 0u64;
    let complete = |report: &mut MaterializeReport,
                    (job_no, len, p): (usize, u64, Pending<()>)|
     -> Result<()> {
        // Waited for without the lock, which the plan's thread takes to register files.
        let written = p.wait();
        let mut jobs = live.lock().unwrap_or_else(|p| p.into_inner());
        let job = jobs.get_mut(&job_no).expect("live job");
        written.ctx(ctx.tmp_path(&job.tmp), "write")?;
        progress.add_bytes(len);
        job.remaining -= 1;
        if job.remaining == 0 {
            let job = jobs.remove(&job_no).expect("live job");
            drop(jobs);
            report.bytes += job.size;
            report.files += 1;
            ctx.finish_job(job)?;
            progress.add_file();
        }
        Ok(())
    };
    for_each_chunk(lib, plan, WINDOW, |(job_no, off), id, data| {
        let f = {
            let mut jobs = live.lock().unwrap_or_else(|p| p.into_inner());
            let job = jobs.get_mut(&job_no).expect("live job");
            let data_ok = match &data {
                Err(Error::CorruptChunk { .. }) => Err(Error::RefusedFile {
                    path: root.show(&job.path),
                    id: id.to_hex(),
                }),
                _ => Ok(()),
            };
            data_ok?;
            if job.file.is_none() {
                ctx.open_job(job)?;
            }
            job.file.clone().expect("open")
        };
        let data = data?;
        let len = data.len() as u64;
        writes.push_back((job_no, len, engine.write_at(&f, off, Bytes::from(data))));
        writing += len;
        // Bounded in number and in bytes: the buffers of writes under way are held until the
        // kernel completes them.
        while writes.len() > MAX_WRITES || (writing > MAX_WRITE_BYTES && writes.len() > 1) {
            let w = writes.pop_front().expect("write");
            writing -= w.1;
            complete(&mut report, w)?;
        }
        Ok(())
    })?;
    while let Some(w) = writes.pop_front() {
        complete(&mut report, w)?;
    }
    if let Some(e) = plan_failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(e);
    }
    // Every file's content is durable before any of them takes its name.
    sync_fs(&root.fd, root.path)?;
    for (job_no, e) in files_of(m)?.enumerate() {
        let e = e?;
        let tmp = format!("{job_no:x}");
        renameat(&staging, tmp.as_str(), &root.fd, OsStr::from_bytes(&e.path))
            .map_err(root.err(&e.path, "rename into place"))?;
    }
    // Symlinks after files, so no write can ever follow one.
    for e in m.entries()? {
        let e = e?;
        if let EntryKind::Symlink { target } = &e.kind {
            symlinkat(
                OsStr::from_bytes(target),
                &root.fd,
                OsStr::from_bytes(&e.path),
            )
            .map_err(root.err(&e.path, "create symlink"))?;
            set_times_at(root, &root.fd, &e.path, &e.path, &e)?;
            report.symlinks += 1;
        }
    }
    drop(staging);
    unlinkat(&root.fd, staging_name, UnlinkatFlags::RemoveDir)
        .map_err(root.err(staging_name.as_bytes(), "remove staging folder"))?;
    // Folders get their modes and times last, each once nothing more is written below it:
    // a folder is done when the entries sort past its own `folder/` run, and the folders
    // still open form a stack whose deeper ones are done first.
    let mut open: Vec<Entry> = Vec::new();
    let finish_dir = |e: &Entry| -> Result<()> {
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
        set_times_at(root, &root.fd, rel.as_bytes(), &e.path, e)
    };
    for e in m.entries()? {
        let e = e?;
        while let Some(top) = open.last() {
            if top.path.is_empty() || !past_subtree(&top.path, &e.path) {
                break;
            }
            finish_dir(&open.pop().expect("top"))?;
        }
        if e.kind == EntryKind::Dir {
            open.push(e);
        }
    }
    while let Some(d) = open.pop() {
        finish_dir(&d)?;
    }
    // The names (renames, symlinks, folders, modes) are durable before this returns.
    sync_fs(&root.fd, root.path)?;
    Ok(report)
}

/// The regular files of `m`, in order (their position is their staged name).
fn files_of<'a>(m: &'a dyn EntrySource) -> Result<impl Iterator<Item = Result<Entry>> + Send + 'a> {
    Ok(m.entries()?.filter(|e| {
        !matches!(
            e,
            Ok(Entry {
                kind: EntryKind::Dir | EntryKind::Symlink { .. },
                ..
            })
        )
    }))
}

/// What a file job needs of the tree being written.
struct Ctx<'a> {
    root: &'a Root<'a>,
    staging: &'a OwnedFd,
    staging_name: &'a str,
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

    /// Applies mode and mtime to a fully written staged file and closes it; it takes its name
    /// once everything is durable.
    fn finish_job(&self, job: FileJob) -> Result<()> {
        let e = Entry {
            path: Vec::new(),
            mode: job.mode,
            mtime_sec: job.mtime.0,
            mtime_nsec: job.mtime.1,
            kind: EntryKind::Dir,
        };
        let e = &e;
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
        Ok(())
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
