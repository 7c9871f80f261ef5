//! Shared helpers for Baton's workspace-level tests: the real `baton` binary run
//! against a throw-away data directory, and `openssl` as an independent second opinion.
#![forbid(unsafe_code)]
// Test support: failing loudly with a message is the point.
#![allow(clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `baton` binary built alongside this test (same target directory and
/// profile). `cargo test --workspace` builds it before any test runs.
pub fn baton_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test binary> -> target/<profile>/baton
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("baton"))
        .unwrap_or_default();
    assert!(
        bin.is_file(),
        "{} not found: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A scratch directory with a data directory path inside it, and the means to run
/// `baton` against it with a clean environment.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

/// What a finished command printed.
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "command failed: {}", self.stderr);
        &self.stdout
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Sandbox {
    /// A fresh, empty sandbox.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
        }
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory `baton` is pointed at.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("baton-data")
    }

    /// `baton --data-dir <sandbox> <args>` with no inherited `BATON_*` settings.
    pub fn baton(&self, args: &[&str]) -> Run {
        self.baton_with_env(args, &[])
    }

    /// Like [`Sandbox::baton`], with extra environment variables.
    pub fn baton_with_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Run {
        let mut cmd = Command::new(baton_bin());
        cmd.arg("--data-dir").arg(self.data_dir()).args(args);
        cmd.current_dir(self.path());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BATON_") {
                cmd.env_remove(name);
            }
        }
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run baton: {e}"))
            .into()
    }

    /// `openssl <args>` in the sandbox.
    pub fn openssl(&self, args: &[&str]) -> Run {
        Command::new("openssl")
            .args(args)
            .current_dir(self.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"))
            .into()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}
