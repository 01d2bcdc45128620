//! Sluice as a cluster: a coordinator (`sluice server --role coordinator`)
//! cuts jobs into stages and hands their task attempts to executors
//! (`sluice executor`), which pull them with their heartbeats, run them and
//! report each attempt's committed shuffle output or commit messages.
//!
//! - Stage plans travel in the executor wire format of
//!   [`sluice_planner::codec`]; every task reads and writes the shared
//!   shuffle store, so a task that runs again (anywhere) reads the same
//!   committed inputs, and readers need no executor to stay up.
//! - An executor that misses its heartbeats is declared lost; its attempts
//!   fail and the stage runner retries them on the executors left.
//! - On SIGTERM an executor drains: it takes no new task, lets the running
//!   ones finish for a while, hands the rest back and leaves.

pub mod executor;
pub(crate) mod protocol;
pub mod scheduler;

pub use scheduler::{ClusterScheduler, Liveness};
