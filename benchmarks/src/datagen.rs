//! TPC-H `lineitem` as CSV, generated once per scale factor with `tpchgen`.
//!
//! The CSV is written to `<data>/sf<SCALE>/lineitem.csv` (header, `,`
//! delimiter, `l_comment` quoted: tpchgen's own CSV formatter). A marker file
//! next to it records the row counts, including the rows J1 keeps, so later
//! runs skip generation and every peer's output can be checked against it.

use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tpchgen::csv::LineItemCsv;
use tpchgen::generators::LineItemGenerator;

/// J1 keeps the rows with `l_shipdate >= DATE '1995-01-01'`.
const J1_CUTOFF_DAYS: i32 = days_from_civil(1995, 1, 1);

/// Names what produced the file; a marker with another value is stale.
const GENERATOR: &str = "tpchgen 4 csv";

/// The generated `lineitem` table of one scale factor.
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    /// Folder holding `lineitem.csv` (the `data` variable of `j1.sql`).
    pub(crate) dir: PathBuf,
    /// The CSV file.
    pub(crate) csv: PathBuf,
    /// Scale factor it was generated at.
    pub(crate) scale_factor: f64,
    /// Rows in the CSV, header excluded.
    pub(crate) rows: u64,
    /// Rows with `l_shipdate >= 1995-01-01`: J1's expected output.
    pub(crate) j1_rows: u64,
    /// Size of the CSV file.
    pub(crate) bytes: u64,
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lineitem SF{}: {} rows, {:.0} MiB of CSV at {} ({} rows shipped since 1995-01-01)",
            self.scale_factor,
            self.rows,
            mib(self.bytes),
            self.csv.display(),
            self.j1_rows
        )
    }
}

/// Where the data of one scale factor lives.
struct Paths {
    dir: PathBuf,
    csv: PathBuf,
    marker: PathBuf,
}

impl Paths {
    fn new(data: &Path, scale_factor: f64) -> Result<Self> {
        let dir = std::path::absolute(data)?.join(format!("sf{scale_factor}"));
        Ok(Self {
            csv: dir.join("lineitem.csv"),
            marker: dir.join("lineitem.csv.marker"),
            dir,
        })
    }

    fn existing(&self, scale_factor: f64) -> Option<Dataset> {
        read_marker(&self.marker, &self.dir, &self.csv, scale_factor)
    }
}

/// Like [`ensure_lineitem`], but generates in a child process
/// (`sluice-bench gen`). The generator's text pool takes about 300 MiB, and
/// a child's `ru_maxrss` starts at its parent's peak (the kernel carries the
/// parent's memory over at fork and exec), so the measuring process must
/// stay small.
pub(crate) fn ensure_lineitem_in_child(data: &Path, scale_factor: f64) -> Result<Dataset> {
    let paths = Paths::new(data, scale_factor)?;
    if let Some(dataset) = paths.existing(scale_factor) {
        return Ok(dataset);
    }
    let exe = std::env::current_exe().context("locating this program")?;
    let status = Command::new(&exe)
        .arg("gen")
        .arg("--data")
        .arg(std::path::absolute(data)?)
        .arg("--scale-factor")
        .arg(scale_factor.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("starting {} gen", exe.display()))?;
    if !status.success() {
        bail!("generating the data failed: {status}");
    }
    paths
        .existing(scale_factor)
        .with_context(|| format!("{} missing after generation", paths.marker.display()))
}

/// Returns the `lineitem` CSV of `scale_factor` under `data`, generating it
/// unless a marker from an earlier complete generation matches the file.
pub(crate) fn ensure_lineitem(data: &Path, scale_factor: f64) -> Result<Dataset> {
    let Paths { dir, csv, marker } = Paths::new(data, scale_factor)?;
    if let Some(dataset) = read_marker(&marker, &dir, &csv, scale_factor) {
        return Ok(dataset);
    }

    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Remove the marker first: an interrupted generation must not look done.
    if let Err(e) = fs::remove_file(&marker)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(e).with_context(|| format!("removing {}", marker.display()));
    }
    eprintln!(
        "generating TPC-H lineitem SF{scale_factor} into {} (SF1: about 6M rows)",
        csv.display()
    );
    let started = Instant::now();
    let tmp = dir.join("lineitem.csv.tmp");
    let (rows, j1_rows) = write_lineitem_csv(&tmp, scale_factor)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(tmp, &csv).with_context(|| format!("renaming to {}", csv.display()))?;
    let bytes = fs::metadata(&csv)?.len();
    let dataset = Dataset {
        dir,
        csv,
        scale_factor,
        rows,
        j1_rows,
        bytes,
    };
    fs::write(&marker, marker_text(&dataset))
        .with_context(|| format!("writing {}", marker.display()))?;
    eprintln!(
        "generated {rows} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(dataset)
}

