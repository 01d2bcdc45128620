//! The Flight SQL service: statements, prepared statements, bulk ingest,
//! metadata and session actions, on arrow-flight's [`FlightSqlService`].

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, FlightDescriptor,
    FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use bytes::Bytes;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::sql::parser::Statement as DfStatement;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use sluice_planner::{
    DEFAULT_CATALOG, DEFAULT_SCHEMA, Planned, RunContext, SluiceStatement, parse_statement, split,
};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{
    bind_placeholders, client_schema, number_placeholders, parameter_rows, status_of,
    status_of_datafusion, to_client_batch,
};
use super::metadata::{
    SQL_INFO, XDBC_INFO, foreign_keys_schema, primary_keys_batch, primary_keys_schema,
    update_count_batch, update_count_schema,
};
use super::session_options::{
    CLOSE_STATUS_CLOSED, CloseSessionRequest, CloseSessionResult, ERROR_INVALID_NAME,
    ERROR_INVALID_VALUE, GetSessionOptionsRequest, GetSessionOptionsResult, SessionOptionValue,
    SetSessionOptionsError, SetSessionOptionsRequest, SetSessionOptionsResult,
};
use super::state::{ClientSession, PendingResult, PreparedStatement, ServerState, SessionHandle};
use crate::embedded::Executed;

type FlightDataStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// Session option turning the cast of view types off (`false`).
pub(crate) const OPTION_CAST_VIEW_TYPES: &str = "sluice.cast_view_types";

/// Header by which `sluice run --server` names the script run: base64 of
/// `{"script": ..., "statement": N, "vars": {...}, "force_rerun": bool}`.
pub(crate) const RUN_HEADER: &str = "x-sluice-run";

fn run_header(metadata: &tonic::metadata::MetadataMap) -> Option<(RunContext, usize)> {
    use base64::Engine;
    let raw = metadata.get(RUN_HEADER)?.to_str().ok()?;
    let json = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let vars = v
        .get("vars")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some((
        RunContext {
            script_name: v.get("script").and_then(|s| s.as_str()).map(str::to_string),
            vars,
            force_rerun: v
                .get("force_rerun")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
        },
        v.get("statement").and_then(|i| i.as_u64()).unwrap_or(1) as usize,
    ))
}

/// Sluice's Flight SQL service.
#[derive(Debug)]
pub(crate) struct SluiceFlightSql {
    pub state: Arc<ServerState>,
}

/// What running one statement produced.
enum Ran {
    /// Rows to stream at DoGet.
    Rows {
        plan: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
    },
    /// A statement that took effect: affected rows and a summary.
    Count {
        rows: i64,
        summary: serde_json::Value,
    },
}

/// What preparing found out about a statement, without running it.
struct Analysis {
    is_query: bool,
    dataset_schema: SchemaRef,
    parameter_schema: SchemaRef,
}

pub(crate) fn session_of<T>(req: &Request<T>) -> Result<Arc<ClientSession>, Status> {
    req.extensions()
        .get::<SessionHandle>()
        .map(|h| Arc::clone(&h.0))
        .ok_or_else(|| Status::internal("the request carries no session"))
}

fn one_statement(sql: &str) -> Result<String, Status> {
    let statements = split(sql).map_err(|e| status_of(&e, sql))?;
    match statements.len() {
        1 => Ok(statements.into_iter().next().expect("one").text),
        0 => Err(Status::invalid_argument("the statement is empty")),
        n => Err(Status::invalid_argument(format!(
            "this request holds {n} statements; send one statement per request \
             (`sluice run --server` splits scripts for you)"
        ))),
    }
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(message.0)
}

fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
    records: i64,
    app_metadata: Bytes,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_total_records(records)
        .with_app_metadata(app_metadata))
}

fn batch_stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> FlightDataStream {
    let stream = futures::stream::iter(batches.into_iter().map(Ok));
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(stream)
            .map_err(Status::from),
    )
}

fn decode_error(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed request: {e}"))
}

/// The record batches of a DoPut.
fn put_batches(request: Request<PeekableFlightDataStream>) -> FlightRecordBatchStream {
    // The first message may carry only the command (Rust clients send it
    // without a schema when there is nothing to bind); skip empty ones.
    let stream = request
        .into_inner()
        .try_filter(|fd| futures::future::ready(!fd.data_header.is_empty()))
        .map_err(FlightError::from);
    FlightRecordBatchStream::new_from_flight_data(stream)
}

fn flight_to_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => Status::invalid_argument(format!("cannot decode the uploaded data: {other}")),
    }
}

impl SluiceFlightSql {
    /// Runs one statement: DDL, SET and writes take effect now, exactly
    /// once; queries are planned and run when their result is fetched.
    async fn run_sql(&self, session: &Arc<ClientSession>, sql: &str) -> Result<Ran, Status> {
        self.run_sql_as(session, sql, None).await
    }

