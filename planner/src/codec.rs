//! Stage plans on the wire: `datafusion-proto` plus Sluice's extension codec.
//!
//! A coordinator sends each task its plan instance as bytes; the executor
//! decodes it against its own registries (object stores, connectors, shuffle
//! store) and runs it. DataFusion's operators and expressions use
//! `datafusion-proto`; [`StageCodec`] covers Sluice's own operators:
//! [`ShuffleWriterExec`], [`ShuffleReaderExec`] and [`SinkExec`].
//!
//! - Every encoded plan and every extension node carries
//!   [`STAGE_PLAN_VERSION`]; a peer with another version is refused with an
//!   error that says so.
//! - Expressions go through the deduplicating converter, so an expression
//!   shared by two operators (a join's dynamic filter and the scan it was
//!   pushed into) stays one shared expression after decoding.
//! - Uncorrelated scalar subqueries have run before their consumers are
//!   encoded; their values are written as literals (a `ScalarSubqueryExec`
//!   cannot be split across stages).
//! - Sinks travel as their declaration ([`SinkDescriptor`]): secrets stay
//!   `secret('NAME')` and are resolved by the executor that connects.

use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::expressions::Literal;
use datafusion::physical_plan::{ColumnarValue, ExecutionPlan};
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_proto_converter, physical_plan_to_bytes_with_proto_converter,
};
use datafusion_proto::physical_plan::from_proto::{
    parse_physical_sort_exprs, parse_protobuf_partitioning,
};
use datafusion_proto::physical_plan::to_proto::{
    serialize_partitioning, serialize_physical_expr_with_converter, serialize_physical_sort_exprs,
};
use datafusion_proto::physical_plan::{
    DeduplicatingProtoConverter, PhysicalExtensionCodec, PhysicalPlanDecodeContext,
    PhysicalPlanNodeExt, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use prost::Message;
use serde::{Deserialize, Serialize};
use sluice_connectors::file::{CsvScanDescriptor, CsvScanExec};
use sluice_connectors::mysql::{MySqlScanDescriptor, MySqlScanExec};
use sluice_connectors::postgres::{PostgresScanDescriptor, PostgresScanExec};
use sluice_connectors::{ConnectorFactory, SinkDescriptor, SinkExec};
use sluice_shuffle::{
    AttemptId, AttemptIndex, LiveReaderExec, LiveRegistry, LiveWriterExec, ReadSpec, ShuffleOutput,
    ShuffleReaderExec, ShuffleStore, ShuffleWriterExec, WriterOptions,
};

/// Version of the stage plan encoding: the envelope, the extension nodes and
/// their headers. Coordinator and executors must agree on it.
pub const STAGE_PLAN_VERSION: u32 = 1;

/// What an executor decodes stage plans against.
#[derive(Debug, Clone)]
pub struct ExecutorRegistries {
    /// The shuffle store the executor reads and writes.
    pub shuffle: ShuffleStore,
    /// Opens sinks (and their object stores) from declarations.
    pub connectors: Arc<ConnectorFactory>,
    /// The process's live exchanges, which streaming tasks write to and
    /// its live service serves.
    pub live: Arc<LiveRegistry>,
}

/// Encodes a task's plan instance.
pub fn encode_stage_plan(plan: &Arc<dyn ExecutionPlan>) -> Result<Bytes> {
    let codec = StageCodec {
        registries: None,
        unsendable: Default::default(),
    };
    let body =
        physical_plan_to_bytes_with_proto_converter(Arc::clone(plan), &codec, &StageConverter)
            .map_err(|e| {
                // DataFusion wraps the codec's refusal with a dump of the whole
                // plan; name the operator instead. Encoding the same plan again
                // fails the same way, which `NotImplemented` tells retries.
                match codec.unsendable.lock().expect("codec lock").take() {
                    Some(operator) => DataFusionError::NotImplemented(format!(
                        "operator {operator} cannot be sent to an executor yet; run this \
                 statement with SET 'execution.runtime-mode' = 'streaming', which \
                 runs it in one process"
                    )),
                    None => e,
                }
            })?;
    let envelope = StagePlanEnvelope {
        version: STAGE_PLAN_VERSION,
        plan: body.to_vec(),
    };
    Ok(envelope.encode_to_vec().into())
}

/// Decodes a task's plan instance in `ctx`, against the executor's registries.
pub fn decode_stage_plan(
    bytes: &[u8],
    ctx: &TaskContext,
    registries: &ExecutorRegistries,
) -> Result<Arc<dyn ExecutionPlan>> {
    let envelope = StagePlanEnvelope::decode(bytes)
        .map_err(|e| DataFusionError::Plan(format!("cannot decode a stage plan: {e}")))?;
    check_version(envelope.version, "stage plan")?;
    let codec = StageCodec {
        registries: Some(registries.clone()),
        unsendable: Default::default(),
    };
    let plan = physical_plan_from_bytes_with_proto_converter(
        &envelope.plan,
        ctx,
        &codec,
        &StageConverter,
    )?;
    // CSV scans travel as DataFusion's own; their errors name the file here too.
    sluice_connectors::file::name_csv_errors(plan)
}

/// A fresh task context holding only what an executor has: the runtime
/// (object stores, memory pool) and the session configuration, with
/// DataFusion's built-in functions. Nothing of the planning session's
/// catalog or state is reachable from it.
pub fn executor_task_context(ctx: &TaskContext) -> Arc<TaskContext> {
    let state = SessionStateBuilder::new()
        .with_config(ctx.session_config().clone())
        .with_runtime_env(ctx.runtime_env())
        .with_default_features()
        .build();
    state.task_ctx()
}

fn check_version(version: u32, what: &str) -> Result<()> {
    if version == STAGE_PLAN_VERSION {
        Ok(())
    } else {
        Err(DataFusionError::Plan(format!(
            "{what} has encoding version {version}, but this process reads version \
             {STAGE_PLAN_VERSION}; run the same Sluice release on the coordinator and \
             every executor"
        )))
    }
}

#[derive(Clone, PartialEq, Message)]
struct StagePlanEnvelope {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    plan: Vec<u8>,
}

/// One of Sluice's operators: a JSON header plus the parts that need
/// `datafusion-proto` (schema, expressions, orderings, partitioning).
#[derive(Clone, PartialEq, Message)]
struct ExtensionNode {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(string, tag = "2")]
    kind: String,
    #[prost(bytes = "vec", tag = "3")]
    header: Vec<u8>,
    #[prost(message, optional, tag = "4")]
    schema: Option<protobuf::Schema>,
    #[prost(message, repeated, tag = "5")]
    exprs: Vec<protobuf::PhysicalExprNode>,
    #[prost(message, repeated, tag = "6")]
    ordering: Vec<protobuf::PhysicalSortExprNode>,
    #[prost(message, optional, tag = "7")]
    partitioning: Option<protobuf::Partitioning>,
}

