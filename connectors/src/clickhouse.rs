//! The `clickhouse` connector: ClickHouse tables as sinks, written over
//! the HTTP interface in `RowBinary`, through the two-phase protocol.
//!
//! ```sql
//! CREATE TABLE events WITH (
//!   'connector' = 'clickhouse',
//!   'url' = 'http://clickhouse.internal:8123/analytics',
//!   'password' = secret('CH_PASSWORD'),
//!   'table' = 'events');
//! ```
//!
//! Each task attempt inserts into its own staging table
//! (`CREATE TABLE _sluice_stage_<job>_<task> AS target`), in batches of
//! `RowBinary`. Only the winning attempts are published, so a retried task
//! never doubles rows. Publishing relies only on what ClickHouse 18.16
//! offers (no transactions):
//!
//! - append: `INSERT INTO target SELECT ... FROM stage`, one staging table
//!   at a time, each recorded in `_sluice_commits`; a retried commit skips
//!   the stages already recorded, and a re-run whose run id is recorded
//!   appends nothing. A crash between one stage's insert and its record
//!   would publish that stage again on retry: the one window left.
//! - overwrite: a new table `AS target` filled from the stages, swapped in
//!   with `RENAME TABLE target TO old, new TO target`, the old one dropped
//!   once the publish is final. Until then a statement set can swap it back
//!   (`RENAME TABLE target TO new, old TO target`).
//!
//! Newer servers offer stronger tools, not used so that 18.16 works:
//! `insert_deduplication_token` (22.x) would make each stage's insert
//! idempotent, and `EXCHANGE TABLES` (Atomic databases, 20.x) swaps two
//! tables in one step.

use std::fmt;
use std::sync::Arc;

use crate::database::hash_hex;
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Field, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::error::{ConnectorError, ErrorClass, Result};
use crate::factory::TableSpec;
use crate::options::{OptionValue, TableOptions};
use crate::secrets::SecretResolver;
use crate::sink::{
    CommitMessage, CommitOutcome, JobCommit, Revocable, Sink, SinkDescriptor, SinkWriter, WriteMode,
};

/// Options of the `clickhouse` connector.
pub const CLICKHOUSE_OPTIONS: &[&str] = &[
    "connector",
    "url",
    "username",
    "password",
    "table",
    "connect.timeout",
    "sink.batch-bytes",
];

/// How long a job's staging tables survive without a heartbeat.
const LEASE_SECONDS: i64 = 600;

/// Where and how to reach ClickHouse, with secrets resolved. Never printed
/// whole: [`fmt::Display`] shows `host:port/database` only.
#[derive(Clone)]
pub struct ChConnection {
    base: url::Url,
    database: String,
    user: Option<String>,
    password: Option<String>,
    endpoint: String,
    client: reqwest::Client,
}

impl fmt::Debug for ChConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChConnection")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ChConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.endpoint)
    }
}

