//! Power-loss simulation for materialise and a DP's install: after the "crash" every version
//! that was reported installed is complete on disk, and the share always holds one complete
//! version.
//!
//! The kernel here has no device mapper (no dm-flakey or dm-log-writes), so the power cut is
//! ext4's own shutdown ioctl (`FS_IOC_SHUTDOWN` with `FS_GOING_FLAGS_NOLOGFLUSH`, what xfstests'
//! `godown` uses for its crash tests): the file system stops at once, its journal is not
//! flushed and no dirty page is written back afterwards; unmounting and mounting again then
//! shows what was durable. The file system is an image on a loop device, mounted with
//! `data=writeback,commit=600,noauto_da_alloc`: no periodic journal commit, no data ordered
//! before metadata and no flush on rename, so only what Freight synced itself survives. Each
//! run first proves the cut is real: a file written without a sync must be gone after it.

use freight_appliance::content::install;
use freight_core::library::Access;
use freight_core::{IoMode, Library, LibraryConfig, PackageId, Progress};
use freight_test_support::loopfs::LoopFs;
use freight_test_support::{DatasetSpec, generate, ingest_version, noise, rewrite_every_20th};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PKG: &str = "PS100001";
/// `_IOR('X', 125, __u32)`.
const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
const FS_GOING_FLAGS_NOLOGFLUSH: u32 = 2;

/// The test's file system: ext4 on a loop device, mounted with no periodic journal commit, no
/// data ordered before metadata and no flush on rename.
fn loop_fs(bytes: u64) -> LoopFs {
    LoopFs::new(bytes, &[], "data=writeback,commit=600,noauto_da_alloc")
}

/// The power cut: the file system stops where it is, nothing unsynced reaches the disk.
fn cut_power(fs: &LoopFs) {
    let d = std::fs::File::open(&fs.mnt).unwrap();
    let flags = FS_GOING_FLAGS_NOLOGFLUSH;
    // SAFETY: the ioctl reads one u32 from the pointer.
    let r = unsafe { libc::ioctl(d.as_raw_fd(), FS_IOC_SHUTDOWN, &flags) };
    assert_eq!(r, 0, "FS_IOC_SHUTDOWN: {}", std::io::Error::last_os_error());
}

/// After a cut: unmount (every file on it closed) and mount again, as after a reboot.
fn reboot(fs: &LoopFs) {
    fs.umount();
    fs.mount();
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (loop devices, mount); run as root for the heavy tier");
        return false;
    }
    true
}

/// A file written without any sync before the cut must not survive it, or the cut proves
/// nothing.
fn write_canary(fs: &LoopFs) {
    std::fs::write(fs.mnt.join("canary"), noise("canary", 1 << 20)).unwrap();
}

fn assert_canary_gone(fs: &LoopFs) {
    let len = std::fs::metadata(fs.mnt.join("canary")).map_or(0, |m| m.len());
    assert_eq!(
        len, 0,
        "an unsynced file survived the cut: it is not a power cut"
    );
}

fn same(a: &Path, b: &Path) -> Option<String> {
    freight_test_support::tree::difference(a, b).unwrap()
}

/// Heavy tier: needs root (loop device, mkfs, mount, the shutdown ioctl).
#[test]
fn heavy_a_materialised_tree_survives_a_power_cut_right_after_it_returns() {
    if !can_run() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    generate(&src, &DatasetSpec::mixed(24 << 20, 7)).unwrap();
    let fs = loop_fs(256 << 20);
    let lib_dir = fs.mnt.join("lib");
    {
        Library::init(&lib_dir, &LibraryConfig::default()).unwrap();
        let mut lib = Library::open(&lib_dir, Access::Write, IoMode::from_env()).unwrap();
        ingest_version(&mut lib, &src, PKG, 1).unwrap();
        let m = lib.manifest(&PackageId::parse(PKG).unwrap(), 1).unwrap();
        freight_core::materialize::materialize(&lib, &m, &fs.mnt.join("out"), &Progress::default())
            .unwrap();
        write_canary(&fs);
        cut_power(&fs);
    }
    reboot(&fs);
    assert_canary_gone(&fs);
    assert_eq!(same(&src, &fs.mnt.join("out")), None);
    let lib = Library::open(&lib_dir, Access::Write, IoMode::from_env()).unwrap();
    assert!(
        freight_core::verify::verify(&lib, None, &Progress::default())
            .unwrap()
            .is_clean()
    );
}

