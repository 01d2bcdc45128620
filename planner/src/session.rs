//! A Sluice session: the DataFusion context, the catalog, and binding of
//! statements to plans.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use datafusion::common::Column;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, LogicalPlanBuilder, cast, lit};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{Expr, SessionConfig, SessionContext};
use datafusion::sql::parser::{CreateExternalTable as DfCreateExternal, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{ObjectName, Query, Statement, TableObject};
use sluice_connectors::sink::WriteProgress;
use sluice_connectors::{
    ConnectorFactory, SecretResolver, Sink, SinkExec, StoreRegistry, TableOptions, TableSpec,
    WriteMode, factory::ConnectorTable,
};

use crate::catalog::{Catalog, MemoryCatalog, TableEntry};
use crate::config::{SluiceOptions, resolve_setting, sluice_options};
use crate::ddl::{render_create_table, schema_of};
use crate::error::{PlannerError, Result};
use crate::lookup::{BoundTables, LOOKUP_FUNCTION, LookupFunction, SluiceQueryPlanner};
use crate::parser::{CopySource, CopyTo, CreateTable, SluiceStatement, partition_spec_item};

mod statement_set;

use statement_set::BoundInsert;
pub use statement_set::WriteSet;

/// What kind of statement ran, for summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// CREATE TABLE / EXTERNAL TABLE.
    CreateTable,
    /// CREATE VIEW and other DataFusion DDL.
    Ddl,
    /// DROP TABLE.
    DropTable,
    /// SET.
    Set,
    /// INSERT INTO.
    Insert,
    /// INSERT OVERWRITE.
    InsertOverwrite,
    /// COPY TO.
    Copy,
    /// A query or SHOW / DESCRIBE / EXPLAIN.
    Query,
    /// EXECUTE STATEMENT SET.
    StatementSet,
}

impl StatementKind {
    /// Short upper-case label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::CreateTable => "CREATE TABLE",
            Self::Ddl => "DDL",
            Self::DropTable => "DROP TABLE",
            Self::Set => "SET",
            Self::Insert => "INSERT",
            Self::InsertOverwrite => "INSERT OVERWRITE",
            Self::Copy => "COPY",
            Self::Query => "QUERY",
            Self::StatementSet => "STATEMENT SET",
        }
    }
}

/// A write ready to run: a plan with a [`SinkExec`] at its root.
#[derive(Debug, Clone)]
pub struct WriteJob {
    /// INSERT, INSERT OVERWRITE, COPY or CREATE TABLE AS.
    pub kind: StatementKind,
    /// Target table and location.
    pub target: String,
    /// The plan; its root is a [`SinkExec`].
    pub plan: Arc<dyn ExecutionPlan>,
    /// The sink, for commit and abort.
    pub sink: Arc<dyn Sink>,
    /// Unique id of this execution.
    pub job_id: String,
    /// Stable id across re-runs with the same pipeline and variables.
    pub run_id: Option<String>,
    /// Append even if the run id was committed.
    pub force: bool,
    /// Live counters.
    pub progress: Arc<WriteProgress>,
}

/// A statement bound to what must happen.
#[derive(Debug)]
pub enum Planned {
    /// Applied already (DDL, SET).
    Done {
        /// Statement kind.
        kind: StatementKind,
        /// Object affected.
        target: Option<String>,
        /// One-line description.
        message: String,
    },
    /// A result set to stream.
    Query {
        /// The physical plan.
        plan: Arc<dyn ExecutionPlan>,
    },
    /// A write.
    Write(WriteJob),
    /// The writes of a statement set, published together.
    WriteSet(WriteSet),
}

/// Identity of the running job, for run ids.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// File name of the script, when run from a file.
    pub script_name: Option<String>,
    /// Variables the script used, with their values.
    pub vars: BTreeMap<String, String>,
    /// `--force-rerun`.
    pub force_rerun: bool,
}

/// A session: DataFusion context plus Sluice's catalog of connector tables.
pub struct SluiceSession {
    ctx: SessionContext,
    /// Declarations shared with other sessions (a server's catalog), or the
    /// run's own catalog.
    catalog: Arc<dyn Catalog>,
    /// `CREATE TEMPORARY TABLE` declarations: this session's only.
    temp: MemoryCatalog,
    factory: Arc<ConnectorFactory>,
    /// Tables bound in `ctx`, with the DDL they were bound from, so that a
    /// declaration changed by another session is re-bound.
    tables: BoundTables,
    /// Root under which tables without a connector live (server only).
    warehouse: Option<String>,
    /// Identity for run ids; `None` disables them (clients that do not say
    /// which script and statement they run).
    run: Mutex<Option<RunContext>>,
    /// `CREATE CONNECTION` declarations of this session: options (secrets
    /// as references) that tables naming the connection inherit.
    connections: Mutex<BTreeMap<String, TableOptions>>,
}

/// Default catalog and schema names.
pub const DEFAULT_CATALOG: &str = "sluice";
/// Default schema name.
pub const DEFAULT_SCHEMA: &str = "public";

impl std::fmt::Debug for SluiceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SluiceSession")
            .field("session_id", &self.ctx.session_id())
            .field("catalog", &self.catalog)
            .finish_non_exhaustive()
    }
}

impl SluiceSession {
    /// A session with a fresh in-memory catalog.
    pub fn new(config: SessionConfig, run: RunContext) -> Self {
        Self::with_catalog(
            config,
            Arc::new(RuntimeEnv::default()),
            Arc::new(MemoryCatalog::new()),
            run,
        )
    }

