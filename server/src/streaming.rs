//! Streaming mode in one process: every task of a job's stage graph runs
//! at once, and stages hand batches to each other live, through bounded
//! channels ([`sluice_shuffle::LiveExchange`]); nothing is materialised.
//!
//! - **Admission.** A job takes task slots from the process's pool before
//!   any task starts: as many as its widest stage has tasks, since a slot
//!   holds one task of every stage (Flink's slot sharing). When they are not
//!   free, the job waits in a visible queue (a log line, the
//!   `sluice_streaming_jobs_queued` gauge) for at most
//!   `sluice.admission_timeout_secs`, then fails with the numbers. A job
//!   never starts with part of its tasks, so jobs cannot deadlock on slots.
//! - **Back-pressure.** A channel holds `sluice.streaming_buffer` batches;
//!   a producer facing a full channel waits, so a slow sink slows the whole
//!   job and memory stays bounded.
//! - **Failure.** The first task to fail records its stage, task and cause;
//!   every other task is cancelled at once, readers of the failed task's
//!   channels fail with that cause (never a short result), and a write job
//!   returns the error so the coordinator aborts the sink's staged data.
//!   Recovery from checkpoints comes with unbounded sources.
//! - Uncorrelated scalar subqueries run first, as streaming jobs of their
//!   own, exactly as in staged batch mode.
//!
//! On a cluster (a coordinator's session) the tasks run on the executors:
//! the coordinator reserves the job's slots across executors at once
//! ([`ClusterScheduler::reserve`]), pins each slot group's tasks to its
//! executor and sends their plans; a task reads a channel from a map task
//! on another executor over that executor's live service (Flight
//! `do_get`), and a query's result stage runs here, reading the same way.
//! The first failed task fails the job: the other tasks are cancelled with
//! the executors' next heartbeats, and their channels are dropped.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::runtime::SpawnedTask;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{ExecutionPlan, collect_partitioned, execute_stream};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use sluice_connectors::CommitMessage;
use sluice_connectors::StoreRegistry;
use sluice_connectors::sink::decode_commit_messages;
use sluice_planner::SluiceOptions;
use sluice_planner::codec::encode_stage_plan;
use sluice_planner::stages::{
    ExchangeMode, LiveExchanges, LivePlacement, Placement, StageGraph, StageOptions,
    task_instance_with,
};
use sluice_shuffle::{AttemptId, LiveExchange, ShuffleStore, WriterOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::cluster::protocol::{Outcome, OutputKind, TaskAssignment, b64};
use crate::cluster::scheduler::{ClusterScheduler, ReservedSlot};
use crate::staged::{Fault, datafusion_settings, resolve_scalar_subqueries, rows_read};

/// Counters of streaming jobs in this process, for `/metrics`.
#[derive(Debug)]
pub struct StreamingCounters {
    /// Jobs started.
    pub jobs: AtomicU64,
    /// Jobs that failed.
    pub failed: AtomicU64,
    /// Jobs waiting for task slots now.
    pub queued: AtomicU64,
    /// Tasks running now.
    pub running: AtomicU64,
}

static COUNTERS: StreamingCounters = StreamingCounters {
    jobs: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    queued: AtomicU64::new(0),
    running: AtomicU64::new(0),
};

impl StreamingCounters {
    /// The process's counters.
    pub fn global() -> &'static StreamingCounters {
        &COUNTERS
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 4] = [
            (
                "sluice_streaming_jobs_total",
                "Streaming jobs started.",
                "counter",
                &self.jobs,
            ),
            (
                "sluice_streaming_jobs_failed_total",
                "Streaming jobs that failed.",
                "counter",
                &self.failed,
            ),
            (
                "sluice_streaming_jobs_queued",
                "Streaming jobs waiting for task slots.",
                "gauge",
                &self.queued,
            ),
            (
                "sluice_streaming_tasks_running",
                "Streaming tasks running now.",
                "gauge",
                &self.running,
            ),
        ];
        for (name, help, kind, v) in rows {
            crate::http::write_metric(out, name, help, kind, v.load(Ordering::Relaxed));
        }
    }
}

/// The process's slot pools, one per configured slot count.
static POOLS: LazyLock<Mutex<HashMap<usize, Arc<Semaphore>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn pool(slots: usize) -> Arc<Semaphore> {
    let mut pools = POOLS.lock().expect("slot pools lock");
    Arc::clone(
        pools
            .entry(slots)
            .or_insert_with(|| Arc::new(Semaphore::new(slots))),
    )
}

