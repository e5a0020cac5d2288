//! Materialise on real files: temporary names cannot collide with the package's own names nor
//! exceed the name limit, nothing temporary is left, and a share is replaced by one rename.

mod common;

use common::*;
use freight_core::materialize::{materialize, remove_tree, replace_tree};
use freight_core::{LibraryConfig, PackageId, Progress};
use std::path::Path;

fn pid(s: &str) -> PackageId {
    PackageId::parse(s).unwrap()
}

fn round_trip(src: &Path, out: &Path) {
    let t = tempfile::tempdir().unwrap();
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    ingest_v(&mut lib, src, "CAS00001", 1).unwrap();
    let m = lib.manifest(&pid("CAS00001"), 1).unwrap();
    materialize(&lib, &m, out, &Progress::default()).unwrap();
    assert_eq!(
        freight_test_support::tree::difference(src, out).unwrap(),
        None
    );
}

#[test]
fn names_that_look_like_temporary_names_materialise_with_their_own_content() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    // Every temporary name this or an earlier Freight used, beside the file it stood for.
    for dir in [src.clone(), src.join("d")] {
        std::fs::write(dir.join("x"), b"the real x").unwrap();
        std::fs::write(dir.join(".x.freight-tmp"), b"not x at all").unwrap();
        std::fs::write(dir.join(".x.tmp"), b"nor this").unwrap();
        std::fs::write(dir.join("0"), b"file zero").unwrap();
        std::fs::write(dir.join("1"), noise("one", 300_000)).unwrap();
    }
    std::fs::create_dir_all(src.join(".freight-staging-1")).unwrap();
    let out = t.path().join("out");
    round_trip(&src, &out);
    assert_eq!(std::fs::read(out.join("x")).unwrap(), b"the real x");
}

#[test]
fn a_file_name_of_255_bytes_materialises() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let long = "n".repeat(255);
    std::fs::create_dir_all(src.join(&long)).unwrap();
    std::fs::write(src.join(&long).join(&long), noise("long", 100_000)).unwrap();
    std::fs::write(
        src.join(format!("{}.txt", "é".repeat(125))),
        b"utf-8, 254 bytes",
    )
    .unwrap();
    let out = t.path().join("out");
    round_trip(&src, &out);
}

#[test]
fn read_only_folders_materialise_and_nothing_temporary_is_left() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("ro/inner")).unwrap();
    std::fs::write(src.join("ro/inner/f"), b"x").unwrap();
    std::fs::write(src.join("ro/g"), noise("g", 70_000)).unwrap();
    for d in ["ro/inner", "ro"] {
        std::fs::set_permissions(src.join(d), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let out = t.path().join("out");
    round_trip(&src, &out);
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["ro"], "leftovers: {names:?}");
    remove_tree(&out).unwrap();
    remove_tree(&src).unwrap();
}

#[test]
fn replace_tree_swaps_in_one_rename_and_removes_the_old_tree() {
    let t = tempfile::tempdir().unwrap();
    let (new, dest) = (t.path().join("staging/new"), t.path().join("share/PKG"));
    std::fs::create_dir_all(&new).unwrap();
    std::fs::create_dir_all(t.path().join("share")).unwrap();
    std::fs::write(new.join("v"), b"1").unwrap();
    replace_tree(&new, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("v")).unwrap(), b"1");
    assert!(!new.exists());
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(new.join("v"), b"2").unwrap();
    replace_tree(&new, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("v")).unwrap(), b"2");
    assert!(
        !new.exists(),
        "the old tree is removed once the new one is in place"
    );
}