    /// A session over the given runtime and catalog.
    pub fn with_catalog(
        config: SessionConfig,
        runtime: Arc<RuntimeEnv>,
        catalog: Arc<dyn Catalog>,
        run: RunContext,
    ) -> Self {
        let config = config
            .with_option_extension(SluiceOptions::default())
            .with_default_catalog_and_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA)
            .with_information_schema(true);
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(Arc::clone(&runtime))
            .with_default_features()
            .with_physical_optimizer_rules(crate::broadcast::physical_optimizer_rules())
            .with_query_planner(Arc::new(SluiceQueryPlanner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let tables: BoundTables = Arc::default();
        ctx.register_udtf(
            LOOKUP_FUNCTION,
            Arc::new(LookupFunction {
                tables: Arc::clone(&tables),
            }),
        );
        let stores = Arc::new(StoreRegistry::new(runtime, SecretResolver::from_env()));
        Self {
            ctx,
            catalog,
            temp: MemoryCatalog::new(),
            factory: Arc::new(ConnectorFactory::new(stores)),
            tables,
            warehouse: None,
            run: Mutex::new(Some(run)),
            connections: Mutex::new(BTreeMap::new()),
        }
    }

    /// The connector factory (and through it, the store registry).
    pub fn connectors(&self) -> &Arc<ConnectorFactory> {
        &self.factory
    }

    /// Tables declared without a connector (and tables created by bulk
    /// ingest) are Parquet file tables under `url`.
    pub fn with_warehouse(mut self, url: impl Into<String>) -> Self {
        let mut url = url.into();
        if !url.ends_with('/') {
            url.push('/');
        }
        self.warehouse = Some(url);
        self
    }

    /// Sets the identity used for run ids of the next statements; `None`
    /// turns run ids off.
    pub fn set_run(&self, run: Option<RunContext>) {
        *self.run.lock().expect("run lock") = run;
    }

    /// Re-binds declarations read from a persistent catalog. Returns the
    /// ones that failed, with why; the caller decides whether to keep them.
    pub async fn restore_catalog(
        &self,
        declarations: Vec<(String, String)>,
    ) -> Vec<(String, String, PlannerError)> {
        let mut failed = vec![];
        for (name, ddl) in declarations {
            let result = match crate::parser::parse_statement(&ddl) {
                Ok(SluiceStatement::CreateTable(mut c)) => {
                    c.or_replace = true;
                    c.if_not_exists = false;
                    self.create_table(*c).await.map(|_| ())
                }
                Ok(_) => Err(PlannerError::Catalog {
                    message: format!("the stored declaration of {name} is not CREATE TABLE"),
                }),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                failed.push((name, ddl, e));
            }
        }
        failed
    }

    /// The declaration of `name`: this session's temporary tables first.
    pub async fn table_entry(&self, name: &str) -> Result<Option<TableEntry>> {
        if let Some(e) = self.temp.get(name).await? {
            return Ok(Some(e));
        }
        self.catalog.get(name).await
    }

    /// The schema unqualified table names are in.
    pub fn current_schema(&self) -> String {
        self.ctx
            .state()
            .config()
            .options()
            .catalog
            .default_schema
            .clone()
    }

    /// How this session names the table keyed `key`: bare in the current
    /// schema, `schema.table` elsewhere (`public.t` from another schema).
    pub fn display_name(&self, key: &str) -> String {
        let current = self.current_schema();
        match key.split_once('.') {
            Some((schema, table)) if schema == current => table.to_string(),
            Some(_) => key.to_string(),
            None if current == DEFAULT_SCHEMA => key.to_string(),
            None => format!("{DEFAULT_SCHEMA}.{key}"),
        }
    }

    /// The catalog key of `name` in this session (see [`table_key`]).
    pub fn table_key(&self, name: &ObjectName) -> Result<String> {
        table_key(name, &self.current_schema())
    }

    /// Makes DataFusion's catalog hold the schemas of the Sluice catalog,
    /// so that `schema.table` resolves in queries.
    async fn sync_schemas(&self) -> Result<()> {
        let wanted = self.catalog.schemas().await?;
        let Some(catalog) = self.ctx.catalog(DEFAULT_CATALOG) else {
            return Ok(());
        };
        for name in catalog.schema_names() {
            let builtin = name == DEFAULT_SCHEMA || name == "information_schema";
            if !builtin && !wanted.contains(&name) {
                catalog.deregister_schema(&name, true)?;
            }
        }
        for name in wanted {
            self.ensure_df_schema(&name)?;
        }
        Ok(())
    }

    /// Removes `key` from DataFusion's catalog; nothing to do when its
    /// schema is gone (dropped by another session).
    fn unregister(&self, key: &str) -> Result<()> {
        if let Some(schema) = crate::catalog::key_schema(key)
            && self
                .ctx
                .catalog(DEFAULT_CATALOG)
                .is_none_or(|c| c.schema(schema).is_none())
        {
            return Ok(());
        }
        self.ctx.deregister_table(key_reference(key))?;
        Ok(())
    }

    fn ensure_df_schema(&self, name: &str) -> Result<()> {
        if let Some(catalog) = self.ctx.catalog(DEFAULT_CATALOG)
            && catalog.schema(name).is_none()
        {
            catalog.register_schema(
                name,
                Arc::new(datafusion::catalog::MemorySchemaProvider::new()),
            )?;
        }
        Ok(())
    }

    /// `CREATE SCHEMA [IF NOT EXISTS] name`: a namespace for tables,
    /// shared by a server's sessions like its tables.
    async fn create_schema(&self, name: &str, if_not_exists: bool) -> Result<Planned> {
        let name = normalise_schema(name)?;
        self.catalog.create_schema(&name, if_not_exists).await?;
        self.ensure_df_schema(&name)?;
        Ok(Planned::Done {
            kind: StatementKind::Ddl,
            target: Some(name.clone()),
            message: format!("created schema {name}"),
        })
    }

    /// `DROP SCHEMA [IF EXISTS] name [CASCADE]`: with CASCADE, drops the
    /// schema's tables first (removing the data of warehouse tables).
    async fn drop_schema(&self, name: &str, if_exists: bool, cascade: bool) -> Result<Planned> {
        let name = normalise_schema(name)?;
        if !self.catalog.schemas().await?.contains(&name) {
            if if_exists {
                return Ok(Planned::Done {
                    kind: StatementKind::Ddl,
                    target: Some(name.clone()),
                    message: format!("schema {name} does not exist; skipped"),
                });
            }
            return Err(PlannerError::SchemaNotFound { name });
        }
        let prefix = format!("{name}.");
        let tables: Vec<String> = self
            .table_names()
            .await?
            .into_iter()
            .filter(|t| t.starts_with(&prefix))
            .collect();
        if !tables.is_empty() && !cascade {
            return Err(PlannerError::SchemaNotEmpty {
                name,
                tables: tables.join(", "),
            });
        }
        for key in &tables {
            self.drop_key(key).await?;
        }
        self.catalog.drop_schema(&name).await?;
        if let Some(catalog) = self.ctx.catalog(DEFAULT_CATALOG) {
            // Views and DataFusion tables of this session go with it.
            catalog.deregister_schema(&name, true)?;
        }
        Ok(Planned::Done {
            kind: StatementKind::Ddl,
            target: Some(name.clone()),
            message: format!("dropped schema {name}"),
        })
    }

    /// Removes the declaration `key`, unbinds it and, for a table the
    /// warehouse owns, deletes its data. Returns whether it was declared.
    async fn drop_key(&self, key: &str) -> Result<bool> {
        let entry = match self.temp.drop_table(key).await? {
            Some(e) => Some(e),
            None => self.catalog.drop_table(key).await?,
        };
        let Some(entry) = entry else {
            return Ok(false);
        };
        self.tables.lock().expect("tables lock").remove(key);
        self.unregister(key)?;
        self.delete_warehouse_data(key, &entry).await?;
        Ok(true)
    }

    /// Deletes the files of a warehouse table (one Sluice created without a
    /// connector), so a table created again under the name starts empty.
    async fn delete_warehouse_data(&self, key: &str, entry: &TableEntry) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        let Some(root) = &self.warehouse else {
            return Ok(());
        };
        let owned = format!("{root}{key}/");
        let path = entry.spec.options.literal("path")?;
        if entry.spec.connector != "filesystem" || path != Some(owned.as_str()) {
            return Ok(());
        }
        let location = self.factory.stores().resolve(&owned, &entry.spec.options)?;
        let store = Arc::clone(&location.store);
        let paths = store
            .list(Some(&location.path))
            .map_ok(|m| m.location)
            .boxed();
        store
            .delete_stream(paths)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| PlannerError::Catalog {
                message: format!("cannot delete the data of table {key} under {owned}: {e}"),
            })?;
        Ok(())
    }

    /// Names of every declared table visible to this session.
    pub async fn table_names(&self) -> Result<Vec<String>> {
        let mut names = self.temp.list().await?;
        names.extend(self.catalog.list().await?);
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Binds declarations other sessions made or changed since this
    /// session last looked, and unbinds dropped ones.
    pub async fn sync_tables(&self) -> Result<()> {
        self.sync_schemas().await?;
        let names = self.table_names().await?;
        let mut wanted: Vec<(String, TableEntry)> = Vec::with_capacity(names.len());
        for name in names {
            if let Some(e) = self.table_entry(&name).await? {
                wanted.push((name, e));
            }
        }
        let stale: Vec<String> = {
            let tables = self.tables.lock().expect("tables lock");
            tables
                .iter()
                .filter(|(n, (ddl, _))| !wanted.iter().any(|(w, e)| w == *n && &e.ddl == ddl))
                .map(|(n, _)| n.clone())
                .collect()
        };
        for name in stale {
            self.tables.lock().expect("tables lock").remove(&name);
            self.unregister(&name)?;
        }
        for (name, entry) in wanted {
            let bound = self.tables.lock().expect("tables lock").contains_key(&name);
            if !bound {
                let state = self.ctx.state();
                match self.factory.open(&entry.spec, &state).await {
                    Ok(table) => self.bind(&name, entry.ddl.clone(), table)?,
                    // One unreachable table must not fail every statement;
                    // statements that use it fail with "not found".
                    Err(e) => tracing::warn!(table = %name, "cannot open the table: {e}"),
                }
            }
        }
        Ok(())
    }

    fn bind(&self, name: &str, ddl: String, table: Arc<dyn ConnectorTable>) -> Result<()> {
        let provider: Arc<dyn datafusion::catalog::TableProvider> = Arc::clone(&table) as _;
        if let Some(schema) = crate::catalog::key_schema(name) {
            self.ensure_df_schema(schema)?;
        }
        self.ctx.deregister_table(key_reference(name))?;
        self.ctx.register_table(key_reference(name), provider)?;
        self.tables
            .lock()
            .expect("tables lock")
            .insert(name.to_string(), (ddl, table));
        Ok(())
    }

    /// Declares a Parquet table under the warehouse root with `schema`, its
    /// primary key and its unique column sets.
    pub async fn create_warehouse_table(
        &self,
        name: &str,
        schema: SchemaRef,
        (primary_key, unique): (Vec<String>, Vec<Vec<String>>),
        replace: bool,
        temporary: bool,
    ) -> Result<()> {
        let Some(root) = &self.warehouse else {
            return Err(PlannerError::Unsupported {
                what: format!("table '{name}' without a connector"),
                hint: "add WITH ('connector' = 'filesystem', 'path' = '...', 'format' = '...'), \
                       or run on a server, which keeps such tables in its warehouse"
                    .into(),
            });
        };
        let mut options = TableOptions::default();
        options.insert_literal("path", format!("{root}{name}/"));
        options.insert_literal("format", "parquet".to_string());
        let spec = TableSpec {
            name: name.to_string(),
            connector: "filesystem".into(),
            options,
            columns: Some(schema),
            partition_cols: vec![],
            primary_key,
            unique,
        };
        self.declare(spec, temporary, replace).await
    }

    async fn declare(&self, spec: TableSpec, temporary: bool, replace: bool) -> Result<()> {
        let name = spec.name.clone();
        let state = self.ctx.state();
        let table = self.factory.open(&spec, &state).await?;
        let spec = TableSpec {
            columns: Some(table.schema()),
            ..spec
        };
        let ddl = render_create_table(&spec, temporary);
        let entry = TableEntry {
            spec,
            ddl: ddl.clone(),
            temporary,
        };
        if temporary {
            // The session's own catalog follows the shared one's schemas.
            if let Some(schema) = crate::catalog::key_schema(&name) {
                if !self.catalog.schemas().await?.iter().any(|s| s == schema) {
                    return Err(PlannerError::SchemaNotFound {
                        name: schema.to_string(),
                    });
                }
                self.temp.create_schema(schema, true).await?;
            }
            self.temp.create(&name, entry, replace).await?;
        } else {
            self.catalog.create(&name, entry, replace).await?;
        }
        self.bind(&name, ddl, table)
    }

    /// Plans `INSERT [OVERWRITE] target` of `source`, mapping columns by
    /// name when every source column names a target column, else by
    /// position.
    pub async fn plan_insert_plan(
        &self,
        target: &str,
        source: LogicalPlan,
        overwrite: bool,
    ) -> Result<Planned> {
        self.sync_tables().await?;
        let table = self.connector_table(target).await?;
        let schema = table.schema();
        let source_names: Vec<String> = source
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let by_name = source_names
            .iter()
            .all(|n| schema.field_with_name(n).is_ok());
        let columns = if by_name { source_names } else { vec![] };
        let plan = project_to_target(&self.display_name(target), source, &schema, &columns, &[])?;
        let (mode, kind) = if overwrite {
            (WriteMode::Overwrite, StatementKind::InsertOverwrite)
        } else {
            (WriteMode::Append, StatementKind::Insert)
        };
        let sink = table.sink(mode)?;
        self.write_job(kind, plan, sink, None).await
    }

    /// The DataFusion context.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The current Sluice options.
    pub fn options(&self) -> SluiceOptions {
        sluice_options(self.ctx.state().config())
    }

    /// Binds one parsed statement. DDL and SET take effect now; writes and
    /// queries are returned as plans. With `dry_run`, DataFusion DDL that
    /// would compute data (CREATE TABLE AS) is planned but not run.
    pub async fn plan(
        &self,
        stmt: SluiceStatement,
        index: usize,
        dry_run: bool,
    ) -> Result<Planned> {
        self.sync_tables().await?;
        match stmt {
            SluiceStatement::CreateTable(c) => self.create_table(*c).await,
            SluiceStatement::DropTable { names, if_exists } => {
                self.drop_tables(names, if_exists).await
            }
            SluiceStatement::ShowCreateTable(name) => self.show_create_table(&name).await,
            SluiceStatement::Set { key, value } => self.set(&key, &value),
            SluiceStatement::Insert(insert) => self.plan_insert(*insert, index).await,
            SluiceStatement::StatementSet(set) => self.plan_statement_set(set, index).await,
            SluiceStatement::CreateConnection(c) => self.create_connection(*c),
            SluiceStatement::DropConnection { name, if_exists } => {
                self.drop_connection(&name, if_exists)
            }
            SluiceStatement::Copy(copy) => self.plan_copy(*copy).await,
            SluiceStatement::DataFusion(stmt) => self.plan_datafusion(*stmt, index, dry_run).await,
        }
    }

    fn set(&self, key: &str, value: &str) -> Result<Planned> {
        let state = self.ctx.state_ref();
        let mut state = state.write();
        let setting = resolve_setting(key, value, state.config())?;
        if !setting.key.is_empty() {
            state
                .config_mut()
                .options_mut()
                .set(&setting.key, &setting.value)
                .map_err(|e| PlannerError::InvalidSetting {
                    key: key.to_string(),
                    value: value.to_string(),
                    reason: e.strip_backtrace(),
                })?;
        }
        if setting.key == "sluice.runtime_mode" {
            apply_mode_settings(state.config_mut().options_mut(), &setting.value)?;
        }
        // Functions that depend on settings (now() on the time zone) are
        // rebuilt, as DataFusion's own SET does.
        let updated: Vec<_> = state
            .scalar_functions()
            .values()
            .filter_map(|udf| {
                udf.inner()
                    .with_updated_config(state.config().options())
                    .map(Arc::new)
            })
            .collect();
        for udf in updated {
            datafusion::execution::FunctionRegistry::register_udf(&mut *state, udf)?;
        }
        Ok(Planned::Done {
            kind: StatementKind::Set,
            target: Some(key.to_string()),
            message: format!("{key} = {value}"),
        })
    }

    fn create_connection(&self, c: crate::parser::CreateConnection) -> Result<Planned> {
        let name = c.name.to_lowercase();
        let mut options = c.options;
        let kind = match options.remove("type") {
            Some(sluice_connectors::OptionValue::Literal(v)) => v.to_ascii_lowercase(),
            Some(_) => {
                return Err(sluice_connectors::ConnectorError::InvalidOption {
                    key: "type".into(),
                    reason: "the connection type cannot be a secret".into(),
                }
                .into());
            }
            None => {
                return Err(sluice_connectors::ConnectorError::MissingOption {
                    connector: "connection".into(),
                    key: "type".into(),
                    hint: format!(
                        "add 'type' = '...' to the WITH clause; available: {}",
                        sluice_connectors::factory::CONNECTORS.join(", ")
                    ),
                }
                .into());
            }
        };
        self.factory.validate_connection(&kind, &options)?;
        options.insert_literal("connector", kind);
        let mut connections = self.connections.lock().expect("connections lock");
        if connections.contains_key(&name) && !c.or_replace {
            if c.if_not_exists {
                return Ok(Planned::Done {
                    kind: StatementKind::Ddl,
                    target: Some(name.clone()),
                    message: format!("connection {name} exists; skipped"),
                });
            }
            return Err(PlannerError::Unsupported {
                what: format!("CREATE CONNECTION {name}: the connection already exists"),
                hint: "use CREATE OR REPLACE CONNECTION, or CREATE CONNECTION IF NOT EXISTS".into(),
            });
        }
        connections.insert(name.clone(), options);
        Ok(Planned::Done {
            kind: StatementKind::Ddl,
            target: Some(name.clone()),
            message: format!("created connection {name}"),
        })
    }

    fn drop_connection(&self, name: &str, if_exists: bool) -> Result<Planned> {
        let name = name.to_lowercase();
        let removed = self
            .connections
            .lock()
            .expect("connections lock")
            .remove(&name)
            .is_some();
        if !removed && !if_exists {
            return Err(PlannerError::Unsupported {
                what: format!("DROP CONNECTION {name}: no such connection"),
                hint: "use DROP CONNECTION IF EXISTS".into(),
            });
        }
        Ok(Planned::Done {
            kind: StatementKind::Ddl,
            target: Some(name.clone()),
            message: format!("dropped connection {name}"),
        })
    }

    /// Table options with those of the named connection (`'connection' =
    /// 'name'`) filled in; the table's own options win.
    fn with_connection(&self, mut options: TableOptions) -> Result<TableOptions> {
        let Some(value) = options.remove("connection") else {
            return Ok(options);
        };
        let sluice_connectors::OptionValue::Literal(conn) = value else {
            return Err(sluice_connectors::ConnectorError::InvalidOption {
                key: "connection".into(),
                reason: "the connection name cannot be a secret".into(),
            }
            .into());
        };
        let connections = self.connections.lock().expect("connections lock");
        let Some(inherited) = connections.get(&conn.to_lowercase()) else {
            let known: Vec<&str> = connections.keys().map(String::as_str).collect();
            return Err(sluice_connectors::ConnectorError::InvalidOption {
                key: "connection".into(),
                reason: format!(
                    "no connection named '{conn}' (declared: {}); declare it first with \
                     CREATE CONNECTION {conn} WITH ('type' = ..., ...)",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            }
            .into());
        };
        if let (Some(table), Some(kind)) = (
            options.literal("connector")?,
            inherited.literal("connector")?,
        ) && !table.eq_ignore_ascii_case(kind)
        {
            return Err(sluice_connectors::ConnectorError::InvalidOption {
                key: "connection".into(),
                reason: format!(
                    "connection '{conn}' is of type '{kind}' but the table's connector is '{table}'"
                ),
            }
            .into());
        }
        let mut merged = inherited.clone();
        for (k, v) in options.iter() {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged)
    }

    async fn create_table(&self, c: CreateTable) -> Result<Planned> {
        let name = self.table_key(&c.name)?;
        if !c.or_replace && self.table_entry(&name).await?.is_some() {
            if c.if_not_exists {
                return Ok(Planned::Done {
                    kind: StatementKind::CreateTable,
                    target: Some(name.clone()),
                    message: format!("table {name} exists; skipped"),
                });
            }
            return Err(PlannerError::TableExists {
                name: self.display_name(&name),
            });
        }
        let mut options = self.with_connection(c.options.clone())?;
        let connector = match options.remove("connector") {
            Some(sluice_connectors::OptionValue::Literal(v)) => v.to_ascii_lowercase(),
            Some(_) => {
                return Err(sluice_connectors::ConnectorError::InvalidOption {
                    key: "connector".into(),
                    reason: "the connector name cannot be a secret".into(),
                }
                .into());
            }
            None if self.warehouse.is_some() && c.options.is_empty() => {
                let schema = if c.columns.is_empty() {
                    return Err(PlannerError::Unsupported {
                        what: format!("CREATE TABLE {name} without columns or a connector"),
                        hint: "list the columns, e.g. CREATE TABLE t (id BIGINT, name VARCHAR)"
                            .into(),
                    });
                } else {
                    schema_of(&self.ctx, &c.columns).await?
                };
                self.create_warehouse_table(
                    &name,
                    schema,
                    (c.primary_key.clone(), c.unique.clone()),
                    c.or_replace,
                    c.temporary,
                )
                .await?;
                return Ok(Planned::Done {
                    kind: StatementKind::CreateTable,
                    target: Some(name.clone()),
                    message: format!("created table {name}"),
                });
            }
            None => {
                return Err(sluice_connectors::ConnectorError::MissingOption {
                    connector: "?".into(),
                    key: "connector".into(),
                    hint: format!(
                        "add 'connector' = '...' to the WITH clause; available: {}",
                        sluice_connectors::factory::CONNECTORS.join(", ")
                    ),
                }
                .into());
            }
        };
        let columns = if c.columns.is_empty() {
            None
        } else {
            Some(schema_of(&self.ctx, &c.columns).await?)
        };
        let spec = TableSpec {
            name: name.clone(),
            connector,
            options,
            columns,
            partition_cols: c.partition_cols.clone(),
            primary_key: c.primary_key.clone(),
            unique: c.unique.clone(),
        };
        self.declare(spec, c.temporary, c.or_replace).await?;
        Ok(Planned::Done {
            kind: StatementKind::CreateTable,
            target: Some(name.clone()),
            message: format!("created table {name}"),
        })
    }

    async fn drop_tables(&self, names: Vec<ObjectName>, if_exists: bool) -> Result<Planned> {
        let mut dropped = vec![];
        for n in &names {
            let name = self.table_key(n)?;
            if self.drop_key(&name).await? {
                dropped.push(name);
            } else if self.ctx.table_exist(key_reference(&name))? {
                // A DataFusion table (CREATE TABLE AS, views are DROP VIEW).
                self.ctx.deregister_table(key_reference(&name))?;
                dropped.push(name);
            } else if !if_exists {
                return Err(self.not_found(&name).await);
            }
        }
        Ok(Planned::Done {
            kind: StatementKind::DropTable,
            target: Some(dropped.join(", ")),
            message: format!(
                "dropped {}",
                if dropped.is_empty() {
                    "nothing".to_string()
                } else {
                    dropped.join(", ")
                }
            ),
        })
    }

    async fn not_found(&self, name: &str) -> PlannerError {
        let known: Vec<String> = self
            .table_names()
            .await
            .unwrap_or_default()
            .iter()
            .map(|k| self.display_name(k))
            .collect();
        PlannerError::TableNotFound {
            name: self.display_name(name),
            known: if known.is_empty() {
                "none declared".to_string()
            } else {
                known.join(", ")
            },
        }
    }

    async fn show_create_table(&self, name: &ObjectName) -> Result<Planned> {
        let name = self.table_key(name)?;
        let Some(entry) = self.table_entry(&name).await? else {
            return Err(self.not_found(&name).await);
        };
        // Named as this session names it; the catalog keeps the key.
        let shown = self.display_name(&name);
        let ddl = render_create_table(
            &TableSpec {
                name: shown.clone(),
                ..entry.spec.clone()
            },
            entry.temporary,
        );
        let sql = format!(
            "SELECT {} AS table_name, {} AS create_statement",
            quote_literal(&shown),
            quote_literal(&ddl)
        );
        let df = self.ctx.sql(&sql).await?;
        Ok(Planned::Query {
            plan: df.create_physical_plan().await?,
        })
    }

    async fn connector_table(&self, name: &str) -> Result<Arc<dyn ConnectorTable>> {
        if let Some((_, t)) = self.tables.lock().expect("tables lock").get(name) {
            return Ok(Arc::clone(t));
        }
        Err(self.not_found(name).await)
    }

    async fn plan_query(&self, query: Query) -> Result<LogicalPlan> {
        let state = self.ctx.state();
        let stmt = DfStatement::Statement(Box::new(Statement::Query(Box::new(query))));
        Ok(state.statement_to_plan(stmt).await?)
    }

    fn run_id(&self, index: usize) -> Option<String> {
        let options = self.options();
        let pipeline = if options.pipeline_name.is_empty() {
            self.run
                .lock()
                .expect("run lock")
                .as_ref()?
                .script_name
                .clone()?
        } else {
            options.pipeline_name
        };
        let run = self.run.lock().expect("run lock").clone()?;
        let vars: Vec<String> = run.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Some(format!("{pipeline}({})#{index}", vars.join(",")))
    }

    async fn plan_insert(
        &self,
        insert: datafusion::sql::sqlparser::ast::Insert,
        index: usize,
    ) -> Result<Planned> {
        let run_id = self.run_id(index);
        let bound = self.bind_insert(insert, run_id).await?;
        self.write_job(bound.kind, bound.plan, bound.sink, bound.run_id)
            .await
    }

    /// An INSERT's logical plan (not yet optimized) and its sink.
    async fn bind_insert(
        &self,
        insert: datafusion::sql::sqlparser::ast::Insert,
        run_id: Option<String>,
    ) -> Result<BoundInsert> {
        let TableObject::TableName(target_name) = &insert.table else {
            return Err(PlannerError::Unsupported {
                what: "INSERT INTO a table function".into(),
                hint: "insert into a declared table".into(),
            });
        };
        let name = self.table_key(target_name)?;
        let table = self.connector_table(&name).await?;
        let Some(source) = insert.source.clone() else {
            return Err(PlannerError::Unsupported {
                what: "INSERT without a query or VALUES".into(),
                hint: "write INSERT INTO t SELECT ... or INSERT INTO t VALUES (...)".into(),
            });
        };
        let partition_cols = table.partition_columns();
        let by_value = table.overwrites_rows_by_value();
        let target_fields: Vec<String> = table
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut static_values: Vec<(String, String)> = vec![];
        let mut dynamic = false;
        for e in insert.partitioned.iter().flatten() {
            let (mut col, value) =
                partition_spec_item(e).ok_or_else(|| PlannerError::Unsupported {
                    what: format!("PARTITION element '{e}'"),
                    hint: "write PARTITION (col = 'value', ...) or PARTITION (col)".into(),
                })?;
            if by_value {
                if value.is_none() {
                    return Err(PlannerError::Unsupported {
                        what: format!("PARTITION ({col}) without a value on {name}"),
                        hint: format!(
                            "a {} table replaces the rows of the values given: \
                             write PARTITION ({col} = 'value')",
                            table.connector_name()
                        ),
                    });
                }
                match target_fields.iter().find(|f| f.eq_ignore_ascii_case(&col)) {
                    Some(field) => col = field.clone(),
                    None => {
                        return Err(PlannerError::SchemaMismatch {
                            target: name.clone(),
                            reason: format!(
                                "PARTITION names '{col}', which is not a column of the table \
                                 (columns: {})",
                                target_fields.join(", ")
                            ),
                        });
                    }
                }
            } else if !partition_cols.iter().any(|p| p.eq_ignore_ascii_case(&col)) {
                return Err(PlannerError::SchemaMismatch {
                    target: name.clone(),
                    reason: format!(
                        "'{col}' is not a partition column (partition columns: {})",
                        if partition_cols.is_empty() {
                            "none".to_string()
                        } else {
                            partition_cols.join(", ")
                        }
                    ),
                });
            }
            match value {
                Some(v) => {
                    if dynamic {
                        return Err(PlannerError::Unsupported {
                            what: "a static partition value after a dynamic one".into(),
                            hint: "list static partition values first, e.g. PARTITION (dt = '...', hr)".into(),
                        });
                    }
                    static_values.push((col, v));
                }
                None => dynamic = true,
            }
        }
        let mode = if !insert.overwrite {
            WriteMode::Append
        } else if dynamic
            || (static_values.is_empty()
                && !partition_cols.is_empty()
                && self.options().partition_overwrite_mode == "dynamic")
        {
            WriteMode::OverwriteDynamic
        } else if !static_values.is_empty() {
            WriteMode::OverwriteStatic(static_values.clone())
        } else {
            WriteMode::Overwrite
        };

        let mut source = *source;
        name_positional_columns(&mut source.body);
        let source_plan = self.plan_query(source).await?;
        let target_schema = table.schema();
        let insert_columns: Vec<String> = insert.columns.iter().map(ident_name).collect();
        let plan = project_to_target(
            &self.display_name(&name),
            source_plan,
            &target_schema,
            &insert_columns,
            &static_values,
        )?;
        let kind = if insert.overwrite {
            StatementKind::InsertOverwrite
        } else {
            StatementKind::Insert
        };
        let sink = table.sink(mode)?;
        Ok(BoundInsert {
            kind,
            plan,
            sink,
            run_id,
        })
    }

    async fn plan_copy(&self, copy: CopyTo) -> Result<Planned> {
        let source_plan = match copy.source {
            CopySource::Query(q) => self.plan_query(*q).await?,
            CopySource::Table(t) => {
                let name = self.table_key(&t)?;
                self.ctx
                    .table(key_reference(&name))
                    .await?
                    .into_unoptimized_plan()
            }
        };
        let format = match &copy.stored_as {
            Some(f) => f.clone(),
            None => copy
                .target
                .rsplit('/')
                .next()
                .and_then(|n| n.rsplit_once('.'))
                .map(|(_, ext)| ext.to_ascii_lowercase())
                .ok_or_else(|| PlannerError::Unsupported {
                    what: format!("COPY to '{}' without STORED AS", copy.target),
                    hint: "add STORED AS PARQUET | CSV | JSON".into(),
                })?,
        };
        let mut options: TableOptions = copy.options.clone();
        options.insert_literal("format", format);
        options.insert_literal("path", copy.target.clone());
        // Partition columns go last, as in the table the files form.
        let schema = source_plan.schema().as_arrow().clone();
        for p in &copy.partitioned_by {
            if schema.field_with_name(p).is_err() {
                return Err(PlannerError::SchemaMismatch {
                    target: copy.target.clone(),
                    reason: format!("partition column '{p}' is not produced by the query"),
                });
            }
        }
        let mut ordered: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !copy.partitioned_by.contains(n))
            .collect();
        ordered.extend(copy.partitioned_by.iter().cloned());
        let exprs: Vec<Expr> = ordered
            .iter()
            .map(|n| {
                let (q, f) = source_plan
                    .schema()
                    .qualified_field_with_unqualified_name(n)?;
                Ok(Expr::Column(Column::from((q, f))))
            })
            .collect::<datafusion::common::Result<_>>()?;
        let plan = LogicalPlanBuilder::from(source_plan)
            .project(exprs)?
            .build()?;
        let spec = TableSpec {
            name: copy.target.clone(),
            connector: "filesystem".into(),
            options,
            columns: Some(Arc::new(plan.schema().as_arrow().clone())),
            partition_cols: copy.partitioned_by.clone(),
            primary_key: vec![],
            unique: vec![],
        };
        let state = self.ctx.state();
        let table = self.factory.open(&spec, &state).await?;
        let sink = table.sink(WriteMode::Overwrite)?;
        self.write_job(StatementKind::Copy, plan, sink, None).await
    }

    async fn write_job(
        &self,
        kind: StatementKind,
        plan: LogicalPlan,
        sink: Arc<dyn Sink>,
        run_id: Option<String>,
    ) -> Result<Planned> {
        let state = self.ctx.state();
        let mut physical = state.create_physical_plan(&plan).await?;
        if sink.max_writers() == Some(1) && physical.output_partitioning().partition_count() > 1 {
            physical = Arc::new(CoalescePartitionsExec::new(physical));
        }
        let job_id = uuid::Uuid::now_v7().to_string();
        let exec = SinkExec::new(physical, Arc::clone(&sink), job_id.clone());
        let progress = Arc::clone(exec.progress());
        Ok(Planned::Write(WriteJob {
            kind,
            target: sink.target(),
            plan: Arc::new(exec),
            sink,
            job_id,
            run_id,
            force: self
                .run
                .lock()
                .expect("run lock")
                .as_ref()
                .is_some_and(|r| r.force_rerun)
                || self.options().force_rerun,
            progress,
        }))
    }

    async fn plan_datafusion(
        &self,
        stmt: DfStatement,
        index: usize,
        dry_run: bool,
    ) -> Result<Planned> {
        // EXPLAIN of a write explains Sluice's write plan.
        if let DfStatement::Explain(explain) = &stmt
            && let DfStatement::Statement(inner) = explain.statement.as_ref()
            && let Statement::Insert(insert) = inner.as_ref()
        {
            let planned = self.plan_insert(insert.clone(), index).await?;
            return self.explain_planned(planned).await;
        }
        // In batch and streaming mode, EXPLAIN of a query shows its stage graph.
        if let DfStatement::Explain(explain) = &stmt
            && !explain.options.analyze
            && self.options().cuts_stages()
            && let DfStatement::Statement(inner) = explain.statement.as_ref()
            && matches!(inner.as_ref(), Statement::Query(_))
        {
            let inner = DfStatement::Statement(inner.clone());
            let planned = Box::pin(self.plan_datafusion(inner, index, true)).await?;
            return self.explain_planned(planned).await;
        }
        // SHOW TABLES lists the current schema (and the information
        // schema), as in Flink: a server's other schemas belong to others.
        if let DfStatement::Statement(inner) = &stmt
            && matches!(inner.as_ref(), Statement::ShowTables { .. })
            && inner.to_string().eq_ignore_ascii_case("SHOW TABLES")
        {
            let sql = format!(
                "SELECT table_catalog, table_schema, table_name, table_type \
                 FROM information_schema.tables \
                 WHERE table_schema IN ({}, 'information_schema')",
                quote_literal(&self.current_schema())
            );
            let df = self.ctx.sql(&sql).await?;
            return Ok(Planned::Query {
                plan: df.create_physical_plan().await?,
            });
        }
        let state = self.ctx.state();
        let plan = state.statement_to_plan(stmt).await?;
        match &plan {
            LogicalPlan::Ddl(DdlStatement::CreateCatalogSchema(c)) => {
                return self.create_schema(&c.schema_name, c.if_not_exists).await;
            }
            LogicalPlan::Ddl(DdlStatement::DropCatalogSchema(d)) => {
                return self
                    .drop_schema(&d.name.to_string(), d.if_exists, d.cascade)
                    .await;
            }
            _ => {}
        }
        if let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmt)) = &plan
            && self.warehouse.is_some()
            && !cmt.temporary
        {
            return self.create_table_as(cmt, dry_run).await;
        }
        match &plan {
            LogicalPlan::Ddl(ddl) => {
                let label = ddl.name().to_string();
                let computes = matches!(ddl, DdlStatement::CreateMemoryTable(_));
                if !(dry_run && computes) {
                    self.ctx.execute_logical_plan(plan).await?;
                }
                Ok(Planned::Done {
                    kind: StatementKind::Ddl,
                    target: None,
                    message: label,
                })
            }
            LogicalPlan::Dml(_) => Err(PlannerError::Unsupported {
                what: "this DML statement".into(),
                hint: "use INSERT INTO / INSERT OVERWRITE on a declared table".into(),
            }),
            // Forms Sluice's own SET does not parse (SET TIME ZONE ...).
            LogicalPlan::Statement(datafusion::logical_expr::Statement::SetVariable(v)) => {
                self.set(&v.variable, &v.value)
            }
            LogicalPlan::Statement(datafusion::logical_expr::Statement::ResetVariable(r)) => {
                let target = r.variable.clone();
                self.ctx.execute_logical_plan(plan).await?;
                Ok(Planned::Done {
                    kind: StatementKind::Set,
                    target: Some(target.clone()),
                    message: format!("{target} reset to its default"),
                })
            }
            LogicalPlan::Statement(_) => Err(PlannerError::Unsupported {
                what: format!("statement '{}'", plan.display()),
                hint: "Sluice scripts run each statement on its own; transactions and \
                       prepared statements are not available here"
                    .into(),
            }),
            _ => {
                let df = self.ctx.execute_logical_plan(plan).await?;
                Ok(Planned::Query {
                    plan: df.create_physical_plan().await?,
                })
            }
        }
    }

    /// `CREATE TABLE t (cols)` and `CREATE TABLE t AS SELECT ...` on a
    /// server: a warehouse table, filled by a two-phase write.
    async fn create_table_as(
        &self,
        cmt: &datafusion::logical_expr::CreateMemoryTable,
        dry_run: bool,
    ) -> Result<Planned> {
        let name = schema_key(
            cmt.name.schema().unwrap_or(&self.current_schema()),
            cmt.name.table(),
        );
        if self.table_entry(&name).await?.is_some() || self.ctx.table_exist(key_reference(&name))? {
            if cmt.if_not_exists {
                return Ok(Planned::Done {
                    kind: StatementKind::CreateTable,
                    target: Some(name.clone()),
                    message: format!("table {name} exists; skipped"),
                });
            }
            if !cmt.or_replace {
                return Err(PlannerError::TableExists {
                    name: self.display_name(&name),
                });
            }
        }
        let schema = Arc::new(cmt.input.schema().as_arrow().clone());
        let names = |idx: &[usize]| -> Vec<String> {
            idx.iter()
                .map(|i| schema.field(*i).name().clone())
                .collect()
        };
        let mut primary_key = vec![];
        let mut unique = vec![];
        for c in cmt.constraints.iter() {
            match c {
                datafusion::common::Constraint::PrimaryKey(idx) => primary_key = names(idx),
                datafusion::common::Constraint::Unique(idx) => unique.push(names(idx)),
            }
        }
        let has_rows = !matches!(cmt.input.as_ref(), LogicalPlan::EmptyRelation(_));
        if dry_run && has_rows {
            return Ok(Planned::Done {
                kind: StatementKind::CreateTable,
                target: Some(name.clone()),
                message: format!("would create table {name} from a query"),
            });
        }
        self.create_warehouse_table(
            &name,
            Arc::clone(&schema),
            (primary_key, unique),
            cmt.or_replace,
            false,
        )
        .await?;
        if !has_rows {
            return Ok(Planned::Done {
                kind: StatementKind::CreateTable,
                target: Some(name.clone()),
                message: format!("created table {name}"),
            });
        }
        match self
            .plan_insert_plan(&name, cmt.input.as_ref().clone(), true)
            .await?
        {
            Planned::Write(mut job) => {
                job.kind = StatementKind::CreateTable;
                Ok(Planned::Write(job))
            }
            other => Ok(other),
        }
    }

    /// The stage graph `plan` would run as, for display: task counts as
    /// with this session's task slots.
    fn stage_graph(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        query: bool,
    ) -> Result<crate::stages::StageGraph> {
        let options = self.options();
        let slots = options.slots();
        let store = sluice_shuffle::ShuffleStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "memory://explain",
        );
        Ok(crate::stages::StageGraph::cut(
            Arc::clone(plan),
            &crate::stages::StageOptions {
                max_tasks: slots,
                store,
                writer: sluice_shuffle::WriterOptions::default(),
                single_result_task: query,
                mode: if options.runtime_mode == "streaming" {
                    crate::stages::ExchangeMode::Live
                } else {
                    crate::stages::ExchangeMode::Staged
                },
            },
        )?)
    }

    /// A query answering with the plan of `planned`, as EXPLAIN does.
    pub async fn explain_planned(&self, planned: Planned) -> Result<Planned> {
        let staged = self.options().cuts_stages();
        let text = match &planned {
            Planned::Write(w) if staged => self.stage_graph(&w.plan, false)?.display(),
            Planned::Query { plan } if staged => self.stage_graph(plan, true)?.display(),
            Planned::Write(w) => datafusion::physical_plan::displayable(w.plan.as_ref())
                .indent(true)
                .to_string(),
            Planned::Query { plan } => datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string(),
            Planned::WriteSet(set) => set.display(|plan| {
                Ok::<_, PlannerError>(if staged {
                    self.stage_graph(plan, false)?.display()
                } else {
                    datafusion::physical_plan::displayable(plan.as_ref())
                        .indent(true)
                        .to_string()
                })
            })?,
            Planned::Done { message, .. } => message.clone(),
        };
        let sql = format!(
            "SELECT 'physical_plan' AS plan_type, {} AS plan",
            quote_literal(&text)
        );
        let df = self.ctx.sql(&sql).await?;
        Ok(Planned::Query {
            plan: df.create_physical_plan().await?,
        })
    }
}

