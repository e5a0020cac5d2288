//! Properties of generated trees: determinism, shape, and safety.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use freight_test_support::dataset::{self, DatasetSpec, DatasetSummary};
use freight_test_support::tree::walk;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("freight-bench-test-")
        .tempdir()
        .expect("creating a temporary directory")
}

/// Generates `spec` into `<tempdir>/src`.
fn generated(spec: &DatasetSpec) -> (TempDir, PathBuf, DatasetSummary) {
    let dir = scratch();
    let root = dir.path().join("src");
    let summary = dataset::generate(&root, spec).expect("generating the dataset");
    (dir, root, summary)
}

/// Everything observable about one entry of a tree.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir {
        mode: u32,
        mtime: (i64, i64),
    },
    File {
        mode: u32,
        mtime: (i64, i64),
        data: Vec<u8>,
    },
    Symlink {
        target: PathBuf,
    },
}

/// The whole tree under `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut entries = BTreeMap::new();
    walk(root, &mut |path, meta| {
        let rel = path.strip_prefix(root).unwrap().to_owned();
        let mode = meta.permissions().mode() & 0o7777;
        let mtime = (meta.mtime(), meta.mtime_nsec());
        let entry = if meta.file_type().is_symlink() {
            Entry::Symlink {
                target: fs::read_link(path)?,
            }
        } else if meta.is_dir() {
            Entry::Dir { mode, mtime }
        } else if meta.is_file() {
            Entry::File {
                mode,
                mtime,
                data: fs::read(path)?,
            }
        } else {
            panic!("special file {}", path.display());
        };
        entries.insert(rel, entry);
        Ok(())
    })
    .unwrap();
    entries
}

#[test]
fn same_spec_gives_identical_trees() {
    let spec = DatasetSpec::mixed(20 * MIB, 7);
    let (_a, root_a, summary_a) = generated(&spec);
    let (_b, root_b, summary_b) = generated(&spec);
    assert_eq!(summary_a, summary_b);
    let (a, b) = (snapshot(&root_a), snapshot(&root_b));
    assert_eq!(a.len(), b.len());
    for ((path_a, entry_a), (path_b, entry_b)) in a.iter().zip(&b) {
        assert_eq!(path_a, path_b);
        assert!(entry_a == entry_b, "{} differs", path_a.display());
    }

    let other = DatasetSpec::mixed(20 * MIB, 8);
    let (_c, root_c, _) = generated(&other);
    assert!(
        snapshot(&root_c) != a,
        "a different seed gives a different tree"
    );
}

#[test]
fn summary_matches_disk_and_sizes_are_exact() {
    let spec = DatasetSpec::mixed(24 * MIB, 3);
    let (_dir, root, summary) = generated(&spec);
    let usage = freight_test_support::tree::disk_usage(&root).unwrap();
    assert_eq!(summary.files, usage.files);
    assert_eq!(summary.dirs, usage.dirs - 1, "the root is not counted");
    assert_eq!(summary.symlinks, usage.symlinks);
    assert_eq!(summary.bytes, usage.apparent_bytes);
    assert_eq!(usage.others, 0, "no special files");
    assert_eq!(summary.bytes, spec.total_bytes);
    assert!(summary.files as usize > spec.small_files);
    assert!(summary.dirs >= 12, "{} dirs", summary.dirs);
    assert!(summary.symlinks >= 3);
}

