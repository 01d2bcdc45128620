//! A toy key/value [`Engine`] for testing the runner itself (not Sluice).
//!
//! Shared with `tests/integration` through `#[path]`, so it names the
//! library's types through `crate::` imports that both crates provide.
//!
//! Commands (one per statement, keyword case-insensitive):
//! - `PUT <key> <int>`: stores a value; affects 1 row.
//! - `DELETE <key>`: affects 1 row if the key existed, else 0.
//! - `GET <key>`: one `value` (Int64) row, or the error `key not found: <key>`.
//! - `SCAN`: every `(key, value)` in descending key order (so `rowsort` matters).
//! - `VAR <name>`: the file variable `<name>`, NULL if unset.
//! - `SCRATCH_EXISTS`: whether the scratch directory exists (Boolean).
//! - `EXPLAIN`: a two-column row whose last cell has several lines.
//! - `NOTHING`: a result set without columns.
//! - `SET ...`: a statement with an unknown row count.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::{Engine, EngineError, EngineFactory, EngineOutput, FileContext};

/// Makes a [`MemoryEngine`] with an empty map per file (and per connection).
#[derive(Debug, Default)]
pub(crate) struct MemoryFactory;

#[async_trait]
impl EngineFactory for MemoryFactory {
    fn labels(&self) -> Vec<String> {
        vec!["memory".to_owned()]
    }

    async fn create(&self, ctx: &FileContext) -> Result<Box<dyn Engine>, EngineError> {
        Ok(Box::new(MemoryEngine {
            ctx: ctx.clone(),
            map: BTreeMap::new(),
        }))
    }
}

struct MemoryEngine {
    ctx: FileContext,
    map: BTreeMap<String, i64>,
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn run(&mut self, sql: &str) -> Result<EngineOutput, EngineError> {
        let words: Vec<&str> = sql.split_whitespace().collect();
        let keyword = words.first().map(|w| w.to_ascii_uppercase());
        match (keyword.as_deref(), &words[..]) {
            (Some("PUT"), [_, key, value]) => {
                let value = value
                    .parse::<i64>()
                    .map_err(|e| EngineError::statement(format!("invalid value {value:?}: {e}")))?;
                self.map.insert((*key).to_owned(), value);
                Ok(affected(1))
            }
            (Some("DELETE"), [_, key]) => Ok(affected(u64::from(self.map.remove(*key).is_some()))),
            (Some("GET"), [_, key]) => {
                let value = self
                    .map
                    .get(*key)
                    .ok_or_else(|| EngineError::statement(format!("key not found: {key}")))?;
                rows(vec![("value", Arc::new(Int64Array::from(vec![*value])))])
            }
            (Some("SCAN"), [_]) => {
                let (keys, values): (Vec<&str>, Vec<i64>) =
                    self.map.iter().rev().map(|(k, v)| (k.as_str(), *v)).unzip();
                rows(vec![
                    ("key", Arc::new(StringArray::from(keys))),
                    ("value", Arc::new(Int64Array::from(values))),
                ])
            }
            (Some("VAR"), [_, name]) => {
                let value = self.ctx.vars.get(*name).map(String::as_str);
                rows(vec![("value", Arc::new(StringArray::from(vec![value])))])
            }
            (Some("SCRATCH_EXISTS"), [_]) => {
                let exists = self.ctx.scratch_dir.is_dir();
                rows(vec![("exists", Arc::new(BooleanArray::from(vec![exists])))])
            }
            (Some("EXPLAIN"), [_]) => rows(vec![
                ("plan_type", Arc::new(StringArray::from(vec!["plan"]))),
                (
                    "plan",
                    Arc::new(StringArray::from(vec!["Scan\n  Filter: true"])),
                ),
            ]),
            (Some("NOTHING"), [_]) => Ok(EngineOutput::Rows {
                schema: Arc::new(Schema::empty()),
                batches: vec![],
            }),
            (Some("SET"), _) => Ok(EngineOutput::Statement {
                rows_affected: None,
            }),
            _ => Err(EngineError::statement(format!(
                "unsupported statement: {}",
                sql.trim()
            ))),
        }
    }
}

fn affected(n: u64) -> EngineOutput {
    EngineOutput::Statement {
        rows_affected: Some(n),
    }
}

fn rows(columns: Vec<(&str, ArrayRef)>) -> Result<EngineOutput, EngineError> {
    let batch = RecordBatch::try_from_iter(columns).map_err(|e| EngineError::from_error(&e))?;
    Ok(EngineOutput::Rows {
        schema: batch.schema(),
        batches: vec![batch],
    })
}
