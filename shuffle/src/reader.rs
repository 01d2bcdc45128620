//! [`ShuffleReaderExec`]: a leaf that reads a committed upstream stage's
//! output from the shuffle store, by byte ranges of its attempts' blocks.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::format::{AttemptIndex, decode_block};
use crate::metrics::{GaugeGuard, ShuffleMetrics, shuffle_metrics};
use crate::store::ShuffleStore;

/// Which of the upstream stage's output a reader instance exposes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadSpec {
    /// Local partition `i` reads upstream partition `parts[i]` of every map task.
    Partitions(Vec<usize>),
    /// Local partition `i` reads partition 0 of map task `tasks[i]` alone
    /// (keeps each task's sorted run apart for a merge).
    MapTasks(Vec<usize>),
}

impl ReadSpec {
    /// Number of local partitions.
    pub fn len(&self) -> usize {
        match self {
            Self::Partitions(p) => p.len(),
            Self::MapTasks(t) => t.len(),
        }
    }

    /// True when the reader exposes no partition.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads an upstream stage's committed output.
///
/// A reader in a stage plan is a template naming its upstream stage; the
/// coordinator makes each task's instance with [`Self::instance`], which
/// names the partitions it reads and the committed attempts to read them from.
#[derive(Debug)]
pub struct ShuffleReaderExec {
    stage: u32,
    schema: SchemaRef,
    spec: ReadSpec,
    store: ShuffleStore,
    /// Hash expressions of the upstream output, when hash-partitioned.
    hash: Option<Vec<Arc<dyn PhysicalExpr>>>,
    eq: EquivalenceProperties,
    inputs: Option<Arc<Vec<Arc<AttemptIndex>>>>,
    metrics: ExecutionPlanMetricsSet,
    properties: Arc<PlanProperties>,
}

impl ShuffleReaderExec {
    /// A template reading stage `stage`, exposing `spec`.
    pub fn new(
        stage: u32,
        spec: ReadSpec,
        store: ShuffleStore,
        hash: Option<Vec<Arc<dyn PhysicalExpr>>>,
        eq: EquivalenceProperties,
    ) -> Self {
        let partitioning = match (&spec, &hash) {
            (ReadSpec::Partitions(p), Some(exprs)) => Partitioning::Hash(exprs.clone(), p.len()),
            _ => Partitioning::UnknownPartitioning(spec.len()),
        };
        let properties = Arc::new(PlanProperties::new(
            eq.clone(),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            stage,
            schema: Arc::clone(eq.schema()),
            spec,
            store,
            hash,
            eq,
            inputs: None,
            metrics: ExecutionPlanMetricsSet::new(),
            properties,
        }
    }

    /// The instance reading `spec` from the committed attempts `inputs`
    /// (one index per upstream task, in task order).
    pub fn instance(&self, spec: ReadSpec, inputs: Arc<Vec<Arc<AttemptIndex>>>) -> Self {
        let mut r = Self::new(
            self.stage,
            spec,
            self.store.clone(),
            self.hash.clone(),
            self.eq.clone(),
        );
        r.inputs = Some(inputs);
        r
    }

    /// The upstream stage.
    pub fn stage(&self) -> u32 {
        self.stage
    }

    /// What this reader exposes.
    pub fn spec(&self) -> &ReadSpec {
        &self.spec
    }

    /// Schema of the rows read.
    pub fn schema_ref(&self) -> &SchemaRef {
        &self.schema
    }

    /// The store the upstream output is read from.
    pub fn store(&self) -> &ShuffleStore {
        &self.store
    }

    /// Hash expressions of the upstream output, when hash-partitioned.
    pub fn hash(&self) -> Option<&[Arc<dyn PhysicalExpr>]> {
        self.hash.as_deref()
    }

    /// Equivalence properties (orderings) the rows read carry.
    pub fn equivalence(&self) -> &EquivalenceProperties {
        &self.eq
    }

    /// The committed attempts an instance reads; `None` for a template.
    pub fn inputs(&self) -> Option<&Arc<Vec<Arc<AttemptIndex>>>> {
        self.inputs.as_ref()
    }

    fn blocks(&self, partition: usize) -> Result<Vec<(Path, u64, u64)>> {
        let Some(inputs) = &self.inputs else {
            return Err(DataFusionError::Internal(format!(
                "shuffle reader of stage {} executed before its inputs were committed",
                self.stage
            )));
        };
        let mut out = Vec::new();
        let mut add = |index: &AttemptIndex, p: usize| {
            let path = Path::from(index.data.as_str());
            for b in index.partitions.get(p).into_iter().flatten() {
                out.push((path.clone(), b.offset, b.len));
            }
        };
        match &self.spec {
            ReadSpec::Partitions(parts) => {
                let p = parts[partition];
                for index in inputs.iter() {
                    add(index, p);
                }
            }
            ReadSpec::MapTasks(tasks) => {
                let index = inputs.get(tasks[partition]).ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "stage {} has no task {}",
                        self.stage, tasks[partition]
                    ))
                })?;
                add(index, 0);
            }
        }
        Ok(out)
    }
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.spec {
            ReadSpec::Partitions(p) => write!(
                f,
                "ShuffleReaderExec: stage={}, partitions={}",
                self.stage,
                p.len()
            ),
            ReadSpec::MapTasks(t) => write!(
                f,
                "ShuffleReaderExec: stage={}, sorted runs={}",
                self.stage,
                t.len()
            ),
        }
    }
}

impl ExecutionPlan for ShuffleReaderExec {
    fn name(&self) -> &str {
        "ShuffleReaderExec"
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
        let blocks = self.blocks(partition)?;
        let store = Arc::clone(self.store.object_store());
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let bytes = MetricBuilder::new(&self.metrics).counter("bytes_read", partition);
        let fetch_time = MetricBuilder::new(&self.metrics).subset_time("fetch_time", partition);
        let active = GaugeGuard::new(&shuffle_metrics().active_readers);
        let stream = futures::stream::iter(blocks)
            .map(move |(path, offset, len)| {
                let store = Arc::clone(&store);
                let bytes = bytes.clone();
                let fetch_time = fetch_time.clone();
                async move {
                    let timer = fetch_time.timer();
                    let start = std::time::Instant::now();
                    let data = store
                        .get_range(&path, offset..offset + len)
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    timer.done();
                    let m = shuffle_metrics();
                    m.store_request(start);
                    ShuffleMetrics::add(&m.range_reads, 1);
                    ShuffleMetrics::add(&m.bytes_read, data.len() as u64);
                    bytes.add(data.len());
                    let batches = decode_block(data)?;
                    Ok::<_, DataFusionError>(futures::stream::iter(
                        batches.into_iter().map(Ok::<_, DataFusionError>),
                    ))
                }
            })
            // One block decoded ahead of the consumer: memory stays at two blocks.
            .buffered(2)
            .try_flatten()
            .inspect_ok(move |b| {
                // The stream holds the gauge up while it is open.
                let _ = &active;
                ShuffleMetrics::add(&shuffle_metrics().batches_out, 1);
                rows.add(b.num_rows())
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}
