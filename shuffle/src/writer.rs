//! [`ShuffleWriterExec`]: the root of a map stage's task. It runs every
//! partition of its input, splits the rows by the stage's output
//! partitioning and writes them as blocks into one data object per attempt.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    self, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::stream::{
    RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;

use crate::SHUFFLE_FORMAT_VERSION;
use crate::data::DataOut;
use crate::format::{AttemptIndex, BlockRange, ShuffleCompression, compact_views, encode_block};
use crate::metrics::{GaugeGuard, ShuffleMetrics, shuffle_metrics};
use crate::store::{AttemptId, ShuffleStore};

/// How a map stage splits its output.
#[derive(Debug, Clone)]
pub enum ShuffleOutput {
    /// Hash or range partitioning into `n` partitions.
    Partitioned(Partitioning),
    /// Everything into partition 0 (merge to one partition, broadcast).
    Single,
}

impl ShuffleOutput {
    /// Number of output partitions.
    pub fn partition_count(&self) -> usize {
        match self {
            Self::Partitioned(p) => p.partition_count(),
            Self::Single => 1,
        }
    }
}

impl fmt::Display for ShuffleOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Partitioned(p) => write!(f, "{p}"),
            Self::Single => f.write_str("Single"),
        }
    }
}

/// Buffering and encoding settings of a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriterOptions {
    /// Bytes a writer may buffer before it writes blocks out. A partition's
    /// block is written once it reaches `budget / partitions` bytes, and the
    /// largest buffer is written whenever the whole budget is used.
    pub budget: usize,
    /// Block compression.
    pub compression: ShuffleCompression,
    /// Multipart upload part size.
    pub part_size: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            budget: 64 * 1024 * 1024,
            compression: ShuffleCompression::Lz4,
            part_size: 8 * 1024 * 1024,
        }
    }
}

/// Writes its input's partitions to the shuffle store as one attempt.
///
/// The plan's single output partition yields one row: the attempt's rows
/// and bytes, and the path of its index. Until [`Self::with_attempt`] names
/// the attempt, the operator is a template and refuses to run.
#[derive(Debug)]
pub struct ShuffleWriterExec {
    input: Arc<dyn ExecutionPlan>,
    output: ShuffleOutput,
    store: ShuffleStore,
    options: WriterOptions,
    attempt: Option<AttemptId>,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

/// Schema of the summary row a [`ShuffleWriterExec`] emits.
pub fn writer_summary_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("index", DataType::Utf8, false),
    ]))
}

impl ShuffleWriterExec {
    /// A template writer for a stage.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        output: ShuffleOutput,
        store: ShuffleStore,
        options: WriterOptions,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(writer_summary_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            output,
            store,
            options,
            attempt: None,
            metrics: ExecutionPlanMetricsSet::new(),
            properties,
        }
    }

    /// The instance that writes `attempt`.
    pub fn with_attempt(&self, input: Arc<dyn ExecutionPlan>, attempt: AttemptId) -> Self {
        let mut w = Self::new(input, self.output.clone(), self.store.clone(), self.options);
        w.attempt = Some(attempt);
        w
    }

    /// The output partitioning.
    pub fn output(&self) -> &ShuffleOutput {
        &self.output
    }

    /// The input plan.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// The store the output goes to.
    pub fn store(&self) -> &ShuffleStore {
        &self.store
    }

    /// Buffering and encoding settings.
    pub fn options(&self) -> &WriterOptions {
        &self.options
    }

    /// The attempt this instance writes; `None` for a template.
    pub fn attempt(&self) -> Option<&AttemptId> {
        self.attempt.as_ref()
    }
}

impl DisplayAs for ShuffleWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ShuffleWriterExec: output={}, compression={}",
            self.output, self.options.compression
        )?;
        if let Some(a) = &self.attempt {
            write!(f, ", {a}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ShuffleWriterExec {
    fn name(&self) -> &str {
        "ShuffleWriterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        if let ShuffleOutput::Partitioned(Partitioning::Hash(exprs, _)) = &self.output {
            for e in exprs {
                if f(e)? == TreeNodeRecursion::Stop {
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.swap_remove(0);
        let mut w = Self::new(input, self.output.clone(), self.store.clone(), self.options);
        w.attempt = self.attempt.clone();
        Ok(Arc::new(w))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ShuffleWriterExec has one output partition, asked for {partition}"
            )));
        }
        let Some(attempt) = self.attempt.clone() else {
            return Err(DataFusionError::Internal(
                "ShuffleWriterExec template executed without an attempt".into(),
            ));
        };
        // Run every input partition in its own task; their batches meet in a
        // bounded channel.
        let input_partitions = self.input.output_partitioning().partition_count();
        let mut builder =
            RecordBatchReceiverStreamBuilder::new(self.input.schema(), input_partitions.max(1) * 2);
        for p in 0..input_partitions {
            let input = Arc::clone(&self.input);
            let ctx = Arc::clone(&context);
            let tx = builder.tx();
            builder.spawn(async move {
                let mut stream = input.execute(p, ctx)?;
                while let Some(batch) = stream.next().await {
                    if tx.send(batch).await.is_err() {
                        break;
                    }
                }
                Ok(())
            });
        }
        let input = builder.build();
        let writer = AttemptWriter {
            schema: self.input.schema(),
            store: self.store.clone(),
            options: self.options,
            attempt,
            partitions: self.output.partition_count(),
            metrics: WriterMetrics::new(&self.metrics),
        };
        let output = self.output.clone();
        let fut = async move { writer.run(input, output).await };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            writer_summary_schema(),
            futures::stream::once(fut),
        )))
    }
}

