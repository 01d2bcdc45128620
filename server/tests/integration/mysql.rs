//! The `mysql` connector against the real MariaDB on 127.0.0.1:3306 (user
//! root, empty password), driven through `sluice run` as a user runs it.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};
use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, check, stderr, stdout};

const SERVER: &str = "mysql://root@127.0.0.1:3306";

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test("mysql::types_round_trip", types_round_trip),
        Trial::test(
            "mysql::pushdown_and_parallel_reads",
            pushdown_and_parallel_reads,
        ),
        Trial::test(
            "mysql::append_and_overwrite_are_atomic",
            append_and_overwrite_are_atomic,
        ),
        Trial::test("mysql::upsert_on_primary_key", upsert_on_primary_key),
        Trial::test(
            "mysql::errors_name_host_and_table",
            errors_name_host_and_table,
        ),
        Trial::test("mysql::nightly_example", nightly_example),
    ]
}

/// A private database on the test server, dropped afterwards.
pub(crate) struct My {
    rt: tokio::runtime::Runtime,
    conn: std::cell::RefCell<Option<Conn>>,
    pub(crate) db: String,
}

impl My {
    pub(crate) fn new() -> Result<Self, Failed> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let db = format!("sluice_t{}_{nanos}", std::process::id());
        let conn = rt.block_on(async {
            let opts = mysql_async::Opts::from_url(&format!("{SERVER}/test"))
                .map_err(|e| e.to_string())?;
            let opts = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false);
            let mut conn = Conn::new(opts).await.map_err(|e| {
                format!(
                    "MariaDB must accept root without a password on 127.0.0.1:3306 \
                     (.ci/run sets it up): {e}"
                )
            })?;
            conn.query_drop(format!("CREATE DATABASE {db}"))
                .await
                .map_err(|e| e.to_string())?;
            conn.query_drop(format!("USE {db}"))
                .await
                .map_err(|e| e.to_string())?;
            conn.query_drop("SET time_zone = '+00:00'")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(conn)
        })?;
        Ok(Self {
            rt,
            conn: std::cell::RefCell::new(Some(conn)),
            db,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("{SERVER}/{}", self.db)
    }

    pub(crate) fn exec(&self, sql: &str) -> Result<(), Failed> {
        let mut guard = self.conn.borrow_mut();
        let conn = guard.as_mut().expect("connection");
        self.rt
            .block_on(conn.query_drop(sql))
            .map_err(|e| format!("{sql}: {e}").into())
    }

    /// Rows of `sql` as text (the server's own formatting), NULL as "NULL".
    pub(crate) fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, Failed> {
        let mut guard = self.conn.borrow_mut();
        let conn = guard.as_mut().expect("connection");
        let rows: Vec<mysql_async::Row> = self
            .rt
            .block_on(conn.query(sql))
            .map_err(|e| format!("{sql}: {e}"))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                r.unwrap()
                    .into_iter()
                    .map(|v| match v {
                        Value::NULL => "NULL".to_string(),
                        Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .collect())
    }

    pub(crate) fn one(&self, sql: &str) -> Result<String, Failed> {
        self.query(sql)?
            .first()
            .and_then(|r| r.first().cloned())
            .ok_or_else(|| format!("{sql}: no row").into())
    }

    /// `CREATE TABLE name WITH (...)` declaring `table`, plus `extra` options.
    pub(crate) fn declare(&self, name: &str, table: &str, extra: &str) -> String {
        format!(
            "CREATE TABLE {name} WITH ('connector' = 'mysql', 'url' = '{}', \
             'table' = '{table}'{extra})",
            self.url()
        )
    }

    /// Tables Sluice created besides the ledger (staging, new, old).
    pub(crate) fn side_tables(&self) -> Result<usize, Failed> {
        Ok(self
            .one(&format!(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}' \
                 AND TABLE_NAME LIKE '\\_sluice\\_%' \
                 AND TABLE_NAME NOT IN ('_sluice_commits', '_sluice_staging')",
                self.db
            ))?
            .parse()
            .expect("count"))
    }
}

impl Drop for My {
    fn drop(&mut self) {
        let _ = self.exec(&format!("DROP DATABASE IF EXISTS {}", self.db));
        if let Some(conn) = self.conn.borrow_mut().take() {
            let _ = self.rt.block_on(conn.disconnect());
        }
    }
}

