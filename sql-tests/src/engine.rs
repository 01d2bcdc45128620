//! The [`Engine`] seam: what the runner needs from whatever executes SQL.
//!
//! The `sluice` server implements these traits twice: in-process (embedded)
//! and over Flight SQL. This crate never sees DataFusion.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

/// What one statement produced.
#[derive(Debug, Clone)]
pub enum EngineOutput {
    /// A result set: the schema plus zero or more batches of that schema.
    ///
    /// A result set with no columns is treated like a statement that
    /// affected no rows.
    Rows {
        /// Schema of the result set (also used when `batches` is empty).
        schema: SchemaRef,
        /// The rows, in the order the engine produced them.
        batches: Vec<RecordBatch>,
    },
    /// A statement without a result set (DDL, `SET`, `INSERT`, ...).
    Statement {
        /// Rows affected, if the engine knows it; `statement count N`
        /// compares against this (unknown counts as 0).
        rows_affected: Option<u64>,
    },
}

/// An error from an [`Engine`] or [`EngineFactory`].
///
/// `statement error <regex>` and `query error <regex>` records match against
/// the `Display` text, so every variant displays its full message.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The statement failed (parse, plan or execution error, or a connector
    /// fault). `message` is the engine's complete error text.
    #[error("{message}")]
    Statement {
        /// Full error text, including any causes.
        message: String,
    },
    /// The engine (or a further connection named by a `connection` record)
    /// could not be started for a file.
    #[error("cannot start engine for {}: {message}", path.display())]
    Start {
        /// The `.slt` file the engine was for.
        path: PathBuf,
        /// Why it could not start.
        message: String,
    },
    /// A value of a result set cannot be rendered as text.
    #[error("cannot render column {column:?} of type {data_type} as text: {source}")]
    Render {
        /// Name of the column.
        column: String,
        /// Arrow type of the column.
        data_type: DataType,
        /// The formatting error.
        #[source]
        source: ArrowError,
    },
}

impl EngineError {
    /// A [`EngineError::Statement`] with the text of `err` and of its causes.
    ///
    /// Causes whose text already appears in the message (as DataFusion
    /// errors usually embed them) are not repeated.
    pub fn from_error(err: &(dyn Error + 'static)) -> Self {
        let mut message = err.to_string();
        let mut cause = err.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = c.source();
        }
        Self::Statement { message }
    }

    /// A [`EngineError::Statement`] with the given message.
    pub fn statement(message: impl Into<String>) -> Self {
        Self::Statement {
            message: message.into(),
        }
    }
}

/// One SQL session, used for a single `.slt` file (or one `connection` of it).
#[async_trait]
pub trait Engine: Send {
    /// Runs one SQL statement to completion.
    ///
    /// An `Err`'s `Display` text is what `statement error <regex>` and
    /// `query error <regex>` match against.
    async fn run(&mut self, sql: &str) -> Result<EngineOutput, EngineError>;

    /// Releases the session; called once when the file has finished,
    /// whether it passed or not.
    async fn shutdown(&mut self) {}
}

/// Everything an engine for one `.slt` file needs to know.
#[derive(Debug, Clone)]
pub struct FileContext {
    /// Path of the `.slt` file.
    pub path: PathBuf,
    /// A fresh, empty directory owned by this file; deleted when the file
    /// has finished.
    pub scratch_dir: PathBuf,
    /// Variables for this file: `SCRATCH` (the scratch directory) plus the
    /// runner's extra variables. With `control substitution on` a file
    /// refers to them as `$NAME` or `${NAME}`.
    pub vars: BTreeMap<String, String>,
}

/// Makes one [`Engine`] per `.slt` file.
#[async_trait]
pub trait EngineFactory: Send + Sync + 'static {
    /// Labels that `onlyif` / `skipif` records match, e.g.
    /// `["sluice", "embedded", "batch"]`.
    fn labels(&self) -> Vec<String>;

    /// Creates an isolated session for a file.
    ///
    /// Called lazily before the file's first statement, and once more for
    /// every further `connection <name>` the file uses; all of a file's
    /// sessions share the same `ctx`.
    async fn create(&self, ctx: &FileContext) -> Result<Box<dyn Engine>, EngineError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer failed: inner broke")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner broke")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn from_error_adds_causes_not_already_shown() {
        let err = Outer(Inner(std::io::Error::other("disk full")));
        let engine_err = EngineError::from_error(&err);
        assert_eq!(
            engine_err.to_string(),
            "outer failed: inner broke: disk full"
        );
    }

    #[test]
    fn statement_displays_message_verbatim() {
        let err = EngineError::statement("Error during planning: table 't' not found");
        assert_eq!(
            err.to_string(),
            "Error during planning: table 't' not found"
        );
    }
}
