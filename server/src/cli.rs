//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Sluice: SQL-first data integration.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Query result format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an integration script (embedded: no server, no setup).
    Run(RunArgs),
    /// Remove what dead jobs left behind in file tables (staging data,
    /// unreferenced files, old manifests).
    Gc(GcArgs),
    /// Serve Flight SQL (ADBC, JDBC, pyarrow clients) with a persistent
    /// catalog.
    Server(crate::flight::ServerArgs),
    /// Serve the Flight shuffle service: persist staged tasks' output to a
    /// shuffle store with a fixed buffer budget.
    ShuffleWorker(crate::worker::ShuffleWorkerArgs),
    /// Run a cluster's tasks: register with a coordinator (`sluice server
    /// --role coordinator`) and run the task attempts it hands out.
    Executor(crate::cluster::executor::ExecutorArgs),
    /// Run sqllogictest files (`.slt`) that pin down what pipelines must
    /// produce, embedded or against a server.
    Test(crate::slt::TestArgs),
}

impl Command {
    /// Whether the command was asked to be quiet.
    pub fn quiet(&self) -> bool {
        match self {
            Command::Run(a) => a.quiet,
            Command::Gc(_)
            | Command::Server(_)
            | Command::ShuffleWorker(_)
            | Command::Executor(_)
            | Command::Test(_) => false,
        }
    }
}

/// `sluice run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Script file, or `-` for standard input.
    #[arg(
        value_name = "SCRIPT",
        required_unless_present = "execute",
        conflicts_with = "execute"
    )]
    pub script: Option<PathBuf>,

    /// Run this SQL text instead of a script file.
    #[arg(short = 'e', long = "execute", value_name = "SQL")]
    pub execute: Option<String>,

    /// Set a script variable: `${NAME}` is replaced by VALUE (repeatable).
    /// Unset variables are read from SLUICE_VAR_<NAME>.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,

    /// Parse, bind and plan every statement and print the plans; read or
    /// write no data.
    #[arg(long, env = "SLUICE_DRY_RUN")]
    pub dry_run: bool,

    /// Format of query results on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, env = "SLUICE_FORMAT")]
    pub format: OutputFormat,

    /// Print only query results and errors: no progress, no summary.
    #[arg(short, long, env = "SLUICE_QUIET")]
    pub quiet: bool,

    /// Append even when this run id was committed before.
    #[arg(long, env = "SLUICE_FORCE_RERUN")]
    pub force_rerun: bool,

    /// Parallelism of each statement (default: the number of cores).
    #[arg(long, env = "SLUICE_TARGET_PARTITIONS")]
    pub target_partitions: Option<usize>,

    /// Run the statements on a Sluice server (Flight SQL URL, e.g.
    /// http://127.0.0.1:50051) instead of in this process.
    #[arg(long, value_name = "URL", env = "SLUICE_SERVER")]
    pub server: Option<String>,

    /// User for --server; the password is read from SLUICE_PASSWORD.
    #[arg(long, env = "SLUICE_USER", requires = "server")]
    pub user: Option<String>,
}

/// `sluice gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Table locations (paths or URLs) to clean.
    #[arg(value_name = "LOCATION", required = true)]
    pub locations: Vec<String>,
}

pub(crate) fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=VALUE"))?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "'{k}' is not a valid variable name (letters, digits, '_')"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Runs a parsed command.
pub async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Run(args) => crate::run::run(args).await,
        Command::Gc(args) => crate::gc::run(args).await,
        Command::Server(args) => crate::flight::serve(args).await,
        Command::ShuffleWorker(args) => crate::worker::run(args).await,
        Command::Executor(args) => crate::cluster::executor::run(args).await,
        // Each file runs on a runtime of its own, off the main one.
        Command::Test(args) => tokio::task::spawn_blocking(move || crate::slt::run(args))
            .await
            .unwrap_or(ExitCode::from(2)),
    }
}
