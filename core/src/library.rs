//! The content library: a single-instance chunk store shared by every package and version.
//!
//! # Layout
//! ```text
//! LIB/library.toml                      configuration (roots, reserve, chunk sizes, ...)
//! LIB/lock                              flock: exclusive for writers, shared for readers
//! LIB/manifests/<PKG>/<VERSION>.fmf     canonical manifests; their presence is a reference
//! ROOT/packs/pack-NNNNNNNN.{dat,idx}    chunk data and its index, on each storage root
//! ```
//! # Invariants
//! - Chunk bytes are durable before an index entry names them, and every chunk a manifest
//!   names is indexed and durable before the manifest file appears (atomic rename + dir fsync).
//! - A chunk is referenced by the manifests that list it; reference counts are derived from the
//!   manifests when needed (stats, gc) rather than stored, so they can never drift.
//! - Opening for write repairs what a crash can leave: torn index tails, unindexed pack tails,
//!   data files whose index is gone, stray temporary manifests.

use crate::config::{CONFIG_FILE, LibraryConfig};
use crate::engine::{Engine, IoMode, Pending};
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, PackageId};
use crate::manifest::Manifest;
use crate::pack::{self, FLAG_ZSTD, Loc, PACK_MAGIC};
use crate::writer::{Committed, PackInfo, Reuse, Writer, sync_dir};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A pack's data and index files as found on the roots: (root, path) of each.
type FoundPack = (Option<(usize, PathBuf)>, Option<(usize, PathBuf)>);

/// Whether a library is opened to read or to change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Shared lock; nothing is changed.
    Read,
    /// Exclusive lock; crash leftovers are repaired.
    Write,
}