    /// [`Self::run_sql`] for a statement of a script run by `sluice run
    /// --server`, which says which script, variables and statement it is,
    /// so the statement gets the same run id as an embedded run.
    async fn run_sql_as(
        &self,
        session: &Arc<ClientSession>,
        sql: &str,
        run: Option<(RunContext, usize)>,
    ) -> Result<Ran, Status> {
        let text = one_statement(sql)?;
        let parsed = parse_statement(&text).map_err(|e| status_of(&e, &text))?;
        let index = run.as_ref().map_or(1, |(_, i)| *i);
        session.session().set_run(run.map(|(r, _)| r));
        let planned = session
            .session()
            .plan(parsed, index, false)
            .await
            .map_err(|e| status_of(&e, &text))?;
        self.run_planned(session, planned, &text).await
    }

    async fn run_planned(
        &self,
        session: &Arc<ClientSession>,
        planned: Planned,
        text: &str,
    ) -> Result<Ran, Status> {
        let metrics = &self.state.metrics;
        match planned {
            Planned::Query { plan } => {
                self.state.count(&metrics.queries, 1);
                let schema = client_schema(
                    plan.schema().as_ref(),
                    session.cast_view_types.load(Ordering::Relaxed),
                );
                Ok(Ran::Rows { plan, schema })
            }
            planned => {
                self.state.count(&metrics.updates, 1);
                metrics.running.fetch_add(1, Ordering::Relaxed);
                let mut on_write = |_: &sluice_planner::WriteJob| {};
                let executed = tokio::select! {
                    r = session.engine.run_planned(planned, &mut on_write) => r,
                    _ = self.state.cancel_all.cancelled() => {
                        metrics.running.fetch_sub(1, Ordering::Relaxed);
                        return Err(Status::cancelled(
                            "the server shut down before the statement finished; nothing it wrote was committed",
                        ));
                    }
                };
                metrics.running.fetch_sub(1, Ordering::Relaxed);
                let executed = executed.map_err(|e| status_of(&e, text))?;
                Ok(match executed {
                    Executed::Done {
                        kind,
                        target,
                        message,
                    } => Ran::Count {
                        rows: 0,
                        summary: serde_json::json!({
                            "kind": kind.label(),
                            "target": target,
                            "message": message,
                        }),
                    },
                    Executed::Written {
                        kind,
                        target,
                        outcome,
                        rows_read,
                    } => {
                        self.state.count(&metrics.rows_written, outcome.rows);
                        Ran::Count {
                            rows: outcome.rows as i64,
                            summary: serde_json::json!({
                                "kind": kind.label(),
                                "target": target,
                                "rows_written": outcome.rows,
                                "rows_read": rows_read,
                                "bytes": outcome.bytes,
                                "files": outcome.files,
                                "skipped": outcome.skipped,
                            }),
                        }
                    }
                    Executed::WrittenSet { writes, rows_read } => {
                        let rows: u64 = writes.iter().map(|w| w.outcome.rows).sum();
                        self.state.count(&metrics.rows_written, rows);
                        let targets: Vec<&str> = writes.iter().map(|w| w.target.as_str()).collect();
                        Ran::Count {
                            rows: rows as i64,
                            summary: serde_json::json!({
                                "kind": sluice_planner::StatementKind::StatementSet.label(),
                                "target": targets.join(", "),
                                "rows_written": rows,
                                "rows_read": rows_read,
                                "bytes": writes.iter().map(|w| w.outcome.bytes).sum::<u64>(),
                                "files": writes.iter().map(|w| w.outcome.files).sum::<u64>(),
                                "writes": writes.iter().map(|w| serde_json::json!({
                                    "kind": w.kind.label(),
                                    "target": w.target,
                                    "rows_written": w.outcome.rows,
                                    "skipped": w.outcome.skipped,
                                })).collect::<Vec<_>>(),
                            }),
                        }
                    }
                    Executed::Rows { .. } | Executed::Plan { .. } => {
                        return Err(Status::internal("a write produced rows"));
                    }
                })
            }
        }
    }

    /// Stores a result for its DoGet and describes it.
    fn info_for(
        &self,
        ran: Ran,
        session: &Arc<ClientSession>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let ticket = TicketStatementQuery {
            statement_handle: id.clone().into(),
        }
        .as_any()
        .encode_to_vec();
        match ran {
            Ran::Rows { plan, schema } => {
                let info = flight_info(&schema, ticket, descriptor, -1, Bytes::new())?;
                self.state.put_result(
                    id,
                    PendingResult::Query {
                        plan,
                        session: Arc::clone(session),
                        schema,
                        cancel: self.state.cancel_all.child_token(),
                        created: Instant::now(),
                    },
                );
                Ok(info)
            }
            Ran::Count { rows, summary } => {
                let batch = update_count_batch(rows);
                let info = flight_info(
                    &update_count_schema(),
                    ticket,
                    descriptor,
                    1,
                    Bytes::from(summary.to_string()),
                )?;
                self.state.put_result(
                    id,
                    PendingResult::Batch {
                        batch,
                        created: Instant::now(),
                    },
                );
                Ok(info)
            }
        }
    }

