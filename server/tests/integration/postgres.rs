//! The `postgres` connector against the real Postgres on 127.0.0.1:5432
//! (database `test`), driven through `sluice run` as a user runs it.

use sluice_sql_tests::{Failed, Trial};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::support::{Scratch, check, stderr, stdout};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test("postgres::types_round_trip", types_round_trip),
        Trial::test(
            "postgres::pushdown_and_parallel_reads",
            pushdown_and_parallel_reads,
        ),
        Trial::test("postgres::prepared_writes_are_atomic", || {
            append_and_overwrite_are_atomic("prepared")
        }),
        Trial::test("postgres::staged_writes_are_atomic", || {
            append_and_overwrite_are_atomic("staged")
        }),
        Trial::test(
            "postgres::prepared_transactions_roll_forward",
            prepared_transactions_roll_forward,
        ),
        Trial::test("postgres::upsert_on_primary_key", upsert_on_primary_key),
        Trial::test(
            "postgres::errors_name_host_and_table",
            errors_name_host_and_table,
        ),
    ]
}

/// A private schema in the test database, dropped afterwards.
pub(crate) struct Pg {
    rt: tokio::runtime::Runtime,
    client: Client,
    pub(crate) schema: String,
}

impl Pg {
    pub(crate) fn new() -> Result<Self, Failed> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        Self::with_schema(&format!("sluice_t{}_{nanos}", std::process::id()))
    }

    /// A connection that creates (and finally drops) the schema `schema`.
    pub(crate) fn with_schema(schema: &str) -> Result<Self, Failed> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(URL, NoTls).await.map_err(|e| {
                format!("Postgres must run on 127.0.0.1:5432 (.ci/run starts it): {e}")
            })?;
            tokio::spawn(conn);
            Ok::<_, String>(client)
        })?;
        let pg = Self {
            rt,
            client,
            schema: schema.to_string(),
        };
        pg.exec(&format!("CREATE SCHEMA {}", pg.schema))?;
        Ok(pg)
    }

    pub(crate) fn exec(&self, sql: &str) -> Result<(), Failed> {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| format!("{sql}: {e:?}").into())
    }

    /// Rows of `sql` as text, NULL as "NULL".
    pub(crate) fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, Failed> {
        let msgs = self
            .rt
            .block_on(self.client.simple_query(sql))
            .map_err(|e| format!("{sql}: {e:?}"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    pub(crate) fn one(&self, sql: &str) -> Result<String, Failed> {
        self.query(sql)?
            .first()
            .and_then(|r| r.first().cloned())
            .ok_or_else(|| format!("{sql}: no row").into())
    }

    /// `CREATE TABLE name WITH (...)` declaring `schema.table`, plus `extra` options.
    pub(crate) fn declare(&self, name: &str, table: &str, extra: &str) -> String {
        format!(
            "CREATE TABLE {name} WITH ('connector' = 'postgres', 'url' = '{URL}', \
             'table' = '{}.{table}'{extra})",
            self.schema
        )
    }

    fn staging_tables(&self) -> Result<usize, Failed> {
        Ok(self
            .one(&format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = '{}' \
                 AND tablename LIKE '\\_sluice\\_stage\\_%'",
                self.schema
            ))?
            .parse()
            .expect("count"))
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.exec(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
    }
}

fn types_round_trip() -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = &pg.schema;
    pg.exec(&format!(
        "CREATE TYPE {s}.mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE {s}.src (
           id int PRIMARY KEY, b boolean, i2 smallint, i8 bigint, f4 real, f8 double precision,
           n numeric(12, 2), nb numeric(50, 10), nu numeric, t text, vc varchar(20), ch char(3),
           j json, jb jsonb, u uuid, by bytea, d date, tm time, ts timestamp, tstz timestamptz,
           iv interval, arr int[], tarr text[], m {s}.mood);
         INSERT INTO {s}.src VALUES
           (1, true, -32768, 9223372036854775807, 1.5, -2.25e300, 1234567890.12,
            -12345678901234567890123456789.0123456789, 3.141592653589793238, 'héllo ✓', 'vc', 'ab',
            '{{\"a\": [1, 2]}}', '{{\"b\": null}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '\\x00ff10', '2024-02-29', '23:59:59.999999', '1999-12-31 23:59:59.5',
            '2024-03-03 12:00:00+02', '1 year 2 mons 3 days 04:05:06.7', '{{1, NULL, 3}}',
            '{{\"x\", \"y z\"}}', 'happy'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, false, 0, -1, 'NaN', 0, -0.01, 0, -7, '', 'x', 'z', '[]', '[]',
            '00000000-0000-0000-0000-000000000000', '', '1970-01-01', '00:00:00',
            '1900-01-01 00:00:00', '1969-12-31 23:59:59.999999+00', '-1 days', '{{}}', '{{}}',
            'sad');
         CREATE TABLE {s}.dst (LIKE {s}.src);
         CREATE TABLE {s}.via_parquet (LIKE {s}.src);
         ALTER TABLE {s}.via_parquet DROP COLUMN iv;"
    ))?;
    let sc = Scratch::new();
    // Postgres to Postgres directly, and through Parquet (which has no
    // month-day-nanosecond interval, so `iv` stays out of that leg).
    let script = format!(
        "{};\n{};\n{};\n\
         INSERT INTO dst SELECT * FROM src;\n\
         COPY (SELECT * EXCLUDE (iv) FROM src) TO 'out/src.parquet' STORED AS PARQUET;\n\
         CREATE EXTERNAL TABLE pq STORED AS PARQUET LOCATION 'out/src.parquet';\n\
         INSERT INTO via_parquet SELECT * FROM pq;\n\
         DESCRIBE src;\n",
        pg.declare("src", "src", ""),
        pg.declare("dst", "dst", ""),
        pg.declare("via_parquet", "via_parquet", ""),
    );
    let o = sc.run(&["-e", &script], None);
    check(o.status.code() == Some(0), "round trip runs", &o)?;
    let out = stdout(&o);
    for want in [
        "Decimal128(12, 2)",
        "Decimal256(50, 10)",
        "Decimal128(38, 18)",
        "List(",
        "Interval(MonthDayNano)",
        "Binary",
        "Date32",
    ] {
        check(out.contains(want), &format!("DESCRIBE shows {want}"), &o)?;
    }
    check(
        out.contains("UTC"),
        "timestamptz reads as UTC timestamps",
        &o,
    )?;
    let rows = |table: &str, drop: &str| {
        pg.query(&format!(
            "SELECT (to_jsonb(x) - '{drop}')::text FROM {s}.{table} x ORDER BY id"
        ))
    };
    let src = rows("src", "")?;
    check(src.len() == 3, "three source rows", &o)?;
    let dst = rows("dst", "")?;
    if src != dst {
        return Err(format!("Postgres -> Postgres changed rows:\n{src:?}\n{dst:?}").into());
    }
    let (src, pq) = (rows("src", "iv")?, rows("via_parquet", "iv")?);
    if src != pq {
        return Err(
            format!("Postgres -> Parquet -> Postgres changed rows:\n{src:?}\n{pq:?}").into(),
        );
    }
    Ok(())
}