const KIND_WRITER: &str = "shuffle_writer";
const KIND_READER: &str = "shuffle_reader";
const KIND_SINK: &str = "sink";
const KIND_POSTGRES_SCAN: &str = "postgres_scan";
const KIND_MYSQL_SCAN: &str = "mysql_scan";
const KIND_CSV_SCAN: &str = "csv_scan";
const KIND_LIVE_WRITER: &str = "live_writer";
const KIND_LIVE_READER: &str = "live_reader";

/// The job and channel parameters of a live exchange node.
#[derive(Serialize, Deserialize)]
struct LiveHeader {
    job: String,
    capacity: usize,
}

#[derive(Serialize, Deserialize)]
struct LiveWriterHeader {
    live: LiveHeader,
    stage: u32,
    task: usize,
    copies: usize,
    single: bool,
}

#[derive(Serialize, Deserialize)]
struct LiveReaderHeader {
    live: LiveHeader,
    reader: ReaderHeader,
    copy: usize,
    /// Per upstream map task: `None` in the reading process, else the URL
    /// of the live service of the process running it.
    sources: Vec<Option<String>>,
}

#[derive(Serialize, Deserialize)]
struct WriterHeader {
    store: String,
    options: WriterOptions,
    attempt: Option<AttemptId>,
    single: bool,
}

#[derive(Serialize, Deserialize)]
struct ReaderHeader {
    stage: u32,
    store: String,
    spec: ReadSpec,
    hashed: bool,
    inputs: Option<Vec<AttemptIndex>>,
    /// Columns constant in the rows read (e.g. after `WHERE a = 1`), which
    /// the operators above were planned with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    constants: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct SinkHeader {
    sink: SinkDescriptor,
    job: String,
    task_base: u64,
    attempt: u32,
}

