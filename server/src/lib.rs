//! The `sluice` binary's library: CLI, embedded coordinator and executor.

pub mod cli;
pub mod cluster;
pub mod coordinator;
pub mod embedded;
pub mod engine;
pub mod flight;
mod gc;
mod http;
pub mod logging;
mod output;
mod progress;
mod remote;
pub mod run;
pub mod slt;
pub mod staged;
pub mod streaming;
pub mod worker;

use clap::Parser;

/// Entry point: parses arguments, sets up logging and runs the command.
pub fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if let Err(e) = logging::init(cli.log_format, cli.command.quiet()) {
        eprintln!("error: cannot set up logging: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = runtime.block_on(cli::dispatch(cli.command));
    // Do not wait for stray blocking work (e.g. a read of stdin) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
