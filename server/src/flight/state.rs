//! Server-wide state: client sessions, prepared statements, results waiting
//! for their DoGet, and counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use sluice_planner::{PersistentCatalog, RunContext, SluiceSession};
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterScheduler;
use crate::embedded::EmbeddedSession;

/// Name of the session cookie (Flight SQL session specification).
pub(crate) const SESSION_COOKIE: &str = "arrow_flight_session_id";

/// How the server builds sessions.
#[derive(Debug, Clone)]
pub(crate) struct SessionDefaults {
    /// Parallelism of each statement.
    pub target_partitions: usize,
    /// Warehouse root URL (ends with `/`).
    pub warehouse: String,
    /// Idle sessions are closed after this long.
    pub idle_timeout: Duration,
}

/// One client session: its own DataFusion context (SET values, temporary
/// tables and views) over the shared catalog.
pub(crate) struct ClientSession {
    pub id: String,
    pub user: Option<String>,
    pub engine: EmbeddedSession,
    pub cast_view_types: AtomicBool,
    last_used: Mutex<Instant>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("id", &self.id)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    pub(crate) fn session(&self) -> &SluiceSession {
        self.engine.session()
    }

    fn touch(&self) {
        *self.last_used.lock().expect("session clock") = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used.lock().expect("session clock").elapsed()
    }
}

/// Request extension carrying the caller's session.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle(pub Arc<ClientSession>);

/// A statement prepared by a client.
#[derive(Debug)]
pub(crate) struct PreparedStatement {
    /// SQL with `?` numbered as `$n`.
    pub sql: String,
    /// Session that prepared it.
    pub session_id: String,
    /// Whether it returns rows.
    pub is_query: bool,
    /// Result schema as sent to clients.
    pub dataset_schema: SchemaRef,
    /// Parameters bound by a DoPut, applied at the next execution.
    pub params: Mutex<Option<RecordBatch>>,
}

/// A result waiting for the client's DoGet.
pub(crate) enum PendingResult {
    /// A query: runs when fetched.
    Query {
        plan: Arc<dyn ExecutionPlan>,
        session: Arc<ClientSession>,
        schema: SchemaRef,
        cancel: CancellationToken,
        created: Instant,
    },
    /// A statement that ran at GetFlightInfo (DDL, DML, SET): its result.
    Batch {
        batch: RecordBatch,
        created: Instant,
    },
}

impl PendingResult {
    fn created(&self) -> Instant {
        match self {
            Self::Query { created, .. } | Self::Batch { created, .. } => *created,
        }
    }
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub requests: AtomicU64,
    pub errors_user: AtomicU64,
    pub errors_unimplemented: AtomicU64,
    pub errors_internal: AtomicU64,
    pub errors_auth: AtomicU64,
    pub queries: AtomicU64,
    pub updates: AtomicU64,
    pub ingests: AtomicU64,
    pub rows_sent: AtomicU64,
    pub rows_written: AtomicU64,
    pub running: AtomicU64,
}

/// Everything the server shares between requests.
pub(crate) struct ServerState {
    pub catalog: Arc<PersistentCatalog>,
    pub runtime: Arc<RuntimeEnv>,
    pub defaults: SessionDefaults,
    sessions: Mutex<HashMap<String, Arc<ClientSession>>>,
    pub prepared: Mutex<HashMap<String, Arc<PreparedStatement>>>,
    results: Mutex<HashMap<String, PendingResult>>,
    /// Cancellation of queries being streamed, by ticket id.
    pub running: Mutex<HashMap<String, CancellationToken>>,
    pub metrics: Metrics,
    pub shutting_down: AtomicBool,
    /// Cancels every running statement (end of the shutdown grace period).
    pub cancel_all: CancellationToken,
    /// A coordinator's scheduler: staged jobs run on its executors.
    pub cluster: Option<Arc<ClusterScheduler>>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// Results not fetched within this long are dropped.
const RESULT_TTL: Duration = Duration::from_secs(600);

impl ServerState {
    pub(crate) fn new(
        catalog: Arc<PersistentCatalog>,
        runtime: Arc<RuntimeEnv>,
        defaults: SessionDefaults,
        cluster: Option<Arc<ClusterScheduler>>,
    ) -> Self {
        Self {
            catalog,
            runtime,
            defaults,
            sessions: Mutex::default(),
            prepared: Mutex::default(),
            results: Mutex::default(),
            running: Mutex::default(),
            metrics: Metrics::default(),
            shutting_down: AtomicBool::new(false),
            cancel_all: CancellationToken::new(),
            cluster,
        }
    }

