//! A client of the Flight shuffle service (see [`crate::service`]).

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightData, FlightDescriptor, Ticket};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::transport::Channel;

use crate::SHUFFLE_PROTOCOL_VERSION;
use crate::error::{Result, ShuffleError};
use crate::format::{AttemptIndex, BlockRange, ShuffleCompression};
use crate::service::{
    ACTION_DELETE_JOB, ACTION_LIST_JOB, ACTION_VERSION, BlockHeader, GetTicket, JobAction,
    PutCommand, StoredObject, block_message,
};
use crate::store::AttemptId;

/// Largest Flight message the client sends or accepts.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Talks to one shuffle worker.
#[derive(Debug, Clone)]
pub struct ShuffleClient {
    url: String,
    inner: FlightServiceClient<Channel>,
}

/// One block read back: its header and its bytes (a complete IPC stream).
pub type Block = (BlockHeader, Bytes);

fn status(url: &str, what: &str, e: tonic::Status) -> ShuffleError {
    ShuffleError::Config(format!(
        "shuffle worker {url}: {what} failed: {} ({:?})",
        e.message(),
        e.code()
    ))
}

impl ShuffleClient {
    /// Connects to the worker at `url` (`http://host:port`).
    pub async fn connect(url: &str) -> Result<Self> {
        let channel = Channel::from_shared(url.to_string())
            .map_err(|e| ShuffleError::Config(format!("bad shuffle worker URL '{url}': {e}")))?
            .connect()
            .await
            .map_err(|e| {
                ShuffleError::Config(format!(
                    "cannot reach shuffle worker {url}: {e}; check that it runs and that the \
                     address is right"
                ))
            })?;
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self {
            url: url.to_string(),
            inner,
        })
    }

    /// Sends an attempt's blocks (`(partition, rows, block)`, each block a
    /// complete compressed IPC stream) and returns the index the worker
    /// stored. Blocks go out as the worker takes them.
    pub async fn put_attempt(
        &self,
        attempt: &AttemptId,
        partitions: usize,
        compression: ShuffleCompression,
        blocks: impl Stream<Item = (usize, u64, Bytes)> + Send + 'static,
    ) -> Result<AttemptIndex> {
        let cmd = PutCommand {
            protocol_version: SHUFFLE_PROTOCOL_VERSION,
            attempt: attempt.clone(),
            partitions,
            compression,
        };
        let first = FlightData {
            flight_descriptor: Some(FlightDescriptor::new_cmd(
                serde_json::to_vec(&cmd).expect("a put command serialises"),
            )),
            ..Default::default()
        };
        let messages = futures::stream::once(async { first })
            .chain(blocks.map(|(partition, rows, data)| block_message(partition, rows, data)));
        let mut inner = self.inner.clone();
        let mut results = inner
            .do_put(messages)
            .await
            .map_err(|e| status(&self.url, "do_put", e))?
            .into_inner();
        let result = results
            .message()
            .await
            .map_err(|e| status(&self.url, "do_put", e))?
            .ok_or_else(|| {
                ShuffleError::Corrupt(format!("shuffle worker {} sent no put result", self.url))
            })?;
        serde_json::from_slice(&result.app_metadata)
            .map_err(|e| ShuffleError::Corrupt(format!("put result of {}: {e}", self.url)))
    }

    /// Streams the blocks of one output partition of a committed attempt,
    /// or of one block range of it.
    pub async fn get(
        &self,
        attempt: &AttemptId,
        partition: usize,
        range: Option<BlockRange>,
    ) -> Result<impl Stream<Item = Result<Block>> + Send + 'static> {
        let ticket = GetTicket {
            protocol_version: SHUFFLE_PROTOCOL_VERSION,
            attempt: attempt.clone(),
            partition,
            range,
        };
        let mut inner = self.inner.clone();
        let url = self.url.clone();
        let stream = inner
            .do_get(Ticket::new(
                serde_json::to_vec(&ticket).expect("a ticket serialises"),
            ))
            .await
            .map_err(|e| status(&self.url, "do_get", e))?
            .into_inner();
        Ok(stream
            .map_err(move |e| status(&url, "do_get", e))
            .and_then(|msg| async move {
                let header: BlockHeader = serde_json::from_slice(&msg.app_metadata)
                    .map_err(|e| ShuffleError::Corrupt(format!("block header: {e}")))?;
                Ok((header, msg.data_body))
            }))
    }

    /// The worker's `(protocol, format)` versions.
    pub async fn versions(&self) -> Result<(u32, u32)> {
        let v: serde_json::Value = self.action(ACTION_VERSION, Vec::new()).await?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as u32;
        Ok((get("protocol_version"), get("format_version")))
    }

    /// Objects stored for `job`.
    pub async fn list_job(&self, job: &str) -> Result<Vec<StoredObject>> {
        self.job_action(ACTION_LIST_JOB, job).await
    }

    /// Deletes `job`'s data; returns the number of objects removed.
    pub async fn delete_job(&self, job: &str) -> Result<u64> {
        let v: serde_json::Value = self.job_action(ACTION_DELETE_JOB, job).await?;
        Ok(v.get("deleted").and_then(|d| d.as_u64()).unwrap_or(0))
    }

    async fn job_action<T: serde::de::DeserializeOwned>(&self, kind: &str, job: &str) -> Result<T> {
        self.job_action_with_version(kind, job, SHUFFLE_PROTOCOL_VERSION)
            .await
    }

    /// A job action claiming protocol `version` (tests use another version
    /// to see a refusal).
    pub async fn job_action_with_version<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        job: &str,
        version: u32,
    ) -> Result<T> {
        let body = serde_json::to_vec(&JobAction {
            protocol_version: version,
            job: job.to_string(),
        })
        .expect("a job action serialises");
        self.action(kind, body).await
    }

    async fn action<T: serde::de::DeserializeOwned>(&self, kind: &str, body: Vec<u8>) -> Result<T> {
        let mut inner = self.inner.clone();
        let mut results = inner
            .do_action(Action::new(kind, body))
            .await
            .map_err(|e| status(&self.url, kind, e))?
            .into_inner();
        let result = results
            .message()
            .await
            .map_err(|e| status(&self.url, kind, e))?
            .ok_or_else(|| ShuffleError::Corrupt(format!("{kind} returned nothing")))?;
        serde_json::from_slice(&result.body)
            .map_err(|e| ShuffleError::Corrupt(format!("{kind} result: {e}")))
    }
}
