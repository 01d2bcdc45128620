//! A loopback cluster of real processes: a coordinator (`sluice server
//! --role coordinator`), executors (`sluice executor`) and a shared shuffle
//! directory. TPC-H against DataFusion alone, an executor killed with
//! SIGKILL in the middle of a stage, and an executor drained with SIGTERM.
//!
//! Faults are placed with the test hook (`SLUICE_TEST_FAULT`, given to one
//! executor only) and observed by polling `/metrics` with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use arrow::array::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_server::engine::FlightEngineFactory;
use sluice_sql_tests::{EngineFactory, EngineOutput, Failed, FileContext, Trial, tpch};

use crate::staged::leftover_jobs;
use crate::support::{Scratch, check, files_below, stdout, wait_until};

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "cluster::tpch_sf01_matches_datafusion",
            tpch_matches_datafusion,
        ),
        Trial::test(
            "cluster::streaming_tpch_sf01_matches_datafusion",
            streaming_tpch_matches_datafusion,
        ),
        Trial::test(
            "cluster::streaming_task_failure_fails_the_job_and_keeps_the_table",
            streaming_task_failure,
        ),
        Trial::test(
            "cluster::executor_killed_mid_stage_job_completes",
            executor_killed_mid_stage,
        ),
        Trial::test(
            "cluster::sigterm_drains_executor_and_hands_back_tasks",
            sigterm_drains_executor,
        ),
        Trial::test(
            "cluster::shuffle_worker_killed_after_stage_commits",
            shuffle_worker_killed_after_stage_commits,
        ),
        Trial::test(
            "cluster::orphaned_shuffle_data_swept_after_restart",
            orphaned_shuffle_data_swept_after_restart,
        ),
        Trial::test(
            "cluster::restarted_coordinator_reclaims_its_interrupted_job",
            restarted_coordinator_reclaims_its_job,
        ),
        Trial::test(
            "cluster::a_bad_value_fails_the_job_without_retries",
            bad_value_fails_without_retries,
        ),
        Trial::test(
            "cluster::s3_tables_with_secret_options_on_executors",
            s3_tables_on_executors,
        ),
    ]
}

/// A child process killed when dropped; its stderr goes to a file.
struct Proc {
    name: String,
    child: Child,
    stderr: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        format!(
            "--- {} stderr\n{}",
            self.name,
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running coordinator and its executors.
struct Cluster<'a> {
    scratch: &'a Scratch,
    coordinator: Proc,
    /// Flight SQL address for clients.
    sql: String,
    /// The executors' endpoint.
    cluster: String,
    /// The coordinator's HTTP endpoint.
    http: String,
    shuffle: PathBuf,
    executors: Vec<(Proc, String)>,
    /// Executors started so far (names their files).
    started: usize,
}

fn read_listen(path: &Path, what: &str) -> Result<Vec<String>, Failed> {
    if !wait_until(120, || path.exists()) {
        return Err(format!("{what} did not write its listen file").into());
    }
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::to_string)
        .collect())
}

impl<'a> Cluster<'a> {
    fn start(scratch: &'a Scratch) -> Result<Self, Failed> {
        Self::start_with(scratch, &[])
    }

    /// A coordinator with extra flags.
    fn start_with(scratch: &'a Scratch, extra: &[&str]) -> Result<Self, Failed> {
        Self::start_env(scratch, extra, &[])
    }