/// Writes the header and every row; returns (rows, rows J1 keeps).
fn write_lineitem_csv(path: &Path, scale_factor: f64) -> Result<(u64, u64)> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    writeln!(out, "{}", LineItemCsv::header())?;
    let (mut rows, mut j1_rows) = (0u64, 0u64);
    for item in LineItemGenerator::new(scale_factor, 1, 1).iter() {
        rows += 1;
        if item.l_shipdate.to_unix_epoch() >= J1_CUTOFF_DAYS {
            j1_rows += 1;
        }
        writeln!(out, "{}", LineItemCsv::new(item))?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((rows, j1_rows))
}

fn marker_text(d: &Dataset) -> String {
    format!(
        "generator={GENERATOR}\nscale_factor={}\nrows={}\nj1_rows={}\nbytes={}\n",
        d.scale_factor, d.rows, d.j1_rows, d.bytes
    )
}

/// The dataset the marker describes, if it matches `csv` as it is now.
fn read_marker(marker: &Path, dir: &Path, csv: &Path, scale_factor: f64) -> Option<Dataset> {
    let text = fs::read_to_string(marker).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    };
    if field("generator")? != GENERATOR
        || field("scale_factor")?.parse::<f64>().ok()? != scale_factor
    {
        return None;
    }
    let dataset = Dataset {
        dir: dir.to_path_buf(),
        csv: csv.to_path_buf(),
        scale_factor,
        rows: field("rows")?.parse().ok()?,
        j1_rows: field("j1_rows")?.parse().ok()?,
        bytes: field("bytes")?.parse().ok()?,
    };
    (fs::metadata(csv).ok()?.len() == dataset.bytes).then_some(dataset)
}

/// Fails unless `dataset`'s CSV is readable; reads it whole so that the
/// first peer measured does not pay for a cold page cache alone.
pub(crate) fn warm_page_cache(dataset: &Dataset) -> Result<()> {
    let mut file =
        File::open(&dataset.csv).with_context(|| format!("opening {}", dataset.csv.display()))?;
    let read = std::io::copy(&mut file, &mut std::io::sink())?;
    if read != dataset.bytes {
        bail!(
            "{} has {read} bytes, its marker says {}: delete it to regenerate",
            dataset.csv.display(),
            dataset.bytes
        );
    }
    Ok(())
}

/// Bytes as MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`).
const fn days_from_civil(year: i32, month: i32, day: i32) -> i32 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1995, 1, 1), 9131);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn cutoff_matches_tpchgen_dates() {
        // Every generated date's text and epoch day agree with the cutoff.
        let generator = LineItemGenerator::new(0.001, 1, 1);
        for item in generator.iter().take(2000) {
            let text = item.l_shipdate.to_string();
            assert_eq!(
                text.as_str() >= "1995-01-01",
                item.l_shipdate.to_unix_epoch() >= J1_CUTOFF_DAYS,
                "{text}"
            );
        }
    }

    #[test]
    fn marker_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let csv = dir.join("lineitem.csv");
        fs::write(&csv, "abc").unwrap();
        let dataset = Dataset {
            dir: dir.clone(),
            csv: csv.clone(),
            scale_factor: 0.01,
            rows: 7,
            j1_rows: 3,
            bytes: 3,
        };
        let marker = dir.join("m");
        fs::write(&marker, marker_text(&dataset)).unwrap();
        let read = read_marker(&marker, &dir, &csv, 0.01).unwrap();
        assert_eq!((read.rows, read.j1_rows), (7, 3));
        assert!(read_marker(&marker, &dir, &csv, 1.0).is_none());
        fs::write(&csv, "abcd").unwrap();
        assert!(read_marker(&marker, &dir, &csv, 0.01).is_none());
    }
}
