//! `EXECUTE STATEMENT SET`: one source read once into several sinks, and
//! all-or-nothing publishing, against the real Postgres and MariaDB, through
//! `sluice run`.

use sluice_sql_tests::{Failed, Trial};

use crate::flight::start_server;
use crate::mysql::My;
use crate::postgres::Pg;
use crate::support::{Scratch, check, stderr, stdout};

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "statement_set::one_read_feeds_a_file_and_a_postgres_sink",
            one_read_feeds_a_file_and_a_postgres_sink,
        ),
        Trial::test(
            "statement_set::a_failing_second_sink_publishes_neither",
            a_failing_second_sink_publishes_neither,
        ),
        Trial::test(
            "statement_set::a_failing_publish_swaps_back_earlier_targets",
            a_failing_publish_swaps_back_earlier_targets,
        ),
        Trial::test(
            "statement_set::runs_on_the_flight_sql_server",
            runs_on_the_flight_sql_server,
        ),
    ]
}

/// Rows `1..=n` of `(id, v)` as CSV with a header.
fn source_csv(sc: &Scratch, n: u64) {
    let mut csv = String::from("id,v\n");
    for i in 1..=n {
        csv.push_str(&format!("{i},row{i}\n"));
    }
    sc.write("src.csv", &csv);
}

const SOURCE: &str = "CREATE EXTERNAL TABLE src (id BIGINT, v VARCHAR) STORED AS CSV \
                      LOCATION 'src.csv' OPTIONS ('format.has_header' 'true')";

/// Names of the Parquet files in the file table's directory.
fn parquet_files(sc: &Scratch) -> Vec<String> {
    std::fs::read_dir(sc.path().join("out/files"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".parquet"))
                .collect()
        })
        .unwrap_or_default()
}

fn one(pg: &Pg, sql: &str) -> Result<String, Failed> {
    pg.query(sql)?
        .first()
        .and_then(|r| r.first().cloned())
        .ok_or_else(|| format!("{sql}: no row").into())
}

/// The summary line of `kind` (e.g. "STATEMENT SET"), split on whitespace.
fn summary_line(err: &str, kind: &str) -> Vec<String> {
    err.lines()
        .find(|l| l.contains(kind))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn one_read_feeds_a_file_and_a_postgres_sink() -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = pg.schema.clone();
    pg.exec(&format!("CREATE TABLE {s}.dst (id bigint, v text)"))?;
    let sc = Scratch::new();
    source_csv(&sc, 5000);
    let script = format!(
        "{SOURCE};\n\
         CREATE TABLE evens (id BIGINT, v VARCHAR) WITH ('connector' = 'filesystem', \
         'path' = 'out/evens/', 'format' = 'parquet');\n\
         {};\n\
         EXECUTE STATEMENT SET BEGIN\n\
         \x20 INSERT INTO evens SELECT id, v FROM src WHERE id % 2 = 0;\n\
         \x20 INSERT INTO dst SELECT id, upper(v) FROM src;\n\
         END;\n\
         SELECT count(*) AS n, sum(id) AS s FROM evens;\n",
        pg.declare("dst", "dst", "")
    );

    // The plan shows one scan shared by both INSERTs.
    let o = sc.run(&["--dry-run", "-e", &script], None);
    check(o.status.code() == Some(0), "dry run", &o)?;
    let plan = stdout(&o);
    check(
        plan.contains("src is read once, for 2 INSERTs")
            && plan
                .matches("SharedScanExec: table=src, consumers=2")
                .count()
                == 2,
        "the dry run shows the shared scan and both consumers",
        &o,
    )?;

    let o = sc.run(&["--format", "csv", "-e", &script], None);
    check(o.status.code() == Some(0), "the set runs", &o)?;
    check(
        stdout(&o).contains("n,s\n2500,6252500\n"),
        "the file sink got the even rows",
        &o,
    )?;
    check(
        one(
            &pg,
            &format!(
                "SELECT count(*) || ' ' || sum(id) || ' ' || count(*) FILTER (WHERE v = 'ROW' || id) \
                 FROM {s}.dst"
            ),
        )? == "5000 12502500 5000",
        "the Postgres sink got every row",
        &o,
    )?;
    // Read once: the set's sources read 5000 rows, not 10.0k.
    let err = stderr(&o);
    let set = summary_line(&err, "STATEMENT SET");
    check(
        set.get(4).map(String::as_str) == Some("5000")
            && set.get(5).map(String::as_str) == Some("7500"),
        "the summary shows 5000 rows read (once) and 7500 written",
        &o,
    )?;
    check(
        summary_line(&err, "out/evens").first().map(String::as_str) == Some("4.1")
            && summary_line(&err, ".dst").first().map(String::as_str) == Some("4.2"),
        "the summary lists each target",
        &o,
    )?;
    Ok(())
}

