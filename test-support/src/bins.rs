//! The workspace's binaries for tests that run them as processes.
//!
//! Cargo tells a test where a binary is (`CARGO_BIN_EXE_<name>`) only when the binary belongs to
//! the test's own package; the end-to-end tests live in their own crate, so they find `freight`
//! and `freightd` in the target folder they were built into themselves.

use std::path::{Path, PathBuf};

/// The path of `name` (`freight` or `freightd`), a binary of `freight-appliance`, built into the
/// same target folder and profile as the running test: a test runs from
/// `target/<profile>/deps/`, and Cargo puts binaries in `target/<profile>/`.
///
/// A test run at the workspace root (`cargo nextest run`, `cargo test`) builds these binaries
/// first; a run of one package with `-p` does not. Panics with one line naming the command to
/// build them when the binary is missing.
#[track_caller]
pub fn appliance(name: &str) -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the running test's own path: {e}"));
    let path = profile_dir(&exe).join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p freight-appliance --bins` (a plain `cargo nextest run` at the workspace root builds it)",
        path.display()
    );
    path
}

/// `target/<profile>` from the path of a test binary in `target/<profile>/deps/`.
fn profile_dir(test_exe: &Path) -> &Path {
    let dir = test_exe.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_sit_one_folder_above_the_tests() {
        assert_eq!(
            profile_dir(Path::new("/w/target/debug/deps/e2e-0123abcd")),
            Path::new("/w/target/debug")
        );
        assert_eq!(
            profile_dir(Path::new(
                "/w/target/x86_64-unknown-linux-gnu/release/deps/e2e-1"
            )),
            Path::new("/w/target/x86_64-unknown-linux-gnu/release")
        );
        // A binary run from elsewhere looks beside itself.
        assert_eq!(profile_dir(Path::new("/opt/t/e2e")), Path::new("/opt/t"));
    }
}
