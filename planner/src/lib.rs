//! Sluice's planner: the integration SQL dialect, scripts, the catalog and
//! the DataFusion session that binds statements to plans.

pub mod broadcast;
pub mod catalog;
pub mod codec;
pub mod config;
mod ddl;
pub mod dialect;
pub mod error;
pub mod lookup;
pub mod parser;
pub mod script;
pub mod session;
pub mod shared_scan;
pub mod stages;

pub use catalog::{Catalog, MemoryCatalog, PersistentCatalog, TableEntry};
pub use config::SluiceOptions;
pub use error::{PlannerError, Result};
pub use parser::{SluiceStatement, parse_statement};
pub use script::{ScriptStatement, caret_snippet, split, substitute};
pub use session::{
    DEFAULT_CATALOG, DEFAULT_SCHEMA, Planned, RunContext, SluiceSession, StatementKind, WriteJob,
    WriteSet,
};