/// INSERT maps columns by position, so unnamed select items get positional
/// names: `SELECT ts, CAST(ts AS DATE)` must not fail on duplicate names.
fn name_positional_columns(body: &mut datafusion::sql::sqlparser::ast::SetExpr) {
    use datafusion::sql::sqlparser::ast::{Ident, SelectItem, SetExpr};
    match body {
        SetExpr::Select(select) => {
            for (i, item) in select.projection.iter_mut().enumerate() {
                if let SelectItem::UnnamedExpr(expr) = item {
                    *item = SelectItem::ExprWithAlias {
                        expr: expr.clone(),
                        alias: Ident::with_quote('"', format!("column{}", i + 1)),
                    };
                }
            }
        }
        SetExpr::SetOperation { left, .. } => name_positional_columns(left),
        SetExpr::Query(q) => name_positional_columns(&mut q.body),
        _ => {}
    }
}

/// Projects `source` onto the target table's columns, casting each.
fn project_to_target(
    target: &str,
    source: LogicalPlan,
    target_schema: &SchemaRef,
    insert_columns: &[String],
    static_values: &[(String, String)],
) -> Result<LogicalPlan> {
    let is_static = |name: &str| {
        static_values
            .iter()
            .any(|(c, _)| c.eq_ignore_ascii_case(name))
    };
    let provided: Vec<String> = if insert_columns.is_empty() {
        target_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !is_static(n))
            .collect()
    } else {
        for c in insert_columns {
            if target_schema.field_with_name(c).is_err() {
                return Err(PlannerError::SchemaMismatch {
                    target: target.to_string(),
                    reason: format!("column '{c}' does not exist in {target}"),
                });
            }
        }
        insert_columns.to_vec()
    };
    let source_fields = source.schema().columns();
    if source_fields.len() != provided.len() {
        return Err(PlannerError::SchemaMismatch {
            target: target.to_string(),
            reason: format!(
                "the query produces {} columns but {} are expected: ({})",
                source_fields.len(),
                provided.len(),
                provided.join(", ")
            ),
        });
    }
    let mut exprs = Vec::with_capacity(target_schema.fields().len());
    for field in target_schema.fields() {
        let name = field.name();
        let expr = if let Some((_, v)) = static_values
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(name))
        {
            cast(lit(v.clone()), field.data_type().clone())
        } else if let Some(pos) = provided.iter().position(|p| p.eq_ignore_ascii_case(name)) {
            let col = Expr::Column(source_fields[pos].clone());
            if source.schema().field(pos).data_type() == field.data_type() {
                col
            } else {
                cast(col, field.data_type().clone())
            }
        } else if field.is_nullable() {
            cast(
                lit(datafusion::common::ScalarValue::Null),
                field.data_type().clone(),
            )
        } else {
            return Err(PlannerError::SchemaMismatch {
                target: target.to_string(),
                reason: format!("column '{name}' is NOT NULL and is not written"),
            });
        };
        exprs.push(expr.alias(name));
    }
    Ok(LogicalPlanBuilder::from(source).project(exprs)?.build()?)
}

