//! Snapshot of a source folder into the library (ingest).
//!
//! Pipeline, all inside one `std::thread::scope`:
//! ```text
//! reader: open files, read blocks through the engine (read-ahead), cut chunks (FastCDC)
//!   --work--> hashers (one per core): BLAKE3, skip known chunks, zstd the new ones
//!   --results--> this thread: append new chunks to packs (batched engine writes)
//! ```
//! The writer commits (data durable, then indexed) every [`COMMIT_EVERY`] new chunks and at
//! the end, and the manifest is stored last. Any error drops the writer, which rolls back the
//! step under way: an ingest of fewer new chunks leaves the library unchanged; a larger one
//! leaves the chunks of its committed steps, named by no manifest, which `gc` reclaims (as
//! after a crash). Nothing else can meanwhile take them for its own or drop them: the
//! ingest holds the library for writing (its lock in a process, the store thread's exclusive
//! access in the daemon), so no gc runs and no transfer stores chunks beside it.
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
use crate::library::{FileAt, StoredManifest};
use crate::manifest::{self, ChunkRef, Entry, EntryKind};
use crate::pack::FLAG_ZSTD;
use crate::progress::Progress;
use crate::spill::{SORT_MEMORY, Sorter};
use crate::walk::{SourceEntry, SourceKind, Walk};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded, never, unbounded};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read as _, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

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
    /// made (or confirmed) this version, its quick-check record (`LIB/quick-check/<PKG>.fqc`) also holds
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

/// Inode and ctime of a file as a snapshot saw it (the quick-check record's fields).
type Seen = (u64, (i64, u32));

/// What the reader thread tells the manifest's writer (this thread), in manifest order for
/// `Entry` and `Read`: the walk's entries as they come, each one either ready or a file being
/// read; `Finished` when a file's last read attempt is in.
enum Order {
    /// An entry known in full: a folder, a symlink, or a file taken from the quick check's
    /// base unread (with what the walk saw of it).
    Entry(Entry, Option<Seen>),
    /// A file being read, by its read number: its entry is made once its chunks are hashed.
    Read { file: usize, rel: Vec<u8>, ino: u64 },
    /// The kept read of file `file`: its state, and how many chunks it has.
    Finished {
        file: usize,
        read: ReadFile,
        chunks: usize,
    },
}

/// What the reader returns: how many files were read more than once, and the bytes read.
#[derive(Default)]
struct Read {
    reread: u64,
    /// Bytes read, every attempt.
    bytes: u64,
}

/// Entries the reader may have handed over and the writer not yet written: the queue between
/// them stays bounded when a slow file holds up the entries behind it.
const MAX_PENDING: usize = 16 << 10;

/// A file being read, as the writer collects it.
#[derive(Default)]
struct Collecting {
    attempt: u8,
    chunks: Vec<Option<ChunkRef>>,
    finished: Option<(ReadFile, usize)>,
}

impl Collecting {
    /// Its chunk list once every chunk of its kept read is hashed.
    fn complete(&mut self) -> Option<(ReadFile, Vec<ChunkRef>)> {
        let (read, n) = self.finished?;
        if n == 0 {
            // Empty when read: whatever an earlier attempt had is not the file.
            return Some((read, Vec::new()));
        }
        if self.attempt != read.attempt || self.chunks.len() != n {
            return None;
        }
        if self.chunks.iter().any(Option::is_none) {
            return None;
        }
        Some((
            read,
            std::mem::take(&mut self.chunks)
                .into_iter()
                .flatten()
                .collect(),
        ))
    }
}

/// New chunks an ingest appends between two commits of its pack writer. Each uncommitted
/// chunk holds its index entry (56 bytes) in the writer and its ID in the hashers' claimed
/// set until its step commits, so this, not the package's size, bounds them: a first
/// snapshot of a million small files held ~290 MiB when it committed once at the end. A step
/// costs a few fsyncs, so steps of this size cost nothing next to reading their files; an
/// ingest of fewer new chunks stays one all-or-nothing transaction.
pub const COMMIT_EVERY: usize = 1 << 16;