    /// A coordinator with extra flags and environment.
    fn start_env(
        scratch: &'a Scratch,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, Failed> {
        let listen = scratch.path().join("coordinator.listen");
        let shuffle = scratch.path().join("shuffle");
        let stderr = scratch.path().join("coordinator.log");
        let mut c = scratch.sluice();
        c.args([
            "server",
            "--role",
            "coordinator",
            "--bind",
            "127.0.0.1:0",
            "--cluster-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
            "--state",
            "state",
            "--heartbeat-ms",
            "200",
            "--executor-timeout-ms",
            "2000",
            "--target-partitions",
            "4",
        ])
        .arg("--shuffle-store")
        .arg(&shuffle)
        .arg("--listen-file")
        .arg(&listen)
        .args(extra)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?);
        let coordinator = Proc {
            name: "coordinator".into(),
            child: c.spawn()?,
            stderr,
        };
        let lines = read_listen(&listen, "the coordinator")
            .map_err(|e| format!("{}\n{}", e.message().unwrap_or_default(), coordinator.log()))?;
        let field = |p: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(p))
                .map(str::to_string)
                .ok_or_else(|| format!("no {p} line in the listen file: {lines:?}"))
        };
        Ok(Self {
            scratch,
            sql: format!("http://{}", lines[0]),
            cluster: format!("http://{}", field("cluster=")?),
            http: format!("http://{}", field("http=")?),
            coordinator,
            shuffle,
            executors: vec![],
            started: 0,
        })
    }

    /// Starts an executor with `slots` and extra environment; returns once
    /// it is registered (its listen file is written then).
    fn add_executor(&mut self, slots: u32, env: &[(&str, &str)]) -> Result<(), Failed> {
        let n = self.started;
        self.started += 1;
        let listen = self.scratch.path().join(format!("executor{n}.listen"));
        let stderr = self.scratch.path().join(format!("executor{n}.log"));
        let mut c = self.scratch.sluice();
        c.args([
            "executor",
            "--bind",
            "127.0.0.1:0",
            "--memory-limit",
            "2GiB",
        ])
        .args(["--coordinator", &self.cluster])
        .args(["--slots", &slots.to_string()])
        .args(["--drain-timeout-secs", "1"])
        .arg("--listen-file")
        .arg(&listen)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?);
        let proc = Proc {
            name: format!("executor{n}"),
            child: c.spawn()?,
            stderr,
        };
        let lines = read_listen(&listen, "an executor")
            .map_err(|e| format!("{}\n{}", e.message().unwrap_or_default(), proc.log()))?;
        self.executors
            .push((proc, format!("http://{}", lines[0].trim())));
        Ok(())
    }

    fn logs(&self) -> String {
        let mut out = self.coordinator.log();
        for (p, _) in &self.executors {
            out.push('\n');
            out.push_str(&p.log());
        }
        out
    }

    /// `sluice run --server` with a script, in the background.
    fn run_script(&self, name: &str, sql: &str) -> Result<Child, Failed> {
        let script = self.scratch.write(name, sql);
        let mut c = self.scratch.sluice();
        c.args(["run", "--quiet", "--server", &self.sql])
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(c.spawn()?)
    }
}

/// One sample of a Prometheus text page.
fn metric(url: &str, name: &str) -> Option<u64> {
    let body = runtime()
        .block_on(async { reqwest::get(format!("{url}/metrics")).await?.text().await })
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The 22 TPC-H queries at SF 0.1 over Flight SQL on 1 coordinator,
/// 2 executors and 1 shuffle worker match DataFusion alone; task output
/// went through the worker; both executors ran tasks; no shuffle data is
/// left.
fn tpch_matches_datafusion() -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let (worker, worker_url, worker_http) =
        start_worker(&s, &s.path().join("shuffle"), "worker", &[])?;
    let mut cluster = Cluster::start_with(&s, &["--shuffle-worker", &worker_url])?;
    cluster.add_executor(2, &[])?;
    cluster.add_executor(2, &[])?;
    let with_logs = |e: Failed| -> Failed {
        format!("{}\n{}", e.message().unwrap_or_default(), cluster.logs()).into()
    };
    run_tpch(&s, &cluster, &data, &[]).map_err(with_logs)?;
    if metric(&worker_http, "sluice_shuffle_bytes_written_total").unwrap_or(0) == 0 {
        return Err(with_logs(
            format!("no shuffle bytes went through the worker\n{}", worker.log()).into(),
        ));
    }
    check_spread(&cluster).map_err(with_logs)?;
    if !wait_until(30, || leftover_jobs(&cluster.shuffle).is_empty()) {
        return Err(with_logs(
            format!(
                "shuffle data left behind: {:?}",
                leftover_jobs(&cluster.shuffle)
            )
            .into(),
        ));
    }
    Ok(())
}

/// Both executors ran tasks.
fn check_spread(cluster: &Cluster<'_>) -> Result<(), Failed> {
    for (i, (_, http)) in cluster.executors.iter().enumerate() {
        let got = metric(http, "sluice_executor_tasks_received_total").unwrap_or(0);
        if got == 0 {
            return Err(format!("executor {i} ran no task: tasks are not spread").into());
        }
    }
    Ok(())
}

