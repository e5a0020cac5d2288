//! Snapshot of a source folder into the library (ingest).
//!
//! Pipeline, all inside one `std::thread::scope`:
//! ```text
//! reader: open files, read blocks through the engine (read-ahead), cut chunks (FastCDC)
//!   --work--> hashers (one per core): BLAKE3, skip known chunks, zstd the new ones
//!   --results--> this thread: append new chunks to packs (batched engine writes)
//! ```
//! Then the writer commits (data durable, then indexed) and the manifest is stored last.
//! Any error drops the writer, which rolls the packs back: the library is left unchanged.
//!
//! # What is hashed is what was opened
//! Files are opened through the walk's [`Opener`](crate::walk::Opener): relative to their
//! folder's descriptor, no symlink followed, and checked to be the regular file the walk saw
//! (see [`walk`](crate::walk)). A file is then read through that descriptor only, and its
//! `fstat` before and after the read must agree (size, mtime, ctime) with each other and with
//! the bytes read (one byte past the size is asked for, so growth shows). A file whose ctime
//! is less than [`RECENT`] before its read began (or later) is read again too, once that time
//! has passed: a write stamps the file when it starts, not when its last byte lands, and a
//! write in the same clock tick as the previous one leaves the times as they were, so a recent
//! write may be under way unseen. A file that changed is read again, up to [`READ_ATTEMPTS`]
//! times, then the snapshot stops with [`Error::SourceChanged`]; a version never holds a torn
//! file. What stat cannot show stays possible: a single `write` still copying more than
//! [`RECENT`] after it began, or, on file systems with coarse timestamps (FAT, ext3: one or two
//! seconds), a same-size rewrite within that granularity.

use crate::chunker::StreamChunker;
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackageId};
use crate::library::Library;
use crate::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use crate::pack::FLAG_ZSTD;
use crate::progress::Progress;
use crate::walk::{SourceKind, SourceTree, walk};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

const READ_BLOCK: usize = 4 << 20;
const READ_AHEAD_BYTES: usize = 16 << 20;
/// Files open at once in the read-ahead window. The byte window alone would keep one
/// descriptor per small file: 16 MiB of 100-byte files is 160,000 descriptors, far past a
/// process's `RLIMIT_NOFILE` (1,024 by default), and the snapshot of a tree of small files
/// failed with "Too many open files". 64 reads in flight already keep the device busy.
const READ_AHEAD_FILES: usize = 64;

/// What to ingest as.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Package ID.
    pub package: PackageId,
    /// Version; `None` = one past the newest stored.
    pub version: Option<u32>,
    /// Quick check against this version, as rsync and git do: a file whose path, size and
    /// modification time equal those in this version is taken from it without being read (if
    /// all its chunks are in the library). When this library's last snapshot of the package
    /// made (or confirmed) this version, its [quick-check record](QuickRecord) also holds
    /// each file's inode and ctime, and those must match too: a file replaced by another one
    /// (a new inode) or changed with its size and mtime restored (ctime, which cannot be set
    /// back) is read again. The caller names the version it vouches for (the site server: the
    /// newest version it made itself), so that a version someone else put in the library is
    /// never trusted. Without a record (a version received from elsewhere), a file changed in
    /// place with its size and mtime restored is missed; `None` reads everything. A version
    /// the library does not hold is not used.
    pub quick_check: Option<u32>,
    /// When the snapshot equals this version (the same entries: only the version number would
    /// differ), no version is stored and the report says so (`unchanged_from`).
    pub skip_if_unchanged_from: Option<u32>,
}

/// What an ingest did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IngestReport {
    /// Package ID.
    pub package: String,
    /// Version stored.
    pub version: u32,
    /// Package hash (hex).
    pub hash: String,
    /// Regular files.
    pub files: u64,
    /// Entries of all kinds.
    pub entries: u64,
    /// Source bytes.
    pub bytes: u64,
    /// Chunks in the package (with repeats).
    pub chunks: u64,
    /// Chunks that were new to the library.
    pub new_chunks: u64,
    /// Files taken from the previous version unread (quick check).
    pub unchanged_files: u64,
    /// Stored (compressed) bytes added to the library.
    pub stored_bytes: u64,
    /// False when this exact version was already stored, or when nothing changed.
    pub created: bool,
    /// Files read more than once because they changed while they were read.
    pub reread_files: u64,
    /// Bytes read from source files, every read attempt counted (0 when every file was taken
    /// from the quick check's base unread).
    pub read_bytes: u64,
    /// Set when the source equals the version named by
    /// [`IngestOptions::skip_if_unchanged_from`]: no version was stored, and `version` and
    /// `hash` are that version's.
    pub unchanged_from: Option<u32>,
}