/// Test hook: overrides [`COMMIT_EVERY`] (0 restores it), so that tests can make small
/// ingests commit in many steps.
#[cfg(any(test, feature = "fault-injection"))]
pub fn set_commit_every(n: usize) {
    COMMIT_EVERY_OVERRIDE.store(n, Ordering::Relaxed);
}

#[cfg(any(test, feature = "fault-injection"))]
static COMMIT_EVERY_OVERRIDE: AtomicUsize = AtomicUsize::new(0);

/// Test hook: overrides [`ABSENT_PASS_MIN`] (0 restores it), so that tests can make a small
/// base's quick check find the chunks the library lacks in one pass.
#[cfg(any(test, feature = "fault-injection"))]
pub fn set_absent_pass_min(n: u64) {
    ABSENT_PASS_MIN_OVERRIDE.store(n as usize, Ordering::Relaxed);
}

#[cfg(any(test, feature = "fault-injection"))]
static ABSENT_PASS_MIN_OVERRIDE: AtomicUsize = AtomicUsize::new(0);

fn absent_pass_min() -> u64 {
    #[cfg(any(test, feature = "fault-injection"))]
    {
        let n = ABSENT_PASS_MIN_OVERRIDE.load(Ordering::Relaxed);
        if n > 0 {
            return n as u64;
        }
    }
    ABSENT_PASS_MIN
}

fn commit_every() -> usize {
    #[cfg(any(test, feature = "fault-injection"))]
    {
        let n = COMMIT_EVERY_OVERRIDE.load(Ordering::Relaxed);
        if n > 0 {
            return n;
        }
    }
    COMMIT_EVERY
}

/// The library as the snapshot's threads share it, and the chunks claimed for storing.
///
/// A new chunk is claimed by the hasher that meets it first, which alone compresses it for
/// the writer: every other occurrence (the same chunk in another file, or in the same file)
/// finds it claimed, or, once the writer's step holding it committed, in the library. So the
/// claimed set holds only chunks not yet committed. The check and the claim happen under the
/// library's read lock, the commit of a step (the library takes its entries, the claimed set
/// forgets them) under its write lock: a chunk is never in neither, so it is stored once.
struct Shared<'a> {
    lib: RwLock<&'a mut Library>,
    claimed: Mutex<HashSet<ChunkId>>,
}

impl<'a> Shared<'a> {
    fn read(&self) -> RwLockReadGuard<'_, &'a mut Library> {
        self.lib.read().unwrap_or_else(|e| e.into_inner())
    }

    /// True when `id` is new to the library and this call claimed it: the caller stores it.
    fn claim(&self, id: &ChunkId) -> bool {
        let lib = self.read();
        !lib.has_chunk(id)
            && self
                .claimed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(*id)
    }

    /// Commits what `writer` appended so far and makes it visible: its chunks are found in
    /// the library from now on, and no longer held as claimed.
    fn commit_step(&self, writer: &mut crate::writer::Writer) -> Result<()> {
        // The fsyncs run without the lock: hashers keep finding these chunks claimed.
        let committed = writer.checkpoint()?;
        let mut lib = self.lib.write().unwrap_or_else(|e| e.into_inner());
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        for (id, _) in &committed.entries {
            claimed.remove(id);
        }
        drop(claimed);
        lib.apply(committed);
        Ok(())
    }
}

