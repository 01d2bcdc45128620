//! The file sink: staged files, then a manifest commit.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};

use super::format::FileTableConfig;
use super::layout::{self, Intent};
use super::manifest::{self, Manifest, ManifestFile};
use super::writer::{FileTaskWriter, StagedFiles, WriterShared};
use crate::error::{ConnectorError, Result};
use crate::sink::{
    CommitMessage, CommitOutcome, JobCommit, Revocable, Sink, SinkDescriptor, SinkWriter, WriteMode,
};
use crate::store::Location;

/// How many times a commit is retried when concurrent writers win the race.
const COMMIT_ATTEMPTS: usize = 16;

/// Parallel moves during a commit.
const MOVE_CONCURRENCY: usize = 16;

/// Writes a file table (or a single file) through the two-phase protocol.
#[derive(Debug)]
pub struct FileSink {
    name: String,
    shared: Arc<WriterShared>,
    mode: WriteMode,
    /// Declared location and options, for [`Sink::descriptor`].
    location: String,
    options: crate::options::TableOptions,
    partition_cols: Vec<String>,
}

impl FileSink {
    /// A sink writing rows of `input_schema` (data and partition columns)
    /// into the table at `loc`.
    pub fn try_new(
        name: String,
        loc: Location,
        config: &FileTableConfig,
        input_schema: SchemaRef,
        partition_cols: Vec<String>,
        mode: WriteMode,
    ) -> Result<Self> {
        let mut partition_indices = vec![];
        for p in &partition_cols {
            let idx = input_schema
                .index_of(p)
                .map_err(|_| ConnectorError::SchemaMismatch {
                    target: name.clone(),
                    reason: format!("partition column '{p}' is not among the written columns"),
                })?;
            partition_indices.push(idx);
        }
        let data_indices: Vec<usize> = (0..input_schema.fields().len())
            .filter(|i| !partition_indices.contains(i))
            .collect();
        let file_schema = Arc::new(Schema::new(
            data_indices
                .iter()
                .map(|i| input_schema.field(*i).clone())
                .collect::<Vec<_>>(),
        ));
        let location = loc.original.clone();
        let declared_partitions = partition_cols.clone();
        let single_file = if loc.is_dir {
            None
        } else {
            if mode == WriteMode::Append {
                return Err(ConnectorError::UnsupportedWrite {
                    target: loc.url.to_string(),
                    reason: "the location names a single file, which can only be overwritten; \
                             use a directory location (ending in '/') to append"
                        .to_string(),
                });
            }
            if !partition_cols.is_empty() {
                return Err(ConnectorError::UnsupportedWrite {
                    target: loc.url.to_string(),
                    reason: "a partitioned write needs a directory location (ending in '/')"
                        .to_string(),
                });
            }
            Some(loc.path.filename().unwrap_or("data").to_string())
        };
        let loc = if single_file.is_some() {
            // Stage next to the file: the sink's root is its directory.
            let parent: Vec<_> = loc.path.parts().collect();
            let parent = object_store::path::Path::from_iter(
                parent[..parent.len().saturating_sub(1)].to_vec(),
            );
            Location {
                path: parent,
                ..loc
            }
        } else {
            loc
        };
        let parquet_props = match config.kind {
            super::FileFormatKind::Parquet => Some(super::writer::parquet_properties(
                &config.df_options,
                &file_schema,
            )?),
            _ => None,
        };
        Ok(Self {
            name,
            shared: Arc::new(WriterShared {
                loc,
                kind: config.kind,
                df_options: config.df_options.clone(),
                input_schema,
                file_schema,
                partition_indices,
                data_indices,
                single_file,
                parquet_props,
            }),
            mode,
            location,
            options: config.options.clone(),
            partition_cols: declared_partitions,
        })
    }

    fn loc(&self) -> &Location {
        &self.shared.loc
    }

