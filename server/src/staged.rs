//! Staged batch execution in one process: an in-process coordinator runs a
//! job's stage graph through the shuffle store with N task slots.
//!
//! - A stage runs as soon as all its input stages have committed.
//! - With `sluice.serialize_stage_plans`, every task's plan is encoded with
//!   the executor wire format and decoded in a fresh executor context before
//!   it runs, exactly as a cluster executor receives it.
//! - Every task attempt writes under its own keys; the first attempt to
//!   create the task's winner record is the task's output, and readers read
//!   only winners. A failed attempt is deleted and retried, reading the same
//!   committed inputs, up to `sluice.task_max_attempts`.
//! - The job's shuffle data is deleted when the job ends, on success and on
//!   failure; a job lease lets a later start-up sweep what a crash left.
//! - Uncorrelated scalar subqueries run first, as jobs of their own; their
//!   value is stored where the main plan's expressions read it, and the
//!   `ScalarSubqueryExec` node is removed, so stages never split it.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::scalar_subquery::ScalarSubqueryExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, collect_partitioned, displayable,
    execute_stream,
};
use futures::{Stream, StreamExt};
use sluice_connectors::sink::decode_commit_messages;
use sluice_connectors::{
    CommitMessage, ConnectorError, ConnectorFactory, ErrorClass, StoreRegistry,
};
use sluice_planner::SluiceOptions;
use sluice_planner::codec::{
    ExecutorRegistries, decode_stage_plan, encode_stage_plan, executor_task_context,
};
use sluice_planner::stages::{
    ExchangeMode, Stage, StageGraph, StageOptions, StageOutput, TaskSpec, task_instance,
};
use sluice_shuffle::{
    AttemptId, AttemptIndex, Commit, JobRecord, LeaseHolder, ShuffleCompression, ShuffleReaderExec,
    ShuffleStore, StageRecord, WriterOptions,
};
use tokio::sync::Semaphore;

use crate::cluster::ClusterScheduler;
use crate::cluster::protocol::{Outcome, OutputKind, TaskAssignment, b64, unb64};

/// How long a job's lease lasts without renewal, unless configured; a
/// running job renews it every fifth of that.
const LEASE: Duration = Duration::from_secs(300);

/// Environment variable of the test-only fault hook:
/// `stage=S,task=T,attempt=A,after=N,action=fail|pause|delay[,delay_ms=D]`
/// makes that task attempt fail, stall, or wait D ms (default 10) before
/// each batch, after N input batches. Absent fields match all.
pub const FAULT_ENV: &str = "SLUICE_TEST_FAULT";

/// The shuffle store, slots and retry policy of staged runs.
#[derive(Debug, Clone)]
pub struct StagedRuntime {
    store: ShuffleStore,
    slots: usize,
    max_attempts: u32,
    writer: WriterOptions,
    counters: &'static StagedCounters,
    /// When set, every task's plan is encoded and decoded in a fresh
    /// executor context against these registries before it runs.
    wire: Option<Arc<ExecutorRegistries>>,
    /// When set, tasks run on the cluster's executors.
    cluster: Option<Arc<ClusterScheduler>>,
    /// The planning session's object stores, declared to executors.
    stores: Option<Arc<StoreRegistry>>,
    /// How long a job's shuffle lease lasts unrenewed.
    lease: Duration,
    /// The node named in job leases (see [`LeaseHolder::node`]).
    node: Option<String>,
}

/// Counters of staged execution in this process, for `/metrics`.
#[derive(Debug)]
pub struct StagedCounters {
    /// Jobs run.
    pub jobs: AtomicU64,
    /// Stages run.
    pub stages: AtomicU64,
    /// Task attempts started.
    pub attempts: AtomicU64,
    /// Task attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Shuffle bytes written by winning attempts.
    pub shuffle_bytes: AtomicU64,
    /// Tasks currently running.
    pub running: AtomicU64,
}

static COUNTERS: StagedCounters = StagedCounters {
    jobs: AtomicU64::new(0),
    stages: AtomicU64::new(0),
    attempts: AtomicU64::new(0),
    retries: AtomicU64::new(0),
    shuffle_bytes: AtomicU64::new(0),
    running: AtomicU64::new(0),
};