fn a_failing_second_sink_publishes_neither() -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = pg.schema.clone();
    pg.exec(&format!(
        "CREATE TABLE {s}.a (id bigint, v text);
         INSERT INTO {s}.a VALUES (-1, 'old'), (-2, 'old'), (-3, 'old');
         CREATE TABLE {s}.b (id bigint NOT NULL, v text, CHECK (id < 4000));
         INSERT INTO {s}.b VALUES (-1, 'old'), (-2, 'old');"
    ))?;
    let sc = Scratch::new();
    source_csv(&sc, 5000);
    let files = "CREATE TABLE files (id BIGINT, v VARCHAR) WITH ('connector' = 'filesystem', \
                 'path' = 'out/files/', 'format' = 'parquet')";
    let o = sc.run(
        &[
            "-e",
            &format!("{files};\nINSERT INTO files VALUES (-1, 'old'), (-2, 'old');\n"),
        ],
        None,
    );
    check(o.status.code() == Some(0), "the file table has rows", &o)?;
    let decls = format!(
        "{SOURCE};\n{files};\n{};\n{};\n",
        pg.declare("a", "a", ""),
        pg.declare("b", "b", "")
    );
    let unchanged = |o: &std::process::Output| -> Result<(), Failed> {
        check(
            one(
                &pg,
                &format!("SELECT string_agg(id || v, ',' ORDER BY id) FROM {s}.a"),
            )? == "-3old,-2old,-1old",
            "the first Postgres target is unchanged",
            o,
        )?;
        check(
            one(&pg, &format!("SELECT count(*) FROM {s}.b"))? == "2",
            "the failing target is unchanged",
            o,
        )?;
        check(
            one(
                &pg,
                &format!(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = '{s}' \
                     AND tablename LIKE '\\_sluice\\_stage\\_%'"
                ),
            )? == "0",
            "no staging table is left",
            o,
        )?;
        check(
            one(&pg, &format!("SELECT count(*) FROM {s}._sluice_commits"))? == "0",
            "nothing is in the commit ledger",
            o,
        )?;
        let read = sc.run(
            &[
                "--format",
                "csv",
                "-e",
                &format!("{files};\nSELECT count(*) AS n FROM files;\n"),
            ],
            None,
        );
        check(
            stdout(&read).contains("n\n2\n"),
            "the file target is unchanged",
            &read,
        )
    };

    // Postgres then Postgres: the second fails its CHECK while publishing,
    // after the first prepared its overwrite; the first is rolled back.
    let pg_pg = format!(
        "{decls}EXECUTE STATEMENT SET BEGIN\n\
         \x20 INSERT OVERWRITE a SELECT id, v FROM src;\n\
         \x20 INSERT INTO b SELECT id, v FROM src;\n\
         END;\n\
         SELECT 'after the set' AS never;\n"
    );
    let o = sc.run(&["-e", &pg_pg], None);
    let err = stderr(&o);
    check(
        o.status.code() == Some(1),
        "the set fails with exit code 1",
        &o,
    )?;
    check(
        err.contains("INSERT 2 of the statement set")
            && err.contains(&format!("{s}.b"))
            && err.contains("b_id_check")
            && err.contains("no target of the set was changed"),
        "the error names the second INSERT, its target and the constraint",
        &o,
    )?;
    check(
        err.contains("(line 7, column 3)"),
        "the error points at the second INSERT",
        &o,
    )?;
    check(
        !stdout(&o).contains("after the set"),
        "the script stops",
        &o,
    )?;
    unchanged(&o)?;

    // A file table then Postgres: the file sink publishes last of all, so
    // it never publishes.
    let file_pg = format!(
        "{decls}EXECUTE STATEMENT SET BEGIN\n\
         \x20 INSERT OVERWRITE files SELECT id, v FROM src;\n\
         \x20 INSERT INTO b SELECT id, v FROM src;\n\
         END;\n"
    );
    let o = sc.run(&["-e", &file_pg], None);
    check(o.status.code() == Some(1), "the set fails", &o)?;
    check(
        stderr(&o).contains("INSERT 2 of the statement set"),
        "the error names the second INSERT",
        &o,
    )?;
    unchanged(&o)?;

    // Without the failing rows both publish.
    let ok = format!(
        "{decls}EXECUTE STATEMENT SET BEGIN\n\
         \x20 INSERT OVERWRITE a SELECT id, v FROM src;\n\
         \x20 INSERT INTO b SELECT id, v FROM src WHERE id < 4000;\n\
         \x20 INSERT OVERWRITE files SELECT id, v FROM src WHERE id <= 10;\n\
         END;\n\
         SELECT count(*) AS n FROM files;\n"
    );
    let o = sc.run(&["--format", "csv", "-e", &ok], None);
    check(o.status.code() == Some(0), "the set runs", &o)?;
    check(
        one(&pg, &format!("SELECT count(*) FROM {s}.a"))? == "5000"
            && one(&pg, &format!("SELECT count(*) FROM {s}.b"))? == "4001"
            && stdout(&o).contains("n\n10\n"),
        "every target is published",
        &o,
    )?;
    check(
        one(&pg, &format!("SELECT count(*) FROM {s}._sluice_commits"))? == "2",
        "both Postgres commits are in the ledger",
        &o,
    )?;
    Ok(())
}

