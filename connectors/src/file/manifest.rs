//! The versioned commit manifest of a file table.

use std::collections::HashSet;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::layout;
use crate::error::{ConnectorError, Result};
use crate::store::Location;

/// Version of the manifest format this build writes and reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Name of the table format, stored in every manifest.
pub const MANIFEST_FORMAT: &str = "sluice-table";

/// Run ids kept in the ledger; older ones are dropped.
const LEDGER_LIMIT: usize = 10_000;

/// One committed version of a file table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Format version; readers refuse versions newer than they know.
    pub format_version: u32,
    /// Table version, 1 for the first commit.
    pub version: u64,
    /// When the version was committed (RFC 3339).
    pub committed_at: String,
    /// Job that committed it.
    pub job_id: String,
    /// What the commit did (`append`, `overwrite`, ...).
    pub operation: String,
    /// The table's live data files.
    pub files: Vec<ManifestFile>,
    /// Run ids committed so far (newest last): re-runs of an append are skipped.
    pub ledger: Vec<String>,
}

/// A live data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the table root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Rows, when known.
    #[serde(default)]
    pub rows: Option<u64>,
}

impl Manifest {
    /// A new manifest following `previous`.
    pub(crate) fn next(
        previous: Option<&Manifest>,
        job_id: &str,
        operation: String,
        files: Vec<ManifestFile>,
        run_id: Option<&str>,
    ) -> Self {
        let mut ledger = previous.map(|m| m.ledger.clone()).unwrap_or_default();
        if let Some(run_id) = run_id {
            ledger.push(run_id.to_string());
            if ledger.len() > LEDGER_LIMIT {
                let excess = ledger.len() - LEDGER_LIMIT;
                ledger.drain(..excess);
            }
        }
        Self {
            format: MANIFEST_FORMAT.to_string(),
            format_version: MANIFEST_FORMAT_VERSION,
            version: previous.map(|m| m.version + 1).unwrap_or(1),
            committed_at: chrono::Utc::now().to_rfc3339(),
            job_id: job_id.to_string(),
            operation,
            files,
            ledger,
        }
    }
}

impl Manifest {
    /// The version after `published` that puts back the table before it:
    /// the `previous` manifest's files (`files`, the directory's files
    /// when there was none) and ledger.
    pub(crate) fn restore(
        published: &Manifest,
        previous: Option<&Manifest>,
        files: Vec<ManifestFile>,
    ) -> Self {
        Self {
            format: MANIFEST_FORMAT.to_string(),
            format_version: MANIFEST_FORMAT_VERSION,
            version: published.version + 1,
            committed_at: chrono::Utc::now().to_rfc3339(),
            job_id: published.job_id.clone(),
            operation: format!("swap back {}", published.operation),
            files,
            ledger: previous.map(|m| m.ledger.clone()).unwrap_or_default(),
        }
    }
}

/// The newest manifest of the table at `loc`, if any.
pub(crate) async fn load_latest(loc: &Location) -> Result<Option<Manifest>> {
    let dir = layout::manifests_dir(&loc.path);
    let metas: Vec<_> = loc
        .store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|e| ConnectorError::store(loc.url_of(&dir), e))?;
    let newest = metas
        .iter()
        .filter_map(|m| {
            let name = m.location.filename()?;
            let v: u64 = name.strip_suffix(".json")?.parse().ok()?;
            Some((v, &m.location))
        })
        .max_by_key(|(v, _)| *v);
    let Some((_, path)) = newest else {
        return Ok(None);
    };
    read_manifest(loc, path).await.map(Some)
}

/// Version `version` of the table's manifest, if it is still there.
pub(crate) async fn load_version(loc: &Location, version: u64) -> Result<Option<Manifest>> {
    match read_manifest(loc, &layout::manifest_path(&loc.path, version)).await {
        Ok(m) => Ok(Some(m)),
        Err(ConnectorError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn read_manifest(loc: &Location, path: &Path) -> Result<Manifest> {
    let bytes = loc
        .store
        .get(path)
        .await
        .map_err(|e| ConnectorError::store(loc.url_of(path), e))?
        .bytes()
        .await
        .map_err(|e| ConnectorError::store(loc.url_of(path), e))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| ConnectorError::Metadata {
            url: loc.url_of(path),
            reason: format!("not a valid manifest: {e}"),
        })?;
    if manifest.format != MANIFEST_FORMAT || manifest.format_version > MANIFEST_FORMAT_VERSION {
        return Err(ConnectorError::Metadata {
            url: loc.url_of(path),
            reason: format!(
                "format {} version {} is newer than this Sluice understands (version {}); \
                 upgrade Sluice",
                manifest.format, manifest.format_version, MANIFEST_FORMAT_VERSION
            ),
        });
    }
    Ok(manifest)
}

/// Creates `manifest` if its version does not exist yet. Returns `false`
/// when another writer committed that version first.
pub(crate) async fn try_create(loc: &Location, manifest: &Manifest) -> Result<bool> {
    let path = layout::manifest_path(&loc.path, manifest.version);
    let body = serde_json::to_vec_pretty(manifest)
        .map_err(|e| ConnectorError::Internal(format!("cannot encode manifest: {e}")))?;
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match loc
        .store
        .put_opts(&path, PutPayload::from(body), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(ConnectorError::store(loc.url_of(&path), e)),
    }
}

/// Data files found by listing the table directory: names starting with `_`
/// or `.` are skipped, and so are files of jobs that have not committed yet.
pub(crate) async fn list_data_files(loc: &Location) -> Result<Vec<ManifestFile>> {
    let in_flight: HashSet<String> = layout::staging_jobs(loc).await?.into_iter().collect();
    let metas: Vec<_> = match loc.store.list(Some(&loc.path)).try_collect().await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => vec![],
        Err(e) => return Err(ConnectorError::store(loc.url.to_string(), e)),
    };
    let mut files: Vec<ManifestFile> = metas
        .into_iter()
        .filter(|m| m.size > 0)
        .filter_map(|m| {
            let rel = layout::relative(&loc.path, &m.location)?;
            if layout::is_hidden(&rel) {
                return None;
            }
            if let Some(job) = layout::job_of_file(&rel)
                && in_flight.contains(job)
            {
                return None;
            }
            Some(ManifestFile {
                path: rel,
                size: m.size,
                rows: None,
            })
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The table's live files: from the newest manifest, or by listing.
pub(crate) async fn live_files(loc: &Location) -> Result<(Option<Manifest>, Vec<ManifestFile>)> {
    match load_latest(loc).await? {
        Some(m) => {
            let files = m.files.clone();
            Ok((Some(m), files))
        }
        None => Ok((None, list_data_files(loc).await?)),
    }
}

/// Deletes manifests older than the newest `keep`.
pub(crate) async fn prune_manifests(store: &Arc<dyn ObjectStore>, root: &Path, keep: usize) {
    let dir = layout::manifests_dir(root);
    let Ok(mut metas) = store.list(Some(&dir)).try_collect::<Vec<_>>().await else {
        return;
    };
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    if metas.len() > keep {
        for m in &metas[..metas.len() - keep] {
            if let Err(e) = store.delete(&m.location).await {
                tracing::debug!(path = %m.location, error = %e, "could not prune old manifest");
            }
        }
    }
}
