//! From a table declaration to a table provider and sinks.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::TableProvider;

use crate::clickhouse::{CLICKHOUSE_OPTIONS, ClickHouseSink, ClickHouseTable};
use crate::error::{ConnectorError, Result};
use crate::file::{FileFormatKind, FileTable, FileTableConfig};
use crate::mysql::{MYSQL_OPTIONS, MyConnection, MySqlSink, MySqlTable};
use crate::options::TableOptions;
use crate::postgres::{POSTGRES_OPTIONS, PgConnection, PostgresSink, PostgresTable};
use crate::sink::{Sink, SinkDescriptor, WriteMode};
use crate::store::{STORE_OPTION_PREFIXES, StoreRegistry};

/// Connectors this build knows.
pub const CONNECTORS: &[&str] = &["filesystem", "postgres", "mysql", "clickhouse"];

/// Options of the `filesystem` connector (besides `format.*` and store options).
const FILESYSTEM_OPTIONS: &[&str] = &[
    "connector",
    "path",
    "format",
    "error-handling.max-bad-records",
    "sort-order",
    "csv.field-delimiter",
    "csv.quote-character",
    "csv.null-literal",
    "csv.include-header",
    "parquet.compression",
];

/// A table declaration: connector, options and (optionally) columns.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Table name as declared.
    pub name: String,
    /// Connector name (`filesystem`, ...).
    pub connector: String,
    /// Options, including `path` and `format` for files.
    pub options: TableOptions,
    /// Declared columns, including partition columns; `None` to infer.
    pub columns: Option<SchemaRef>,
    /// Hive partition columns, in directory order.
    pub partition_cols: Vec<String>,
    /// Declared primary key (not enforced).
    pub primary_key: Vec<String>,
    /// Declared `UNIQUE (...)` column sets (not enforced).
    pub unique: Vec<Vec<String>>,
}

/// A table that can be read and written.
pub trait ConnectorTable: TableProvider {
    /// A sink writing rows of the table's schema with `mode`.
    fn sink(&self, mode: WriteMode) -> Result<Arc<dyn Sink>>;

    /// Names of the partition columns.
    fn partition_columns(&self) -> Vec<String>;

    /// Whether `INSERT OVERWRITE t PARTITION (col = 'value', ...)` may name
    /// any column: the rows holding those values are replaced (database
    /// tables, which have no partition directories).
    fn overwrites_rows_by_value(&self) -> bool {
        false
    }

    /// How lookup joins against this table cache its rows, when the
    /// connector answers key lookups (databases do, files do not).
    fn lookup_options(&self) -> Option<crate::lookup::LookupOptions> {
        None
    }

    /// Connector name, for messages.
    fn connector_name(&self) -> &'static str;
}

impl ConnectorTable for PostgresTable {
    fn overwrites_rows_by_value(&self) -> bool {
        true
    }

    fn sink(&self, mode: WriteMode) -> Result<Arc<dyn Sink>> {
        PostgresTable::sink(self, mode)
    }

    fn partition_columns(&self) -> Vec<String> {
        vec![]
    }

    fn connector_name(&self) -> &'static str {
        "postgres"
    }

    fn lookup_options(&self) -> Option<crate::lookup::LookupOptions> {
        Some(PostgresTable::lookup_options(self))
    }
}

impl ConnectorTable for MySqlTable {
    fn overwrites_rows_by_value(&self) -> bool {
        true
    }

    fn sink(&self, mode: WriteMode) -> Result<Arc<dyn Sink>> {
        MySqlTable::sink(self, mode)
    }

    fn partition_columns(&self) -> Vec<String> {
        vec![]
    }

    fn connector_name(&self) -> &'static str {
        "mysql"
    }

    fn lookup_options(&self) -> Option<crate::lookup::LookupOptions> {
        Some(MySqlTable::lookup_options(self))
    }
}