fn pushdown_and_parallel_reads() -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = &pg.schema;
    pg.exec(&format!(
        "CREATE TABLE {s}.big AS
           SELECT g AS id, g % 7 AS k, md5(g::text) AS h FROM generate_series(1, 20000) g;
         CREATE TABLE {s}.big_copy (LIKE {s}.big);"
    ))?;
    let want_k = pg.one(&format!(
        "SELECT count(*) FROM {s}.big WHERE k = 3 AND h LIKE 'a%'"
    ))?;
    let sc = Scratch::new();
    let script = format!(
        "{};\n{};\n\
         EXPLAIN SELECT id, h FROM big WHERE k = 3 AND h LIKE 'a%';\n\
         INSERT INTO big_copy SELECT * FROM big;\n\
         SELECT count(*) AS n, sum(id) AS total, count(DISTINCT id) AS ids FROM big;\n\
         SELECT count(*) AS n FROM big WHERE k = 3 AND h LIKE 'a%';\n\
         SET 'execution.runtime-mode' = 'batch';\n\
         SET 'sluice.serialize_stage_plans' = 'true';\n\
         SELECT k, count(*) AS c FROM big GROUP BY k ORDER BY k;\n\
         SET 'execution.runtime-mode' = 'streaming';\n\
         {};\n\
         EXPLAIN SELECT id FROM big_pages;\n\
         SELECT count(*) AS pages_n, sum(id) AS pages_total, count(DISTINCT id) AS pages_ids FROM big_pages;\n",
        pg.declare(
            "big",
            "big",
            ", 'scan.partition.column' = 'id', 'scan.partition.num' = '3'"
        ),
        pg.declare("big_copy", "big_copy", ""),
        pg.declare(
            "big_pages",
            "big",
            ", 'scan.partition.column' = 'ctid', 'scan.partition.num' = '4'"
        ),
    );
    let o = sc.run(&["--format", "csv", "-e", &script], None);
    check(o.status.code() == Some(0), "reads run", &o)?;
    let out = stdout(&o);
    check(
        out.contains("PostgresScanExec") && out.contains("partitions=3"),
        "EXPLAIN shows the scan and its partitions",
        &o,
    )?;
    check(
        // CSV output doubles the quotes of "k".
        out.contains("filters=[") && out.contains("\"\"k\"\" = 3") && out.contains("LIKE 'a%'"),
        "EXPLAIN shows the pushed filters",
        &o,
    )?;
    check(
        out.contains("n,total,ids\n20000,200010000,20000\n"),
        "parallel reads return every row once",
        &o,
    )?;
    check(
        out.contains(&format!("n\n{want_k}\n")),
        "filtered count matches Postgres",
        &o,
    )?;
    // Three scan partitions write through three staging tables, published
    // in one transaction.
    check(
        pg.one(&format!(
            "SELECT count(*) || ' ' || count(DISTINCT id) || ' ' || sum(id) FROM {s}.big_copy"
        ))? == "20000 20000 200010000"
            && pg.staging_tables()? == 0,
        "parallel writers copy every row once",
        &o,
    )?;
    let groups = pg
        .query(&format!(
            "SELECT k, count(*) FROM {s}.big GROUP BY k ORDER BY k"
        ))?
        .iter()
        .map(|r| format!("{},{}\n", r[0], r[1]))
        .collect::<String>();
    check(
        out.contains(&format!("k,c\n{groups}")),
        "staged batch mode (stage plans encoded and decoded) reads the table through a shuffle",
        &o,
    )?;
    check(
        out.contains("columns=[id], partitions=4"),
        "EXPLAIN shows the four ctid ranges",
        &o,
    )?;
    check(
        out.contains("pages_n,pages_total,pages_ids\n20000,200010000,20000\n"),
        "ctid ranges read every row once",
        &o,
    )?;
    Ok(())
}

