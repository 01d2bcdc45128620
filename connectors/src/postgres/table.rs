//! Reading a Postgres table or query.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
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
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{Mutex, OnceCell};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{FromSql, Type};

use super::types::{ColumnBuilder, PgKind, pg_kind, type_display};
use super::{PgConnection, quote_ident, quote_literal, quote_table};
use crate::database::{
    PartitionSpec, PushdownRules, filter_sql, partition_queries, partition_spec, pushable,
    range_conditions, same_family, sql_type_name,
};
use crate::error::{ConnectorError, ErrorClass, Result};
use crate::factory::TableSpec;
use crate::options::TableOptions;
use crate::secrets::SecretResolver;
use crate::sink::{Sink, WriteMode};

/// Postgres compares text by collation: only equality is pushed for strings.
const PUSHDOWN: PushdownRules = PushdownRules {
    string_ordering: false,
    naive_timestamps: false,
    string_negation: true,
};

/// One column as the database has it and as Sluice exposes it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PgColumn {
    /// Column name in the database.
    pub(crate) name: String,
    /// How values travel in binary `COPY`.
    pub(crate) kind: PgKind,
    /// The database type, for messages.
    pub(crate) db_type: String,
    /// Read as `name::text` (an unmapped type the table opted to read as text).
    pub(crate) as_text: bool,
    /// The Arrow type of the table's schema (declared, or mapped from
    /// `kind`); carried by the schema when the scan is sent elsewhere.
    #[serde(skip, default = "null_type")]
    pub(crate) data_type: DataType,
}

fn null_type() -> DataType {
    DataType::Null
}

/// What a table reads: a table or a query.
#[derive(Debug, Clone)]
pub(crate) enum Relation {
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

/// A Postgres table or query declared with `'connector' = 'postgres'`.
#[derive(Debug)]
pub struct PostgresTable {
    spec: TableSpec,
    conn: PgConnection,
    relation: Relation,
    columns: Vec<PgColumn>,
    schema: SchemaRef,
    partition: Option<PartitionSpec>,
    lookup: crate::lookup::LookupOptions,
}

impl PostgresTable {
    /// How lookup joins against this table cache its rows.
    pub fn lookup_options(&self) -> crate::lookup::LookupOptions {
        self.lookup
    }