fn types_round_trip() -> Result<(), Failed> {
    let my = My::new()?;
    my.exec(
        "CREATE TABLE src (
           id INT PRIMARY KEY, b BOOLEAN, i1 TINYINT, u1 TINYINT UNSIGNED, i2 SMALLINT,
           i3 MEDIUMINT, i4 INT, u4 INT UNSIGNED, i8 BIGINT, u8 BIGINT UNSIGNED, f4 FLOAT,
           f8 DOUBLE, d DECIMAL(12, 2), dw DECIMAL(50, 10), vc VARCHAR(40), ch CHAR(3), tx TEXT,
           e ENUM('sad', 'ok', 'happy'), st SET('a', 'b', 'c'), j JSON, bn BINARY(4),
           vb VARBINARY(10), bl BLOB, dt DATE, tm TIME(6), dtm DATETIME(6),
           ts TIMESTAMP(6) NULL DEFAULT NULL, y YEAR, bt1 BIT(1), bt8 BIT(8))",
    )?;
    my.exec(
        "INSERT INTO src VALUES
           (1, TRUE, -128, 255, -32768, -8388608, -2147483648, 4294967295,
            -9223372036854775808, 18446744073709551615, 1.5, -2.25e300, 1234567890.12,
            -1234567890123456789012345678901234567890.0123456789, 'it''s \\\\ ✓ 😀', 'ab',
            'long text', 'happy', 'a,c', '{\"a\": [1, 2]}', X'00ff1000', X'0102', X'deadbeef',
            '2024-02-29', '23:59:59.999999', '1000-01-01 00:00:00.000001',
            '2038-01-19 03:14:07.5', 2024, b'1', b'10101010'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL),
           (3, FALSE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -0.01, 0, '', 'z', '', 'sad', '', '[]',
            X'00000000', X'', X'', '9999-12-31', '00:00:00', '9999-12-31 23:59:59.999999',
            '1970-01-01 00:00:01', 1901, b'0', b'0')",
    )?;
    my.exec("CREATE TABLE dst LIKE src")?;
    my.exec("CREATE TABLE via_parquet LIKE src")?;
    let sc = Scratch::new();
    let script = format!(
        "{};\n{};\n{};\n\
         INSERT INTO dst SELECT * FROM src;\n\
         COPY (SELECT * FROM src) TO 'out/src.parquet' STORED AS PARQUET;\n\
         CREATE EXTERNAL TABLE pq STORED AS PARQUET LOCATION 'out/src.parquet';\n\
         INSERT INTO via_parquet SELECT * FROM pq;\n\
         DESCRIBE src;\n",
        my.declare("src", "src", ""),
        my.declare("dst", "dst", ""),
        my.declare("via_parquet", "via_parquet", ""),
    );
    let o = sc.run(&["-e", &script], None);
    check(o.status.code() == Some(0), "round trip runs", &o)?;
    let out = stdout(&o);
    for want in [
        "Decimal128(12, 2)",
        "Decimal256(50, 10)",
        "UInt64",
        "Boolean",
        "Binary",
        "Date32",
        "Time64(µs)",
        "Timestamp(µs, \"UTC\")",
    ] {
        check(out.contains(want), &format!("DESCRIBE shows {want}"), &o)?;
    }
    let rows = |table: &str| my.query(&format!("SELECT * FROM {table} ORDER BY id"));
    let src = rows("src")?;
    check(src.len() == 3, "three source rows", &o)?;
    for table in ["dst", "via_parquet"] {
        let got = rows(table)?;
        if src != got {
            return Err(format!("MySQL -> {table} changed rows:\n{src:?}\n{got:?}").into());
        }
    }
    Ok(())
}

