//! The `sluice run` command as a user runs it: exit codes, output, summary,
//! variables, dry runs, re-runs.

use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, check, files_below, stderr, stdout};

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "cli::script_runs_and_summarises",
            script_runs_and_summarises,
        ),
        Trial::test("cli::syntax_error_runs_nothing", syntax_error_runs_nothing),
        Trial::test(
            "cli::undefined_variable_is_named",
            undefined_variable_is_named,
        ),
        Trial::test("cli::failed_statement_exits_1", failed_statement_exits_1),
        Trial::test(
            "cli::unknown_option_lists_valid_ones",
            unknown_option_lists_valid_ones,
        ),
        Trial::test("cli::dry_run_writes_nothing", dry_run_writes_nothing),
        Trial::test(
            "cli::variables_from_flags_and_env",
            variables_from_flags_and_env,
        ),
        Trial::test("cli::stdin_and_execute", stdin_and_execute),
        Trial::test("cli::output_formats", output_formats),
        Trial::test("cli::append_rerun_is_skipped", append_rerun_is_skipped),
        Trial::test("cli::secrets_are_never_printed", secrets_are_never_printed),
        Trial::test(
            "cli::missing_location_names_url",
            missing_location_names_url,
        ),
        Trial::test(
            "cli::copy_to_one_file_leaves_only_that_file",
            copy_to_one_file,
        ),
        Trial::test(
            "cli::http_locations_are_readable",
            http_locations_are_readable,
        ),
    ]
}

const ORDERS_CSV: &str = "id,customer,amount,dt\n1,alice,10.5,2024-01-01\n2,bob,20,2024-01-01\n3,alice,7.25,2024-01-02\n";

fn script_runs_and_summarises() -> Result<(), Failed> {
    let s = Scratch::new();
    s.write("in/orders.csv", ORDERS_CSV);
    let script = s.write(
        "job.sql",
        "CREATE EXTERNAL TABLE src STORED AS CSV LOCATION 'in/orders.csv';\n\
         CREATE TABLE dst (id BIGINT, customer VARCHAR, amount DOUBLE, dt VARCHAR)\n\
           PARTITIONED BY (dt) WITH ('connector' = 'filesystem', 'path' = 'out/dst/', 'format' = 'parquet');\n\
         INSERT INTO dst SELECT id, customer, amount, dt FROM src;\n\
         SELECT customer, sum(amount) AS total FROM dst GROUP BY customer ORDER BY customer;\n",
    );
    let o = s.run(&[script.to_str().unwrap()], None);
    check(o.status.code() == Some(0), "exit 0", &o)?;
    let out = stdout(&o);
    check(
        out.contains("| alice    | 17.75 |"),
        "query result table",
        &o,
    )?;
    let err = stderr(&o);
    check(
        err.contains("OK: 4 of 4 statements"),
        "summary headline",
        &o,
    )?;
    check(
        err.contains("INSERT") && err.contains("dst ("),
        "insert line names target",
        &o,
    )?;
    let insert_line = err
        .lines()
        .find(|l| l.contains(" INSERT "))
        .unwrap_or_default();
    check(insert_line.contains(" 3 "), "insert line shows 3 rows", &o)?;
    let files = files_below(&s.path().join("out/dst"));
    check(
        files
            .iter()
            .any(|f| f.starts_with("dt=2024-01-01/part-") && f.ends_with(".parquet")),
        "hive partition files",
        &o,
    )?;
    check(
        files.iter().any(|f| f.starts_with("_sluice/manifests/")),
        "manifest written",
        &o,
    )?;
    check(files.iter().any(|f| f == "_SUCCESS"), "_SUCCESS marker", &o)?;
    check(
        !files.iter().any(|f| f.contains("staging")),
        "no staging left",
        &o,
    )?;
    Ok(())
}

fn syntax_error_runs_nothing() -> Result<(), Failed> {
    let s = Scratch::new();
    let script = s.write(
        "bad.sql",
        "COPY (SELECT 1 AS a) TO 'out/a.csv' STORED AS CSV;\n\nSELECT a\n  FROM t WHERE ) ;\n",
    );
    let o = s.run(&[script.to_str().unwrap()], None);
    check(o.status.code() == Some(2), "exit 2 on a syntax error", &o)?;
    let err = stderr(&o);
    check(
        err.contains("statement 2 (line 4, column 16)"),
        "statement number and line",
        &o,
    )?;
    check(err.contains("syntax error"), "says syntax error", &o)?;
    check(
        err.contains("4 |") && err.contains('^'),
        "caret snippet",
        &o,
    )?;
    check(
        !s.path().join("out/a.csv").exists(),
        "first statement did not run",
        &o,
    )?;
    Ok(())
}

fn undefined_variable_is_named() -> Result<(), Failed> {
    let s = Scratch::new();
    let o = s.run(&["-e", "SELECT 1;\nSELECT '${run_date}'"], None);
    check(o.status.code() == Some(2), "exit 2", &o)?;
    let err = stderr(&o);
    check(
        err.contains("${run_date}") && err.contains("line 2"),
        "names variable and line",
        &o,
    )?;
    check(
        err.contains("--var run_date=VALUE") && err.contains("SLUICE_VAR_run_date"),
        "says how to fix",
        &o,
    )?;
    Ok(())
}

