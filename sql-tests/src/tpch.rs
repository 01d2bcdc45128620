//! TPC-H for tests and benchmarks: the 22 queries, the 8 tables as Parquet,
//! and a comparison of result sets.
//!
//! [`generate_parquet`] writes the tables of one scale factor with
//! `tpchgen` (once: later calls find the `_COMPLETE` marker and return at
//! once), [`create_tables_sql`] registers them, [`QUERIES`] holds the
//! queries with the spec's validation parameters, and [`compare_results`]
//! checks one engine's answer against another's.
//!
//! ```ignore
//! let sf_dir = sluice_sql_tests::tpch::generate_parquet(data_dir, 0.01)?;
//! for ddl in sluice_sql_tests::tpch::create_tables_sql(&sf_dir) {
//!     ctx.sql(&ddl).await?.collect().await?;
//! }
//! for (name, sql) in sluice_sql_tests::tpch::QUERIES {
//!     let expected = reference.sql(sql).await?.collect().await?;
//!     let actual = engine.sql(sql).await?.collect().await?;
//!     sluice_sql_tests::tpch::compare_results(&expected, &actual)
//!         .map_err(|e| format!("{name}: {e}"))?;
//! }
//! ```

use std::cmp::Ordering;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::{io, thread};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// The 22 TPC-H queries as `(name, sql)`, `("q01", ...)` to `("q22", ...)`.
///
/// Each is one statement without a trailing semicolon, with the
/// substitution parameters of the TPC-H specification's query validation
/// (Q11's fraction is the SF 1 value, 0.0001). Q15's view is a CTE.
pub const QUERIES: [(&str, &str); 22] = [
    ("q01", include_str!("../tpch/q01.sql")),
    ("q02", include_str!("../tpch/q02.sql")),
    ("q03", include_str!("../tpch/q03.sql")),
    ("q04", include_str!("../tpch/q04.sql")),
    ("q05", include_str!("../tpch/q05.sql")),
    ("q06", include_str!("../tpch/q06.sql")),
    ("q07", include_str!("../tpch/q07.sql")),
    ("q08", include_str!("../tpch/q08.sql")),
    ("q09", include_str!("../tpch/q09.sql")),
    ("q10", include_str!("../tpch/q10.sql")),
    ("q11", include_str!("../tpch/q11.sql")),
    ("q12", include_str!("../tpch/q12.sql")),
    ("q13", include_str!("../tpch/q13.sql")),
    ("q14", include_str!("../tpch/q14.sql")),
    ("q15", include_str!("../tpch/q15.sql")),
    ("q16", include_str!("../tpch/q16.sql")),
    ("q17", include_str!("../tpch/q17.sql")),
    ("q18", include_str!("../tpch/q18.sql")),
    ("q19", include_str!("../tpch/q19.sql")),
    ("q20", include_str!("../tpch/q20.sql")),
    ("q21", include_str!("../tpch/q21.sql")),
    ("q22", include_str!("../tpch/q22.sql")),
];

/// The 8 TPC-H tables with the number of Parquet files each is written as.
pub const TABLES: [(&str, u32); 8] = [
    ("lineitem", 2),
    ("orders", 2),
    ("partsupp", 2),
    ("part", 2),
    ("customer", 2),
    ("supplier", 1),
    ("nation", 1),
    ("region", 1),
];

/// Name of the marker file written last into a complete scale-factor folder.
pub const COMPLETE_MARKER: &str = "_COMPLETE";

/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Rows per generated record batch.
const BATCH_ROWS: usize = 8 * 1024;

/// Relative tolerance of [`compare_results`] for floating-point values.
pub const FLOAT_TOLERANCE: f64 = 1e-9;

/// Most differences [`compare_results`] lists.
const MAX_REPORTED: usize = 5;

/// Why [`generate_parquet`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TpchError {
    /// The scale factor is not a finite number above zero.
    #[error("invalid TPC-H scale factor {0}: must be finite and greater than 0")]
    InvalidScaleFactor(f64),
    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "renaming", ...).
        action: &'static str,
        /// The file or folder it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The generator failed to produce a batch.
    #[error("generating TPC-H table {table}: {source}")]
    Generate {
        /// The table being generated.
        table: &'static str,
        /// The underlying error.
        #[source]
        source: ArrowError,
    },
    /// Writing a Parquet file failed.
    #[error("writing {}: {source}", path.display())]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: ParquetError,
    },
}