fn pushdown_and_parallel_reads() -> Result<(), Failed> {
    let my = My::new()?;
    my.exec(
        "CREATE TABLE big (id INT PRIMARY KEY, k INT, h CHAR(32))
           SELECT seq AS id, seq % 7 AS k, MD5(seq) AS h FROM seq_1_to_20000",
    )?;
    my.exec("CREATE TABLE big_copy LIKE big")?;
    my.exec(
        "CREATE TABLE ev (id INT, at DATETIME(6)) SELECT seq AS id,
           TIMESTAMP '2026-11-30 12:00:00' + INTERVAL seq HOUR AS at FROM seq_1_to_100",
    )?;
    let want_k = my.one("SELECT COUNT(*) FROM big WHERE k = 3 AND h LIKE 'a%'")?;
    let sc = Scratch::new();
    let script = format!(
        "{};\n{};\n\
         EXPLAIN SELECT id, h FROM big WHERE k = 3 AND h LIKE 'a%' AND h <> 'x';\n\
         INSERT INTO big_copy SELECT * FROM big;\n\
         SELECT count(*) AS n, sum(id) AS total, count(DISTINCT id) AS ids FROM big;\n\
         SELECT count(*) AS n FROM big WHERE k = 3 AND h LIKE 'a%';\n\
         SET 'execution.runtime-mode' = 'batch';\n\
         SET 'sluice.serialize_stage_plans' = 'true';\n\
         SELECT k, count(*) AS c FROM big GROUP BY k ORDER BY k;\n",
        my.declare(
            "big",
            "big",
            ", 'scan.partition.column' = 'id', 'scan.partition.num' = '3'"
        ),
        my.declare("big_copy", "big_copy", ""),
    );
    let script = format!(
        "{script}{};\n\
         EXPLAIN SELECT id FROM ev WHERE at >= TIMESTAMP '2026-12-01 00:00:00' \
           AND at < TIMESTAMP '2026-12-01 00:00:00' + INTERVAL '1' DAY;\n\
         SELECT count(*) AS day_rows, min(id) AS first FROM ev \
           WHERE at >= TIMESTAMP '2026-12-01 00:00:00' \
           AND at < TIMESTAMP '2026-12-01 00:00:00' + INTERVAL '1' DAY;\n",
        my.declare("ev", "ev", "")
    );
    let o = sc.run(&["--format", "csv", "-e", &script], None);
    check(o.status.code() == Some(0), "reads run", &o)?;
    let out = stdout(&o);
    check(
        out.contains("MySqlScanExec")
            && out.contains("partitions=3")
            && out.contains("snapshot=shared"),
        "EXPLAIN shows the scan, its partitions and the shared snapshot",
        &o,
    )?;
    check(
        out.contains("filters=[") && out.contains("`k` = 3") && out.contains("LIKE 'a%'"),
        "EXPLAIN shows the pushed filters",
        &o,
    )?;
    check(
        !out.contains("<> 'x'"),
        "string inequality is not pushed (collations ignore case)",
        &o,
    )?;
    check(
        out.contains("`at` >= CAST('2026-12-01 00:00:00")
            && out.contains("day_rows,first\n24,12\n"),
        "a day's DATETIME range is pushed down and returns the day's rows",
        &o,
    )?;
    check(
        out.contains("n,total,ids\n20000,200010000,20000\n"),
        "parallel reads return every row once",
        &o,
    )?;
    check(
        out.contains(&format!("n\n{want_k}\n")),
        "filtered count matches MariaDB",
        &o,
    )?;
    check(
        my.one("SELECT CONCAT(COUNT(*), ' ', COUNT(DISTINCT id), ' ', SUM(id)) FROM big_copy")?
            == "20000 20000 200010000"
            && my.side_tables()? == 0,
        "parallel writers copy every row once",
        &o,
    )?;
    let groups = my
        .query("SELECT k, COUNT(*) FROM big GROUP BY k ORDER BY k")?
        .iter()
        .map(|r| format!("{},{}\n", r[0], r[1]))
        .collect::<String>();
    check(
        out.contains(&format!("k,c\n{groups}")),
        "staged batch mode (stage plans encoded and decoded) reads the table through a shuffle",
        &o,
    )?;
    Ok(())
}

