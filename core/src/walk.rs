//! Walking a source folder into the list of entries a manifest will hold, and opening its files
//! again for the snapshot to read, without ever following what the walk did not see.
//!
//! Everything that can make an ingest fail on the source's shape is found here: special files,
//! symlinks leaving the tree, names a manifest cannot carry, unreadable directories. The walk
//! streams ([`Walk`]), so these are found when it reaches them, while the snapshot runs; the
//! snapshot then fails and rolls back what it wrote, leaving the library as it was.
//!
//! # A source that changes under the snapshot
//! Whoever can write in the source folder can swap a file or folder for a symlink to something
//! outside it between the moment the walk lists it and the moment the snapshot reads it; the
//! snapshot runs as root on a site server, so the symlink may name a file only root may read.
//! Paths are therefore never resolved twice. The root is opened once; every folder and file
//! below it is opened relative to its parent folder's descriptor, one name at a time, never
//! following a symlink (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS`, or `openat` with `O_NOFOLLOW` where the kernel lacks `openat2`).
//! Folders are listed through the descriptor that was opened, and whatever is opened is checked
//! with `fstat` to be of the same kind and the same object (device and inode) the walk recorded.
//! Anything else is [`Error::SourceChanged`]: the user snapshots again when the source is quiet.

use crate::error::{Error, Result};
use crate::manifest::{check_path, check_symlink_target, parent_of};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a source entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory.
    Dir,
    /// A regular file of the given size (at walk time).
    File {
        /// Size when walked.
        size: u64,
    },
    /// A symlink inside the tree.
    Symlink {
        /// Its target.
        target: Vec<u8>,
    },
}

/// Which object a name led to: device and inode numbers, as `fstat` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    fn of_stat(st: &FileStat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// The identity of an opened file.
    pub fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One entry of the source tree.
#[derive(Clone, Debug)]
pub struct SourceEntry {
    /// Path relative to the source root, `/`-separated bytes (empty for the root).
    pub rel: Vec<u8>,
    /// Kind.
    pub kind: SourceKind,
    /// Permission bits.
    pub mode: u32,
    /// mtime seconds.
    pub mtime_sec: i64,
    /// mtime nanoseconds.
    pub mtime_nsec: u32,
    /// ctime (status change: any write, chmod, rename, new inode) seconds and nanoseconds,
    /// which no one can set back: the quick check compares it with the base's.
    pub ctime: (i64, u32),
    /// The object the walk saw under this name; opening it later must lead to the same one.
    pub id: FileId,
    /// The folder holding it, with the folders above it (none for the root): what opening it
    /// again must find on the way.
    parent: Option<Arc<DirNode>>,
}

/// A folder the walk listed, and the one holding it: the chain of folder identities a file
/// below them is opened through, shared by every entry listed there.
#[derive(Debug)]
struct DirNode {
    rel: Vec<u8>,
    id: FileId,
    parent: Option<Arc<DirNode>>,
}

/// The walked identity of the folder `rel` among `node` and the folders above it.
fn id_in_chain(node: Option<&Arc<DirNode>>, rel: &[u8]) -> Option<FileId> {
    let mut n = node;
    while let Some(d) = n {
        if d.rel == rel {
            return Some(d.id);
        }
        n = d.parent.as_ref();
    }
    None
}

/// A walked source folder: its entries, and the descriptor of its root through which every
/// file is opened again.
#[derive(Debug)]
pub struct SourceTree {
    root: PathBuf,
    fd: OwnedFd,
    entries: Vec<SourceEntry>,
}

impl SourceTree {
    /// The source folder as the caller named it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries in manifest order (sorted by path bytes, root first).
    pub fn entries(&self) -> &[SourceEntry] {
        &self.entries
    }

    /// The on-disk path of an entry, for messages only: nothing is opened by it.
    pub fn path_of(&self, rel: &[u8]) -> PathBuf {
        path_of(&self.root, rel)
    }

    /// An opener of this tree's files (one per thread: it keeps the folders it went through
    /// open, so that files of one folder cost one `openat` each).
    pub fn opener(&self) -> Result<Opener> {
        Opener::new(&self.fd, &self.root)
    }

