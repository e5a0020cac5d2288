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

pub use freight_test_support::noise;

/// Creates a library with `cfg` at `dir` and opens it for writing.
pub fn new_lib(dir: &Path, cfg: &LibraryConfig) -> Library {
    Library::init(dir, cfg).unwrap();
    Library::open(dir, Access::Write, io()).unwrap()
}

/// Ingests `src` as `pkg` version `v`.
#[allow(unused_imports)] // not every test file numbers its versions
pub use freight_test_support::ingest_version as ingest_v;

/// The library's files with sizes and content hashes (directory mtimes left out: creating and
/// rolling back a file moves them without changing what the library holds).
pub fn lib_state(dir: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
    freight_test_support::tree::snapshot(dir)
        .unwrap()
        .into_iter()
        .filter(|(_, n)| n.kind != "dir")
        .map(|(p, n)| (p, (n.size, n.content)))
        .collect()
}

/// Free bytes on the file system holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}
