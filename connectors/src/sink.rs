//! The two-phase sink protocol shared by every sink.
//!
//! 1. [`Sink::begin`] records the job as the owner of its staging area (and
//!    sweeps what dead jobs left behind).
//! 2. Each task attempt opens a [`SinkWriter`], stages its rows and returns a
//!    [`CommitMessage`] tagged with its task and attempt.
//! 3. The coordinator keeps exactly one winning message per task and calls
//!    [`Sink::commit`] once when the statement succeeds, or [`Sink::abort`]
//!    when it fails. `commit` is idempotent and keyed by the job's run id, so
//!    a re-run never duplicates rows.
//!
//! [`SinkExec`] is the physical operator at the root of a writing stage: it
//! runs one writer per input partition, in parallel, and emits the commit
//! messages as rows.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{ConnectorError, Result};

/// How a write treats the data already in the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteMode {
    /// Add rows; re-runs with the same run id are not appended twice.
    Append,
    /// Replace the whole table.
    Overwrite,
    /// Replace exactly the partitions matching these `(column, value)` pairs
    /// (`INSERT OVERWRITE t PARTITION (dt = '...')`), even if no row is written.
    OverwriteStatic(Vec<(String, String)>),
    /// Replace only the partitions that the statement writes.
    OverwriteDynamic,
}

impl fmt::Display for WriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Append => write!(f, "append"),
            Self::Overwrite => write!(f, "overwrite"),
            Self::OverwriteStatic(p) => {
                let parts: Vec<String> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "overwrite partition ({})", parts.join(", "))
            }
            Self::OverwriteDynamic => write!(f, "overwrite written partitions"),
        }
    }
}

/// What one task attempt staged, sent to the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitMessage {
    /// Task index (the input partition).
    pub task: u64,
    /// Attempt number of the task.
    pub attempt: u32,
    /// Rows staged.
    pub rows: u64,
    /// Bytes staged.
    pub bytes: u64,
    /// Sink-specific description of the staged data.
    pub payload: serde_json::Value,
}

/// The coordinator's single commit request for a job.
#[derive(Debug, Clone)]
pub struct JobCommit {
    /// The job (statement execution) being committed.
    pub job_id: String,
    /// Stable id of this statement across re-runs of the same job with the
    /// same variables; a sink that already committed it skips an append.
    pub run_id: Option<String>,
    /// Commit even if `run_id` was committed before.
    pub force: bool,
    /// One winning message per task.
    pub messages: Vec<CommitMessage>,
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitOutcome {
    /// Rows made visible.
    pub rows: u64,
    /// Bytes made visible.
    pub bytes: u64,
    /// Files (or equivalent units) made visible.
    pub files: u64,
    /// Set when the commit was skipped, with the reason (e.g. run id already committed).
    pub skipped: Option<String>,
}

/// What another process needs to open the same sink: the declaration as
/// written (secrets as `secret('NAME')`, resolved by whoever connects) and
/// the write mode. The written schema travels beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkDescriptor {
    /// Connector name (`filesystem`, ...).
    pub connector: String,
    /// Target table name.
    pub name: String,
    /// Location as declared.
    pub location: String,
    /// Format name, for file sinks.
    pub format: String,
    /// Declared options.
    pub options: crate::options::TableOptions,
    /// Hive partition columns, in directory order.
    pub partition_cols: Vec<String>,
    /// Declared primary key (database sinks upsert on it).
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// The write mode.
    pub mode: WriteMode,
}

/// A write target that many parallel task attempts can stage into.
#[async_trait]
pub trait Sink: fmt::Debug + Send + Sync {
    /// Human-readable target (table name and location).
    fn target(&self) -> String;

    /// The declaration another process opens this sink from, for stage
    /// plans sent to executors.
    fn descriptor(&self) -> Result<SinkDescriptor> {
        Err(ConnectorError::UnsupportedWrite {
            target: self.target(),
            reason: "this sink cannot be sent to another process".to_string(),
        })
    }

    /// The schema writers expect.
    fn schema(&self) -> SchemaRef;

    /// The write mode.
    fn mode(&self) -> &WriteMode;

    /// Maximum number of parallel writers, if limited (a single-file target).
    fn max_writers(&self) -> Option<usize> {
        None
    }

    /// Records `job_id` as the owner of its staging area before any write,
    /// and removes what expired jobs left behind.
    async fn begin(&self, job_id: &str) -> Result<()>;

    /// Renews the job's ownership lease; called periodically while it runs.
    async fn heartbeat(&self, _job_id: &str) -> Result<()> {
        Ok(())
    }

    /// Opens the writer of one task attempt.
    async fn open_writer(
        &self,
        job_id: &str,
        task: u64,
        attempt: u32,
    ) -> Result<Box<dyn SinkWriter>>;

    /// Publishes the winning attempts' staged data, once, atomically.
    async fn commit(&self, commit: JobCommit) -> Result<CommitOutcome>;