/// How many times a file that changes while it is read is read before the snapshot stops.
pub const READ_ATTEMPTS: u8 = 3;

/// A file changed less than this before its read began is read again once this has passed:
/// a write that started then may still be copying (see the module's documentation). Only the
/// files written last before a snapshot pay for it, and their waits overlap.
pub const RECENT: std::time::Duration = std::time::Duration::from_millis(50);

struct Work {
    file: usize,
    attempt: u8,
    seq: usize,
    data: Bytes,
}

struct Done {
    file: usize,
    attempt: u8,
    seq: usize,
    id: ChunkId,
    ulen: u32,
    /// Stored form when the chunk is new: (flags, bytes).
    stored: Option<(u8, Vec<u8>)>,
}

/// One file as the reader took it: its state when opened (which it still had after the read)
/// and the read attempt whose chunks make it.
#[derive(Clone, Copy, Debug, Default)]
struct ReadFile {
    size: u64,
    mode: u32,
    mtime_sec: i64,
    mtime_nsec: u32,
    ctime: (i64, u32),
    attempt: u8,
}

/// What the reader returns: each file as read, and how many were read more than once.
struct Read {
    files: Vec<ReadFile>,
    reread: u64,
    /// Bytes read, every attempt.
    bytes: u64,
}

/// Snapshots `src` into `lib` as a new package version.
pub fn ingest(
    lib: &mut Library,
    src: &Path,
    opts: &IngestOptions,
    progress: &Progress,
) -> Result<IngestReport> {
    lib.require_write();
    let tree = walk(src)?;
    let entries = tree.entries();
    let version = match opts.version {
        Some(v) => v,
        None => lib.latest(&opts.package)?.map_or(1, |v| v + 1),
    };
    let files: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.kind, SourceKind::File { .. }))
        .map(|(i, _)| i)
        .collect();
    // Per file: its chunk list taken from the quick check's base version, if any.
    let reused: Vec<Option<Vec<ChunkRef>>> = {
        let base = match opts.quick_check {
            Some(v) => stored_version(lib, &opts.package, v, "quick check")?,
            None => None,
        };
        let record = base.as_ref().and_then(|b| QuickRecord::load(lib, b));
        let unchanged = quick_check(lib, base.as_ref(), record.as_ref());
        files
            .iter()
            .map(|&i| {
                let e = &entries[i];
                let SourceKind::File { size } = e.kind else {
                    return None;
                };
                unchanged
                    .get(e.rel.as_slice())
                    .filter(|q| {
                        q.size == size
                            && q.mtime == (e.mtime_sec, e.mtime_nsec)
                            && q.seen.is_none_or(|seen| seen == (e.id.ino, e.ctime))
                    })
                    .map(|q| q.chunks.to_vec())
            })
            .collect()
    };
    // File positions to read, and the entries they are.
    let to_read: Vec<usize> = (0..files.len()).filter(|&f| reused[f].is_none()).collect();
    let read_entries: Vec<usize> = to_read.iter().map(|&f| files[f]).collect();
    let total: u64 = read_entries
        .iter()
        .map(|&i| match entries[i].kind {
            SourceKind::File { size } => size,
            _ => 0,
        })
        .sum();
    progress.start("ingest", read_entries.len() as u64, total);

    let mut writer = lib.writer(true);
    // Per file position: the read attempt its chunks belong to, and the chunks.
    let mut chunk_lists: Vec<(u8, Vec<Option<ChunkRef>>)> = reused
        .iter()
        .map(|r| {
            let list = r
                .as_ref()
                .map_or_else(Vec::new, |c| c.iter().copied().map(Some).collect());
            (0, list)
        })
        .collect();
    let mut new_chunks = 0u64;
    let lib_ref: &Library = lib;
    let claimed: Mutex<HashSet<ChunkId>> = Mutex::new(HashSet::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let level = lib_ref.config().compression_level;
    let params = lib_ref.config().chunk;

    let read = std::thread::scope(|s| -> Result<Read> {
        let (work_tx, work_rx) = bounded::<Work>(workers * 2);
        let (done_tx, done_rx) = bounded::<Done>(workers * 2);
        let reader = {
            let tree = &tree;
            let files = &read_entries;
            let engine = lib_ref.engine().clone();
            s.spawn(move || read_and_chunk(tree, files, &engine, params, work_tx, progress))
        };
        for _ in 0..workers {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let claimed = &claimed;
            s.spawn(move || hash_and_compress(lib_ref, claimed, level, rx, tx));
        }
        drop(work_rx);
        drop(done_tx);
        let mut failure = None;
        for d in done_rx.iter() {
            // A new chunk is written even when its read attempt was given up: another attempt
            // finds it claimed and relies on it being stored.
            if let Some((flags, bytes)) = &d.stored {
                if let Err(e) = writer.append(d.id, d.ulen, *flags, bytes) {
                    failure = Some(e);
                    break;
                }
                new_chunks += 1;
            }
            let (attempt, list) = &mut chunk_lists[to_read[d.file]];
            if d.attempt < *attempt {
                continue;
            }
            if d.attempt > *attempt {
                *attempt = d.attempt;
                list.clear();
            }
            if list.len() <= d.seq {
                list.resize(d.seq + 1, None);
            }
            list[d.seq] = Some(ChunkRef {
                id: d.id,
                len: d.ulen,
            });
        }
        // Dropping the receiver makes the workers, then the reader, stop early on failure.
        drop(done_rx);
        let read = reader.join().expect("reader thread panicked");
        match failure {
            Some(e) => Err(e),
            None => read,
        }
    })?;

    let mut m = Manifest {
        package: opts.package.clone(),
        version,
        entries: Vec::with_capacity(entries.len()),
    };
    // Per file position: its state as read, if it was read.
    let mut as_read: Vec<Option<ReadFile>> = vec![None; files.len()];
    for (k, &f) in to_read.iter().enumerate() {
        as_read[f] = Some(read.files[k]);
    }
    let mut file_no = 0;
    let mut chunks = 0u64;
    let mut bytes = 0u64;
    // Per file, in manifest order: the inode and ctime it had when read (or walked, if taken
    // unread), for the next quick check.
    let mut seen: Vec<(u64, (i64, u32))> = Vec::with_capacity(files.len());
    for e in entries {
        let (mut mode, mut mtime_sec, mut mtime_nsec) = (e.mode, e.mtime_sec, e.mtime_nsec);
        let kind = match &e.kind {
            SourceKind::Dir => EntryKind::Dir,
            SourceKind::Symlink { target } => EntryKind::Symlink {
                target: target.clone(),
            },
            &SourceKind::File { size } => {
                let (attempt, list) = std::mem::take(&mut chunk_lists[file_no]);
                let mut size = size;
                // A file read is recorded as it was read; its chunks are those of the attempt
                // that was kept (none when that attempt found it empty).
                let list = match as_read[file_no] {
                    Some(r) => {
                        (size, mode, mtime_sec, mtime_nsec) =
                            (r.size, r.mode, r.mtime_sec, r.mtime_nsec);
                        seen.push((e.id.ino, r.ctime));
                        if attempt == r.attempt {
                            list
                        } else {
                            Vec::new()
                        }
                    }
                    None => {
                        seen.push((e.id.ino, e.ctime));
                        list
                    }
                };
                let list: Vec<ChunkRef> = list
                    .into_iter()
                    .map(|c| c.expect("every chunk of a file is hashed"))
                    .collect();
                debug_assert_eq!(list.iter().map(|c| u64::from(c.len)).sum::<u64>(), size);
                chunks += list.len() as u64;
                bytes += size;
                file_no += 1;
                EntryKind::File { size, chunks: list }
            }
        };
        m.entries.push(Entry {
            path: e.rel.clone(),
            mode,
            mtime_sec,
            mtime_nsec,
            kind,
        });
    }
    drop(tree);
    let stored_bytes = writer.bytes_written();
    let committed = writer.commit()?;
    lib.apply(committed);
    let mut report = IngestReport {
        package: m.package.to_string(),
        version,
        hash: m.hash().to_hex().to_string(),
        files: files.len() as u64,
        entries: m.entries.len() as u64,
        bytes,
        chunks,
        new_chunks,
        unchanged_files: (files.len() - to_read.len()) as u64,
        stored_bytes,
        created: false,
        reread_files: read.reread,
        read_bytes: read.bytes,
        unchanged_from: None,
    };
    // Chunks stored above are kept even when no version is: they are the base's own (repairing
    // it if it lacked any) or garbage for gc.
    if let Some(b) = opts.skip_if_unchanged_from
        && let Some(base) = stored_version(lib, &opts.package, b, "unchanged check")?
        && base.entries == m.entries
    {
        report.version = b;
        report.hash = base.hash().to_hex().to_string();
        report.unchanged_from = Some(b);
        QuickRecord::save(lib, &base, &seen);
        return Ok(report);
    }
    report.created = lib.store_manifest(&m)?;
    QuickRecord::save(lib, &m, &seen);
    Ok(report)
}

