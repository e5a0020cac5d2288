//! The content library: a single-instance chunk store shared by every package and version.
//!
//! # Layout
//! ```text
//! LIB/library.toml                      configuration (roots, reserve, chunk sizes, ...)
//! LIB/lock                              flock: exclusive for writers, shared for readers that
//!                                       keep writers out (views beside a writer take none)
//! LIB/pack-seq                          above every pack number ever deleted (never reused)
//! LIB/manifests/<PKG>/<VERSION>.fmf     canonical manifests; their presence is a reference
//! LIB/pending/<HASH>.fmf                leases: manifests of transfers not yet committed
//! LIB/quick-check/<PKG>.fqc             inodes and ctimes the last snapshot saw (ingest)
//! LIB/index/{catalog,run-N.fci}         the global chunk index, derived from the pack indexes
//!                                       ([`crate::chunk_index`])
//! ROOT/packs/pack-NNNNNNNN.{dat,idx}    chunk data and its index, on each storage root
//! ROOT/quarantine/                      what `repair` could not use, set aside (never read)
//! ```
//! # Invariants
//! - Chunk bytes are durable before an index entry names them, and every chunk a manifest
//!   names is indexed and durable before the manifest file appears (atomic rename + dir fsync).
//! - A chunk is referenced by the manifests that list it, and protected from collection by
//!   the leases (pending manifests) of transfers under way; reference counts are derived from
//!   the files when needed (stats, gc) rather than stored, so they can never drift.
//! - Opening for write changes only what a crash can leave: index and pack bytes past the
//!   committed length (see [`crate::pack`]), a pack whose deletion was interrupted
//!   (tombstone), an index created without its data file, stray temporary manifests. Anything
//!   else (a damaged header or entry, a missing index or data file, a newer format, a missing
//!   storage root) refuses the open with one line naming the file, and nothing is changed:
//!   `freight library repair` ([`crate::repair`]) rebuilds what the data still holds.
//! - Every read of a format-2 pack checks the record header in front of the chunk: a stale
//!   location can never return another chunk's bytes.

use crate::chunk_index::{ChunkIndex, Covered};
use crate::chunk_table::{ChunkTable, ChunkTableBuilder};
use crate::config::{CONFIG_FILE, LibraryConfig};
use crate::engine::{Engine, IoMode, Pending};
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, PackageId};
use crate::manifest::{self, Manifest};
use crate::pack::{self, FLAG_ZSTD, Loc, PACK_HEADER, PackFile, RECORD_HEADER};
use crate::spill::{SORT_MEMORY, Sorted, SortedReader, Sorter};
use crate::writer::{Committed, PackInfo, PackNumbers, Reuse, Writer, sync_dir};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long a lease (the pending manifest of an unfinished transfer) protects its chunks from
/// collection after it was last taken or renewed, by default.
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Whether a library is opened to read or to change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Shared lock; nothing is changed. Damaged packs are left out (and listed by
    /// [`Library::damage`]), so what is intact can still be read and verified.
    Read,
    /// Exclusive lock; crash leftovers are cleaned; any damage refuses the open.
    Write,
    /// Exclusive lock for `freight library repair`: crash leftovers are cleaned, damaged packs
    /// are left out and listed by [`Library::damage`] instead of refusing the open.
    Repair,
}

