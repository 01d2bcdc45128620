//! Live channels over Arrow Flight, for streaming jobs whose tasks run in
//! several processes.
//!
//! Both ends of a channel live in its producer's process. A consumer in
//! another process reads the channel with `do_get` on the producer
//! process's [`LiveService`]; the ticket is a [`LiveTicket`] naming the job
//! and the channel. The service streams the channel's batches as Arrow IPC
//! and ends the stream when the producer's end frame arrives. A channel
//! that closes without one (the producer failed or was cancelled) ends the
//! stream with `ABORTED` and the job's recorded cause, so the consumer
//! fails with the producer's error, never a short result.
//!
//! Back-pressure: the service polls the channel only as fast as HTTP/2 flow
//! control lets it send, so a slow consumer fills the channel and its
//! producer waits. A process buffers at most the channel's capacity in
//! batches plus one HTTP/2 stream window per channel.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use datafusion::error::{DataFusionError, Result};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::SHUFFLE_PROTOCOL_VERSION;
use crate::live::{ChannelKey, ChannelStream, LiveRegistry, local_input};
use crate::metrics::{GaugeGuard, ShuffleMetrics, shuffle_metrics};

/// Largest Flight message either side accepts.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Bytes a live stream carries ahead of its reader (HTTP/2 stream window).
const STREAM_WINDOW: u32 = 1 << 20;

/// HTTP/2's largest window, for the connection: only stream windows bound
/// what is in flight.
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// What a `do_get` on a [`LiveService`] reads: one channel of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveTicket {
    /// [`SHUFFLE_PROTOCOL_VERSION`] of the reader.
    pub protocol_version: u32,
    /// The streaming job.
    pub job: String,
    /// Batches a channel of the job holds.
    pub capacity: usize,
    /// The channel.
    pub channel: ChannelKey,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves this process's live channels to consumers in other processes.
#[derive(Debug, Clone)]
pub struct LiveService {
    registry: Arc<LiveRegistry>,
}

impl LiveService {
    /// A service over the process's exchanges.
    pub fn new(registry: Arc<LiveRegistry>) -> Self {
        Self { registry }
    }

    /// The tonic service to serve.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn get(&self, ticket: LiveTicket) -> Result<BoxStream<FlightData>, Status> {
        if ticket.protocol_version != SHUFFLE_PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "live channel protocol version {} is not supported: this process speaks \
                 version {SHUFFLE_PROTOCOL_VERSION}; run the same Sluice release on every \
                 executor and the coordinator",
                ticket.protocol_version
            )));
        }
        let exchange = self.registry.exchange(&ticket.job, ticket.capacity);
        let rows = local_input(exchange, ticket.channel)
            .map_err(|e| Status::failed_precondition(e.strip_backtrace()))?;
        let active = GaugeGuard::new(&shuffle_metrics().live_channels_open);
        let batches = rows
            .map_err(|cause| FlightError::Tonic(Box::new(Status::aborted(cause))))
            .inspect_ok(move |b: &RecordBatch| {
                let _ = &active;
                let m = shuffle_metrics();
                ShuffleMetrics::add(&m.live_batches_served, 1);
                ShuffleMetrics::add(&m.live_rows_served, b.num_rows() as u64);
            });
        let encoded = FlightDataEncoderBuilder::new()
            .with_dictionary_handling(DictionaryHandling::Resend)
            .build(batches)
            .map_err(|e| match e {
                FlightError::Tonic(s) => *s,
                other => Status::internal(other.to_string()),
            });
        Ok(Box::pin(encoded))
    }
}

/// Connections to other processes' live services, one per address: every
/// channel read from one process shares its HTTP/2 connection.
static CONNECTIONS: LazyLock<Mutex<HashMap<String, Channel>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn connection(url: &str) -> Result<Channel> {
    let mut connections = CONNECTIONS.lock().expect("live connections lock");
    if let Some(c) = connections.get(url) {
        return Ok(c.clone());
    }
    // Every channel read from one process shares this connection. Each
    // stream may buffer one stream window; the connection's window is
    // never the limit, or a stream its reader is not reading yet (a join's
    // probe side while it builds) would stall every other stream on the
    // connection, the one the reader waits on included.
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|e| DataFusionError::Plan(format!("bad live service address '{url}': {e}")))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(MAX_WINDOW))
        .connect_lazy();
    connections.insert(url.to_string(), channel.clone());
    Ok(channel)
}

/// The rows of a channel whose producer runs in the process serving `url`.
/// The stream fails with the producer's cause when the channel ends early,
/// and with the connection's error when the process cannot be reached.
pub(crate) fn remote_input(
    url: &str,
    job: &str,
    capacity: usize,
    channel: ChannelKey,
    schema: SchemaRef,
) -> Result<ChannelStream> {
    let ticket = LiveTicket {
        protocol_version: SHUFFLE_PROTOCOL_VERSION,
        job: job.to_string(),
        capacity,
        channel,
    };
    let body = serde_json::to_vec(&ticket)
        .map_err(|e| DataFusionError::Internal(format!("encode a live ticket: {e}")))?;
    let mut client = FlightServiceClient::new(connection(url)?)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let url = url.to_string();
    let described = move |s: &Status| -> String {
        if s.code() == tonic::Code::Aborted || s.code() == tonic::Code::FailedPrecondition {
            s.message().to_string()
        } else {
            format!(
                "reading {channel} from {url} failed: {} ({:?})",
                s.message(),
                s.code()
            )
        }
    };
    let stream = futures::stream::once(async move {
        let response = client
            .do_get(Ticket::new(body))
            .await
            .map_err(|s| described(&s))?;
        let flight = FlightRecordBatchStream::new_from_flight_data(
            response.into_inner().map_err(FlightError::from),
        );
        let described = described.clone();
        Ok::<_, String>(flight.map(move |r| {
            r.map_err(|e| match e {
                FlightError::Tonic(s) => described(&s),
                other => other.to_string(),
            })
            .and_then(|b| {
                // IPC drops nothing, but a mismatch must fail here, not in
                // an operator above.
                if b.schema().fields() == schema.fields() {
                    Ok(b)
                } else {
                    RecordBatch::try_new(Arc::clone(&schema), b.columns().to_vec())
                        .map_err(|e| format!("{channel}: {e}"))
                }
            })
        }))
    })
    .try_flatten();
    Ok(stream.boxed())
}