    /// Plans a statement without running it: result and parameter schemas.
    async fn analyze(&self, session: &Arc<ClientSession>, sql: &str) -> Result<Analysis, Status> {
        let text = one_statement(sql)?;
        let parsed = parse_statement(&text).map_err(|e| status_of(&e, &text))?;
        let cast = session.cast_view_types.load(Ordering::Relaxed);
        let (_, count) = number_placeholders(&text)?;
        let unknown_params = |n: usize| {
            Arc::new(Schema::new(
                (1..=n)
                    .map(|i| Field::new(format!("${i}"), DataType::Null, true))
                    .collect::<Vec<_>>(),
            ))
        };
        let text_columns = |names: &[&str]| {
            Arc::new(Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(*n, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            ))
        };
        match parsed {
            SluiceStatement::ShowCreateTable(_) => Ok(Analysis {
                is_query: true,
                dataset_schema: text_columns(&["table_name", "create_statement"]),
                parameter_schema: unknown_params(count),
            }),
            SluiceStatement::DataFusion(stmt)
                if matches!(stmt.as_ref(), DfStatement::Explain(_)) =>
            {
                Ok(Analysis {
                    is_query: true,
                    dataset_schema: text_columns(&["plan_type", "plan"]),
                    parameter_schema: unknown_params(count),
                })
            }
            SluiceStatement::DataFusion(stmt) => {
                session
                    .session()
                    .sync_tables()
                    .await
                    .map_err(|e| status_of(&e, &text))?;
                let state = session.session().context().state();
                let plan = state
                    .statement_to_plan(*stmt)
                    .await
                    .map_err(|e| status_of(&e.into(), &text))?;
                use datafusion::logical_expr::LogicalPlan;
                let is_query = !matches!(
                    plan,
                    LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_)
                );
                let types = plan
                    .get_parameter_types()
                    .map_err(|e| status_of(&e.into(), &text))?;
                let parameter_schema = Arc::new(Schema::new(
                    (1..=count)
                        .map(|i| {
                            let name = format!("${i}");
                            let t = types
                                .get(&name)
                                .cloned()
                                .flatten()
                                .unwrap_or(DataType::Null);
                            Field::new(name, t, true)
                        })
                        .collect::<Vec<_>>(),
                ));
                let dataset_schema = if is_query {
                    client_schema(plan.schema().as_arrow(), cast)
                } else {
                    Arc::new(Schema::empty())
                };
                Ok(Analysis {
                    is_query,
                    dataset_schema,
                    parameter_schema,
                })
            }
            _ => Ok(Analysis {
                is_query: false,
                dataset_schema: Arc::new(Schema::empty()),
                parameter_schema: unknown_params(count),
            }),
        }
    }

    fn prepared(
        &self,
        handle: &[u8],
        session: &ClientSession,
    ) -> Result<Arc<PreparedStatement>, Status> {
        let id = std::str::from_utf8(handle).map_err(decode_error)?;
        let p = self
            .state
            .prepared
            .lock()
            .expect("prepared lock")
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(
                    "unknown prepared statement (closed, or its session expired); prepare it again",
                )
            })?;
        if p.session_id != session.id {
            return Err(Status::not_found(
                "this prepared statement belongs to another session; prepare it again",
            ));
        }
        Ok(p)
    }

    /// Runs a prepared update once per parameter row (or once without
    /// parameters), returning the affected rows.
    async fn run_prepared_update(
        &self,
        session: &Arc<ClientSession>,
        prepared: &PreparedStatement,
        params: Option<RecordBatch>,
    ) -> Result<i64, Status> {
        let rows = match &params {
            Some(b) if b.num_rows() > 0 => parameter_rows(b)?,
            _ => vec![vec![]],
        };
        let mut total = 0i64;
        for values in rows {
            let sql = bind_placeholders(&prepared.sql, &values)?;
            match self.run_sql(session, &sql).await? {
                Ran::Count { rows, .. } => total += rows,
                Ran::Rows { .. } => {
                    return Err(Status::invalid_argument(
                        "this statement returns rows; execute it as a query",
                    ));
                }
            }
        }
        Ok(total)
    }

    async fn collect_put(
        request: Request<PeekableFlightDataStream>,
    ) -> Result<Option<RecordBatch>, Status> {
        let mut stream = put_batches(request);
        let mut batches = vec![];
        while let Some(b) = stream.next().await {
            batches.push(b.map_err(flight_to_status)?);
        }
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let schema = first.schema();
        arrow::compute::concat_batches(&schema, &batches)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("inconsistent parameter batches: {e}")))
    }

    /// Answers a metadata command with one batch.
    async fn metadata_batch(
        &self,
        session: &Arc<ClientSession>,
        any: &Any,
    ) -> Result<RecordBatch, Status> {
        use arrow_flight::sql::Command;
        let cmd = Command::try_from(any.clone()).map_err(decode_error)?;
        let internal = |e: FlightError| Status::internal(e.to_string());
        let internal = &internal;
        match cmd {
            Command::CommandGetCatalogs(c) => {
                let mut b = c.into_builder();
                for name in session.session().context().catalog_names() {
                    b.append(name);
                }
                b.build().map_err(internal)
            }
            Command::CommandGetDbSchemas(c) => {
                let mut b = c.into_builder();
                let ctx = session.session().context();
                for cat in ctx.catalog_names() {
                    if let Some(catalog) = ctx.catalog(&cat) {
                        for schema in catalog.schema_names() {
                            b.append(&cat, schema);
                        }
                    }
                }
                b.build().map_err(internal)
            }
            Command::CommandGetTables(c) => self.tables_batch(session, c).await,
            Command::CommandGetTableTypes(c) => {
                let mut b = c.into_builder();
                for t in ["SYSTEM TABLE", "TABLE", "VIEW"] {
                    b.append(t);
                }
                b.build().map_err(internal)
            }
            Command::CommandGetSqlInfo(c) => c.into_builder(&SQL_INFO).build().map_err(internal),
            Command::CommandGetXdbcTypeInfo(c) => {
                c.into_builder(&XDBC_INFO).build().map_err(internal)
            }
            Command::CommandGetPrimaryKeys(c) => {
                let catalog_ok = c.catalog.as_deref().is_none_or(|v| v == DEFAULT_CATALOG);
                let schema_ok = c.db_schema.as_deref().is_none_or(|v| v == DEFAULT_SCHEMA);
                let entry = if catalog_ok && schema_ok {
                    session
                        .session()
                        .table_entry(&c.table)
                        .await
                        .map_err(|e| status_of(&e, ""))?
                } else {
                    None
                };
                let columns = entry.map(|e| e.spec.primary_key).unwrap_or_default();
                Ok(primary_keys_batch(
                    DEFAULT_CATALOG,
                    DEFAULT_SCHEMA,
                    &c.table,
                    &columns,
                ))
            }
            Command::CommandGetExportedKeys(_)
            | Command::CommandGetImportedKeys(_)
            | Command::CommandGetCrossReference(_) => {
                Ok(RecordBatch::new_empty(foreign_keys_schema()))
            }
            other => Err(Status::unimplemented(format!(
                "{} is not supported",
                other.type_url()
            ))),
        }
    }

    async fn tables_batch(
        &self,
        session: &Arc<ClientSession>,
        c: CommandGetTables,
    ) -> Result<RecordBatch, Status> {
        session
            .session()
            .sync_tables()
            .await
            .map_err(|e| status_of(&e, ""))?;
        let mut b = c.into_builder();
        let ctx = session.session().context();
        for cat in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&cat) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                let mut names = schema.table_names();
                names.sort();
                for name in names {
                    let Some(table) = schema.table(&name).await.map_err(status_of_datafusion)?
                    else {
                        continue;
                    };
                    let kind = if schema_name == "information_schema" {
                        "SYSTEM TABLE"
                    } else {
                        match table.table_type() {
                            datafusion::logical_expr::TableType::View => "VIEW",
                            _ => "TABLE",
                        }
                    };
                    b.append(&cat, &schema_name, &name, kind, table.schema().as_ref())
                        .map_err(|e| Status::internal(e.to_string()))?;
                }
            }
        }
        b.build().map_err(|e| Status::internal(e.to_string()))
    }

    fn metadata_info(
        &self,
        any: Any,
        schema: SchemaRef,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(flight_info(
            &schema,
            any.encode_to_vec(),
            descriptor,
            -1,
            Bytes::new(),
        )?))
    }

    async fn metadata_stream(
        &self,
        session: &Arc<ClientSession>,
        any: Any,
    ) -> Result<Response<FlightDataStream>, Status> {
        let batch = self.metadata_batch(session, &any).await?;
        Ok(Response::new(batch_stream(batch.schema(), vec![batch])))
    }

    /// The result schema of a descriptor, without running anything.
    pub(crate) async fn schema_for(
        &self,
        session: &Arc<ClientSession>,
        descriptor: &FlightDescriptor,
    ) -> Result<SchemaRef, Status> {
        use arrow_flight::sql::Command;
        let any = Any::decode(&*descriptor.cmd).map_err(decode_error)?;
        match Command::try_from(any.clone()).map_err(decode_error)? {
            Command::CommandStatementQuery(q) => {
                let a = self.analyze(session, &q.query).await?;
                Ok(if a.is_query {
                    a.dataset_schema
                } else {
                    update_count_schema()
                })
            }
            Command::CommandPreparedStatementQuery(p) => {
                let p = self.prepared(&p.prepared_statement_handle, session)?;
                Ok(if p.is_query {
                    Arc::clone(&p.dataset_schema)
                } else {
                    update_count_schema()
                })
            }
            Command::CommandGetCatalogs(c) => Ok(c.into_builder().schema()),
            Command::CommandGetDbSchemas(c) => Ok(c.into_builder().schema()),
            Command::CommandGetTables(c) => Ok(c.into_builder().schema()),
            Command::CommandGetTableTypes(c) => Ok(c.into_builder().schema()),
            Command::CommandGetSqlInfo(_) => Ok(SQL_INFO.schema()),
            Command::CommandGetXdbcTypeInfo(_) => Ok(XDBC_INFO.schema()),
            Command::CommandGetPrimaryKeys(_) => Ok(primary_keys_schema()),
            Command::CommandGetExportedKeys(_)
            | Command::CommandGetImportedKeys(_)
            | Command::CommandGetCrossReference(_) => Ok(foreign_keys_schema()),
            other => Err(Status::unimplemented(format!(
                "GetSchema of {} is not supported",
                other.type_url()
            ))),
        }
    }

    /// Cancels the statements behind the tickets of `info`.
    fn cancel_info(&self, info: &FlightInfo) -> bool {
        let mut any_cancelled = false;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else {
                continue;
            };
            let Ok(any) = Any::decode(&*ticket.ticket) else {
                continue;
            };
            if let Ok(Some(t)) = any.unpack::<TicketStatementQuery>()
                && let Ok(id) = std::str::from_utf8(&t.statement_handle)
            {
                any_cancelled |= self.state.cancel(id);
            }
        }
        any_cancelled
    }

    async fn set_session_options(
        &self,
        session: &Arc<ClientSession>,
        req: SetSessionOptionsRequest,
    ) -> SetSessionOptionsResult {
        let mut errors = std::collections::HashMap::new();
        for (key, value) in req.session_options {
            let Some(v) = value.as_setting() else {
                errors.insert(
                    key,
                    SetSessionOptionsError {
                        value: ERROR_INVALID_VALUE,
                    },
                );
                continue;
            };
            let result = match key.as_str() {
                OPTION_CAST_VIEW_TYPES => match v.parse::<bool>() {
                    Ok(b) => {
                        session.cast_view_types.store(b, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(_) => Err(ERROR_INVALID_VALUE),
                },
                "catalog" => self.set_default(session, "datafusion.catalog.default_catalog", &v),
                "schema" => {
                    // The schema may have been created by another session.
                    if let Err(e) = session.session().sync_tables().await {
                        tracing::warn!("cannot refresh the catalog: {e}");
                    }
                    self.set_default(session, "datafusion.catalog.default_schema", &v)
                }
                _ => {
                    let sql = format!(
                        "SET '{}' = '{}'",
                        key.replace('\'', "''"),
                        v.replace('\'', "''")
                    );
                    match parse_statement(&sql) {
                        Ok(stmt) => {
                            let plan = session.session().plan(stmt, 1, false).await;
                            match plan {
                                Ok(_) => Ok(()),
                                Err(sluice_planner::PlannerError::UnknownSetting { .. }) => {
                                    Err(ERROR_INVALID_NAME)
                                }
                                Err(_) => Err(ERROR_INVALID_VALUE),
                            }
                        }
                        Err(_) => Err(ERROR_INVALID_NAME),
                    }
                }
            };
            if let Err(code) = result {
                errors.insert(key, SetSessionOptionsError { value: code });
            }
        }
        SetSessionOptionsResult { errors }
    }

    fn set_default(&self, session: &Arc<ClientSession>, key: &str, value: &str) -> Result<(), i32> {
        let ctx = session.session().context();
        let exists = if key.ends_with("default_catalog") {
            ctx.catalog(value).is_some()
        } else {
            let catalog = ctx
                .state()
                .config()
                .options()
                .catalog
                .default_catalog
                .clone();
            ctx.catalog(&catalog)
                .is_some_and(|c| c.schema(value).is_some())
        };
        if !exists {
            return Err(ERROR_INVALID_VALUE);
        }
        let state = ctx.state_ref();
        let mut state = state.write();
        state
            .config_mut()
            .options_mut()
            .set(key, value)
            .map_err(|_| ERROR_INVALID_VALUE)
    }

    fn get_session_options(&self, session: &Arc<ClientSession>) -> GetSessionOptionsResult {
        let ctx = session.session().context();
        let state = ctx.state();
        let options = state.config().options();
        let mut map = std::collections::HashMap::new();
        map.insert(
            "catalog".to_string(),
            SessionOptionValue::string(options.catalog.default_catalog.clone()),
        );
        map.insert(
            "schema".to_string(),
            SessionOptionValue::string(options.catalog.default_schema.clone()),
        );
        map.insert(
            OPTION_CAST_VIEW_TYPES.to_string(),
            SessionOptionValue::bool(session.cast_view_types.load(Ordering::Relaxed)),
        );
        for entry in options.entries() {
            if entry.key.starts_with("sluice.")
                && let Some(v) = entry.value
            {
                map.insert(entry.key, SessionOptionValue::string(v));
            }
        }
        GetSessionOptionsResult {
            session_options: map,
        }
    }

    /// Bulk ingest: the uploaded batches are written through the target's
    /// two-phase sink, so they become visible at once at the end.
    async fn ingest(
        &self,
        session: &Arc<ClientSession>,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if cmd.transaction_id.is_some() {
            return Err(Status::unimplemented(
                "transactions are not supported; ingest without one",
            ));
        }
        if cmd.catalog.as_deref().is_some_and(|c| c != DEFAULT_CATALOG)
            || cmd.schema.as_deref().is_some_and(|s| s != DEFAULT_SCHEMA)
        {
            return Err(Status::invalid_argument(format!(
                "ingest targets catalog '{DEFAULT_CATALOG}', schema '{DEFAULT_SCHEMA}'; \
                 leave catalog and schema unset"
            )));
        }
        let name = cmd.table.clone();
        if name.is_empty() {
            return Err(Status::invalid_argument("ingest needs a target table name"));
        }
        let options = cmd.table_definition_options.unwrap_or_default();
        let if_not_exist = TableNotExistOption::try_from(options.if_not_exist)
            .unwrap_or(TableNotExistOption::Unspecified);
        let if_exists = TableExistsOption::try_from(options.if_exists)
            .unwrap_or(TableExistsOption::Unspecified);

        let mut batches = put_batches(request);
        let first = batches.next().await.transpose().map_err(flight_to_status)?;
        let schema: SchemaRef = match (&first, batches.schema()) {
            (Some(b), _) => b.schema(),
            (None, Some(s)) => Arc::clone(s),
            (None, None) => {
                return Err(Status::invalid_argument(
                    "the ingest stream carries no schema",
                ));
            }
        };
        let planner = session.session();
        planner.sync_tables().await.map_err(|e| status_of(&e, ""))?;
        let existing = planner
            .table_entry(&name)
            .await
            .map_err(|e| status_of(&e, ""))?;
        let overwrite = match (&existing, if_exists, if_not_exist) {
            (Some(_), TableExistsOption::Append, _) => false,
            (Some(_), TableExistsOption::Replace, _) => true,
            (Some(_), _, _) => {
                return Err(Status::already_exists(format!(
                    "table '{name}' already exists; ingest with mode 'append' or 'replace'"
                )));
            }
            (None, _, TableNotExistOption::Create) => {
                planner
                    .create_warehouse_table(
                        &name,
                        Arc::clone(&schema),
                        (vec![], vec![]),
                        false,
                        cmd.temporary,
                    )
                    .await
                    .map_err(|e| status_of(&e, ""))?;
                false
            }
            (None, _, _) => {
                return Err(Status::not_found(format!(
                    "table '{name}' does not exist; ingest with mode 'create' or 'create_append'"
                )));
            }
        };
        // A replaced warehouse table takes the new schema.
        if overwrite
            && let Some(entry) = &existing
            && entry
                .spec
                .columns
                .as_ref()
                .is_some_and(|c| c.fields() != schema.fields())
            && entry.spec.connector == "filesystem"
            && self.is_warehouse_table(entry)
        {
            planner
                .create_warehouse_table(
                    &name,
                    Arc::clone(&schema),
                    (entry.spec.primary_key.clone(), entry.spec.unique.clone()),
                    true,
                    entry.temporary,
                )
                .await
                .map_err(|e| status_of(&e, ""))?;
        }

        let source_name = format!("__sluice_ingest_{}", uuid::Uuid::new_v4().simple());
        let rest = batches.map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)));
        let stream = futures::stream::iter(first.map(Ok)).chain(rest);
        let partition = Arc::new(OneShotPartition {
            schema: Arc::clone(&schema),
            stream: Mutex::new(Some(Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&schema),
                stream,
            )))),
        });
        let table = StreamingTable::try_new(Arc::clone(&schema), vec![partition])
            .map_err(status_of_datafusion)?;
        let ctx = planner.context();
        ctx.register_table(source_name.as_str(), Arc::new(table))
            .map_err(status_of_datafusion)?;
        let result = async {
            let source = ctx
                .table(source_name.as_str())
                .await
                .map_err(status_of_datafusion)?
                .into_unoptimized_plan();
            let planned = planner
                .plan_insert_plan(&name, source, overwrite)
                .await
                .map_err(|e| status_of(&e, ""))?;
            self.run_planned(session, planned, "").await
        }
        .await;
        let _ = ctx.deregister_table(source_name.as_str());
        self.state.count(&self.state.metrics.ingests, 1);
        match result? {
            Ran::Count { rows, .. } => Ok(rows),
            Ran::Rows { .. } => Err(Status::internal("ingest produced rows")),
        }
    }

    fn is_warehouse_table(&self, entry: &sluice_planner::TableEntry) -> bool {
        entry
            .spec
            .options
            .literal("path")
            .ok()
            .flatten()
            .is_some_and(|p| p.starts_with(&self.state.defaults.warehouse))
    }
}

