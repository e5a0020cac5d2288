//! The library's global chunk index: where each chunk is, for every chunk of the library, in
//! bounded memory.
//!
//! The per-pack index files ([`crate::pack`]) stay the source of truth; this index is derived
//! from them, so that opening a library does not read every pack index and looking a chunk up
//! does not need every entry in memory. It is an LSM-like set of sorted immutable **run**
//! files (fixed-size records in checked 4 KiB blocks; only each block's first chunk ID, the
//! *fence*, is kept in memory), a bounded in-memory table of recent entries (flushed to a new
//! run when full), and a **catalog** naming the runs and what of which pack they cover.
//!
//! # Files (`LIB/index/`; all integers little-endian)
//! ```text
//! catalog              "FRCICAT\x01" | next_run u64 | distinct u64 | runs u32 | packs u32 |
//!                      run* (number u64, count u64) oldest first |
//!                      pack* (pack u32, format u8, zero [3], idx_len u64, data_end u64,
//!                             last_check [8]) |
//!                      check [8] = BLAKE3(everything before)[..8]
//! run-NNNN….fci        header (64) = "FRCIRUN\x01" | count u64 | blocks u64 | zero [32] |
//!                                    check [8] = BLAKE3(header[..56])[..8]
//!                      block* (4096) = record* (73 × 56, the last block zero-padded) |
//!                                      check [8] = BLAKE3(block[..4088])[..8]
//!                      fence = first chunk ID of each block (32 each) | check [8]
//!                      record (56) = chunk ID [32] | pack u32 | offset u64 | clen u32 |
//!                                    ulen u32 | flags u8 | zero [3]
//! ```
//! Records are sorted by chunk ID; entries of one ID (the same chunk in several packs) keep
//! the order in which they were indexed. The catalog's `pack` list says, for each pack, how
//! many bytes of its index file (`idx_len`, header included) the runs hold, the end of the
//! data they name (`data_end`) and the check value of the last entry they hold
//! (`last_check`), and `distinct` how many distinct chunks of live packs the runs hold.
//!
//! # Crash safety and trust
//! A run is written to a temporary file, fsynced and renamed into place; the catalog is
//! published with [`crate::library::write_atomic`] (temporary file, fsync, rename, folder
//! fsync) only after every run it names is durable, and runs it no longer names are deleted
//! after it (an opening writer deletes every file the catalog does not name: a half-written
//! temporary, a run of an interrupted merge). A reader holding a run open keeps reading it
//! after the writer replaced and unlinked it.
//!
//! Opening never trusts the catalog over the pack files: a pack whose index commits more
//! than the catalog covers has the rest (its *tail*) read from its index file; entries of
//! packs that no longer exist are ignored (pack numbers are never reused) and dropped by the
//! next merge; and when the catalog or a run is missing, damaged, or disagrees with a pack
//! (the index commits less than covered, another format, or a different last covered entry),
//! the index is rebuilt from the pack indexes: streamed into runs of the in-memory table's
//! size and merged, so in bounded memory (an external sort). A block that fails its check
//! during a lookup makes that lookup fall back to the pack indexes and the catalog is removed,
//! so the next open rebuilds.
//!
//! Duplicates: when several live packs hold a chunk, a lookup answers the entry indexed
//! first (oldest run first, then newer runs, then the in-memory table), as the former
//! in-memory map's `or_insert` did.
//!
//! # Why this structure: measurements at 10,000,000 entries
//! Measured on the 2-core development machine (shared with other builds), warm page cache,
//! by `heavy_ten_million_chunks_open_and_work_in_bounded_memory` (`core/tests/chunk_index.rs`,
//! dev profile: this crate at opt-level 1, dependencies at 2) on a synthetic library
//! (`freight_test_support::synthetic`, 100 packs of 100,000 chunks), and, for the embedded
//! key-value store, a release-built program doing the same with `redb` 2 (64 MiB cache,
//! 32-byte keys, 24-byte values, commits of 100,000):
//!
//! | | runs + fences + table (this module) | redb 2 (B-tree) | `HashMap` (before) |
//! |---|---|---|---|
//! | open | 7.6-19 ms (catalog, 137,000 fence IDs, 100 pack index headers) | 0.6 ms | 29.9 s (reads all pack indexes) |
//! | read-only view beside the writer | 25 ms | | as open |
//! | first open / build | 18-31 s: reads the 640 MB of pack indexes, external sort | 482 s to insert (20,800/s) | |
//! | lookups | 68,000-145,000/s hits, 75,000-152,000/s misses | 108,000/s hits, 134,000/s misses | 583,000/s hits, 1,329,000/s misses |
//! | append + commit | 300,000 chunks in 2.7-7.9 s (38,000-110,000/s, flushes and publishing included) | 20,800/s | 300,000 in 0.77 s |
//! | index memory | 4.2 MiB of fences + a table of at most 100,000 entries (~10 MiB) | 64 MiB cache (RSS 70-77 MiB) | RSS 931 MiB after open |
//! | on disk | 560 MB (56-byte records) | 2,056 MB | none |
//! | whole test, peak RSS | 72-87 MiB (generate, build, reopen, lookups, ingest, stats, view, gc, verify) | | 1,386 MiB (open, lookups, ingest, gc) |
//!
//! (Ranges: runs on a quiet and on a busy machine; redb and the `HashMap` ran once each,
//! beside other builds. Lookups cost one positioned read and check of a 4 KiB block per run
//! searched where the map cost a hash probe: slower per lookup, but a chunk of 256 KiB or
//! more is read, hashed and compressed in far longer, and a large set of lookups, such as
//! what a transfer of a large manifest lacks, is a merge-join instead.)
//! The former `HashMap<ChunkId, Loc>` held ~100 bytes per chunk (931 MiB resident at this
//! size) and read every pack index at each open. redb opens faster and looks up about as fast, but
//! inserts 5× slower, takes 4× the disk, and would still need the coverage bookkeeping
//! against the pack indexes below; sorted runs also give the merge-joins of gc, stats and
//! verify a streamed pass in chunk ID order for free. Lookup cost is one positioned read of a
//! 4 KiB block per run searched (a page-cache hit is not resident memory, unlike a mapping).

