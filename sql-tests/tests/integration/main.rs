//! Self-test of the runner as a `harness = false` binary, the way the server
//! crate uses it: `.slt` files under `slt/` against the toy engine from
//! `src/test_engine.rs`, plus plain trials.
//!
//! `cargo test -p sluice-sql-tests --test integration -- --complete`
//! rewrites the files with the actual results.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

// `test_engine` names these through `crate::`.
use sluice_sql_tests::{
    Engine, EngineError, EngineFactory, EngineOutput, Failed, FileContext, RunnerConfig, Trial,
};

#[path = "../../src/test_engine.rs"]
mod test_engine;

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/slt");
    let mut config = RunnerConfig::default();
    config
        .vars
        .insert("GREETING".to_owned(), "hello".to_owned());
    let plain = vec![Trial::test(
        "plain::engine_error_display",
        engine_error_display,
    )];
    sluice_sql_tests::run_main_with(config, Arc::new(test_engine::MemoryFactory), &[root], plain)
}

fn engine_error_display() -> Result<(), Failed> {
    let err = EngineError::statement("Error during planning: table 't' not found");
    if err.to_string() != "Error during planning: table 't' not found" {
        return Err(format!("unexpected display: {err}").into());
    }
    Ok(())
}