    /// The walked identity of the folder at `rel`, if the walk saw a folder there.
    #[cfg(test)]
    fn dir_id(&self, rel: &[u8]) -> Option<FileId> {
        let i = self
            .entries
            .binary_search_by(|e| e.rel.as_slice().cmp(rel))
            .ok()?;
        let e = &self.entries[i];
        (e.kind == SourceKind::Dir).then_some(e.id)
    }
}

/// Opens the regular files of a walked tree ([`SourceTree`] or [`Walk`]) for reading, each
/// relative to its parent folder's descriptor, and checks each is the file the walk saw.
pub struct Opener {
    root: PathBuf,
    chain: Chain,
}

impl Opener {
    fn new(fd: &OwnedFd, root: &Path) -> Result<Opener> {
        let fd = fd
            .try_clone()
            .map_err(|e| Error::io(root, "duplicate descriptor", e))?;
        Ok(Opener {
            root: root.to_path_buf(),
            chain: Chain::new(fd, root.to_path_buf()),
        })
    }

    /// Opens the regular file `e` and returns it with its metadata (`fstat` of the descriptor).
    /// Fails with [`Error::SourceChanged`] when the name no longer leads to the walked file, or
    /// when a folder on the way no longer is the walked folder.
    pub fn open_file(&mut self, e: &SourceEntry) -> Result<(File, Metadata)> {
        let parent = parent_of(&e.rel);
        let name = &e.rel[parent.len() + usize::from(!parent.is_empty())..];
        let root = self.root.clone();
        let path = || path_of(&root, &e.rel);
        let chain = e.parent.as_ref();
        let dir = self.chain.goto(parent, &|p| id_in_chain(chain, p))?;
        // O_NONBLOCK: a FIFO swapped in under this name must not block the open; it is
        // refused just below.
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
        let fd = open_beneath(dir, name, flags).map_err(|err| open_error(err, path()))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|source| Error::Unreadable {
            path: path(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(changed(path(), format!("now a {}", kind_name(meta.mode()))));
        }
        if FileId::of(&meta) != e.id {
            return Err(changed(path(), "replaced by another file"));
        }
        // Reads of the regular file must wait for the disk as usual: io_uring would hand back
        // EAGAIN for a non-blocking one.
        nix::fcntl::fcntl(&file, FcntlArg::F_SETFL(OFlag::empty())).map_err(|err| {
            Error::Unreadable {
                path: path(),
                source: err.into(),
            }
        })?;
        Ok((file, meta))
    }
}

/// Walks `root` and returns its entries in manifest order (sorted by path bytes, root first):
/// [`Walk`] collected, for callers that want the whole tree in memory.
///
/// `root` itself is resolved once, as the caller named it (a symlink there is followed);
/// nothing below it is resolved by path, and no symlink below it is followed.
pub fn walk(root: &Path) -> Result<SourceTree> {
    let mut w = Walk::new(root)?;
    let mut entries = Vec::new();
    while let Some(e) = w.next_entry()? {
        entries.push(e);
    }
    Ok(SourceTree {
        root: root.to_path_buf(),
        fd: w.fd,
        entries,
    })
}

/// One item of a folder's listing, in the order the walk gives them: an entry at its path,
/// a subfolder's contents at its path followed by `/`. Sorting a folder's items by those
/// keys interleaves a subfolder's contents with its siblings exactly as sorting full paths
/// does (`a/b`, `a/b.txt`, `a/b/c`), so the walk yields manifest order one folder at a time.
enum Item {
    Entry(SourceEntry),
    Subtree(Arc<DirNode>),
}

impl Item {
    fn key(&self) -> Vec<u8> {
        match self {
            Item::Entry(e) => e.rel.clone(),
            Item::Subtree(d) => {
                let mut k = d.rel.clone();
                k.push(b'/');
                k
            }
        }
    }
}

/// A streaming walk of a source folder: yields its entries in manifest order (sorted by path
/// bytes, root first) while holding only the listings of the folders on the current path
/// (memory in proportion to depth times the widest folder, not to the tree). Refuses what
/// [`walk`] refuses, when it reaches it.
pub struct Walk {
    root: PathBuf,
    fd: OwnedFd,
    chain: Chain,
    /// The listings being gone through, the deepest last.
    frames: Vec<VecDeque<Item>>,
    /// The root's entry and folder, before the first call.
    first: Option<(SourceEntry, Arc<DirNode>)>,
    failed: bool,
}

impl Walk {
    /// Opens `root` (resolved once, as the caller named it) for a walk.
    pub fn new(root: &Path) -> Result<Walk> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::open(root, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(Error::SourceMissing(root.to_path_buf())),
            Err(Errno::ENOTDIR) => {
                return Err(Error::BadName {
                    path: root.to_path_buf(),
                    reason: "the source of a package must be a folder",
                });
            }
            Err(err) => {
                return Err(Error::Unreadable {
                    path: root.to_path_buf(),
                    source: err.into(),
                });
            }
        };
        let st = nix::sys::stat::fstat(&fd).map_err(|err| Error::Unreadable {
            path: root.to_path_buf(),
            source: err.into(),
        })?;
        let node = Arc::new(DirNode {
            rel: Vec::new(),
            id: FileId::of_stat(&st),
            parent: None,
        });
        let chain_root = fd
            .try_clone()
            .map_err(|e| Error::io(root, "duplicate descriptor", e))?;
        Ok(Walk {
            root: root.to_path_buf(),
            chain: Chain::new(chain_root, root.to_path_buf()),
            fd,
            frames: Vec::new(),
            first: Some((entry(Vec::new(), SourceKind::Dir, &st, None), node)),
            failed: false,
        })
    }

