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
}

impl Default for EmbeddedEngineFactory {
    fn default() -> Self {
        // Several partitions, so parallel writers are exercised on any machine.
        Self {
            target_partitions: 4,
        }
    }
}

#[async_trait]
impl EngineFactory for EmbeddedEngineFactory {
    fn labels(&self) -> Vec<String> {
        vec!["sluice".into(), "embedded".into(), "batch".into()]
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
        Ok(Box::new(EmbeddedEngine {
            session: EmbeddedSession::new(config, run, false),
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
