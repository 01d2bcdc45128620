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

    /// Names of all declared tables, sorted. A table outside the default
    /// schema is named `schema.table`.
    async fn list(&self) -> Result<Vec<String>>;

    /// Creates schema `name`; errors if it exists unless `if_not_exists`.
    async fn create_schema(&self, name: &str, if_not_exists: bool) -> Result<()>;

    /// Removes schema `name`, returning whether it existed. The caller has
    /// dropped its tables first.
    async fn drop_schema(&self, name: &str) -> Result<bool>;

    /// Names of the created schemas (not the default one), sorted.
    async fn schemas(&self) -> Result<Vec<String>>;
}

/// The schema part of a catalog key (`schema.table`), if any.
pub fn key_schema(key: &str) -> Option<&str> {
    key.split_once('.').map(|(s, _)| s)
}

fn check_schema(schemas: &std::collections::BTreeSet<String>, key: &str) -> Result<()> {
    match key_schema(key) {
        Some(schema) if !schemas.contains(schema) => Err(PlannerError::SchemaNotFound {
            name: schema.to_string(),
        }),
        _ => Ok(()),
    }
}

fn schema_names(schemas: &RwLock<std::collections::BTreeSet<String>>) -> Vec<String> {
    schemas
        .read()
        .expect("catalog lock")
        .iter()
        .cloned()
        .collect()
}

fn insert_schema(
    schemas: &mut std::collections::BTreeSet<String>,
    name: &str,
    if_not_exists: bool,
) -> Result<bool> {
    if schemas.contains(name) || name == crate::session::DEFAULT_SCHEMA {
        if if_not_exists {
            return Ok(false);
        }
        return Err(PlannerError::SchemaExists {
            name: name.to_string(),
        });
    }
    schemas.insert(name.to_string());
    Ok(true)
}

/// A catalog held in memory for the length of a run.
#[derive(Debug, Default)]
pub struct MemoryCatalog {
    tables: RwLock<BTreeMap<String, TableEntry>>,
    schemas: RwLock<std::collections::BTreeSet<String>>,
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
        check_schema(&self.schemas.read().expect("catalog lock"), name)?;
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

    async fn create_schema(&self, name: &str, if_not_exists: bool) -> Result<()> {
        insert_schema(
            &mut self.schemas.write().expect("catalog lock"),
            name,
            if_not_exists,
        )
        .map(|_| ())
    }

    async fn drop_schema(&self, name: &str) -> Result<bool> {
        Ok(self.schemas.write().expect("catalog lock").remove(name))
    }

    async fn schemas(&self) -> Result<Vec<String>> {
        Ok(schema_names(&self.schemas))
    }
}