    /// Publishes like [`Sink::commit`], but keeps what the target held
    /// before, so that a statement set whose later target fails can swap it
    /// back. The handle is `None` when the publish cannot be undone; the
    /// caller then reports the target as published.
    ///
    /// [`Revocable::finish`] (or [`Revocable::swap_back`]) must follow; what
    /// neither reaches (a crash) is removed with the job's staged data when
    /// its lease expires. The default commits and keeps nothing.
    async fn commit_revocable(
        &self,
        commit: JobCommit,
    ) -> Result<(CommitOutcome, Option<Box<dyn Revocable>>)> {
        Ok((self.commit(commit).await?, None))
    }

    /// The first half of a publish that must wait for other sinks (a
    /// statement set): does everything [`Sink::commit`] does that can fail,
    /// and leaves only the final, all-or-nothing step to
    /// [`PreparedCommit::commit`]; [`PreparedCommit::rollback`] undoes it.
    ///
    /// The default prepares nothing: the whole publish happens in
    /// [`PreparedCommit::commit`] ([`PreparedCommit::is_deferred`] says so).
    async fn prepare_commit(&self, commit: JobCommit) -> Result<Box<dyn PreparedCommit + '_>> {
        Ok(Box::new(DeferredCommit { sink: self, commit }))
    }

    /// Removes everything the job staged. Safe to call more than once.
    async fn abort(&self, job_id: &str) -> Result<()>;
}

/// A publish made ready by [`Sink::prepare_commit`], waiting for the word.
#[async_trait]
pub trait PreparedCommit: Send {
    /// True when nothing was prepared and [`Self::commit`] does the whole
    /// publish, so it may still fail for any reason a commit can.
    fn is_deferred(&self) -> bool {
        false
    }

    /// Makes the prepared publish visible.
    async fn commit(self: Box<Self>) -> Result<CommitOutcome>;

    /// Like [`Self::commit`], through [`Sink::commit_revocable`] when nothing
    /// was prepared. A prepared publish ends in a plain `COMMIT`, which
    /// cannot be undone, so the default keeps no handle.
    async fn commit_revocable(
        self: Box<Self>,
    ) -> Result<(CommitOutcome, Option<Box<dyn Revocable>>)> {
        Ok((self.commit().await?, None))
    }

    /// Undoes the prepared publish; the staged data stays until
    /// [`Sink::abort`].
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// A publish that can still be undone: the target's previous contents are
/// kept aside until [`Revocable::finish`].
#[async_trait]
pub trait Revocable: Send {
    /// Puts the previous contents back in place of the published ones.
    async fn swap_back(self: Box<Self>) -> Result<()>;

    /// Makes the publish final: removes the previous contents.
    async fn finish(self: Box<Self>) -> Result<()>;
}

/// Makes a revocable publish final at once: the [`Sink::commit`] of sinks
/// that implement [`Sink::commit_revocable`].
pub(crate) async fn finish_now(
    published: (CommitOutcome, Option<Box<dyn Revocable>>),
) -> Result<CommitOutcome> {
    let (outcome, undo) = published;
    if let Some(undo) = undo {
        undo.finish().await?;
    }
    Ok(outcome)
}

/// [`Sink::prepare_commit`] of a sink that cannot prepare: commit later.
pub(crate) struct DeferredCommit<'a, S: ?Sized> {
    pub(crate) sink: &'a S,
    pub(crate) commit: JobCommit,
}

#[async_trait]
impl<S: Sink + ?Sized> PreparedCommit for DeferredCommit<'_, S> {
    fn is_deferred(&self) -> bool {
        true
    }

    async fn commit(self: Box<Self>) -> Result<CommitOutcome> {
        self.sink.commit(self.commit).await
    }

    async fn commit_revocable(
        self: Box<Self>,
    ) -> Result<(CommitOutcome, Option<Box<dyn Revocable>>)> {
        self.sink.commit_revocable(self.commit).await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The writer of one task attempt.
#[async_trait]
pub trait SinkWriter: Send {
    /// Stages one batch.
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;

    /// Finishes staging and describes what was staged.
    async fn finish(self: Box<Self>) -> Result<CommitMessage>;

    /// Removes what this attempt staged.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Live counters of a write, for progress reporting.
#[derive(Debug, Default)]
pub struct WriteProgress {
    /// Rows staged so far.
    pub rows: AtomicU64,
    /// Batches staged so far.
    pub batches: AtomicU64,
    /// Arrow bytes of the rows staged so far (the rows' own slices of
    /// their buffers, before the sink encodes them).
    pub bytes: AtomicU64,
}

/// The Arrow bytes a batch's rows occupy: the slices of the buffers they
/// use, not the whole buffers a slice may point into.
fn data_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum()
}

/// Schema of the rows [`SinkExec`] emits: one per task.
pub fn commit_message_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("task", DataType::UInt64, false),
        Field::new("attempt", DataType::UInt32, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("payload", DataType::Utf8, false),
    ]))
}

