//! Writing into a MySQL/MariaDB table through the two-phase sink protocol.
//!
//! Each task attempt creates a staging table with the target's columns and
//! a row number (`_sluice_stage_<hash>`, registered with a lease in
//! `_sluice_staging`) and fills it with multi-row `INSERT`s. MySQL commits
//! DDL implicitly, so the commit takes one of two shapes:
//!
//! ```text
//! append / upsert (one InnoDB transaction):
//!   GET_LOCK(target); START TRANSACTION;
//!   skip if the job or (append) its run id is in _sluice_commits
//!   INSERT INTO target SELECT ... FROM each staging table
//!     (upsert: ... ORDER BY stage, row ON DUPLICATE KEY UPDATE)
//!   INSERT INTO _sluice_commits ...; COMMIT
//!
//! overwrite:
//!   CREATE TABLE _sluice_new_<hash> LIKE target; fill it from the staging tables
//!   RENAME TABLE target TO _sluice_old_<hash>, _sluice_new_<hash> TO target  (atomic)
//!   INSERT INTO _sluice_commits ...; DROP TABLE _sluice_old_<hash>
//! ```
//!
//! The rename keeps grants, views and triggers (they follow names) and
//! swaps the whole table at once. Tables that other tables' foreign keys
//! reference are overwritten with `DELETE` and `INSERT` in one transaction
//! instead, since foreign keys would follow the renamed table. The new and
//! old tables are registered in `_sluice_staging` too, so a crash at any
//! point leaves nothing behind after the lease expires.
//!
//! In a statement set, [`Sink::prepare_commit`] runs the transactional
//! publish (append, upsert, overwrite by `DELETE`) up to its `COMMIT` and
//! holds it, with the commit lock, until every target has published. An
//! overwrite by rename cannot be held (DDL commits implicitly): it
//! publishes with the sinks that do not prepare, and keeps the old table
//! until the set is done, so that a later failure renames it back.

use std::sync::Arc;

use crate::database::hash_hex;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::types::LiteralWriter;
use super::{MyConnection, quote_ident, quote_literal, quote_table, split_qualified};
use crate::error::{ConnectorError, ErrorClass, Result};
use crate::options::TableOptions;
use crate::sink::{
    CommitMessage, CommitOutcome, DeferredCommit, JobCommit, PreparedCommit, Revocable, Sink,
    SinkDescriptor, SinkWriter, WriteMode,
};

/// How long a job's staging tables survive without a heartbeat.
const LEASE_SECONDS: i64 = 600;
/// Bytes of SQL text sent in one `INSERT` (well under the servers' default
/// `max_allowed_packet` of 16 MiB or more).
const STATEMENT_BYTES: usize = 2 << 20;
/// How long a commit waits for another job committing to the same table.
const COMMIT_LOCK_SECONDS: u32 = 300;

/// What to do when the rows of one upsert repeat a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Duplicates {
    Error,
    Last,
}

/// A write into a MySQL/MariaDB table.
#[derive(Debug, Clone)]
pub struct MySqlSink {
    name: String,
    options: TableOptions,
    conn: MyConnection,
    table: String,
    schema: SchemaRef,
    primary_key: Vec<String>,
    duplicates: Duplicates,
    batch_rows: usize,
    mode: WriteMode,
}

