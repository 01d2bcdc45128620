//! Cutting a physical plan into a stage graph, and making each task's own
//! instance of a stage plan.
//!
//! A plan is cut at its exchanges:
//! - a hash or range `RepartitionExec` becomes a map stage whose root is a
//!   [`ShuffleWriterExec`] with that partitioning; the consumer reads it with
//!   a [`ShuffleReaderExec`] declaring the same hash partitioning;
//! - `CoalescePartitionsExec` becomes a map stage writing one partition; the
//!   coalesce stays in the consumer, over a one-partition reader;
//! - `SortPreservingMergeExec` becomes a map stage that merges each task's
//!   partitions into one sorted run; the consumer merges the runs.
//!
//! Round-robin repartitions stay inside their stage.
//!
//! A stage's task count is bounded by the smallest split of its leaves
//! (file groups, shuffle partitions). The build side of a join that never
//! emits unmatched build rows (inner and right-side joins) is *replicated*:
//! every task reads all of it (a broadcast). A one-partition input feeding
//! anything else forces one task, as does a null-aware anti join.
//!
//! Each task runs its own instance of the stage plan, rebuilt node by node
//! with fresh execution state, with its leaves cut down to its share. In
//! staged batch mode its exchanges read and write the shuffle store; in
//! streaming mode they are the ends of live channels ([`LiveExchanges`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, displayable};
use sluice_connectors::sink::SinkExec;
use sluice_shuffle::{
    AttemptId, AttemptIndex, LiveExchange, LiveReaderExec, LiveWriterExec, ReadSpec, ShuffleOutput,
    ShuffleReaderExec, ShuffleStore, ShuffleWriterExec, WriterOptions,
};

/// What a stage's tasks produce.
#[derive(Debug, Clone)]
pub enum StageOutput {
    /// Shuffle output read by a downstream stage.
    Shuffle(ShuffleOutput),
    /// The job's result: rows for the client, or commit messages of a sink.
    Result,
}

/// One stage of a job.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Stage id, unique in the job; upstream stages have smaller ids.
    pub id: u32,
    /// The stage plan template. Map stages have a [`ShuffleWriterExec`] root.
    pub plan: Arc<dyn ExecutionPlan>,
    /// Stages this one reads.
    pub inputs: Vec<u32>,
    /// Number of tasks.
    pub tasks: usize,
    /// What the tasks produce.
    pub output: StageOutput,
}

/// How a graph's stages exchange rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExchangeMode {
    /// Staged batch: a stage runs once its inputs are committed to the
    /// shuffle store.
    #[default]
    Staged,
    /// Streaming: every task runs at once; exchanges are live, bounded
    /// channels from producer tasks to consumer tasks.
    Live,
}

/// A job's stages, upstream first; the last is the result stage.
#[derive(Debug, Clone)]
pub struct StageGraph {
    /// The stages, in an order where every stage comes after its inputs.
    pub stages: Vec<Stage>,
    /// How the stages exchange rows.
    pub mode: ExchangeMode,
}

/// How to cut.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// Most tasks a stage may have.
    pub max_tasks: usize,
    /// Where map stages write.
    pub store: ShuffleStore,
    /// Writer settings.
    pub writer: WriterOptions,
    /// The result stage streams rows to one client: run it as one task.
    pub single_result_task: bool,
    /// How the stages exchange rows (only shown; the cut is the same).
    pub mode: ExchangeMode,
}

impl StageGraph {
    /// Cuts `plan` into stages.
    pub fn cut(plan: Arc<dyn ExecutionPlan>, options: &StageOptions) -> Result<Self> {
        let mut cutter = Cutter {
            options,
            stages: Vec::new(),
        };
        let root = cutter.cut(plan)?;
        let tasks = if options.single_result_task {
            1
        } else {
            task_count(&root, options.max_tasks)
        };
        let id = cutter.stages.len() as u32;
        let inputs = reader_stages(&root);
        cutter.stages.push(Stage {
            id,
            plan: root,
            inputs,
            tasks,
            output: StageOutput::Result,
        });
        Ok(Self {
            stages: cutter.stages,
            mode: options.mode,
        })
    }

    /// Tasks of each stage, by stage id.
    pub fn task_counts(&self) -> HashMap<u32, usize> {
        self.stages.iter().map(|s| (s.id, s.tasks)).collect()
    }

    /// Task slots a streaming job takes: a slot holds one task of every
    /// stage (as Flink's slot sharing does), so the widest stage decides.
    pub fn slots_needed(&self) -> usize {
        self.stages.iter().map(|s| s.tasks).max().unwrap_or(1)
    }