/// Snapshots `src` into `lib` as a new package version.
///
/// The walk, the quick check against the base version and the writing of the manifest all
/// stream in manifest order: memory stays bounded by the widest folder and the read-ahead,
/// not by the number of files.
pub fn ingest(
    lib: &mut Library,
    src: &Path,
    opts: &IngestOptions,
    progress: &Progress,
) -> Result<IngestReport> {
    lib.require_write();
    let walk = Walk::new(src)?;
    let version = match opts.version {
        Some(v) => v,
        None => lib.latest(&opts.package)?.map_or(1, |v| v + 1),
    };
    let base = match opts.quick_check {
        Some(v) => stored_version(lib, &opts.package, v, "quick check")?,
        None => None,
    };
    let quick = match &base {
        Some(b) => Some(QuickBase::open(lib, b)?),
        None => None,
    };
    progress.start("ingest", 0, 0);

    let mut writer = lib.writer(true);
    let mut new_chunks = 0u64;
    let mut out = lib.manifest_writer(&opts.package, version)?;
    let mut record = RecordWriter::create(lib, &opts.package);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let level = lib.config().compression_level;
    let params = lib.config().chunk;
    let engine = lib.engine().clone();
    let commit_every = commit_every();
    let shared = Shared {
        lib: RwLock::new(lib),
        claimed: Mutex::new(HashSet::new()),
    };
    let pending = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let mut files = 0u64;
    let mut unchanged_files = 0u64;
    let mut chunks = 0u64;
    let mut bytes = 0u64;
    let mut entries = 0u64;

    let read = std::thread::scope(|s| -> Result<Read> {
        let (work_tx, work_rx) = bounded::<Work>(workers * 2);
        let (done_tx, done_rx) = bounded::<Done>(workers * 2);
        // Unbounded, so the reader never waits on it while the writer waits on the hashers;
        // `pending` bounds what it holds.
        let (order_tx, order_rx) = unbounded::<Order>();
        let reader = {
            let (pending, abort) = (&pending, &abort);
            let shared = &shared;
            s.spawn(move || {
                let src = Source {
                    walk,
                    quick,
                    lib: shared,
                    order: order_tx,
                    pending,
                    abort,
                    progress,
                    files: 0,
                };
                let res = read_and_chunk(src, &engine, params, work_tx, progress);
                if res.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                res
            })
        };
        for _ in 0..workers {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let shared = &shared;
            s.spawn(move || hash_and_compress(shared, level, rx, tx));
        }
        drop(work_rx);
        drop(done_tx);
        let mut queue: VecDeque<Order> = VecDeque::new();
        let mut reading: HashMap<usize, Collecting> = HashMap::new();
        // Read numbers below this were written out: their late chunks belong to no file.
        let mut next_read = 0usize;
        let mut failure = None;
        let (mut done_open, mut order_open) = (true, true);
        let (never_done, never_order) = (never::<Done>(), never::<Order>());
        while done_open || order_open {
            let drx = if done_open { &done_rx } else { &never_done };
            let orx = if order_open { &order_rx } else { &never_order };
            let mut step = || -> Result<()> {
                crossbeam_channel::select! {
                    recv(drx) -> d => match d {
                        Err(_) => done_open = false,
                        Ok(d) => {
                            // A new chunk is written even when its read attempt was given up:
                            // another attempt finds it claimed and relies on it being stored.
                            if let Some((flags, stored)) = &d.stored {
                                writer.append(d.id, d.ulen, *flags, stored)?;
                                new_chunks += 1;
                                if writer.uncommitted() >= commit_every {
                                    shared.commit_step(&mut writer)?;
                                }
                            }
                            if d.file < next_read && !reading.contains_key(&d.file) {
                                return Ok(());
                            }
                            let c = reading.entry(d.file).or_default();
                            if d.attempt < c.attempt {
                                return Ok(());
                            }
                            if d.attempt > c.attempt {
                                c.attempt = d.attempt;
                                c.chunks.clear();
                            }
                            if c.chunks.len() <= d.seq {
                                c.chunks.resize(d.seq + 1, None);
                            }
                            c.chunks[d.seq] = Some(ChunkRef { id: d.id, len: d.ulen });
                        }
                    },
                    recv(orx) -> o => match o {
                        Err(_) => order_open = false,
                        Ok(Order::Finished { file, read, chunks }) => {
                            reading.entry(file).or_default().finished = Some((read, chunks));
                        }
                        Ok(o) => {
                            if let Order::Read { file, .. } = &o {
                                reading.entry(*file).or_default();
                                next_read = next_read.max(file + 1);
                            }
                            queue.push_back(o);
                        }
                    },
                }
                // Write out what is complete at the front, in order.
                while let Some(front) = queue.front() {
                    let (entry, seen) = match front {
                        Order::Entry(..) => match queue.pop_front() {
                            Some(Order::Entry(e, seen)) => {
                                if seen.is_some() {
                                    unchanged_files += 1;
                                }
                                (e, seen)
                            }
                            _ => unreachable!("front was an entry"),
                        },
                        Order::Read { file, .. } => {
                            let Some((read, list)) =
                                reading.get_mut(file).and_then(Collecting::complete)
                            else {
                                break;
                            };
                            let file = *file;
                            reading.remove(&file);
                            let Some(Order::Read { rel, ino, .. }) = queue.pop_front() else {
                                unreachable!("front was a read");
                            };
                            debug_assert_eq!(
                                list.iter().map(|c| u64::from(c.len)).sum::<u64>(),
                                read.size
                            );
                            // A file read is recorded as it was read.
                            let e = Entry {
                                path: rel,
                                mode: read.mode,
                                mtime_sec: read.mtime_sec,
                                mtime_nsec: read.mtime_nsec,
                                kind: EntryKind::File {
                                    size: read.size,
                                    chunks: list,
                                },
                            };
                            (e, Some((ino, read.ctime)))
                        }
                        Order::Finished { .. } => unreachable!("never queued"),
                    };
                    pending.fetch_sub(1, Ordering::Relaxed);
                    if let EntryKind::File { size, chunks: list } = &entry.kind {
                        files += 1;
                        chunks += list.len() as u64;
                        bytes += size;
                    }
                    if let Some(seen) = seen {
                        record.push(seen);
                    }
                    out.push(&entry)?;
                    entries += 1;
                }
                Ok(())
            };
            if let Err(e) = step() {
                failure = Some(e);
                break;
            }
        }
        // Dropping the receivers makes the workers, then the reader, stop early on failure.
        abort.store(failure.is_some(), Ordering::Relaxed);
        drop(done_rx);
        drop(order_rx);
        let read = reader.join().expect("reader thread panicked");
        match failure {
            Some(e) => Err(e),
            None => {
                let read = read?;
                debug_assert!(queue.is_empty(), "every entry was written");
                Ok(read)
            }
        }
    })?;

    let lib = shared.lib.into_inner().unwrap_or_else(|e| e.into_inner());
    let m = out.finish()?;
    let stored_bytes = writer.bytes_written();
    let committed = writer.commit()?;
    lib.apply(committed);
    let mut report = IngestReport {
        package: opts.package.to_string(),
        version,
        hash: m.hash().to_hex().to_string(),
        files,
        entries,
        bytes,
        chunks,
        new_chunks,
        unchanged_files,
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
        && m.same_entries_as(&base)?
    {
        let hash = base.hash()?;
        report.version = b;
        report.hash = hash.to_hex().to_string();
        report.unchanged_from = Some(b);
        record.save(b, &hash);
        return Ok(report);
    }
    let hash = m.hash();
    report.created = lib.commit_manifest(m)?;
    record.save(version, &hash);
    Ok(report)
}

/// Version `version` of `package`, or `None` (logged) when the library does not hold it.
fn stored_version(
    lib: &Library,
    package: &PackageId,
    version: u32,
    purpose: &str,
) -> Result<Option<StoredManifest>> {
    match lib.manifest_dir().open_manifest(package, version) {
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

/// The quick check's base, read alongside the walk (both in manifest order): a merge join of
/// the base manifest's entries with its quick-check record, one file at a time.
struct QuickBase {
    entries: manifest::Reader<FileAt>,
    /// The entry read ahead (the first not before the walk's current path).
    next: Option<Entry>,
    /// The record's files, when it is the base's.
    record: Option<RecordReader>,
    /// The base's chunks the library lacks, when found by one pass (see [`absent_chunks`]);
    /// otherwise each chunk is looked up in the library as its file comes.
    absent: Option<HashSet<ChunkId>>,
}

/// Bases naming fewer chunks are checked chunk by chunk: a lookup per chunk costs less than
/// a pass over the whole chunk index.
const ABSENT_PASS_MIN: u64 = 50_000;
/// Base chunks missing from the library kept in memory at most; a base missing more (a
/// library that lost much of it) is checked chunk by chunk instead.
const ABSENT_MAX: usize = 1 << 16;

/// The chunks of `base` that `lib` lacks (usually none), found by one merge join of the
/// base's chunk IDs, sorted in bounded memory, with the chunk index in ID order; `None` when
/// looking each chunk up is cheaper (a base that names a small part of the library) or when
/// more than [`ABSENT_MAX`] are missing. A lookup reads and checks a 4 KiB block of every
/// index run: the quick re-snapshot of a million unchanged files spent a third of its time
/// in them. The answer holds for the whole ingest: it holds the library, so no chunk goes
/// away, and a chunk it stores meanwhile only makes a file read that could have been reused.
fn absent_chunks(lib: &Library, base: &StoredManifest) -> Result<Option<HashSet<ChunkId>>> {
    let mut ids = Sorter::<32>::new(&lib.spill_dir(), SORT_MEMORY);
    let mut entries = base.reader()?;
    while let Some(e) = entries.next_entry()? {
        if let EntryKind::File { chunks, .. } = &e.kind {
            for c in chunks {
                ids.push(c.id.0)?;
            }
        }
    }
    let ids = ids.finish()?;
    if ids.len() < absent_pass_min() || ids.len().saturating_mul(8) < lib.chunk_count() as u64 {
        tracing::debug!(
            base_chunks = ids.len(),
            "quick check: chunks looked up one by one"
        );
        return Ok(None);
    }
    let mut absent = HashSet::new();
    let mut too_many = false;
    lib.merge_missing_sorted(&ids, &mut |id| {
        if absent.len() < ABSENT_MAX {
            absent.insert(id);
        } else {
            too_many = true;
        }
        Ok(())
    })?;
    tracing::debug!(
        absent = absent.len(),
        too_many,
        "quick check: base chunks the library lacks"
    );
    Ok((!too_many).then_some(absent))
}

impl QuickBase {
    fn open(lib: &Library, base: &StoredManifest) -> Result<QuickBase> {
        let record = RecordReader::open(lib, base)?;
        let absent = absent_chunks(lib, base)?;
        let mut entries = base.reader()?;
        let next = entries.next_entry()?;
        Ok(QuickBase {
            entries,
            next,
            record,
            absent,
        })
    }

    /// The chunks of the base's file at `e`'s path when the walked file may be taken from it
    /// unread: same size and mtime, the inode and ctime the record holds (if it does), and all
    /// its chunks in the library.
    fn reuse(
        &mut self,
        lib: &Library,
        e: &SourceEntry,
        size: u64,
    ) -> Result<Option<Vec<ChunkRef>>> {
        while let Some(n) = &self.next {
            if n.path.as_slice() >= e.rel.as_slice() {
                break;
            }
            if matches!(n.kind, EntryKind::File { .. })
                && let Some(r) = &mut self.record
            {
                r.skip();
            }
            self.next = self.entries.next_entry()?;
        }
        let Some(n) = self.next.take_if(|n| n.path == e.rel) else {
            return Ok(None);
        };
        let EntryKind::File {
            size: bsize,
            chunks,
        } = n.kind
        else {
            return Ok(None);
        };
        let seen = self.record.as_mut().and_then(RecordReader::next);
        let next = self.entries.next_entry()?;
        self.next = next;
        let same = bsize == size
            && (n.mtime_sec, n.mtime_nsec) == (e.mtime_sec, e.mtime_nsec)
            && seen.is_none_or(|seen| seen == (e.id.ino, e.ctime))
            && chunks.iter().all(|c| match &self.absent {
                Some(absent) => !absent.contains(&c.id),
                None => lib.has_chunk(&c.id),
            });
        Ok(same.then_some(chunks))
    }
}

/// What a snapshot saw of each file of the version it made or confirmed, beyond what the
/// manifest holds: its inode and ctime. Kept per package in `LIB/quick-check/<PKG>.fqc`
/// (replaced atomically by each snapshot of the package; a library-local cache, never sent):
/// ```text
/// "FRQCK\0\0\x01" | version u32 | manifest hash [32] | files u64 |
/// files × (inode u64 | ctime seconds i64 | ctime nanoseconds u32) | BLAKE3(all before)[..8]
/// ```
/// The files are the manifest's regular files in its order. A record is used only for the
/// version and manifest hash it names, and ignored when damaged. It is written and read one
/// file at a time.
const QUICK_MAGIC: &[u8; 8] = b"FRQCK\0\0\x01";
const QUICK_HEADER: usize = 52;

fn record_path(lib: &Library, package: &PackageId) -> std::path::PathBuf {
    lib.dir()
        .join("quick-check")
        .join(format!("{}.fqc", package.as_str()))
}

/// Reads the record of a base version, its files in manifest order.
struct RecordReader {
    src: std::io::BufReader<File>,
    left: u64,
}

impl RecordReader {
    /// The record of `base`, if the last snapshot of its package made or confirmed it and it
    /// is intact (checked in one pass before use).
    fn open(lib: &Library, base: &StoredManifest) -> Result<Option<RecordReader>> {
        let path = record_path(lib, base.package());
        let Ok(mut f) = File::open(&path) else {
            return Ok(None);
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut head = [0u8; QUICK_HEADER];
        if len < (QUICK_HEADER + 8) as u64 || f.read_exact(&mut head).is_err() {
            return Ok(None);
        }
        if head[..8] != *QUICK_MAGIC || head[8..12] != base.version().to_le_bytes() {
            return Ok(None);
        }
        let n = u64::from_le_bytes(head[44..52].try_into().expect("8 bytes"));
        if Some(len) != n.checked_mul(20).map(|b| b + (QUICK_HEADER + 8) as u64) {
            return Ok(None);
        }
        // The record names the base by its hash, and holds one line per file of it.
        let mut r = base.hashing_reader()?;
        let mut base_files = 0u64;
        while let Some(e) = r.next_entry()? {
            base_files += u64::from(matches!(e.kind, EntryKind::File { .. }));
        }
        let hash = r.hash().expect("hashing reader at its end");
        if head[12..44] != *hash.as_bytes() || base_files != n {
            return Ok(None);
        }
        let mut h = blake3::Hasher::new();
        let body = len - 8;
        let mut check = [0u8; 8];
        let ok = f.seek(SeekFrom::Start(0)).is_ok()
            && std::io::copy(&mut (&mut f).take(body), &mut h).ok() == Some(body)
            && f.read_exact(&mut check).is_ok()
            && h.finalize().as_bytes()[..8] == check;
        if !ok || f.seek(SeekFrom::Start(QUICK_HEADER as u64)).is_err() {
            return Ok(None);
        }
        Ok(Some(RecordReader {
            src: std::io::BufReader::with_capacity(64 << 10, f),
            left: n,
        }))
    }

    /// The next file's inode and ctime (`None` past the end or on a read error: then the
    /// quick check compares size and mtime only).
    fn next(&mut self) -> Option<Seen> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut f = [0u8; 20];
        self.src.read_exact(&mut f).ok()?;
        let ino = u64::from_le_bytes(f[..8].try_into().expect("8 bytes"));
        let sec = i64::from_le_bytes(f[8..16].try_into().expect("8 bytes"));
        let nsec = u32::from_le_bytes(f[16..20].try_into().expect("4 bytes"));
        Some((ino, (sec, nsec)))
    }

    fn skip(&mut self) {
        let _ = self.next();
    }
}

/// Writes this snapshot's record as the files are written to the manifest: to a temporary
/// file, its header and check completed by [`save`](Self::save). Best effort throughout:
/// without a record the next quick check compares size and mtime only.
struct RecordWriter {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    out: Option<std::io::BufWriter<File>>,
    files: u64,
}

impl RecordWriter {
    fn create(lib: &Library, package: &PackageId) -> RecordWriter {
        let path = record_path(lib, package);
        let name = path.file_name().expect("file name").to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let out = std::fs::create_dir_all(path.parent().expect("quick-check folder"))
            .and_then(|()| {
                // Read back to hash it once complete.
                File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
            })
            .and_then(|f| {
                let mut w = std::io::BufWriter::with_capacity(64 << 10, f);
                w.write_all(&[0u8; QUICK_HEADER])?;
                Ok(w)
            });
        let out = match out {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %Error::io(&tmp, "create quick-check record", e), "no quick-check record; the next quick check compares size and mtime only");
                None
            }
        };
        RecordWriter {
            path,
            tmp,
            out,
            files: 0,
        }
    }

    fn push(&mut self, (ino, (sec, nsec)): Seen) {
        if let Some(w) = &mut self.out {
            let mut b = [0u8; 20];
            b[..8].copy_from_slice(&ino.to_le_bytes());
            b[8..16].copy_from_slice(&sec.to_le_bytes());
            b[16..].copy_from_slice(&nsec.to_le_bytes());
            if w.write_all(&b).is_err() {
                self.out = None;
            }
        }
        self.files += 1;
    }

    /// Completes the record as that of `version` whose manifest hashes to `hash`, and puts it
    /// in place.
    fn save(mut self, version: u32, hash: &blake3::Hash) {
        let res = (|| -> std::io::Result<()> {
            let Some(w) = self.out.take() else {
                return Err(std::io::Error::other("the record could not be written"));
            };
            let mut f = w.into_inner().map_err(|e| e.into_error())?;
            let mut head = Vec::with_capacity(QUICK_HEADER);
            head.extend_from_slice(QUICK_MAGIC);
            head.extend_from_slice(&version.to_le_bytes());
            head.extend_from_slice(hash.as_bytes());
            head.extend_from_slice(&self.files.to_le_bytes());
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&head)?;
            f.seek(SeekFrom::Start(0))?;
            let mut h = blake3::Hasher::new();
            let mut rf = std::io::BufReader::with_capacity(64 << 10, &f);
            std::io::copy(&mut rf, &mut h)?;
            drop(rf);
            f.seek(SeekFrom::End(0))?;
            f.write_all(&h.finalize().as_bytes()[..8])?;
            f.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)?;
            Ok(())
        })()
        .map_err(|e| Error::io(&self.path, "write quick-check record", e))
        .and_then(|()| crate::writer::sync_dir(self.path.parent().expect("quick-check folder")));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&self.tmp);
            tracing::warn!(error = %e, "no quick-check record; the next quick check compares size and mtime only");
        }
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
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

