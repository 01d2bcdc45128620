//! `sluice-bench`: runs Sluice and its peers on the same job, alternately,
//! in one invocation, and prints medians and ratios. Not a test: a report.
//! See `benchmarks/README.md`.

mod cli;
mod cluster;
mod datagen;
mod flight_load;
mod j1;
mod measure;
mod mysql;
mod outputs;
mod postgres;
mod report;
mod staged;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let outcome = match &cli.command {
        cli::Command::J1(args) => j1::run(args),
        cli::Command::FlightLoad(args) => flight_load::run(args),
        cli::Command::TpchStaged(args) => staged::run_tpch(args),
        cli::Command::Shuffle(args) => staged::run_shuffle(args),
        cli::Command::ShuffleWorker(args) => worker::run(args),
        cli::Command::Postgres(args) => postgres::run(args),
        cli::Command::PostgresGen(args) => postgres::generate(args),
        cli::Command::Mysql(args) => mysql::run(args),
        cli::Command::Gen(args) => {
            datagen::ensure_lineitem(&args.data, args.scale_factor).map(|dataset| {
                println!("{dataset}");
                true
            })
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        // A peer failed or wrote the wrong output; the report says which.
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