/// The 22 TPC-H queries at SF 0.1 in streaming mode on 1 coordinator and
/// 2 executors of 2 slots match DataFusion alone: every task of a query
/// runs at once, spread over both executors, and rows cross between them
/// over their live services; no channel stays open afterwards.
fn streaming_tpch_matches_datafusion() -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let mut cluster = Cluster::start(&s)?;
    cluster.add_executor(2, &[])?;
    cluster.add_executor(2, &[])?;
    let with_logs = |e: Failed| -> Failed {
        format!("{}\n{}", e.message().unwrap_or_default(), cluster.logs()).into()
    };
    run_tpch(
        &s,
        &cluster,
        &data,
        &["SET 'execution.runtime-mode' = 'streaming'"],
    )
    .map_err(with_logs)?;
    check_spread(&cluster).map_err(with_logs)?;
    let served: u64 = cluster
        .executors
        .iter()
        .map(|(_, http)| metric(http, "sluice_live_rows_served_total").unwrap_or(0))
        .sum();
    if served == 0 {
        return Err(with_logs(
            "no rows crossed between processes over the live services".into(),
        ));
    }
    let jobs = metric(&cluster.http, "sluice_streaming_jobs_total").unwrap_or(0);
    if jobs < 22 {
        return Err(with_logs(
            format!("the coordinator started {jobs} streaming jobs, expected at least 22").into(),
        ));
    }
    if !wait_until(30, || {
        cluster
            .executors
            .iter()
            .all(|(_, http)| metric(http, "sluice_live_channels_open") == Some(0))
    }) {
        return Err(with_logs(
            "live channels stayed open after the queries".into(),
        ));
    }
    Ok(())
}

/// A task failing on an executor fails a streaming write job on the
/// cluster: the exit code is non-zero, the error names the failed task and
/// the cause, and the table keeps what an earlier run published.
fn streaming_task_failure() -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let out = s.path().join("totals");
    let script = format!(
        "SET 'execution.runtime-mode' = 'streaming';\n{}",
        write_job(&data, &out)
    );
    let first = s.write("first.sql", &script);
    let o = s.run(&[first.to_str().unwrap()], None);
    check(o.status.success(), "the first run, in one process", &o)?;
    let before = published_files(&out);

    let mut cluster = Cluster::start(&s)?;
    let fault = [("SLUICE_TEST_FAULT", "stage=0,after=0,action=fail")];
    cluster.add_executor(2, &fault)?;
    cluster.add_executor(2, &fault)?;
    let job = cluster.run_script("job.sql", &script)?;
    let o = job.wait_with_output()?;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    if o.status.success() || !err.contains("injected fault") || !err.contains("stage 0 task") {
        return Err(format!(
            "the job should fail naming stage 0's task and the injected fault: {:?}\n{err}\n{}",
            o.status.code(),
            cluster.logs()
        )
        .into());
    }
    if published_files(&out) != before {
        return Err(format!(
            "the failed job changed the table: {:?} -> {:?}",
            before,
            published_files(&out)
        )
        .into());
    }
    check_totals(&s, &cluster, &data, &out)?;
    if metric(&cluster.http, "sluice_streaming_jobs_failed_total").unwrap_or(0) == 0 {
        return Err(format!("no failed streaming job counted\n{}", cluster.logs()).into());
    }
    if !wait_until(30, || {
        cluster
            .executors
            .iter()
            .all(|(_, http)| metric(http, "sluice_staged_tasks_running") == Some(0))
    }) {
        return Err(format!(
            "tasks of the failed job still run on the executors\n{}",
            cluster.logs()
        )
        .into());
    }
    Ok(())
}

