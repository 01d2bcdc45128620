//! libtest-compatible entry points: one trial per `.slt` file.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Conclusion, Failed, Trial};

use crate::discover::discover;
use crate::engine::EngineFactory;
use crate::runner::{COMPLETE_ENV, RunnerConfig, RunnerError, run_file_blocking};

/// Runs every `.slt` file under `roots` with the default [`RunnerConfig`],
/// taking libtest arguments (and `--complete`) from the command line.
///
/// Meant to be the whole `main` of a `harness = false` test binary.
pub fn run_main(factory: Arc<dyn EngineFactory>, roots: &[PathBuf]) -> ExitCode {
    run_main_with(RunnerConfig::default(), factory, roots, Vec::new())
}

/// Like [`run_main`], with a config and extra plain trials (ordinary Rust
/// tests living in the same binary).
///
/// Complete mode is on if `config.complete` is, if `--complete` is on the
/// command line, or if `SLUICE_SLT_COMPLETE` is `1` or `true`.
pub fn run_main_with(
    mut config: RunnerConfig,
    factory: Arc<dyn EngineFactory>,
    roots: &[PathBuf],
    extra_trials: Vec<Trial>,
) -> ExitCode {
    let (args, complete) = parse_args(std::env::args_os());
    config.complete |= complete || complete_from_env();
    run_with_args(&args, config, factory, roots, extra_trials)
}

/// Like [`run_main_with`], with already parsed libtest arguments (for a CLI
/// such as `sluice test` that has arguments of its own). Does not look at
/// the command line or the environment.
pub fn run_with_args(
    args: &Arguments,
    config: RunnerConfig,
    factory: Arc<dyn EngineFactory>,
    roots: &[PathBuf],
    extra_trials: Vec<Trial>,
) -> ExitCode {
    match run_tests(args, config, factory, roots, extra_trials) {
        Ok(conclusion) => conclusion.exit_code(),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Splits `--complete` off a command line and parses the rest as libtest
/// arguments (which must include the program name first).
///
/// libtest-mimic rejects flags it does not know, so this is needed before
/// handing it the command line. On invalid arguments this prints the error
/// and exits, like any test binary.
pub fn parse_args<I, T>(args: I) -> (Arguments, bool)
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut complete = false;
    let rest: Vec<OsString> = args
        .into_iter()
        .map(Into::into)
        .filter(|arg| {
            let is_complete = arg == "--complete";
            complete |= is_complete;
            !is_complete
        })
        .collect();
    (Arguments::from_iter(rest), complete)
}

/// One trial per `.slt` file under `roots`, named
/// `{name_prefix}{path relative to its root}`, in root order then path order.
pub fn slt_trials(
    config: &RunnerConfig,
    factory: Arc<dyn EngineFactory>,
    roots: &[PathBuf],
) -> Result<Vec<Trial>, RunnerError> {
    let config = Arc::new(config.clone());
    let mut names = HashSet::new();
    let mut trials = Vec::new();
    for root in roots {
        for file in discover(root)? {
            if config
                .filter
                .as_ref()
                .is_some_and(|f| !file.relative.contains(f.as_str()))
            {
                continue;
            }
            let name = format!("{}{}", config.name_prefix, file.relative);
            if !names.insert(name.clone()) {
                return Err(RunnerError::DuplicateName { name });
            }
            let config = Arc::clone(&config);
            let factory = Arc::clone(&factory);
            trials.push(Trial::test(name, move || {
                run_file_blocking(&config, factory, &file.path).map_err(Failed::from)
            }));
        }
    }
    Ok(trials)
}

/// Builds the trials and runs them, returning libtest-mimic's summary.
pub(crate) fn run_tests(
    args: &Arguments,
    config: RunnerConfig,
    factory: Arc<dyn EngineFactory>,
    roots: &[PathBuf],
    extra_trials: Vec<Trial>,
) -> Result<Conclusion, RunnerError> {
    let mut trials = slt_trials(&config, factory, roots)?;
    trials.extend(extra_trials);
    Ok(libtest_mimic::run(args, trials))
}

fn complete_from_env() -> bool {
    std::env::var(COMPLETE_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}
