//! Round trip through an S3-compatible server (moto, installed by `.ci/run`
//! into the virtualenv named by `SLUICE_TEST_VENV`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, check, run_command, stdout, wait_until};

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test("s3::read_insert_overwrite_round_trip", round_trip),
        Trial::test(
            "s3::shuffle_worker_stores_attempts_in_s3",
            shuffle_worker_on_s3,
        ),
    ]
}

/// A shuffle worker on an S3 store: the put-if-absent probe passes, the
/// data object goes up as a multipart upload of several parts, and reads
/// and deletes go through S3.
fn shuffle_worker_on_s3() -> Result<(), Failed> {
    let server = start_s3()?;
    let s = Scratch::new();
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", server.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let index = crate::staged::worker_round_trip(&s, "s3://lake/shuffle/", &env)?;
    if index.bytes < 10 * 1024 * 1024 {
        return Err(format!(
            "the attempt holds {} bytes; the test needs several upload parts",
            index.bytes
        )
        .into());
    }
    Ok(())
}

/// A moto S3 server on a free loopback port, killed on drop.
pub(crate) struct S3Server {
    child: Child,
    pub(crate) endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv() -> Result<PathBuf, Failed> {
    let dir = std::env::var_os("SLUICE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    if !dir.join("bin/moto_server").exists() {
        return Err(format!(
            "no S3 test server: {} has no bin/moto_server; run .ci/run (it installs moto into .venv)",
            dir.display()
        )
        .into());
    }
    Ok(dir)
}

pub(crate) fn start_s3() -> Result<S3Server, Failed> {
    let venv = venv()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(venv.join("bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    if !wait_until(60, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        return Err("moto_server did not start listening".into());
    }
    let status = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
             aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='lake')",
            &server.endpoint,
        ])
        .status()?;
    if !status.success() {
        return Err("could not create the test bucket".into());
    }
    Ok(server)
}

fn round_trip() -> Result<(), Failed> {
    let server = start_s3()?;
    let s = Scratch::new();
    s.write(
        "in/orders.csv",
        "id,amount,dt\n1,10,2024-01-01\n2,20,2024-01-01\n3,30,2024-01-02\n",
    );
    let declare = "CREATE EXTERNAL TABLE src STORED AS CSV LOCATION 'in/orders.csv';\n\
        CREATE TABLE lake (id BIGINT, amount BIGINT, dt VARCHAR) PARTITIONED BY (dt)\n\
        WITH ('connector' = 'filesystem', 'path' = 's3://lake/orders/', 'format' = 'parquet');\n";
    let sluice = |sql: &str| {
        let mut c = s.sluice();
        c.args(["run", "-q", "--format", "csv", "-e"])
            .arg(format!("{declare}{sql}"))
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT", &server.endpoint)
            .env("AWS_ALLOW_HTTP", "true");
        run_command(c, None)
    };
    file_table_round_trip("s3://", &sluice)
}

/// Append, partition overwrite and whole-table overwrite of the
/// partitioned `lake` table that `sluice` declares (from the `src` CSV of
/// rows (1, 10, 2024-01-01), (2, 20, 2024-01-01), (3, 30, 2024-01-02)),
/// read back each time; `store` names the store in messages.
pub(crate) fn file_table_round_trip(
    store: &str,
    sluice: &dyn Fn(&str) -> std::process::Output,
) -> Result<(), Failed> {
    let o = sluice(
        "INSERT INTO lake SELECT * FROM src; SELECT count(*) AS n, sum(amount) AS s FROM lake",
    );
    check(
        o.status.code() == Some(0),
        &format!("insert into {store}"),
        &o,
    )?;
    check(stdout(&o) == "n,s\n3,60\n", "read back after insert", &o)?;

    let o = sluice(
        "INSERT INTO lake SELECT id + 10, amount, dt FROM src; SELECT count(*) AS n FROM lake",
    );
    check(stdout(&o) == "n\n6\n", "second append", &o)?;

    let o = sluice(
        "INSERT OVERWRITE lake PARTITION (dt = '2024-01-01') SELECT 100, 1; \
         SELECT dt, count(*) AS n, sum(amount) AS s FROM lake GROUP BY dt ORDER BY dt",
    );
    check(
        o.status.code() == Some(0),
        &format!("partition overwrite on {store}"),
        &o,
    )?;
    check(
        stdout(&o) == "dt,n,s\n2024-01-01,1,1\n2024-01-02,2,60\n",
        "only that partition replaced",
        &o,
    )?;

    let o = sluice(
        "INSERT OVERWRITE lake SELECT 7 AS id, 7 AS amount, '2030-01-01' AS dt; SELECT * FROM lake",
    );
    check(
        stdout(&o) == "id,amount,dt\n7,7,2030-01-01\n",
        "whole-table overwrite",
        &o,
    )?;
    Ok(())
}
