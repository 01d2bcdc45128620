//! Lookup joins: enrich rows from a dimension table in a database, key by
//! key, instead of scanning the whole dimension.
//!
//! ```sql
//! SELECT ... FROM orders o
//! JOIN customers FOR SYSTEM_TIME AS OF o.proc_time AS c ON o.cust_id = c.id
//! ```
//!
//! 1. The front end parses `FOR SYSTEM_TIME AS OF` ([`crate::dialect`]) and
//!    [`rewrite_lookups`] turns the table reference into a call of the
//!    `__sluice_lookup` table function, so DataFusion cannot drop it.
//! 2. The function returns a [`LookupTableProvider`], which scans like the
//!    table itself but marks it as a lookup dimension.
//! 3. [`SluiceQueryPlanner`] replaces each optimized equi-join against such
//!    a table with a [`LookupJoinNode`], planned as a [`LookupJoinExec`].
//! 4. For each probe batch the operator answers keys from its LRU cache and
//!    fetches the others in one query: the dimension's plan with the keys
//!    pushed down as `key IN (...)`, which the Postgres and MySQL scans turn
//!    into SQL.
//!
//! Lookups read the dimension's current state when the batch is processed
//! (processing time): the `AS OF` expression is shown in `EXPLAIN` but not
//! evaluated.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{cast, concat_batches, filter_record_batch, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, JoinType, NullEquality, ScalarValue, plan_err};
use datafusion::datasource::{TableType, source_as_provider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown,
    UserDefinedLogicalNode, UserDefinedLogicalNodeCore, in_list,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties, collect,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, Ident, ObjectName, Statement, TableAlias,
    TableFactor, TableFunctionArgs as SqlTableFunctionArgs, TableVersion, Value, VisitMut,
    VisitorMut,
};
use futures::TryStreamExt;
use lru::LruCache;
use sluice_connectors::factory::ConnectorTable;
use sluice_connectors::lookup::LookupOptions;

use crate::error::{PlannerError, Result};

/// Name of the table function a lookup table reference becomes.
pub const LOOKUP_FUNCTION: &str = "__sluice_lookup";

/// Keys fetched by one lookup query, at most.
const KEYS_PER_QUERY: usize = 1000;

// ---------------------------------------------------------------------------
// Front end

/// Rewrites every `t FOR SYSTEM_TIME AS OF expr [AS a]` in `stmt` into
/// `__sluice_lookup('t', 'expr') AS a` (the alias defaults to the table
/// name), and rejects the other table versions the dialect parses.
pub(crate) fn rewrite_lookups(stmt: &mut Statement) -> Result<()> {
    match stmt.visit(&mut LookupRewriter) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(e) => Err(e),
    }
}

struct LookupRewriter;

impl VisitorMut for LookupRewriter {
    type Break = PlannerError;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<PlannerError> {
        let TableFactor::Table {
            name,
            alias,
            args,
            version,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let Some(v) = version.take() else {
            return ControlFlow::Continue(());
        };
        let at = name
            .0
            .first()
            .and_then(|p| p.as_ident())
            .map(|i| i.span.start);
        let error = |message: String| PlannerError::Syntax {
            message,
            line: at.map(|s| s.line),
            column: at.map(|s| s.column),
        };
        let as_of = match v {
            TableVersion::ForSystemTimeAsOf(e) => e,
            other => {
                return ControlFlow::Break(error(format!(
                    "'{name} {other}' is not supported: Sluice reads a table's current state; \
                     only lookup joins use a table version, written \
                     JOIN {name} FOR SYSTEM_TIME AS OF <probe>.proc_time AS d ON ..."
                )));
            }
        };
        if args.is_some() {
            return ControlFlow::Break(error(format!(
                "FOR SYSTEM_TIME AS OF applies to a declared table, not to the table function {name}"
            )));
        }
        let table = match crate::session::table_key(name, crate::session::DEFAULT_SCHEMA) {
            Ok(t) => t,
            Err(e) => return ControlFlow::Break(e),
        };
        if alias.is_none() {
            *alias = Some(TableAlias {
                explicit: true,
                name: Ident::new(table.clone()),
                columns: vec![],
                at: None,
            });
        }
        let literal = |s: String| {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::value(
                Value::SingleQuotedString(s),
            )))
        };
        *name = ObjectName::from(vec![Ident::new(LOOKUP_FUNCTION)]);
        *args = Some(SqlTableFunctionArgs {
            args: vec![literal(table), literal(as_of.to_string())],
            settings: None,
        });
        ControlFlow::Continue(())
    }
}

