//! Appending chunks to pack files as all-or-nothing transactions.
//!
//! A [`Writer`] appends stored chunks (each behind its record header, see [`crate::pack`]) to
//! packs through the block engine in large batched writes. [`Writer::commit`] makes the data
//! durable (fdatasync, and the folder of new packs), then appends and syncs the index entries
//! that name it, and only then moves the index header's committed length over them (synced
//! again). Dropping an uncommitted writer rolls back: new packs are deleted (index first, as a
//! tombstone) and existing ones cut back to their committed length, so a failed ingest leaves
//! the library exactly as it found it. A crash instead of a drop leaves only bytes past the
//! committed lengths, which the next open for writing cuts (see `Library::open`).
//!
//! A long transaction may commit in steps ([`Writer::checkpoint`]), each one exactly like a
//! commit, so the index entries it holds in memory are bounded by one step: a rollback then
//! undoes only the step under way.
//!
//! Pack numbers come from [`PackNumbers`]: a number that named a visible pack is never used
//! again, even after that pack was collected.

use crate::engine::{Engine, Pending};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::pack::{self, FORMAT, IDX_HEADER, Loc, PACK_MAGIC, RECORD_HEADER};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const BATCH: usize = 4 << 20;
const MAX_PENDING: usize = 6;

/// A pack as the library knows it.
#[derive(Clone, Debug)]
pub struct PackInfo {
    /// Index of its storage root.
    pub root: usize,
    /// Data file.
    pub data: PathBuf,
    /// Index file.
    pub idx: PathBuf,
    /// Length of the data file covered by committed index entries.
    pub len: u64,
    /// Committed length of the index file.
    pub idx_len: u64,
    /// Pack format (1 or 2); only packs of the current format are appended to.
    pub format: u8,
}

/// The pack numbers of a library: a number that named a visible pack is never used again.
///
/// New numbers go above every pack on disk and above `LIB/pack-seq`, which records (written
/// atomically) one past the highest number whose pack was ever deleted: it is raised before a
/// collection or a repair removes a pack, so a collected number is never given to a new pack,
/// neither in this process (where a sender may still hold a location in it) nor after a
/// restart. Handing a number out costs no I/O; a rolled-back pack, never visible, may give
/// its number back.
#[derive(Debug)]
pub struct PackNumbers {
    path: PathBuf,
    /// (next number to hand out, the number recorded on disk).
    state: Mutex<(u32, u32)>,
}

const SEQ_MAGIC: &[u8; 8] = b"FRSEQ\x00\x00\x01";

impl PackNumbers {
    /// Reads `path` (absent: no pack was ever deleted); the next number is above both what
    /// it says and `floor` (one past the highest pack found on disk).
    pub fn load(path: &Path, floor: u32) -> Result<PackNumbers> {
        let recorded = match std::fs::read(path) {
            Ok(b) => {
                let ok = b.len() == 24
                    && &b[..8] == SEQ_MAGIC
                    && blake3::hash(&b[..16]).as_bytes()[..8] == b[16..];
                if !ok {
                    return Err(Error::NeedsRepair {
                        path: path.to_path_buf(),
                        reason: "pack number record is damaged".into(),
                    });
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[8..16]);
                u32::try_from(u64::from_le_bytes(n)).unwrap_or(u32::MAX)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::io(path, "read", e)),
        };
        Ok(PackNumbers {
            path: path.to_path_buf(),
            state: Mutex::new((floor.max(recorded).max(1), recorded)),
        })
    }

    /// A placeholder until [`load`](Self::load) can run.
    pub(crate) fn unloaded(path: &Path) -> PackNumbers {
        PackNumbers {
            path: path.to_path_buf(),
            state: Mutex::new((1, 0)),
        }
    }

    /// Replaces a damaged record: numbers start at `next`, recorded on disk at once.
    pub(crate) fn reset(path: &Path, next: u32) -> Result<PackNumbers> {
        let numbers = PackNumbers::unloaded(path);
        numbers.retire(next.saturating_sub(1))?;
        Ok(numbers)
    }

