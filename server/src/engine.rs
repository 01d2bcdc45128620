//! The sqllogictest [`Engine`] over an embedded session or a server's
//! Flight SQL session, used by the `.slt` suites and `sluice test`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use datafusion::physical_plan::common::collect;
use datafusion::prelude::SessionConfig;
use sluice_planner::{RunContext, parse_statement, substitute};
use sluice_sql_tests::{Engine, EngineError, EngineFactory, EngineOutput, FileContext};

use crate::embedded::{EmbeddedSession, Executed};

/// The runtime mode a test engine sets in every session
/// (`SET 'execution.runtime-mode' = ...`); also a label that `onlyif` and
/// `skipif` records match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestMode {
    /// Staged batch mode (also labelled `staged`).
    Batch,
    /// Streaming mode.
    Streaming,
}

impl TestMode {
    /// The mode's name, as in SQL.
    pub fn name(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Streaming => "streaming",
        }
    }

    /// The statements that put a new session in this mode.
    fn setup(self) -> Vec<String> {
        let mut sql = vec![format!("SET 'execution.runtime-mode' = '{}'", self.name())];
        if self == Self::Batch {
            sql.push("SET 'sluice.task_slots' = '2'".into());
        }
        sql
    }

    fn labels(self) -> Vec<String> {
        match self {
            Self::Batch => vec!["batch".into(), "staged".into()],
            Self::Streaming => vec!["streaming".into()],
        }
    }
}

/// Creates one isolated embedded session per `.slt` file.
#[derive(Debug, Clone)]
pub struct EmbeddedEngineFactory {
    target_partitions: usize,
    mode: Option<TestMode>,
    dml_counts: bool,
}

impl EmbeddedEngineFactory {
    /// Runs every file in staged batch mode (`SET 'execution.runtime-mode'
    /// = 'batch'` first), with two task slots; records labelled `staged`
    /// apply only here.
    pub fn staged() -> Self {
        Self::new(4, Some(TestMode::Batch))
    }

    /// Sessions with `target_partitions`, put in `mode` when given (else
    /// the session's default).
    pub fn new(target_partitions: usize, mode: Option<TestMode>) -> Self {
        Self {
            target_partitions: target_partitions.max(1),
            mode,
            dml_counts: false,
        }
    }

    /// Reports a write as a one-row `count` result, as DataFusion does.
    pub fn with_dml_counts(mut self, on: bool) -> Self {
        self.dml_counts = on;
        self
    }
}

impl Default for EmbeddedEngineFactory {
    fn default() -> Self {
        // Several partitions, so parallel writers are exercised on any machine.
        Self::new(4, None)
    }
}

#[async_trait]
impl EngineFactory for EmbeddedEngineFactory {
    fn labels(&self) -> Vec<String> {
        let mut labels = vec!["sluice".into(), "embedded".into()];
        labels.extend(self.mode.map(TestMode::labels).unwrap_or_default());
        labels
    }

    async fn create(&self, ctx: &FileContext) -> Result<Box<dyn Engine>, EngineError> {
        let config = SessionConfig::new().with_target_partitions(self.target_partitions);
        let run = RunContext {
            script_name: ctx
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned()),
            vars: ctx.vars.clone(),
            force_rerun: false,
        };
        let mut engine = EmbeddedEngine {
            session: EmbeddedSession::new(config, run, false),
            vars: ctx.vars.clone(),
            statements: 0,
            dml_counts: self.dml_counts,
        };
        for sql in self.mode.map(TestMode::setup).unwrap_or_default() {
            engine.run(&sql).await?;
        }
        Ok(Box::new(engine))
    }
}

/// One `.slt` file's session.
#[derive(Debug)]
pub struct EmbeddedEngine {
    session: EmbeddedSession,
    vars: BTreeMap<String, String>,
    statements: usize,
    dml_counts: bool,
}