/// Streaming mode's slots, channel size and admission policy.
#[derive(Debug, Clone)]
pub struct StreamingRuntime {
    slots: usize,
    pool: Arc<Semaphore>,
    buffer: usize,
    admission_timeout: Duration,
    /// Run the tasks on a cluster's executors instead of in this process.
    cluster: Option<ClusterTarget>,
}

/// A coordinator's cluster, and the object stores its tasks may read.
#[derive(Debug, Clone)]
struct ClusterTarget {
    scheduler: Arc<ClusterScheduler>,
    stores: Arc<StoreRegistry>,
}

impl StreamingRuntime {
    /// The runtime of a coordinator: tasks run on `cluster`'s executors,
    /// stages are cut for the slots they offer now.
    pub fn for_cluster(
        options: &SluiceOptions,
        cluster: Arc<ClusterScheduler>,
        stores: Arc<StoreRegistry>,
    ) -> Self {
        let slots = cluster.total_slots().max(1);
        Self {
            slots,
            pool: Arc::new(Semaphore::new(0)),
            buffer: options.streaming_buffer.max(1),
            admission_timeout: Duration::from_secs(options.admission_timeout_secs),
            cluster: Some(ClusterTarget {
                scheduler: cluster,
                stores,
            }),
        }
    }

    /// The runtime the session's settings describe.
    pub fn from_options(options: &SluiceOptions) -> Self {
        let slots = options.slots();
        Self {
            slots,
            pool: pool(slots),
            buffer: options.streaming_buffer.max(1),
            admission_timeout: Duration::from_secs(options.admission_timeout_secs),
            cluster: None,
        }
    }

    /// Cuts `plan` into stages, as the runs do.
    pub fn stage_graph(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        result_as_one_task: bool,
    ) -> Result<StageGraph> {
        // Live exchanges never touch a store; the templates need one.
        let store = ShuffleStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "memory://live",
        );
        StageGraph::cut(
            plan,
            &StageOptions {
                max_tasks: self.slots,
                store,
                writer: WriterOptions::default(),
                single_result_task: result_as_one_task,
                mode: ExchangeMode::Live,
            },
        )
    }

    /// Takes the slots `graph` needs, waiting in the queue when they are
    /// taken, for at most the admission timeout.
    async fn admit(&self, job: &str, graph: &StageGraph) -> Result<OwnedSemaphorePermit> {
        let needed = graph.slots_needed();
        if needed > self.slots {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "streaming job {job} needs {needed} task slots, and this process has {}; \
                 raise 'sluice.task_slots' to at least {needed}",
                self.slots
            )));
        }
        if let Ok(permit) = Arc::clone(&self.pool).try_acquire_many_owned(needed as u32) {
            return Ok(permit);
        }
        let free = self.pool.available_permits();
        tracing::info!(
            %job,
            needed,
            free,
            slots = self.slots,
            timeout_s = self.admission_timeout.as_secs(),
            "streaming job queued: waiting for task slots"
        );
        COUNTERS.queued.fetch_add(1, Ordering::Relaxed);
        let waited = tokio::time::timeout(
            self.admission_timeout,
            Arc::clone(&self.pool).acquire_many_owned(needed as u32),
        )
        .await;
        COUNTERS.queued.fetch_sub(1, Ordering::Relaxed);
        match waited {
            Ok(permit) => {
                tracing::info!(%job, needed, "streaming job admitted");
                Ok(permit.expect("the slot pool never closes"))
            }
            Err(_) => Err(DataFusionError::ResourcesExhausted(format!(
                "streaming job {job} waited {} s for {needed} task slots; {} of this \
                 process's {} slots are free, the rest are held by other streaming jobs. \
                 Run it later, raise 'sluice.task_slots', or wait longer with \
                 'sluice.admission_timeout_secs'",
                self.admission_timeout.as_secs(),
                self.pool.available_permits(),
                self.slots
            ))),
        }
    }

    /// Runs a query: every task at once; the result stage (one task)
    /// streams to the caller. Dropping the stream cancels the job.
    pub fn run_query(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
    ) -> BoxFuture<'_, Result<SendableRecordBatchStream>> {
        Box::pin(async move {
            let plan =
                resolve_scalar_subqueries(plan, Arc::clone(&ctx), &|p, c| self.run_query(p, c))
                    .await?;
            let graph = self.stage_graph(plan, true)?;
            let job = uuid::Uuid::now_v7().to_string();
            if let Some(target) = &self.cluster {
                return self.run_query_on(target, job, &graph, ctx).await;
            }
            let permit = self.admit(&job, &graph).await?;
            let deployment = Deployment::start(&job, &graph, &ctx, self.buffer, false)?;
            let result = deployment
                .result
                .clone()
                .expect("a query deployment has a result instance");
            let stream = execute_stream(result, ctx)?;
            let supervisor = SpawnedTask::spawn(async move {
                // Failures reach the result through its readers.
                let _ = deployment.supervise().await;
            });
            Ok(Box::pin(LiveJobStream {
                schema: stream.schema(),
                inner: stream,
                _supervisor: supervisor,
                _slots: Slots::Local(permit),
            }) as SendableRecordBatchStream)
        })
    }

    /// Runs a write job, its sink stage included, and returns the commit
    /// messages of every sink task, plus the rows its sources read.
    pub async fn run_write(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
    ) -> Result<(Vec<CommitMessage>, u64)> {
        let plan =
            resolve_scalar_subqueries(plan, Arc::clone(&ctx), &|p, c| self.run_query(p, c)).await?;
        let graph = self.stage_graph(plan, false)?;
        let job = uuid::Uuid::now_v7().to_string();
        if let Some(target) = &self.cluster {
            let (remote, tasks, _) = self.deploy_on(target, &job, &graph, &ctx, true).await?;
            let outcomes = remote.supervise(tasks).await?;
            let mut messages = Vec::new();
            let mut rows = 0u64;
            for outcome in outcomes {
                messages.extend(outcome.messages);
                rows = rows.saturating_add(outcome.rows_read);
            }
            return Ok((messages, rows));
        }
        let _permit = self.admit(&job, &graph).await?;
        let deployment = Deployment::start(&job, &graph, &ctx, self.buffer, true)?;
        let outcomes = deployment.supervise().await?;
        let mut messages = Vec::new();
        let mut rows = 0u64;
        for outcome in outcomes {
            messages.extend(outcome.messages);
            rows = rows.saturating_add(outcome.rows_read);
        }
        Ok((messages, rows))
    }
}