fn failed_statement_exits_1() -> Result<(), Failed> {
    let s = Scratch::new();
    let o = s.run(
        &[
            "-e",
            "SELECT 1 AS one;\nINSERT INTO missing SELECT 1;\nSELECT 2",
        ],
        None,
    );
    check(o.status.code() == Some(1), "exit 1", &o)?;
    let err = stderr(&o);
    check(
        err.contains("statement 2") && err.contains("table 'missing' does not exist"),
        "error names table",
        &o,
    )?;
    check(
        err.contains("FAILED: 2 of 3 statements"),
        "summary shows failure",
        &o,
    )?;
    Ok(())
}

fn unknown_option_lists_valid_ones() -> Result<(), Failed> {
    let s = Scratch::new();
    let o = s.run(
        &["-e", "CREATE TABLE t (a INT) WITH ('connector' = 'filesystem', 'path' = 'x/', 'format' = 'csv', 'pathh' = 'y')"],
        None,
    );
    check(o.status.code() == Some(1), "exit 1", &o)?;
    let err = stderr(&o);
    check(
        err.contains("unknown option 'pathh'") && err.contains("path, format"),
        "lists valid options",
        &o,
    )?;
    let o = s.run(
        &["-e", "CREATE TABLE t (a INT) WITH ('connector' = 'filesystem', 'path' = 'x/', 'format' = 'csv', 'format.delimiterr' = ';')"],
        None,
    );
    check(o.status.code() == Some(1), "exit 1", &o)?;
    let err = stderr(&o);
    check(
        err.contains("'format.delimiterr'") && err.contains("format.delimiter,"),
        "lists format options",
        &o,
    )?;
    Ok(())
}

fn dry_run_writes_nothing() -> Result<(), Failed> {
    let s = Scratch::new();
    s.write("in/orders.csv", ORDERS_CSV);
    let script = s.write(
        "job.sql",
        "CREATE EXTERNAL TABLE src STORED AS CSV LOCATION 'in/orders.csv';\n\
         COPY (SELECT * FROM src) TO 'out/copy/' STORED AS PARQUET;\n\
         SELECT count(*) FROM src;\n",
    );
    let o = s.run(&["--dry-run", script.to_str().unwrap()], None);
    check(o.status.code() == Some(0), "exit 0", &o)?;
    let out = stdout(&o);
    check(
        out.contains("SinkExec") && out.contains("mode=overwrite"),
        "write plan printed",
        &o,
    )?;
    check(out.contains("AggregateExec"), "query plan printed", &o)?;
    check(!s.path().join("out").exists(), "nothing written", &o)?;
    check(stderr(&o).contains("dry run"), "summary says dry run", &o)?;
    Ok(())
}

fn variables_from_flags_and_env() -> Result<(), Failed> {
    let s = Scratch::new();
    let mut c = s.sluice();
    c.args([
        "run",
        "--format",
        "csv",
        "--var",
        "a=from flag",
        "-e",
        "SELECT '${a}' AS a, '${b}' AS b",
    ])
    .env("SLUICE_VAR_b", "from env")
    .env("SLUICE_VAR_a", "env loses");
    let o = crate::support::run_command(c, None);
    check(o.status.code() == Some(0), "exit 0", &o)?;
    check(
        stdout(&o) == "a,b\nfrom flag,from env\n",
        "values substituted",
        &o,
    )?;
    check(
        stderr(&o).contains("variables: a=from flag, b=from env"),
        "summary records variables",
        &o,
    )?;
    Ok(())
}

fn stdin_and_execute() -> Result<(), Failed> {
    let s = Scratch::new();
    let o = s.run(&["--format", "csv", "-"], Some("SELECT 40 + 2 AS answer;"));
    check(
        o.status.code() == Some(0) && stdout(&o) == "answer\n42\n",
        "script from stdin",
        &o,
    )?;
    let o = s.run(
        &["--quiet", "--format", "csv", "-e", "SELECT 'x;y' AS v"],
        None,
    );
    check(
        o.status.code() == Some(0) && stdout(&o) == "v\nx;y\n",
        "-e with ; in a string",
        &o,
    )?;
    check(stderr(&o).is_empty(), "--quiet prints no summary", &o)?;
    Ok(())
}

fn output_formats() -> Result<(), Failed> {
    let s = Scratch::new();
    let sql = "SELECT * FROM (VALUES (1, 'a'), (2, NULL)) AS t(n, s) ORDER BY n";
    let o = s.run(&["-q", "--format", "json", "-e", sql], None);
    check(
        stdout(&o) == "{\"n\":1,\"s\":\"a\"}\n{\"n\":2}\n",
        "json lines",
        &o,
    )?;
    let o = s.run(&["-q", "--format", "csv", "-e", sql], None);
    check(stdout(&o) == "n,s\n1,a\n2,\n", "csv", &o)?;
    let o = s.run(&["-q", "--format", "table", "-e", sql], None);
    check(stdout(&o).contains("| 1 | a |"), "table", &o)?;
    Ok(())
}

