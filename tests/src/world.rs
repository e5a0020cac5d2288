//! A folder of sites and libraries driven through the real `freight` binary, shared by the
//! CLI tests and the end-to-end hosts.

use freight_test_support::bins;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A temporary folder holding sites, libraries and sources by name.
pub struct World {
    /// None when the folder lives on a file system the test discards whole.
    _t: Option<tempfile::TempDir>,
    /// The folder; removed when the world is dropped.
    pub root: PathBuf,
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

impl World {
    /// A new, empty temporary folder.
    pub fn new() -> World {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        World { _t: Some(t), root }
    }

    /// A new, empty folder in `dir`, on a file system the test throws away whole (a
    /// [`freight_test_support::loopfs::LoopFs`]): it is not removed file by file on drop,
    /// which for trees of a million files would take minutes.
    pub fn in_scratch(dir: &std::path::Path) -> World {
        let root = tempfile::tempdir_in(dir).unwrap().keep();
        World { _t: None, root }
    }
    /// The path of `name` in the folder.
    pub fn p(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    /// The path of `name` in the folder, as text for command lines.
    pub fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_string()
    }
    /// `freight --quiet ARGS`, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        freight_cmd(args)
    }
    /// Runs `freight --quiet ARGS`, whatever its outcome.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    /// Runs and expects success; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        freight(args)
    }
    /// Runs and expects failure with a one-line error; returns it.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        err
    }
    /// Site `code` in folder `name`.
    pub fn site(&self, name: &str, code: &str) {
        self.ok(&["site", "--site", &self.s(name), "init", "--code", code]);
    }
    /// `to` trusts `from`.
    /// Site `to` trusts site `from` as its parent (which may push to it and send it parcels).
    pub fn trust(&self, from: &str, to: &str) {
        let id = self.s(&format!("{from}.id"));
        self.ok(&[
            "site",
            "--site",
            &self.s(from),
            "identity",
            "export",
            "--out",
            &id,
        ]);
        self.ok(&[
            "site",
            "--site",
            &self.s(to),
            "identity",
            "import",
            &id,
            "--role",
            "parent",
        ]);
    }
}

/// `freight --quiet ARGS`, not yet run.
fn freight_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bins::appliance("freight"));
    c.arg("--quiet").args(args);
    c
}

/// Runs `freight --quiet ARGS` and expects success; returns standard output.
pub fn freight(args: &[&str]) -> String {
    let out = freight_cmd(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