impl ChConnection {
    /// Builds the connection settings from table options. Does not connect.
    pub fn from_options(options: &TableOptions, secrets: &SecretResolver) -> Result<Self> {
        let expected = "expected 'http://HOST:8123/DATABASE'";
        let raw = options
            .literal("url")?
            .ok_or_else(|| ConnectorError::MissingOption {
                connector: "clickhouse".into(),
                key: "url".into(),
                hint: "set 'url' = 'http://HOST:8123/DATABASE'".into(),
            })?;
        let mut url = url::Url::parse(raw).map_err(|e| ConnectorError::InvalidOption {
            key: "url".into(),
            reason: format!("{e}; {expected}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConnectorError::InvalidOption {
                key: "url".into(),
                reason: format!("scheme '{}' is not http or https; {expected}", url.scheme()),
            });
        }
        let database = url.path().trim_matches('/').to_string();
        let database = if database.is_empty() {
            "default".to_string()
        } else {
            database
        };
        let resolve = |key: &str| -> Result<Option<String>> {
            match options.get(key) {
                None => Ok(None),
                Some(OptionValue::Literal(v)) => Ok(Some(v.clone())),
                Some(OptionValue::Secret(name)) => secrets.resolve(name).map(Some),
            }
        };
        let user = resolve("username")?
            .or_else(|| (!url.username().is_empty()).then(|| url.username().to_string()));
        let password = resolve("password")?.or_else(|| url.password().map(str::to_string));
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_path("/");
        url.set_query(None);
        let timeout = crate::database::connect_timeout(options)?;
        let endpoint = format!(
            "{}:{}/{database}",
            url.host_str().unwrap_or("localhost"),
            url.port_or_known_default().unwrap_or(8123)
        );
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ConnectorError::Internal(format!("HTTP client: {e}")))?;
        Ok(Self {
            base: url,
            database,
            user,
            password,
            endpoint,
            client,
        })
    }

    /// Runs `query` with `body` appended as its data (for `INSERT ... FORMAT`);
    /// returns the response text.
    async fn run(
        &self,
        table: Option<&str>,
        action: &str,
        query: &str,
        body: Bytes,
    ) -> Result<String> {
        let mut url = self.base.clone();
        url.query_pairs_mut()
            .append_pair("database", &self.database);
        // Without data, the statement is the body (an empty body would lack
        // the Content-Length 18.16 requires); with data, it goes in the URL.
        let body = if body.is_empty() {
            Bytes::from(query.to_string())
        } else {
            url.query_pairs_mut().append_pair("query", query);
            body
        };
        let mut request = self.client.post(url).body(body);
        if let Some(user) = &self.user {
            request = request.basic_auth(user, self.password.as_deref());
        }
        let on = match table {
            Some(t) => format!("table {t} at {}", self.endpoint),
            None => self.endpoint.clone(),
        };
        let response = request.send().await.map_err(|e| {
            let refused = std::error::Error::source(&e)
                .map(|s| format!("{s:?}").contains("ConnectionRefused"))
                .unwrap_or(false)
                || e.is_connect();
            let timeout = e.is_timeout();
            ConnectorError::Database {
                connector: "clickhouse",
                on: on.clone(),
                action: action.to_string(),
                message: e.without_url().to_string(),
                hint: if refused {
                    format!(
                        "connection refused: check that ClickHouse serves HTTP at {} and 'url' \
                         names its host and port",
                        self.endpoint
                    )
                } else if timeout {
                    "the request timed out: check the host, the network and 'connect.timeout'"
                        .into()
                } else {
                    String::new()
                },
                class: ErrorClass::External,
            }
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ConnectorError::Database {
                connector: "clickhouse",
                on: on.clone(),
                action: action.to_string(),
                message: e.without_url().to_string(),
                hint: String::new(),
                class: ErrorClass::External,
            })?;
        if status.is_success() {
            return Ok(text);
        }
        Err(self.server_error(on, action, &text))
    }

    async fn query(&self, table: Option<&str>, action: &str, sql: &str) -> Result<String> {
        self.run(table, action, sql, Bytes::new()).await
    }

    fn server_error(&self, on: String, action: &str, text: &str) -> ConnectorError {
        // "Code: 60, e.displayText() = DB::Exception: Table x doesn't exist., e.what() = ..."
        let code: Option<u32> = text
            .strip_prefix("Code: ")
            .and_then(|t| t.split(',').next())
            .and_then(|c| c.trim().parse().ok());
        let message = text
            .split("DB::Exception: ")
            .nth(1)
            .map(|m| m.split(", e.what()").next().unwrap_or(m))
            .unwrap_or(text)
            .trim()
            .to_string();
        let user = self.user.as_deref().unwrap_or("default");
        let (class, hint) = match code {
            Some(192 | 193 | 194 | 516) => (
                ErrorClass::User,
                format!(
                    "authentication failed for user '{user}': check 'username' and 'password' \
                     (use 'password' = secret('NAME') with SLUICE_SECRET_NAME set)"
                ),
            ),
            Some(60) => (
                ErrorClass::User,
                "the table does not exist: check 'table' or create it first".into(),
            ),
            Some(81) => (
                ErrorClass::User,
                "the database does not exist: check the database in 'url'".into(),
            ),
            Some(16 | 47 | 53 | 70 | 27 | 6 | 69 | 72 | 321) => (
                ErrorClass::User,
                "a value or column does not fit the table: check the declared columns and cast \
                 values in the query"
                    .into(),
            ),
            Some(497) => (
                ErrorClass::User,
                format!("user '{user}' lacks a privilege this needs: grant it"),
            ),
            _ => (ErrorClass::External, String::new()),
        };
        ConnectorError::Database {
            connector: "clickhouse",
            on,
            action: action.to_string(),
            message: match code {
                Some(c) => format!("{message} [code {c}]"),
                None => message,
            },
            hint,
            class,
        }
    }
}

/// Quotes a ClickHouse identifier.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A ClickHouse string literal.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// How a column's values travel in `RowBinary`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ChType {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    /// `Decimal(P, S)`: stored in 4, 8 or 16 bytes by precision.
    Decimal(u8, i8),
    String,
    FixedString(usize),
    Date,
    DateTime,
    Nullable(Box<ChType>),
}