fn append_and_overwrite_are_atomic() -> Result<(), Failed> {
    let my = My::new()?;
    my.exec(
        "CREATE TABLE a (id INT NOT NULL, v VARCHAR(20), CONSTRAINT a_id_small CHECK (id < 100000))",
    )?;
    my.exec("CREATE VIEW a_view AS SELECT COUNT(*) AS n FROM a")?;
    let sc = Scratch::new();
    let nightly = sc.write(
        "nightly.sql",
        &format!(
            "{};\nINSERT INTO a SELECT value, 'day ${{day}}' FROM generate_series(1, 1000);\n",
            my.declare("a", "a", "")
        ),
    );
    let nightly = nightly.to_str().expect("path");
    let count = || my.one("SELECT COUNT(*) FROM a");

    let o = sc.run(&[nightly, "--var", "day=1"], None);
    check(o.status.code() == Some(0), "append", &o)?;
    check(count()? == "1000", "append wrote 1000 rows", &o)?;
    let o = sc.run(&[nightly, "--var", "day=1"], None);
    check(o.status.code() == Some(0), "re-run", &o)?;
    check(
        stderr(&o).contains("already committed") && count()? == "1000",
        "a re-run with the same variables appends nothing",
        &o,
    )?;
    let o = sc.run(&[nightly, "--var", "day=2"], None);
    check(count()? == "2000", "new variables append", &o)?;

    // Overwrite swaps the table in with one RENAME; views follow the name.
    let overwrite = format!(
        "{};\nINSERT OVERWRITE a SELECT value, 'fresh' FROM generate_series(1, 10);\n",
        my.declare("a", "a", "")
    );
    let o = sc.run(&["-e", &overwrite], None);
    check(o.status.code() == Some(0), "overwrite", &o)?;
    check(count()? == "10", "overwrite replaced the rows", &o)?;
    check(
        my.one("SELECT n FROM a_view")? == "10" && my.side_tables()? == 0,
        "the view sees the new rows; no old or new table is left",
        &o,
    )?;

    // A constraint violation at commit: nothing changes, nothing is left.
    let violating = format!(
        "{};\nINSERT OVERWRITE a SELECT value, 'bad' FROM generate_series(99990, 100010);\n",
        my.declare("a", "a", "")
    );
    let o = sc.run(&["-e", &violating], None);
    let err = stderr(&o);
    check(o.status.code() != Some(0), "constraint violation fails", &o)?;
    check(
        err.contains("a_id_small")
            && err.contains(&format!("127.0.0.1:3306/{}", my.db))
            && err.contains("table a "),
        "the error names the constraint, host and table",
        &o,
    )?;
    check(
        count()? == "10",
        "target unchanged after a failed commit",
        &o,
    )?;
    check(my.side_tables()? == 0, "no staging table left", &o)?;

    // A failure in the middle of the load: the target is unchanged.
    let failing = format!(
        "{};\nINSERT OVERWRITE a SELECT CAST(100 / (value - 150000) AS INT), 'x' FROM generate_series(1, 200000);\n",
        my.declare("a", "a", "")
    );
    let o = sc.run(&["-e", &failing], None);
    check(o.status.code() != Some(0), "failing load fails", &o)?;
    check(count()? == "10", "target unchanged after a failed load", &o)?;
    check(
        my.side_tables()? == 0,
        "failed load left no staging table",
        &o,
    )?;

    // A table that foreign keys reference is overwritten in place (DELETE
    // and INSERT in one transaction): the referencing table keeps its key.
    my.exec("CREATE TABLE parent (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB")?;
    my.exec(
        "CREATE TABLE child (pid INT, FOREIGN KEY (pid) REFERENCES parent (id)) ENGINE=InnoDB",
    )?;
    let parent = format!(
        "{};\nINSERT OVERWRITE parent SELECT CAST(value AS INT), 'p' FROM generate_series(1, 5);\n",
        my.declare("parent", "parent", "")
    );
    let o = sc.run(&["-e", &parent], None);
    check(
        o.status.code() == Some(0),
        "overwrite a referenced table",
        &o,
    )?;
    my.exec("INSERT INTO child VALUES (3)")?;
    check(
        my.one("SELECT COUNT(*) FROM parent")? == "5"
            && my.one(&format!(
                "SELECT REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS \
                     WHERE CONSTRAINT_SCHEMA = '{}' AND TABLE_NAME = 'child'",
                my.db
            ))? == "parent",
        "the foreign key still references the overwritten table",
        &o,
    )?;
    let ledger = my.one("SELECT COUNT(*) FROM _sluice_commits")?;
    check(ledger == "4", "four commits recorded in the ledger", &o)?;
    Ok(())
}

