//! The HTTP endpoint every role serves: `/healthz` and `/metrics`
//! (Prometheus text format).

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// Whether the process takes work, and why not.
pub(crate) type Health = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// Renders the process's metrics.
pub(crate) type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `/healthz` (200, or 503 with the reason) and `/metrics` until
/// the process ends.
pub(crate) async fn serve(listener: tokio::net::TcpListener, health: Health, metrics: Metrics) {
    let app = Router::new()
        .route(
            "/healthz",
            get(move || {
                let health = Arc::clone(&health);
                async move {
                    match health() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move { metrics() }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("HTTP endpoint failed: {e}");
    }
}

/// Binds `addr` (`HOST:0` picks a free port), naming the flag in errors.
pub(crate) async fn bind(
    flag: &str,
    addr: &str,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{flag} {addr}: cannot listen: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("{flag} {addr}: {e}"))?;
    Ok((listener, bound))
}

/// Accepted connections of a gRPC listener with `TCP_NODELAY` set, as
/// tonic's own `serve` sets it: small HTTP/2 frames (heartbeats, reports,
/// Flight SQL replies) leave at once instead of waiting for the peer's
/// delayed ACK under Nagle's algorithm.
pub(crate) fn grpc_incoming(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Writes `text` to `path` atomically (a temporary file renamed over it),
/// so a reader polling for the file never sees half of it.
pub(crate) fn write_listen_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("--listen-file {}: {e}", path.display()))
}

/// Appends one sample with its `HELP` and `TYPE` lines (Prometheus text
/// format; a metrics registry crate would add little over these counters).
pub(crate) fn write_metric(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}
