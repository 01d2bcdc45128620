//! `sluice server` end to end: the Python ADBC suite, the JDBC driver's
//! connect sequence replayed with arrow-rs' Flight SQL client, `sluice run
//! --server`, restarts and the HTTP endpoint.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetTables, SqlInfo};
use futures::TryStreamExt;
use prost::Message;
use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, run_command, stderr, stdout, wait_until};

fn ensure(cond: bool, what: impl std::fmt::Display) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what.to_string().into())
    }
}

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test("flight::adbc_python_suite", adbc_python_suite),
        Trial::test("flight::jdbc_connect_sequence", jdbc_connect_sequence),
        Trial::test("flight::run_script_on_server", run_script_on_server),
        Trial::test("flight::catalog_survives_restart", catalog_survives_restart),
        Trial::test("flight::health_and_metrics", health_and_metrics),
        Trial::test("flight::arrow_rs_cli", arrow_rs_cli),
        Trial::test("flight::cancel_and_shutdown", cancel_and_shutdown),
    ]
}

/// A running `sluice server`, terminated on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) address: String,
    pub(crate) http: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    // SIGTERM: the graceful path.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    for _ in 0..300 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn start_server(dir: &Path, extra: &[&str]) -> Result<Server, Failed> {
    let listen = dir.join(format!("listen-{}", uuid::Uuid::new_v4().simple()));
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir)
        .args([
            "server",
            "--bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ])
        .arg("--listen-file")
        .arg(&listen)
        .args(["--state", "state", "--target-partitions", "2"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut server = Server {
        child,
        address: String::new(),
        http: None,
    };
    if !wait_until(60, || listen.exists()) {
        return Err("sluice server did not write its listen file within 60 s".into());
    }
    let text = std::fs::read_to_string(&listen)?;
    let mut lines = text.lines();
    server.address = lines.next().unwrap_or_default().to_string();
    server.http = lines
        .next()
        .and_then(|l| l.strip_prefix("http="))
        .map(str::to_string);
    Ok(server)
}

fn venv() -> Result<PathBuf, Failed> {
    let dir = std::env::var_os("SLUICE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = dir.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import adbc_driver_flightsql, pyarrow, pytest"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(format!(
            "{} lacks adbc-driver-flightsql, pyarrow or pytest; run .ci/run (it installs them)",
            dir.display()
        )
        .into());
    }
    Ok(dir)
}

fn adbc_python_suite() -> Result<(), Failed> {
    let venv = venv()?;
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let scratch = Scratch::new();
    let mut c = Command::new(venv.join("bin/python"));
    c.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp"])
        .arg(scratch.path().join("pytest"))
        .arg(&tests)
        .current_dir(&tests)
        .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"));
    let out = run_command(c, None);
    ensure(
        out.status.success(),
        format!("pytest failed:\n{}\n{}", stdout(&out), stderr(&out)),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(
    address: &str,
) -> Result<FlightSqlServiceClient<tonic::transport::Channel>, Failed> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    Ok(FlightSqlServiceClient::new(channel))
}

async fn fetch(
    client: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    info: arrow_flight::FlightInfo,
) -> Result<Vec<arrow::array::RecordBatch>, Failed> {
    let mut out = vec![];
    for ep in info.endpoint {
        let ticket = ep.ticket.ok_or("endpoint without ticket")?;
        let batches: Vec<_> = client.do_get(ticket).await?.try_collect().await?;
        out.extend(batches);
    }
    Ok(out)
}

/// The Arrow Flight SQL JDBC driver's connect sequence: unfiltered
/// GetSqlInfo, then every statement prepared, GetTables with schemas,
/// SetSessionOptions(catalog) and CloseSession.
fn jdbc_connect_sequence() -> Result<(), Failed> {
    let users = Scratch::new();
    users.write("users", "jdbc:plain:secret\n");
    let server = start_server(users.path(), &["--auth", "basic", "--users-file", "users"])?;
    runtime().block_on(async {
        let mut c = client(&server.address).await?;
        // Wrong password: Unauthenticated.
        let err = c.handshake("jdbc", "wrong").await.unwrap_err().to_string();
        ensure(err.contains("invalid user name or password"), err)?;
        c.handshake("jdbc", "secret").await?;
        c.set_header("cookie", "arrow_flight_session_id=jdbc0001");

        let info = c.get_sql_info(vec![]).await?;
        let batches = fetch(&mut c, info).await?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        ensure(
            rows > 20,
            format!("unfiltered GetSqlInfo returned {rows} entries"),
        )?;
        let info = c.get_sql_info(vec![SqlInfo::FlightSqlServerName]).await?;
        let batches = fetch(&mut c, info).await?;
        ensure(
            arrow::util::pretty::pretty_format_batches(&batches)?
                .to_string()
                .contains("Sluice"),
            "server name",
        )?;

        // JDBC prepares every statement, DDL included; preparing must not run it.
        let ddl = c
            .prepare(
                "CREATE TABLE jdbc_t (id BIGINT, PRIMARY KEY (id) NOT ENFORCED)".into(),
                None,
            )
            .await?;
        let tables = c
            .get_tables(CommandGetTables {
                catalog: None,
                db_schema_filter_pattern: None,
                table_name_filter_pattern: Some("jdbc_t".into()),
                table_types: vec![],
                include_schema: true,
            })
            .await?;
        let listed = fetch(&mut c, tables).await?;
        ensure(
            listed.iter().map(|b| b.num_rows()).sum::<usize>() == 0,
            "preparing CREATE TABLE created the table",
        )?;
        let mut ddl = ddl;
        ddl.execute_update().await?;
        ddl.close().await?;

        let mut insert = c
            .prepare("INSERT INTO jdbc_t VALUES ($1)".into(), None)
            .await?;
        let params = arrow::array::RecordBatch::try_from_iter(vec![(
            "$1",
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![10, 20, 30])) as _,
        )])?;
        insert.set_parameters(params)?;
        let n = insert.execute_update().await?;
        ensure(n == 3, format!("prepared insert affected {n} rows"))?;
        insert.close().await?;

        // The Java and Go drivers' way: parameters inside the update stream.
        let prepared = c
            .prepare("INSERT INTO jdbc_t VALUES (?)".into(), None)
            .await?;
        let handle = {
            let r: Vec<_> = c
                .do_action(arrow_flight::Action {
                    r#type: "CreatePreparedStatement".into(),
                    body: arrow_flight::sql::ProstMessageExt::as_any(
                        &arrow_flight::sql::ActionCreatePreparedStatementRequest {
                            query: "INSERT INTO jdbc_t VALUES (?)".into(),
                            transaction_id: None,
                        },
                    )
                    .encode_to_vec()
                    .into(),
                })
                .await?
                .try_collect()
                .await?;
            let any = arrow_flight::sql::Any::decode(r[0].body.clone())?;
            let result: arrow_flight::sql::ActionCreatePreparedStatementResult =
                any.unpack()?.ok_or("no prepared statement result")?;
            result.prepared_statement_handle
        };
        prepared.close().await?;
        let cmd = arrow_flight::sql::CommandPreparedStatementUpdate {
            prepared_statement_handle: handle,
        };
        let descriptor = arrow_flight::FlightDescriptor::new_cmd(
            arrow_flight::sql::ProstMessageExt::as_any(&cmd).encode_to_vec(),
        );
        let params = arrow::array::RecordBatch::try_from_iter(vec![(
            "$1",
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![1000, 2000])) as _,
        )])?;
        let data: Vec<arrow_flight::FlightData> =
            arrow_flight::encode::FlightDataEncoderBuilder::new()
                .with_flight_descriptor(Some(descriptor))
                .build(futures::stream::iter(vec![Ok(params)]))
                .try_collect()
                .await?;
        let mut put = c.do_put(futures::stream::iter(data)).await?;
        let result = put.message().await?.ok_or("no DoPut result")?;
        let updated = arrow_flight::sql::DoPutUpdateResult::decode(result.app_metadata)?;
        ensure(
            updated.record_count == 2,
            format!(
                "in-stream parameters affected {} rows",
                updated.record_count
            ),
        )?;
        let info = c
            .execute("DELETE FROM jdbc_t WHERE id >= 1000".into(), None)
            .await;
        ensure(info.is_err(), "DELETE on a file table should be refused")?;
        let info = c
            .execute(
                "INSERT OVERWRITE jdbc_t SELECT id FROM jdbc_t WHERE id < 1000".into(),
                None,
            )
            .await?;
        fetch(&mut c, info).await?;

        let mut query = c
            .prepare("SELECT sum(id) AS s FROM jdbc_t".into(), None)
            .await?;
        ensure(
            query.dataset_schema()?.field(0).name() == "s",
            "prepared dataset schema",
        )?;
        let info = query.execute().await?;
        let batches = fetch(&mut c, info).await?;
        let text = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
        ensure(text.contains("60"), text)?;
        query.close().await?;

        let tables = c
            .get_tables(CommandGetTables {
                catalog: Some("sluice".into()),
                db_schema_filter_pattern: Some("public".into()),
                table_name_filter_pattern: Some("jdbc%".into()),
                table_types: vec!["TABLE".into()],
                include_schema: true,
            })
            .await?;
        let listed = fetch(&mut c, tables).await?;
        let text = arrow::util::pretty::pretty_format_batches(&listed)?.to_string();
        ensure(
            text.contains("jdbc_t") && listed[0].num_columns() == 5,
            text,
        )?;

        let pk = c
            .get_primary_keys(arrow_flight::sql::CommandGetPrimaryKeys {
                catalog: None,
                db_schema: None,
                table: "jdbc_t".into(),
            })
            .await?;
        let pk = fetch(&mut c, pk).await?;
        let text = arrow::util::pretty::pretty_format_batches(&pk)?.to_string();
        ensure(text.contains("| id "), text)?;

        // SetSessionOptions(catalog) and CloseSession, as raw actions.
        let set = session_options_request("catalog", "sluice");
        let r: Vec<_> = c
            .do_action(arrow_flight::Action {
                r#type: "SetSessionOptions".into(),
                body: set.into(),
            })
            .await?
            .try_collect()
            .await?;
        ensure(
            r.len() == 1 && r[0].body.is_empty(),
            format!("SetSessionOptions errors: {r:?}"),
        )?;
        let bad = session_options_request("catalog", "nope");
        let r: Vec<_> = c
            .do_action(arrow_flight::Action {
                r#type: "SetSessionOptions".into(),
                body: bad.into(),
            })
            .await?
            .try_collect()
            .await?;
        ensure(!r[0].body.is_empty(), "an unknown catalog was accepted")?;
        let r: Vec<_> = c
            .do_action(arrow_flight::Action {
                r#type: "CloseSession".into(),
                body: Vec::new().into(),
            })
            .await?
            .try_collect()
            .await?;
        ensure(
            r[0].body.as_ref() == [8, 1],
            format!("CloseSession result {:?}", r[0].body),
        )?;
        Ok::<(), Failed>(())
    })
}

