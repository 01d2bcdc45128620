//! Apache DataFusion's own sqllogictest files, run against Sluice.
//!
//! The crate `datafusion-sqllogictest` ships DataFusion's `.slt` files but
//! not the fixtures they read. Cargo downloads it through a manifest of its
//! own (`sql-tests/conformance/Cargo.toml`, never compiled); [`locate_suite`]
//! finds it with `cargo metadata`. [`prepare`] copies a selection of its
//! files to a scratch directory, leaving out by rule the records Sluice
//! cannot run as DataFusion's harness does (see [`Rule`]), and reports
//! every record it left out with its reason.
//!
//! The selection and the rules are documented, with every skipped record,
//! in `sql-tests/conformance/SELECTION.md`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sqllogictest::{
    Condition, Connection, DefaultColumnType, ExpectedError, QueryExpect, Record, SortMode,
    StatementExpect,
};

/// The package whose files are run.
pub const SUITE_PACKAGE: &str = "datafusion-sqllogictest";

/// Why the conformance suite could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// `cargo metadata` failed or did not list the suite's package.
    #[error("cannot locate {SUITE_PACKAGE} with cargo metadata: {0}")]
    Locate(String),
    /// A file of the selection is not in the suite.
    #[error("selected file {0} is not in {SUITE_PACKAGE}")]
    Missing(String),
    /// A file could not be read, parsed or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The directory of `datafusion-sqllogictest` (holding `test_files/` and
/// `data/`), as resolved by `cargo metadata` for `manifest`.
pub fn locate_suite(manifest: &Path) -> Result<PathBuf, ConformanceError> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        packages: Vec<Package>,
    }
    #[derive(serde::Deserialize)]
    struct Package {
        name: String,
        manifest_path: PathBuf,
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .map_err(|e| ConformanceError::Locate(e.to_string()))?;
    if !output.status.success() {
        return Err(ConformanceError::Locate(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    let metadata: Metadata = serde_json::from_slice(&output.stdout)
        .map_err(|e| ConformanceError::Locate(e.to_string()))?;
    metadata
        .packages
        .into_iter()
        .find(|p| p.name == SUITE_PACKAGE)
        .and_then(|p| p.manifest_path.parent().map(Path::to_path_buf))
        .ok_or_else(|| ConformanceError::Locate(format!("no package {SUITE_PACKAGE}")))
}

/// The files listed between `<!-- selection:begin -->` and
/// `<!-- selection:end -->` in a SELECTION.md: one `- path` item per file,
/// relative to the suite's `test_files/`, optionally followed by text.
pub fn read_selection(markdown: &str) -> Vec<String> {
    let Some(section) = between(
        markdown,
        "<!-- selection:begin -->",
        "<!-- selection:end -->",
    ) else {
        return vec![];
    };
    section
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|f| f.trim_matches('`').to_string())
        .collect()
}

fn between<'a>(text: &'a str, begin: &str, end: &str) -> Option<&'a str> {
    let start = text.find(begin)? + begin.len();
    let stop = start + text[start..].find(end)?;
    Some(&text[start..stop])
}

/// Replaces the text between `<!-- skips:begin -->` and `<!-- skips:end -->`
/// with `table`; `None` when the markers are missing.
pub fn replace_skips(markdown: &str, table: &str) -> Option<String> {
    let begin = "<!-- skips:begin -->";
    let end = "<!-- skips:end -->";
    let start = markdown.find(begin)? + begin.len();
    let stop = start + markdown[start..].find(end)?;
    Some(format!(
        "{}\n{}{}",
        &markdown[..start],
        table,
        &markdown[stop..]
    ))
}

/// Why a record is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// It reads a fixture outside the crate (`'../...'`: arrow-testing,
    /// parquet-testing, DataFusion's core test data), which the crate does
    /// not ship.
    Fixture,
    /// It is an `EXPLAIN`: plans legitimately differ in Sluice.
    Explain,
    /// It uses a table or function that DataFusion's test harness registers
    /// in code, not the file.
    Harness,
    /// It uses an object that a left-out record created or filled.
    Depends,
    /// It sets `datafusion.sql_parser.dialect` to other than `generic`, or
    /// runs while it is: Sluice parses with its own dialect.
    Dialect,
    /// It creates a table without a connector holding INTERVAL values or
    /// nested dictionaries. A server keeps such tables in Parquet, which
    /// cannot store arrow's `Interval(MonthDayNano)` or a dictionary of
    /// dictionaries (not implemented in arrow-rs's writer).
    Storage,
    /// It names schema `public` or changes the current schema: each file
    /// runs in a schema of its own, so its tables are not in `public`.
    Public,
}