impl StagedCounters {
    /// The process's counters.
    pub fn global() -> &'static StagedCounters {
        &COUNTERS
    }

    /// Appends staged execution and shuffle metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 6] = [
            (
                "sluice_staged_jobs_total",
                "Staged jobs run.",
                "counter",
                &self.jobs,
            ),
            (
                "sluice_staged_stages_total",
                "Stages completed.",
                "counter",
                &self.stages,
            ),
            (
                "sluice_staged_task_attempts_total",
                "Task attempts started.",
                "counter",
                &self.attempts,
            ),
            (
                "sluice_staged_task_retries_total",
                "Task attempts that failed and were retried.",
                "counter",
                &self.retries,
            ),
            (
                "sluice_staged_shuffle_bytes_total",
                "Shuffle bytes of winning task attempts.",
                "counter",
                &self.shuffle_bytes,
            ),
            (
                "sluice_staged_tasks_running",
                "Tasks running now.",
                "gauge",
                &self.running,
            ),
        ];
        for (name, help, kind, v) in rows {
            crate::http::write_metric(out, name, help, kind, v.load(Ordering::Relaxed));
        }
        sluice_shuffle::shuffle_metrics().render(out);
    }
}

impl StagedRuntime {
    /// The runtime the session's settings describe: a local shuffle
    /// directory that honours put-if-absent, swept of expired jobs.
    pub async fn from_options(options: &SluiceOptions) -> Result<Self> {
        let dir = if options.shuffle_dir.is_empty() {
            std::env::temp_dir().join("sluice-shuffle")
        } else {
            std::path::PathBuf::from(&options.shuffle_dir)
        };
        let store = ShuffleStore::local(dir)?;
        store.probe_conditional_put().await?;
        match store.sweep_expired(chrono::Utc::now()).await {
            Ok(swept) if !swept.is_empty() => {
                tracing::info!(jobs = swept.len(), "removed shuffle data of expired jobs")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not sweep expired shuffle data"),
        }
        let slots = options.slots();
        let compression: ShuffleCompression = options.shuffle_compression.parse()?;
        Ok(Self {
            store,
            slots,
            max_attempts: options.task_max_attempts.max(1),
            writer: WriterOptions {
                compression,
                ..WriterOptions::default()
            },
            counters: StagedCounters::global(),
            wire: None,
            cluster: None,
            stores: None,
            lease: LEASE,
            node: None,
        })
    }

    /// The runtime of a coordinator: tasks run on `cluster`'s executors,
    /// through its shuffle store; stages are cut for the slots the live
    /// executors offer now.
    pub fn for_cluster(
        options: &SluiceOptions,
        cluster: Arc<ClusterScheduler>,
        stores: Arc<StoreRegistry>,
    ) -> Result<Self> {
        let compression: ShuffleCompression = options.shuffle_compression.parse()?;
        Ok(Self {
            store: cluster.store().clone(),
            slots: cluster.total_slots().max(1),
            max_attempts: options.task_max_attempts.max(1),
            writer: WriterOptions {
                compression,
                ..WriterOptions::default()
            },
            counters: StagedCounters::global(),
            wire: None,
            lease: cluster.job_lease(),
            node: Some(cluster.node().to_string()),
            cluster: Some(cluster),
            stores: Some(stores),
        })
    }

    /// Whether task results carry their own scan metrics (decoded plan
    /// instances), rather than sharing the template's file sources.
    fn tasks_report_rows(&self) -> bool {
        self.wire.is_some() || self.cluster.is_some()
    }

    /// Sends every task's plan through the executor wire format (see
    /// [`sluice_planner::codec`]): encoded by the coordinator, decoded in a
    /// fresh context holding only the executor's registries, then run.
    pub fn with_serialized_plans(mut self, connectors: Arc<ConnectorFactory>) -> Self {
        self.wire = Some(Arc::new(ExecutorRegistries {
            shuffle: self.store.clone(),
            connectors,
            live: sluice_shuffle::LiveRegistry::new(),
        }));
        self
    }

    /// The plan a task runs, and the context it runs in: as given, or
    /// after a round trip through the executor wire format.
    fn ship(
        &self,
        instance: Arc<dyn ExecutionPlan>,
        ctx: &Arc<TaskContext>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)> {
        match &self.wire {
            None => Ok((instance, Arc::clone(ctx))),
            Some(registries) => {
                let bytes = encode_stage_plan(&instance)?;
                let exec_ctx = executor_task_context(ctx);
                let decoded = decode_stage_plan(&bytes, &exec_ctx, registries)?;
                Ok((decoded, exec_ctx))
            }
        }
    }

    /// The counters.
    pub fn counters(&self) -> &'static StagedCounters {
        self.counters
    }

