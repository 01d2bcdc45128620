//! sqllogictest runner for Sluice.
//!
//! Runs `.slt` files against an [`Engine`], so the same files test Sluice
//! embedded (in-process) and over Flight SQL. The `sluice` server crate
//! implements [`EngineFactory`]; this crate knows nothing of DataFusion.
//!
//! Each `.slt` file is one libtest trial: it gets a fresh engine (one
//! isolated session), a fresh scratch directory (`SCRATCH`), and files run
//! in parallel. Results are compared the way DataFusion's sqllogictest does
//! (see [`RunnerConfig`]); `--complete` rewrites the files with the actual
//! results.
//!
//! A `harness = false` test binary:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
//!     sluice_sql_tests::run_main(std::sync::Arc::new(MyFactory::default()), &[root])
//! }
//! ```
//!
//! The [`tpch`] module has TPC-H for tests and benchmarks: the 22 queries,
//! the tables generated as Parquet, and a comparison of result sets.

pub mod conformance;
mod convert;
mod db;
mod discover;
mod engine;
mod harness;
mod runner;
pub mod tpch;

#[cfg(test)]
mod test_engine;
#[cfg(test)]
mod tests;

pub use discover::{SltFile, discover};
pub use engine::{Engine, EngineError, EngineFactory, EngineOutput, FileContext};
pub use harness::{parse_args, run_main, run_main_with, run_with_args, slt_trials};
pub use runner::{
    COMPLETE_ENV, RunnerConfig, RunnerError, SCRATCH_VAR, run_file, run_file_blocking,
};

/// Re-exported so callers need not depend on libtest-mimic themselves.
pub use libtest_mimic::{Arguments, Conclusion, Failed, Trial};
