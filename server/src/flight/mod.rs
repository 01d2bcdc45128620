//! `sluice server`: the Flight SQL server, one process embedding the same
//! engine as `sluice run`, with a persistent catalog shared by sessions.

mod auth;
mod convert;
mod metadata;
mod outer;
mod service;
pub(crate) mod session_options;
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

/// What a server process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Plans and runs every statement in this process.
    Embedded,
    /// Plans statements and runs staged jobs' tasks on executors that
    /// register at --cluster-bind.
    Coordinator,
}

/// `sluice server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// `embedded` runs everything in this process; `coordinator` runs
    /// jobs on the executors of a cluster (`sluice executor`).
    #[arg(long, value_enum, default_value_t = Role::Embedded, env = "SLUICE_ROLE")]
    pub role: Role,

    /// Coordinator: address of the endpoint executors register with.
    #[arg(long, default_value = "127.0.0.1:50052", env = "SLUICE_CLUSTER_BIND")]
    pub cluster_bind: String,

    /// Coordinator: the shuffle store every executor reads and writes (a
    /// directory all of them see, or an object store URL such as
    /// `s3://bucket/shuffle/`); default: `shuffle/` under --state.
    #[arg(long, env = "SLUICE_SHUFFLE_STORE")]
    pub shuffle_store: Option<String>,

    /// Coordinator: a shuffle worker (`http://host:port`, serving the same
    /// store) that executors send task output through; without it they
    /// write the store directly, as they also do when it is unreachable.
    #[arg(long, value_name = "URL", env = "SLUICE_SHUFFLE_WORKER")]
    pub shuffle_worker: Option<String>,

    /// Coordinator: seconds a job's shuffle lease lasts unrenewed; data of
    /// jobs whose lease expired is swept by any worker or coordinator.
    #[arg(long, default_value_t = 300, env = "SLUICE_JOB_LEASE_SECS")]
    pub job_lease_secs: u64,

    /// Coordinator: milliseconds between executor heartbeats.
    #[arg(long, default_value_t = 1000, env = "SLUICE_HEARTBEAT_MS")]
    pub heartbeat_ms: u64,

    /// Coordinator: an executor silent for this many milliseconds is
    /// declared lost and its tasks run elsewhere.
    #[arg(long, default_value_t = 10_000, env = "SLUICE_EXECUTOR_TIMEOUT_MS")]
    pub executor_timeout_ms: u64,

    /// Coordinator: fail a job's tasks when no executor has been
    /// registered for this many seconds.
    #[arg(long, default_value_t = 60, env = "SLUICE_EXECUTOR_WAIT_SECS")]
    pub executor_wait_secs: u64,

    /// Address of the Flight SQL endpoint; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50051", env = "SLUICE_BIND")]
    pub bind: String,

    /// Address of the HTTP endpoint serving /healthz and /metrics.
    #[arg(long, env = "SLUICE_HTTP_BIND")]
    pub http_bind: Option<String>,

    /// Write the bound Flight address (then `http=ADDRESS` when
    /// --http-bind is set and `cluster=ADDRESS` for a coordinator) to this
    /// file once listening.
    #[arg(long, value_name = "PATH", env = "SLUICE_LISTEN_FILE")]
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
    #[arg(long, default_value_t = 3600, env = "SLUICE_IDLE_TIMEOUT_SECS")]
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
    let cluster = match args.role {
        Role::Embedded => None,
        Role::Coordinator => Some(start_cluster(&args, &location.url).await?),
    };
    let state = Arc::new(ServerState::new(
        Arc::clone(&catalog),
        Arc::clone(&runtime),
        defaults,
        cluster.as_ref().map(|(scheduler, _)| Arc::clone(scheduler)),
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
        if let Some((_, c)) = &cluster {
            text.push_str(&format!("cluster={c}\n"));
        }
        crate::http::write_listen_file(path, &text)?;
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
        crate::http::grpc_incoming(listener),
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

/// Starts a coordinator's scheduler and the endpoint executors talk to;
/// returns the scheduler and the endpoint's address.
async fn start_cluster(
    args: &ServerArgs,
    state_url: &url::Url,
) -> Result<(Arc<crate::cluster::ClusterScheduler>, SocketAddr), String> {
    let location = match &args.shuffle_store {
        Some(s) => s.clone(),
        None if state_url.scheme() == "file" => {
            let dir = std::path::Path::new(&args.state).join("shuffle");
            std::fs::create_dir_all(&dir).map_err(|e| {
                format!("cannot create the shuffle directory {}: {e}", dir.display())
            })?;
            std::fs::canonicalize(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .display()
                .to_string()
        }
        None => format!("{state_url}shuffle/"),
    };
    let store = crate::worker::open_store(&location)
        .await
        .map_err(|e| e.replace("--store", "--shuffle-store"))?
        .with_worker(args.shuffle_worker.clone());
    match store.sweep_expired(chrono::Utc::now()).await {
        Ok(swept) if !swept.is_empty() => {
            tracing::info!(jobs = swept.len(), "removed shuffle data of expired jobs")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep expired shuffle data"),
    }
    // One coordinator per state location: jobs leased under this node
    // belong to an earlier life of this coordinator, and nothing will
    // finish them.
    let node = format!("coordinator {state_url}");
    let reclaimed = match store.reclaim_node(&node).await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %e, "could not reclaim the jobs of this coordinator's earlier run; their leases expire");
            Vec::new()
        }
    };
    for job in &reclaimed {
        let (done, total) = job
            .committed
            .iter()
            .fold((0, 0), |(d, t), (_, c, n)| (d + c, t + n));
        tracing::warn!(
            job = %job.job,
            started_at = ?job.record.as_ref().map(|r| r.started_at),
            stages = job.committed.len(),
            tasks_committed = done,
            tasks = total,
            objects_removed = job.objects,
            "job interrupted by a coordinator restart: its shuffle data is removed; run the statement again"
        );
    }
    let liveness = crate::cluster::Liveness {
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(10)),
        lost_after: Duration::from_millis(args.executor_timeout_ms.max(args.heartbeat_ms * 2)),
        executor_wait: Duration::from_secs(args.executor_wait_secs),
        job_lease: Duration::from_secs(args.job_lease_secs.max(1)),
    };
    let scheduler =
        crate::cluster::ClusterScheduler::start(node, location.clone(), store, liveness);
    scheduler
        .counters()
        .reclaimed
        .store(reclaimed.len() as u64, Ordering::Relaxed);
    let (listener, bound) = crate::http::bind("--cluster-bind", &args.cluster_bind).await?;
    let service = scheduler.service();
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(crate::http::grpc_incoming(listener))
            .await;
        if let Err(e) = served {
            tracing::error!("cluster endpoint failed: {e}");
        }
    });
    tracing::info!(address = %bound, shuffle = %location, "coordinator: executors register here");
    Ok((scheduler, bound))
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
        crate::streaming::StreamingCounters::global().render(&mut out);
        if let Some(cluster) = &state.cluster {
            cluster.render(&mut out);
        }
        out
    }
}