    /// Cuts `plan` into stages, as [`Self::run_query`] and [`Self::run_write`] would.
    pub fn stage_graph(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        result_as_one_task: bool,
    ) -> Result<StageGraph> {
        StageGraph::cut(
            plan,
            &StageOptions {
                max_tasks: self.slots,
                store: self.store.clone(),
                writer: self.writer,
                single_result_task: result_as_one_task,
                mode: ExchangeMode::Staged,
            },
        )
    }

    /// Runs a query: every stage but the result stage through the shuffle
    /// store; the result stage streams to the caller. The job's data is
    /// deleted when the stream ends or is dropped.
    pub async fn run_query(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let plan = self
            .resolve_scalar_subqueries(plan, Arc::clone(&ctx))
            .await?;
        let graph = self.stage_graph(plan, true)?;
        let job = Job::start(self, &graph).await?;
        let inputs = match job.run_stages(&graph, &ctx, false).await {
            Ok(inputs) => inputs,
            Err(e) => {
                job.finish().await;
                return Err(e);
            }
        };
        let stage = graph.result_stage();
        let spec = TaskSpec {
            stage: stage.id,
            task: 0,
            tasks: 1,
            attempt: job.attempt(stage.id, 0, 0),
            inputs: inputs.outputs,
        };
        let shipped = task_instance(&stage.plan, &spec).and_then(|i| self.ship(i, &ctx));
        let (instance, ctx) = match shipped {
            Ok(i) => i,
            Err(e) => {
                job.finish().await;
                return Err(e);
            }
        };
        let stream = execute_stream(instance, ctx)?;
        Ok(Box::pin(JobStream {
            schema: stream.schema(),
            inner: stream,
            job: Some(job),
            finishing: None,
        }))
    }

    /// Runs a write job's stages, its sink stage included, and returns one
    /// commit message per sink task, plus the rows its sources read.
    pub async fn run_write(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
    ) -> Result<(Vec<CommitMessage>, u64)> {
        let plan = self
            .resolve_scalar_subqueries(plan, Arc::clone(&ctx))
            .await?;
        let graph = self.stage_graph(plan, false)?;
        let job = Job::start(self, &graph).await?;
        let result = job.run_stages(&graph, &ctx, true).await;
        job.finish().await;
        let outcome = result?;
        Ok((outcome.messages, outcome.rows_read))
    }

    fn resolve_scalar_subqueries(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
    ) -> futures::future::BoxFuture<'_, Result<Arc<dyn ExecutionPlan>>> {
        Box::pin(async move {
            resolve_scalar_subqueries(plan, ctx, &|p, c| Box::pin(self.run_query(p, c))).await
        })
    }
}

/// Runs a query plan to a stream of rows: how a mode runs a subquery.
pub(crate) type QueryRunner<'a> = dyn Fn(
        Arc<dyn ExecutionPlan>,
        Arc<TaskContext>,
    ) -> futures::future::BoxFuture<'a, Result<SendableRecordBatchStream>>
    + Send
    + Sync
    + 'a;

/// Runs each uncorrelated scalar subquery of `plan` as a job of its own
/// with `run`, stores its value where the plan's expressions read it, and
/// removes the `ScalarSubqueryExec` nodes, so stages never split one.
pub(crate) fn resolve_scalar_subqueries<'a>(
    plan: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    run: &'a QueryRunner<'a>,
) -> futures::future::BoxFuture<'a, Result<Arc<dyn ExecutionPlan>>> {
    Box::pin(async move {
        if let Some(s) = plan.downcast_ref::<ScalarSubqueryExec>() {
            for link in s.subqueries() {
                let stream = run(Arc::clone(&link.plan), Arc::clone(&ctx)).await?;
                let batches: Vec<RecordBatch> =
                    datafusion::physical_plan::common::collect(stream).await?;
                let value = scalar_of(&batches, &link.plan.schema())?;
                s.results().set(link.index, value)?;
            }
            let input = Arc::clone(s.input());
            return resolve_scalar_subqueries(input, ctx, run).await;
        }
        let children = plan.children();
        if children.is_empty() {
            return Ok(plan);
        }
        let mut resolved = Vec::with_capacity(children.len());
        for c in children {
            resolved.push(resolve_scalar_subqueries(Arc::clone(c), Arc::clone(&ctx), run).await?);
        }
        Arc::clone(&plan).replace_children(resolved, recompute())
    })
}