    /// The number the next new pack will get.
    pub fn peek(&self) -> u32 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Hands out a number.
    pub fn allocate(&self) -> Result<u32> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 == u32::MAX {
            return Err(Error::BadLibrary {
                path: self.path.clone(),
                reason: "no pack numbers left".into(),
            });
        }
        st.0 += 1;
        Ok(st.0 - 1)
    }

    /// Records on disk, before pack `n` is deleted, that `n` must never be used again.
    pub fn retire(&self, n: u32) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let above = n.saturating_add(1);
        if st.1 >= above {
            return Ok(());
        }
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(SEQ_MAGIC);
        b.extend_from_slice(&(above as u64).to_le_bytes());
        let c = blake3::hash(&b);
        b.extend_from_slice(&c.as_bytes()[..8]);
        crate::library::write_atomic(&self.path, &b)?;
        st.1 = above;
        st.0 = st.0.max(above);
        Ok(())
    }

    /// Gives back `n` if it was the last number handed out and its pack never became
    /// visible (a rolled-back transaction), so failed attempts do not use numbers up.
    pub(crate) fn give_back(&self, n: u32) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 == n.saturating_add(1) && n >= st.1 {
            st.0 = n;
        }
    }
}

/// The pack a writer may continue appending to.
pub struct Reuse {
    /// Pack number.
    pub n: u32,
    /// Its state.
    pub info: PackInfo,
}

struct OpenPack {
    n: u32,
    root: usize,
    data_path: PathBuf,
    idx_path: PathBuf,
    file: Arc<File>,
    start_len: u64,
    len: u64,
    idx_start_len: u64,
    created: bool,
    budget: u64,
    entries: Vec<(ChunkId, Loc)>,
    /// Whether the index header may have moved past `idx_start_len` (a commit got that far),
    /// so a rollback must write it back.
    header_moved: bool,
}

/// What a committed transaction added.
pub struct Committed {
    /// Packs created or grown, with their new state.
    pub packs: Vec<(u32, PackInfo)>,
    /// New index entries.
    pub entries: Vec<(ChunkId, Loc)>,
}

/// An append transaction on the packs of a library.
pub struct Writer {
    engine: Engine,
    roots: Vec<PathBuf>,
    reserve: u64,
    pack_size: u64,
    numbers: Arc<PackNumbers>,
    reuse: Option<Reuse>,
    cur: Option<OpenPack>,
    sealed: Vec<OpenPack>,
    batch: Vec<u8>,
    batch_offset: u64,
    /// Writes in flight: (completion, file, offset, length).
    pending: VecDeque<(Pending<()>, Arc<File>, u64, usize)>,
    /// Stored bytes of the chunks appended (for reports).
    payload: u64,
    done: bool,
}

/// Bytes usable on the file system holding `path`, after the reserve.
pub fn usable_space(path: &Path, reserve: u64) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| Error::io(path, "statvfs", std::io::Error::from(e)))?;
    let avail = st.blocks_available() as u64 * st.fragment_size() as u64;
    Ok(avail.saturating_sub(reserve))
}

/// Starts writing a range back to disk without waiting, so the fdatasync at commit finds most
/// of the data already written instead of flushing the whole ingest at the end.
fn start_writeback(file: &File, off: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; failure is harmless here
    // because commit still calls fdatasync.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            off as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// fsyncs a directory, making renames and new entries in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(dir, "fsync directory")
}

impl Writer {
    /// Starts a transaction. `reuse` is a pack to keep appending to, if it has room and is of
    /// the current format; new packs take their numbers from `numbers`.
    pub fn new(
        engine: Engine,
        roots: Vec<PathBuf>,
        reserve: u64,
        pack_size: u64,
        numbers: Arc<PackNumbers>,
        reuse: Option<Reuse>,
    ) -> Writer {
        Writer {
            engine,
            roots,
            reserve,
            pack_size,
            numbers,
            reuse: reuse.filter(|r| r.info.format == FORMAT),
            cur: None,
            sealed: Vec::new(),
            batch: Vec::new(),
            batch_offset: 0,
            pending: VecDeque::new(),
            payload: 0,
            done: false,
        }
    }

    /// Stored bytes of the chunks appended so far (record headers not counted).
    pub fn bytes_written(&self) -> u64 {
        self.payload
    }

