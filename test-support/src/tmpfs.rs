//! A small tmpfs for tests of a full disk (mounting needs root, as CI runs the tests).

use std::path::{Path, PathBuf};

/// A tmpfs mounted for the test's lifetime, unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (created). Panics without root: it is for tests.
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
