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
        Trial::test("staged::rows_scanned_across_tasks_equal_table_rows", || {
            rows_scanned_across_tasks(false)
        }),
        Trial::test(
            "staged::decoded_sink_tasks_scan_and_write_every_row_once",
            || rows_scanned_across_tasks(true),
        ),
        Trial::test(
            "staged::retried_map_task_gives_same_answer_without_duplicates",
            retried_map_task,
        ),
        Trial::test("staged::dry_run_shows_stages", dry_run_shows_stages),
        Trial::test("staged::tpch_stage_graph_snapshots", tpch_stage_graphs),
        Trial::test(
            "staged::shuffle_worker_process_stores_and_serves_blocks",
            shuffle_worker_process,
        ),
        Trial::test(
            "staged::small_build_sides_broadcast_only_when_safe",
            broadcast_only_when_safe,
        ),
        Trial::test(
            "staged::tolerant_csv_scan_travels_to_executors",
            tolerant_csv_scan_through_the_wire,
        ),
    ];
    for (name, sql) in tpch::QUERIES {
        trials.push(Trial::test(
            format!("staged::tpch_sf01_{name}"),
            move || tpch_query(name, sql),
        ));
    }
    trials
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(PARTITIONS)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The generated data, shared by every test process.
pub(crate) fn tpch_dir() -> Result<PathBuf, Failed> {
    let cache = std::env::temp_dir().join("sluice-tpch");
    tpch::generate_parquet(&cache, SCALE_FACTOR).map_err(|e| format!("tpch data: {e}").into())
}

/// An embedded session in staged batch mode, shuffling into `shuffle`.
/// With `serialized`, every task's plan is encoded and then decoded in a
/// fresh context that holds only an executor's registries before it runs.
async fn staged_session(
    shuffle: &Path,
    data: &Path,
    serialized: bool,
) -> Result<EmbeddedSession, Failed> {
    let config = SessionConfig::new().with_target_partitions(PARTITIONS);
    let session = EmbeddedSession::new(config, RunContext::default(), false);
    let mut setup = vec![
        "SET 'execution.runtime-mode' = 'batch'".to_string(),
        format!("SET 'sluice.task_slots' = '{PARTITIONS}'"),
        format!("SET 'sluice.shuffle_dir' = '{}'", shuffle.display()),
        format!("SET 'sluice.serialize_stage_plans' = '{serialized}'"),
    ];
    setup.extend(tpch::create_tables_sql(data));
    for sql in setup {
        execute(&session, &sql).await?;
    }
    Ok(session)
}

pub(crate) async fn execute(session: &EmbeddedSession, sql: &str) -> Result<Executed, Failed> {
    let stmt = parse_statement(sql).map_err(|e| format!("{sql}: {e}"))?;
    session
        .execute(stmt, 1, &mut |_| {})
        .await
        .map_err(|e| format!("{sql}: {e}").into())
}

pub(crate) async fn rows_of(executed: Executed) -> Result<Vec<RecordBatch>, Failed> {
    match executed {
        Executed::Rows { stream, .. } => Ok(collect(stream).await?),
        _ => Err("expected rows".into()),
    }
}

