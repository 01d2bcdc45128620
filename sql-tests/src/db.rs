//! [`sqllogictest::AsyncDB`] over a boxed [`Engine`].

use std::process::{Command, Output};
use std::time::Duration;

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

use crate::convert::to_db_output;
use crate::engine::{Engine, EngineError};

/// Adapts an [`Engine`] to what `sqllogictest::Runner` drives.
pub(crate) struct EngineDb {
    engine: Box<dyn Engine>,
}

impl EngineDb {
    pub(crate) fn new(engine: Box<dyn Engine>) -> Self {
        Self { engine }
    }
}

#[async_trait]
impl AsyncDB for EngineDb {
    type Error = EngineError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, EngineError> {
        let output = self.engine.run(sql).await?;
        to_db_output(output)
    }

    async fn shutdown(&mut self) {
        self.engine.shutdown().await;
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }

    async fn run_command(command: Command) -> std::io::Result<Output> {
        tokio::process::Command::from(command).output().await
    }
}
