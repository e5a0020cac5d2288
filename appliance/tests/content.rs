//! A DP's installs into its share folder: each version replaces the last with one rename,
//! nothing temporary stays behind (not even after an interrupted install), and removing the
//! package removes its share. The power-cut behaviour is `power_loss.rs` (heavy tier).

use freight_appliance::content::{drop_package, install};
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
