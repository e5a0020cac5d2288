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

use crate::chunker::StreamChunker;
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackageId};
use crate::library::Library;
use crate::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use crate::pack::FLAG_ZSTD;
use crate::progress::Progress;
use crate::walk::{SourceKind, walk};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

const READ_BLOCK: usize = 4 << 20;
const READ_AHEAD_BYTES: usize = 16 << 20;

/// What to ingest as.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Package ID.
    pub package: PackageId,
    /// Version; `None` = one past the newest stored.
    pub version: Option<u32>,
    /// Quick check, as rsync and git do: a file whose path, size and modification time equal
    /// those of the newest stored version is taken from it without being read (if all its
    /// chunks are in the library). A file changed in place with its size and mtime restored
    /// is then missed; leave this off to read everything.
    pub quick_check: bool,
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
    /// False when this exact version was already stored.
    pub created: bool,
}

struct Work {
    file: usize,
    seq: usize,
    data: Bytes,
}

struct Done {
    file: usize,
    seq: usize,
    id: ChunkId,
    ulen: u32,
    /// Stored form when the chunk is new: (flags, bytes).
    stored: Option<(u8, Vec<u8>)>,
}

/// Snapshots `src` into `lib` as a new package version.
pub fn ingest(
    lib: &mut Library,
    src: &Path,
    opts: &IngestOptions,
    progress: &Progress,
) -> Result<IngestReport> {
    lib.require_write();
    let entries = walk(src)?;
    // The newest stored version, looked up once and only when needed: it numbers the new
    // version (unless given) and is the quick check's previous version.
    let latest = match (opts.version, opts.quick_check) {
        (Some(_), false) => None,
        _ => lib.latest(&opts.package)?,
    };
    let version = opts.version.unwrap_or_else(|| latest.map_or(1, |v| v + 1));
    let files: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.kind, SourceKind::File { .. }))
        .map(|(i, _)| i)
        .collect();
    // Per file: its chunk list taken from the previous version (quick check), if any.
    let reused: Vec<Option<Vec<ChunkRef>>> = {
        let previous = match (opts.quick_check, latest) {
            (true, Some(v)) => Some(lib.manifest(&opts.package, v)?),
            _ => None,
        };
        let unchanged = quick_check(lib, previous.as_ref());
        files
            .iter()
            .map(|&i| {
                let e = &entries[i];
                let SourceKind::File { size } = e.kind else {
                    return None;
                };
                unchanged
                    .get(e.rel.as_slice())
                    .filter(|(s, sec, nsec, _)| {
                        *s == size && *sec == e.mtime_sec && *nsec == e.mtime_nsec
                    })
                    .map(|(_, _, _, chunks)| chunks.to_vec())
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
    let mut chunk_lists: Vec<Vec<Option<ChunkRef>>> = reused
        .iter()
        .map(|r| {
            r.as_ref()
                .map_or_else(Vec::new, |c| c.iter().copied().map(Some).collect())
        })
        .collect();
    let mut new_chunks = 0u64;
    let lib_ref: &Library = lib;
    let claimed: Mutex<HashSet<ChunkId>> = Mutex::new(HashSet::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let level = lib_ref.config().compression_level;
    let params = lib_ref.config().chunk;

    let sizes = std::thread::scope(|s| -> Result<Vec<u64>> {
        let (work_tx, work_rx) = bounded::<Work>(workers * 2);
        let (done_tx, done_rx) = bounded::<Done>(workers * 2);
        let reader = {
            let entries = &entries;
            let files = &read_entries;
            let engine = lib_ref.engine().clone();
            s.spawn(move || read_and_chunk(entries, files, &engine, params, work_tx, progress))
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
            if let Some((flags, bytes)) = &d.stored {
                if let Err(e) = writer.append(d.id, d.ulen, *flags, bytes) {
                    failure = Some(e);
                    break;
                }
                new_chunks += 1;
            }
            let list = &mut chunk_lists[to_read[d.file]];
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
    // Sizes per file position: as read, or as the previous version recorded.
    let mut file_sizes: Vec<u64> = files
        .iter()
        .map(|&i| match entries[i].kind {
            SourceKind::File { size } => size,
            _ => 0,
        })
        .collect();
    for (k, &f) in to_read.iter().enumerate() {
        file_sizes[f] = sizes[k];
    }
    let mut file_no = 0;
    let mut chunks = 0u64;
    for e in &entries {
        let kind = match &e.kind {
            SourceKind::Dir => EntryKind::Dir,
            SourceKind::Symlink { target } => EntryKind::Symlink {
                target: target.clone(),
            },
            SourceKind::File { .. } => {
                let list: Vec<ChunkRef> = std::mem::take(&mut chunk_lists[file_no])
                    .into_iter()
                    .map(|c| c.expect("every chunk of a file is hashed"))
                    .collect();
                chunks += list.len() as u64;
                let size = file_sizes[file_no];
                file_no += 1;
                EntryKind::File { size, chunks: list }
            }
        };
        m.entries.push(Entry {
            path: e.rel.clone(),
            mode: e.mode,
            mtime_sec: e.mtime_sec,
            mtime_nsec: e.mtime_nsec,
            kind,
        });
    }
    let stored_bytes = writer.bytes_written();
    let committed = writer.commit()?;
    lib.apply(committed);
    let created = lib.store_manifest(&m)?;
    Ok(IngestReport {
        package: m.package.to_string(),
        version,
        hash: m.hash().to_hex().to_string(),
        files: files.len() as u64,
        entries: m.entries.len() as u64,
        bytes: file_sizes.iter().sum(),
        chunks,
        new_chunks,
        unchanged_files: (files.len() - to_read.len()) as u64,
        stored_bytes,
        created,
    })
}

/// The previous version's files whose chunks are all in the library, by path: (size, mtime
/// seconds, mtime nanoseconds, chunks).
fn quick_check<'m>(
    lib: &Library,
    previous: Option<&'m Manifest>,
) -> std::collections::HashMap<&'m [u8], (u64, i64, u32, &'m [ChunkRef])> {
    previous
        .into_iter()
        .flat_map(|m| &m.entries)
        .filter_map(|e| match &e.kind {
            EntryKind::File { size, chunks } if chunks.iter().all(|c| lib.has_chunk(&c.id)) => {
                Some((
                    e.path.as_slice(),
                    (*size, e.mtime_sec, e.mtime_nsec, chunks.as_slice()),
                ))
            }
            _ => None,
        })
        .collect()
}

/// Reads every file through the engine with read-ahead and cuts it into chunks.
/// Returns each file's size as read.
fn read_and_chunk(
    entries: &[crate::walk::SourceEntry],
    files: &[usize],
    engine: &crate::engine::Engine,
    params: crate::chunker::ChunkParams,
    work: Sender<Work>,
    progress: &Progress,
) -> Result<Vec<u64>> {
    // Plan of reads: (file number, offset, length); issued ahead of consumption.
    struct Inflight {
        file: usize,
        last: bool,
        len: usize,
        pending: crate::engine::Pending<Vec<u8>>,
    }
    let mut sizes = vec![0u64; files.len()];
    let mut queue: VecDeque<Inflight> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let mut next_file = 0usize;
    let mut next_off = 0u64;
    let mut open: Option<(usize, Arc<File>, u64)> = None;
    let mut chunker = StreamChunker::new(params);
    let mut seq = 0usize;
    let mut current = usize::MAX;
    loop {
        // Top up the read-ahead window.
        while queued_bytes < READ_AHEAD_BYTES && next_file < files.len() {
            let e = &entries[files[next_file]];
            let size = match e.kind {
                SourceKind::File { size } => size,
                _ => unreachable!("only files are planned"),
            };
            if open.as_ref().is_none_or(|(f, _, _)| *f != next_file) {
                let f = File::open(&e.abs).map_err(|source| Error::Unreadable {
                    path: e.abs.clone(),
                    source,
                })?;
                open = Some((next_file, Arc::new(f), size));
                next_off = 0;
            }
            let (fno, f, size) = open.as_ref().expect("open file");
            // Read one block past the walked size so growth is noticed, not silently cut.
            let len = ((*size - next_off) as usize).clamp(0, READ_BLOCK);
            let last = len < READ_BLOCK || next_off + len as u64 == *size;
            let len = if last { len + 1 } else { len };
            queue.push_back(Inflight {
                file: *fno,
                last,
                len,
                pending: engine.read_at(f, next_off, len),
            });
            queued_bytes += len;
            next_off += len as u64;
            if last {
                next_file += 1;
            }
        }
        let Some(r) = queue.pop_front() else {
            break;
        };
        let path = &entries[files[r.file]].abs;
        let data = r.pending.wait().map_err(|source| Error::Unreadable {
            path: path.clone(),
            source,
        })?;
        queued_bytes -= r.len;
        if r.file != current {
            current = r.file;
            chunker = StreamChunker::new(params);
            seq = 0;
        }
        sizes[r.file] += data.len() as u64;
        progress.add_bytes(data.len() as u64);
        let mut stop = false;
        let file = r.file;
        let mut emit = |data: Bytes| {
            if !stop && work.send(Work { file, seq, data }).is_err() {
                stop = true;
            }
            seq += 1;
        };
        chunker.push(&data, &mut emit);
        if r.last {
            let expect = match entries[files[r.file]].kind {
                SourceKind::File { size } => size,
                _ => 0,
            };
            if sizes[r.file] != expect {
                return Err(Error::Unreadable {
                    path: path.clone(),
                    source: std::io::Error::other(format!(
                        "file changed size during ingest ({expect} -> {} bytes); ingest again when it is stable",
                        sizes[r.file]
                    )),
                });
            }
            chunker.finish(&mut emit);
            progress.add_file();
        }
        if stop {
            // The consumer failed and reports why.
            return Ok(sizes);
        }
    }
    Ok(sizes)
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
