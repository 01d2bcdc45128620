//! Sluice's shuffle tier.
//!
//! Staged batch mode cuts plans into stages at exchanges; each stage's tasks
//! write their output partitions through the shuffle tier to object storage.
//!
//! - [`format`]: one data object per map-task attempt, holding every output
//!   partition as compressed Arrow IPC blocks, plus a versioned index.
//! - [`store`]: the layout on `object_store`, commit fencing (one winner per
//!   task through put-if-absent), job leases and clean-up.
//! - [`ShuffleWriterExec`] / [`ShuffleReaderExec`]: the exchange operators at
//!   the root and leaves of stage plans.
//! - [`ShuffleService`] / [`ShuffleClient`]: the Flight shuffle service
//!   (`do_put`, `do_get`, job actions) a shuffle worker serves.
//! - [`LiveExchange`], [`LiveWriterExec`], [`LiveReaderExec`]: streaming
//!   mode's exchanges, bounded channels from map tasks to consumer tasks;
//!   [`LiveService`] serves them over Flight to consumers in other
//!   processes.
//! - [`MemoryBudget`]: bytes buffered by a worker, with back-pressure.
//! - [`shuffle_metrics`]: process-wide counters for `/metrics`.

mod budget;
pub mod client;
mod data;
mod error;
pub mod format;
mod live;
pub mod live_flight;
mod local;
mod metrics;
mod reader;
pub mod service;
pub mod store;
mod writer;

pub use budget::{BudgetPermit, MemoryBudget};
pub use client::ShuffleClient;
pub use error::{Result, ShuffleError};
pub use format::{AttemptIndex, ShuffleCompression};
pub use live::{ChannelKey, Frame, LiveExchange, LiveReaderExec, LiveRegistry, LiveWriterExec};
pub use live_flight::LiveService;
pub use metrics::{ShuffleMetrics, shuffle_metrics};
pub use reader::{ReadSpec, ShuffleReaderExec};
pub use service::ShuffleService;
pub use store::{
    AttemptId, Commit, JobRecord, LeaseHolder, ReclaimedJob, ShuffleStore, StageRecord,
};
pub use writer::{ShuffleOutput, ShuffleWriterExec, WriterOptions, writer_summary_schema};

/// Version of the shuffle wire protocol (Flight `do_put` / `do_get`
/// descriptors and tickets). Peers with another major version refuse to talk.
pub const SHUFFLE_PROTOCOL_VERSION: u32 = 1;

/// Version of the stored shuffle format: one object per task attempt holding
/// all its output partitions as blocks, plus a small index manifest.
pub const SHUFFLE_FORMAT_VERSION: u32 = 1;
