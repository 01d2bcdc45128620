//! The J1 report: medians per peer, Sluice's ratios to each peer, and the
//! targets. Machines are noisy; medians of alternating runs and ratios
//! measured in the same invocation are what to compare, not seconds across
//! machines.

use std::fmt::Write as _;

use crate::cli::J1Args;
use crate::datagen::{Dataset, mib};
use crate::j1::{MAX_ROW_GROUP_ROWS, Peer};
use crate::measure;
use crate::outputs::OutputSummary;

/// One successful run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    /// Wall time of the child process.
    pub(crate) wall_seconds: f64,
    /// Its peak resident set size.
    pub(crate) max_rss_bytes: u64,
}

/// Everything measured for one peer.
#[derive(Debug)]
pub(crate) struct PeerRuns {
    /// Who.
    pub(crate) peer: Peer,
    /// Its successful runs, in order.
    pub(crate) runs: Vec<Run>,
    /// The output of its last successful run.
    pub(crate) output: Option<OutputSummary>,
    /// Why it failed, if it did; a failed peer is not run again.
    pub(crate) failure: Option<String>,
}

impl PeerRuns {
    /// No run yet.
    pub(crate) fn new(peer: Peer) -> Self {
        Self {
            peer,
            runs: vec![],
            output: None,
            failure: None,
        }
    }

    fn median_wall(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.wall_seconds).collect())
    }

    fn median_rss(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.max_rss_bytes as f64).collect())
    }

    /// Usable for ratios: it never failed and ran at least once.
    fn measured(&self) -> bool {
        self.failure.is_none() && !self.runs.is_empty()
    }
}

/// Prints the report to stdout.
pub(crate) fn print(dataset: &Dataset, args: &J1Args, results: &[PeerRuns]) {
    print!("{}", render(dataset, args, results));
}

fn render(dataset: &Dataset, args: &J1Args, results: &[PeerRuns]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nJ1: lineitem SF{} CSV ({} rows, {:.0} MiB) -> l_shipdate >= 1995-01-01 ({} rows) \
         -> zstd(3) Parquet, row groups <= {MAX_ROW_GROUP_ROWS} rows, {} partitions; \
         {} rounds, round robin\n",
        dataset.scale_factor,
        dataset.rows,
        mib(dataset.bytes),
        dataset.j1_rows,
        args.partitions,
        args.runs
    );
    let _ = writeln!(
        s,
        "{:<22} {:>9} {:>19} {:>14} {:>6} {:>7} {:>8}",
        "peer", "wall s", "(min - max)", "peak RSS MiB", "files", "groups", "out MiB"
    );
    for r in results {
        if let Some(failure) = &r.failure {
            let first_line = failure.lines().next().unwrap_or_default();
            let _ = writeln!(s, "{:<22} FAILED: {first_line}", r.peer.label());
            continue;
        }
        let (Some(wall), Some(rss), Some(out)) = (r.median_wall(), r.median_rss(), &r.output)
        else {
            continue;
        };
        let walls = r.runs.iter().map(|r| r.wall_seconds);
        let min = walls.clone().fold(f64::INFINITY, f64::min);
        let max = walls.fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "{:<22} {wall:>9.2} {:>19} {:>14.0} {:>6} {:>7} {:>8.1}",
            r.peer.label(),
            format!("({min:.2} - {max:.2})"),
            rss / (1024.0 * 1024.0),
            out.files,
            out.row_groups,
            mib(out.bytes)
        );
    }
    let _ = writeln!(
        s,
        "(peak RSS is never below this process's own peak, {:.0} MiB)",
        mib(measure::own_peak_rss_bytes())
    );
    render_schema_notes(&mut s, results);
    render_ratios(&mut s, results);
    s
}

/// Notes the columns whose Parquet physical type differs from the first
/// peer's: the peers agree on names and rows, but encodings may differ.
fn render_schema_notes(s: &mut String, results: &[PeerRuns]) {
    let mut with_output = results
        .iter()
        .filter_map(|r| Some((r.peer, r.output.as_ref()?)));
    let Some((reference, first)) = with_output.next() else {
        return;
    };
    for (peer, out) in with_output {
        let differing: Vec<&str> = out
            .physical_schema
            .iter()
            .filter(|c| !first.physical_schema.contains(c))
            .map(String::as_str)
            .collect();
        if !differing.is_empty() {
            let _ = writeln!(
                s,
                "note: {} writes {} where {} differs",
                peer.label(),
                differing.join(", "),
                reference.label()
            );
        }
    }
}

fn render_ratios(s: &mut String, results: &[PeerRuns]) {
    let Some(sluice) = results
        .iter()
        .find(|r| r.peer == Peer::Sluice && r.measured())
    else {
        let _ = writeln!(s, "\nno Sluice measurement: no ratios");
        return;
    };
    let (Some(sluice_wall), Some(sluice_rss)) = (sluice.median_wall(), sluice.median_rss()) else {
        return;
    };
    let _ = writeln!(s, "\n{:<22} {:>9} {:>14}", "sluice vs", "wall", "peak RSS");
    let ratio = |peer: Peer| -> Option<(f64, f64)> {
        let r = results.iter().find(|r| r.peer == peer && r.measured())?;
        Some((sluice_wall / r.median_wall()?, sluice_rss / r.median_rss()?))
    };
    for r in results.iter().filter(|r| r.peer != Peer::Sluice) {
        match ratio(r.peer) {
            Some((wall, rss)) => {
                let _ = writeln!(s, "{:<22} {wall:>8.2}x {rss:>13.2}x", r.peer.label());
            }
            None => {
                let _ = writeln!(s, "{:<22} {:>9} {:>14}", r.peer.label(), "-", "-");
            }
        }
    }

    let _ = writeln!(s, "\ntargets");
    let target = |s: &mut String, what: String, value: Option<f64>, met: fn(f64) -> bool| {
        let _ = match value {
            Some(v) => writeln!(
                s,
                "  {what:<42} {v:>6.2}x  {}",
                if met(v) { "met" } else { "MISSED" }
            ),
            None => writeln!(s, "  {what:<42} {:>7}  not measured", "-"),
        };
    };
    let df = ratio(Peer::Datafusion);
    let duck = ratio(Peer::Duckdb);
    target(
        s,
        format!("wall <= 1.05x {}", Peer::Datafusion.label()),
        df.map(|r| r.0),
        |v| v <= 1.05,
    );
    target(
        s,
        format!("peak RSS < {}", Peer::Duckdb.label()),
        duck.map(|r| r.1),
        |v| v < 1.0,
    );
    target(
        s,
        format!("goal: wall <= 0.90x {}", Peer::Duckdb.label()),
        duck.map(|r| r.0),
        |v| v <= 0.9,
    );
}

/// Median; the mean of the middle two for an even count.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