/// A table bound in a session: the DDL it was bound from, and the table.
pub(crate) type BoundTable = (String, Arc<dyn ConnectorTable>);

/// The tables of a session, by name.
pub(crate) type BoundTables = Arc<Mutex<HashMap<String, BoundTable>>>;

/// `__sluice_lookup('table', 'as of')`: the session's table, marked as a
/// lookup dimension.
#[derive(Debug)]
pub(crate) struct LookupFunction {
    pub(crate) tables: BoundTables,
}

impl TableFunctionImpl for LookupFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let strings: Vec<String> = args
            .exprs()
            .iter()
            .filter_map(|e| match e {
                Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Some(s.clone()),
                _ => None,
            })
            .collect();
        let [name, as_of] = strings.as_slice() else {
            return plan_err!(
                "{LOOKUP_FUNCTION} is internal: write JOIN t FOR SYSTEM_TIME AS OF ... instead"
            );
        };
        let table = self
            .tables
            .lock()
            .expect("tables lock")
            .get(name)
            .map(|(_, t)| Arc::clone(t));
        let Some(table) = table else {
            return plan_err!(
                "table '{name}' of the lookup join (FOR SYSTEM_TIME AS OF) is not declared; \
                 declare it with CREATE TABLE {name} (...) WITH ('connector' = 'postgres' | 'mysql', ...)"
            );
        };
        let Some(options) = table.lookup_options() else {
            return plan_err!(
                "table '{name}' uses the {} connector, which cannot answer key lookups; \
                 FOR SYSTEM_TIME AS OF needs a postgres or mysql table. \
                 Remove FOR SYSTEM_TIME AS OF to join by scanning it",
                table.connector_name()
            );
        };
        Ok(Arc::new(LookupTableProvider {
            name: name.clone(),
            as_of: as_of.clone(),
            options,
            inner: table,
        }))
    }
}

/// A dimension table of a lookup join. Scans as the table itself.
#[derive(Debug)]
pub struct LookupTableProvider {
    name: String,
    as_of: String,
    options: LookupOptions,
    inner: Arc<dyn ConnectorTable>,
}

#[async_trait]
impl TableProvider for LookupTableProvider {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

/// The lookup dimension under `plan`, if `plan` is only projections,
/// filters and aliases over a scan of one.
fn lookup_dimension(plan: &LogicalPlan) -> Option<Arc<dyn TableProvider>> {
    match plan {
        LogicalPlan::Projection(p) => lookup_dimension(&p.input),
        LogicalPlan::Filter(f) => lookup_dimension(&f.input),
        LogicalPlan::SubqueryAlias(a) => lookup_dimension(&a.input),
        LogicalPlan::TableScan(s) => {
            let provider = source_as_provider(&s.source).ok()?;
            provider.is::<LookupTableProvider>().then_some(provider)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Planning

/// Sluice's query planner: DataFusion's, plus lookup joins.
#[derive(Debug, Default)]
pub struct SluiceQueryPlanner;

#[async_trait]
impl QueryPlanner for SluiceQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = plan_lookup_joins(logical_plan.clone())?;
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(LookupJoinPlanner)])
            .create_physical_plan(&plan, session)
            .await
    }
}