/// The value of a scalar subquery's result: NULL for no row, an error for
/// more than one.
fn scalar_of(batches: &[RecordBatch], schema: &SchemaRef) -> Result<ScalarValue> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows > 1 {
        return Err(DataFusionError::Execution(format!(
            "a scalar subquery returned {rows} rows; it must return at most one"
        )));
    }
    match batches.iter().find(|b| b.num_rows() == 1) {
        Some(b) => ScalarValue::try_from_array(b.column(0), 0),
        None => ScalarValue::try_from(schema.field(0).data_type()),
    }
}

/// What the stages of a job produced.
struct StagesOutcome {
    outputs: HashMap<u32, Arc<Vec<Arc<AttemptIndex>>>>,
    messages: Vec<CommitMessage>,
    rows_read: u64,
}

/// What the shuffle store keeps of a job's stage graph.
fn job_record(id: &str, holder: &LeaseHolder, graph: &StageGraph) -> JobRecord {
    JobRecord {
        format_version: sluice_shuffle::SHUFFLE_FORMAT_VERSION,
        job: id.to_string(),
        owner: holder.owner.clone(),
        node: holder.node.clone(),
        started_at: chrono::Utc::now(),
        stages: graph
            .stages
            .iter()
            .map(|s| StageRecord {
                stage: s.id,
                tasks: s.tasks as u32,
                inputs: s.inputs.clone(),
                partitions: match &s.output {
                    StageOutput::Shuffle(o) => Some(o.partition_count() as u32),
                    StageOutput::Result => None,
                },
                plan: displayable(s.plan.as_ref()).indent(false).to_string(),
            })
            .collect(),
    }
}

/// One running job: its id, lease and shuffle data.
struct Job {
    id: String,
    runtime: StagedRuntime,
    _lease: SpawnedTask<()>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Job({})", self.id)
    }
}

