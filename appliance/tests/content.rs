//! A DP's installs into its share folder: each version replaces the last with one rename,
//! nothing temporary stays behind (not even after an interrupted install), and removing the
//! package removes its share. The power-cut behaviour is `power_loss.rs` (heavy tier).

use freight_appliance::content::{ContentError, FailureKind, drop_package, install};
use freight_core::library::Access;
use freight_core::{IoMode, Library, LibraryConfig, PackageId};
use freight_test_support::{ingest_version, noise};
use std::collections::HashSet;
use std::path::Path;

const PKG: &str = "PS100001";

fn tree(dir: &Path, v: u32) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("version.txt"), format!("v{v}")).unwrap();
    std::fs::write(dir.join("sub/data.bin"), noise(&format!("d{v}"), 400_000)).unwrap();
    std::fs::write(dir.join("shared.bin"), noise("shared", 300_000)).unwrap();
}

#[test]
fn installs_replace_the_share_in_one_rename_and_leave_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("lib");
    Library::init(&dir, &LibraryConfig::default()).unwrap();
    let mut lib = Library::open(&dir, Access::Write, IoMode::from_env()).unwrap();
    let share = t.path().join("share");
    let p = PackageId::parse(PKG).unwrap();
    for v in 1..=3 {
        let src = t.path().join(format!("src{v}"));
        tree(&src, v);
        ingest_version(&mut lib, &src, PKG, v).unwrap();
        if v == 3 {
            // What an install interrupted by a crash leaves in the staging folder.
            std::fs::create_dir_all(share.join(".freight-staging/PS100001-dead/sub")).unwrap();
        }
        let hash = lib.manifest(&p, v).unwrap().hash().to_hex().to_string();
        install(&mut lib, &p, v, &hash, Some(&share)).unwrap();
        assert_eq!(
            freight_test_support::tree::difference(&src, &share.join(PKG)).unwrap(),
            None,
            "v{v}"
        );
        let staging: Vec<_> = std::fs::read_dir(share.join(".freight-staging"))
            .unwrap()
            .collect();
        assert!(staging.is_empty(), "leftovers after v{v}: {staging:?}");
        let top: Vec<String> = std::fs::read_dir(&share)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".freight-staging")
            .collect();
        assert_eq!(top, [PKG]);
    }
    drop_package(&mut lib, &p, &HashSet::new(), Some(&share)).unwrap();
    assert!(!share.join(PKG).exists());
    assert_eq!(
        std::fs::read_dir(share.join(".freight-staging"))
            .unwrap()
            .count(),
        0
    );
}

fn open_lib(dir: &Path) -> Library {
    Library::init(dir, &LibraryConfig::default()).unwrap();
    Library::open(dir, Access::Write, IoMode::from_env()).unwrap()
}