/// Runs the 22 TPC-H queries over Flight SQL on `cluster`, after `setup`,
/// and compares each with DataFusion alone.
fn run_tpch(s: &Scratch, cluster: &Cluster<'_>, data: &Path, setup: &[&str]) -> Result<(), Failed> {
    runtime().block_on(async {
        let peer = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
        for ddl in tpch::create_tables_sql(data) {
            peer.sql(&ddl).await?.collect().await?;
        }
        let factory = FlightEngineFactory::new(cluster.sql.clone());
        let ctx = FileContext {
            path: s.path().join("tpch.slt"),
            scratch_dir: s.path().to_path_buf(),
            vars: Default::default(),
        };
        let mut engine = factory
            .create(&ctx)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        for ddl in tpch::create_tables_sql(data)
            .iter()
            .map(String::as_str)
            .chain(setup.iter().copied())
        {
            engine.run(ddl).await.map_err(|e| format!("{ddl}: {e}"))?;
        }
        for (name, sql) in tpch::QUERIES {
            let expected = peer.sql(sql).await?.collect().await?;
            let actual: Vec<RecordBatch> = match engine.run(sql).await {
                Ok(EngineOutput::Rows { batches, .. }) => batches,
                Ok(_) => return Err(format!("{name}: no rows came back").into()),
                Err(e) => return Err(format!("{name}: {e}").into()),
            };
            tpch::compare_results(&expected, &actual).map_err(|e| format!("{name}: {e}"))?;
            if tpch::row_count(&expected) == 0 {
                return Err(
                    format!("{name} returned no rows: the test would prove nothing").into(),
                );
            }
        }
        Ok::<(), Failed>(())
    })
}

/// The write job of the fault tests: lineitem grouped into a parquet table
/// (a scan stage, a shuffle, an aggregate and sink stage).
fn write_job(data: &Path, out: &Path) -> String {
    let mut sql = String::new();
    for ddl in tpch::create_tables_sql(data) {
        if ddl.contains("lineitem") {
            sql.push_str(&ddl);
            sql.push_str(";\n");
        }
    }
    sql.push_str(&format!(
        "CREATE TABLE totals (flag VARCHAR, status VARCHAR, n BIGINT, qty DECIMAL(38, 2)) \
         WITH ('connector' = 'filesystem', 'path' = '{}/', 'format' = 'parquet');\n\
         INSERT OVERWRITE totals SELECT l_returnflag, l_linestatus, count(*), sum(l_quantity) \
         FROM lineitem GROUP BY l_returnflag, l_linestatus;\n",
        out.display()
    ));
    sql
}

/// What the totals table must hold, from DataFusion alone, as sorted CSV lines.
fn expected_totals(data: &Path) -> Result<Vec<String>, Failed> {
    runtime().block_on(async {
        let ctx = SessionContext::new();
        for ddl in tpch::create_tables_sql(data) {
            ctx.sql(&ddl).await?.collect().await?;
        }
        let batches = ctx
            .sql(
                "SELECT l_returnflag, l_linestatus, count(*), sum(l_quantity) FROM lineitem \
                 GROUP BY l_returnflag, l_linestatus",
            )
            .await?
            .collect()
            .await?;
        Ok(csv_lines(&batches))
    })
}

fn csv_lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut lines = vec![];
    for b in batches {
        for row in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap_or_default())
                .collect();
            lines.push(cells.join(","));
        }
    }
    lines.sort();
    lines
}

/// The totals table as the embedded engine reads it back: sorted CSV lines.
fn actual_totals(s: &Scratch, out: &Path) -> Result<Vec<String>, Failed> {
    let o = s.run(
        &[
            "-q",
            "--format",
            "csv",
            "-e",
            &format!(
                "CREATE TABLE totals (flag VARCHAR, status VARCHAR, n BIGINT, qty DECIMAL(38, 2)) \
                 WITH ('connector' = 'filesystem', 'path' = '{}/', 'format' = 'parquet'); \
                 SELECT * FROM totals",
                out.display()
            ),
        ],
        None,
    );
    check(o.status.code() == Some(0), "reading the totals back", &o)?;
    let mut lines: Vec<String> = stdout(&o).lines().skip(1).map(str::to_string).collect();
    lines.sort();
    Ok(lines)
}

/// Starts the fault scenario: executor 0 alone, pausing every first attempt
/// (the test hook), and the job; waits until executor 0 runs paused tasks,
/// then adds executor 1. Returns the job's process.
fn start_paused_job(cluster: &mut Cluster<'_>, data: &Path, out: &Path) -> Result<Child, Failed> {
    cluster.add_executor(2, &[("SLUICE_TEST_FAULT", "after=0,action=pause")])?;
    let job = cluster.run_script("job.sql", &write_job(data, out))?;
    let http = cluster.executors[0].1.clone();
    if !wait_until(120, || {
        metric(&http, "sluice_staged_tasks_running").unwrap_or(0) >= 1
    }) {
        return Err(format!("executor 0 never ran a task\n{}", cluster.logs()).into());
    }
    cluster.add_executor(2, &[])?;
    Ok(job)
}

