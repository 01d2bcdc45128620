//! Live exchanges of streaming mode: every task of a job runs at once, and
//! a map task hands its output partitions to the consumer tasks through
//! bounded channels instead of the shuffle store.
//!
//! - [`LiveExchange`] holds a job's channels, one per (map stage, map task,
//!   output partition, copy), opened before any task starts. A copy is one
//!   consumer task's share of a replicated (broadcast) input.
//! - [`LiveWriterExec`] is the root of a map task: it runs every input
//!   partition, splits the rows by the stage's output partitioning,
//!   coalesces them to the session's batch size and sends them on. A full
//!   channel makes it wait: a slow consumer slows its producers, and a
//!   channel never holds more than its capacity in batches.
//! - [`LiveReaderExec`] is a leaf of a consumer task: local partition `i`
//!   merges its channels from every map task.
//!
//! A producer ends each channel with an end frame. A channel that closes
//! without one means its producer failed or was cancelled, and the reader
//! fails with the job's first recorded failure, never a short result.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::compute::BatchCoalescer;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    self, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::reader::{ReadSpec, ShuffleReaderExec};
use crate::writer::{ShuffleOutput, writer_summary_schema};

/// What travels on a live channel.
#[derive(Debug)]
pub enum Frame {
    /// Rows.
    Batch(RecordBatch),
    /// The producer finished this channel.
    End,
}

/// A map task's senders, by output partition then copy.
type Senders = Vec<Vec<mpsc::Sender<Frame>>>;

/// A reader's receivers, by local partition; each taken by its one
/// execution.
type Receivers = Vec<Option<Vec<mpsc::Receiver<Frame>>>>;

/// Identifies one channel: rows of `partition` of map task `task` of
/// `stage`, for consumer copy `copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ChannelKey {
    stage: u32,
    task: u32,
    partition: u32,
    copy: u32,
}

#[derive(Debug, Default)]
struct ChannelEnds {
    tx: Option<mpsc::Sender<Frame>>,
    rx: Option<mpsc::Receiver<Frame>>,
}

/// A streaming job's live channels and its first failure.
#[derive(Debug)]
pub struct LiveExchange {
    job: String,
    capacity: usize,
    channels: Mutex<HashMap<ChannelKey, ChannelEnds>>,
    failure: Mutex<Option<String>>,
}

impl LiveExchange {
    /// An exchange for `job` whose channels hold `capacity` batches each.
    pub fn new(job: impl Into<String>, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            job: job.into(),
            capacity: capacity.max(1),
            channels: Mutex::new(HashMap::new()),
            failure: Mutex::new(None),
        })
    }

    /// The job id.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// Batches a channel holds before its producer waits.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Opens the channels of map stage `stage`: `tasks` producers,
    /// `partitions` output partitions, `copies` copies of each.
    pub fn open(&self, stage: u32, tasks: usize, partitions: usize, copies: usize) {
        let mut channels = self.channels.lock().expect("live exchange lock");
        for task in 0..tasks as u32 {
            for partition in 0..partitions as u32 {
                for copy in 0..copies as u32 {
                    let (tx, rx) = mpsc::channel(self.capacity);
                    channels.insert(
                        ChannelKey {
                            stage,
                            task,
                            partition,
                            copy,
                        },
                        ChannelEnds {
                            tx: Some(tx),
                            rx: Some(rx),
                        },
                    );
                }
            }
        }
    }

    fn take<T>(
        &self,
        key: ChannelKey,
        end: impl FnOnce(&mut ChannelEnds) -> Option<T>,
        what: &str,
    ) -> Result<T> {
        let mut channels = self.channels.lock().expect("live exchange lock");
        channels.get_mut(&key).and_then(end).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "job {}: the {what} of stage {} task {} partition {} copy {} is not open or \
                 was taken already",
                self.job, key.stage, key.task, key.partition, key.copy
            ))
        })
    }

    /// The senders of map task `task` of `stage`, by partition then copy.
    pub fn senders(
        &self,
        stage: u32,
        task: usize,
        partitions: usize,
        copies: usize,
    ) -> Result<Senders> {
        (0..partitions as u32)
            .map(|partition| {
                (0..copies as u32)
                    .map(|copy| {
                        let key = ChannelKey {
                            stage,
                            task: task as u32,
                            partition,
                            copy,
                        };
                        self.take(key, |e| e.tx.take(), "sender")
                    })
                    .collect()
            })
            .collect()
    }

    /// The receiver of one channel.
    pub fn receiver(
        &self,
        stage: u32,
        task: usize,
        partition: usize,
        copy: usize,
    ) -> Result<mpsc::Receiver<Frame>> {
        let key = ChannelKey {
            stage,
            task: task as u32,
            partition: partition as u32,
            copy: copy as u32,
        };
        self.take(key, |e| e.rx.take(), "receiver")
    }

    /// Records the job's failure; the first one recorded is kept.
    pub fn fail(&self, message: impl Into<String>) {
        let mut failure = self.failure.lock().expect("live exchange lock");
        if failure.is_none() {
            *failure = Some(message.into());
        }
    }

    /// The job's first recorded failure.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("live exchange lock").clone()
    }
}