/// A `SetSessionOptionsRequest` with one string option, encoded by hand
/// (map<string, SessionOptionValue> session_options = 1).
fn session_options_request(key: &str, value: &str) -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(tag << 3) | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }
    let option_value = field(1, value.as_bytes());
    let mut entry = field(1, key.as_bytes());
    entry.extend(field(2, &option_value));
    field(1, &entry)
}

fn run_script_on_server() -> Result<(), Failed> {
    let s = Scratch::new();
    let server = start_server(s.path(), &[])?;
    let url = format!("http://{}", server.address);
    s.write(
        "job.sql",
        "SET 'pipeline.name' = 'remote';\n\
         CREATE TABLE IF NOT EXISTS nums (n BIGINT);\n\
         INSERT INTO nums SELECT value FROM generate_series(1, ${COUNT});\n\
         SELECT count(*) AS c, sum(n) AS s FROM nums;\n",
    );
    let out = s.run(
        &[
            "--server",
            &url,
            "--var",
            "COUNT=100",
            "--format",
            "csv",
            "job.sql",
        ],
        None,
    );
    ensure(
        out.status.success(),
        format!("remote run failed: {}", stderr(&out)),
    )?;
    ensure(stdout(&out).contains("100,5050"), stdout(&out))?;
    let err = stderr(&out);
    ensure(err.contains("OK: 4 of 4") && err.contains("COUNT=100"), err)?;
    // A re-run of the same script and variables: the append is not repeated.
    let out = s.run(
        &[
            "--server",
            &url,
            "--var",
            "COUNT=100",
            "--format",
            "csv",
            "job.sql",
        ],
        None,
    );
    ensure(out.status.success(), stderr(&out))?;
    ensure(stdout(&out).contains("100,5050"), stdout(&out))?;
    ensure(stderr(&out).contains("skipped"), stderr(&out))?;

    // A failing statement: exit code 1 and the server's message.
    s.write("bad.sql", "SELECT nope FROM nums;\nSELECT 1;\n");
    let out = s.run(&["--server", &url, "bad.sql"], None);
    ensure(
        out.status.code() == Some(1),
        format!("exit {:?}", out.status),
    )?;
    let err = stderr(&out);
    ensure(err.contains("statement 1") && err.contains("nope"), err)?;

    // An unreachable server: a clear error.
    let out = s.run(&["--server", "http://127.0.0.1:9", "-e", "SELECT 1"], None);
    ensure(
        out.status.code() == Some(1),
        format!("exit {:?}", out.status),
    )?;
    ensure(
        stderr(&out).contains("cannot reach the server"),
        stderr(&out),
    )
}