    /// The source folder as the caller named it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The on-disk path of an entry, for messages only: nothing is opened by it.
    pub fn path_of(&self, rel: &[u8]) -> PathBuf {
        path_of(&self.root, rel)
    }

    /// An opener of the walked files (see [`SourceTree::opener`]).
    pub fn opener(&self) -> Result<Opener> {
        Opener::new(&self.fd, &self.root)
    }

    /// The next entry in manifest order, `None` after the last.
    pub fn next_entry(&mut self) -> Result<Option<SourceEntry>> {
        if self.failed {
            return Ok(None);
        }
        let res = self.advance();
        if res.is_err() {
            self.failed = true;
        }
        res
    }

    fn advance(&mut self) -> Result<Option<SourceEntry>> {
        if let Some((e, node)) = self.first.take() {
            let items = self.list(&node)?;
            self.frames.push(items);
            return Ok(Some(e));
        }
        loop {
            let Some(top) = self.frames.last_mut() else {
                return Ok(None);
            };
            match top.pop_front() {
                None => {
                    self.frames.pop();
                }
                Some(Item::Entry(e)) => return Ok(Some(e)),
                Some(Item::Subtree(node)) => {
                    let items = self.list(&node)?;
                    self.frames.push(items);
                }
            }
        }
    }

    /// Lists the folder `node` (opened through the chain, checked to be the folder walked),
    /// stats each name, and returns its items sorted.
    fn list(&mut self, node: &Arc<DirNode>) -> Result<VecDeque<Item>> {
        let root = self.root.clone();
        let unreadable = |path: PathBuf| {
            move |err: Errno| Error::Unreadable {
                path,
                source: err.into(),
            }
        };
        let rel_dir = node.rel.as_slice();
        let dir = self.chain.goto(rel_dir, &|p| id_in_chain(Some(node), p))?;
        let dir_path = || path_of(&root, rel_dir);
        // The listing reads a duplicate of the descriptor that was opened and checked: the
        // folder is never looked up again by name.
        let listing = dir
            .try_clone_to_owned()
            .map_err(|e| Error::io(dir_path(), "duplicate descriptor", e))?;
        let listing = nix::dir::Dir::from_fd(listing).map_err(unreadable(dir_path()))?;
        let mut items = Vec::new();
        for item in listing {
            let item = item.map_err(unreadable(dir_path()))?;
            let name = item.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut rel = rel_dir.to_vec();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name);
            let path = || path_of(&root, &rel);
            check_path(&rel).map_err(|reason| Error::BadName {
                path: path(),
                reason,
            })?;
            let st = match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Err(changed(path(), "removed while listed")),
                Err(err) => return Err(unreadable(path())(err)),
            };
            let kind = match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
                SFlag::S_IFDIR => {
                    items.push(Item::Subtree(Arc::new(DirNode {
                        rel: rel.clone(),
                        id: FileId::of_stat(&st),
                        parent: Some(node.clone()),
                    })));
                    SourceKind::Dir
                }
                SFlag::S_IFREG => SourceKind::File {
                    size: st.st_size as u64,
                },
                SFlag::S_IFLNK => {
                    let target = match nix::fcntl::readlinkat(dir, name) {
                        Ok(t) => t.into_vec(),
                        Err(Errno::ENOENT | Errno::EINVAL) => {
                            return Err(changed(path(), "no longer a symlink"));
                        }
                        Err(err) => return Err(unreadable(path())(err)),
                    };
                    if check_symlink_target(&rel, &target).is_err() {
                        return Err(Error::SymlinkEscapes {
                            path: path(),
                            target: String::from_utf8_lossy(&target).into_owned(),
                        });
                    }
                    SourceKind::Symlink { target }
                }
                _ => {
                    return Err(Error::SpecialFile {
                        path: path(),
                        kind: kind_name(st.st_mode),
                    });
                }
            };
            items.push(Item::Entry(entry(rel, kind, &st, Some(node.clone()))));
        }
        items.sort_by_cached_key(Item::key);
        Ok(items.into())
    }
}

