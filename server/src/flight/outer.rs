//! The service clients talk to: authentication, sessions and the calls
//! arrow-flight's blanket Flight SQL implementation leaves out (GetSchema,
//! PollFlightInfo), delegating the rest to [`SluiceFlightSql`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, BasicAuth, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use super::auth::Authenticator;
use super::service::{SluiceFlightSql, session_of};
use super::state::{SESSION_COOKIE, ServerState, SessionHandle};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Flight service Sluice serves.
#[derive(Debug, Clone)]
pub(crate) struct SluiceFlightService {
    inner: Arc<SluiceFlightSql>,
    state: Arc<ServerState>,
    auth: Option<Arc<Authenticator>>,
}

impl SluiceFlightService {
    pub(crate) fn new(state: Arc<ServerState>, auth: Option<Arc<Authenticator>>) -> Self {
        Self {
            inner: Arc::new(SluiceFlightSql {
                state: Arc::clone(&state),
            }),
            state,
            auth,
        }
    }

    /// Authenticates the call and attaches its session. Returns the
    /// `set-cookie` value when the session is new to the client.
    fn admit<T>(&self, request: &mut Request<T>) -> Result<Option<String>, Status> {
        self.state.count(&self.state.metrics.requests, 1);
        if self.state.shutting_down.load(Ordering::Relaxed) {
            return Err(Status::unavailable(
                "the server is shutting down and takes no new work; retry after it restarts",
            ));
        }
        let user = match &self.auth {
            Some(auth) => Some(auth.authorize(request.metadata()).inspect_err(|_| {
                self.state.count(&self.state.metrics.errors_auth, 1);
            })?),
            None => None,
        };
        let (id, set_cookie) = match cookie_session_id(request.metadata()) {
            Some(id) => (id, None),
            None => {
                let id = match bearer(request.metadata()) {
                    // Clients without cookies keep one session per token.
                    Some(token) => Sha256::digest(token.as_bytes())
                        .iter()
                        .take(16)
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                    None => uuid::Uuid::new_v4().simple().to_string(),
                };
                let cookie = format!("{SESSION_COOKIE}={id}");
                (id, Some(cookie))
            }
        };
        let session = self.state.session(&id, user.as_deref())?;
        request.extensions_mut().insert(SessionHandle(session));
        Ok(set_cookie)
    }

    fn finish<T>(
        &self,
        result: Result<Response<T>, Status>,
        cookie: Option<String>,
    ) -> Result<Response<T>, Status> {
        match result {
            Ok(mut response) => {
                if let Some(c) = cookie
                    && let Ok(v) = c.parse()
                {
                    response.metadata_mut().insert("set-cookie", v);
                }
                Ok(response)
            }
            Err(status) => {
                let m = &self.state.metrics;
                let counter = match status.code() {
                    tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::AlreadyExists => &m.errors_user,
                    tonic::Code::Unimplemented => &m.errors_unimplemented,
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => &m.errors_auth,
                    _ => &m.errors_internal,
                };
                self.state.count(counter, 1);
                Err(status)
            }
        }
    }
}

fn cookie_session_id(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

#[tonic::async_trait]
impl FlightService for SluiceFlightService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.state.count(&self.state.metrics.requests, 1);
        let Some(auth) = &self.auth else {
            let out = futures::stream::iter(vec![Ok(HandshakeResponse::default())]);
            return Ok(Response::new(Box::pin(out)));
        };
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let login = match header {
            Some(h) if h.starts_with("Basic ") => auth.login(&h),
            _ => {
                // Credentials in the handshake payload (BasicAuth message).
                let mut stream = request.into_inner();
                match stream.next().await {
                    Some(Ok(req)) => match BasicAuth::decode(req.payload) {
                        Ok(b) if !b.username.is_empty() => {
                            auth.login_with(&b.username, &b.password)
                        }
                        _ => Err(Status::unauthenticated(
                            "send Basic credentials in the authorization header",
                        )),
                    },
                    _ => Err(Status::unauthenticated(
                        "send Basic credentials in the authorization header",
                    )),
                }
            }
        };
        let (user, token) = login.inspect_err(|_| {
            self.state.count(&self.state.metrics.errors_auth, 1);
        })?;
        tracing::debug!(%user, "handshake");
        let out = futures::stream::iter(vec![Ok(HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        })]);
        let mut response: Response<Self::HandshakeStream> = Response::new(Box::pin(out));
        if let Ok(v) = format!("Bearer {token}").parse() {
            response.metadata_mut().insert("authorization", v);
        }
        Ok(response)
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "ListFlights is not supported; use GetTables",
        ))
    }

    async fn get_flight_info(
        &self,
        mut request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let cookie = self.admit(&mut request)?;
        let r = FlightService::get_flight_info(self.inner.as_ref(), request).await;
        self.finish(r, cookie)
    }

    async fn poll_flight_info(
        &self,
        mut request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let cookie = self.admit(&mut request)?;
        let descriptor = request.get_ref().clone();
        let r = FlightService::get_flight_info(self.inner.as_ref(), request)
            .await
            .map(|info| {
                // Statements complete within GetFlightInfo: the poll is done.
                Response::new(PollInfo {
                    info: Some(info.into_inner()),
                    flight_descriptor: None,
                    progress: Some(1.0),
                    expiration_time: None,
                })
            });
        let _ = descriptor;
        self.finish(r, cookie)
    }

    async fn get_schema(
        &self,
        mut request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let cookie = self.admit(&mut request)?;
        let session = session_of(&request)?;
        let r = async {
            let schema = self.inner.schema_for(&session, request.get_ref()).await?;
            let result: SchemaResult = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
                .try_into()
                .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
            Ok(Response::new(result))
        }
        .await;
        self.finish(r, cookie)
    }

    async fn do_get(
        &self,
        mut request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let cookie = self.admit(&mut request)?;
        let r = FlightService::do_get(self.inner.as_ref(), request).await;
        self.finish(r, cookie)
    }

    async fn do_put(
        &self,
        mut request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let cookie = self.admit(&mut request)?;
        let r = FlightService::do_put(self.inner.as_ref(), request).await;
        self.finish(r, cookie)
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported"))
    }

    async fn do_action(
        &self,
        mut request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let cookie = self.admit(&mut request)?;
        let r = FlightService::do_action(self.inner.as_ref(), request).await;
        self.finish(r, cookie)
    }

    async fn list_actions(
        &self,
        mut request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let cookie = self.admit(&mut request)?;
        let r = FlightService::list_actions(self.inner.as_ref(), request).await;
        self.finish(r, cookie)
    }
}
