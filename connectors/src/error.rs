//! Errors raised by connectors.

use datafusion::error::DataFusionError;

/// Result type of this crate.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// Who is at fault for an error, which decides whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The user's input (SQL, options, data) must change; retrying cannot help.
    User,
    /// An external system (network, store, database) failed; a retry may help.
    External,
    /// A bug in Sluice.
    Internal,
}

/// An error raised by a source or sink.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A table option that the connector does not know.
    #[error("unknown option '{key}' for connector '{connector}'; valid options are: {valid}")]
    UnknownOption {
        /// Connector name.
        connector: String,
        /// The offending option key.
        key: String,
        /// Comma-separated list of valid keys.
        valid: String,
    },
    /// A required option is missing.
    #[error("option '{key}' is required for connector '{connector}': {hint}")]
    MissingOption {
        /// Connector name.
        connector: String,
        /// The missing key.
        key: String,
        /// What to put there.
        hint: String,
    },
    /// An option has a value the connector cannot use.
    #[error("invalid value for option '{key}': {reason}")]
    InvalidOption {
        /// The offending option key.
        key: String,
        /// Why the value is invalid and what is expected.
        reason: String,
    },
    /// The connector name is not known.
    #[error("unknown connector '{name}'; available connectors are: {available}")]
    UnknownConnector {
        /// Requested connector.
        name: String,
        /// Comma-separated list of known connectors.
        available: String,
    },
    /// `secret('NAME')` could not be resolved.
    #[error(
        "secret('{name}') is not defined: set the environment variable SLUICE_SECRET_{name} \
         or add '{name}' to the secrets file named by SLUICE_SECRETS_FILE"
    )]
    SecretNotFound {
        /// Secret name.
        name: String,
    },
    /// The secrets file could not be read.
    #[error("cannot read secrets file {path}: {reason}")]
    SecretsFile {
        /// Path of the file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A location is not a URL or path Sluice can use.
    #[error("invalid location '{location}': {reason}")]
    InvalidLocation {
        /// The location as written.
        location: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A location does not exist.
    #[error("{url} does not exist: check the path, bucket and credentials")]
    NotFound {
        /// URL that was not found.
        url: String,
    },
    /// The object store failed.
    #[error("object store error at {url}: {source}")]
    Store {
        /// URL being accessed.
        url: String,
        /// Underlying error.
        #[source]
        source: object_store::Error,
    },
    /// The table's files do not match its declaration.
    #[error("schema mismatch in {target}: {reason}")]
    SchemaMismatch {
        /// Table or file.
        target: String,
        /// The difference.
        reason: String,
    },
    /// A sink cannot perform the requested write.
    #[error("cannot write to {target}: {reason}")]
    UnsupportedWrite {
        /// Target table or location.
        target: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The table's stored format (manifest) is newer than this build understands,
    /// or is corrupt.
    #[error("table metadata at {url} cannot be used: {reason}")]
    Metadata {
        /// Location of the metadata.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A concurrent writer kept committing before us.
    #[error(
        "commit to {target} lost {attempts} races with concurrent writers; retry the statement"
    )]
    CommitConflict {
        /// Target table.
        target: String,
        /// How many attempts were made.
        attempts: usize,
    },
    /// A published target could not be put back to its previous contents.
    #[error(
        "cannot swap {target} back to its previous contents: {reason}; it keeps the published rows"
    )]
    SwapBack {
        /// Target table.
        target: String,
        /// Why not.
        reason: String,
    },
    /// A database refused or failed an operation.
    #[error("{connector} {on}: cannot {action}: {message}{}", if hint.is_empty() { String::new() } else { format!("; {hint}") })]
    Database {
        /// Connector name.
        connector: &'static str,
        /// `table T at HOST:PORT/DB` or `HOST:PORT/DB`; never a password.
        on: String,
        /// What Sluice was doing (`connect`, `read`, `write`, `commit`, ...).
        action: String,
        /// The database's message.
        message: String,
        /// What to do about it, or empty.
        hint: String,
        /// Whether a retry can help.
        class: ErrorClass,
    },
    /// Error from DataFusion or arrow.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// A bug in Sluice.
    #[error("internal error: {0}; please report it")]
    Internal(String),
}

impl ConnectorError {
    /// Who is at fault.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::UnknownOption { .. }
            | Self::MissingOption { .. }
            | Self::InvalidOption { .. }
            | Self::UnknownConnector { .. }
            | Self::SecretNotFound { .. }
            | Self::SecretsFile { .. }
            | Self::InvalidLocation { .. }
            | Self::NotFound { .. }
            | Self::SchemaMismatch { .. }
            | Self::UnsupportedWrite { .. }
            | Self::Metadata { .. } => ErrorClass::User,
            Self::Store { .. } | Self::CommitConflict { .. } | Self::SwapBack { .. } => {
                ErrorClass::External
            }
            Self::Database { class, .. } => *class,
            Self::DataFusion(_) | Self::Internal(_) => ErrorClass::Internal,
        }
    }

    /// Wraps an object store error with the URL it concerns, turning
    /// "not found" into [`ConnectorError::NotFound`].
    pub fn store(url: impl Into<String>, source: object_store::Error) -> Self {
        let url = url.into();
        match source {
            object_store::Error::NotFound { .. } => Self::NotFound { url },
            source => Self::Store { url, source },
        }
    }
}

impl From<ConnectorError> for DataFusionError {
    fn from(e: ConnectorError) -> Self {
        match e {
            ConnectorError::DataFusion(e) => e,
            e => DataFusionError::External(Box::new(e)),
        }
    }
}