/// File and MySQL targets publish without a prepare step. When a later one
/// fails, the overwrites already published are swapped back, and the
/// prepared MySQL and Postgres transactions roll back.
fn a_failing_publish_swaps_back_earlier_targets() -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = pg.schema.clone();
    pg.exec(&format!(
        "CREATE TABLE {s}.p (id bigint, v text); INSERT INTO {s}.p VALUES (-1, 'old');"
    ))?;
    let my = My::new()?;
    my.exec("CREATE TABLE m1 (id BIGINT NOT NULL, v VARCHAR(20))")?;
    my.exec("INSERT INTO m1 VALUES (-1, 'old'), (-2, 'old')")?;
    my.exec(
        "CREATE TABLE m2 (id BIGINT NOT NULL, v VARCHAR(20), CONSTRAINT m2_small CHECK (id < 4000))",
    )?;
    my.exec("INSERT INTO m2 VALUES (-1, 'old')")?;
    my.exec("CREATE TABLE ma (id BIGINT NOT NULL, v VARCHAR(20))")?;
    my.exec("INSERT INTO ma VALUES (-1, 'old')")?;
    let sc = Scratch::new();
    source_csv(&sc, 5000);
    let files = "CREATE TABLE files (id BIGINT, v VARCHAR) WITH ('connector' = 'filesystem', \
                 'path' = 'out/files/', 'format' = 'parquet')";
    let o = sc.run(
        &[
            "-e",
            &format!("{files};\nINSERT INTO files VALUES (-1, 'old'), (-2, 'old');\n"),
        ],
        None,
    );
    check(o.status.code() == Some(0), "the file table has rows", &o)?;
    let decls = format!(
        "{SOURCE};\n{files};\n{};\n{};\n{};\n{};\n",
        my.declare("m1", "m1", ""),
        my.declare("m2", "m2", ""),
        my.declare("ma", "ma", ""),
        pg.declare("p", "p", "")
    );
    let file_rows = || {
        let read = sc.run(
            &[
                "--format",
                "csv",
                "-e",
                &format!("{files};\nSELECT count(*) AS n, min(v) AS v FROM files;\n"),
            ],
            None,
        );
        stdout(&read)
    };
    let contents = |t: &str| -> Result<String, Failed> {
        my.one(&format!(
            "SELECT CONCAT(COUNT(*), ':', COALESCE(MIN(v), '')) FROM {t}"
        ))
    };

    // INSERT 3 violates m2's CHECK while it publishes, after the file
    // table and m1 published: both are swapped back; ma and p had only
    // prepared and roll back.
    let failing = format!(
        "{decls}EXECUTE STATEMENT SET BEGIN\n\
         \x20 INSERT OVERWRITE files SELECT id, v FROM src;\n\
         \x20 INSERT OVERWRITE m1 SELECT id, v FROM src;\n\
         \x20 INSERT OVERWRITE m2 SELECT id, v FROM src;\n\
         \x20 INSERT INTO ma SELECT id, v FROM src;\n\
         \x20 INSERT OVERWRITE p SELECT id, v FROM src;\n\
         END;\n"
    );
    let o = sc.run(&["-e", &failing], None);
    let err = stderr(&o);
    check(
        o.status.code() == Some(1),
        "the set fails with exit code 1",
        &o,
    )?;
    check(
        err.contains("INSERT 3 of the statement set") && err.contains("m2_small"),
        "the error names the third INSERT and the constraint",
        &o,
    )?;
    let note = err
        .split("swapped back to their previous contents: ")
        .nth(1)
        .unwrap_or_default();
    check(
        note.contains("files (") && note.contains("table m1 ") && !note.contains("table m2 "),
        "the error lists the targets swapped back",
        &o,
    )?;
    check(
        err.contains("no other target of the set was changed") && !err.contains("ALREADY"),
        "nothing stays published",
        &o,
    )?;
    check(
        file_rows().contains("n,v\n2,old\n"),
        "the file table has its previous rows",
        &o,
    )?;
    check(
        contents("m1")? == "2:old" && contents("m2")? == "1:old" && contents("ma")? == "1:old",
        "the MySQL tables have their previous rows",
        &o,
    )?;
    check(
        one(&pg, &format!("SELECT count(*) || ':' || min(v) FROM {s}.p"))? == "1:old",
        "the Postgres table has its previous rows",
        &o,
    )?;
    check(
        my.side_tables()? == 0
            && my.one("SELECT COUNT(*) FROM _sluice_commits")? == "0"
            && one(&pg, &format!("SELECT count(*) FROM {s}._sluice_commits"))? == "0",
        "no side table or commit record is left",
        &o,
    )?;

    // Without the failing rows every target publishes, and the previous
    // contents kept for a swap back are gone.
    let before = parquet_files(&sc);
    check(!before.is_empty(), "the file table has files", &o)?;
    let ok = failing.replace(
        "INSERT OVERWRITE m2 SELECT id, v FROM src;",
        "INSERT OVERWRITE m2 SELECT id, v FROM src WHERE id < 4000;",
    );
    let o = sc.run(&["-e", &ok], None);
    check(o.status.code() == Some(0), "the set runs", &o)?;
    check(
        file_rows().contains("n,v\n5000,row1\n")
            && contents("m1")? == "5000:row1"
            && contents("m2")? == "3999:row1"
            && contents("ma")? == "5001:old"
            && one(&pg, &format!("SELECT count(*) FROM {s}.p"))? == "5000",
        "every target is published",
        &o,
    )?;
    check(
        my.side_tables()? == 0,
        "no old or staging table is left",
        &o,
    )?;
    let now = parquet_files(&sc);
    check(
        !now.is_empty() && before.iter().all(|f| !now.contains(f)),
        "the replaced files are deleted once the set is done",
        &o,
    )?;
    Ok(())
}