/// The root of a map task in streaming mode: sends its input's rows,
/// partitioned, to the consumer tasks.
///
/// The single output partition yields one summary row (rows sent, bytes
/// sent, and the exchange it sent them to), like [`crate::ShuffleWriterExec`].
#[derive(Debug)]
pub struct LiveWriterExec {
    input: Arc<dyn ExecutionPlan>,
    output: ShuffleOutput,
    stage: u32,
    task: usize,
    exchange: Arc<LiveExchange>,
    /// Taken by the one execution of the instance.
    senders: Arc<Mutex<Option<Senders>>>,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

impl LiveWriterExec {
    /// The writer of map task `task` of `stage`, sending `copies` copies of
    /// each output partition through `exchange`.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        output: ShuffleOutput,
        stage: u32,
        task: usize,
        copies: usize,
        exchange: Arc<LiveExchange>,
    ) -> Result<Self> {
        let senders = exchange.senders(stage, task, output.partition_count(), copies)?;
        Ok(Self {
            input,
            output,
            stage,
            task,
            exchange,
            senders: Arc::new(Mutex::new(Some(senders))),
            metrics: ExecutionPlanMetricsSet::new(),
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(writer_summary_schema()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
        })
    }
}

impl DisplayAs for LiveWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LiveWriterExec: output={}, stage={}, task={}",
            self.output, self.stage, self.task
        )
    }
}