/// Appends, re-runs, overwrites and failures with `'sink.transaction' =
/// transaction` (`prepared` fails unless that path is taken).
fn append_and_overwrite_are_atomic(transaction: &str) -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = &pg.schema;
    let opt = format!(", 'sink.transaction' = '{transaction}'");
    let opt = opt.as_str();
    pg.exec(&format!(
        "CREATE TABLE {s}.a (id int NOT NULL, v text, CHECK (id < 100000));
         CREATE VIEW {s}.a_view AS SELECT count(*) AS n FROM {s}.a;"
    ))?;
    let oid = pg.one(&format!("SELECT '{s}.a'::regclass::oid"))?;
    let sc = Scratch::new();
    let nightly = sc.write(
        "nightly.sql",
        &format!(
            "{};\nINSERT INTO a SELECT value, 'day ${{day}}' FROM generate_series(1, 1000);\n",
            pg.declare("a", "a", opt)
        ),
    );
    let nightly = nightly.to_str().expect("path");
    let count = || pg.one(&format!("SELECT count(*) FROM {s}.a"));

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

    // Overwrite keeps the table (same OID, the view still works).
    let overwrite = format!(
        "{};\nINSERT OVERWRITE a SELECT value, 'fresh' FROM generate_series(1, 10);\n",
        pg.declare("a", "a", opt)
    );
    let o = sc.run(&["-e", &overwrite], None);
    check(o.status.code() == Some(0), "overwrite", &o)?;
    check(count()? == "10", "overwrite replaced the rows", &o)?;
    check(
        pg.one(&format!("SELECT '{s}.a'::regclass::oid"))? == oid
            && pg.one(&format!("SELECT n FROM {s}.a_view"))? == "10",
        "overwrite keeps the table's OID and its views",
        &o,
    )?;

    // A constraint violation at commit: nothing changes, nothing is left staged.
    let violating = format!(
        "{};\nINSERT OVERWRITE a SELECT value, 'bad' FROM generate_series(99990, 100010);\n",
        pg.declare("a", "a", opt)
    );
    let o = sc.run(&["-e", &violating], None);
    let err = stderr(&o);
    check(o.status.code() != Some(0), "constraint violation fails", &o)?;
    check(
        err.contains("a_id_check") && err.contains("127.0.0.1:5432/test") && err.contains(".a"),
        "the error names the constraint, host and table",
        &o,
    )?;
    check(
        count()? == "10",
        "target unchanged after a failed commit",
        &o,
    )?;
    check(pg.staging_tables()? == 0, "no staging table left", &o)?;

    // A failure in the middle of the load (a division by zero after many
    // rows were staged): the target is unchanged.
    let failing = format!(
        "{};\nINSERT OVERWRITE a SELECT CAST(100 / (value - 150000) AS INT), 'x' FROM generate_series(1, 200000);\n",
        pg.declare("a", "a", opt)
    );
    let o = sc.run(&["-e", &failing], None);
    check(o.status.code() != Some(0), "failing load fails", &o)?;
    check(count()? == "10", "target unchanged after a failed load", &o)?;
    check(
        pg.staging_tables()? == 0,
        "failed load left no staging table",
        &o,
    )?;
    // Removing the old rows fails (a row trigger refuses): with prepared
    // writers that DELETE runs while they write, and the job still fails
    // whole at its commit. (A staged overwrite truncates: no row trigger.)
    if transaction == "prepared" {
        pg.exec(&format!(
            "CREATE FUNCTION {s}.keep_rows() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'rows of a are kept'; END $$;
             CREATE TRIGGER a_keep BEFORE DELETE ON {s}.a
               FOR EACH ROW EXECUTE FUNCTION {s}.keep_rows();"
        ))?;
        let refused = format!(
            "{};\nINSERT OVERWRITE a SELECT value, 'refused' FROM generate_series(1, 5000);\n",
            pg.declare("a", "a", opt)
        );
        let o = sc.run(&["-e", &refused], None);
        check(
            o.status.code() != Some(0) && stderr(&o).contains("rows of a are kept"),
            "an overwrite whose DELETE fails fails, with the database's message",
            &o,
        )?;
        check(
            count()? == "10"
                && pg.one(&format!("SELECT count(*) FROM {s}.a WHERE v = 'refused'"))? == "0",
            "target unchanged after a failed clear",
            &o,
        )?;
        pg.exec(&format!("DROP TRIGGER a_keep ON {s}.a"))?;
    }
    let ledger = pg.one(&format!("SELECT count(*) FROM {s}._sluice_commits"))?;
    check(ledger == "3", "three commits recorded in the ledger", &o)?;
    check(
        pg.one(&format!("SELECT count(*) FROM {s}._sluice_prepared"))? == "0"
            && pg.one(&format!("SELECT count(*) FROM {s}._sluice_staging"))? == "0",
        "no task transaction or staging table is left registered",
        &o,
    )?;
    if transaction == "prepared" {
        // A unique index would make parallel prepared writers wait for
        // each other: 'prepared' refuses it, 'auto' stages instead.
        pg.exec(&format!("CREATE UNIQUE INDEX a_id ON {s}.a (id)"))?;
        let o = sc.run(&["-e", &overwrite], None);
        check(
            o.status.code() != Some(0)
                && stderr(&o).contains("unique index")
                && stderr(&o).contains("'sink.transaction' = 'staged'"),
            "'prepared' on a table with a unique index is refused, saying what to set",
            &o,
        )?;
        let auto = format!(
            "{};\nINSERT OVERWRITE a SELECT value, 'auto' FROM generate_series(1, 20);\n",
            pg.declare("a", "a", "")
        );
        let o = sc.run(&["-e", &auto], None);
        check(
            o.status.code() == Some(0) && count()? == "20",
            "'auto' stages where prepared transactions cannot be used",
            &o,
        )?;
    }
    Ok(())
}

