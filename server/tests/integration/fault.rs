//! Killing `sluice run` in the middle of a write leaves the target as it was.

use std::process::Stdio;

use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, check, files_below, stdout, wait_until};

pub(crate) fn trials() -> Vec<Trial> {
    vec![Trial::test(
        "fault::kill9_during_insert_overwrite_leaves_target_unchanged",
        kill9_during_insert_overwrite,
    )]
}

const DECLARE: &str = "CREATE TABLE t (n BIGINT, tag VARCHAR) WITH ('connector' = 'filesystem', 'path' = 'out/t/', 'format' = 'parquet');\n";

fn kill9_during_insert_overwrite() -> Result<(), Failed> {
    let s = Scratch::new();
    let setup = s.write(
        "setup.sql",
        &format!("{DECLARE}INSERT INTO t SELECT value, 'old' FROM generate_series(1, 1000);\n"),
    );
    let o = s.run(&[setup.to_str().unwrap()], None);
    check(o.status.code() == Some(0), "setup", &o)?;
    let before = files_below(&s.path().join("out/t"));

    let big = s.write(
        "big.sql",
        &format!("{DECLARE}INSERT OVERWRITE t SELECT value, repeat('new', 10) FROM generate_series(1, 400000000);\n"),
    );
    let mut child = s
        .sluice()
        .args(["run", "--quiet", big.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let staging = s.path().join("out/t/_sluice/staging");
    let writing = wait_until(120, || {
        files_below(&staging)
            .iter()
            .any(|f| !f.ends_with("_lease.json"))
    });
    child.kill()?; // SIGKILL
    child.wait()?;
    if !writing {
        return Err("the overwrite never started staging data".into());
    }

    let count = s.run(
        &[
            "-q",
            "--format",
            "csv",
            "-e",
            &format!("{DECLARE}SELECT count(*) AS n, min(tag) AS tag FROM t"),
        ],
        None,
    );
    check(
        stdout(&count) == "n,tag\n1000,old\n",
        "readers still see the old table",
        &count,
    )?;
    let after: Vec<String> = files_below(&s.path().join("out/t"))
        .into_iter()
        .filter(|f| !f.starts_with("_sluice/staging/"))
        .collect();
    check(after == before, "no data file or manifest changed", &count)?;

    // The dead job's staging area is removed by `sluice gc` (and would be by
    // the next write).
    let mut gc = s.sluice();
    gc.args(["gc", "out/t/"]);
    let o = crate::support::run_command(gc, None);
    check(o.status.code() == Some(0), "gc succeeds", &o)?;
    check(
        stdout(&o).contains("removed 1 dead job"),
        "gc removed the dead job",
        &o,
    )?;
    check(files_below(&staging).is_empty(), "staging area empty", &o)?;
    check(
        files_below(&s.path().join("out/t")) == before,
        "table files intact after gc",
        &o,
    )?;
    Ok(())
}
