//! Writing into a Postgres table through the two-phase sink protocol.
//!
//! A task attempt writes its rows with binary `COPY ... FROM STDIN` in one
//! of two ways (`'sink.transaction'`):
//!
//! - **prepared** (the default where the server allows it: appends and
//!   overwrites of tables without a unique index, on a server with
//!   `max_prepared_transactions` above 0): the attempt copies straight into the target inside its own
//!   transaction and ends with `PREPARE TRANSACTION 'sluice_<hash>'`. The
//!   rows are written once, by every task in parallel, and stay invisible.
//!   For an overwrite, the job's `begin` starts deleting the old rows in
//!   one more prepared transaction (task -1), which runs while the tasks
//!   write: they only add rows, which its snapshot does not see, and the
//!   commit waits for it (`DELETE`: a `TRUNCATE` would wait for the tasks'
//!   transactions, and they for it). Each transaction is registered in
//!   `_sluice_prepared` with a lease before it begins.
//! - **staged**: the attempt fills an unlogged staging table shaped like the
//!   target (`_sluice_stage_<hash>`, registered in `_sluice_staging` with a
//!   lease), which the commit copies into the target. Upserts always stage.
//!
//! The commit is one transaction on the target:
//!
//! ```text
//! BEGIN;
//!   lock the target's ledger entry; skip if the job or its run id already committed
//!   overwrite, unless `begin` cleared it: TRUNCATE target (DELETE when foreign
//!     keys forbid TRUNCATE, or while prepared tasks hold the table)
//!   INSERT INTO target SELECT ... FROM each winning staging table
//!     (upsert: one INSERT ... ON CONFLICT (key) DO UPDATE, duplicates checked first)
//!   INSERT INTO _sluice_commits (target, job_id, run_id, ...)
//!   mark the winning prepared transactions decided in _sluice_prepared
//! COMMIT;
//! COMMIT PREPARED each winning attempt; ROLLBACK PREPARED the others
//! DROP the staging tables
//! ```
//!
//! The target keeps its OID, so views, grants and foreign keys survive an
//! overwrite. A failure anywhere before the ledger's `COMMIT` leaves the
//! target as it was. After it, the decision is durable: prepared
//! transactions left by a crash in between are committed by the next job's
//! `begin` on the same schema ("rolled forward"). What the prepared way
//! gives up is one visibility instant for readers: the tasks' rows appear
//! one task after another, within the milliseconds of the `COMMIT
//! PREPARED`s. Staging tables and undecided prepared transactions of a
//! crashed job are removed by the next job's `begin` once their lease has
//! expired.
//!
//! For a statement set, [`Sink::prepare_commit`] runs the same transaction
//! (deferred constraints checked too) and keeps it open, with its
//! connection, until the set says `COMMIT` or `ROLLBACK`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::database::hash_hex;
use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use datafusion::common::runtime::SpawnedTask;
use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, CopyInSink};

use super::types::{ColumnEncoder, PgKind, pg_kind, type_display};
use super::{PgConnection, quote_ident, quote_literal, quote_table, split_qualified};
use crate::error::{ConnectorError, ErrorClass, Result};
use crate::options::TableOptions;
use crate::sink::{
    CommitMessage, CommitOutcome, JobCommit, PreparedCommit, Sink, SinkDescriptor, SinkWriter,
    WriteMode,
};

/// How long a job's staging tables survive without a heartbeat.
const LEASE_SECONDS: i64 = 600;
/// Bytes of encoded rows sent to the server at once.
const SEND_BYTES: usize = 1 << 20;
/// How long aborting a job waits for its cancelled writers to end.
const RESOLVE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The task number under which an overwrite's clearing transaction is registered.
const CLEAR_TASK: i64 = -1;
/// Advisory lock key serialising creation of the ledger tables.
const LEDGER_LOCK: i64 = 0x511C_E1ED;

/// How task attempts write (`'sink.transaction'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transaction {
    /// Prepared where the server and the table allow it, staged otherwise.
    Auto,
    /// Straight into the target, one prepared transaction per attempt.
    Prepared,
    /// Into staging tables copied by the commit.
    Staged,
}

/// What one winning attempt wrote, from its commit message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// Rows in a staging table.
    Stage(String),
    /// Rows in the target, in a prepared transaction.
    Prepared { gid: String },
}

impl Written {
    /// What a failed `COPY` was doing, for its error.
    fn action(&self) -> &'static str {
        match self {
            Self::Stage(_) => "stage rows for",
            Self::Prepared { .. } => "write rows into",
        }
    }

    fn payload(&self) -> serde_json::Value {
        match self {
            Self::Stage(stage) => serde_json::json!({ "stage": stage }),
            Self::Prepared { gid } => {
                serde_json::json!({ "prepared": gid })
            }
        }
    }

    fn from_payload(payload: &serde_json::Value) -> Result<Self> {
        if let Some(stage) = payload.get("stage").and_then(|s| s.as_str()) {
            return Ok(Self::Stage(stage.to_string()));
        }
        if let Some(gid) = payload.get("prepared").and_then(|s| s.as_str()) {
            return Ok(Self::Prepared {
                gid: gid.to_string(),
            });
        }
        Err(ConnectorError::Internal(format!(
            "postgres commit message without stage or prepared transaction: {payload}"
        )))
    }
}