    /// How many copies of its output each map stage sends in streaming
    /// mode: one per consumer task when the consumer replicates it (the
    /// build side of a broadcast join), else one.
    pub fn live_copies(&self) -> HashMap<u32, usize> {
        fn walk(
            plan: &Arc<dyn ExecutionPlan>,
            tasks: usize,
            replicated: bool,
            out: &mut HashMap<u32, usize>,
        ) {
            if let Some(r) = plan.downcast_ref::<ShuffleReaderExec>() {
                let copies = if replicated && tasks > 1 { tasks } else { 1 };
                out.insert(r.stage(), copies);
                return;
            }
            let replicate_left = replicates_build_side(plan.as_ref());
            for (i, c) in plan.children().into_iter().enumerate() {
                walk(c, tasks, replicated || (replicate_left && i == 0), out);
            }
        }
        let mut out = HashMap::new();
        for stage in &self.stages {
            walk(&stage.plan, stage.tasks, false, &mut out);
        }
        out
    }

    /// The result stage.
    pub fn result_stage(&self) -> &Stage {
        self.stages.last().expect("a graph has a result stage")
    }

    /// Text for `EXPLAIN` and `--dry-run`: each stage with its task count,
    /// output partitioning and plan.
    pub fn display(&self) -> String {
        let mut out = String::new();
        let mode = match self.mode {
            ExchangeMode::Staged => "batch (staged)",
            ExchangeMode::Live => "streaming (live exchanges)",
        };
        let _ = writeln!(out, "StageGraph: mode={mode}, stages={}", self.stages.len());
        for stage in &self.stages {
            let output = match &stage.output {
                StageOutput::Shuffle(s) => format!("shuffle {s}"),
                StageOutput::Result => "result".to_string(),
            };
            let inputs = if stage.inputs.is_empty() {
                "sources".to_string()
            } else {
                stage
                    .inputs
                    .iter()
                    .map(|i| format!("stage {i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                out,
                "Stage {}: tasks={}, output={output}, inputs={inputs}",
                stage.id, stage.tasks
            );
            for line in displayable(stage.plan.as_ref())
                .indent(true)
                .to_string()
                .lines()
            {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

struct Cutter<'a> {
    options: &'a StageOptions,
    stages: Vec<Stage>,
}

impl Cutter<'_> {
    fn cut(&mut self, node: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        // A recursive query feeds its own output back through a work table
        // shared by the operators below it: they stay in one task.
        if node.downcast_ref::<RecursiveQueryExec>().is_some() {
            return Ok(node);
        }
        let children = node
            .children()
            .into_iter()
            .map(|c| self.cut(Arc::clone(c)))
            .collect::<Result<Vec<_>>>()?;

        if let Some(r) = node.downcast_ref::<RepartitionExec>() {
            let partitioning = r.partitioning().clone();
            if matches!(
                partitioning,
                Partitioning::Hash(..) | Partitioning::Range(..)
            ) {
                let input = children
                    .into_iter()
                    .next()
                    .expect("repartition has an input");
                let n = partitioning.partition_count();
                let hash = match &partitioning {
                    Partitioning::Hash(exprs, _) => Some(exprs.clone()),
                    _ => None,
                };
                let stage = self.add_map_stage(input, ShuffleOutput::Partitioned(partitioning));
                let reader: Arc<dyn ExecutionPlan> = Arc::new(ShuffleReaderExec::new(
                    stage,
                    ReadSpec::Partitions((0..n).collect()),
                    self.options.store.clone(),
                    hash,
                    unordered(r.properties().equivalence_properties()),
                ));
                // An order-preserving repartition, or one of a single input
                // partition (which keeps its order in DataFusion): blocks of
                // several writers interleave, so sort again.
                if let Some(ordering) = r.properties().output_ordering() {
                    return Ok(Arc::new(
                        SortExec::new(ordering.clone(), reader).with_preserve_partitioning(true),
                    ));
                }
                return Ok(reader);
            }
        }

        if let Some(c) = node.downcast_ref::<CoalescePartitionsExec>() {
            let input = children.into_iter().next().expect("coalesce has an input");
            if input.output_partitioning().partition_count() <= 1 {
                return Ok(Arc::new(
                    CoalescePartitionsExec::new(input).with_fetch(c.fetch()),
                ));
            }
            let eq = unordered(input.properties().equivalence_properties());
            let stage = self.add_map_stage(input, ShuffleOutput::Single);
            let reader = Arc::new(ShuffleReaderExec::new(
                stage,
                ReadSpec::Partitions(vec![0]),
                self.options.store.clone(),
                None,
                eq,
            ));
            return Ok(Arc::new(
                CoalescePartitionsExec::new(reader).with_fetch(c.fetch()),
            ));
        }

        if let Some(m) = node.downcast_ref::<SortPreservingMergeExec>() {
            let input = children.into_iter().next().expect("merge has an input");
            if input.output_partitioning().partition_count() <= 1 {
                return Ok(Arc::new(
                    SortPreservingMergeExec::new(m.expr().clone(), input).with_fetch(m.fetch()),
                ));
            }
            // Each task merges its own partitions into one sorted run.
            let local: Arc<dyn ExecutionPlan> = Arc::new(
                SortPreservingMergeExec::new(m.expr().clone(), input).with_fetch(m.fetch()),
            );
            let schema = local.schema();
            let stage = self.add_map_stage(local, ShuffleOutput::Single);
            let runs = self.stages[stage as usize].tasks;
            let eq = EquivalenceProperties::new_with_orderings(schema, [m.expr().clone()]);
            let reader = Arc::new(ShuffleReaderExec::new(
                stage,
                ReadSpec::MapTasks((0..runs).collect()),
                self.options.store.clone(),
                None,
                eq,
            ));
            return Ok(Arc::new(
                SortPreservingMergeExec::new(m.expr().clone(), reader).with_fetch(m.fetch()),
            ));
        }

        if children.is_empty() {
            return Ok(node);
        }
        node.replace_children(children, recompute())
    }

    fn add_map_stage(&mut self, input: Arc<dyn ExecutionPlan>, output: ShuffleOutput) -> u32 {
        let id = self.stages.len() as u32;
        let tasks = task_count(&input, self.options.max_tasks);
        let inputs = reader_stages(&input);
        let plan = Arc::new(ShuffleWriterExec::new(
            input,
            output.clone(),
            self.options.store.clone(),
            self.options.writer,
        ));
        self.stages.push(Stage {
            id,
            plan,
            inputs,
            tasks,
            output: StageOutput::Shuffle(output),
        });
        id
    }
}

fn reader_stages(plan: &Arc<dyn ExecutionPlan>) -> Vec<u32> {
    let mut out = Vec::new();
    collect_readers(plan, &mut out);
    out.sort_unstable();
    out.dedup();
    out
}

fn collect_readers(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<u32>) {
    if let Some(r) = plan.downcast_ref::<ShuffleReaderExec>() {
        out.push(r.stage());
    }
    for c in plan.children() {
        collect_readers(c, out);
    }
}

/// True for joins whose build (left) side may be copied to every task:
/// they never emit unmatched build-side rows, so copies cannot duplicate.
fn replicates_build_side(plan: &dyn ExecutionPlan) -> bool {
    let broadcastable = |t: &JoinType| {
        matches!(
            t,
            JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
        )
    };
    if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
        return *j.partition_mode() == PartitionMode::CollectLeft
            && !j.null_aware
            && broadcastable(j.join_type());
    }
    if let Some(j) = plan.downcast_ref::<NestedLoopJoinExec>() {
        return broadcastable(j.join_type());
    }
    plan.downcast_ref::<CrossJoinExec>().is_some()
}

/// A node that must see all of its input in one task.
fn forces_single_task(plan: &dyn ExecutionPlan) -> bool {
    plan.downcast_ref::<HashJoinExec>()
        .is_some_and(|j| j.null_aware)
        || plan.downcast_ref::<RecursiveQueryExec>().is_some()
}

/// How many pieces a leaf splits into, or `None` when it is copied whole.
fn leaf_units(plan: &dyn ExecutionPlan) -> usize {
    if let Some(r) = plan.downcast_ref::<ShuffleReaderExec>() {
        return match r.spec() {
            ReadSpec::Partitions(p) => p.len(),
            // Sorted runs are merged by one consumer.
            ReadSpec::MapTasks(_) => 1,
        };
    }
    if let Some(config) = file_scan_config(plan) {
        return config.file_groups.len().max(1);
    }
    1
}

fn file_scan_config(plan: &dyn ExecutionPlan) -> Option<&FileScanConfig> {
    plan.downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<FileScanConfig>()
}

/// Task count of a stage plan: the smallest split of its split leaves,
/// capped by `max_tasks`.
fn task_count(plan: &Arc<dyn ExecutionPlan>, max_tasks: usize) -> usize {
    let mut units = usize::MAX;
    let mut single = false;
    walk_units(plan.as_ref(), false, &mut units, &mut single);
    if single || units == usize::MAX {
        return 1;
    }
    units.min(max_tasks).max(1)
}

fn walk_units(plan: &dyn ExecutionPlan, replicated: bool, units: &mut usize, single: &mut bool) {
    if forces_single_task(plan) {
        *single = true;
    }
    let children = plan.children();
    if children.is_empty() {
        if !replicated {
            *units = (*units).min(leaf_units(plan));
        }
        return;
    }
    let replicate_left = replicates_build_side(plan);
    for (i, child) in children.into_iter().enumerate() {
        walk_units(
            child.as_ref(),
            replicated || (replicate_left && i == 0),
            units,
            single,
        );
    }
}

/// What a task instance is made from.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Stage id.
    pub stage: u32,
    /// Task index.
    pub task: usize,
    /// Tasks in the stage.
    pub tasks: usize,
    /// The attempt this instance runs.
    pub attempt: AttemptId,
    /// Committed output of every upstream stage: one index per task.
    pub inputs: HashMap<u32, Arc<Vec<Arc<AttemptIndex>>>>,
}

/// The task's own instance of `plan`: every node rebuilt with fresh
/// execution state, leaves cut down to the task's share, the writer bound
/// to the attempt.
pub fn task_instance(
    plan: &Arc<dyn ExecutionPlan>,
    spec: &TaskSpec,
) -> Result<Arc<dyn ExecutionPlan>> {
    instance(plan, &Placement::of(spec), &Committed(spec), false)
}

/// Where a task sits in its stage.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Stage id.
    pub stage: u32,
    /// Task index.
    pub task: usize,
    /// Tasks in the stage.
    pub tasks: usize,
}

impl Placement {
    fn of(spec: &TaskSpec) -> Self {
        Self {
            stage: spec.stage,
            task: spec.task,
            tasks: spec.tasks,
        }
    }
}

/// What a task instance's exchange leaves and root become.
pub trait Exchanges {
    /// The instance of `reader` exposing `read`; `copy` is the copy of a
    /// replicated input this task reads (0 when not replicated).
    fn reader(
        &self,
        reader: &ShuffleReaderExec,
        read: ReadSpec,
        copy: usize,
    ) -> Result<Arc<dyn ExecutionPlan>>;