    /// Appends one stored chunk and returns where it will live.
    pub fn append(&mut self, id: ChunkId, ulen: u32, flags: u8, data: &[u8]) -> Result<Loc> {
        let clen = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let loc_check = Loc {
            pack: 0,
            offset: 0,
            clen,
            ulen,
            flags,
        };
        if !loc_check.is_plausible() {
            // Never write an entry that reading back would refuse.
            return Err(Error::CorruptChunk {
                id: id.to_hex(),
                pack: PathBuf::from("(being stored)"),
                reason: format!("implausible lengths: stored {clen}, plain {ulen}, flags {flags}"),
            });
        }
        let need = (RECORD_HEADER + data.len()) as u64;
        self.ensure_room(need)?;
        let cur = self.cur.as_mut().expect("open pack");
        let loc = Loc {
            pack: cur.n,
            offset: cur.len + RECORD_HEADER as u64,
            clen,
            ulen,
            flags,
        };
        if self.batch.is_empty() {
            self.batch_offset = cur.len;
        }
        self.batch
            .extend_from_slice(&pack::encode_record(&id, clen, ulen, flags));
        self.batch.extend_from_slice(data);
        self.payload += data.len() as u64;
        cur.len += need;
        cur.budget -= need;
        cur.entries.push((id, loc));
        if self.batch.len() >= BATCH {
            self.flush_batch()?;
        }
        Ok(loc)
    }