struct WriterMetrics {
    rows: metrics::Count,
    bytes: metrics::Count,
    blocks: metrics::Count,
    write_time: metrics::Time,
    partition_time: metrics::Time,
}

impl WriterMetrics {
    fn new(set: &ExecutionPlanMetricsSet) -> Self {
        Self {
            rows: MetricBuilder::new(set).output_rows(0),
            bytes: MetricBuilder::new(set).global_counter("bytes_written"),
            blocks: MetricBuilder::new(set).global_counter("blocks_written"),
            write_time: MetricBuilder::new(set).subset_time("write_time", 0),
            partition_time: MetricBuilder::new(set).subset_time("partition_time", 0),
        }
    }
}

struct AttemptWriter {
    schema: SchemaRef,
    store: ShuffleStore,
    options: WriterOptions,
    attempt: AttemptId,
    partitions: usize,
    metrics: WriterMetrics,
}

/// One partition's rows waiting to become a block.
#[derive(Default)]
struct Buffer {
    batches: Vec<RecordBatch>,
    bytes: usize,
    rows: usize,
}

impl Buffer {
    fn push(&mut self, batch: RecordBatch, size: usize) {
        ShuffleMetrics::add(&shuffle_metrics().buffered_bytes, size as u64);
        self.rows += batch.num_rows();
        self.bytes += size;
        self.batches.push(batch);
    }

    fn take(&mut self) -> Vec<RecordBatch> {
        ShuffleMetrics::sub(&shuffle_metrics().buffered_bytes, self.bytes as u64);
        self.bytes = 0;
        self.rows = 0;
        std::mem::take(&mut self.batches)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        ShuffleMetrics::sub(&shuffle_metrics().buffered_bytes, self.bytes as u64);
    }
}

