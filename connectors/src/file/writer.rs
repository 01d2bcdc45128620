//! The writer of one sink task attempt: splits rows by Hive partition and
//! stages one file per partition under the job's staging area.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::common::config::TableOptions as DfTableOptions;
use datafusion::common::file_options::csv_writer::CsvWriterOptions;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::format::FileFormatKind;
use super::layout;
use crate::error::{ConnectorError, Result};
use crate::sink::{CommitMessage, SinkWriter};
use crate::store::Location;

/// Hive's name for a NULL partition value.
pub(crate) const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Everything the task writers of one sink share.
#[derive(Debug)]
pub(crate) struct WriterShared {
    pub(crate) loc: Location,
    pub(crate) kind: FileFormatKind,
    pub(crate) df_options: DfTableOptions,
    /// Schema of the rows the sink receives (data and partition columns).
    pub(crate) input_schema: SchemaRef,
    /// Schema of the rows written to files (without partition columns).
    pub(crate) file_schema: SchemaRef,
    /// Indices of partition columns in the input, in partition order.
    pub(crate) partition_indices: Vec<usize>,
    /// Indices of data columns in the input.
    pub(crate) data_indices: Vec<usize>,
    /// For a single-file target: the file's name.
    pub(crate) single_file: Option<String>,
    /// Parquet writer settings (with the arrow schema embedded), for parquet sinks.
    pub(crate) parquet_props: Option<WriterProperties>,
}

/// Parquet writer settings from the table's `format.*` options, embedding
/// the arrow schema as DataFusion's writer does.
pub(crate) fn parquet_properties(
    df_options: &DfTableOptions,
    file_schema: &SchemaRef,
) -> Result<WriterProperties> {
    let mut opts = df_options.parquet.clone();
    if !opts.global.skip_arrow_metadata {
        opts.arrow_schema(file_schema);
    }
    let mut builder = WriterPropertiesBuilder::try_from(&opts)?;
    // Parquet leaves NaN out of float bounds, and DataFusion 55 trusts them
    // when pruning (apache/datafusion#24804): `a > 2` skips a row group of
    // [1.1, NaN]. Float columns are written without statistics unless the
    // table sets `format.statistics_enabled::<column>`.
    for field in file_schema.fields() {
        let explicit = opts
            .column_specific_options
            .get(field.name())
            .is_some_and(|c| c.statistics_enabled.is_some());
        if field.data_type().is_floating() && !explicit {
            builder = builder.set_column_statistics_enabled(
                parquet::schema::types::ColumnPath::from(field.name().as_str()),
                parquet::file::properties::EnabledStatistics::None,
            );
        }
    }
    Ok(builder.build())
}

/// One staged file, as recorded in the commit message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StagedFile {
    /// Staged path relative to the table root.
    pub(crate) staged: String,
    /// Final path relative to the table root.
    pub(crate) target: String,
    /// Partition directory relative to the table root ("" when unpartitioned).
    pub(crate) partition: String,
    pub(crate) size: u64,
    pub(crate) rows: u64,
}

/// Payload of a file sink's commit message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StagedFiles {
    pub(crate) files: Vec<StagedFile>,
}

enum Encoder {
    Parquet(Box<AsyncArrowWriter<BufWriter>>),
    Text { out: Box<BufWriter>, bytes: u64 },
}

struct OpenFile {
    staged: String,
    target: String,
    partition: String,
    rows: u64,
    encoder: Encoder,
}

/// Writer of one task attempt.
pub(crate) struct FileTaskWriter {
    shared: Arc<WriterShared>,
    job_id: String,
    task: u64,
    attempt: u32,
    open: HashMap<String, OpenFile>,
    seq: u64,
    done: Vec<StagedFile>,
}

impl FileTaskWriter {
    pub(crate) fn new(shared: Arc<WriterShared>, job_id: &str, task: u64, attempt: u32) -> Self {
        Self {
            shared,
            job_id: job_id.to_string(),
            task,
            attempt,
            open: HashMap::new(),
            seq: 0,
            done: vec![],
        }
    }