    fn flush_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let cur = self.cur.as_ref().expect("open pack");
        let data = Bytes::from(std::mem::replace(
            &mut self.batch,
            Vec::with_capacity(BATCH),
        ));
        let len = data.len();
        let pending = self.engine.write_at(&cur.file, self.batch_offset, data);
        self.pending
            .push_back((pending, cur.file.clone(), self.batch_offset, len));
        let path = cur.data_path.clone();
        while self.pending.len() > MAX_PENDING {
            let (p, file, off, len) = self.pending.pop_front().expect("pending");
            p.wait().map_err(|e| self.write_error(&path, e))?;
            start_writeback(&file, off, len);
        }
        Ok(())
    }

    fn write_error(&self, path: &Path, e: std::io::Error) -> Error {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            Error::StorageFull {
                path: path
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(path)
                    .to_path_buf(),
                needed: BATCH as u64,
                reserve: self.reserve,
            }
        } else {
            Error::io(path, "write pack", e)
        }
    }

    fn wait_all(&mut self) -> Result<()> {
        let path = self
            .cur
            .as_ref()
            .map(|c| c.data_path.clone())
            .unwrap_or_default();
        let mut first = Ok(());
        while let Some((p, _, _, _)) = self.pending.pop_front() {
            if let Err(e) = p.wait()
                && first.is_ok()
            {
                first = Err(self.write_error(&path, e));
            }
        }
        first
    }

    fn ensure_room(&mut self, need: u64) -> Result<()> {
        if let Some(cur) = &mut self.cur {
            let full = cur.len > PACK_MAGIC.len() as u64 && cur.len + need > self.pack_size;
            if !full && need <= cur.budget {
                return Ok(());
            }
            if !full {
                // Others may have freed space since the pack was opened: look again, once our
                // own writes have landed so the file system's count includes them.
                self.flush_batch()?;
                self.wait_all()?;
                let cur = self.cur.as_mut().expect("open pack");
                cur.budget = usable_space(&self.roots[cur.root], self.reserve)?;
                if need <= cur.budget {
                    return Ok(());
                }
            }
            self.seal()?;
        } else if let Some(r) = self.reuse.take()
            && r.info.len + need <= self.pack_size
        {
            let budget = usable_space(&self.roots[r.info.root], self.reserve)?;
            if need <= budget {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&r.info.data)
                    .ctx(&r.info.data, "open pack")?;
                self.cur = Some(OpenPack {
                    n: r.n,
                    root: r.info.root,
                    data_path: r.info.data,
                    idx_path: r.info.idx,
                    file: Arc::new(file),
                    start_len: r.info.len,
                    len: r.info.len,
                    idx_start_len: r.info.idx_len,
                    created: false,
                    budget,
                    entries: Vec::new(),
                    header_moved: false,
                });
                return Ok(());
            }
        }
        self.open_new(need)
    }

    fn seal(&mut self) -> Result<()> {
        self.flush_batch()?;
        if let Some(p) = self.cur.take() {
            self.sealed.push(p);
        }
        Ok(())
    }

    fn open_new(&mut self, need: u64) -> Result<()> {
        // Writes still in flight are not yet counted by statvfs; let them land first so the
        // reserve is judged on true numbers.
        self.wait_all()?;
        let header = (PACK_MAGIC.len() + IDX_HEADER) as u64;
        let mut best: Option<(usize, u64)> = None;
        for (i, root) in self.roots.iter().enumerate() {
            let space = usable_space(root, self.reserve)?;
            if best.is_none_or(|(_, b)| space > b) {
                best = Some((i, space));
            }
        }
        let (root, space) = best.expect("at least one root");
        if space < need + header {
            let path = if self.roots.len() == 1 {
                self.roots[0].clone()
            } else {
                PathBuf::from(
                    self.roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            };
            return Err(Error::StorageFull {
                path,
                needed: need + header - space,
                reserve: self.reserve,
            });
        }
        let n = self.numbers.allocate()?;
        let (data_path, idx_path) = pack::paths(&self.roots[root], n);
        let dir = data_path.parent().expect("packs dir").to_path_buf();
        // The index is created first and made durable (header and folder entry) before the
        // data file exists: after a crash a data file always has its index, and an index
        // without data names nothing committed.
        let idx = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&idx_path)
            .ctx(&idx_path, "create index")?;
        let created = (|| {
            idx.write_all_at(&pack::encode_idx_header(IDX_HEADER as u64), 0)
                .ctx(&idx_path, "write index")?;
            idx.sync_data().ctx(&idx_path, "fsync index")?;
            sync_dir(&dir)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&data_path)
                .ctx(&data_path, "create pack")?;
            file.write_all_at(PACK_MAGIC, 0)
                .ctx(&data_path, "write pack")?;
            Ok(file)
        })();
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                remove_pack(&data_path, &idx_path, n);
                self.numbers.give_back(n);
                return Err(e);
            }
        };
        self.cur = Some(OpenPack {
            n,
            root,
            data_path,
            idx_path,
            file: Arc::new(file),
            start_len: 0,
            len: PACK_MAGIC.len() as u64,
            idx_start_len: IDX_HEADER as u64,
            created: true,
            budget: space - header,
            entries: Vec::new(),
            header_moved: false,
        });
        Ok(())
    }

    /// Index entries appended since the transaction began or since the last
    /// [`checkpoint`](Self::checkpoint): what is held in memory until it commits.
    pub fn uncommitted(&self) -> usize {
        self.sealed
            .iter()
            .chain(self.cur.as_ref())
            .map(|p| p.entries.len())
            .sum()
    }

    /// Makes everything appended durable, then indexes it. Nothing is visible before this.
    pub fn commit(mut self) -> Result<Committed> {
        let committed = self.commit_appended()?;
        self.done = true;
        Ok(committed)
    }

    /// Commits what was appended so far, as [`commit`](Self::commit) does, and keeps the
    /// transaction open for more: a long append (an ingest of a million new chunks) commits
    /// in steps, so the entries it holds in memory stay bounded by what it appends between
    /// two checkpoints. A later rollback (drop) undoes only what was appended since: what a
    /// checkpoint committed stays, as after a [`commit`](Self::commit). When a checkpoint
    /// fails, nothing of its step is committed and the writer must be dropped.
    pub fn checkpoint(&mut self) -> Result<Committed> {
        let committed = self.commit_appended()?;
        // Sealed packs are complete and committed: nothing of them is left to roll back.
        self.sealed.clear();
        if let Some(p) = &mut self.cur {
            let idx_len = committed
                .packs
                .iter()
                .find(|(n, _)| *n == p.n)
                .map_or(p.idx_start_len, |(_, info)| info.idx_len);
            // The open pack is now visible: a rollback cuts it back to here, never deletes it.
            p.start_len = p.len;
            p.idx_start_len = idx_len;
            p.created = false;
            p.header_moved = false;
        }
        Ok(committed)
    }

    /// The commit itself: data durable, then index entries, then committed lengths. The
    /// packs' entries are handed over in the result; their rollback state is left for the
    /// caller to move (only once every pack of the step committed).
    fn commit_appended(&mut self) -> Result<Committed> {
        self.flush_batch()?;
        self.wait_all()?;
        let mut packs = Vec::new();
        let mut dirs = Vec::new();
        for p in self.sealed.iter().chain(self.cur.as_ref()) {
            p.file.sync_data().ctx(&p.data_path, "fsync pack")?;
            if p.created {
                dirs.push(p.data_path.parent().expect("packs dir").to_path_buf());
            }
        }
        // New data files' folder entries are durable before any index names their bytes.
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            sync_dir(&d)?;
        }
        let n_packs = self.sealed.len() + usize::from(self.cur.is_some());
        for i in 0..n_packs {
            let p = if i < self.sealed.len() {
                &self.sealed[i]
            } else {
                self.cur.as_ref().expect("open pack")
            };
            let mut buf = Vec::with_capacity(p.entries.len() * pack::ENTRY_LEN);
            for (id, loc) in &p.entries {
                buf.extend_from_slice(&pack::encode_entry(id, loc));
            }
            let at = p.idx_start_len;
            let committed = at + buf.len() as u64;
            let (idx_path, n) = (p.idx_path.clone(), p.n);
            let idx = OpenOptions::new()
                .write(true)
                .open(&idx_path)
                .ctx(&idx_path, "open index")?;
            idx.write_all_at(&buf, at)
                .map_err(|e| self.write_error(&idx_path, e))?;
            idx.sync_data().ctx(&idx_path, "fsync index")?;
            // The entries are durable: only now may the header say they are committed.
            let p = if i < self.sealed.len() {
                &mut self.sealed[i]
            } else {
                self.cur.as_mut().expect("open pack")
            };
            p.header_moved = true;
            idx.write_all_at(&pack::encode_idx_header(committed), 0)
                .map_err(|e| self.write_error(&idx_path, e))?;
            idx.sync_data().ctx(&idx_path, "fsync index")?;
            let p = if i < self.sealed.len() {
                &self.sealed[i]
            } else {
                self.cur.as_ref().expect("open pack")
            };
            packs.push((
                n,
                PackInfo {
                    root: p.root,
                    data: p.data_path.clone(),
                    idx: idx_path,
                    len: p.len,
                    idx_len: committed,
                    format: FORMAT,
                },
            ));
        }
        // Every pack of the step committed: its entries move to the result, not copied.
        let mut entries = Vec::new();
        for p in self.sealed.iter_mut().chain(self.cur.as_mut()) {
            if entries.is_empty() {
                entries = std::mem::take(&mut p.entries);
            } else {
                entries.append(&mut p.entries);
            }
        }
        Ok(Committed { packs, entries })
    }
}

