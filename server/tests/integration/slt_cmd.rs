//! `sluice test`: sqllogictest files run by the real binary, embedded and
//! over Flight SQL, in both modes.

use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, check, stdout};

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "slt_cmd::failures_show_location_and_diff_then_summary",
            failures_show_location_and_diff,
        ),
        Trial::test(
            "slt_cmd::complete_rewrites_expected_results",
            complete_rewrites_expected_results,
        ),
        Trial::test(
            "slt_cmd::both_modes_over_flight_sql",
            both_modes_over_flight_sql,
        ),
    ]
}

/// A pipeline's file: writes a table in the file's scratch directory and
/// checks it; `${GREETING}` comes from `--var`.
const GOOD: &str = "\
statement ok
CREATE TABLE t (a INT, b VARCHAR) WITH ('connector' = 'filesystem', 'path' = '${SCRATCH}/t/', 'format' = 'parquet')

statement count 2
INSERT INTO t VALUES (1, '${GREETING}'), (2, 'y')

query IT
SELECT a, b FROM t ORDER BY a
----
1 hello
2 y
";

/// The session is in the mode the run asked for; `onlyif` picks the record.
const MODES: &str = "\
onlyif batch
query T
SELECT value FROM information_schema.df_settings WHERE name = 'sluice.runtime_mode'
----
batch

onlyif streaming
query T
SELECT value FROM information_schema.df_settings WHERE name = 'sluice.runtime_mode'
----
streaming
";

const BAD: &str = "\
# Wrong on purpose.

query I
SELECT 1 + 1
----
3
";

fn suite(s: &Scratch) {
    s.write("suite/good.slt", GOOD);
    s.write("suite/modes.slt", MODES);
    s.write("suite/nested/bad.slt", BAD);
}

fn failures_show_location_and_diff() -> Result<(), Failed> {
    let s = Scratch::new();
    suite(&s);
    let o = s.run_sluice(&[
        "test",
        "suite",
        "--mode",
        "both",
        "-j",
        "2",
        "--var",
        "GREETING=hello",
    ]);
    let out = stdout(&o);
    check(o.status.code() == Some(1), "a failing file exits 1", &o)?;
    for want in [
        "FAIL  suite/nested/bad.slt [batch]",
        "FAIL  suite/nested/bad.slt [streaming]",
        "at suite/nested/bad.slt:3",
        "-   3",
        "+   2",
        "ok    suite/good.slt [batch]",
        "ok    suite/good.slt [streaming]",
        "ok    suite/modes.slt [batch]",
        "ok    suite/modes.slt [streaming]",
    ] {
        check(out.contains(want), &format!("missing {want:?}"), &o)?;
    }
    check(
        out.trim_end().ends_with("4 passed, 2 failed"),
        "the summary ends the output",
        &o,
    )?;
    // Without the variable the file cannot run: the error names it.
    let o = s.run_sluice(&["test", "suite/good.slt"]);
    check(
        o.status.code() == Some(1) && stdout(&o).contains("GREETING"),
        "an undefined variable fails the file, naming it",
        &o,
    )?;
    // A path that holds no test is the command's error.
    let o = s.run_sluice(&["test", "nowhere"]);
    check(o.status.code() == Some(2), "a missing path exits 2", &o)
}

fn complete_rewrites_expected_results() -> Result<(), Failed> {
    let s = Scratch::new();
    let bad = s.write("bad.slt", BAD);
    let o = s.run_sluice(&["test", "bad.slt", "--complete"]);
    check(o.status.code() == Some(0), "--complete succeeds", &o)?;
    let text = std::fs::read_to_string(&bad)?;
    check(
        text.contains("----\n2\n") && text.contains("# Wrong on purpose."),
        &format!("the file was not completed:\n{text}"),
        &o,
    )?;
    let o = s.run_sluice(&["test", "bad.slt", "--mode", "streaming"]);
    check(
        o.status.code() == Some(0) && stdout(&o).contains("1 passed, 0 failed"),
        "the completed file passes",
        &o,
    )
}

fn both_modes_over_flight_sql() -> Result<(), Failed> {
    let s = Scratch::new();
    suite(&s);
    let server = crate::flight::start_server(s.path(), &[])?;
    let url = format!("http://{}", server.address);
    let o = s.run_sluice(&[
        "test",
        "suite/modes.slt",
        "--server",
        &url,
        "--mode",
        "both",
    ]);
    check(
        o.status.code() == Some(0) && stdout(&o).contains("2 passed, 0 failed"),
        "the modes file passes in both modes over Flight SQL",
        &o,
    )?;
    // The server's catalog is shared, but each file runs in a schema of
    // its own: the same file runs twice at once, and again, on one server.
    s.write("twice/a.slt", GOOD);
    s.write("twice/b.slt", GOOD);
    for round in 1..=2 {
        let o = s.run_sluice(&[
            "test",
            "twice",
            "--server",
            &url,
            "--var",
            "GREETING=hello",
            "-j",
            "2",
        ]);
        check(
            o.status.code() == Some(0) && stdout(&o).contains("2 passed, 0 failed"),
            &format!("round {round}: both copies of the pipeline file pass over Flight SQL"),
            &o,
        )?;
    }
    // Every file's schema was dropped when it ended: only this file's own
    // is left.
    s.write(
        "schemas.slt",
        "query I\nSELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'slt_%'\n----\n1\n",
    );
    let o = s.run_sluice(&["test", "schemas.slt", "--server", &url]);
    check(
        o.status.code() == Some(0) && stdout(&o).contains("1 passed, 0 failed"),
        "no test schema outlives its file",
        &o,
    )
}
