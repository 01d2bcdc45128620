//! Streaming mode, embedded: TPC-H at scale factor 0.1 against
//! single-process DataFusion, bounded memory under a slow sink, failure
//! cancelling the whole job, and admission by task slots.

use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_planner::stages::ExchangeMode;
use sluice_planner::{Planned, RunContext, parse_statement};
use sluice_server::embedded::EmbeddedSession;
use sluice_server::streaming::{StreamingCounters, StreamingRuntime};
use sluice_sql_tests::tpch;
use sluice_sql_tests::{Failed, Trial};

use crate::staged::{execute, has_join, rows_of, runtime};
use crate::support::{Scratch, check, stderr, stdout, wait_until};

/// Partitions and task slots: at least 2, so exchanges cut stages and
/// stages split into tasks.
const PARTITIONS: usize = 2;

pub(crate) fn trials() -> Vec<Trial> {
    let mut trials = vec![
        Trial::test(
            "streaming::slow_sink_keeps_memory_bounded_for_1gb",
            slow_sink_bounds_memory,
        ),
        Trial::test(
            "streaming::failed_task_cancels_job_and_sink_stays_unchanged",
            failed_task_cancels_job,
        ),
        Trial::test(
            "streaming::jobs_wait_for_task_slots_or_fail_with_the_numbers",
            admission,
        ),
        Trial::test(
            "streaming::explain_shows_live_stages",
            explain_shows_live_stages,
        ),
    ];
    for (name, sql) in tpch::QUERIES {
        trials.push(Trial::test(
            format!("streaming::tpch_sf01_{name}"),
            move || tpch_query(name, sql),
        ));
    }
    trials
}

async fn streaming_session(slots: usize, extra: &[String]) -> Result<EmbeddedSession, Failed> {
    let config = SessionConfig::new().with_target_partitions(PARTITIONS);
    let session = EmbeddedSession::new(config, RunContext::default(), false);
    let mut setup = vec![
        "SET 'execution.runtime-mode' = 'streaming'".to_string(),
        format!("SET 'sluice.task_slots' = '{slots}'"),
    ];
    setup.extend(extra.iter().cloned());
    for sql in setup {
        execute(&session, &sql).await?;
    }
    Ok(session)
}

fn tpch_query(name: &str, sql: &str) -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    runtime().block_on(async {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().with_target_partitions(PARTITIONS),
        );
        for ddl in tpch::create_tables_sql(&data) {
            ctx.sql(&ddl).await?.collect().await?;
        }
        let expected = ctx.sql(sql).await?.collect().await?;

        let session = streaming_session(PARTITIONS, &tpch::create_tables_sql(&data)).await?;
        // The plan runs as a stage graph with live exchanges; joins split
        // over tasks.
        let stmt = parse_statement(sql)?;
        let Planned::Query { plan } = session.session().plan(stmt, 1, true).await? else {
            return Err("a TPC-H query plans as a query".into());
        };
        let graph = StreamingRuntime::from_options(&session.session().options())
            .stage_graph(Arc::clone(&plan), true)?;
        if graph.mode != ExchangeMode::Live || graph.stages.len() < 2 {
            return Err(format!(
                "{name}: expected a stage graph with live exchanges:\n{}",
                graph.display()
            )
            .into());
        }
        if matches!(name, "q13" | "q21" | "q22")
            && !graph
                .stages
                .iter()
                .filter(|s| has_join(&s.plan))
                .all(|s| s.tasks >= 2)
        {
            return Err(format!(
                "{name}: every join stage must run with 2 or more tasks:\n{}",
                graph.display()
            )
            .into());
        }

        let actual = rows_of(execute(&session, sql).await?).await?;
        tpch::compare_results(&expected, &actual).map_err(|e| format!("{name}: {e}"))?;
        if tpch::row_count(&expected) == 0 {
            return Err(format!("{name} returned no rows: the test would prove nothing").into());
        }
        Ok(())
    })
}

/// Peak resident memory (VmHWM) of a running process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Rows of the 1 GB flow: 1,000,000 rows of about 1 KB.
const FLOW_ROWS: u64 = 1_000_000;
/// The asserted bound on the job's peak RSS. Channels hold 4 batches of
/// 8192 rows (about 8 MB each); measured: about 330 MB with them, and
/// about 1050 MB when a channel may hold 100,000 batches, as the producer
/// runs ahead of the sink with most of the 1 GB.
const RSS_BOUND: u64 = 450 * 1024 * 1024;