fn finish_job(cluster: &Cluster<'_>, job: Child) -> Result<(), Failed> {
    let o = job.wait_with_output()?;
    if o.status.code() != Some(0) {
        return Err(format!(
            "the job failed: {:?}\n--- stdout\n{}\n--- stderr\n{}\n{}",
            o.status.code(),
            stdout(&o),
            String::from_utf8_lossy(&o.stderr),
            cluster.logs()
        )
        .into());
    }
    Ok(())
}

/// Files of a file table outside Sluice's own `_sluice/` area: what a
/// reader of the table sees.
fn published_files(table: &Path) -> Vec<String> {
    files_below(table)
        .into_iter()
        .filter(|f| !f.starts_with("_sluice/"))
        .collect()
}

/// The table holds the job's result once: one committed set of files.
fn check_totals(s: &Scratch, cluster: &Cluster<'_>, data: &Path, out: &Path) -> Result<(), Failed> {
    let expected = expected_totals(data)?;
    let actual = actual_totals(s, out)?;
    if actual != expected {
        return Err(format!(
            "totals differ\nexpected {expected:?}\nactual   {actual:?}\n{}",
            cluster.logs()
        )
        .into());
    }
    let staging: Vec<String> = files_below(out)
        .into_iter()
        .filter(|f| f.starts_with("_sluice/staging/") && !f.ends_with("_lease.json"))
        .collect();
    if !staging.is_empty() {
        return Err(format!("staging files left in the table: {staging:?}").into());
    }
    if !wait_until(30, || leftover_jobs(&cluster.shuffle).is_empty()) {
        return Err(format!(
            "shuffle data left behind: {:?}",
            leftover_jobs(&cluster.shuffle)
        )
        .into());
    }
    Ok(())
}

/// `kill -9` of an executor running a stage's tasks: the coordinator
/// declares it lost and runs its tasks on the other executor; the result
/// is right, written once, and no shuffle data is left.
fn executor_killed_mid_stage() -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let out = s.path().join("totals");
    let mut cluster = Cluster::start(&s)?;
    let job = start_paused_job(&mut cluster, &data, &out)?;
    cluster.executors[0].0.child.kill()?; // SIGKILL
    cluster.executors[0].0.child.wait()?;
    finish_job(&cluster, job)?;
    let lost = metric(&cluster.http, "sluice_cluster_executors_lost_total");
    if lost != Some(1) {
        return Err(format!("the coordinator counted {lost:?} lost executors, not 1").into());
    }
    check_totals(&s, &cluster, &data, &out)
}

/// SIGTERM drains an executor: it takes no new task, hands back the
/// attempts that do not finish within its drain timeout and exits 0; the
/// job completes on the other executor and no executor counts as lost.
fn sigterm_drains_executor() -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let out = s.path().join("totals");
    let mut cluster = Cluster::start(&s)?;
    let job = start_paused_job(&mut cluster, &data, &out)?;
    let pid = cluster.executors[0].0.child.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut status = None;
    let exited = wait_until(60, || {
        status = cluster.executors[0].0.child.try_wait().ok().flatten();
        status.is_some()
    });
    if !exited || status.and_then(|s| s.code()) != Some(0) {
        return Err(format!(
            "the drained executor did not exit 0: {status:?}\n{}",
            cluster.logs()
        )
        .into());
    }
    finish_job(&cluster, job)?;
    let log = cluster.executors[0].0.log();
    if !log.contains("handing the attempt back") {
        return Err(format!("the executor handed nothing back\n{log}").into());
    }
    let lost = metric(&cluster.http, "sluice_cluster_executors_lost_total");
    if lost != Some(0) {
        return Err(format!("a drained executor counted as lost: {lost:?}").into());
    }
    check_totals(&s, &cluster, &data, &out)
}