/// Replaces equi-joins against lookup dimensions with [`LookupJoinNode`]s;
/// a lookup dimension used any other way is an error.
fn plan_lookup_joins(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    let plan = plan
        .transform_up(|node| match node {
            LogicalPlan::Join(join) => {
                let dim_on_right = if lookup_dimension(&join.right).is_some()
                    && matches!(join.join_type, JoinType::Inner | JoinType::Left)
                {
                    true
                } else if lookup_dimension(&join.left).is_some()
                    && matches!(join.join_type, JoinType::Inner | JoinType::Right)
                {
                    false
                } else {
                    return Ok(Transformed::no(LogicalPlan::Join(join)));
                };
                if join.on.is_empty() || join.null_equality != NullEquality::NullEqualsNothing {
                    return Ok(Transformed::no(LogicalPlan::Join(join)));
                }
                let (probe, dim) = if dim_on_right {
                    (join.left, join.right)
                } else {
                    (join.right, join.left)
                };
                let provider = lookup_dimension(&dim).expect("checked above");
                let table = provider
                    .downcast_ref::<LookupTableProvider>()
                    .expect("checked above");
                let keys = join
                    .on
                    .into_iter()
                    .map(|(l, r)| if dim_on_right { (l, r) } else { (r, l) })
                    .collect();
                let node = LookupJoinNode {
                    probe: probe.as_ref().clone(),
                    dim: dim.as_ref().clone(),
                    keys,
                    filter: join.filter,
                    join_type: join.join_type,
                    dim_on_right,
                    schema: join.schema,
                    table: table.name.clone(),
                    as_of: table.as_of.clone(),
                    options: table.options,
                };
                Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                    node: Arc::new(node),
                })))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let mut misplaced = None;
    plan.apply(|node| {
        if let LogicalPlan::TableScan(s) = node
            && let Ok(p) = source_as_provider(&s.source)
            && let Some(t) = p.downcast_ref::<LookupTableProvider>()
        {
            misplaced = Some(t.name.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if let Some(name) = misplaced {
        return plan_err!(
            "the lookup table '{name}' (FOR SYSTEM_TIME AS OF) must be the looked-up side of \
             an equality join: write FROM probe p [LEFT] JOIN {name} FOR SYSTEM_TIME AS OF \
             p.proc_time AS d ON p.key = d.key; remove FOR SYSTEM_TIME AS OF to scan it instead"
        );
    }
    Ok(plan)
}

/// A join answered by key lookups against a dimension table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupJoinNode {
    /// The side whose rows are enriched.
    probe: LogicalPlan,
    /// The dimension: projections and filters over its scan. Not an input:
    /// it is planned anew, with the keys pushed down, for each lookup.
    dim: LogicalPlan,
    /// `(probe key, dimension key)` pairs.
    keys: Vec<(Expr, Expr)>,
    /// Further join conditions, over the join's output.
    filter: Option<Expr>,
    join_type: JoinType,
    /// Whether the dimension's columns come after the probe's.
    dim_on_right: bool,
    schema: DFSchemaRef,
    table: String,
    as_of: String,
    options: LookupOptions,
}

impl PartialOrd for LookupJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for LookupJoinNode {
    fn name(&self) -> &str {
        "LookupJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.probe]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let on: Vec<String> = self
            .keys
            .iter()
            .map(|(p, d)| format!("{p} = {d}"))
            .collect();
        write!(
            f,
            "LookupJoin: table={}, join_type={}, on=[{}]",
            self.table,
            self.join_type,
            on.join(", ")
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let [probe] = <[LogicalPlan; 1]>::try_from(inputs)
            .map_err(|_| DataFusionError::Internal("LookupJoin has one input".into()))?;
        Ok(Self {
            probe,
            ..self.clone()
        })
    }
}

/// Plans [`LookupJoinNode`]s.
#[derive(Debug)]
struct LookupJoinPlanner;

#[async_trait]
impl ExtensionPlanner for LookupJoinPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<LookupJoinNode>() else {
            return Ok(None);
        };
        let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
            return plan_err!("lookup joins need a DataFusion session state");
        };
        let [probe] = physical_inputs else {
            return plan_err!("LookupJoin has one input");
        };
        let props = state.execution_props();
        let physical = |e: &Expr, schema: &datafusion::common::DFSchema| {
            datafusion::physical_expr::create_physical_expr(e, schema, props, planning_ctx)
        };
        let probe_keys = node
            .keys
            .iter()
            .map(|(p, _)| physical(p, node.probe.schema()))
            .collect::<DfResult<Vec<_>>>()?;
        let dim_keys = node
            .keys
            .iter()
            .map(|(_, d)| physical(d, node.dim.schema()))
            .collect::<DfResult<Vec<_>>>()?;
        let filter = node
            .filter
            .as_ref()
            .map(|f| physical(f, &node.schema))
            .transpose()?;
        let dim_schema = Arc::new(node.dim.schema().as_arrow().clone());
        let key_types = dim_keys
            .iter()
            .map(|k| k.data_type(&dim_schema))
            .collect::<DfResult<Vec<_>>>()?;
        let lookup = Lookup {
            table: node.table.clone(),
            as_of: node.as_of.clone(),
            options: node.options,
            dim_plan: node.dim.clone(),
            dim_key_exprs: node.keys.iter().map(|(_, d)| d.clone()).collect(),
            dim_keys,
            probe_keys,
            key_converter: RowConverter::new(
                key_types.iter().cloned().map(SortField::new).collect(),
            )?,
            row_converter: RowConverter::new(
                dim_schema
                    .fields()
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?,
            key_types,
            dim_schema,
            state: Box::new(state.clone()),
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(node.options.cache_max_rows).unwrap_or(NonZeroUsize::MIN),
            )),
        };
        let joiner = Joiner {
            lookup,
            join_type: node.join_type,
            dim_on_right: node.dim_on_right,
            filter,
            schema: Arc::new(node.schema.as_arrow().clone()),
            on: node
                .keys
                .iter()
                .map(|(p, d)| format!("({p}, {d})"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        Ok(Some(Arc::new(LookupJoinExec::new(
            Arc::clone(probe),
            Arc::new(joiner),
        ))))
    }
}

// ---------------------------------------------------------------------------
// Execution

/// What every partition of a lookup join shares: how to fetch keys, and
/// the cache.
struct Lookup {
    table: String,
    as_of: String,
    options: LookupOptions,
    dim_plan: LogicalPlan,
    dim_key_exprs: Vec<Expr>,
    dim_keys: Vec<Arc<dyn PhysicalExpr>>,
    probe_keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    key_converter: RowConverter,
    row_converter: RowConverter,
    dim_schema: SchemaRef,
    state: Box<SessionState>,
    /// Key (in the key converter's row format) -> the dimension's rows
    /// with that key (none: no such key).
    cache: Mutex<LruCache<Box<[u8]>, Cached>>,
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup")
            .field("table", &self.table)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

struct Cached {
    rows: Arc<Vec<OwnedRow>>,
    loaded: Instant,
}

/// Counters of one partition of a lookup join.
struct LookupMetrics {
    baseline: BaselineMetrics,
    cache_hits: Count,
    cache_misses: Count,
    lookup_queries: Count,
    lookup_rows: Count,
}

impl LookupMetrics {
    fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let counter = |name: &'static str| MetricBuilder::new(metrics).counter(name, partition);
        Self {
            baseline: BaselineMetrics::new(metrics, partition),
            cache_hits: counter("cache_hits"),
            cache_misses: counter("cache_misses"),
            lookup_queries: counter("lookup_queries"),
            lookup_rows: counter("lookup_rows"),
        }
    }
}

impl Lookup {
    fn probe_keys(&self, batch: &RecordBatch) -> DfResult<Vec<ArrayRef>> {
        self.probe_keys
            .iter()
            .zip(&self.key_types)
            .map(|(k, t)| {
                let a = k.evaluate(batch)?.into_array(batch.num_rows())?;
                Ok(if a.data_type() == t { a } else { cast(&a, t)? })
            })
            .collect()
    }

    /// The dimension rows of each distinct key of `keys` (no nulls), from
    /// the cache or from the database.
    async fn resolve(
        &self,
        keys: &[ArrayRef],
        rows: &arrow::row::Rows,
        wanted: &[usize],
        ctx: &Arc<TaskContext>,
        metrics: &LookupMetrics,
    ) -> DfResult<HashMap<Box<[u8]>, Arc<Vec<OwnedRow>>>> {
        let mut resolved: HashMap<Box<[u8]>, Arc<Vec<OwnedRow>>> = HashMap::new();
        let mut missing: Vec<usize> = vec![];
        let mut seen: HashSet<&[u8]> = HashSet::new();
        {
            let mut cache = self.cache.lock().expect("lookup cache lock");
            for &i in wanted {
                let key = rows.row(i);
                if !seen.insert(key.data()) {
                    continue;
                }
                let ttl = self.options.cache_ttl;
                let cached = match cache.get(key.as_ref()) {
                    Some(c) if ttl.is_none_or(|ttl| c.loaded.elapsed() < ttl) => {
                        Some(Arc::clone(&c.rows))
                    }
                    _ => None,
                };
                match cached {
                    Some(r) => {
                        metrics.cache_hits.add(1);
                        resolved.insert(key.as_ref().into(), r);
                    }
                    None => missing.push(i),
                }
            }
        }
        metrics.cache_misses.add(missing.len());
        for chunk in missing.chunks(KEYS_PER_QUERY) {
            let fetched = self.fetch(keys, chunk, ctx, metrics).await?;
            let loaded = Instant::now();
            let mut cache = self.cache.lock().expect("lookup cache lock");
            for &i in chunk {
                let key: Box<[u8]> = rows.row(i).as_ref().into();
                let found = Arc::new(fetched.get(&key).cloned().unwrap_or_default());
                if self.options.cache_max_rows > 0 {
                    cache.put(
                        key.clone(),
                        Cached {
                            rows: Arc::clone(&found),
                            loaded,
                        },
                    );
                }
                resolved.insert(key, found);
            }
        }
        Ok(resolved)
    }

    /// Runs the dimension's plan with `key IN (...)` for the keys at
    /// `indices`, and groups the rows by key.
    async fn fetch(
        &self,
        keys: &[ArrayRef],
        indices: &[usize],
        ctx: &Arc<TaskContext>,
        metrics: &LookupMetrics,
    ) -> DfResult<HashMap<Box<[u8]>, Vec<OwnedRow>>> {
        let mut predicate: Option<Expr> = None;
        for (expr, array) in self.dim_key_exprs.iter().zip(keys) {
            let mut values: Vec<ScalarValue> = indices
                .iter()
                .map(|&i| ScalarValue::try_from_array(array, i))
                .collect::<DfResult<_>>()?;
            values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
            values.dedup();
            let list = in_list(
                expr.clone(),
                values.into_iter().map(|v| Expr::Literal(v, None)).collect(),
                false,
            );
            predicate = Some(match predicate {
                Some(p) => p.and(list),
                None => list,
            });
        }
        let mut plan = LogicalPlanBuilder::from(self.dim_plan.clone());
        if let Some(p) = predicate {
            plan = plan.filter(p)?;
        }
        let plan = self.state.optimize(&plan.build()?)?;
        let physical = DefaultPhysicalPlanner::default()
            .create_physical_plan(&plan, self.state.as_ref())
            .await?;
        let batches = collect(physical, Arc::clone(ctx)).await.map_err(|e| {
            DataFusionError::Execution(format!(
                "lookup join: could not look up keys in '{}': {}",
                self.table,
                e.strip_backtrace()
            ))
        })?;
        metrics.lookup_queries.add(1);
        let mut grouped: HashMap<Box<[u8]>, Vec<OwnedRow>> = HashMap::new();
        for batch in batches {
            metrics.lookup_rows.add(batch.num_rows());
            let key_arrays = self
                .dim_keys
                .iter()
                .map(|k| k.evaluate(&batch)?.into_array(batch.num_rows()))
                .collect::<DfResult<Vec<_>>>()?;
            let key_rows = self.key_converter.convert_columns(&key_arrays)?;
            let all_rows = self.row_converter.convert_columns(batch.columns())?;
            for i in 0..batch.num_rows() {
                if key_arrays.iter().any(|a| a.is_null(i)) {
                    continue;
                }
                grouped
                    .entry(key_rows.row(i).as_ref().into())
                    .or_default()
                    .push(all_rows.row(i).owned());
            }
        }
        Ok(grouped)
    }
}

/// How probe batches are joined; shared by the partitions of a
/// [`LookupJoinExec`].
#[derive(Debug)]
struct Joiner {
    lookup: Lookup,
    join_type: JoinType,
    dim_on_right: bool,
    filter: Option<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    on: String,
}

/// Enriches each probe row with the dimension's rows of its key, looked up
/// through an LRU cache.
#[derive(Debug)]
pub struct LookupJoinExec {
    probe: Arc<dyn ExecutionPlan>,
    joiner: Arc<Joiner>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl LookupJoinExec {
    fn new(probe: Arc<dyn ExecutionPlan>, joiner: Arc<Joiner>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&joiner.schema)),
            Partitioning::UnknownPartitioning(probe.output_partitioning().partition_count()),
            EmissionType::Incremental,
            probe.boundedness(),
        ));
        Self {
            probe,
            joiner,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The dimension table.
    pub fn table(&self) -> &str {
        &self.joiner.lookup.table
    }
}

impl Joiner {
    /// Joins one probe batch.
    async fn join(
        &self,
        batch: RecordBatch,
        ctx: &Arc<TaskContext>,
        metrics: &LookupMetrics,
    ) -> DfResult<RecordBatch> {
        let lookup = &self.lookup;
        let n = batch.num_rows();
        let keys = lookup.probe_keys(&batch)?;
        let key_rows = lookup.key_converter.convert_columns(&keys)?;
        let wanted: Vec<usize> = (0..n)
            .filter(|&i| keys.iter().all(|a| !a.is_null(i)))
            .collect();
        let resolved = lookup
            .resolve(&keys, &key_rows, &wanted, ctx, metrics)
            .await?;
        let mut probe_idx: Vec<u32> = vec![];
        let mut dim_rows: Vec<arrow::row::Row<'_>> = vec![];
        for &i in &wanted {
            if let Some(found) = resolved.get(key_rows.row(i).as_ref()) {
                for r in found.iter() {
                    probe_idx.push(i as u32);
                    dim_rows.push(r.row());
                }
            }
        }
        let mut pairs = self.assemble(
            &batch,
            &probe_idx,
            lookup.row_converter.convert_rows(dim_rows)?,
        )?;
        let mut matched = vec![false; n];
        if let Some(filter) = &self.filter {
            let mask = filter.evaluate(&pairs)?.into_array(pairs.num_rows())?;
            let mask = mask
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>()
                .ok_or_else(|| DataFusionError::Internal("join filter is not boolean".into()))?
                .clone();
            for (k, &i) in probe_idx.iter().enumerate() {
                if mask.is_valid(k) && mask.value(k) {
                    matched[i as usize] = true;
                }
            }
            pairs = filter_record_batch(&pairs, &mask)?;
        } else {
            for &i in &probe_idx {
                matched[i as usize] = true;
            }
        }
        let outer = matches!(self.join_type, JoinType::Left | JoinType::Right);
        if !outer {
            return Ok(pairs);
        }
        let unmatched: Vec<u32> = (0..n as u32).filter(|&i| !matched[i as usize]).collect();
        if unmatched.is_empty() {
            return Ok(pairs);
        }
        let nulls: Vec<ArrayRef> = lookup
            .dim_schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), unmatched.len()))
            .collect();
        let padded = self.assemble(&batch, &unmatched, nulls)?;
        Ok(concat_batches(&self.schema, [&pairs, &padded])?)
    }

    /// The output batch of probe rows `probe_idx` beside `dim` columns.
    fn assemble(
        &self,
        batch: &RecordBatch,
        probe_idx: &[u32],
        dim: Vec<ArrayRef>,
    ) -> DfResult<RecordBatch> {
        let indices = UInt32Array::from(probe_idx.to_vec());
        let probe: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        let columns = if self.dim_on_right {
            probe.into_iter().chain(dim).collect()
        } else {
            dim.into_iter().chain(probe).collect()
        };
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(probe_idx.len())),
        )?)
    }
}