/// What to do when the rows of one upsert repeat a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Duplicates {
    Error,
    Last,
}

/// A write into a Postgres table.
#[derive(Debug, Clone)]
pub struct PostgresSink {
    name: String,
    options: TableOptions,
    conn: PgConnection,
    table: String,
    schema: SchemaRef,
    primary_key: Vec<String>,
    duplicates: Duplicates,
    transaction: Transaction,
    mode: WriteMode,
    /// Overwrites' clearing transactions still running, by job id: `begin`
    /// starts them, the publish and `abort` wait for them. Both run where
    /// `begin` did, in the process that coordinates the job.
    clearing: Arc<Mutex<HashMap<String, SpawnedTask<Result<()>>>>>,
}

impl PostgresSink {
    /// A sink into `table` (`schema.table`) writing rows of `schema`.
    pub fn try_new(
        name: String,
        options: TableOptions,
        conn: PgConnection,
        table: String,
        schema: SchemaRef,
        primary_key: Vec<String>,
        mode: WriteMode,
    ) -> Result<Self> {
        crate::database::check_write_mode("postgres", &name, &schema, &mode)?;
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
        let transaction = match options.literal("sink.transaction")? {
            None | Some("auto") => Transaction::Auto,
            Some("prepared") => Transaction::Prepared,
            Some("staged") => Transaction::Staged,
            Some(v) => {
                return Err(ConnectorError::InvalidOption {
                    key: "sink.transaction".into(),
                    reason: format!("'{v}' is not 'auto', 'prepared' or 'staged'"),
                });
            }
        };
        if transaction == Transaction::Prepared
            && !primary_key.is_empty()
            && mode == WriteMode::Append
        {
            return Err(ConnectorError::InvalidOption {
                key: "sink.transaction".into(),
                reason: format!(
                    "an upsert into {name} (PRIMARY KEY ({})) merges staged rows in one \
                     transaction; remove 'sink.transaction' = 'prepared' or set it to 'staged'",
                    primary_key.join(", ")
                ),
            });
        }
        Ok(Self {
            name,
            options,
            conn,
            table,
            schema,
            primary_key,
            duplicates,
            transaction,
            mode,
            clearing: Arc::default(),
        })
    }

    /// Waits for the clearing transaction that `begin` started for
    /// `job_id`, if any, and returns its outcome.
    async fn cleared(&self, job_id: &str) -> Result<()> {
        let task = self
            .clearing
            .lock()
            .expect("clearing registry poisoned")
            .remove(job_id);
        match task {
            None => Ok(()),
            Some(task) => task.join().await.map_err(|e| {
                ConnectorError::Internal(format!(
                    "clearing {} for job {job_id} stopped: {e}",
                    self.table
                ))
            })?,
        }
    }

    /// The rows an overwrite deletes, as a `WHERE` clause (empty: all).
    fn clear_filter(&self) -> Option<String> {
        crate::database::overwrite_filter(&self.mode, quote_ident, quote_literal)
    }

    fn is_upsert(&self) -> bool {
        !self.primary_key.is_empty() && self.mode == WriteMode::Append
    }

    /// `"schema".` of the target, or empty when the name is unqualified.
    fn schema_prefix(&self) -> String {
        let parts = split_qualified(&self.table);
        if parts.len() > 1 {
            format!("{}.", quote_ident(&parts[parts.len() - 2]))
        } else {
            String::new()
        }
    }

    fn ledger(&self) -> String {
        format!("{}_sluice_commits", self.schema_prefix())
    }

    fn staging(&self) -> String {
        format!("{}_sluice_staging", self.schema_prefix())
    }

    fn prepared(&self) -> String {
        format!("{}_sluice_prepared", self.schema_prefix())
    }

    fn stage_table(&self, name: &str) -> String {
        format!("{}{}", self.schema_prefix(), quote_ident(name))
    }

    fn err(&self, action: &str, e: tokio_postgres::Error) -> ConnectorError {
        self.conn.error(Some(&self.table), action, e)
    }

    /// A value of column `name` that cannot be written.
    fn value_error(&self, name: &str, reason: String, hint: &str) -> ConnectorError {
        ConnectorError::Database {
            connector: "postgres",
            on: format!("table {} at {}", self.table, self.conn),
            action: format!("write column \"{name}\""),
            message: reason,
            hint: hint.into(),
            class: ErrorClass::User,
        }
    }

    /// A task attempt writing straight into the target inside a
    /// transaction that [`SinkWriter::finish`] prepares.
    async fn open_prepared_writer(
        &self,
        client: Client,
        columns: Vec<(String, PgKind)>,
        job_id: &str,
        task: u64,
        attempt: u32,
    ) -> Result<Box<dyn SinkWriter>> {
        // A new attempt means the earlier ones of this task lost: roll back
        // what they prepared, so their locks go.
        self.resolve_prepared(
            &client,
            &format!(
                "job_id = {} AND task = {task} AND NOT decided",
                quote_literal(job_id)
            ),
            true,
        )
        .await?;
        let gid = format!(
            "sluice_{}",
            hash_hex(&format!("{}/{job_id}/{task}/{attempt}", self.table), 16)
        );
        self.begin_registered(&client, job_id, task as i64, &gid)
            .await?;
        let into = quote_table(&self.table);
        self.writer(
            client,
            columns,
            &into,
            Written::Prepared { gid },
            task,
            attempt,
        )
        .await
    }