/// Job directories left in the shuffle store.
pub(crate) fn leftover_jobs(shuffle: &Path) -> Vec<String> {
    std::fs::read_dir(shuffle.join("jobs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn has_join(plan: &Arc<dyn ExecutionPlan>) -> bool {
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

        // Every stage travels through the executor wire format, as on a cluster.
        let shuffle = tempfile::tempdir()?;
        let session = staged_session(shuffle.path(), &data, true).await?;

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
/// With `serialized`, the tasks (the sink's too) are decoded from the wire
/// format and report their own scan metrics.
fn rows_scanned_across_tasks(serialized: bool) -> Result<(), Failed> {
    let data = tpch_dir()?;
    runtime().block_on(async {
        let shuffle = tempfile::tempdir()?;
        let out = tempfile::tempdir()?;
        let session = staged_session(shuffle.path(), &data, serialized).await?;
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

/// The stage graphs of the 22 TPC-H queries, as `EXPLAIN` shows them, with
/// 2 partitions and 2 task slots; data paths are redacted.
fn tpch_stage_graphs() -> Result<(), Failed> {
    let data = tpch_dir()?;
    runtime().block_on(async {
        let shuffle = tempfile::tempdir()?;
        let session = staged_session(shuffle.path(), &data, false).await?;
        let options = session.session().options();
        let runtime = StagedRuntime::from_options(&options).await?;
        let data_path = data.display().to_string();
        for (name, sql) in tpch::QUERIES {
            let stmt = parse_statement(sql)?;
            let Planned::Query { plan } = session.session().plan(stmt, 1, true).await? else {
                return Err("a TPC-H query plans as a query".into());
            };
            let text = runtime
                .stage_graph(plan, true)?
                .display()
                .replace(&data_path, "[TPCH]")
                .replace(data_path.trim_start_matches('/'), "[TPCH]");
            insta::assert_snapshot!(format!("tpch_stage_graph_{name}"), text);
        }
        Ok(())
    })
}

/// `sluice shuffle-worker` as a process: a put through Flight lands in its
/// store and reads back; a bad --memory-limit is refused with the option named.
fn shuffle_worker_process() -> Result<(), Failed> {
    let s = Scratch::new();
    let mut c = s.sluice();
    c.args([
        "shuffle-worker",
        "--store",
        "store",
        "--memory-limit",
        "lots",
    ]);
    let o = crate::support::run_command(c, None);
    check(
        o.status.code() == Some(2)
            && crate::support::stderr(&o).contains("--memory-limit")
            && crate::support::stderr(&o).contains("256MB"),
        "a bad --memory-limit is an error naming the option and an example",
        &o,
    )?;
    let store = s.path().join("store");
    let index = worker_round_trip(&s, store.to_str().ok_or("path")?, &[])?;
    // The worker listed the data object in its store; after delete_job the
    // job's directory is gone, staging files included.
    let job_dir = store.join("jobs").join(&index.job);
    if job_dir.exists() {
        return Err(format!("{} survived delete_job", job_dir.display()).into());
    }
    Ok(())
}

/// Starts `sluice shuffle-worker --store STORE` with `env`, puts 8 blocks of
/// 2 MiB (3 partitions) through it, reads partition 2 back, then deletes the
/// job and checks nothing is left. Returns the attempt's index.
pub(crate) fn worker_round_trip(
    s: &Scratch,
    store: &str,
    env: &[(&str, &str)],
) -> Result<sluice_shuffle::AttemptIndex, Failed> {
    let listen = s.path().join("listen");
    let mut c = s.sluice();
    c.args([
        "shuffle-worker",
        "--bind",
        "127.0.0.1:0",
        "--memory-limit",
        "64MiB",
    ])
    .args(["--store", store])
    .arg("--listen-file")
    .arg(&listen)
    .envs(env.iter().copied())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn()?;
    let result = (|| -> Result<sluice_shuffle::AttemptIndex, Failed> {
        if !crate::support::wait_until(60, || listen.exists()) {
            return Err("the worker did not write its listen file".into());
        }
        let url = format!("http://{}", std::fs::read_to_string(&listen)?.trim());
        runtime().block_on(async {
            use futures::StreamExt;
            let client = sluice_shuffle::ShuffleClient::connect(&url).await?;
            let schema = Arc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
            ]));
            // Values that barely compress, so the data object spans several
            // upload parts.
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            let values: Vec<i64> = (0..256 * 1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as i64
                })
                .collect();
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(arrow::array::Int64Array::from(values))],
            )?;
            let block = sluice_shuffle::format::encode_block(
                &schema,
                &[batch],
                sluice_shuffle::ShuffleCompression::Zstd,
            )?;
            let id = sluice_shuffle::AttemptId {
                job: "w1".into(),
                stage: 0,
                task: 0,
                attempt: 0,
            };
            let blocks = (0..8).map(move |i| (i % 3, 256 * 1024u64, block.clone()));
            let index = client
                .put_attempt(
                    &id,
                    3,
                    sluice_shuffle::ShuffleCompression::Zstd,
                    futures::stream::iter(blocks),
                )
                .await?;
            if index.rows != 8 * 256 * 1024 || index.partitions[2].len() != 2 {
                return Err(format!("unexpected index {index:?}").into());
            }
            let mut rows = 0;
            let mut stream = Box::pin(client.get(&id, 2, None).await?);
            while let Some(block) = stream.next().await {
                for b in sluice_shuffle::format::decode_block(block?.1)? {
                    rows += b.num_rows();
                }
            }
            if rows != 2 * 256 * 1024 {
                return Err(format!("partition 2 read {rows} rows, not {}", 2 * 256 * 1024).into());
            }
            let listed = client.list_job("w1").await?;
            if !listed
                .iter()
                .any(|o| o.path == index.data && o.size == index.bytes)
            {
                return Err(format!("the data object is not listed: {listed:?}").into());
            }
            client.delete_job("w1").await?;
            if !client.list_job("w1").await?.is_empty() {
                return Err("the job's data survived delete_job".into());
            }
            Ok(index)
        })
    })();
    let _ = child.kill();
    let output = child.wait_with_output()?;
    result.map_err(|e| {
        format!(
            "{}\nworker stderr:\n{}",
            e.message().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr)
        )
        .into()
    })
}

fn join_modes(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<String>) {
    if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
        out.push(format!("{:?} {:?}", j.join_type(), j.partition_mode()));
    }
    for c in plan.children() {
        join_modes(c, out);
    }
}