fn runs_on_the_flight_sql_server() -> Result<(), Failed> {
    let sc = Scratch::new();
    let server = start_server(sc.path(), &[])?;
    let url = format!("http://{}", server.address);
    source_csv(&sc, 100);
    let src = sc.path().join("src.csv");
    let script = format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS src (id BIGINT, v VARCHAR) STORED AS CSV \
         LOCATION '{}' OPTIONS ('format.has_header' 'true');\n\
         CREATE TABLE IF NOT EXISTS small (id BIGINT);\n\
         CREATE TABLE IF NOT EXISTS big (id BIGINT);\n\
         EXECUTE STATEMENT SET BEGIN\n\
         \x20 INSERT INTO small SELECT id FROM src WHERE id <= 10;\n\
         \x20 INSERT INTO big SELECT id FROM src WHERE id > 10;\n\
         END;\n\
         SELECT (SELECT count(*) FROM small) AS s, (SELECT count(*) FROM big) AS b;\n",
        src.display()
    );
    let o = sc.run(&["--server", &url, "--format", "csv", "-e", &script], None);
    check(o.status.code() == Some(0), "the set runs on the server", &o)?;
    check(
        stdout(&o).contains("s,b\n10,90\n"),
        "both targets written",
        &o,
    )?;
    let set = summary_line(&stderr(&o), "STATEMENT SET");
    check(
        set.get(5).map(String::as_str) == Some("100"),
        "the server reports the rows of every INSERT",
        &o,
    )?;
    Ok(())
}