/// A session over a task's configuration and runtime (its object stores),
/// for connectors that rebuild a table's settings from its declaration.
fn session_state(ctx: &TaskContext) -> datafusion::execution::SessionState {
    SessionStateBuilder::new()
        .with_config(ctx.session_config().clone())
        .with_runtime_env(ctx.runtime_env())
        .build()
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| DataFusionError::Internal(format!("encode header: {e}")))
}

fn from_json<'a, T: Deserialize<'a>>(kind: &str, bytes: &'a [u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| DataFusionError::Plan(format!("cannot decode a {kind} node: {e}")))
}

/// The extension codec for Sluice's operators. Encoding needs no
/// registries; decoding needs the executor's.
#[derive(Debug)]
struct StageCodec {
    registries: Option<ExecutorRegistries>,
    /// The first operator encoding met that has no wire form.
    unsendable: std::sync::Mutex<Option<String>>,
}

impl StageCodec {
    fn registries(&self) -> Result<&ExecutorRegistries> {
        self.registries.as_ref().ok_or_else(|| {
            DataFusionError::Internal("stage plans are decoded with executor registries".into())
        })
    }

    fn shuffle_store(&self, url: &str) -> Result<ShuffleStore> {
        let store = &self.registries()?.shuffle;
        if store.url() != url {
            return Err(DataFusionError::Plan(format!(
                "the stage plan uses shuffle store {url}, but this executor is configured \
                 with {}; point coordinator and executors at the same shuffle store",
                store.url()
            )));
        }
        Ok(store.clone())
    }
}

