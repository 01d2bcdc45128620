//! Reading a MySQL/MariaDB table or query.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::sql::unparser::dialect::MySqlDialect;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::sync::{Mutex, OnceCell, mpsc};

use super::types::{ColumnBuilder, MyKind, my_kind, type_display};
use super::{MyConnection, quote_ident, quote_table};
use crate::database::{
    PartitionSpec, PushdownRules, filter_sql, partition_queries, partition_spec, pushable,
    range_conditions, same_family, sql_type_name,
};
use crate::error::{ConnectorError, ErrorClass, Result};
use crate::factory::TableSpec;
use crate::options::TableOptions;
use crate::secrets::SecretResolver;
use crate::sink::{Sink, WriteMode};

/// MySQL's default collations ignore case and trailing spaces: `=` on
/// strings matches a superset of DataFusion's rows (re-checked), `<>` and
/// ordering would lose rows.
const PUSHDOWN: PushdownRules = PushdownRules {
    string_ordering: false,
    naive_timestamps: true,
    string_negation: false,
};

/// One column as the database has it and as Sluice exposes it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct MyColumn {
    pub(crate) name: String,
    pub(crate) kind: MyKind,
    /// The database type, for messages.
    pub(crate) db_type: String,
    /// Read as `CAST(name AS CHAR)` (an unmapped type read as text).
    pub(crate) as_text: bool,
}

/// What a table reads: a table or a query.
#[derive(Debug, Clone)]
enum Relation {
    Table(String),
    Query(String),
}

impl Relation {
    fn sql_source(&self) -> String {
        match self {
            Self::Table(t) => quote_table(t),
            Self::Query(q) => format!("({q}) AS _sluice_q"),
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Table(t) => t.clone(),
            Self::Query(_) => "(query)".into(),
        }
    }
}

/// A MySQL/MariaDB table or query declared with `'connector' = 'mysql'`.
#[derive(Debug)]
pub struct MySqlTable {
    spec: TableSpec,
    conn: MyConnection,
    relation: Relation,
    columns: Vec<MyColumn>,
    schema: SchemaRef,
    partition: Option<PartitionSpec>,
    lookup: crate::lookup::LookupOptions,
    snapshot: bool,
}

impl MySqlTable {
    /// How lookup joins against this table cache its rows.
    pub fn lookup_options(&self) -> crate::lookup::LookupOptions {
        self.lookup
    }

