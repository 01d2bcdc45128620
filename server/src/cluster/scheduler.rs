//! The coordinator's task scheduler: executors pull task attempts with
//! their heartbeats; an executor that stops heartbeating is declared lost
//! and its attempts fail, so the stage runner retries them elsewhere from
//! the same committed inputs.
//!
//! - Heartbeats are long polls: an executor with free slots waits at the
//!   coordinator up to one heartbeat interval for work, so a task starts
//!   as soon as it is queued.
//! - Tasks are balanced: one heartbeat takes at most its executor's share
//!   of the queued and running attempts, less what it already runs.
//! - Attempts whose job stopped waiting (the job failed or was cancelled)
//!   are cancelled on the executor's next heartbeat.
//! - Streaming jobs are gangs ([`ClusterScheduler::reserve`]): all their
//!   slots are reserved at once on executors with a live service, or the
//!   job waits (or fails with the numbers); a reserved slot holds one task
//!   of each stage, and each task is pinned to its executor. Slots a job
//!   reserved are taken from what queued tasks may use until it ends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::Stream;
use sluice_shuffle::{AttemptId, ShuffleStore};
use tokio::sync::{Notify, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::protocol::{
    ACTION_HEARTBEAT, ACTION_LEAVE, ACTION_REGISTER, ACTION_REPORT, CLUSTER_PROTOCOL_VERSION,
    Heartbeat, HeartbeatReply, Leave, MAX_MESSAGE, Outcome, Register, Registered, Report,
    TaskAssignment, check_version,
};

/// Timing of the executor protocol.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How often executors heartbeat (and how long a long poll waits).
    pub heartbeat: Duration,
    /// An executor silent this long is declared lost.
    pub lost_after: Duration,
    /// Queued tasks fail when no executor has been registered this long.
    pub executor_wait: Duration,
    /// How long a job's shuffle lease lasts unrenewed.
    pub job_lease: Duration,
}

/// What a finished attempt produced, as the executor reported it (a
/// failure it reported included); an error when no executor finished it.
pub(crate) type AttemptResult = Result<(Outcome, u64), String>;

struct Queued {
    task: TaskAssignment,
    reply: oneshot::Sender<AttemptResult>,
    since: Instant,
}

struct Running {
    executor: String,
    reply: oneshot::Sender<AttemptResult>,
    /// A streaming task, in a slot its job reserved.
    reserved: bool,
}

struct ExecutorEntry {
    slots: u32,
    last_seen: Instant,
    draining: bool,
    http: Option<String>,
    live: Option<String>,
}

#[derive(Default)]
struct State {
    executors: BTreeMap<String, ExecutorEntry>,
    queue: VecDeque<Queued>,
    running: HashMap<AttemptId, Running>,
    /// Streaming jobs' reserved slots: the executor of each slot.
    reserved: HashMap<String, Vec<String>>,
    /// Streaming tasks waiting for their executor's next heartbeat.
    pinned: HashMap<String, VecDeque<Queued>>,
    /// Streaming jobs that ended, and when.
    ended_live: VecDeque<(String, Instant)>,
}

impl State {
    /// Slots of `executor` neither running a queued task nor reserved.
    fn free_slots(&self, executor: &str) -> usize {
        let Some(e) = self.executors.get(executor) else {
            return 0;
        };
        let running = self
            .running
            .values()
            .filter(|r| r.executor == executor && !r.reserved)
            .count();
        let reserved = self
            .reserved
            .values()
            .flatten()
            .filter(|x| *x == executor)
            .count();
        (e.slots as usize).saturating_sub(running + reserved)
    }
}

/// One reserved slot of a streaming job.
#[derive(Debug, Clone)]
pub(crate) struct ReservedSlot {
    /// The executor holding it.
    pub executor: String,
    /// That executor's live service.
    pub live: String,
}

/// Counters of the scheduler, for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Executors registered over the process's life.
    pub registered: AtomicU64,
    /// Executors declared lost.
    pub lost: AtomicU64,
    /// Task attempts given to executors.
    pub assigned: AtomicU64,
    /// Attempts that failed because their executor was lost or left.
    pub orphaned: AtomicU64,
    /// Jobs of an earlier life of this coordinator removed at start-up.
    pub reclaimed: AtomicU64,
}