/// A fast source, a deliberately slow sink (the fault hook delays every
/// batch the sink receives), and a live exchange between them: the
/// producer waits for the sink, so the job's peak RSS stays far below the
/// 1 GB that flows.
fn slow_sink_bounds_memory() -> Result<(), Failed> {
    let s = Scratch::new();
    // CSV: a Parquet writer holds its row group's pages in memory, which
    // would measure the file format, not the exchange.
    let out = s.path().join("out.csv");
    // Two generators make two partitions; the one-file sink needs one,
    // so the plan is cut at the merge: stage 0 generates, stage 1 writes.
    let script = s.write(
        "flow.sql",
        &format!(
            "SET 'execution.runtime-mode' = 'streaming';\n\
             SET 'sluice.task_slots' = '2';\n\
             COPY (SELECT value AS id, repeat('x', 1000) AS pad FROM generate_series(1, {half})\n\
                   UNION ALL\n\
                   SELECT value AS id, repeat('y', 1000) AS pad FROM generate_series({next}, {FLOW_ROWS}))\n\
             TO '{}' STORED AS CSV;\n",
            out.display(),
            half = FLOW_ROWS / 2,
            next = FLOW_ROWS / 2 + 1,
        ),
    );
    let dry = s.run(&["--dry-run", script.to_str().unwrap()], None);
    check(
        dry.status.success()
            && stdout(&dry).contains("mode=streaming")
            && stdout(&dry).contains("Stage 1"),
        "the flow runs as two streaming stages",
        &dry,
    )?;
    let mut child = s
        .sluice()
        .args(["run", "--quiet", script.to_str().unwrap()])
        .env("SLUICE_TEST_FAULT", "stage=1,action=delay,delay_ms=25")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut peak = 0;
    loop {
        if let Some(rss) = peak_rss(pid) {
            peak = peak.max(rss);
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output()?;
    check(o.status.success(), "the slow 1 GB copy succeeds", &o)?;
    // Every row arrived: count them back.
    let count = s.run(
        &[
            "-q",
            "--format",
            "csv",
            "-e",
            &format!(
                "CREATE EXTERNAL TABLE o STORED AS CSV LOCATION '{}';\n\
                 SELECT count(*) AS n, sum(length(pad)) AS bytes FROM o",
                out.display()
            ),
        ],
        None,
    );
    check(
        stdout(&count).contains(&format!("{FLOW_ROWS},{}", FLOW_ROWS * 1000)),
        "every row of the flow was written",
        &count,
    )?;
    if peak == 0 || peak > RSS_BOUND {
        return Err(format!(
            "peak RSS {} MB for a 1 GB flow; the bound is {} MB",
            peak / (1024 * 1024),
            RSS_BOUND / (1024 * 1024)
        )
        .into());
    }
    eprintln!(
        "peak RSS {} MB for a 1 GB flow (bound {} MB)",
        peak / (1024 * 1024),
        RSS_BOUND / (1024 * 1024)
    );
    Ok(())
}

const DECLARE: &str = "SET 'execution.runtime-mode' = 'streaming';\n\
    SET 'sluice.task_slots' = '2';\n\
    CREATE TABLE t (k BIGINT, tag VARCHAR) WITH ('connector' = 'filesystem', 'path' = 'out/t/', 'format' = 'parquet');\n";

/// A task failing in either stage fails the whole job: the error names the
/// task and its cause, the exit code is non-zero, and the target keeps its
/// old rows.
fn failed_task_cancels_job() -> Result<(), Failed> {
    let s = Scratch::new();
    let setup = s.write(
        "setup.sql",
        &format!("{DECLARE}INSERT INTO t SELECT value, 'old' FROM generate_series(1, 1000);\n"),
    );
    let o = s.run(&[setup.to_str().unwrap()], None);
    check(o.status.success(), "setup", &o)?;

    // The aggregation is cut at its hash exchange: stage 0 reads and
    // pre-aggregates, stage 1 finishes and writes.
    let overwrite = s.write(
        "overwrite.sql",
        &format!(
            "{DECLARE}INSERT OVERWRITE t SELECT value % 5000, max(CAST(value AS VARCHAR)) \
             FROM generate_series(1, 2000000) GROUP BY value % 5000;\n"
        ),
    );
    for (fault, names) in [
        ("stage=0,after=0,action=fail", "stage 0 task 0 failed"),
        ("stage=1,task=1,after=0,action=fail", "stage 1 task 1"),
    ] {
        let mut c = s.sluice();
        c.args(["run", overwrite.to_str().unwrap()])
            .env("SLUICE_TEST_FAULT", fault);
        let o = crate::support::run_command(c, None);
        let err = stderr(&o);
        check(
            !o.status.success() && err.contains(names) && err.contains("injected fault"),
            &format!("with fault {fault}, the job fails naming the task ({names}) and the cause"),
            &o,
        )?;
        let count = s.run(
            &[
                "-q",
                "--format",
                "csv",
                "-e",
                &format!("{DECLARE}SELECT count(*) AS n, min(tag) AS tag FROM t"),
            ],
            None,
        );
        check(
            stdout(&count).contains("1000,old"),
            &format!("after fault {fault}, the target keeps its 1000 old rows"),
            &count,
        )?;
    }
    // Without the fault the same script replaces the rows.
    let o = s.run(&[overwrite.to_str().unwrap()], None);
    check(o.status.success(), "the overwrite without a fault", &o)?;
    let count = s.run(
        &[
            "-q",
            "--format",
            "csv",
            "-e",
            &format!("{DECLARE}SELECT count(*) AS n FROM t"),
        ],
        None,
    );
    check(stdout(&count).contains("5000"), "5000 new rows", &count)
}

/// One slot: a second job queues while the first holds it, fails with
/// the numbers when its wait times out, and runs once the slot is free.
fn admission() -> Result<(), Failed> {
    runtime().block_on(async {
        let timeout = ["SET 'sluice.admission_timeout_secs' = '1'".to_string()];
        let first = streaming_session(1, &[]).await?;
        let second = streaming_session(1, &timeout).await?;
        let sql = "SELECT value FROM generate_series(1, 100000) ORDER BY value DESC";
        // The first job holds its slot while its result is open.
        let held = execute(&first, sql).await?;
        let refused = execute(&second, sql).await;
        let message = match refused {
            Ok(_) => return Err("a second job ran while the only slot was held".into()),
            Err(e) => e.message().unwrap_or_default().to_string(),
        };
        for part in ["for 1 task slots", "0 of this process's 1 slots are free"] {
            if !message.contains(part) {
                return Err(format!("the refusal must say '{part}': {message}").into());
            }
        }
        // A job with time to wait queues, visibly, and runs once the slot
        // is released.
        let waiting = streaming_session(1, &[]).await?;
        let queued = tokio::spawn(async move {
            let rows = rows_of(execute(&waiting, sql).await?).await?;
            Ok::<_, Failed>(tpch::row_count(&rows))
        });
        let seen = tokio::task::spawn_blocking(|| {
            wait_until(30, || {
                StreamingCounters::global()
                    .queued
                    .load(std::sync::atomic::Ordering::Relaxed)
                    == 1
            })
        })
        .await?;
        if !seen {
            return Err("the second job never showed as queued".into());
        }
        let first_rows = tpch::row_count(&rows_of(held).await?);
        let second_rows = queued.await??;
        if (first_rows, second_rows) != (100_000, 100_000) {
            return Err(format!("row counts {first_rows} and {second_rows}").into());
        }
        Ok(())
    })
}

/// `EXPLAIN` in streaming mode shows the stage graph and its mode.
fn explain_shows_live_stages() -> Result<(), Failed> {
    runtime().block_on(async {
        let session = streaming_session(PARTITIONS, &[]).await?;
        let rows = rows_of(
            execute(
                &session,
                "EXPLAIN SELECT value % 7 AS k, count(*) FROM generate_series(1, 1000) GROUP BY value % 7",
            )
            .await?,
        )
        .await?;
        let text = arrow::util::pretty::pretty_format_batches(&rows)?.to_string();
        if !text.contains("mode=streaming (live exchanges)") || !text.contains("Stage 1") {
            return Err(format!("EXPLAIN in streaming mode:\n{text}").into());
        }
        Ok(())
    })
}