#[test]
fn tree_has_the_expected_shape() {
    let spec = DatasetSpec::mixed(32 * MIB, 11);
    let (_dir, root, _) = generated(&spec);
    let tree = snapshot(&root);

    let mut empty_files = 0;
    let mut small_files = 0;
    let mut file_modes = BTreeMap::new();
    let mut mtimes = std::collections::BTreeSet::new();
    for (path, entry) in &tree {
        assert!(
            path.components().count() <= 6,
            "too deep: {}",
            path.display()
        );
        match entry {
            Entry::File { mode, mtime, data } => {
                *file_modes.entry(*mode).or_insert(0) += 1;
                mtimes.insert(*mtime);
                if data.is_empty() {
                    empty_files += 1;
                } else if data.len() <= 32 << 10 {
                    small_files += 1;
                }
            }
            Entry::Dir { mtime, .. } => {
                mtimes.insert(*mtime);
            }
            Entry::Symlink { .. } => {}
        }
    }
    assert!(empty_files >= 3, "{empty_files} empty files");
    assert!(small_files >= spec.small_files, "{small_files} small files");
    for mode in [0o644, 0o755, 0o600] {
        assert!(file_modes.contains_key(&mode), "no file with mode {mode:o}");
    }
    assert!(mtimes.len() > tree.len() / 2, "mtimes are varied");

    let empty_dirs = tree
        .iter()
        .filter(|(path, entry)| {
            matches!(entry, Entry::Dir { .. })
                && !path.as_os_str().is_empty()
                && fs::read_dir(root.join(path)).unwrap().next().is_none()
        })
        .count();
    assert!(empty_dirs >= 2, "{empty_dirs} empty directories");
}

#[test]
fn symlinks_are_relative_and_stay_inside() {
    let spec = DatasetSpec::mixed(16 * MIB, 5);
    let (_dir, root, summary) = generated(&spec);
    let root = root.canonicalize().unwrap();
    let mut links = 0;
    walk(&root, &mut |path, meta| {
        if meta.file_type().is_symlink() {
            links += 1;
            let target = fs::read_link(path)?;
            assert!(target.is_relative(), "{} is absolute", target.display());
            let resolved = path.parent().unwrap().join(&target).canonicalize()?;
            assert!(
                resolved.starts_with(&root),
                "{} -> {} leaves the tree",
                path.display(),
                target.display()
            );
            assert!(
                resolved.is_file(),
                "{} is not a regular file",
                resolved.display()
            );
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(links, summary.symlinks);
    assert!(links >= 3);
}

#[test]
fn large_files_have_exact_sizes() {
    let large = vec![5 * MIB + 123, 7 * MIB, 0, 1];
    let spec = DatasetSpec {
        total_bytes: 40 * MIB,
        seed: 99,
        small_files: 200,
        large_file_bytes: large.clone(),
    };
    let (_dir, root, summary) = generated(&spec);
    assert_eq!(summary.bytes, spec.total_bytes);
    let mut found = Vec::new();
    walk(&root, &mut |path, meta| {
        if meta.is_file() && path.extension().is_some_and(|e| e == "pak") {
            found.push(meta.len());
        }
        Ok(())
    })
    .unwrap();
    found.sort_unstable();
    let mut expected = large;
    expected.sort_unstable();
    assert_eq!(found, expected);
}

#[test]
fn sizes_are_near_the_total_and_mixed_defaults_are_sane() {
    for total in [MIB, 10 * MIB + 12345, 48 * MIB] {
        let spec = DatasetSpec::mixed(total, total);
        let (_dir, root, summary) = generated(&spec);
        let bytes = freight_test_support::tree::disk_usage(&root)
            .unwrap()
            .apparent_bytes;
        assert_eq!(bytes, summary.bytes);
        let off = (bytes as f64 - total as f64).abs() / total as f64;
        assert!(off <= 0.05, "{bytes} bytes for a total of {total}");
    }
}

#[test]
fn marker_lives_next_to_the_tree() {
    let spec = DatasetSpec::mixed(2 * MIB, 1);
    let (dir, root, _) = generated(&spec);
    assert!(!dataset::is_generated(&root, &spec), "no marker yet");
    dataset::write_marker(&root, &spec).unwrap();
    assert!(dataset::is_generated(&root, &spec));
    assert!(!dataset::is_generated(
        &root,
        &DatasetSpec::mixed(2 * MIB, 2)
    ));
    assert!(!dataset::is_generated(&dir.path().join("absent"), &spec));
    let marker = dataset::marker_path(&root).unwrap();
    assert_eq!(marker, dir.path().join("src.spec"));
    assert!(marker.is_file());
    assert!(!root.join("src.spec").exists());
}

#[test]
fn refuses_a_non_empty_root() {
    let dir = scratch();
    fs::write(dir.path().join("precious"), b"keep me").unwrap();
    let err = dataset::generate(dir.path(), &DatasetSpec::mixed(MIB, 1)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(fs::read(dir.path().join("precious")).unwrap(), b"keep me");
}
