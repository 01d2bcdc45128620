//! Paths of a file table, job leases, commit intents and clean-up.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::manifest::{self, MANIFEST_FORMAT_VERSION};
use crate::error::{ConnectorError, Result};
use crate::store::Location;

/// Directory of Sluice's own metadata inside a table.
const META_DIR: &str = "_sluice";

/// How long a job's lease lasts without a heartbeat.
pub(crate) const LEASE_SECONDS: i64 = 600;

/// Manifests kept by clean-up.
const MANIFESTS_KEPT: usize = 20;

/// Joins a relative path of raw (already encoded) segments to `root`.
pub(crate) fn join(root: &Path, rel: &str) -> Path {
    let rel = rel.trim_matches('/');
    let joined = if root.as_ref().is_empty() {
        rel.to_string()
    } else if rel.is_empty() {
        root.as_ref().to_string()
    } else {
        format!("{root}/{rel}")
    };
    Path::parse(&joined).unwrap_or_else(|_| Path::from(joined.as_str()))
}

/// The raw path segment of a Hive partition `column=value`.
pub(crate) fn partition_segment(column: &str, value: &str) -> String {
    object_store::path::PathPart::from(format!("{column}={value}"))
        .as_ref()
        .to_string()
}

pub(crate) fn manifests_dir(root: &Path) -> Path {
    join(root, &format!("{META_DIR}/manifests"))
}

pub(crate) fn manifest_path(root: &Path, version: u64) -> Path {
    join(root, &format!("{META_DIR}/manifests/{version:020}.json"))
}

pub(crate) fn staging_root(root: &Path) -> Path {
    join(root, &format!("{META_DIR}/staging"))
}

pub(crate) fn staging_dir(root: &Path, job_id: &str) -> Path {
    join(root, &format!("{META_DIR}/staging/{job_id}"))
}

fn lease_path(root: &Path, job_id: &str) -> Path {
    join(root, &format!("{META_DIR}/staging/{job_id}/_lease.json"))
}

fn intent_path(root: &Path, job_id: &str) -> Path {
    join(root, &format!("{META_DIR}/staging/{job_id}/_intent.json"))
}

pub(crate) fn success_path(root: &Path) -> Path {
    join(root, "_SUCCESS")
}

