//! Job J1: TPC-H `lineitem` CSV → `l_shipdate >= DATE '1995-01-01'` → the
//! 15 columns other than `l_comment` plus `revenue` → zstd(3) Parquet with
//! row groups of at most 1,048,576 rows, in as many files as partitions.
//!
//! Each peer is a child process doing the whole job; peers run round robin
//! (the first peer of a round rotates) and are measured with [`measure`].

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cli::J1Args;
use crate::datagen::{self, Dataset};
use crate::measure;
use crate::outputs::{self, Expectations, OutputSummary};
use crate::report::{self, PeerRuns, Run};

/// J1's output columns, in order.
pub(crate) const OUTPUT_COLUMNS: [&str; 16] = [
    "l_orderkey",
    "l_partkey",
    "l_suppkey",
    "l_linenumber",
    "l_quantity",
    "l_extendedprice",
    "l_discount",
    "l_tax",
    "l_returnflag",
    "l_linestatus",
    "l_shipdate",
    "l_commitdate",
    "l_receiptdate",
    "l_shipinstruct",
    "l_shipmode",
    "revenue",
];

/// Pinned `max_row_group_size` of every peer.
pub(crate) const MAX_ROW_GROUP_ROWS: u64 = 1_048_576;

/// Sluice's J1 script.
const SLUICE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/j1.sql");
/// DuckDB's J1, run by Python.
const DUCKDB_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/j1_duckdb.py");
/// DataFusion-Python's J1.
const DATAFUSION_PYTHON_SCRIPT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/python/j1_datafusion.py");

/// A program that does J1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Peer {
    /// `sluice run benchmarks/j1.sql`.
    Sluice,
    /// `j1_datafusion`: plain DataFusion from the same Cargo.lock.
    Datafusion,
    /// DuckDB's Python package.
    Duckdb,
    /// DataFusion's Python package.
    DatafusionPython,
}

impl Peer {
    /// Name in the report.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Sluice => "sluice",
            Self::Datafusion => "datafusion (rust)",
            Self::Duckdb => "duckdb (python)",
            Self::DatafusionPython => "datafusion (python)",
        }
    }

    /// Name of its output folder and logs.
    fn slug(self) -> &'static str {
        match self {
            Self::Sluice => "sluice",
            Self::Datafusion => "datafusion",
            Self::Duckdb => "duckdb",
            Self::DatafusionPython => "datafusion-python",
        }
    }

    fn uses_python(self) -> bool {
        matches!(self, Self::Duckdb | Self::DatafusionPython)
    }
}

/// The programs the peers run.
#[derive(Debug)]
struct Programs {
    sluice: PathBuf,
    datafusion: PathBuf,
    python: PathBuf,
    partitions: u32,
}

impl Programs {
    /// Resolves and checks the programs the selected peers need.
    fn resolve(args: &J1Args, peers: &[Peer]) -> Result<Self> {
        let datafusion = match &args.datafusion {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .context("locating this program")?
                .with_file_name("j1_datafusion"),
        };
        let programs = Self {
            sluice: std::path::absolute(&args.sluice)?,
            datafusion: std::path::absolute(datafusion)?,
            // Not canonicalized: a venv's `python` is a symlink whose
            // location selects the venv.
            python: std::path::absolute(&args.python)?,
            partitions: args.partitions,
        };
        let build =
            "build it with `cargo build --release --locked -p sluice-server -p sluice-bench`";
        if peers.contains(&Peer::Sluice) && !programs.sluice.is_file() {
            bail!(
                "{} not found: {build}, or pass --sluice",
                programs.sluice.display()
            );
        }
        if peers.contains(&Peer::Datafusion) && !programs.datafusion.is_file() {
            bail!(
                "{} not found: {build}, or pass --datafusion",
                programs.datafusion.display()
            );
        }
        if peers.iter().any(|p| p.uses_python()) {
            programs.check_python()?;
        }
        Ok(programs)
    }