/// A write's outcome as an engine output, for both engines: a statement
/// with a row count; with DataFusion's conventions (`dml_counts`) a
/// one-row `count` result, and nothing for CREATE TABLE AS (`creates`).
fn written(rows: u64, creates: bool, dml_counts: bool) -> EngineOutput {
    if !dml_counts || creates {
        return EngineOutput::Statement {
            rows_affected: (!dml_counts).then_some(rows),
        };
    }
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("count", arrow::datatypes::DataType::UInt64, false),
    ]));
    let column = std::sync::Arc::new(arrow::array::UInt64Array::from(vec![rows]));
    let batch =
        arrow::record_batch::RecordBatch::try_new(std::sync::Arc::clone(&schema), vec![column])
            .expect("one UInt64 column");
    EngineOutput::Rows {
        schema,
        batches: vec![batch],
    }
}

#[async_trait]
impl Engine for EmbeddedEngine {
    async fn run(&mut self, sql: &str) -> Result<EngineOutput, EngineError> {
        self.statements += 1;
        let lookup = |name: &str| {
            self.vars
                .get(name)
                .cloned()
                .or_else(|| std::env::var(format!("SLUICE_VAR_{name}")).ok())
        };
        let (sql, _) =
            substitute(sql, &lookup).map_err(|e| EngineError::statement(e.to_string()))?;
        let parsed = parse_statement(&sql).map_err(|e| EngineError::statement(e.to_string()))?;
        let executed = self
            .session
            .execute(parsed, self.statements, &mut |_| {})
            .await
            .map_err(|e| EngineError::statement(e.to_string()))?;
        match executed {
            Executed::Done { .. } => Ok(EngineOutput::Statement {
                rows_affected: None,
            }),
            Executed::Plan { .. } => Ok(EngineOutput::Statement {
                rows_affected: None,
            }),
            Executed::Written { outcome, kind, .. } => Ok(written(
                outcome.rows,
                kind == sluice_planner::StatementKind::CreateTable,
                self.dml_counts,
            )),
            Executed::WrittenSet { writes, .. } => Ok(written(
                writes.iter().map(|w| w.outcome.rows).sum(),
                false,
                self.dml_counts,
            )),
            Executed::Rows { stream, .. } => {
                let schema = stream.schema();
                let batches = collect(stream)
                    .await
                    .map_err(|e| EngineError::statement(e.strip_backtrace()))?;
                Ok(EngineOutput::Rows { schema, batches })
            }
        }
    }
}

/// The sqllogictest [`Engine`] over Flight SQL: each `.slt` file gets its
/// own session on a running `sluice server`.
#[derive(Debug, Clone)]
pub struct FlightEngineFactory {
    url: String,
    mode: Option<TestMode>,
    dml_counts: bool,
}

impl FlightEngineFactory {
    /// Runs files against the server at `url` (e.g. `http://127.0.0.1:50051`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            mode: None,
            dml_counts: false,
        }
    }

    /// Reports a write as a one-row result with its row count, as
    /// DataFusion does (for DataFusion's own suites), instead of as a
    /// statement with a row count.
    pub fn with_dml_counts(mut self, on: bool) -> Self {
        self.dml_counts = on;
        self
    }

    /// Puts every session in `mode` first.
    pub fn with_mode(mut self, mode: Option<TestMode>) -> Self {
        self.mode = mode;
        self
    }
}

#[async_trait]
impl EngineFactory for FlightEngineFactory {
    fn labels(&self) -> Vec<String> {
        let mut labels = vec!["sluice".into(), "server".into()];
        labels.extend(self.mode.map(TestMode::labels).unwrap_or_default());
        labels
    }

    async fn create(&self, ctx: &FileContext) -> Result<Box<dyn Engine>, EngineError> {
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())
            .map_err(|e| EngineError::statement(e.to_string()))?
            .connect()
            .await
            .map_err(|e| EngineError::statement(format!("cannot reach {}: {e}", self.url)))?;
        let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
        client.set_header(
            "cookie",
            format!("arrow_flight_session_id={}", uuid::Uuid::new_v4().simple()),
        );
        // The server's catalog is shared and persistent, and suites reuse
        // table names: each session works in a schema of its own, dropped
        // with everything in it when the file has finished.
        let schema = format!("slt_{}", uuid::Uuid::new_v4().simple());
        let mut engine = FlightEngine {
            client,
            vars: ctx.vars.clone(),
            schema: None,
            dml_counts: self.dml_counts,
        };
        engine.run(&format!("CREATE SCHEMA {schema}")).await?;
        engine.schema = Some(schema.clone());
        engine.set_option("schema", &schema).await?;
        for sql in self.mode.map(TestMode::setup).unwrap_or_default() {
            engine.run(&sql).await?;
        }
        Ok(Box::new(engine))
    }
}

