//! The shuffle store: where attempts' data objects, indexes, winner records
//! and job leases live, on any `object_store`.
//!
//! Layout under the store's root:
//!
//! ```text
//! jobs/<job>/lease.json                       who runs the job, until when
//! jobs/<job>/s<stage>/t<task>/a<attempt>.arrows      data object (blocks)
//! jobs/<job>/s<stage>/t<task>/a<attempt>.index.json  block index
//! jobs/<job>/s<stage>/t<task>/winner.json     the one committed attempt
//! ```
//!
//! Data goes under unique per-attempt keys; only the small records are
//! conditional (`PutMode::Create`), because multipart uploads cannot be.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::SHUFFLE_FORMAT_VERSION;
use crate::error::{Result, ShuffleError};
use crate::format::AttemptIndex;

/// Names one task attempt of one stage of one job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptId {
    /// Job id.
    pub job: String,
    /// Stage id.
    pub stage: u32,
    /// Task index in the stage.
    pub task: u32,
    /// Attempt number, from 0.
    pub attempt: u32,
}

impl std::fmt::Display for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "job {} stage {} task {} attempt {}",
            self.job, self.stage, self.task, self.attempt
        )
    }
}

/// The record naming the one committed attempt of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinnerRecord {
    /// [`SHUFFLE_FORMAT_VERSION`].
    pub format_version: u32,
    /// The winning attempt.
    pub attempt: AttemptId,
    /// Path of its index.
    pub index: String,
}

/// Outcome of [`ShuffleStore::commit_winner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// This attempt is the task's output.
    Won,
    /// Another attempt committed first; this one must be discarded.
    Lost(WinnerRecord),
}

/// A job's lease: the job's data may be swept once it has expired.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    format_version: u32,
    job: String,
    owner: String,
    expires_at: DateTime<Utc>,
}

/// Handle on the store shuffle data is written to.
#[derive(Debug, Clone)]
pub struct ShuffleStore {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// Root directory when the store is the local file system: clean-up then
    /// removes directories outright, including multipart staging files that
    /// a listing does not show.
    local_root: Option<PathBuf>,
    /// A shuffle worker (`http://host:port`) that writers send their blocks
    /// to; it persists them into this store. Writers fall back to writing
    /// the store themselves when it cannot be reached.
    worker: Option<String>,
}

impl ShuffleStore {
    /// A store rooted at `url` (used in messages only).
    pub fn new(store: Arc<dyn ObjectStore>, url: impl Into<String>) -> Self {
        Self {
            store,
            url: url.into(),
            local_root: None,
            worker: None,
        }
    }

    /// Writers of this store send their blocks through the shuffle worker
    /// at `url`, which persists them here.
    pub fn with_worker(mut self, url: Option<String>) -> Self {
        self.worker = url;
        self
    }

    /// The shuffle worker writers use, if any.
    pub fn worker(&self) -> Option<&str> {
        self.worker.as_deref()
    }