/// A running `sluice shuffle-worker`: its process, Flight URL and HTTP URL.
fn start_worker(
    s: &Scratch,
    store: &Path,
    name: &str,
    extra: &[&str],
) -> Result<(Proc, String, String), Failed> {
    let listen = s.path().join(format!("{name}.listen"));
    let _ = std::fs::remove_file(&listen);
    let stderr = s.path().join(format!("{name}.log"));
    let mut c = s.sluice();
    c.args([
        "shuffle-worker",
        "--bind",
        "127.0.0.1:0",
        "--http-bind",
        "127.0.0.1:0",
    ])
    .arg("--store")
    .arg(store)
    .arg("--listen-file")
    .arg(&listen)
    .args(extra)
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&stderr)?);
    let proc = Proc {
        name: name.to_string(),
        child: c.spawn()?,
        stderr,
    };
    let lines = read_listen(&listen, "the shuffle worker")
        .map_err(|e| format!("{}\n{}", e.message().unwrap_or_default(), proc.log()))?;
    let http = lines
        .iter()
        .find_map(|l| l.strip_prefix("http="))
        .ok_or("no http= line in the worker's listen file")?
        .to_string();
    Ok((
        proc,
        format!("http://{}", lines[0]),
        format!("http://{http}"),
    ))
}

/// Task output goes through a shuffle worker; the worker is killed with
/// SIGKILL after the map stage committed. The sink stage, re-run on
/// another executor, reads the committed output from the store and the job
/// completes with the right result.
fn shuffle_worker_killed_after_stage_commits() -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let out = s.path().join("totals");
    let shuffle = s.path().join("shuffle");
    let (mut worker, worker_url, worker_http) = start_worker(&s, &shuffle, "worker", &[])?;
    let mut cluster = Cluster::start_with(&s, &["--shuffle-worker", &worker_url])?;
    // Executor 0 stalls in the sink stage (stage 1), after the map stage
    // has committed through the worker.
    cluster.add_executor(2, &[("SLUICE_TEST_FAULT", "stage=1,after=0,action=pause")])?;
    let job = cluster.run_script("job.sql", &write_job(&data, &out))?;
    let http = cluster.executors[0].1.clone();
    let coordinator = cluster.http.clone();
    if !wait_until(120, || {
        metric(&coordinator, "sluice_staged_stages_total").unwrap_or(0) >= 1
            && metric(&http, "sluice_staged_tasks_running").unwrap_or(0) >= 1
    }) {
        return Err(format!("the map stage never committed\n{}", cluster.logs()).into());
    }
    let through_worker = metric(&worker_http, "sluice_shuffle_bytes_written_total").unwrap_or(0);
    if through_worker == 0 {
        return Err(format!(
            "no shuffle bytes went through the worker\n{}\n{}",
            worker.log(),
            cluster.logs()
        )
        .into());
    }
    worker.child.kill()?; // SIGKILL
    worker.child.wait()?;
    cluster.executors[0].0.child.kill()?;
    cluster.executors[0].0.child.wait()?;
    cluster.add_executor(2, &[])?;
    finish_job(&cluster, job)?;
    check_totals(&s, &cluster, &data, &out)
}

/// The coordinator, its executors and the shuffle worker are all killed
/// with SIGKILL in the middle of a job. Once the job's lease has expired, a
/// restarted worker's sweep removes every byte the job left.
fn orphaned_shuffle_data_swept_after_restart() -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let out = s.path().join("totals");
    let shuffle = s.path().join("shuffle");
    let (mut worker, worker_url, _) = start_worker(&s, &shuffle, "worker", &[])?;
    let mut cluster = Cluster::start_with(
        &s,
        &["--shuffle-worker", &worker_url, "--job-lease-secs", "2"],
    )?;
    cluster.add_executor(2, &[("SLUICE_TEST_FAULT", "stage=1,after=0,action=pause")])?;
    let mut job = cluster.run_script("job.sql", &write_job(&data, &out))?;
    let http = cluster.executors[0].1.clone();
    let coordinator = cluster.http.clone();
    if !wait_until(120, || {
        metric(&coordinator, "sluice_staged_stages_total").unwrap_or(0) >= 1
            && metric(&http, "sluice_staged_tasks_running").unwrap_or(0) >= 1
    }) {
        return Err(format!("the map stage never committed\n{}", cluster.logs()).into());
    }
    cluster.coordinator.child.kill()?;
    cluster.coordinator.child.wait()?;
    for (p, _) in &mut cluster.executors {
        p.child.kill()?;
        p.child.wait()?;
    }
    worker.child.kill()?;
    worker.child.wait()?;
    let _ = job.kill();
    let _ = job.wait();
    let left = files_below(&shuffle.join("jobs"));
    if !left.iter().any(|f| f.ends_with(".arrows")) {
        return Err(format!("the killed job left no shuffle data to sweep: {left:?}").into());
    }
    let (_worker, _, _) = start_worker(&s, &shuffle, "worker2", &["--sweep-interval-secs", "1"])?;
    if !wait_until(60, || files_below(&shuffle.join("jobs")).is_empty()) {
        return Err(format!(
            "orphaned shuffle files remain: {:?}",
            files_below(&shuffle.join("jobs"))
        )
        .into());
    }
    Ok(())
}