impl PhysicalExtensionCodec for StageCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node = ExtensionNode::decode(buf)
            .map_err(|e| DataFusionError::Plan(format!("cannot decode a Sluice operator: {e}")))?;
        check_version(node.version, &format!("{} operator", node.kind))?;
        let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
        let schema = |node: &ExtensionNode| -> Result<Schema> {
            let proto = node.schema.as_ref().ok_or_else(|| {
                DataFusionError::Plan(format!("{} node without a schema", node.kind))
            })?;
            Ok(Schema::try_from(proto)?)
        };
        let input = |kind: &str| -> Result<Arc<dyn ExecutionPlan>> {
            match inputs {
                [one] => Ok(Arc::clone(one)),
                _ => Err(DataFusionError::Plan(format!(
                    "{kind} node with {} inputs, expected 1",
                    inputs.len()
                ))),
            }
        };
        match node.kind.as_str() {
            KIND_WRITER => {
                let h: WriterHeader = from_json(KIND_WRITER, &node.header)?;
                let input = input(KIND_WRITER)?;
                let output = writer_output(&node, h.single, &input, &decode_ctx, converter)?;
                let template = ShuffleWriterExec::new(
                    Arc::clone(&input),
                    output,
                    self.shuffle_store(&h.store)?,
                    h.options,
                );
                Ok(match h.attempt {
                    Some(a) => Arc::new(template.with_attempt(input, a)),
                    None => Arc::new(template),
                })
            }
            KIND_READER => {
                let h: ReaderHeader = from_json(KIND_READER, &node.header)?;
                let store = self.shuffle_store(&h.store)?;
                let template = reader_template(&node, &h, store, &decode_ctx, converter)?;
                Ok(match h.inputs {
                    Some(inputs) => {
                        let inputs = Arc::new(inputs.into_iter().map(Arc::new).collect());
                        Arc::new(template.instance(h.spec, inputs))
                    }
                    None => Arc::new(template),
                })
            }
            KIND_LIVE_READER => {
                let h: LiveReaderHeader = from_json(KIND_LIVE_READER, &node.header)?;
                let template =
                    reader_template(&node, &h.reader, live_store(), &decode_ctx, converter)?;
                let exchange = self
                    .registries()?
                    .live
                    .exchange(&h.live.job, h.live.capacity);
                Ok(Arc::new(LiveReaderExec::try_new(
                    &template,
                    h.reader.spec.clone(),
                    h.copy,
                    h.sources,
                    exchange,
                )?))
            }
            KIND_LIVE_WRITER => {
                let h: LiveWriterHeader = from_json(KIND_LIVE_WRITER, &node.header)?;
                let input = input(KIND_LIVE_WRITER)?;
                let output = writer_output(&node, h.single, &input, &decode_ctx, converter)?;
                let exchange = self
                    .registries()?
                    .live
                    .exchange(&h.live.job, h.live.capacity);
                Ok(Arc::new(LiveWriterExec::try_new(
                    input, output, h.stage, h.task, h.copies, exchange,
                )?))
            }
            KIND_SINK => {
                let h: SinkHeader = from_json(KIND_SINK, &node.header)?;
                let schema = Arc::new(schema(&node)?);
                let state = session_state(ctx);
                let sink = self
                    .registries()?
                    .connectors
                    .sink_from_descriptor(&h.sink, schema, &state)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                Ok(Arc::new(
                    SinkExec::new(input(KIND_SINK)?, sink, h.job)
                        .with_attempt(h.attempt)
                        .with_task_base(h.task_base),
                ))
            }
            KIND_POSTGRES_SCAN => {
                let desc: PostgresScanDescriptor = from_json(KIND_POSTGRES_SCAN, &node.header)?;
                let schema = Arc::new(schema(&node)?);
                let secrets = self.registries()?.connectors.stores().secrets();
                let scan = PostgresScanExec::from_descriptor(desc, schema, secrets)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                Ok(Arc::new(scan))
            }
            KIND_MYSQL_SCAN => {
                let desc: MySqlScanDescriptor = from_json(KIND_MYSQL_SCAN, &node.header)?;
                let schema = Arc::new(schema(&node)?);
                let secrets = self.registries()?.connectors.stores().secrets();
                let scan = MySqlScanExec::from_descriptor(desc, schema, secrets)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                Ok(Arc::new(scan))
            }
            KIND_CSV_SCAN => {
                let desc: CsvScanDescriptor = from_json(KIND_CSV_SCAN, &node.header)?;
                let state = session_state(ctx);
                let scan = CsvScanExec::from_descriptor(
                    desc,
                    &schema(&node)?,
                    self.registries()?.connectors.stores(),
                    &state,
                )
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
                Ok(Arc::new(scan))
            }
            other => Err(DataFusionError::Plan(format!(
                "unknown Sluice operator '{other}' in a stage plan"
            ))),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let mut out = ExtensionNode {
            version: STAGE_PLAN_VERSION,
            ..Default::default()
        };
        if let Some(w) = node.downcast_ref::<ShuffleWriterExec>() {
            out.kind = KIND_WRITER.into();
            let single = matches!(w.output(), ShuffleOutput::Single);
            if let ShuffleOutput::Partitioned(p) = w.output() {
                out.partitioning = Some(serialize_partitioning(p, self, converter)?);
            }
            out.header = json(&WriterHeader {
                store: w.store().url().to_string(),
                options: *w.options(),
                attempt: w.attempt().cloned(),
                single,
            })?;
        } else if let Some(r) = node.downcast_ref::<ShuffleReaderExec>() {
            out.kind = KIND_READER.into();
            let header = encode_reader(r, &mut out, self, converter)?;
            out.header = json(&header)?;
        } else if let Some(l) = node.downcast_ref::<LiveReaderExec>() {
            out.kind = KIND_LIVE_READER.into();
            let reader = encode_reader(l.template(), &mut out, self, converter)?;
            out.header = json(&LiveReaderHeader {
                live: LiveHeader {
                    job: l.exchange().job().to_string(),
                    capacity: l.exchange().capacity(),
                },
                reader,
                copy: l.copy(),
                sources: l.sources().to_vec(),
            })?;
        } else if let Some(w) = node.downcast_ref::<LiveWriterExec>() {
            out.kind = KIND_LIVE_WRITER.into();
            if let ShuffleOutput::Partitioned(p) = w.output() {
                out.partitioning = Some(serialize_partitioning(p, self, converter)?);
            }
            out.header = json(&LiveWriterHeader {
                live: LiveHeader {
                    job: w.exchange().job().to_string(),
                    capacity: w.exchange().capacity(),
                },
                stage: w.stage(),
                task: w.task(),
                copies: w.copies(),
                single: matches!(w.output(), ShuffleOutput::Single),
            })?;
        } else if let Some(s) = node.downcast_ref::<SinkExec>() {
            out.kind = KIND_SINK.into();
            out.schema = Some(s.sink().schema().as_ref().try_into()?);
            let sink = s
                .sink()
                .descriptor()
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            out.header = json(&SinkHeader {
                sink,
                job: s.job_id().to_string(),
                task_base: s.task_base(),
                attempt: s.attempt(),
            })?;
        } else if let Some(p) = node.downcast_ref::<PostgresScanExec>() {
            out.kind = KIND_POSTGRES_SCAN.into();
            out.schema = Some(p.schema().as_ref().try_into()?);
            out.header = json(&p.descriptor())?;
        } else if let Some(p) = node.downcast_ref::<MySqlScanExec>() {
            out.kind = KIND_MYSQL_SCAN.into();
            out.schema = Some(p.schema().as_ref().try_into()?);
            out.header = json(&p.descriptor())?;
        } else if let Some(c) = node.downcast_ref::<CsvScanExec>() {
            out.kind = KIND_CSV_SCAN.into();
            out.schema = Some((&c.full_schema()).try_into()?);
            out.header = json(&c.descriptor())?;
        } else {
            self.unsendable
                .lock()
                .expect("codec lock")
                .get_or_insert_with(|| node.name().to_string());
            return Err(DataFusionError::NotImplemented(format!(
                "operator {} cannot be sent to an executor",
                node.name()
            )));
        }
        out.encode(buf)
            .map_err(|e| DataFusionError::Internal(format!("encode {}: {e}", out.kind)))
    }
}