impl DisplayAs for LookupJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LookupJoinExec: strategy=lookup, table={}, join_type={}, on=[{}], as_of={}, {}",
            self.joiner.lookup.table,
            self.joiner.join_type,
            self.joiner.on,
            self.joiner.lookup.as_of,
            self.joiner.lookup.options
        )?;
        if let Some(filter) = &self.joiner.filter {
            write!(f, ", filter={filter}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LookupJoinExec {
    fn name(&self) -> &str {
        "LookupJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        for e in &self.joiner.lookup.probe_keys {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.probe]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [probe] = <[Arc<dyn ExecutionPlan>; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("LookupJoinExec has one child".into()))?;
        Ok(Arc::new(Self::new(probe, Arc::clone(&self.joiner))))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.probe.execute(partition, Arc::clone(&context))?;
        let metrics = Arc::new(LookupMetrics::new(&self.metrics, partition));
        let joiner = Arc::clone(&self.joiner);
        let stream = input.and_then(move |batch| {
            let joiner = Arc::clone(&joiner);
            let metrics = Arc::clone(&metrics);
            let context = Arc::clone(&context);
            async move {
                let timer = metrics.baseline.elapsed_compute().timer();
                let out = joiner.join(batch, &context, &metrics).await?;
                timer.done();
                // Rows, batches and bytes.
                Ok(out.record_output(&metrics.baseline))
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.joiner.schema),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

#[cfg(test)]
mod tests {
    use crate::parser::{SluiceStatement, parse_statement};

    fn rewritten(sql: &str) -> String {
        match parse_statement(sql).expect("parses") {
            SluiceStatement::DataFusion(s) => s.to_string(),
            SluiceStatement::Insert(i) => i.to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn lookup_tables_become_the_lookup_function() {
        let sql = rewritten(
            "SELECT * FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.proc_time AS c \
             ON o.cust_id = c.id",
        );
        assert!(
            sql.contains("__sluice_lookup('customers', 'o.proc_time') AS c"),
            "{sql}"
        );
        // Without an alias the table's name qualifies its columns.
        let sql = rewritten(
            "INSERT INTO t SELECT * FROM orders o LEFT JOIN Customers FOR SYSTEM_TIME AS OF \
             o.proc_time ON o.cust_id = customers.id",
        );
        assert!(
            sql.contains("__sluice_lookup('customers', 'o.proc_time') AS customers"),
            "{sql}"
        );
        // Plain joins are left alone.
        let sql = rewritten("SELECT * FROM orders o JOIN customers c ON o.cust_id = c.id");
        assert!(!sql.contains("__sluice_lookup"), "{sql}");
    }

    #[test]
    fn other_table_versions_are_rejected_with_their_position() {
        let e = parse_statement("SELECT *\nFROM t TIMESTAMP AS OF '2024-01-01'")
            .expect_err("rejected")
            .to_string();
        assert!(
            e.contains("not supported") && e.contains("FOR SYSTEM_TIME AS OF") && e.contains('2'),
            "{e}"
        );
    }
}