impl ChType {
    /// Parses the type `DESCRIBE TABLE` prints; `None` for types Sluice
    /// cannot write.
    fn parse(t: &str) -> Option<Self> {
        let t = t.trim();
        let inner = |prefix: &str| {
            t.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('('))
                .and_then(|r| r.strip_suffix(')'))
        };
        if let Some(i) = inner("Nullable") {
            return Some(Self::Nullable(Box::new(Self::parse(i)?)));
        }
        if let Some(i) = inner("LowCardinality") {
            return Self::parse(i);
        }
        if let Some(args) = inner("Decimal") {
            let (p, s) = args.split_once(',')?;
            return Some(Self::Decimal(
                p.trim().parse().ok()?,
                s.trim().parse().ok()?,
            ));
        }
        for (name, p) in [("Decimal32", 9), ("Decimal64", 18), ("Decimal128", 38)] {
            if let Some(s) = inner(name) {
                return Some(Self::Decimal(p, s.trim().parse().ok()?));
            }
        }
        if let Some(n) = inner("FixedString") {
            return Some(Self::FixedString(n.trim().parse().ok()?));
        }
        if t == "DateTime" || inner("DateTime").is_some() {
            return Some(Self::DateTime);
        }
        Some(match t {
            "Int8" => Self::Int8,
            "Int16" => Self::Int16,
            "Int32" => Self::Int32,
            "Int64" => Self::Int64,
            "UInt8" => Self::UInt8,
            "UInt16" => Self::UInt16,
            "UInt32" => Self::UInt32,
            "UInt64" => Self::UInt64,
            "Float32" => Self::Float32,
            "Float64" => Self::Float64,
            "String" => Self::String,
            "Date" => Self::Date,
            _ => return None,
        })
    }

    fn base(&self) -> &Self {
        match self {
            Self::Nullable(t) => t.base(),
            t => t,
        }
    }

    /// The Arrow type the column holds in Sluice.
    fn data_type(&self) -> DataType {
        match self.base() {
            Self::Int8 => DataType::Int8,
            Self::Int16 => DataType::Int16,
            Self::Int32 => DataType::Int32,
            Self::Int64 => DataType::Int64,
            Self::UInt8 => DataType::UInt8,
            Self::UInt16 => DataType::UInt16,
            Self::UInt32 => DataType::UInt32,
            Self::UInt64 => DataType::UInt64,
            Self::Float32 => DataType::Float32,
            Self::Float64 => DataType::Float64,
            Self::Decimal(p, s) => DataType::Decimal128(*p, *s),
            Self::String | Self::FixedString(_) => DataType::Utf8,
            Self::Date => DataType::Date32,
            Self::DateTime => DataType::Timestamp(TimeUnit::Second, Some("UTC".into())),
            Self::Nullable(_) => unreachable!("base() strips Nullable"),
        }
    }
}

/// A ClickHouse table declared with `'connector' = 'clickhouse'`: a sink.
#[derive(Debug)]
pub struct ClickHouseTable {
    spec: TableSpec,
    conn: ChConnection,
    table: String,
    columns: Vec<(String, ChType)>,
    schema: SchemaRef,
}

impl ClickHouseTable {
    /// Reads the table's columns (`DESCRIBE TABLE`) and checks the declared ones.
    pub async fn try_new(spec: &TableSpec, secrets: &SecretResolver) -> Result<Self> {
        let conn = ChConnection::from_options(&spec.options, secrets)?;
        let table = spec
            .options
            .literal("table")?
            .ok_or_else(|| ConnectorError::MissingOption {
                connector: "clickhouse".into(),
                key: "table".into(),
                hint: "set 'table' = 'table_name' (in the database of 'url')".into(),
            })?
            .to_string();
        if !spec.primary_key.is_empty() {
            return Err(ConnectorError::UnsupportedWrite {
                target: spec.name.clone(),
                reason: "ClickHouse sinks do not upsert; remove PRIMARY KEY and use a \
                         ReplacingMergeTree table to keep the last row of each key"
                    .into(),
            });
        }
        let text = conn
            .query(
                Some(&table),
                "read the columns of",
                &format!("DESCRIBE TABLE {} FORMAT TabSeparated", quote_ident(&table)),
            )
            .await?;
        let target = format!("clickhouse table {table} at {conn}");
        let mut db_columns = vec![];
        for line in text.lines() {
            let mut parts = line.split('\t');
            let (Some(name), Some(ty)) = (parts.next(), parts.next()) else {
                continue;
            };
            // Backslash escapes of TabSeparated (quotes in Enum and DateTime arguments).
            let ty = ty.replace("\\'", "'");
            let default_kind = parts.next().unwrap_or_default();
            if default_kind == "MATERIALIZED" || default_kind == "ALIAS" {
                continue;
            }
            let parsed = ChType::parse(&ty).ok_or_else(|| ConnectorError::SchemaMismatch {
                target: target.clone(),
                reason: format!(
                    "column \"{name}\" has type {ty}, which Sluice cannot write; use a column of \
                     a mapped type (see the README) or leave it out of the declared columns so \
                     its DEFAULT applies"
                ),
            })?;
            db_columns.push((name.to_string(), ty, parsed));
        }
        let columns: Vec<(String, ChType, DataType)> = match &spec.columns {
            None => db_columns
                .into_iter()
                .map(|(n, _, t)| {
                    let dt = t.data_type();
                    (n, t, dt)
                })
                .collect(),
            Some(declared) => declared
                .fields()
                .iter()
                .map(|f| {
                    let (_, ty, t) = db_columns
                        .iter()
                        .find(|(n, _, _)| n == f.name())
                        .ok_or_else(|| ConnectorError::SchemaMismatch {
                            target: target.clone(),
                            reason: format!(
                                "column \"{}\" is declared but the table has no such column; it \
                                 has: {}",
                                f.name(),
                                db_columns
                                    .iter()
                                    .map(|(n, _, _)| n.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        })?;
                    if !crate::database::same_family(&t.data_type(), f.data_type()) {
                        return Err(ConnectorError::SchemaMismatch {
                            target: target.clone(),
                            reason: format!(
                                "column \"{}\" is declared {} but the table's column is {ty}; \
                                 declare it as {} or leave the column list out",
                                f.name(),
                                crate::database::sql_type_name(f.data_type()),
                                crate::database::sql_type_name(&t.data_type()),
                            ),
                        });
                    }
                    Ok((f.name().clone(), t.clone(), f.data_type().clone()))
                })
                .collect::<Result<_>>()?,
        };
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(n, _, dt)| Field::new(n, dt.clone(), true))
                .collect::<Vec<_>>(),
        ));
        Ok(Self {
            spec: spec.clone(),
            conn,
            table,
            columns: columns.into_iter().map(|(n, t, _)| (n, t)).collect(),
            schema,
        })
    }

    /// A sink writing into this table.
    pub fn sink(&self, mode: WriteMode) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(ClickHouseSink::try_new(
            self.spec.name.clone(),
            self.spec.options.clone(),
            self.conn.clone(),
            self.table.clone(),
            Arc::clone(&self.schema),
            Some(self.columns.clone()),
            mode,
        )?))
    }
}

