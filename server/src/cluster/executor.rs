//! `sluice executor`: runs task attempts a coordinator hands out.
//!
//! The executor registers, then heartbeats in a loop: each heartbeat
//! reports its free slots and running attempts and brings back new tasks
//! and cancellations. Each task's plan is decoded against the executor's own
//! registries (object stores, connectors, the shuffle store), run with the
//! executor's memory pool, and its outcome reported.
//!
//! On SIGTERM or SIGINT it drains: no new tasks; running ones may finish
//! for `--drain-timeout-secs`; what is left is aborted and handed back (its
//! attempts reported failed, so the coordinator runs them elsewhere at
//! once); then it leaves the cluster and exits 0.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use futures::FutureExt;
use sluice_connectors::{ConnectorFactory, SecretResolver, StoreRegistry};
use sluice_planner::codec::{ExecutorRegistries, decode_stage_plan};
use sluice_shuffle::{AttemptId, LiveRegistry, LiveService};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::protocol::{
    ACTION_HEARTBEAT, ACTION_LEAVE, ACTION_REGISTER, ACTION_REPORT, CLUSTER_PROTOCOL_VERSION,
    CoordinatorClient, Heartbeat, HeartbeatReply, Leave, Outcome, OutputKind, Register, Registered,
    Report, TaskAssignment, b64, unb64,
};
use crate::staged::{StagedCounters, TaskOutput, execute_attempt, is_retryable};

/// `sluice executor`.
#[derive(Debug, clap::Args)]
pub struct ExecutorArgs {
    /// The coordinator's cluster endpoint: its --cluster-bind address, e.g.
    /// http://127.0.0.1:50052.
    #[arg(long, value_name = "URL", env = "SLUICE_COORDINATOR")]
    pub coordinator: String,

    /// Tasks run at once (default: the number of cores).
    #[arg(long, env = "SLUICE_SLOTS")]
    pub slots: Option<u32>,

    /// Address of the HTTP endpoint serving /healthz and /metrics; port 0
    /// picks a free port.
    #[arg(long, default_value = "127.0.0.1:0", env = "SLUICE_BIND")]
    pub bind: String,

    /// Write the bound HTTP address to this file once registered.
    #[arg(long, value_name = "PATH", env = "SLUICE_LISTEN_FILE")]
    pub listen_file: Option<PathBuf>,

    /// The shuffle store as this machine reaches it (default: the location
    /// the coordinator announces).
    #[arg(long, env = "SLUICE_SHUFFLE_STORE")]
    pub shuffle_store: Option<String>,

    /// The shuffle worker task output goes through (default: the one the
    /// coordinator announces; none: tasks write the store directly).
    #[arg(long, value_name = "URL", env = "SLUICE_SHUFFLE_WORKER")]
    pub shuffle_worker: Option<String>,

    /// Memory all running tasks share (`4GiB`); operators that can spill
    /// do when it is full, others fail with an error naming it.
    #[arg(long, default_value = "4GiB", env = "SLUICE_MEMORY_LIMIT", value_parser = crate::worker::parse_bytes)]
    pub memory_limit: u64,

    /// On SIGTERM, let running tasks finish for this many seconds, then
    /// hand them back to the coordinator.
    #[arg(long, default_value_t = 60, env = "SLUICE_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: u64,

    /// Address of the Flight endpoint serving this executor's live
    /// channels to other processes (streaming mode); port 0 picks a free
    /// port.
    #[arg(long, default_value = "127.0.0.1:0", env = "SLUICE_LIVE_BIND")]
    pub live_bind: String,

    /// The URL other processes reach the live endpoint at (default: the
    /// bound address), e.g. http://executor-1:50070 behind a container
    /// network.
    #[arg(long, value_name = "URL", env = "SLUICE_LIVE_URL")]
    pub live_url: Option<String>,

    /// Keep trying to reach the coordinator at start-up for this many
    /// seconds.
    #[arg(long, default_value_t = 60, env = "SLUICE_CONNECT_TIMEOUT_SECS")]
    pub connect_timeout_secs: u64,
}