impl TpchError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// Generates the 8 TPC-H tables of `scale_factor` as Parquet under `dir`,
/// unless an earlier call already did, and returns the (absolute)
/// `<dir>/sf<scale_factor>` folder.
///
/// The layout is `<dir>/sf<scale_factor>/<table>/part-<n>.parquet`, with
/// `n` counting from 1: `lineitem`, `orders`, `partsupp`, `part` and
/// `customer` are written as 2 files each (the generators' parts 1 and 2
/// of 2), `supplier`, `nation` and `region` as 1 (see [`TABLES`]). Files
/// are zstd-compressed with row groups of 128Ki rows. `sf<scale_factor>`
/// uses Rust's `f64` formatting: `sf1`, `sf0.01`.
///
/// The tables are written into a fresh temporary folder next to the target,
/// ending with the [`COMPLETE_MARKER`] file, which is then renamed into
/// place; so concurrent calls (threads or processes) are safe, a folder with
/// the marker is always complete, and when the marker exists the call
/// returns at once. An interrupted generation leaves at most a
/// `.sf<scale_factor>.tmp*` folder behind, never an incomplete target.
pub fn generate_parquet(dir: &Path, scale_factor: f64) -> Result<PathBuf, TpchError> {
    if !scale_factor.is_finite() || scale_factor <= 0.0 {
        return Err(TpchError::InvalidScaleFactor(scale_factor));
    }
    let dir = std::path::absolute(dir).map_err(TpchError::io("resolving", dir))?;
    let name = format!("sf{scale_factor}");
    let target = dir.join(&name);
    if target.join(COMPLETE_MARKER).is_file() {
        return Ok(target);
    }
    fs::create_dir_all(&dir).map_err(TpchError::io("creating", &dir))?;

    // Removed on drop, so a failed generation cleans up after itself.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp"))
        .tempdir_in(&dir)
        .map_err(TpchError::io("creating a temporary folder in", &dir))?;
    write_tables(tmp.path(), scale_factor)?;
    let marker = tmp.path().join(COMPLETE_MARKER);
    fs::write(
        &marker,
        format!("generator=tpchgen 4\nscale_factor={scale_factor}\n"),
    )
    .map_err(TpchError::io("writing", &marker))?;

    // Two attempts: the second after moving a stale, marker-less target
    // (not made by this function, which only ever renames complete
    // folders into place) out of the way.
    for attempt in 0..2 {
        match fs::rename(tmp.path(), &target) {
            Ok(()) => {
                // The folder now lives at `target`: nothing to clean up.
                let _moved = tmp.keep();
                return Ok(target);
            }
            Err(_) if target.join(COMPLETE_MARKER).is_file() => {
                // Another caller finished first; `tmp` is removed on drop.
                return Ok(target);
            }
            Err(e) if attempt == 0 && target.exists() => {
                let stale = tempfile::Builder::new()
                    .prefix(&format!(".{name}.stale"))
                    .tempdir_in(&dir)
                    .map_err(TpchError::io("creating a temporary folder in", &dir))?;
                let aside = stale.path().join(&name);
                match fs::rename(&target, &aside) {
                    // Lost a race: another caller put its complete folder in
                    // place just now. Put it back (if nobody else did).
                    Ok(()) if aside.join(COMPLETE_MARKER).is_file() => {
                        let _ = fs::rename(&aside, &target);
                    }
                    Ok(()) => {}
                    // Another caller moved it away first.
                    Err(_) if !target.exists() => {}
                    Err(_) => {
                        return Err(TpchError::Io {
                            action: "replacing the incomplete folder",
                            path: target,
                            source: e,
                        });
                    }
                }
                // `stale` (with the old folder inside) is removed on drop.
            }
            Err(e) => {
                return Err(TpchError::Io {
                    action: "renaming the generated tables to",
                    path: target,
                    source: e,
                });
            }
        }
    }
    Err(TpchError::Io {
        action: "renaming the generated tables to",
        path: target,
        source: io::Error::other("the folder kept reappearing without its marker"),
    })
}