/// Opens and drops the channel `channel` of a producer in the process
/// serving `url`, so that the producer stops sending to it: for a reader
/// partition that never ran.
pub(crate) fn let_go(url: &str, job: &str, capacity: usize, channel: ChannelKey) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Ok(body) = serde_json::to_vec(&LiveTicket {
        protocol_version: SHUFFLE_PROTOCOL_VERSION,
        job: job.to_string(),
        capacity,
        channel,
    }) else {
        return;
    };
    let Ok(connection) = connection(url) else {
        return;
    };
    handle.spawn(async move {
        let mut client = FlightServiceClient::new(connection);
        // The answer's headers come once the producer's process took the
        // channel; dropping the answer then closes it.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            client.do_get(Ticket::new(body)),
        )
        .await;
    });
}

#[tonic::async_trait]
impl FlightService for LiveService {
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
        Err(Status::unimplemented("the live service needs no handshake"))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "the live service is read with do_get tickets",
        ))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "the live service is read with do_get tickets",
        ))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "the live service is read with do_get tickets",
        ))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(
            "live channels carry their own schema",
        ))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket: LiveTicket = serde_json::from_slice(&request.get_ref().ticket)
            .map_err(|e| Status::invalid_argument(format!("cannot decode the live ticket: {e}")))?;
        Ok(Response::new(self.get(ticket)?))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(
            "live channels are read with do_get; producers write them in their own process",
        ))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("live channels are read with do_get"))
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("the live service has no actions"))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Frame;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
    }

    fn batch(from: i64, n: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from(
                (from..from + n).collect::<Vec<_>>(),
            ))],
        )
        .unwrap()
    }

    async fn serve(registry: Arc<LiveRegistry>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(LiveService::new(registry).into_server())
                .serve_with_incoming(incoming),
        );
        format!("http://{addr}")
    }

    fn key(task: u32) -> ChannelKey {
        ChannelKey {
            stage: 3,
            task,
            partition: 1,
            copy: 0,
        }
    }

    #[tokio::test]
    async fn rows_cross_processes_and_the_slow_reader_holds_the_producer_back() {
        let registry = LiveRegistry::new();
        let url = serve(Arc::clone(&registry)).await;
        let exchange = registry.exchange("job-a", 2);
        let mut senders = exchange.senders(3, 0, 2, 1).unwrap();
        let tx = senders.remove(1).remove(0);
        let producer = tokio::spawn(async move {
            // 50 batches of 800 KB: far more than the channel and one
            // stream window hold.
            for i in 0..50 {
                tx.send(Frame::Batch(batch(i * 100_000, 100_000)))
                    .await
                    .unwrap();
            }
            tx.send(Frame::End).await.unwrap();
        });
        let mut input = remote_input(&url, "job-a", 2, key(0), schema()).unwrap();
        let first = input.next().await.unwrap().unwrap();
        assert_eq!(first.num_rows(), 100_000);
        // The reader stops: the producer stalls with the channel and one
        // stream window full, far from done.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !producer.is_finished(),
            "the producer ran ahead of its reader"
        );
        let mut rows = first.num_rows();
        while let Some(b) = input.next().await {
            rows += b.unwrap().num_rows();
        }
        assert_eq!(rows, 5_000_000);
        producer.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_producer_fails_the_remote_reader_with_its_cause() {
        let registry = LiveRegistry::new();
        let url = serve(Arc::clone(&registry)).await;
        let exchange = registry.exchange("job-b", 2);
        let tx = exchange.senders(3, 1, 2, 1).unwrap().remove(1).remove(0);
        tx.send(Frame::Batch(batch(0, 10))).await.unwrap();
        exchange.fail("stage 3 task 1 failed: injected");
        drop(tx);
        let mut input = remote_input(&url, "job-b", 2, key(1), schema()).unwrap();
        assert_eq!(input.next().await.unwrap().unwrap().num_rows(), 10);
        let err = input.next().await.unwrap().unwrap_err();
        assert_eq!(err, "stage 3 task 1 failed: injected");
        assert!(input.next().await.is_none());
    }

    #[tokio::test]
    async fn an_unreachable_producer_is_an_error_naming_it() {
        let mut input = remote_input("http://127.0.0.1:9", "job-c", 2, key(0), schema()).unwrap();
        let err = input.next().await.unwrap().unwrap_err();
        assert!(err.contains("http://127.0.0.1:9"), "{err}");
    }
}
