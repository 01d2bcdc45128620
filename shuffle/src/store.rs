//! The shuffle store: where attempts' data objects, indexes, winner records
//! and job leases live, on any `object_store`.
//!
//! Layout under the store's root:
//!
//! ```text
//! jobs/<job>/lease.json                       who runs the job, until when
//! jobs/<job>/job.json                         the job's stage graph
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
use object_store::multipart::MultipartStore;
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
    /// The node that may reclaim the job after a restart, before the
    /// lease expires (see [`ShuffleStore::reclaim_node`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    expires_at: DateTime<Utc>,
}

/// Who holds a job's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The process, for people reading the store (`pid 42`).
    pub owner: String,
    /// A name that outlives the process: a coordinator's state location.
    /// A process that restarts under the same node reclaims its jobs at
    /// once instead of waiting for their leases to expire. `None` for
    /// processes that share a store without a stable name (`sluice run`).
    pub node: Option<String>,
}

/// A job's stage graph, stored beside its data when it starts, so that
/// the store alone tells what a job was doing when its coordinator died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// [`SHUFFLE_FORMAT_VERSION`].
    pub format_version: u32,
    /// Job id.
    pub job: String,
    /// The process that ran it.
    pub owner: String,
    /// Its node, as in its lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its stages, upstream first.
    pub stages: Vec<StageRecord>,
}

/// One stage of a [`JobRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Stage id.
    pub stage: u32,
    /// Number of tasks.
    pub tasks: u32,
    /// Stages it reads.
    pub inputs: Vec<u32>,
    /// Output partitions of a map stage; `None` for the result stage.
    pub partitions: Option<u32>,
    /// The stage plan, one operator per line.
    pub plan: String,
}

/// A job reclaimed by [`ShuffleStore::reclaim_node`].
#[derive(Debug, Clone)]
pub struct ReclaimedJob {
    /// Job id.
    pub job: String,
    /// Its record, when it had one.
    pub record: Option<JobRecord>,
    /// Committed tasks per stage (stage id, committed, tasks), from the
    /// winner records, for stages of the record.
    pub committed: Vec<(u32, u32, u32)>,
    /// Objects removed.
    pub objects: usize,
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
    /// The store's multipart API and where this store's root is in it:
    /// data objects go up as uploads whose id is recorded first
    /// ([`Self::upload_record_path`]), so clean-up can abort them.
    multipart: Option<Multipart>,
}

/// A store's multipart API and where a shuffle store's root is in it.
#[derive(Clone)]
struct Multipart {
    api: Arc<dyn MultipartStore>,
    root: Path,
}

impl std::fmt::Debug for Multipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multipart")
            .field("root", &self.root)
            .finish()
    }
}

/// An unfinished multipart upload of an attempt's data object, recorded
/// before its first part is sent. Clean-up aborts the uploads it finds
/// recorded: a store listing never shows unfinished uploads, and their
/// parts are kept (and billed) until aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// [`SHUFFLE_FORMAT_VERSION`].
    pub format_version: u32,
    /// The object being uploaded, as the multipart API names it.
    pub path: String,
    /// The upload's id.
    pub upload_id: String,
}

impl ShuffleStore {
    /// A store rooted at `url` (used in messages only).
    pub fn new(store: Arc<dyn ObjectStore>, url: impl Into<String>) -> Self {
        Self {
            store,
            url: url.into(),
            local_root: None,
            worker: None,
            multipart: None,
        }
    }

    /// Data objects go up through `multipart`, the multipart API of the
    /// same store, whose path of this store's root is `root`; each upload
    /// is recorded before its first part.
    pub fn with_multipart(mut self, multipart: Arc<dyn MultipartStore>, root: Path) -> Self {
        self.multipart = Some(Multipart {
            api: multipart,
            root,
        });
        self
    }

    /// The multipart API of the store and this store's root in it.
    pub(crate) fn multipart(&self) -> Option<(&Arc<dyn MultipartStore>, &Path)> {
        self.multipart.as_ref().map(|m| (&m.api, &m.root))
    }

    /// Where the record of `id`'s unfinished data upload is kept.
    pub fn upload_record_path(id: &AttemptId) -> Path {
        Path::from(format!(
            "jobs/{}/uploads/s{}-t{}-a{}.json",
            id.job, id.stage, id.task, id.attempt
        ))
    }

