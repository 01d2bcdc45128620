//! Helpers: run the real binary in a scratch directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sluice_sql_tests::Failed;

/// A scratch directory holding scripts and data for one test.
pub(crate) struct Scratch {
    pub(crate) dir: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("sluice-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to `name` inside the scratch directory.
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    /// A `sluice` command running in the scratch directory.
    pub(crate) fn sluice(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.current_dir(self.path())
            .env_remove("RUST_LOG")
            .env_remove("SLUICE_LOG")
            .env("NO_COLOR", "1");
        c
    }

    /// Runs `sluice` with `args` (a whole command line, e.g. `test ...`).
    pub(crate) fn run_sluice(&self, args: &[&str]) -> Output {
        let mut c = self.sluice();
        c.args(args);
        run_command(c, None)
    }

    /// Runs `sluice run` with `args`, optionally feeding `stdin`.
    pub(crate) fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.sluice();
        c.arg("run").args(args);
        run_command(c, stdin)
    }
}

pub(crate) fn run_command(mut c: Command, stdin: Option<&str>) -> Output {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn sluice");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait sluice")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with the command's output when `cond` is false.
pub(crate) fn check(cond: bool, what: &str, o: &Output) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(format!(
            "{what}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            o.status.code(),
            stdout(o),
            stderr(o)
        )
        .into())
    }
}

/// Polls `f` every 50 ms until it holds or `secs` pass.
pub(crate) fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Every file (not directory) below `dir`, relative, sorted.
pub(crate) fn files_below(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}