/// A stream uploaded by a client, read once by the insert plan.
struct OneShotPartition {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for OneShotPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneShotPartition").finish_non_exhaustive()
    }
}

impl PartitionStream for OneShotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        match self.stream.lock().expect("ingest stream lock").take() {
            Some(s) => s,
            None => Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::once(async {
                    Err(datafusion::error::DataFusionError::Internal(
                        "the ingest stream was read twice".into(),
                    ))
                }),
            )),
        }
    }
}

#[tonic::async_trait]
impl FlightSqlService for SluiceFlightSql {
    type FlightService = SluiceFlightSql;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // Handled by the outer service, which owns authentication.
        Err(Status::internal("handshake reached the inner service"))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let session = session_of(&request)?;
        let run = run_header(request.metadata());
        let ran = self.run_sql_as(&session, &query.query, run).await?;
        Ok(Response::new(self.info_for(
            ran,
            &session,
            request.into_inner(),
        )?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let session = session_of(&request)?;
        let prepared = self.prepared(&cmd.prepared_statement_handle, &session)?;
        let params = prepared.params.lock().expect("params lock").clone();
        let ran = if prepared.is_query {
            let values = match &params {
                Some(b) if b.num_rows() > 1 => {
                    return Err(Status::unimplemented(
                        "a query takes one row of parameters; execute it once per row",
                    ));
                }
                Some(b) if b.num_rows() == 1 => parameter_rows(b)?.remove(0),
                _ => vec![],
            };
            let sql = bind_placeholders(&prepared.sql, &values)?;
            self.run_sql(&session, &sql).await?
        } else {
            let rows = self
                .run_prepared_update(&session, &prepared, params)
                .await?;
            Ran::Count {
                rows,
                summary: serde_json::json!({"kind": "UPDATE", "rows_written": rows}),
            }
        };
        Ok(Response::new(self.info_for(
            ran,
            &session,
            request.into_inner(),
        )?))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query.as_any(), schema, request.into_inner())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query.as_any(), schema, request.into_inner())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query.as_any(), schema, request.into_inner())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query.as_any(), schema, request.into_inner())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query.as_any(), SQL_INFO.schema(), request.into_inner())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query.as_any(), primary_keys_schema(), request.into_inner())
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query.as_any(), foreign_keys_schema(), request.into_inner())
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query.as_any(), foreign_keys_schema(), request.into_inner())
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query.as_any(), foreign_keys_schema(), request.into_inner())
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(query.as_any(), XDBC_INFO.schema(), request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let id = String::from_utf8(ticket.statement_handle.to_vec()).map_err(decode_error)?;
        let pending = self.state.take_result(&id).ok_or_else(|| {
            Status::not_found(
                "this result was already fetched, cancelled or expired; execute the statement again",
            )
        })?;
        match pending {
            PendingResult::Batch { batch, .. } => {
                Ok(Response::new(batch_stream(batch.schema(), vec![batch])))
            }
            PendingResult::Query {
                plan,
                session,
                schema,
                cancel,
                ..
            } => {
                // Batch mode runs the query stage by stage.
                let stream = session
                    .engine
                    .query_stream(plan)
                    .await
                    .map_err(|e| status_of(&e, ""))?;
                self.state
                    .running
                    .lock()
                    .expect("running lock")
                    .insert(id.clone(), cancel.clone());
                let guard = RunningGuard {
                    state: Arc::clone(&self.state),
                    id,
                };
                let state = Arc::clone(&self.state);
                let out_schema = Arc::clone(&schema);
                let batches = stream.map(move |r| {
                    let _keep = &guard;
                    let batch =
                        r.map_err(|e| FlightError::Tonic(Box::new(status_of_datafusion(e))))?;
                    state.count(&state.metrics.rows_sent, batch.num_rows() as u64);
                    to_client_batch(&batch, &out_schema).map_err(FlightError::Arrow)
                });
                let cancelled = cancel.clone();
                let batches = batches
                    .take_until(async move { cancelled.cancelled().await })
                    .chain(
                        futures::stream::once(async move { cancel.is_cancelled() }).filter_map(
                            |c| async move {
                                c.then(|| {
                                    Err(FlightError::Tonic(Box::new(Status::cancelled(
                                        "the query was cancelled",
                                    ))))
                                })
                            },
                        ),
                    );
                let flight = FlightDataEncoderBuilder::new()
                    .with_schema(schema)
                    .build(batches)
                    .map_err(Status::from);
                Ok(Response::new(Box::pin(flight)))
            }
        }
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_get_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_get_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_get_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.metadata_stream(&session_of(&request)?, query.as_any())
            .await
    }

    async fn do_put_statement_update(
        &self,
        ticket: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if ticket.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let session = session_of(&request)?;
        match self.run_sql(&session, &ticket.query).await? {
            Ran::Count { rows, .. } => Ok(rows),
            Ran::Rows { .. } => Err(Status::invalid_argument(
                "this statement returns rows; execute it as a query",
            )),
        }
    }

    async fn do_put_statement_ingest(
        &self,
        ticket: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let session = session_of(&request)?;
        self.ingest(&session, ticket, request).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let session = session_of(&request)?;
        let prepared = self.prepared(&query.prepared_statement_handle, &session)?;
        let params = Self::collect_put(request).await?;
        *prepared.params.lock().expect("params lock") = params;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let session = session_of(&request)?;
        let prepared = self.prepared(&query.prepared_statement_handle, &session)?;
        // Java and Go clients send the parameters in the update stream; the
        // Rust client binds them with a DoPut before.
        let params = match Self::collect_put(request).await? {
            Some(b) if b.num_rows() > 0 => Some(b),
            _ => prepared.params.lock().expect("params lock").clone(),
        };
        self.run_prepared_update(&session, &prepared, params).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let session = session_of(&request)?;
        let (sql, _) = number_placeholders(&query.query)?;
        let analysis = self.analyze(&session, &sql).await?;
        let handle = uuid::Uuid::new_v4().simple().to_string();
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.clone().into(),
            dataset_schema: schema_bytes(&analysis.dataset_schema)?,
            parameter_schema: schema_bytes(&analysis.parameter_schema)?,
        };
        self.state.prepared.lock().expect("prepared lock").insert(
            handle,
            Arc::new(PreparedStatement {
                sql,
                session_id: session.id.clone(),
                is_query: analysis.is_query,
                dataset_schema: analysis.dataset_schema,
                params: Mutex::new(None),
            }),
        );
        Ok(result)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        let id =
            String::from_utf8(query.prepared_statement_handle.to_vec()).map_err(decode_error)?;
        self.state
            .prepared
            .lock()
            .expect("prepared lock")
            .remove(&id);
        Ok(())
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let info = FlightInfo::decode(query.info).map_err(decode_error)?;
        let cancelled = self.cancel_info(&info);
        Ok(ActionCancelQueryResult {
            result: if cancelled { 1 } else { 3 },
        })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let session = session_of(&request)?;
        let action = request.into_inner();
        let body: Bytes = match action.r#type.as_str() {
            "SetSessionOptions" => {
                let req = SetSessionOptionsRequest::decode(action.body).map_err(decode_error)?;
                self.set_session_options(&session, req)
                    .await
                    .encode_to_vec()
                    .into()
            }
            "GetSessionOptions" => {
                GetSessionOptionsRequest::decode(action.body).map_err(decode_error)?;
                self.get_session_options(&session).encode_to_vec().into()
            }
            "CloseSession" => {
                CloseSessionRequest::decode(action.body).map_err(decode_error)?;
                self.state.close_session(&session.id);
                CloseSessionResult {
                    status: CLOSE_STATUS_CLOSED,
                }
                .encode_to_vec()
                .into()
            }
            "CancelFlightInfo" => {
                let req = CancelFlightInfoRequest::decode(action.body).map_err(decode_error)?;
                let cancelled = req.info.as_ref().is_some_and(|i| self.cancel_info(i));
                CancelFlightInfoResult {
                    status: if cancelled { 1 } else { 3 },
                }
                .encode_to_vec()
                .into()
            }
            other => {
                return Err(Status::unimplemented(format!(
                    "action '{other}' is not supported"
                )));
            }
        };
        let result = arrow_flight::Result { body };
        Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
            result,
        )]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        Some(
            [
                ("SetSessionOptions", "Sets session options"),
                ("GetSessionOptions", "Lists session options"),
                ("CloseSession", "Closes the session"),
                ("CancelFlightInfo", "Cancels the statements of a FlightInfo"),
            ]
            .into_iter()
            .map(|(t, d)| {
                Ok(ActionType {
                    r#type: t.into(),
                    description: d.into(),
                })
            })
            .collect(),
        )
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Removes a streaming query from the running set when its stream drops
/// (finished, failed, or the client went away).
struct RunningGuard {
    state: Arc<ServerState>,
    id: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.state
            .running
            .lock()
            .expect("running lock")
            .remove(&self.id);
    }
}
