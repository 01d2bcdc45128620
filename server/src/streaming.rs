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
use sluice_connectors::sink::decode_commit_messages;
use sluice_planner::SluiceOptions;
use sluice_planner::stages::{
    ExchangeMode, LiveExchanges, Placement, StageGraph, StageOptions, StageOutput,
    task_instance_with,
};
use sluice_shuffle::{AttemptId, LiveExchange, ShuffleStore, WriterOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::staged::{Fault, resolve_scalar_subqueries, rows_read};

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
}

impl StreamingRuntime {
    /// The runtime the session's settings describe.
    pub fn from_options(options: &SluiceOptions) -> Self {
        let slots = options.slots();
        Self {
            slots,
            pool: pool(slots),
            buffer: options.streaming_buffer.max(1),
            admission_timeout: Duration::from_secs(options.admission_timeout_secs),
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
                _permit: permit,
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
        for stage in &graph.stages {
            if let StageOutput::Shuffle(output) = &stage.output {
                let n = copies.get(&stage.id).copied().unwrap_or(1);
                exchange.open(stage.id, stage.tasks, output.partition_count(), n);
            }
        }
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

/// A query's result stream; the job's tasks and slots live as long as it.
struct LiveJobStream {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    _supervisor: SpawnedTask<()>,
    _permit: OwnedSemaphorePermit,
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