/// Deletes pack `n`'s files the crash-safe way: the index becomes a tombstone (folder synced)
/// before the data file goes, so a crash in between is finished by the next open instead of
/// looking like a lost index. Errors are returned; the caller decides whether they matter.
pub(crate) fn delete_pack(data: &Path, idx: &Path, n: u32) -> Result<()> {
    let dir = idx.parent().expect("packs dir");
    let tomb = dir.join(pack::tombstone_name(n));
    match std::fs::rename(idx, &tomb) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(idx, "mark pack deleted", e)),
    }
    sync_dir(dir)?;
    match std::fs::remove_file(data) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(data, "remove pack", e)),
    }
    std::fs::remove_file(&tomb).ctx(&tomb, "remove tombstone")?;
    Ok(())
}

/// Best-effort [`delete_pack`] on a rollback path.
fn remove_pack(data: &Path, idx: &Path, n: u32) {
    if let Err(e) = delete_pack(data, idx, n) {
        tracing::warn!(error = %e, "could not remove a rolled-back pack; the next open finishes it");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.wait_all();
        // Newest first, so each number can go back to the allocator.
        for p in self.cur.iter().chain(self.sealed.iter().rev()) {
            if p.created {
                remove_pack(&p.data_path, &p.idx_path, p.n);
                self.numbers.give_back(p.n);
                continue;
            }
            // Header first, so it never claims entries that are cut below.
            if let Ok(f) = OpenOptions::new().write(true).open(&p.idx_path) {
                if p.header_moved {
                    let _ = f.write_all_at(&pack::encode_idx_header(p.idx_start_len), 0);
                    let _ = f.sync_data();
                }
                let _ = f.set_len(p.idx_start_len);
            }
            let _ = p.file.set_len(p.start_len);
        }
    }
}
