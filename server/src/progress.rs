//! Live progress of a statement: a spinner line on a terminal, a log line
//! every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::common::runtime::SpawnedTask;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_connectors::sink::WriteProgress;

/// Interval of log lines when stderr is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Reports one statement's progress until dropped.
pub(crate) struct StatementProgress {
    bar: Option<ProgressBar>,
    _ticker: Option<SpawnedTask<()>>,
}

impl StatementProgress {
    /// Starts reporting. `counters` is `None` for statements without row counts.
    pub(crate) fn start(label: String, counters: Option<Arc<WriteProgress>>, quiet: bool) -> Self {
        if quiet {
            return Self {
                bar: None,
                _ticker: None,
            };
        }
        let started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message(label.clone());
            let ticker = counters.map(|c| {
                let bar = bar.clone();
                SpawnedTask::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        bar.set_message(format!("{label}: {}", describe(&c, started)));
                    }
                })
            });
            Self {
                bar: Some(bar),
                _ticker: ticker,
            }
        } else {
            let ticker = counters.map(|c| {
                SpawnedTask::spawn(async move {
                    loop {
                        tokio::time::sleep(LOG_INTERVAL).await;
                        tracing::info!(statement = %label, progress = %describe(&c, started), "running");
                    }
                })
            });
            Self {
                bar: None,
                _ticker: ticker,
            }
        }
    }
}

impl Drop for StatementProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn describe(c: &WriteProgress, started: Instant) -> String {
    let rows = c.rows.load(Ordering::Relaxed);
    let bytes = c.bytes.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let (rate, byte_rate) = if secs > 0.0 {
        (rows as f64 / secs, (bytes as f64 / secs) as u64)
    } else {
        (0.0, 0)
    };
    format!(
        "{} rows ({}) written, {:.1} s, {} rows/s, {}/s",
        human(rows as f64),
        human_bytes(bytes),
        secs,
        human(rate),
        human_bytes(byte_rate)
    )
}

/// 1234567 -> "1.23M".
pub(crate) fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// 1234567 bytes -> "1.2 MiB".
pub(crate) fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_names_rows_bytes_and_rates() {
        let c = WriteProgress::default();
        c.rows.store(1_234_567, Ordering::Relaxed);
        c.bytes.store(10 * 1024 * 1024, Ordering::Relaxed);
        let started = Instant::now() - Duration::from_secs(2);
        let text = describe(&c, started);
        assert!(
            text.starts_with("1.23M rows (10.0 MiB) written, 2.0 s, "),
            "{text}"
        );
        // 10 MiB in about 2 s.
        assert!(text.ends_with(" MiB/s"), "{text}");
        assert!(
            text.contains("617.3k rows/s") || text.contains("rows/s, 5.0 MiB/s"),
            "{text}"
        );
    }
}