impl Job {
    /// Takes the job's lease and stores its record, then keeps the lease
    /// renewed while the job lives.
    async fn start(runtime: &StagedRuntime, graph: &StageGraph) -> Result<Self> {
        let id = uuid::Uuid::now_v7().to_string();
        let holder = LeaseHolder {
            owner: format!("pid {}", std::process::id()),
            node: runtime.node.clone(),
        };
        let store = runtime.store.clone();
        let lease = runtime.lease;
        let expires =
            move || chrono::Utc::now() + chrono::Duration::from_std(lease).expect("lease fits");
        store.write_lease(&id, &holder, expires()).await?;
        store
            .write_job_record(&job_record(&id, &holder, graph))
            .await?;
        let lease = {
            let id = id.clone();
            SpawnedTask::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 5).await;
                    if let Err(e) = store.write_lease(&id, &holder, expires()).await {
                        tracing::warn!(job = %id, error = %e, "could not renew the shuffle lease");
                    }
                }
            })
        };
        runtime.counters.jobs.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            id,
            runtime: runtime.clone(),
            _lease: lease,
        })
    }

    fn attempt(&self, stage: u32, task: usize, attempt: u32) -> AttemptId {
        AttemptId {
            job: self.id.clone(),
            stage,
            task: task as u32,
            attempt,
        }
    }

    /// Deletes the job's shuffle data.
    async fn finish(&self) {
        match self.runtime.store.delete_job(&self.id).await {
            Ok(n) => tracing::debug!(job = %self.id, objects = n, "shuffle data removed"),
            Err(e) => {
                tracing::warn!(job = %self.id, error = %e, "could not remove shuffle data; the next start-up sweeps it")
            }
        }
    }

    /// Runs the stages: each stage starts as soon as all its input stages
    /// have committed, its tasks sharing the runtime's slots with every
    /// other running stage. With `include_result`, the result stage runs
    /// too (a sink stage); otherwise it is left to the caller.
    async fn run_stages(
        &self,
        graph: &StageGraph,
        ctx: &Arc<TaskContext>,
        include_result: bool,
    ) -> Result<StagesOutcome> {
        let slots = Arc::new(Semaphore::new(self.runtime.slots));
        let mut outcome = StagesOutcome {
            outputs: HashMap::new(),
            messages: Vec::new(),
            rows_read: 0,
        };
        let result_id = graph.result_stage().id;
        let mut pending: Vec<&Stage> = graph
            .stages
            .iter()
            .filter(|s| include_result || s.id != result_id)
            .collect();
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            let (ready, waiting): (Vec<&Stage>, Vec<&Stage>) = pending
                .into_iter()
                .partition(|s| s.inputs.iter().all(|i| outcome.outputs.contains_key(i)));
            pending = waiting;
            for stage in ready {
                let inputs: HashMap<u32, Arc<Vec<Arc<AttemptIndex>>>> = stage
                    .inputs
                    .iter()
                    .map(|i| (*i, Arc::clone(&outcome.outputs[i])))
                    .collect();
                let run = self.run_stage(stage, inputs, ctx, Arc::clone(&slots));
                running.push(async move { (stage, run.await) });
            }
            let Some((stage, result)) = running.next().await else {
                if pending.is_empty() {
                    return Ok(outcome);
                }
                return Err(DataFusionError::Internal(
                    "stage graph has a cycle or a missing input".into(),
                ));
            };
            let result = result?;
            self.runtime.counters.stages.fetch_add(1, Ordering::Relaxed);
            // In memory, file scans keep their metrics in the file source,
            // which every task instance shares with the template: read
            // once. Decoded instances report their own.
            outcome.rows_read =
                outcome
                    .rows_read
                    .saturating_add(if self.runtime.tasks_report_rows() {
                        result.rows_read
                    } else {
                        rows_read(&stage.plan)
                    });
            match stage.output {
                StageOutput::Shuffle(_) => {
                    outcome.outputs.insert(stage.id, Arc::new(result.indexes));
                }
                StageOutput::Result => outcome.messages.extend(result.messages),
            }
        }
    }

    async fn run_stage(
        &self,
        stage: &Stage,
        inputs: HashMap<u32, Arc<Vec<Arc<AttemptIndex>>>>,
        ctx: &Arc<TaskContext>,
        slots: Arc<Semaphore>,
    ) -> Result<StageResult> {
        let mut tasks = Vec::with_capacity(stage.tasks);
        for task in 0..stage.tasks {
            let slots = Arc::clone(&slots);
            let this = TaskRunner {
                job: self.id.clone(),
                runtime: self.runtime.clone(),
                stage: stage.clone(),
                task,
                inputs: inputs.clone(),
                ctx: Arc::clone(ctx),
            };
            tasks.push(SpawnedTask::spawn(async move {
                let _slot = slots.acquire_owned().await.expect("slots never close");
                this.run().await
            }));
        }
        let mut result = StageResult::default();
        for task in tasks {
            let out = task
                .join()
                .await
                .map_err(|e| DataFusionError::Execution(format!("task panicked: {e}")))??;
            result.rows_read += out.rows_read;
            match out.output {
                TaskOutput::Shuffle(index) => result.indexes.push(index),
                TaskOutput::Messages(m) => result.messages.extend(m),
            }
        }
        Ok(result)
    }
}

#[derive(Default)]
struct StageResult {
    indexes: Vec<Arc<AttemptIndex>>,
    messages: Vec<CommitMessage>,
    rows_read: u64,
}

/// What a task attempt produced.
pub(crate) enum TaskOutput {
    /// The committed shuffle output (the winner's index).
    Shuffle(Arc<AttemptIndex>),
    /// A sink task's commit messages.
    Messages(Vec<CommitMessage>),
}

/// A finished task attempt.
pub(crate) struct TaskResult {
    pub(crate) output: TaskOutput,
    /// Rows the winning attempt's sources read.
    pub(crate) rows_read: u64,
}

struct TaskRunner {
    job: String,
    runtime: StagedRuntime,
    stage: Stage,
    task: usize,
    inputs: HashMap<u32, Arc<Vec<Arc<AttemptIndex>>>>,
    ctx: Arc<TaskContext>,
}