/// How a writer node splits its rows.
fn writer_output(
    node: &ExtensionNode,
    single: bool,
    input: &Arc<dyn ExecutionPlan>,
    decode_ctx: &PhysicalPlanDecodeContext<'_>,
    converter: &dyn PhysicalProtoConverterExtension,
) -> Result<ShuffleOutput> {
    if single {
        return Ok(ShuffleOutput::Single);
    }
    let p = parse_protobuf_partitioning(
        node.partitioning.as_ref(),
        decode_ctx,
        &input.schema(),
        converter,
    )?
    .ok_or_else(|| DataFusionError::Plan(format!("{} node without partitioning", node.kind)))?;
    Ok(ShuffleOutput::Partitioned(p))
}

/// The store live nodes carry: they never read or write one.
fn live_store() -> ShuffleStore {
    ShuffleStore::new(
        Arc::new(object_store::memory::InMemory::new()),
        "memory://live",
    )
}

/// The staged reader a reader node describes (its instance inputs aside).
fn reader_template(
    node: &ExtensionNode,
    h: &ReaderHeader,
    store: ShuffleStore,
    decode_ctx: &PhysicalPlanDecodeContext<'_>,
    converter: &dyn PhysicalProtoConverterExtension,
) -> Result<ShuffleReaderExec> {
    let proto = node
        .schema
        .as_ref()
        .ok_or_else(|| DataFusionError::Plan(format!("{} node without a schema", node.kind)))?;
    let schema = Arc::new(Schema::try_from(proto)?);
    let hash = if h.hashed {
        Some(
            node.exprs
                .iter()
                .map(|e| converter.proto_to_physical_expr(e, &schema, decode_ctx))
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    let ordering = parse_physical_sort_exprs(&node.ordering, decode_ctx, &schema, converter)?;
    let mut eq = if ordering.is_empty() {
        EquivalenceProperties::new(Arc::clone(&schema))
    } else {
        EquivalenceProperties::new_with_orderings(Arc::clone(&schema), [ordering])
    };
    let mut constants = vec![];
    for i in &h.constants {
        let field = schema.fields().get(*i).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "shuffle reader constant column {i} is outside its schema"
            ))
        })?;
        constants.push(datafusion::physical_expr::ConstExpr::new(
            Arc::new(datafusion::physical_expr::expressions::Column::new(
                field.name(),
                *i,
            )),
            datafusion::physical_expr::AcrossPartitions::Heterogeneous,
        ));
    }
    eq.add_constants(constants)?;
    Ok(ShuffleReaderExec::new(
        h.stage,
        h.spec.clone(),
        store,
        hash,
        eq,
    ))
}