    /// Moves staged files into place, in parallel. Idempotent: a file already
    /// moved is skipped.
    async fn move_files(&self, moves: &[(String, String)]) -> Result<()> {
        let loc = self.loc().clone();
        let results: Vec<Result<()>> = futures::stream::iter(moves.to_vec())
            .map(|(from, to)| {
                let loc = loc.clone();
                async move {
                    let from = layout::join(&loc.path, &from);
                    let to = layout::join(&loc.path, &to);
                    match loc.store.rename(&from, &to).await {
                        Ok(()) => Ok(()),
                        // Moved by an earlier attempt of this commit.
                        Err(object_store::Error::NotFound { .. }) => {
                            match loc.store.head(&to).await {
                                Ok(_) => Ok(()),
                                Err(e) => Err(ConnectorError::store(loc.url_of(&from), e)),
                            }
                        }
                        Err(e) => Err(ConnectorError::store(loc.url_of(&to), e)),
                    }
                }
            })
            .buffer_unordered(MOVE_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn commit_single_file(
        &self,
        staged: Vec<super::writer::StagedFile>,
    ) -> Result<CommitOutcome> {
        let (rows, bytes) = staged
            .iter()
            .fold((0, 0), |(r, b), f| (r + f.rows, b + f.size));
        let moves: Vec<(String, String)> =
            staged.into_iter().map(|f| (f.staged, f.target)).collect();
        if moves.len() > 1 {
            return Err(ConnectorError::Internal(
                "a single-file sink received several files".to_string(),
            ));
        }
        self.move_files(&moves).await?;
        Ok(CommitOutcome {
            rows,
            bytes,
            files: moves.len() as u64,
            skipped: None,
        })
    }

    fn replaced(&self, file: &ManifestFile, written_partitions: &HashSet<String>) -> bool {
        match &self.mode {
            WriteMode::Append => false,
            WriteMode::Overwrite => true,
            WriteMode::OverwriteDynamic => {
                let dir = file.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                written_partitions.contains(dir)
            }
            WriteMode::OverwriteStatic(spec) => {
                let prefix: Vec<String> = spec
                    .iter()
                    .map(|(k, v)| layout::partition_segment(k, v))
                    .collect();
                let segments: Vec<&str> = file.path.split('/').collect();
                segments.len() > prefix.len() && prefix.iter().zip(&segments).all(|(p, s)| p == s)
            }
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    fn target(&self) -> String {
        format!("{} ({})", self.name, self.loc().url)
    }

    fn descriptor(&self) -> Result<SinkDescriptor> {
        Ok(SinkDescriptor {
            connector: "filesystem".to_string(),
            name: self.name.clone(),
            location: self.location.clone(),
            format: self.shared.kind.name().to_string(),
            options: self.options.clone(),
            partition_cols: self.partition_cols.clone(),
            primary_key: vec![],
            mode: self.mode.clone(),
        })
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.shared.input_schema)
    }

    fn mode(&self) -> &WriteMode {
        &self.mode
    }

    fn max_writers(&self) -> Option<usize> {
        self.shared.single_file.as_ref().map(|_| 1)
    }

    async fn begin(&self, job_id: &str) -> Result<()> {
        let report = layout::sweep_staging(self.loc(), Some(job_id)).await?;
        if report.jobs_removed > 0 {
            tracing::info!(
                target_table = %self.name,
                jobs = report.jobs_removed,
                bytes = report.bytes_removed,
                "cleaned up staging data of dead jobs"
            );
        }
        layout::write_lease(self.loc(), job_id).await
    }

    async fn heartbeat(&self, job_id: &str) -> Result<()> {
        layout::renew_lease(self.loc(), job_id).await
    }

    async fn open_writer(
        &self,
        job_id: &str,
        task: u64,
        attempt: u32,
    ) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(FileTaskWriter::new(
            Arc::clone(&self.shared),
            job_id,
            task,
            attempt,
        )))
    }

    async fn commit(&self, commit: JobCommit) -> Result<CommitOutcome> {
        crate::sink::finish_now(self.commit_revocable(commit).await?).await
    }

    async fn commit_revocable(
        &self,
        commit: JobCommit,
    ) -> Result<(CommitOutcome, Option<Box<dyn Revocable>>)> {
        // One winning message per task, whatever the caller sent.
        let mut winners: BTreeMap<u64, CommitMessage> = BTreeMap::new();
        for m in commit.messages {
            winners.entry(m.task).or_insert(m);
        }
        let mut staged = vec![];
        for m in winners.into_values() {
            let files: StagedFiles = serde_json::from_value(m.payload).map_err(|e| {
                ConnectorError::Internal(format!("bad file sink commit payload: {e}"))
            })?;
            staged.extend(files.files);
        }
        let loc = self.loc().clone();
        if self.shared.single_file.is_some() {
            let out = self.commit_single_file(staged).await?;
            layout::delete_prefix(&loc, &layout::staging_dir(&loc.path, &commit.job_id)).await?;
            layout::remove_empty_meta_dirs(&loc);
            return Ok((out, None));
        }

        let written_partitions: HashSet<String> =
            staged.iter().map(|f| f.partition.clone()).collect();
        let new_files: Vec<ManifestFile> = staged
            .iter()
            .map(|f| ManifestFile {
                path: f.target.clone(),
                size: f.size,
                rows: Some(f.rows),
            })
            .collect();
        let rows: u64 = staged.iter().map(|f| f.rows).sum();
        let bytes: u64 = staged.iter().map(|f| f.size).sum();
        let moves: Vec<(String, String)> = staged
            .iter()
            .map(|f| (f.staged.clone(), f.target.clone()))
            .collect();

        // Adopt a directory written by other tools before moving our files
        // into it, so its listing never shows our uncommitted files.
        let (mut current, mut base) = manifest::live_files(&loc).await?;
        if let Some(run_id) = &commit.run_id
            && !commit.force
            && self.mode == WriteMode::Append
            && current.as_ref().is_some_and(|m| m.ledger.contains(run_id))
        {
            self.abort(&commit.job_id).await?;
            let outcome = CommitOutcome {
                skipped: Some(format!(
                    "run id {run_id} was already committed to {}; not appended again \
                     (use --force-rerun to append anyway)",
                    self.name
                )),
                ..Default::default()
            };
            return Ok((outcome, None));
        }

        layout::write_intent(
            &loc,
            &Intent {
                format_version: manifest::MANIFEST_FORMAT_VERSION,
                job_id: commit.job_id.clone(),
                moves: moves.clone(),
            },
        )
        .await?;
        self.move_files(&moves).await?;

        let operation = self.mode.to_string();
        let mut committed: Option<Manifest> = None;
        let mut replaced_files: Vec<ManifestFile> = vec![];
        let mut previous: (Option<Manifest>, Vec<ManifestFile>) = (None, vec![]);
        for attempt in 0..COMMIT_ATTEMPTS {
            if attempt > 0 {
                let (c, b) = manifest::live_files(&loc).await?;
                current = c;
                base = b;
            }
            let ours: HashSet<&str> = new_files.iter().map(|f| f.path.as_str()).collect();
            let (replaced, kept): (Vec<ManifestFile>, Vec<ManifestFile>) = base
                .iter()
                .filter(|f| !ours.contains(f.path.as_str()))
                .cloned()
                .partition(|f| self.replaced(f, &written_partitions));
            let mut files = kept;
            files.extend(new_files.iter().cloned());
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let next = Manifest::next(
                current.as_ref(),
                &commit.job_id,
                operation.clone(),
                files,
                commit.run_id.as_deref(),
            );
            if manifest::try_create(&loc, &next).await? {
                committed = Some(next);
                replaced_files = replaced;
                previous = (current.take(), std::mem::take(&mut base));
                break;
            }
            tracing::debug!(target_table = %self.name, attempt, "manifest race lost, retrying");
        }
        let Some(manifest) = committed else {
            return Err(ConnectorError::CommitConflict {
                target: self.name.clone(),
                attempts: COMMIT_ATTEMPTS,
            });
        };

        // Past the commit point: clean up; failures here only leave garbage
        // that `sluice gc` removes. The replaced files stay until the
        // publish is final (`finish`), so that it can be swapped back.
        if let Err(e) = loc
            .store
            .put(
                &layout::success_path(&loc.path),
                PutPayload::from_static(b""),
            )
            .await
        {
            tracing::warn!(error = %e, "could not write _SUCCESS marker");
        }
        manifest::prune_manifests(&loc.store, &loc.path, 20).await;
        tracing::debug!(target_table = %self.name, version = manifest.version, "committed");
        let outcome = CommitOutcome {
            rows,
            bytes,
            files: new_files.len() as u64,
            skipped: None,
        };
        // The staging area (with the job's lease) stays until `finish`, so
        // that `sluice gc` keeps the replaced files meanwhile.
        let undo = FilePublish {
            job_id: commit.job_id.clone(),
            name: self.name.clone(),
            loc,
            published: manifest,
            previous: previous.0,
            previous_files: previous.1,
            replaced: replaced_files,
            written: new_files,
        };
        Ok((outcome, Some(Box::new(undo))))
    }

    async fn abort(&self, job_id: &str) -> Result<()> {
        let loc = self.loc();
        layout::delete_prefix(loc, &layout::staging_dir(&loc.path, job_id)).await?;
        Ok(())
    }
}

/// A manifest commit that can still be swapped back: the files it
/// replaced are deleted only by [`Revocable::finish`].
struct FilePublish {
    job_id: String,
    name: String,
    loc: Location,
    /// The manifest the commit created.
    published: Manifest,
    /// The manifest before it (none for a table without one).
    previous: Option<Manifest>,
    /// The live files before it.
    previous_files: Vec<ManifestFile>,
    /// Files the commit replaced.
    replaced: Vec<ManifestFile>,
    /// Files the commit added.
    written: Vec<ManifestFile>,
}

impl FilePublish {
    async fn remove_staging(&self) {
        let dir = layout::staging_dir(&self.loc.path, &self.job_id);
        if let Err(e) = layout::delete_prefix(&self.loc, &dir).await {
            tracing::warn!(error = %e, "could not remove the staging area after commit");
        }
    }

