//! Runner tests against the toy engine in `test_engine`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::harness::run_tests;
use crate::test_engine::MemoryFactory;
use crate::{
    Arguments, EngineFactory, Failed, RunnerConfig, RunnerError, Trial, parse_args, run_file,
    run_file_blocking, slt_trials,
};

fn factory() -> Arc<dyn EngineFactory> {
    Arc::new(MemoryFactory)
}

fn config() -> RunnerConfig {
    let mut config = RunnerConfig::default();
    config
        .vars
        .insert("GREETING".to_owned(), "hello".to_owned());
    config
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn run(config: &RunnerConfig, text: &str) -> Result<(), RunnerError> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write(dir.path(), "t.slt", text);
    run_file_blocking(config, factory(), &path)
}

fn expect_failure(config: &RunnerConfig, text: &str) -> String {
    match run(config, text) {
        Ok(()) => panic!("expected the file to fail"),
        Err(e @ RunnerError::Test { .. }) => e.to_string(),
        Err(e) => panic!("expected a test failure, got: {e}"),
    }
}

const PASSING: &str = r#"
statement ok
PUT b 2

statement count 1
PUT a 1

statement count 0
DELETE zz

query I
GET a
----
1

# The engine returns b before a.
query TI rowsort
SCAN
----
a 1
b 2

query TI
SCAN
----
b 2
a 1

query TI valuesort
SCAN
----
1
2
a
b

statement error key not found: nope
GET nope

query error ^key not found: n.pe$
GET nope

query T
VAR GREETING
----
hello

query T
VAR UNSET
----
NULL

query T
SCRATCH_EXISTS
----
true

query TT
EXPLAIN
----
plan
01)Scan
02)--Filter: true

statement ok
NOTHING

statement ok
SET x = 1

onlyif memory
query I
GET a
----
1

skipif memory
query I
GET a
----
999

onlyif embedded
statement ok
this would fail

connection other
statement error key not found: a
GET a

control substitution on

statement ok
PUT $GREETING 5

query I
GET ${GREETING}
----
5

control substitution off

query T
VAR SCRATCH
----
<slt:ignore>sluice-slt-<slt:ignore>
"#;

#[test]
fn passing_file_passes() {
    if let Err(e) = run(&config(), PASSING) {
        panic!("{e}");
    }
}

#[test]
fn wrong_expected_result_fails() {
    let msg = expect_failure(
        &config(),
        "statement ok\nPUT a 1\n\nquery I\nGET a\n----\n2\n",
    );
    assert!(msg.contains("query result mismatch"), "{msg}");
    assert!(msg.contains("t.slt:4"), "{msg}");
    assert!(msg.contains("-   2"), "{msg}");
    assert!(msg.contains("+   1"), "{msg}");
}

#[test]
fn trailing_whitespace_is_ignored_but_inner_whitespace_is_not() {
    let ok = "statement ok\nPUT a 1\n\nquery TI\nSCAN\n----\na 1   \n";
    if let Err(e) = run(&config(), ok) {
        panic!("{e}");
    }
    let msg = expect_failure(
        &config(),
        "statement ok\nPUT a 1\n\nquery TI\nSCAN\n----\na  1\n",
    );
    assert!(msg.contains("query result mismatch"), "{msg}");
}

#[test]
fn statement_error_regex_must_match_engine_message() {
    if let Err(e) = run(
        &config(),
        "statement error ^key not found: [a-z]+$\nGET missing\n",
    ) {
        panic!("{e}");
    }
    let msg = expect_failure(
        &config(),
        "statement error table .* not found\nGET missing\n",
    );
    assert!(msg.contains("expected to fail with error"), "{msg}");
    assert!(msg.contains("key not found: missing"), "{msg}");
}

#[test]
fn failing_statement_reports_engine_message() {
    let msg = expect_failure(&config(), "\n\nstatement ok\nGET missing\n");
    assert!(msg.contains("key not found: missing"), "{msg}");
    assert!(msg.contains("t.slt:3"), "{msg}");
}

#[test]
fn unexpected_success_fails() {
    let msg = expect_failure(
        &config(),
        "statement ok\nPUT a 1\n\nquery error .*\nGET a\n",
    );
    assert!(msg.contains("expected to fail"), "{msg}");
}

#[test]
fn column_types_are_strict_by_default() {
    let text = "statement ok\nPUT a 1\n\nquery T\nGET a\n----\n1\n";
    let msg = expect_failure(&config(), text);
    assert!(msg.contains("columns mismatch"), "{msg}");
    let lax = RunnerConfig {
        strict_column_types: false,
        ..config()
    };
    if let Err(e) = run(&lax, text) {
        panic!("{e}");
    }
}