fn upsert_on_primary_key() -> Result<(), Failed> {
    let my = My::new()?;
    my.exec(
        "CREATE TABLE dim (id INT PRIMARY KEY, name VARCHAR(20) NOT NULL, score DECIMAL(6, 1))",
    )?;
    let sc = Scratch::new();
    let url = my.url();
    let decl = |extra: &str| {
        format!(
            "CREATE TABLE dim (id INT, name VARCHAR, score DECIMAL(6, 1), PRIMARY KEY (id) NOT ENFORCED) \
             WITH ('connector' = 'mysql', 'url' = '{url}', 'table' = 'dim'{extra})"
        )
    };
    let load = format!(
        "{};\nINSERT INTO dim SELECT CAST(value AS INT), 'n' || value, CAST(value AS DECIMAL(6, 1)) / 2 FROM generate_series(1, 50);\n",
        decl("")
    );
    let snapshot = || my.query("SELECT * FROM dim ORDER BY id");
    let o = sc.run(&["--force-rerun", "-e", &load], None);
    check(o.status.code() == Some(0), "first upsert", &o)?;
    let first = snapshot()?;
    check(first.len() == 50, "50 rows", &o)?;
    let o = sc.run(&["--force-rerun", "-e", &load], None);
    check(o.status.code() == Some(0), "second upsert", &o)?;
    check(
        snapshot()? == first,
        "running an upsert twice gives the same table",
        &o,
    )?;
    let change = format!(
        "{};\nINSERT INTO dim VALUES (1, 'changed', 9.5), (60, 'new', NULL);\n",
        decl("")
    );
    let o = sc.run(&["-e", &change], None);
    check(o.status.code() == Some(0), "update and insert", &o)?;
    check(
        my.one("SELECT CONCAT(name, ' ', score) FROM dim WHERE id = 1")? == "changed 9.5"
            && my.one("SELECT COUNT(*) FROM dim")? == "51",
        "existing key updated, new key inserted",
        &o,
    )?;
    let dup = format!(
        "{};\nINSERT INTO dim VALUES (2, 'first', 1), (2, 'second', 2);\n",
        decl("")
    );
    let o = sc.run(&["-e", &dup], None);
    check(o.status.code() != Some(0), "duplicate keys fail", &o)?;
    check(
        stderr(&o).contains("(id) = (2)") && stderr(&o).contains("sink.upsert.duplicates"),
        "the error names the key and the option",
        &o,
    )?;
    check(
        my.one("SELECT name FROM dim WHERE id = 2")? == "n2",
        "a failed upsert changes nothing",
        &o,
    )?;
    let last = format!(
        "{};\nINSERT INTO dim VALUES (2, 'first', 1), (2, 'second', 2);\n",
        decl(", 'sink.upsert.duplicates' = 'last'")
    );
    let o = sc.run(&["-e", &last], None);
    check(o.status.code() == Some(0), "duplicates = last", &o)?;
    check(
        my.one("SELECT name FROM dim WHERE id = 2")? == "second",
        "the last row of a repeated key wins",
        &o,
    )?;
    check(my.side_tables()? == 0, "no staging table left", &o)?;
    Ok(())
}

fn errors_name_host_and_table() -> Result<(), Failed> {
    let my = My::new()?;
    my.exec("CREATE TABLE present (id INT, name VARCHAR(10))")?;
    let sc = Scratch::new();

    let refused = "CREATE TABLE t WITH ('connector' = 'mysql', \
                   'url' = 'mysql://root@127.0.0.1:1/test', 'table' = 't')";
    let o = sc.run(&["-e", refused], None);
    check(o.status.code() != Some(0), "unreachable host fails", &o)?;
    check(
        stderr(&o).contains("127.0.0.1:1/test") && stderr(&o).contains("refused"),
        "connection refused names the host",
        &o,
    )?;

    let missing = my.declare("t", "nope", "");
    let o = sc.run(&["-e", &missing], None);
    check(o.status.code() != Some(0), "missing table fails", &o)?;
    check(
        stderr(&o).contains("table nope at") && stderr(&o).contains("does not exist"),
        "missing table is named",
        &o,
    )?;

    // root has an empty password: any password is an authentication failure.
    let script = format!(
        "CREATE TABLE t WITH ('connector' = 'mysql', 'url' = '{}', \
         'password' = secret('MY_PW'), 'table' = 'present')",
        my.url()
    );
    let mut c = sc.sluice();
    c.arg("run").args(["-e", &script]);
    c.env("SLUICE_SECRET_MY_PW", "wrong-password");
    let o = crate::support::run_command(c, None);
    check(
        o.status.code() != Some(0) && stderr(&o).contains("authentication failed"),
        "a wrong password is an authentication failure",
        &o,
    )?;
    check(
        !stderr(&o).contains("wrong-password"),
        "the password is never printed",
        &o,
    )?;

    let mismatch = format!(
        "CREATE TABLE t (id INT, name BOOLEAN) WITH ('connector' = 'mysql', 'url' = '{}', \
         'table' = 'present')",
        my.url()
    );
    let o = sc.run(&["-e", &mismatch], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("\"name\" is declared BOOLEAN")
            && stderr(&o).contains("varchar"),
        "a declared type that does not match names the column and both types",
        &o,
    )?;

    let too_long = format!(
        "{};\nINSERT INTO t VALUES (1, 'far too long for ten');\n",
        my.declare("t", "present", "")
    );
    let o = sc.run(&["-e", &too_long], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("name")
            && stderr(&o).contains("does not fit"),
        "a value too long for its column names the column",
        &o,
    )?;
    check(
        my.one("SELECT COUNT(*) FROM present")? == "0" && my.side_tables()? == 0,
        "a failed write leaves nothing behind",
        &o,
    )?;

    let unknown = format!(
        "{};\n",
        my.declare("t", "present", ", 'scan.partitions' = '4'")
    );
    let o = sc.run(&["-e", &unknown], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("'scan.partitions'")
            && stderr(&o).contains("scan.partition.num"),
        "an unknown option lists the valid ones",
        &o,
    )?;
    Ok(())
}