use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::library::{read_full_at, write_atomic};
use crate::pack::Loc;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Magic of a run file.
pub const RUN_MAGIC: &[u8; 8] = b"FRCIRUN\x01";
/// Magic of the catalog.
pub const CATALOG_MAGIC: &[u8; 8] = b"FRCICAT\x01";
/// Size of a run's header.
pub const RUN_HEADER: usize = 64;
/// Size of one record.
pub const RECORD: usize = 56;
/// Size of a block.
pub const BLOCK: usize = 4096;
/// Records in a block.
pub const PER_BLOCK: usize = (BLOCK - 8) / RECORD;
/// Entries the in-memory table holds before it is flushed to a run (~10 MiB of table).
pub const TABLE_MAX: usize = 100_000;
/// Runs kept before the newest are merged regardless of their sizes.
const MAX_RUNS: usize = 6;
/// A run is merged into the one before it once that one is less than this many times larger
/// (so run sizes grow geometrically and a lookup reads few runs).
const RATIO: u64 = 4;
/// Blocks read at once by a sequential reader of a run.
const SCAN_BLOCKS: usize = 16;
/// Name of the catalog file.
pub const CATALOG: &str = "catalog";

fn check(bytes: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(bytes).as_bytes()[..8]);
    c
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn encode_record(id: &ChunkId, loc: &Loc, out: &mut [u8]) {
    out[..32].copy_from_slice(&id.0);
    out[32..36].copy_from_slice(&loc.pack.to_le_bytes());
    out[36..44].copy_from_slice(&loc.offset.to_le_bytes());
    out[44..48].copy_from_slice(&loc.clen.to_le_bytes());
    out[48..52].copy_from_slice(&loc.ulen.to_le_bytes());
    out[52] = loc.flags;
    out[53..56].fill(0);
}

fn decode_record(b: &[u8]) -> (ChunkId, Loc) {
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[..32]);
    (
        ChunkId(id),
        Loc {
            pack: u32_at(b, 32),
            offset: u64_at(b, 36),
            clen: u32_at(b, 44),
            ulen: u32_at(b, 48),
            flags: b[52],
        },
    )
}

fn run_name(n: u64) -> String {
    format!("run-{n:016}.fci")
}

/// What of one pack's index the runs hold (see the module's format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Covered {
    /// Pack format.
    pub format: u8,
    /// Bytes of the pack's index file (header included) whose entries are held.
    pub idx_len: u64,
    /// End of the data those entries name.
    pub data_end: u64,
    /// Check value of the last entry held (zero when none).
    pub last_check: [u8; 8],
}

/// One immutable sorted run, open.
struct Run {
    number: u64,
    file: File,
    path: PathBuf,
    count: u64,
    fence: Vec<ChunkId>,
}