impl AttemptWriter {
    async fn run(
        self,
        mut input: futures::stream::BoxStream<'static, Result<RecordBatch>>,
        output: ShuffleOutput,
    ) -> Result<RecordBatch> {
        let _active = GaugeGuard::new(&shuffle_metrics().active_writers);
        let mut upload =
            Out::open(&self.store, &self.attempt, self.partitions, &self.options).await?;
        let result = self.write_all(&mut input, &output, &mut upload).await;
        match result {
            Ok(index) => {
                let start = std::time::Instant::now();
                match upload.finish().await? {
                    // The worker wrote the data object and the index.
                    Some(stored) => {
                        if (stored.rows, stored.bytes) != (index.rows, index.bytes) {
                            return Err(DataFusionError::Execution(format!(
                                "the shuffle worker stored {} rows in {} bytes for {}, but \
                                 {} rows in {} bytes were sent",
                                stored.rows, stored.bytes, self.attempt, index.rows, index.bytes
                            )));
                        }
                    }
                    None => {
                        self.store.put_index(&index).await?;
                        let m = shuffle_metrics();
                        m.store_request(start);
                        ShuffleMetrics::add(&m.objects_written, 2);
                    }
                }
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(UInt64Array::from(vec![index.rows])),
                    Arc::new(UInt64Array::from(vec![index.bytes])),
                    Arc::new(StringArray::from(vec![
                        ShuffleStore::index_path(&self.attempt).to_string(),
                    ])),
                ];
                Ok(RecordBatch::try_new(writer_summary_schema(), columns)?)
            }
            Err(e) => {
                upload.abort(&self.attempt).await;
                Err(e)
            }
        }
    }

    async fn write_all(
        &self,
        input: &mut futures::stream::BoxStream<'static, Result<RecordBatch>>,
        output: &ShuffleOutput,
        upload: &mut Out,
    ) -> Result<AttemptIndex> {
        let n = self.partitions;
        let block_limit = (self.options.budget / n).max(64 * 1024);
        let mut partitioner = match output {
            ShuffleOutput::Partitioned(p) => Some(BatchPartitioner::try_new(
                p.clone(),
                self.metrics.partition_time.clone(),
                0,
                1,
            )?),
            ShuffleOutput::Single => None,
        };
        let mut buffers: Vec<Buffer> = (0..n).map(|_| Buffer::default()).collect();
        let mut index = AttemptIndex {
            format_version: SHUFFLE_FORMAT_VERSION,
            job: self.attempt.job.clone(),
            stage: self.attempt.stage,
            task: self.attempt.task,
            attempt: self.attempt.attempt,
            compression: self.options.compression,
            data: ShuffleStore::data_path(&self.attempt).to_string(),
            partitions: vec![Vec::new(); n],
            rows: 0,
            bytes: 0,
        };
        let mut buffered = 0usize;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            ShuffleMetrics::add(&shuffle_metrics().batches_in, 1);
            if batch.num_rows() == 0 {
                continue;
            }
            let mut parts: Vec<(usize, RecordBatch)> = Vec::new();
            match partitioner.as_mut() {
                Some(p) => p.partition(batch, |i, b| {
                    parts.push((i, b));
                    Ok(())
                })?,
                None => parts.push((0, batch)),
            }
            for (p, b) in parts {
                let b = compact_views(b);
                let size = b.get_array_memory_size();
                buffers[p].push(b, size);
                buffered += size;
                if buffers[p].bytes >= block_limit {
                    buffered -= buffers[p].bytes;
                    self.flush(p, &mut buffers[p], &mut index, upload).await?;
                }
            }
            while buffered > self.options.budget {
                let (p, _) = buffers
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, b)| b.bytes)
                    .expect("at least one partition");
                buffered -= buffers[p].bytes;
                self.flush(p, &mut buffers[p], &mut index, upload).await?;
            }
        }
        for (p, buffer) in buffers.iter_mut().enumerate() {
            self.flush(p, buffer, &mut index, upload).await?;
        }
        Ok(index)
    }

    async fn flush(
        &self,
        partition: usize,
        buffer: &mut Buffer,
        index: &mut AttemptIndex,
        upload: &mut Out,
    ) -> Result<()> {
        if buffer.rows == 0 {
            return Ok(());
        }
        let rows = buffer.rows as u64;
        let batches = buffer.take();
        let block = {
            let _timer = self.metrics.write_time.timer();
            // Coalesce small pieces into one batch per block.
            let batch = concat_batches(&self.schema, &batches)?;
            encode_block(&self.schema, &[batch], self.options.compression)?
        };
        let len = block.len() as u64;
        index.partitions[partition].push(BlockRange {
            offset: index.bytes,
            len,
            rows,
        });
        index.bytes += len;
        index.rows += rows;
        self.metrics.rows.add(rows as usize);
        self.metrics.bytes.add(len as usize);
        self.metrics.blocks.add(1);
        let m = shuffle_metrics();
        ShuffleMetrics::add(&m.bytes_written, len);
        ShuffleMetrics::add(&m.blocks_written, 1);
        upload.put(partition, rows, block).await
    }
}

/// Where a writer's blocks go: into the store, or through a shuffle worker.
enum Out {
    Store(DataOut),
    Worker(WorkerPut),
}

/// A `do_put` to a shuffle worker, fed block by block.
struct WorkerPut {
    url: String,
    blocks: Option<tokio::sync::mpsc::Sender<(usize, u64, bytes::Bytes)>>,
    put: tokio::task::JoinHandle<crate::Result<AttemptIndex>>,
}

impl Out {
    async fn open(
        store: &ShuffleStore,
        attempt: &AttemptId,
        partitions: usize,
        options: &WriterOptions,
    ) -> Result<Self> {
        if let Some(url) = store.worker() {
            match crate::ShuffleClient::connect(url).await {
                Ok(client) => {
                    // Two blocks in flight: the worker's budget and HTTP/2
                    // flow control hold the writer back beyond that.
                    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
                    let blocks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
                    let attempt = attempt.clone();
                    let compression = options.compression;
                    let put = tokio::spawn(async move {
                        client
                            .put_attempt(&attempt, partitions, compression, blocks)
                            .await
                    });
                    return Ok(Out::Worker(WorkerPut {
                        url: url.to_string(),
                        blocks: Some(tx),
                        put,
                    }));
                }
                Err(e) => {
                    ShuffleMetrics::add(&shuffle_metrics().worker_fallbacks, 1);
                    tracing::warn!(%attempt, error = %e, "writing the attempt to the shuffle store directly");
                }
            }
        }
        Ok(Out::Store(
            DataOut::open(store, attempt, options.part_size).await?,
        ))
    }