    /// Connects, reads the columns of the table or query and checks them
    /// against the declared ones (if any).
    pub async fn try_new(spec: &TableSpec, secrets: &SecretResolver) -> Result<Self> {
        let options = &spec.options;
        let conn = PgConnection::from_options(options, secrets)?;
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
                    connector: "postgres".into(),
                    key: "table".into(),
                    hint: "set 'table' = 'schema.table', or 'query' = 'SELECT ...' for a source"
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
        let partition = partition_spec(options)?;
        let lookup = crate::lookup::LookupOptions::from_options(options)?;
        let label = relation.label();
        let client = conn.connect().await?;
        let stmt = client
            .prepare(&format!("SELECT * FROM {} LIMIT 0", relation.sql_source()))
            .await
            .map_err(|e| conn.error(Some(&label), "read the columns of", e))?;
        let mut db_columns = vec![];
        for c in stmt.columns() {
            let (kind, as_text) = match pg_kind(c.type_(), c.type_modifier()) {
                Some(k) => (k, false),
                None if unmapped_as_text => (PgKind::Text, true),
                None => {
                    return Err(ConnectorError::SchemaMismatch {
                        target: format!("postgres table {label} at {conn}"),
                        reason: format!(
                            "column \"{}\" has type {}, which Sluice cannot map; cast it in a \
                             'query' (e.g. {}::text) or set 'types.unmapped' = 'text'",
                            c.name(),
                            type_display(c.type_(), c.type_modifier()),
                            c.name()
                        ),
                    });
                }
            };
            db_columns.push(PgColumn {
                name: c.name().to_string(),
                data_type: kind.data_type(),
                db_type: type_display(c.type_(), c.type_modifier()),
                kind,
                as_text,
            });
        }
        let columns = match &spec.columns {
            None => db_columns,
            Some(declared) => declared
                .fields()
                .iter()
                .map(|f| {
                    let db = db_columns
                        .iter()
                        .find(|c| &c.name == f.name())
                        .ok_or_else(|| ConnectorError::SchemaMismatch {
                            target: format!("postgres table {label} at {conn}"),
                            reason: format!(
                                "column \"{}\" is declared but the database has no such column; \
                                 it has: {}",
                                f.name(),
                                db_columns
                                    .iter()
                                    .map(|c| c.name.as_str())
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
                            target: format!("postgres table {label} at {conn}"),
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
                    Ok(PgColumn {
                        data_type: f.data_type().clone(),
                        ..db.clone()
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        if let Some(p) = &partition
            && p.column == CTID
        {
            if matches!(relation, Relation::Query(_)) {
                return Err(ConnectorError::InvalidOption {
                    key: "scan.partition.column".into(),
                    reason: "ctid ranges split a table's pages; a 'query' has none: \
                             split on a numeric column of the query instead"
                        .into(),
                });
            }
            if p.bounds.is_some() {
                return Err(ConnectorError::InvalidOption {
                    key: "scan.partition.lower-bound".into(),
                    reason: "ctid ranges are computed from the table's size; remove the bounds"
                        .into(),
                });
            }
        } else if let Some(p) = &partition
            && !columns.iter().any(|c| c.name == p.column)
        {
            return Err(ConnectorError::InvalidOption {
                key: "scan.partition.column".into(),
                reason: format!(
                    "the table has no column \"{}\"; name a numeric or time column, \
                     or 'ctid' to split the table's pages",
                    p.column
                ),
            });
        }
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), true))
                .collect::<Vec<_>>(),
        ));
        Ok(Self {
            spec: spec.clone(),
            conn,
            relation,
            columns,
            schema,
            partition,
            lookup,
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
                reason: "the table reads a 'query'; declare 'table' = 'schema.table' to write"
                    .into(),
            });
        };
        Ok(Arc::new(super::PostgresSink::try_new(
            self.spec.name.clone(),
            self.spec.options.clone(),
            self.conn.clone(),
            table.clone(),
            Arc::clone(&self.schema),
            self.spec.primary_key.clone(),
            mode,
        )?))
    }

    async fn partition_ranges(&self, client: &Client) -> Result<Vec<Option<String>>> {
        let Some(p) = &self.partition else {
            return Ok(vec![None]);
        };
        if p.column == CTID {
            let row = client
                .query_one(
                    "SELECT (pg_relation_size($1::text::regclass) \
                       / current_setting('block_size')::bigint)::bigint",
                    &[&self.relation.sql_source()],
                )
                .await
                .map_err(|e| {
                    self.conn
                        .error(Some(&self.relation.label()), "find the size of", e)
                })?;
            return Ok(ctid_ranges(row.get::<_, i64>(0), p.num));
        }
        let col = quote_ident(&p.column);
        let (lo, hi) = match p.bounds {
            Some(b) => b,
            None => {
                let row = client
                    .query_one(
                        &format!(
                            "SELECT min({col})::bigint, max({col})::bigint FROM {}",
                            self.relation.sql_source()
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| {
                        self.conn.error(
                            Some(&self.relation.label()),
                            "find the partition bounds of",
                            e,
                        )
                    })?;
                match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
                    (Some(lo), Some(hi)) => (lo, hi),
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

/// `'scan.partition.column' = 'ctid'`: split the table's pages.
const CTID: &str = "ctid";

/// Conditions splitting a table of `blocks` pages into at most `n` ranges
/// of pages (`ctid` ranges, read by TID range scans on Postgres 14+). The
/// last range is open, so pages added since the size was read are read too.
fn ctid_ranges(blocks: i64, n: usize) -> Vec<Option<String>> {
    let n = (n.max(1) as i64).min(blocks.max(1));
    if n == 1 {
        return vec![None];
    }
    let cut = |i: i64| blocks * i / n;
    (0..n)
        .map(|i| {
            let mut conds = vec![];
            if i > 0 {
                conds.push(format!("ctid >= '({},0)'::tid", cut(i)));
            }
            if i + 1 < n {
                conds.push(format!("ctid < '({},0)'::tid", cut(i + 1)));
            }
            Some(conds.join(" AND "))
        })
        .collect()
}

#[async_trait]
impl TableProvider for PostgresTable {
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
                if pushable(f, &self.schema, PUSHDOWN)
                    && filter_sql(f, &PostgreSqlDialect {}).is_some()
                {
                    // DataFusion re-checks the rows: Postgres may differ in
                    // corner cases (NaN, collations of `LIKE`).
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
        let columns: Vec<PgColumn> = indices.iter().map(|i| self.columns[*i].clone()).collect();
        let schema = Arc::new(self.schema.project(&indices)?);
        let select = columns
            .iter()
            .map(|c| {
                if c.as_text {
                    format!("{}::text", quote_ident(&c.name))
                } else {
                    quote_ident(&c.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let pushed: Vec<String> = filters
            .iter()
            .filter(|f| pushable(f, &self.schema, PUSHDOWN))
            .filter_map(|f| filter_sql(f, &PostgreSqlDialect {}))
            .collect();
        let client = self.conn.connect().await?;
        let ranges = self.partition_ranges(&client).await?;
        drop(client);
        let queries = partition_queries(
            &select,
            &self.relation.sql_source(),
            &pushed,
            &ranges,
            limit.filter(|_| filters.is_empty()),
        );
        Ok(Arc::new(PostgresScanExec::new(
            self.spec.options.clone(),
            self.conn.clone(),
            self.relation.label(),
            columns,
            schema,
            queries,
            pushed,
            state.config().batch_size(),
        )))
    }
}

/// Reads rows of a Postgres table or query through binary `COPY`, one
/// query per output partition. With several partitions, all readers share
/// one snapshot exported by a coordinating session.
pub struct PostgresScanExec {
    options: TableOptions,
    conn: PgConnection,
    label: String,
    columns: Vec<PgColumn>,
    schema: SchemaRef,
    queries: Vec<String>,
    pushed: Vec<String>,
    batch_size: usize,
    snapshot: Arc<Snapshot>,
    properties: Arc<PlanProperties>,
}

/// The session whose exported snapshot the readers import; kept open for
/// as long as the plan lives, so a retried partition can still import it.
#[derive(Default)]
struct Snapshot {
    id: OnceCell<String>,
    holder: Mutex<Option<Client>>,
}

impl fmt::Debug for PostgresScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresScanExec")
            .field("table", &self.label)
            .field("queries", &self.queries)
            .finish_non_exhaustive()
    }
}

impl PostgresScanExec {
    #[expect(clippy::too_many_arguments)]
    fn new(
        options: TableOptions,
        conn: PgConnection,
        label: String,
        columns: Vec<PgColumn>,
        schema: SchemaRef,
        queries: Vec<String>,
        pushed: Vec<String>,
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
            batch_size,
            snapshot: Arc::default(),
            properties,
        }
    }

    /// The SQL each partition runs.
    pub fn queries(&self) -> &[String] {
        &self.queries
    }

    /// What another process needs to run the same scan (options with
    /// secrets as references; the schema travels beside it).
    pub fn descriptor(&self) -> PostgresScanDescriptor {
        PostgresScanDescriptor {
            options: self.options.clone(),
            label: self.label.clone(),
            columns: serde_json::to_value(&self.columns).expect("columns serialise"),
            queries: self.queries.clone(),
            pushed: self.pushed.clone(),
            batch_size: self.batch_size,
        }
    }

    /// The scan described by `desc`, connecting with secrets resolved by
    /// this process. `schema` is the scan's output schema.
    pub fn from_descriptor(
        desc: PostgresScanDescriptor,
        schema: SchemaRef,
        secrets: &SecretResolver,
    ) -> Result<Self> {
        let conn = PgConnection::from_options(&desc.options, secrets)?;
        let mut columns: Vec<PgColumn> = serde_json::from_value(desc.columns)
            .map_err(|e| ConnectorError::Internal(format!("bad postgres scan columns: {e}")))?;
        if columns.len() != schema.fields().len() {
            return Err(ConnectorError::Internal(
                "postgres scan columns do not match its schema".into(),
            ));
        }
        for (c, f) in columns.iter_mut().zip(schema.fields()) {
            c.data_type = f.data_type().clone();
        }
        Ok(Self::new(
            desc.options,
            conn,
            desc.label,
            columns,
            schema,
            desc.queries,
            desc.pushed,
            desc.batch_size,
        ))
    }
}

/// A [`PostgresScanExec`] as sent to an executor.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PostgresScanDescriptor {
    options: TableOptions,
    label: String,
    columns: serde_json::Value,
    queries: Vec<String>,
    pushed: Vec<String>,
    batch_size: usize,
}

impl DisplayAs for PostgresScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        write!(
            f,
            "PostgresScanExec: table={} at {}, columns=[{}]",
            self.label,
            self.conn,
            cols.join(", ")
        )?;
        if !self.pushed.is_empty() {
            write!(f, ", filters=[{}]", self.pushed.join(" AND "))?;
        }
        write!(f, ", partitions={}", self.queries.len())
    }
}

/// A field of a binary `COPY` row, whatever its type.
struct RawField<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawField<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(Some(raw)))
    }

    fn from_sql_null(
        _ty: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

impl ExecutionPlan for PostgresScanExec {
    fn name(&self) -> &str {
        "PostgresScanExec"
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
            DataFusionError::Internal(format!("PostgresScanExec has no partition {partition}"))
        })?;
        let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
        let conn = self.conn.clone();
        let label = self.label.clone();
        let columns = self.columns.clone();
        let schema = Arc::clone(&self.schema);
        let batch_size = self.batch_size;
        let snapshot = (self.queries.len() > 1).then(|| Arc::clone(&self.snapshot));
        let open = async move {
            let client = conn.connect().await?;
            if let Some(snapshot) = snapshot {
                let id = snapshot
                    .id
                    .get_or_try_init(|| export_snapshot(&conn, &snapshot))
                    .await?;
                client
                    .batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                         SET TRANSACTION SNAPSHOT {}",
                        quote_literal(id)
                    ))
                    .await
                    .map_err(|e| conn.error(Some(&label), "import the shared snapshot for", e))?;
            }
            let types: Vec<Type> = columns.iter().map(|_| Type::UNKNOWN).collect();
            let out = client
                .copy_out(copy.as_str())
                .await
                .map_err(|e| conn.error(Some(&label), "read", e))?;
            let rows = BinaryCopyOutStream::new(out, &types);
            Ok::<_, ConnectorError>(batches(
                rows, client, conn, label, columns, schema, batch_size,
            ))
        };
        let stream = futures::stream::once(open)
            .map_err(DataFusionError::from)
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

async fn export_snapshot(conn: &PgConnection, snapshot: &Snapshot) -> Result<String> {
    let client = conn.connect().await?;
    let row = client
        .simple_query(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_export_snapshot()",
        )
        .await
        .map_err(|e| conn.error(None, "export a snapshot", e))?;
    let id = row
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| ConnectorError::Internal("pg_export_snapshot returned no row".into()))?;
    *snapshot.holder.lock().await = Some(client);
    Ok(id)
}

/// Groups decoded rows into batches of `batch_size`.
fn batches(
    rows: BinaryCopyOutStream,
    client: Client,
    conn: PgConnection,
    label: String,
    columns: Vec<PgColumn>,
    schema: SchemaRef,
    batch_size: usize,
) -> impl futures::Stream<Item = datafusion::error::Result<RecordBatch>> + Send {
    struct State {
        rows: std::pin::Pin<Box<BinaryCopyOutStream>>,
        // Keeps the session open while rows stream.
        _client: Client,
        builders: Vec<ColumnBuilder>,
        done: bool,
    }
    let builders = columns
        .iter()
        .map(|c| ColumnBuilder::new(&c.kind, batch_size))
        .collect();
    let state = State {
        rows: Box::pin(rows),
        _client: client,
        builders,
        done: false,
    };
    futures::stream::try_unfold(state, move |mut st| {
        let conn = conn.clone();
        let label = label.clone();
        let columns = columns.clone();
        let schema = Arc::clone(&schema);
        async move {
            if st.done {
                return Ok(None);
            }
            let mut n = 0;
            while n < batch_size {
                match st.rows.next().await {
                    Some(Ok(row)) => {
                        for (i, b) in st.builders.iter_mut().enumerate() {
                            let field: RawField<'_> = row.try_get(i).map_err(|e| {
                                DataFusionError::from(conn.error(Some(&label), "read", e))
                            })?;
                            b.append(field.0).map_err(|reason| {
                                DataFusionError::from(ConnectorError::Database {
                                    connector: "postgres",
                                    on: format!("table {label} at {conn}"),
                                    action: format!("read column \"{}\"", columns[i].name),
                                    message: reason,
                                    hint: "cast the column in a 'query', or declare a type that \
                                           holds its values"
                                        .into(),
                                    class: ErrorClass::User,
                                })
                            })?;
                        }
                        n += 1;
                    }
                    Some(Err(e)) => {
                        return Err(conn.error(Some(&label), "read", e).into());
                    }
                    None => {
                        st.done = true;
                        break;
                    }
                }
            }
            if n == 0 {
                return Ok(None);
            }
            let arrays = st
                .builders
                .iter_mut()
                .zip(&columns)
                .map(|(b, c)| {
                    let a = b.finish();
                    if a.data_type() == &c.data_type {
                        Ok(a)
                    } else {
                        cast(&a, &c.data_type).map_err(DataFusionError::from)
                    }
                })
                .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
            let batch = RecordBatch::try_new_with_options(
                schema,
                arrays,
                &RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
            Ok(Some((batch, st)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::ctid_ranges;

    #[test]
    fn ctid_ranges_cover_every_page_once() {
        assert_eq!(ctid_ranges(0, 4), vec![None]);
        assert_eq!(ctid_ranges(100, 1), vec![None]);
        assert_eq!(
            ctid_ranges(10, 3),
            vec![
                Some("ctid < '(3,0)'::tid".to_string()),
                Some("ctid >= '(3,0)'::tid AND ctid < '(6,0)'::tid".to_string()),
                Some("ctid >= '(6,0)'::tid".to_string()),
            ]
        );
        // Never more ranges than pages.
        assert_eq!(ctid_ranges(2, 8).len(), 2);
    }
}
