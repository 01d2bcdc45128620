//! The Flight shuffle service: a worker that persists task attempts' output
//! to the shuffle store and serves it back.
//!
//! - `do_put`: the first message's descriptor carries a [`PutCommand`]
//!   (protocol version, attempt, partition count, compression). Every further
//!   message is one block: `app_metadata` holds its [`BlockHeader`] and
//!   `data_body` the block, a complete compressed Arrow IPC stream that the
//!   worker appends to the attempt's data object as received, never decoding
//!   it. When the stream ends the worker writes the attempt's index and
//!   answers with it. The worker's [`MemoryBudget`] bounds the bytes it holds:
//!   each received block holds its size in the budget until it is written
//!   (and an upload to an object store holds its part buffers for its whole
//!   life). While the budget is full the worker reads no further message, so
//!   HTTP/2 flow control slows the writers.
//! - `do_get`: the ticket is a [`GetTicket`] naming an attempt and one output
//!   partition (or one byte range); the blocks stream back the same way.
//! - Actions `shuffle.version`, `shuffle.list_job` and `shuffle.delete_job`.
//!
//! Every command, ticket and action body carries
//! [`SHUFFLE_PROTOCOL_VERSION`]; a peer with another version is refused with
//! `FAILED_PRECONDITION` and a message naming both versions.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

use crate::budget::MemoryBudget;
use crate::data::DataOut;
use crate::format::{AttemptIndex, BlockRange, ShuffleCompression};
use crate::metrics::{GaugeGuard, ShuffleMetrics, shuffle_metrics};
use crate::store::{AttemptId, ShuffleStore};
use crate::{SHUFFLE_FORMAT_VERSION, SHUFFLE_PROTOCOL_VERSION};

/// Starts a `do_put`: which attempt the blocks that follow belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutCommand {
    /// [`SHUFFLE_PROTOCOL_VERSION`] of the writer.
    pub protocol_version: u32,
    /// The attempt being written.
    pub attempt: AttemptId,
    /// Number of output partitions.
    pub partitions: usize,
    /// Compression of the blocks (recorded in the index).
    pub compression: ShuffleCompression,
}

/// Describes one block of a `do_put` or `do_get` stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// Output partition of the block.
    pub partition: usize,
    /// Rows in the block.
    pub rows: u64,
}

/// What a `do_get` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetTicket {
    /// [`SHUFFLE_PROTOCOL_VERSION`] of the reader.
    pub protocol_version: u32,
    /// The committed attempt to read.
    pub attempt: AttemptId,
    /// The output partition to read.
    pub partition: usize,
    /// Only this block range of the data object, when set.
    pub range: Option<BlockRange>,
}

/// Body of the job actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAction {
    /// [`SHUFFLE_PROTOCOL_VERSION`] of the caller.
    pub protocol_version: u32,
    /// The job.
    pub job: String,
}

/// One stored object of a job, as `shuffle.list_job` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// Path in the shuffle store.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// Action names.
pub const ACTION_VERSION: &str = "shuffle.version";
/// Lists a job's objects.
pub const ACTION_LIST_JOB: &str = "shuffle.list_job";
/// Deletes a job's data.
pub const ACTION_DELETE_JOB: &str = "shuffle.delete_job";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The shuffle worker's Flight service.
#[derive(Debug, Clone)]
pub struct ShuffleService {
    store: ShuffleStore,
    budget: MemoryBudget,
    part_size: usize,
}

impl ShuffleService {
    /// A worker persisting to `store`, holding at most `budget` bytes of
    /// blocks at once.
    pub fn new(store: ShuffleStore, budget: MemoryBudget) -> Self {
        // A multipart part is buffered before upload: keep several parts
        // within the budget.
        let part_size = (budget.capacity() / 8).clamp(5 * 1024 * 1024, 16 * 1024 * 1024);
        Self {
            store,
            budget,
            part_size,
        }
    }