/// A pack the library could not take as it is (see [`Library::damage`]).
#[derive(Clone, Debug)]
pub struct Damaged {
    /// Pack number.
    pub pack: u32,
    /// Index of its storage root.
    pub root: usize,
    /// Its data file, if present.
    pub data: Option<PathBuf>,
    /// Its index file, if present.
    pub idx: Option<PathBuf>,
    /// The file the damage is in.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

impl Damaged {
    fn error(&self) -> Error {
        Error::NeedsRepair {
            path: self.path.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// A pack's files as found on the roots: (root, path) of its data, index and tombstone.
#[derive(Default)]
struct FoundPack {
    data: Option<(usize, PathBuf)>,
    idx: Option<(usize, PathBuf)>,
    tomb: Option<(usize, PathBuf)>,
}

/// An open content library.
pub struct Library {
    dir: PathBuf,
    config: LibraryConfig,
    roots: Vec<PathBuf>,
    engine: Engine,
    access: Access,
    /// The `LIB/lock` held (none for a view opened beside a writer).
    _lock: Option<File>,
    /// Opened by [`Library::open_read_only`]: no lock, pack files pinned while it lives.
    view: bool,
    pub(crate) packs: BTreeMap<u32, PackInfo>,
    /// Where each chunk is ([`crate::chunk_index`]): every entry of every pack in `packs`,
    /// and possibly entries of packs gone since (ignored).
    pub(crate) index: ChunkIndex,
    files: Mutex<HashMap<u32, Arc<File>>>,
    numbers: Arc<PackNumbers>,
    damage: Vec<Damaged>,
    lease_timeout: Duration,
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // A bare file name lives in the current directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name");
        return Err(Error::io(path, "write", e));
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let res = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(&tmp, "create")?;
        std::io::Write::write_all(&mut &f, bytes).ctx(&tmp, "write")?;
        f.sync_all().ctx(&tmp, "fsync")?;
        std::fs::rename(&tmp, path).ctx(path, "rename into place")?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Removes `path` if it exists.
fn remove_if_present(path: &Path, op: &'static str) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, op, e)),
    }
}

/// Listings a view makes at most while packs keep vanishing under it.
const VIEW_PASSES: usize = 16;
/// Reads of a pack that looks damaged before a view believes it.
const VIEW_TRIES: usize = 3;

/// What loading one pack into a view did.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ViewPack {
    /// The published chunk index disagrees with this pack (why).
    Stale(String),
    /// Its committed chunks are in the view.
    Loaded,
    /// Left out: nothing committed yet, or damaged (listed).
    Left,
    /// Deleted while the view was being taken.
    Vanished,
}

/// How many pack files a view keeps open: a quarter of the descriptor limit, so that what
/// the reader does with the view (materialise, verify) still has descriptors.
pub fn pin_budget() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft / 4).unwrap_or(usize::MAX).max(16)
}

/// Chunks a manifest names from which [`Library::missing`] merge-joins them with the index
/// (when they are also an eighth of the library or more) instead of looking each one up.
const MERGE_JOIN_MIN: usize = 100_000;

/// The chunk index's folder inside the library ([`crate::chunk_index`]).
pub const INDEX_DIR: &str = "index";

/// What adding a pack's entries to the chunk index found.
enum Indexed {
    /// Its committed entries are indexed: where they end in the data file, and the
    /// committed length of its index.
    Ok { end: u64, committed: u64 },
    /// The pack is damaged: in its data file or its index, and why.
    Damaged { in_data: bool, reason: String },
    /// The published chunk index disagrees with this pack (why).
    Stale(String),
}

/// Reads and checks the header of index file `f` (at `path`).
fn read_index_head(
    f: &File,
    path: &Path,
) -> Result<std::result::Result<pack::IndexHead, pack::IndexDamage>> {
    let file_len = f.metadata().ctx(path, "stat index")?.len();
    let mut head = [0u8; pack::IDX_HEADER];
    let got = read_full_at(f, &mut head, 0).ctx(path, "read index")?;
    Ok(pack::parse_index_head(&head[..got], file_len))
}

/// Reads into `buf` at `at` until it is full or the file ends; returns the bytes read.
pub(crate) fn read_full_at(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl Library {
    /// Creates a new, empty library at `dir` with `config`.
    pub fn init(dir: &Path, config: &LibraryConfig) -> Result<()> {
        let cfg_path = dir.join(CONFIG_FILE);
        config.validate(&cfg_path)?;
        if cfg_path.exists() {
            return Err(Error::BadLibrary {
                path: dir.to_path_buf(),
                reason: "a library already exists here".into(),
            });
        }
        std::fs::create_dir_all(dir.join("manifests")).ctx(dir, "create library")?;
        for root in config.resolved_roots(dir) {
            std::fs::create_dir_all(root.join("packs")).ctx(&root, "create storage root")?;
        }
        let lock = dir.join("lock");
        File::create(&lock).ctx(&lock, "create lock")?;
        write_atomic(&cfg_path, config.to_toml().as_bytes())
    }

    /// Opens the library at `dir`. `io` overrides the configured I/O mode.
    pub fn open(dir: &Path, access: Access, io: Option<IoMode>) -> Result<Library> {
        let cfg_path = dir.join(CONFIG_FILE);
        if !cfg_path.exists() {
            return Err(Error::BadLibrary {
                path: dir.to_path_buf(),
                reason: "not a Freight library; create it with `freight library init`".into(),
            });
        }
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx(&lock_path, "open lock")?;
        let locked = match access {
            Access::Write | Access::Repair => lock.try_lock(),
            Access::Read => lock.try_lock_shared(),
        };
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, "lock", e)),
        }
        let config = LibraryConfig::load(dir)?;
        let engine = Engine::new(io.or_else(IoMode::from_env).unwrap_or(config.io))?;
        let roots = config.resolved_roots(dir);
        let seq = dir.join("pack-seq");
        let numbers = Arc::new(PackNumbers::unloaded(&seq));
        let mut lib = Library {
            dir: dir.to_path_buf(),
            config,
            roots,
            engine,
            access,
            _lock: Some(lock),
            view: false,
            packs: BTreeMap::new(),
            index: ChunkIndex::empty(&dir.join(INDEX_DIR), false, dir),
            files: Mutex::new(HashMap::new()),
            numbers,
            damage: Vec::new(),
            lease_timeout: LEASE_TIMEOUT,
        };
        lib.index = lib.open_index(access != Access::Read)?;
        if access == Access::Repair {
            // Repair looks for damage in every committed entry, including those the published
            // index covers (which an ordinary open does not read again): index everything anew.
            lib.index.discard_published();
            lib.index.reset();
        }
        let floor = lib.load_packs()?;
        lib.numbers = Arc::new(match PackNumbers::load(&seq, floor) {
            Err(Error::NeedsRepair { path, reason }) if access == Access::Repair => {
                // Which numbers were deleted is unknown: jump well past any of them.
                tracing::warn!(
                    "{}: {reason}; starting new pack numbers well above the highest found",
                    path.display()
                );
                PackNumbers::reset(&seq, floor.saturating_add(1 << 16))?
            }
            other => other?,
        });
        if access != Access::Read {
            lib.clean_manifest_temps()?;
        }
        Ok(lib)
    }

    /// Opens the library at `dir` to read it beside whoever may be writing it (a running
    /// `freightd`, an ingest, a collection): a consistent view, taken without the lock.
    ///
    /// Nothing is ever changed: no repair, truncation, deletion or cleaning. Each pack's index
    /// is read only up to the committed length its header records, so a writer appending
    /// meanwhile is ignored (chunks committed after the view was opened are not in it). Every
    /// pack's data file is opened while the view is taken and stays open as long as it lives
    /// (as [`read_view`](Self::read_view) does), so a collection that deletes a pack
    /// afterwards changes nothing for the view: an unlinked file stays readable while open,
    /// and pack numbers are never reused. A pack deleted while the view is being taken is
    /// left out, and the roots are listed again until no pack vanished under the listing, so
    /// the chunks a collection moved out of it are found in the pack they moved to. Only past
    /// [`pin_budget`] packs (a quarter of the descriptor limit) are the rest opened when first
    /// read; such a pack, if collected in between, fails with one line naming it and saying
    /// to retry. Damaged packs are left out and listed by [`damage`](Self::damage), as with
    /// [`Access::Read`]; what could be a writer's change in progress is read again first.
    pub fn open_read_only(dir: &Path, io: Option<IoMode>) -> Result<Library> {
        if !dir.join(CONFIG_FILE).exists() {
            return Err(Error::BadLibrary {
                path: dir.to_path_buf(),
                reason: "not a Freight library; create it with `freight library init`".into(),
            });
        }
        let config = LibraryConfig::load(dir)?;
        let engine = Engine::new(io.or_else(IoMode::from_env).unwrap_or(config.io))?;
        let roots = config.resolved_roots(dir);
        let numbers = Arc::new(PackNumbers::unloaded(&dir.join("pack-seq")));
        let mut lib = Library {
            dir: dir.to_path_buf(),
            config,
            roots,
            engine,
            access: Access::Read,
            _lock: None,
            view: true,
            packs: BTreeMap::new(),
            index: ChunkIndex::empty(&dir.join(INDEX_DIR), false, dir),
            files: Mutex::new(HashMap::new()),
            numbers,
            damage: Vec::new(),
            lease_timeout: LEASE_TIMEOUT,
        };
        lib.index = lib.open_index(false)?;
        lib.load_view()?;
        Ok(lib)
    }

    /// Whether this library was opened by [`open_read_only`](Self::open_read_only).
    pub fn is_view(&self) -> bool {
        self.view
    }

    /// Loads the packs of a view: lists the roots and loads every pack not yet seen, again
    /// while a pass found a pack deleted under it (its live chunks went to a newer pack,
    /// committed before the deletion began, which the next listing shows).
    fn load_view(&mut self) -> Result<()> {
        if let Some(stale) = self.load_view_passes()? {
            // The published index disagrees with a pack: build a private one instead.
            tracing::warn!("{stale}; this reader indexes the packs itself");
            self.index.reset();
            self.packs.clear();
            self.damage.clear();
            self.files.lock().unwrap_or_else(|e| e.into_inner()).clear();
            if let Some(stale) = self.load_view_passes()? {
                return Err(Error::BadLibrary {
                    path: self.dir.clone(),
                    reason: format!("{stale} while it was being read; retry"),
                });
            }
        }
        self.finish_index()
    }

    /// The listing passes of [`load_view`](Self::load_view); `Some(reason)` when the
    /// published chunk index disagrees with a pack.
    fn load_view_passes(&mut self) -> Result<Option<String>> {
        let mut budget = pin_budget();
        let mut seen: HashSet<u32> = HashSet::new();
        for _ in 0..VIEW_PASSES {
            let mut vanished = false;
            let listed = self.list_packs()?;
            let live: HashSet<u32> = listed.keys().copied().collect();
            for (n, f) in listed {
                if !seen.insert(n) {
                    continue;
                }
                match self.load_view_pack(n, &f, &mut budget, &live)? {
                    ViewPack::Vanished => vanished = true,
                    ViewPack::Stale(reason) => return Ok(Some(reason)),
                    _ => {}
                }
            }
            if !vanished {
                return Ok(None);
            }
        }
        Err(Error::BadLibrary {
            path: self.dir.clone(),
            reason: format!(
                "packs were deleted under this reader on each of {VIEW_PASSES} listings (a garbage collection is under way); retry"
            ),
        })
    }

    /// Loads pack `n` into a view, reading again (up to [`VIEW_TRIES`] times) what looks
    /// damaged, in case it was a writer's change in progress.
    fn load_view_pack(
        &mut self,
        n: u32,
        f: &FoundPack,
        budget: &mut usize,
        live: &HashSet<u32>,
    ) -> Result<ViewPack> {
        let root = f
            .data
            .as_ref()
            .or(f.idx.as_ref())
            .or(f.tomb.as_ref())
            .map_or(0, |x| x.0);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_view_pack(n, root, budget, live)? {
                Err(d) if tries < VIEW_TRIES => {
                    tracing::debug!(pack = n, "{}; reading it again", d.reason);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(d) => {
                    self.damaged(d)?;
                    return Ok(ViewPack::Left);
                }
                Ok(outcome) => return Ok(outcome),
            }
        }
    }

    /// One attempt at loading pack `n` into a view: the data file is opened first, then the
    /// index read, so that an index with entries always has the data file they point into.
    fn try_view_pack(
        &mut self,
        n: u32,
        root: usize,
        budget: &mut usize,
        live: &HashSet<u32>,
    ) -> Result<std::result::Result<ViewPack, Damaged>> {
        let (data, idx) = pack::paths(&self.roots[root], n);
        let tomb = idx.with_file_name(pack::tombstone_name(n));
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        let file = match File::open(&data) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&data, "open pack", e)),
        };
        let ixf = match File::open(&idx) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&idx, "open index", e)),
        };
        let damaged = |path: &Path, reason: String| Damaged {
            pack: n,
            root,
            data: exists(&data).then(|| data.clone()),
            idx: exists(&idx).then(|| idx.clone()),
            path: path.to_path_buf(),
            reason,
        };
        let Some(ixf) = ixf else {
            // Deleted (index renamed to a tombstone first, data unlinked next), or never had
            // an index.
            if exists(&tomb) || !exists(&data) {
                return Ok(Ok(ViewPack::Vanished));
            }
            return Ok(Err(damaged(&idx, "index is missing".into())));
        };
        if exists(&tomb) {
            // A deletion under way: the index was renamed after it was opened.
            return Ok(Ok(ViewPack::Vanished));
        }
        let head = match read_index_head(&ixf, &idx)? {
            Ok(h) => h,
            Err(d) => return Ok(Err(damaged(&idx, d.to_string()))),
        };
        let named = head.committed > pack::IDX_HEADER as u64 || head.format == 1;
        let Some(file) = file else {
            if !named {
                // Created index first: its data file is not there yet.
                return Ok(Ok(ViewPack::Left));
            }
            return Ok(Err(damaged(
                &data,
                "data file is missing but its index names chunks".into(),
            )));
        };
        let mut hd = [0u8; PACK_HEADER];
        let head_len = read_full_at(&file, &mut hd, 0).ctx(&data, "read pack")?;
        let format = match pack::data_format(&hd[..head_len]) {
            Ok(v) => v,
            // Just created: its header is not written yet, nothing is committed.
            Err(_) if !named => return Ok(Ok(ViewPack::Left)),
            Err(reason) => return Ok(Err(damaged(&data, reason))),
        };
        // Stat the data after the index header was read: every entry it commits was made
        // durable in the data file before the header moved over it.
        let data_len = file.metadata().ctx(&data, "stat pack")?.len();
        let live = |p: u32| live.contains(&p);
        let (end, committed) =
            match self.index_pack(n, &idx, &ixf, head, format, data_len, &live)? {
                Indexed::Ok { end, committed } => (end, committed),
                Indexed::Stale(reason) => return Ok(Ok(ViewPack::Stale(reason))),
                Indexed::Damaged { in_data, reason } => {
                    self.index.count_unknown();
                    let p = if in_data { &data } else { &idx };
                    return Ok(Err(damaged(p, reason)));
                }
            };
        self.packs.insert(
            n,
            PackInfo {
                root,
                data,
                idx,
                len: end,
                idx_len: committed,
                format,
            },
        );
        if *budget > 0 {
            *budget -= 1;
            self.files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n, Arc::new(file));
        }
        Ok(Ok(ViewPack::Loaded))
    }

    /// Opens `dir`, creating a default library there first if there is none.
    pub fn open_or_init(dir: &Path, io: Option<IoMode>) -> Result<Library> {
        if !dir.join(CONFIG_FILE).exists() {
            Library::init(dir, &LibraryConfig::default())?;
        }
        Library::open(dir, Access::Write, io)
    }

    /// Whether crash leftovers may be cleaned.
    fn writes(&self) -> bool {
        self.access != Access::Read
    }

    /// Records damage: refuses the open for writing, is listed otherwise.
    fn damaged(&mut self, d: Damaged) -> Result<()> {
        if self.access == Access::Write {
            return Err(d.error());
        }
        tracing::warn!("{}", d.error());
        self.damage.push(d);
        Ok(())
    }

    /// Loads every pack of every root; returns one past the highest pack number seen.
    fn load_packs(&mut self) -> Result<u32> {
        let found = self.list_packs()?;
        let floor = found.keys().next_back().map_or(1, |n| n.saturating_add(1));
        let live: HashSet<u32> = found.keys().copied().collect();
        let mut stale = None;
        for (n, f) in &found {
            if let Some(reason) = self.load_found(*n, f, &live)? {
                stale = Some(reason);
                break;
            }
        }
        if let Some(reason) = stale {
            // The published index disagrees with the packs: never trust it, rebuild it.
            tracing::warn!("{reason}; rebuilding the chunk index from the pack indexes");
            self.index.discard_published();
            self.index.reset();
            self.packs.clear();
            self.damage.clear();
            let found = self.list_packs()?;
            let live: HashSet<u32> = found.keys().copied().collect();
            for (n, f) in &found {
                if let Some(reason) = self.load_found(*n, f, &live)? {
                    return Err(Error::BadLibrary {
                        path: self.dir.join(INDEX_DIR),
                        reason: format!("{reason} even after a rebuild; remove this folder"),
                    });
                }
            }
        }
        self.finish_index()?;
        Ok(floor)
    }

    /// Opens the published chunk index (a writer also removes what its catalog does not
    /// name); an unusable one is replaced by an empty index that the packs then fill.
    fn open_index(&self, publish: bool) -> Result<ChunkIndex> {
        let ix_dir = self.dir.join(INDEX_DIR);
        let spill = if publish {
            std::fs::create_dir_all(&ix_dir).ctx(&ix_dir, "create chunk index folder")?;
            ix_dir.clone()
        } else {
            std::env::temp_dir()
        };
        let opened = ChunkIndex::open(&ix_dir, publish, &spill)?;
        if let Some(why) = &opened.discarded {
            tracing::debug!(index = %ix_dir.display(), "{why}; indexing the packs");
        }
        Ok(opened.index)
    }

    /// After the packs were loaded: entries of packs gone meanwhile are ignored, a rebuild's
    /// spilled runs are merged (and, by a writer, published), a full table is flushed.
    fn finish_index(&mut self) -> Result<()> {
        let packs = &self.packs;
        let live = |p: u32| packs.contains_key(&p);
        self.index.drop_dead_coverage(&live);
        if self.index.has_unpublished() {
            self.index.merge_loaded(&live)?;
        } else if self.index.table_full() && self.index.publishes() {
            self.index.flush(&live)?;
        }
        Ok(())
    }

    /// Adds pack `n`'s entries that the chunk index does not hold yet (its index's tail
    /// past what the index covers, all of them for a pack it does not know), checking each
    /// as the pack's own open would: it decodes, and it lies inside the data file
    /// (`data_len` bytes; a crash cannot cut a pack short of what its index committed).
    /// What the chunk index covers of the pack must agree with the pack's index (same format,
    /// no more than it commits, the same last entry), else it is stale.
    #[allow(clippy::too_many_arguments)]
    fn index_pack(
        &mut self,
        n: u32,
        idx: &Path,
        ixf: &File,
        head: pack::IndexHead,
        format: u8,
        data_len: u64,
        live: &dyn Fn(u32) -> bool,
    ) -> Result<Indexed> {
        if format != head.format {
            return Ok(Indexed::Damaged {
                in_data: false,
                reason: format!(
                    "index format {} does not match pack format {format}",
                    head.format
                ),
            });
        }
        let min_offset = if format == 1 {
            PACK_HEADER as u64
        } else {
            (PACK_HEADER + RECORD_HEADER) as u64
        };
        let outside = |l: &Loc| l.end() > data_len || l.offset < min_offset;
        let cov = self.index.covered(n);
        if format == 1 {
            // Format 1 has no committed length: parse it whole (never appended to again).
            let bytes = std::fs::read(idx).ctx(idx, "read index")?;
            let ix = match pack::parse_index(&bytes, n) {
                Ok(ix) => ix,
                Err(d) => {
                    return Ok(Indexed::Damaged {
                        in_data: false,
                        reason: d.to_string(),
                    });
                }
            };
            let last = ix
                .entries
                .last()
                .map_or([0; 8], |(id, l)| pack::entry_check(id, l));
            if let Some((_, bad)) = ix.entries.iter().find(|(_, l)| outside(l)) {
                return Ok(Indexed::Damaged {
                    in_data: true,
                    reason: format!(
                        "pack is {data_len} bytes but its index names bytes {}..{}",
                        bad.offset,
                        bad.end()
                    ),
                });
            }
            let end = ix
                .entries
                .iter()
                .map(|(_, l)| l.end())
                .max()
                .unwrap_or(PACK_HEADER as u64);
            if let Some(c) = cov {
                if c.format != 1 || c.idx_len != ix.committed || c.last_check != last {
                    return Ok(Indexed::Stale(format!(
                        "the chunk index does not match {}",
                        idx.display()
                    )));
                }
                return Ok(Indexed::Ok {
                    end,
                    committed: ix.committed,
                });
            }
            for (id, loc) in &ix.entries {
                self.add_entry(*id, *loc, live)?;
            }
            self.index.set_covered(
                n,
                Covered {
                    format: 1,
                    idx_len: ix.committed,
                    data_end: end,
                    last_check: last,
                },
            );
            return Ok(Indexed::Ok {
                end,
                committed: ix.committed,
            });
        }
        let (from, mut end, mut last) = match cov {
            None => (pack::IDX_HEADER as u64, PACK_HEADER as u64, [0u8; 8]),
            Some(c) => {
                let stale = |why: &str| {
                    Ok(Indexed::Stale(format!(
                        "the chunk index does not match {}: {why}",
                        idx.display()
                    )))
                };
                if c.format != 2 {
                    return stale("another format");
                }
                if c.idx_len > head.committed || c.idx_len < pack::IDX_HEADER as u64 {
                    return stale("it covers more than the pack index commits");
                }
                if c.idx_len > pack::IDX_HEADER as u64 {
                    let mut e = [0u8; pack::ENTRY_LEN];
                    let at = c.idx_len - pack::ENTRY_LEN as u64;
                    let got = read_full_at(ixf, &mut e, at).ctx(idx, "read index")?;
                    if got != e.len() || e[56..] != c.last_check {
                        return stale("its last covered entry differs");
                    }
                }
                if c.data_end > data_len {
                    return Ok(Indexed::Damaged {
                        in_data: true,
                        reason: format!(
                            "pack is {data_len} bytes but its index names bytes up to {}",
                            c.data_end
                        ),
                    });
                }
                (c.idx_len, c.data_end, c.last_check)
            }
        };
        let mut bad: Option<String> = None;
        let res = pack::read_entries(ixf, idx, n, from, head.committed, &mut |id, loc, check| {
            if bad.is_some() {
                return Ok(());
            }
            if outside(&loc) {
                bad = Some(format!(
                    "pack is {data_len} bytes but its index names bytes {}..{}",
                    loc.offset,
                    loc.end()
                ));
                return Ok(());
            }
            end = end.max(loc.end());
            last = check;
            self.add_entry(id, loc, live)
        })?;
        if let Err(d) = res {
            return Ok(Indexed::Damaged {
                in_data: false,
                reason: d.to_string(),
            });
        }
        if let Some(reason) = bad {
            return Ok(Indexed::Damaged {
                in_data: true,
                reason,
            });
        }
        self.index.set_covered(
            n,
            Covered {
                format: 2,
                idx_len: head.committed,
                data_end: end,
                last_check: last,
            },
        );
        Ok(Indexed::Ok {
            end,
            committed: head.committed,
        })
    }

    /// Adds one entry read from a pack index while loading; spills the table when full
    /// (a rebuild: the count of distinct chunks is then left to the merge that follows,
    /// rather than looking every entry up in a growing number of runs).
    fn add_entry(&mut self, id: ChunkId, loc: Loc, live: &dyn Fn(u32) -> bool) -> Result<()> {
        let known = self.index.counting() && self.index_get(&id, live).is_some();
        self.index.insert(id, loc, known);
        if self.index.table_full() {
            self.index.spill_table(live)?;
            self.index.count_unknown();
        }
        Ok(())
    }

    /// Looks `id` up in the chunk index among the packs `live` accepts. A damaged index
    /// block makes it look in the pack indexes themselves (slow, but never wrong) and drops
    /// the published index so that the next open rebuilds it.
    fn index_get(&self, id: &ChunkId, live: &dyn Fn(u32) -> bool) -> Option<Loc> {
        match self.index.get(id, live) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{e}; looking in the pack indexes instead");
                self.index.discard_published();
                self.index.count_unknown();
                self.scan_packs(id, live)
            }
        }
    }

    /// Finds `id` by reading the pack indexes (after the chunk index was found damaged).
    fn scan_packs(&self, id: &ChunkId, live: &dyn Fn(u32) -> bool) -> Option<Loc> {
        for (&n, info) in &self.packs {
            if !live(n) {
                continue;
            }
            let Ok(Ok(ix)) = pack::read_index(&info.idx, n) else {
                continue;
            };
            if let Some((_, l)) = ix
                .entries
                .iter()
                .take_while(|(_, l)| l.end() <= info.len)
                .find(|(x, _)| x == id)
            {
                return Some(*l);
            }
        }
        None
    }

    /// The pack files on every root, by pack number.
    fn list_packs(&self) -> Result<BTreeMap<u32, FoundPack>> {
        let mut found: BTreeMap<u32, FoundPack> = BTreeMap::new();
        for (i, root) in self.roots.iter().enumerate() {
            let dir = root.join("packs");
            // A missing root is an unmounted disk far more often than a new one: creating
            // it would make every chunk on that disk look lost (and gc would then agree).
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::RootMissing(dir));
                }
                Err(e) => return Err(Error::io(&dir, "list storage root", e)),
            };
            for item in rd {
                let item = item.ctx(&dir, "list storage root")?;
                let name = item.file_name();
                let Some((n, kind)) = pack::parse_name(&name.to_string_lossy()) else {
                    continue;
                };
                let slot = found.entry(n).or_default();
                let side = match kind {
                    PackFile::Data => &mut slot.data,
                    PackFile::Index => &mut slot.idx,
                    PackFile::Tombstone => &mut slot.tomb,
                };
                if let Some((_, other)) = side {
                    return Err(Error::BadLibrary {
                        path: item.path(),
                        reason: format!(
                            "pack {n} also exists at {}; remove one copy",
                            other.display()
                        ),
                    });
                }
                *side = Some((i, item.path()));
            }
        }
        Ok(found)
    }

    /// Loads pack `n` as found on the roots; `Some(reason)` when the published chunk index
    /// disagrees with it (the caller rebuilds the index).
    fn load_found(&mut self, n: u32, f: &FoundPack, live: &HashSet<u32>) -> Result<Option<String>> {
        let root_of = |f: &FoundPack| {
            f.data
                .as_ref()
                .or(f.idx.as_ref())
                .or(f.tomb.as_ref())
                .map_or(0, |x| x.0)
        };
        let root = root_of(f);
        let data = f.data.as_ref().map(|x| x.1.clone());
        let idx = f.idx.as_ref().map(|x| x.1.clone());
        if let Some((_, tomb)) = &f.tomb {
            if let Some(idx) = idx {
                self.damaged(Damaged {
                    pack: n,
                    root,
                    data,
                    path: idx.clone(),
                    idx: Some(idx),
                    reason: "index exists beside a deletion tombstone of the same pack".into(),
                })?;
                return Ok(None);
            }
            // An interrupted deletion (gc, rollback): the index was already gone.
            if self.writes() {
                tracing::info!(pack = n, "finishing an interrupted pack deletion");
                if let Some(d) = &data {
                    remove_if_present(d, "remove deleted pack")?;
                }
                remove_if_present(tomb, "remove tombstone")?;
            }
            return Ok(None);
        }
        match (data, idx) {
            (Some(data), Some(idx)) => self.load_pack(n, root, data, idx, live),
            (None, Some(idx)) => {
                // Packs are created index first; an index whose data file was never created
                // holds nothing committed (its header may even be torn).
                let named = match pack::read_index(&idx, n)? {
                    Ok(ix) => ix.entries.len(),
                    Err(_) => 0,
                };
                if named == 0 {
                    if self.writes() {
                        tracing::info!(index = %idx.display(), "removing an index whose pack was never created");
                        remove_if_present(&idx, "remove empty index")?;
                    }
                    return Ok(None);
                }
                let (data, _) = pack::paths(&self.roots[root], n);
                self.damaged(Damaged {
                    pack: n,
                    root,
                    data: None,
                    idx: Some(idx),
                    reason: format!("data file is missing but its index names {named} chunks"),
                    path: data,
                })?;
                Ok(None)
            }
            (Some(data), None) => {
                let (_, idx) = pack::paths(&self.roots[root], n);
                self.damaged(Damaged {
                    pack: n,
                    root,
                    data: Some(data),
                    idx: None,
                    reason: "index is missing".into(),
                    path: idx,
                })?;
                Ok(None)
            }
            (None, None) => Ok(None),
        }
    }

    fn load_pack(
        &mut self,
        n: u32,
        root: usize,
        data: PathBuf,
        idx: PathBuf,
        live: &HashSet<u32>,
    ) -> Result<Option<String>> {
        let damaged = |path: &Path, reason: String| Damaged {
            pack: n,
            root,
            data: Some(data.clone()),
            idx: Some(idx.clone()),
            path: path.to_path_buf(),
            reason,
        };
        let data_len = std::fs::metadata(&data).ctx(&data, "stat pack")?.len();
        let mut head = [0u8; PACK_HEADER];
        let head_len = {
            let f = File::open(&data).ctx(&data, "open pack")?;
            read_full_at(&f, &mut head, 0).ctx(&data, "read pack")?
        };
        let ixf = File::open(&idx).ctx(&idx, "open index")?;
        let ihead = match read_index_head(&ixf, &idx)? {
            Ok(h) => h,
            Err(d) => {
                self.damaged(damaged(&idx, d.to_string()))?;
                return Ok(None);
            }
        };
        let empty = ihead.format == pack::FORMAT && ihead.committed == pack::IDX_HEADER as u64;
        let format = match pack::data_format(&head[..head_len]) {
            Ok(v) => v,
            Err(_) if empty => {
                // The data header of a pack created just before a crash: nothing committed.
                if self.writes() {
                    tracing::info!(pack = %data.display(), "removing a pack created just before a crash");
                    crate::writer::delete_pack(&data, &idx, n)?;
                }
                return Ok(None);
            }
            Err(reason) => {
                self.damaged(damaged(&data, reason))?;
                return Ok(None);
            }
        };
        let is_live = |p: u32| live.contains(&p);
        let (end, committed) =
            match self.index_pack(n, &idx, &ixf, ihead, format, data_len, &is_live)? {
                Indexed::Ok { end, committed } => (end, committed),
                Indexed::Stale(reason) => return Ok(Some(reason)),
                Indexed::Damaged { in_data, reason } => {
                    self.index.count_unknown();
                    let p = if in_data { &data } else { &idx };
                    self.damaged(damaged(p, reason))?;
                    return Ok(None);
                }
            };
        if ihead.file_len > committed {
            if format == 1 {
                // Format 1 is never appended to again: leave its files as they are.
                tracing::warn!(index = %idx.display(), bytes = ihead.file_len - committed, "ignoring the torn tail of a format-1 index");
            } else if self.writes() {
                tracing::warn!(index = %idx.display(), bytes = ihead.file_len - committed, "cutting an interrupted commit from the index");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&idx)
                    .ctx(&idx, "open index")?;
                f.set_len(committed).ctx(&idx, "truncate torn index")?;
                f.sync_all().ctx(&idx, "fsync index")?;
            }
        }
        if data_len > end && format == pack::FORMAT && self.writes() {
            tracing::warn!(pack = %data.display(), bytes = data_len - end, "cutting uncommitted bytes from the end of the pack");
            let f = OpenOptions::new()
                .write(true)
                .open(&data)
                .ctx(&data, "open pack")?;
            f.set_len(end)
                .ctx(&data, "truncate uncommitted pack tail")?;
            f.sync_all().ctx(&data, "fsync pack")?;
        }
        self.packs.insert(
            n,
            PackInfo {
                root,
                data,
                idx,
                len: end,
                idx_len: committed,
                format,
            },
        );
        Ok(None)
    }

    fn clean_manifest_temps(&self) -> Result<()> {
        // A lease interrupted while being written (write_atomic's temporary file).
        let pending = self.dir.join("pending");
        for f in std::fs::read_dir(&pending).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(f.path()).ctx(f.path(), "remove temporary lease")?;
            }
        }
        let mdir = self.dir.join("manifests");
        let Ok(rd) = std::fs::read_dir(&mdir) else {
            return Ok(());
        };
        for pkg in rd.flatten() {
            let Ok(inner) = std::fs::read_dir(pkg.path()) else {
                continue;
            };
            for f in inner.flatten() {
                if f.file_name().to_string_lossy().ends_with(".tmp") {
                    std::fs::remove_file(f.path()).ctx(f.path(), "remove temporary manifest")?;
                }
            }
        }
        Ok(())
    }

    /// The library directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration.
    pub fn config(&self) -> &LibraryConfig {
        &self.config
    }

    /// Storage roots (absolute).
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The block I/O engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Number of distinct chunks stored. Usually known; after packs were removed (a
    /// collection) or left out (damage) it is counted by one streamed pass over the index.
    pub fn chunk_count(&self) -> usize {
        let packs = &self.packs;
        match self.index.count(&|p| packs.contains_key(&p)) {
            Ok(n) => n as usize,
            Err(e) => {
                tracing::error!("{e}; counting the chunks of the pack indexes instead");
                self.index.discard_published();
                let mut seen = HashSet::new();
                for (&n, info) in packs {
                    if let Ok(Ok(ix)) = pack::read_index(&info.idx, n) {
                        seen.extend(ix.entries.into_iter().map(|(id, _)| id));
                    }
                }
                seen.len()
            }
        }
    }

    /// Where a chunk is stored, if it is.
    pub fn locate(&self, id: &ChunkId) -> Option<Loc> {
        let packs = &self.packs;
        self.index_get(id, &|p| packs.contains_key(&p))
    }

    /// True when the chunk is stored.
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.locate(id).is_some()
    }

    /// The chunks `m` names that this library lacks, in chunk ID order.
    pub fn missing(&self, m: &Manifest) -> Vec<ChunkId> {
        let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
        self.missing_sorted(&ids)
    }

    /// The chunks of `ids` (sorted, each once, such as a [`crate::ChunkTable`]'s) that this
    /// library lacks, in order.
    pub fn missing_sorted(&self, ids: &[ChunkId]) -> Vec<ChunkId> {
        let mut out = Vec::new();
        self.for_each_missing(ids, &mut |i| out.push(ids[i]));
        out
    }

    /// Per position of `ids` (sorted, each once): whether this library lacks that chunk. One
    /// byte per chunk, where [`missing_sorted`](Self::missing_sorted) takes 32 per missing one.
    pub fn missing_mask(&self, ids: &[ChunkId]) -> Vec<bool> {
        let mut mask = vec![false; ids.len()];
        self.for_each_missing(ids, &mut |i| mask[i] = true);
        mask
    }

    /// Calls `f` with the position in `ids` (sorted, each once) of each chunk this library
    /// lacks, in order.
    pub fn for_each_missing(&self, ids: &[ChunkId], f: &mut dyn FnMut(usize)) {
        debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids sorted and unique");
        let one_by_one = |f: &mut dyn FnMut(usize), from: usize| {
            for (i, id) in ids.iter().enumerate().skip(from) {
                if !self.has_chunk(id) {
                    f(i);
                }
            }
        };
        if ids.len() < MERGE_JOIN_MIN || ids.len() * 8 < self.chunk_count() {
            return one_by_one(f, 0);
        }
        // Most of a large library: one merged pass over the index in ID order beats a block
        // read per chunk.
        let mut at = 0;
        let res = self.for_each_chunk(&mut |id, _| {
            while at < ids.len() && ids[at] < id {
                f(at);
                at += 1;
            }
            if at < ids.len() && ids[at] == id {
                at += 1;
            }
            Ok(())
        });
        match res {
            Ok(()) => (at..ids.len()).for_each(&mut *f),
            Err(e) => {
                // Positions before `at` were settled by the pass; the rest are looked up.
                tracing::error!("{e}; looking the remaining chunks up one by one instead");
                one_by_one(f, at)
            }
        }
    }

    /// Calls `f` with each chunk of `ids` (sorted, repeats allowed) this library lacks, once
    /// per distinct ID, in order; an error from `f` ends the pass. One merge join with the
    /// chunk index when `ids` names a good part of the library, else a lookup per distinct ID.
    pub fn for_each_missing_sorted(
        &self,
        ids: &Sorted<32>,
        f: &mut dyn FnMut(ChunkId) -> Result<()>,
    ) -> Result<()> {
        let n = usize::try_from(ids.len()).unwrap_or(usize::MAX);
        if n >= MERGE_JOIN_MIN && n.saturating_mul(8) >= self.chunk_count() {
            return self.merge_missing_sorted(ids, f);
        }
        let mut want = ids.reader();
        let mut last = None;
        while let Some(w) = want.next_rec()? {
            if last != Some(w) {
                last = Some(w);
                if !self.has_chunk(&ChunkId(w)) {
                    f(ChunkId(w))?;
                }
            }
        }
        Ok(())
    }

    /// [`for_each_missing_sorted`](Self::for_each_missing_sorted) always as one merge join
    /// with the chunk index, for a caller that has decided a pass is cheaper.
    pub fn merge_missing_sorted(
        &self,
        ids: &Sorted<32>,
        f: &mut dyn FnMut(ChunkId) -> Result<()>,
    ) -> Result<()> {
        let mut want = ids.reader();
        let mut next = want.next_rec()?;
        // Takes `w` (missing) to `f` and moves past its repeats.
        let mut missing =
            |w: [u8; 32], next: &mut Option<[u8; 32]>, want: &mut SortedReader<'_, 32>| {
                f(ChunkId(w))?;
                while *next == Some(w) {
                    *next = want.next_rec()?;
                }
                Ok::<_, Error>(())
            };
        self.for_each_chunk(&mut |id, _| {
            while let Some(w) = next.filter(|w| *w < id.0) {
                missing(w, &mut next, &mut want)?;
            }
            while next == Some(id.0) {
                next = want.next_rec()?;
            }
            Ok(())
        })?;
        while let Some(w) = next {
            missing(w, &mut next, &mut want)?;
        }
        Ok(())
    }

    /// Calls `f` once per stored chunk, in chunk ID order, with its location: one streamed
    /// pass over the chunk index (nothing per chunk is kept).
    pub fn for_each_chunk(&self, f: &mut dyn FnMut(ChunkId, Loc) -> Result<()>) -> Result<()> {
        let packs = &self.packs;
        self.index.for_each_located(&|p| packs.contains_key(&p), f)
    }

    /// Where temporary sorted files of whole-library passes go (gc's mark, stats): the
    /// index folder for a writer (same file system as the library), the system's temporary
    /// folder for a reader, which never writes into the library. The files are unlinked as
    /// soon as they are created.
    pub fn spill_dir(&self) -> PathBuf {
        if self.index.publishes() {
            self.dir.join(INDEX_DIR)
        } else {
            std::env::temp_dir()
        }
    }

    /// Resident bytes of the chunk index's in-memory part (fences and recent entries).
    pub fn index_memory(&self) -> usize {
        self.index.memory()
    }

    /// Merges the chunk index into one run without entries of removed packs and publishes
    /// it (after a collection; a writer only).
    pub fn compact_index(&mut self) -> Result<()> {
        let packs = &self.packs;
        self.index.compact(&|p| packs.contains_key(&p))
    }

    /// Packs with their state.
    pub fn packs(&self) -> &BTreeMap<u32, PackInfo> {
        &self.packs
    }

    pub(crate) fn require_write(&self) {
        assert_ne!(self.access, Access::Read, "library opened read-only");
    }

    /// How the library was opened.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Packs left out because they are damaged (only when opened for reading or repair; an
    /// open for writing refuses instead). Empty for a healthy library.
    pub fn damage(&self) -> &[Damaged] {
        &self.damage
    }

    pub(crate) fn clear_damage(&mut self) {
        self.damage.clear();
    }

    /// The library's pack numbers (shared with its writers).
    pub fn pack_numbers(&self) -> &Arc<PackNumbers> {
        &self.numbers
    }

    /// Starts an append transaction. `reuse_last` lets it continue the newest pack.
    ///
    /// One transaction at a time per library: the caller serialises them (two open writers
    /// would both append to the newest pack). Nothing appended is visible until
    /// [`Writer::commit`] (or a [`Writer::checkpoint`]) and [`apply`](Self::apply).
    pub fn writer(&self, reuse_last: bool) -> Writer {
        self.require_write();
        let reuse = if reuse_last {
            self.packs.iter().next_back().map(|(n, info)| Reuse {
                n: *n,
                info: info.clone(),
            })
        } else {
            None
        };
        Writer::new(
            self.engine.clone(),
            self.roots.clone(),
            self.config.reserve_bytes,
            self.config.pack_size,
            self.numbers.clone(),
            reuse,
        )
    }

    /// Records a committed transaction in the in-memory state: its chunks become visible.
    ///
    /// The chunk index takes the new entries into its in-memory table; when that is full it
    /// is written out as a run and published. A failure to do so is logged and retried at the
    /// next commit: the pack indexes already hold the entries, and the next open reads what
    /// the published index lacks from them.
    pub fn apply(&mut self, c: Committed) {
        let mut last: HashMap<u32, (ChunkId, Loc)> = HashMap::new();
        for (id, loc) in &c.entries {
            last.insert(loc.pack, (*id, *loc));
        }
        let mut covers = Vec::new();
        for (n, info) in c.packs {
            if let Some((id, loc)) = last.get(&n) {
                covers.push((
                    n,
                    Covered {
                        format: info.format,
                        idx_len: info.idx_len,
                        data_end: info.len,
                        last_check: pack::entry_check(id, loc),
                    },
                ));
            }
            self.packs.insert(n, info);
        }
        // A large transaction (an ingest, a parcel) is flushed as it is taken in, so the
        // table stays bounded; a catalog published meanwhile still says the packs' old
        // coverage, which is never more than its runs hold (the next open reads the rest from
        // the pack indexes again, and equal entries count once).
        let mut flushing = self.index.publishes();
        let mut flushed = false;
        for (id, loc) in c.entries {
            let known = self.index.counting() && self.locate(&id).is_some();
            self.index.insert(id, loc, known);
            if flushing && self.index.table_full() {
                flushing = self.flush_index();
                flushed = true;
            }
        }
        for (n, cov) in covers {
            self.index.set_covered(n, cov);
        }
        // Once anything of this transaction was published, publish the rest with the new
        // coverage, so the next open does not read the whole transaction again.
        if flushing && (flushed || self.index.table_full()) {
            self.flush_index();
        }
    }

    /// Flushes the chunk index's table to a run and publishes it; false when that failed
    /// (logged: the pack indexes hold the entries, the table keeps them meanwhile).
    fn flush_index(&mut self) -> bool {
        let packs = &self.packs;
        match self.index.flush(&|p| packs.contains_key(&p)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{e}; the chunk index keeps these entries in memory for now");
                false
            }
        }
    }

    /// An open read handle on pack `n`.
    pub fn pack_file(&self, n: u32) -> Result<Arc<File>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(&n) {
            return Ok(f.clone());
        }
        let info = self.packs.get(&n).ok_or_else(|| Error::BadLibrary {
            path: self.dir.clone(),
            reason: format!(
                "pack {n} is not in the library (collected since its location was looked up); retry"
            ),
        })?;
        let f = match File::open(&info.data) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.view => {
                return Err(Error::BadLibrary {
                    path: info.data.clone(),
                    reason: format!(
                        "pack {n} was deleted by a garbage collection after this reader opened the library; retry"
                    ),
                });
            }
            Err(e) => return Err(Error::io(&info.data, "open pack", e)),
        };
        files.insert(n, f.clone());
        Ok(f)
    }

    pub(crate) fn forget_pack(&mut self, n: u32) {
        self.packs.remove(&n);
        // Its entries stay in the index, ignored, until the next merge drops them.
        self.index.count_unknown();
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
    }

    /// Starts reading a chunk's stored bytes as they are at `loc`, without checking which
    /// chunk is there (parcels and gc copy stored bytes they located just before; readers
    /// that may hold a location longer use [`read_checked`](Self::read_checked)).
    pub fn read_stored(&self, loc: &Loc) -> Result<Pending<Vec<u8>>> {
        let f = self.pack_file(loc.pack)?;
        Ok(self.engine.read_at(&f, loc.offset, loc.clen as usize))
    }

    /// Starts reading chunk `id`'s stored bytes at `loc`; in a format-2 pack the record header
    /// in front of them is read too and must name `id` with the same lengths.
    pub fn read_checked(&self, id: &ChunkId, loc: &Loc) -> Result<StoredRead> {
        let f = self.pack_file(loc.pack)?;
        let format = self.packs.get(&loc.pack).map_or(pack::FORMAT, |p| p.format);
        Ok(StoredRead::start(
            &self.engine,
            &f,
            format,
            self.pack_path(loc.pack),
            *id,
            *loc,
        ))
    }

    /// Locates `ids` and opens every pack they are in, for a reader that will read them
    /// over a long time (a sender): the view keeps the packs' files open, so a collection
    /// that moves the chunks and deletes those packs meanwhile changes nothing for it (an
    /// unlinked file stays readable while open, and its number is never reused). The space
    /// of such a pack comes back when the view is dropped.
    /// Fails on the first chunk the library does not hold, naming the version that needs it.
    pub fn read_view(
        &self,
        ids: Vec<ChunkId>,
        package: &PackageId,
        version: u32,
    ) -> Result<ReadView> {
        self.view_of(ids, &mut |id| {
            Err(Error::MissingChunk {
                id: id.to_hex(),
                package: package.to_string(),
                version,
            })
        })
    }

    /// Like [`read_view`](Self::read_view) for the chunks of `ids` the library holds; also
    /// returns the others, in order (a relay waits for them). Each chunk is located once.
    pub fn read_view_present(&self, ids: Vec<ChunkId>) -> Result<(ReadView, Vec<ChunkId>)> {
        let mut missing = Vec::new();
        let view = self.view_of(ids, &mut |id| {
            missing.push(id);
            Ok(())
        })?;
        Ok((view, missing))
    }

    /// A view of the chunks of `ids` the library holds; `missing` is told of the others (an
    /// error from it ends the view).
    fn view_of(
        &self,
        ids: Vec<ChunkId>,
        missing: &mut dyn FnMut(ChunkId) -> Result<()>,
    ) -> Result<ReadView> {
        let mut chunks = Vec::with_capacity(ids.len());
        let mut files: HashMap<u32, (Arc<File>, u8, PathBuf)> = HashMap::new();
        for id in ids {
            let Some(loc) = self.locate(&id) else {
                missing(id)?;
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(v) = files.entry(loc.pack) {
                let format = self.packs.get(&loc.pack).map_or(pack::FORMAT, |p| p.format);
                v.insert((self.pack_file(loc.pack)?, format, self.pack_path(loc.pack)));
            }
            chunks.push((id, loc));
        }
        Ok(ReadView {
            engine: self.engine.clone(),
            chunks,
            files,
        })
    }

    /// Path of pack `n`'s data file (for messages).
    pub fn pack_path(&self, n: u32) -> PathBuf {
        self.packs
            .get(&n)
            .map(|p| p.data.clone())
            .unwrap_or_else(|| PathBuf::from(pack::pack_name(n)))
    }

    /// Reads, decompresses and verifies one chunk.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.locate(id).ok_or_else(|| Error::MissingChunk {
            id: id.to_hex(),
            package: "?".into(),
            version: 0,
        })?;
        let read = self.read_checked(id, &loc)?;
        let pack = read.path.clone();
        let stored = read.wait()?;
        decode_chunk(id, &loc, &stored).map_err(|reason| Error::CorruptChunk {
            id: id.to_hex(),
            pack,
            reason,
        })
    }

    // ---- leases ----

    fn lease_path(&self, m: &Manifest) -> PathBuf {
        self.lease_path_of(&m.hash())
    }

    fn lease_path_of(&self, hash: &blake3::Hash) -> PathBuf {
        self.dir
            .join("pending")
            .join(format!("{}.fmf", hash.to_hex()))
    }

    /// How long a lease protects its chunks after it was last taken (default
    /// [`LEASE_TIMEOUT`]).
    pub fn set_lease_timeout(&mut self, timeout: Duration) {
        self.lease_timeout = timeout;
    }

    /// Takes (or renews) a lease on every chunk `m` names, for a transfer that will store
    /// them before `m` itself: until `m` is stored ([`store_manifest`](Self::store_manifest)
    /// releases it) or the lease expires, garbage collection keeps those of them the library
    /// holds. The lease is the manifest itself under `LIB/pending`, so it survives a restart
    /// and the resumed transfer finds what it had received.
    pub fn lease(&mut self, m: &Manifest) -> Result<()> {
        self.require_write();
        let path = self.lease_path(m);
        if self.renew_lease(&path)? {
            return Ok(());
        }
        write_atomic(&path, &m.encode())
    }

    /// [`lease`](Self::lease) for a manifest received whole into the file `file` (complete,
    /// its package hash `hash`): the lease is a second name of that file (a hard link, made
    /// under a temporary name and renamed, so a lease is whole or absent), so a manifest of
    /// any size is leased without reading it.
    pub fn lease_file(&mut self, file: &Path, hash: &blake3::Hash) -> Result<()> {
        self.require_write();
        let path = self.lease_path_of(hash);
        if self.renew_lease(&path)? {
            return Ok(());
        }
        File::open(file)
            .and_then(|f| f.sync_all())
            .ctx(file, "fsync received manifest")?;
        let dir = path.parent().expect("pending dir");
        let tmp = dir.join(format!(".{}.lease.tmp", hash.to_hex()));
        remove_if_present(&tmp, "remove stale lease")?;
        std::fs::hard_link(file, &tmp).ctx(&tmp, "link lease")?;
        std::fs::rename(&tmp, &path).ctx(&path, "rename lease into place")?;
        sync_dir(dir)
    }

    /// Renews the lease at `path` if it exists (true); else makes sure its folder exists.
    fn renew_lease(&self, path: &Path) -> Result<bool> {
        if path.exists() {
            let now = SystemTime::now();
            let f = File::options()
                .write(true)
                .open(path)
                .ctx(path, "open lease")?;
            f.set_times(std::fs::FileTimes::new().set_modified(now))
                .ctx(path, "renew lease")?;
            return Ok(true);
        }
        let dir = path.parent().expect("pending dir");
        if !dir.exists() {
            std::fs::create_dir_all(dir).ctx(dir, "create lease folder")?;
            sync_dir(&self.dir)?;
        }
        Ok(false)
    }

    /// Releases the lease on `m`'s chunks (nothing if there is none).
    pub fn release(&mut self, m: &Manifest) -> Result<()> {
        self.require_write();
        remove_if_present(&self.lease_path(m), "remove lease")
    }

    /// The chunks under a live lease, each once, sorted (collected like
    /// [`referenced_ids`](Self::referenced_ids): spilled to sorted temporary files past
    /// [`crate::spill::SORT_MEMORY`], each lease streamed one entry at a time). Leases older
    /// than the timeout are removed (when open for writing) and protect nothing.
    pub fn leased_ids(&self) -> Result<Sorted<32>> {
        let dir = self.dir.join("pending");
        let mut ids = Sorter::<32>::new(&self.spill_dir(), SORT_MEMORY);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ids.finish(),
            Err(e) => return Err(Error::io(&dir, "list leases", e)),
        };
        for item in rd {
            let item = item.ctx(&dir, "list leases")?;
            let path = item.path();
            if path.extension().is_none_or(|e| e != "fmf") {
                continue;
            }
            let age = item
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if age > self.lease_timeout {
                if self.access != Access::Read {
                    tracing::info!(lease = %path.display(), "a transfer's lease expired; its chunks may be collected");
                    remove_if_present(&path, "remove expired lease")?;
                }
                continue;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                // Released between the listing and its reading.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, "read lease", e)),
            };
            let len = file.metadata().ctx(&path, "stat lease")?.len();
            let src = FileAt::new(Arc::new(file), 0);
            // A damaged lease is reported and read no further; the chunks it named before the
            // damage stay protected, which only keeps more than needed.
            let res = (|| -> Result<()> {
                for e in manifest::Reader::new(src, len, &path.display().to_string())? {
                    if let manifest::EntryKind::File { chunks, .. } = &e?.kind {
                        for c in chunks {
                            ids.push(c.id.0)?;
                        }
                    }
                }
                Ok(())
            })();
            match res {
                Ok(()) => {}
                Err(e @ Error::BadManifest { .. }) => {
                    tracing::warn!(error = %e, "ignoring a damaged lease")
                }
                Err(e) => return Err(e),
            }
        }
        ids.finish()
    }

    // ---- manifests ----

    /// The library's manifests as plain files, for readers that must not wait for the library
    /// (a maintenance job holding it): manifests are replaced by atomic renames, so a reader
    /// sees a whole old or a whole new manifest, never a torn one.
    pub fn manifest_dir(&self) -> ManifestDir {
        ManifestDir {
            dir: self.dir.clone(),
        }
    }

    /// Where the manifest of `version` of `package` is stored (whether or not it exists).
    pub fn manifest_path(&self, package: &PackageId, version: u32) -> PathBuf {
        self.manifest_dir().path(package, version)
    }

    /// Every stored package with its versions, ascending.
    pub fn versions(&self) -> Result<BTreeMap<PackageId, Vec<u32>>> {
        self.manifest_dir().versions()
    }

    /// The stored versions of `package`, ascending (empty when it has none). Lists only that
    /// package's manifests folder.
    pub fn versions_of(&self, package: &PackageId) -> Result<Vec<u32>> {
        self.manifest_dir().versions_of(package)
    }

    /// The newest stored version of `package`.
    pub fn latest(&self, package: &PackageId) -> Result<Option<u32>> {
        Ok(self.versions_of(package)?.last().copied())
    }

    /// Loads one manifest.
    pub fn manifest(&self, package: &PackageId, version: u32) -> Result<Manifest> {
        self.manifest_dir().manifest(package, version)
    }

    /// Every stored manifest, opened for streaming (each file held open, nothing decoded). A
    /// version removed between the listing and its opening is left out, as if listed a moment
    /// later.
    pub fn stored_manifests(&self) -> Result<Vec<StoredManifest>> {
        let md = self.manifest_dir();
        let mut out = Vec::new();
        for (p, vs) in self.versions()? {
            for v in vs {
                match md.open_manifest(&p, v) {
                    Ok(m) => out.push(m),
                    Err(Error::NoSuchVersion { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// Stores a manifest whose chunks are all present. Returns false when the same version
    /// was already stored with identical content.
    pub fn store_manifest(&mut self, m: &Manifest) -> Result<bool> {
        self.require_write();
        if let Some(id) = self.missing(m).first() {
            return Err(Error::MissingChunk {
                id: id.to_hex(),
                package: m.package.to_string(),
                version: m.version,
            });
        }
        let mut w = self.manifest_writer(&m.package, m.version)?;
        for e in &m.entries {
            w.push(e)?;
        }
        self.commit_manifest(w.finish()?)
    }

    /// Starts writing `version` of `package` one entry at a time ([`ManifestWriter`]), to be
    /// stored by [`commit_manifest`](Self::commit_manifest): a package of any size is stored
    /// without holding its manifest in memory.
    pub fn manifest_writer(&self, package: &PackageId, version: u32) -> Result<ManifestWriter> {
        self.require_write();
        let path = self.manifest_path(package, version);
        let pdir = path.parent().expect("package dir");
        if !pdir.exists() {
            std::fs::create_dir_all(pdir).ctx(pdir, "create manifest folder")?;
            sync_dir(pdir.parent().expect("manifests dir"))?;
        }
        let name = path.file_name().expect("file name").to_string_lossy();
        // Its own temporary name (write_atomic's is `.NAME.tmp`); the `.tmp` suffix makes the
        // next opening remove it after a crash.
        let tmp = pdir.join(format!(".{name}.stream.tmp"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(&tmp, "create")?;
        let w = manifest::Writer::new(file, package, version, None, &tmp.display().to_string())?;
        Ok(ManifestWriter {
            w: Some(w),
            tmp,
            path,
            package: package.clone(),
            version,
        })
    }

    /// Stores the complete manifest file `file` (received whole by a transfer, in this
    /// library's folder) as `version` of `package`, as
    /// [`commit_manifest`](Self::commit_manifest) does a written one: the file is checked in
    /// one streamed pass and moved into place, never held in memory.
    pub fn commit_manifest_file(
        &mut self,
        file: &Path,
        package: &PackageId,
        version: u32,
    ) -> Result<bool> {
        self.require_write();
        let stored = StoredManifest::open(file, package, version)?;
        let hash = stored.hash()?;
        let path = self.manifest_path(package, version);
        let pdir = path.parent().expect("package dir");
        if !pdir.exists() {
            std::fs::create_dir_all(pdir).ctx(pdir, "create manifest folder")?;
            sync_dir(pdir.parent().expect("manifests dir"))?;
        }
        self.commit_manifest(FinishedManifest { stored, path, hash })
    }

    /// Stores a manifest written with [`manifest_writer`](Self::manifest_writer), whose
    /// chunks must all be present (checked in one pass over what was written, which decodes
    /// it too): fsync, rename into place, directory fsync; then its lease, if any, is
    /// released. Returns false when the same version was already stored with identical
    /// content.
    pub fn commit_manifest(&mut self, m: FinishedManifest) -> Result<bool> {
        self.require_write();
        // Every chunk present: the IDs sorted in bounded memory, then one merge join with the
        // index (a lookup per chunk reads and checks an index block per run: at a million
        // chunks that was a third of a quick re-snapshot's time).
        let mut ids = Sorter::<32>::new(&self.spill_dir(), SORT_MEMORY);
        let mut r = m.stored.reader()?;
        while let Some(e) = r.next_entry()? {
            if let manifest::EntryKind::File { chunks, .. } = &e.kind {
                for c in chunks {
                    ids.push(c.id.0)?;
                }
            }
        }
        let ids = ids.finish()?;
        self.for_each_missing_sorted(&ids, &mut |id| {
            Err(Error::MissingChunk {
                id: id.to_hex(),
                package: m.stored.package.to_string(),
                version: m.stored.version,
            })
        })?;
        match StoredManifest::open(&m.path, &m.stored.package, m.stored.version) {
            Ok(old) => {
                if old.len == m.stored.len && hash_file(&old)? == m.hash {
                    return Ok(false);
                }
                return Err(Error::VersionExists {
                    package: m.stored.package.to_string(),
                    version: m.stored.version,
                });
            }
            Err(Error::NoSuchVersion { .. }) => {}
            Err(e) => return Err(e),
        }
        let tmp = &m.stored.path;
        m.stored.file.sync_all().ctx(tmp, "fsync")?;
        std::fs::rename(tmp, &m.path).ctx(&m.path, "rename into place")?;
        let mut m = m;
        // In place: nothing to remove any more.
        m.stored.path = PathBuf::new();
        sync_dir(m.path.parent().expect("package dir"))?;
        // Its chunks are referenced now: the transfer's lease has done its job.
        remove_if_present(&self.lease_path_of(&m.hash), "remove lease")?;
        Ok(true)
    }

    /// Removes one package version; its chunks stay until garbage collection.
    pub fn remove_version(&mut self, package: &PackageId, version: u32) -> Result<()> {
        self.require_write();
        let path = self.manifest_path(package, version);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSuchVersion {
                    package: package.to_string(),
                    version,
                });
            }
            Err(e) => return Err(Error::io(&path, "remove manifest", e)),
        }
        let pdir = path.parent().expect("package dir");
        sync_dir(pdir)?;
        // Drop the package folder once empty, so listings stay tidy.
        if std::fs::remove_dir(pdir).is_ok() {
            sync_dir(pdir.parent().expect("manifests dir"))?;
        }
        Ok(())
    }

    /// Every chunk some stored manifest names, each once, sorted: collected in bounded
    /// memory (spilled to sorted temporary files past [`crate::spill::SORT_MEMORY`]) and
    /// read back in chunk ID order, to be merge-joined with [`for_each_chunk`](Self::for_each_chunk)
    /// (garbage collection, statistics). Manifests are read one at a time.
    pub fn referenced_ids(&self) -> Result<Sorted<32>> {
        let mut ids = Sorter::<32>::new(&self.spill_dir(), SORT_MEMORY);
        let md = self.manifest_dir();
        for (p, vs) in self.versions()? {
            for v in vs {
                let m = match md.open_manifest(&p, v) {
                    Ok(m) => m,
                    // Removed between the listing and its reading.
                    Err(Error::NoSuchVersion { .. }) => continue,
                    Err(e) => return Err(e),
                };
                for e in m.reader()? {
                    if let manifest::EntryKind::File { chunks, .. } = &e?.kind {
                        for c in chunks {
                            ids.push(c.id.0)?;
                        }
                    }
                }
            }
        }
        ids.finish()
    }
}

/// A read of one chunk's stored bytes under way (see [`Library::read_checked`]).
#[must_use = "a read's result must be checked"]
pub struct StoredRead {
    pending: Pending<Vec<u8>>,
    id: ChunkId,
    loc: Loc,
    /// Whether a format-2 record header precedes the stored bytes in what was read.
    header: bool,
    /// The pack file (for messages).
    pub path: PathBuf,
}

impl StoredRead {
    fn start(
        engine: &Engine,
        f: &Arc<File>,
        format: u8,
        path: PathBuf,
        id: ChunkId,
        loc: Loc,
    ) -> StoredRead {
        let header = format >= 2 && loc.offset >= RECORD_HEADER as u64;
        let (at, len) = if header {
            (
                loc.offset - RECORD_HEADER as u64,
                RECORD_HEADER + loc.clen as usize,
            )
        } else {
            (loc.offset, loc.clen as usize)
        };
        StoredRead {
            pending: engine.read_at(f, at, len),
            id,
            loc,
            header,
            path,
        }
    }

    /// Waits for the bytes; fails when the pack holds something else at that location.
    pub fn wait(self) -> Result<Vec<u8>> {
        let mut bytes = self.pending.wait().ctx(&self.path, "read pack")?;
        if self.header {
            let found = pack::decode_record(
                &bytes,
                self.loc.pack,
                self.loc.offset - RECORD_HEADER as u64,
            );
            let same = found.is_some_and(|(id, l)| {
                id == self.id
                    && l.clen == self.loc.clen
                    && l.ulen == self.loc.ulen
                    && l.flags == self.loc.flags
            });
            if !same {
                return Err(Error::CorruptChunk {
                    id: self.id.to_hex(),
                    pack: self.path,
                    reason: format!(
                        "the record at byte {} does not name this chunk",
                        self.loc.offset - RECORD_HEADER as u64
                    ),
                });
            }
            bytes.drain(..RECORD_HEADER);
        }
        Ok(bytes)
    }
}

/// Chunks located once and the packs holding them, open (see [`Library::read_view`]). Reads
/// through a view need no access to the library, so they never wait for its lock.
pub struct ReadView {
    engine: Engine,
    chunks: Vec<(ChunkId, Loc)>,
    files: HashMap<u32, (Arc<File>, u8, PathBuf)>,
}

impl ReadView {
    /// The chunks in the order asked for, with their locations.
    pub fn chunks(&self) -> &[(ChunkId, Loc)] {
        &self.chunks
    }

    /// Starts reading the `i`th chunk.
    pub fn read(&self, i: usize) -> StoredRead {
        let (id, loc) = self.chunks[i];
        let (f, format, path) = &self.files[&loc.pack];
        StoredRead::start(&self.engine, f, *format, path.clone(), id, loc)
    }
}

/// BLAKE3 of a stored manifest's bytes, read through its open file.
fn hash_file(m: &StoredManifest) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut src = FileAt {
        file: m.file.clone(),
        at: 0,
    };
    std::io::copy(&mut src, &mut h).ctx(&m.path, "read manifest")?;
    Ok(h.finalize())
}
/// Reads a file from a position of its own with `pread`, so that several readers can share
/// one descriptor and none moves another's offset.
#[derive(Clone, Debug)]
pub struct FileAt {
    file: Arc<File>,
    at: u64,
}

impl FileAt {
    /// Reads `file` from byte `at` on.
    pub fn new(file: Arc<File>, at: u64) -> FileAt {
        FileAt { file, at }
    }
}

impl std::io::Read for FileAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A stored manifest opened for streaming ([`ManifestDir::open_manifest`]): its file is held
/// open, so a version removed or replaced after the open still reads as it was, each
/// [`reader`](Self::reader) from the start, any number of times, in memory bounded by one
/// entry whatever the manifest's size.
#[derive(Clone, Debug)]
pub struct StoredManifest {
    file: Arc<File>,
    len: u64,
    path: PathBuf,
    package: PackageId,
    version: u32,
}

impl StoredManifest {
    /// Opens the manifest file at `path`, which must hold `version` of `package` (checked by
    /// each reader).
    pub fn open(path: &Path, package: &PackageId, version: u32) -> Result<StoredManifest> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSuchVersion {
                    package: package.to_string(),
                    version,
                });
            }
            Err(e) => return Err(Error::io(path, "open manifest", e)),
        };
        let len = file.metadata().ctx(path, "stat manifest")?.len();
        Ok(StoredManifest {
            file: Arc::new(file),
            len,
            path: path.to_path_buf(),
            package: package.clone(),
            version,
        })
    }

    /// The package.
    pub fn package(&self) -> &PackageId {
        &self.package
    }

    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The file's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never a valid manifest).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The open file.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    fn start(&self, hashing: bool) -> Result<manifest::Reader<FileAt>> {
        let src = FileAt {
            file: self.file.clone(),
            at: 0,
        };
        let what = self.path.display().to_string();
        let r = if hashing {
            manifest::Reader::hashing(src, self.len, &what)?
        } else {
            manifest::Reader::new(src, self.len, &what)?
        };
        if r.package() != &self.package || r.version() != self.version {
            return Err(Error::BadManifest {
                what,
                offset: 0,
                reason: format!("file holds {} v{}", r.package(), r.version()),
            });
        }
        Ok(r)
    }

    /// A reader of the entries from the first, every one checked as it is read.
    pub fn reader(&self) -> Result<manifest::Reader<FileAt>> {
        self.start(false)
    }

    /// A reader that also hashes what it reads: its [`hash`](manifest::Reader::hash) is the
    /// package hash once the last entry was read.
    pub fn hashing_reader(&self) -> Result<manifest::Reader<FileAt>> {
        self.start(true)
    }

    /// A reader of the entries from entry number `index` on, which starts at byte `at`: a
    /// [`manifest::Reader::position`] taken by an earlier reader of this same open file, which
    /// read the whole manifest (then `count` entries) and checked it. See
    /// [`manifest::Reader::resume`] for what is checked again; `buffer` is its read buffer.
    pub fn reader_at(
        &self,
        count: u64,
        at: u64,
        index: u64,
        buffer: usize,
    ) -> Result<manifest::Reader<FileAt>> {
        manifest::Reader::resume(
            FileAt {
                file: self.file.clone(),
                at,
            },
            self.len,
            &self.path.display().to_string(),
            &self.package,
            self.version,
            count,
            at,
            index,
            buffer,
        )
    }

    /// The version's distinct chunks (one streamed pass over the file, every entry checked):
    /// 36 bytes a chunk, instead of the decoded manifest.
    pub fn chunk_table(&self) -> Result<ChunkTable> {
        let what = format!("manifest of {} v{}", self.package, self.version);
        let mut b = ChunkTableBuilder::new(what);
        for e in self.reader()? {
            if let manifest::EntryKind::File { chunks, .. } = &e?.kind {
                for c in chunks {
                    b.push(c.id, c.len)?;
                }
            }
        }
        b.finish()
    }

    /// Validates the whole manifest and returns its package hash (one pass over the file).
    pub fn hash(&self) -> Result<blake3::Hash> {
        let mut r = self.hashing_reader()?;
        Ok(r.finish()?
            .expect("a hashing reader read to the end has a hash"))
    }

    /// Reads the whole manifest into memory (for callers that need it whole: it costs memory
    /// in proportion to the package's size).
    pub fn load(&self) -> Result<Manifest> {
        let mut r = self.reader()?;
        let mut entries = Vec::with_capacity(r.entry_count().min(1 << 20) as usize);
        while let Some(e) = r.next_entry()? {
            entries.push(e);
        }
        Ok(Manifest {
            package: self.package.clone(),
            version: self.version,
            entries,
        })
    }
}