    /// A new planner session over the shared catalog.
    pub(crate) fn new_planner_session(&self) -> SluiceSession {
        let config =
            SessionConfig::new().with_target_partitions(self.defaults.target_partitions.max(1));
        let session = SluiceSession::with_catalog(
            config,
            Arc::clone(&self.runtime),
            Arc::clone(&self.catalog) as _,
            RunContext::default(),
        )
        .with_warehouse(self.defaults.warehouse.clone());
        if self.cluster.is_some() {
            // A coordinator runs jobs staged, on its executors, unless a
            // session sets another mode.
            let state = session.context().state_ref();
            let mut state = state.write();
            if let Err(e) = state
                .config_mut()
                .options_mut()
                .set("sluice.runtime_mode", "batch")
            {
                tracing::error!("cannot default sessions to batch mode: {e}");
            }
        }
        session
    }

    /// The session `id`, created when unknown. Sessions belong to the user
    /// that created them.
    pub(crate) fn session(
        &self,
        id: &str,
        user: Option<&str>,
    ) -> Result<Arc<ClientSession>, tonic::Status> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if let Some(s) = sessions.get(id) {
            if s.user.as_deref() != user {
                return Err(tonic::Status::permission_denied(
                    "this session belongs to another user; drop the session cookie",
                ));
            }
            s.touch();
            return Ok(Arc::clone(s));
        }
        let session = Arc::new(ClientSession {
            id: id.to_string(),
            user: user.map(str::to_string),
            engine: EmbeddedSession::from_session(self.new_planner_session(), false)
                .with_cluster(self.cluster.clone()),
            cast_view_types: AtomicBool::new(true),
            last_used: Mutex::new(Instant::now()),
        });
        sessions.insert(id.to_string(), Arc::clone(&session));
        tracing::debug!(session = id, user = user.unwrap_or("-"), "session opened");
        Ok(session)
    }

    /// Closes a session; its prepared statements go with it.
    pub(crate) fn close_session(&self, id: &str) -> bool {
        let removed = self
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(id)
            .is_some();
        self.prepared
            .lock()
            .expect("prepared lock")
            .retain(|_, p| p.session_id != id);
        removed
    }

    pub(crate) fn session_count(&self) -> usize {
        self.sessions.lock().expect("sessions lock").len()
    }

    pub(crate) fn put_result(&self, id: String, result: PendingResult) {
        self.results
            .lock()
            .expect("results lock")
            .insert(id, result);
    }

    pub(crate) fn take_result(&self, id: &str) -> Option<PendingResult> {
        self.results.lock().expect("results lock").remove(id)
    }

    /// Cancels a result, whether it waits for its DoGet or is streaming.
    pub(crate) fn cancel(&self, id: &str) -> bool {
        let pending = self.take_result(id).is_some();
        let running = self
            .running
            .lock()
            .expect("running lock")
            .remove(id)
            .map(|t| t.cancel())
            .is_some();
        pending || running
    }

    /// Drops idle sessions and unfetched results.
    pub(crate) fn expire(&self) {
        let idle = self.defaults.idle_timeout;
        let expired: Vec<String> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, s)| s.idle_for() > idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::debug!(session = %id, "idle session expired");
            self.close_session(&id);
        }
        self.results
            .lock()
            .expect("results lock")
            .retain(|_, r| r.created().elapsed() < RESULT_TTL);
    }

    pub(crate) fn count(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