    /// Aborts the upload recorded at `record` and removes the record.
    async fn abort_recorded(&self, record: &Path) -> Result<()> {
        let Some(Multipart { api: multipart, .. }) = &self.multipart else {
            return Ok(());
        };
        let body = match self.store.get(record).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let upload: UploadRecord = serde_json::from_slice(&body).map_err(|e| {
            ShuffleError::Config(format!("cannot read the upload record {record}: {e}"))
        })?;
        let path = Path::from(upload.path.as_str());
        match multipart.abort_multipart(&path, &upload.upload_id).await {
            // An upload that completed or was aborted already is gone.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::debug!(upload = %upload.upload_id, %path, error = %e, "aborting a recorded upload failed; it may have finished");
            }
        }
        match self.store.delete(record).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
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
            multipart: None,
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

    /// Deletes an attempt's data and index (a failed or losing attempt),
    /// aborting its upload if one is unfinished.
    pub async fn delete_attempt(&self, id: &AttemptId) -> Result<()> {
        self.abort_recorded(&Self::upload_record_path(id)).await?;
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
        // Unfinished uploads first: their records are how they are found.
        let uploads: Vec<Path> = self
            .store
            .list(Some(&prefix.clone().join("uploads")))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        for record in &uploads {
            self.abort_recorded(record).await?;
        }
        let paths: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        let n = paths.len() + uploads.len();
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
        holder: &LeaseHolder,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let lease = Lease {
            format_version: SHUFFLE_FORMAT_VERSION,
            job: job.to_string(),
            owner: holder.owner.clone(),
            node: holder.node.clone(),
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

    /// Stores a job's record (its stage graph).
    pub async fn write_job_record(&self, record: &JobRecord) -> Result<()> {
        let body = Bytes::from(serde_json::to_vec_pretty(record).expect("records serialise"));
        self.store
            .put(
                &Self::job_prefix(&record.job).join("job.json"),
                PutPayload::from(body),
            )
            .await?;
        Ok(())
    }

    /// Reads a job's record; `None` when the job wrote none.
    pub async fn read_job_record(&self, job: &str) -> Result<Option<JobRecord>> {
        let path = Self::job_prefix(job).join("job.json");
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let record: JobRecord = serde_json::from_slice(&bytes)
            .map_err(|e| ShuffleError::Corrupt(format!("bad job record {path}: {e}")))?;
        if record.format_version != SHUFFLE_FORMAT_VERSION {
            return Err(ShuffleError::Version {
                what: "job record",
                found: record.format_version,
                supported: SHUFFLE_FORMAT_VERSION,
            });
        }
        Ok(Some(record))
    }

    /// Number of tasks of a stage with a committed attempt.
    pub async fn committed_tasks(&self, job: &str, stage: u32) -> Result<u32> {
        let prefix = Path::from(format!("jobs/{job}/s{stage}"));
        let n = self
            .store
            .list(Some(&prefix))
            .try_filter(|m| futures::future::ready(m.location.filename() == Some("winner.json")))
            .try_fold(0u32, |n, _| futures::future::ready(Ok(n + 1)))
            .await?;
        Ok(n)
    }

    /// Removes every job whose lease names `node`: called by a process
    /// that starts under that node, before it starts jobs of its own, so
    /// every such job belongs to an earlier life of it and can never
    /// finish. Two live processes must not share a node.
    pub async fn reclaim_node(&self, node: &str) -> Result<Vec<ReclaimedJob>> {
        let mut reclaimed = Vec::new();
        for (job, lease) in self.leases().await? {
            if lease.and_then(|l| l.node).as_deref() != Some(node) {
                continue;
            }
            let record = self.read_job_record(&job).await.unwrap_or_else(|e| {
                tracing::warn!(job = %job, error = %e, "unreadable job record");
                None
            });
            let mut committed = Vec::new();
            for s in record.iter().flat_map(|r| &r.stages) {
                committed.push((s.stage, self.committed_tasks(&job, s.stage).await?, s.tasks));
            }
            let objects = self.delete_job(&job).await?;
            reclaimed.push(ReclaimedJob {
                job,
                record,
                committed,
                objects,
            });
        }
        Ok(reclaimed)
    }

    /// Every job in the store with its lease (`None`: missing or
    /// unreadable).
    async fn leases(&self) -> Result<Vec<(String, Option<Lease>)>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&Path::from("jobs")))
            .await?;
        let mut out = Vec::new();
        for dir in listing.common_prefixes {
            let Some(job) = dir.filename().map(str::to_string) else {
                continue;
            };
            let lease = match self.store.get(&dir.clone().join("lease.json")).await {
                Ok(r) => serde_json::from_slice::<Lease>(&r.bytes().await?).ok(),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            out.push((job, lease));
        }
        Ok(out)
    }