    /// The instance of `writer` over the task's `input`.
    fn writer(
        &self,
        writer: &ShuffleWriterExec,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>>;

    /// The sink attempt number of this task.
    fn attempt(&self) -> u32;
}

/// Staged batch: readers read committed attempts, writers write one.
struct Committed<'a>(&'a TaskSpec);

impl Exchanges for Committed<'_> {
    fn reader(
        &self,
        r: &ShuffleReaderExec,
        read: ReadSpec,
        _copy: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let spec = self.0;
        let inputs = spec.inputs.get(&r.stage()).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "stage {} runs before its input stage {} committed",
                spec.stage,
                r.stage()
            ))
        })?;
        Ok(Arc::new(r.instance(read, inputs)))
    }

    fn writer(
        &self,
        w: &ShuffleWriterExec,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(w.with_attempt(input, self.0.attempt.clone())))
    }

    fn attempt(&self) -> u32 {
        self.0.attempt.attempt
    }
}

/// Streaming: readers and writers are the ends of one job's live channels.
#[derive(Debug)]
pub struct LiveExchanges<'a> {
    /// The job's channels.
    pub exchange: &'a Arc<LiveExchange>,
    /// The stage graph's task counts ([`StageGraph::task_counts`]).
    pub tasks: &'a HashMap<u32, usize>,
    /// Copies each map stage sends ([`StageGraph::live_copies`]).
    pub copies: &'a HashMap<u32, usize>,
    /// The task the instance is for.
    pub at: Placement,
    /// Where each (stage, task) of the job runs, by its process's live
    /// service URL, when the tasks run in several processes; `here` is the
    /// URL of the process this instance runs in (`None`: the coordinator,
    /// which runs no map task). Without it every task is in this process.
    pub placement: Option<&'a LivePlacement>,
}