impl MySqlSink {
    /// A sink into `table` (`table` or `database.table`) writing rows of `schema`.
    pub fn try_new(
        name: String,
        options: TableOptions,
        conn: MyConnection,
        table: String,
        schema: SchemaRef,
        primary_key: Vec<String>,
        mode: WriteMode,
    ) -> Result<Self> {
        crate::database::check_write_mode("mysql", &name, &schema, &mode)?;
        let duplicates = match options.literal("sink.upsert.duplicates")? {
            None | Some("error") => Duplicates::Error,
            Some("last") => Duplicates::Last,
            Some(v) => {
                return Err(ConnectorError::InvalidOption {
                    key: "sink.upsert.duplicates".into(),
                    reason: format!("'{v}' is not 'error' or 'last'"),
                });
            }
        };
        let batch_rows = match options.literal("sink.batch-rows")? {
            None => 1000,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| ConnectorError::InvalidOption {
                    key: "sink.batch-rows".into(),
                    reason: format!("'{v}' is not a number of rows between 1 and 100000"),
                })?,
        };
        Ok(Self {
            name,
            options,
            conn,
            table,
            schema,
            primary_key,
            duplicates,
            batch_rows,
            mode,
        })
    }

    /// `` `db`. `` of the target, or empty when the name is unqualified.
    /// The rows an overwrite deletes, as a `WHERE` clause (empty: all).
    fn clear_filter(&self) -> Option<String> {
        crate::database::overwrite_filter(&self.mode, quote_ident, quote_literal)
    }

    fn db_prefix(&self) -> String {
        let parts = split_qualified(&self.table);
        if parts.len() > 1 {
            format!("{}.", quote_ident(&parts[parts.len() - 2]))
        } else {
            String::new()
        }
    }

    /// The target's database and table name.
    fn db_and_name(&self) -> (String, String) {
        let mut parts = split_qualified(&self.table);
        let name = parts.pop().unwrap_or_default();
        let db = parts
            .pop()
            .unwrap_or_else(|| self.conn.database().to_string());
        (db, name)
    }

    fn ledger(&self) -> String {
        format!("{}_sluice_commits", self.db_prefix())
    }

    fn staging(&self) -> String {
        format!("{}_sluice_staging", self.db_prefix())
    }

    fn side_table(&self, name: &str) -> String {
        format!("{}{}", self.db_prefix(), quote_ident(name))
    }

    fn err(&self, action: &str, e: mysql_async::Error) -> ConnectorError {
        self.conn.error(Some(&self.table), action, e)
    }

    fn columns(&self) -> String {
        self.schema
            .fields()
            .iter()
            .map(|f| quote_ident(f.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    async fn ensure_ledger(&self, client: &mut Conn) -> Result<()> {
        client
            .query_drop(format!(
                "CREATE TABLE IF NOT EXISTS {} (
                   target VARCHAR(512) NOT NULL, job_id VARCHAR(128) NOT NULL,
                   run_id VARCHAR(128), mode VARCHAR(16) NOT NULL, row_count BIGINT NOT NULL,
                   committed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                   PRIMARY KEY (target, job_id), KEY (target, run_id)) ENGINE=InnoDB",
                self.ledger()
            ))
            .await
            .map_err(|e| self.err("prepare the commit ledger of", e))?;
        client
            .query_drop(format!(
                "CREATE TABLE IF NOT EXISTS {} (
                   stage_table VARCHAR(64) NOT NULL PRIMARY KEY, job_id VARCHAR(128) NOT NULL,
                   target VARCHAR(512) NOT NULL, lease_until TIMESTAMP(6) NOT NULL,
                   KEY (job_id)) ENGINE=InnoDB",
                self.staging()
            ))
            .await
            .map_err(|e| self.err("prepare the commit ledger of", e))
    }

    /// Registers a side table of `job_id` before it is created.
    async fn register(&self, client: &mut Conn, table: &str, job_id: &str) -> Result<()> {
        client
            .exec_drop(
                format!(
                    "INSERT INTO {} VALUES (?, ?, ?, \
                     CURRENT_TIMESTAMP(6) + INTERVAL {LEASE_SECONDS} SECOND) \
                     ON DUPLICATE KEY UPDATE lease_until = VALUES(lease_until)",
                    self.staging()
                ),
                (table, job_id, &self.table),
            )
            .await
            .map_err(|e| self.err("register a staging table of", e))
    }

    /// Drops the side tables listed by `filter` (a condition on `_sluice_staging`).
    async fn drop_stages(&self, client: &mut Conn, filter: &str) -> Result<usize> {
        let stages: Vec<String> = client
            .query(format!(
                "SELECT stage_table FROM {} WHERE {filter}",
                self.staging()
            ))
            .await
            .map_err(|e| self.err("list the staging tables of", e))?;
        for stage in &stages {
            client
                .query_drop(format!("DROP TABLE IF EXISTS {}", self.side_table(stage)))
                .await
                .map_err(|e| self.err("drop a staging table of", e))?;
            client
                .exec_drop(
                    format!("DELETE FROM {} WHERE stage_table = ?", self.staging()),
                    (stage,),
                )
                .await
                .map_err(|e| self.err("drop a staging table of", e))?;
        }
        Ok(stages.len())
    }

    /// Whether foreign keys of other tables reference the target.
    async fn referenced(&self, client: &mut Conn) -> Result<bool> {
        let (db, name) = self.db_and_name();
        let n: Option<i64> = client
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS \
                 WHERE UNIQUE_CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?",
                (db, name),
            )
            .await
            .map_err(|e| self.err("read the foreign keys of", e))?;
        Ok(n.unwrap_or(0) > 0)
    }

    /// The check of an upsert's keys: the first key the written rows repeat.
    async fn duplicate_key(&self, client: &mut Conn, union: &str) -> Result<Option<String>> {
        let key: Vec<String> = self.primary_key.iter().map(|c| quote_ident(c)).collect();
        let shown = key
            .iter()
            .map(|k| format!("COALESCE(CAST({k} AS CHAR), 'NULL')"))
            .collect::<Vec<_>>()
            .join(", ");
        client
            .query_first(format!(
                "SELECT CONCAT_WS(', ', {shown}) FROM ({union}) u \
                 GROUP BY {} HAVING COUNT(*) > 1 LIMIT 1",
                key.join(", ")
            ))
            .await
            .map_err(|e| self.err("check the upsert keys of", e))
    }

    /// The publish, under the commit lock. With `hold`, a transactional
    /// publish stops before its `COMMIT`, and an overwrite by rename does
    /// nothing ([`Publish::Deferred`]).
    async fn commit_locked(
        &self,
        client: &mut Conn,
        commit: &JobCommit,
        stages: &[String],
        hold: bool,
    ) -> Result<Publish> {
        let done: Option<i64> = client
            .exec_first(
                format!(
                    "SELECT row_count FROM {} WHERE target = ? AND job_id = ?",
                    self.ledger()
                ),
                (&self.table, &commit.job_id),
            )
            .await
            .map_err(|e| self.err("read the commit ledger of", e))?;
        if let Some(rows) = done {
            // A retried commit of a job that already committed.
            return Ok(Publish::Done(CommitOutcome {
                rows: rows as u64,
                ..Default::default()
            }));
        }
        if let Some(run_id) = &commit.run_id
            && !commit.force
            && self.mode == WriteMode::Append
        {
            let seen: Option<i64> = client
                .exec_first(
                    format!(
                        "SELECT 1 FROM {} WHERE target = ? AND run_id = ? AND mode = 'append'",
                        self.ledger()
                    ),
                    (&self.table, run_id),
                )
                .await
                .map_err(|e| self.err("read the commit ledger of", e))?;
            if seen.is_some() {
                return Ok(Publish::Done(CommitOutcome {
                    skipped: Some(format!(
                        "run id {run_id} was already committed to {}; not appended again \
                         (use --force-rerun to append anyway)",
                        self.name
                    )),
                    ..Default::default()
                }));
            }
        }
        let cols = self.columns();
        let target = quote_table(&self.table);
        let staged_rows: u64 = commit.messages.iter().map(|m| m.rows).sum();
        let union = stages
            .iter()
            .enumerate()
            .map(|(k, s)| {
                format!(
                    "SELECT {cols}, {k} AS _sluice_ord, _sluice_row FROM {}",
                    self.side_table(s)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let upsert = !self.primary_key.is_empty() && self.mode == WriteMode::Append;
        if upsert
            && !stages.is_empty()
            && self.duplicates == Duplicates::Error
            && let Some(key) = self.duplicate_key(client, &union).await?
        {
            return Err(ConnectorError::Database {
                connector: "mysql",
                on: format!("table {} at {}", self.table, self.conn),
                action: "upsert into".into(),
                message: format!(
                    "the rows written repeat the key ({}) = ({key})",
                    self.primary_key.join(", ")
                ),
                hint: "remove duplicate keys in the query, or set \
                       'sink.upsert.duplicates' = 'last' to keep the last row of each key"
                    .into(),
                class: ErrorClass::User,
            });
        }
        let fill = |into: &str| -> Option<String> {
            if stages.is_empty() {
                return None;
            }
            let mut sql = format!(
                "INSERT INTO {into} ({cols}) SELECT {cols} FROM ({union}) u \
                 ORDER BY _sluice_ord, _sluice_row"
            );
            if upsert {
                let non_key: Vec<String> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .filter(|n| !self.primary_key.contains(n))
                    .map(|c| format!("{0} = VALUES({0})", quote_ident(c)))
                    .collect();
                let set = if non_key.is_empty() {
                    // Nothing to update: keep the row (a no-op assignment).
                    let k = quote_ident(&self.primary_key[0]);
                    format!("{k} = {k}")
                } else {
                    non_key.join(", ")
                };
                sql.push_str(&format!(" ON DUPLICATE KEY UPDATE {set}"));
            }
            Some(sql)
        };
        let mode = match self.mode {
            WriteMode::Append if upsert => "upsert",
            WriteMode::Append => "append",
            _ => "overwrite",
        };
        let record = format!(
            "INSERT INTO {} (target, job_id, run_id, mode, row_count) VALUES (?, ?, ?, ?, ?)",
            self.ledger()
        );
        let record_params = (
            &self.table,
            &commit.job_id,
            &commit.run_id,
            mode,
            staged_rows as i64,
        );
        let outcome = CommitOutcome {
            rows: staged_rows,
            bytes: commit.messages.iter().map(|m| m.bytes).sum(),
            files: 0,
            skipped: None,
        };
        if self.mode == WriteMode::Overwrite && !self.referenced(client).await? {
            if hold {
                return Ok(Publish::Deferred);
            }
            let tag = hash_hex(&commit.job_id, 12);
            let new = format!("_sluice_new_{tag}");
            let old = format!("_sluice_old_{tag}");
            self.register(client, &new, &commit.job_id).await?;
            self.register(client, &old, &commit.job_id).await?;
            for sql in [
                format!("DROP TABLE IF EXISTS {}", self.side_table(&new)),
                format!("CREATE TABLE {} LIKE {target}", self.side_table(&new)),
            ] {
                client
                    .query_drop(sql)
                    .await
                    .map_err(|e| self.err("create the replacement of", e))?;
            }
            if let Some(sql) = fill(&self.side_table(&new)) {
                let mut tx = client
                    .start_transaction(Default::default())
                    .await
                    .map_err(|e| self.err("write", e))?;
                tx.query_drop(sql).await.map_err(|e| self.err("write", e))?;
                tx.commit().await.map_err(|e| self.err("write", e))?;
            }
            client
                .query_drop(format!(
                    "RENAME TABLE {target} TO {old}, {new} TO {target}",
                    old = self.side_table(&old),
                    new = self.side_table(&new)
                ))
                .await
                .map_err(|e| self.err("swap in the new contents of", e))?;
            client
                .exec_drop(record, record_params)
                .await
                .map_err(|e| self.err("record the commit of", e))?;
            let undo = Box::new(RenamedOverwrite {
                sink: self.clone(),
                job_id: commit.job_id.clone(),
                new,
                old,
            });
            return Ok(Publish::Renamed(outcome, undo));
        }
        // A transaction on the connection itself (not a borrowing
        // `Transaction`), so that a prepared publish can keep it open.
        client
            .query_drop("START TRANSACTION")
            .await
            .map_err(|e| self.err("commit to", e))?;
        let result = async {
            if let Some(filter) = self.clear_filter() {
                client
                    .query_drop(format!("DELETE FROM {target}{filter}"))
                    .await
                    .map_err(|e| self.err("clear", e))?;
            }
            if let Some(sql) = fill(&target) {
                client
                    .query_drop(sql)
                    .await
                    .map_err(|e| self.err(if upsert { "upsert into" } else { "write" }, e))?;
            }
            client
                .exec_drop(record, record_params)
                .await
                .map_err(|e| self.err("record the commit of", e))
        }
        .await;
        if let Err(e) = result {
            let _ = client.query_drop("ROLLBACK").await;
            return Err(e);
        }
        if hold {
            return Ok(Publish::Open(outcome));
        }
        client
            .query_drop("COMMIT")
            .await
            .map_err(|e| self.err("commit to", e))?;
        Ok(Publish::Done(outcome))
    }

    /// Connects and takes the table's commit lock (released by
    /// [`Self::unlock`] or with the connection).
    async fn lock(&self) -> Result<(Conn, String)> {
        let mut client = self.conn.connect().await?;
        // Lock names are limited to 64 characters.
        let lock = format!(
            "sluice:{}",
            hash_hex(&format!("{}/{}", self.conn.endpoint(), self.table), 12)
        );
        let got: Option<i64> = client
            .exec_first("SELECT GET_LOCK(?, ?)", (&lock, COMMIT_LOCK_SECONDS))
            .await
            .map_err(|e| self.err("lock for commit", e))?;
        if got != Some(1) {
            return Err(ConnectorError::Database {
                connector: "mysql",
                on: format!("table {} at {}", self.table, self.conn),
                action: "lock for commit".into(),
                message: format!(
                    "another job kept committing to the table for {COMMIT_LOCK_SECONDS} s"
                ),
                hint: "retry when the other job has finished".into(),
                class: ErrorClass::External,
            });
        }
        Ok((client, lock))
    }

    async fn unlock(client: &mut Conn, lock: &str) {
        let _ = client.exec_drop("DO RELEASE_LOCK(?)", (lock,)).await;
    }

    /// Drops the job's side tables after its publish; a failure leaves
    /// them to the sweep.
    async fn drop_job_stages(&self, client: &mut Conn, job_id: &str) {
        if let Err(e) = self
            .drop_stages(client, &format!("job_id = {}", quote_literal(job_id)))
            .await
        {
            tracing::warn!(target = %self.table, "staging tables left for the sweep: {e}");
        }
    }

    fn stages(commit: &JobCommit) -> Result<Vec<String>> {
        let mut messages = commit.messages.clone();
        messages.sort_by_key(|m| m.task);
        messages
            .iter()
            .map(|m| {
                m.payload
                    .get("stage")
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| ConnectorError::Internal("commit message without stage".into()))
            })
            .collect()
    }
}

/// What a publish came to.
enum Publish {
    /// Committed, or nothing to do (the job or its run id already committed).
    Done(CommitOutcome),
    /// The overwrite's rename is done; the old table is still there.
    Renamed(CommitOutcome, Box<RenamedOverwrite>),
    /// The transaction holds the publish; `COMMIT` makes it visible.
    Open(CommitOutcome),
    /// An overwrite by rename cannot be held open: publish it later.
    Deferred,
}

/// An overwrite swapped in by `RENAME TABLE`, whose old table is kept
/// until [`Revocable::finish`].
struct RenamedOverwrite {
    sink: MySqlSink,
    job_id: String,
    /// Now the name of the previous contents' way back (empty).
    new: String,
    /// Holds the previous contents.
    old: String,
}

#[async_trait]
impl Revocable for RenamedOverwrite {
    async fn swap_back(self: Box<Self>) -> Result<()> {
        let sink = &self.sink;
        let (mut client, lock) = sink.lock().await?;
        let result = async {
            client
                .query_drop(format!(
                    "RENAME TABLE {target} TO {new}, {old} TO {target}",
                    target = quote_table(&sink.table),
                    old = sink.side_table(&self.old),
                    new = sink.side_table(&self.new)
                ))
                .await
                .map_err(|e| sink.err("swap back the previous contents of", e))?;
            client
                .exec_drop(
                    format!(
                        "DELETE FROM {} WHERE target = ? AND job_id = ?",
                        sink.ledger()
                    ),
                    (&sink.table, &self.job_id),
                )
                .await
                .map_err(|e| sink.err("remove the commit record of", e))
        }
        .await;
        MySqlSink::unlock(&mut client, &lock).await;
        result
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        let mut client = self.sink.conn.connect().await?;
        self.sink.drop_job_stages(&mut client, &self.job_id).await;
        Ok(())
    }
}

/// A publish transaction left open by [`Sink::prepare_commit`], holding
/// the table's commit lock.
struct PreparedMySql {
    sink: MySqlSink,
    client: Conn,
    lock: String,
    job_id: String,
    publish: Publish,
}

#[async_trait]
impl PreparedCommit for PreparedMySql {
    async fn commit(self: Box<Self>) -> Result<CommitOutcome> {
        let Self {
            sink,
            mut client,
            lock,
            job_id,
            publish,
        } = *self;
        let outcome = match publish {
            Publish::Open(outcome) => client
                .query_drop("COMMIT")
                .await
                .map_err(|e| sink.err("commit to", e))
                .map(|()| outcome),
            Publish::Done(outcome) => Ok(outcome),
            Publish::Renamed(..) | Publish::Deferred => Err(ConnectorError::Internal(
                "a MySQL overwrite by rename was prepared".into(),
            )),
        };
        MySqlSink::unlock(&mut client, &lock).await;
        let outcome = outcome?;
        sink.drop_job_stages(&mut client, &job_id).await;
        Ok(outcome)
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        let Self {
            sink,
            mut client,
            lock,
            publish,
            ..
        } = *self;
        let result = match publish {
            Publish::Open(_) => client
                .query_drop("ROLLBACK")
                .await
                .map_err(|e| sink.err("roll back the publish into", e)),
            _ => Ok(()),
        };
        MySqlSink::unlock(&mut client, &lock).await;
        result
    }
}

#[async_trait]
impl Sink for MySqlSink {
    fn target(&self) -> String {
        format!(
            "{} (mysql table {} at {})",
            self.name, self.table, self.conn
        )
    }

    fn descriptor(&self) -> Result<SinkDescriptor> {
        Ok(SinkDescriptor {
            connector: "mysql".into(),
            name: self.name.clone(),
            location: String::new(),
            format: String::new(),
            options: self.options.clone(),
            partition_cols: vec![],
            primary_key: self.primary_key.clone(),
            mode: self.mode.clone(),
        })
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn mode(&self) -> &WriteMode {
        &self.mode
    }

    async fn begin(&self, _job_id: &str) -> Result<()> {
        let mut client = self.conn.connect().await?;
        self.ensure_ledger(&mut client).await?;
        let swept = self
            .drop_stages(&mut client, "lease_until < CURRENT_TIMESTAMP(6)")
            .await?;
        if swept > 0 {
            tracing::info!(target = %self.table, swept, "dropped staging tables of expired jobs");
        }
        Ok(())
    }

    async fn heartbeat(&self, job_id: &str) -> Result<()> {
        let mut client = self.conn.connect().await?;
        client
            .exec_drop(
                format!(
                    "UPDATE {} SET lease_until = CURRENT_TIMESTAMP(6) + INTERVAL \
                     {LEASE_SECONDS} SECOND WHERE job_id = ?",
                    self.staging()
                ),
                (job_id,),
            )
            .await
            .map_err(|e| self.err("renew the staging lease of", e))
    }

    async fn open_writer(
        &self,
        job_id: &str,
        task: u64,
        attempt: u32,
    ) -> Result<Box<dyn SinkWriter>> {
        let mut client = self.conn.connect().await?;
        let stage = format!(
            "_sluice_stage_{}",
            hash_hex(&format!("{job_id}/{task}/{attempt}"), 12)
        );
        self.register(&mut client, &stage, job_id).await?;
        // The target's column types without its keys (rows may repeat a key
        // until the commit resolves them), plus the order rows arrived in.
        client
            .query_drop(format!(
                "CREATE TABLE {} (_sluice_row BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY) \
                 ENGINE=InnoDB SELECT {} FROM {} WHERE 1 = 0",
                self.side_table(&stage),
                self.columns(),
                quote_table(&self.table)
            ))
            .await
            .map_err(|e| self.err("create a staging table for", e))?;
        Ok(Box::new(MySqlWriter {
            sink: Arc::new(self.clone()),
            client,
            prefix: format!(
                "INSERT INTO {} ({}) VALUES ",
                self.side_table(&stage),
                self.columns()
            ),
            sql: String::new(),
            pending: 0,
            stage,
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
        let stages = Self::stages(&commit)?;
        let (mut client, lock) = self.lock().await?;
        let publish = self
            .commit_locked(&mut client, &commit, &stages, false)
            .await;
        Self::unlock(&mut client, &lock).await;
        match publish? {
            Publish::Renamed(outcome, undo) => Ok((outcome, Some(undo))),
            Publish::Done(outcome) => {
                self.drop_job_stages(&mut client, &commit.job_id).await;
                Ok((outcome, None))
            }
            Publish::Open(_) | Publish::Deferred => Err(ConnectorError::Internal(
                "a MySQL publish was left open".into(),
            )),
        }
    }

    async fn prepare_commit(&self, commit: JobCommit) -> Result<Box<dyn PreparedCommit + '_>> {
        let stages = Self::stages(&commit)?;
        let (mut client, lock) = self.lock().await?;
        match self
            .commit_locked(&mut client, &commit, &stages, true)
            .await
        {
            Ok(Publish::Deferred) => {
                Self::unlock(&mut client, &lock).await;
                Ok(Box::new(DeferredCommit { sink: self, commit }))
            }
            Ok(publish) => Ok(Box::new(PreparedMySql {
                sink: self.clone(),
                client,
                lock,
                job_id: commit.job_id,
                publish,
            })),
            Err(e) => {
                Self::unlock(&mut client, &lock).await;
                Err(e)
            }
        }
    }

    async fn abort(&self, job_id: &str) -> Result<()> {
        let mut client = self.conn.connect().await?;
        match self
            .drop_stages(&mut client, &format!("job_id = {}", quote_literal(job_id)))
            .await
        {
            Ok(_) => Ok(()),
            // The ledger was never created: nothing was staged.
            Err(ConnectorError::Database { message, .. }) if message.contains("error 1146") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// One task attempt's `INSERT`s into its staging table.
struct MySqlWriter {
    sink: Arc<MySqlSink>,
    client: Conn,
    /// `INSERT INTO stage (cols) VALUES `.
    prefix: String,
    /// The statement being built.
    sql: String,
    /// Rows in `sql`.
    pending: usize,
    stage: String,
    task: u64,
    attempt: u32,
    rows: u64,
    bytes: u64,
}

impl MySqlWriter {
    async fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let sql = std::mem::take(&mut self.sql);
        self.bytes += sql.len() as u64;
        self.rows += self.pending as u64;
        self.pending = 0;
        self.client
            .query_drop(&sql)
            .await
            .map_err(|e| self.sink.err("stage rows for", e))?;
        self.sql = sql;
        self.sql.clear();
        Ok(())
    }
}

#[async_trait]
impl SinkWriter for MySqlWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let writers = self
            .sink
            .schema
            .fields()
            .iter()
            .map(|f| {
                let array = batch.column_by_name(f.name()).ok_or_else(|| {
                    ConnectorError::Internal(format!("written batch lacks column {}", f.name()))
                })?;
                LiteralWriter::try_new(array).map_err(|r| value_error(&self.sink, f.name(), r))
            })
            .collect::<Result<Vec<_>>>()?;
        let sink = Arc::clone(&self.sink);
        let names: Vec<&String> = sink.schema.fields().iter().map(|f| f.name()).collect();
        for row in 0..batch.num_rows() {
            if self.pending == 0 {
                self.sql.push_str(&self.prefix);
            } else {
                self.sql.push(',');
            }
            self.sql.push('(');
            for (i, w) in writers.iter().enumerate() {
                if i > 0 {
                    self.sql.push(',');
                }
                w.write(row, &mut self.sql)
                    .map_err(|r| value_error(&sink, names[i], r))?;
            }
            self.sql.push(')');
            self.pending += 1;
            if self.pending >= self.sink.batch_rows || self.sql.len() >= STATEMENT_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<CommitMessage> {
        self.flush().await?;
        let _ = self.client.disconnect().await;
        Ok(CommitMessage {
            task: self.task,
            attempt: self.attempt,
            rows: self.rows,
            bytes: self.bytes,
            payload: serde_json::json!({ "stage": self.stage }),
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        let stage = self.stage.clone();
        self.client
            .query_drop(format!(
                "DROP TABLE IF EXISTS {}",
                self.sink.side_table(&stage)
            ))
            .await
            .map_err(|e| self.sink.err("drop a staging table of", e))?;
        self.client
            .exec_drop(
                format!("DELETE FROM {} WHERE stage_table = ?", self.sink.staging()),
                (stage,),
            )
            .await
            .map_err(|e| self.sink.err("drop a staging table of", e))
    }
}

fn value_error(sink: &MySqlSink, column: &str, reason: String) -> ConnectorError {
    ConnectorError::Database {
        connector: "mysql",
        on: format!("table {} at {}", sink.table, sink.conn),
        action: format!("write column \"{column}\""),
        message: reason,
        hint: "fix the value or cast it in the query to the column's type".into(),
        class: ErrorClass::User,
    }
}