impl Iterator for Walk {
    type Item = Result<SourceEntry>;

    /// The entries as an iterator; after an error it ends.
    fn next(&mut self) -> Option<Result<SourceEntry>> {
        self.next_entry().transpose()
    }
}

fn entry(
    rel: Vec<u8>,
    kind: SourceKind,
    st: &FileStat,
    parent: Option<Arc<DirNode>>,
) -> SourceEntry {
    SourceEntry {
        parent,
        rel,
        kind,
        mode: st.st_mode & 0o7777,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        id: FileId::of_stat(st),
    }
}

fn path_of(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn changed(path: PathBuf, how: impl Into<String>) -> Error {
    Error::SourceChanged {
        path,
        how: how.into(),
    }
}

/// The name of a file type, from `st_mode`.
fn kind_name(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "regular file",
        SFlag::S_IFDIR => "folder",
        SFlag::S_IFLNK => "symlink",
        SFlag::S_IFIFO => "fifo",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        _ => "unknown file type",
    }
}

/// An `open` below a folder that failed: a name that no longer leads where the walk went is a
/// change of the source, anything else is the file's own problem.
fn open_error(err: Errno, path: PathBuf) -> Error {
    match err {
        // O_NOFOLLOW or RESOLVE_NO_SYMLINKS met a symlink.
        Errno::ELOOP => changed(path, "now a symlink"),
        Errno::ENOENT => changed(path, "removed or renamed"),
        // O_DIRECTORY met something else.
        Errno::ENOTDIR => changed(path, "no longer a folder"),
        Errno::ENXIO => changed(path, "now a socket"),
        // RESOLVE_BENEATH met a name leading out of the folder (an absolute symlink).
        Errno::EXDEV => changed(path, "now leads outside its folder"),
        _ => Error::Unreadable {
            path,
            source: err.into(),
        },
    }
}

/// Set once `openat2` turned out to be missing (kernel before 5.6, or a seccomp filter).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the single name `name` in the folder `dir`, never following a symlink and never
/// leaving `dir`.
fn open_beneath(dir: BorrowedFd<'_>, name: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
    // Names come from the walk, which refuses these; refusing them here keeps `..` from ever
    // climbing out on the fallback path.
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    let flags = flags | OFlag::O_NOFOLLOW;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2_beneath(dir, name, flags) {
            Err(Errno::ENOSYS | Errno::EPERM) => {
                if !NO_OPENAT2.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "openat2 unavailable; opening source files with openat and O_NOFOLLOW"
                    );
                }
            }
            other => return other,
        }
    }
    openat_nofollow(dir, name, flags)
}

