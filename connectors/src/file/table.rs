//! Reading a file table: the files the newest manifest lists (or, without a
//! manifest, the directory listing), as a DataFusion scan.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DataFusionError, ScalarValue, TableReference};
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::listing::helpers::{expr_applicable_for_cols, filter_partitioned_file};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::execution::cache::SchemaFingerprint;
use datafusion::execution::cache::TableScopedPath;
use datafusion::execution::cache::cache_manager::CachedFileMetadata;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion_datasource::compute_all_files_statistics;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStoreExt};

use super::format::{FileFormatKind, FileTableConfig};
use super::layout;
use super::manifest::{self, ManifestFile};
use super::sink::FileSink;
use crate::error::{ConnectorError, Result};
use crate::sink::{Sink, WriteMode};
use crate::store::Location;

/// Files read to infer a schema when the columns are not declared.
const SCHEMA_INFERENCE_FILES: usize = 16;

/// A table of parquet, csv or json files on an object store.
#[derive(Debug)]
pub struct FileTable {
    name: String,
    loc: Location,
    config: FileTableConfig,
    file_schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
    schema: SchemaRef,
    /// The declared primary key and unique sets (`NOT ENFORCED`: the writer
    /// vouches for them), which let the planner use their functional
    /// dependencies.
    constraints: Option<datafusion::common::Constraints>,
}

impl FileTable {
    /// Declares the table's primary key and unique column sets.
    pub fn with_keys(mut self, primary_key: &[String], unique: &[Vec<String>]) -> Result<Self> {
        let indices = |columns: &[String]| {
            columns
                .iter()
                .map(|c| {
                    self.schema
                        .index_of(c)
                        .map_err(|_| ConnectorError::InvalidOption {
                            key: "PRIMARY KEY / UNIQUE".into(),
                            reason: format!("column '{c}' is not a column of the table"),
                        })
                })
                .collect::<Result<Vec<_>>>()
        };
        let mut constraints = vec![];
        if !primary_key.is_empty() {
            constraints.push(datafusion::common::Constraint::PrimaryKey(indices(
                primary_key,
            )?));
        }
        for set in unique {
            constraints.push(datafusion::common::Constraint::Unique(indices(set)?));
        }
        if !constraints.is_empty() {
            self.constraints = Some(datafusion::common::Constraints::new_unverified(constraints));
        }
        Ok(self)
    }