/// Runs the executor until it is stopped and drained.
pub async fn run(args: ExecutorArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Counters of this executor, for `/metrics`.
#[derive(Debug, Default)]
struct ExecutorCounters {
    tasks_received: AtomicU64,
    tasks_failed: AtomicU64,
    tasks_cancelled: AtomicU64,
    tasks_handed_back: AtomicU64,
}

/// What the heartbeat loop and the tasks share.
struct Shared {
    id: String,
    slots: u32,
    /// Running attempts, with the slot group of streaming tasks.
    running: Mutex<HashMap<AttemptId, (AbortHandle, Option<String>)>>,
    /// A task ended or the executor started draining.
    changed: Notify,
    draining: AtomicBool,
    counters: ExecutorCounters,
}

impl Shared {
    fn running_ids(&self) -> Vec<AttemptId> {
        self.running
            .lock()
            .expect("running lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Slots in use: one per task, except that the tasks of one streaming
    /// slot group share one.
    fn used_slots(&self) -> u32 {
        let running = self.running.lock().expect("running lock");
        let mut groups = std::collections::HashSet::new();
        let mut used = 0;
        for (_, group) in running.values() {
            match group {
                None => used += 1,
                Some(g) => {
                    if groups.insert(g.clone()) {
                        used += 1;
                    }
                }
            }
        }
        used
    }

    fn abort(&self, id: &AttemptId) -> bool {
        match self.running.lock().expect("running lock").remove(id) {
            Some((handle, _)) => {
                handle.abort();
                true
            }
            None => false,
        }
    }
}

/// Runs one task attempt with what the executor holds.
#[derive(Clone)]
struct TaskEnv {
    client: CoordinatorClient,
    registries: ExecutorRegistries,
    runtime: Arc<RuntimeEnv>,
}

async fn connect(args: &ExecutorArgs) -> Result<CoordinatorClient, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.connect_timeout_secs);
    let mut pause = Duration::from_millis(100);
    loop {
        match CoordinatorClient::connect(&args.coordinator).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() + pause >= deadline => return Err(e),
            Err(e) => {
                tracing::info!("{e}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn register(
    client: &CoordinatorClient,
    shared: &Shared,
    http: &str,
    live: &str,
) -> Result<Registered, String> {
    client
        .call::<_, Registered>(
            ACTION_REGISTER,
            &Register {
                protocol_version: CLUSTER_PROTOCOL_VERSION,
                executor_id: shared.id.clone(),
                slots: shared.slots,
                http: Some(http.to_string()),
                live: Some(live.to_string()),
            },
        )
        .await
        .map_err(|s| {
            format!(
                "the coordinator at {} refused the registration: {}",
                client.url(),
                s.message()
            )
        })
}

async fn run_inner(args: ExecutorArgs) -> Result<(), String> {
    let slots = match args.slots {
        Some(0) => return Err("--slots must be at least 1".into()),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(2, |n| n.get() as u32),
    };
    let (listener, http_addr) = crate::http::bind("--bind", &args.bind).await?;
    let live = LiveRegistry::new();
    let (live_listener, live_addr) = crate::http::bind("--live-bind", &args.live_bind).await?;
    let live_url = args
        .live_url
        .clone()
        .unwrap_or_else(|| format!("http://{live_addr}"));
    {
        let service = LiveService::new(Arc::clone(&live)).into_server();
        let incoming = crate::http::grpc_incoming(live_listener);
        tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!(error = %e, "the live endpoint stopped");
            }
        });
    }
    let shared = Arc::new(Shared {
        id: format!("executor-{}", uuid::Uuid::now_v7().simple()),
        slots,
        running: Mutex::default(),
        changed: Notify::new(),
        draining: AtomicBool::new(false),
        counters: ExecutorCounters::default(),
    });

    let client = connect(&args).await?;
    let registered = register(&client, &shared, &http_addr.to_string(), &live_url).await?;
    let location = args
        .shuffle_store
        .clone()
        .unwrap_or_else(|| registered.shuffle_store.clone());
    let store = crate::worker::open_store(&location)
        .await
        .map_err(|e| format!("{e} (the shuffle store the coordinator announced; pass --shuffle-store when this machine reaches it under another name)"))?
        .with_worker(args.shuffle_worker.clone().or(registered.shuffle_worker.clone()));
    let limit = usize::try_from(args.memory_limit).unwrap_or(usize::MAX);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(limit)))
        .build_arc()
        .map_err(|e| format!("cannot set up the task runtime: {e}"))?;
    let stores = Arc::new(StoreRegistry::new(
        Arc::clone(&runtime),
        SecretResolver::from_env(),
    ));
    let env = TaskEnv {
        client: client.clone(),
        registries: ExecutorRegistries {
            shuffle: store,
            connectors: Arc::new(ConnectorFactory::new(stores)),
            live: Arc::clone(&live),
        },
        runtime,
    };

    {
        let health_shared = Arc::clone(&shared);
        let metrics_shared = Arc::clone(&shared);
        tokio::spawn(crate::http::serve(
            listener,
            Arc::new(move || {
                if health_shared.draining.load(Ordering::Relaxed) {
                    Err("draining".into())
                } else {
                    Ok(())
                }
            }),
            Arc::new(move || render(&metrics_shared)),
        ));
    }
    if let Some(path) = &args.listen_file {
        crate::http::write_listen_file(path, &format!("{http_addr}\n"))?;
    }
    tracing::info!(executor = %shared.id, coordinator = %args.coordinator, slots, http = %http_addr, live = %live_url, shuffle = %location, "executor registered");

    {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            crate::run::shutdown_signal().await;
            tracing::info!(executor = %shared.id, "draining: taking no new tasks");
            shared.draining.store(true, Ordering::Relaxed);
            shared.changed.notify_one();
        });
    }

    let heartbeat = Duration::from_millis(registered.heartbeat_ms.max(10));
    let drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        let draining = shared.draining.load(Ordering::Relaxed);
        if draining {
            let deadline =
                *drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + drain_timeout);
            if shared.running_ids().is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                hand_back(&env, &shared).await;
                break;
            }
        }
        let running = shared.running_ids();
        let free = if draining {
            0
        } else {
            slots.saturating_sub(shared.used_slots())
        };
        let hb = Heartbeat {
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            executor_id: shared.id.clone(),
            free_slots: free,
            running,
            draining,
        };
        let reply = match client
            .call::<_, HeartbeatReply>(ACTION_HEARTBEAT, &hb)
            .await
        {
            Ok(r) => r,
            Err(s) => {
                tracing::warn!(coordinator = %client.url(), "heartbeat failed: {}; retrying", s.message());
                wait_for_change(&shared, heartbeat, drain_deadline).await;
                continue;
            }
        };
        if reply.unknown_executor {
            // Declared lost (or the coordinator restarted): what runs here
            // is being run elsewhere.
            let ids = shared.running_ids();
            for id in &ids {
                shared.abort(id);
            }
            tracing::warn!(executor = %shared.id, aborted = ids.len(), "the coordinator no longer knows this executor; registering again");
            if let Err(e) = register(&client, &shared, &http_addr.to_string(), &live_url).await {
                tracing::warn!("{e}");
                wait_for_change(&shared, heartbeat, drain_deadline).await;
            }
            continue;
        }
        for job in &reply.ended_live_jobs {
            env.registries.live.end(job);
        }
        for id in &reply.cancel {
            if shared.abort(id) {
                shared
                    .counters
                    .tasks_cancelled
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(attempt = %id, "attempt cancelled by the coordinator");
            }
        }
        let got = reply.tasks.len();
        for task in reply.tasks {
            start_task(&env, &shared, task);
        }
        let full = shared.used_slots() >= slots;
        // An idle heartbeat waited at the coordinator already; a full or
        // draining executor waits here for a task to end.
        if full || shared.draining.load(Ordering::Relaxed) || (got == 0 && free == 0) {
            wait_for_change(&shared, heartbeat, drain_deadline).await;
        }
    }
    let leave = Leave {
        protocol_version: CLUSTER_PROTOCOL_VERSION,
        executor_id: shared.id.clone(),
    };
    if let Err(s) = client
        .call::<_, serde_json::Value>(ACTION_LEAVE, &leave)
        .await
    {
        tracing::warn!(
            "could not tell the coordinator that this executor leaves: {}",
            s.message()
        );
    }
    tracing::info!(executor = %shared.id, "drained; stopped");
    Ok(())
}