    async fn put(&mut self, partition: usize, rows: u64, block: bytes::Bytes) -> Result<()> {
        match self {
            Out::Store(out) => out.put(block).await,
            Out::Worker(w) => {
                let sent = match &w.blocks {
                    Some(tx) => tx.send((partition, rows, block)).await.is_ok(),
                    None => false,
                };
                if sent {
                    return Ok(());
                }
                // The put ended early: its error says why.
                w.blocks = None;
                Err(match (&mut w.put).await {
                    Ok(Err(e)) => DataFusionError::from(e),
                    Ok(Ok(_)) => DataFusionError::Execution(format!(
                        "shuffle worker {} ended the put before the last block",
                        w.url
                    )),
                    Err(e) => DataFusionError::External(Box::new(e)),
                })
            }
        }
    }

    /// Completes the data object; a worker answers with the index it wrote.
    async fn finish(self) -> Result<Option<AttemptIndex>> {
        match self {
            Out::Store(out) => out.finish().await.map(|()| None),
            Out::Worker(mut w) => {
                w.blocks = None;
                match w.put.await {
                    Ok(r) => Ok(Some(r?)),
                    Err(e) => Err(DataFusionError::External(Box::new(e))),
                }
            }
        }
    }

    async fn abort(self, attempt: &AttemptId) {
        match self {
            Out::Store(out) => out.abort(attempt).await,
            // The worker deletes what it stored of a put that breaks off.
            Out::Worker(w) => w.put.abort(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::{ReadSpec, ShuffleReaderExec};

    fn input(rows: i64, batches: i64) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("pad", DataType::Utf8, false),
        ]));
        let parts: Vec<RecordBatch> = (0..batches)
            .map(|b| {
                let ids = (b * rows..(b + 1) * rows).collect::<Vec<_>>();
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from(ids.clone())),
                        Arc::new(StringArray::from_iter_values(
                            ids.iter().map(|i| format!("padding padding {i}")),
                        )),
                    ],
                )
                .unwrap()
            })
            .collect();
        // Two input partitions, so the writer merges several streams.
        let (a, b) = parts.split_at(parts.len() / 2);
        MemorySourceConfig::try_new_exec(&[a.to_vec(), b.to_vec()], schema, None).unwrap()
    }

    #[tokio::test]
    async fn hash_partitions_round_trip_through_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::local(dir.path()).unwrap();
        let input = input(5000, 20);
        let schema = input.schema();
        let output =
            ShuffleOutput::Partitioned(Partitioning::Hash(vec![col("id", &schema).unwrap()], 4));
        let options = WriterOptions {
            budget: 256 * 1024,
            compression: ShuffleCompression::Zstd,
            part_size: 5 * 1024 * 1024,
        };
        let template = ShuffleWriterExec::new(input, output, store.clone(), options);
        let id = AttemptId {
            job: "job".into(),
            stage: 0,
            task: 0,
            attempt: 0,
        };
        let writer = Arc::new(template.with_attempt(Arc::clone(template.input()), id.clone()));
        let ctx = SessionContext::new().task_ctx();
        let summary = collect(writer, Arc::clone(&ctx)).await.unwrap();
        assert_eq!(summary[0].num_rows(), 1);

        let index = store.read_index(&id).await.unwrap();
        assert_eq!(index.rows, 100_000);
        assert_eq!(index.partitions.len(), 4);
        let blocks: usize = index.partitions.iter().map(Vec::len).sum();
        assert!(
            blocks > 8,
            "a small budget writes many blocks, got {blocks}"
        );

        let reader = ShuffleReaderExec::new(
            0,
            ReadSpec::Partitions((0..4).collect()),
            store,
            None,
            datafusion::physical_expr::EquivalenceProperties::new(Arc::clone(&schema)),
        );
        let reader = Arc::new(reader.instance(
            ReadSpec::Partitions(vec![2, 0, 3, 1]),
            Arc::new(vec![Arc::new(index.clone())]),
        ));
        let mut seen = BTreeSet::new();
        let mut total = 0;
        for p in 0..4 {
            let stream = reader.execute(p, Arc::clone(&ctx)).unwrap();
            let batches = datafusion::physical_plan::common::collect(stream)
                .await
                .unwrap();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let global = [2, 0, 3, 1][p];
            assert_eq!(rows as u64, index.partition_rows(global));
            for b in &batches {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                for v in ids.values() {
                    assert!(seen.insert(*v), "row {v} read twice");
                }
                total += b.num_rows();
            }
        }
        assert_eq!(total, 100_000);
        assert_eq!(seen.len(), 100_000);
    }
}
