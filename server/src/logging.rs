//! Tracing set-up: `SLUICE_LOG` (or `RUST_LOG`) filters, text or JSON on stderr.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber.
pub fn init(
    format: LogFormat,
    quiet: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let default = if quiet {
        "warn"
    } else {
        "warn,sluice_server=info,sluice_planner=info,sluice_connectors=info"
    };
    let filter = std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .map(EnvFilter::new)
        .unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
}
