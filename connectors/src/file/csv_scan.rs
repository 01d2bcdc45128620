//! Reading CSV with bad-record handling.
//!
//! Used for CSV tables that set `'error-handling.max-bad-records'`. Every
//! field is first decoded as text, then cast to its declared type; a row
//! with a value that does not convert is a bad record, reported with its
//! file, line, column and value. Up to the limit they are skipped (and
//! logged); one more fails the statement. Files are read in parallel, one
//! stream per file group, with bounded buffers.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::util::display::FormatOptions;
use datafusion::common::ScalarValue;
use datafusion::common::config::CsvOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ConnectorError;
use crate::file::{FileFormatKind, FileTableConfig};
use crate::options::TableOptions;
use crate::store::{Location, StoreRegistry};

/// Rows decoded per batch.
const BATCH_ROWS: usize = 8192;

/// One file to read, with its partition values.
#[derive(Debug, Clone)]
pub(crate) struct CsvFile {
    pub(crate) path: Path,
    pub(crate) partition_values: Vec<ScalarValue>,
}

/// What another process needs to rebuild a [`CsvScanExec`]: the table's
/// declaration (secrets unresolved) and its files. The schema of file and
/// partition columns travels beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CsvScanDescriptor {
    /// Table name.
    pub table: String,
    /// Location as declared.
    pub location: String,
    /// Declared options.
    pub options: TableOptions,
    /// Files of each group: path in the store and partition values as
    /// text (`None` for NULL).
    pub groups: Vec<Vec<(String, Vec<Option<String>>)>>,
    /// How many leading columns of the schema are the files' own.
    pub file_columns: usize,
    /// Output columns, indexes into file then partition columns.
    pub projection: Option<Vec<usize>>,
}

/// Scan of CSV files that skips up to `max_bad` bad records.
pub struct CsvScanExec {
    table: String,
    loc: Location,
    declared: TableOptions,
    groups: Vec<Vec<CsvFile>>,
    file_schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
    projection: Option<Vec<usize>>,
    options: CsvOptions,
    max_bad: usize,
    bad: Arc<AtomicUsize>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for CsvScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvScanExec")
            .field("table", &self.table)
            .field("groups", &self.groups.len())
            .field("max_bad", &self.max_bad)
            .finish()
    }
}

