//! `sluice server`: the Flight SQL server, one process embedding the same
//! engine as `sluice run`, with a persistent catalog shared by sessions.

mod auth;
mod convert;
mod metadata;
mod outer;
mod service;
mod session_options;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::path::Path as StorePath;
use sluice_connectors::{SecretResolver, StoreRegistry, TableOptions};
use sluice_planner::PersistentCatalog;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use self::auth::Authenticator;
use self::outer::SluiceFlightService;
use self::state::{ServerState, SessionDefaults};

/// Authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// No authentication (loopback only by default).
    None,
    /// Basic credentials from `--users-file`, exchanged for Bearer tokens.
    Basic,
}

/// `sluice server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address of the Flight SQL endpoint; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50051", env = "SLUICE_BIND")]
    pub bind: String,

    /// Address of the HTTP endpoint serving /healthz and /metrics.
    #[arg(long, env = "SLUICE_HTTP_BIND")]
    pub http_bind: Option<String>,

    /// Write the bound Flight address (and `http=ADDRESS` on a second line
    /// when --http-bind is set) to this file once listening.
    #[arg(long, value_name = "PATH")]
    pub listen_file: Option<PathBuf>,

    /// TLS certificate chain (PEM); requires --tls-key.
    #[arg(long, requires = "tls_key", env = "SLUICE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert", env = "SLUICE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Authentication; defaults to basic when --bind is not a loopback
    /// address, none otherwise.
    #[arg(long, value_enum, env = "SLUICE_AUTH")]
    pub auth: Option<AuthMode>,

    /// Users for --auth basic: `user:sha256:<hex>` or `user:plain:<password>`
    /// lines.
    #[arg(long, value_name = "PATH", env = "SLUICE_USERS_FILE")]
    pub users_file: Option<PathBuf>,

    /// Where the catalog lives: a directory or an object store URL.
    #[arg(long, default_value = "sluice-state", env = "SLUICE_STATE")]
    pub state: String,

    /// Root of tables created without a connector and by bulk ingest
    /// (default: `warehouse/` under --state).
    #[arg(long, env = "SLUICE_WAREHOUSE")]
    pub warehouse: Option<String>,

    /// Parallelism of each statement (default: the number of cores).
    #[arg(long, env = "SLUICE_TARGET_PARTITIONS")]
    pub target_partitions: Option<usize>,

    /// Close sessions idle for this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub idle_timeout_secs: u64,

    /// On SIGTERM/SIGINT, let running statements finish for this many
    /// seconds, then cancel them.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(args: ServerArgs) -> ExitCode {
    match serve_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn with_slash(s: &str) -> String {
    if s.ends_with('/') {
        s.to_string()
    } else {
        format!("{s}/")
    }
}