impl TaskRunner {
    async fn run(self) -> Result<TaskResult> {
        let counters = self.runtime.counters;
        let mut last_error = None;
        for attempt in 0..self.runtime.max_attempts {
            let id = AttemptId {
                job: self.job.clone(),
                stage: self.stage.id,
                task: self.task as u32,
                attempt,
            };
            counters.attempts.fetch_add(1, Ordering::Relaxed);
            counters.running.fetch_add(1, Ordering::Relaxed);
            let result = self.attempt(&id).await;
            counters.running.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(r) => return Ok(r),
                Err(e) => {
                    let retryable = is_retryable(&e);
                    tracing::warn!(attempt = %id, error = %e, retryable, "task attempt failed");
                    if let Err(d) = self.runtime.store.delete_attempt(&id).await {
                        tracing::warn!(attempt = %id, error = %d, "could not delete a failed attempt's data");
                    }
                    if !retryable {
                        // Another attempt would fail the same way.
                        return Err(DataFusionError::Execution(format!(
                            "stage {} task {} failed: {}",
                            self.stage.id,
                            self.task,
                            e.strip_backtrace()
                        )));
                    }
                    if attempt + 1 < self.runtime.max_attempts {
                        counters.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    last_error = Some(e);
                }
            }
        }
        let e = last_error.expect("at least one attempt ran");
        Err(DataFusionError::Execution(format!(
            "stage {} task {} failed {} times; last error: {}",
            self.stage.id,
            self.task,
            self.runtime.max_attempts,
            e.strip_backtrace()
        )))
    }

    async fn attempt(&self, id: &AttemptId) -> Result<TaskResult> {
        let spec = TaskSpec {
            stage: self.stage.id,
            task: self.task,
            tasks: self.stage.tasks,
            attempt: id.clone(),
            inputs: self.inputs.clone(),
        };
        let instance = task_instance(&self.stage.plan, &spec)?;
        let output = match self.stage.output {
            StageOutput::Shuffle(_) => OutputKind::Shuffle,
            StageOutput::Result => OutputKind::Sink,
        };
        if let Some(cluster) = &self.runtime.cluster {
            return self.attempt_remote(cluster, &instance, id, output).await;
        }
        let (instance, ctx) = self.runtime.ship(instance, &self.ctx)?;
        execute_attempt(instance, ctx, id, output, &self.runtime.store).await
    }

    /// Runs the attempt on an executor of the cluster.
    async fn attempt_remote(
        &self,
        cluster: &ClusterScheduler,
        instance: &Arc<dyn ExecutionPlan>,
        id: &AttemptId,
        output: OutputKind,
    ) -> Result<TaskResult> {
        let task = TaskAssignment {
            attempt: id.clone(),
            output,
            plan: b64(&encode_stage_plan(instance)?),
            config: datafusion_settings(&self.ctx),
            stores: self
                .runtime
                .stores
                .as_ref()
                .map(|s| s.declarations())
                .unwrap_or_default(),
            slot_group: None,
        };
        let (outcome, rows_read) = cluster
            .run(task)
            .await
            .map_err(DataFusionError::Execution)?;
        let output = match outcome {
            Outcome::Shuffle { index } => {
                let bytes = unb64("a reported shuffle index", &index)
                    .map_err(DataFusionError::Execution)?;
                let index = AttemptIndex::decode(&bytes)?;
                self.runtime
                    .counters
                    .shuffle_bytes
                    .fetch_add(index.bytes, Ordering::Relaxed);
                TaskOutput::Shuffle(Arc::new(index))
            }
            Outcome::Sink { messages } => TaskOutput::Messages(messages),
            Outcome::Live => TaskOutput::Messages(Vec::new()),
            Outcome::Failed { message, retryable } => {
                return Err(if retryable {
                    DataFusionError::Execution(message)
                } else {
                    DataFusionError::External(Box::new(Deterministic(message)))
                });
            }
        };
        Ok(TaskResult { output, rows_read })
    }
}

/// A failure an executor reported as one another attempt cannot fix.
#[derive(Debug)]
struct Deterministic(String);

impl fmt::Display for Deterministic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Deterministic {}

/// Whether another attempt of a failed task may succeed. Not when the
/// user's input must change (a bad value or record, an option, a plan
/// that cannot run); everything else (stores, networks, databases, lost
/// executors, resources) may be transient.
pub(crate) fn is_retryable(e: &DataFusionError) -> bool {
    use arrow::error::ArrowError;
    match e {
        DataFusionError::External(inner) => source_retryable(inner.as_ref()),
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            ArrowError::ExternalError(inner) => source_retryable(inner.as_ref()),
            ArrowError::CastError(_)
            | ArrowError::ParseError(_)
            | ArrowError::InvalidArgumentError(_)
            | ArrowError::DivideByZero
            | ArrowError::ArithmeticOverflow(_)
            | ArrowError::SchemaError(_)
            | ArrowError::NotYetImplemented(_) => false,
            _ => true,
        },
        DataFusionError::ParquetError(p) => !matches!(
            p.as_ref(),
            datafusion::parquet::errors::ParquetError::NYI(_)
        ),
        DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::SQL(..) => false,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            is_retryable(inner)
        }
        DataFusionError::Shared(inner) => is_retryable(inner),
        DataFusionError::Collection(errors) => errors.iter().all(is_retryable),
        _ => true,
    }
}

