//! `INSERT OVERWRITE t PARTITION (col = 'value')` into database tables:
//! only the rows holding the value are replaced, against the real Postgres
//! (prepared and staged writes) and MariaDB.

use std::process::Output;

use sluice_sql_tests::{Failed, Trial};

use crate::mysql::My;
use crate::postgres::Pg;
use crate::support::{Scratch, check, stderr};

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test("db_partitions::postgres_prepared", || {
            let pg = Pg::new()?;
            postgres(&pg, "prepared")
        }),
        Trial::test("db_partitions::postgres_staged", || {
            let pg = Pg::new()?;
            postgres(&pg, "staged")
        }),
        Trial::test("db_partitions::mysql", mysql),
    ]
}

/// Rows of 2024-01-01 (3) and 2024-01-02 (2), each `(day, id, v)`.
const ROWS: &str = "('2024-01-01', 1, 'old'), ('2024-01-01', 2, 'old'), \
                    ('2024-01-01', 3, 'old'), ('2024-01-02', 4, 'keep'), ('2024-01-02', 5, 'keep')";

/// The script replacing day 2024-01-01 of `ev` with 1000 new rows.
fn overwrite(decl: &str) -> String {
    format!(
        "{decl};\n\
         INSERT OVERWRITE ev PARTITION (day = '2024-01-01')\n\
         SELECT value AS id, 'new' AS v FROM generate_series(10, 1009);\n"
    )
}

/// Runs the shared checks; `per_day` reads `day|count|min(v)` per day.
/// Returns the last run's output.
fn run_checks(
    sc: &Scratch,
    decl: &str,
    per_day: &dyn Fn() -> Result<String, Failed>,
) -> Result<Output, Failed> {
    let expected = "2024-01-01|1000|new,2024-01-02|2|keep";
    let o = sc.run(&["-e", &overwrite(decl)], None);
    check(
        o.status.code() == Some(0),
        "the partition overwrite runs",
        &o,
    )?;
    check(
        per_day()? == expected,
        "only the rows of 2024-01-01 are replaced",
        &o,
    )?;
    let o = sc.run(&["-e", &overwrite(decl)], None);
    check(
        o.status.code() == Some(0) && per_day()? == expected,
        "a re-run gives the same table",
        &o,
    )?;

    // A failure in the middle of the load leaves the partition as it was.
    let failing = format!(
        "{decl};\n\
         INSERT OVERWRITE ev PARTITION (day = '2024-01-02')\n\
         SELECT value AS id, CAST(10 / (value - 500) AS VARCHAR) AS v \
         FROM generate_series(1, 1000);\n"
    );
    let o = sc.run(&["-e", &failing], None);
    check(
        o.status.code() == Some(1),
        "a failing load exits with 1",
        &o,
    )?;
    check(per_day()? == expected, "the table is unchanged", &o)?;

    // Errors name the column and say what to write.
    let dynamic =
        format!("{decl};\nINSERT OVERWRITE ev PARTITION (day) SELECT '2024-01-03', 1, 'x';\n");
    let o = sc.run(&["-e", &dynamic], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("PARTITION (day = 'value')")
            && per_day()? == expected,
        "a partition without a value is refused with a hint",
        &o,
    )?;
    let unknown = format!(
        "{decl};\nINSERT OVERWRITE ev PARTITION (nope = 'x') SELECT '2024-01-03', 1, 'x';\n"
    );
    let o = sc.run(&["-e", &unknown], None);
    check(
        o.status.code() != Some(0) && stderr(&o).contains("'nope', which is not a column"),
        "an unknown column is named",
        &o,
    )?;
    Ok(o)
}

fn postgres(pg: &Pg, transaction: &str) -> Result<(), Failed> {
    let s = &pg.schema;
    pg.exec(&format!(
        "CREATE TABLE {s}.ev (day date NOT NULL, id bigint, v text);
         CREATE VIEW {s}.ev_days AS SELECT DISTINCT day FROM {s}.ev;
         INSERT INTO {s}.ev VALUES {ROWS};"
    ))?;
    let decl = pg.declare(
        "ev",
        "ev",
        &format!(", 'sink.transaction' = '{transaction}'"),
    );
    let sc = Scratch::new();
    let o = run_checks(&sc, &decl, &|| {
        pg.one(&format!(
            "SELECT string_agg(d, ',' ORDER BY d) FROM (SELECT day || '|' || count(*) || '|' \
             || min(v) AS d FROM {s}.ev GROUP BY day) t"
        ))
    })?;
    let recorded = pg.one(&format!(
        "SELECT count(*) FROM {s}._sluice_commits WHERE mode = 'overwrite'"
    ))?;
    check(recorded == "2", "both overwrites are in the ledger", &o)
}

fn mysql() -> Result<(), Failed> {
    let my = My::new()?;
    my.exec("CREATE TABLE ev (day DATE NOT NULL, id BIGINT, v VARCHAR(20))")?;
    my.exec(&format!("INSERT INTO ev VALUES {ROWS}"))?;
    let decl = my.declare("ev", "ev", "");
    let sc = Scratch::new();
    let o = run_checks(&sc, &decl, &|| {
        my.one(
            "SELECT GROUP_CONCAT(d ORDER BY d) FROM (SELECT CONCAT(day, '|', COUNT(*), '|', \
             MIN(v)) AS d FROM ev GROUP BY day) t",
        )
    })?;
    check(my.side_tables()? == 0, "no side table is left", &o)
}
