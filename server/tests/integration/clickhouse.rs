//! The `clickhouse` sink against the real ClickHouse server on
//! 127.0.0.1:8123 (Debian's clickhouse-server 18.16, user default without
//! a password), driven through `sluice run` as a user runs it.

use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, check, stderr};

const SERVER: &str = "http://127.0.0.1:8123";

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test("clickhouse::types_round_trip", types_round_trip),
        Trial::test(
            "clickhouse::append_and_overwrite_are_atomic",
            append_and_overwrite_are_atomic,
        ),
        Trial::test(
            "clickhouse::errors_name_host_and_table",
            errors_name_host_and_table,
        ),
    ]
}

/// A private database on the test server, dropped afterwards.
struct Ch {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    db: String,
}

impl Ch {
    fn new() -> Result<Self, Failed> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let ch = Self {
            rt,
            client: reqwest::Client::new(),
            db: format!("sluice_t{}_{nanos}", std::process::id()),
        };
        ch.query(&format!("CREATE DATABASE {}", ch.db))
            .map_err(|e| {
                format!("ClickHouse must serve HTTP on 127.0.0.1:8123 (.ci/run starts it): {e:?}")
            })?;
        Ok(ch)
    }

    fn url(&self) -> String {
        format!("{SERVER}/{}", self.db)
    }

    /// Runs `sql` in the database; returns the TabSeparated text.
    fn query(&self, sql: &str) -> Result<String, Failed> {
        self.rt.block_on(async {
            let r = self
                .client
                .post(format!("{SERVER}/?database=default"))
                .body(sql.replace("{db}", &self.db))
                .send()
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
            let ok = r.status().is_success();
            let text = r.text().await.map_err(|e| format!("{sql}: {e}"))?;
            if ok {
                Ok(text)
            } else {
                Err(format!("{sql}: {text}").into())
            }
        })
    }

    fn declare(&self, name: &str, table: &str) -> String {
        format!(
            "CREATE TABLE {name} WITH ('connector' = 'clickhouse', 'url' = '{}', 'table' = '{table}')",
            self.url()
        )
    }

    /// Tables Sluice created besides its ledger (staging, new, old).
    fn side_tables(&self) -> Result<String, Failed> {
        Ok(self
            .query(
                "SELECT count() FROM system.tables WHERE database = '{db}' AND \
                 match(name, '^_sluice_(stage|new|old)_')",
            )?
            .trim()
            .to_string())
    }
}

impl Drop for Ch {
    fn drop(&mut self) {
        let _ = self.query("DROP DATABASE IF EXISTS {db}");
    }
}

fn types_round_trip() -> Result<(), Failed> {
    let ch = Ch::new()?;
    ch.query(
        "CREATE TABLE {db}.t (id Int32, i8 Int8, i16 Nullable(Int16), i64 Int64, u8 UInt8,
           u32 UInt32, u64 UInt64, f32 Float32, f64 Nullable(Float64), d Decimal(10, 2),
           dw Nullable(Decimal(30, 6)), s String, ns Nullable(String), fs FixedString(3),
           day Date, at DateTime, nat Nullable(DateTime('UTC')))
         ENGINE = MergeTree ORDER BY id",
    )?;
    let sc = Scratch::new();
    let script = format!(
        "{};\n\
         INSERT INTO t VALUES
           (1, -128, 32767, -9223372036854775808, 255, 4294967295, 18446744073709551615, 1.5,
            -2.25e300, 12345678.91, CAST('-123456789012345678901234.123456' AS DECIMAL(30, 6)), 'tab\there ✓', 'x', 'abc',
            DATE '2024-02-29', TIMESTAMP '2024-03-03 12:34:56', TIMESTAMP '2038-01-19 03:14:07'),
           (2, 0, NULL, 0, 0, 0, 0, 0, NULL, 0, NULL, '', NULL, 'a', DATE '1970-01-02',
            TIMESTAMP '1970-01-01 00:00:01', NULL);\n\
         DESCRIBE t;\n",
        ch.declare("t", "t")
    );
    let o = sc.run(&["-e", &script], None);
    check(o.status.code() == Some(0), "the write runs", &o)?;
    let got = ch.query("SELECT * FROM {db}.t ORDER BY id FORMAT TabSeparated")?;
    let want = "1\t-128\t32767\t-9223372036854775808\t255\t4294967295\t18446744073709551615\t1.5\t\
                -2.25e300\t12345678.91\t-123456789012345678901234.123456\ttab\\there ✓\tx\tabc\t\
                2024-02-29\t2024-03-03 12:34:56\t2038-01-19 03:14:07\n\
                2\t0\t\\N\t0\t0\t0\t0\t0\t\\N\t0.00\t\\N\t\t\\N\ta\\0\\0\t1970-01-02\t\
                1970-01-01 00:00:01\t\\N\n";
    if got != want {
        return Err(format!("ClickHouse holds\n{got}\nexpected\n{want}").into());
    }
    check(ch.side_tables()? == "0", "no staging table left", &o)?;
    Ok(())
}