/// Fills `out` with a reader's schema, hash expressions and ordering, and
/// returns its header.
fn encode_reader(
    r: &ShuffleReaderExec,
    out: &mut ExtensionNode,
    codec: &StageCodec,
    converter: &dyn PhysicalProtoConverterExtension,
) -> Result<ReaderHeader> {
    out.schema = Some(r.schema_ref().as_ref().try_into()?);
    if let Some(hash) = r.hash() {
        out.exprs = hash
            .iter()
            .map(|e| converter.physical_expr_to_proto(e, codec))
            .collect::<Result<_>>()?;
    }
    if let Some(ordering) = r.equivalence().output_ordering() {
        out.ordering = serialize_physical_sort_exprs(ordering.iter().cloned(), codec, converter)?;
    }
    Ok(ReaderHeader {
        stage: r.stage(),
        store: r.store().url().to_string(),
        spec: r.spec().clone(),
        hashed: r.hash().is_some(),
        inputs: r
            .inputs()
            .map(|i| i.iter().map(|a| a.as_ref().clone()).collect()),
        constants: r
            .equivalence()
            .constants()
            .iter()
            .filter_map(|c| {
                c.expr
                    .downcast_ref::<datafusion::physical_expr::expressions::Column>()
                    .map(|col| col.index())
            })
            .collect(),
    })
}

/// DataFusion's deduplicating converter, plus literal substitution of
/// scalar subquery values.
struct StageConverter;

impl PhysicalProtoConverterExtension for StageConverter {
    fn proto_to_execution_plan(
        &self,
        proto: &protobuf::PhysicalPlanNode,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DeduplicatingProtoConverter {}.proto_to_execution_plan(proto, ctx)
    }

    fn execution_plan_to_proto(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<protobuf::PhysicalPlanNode> {
        protobuf::PhysicalPlanNode::try_from_physical_plan_with_converter(
            Arc::clone(plan),
            codec,
            self,
        )
    }

    fn proto_to_physical_expr(
        &self,
        proto: &protobuf::PhysicalExprNode,
        input_schema: &Schema,
        ctx: &PhysicalPlanDecodeContext<'_>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        DeduplicatingProtoConverter {}.proto_to_physical_expr(proto, input_schema, ctx)
    }

    fn physical_expr_to_proto(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<protobuf::PhysicalExprNode> {
        use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
        if expr.downcast_ref::<ScalarSubqueryExpr>().is_some() {
            // The expression ignores its input and returns the subquery's
            // value, which is set once the subquery's job has run.
            let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
            let value = match expr.evaluate(&empty) {
                Ok(ColumnarValue::Scalar(v)) => v,
                Ok(_) => {
                    return Err(DataFusionError::Internal(
                        "a scalar subquery evaluated to an array".into(),
                    ));
                }
                Err(e) => {
                    return Err(DataFusionError::Plan(format!(
                        "a scalar subquery must run before the stages that use it are sent \
                         to executors: {}",
                        e.strip_backtrace()
                    )));
                }
            };
            let literal: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(value));
            return serialize_physical_expr_with_converter(&literal, codec, self);
        }
        serialize_physical_expr_with_converter(expr, codec, self)
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field};
    use datafusion::physical_expr::Partitioning;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::expressions::col;
    use datafusion::physical_plan::{ExecutionPlanProperties, displayable};
    use datafusion::prelude::SessionContext;
    use sluice_connectors::{SecretResolver, StoreRegistry};

    use super::*;

    fn registries(dir: &std::path::Path) -> ExecutorRegistries {
        let runtime = Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default());
        ExecutorRegistries {
            shuffle: ShuffleStore::local(dir).unwrap(),
            connectors: Arc::new(ConnectorFactory::new(Arc::new(StoreRegistry::new(
                runtime,
                SecretResolver::default(),
            )))),
            live: LiveRegistry::new(),
        }
    }

    fn text(plan: &Arc<dyn ExecutionPlan>) -> String {
        displayable(plan.as_ref()).indent(true).to_string()
    }