/// The catalog key of a table name: unquoted identifiers are lower-cased;
/// a table in the default schema is keyed by its name, a table in another
/// schema by `schema.table`. An unqualified name is in `current_schema`.
pub fn table_key(name: &ObjectName, current_schema: &str) -> Result<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p.as_ident() {
            Some(id) => ident_value(id),
            None => p.to_string(),
        })
        .collect();
    let (schema, table) = match parts.as_slice() {
        [t] => (current_schema.to_string(), t.clone()),
        [s, t] => (s.clone(), t.clone()),
        [c, s, t] if c == DEFAULT_CATALOG => (s.clone(), t.clone()),
        _ => {
            return Err(PlannerError::Unsupported {
                what: format!("table name '{name}'"),
                hint: format!(
                    "name a table as table, schema.table or {DEFAULT_CATALOG}.schema.table"
                ),
            });
        }
    };
    Ok(schema_key(&schema, &table))
}

/// A schema name as DataFusion reports it (`s` or `catalog.s`), checked.
fn normalise_schema(name: &str) -> Result<String> {
    match name.split_once('.') {
        None => Ok(name.to_string()),
        Some((DEFAULT_CATALOG, s)) if !s.contains('.') => Ok(s.to_string()),
        Some(_) => Err(PlannerError::Unsupported {
            what: format!("schema name '{name}'"),
            hint: format!(
                "Sluice has one catalog, {DEFAULT_CATALOG}; name a schema as s or {DEFAULT_CATALOG}.s"
            ),
        }),
    }
}