/// The coordinator's view of its executors and their tasks.
pub struct ClusterScheduler {
    node: String,
    store_location: String,
    store: ShuffleStore,
    liveness: Liveness,
    state: Mutex<State>,
    queued: Notify,
    counters: ClusterCounters,
}

impl std::fmt::Debug for ClusterScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterScheduler")
            .field("store", &self.store_location)
            .field("liveness", &self.liveness)
            .finish_non_exhaustive()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl ClusterScheduler {
    /// A scheduler handing out tasks that use `store` (reachable by every
    /// executor at `store_location`), with its liveness monitor running.
    /// `node` names the coordinator across restarts in its jobs' leases.
    pub fn start(
        node: String,
        store_location: String,
        store: ShuffleStore,
        liveness: Liveness,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            node,
            store_location,
            store,
            liveness,
            state: Mutex::new(State::default()),
            queued: Notify::new(),
            counters: ClusterCounters::default(),
        });
        let weak = Arc::downgrade(&this);
        let tick = (liveness.heartbeat / 2).max(Duration::from_millis(20));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                match weak.upgrade() {
                    Some(s) => s.check_liveness(),
                    None => return,
                }
            }
        });
        this
    }

    /// The coordinator's name across restarts.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The shuffle store tasks use.
    pub fn store(&self) -> &ShuffleStore {
        &self.store
    }

    /// The counters.
    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    /// How long a job's shuffle lease lasts unrenewed.
    pub fn job_lease(&self) -> Duration {
        self.liveness.job_lease
    }

    /// Reserves `slots` task slots for streaming job `job`, all at once,
    /// on executors that serve live channels, spreading them over the
    /// executors with the most free slots. Waits up to `timeout` while
    /// they are taken (the job is queued); fails at once when the cluster
    /// has fewer. Release with [`Self::release`].
    pub(crate) async fn reserve(
        &self,
        job: &str,
        slots: usize,
        timeout: Duration,
    ) -> Result<Vec<ReservedSlot>, String> {
        let deadline = Instant::now() + timeout;
        let mut logged = false;
        loop {
            {
                let mut state = self.state.lock().expect("scheduler lock");
                let eligible: Vec<(String, u32, String)> = state
                    .executors
                    .iter()
                    .filter(|(_, e)| !e.draining)
                    .filter_map(|(id, e)| Some((id.clone(), e.slots, e.live.clone()?)))
                    .collect();
                let total: usize = eligible.iter().map(|(_, s, _)| *s as usize).sum();
                if total < slots {
                    return Err(format!(
                        "streaming job {job} needs {slots} task slots at once, and the \
                         cluster's executors offer {total} ({} executors{}); start more \
                         executors or give them more --slots, or lower \
                         'datafusion.execution.target_partitions'",
                        eligible.len(),
                        if eligible.len() < state.executors.len() {
                            ", not counting draining ones"
                        } else {
                            ""
                        }
                    ));
                }
                let mut free: Vec<(String, usize, String)> = eligible
                    .into_iter()
                    .map(|(id, _, live)| {
                        let f = state.free_slots(&id);
                        (id, f, live)
                    })
                    .collect();
                let available: usize = free.iter().map(|(_, f, _)| *f).sum();
                if available >= slots {
                    let mut placed = Vec::with_capacity(slots);
                    for _ in 0..slots {
                        let best = free
                            .iter_mut()
                            .max_by_key(|(_, f, _)| *f)
                            .expect("enough free slots");
                        best.1 -= 1;
                        placed.push(ReservedSlot {
                            executor: best.0.clone(),
                            live: best.2.clone(),
                        });
                    }
                    state.reserved.insert(
                        job.to_string(),
                        placed.iter().map(|p| p.executor.clone()).collect(),
                    );
                    if logged {
                        tracing::info!(%job, slots, "streaming job admitted");
                    }
                    return Ok(placed);
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "streaming job {job} waited {} s for {slots} task slots; {available} \
                         of the cluster's {total} slots are free, the rest run other jobs. \
                         Run it later, add executors, or wait longer with \
                         'sluice.admission_timeout_secs'",
                        timeout.as_secs()
                    ));
                }
                if !logged {
                    logged = true;
                    tracing::info!(%job, needed = slots, free = available, total, timeout_s = timeout.as_secs(), "streaming job queued: waiting for task slots");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Frees the slots of streaming job `job` and tells executors, with
    /// their next heartbeats, to drop its channels.
    pub(crate) fn release(&self, job: &str) {
        let mut state = self.state.lock().expect("scheduler lock");
        state.reserved.remove(job);
        if !state.ended_live.iter().any(|(j, _)| j == job) {
            state
                .ended_live
                .push_back((job.to_string(), Instant::now()));
        }
        self.queued.notify_waiters();
    }

    /// Runs one task of a streaming job on `executor`, in a slot the job
    /// reserved, and waits for its outcome.
    pub(crate) async fn run_on(&self, executor: &str, task: TaskAssignment) -> AttemptResult {
        self.submit(Some(executor), task).await
    }

    /// Slots of live executors that take tasks.
    pub fn total_slots(&self) -> usize {
        let state = self.state.lock().expect("scheduler lock");
        state
            .executors
            .values()
            .filter(|e| !e.draining)
            .map(|e| e.slots as usize)
            .sum()
    }

    /// Runs one attempt on some executor and waits for its outcome. An
    /// error is the attempt's failure (or the loss of its executor): the
    /// caller may retry the task as a new attempt.
    pub(crate) async fn run(&self, task: TaskAssignment) -> AttemptResult {
        self.submit(None, task).await
    }

    /// Queues `task` for any executor, or for `executor` alone.
    async fn submit(&self, executor: Option<&str>, task: TaskAssignment) -> AttemptResult {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state.lock().expect("scheduler lock");
            let queued = Queued {
                task,
                reply: tx,
                since: Instant::now(),
            };
            match executor {
                None => state.queue.push_back(queued),
                Some(e) if state.executors.contains_key(e) => state
                    .pinned
                    .entry(e.to_string())
                    .or_default()
                    .push_back(queued),
                Some(e) => {
                    return Err(format!(
                        "executor {e} left before its streaming task started"
                    ));
                }
            }
        }
        self.queued.notify_waiters();
        rx.await
            .unwrap_or_else(|_| Err("the coordinator dropped the attempt".into()))
    }

    fn register(&self, r: Register) -> Result<Registered, String> {
        check_version(r.protocol_version, &format!("executor {}", r.executor_id))?;
        if r.slots == 0 {
            return Err(format!("executor {} offers no slots", r.executor_id));
        }
        let mut state = self.state.lock().expect("scheduler lock");
        state.executors.insert(
            r.executor_id.clone(),
            ExecutorEntry {
                slots: r.slots,
                last_seen: Instant::now(),
                draining: false,
                http: r.http.clone(),
                live: r.live.clone(),
            },
        );
        self.counters.registered.fetch_add(1, Ordering::Relaxed);
        tracing::info!(executor = %r.executor_id, slots = r.slots, http = r.http.as_deref().unwrap_or("-"), "executor registered");
        Ok(Registered {
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            shuffle_store: self.store_location.clone(),
            shuffle_worker: self.store.worker().map(str::to_string),
            heartbeat_ms: self.liveness.heartbeat.as_millis() as u64,
            lost_after_ms: self.liveness.lost_after.as_millis() as u64,
        })
    }

    /// One pass of a heartbeat: records the executor's state, cancels
    /// attempts nobody waits for and hands out its share of the queue.
    fn take_work(&self, hb: &Heartbeat) -> HeartbeatReply {
        let mut reply = HeartbeatReply {
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            ..HeartbeatReply::default()
        };
        let mut state = self.state.lock().expect("scheduler lock");
        let live = state.executors.values().filter(|e| !e.draining).count();
        let Some(entry) = state.executors.get_mut(&hb.executor_id) else {
            reply.unknown_executor = true;
            return reply;
        };
        entry.last_seen = Instant::now();
        entry.draining = hb.draining;
        let keep = (self.liveness.lost_after * 3).max(Duration::from_secs(10));
        while state
            .ended_live
            .front()
            .is_some_and(|(_, at)| at.elapsed() > keep)
        {
            state.ended_live.pop_front();
        }
        reply.ended_live_jobs = state.ended_live.iter().map(|(j, _)| j.clone()).collect();
        // An attempt given to this executor that it no longer lists has
        // ended; its report arrives before the executor forgets it, so a
        // missing report was lost: fail the attempt rather than wait.
        let vanished: Vec<AttemptId> = state
            .running
            .iter()
            .filter(|(id, r)| r.executor == hb.executor_id && !hb.running.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in vanished {
            let run = state.running.remove(&id).expect("present");
            self.counters.orphaned.fetch_add(1, Ordering::Relaxed);
            let _ = run.reply.send(Err(format!(
                "executor {} stopped running {id} without a report",
                hb.executor_id
            )));
        }
        // Attempts this executor runs that no job waits for any more.
        for id in &hb.running {
            let abandoned = match state.running.get(id) {
                Some(r) => r.executor != hb.executor_id || r.reply.is_closed(),
                None => true,
            };
            if abandoned {
                if state
                    .running
                    .get(id)
                    .is_some_and(|r| r.executor == hb.executor_id)
                {
                    state.running.remove(id);
                }
                reply.cancel.push(id.clone());
            }
        }
        // Streaming tasks go to the executor their job reserved slots on,
        // whatever its free slots.
        let pinned: Vec<Queued> = state
            .pinned
            .get_mut(&hb.executor_id)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        for q in pinned.into_iter().filter(|q| !q.reply.is_closed()) {
            self.assign(&mut state, &hb.executor_id, q, true, &mut reply);
        }
        if hb.draining || hb.free_slots == 0 {
            return reply;
        }
        state.queue.retain(|q| !q.reply.is_closed());
        // Spread the work: this executor's share of all queued and running
        // attempts, less what it runs already (at least one task, so a
        // free slot never idles while tasks wait).
        let mine = hb.running.len();
        let fair = (state.queue.len() + state.running.len()).div_ceil(live.max(1));
        let share = fair.saturating_sub(mine).max(1);
        let take = (hb.free_slots as usize)
            .min(share)
            .min(state.free_slots(&hb.executor_id));
        for _ in 0..take {
            let Some(q) = state.queue.pop_front() else {
                break;
            };
            self.assign(&mut state, &hb.executor_id, q, false, &mut reply);
        }
        reply
    }

    /// Gives a queued task to `executor` with this heartbeat's reply.
    fn assign(
        &self,
        state: &mut State,
        executor: &str,
        q: Queued,
        reserved: bool,
        reply: &mut HeartbeatReply,
    ) {
        state.running.insert(
            q.task.attempt.clone(),
            Running {
                executor: executor.to_string(),
                reply: q.reply,
                reserved,
            },
        );
        self.counters.assigned.fetch_add(1, Ordering::Relaxed);
        reply.tasks.push(q.task);
    }

    async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatReply, String> {
        check_version(hb.protocol_version, &format!("executor {}", hb.executor_id))?;
        let deadline = tokio::time::Instant::now() + self.liveness.heartbeat;
        loop {
            let notified = self.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let reply = self.take_work(&hb);
            let idle = reply.tasks.is_empty() && reply.cancel.is_empty();
            if !idle || reply.unknown_executor || hb.draining || hb.free_slots == 0 {
                return Ok(reply);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(reply);
            }
        }
    }

    fn report(&self, r: Report) -> Result<(), String> {
        check_version(r.protocol_version, &format!("executor {}", r.executor_id))?;
        let mut state = self.state.lock().expect("scheduler lock");
        match state.running.get(&r.attempt) {
            Some(run) if run.executor == r.executor_id => {
                let run = state.running.remove(&r.attempt).expect("present");
                let _ = run.reply.send(Ok((r.outcome, r.rows_read)));
            }
            _ => {
                tracing::debug!(attempt = %r.attempt, executor = %r.executor_id, "report of an attempt no longer waited for");
            }
        }
        Ok(())
    }

    fn leave(&self, l: Leave) -> Result<(), String> {
        check_version(l.protocol_version, &format!("executor {}", l.executor_id))?;
        let mut state = self.state.lock().expect("scheduler lock");
        if state.executors.remove(&l.executor_id).is_some() {
            tracing::info!(executor = %l.executor_id, "executor left");
        }
        self.fail_attempts_of(
            &mut state,
            &l.executor_id,
            &format!(
                "executor {} left before reporting the attempt",
                l.executor_id
            ),
        );
        Ok(())
    }

    fn fail_attempts_of(&self, state: &mut State, executor: &str, message: &str) {
        let ids: Vec<AttemptId> = state
            .running
            .iter()
            .filter(|(_, r)| r.executor == executor)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let run = state.running.remove(&id).expect("present");
            self.counters.orphaned.fetch_add(1, Ordering::Relaxed);
            let _ = run.reply.send(Err(message.to_string()));
        }
        for q in state.pinned.remove(executor).unwrap_or_default() {
            let _ = q.reply.send(Err(message.to_string()));
        }
    }

    /// Declares silent executors lost, and fails queued tasks when no
    /// executor has been there for too long.
    fn check_liveness(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("scheduler lock");
        let lost: Vec<(String, Option<String>)> = state
            .executors
            .iter()
            .filter(|(_, e)| now.duration_since(e.last_seen) > self.liveness.lost_after)
            .map(|(id, e)| (id.clone(), e.http.clone()))
            .collect();
        for (id, http) in lost {
            state.executors.remove(&id);
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(executor = %id, http = http.as_deref().unwrap_or("-"), "executor lost: no heartbeat for {:?}; its attempts run again elsewhere", self.liveness.lost_after);
            self.fail_attempts_of(
                &mut state,
                &id,
                &format!(
                    "executor {id} was lost (no heartbeat for {} ms)",
                    self.liveness.lost_after.as_millis()
                ),
            );
        }
        if state.executors.values().all(|e| e.draining) {
            let wait = self.liveness.executor_wait;
            while state
                .queue
                .front()
                .is_some_and(|q| now.duration_since(q.since) > wait)
            {
                let q = state.queue.pop_front().expect("present");
                let _ = q.reply.send(Err(format!(
                    "no executor took the task within {} s: none is registered with this \
                     coordinator; start executors with `sluice executor --coordinator URL` \
                     pointing at the coordinator's --cluster-bind address",
                    wait.as_secs()
                )));
            }
        }
    }

    /// Appends the scheduler's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let (live, draining, queued, running) = {
            let state = self.state.lock().expect("scheduler lock");
            let draining = state.executors.values().filter(|e| e.draining).count();
            (
                state.executors.len() - draining,
                draining,
                state.queue.len(),
                state.running.len(),
            )
        };
        let c = &self.counters;
        let rows: [(&str, &str, &str, u64); 9] = [
            (
                "sluice_cluster_executors",
                "Executors taking tasks.",
                "gauge",
                live as u64,
            ),
            (
                "sluice_cluster_executors_draining",
                "Executors draining before they leave.",
                "gauge",
                draining as u64,
            ),
            (
                "sluice_cluster_tasks_queued",
                "Task attempts waiting for a slot.",
                "gauge",
                queued as u64,
            ),
            (
                "sluice_cluster_tasks_running",
                "Task attempts running on executors.",
                "gauge",
                running as u64,
            ),
            (
                "sluice_cluster_executors_registered_total",
                "Executor registrations.",
                "counter",
                c.registered.load(Ordering::Relaxed),
            ),
            (
                "sluice_cluster_executors_lost_total",
                "Executors declared lost.",
                "counter",
                c.lost.load(Ordering::Relaxed),
            ),
            (
                "sluice_cluster_tasks_assigned_total",
                "Task attempts given to executors.",
                "counter",
                c.assigned.load(Ordering::Relaxed),
            ),
            (
                "sluice_cluster_attempts_orphaned_total",
                "Attempts failed because their executor was lost or left.",
                "counter",
                c.orphaned.load(Ordering::Relaxed),
            ),
            (
                "sluice_cluster_jobs_reclaimed_total",
                "Jobs of an earlier life of this coordinator removed at start-up.",
                "counter",
                c.reclaimed.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, kind, v) in rows {
            crate::http::write_metric(out, name, help, kind, v);
        }
    }

    /// The Flight service executors talk to.
    pub fn service(self: &Arc<Self>) -> FlightServiceServer<ClusterService> {
        FlightServiceServer::new(ClusterService {
            scheduler: Arc::clone(self),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
    }
}

/// The coordinator's Flight endpoint for executors (see
/// [`super::protocol`]).
#[derive(Debug, Clone)]
pub struct ClusterService {
    scheduler: Arc<ClusterScheduler>,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("malformed {what}: {e}")))
}

