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

/// A path of `len` bytes: folders of 100-byte names, then a file name that makes up the rest.
fn deep_path(len: usize, tag: char) -> (Vec<String>, String) {
    let mut dirs = Vec::new();
    let mut used = 0;
    while len - used > 255 {
        dirs.push(format!("{tag}{}", "d".repeat(98)) + &format!("{}", dirs.len() % 10));
        used += 101;
    }
    let name = "f".repeat(len - used);
    (dirs, name)
}

/// Opens `rel` below `base` one name at a time, so no path handed to the kernel exceeds a
/// name: reads a file whose full path is longer than `PATH_MAX`.
fn read_deep(base: &Path, rel: &[&str]) -> std::io::Result<Vec<u8>> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    let mut fd = open(base, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
    let (file, dirs) = rel.split_last().unwrap();
    for d in dirs {
        fd = openat(&fd, *d, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
    }
    let f = openat(&fd, *file, OFlag::O_RDONLY, Mode::empty())?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(f), &mut out)?;
    Ok(out)
}

#[test]
fn a_path_of_4000_bytes_materialises_below_a_destination_that_takes_it_past_path_max() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let (dirs, name) = deep_path(4000, 'a');
    let rel = format!("{}/{name}", dirs.join("/"));
    assert_eq!(rel.len(), 4000);
    std::fs::create_dir_all(src.join(dirs.join("/"))).unwrap();
    let content = noise("deep", 300_000);
    std::fs::write(src.join(&rel), &content).unwrap();
    let long = "n".repeat(255);
    std::fs::write(src.join(&long), b"a 255-byte name").unwrap();
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    let m = lib.manifest(&pid("CAS00001"), 1).unwrap();
    assert!(m.entries.iter().any(|e| e.path == rel.as_bytes()));
    // The destination's own path (over 200 bytes) plus the package's path exceed PATH_MAX.
    let out = t.path().join("o".repeat(200)).join("out");
    assert!(out.as_os_str().len() + 1 + rel.len() > 4096);
    materialize(&lib, &m, &out, &Progress::default()).unwrap();
    let parts: Vec<&str> = rel.split('/').collect();
    assert_eq!(read_deep(&out, &parts).unwrap(), content);
    assert_eq!(std::fs::read(out.join(&long)).unwrap(), b"a 255-byte name");
    let mut top: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, [dirs[0].clone(), long], "leftovers in the destination");
    // The tree, deeper than PATH_MAX from `/`, is removed too.
    remove_tree(&out).unwrap();
    assert!(!out.exists());
}

/// Heavy tier: needs root (mounts a small tmpfs as the destination).
#[test]
fn heavy_a_materialise_that_fills_its_file_system_leaves_nothing_in_the_destination() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let (dirs, name) = deep_path(4000, 'b');
    std::fs::create_dir_all(src.join(dirs.join("/"))).unwrap();
    std::fs::write(src.join(dirs.join("/")).join(&name), noise("a", 3 << 20)).unwrap();
    std::fs::write(src.join("b.bin"), noise("b", 6 << 20)).unwrap();
    let mut lib = new_lib(&t.path().join("lib"), &LibraryConfig::default());
    ingest_v(&mut lib, &src, "CAS00001", 1).unwrap();
    let m = lib.manifest(&pid("CAS00001"), 1).unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _fs = freight_test_support::tmpfs::Tmpfs::mount(&mnt, 5 << 20);
    let err = materialize(&lib, &m, &mnt, &Progress::default()).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().collect();
    assert!(left.is_empty(), "leftovers: {left:?}");
}