    fn staging_prefix(&self) -> String {
        format!("_sluice/staging/{}", self.job_id)
    }

    async fn open_file(&mut self, partition: &str) -> Result<OpenFile> {
        let shared = &self.shared;
        let name = match &shared.single_file {
            Some(name) => name.clone(),
            None => layout::data_file_name(
                &self.job_id,
                self.task,
                self.attempt,
                self.seq,
                shared.kind.extension(),
            ),
        };
        self.seq += 1;
        let target = if partition.is_empty() {
            name.clone()
        } else {
            format!("{partition}/{name}")
        };
        let staged = format!("{}/{}", self.staging_prefix(), target);
        let path = layout::join(&shared.loc.path, &staged);
        let store = Arc::clone(&shared.loc.store);
        let encoder = match shared.kind {
            FileFormatKind::Parquet => {
                let props = match &shared.parquet_props {
                    Some(p) => p.clone(),
                    None => parquet_properties(&shared.df_options, &shared.file_schema)?,
                };
                let writer = AsyncArrowWriter::try_new(
                    BufWriter::new(store, path),
                    Arc::clone(&shared.file_schema),
                    Some(props),
                )
                .map_err(datafusion::error::DataFusionError::from)?;
                Encoder::Parquet(Box::new(writer))
            }
            FileFormatKind::Csv | FileFormatKind::Json => Encoder::Text {
                out: Box::new(BufWriter::new(store, path)),
                bytes: 0,
            },
        };
        Ok(OpenFile {
            staged,
            target,
            partition: partition.to_string(),
            rows: 0,
            encoder,
        })
    }

    async fn write_part(&mut self, partition: String, batch: RecordBatch) -> Result<()> {
        if !self.open.contains_key(&partition) {
            let file = self.open_file(&partition).await?;
            self.open.insert(partition.clone(), file);
        }
        let shared = Arc::clone(&self.shared);
        let file = self.open.get_mut(&partition).expect("inserted above");
        let first = file.rows == 0;
        file.rows += batch.num_rows() as u64;
        match &mut file.encoder {
            Encoder::Parquet(w) => w
                .write(&batch)
                .await
                .map_err(datafusion::error::DataFusionError::from)?,
            Encoder::Text { out, bytes } => {
                let buf = encode_text(&shared, &batch, first)?;
                *bytes += buf.len() as u64;
                out.put(Bytes::from(buf))
                    .await
                    .map_err(|e| ConnectorError::store(shared.loc.url.to_string(), e))?;
            }
        }
        Ok(())
    }

    async fn close_file(shared: &WriterShared, file: OpenFile) -> Result<StagedFile> {
        let size = match file.encoder {
            Encoder::Parquet(w) => {
                w.close()
                    .await
                    .map_err(datafusion::error::DataFusionError::from)?;
                let path = layout::join(&shared.loc.path, &file.staged);
                shared
                    .loc
                    .store
                    .head(&path)
                    .await
                    .map_err(|e| ConnectorError::store(shared.loc.url_of(&path), e))?
                    .size
            }
            Encoder::Text { mut out, bytes } => {
                out.shutdown().await.map_err(|e| ConnectorError::Store {
                    url: shared.loc.url.to_string(),
                    source: object_store::Error::Generic {
                        store: "sink",
                        source: Box::new(e),
                    },
                })?;
                bytes
            }
        };
        Ok(StagedFile {
            staged: file.staged,
            target: file.target,
            partition: file.partition,
            size,
            rows: file.rows,
        })
    }
}

