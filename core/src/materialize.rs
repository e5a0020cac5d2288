//! Restoring a package version as a tree on disk (materialise).
//!
//! Each file is written under a temporary name in its final folder and renamed into place only
//! when every chunk has been read, decompressed and matched against its ID, so a file with wrong
//! content never appears under its name. Modes and mtimes are applied after the content;
//! directories get theirs last, deepest first, since writing inside a directory moves its mtime.

use crate::engine::Pending;
use crate::error::{Error, IoContext, Result};
use crate::library::Library;
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::progress::Progress;
use crate::stream::for_each_chunk;
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

/// Writes package version `m` from `lib` into `dest`, which must be absent or empty.
/// On failure nothing of the package is left in `dest`.
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
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
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
    // Files: one temporary file each, opened when its first chunk arrives (so open files stay
    // bounded by the read window), chunks written at their offsets as they verify.
    let mut jobs: Vec<Option<FileJob>> = Vec::new();
    let mut plan: Vec<((usize, u64), crate::id::ChunkId)> = Vec::new();
    for (i, e) in m.entries.iter().enumerate() {
        if let EntryKind::File { chunks, size } = &e.kind {
            let path = rel(dest, e);
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let tmp = path.with_file_name(format!(".{name}.freight-tmp"));
            let job_no = jobs.len();
            let mut off = 0u64;
            for c in chunks {
                plan.push(((job_no, off), c.id));
                off += c.len as u64;
            }
            report.files += 1;
            report.bytes += size;
            let mut job = FileJob {
                tmp,
                path,
                file: None,
                remaining: chunks.len(),
                entry: i,
            };
            if chunks.is_empty() {
                open_job(&mut job)?;
                finish_job(job, m)?;
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
                    (job_no, len, p): (usize, u64, Pending<()>)|
     -> Result<()> {
        let job = jobs[job_no].as_mut().expect("live job");
        p.wait().ctx(&job.tmp, "write")?;
        progress.add_bytes(len);
        job.remaining -= 1;
        if job.remaining == 0 {
            let job = jobs[job_no].take().expect("live job");
            finish_job(job, m)?;
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
            complete(&mut jobs, w)?;
        }
        Ok(())
    })?;
    while let Some(w) = writes.pop_front() {
        complete(&mut jobs, w)?;
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
    for e in m.entries.iter().rev() {
        if e.kind == EntryKind::Dir {
            let p = rel(dest, e);
            std::fs::set_permissions(&p, Permissions::from_mode(e.mode)).ctx(&p, "set mode")?;
            set_times(&p, e)?;
        }
    }
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

fn finish_job(job: FileJob, m: &Manifest) -> Result<()> {
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
    std::fs::rename(&job.tmp, &job.path).ctx(&job.path, "rename into place")
}
