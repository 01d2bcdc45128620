//! `sluice test`: sqllogictest suites that pin down what a pipeline must
//! produce, run embedded or against a server, in batch and streaming mode.
//!
//! Files are found and run by the runner library of `sluice-sql-tests`;
//! each file gets its own session and scratch directory. A file stops at
//! its first failing record, which is printed with its location and the
//! expected and actual output.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_sql_tests::{EngineFactory, RunnerConfig, SltFile, discover, run_file_blocking};

use crate::engine::{EmbeddedEngineFactory, FlightEngineFactory, TestMode};

/// `sluice test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// `.slt` files, or directories searched for them.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    /// Run over Flight SQL on this server (e.g. `http://127.0.0.1:50051`)
    /// instead of embedded.
    #[arg(long, value_name = "URL", env = "SLUICE_SERVER")]
    pub server: Option<String>,

    /// Runtime mode of every file's session; `both` runs each file twice.
    #[arg(long, value_enum, default_value_t = ModeArg::Batch)]
    pub mode: ModeArg,

    /// Set a variable, substituted for `${NAME}` as in scripts (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = crate::cli::parse_var)]
    pub vars: Vec<(String, String)>,

    /// Rewrite each file's expected results with the actual ones.
    #[arg(long)]
    pub complete: bool,

    /// Files run at once.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 1)]
    pub jobs: usize,

    /// Partitions of each embedded session (default: the number of cores).
    #[arg(long)]
    pub target_partitions: Option<usize>,

    /// Whose conventions the files follow. `datafusion` runs Apache
    /// DataFusion's own suites: a write answers a one-row `count` result,
    /// and the column type letters (DataFusion has its own) are not checked.
    #[arg(long, value_enum, default_value_t = Conventions::Sluice)]
    pub conventions: Conventions,
}

/// `--conventions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Conventions {
    /// Sluice's: writes are statements with a row count
    /// (`statement count N`), column type letters are checked.
    Sluice,
    /// Apache DataFusion's sqllogictest files.
    Datafusion,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Staged batch mode.
    Batch,
    /// Streaming mode.
    Streaming,
    /// Each file in both modes.
    Both,
}

impl ModeArg {
    fn modes(self) -> Vec<TestMode> {
        match self {
            Self::Batch => vec![TestMode::Batch],
            Self::Streaming => vec![TestMode::Streaming],
            Self::Both => vec![TestMode::Batch, TestMode::Streaming],
        }
    }
}

/// One file in one mode.
struct Job {
    file: SltFile,
    mode: TestMode,
    factory: Arc<dyn EngineFactory>,
}

/// Runs the suites; exit code 0 when every file passed, 1 when one
/// failed, 2 when the command itself is wrong.
pub fn run(args: TestArgs) -> ExitCode {
    if args.complete && args.mode == ModeArg::Both {
        eprintln!(
            "error: --complete rewrites each file from one run; pick --mode batch or --mode streaming"
        );
        return ExitCode::from(2);
    }
    let mut files = Vec::new();
    for root in &args.paths {
        match discover(root) {
            Ok(found) if found.is_empty() => {
                eprintln!("error: no .slt files under {}", root.display());
                return ExitCode::from(2);
            }
            Ok(found) => files.extend(found.into_iter().map(|mut f| {
                // Name files as the user named their roots.
                f.relative = if root.is_file() {
                    root.display().to_string()
                } else {
                    root.join(&f.relative).display().to_string()
                };
                f
            })),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let jobs = args.jobs.max(1);
    let config = RunnerConfig {
        vars: args.vars.iter().cloned().collect(),
        complete: args.complete,
        worker_threads: (cores / jobs).max(1),
        strict_column_types: args.conventions == Conventions::Sluice,
        ..RunnerConfig::default()
    };
    let partitions = args.target_partitions.unwrap_or(cores);
    let dml_counts = args.conventions == Conventions::Datafusion;
    let mut queue = VecDeque::new();
    for mode in args.mode.modes() {
        let factory: Arc<dyn EngineFactory> = match &args.server {
            Some(url) => Arc::new(
                FlightEngineFactory::new(url.clone())
                    .with_mode(Some(mode))
                    .with_dml_counts(dml_counts),
            ),
            None => Arc::new(
                EmbeddedEngineFactory::new(partitions, Some(mode)).with_dml_counts(dml_counts),
            ),
        };
        for file in &files {
            queue.push_back(Job {
                file: file.clone(),
                mode,
                factory: Arc::clone(&factory),
            });
        }
    }
    let total = queue.len();
    let queue = Mutex::new(queue);
    let failed = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(total) {
            scope.spawn(|| {
                loop {
                    let Some(job) = queue.lock().expect("queue lock").pop_front() else {
                        return;
                    };
                    let started = Instant::now();
                    let result = run_file_blocking(&config, job.factory, &job.file.path);
                    let secs = started.elapsed().as_secs_f64();
                    let mut out = std::io::stdout().lock();
                    let _ = match result {
                        Ok(()) => writeln!(
                            out,
                            "ok    {} [{}] {secs:.2} s",
                            job.file.relative,
                            job.mode.name()
                        ),
                        Err(e) => {
                            *failed.lock().expect("count lock") += 1;
                            let detail = e.to_string().replace('\n', "\n      ");
                            writeln!(
                                out,
                                "FAIL  {} [{}] {secs:.2} s\n      {detail}",
                                job.file.relative,
                                job.mode.name()
                            )
                        }
                    };
                }
            });
        }
    });
    let failed = failed.into_inner().expect("count lock");
    println!("{} passed, {failed} failed", total - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