    /// The tonic service to serve, accepting blocks up to 256 MiB.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024)
    }

    /// The worker's store.
    pub fn store(&self) -> &ShuffleStore {
        &self.store
    }

    /// The worker's buffer budget.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    async fn put(&self, mut stream: Streaming<FlightData>) -> Result<AttemptIndex, Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty do_put stream"))?;
        let cmd: PutCommand = decode_json(
            "do_put command",
            &first
                .flight_descriptor
                .as_ref()
                .ok_or_else(|| {
                    Status::invalid_argument("the first do_put message carries no descriptor")
                })?
                .cmd,
        )?;
        check_version(cmd.protocol_version)?;
        if cmd.partitions == 0 {
            return Err(Status::invalid_argument(
                "an attempt has at least 1 partition",
            ));
        }
        let _active = GaugeGuard::new(&shuffle_metrics().active_writers);
        let mut out = DataOut::open(&self.store, &cmd.attempt, self.part_size)
            .await
            .map_err(internal)?;
        // A multipart upload buffers its current part and up to two parts in
        // flight.
        let parts = match &out {
            DataOut::Remote(_) if 3 * self.part_size <= self.budget.capacity() / 2 => {
                Some(self.budget.acquire(3 * self.part_size).await)
            }
            _ => None,
        };
        // A block never asks for more than the budget minus what this stream
        // already holds, so a stream cannot wait on itself.
        let block_limit = self.budget.capacity() - parts.as_ref().map_or(0, |p| p.bytes());
        let mut index = AttemptIndex {
            format_version: SHUFFLE_FORMAT_VERSION,
            job: cmd.attempt.job.clone(),
            stage: cmd.attempt.stage,
            task: cmd.attempt.task,
            attempt: cmd.attempt.attempt,
            compression: cmd.compression,
            data: ShuffleStore::data_path(&cmd.attempt).to_string(),
            partitions: vec![Vec::new(); cmd.partitions],
            rows: 0,
            bytes: 0,
        };
        let result = self
            .receive(&mut stream, &mut out, &mut index, block_limit)
            .await;
        match result {
            Ok(()) => {
                let start = std::time::Instant::now();
                out.finish().await.map_err(internal)?;
                self.store.put_index(&index).await.map_err(internal)?;
                let m = shuffle_metrics();
                m.store_request(start);
                ShuffleMetrics::add(&m.objects_written, 2);
                Ok(index)
            }
            Err(e) => {
                out.abort(&cmd.attempt).await;
                if let Err(d) = self.store.delete_attempt(&cmd.attempt).await {
                    tracing::warn!(attempt = %cmd.attempt, error = %d, "could not delete a failed upload");
                }
                Err(e)
            }
        }
    }

    async fn receive(
        &self,
        stream: &mut Streaming<FlightData>,
        out: &mut DataOut,
        index: &mut AttemptIndex,
        block_limit: usize,
    ) -> Result<(), Status> {
        let m = shuffle_metrics();
        while let Some(msg) = stream.message().await? {
            let header: BlockHeader = decode_json("block header", &msg.app_metadata)?;
            let block = msg.data_body;
            let Some(ranges) = index.partitions.get_mut(header.partition) else {
                return Err(Status::invalid_argument(format!(
                    "block for partition {} of an attempt with {} partitions",
                    header.partition,
                    index.partitions.len()
                )));
            };
            // Hold the block's bytes in the budget until it is written; while
            // the budget is full, this stream is not read.
            let permit = self.budget.acquire(block.len().min(block_limit)).await;
            ShuffleMetrics::add(&m.buffered_bytes, permit.bytes() as u64);
            let len = block.len() as u64;
            ranges.push(BlockRange {
                offset: index.bytes,
                len,
                rows: header.rows,
            });
            index.bytes += len;
            index.rows += header.rows;
            let written = out.put(block).await;
            ShuffleMetrics::sub(&m.buffered_bytes, permit.bytes() as u64);
            drop(permit);
            written.map_err(internal)?;
            ShuffleMetrics::add(&m.batches_in, 1);
            ShuffleMetrics::add(&m.blocks_written, 1);
            ShuffleMetrics::add(&m.bytes_written, len);
        }
        Ok(())
    }

    async fn get(&self, ticket: GetTicket) -> Result<BoxStream<FlightData>, Status> {
        check_version(ticket.protocol_version)?;
        let ranges: Vec<BlockRange> = match ticket.range {
            Some(r) => vec![r],
            None => {
                let index = self
                    .store
                    .read_index(&ticket.attempt)
                    .await
                    .map_err(|e| Status::not_found(e.to_string()))?;
                index
                    .partitions
                    .get(ticket.partition)
                    .cloned()
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{} has no partition {}",
                            ticket.attempt, ticket.partition
                        ))
                    })?
            }
        };
        let store = Arc::clone(self.store.object_store());
        let path = ShuffleStore::data_path(&ticket.attempt);
        let partition = ticket.partition;
        let active = GaugeGuard::new(&shuffle_metrics().active_readers);
        let stream = futures::stream::iter(ranges)
            .map(move |r| {
                let store = Arc::clone(&store);
                let path = path.clone();
                async move {
                    let start = std::time::Instant::now();
                    let data = store
                        .get_range(&path, r.offset..r.offset + r.len)
                        .await
                        .map_err(|e| Status::internal(format!("read {path}: {e}")))?;
                    let m = shuffle_metrics();
                    m.store_request(start);
                    ShuffleMetrics::add(&m.range_reads, 1);
                    ShuffleMetrics::add(&m.bytes_read, data.len() as u64);
                    Ok::<_, Status>(block_message(partition, r.rows, data))
                }
            })
            // One block read ahead of the client.
            .buffered(2)
            .inspect_ok(move |_| {
                let _ = &active;
                ShuffleMetrics::add(&shuffle_metrics().batches_out, 1);
            });
        Ok(Box::pin(stream))
    }

    async fn list_job(&self, job: &str) -> Result<Vec<StoredObject>, Status> {
        let prefix = object_store::path::Path::from(format!("jobs/{job}"));
        self.store
            .object_store()
            .list(Some(&prefix))
            .map_ok(|meta| StoredObject {
                path: meta.location.to_string(),
                size: meta.size,
            })
            .try_collect()
            .await
            .map_err(|e| Status::internal(format!("list job {job}: {e}")))
    }
}