impl StreamingRuntime {
    /// Reserves the job's slots on the cluster, then sends every task
    /// (the result stage's too with `include_result`) to the executor of
    /// its slot group. Returns the job, its running tasks and, for a
    /// query, the result stage's instance to run here.
    async fn deploy_on(
        &self,
        target: &ClusterTarget,
        job: &str,
        graph: &StageGraph,
        ctx: &Arc<TaskContext>,
        include_result: bool,
    ) -> Result<(Arc<RemoteJob>, RemoteTasks, Option<Arc<dyn ExecutionPlan>>)> {
        let needed = graph.slots_needed();
        let slots: Vec<ReservedSlot> = target
            .scheduler
            .reserve(job, needed, self.admission_timeout)
            .await
            .map_err(DataFusionError::ResourcesExhausted)?;
        let remote = Arc::new(RemoteJob {
            scheduler: Arc::clone(&target.scheduler),
            job: job.to_string(),
        });
        let result_id = graph.result_stage().id;
        let on_executors = |id: u32| include_result || id != result_id;
        let mut placement = LivePlacement::default();
        for stage in graph.stages.iter().filter(|s| on_executors(s.id)) {
            // Slot group `t` holds task `t` of every stage.
            for (task, slot) in slots.iter().enumerate().take(stage.tasks) {
                placement.urls.insert((stage.id, task), slot.live.clone());
            }
        }
        // Carries the job and channel size into the encoded plans; the
        // result instance reads every channel from the executors.
        let exchange = LiveExchange::new(job, self.buffer);
        let tasks = graph.task_counts();
        let copies = graph.live_copies();
        let config = datafusion_settings(ctx);
        let stores = target.stores.declarations();
        let running = futures::stream::FuturesUnordered::new();
        let mut result = None;
        for stage in &graph.stages {
            for (task, slot) in slots.iter().enumerate().take(stage.tasks) {
                let at = Placement {
                    stage: stage.id,
                    task,
                    tasks: stage.tasks,
                };
                let exchanges = LiveExchanges {
                    exchange: &exchange,
                    tasks: &tasks,
                    copies: &copies,
                    at,
                    placement: Some(&placement),
                };
                let instance = task_instance_with(&stage.plan, &at, &exchanges)?;
                if !on_executors(stage.id) {
                    result = Some(instance);
                    continue;
                }
                let assignment = TaskAssignment {
                    attempt: AttemptId {
                        job: job.to_string(),
                        stage: stage.id,
                        task: task as u32,
                        attempt: 0,
                    },
                    output: if stage.id == result_id {
                        OutputKind::Sink
                    } else {
                        OutputKind::Live
                    },
                    plan: b64(&encode_stage_plan(&instance)?),
                    config: config.clone(),
                    stores: stores.clone(),
                    slot_group: Some(format!("{job}/{task}")),
                };
                let scheduler = Arc::clone(&target.scheduler);
                let executor = slot.executor.clone();
                let stage_id = stage.id;
                running.push(Box::pin(async move {
                    let r = scheduler.run_on(&executor, assignment).await;
                    (stage_id, task, executor, r)
                }) as RemoteTask);
            }
        }
        COUNTERS.jobs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%job, stages = graph.stages.len(), tasks = running.len(), slots = needed, "streaming job started on the cluster");
        Ok((remote, running, result))
    }

    /// Runs a query on the cluster: the result stage here, every other
    /// task on the executors.
    async fn run_query_on(
        &self,
        target: &ClusterTarget,
        job: String,
        graph: &StageGraph,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let (remote, tasks, result) = self.deploy_on(target, &job, graph, &ctx, false).await?;
        let result = result.expect("a query deployment has a result instance");
        let stream = execute_stream(result, ctx)?;
        let supervised = Arc::clone(&remote);
        let supervisor = SpawnedTask::spawn(async move {
            // Failures reach the result through its readers.
            let _ = supervised.supervise(tasks).await;
        });
        Ok(Box::pin(LiveJobStream {
            schema: stream.schema(),
            inner: stream,
            _supervisor: supervisor,
            _slots: Slots::Cluster(remote),
        }))
    }
}