fn openat2_beneath(dir: BorrowedFd<'_>, name: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new().flags(flags).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    nix::fcntl::openat2(dir, name, how)
}

fn openat_nofollow(dir: BorrowedFd<'_>, name: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(dir, name, flags | OFlag::O_NOFOLLOW, Mode::empty())
}

/// Folder descriptors kept open on the way down; deeper trees reopen shallower folders (from
/// the nearest one still open, checked again) when they come back to them, so that a deep tree
/// never runs out of descriptors.
const KEEP_OPEN: usize = 32;

/// One folder of the chain: its name in its parent, the object the walk saw, its descriptor.
struct Level {
    name: Vec<u8>,
    id: FileId,
    fd: Option<OwnedFd>,
}

/// The folders from the root down to the current one, each opened relative to the one above.
struct Chain {
    root: OwnedFd,
    root_path: PathBuf,
    levels: Vec<Level>,
}

impl Chain {
    fn new(root: OwnedFd, root_path: PathBuf) -> Chain {
        Chain {
            root,
            root_path,
            levels: Vec::new(),
        }
    }

    /// The path of the folder `depth` levels down, for messages.
    fn path(&self, depth: usize) -> PathBuf {
        let mut p = self.root_path.clone();
        for l in &self.levels[..depth] {
            p.push(OsStr::from_bytes(&l.name));
        }
        p
    }

    /// Makes the folder `dir` (relative, empty for the root) the current one and returns its
    /// descriptor. Folders shared with the previous one stay open; each new one is opened
    /// relative to its parent and must be the folder `id_of` says the walk saw there.
    fn goto(
        &mut self,
        dir: &[u8],
        id_of: &dyn Fn(&[u8]) -> Option<FileId>,
    ) -> Result<BorrowedFd<'_>> {
        let comps: Vec<&[u8]> = if dir.is_empty() {
            Vec::new()
        } else {
            dir.split(|&c| c == b'/').collect()
        };
        let keep = self
            .levels
            .iter()
            .zip(&comps)
            .take_while(|(l, c)| l.name == **c)
            .count();
        self.levels.truncate(keep);
        let mut end = 0;
        for (i, comp) in comps.iter().enumerate() {
            end += comp.len() + usize::from(i > 0);
            if i < keep {
                continue;
            }
            let prefix = &dir[..end];
            let Some(id) = id_of(prefix) else {
                return Err(changed(
                    path_of(&self.root_path, prefix),
                    "not a folder when walked",
                ));
            };
            self.reopen(i)?;
            let fd = open_dir(self.fd(i), comp, id, &|| path_of(&self.root_path, prefix))?;
            self.levels.push(Level {
                name: comp.to_vec(),
                id,
                fd: Some(fd),
            });
            let n = self.levels.len();
            for l in &mut self.levels[..n.saturating_sub(KEEP_OPEN)] {
                l.fd = None;
            }
        }
        self.reopen(comps.len())?;
        Ok(self.fd(comps.len()))
    }

    /// Opens the folder `depth` levels down the chain again if it was closed, and those
    /// between it and the nearest folder above it still open, checking each.
    fn reopen(&mut self, depth: usize) -> Result<()> {
        if depth == 0 || self.levels[depth - 1].fd.is_some() {
            return Ok(());
        }
        let start = (0..depth)
            .rev()
            .find(|&j| self.levels[j].fd.is_some())
            .map_or(0, |j| j + 1);
        for j in start..depth {
            let l = &self.levels[j];
            let fd = open_dir(self.fd(j), &l.name, l.id, &|| self.path(j + 1))?;
            self.levels[j].fd = Some(fd);
        }
        Ok(())
    }

    /// The descriptor of the folder `depth` levels down the chain (open: see `reopen`).
    fn fd(&self, depth: usize) -> BorrowedFd<'_> {
        match depth {
            0 => self.root.as_fd(),
            _ => self.levels[depth - 1]
                .fd
                .as_ref()
                .expect("reopened before use")
                .as_fd(),
        }
    }
}