/// Where the reader takes its files from: the walk, in manifest order, with the quick check's
/// base alongside. Entries that need no reading are handed to the writer on the way.
struct Source<'a, 'l> {
    walk: Walk,
    quick: Option<QuickBase>,
    lib: &'a Shared<'l>,
    order: Sender<Order>,
    pending: &'a AtomicUsize,
    abort: &'a AtomicBool,
    progress: &'a Progress,
    /// Read numbers handed out.
    files: usize,
}

/// What [`Source::next_file`] found.
enum Pulled {
    /// The next file to read, by read number.
    File(usize, SourceEntry),
    /// The writer holds `MAX_PENDING` entries: none is taken until it writes some.
    Full,
    /// The walk is over (or the writer stopped).
    End,
}

impl Source<'_, '_> {
    /// Hands the writer every entry up to the next file to read, and returns that file.
    fn next_file(&mut self) -> Result<Pulled> {
        loop {
            if self.pending.load(Ordering::Relaxed) >= MAX_PENDING {
                return Ok(Pulled::Full);
            }
            let Some(e) = self.walk.next_entry()? else {
                return Ok(Pulled::End);
            };
            self.pending.fetch_add(1, Ordering::Relaxed);
            let entry = |kind| Entry {
                path: e.rel.clone(),
                mode: e.mode,
                mtime_sec: e.mtime_sec,
                mtime_nsec: e.mtime_nsec,
                kind,
            };
            let order = match &e.kind {
                SourceKind::Dir => Order::Entry(entry(EntryKind::Dir), None),
                SourceKind::Symlink { target } => Order::Entry(
                    entry(EntryKind::Symlink {
                        target: target.clone(),
                    }),
                    None,
                ),
                &SourceKind::File { size } => {
                    let reused = match &mut self.quick {
                        Some(q) => q.reuse(&self.lib.read(), &e, size)?,
                        None => None,
                    };
                    match reused {
                        Some(chunks) => Order::Entry(
                            entry(EntryKind::File { size, chunks }),
                            Some((e.id.ino, e.ctime)),
                        ),
                        None => {
                            let file = self.files;
                            self.files += 1;
                            self.progress.add_total(1, size);
                            let read = Order::Read {
                                file,
                                rel: e.rel.clone(),
                                ino: e.id.ino,
                            };
                            if self.order.send(read).is_err() {
                                return Ok(Pulled::End);
                            }
                            return Ok(Pulled::File(file, e));
                        }
                    }
                }
            };
            if self.order.send(order).is_err() {
                return Ok(Pulled::End);
            }
        }
    }
}