fn catalog_survives_restart() -> Result<(), Failed> {
    let s = Scratch::new();
    let url = {
        let server = start_server(s.path(), &[])?;
        let url = format!("http://{}", server.address);
        let out = s.run(
            &[
                "--server",
                &url,
                "-e",
                "CREATE TABLE kept (id BIGINT); INSERT INTO kept VALUES (1), (2);",
            ],
            None,
        );
        ensure(out.status.success(), stderr(&out))?;
        url
    };
    let _ = url;
    let server = start_server(s.path(), &[])?;
    let url = format!("http://{}", server.address);
    let out = s.run(
        &[
            "--server",
            &url,
            "--format",
            "csv",
            "-e",
            "SELECT sum(id) AS s FROM kept",
        ],
        None,
    );
    ensure(out.status.success(), stderr(&out))?;
    ensure(stdout(&out).contains("s\n3"), stdout(&out))
}

fn http_get(address: &str, path: &str) -> Result<String, Failed> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

fn health_and_metrics() -> Result<(), Failed> {
    let s = Scratch::new();
    let server = start_server(s.path(), &[])?;
    let http = server
        .http
        .clone()
        .ok_or("no http address in the listen file")?;
    let health = http_get(&http, "/healthz")?;
    ensure(
        health.starts_with("HTTP/1.1 200") && health.contains("ok"),
        health,
    )?;
    let out = s.run(
        &[
            "--server",
            &format!("http://{}", server.address),
            "-e",
            "SELECT 1",
        ],
        None,
    );
    ensure(out.status.success(), stderr(&out))?;
    let metrics = http_get(&http, "/metrics")?;
    ensure(
        metrics.contains("sluice_flight_requests_total ")
            && metrics.contains("sluice_statements_total{kind=\"query\"} 1"),
        metrics,
    )?;

    // A staged batch query moves data through the shuffle tier, and the
    // staged and shuffle metrics count it.
    let out = s.run(
        &[
            "--server",
            &format!("http://{}", server.address),
            "-e",
            "SET 'execution.runtime-mode' = 'batch'; \
             SET 'datafusion.execution.target_partitions' = '2'; \
             SELECT value % 10 AS k, count(*) AS n FROM generate_series(1, 10000) GROUP BY value % 10",
        ],
        None,
    );
    ensure(out.status.success(), stderr(&out))?;
    let metrics = http_get(&http, "/metrics")?;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    ensure(
        value("sluice_staged_jobs_total") >= 1.0
            && value("sluice_staged_stages_total") >= 1.0
            && value("sluice_shuffle_bytes_written_total") > 0.0
            && value("sluice_shuffle_bytes_read_total") > 0.0
            && value("sluice_shuffle_objects_written_total") >= 2.0
            && value("sluice_shuffle_buffered_bytes") == 0.0
            && value("sluice_shuffle_active_writers") == 0.0,
        metrics.clone(),
    )?;

    // A streaming query over Flight SQL runs its stage graph with live
    // exchanges; its job is counted and its tasks and slots are released.
    let out = s.run(
        &[
            "--server",
            &format!("http://{}", server.address),
            "--format",
            "csv",
            "-e",
            "SET 'execution.runtime-mode' = 'streaming'; \
             SET 'datafusion.execution.target_partitions' = '2'; \
             SELECT count(*) AS groups, sum(n) AS rows FROM \
             (SELECT value % 10 AS k, count(*) AS n FROM generate_series(1, 10000) GROUP BY value % 10)",
        ],
        None,
    );
    ensure(
        out.status.success() && stdout(&out).contains("10,10000"),
        format!("{}{}", stdout(&out), stderr(&out)),
    )?;
    // Tasks end as the result does; the gauge follows within moments.
    let read = |name: &str, metrics: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    wait_until(10, || {
        http_get(&http, "/metrics").is_ok_and(|m| read("sluice_streaming_tasks_running", &m) == 0.0)
    });
    let metrics = http_get(&http, "/metrics")?;
    let value = |name: &str| read(name, &metrics);
    ensure(
        value("sluice_streaming_jobs_total") >= 1.0
            && value("sluice_streaming_jobs_failed_total") == 0.0
            && value("sluice_streaming_jobs_queued") == 0.0
            && value("sluice_streaming_tasks_running") == 0.0,
        metrics.clone(),
    )
}

