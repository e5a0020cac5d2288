//! An ext4 file system of its own for a test: an image file on a loop device, mounted with the
//! options the test chooses, unmounted and deleted on drop. Needs root (losetup, mkfs, mount),
//! as the heavy tier has.
//!
//! Two uses: a file system the test can cut power to (the power-loss tests mount it with no
//! periodic commit), and a file system of known behaviour for trees of millions of files:
//! the machine's own may be mounted with online `discard`, which makes every unlink wait for
//! the device (half a millisecond a file here, so removing a million-file tree takes minutes)
//! and would measure the host's mount options instead of Freight.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// An ext4 file system on a loop device, mounted at [`LoopFs::mnt`].
pub struct LoopFs {
    dev: String,
    opts: String,
    /// Where it is mounted.
    pub mnt: PathBuf,
    _img: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (the heavy tier runs as root with util-linux and e2fsprogs)")
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LoopFs {
    /// A sparse image of `bytes` in `/var/tmp` (a disk, not a tmpfs), made ext4 with the extra
    /// `mkfs` arguments (e.g. `-i 4096` for many small files) and mounted with `opts` (passed to
    /// `mount -o`; ext4's default has no `discard`).
    pub fn new(bytes: u64, mkfs: &[&str], opts: &str) -> LoopFs {
        let img = tempfile::tempdir_in("/var/tmp").unwrap();
        let file = img.path().join("fs.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&file));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .args(mkfs)
            .arg(&dev));
        let mnt = img.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let fs = LoopFs {
            dev,
            opts: opts.to_owned(),
            mnt,
            _img: img,
        };
        fs.mount();
        fs
    }

    /// Mounts it (again) at [`LoopFs::mnt`].
    pub fn mount(&self) {
        let mut cmd = Command::new("mount");
        if !self.opts.is_empty() {
            cmd.args(["-o", &self.opts]);
        }
        run(cmd.arg(&self.dev).arg(&self.mnt));
    }

    /// Unmounts it, waiting up to 5 s for the files on it to be closed.
    pub fn umount(&self) {
        for _ in 0..50 {
            if Command::new("umount")
                .arg(&self.mnt)
                .status()
                .unwrap()
                .success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot unmount {}", self.mnt.display());
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Lazily: a process of the test may still hold a file; the image goes with the folder.
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}