/// DataFusion's reference to the table keyed `key`, taken as it is: a key's
/// parts are already normalised (a quoted `"T1"` keeps its case), and a key
/// without a schema is in `public` whatever the session's current schema.
fn key_reference(key: &str) -> datafusion::common::TableReference {
    match key.split_once('.') {
        Some((schema, table)) => datafusion::common::TableReference::partial(schema, table),
        None => datafusion::common::TableReference::partial(DEFAULT_SCHEMA, key),
    }
}

/// The catalog key of `table` in `schema`.
pub fn schema_key(schema: &str, table: &str) -> String {
    if schema == DEFAULT_SCHEMA {
        table.to_string()
    } else {
        format!("{schema}.{table}")
    }
}

fn ident_value(id: &datafusion::sql::sqlparser::ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

fn ident_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_value)
        .unwrap_or_else(|| name.to_string())
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The DataFusion statement DataFusion uses to turn column definitions into
/// a schema; Sluice borrows its type mapping.
pub(crate) fn external_for_schema(
    columns: Vec<datafusion::sql::sqlparser::ast::ColumnDef>,
) -> DfStatement {
    DfStatement::CreateExternalTable(DfCreateExternal {
        name: ObjectName::from(vec![datafusion::sql::sqlparser::ast::Ident::new(
            "sluice_schema_probe",
        )]),
        columns,
        file_type: "CSV".into(),
        locations: vec!["memory:///sluice_schema_probe/".into()],
        table_partition_cols: vec![],
        order_exprs: vec![],
        if_not_exists: false,
        or_replace: false,
        temporary: false,
        unbounded: false,
        options: vec![],
        constraints: vec![],
    })
}

