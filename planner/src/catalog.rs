//! The catalog of declared tables.
//!
//! A script run uses a [`MemoryCatalog`] that lives as long as the run. The
//! server backs the same trait with a persistent store shared by sessions.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::RwLock;

use async_trait::async_trait;
use sluice_connectors::TableSpec;

use crate::error::{PlannerError, Result};

/// A declared table: its spec and the DDL to show for it.
#[derive(Debug, Clone)]
pub struct TableEntry {
    /// Connector, options and columns.
    pub spec: TableSpec,
    /// Canonical `CREATE TABLE` text; secrets appear as `secret('NAME')`.
    pub ddl: String,
    /// Declared `TEMPORARY`: never persisted.
    pub temporary: bool,
}

/// Where table declarations live.
#[async_trait]
pub trait Catalog: Debug + Send + Sync {
    /// The table called `name` (normalised), if declared.
    async fn get(&self, name: &str) -> Result<Option<TableEntry>>;

    /// Declares a table; errors if it exists unless `replace`.
    async fn create(&self, name: &str, entry: TableEntry, replace: bool) -> Result<()>;

    /// Removes a declaration, returning it.
    async fn drop_table(&self, name: &str) -> Result<Option<TableEntry>>;

    /// Names of all declared tables, sorted.
    async fn list(&self) -> Result<Vec<String>>;
}

/// A catalog held in memory for the length of a run.
#[derive(Debug, Default)]
pub struct MemoryCatalog {
    tables: RwLock<BTreeMap<String, TableEntry>>,
}

impl MemoryCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Catalog for MemoryCatalog {
    async fn get(&self, name: &str) -> Result<Option<TableEntry>> {
        Ok(self.tables.read().expect("catalog lock").get(name).cloned())
    }

    async fn create(&self, name: &str, entry: TableEntry, replace: bool) -> Result<()> {
        let mut tables = self.tables.write().expect("catalog lock");
        if !replace && tables.contains_key(name) {
            return Err(PlannerError::TableExists {
                name: name.to_string(),
            });
        }
        tables.insert(name.to_string(), entry);
        Ok(())
    }

    async fn drop_table(&self, name: &str) -> Result<Option<TableEntry>> {
        Ok(self.tables.write().expect("catalog lock").remove(name))
    }

    async fn list(&self) -> Result<Vec<String>> {
        Ok(self
            .tables
            .read()
            .expect("catalog lock")
            .keys()
            .cloned()
            .collect())
    }
}