impl manifest::EntrySource for StoredManifest {
    fn package(&self) -> &PackageId {
        &self.package
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn entries(&self) -> Result<Box<dyn Iterator<Item = Result<manifest::Entry>> + Send + '_>> {
        Ok(Box::new(self.reader()?))
    }
}

/// A manifest being written for [`Library::commit_manifest`]: a temporary file in the
/// package's manifests folder (removed by the library's next opening if a crash leaves it),
/// written one entry at a time in canonical order. Dropped without a commit, it is removed.
pub struct ManifestWriter {
    w: Option<manifest::Writer<File>>,
    tmp: PathBuf,
    path: PathBuf,
    package: PackageId,
    version: u32,
}

impl ManifestWriter {
    /// Appends one entry (in canonical order, root first).
    pub fn push(&mut self, e: &manifest::Entry) -> Result<()> {
        self.w.as_mut().expect("not finished").push(e)
    }

    /// Entries written so far.
    pub fn count(&self) -> u64 {
        self.w.as_ref().map_or(0, |w| w.count())
    }

    /// The package.
    pub fn package(&self) -> &PackageId {
        &self.package
    }

    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Writes the entry count and hashes the file: the manifest as it will be stored, still
    /// under its temporary name.
    pub fn finish(mut self) -> Result<FinishedManifest> {
        let w = self.w.take().expect("not finished");
        let what = self.tmp.display().to_string();
        let (file, hash, len) = manifest::finish_file(w, &self.package, &what)?;
        let tmp = std::mem::take(&mut self.tmp);
        Ok(FinishedManifest {
            stored: StoredManifest {
                file: Arc::new(file),
                len,
                path: tmp,
                package: self.package.clone(),
                version: self.version,
            },
            path: std::mem::take(&mut self.path),
            hash,
        })
    }
}