/// Reads every file the source hands out through the engine with read-ahead and cuts it into
/// chunks; a file that changed while read is read again (see the module's documentation).
fn read_and_chunk(
    mut src: Source<'_, '_>,
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
    let mut opener = src.walk.opener()?;
    let root = src.walk.root().to_path_buf();
    // The files being read (until their kept read is in), by read number.
    let mut reading: HashMap<usize, SourceEntry> = HashMap::new();
    let path = |reading: &HashMap<usize, SourceEntry>, file: usize| {
        let rel = reading.get(&file).map_or(&[][..], |e| e.rel.as_slice());
        root.join(std::ffi::OsStr::from_bytes(rel))
    };
    let mut out = Read::default();
    let mut queue: VecDeque<Inflight> = VecDeque::new();
    let mut queued_bytes = 0usize;
    // Files with a read in the queue (each holds its descriptor until its last read is in).
    let mut open_files = 0usize;
    let mut walked_all = false;
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
        let mut full = false;
        while queued_bytes < READ_AHEAD_BYTES {
            if planning.is_none() {
                if open_files >= READ_AHEAD_FILES {
                    break;
                }
                let (file, attempt) = match again.pop_front() {
                    Some(next) => next,
                    None if walked_all => break,
                    None => match src.next_file()? {
                        Pulled::File(file, e) => {
                            reading.insert(file, e);
                            (file, 0)
                        }
                        Pulled::Full => {
                            full = true;
                            break;
                        }
                        Pulled::End => {
                            walked_all = true;
                            break;
                        }
                    },
                };
                let started = coarse_now();
                let (f, meta) = opener.open_file(&reading[&file])?;
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
            if src.abort.load(Ordering::Relaxed) {
                // The consumer failed and reports why.
                return Ok(out);
            }
            if full {
                // Everything read is handed over: the writer catches up, then the walk goes on.
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            break;
        };
        let data = r.pending.wait().map_err(|source| Error::Unreadable {
            path: path(&reading, r.file),
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
                path: path(&reading, r.file),
                source,
            })?;
            let after = Stat::of(&meta);
            let ended = coarse_now();
            match changed_during_read(&o.before, &after, got, o.started, ended) {
                None => {
                    chunker.finish(&mut emit);
                    let read = ReadFile {
                        size: o.before.size,
                        mode: o.before.mode,
                        mtime_sec: o.before.mtime.0,
                        mtime_nsec: o.before.mtime.1 as u32,
                        ctime: (o.before.ctime.0, o.before.ctime.1 as u32),
                        attempt: r.attempt,
                    };
                    out.reread += u64::from(r.attempt > 0);
                    progress.add_file();
                    reading.remove(&r.file);
                    let finished = Order::Finished {
                        file: r.file,
                        read,
                        chunks: seq,
                    };
                    if src.order.send(finished).is_err() {
                        stop = true;
                    }
                }
                Some(how) if r.attempt + 1 < READ_ATTEMPTS => {
                    tracing::debug!(
                        "{}: {how}; reading it again",
                        path(&reading, r.file).display()
                    );
                    wait_past(after.ctime);
                    again.push_back((r.file, r.attempt + 1));
                }
                Some(how) => {
                    return Err(Error::SourceChanged {
                        path: path(&reading, r.file),
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

fn hash_and_compress(shared: &Shared<'_>, level: i32, rx: Receiver<Work>, tx: Sender<Done>) {
    let mut comp = zstd::bulk::Compressor::new(level).ok();
    for w in rx.iter() {
        let id = ChunkId::of(&w.data);
        let is_new = shared.claim(&id);
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