    /// Registers `gid` in `_sluice_prepared` for `task` of `job_id`, then
    /// begins its transaction, which holds the registry row until it ends
    /// (see [`Self::resolve_prepared`]).
    async fn begin_registered(
        &self,
        client: &Client,
        job_id: &str,
        task: i64,
        gid: &str,
    ) -> Result<()> {
        client
            .execute(
                &format!(
                    "INSERT INTO {} (gid, job_id, target, task, lease_until) \
                     VALUES ($1, $2, $3, $4, now() + make_interval(secs => {LEASE_SECONDS}))",
                    self.prepared()
                ),
                &[&gid, &job_id, &self.table, &task],
            )
            .await
            .map_err(|e| self.err("register the transaction of a task writing to", e))?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.err("write to", e))?;
        let held = client
            .query_opt(
                &format!(
                    "SELECT 1 FROM {} WHERE gid = $1 FOR KEY SHARE",
                    self.prepared()
                ),
                &[&gid],
            )
            .await
            .map_err(|e| self.err("register the transaction of a task writing to", e))?;
        if held.is_none() {
            return Err(ConnectorError::Internal(format!(
                "task {task} of job {job_id} writing to {} was given up by its job",
                self.table
            )));
        }
        Ok(())
    }

    /// An overwrite's removal of the old rows, started by the job's `begin`
    /// and run while the tasks write: `DELETE` in a prepared transaction
    /// registered as task [`CLEAR_TASK`], committed with the tasks'
    /// transactions.
    async fn prepare_clear(&self, client: &Client, job_id: &str) -> Result<()> {
        self.resolve_prepared(
            client,
            &format!(
                "job_id = {} AND task = {CLEAR_TASK} AND NOT decided",
                quote_literal(job_id)
            ),
            true,
        )
        .await?;
        let gid = format!(
            "sluice_{}",
            hash_hex(&format!("{}/{job_id}/clear", self.table), 16)
        );
        self.begin_registered(client, job_id, CLEAR_TASK, &gid)
            .await?;
        client
            .batch_execute(&format!(
                "DELETE FROM {}{}; SET CONSTRAINTS ALL IMMEDIATE; PREPARE TRANSACTION {}",
                quote_table(&self.table),
                self.clear_filter().unwrap_or_default(),
                quote_literal(&gid)
            ))
            .await
            .map_err(|e| self.err("clear", e))
    }

    /// Starts the binary `COPY` of a writer into `into`.
    async fn writer(
        &self,
        client: Client,
        columns: Vec<(String, PgKind)>,
        into: &str,
        written: Written,
        task: u64,
        attempt: u32,
    ) -> Result<Box<dyn SinkWriter>> {
        let names: Vec<String> = columns.iter().map(|(n, _)| quote_ident(n)).collect();
        let action = written.action();
        let copy = client
            .copy_in::<_, Bytes>(&format!(
                "COPY {into} ({}) FROM STDIN (FORMAT binary)",
                names.join(", ")
            ))
            .await
            .map_err(|e| self.err(action, e))?;
        let mut buf = BytesMut::with_capacity(SEND_BYTES + 64 * 1024);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        Ok(Box::new(PostgresWriter {
            sink: Arc::new(self.clone()),
            client,
            copy: Some(Box::pin(copy)),
            written,
            columns,
            buf,
            task,
            attempt,
            bytes: 0,
        }))
    }

    async fn ensure_ledger(&self, client: &mut Client) -> Result<()> {
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.err("prepare the commit ledger of", e))?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({LEDGER_LOCK});
             CREATE TABLE IF NOT EXISTS {} (
               target text NOT NULL, job_id text NOT NULL, run_id text, mode text NOT NULL,
               rows bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (target, job_id));
             CREATE TABLE IF NOT EXISTS {} (
               stage_table text PRIMARY KEY, job_id text NOT NULL, target text NOT NULL,
               lease_until timestamptz NOT NULL);
             CREATE TABLE IF NOT EXISTS {} (
               gid text PRIMARY KEY, job_id text NOT NULL, target text NOT NULL,
               task bigint NOT NULL, decided boolean NOT NULL DEFAULT false,
               lease_until timestamptz NOT NULL);",
            self.ledger(),
            self.staging(),
            self.prepared()
        ))
        .await
        .map_err(|e| self.err("prepare the commit ledger of", e))?;
        tx.commit()
            .await
            .map_err(|e| self.err("prepare the commit ledger of", e))
    }

    /// Drops the staging tables listed by `filter` (a condition on `_sluice_staging`).
    async fn drop_stages(&self, client: &Client, filter: &str) -> Result<usize> {
        let rows = client
            .query(
                &format!("SELECT stage_table FROM {} WHERE {filter}", self.staging()),
                &[],
            )
            .await
            .map_err(|e| self.err("list the staging tables of", e))?;
        for row in &rows {
            let stage: String = row.get(0);
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {}; DELETE FROM {} WHERE stage_table = {};",
                    self.stage_table(&stage),
                    self.staging(),
                    quote_literal(&stage)
                ))
                .await
                .map_err(|e| self.err("drop a staging table of", e))?;
        }
        Ok(rows.len())
    }

    /// Finishes the prepared transactions registered in `_sluice_prepared`
    /// that `filter` selects: `COMMIT PREPARED` the decided ones (a commit
    /// recorded in the ledger), `ROLLBACK PREPARED` the rest, and forgets
    /// them. Returns how many it finished.
    ///
    /// A writer's open transaction holds its registry row `FOR KEY SHARE`
    /// until it ends, and so does the prepared transaction it becomes. A
    /// row is forgotten only once no live transaction holds it, so a
    /// writer cancelled while its `PREPARE` is in flight is never lost:
    /// with `wait`, this waits (up to [`RESOLVE_WAIT`]) for such writers to
    /// end or prepare; without, it leaves their rows for a later sweep.
    async fn resolve_prepared(&self, client: &Client, filter: &str, wait: bool) -> Result<usize> {
        let deadline = std::time::Instant::now() + RESOLVE_WAIT;
        let mut finished = 0;
        loop {
            let rows = client
                .query(
                    &format!(
                        "SELECT gid, decided, gid IN (SELECT gid FROM pg_prepared_xacts \
                           WHERE database = current_database()) \
                         FROM {} WHERE {filter} ORDER BY task, gid",
                        self.prepared()
                    ),
                    &[],
                )
                .await
                .map_err(|e| self.err("list the prepared transactions of", e))?;
            let mut live = 0;
            for row in &rows {
                let (gid, decided, exists): (String, bool, bool) =
                    (row.get(0), row.get(1), row.get(2));
                if exists {
                    let verb = if decided { "COMMIT" } else { "ROLLBACK" };
                    match client
                        .batch_execute(&format!("{verb} PREPARED {}", quote_literal(&gid)))
                        .await
                    {
                        Ok(()) => finished += 1,
                        // Another session finished it first, or is finishing it.
                        Err(e)
                            if e.code() == Some(&SqlState::UNDEFINED_OBJECT)
                                || e.code()
                                    == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {}
                        Err(e) => return Err(self.err(&format!("{verb} PREPARED a task of"), e)),
                    }
                }
                let forgotten = client
                    .execute(
                        &format!(
                            "DELETE FROM {0} WHERE gid IN \
                               (SELECT gid FROM {0} WHERE gid = $1 FOR UPDATE SKIP LOCKED)",
                            self.prepared()
                        ),
                        &[&gid],
                    )
                    .await
                    .map_err(|e| self.err("forget a prepared transaction of", e))?;
                if forgotten == 0 {
                    live += 1;
                }
            }
            if live == 0 || !wait || std::time::Instant::now() >= deadline {
                if live > 0 {
                    tracing::warn!(
                        target = %self.table,
                        live,
                        "task transactions still running; left for the next job's sweep"
                    );
                }
                return Ok(finished);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Whether a task attempt writes through a prepared transaction, from
    /// `'sink.transaction'`, the server's `max_prepared_transactions` and
    /// the table's unique indexes (on which parallel prepared writers would
    /// wait for each other until the commit, that is forever).
    async fn use_prepared(&self, client: &Client) -> Result<bool> {
        if self.transaction == Transaction::Staged || self.is_upsert() {
            return Ok(false);
        }
        let row = client
            .query_one(
                "SELECT current_setting('max_prepared_transactions')::int, \
                   EXISTS (SELECT 1 FROM pg_index \
                     WHERE indrelid = $1::text::regclass AND (indisunique OR indisexclusion))",
                &[&quote_table(&self.table)],
            )
            .await
            .map_err(|e| self.err("check the write path of", e))?;
        let (max, unique): (i32, bool) = (row.get(0), row.get(1));
        let refusal = if max == 0 {
            "the server has max_prepared_transactions = 0; raise it above the number of \
             writing tasks (it takes a server restart)"
        } else if unique {
            "the table has a unique index, on which parallel tasks' prepared transactions \
             would wait for each other"
        } else {
            return Ok(true);
        };
        if self.transaction == Transaction::Prepared {
            return Err(ConnectorError::UnsupportedWrite {
                target: format!("postgres table {} at {}", self.table, self.conn),
                reason: format!(
                    "'sink.transaction' = 'prepared' cannot be used: {refusal}; \
                     or set 'sink.transaction' = 'staged'"
                ),
            });
        }
        Ok(false)
    }

    /// The database columns the sink's schema writes, with how to encode them.
    async fn target_columns(&self, client: &Client) -> Result<Vec<(String, PgKind)>> {
        let stmt = client
            .prepare(&format!(
                "SELECT * FROM {} LIMIT 0",
                quote_table(&self.table)
            ))
            .await
            .map_err(|e| self.err("read the columns of", e))?;
        self.schema
            .fields()
            .iter()
            .map(|f| {
                let c = stmt
                    .columns()
                    .iter()
                    .find(|c| c.name() == f.name())
                    .ok_or_else(|| ConnectorError::SchemaMismatch {
                        target: format!("postgres table {} at {}", self.table, self.conn),
                        reason: format!("the database table has no column \"{}\"", f.name()),
                    })?;
                let kind = pg_kind(c.type_(), c.type_modifier()).ok_or_else(|| {
                    ConnectorError::UnsupportedWrite {
                        target: format!("postgres table {} at {}", self.table, self.conn),
                        reason: format!(
                            "column \"{}\" has type {}, which Sluice cannot write",
                            f.name(),
                            type_display(c.type_(), c.type_modifier())
                        ),
                    }
                })?;
                Ok((f.name().clone(), kind))
            })
            .collect()
    }

    /// Runs the publish transaction up to, not including, `COMMIT`. On
    /// [`Publish::Done`] and on errors the transaction is rolled back.
    async fn publish(&self, client: &Client, commit: &JobCommit) -> Result<Publish> {
        self.cleared(&commit.job_id).await?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.err("commit to", e))?;
        match self.publish_in_transaction(client, commit).await {
            Ok(Publish::Ready(outcome)) => Ok(Publish::Ready(outcome)),
            Ok(Publish::Done(outcome)) => {
                client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(|e| self.err("commit to", e))?;
                self.abort(&commit.job_id).await?;
                Ok(Publish::Done(outcome))
            }
            Err(e) => {
                if let Err(rollback) = client.batch_execute("ROLLBACK").await {
                    tracing::debug!(target = %self.table, "rollback after a failed publish: {rollback}");
                }
                Err(e)
            }
        }
    }

    /// After the publish transaction's `COMMIT`: makes the winning
    /// prepared transactions visible, rolls back the losing ones and drops
    /// the job's staging tables. A failure to drop leaves the tables to the
    /// sweep; a failure to finish a decided transaction is an error, and
    /// the next job's `begin` finishes it.
    async fn complete(&self, client: &Client, job_id: &str) -> Result<()> {
        let job = format!("job_id = {}", quote_literal(job_id));
        self.resolve_prepared(client, &job, true)
            .await
            .map_err(|e| ConnectorError::Database {
                connector: "postgres",
                on: format!("table {} at {}", self.table, self.conn),
                action: "finish the committed write to".into(),
                message: format!(
                    "the commit is recorded, but its prepared transactions could not all be \
                     committed: {e}"
                ),
                hint: "the next job writing to a table of this schema commits them; \
                       `SELECT gid FROM pg_prepared_xacts` lists them"
                    .into(),
                class: ErrorClass::External,
            })?;
        if let Err(e) = self.drop_stages(client, &job).await {
            tracing::warn!(target = %self.table, "staging tables left for the sweep: {e}");
        }
        Ok(())
    }

    /// The publish transaction's statements, after `BEGIN`; stops before
    /// `COMMIT`.
    async fn publish_in_transaction(&self, tx: &Client, commit: &JobCommit) -> Result<Publish> {
        let mut messages = commit.messages.clone();
        messages.sort_by_key(|m| m.task);
        let written: Vec<Written> = messages
            .iter()
            .map(|m| Written::from_payload(&m.payload))
            .collect::<Result<_>>()?;
        let stages: Vec<String> = written
            .iter()
            .filter_map(|w| match w {
                Written::Stage(s) => Some(s.clone()),
                Written::Prepared { .. } => None,
            })
            .collect();
        let mut prepared: Vec<String> = written
            .iter()
            .filter_map(|w| match w {
                Written::Prepared { gid } => Some(gid.clone()),
                Written::Stage(_) => None,
            })
            .collect();
        // The overwrite's old rows, deleted by `begin` in a prepared transaction.
        let clear = if self.clear_filter().is_some() {
            tx.query_opt(
                &format!(
                    "SELECT gid FROM {} WHERE job_id = $1 AND task = {CLEAR_TASK} \
                       AND gid IN (SELECT gid FROM pg_prepared_xacts \
                         WHERE database = current_database())",
                    self.prepared()
                ),
                &[&commit.job_id],
            )
            .await
            .map_err(|e| self.err("read the prepared transactions of", e))?
            .map(|row| row.get::<_, String>(0))
        } else {
            None
        };
        let cleared = clear.is_some();
        prepared.extend(clear);
        if self.is_upsert() && !prepared.is_empty() {
            return Err(ConnectorError::Internal(
                "an upsert's rows were written without staging".into(),
            ));
        }
        let target = quote_table(&self.table);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&self.table])
            .await
            .map_err(|e| self.err("lock the commit ledger of", e))?;
        let done = tx
            .query_opt(
                &format!(
                    "SELECT rows FROM {} WHERE target = $1 AND job_id = $2",
                    self.ledger()
                ),
                &[&self.table, &commit.job_id],
            )
            .await
            .map_err(|e| self.err("read the commit ledger of", e))?;
        if let Some(row) = done {
            // A retried commit of a job that already committed.
            let rows: i64 = row.get(0);
            return Ok(Publish::Done(CommitOutcome {
                rows: rows as u64,
                ..Default::default()
            }));
        }
        if let Some(run_id) = &commit.run_id
            && !commit.force
            && self.mode == WriteMode::Append
        {
            let seen = tx
                .query_opt(
                    &format!(
                        "SELECT 1 FROM {} WHERE target = $1 AND run_id = $2 AND mode = 'append'",
                        self.ledger()
                    ),
                    &[&self.table, run_id],
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
        let filter = self.clear_filter().filter(|_| !cleared);
        if let Some(filter) = filter
            .as_ref()
            .filter(|f| !f.is_empty() || !prepared.is_empty())
        {
            // A partition's rows, or while the prepared tasks hold the
            // table (TRUNCATE would wait for them).
            tx.batch_execute(&format!("DELETE FROM {target}{filter}"))
                .await
                .map_err(|e| self.err("clear", e))?;
        } else if filter.is_some() {
            tx.batch_execute("SAVEPOINT sluice_truncate")
                .await
                .map_err(|e| self.err("clear", e))?;
            if let Err(e) = tx.batch_execute(&format!("TRUNCATE {target}")).await {
                // TRUNCATE refuses tables that foreign keys reference;
                // DELETE does the same inside the transaction.
                if e.code() != Some(&SqlState::FEATURE_NOT_SUPPORTED) {
                    return Err(self.err("clear", e));
                }
                tx.batch_execute(&format!(
                    "ROLLBACK TO SAVEPOINT sluice_truncate; DELETE FROM {target}"
                ))
                .await
                .map_err(|e| self.err("clear", e))?;
            }
        }
        let cols: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| quote_ident(f.name()))
            .collect();
        let col_list = cols.join(", ");
        let mut rows: u64 = messages
            .iter()
            .zip(&written)
            .filter(|(_, w)| matches!(w, Written::Prepared { .. }))
            .map(|(m, _)| m.rows)
            .sum();
        if self.is_upsert() && !stages.is_empty() {
            let key: Vec<String> = self.primary_key.iter().map(|c| quote_ident(c)).collect();
            let key_list = key.join(", ");
            let union = stages
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    format!(
                        "SELECT {col_list}, {k} AS _sluice_ord, ctid AS _sluice_row FROM {}",
                        self.stage_table(s)
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            if self.duplicates == Duplicates::Error {
                let shown = key
                    .iter()
                    .map(|k| format!("{k}::text"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let dup = tx
                    .query_opt(
                        &format!(
                            "SELECT concat_ws(', ', {shown}) FROM ({union}) u \
                             GROUP BY {key_list} HAVING count(*) > 1 LIMIT 1"
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| self.err("check the upsert keys of", e))?;
                if let Some(row) = dup {
                    let value: String = row.get(0);
                    return Err(ConnectorError::Database {
                        connector: "postgres",
                        on: format!("table {} at {}", self.table, self.conn),
                        action: "upsert into".into(),
                        message: format!(
                            "the rows written repeat the key ({}) = ({value})",
                            self.primary_key.join(", ")
                        ),
                        hint: "remove duplicate keys in the query, or set \
                               'sink.upsert.duplicates' = 'last' to keep the last row of each key"
                            .into(),
                        class: ErrorClass::User,
                    });
                }
            }
            let non_key: Vec<&String> = self
                .schema
                .fields()
                .iter()
                .map(|f| f.name())
                .filter(|n| !self.primary_key.contains(n))
                .collect();
            let action = if non_key.is_empty() {
                "DO NOTHING".to_string()
            } else {
                format!(
                    "DO UPDATE SET {}",
                    non_key
                        .iter()
                        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            rows += tx
                .execute(
                    &format!(
                        "INSERT INTO {target} ({col_list}) \
                         SELECT DISTINCT ON ({key_list}) {col_list} FROM ({union}) u \
                         ORDER BY {key_list}, _sluice_ord DESC, _sluice_row DESC \
                         ON CONFLICT ({key_list}) {action}"
                    ),
                    &[],
                )
                .await
                .map_err(|e| self.err("upsert into", e))?;
        } else {
            for s in &stages {
                rows += tx
                    .execute(
                        &format!(
                            "INSERT INTO {target} ({col_list}) SELECT {col_list} FROM {}",
                            self.stage_table(s)
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| self.err("write", e))?;
            }
        }
        let mode = match self.mode {
            WriteMode::Append if !self.primary_key.is_empty() => "upsert",
            WriteMode::Append => "append",
            _ => "overwrite",
        };
        tx.execute(
            &format!(
                "INSERT INTO {} (target, job_id, run_id, mode, rows) VALUES ($1, $2, $3, $4, $5)",
                self.ledger()
            ),
            &[
                &self.table,
                &commit.job_id,
                &commit.run_id,
                &mode,
                &(rows as i64),
            ],
        )
        .await
        .map_err(|e| self.err("record the commit of", e))?;
        if !prepared.is_empty() {
            tx.execute(
                &format!(
                    "UPDATE {} SET decided = true WHERE job_id = $1 AND gid = ANY($2)",
                    self.prepared()
                ),
                &[&commit.job_id, &prepared],
            )
            .await
            .map_err(|e| self.err("record the commit of", e))?;
        }
        // Deferred constraints are checked now, not at COMMIT: a prepared
        // publish must not fail when told to commit.
        tx.batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
            .await
            .map_err(|e| self.err("check the constraints of", e))?;
        Ok(Publish::Ready(CommitOutcome {
            rows,
            bytes: messages.iter().map(|m| m.bytes).sum(),
            files: 0,
            skipped: None,
        }))
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn target(&self) -> String {
        format!(
            "{} (postgres table {} at {})",
            self.name, self.table, self.conn
        )
    }

    fn descriptor(&self) -> Result<SinkDescriptor> {
        Ok(SinkDescriptor {
            connector: "postgres".into(),
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

    async fn begin(&self, job_id: &str) -> Result<()> {
        let mut client = self.conn.connect().await?;
        self.ensure_ledger(&mut client).await?;
        let swept = self.drop_stages(&client, "lease_until < now()").await?;
        if swept > 0 {
            tracing::info!(target = %self.table, swept, "dropped staging tables of expired jobs");
        }
        // Decided transactions are rolled forward at once; undecided ones
        // once their job's lease has expired.
        let finished = self
            .resolve_prepared(&client, "decided OR lease_until < now()", false)
            .await?;
        if finished > 0 {
            tracing::info!(
                target = %self.table,
                finished,
                "finished prepared transactions left by crashed jobs"
            );
        }
        if self.clear_filter().is_some() && self.use_prepared(&client).await? {
            // The DELETE overlaps the tasks' COPYs instead of delaying them.
            let sink = self.clone();
            let job = job_id.to_string();
            let task = SpawnedTask::spawn(async move { sink.prepare_clear(&client, &job).await });
            self.clearing
                .lock()
                .expect("clearing registry poisoned")
                .insert(job_id.to_string(), task);
        }
        Ok(())
    }

    async fn heartbeat(&self, job_id: &str) -> Result<()> {
        let client = self.conn.connect().await?;
        for registry in [self.staging(), self.prepared()] {
            client
                .execute(
                    &format!(
                        "UPDATE {registry} SET lease_until = now() + make_interval(secs => {LEASE_SECONDS}) \
                         WHERE job_id = $1"
                    ),
                    &[&job_id],
                )
                .await
                .map_err(|e| self.err("renew the staging lease of", e))?;
        }
        Ok(())
    }

    async fn open_writer(
        &self,
        job_id: &str,
        task: u64,
        attempt: u32,
    ) -> Result<Box<dyn SinkWriter>> {
        let mut client = self.conn.connect().await?;
        let columns = self.target_columns(&client).await?;
        if self.use_prepared(&client).await? {
            return self
                .open_prepared_writer(client, columns, job_id, task, attempt)
                .await;
        }
        let stage = format!(
            "_sluice_stage_{}",
            hash_hex(&format!("{job_id}/{task}/{attempt}"), 12)
        );
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.err("create a staging table for", e))?;
        tx.batch_execute(&format!(
            "CREATE UNLOGGED TABLE {} (LIKE {} INCLUDING DEFAULTS);
             INSERT INTO {} VALUES ({}, {}, {}, now() + make_interval(secs => {LEASE_SECONDS}));",
            self.stage_table(&stage),
            quote_table(&self.table),
            self.staging(),
            quote_literal(&stage),
            quote_literal(job_id),
            quote_literal(&self.table),
        ))
        .await
        .map_err(|e| self.err("create a staging table for", e))?;
        tx.commit()
            .await
            .map_err(|e| self.err("create a staging table for", e))?;
        let into = self.stage_table(&stage);
        self.writer(client, columns, &into, Written::Stage(stage), task, attempt)
            .await
    }

    async fn commit(&self, commit: JobCommit) -> Result<CommitOutcome> {
        let client = self.conn.connect().await?;
        match self.publish(&client, &commit).await? {
            Publish::Done(outcome) => Ok(outcome),
            Publish::Ready(outcome) => {
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| self.err("commit to", e))?;
                self.complete(&client, &commit.job_id).await?;
                Ok(outcome)
            }
        }
    }

    async fn prepare_commit(&self, commit: JobCommit) -> Result<Box<dyn PreparedCommit + '_>> {
        let client = self.conn.connect().await?;
        let publish = self.publish(&client, &commit).await?;
        Ok(Box::new(PreparedPostgres {
            sink: self,
            client,
            job_id: commit.job_id,
            publish,
        }))
    }

    async fn abort(&self, job_id: &str) -> Result<()> {
        // A clearing DELETE still running ends first, so it is rolled back below.
        if let Err(e) = self.cleared(job_id).await {
            tracing::debug!(target = %self.table, "clearing of an aborted job failed: {e}");
        }
        let client = self.conn.connect().await?;
        let job = format!("job_id = {}", quote_literal(job_id));
        let undone = match self.resolve_prepared(&client, &job, true).await {
            Ok(_) => self.drop_stages(&client, &job).await,
            Err(e) => Err(e),
        };
        match undone {
            Ok(_) => Ok(()),
            // The ledger was never created: nothing was staged.
            Err(ConnectorError::Database { message, .. }) if message.contains("42P01") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What the publish transaction came to.
enum Publish {
    /// Nothing to publish (the job or its run id already committed); the
    /// transaction was rolled back.
    Done(CommitOutcome),
    /// The transaction holds the publish; `COMMIT` makes it visible.
    Ready(CommitOutcome),
}

/// A publish transaction left open by [`Sink::prepare_commit`].
struct PreparedPostgres<'a> {
    sink: &'a PostgresSink,
    client: Client,
    job_id: String,
    publish: Publish,
}

#[async_trait]
impl PreparedCommit for PreparedPostgres<'_> {
    async fn commit(self: Box<Self>) -> Result<CommitOutcome> {
        let Self {
            sink,
            client,
            job_id,
            publish,
        } = *self;
        match publish {
            Publish::Done(outcome) => Ok(outcome),
            Publish::Ready(outcome) => {
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| sink.err("commit to", e))?;
                sink.complete(&client, &job_id).await?;
                Ok(outcome)
            }
        }
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        if matches!(self.publish, Publish::Ready(_)) {
            self.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| self.sink.err("roll back the publish to", e))?;
        }
        Ok(())
    }
}

/// One task attempt's binary `COPY` into its staging table.
struct PostgresWriter {
    sink: Arc<PostgresSink>,
    client: Client,
    copy: Option<Pin<Box<CopyInSink<Bytes>>>>,
    written: Written,
    columns: Vec<(String, PgKind)>,
    buf: BytesMut,
    task: u64,
    attempt: u32,
    bytes: u64,
}

impl PostgresWriter {
    /// Ends the attempt's transaction with `PREPARE TRANSACTION`.
    async fn prepare(&self, gid: &str) -> Result<()> {
        // Deferred constraints are checked here, so COMMIT PREPARED cannot fail on them.
        self.client
            .batch_execute(&format!(
                "SET CONSTRAINTS ALL IMMEDIATE; PREPARE TRANSACTION {}",
                quote_literal(gid)
            ))
            .await
            .map_err(|e| {
                self.sink
                    .err("prepare the transaction of a task writing to", e)
            })
    }

    async fn send(&mut self) -> Result<()> {
        let chunk = self.buf.split().freeze();
        self.bytes += chunk.len() as u64;
        let copy = self.copy.as_mut().expect("copy open until finish");
        copy.send(chunk)
            .await
            .map_err(|e| self.sink.err(self.written.action(), e))
    }

    fn encoders(&self, batch: &RecordBatch) -> Result<Vec<ColumnEncoder>> {
        self.columns
            .iter()
            .map(|(name, kind)| {
                let array = batch.column_by_name(name).ok_or_else(|| {
                    ConnectorError::Internal(format!("written batch lacks column {name}"))
                })?;
                let cast_hint = "cast the value in the query to the column's type";
                let array =
                    coerce(array, kind).map_err(|r| self.sink.value_error(name, r, cast_hint))?;
                ColumnEncoder::try_new(array, kind)
                    .map_err(|r| self.sink.value_error(name, r, cast_hint))
            })
            .collect()
    }
}

/// Casts `array` to the Arrow type the column's binary encoding is made from.
fn coerce(array: &ArrayRef, kind: &PgKind) -> std::result::Result<ArrayRef, String> {
    let want = kind.data_type();
    let is_text = matches!(kind, PgKind::Text | PgKind::Jsonb | PgKind::Uuid);
    let ok = if is_text {
        matches!(
            array.data_type(),
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        )
    } else {
        array.data_type() == &want
    };
    if ok {
        return Ok(Arc::clone(array));
    }
    let cast_to = if is_text { DataType::Utf8 } else { want };
    let out = cast(array, &cast_to).map_err(|e| e.to_string())?;
    if out.null_count() > array.null_count() {
        return Err(format!(
            "some {} values do not fit the column's type {cast_to}",
            array.data_type()
        ));
    }
    Ok(out)
}

#[async_trait]
impl SinkWriter for PostgresWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let encoders = self.encoders(&batch)?;
        let ncols = encoders.len() as i16;
        for row in 0..batch.num_rows() {
            self.buf.put_i16(ncols);
            for (enc, (name, _)) in encoders.iter().zip(&self.columns) {
                enc.encode(row, &mut self.buf).map_err(|r| {
                    self.sink
                        .value_error(name, r, "fix the value or cast it in the query")
                })?;
            }
            if self.buf.len() >= SEND_BYTES {
                self.send().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<CommitMessage> {
        self.buf.put_i16(-1);
        self.send().await?;
        let mut copy = self.copy.take().expect("copy open until finish");
        let rows = copy
            .as_mut()
            .finish()
            .await
            .map_err(|e| self.sink.err(self.written.action(), e))?;
        if let Written::Prepared { gid, .. } = &self.written {
            self.prepare(gid).await?;
        }
        drop(self.client);
        Ok(CommitMessage {
            task: self.task,
            attempt: self.attempt,
            rows,
            bytes: self.bytes,
            payload: self.written.payload(),
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        // Dropping the unfinished COPY aborts it.
        self.copy.take();
        let sink = &self.sink;
        match &self.written {
            Written::Stage(stage) => self
                .client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {}; DELETE FROM {} WHERE stage_table = {};",
                    sink.stage_table(stage),
                    sink.staging(),
                    quote_literal(stage)
                ))
                .await
                .map_err(|e| sink.err("drop a staging table of", e)),
            Written::Prepared { gid, .. } => self
                .client
                .batch_execute(&format!(
                    "ROLLBACK; DELETE FROM {} WHERE gid = {};",
                    sink.prepared(),
                    quote_literal(gid)
                ))
                .await
                .map_err(|e| sink.err("roll back a task writing to", e)),
        }
    }
}