/// The coordinator dies (SIGKILL) with a job between stages. Its job
/// record, stage graph included, is in the shuffle store; restarted on
/// the same state, the coordinator reclaims that job at once (its lease
/// has ten minutes left), and the sink's table holds nothing of it.
fn restarted_coordinator_reclaims_its_job() -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let out = s.path().join("totals");
    let flags = ["--job-lease-secs", "600"];
    let mut cluster = Cluster::start_with(&s, &flags)?;
    cluster.add_executor(2, &[("SLUICE_TEST_FAULT", "stage=1,after=0,action=pause")])?;
    let mut job = cluster.run_script("job.sql", &write_job(&data, &out))?;
    let (coordinator, executor) = (cluster.http.clone(), cluster.executors[0].1.clone());
    if !wait_until(120, || {
        metric(&coordinator, "sluice_staged_stages_total").unwrap_or(0) >= 1
            && metric(&executor, "sluice_staged_tasks_running").unwrap_or(0) >= 1
    }) {
        return Err(format!("the map stage never committed\n{}", cluster.logs()).into());
    }
    let jobs = leftover_jobs(&cluster.shuffle);
    let [id] = jobs.as_slice() else {
        return Err(format!("expected one job in the shuffle store, found {jobs:?}").into());
    };
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(
        cluster.shuffle.join("jobs").join(id).join("job.json"),
    )?)?;
    let stages = record["stages"].as_array().cloned().unwrap_or_default();
    if stages.len() < 2
        || stages.last().is_some_and(|s| !s["partitions"].is_null())
        || !stages
            .iter()
            .any(|s| s["plan"].as_str().is_some_and(|p| p.contains("SinkExec")))
    {
        return Err(format!("the job record does not hold the stage graph: {record:#}").into());
    }
    cluster.coordinator.child.kill()?;
    cluster.coordinator.child.wait()?;
    let _ = job.kill();
    let _ = job.wait();
    let shuffle = cluster.shuffle.clone();
    drop(cluster);
    if !leftover_jobs(&shuffle).contains(id) {
        return Err("the killed coordinator's job left nothing to reclaim".into());
    }
    std::fs::remove_file(s.path().join("coordinator.listen"))?;
    let cluster = Cluster::start_with(&s, &flags)?;
    if !wait_until(30, || leftover_jobs(&shuffle).is_empty()) {
        return Err(format!(
            "the restarted coordinator left the job's shuffle data: {:?}\n{}",
            files_below(&shuffle.join("jobs")),
            cluster.logs()
        )
        .into());
    }
    let log = cluster.coordinator.log();
    if metric(&cluster.http, "sluice_cluster_jobs_reclaimed_total") != Some(1)
        || !log.contains("job interrupted by a coordinator restart")
        || !log.contains(id.as_str())
    {
        return Err(format!("the reclaimed job was not reported\n{log}").into());
    }
    let written = published_files(&out);
    if !written.is_empty() {
        return Err(format!("the interrupted job published files: {written:?}").into());
    }
    Ok(())
}