fn append_and_overwrite_are_atomic() -> Result<(), Failed> {
    let ch = Ch::new()?;
    ch.query("CREATE TABLE {db}.a (id Int64, v String) ENGINE = MergeTree ORDER BY id")?;
    let sc = Scratch::new();
    let nightly = sc.write(
        "nightly.sql",
        &format!(
            "{};\nINSERT INTO a SELECT value, 'day ${{day}}' FROM generate_series(1, 1000);\n",
            ch.declare("a", "a")
        ),
    );
    let nightly = nightly.to_str().expect("path");
    let count = || -> Result<String, Failed> {
        Ok(ch.query("SELECT count() FROM {db}.a")?.trim().to_string())
    };
    let o = sc.run(&[nightly, "--var", "day=1"], None);
    check(o.status.code() == Some(0), "append", &o)?;
    check(count()? == "1000", "append wrote 1000 rows", &o)?;
    let o = sc.run(&[nightly, "--var", "day=1"], None);
    check(
        o.status.code() == Some(0)
            && stderr(&o).contains("already committed")
            && count()? == "1000",
        "a re-run with the same variables appends nothing",
        &o,
    )?;
    let o = sc.run(&[nightly, "--var", "day=2"], None);
    check(count()? == "2000", "new variables append", &o)?;

    let overwrite = format!(
        "{};\nINSERT OVERWRITE a SELECT value, 'fresh' FROM generate_series(1, 10);\n",
        ch.declare("a", "a")
    );
    let o = sc.run(&["-e", &overwrite], None);
    check(o.status.code() == Some(0), "overwrite", &o)?;
    check(
        count()? == "10" && ch.side_tables()? == "0",
        "overwrite replaced the rows and left no old or new table",
        &o,
    )?;

    // A failure in the middle of the load (after rows were staged): the
    // target is unchanged and the staging tables are gone.
    let failing = format!(
        "{};\nINSERT INTO a SELECT CAST(100 / (value - 150000) AS BIGINT), 'x' FROM generate_series(1, 200000);\n",
        ch.declare("a", "a")
    );
    let o = sc.run(&["-e", &failing], None);
    check(o.status.code() != Some(0), "failing load fails", &o)?;
    check(
        count()? == "10" && ch.side_tables()? == "0",
        "target unchanged and nothing staged left after a failed load",
        &o,
    )?;
    Ok(())
}

fn errors_name_host_and_table() -> Result<(), Failed> {
    let ch = Ch::new()?;
    ch.query("CREATE TABLE {db}.present (id Int32, tags Array(String)) ENGINE = Log")?;
    ch.query("CREATE TABLE {db}.strict (id Int32, name String) ENGINE = Log")?;
    let sc = Scratch::new();

    let refused = "CREATE TABLE t WITH ('connector' = 'clickhouse', \
                   'url' = 'http://127.0.0.1:1/default', 'table' = 't')";
    let o = sc.run(&["-e", refused], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("127.0.0.1:1/default")
            && stderr(&o).contains("refused"),
        "connection refused names the host",
        &o,
    )?;

    let o = sc.run(&["-e", &ch.declare("t", "nope")], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("table nope at")
            && stderr(&o).contains("does not exist"),
        "a missing table is named",
        &o,
    )?;

    let o = sc.run(&["-e", &ch.declare("t", "present")], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("\"tags\"")
            && stderr(&o).contains("Array(String)"),
        "an unmapped column type names the column",
        &o,
    )?;

    let null_into_string = format!(
        "{};\nINSERT INTO t VALUES (1, 'a'), (2, NULL);\n",
        ch.declare("t", "strict")
    );
    let o = sc.run(&["-e", &null_into_string], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("\"name\"")
            && stderr(&o).contains("Nullable"),
        "NULL into a non-Nullable column names the column",
        &o,
    )?;
    check(
        ch.query("SELECT count() FROM {db}.strict")?.trim() == "0" && ch.side_tables()? == "0",
        "a failed write leaves nothing behind",
        &o,
    )?;

    let bad_user = format!(
        "CREATE TABLE t WITH ('connector' = 'clickhouse', 'url' = '{}', 'username' = 'nobody_x', \
         'password' = secret('CH_PW'), 'table' = 'strict')",
        ch.url()
    );
    let mut c = sc.sluice();
    c.arg("run").args(["-e", &bad_user]);
    c.env("SLUICE_SECRET_CH_PW", "hunter2-secret");
    let o = crate::support::run_command(c, None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("authentication failed for user 'nobody_x'")
            && !stderr(&o).contains("hunter2-secret"),
        "an unknown user is an authentication failure; the password is never printed",
        &o,
    )?;
    Ok(())
}