/// Version `version` of `package`, or `None` (logged) when the library does not hold it.
fn stored_version(
    lib: &Library,
    package: &PackageId,
    version: u32,
    purpose: &str,
) -> Result<Option<Manifest>> {
    match lib.manifest(package, version) {
        Ok(m) => Ok(Some(m)),
        Err(Error::NoSuchVersion { .. }) => {
            tracing::warn!(
                "package {package} version {version}: not in the library; the {purpose} reads everything"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A file of the quick check's base as it may be taken unread.
struct Unchanged<'m> {
    size: u64,
    mtime: (i64, u32),
    /// Inode and ctime when the base's snapshot saw it, if recorded.
    seen: Option<(u64, (i64, u32))>,
    chunks: &'m [ChunkRef],
}

/// The previous version's files whose chunks are all in the library, by path, with the inode
/// and ctime `record` holds for them.
fn quick_check<'m>(
    lib: &Library,
    previous: Option<&'m Manifest>,
    record: Option<&QuickRecord>,
) -> std::collections::HashMap<&'m [u8], Unchanged<'m>> {
    previous
        .into_iter()
        .flat_map(|m| {
            m.entries
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        })
        .enumerate()
        .filter_map(|(k, e)| match &e.kind {
            EntryKind::File { size, chunks } if chunks.iter().all(|c| lib.has_chunk(&c.id)) => {
                Some((
                    e.path.as_slice(),
                    Unchanged {
                        size: *size,
                        mtime: (e.mtime_sec, e.mtime_nsec),
                        seen: record.map(|r| r.files[k]),
                        chunks: chunks.as_slice(),
                    },
                ))
            }
            _ => None,
        })
        .collect()
}

/// What a snapshot saw of each file of the version it made or confirmed, beyond what the
/// manifest holds: its inode and ctime. Kept per package in `LIB/quick-check/<PKG>.fqc`
/// (replaced atomically by each snapshot of the package; a library-local cache, never sent):
/// ```text
/// "FRQCK\0\0\x01" | version u32 | manifest hash [32] | files u64 |
/// files × (inode u64 | ctime seconds i64 | ctime nanoseconds u32) | BLAKE3(all before)[..8]
/// ```
/// The files are the manifest's regular files in its order. A record is used only for the
/// version and manifest hash it names, and ignored when damaged.
pub struct QuickRecord {
    files: Vec<(u64, (i64, u32))>,
}

const QUICK_MAGIC: &[u8; 8] = b"FRQCK\0\0\x01";

impl QuickRecord {
    fn path(lib: &Library, package: &PackageId) -> std::path::PathBuf {
        lib.dir()
            .join("quick-check")
            .join(format!("{}.fqc", package.as_str()))
    }

    fn encode(m: &Manifest, files: &[(u64, (i64, u32))]) -> Vec<u8> {
        let mut b = Vec::with_capacity(60 + files.len() * 20);
        // 52 bytes of header, the files, 8 of check.
        b.extend_from_slice(QUICK_MAGIC);
        b.extend_from_slice(&m.version.to_le_bytes());
        b.extend_from_slice(m.hash().as_bytes());
        b.extend_from_slice(&(files.len() as u64).to_le_bytes());
        for (ino, (sec, nsec)) in files {
            b.extend_from_slice(&ino.to_le_bytes());
            b.extend_from_slice(&sec.to_le_bytes());
            b.extend_from_slice(&nsec.to_le_bytes());
        }
        let c = blake3::hash(&b);
        b.extend_from_slice(&c.as_bytes()[..8]);
        b
    }

    /// The record of `base`, if the last snapshot of its package made or confirmed it.
    fn load(lib: &Library, base: &Manifest) -> Option<QuickRecord> {
        let bytes = std::fs::read(Self::path(lib, &base.package)).ok()?;
        let n = base
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count();
        if bytes.len() != 52 + n * 20 + 8 {
            return None;
        }
        let (body, check) = bytes.split_at(bytes.len() - 8);
        let want = Self::encode_header(base, n);
        if blake3::hash(body).as_bytes()[..8] != *check || body[..want.len()] != want[..] {
            return None;
        }
        let files = body[52..]
            .chunks(20)
            .map(|f| {
                let ino = u64::from_le_bytes(f[..8].try_into().expect("8 bytes"));
                let sec = i64::from_le_bytes(f[8..16].try_into().expect("8 bytes"));
                let nsec = u32::from_le_bytes(f[16..20].try_into().expect("4 bytes"));
                (ino, (sec, nsec))
            })
            .collect();
        Some(QuickRecord { files })
    }

    fn encode_header(m: &Manifest, files: usize) -> Vec<u8> {
        let mut b = Self::encode(m, &[]);
        b.truncate(44);
        b.extend_from_slice(&(files as u64).to_le_bytes());
        b
    }

    /// Records what this snapshot saw of `m`'s files. Best effort: without a record the next
    /// quick check compares size and mtime only.
    fn save(lib: &Library, m: &Manifest, files: &[(u64, (i64, u32))]) {
        let path = Self::path(lib, &m.package);
        let res = std::fs::create_dir_all(path.parent().expect("quick-check folder"))
            .map_err(|e| Error::io(&path, "create quick-check folder", e))
            .and_then(|()| crate::library::write_atomic(&path, &Self::encode(m, files)));
        if let Err(e) = res {
            tracing::warn!(error = %e, "no quick-check record; the next quick check compares size and mtime only");
        }
    }
}

/// A time as (seconds, nanoseconds), ordered.
type Time = (i64, i64);

/// The kernel's coarse wall clock: the one it stamps file times with (at its tick's
/// granularity), so a file time can be compared with it.
fn coarse_now() -> Time {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE) {
        Ok(t) => (t.tv_sec(), t.tv_nsec()),
        Err(_) => {
            let d = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            (d.as_secs() as i64, i64::from(d.subsec_nanos()))
        }
    }
}

/// What `fstat` says of a file being read, as far as telling a change goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    size: u64,
    mode: u32,
    mtime: Time,
    ctime: Time,
}