/// Version of the stored catalog document.
pub const CATALOG_FORMAT_VERSION: u32 = 1;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredCatalog {
    format_version: u32,
    /// Created schemas; absent in documents written before schemas existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    schemas: Vec<String>,
    tables: Vec<StoredTable>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredTable {
    name: String,
    ddl: String,
}

/// A catalog shared by the sessions of a server and kept in object storage
/// (a local state directory or a bucket), so it survives restarts.
///
/// Only the canonical DDL of each table is stored; a server re-binds it at
/// start-up (see [`crate::SluiceSession::restore_catalog`]). Temporary
/// tables never reach this catalog: sessions keep them apart.
#[derive(Debug)]
pub struct PersistentCatalog {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    tables: RwLock<BTreeMap<String, TableEntry>>,
    schemas: RwLock<std::collections::BTreeSet<String>>,
    /// DDL that could not be bound at start-up; kept so it is not lost.
    unbound: RwLock<BTreeMap<String, String>>,
    /// Serialises writes of the document.
    write: tokio::sync::Mutex<()>,
}

impl PersistentCatalog {
    /// Opens the catalog document at `path`, returning the catalog (empty
    /// until restored) and the stored `(name, ddl)` pairs to re-bind.
    pub async fn open(
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        path: object_store::path::Path,
    ) -> Result<(Self, Vec<(String, String)>)> {
        use object_store::ObjectStoreExt;
        let stored = match store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| catalog_error(&path, e))?;
                let doc: StoredCatalog =
                    serde_json::from_slice(&bytes).map_err(|e| PlannerError::Catalog {
                        message: format!("{path} is not a Sluice catalog document: {e}"),
                    })?;
                if doc.format_version != CATALOG_FORMAT_VERSION {
                    return Err(PlannerError::Catalog {
                        message: format!(
                            "{path} has catalog format version {}, this server reads version \
                             {CATALOG_FORMAT_VERSION}; use a matching Sluice release",
                            doc.format_version
                        ),
                    });
                }
                (doc.schemas, doc.tables)
            }
            Err(object_store::Error::NotFound { .. }) => (vec![], vec![]),
            Err(e) => return Err(catalog_error(&path, e)),
        };
        let (schemas, stored) = stored;
        let pairs = stored.into_iter().map(|t| (t.name, t.ddl)).collect();
        Ok((
            Self {
                store,
                path,
                tables: RwLock::default(),
                schemas: RwLock::new(schemas.into_iter().collect()),
                unbound: RwLock::default(),
                write: tokio::sync::Mutex::new(()),
            },
            pairs,
        ))
    }

    /// Keeps a stored declaration that could not be bound, so that saving
    /// the catalog does not drop it.
    pub fn keep_unbound(&self, name: &str, ddl: &str) {
        self.unbound
            .write()
            .expect("catalog lock")
            .insert(name.to_string(), ddl.to_string());
    }

    async fn save(&self) -> Result<()> {
        use object_store::ObjectStoreExt;
        let _guard = self.write.lock().await;
        let mut tables: Vec<StoredTable> = self
            .tables
            .read()
            .expect("catalog lock")
            .iter()
            .filter(|(_, e)| !e.temporary)
            .map(|(name, e)| StoredTable {
                name: name.clone(),
                ddl: e.ddl.clone(),
            })
            .collect();
        for (name, ddl) in self.unbound.read().expect("catalog lock").iter() {
            if !tables.iter().any(|t| &t.name == name) {
                tables.push(StoredTable {
                    name: name.clone(),
                    ddl: ddl.clone(),
                });
            }
        }
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        let doc = StoredCatalog {
            format_version: CATALOG_FORMAT_VERSION,
            schemas: schema_names(&self.schemas),
            tables,
        };
        let bytes = serde_json::to_vec_pretty(&doc).expect("catalog serialises");
        // A put replaces the document atomically on every object store
        // (the local store writes a temporary file and renames it).
        self.store
            .put(&self.path, bytes.into())
            .await
            .map_err(|e| catalog_error(&self.path, e))?;
        Ok(())
    }
}

fn catalog_error(path: &object_store::path::Path, e: impl std::fmt::Display) -> PlannerError {
    PlannerError::Catalog {
        message: format!("cannot access the catalog document {path}: {e}"),
    }
}

#[async_trait]
impl Catalog for PersistentCatalog {
    async fn get(&self, name: &str) -> Result<Option<TableEntry>> {
        Ok(self.tables.read().expect("catalog lock").get(name).cloned())
    }

    async fn create(&self, name: &str, entry: TableEntry, replace: bool) -> Result<()> {
        {
            check_schema(&self.schemas.read().expect("catalog lock"), name)?;
            let mut tables = self.tables.write().expect("catalog lock");
            if !replace && tables.contains_key(name) {
                return Err(PlannerError::TableExists {
                    name: name.to_string(),
                });
            }
            tables.insert(name.to_string(), entry);
        }
        self.unbound.write().expect("catalog lock").remove(name);
        self.save().await
    }

    async fn drop_table(&self, name: &str) -> Result<Option<TableEntry>> {
        let removed = self.tables.write().expect("catalog lock").remove(name);
        let unbound = self.unbound.write().expect("catalog lock").remove(name);
        if removed.is_some() || unbound.is_some() {
            self.save().await?;
        }
        Ok(removed)
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

    async fn create_schema(&self, name: &str, if_not_exists: bool) -> Result<()> {
        let created = insert_schema(
            &mut self.schemas.write().expect("catalog lock"),
            name,
            if_not_exists,
        )?;
        if created {
            self.save().await?;
        }
        Ok(())
    }

    async fn drop_schema(&self, name: &str) -> Result<bool> {
        let removed = self.schemas.write().expect("catalog lock").remove(name);
        if removed {
            self.save().await?;
        }
        Ok(removed)
    }

    async fn schemas(&self) -> Result<Vec<String>> {
        Ok(schema_names(&self.schemas))
    }
}