fn hash_of(lib: &Library, v: u32) -> String {
    let p = PackageId::parse(PKG).unwrap();
    lib.manifest(&p, v).unwrap().hash().to_hex().to_string()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_255_byte_name_and_a_4000_byte_path_install_into_a_share_past_path_max() {
    let t = tempfile::tempdir().unwrap();
    let mut lib = open_lib(&t.path().join("lib"));
    let src = t.path().join("src");
    // 38 folders of 100-byte names and a 162-byte file name: a 4,000-byte path.
    let dirs: Vec<String> = (0..38)
        .map(|i| format!("{i:02}{}", "d".repeat(98)))
        .collect();
    let rel = format!("{}/{}", dirs.join("/"), "f".repeat(162));
    assert_eq!(rel.len(), 4000);
    std::fs::create_dir_all(src.join(dirs.join("/"))).unwrap();
    let deep = noise("deep", 200_000);
    std::fs::write(src.join(&rel), &deep).unwrap();
    let long = "n".repeat(255);
    std::fs::write(src.join(&long), b"255").unwrap();
    ingest_version(&mut lib, &src, PKG, 1).unwrap();
    let p = PackageId::parse(PKG).unwrap();
    // A share whose own path takes SHARE/.freight-staging/PKG-x/<4,000 bytes> past PATH_MAX.
    let share = t.path().join("s".repeat(200));
    {
        let h = hash_of(&lib, 1);
        install(&mut lib, &p, 1, &h, Some(&share))
    }
    .unwrap();
    // Read back one name at a time (the full path is longer than the kernel takes).
    let mut dir = std::fs::File::open(share.join(PKG)).unwrap();
    for d in &dirs {
        let fd = nix::fcntl::openat(
            &dir,
            d.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        dir = std::fs::File::from(fd);
    }
    let fd = nix::fcntl::openat(
        &dir,
        "f".repeat(162).as_str(),
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut got).unwrap();
    assert!(got == deep, "the deep file differs");
    assert_eq!(std::fs::read(share.join(PKG).join(&long)).unwrap(), b"255");
    assert!(names(&share.join(".freight-staging")).is_empty());
    // Removing the package removes the deep tree too.
    drop_package(&mut lib, &p, &HashSet::new(), Some(&share)).unwrap();
    assert_eq!(names(&share), [".freight-staging"]);
}

#[test]
fn an_older_version_is_dropped_where_a_newer_one_is_installed() {
    let t = tempfile::tempdir().unwrap();
    let mut lib = open_lib(&t.path().join("lib"));
    let p = PackageId::parse(PKG).unwrap();
    let share = t.path().join("share");
    let (s1, s2) = (t.path().join("s1"), t.path().join("s2"));
    tree(&s1, 1);
    tree(&s2, 2);
    ingest_version(&mut lib, &s2, PKG, 2).unwrap();
    {
        let h = hash_of(&lib, 2);
        install(&mut lib, &p, 2, &h, Some(&share))
    }
    .unwrap();
    // Version 1 arrives afterwards (as a push stores it): refused as NewerHeld, and dropped.
    ingest_version(&mut lib, &s1, PKG, 1).unwrap();
    let err = {
        let h = hash_of(&lib, 1);
        install(&mut lib, &p, 1, &h, Some(&share))
    }
    .unwrap_err();
    assert!(
        matches!(
            err,
            ContentError::NewerHeld {
                newer: 2,
                version: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(lib.versions_of(&p).unwrap(), [2]);
    assert_eq!(
        freight_test_support::tree::difference(&s2, &share.join(PKG)).unwrap(),
        None
    );
}

/// Heavy tier: needs root (mounts a small tmpfs as the share).
#[test]
fn heavy_an_install_that_fills_the_share_leaves_nothing_served_and_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    let mut lib = open_lib(&t.path().join("lib"));
    let p = PackageId::parse(PKG).unwrap();
    let share = t.path().join("share");
    let _fs = freight_test_support::tmpfs::Tmpfs::mount(&share, 2 << 20);
    let (s1, s2) = (t.path().join("s1"), t.path().join("s2"));
    tree(&s1, 1);
    ingest_version(&mut lib, &s1, PKG, 1).unwrap();
    {
        let h = hash_of(&lib, 1);
        install(&mut lib, &p, 1, &h, Some(&share))
    }
    .unwrap();
    tree(&s2, 2);
    std::fs::write(s2.join("big.bin"), noise("big", 3 << 20)).unwrap();
    ingest_version(&mut lib, &s2, PKG, 2).unwrap();
    let err = {
        let h = hash_of(&lib, 2);
        install(&mut lib, &p, 2, &h, Some(&share))
    }
    .unwrap_err();
    // A full disk is transient: the site server retries.
    assert_eq!(err.kind(), FailureKind::Transient, "{err}");
    // Version 2 is no longer in the library (nothing serves it); version 1 is, and the share
    // still holds it complete; no staging leftovers.
    assert_eq!(lib.versions_of(&p).unwrap(), [1]);
    assert_eq!(
        freight_test_support::tree::difference(&s1, &share.join(PKG)).unwrap(),
        None
    );
    assert!(names(&share.join(".freight-staging")).is_empty());
    // A first install that fails leaves no version at all.
    drop_package(&mut lib, &p, &HashSet::new(), Some(&share)).unwrap();
    ingest_version(&mut lib, &s2, PKG, 2).unwrap();
    {
        let h = hash_of(&lib, 2);
        install(&mut lib, &p, 2, &h, Some(&share))
    }
    .unwrap_err();
    assert!(lib.versions_of(&p).unwrap().is_empty());
    assert_eq!(names(&share), [".freight-staging"]);
    assert!(names(&share.join(".freight-staging")).is_empty());
}