    /// Fails early, with the fix, when the Python packages are missing.
    fn check_python(&self) -> Result<()> {
        let probe = "import duckdb, datafusion; \
                     print(f'duckdb {duckdb.__version__}, datafusion-python {datafusion.__version__}')";
        let output = Command::new(&self.python)
            .args(["-c", probe])
            .output()
            .with_context(|| format!("starting {}", self.python.display()))?;
        if !output.status.success() {
            bail!(
                "{} cannot import duckdb and datafusion: create the venv with \
                 `python3 -m venv .venv && .venv/bin/pip install duckdb datafusion`, \
                 or pass --python\n{}",
                self.python.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        eprintln!(
            "python peers: {}",
            String::from_utf8_lossy(&output.stdout).trim()
        );
        Ok(())
    }

    /// The command that runs `peer` on `dataset`, writing into `out`.
    fn command(&self, peer: Peer, dataset: &Dataset, out: &Path) -> Command {
        let partitions = self.partitions.to_string();
        match peer {
            Peer::Sluice => {
                let mut cmd = Command::new(&self.sluice);
                cmd.args(["run", "--quiet", "--target-partitions", &partitions])
                    .arg("--var")
                    .arg(format!("data={}", dataset.dir.display()))
                    .arg("--var")
                    .arg(format!("out={}", out.display()))
                    .arg(SLUICE_SCRIPT);
                cmd
            }
            Peer::Datafusion => {
                let mut cmd = Command::new(&self.datafusion);
                cmd.arg(&dataset.csv)
                    .arg(out)
                    .args(["--target-partitions", &partitions]);
                cmd
            }
            Peer::Duckdb | Peer::DatafusionPython => {
                let script = if peer == Peer::Duckdb {
                    DUCKDB_SCRIPT
                } else {
                    DATAFUSION_PYTHON_SCRIPT
                };
                let mut cmd = Command::new(&self.python);
                cmd.arg(script).arg(&dataset.csv).arg(out).arg(&partitions);
                cmd
            }
        }
    }
}

/// Runs J1 and prints the report. `Ok(false)` when a peer failed or wrote a
/// wrong output.
pub(crate) fn run(args: &J1Args) -> Result<bool> {
    let mut peers: Vec<Peer> = vec![];
    for &peer in &args.peers {
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    if peers.is_empty() {
        bail!("no peer selected");
    }
    let programs = Programs::resolve(args, &peers)?;
    let dataset = datagen::ensure_lineitem_in_child(&args.data.data, args.data.scale_factor)?;
    eprintln!("{dataset}");
    let out_root = std::path::absolute(&args.data.data)?.join("out");
    let logs = out_root.join("logs");
    remove_dir_if_exists(&logs)?;
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let expected = Expectations {
        rows: dataset.j1_rows,
        columns: &OUTPUT_COLUMNS,
        max_row_group_rows: MAX_ROW_GROUP_ROWS,
    };

    datagen::warm_page_cache(&dataset)?;
    let mut results: Vec<PeerRuns> = peers.iter().map(|&p| PeerRuns::new(p)).collect();
    for round in 0..args.runs {
        // Rotate who goes first, so no peer always follows the same one.
        let n = results.len();
        for i in 0..n {
            let peer_runs = &mut results[(i + round as usize) % n];
            if peer_runs.failure.is_some() {
                continue;
            }
            let peer = peer_runs.peer;
            let out = out_root.join(peer.slug());
            let log = logs.join(format!("{}-{}.log", peer.slug(), round + 1));
            match run_once(&programs, peer, &dataset, &out, &log, &expected)? {
                Ok((run, summary)) => {
                    eprintln!(
                        "round {}/{} {:<20} {:>8.2} s {:>8.0} MiB  {} rows in {} files",
                        round + 1,
                        args.runs,
                        peer.label(),
                        run.wall_seconds,
                        datagen::mib(run.max_rss_bytes),
                        summary.rows,
                        summary.files
                    );
                    peer_runs.runs.push(run);
                    peer_runs.output = Some(summary);
                }
                Err(failure) => {
                    eprintln!(
                        "round {}/{} {}: FAILED: {failure}",
                        round + 1,
                        args.runs,
                        peer.label()
                    );
                    peer_runs.failure = Some(failure);
                }
            }
        }
    }

    report::print(&dataset, args, &results);
    Ok(results.iter().all(|r| r.failure.is_none()))
}

/// Runs `peer` once into a fresh `out`. The outer error is the benchmark's
/// own (cannot spawn, cannot clean up); the inner one is the peer's failure.
fn run_once(
    programs: &Programs,
    peer: Peer,
    dataset: &Dataset,
    out: &Path,
    log: &Path,
    expected: &Expectations<'_>,
) -> Result<std::result::Result<(Run, OutputSummary), String>> {
    remove_dir_if_exists(out)?;
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = programs.command(peer, dataset, out);
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    measure::sync_disks();
    let m = measure::run(&mut cmd)?;
    // Writeback of this run's output is not the next run's cost.
    measure::sync_disks();
    if !m.status.success() {
        return Ok(Err(format!(
            "{}; log {}:\n{}",
            m.status,
            log.display(),
            log_tail(log)
        )));
    }
    let summary = match outputs::inspect(out) {
        Ok(summary) => summary,
        Err(e) => return Ok(Err(format!("unreadable output: {e:#}"))),
    };
    let problems = outputs::problems(&summary, expected);
    if !problems.is_empty() {
        return Ok(Err(format!(
            "wrong output in {}: {}",
            out.display(),
            problems.join("; ")
        )));
    }
    let run = Run {
        wall_seconds: m.wall.as_secs_f64(),
        max_rss_bytes: m.max_rss_bytes,
    };
    Ok(Ok((run, summary)))
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(e).with_context(|| format!("removing {}", dir.display()));
    }
    Ok(())
}

/// The last lines of a log, to show why a peer failed.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}
