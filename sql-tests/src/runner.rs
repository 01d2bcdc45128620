//! Running (or completing) one `.slt` file against a fresh engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqllogictest::{
    ColumnTypeValidator, Control, DefaultColumnType, Normalizer, Record, Runner, TestError,
    default_column_validator, default_validator, strict_column_validator,
};

use crate::db::EngineDb;
use crate::engine::{EngineFactory, FileContext};

/// The variable holding a file's scratch directory.
pub const SCRATCH_VAR: &str = "SCRATCH";

/// Environment variable that turns on complete mode when set to `1` or
/// `true` (same as passing `--complete`).
pub const COMPLETE_ENV: &str = "SLUICE_SLT_COMPLETE";

/// How `.slt` files are found, named and run.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Prefix of every file's trial name; the rest is the path relative to
    /// its root, e.g. `slt::ddl/create_table.slt`. Default `slt::`.
    pub name_prefix: String,
    /// Extra variables for every file, next to `SCRATCH` (which wins on a
    /// clash). Passed to the engine in [`FileContext::vars`] and available
    /// to `control substitution on`.
    pub vars: BTreeMap<String, String>,
    /// Rewrite each file in place with the actual results instead of
    /// checking them.
    pub complete: bool,
    /// Only files whose relative path contains this string.
    pub filter: Option<String>,
    /// Start every file with `control substitution on`, so `$SCRATCH` works
    /// without that line (but every `$` in SQL is then a variable).
    /// Default off, as in DataFusion.
    pub substitution: bool,
    /// Fail when a query's column types (`query ITR`) differ from the
    /// actual ones, as DataFusion does. Default on.
    pub strict_column_types: bool,
    /// Worker threads of the tokio runtime made for each file. Default
    /// `min(4, available parallelism)`; files themselves run in parallel on
    /// the test harness's threads.
    pub worker_threads: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            name_prefix: "slt::".to_owned(),
            vars: BTreeMap::new(),
            complete: false,
            filter: None,
            substitution: false,
            strict_column_types: true,
            worker_threads: std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(4),
        }
    }
}

/// Why a file, or finding the files, failed.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A test root or a directory under it could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Discover {
        /// The path that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `.slt` path is not UTF-8, which sqllogictest cannot open.
    #[error("path is not UTF-8: {}", path.display())]
    NonUtf8Path {
        /// The offending path.
        path: PathBuf,
    },
    /// Two roots hold a file with the same relative path, so their trials
    /// would have the same name.
    #[error("two test files would both be named {name:?}")]
    DuplicateName {
        /// The trial name.
        name: String,
    },
    /// The scratch directory could not be created.
    #[error("cannot create scratch directory: {source}")]
    Scratch {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The tokio runtime could not be built.
    #[error("cannot build tokio runtime: {source}")]
    Runtime {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A record failed: a parse error, a statement or query that failed or
    /// succeeded unexpectedly, or a result mismatch. Shows file:line and
    /// the expected and actual output.
    #[error("{source}")]
    Test {
        /// sqllogictest's error.
        #[source]
        source: TestError,
    },
    /// Complete mode could not rewrite the file.
    #[error("cannot complete {}: {message}", path.display())]
    Complete {
        /// The file being rewritten.
        path: PathBuf,
        /// What went wrong (sqllogictest's error is not `Send`, so kept as text).
        message: String,
    },
}

/// Runs one `.slt` file (or, with [`RunnerConfig::complete`], rewrites it
/// with the actual results) against a fresh engine from `factory`, in a
/// fresh scratch directory that is deleted afterwards.
pub async fn run_file(
    config: &RunnerConfig,
    factory: Arc<dyn EngineFactory>,
    path: &Path,
) -> Result<(), RunnerError> {
    if path.to_str().is_none() {
        return Err(RunnerError::NonUtf8Path {
            path: path.to_owned(),
        });
    }
    let scratch = tempfile::Builder::new()
        .prefix("sluice-slt-")
        .tempdir()
        .map_err(|source| RunnerError::Scratch { source })?;
    let mut vars = config.vars.clone();
    vars.insert(
        SCRATCH_VAR.to_owned(),
        scratch.path().to_string_lossy().into_owned(),
    );
    let ctx = Arc::new(FileContext {
        path: path.to_owned(),
        scratch_dir: scratch.path().to_owned(),
        vars,
    });

    let labels = factory.labels();
    let make_conn = {
        let ctx = Arc::clone(&ctx);
        move || {
            let factory = Arc::clone(&factory);
            let ctx = Arc::clone(&ctx);
            async move { factory.create(&ctx).await.map(EngineDb::new) }
        }
    };
    let mut runner = Runner::new(make_conn);
    for label in &labels {
        runner.add_label(label);
    }
    for (key, value) in &ctx.vars {
        runner.set_var(key.clone(), value.clone());
    }
    let column_validator = column_validator(config);
    runner.with_normalizer(normalize);
    runner.with_validator(validator);
    runner.with_column_validator(column_validator);
    if config.substitution {
        runner
            .run_async(Record::Control(Control::Substitution(true)))
            .await
            .map_err(|source| RunnerError::Test { source })?;
    }

    let result = if config.complete {
        runner
            .update_test_file(path, " ", validator, normalize, column_validator)
            .await
            .map_err(|e| RunnerError::Complete {
                path: path.to_owned(),
                message: e.to_string(),
            })
    } else {
        runner
            .run_file_async(path)
            .await
            .map_err(|source| RunnerError::Test { source })
    };
    runner.shutdown_async().await;
    drop(runner);
    // Engines are gone; deleting the scratch directory is best effort.
    drop(scratch);
    result
}

/// [`run_file`] on a new multi-thread tokio runtime, blocking until done.
pub fn run_file_blocking(
    config: &RunnerConfig,
    factory: Arc<dyn EngineFactory>,
    path: &Path,
) -> Result<(), RunnerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .thread_name("slt-worker")
        .enable_all()
        .build()
        .map_err(|source| RunnerError::Runtime { source })?;
    let result = runtime.block_on(run_file(config, factory, path));
    // Do not hang the test run on tasks an engine leaked.
    runtime.shutdown_timeout(Duration::from_secs(10));
    result
}

fn column_validator(config: &RunnerConfig) -> ColumnTypeValidator<DefaultColumnType> {
    if config.strict_column_types {
        strict_column_validator
    } else {
        default_column_validator
    }
}

/// Compares rows as DataFusion does: a row's values joined by one space,
/// without trailing whitespace, against the expected line without trailing
/// whitespace (a value's own leading or inner blanks count). Expected output
/// with `<slt:ignore>` markers goes to sqllogictest's fragment matching.
fn validator(normalizer: Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    if expected.iter().any(|l| l.contains("<slt:ignore>")) {
        return default_validator(normalizer, actual, expected);
    }
    actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(row, line)| row.join(" ").trim_end() == normalizer(line))
}

/// Ignores trailing whitespace of each expected line, as DataFusion does;
/// other whitespace is significant.
// The signature is fixed by `sqllogictest::Normalizer`.
#[allow(clippy::ptr_arg)]
fn normalize(s: &String) -> String {
    s.trim_end().to_owned()
}