impl Rule {
    /// The rule's name in SELECTION.md.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fixture => "fixture",
            Self::Explain => "explain",
            Self::Harness => "harness",
            Self::Depends => "depends",
            Self::Dialect => "dialect",
            Self::Storage => "storage",
            Self::Public => "public",
        }
    }
}

/// Objects DataFusion's test harness (`test_context.rs`) registers in code
/// for some files, by file name; records of those files using them cannot
/// run elsewhere.
pub const HARNESS_OBJECTS: &[(&str, &[&str])] = &[
    ("aggregate.slt", &["approx_distinct_union_test"]),
    (
        "arrow_field.slt",
        &["table_with_metadata", "larger_table", "smaller_table"],
    ),
    ("async_udf.slt", &["async_abs"]),
    ("cte.slt", &["strict_schema", "orders"]),
    (
        "dictionary_struct.slt",
        &["dict_struct_table", "dict_struct_nullable"],
    ),
    (
        "information_schema_columns.slt",
        &["my_catalog", "table_with_many_types"],
    ),
    ("information_schema_table_types.slt", &["temp"]),
    (
        "joins.slt",
        &[
            "example",
            "test_partition_table",
            "my_catalog",
            "table_with_many_types",
        ],
    ),
    ("map.slt", &["table_with_map"]),
    (
        "metadata.slt",
        &["table_with_metadata", "larger_table", "smaller_table"],
    ),
    ("union_function.slt", &["union_table"]),
];

fn harness_objects(name: &str) -> &'static [&'static str] {
    let file = name.rsplit('/').next().unwrap_or(name);
    HARNESS_OBJECTS
        .iter()
        .find(|(f, _)| *f == file)
        .map_or(&[], |(_, objects)| objects)
}

/// One left-out record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skip {
    /// File, relative to `test_files/`.
    pub file: String,
    /// Line of the record in that file (or in the file it includes).
    pub line: u32,
    /// The rule.
    pub rule: Rule,
    /// What the rule found: the fixture path, the object, ...
    pub detail: String,
}

/// What [`prepare`] wrote.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The files written, relative to the output directory.
    pub files: Vec<PathBuf>,
    /// Statement and query records kept.
    pub records: usize,
    /// Records left out.
    pub skips: Vec<Skip>,
}

impl Prepared {
    /// The skips as a Markdown table, one row per record.
    pub fn skips_table(&self) -> String {
        let mut out = String::from("| file | line | rule | detail |\n|---|---|---|---|\n");
        for s in &self.skips {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                s.file,
                s.line,
                s.rule.name(),
                s.detail.replace('|', "\\|")
            );
        }
        out
    }
}

/// Copies the suite's `data/` and the `selection` of its `test_files/` to
/// `out` (keeping their relative paths, so that relative locations resolve
/// from `out` as they do from the crate), each file flattened (includes
/// inlined) and with the records the rules leave out removed.
pub fn prepare(
    suite: &Path,
    selection: &[String],
    out: &Path,
) -> Result<Prepared, ConformanceError> {
    copy_dir(&suite.join("data"), &out.join("data"))?;
    let mut prepared = Prepared::default();
    for name in selection {
        let source = suite.join("test_files").join(name);
        if !source.is_file() {
            return Err(ConformanceError::Missing(name.clone()));
        }
        let records = sqllogictest::parse_file::<DefaultColumnType>(&source).map_err(|e| {
            ConformanceError::File {
                path: source.clone(),
                message: e.to_string(),
            }
        })?;
        let (text, kept, skips) = filter(name, &source.to_string_lossy(), records);
        let relative = PathBuf::from("test_files").join(name);
        let target = out.join(&relative);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        }
        std::fs::write(&target, text).map_err(|e| file_error(&target, e))?;
        prepared.files.push(relative);
        prepared.records += kept;
        prepared.skips.extend(skips);
    }
    // The files write to relative scratch paths.
    let scratch = out.join("test_files").join("scratch");
    std::fs::create_dir_all(&scratch).map_err(|e| file_error(&scratch, e))?;
    Ok(prepared)
}

