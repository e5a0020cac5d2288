//! Appending chunks to pack files as one all-or-nothing transaction.
//!
//! A [`Writer`] appends stored chunks to packs through the block engine in large batched
//! writes. [`Writer::commit`] makes the data durable (fdatasync) and only then writes the index
//! entries that name it (and syncs them). Dropping an uncommitted writer rolls back: new packs are
//! deleted and existing ones truncated to where they were, so a failed ingest leaves the library
//! exactly as it found it. A crash instead of a drop is cleaned up the same way when the library
//! is next opened for writing (see `Library::open`).

use crate::engine::{Engine, Pending};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::pack::{self, IDX_MAGIC, Loc, PACK_MAGIC};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Length of the data file covered by index entries.
    pub len: u64,
    /// Length of the index file.
    pub idx_len: u64,
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
    next_pack: u32,
    reuse: Option<Reuse>,
    cur: Option<OpenPack>,
    sealed: Vec<OpenPack>,
    batch: Vec<u8>,
    batch_offset: u64,
    /// Writes in flight: (completion, file, offset, length).
    pending: VecDeque<(Pending<()>, Arc<File>, u64, usize)>,
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
    /// Starts a transaction. `reuse` is a pack to keep appending to, if it has room.
    pub fn new(
        engine: Engine,
        roots: Vec<PathBuf>,
        reserve: u64,
        pack_size: u64,
        next_pack: u32,
        reuse: Option<Reuse>,
    ) -> Writer {
        Writer {
            engine,
            roots,
            reserve,
            pack_size,
            next_pack,
            reuse,
            cur: None,
            sealed: Vec::new(),
            batch: Vec::new(),
            batch_offset: 0,
            pending: VecDeque::new(),
            done: false,
        }
    }

    /// Bytes appended so far (stored size).
    pub fn bytes_written(&self) -> u64 {
        self.sealed
            .iter()
            .chain(self.cur.as_ref())
            .map(|p| p.len - p.start_len)
            .sum()
    }

    /// Appends one stored chunk and returns where it will live.
    pub fn append(&mut self, id: ChunkId, ulen: u32, flags: u8, data: &[u8]) -> Result<Loc> {
        let need = data.len() as u64;
        self.ensure_room(need)?;
        let cur = self.cur.as_mut().expect("open pack");
        let loc = Loc {
            pack: cur.n,
            offset: cur.len,
            clen: data.len() as u32,
            ulen,
            flags,
        };
        if self.batch.is_empty() {
            self.batch_offset = cur.len;
        }
        self.batch.extend_from_slice(data);
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
        let header = (PACK_MAGIC.len() + IDX_MAGIC.len()) as u64;
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
        let n = self.next_pack;
        self.next_pack += 1;
        let (data_path, idx_path) = pack::paths(&self.roots[root], n);
        // The index is created first: a data file without an index is a leftover of an
        // interrupted garbage collection and is deleted at the next open.
        let idx = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&idx_path)
            .ctx(&idx_path, "create index")?;
        idx.write_all_at(IDX_MAGIC, 0)
            .ctx(&idx_path, "write index")?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&data_path)
            .ctx(&data_path, "create pack")?;
        let mut op = OpenPack {
            n,
            root,
            data_path,
            idx_path,
            file: Arc::new(file),
            start_len: 0,
            len: 0,
            idx_start_len: 0,
            created: true,
            budget: space - header,
            entries: Vec::new(),
        };
        op.file
            .write_all_at(PACK_MAGIC, 0)
            .ctx(&op.data_path, "write pack")?;
        op.len = PACK_MAGIC.len() as u64;
        self.cur = Some(op);
        Ok(())
    }

    /// Makes everything appended durable, then indexes it. Nothing is visible before this.
    pub fn commit(mut self) -> Result<Committed> {
        self.flush_batch()?;
        self.wait_all()?;
        let mut packs = Vec::new();
        let mut entries = Vec::new();
        let all: Vec<&OpenPack> = self.sealed.iter().chain(self.cur.as_ref()).collect();
        let mut dirs = Vec::new();
        for p in &all {
            p.file.sync_data().ctx(&p.data_path, "fsync pack")?;
        }
        for p in &all {
            let mut buf = Vec::with_capacity(p.entries.len() * pack::ENTRY_LEN);
            for (id, loc) in &p.entries {
                buf.extend_from_slice(&pack::encode_entry(id, loc));
            }
            let idx = OpenOptions::new()
                .write(true)
                .open(&p.idx_path)
                .ctx(&p.idx_path, "open index")?;
            let at = if p.created {
                IDX_MAGIC.len() as u64
            } else {
                p.idx_start_len
            };
            idx.write_all_at(&buf, at)
                .map_err(|e| self.write_error(&p.idx_path, e))?;
            idx.sync_data().ctx(&p.idx_path, "fsync index")?;
            if p.created {
                dirs.push(p.data_path.parent().expect("packs dir").to_path_buf());
            }
            packs.push((
                p.n,
                PackInfo {
                    root: p.root,
                    data: p.data_path.clone(),
                    idx: p.idx_path.clone(),
                    len: p.len,
                    idx_len: at + buf.len() as u64,
                },
            ));
            entries.extend_from_slice(&p.entries);
        }
        dirs.dedup();
        for d in dirs {
            sync_dir(&d)?;
        }
        self.done = true;
        Ok(Committed { packs, entries })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.wait_all();
        for p in self.sealed.iter().chain(self.cur.as_ref()) {
            if p.created {
                let _ = std::fs::remove_file(&p.data_path);
                let _ = std::fs::remove_file(&p.idx_path);
            } else {
                let _ = p.file.set_len(p.start_len);
                if let Ok(f) = OpenOptions::new().write(true).open(&p.idx_path) {
                    let _ = f.set_len(p.idx_start_len);
                }
            }
        }
    }
}