/// DataFusion settings that stage graphs depend on, with their values in
/// batch and streaming mode, and otherwise.
///
/// - Dynamic filters link a join to scans that may run in another stage.
/// - File-stream work stealing lets one partition read another's files.
///
/// Joins keep DataFusion's size thresholds: small build sides are
/// broadcast, except for join types that emit unmatched build rows, which
/// `broadcast::BroadcastSafeJoins` turns back into partitioned joins.
const STAGED_SETTINGS: &[(&str, &str, &str)] = &[
    (
        "datafusion.optimizer.enable_dynamic_filter_pushdown",
        "false",
        "true",
    ),
    (
        "datafusion.execution.enable_file_stream_work_stealing",
        "false",
        "true",
    ),
];

/// Sets what stage graphs need when `mode` is `batch` or `streaming`, and
/// DataFusion's defaults otherwise.
pub fn apply_mode_settings(
    options: &mut datafusion::config::ConfigOptions,
    mode: &str,
) -> Result<()> {
    for (key, batch, other) in STAGED_SETTINGS {
        let value = if crate::config::is_staged_mode(mode) {
            batch
        } else {
            other
        };
        options
            .set(key, value)
            .map_err(|e| PlannerError::InvalidSetting {
                key: key.to_string(),
                value: value.to_string(),
                reason: e.strip_backtrace(),
            })?;
    }
    Ok(())
}