/// A small build side (a memory table with exact statistics) is broadcast
/// for an inner join, but a left join, which emits unmatched build rows,
/// becomes a partitioned join: broadcasting it to the probe side's tasks
/// would emit the unmatched row once per task.
fn broadcast_only_when_safe() -> Result<(), Failed> {
    let s = Scratch::new();
    runtime().block_on(async {
        let shuffle = s.path().join("shuffle");
        let config = SessionConfig::new().with_target_partitions(PARTITIONS);
        let session = EmbeddedSession::new(config, RunContext::default(), false);
        for sql in [
            "SET 'execution.runtime-mode' = 'batch'".to_string(),
            format!("SET 'sluice.shuffle_dir' = '{}'", shuffle.display()),
            format!(
                "CREATE TABLE big (k BIGINT) WITH ('connector' = 'filesystem', \
                 'path' = '{}/big/', 'format' = 'parquet')",
                s.path().display()
            ),
            // Two input partitions, so two files and two scan tasks.
            "INSERT INTO big SELECT value FROM generate_series(1, 100000) \
             UNION ALL SELECT value FROM generate_series(100001, 200000)"
                .to_string(),
            "CREATE TABLE small AS VALUES (0, 'none'), (1, 'one'), (2, 'two')".to_string(),
        ] {
            execute(&session, &sql).await?;
        }
        let cases = [
            (
                "SELECT count(*) FROM small JOIN big ON small.column1 = big.k",
                "Inner CollectLeft",
                2,
            ),
            (
                "SELECT count(*) FROM small LEFT JOIN big ON small.column1 = big.k",
                "Left Partitioned",
                3,
            ),
        ];
        for (sql, mode, rows) in cases {
            let Planned::Query { plan } = session
                .session()
                .plan(parse_statement(sql)?, 1, true)
                .await?
            else {
                return Err("a query plans as a query".into());
            };
            let mut modes = vec![];
            join_modes(&plan, &mut modes);
            if modes != [mode] {
                return Err(format!("{sql}: joins {modes:?}, expected [{mode}]").into());
            }
            let graph = StagedRuntime::from_options(&session.session().options())
                .await?
                .stage_graph(plan, true)?;
            if !graph
                .stages
                .iter()
                .any(|st| has_join(&st.plan) && st.tasks >= 2)
            {
                return Err(format!(
                    "{sql}: the join must run in 2 or more tasks:\n{}",
                    graph.display()
                )
                .into());
            }
            let out = rows_of(execute(&session, sql).await?).await?;
            let n = arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(
                out[0].column(0),
            )
            .value(0);
            if n != rows {
                return Err(format!("{sql}: {n} rows, expected {rows}").into());
            }
        }
        Ok(())
    })
}

/// A CSV table that skips bad records (Sluice's own CSV scan) in the
/// executor wire format: its files, typed partition values, options and
/// bad-record limit survive the round trip, and the limit still fails the
/// statement.
fn tolerant_csv_scan_through_the_wire() -> Result<(), Failed> {
    let s = Scratch::new();
    s.write("sales/dt=2026-01-01/a.csv", "id,qty\n1,3\n2,x\n3,4\n");
    s.write("sales/dt=2026-01-02/b.csv", "id,qty\n4,5\n5,y\n6,6\n");
    let script = |max_bad: u32| {
        format!(
            "SET 'execution.runtime-mode' = 'batch';\n\
             SET 'sluice.task_slots' = '2';\n\
             SET 'sluice.shuffle_dir' = 'shuffle';\n\
             SET 'sluice.serialize_stage_plans' = 'true';\n\
             CREATE TABLE sales (id BIGINT, qty BIGINT, dt DATE) PARTITIONED BY (dt) \
             WITH ('connector' = 'filesystem', 'path' = '{}/sales/', 'format' = 'csv', \
             'error-handling.max-bad-records' = '{max_bad}');\n\
             SELECT dt, count(*) AS n, sum(qty) AS q FROM sales GROUP BY dt ORDER BY dt;\n",
            s.path().display()
        )
    };
    let o = s.run(&["-q", "--format", "csv", "-e", &script(2)], None);
    check(o.status.code() == Some(0), "the tolerant scan failed", &o)?;
    let out = stdout(&o);
    let rows: Vec<&str> = out.lines().skip(1).map(str::trim).collect();
    if rows != ["2026-01-01,2,7", "2026-01-02,2,11"] {
        return Err(format!("wrong rows: {rows:?}\n{}", stdout(&o)).into());
    }
    let o = s.run(&["-q", "--format", "csv", "-e", &script(1)], None);
    let err = crate::support::stderr(&o);
    check(
        o.status.code() != Some(0) && err.contains("more than 1 bad records"),
        "the second bad record must fail the statement",
        &o,
    )?;
    // Bad data fails the same way every time: no second attempt.
    check(
        !err.contains("times; last error") && err.contains("task 0 failed:"),
        "a bad-record failure must not be retried",
        &o,
    )?;
    Ok(())
}