fn source_retryable(inner: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    if inner.is::<Deterministic>() {
        return false;
    }
    if let Some(c) = inner.downcast_ref::<ConnectorError>() {
        return c.class() == ErrorClass::External;
    }
    match inner.downcast_ref::<DataFusionError>() {
        Some(d) => is_retryable(d),
        None => true,
    }
}

/// The session's DataFusion settings, as an executor rebuilds them.
pub(crate) fn datafusion_settings(ctx: &TaskContext) -> std::collections::BTreeMap<String, String> {
    ctx.session_config()
        .options()
        .entries()
        .into_iter()
        .filter(|e| e.key.starts_with("datafusion."))
        .filter_map(|e| e.value.map(|v| (e.key, v)))
        .collect()
}

/// Runs one task attempt's plan instance to its end: with the test fault
/// hook when it matches, then, for shuffle output, the race for the task's
/// winner record. Executors run exactly this.
pub(crate) async fn execute_attempt(
    instance: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    id: &AttemptId,
    output: OutputKind,
    store: &ShuffleStore,
) -> Result<TaskResult> {
    let run = match Fault::from_env() {
        Some(fault) if fault.matches(id) => fault.inject(Arc::clone(&instance))?,
        _ => Arc::clone(&instance),
    };
    let partitions = collect_partitioned(run, ctx).await?;
    let rows_read = rows_read(&instance);
    match output {
        OutputKind::Shuffle => {
            let index = match store.commit_winner(id).await? {
                Commit::Won => store.read_index(id).await?,
                Commit::Lost(winner) => {
                    // A late attempt: its output is never read.
                    store.delete_attempt(id).await?;
                    store.read_index(&winner.attempt).await?
                }
            };
            StagedCounters::global()
                .shuffle_bytes
                .fetch_add(index.bytes, Ordering::Relaxed);
            Ok(TaskResult {
                output: TaskOutput::Shuffle(Arc::new(index)),
                rows_read,
            })
        }
        // A streaming map task's rows went to its live channels.
        OutputKind::Live => Ok(TaskResult {
            output: TaskOutput::Messages(Vec::new()),
            rows_read,
        }),
        OutputKind::Sink => {
            let mut messages = Vec::new();
            for batch in partitions.iter().flatten() {
                messages.extend(decode_commit_messages(batch)?);
            }
            Ok(TaskResult {
                output: TaskOutput::Messages(messages),
                rows_read,
            })
        }
    }
}

/// Rows read by the source leaves of an executed stage plan (shuffle
/// readers excluded). Rows of retried attempts count again.
pub(crate) fn rows_read(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let children = plan.children();
    if children.is_empty() {
        if plan.downcast_ref::<ShuffleReaderExec>().is_some()
            || plan
                .downcast_ref::<sluice_shuffle::LiveReaderExec>()
                .is_some()
        {
            return 0;
        }
        return plan
            .metrics()
            .and_then(|m| m.output_rows())
            .map_or(0, |n| n as u64);
    }
    children.into_iter().map(rows_read).sum()
}

/// A result stream that deletes its job's shuffle data when it ends.
struct JobStream {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    job: Option<Job>,
    /// Deleting the job's data once the result has ended; the stream ends
    /// after it, so a process exiting right after the last batch leaves
    /// nothing behind.
    finishing: Option<futures::future::BoxFuture<'static, ()>>,
}

impl Stream for JobStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(finishing) = self.finishing.as_mut() {
                futures::ready!(finishing.as_mut().poll(cx));
                self.finishing = None;
                return Poll::Ready(None);
            }
            match self.inner.poll_next_unpin(cx) {
                Poll::Ready(None) => match self.job.take() {
                    Some(job) => {
                        self.finishing = Some(Box::pin(async move { job.finish().await }));
                    }
                    None => return Poll::Ready(None),
                },
                other => return other,
            }
        }
    }
}

impl RecordBatchStream for JobStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

impl JobStream {
    /// A result stream dropped before its end: delete the job's data in
    /// the background.
    fn release(&mut self) {
        if let Some(job) = self.job.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move { job.finish().await });
        }
    }
}

