//! Comparing two trees as a user would: paths, kinds, content, modes, mtimes, link targets.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
