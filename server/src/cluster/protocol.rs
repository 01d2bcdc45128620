//! The coordinator's executor protocol: Flight `do_action` calls whose
//! bodies are JSON messages carrying [`CLUSTER_PROTOCOL_VERSION`].
//!
//! - `cluster.register`: an executor announces itself and its slots; the
//!   answer names the shuffle store and the heartbeat timing.
//! - `cluster.heartbeat`: every heartbeat interval an executor reports its
//!   free slots and running attempts and receives new tasks (pull, so a
//!   coordinator never needs to reach executors).
//! - `cluster.report`: an attempt's outcome: the committed shuffle index, a
//!   sink task's commit messages, or an error.
//! - `cluster.leave`: a draining executor has handed back or finished
//!   everything and goes away.
//!
//! Streaming jobs run as gangs: the coordinator reserves slots for all of a
//! job's tasks on chosen executors, pins each task to its executor, and
//! names the job in `ended_live_jobs` when it ends so executors drop its
//! channels. Their tasks exchange rows over each executor's live service
//! ([`sluice_shuffle::LiveService`]), whose address `cluster.register`
//! announces.
//!
//! Plans travel as [`sluice_planner::codec`] bytes, which carry their own
//! version; shuffle indexes in the shuffle format, which carries its own.

use std::collections::BTreeMap;

use arrow_flight::Action;
use arrow_flight::flight_service_client::FlightServiceClient;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sluice_connectors::{CommitMessage, StoreDeclaration};
use sluice_shuffle::AttemptId;
use tonic::transport::Channel;

/// Version of the executor protocol. Coordinator and executors must agree.
pub(crate) const CLUSTER_PROTOCOL_VERSION: u32 = 2;

pub(crate) const ACTION_REGISTER: &str = "cluster.register";
pub(crate) const ACTION_HEARTBEAT: &str = "cluster.heartbeat";
pub(crate) const ACTION_REPORT: &str = "cluster.report";
pub(crate) const ACTION_LEAVE: &str = "cluster.leave";

/// Largest message either side sends (plans of wide stages are large).
pub(crate) const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// `cluster.register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Register {
    pub protocol_version: u32,
    pub executor_id: String,
    pub slots: u32,
    /// Where the executor serves `/healthz` and `/metrics`.
    pub http: Option<String>,
    /// Where the executor serves its live channels to other processes
    /// (streaming mode), as they reach it.
    #[serde(default)]
    pub live: Option<String>,
}

/// Answer to `cluster.register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Registered {
    pub protocol_version: u32,
    /// The shuffle store every task reads and writes (a directory or URL).
    pub shuffle_store: String,
    /// The shuffle worker writers send their blocks to, if any.
    pub shuffle_worker: Option<String>,
    pub heartbeat_ms: u64,
    /// An executor silent this long is declared lost.
    pub lost_after_ms: u64,
}

/// `cluster.heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub protocol_version: u32,
    pub executor_id: String,
    /// Slots free for new tasks (0 while draining).
    pub free_slots: u32,
    /// Attempts running now.
    pub running: Vec<AttemptId>,
    pub draining: bool,
}

/// Answer to `cluster.heartbeat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HeartbeatReply {
    pub protocol_version: u32,
    /// New tasks to run.
    pub tasks: Vec<TaskAssignment>,
    /// Attempts to stop: their job ended, or they were given to another
    /// executor.
    pub cancel: Vec<AttemptId>,
    /// The coordinator does not know this executor (it restarted, or
    /// declared the executor lost): stop every attempt and register again.
    pub unknown_executor: bool,
    /// Streaming jobs that ended: drop their channels.
    #[serde(default)]
    pub ended_live_jobs: Vec<String>,
}

/// What a task's root writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OutputKind {
    /// Shuffle output, committed under the attempt's winner record.
    Shuffle,
    /// A sink stage: the rows are commit messages.
    Sink,
    /// A map task of a streaming job: it sends its rows on live channels.
    Live,
}

/// One task attempt to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskAssignment {
    pub attempt: AttemptId,
    pub output: OutputKind,
    /// The encoded plan instance, base64.
    pub plan: String,
    /// The session's DataFusion settings (`datafusion.*`).
    pub config: BTreeMap<String, String>,
    /// Object stores the plan may read, as declared: the executor builds
    /// and registers them (resolving secrets itself) before decoding.
    #[serde(default)]
    pub stores: Vec<StoreDeclaration>,
    /// The task slot this task shares with the other tasks of its
    /// streaming job's slot group (one task of each stage, as Flink's slot
    /// sharing); `None`: the task takes a slot of its own.
    #[serde(default)]
    pub slot_group: Option<String>,
}

/// `cluster.report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    pub protocol_version: u32,
    pub executor_id: String,
    pub attempt: AttemptId,
    pub outcome: Outcome,
    /// Rows the attempt's sources read.
    pub rows_read: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// Shuffle output committed: the winning attempt's index (shuffle
    /// format, base64). A late attempt reports the earlier winner's.
    Shuffle { index: String },
    /// A sink task's commit messages.
    Sink { messages: Vec<CommitMessage> },
    /// A streaming map task sent all its rows.
    Live,
    /// The attempt failed.
    Failed {
        message: String,
        /// Whether another attempt may succeed; `false` when the user's
        /// input (data, options, SQL) must change first.
        #[serde(default = "retryable_by_default")]
        retryable: bool,
    },
}

fn retryable_by_default() -> bool {
    true
}

/// `cluster.leave`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Leave {
    pub protocol_version: u32,
    pub executor_id: String,
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn unb64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// Refuses a peer speaking another protocol version.
pub(crate) fn check_version(peer: u32, who: &str) -> Result<(), String> {
    if peer == CLUSTER_PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(format!(
            "{who} speaks cluster protocol version {peer}, this process version \
             {CLUSTER_PROTOCOL_VERSION}; run the same Sluice release on the coordinator and \
             every executor"
        ))
    }
}

/// The executor's side of the protocol.
#[derive(Debug, Clone)]
pub(crate) struct CoordinatorClient {
    url: String,
    inner: FlightServiceClient<Channel>,
}

impl CoordinatorClient {
    /// Connects to the coordinator's cluster endpoint.
    pub(crate) async fn connect(url: &str) -> Result<Self, String> {
        let channel = Channel::from_shared(url.to_string())
            .map_err(|e| format!("--coordinator {url}: not a URL: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| {
                format!(
                    "cannot reach the coordinator at {url}: {e}; check --coordinator (the \
                     coordinator's --cluster-bind address) and that it runs"
                )
            })?;
        Ok(Self {
            url: url.to_string(),
            inner: FlightServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }

    /// The coordinator's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Sends one action and decodes its single answer.
    pub(crate) async fn call<Q: Serialize, A: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        body: &Q,
    ) -> Result<A, tonic::Status> {
        let body = serde_json::to_vec(body).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let mut inner = self.inner.clone();
        let mut results = inner.do_action(Action::new(kind, body)).await?.into_inner();
        let result = results
            .message()
            .await?
            .ok_or_else(|| tonic::Status::internal(format!("{kind} returned nothing")))?;
        serde_json::from_slice(&result.body)
            .map_err(|e| tonic::Status::internal(format!("{kind} answer: {e}")))
    }
}