impl ConnectorTable for ClickHouseTable {
    fn sink(&self, mode: WriteMode) -> Result<Arc<dyn Sink>> {
        ClickHouseTable::sink(self, mode)
    }

    fn partition_columns(&self) -> Vec<String> {
        vec![]
    }

    fn connector_name(&self) -> &'static str {
        "clickhouse"
    }
}

impl ConnectorTable for FileTable {
    fn sink(&self, mode: WriteMode) -> Result<Arc<dyn Sink>> {
        FileTable::sink(self, mode)
    }

    fn partition_columns(&self) -> Vec<String> {
        FileTable::partition_columns(self)
    }

    fn connector_name(&self) -> &'static str {
        "filesystem"
    }
}

/// Opens tables declared with any connector.
#[derive(Debug)]
pub struct ConnectorFactory {
    stores: Arc<StoreRegistry>,
}

impl ConnectorFactory {
    /// A factory resolving locations through `stores`.
    pub fn new(stores: Arc<StoreRegistry>) -> Self {
        Self { stores }
    }

    /// The store registry.
    pub fn stores(&self) -> &Arc<StoreRegistry> {
        &self.stores
    }

    /// Checks the options of `CREATE CONNECTION ... WITH ('type' = kind, ...)`:
    /// those a table of that connector accepts.
    pub fn validate_connection(&self, kind: &str, options: &TableOptions) -> Result<()> {
        match kind {
            "filesystem" => options.check_known(
                "filesystem",
                FILESYSTEM_OPTIONS,
                &[&["format."][..], STORE_OPTION_PREFIXES].concat(),
            ),
            "postgres" => options.check_known("postgres", POSTGRES_OPTIONS, &[]),
            "mysql" => options.check_known("mysql", MYSQL_OPTIONS, &[]),
            "clickhouse" => options.check_known("clickhouse", CLICKHOUSE_OPTIONS, &[]),
            other => Err(ConnectorError::UnknownConnector {
                name: other.to_string(),
                available: CONNECTORS.join(", "),
            }),
        }
    }

    /// Checks a declaration's options without touching any data.
    pub fn validate(&self, spec: &TableSpec, state: &dyn Session) -> Result<()> {
        match spec.connector.as_str() {
            "filesystem" => {
                spec.options.check_known(
                    "filesystem",
                    FILESYSTEM_OPTIONS,
                    &[&["format."][..], STORE_OPTION_PREFIXES].concat(),
                )?;
                let kind = self.format_kind(spec)?;
                FileTableConfig::new(kind, &spec.options, state)?;
                self.path(spec)?;
                Ok(())
            }
            db @ ("postgres" | "mysql" | "clickhouse") => {
                let known = match db {
                    "postgres" => POSTGRES_OPTIONS,
                    "mysql" => MYSQL_OPTIONS,
                    _ => CLICKHOUSE_OPTIONS,
                };
                spec.options.check_known(db, known, &[])?;
                if !spec.partition_cols.is_empty() {
                    return Err(ConnectorError::InvalidOption {
                        key: "PARTITIONED BY".into(),
                        reason: format!(
                            "{db} tables are not partitioned by Sluice; remove the clause"
                        ),
                    });
                }
                Ok(())
            }
            other => Err(ConnectorError::UnknownConnector {
                name: other.to_string(),
                available: CONNECTORS.join(", "),
            }),
        }
    }

    fn format_kind(&self, spec: &TableSpec) -> Result<FileFormatKind> {
        let format =
            spec.options
                .literal("format")?
                .ok_or_else(|| ConnectorError::MissingOption {
                    connector: spec.connector.clone(),
                    key: "format".into(),
                    hint: "set 'format' = 'parquet', 'csv' or 'json'".into(),
                })?;
        FileFormatKind::parse(format)
    }