impl ExecutionPlan for LiveWriterExec {
    fn name(&self) -> &str {
        "LiveWriterExec"
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
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self {
            input: children.swap_remove(0),
            output: self.output.clone(),
            stage: self.stage,
            task: self.task,
            exchange: Arc::clone(&self.exchange),
            senders: Arc::clone(&self.senders),
            metrics: ExecutionPlanMetricsSet::new(),
            properties: Arc::clone(&self.properties),
        }))
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
                "LiveWriterExec has one output partition, asked for {partition}"
            )));
        }
        let senders = self
            .senders
            .lock()
            .expect("live writer lock")
            .take()
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "stage {} task {}: a live writer runs once",
                    self.stage, self.task
                ))
            })?;
        let inputs = self.input.output_partitioning().partition_count();
        let batch_size = context.session_config().batch_size();
        let sent = SendMetrics {
            rows: MetricBuilder::new(&self.metrics).output_rows(0),
            bytes: MetricBuilder::new(&self.metrics).global_counter("bytes_sent"),
            wait: MetricBuilder::new(&self.metrics).subset_time("send_wait_time", 0),
            partition_time: MetricBuilder::new(&self.metrics).subset_time("partition_time", 0),
        };
        let mut parts = tokio::task::JoinSet::new();
        for p in 0..inputs {
            let stream = self.input.execute(p, Arc::clone(&context))?;
            let partitioner = match &self.output {
                ShuffleOutput::Partitioned(part) => Some(BatchPartitioner::try_new(
                    part.clone(),
                    sent.partition_time.clone(),
                    p,
                    inputs,
                )?),
                ShuffleOutput::Single => None,
            };
            let part = InputPart {
                senders: senders.clone(),
                open: senders
                    .iter()
                    .map(|copies| vec![true; copies.len()])
                    .collect(),
                coalescers: senders
                    .iter()
                    .map(|_| BatchCoalescer::new(self.input.schema(), batch_size))
                    .collect(),
                partitioner,
                metrics: sent.clone(),
            };
            parts.spawn(part.run(stream));
        }
        let exchange = Arc::clone(&self.exchange);
        let (stage, task) = (self.stage, self.task);
        let job = exchange.job().to_string();
        let fut = async move {
            let mut result = Ok(());
            while let Some(joined) = parts.join_next().await {
                let r = joined
                    .map_err(|e| DataFusionError::Execution(format!("a partition panicked: {e}")))
                    .and_then(|r| r);
                if let Err(e) = r {
                    result = Err(e);
                    break;
                }
            }
            if let Err(e) = result {
                // Readers that see their channels close read this.
                exchange.fail(format!(
                    "stage {stage} task {task} failed: {}",
                    e.strip_backtrace()
                ));
                parts.abort_all();
                return Err(e);
            }
            for copies in &senders {
                for tx in copies {
                    // A consumer that stopped reading needs no end.
                    let _ = tx.send(Frame::End).await;
                }
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(UInt64Array::from(vec![sent.rows.value() as u64])),
                Arc::new(UInt64Array::from(vec![sent.bytes.value() as u64])),
                Arc::new(StringArray::from(vec![format!(
                    "live://{job}/{stage}/{task}"
                )])),
            ];
            Ok(RecordBatch::try_new(writer_summary_schema(), columns)?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            writer_summary_schema(),
            futures::stream::once(fut),
        )))
    }
}

#[derive(Clone)]
struct SendMetrics {
    rows: metrics::Count,
    bytes: metrics::Count,
    wait: metrics::Time,
    partition_time: metrics::Time,
}

/// One input partition of a live writer: partitions, coalesces and sends.
struct InputPart {
    senders: Senders,
    /// Whether each consumer still reads.
    open: Vec<Vec<bool>>,
    coalescers: Vec<BatchCoalescer>,
    partitioner: Option<BatchPartitioner>,
    metrics: SendMetrics,
}

impl InputPart {
    async fn run(mut self, mut input: SendableRecordBatchStream) -> Result<()> {
        while let Some(batch) = input.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            let mut pieces: Vec<(usize, RecordBatch)> = Vec::new();
            match self.partitioner.as_mut() {
                Some(p) => p.partition(batch, |i, b| {
                    pieces.push((i, b));
                    Ok(())
                })?,
                None => pieces.push((0, batch)),
            }
            for (p, piece) in pieces {
                if !self.open[p].iter().any(|o| *o) {
                    continue;
                }
                self.coalescers[p].push_batch(piece)?;
                while let Some(out) = self.coalescers[p].next_completed_batch() {
                    self.send(p, out).await;
                }
            }
            if self.open.iter().flatten().all(|o| !*o) {
                // Every consumer stopped reading (a LIMIT was reached).
                return Ok(());
            }
        }
        for p in 0..self.coalescers.len() {
            self.coalescers[p].finish_buffered_batch()?;
            while let Some(out) = self.coalescers[p].next_completed_batch() {
                self.send(p, out).await;
            }
        }
        Ok(())
    }

    async fn send(&mut self, partition: usize, batch: RecordBatch) {
        let rows = batch.num_rows();
        let bytes = batch.get_array_memory_size();
        for (copy, tx) in self.senders[partition].iter().enumerate() {
            if !self.open[partition][copy] {
                continue;
            }
            let timer = self.metrics.wait.timer();
            if tx.send(Frame::Batch(batch.clone())).await.is_err() {
                self.open[partition][copy] = false;
            }
            timer.done();
        }
        self.metrics.rows.add(rows);
        self.metrics.bytes.add(bytes);
    }
}