impl Run {
    fn damaged(&self, reason: impl Into<String>) -> Error {
        Error::BadIndex {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Opens a run file: checks its header and fence (blocks are checked when read).
    fn open(path: &Path, number: u64, file: File) -> Result<Run> {
        let bad = |reason: String| Error::BadIndex {
            path: path.to_path_buf(),
            reason,
        };
        let len = file.metadata().ctx(path, "stat index run")?.len();
        let mut h = [0u8; RUN_HEADER];
        if read_full_at(&file, &mut h, 0).ctx(path, "read index run")? != RUN_HEADER
            || &h[..8] != RUN_MAGIC
            || check(&h[..56]) != h[56..]
        {
            return Err(bad("bad header".into()));
        }
        let count = u64_at(&h, 8);
        let blocks = u64_at(&h, 16);
        if blocks != count.div_ceil(PER_BLOCK as u64)
            || len != RUN_HEADER as u64 + blocks * BLOCK as u64 + blocks * 32 + 8
        {
            return Err(bad(format!(
                "{len} bytes do not hold the {count} records its header names"
            )));
        }
        let mut fence_bytes = vec![0u8; blocks as usize * 32 + 8];
        let at = RUN_HEADER as u64 + blocks * BLOCK as u64;
        if read_full_at(&file, &mut fence_bytes, at).ctx(path, "read index run")?
            != fence_bytes.len()
        {
            return Err(bad("fence is short".into()));
        }
        let (f, c) = fence_bytes.split_at(blocks as usize * 32);
        if check(f) != c {
            return Err(bad("fence is damaged".into()));
        }
        let fence = f
            .chunks(32)
            .map(|x| ChunkId(x.try_into().expect("32 bytes")))
            .collect();
        Ok(Run {
            number,
            file,
            path: path.to_path_buf(),
            count,
            fence,
        })
    }

    fn records_in(&self, block: usize) -> usize {
        (self.count as usize - block * PER_BLOCK).min(PER_BLOCK)
    }

    /// Reads and checks block `b`.
    fn block(&self, b: usize, buf: &mut [u8; BLOCK]) -> Result<()> {
        let at = RUN_HEADER as u64 + (b * BLOCK) as u64;
        let got = read_full_at(&self.file, buf, at).ctx(&self.path, "read index run")?;
        if got != BLOCK || check(&buf[..BLOCK - 8]) != buf[BLOCK - 8..] {
            return Err(self.damaged(format!("block {b} is damaged")));
        }
        Ok(())
    }

    /// Calls `f` on every entry of `id` in this run, in order, until it returns true.
    fn find(&self, id: &ChunkId, f: &mut dyn FnMut(Loc) -> bool) -> Result<bool> {
        if self.fence.is_empty() {
            return Ok(false);
        }
        // The first block whose first ID is not below `id`; entries of `id` may start in the
        // block before it.
        let p = self.fence.partition_point(|x| x < id);
        let mut b = p.saturating_sub(1);
        let mut buf = [0u8; BLOCK];
        loop {
            if b >= self.fence.len() || self.fence[b] > *id {
                return Ok(false);
            }
            self.block(b, &mut buf)?;
            let n = self.records_in(b);
            let recs = &buf[..n * RECORD];
            let start = {
                let (mut lo, mut hi) = (0, n);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if recs[mid * RECORD..mid * RECORD + 32] < id.0[..] {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            };
            let mut i = start;
            while i < n {
                let (rid, loc) = decode_record(&recs[i * RECORD..(i + 1) * RECORD]);
                if rid != *id {
                    return Ok(false);
                }
                if f(loc) {
                    return Ok(true);
                }
                i += 1;
            }
            b += 1;
        }
    }
}

/// Writes a run: records in order, then the fence and the header.
struct RunWriter {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    number: u64,
    block: Box<[u8; BLOCK]>,
    in_block: usize,
    out: Vec<u8>,
    at: u64,
    count: u64,
    fence: Vec<ChunkId>,
    last: Option<ChunkId>,
}

impl RunWriter {
    /// A run to be named `number` in `dir` (`named`), or an anonymous one (a reader's private
    /// rebuild, unlinked at once).
    fn create(dir: &Path, number: u64, named: bool) -> Result<RunWriter> {
        let path = dir.join(run_name(number));
        std::fs::create_dir_all(dir).ctx(dir, "create chunk index folder")?;
        let (file, tmp) = if named {
            let tmp = dir.join(format!(".{}.tmp", run_name(number)));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .ctx(&tmp, "create index run")?;
            (f, tmp)
        } else {
            (crate::spill::anonymous_file(dir)?, PathBuf::new())
        };
        Ok(RunWriter {
            file,
            tmp,
            path,
            number,
            block: Box::new([0u8; BLOCK]),
            in_block: 0,
            out: Vec::with_capacity(1 << 20),
            at: RUN_HEADER as u64,
            count: 0,
            fence: Vec::new(),
            last: None,
        })
    }

    fn push(&mut self, id: &ChunkId, loc: &Loc) -> Result<()> {
        debug_assert!(self.last.is_none_or(|l| l <= *id), "records out of order");
        self.last = Some(*id);
        if self.in_block == 0 {
            self.fence.push(*id);
        }
        let at = self.in_block * RECORD;
        encode_record(id, loc, &mut self.block[at..at + RECORD]);
        self.in_block += 1;
        self.count += 1;
        if self.in_block == PER_BLOCK {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<()> {
        self.block[self.in_block * RECORD..BLOCK - 8].fill(0);
        let c = check(&self.block[..BLOCK - 8]);
        self.block[BLOCK - 8..].copy_from_slice(&c);
        self.out.extend_from_slice(&self.block[..]);
        self.in_block = 0;
        if self.out.len() >= 1 << 20 {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<()> {
        let where_ = if self.tmp.as_os_str().is_empty() {
            &self.path
        } else {
            &self.tmp
        };
        self.file
            .write_all_at(&self.out, self.at)
            .ctx(where_, "write index run")?;
        self.at += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Writes the fence and header, makes the run durable and (when named) renames it into
    /// place; the caller syncs the folder before publishing a catalog naming it.
    fn finish(mut self) -> Result<Run> {
        if self.in_block > 0 {
            self.end_block()?;
        }
        let blocks = self.fence.len() as u64;
        for f in &self.fence {
            self.out.extend_from_slice(&f.0);
        }
        let fc = check(&self.out[self.out.len() - self.fence.len() * 32..]);
        self.out.extend_from_slice(&fc);
        self.write_out()?;
        let mut h = [0u8; RUN_HEADER];
        h[..8].copy_from_slice(RUN_MAGIC);
        h[8..16].copy_from_slice(&self.count.to_le_bytes());
        h[16..24].copy_from_slice(&blocks.to_le_bytes());
        let c = check(&h[..56]);
        h[56..].copy_from_slice(&c);
        let named = !self.tmp.as_os_str().is_empty();
        let shown = if named { &self.tmp } else { &self.path };
        self.file
            .write_all_at(&h, 0)
            .ctx(shown, "write index run")?;
        if named {
            self.file.sync_all().ctx(shown, "fsync index run")?;
            std::fs::rename(&self.tmp, &self.path).ctx(&self.path, "rename index run")?;
        }
        Ok(Run {
            number: self.number,
            file: self.file,
            path: self.path,
            count: self.count,
            fence: self.fence,
        })
    }
}

/// Reads a run's records in order.
struct RunCursor<'a> {
    run: &'a Run,
    next_block: usize,
    buf: Vec<u8>,
    blocks_in_buf: usize,
    pos: usize,
    left_in_block: usize,
    block_in_buf: usize,
}

impl<'a> RunCursor<'a> {
    fn new(run: &'a Run) -> RunCursor<'a> {
        RunCursor {
            run,
            next_block: 0,
            buf: Vec::new(),
            blocks_in_buf: 0,
            pos: 0,
            left_in_block: 0,
            block_in_buf: 0,
        }
    }

    fn next(&mut self) -> Result<Option<(ChunkId, Loc)>> {
        while self.left_in_block == 0 {
            self.block_in_buf += 1;
            if self.block_in_buf >= self.blocks_in_buf {
                let total = self.run.fence.len();
                if self.next_block >= total {
                    return Ok(None);
                }
                let n = (total - self.next_block).min(SCAN_BLOCKS);
                self.buf.resize(n * BLOCK, 0);
                let at = RUN_HEADER as u64 + (self.next_block * BLOCK) as u64;
                let got = read_full_at(&self.run.file, &mut self.buf, at)
                    .ctx(&self.run.path, "read index run")?;
                if got != self.buf.len() {
                    return Err(self.run.damaged("short"));
                }
                self.blocks_in_buf = n;
                self.block_in_buf = 0;
                self.next_block += n;
            }
            let b = self.next_block - self.blocks_in_buf + self.block_in_buf;
            let blk = &self.buf[self.block_in_buf * BLOCK..(self.block_in_buf + 1) * BLOCK];
            if check(&blk[..BLOCK - 8]) != blk[BLOCK - 8..] {
                return Err(self.run.damaged(format!("block {b} is damaged")));
            }
            self.left_in_block = self.run.records_in(b);
            self.pos = self.block_in_buf * BLOCK;
        }
        let r = decode_record(&self.buf[self.pos..self.pos + RECORD]);
        self.pos += RECORD;
        self.left_in_block -= 1;
        Ok(Some(r))
    }
}

/// One source of a merged iteration.
enum Source<'a> {
    Run(RunCursor<'a>),
    Table(std::vec::IntoIter<(ChunkId, Loc)>),
}

impl Source<'_> {
    fn next(&mut self) -> Result<Option<(ChunkId, Loc)>> {
        match self {
            Source::Run(c) => c.next(),
            Source::Table(it) => Ok(it.next()),
        }
    }
}

/// Every entry of the index in chunk ID order; entries of one ID oldest first (see
/// [`ChunkIndex::merged`]).
pub struct Merged<'a> {
    sources: Vec<Source<'a>>,
    heads: Vec<Option<(ChunkId, Loc)>>,
    heap: BinaryHeap<Reverse<(ChunkId, usize)>>,
}

impl Merged<'_> {
    /// The next entry (all entries, those of dead packs too).
    pub fn next_entry(&mut self) -> Result<Option<(ChunkId, Loc)>> {
        let Some(Reverse((_, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let out = self.heads[i].take();
        if let Some(x) = self.sources[i].next()? {
            self.heap.push(Reverse((x.0, i)));
            self.heads[i] = Some(x);
        }
        Ok(out)
    }
}

/// Where each chunk is: the runs, the in-memory table and what they cover.
pub struct ChunkIndex {
    /// `LIB/index`.
    dir: PathBuf,
    /// Whether runs and the catalog may be written there (a writer); a reader writes its
    /// private runs anonymously into `spill`.
    publish: bool,
    spill: PathBuf,
    runs: Vec<Run>,
    table: HashMap<ChunkId, Loc>,
    /// Entries of chunks already in `table` (the same chunk in another pack): rare.
    extra: Vec<(ChunkId, Loc)>,
    /// What runs + table hold of each pack.
    covered: BTreeMap<u32, Covered>,
    /// Runs written while loading that no catalog names yet (see
    /// [`spill_table`](Self::spill_table)).
    unpublished: bool,
    /// How many of `runs` (the oldest) a published catalog names.
    base: usize,
    next_run: u64,
    /// Distinct chunks of live packs, `u64::MAX` when unknown (computed on demand).
    count: AtomicU64,
    /// Set when a lookup found a damaged block.
    broken: AtomicBool,
}

const UNKNOWN: u64 = u64::MAX;

/// What [`ChunkIndex::open`] found of a published index.
pub struct Opened {
    /// The index (empty if nothing usable was published).
    pub index: ChunkIndex,
    /// Why the published index was not used, when it was not.
    pub discarded: Option<String>,
}

impl ChunkIndex {
    /// An empty index for the library whose index folder is `dir`. `publish` says whether it
    /// may write there; otherwise private runs go to `spill` (unlinked at once).
    pub fn empty(dir: &Path, publish: bool, spill: &Path) -> ChunkIndex {
        ChunkIndex {
            dir: dir.to_path_buf(),
            publish,
            spill: spill.to_path_buf(),
            runs: Vec::new(),
            table: HashMap::new(),
            extra: Vec::new(),
            covered: BTreeMap::new(),
            unpublished: false,
            base: 0,
            next_run: 1,
            count: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        }
    }

    /// Opens the index published in `dir` (its catalog and runs), or an empty one when there
    /// is none or it is damaged (the reason is returned; the caller rebuilds from the packs).
    /// A writer (`publish`) also deletes every file of `dir` the catalog does not name.
    pub fn open(dir: &Path, publish: bool, spill: &Path) -> Result<Opened> {
        let mut ix = ChunkIndex::empty(dir, publish, spill);
        let discarded = match ix.load_catalog() {
            Ok(true) => None,
            Ok(false) => Some("no chunk index yet".to_string()),
            Err(e @ Error::BadIndex { .. }) => {
                tracing::warn!("{e}");
                ix = ChunkIndex::empty(dir, publish, spill);
                // Never used again: the rebuild publishes a new one.
                ix.discard_published();
                Some(e.to_string())
            }
            Err(e) => return Err(e),
        };
        // Run numbers are never reused, not even across a rebuild: a reader that read an old
        // catalog must never open a new run under a name the old catalog gave another.
        let highest = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let num = name.trim_start_matches('.').strip_prefix("run-")?;
                num.get(..16)?.parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0);
        ix.next_run = ix.next_run.max(highest + 1);
        if publish {
            ix.clean()?;
        }
        Ok(Opened {
            index: ix,
            discarded,
        })
    }

    fn catalog_path(&self) -> PathBuf {
        self.dir.join(CATALOG)
    }

    /// Reads the catalog and opens its runs. A reader racing a writer that replaces runs
    /// reads the catalog again.
    fn load_catalog(&mut self) -> Result<bool> {
        let path = self.catalog_path();
        for _ in 0..8 {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(Error::io(&path, "read chunk index catalog", e)),
            };
            let (next_run, distinct, runs, covered) = decode_catalog(&bytes, &path)?;
            let mut open = Vec::new();
            let mut vanished = false;
            for (n, count) in runs {
                let rp = self.dir.join(run_name(n));
                let f = match File::open(&rp) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        vanished = true;
                        break;
                    }
                    Err(e) => return Err(Error::io(&rp, "open index run", e)),
                };
                let run = Run::open(&rp, n, f)?;
                if run.count != count {
                    return Err(Error::BadIndex {
                        path: rp,
                        reason: format!("holds {} records, the catalog says {count}", run.count),
                    });
                }
                open.push(run);
            }
            if vanished {
                // Replaced by a writer between our reads of the catalog and the run.
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            self.base = open.len();
            self.runs = open;
            self.next_run = next_run;
            self.covered = covered;
            self.count.store(distinct, Ordering::Relaxed);
            return Ok(true);
        }
        Err(Error::BadIndex {
            path,
            reason: "its runs kept being replaced while it was read".into(),
        })
    }

    /// Deletes what the catalog does not name (a writer's leftovers).
    fn clean(&self) -> Result<()> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&self.dir, "list chunk index", e)),
        };
        let keep: std::collections::HashSet<String> =
            self.runs.iter().map(|r| run_name(r.number)).collect();
        for item in rd {
            let item = item.ctx(&self.dir, "list chunk index")?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name == CATALOG || keep.contains(&name) {
                continue;
            }
            tracing::debug!(file = %item.path().display(), "removing a chunk index leftover");
            std::fs::remove_file(item.path()).ctx(item.path(), "remove chunk index leftover")?;
        }
        Ok(())
    }

    /// Forgets everything (before a rebuild): the runs are closed, the table emptied.
    pub fn reset(&mut self) {
        self.runs.clear();
        self.table = HashMap::new();
        self.extra = Vec::new();
        self.covered.clear();
        self.unpublished = false;
        self.base = 0;
        self.count.store(0, Ordering::Relaxed);
    }

    /// What the index holds of pack `n`.
    pub fn covered(&self, n: u32) -> Option<Covered> {
        self.covered.get(&n).copied()
    }

    /// Every pack the index holds entries of.
    pub fn covered_packs(&self) -> impl Iterator<Item = u32> + '_ {
        self.covered.keys().copied()
    }