async fn wait_for_change(
    shared: &Shared,
    heartbeat: Duration,
    drain_deadline: Option<tokio::time::Instant>,
) {
    let mut until = tokio::time::Instant::now() + heartbeat;
    if let Some(d) = drain_deadline {
        until = until.min(d);
    }
    let _ = tokio::time::timeout_at(until, shared.changed.notified()).await;
}

/// Aborts what still runs and reports it failed, so the coordinator runs
/// it elsewhere now rather than after a heartbeat timeout.
async fn hand_back(env: &TaskEnv, shared: &Shared) {
    for id in shared.running_ids() {
        if !shared.abort(&id) {
            continue;
        }
        shared
            .counters
            .tasks_handed_back
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(attempt = %id, "handing the attempt back");
        let report = Report {
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            executor_id: shared.id.clone(),
            attempt: id,
            outcome: Outcome::Failed {
                message: format!(
                    "executor {} shut down and handed the attempt back",
                    shared.id
                ),
                retryable: true,
            },
            rows_read: 0,
        };
        send_report(env, &report).await;
    }
}

fn start_task(env: &TaskEnv, shared: &Arc<Shared>, task: TaskAssignment) {
    shared
        .counters
        .tasks_received
        .fetch_add(1, Ordering::Relaxed);
    let id = task.attempt.clone();
    let group = task.slot_group.clone();
    let env2 = env.clone();
    let shared2 = Arc::clone(shared);
    // The map is locked while the task is spawned, so the task's own
    // removal at its end always comes after this insertion.
    let mut running = shared.running.lock().expect("running lock");
    let handle = tokio::spawn(async move {
        let id = task.attempt.clone();
        let counters = StagedCounters::global();
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        counters.running.fetch_add(1, Ordering::Relaxed);
        let _running = RunningGuard(counters);
        // A panic in the plan fails the attempt instead of leaving its
        // slot taken and the coordinator waiting.
        let result = std::panic::AssertUnwindSafe(run_task(&env2, &task))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(Failure::from(format!(
                    "the attempt panicked on executor {}",
                    shared2.id
                )))
            });
        let (outcome, rows_read) = match result {
            Ok(r) => r,
            Err(Failure { message, retryable }) => {
                shared2
                    .counters
                    .tasks_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(attempt = %id, error = %message, retryable, "task attempt failed");
                (Outcome::Failed { message, retryable }, 0)
            }
        };
        let report = Report {
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            executor_id: shared2.id.clone(),
            attempt: id.clone(),
            outcome,
            rows_read,
        };
        send_report(&env2, &report).await;
        shared2.running.lock().expect("running lock").remove(&id);
        shared2.changed.notify_one();
    });
    running.insert(id, (handle.abort_handle(), group));
}

