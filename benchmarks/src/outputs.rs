//! What a peer wrote: Parquet files summarised from their footers, and the
//! checks that say the peer did the whole job with the pinned settings.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};

/// The Parquet output of one run.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutputSummary {
    /// Data files (`*.parquet`, outside `_*` and `.*` entries).
    pub(crate) files: usize,
    /// Rows over all files.
    pub(crate) rows: u64,
    /// Size of the files.
    pub(crate) bytes: u64,
    /// Row groups over all files.
    pub(crate) row_groups: usize,
    /// Rows of the largest row group.
    pub(crate) max_row_group_rows: u64,
    /// Column names of the first file.
    pub(crate) columns: Vec<String>,
    /// `name:physical type` of the first file's columns, to compare peers.
    pub(crate) physical_schema: Vec<String>,
    /// Codecs of the column chunks that are not zstd, as `file: codec`.
    pub(crate) non_zstd_chunks: BTreeSet<String>,
    /// Files whose column names differ from the first file's.
    pub(crate) mismatched_files: Vec<PathBuf>,
}

/// Reads the footer of every data file under `dir`.
pub(crate) fn inspect(dir: &Path) -> Result<OutputSummary> {
    let mut files = vec![];
    collect_parquet_files(dir, &mut files)?;
    files.sort();
    let mut summary = OutputSummary::default();
    for path in files {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let bytes = file.metadata()?.len();
        let reader = SerializedFileReader::new(file)
            .with_context(|| format!("reading the Parquet footer of {}", path.display()))?;
        let meta = reader.metadata();
        let schema = meta.file_metadata().schema_descr();
        let columns: Vec<String> = schema
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        if summary.files == 0 {
            summary.physical_schema = schema
                .columns()
                .iter()
                .map(|c| format!("{}:{}", c.name(), c.physical_type()))
                .collect();
            summary.columns = columns;
        } else if columns != summary.columns {
            summary.mismatched_files.push(path.clone());
        }
        summary.files += 1;
        summary.bytes += bytes;
        summary.rows += u64::try_from(meta.file_metadata().num_rows()).unwrap_or(0);
        for group in meta.row_groups() {
            summary.row_groups += 1;
            let rows = u64::try_from(group.num_rows()).unwrap_or(0);
            summary.max_row_group_rows = summary.max_row_group_rows.max(rows);
            for chunk in group.columns() {
                if !matches!(chunk.compression(), Compression::ZSTD(_)) {
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    summary
                        .non_zstd_chunks
                        .insert(format!("{name}: {}", chunk.compression()));
                }
            }
        }
    }
    Ok(summary)
}

/// What J1 requires of every peer's output.
#[derive(Debug, Clone)]
pub(crate) struct Expectations<'a> {
    /// Rows the filter keeps.
    pub(crate) rows: u64,
    /// Output columns, in order.
    pub(crate) columns: &'a [&'a str],
    /// Upper bound on the rows of a row group.
    pub(crate) max_row_group_rows: u64,
}

/// Returns what is wrong with `summary`; empty when the output is right.
pub(crate) fn problems(summary: &OutputSummary, expected: &Expectations<'_>) -> Vec<String> {
    let mut problems = vec![];
    if summary.files == 0 {
        problems.push("wrote no Parquet file".to_string());
        return problems;
    }
    if summary.rows != expected.rows {
        problems.push(format!(
            "wrote {} rows, expected {}",
            summary.rows, expected.rows
        ));
    }
    if summary.columns != expected.columns {
        problems.push(format!(
            "wrote columns [{}], expected [{}]",
            summary.columns.join(", "),
            expected.columns.join(", ")
        ));
    }
    if !summary.mismatched_files.is_empty() {
        problems.push(format!(
            "{} files have other columns than the first",
            summary.mismatched_files.len()
        ));
    }
    if !summary.non_zstd_chunks.is_empty() {
        let codecs: Vec<&str> = summary.non_zstd_chunks.iter().map(String::as_str).collect();
        problems.push(format!(
            "column chunks not zstd compressed: {}",
            codecs.join("; ")
        ));
    }
    if summary.max_row_group_rows > expected.max_row_group_rows {
        problems.push(format!(
            "a row group has {} rows, more than the pinned {}",
            summary.max_row_group_rows, expected.max_row_group_rows
        ));
    }
    problems
}

/// Adds the `*.parquet` files under `dir` to `out`, skipping entries whose
/// names start with `_` or `.` (Sluice's `_sluice/`, `_SUCCESS`, hidden
/// temporaries).
fn collect_parquet_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('_') || name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_parquet_files(&path, out)?;
        } else if name.ends_with(".parquet") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::ZstdLevel;
    use parquet::file::properties::WriterProperties;

    use super::*;

    fn write(path: &Path, rows: i64, compression: Compression) {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(10))
            .build();
        let mut writer =
            ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn summarises_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let zstd = Compression::ZSTD(ZstdLevel::try_new(3).unwrap());
        write(&dir.path().join("part-0.parquet"), 25, zstd);
        fs::create_dir(dir.path().join("sub")).unwrap();
        write(&dir.path().join("sub/part-1.parquet"), 5, zstd);
        // Skipped: Sluice's metadata and hidden files.
        fs::create_dir(dir.path().join("_sluice")).unwrap();
        write(&dir.path().join("_sluice/staged.parquet"), 7, zstd);
        write(&dir.path().join(".tmp.parquet"), 7, zstd);

        let summary = inspect(dir.path()).unwrap();
        assert_eq!((summary.files, summary.rows), (2, 30));
        assert_eq!((summary.row_groups, summary.max_row_group_rows), (4, 10));
        assert_eq!(summary.physical_schema, ["a:INT64"]);

        let mut expected = Expectations {
            rows: 30,
            columns: &["a"],
            max_row_group_rows: 10,
        };
        assert!(problems(&summary, &expected).is_empty());
        expected.rows = 31;
        expected.max_row_group_rows = 5;
        let found = problems(&summary, &expected);
        assert_eq!(found.len(), 2, "{found:?}");

        write(&dir.path().join("part-2.parquet"), 1, Compression::SNAPPY);
        let summary = inspect(dir.path()).unwrap();
        expected.rows = 31;
        expected.max_row_group_rows = 10;
        let found = problems(&summary, &expected);
        assert!(found[0].contains("not zstd"), "{found:?}");
    }
}