fn file_error(path: &Path, e: std::io::Error) -> ConformanceError {
    ConformanceError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), ConformanceError> {
    if !from.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(to).map_err(|e| file_error(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| file_error(from, e))? {
        let entry = entry.map_err(|e| file_error(from, e))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).map_err(|e| file_error(&path, e))?;
        }
    }
    Ok(())
}

/// Applies the rules to one file's records: its new text, the number of
/// statement and query records kept, and the skips. Kept records of the
/// file itself (`main`, not a file it includes) stay on their original
/// lines, so failures point into DataFusion's file.
fn filter(
    name: &str,
    main: &str,
    records: Vec<Record<DefaultColumnType>>,
) -> (String, usize, Vec<Skip>) {
    let mut text = String::new();
    let mut kept = 0;
    let mut skips = vec![];
    // Objects a left-out record created or filled.
    let mut tainted: BTreeSet<String> = BTreeSet::new();
    // The dialect statement in force, when not the generic one.
    let mut dialect: Option<String> = None;
    let harness = harness_objects(name);
    for record in records {
        let (sql, line) = match &record {
            Record::Statement { sql, loc, .. } | Record::Query { sql, loc, .. } => {
                (sql.clone(), loc.line())
            }
            // Inlined by parse_file.
            Record::Include { .. } | Record::Injected(_) => continue,
            other => {
                let _ = writeln!(text, "{other}");
                continue;
            }
        };
        let words = words(&sql);
        let target = written_object(&words);
        let lower = sql.to_ascii_lowercase();
        if lower.contains("sql_parser.dialect") && words.first().is_some_and(|w| w == "set") {
            dialect = (!lower.contains("generic")).then(|| sql.trim().to_string());
        }
        let found = if let Some(set) = &dialect {
            Some((Rule::Dialect, set.clone()))
        } else if let Some(fixture) = fixture(&sql) {
            Some((Rule::Fixture, fixture))
        } else if let Some(what) = unstorable(&words, &lower) {
            Some((Rule::Storage, what.to_string()))
        } else if lower.contains("public.") {
            Some((Rule::Public, "public.".to_string()))
        } else if lower.contains("catalog.default_schema") {
            Some((
                Rule::Public,
                "datafusion.catalog.default_schema".to_string(),
            ))
        } else if words.first().is_some_and(|w| w == "explain") {
            Some((Rule::Explain, "EXPLAIN".to_string()))
        } else if let Some(o) = harness.iter().find(|o| words.iter().any(|w| w == *o)) {
            Some((Rule::Harness, (*o).to_string()))
        } else {
            // The object a CREATE defines may be named anywhere in it.
            let creates = words.first().is_some_and(|w| w == "create");
            words
                .iter()
                .find(|w| tainted.contains(*w) && !(creates && target.as_ref() == Some(*w)))
                .map(|w| (Rule::Depends, w.clone()))
        };
        match found {
            Some((rule, detail)) => {
                // An object written by a left-out record is incomplete.
                if let Some(t) = target
                    && !matches!(rule, Rule::Explain | Rule::Dialect)
                {
                    tainted.insert(t);
                }
                skips.push(Skip {
                    file: name.to_string(),
                    line,
                    rule,
                    detail,
                });
            }
            None => {
                // A kept CREATE defines the object afresh.
                if let Some(t) = &target
                    && words.first().is_some_and(|w| w == "create")
                {
                    tainted.remove(t);
                }
                kept += 1;
                if let Record::Statement { loc, .. } | Record::Query { loc, .. } = &record
                    && loc.file() == main
                {
                    let (conditions, connection) = match &record {
                        Record::Statement {
                            conditions,
                            connection,
                            ..
                        }
                        | Record::Query {
                            conditions,
                            connection,
                            ..
                        } => (conditions.len(), connection != &Connection::Default),
                        _ => (0, false),
                    };
                    let first =
                        (line as usize).saturating_sub(conditions + usize::from(connection));
                    let at = text.matches('\n').count() + 1;
                    if first > at {
                        text.push_str(&"\n".repeat(first - at));
                    }
                }
                write_record(&mut text, record);
            }
        }
    }
    (text, kept, skips)
}