impl Drop for JobStream {
    fn drop(&mut self) {
        self.release();
    }
}

/// The test-only fault hook (see [`FAULT_ENV`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    stage: Option<u32>,
    task: Option<u32>,
    attempt: Option<u32>,
    after: usize,
    action: FaultAction,
}

/// What a matching task attempt does after `after` batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultAction {
    Fail,
    Pause,
    /// Waits this long before passing each further batch on (a slow sink).
    Delay(Duration),
}

impl Fault {
    pub(crate) fn from_env() -> Option<Self> {
        let spec = std::env::var(FAULT_ENV).ok()?;
        let mut fault = Fault {
            stage: None,
            task: None,
            attempt: Some(0),
            after: 0,
            action: FaultAction::Fail,
        };
        for part in spec.split(',') {
            let (k, v) = part.split_once('=')?;
            match (k.trim(), v.trim()) {
                ("stage", v) => fault.stage = v.parse().ok(),
                ("task", v) => fault.task = v.parse().ok(),
                ("attempt", "any") => fault.attempt = None,
                ("attempt", v) => fault.attempt = v.parse().ok(),
                ("after", v) => fault.after = v.parse().ok()?,
                ("action", "pause") => fault.action = FaultAction::Pause,
                ("action", "delay") => fault.action = FaultAction::Delay(Duration::from_millis(10)),
                ("action", _) => fault.action = FaultAction::Fail,
                ("delay_ms", v) => {
                    fault.action = FaultAction::Delay(Duration::from_millis(v.parse().ok()?))
                }
                _ => return None,
            }
        }
        Some(fault)
    }

    pub(crate) fn matches(&self, id: &AttemptId) -> bool {
        self.stage.is_none_or(|s| s == id.stage)
            && self.task.is_none_or(|t| t == id.task)
            && self.attempt.is_none_or(|a| a == id.attempt)
    }

    /// Puts the fault under the instance's root.
    pub(crate) fn inject(&self, root: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let children: Vec<Arc<dyn ExecutionPlan>> = root
            .children()
            .into_iter()
            .map(|c| {
                Arc::new(FaultExec {
                    input: Arc::clone(c),
                    fault: self.clone(),
                }) as Arc<dyn ExecutionPlan>
            })
            .collect();
        if children.is_empty() {
            return Ok(root);
        }
        root.replace_children(children, recompute())
    }
}

/// Passes batches through, then fails or stalls after `fault.after` batches
/// of each partition.
#[derive(Debug)]
struct FaultExec {
    input: Arc<dyn ExecutionPlan>,
    fault: Fault,
}

impl DisplayAs for FaultExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultExec: after={}", self.fault.after)
    }
}

impl ExecutionPlan for FaultExec {
    fn name(&self) -> &str {
        "FaultExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(FaultExec {
            input: children.swap_remove(0),
            fault: self.fault.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let fault = self.fault.clone();
        let stream = input.enumerate().then(move |(i, batch)| {
            let fault = fault.clone();
            async move {
                if i >= fault.after {
                    match fault.action {
                        FaultAction::Pause => futures::future::pending::<()>().await,
                        FaultAction::Delay(d) => {
                            tokio::time::sleep(d).await;
                            return batch;
                        }
                        FaultAction::Fail => {}
                    }
                    return Err(DataFusionError::Execution(format!(
                        "injected fault after {} batches (test hook {FAULT_ENV})",
                        fault.after
                    )));
                }
                batch
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Children replaced, plan properties recomputed from them.
fn recompute() -> datafusion::physical_plan::ReplaceChildrenOptions {
    datafusion::physical_plan::ReplaceChildrenOptions::new(
        datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        let f = |s: &str| {
            // SAFETY: tests in this module are the only readers of the variable.
            unsafe { std::env::set_var(FAULT_ENV, s) };
            let f = Fault::from_env();
            unsafe { std::env::remove_var(FAULT_ENV) };
            f
        };
        let fault = f("stage=1,task=0,after=2,action=fail").unwrap();
        assert_eq!(fault.stage, Some(1));
        assert_eq!(fault.attempt, Some(0));
        assert!(fault.matches(&AttemptId {
            job: "j".into(),
            stage: 1,
            task: 0,
            attempt: 0
        }));
        assert!(!fault.matches(&AttemptId {
            job: "j".into(),
            stage: 1,
            task: 0,
            attempt: 1
        }));
        assert!(f("bogus").is_none());
    }
}
