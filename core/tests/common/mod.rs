//! Helpers shared by the library integration tests.
#![allow(dead_code)]

use freight_core::library::Access;
use freight_core::{IoMode, Library, LibraryConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The I/O mode under test: `FREIGHT_IO` (CI runs the suite once per path), default auto.
pub fn io() -> Option<IoMode> {
    IoMode::from_env()
}

pub use freight_bench::noise;

/// Creates a library with `cfg` at `dir` and opens it for writing.
pub fn new_lib(dir: &Path, cfg: &LibraryConfig) -> Library {
    Library::init(dir, cfg).unwrap();
    Library::open(dir, Access::Write, io()).unwrap()
}

/// Ingests `src` as `pkg` version `v`.
pub use freight_bench::ingest_version as ingest_v;

/// The library's files with sizes and content hashes (directory mtimes left out: creating and
/// rolling back a file moves them without changing what the library holds).
pub fn lib_state(dir: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
    freight_bench::tree::snapshot(dir)
        .unwrap()
        .into_iter()
        .filter(|(_, n)| n.kind != "dir")
        .map(|(p, n)| (p, (n.size, n.content)))
        .collect()
}

/// A tmpfs mounted for the test's lifetime (tests run as root, as CI does).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (created).
    pub fn mount(path: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let opts = format!("size={bytes}");
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs at {} needs root: {e}", path.display()));
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Free bytes on the file system holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}