    /// Connects, reads the columns of the table or query and checks them
    /// against the declared ones (if any).
    pub async fn try_new(spec: &TableSpec, secrets: &SecretResolver) -> Result<Self> {
        let options = &spec.options;
        let conn = MyConnection::from_options(options, secrets)?;
        let relation = match (options.literal("table")?, options.literal("query")?) {
            (Some(t), None) => Relation::Table(t.to_string()),
            (None, Some(q)) => Relation::Query(q.to_string()),
            (Some(_), Some(_)) => {
                return Err(ConnectorError::InvalidOption {
                    key: "query".into(),
                    reason: "set either 'table' or 'query', not both".into(),
                });
            }
            (None, None) => {
                return Err(ConnectorError::MissingOption {
                    connector: "mysql".into(),
                    key: "table".into(),
                    hint: "set 'table' = 'table' (or 'database.table'), or 'query' = 'SELECT ...' \
                           for a source"
                        .into(),
                });
            }
        };
        let unmapped_as_text = match options.literal("types.unmapped")? {
            None | Some("error") => false,
            Some("text") => true,
            Some(v) => {
                return Err(ConnectorError::InvalidOption {
                    key: "types.unmapped".into(),
                    reason: format!("'{v}' is not 'error' or 'text'"),
                });
            }
        };
        let snapshot = match options.literal("scan.snapshot")? {
            None | Some("lock") => true,
            Some("none") => false,
            Some(v) => {
                return Err(ConnectorError::InvalidOption {
                    key: "scan.snapshot".into(),
                    reason: format!("'{v}' is not 'lock' or 'none'"),
                });
            }
        };
        let partition = partition_spec(options)?;
        let lookup = crate::lookup::LookupOptions::from_options(options)?;
        let label = relation.label();
        let target = format!("mysql table {label} at {conn}");
        let mut client = conn.connect().await?;
        let stmt = client
            .prep(format!("SELECT * FROM {} LIMIT 0", relation.sql_source()))
            .await
            .map_err(|e| conn.error(Some(&label), "read the columns of", e))?;
        let mut db_columns = vec![];
        for c in stmt.columns().iter() {
            let name = c.name_str().to_string();
            let (kind, as_text) = match my_kind(c) {
                Some(k) => (k, false),
                None if unmapped_as_text => (MyKind::Text, true),
                None => {
                    return Err(ConnectorError::SchemaMismatch {
                        target,
                        reason: format!(
                            "column \"{name}\" has type {}, which Sluice cannot map; convert it \
                             in a 'query' (e.g. CAST({name} AS CHAR)) or set 'types.unmapped' = \
                             'text'",
                            type_display(c),
                        ),
                    });
                }
            };
            db_columns.push((
                MyColumn {
                    name,
                    db_type: type_display(c),
                    kind,
                    as_text,
                },
                None,
            ));
        }
        let _ = client.close(stmt).await;
        drop(client);
        let columns: Vec<(MyColumn, Option<Field>)> = match &spec.columns {
            None => db_columns,
            Some(declared) => declared
                .fields()
                .iter()
                .map(|f| {
                    let (db, _) = db_columns
                        .iter()
                        .find(|(c, _)| c.name.eq_ignore_ascii_case(f.name()))
                        .ok_or_else(|| ConnectorError::SchemaMismatch {
                            target: target.clone(),
                            reason: format!(
                                "column \"{}\" is declared but the database has no such column; \
                                 it has: {}",
                                f.name(),
                                db_columns
                                    .iter()
                                    .map(|(c, _)| c.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        })?;
                    let db_type = db.kind.data_type();
                    if !same_family(&db_type, f.data_type())
                        || !can_cast_types(&db_type, f.data_type())
                        || !can_cast_types(f.data_type(), &db_type)
                    {
                        return Err(ConnectorError::SchemaMismatch {
                            target: target.clone(),
                            reason: format!(
                                "column \"{}\" is declared {} but the database column is {}; \
                                 declare it as {} or leave the column list out",
                                f.name(),
                                sql_type_name(f.data_type()),
                                db.db_type,
                                sql_type_name(&db_type),
                            ),
                        });
                    }
                    Ok((db.clone(), Some(f.as_ref().clone().with_nullable(true))))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        if let Some(p) = &partition
            && !columns.iter().any(|(c, _)| c.name == p.column)
        {
            return Err(ConnectorError::InvalidOption {
                key: "scan.partition.column".into(),
                reason: format!("the table has no column \"{}\"", p.column),
            });
        }
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(c, declared)| {
                    declared
                        .clone()
                        .unwrap_or_else(|| Field::new(&c.name, c.kind.data_type(), true))
                })
                .collect::<Vec<_>>(),
        ));
        Ok(Self {
            spec: spec.clone(),
            conn,
            relation,
            columns: columns.into_iter().map(|(c, _)| c).collect(),
            schema,
            partition,
            lookup,
            snapshot,
        })
    }

    /// The declaration this table was opened from.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// A sink writing into this table.
    pub fn sink(&self, mode: WriteMode) -> Result<Arc<dyn Sink>> {
        let Relation::Table(table) = &self.relation else {
            return Err(ConnectorError::UnsupportedWrite {
                target: self.spec.name.clone(),
                reason: "the table reads a 'query'; declare 'table' = 'database.table' to write"
                    .into(),
            });
        };
        Ok(Arc::new(super::MySqlSink::try_new(
            self.spec.name.clone(),
            self.spec.options.clone(),
            self.conn.clone(),
            table.clone(),
            Arc::clone(&self.schema),
            self.spec.primary_key.clone(),
            mode,
        )?))
    }

    async fn partition_ranges(&self) -> Result<Vec<Option<String>>> {
        let Some(p) = &self.partition else {
            return Ok(vec![None]);
        };
        let col = quote_ident(&p.column);
        let (lo, hi) = match p.bounds {
            Some(b) => b,
            None => {
                let mut client = self.conn.connect().await?;
                let row: Option<(Option<i64>, Option<i64>)> = client
                    .query_first(format!(
                        "SELECT CAST(MIN({col}) AS SIGNED), CAST(MAX({col}) AS SIGNED) FROM {}",
                        self.relation.sql_source()
                    ))
                    .await
                    .map_err(|e| {
                        self.conn.error(
                            Some(&self.relation.label()),
                            "find the partition bounds of",
                            e,
                        )
                    })?;
                match row {
                    Some((Some(lo), Some(hi))) => (lo, hi),
                    _ => return Ok(vec![None]),
                }
            }
        };
        Ok(range_conditions(&col, lo, hi, p.num)
            .into_iter()
            .map(Some)
            .collect())
    }
}

#[async_trait]
impl TableProvider for MySqlTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if pushable(f, &self.schema, PUSHDOWN) && filter_sql(f, &MySqlDialect {}).is_some()
                {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.columns.len()).collect(),
        };
        let columns: Vec<MyColumn> = indices.iter().map(|i| self.columns[*i].clone()).collect();
        let schema = Arc::new(self.schema.project(&indices)?);
        let select = if columns.is_empty() {
            "1".to_string()
        } else {
            columns
                .iter()
                .map(|c| {
                    if c.as_text {
                        format!("CAST({} AS CHAR)", quote_ident(&c.name))
                    } else {
                        quote_ident(&c.name)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pushed: Vec<String> = filters
            .iter()
            .filter(|f| pushable(f, &self.schema, PUSHDOWN))
            .filter_map(|f| filter_sql(f, &MySqlDialect {}))
            .collect();
        let ranges = self.partition_ranges().await?;
        let queries = partition_queries(
            &select,
            &self.relation.sql_source(),
            &pushed,
            &ranges,
            limit.filter(|_| filters.is_empty()),
        );
        Ok(Arc::new(MySqlScanExec::new(
            self.spec.options.clone(),
            self.conn.clone(),
            self.relation.label(),
            columns,
            schema,
            queries,
            pushed,
            self.snapshot,
            state.config().batch_size(),
        )))
    }
}

/// Reads rows of a MySQL table or query, one query per output partition.
/// With several partitions (and `'scan.snapshot' = 'lock'`, the default),
/// every reader's transaction opens under one brief global read lock, so
/// all partitions read the same consistent state.
pub struct MySqlScanExec {
    options: TableOptions,
    conn: MyConnection,
    label: String,
    columns: Vec<MyColumn>,
    schema: SchemaRef,
    queries: Vec<String>,
    pushed: Vec<String>,
    snapshot: bool,
    batch_size: usize,
    sessions: Arc<Sessions>,
    properties: Arc<PlanProperties>,
}

/// The readers' sessions, opened together under the read lock; each
/// partition takes its own.
#[derive(Default)]
struct Sessions {
    opened: OnceCell<()>,
    conns: Mutex<Vec<Option<Conn>>>,
}

impl fmt::Debug for MySqlScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlScanExec")
            .field("table", &self.label)
            .field("queries", &self.queries)
            .finish_non_exhaustive()
    }
}

impl MySqlScanExec {
    #[expect(clippy::too_many_arguments)]
    fn new(
        options: TableOptions,
        conn: MyConnection,
        label: String,
        columns: Vec<MyColumn>,
        schema: SchemaRef,
        queries: Vec<String>,
        pushed: Vec<String>,
        snapshot: bool,
        batch_size: usize,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(queries.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            options,
            conn,
            label,
            columns,
            schema,
            queries,
            pushed,
            snapshot,
            batch_size,
            sessions: Arc::default(),
            properties,
        }
    }