#[async_trait]
impl TableProvider for ClickHouseTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(datafusion::error::DataFusionError::External(Box::new(
            ConnectorError::UnsupportedWrite {
                target: self.spec.name.clone(),
                reason: "ClickHouse tables are sinks in Sluice; they cannot be read yet".into(),
            },
        )))
    }
}

/// A write into a ClickHouse table.
#[derive(Debug, Clone)]
pub struct ClickHouseSink {
    name: String,
    options: TableOptions,
    conn: ChConnection,
    table: String,
    schema: SchemaRef,
    /// The table's columns, read by `begin` when the sink comes from a descriptor.
    columns: Option<Vec<(String, ChType)>>,
    batch_bytes: usize,
    mode: WriteMode,
}

impl ClickHouseSink {
    fn try_new(
        name: String,
        options: TableOptions,
        conn: ChConnection,
        table: String,
        schema: SchemaRef,
        columns: Option<Vec<(String, ChType)>>,
        mode: WriteMode,
    ) -> Result<Self> {
        if !matches!(mode, WriteMode::Append | WriteMode::Overwrite) {
            return Err(ConnectorError::UnsupportedWrite {
                target: name,
                reason: format!(
                    "clickhouse tables support INSERT INTO and INSERT OVERWRITE (whole table), \
                     not {mode}"
                ),
            });
        }
        let batch_bytes = match options.literal("sink.batch-bytes")? {
            None => 16 << 20,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1024..=1 << 30).contains(n))
                .ok_or_else(|| ConnectorError::InvalidOption {
                    key: "sink.batch-bytes".into(),
                    reason: format!("'{v}' is not a number of bytes between 1024 and 1 GiB"),
                })?,
        };
        Ok(Self {
            name,
            options,
            conn,
            table,
            schema,
            columns,
            batch_bytes,
            mode,
        })
    }

    /// Opens a sink from its descriptor (for stage plans). Touches no data.
    pub fn from_descriptor(
        desc: &SinkDescriptor,
        schema: SchemaRef,
        secrets: &SecretResolver,
    ) -> Result<Self> {
        let conn = ChConnection::from_options(&desc.options, secrets)?;
        let table = desc
            .options
            .literal("table")?
            .ok_or_else(|| ConnectorError::MissingOption {
                connector: "clickhouse".into(),
                key: "table".into(),
                hint: "set 'table' = 'table_name'".into(),
            })?
            .to_string();
        Self::try_new(
            desc.name.clone(),
            desc.options.clone(),
            conn,
            table,
            schema,
            None,
            desc.mode.clone(),
        )
    }

    async fn q(&self, action: &str, sql: &str) -> Result<String> {
        self.conn.query(Some(&self.table), action, sql).await
    }

    fn job_tag(job_id: &str) -> String {
        hash_hex(job_id, 6)
    }

    async fn ensure_ledger(&self) -> Result<()> {
        self.q(
            "prepare the commit ledger of",
            "CREATE TABLE IF NOT EXISTS _sluice_commits (target String, job_id String, \
             run_id Nullable(String), mode String, stage String, rows UInt64, \
             committed_at DateTime DEFAULT now()) ENGINE = Log",
        )
        .await?;
        self.q(
            "prepare the commit ledger of",
            "CREATE TABLE IF NOT EXISTS _sluice_leases (job_tag String, lease_until DateTime) \
             ENGINE = Log",
        )
        .await?;
        Ok(())
    }

    async fn renew(&self, job_id: &str) -> Result<()> {
        self.q(
            "renew the staging lease of",
            &format!(
                "INSERT INTO _sluice_leases VALUES ({}, now() + {LEASE_SECONDS})",
                quote_literal(&Self::job_tag(job_id))
            ),
        )
        .await
        .map(|_| ())
    }

    /// Side tables (`_sluice_stage_`, `_sluice_new_`, `_sluice_old_`) whose
    /// names match `pattern` (a LIKE pattern after the prefix).
    async fn side_tables(&self, job_tag: &str) -> Result<Vec<String>> {
        let text = self
            .q(
                "list the staging tables of",
                &format!(
                    "SELECT name FROM system.tables WHERE database = currentDatabase() AND \
                     match(name, '^_sluice_(stage|new|old)_{job_tag}') FORMAT TabSeparated"
                ),
            )
            .await?;
        Ok(text.lines().map(str::to_string).collect())
    }

    async fn drop_job_tables_or_warn(&self, job_id: &str) {
        if let Err(e) = self.drop_job_tables(&Self::job_tag(job_id)).await {
            tracing::warn!(target = %self.table, "staging tables left for the sweep: {e}");
        }
    }

    async fn drop_job_tables(&self, job_tag: &str) -> Result<usize> {
        let tables = self.side_tables(job_tag).await?;
        for t in &tables {
            self.q(
                "drop a staging table of",
                &format!("DROP TABLE IF EXISTS {}", quote_ident(t)),
            )
            .await?;
        }
        Ok(tables.len())
    }

    async fn columns(&self) -> Result<Vec<(String, ChType)>> {
        if let Some(c) = &self.columns {
            return Ok(c.clone());
        }
        let text = self
            .q(
                "read the columns of",
                &format!(
                    "DESCRIBE TABLE {} FORMAT TabSeparated",
                    quote_ident(&self.table)
                ),
            )
            .await?;
        let described: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| {
                let mut p = l.split('\t');
                Some((p.next()?.to_string(), p.next()?.replace("\\'", "'")))
            })
            .collect();
        self.schema
            .fields()
            .iter()
            .map(|f| {
                let (_, ty) = described
                    .iter()
                    .find(|(n, _)| n == f.name())
                    .ok_or_else(|| ConnectorError::SchemaMismatch {
                        target: format!("clickhouse table {} at {}", self.table, self.conn),
                        reason: format!("the table has no column \"{}\"", f.name()),
                    })?;
                let t = ChType::parse(ty).ok_or_else(|| ConnectorError::SchemaMismatch {
                    target: format!("clickhouse table {} at {}", self.table, self.conn),
                    reason: format!(
                        "column \"{}\" has type {ty}, which Sluice cannot write",
                        f.name()
                    ),
                })?;
                Ok((f.name().clone(), t))
            })
            .collect()
    }

    fn column_list(&self) -> String {
        self.schema
            .fields()
            .iter()
            .map(|f| quote_ident(f.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[async_trait]
impl Sink for ClickHouseSink {
    fn target(&self) -> String {
        format!(
            "{} (clickhouse table {} at {})",
            self.name, self.table, self.conn
        )
    }

    fn descriptor(&self) -> Result<SinkDescriptor> {
        Ok(SinkDescriptor {
            connector: "clickhouse".into(),
            name: self.name.clone(),
            location: String::new(),
            format: String::new(),
            options: self.options.clone(),
            partition_cols: vec![],
            primary_key: vec![],
            mode: self.mode.clone(),
        })
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn mode(&self) -> &WriteMode {
        &self.mode
    }

    async fn begin(&self, job_id: &str) -> Result<()> {
        self.ensure_ledger().await?;
        self.renew(job_id).await?;
        // Drop side tables of jobs whose lease has run out.
        let expired = self
            .q(
                "find expired staging tables of",
                "SELECT job_tag FROM _sluice_leases GROUP BY job_tag \
                 HAVING max(lease_until) < now() FORMAT TabSeparated",
            )
            .await?;
        let mut swept = 0;
        for tag in expired.lines() {
            swept += self.drop_job_tables(tag).await?;
        }
        if swept > 0 {
            tracing::info!(target = %self.table, swept, "dropped staging tables of expired jobs");
        }
        Ok(())
    }

    async fn heartbeat(&self, job_id: &str) -> Result<()> {
        self.renew(job_id).await
    }

    async fn open_writer(
        &self,
        job_id: &str,
        task: u64,
        attempt: u32,
    ) -> Result<Box<dyn SinkWriter>> {
        let columns = self.columns().await?;
        let stage = format!(
            "_sluice_stage_{}_{}",
            Self::job_tag(job_id),
            hash_hex(&format!("{job_id}/{task}/{attempt}"), 6)
        );
        self.q(
            "create a staging table for",
            &format!(
                "CREATE TABLE {} AS {}",
                quote_ident(&stage),
                quote_ident(&self.table)
            ),
        )
        .await?;
        Ok(Box::new(ClickHouseWriter {
            sink: Arc::new(self.clone()),
            insert: format!(
                "INSERT INTO {} ({}) FORMAT RowBinary",
                quote_ident(&stage),
                self.column_list()
            ),
            stage,
            columns,
            buf: BytesMut::with_capacity(self.batch_bytes + (1 << 20)),
            task,
            attempt,
            rows: 0,
            bytes: 0,
        }))
    }

    async fn commit(&self, commit: JobCommit) -> Result<CommitOutcome> {
        crate::sink::finish_now(self.commit_revocable(commit).await?).await
    }

    async fn commit_revocable(
        &self,
        commit: JobCommit,
    ) -> Result<(CommitOutcome, Option<Box<dyn Revocable>>)> {
        let mut messages = commit.messages.clone();
        messages.sort_by_key(|m| m.task);
        let staged: u64 = messages.iter().map(|m| m.rows).sum();
        let done = self
            .q(
                "read the commit ledger of",
                &format!(
                    "SELECT stage FROM _sluice_commits WHERE target = {} AND job_id = {} \
                     FORMAT TabSeparated",
                    quote_literal(&self.table),
                    quote_literal(&commit.job_id)
                ),
            )
            .await?;
        let done: Vec<&str> = done.lines().collect();
        if let Some(run_id) = &commit.run_id
            && !commit.force
            && self.mode == WriteMode::Append
            && done.is_empty()
        {
            let seen = self
                .q(
                    "read the commit ledger of",
                    &format!(
                        "SELECT count() FROM _sluice_commits WHERE target = {} AND run_id = {} \
                         AND mode = 'append' AND job_id != {}",
                        quote_literal(&self.table),
                        quote_literal(run_id),
                        quote_literal(&commit.job_id)
                    ),
                )
                .await?;
            if seen.trim() != "0" {
                self.abort(&commit.job_id).await?;
                let outcome = CommitOutcome {
                    skipped: Some(format!(
                        "run id {run_id} was already committed to {}; not appended again \
                         (use --force-rerun to append anyway)",
                        self.name
                    )),
                    ..Default::default()
                };
                return Ok((outcome, None));
            }
        }
        let cols = self.column_list();
        let record = |stage: &str, rows: u64| {
            format!(
                "INSERT INTO _sluice_commits (target, job_id, run_id, mode, stage, rows) VALUES \
                 ({}, {}, {}, {}, {}, {rows})",
                quote_literal(&self.table),
                quote_literal(&commit.job_id),
                commit
                    .run_id
                    .as_deref()
                    .map(quote_literal)
                    .unwrap_or_else(|| "NULL".into()),
                quote_literal(if self.mode == WriteMode::Append {
                    "append"
                } else {
                    "overwrite"
                }),
                quote_literal(stage),
            )
        };
        let stage_of = |m: &CommitMessage| -> Result<String> {
            m.payload
                .get("stage")
                .and_then(|s| s.as_str())
                .map(str::to_string)
                .ok_or_else(|| ConnectorError::Internal("commit message without stage".into()))
        };
        if self.mode == WriteMode::Append {
            for m in &messages {
                let stage = stage_of(m)?;
                if done.contains(&stage.as_str()) {
                    continue;
                }
                self.q(
                    "write",
                    &format!(
                        "INSERT INTO {} ({cols}) SELECT {cols} FROM {}",
                        quote_ident(&self.table),
                        quote_ident(&stage)
                    ),
                )
                .await?;
                self.q("record the commit of", &record(&stage, m.rows))
                    .await?;
            }
        } else if done.is_empty() {
            let tag = Self::job_tag(&commit.job_id);
            let new = format!("_sluice_new_{tag}");
            let old = format!("_sluice_old_{tag}");
            let target = quote_ident(&self.table);
            self.q(
                "create the replacement of",
                &format!("DROP TABLE IF EXISTS {}", quote_ident(&new)),
            )
            .await?;
            self.q(
                "create the replacement of",
                &format!("CREATE TABLE {} AS {target}", quote_ident(&new)),
            )
            .await?;
            for m in &messages {
                self.q(
                    "write",
                    &format!(
                        "INSERT INTO {} ({cols}) SELECT {cols} FROM {}",
                        quote_ident(&new),
                        quote_ident(&stage_of(m)?)
                    ),
                )
                .await?;
            }
            // An `old` table left by an earlier attempt of this commit
            // (crashed after its rename) holds contents already replaced.
            self.q(
                "swap in the new contents of",
                &format!("DROP TABLE IF EXISTS {}", quote_ident(&old)),
            )
            .await?;
            self.q(
                "swap in the new contents of",
                &format!(
                    "RENAME TABLE {target} TO {}, {} TO {target}",
                    quote_ident(&old),
                    quote_ident(&new)
                ),
            )
            .await?;
            let outcome = CommitOutcome {
                rows: staged,
                bytes: messages.iter().map(|m| m.bytes).sum(),
                files: 0,
                skipped: None,
            };
            // The ledger row is written once the publish is final: the
            // ledger (a Log table) cannot forget a swapped-back one. A crash
            // before it makes a retried commit replace the table again
            // from the same staged rows, with the same result.
            let undo = RenamedTable {
                sink: self.clone(),
                job_tag: tag,
                new,
                old,
                record: record("*", staged),
            };
            return Ok((outcome, Some(Box::new(undo))));
        }
        self.drop_job_tables_or_warn(&commit.job_id).await;
        let outcome = CommitOutcome {
            rows: staged,
            bytes: messages.iter().map(|m| m.bytes).sum(),
            files: 0,
            skipped: None,
        };
        Ok((outcome, None))
    }

    async fn abort(&self, job_id: &str) -> Result<()> {
        match self.drop_job_tables(&Self::job_tag(job_id)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// An overwrite swapped in by `RENAME TABLE`, whose old table is kept
/// until [`Revocable::finish`].
struct RenamedTable {
    sink: ClickHouseSink,
    job_tag: String,
    new: String,
    old: String,
    /// The ledger row, written by `finish`.
    record: String,
}

#[async_trait]
impl Revocable for RenamedTable {
    async fn swap_back(self: Box<Self>) -> Result<()> {
        let target = quote_ident(&self.sink.table);
        self.sink
            .q(
                "swap back the previous contents of",
                &format!(
                    "RENAME TABLE {target} TO {}, {} TO {target}",
                    quote_ident(&self.new),
                    quote_ident(&self.old)
                ),
            )
            .await
            .map(|_| ())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        self.sink.q("record the commit of", &self.record).await?;
        if let Err(e) = self.sink.drop_job_tables(&self.job_tag).await {
            tracing::warn!(target = %self.sink.table, "staging tables left for the sweep: {e}");
        }
        Ok(())
    }
}

/// One task attempt's `RowBinary` inserts into its staging table.
struct ClickHouseWriter {
    sink: Arc<ClickHouseSink>,
    insert: String,
    stage: String,
    columns: Vec<(String, ChType)>,
    buf: BytesMut,
    task: u64,
    attempt: u32,
    rows: u64,
    bytes: u64,
}

impl ClickHouseWriter {
    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let body = self.buf.split().freeze();
        self.bytes += body.len() as u64;
        self.sink
            .conn
            .run(Some(&self.sink.table), "stage rows for", &self.insert, body)
            .await
            .map(|_| ())
    }
}

/// A column prepared for `RowBinary` encoding.
struct Encoder {
    array: ArrayRef,
    ty: ChType,
    nullable: bool,
}

impl Encoder {
    fn try_new(array: &ArrayRef, ty: &ChType) -> std::result::Result<Self, String> {
        let nullable = matches!(ty, ChType::Nullable(_));
        let base = ty.base().clone();
        let want = match &base {
            ChType::DateTime => DataType::Timestamp(
                TimeUnit::Second,
                match array.data_type() {
                    DataType::Timestamp(_, tz) => tz.clone(),
                    _ => None,
                },
            ),
            other => other.data_type(),
        };
        let array = if array.data_type() == &want {
            Arc::clone(array)
        } else {
            let out = cast(array, &want).map_err(|e| e.to_string())?;
            if out.null_count() > array.null_count() {
                return Err(format!(
                    "some {} values do not fit the column's type {want}",
                    array.data_type()
                ));
            }
            out
        };
        if !nullable && array.null_count() > 0 {
            return Err(
                "the column is not Nullable but the rows hold NULL; COALESCE it in the query \
                 or make the column Nullable"
                    .into(),
            );
        }
        Ok(Self {
            array,
            ty: base,
            nullable,
        })
    }

    fn encode(&self, i: usize, out: &mut BytesMut) -> std::result::Result<(), String> {
        let a = &self.array;
        if self.nullable {
            if a.is_null(i) {
                out.put_u8(1);
                return Ok(());
            }
            out.put_u8(0);
        }
        match &self.ty {
            ChType::Int8 => out.put_i8(a.as_primitive::<Int8Type>().value(i)),
            ChType::Int16 => out.put_i16_le(a.as_primitive::<Int16Type>().value(i)),
            ChType::Int32 => out.put_i32_le(a.as_primitive::<Int32Type>().value(i)),
            ChType::Int64 => out.put_i64_le(a.as_primitive::<Int64Type>().value(i)),
            ChType::UInt8 => out.put_u8(a.as_primitive::<UInt8Type>().value(i)),
            ChType::UInt16 => out.put_u16_le(a.as_primitive::<UInt16Type>().value(i)),
            ChType::UInt32 => out.put_u32_le(a.as_primitive::<UInt32Type>().value(i)),
            ChType::UInt64 => out.put_u64_le(a.as_primitive::<UInt64Type>().value(i)),
            ChType::Float32 => out.put_f32_le(a.as_primitive::<Float32Type>().value(i)),
            ChType::Float64 => out.put_f64_le(a.as_primitive::<Float64Type>().value(i)),
            ChType::Decimal(p, _) => {
                let v = a.as_primitive::<Decimal128Type>().value(i);
                match p {
                    0..=9 => out.put_i32_le(v as i32),
                    10..=18 => out.put_i64_le(v as i64),
                    _ => out.put_i128_le(v),
                }
            }
            ChType::String => {
                let s = a.as_string::<i32>().value(i).as_bytes();
                put_varint(out, s.len() as u64);
                out.put_slice(s);
            }
            ChType::FixedString(n) => {
                let s = a.as_string::<i32>().value(i).as_bytes();
                if s.len() > *n {
                    return Err(format!(
                        "the value '{}' is longer than FixedString({n})",
                        String::from_utf8_lossy(s)
                    ));
                }
                out.put_slice(s);
                out.put_bytes(0, n - s.len());
            }
            ChType::Date => {
                let days = a.as_primitive::<Date32Type>().value(i);
                let days = u16::try_from(days).map_err(|_| {
                    format!("date {days} days from 1970 is outside ClickHouse's Date")
                })?;
                out.put_u16_le(days);
            }
            ChType::DateTime => {
                let secs = a.as_primitive::<TimestampSecondType>().value(i);
                let secs = u32::try_from(secs).map_err(|_| {
                    format!("timestamp {secs} s from 1970 is outside ClickHouse's DateTime")
                })?;
                out.put_u32_le(secs);
            }
            ChType::Nullable(_) => unreachable!("base type"),
        }
        Ok(())
    }
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

#[async_trait]
impl SinkWriter for ClickHouseWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let sink = Arc::clone(&self.sink);
        let value_error = |column: &str, reason: String| ConnectorError::Database {
            connector: "clickhouse",
            on: format!("table {} at {}", sink.table, sink.conn),
            action: format!("write column \"{column}\""),
            message: reason,
            hint: "fix the value or cast it in the query to the column's type".into(),
            class: ErrorClass::User,
        };
        let encoders = self
            .columns
            .iter()
            .map(|(name, ty)| {
                let array = batch.column_by_name(name).ok_or_else(|| {
                    ConnectorError::Internal(format!("written batch lacks column {name}"))
                })?;
                Encoder::try_new(array, ty).map_err(|r| value_error(name, r))
            })
            .collect::<Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            for (enc, (name, _)) in encoders.iter().zip(&self.columns) {
                enc.encode(row, &mut self.buf)
                    .map_err(|r| value_error(name, r))?;
            }
            self.rows += 1;
            if self.buf.len() >= sink.batch_bytes {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<CommitMessage> {
        self.flush().await?;
        Ok(CommitMessage {
            task: self.task,
            attempt: self.attempt,
            rows: self.rows,
            bytes: self.bytes,
            payload: serde_json::json!({ "stage": self.stage }),
        })
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.sink
            .q(
                "drop a staging table of",
                &format!("DROP TABLE IF EXISTS {}", quote_ident(&self.stage)),
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse() {
        assert_eq!(
            ChType::parse("Nullable(Decimal(10, 2))"),
            Some(ChType::Nullable(Box::new(ChType::Decimal(10, 2))))
        );
        assert_eq!(ChType::parse("DateTime('UTC')"), Some(ChType::DateTime));
        assert_eq!(ChType::parse("Decimal64(4)"), Some(ChType::Decimal(18, 4)));
        assert_eq!(
            ChType::parse("FixedString(3)"),
            Some(ChType::FixedString(3))
        );
        assert_eq!(ChType::parse("Array(Int32)"), None);
        assert_eq!(ChType::parse("Enum8('a' = 1)"), None);
    }

    #[test]
    fn row_binary_of_a_nullable_string_and_a_decimal() {
        let s: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![Some("hé"), None]));
        let enc = Encoder::try_new(&s, &ChType::Nullable(Box::new(ChType::String))).unwrap();
        let mut out = BytesMut::new();
        enc.encode(0, &mut out).unwrap();
        enc.encode(1, &mut out).unwrap();
        assert_eq!(&out[..], b"\x00\x03h\xc3\xa9\x01");
        let d: ArrayRef = Arc::new(
            arrow::array::Decimal128Array::from(vec![-5])
                .with_precision_and_scale(10, 2)
                .unwrap(),
        );
        let enc = Encoder::try_new(&d, &ChType::Decimal(10, 2)).unwrap();
        let mut out = BytesMut::new();
        enc.encode(0, &mut out).unwrap();
        assert_eq!(&out[..], &(-5i64).to_le_bytes());
        let nulls: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![None::<i32>]));
        assert!(Encoder::try_new(&nulls, &ChType::Int32).is_err());
        let mut v = BytesMut::new();
        put_varint(&mut v, 300);
        assert_eq!(&v[..], &[0xac, 0x02]);
    }
}