#[test]
fn substitution_can_be_on_for_every_file() {
    let config = RunnerConfig {
        substitution: true,
        ..config()
    };
    if let Err(e) = run(
        &config,
        "statement ok\nPUT $GREETING 3\n\nquery I\nGET hello\n----\n3\n",
    ) {
        panic!("{e}");
    }
}

#[test]
fn complete_mode_rewrites_expected_results() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write(
        dir.path(),
        "t.slt",
        "statement ok\nPUT a 1\n\nquery I\nGET a\n----\n42\n\nquery T rowsort\nSCAN\n\nstatement ok\nGET missing\n",
    );
    let complete = RunnerConfig {
        complete: true,
        ..config()
    };
    if let Err(e) = run_file_blocking(&complete, factory(), &path) {
        panic!("{e}");
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        text,
        "statement ok\nPUT a 1\n\nquery I\nGET a\n----\n1\n\nquery TI rowsort\nSCAN\n----\na 1\n\nstatement error key not found: missing\nGET missing\n"
    );
    if let Err(e) = run_file_blocking(&config(), factory(), &path) {
        panic!("completed file fails: {e}");
    }
}

#[test]
fn run_file_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let config = config();
    let future = run_file(&config, factory(), Path::new("unused.slt"));
    assert_send(&future);
}

#[test]
fn trials_are_named_by_relative_path() {
    let a = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let b = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(a.path(), "ddl/create.slt", "");
    write(a.path(), "query.slt", "");
    write(b.path(), "other.slt", "");
    let roots = [a.path().to_owned(), b.path().to_owned()];

    let names = |config: &RunnerConfig| -> Vec<String> {
        slt_trials(config, factory(), &roots)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    };
    assert_eq!(
        names(&config()),
        vec!["slt::ddl/create.slt", "slt::query.slt", "slt::other.slt"]
    );
    let filtered = RunnerConfig {
        name_prefix: "sql::".to_owned(),
        filter: Some("ddl/".to_owned()),
        ..config()
    };
    assert_eq!(names(&filtered), vec!["sql::ddl/create.slt"]);

    write(b.path(), "query.slt", "");
    let err = slt_trials(&config(), factory(), &roots).map(|_| ());
    assert!(matches!(err, Err(RunnerError::DuplicateName { name }) if name == "slt::query.slt"));
}

#[test]
fn harness_runs_files_and_extra_trials() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    write(dir.path(), "good.slt", PASSING);
    write(dir.path(), "sub/good.slt", "statement ok\nPUT a 1\n");
    // Would fail; skipped so this test's output shows no failure.
    write(dir.path(), "bad.slt", "query I\nGET nope\n----\n1\n");
    let roots = [dir.path().to_owned()];
    let args = Arguments::from_iter(["slt", "--quiet", "--test-threads", "2", "--skip", "bad"]);
    let extra = vec![Trial::test("plain::ok", || Ok(()))];
    let conclusion =
        run_tests(&args, config(), factory(), &roots, extra).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conclusion.num_passed, 3);
    assert_eq!(conclusion.num_failed, 0);
    assert_eq!(conclusion.num_filtered_out, 1);

    // What `cargo nextest run` does for each test.
    let args = Arguments::from_iter(["slt", "--exact", "slt::good.slt", "--nocapture"]);
    let conclusion =
        run_tests(&args, config(), factory(), &roots, vec![]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conclusion.num_passed, 1);
    assert_eq!(conclusion.num_filtered_out, 2);
}

#[test]
fn failing_file_fails_its_trial() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write(dir.path(), "bad.slt", "query I\nGET nope\n----\n1\n");
    let failed = run_file_blocking(&config(), factory(), &path).map_err(Failed::from);
    let message = match failed {
        Ok(()) => panic!("expected failure"),
        Err(f) => f.message().unwrap_or_default().to_owned(),
    };
    assert!(message.contains("key not found: nope"), "{message}");
    assert!(message.contains("bad.slt:1"), "{message}");
}

#[test]
fn parse_args_strips_complete() {
    let (args, complete) = parse_args(["bin", "--complete", "--exact", "slt::a.slt"]);
    assert!(complete);
    assert!(args.exact);
    assert_eq!(args.filter.as_deref(), Some("slt::a.slt"));

    let (args, complete) = parse_args(["bin", "--list", "--format", "terse"]);
    assert!(!complete);
    assert!(args.list);
}