    /// The SQL each partition runs.
    pub fn queries(&self) -> &[String] {
        &self.queries
    }

    /// What another process needs to run the same scan (options with
    /// secrets as references; the schema travels beside it).
    pub fn descriptor(&self) -> MySqlScanDescriptor {
        MySqlScanDescriptor {
            options: self.options.clone(),
            label: self.label.clone(),
            columns: serde_json::to_value(&self.columns).expect("columns serialise"),
            queries: self.queries.clone(),
            pushed: self.pushed.clone(),
            snapshot: self.snapshot,
            batch_size: self.batch_size,
        }
    }

    /// The scan described by `desc`, connecting with secrets resolved by
    /// this process. `schema` is the scan's output schema.
    pub fn from_descriptor(
        desc: MySqlScanDescriptor,
        schema: SchemaRef,
        secrets: &SecretResolver,
    ) -> Result<Self> {
        let conn = MyConnection::from_options(&desc.options, secrets)?;
        let columns: Vec<MyColumn> = serde_json::from_value(desc.columns)
            .map_err(|e| ConnectorError::Internal(format!("bad mysql scan columns: {e}")))?;
        if columns.len() != schema.fields().len() {
            return Err(ConnectorError::Internal(
                "mysql scan columns do not match its schema".into(),
            ));
        }
        Ok(Self::new(
            desc.options,
            conn,
            desc.label,
            columns,
            schema,
            desc.queries,
            desc.pushed,
            desc.snapshot,
            desc.batch_size,
        ))
    }
}

/// A [`MySqlScanExec`] as sent to an executor.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MySqlScanDescriptor {
    options: TableOptions,
    label: String,
    columns: serde_json::Value,
    queries: Vec<String>,
    pushed: Vec<String>,
    snapshot: bool,
    batch_size: usize,
}

