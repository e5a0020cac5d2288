//! Synthetic libraries of many chunks, for scale tests and the benchmarks.
//!
//! [`library`] writes a real, valid content library, as the writer would have left it: pack
//! data files (format 2: the magic, then each chunk behind its checked record header) and
//! their index files (header with the committed length, one checked entry per chunk), plus a
//! manifest naming some of the chunks, so that garbage collection and verification have
//! something to keep and something to check. Chunks are tiny (8 bytes: the chunk's number),
//! distinct and stored raw, so 10,000,000 of them take about 1.3 GB of disk (640 MB of data,
//! 640 MB of pack indexes) and a few tens of seconds on two cores. The library opens for
//! writing without repair.

use freight_core::id::ChunkId;
use freight_core::manifest::{ChunkRef, Entry, EntryKind, Manifest};
use freight_core::pack::{self, IDX_HEADER, Loc, PACK_HEADER, PACK_MAGIC, RECORD_HEADER};
use freight_core::{Library, LibraryConfig, ManifestDir, PackageId};
use std::io::Write;
use std::path::Path;

/// Chunks per pack of a synthetic library (6.4 MB of data and of index each).
pub const PER_PACK: u64 = 100_000;
/// The synthetic manifest names every `REFERENCE_EVERY`th chunk.
pub const REFERENCE_EVERY: u64 = 10_000;

/// What [`library`] wrote.
#[derive(Clone, Debug)]
pub struct Synthetic {
    /// Chunks written (numbered 0..chunks; see [`chunk_id`]).
    pub chunks: u64,
    /// Packs written (numbered from 1).
    pub packs: u32,
    /// The package of the manifest written.
    pub package: PackageId,
    /// Its version.
    pub version: u32,
    /// The chunk numbers it names.
    pub referenced: Vec<u64>,
}

/// The stored bytes of chunk `i`.
pub fn chunk_bytes(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

/// The ID of chunk `i`.
pub fn chunk_id(i: u64) -> ChunkId {
    ChunkId::of(&chunk_bytes(i))
}

/// Writes a library of `chunks` chunks at `dir` (created; must not hold a library yet), in
/// packs of [`PER_PACK`] chunks, and a manifest (package `SYN00001` version 1) naming every
/// [`REFERENCE_EVERY`]th chunk. Packs are written by two threads.
pub fn library(dir: &Path, chunks: u64) -> freight_core::Result<Synthetic> {
    let config = LibraryConfig::default();
    Library::init(dir, &config)?;
    let root = config.resolved_roots(dir).remove(0);
    let packs = chunks.div_ceil(PER_PACK) as u32;
    let threads = 2u32;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let root = &root;
                s.spawn(move || -> freight_core::Result<()> {
                    let mut n = 1 + t;
                    while n <= packs {
                        let first = (n as u64 - 1) * PER_PACK;
                        let last = (first + PER_PACK).min(chunks);
                        write_pack(root, n, first..last)?;
                        n += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("pack writer thread")?;
        }
        Ok::<_, freight_core::Error>(())
    })?;
    let package = PackageId::parse("SYN00001").expect("valid package id");
    let referenced: Vec<u64> = (0..chunks).step_by(REFERENCE_EVERY as usize).collect();
    let m = Manifest {
        package: package.clone(),
        version: 1,
        entries: vec![
            Entry {
                path: Vec::new(),
                mode: 0o755,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 0,
                kind: EntryKind::Dir,
            },
            Entry {
                path: b"chunks.bin".to_vec(),
                mode: 0o644,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 0,
                kind: EntryKind::File {
                    size: referenced.len() as u64 * 8,
                    chunks: referenced
                        .iter()
                        .map(|&i| ChunkRef {
                            id: chunk_id(i),
                            len: 8,
                        })
                        .collect(),
                },
            },
        ],
    };
    let path = ManifestDir::open(dir)?.path(&package, 1);
    let pdir = path.parent().expect("package folder");
    std::fs::create_dir_all(pdir).map_err(|e| freight_core::Error::io(pdir, "create", e))?;
    freight_core::library::write_atomic(&path, &m.encode())?;
    Ok(Synthetic {
        chunks,
        packs,
        package,
        version: 1,
        referenced,
    })
}

/// Writes pack `n` holding chunks `range`: data and index, synced.
fn write_pack(root: &Path, n: u32, range: std::ops::Range<u64>) -> freight_core::Result<()> {
    let (data_path, idx_path) = pack::paths(root, n);
    let io = |p: &Path, e: std::io::Error| freight_core::Error::io(p, "write synthetic pack", e);
    let data = std::fs::File::create(&data_path).map_err(|e| io(&data_path, e))?;
    let idx = std::fs::File::create(&idx_path).map_err(|e| io(&idx_path, e))?;
    let mut dw = std::io::BufWriter::with_capacity(1 << 20, &data);
    let mut iw = std::io::BufWriter::with_capacity(1 << 20, &idx);
    dw.write_all(PACK_MAGIC).map_err(|e| io(&data_path, e))?;
    let count = range.end - range.start;
    let committed = IDX_HEADER as u64 + count * pack::ENTRY_LEN as u64;
    iw.write_all(&pack::encode_idx_header(committed))
        .map_err(|e| io(&idx_path, e))?;
    let mut at = PACK_HEADER as u64;
    for i in range {
        let bytes = chunk_bytes(i);
        let id = ChunkId::of(&bytes);
        let loc = Loc {
            pack: n,
            offset: at + RECORD_HEADER as u64,
            clen: 8,
            ulen: 8,
            flags: 0,
        };
        dw.write_all(&pack::encode_record(&id, 8, 8, 0))
            .and_then(|()| dw.write_all(&bytes))
            .map_err(|e| io(&data_path, e))?;
        iw.write_all(&pack::encode_entry(&id, &loc))
            .map_err(|e| io(&idx_path, e))?;
        at = loc.end();
    }
    dw.flush().map_err(|e| io(&data_path, e))?;
    iw.flush().map_err(|e| io(&idx_path, e))?;
    drop((dw, iw));
    data.sync_data().map_err(|e| io(&data_path, e))?;
    idx.sync_data().map_err(|e| io(&idx_path, e))?;
    Ok(())
}

/// Peak resident set size of this process so far (`VmHWM`), in bytes.
pub fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Resident set size of this process now (`VmRSS`), in bytes.
pub fn rss() -> u64 {
    status_kib("VmRSS:") * 1024
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the peak RSS (`VmHWM`) to the current RSS, so a phase can be measured alone
/// (Linux: writing 5 to `/proc/self/clear_refs`). Returns false where that is refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
