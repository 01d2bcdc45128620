//! Errors raised while parsing and planning.

use datafusion::error::DataFusionError;
use sluice_connectors::{ConnectorError, ErrorClass};

/// Result type of this crate.
pub type Result<T, E = PlannerError> = std::result::Result<T, E>;

/// An error raised while parsing, binding or planning a statement.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    /// The SQL text does not parse. Line and column are relative to the
    /// statement (or script, for script-level errors).
    #[error("syntax error: {message}")]
    Syntax {
        /// What the parser expected and found.
        message: String,
        /// 1-based line, when known.
        line: Option<u64>,
        /// 1-based column, when known.
        column: Option<u64>,
    },
    /// `${NAME}` has no value.
    #[error(
        "variable ${{{name}}} is not defined (line {line}, column {column}): \
         pass --var {name}=VALUE or set the environment variable SLUICE_VAR_{name}"
    )]
    UndefinedVariable {
        /// Variable name.
        name: String,
        /// 1-based line in the script.
        line: u64,
        /// 1-based column in the script.
        column: u64,
    },
    /// `SET` of a key Sluice does not know.
    #[error("unknown setting '{key}'; known settings are: {known}")]
    UnknownSetting {
        /// The key as written.
        key: String,
        /// What can be set.
        known: String,
    },
    /// `SET` with a value the setting cannot take.
    #[error("invalid value '{value}' for setting '{key}': {reason}")]
    InvalidSetting {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What is expected.
        reason: String,
    },
    /// A table that is not in the catalog.
    #[error("table '{name}' does not exist; create it first (tables: {known})")]
    TableNotFound {
        /// Table name.
        name: String,
        /// Tables that do exist.
        known: String,
    },
    /// A table that already exists.
    #[error("table '{name}' already exists; use CREATE TABLE IF NOT EXISTS or DROP TABLE first")]
    TableExists {
        /// Table name.
        name: String,
    },
    /// A schema that does not exist.
    #[error("schema '{name}' does not exist; create it first with CREATE SCHEMA {name}")]
    SchemaNotFound {
        /// Schema name.
        name: String,
    },
    /// A schema that already exists.
    #[error("schema '{name}' already exists; use CREATE SCHEMA IF NOT EXISTS or DROP SCHEMA first")]
    SchemaExists {
        /// Schema name.
        name: String,
    },
    /// DROP SCHEMA without CASCADE on a schema that holds tables.
    #[error(
        "schema '{name}' is not empty (tables: {tables}); drop them first or use DROP SCHEMA {name} CASCADE"
    )]
    SchemaNotEmpty {
        /// Schema name.
        name: String,
        /// The tables it holds.
        tables: String,
    },
    /// A statement or clause Sluice does not support.
    #[error("{what} is not supported: {hint}")]
    Unsupported {
        /// The construct.
        what: String,
        /// What to do instead.
        hint: String,
    },
    /// Written columns do not match the target.
    #[error("schema mismatch writing {target}: {reason}")]
    SchemaMismatch {
        /// Target table.
        target: String,
        /// The difference.
        reason: String,
    },
    /// The server's catalog document cannot be read or written.
    #[error("catalog: {message}")]
    Catalog {
        /// What failed, with the document's path.
        message: String,
    },
    /// One INSERT of a statement set failed; nothing of the set was
    /// published unless `published` says otherwise.
    #[error(
        "INSERT {index} of the statement set (into {target}) failed: {source}{}",
        published_note(.published, .swapped_back)
    )]
    StatementSet {
        /// 1-based position of the INSERT in the set.
        index: usize,
        /// Its target.
        target: String,
        /// 1-based line of the INSERT in the statement.
        line: u64,
        /// 1-based column of the INSERT in the statement.
        column: u64,
        /// Targets of the set already published when it failed (only a
        /// failure while publishing can leave any).
        published: Vec<String>,
        /// Targets published before the failure and then swapped back to
        /// their previous contents.
        swapped_back: Vec<String>,
        /// What failed.
        source: Box<PlannerError>,
    },
    /// Error from a connector.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// Error from DataFusion (planning or execution).
    #[error("{}", .0.strip_backtrace())]
    DataFusion(#[from] DataFusionError),
}

fn published_note(published: &[String], swapped_back: &[String]) -> String {
    let mut note = String::new();
    if !swapped_back.is_empty() {
        note.push_str(&format!(
            "; swapped back to their previous contents: {}",
            swapped_back.join(", ")
        ));
    }
    if published.is_empty() {
        note.push_str(if swapped_back.is_empty() {
            "; no target of the set was changed"
        } else {
            "; no other target of the set was changed"
        });
    } else {
        note.push_str(&format!(
            "; ALREADY PUBLISHED before the failure: {}",
            published.join(", ")
        ));
    }
    note
}

impl PlannerError {
    /// Who is at fault.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::StatementSet { source, .. } => source.class(),
            Self::Connector(e) => e.class(),
            Self::DataFusion(e) => datafusion_class(e),
            Self::Catalog { .. } => ErrorClass::External,
            _ => ErrorClass::User,
        }
    }

    /// Whether this is a syntax error (exit code 2 for scripts).
    pub fn is_syntax(&self) -> bool {
        if let Self::StatementSet { source, .. } = self {
            return source.is_syntax();
        }
        matches!(
            self,
            Self::Syntax { .. }
                | Self::UndefinedVariable { .. }
                | Self::DataFusion(DataFusionError::SQL(..))
        )
    }

    /// `(line, column)` inside the statement, when the error carries one.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            Self::Syntax {
                line: Some(l),
                column: Some(c),
                ..
            } => Some((*l, *c)),
            // Where the failing INSERT is, unless its own error says better.
            Self::StatementSet {
                source,
                line,
                column,
                ..
            } => source.position().or(Some((*line, *column))),
            Self::DataFusion(e) => {
                if let Some(d) = e.diagnostic()
                    && let Some(span) = d.span
                {
                    return Some((span.start.line, span.start.column));
                }
                position_in_message(&e.to_string())
            }
            _ => None,
        }
    }
}

/// Classifies a DataFusion error, looking through to Sluice's own errors.
pub fn datafusion_class(e: &DataFusionError) -> ErrorClass {
    match e.find_root() {
        DataFusionError::External(inner) => {
            if let Some(c) = inner.downcast_ref::<ConnectorError>() {
                c.class()
            } else if inner.downcast_ref::<object_store::Error>().is_some() {
                ErrorClass::External
            } else {
                ErrorClass::User
            }
        }
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => ErrorClass::External,
        DataFusionError::Internal(_) => ErrorClass::Internal,
        _ => ErrorClass::User,
    }
}

/// Extracts `Line: N, Column: M` as sqlparser writes positions in messages.
pub(crate) fn position_in_message(msg: &str) -> Option<(u64, u64)> {
    let at = msg.rfind("Line: ")?;
    let rest = &msg[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_position_in_sqlparser_messages() {
        assert_eq!(
            position_in_message("Expected: end of statement, found: x at Line: 3, Column: 14"),
            Some((3, 14))
        );
        assert_eq!(position_in_message("no position"), None);
    }
}
