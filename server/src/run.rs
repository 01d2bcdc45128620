//! `sluice run`: execute an integration script.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use datafusion::prelude::SessionConfig;
use sluice_planner::error::PlannerError;
use sluice_planner::{
    RunContext, ScriptStatement, SluiceStatement, StatementKind, caret_snippet, parse_statement,
};

use crate::cli::RunArgs;
use crate::embedded::{EmbeddedSession, Executed};
use crate::output::print_stream;
use crate::progress::{StatementProgress, human, human_bytes};
use crate::remote::{RemoteOutcome, RemoteSession};

/// Exit code when a statement failed.
const EXIT_FAILED: u8 = 1;
/// Exit code for usage and parse errors.
const EXIT_USAGE: u8 = 2;
/// Exit code when interrupted by a signal.
const EXIT_INTERRUPTED: u8 = 130;

/// One line of the run summary.
#[derive(Debug)]
struct Report {
    index: usize,
    /// The INSERT of a statement set this line is about (1-based).
    part: Option<usize>,
    line: u64,
    kind: String,
    target: String,
    rows_read: Option<u64>,
    rows_written: Option<u64>,
    bytes: Option<u64>,
    seconds: f64,
    note: String,
}

/// Runs the script and returns the process exit code.
pub(crate) async fn run(args: RunArgs) -> ExitCode {
    let (text, script_name) = match read_script(&args) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cli_vars: BTreeMap<String, String> = args.vars.iter().cloned().collect();
    let lookup = |name: &str| {
        cli_vars
            .get(name)
            .cloned()
            .or_else(|| std::env::var(format!("SLUICE_VAR_{name}")).ok())
    };
    let (text, used) = match sluice_planner::substitute(&text, &lookup) {
        Ok(r) => r,
        Err(e) => {
            report_script_error(&text, None, &e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let statements = match sluice_planner::split(&text) {
        Ok(s) => s,
        Err(e) => {
            report_script_error(&text, None, &e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Parse everything first: a syntax error anywhere runs nothing.
    let mut parsed = Vec::with_capacity(statements.len());
    for stmt in &statements {
        match parse_statement(&stmt.text) {
            Ok(p) => parsed.push(p),
            Err(e) => {
                report_script_error(&text, Some(stmt), &e);
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }

    if let Some(url) = &args.server {
        return run_remote(
            url,
            &args,
            &text,
            &statements,
            &used,
            script_name.as_deref(),
        )
        .await;
    }

    let mut config = SessionConfig::new();
    if let Some(n) = args.target_partitions {
        config = config.with_target_partitions(n.max(1));
    }
    let session = EmbeddedSession::new(
        config,
        RunContext {
            script_name,
            vars: used.clone(),
            force_rerun: args.force_rerun,
        },
        args.dry_run,
    );

    let started = Instant::now();
    let mut reports: Vec<Report> = vec![];
    let mut code = ExitCode::SUCCESS;
    for (stmt, parsed) in statements.iter().zip(parsed) {
        let t0 = Instant::now();
        let label = format!("[{}/{}] {}", stmt.index, statements.len(), stmt.headline());
        let result = tokio::select! {
            r = execute(&session, stmt, parsed, &args, &label) => r,
            _ = shutdown_signal() => {
                eprintln!("interrupted: statement {} was cancelled; nothing it wrote was committed", stmt.index);
                code = ExitCode::from(EXIT_INTERRUPTED);
                break;
            }
        };
        match result {
            Ok(lines) => {
                let seconds = t0.elapsed().as_secs_f64();
                reports.extend(lines.into_iter().map(|r| Report { seconds, ..r }));
            }
            Err(e) => {
                report_script_error(&text, Some(stmt), &e);
                reports.push(Report {
                    index: stmt.index,
                    part: None,
                    line: stmt.line,
                    kind: "FAILED".into(),
                    target: stmt.headline(),
                    rows_read: None,
                    rows_written: None,
                    bytes: None,
                    seconds: t0.elapsed().as_secs_f64(),
                    note: String::new(),
                });
                code = ExitCode::from(if e.is_syntax() {
                    EXIT_USAGE
                } else {
                    EXIT_FAILED
                });
                break;
            }
        }
    }
    if !args.quiet {
        print_summary(
            &reports,
            statements.len(),
            &used,
            started.elapsed().as_secs_f64(),
            args.dry_run,
        );
    }
    code
}

/// Runs the statements on a server, with the same progress, summary and
/// exit codes as an embedded run.
async fn run_remote(
    url: &str,
    args: &RunArgs,
    text: &str,
    statements: &[ScriptStatement],
    used: &BTreeMap<String, String>,
    script_name: Option<&str>,
) -> ExitCode {
    let password = std::env::var("SLUICE_PASSWORD").ok();
    let remote = match RemoteSession::connect(url, args.user.as_deref(), password.as_deref()).await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", e.message);
            return ExitCode::from(if e.usage { EXIT_USAGE } else { EXIT_FAILED });
        }
    };
    let started = Instant::now();
    let mut reports: Vec<Report> = vec![];
    let mut code = ExitCode::SUCCESS;
    for stmt in statements {
        let t0 = Instant::now();
        let label = format!("[{}/{}] {}", stmt.index, statements.len(), stmt.headline());
        let progress = StatementProgress::start(label, None, args.quiet);
        let work = async {
            if args.dry_run {
                remote.prepare(&stmt.text).await.map(|_| RemoteOutcome {
                    kind: "PLANNED".into(),
                    note: "planned on the server".into(),
                    ..RemoteOutcome::default()
                })
            } else {
                let run = serde_json::json!({
                    "script": script_name,
                    "statement": stmt.index,
                    "vars": used,
                    "force_rerun": args.force_rerun,
                });
                remote.execute(&stmt.text, args.format, &run).await
            }
        };
        let result = tokio::select! {
            r = work => r,
            _ = shutdown_signal() => {
                eprintln!("interrupted: statement {} was cancelled; nothing it wrote was committed", stmt.index);
                code = ExitCode::from(EXIT_INTERRUPTED);
                break;
            }
        };
        drop(progress);
        match result {
            Ok(o) => reports.push(Report {
                index: stmt.index,
                part: None,
                line: stmt.line,
                kind: o.kind,
                target: o.target.unwrap_or_else(|| stmt.headline()),
                rows_read: o.rows_read,
                rows_written: o.rows_written,
                bytes: o.bytes,
                seconds: t0.elapsed().as_secs_f64(),
                note: o.note,
            }),
            Err(e) => {
                eprintln!(
                    "error: statement {} (line {}, column {}): {}",
                    stmt.index, stmt.line, stmt.column, e.message
                );
                let _ = text;
                reports.push(Report {
                    index: stmt.index,
                    part: None,
                    line: stmt.line,
                    kind: "FAILED".into(),
                    target: stmt.headline(),
                    rows_read: None,
                    rows_written: None,
                    bytes: None,
                    seconds: t0.elapsed().as_secs_f64(),
                    note: String::new(),
                });
                code = ExitCode::from(if e.usage { EXIT_USAGE } else { EXIT_FAILED });
                break;
            }
        }
    }
    if !args.quiet {
        print_summary(
            &reports,
            statements.len(),
            used,
            started.elapsed().as_secs_f64(),
            args.dry_run,
        );
    }
    code
}

async fn execute(
    session: &EmbeddedSession,
    stmt: &ScriptStatement,
    parsed: SluiceStatement,
    args: &RunArgs,
    label: &str,
) -> Result<Vec<Report>, PlannerError> {
    let mut progress: Option<StatementProgress> = None;
    let quiet = args.quiet;
    let executed = {
        let mut on_write = |job: &sluice_planner::WriteJob| {
            progress = Some(StatementProgress::start(
                label.to_string(),
                Some(Arc::clone(&job.progress)),
                quiet,
            ));
        };
        session.execute(parsed, stmt.index, &mut on_write).await
    };
    drop(progress);
    let mut report = Report {
        index: stmt.index,
        part: None,
        line: stmt.line,
        kind: String::new(),
        target: String::new(),
        rows_read: None,
        rows_written: None,
        bytes: None,
        seconds: 0.0,
        note: String::new(),
    };
    match executed? {
        Executed::Done {
            kind,
            target,
            message,
        } => {
            report.kind = kind.label().into();
            report.target = target.unwrap_or_default();
            tracing::debug!(statement = stmt.index, %message, "done");
        }
        Executed::Rows { plan, stream } => {
            let rows = print_stream(stream, args.format).await?;
            report.kind = "QUERY".into();
            report.target = stmt.headline();
            report.rows_read = crate::coordinator::rows_read(&plan);
            report.note = format!("{rows} rows returned");
        }
        Executed::Written {
            kind,
            target,
            outcome,
            rows_read,
        } => {
            report.kind = kind.label().into();
            report.target = target;
            report.rows_read = rows_read;
            report.rows_written = Some(outcome.rows);
            report.bytes = Some(outcome.bytes);
            if let Some(skipped) = outcome.skipped {
                tracing::warn!(statement = stmt.index, "{skipped}");
                report.note = "skipped: already committed".into();
            } else if outcome.files > 0 {
                // Database sinks commit rows, not files.
                report.note = format!("{} files", outcome.files);
            }
        }
        Executed::WrittenSet { writes, rows_read } => {
            report.kind = StatementKind::StatementSet.label().into();
            report.target = format!("{} targets", writes.len());
            report.rows_read = rows_read;
            report.rows_written = Some(writes.iter().map(|w| w.outcome.rows).sum());
            report.bytes = Some(writes.iter().map(|w| w.outcome.bytes).sum());
            let mut lines = vec![report];
            for (k, w) in writes.into_iter().enumerate() {
                let mut line = Report {
                    index: stmt.index,
                    part: Some(k + 1),
                    line: stmt.line,
                    kind: w.kind.label().into(),
                    target: w.target,
                    rows_read: None,
                    rows_written: Some(w.outcome.rows),
                    bytes: Some(w.outcome.bytes),
                    seconds: 0.0,
                    note: String::new(),
                };
                if let Some(skipped) = w.outcome.skipped {
                    tracing::warn!(statement = stmt.index, insert = k + 1, "{skipped}");
                    line.note = "skipped: already committed".into();
                } else if w.outcome.files > 0 {
                    line.note = format!("{} files", w.outcome.files);
                }
                lines.push(line);
            }
            return Ok(lines);
        }
        Executed::Plan { kind, target, text } => {
            println!(
                "-- statement {} (line {}): {}",
                stmt.index,
                stmt.line,
                kind.label()
            );
            println!("{text}");
            report.kind = kind.label().into();
            report.target = target.unwrap_or_default();
            report.note = "planned".into();
        }
    }
    Ok(vec![report])
}

fn read_script(args: &RunArgs) -> Result<(String, Option<String>), String> {
    if let Some(sql) = &args.execute {
        return Ok((sql.clone(), None));
    }
    let path = args
        .script
        .as_ref()
        .ok_or("no script given: pass SCRIPT.sql, - or -e SQL")?;
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the script from standard input: {e}"))?;
        return Ok((text, None));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read script {}: {e}", path.display()))?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    Ok((text, name))
}

fn report_script_error(script: &str, stmt: Option<&ScriptStatement>, e: &PlannerError) {
    let position = match (stmt, e) {
        (_, PlannerError::UndefinedVariable { line, column, .. }) => Some((*line, *column)),
        (Some(s), e) => e.position().map(|(l, c)| s.script_position(l, c)),
        (None, e) => e.position(),
    };
    let mut msg = String::from("error: ");
    if let Some(s) = stmt {
        msg.push_str(&format!("statement {} ", s.index));
    }
    match (position, stmt) {
        (Some((l, c)), _) => msg.push_str(&format!("(line {l}, column {c})")),
        (None, Some(s)) => msg.push_str(&format!("(line {}, column {})", s.line, s.column)),
        (None, None) => {}
    }
    if stmt.is_some() || position.is_some() {
        msg.push_str(": ");
    }
    msg.push_str(&e.to_string());
    eprintln!("{msg}");
    if let Some((l, c)) = position {
        let snippet = caret_snippet(script, l, c);
        if !snippet.is_empty() {
            eprintln!("{snippet}");
        }
    } else if let Some(s) = stmt {
        eprintln!("  {}", s.headline());
    }
}

fn print_summary(
    reports: &[Report],
    total: usize,
    vars: &BTreeMap<String, String>,
    seconds: f64,
    dry_run: bool,
) {
    let opt = |v: Option<u64>| v.map(|n| human(n as f64)).unwrap_or_else(|| "-".into());
    let failed = reports.iter().any(|r| r.kind == "FAILED");
    let mut out = format!(
        "\n{} {} of {} statements in {:.2} s{}\n",
        if failed { "FAILED:" } else { "OK:" },
        reports.iter().filter(|r| r.part.is_none()).count(),
        total,
        seconds,
        if dry_run {
            " (dry run: no data read or written)"
        } else {
            ""
        }
    );
    out.push_str(&format!(
        "  {:>3}  {:>5}  {:<17} {:>10} {:>12} {:>10} {:>8}  {}\n",
        "#", "line", "kind", "rows read", "rows written", "bytes", "seconds", "target"
    ));
    for r in reports {
        let target = if r.note.is_empty() {
            r.target.clone()
        } else {
            format!("{} ({})", r.target, r.note)
        };
        let index = match r.part {
            Some(k) => format!("{}.{k}", r.index),
            None => r.index.to_string(),
        };
        out.push_str(&format!(
            "  {:>3}  {:>5}  {:<17} {:>10} {:>12} {:>10} {:>8.2}  {}\n",
            index,
            r.line,
            r.kind,
            opt(r.rows_read),
            opt(r.rows_written),
            r.bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
            r.seconds,
            target
        ));
    }
    if !vars.is_empty() {
        let v: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("  variables: {}\n", v.join(", ")));
    }
    eprint!("{out}");
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