/// Where a streaming job's tasks run.
#[derive(Debug, Clone, Default)]
pub struct LivePlacement {
    /// The live service URL of the process running each (stage, task).
    pub urls: HashMap<(u32, usize), String>,
}

impl LivePlacement {
    /// The URL of the process running `task` of `stage`.
    pub fn url(&self, stage: u32, task: usize) -> Option<&str> {
        self.urls.get(&(stage, task)).map(String::as_str)
    }
}

impl LiveExchanges<'_> {
    /// Where the map task `task` of `stage` runs, seen from this instance:
    /// `None` in this process.
    fn source(&self, stage: u32, task: usize) -> Option<String> {
        let placement = self.placement?;
        let here = placement.url(self.at.stage, self.at.task);
        placement
            .url(stage, task)
            .filter(|url| Some(*url) != here)
            .map(str::to_string)
    }
}

impl Exchanges for LiveExchanges<'_> {
    fn reader(
        &self,
        r: &ShuffleReaderExec,
        read: ReadSpec,
        copy: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let upstream = self.tasks.get(&r.stage()).copied().ok_or_else(|| {
            DataFusionError::Internal(format!("stage {} is not in the graph", r.stage()))
        })?;
        let sources = (0..upstream).map(|t| self.source(r.stage(), t)).collect();
        Ok(Arc::new(LiveReaderExec::try_new(
            r,
            read,
            copy,
            sources,
            Arc::clone(self.exchange),
        )?))
    }

    fn writer(
        &self,
        w: &ShuffleWriterExec,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let copies = self.copies.get(&self.at.stage).copied().unwrap_or(1);
        Ok(Arc::new(LiveWriterExec::try_new(
            input,
            w.output().clone(),
            self.at.stage,
            self.at.task,
            copies,
            Arc::clone(self.exchange),
        )?))
    }

    fn attempt(&self) -> u32 {
        0
    }
}