/// Decodes the rows emitted by [`SinkExec`].
pub fn decode_commit_messages(batch: &RecordBatch) -> Result<Vec<CommitMessage>> {
    let internal = || ConnectorError::Internal("malformed commit message batch".to_string());
    let col = |i: usize| batch.column(i);
    let task = col(0)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(internal)?;
    let attempt = col(1)
        .as_any()
        .downcast_ref::<UInt32Array>()
        .ok_or_else(internal)?;
    let rows = col(2)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(internal)?;
    let bytes = col(3)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(internal)?;
    let payload = col(4)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(internal)?;
    (0..batch.num_rows())
        .map(|i| {
            Ok(CommitMessage {
                task: task.value(i),
                attempt: attempt.value(i),
                rows: rows.value(i),
                bytes: bytes.value(i),
                payload: serde_json::from_str(payload.value(i))
                    .map_err(|e| ConnectorError::Internal(format!("bad commit payload: {e}")))?,
            })
        })
        .collect()
}

fn encode_commit_message(m: &CommitMessage) -> Result<RecordBatch, DataFusionError> {
    let payload = serde_json::to_string(&m.payload)
        .map_err(|e| DataFusionError::Internal(format!("cannot encode commit payload: {e}")))?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![m.task])),
        Arc::new(UInt32Array::from(vec![m.attempt])),
        Arc::new(UInt64Array::from(vec![m.rows])),
        Arc::new(UInt64Array::from(vec![m.bytes])),
        Arc::new(StringArray::from(vec![payload])),
    ];
    Ok(RecordBatch::try_new(commit_message_schema(), columns)?)
}

/// Root operator of a writing stage: one [`SinkWriter`] per input partition.
#[derive(Debug)]
pub struct SinkExec {
    input: Arc<dyn ExecutionPlan>,
    sink: Arc<dyn Sink>,
    job_id: String,
    attempt: u32,
    /// Added to the partition index to name the writer's task, so the
    /// instances of several tasks never share a task number.
    task_base: u64,
    progress: Arc<WriteProgress>,
    properties: Arc<PlanProperties>,
}

impl SinkExec {
    /// Writes `input` into `sink` as part of job `job_id`.
    pub fn new(input: Arc<dyn ExecutionPlan>, sink: Arc<dyn Sink>, job_id: String) -> Self {
        let partitions = input.output_partitioning().partition_count();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(commit_message_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            sink,
            job_id,
            attempt: 0,
            task_base: 0,
            progress: Arc::new(WriteProgress::default()),
            properties,
        }
    }

    /// A staged task's instance over `input`: its writers are tasks
    /// `task_base + partition`, running attempt `attempt`, and they report to
    /// this plan's progress counters.
    pub fn instance(&self, input: Arc<dyn ExecutionPlan>, task_base: u64, attempt: u32) -> Self {
        let mut exec = Self::new(input, Arc::clone(&self.sink), self.job_id.clone());
        exec.attempt = attempt;
        exec.task_base = task_base;
        exec.progress = Arc::clone(&self.progress);
        exec
    }

    /// Sets the attempt number of the tasks this plan instance runs.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the first task number of this plan instance's writers.
    pub fn with_task_base(mut self, task_base: u64) -> Self {
        self.task_base = task_base;
        self
    }

    /// The attempt number of the tasks this plan instance runs.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The task number of this plan instance's first writer.
    pub fn task_base(&self) -> u64 {
        self.task_base
    }

    /// The input plan.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The sink.
    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    /// Live write counters.
    pub fn progress(&self) -> &Arc<WriteProgress> {
        &self.progress
    }

    /// The job this plan writes for.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }
}

impl DisplayAs for SinkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SinkExec: target={}, mode={}",
            self.sink.target(),
            self.sink.mode()
        )
    }
}

impl ExecutionPlan for SinkExec {
    fn name(&self) -> &str {
        "SinkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        match self.sink.max_writers() {
            Some(1) => vec![Distribution::SinglePartition],
            _ => vec![Distribution::UnspecifiedDistribution],
        }
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let input = children.swap_remove(0);
        Ok(Arc::new(self.instance(input, self.task_base, self.attempt)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        let mut input = self.input.execute(partition, context)?;
        let sink = Arc::clone(&self.sink);
        let job_id = self.job_id.clone();
        let attempt = self.attempt;
        let task = self.task_base + partition as u64;
        let progress = Arc::clone(&self.progress);
        let fut = async move {
            let mut writer = sink.open_writer(&job_id, task, attempt).await?;
            let mut failure: Option<DataFusionError> = None;
            while let Some(batch) = input.next().await {
                let result = match batch {
                    Ok(batch) => {
                        let n = batch.num_rows() as u64;
                        let bytes = data_bytes(&batch);
                        let r = writer.write(batch).await.map_err(DataFusionError::from);
                        progress.rows.fetch_add(n, Ordering::Relaxed);
                        progress.bytes.fetch_add(bytes, Ordering::Relaxed);
                        progress.batches.fetch_add(1, Ordering::Relaxed);
                        r
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    failure = Some(e);
                    break;
                }
            }
            if let Some(e) = failure {
                if let Err(abort_err) = writer.abort().await {
                    tracing::warn!(%abort_err, "could not remove staged output of a failed task");
                }
                return Err(e);
            }
            let message = writer.finish().await?;
            encode_commit_message(&message)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            commit_message_schema(),
            futures::stream::once(fut),
        )))
    }
}