/// arrow-rs' `flight_sql_client` (installed by `.ci/run`) lists tables and
/// runs a query.
fn arrow_rs_cli() -> Result<(), Failed> {
    let cli = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(std::env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin")))
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
        .map(|d| d.join("flight_sql_client"))
        .find(|p| p.exists())
        .ok_or(
            "flight_sql_client is not installed; run .ci/run (cargo install arrow-flight \
             --features cli,flight-sql,tls-ring --bin flight_sql_client)",
        )?;
    let s = Scratch::new();
    let server = start_server(s.path(), &[])?;
    let (host, port) = server
        .address
        .rsplit_once(':')
        .ok_or("bad server address")?;
    let out = s.run(
        &[
            "--server",
            &format!("http://{}", server.address),
            "-e",
            "CREATE TABLE cli_t AS SELECT value AS v FROM generate_series(1, 5)",
        ],
        None,
    );
    ensure(out.status.success(), stderr(&out))?;
    let mut c = Command::new(&cli);
    c.args(["--host", host, "--port", port, "tables", "sluice"]);
    let out = run_command(c, None);
    ensure(out.status.success(), stderr(&out))?;
    ensure(stdout(&out).contains("cli_t"), stdout(&out))?;
    let mut c = Command::new(&cli);
    c.args([
        "--host",
        host,
        "--port",
        port,
        "statement-query",
        "SELECT sum(v) AS total FROM cli_t",
    ]);
    let out = run_command(c, None);
    ensure(out.status.success(), stderr(&out))?;
    ensure(stdout(&out).contains("15"), stdout(&out))
}

/// CancelFlightInfo cancels a result before its DoGet; dropping a DoGet
/// stream stops the query; SIGTERM stops the server cleanly.
fn cancel_and_shutdown() -> Result<(), Failed> {
    let s = Scratch::new();
    let mut server = start_server(s.path(), &[])?;
    runtime().block_on(async {
        let mut c = client(&server.address).await?;
        c.set_header("cookie", "arrow_flight_session_id=cancel01");
        let info = c
            .execute(
                "SELECT value FROM generate_series(1, 1000000000)".into(),
                None,
            )
            .await?;
        let request = arrow_flight::CancelFlightInfoRequest {
            info: Some(info.clone()),
        };
        let r: Vec<_> = c
            .do_action(arrow_flight::Action {
                r#type: "CancelFlightInfo".into(),
                body: prost::Message::encode_to_vec(&request).into(),
            })
            .await?
            .try_collect()
            .await?;
        let result: arrow_flight::CancelFlightInfoResult =
            prost::Message::decode(r[0].body.clone())?;
        ensure(
            result.status == 1,
            format!("cancel status {}", result.status),
        )?;
        let ticket = info.endpoint[0].ticket.clone().ok_or("no ticket")?;
        let err = match c.do_get(ticket).await {
            Ok(stream) => stream
                .try_collect::<Vec<_>>()
                .await
                .err()
                .map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        ensure(
            err.as_deref().is_some_and(|e| e.contains("cancelled")),
            format!("a cancelled result was served: {err:?}"),
        )?;

        // A billion-row result abandoned after one batch: the server stops
        // producing it (its CPU goes idle) rather than running to the end.
        let info = c
            .execute(
                "SELECT value FROM generate_series(1, 1000000000)".into(),
                None,
            )
            .await?;
        let ticket = info.endpoint[0].ticket.clone().ok_or("no ticket")?;
        let mut stream = c.do_get(ticket).await?;
        let first = futures::StreamExt::next(&mut stream).await;
        ensure(matches!(first, Some(Ok(_))), "no first batch")?;
        drop(stream);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let metrics = http_get(server.http.as_deref().ok_or("no http")?, "/metrics")?;
        let sent: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("sluice_rows_sent_total "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("no rows_sent metric")?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let metrics = http_get(server.http.as_deref().ok_or("no http")?, "/metrics")?;
        let later: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("sluice_rows_sent_total "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("no rows_sent metric")?;
        ensure(
            sent == later && sent < 1_000_000_000,
            format!("the abandoned query kept running: {sent} then {later} rows"),
        )?;
        Ok::<(), Failed>(())
    })?;
    // SIGTERM: the server stops taking work and exits 0.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = server.child.try_wait()? {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status.ok_or("the server did not stop within 10 s of SIGTERM")?;
    ensure(status.success(), format!("server exit status {status}"))
}

/// The `.slt` suites again, through a `sluice server` (one per test
/// process, stopped when the process ends).
pub(crate) fn slt_trials(config: &sluice_sql_tests::RunnerConfig, suites: &Path) -> Vec<Trial> {
    let config = sluice_sql_tests::RunnerConfig {
        name_prefix: "slt-server::".into(),
        ..config.clone()
    };
    let factory = std::sync::Arc::new(LazyServerFactory::default());
    sluice_sql_tests::slt_trials(&config, factory, &[suites.to_path_buf()]).expect("slt suites")
}

#[derive(Default)]
struct LazyServerFactory {
    server: tokio::sync::OnceCell<(Child, tempfile::TempDir, String)>,
}

#[async_trait::async_trait]
impl sluice_sql_tests::EngineFactory for LazyServerFactory {
    fn labels(&self) -> Vec<String> {
        vec!["sluice".into(), "server".into(), "batch".into()]
    }

    async fn create(
        &self,
        ctx: &sluice_sql_tests::FileContext,
    ) -> Result<Box<dyn sluice_sql_tests::Engine>, sluice_sql_tests::EngineError> {
        let (_, _, url) = self
            .server
            .get_or_try_init(|| async {
                let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
                let listen = dir.path().join("listen");
                let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
                c.current_dir(dir.path())
                    .args([
                        "server",
                        "--bind",
                        "127.0.0.1:0",
                        "--target-partitions",
                        "4",
                    ])
                    .arg("--listen-file")
                    .arg(&listen)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                // The server dies with this test process.
                // SAFETY: prctl is async-signal-safe.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
                let child = c.spawn().map_err(|e| e.to_string())?;
                if !wait_until(60, || listen.exists()) {
                    return Err("sluice server did not start".to_string());
                }
                let addr = std::fs::read_to_string(&listen).map_err(|e| e.to_string())?;
                let url = format!("http://{}", addr.lines().next().unwrap_or_default());
                Ok((child, dir, url))
            })
            .await
            .map_err(sluice_sql_tests::EngineError::statement)?;
        sluice_server::engine::FlightEngineFactory::new(url.clone())
            .create(ctx)
            .await
    }
}