impl DisplayAs for MySqlScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        write!(
            f,
            "MySqlScanExec: table={} at {}, columns=[{}]",
            self.label,
            self.conn,
            cols.join(", ")
        )?;
        if !self.pushed.is_empty() {
            write!(f, ", filters=[{}]", self.pushed.join(" AND "))?;
        }
        write!(f, ", partitions={}", self.queries.len())?;
        if self.queries.len() > 1 {
            let snapshot = if self.snapshot { "shared" } else { "none" };
            write!(f, ", snapshot={snapshot}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for MySqlScanExec {
    fn name(&self) -> &str {
        "MySqlScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let sql = self.queries.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("MySqlScanExec has no partition {partition}"))
        })?;
        let reader = Reader {
            conn: self.conn.clone(),
            label: self.label.clone(),
            columns: self.columns.clone(),
            schema: Arc::clone(&self.schema),
            batch_size: self.batch_size,
        };
        let shared = (self.snapshot && self.queries.len() > 1)
            .then(|| (Arc::clone(&self.sessions), self.queries.len()));
        // The reader owns its session in a task and hands over at most two
        // batches ahead: memory stays bounded whatever the table's size.
        let (tx, rx) = mpsc::channel::<datafusion::error::Result<RecordBatch>>(2);
        tokio::spawn(async move {
            let result = async {
                let session =
                    match shared {
                        Some((sessions, n)) => {
                            sessions
                                .opened
                                .get_or_try_init(|| open_under_lock(&reader.conn, &sessions, n))
                                .await?;
                            sessions.conns.lock().await[partition].take().ok_or_else(|| {
                            ConnectorError::Internal(format!(
                                "MySQL partition {partition} was read twice from one snapshot"
                            ))
                        })?
                        }
                        None => reader.conn.connect().await?,
                    };
                reader.run(session, &sql, &tx).await
            }
            .await;
            if let Err(e) = result {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// Opens `n` reader sessions whose transactions all start while a global
/// read lock holds writers back, so they share one consistent state.
async fn open_under_lock(conn: &MyConnection, sessions: &Sessions, n: usize) -> Result<()> {
    let mut lock = conn.connect().await?;
    lock.query_drop("FLUSH TABLES WITH READ LOCK")
        .await
        .map_err(
            |e| match conn.error(None, "take the read lock to share a snapshot on", e) {
                ConnectorError::Database {
                    connector,
                    on,
                    action,
                    message,
                    class,
                    ..
                } => ConnectorError::Database {
                    connector,
                    on,
                    action,
                    message,
                    hint:
                        "parallel reads take a brief global read lock (RELOAD privilege) so every \
                       partition sees the same data; grant RELOAD, or set 'scan.snapshot' = \
                       'none' to accept partitions read at slightly different moments"
                            .into(),
                    class,
                },
                other => other,
            },
        )?;
    let mut conns = Vec::with_capacity(n);
    let opened = async {
        for _ in 0..n {
            let mut c = conn.connect().await?;
            c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .map_err(|e| conn.error(None, "open a consistent snapshot on", e))?;
            conns.push(Some(c));
        }
        Ok::<_, ConnectorError>(())
    }
    .await;
    let unlocked = lock.query_drop("UNLOCK TABLES").await;
    drop(lock);
    opened?;
    unlocked.map_err(|e| conn.error(None, "release the read lock on", e))?;
    *sessions.conns.lock().await = conns;
    Ok(())
}

/// Streams one partition's rows into batches.
struct Reader {
    conn: MyConnection,
    label: String,
    columns: Vec<MyColumn>,
    schema: SchemaRef,
    batch_size: usize,
}

impl Reader {
    async fn run(
        &self,
        mut session: Conn,
        sql: &str,
        tx: &mpsc::Sender<datafusion::error::Result<RecordBatch>>,
    ) -> Result<()> {
        let mut builders: Vec<ColumnBuilder> = self
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(&c.kind, self.batch_size))
            .collect();
        let mut result = session
            .exec_iter(sql, ())
            .await
            .map_err(|e| self.conn.error(Some(&self.label), "read", e))?;
        let mut n = 0usize;
        loop {
            let row = result
                .next()
                .await
                .map_err(|e| self.conn.error(Some(&self.label), "read", e))?;
            let Some(row) = row else { break };
            for (i, v) in row.unwrap().into_iter().enumerate() {
                let Some(b) = builders.get_mut(i) else { break };
                b.append(v).map_err(|reason| self.value_error(i, reason))?;
            }
            n += 1;
            if n == self.batch_size {
                let batch = self.batch(&mut builders, n)?;
                n = 0;
                if tx.send(Ok(batch)).await.is_err() {
                    // The consumer is gone (LIMIT reached, query cancelled).
                    return Ok(());
                }
            }
        }
        drop(result);
        if n > 0 {
            let batch = self.batch(&mut builders, n)?;
            let _ = tx.send(Ok(batch)).await;
        }
        let _ = session.disconnect().await;
        Ok(())
    }

    fn value_error(&self, i: usize, reason: String) -> ConnectorError {
        ConnectorError::Database {
            connector: "mysql",
            on: format!("table {} at {}", self.label, self.conn),
            action: format!("read column \"{}\"", self.columns[i].name),
            message: reason,
            hint: "convert the column in a 'query', or declare a type that holds its values".into(),
            class: ErrorClass::User,
        }
    }

    fn batch(&self, builders: &mut [ColumnBuilder], n: usize) -> Result<RecordBatch> {
        let arrays = builders
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                let a = b.finish().map_err(|r| self.value_error(i, r))?;
                let want = self.schema.field(i).data_type();
                if a.data_type() == want {
                    return Ok(a);
                }
                let out = cast(&a, want).map_err(|e| self.value_error(i, e.to_string()))?;
                if out.null_count() > a.null_count() {
                    return Err(self.value_error(
                        i,
                        format!("some values do not fit the declared type {want}"),
                    ));
                }
                Ok(out)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )
        .map_err(|e| ConnectorError::Internal(e.to_string()))
    }
}