/// What a crash leaves behind: a prepared task transaction whose commit
/// was decided is committed by the next job's start, an undecided one
/// whose lease expired is rolled back, and one whose job still runs (its
/// lease is current) is left alone.
fn prepared_transactions_roll_forward() -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = &pg.schema;
    pg.exec(&format!("CREATE TABLE {s}.b (id int NOT NULL)"))?;
    let sc = Scratch::new();
    let append = |from: i32| {
        format!(
            "{};\nINSERT INTO b SELECT CAST(value AS INT) FROM generate_series({from}, {});\n",
            pg.declare("b", "b", ", 'sink.transaction' = 'prepared'"),
            from + 9
        )
    };
    // The first job creates the ledger tables.
    let o = sc.run(&["-e", &append(1000)], None);
    check(o.status.code() == Some(0), "first append", &o)?;
    let gid = |what: &str| format!("sluice_test_{s}_{what}");
    let leftover = |what: &str, rows: &str, decided: bool, lease: &str| {
        pg.exec(&format!(
            "BEGIN; INSERT INTO {s}.b VALUES {rows}; PREPARE TRANSACTION '{}';
             INSERT INTO {s}._sluice_prepared (gid, job_id, target, task, decided, lease_until)
               VALUES ('{}', 'crashed-{what}', '{s}.b', 0, {decided}, now() + interval '{lease}')",
            gid(what),
            gid(what)
        ))
    };
    leftover("decided", "(1), (2)", true, "10 minutes")?;
    leftover("expired", "(100)", false, "-1 minute")?;
    leftover("live", "(200)", false, "10 minutes")?;
    let o = sc.run(&["-e", &append(2000)], None);
    let ids = pg.query(&format!(
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM {s}.b WHERE id < 1000 OR id > 1009"
    ));
    let prepared = pg.query(&format!(
        "SELECT string_agg(gid, ',' ORDER BY gid) FROM pg_prepared_xacts WHERE gid LIKE 'sluice_test_{s}_%'"
    ));
    let registered = pg.query(&format!(
        "SELECT string_agg(gid, ',' ORDER BY gid) FROM {s}._sluice_prepared"
    ));
    // Clean up before checking: a prepared transaction would hold the schema.
    let _ = pg.exec(&format!("ROLLBACK PREPARED '{}'", gid("live")));
    check(o.status.code() == Some(0), "second append", &o)?;
    check(
        ids?[0][0] == "1,2,2000,2001,2002,2003,2004,2005,2006,2007,2008,2009",
        "the decided transaction was committed, the expired one rolled back, the live one left",
        &o,
    )?;
    let live = gid("live");
    check(
        prepared?[0][0] == live && registered?[0][0] == live,
        "only the live job's transaction is still prepared and registered",
        &o,
    )?;
    Ok(())
}

