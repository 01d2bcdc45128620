//! Sluice sources and sinks.
//!
//! Every connector turns a table declaration (connector name plus options)
//! into a DataFusion [`TableProvider`](datafusion::catalog::TableProvider)
//! for reading and a [`Sink`] for writing. Sinks follow one two-phase
//! protocol (see [`sink`]): each task attempt stages its output and returns a
//! [`CommitMessage`]; the coordinator keeps one winning attempt per task and
//! makes one idempotent commit, or aborts.

pub mod clickhouse;
pub(crate) mod database;
pub mod error;
pub mod factory;
pub mod file;
pub mod lookup;
pub mod mysql;
pub mod options;
pub mod postgres;
pub mod secrets;
pub mod sink;
pub mod store;

pub use error::{ConnectorError, ErrorClass, Result};
pub use factory::{ConnectorFactory, TableSpec};
pub use options::{OptionValue, TableOptions};
pub use secrets::SecretResolver;
pub use sink::{
    CommitMessage, CommitOutcome, JobCommit, PreparedCommit, Revocable, Sink, SinkDescriptor,
    SinkExec, SinkWriter, WriteMode,
};
pub use store::{StoreDeclaration, StoreRegistry};
