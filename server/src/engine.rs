//! The sqllogictest [`Engine`] over an embedded session, used by the `.slt`
//! suites (and, later, `sluice test`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use datafusion::physical_plan::common::collect;
use datafusion::prelude::SessionConfig;
use sluice_planner::{RunContext, parse_statement, substitute};
use sluice_sql_tests::{Engine, EngineError, EngineFactory, EngineOutput, FileContext};

use crate::embedded::{EmbeddedSession, Executed};

/// Creates one isolated embedded session per `.slt` file.
#[derive(Debug, Clone)]
pub struct EmbeddedEngineFactory {
    target_partitions: usize,
    staged: bool,
}

impl EmbeddedEngineFactory {
    /// Runs every file in staged batch mode (`SET 'execution.runtime-mode'
    /// = 'batch'` first), with two task slots; records labelled `staged`
    /// apply only here.
    pub fn staged() -> Self {
        Self {
            target_partitions: 4,
            staged: true,
        }
    }
}

impl Default for EmbeddedEngineFactory {
    fn default() -> Self {
        // Several partitions, so parallel writers are exercised on any machine.
        Self {
            target_partitions: 4,
            staged: false,
        }
    }
}

#[async_trait]
impl EngineFactory for EmbeddedEngineFactory {
    fn labels(&self) -> Vec<String> {
        let mut labels = vec!["sluice".into(), "embedded".into(), "batch".into()];
        if self.staged {
            labels.push("staged".into());
        }
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
        let session = EmbeddedSession::new(config, run, false);
        if self.staged {
            for sql in [
                "SET 'execution.runtime-mode' = 'batch'",
                "SET 'sluice.task_slots' = '2'",
            ] {
                let stmt =
                    parse_statement(sql).map_err(|e| EngineError::statement(e.to_string()))?;
                session
                    .execute(stmt, 0, &mut |_| {})
                    .await
                    .map_err(|e| EngineError::statement(e.to_string()))?;
            }
        }
        Ok(Box::new(EmbeddedEngine {
            session,
            vars: ctx.vars.clone(),
            statements: 0,
        }))
    }
}

/// One `.slt` file's session.
#[derive(Debug)]
pub struct EmbeddedEngine {
    session: EmbeddedSession,
    vars: BTreeMap<String, String>,
    statements: usize,
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
            Executed::Written { outcome, .. } => Ok(EngineOutput::Statement {
                rows_affected: Some(outcome.rows),
            }),
            Executed::WrittenSet { writes, .. } => Ok(EngineOutput::Statement {
                rows_affected: Some(writes.iter().map(|w| w.outcome.rows).sum()),
            }),
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
}

impl FlightEngineFactory {
    /// Runs files against the server at `url` (e.g. `http://127.0.0.1:50051`).
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }
}

#[async_trait]
impl EngineFactory for FlightEngineFactory {
    fn labels(&self) -> Vec<String> {
        vec!["sluice".into(), "server".into(), "batch".into()]
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
        Ok(Box::new(FlightEngine {
            client,
            vars: ctx.vars.clone(),
        }))
    }
}

/// One `.slt` file's server session.
#[derive(Debug)]
pub struct FlightEngine {
    client: arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    vars: BTreeMap<String, String>,
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
            let wrote = summary.get("rows_written").is_some();
            return Ok(EngineOutput::Statement {
                rows_affected: wrote.then_some(rows as u64),
            });
        }
        Ok(EngineOutput::Rows { schema, batches })
    }
}
