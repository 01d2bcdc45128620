//! File formats and their options, shared by reading and writing.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{FieldRef, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::config::{ConfigFileType, TableOptions as DfTableOptions};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;

use crate::error::{ConnectorError, Result};
use crate::options::TableOptions;

/// The file formats Sluice reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormatKind {
    /// Apache Parquet.
    Parquet,
    /// Comma- (or otherwise) separated values.
    Csv,
    /// Newline-delimited JSON.
    Json,
}

impl FileFormatKind {
    /// Parses a format name (`STORED AS` or `'format'`).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "parquet" => Ok(Self::Parquet),
            "csv" => Ok(Self::Csv),
            "json" | "ndjson" => Ok(Self::Json),
            other => Err(ConnectorError::InvalidOption {
                key: "format".to_string(),
                reason: format!("unknown format '{other}'; use 'parquet', 'csv' or 'json'"),
            }),
        }
    }

    /// The canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }

    /// File extension written by sinks.
    pub fn extension(&self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }

    fn config_type(&self) -> ConfigFileType {
        match self {
            Self::Parquet => ConfigFileType::PARQUET,
            Self::Csv => ConfigFileType::CSV,
            Self::Json => ConfigFileType::JSON,
        }
    }
}

/// Flink-style format option names and the DataFusion names they map to.
const FORMAT_ALIASES: &[(&str, &str)] = &[
    ("csv.field-delimiter", "format.delimiter"),
    ("csv.quote-character", "format.quote"),
    ("csv.null-literal", "format.null_value"),
    ("csv.include-header", "format.has_header"),
    ("parquet.compression", "format.compression"),
];

/// Resolved configuration of a file table: format and format options.
#[derive(Debug, Clone)]
pub struct FileTableConfig {
    /// The format.
    pub kind: FileFormatKind,
    /// DataFusion's options for the format (`format.*` keys).
    pub df_options: DfTableOptions,
    /// The DataFusion file format, configured.
    pub format: Arc<dyn FileFormat>,
    /// Up to this many bad rows are skipped (and reported) when reading.
    pub max_bad_records: usize,
    /// The declared options this configuration was built from (secrets
    /// unresolved), so that another process can build it again.
    pub options: TableOptions,
    /// How every file is sorted (`'sort-order'`, DataFusion's `WITH ORDER`).
    pub sort_order: Vec<SortColumn>,
}

/// One column of a declared file sort order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortColumn {
    /// The column.
    pub name: String,
    /// `DESC` when false.
    pub ascending: bool,
    /// `NULLS FIRST`; the default is `NULLS FIRST` for `DESC`, `NULLS LAST`
    /// for `ASC`, as in DataFusion.
    pub nulls_first: bool,
}

/// Parses `'sort-order'`: `col [ASC|DESC] [NULLS FIRST|NULLS LAST], ...`,
/// with optionally double-quoted column names.
pub(crate) fn parse_sort_order(text: &str) -> Result<Vec<SortColumn>> {
    let bad = |reason: String| ConnectorError::InvalidOption {
        key: "sort-order".into(),
        reason,
    };
    let mut out = vec![];
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut words = item.split_whitespace();
        let name = words
            .next()
            .ok_or_else(|| bad(format!("'{item}' names no column")))?
            .trim_matches('"')
            .to_string();
        let rest: Vec<String> = words.map(str::to_ascii_uppercase).collect();
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let (ascending, nulls) = match rest.as_slice() {
            [] | ["ASC"] => (true, None),
            ["DESC"] => (false, None),
            ["NULLS", n] => (true, Some(*n)),
            ["ASC", "NULLS", n] => (true, Some(*n)),
            ["DESC", "NULLS", n] => (false, Some(*n)),
            _ => {
                return Err(bad(format!(
                    "'{item}' is not 'column [ASC|DESC] [NULLS FIRST|NULLS LAST]'"
                )));
            }
        };
        let nulls_first = match nulls {
            None => !ascending,
            Some("FIRST") => true,
            Some("LAST") => false,
            Some(other) => {
                return Err(bad(format!("NULLS {other}: use NULLS FIRST or NULLS LAST")));
            }
        };
        out.push(SortColumn {
            name,
            ascending,
            nulls_first,
        });
    }
    Ok(out)
}