impl Drop for ManifestWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A manifest written in full under its temporary name ([`ManifestWriter::finish`]), ready for
/// [`Library::commit_manifest`] or to be compared with a stored one. Dropped uncommitted, its
/// file is removed.
pub struct FinishedManifest {
    stored: StoredManifest,
    path: PathBuf,
    hash: blake3::Hash,
}

impl FinishedManifest {
    /// The package hash.
    pub fn hash(&self) -> blake3::Hash {
        self.hash
    }

    /// The manifest as written, for reading it back.
    pub fn stored(&self) -> &StoredManifest {
        &self.stored
    }

    /// Whether the entries equal those of `other` (only the version may differ): compares
    /// the files byte by byte past the version field, without decoding either.
    pub fn same_entries_as(&self, other: &StoredManifest) -> Result<bool> {
        if other.len != self.stored.len || other.package != self.stored.package {
            return Ok(false);
        }
        let vat = manifest::version_offset(&self.stored.package);
        let mut a = std::io::BufReader::new(FileAt {
            file: self.stored.file.clone(),
            at: 0,
        });
        let mut b = std::io::BufReader::new(FileAt {
            file: other.file.clone(),
            at: 0,
        });
        let (mut x, mut y) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
        let mut at = 0u64;
        while at < self.stored.len {
            let n = ((self.stored.len - at) as usize).min(x.len());
            std::io::Read::read_exact(&mut a, &mut x[..n])
                .ctx(&self.stored.path, "read manifest")?;
            std::io::Read::read_exact(&mut b, &mut y[..n]).ctx(&other.path, "read manifest")?;
            // Blank the version field where it falls in this block.
            for i in 0..4u64 {
                let p = vat + i;
                if p >= at && p < at + n as u64 {
                    x[(p - at) as usize] = 0;
                    y[(p - at) as usize] = 0;
                }
            }
            if x[..n] != y[..n] {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }
}

impl Drop for FinishedManifest {
    fn drop(&mut self) {
        if !self.stored.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.stored.path);
        }
    }
}