/// `path` relative to `root`, `/`-separated.
pub(crate) fn relative(root: &Path, path: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .prefix_match(root)?
        .map(|p| p.as_ref().to_string())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Whether a relative path is hidden from readers (any segment starts with `_` or `.`).
pub(crate) fn is_hidden(rel: &str) -> bool {
    rel.split('/')
        .any(|s| s.starts_with('_') || s.starts_with('.'))
}

/// Data file name written by a sink task.
pub(crate) fn data_file_name(job_id: &str, task: u64, attempt: u32, seq: u64, ext: &str) -> String {
    format!("part-{job_id}-{task:05}-{attempt}-{seq:04}.{ext}")
}

/// The job id embedded in a data file name written by Sluice.
pub(crate) fn job_of_file(rel: &str) -> Option<&str> {
    let name = rel.rsplit('/').next()?;
    let rest = name.strip_prefix("part-")?;
    let job = rest.get(..36)?;
    (job.len() == 36 && job.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(job)
}

/// Owner and lease of a running job's staging area.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Lease {
    format_version: u32,
    job_id: String,
    host: String,
    pid: u32,
    started_at: DateTime<Utc>,
    heartbeat_at: DateTime<Utc>,
    lease_seconds: i64,
}

impl Lease {
    fn new(job_id: &str) -> Self {
        let now = Utc::now();
        Self {
            format_version: MANIFEST_FORMAT_VERSION,
            job_id: job_id.to_string(),
            host: hostname(),
            pid: std::process::id(),
            started_at: now,
            heartbeat_at: now,
            lease_seconds: LEASE_SECONDS,
        }
    }

    /// Expired when no heartbeat came within the lease, or when the owner ran
    /// on this host and its process is gone.
    fn expired(&self, now: DateTime<Utc>) -> bool {
        if now > self.heartbeat_at + chrono::Duration::seconds(self.lease_seconds) {
            return true;
        }
        self.host == hostname() && !process_alive(self.pid)
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Files a committing job moves into place, recorded before it moves them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub(crate) format_version: u32,
    pub(crate) job_id: String,
    /// `(staged, final)` paths relative to the table root.
    pub(crate) moves: Vec<(String, String)>,
}

async fn put_json<T: Serialize>(loc: &Location, path: &Path, value: &T) -> Result<()> {
    let body = serde_json::to_vec_pretty(value)
        .map_err(|e| ConnectorError::Internal(format!("cannot encode {path}: {e}")))?;
    loc.store
        .put(path, PutPayload::from(body))
        .await
        .map_err(|e| ConnectorError::store(loc.url_of(path), e))?;
    Ok(())
}

async fn get_json<T: for<'de> Deserialize<'de>>(loc: &Location, path: &Path) -> Result<Option<T>> {
    let bytes = match loc.store.get(path).await {
        Ok(r) => r
            .bytes()
            .await
            .map_err(|e| ConnectorError::store(loc.url_of(path), e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(ConnectorError::store(loc.url_of(path), e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ConnectorError::Metadata {
            url: loc.url_of(path),
            reason: e.to_string(),
        })
}

/// Records the job as owner of its staging area.
pub(crate) async fn write_lease(loc: &Location, job_id: &str) -> Result<()> {
    put_json(loc, &lease_path(&loc.path, job_id), &Lease::new(job_id)).await
}

/// Renews the job's lease.
pub(crate) async fn renew_lease(loc: &Location, job_id: &str) -> Result<()> {
    let path = lease_path(&loc.path, job_id);
    let mut lease: Lease = get_json(loc, &path)
        .await?
        .unwrap_or_else(|| Lease::new(job_id));
    lease.heartbeat_at = Utc::now();
    put_json(loc, &path, &lease).await
}

pub(crate) async fn write_intent(loc: &Location, intent: &Intent) -> Result<()> {
    put_json(loc, &intent_path(&loc.path, &intent.job_id), intent).await
}

/// Job ids that have a staging area.
pub(crate) async fn staging_jobs(loc: &Location) -> Result<Vec<String>> {
    let dir = staging_root(&loc.path);
    match loc.store.list_with_delimiter(Some(&dir)).await {
        Ok(r) => Ok(r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect()),
        Err(object_store::Error::NotFound { .. }) => Ok(vec![]),
        Err(e) => Err(ConnectorError::store(loc.url_of(&dir), e)),
    }
}

/// Deletes every object under `prefix`; returns (objects, bytes).
pub(crate) async fn delete_prefix(loc: &Location, prefix: &Path) -> Result<(u64, u64)> {
    let metas: Vec<_> = match loc.store.list(Some(prefix)).try_collect().await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => return Ok((0, 0)),
        Err(e) => return Err(ConnectorError::store(loc.url_of(prefix), e)),
    };
    let bytes = metas.iter().map(|m| m.size).sum();
    let count = metas.len() as u64;
    let paths = futures::stream::iter(metas.into_iter().map(|m| Ok(m.location))).boxed();
    let results: Vec<_> = loc.store.delete_stream(paths).collect().await;
    for r in results {
        match r {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(ConnectorError::store(loc.url_of(prefix), e)),
        }
    }
    if loc.is_local() {
        remove_local_dir(loc, prefix);
    }
    Ok((count, bytes))
}

/// On a local file system, removes `_sluice/staging` and `_sluice` when
/// empty, so a single-file target leaves nothing beside its file.
pub(crate) fn remove_empty_meta_dirs(loc: &Location) {
    if !loc.is_local() {
        return;
    }
    for rel in [format!("{META_DIR}/staging"), META_DIR.to_string()] {
        let path = join(&loc.path, &rel);
        if let Ok(dir) = loc
            .url
            .join(&format!("/{path}"))
            .map_err(|_| ())
            .and_then(|u| u.to_file_path())
        {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// On a local file system, removes the directory itself: the store's listing
/// hides in-progress multipart files (`name#n`) that a killed writer leaves.
fn remove_local_dir(loc: &Location, prefix: &Path) {
    let Ok(dir) = loc
        .url
        .join(&format!("/{prefix}"))
        .map_err(|_| ())
        .and_then(|u| u.to_file_path())
    else {
        return;
    };
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a staging directory");
    }
}

/// What a clean-up removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Staging areas of dead or expired jobs removed.
    pub jobs_removed: u64,
    /// Objects deleted.
    pub objects_removed: u64,
    /// Bytes deleted.
    pub bytes_removed: u64,
    /// Staging areas left alone because their job may still be running.
    pub jobs_live: u64,
}

/// Removes the staging areas of jobs whose lease expired or whose process is
/// gone, undoing the moves of jobs that never reached their commit point.
pub(crate) async fn sweep_staging(loc: &Location, skip_job: Option<&str>) -> Result<GcReport> {
    let mut report = GcReport::default();
    let jobs = staging_jobs(loc).await?;
    if jobs.is_empty() {
        return Ok(report);
    }
    let now = Utc::now();
    let mut committed: Option<HashSet<String>> = None;
    for job in jobs {
        if Some(job.as_str()) == skip_job {
            continue;
        }
        let lease: Option<Lease> = get_json(loc, &lease_path(&loc.path, &job)).await?;
        if lease.as_ref().is_some_and(|l| !l.expired(now)) {
            report.jobs_live += 1;
            continue;
        }
        if let Some(intent) = get_json::<Intent>(loc, &intent_path(&loc.path, &job)).await? {
            if committed.is_none() {
                let (_, files) = manifest::live_files(loc).await?;
                committed = Some(files.into_iter().map(|f| f.path).collect());
            }
            let live = committed.as_ref().expect("set above");
            for (_, fin) in &intent.moves {
                if !live.contains(fin) {
                    let path = join(&loc.path, fin);
                    match loc.store.delete(&path).await {
                        Ok(()) => report.objects_removed += 1,
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(ConnectorError::store(loc.url_of(&path), e)),
                    }
                }
            }
        }
        let (n, bytes) = delete_prefix(loc, &staging_dir(&loc.path, &job)).await?;
        report.jobs_removed += 1;
        report.objects_removed += n;
        report.bytes_removed += bytes;
        tracing::info!(job_id = %job, table = %loc.url, objects = n, "removed staging area of a dead job");
    }
    Ok(report)
}

/// Full clean-up of a file table (`sluice gc`): dead jobs' staging areas,
/// data files no manifest lists any more, and old manifests.
pub async fn gc_table(loc: &Location) -> Result<GcReport> {
    let mut report = sweep_staging(loc, None).await?;
    if let Some(latest) = manifest::load_latest(loc).await? {
        let running: HashSet<String> = staging_jobs(loc).await?.into_iter().collect();
        // While a job runs, the files of the version before the newest stay:
        // a statement set may still swap the newest version back.
        let before = match latest.version {
            v if v > 1 && !running.is_empty() => manifest::load_version(loc, v - 1).await?,
            _ => None,
        };
        let live: HashSet<&str> = latest
            .files
            .iter()
            .chain(before.iter().flat_map(|m| m.files.iter()))
            .map(|f| f.path.as_str())
            .collect();
        let metas: Vec<_> = loc
            .store
            .list(Some(&loc.path))
            .try_collect()
            .await
            .map_err(|e| ConnectorError::store(loc.url.to_string(), e))?;
        for m in metas {
            let Some(rel) = relative(&loc.path, &m.location) else {
                continue;
            };
            if is_hidden(&rel) || live.contains(rel.as_str()) {
                continue;
            }
            if job_of_file(&rel).is_some_and(|j| running.contains(j)) {
                continue;
            }
            match loc.store.delete(&m.location).await {
                Ok(()) => {
                    report.objects_removed += 1;
                    report.bytes_removed += m.size;
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(ConnectorError::store(loc.url_of(&m.location), e)),
            }
        }
        manifest::prune_manifests(&loc.store, &loc.path, MANIFESTS_KEPT).await;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names() {
        let root = Path::from("data/t");
        assert_eq!(join(&root, "dt=1/x.csv").as_ref(), "data/t/dt=1/x.csv");
        assert_eq!(
            relative(&root, &Path::from("data/t/dt=1/x.csv")).unwrap(),
            "dt=1/x.csv"
        );
        assert!(is_hidden("_sluice/manifests/1.json"));
        assert!(is_hidden("dt=1/.x.crc"));
        assert!(!is_hidden("dt=1/x.csv"));
        let job = "0196a3c0-0000-7000-8000-000000000001";
        let name = data_file_name(job, 3, 1, 0, "parquet");
        assert_eq!(job_of_file(&format!("dt=1/{name}")), Some(job));
        assert_eq!(job_of_file("dt=1/other.parquet"), None);
    }

    #[test]
    fn lease_of_dead_local_process_is_expired() {
        let mut lease = Lease::new("j");
        assert!(!lease.expired(Utc::now()));
        lease.pid = u32::MAX - 7;
        assert!(lease.expired(Utc::now()));
        let mut remote = Lease::new("j");
        remote.host = "elsewhere".into();
        assert!(!remote.expired(Utc::now()));
        assert!(remote.expired(Utc::now() + chrono::Duration::seconds(LEASE_SECONDS + 1)));
    }
}