    fn path<'a>(&self, spec: &'a TableSpec) -> Result<&'a str> {
        spec.options
            .literal("path")?
            .ok_or_else(|| ConnectorError::MissingOption {
                connector: spec.connector.clone(),
                key: "path".into(),
                hint: "set 'path' to a directory or file URL, e.g. 's3://bucket/orders/'".into(),
            })
    }

    /// Opens a sink from its descriptor, as an executor does for a stage
    /// plan: `schema` is the schema of the rows written. Touches no data.
    pub fn sink_from_descriptor(
        &self,
        desc: &SinkDescriptor,
        schema: SchemaRef,
        state: &dyn Session,
    ) -> Result<Arc<dyn Sink>> {
        match desc.connector.as_str() {
            "filesystem" => {
                let kind = FileFormatKind::parse(&desc.format)?;
                let config = FileTableConfig::new(kind, &desc.options, state)?;
                let loc = self.stores.resolve(&desc.location, &desc.options)?;
                Ok(Arc::new(crate::file::FileSink::try_new(
                    desc.name.clone(),
                    loc,
                    &config,
                    schema,
                    desc.partition_cols.clone(),
                    desc.mode.clone(),
                )?))
            }
            "postgres" => {
                let conn = PgConnection::from_options(&desc.options, self.stores.secrets())?;
                let table = desc.options.literal("table")?.ok_or_else(|| {
                    ConnectorError::MissingOption {
                        connector: "postgres".into(),
                        key: "table".into(),
                        hint: "set 'table' = 'schema.table' to write".into(),
                    }
                })?;
                Ok(Arc::new(PostgresSink::try_new(
                    desc.name.clone(),
                    desc.options.clone(),
                    conn,
                    table.to_string(),
                    schema,
                    desc.primary_key.clone(),
                    desc.mode.clone(),
                )?))
            }
            "clickhouse" => Ok(Arc::new(ClickHouseSink::from_descriptor(
                desc,
                schema,
                self.stores.secrets(),
            )?)),
            "mysql" => {
                let conn = MyConnection::from_options(&desc.options, self.stores.secrets())?;
                let table = desc.options.literal("table")?.ok_or_else(|| {
                    ConnectorError::MissingOption {
                        connector: "mysql".into(),
                        key: "table".into(),
                        hint: "set 'table' = 'database.table' to write".into(),
                    }
                })?;
                Ok(Arc::new(MySqlSink::try_new(
                    desc.name.clone(),
                    desc.options.clone(),
                    conn,
                    table.to_string(),
                    schema,
                    desc.primary_key.clone(),
                    desc.mode.clone(),
                )?))
            }
            other => Err(ConnectorError::UnknownConnector {
                name: other.to_string(),
                available: CONNECTORS.join(", "),
            }),
        }
    }

    /// Opens the declared table. Reads the store only to infer an undeclared schema.
    pub async fn open(
        &self,
        spec: &TableSpec,
        state: &dyn Session,
    ) -> Result<Arc<dyn ConnectorTable>> {
        self.validate(spec, state)?;
        match spec.connector.as_str() {
            "filesystem" => {
                let kind = self.format_kind(spec)?;
                let config = FileTableConfig::new(kind, &spec.options, state)?;
                let loc = self.stores.resolve(self.path(spec)?, &spec.options)?;
                let table = FileTable::try_new(
                    spec.name.clone(),
                    loc,
                    config,
                    spec.columns.clone(),
                    spec.partition_cols.clone(),
                    state,
                )
                .await?
                .with_keys(&spec.primary_key, &spec.unique)?;
                Ok(Arc::new(table))
            }
            "postgres" => Ok(Arc::new(
                PostgresTable::try_new(spec, self.stores.secrets()).await?,
            )),
            "mysql" => Ok(Arc::new(
                MySqlTable::try_new(spec, self.stores.secrets()).await?,
            )),
            "clickhouse" => Ok(Arc::new(
                ClickHouseTable::try_new(spec, self.stores.secrets()).await?,
            )),
            other => Err(ConnectorError::UnknownConnector {
                name: other.to_string(),
                available: CONNECTORS.join(", "),
            }),
        }
    }
}
