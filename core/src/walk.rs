//! Walking a source folder into the list of entries a manifest will hold.
//!
//! Everything that can make an ingest fail on the source's shape is found here, before a single
//! byte is written to the library: special files, symlinks leaving the tree, names a manifest
//! cannot carry, unreadable directories.

use crate::error::{Error, Result};
use crate::manifest::{check_path, check_symlink_target};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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

/// One entry of the source tree.
#[derive(Clone, Debug)]
pub struct SourceEntry {
    /// Path relative to the source root, `/`-separated bytes (empty for the root).
    pub rel: Vec<u8>,
    /// Absolute path on disk.
    pub abs: PathBuf,
    /// Kind.
    pub kind: SourceKind,
    /// Permission bits.
    pub mode: u32,
    /// mtime seconds.
    pub mtime_sec: i64,
    /// mtime nanoseconds.
    pub mtime_nsec: u32,
}

/// Walks `root` and returns its entries in manifest order (sorted by path bytes, root first).
pub fn walk(root: &Path) -> Result<Vec<SourceEntry>> {
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::SourceMissing(root.to_path_buf()));
        }
        Err(e) => {
            return Err(Error::Unreadable {
                path: root.to_path_buf(),
                source: e,
            });
        }
    };
    if !meta.is_dir() {
        return Err(Error::BadName {
            path: root.to_path_buf(),
            reason: "the source of a package must be a folder",
        });
    }
    let mut out = vec![entry(
        Vec::new(),
        root.to_path_buf(),
        SourceKind::Dir,
        &meta,
    )];
    let mut stack = vec![(Vec::<u8>::new(), root.to_path_buf())];
    while let Some((rel_dir, abs_dir)) = stack.pop() {
        let unreadable = |e| Error::Unreadable {
            path: abs_dir.clone(),
            source: e,
        };
        for item in std::fs::read_dir(&abs_dir).map_err(unreadable)? {
            let item = item.map_err(unreadable)?;
            let abs = item.path();
            let mut rel = rel_dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(item.file_name().as_bytes());
            check_path(&rel).map_err(|reason| Error::BadName {
                path: abs.clone(),
                reason,
            })?;
            let meta = std::fs::symlink_metadata(&abs).map_err(|e| Error::Unreadable {
                path: abs.clone(),
                source: e,
            })?;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push((rel.clone(), abs.clone()));
                SourceKind::Dir
            } else if ft.is_file() {
                SourceKind::File { size: meta.len() }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&abs).map_err(|e| Error::Unreadable {
                    path: abs.clone(),
                    source: e,
                })?;
                let target = target.as_os_str().as_bytes().to_vec();
                if check_symlink_target(&rel, &target).is_err() {
                    return Err(Error::SymlinkEscapes {
                        path: abs,
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                }
                SourceKind::Symlink { target }
            } else {
                let kind = if ft.is_fifo() {
                    "fifo"
                } else if ft.is_socket() {
                    "socket"
                } else if ft.is_char_device() {
                    "character device"
                } else if ft.is_block_device() {
                    "block device"
                } else {
                    "unknown file type"
                };
                return Err(Error::SpecialFile { path: abs, kind });
            };
            out.push(entry(rel, abs, kind, &meta));
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn entry(rel: Vec<u8>, abs: PathBuf, kind: SourceKind, meta: &std::fs::Metadata) -> SourceEntry {
    SourceEntry {
        rel,
        abs,
        kind,
        mode: meta.mode() & 0o7777,
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
    }
}