/// The versions named by the manifests in `rd` (the listing of package folder `pdir`),
/// ascending.
/// A library's stored manifests, read as plain files ([`Library::manifest_dir`]).
#[derive(Clone, Debug)]
pub struct ManifestDir {
    dir: PathBuf,
}

impl ManifestDir {
    /// The manifests of the library at `dir`, read without opening the library (no lock, no
    /// pack read): for readers beside a writer that need only manifests.
    pub fn open(dir: &Path) -> Result<ManifestDir> {
        if !dir.join(CONFIG_FILE).exists() {
            return Err(Error::BadLibrary {
                path: dir.to_path_buf(),
                reason: "not a Freight library; create it with `freight library init`".into(),
            });
        }
        Ok(ManifestDir {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the manifest of `version` of `package` is stored (whether or not it exists).
    pub fn path(&self, package: &PackageId, version: u32) -> PathBuf {
        self.dir
            .join("manifests")
            .join(package.as_str())
            .join(format!("{version:010}.fmf"))
    }

    /// Every stored package with its versions, ascending.
    pub fn versions(&self) -> Result<BTreeMap<PackageId, Vec<u32>>> {
        let mdir = self.dir.join("manifests");
        let mut out = BTreeMap::new();
        let rd = match std::fs::read_dir(&mdir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&mdir, "list manifests", e)),
        };
        for pkg in rd {
            let pkg = pkg.ctx(&mdir, "list manifests")?;
            let Ok(id) = PackageId::parse(&pkg.file_name().to_string_lossy()) else {
                continue;
            };
            let pdir = pkg.path();
            let vs = match std::fs::read_dir(&pdir) {
                Ok(rd) => versions_in(&pdir, rd)?,
                // Removed between the two listings.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&pdir, "list manifests", e)),
            };
            if !vs.is_empty() {
                out.insert(id, vs);
            }
        }
        Ok(out)
    }

    /// The stored versions of `package`, ascending (empty when it has none).
    pub fn versions_of(&self, package: &PackageId) -> Result<Vec<u32>> {
        let pdir = self.dir.join("manifests").join(package.as_str());
        match std::fs::read_dir(&pdir) {
            Ok(rd) => versions_in(&pdir, rd),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(&pdir, "list manifests", e)),
        }
    }