/// A task running on an executor: its stage, task, executor and outcome.
type RemoteTask = Pin<
    Box<
        dyn std::future::Future<
                Output = (u32, usize, String, crate::cluster::scheduler::AttemptResult),
            > + Send,
    >,
>;

type RemoteTasks = futures::stream::FuturesUnordered<RemoteTask>;

/// A streaming job on the cluster: holds its reserved slots until dropped.
#[derive(Debug)]
struct RemoteJob {
    scheduler: Arc<ClusterScheduler>,
    job: String,
}

impl RemoteJob {
    /// Waits for every task; the first failure cancels the others (their
    /// outcomes are no longer awaited, so the executors' next heartbeats
    /// cancel them) and ends the job's channels.
    async fn supervise(&self, mut tasks: RemoteTasks) -> Result<Vec<TaskOutcome>> {
        let mut outcomes = Vec::new();
        while let Some((stage, task, executor, result)) = tasks.next().await {
            let message = match result {
                Ok((Outcome::Failed { message, .. }, _)) => message,
                Err(message) => message,
                Ok((Outcome::Sink { messages }, rows_read)) => {
                    outcomes.push(TaskOutcome {
                        messages,
                        rows_read,
                    });
                    continue;
                }
                Ok((_, rows_read)) => {
                    outcomes.push(TaskOutcome {
                        messages: Vec::new(),
                        rows_read,
                    });
                    continue;
                }
            };
            drop(tasks);
            self.scheduler.release(&self.job);
            COUNTERS.failed.fetch_add(1, Ordering::Relaxed);
            let e = DataFusionError::Execution(format!(
                "stage {stage} task {task} failed on executor {executor}: {message}"
            ));
            tracing::warn!(job = %self.job, error = %e, "streaming job failed; its tasks were cancelled");
            return Err(e);
        }
        Ok(outcomes)
    }
}

impl Drop for RemoteJob {
    fn drop(&mut self) {
        self.scheduler.release(&self.job);
    }
}

/// What a finished task produced.
struct TaskOutcome {
    messages: Vec<CommitMessage>,
    rows_read: u64,
}

/// A started job: its channels and its running tasks.
struct Deployment {
    exchange: Arc<LiveExchange>,
    tasks: JoinSet<(u32, usize, Result<TaskOutcome>)>,
    /// The result stage's instance, for a query (run by the caller).
    result: Option<Arc<dyn ExecutionPlan>>,
}