impl CsvScanExec {
    pub(crate) fn new(
        table: String,
        loc: Location,
        groups: Vec<Vec<CsvFile>>,
        file_schema: SchemaRef,
        partition_fields: Vec<FieldRef>,
        projection: Option<Vec<usize>>,
        config: &FileTableConfig,
    ) -> Result<Self> {
        let options = config.df_options.csv.clone();
        let max_bad = config.max_bad_records;
        let declared = config.options.clone();
        let mut fields: Vec<FieldRef> = file_schema.fields().iter().cloned().collect();
        fields.extend(partition_fields.iter().cloned());
        let full = Schema::new(fields);
        let out = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => Arc::new(full),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(out),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            table,
            loc,
            declared,
            groups,
            file_schema,
            partition_fields,
            projection,
            options,
            max_bad,
            bad: Arc::new(AtomicUsize::new(0)),
            properties,
        })
    }

    /// The scan as another process rebuilds it (see [`Self::from_descriptor`]).
    pub fn descriptor(&self) -> CsvScanDescriptor {
        CsvScanDescriptor {
            table: self.table.clone(),
            location: self.loc.original.clone(),
            options: self.declared.clone(),
            groups: self
                .groups
                .iter()
                .map(|g| {
                    g.iter()
                        .map(|f| {
                            let values = f
                                .partition_values
                                .iter()
                                .map(|v| (!v.is_null()).then(|| v.to_string()))
                                .collect();
                            (f.path.to_string(), values)
                        })
                        .collect()
                })
                .collect(),
            file_columns: self.file_schema.fields().len(),
            projection: self.projection.clone(),
        }
    }

    /// The file and partition columns, in that order.
    pub fn full_schema(&self) -> Schema {
        let mut fields: Vec<FieldRef> = self.file_schema.fields().iter().cloned().collect();
        fields.extend(self.partition_fields.iter().cloned());
        Schema::new(fields)
    }

    /// Rebuilds a scan from its descriptor in another process, resolving
    /// its store (and secrets) through `stores`. `full_schema` is
    /// [`Self::full_schema`] of the original. Touches no data.
    pub fn from_descriptor(
        desc: CsvScanDescriptor,
        full_schema: &Schema,
        stores: &StoreRegistry,
        state: &dyn datafusion::catalog::Session,
    ) -> crate::Result<Self> {
        let config = FileTableConfig::new(FileFormatKind::Csv, &desc.options, state)?;
        let loc = stores.resolve(&desc.location, &desc.options)?;
        let fields = full_schema.fields();
        if desc.file_columns > fields.len() {
            return Err(ConnectorError::Internal(format!(
                "CSV scan descriptor of {} names {} file columns of {}",
                desc.table,
                desc.file_columns,
                fields.len()
            )));
        }
        let file_schema = Arc::new(Schema::new(fields[..desc.file_columns].to_vec()));
        let partition_fields: Vec<FieldRef> = fields[desc.file_columns..].to_vec();
        let mut groups = Vec::with_capacity(desc.groups.len());
        for group in desc.groups {
            let mut files = Vec::with_capacity(group.len());
            for (path, values) in group {
                let partition_values = partition_fields
                    .iter()
                    .zip(values)
                    .map(|(f, v)| match v {
                        Some(v) => ScalarValue::try_from_string(v, f.data_type()),
                        None => ScalarValue::try_from(f.data_type()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                files.push(CsvFile {
                    path: Path::from(path),
                    partition_values,
                });
            }
            groups.push(files);
        }
        Ok(Self::new(
            desc.table,
            loc,
            groups,
            file_schema,
            partition_fields,
            desc.projection,
            &config,
        )?)
    }
}

impl DisplayAs for CsvScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        write!(
            f,
            "CsvScanExec: table={}, files={files}, max_bad_records={}",
            self.table, self.max_bad
        )
    }
}

/// Everything one partition's reader needs.
struct Reader {
    table: String,
    loc: Location,
    file_schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
    projection: Option<Vec<usize>>,
    out_schema: SchemaRef,
    options: CsvOptions,
    max_bad: usize,
    bad: Arc<AtomicUsize>,
}

