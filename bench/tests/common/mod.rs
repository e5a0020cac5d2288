//! Helpers shared by the end-to-end tests of the `freight-bench` subcommands,
//! which run the real binary against stub freight binaries (or the real one).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// Fails the test when the peer pipelines' tools are missing (`.ci/run` installs them).
pub fn require_peer_tools() {
    for tool in ["bash", "tar", "zstd"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{tool} is not installed; run .ci/run or apt-get install {tool}"
        );
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("freight-bench-test-")
        .tempdir()
        .unwrap()
}

/// Writes an executable shell script `name` with `body` into `dir`.
pub fn stub(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/bash\nset -eu\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs `freight-bench SUBCOMMAND --size 3MiB --work WORK --freight FREIGHT EXTRA...`.
pub fn bench(subcommand: &str, work: &Path, freight: &Path, extra: &[&str]) -> Output {
    bench_sized(subcommand, "3MiB", work, freight, extra)
}

/// [`bench`] with a dataset of `size`.
pub fn bench_sized(
    subcommand: &str,
    size: &str,
    work: &Path,
    freight: &Path,
    extra: &[&str],
) -> Output {
    Command::new(env!("CARGO_BIN_EXE_freight-bench"))
        .args([subcommand, "--size", size, "--work"])
        .arg(work)
        .arg("--freight")
        .arg(freight)
        .args(extra)
        .output()
        .unwrap()
}

/// Fails the test when one of `tools` (`(program, Debian package)`) is not installed
/// (`.ci/run` installs them): a program name is looked up on `PATH`, a path is checked as is.
pub fn require_tools(tools: &[(&str, &str)]) {
    for (tool, package) in tools {
        let found = if tool.contains('/') {
            Path::new(tool).is_file()
        } else {
            std::env::var_os("PATH").is_some_and(|paths| {
                std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file())
            })
        };
        assert!(
            found,
            "{tool} is not installed; run .ci/run or apt-get install {package}"
        );
    }
}