/// One Parquet file to write: part `part` of `parts` of `table`.
#[derive(Debug, Clone, Copy)]
struct Job {
    table: &'static str,
    part: u32,
    parts: u32,
}

/// Writes every table's files under `root`, on as many threads as there
/// are cores.
fn write_tables(root: &Path, scale_factor: f64) -> Result<(), TpchError> {
    let mut jobs = Vec::new();
    for (table, parts) in TABLES {
        let table_dir = root.join(table);
        fs::create_dir_all(&table_dir).map_err(TpchError::io("creating", &table_dir))?;
        jobs.extend((1..=parts).map(|part| Job { table, part, parts }));
    }
    let workers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let run = || -> Result<(), TpchError> {
        while !failed.load(AtomicOrdering::Relaxed) {
            let Some(job) = jobs.get(next.fetch_add(1, AtomicOrdering::Relaxed)) else {
                break;
            };
            if let Err(e) = write_job(root, scale_factor, *job) {
                failed.store(true, AtomicOrdering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    thread::scope(|scope| {
        let handles: Vec<_> = (0..workers).map(|_| scope.spawn(run)).collect();
        let mut result = Ok(());
        for handle in handles {
            let outcome = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    })
}

/// The batches of one part of one table.
fn batches(job: Job, scale_factor: f64) -> Box<dyn RecordBatchReader> {
    // Part counts are 1 or 2, so these conversions cannot truncate.
    let (part, parts) = (job.part as i32, job.parts as i32);
    match job.table {
        "lineitem" => Box::new(
            LineItemArrow::new(LineItemGenerator::new(scale_factor, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "orders" => Box::new(
            OrderArrow::new(OrderGenerator::new(scale_factor, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "partsupp" => Box::new(
            PartSuppArrow::new(PartSuppGenerator::new(scale_factor, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "part" => Box::new(
            PartArrow::new(PartGenerator::new(scale_factor, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "customer" => Box::new(
            CustomerArrow::new(CustomerGenerator::new(scale_factor, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "supplier" => Box::new(
            SupplierArrow::new(SupplierGenerator::new(scale_factor, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "nation" => Box::new(
            NationArrow::new(NationGenerator::new(scale_factor, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        _ => Box::new(
            RegionArrow::new(RegionGenerator::new(scale_factor, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
    }
}

/// Writes `<root>/<table>/part-<part>.parquet`.
fn write_job(root: &Path, scale_factor: f64, job: Job) -> Result<(), TpchError> {
    let path = root
        .join(job.table)
        .join(format!("part-{}.parquet", job.part));
    let parquet_err = |source| TpchError::Parquet {
        path: path.clone(),
        source,
    };
    let reader = batches(job, scale_factor);
    let file = File::create(&path).map_err(TpchError::io("creating", &path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer =
        ArrowWriter::try_new(file, reader.schema(), Some(props)).map_err(parquet_err)?;
    for batch in reader {
        let batch = batch.map_err(|source| TpchError::Generate {
            table: job.table,
            source,
        })?;
        writer.write(&batch).map_err(parquet_err)?;
    }
    writer.close().map_err(parquet_err)?;
    Ok(())
}

/// One `CREATE EXTERNAL TABLE <t> STORED AS PARQUET LOCATION '<sf_dir>/<t>/'`
/// statement per TPC-H table, for the folder [`generate_parquet`] returned.
///
/// The location is absolute (resolved against the current directory if
/// `sf_dir` is relative) and ends in `/`, so the engine reads every file of
/// the folder.
pub fn create_tables_sql(sf_dir: &Path) -> Vec<String> {
    let sf_dir = std::path::absolute(sf_dir).unwrap_or_else(|_| sf_dir.to_path_buf());
    TABLES
        .iter()
        .map(|(table, _)| {
            let location = sf_dir.join(table).to_string_lossy().replace('\'', "''");
            format!("CREATE EXTERNAL TABLE {table} STORED AS PARQUET LOCATION '{location}/'")
        })
        .collect()
}

/// Total number of rows in `batches`.
pub fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// One value of a result row.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    /// Any non-float value (or NULL), as arrow displays it.
    Text(String),
    /// A `Float32`/`Float64` value; `None` is NULL.
    Float(Option<f64>),
}

impl Cell {
    /// The text rows are sorted by: floats rounded to 9 significant digits,
    /// so that values equal within the tolerance (usually) sort alike.
    fn sort_key(&self) -> String {
        match self {
            Cell::Text(text) => text.clone(),
            Cell::Float(None) => "NULL".to_owned(),
            Cell::Float(Some(v)) if v.is_finite() => format!("{v:.8e}"),
            Cell::Float(Some(v)) => v.to_string(),
        }
    }

    fn matches(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Float(Some(a)), Cell::Float(Some(b))) => floats_match(*a, *b),
            _ => self == other,
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Text(text) => f.write_str(text),
            Cell::Float(None) => f.write_str("NULL"),
            Cell::Float(Some(v)) => write!(f, "{v}"),
        }
    }
}

/// Equal within the relative [`FLOAT_TOLERANCE`] (or both NaN).
fn floats_match(a: f64, b: f64) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    (a - b).abs() <= FLOAT_TOLERANCE * a.abs().max(b.abs())
}

/// One result row with its sort key.
#[derive(Debug)]
struct Row {
    key: Vec<String>,
    cells: Vec<Cell>,
}

impl Row {
    fn matches(&self, other: &Row) -> bool {
        self.cells.len() == other.cells.len()
            && self
                .cells
                .iter()
                .zip(&other.cells)
                .all(|(a, b)| a.matches(b))
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[")?;
        for (i, cell) in self.cells.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{cell}")?;
        }
        f.write_str("]")
    }
}

/// The rows of `batches`, sorted.
fn sorted_rows(batches: &[RecordBatch], side: &str) -> Result<Vec<Row>, String> {
    let options = FormatOptions::default()
        .with_null("NULL")
        .with_display_error(true);
    let mut rows = Vec::with_capacity(row_count(batches));
    for batch in batches {
        let mut columns: Vec<Vec<Cell>> = Vec::with_capacity(batch.num_columns());
        for (array, field) in batch.columns().iter().zip(batch.schema().fields()) {
            let column = match array.data_type() {
                DataType::Float64 => array
                    .as_primitive::<Float64Type>()
                    .iter()
                    .map(Cell::Float)
                    .collect(),
                DataType::Float32 => array
                    .as_primitive::<Float32Type>()
                    .iter()
                    .map(|v| Cell::Float(v.map(f64::from)))
                    .collect(),
                _ => {
                    let formatter =
                        ArrayFormatter::try_new(array.as_ref(), &options).map_err(|e| {
                            format!(
                                "cannot format {side} column {:?} ({}): {e}",
                                field.name(),
                                array.data_type()
                            )
                        })?;
                    (0..array.len())
                        .map(|i| {
                            formatter
                                .value(i)
                                .try_to_string()
                                .map(Cell::Text)
                                .map_err(|e| {
                                    format!("cannot format {side} column {:?}: {e}", field.name())
                                })
                        })
                        .collect::<Result<_, _>>()?
                }
            };
            columns.push(column);
        }
        for i in 0..batch.num_rows() {
            let cells: Vec<Cell> = columns.iter().map(|column| column[i].clone()).collect();
            let key = cells.iter().map(Cell::sort_key).collect();
            rows.push(Row { key, cells });
        }
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}

/// Compares two result sets as multisets of rows.
///
/// Both must have the same number of columns (when both have a batch) and
/// of rows. Rows are rendered cell by cell with arrow's display format
/// (`NULL` for nulls), sorted, and compared in order; `Float32`/`Float64`
/// cells match within the relative tolerance [`FLOAT_TOLERANCE`] (1e-9),
/// everything else must be equal as text. Column names and types are not
/// compared.
///
/// The error lists up to 5 differing rows with their index in sorted order
/// and both versions; when the row counts differ, it lists up to 5 rows
/// found on one side only.
pub fn compare_results(expected: &[RecordBatch], actual: &[RecordBatch]) -> Result<(), String> {
    if let (Some(e), Some(a)) = (expected.first(), actual.first())
        && e.num_columns() != a.num_columns()
    {
        return Err(format!(
            "expected {} columns, got {}",
            e.num_columns(),
            a.num_columns()
        ));
    }
    let expected = sorted_rows(expected, "expected")?;
    let actual = sorted_rows(actual, "actual")?;

    if expected.len() != actual.len() {
        return Err(count_mismatch(&expected, &actual));
    }
    let differing: Vec<usize> = (0..expected.len())
        .filter(|&i| !expected[i].matches(&actual[i]))
        .collect();
    if differing.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "{} of {} rows differ (row numbers count from 0 in sorted order):",
        differing.len(),
        expected.len()
    );
    for &i in differing.iter().take(MAX_REPORTED) {
        message.push_str(&format!(
            "\n  row {i}:\n    expected {}\n    actual   {}",
            expected[i], actual[i]
        ));
    }
    if differing.len() > MAX_REPORTED {
        message.push_str(&format!(
            "\n  ... and {} more",
            differing.len() - MAX_REPORTED
        ));
    }
    Err(message)
}

/// The message for result sets of different sizes: the counts and the
/// first rows found on one side only (a merge of the sorted rows).
fn count_mismatch(expected: &[Row], actual: &[Row]) -> String {
    let mut message = format!("expected {} rows, got {}", expected.len(), actual.len());
    let (mut e, mut a, mut reported) = (0, 0, 0);
    while reported < MAX_REPORTED && (e < expected.len() || a < actual.len()) {
        let order = match (expected.get(e), actual.get(a)) {
            (Some(x), Some(y)) if x.matches(y) => Ordering::Equal,
            (Some(x), Some(y)) => x.key.cmp(&y.key).then(Ordering::Less),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Equal => {
                e += 1;
                a += 1;
                continue;
            }
            Ordering::Less => {
                message.push_str(&format!("\n  missing    {}", expected[e]));
                e += 1;
            }
            Ordering::Greater => {
                message.push_str(&format!("\n  unexpected {}", actual[a]));
                a += 1;
            }
        }
        reported += 1;
    }
    message
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn parquet_rows(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let file = File::open(entry.unwrap().path()).unwrap();
                let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
                usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap()
            })
            .sum()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn tpch_generate_parquet_sf001() {
        let tmp = tempfile::TempDir::new().unwrap();
        let sf_dir = generate_parquet(tmp.path(), 0.01).unwrap();
        assert_eq!(sf_dir, tmp.path().join("sf0.01"));
        assert!(sf_dir.join(COMPLETE_MARKER).is_file());
        assert_eq!(parquet_rows(&sf_dir.join("nation")), 25);
        assert_eq!(parquet_rows(&sf_dir.join("region")), 5);
        assert_eq!(parquet_rows(&sf_dir.join("supplier")), 100);
        assert_eq!(parquet_rows(&sf_dir.join("customer")), 1_500);
        assert_eq!(parquet_rows(&sf_dir.join("orders")), 15_000);
        assert_eq!(
            files(&sf_dir.join("lineitem")),
            ["part-1.parquet", "part-2.parquet"]
        );
        assert_eq!(files(&sf_dir.join("region")), ["part-1.parquet"]);
        // Only the target is left behind, no temporary folder.
        assert_eq!(files(tmp.path()), ["sf0.01"]);

        // A second call finds the marker and leaves the files alone.
        let modified = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
        let part = sf_dir.join("lineitem/part-1.parquet");
        let before = modified(&part);
        assert_eq!(generate_parquet(tmp.path(), 0.01).unwrap(), sf_dir);
        assert_eq!(modified(&part), before);
    }

    #[test]
    fn tpch_generate_parquet_concurrent_and_stale() {
        let tmp = tempfile::TempDir::new().unwrap();
        // A leftover folder without the marker is replaced.
        fs::create_dir_all(tmp.path().join("sf0.001/junk")).unwrap();
        let dirs: Vec<PathBuf> = thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|_| scope.spawn(|| generate_parquet(tmp.path(), 0.001).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let sf_dir = tmp.path().join("sf0.001");
        assert!(dirs.iter().all(|d| *d == sf_dir));
        assert!(sf_dir.join(COMPLETE_MARKER).is_file());
        assert!(!sf_dir.join("junk").exists());
        assert_eq!(parquet_rows(&sf_dir.join("nation")), 25);
        assert_eq!(files(tmp.path()), ["sf0.001"]);
    }

    #[test]
    fn tpch_generate_parquet_rejects_bad_scale_factor() {
        let tmp = tempfile::TempDir::new().unwrap();
        for sf in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                generate_parquet(tmp.path(), sf),
                Err(TpchError::InvalidScaleFactor(_))
            ));
        }
    }

    #[test]
    fn tpch_create_tables_sql() {
        let statements = create_tables_sql(Path::new("/data/sf1"));
        assert_eq!(statements.len(), 8);
        assert_eq!(
            statements[0],
            "CREATE EXTERNAL TABLE lineitem STORED AS PARQUET LOCATION '/data/sf1/lineitem/'"
        );
        assert!(statements.iter().any(|s| s.contains(" region ")));
    }

    #[test]
    fn tpch_queries_are_single_statements() {
        for (i, (name, sql)) in QUERIES.iter().enumerate() {
            assert_eq!(*name, format!("q{:02}", i + 1));
            let body = sql.trim();
            assert!(
                body.starts_with("select") || body.starts_with("with"),
                "{name}"
            );
            assert!(!body.contains(';'), "{name} has a semicolon");
        }
        let limits = [
            ("q02", 100),
            ("q03", 10),
            ("q10", 20),
            ("q18", 100),
            ("q21", 100),
        ];
        for (name, limit) in limits {
            let sql = QUERIES.iter().find(|(n, _)| *n == name).unwrap().1;
            assert!(
                sql.trim_end().ends_with(&format!("limit {limit}")),
                "{name}"
            );
        }
    }

    fn batch(ids: &[i64], names: &[Option<&str>], values: &[f64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("value", DataType::Float64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(names.to_vec())),
            Arc::new(Float64Array::from(values.to_vec())),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    #[test]
    fn tpch_compare_results_accepts_reordered_rows() {
        let expected = [batch(
            &[1, 2, 3],
            &[Some("a"), None, Some("c")],
            &[0.5, 1e6, -3.0],
        )];
        let actual = [
            batch(&[3], &[Some("c")], &[-3.0]),
            batch(&[2, 1], &[None, Some("a")], &[1e6 * (1.0 + 1e-12), 0.5]),
        ];
        assert_eq!(compare_results(&expected, &actual), Ok(()));
        assert_eq!(compare_results(&[], &[]), Ok(()));
        assert_eq!(row_count(&actual), 3);
    }

    #[test]
    fn tpch_compare_results_detects_changes() {
        let expected = [batch(
            &[1, 2, 3],
            &[Some("a"), Some("b"), Some("c")],
            &[0.5, 2.0, 3.0],
        )];

        let changed_text = [batch(
            &[1, 2, 3],
            &[Some("a"), Some("x"), Some("c")],
            &[0.5, 2.0, 3.0],
        )];
        let err = compare_results(&expected, &changed_text).unwrap_err();
        assert!(err.contains("1 of 3 rows differ"), "{err}");
        assert!(err.contains("expected [2, b, 2]"), "{err}");
        assert!(err.contains("actual   [2, x, 2]"), "{err}");

        let changed_float = [batch(
            &[1, 2, 3],
            &[Some("a"), Some("b"), Some("c")],
            &[0.5, 2.0 + 1e-6, 3.0],
        )];
        let err = compare_results(&expected, &changed_float).unwrap_err();
        assert!(err.contains("row 1"), "{err}");

        let null_name = [batch(
            &[1, 2, 3],
            &[Some("a"), None, Some("c")],
            &[0.5, 2.0, 3.0],
        )];
        assert!(compare_results(&expected, &null_name).is_err());

        let fewer = [batch(&[1, 3], &[Some("a"), Some("c")], &[0.5, 3.0])];
        let err = compare_results(&expected, &fewer).unwrap_err();
        assert!(err.starts_with("expected 3 rows, got 2"), "{err}");
        assert!(err.contains("missing    [2, b, 2]"), "{err}");

        let narrower = [RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef],
        )
        .unwrap()];
        let err = compare_results(&expected, &narrower).unwrap_err();
        assert_eq!(err, "expected 3 columns, got 1");
    }
}
