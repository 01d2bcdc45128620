//! Staged batch mode, embedded: TPC-H at scale factor 0.1 against
//! single-process DataFusion, task splitting, retries and clean-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec};
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_planner::{Planned, RunContext, parse_statement};
use sluice_server::embedded::{EmbeddedSession, Executed};
use sluice_server::staged::StagedRuntime;
use sluice_sql_tests::tpch;
use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, check, stdout};

/// TPC-H scale factor of the correctness runs.
const SCALE_FACTOR: f64 = 0.1;
/// Partitions (and task slots): at least 2, so every exchange cuts stages.
const PARTITIONS: usize = 2;

pub(crate) fn trials() -> Vec<Trial> {
    let mut trials = vec![
        Trial::test(
            "staged::rows_scanned_across_tasks_equal_table_rows",
            rows_scanned_across_tasks,
        ),
        Trial::test(
            "staged::retried_map_task_gives_same_answer_without_duplicates",
            retried_map_task,
        ),
        Trial::test("staged::dry_run_shows_stages", dry_run_shows_stages),
    ];
    for (name, sql) in tpch::QUERIES {
        trials.push(Trial::test(
            format!("staged::tpch_sf01_{name}"),
            move || tpch_query(name, sql),
        ));
    }
    trials
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(PARTITIONS)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The generated data, shared by every test process.
fn tpch_dir() -> Result<PathBuf, Failed> {
    let cache = std::env::temp_dir().join("sluice-tpch");
    tpch::generate_parquet(&cache, SCALE_FACTOR).map_err(|e| format!("tpch data: {e}").into())
}

/// An embedded session in staged batch mode, shuffling into `shuffle`.
async fn staged_session(shuffle: &Path, data: &Path) -> Result<EmbeddedSession, Failed> {
    let config = SessionConfig::new().with_target_partitions(PARTITIONS);
    let session = EmbeddedSession::new(config, RunContext::default(), false);
    let mut setup = vec![
        "SET 'execution.runtime-mode' = 'batch'".to_string(),
        format!("SET 'sluice.task_slots' = '{PARTITIONS}'"),
        format!("SET 'sluice.shuffle_dir' = '{}'", shuffle.display()),
    ];
    setup.extend(tpch::create_tables_sql(data));
    for sql in setup {
        execute(&session, &sql).await?;
    }
    Ok(session)
}

async fn execute(session: &EmbeddedSession, sql: &str) -> Result<Executed, Failed> {
    let stmt = parse_statement(sql).map_err(|e| format!("{sql}: {e}"))?;
    session
        .execute(stmt, 1, &mut |_| {})
        .await
        .map_err(|e| format!("{sql}: {e}").into())
}

async fn rows_of(executed: Executed) -> Result<Vec<RecordBatch>, Failed> {
    match executed {
        Executed::Rows { stream, .. } => Ok(collect(stream).await?),
        _ => Err("expected rows".into()),
    }
}

/// Job directories left in the shuffle store.
fn leftover_jobs(shuffle: &Path) -> Vec<String> {
    std::fs::read_dir(shuffle.join("jobs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn has_join(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<HashJoinExec>().is_some()
        || plan.downcast_ref::<NestedLoopJoinExec>().is_some()
        || plan.children().into_iter().any(has_join)
}

fn tpch_query(name: &str, sql: &str) -> Result<(), Failed> {
    let data = tpch_dir()?;
    runtime().block_on(async {
        // The peer: DataFusion alone, same partitions.
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().with_target_partitions(PARTITIONS),
        );
        for ddl in tpch::create_tables_sql(&data) {
            ctx.sql(&ddl).await?.collect().await?;
        }
        let expected = ctx.sql(sql).await?.collect().await?;

        let shuffle = tempfile::tempdir()?;
        let session = staged_session(shuffle.path(), &data).await?;

        // Q13, Q21 and Q22 must split their join stages over tasks.
        if matches!(name, "q13" | "q21" | "q22") {
            let stmt = parse_statement(sql)?;
            let Planned::Query { plan } = session.session().plan(stmt, 1, true).await? else {
                return Err("a TPC-H query plans as a query".into());
            };
            let options = session.session().options();
            let graph = StagedRuntime::from_options(&options)
                .await?
                .stage_graph(plan, true)?;
            let split = graph
                .stages
                .iter()
                .filter(|s| has_join(&s.plan))
                .all(|s| s.tasks >= 2);
            if !split {
                return Err(format!(
                    "{name}: every join stage must run with 2 or more tasks:\n{}",
                    graph.display()
                )
                .into());
            }
        }

        let actual = rows_of(execute(&session, sql).await?).await?;
        tpch::compare_results(&expected, &actual).map_err(|e| format!("{name}: {e}"))?;
        if tpch::row_count(&expected) == 0 {
            return Err(format!("{name} returned no rows: the test would prove nothing").into());
        }
        // The result stream ended: its job's data is deleted off the
        // consumer's path; wait for it briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !leftover_jobs(shuffle.path()).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let left = leftover_jobs(shuffle.path());
        if !left.is_empty() {
            return Err(format!("{name}: shuffle data left behind: {left:?}").into());
        }
        Ok(())
    })
}

/// Every row of the table is read exactly once across the tasks of the
/// scan stage: a copy to a file sink reads `lineitem` once and writes it once.
fn rows_scanned_across_tasks() -> Result<(), Failed> {
    let data = tpch_dir()?;
    runtime().block_on(async {
        let shuffle = tempfile::tempdir()?;
        let out = tempfile::tempdir()?;
        let session = staged_session(shuffle.path(), &data).await?;
        let expected = rows_of(execute(&session, "SELECT count(*) FROM lineitem").await?).await?;
        let expected = arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(
            expected[0].column(0),
        )
        .value(0) as u64;
        execute(
            &session,
            &format!(
                "CREATE TABLE copy (l_orderkey BIGINT, l_linenumber INT, l_quantity DECIMAL(15, 2)) \
                 WITH ('connector' = 'filesystem', 'path' = '{}/copy/', 'format' = 'parquet')",
                out.path().display()
            ),
        )
        .await?;
        let written = execute(
            &session,
            "INSERT INTO copy SELECT l_orderkey, l_linenumber, l_quantity FROM lineitem \
             WHERE l_orderkey % 7 <> 100",
        )
        .await?;
        let Executed::Written {
            outcome, rows_read, ..
        } = written
        else {
            return Err("INSERT must write".into());
        };
        if rows_read != Some(expected) || outcome.rows != expected {
            return Err(format!(
                "lineitem has {expected} rows; the tasks read {rows_read:?} and wrote {}",
                outcome.rows
            )
            .into());
        }
        let count = rows_of(execute(&session, "SELECT count(*) FROM copy").await?).await?;
        let copied = arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(
            count[0].column(0),
        )
        .value(0) as u64;
        if copied != expected {
            return Err(format!("the copy holds {copied} rows, not {expected}").into());
        }
        Ok(())
    })
}

const RETRY_SCRIPT: &str = "\
SET 'execution.runtime-mode' = 'batch';
SET 'sluice.task_slots' = '2';
SET 'datafusion.execution.target_partitions' = '2';
SET 'sluice.shuffle_dir' = 'shuffle';
CREATE TABLE totals (k BIGINT, n BIGINT, s BIGINT)
  WITH ('connector' = 'filesystem', 'path' = 'out/totals/', 'format' = 'parquet');
INSERT INTO totals SELECT value % 1000 AS k, count(*) AS n, sum(value) AS s
  FROM generate_series(1, 200000) GROUP BY value % 1000;
SELECT count(*) AS groups, sum(n) AS total_rows, sum(s) AS total FROM totals;
";

/// A map task fails after its first batches; its retry reads the same
/// input, and the sink holds each group exactly once.
fn retried_map_task() -> Result<(), Failed> {
    let s = Scratch::new();
    let script = s.write("retry.sql", RETRY_SCRIPT);
    let mut c = s.sluice();
    c.args(["run", "--format", "csv", script.to_str().unwrap()])
        .env("SLUICE_LOG", "warn")
        .env(
            "SLUICE_TEST_FAULT",
            "stage=0,task=0,attempt=0,after=0,action=fail",
        );
    let o = crate::support::run_command(c, None);
    check(
        o.status.code() == Some(0),
        "the job survives a failed attempt",
        &o,
    )?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    check(
        stderr.contains("task attempt failed") && stderr.contains("injected fault"),
        "the failed attempt is logged",
        &o,
    )?;
    check(
        stdout(&o).contains("groups,total_rows,total\n1000,200000,20000100000\n"),
        "every group once, every row counted once",
        &o,
    )?;
    check(
        leftover_jobs(&s.path().join("shuffle")).is_empty(),
        "the job's shuffle data is deleted",
        &o,
    )?;
    Ok(())
}

/// `--dry-run` in batch mode prints the stage graph.
fn dry_run_shows_stages() -> Result<(), Failed> {
    let s = Scratch::new();
    let o = s.run(
        &[
            "--dry-run",
            "-e",
            "SET 'execution.runtime-mode' = 'batch'; \
             SET 'datafusion.execution.target_partitions' = '2'; \
             SELECT value % 10 AS k, count(*) FROM generate_series(1, 100) GROUP BY value % 10 ORDER BY k",
        ],
        None,
    );
    check(o.status.code() == Some(0), "dry run succeeds", &o)?;
    let out = stdout(&o);
    check(
        out.contains("StageGraph: mode=batch")
            && out.contains("Stage 0: tasks=")
            && out.contains("ShuffleWriterExec: output=Hash")
            && out.contains("ShuffleReaderExec: stage=0"),
        "stages, tasks, partitioning and exchanges are shown",
        &o,
    )?;
    Ok(())
}
