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

use crate::config::{CONFIG_FILE, LibraryConfig};
use crate::engine::{Engine, IoMode, Pending};
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, PackageId};
use crate::manifest::{self, Manifest};
use crate::pack::{self, FLAG_ZSTD, Loc, PACK_HEADER, PackFile, RECORD_HEADER};
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
    pub(crate) index: HashMap<ChunkId, Loc>,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ViewPack {
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

/// Where the committed entries of index `ix` end in a data file of `data_len` bytes of pack
/// `format`, or why they cannot be right: every entry must lie inside the data file, past its
/// headers (a crash cannot cut a pack short of what its index committed).
fn committed_end(
    ix: &pack::IndexFile,
    format: u8,
    data_len: u64,
) -> std::result::Result<u64, String> {
    let min_offset = if format == 1 {
        PACK_HEADER as u64
    } else {
        (PACK_HEADER + RECORD_HEADER) as u64
    };
    if let Some((_, bad)) = ix
        .entries
        .iter()
        .find(|(_, l)| l.end() > data_len || l.offset < min_offset)
    {
        return Err(format!(
            "pack is {data_len} bytes but its index names bytes {}..{}",
            bad.offset,
            bad.end()
        ));
    }
    Ok(ix
        .entries
        .iter()
        .map(|(_, l)| l.end())
        .max()
        .unwrap_or(PACK_HEADER as u64))
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
            index: HashMap::new(),
            files: Mutex::new(HashMap::new()),
            numbers,
            damage: Vec::new(),
            lease_timeout: LEASE_TIMEOUT,
        };
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
            index: HashMap::new(),
            files: Mutex::new(HashMap::new()),
            numbers,
            damage: Vec::new(),
            lease_timeout: LEASE_TIMEOUT,
        };
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
        let mut budget = pin_budget();
        let mut seen: HashSet<u32> = HashSet::new();
        for _ in 0..VIEW_PASSES {
            let mut vanished = false;
            for (n, f) in self.list_packs()? {
                if seen.insert(n) && self.load_view_pack(n, &f, &mut budget)? == ViewPack::Vanished
                {
                    vanished = true;
                }
            }
            if !vanished {
                return Ok(());
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
    fn load_view_pack(&mut self, n: u32, f: &FoundPack, budget: &mut usize) -> Result<ViewPack> {
        let root = f
            .data
            .as_ref()
            .or(f.idx.as_ref())
            .or(f.tomb.as_ref())
            .map_or(0, |x| x.0);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_view_pack(n, root, budget)? {
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
    ) -> Result<std::result::Result<ViewPack, Damaged>> {
        let (data, idx) = pack::paths(&self.roots[root], n);
        let tomb = idx.with_file_name(pack::tombstone_name(n));
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        let file = match File::open(&data) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&data, "open pack", e)),
        };
        let bytes = match std::fs::read(&idx) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&idx, "read index", e)),
        };
        let damaged = |path: &Path, reason: String| Damaged {
            pack: n,
            root,
            data: exists(&data).then(|| data.clone()),
            idx: exists(&idx).then(|| idx.clone()),
            path: path.to_path_buf(),
            reason,
        };
        let Some(bytes) = bytes else {
            // Deleted (index renamed to a tombstone first, data unlinked next), or never had
            // an index.
            if exists(&tomb) || !exists(&data) {
                return Ok(Ok(ViewPack::Vanished));
            }
            return Ok(Err(damaged(&idx, "index is missing".into())));
        };
        if exists(&tomb) {
            // A deletion under way: the index was renamed after it was read.
            return Ok(Ok(ViewPack::Vanished));
        }
        let ix = match pack::parse_index(&bytes, n) {
            Ok(ix) => ix,
            Err(d) => return Ok(Err(damaged(&idx, d.to_string()))),
        };
        let Some(file) = file else {
            if ix.entries.is_empty() {
                // Created index first: its data file is not there yet.
                return Ok(Ok(ViewPack::Left));
            }
            return Ok(Err(damaged(
                &data,
                format!(
                    "data file is missing but its index names {} chunks",
                    ix.entries.len()
                ),
            )));
        };
        let mut head = [0u8; PACK_HEADER];
        let head_len = read_full_at(&file, &mut head, 0).ctx(&data, "read pack")?;
        let format = match pack::data_format(&head[..head_len]) {
            Ok(v) => v,
            // Just created: its header is not written yet, nothing is committed.
            Err(_) if ix.entries.is_empty() => return Ok(Ok(ViewPack::Left)),
            Err(reason) => return Ok(Err(damaged(&data, reason))),
        };
        if format != ix.format {
            return Ok(Err(damaged(
                &idx,
                format!(
                    "index format {} does not match pack format {format}",
                    ix.format
                ),
            )));
        }
        // Stat the data after the index was read: every entry read was made durable in the
        // data file before it was written to the index.
        let data_len = file.metadata().ctx(&data, "stat pack")?.len();
        let end = match committed_end(&ix, format, data_len) {
            Ok(end) => end,
            Err(reason) => return Ok(Err(damaged(&data, reason))),
        };
        for (id, loc) in &ix.entries {
            self.index.entry(*id).or_insert(*loc);
        }
        self.packs.insert(
            n,
            PackInfo {
                root,
                data,
                idx,
                len: end,
                idx_len: ix.committed,
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
        for (n, f) in found {
            self.load_found(n, f)?;
        }
        Ok(floor)
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

    fn load_found(&mut self, n: u32, f: FoundPack) -> Result<()> {
        let root_of = |f: &FoundPack| {
            f.data
                .as_ref()
                .or(f.idx.as_ref())
                .or(f.tomb.as_ref())
                .map_or(0, |x| x.0)
        };
        let root = root_of(&f);
        let data = f.data.map(|x| x.1);
        let idx = f.idx.map(|x| x.1);
        if let Some((_, tomb)) = f.tomb {
            if let Some(idx) = idx {
                return self.damaged(Damaged {
                    pack: n,
                    root,
                    data,
                    path: idx.clone(),
                    idx: Some(idx),
                    reason: "index exists beside a deletion tombstone of the same pack".into(),
                });
            }
            // An interrupted deletion (gc, rollback): the index was already gone.
            if self.writes() {
                tracing::info!(pack = n, "finishing an interrupted pack deletion");
                if let Some(d) = &data {
                    remove_if_present(d, "remove deleted pack")?;
                }
                remove_if_present(&tomb, "remove tombstone")?;
            }
            return Ok(());
        }
        match (data, idx) {
            (Some(data), Some(idx)) => self.load_pack(n, root, data, idx),
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
                    return Ok(());
                }
                let (data, _) = pack::paths(&self.roots[root], n);
                self.damaged(Damaged {
                    pack: n,
                    root,
                    data: None,
                    idx: Some(idx),
                    reason: format!("data file is missing but its index names {named} chunks"),
                    path: data,
                })
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
                })
            }
            (None, None) => Ok(()),
        }
    }

    fn load_pack(&mut self, n: u32, root: usize, data: PathBuf, idx: PathBuf) -> Result<()> {
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
            use std::os::unix::fs::FileExt;
            let f = File::open(&data).ctx(&data, "open pack")?;
            let mut got = 0;
            while got < head.len() {
                match f.read_at(&mut head[got..], got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io(&data, "read pack", e)),
                }
            }
            got
        };
        let ix = match pack::read_index(&idx, n)? {
            Ok(ix) => ix,
            Err(damage) => return self.damaged(damaged(&idx, damage.to_string())),
        };
        let format = match pack::data_format(&head[..head_len]) {
            Ok(v) => v,
            Err(_) if ix.entries.is_empty() && ix.format == pack::FORMAT => {
                // The data header of a pack created just before a crash: nothing committed.
                if self.writes() {
                    tracing::info!(pack = %data.display(), "removing a pack created just before a crash");
                    crate::writer::delete_pack(&data, &idx, n)?;
                }
                return Ok(());
            }
            Err(reason) => return self.damaged(damaged(&data, reason)),
        };
        if format != ix.format {
            return self.damaged(damaged(
                &idx,
                format!(
                    "index format {} does not match pack format {format}",
                    ix.format
                ),
            ));
        }
        // Committed entries must point inside the data file: a crash cannot cut a pack
        // short of what its index committed.
        let end = match committed_end(&ix, format, data_len) {
            Ok(end) => end,
            Err(reason) => return self.damaged(damaged(&data, reason)),
        };
        if ix.file_len > ix.committed {
            if format == 1 {
                // Format 1 is never appended to again: leave its files as they are.
                tracing::warn!(index = %idx.display(), bytes = ix.file_len - ix.committed, "ignoring the torn tail of a format-1 index");
            } else if self.writes() {
                tracing::warn!(index = %idx.display(), bytes = ix.file_len - ix.committed, entries = ix.tail_valid, "cutting an interrupted commit from the index");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&idx)
                    .ctx(&idx, "open index")?;
                f.set_len(ix.committed).ctx(&idx, "truncate torn index")?;
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
        for (id, loc) in &ix.entries {
            self.index.entry(*id).or_insert(*loc);
        }
        self.packs.insert(
            n,
            PackInfo {
                root,
                data,
                idx,
                len: end,
                idx_len: ix.committed,
                format,
            },
        );
        Ok(())
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

    /// Number of distinct chunks stored.
    pub fn chunk_count(&self) -> usize {
        self.index.len()
    }

    /// Where a chunk is stored, if it is.
    pub fn locate(&self, id: &ChunkId) -> Option<Loc> {
        self.index.get(id).copied()
    }

    /// True when the chunk is stored.
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.index.contains_key(id)
    }

    /// The chunks `m` names that this library lacks.
    pub fn missing(&self, m: &Manifest) -> Vec<ChunkId> {
        m.chunks()
            .into_keys()
            .filter(|id| !self.index.contains_key(id))
            .collect()
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
    /// [`Writer::commit`] and [`apply`](Self::apply).
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
    pub fn apply(&mut self, c: Committed) {
        for (n, info) in c.packs {
            self.packs.insert(n, info);
        }
        for (id, loc) in c.entries {
            self.index.insert(id, loc);
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
        let mut chunks = Vec::with_capacity(ids.len());
        let mut files: HashMap<u32, (Arc<File>, u8, PathBuf)> = HashMap::new();
        for id in ids {
            let loc = self.locate(&id).ok_or_else(|| Error::MissingChunk {
                id: id.to_hex(),
                package: package.to_string(),
                version,
            })?;
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
        if path.exists() {
            let now = SystemTime::now();
            let f = File::options()
                .write(true)
                .open(&path)
                .ctx(&path, "open lease")?;
            return f
                .set_times(std::fs::FileTimes::new().set_modified(now))
                .ctx(&path, "renew lease");
        }
        let dir = path.parent().expect("pending dir");
        if !dir.exists() {
            std::fs::create_dir_all(dir).ctx(dir, "create lease folder")?;
            sync_dir(&self.dir)?;
        }
        write_atomic(&path, &m.encode())
    }

    /// Releases the lease on `m`'s chunks (nothing if there is none).
    pub fn release(&mut self, m: &Manifest) -> Result<()> {
        self.require_write();
        remove_if_present(&self.lease_path(m), "remove lease")
    }

    /// The chunks under a live lease; leases older than the timeout are removed (when open
    /// for writing) and protect nothing.
    pub fn leased_chunks(&self) -> Result<HashSet<ChunkId>> {
        let dir = self.dir.join("pending");
        let mut out = HashSet::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
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
            let bytes = std::fs::read(&path).ctx(&path, "read lease")?;
            match Manifest::decode(&bytes, &path.display().to_string()) {
                Ok(m) => out.extend(m.chunks().into_keys()),
                Err(e) => tracing::warn!(error = %e, "ignoring a damaged lease"),
            }
        }
        Ok(out)
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

    /// All manifests. A version removed between the listing and its reading (by a writer
    /// beside a reader) is left out, as if listed a moment later.
    pub fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for (p, vs) in self.versions()? {
            for v in vs {
                match self.manifest(&p, v) {
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

    /// Stores a manifest written with [`manifest_writer`](Self::manifest_writer), whose
    /// chunks must all be present (checked in one pass over what was written, which decodes
    /// it too): fsync, rename into place, directory fsync; then its lease, if any, is
    /// released. Returns false when the same version was already stored with identical
    /// content.
    pub fn commit_manifest(&mut self, m: FinishedManifest) -> Result<bool> {
        self.require_write();
        let mut r = m.stored.reader()?;
        while let Some(e) = r.next_entry()? {
            if let manifest::EntryKind::File { chunks, .. } = &e.kind
                && let Some(c) = chunks.iter().find(|c| !self.has_chunk(&c.id))
            {
                return Err(Error::MissingChunk {
                    id: c.id.to_hex(),
                    package: m.stored.package.to_string(),
                    version: m.stored.version,
                });
            }
        }
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

    /// How many manifests reference each stored chunk (absent = unreferenced).
    pub fn refcounts(&self) -> Result<HashMap<ChunkId, u32>> {
        let mut rc = HashMap::new();
        for m in self.manifests()? {
            for id in m.chunks().into_keys() {
                *rc.entry(id).or_insert(0) += 1;
            }
        }
        Ok(rc)
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

    /// The stored bytes of one manifest, not yet validated (with [`decode`](Self::decode),
    /// a reader can check the package hash, BLAKE3 of these bytes, before decoding).
    pub fn manifest_bytes(&self, package: &PackageId, version: u32) -> Result<Vec<u8>> {
        let path = self.path(package, version);
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NoSuchVersion {
                package: package.to_string(),
                version,
            }),
            Err(e) => Err(Error::io(&path, "read manifest", e)),
        }
    }

    /// Validates the stored bytes of `version` of `package` (see
    /// [`manifest_bytes`](Self::manifest_bytes)).
    pub fn decode(&self, package: &PackageId, version: u32, bytes: &[u8]) -> Result<Manifest> {
        let path = self.path(package, version);
        let m = Manifest::decode(bytes, &path.display().to_string())?;
        if &m.package != package || m.version != version {
            return Err(Error::BadManifest {
                what: path.display().to_string(),
                offset: 0,
                reason: format!("file holds {} v{}", m.package, m.version),
            });
        }
        Ok(m)
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
    let (hash, data) = with_raw(loc, stored, |raw| (ChunkId::of(raw), raw.to_vec()))?;
    if hash != *id {
        return Err("hash mismatch".into());
    }
    Ok(data)
}

/// Checks stored chunk bytes against their ID without keeping the uncompressed bytes.
pub fn check_chunk(id: &ChunkId, loc: &Loc, stored: &[u8]) -> std::result::Result<(), String> {
    if with_raw(loc, stored, ChunkId::of)? != *id {
        return Err("hash mismatch".into());
    }
    Ok(())
}