    /// Records that the index now holds pack `n` as `c` (its entries were added).
    pub fn set_covered(&mut self, n: u32, c: Covered) {
        self.covered.insert(n, c);
    }

    /// Marks the count of distinct chunks unknown (packs were removed, or left out).
    pub fn count_unknown(&self) {
        self.count.store(UNKNOWN, Ordering::Relaxed);
    }

    /// Whether the count of distinct chunks is being kept (callers then say, on insert,
    /// whether a chunk was already there).
    pub fn counting(&self) -> bool {
        self.count.load(Ordering::Relaxed) != UNKNOWN
    }

    /// Whether a lookup found the index damaged (the caller falls back to the packs).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// The first entry of `id` (oldest first) whose pack `live` accepts.
    pub fn get(&self, id: &ChunkId, live: &dyn Fn(u32) -> bool) -> Result<Option<Loc>> {
        let mut found = None;
        for run in &self.runs {
            let hit = run
                .find(id, &mut |loc| {
                    if live(loc.pack) {
                        found = Some(loc);
                        true
                    } else {
                        false
                    }
                })
                .inspect_err(|_| self.broken.store(true, Ordering::Relaxed))?;
            if hit {
                return Ok(found);
            }
        }
        if let Some(l) = self.table.get(id)
            && live(l.pack)
        {
            return Ok(Some(*l));
        }
        if !self.extra.is_empty() {
            return Ok(self
                .extra
                .iter()
                .find(|(x, l)| x == id && live(l.pack))
                .map(|x| x.1));
        }
        Ok(None)
    }

