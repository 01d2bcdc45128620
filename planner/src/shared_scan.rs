//! One scan of a table feeding several writes of a statement set.
//!
//! [`SharedScan`] owns the table's full scan, planned once. Each INSERT of
//! the set reads it through its own leaf, a [`SharedScanConsumerExec`]
//! (exposed to DataFusion's planner by [`SharedScanTable`]). The first
//! consumer to execute a partition starts one producer task for that input
//! partition; it sends every batch to one bounded channel per consumer, so
//! memory stays bounded and the scan runs at the pace of the slowest
//! consumer. A consumer that stops early (a `LIMIT`) closes its channel and
//! is skipped from then on; an input error goes to every consumer.
//!
//! Because the producer waits for the slowest consumer, every consumer must
//! be driven at the same time: the writes of a set run concurrently. A
//! table read twice by one INSERT (a self-join) is not shared: its two
//! leaves could wait on each other.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;
use tokio::sync::mpsc;

/// Batches buffered per consumer and partition.
const CHANNEL_CAPACITY: usize = 2;

type Item = Result<RecordBatch>;

/// The state of one input partition.
enum PartitionState {
    NotStarted,
    Started {
        /// One receiver per consumer, taken by its `execute`.
        receivers: Vec<Option<mpsc::Receiver<Item>>>,
        /// The producer; dropping the scan stops it.
        _producer: SpawnedTask<()>,
    },
}

/// A table's scan, read once and sent to several consumers.
pub struct SharedScan {
    table: String,
    input: Arc<dyn ExecutionPlan>,
    consumers: usize,
    partitions: Mutex<Vec<PartitionState>>,
    rows: Arc<AtomicU64>,
}

impl fmt::Debug for SharedScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedScan")
            .field("table", &self.table)
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

impl SharedScan {
    /// Shares `input`, the full scan of `table`, among `consumers` readers.
    pub fn new(table: impl Into<String>, input: Arc<dyn ExecutionPlan>, consumers: usize) -> Self {
        let n = input.output_partitioning().partition_count();
        Self {
            table: table.into(),
            input,
            consumers,
            partitions: Mutex::new((0..n).map(|_| PartitionState::NotStarted).collect()),
            rows: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The table read.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The scan, planned once.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// How many consumers read it.
    pub fn consumers(&self) -> usize {
        self.consumers
    }

    /// Rows the scan produced so far (each counted once, whatever the
    /// number of consumers).
    pub fn rows_produced(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// The leaf through which consumer `index` (0-based) reads.
    pub fn consumer(self: &Arc<Self>, index: usize) -> SharedScanConsumerExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(self.input.schema()),
            Partitioning::UnknownPartitioning(self.input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        SharedScanConsumerExec {
            shared: Arc::clone(self),
            index,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// Consumer `consumer`'s channel for `partition`, starting the
    /// partition's producer if it is the first to ask.
    fn receiver(
        &self,
        partition: usize,
        consumer: usize,
        context: Arc<TaskContext>,
    ) -> Result<mpsc::Receiver<Item>> {
        let mut partitions = self.partitions.lock().expect("shared scan lock");
        let state = partitions.get_mut(partition).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "shared scan of {} has no partition {partition}",
                self.table
            ))
        })?;
        if matches!(state, PartitionState::NotStarted) {
            let (senders, receivers): (Vec<_>, Vec<_>) = (0..self.consumers)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                    (Some(tx), Some(rx))
                })
                .unzip();
            let producer = SpawnedTask::spawn(produce(
                Arc::clone(&self.input),
                partition,
                context,
                senders,
                Arc::clone(&self.rows),
            ));
            *state = PartitionState::Started {
                receivers,
                _producer: producer,
            };
        }
        let PartitionState::Started { receivers, .. } = state else {
            unreachable!("started above");
        };
        receivers
            .get_mut(consumer)
            .and_then(Option::take)
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "partition {partition} of the shared scan of {} was read twice by consumer {}",
                    self.table,
                    consumer + 1
                ))
            })
    }
}

