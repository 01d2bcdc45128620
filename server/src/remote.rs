//! `sluice run --server URL`: statements run on a Sluice server over
//! Flight SQL; variables are substituted here, on the client.

use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::TryStreamExt;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::cli::OutputFormat;
use crate::output::print_stream;

/// A connection to a server, holding one server session.
pub(crate) struct RemoteSession {
    client: Mutex<FlightSqlServiceClient<Channel>>,
    url: String,
}

/// What a statement did on the server.
#[derive(Debug, Default)]
pub(crate) struct RemoteOutcome {
    pub kind: String,
    pub target: Option<String>,
    pub rows_read: Option<u64>,
    pub rows_written: Option<u64>,
    pub bytes: Option<u64>,
    pub rows_returned: Option<u64>,
    pub note: String,
}

/// A failure: the server's message, or a connection problem.
#[derive(Debug)]
pub(crate) struct RemoteError {
    pub message: String,
    pub usage: bool,
}

fn from_flight(url: &str, e: FlightError) -> RemoteError {
    match e {
        FlightError::Tonic(s) => from_status(url, &s),
        other => RemoteError {
            message: other.to_string(),
            usage: false,
        },
    }
}

fn from_status(url: &str, s: &tonic::Status) -> RemoteError {
    let message = match s.code() {
        tonic::Code::Unavailable if s.message().contains("transport") || s.message().is_empty() => {
            format!(
                "cannot reach the server at {url}: {}; check --server and that `sluice server` runs",
                s.message()
            )
        }
        tonic::Code::Unauthenticated => {
            format!("{} (pass --user and set SLUICE_PASSWORD)", s.message())
        }
        _ => s.message().to_string(),
    };
    RemoteError {
        message,
        usage: s.code() == tonic::Code::Unauthenticated,
    }
}

impl RemoteSession {
    /// Connects, and logs in when a user is given.
    pub(crate) async fn connect(
        url: &str,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self, RemoteError> {
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let unreachable = |e: &dyn std::fmt::Display| RemoteError {
            message: format!(
                "cannot reach the server at {url}: {e}; check --server and that `sluice server` runs"
            ),
            usage: false,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| RemoteError {
                message: format!("--server {url} is not a valid URL: {e}"),
                usage: true,
            })?
            .connect_timeout(std::time::Duration::from_secs(10));
        if url.starts_with("https://") {
            // The server's certificate authority: SLUICE_TLS_CA (PEM file).
            let path = std::env::var("SLUICE_TLS_CA").map_err(|_| RemoteError {
                message: format!(
                    "{url} uses TLS: set SLUICE_TLS_CA to the PEM file of the server's certificate authority"
                ),
                usage: true,
            })?;
            let pem = std::fs::read(&path).map_err(|e| RemoteError {
                message: format!("SLUICE_TLS_CA {path}: {e}"),
                usage: true,
            })?;
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                )
                .map_err(|e| unreachable(&e))?;
        }
        let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
        let mut client = FlightSqlServiceClient::new(channel);
        // One server session for the whole script: SET and temporary
        // tables carry over between statements.
        client.set_header(
            "cookie",
            format!("arrow_flight_session_id={}", uuid::Uuid::new_v4().simple()),
        );
        if let Some(user) = user {
            client
                .handshake(user, password.unwrap_or(""))
                .await
                .map_err(|e| from_flight(&url, e))?;
        }
        Ok(Self {
            client: Mutex::new(client),
            url,
        })
    }

    /// Plans a statement on the server without running it.
    pub(crate) async fn prepare(&self, sql: &str) -> Result<(), RemoteError> {
        let mut client = self.client.lock().await;
        let prepared = client
            .prepare(sql.to_string(), None)
            .await
            .map_err(|e| from_flight(&self.url, e))?;
        prepared
            .close()
            .await
            .map_err(|e| from_flight(&self.url, e))
    }

    /// Runs one statement, printing any rows it returns. `run` names the
    /// script run, so the server derives the same run ids as an embedded
    /// run would.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        format: OutputFormat,
        run: &serde_json::Value,
    ) -> Result<RemoteOutcome, RemoteError> {
        use base64::Engine;
        let mut client = self.client.lock().await;
        client.set_header(
            "x-sluice-run",
            base64::engine::general_purpose::STANDARD.encode(run.to_string()),
        );
        let info = client
            .execute(sql.to_string(), None)
            .await
            .map_err(|e| from_flight(&self.url, e))?;
        let summary: Option<serde_json::Value> = if info.app_metadata.is_empty() {
            None
        } else {
            serde_json::from_slice(&info.app_metadata).ok()
        };
        let schema = Arc::new(info.clone().try_decode_schema().map_err(|e| RemoteError {
            message: format!("the server sent a bad schema: {e}"),
            usage: false,
        })?);
        let mut outcome = RemoteOutcome::default();
        if let Some(s) = summary {
            // A statement that ran at GetFlightInfo: fetch its count and
            // report what it did.
            for endpoint in &info.endpoint {
                if let Some(ticket) = &endpoint.ticket {
                    let stream = client
                        .do_get(ticket.clone())
                        .await
                        .map_err(|e| from_flight(&self.url, e))?;
                    let _: Vec<_> = stream
                        .try_collect()
                        .await
                        .map_err(|e| from_flight(&self.url, e))?;
                }
            }
            let str_of = |k: &str| s.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let u64_of = |k: &str| s.get(k).and_then(|v| v.as_u64());
            outcome.kind = str_of("kind").unwrap_or_else(|| "STATEMENT".into());
            outcome.target = str_of("target");
            outcome.rows_read = u64_of("rows_read");
            outcome.rows_written = u64_of("rows_written");
            outcome.bytes = u64_of("bytes");
            outcome.note = match (str_of("skipped"), u64_of("files")) {
                (Some(_), _) => "skipped: already committed".into(),
                (None, Some(f)) => format!("{f} files"),
                _ => String::new(),
            };
            return Ok(outcome);
        }
        let mut total = 0u64;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else {
                continue;
            };
            let stream: FlightRecordBatchStream = client
                .do_get(ticket.clone())
                .await
                .map_err(|e| from_flight(&self.url, e))?;
            let url = self.url.clone();
            let batches = stream.map_err(move |e| {
                let e = from_flight(&url, e);
                DataFusionError::Execution(e.message)
            });
            let adapter = Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&schema), batches));
            total += print_stream(adapter, format)
                .await
                .map_err(|e| RemoteError {
                    message: e.strip_backtrace(),
                    usage: false,
                })?;
        }
        outcome.kind = "QUERY".into();
        outcome.rows_returned = Some(total);
        outcome.note = format!("{total} rows returned");
        Ok(outcome)
    }
}