fn encode_text(shared: &WriterShared, batch: &RecordBatch, first: bool) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 2 + 64);
    match shared.kind {
        FileFormatKind::Csv => {
            let opts = CsvWriterOptions::try_from(&shared.df_options.csv)?;
            let header = shared.df_options.csv.has_header.unwrap_or(true) && first;
            let mut w = opts.writer_options.with_header(header).build(&mut buf);
            w.write(batch)
                .map_err(datafusion::error::DataFusionError::from)?;
        }
        FileFormatKind::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
            w.write(batch)
                .map_err(datafusion::error::DataFusionError::from)?;
            w.finish()
                .map_err(datafusion::error::DataFusionError::from)?;
        }
        FileFormatKind::Parquet => {
            return Err(ConnectorError::Internal(
                "parquet is not a text format".into(),
            ));
        }
    }
    Ok(buf)
}

/// Splits `batch` into (partition directory, rows without partition columns).
fn split_by_partition(
    shared: &WriterShared,
    batch: &RecordBatch,
) -> Result<Vec<(String, RecordBatch)>> {
    let data_columns: Vec<ArrayRef> = shared
        .data_indices
        .iter()
        .map(|i| Arc::clone(batch.column(*i)))
        .collect();
    if shared.partition_indices.is_empty() {
        let out = RecordBatch::try_new(Arc::clone(&shared.file_schema), data_columns)
            .map_err(datafusion::error::DataFusionError::from)?;
        return Ok(vec![(String::new(), out)]);
    }
    let input_schema = batch.schema();
    let mut keys: Vec<String> = vec![String::new(); batch.num_rows()];
    for &pi in &shared.partition_indices {
        let name = input_schema.field(pi).name();
        let col = batch.column(pi);
        let as_text =
            cast(col, &DataType::Utf8).map_err(datafusion::error::DataFusionError::from)?;
        let fmt = ArrayFormatter::try_new(as_text.as_ref(), &FormatOptions::default())
            .map_err(datafusion::error::DataFusionError::from)?;
        for (row, key) in keys.iter_mut().enumerate() {
            let value = if col.is_null(row) {
                NULL_PARTITION.to_string()
            } else {
                fmt.value(row).to_string()
            };
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(&layout::partition_segment(name, &value));
        }
    }
    let mut groups: HashMap<&str, Vec<u32>> = HashMap::new();
    let mut order: Vec<&str> = vec![];
    for (row, key) in keys.iter().enumerate() {
        groups
            .entry(key.as_str())
            .or_insert_with(|| {
                order.push(key.as_str());
                vec![]
            })
            .push(row as u32);
    }
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let indices = UInt32Array::from(groups.remove(key).unwrap_or_default());
        let columns = data_columns
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(datafusion::error::DataFusionError::from)?;
        let part = RecordBatch::try_new(Arc::clone(&shared.file_schema), columns)
            .map_err(datafusion::error::DataFusionError::from)?;
        out.push((key.to_string(), part));
    }
    Ok(out)
}

#[async_trait]
impl SinkWriter for FileTaskWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        for (partition, part) in split_by_partition(&self.shared, &batch)? {
            self.write_part(partition, part).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<CommitMessage> {
        let open: Vec<OpenFile> = self.open.drain().map(|(_, f)| f).collect();
        for file in open {
            let staged = Self::close_file(&self.shared, file).await?;
            self.done.push(staged);
        }
        self.done.sort_by(|a, b| a.target.cmp(&b.target));
        let rows = self.done.iter().map(|f| f.rows).sum();
        let bytes = self.done.iter().map(|f| f.size).sum();
        let payload = serde_json::to_value(StagedFiles {
            files: std::mem::take(&mut self.done),
        })
        .map_err(|e| ConnectorError::Internal(format!("cannot encode staged files: {e}")))?;
        Ok(CommitMessage {
            task: self.task,
            attempt: self.attempt,
            rows,
            bytes,
            payload,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let mut paths: Vec<String> = self.done.iter().map(|f| f.staged.clone()).collect();
        for (_, file) in self.open.drain() {
            if let Encoder::Text { mut out, .. } = file.encoder {
                let _ = out.abort().await;
            }
            paths.push(file.staged);
        }
        for rel in paths {
            let path = layout::join(&shared.loc.path, &rel);
            match shared.loc.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(ConnectorError::store(shared.loc.url_of(&path), e)),
            }
        }
        Ok(())
    }
}