/// Opens the folder `name` in `parent` and checks it is the folder `id`; `path` names it in
/// messages.
fn open_dir(
    parent: BorrowedFd<'_>,
    name: &[u8],
    id: FileId,
    path: &dyn Fn() -> PathBuf,
) -> Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let fd = open_beneath(parent, name, flags).map_err(|err| open_error(err, path()))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|err| Error::Unreadable {
        path: path(),
        source: err.into(),
    })?;
    if FileId::of_stat(&st) != id {
        return Err(changed(path(), "replaced by another folder"));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_fd(p: &Path) -> OwnedFd {
        nix::fcntl::open(p, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap()
    }

    /// Both ways of opening refuse a symlink, whatever it points at, and `..`.
    #[test]
    fn both_open_paths_refuse_symlinks_and_dot_dot() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("file"), b"x").unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("file", t.path().join("link")).unwrap();
        std::os::unix::fs::symlink("sub", t.path().join("dirlink")).unwrap();
        let dir = dir_fd(t.path());
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW;
        for open in [openat2_beneath, openat_nofollow] {
            assert!(open(dir.as_fd(), b"file", flags).is_ok());
            assert_eq!(open(dir.as_fd(), b"link", flags).unwrap_err(), Errno::ELOOP);
            // O_DIRECTORY may answer first: refused either way.
            let err = open(dir.as_fd(), b"dirlink", flags | OFlag::O_DIRECTORY).unwrap_err();
            assert!(matches!(err, Errno::ELOOP | Errno::ENOTDIR), "{err}");
        }
        assert_eq!(
            openat2_beneath(dir.as_fd(), b"..", flags).unwrap_err(),
            Errno::EXDEV
        );
        assert_eq!(
            open_beneath(dir.as_fd(), b"..", flags).unwrap_err(),
            Errno::EINVAL
        );
    }

    /// The streaming walk yields byte order of full paths, where a folder's contents come
    /// after siblings that extend its name with a byte below `/` (`a/b`, `a/b.txt`, `a/b/c`).
    #[test]
    fn the_walk_yields_full_path_byte_order() {
        let t = tempfile::tempdir().unwrap();
        for d in ["a/b/c", "a/b.d/e", "a/b-", "z"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in ["a/b.txt", "a/b/c/y", "a/b.d/x", "a/b0", "a/b/!", "z/.z"] {
            std::fs::write(t.path().join(f), f).unwrap();
        }
        let walked: Vec<Vec<u8>> = Walk::new(t.path())
            .unwrap()
            .map(|e| e.unwrap().rel)
            .collect();
        let mut sorted = walked.clone();
        sorted.sort();
        assert_eq!(walked, sorted);
        assert_eq!(walked.len(), 14);
        assert_eq!(walked[0], b"");
    }

    /// A folder chain deeper than the descriptors it keeps open still reaches every level, and
    /// reopens the ones it closed only after checking they are the folders walked.
    #[test]
    fn deep_chains_reopen_closed_folders_and_check_them() {
        let t = tempfile::tempdir().unwrap();
        let depth = KEEP_OPEN * 3;
        let mut p = t.path().to_path_buf();
        for _ in 0..depth {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        let tree = walk(t.path()).unwrap();
        assert_eq!(tree.entries().len(), depth + 1);
        let mut chain = Chain::new(dir_fd(t.path()), t.path().to_path_buf());
        let deepest = tree.entries().last().unwrap().rel.clone();
        chain.goto(&deepest, &|p| tree.dir_id(p)).unwrap();
        assert!(chain.levels[0].fd.is_none(), "shallow folders were closed");
        // Back up to a closed level, then down again.
        chain.goto(b"d/d", &|p| tree.dir_id(p)).unwrap();
        chain.goto(&deepest, &|p| tree.dir_id(p)).unwrap();
        // A closed level replaced by another folder is noticed when it is reopened.
        let second = t.path().join("d/d");
        std::fs::rename(&second, t.path().join("moved")).unwrap();
        std::fs::create_dir(&second).unwrap();
        let err = chain.goto(b"d/d/d", &|p| tree.dir_id(p)).unwrap_err();
        assert!(
            matches!(&err, Error::SourceChanged { path, .. } if path == &second),
            "{err}"
        );
    }
}