/// A leaf of a consumer task in streaming mode: local partition `i` reads
/// its channels from every map task of the upstream stage.
#[derive(Debug)]
pub struct LiveReaderExec {
    stage: u32,
    spec: ReadSpec,
    schema: SchemaRef,
    exchange: Arc<LiveExchange>,
    /// Per local partition, its receivers; taken by its one execution.
    receivers: Arc<Mutex<Receivers>>,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

impl LiveReaderExec {
    /// The instance of `template` exposing `spec` for a consumer task that
    /// reads copy `copy`; `upstream_tasks` is the map stage's task count.
    pub fn try_new(
        template: &ShuffleReaderExec,
        spec: ReadSpec,
        copy: usize,
        upstream_tasks: usize,
        exchange: Arc<LiveExchange>,
    ) -> Result<Self> {
        let stage = template.stage();
        let receivers = match &spec {
            ReadSpec::Partitions(parts) => parts
                .iter()
                .map(|p| {
                    (0..upstream_tasks)
                        .map(|task| exchange.receiver(stage, task, *p, copy))
                        .collect::<Result<Vec<_>>>()
                        .map(Some)
                })
                .collect::<Result<Vec<_>>>()?,
            ReadSpec::MapTasks(tasks) => tasks
                .iter()
                .map(|task| Ok(Some(vec![exchange.receiver(stage, *task, 0, copy)?])))
                .collect::<Result<Vec<_>>>()?,
        };
        // The same properties as the staged reader of this exchange.
        let staged = ShuffleReaderExec::new(
            stage,
            spec.clone(),
            template.store().clone(),
            template.hash().map(|h| h.to_vec()),
            template.equivalence().clone(),
        );
        Ok(Self {
            stage,
            spec,
            schema: Arc::clone(template.schema_ref()),
            exchange,
            receivers: Arc::new(Mutex::new(receivers)),
            metrics: ExecutionPlanMetricsSet::new(),
            properties: Arc::clone(staged.properties()),
        })
    }
}

impl DisplayAs for LiveReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LiveReaderExec: stage={}, partitions={}",
            self.stage,
            self.spec.len()
        )
    }
}

impl ExecutionPlan for LiveReaderExec {
    fn name(&self) -> &str {
        "LiveReaderExec"
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

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let receivers = self
            .receivers
            .lock()
            .expect("live reader lock")
            .get_mut(partition)
            .and_then(Option::take)
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "live reader of stage {}: partition {partition} does not exist or ran \
                     already",
                    self.stage
                ))
            })?;
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let stage = self.stage;
        let inputs = receivers.into_iter().enumerate().map(|(i, rx)| {
            let exchange = Arc::clone(&self.exchange);
            futures::stream::unfold(Some(rx), move |rx| {
                let exchange = Arc::clone(&exchange);
                async move {
                    let mut rx = rx?;
                    match rx.recv().await {
                        Some(Frame::Batch(b)) => Some((Ok(b), Some(rx))),
                        Some(Frame::End) => None,
                        None => {
                            let cause = exchange
                                .failure()
                                .unwrap_or_else(|| "the job was cancelled".to_string());
                            Some((
                                Err(DataFusionError::Execution(format!(
                                    "input {i} of stage {stage} ended early: {cause}"
                                ))),
                                None,
                            ))
                        }
                    }
                }
            })
            .boxed()
        });
        let stream = futures::stream::select_all(inputs).inspect(move |b| {
            if let Ok(b) = b {
                rows.add(b.num_rows());
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}