/// Writes a statement or query record with its conditions and connection,
/// which `Record`'s `Display` leaves out. An expected error keeps only the
/// failure: Sluice words its errors its own way (with the position and a
/// hint), so DataFusion's message is not compared. A query without
/// `ORDER BY` and without a sort mode is compared as sorted rows: SQL
/// promises no order there, and DataFusion's expected order is its
/// in-memory tables' insertion order, while Sluice's tables are files
/// written in parallel.
fn write_record(text: &mut String, mut record: Record<DefaultColumnType>) {
    let (conditions, connection) = match &mut record {
        Record::Statement {
            conditions,
            connection,
            expected,
            ..
        } => {
            if let StatementExpect::Error(e) = expected {
                *e = ExpectedError::Empty;
            }
            (conditions.clone(), connection.clone())
        }
        Record::Query {
            conditions,
            connection,
            expected,
            sql,
            ..
        } => {
            match expected {
                QueryExpect::Error(e) => *e = ExpectedError::Empty,
                QueryExpect::Results {
                    sort_mode, results, ..
                } if sort_mode.is_none() && !has_order_by(sql) => {
                    // sqllogictest sorts the actual rows only; the expected
                    // ones are written sorted.
                    *sort_mode = Some(SortMode::RowSort);
                    results.sort();
                }
                QueryExpect::Results { .. } => {}
            }
            (conditions.clone(), connection.clone())
        }
        _ => (vec![], Connection::Default),
    };
    for c in conditions {
        let _ = match c {
            Condition::OnlyIf { label } => writeln!(text, "onlyif {label}"),
            Condition::SkipIf { label } => writeln!(text, "skipif {label}"),
        };
    }
    if let Connection::Named(name) = connection {
        let _ = writeln!(text, "connection {name}");
    }
    let _ = writeln!(text, "{record}");
}

/// What a CREATE TABLE without a connector would hold that Parquet cannot.
fn unstorable(words: &[String], lower: &str) -> Option<&'static str> {
    let creates = words.first().is_some_and(|w| w == "create")
        && words.iter().take(4).any(|w| w == "table")
        && !words.iter().any(|w| w == "external" || w == "with");
    if !creates {
        return None;
    }
    if words.iter().any(|w| w == "interval") {
        return Some("INTERVAL values");
    }
    let compact: String = lower.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.contains(",dictionary(") && compact.contains("'dictionary(") {
        return Some("a dictionary of dictionaries");
    }
    None
}

/// Whether `sql` says `ORDER BY` anywhere.
fn has_order_by(sql: &str) -> bool {
    words(sql)
        .windows(2)
        .any(|w| w[0] == "order" && w[1] == "by")
}

/// The first string literal naming a location outside the crate.
fn fixture(sql: &str) -> Option<String> {
    let mut rest = sql;
    while let Some(start) = rest.find('\'') {
        let after = &rest[start + 1..];
        let end = after.find('\'')?;
        let literal = &after[..end];
        if literal.starts_with("../") {
            return Some(literal.to_string());
        }
        rest = &after[end + 1..];
    }
    None
}