/// Decrements the running gauge however the task ends (aborts included).
struct RunningGuard(&'static StagedCounters);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn send_report(env: &TaskEnv, report: &Report) {
    let mut pause = Duration::from_millis(100);
    for _ in 0..8 {
        match env
            .client
            .call::<_, serde_json::Value>(ACTION_REPORT, report)
            .await
        {
            Ok(_) => return,
            Err(s) => {
                tracing::warn!(attempt = %report.attempt, "could not report the attempt: {}; retrying", s.message());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!(attempt = %report.attempt, "gave up reporting the attempt; the coordinator will run it again when it declares this executor lost");
}

/// Why an attempt failed.
struct Failure {
    message: String,
    retryable: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            retryable: true,
        }
    }
}

async fn run_task(env: &TaskEnv, task: &TaskAssignment) -> Result<(Outcome, u64), Failure> {
    let fail = |e: datafusion::error::DataFusionError| Failure {
        retryable: is_retryable(&e),
        message: e.strip_backtrace(),
    };
    let plan = unb64("the task's plan", &task.plan)?;
    let settings: HashMap<String, String> = task.config.clone().into_iter().collect();
    let config = SessionConfig::from_string_hash_map(&settings).map_err(fail)?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(Arc::clone(&env.runtime))
        .with_default_features()
        .build();
    let ctx = state.task_ctx();
    let stores = env.registries.connectors.stores();
    for d in &task.stores {
        stores
            .resolve(&d.location, &d.options)
            .map_err(|e| format!("the object store of {}: {e}", d.location))?;
    }
    let instance = decode_stage_plan(&plan, &ctx, &env.registries).map_err(fail)?;
    let result = execute_attempt(
        instance,
        ctx,
        &task.attempt,
        task.output,
        &env.registries.shuffle,
    )
    .await
    .map_err(fail)?;
    let outcome = match result.output {
        TaskOutput::Shuffle(index) => Outcome::Shuffle {
            index: b64(&index.encode()),
        },
        TaskOutput::Messages(_) if task.output == OutputKind::Live => Outcome::Live,
        TaskOutput::Messages(messages) => Outcome::Sink { messages },
    };
    Ok((outcome, result.rows_read))
}

fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let c = &shared.counters;
    let rows: [(&str, &str, &str, u64); 6] = [
        (
            "sluice_executor_slots",
            "Tasks this executor runs at once.",
            "gauge",
            u64::from(shared.slots),
        ),
        (
            "sluice_executor_draining",
            "1 while the executor drains before it leaves.",
            "gauge",
            u64::from(shared.draining.load(Ordering::Relaxed)),
        ),
        (
            "sluice_executor_tasks_received_total",
            "Task attempts received from the coordinator.",
            "counter",
            c.tasks_received.load(Ordering::Relaxed),
        ),
        (
            "sluice_executor_tasks_failed_total",
            "Task attempts that failed here.",
            "counter",
            c.tasks_failed.load(Ordering::Relaxed),
        ),
        (
            "sluice_executor_tasks_cancelled_total",
            "Task attempts the coordinator cancelled.",
            "counter",
            c.tasks_cancelled.load(Ordering::Relaxed),
        ),
        (
            "sluice_executor_tasks_handed_back_total",
            "Task attempts handed back while draining.",
            "counter",
            c.tasks_handed_back.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, kind, v) in rows {
        crate::http::write_metric(&mut out, name, help, kind, v);
    }
    StagedCounters::global().render(&mut out);
    out
}