fn upsert_on_primary_key() -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = &pg.schema;
    pg.exec(&format!(
        "CREATE TABLE {s}.dim (id int PRIMARY KEY, name text NOT NULL, score numeric(6, 1))"
    ))?;
    let sc = Scratch::new();
    let decl = |extra: &str| {
        format!(
            "CREATE TABLE dim (id INT, name VARCHAR, score DECIMAL(6, 1), PRIMARY KEY (id) NOT ENFORCED) \
             WITH ('connector' = 'postgres', 'url' = '{URL}', 'table' = '{s}.dim'{extra})"
        )
    };
    let load = format!(
        "{};\nINSERT INTO dim SELECT CAST(value AS INT), 'n' || value, CAST(value AS DECIMAL(6, 1)) / 2 FROM generate_series(1, 50);\n",
        decl("")
    );
    let snapshot = || pg.query(&format!("SELECT * FROM {s}.dim ORDER BY id"));
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
        pg.one(&format!(
            "SELECT name || ' ' || score FROM {s}.dim WHERE id = 1"
        ))? == "changed 9.5"
            && pg.one(&format!("SELECT count(*) FROM {s}.dim"))? == "51",
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
        pg.one(&format!("SELECT name FROM {s}.dim WHERE id = 2"))? == "n2",
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
        pg.one(&format!("SELECT name FROM {s}.dim WHERE id = 2"))? == "second",
        "the last row of a repeated key wins",
        &o,
    )?;
    Ok(())
}