    /// Opens the table. Without declared columns, the schema is inferred from
    /// its files; partition columns are then strings.
    pub async fn try_new(
        name: String,
        loc: Location,
        config: FileTableConfig,
        declared: Option<SchemaRef>,
        mut partition_cols: Vec<String>,
        state: &dyn Session,
    ) -> Result<Self> {
        if !loc.is_dir && !partition_cols.is_empty() {
            return Err(ConnectorError::InvalidLocation {
                location: loc.original.clone(),
                reason: "a partitioned table needs a directory location (ending in '/')".into(),
            });
        }
        let (file_schema, partition_fields) = match declared {
            Some(schema) => {
                let mut partition_fields = vec![];
                for p in &partition_cols {
                    let field =
                        schema
                            .field_with_name(p)
                            .map_err(|_| ConnectorError::InvalidOption {
                                key: "partitioned by".into(),
                                reason: format!("partition column '{p}' is not a declared column"),
                            })?;
                    partition_fields.push(Arc::new(field.clone()));
                }
                let data: Vec<Field> = schema
                    .fields()
                    .iter()
                    .filter(|f| !partition_cols.contains(f.name()))
                    .map(|f| f.as_ref().clone())
                    .collect();
                (Arc::new(Schema::new(data)), partition_fields)
            }
            None => {
                let (_, files) = live_files(&loc).await?;
                if files.is_empty() {
                    return Err(ConnectorError::SchemaMismatch {
                        target: format!("{name} ({})", loc.url),
                        reason: "no data files to infer the schema from; declare the columns"
                            .to_string(),
                    });
                }
                // Hive-style directories (`part=1/...`) are partition
                // columns when none are declared, as in DataFusion
                // (`listing_table_factory_infer_partitions`).
                if partition_cols.is_empty()
                    && loc.is_dir
                    && state
                        .config_options()
                        .execution
                        .listing_table_factory_infer_partitions
                {
                    partition_cols = hive_partitions(&files);
                }
                let metas: Vec<ObjectMeta> = files
                    .iter()
                    .take(SCHEMA_INFERENCE_FILES)
                    .map(|f| object_meta(&loc, f))
                    .collect();
                let inferred = config
                    .format
                    .infer_schema(state, &loc.store, &metas)
                    .await
                    .map_err(|e| ConnectorError::SchemaMismatch {
                        target: format!("{name} ({})", loc.url),
                        reason: format!("cannot infer the schema: {}", e.strip_backtrace()),
                    })?;
                let data: Vec<Field> = inferred
                    .fields()
                    .iter()
                    .filter(|f| !partition_cols.contains(f.name()))
                    .map(|f| f.as_ref().clone())
                    .collect();
                let partition_fields = partition_cols
                    .iter()
                    .map(|p| Arc::new(Field::new(p, DataType::Utf8, true)))
                    .collect();
                (Arc::new(Schema::new(data)), partition_fields)
            }
        };
        let mut fields: Vec<FieldRef> = file_schema.fields().iter().cloned().collect();
        fields.extend(partition_fields.iter().cloned());
        let schema = Arc::new(Schema::new(fields));
        for c in &config.sort_order {
            if schema.index_of(&c.name).is_err() {
                return Err(ConnectorError::InvalidOption {
                    key: "sort-order".into(),
                    reason: format!(
                        "'{}' is not a column of the table (columns: {})",
                        c.name,
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        Ok(Self {
            name,
            loc,
            config,
            file_schema,
            partition_fields,
            schema,
            constraints: None,
        })
    }

    /// The declared sort order of every file (`'sort-order'`), over the
    /// table's schema; DataFusion keeps it only for file groups whose files
    /// do not overlap.
    fn output_ordering(&self) -> Vec<datafusion::physical_expr::LexOrdering> {
        let exprs = self.config.sort_order.iter().filter_map(|c| {
            let index = self.schema.index_of(&c.name).ok()?;
            Some(datafusion::physical_expr::PhysicalSortExpr::new(
                Arc::new(datafusion::physical_expr::expressions::Column::new(
                    &c.name, index,
                )),
                arrow::compute::SortOptions {
                    descending: !c.ascending,
                    nulls_first: c.nulls_first,
                },
            ))
        });
        datafusion::physical_expr::LexOrdering::new(exprs)
            .into_iter()
            .collect()
    }

    /// The table's location.
    pub fn location(&self) -> &Location {
        &self.loc
    }

    /// Names of the partition columns.
    pub fn partition_columns(&self) -> Vec<String> {
        self.partition_fields
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// A sink writing rows of this table's schema.
    pub fn sink(&self, mode: WriteMode) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(FileSink::try_new(
            self.name.clone(),
            self.loc.clone(),
            &self.config,
            Arc::clone(&self.schema),
            self.partition_columns(),
            mode,
        )?))
    }

    fn partition_values(&self, rel: &str) -> Result<Option<Vec<ScalarValue>>> {
        let segments: Vec<&str> = rel.split('/').collect();
        if segments.len() <= self.partition_fields.len() {
            return Ok(if self.partition_fields.is_empty() {
                Some(vec![])
            } else {
                None
            });
        }
        let mut values = Vec::with_capacity(self.partition_fields.len());
        for (field, segment) in self.partition_fields.iter().zip(&segments) {
            let decoded = object_store::path::PathPart::parse(segment)
                .ok()
                .map(|p| percent_decode(p.as_ref()))
                .unwrap_or_else(|| segment.to_string());
            let Some((col, value)) = decoded.split_once('=') else {
                return Ok(None);
            };
            if col != field.name() {
                return Ok(None);
            }
            let v = if value == super::writer::NULL_PARTITION {
                ScalarValue::try_from(field.data_type())?
            } else {
                ScalarValue::try_from_string(value.to_string(), field.data_type()).map_err(|e| {
                    ConnectorError::SchemaMismatch {
                        target: self.name.clone(),
                        reason: format!(
                            "partition directory '{segment}' does not hold a {} value: {}",
                            field.data_type(),
                            e.strip_backtrace()
                        ),
                    }
                })?
            };
            values.push(v);
        }
        Ok(Some(values))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The partition keys of hive-style paths (`k1=v1/k2=v2/file`), when
/// every file has the same keys in the same order; none otherwise.
fn hive_partitions(files: &[ManifestFile]) -> Vec<String> {
    let keys = |path: &str| -> Vec<String> {
        let mut segments: Vec<&str> = path.split('/').collect();
        segments.pop(); // the file name
        segments
            .iter()
            .map_while(|s| s.split_once('=').map(|(k, _)| k.to_string()))
            .collect()
    };
    let Some(first) = files.first() else {
        return vec![];
    };
    let found = keys(&first.path);
    if files.iter().all(|f| keys(&f.path) == found) {
        found
    } else {
        vec![]
    }
}

fn object_meta(loc: &Location, f: &ManifestFile) -> ObjectMeta {
    ObjectMeta {
        location: layout::join(&loc.path, &f.path),
        // The manifest records no modification time; the epoch stands for
        // "unknown" and, unlike `MIN_UTC`, survives plan serialisation.
        last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        size: f.size,
        e_tag: None,
        version: None,
    }
}

/// The live files of a table, or the one file of a single-file location,
/// and whether a manifest lists them (then every file is immutable: Sluice
/// never rewrites a committed file under the same name).
async fn live_files(loc: &Location) -> Result<(bool, Vec<ManifestFile>)> {
    if loc.is_dir {
        let (manifest, files) = manifest::live_files(loc).await?;
        return Ok((manifest.is_some(), files));
    }
    let meta = loc
        .store
        .head(&loc.path)
        .await
        .map_err(|e| ConnectorError::store(loc.url.to_string(), e))?;
    Ok((
        false,
        vec![ManifestFile {
            path: String::new(),
            size: meta.size,
            rows: None,
        }],
    ))
}

/// Spreads files over `n` groups, largest first onto the lightest group.
fn group_files(mut files: Vec<PartitionedFile>, n: usize) -> Vec<FileGroup> {
    let n = n.max(1).min(files.len().max(1));
    files.sort_by(|a, b| {
        b.object_meta
            .size
            .cmp(&a.object_meta.size)
            .then_with(|| a.object_meta.location.cmp(&b.object_meta.location))
    });
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, vec![])).collect();
    for f in files {
        let g = groups
            .iter_mut()
            .min_by_key(|(size, _)| *size)
            .expect("at least one group");
        g.0 += f.object_meta.size;
        g.1.push(f);
    }
    groups
        .into_iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(_, f)| FileGroup::new(f))
        .collect()
}

impl FileTable {
    /// Attaches each file's statistics (row count, sizes, min/max and null
    /// counts from Parquet footers; unknown for CSV and JSON), which the
    /// optimizer uses to order joins and to broadcast small sides.
    ///
    /// Statistics of immutable files (those a manifest lists) are kept in
    /// the runtime's file statistics cache, as DataFusion's listing tables
    /// do; files of a plain directory may be rewritten in place with the
    /// same size, and exact row counts also answer `count(*)`, so they are
    /// read again on every scan.
    async fn with_statistics(
        &self,
        state: &dyn Session,
        files: Vec<PartitionedFile>,
        immutable: bool,
    ) -> datafusion::common::Result<Vec<PartitionedFile>> {
        if !state.config().collect_statistics() {
            return Ok(files);
        }
        let cache = immutable
            .then(|| state.runtime_env().cache_manager.get_file_statistic_cache())
            .flatten();
        let fingerprint = Arc::new(SchemaFingerprint::from_schema(&self.file_schema));
        let table = TableReference::bare(format!("{}{}", self.loc.store_url, self.loc.path));
        let concurrency = state
            .config_options()
            .execution
            .meta_fetch_concurrency
            .get();
        futures::stream::iter(files)
            .map(|file| {
                let cache = cache.clone();
                let fingerprint = Arc::clone(&fingerprint);
                let table = table.clone();
                async move {
                    let key = TableScopedPath {
                        table: Some(table),
                        path: file.object_meta.location.clone(),
                    };
                    if let Some(cached) = cache.as_ref().and_then(|c| c.get(&key))
                        && cached.is_valid_for(&file.object_meta, &fingerprint)
                    {
                        return Ok(file.with_statistics(Arc::clone(&cached.statistics)));
                    }
                    let meta = self
                        .config
                        .format
                        .infer_stats_and_ordering(
                            state,
                            &self.loc.store,
                            Arc::clone(&self.file_schema),
                            &file.object_meta,
                        )
                        .await?;
                    let statistics =
                        Arc::new(without_float_bounds(meta.statistics, &self.file_schema));
                    if let Some(cache) = &cache {
                        cache.put(
                            &key,
                            CachedFileMetadata::new(
                                file.object_meta.clone(),
                                fingerprint,
                                Arc::clone(&statistics),
                                None,
                            ),
                        );
                    }
                    Ok::<_, DataFusionError>(file.with_statistics(statistics))
                }
            })
            .buffered(concurrency)
            .try_collect()
            .await
    }
}

#[async_trait]
impl TableProvider for FileTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn constraints(&self) -> Option<&datafusion::common::Constraints> {
        self.constraints.as_ref()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let partition_names: Vec<&str> = self
            .partition_fields
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let partition_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                !partition_names.is_empty() && expr_applicable_for_cols(&partition_names, f)
            })
            .cloned()
            .collect();
        let partition_schema = DFSchema::from_unqualified_fields(
            self.partition_fields.iter().cloned().collect(),
            Default::default(),
        )?;

        let (immutable, live) = live_files(&self.loc).await?;
        let mut files = vec![];
        for f in live {
            let Some(values) = self.partition_values(&f.path)? else {
                continue;
            };
            let meta = if self.loc.is_dir {
                object_meta(&self.loc, &f)
            } else {
                ObjectMeta {
                    location: self.loc.path.clone(),
                    ..object_meta(&self.loc, &f)
                }
            };
            let pf = PartitionedFile::from(meta).with_partition_values(values);
            if let Some(pf) = filter_partitioned_file(pf, &partition_filters, &partition_schema)? {
                files.push(pf);
            }
        }
        if files.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let files = self.with_statistics(state, files, immutable).await?;
        let groups = group_files(files, state.config().target_partitions());
        let (groups, statistics) = compute_all_files_statistics(
            groups,
            Arc::clone(&self.schema),
            state.config().collect_statistics(),
            false,
        )?;
        if self.config.max_bad_records > 0 {
            let groups = groups
                .iter()
                .map(|g| {
                    g.files()
                        .iter()
                        .map(|f| super::csv_scan::CsvFile {
                            path: f.object_meta.location.clone(),
                            partition_values: f.partition_values.clone(),
                        })
                        .collect()
                })
                .collect();
            return Ok(Arc::new(super::csv_scan::CsvScanExec::new(
                self.name.clone(),
                self.loc.clone(),
                groups,
                Arc::clone(&self.file_schema),
                self.partition_fields.clone(),
                projection.cloned(),
                &self.config,
            )?));
        }
        let source = self
            .config
            .file_source(Arc::clone(&self.file_schema), self.partition_fields.clone());
        let config = FileScanConfigBuilder::new(self.loc.store_url.clone(), source)
            .with_file_groups(groups)
            .with_output_ordering(self.output_ordering())
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        let plan = self
            .config
            .format
            .create_physical_plan(state, config)
            .await?;
        if self.config.kind == FileFormatKind::Csv {
            // Strict CSV: errors name their file.
            return super::csv_errors::name_csv_errors(plan);
        }
        Ok(plan)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        let names: Vec<&str> = self
            .partition_fields
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        Ok(filters
            .iter()
            .map(|f| {
                if !names.is_empty() && expr_applicable_for_cols(&names, f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }
}

/// File statistics without the min and max of floating-point columns.
///
/// Parquet leaves NaN out of float bounds, so they do not bound every
/// value. DataFusion 55 trusts them: a column whose min equals its max and
/// has no nulls is read as that constant (`[1.1, NaN]` reads as
/// `[1.1, 1.1]`), and range pruning can drop NaN rows (upstream
/// apache/datafusion#24804). Null counts and row counts stay.
fn without_float_bounds(
    mut statistics: datafusion::common::Statistics,
    schema: &arrow::datatypes::Schema,
) -> datafusion::common::Statistics {
    use datafusion::common::stats::Precision;
    for (column, field) in statistics.column_statistics.iter_mut().zip(schema.fields()) {
        if field.data_type().is_floating() {
            column.min_value = Precision::Absent;
            column.max_value = Precision::Absent;
        }
    }
    statistics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_sequences() {
        assert_eq!(percent_decode("dt=a%2Fb"), "dt=a/b");
        assert_eq!(percent_decode("50%25"), "50%");
        assert_eq!(percent_decode("x%"), "x%");
    }
}