/// The instance of `plan` for the task at `at`, with its exchanges made by
/// `exchanges` (see [`task_instance`] for staged batch mode).
pub fn task_instance_with(
    plan: &Arc<dyn ExecutionPlan>,
    at: &Placement,
    exchanges: &dyn Exchanges,
) -> Result<Arc<dyn ExecutionPlan>> {
    instance(plan, at, exchanges, false)
}

fn share<T: Clone>(items: &[T], at: &Placement) -> Vec<T> {
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| i % at.tasks == at.task)
        .map(|(_, x)| x.clone())
        .collect()
}

fn instance(
    plan: &Arc<dyn ExecutionPlan>,
    at: &Placement,
    exchanges: &dyn Exchanges,
    replicated: bool,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(r) = plan.downcast_ref::<ShuffleReaderExec>() {
        let read = match r.spec() {
            ReadSpec::Partitions(p) if !replicated && at.tasks > 1 => {
                ReadSpec::Partitions(share(p, at))
            }
            other => other.clone(),
        };
        // Matches `StageGraph::live_copies`.
        let copy = if replicated && at.tasks > 1 {
            at.task
        } else {
            0
        };
        return exchanges.reader(r, read, copy);
    }
    if let Some(config) = file_scan_config(plan.as_ref()) {
        let groups: Vec<FileGroup> = if replicated || at.tasks == 1 {
            config.file_groups.clone()
        } else {
            share(&config.file_groups, at)
        };
        let config = FileScanConfigBuilder::from(config.clone())
            .with_file_groups(groups)
            .build();
        return Ok(DataSourceExec::from_data_source(config));
    }
    if let Some(w) = plan.downcast_ref::<ShuffleWriterExec>() {
        let input = instance(w.input(), at, exchanges, replicated)?;
        return exchanges.writer(w, input);
    }
    let replicate_left = replicates_build_side(plan.as_ref());
    let children = plan
        .children()
        .into_iter()
        .enumerate()
        .map(|(i, c)| instance(c, at, exchanges, replicated || (replicate_left && i == 0)))
        .collect::<Result<Vec<_>>>()?;
    if let Some(s) = plan.downcast_ref::<SinkExec>() {
        let input = children.into_iter().next().expect("sink has an input");
        return Ok(Arc::new(s.instance(
            input,
            (at.task as u64) << 32,
            exchanges.attempt(),
        )));
    }
    let rebuilt = if children.is_empty() {
        Arc::clone(plan)
    } else {
        Arc::clone(plan).replace_children(children, recompute())?
    };
    rebuilt.reset_state()
}

/// Children replaced, plan properties recomputed from them.
fn recompute() -> datafusion::physical_plan::ReplaceChildrenOptions {
    datafusion::physical_plan::ReplaceChildrenOptions::new(
        datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
    )
}

/// What a shuffle reader knows of the rows the exchange it replaces
/// delivered: their constants and equal columns, which the operators above
/// were planned with (a window over `WHERE a = 1` partitions by a constant
/// and needs no sort), but no ordering, since the blocks of several writers
/// interleave.
fn unordered(eq: &EquivalenceProperties) -> EquivalenceProperties {
    let mut eq = eq.clone();
    eq.clear_orderings();
    eq.clear_per_partition_constants();
    eq
}