fn answer<T: serde::Serialize>(
    value: &T,
) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
    let body = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    let result = arrow_flight::Result { body: body.into() };
    Ok(Response::new(Box::pin(futures::stream::once(async {
        Ok(result)
    }))))
}

fn refused(message: String) -> Status {
    Status::failed_precondition(message)
}

#[tonic::async_trait]
impl FlightService for ClusterService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "the cluster endpoint takes actions only",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "the cluster endpoint takes actions only",
        ))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "the cluster endpoint takes actions only; SQL clients use the coordinator's --bind address",
        ))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "the cluster endpoint takes actions only",
        ))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(
            "the cluster endpoint takes actions only",
        ))
    }

    async fn do_get(
        &self,
        _request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented(
            "the cluster endpoint takes actions only",
        ))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(
            "the cluster endpoint takes actions only",
        ))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "the cluster endpoint takes actions only",
        ))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        let s = &self.scheduler;
        match action.r#type.as_str() {
            ACTION_REGISTER => {
                let r: Register = decode("register", &action.body)?;
                answer(&s.register(r).map_err(refused)?)
            }
            ACTION_HEARTBEAT => {
                let hb: Heartbeat = decode("heartbeat", &action.body)?;
                answer(&s.heartbeat(hb).await.map_err(refused)?)
            }
            ACTION_REPORT => {
                let r: Report = decode("report", &action.body)?;
                s.report(r).map_err(refused)?;
                answer(&serde_json::json!({}))
            }
            ACTION_LEAVE => {
                let l: Leave = decode("leave", &action.body)?;
                s.leave(l).map_err(refused)?;
                answer(&serde_json::json!({}))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action '{other}'; the cluster endpoint knows {ACTION_REGISTER}, \
                 {ACTION_HEARTBEAT}, {ACTION_REPORT} and {ACTION_LEAVE}"
            ))),
        }
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            (ACTION_REGISTER, "An executor joins with its slots"),
            (
                ACTION_HEARTBEAT,
                "An executor's liveness and free slots; answers with tasks",
            ),
            (ACTION_REPORT, "A task attempt's outcome"),
            (ACTION_LEAVE, "A drained executor leaves"),
        ]
        .map(|(t, d)| {
            Ok(ActionType {
                r#type: t.to_string(),
                description: d.to_string(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::protocol::OutputKind;

    fn scheduler(dir: &std::path::Path, lost_after_ms: u64) -> Arc<ClusterScheduler> {
        let store = ShuffleStore::local(dir).unwrap();
        ClusterScheduler::start(
            "coordinator test".into(),
            dir.display().to_string(),
            store,
            Liveness {
                heartbeat: Duration::from_millis(50),
                lost_after: Duration::from_millis(lost_after_ms),
                executor_wait: Duration::from_secs(60),
                job_lease: Duration::from_secs(60),
            },
        )
    }

    fn register(s: &ClusterScheduler, id: &str, slots: u32) {
        s.register(Register {
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            executor_id: id.into(),
            slots,
            http: None,
            live: Some(format!("http://{id}")),
        })
        .unwrap();
    }

    fn heartbeat(id: &str, free: u32, running: Vec<AttemptId>) -> Heartbeat {
        Heartbeat {
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            executor_id: id.into(),
            free_slots: free,
            running,
            draining: false,
        }
    }

    fn task(n: u32) -> TaskAssignment {
        TaskAssignment {
            attempt: AttemptId {
                job: "j".into(),
                stage: 0,
                task: n,
                attempt: 0,
            },
            output: OutputKind::Shuffle,
            plan: String::new(),
            config: Default::default(),
            stores: vec![],
            slot_group: None,
        }
    }

    /// Queues `n` tasks; returns their pending outcomes.
    fn submit(s: &Arc<ClusterScheduler>, n: u32) -> Vec<tokio::task::JoinHandle<AttemptResult>> {
        (0..n)
            .map(|i| {
                let s = Arc::clone(s);
                tokio::spawn(async move { s.run(task(i)).await })
            })
            .collect()
    }

    async fn queued(s: &ClusterScheduler, n: usize) {
        while s.state.lock().unwrap().queue.len() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_heartbeat_takes_its_share_of_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let s = scheduler(dir.path(), 10_000);
        register(&s, "a", 4);
        register(&s, "b", 4);
        let _pending = submit(&s, 4);
        queued(&s, 4).await;
        let a = s.heartbeat(heartbeat("a", 4, vec![])).await.unwrap();
        let b = s.heartbeat(heartbeat("b", 4, vec![])).await.unwrap();
        assert_eq!((a.tasks.len(), b.tasks.len()), (2, 2));
    }

    #[tokio::test]
    async fn a_silent_executor_is_lost_and_its_attempts_fail() {
        let dir = tempfile::tempdir().unwrap();
        let s = scheduler(dir.path(), 200);
        register(&s, "a", 1);
        let pending = submit(&s, 1);
        queued(&s, 1).await;
        let got = s.heartbeat(heartbeat("a", 1, vec![])).await.unwrap();
        assert_eq!(got.tasks.len(), 1);
        // No further heartbeat: the monitor declares the executor lost.
        let err = pending
            .into_iter()
            .next()
            .unwrap()
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.contains("executor a was lost"), "{err}");
        assert_eq!(s.counters().lost.load(Ordering::Relaxed), 1);
        let again = s.heartbeat(heartbeat("a", 1, vec![])).await.unwrap();
        assert!(again.unknown_executor);
    }

    #[tokio::test]
    async fn reports_complete_attempts_and_unlisted_attempts_fail() {
        let dir = tempfile::tempdir().unwrap();
        let s = scheduler(dir.path(), 10_000);
        register(&s, "a", 2);
        let mut pending = submit(&s, 2);
        queued(&s, 2).await;
        let got = s.heartbeat(heartbeat("a", 2, vec![])).await.unwrap();
        let ids: Vec<AttemptId> = got.tasks.iter().map(|t| t.attempt.clone()).collect();
        assert_eq!(ids.len(), 2);
        s.report(Report {
            protocol_version: CLUSTER_PROTOCOL_VERSION,
            executor_id: "a".into(),
            attempt: ids[0].clone(),
            outcome: Outcome::Sink { messages: vec![] },
            rows_read: 7,
        })
        .unwrap();
        // The second attempt is not listed any more, with no report.
        s.heartbeat(heartbeat("a", 2, vec![])).await.unwrap();
        let second = pending.pop().unwrap().await.unwrap();
        let first = pending.pop().unwrap().await.unwrap();
        let (done, failed) = if ids[0].task == 0 {
            (first, second)
        } else {
            (second, first)
        };
        assert!(matches!(done, Ok((Outcome::Sink { .. }, 7))));
        assert!(failed.unwrap_err().contains("without a report"));
    }

    #[tokio::test]
    async fn streaming_slots_are_reserved_at_once_and_hold_back_queued_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let s = scheduler(dir.path(), 10_000);
        register(&s, "a", 2);
        register(&s, "b", 2);
        let short = Duration::from_millis(100);
        let too_many = s.reserve("big", 5, short).await.unwrap_err();
        assert!(
            too_many.contains("needs 5 task slots") && too_many.contains("offer 4"),
            "{too_many}"
        );
        let placed = s.reserve("j1", 3, short).await.unwrap();
        let on_a = placed.iter().filter(|p| p.executor == "a").count();
        assert_eq!(
            (placed.len(), on_a.min(3 - on_a)),
            (3, 1),
            "spread: {placed:?}"
        );
        let busy = s.reserve("j2", 2, short).await.unwrap_err();
        assert!(
            busy.contains("1 of the cluster's 4 slots are free"),
            "{busy}"
        );
        // One slot is left for queued tasks, on the executor holding one
        // reserved slot.
        let _pending = submit(&s, 2);
        queued(&s, 2).await;
        let (one, two) = if on_a == 1 { ("a", "b") } else { ("b", "a") };
        let full = s.heartbeat(heartbeat(two, 2, vec![])).await.unwrap();
        assert_eq!(full.tasks.len(), 0);
        let got = s.heartbeat(heartbeat(one, 2, vec![])).await.unwrap();
        assert_eq!(got.tasks.len(), 1);
        s.release("j1");
        let ended = s.heartbeat(heartbeat(two, 2, vec![])).await.unwrap();
        assert_eq!(ended.ended_live_jobs, vec!["j1".to_string()]);
        assert_eq!(ended.tasks.len(), 1);
    }

    #[tokio::test]
    async fn another_protocol_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = scheduler(dir.path(), 10_000);
        let err = s
            .register(Register {
                protocol_version: CLUSTER_PROTOCOL_VERSION + 1,
                executor_id: "a".into(),
                slots: 1,
                http: None,
                live: None,
            })
            .unwrap_err();
        assert!(
            err.contains("version") && err.contains("same Sluice release"),
            "{err}"
        );
    }
}