    /// Adds an entry (a chunk just committed, or read from a pack index's tail). `known`
    /// says whether the chunk was already indexed in a live pack (the caller looked it up),
    /// for the count of distinct chunks.
    pub fn insert(&mut self, id: ChunkId, loc: Loc, known: bool) {
        match self.table.entry(id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(loc);
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                if *o.get() != loc {
                    self.extra.push((id, loc));
                }
            }
        }
        if !known {
            let c = self.count.load(Ordering::Relaxed);
            if c != UNKNOWN {
                self.count.store(c + 1, Ordering::Relaxed);
            }
        }
    }

    /// Entries in the in-memory table.
    pub fn table_len(&self) -> usize {
        self.table.len() + self.extra.len()
    }

    /// Whether the table is full and should be flushed.
    pub fn table_full(&self) -> bool {
        self.table_len() >= TABLE_MAX
    }

    /// The number of distinct chunks of live packs: known after most opens and kept up to
    /// date by [`insert`](Self::insert); otherwise counted by a merged pass (and remembered).
    pub fn count(&self, live: &dyn Fn(u32) -> bool) -> Result<u64> {
        let c = self.count.load(Ordering::Relaxed);
        if c != UNKNOWN {
            return Ok(c);
        }
        let mut n = 0u64;
        self.for_each_located(live, &mut |_, _| {
            n += 1;
            Ok(())
        })?;
        self.count.store(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Every entry, runs and table merged, in chunk ID order.
    pub fn merged(&self) -> Result<Merged<'_>> {
        let mut sources: Vec<Source<'_>> = self
            .runs
            .iter()
            .map(|r| Source::Run(RunCursor::new(r)))
            .collect();
        let mut table: Vec<(ChunkId, Loc)> = self
            .table
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain(self.extra.iter().copied())
            .collect();
        // Stable: extra entries stay after the table's entry of the same chunk.
        table.sort_by_key(|x| x.0);
        sources.push(Source::Table(table.into_iter()));
        let mut m = Merged {
            heads: (0..sources.len()).map(|_| None).collect(),
            sources,
            heap: BinaryHeap::new(),
        };
        for i in 0..m.sources.len() {
            if let Some(x) = m.sources[i].next()? {
                m.heap.push(Reverse((x.0, i)));
                m.heads[i] = Some(x);
            }
        }
        Ok(m)
    }

    /// Calls `f` once per chunk with the location a lookup answers (the first entry of a
    /// live pack), in chunk ID order: a streamed pass over the whole index.
    pub fn for_each_located(
        &self,
        live: &dyn Fn(u32) -> bool,
        f: &mut dyn FnMut(ChunkId, Loc) -> Result<()>,
    ) -> Result<()> {
        let mut m = self.merged()?;
        let mut last: Option<ChunkId> = None;
        while let Some((id, loc)) = m.next_entry()? {
            if last == Some(id) || !live(loc.pack) {
                continue;
            }
            last = Some(id);
            f(id, loc)?;
        }
        Ok(())
    }

    /// Writes the table to a new run (or, for a reader, a private one). A writer then merges
    /// runs as its policy says and publishes the catalog.
    pub fn flush(&mut self, live: &dyn Fn(u32) -> bool) -> Result<()> {
        if self.table_len() > 0 {
            let mut entries: Vec<(ChunkId, Loc)> = self
                .table
                .drain()
                .chain(self.extra.drain(..))
                .filter(|(_, l)| live(l.pack))
                .collect();
            entries.sort_by_key(|x| x.0);
            self.table = HashMap::new();
            self.extra = Vec::new();
            let n = self.take_number();
            let mut w = RunWriter::create(self.run_dir(), n, self.publish)?;
            for (id, loc) in &entries {
                w.push(id, loc)?;
            }
            drop(entries);
            self.runs.push(w.finish()?);
        }
        while self.runs.len() >= 2 {
            let a = self.runs[self.runs.len() - 2].count;
            let b = self.runs[self.runs.len() - 1].count;
            if self.runs.len() > MAX_RUNS || a < b.saturating_mul(RATIO) {
                let from = self.runs.len() - 2;
                self.merge_from(from, live)?;
            } else {
                break;
            }
        }
        self.publish_catalog(live)
    }

    /// Merges every run and the table into one run without the entries of dead packs (after
    /// a collection or a rebuild), and publishes it.
    pub fn compact(&mut self, live: &dyn Fn(u32) -> bool) -> Result<()> {
        if self.runs.is_empty() {
            // A small index lives in the table alone: drop what is dead, count on demand.
            self.table.retain(|_, l| live(l.pack));
            self.extra.retain(|(_, l)| live(l.pack));
            self.covered.retain(|n, _| live(*n));
            self.count_unknown();
            return Ok(());
        }
        // The table first becomes a (private) run so the merge reads sorted sources only.
        if self.table_len() > 0 {
            self.spill_table(live)?;
        }
        self.merge_from(0, live)?;
        self.covered.retain(|n, _| live(*n));
        self.publish_catalog(live)
    }

    /// After loading: merges the runs spilled while loading (the table too) into one, leaving
    /// the published runs as they are, so the cost follows what was read, not the index's
    /// size; a writer then publishes (and merges further as its policy says).
    pub fn merge_loaded(&mut self, live: &dyn Fn(u32) -> bool) -> Result<()> {
        if !self.unpublished {
            return Ok(());
        }
        if self.table_len() > 0 {
            self.spill_table(live)?;
        }
        let from = self.base.min(self.runs.len());
        if self.runs.len() - from > 1 || (self.publish && self.runs.len() > from) {
            self.merge_from(from, live)?;
        }
        if self.publish {
            self.flush(live)?;
        }
        Ok(())
    }

    /// Writes the table to a private run, published by nothing yet (a rebuild spilling what
    /// it read; [`compact`](Self::compact) merges and publishes them).
    pub fn spill_table(&mut self, live: &dyn Fn(u32) -> bool) -> Result<()> {
        self.unpublished = true;
        let mut entries: Vec<(ChunkId, Loc)> = self
            .table
            .drain()
            .chain(self.extra.drain(..))
            .filter(|(_, l)| live(l.pack))
            .collect();
        entries.sort_by_key(|x| x.0);
        self.table = HashMap::new();
        self.extra = Vec::new();
        let n = self.take_number();
        let mut w = RunWriter::create(&self.spill, n, false)?;
        for (id, loc) in &entries {
            w.push(id, loc)?;
        }
        self.runs.push(w.finish()?);
        Ok(())
    }

    fn run_dir(&self) -> &Path {
        if self.publish { &self.dir } else { &self.spill }
    }

    fn take_number(&mut self) -> u64 {
        let n = self.next_run;
        self.next_run += 1;
        n
    }

    /// Merges runs `from..` into one (streamed), dropping entries of dead packs and repeats
    /// of the same entry; counts the distinct chunks when the merge covers every run.
    fn merge_from(&mut self, from: usize, live: &dyn Fn(u32) -> bool) -> Result<()> {
        let n = self.take_number();
        let mut w = RunWriter::create(self.run_dir(), n, self.publish)?;
        let mut distinct = 0u64;
        {
            let mut sources: Vec<Source<'_>> = self.runs[from..]
                .iter()
                .map(|r| Source::Run(RunCursor::new(r)))
                .collect();
            let mut heads: Vec<Option<(ChunkId, Loc)>> = Vec::with_capacity(sources.len());
            let mut heap = BinaryHeap::new();
            for (i, s) in sources.iter_mut().enumerate() {
                let h = s.next()?;
                if let Some(x) = h {
                    heap.push(Reverse((x.0, i)));
                }
                heads.push(h);
            }
            let mut m = Merged {
                sources,
                heads,
                heap,
            };
            let mut last: Option<(ChunkId, Loc)> = None;
            while let Some((id, loc)) = m.next_entry()? {
                if !live(loc.pack) || last == Some((id, loc)) {
                    continue;
                }
                if last.is_none_or(|(l, _)| l != id) {
                    distinct += 1;
                }
                last = Some((id, loc));
                w.push(&id, &loc)?;
            }
        }
        let run = w.finish()?;
        self.runs.truncate(from);
        self.runs.push(run);
        if from == 0 && self.table_len() == 0 {
            self.count.store(distinct, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Publishes the catalog naming the runs (a writer with an empty table only: the catalog
    /// must describe what the runs hold), then deletes runs it no longer names.
    fn publish_catalog(&mut self, live: &dyn Fn(u32) -> bool) -> Result<()> {
        if !self.publish || self.table_len() > 0 {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).ctx(&self.dir, "create chunk index folder")?;
        crate::writer::sync_dir(&self.dir)?;
        self.covered.retain(|n, _| live(*n));
        // The distinct count is stored only when known; unknown is written as such.
        let distinct = self.count.load(Ordering::Relaxed);
        let bytes = encode_catalog(
            self.next_run,
            distinct,
            self.runs.iter().map(|r| (r.number, r.count)),
            &self.covered,
        );
        write_atomic(&self.catalog_path(), &bytes)?;
        self.unpublished = false;
        self.base = self.runs.len();
        self.clean()
    }

    /// Removes the published catalog (after damage was found), so the next open rebuilds.
    pub fn discard_published(&self) {
        if self.publish {
            let _ = std::fs::remove_file(self.catalog_path());
        }
    }

    /// How many runs are open.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Whether runs were spilled that no catalog names yet.
    pub fn has_unpublished(&self) -> bool {
        self.unpublished
    }

    /// Resident bytes of the index structure (fences and table), for reports and tests.
    pub fn memory(&self) -> usize {
        self.runs.iter().map(|r| r.fence.len() * 32).sum::<usize>()
            + self.table.capacity() * (32 + std::mem::size_of::<Loc>() + 1)
            + self.extra.capacity() * std::mem::size_of::<(ChunkId, Loc)>()
    }

    /// Whether a writer may publish.
    pub fn publishes(&self) -> bool {
        self.publish
    }

    /// Records the packs whose runs' coverage was read from the catalog but that are not
    /// live: their entries are ignored, the distinct count is recomputed on demand.
    pub fn drop_dead_coverage(&mut self, live: &dyn Fn(u32) -> bool) -> bool {
        let before = self.covered.len();
        self.covered.retain(|n, _| live(*n));
        let dropped = self.covered.len() != before;
        if dropped {
            self.count_unknown();
        }
        dropped
    }
}

type Catalog = (u64, u64, Vec<(u64, u64)>, BTreeMap<u32, Covered>);

fn encode_catalog(
    next_run: u64,
    distinct: u64,
    runs: impl Iterator<Item = (u64, u64)>,
    covered: &BTreeMap<u32, Covered>,
) -> Vec<u8> {
    let runs: Vec<_> = runs.collect();
    let mut b = Vec::with_capacity(40 + runs.len() * 16 + covered.len() * 32);
    b.extend_from_slice(CATALOG_MAGIC);
    b.extend_from_slice(&next_run.to_le_bytes());
    b.extend_from_slice(&distinct.to_le_bytes());
    b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    b.extend_from_slice(&(covered.len() as u32).to_le_bytes());
    for (n, c) in &runs {
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&c.to_le_bytes());
    }
    for (n, c) in covered {
        b.extend_from_slice(&n.to_le_bytes());
        b.push(c.format);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&c.idx_len.to_le_bytes());
        b.extend_from_slice(&c.data_end.to_le_bytes());
        b.extend_from_slice(&c.last_check);
    }
    let c = check(&b);
    b.extend_from_slice(&c);
    b
}

fn decode_catalog(b: &[u8], path: &Path) -> Result<Catalog> {
    let bad = |reason: &str| Error::BadIndex {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    if b.len() < 40 || &b[..8] != CATALOG_MAGIC {
        return Err(bad("not a chunk index catalog"));
    }
    let (body, c) = b.split_at(b.len() - 8);
    if check(body) != c {
        return Err(bad("check value does not match"));
    }
    let next_run = u64_at(b, 8);
    let distinct = u64_at(b, 16);
    let nruns = u32_at(b, 24) as usize;
    let npacks = u32_at(b, 28) as usize;
    if body.len() != 32 + nruns * 16 + npacks * 32 {
        return Err(bad("length does not match its counts"));
    }
    let mut at = 32;
    let mut runs = Vec::with_capacity(nruns);
    for _ in 0..nruns {
        let n = u64_at(b, at);
        if n >= next_run {
            return Err(bad("names a run above its next number"));
        }
        runs.push((n, u64_at(b, at + 8)));
        at += 16;
    }
    let mut covered = BTreeMap::new();
    for _ in 0..npacks {
        let n = u32_at(b, at);
        let c = Covered {
            format: b[at + 4],
            idx_len: u64_at(b, at + 8),
            data_end: u64_at(b, at + 16),
            last_check: b[at + 24..at + 32].try_into().expect("8 bytes"),
        };
        covered.insert(n, c);
        at += 32;
    }
    Ok((next_run, distinct, runs, covered))
}