/// Installs a version in a library on `fs` (as a DP does after a transfer) and returns
/// whether it was reported installed.
fn ingest_and_install(lib_dir: &Path, share: &Path, src: &Path, v: u32) -> bool {
    let p = PackageId::parse(PKG).unwrap();
    let Ok(mut lib) = Library::open(lib_dir, Access::Write, IoMode::from_env()) else {
        return false;
    };
    if lib.manifest(&p, v).is_err() && ingest_version(&mut lib, src, PKG, v).is_err() {
        return false;
    }
    let Ok(m) = lib.manifest(&p, v) else {
        return false;
    };
    let hash = m.hash().to_hex().to_string();
    install(&mut lib, &p, v, &hash, Some(share)).is_ok()
}

/// Heavy tier: needs root (loop device, mkfs, mount, the shutdown ioctl); a dozen power cuts,
/// each followed by a remount and a full verify.
#[test]
fn heavy_every_installed_version_survives_power_cuts_and_the_share_is_never_partial() {
    if !can_run() {
        return;
    }
    let seed = freight_test_support::replay_seed("FREIGHT_POWER_SEED");
    let mut rng = StdRng::seed_from_u64(seed);
    let t = tempfile::tempdir().unwrap();
    // Each version's source, kept off the file system that loses power.
    let mut sources: Vec<PathBuf> = Vec::new();
    let first = t.path().join("v1");
    generate(&first, &DatasetSpec::mixed(16 << 20, 9)).unwrap();
    sources.push(first);
    let fs = loop_fs(512 << 20);
    let (lib_dir, share) = (fs.mnt.join("lib"), fs.mnt.join("share"));
    Library::init(&lib_dir, &LibraryConfig::default()).unwrap();

    // A cut right after "Installed".
    let started = Instant::now();
    assert!(ingest_and_install(&lib_dir, &share, &sources[0], 1));
    let full = started.elapsed();
    write_canary(&fs);
    cut_power(&fs);
    reboot(&fs);
    assert_canary_gone(&fs);
    assert_eq!(
        same(&sources[0], &share.join(PKG)),
        None,
        "v1 after the cut"
    );
    let mut installed = 1u32;

    // Cuts at random moments of the next installs.
    let mut hits = 0;
    for v in 2..=12u32 {
        let src = t.path().join(format!("v{v}"));
        Command::new("cp")
            .arg("-a")
            .arg(&sources[v as usize - 2])
            .arg(&src)
            .status()
            .unwrap();
        rewrite_every_20th(&src, v as usize).unwrap();
        std::fs::write(
            src.join(format!("new-{v}.bin")),
            noise(&format!("n{v}"), 2 << 20),
        )
        .unwrap();
        sources.push(src.clone());
        let delay = full.mul_f64(rng.random_range(0.05..1.2));
        let worker = {
            let (lib_dir, share) = (lib_dir.clone(), share.clone());
            std::thread::spawn(move || ingest_and_install(&lib_dir, &share, &src, v))
        };
        std::thread::sleep(delay);
        let cut_while_running = !worker.is_finished();
        cut_power(&fs);
        let reported = worker.join().unwrap();
        hits += usize::from(cut_while_running);
        reboot(&fs);
        if reported {
            installed = v;
        }
        // The share holds one complete version: the last one reported installed, or (when
        // the cut came after the swap but before the report) the one being installed.
        let now = share.join(PKG);
        let matches: Vec<u32> = (1..=v)
            .filter(|k| same(&sources[*k as usize - 1], &now).is_none())
            .collect();
        assert!(
            matches.contains(&installed) || (matches == [v] && !reported),
            "v{v} (cut after {delay:?}, reported {reported}): the share is {matches:?}, last installed v{installed}: {:?}",
            same(&sources[installed as usize - 1], &now)
        );
        if matches == [v] {
            installed = v;
        }
        // The library opens for writing (only crash leftovers cleaned), everything it holds
        // verifies, and it still holds the version the share shows.
        let lib = Library::open(&lib_dir, Access::Write, IoMode::from_env())
            .unwrap_or_else(|e| panic!("v{v}: {e}"));
        let report = freight_core::verify::verify(&lib, None, &Progress::default()).unwrap();
        assert!(report.is_clean(), "v{v}: {report:?}");
        let held = lib.versions_of(&PackageId::parse(PKG).unwrap()).unwrap();
        assert!(
            held.contains(&installed),
            "v{installed} is installed, the library holds {held:?}"
        );
    }
    assert!(hits >= 4, "only {hits} cuts landed during an install");
}