/// One `.slt` file's server session.
#[derive(Debug)]
pub struct FlightEngine {
    client: arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    vars: BTreeMap<String, String>,
    /// The session's own schema, dropped at shutdown.
    schema: Option<String>,
    /// Report writes as a one-row `count` result, as DataFusion does.
    dml_counts: bool,
}

impl FlightEngine {
    /// Sets one session option through the `SetSessionOptions` action.
    async fn set_option(&mut self, key: &str, value: &str) -> Result<(), EngineError> {
        use crate::flight::session_options::{
            SessionOptionValue, SetSessionOptionsRequest, SetSessionOptionsResult,
        };
        use futures::TryStreamExt;
        use prost::Message;
        let request = SetSessionOptionsRequest {
            session_options: [(key.to_string(), SessionOptionValue::string(value))].into(),
        };
        let action = arrow_flight::Action::new("SetSessionOptions", request.encode_to_vec());
        let results: Vec<_> = self
            .client
            .do_action(action)
            .await
            .map_err(|e| EngineError::statement(format!("SetSessionOptions: {e}")))?
            .try_collect()
            .await
            .map_err(|e| EngineError::statement(format!("SetSessionOptions: {e}")))?;
        for r in results {
            let result = SetSessionOptionsResult::decode(r.body)
                .map_err(|e| EngineError::statement(format!("SetSessionOptions: {e}")))?;
            if let Some(err) = result.errors.get(key) {
                return Err(EngineError::statement(format!(
                    "the server refused session option {key} = {value} (error {})",
                    err.value
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Engine for FlightEngine {
    async fn run(&mut self, sql: &str) -> Result<EngineOutput, EngineError> {
        use futures::TryStreamExt;
        let lookup = |name: &str| self.vars.get(name).cloned();
        let (sql, _) =
            substitute(sql, &lookup).map_err(|e| EngineError::statement(e.to_string()))?;
        let message = |e: arrow_flight::error::FlightError| match e {
            arrow_flight::error::FlightError::Tonic(s) => EngineError::statement(s.message()),
            other => EngineError::statement(other.to_string()),
        };
        let info = self.client.execute(sql, None).await.map_err(message)?;
        let schema = std::sync::Arc::new(
            info.clone()
                .try_decode_schema()
                .map_err(|e| EngineError::statement(e.to_string()))?,
        );
        let mut batches = vec![];
        for endpoint in &info.endpoint {
            if let Some(ticket) = &endpoint.ticket {
                let stream = self.client.do_get(ticket.clone()).await.map_err(message)?;
                let got: Vec<_> = stream.try_collect().await.map_err(message)?;
                batches.extend(got);
            }
        }
        // Statements that took effect describe themselves in app_metadata
        // and return their row count.
        if !info.app_metadata.is_empty() {
            let rows = batches
                .first()
                .and_then(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .map(|a| a.value(0))
                })
                .unwrap_or(0);
            let summary: serde_json::Value =
                serde_json::from_slice(&info.app_metadata).unwrap_or_default();
            if summary.get("rows_written").is_none() {
                return Ok(EngineOutput::Statement {
                    rows_affected: None,
                });
            }
            let creates = summary.get("kind").and_then(|k| k.as_str())
                == Some(sluice_planner::StatementKind::CreateTable.label());
            return Ok(written(rows as u64, creates, self.dml_counts));
        }
        Ok(EngineOutput::Rows { schema, batches })
    }

    async fn shutdown(&mut self) {
        if let Some(schema) = self.schema.take()
            && let Err(e) = self.run(&format!("DROP SCHEMA {schema} CASCADE")).await
        {
            tracing::warn!("cannot drop the test schema {schema}: {e}");
        }
    }
}
