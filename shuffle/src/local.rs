//! Sluice's own writer for data objects on a local file system.
//!
//! `object_store`'s local store writes through the page cache and syncs
//! nothing, so a fast writer in front of a slow disk piles up dirty pages,
//! which count against a container's memory and get it OOM-killed. This
//! writer starts write-back of every chunk it writes
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) and waits for the chunk
//! before it, so at most two chunks per writer are dirty or under
//! write-back. It writes to a staging file next to the object and renames
//! it into place after `fdatasync`; clean-up removes staging files.
//!
//! Written by hand because no maintained crate offers chunked
//! `sync_file_range` write-back; it is a few system calls.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;

use crate::error::{Result, ShuffleError};

/// Bytes written between write-back calls.
pub(crate) const SYNC_CHUNK: u64 = 8 * 1024 * 1024;

/// A data object being written to a local directory.
#[derive(Debug)]
pub(crate) struct LocalDataFile {
    file: Option<File>,
    staging: PathBuf,
    target: PathBuf,
    written: u64,
    /// Offset up to which write-back has been started.
    flushed: u64,
}

/// Suffix of staging files; clean-up removes files carrying it.
pub(crate) const STAGING_SUFFIX: &str = ".staging";

fn io(path: &std::path::Path, what: &str, e: std::io::Error) -> ShuffleError {
    ShuffleError::Config(format!("{what} {}: {e}", path.display()))
}

impl LocalDataFile {
    /// Creates the staging file of `target`.
    pub(crate) fn create(target: PathBuf) -> Result<Self> {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, "cannot create", e))?;
        }
        let mut staging = target.clone().into_os_string();
        staging.push(STAGING_SUFFIX);
        let staging = PathBuf::from(staging);
        let file = File::create(&staging).map_err(|e| io(&staging, "cannot create", e))?;
        Ok(Self {
            file: Some(file),
            staging,
            target,
            written: 0,
            flushed: 0,
        })
    }

    /// Appends `block`, keeping dirty pages bounded. Blocking: call from a
    /// blocking thread.
    pub(crate) fn write(&mut self, block: &Bytes) -> Result<()> {
        let file = self.file.as_mut().expect("file open until finish");
        file.write_all(block)
            .map_err(|e| io(&self.staging, "cannot write", e))?;
        self.written += block.len() as u64;
        if self.written - self.flushed >= SYNC_CHUNK {
            self.write_back()?;
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn write_back(&mut self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_ref().expect("open").as_raw_fd();
        let start = self.flushed as i64;
        let len = (self.written - self.flushed) as i64;
        // SAFETY: `fd` is an open file descriptor owned by `self.file`.
        let rc = unsafe {
            // Wait for the write-back started last time...
            if start > 0 {
                libc::sync_file_range(
                    fd,
                    0,
                    start,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            // ...and start it for this chunk.
            libc::sync_file_range(fd, start, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc != 0 {
            // Not every file system supports it; fall back to fdatasync.
            // SAFETY: as above.
            unsafe { libc::fdatasync(fd) };
        }
        self.flushed = self.written;
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn write_back(&mut self) -> Result<()> {
        self.file
            .as_ref()
            .expect("open")
            .sync_data()
            .map_err(|e| io(&self.staging, "cannot sync", e))?;
        self.flushed = self.written;
        Ok(())
    }

    /// Syncs the file and renames it into place. Blocking.
    pub(crate) fn finish(mut self) -> Result<u64> {
        let file = self.file.take().expect("open");
        file.sync_data()
            .map_err(|e| io(&self.staging, "cannot sync", e))?;
        drop(file);
        std::fs::rename(&self.staging, &self.target)
            .map_err(|e| io(&self.target, "cannot rename into", e))?;
        Ok(self.written)
    }

    /// Removes the staging file. Blocking.
    pub(crate) fn abort(mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.staging);
    }
}

impl Drop for LocalDataFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}