/// An open content library.
pub struct Library {
    dir: PathBuf,
    config: LibraryConfig,
    roots: Vec<PathBuf>,
    engine: Engine,
    access: Access,
    _lock: File,
    pub(crate) packs: BTreeMap<u32, PackInfo>,
    pub(crate) index: HashMap<ChunkId, Loc>,
    files: Mutex<HashMap<u32, Arc<File>>>,
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
            Access::Write => lock.try_lock(),
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
        let mut lib = Library {
            dir: dir.to_path_buf(),
            config,
            roots,
            engine,
            access,
            _lock: lock,
            packs: BTreeMap::new(),
            index: HashMap::new(),
            files: Mutex::new(HashMap::new()),
        };
        lib.load_packs()?;
        if access == Access::Write {
            lib.clean_manifest_temps()?;
        }
        Ok(lib)
    }

    /// Opens `dir`, creating a default library there first if there is none.
    pub fn open_or_init(dir: &Path, io: Option<IoMode>) -> Result<Library> {
        if !dir.join(CONFIG_FILE).exists() {
            Library::init(dir, &LibraryConfig::default())?;
        }
        Library::open(dir, Access::Write, io)
    }

    fn load_packs(&mut self) -> Result<()> {
        let repair = self.access == Access::Write;
        let mut found: BTreeMap<u32, FoundPack> = BTreeMap::new();
        for (i, root) in self.roots.iter().enumerate() {
            let dir = root.join("packs");
            if repair {
                std::fs::create_dir_all(&dir).ctx(&dir, "create storage root")?;
            }
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, "list storage root", e)),
            };
            for item in rd {
                let item = item.ctx(&dir, "list storage root")?;
                let name = item.file_name();
                let Some((n, is_idx)) = pack::parse_name(&name.to_string_lossy()) else {
                    continue;
                };
                let slot = found.entry(n).or_default();
                let side = if is_idx { &mut slot.1 } else { &mut slot.0 };
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
        for (n, (data, idx)) in found {
            match (data, idx) {
                (Some((_, data)), None) => {
                    // An index is created before its data file and deleted before it, so this
                    // is garbage collection's leftover: its chunks live elsewhere.
                    if repair {
                        std::fs::remove_file(&data).ctx(&data, "remove orphan pack")?;
                    }
                }
                (None, Some((_, idx))) => {
                    if repair {
                        std::fs::remove_file(&idx).ctx(&idx, "remove orphan index")?;
                    }
                }
                (Some((root, data)), Some((_, idx))) => {
                    self.load_pack(n, root, data, idx, repair)?
                }
                (None, None) => {}
            }
        }
        Ok(())
    }

    fn load_pack(
        &mut self,
        n: u32,
        root: usize,
        data: PathBuf,
        idx: PathBuf,
        repair: bool,
    ) -> Result<()> {
        let data_len = std::fs::metadata(&data).ctx(&data, "stat pack")?.len();
        let mut ix = pack::read_index(&idx, n)?;
        // Entries must point inside the data file; cut at the first that does not.
        if let Some(bad) = ix.entries.iter().position(|(_, l)| l.end() > data_len) {
            tracing::warn!(pack = %data.display(), "index names bytes past the end of the pack; dropping them");
            ix.entries.truncate(bad);
            ix.valid_len = 8 + (bad * pack::ENTRY_LEN) as u64;
        }
        let end = ix
            .entries
            .iter()
            .map(|(_, l)| l.end())
            .max()
            .unwrap_or(PACK_MAGIC.len() as u64);
        if repair {
            if ix.valid_len < 8 {
                // The index header itself is torn: nothing was ever committed to this pack.
                std::fs::remove_file(&data).ctx(&data, "remove empty pack")?;
                std::fs::remove_file(&idx).ctx(&idx, "remove empty index")?;
                return Ok(());
            }
            if ix.file_len > ix.valid_len {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&idx)
                    .ctx(&idx, "open index")?;
                f.set_len(ix.valid_len).ctx(&idx, "truncate torn index")?;
                f.sync_all().ctx(&idx, "fsync index")?;
            }
            if data_len > end {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&data)
                    .ctx(&data, "open pack")?;
                f.set_len(end).ctx(&data, "truncate unindexed pack tail")?;
                f.sync_all().ctx(&data, "fsync pack")?;
            }
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
                idx_len: ix.valid_len.max(8),
            },
        );
        Ok(())
    }

    fn clean_manifest_temps(&self) -> Result<()> {
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
        assert_eq!(self.access, Access::Write, "library opened read-only");
    }

    /// Starts an append transaction. `reuse_last` lets it continue the newest pack.
    ///
    /// One transaction at a time per library: the caller serialises them (two open writers
    /// would pick the same new pack number). Nothing appended is visible until
    /// [`Writer::commit`] and [`apply`](Self::apply).
    pub fn writer(&self, reuse_last: bool) -> Writer {
        self.require_write();
        let next = self.packs.keys().next_back().map_or(1, |n| n + 1);
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
            next,
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
            reason: format!("pack {n} is not in the library"),
        })?;
        let f = Arc::new(File::open(&info.data).ctx(&info.data, "open pack")?);
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

    /// Starts reading a chunk's stored bytes.
    pub fn read_stored(&self, loc: &Loc) -> Result<Pending<Vec<u8>>> {
        let f = self.pack_file(loc.pack)?;
        Ok(self.engine.read_at(&f, loc.offset, loc.clen as usize))
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
        let pack = self.pack_path(loc.pack);
        let stored = self.read_stored(&loc)?.wait().ctx(&pack, "read pack")?;
        decode_chunk(id, &loc, &stored).map_err(|reason| Error::CorruptChunk {
            id: id.to_hex(),
            pack,
            reason,
        })
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

    /// All manifests.
    pub fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for (p, vs) in self.versions()? {
            for v in vs {
                out.push(self.manifest(&p, v)?);
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
        let path = self.manifest_path(&m.package, m.version);
        let bytes = m.encode();
        match std::fs::read(&path) {
            Ok(old) if old == bytes => return Ok(false),
            Ok(_) => {
                return Err(Error::VersionExists {
                    package: m.package.to_string(),
                    version: m.version,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, "read manifest", e)),
        }
        let pdir = path.parent().expect("package dir");
        if !pdir.exists() {
            std::fs::create_dir_all(pdir).ctx(pdir, "create manifest folder")?;
            sync_dir(pdir.parent().expect("manifests dir"))?;
        }
        write_atomic(&path, &bytes)?;
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

/// The versions named by the manifests in `rd` (the listing of package folder `pdir`),
/// ascending.
/// A library's stored manifests, read as plain files ([`Library::manifest_dir`]).
#[derive(Clone, Debug)]
pub struct ManifestDir {
    dir: PathBuf,
}

impl ManifestDir {
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

    /// Loads and validates one manifest.
    pub fn manifest(&self, package: &PackageId, version: u32) -> Result<Manifest> {
        let path = self.path(package, version);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSuchVersion {
                    package: package.to_string(),
                    version,
                });
            }
            Err(e) => return Err(Error::io(&path, "read manifest", e)),
        };
        let m = Manifest::decode(&bytes, &path.display().to_string())?;
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
