//! File trees as tests see them: walking ([`walk`]), sizes ([`disk_usage`]), and comparing two
//! trees as a user would ([`difference`]: paths, kinds, content, modes, mtimes, link targets).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Sizes of a file or directory tree, as a `du`-like walk sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    /// Regular files.
    pub files: u64,
    /// Directories, including the root when it is one.
    pub dirs: u64,
    /// Symbolic links (not followed).
    pub symlinks: u64,
    /// Other file types (fifos, sockets, devices).
    pub others: u64,
    /// Sum of the lengths of the regular files.
    pub apparent_bytes: u64,
    /// Space allocated to everything walked (`st_blocks * 512`, hard links counted once), like `du`.
    pub disk_bytes: u64,
}

/// Walks `path` (a file or a directory tree, symlinks not followed) and adds
/// up its sizes.
pub fn disk_usage(path: &Path) -> io::Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    let mut seen = HashSet::new();
    walk(path, &mut |_, meta| {
        let kind = meta.file_type();
        if kind.is_file() {
            usage.files += 1;
            usage.apparent_bytes += meta.len();
        } else if kind.is_dir() {
            usage.dirs += 1;
        } else if kind.is_symlink() {
            usage.symlinks += 1;
        } else {
            usage.others += 1;
        }
        if meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())) {
            usage.disk_bytes += meta.blocks() * 512;
        }
        Ok(())
    })?;
    Ok(usage)
}

/// Calls `visit` for `path` and, if it is a directory, for everything below
/// it, depth first, in name order. Symlinks are not followed.
pub fn walk(
    path: &Path,
    visit: &mut dyn FnMut(&Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| with_path(e, "inspecting", path))?;
    visit(path, &meta)?;
    if meta.is_dir() {
        let mut entries = fs::read_dir(path)
            .and_then(|dir| {
                dir.map(|e| e.map(|e| e.path()))
                    .collect::<io::Result<Vec<_>>>()
            })
            .map_err(|e| with_path(e, "listing", path))?;
        entries.sort();
        for entry in entries {
            walk(&entry, visit)?;
        }
    }
    Ok(())
}

fn with_path(err: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{action} {}: {err}", path.display()))
}

/// What is compared of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// "dir", "file" or "symlink" (anything else is "other").
    pub kind: &'static str,
    /// Permission bits.
    pub mode: u32,
    /// mtime (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// File size (0 for others).
    pub size: u64,
    /// BLAKE3 of file content, or the link target bytes for symlinks.
    pub content: Vec<u8>,
}

/// Every entry below `root` (root itself as ""), keyed by relative path.
pub fn snapshot(root: &Path) -> std::io::Result<BTreeMap<PathBuf, Node>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let meta = std::fs::symlink_metadata(&abs)?;
        let ft = meta.file_type();
        let (kind, content) = if ft.is_dir() {
            for e in std::fs::read_dir(&abs)? {
                stack.push(rel.join(e?.file_name()));
            }
            ("dir", Vec::new())
        } else if ft.is_file() {
            let mut h = blake3::Hasher::new();
            let mut f = std::fs::File::open(&abs)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            ("file", h.finalize().as_bytes().to_vec())
        } else if ft.is_symlink() {
            use std::os::unix::ffi::OsStrExt;
            (
                "symlink",
                std::fs::read_link(&abs)?.as_os_str().as_bytes().to_vec(),
            )
        } else {
            ("other", Vec::new())
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: if kind == "symlink" {
                    0
                } else {
                    meta.mode() & 0o7777
                },
                mtime: (meta.mtime(), meta.mtime_nsec()),
                size: if kind == "file" { meta.len() } else { 0 },
                content,
            },
        );
    }
    Ok(out)
}

/// The first difference between two trees, or `None` when they are identical.
pub fn difference(a: &Path, b: &Path) -> std::io::Result<Option<String>> {
    difference_with(a, b, false)
}

/// Like [`difference`], leaving the mtimes of symlinks out when `ignore_symlink_mtimes` (a
/// peer tool that does not always keep them, such as rsync over ssh here).
pub fn difference_with(
    a: &Path,
    b: &Path,
    ignore_symlink_mtimes: bool,
) -> std::io::Result<Option<String>> {
    let (mut sa, mut sb) = (snapshot(a)?, snapshot(b)?);
    if ignore_symlink_mtimes {
        for n in sa.values_mut().chain(sb.values_mut()) {
            if n.kind == "symlink" {
                n.mtime = (0, 0);
            }
        }
    }
    for (p, na) in &sa {
        match sb.get(p) {
            None => {
                return Ok(Some(format!(
                    "{}: missing from {}",
                    p.display(),
                    b.display()
                )));
            }
            Some(nb) if nb != na => {
                return Ok(Some(format!("{}: {:?} != {:?}", p.display(), na, nb)));
            }
            _ => {}
        }
    }
    if let Some(p) = sb.keys().find(|p| !sa.contains_key(*p)) {
        return Ok(Some(format!("{}: only in {}", p.display(), b.display())));
    }
    Ok(None)
}