/// A block as a Flight message.
pub(crate) fn block_message(partition: usize, rows: u64, data: Bytes) -> FlightData {
    FlightData {
        app_metadata: serde_json::to_vec(&BlockHeader { partition, rows })
            .expect("a block header serialises")
            .into(),
        data_body: data,
        ..Default::default()
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn decode_json<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("cannot decode the {what}: {e}")))
}

fn check_version(version: u32) -> Result<(), Status> {
    if version == SHUFFLE_PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "shuffle protocol version {version} is not supported: this worker speaks version \
             {SHUFFLE_PROTOCOL_VERSION}; run the same Sluice release on executors and shuffle \
             workers"
        )))
    }
}

#[tonic::async_trait]
impl FlightService for ShuffleService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "the shuffle service needs no handshake",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "the shuffle service lists jobs with the shuffle.list_job action",
        ))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "the shuffle service is read with do_get tickets",
        ))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "the shuffle service is read with do_get tickets",
        ))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(
            "shuffle blocks carry their own schema",
        ))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket: GetTicket = decode_json("do_get ticket", &request.get_ref().ticket)?;
        Ok(Response::new(self.get(ticket).await?))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let index = self.put(request.into_inner()).await?;
        let result = PutResult {
            app_metadata: serde_json::to_vec(&index).map_err(internal)?.into(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(result)
        }))))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "the shuffle service takes do_put and do_get",
        ))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        let body: Vec<u8> = match action.r#type.as_str() {
            ACTION_VERSION => serde_json::to_vec(&serde_json::json!({
                "protocol_version": SHUFFLE_PROTOCOL_VERSION,
                "format_version": SHUFFLE_FORMAT_VERSION,
            }))
            .map_err(internal)?,
            ACTION_LIST_JOB => {
                let a: JobAction = decode_json("list_job action", &action.body)?;
                check_version(a.protocol_version)?;
                serde_json::to_vec(&self.list_job(&a.job).await?).map_err(internal)?
            }
            ACTION_DELETE_JOB => {
                let a: JobAction = decode_json("delete_job action", &action.body)?;
                check_version(a.protocol_version)?;
                let n = self.store.delete_job(&a.job).await.map_err(internal)?;
                serde_json::to_vec(&serde_json::json!({ "deleted": n })).map_err(internal)?
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action '{other}'; the shuffle service knows {ACTION_VERSION}, \
                     {ACTION_LIST_JOB} and {ACTION_DELETE_JOB}"
                )));
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(result)
        }))))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            (
                ACTION_VERSION,
                "Protocol and format versions of this worker",
            ),
            (ACTION_LIST_JOB, "Objects stored for a job"),
            (ACTION_DELETE_JOB, "Deletes a job's shuffle data"),
        ]
        .map(|(t, d)| {
            Ok(ActionType {
                r#type: t.to_string(),
                description: d.to_string(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::client::ShuffleClient;
    use crate::format::{decode_block, encode_block};

    async fn start(service: ShuffleService) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn block(partition: usize, from: i64, rows: i64) -> (usize, u64, Bytes) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(from..from + rows))],
        )
        .unwrap();
        let bytes = encode_block(&schema, &[batch], ShuffleCompression::Lz4).unwrap();
        (partition, rows as u64, bytes)
    }

    fn attempt(job: &str, task: u32) -> AttemptId {
        AttemptId {
            job: job.into(),
            stage: 0,
            task,
            attempt: 0,
        }
    }

    fn values(bytes: Bytes) -> Vec<i64> {
        decode_block(bytes)
            .unwrap()
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    /// Blocks put through Flight are stored byte for byte as sent, indexed
    /// per partition, and read back per partition and per range.
    #[tokio::test]
    async fn put_then_get_partitions_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::local(dir.path()).unwrap();
        let url = start(ShuffleService::new(
            store.clone(),
            MemoryBudget::new(1 << 20),
        ))
        .await;
        let client = ShuffleClient::connect(&url).await.unwrap();
        assert_eq!(
            client.versions().await.unwrap(),
            (SHUFFLE_PROTOCOL_VERSION, SHUFFLE_FORMAT_VERSION)
        );

        let blocks = vec![block(1, 0, 10), block(0, 100, 5), block(1, 10, 10)];
        let sent: Vec<u8> = blocks.iter().flat_map(|(_, _, b)| b.to_vec()).collect();
        let id = attempt("j1", 0);
        let index = client
            .put_attempt(
                &id,
                2,
                ShuffleCompression::Lz4,
                futures::stream::iter(blocks),
            )
            .await
            .unwrap();
        assert_eq!(index.rows, 25);
        assert_eq!(index.partitions[0].len(), 1);
        assert_eq!(index.partitions[1].len(), 2);
        assert_eq!(store.read_index(&id).await.unwrap(), index);
        let stored = std::fs::read(dir.path().join(&index.data)).unwrap();
        assert_eq!(stored, sent, "the worker stores the blocks as received");

        let p1: Vec<i64> = client
            .get(&id, 1, None)
            .await
            .unwrap()
            .map(|b| values(b.unwrap().1))
            .concat()
            .await;
        assert_eq!(p1, (0..20).collect::<Vec<_>>());
        let r = index.partitions[0][0];
        let p0: Vec<i64> = client
            .get(&id, 0, Some(r))
            .await
            .unwrap()
            .map(|b| values(b.unwrap().1))
            .concat()
            .await;
        assert_eq!(p0, (100..105).collect::<Vec<_>>());

        let listed = client.list_job("j1").await.unwrap();
        assert!(listed.iter().any(|o| o.path == index.data), "{listed:?}");
        assert!(client.delete_job("j1").await.unwrap() >= 1);
        assert!(client.list_job("j1").await.unwrap().is_empty());
    }

    /// A peer speaking another protocol version is refused, saying both
    /// versions; a bad partition number fails the put and leaves nothing.
    #[tokio::test]
    async fn mismatched_versions_and_bad_blocks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::local(dir.path()).unwrap();
        let url = start(ShuffleService::new(
            store.clone(),
            MemoryBudget::new(1 << 20),
        ))
        .await;
        let client = ShuffleClient::connect(&url).await.unwrap();
        let err = client
            .job_action_with_version::<serde_json::Value>(ACTION_LIST_JOB, "j", 99)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("protocol version 99")
                && err.contains(&format!("speaks version {SHUFFLE_PROTOCOL_VERSION}")),
            "{err}"
        );

        let id = attempt("j2", 0);
        let err = client
            .put_attempt(
                &id,
                2,
                ShuffleCompression::Lz4,
                futures::stream::iter(vec![block(0, 0, 3), block(7, 0, 3)]),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("partition 7"), "{err}");
        assert!(store.read_index(&id).await.is_err());
        assert!(client.list_job("j2").await.unwrap().is_empty());
    }

    /// While the worker's budget is held, a put cannot finish; once the
    /// budget frees up, it does.
    #[tokio::test]
    async fn full_budget_holds_writers_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::local(dir.path()).unwrap();
        let budget = MemoryBudget::new(64 * 1024);
        let url = start(ShuffleService::new(store, budget.clone())).await;
        let client = ShuffleClient::connect(&url).await.unwrap();
        let held = budget.acquire(64 * 1024).await;
        let put = tokio::spawn(async move {
            client
                .put_attempt(
                    &attempt("j3", 0),
                    1,
                    ShuffleCompression::Lz4,
                    futures::stream::iter(vec![block(0, 0, 1000)]),
                )
                .await
        });
        for _ in 0..50 {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(
            !put.is_finished(),
            "a put must wait while the budget is full"
        );
        drop(held);
        let index = put.await.unwrap().unwrap();
        assert_eq!(index.rows, 1000);
        assert_eq!(budget.available(), 64 * 1024);
    }
}
