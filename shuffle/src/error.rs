//! Errors of the shuffle tier.

use datafusion::error::DataFusionError;

/// A shuffle failure.
#[derive(Debug, thiserror::Error)]
pub enum ShuffleError {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// A stored record or wire message carries a version this build cannot read.
    #[error(
        "{what} has format version {found}, but this Sluice reads version {supported}; \
         run the same Sluice version on every node, or clear the shuffle store"
    )]
    Version {
        /// What was read.
        what: &'static str,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// Stored data cannot be decoded.
    #[error("corrupt shuffle data: {0}")]
    Corrupt(String),
    /// The object store refuses conditional puts.
    #[error(
        "the shuffle store at {store} ignores put-if-absent: a second create of {path} succeeded. \
         Sluice needs conditional creates to fence task attempts; use a store that honours \
         `If-None-Match: *` (S3, MinIO, the local file system)"
    )]
    NoPutIfAbsent {
        /// Store URL.
        store: String,
        /// Probe path.
        path: String,
    },
    /// Object store failure.
    #[error("shuffle store: {0}")]
    Store(#[from] object_store::Error),
    /// Arrow failure.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// DataFusion failure.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

impl From<ShuffleError> for DataFusionError {
    fn from(e: ShuffleError) -> Self {
        match e {
            ShuffleError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

/// Result with a [`ShuffleError`].
pub type Result<T, E = ShuffleError> = std::result::Result<T, E>;
