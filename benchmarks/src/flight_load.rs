//! `sluice-bench flight-load`: concurrent Flight SQL clients run mixed
//! small queries against one `sluice server` while one client bulk-ingests;
//! reports throughput, p50/p99 latency, errors and the server's peak RSS.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions};
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::cli::FlightLoadArgs;

/// The small queries clients cycle through.
const QUERIES: [&str; 5] = [
    "SELECT count(*) FROM load_dim",
    "SELECT name, amount FROM load_dim WHERE id = 4242",
    "SELECT name, sum(amount) AS total FROM load_dim GROUP BY name ORDER BY total DESC LIMIT 5",
    "SELECT 1 + 1",
    "SELECT id FROM load_dim WHERE amount > 9990 ORDER BY id LIMIT 10",
];

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn start(sluice: &Path, dir: &Path) -> Result<(ServerProcess, String)> {
    let listen = dir.join("listen");
    let _ = std::fs::remove_file(&listen);
    let child = Command::new(sluice)
        .args(["server", "--bind", "127.0.0.1:0", "--listen-file"])
        .arg(&listen)
        .arg("--state")
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", sluice.display()))?;
    let server = ServerProcess(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !listen.exists() {
        if Instant::now() > deadline {
            bail!("the server did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr = std::fs::read_to_string(&listen)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok((server, addr))
}

async fn client(addr: &str) -> Result<FlightSqlServiceClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut c = FlightSqlServiceClient::new(channel);
    c.set_header("cookie", format!("arrow_flight_session_id={}", uuid_like()));
    Ok(c)
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "load{:x}{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn query(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Result<usize> {
    let info = c.execute(sql.to_string(), None).await?;
    let mut rows = 0;
    for ep in info.endpoint {
        if let Some(t) = ep.ticket {
            let batches: Vec<RecordBatch> = c.do_get(t).await?.try_collect().await?;
            rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
    }
    Ok(rows)
}

fn ingest_batch(round: i64) -> RecordBatch {
    let n = 10_000;
    let ids: Vec<i64> = (0..n).map(|i| round * n + i).collect();
    let names: Vec<String> = (0..n).map(|i| format!("n{}", i % 97)).collect();
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(ids)) as _),
        ("name", Arc::new(StringArray::from(names)) as _),
    ])
    .expect("ingest batch")
}

async fn ingest(c: &mut FlightSqlServiceClient<Channel>, round: i64) -> Result<i64> {
    let cmd = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: 1,
            if_exists: 2,
        }),
        table: "load_ingest".into(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    let batch = ingest_batch(round);
    let stream = futures::stream::iter(vec![Ok::<_, arrow_flight::error::FlightError>(batch)]);
    Ok(c.execute_ingest(cmd, stream).await?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs the load and prints the report; false when any request failed.
pub(crate) fn run(args: &FlightLoadArgs) -> Result<bool> {
    let dir = tempfile::Builder::new().prefix("sluice-load-").tempdir()?;
    let (server, addr) = start(&args.sluice, dir.path())?;
    let pid = server.0.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        // A dimension table of 100k rows for the queries.
        let mut setup = client(&addr).await?;
        query(&mut setup, "CREATE TABLE load_dim (id BIGINT, name VARCHAR, amount BIGINT)").await?;
        query(
            &mut setup,
            "INSERT INTO load_dim SELECT value, concat('name', CAST(value % 50 AS VARCHAR)), value % 10000 FROM generate_series(1, 100000)",
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let mut tasks = vec![];
        for i in 0..args.clients {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = client(&addr).await?;
                let mut latencies = vec![];
                let mut errors = 0u64;
                let mut n = i;
                while Instant::now() < deadline {
                    let sql = QUERIES[n % QUERIES.len()];
                    n += 1;
                    let t0 = Instant::now();
                    match query(&mut c, sql).await {
                        Ok(_) => latencies.push(t0.elapsed()),
                        Err(e) => {
                            errors += 1;
                            eprintln!("query failed: {e:#}");
                        }
                    }
                }
                anyhow::Ok((latencies, errors))
            }));
        }
        let ingest_task = {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut c = client(&addr).await?;
                let mut rounds = 0i64;
                let mut rows = 0i64;
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    match ingest(&mut c, rounds).await {
                        Ok(n) => rows += n,
                        Err(e) => {
                            errors += 1;
                            eprintln!("ingest failed: {e:#}");
                        }
                    }
                    rounds += 1;
                }
                anyhow::Ok((rounds, rows, errors))
            })
        };
        let mut all = vec![];
        let mut errors = 0u64;
        for t in tasks {
            let (l, e) = t.await??;
            all.extend(l);
            errors += e;
        }
        let (rounds, rows, ingest_errors) = ingest_task.await??;
        let mut check = client(&addr).await?;
        let landed = query(&mut check, "SELECT id FROM load_ingest").await?;
        anyhow::Ok((all, errors, rounds, rows, ingest_errors, landed))
    })?;
    let (mut latencies, errors, rounds, rows, ingest_errors, landed) = report;
    latencies.sort();
    let peak = peak_rss(pid).unwrap_or(0);
    drop(server);
    let n = latencies.len();
    println!("flight-load: {} clients, {} s", args.clients, args.seconds);
    println!(
        "  queries      {n} ok, {errors} failed, {:.0} queries/s",
        n as f64 / args.seconds as f64
    );
    println!(
        "  latency      p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  ingest       {rounds} ingests, {rows} rows, {ingest_errors} failed; {landed} rows visible"
    );
    println!(
        "  server peak RSS {:.0} MiB",
        peak as f64 / (1024.0 * 1024.0)
    );
    Ok(errors == 0 && ingest_errors == 0 && landed as i64 == rows)
}