/// Lower-cased identifier-like words of `sql`, string literals left out.
fn words(sql: &str) -> Vec<String> {
    let mut out = vec![];
    let mut word = String::new();
    let mut in_string = false;
    for c in sql.chars() {
        if in_string {
            in_string = c != '\'';
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        in_string = c == '\'';
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// The object a statement creates or writes: `CREATE [OR REPLACE]
/// [EXTERNAL|TEMPORARY] TABLE|VIEW [IF NOT EXISTS] x`, `INSERT INTO|OVERWRITE
/// [TABLE] x`.
fn written_object(words: &[String]) -> Option<String> {
    let skip = |w: &String| {
        matches!(
            w.as_str(),
            "or" | "replace"
                | "external"
                | "temporary"
                | "temp"
                | "unbounded"
                | "if"
                | "not"
                | "exists"
                | "into"
                | "overwrite"
                | "table"
                | "view"
        )
    };
    match words.first()?.as_str() {
        "create" | "insert" => {
            let rest = &words[1..];
            let kind_ok =
                words[0] == "insert" || rest.iter().take(4).any(|w| w == "table" || w == "view");
            if !kind_ok {
                return None;
            }
            rest.iter().find(|w| !skip(w)).cloned()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> (String, usize, Vec<Skip>) {
        let records = sqllogictest::parse::<DefaultColumnType>(text).unwrap();
        filter("joins.slt", "<unknown>", records)
    }

    #[test]
    fn fixtures_and_what_depends_on_them_are_left_out() {
        let (text, kept, skips) = run("statement ok
CREATE EXTERNAL TABLE agg STORED AS CSV LOCATION '../../testing/data/csv/a.csv'

statement ok
CREATE TABLE t AS VALUES (1)

query I
SELECT count(*) FROM agg
----
100

statement ok
CREATE TABLE agg2 AS SELECT * FROM agg

query I
SELECT count(*) FROM agg2 JOIN t ON true
----
100

statement ok
CREATE OR REPLACE TABLE agg2 AS VALUES (2)

query I
SELECT * FROM agg2
----
2
");
        assert_eq!(kept, 3, "{text}");
        let rules: Vec<(u32, Rule, &str)> = skips
            .iter()
            .map(|s| (s.line, s.rule, s.detail.as_str()))
            .collect();
        assert_eq!(
            rules,
            vec![
                (1, Rule::Fixture, "../../testing/data/csv/a.csv"),
                (7, Rule::Depends, "agg"),
                (12, Rule::Depends, "agg"),
                (15, Rule::Depends, "agg2"),
            ]
        );
        // Kept records stay on their lines.
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[3], "statement ok", "{text}");
        assert_eq!(lines[4], "CREATE TABLE t AS VALUES (1)", "{text}");
        assert_eq!(lines[19], "statement ok", "{text}");
        assert_eq!(
            lines[20], "CREATE OR REPLACE TABLE agg2 AS VALUES (2)",
            "{text}"
        );
        assert!(!text.contains("testing/data"));
    }

    #[test]
    fn explain_and_harness_objects_are_left_out() {
        let (_, kept, skips) = run("query TT
EXPLAIN SELECT 1
----
logical_plan x

query I
SELECT * FROM table_with_many_types
----
1

query I
SELECT 1
----
1
");
        assert_eq!(kept, 1);
        assert_eq!(skips[0].rule, Rule::Explain);
        assert_eq!(skips[1].rule, Rule::Harness);
    }

    #[test]
    fn errors_keep_the_failure_not_the_message_and_conditions_stay() {
        let (text, _, _) = run("skipif sluice
query error DataFusion error: Error during planning: x
SELECT 1
");
        assert!(
            text.contains("skipif sluice\nquery error\nSELECT 1"),
            "{text}"
        );
    }

    #[test]
    fn queries_without_order_by_compare_sorted_rows() {
        let (text, _, _) = run("query I
SELECT a FROM t
----
2
1

query I
SELECT a FROM t ORDER BY a
----
1
2
");
        assert!(
            text.contains("query I rowsort\nSELECT a FROM t\n----\n1\n2\n"),
            "{text}"
        );
        assert!(
            text.contains("query I\nSELECT a FROM t ORDER BY a"),
            "{text}"
        );
    }

    #[test]
    fn records_under_another_dialect_are_left_out() {
        let (_, kept, skips) = run("statement ok
set datafusion.sql_parser.dialect = postgresql;

query R
select 2 ^ 3;
----
8

statement ok
set datafusion.sql_parser.dialect = generic;

query I
select 2 ^ 3;
----
1
");
        assert_eq!(kept, 2);
        let lines: Vec<u32> = skips.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![1, 4]);
        assert!(skips.iter().all(|s| s.rule == Rule::Dialect));
    }

    #[test]
    fn selection_is_read_between_markers() {
        let md = "x\n<!-- selection:begin -->\n- `a.slt` aggregates\n- b/c.slt\n<!-- selection:end -->\n- not.slt\n";
        assert_eq!(read_selection(md), vec!["a.slt", "b/c.slt"]);
        let replaced =
            replace_skips("a <!-- skips:begin --> old <!-- skips:end --> b", "new\n").unwrap();
        assert_eq!(
            replaced,
            "a <!-- skips:begin -->\nnew\n<!-- skips:end --> b"
        );
    }
}