    /// Deletes the data of every job whose lease expired before `now`, or
    /// that has no readable lease and was last written more than
    /// [`LEASELESS_GRACE`] before `now`. Returns the jobs removed.
    ///
    /// A job being started has data but no lease for a moment (its lease is
    /// being written, by a rename on a local store); sweeping it then
    /// deleted the directory under the write ('Unable to rename file').
    pub async fn sweep_expired(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for (job, lease) in self.leases().await? {
            let expired = match lease {
                Some(l) => l.expires_at < now,
                None => self
                    .last_write(&job)
                    .await?
                    .is_some_and(|t| now - t > LEASELESS_GRACE),
            };
            if expired {
                self.delete_job(&job).await?;
                removed.push(job);
            }
        }
        Ok(removed)
    }

    /// When anything under the job was last written: on a local store the
    /// newest modification time of its directories and files (which sees
    /// writes in progress too), elsewhere the newest object.
    async fn last_write(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        if let Some(root) = &self.local_root {
            let dir = root.join(Self::job_prefix(job).as_ref());
            return Ok(newest_mtime(&dir).map(DateTime::<Utc>::from));
        }
        let prefix = Self::job_prefix(job);
        let times: Vec<DateTime<Utc>> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.last_modified)
            .try_collect()
            .await?;
        Ok(times.into_iter().max())
    }
}

/// How long a job without a lease is left alone after its last write.
pub const LEASELESS_GRACE: chrono::Duration = chrono::Duration::minutes(10);

fn newest_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let mut newest = meta.modified().ok();
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            if let Some(t) = newest_mtime(&entry.path()) {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
    }
    newest
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

    fn holder(node: Option<&str>) -> LeaseHolder {
        LeaseHolder {
            owner: "test".into(),
            node: node.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn a_restarted_node_reclaims_its_jobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::local(dir.path()).unwrap();
        let later = Utc::now() + chrono::Duration::seconds(600);
        store
            .write_lease("job1", &holder(Some("coordinator a")), later)
            .await
            .unwrap();
        let stage = |stage, tasks, inputs: Vec<u32>| StageRecord {
            stage,
            tasks,
            inputs,
            partitions: None,
            plan: String::new(),
        };
        let record = JobRecord {
            format_version: SHUFFLE_FORMAT_VERSION,
            job: "job1".into(),
            owner: "test".into(),
            node: Some("coordinator a".into()),
            started_at: Utc::now(),
            stages: vec![stage(1, 1, vec![]), stage(2, 3, vec![1])],
        };
        store.write_job_record(&record).await.unwrap();
        assert_eq!(store.read_job_record("job1").await.unwrap(), Some(record));
        store.commit_winner(&id(0)).await.unwrap(); // stage 2, task 0
        store
            .write_lease("other", &holder(Some("coordinator b")), later)
            .await
            .unwrap();
        store
            .write_lease("shared", &holder(None), later)
            .await
            .unwrap();

        let reclaimed = store.reclaim_node("coordinator a").await.unwrap();
        assert_eq!(reclaimed.len(), 1);
        assert_eq!(reclaimed[0].job, "job1");
        assert_eq!(reclaimed[0].committed, vec![(1, 0, 1), (2, 1, 3)]);
        assert!(!dir.path().join("jobs/job1").exists());
        assert!(dir.path().join("jobs/other/lease.json").exists());
        assert!(dir.path().join("jobs/shared/lease.json").exists());
        assert!(store.read_job_record("other").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn expired_jobs_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::local(dir.path()).unwrap();
        let now = Utc::now();
        store
            .write_lease("old", &holder(None), now - chrono::Duration::seconds(5))
            .await
            .unwrap();
        store
            .write_lease("live", &holder(None), now + chrono::Duration::seconds(60))
            .await
            .unwrap();
        store.commit_winner(&id(0)).await.unwrap(); // job1 has no lease at all
        let removed = store.sweep_expired(now).await.unwrap();
        // A job without a lease may be starting: it is kept while written
        // to recently.
        assert_eq!(removed, vec!["old".to_string()]);
        assert!(dir.path().join("jobs/live/lease.json").exists());
        assert!(!dir.path().join("jobs/old").exists());
        assert!(dir.path().join("jobs/job1").exists());
        let later = Utc::now() + LEASELESS_GRACE + chrono::Duration::seconds(1);
        let removed = store.sweep_expired(later).await.unwrap();
        assert!(removed.contains(&"job1".to_string()), "{removed:?}");
        assert!(!dir.path().join("jobs/job1").exists());
    }
}
