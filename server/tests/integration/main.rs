//! The server crate's one integration-test binary: the `.slt` suites run
//! embedded, plus CLI, fault and object-store tests of the real `sluice`
//! binary, all as libtest trials (so `cargo nextest` lists each).

mod azure;
mod cli;
mod clickhouse;
mod cluster;
mod conformance;
mod db_partitions;
mod fault;
mod flight;
mod lookup;
mod mysql;
mod postgres;
mod s3;
mod slt_cmd;
mod staged;
mod statement_set;
mod streaming;
mod support;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use sluice_server::engine::{EmbeddedEngineFactory, TestMode};
use sluice_sql_tests::{RunnerConfig, run_main_with};

fn main() -> ExitCode {
    // The secrets suite declares a table with secret('SLT_S3_KEY'); set it
    // before any thread starts.
    // SAFETY: nothing else runs yet; no other thread reads the environment.
    unsafe { std::env::set_var("SLUICE_SECRET_SLT_S3_KEY", "slt-secret-value-never-printed") };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let suites = root.join("sql-tests/suites");
    let mut config = RunnerConfig {
        name_prefix: "slt::".to_string(),
        ..RunnerConfig::default()
    };
    config.vars.insert(
        "TESTDATA".to_string(),
        root.join("sql-tests/data")
            .canonicalize()
            .expect("sql-tests/data")
            .display()
            .to_string(),
    );
    let mut trials = cli::trials();
    trials.extend(fault::trials());
    trials.extend(s3::trials());
    trials.extend(azure::trials());
    trials.extend(postgres::trials());
    trials.extend(mysql::trials());
    trials.extend(clickhouse::trials());
    trials.extend(lookup::trials());
    trials.extend(staged::trials());
    trials.extend(cluster::trials());
    trials.extend(statement_set::trials());
    trials.extend(streaming::trials());
    trials.extend(slt_cmd::trials());
    trials.extend(conformance::trials());
    trials.extend(db_partitions::trials());
    trials.extend(flight::trials());
    trials.extend(flight::slt_trials(&config, &suites));
    let staged = RunnerConfig {
        name_prefix: "slt-staged::".to_string(),
        ..config.clone()
    };
    trials.extend(
        sluice_sql_tests::slt_trials(
            &staged,
            Arc::new(EmbeddedEngineFactory::staged()),
            std::slice::from_ref(&suites),
        )
        .expect("slt suites"),
    );
    run_main_with(
        config,
        Arc::new(EmbeddedEngineFactory::new(4, Some(TestMode::Streaming))),
        &[suites],
        trials,
    )
}