async fn serve_inner(args: ServerArgs) -> Result<(), String> {
    let addr: SocketAddr = tokio::net::lookup_host(&args.bind)
        .await
        .map_err(|e| format!("--bind {}: {e}", args.bind))?
        .next()
        .ok_or_else(|| format!("--bind {}: no address", args.bind))?;
    let auth_mode = args.auth.unwrap_or(if addr.ip().is_loopback() {
        AuthMode::None
    } else {
        AuthMode::Basic
    });
    let auth = match auth_mode {
        AuthMode::None => None,
        AuthMode::Basic => {
            let path = args.users_file.as_ref().ok_or_else(|| {
                format!(
                    "authentication is basic (the default for the non-loopback address {addr}); \
                     pass --users-file FILE with 'user:sha256:<hex>' lines, or --auth none"
                )
            })?;
            Some(Arc::new(Authenticator::from_file(path)?))
        }
    };

    // State: a directory or an object store URL holding catalog.json.
    let runtime = Arc::new(RuntimeEnv::default());
    let stores = StoreRegistry::new(Arc::clone(&runtime), SecretResolver::from_env());
    let state_url = with_slash(&args.state);
    if !state_url.contains("://") {
        std::fs::create_dir_all(&args.state)
            .map_err(|e| format!("--state {}: cannot create the directory: {e}", args.state))?;
    }
    let location = stores
        .resolve(&state_url, &TableOptions::default())
        .map_err(|e| format!("--state {}: {e}", args.state))?;
    let catalog_path: StorePath = location.path.clone().join("catalog.json");
    let warehouse = match &args.warehouse {
        Some(w) => {
            if !w.contains("://") {
                std::fs::create_dir_all(w)
                    .map_err(|e| format!("--warehouse {w}: cannot create the directory: {e}"))?;
            }
            with_slash(
                sluice_connectors::store::parse_location(&with_slash(w))
                    .map_err(|e| format!("--warehouse {w}: {e}"))?
                    .as_str(),
            )
        }
        None => format!("{}warehouse/", location.url),
    };
    let (catalog, declarations) =
        PersistentCatalog::open(Arc::clone(&location.store), catalog_path.clone())
            .await
            .map_err(|e| e.to_string())?;
    let catalog = Arc::new(catalog);
    let defaults = SessionDefaults {
        target_partitions: args
            .target_partitions
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        warehouse: warehouse.clone(),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
    };
    let state = Arc::new(ServerState::new(
        Arc::clone(&catalog),
        Arc::clone(&runtime),
        defaults,
    ));
    {
        let bootstrap = state.new_planner_session();
        let count = declarations.len();
        for (name, ddl, e) in bootstrap.restore_catalog(declarations).await {
            tracing::error!(table = %name, "cannot restore the table's declaration (kept): {e}");
            catalog.keep_unbound(&name, &ddl);
        }
        tracing::info!(tables = count, catalog = %catalog_path, "catalog loaded");
    }

    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let http_bound = match &args.http_bind {
        Some(h) => {
            let l = TcpListener::bind(h)
                .await
                .map_err(|e| format!("--http-bind {h}: {e}"))?;
            let a = l.local_addr().map_err(|e| e.to_string())?;
            tokio::spawn(http::serve(l, Arc::clone(&state)));
            Some(a)
        }
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let cert =
                std::fs::read(cert).map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
            let key =
                std::fs::read(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
            Some(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
        }
        _ => None,
    };
    tracing::info!(
        address = %bound,
        http = http_bound.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        tls = tls.is_some(),
        auth = ?auth_mode,
        warehouse = %warehouse,
        "sluice server listening"
    );
    if let Some(path) = &args.listen_file {
        let mut text = format!("{bound}\n");
        if let Some(h) = http_bound {
            text.push_str(&format!("http={h}\n"));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| format!("--listen-file {}: {e}", path.display()))?;
    }

    // Janitor: idle sessions and unfetched results.
    {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                state.expire();
            }
        });
    }

    let service = FlightServiceServer::new(SluiceFlightService::new(Arc::clone(&state), auth))
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| format!("TLS configuration: {e}"))?;
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(builder.add_service(service).serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async {
            let _ = stop_rx.await;
        },
    ));
    crate::run::shutdown_signal().await;
    tracing::info!(
        running = state.metrics.running.load(Ordering::Relaxed),
        grace_secs = args.shutdown_grace_secs,
        "shutting down: refusing new work"
    );
    state.shutting_down.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(args.shutdown_grace_secs), server).await {
        Ok(Ok(Ok(()))) => tracing::info!("stopped"),
        Ok(Ok(Err(e))) => return Err(format!("server error: {e}")),
        Ok(Err(e)) => return Err(format!("server task failed: {e}")),
        Err(_) => {
            tracing::warn!("grace period over: cancelling running statements");
            state.cancel_all.cancel();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

mod http {
    //! `/healthz` and `/metrics` (Prometheus text format).

    use std::fmt::Write;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use axum::Router;
    use axum::routing::get;

    use super::state::ServerState;

    pub(super) async fn serve(listener: tokio::net::TcpListener, state: Arc<ServerState>) {
        let app = Router::new()
            .route(
                "/healthz",
                get({
                    let state = Arc::clone(&state);
                    move || async move {
                        if state.shutting_down.load(Ordering::Relaxed) {
                            (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                "shutting down\n",
                            )
                        } else {
                            (axum::http::StatusCode::OK, "ok\n")
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let state = Arc::clone(&state);
                    async move { render(&state) }
                }),
            );
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP endpoint failed: {e}");
        }
    }

    // The exposition format is a few lines of text; a metrics registry
    // crate would add little over these counters.
    fn render(state: &ServerState) -> String {
        let m = &state.metrics;
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        };
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter(
            "sluice_flight_requests_total",
            "Flight calls received.",
            "counter",
            &[("", get(&m.requests))],
        );
        counter(
            "sluice_flight_errors_total",
            "Flight calls that failed, by class.",
            "counter",
            &[
                ("class=\"user\"", get(&m.errors_user)),
                ("class=\"unimplemented\"", get(&m.errors_unimplemented)),
                ("class=\"auth\"", get(&m.errors_auth)),
                ("class=\"internal\"", get(&m.errors_internal)),
            ],
        );
        counter(
            "sluice_statements_total",
            "Statements run, by kind.",
            "counter",
            &[
                ("kind=\"query\"", get(&m.queries)),
                ("kind=\"update\"", get(&m.updates)),
                ("kind=\"ingest\"", get(&m.ingests)),
            ],
        );
        counter(
            "sluice_rows_sent_total",
            "Result rows streamed to clients.",
            "counter",
            &[("", get(&m.rows_sent))],
        );
        counter(
            "sluice_rows_written_total",
            "Rows committed by writes and ingests.",
            "counter",
            &[("", get(&m.rows_written))],
        );
        counter(
            "sluice_statements_running",
            "Writes running now.",
            "gauge",
            &[("", get(&m.running))],
        );
        counter(
            "sluice_sessions",
            "Open client sessions.",
            "gauge",
            &[("", state.session_count() as u64)],
        );
        crate::staged::StagedCounters::global().render(&mut out);
        out
    }
}
