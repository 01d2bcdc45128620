//! Wall time and peak resident memory of a child process.
//!
//! The child is reaped with `wait4`, whose `rusage.ru_maxrss` is the kernel's
//! exact high-water mark of the child's resident set, with no sampling. It is
//! never below the parent's own peak (see [`own_peak_rss_bytes`]), so the
//! measuring process keeps small.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One measured run of a child process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measurement {
    /// From just before spawning to the child's exit.
    pub(crate) wall: Duration,
    /// Peak resident set size of the child.
    pub(crate) max_rss_bytes: u64,
    /// How the child ended.
    pub(crate) status: ExitStatus,
}

/// Spawns `command`, waits for it and measures it.
pub(crate) fn run(command: &mut Command) -> Result<Measurement> {
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let (status, usage) = wait4(pid)?;
    let wall = started.elapsed();
    // The child is reaped: `Child` must not wait on it again, and dropping
    // it does not.
    drop(child);
    // Linux reports `ru_maxrss` in KiB.
    let max_rss_bytes = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    Ok(Measurement {
        wall,
        max_rss_bytes,
        status: ExitStatus::from_raw(status),
    })
}

/// Blocks until `pid` exits; returns its raw wait status and resource usage.
fn wait4(pid: libc::pid_t) -> Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is a plain C struct of integers, for which all zero
    // bytes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are valid, exclusive and live for the call.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            return Ok((status, usage));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).with_context(|| format!("waiting for process {pid}"));
        }
    }
}

/// Peak resident set size of this process. A child's `ru_maxrss` is never
/// below it: Linux carries the parent's high-water mark into the child at
/// fork and exec.
pub(crate) fn own_peak_rss_bytes() -> u64 {
    // SAFETY: as in `wait4`, all zero bytes is a valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is valid and exclusive for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024
}

/// Flushes dirty pages to disk, so that one run's writes are not paid for by
/// the next run.
pub(crate) fn sync_disks() {
    // SAFETY: `sync` has no preconditions and cannot fail.
    unsafe { libc::sync() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child() {
        // `sort` holds the one 64 MiB line in memory; the child's high-water
        // mark includes the children it waited for.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "head -c 67108864 /dev/zero | sort > /dev/null; exit 3",
        ]);
        let m = run(&mut cmd).unwrap();
        assert_eq!(m.status.code(), Some(3));
        assert!(m.wall > Duration::ZERO);
        assert!(m.max_rss_bytes >= 64 << 20, "{}", m.max_rss_bytes);
    }
}