/// A value that cannot be cast fails its task on the executor; the
/// executor reports the failure as one no retry can fix, so the job fails
/// at once with the cast error, and nothing is published.
fn bad_value_fails_without_retries() -> Result<(), Failed> {
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let out = s.path().join("keys");
    let mut cluster = Cluster::start(&s)?;
    cluster.add_executor(2, &[])?;
    let orders = tpch::create_tables_sql(&data)
        .into_iter()
        .find(|d| d.contains(" orders "))
        .ok_or("no orders table")?;
    let sql = format!(
        "{orders};\n\
         CREATE TABLE keys (k BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}/', \
         'format' = 'parquet');\n\
         INSERT INTO keys SELECT CAST(o_comment AS BIGINT) FROM orders;\n",
        out.display()
    );
    let o = cluster.run_script("bad.sql", &sql)?.wait_with_output()?;
    let err = crate::support::stderr(&o);
    if o.status.code() == Some(0) || !err.contains("Cannot cast") {
        return Err(format!(
            "expected the cast error\n--- stderr\n{err}\n{}",
            cluster.logs()
        )
        .into());
    }
    let retries = metric(&cluster.http, "sluice_staged_task_retries_total");
    if retries != Some(0) || err.contains("times; last error") {
        return Err(format!("a cast error was retried ({retries:?} retries)\n{err}").into());
    }
    let written = published_files(&out);
    if !written.is_empty() {
        return Err(format!("the failed job published files: {written:?}").into());
    }
    Ok(())
}

/// A table on S3 declared with its own endpoint and a `secret()` key:
/// executors write it (the sink) and read it back (the scan) with the
/// store declaration the coordinator sends, each resolving the secret from
/// its own environment; no process has AWS_* settings.
fn s3_tables_on_executors() -> Result<(), Failed> {
    let server = crate::s3::start_s3()?;
    let data = crate::staged::tpch_dir()?;
    let s = Scratch::new();
    let secret = [("SLUICE_SECRET_LAKE_KEY", "test")];
    let mut cluster = Cluster::start_env(&s, &[], &secret)?;
    cluster.add_executor(2, &secret)?;
    cluster.add_executor(2, &secret)?;
    let orders = tpch::create_tables_sql(&data)
        .into_iter()
        .find(|d| d.contains(" orders "))
        .ok_or("no orders table")?;
    let write = format!(
        "{orders};\n\
         CREATE TABLE lake_orders (k BIGINT, status VARCHAR) WITH ('connector' = 'filesystem', \
         'path' = 's3://lake/orders/', 'format' = 'parquet', 'aws.endpoint' = '{}', \
         'aws.allow_http' = 'true', 'aws.region' = 'us-east-1', 'aws.access_key_id' = 'test', \
         'aws.secret_access_key' = secret('LAKE_KEY'));\n\
         INSERT INTO lake_orders SELECT o_orderkey, o_orderstatus FROM orders;\n",
        server.endpoint
    );
    let sql_url = cluster.sql.clone();
    let run = |name: &str, sql: &str| {
        let path = s.write(name, sql);
        let mut c = s.sluice();
        c.args(["run", "--quiet", "--format", "csv", "--server", &sql_url])
            .arg(&path);
        crate::support::run_command(c, None)
    };
    let o = run("write.sql", &write);
    check(
        o.status.code() == Some(0),
        &format!("the write failed\n{}", cluster.logs()),
        &o,
    )?;
    // Fresh executors, which have not opened the store for the sink: the
    // scan finds it only through the declaration sent with the task.
    for (p, _) in &mut cluster.executors {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
        p.child.wait()?;
    }
    cluster.executors.clear();
    cluster.add_executor(2, &secret)?;
    cluster.add_executor(2, &secret)?;
    let o = run(
        "read.sql",
        "SELECT status, count(*) AS n, sum(k) AS s FROM lake_orders GROUP BY status ORDER BY status;\n",
    );
    if o.status.code() != Some(0) {
        return Err(format!(
            "the read failed\n--- stdout\n{}\n--- stderr\n{}\n{}",
            stdout(&o),
            crate::support::stderr(&o),
            cluster.logs()
        )
        .into());
    }
    let expected = runtime().block_on(async {
        let ctx = SessionContext::new();
        ctx.sql(&orders).await?.collect().await?;
        let b = ctx
            .sql(
                "SELECT o_orderstatus, count(*), sum(o_orderkey) FROM orders \
                 GROUP BY o_orderstatus ORDER BY o_orderstatus",
            )
            .await?
            .collect()
            .await?;
        Ok::<_, Failed>(csv_lines(&b))
    })?;
    let actual: Vec<String> = stdout(&o).lines().skip(1).map(str::to_string).collect();
    if actual != expected {
        return Err(format!(
            "read back from S3 through the cluster:\n{actual:?}\nexpected {expected:?}\n{}",
            cluster.logs()
        )
        .into());
    }
    Ok(())
}