    /// A store in a local directory, created if missing.
    pub fn local(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            ShuffleError::Config(format!(
                "cannot create the shuffle directory {}: {e}",
                dir.display()
            ))
        })?;
        let dir = dir.canonicalize().map_err(|e| {
            ShuffleError::Config(format!("shuffle directory {}: {e}", dir.display()))
        })?;
        let store = LocalFileSystem::new_with_prefix(&dir)?;
        Ok(Self {
            store: Arc::new(store),
            url: format!("file://{}", dir.display()),
            local_root: Some(dir),
            worker: None,
        })
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// URL of the store, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn job_prefix(job: &str) -> Path {
        Path::from(format!("jobs/{job}"))
    }

    fn task_prefix(job: &str, stage: u32, task: u32) -> Path {
        Path::from(format!("jobs/{job}/s{stage}/t{task}"))
    }

    /// The file of `path` when the store is a local directory.
    pub(crate) fn local_path(&self, path: &Path) -> Option<PathBuf> {
        self.local_root
            .as_ref()
            .map(|root| root.join(path.as_ref()))
    }

    /// Path of an attempt's data object.
    pub fn data_path(id: &AttemptId) -> Path {
        Path::from(format!(
            "jobs/{}/s{}/t{}/a{}.arrows",
            id.job, id.stage, id.task, id.attempt
        ))
    }

    /// Path of an attempt's index.
    pub fn index_path(id: &AttemptId) -> Path {
        Path::from(format!(
            "jobs/{}/s{}/t{}/a{}.index.json",
            id.job, id.stage, id.task, id.attempt
        ))
    }

    fn winner_path(job: &str, stage: u32, task: u32) -> Path {
        Path::from(format!("jobs/{job}/s{stage}/t{task}/winner.json"))
    }

    /// Refuses stores that ignore put-if-absent: creates a probe object
    /// twice and expects the second create to fail.
    pub async fn probe_conditional_put(&self) -> Result<()> {
        let path = Path::from(format!("probe/{}", uuid::Uuid::new_v4()));
        let create = PutOptions::from(PutMode::Create);
        self.store
            .put_opts(&path, PutPayload::from_static(b"1"), create.clone())
            .await?;
        let second = self
            .store
            .put_opts(&path, PutPayload::from_static(b"2"), create)
            .await;
        let _ = self.store.delete(&path).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => Err(ShuffleError::NoPutIfAbsent {
                store: self.url.clone(),
                path: path.to_string(),
            }),
        }
    }

    /// Stores an attempt's index. Written with put-if-absent: an attempt
    /// number is never reused, so a second index for it is a bug.
    pub async fn put_index(&self, index: &AttemptIndex) -> Result<()> {
        let id = AttemptId {
            job: index.job.clone(),
            stage: index.stage,
            task: index.task,
            attempt: index.attempt,
        };
        self.store
            .put_opts(
                &Self::index_path(&id),
                PutPayload::from(index.encode()),
                PutOptions::from(PutMode::Create),
            )
            .await?;
        Ok(())
    }

    /// Reads an attempt's index.
    pub async fn read_index(&self, id: &AttemptId) -> Result<AttemptIndex> {
        let bytes = self.store.get(&Self::index_path(id)).await?.bytes().await?;
        AttemptIndex::decode(&bytes)
    }

    /// Records `id` as its task's one committed attempt, unless another
    /// attempt got there first.
    pub async fn commit_winner(&self, id: &AttemptId) -> Result<Commit> {
        let record = WinnerRecord {
            format_version: SHUFFLE_FORMAT_VERSION,
            attempt: id.clone(),
            index: Self::index_path(id).to_string(),
        };
        let path = Self::winner_path(&id.job, id.stage, id.task);
        let body = Bytes::from(serde_json::to_vec(&record).expect("records serialise"));
        match self
            .store
            .put_opts(
                &path,
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) => Ok(Commit::Won),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Commit::Lost(
                self.read_winner(&id.job, id.stage, id.task).await?,
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the winner record of a task.
    pub async fn read_winner(&self, job: &str, stage: u32, task: u32) -> Result<WinnerRecord> {
        let bytes = self
            .store
            .get(&Self::winner_path(job, stage, task))
            .await?
            .bytes()
            .await?;
        let record: WinnerRecord = serde_json::from_slice(&bytes)
            .map_err(|e| ShuffleError::Corrupt(format!("bad winner record: {e}")))?;
        if record.format_version != SHUFFLE_FORMAT_VERSION {
            return Err(ShuffleError::Version {
                what: "winner record",
                found: record.format_version,
                supported: SHUFFLE_FORMAT_VERSION,
            });
        }
        Ok(record)
    }

    /// Deletes an attempt's data and index (a failed or losing attempt).
    pub async fn delete_attempt(&self, id: &AttemptId) -> Result<()> {
        for path in [Self::data_path(id), Self::index_path(id)] {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(root) = &self.local_root {
            // Staging files sit beside the object (`<name>.staging`, or
            // `<name>#<n>` for multipart uploads); a listing never shows them.
            let dir = root.join(Self::task_prefix(&id.job, id.stage, id.task).as_ref());
            remove_staging(&dir, &format!("a{}.arrows", id.attempt));
        }
        Ok(())
    }

    /// Deletes everything a job stored. Returns the objects removed.
    pub async fn delete_job(&self, job: &str) -> Result<usize> {
        if let Some(root) = &self.local_root {
            let dir = root.join(Self::job_prefix(job).as_ref());
            let n = count_files(&dir);
            return match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(ShuffleError::Config(format!(
                    "cannot remove shuffle data {}: {e}",
                    dir.display()
                ))),
            };
        }
        let prefix = Self::job_prefix(job);
        let paths: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        let n = paths.len();
        for path in paths {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// Writes or renews a job's lease.
    pub async fn write_lease(
        &self,
        job: &str,
        owner: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let lease = Lease {
            format_version: SHUFFLE_FORMAT_VERSION,
            job: job.to_string(),
            owner: owner.to_string(),
            expires_at,
        };
        let body = Bytes::from(serde_json::to_vec(&lease).expect("leases serialise"));
        self.store
            .put(
                &Self::job_prefix(job).clone().join("lease.json"),
                PutPayload::from(body),
            )
            .await?;
        Ok(())
    }

    /// Deletes the data of every job whose lease expired before `now`, or
    /// that has no readable lease. Returns the jobs removed.
    pub async fn sweep_expired(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&Path::from("jobs")))
            .await?;
        let mut removed = Vec::new();
        for dir in listing.common_prefixes {
            let Some(job) = dir.filename().map(str::to_string) else {
                continue;
            };
            let lease_path = dir.clone().join("lease.json");
            let expired = match self.store.get(&lease_path).await {
                Ok(r) => match serde_json::from_slice::<Lease>(&r.bytes().await?) {
                    Ok(lease) => lease.expires_at < now,
                    Err(_) => true,
                },
                Err(object_store::Error::NotFound { .. }) => true,
                Err(e) => return Err(e.into()),
            };
            if expired {
                self.delete_job(&job).await?;
                removed.push(job);
            }
        }
        Ok(removed)
    }
}

fn remove_staging(dir: &std::path::Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(attempt: u32) -> AttemptId {
        AttemptId {
            job: "job1".into(),
            stage: 2,
            task: 0,
            attempt,
        }
    }

    #[tokio::test]
    async fn one_winner_per_task_and_late_attempts_lose() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::local(dir.path()).unwrap();
        store.probe_conditional_put().await.unwrap();
        assert_eq!(store.commit_winner(&id(1)).await.unwrap(), Commit::Won);
        match store.commit_winner(&id(0)).await.unwrap() {
            Commit::Lost(w) => assert_eq!(w.attempt, id(1)),
            Commit::Won => panic!("a second attempt must not win"),
        }
        assert_eq!(
            store.read_winner("job1", 2, 0).await.unwrap().attempt,
            id(1)
        );
    }

    #[tokio::test]
    async fn expired_jobs_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::local(dir.path()).unwrap();
        let now = Utc::now();
        store
            .write_lease("old", "test", now - chrono::Duration::seconds(5))
            .await
            .unwrap();
        store
            .write_lease("live", "test", now + chrono::Duration::seconds(60))
            .await
            .unwrap();
        store.commit_winner(&id(0)).await.unwrap(); // job1 has no lease at all
        let mut removed = store.sweep_expired(now).await.unwrap();
        removed.sort();
        assert_eq!(removed, vec!["job1".to_string(), "old".to_string()]);
        assert!(dir.path().join("jobs/live/lease.json").exists());
        assert!(!dir.path().join("jobs/old").exists());
    }
}