    /// A writer instance over a scan, and a reader instance with inputs,
    /// decode to the same operators in a fresh context.
    #[test]
    fn shuffle_operators_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registries(dir.path());
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let scan: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::clone(&schema)));
        let hash = vec![col("k", &schema).unwrap()];
        let writer = ShuffleWriterExec::new(
            Arc::clone(&scan),
            ShuffleOutput::Partitioned(Partitioning::Hash(hash.clone(), 4)),
            reg.shuffle.clone(),
            WriterOptions::default(),
        );
        let attempt = AttemptId {
            job: "j".into(),
            stage: 1,
            task: 0,
            attempt: 2,
        };
        let writer: Arc<dyn ExecutionPlan> = Arc::new(writer.with_attempt(scan, attempt));
        let reader = ShuffleReaderExec::new(
            0,
            ReadSpec::Partitions(vec![1, 3]),
            reg.shuffle.clone(),
            Some(hash),
            EquivalenceProperties::new(Arc::clone(&schema)),
        );
        let index = AttemptIndex {
            format_version: sluice_shuffle::SHUFFLE_FORMAT_VERSION,
            job: "j".into(),
            stage: 0,
            task: 0,
            attempt: 0,
            compression: Default::default(),
            data: "jobs/j/s0/t0/a0.arrows".into(),
            partitions: vec![vec![]; 4],
            rows: 0,
            bytes: 0,
        };
        let reader: Arc<dyn ExecutionPlan> = Arc::new(reader.instance(
            ReadSpec::Partitions(vec![1, 3]),
            Arc::new(vec![Arc::new(index)]),
        ));
        let ctx = SessionContext::new().task_ctx();
        for plan in [writer, reader] {
            let bytes = encode_stage_plan(&plan).unwrap();
            let decoded = decode_stage_plan(&bytes, &executor_task_context(&ctx), &reg).unwrap();
            assert_eq!(text(&plan), text(&decoded));
            assert_eq!(
                plan.output_partitioning().partition_count(),
                decoded.output_partitioning().partition_count()
            );
        }
    }

    /// A plan from another encoding version, or for another shuffle store,
    /// is refused with an error that says what to fix.
    #[test]
    fn live_operators_round_trip_into_the_executors_exchange() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registries(dir.path());
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let scan: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::clone(&schema)));
        let hash = vec![col("k", &schema).unwrap()];
        let exchange = sluice_shuffle::LiveExchange::new("job-live", 3);
        let writer: Arc<dyn ExecutionPlan> = Arc::new(
            LiveWriterExec::try_new(
                scan,
                ShuffleOutput::Partitioned(Partitioning::Hash(hash.clone(), 4)),
                1,
                0,
                2,
                Arc::clone(&exchange),
            )
            .unwrap(),
        );
        let template = ShuffleReaderExec::new(
            1,
            ReadSpec::Partitions(vec![0, 1, 2, 3]),
            live_store(),
            Some(hash),
            EquivalenceProperties::new(Arc::clone(&schema)),
        );
        let sources = vec![None, Some("http://127.0.0.1:1".to_string())];
        let reader: Arc<dyn ExecutionPlan> = Arc::new(
            LiveReaderExec::try_new(
                &template,
                ReadSpec::Partitions(vec![1, 3]),
                1,
                sources.clone(),
                exchange,
            )
            .unwrap(),
        );
        let ctx = SessionContext::new().task_ctx();
        for plan in [writer, reader] {
            let bytes = encode_stage_plan(&plan).unwrap();
            let decoded = decode_stage_plan(&bytes, &executor_task_context(&ctx), &reg).unwrap();
            assert_eq!(text(&plan), text(&decoded));
            assert_eq!(
                format!("{:?}", plan.output_partitioning()),
                format!("{:?}", decoded.output_partitioning()),
            );
            if let Some(r) = decoded.downcast_ref::<LiveReaderExec>() {
                assert_eq!(r.sources(), sources.as_slice());
                assert_eq!(r.copy(), 1);
            }
        }
        // Both decoded nodes share the executor's exchange of the job.
        assert_eq!(reg.live.jobs(), 1);
        assert_eq!(reg.live.exchange("job-live", 3).capacity(), 3);
    }

    #[test]
    fn version_and_store_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let scan: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(schema));
        let ctx = SessionContext::new().task_ctx();

        let plan = encode_stage_plan(&scan).unwrap();
        let mut envelope = StagePlanEnvelope::decode(plan.as_ref()).unwrap();
        envelope.version = STAGE_PLAN_VERSION + 1;
        let err = decode_stage_plan(&envelope.encode_to_vec(), &ctx, &registries(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("encoding version {}", STAGE_PLAN_VERSION + 1))
                && err.contains("same Sluice release"),
            "{err}"
        );

        let writer: Arc<dyn ExecutionPlan> = Arc::new(ShuffleWriterExec::new(
            scan,
            ShuffleOutput::Single,
            registries(dir.path()).shuffle,
            WriterOptions::default(),
        ));
        let bytes = encode_stage_plan(&writer).unwrap();
        let err = decode_stage_plan(&bytes, &ctx, &registries(other.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("same shuffle store"), "{err}");
    }
}