/// examples/nightly_mysql_to_postgres.sql: MySQL -> Parquet -> Postgres,
/// run twice for the same day (nothing doubles) and once for the next.
fn nightly_example() -> Result<(), Failed> {
    let my = My::new()?;
    my.exec("CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(40), country CHAR(2))")?;
    my.exec(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id INT, amount DECIMAL(10, 2),
           created_at DATETIME(3))",
    )?;
    my.exec(
        "INSERT INTO customers VALUES (1, 'Ada', 'GB'), (2, 'Linus', 'FI'), (3, 'Grace', 'US')",
    )?;
    my.exec(
        "INSERT INTO orders VALUES
           (1, 1, 10.50, '2026-12-01 08:00:00'), (2, 2, 20.00, '2026-12-01 09:30:00'),
           (3, 1, 5.25, '2026-12-01 23:59:59.999'), (4, 3, 99.99, '2026-12-02 00:00:00'),
           (5, 2, 1.00, '2026-12-02 12:00:00')",
    )?;
    let pg_schema = format!("{}_pg", my.db);
    let pg = crate::postgres::Pg::with_schema(&pg_schema)?;
    pg.exec(&format!(
        "CREATE TABLE {pg_schema}.daily_revenue (day date, country text, orders bigint,
           revenue numeric(12, 2), PRIMARY KEY (day, country))"
    ))?;
    let sc = Scratch::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/nightly_mysql_to_postgres.sql");
    let example = example.to_str().expect("path");
    let lake = sc.path().join("lake");
    let run = |day: &str| {
        let mut c = sc.sluice();
        // root has no password on the test server; Postgres trusts.
        c.env("SLUICE_SECRET_MYSQL_PASSWORD", "")
            .env("SLUICE_SECRET_PG_PASSWORD", "");
        c.arg("run").args([
            example,
            "--var",
            &format!("run_date={day}"),
            "--var",
            &format!("mysql_url={}", my.url()),
            "--var",
            "pg_url=postgres://postgres@127.0.0.1:5432/test",
            "--var",
            &format!("pg_schema={pg_schema}"),
            "--var",
            &format!("lake={}", lake.display()),
        ]);
        crate::support::run_command(c, None)
    };
    let revenue = || {
        pg.query(&format!(
            "SELECT day::text, country, orders, revenue::text FROM {pg_schema}.daily_revenue \
             ORDER BY day, country"
        ))
    };
    let o = run("2026-12-01");
    check(o.status.code() == Some(0), "the nightly script runs", &o)?;
    let want = vec![
        vec!["2026-12-01", "FI", "1", "20.00"],
        vec!["2026-12-01", "GB", "2", "15.75"],
    ];
    check(revenue()? == want, "day one's revenue per country", &o)?;
    let o = run("2026-12-01");
    check(
        o.status.code() == Some(0) && revenue()? == want,
        "re-running the same day changes nothing",
        &o,
    )?;
    let o = run("2026-12-02");
    check(o.status.code() == Some(0), "the next day runs", &o)?;
    check(revenue()?.len() == 4, "the next day adds its countries", &o)?;
    let files = crate::support::files_below(&lake);
    check(
        files.iter().any(|f| f.contains("dt=2026-12-01"))
            && files.iter().any(|f| f.contains("dt=2026-12-02")),
        "the lake holds one partition per day",
        &o,
    )?;
    Ok(())
}