    async fn delete(&self, files: &[ManifestFile], what: &str) {
        for f in files {
            let path = layout::join(&self.loc.path, &f.path);
            if let Err(e) = self.loc.store.delete(&path).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(path = %path, error = %e, "could not delete {what}");
            }
        }
    }
}

#[async_trait]
impl Revocable for FilePublish {
    async fn swap_back(self: Box<Self>) -> Result<()> {
        // Only while our version is the newest: a later commit of another
        // job built on our files, and restoring would drop its work.
        let latest = manifest::load_latest(&self.loc).await?;
        let newest = latest.as_ref().map(|m| m.version);
        let refuse = |reason: String| ConnectorError::SwapBack {
            target: self.name.clone(),
            reason,
        };
        if newest != Some(self.published.version) {
            return Err(refuse(format!(
                "another job committed version {} after version {} of this set",
                newest.unwrap_or_default(),
                self.published.version
            )));
        }
        let restored = Manifest::restore(
            &self.published,
            self.previous.as_ref(),
            self.previous_files.clone(),
        );
        if !manifest::try_create(&self.loc, &restored).await? {
            return Err(refuse(format!(
                "another job committed version {} while it was being swapped back",
                restored.version
            )));
        }
        self.delete(&self.written, "a swapped-back file").await;
        self.remove_staging().await;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        self.delete(&self.replaced, "a replaced file").await;
        self.remove_staging().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink_with_mode(mode: WriteMode) -> FileSink {
        let reg = crate::StoreRegistry::new(
            Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default()),
            Default::default(),
        );
        let loc = reg.resolve("memory://t/x/", &Default::default()).unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let cfg = FileTableConfig::new(
            super::super::FileFormatKind::Csv,
            &Default::default(),
            &ctx.state(),
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("dt", arrow::datatypes::DataType::Utf8, true),
        ]));
        FileSink::try_new("t".into(), loc, &cfg, schema, vec!["dt".into()], mode).unwrap()
    }

    fn file(path: &str) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            size: 1,
            rows: None,
        }
    }

    #[test]
    fn overwrite_modes_replace_the_right_files() {
        let written: HashSet<String> = ["dt=2".to_string()].into();
        let s = sink_with_mode(WriteMode::OverwriteDynamic);
        assert!(s.replaced(&file("dt=2/a.csv"), &written));
        assert!(!s.replaced(&file("dt=1/a.csv"), &written));
        let s = sink_with_mode(WriteMode::OverwriteStatic(vec![("dt".into(), "1".into())]));
        assert!(s.replaced(&file("dt=1/a.csv"), &written));
        assert!(!s.replaced(&file("dt=10/a.csv"), &written));
        let s = sink_with_mode(WriteMode::Append);
        assert!(!s.replaced(&file("dt=2/a.csv"), &written));
    }
}
