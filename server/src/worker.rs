//! `sluice shuffle-worker`: the Flight shuffle service as a process of its
//! own, persisting task output to a shuffle store with a fixed buffer budget.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::runtime_env::RuntimeEnv;
use sluice_connectors::{SecretResolver, StoreRegistry, TableOptions};
use sluice_shuffle::{MemoryBudget, ShuffleService, ShuffleStore};

/// `sluice shuffle-worker`.
#[derive(Debug, clap::Args)]
pub struct ShuffleWorkerArgs {
    /// Where shuffle data lives: a local directory or an object store URL
    /// (`s3://bucket/prefix/`, credentials from `AWS_*`).
    #[arg(long, env = "SLUICE_SHUFFLE_STORE")]
    pub store: String,

    /// Address of the Flight endpoint; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50061", env = "SLUICE_BIND")]
    pub bind: String,

    /// Address of the HTTP endpoint serving /healthz and /metrics.
    #[arg(long, env = "SLUICE_HTTP_BIND")]
    pub http_bind: Option<String>,

    /// Write the bound address (and `http=ADDRESS` on a second line when
    /// --http-bind is set) to this file once listening.
    #[arg(long, value_name = "PATH", env = "SLUICE_LISTEN_FILE")]
    pub listen_file: Option<PathBuf>,

    /// Bytes of shuffle blocks the worker holds at once (`256MB`, `1GiB`);
    /// writers wait when it is full.
    #[arg(long, default_value = "256MiB", env = "SLUICE_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: u64,

    /// Seconds between sweeps of expired jobs' data.
    #[arg(long, default_value_t = 300, env = "SLUICE_SWEEP_INTERVAL_SECS")]
    pub sweep_interval_secs: u64,
}

pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("'{s}' is not a size such as 256MB or 1GiB: {e}"))
}

/// Runs the worker until SIGTERM or SIGINT.
pub async fn run(args: ShuffleWorkerArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Opens a shuffle store: a local directory or an object store URL, checked
/// to honour put-if-absent.
pub(crate) async fn open_store(location: &str) -> Result<ShuffleStore, String> {
    let store = if location.contains("://") && !location.starts_with("file://") {
        let registry =
            StoreRegistry::new(Arc::new(RuntimeEnv::default()), SecretResolver::from_env());
        let url = if location.ends_with('/') {
            location.to_string()
        } else {
            format!("{location}/")
        };
        let loc = registry
            .resolve(&url, &TableOptions::default())
            .map_err(|e| format!("--store {location}: {e}"))?;
        let prefixed =
            object_store::prefix::PrefixStore::new(Arc::clone(&loc.store), loc.path.clone());
        let store = ShuffleStore::new(Arc::new(prefixed), loc.url.to_string());
        match loc.multipart {
            // Uploads are recorded before their first part, so clean-up can
            // abort what a crash left unfinished.
            Some(multipart) => store.with_multipart(multipart.0, loc.path),
            None => store,
        }
    } else {
        let dir = location.strip_prefix("file://").unwrap_or(location);
        ShuffleStore::local(dir).map_err(|e| format!("--store {location}: {e}"))?
    };
    store
        .probe_conditional_put()
        .await
        .map_err(|e| format!("--store {location}: {e}"))?;
    Ok(store)
}

async fn run_inner(args: ShuffleWorkerArgs) -> Result<(), String> {
    let store = open_store(&args.store).await?;
    let addr: SocketAddr = tokio::net::lookup_host(&args.bind)
        .await
        .map_err(|e| format!("--bind {}: {e}", args.bind))?
        .next()
        .ok_or_else(|| format!("--bind {}: no address", args.bind))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--bind {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let mut listening = format!("{bound}\n");
    if let Some(h) = &args.http_bind {
        let (http, addr) = crate::http::bind("--http-bind", h).await?;
        listening.push_str(&format!("http={addr}\n"));
        tokio::spawn(crate::http::serve(
            http,
            Arc::new(|| Ok(())),
            Arc::new(|| {
                let mut out = String::new();
                sluice_shuffle::shuffle_metrics().render(&mut out);
                out
            }),
        ));
    }
    if let Some(path) = &args.listen_file {
        crate::http::write_listen_file(path, &listening)?;
    }

    // Sweep what expired jobs left, now and periodically.
    {
        let store = store.clone();
        let every = Duration::from_secs(args.sweep_interval_secs.max(1));
        tokio::spawn(async move {
            loop {
                match store.sweep_expired(chrono::Utc::now()).await {
                    Ok(swept) if !swept.is_empty() => {
                        tracing::info!(jobs = swept.len(), "removed shuffle data of expired jobs")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not sweep expired shuffle data"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    let limit = usize::try_from(args.memory_limit).unwrap_or(usize::MAX);
    let service = ShuffleService::new(store, MemoryBudget::new(limit));
    tracing::info!(address = %bound, store = %args.store, memory_limit = limit, "shuffle worker listening");
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            crate::http::grpc_incoming(listener),
            crate::run::shutdown_signal(),
        )
        .await
        .map_err(|e| format!("shuffle service: {e}"))
}