    /// Loads and validates one manifest (read through [`open_manifest`](Self::open_manifest):
    /// it costs memory in proportion to the package; streaming readers use that instead).
    pub fn manifest(&self, package: &PackageId, version: u32) -> Result<Manifest> {
        self.open_manifest(package, version)?.load()
    }

    /// Opens one stored manifest for streaming: its entries are read one at a time, each
    /// checked as it comes, as often as needed ([`StoredManifest::reader`]).
    pub fn open_manifest(&self, package: &PackageId, version: u32) -> Result<StoredManifest> {
        StoredManifest::open(&self.path(package, version), package, version)
    }
}

fn versions_in(pdir: &Path, rd: std::fs::ReadDir) -> Result<Vec<u32>> {
    let mut vs = Vec::new();
    for f in rd {
        let f = f.ctx(pdir, "list manifests")?;
        let name = f.file_name().to_string_lossy().into_owned();
        if let Some(v) = name.strip_suffix(".fmf").and_then(|v| v.parse().ok()) {
            vs.push(v);
        }
    }
    vs.sort_unstable();
    Ok(vs)
}

/// A zstd context and a scratch buffer (grown to the largest chunk it decompressed).
type Scratch = (zstd::bulk::Decompressor<'static>, Vec<u8>);

/// Scratch kept for reuse: making a context per chunk costs about as much as decompressing a
/// small chunk. A shared pool rather than one per thread, so memory follows how many chunks
/// are decompressed at once, not how many threads ever did it (a tokio blocking pool grows to
/// dozens of threads, each of which would keep a buffer as large as the largest chunk).
static SCRATCH: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());
/// Most scratch sets kept idle; more in use at once are freed after use.
const SCRATCH_KEPT: usize = 8;
/// Largest buffer kept idle: twice the chunker's largest cut (4 MiB). A chunk up to
/// `MAX_CHUNK` (64 MiB: a peer's, or a decompression bomb refused after decompressing) gets
/// its buffer freed after use, so idle scratch stays within `SCRATCH_KEPT` × this whatever
/// chunks came by, instead of keeping up to 8 × 64 MiB resident.
const SCRATCH_BUF_KEPT: usize = 8 << 20;