/// Reads one input partition and sends each batch to every open consumer.
async fn produce(
    input: Arc<dyn ExecutionPlan>,
    partition: usize,
    context: Arc<TaskContext>,
    mut senders: Vec<Option<mpsc::Sender<Item>>>,
    rows: Arc<AtomicU64>,
) {
    let mut stream = match input.execute(partition, context) {
        Ok(s) => s,
        Err(e) => return broadcast_error(&senders, e).await,
    };
    while let Some(item) = stream.next().await {
        let batch = match item {
            Ok(batch) => batch,
            Err(e) => return broadcast_error(&senders, e).await,
        };
        rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        let sends = senders.iter().map(|s| {
            let batch = batch.clone();
            async move {
                match s {
                    Some(tx) => tx.send(Ok(batch)).await.is_ok(),
                    None => false,
                }
            }
        });
        let open = futures::future::join_all(sends).await;
        for (s, open) in senders.iter_mut().zip(open) {
            if !open {
                *s = None;
            }
        }
        if senders.iter().all(Option::is_none) {
            return;
        }
    }
}

async fn broadcast_error(senders: &[Option<mpsc::Sender<Item>>], e: DataFusionError) {
    let e = Arc::new(e);
    for tx in senders.iter().flatten() {
        let _ = tx.send(Err(DataFusionError::Shared(Arc::clone(&e)))).await;
    }
}

/// The leaf through which one INSERT of a statement set reads a shared scan.
#[derive(Debug)]
pub struct SharedScanConsumerExec {
    shared: Arc<SharedScan>,
    index: usize,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SharedScanConsumerExec {
    /// The shared scan this leaf reads.
    pub fn shared(&self) -> &Arc<SharedScan> {
        &self.shared
    }
}

impl DisplayAs for SharedScanConsumerExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SharedScanExec: table={}, consumers={}, consumer={}",
            self.shared.table,
            self.shared.consumers,
            self.index + 1
        )
    }
}

impl ExecutionPlan for SharedScanConsumerExec {
    fn name(&self) -> &str {
        "SharedScanExec"
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
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let receiver = self.shared.receiver(partition, self.index, context)?;
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let stream = futures::stream::unfold(receiver, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .map(move |item| {
            if let Ok(batch) = &item {
                baseline.record_output(batch.num_rows());
            }
            item
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.shared.input.schema(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// A table provider whose scan is one consumer of a [`SharedScan`].
///
/// Filters are not pushed (DataFusion keeps them as a `FilterExec` above);
/// a projection is a `ProjectionExec` over the shared leaf.
#[derive(Debug)]
pub struct SharedScanTable {
    shared: Arc<SharedScan>,
    index: usize,
}

impl SharedScanTable {
    /// Consumer `index` (0-based) of `shared`.
    pub fn new(shared: Arc<SharedScan>, index: usize) -> Self {
        Self { shared, index }
    }
}

#[async_trait]
impl TableProvider for SharedScanTable {
    fn schema(&self) -> SchemaRef {
        self.shared.input.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let leaf: Arc<dyn ExecutionPlan> = Arc::new(self.shared.consumer(self.index));
        let Some(projection) = projection else {
            return Ok(leaf);
        };
        let schema = leaf.schema();
        let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = projection
            .iter()
            .map(|&i| {
                let name = schema.field(i).name().clone();
                (
                    Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>,
                    name,
                )
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, leaf)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::collect;

    fn input(batches: usize) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let data: Vec<RecordBatch> = (0..batches)
            .map(|i| {
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(Int64Array::from(vec![i as i64; 10]))],
                )
                .unwrap()
            })
            .collect();
        MemorySourceConfig::try_new_exec(&[data], schema, None).unwrap()
    }

    #[tokio::test]
    async fn every_consumer_sees_every_row_of_one_read() {
        let shared = Arc::new(SharedScan::new("t", input(50), 3));
        let ctx = Arc::new(TaskContext::default());
        let runs = (0..3).map(|i| {
            let leaf: Arc<dyn ExecutionPlan> = Arc::new(shared.consumer(i));
            collect(leaf, Arc::clone(&ctx))
        });
        let results = futures::future::try_join_all(runs).await.unwrap();
        for batches in results {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, 500);
        }
        assert_eq!(shared.rows_produced(), 500);
    }

    #[tokio::test]
    async fn a_consumer_that_stops_early_does_not_block_the_others() {
        let shared = Arc::new(SharedScan::new("t", input(50), 2));
        let ctx = Arc::new(TaskContext::default());
        let early = {
            let leaf = shared.consumer(0);
            let mut stream = leaf.execute(0, Arc::clone(&ctx)).unwrap();
            stream.next().await.unwrap().unwrap()
            // `stream` is dropped here: the consumer is done.
        };
        assert_eq!(early.num_rows(), 10);
        let leaf: Arc<dyn ExecutionPlan> = Arc::new(shared.consumer(1));
        let rows: usize = collect(leaf, ctx)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 500);
    }
}
