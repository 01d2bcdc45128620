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
//!
//! Across processes (a cluster), a channel's ends both live in the
//! producer's process: the consumer reads it with a Flight `do_get` to that
//! process's [`LiveService`](crate::live_flight::LiveService), whose
//! [`LiveRegistry`] holds the process's exchanges by job. HTTP/2 flow
//! control carries the back-pressure over the wire: a consumer that stops
//! reading stops the stream, the channel fills and the producer waits. A
//! failed producer's channel ends the stream with its recorded cause.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::compute::BatchCoalescer;
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

/// Identifies one channel: rows of `partition` of map task `task` of
/// `stage`, for consumer copy `copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ChannelKey {
    /// The map stage.
    pub stage: u32,
    /// The map task.
    pub task: u32,
    /// The map task's output partition.
    pub partition: u32,
    /// The consumer's copy of a replicated input.
    pub copy: u32,
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stage {} task {} partition {} copy {}",
            self.stage, self.task, self.partition, self.copy
        )
    }
}

/// A channel's ends until each is taken (an entry whose ends are both
/// taken stays, so a second take is an error, not a fresh channel).
#[derive(Debug)]
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
    closed: std::sync::atomic::AtomicBool,
    failure: Mutex<Option<String>>,
}

impl LiveExchange {
    /// An exchange for `job` whose channels hold `capacity` batches each.
    pub fn new(job: impl Into<String>, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            job: job.into(),
            capacity: capacity.max(1),
            channels: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
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

    /// Takes one end of the channel `key`, creating the channel when
    /// neither end was taken yet: producer and consumer may come in any
    /// order.
    fn take<T>(
        &self,
        key: ChannelKey,
        end: impl FnOnce(&mut ChannelEnds) -> Option<T>,
        what: &str,
    ) -> Result<T> {
        let mut channels = self.channels.lock().expect("live exchange lock");
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(DataFusionError::Execution(format!(
                "job {}: the job ended; the {what} of {key} is not available",
                self.job
            )));
        }
        let entry = channels.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.capacity);
            ChannelEnds {
                tx: Some(tx),
                rx: Some(rx),
            }
        });
        end(entry).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "job {}: the {what} of {key} was taken already",
                self.job
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
    pub fn receiver(&self, key: ChannelKey) -> Result<mpsc::Receiver<Frame>> {
        self.take(key, |e| e.rx.take(), "receiver")
    }

    /// Drops every end not taken yet: readers waiting on a channel whose
    /// producer never started see it close, and buffered rows are freed.
    pub fn close(&self) {
        let mut channels = self.channels.lock().expect("live exchange lock");
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        channels.clear();
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
    copies: usize,
    exchange: Arc<LiveExchange>,
    /// Set by the one execution of the instance.
    ran: Arc<std::sync::atomic::AtomicBool>,
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
        Ok(Self {
            input,
            output,
            stage,
            task,
            copies: copies.max(1),
            exchange,
            ran: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            metrics: ExecutionPlanMetricsSet::new(),
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(writer_summary_schema()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
        })
    }

    /// The task's plan below the writer.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// How the rows are split into output partitions.
    pub fn output(&self) -> &ShuffleOutput {
        &self.output
    }

    /// The map stage.
    pub fn stage(&self) -> u32 {
        self.stage
    }

    /// The map task.
    pub fn task(&self) -> usize {
        self.task
    }

    /// Copies sent of each output partition.
    pub fn copies(&self) -> usize {
        self.copies
    }

    /// The job's exchange in this process.
    pub fn exchange(&self) -> &Arc<LiveExchange> {
        &self.exchange
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
            copies: self.copies,
            exchange: Arc::clone(&self.exchange),
            ran: Arc::clone(&self.ran),
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
        if self.ran.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return Err(DataFusionError::Internal(format!(
                "stage {} task {}: a live writer runs once",
                self.stage, self.task
            )));
        }
        let senders = self.exchange.senders(
            self.stage,
            self.task,
            self.output.partition_count(),
            self.copies,
        )?;
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
/// its channels from every map task of the upstream stage, from this
/// process's exchange or, for a map task running elsewhere, over Flight
/// from the process that runs it.
#[derive(Debug)]
pub struct LiveReaderExec {
    /// The staged reader of the same exchange: stage, spec, schema,
    /// partitioning and equivalences.
    template: ShuffleReaderExec,
    copy: usize,
    /// Per upstream map task, where it runs: `None` in this process, else
    /// the URL of its process's live service.
    sources: Vec<Option<String>>,
    exchange: Arc<LiveExchange>,
    /// Which local partitions ran (each runs once).
    ran: Arc<Mutex<Vec<bool>>>,
    metrics: ExecutionPlanMetricsSet,
}

impl LiveReaderExec {
    /// The instance of `template` exposing `spec` for a consumer task that
    /// reads copy `copy`; `sources` has one entry per upstream map task:
    /// `None` when it runs in this process, else its live service's URL.
    pub fn try_new(
        template: &ShuffleReaderExec,
        spec: ReadSpec,
        copy: usize,
        sources: Vec<Option<String>>,
        exchange: Arc<LiveExchange>,
    ) -> Result<Self> {
        if let ReadSpec::MapTasks(tasks) = &spec
            && let Some(t) = tasks.iter().find(|t| **t >= sources.len())
        {
            return Err(DataFusionError::Internal(format!(
                "live reader of stage {} reads map task {t} of {}",
                template.stage(),
                sources.len()
            )));
        }
        let template = ShuffleReaderExec::new(
            template.stage(),
            spec.clone(),
            template.store().clone(),
            template.hash().map(|h| h.to_vec()),
            template.equivalence().clone(),
        );
        Ok(Self {
            ran: Arc::new(Mutex::new(vec![false; spec.len()])),
            template,
            copy,
            sources,
            exchange,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The staged reader this instance reads like.
    pub fn template(&self) -> &ShuffleReaderExec {
        &self.template
    }

    /// The copy of a replicated input this task reads.
    pub fn copy(&self) -> usize {
        self.copy
    }

    /// Where each upstream map task runs (`None`: in this process).
    pub fn sources(&self) -> &[Option<String>] {
        &self.sources
    }

    /// The job's exchange in this process.
    pub fn exchange(&self) -> &Arc<LiveExchange> {
        &self.exchange
    }

    /// The channels local partition `partition` reads, with where each
    /// one's producer runs.
    fn channels(&self, partition: usize) -> Vec<(ChannelKey, Option<&str>)> {
        let stage = self.template.stage();
        let copy = self.copy as u32;
        let source = |task: usize| self.sources.get(task).and_then(|s| s.as_deref());
        match self.template.spec() {
            ReadSpec::Partitions(parts) => (0..self.sources.len())
                .map(|task| {
                    let key = ChannelKey {
                        stage,
                        task: task as u32,
                        partition: parts[partition] as u32,
                        copy,
                    };
                    (key, source(task))
                })
                .collect(),
            ReadSpec::MapTasks(tasks) => {
                let key = ChannelKey {
                    stage,
                    task: tasks[partition] as u32,
                    partition: 0,
                    copy,
                };
                vec![(key, source(tasks[partition]))]
            }
        }
    }
}

impl DisplayAs for LiveReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let remote = self.sources.iter().filter(|s| s.is_some()).count();
        write!(
            f,
            "LiveReaderExec: stage={}, partitions={}",
            self.template.stage(),
            self.template.spec().len()
        )?;
        if remote > 0 {
            write!(f, ", remote_tasks={remote}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LiveReaderExec {
    fn name(&self) -> &str {
        "LiveReaderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.template.properties()
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
        let stage = self.template.stage();
        {
            let mut ran = self.ran.lock().expect("live reader lock");
            match ran.get_mut(partition) {
                Some(r) if !*r => *r = true,
                _ => {
                    return Err(DataFusionError::Internal(format!(
                        "live reader of stage {stage}: partition {partition} does not exist or \
                         ran already"
                    )));
                }
            }
        }
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let schema = Arc::clone(self.template.schema_ref());
        let mut inputs = Vec::new();
        for (i, (key, source)) in self.channels(partition).into_iter().enumerate() {
            let input = match source {
                None => local_input(Arc::clone(&self.exchange), key)?,
                Some(url) => crate::live_flight::remote_input(
                    url,
                    self.exchange.job(),
                    self.exchange.capacity(),
                    key,
                    Arc::clone(&schema),
                )?,
            };
            let exchange = Arc::clone(&self.exchange);
            inputs.push(
                input
                    .map(move |r| {
                        r.map_err(|cause| {
                            // Co-located readers of the job learn the cause.
                            exchange.fail(cause.clone());
                            DataFusionError::Execution(format!(
                                "input {i} of stage {stage} ended early: {cause}"
                            ))
                        })
                    })
                    .boxed(),
            );
        }
        let stream = futures::stream::select_all(inputs).inspect(move |b| {
            if let Ok(b) = b {
                rows.add(b.num_rows());
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

impl Drop for LiveReaderExec {
    /// Once the task ran the reader, the channels of partitions that never
    /// ran are let go, so that their producers stop sending to them rather
    /// than wait on a full channel. A reader that never ran at all is an
    /// instance made to be sent to another process, and lets go of nothing.
    fn drop(&mut self) {
        let ran = std::mem::take(&mut *self.ran.lock().expect("live reader lock"));
        if !ran.iter().any(|r| *r) {
            return;
        }
        for (partition, ran) in ran.into_iter().enumerate() {
            if ran {
                continue;
            }
            for (key, source) in self.channels(partition) {
                match source {
                    None => drop(self.exchange.receiver(key)),
                    Some(url) => crate::live_flight::let_go(
                        url,
                        self.exchange.job(),
                        self.exchange.capacity(),
                        key,
                    ),
                }
            }
        }
    }
}

/// Rows of one channel, or why it ended early.
pub(crate) type ChannelStream = futures::stream::BoxStream<'static, Result<RecordBatch, String>>;

/// The rows of a channel of this process's exchange. A channel that closes
/// without its end frame yields the job's recorded failure.
pub(crate) fn local_input(exchange: Arc<LiveExchange>, key: ChannelKey) -> Result<ChannelStream> {
    let rx = exchange.receiver(key)?;
    Ok(futures::stream::unfold(Some(rx), move |rx| {
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
                    Some((Err(cause), None))
                }
            }
        }
    })
    .boxed())
}

/// The process's live exchanges, by job: what a live service serves and
/// what decoded task plans of one job share.
#[derive(Debug, Default)]
pub struct LiveRegistry {
    jobs: Mutex<HashMap<String, Arc<LiveExchange>>>,
    /// Jobs ended lately, so that a late open does not bring one back.
    ended: Mutex<std::collections::VecDeque<String>>,
}

/// Ended jobs remembered.
const ENDED_KEPT: usize = 1024;

impl LiveRegistry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The exchange of `job`, made with `capacity` when it is new. A job
    /// that ended gets a closed exchange, which refuses every channel.
    pub fn exchange(&self, job: &str, capacity: usize) -> Arc<LiveExchange> {
        let ended = self
            .ended
            .lock()
            .expect("live registry lock")
            .contains(&job.to_string());
        if ended {
            let exchange = LiveExchange::new(job, capacity);
            exchange.close();
            return exchange;
        }
        let mut jobs = self.jobs.lock().expect("live registry lock");
        Arc::clone(
            jobs.entry(job.to_string())
                .or_insert_with(|| LiveExchange::new(job, capacity)),
        )
    }

    /// Forgets `job` and closes its channels not taken yet.
    pub fn end(&self, job: &str) {
        let removed = self.jobs.lock().expect("live registry lock").remove(job);
        if let Some(exchange) = removed {
            exchange.close();
        }
        let mut ended = self.ended.lock().expect("live registry lock");
        if !ended.iter().any(|j| j == job) {
            ended.push_back(job.to_string());
            if ended.len() > ENDED_KEPT {
                ended.pop_front();
            }
        }
    }

    /// Jobs with an exchange in this process.
    pub fn jobs(&self) -> usize {
        self.jobs.lock().expect("live registry lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(v: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
    }

    fn key(task: u32) -> ChannelKey {
        ChannelKey {
            stage: 0,
            task,
            partition: 0,
            copy: 0,
        }
    }

    #[tokio::test]
    async fn either_end_may_come_first_and_each_is_taken_once() {
        let exchange = LiveExchange::new("j", 2);
        let mut input = local_input(Arc::clone(&exchange), key(0)).unwrap();
        let tx = exchange.senders(0, 0, 1, 1).unwrap().remove(0).remove(0);
        tx.send(Frame::Batch(batch(7))).await.unwrap();
        tx.send(Frame::End).await.unwrap();
        assert_eq!(input.next().await.unwrap().unwrap().num_rows(), 1);
        assert!(input.next().await.is_none());
        let again = exchange.receiver(key(0)).unwrap_err().to_string();
        assert!(again.contains("taken already"), "{again}");
    }

    #[tokio::test]
    async fn a_channel_closed_without_its_end_yields_the_failure() {
        let exchange = LiveExchange::new("j", 2);
        let tx = exchange.senders(0, 1, 1, 1).unwrap().remove(0).remove(0);
        exchange.fail("stage 0 task 1 failed: boom");
        drop(tx);
        let mut input = local_input(Arc::clone(&exchange), key(1)).unwrap();
        let err = input.next().await.unwrap().unwrap_err();
        assert_eq!(err, "stage 0 task 1 failed: boom");
    }

    #[tokio::test]
    async fn an_ended_job_closes_waiting_readers_and_refuses_new_channels() {
        let registry = LiveRegistry::new();
        let exchange = registry.exchange("j", 2);
        let mut input = local_input(Arc::clone(&exchange), key(0)).unwrap();
        registry.end("j");
        assert!(input.next().await.unwrap().is_err());
        let late = registry.exchange("j", 2);
        assert!(late.receiver(key(1)).is_err());
        assert_eq!(registry.jobs(), 0);
    }
}