impl Deployment {
    /// Opens every channel, makes every task's instance, then starts them
    /// all. With `include_result` the result (sink) stage runs as tasks
    /// too; otherwise its one instance is left in `result`.
    fn start(
        job: &str,
        graph: &StageGraph,
        ctx: &Arc<TaskContext>,
        buffer: usize,
        include_result: bool,
    ) -> Result<Self> {
        let exchange = LiveExchange::new(job, buffer);
        let tasks = graph.task_counts();
        let copies = graph.live_copies();
        let fault = Fault::from_env();
        let result_id = graph.result_stage().id;
        let mut instances = Vec::new();
        let mut result = None;
        for stage in &graph.stages {
            for task in 0..stage.tasks {
                let at = Placement {
                    stage: stage.id,
                    task,
                    tasks: stage.tasks,
                };
                let exchanges = LiveExchanges {
                    exchange: &exchange,
                    tasks: &tasks,
                    copies: &copies,
                    at,
                    placement: None,
                };
                let mut instance = task_instance_with(&stage.plan, &at, &exchanges)?;
                let id = AttemptId {
                    job: job.to_string(),
                    stage: stage.id,
                    task: task as u32,
                    attempt: 0,
                };
                if let Some(f) = fault.as_ref().filter(|f| f.matches(&id)) {
                    instance = f.inject(instance)?;
                }
                if stage.id == result_id && !include_result {
                    result = Some(instance);
                } else {
                    instances.push((stage.id, task, stage.id == result_id, instance));
                }
            }
        }
        COUNTERS.jobs.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%job, stages = graph.stages.len(), tasks = instances.len(), "streaming job started");
        let mut set = JoinSet::new();
        for (stage, task, sink, instance) in instances {
            let ctx = Arc::clone(ctx);
            set.spawn(async move {
                COUNTERS.running.fetch_add(1, Ordering::Relaxed);
                let _running = Running;
                (stage, task, run_task(instance, ctx, sink).await)
            });
        }
        Ok(Self {
            exchange,
            tasks: set,
            result,
        })
    }

    /// Waits for every task. On the first failure it records the failing
    /// task, cancels every other task and returns the failure.
    async fn supervise(mut self) -> Result<Vec<TaskOutcome>> {
        let mut outcomes = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            let (stage, task, result) = match joined {
                Ok(r) => r,
                Err(e) => {
                    return Err(self.fail(DataFusionError::Execution(format!(
                        "a streaming task panicked: {e}"
                    ))));
                }
            };
            match result {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    // A reader of a failed producer fails with the
                    // producer's recorded cause; the first recorded wins.
                    let e = match self.exchange.failure() {
                        Some(cause) => DataFusionError::Execution(cause),
                        None => DataFusionError::Context(
                            format!("stage {stage} task {task} of the streaming job failed"),
                            Box::new(e),
                        ),
                    };
                    return Err(self.fail(e));
                }
            }
        }
        Ok(outcomes)
    }

    fn fail(&mut self, e: DataFusionError) -> DataFusionError {
        self.exchange.fail(e.to_string());
        self.tasks.abort_all();
        COUNTERS.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(job = %self.exchange.job(), error = %e, "streaming job failed; its tasks were cancelled");
        e
    }
}

/// Keeps the running-tasks gauge while a task runs.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        COUNTERS.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one task instance to its end.
async fn run_task(
    instance: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    sink: bool,
) -> Result<TaskOutcome> {
    let partitions = collect_partitioned(Arc::clone(&instance), ctx).await?;
    let mut messages = Vec::new();
    if sink {
        for batch in partitions.iter().flatten() {
            messages.extend(decode_commit_messages(batch)?);
        }
    }
    Ok(TaskOutcome {
        messages,
        rows_read: rows_read(&instance),
    })
}

/// The task slots a running job holds, released when dropped.
enum Slots {
    /// Of this process's pool.
    Local(OwnedSemaphorePermit),
    /// Reserved on the cluster.
    Cluster(Arc<RemoteJob>),
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{} local slots", p.num_permits()),
            Self::Cluster(j) => write!(f, "cluster slots of job {}", j.job),
        }
    }
}

/// A query's result stream; the job's tasks and slots live as long as it.
struct LiveJobStream {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    _supervisor: SpawnedTask<()>,
    _slots: Slots,
}

impl Stream for LiveJobStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl RecordBatchStream for LiveJobStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}