fn errors_name_host_and_table() -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = &pg.schema;
    pg.exec(&format!("CREATE TABLE {s}.present (id int)"))?;
    let sc = Scratch::new();

    let refused = "CREATE TABLE t WITH ('connector' = 'postgres', \
                   'url' = 'postgres://postgres@127.0.0.1:1/test', 'table' = 'public.t')";
    let o = sc.run(&["-e", refused], None);
    check(o.status.code() != Some(0), "unreachable host fails", &o)?;
    check(
        stderr(&o).contains("127.0.0.1:1/test") && stderr(&o).contains("refused"),
        "connection refused names the host",
        &o,
    )?;

    let missing = pg.declare("t", "nope", "");
    let o = sc.run(&["-e", &missing], None);
    check(o.status.code() != Some(0), "missing table fails", &o)?;
    check(
        stderr(&o).contains(&format!("{s}.nope")) && stderr(&o).contains("does not exist"),
        "missing table is named",
        &o,
    )?;

    let unknown_role = format!(
        "CREATE TABLE t WITH ('connector' = 'postgres', 'url' = 'postgres://no_such_role_x@127.0.0.1:5432/test', \
         'table' = '{s}.present')"
    );
    let o = sc.run(&["-e", &unknown_role], None);
    check(
        o.status.code() != Some(0) && stderr(&o).contains("no_such_role_x"),
        "an unknown user fails and is named",
        &o,
    )?;

    // A password-authenticated role (.ci/run creates it): a wrong password
    // is an authentication error; the right one, given as a secret, works
    // and is never printed.
    let with_password = |secret: &str, via_connection: bool| {
        let declare = if via_connection {
            format!(
                "CREATE CONNECTION pg WITH ('type' = 'postgres', \
                 'url' = 'postgres://sluice_pw@127.0.0.1:5432/test', 'password' = secret('PG_PW'));\n\
                 CREATE TABLE t WITH ('connection' = 'pg', 'table' = '{s}.present')"
            )
        } else {
            format!(
                "CREATE TABLE t WITH ('connector' = 'postgres', \
                 'url' = 'postgres://sluice_pw@127.0.0.1:5432/test', \
                 'password' = secret('PG_PW'), 'table' = '{s}.present')"
            )
        };
        let script = format!("{declare};\nSHOW CREATE TABLE t;\nSELECT count(*) AS n FROM t;\n");
        let mut c = sc.sluice();
        c.arg("run").args(["--format", "csv", "-e", &script]);
        c.env("SLUICE_SECRET_PG_PW", secret);
        crate::support::run_command(c, None)
    };
    pg.exec(&format!(
        "GRANT USAGE ON SCHEMA {s} TO sluice_pw; GRANT SELECT ON {s}.present TO sluice_pw"
    ))
    .map_err(|e| format!("the role sluice_pw must exist (.ci/run creates it): {e:?}"))?;
    let o = with_password("wrong-password", false);
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
    for via_connection in [false, true] {
        let o = with_password("sluice-test-pw", via_connection);
        let what = if via_connection {
            "a named connection"
        } else {
            "table options"
        };
        check(
            o.status.code() == Some(0),
            &format!("the right password connects ({what})"),
            &o,
        )?;
        check(
            stdout(&o).contains("secret('PG_PW')") && !stdout(&o).contains("sluice-test-pw"),
            "SHOW CREATE TABLE shows the secret's name, not its value",
            &o,
        )?;
        check(stdout(&o).contains("n\n0\n"), "reads through the role", &o)?;
    }
    let o = sc.run(
        &[
            "-e",
            "CREATE TABLE t WITH ('connection' = 'nope', 'table' = 'x')",
        ],
        None,
    );
    check(
        o.status.code() != Some(0) && stderr(&o).contains("no connection named 'nope'"),
        "an undeclared connection is named",
        &o,
    )?;
    Ok(())
}