impl FileTableConfig {
    /// Builds the format from the table's `format.*` options, validating
    /// every key against DataFusion's options for that format.
    pub fn new(kind: FileFormatKind, options: &TableOptions, state: &dyn Session) -> Result<Self> {
        let mut df = state.default_table_options();
        df.set_config_format(kind.config_type());
        // CSV files written by Sluice carry a header; read them back the same way.
        if kind == FileFormatKind::Csv && options.get("format.has_header").is_none() {
            df.set("format.has_header", "true")?;
        }
        let mut format_opts: HashMap<String, String> = HashMap::new();
        for (key, _) in options.iter() {
            let canonical = FORMAT_ALIASES
                .iter()
                .find(|(alias, _)| alias == key)
                .map(|(_, c)| *c)
                .unwrap_or(key.as_str());
            if canonical.starts_with("format.") {
                let value = options.literal(key)?.unwrap_or_default();
                format_opts.insert(canonical.to_string(), value.to_string());
            }
        }
        for (k, v) in &format_opts {
            if let Err(e) = df.set(k, v) {
                let valid = valid_format_keys(kind, state);
                let msg = e.strip_backtrace();
                return Err(
                    if msg.contains("not found") || msg.contains("Could not find") {
                        ConnectorError::UnknownOption {
                            connector: format!("filesystem ({})", kind.name()),
                            key: k.clone(),
                            valid,
                        }
                    } else {
                        ConnectorError::InvalidOption {
                            key: k.clone(),
                            reason: msg,
                        }
                    },
                );
            }
        }
        let format: Arc<dyn FileFormat> = match kind {
            FileFormatKind::Parquet => {
                Arc::new(ParquetFormat::default().with_options(df.parquet.clone()))
            }
            FileFormatKind::Csv => Arc::new(CsvFormat::default().with_options(df.csv.clone())),
            FileFormatKind::Json => Arc::new(JsonFormat::default().with_options(df.json.clone())),
        };
        let max_bad_records = match options.literal("error-handling.max-bad-records")? {
            None => 0,
            Some(v) => v.parse().map_err(|_| ConnectorError::InvalidOption {
                key: "error-handling.max-bad-records".to_string(),
                reason: format!("'{v}' is not a non-negative integer"),
            })?,
        };
        if max_bad_records > 0 && kind != FileFormatKind::Csv {
            return Err(ConnectorError::InvalidOption {
                key: "error-handling.max-bad-records".to_string(),
                reason: "bad-record skipping is supported for csv tables only".to_string(),
            });
        }
        let sort_order = match options.literal("sort-order")? {
            Some(text) => parse_sort_order(text)?,
            None => vec![],
        };
        Ok(Self {
            kind,
            df_options: df,
            format,
            max_bad_records,
            options: options.clone(),
            sort_order,
        })
    }

    /// Builds the DataFusion file source for `file_schema` plus partition columns.
    pub fn file_source(
        &self,
        file_schema: SchemaRef,
        partition_cols: Vec<FieldRef>,
    ) -> Arc<dyn datafusion::datasource::physical_plan::FileSource> {
        let table_schema = datafusion::datasource::table_schema::TableSchema::builder(file_schema)
            .with_table_partition_cols(partition_cols)
            .build();
        self.format.file_source(table_schema)
    }
}

/// The keys DataFusion accepts for `kind`, plus Sluice's aliases.
fn valid_format_keys(kind: FileFormatKind, state: &dyn Session) -> String {
    let mut df = state.default_table_options();
    df.set_config_format(kind.config_type());
    let prefix = match kind {
        FileFormatKind::Parquet => "parquet.",
        FileFormatKind::Csv => "csv.",
        FileFormatKind::Json => "json.",
    };
    let mut keys: Vec<String> = df
        .entries()
        .into_iter()
        .filter_map(|e| {
            let k = e
                .key
                .strip_prefix("format.")
                .or(e.key.strip_prefix(prefix))?;
            (!k.contains("::") && !k.contains("column_")).then(|| format!("format.{k}"))
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys.join(", ")
}