fn append_rerun_is_skipped() -> Result<(), Failed> {
    let s = Scratch::new();
    let script = s.write(
        "nightly.sql",
        "CREATE TABLE t (n BIGINT, d VARCHAR) WITH ('connector' = 'filesystem', 'path' = 'out/t/', 'format' = 'csv');\n\
         INSERT INTO t SELECT value, '${day}' FROM generate_series(1, 5);\n",
    );
    let count = |s: &Scratch| {
        let o = s.run(
            &["-q", "--format", "csv", "-e", "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 'out/t/'; SELECT count(*) AS n FROM t"],
            None,
        );
        stdout(&o)
    };
    let path = script.to_str().unwrap();
    let o = s.run(&[path, "--var", "day=1"], None);
    check(o.status.code() == Some(0), "first run", &o)?;
    let o = s.run(&[path, "--var", "day=1"], None);
    check(o.status.code() == Some(0), "re-run", &o)?;
    check(
        stderr(&o).contains("skipped: already committed"),
        "re-run skipped",
        &o,
    )?;
    check(count(&s) == "n\n5\n", "re-run appended nothing", &o)?;
    let o = s.run(&[path, "--var", "day=2"], None);
    check(o.status.code() == Some(0), "other variables", &o)?;
    check(count(&s) == "n\n10\n", "new variables append", &o)?;
    let o = s.run(&[path, "--var", "day=2", "--force-rerun"], None);
    check(o.status.code() == Some(0), "forced", &o)?;
    check(count(&s) == "n\n15\n", "--force-rerun appends", &o)?;
    Ok(())
}

fn secrets_are_never_printed() -> Result<(), Failed> {
    let s = Scratch::new();
    let script = s.write(
        "secret.sql",
        "CREATE TABLE t (a INT) WITH ('connector' = 'filesystem', 'path' = 's3://bucket/t/', 'format' = 'csv',\n\
           'aws.access_key_id' = 'AKIDEXAMPLE', 'aws.secret_access_key' = secret('S3_KEY'), 'aws.region' = 'us-east-1');\n\
         SHOW CREATE TABLE t;\n\
         EXPLAIN SELECT * FROM t;\n",
    );
    let mut c = s.sluice();
    c.args(["run", script.to_str().unwrap()])
        .env("SLUICE_SECRET_S3_KEY", "TopSecretValue123");
    let o = crate::support::run_command(c, None);
    check(o.status.code() == Some(0), "exit 0", &o)?;
    let all = format!("{}{}", stdout(&o), stderr(&o));
    check(
        !all.contains("TopSecretValue123"),
        "secret value never printed",
        &o,
    )?;
    check(
        stdout(&o).contains("secret('S3_KEY')"),
        "SHOW CREATE TABLE shows the reference",
        &o,
    )?;
    // Without the secret, the error names it and how to provide it.
    let o = s.run(&[script.to_str().unwrap()], None);
    check(o.status.code() == Some(1), "missing secret fails", &o)?;
    check(
        stderr(&o).contains("secret('S3_KEY') is not defined")
            && stderr(&o).contains("SLUICE_SECRET_S3_KEY"),
        "names the secret",
        &o,
    )?;
    Ok(())
}

fn missing_location_names_url() -> Result<(), Failed> {
    let s = Scratch::new();
    let o = s.run(
        &[
            "-e",
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'nowhere/t.parquet'",
        ],
        None,
    );
    check(o.status.code() == Some(1), "exit 1", &o)?;
    check(
        stderr(&o).contains("nowhere/t.parquet does not exist"),
        "names the URL",
        &o,
    )?;
    Ok(())
}

fn copy_to_one_file() -> Result<(), Failed> {
    let s = Scratch::new();
    let o = s.run(
        &[
            "-e",
            "COPY (SELECT 1 AS a) TO 'out/report.csv' STORED AS CSV",
        ],
        None,
    );
    check(o.status.code() == Some(0), "exit 0", &o)?;
    check(
        files_below(&s.path().join("out")) == vec!["report.csv".to_string()],
        "only the file",
        &o,
    )?;
    check(
        std::fs::read_to_string(s.path().join("out/report.csv"))? == "a\n1\n",
        "contents",
        &o,
    )?;
    Ok(())
}

/// A read-only `http://` location, served by Python's http.server.
fn http_locations_are_readable() -> Result<(), Failed> {
    let s = Scratch::new();
    s.write("www/people.csv", "id,name\n1,alice\n2,bob\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(s.path().join("www"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let up = crate::support::wait_until(30, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let sql = format!(
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION 'http://127.0.0.1:{port}/people.csv'; \
         SELECT count(*) AS n, max(name) AS m FROM p"
    );
    let o = s.run(&["-q", "--format", "csv", "-e", &sql], None);
    let _ = server.kill();
    let _ = server.wait();
    if !up {
        return Err("http.server did not start".into());
    }
    check(stdout(&o) == "n,m\n2,bob\n", "read over http", &o)?;
    Ok(())
}