/// Runs `f` on the uncompressed bytes of a stored chunk (decompressed into a pooled scratch
/// buffer when compressed, the stored bytes themselves when raw).
fn with_raw<T>(
    loc: &Loc,
    stored: &[u8],
    f: impl FnOnce(&[u8]) -> T,
) -> std::result::Result<T, String> {
    if !loc.is_plausible() {
        // Lengths come from disk or a peer: never size a buffer by an unchecked value.
        return Err(format!(
            "implausible lengths (stored {}, plain {}, flags {})",
            loc.clen, loc.ulen, loc.flags
        ));
    }
    if stored.len() != loc.clen as usize {
        return Err(format!("stored length {} != {}", stored.len(), loc.clen));
    }
    if loc.flags & FLAG_ZSTD == 0 {
        if stored.len() != loc.ulen as usize {
            return Err(format!("length {} != {}", stored.len(), loc.ulen));
        }
        return Ok(f(stored));
    }
    let pooled = SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let (mut d, mut buf) = match pooled {
        Some(s) => s,
        None => (
            zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?,
            Vec::new(),
        ),
    };
    buf.clear();
    buf.reserve(loc.ulen as usize);
    let res = match d.decompress_to_buffer(stored, &mut buf) {
        Err(e) => Err(format!("zstd: {e}")),
        Ok(_) if buf.len() != loc.ulen as usize => {
            Err(format!("length {} != {}", buf.len(), loc.ulen))
        }
        Ok(_) => Ok(f(&buf)),
    };
    let buf = if buf.capacity() > SCRATCH_BUF_KEPT {
        Vec::new()
    } else {
        buf
    };
    let mut pool = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < SCRATCH_KEPT {
        pool.push((d, buf));
    }
    res
}

/// Decompresses stored chunk bytes and checks them against their ID.
pub fn decode_chunk(
    id: &ChunkId,
    loc: &Loc,
    stored: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let res =
        with_raw(loc, stored, |raw| (ChunkId::of(raw), raw.to_vec())).and_then(|(hash, data)| {
            if hash != *id {
                return Err("hash mismatch".into());
            }
            Ok(data)
        });
    if res.is_err() {
        crate::counters::chunk_verify_failed();
    }
    res
}

/// Checks stored chunk bytes against their ID without keeping the uncompressed bytes.
pub fn check_chunk(id: &ChunkId, loc: &Loc, stored: &[u8]) -> std::result::Result<(), String> {
    let res = match with_raw(loc, stored, ChunkId::of) {
        Ok(hash) if hash == *id => Ok(()),
        Ok(_) => Err("hash mismatch".into()),
        Err(e) => Err(e),
    };
    if res.is_err() {
        crate::counters::chunk_verify_failed();
    }
    res
}