impl Stat {
    fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            size: m.size(),
            mode: m.mode() & 0o7777,
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Why a read of a file cannot be kept, if it cannot: `before` and `after` are its `fstat`
/// around the read, `read` the bytes read (up to one past `before.size`), `started` and
/// `ended` the coarse clock before the first and after the last `fstat`.
fn changed_during_read(
    before: &Stat,
    after: &Stat,
    read: u64,
    started: Time,
    ended: Time,
) -> Option<String> {
    if read > before.size {
        return Some(format!("grew from {} bytes while read", before.size));
    }
    if read < before.size || after.size < before.size {
        return Some(format!(
            "shrank from {} to {} bytes while read",
            before.size,
            read.min(after.size)
        ));
    }
    if after.size != before.size {
        return Some(format!(
            "grew from {} to {} bytes while read",
            before.size, after.size
        ));
    }
    if after.mtime != before.mtime || after.ctime != before.ctime {
        return Some("written while read".into());
    }
    // A write stamps mtime and ctime when it starts, and one in the same clock tick as the
    // write before it leaves them as they were: a file changed shortly before or during its
    // read may have changed unseen. (The upper bound, with room for file times a little ahead
    // of the coarse clock, keeps a ctime in the future after the clock was set back from
    // making every read suspect.)
    if after.ctime >= minus(started, RECENT) && after.ctime <= (ended.0 + 1, ended.1) {
        return Some("written just before or while read".into());
    }
    None
}

/// Waits (briefly) until the coarse clock is [`RECENT`] past `t`, so that a file read again is
/// not suspect only because its last change was recent.
fn wait_past(t: Time) {
    let until = plus(t, RECENT);
    for _ in 0..1000 {
        if coarse_now() > until {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn minus(t: Time, d: std::time::Duration) -> Time {
    let ns = t.1 - i64::from(d.subsec_nanos());
    let s = t.0 - d.as_secs() as i64;
    if ns < 0 {
        (s - 1, ns + 1_000_000_000)
    } else {
        (s, ns)
    }
}

fn plus(t: Time, d: std::time::Duration) -> Time {
    let ns = t.1 + i64::from(d.subsec_nanos());
    let s = t.0 + d.as_secs() as i64;
    if ns >= 1_000_000_000 {
        (s + 1, ns - 1_000_000_000)
    } else {
        (s, ns)
    }
}

/// Reads every file through the engine with read-ahead and cuts it into chunks; a file that
/// changed while read is read again (see the module's documentation).
fn read_and_chunk(
    tree: &SourceTree,
    files: &[usize],
    engine: &crate::engine::Engine,
    params: crate::chunker::ChunkParams,
    work: Sender<Work>,
    progress: &Progress,
) -> Result<Read> {
    /// A file open for reading: the attempt, its state when opened, when that was.
    struct Opened {
        file: usize,
        attempt: u8,
        f: Arc<File>,
        before: Stat,
        started: Time,
    }
    /// One read issued ahead of consumption; the file's last read carries the file, to be
    /// checked once all its bytes are in.
    struct Inflight {
        file: usize,
        attempt: u8,
        len: usize,
        pending: crate::engine::Pending<Vec<u8>>,
        last: Option<Opened>,
    }
    let entries = tree.entries();
    let path = |file: usize| tree.path_of(&entries[files[file]].rel);
    let mut opener = tree.opener()?;
    let mut out = Read {
        files: vec![ReadFile::default(); files.len()],
        reread: 0,
        bytes: 0,
    };
    let mut queue: VecDeque<Inflight> = VecDeque::new();
    let mut queued_bytes = 0usize;
    // Files with a read in the queue (each holds its descriptor until its last read is in).
    let mut open_files = 0usize;
    let mut next_file = 0usize;
    // Files to read again, read before the next new one.
    let mut again: VecDeque<(usize, u8)> = VecDeque::new();
    // The file whose reads are being issued, and the offset of the next one.
    let mut planning: Option<(Opened, u64)> = None;
    let mut chunker = StreamChunker::new(params);
    let mut seq = 0usize;
    let mut got = 0u64;
    let mut current = None;
    loop {
        // Top up the read-ahead window.
        while queued_bytes < READ_AHEAD_BYTES {
            if planning.is_none() {
                if open_files >= READ_AHEAD_FILES {
                    break;
                }
                let (file, attempt) = match again.pop_front() {
                    Some(next) => next,
                    None if next_file < files.len() => {
                        next_file += 1;
                        (next_file - 1, 0)
                    }
                    None => break,
                };
                let started = coarse_now();
                let (f, meta) = opener.open_file(&entries[files[file]])?;
                let opened = Opened {
                    file,
                    attempt,
                    f: Arc::new(f),
                    before: Stat::of(&meta),
                    started,
                };
                planning = Some((opened, 0));
                open_files += 1;
            }
            let (opened, off) = planning.as_mut().expect("planned above");
            let size = opened.before.size;
            let len = (size - *off).min(READ_BLOCK as u64) as usize;
            let last = len < READ_BLOCK || *off + len as u64 == size;
            // The last read asks for one byte past the size, so that growth is noticed.
            let len = if last { len + 1 } else { len };
            let pending = engine.read_at(&opened.f, *off, len);
            let (file, attempt) = (opened.file, opened.attempt);
            *off += len as u64;
            queued_bytes += len;
            let last = if last {
                planning.take().map(|(o, _)| o)
            } else {
                None
            };
            queue.push_back(Inflight {
                file,
                attempt,
                len,
                pending,
                last,
            });
        }
        let Some(r) = queue.pop_front() else {
            break;
        };
        let data = r.pending.wait().map_err(|source| Error::Unreadable {
            path: path(r.file),
            source,
        })?;
        queued_bytes -= r.len;
        if current != Some((r.file, r.attempt)) {
            current = Some((r.file, r.attempt));
            chunker = StreamChunker::new(params);
            seq = 0;
            got = 0;
        }
        got += data.len() as u64;
        out.bytes += data.len() as u64;
        progress.add_bytes(data.len() as u64);
        let mut stop = false;
        let (file, attempt) = (r.file, r.attempt);
        let mut emit = |data: Bytes| {
            if !stop
                && work
                    .send(Work {
                        file,
                        attempt,
                        seq,
                        data,
                    })
                    .is_err()
            {
                stop = true;
            }
            seq += 1;
        };
        chunker.push(&data, &mut emit);
        if let Some(o) = r.last {
            open_files -= 1;
            let meta = o.f.metadata().map_err(|source| Error::Unreadable {
                path: path(r.file),
                source,
            })?;
            let after = Stat::of(&meta);
            let ended = coarse_now();
            match changed_during_read(&o.before, &after, got, o.started, ended) {
                None => {
                    chunker.finish(&mut emit);
                    out.files[r.file] = ReadFile {
                        size: o.before.size,
                        mode: o.before.mode,
                        mtime_sec: o.before.mtime.0,
                        mtime_nsec: o.before.mtime.1 as u32,
                        ctime: (o.before.ctime.0, o.before.ctime.1 as u32),
                        attempt: r.attempt,
                    };
                    out.reread += u64::from(r.attempt > 0);
                    progress.add_file();
                }
                Some(how) if r.attempt + 1 < READ_ATTEMPTS => {
                    tracing::debug!("{}: {how}; reading it again", path(r.file).display());
                    wait_past(after.ctime);
                    again.push_back((r.file, r.attempt + 1));
                }
                Some(how) => {
                    return Err(Error::SourceChanged {
                        path: path(r.file),
                        how: format!("{how}, on each of {READ_ATTEMPTS} reads"),
                    });
                }
            }
            current = None;
        }
        if stop {
            // The consumer failed and reports why.
            return Ok(out);
        }
    }
    Ok(out)
}

fn hash_and_compress(
    lib: &Library,
    claimed: &Mutex<HashSet<ChunkId>>,
    level: i32,
    rx: Receiver<Work>,
    tx: Sender<Done>,
) {
    let mut comp = zstd::bulk::Compressor::new(level).ok();
    for w in rx.iter() {
        let id = ChunkId::of(&w.data);
        let is_new =
            !lib.has_chunk(&id) && claimed.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        let stored = is_new.then(|| compress(comp.as_mut(), &w.data));
        let d = Done {
            file: w.file,
            attempt: w.attempt,
            seq: w.seq,
            id,
            ulen: w.data.len() as u32,
            stored,
        };
        if tx.send(d).is_err() {
            return;
        }
    }
}

/// zstd-compresses a chunk, or keeps it raw when that does not save at least 1/32 of it.
fn compress(comp: Option<&mut zstd::bulk::Compressor<'static>>, data: &[u8]) -> (u8, Vec<u8>) {
    if let Some(c) = comp {
        let limit = data.len() - data.len() / 32;
        let mut out = Vec::with_capacity(limit);
        // A destination smaller than the input makes zstd give up as soon as the output would
        // not pay for itself.
        if c.compress_to_buffer(data, &mut out).is_ok() && out.len() < limit {
            return (FLAG_ZSTD, out);
        }
    }
    (0, data.to_vec())
}
