//! Files on object storage: parquet, csv and json tables.
//!
//! # Table layout (format version 1)
//!
//! ```text
//! <root>/
//!   dt=2024-01-01/part-<job>-<task>-<attempt>-<n>.parquet   data (Hive partitions)
//!   _SUCCESS                                                marker for other readers
//!   _sluice/manifests/<version>.json                        committed file lists
//!   _sluice/staging/<job>/_lease.json                        owner and lease of a running job
//!   _sluice/staging/<job>/_intent.json                       moves a committing job makes
//!   _sluice/staging/<job>/...                                staged data files
//! ```
//!
//! Sluice readers read exactly the files listed by the newest manifest. A
//! directory without a manifest (data written by other tools) is read by
//! listing it, skipping names that start with `_` or `.`. Writers stage files
//! under `_sluice/staging/<job>/`; the commit moves the winning files into
//! place and then creates manifest `N+1` with a put-if-absent, which is the
//! atomic commit point. Files of an aborted or crashed job are never listed
//! by a manifest and are removed by the next writer's sweep or `sluice gc`.
//!
//! Other readers (which list the directory) see the moved files from the
//! moment they are moved, and replaced files until they are deleted just after
//! the commit point.

mod csv_errors;
mod csv_scan;
mod format;
mod layout;
mod manifest;
mod sink;
mod table;
mod writer;

pub use csv_errors::{NamedCsvSource, name_csv_errors};
pub use csv_scan::{CsvScanDescriptor, CsvScanExec};
pub use format::{FileFormatKind, FileTableConfig};
pub use layout::{GcReport, gc_table};
pub use manifest::{MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION, Manifest, ManifestFile};
pub use sink::FileSink;
pub use table::FileTable;