impl Reader {
    fn text_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.file_schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ))
    }

    async fn read_file(
        &self,
        file: &CsvFile,
        tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    ) -> Result<()> {
        let url = self.loc.url_of(&file.path);
        let has_header = self.options.has_header.unwrap_or(true);
        let mut builder = arrow::csv::ReaderBuilder::new(self.text_schema())
            .with_header(has_header)
            .with_delimiter(self.options.delimiter)
            .with_quote(self.options.quote)
            .with_batch_size(BATCH_ROWS);
        if let Some(e) = self.options.escape {
            builder = builder.with_escape(e);
        }
        let mut decoder = builder.build_decoder();
        let mut stream = self
            .loc
            .store
            .get(&file.path)
            .await
            .map_err(|e| DataFusionError::from(ConnectorError::store(url.clone(), e)))?
            .into_stream();
        let mut next_line = 1 + u64::from(has_header);
        let mut pending = bytes::Bytes::new();
        loop {
            if pending.is_empty() {
                match stream.next().await {
                    Some(chunk) => {
                        pending = chunk.map_err(|e| {
                            DataFusionError::from(ConnectorError::store(url.clone(), e))
                        })?
                    }
                    None => {
                        // End of input: flush what is buffered.
                        if let Some(batch) = decoder.flush().map_err(|e| text_error(&url, e))? {
                            self.emit(batch, file, &url, &mut next_line, tx).await?;
                        }
                        return Ok(());
                    }
                }
            }
            let consumed = decoder.decode(&pending).map_err(|e| text_error(&url, e))?;
            pending = pending.slice(consumed..);
            if decoder.capacity() == 0
                && let Some(batch) = decoder.flush().map_err(|e| text_error(&url, e))?
            {
                self.emit(batch, file, &url, &mut next_line, tx).await?;
            }
        }
    }

    /// Converts a text batch to the declared types, skipping bad records.
    async fn emit(
        &self,
        text: RecordBatch,
        file: &CsvFile,
        url: &str,
        next_line: &mut u64,
        tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    ) -> Result<()> {
        let rows = text.num_rows();
        let first_line = *next_line;
        *next_line += rows as u64;
        let cast_options = CastOptions {
            safe: true,
            format_options: FormatOptions::default(),
        };
        let mut keep = vec![true; rows];
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.file_schema.fields().len() + 2);
        for (i, field) in self.file_schema.fields().iter().enumerate() {
            let raw = text.column(i);
            let typed = cast_with_options(raw, field.data_type(), &cast_options)?;
            let raw_text = raw.as_any().downcast_ref::<StringArray>();
            for (row, kept) in keep.iter_mut().enumerate() {
                if *kept && raw.is_valid(row) && typed.is_null(row) {
                    *kept = false;
                    let value = raw_text.map(|a| a.value(row)).unwrap_or_default();
                    let n = self.bad.fetch_add(1, Ordering::Relaxed) + 1;
                    let line = first_line + row as u64;
                    if n > self.max_bad {
                        return Err(ConnectorError::SchemaMismatch {
                            target: format!("{} ({url})", self.table),
                            reason: format!(
                                "bad record at line {line}, column '{}': '{value}' is not a valid {}; \
                                 more than {} bad records (raise 'error-handling.max-bad-records' \
                                 or fix the file)",
                                field.name(),
                                field.data_type(),
                                self.max_bad
                            ),
                        }
                        .into());
                    }
                    tracing::warn!(
                        table = %self.table,
                        file = %url,
                        line,
                        column = %field.name(),
                        value,
                        "skipped bad record ({n} of at most {})",
                        self.max_bad
                    );
                }
            }
            columns.push(typed);
        }
        for (field, value) in self.partition_fields.iter().zip(&file.partition_values) {
            let array = value.to_array_of_size(rows)?;
            columns.push(if array.data_type() == field.data_type() {
                array
            } else {
                arrow::compute::cast(&array, field.data_type())?
            });
        }
        let mut fields: Vec<FieldRef> = self.file_schema.fields().iter().cloned().collect();
        fields.extend(self.partition_fields.iter().cloned());
        let full = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let batch = match &self.projection {
            Some(p) => full.project(p)?,
            None => full,
        };
        let batch = if keep.iter().all(|k| *k) {
            batch
        } else {
            filter_record_batch(&batch, &BooleanArray::from(keep))?
        };
        let batch = RecordBatch::try_new(Arc::clone(&self.out_schema), batch.columns().to_vec())?;
        if tx.send(Ok(batch)).await.is_err() {
            // The consumer went away (query cancelled or LIMIT reached).
            return Err(DataFusionError::Execution("scan cancelled".into()));
        }
        Ok(())
    }
}

fn text_error(url: &str, e: arrow::error::ArrowError) -> DataFusionError {
    DataFusionError::Execution(format!("cannot read CSV file {url}: {e}"))
}

impl ExecutionPlan for CsvScanExec {
    fn name(&self) -> &str {
        "CsvScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let out_schema = Arc::clone(self.properties.eq_properties.schema());
        let files = self.groups.get(partition).cloned().unwrap_or_default();
        let reader = Reader {
            table: self.table.clone(),
            loc: self.loc.clone(),
            file_schema: Arc::clone(&self.file_schema),
            partition_fields: self.partition_fields.clone(),
            projection: self.projection.clone(),
            out_schema: Arc::clone(&out_schema),
            options: self.options.clone(),
            max_bad: self.max_bad,
            bad: Arc::clone(&self.bad),
        };
        let mut builder = RecordBatchReceiverStreamBuilder::new(out_schema, 2);
        let tx = builder.tx();
        builder.spawn(async move {
            for file in &files {
                match reader.read_file(file, &tx).await {
                    Ok(()) => {}
                    Err(DataFusionError::Execution(m)) if m == "scan cancelled" => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        Ok(builder.build())
    }
}
