//! Apache DataFusion's own sqllogictest files, run by `sluice test` over
//! Flight SQL against a `sluice server` (see
//! `sql-tests/conformance/SELECTION.md`).

use std::path::PathBuf;

use sluice_sql_tests::conformance::{locate_suite, prepare, read_selection, replace_skips};
use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, check, stdout};

/// Fewer statement and query records than this fails the test, so that the
/// selection cannot hollow out (a rule or a new DataFusion release leaving
/// most records out).
const MINIMUM_RECORDS: usize = 3000;

/// Rewrites SELECTION.md's list of skipped records instead of failing when
/// it is out of date.
const UPDATE_ENV: &str = "SLUICE_UPDATE_SELECTION";

pub(crate) fn trials() -> Vec<Trial> {
    vec![Trial::test(
        "conformance::datafusion_suite_over_flight_sql",
        datafusion_suite_over_flight_sql,
    )]
}

fn datafusion_suite_over_flight_sql() -> Result<(), Failed> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql-tests/conformance");
    let suite = locate_suite(&root.join("Cargo.toml")).map_err(|e| {
        format!(
            "{e}\nfetch it first: cargo fetch --locked --manifest-path sql-tests/conformance/Cargo.toml"
        )
    })?;
    let selection_md = root.join("SELECTION.md");
    let markdown = std::fs::read_to_string(&selection_md)?;
    let selection = read_selection(&markdown);
    let s = Scratch::new();
    let prepared = prepare(&suite, &selection, s.path())?;

    let updated = replace_skips(&markdown, &prepared.skips_table())
        .ok_or("SELECTION.md lacks the <!-- skips:begin --> and <!-- skips:end --> markers")?;
    if updated != markdown {
        if std::env::var_os(UPDATE_ENV).is_some() {
            std::fs::write(&selection_md, &updated)?;
        } else {
            return Err(format!(
                "the skipped records listed in {} differ from what the rules leave out; \
                 rerun with {UPDATE_ENV}=1 to rewrite the list, and review the change",
                selection_md.display()
            )
            .into());
        }
    }
    println!(
        "conformance: {} records of {} files run, {} left out by rule",
        prepared.records,
        prepared.files.len(),
        prepared.skips.len()
    );
    if prepared.records < MINIMUM_RECORDS {
        return Err(format!(
            "only {} records would run, fewer than the minimum {MINIMUM_RECORDS}",
            prepared.records
        )
        .into());
    }

    // The server runs in the copy, so the files' relative locations
    // (`data/...`, `test_files/scratch/...`) resolve as in DataFusion.
    let server = crate::flight::start_server(s.path(), &[])?;
    let url = format!("http://{}", server.address);
    let o = s.run_sluice(&[
        "test",
        "test_files",
        "--server",
        &url,
        "--conventions",
        "datafusion",
        "-j",
        "2",
    ]);
    let files = prepared.files.len();
    check(
        o.status.code() == Some(0)
            && stdout(&o)
                .trim_end()
                .ends_with(&format!("{files} passed, 0 failed")),
        &format!("every one of the {files} selected files passes"),
        &o,
    )?;

    // The same files in streaming mode: every task of each stage graph at
    // once, with live exchanges. Left out: math.slt, whose
    // `SELECT abs(c1) ... LIMIT 1` over a table of three files returns
    // whichever file's first row arrives first, and one of them overflows
    // abs(); in batch mode it passes only because of the usual arrival
    // order.
    let streaming: Vec<String> = prepared
        .files
        .iter()
        .filter(|f| !f.ends_with("math.slt"))
        .map(|f| f.display().to_string())
        .collect();
    let mut args = vec!["test"];
    args.extend(streaming.iter().map(String::as_str));
    args.extend([
        "--server",
        &url,
        "--conventions",
        "datafusion",
        "--mode",
        "streaming",
        "-j",
        "2",
    ]);
    let o = s.run_sluice(&args);
    check(
        o.status.code() == Some(0)
            && stdout(&o)
                .trim_end()
                .ends_with(&format!("{} passed, 0 failed", streaming.len())),
        &format!(
            "every one of the {} files passes in streaming mode",
            streaming.len()
        ),
        &o,
    )
}
