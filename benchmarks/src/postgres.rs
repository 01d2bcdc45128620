//! `sluice-bench postgres`: the `postgres` connector's throughput against
//! `psql \copy`, in one invocation, round robin.
//!
//! - Parquet -> Postgres: `sluice run` with `INSERT OVERWRITE` from a Parquet
//!   file of TPC-H `lineitem` (the default `'sink.transaction'`, and
//!   `'staged'`), and with `INSERT INTO` the table emptied beforehand
//!   (unmeasured), against `psql` running `TRUNCATE` then `\copy ... FROM`
//!   the same rows as CSV and as Postgres' binary format.
//! - Postgres -> Parquet: `sluice run` with `COPY (SELECT * FROM t) TO
//!   '...parquet'`, against `psql \copy ... TO` a CSV and a binary file.
//!
//! Every run is a child process measured with [`measure`] (wall time and
//! peak RSS from `wait4`). The Postgres server does most of the work in
//! every case and is not measured: psql's peak RSS is the client's alone.
//! Before each run, outside the measurement: `CHECKPOINT` and `sync`, so no
//! run pays for another's writeback.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::record_batch::RecordBatchReader;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use tpchgen::generators::LineItemGenerator;
use tpchgen_arrow::LineItemArrow;

use crate::cli::{PostgresArgs, PostgresGenArgs};
use crate::datagen::mib;
use crate::measure;
use crate::report::Run;

/// `lineitem` rows at scale factor 1.
const LINEITEM_ROWS_SF1: f64 = 6_001_215.0;

/// Columns of the target table, matching the Arrow types Sluice reads from
/// the generated Parquet: Int64 -> bigint, Int32 -> integer,
/// Decimal128(15, 2) -> numeric(15, 2), Date32 -> date, Utf8View -> char(1)
/// for the one-letter flags and varchar for the rest (TPC-H's char(25) and
/// char(10) would pad the values read back).
pub(crate) const COLUMNS: &str = "l_orderkey bigint NOT NULL, \
     l_partkey bigint NOT NULL, \
     l_suppkey bigint NOT NULL, \
     l_linenumber integer NOT NULL, \
     l_quantity numeric(15, 2) NOT NULL, \
     l_extendedprice numeric(15, 2) NOT NULL, \
     l_discount numeric(15, 2) NOT NULL, \
     l_tax numeric(15, 2) NOT NULL, \
     l_returnflag char(1) NOT NULL, \
     l_linestatus char(1) NOT NULL, \
     l_shipdate date NOT NULL, \
     l_commitdate date NOT NULL, \
     l_receiptdate date NOT NULL, \
     l_shipinstruct varchar(25) NOT NULL, \
     l_shipmode varchar(10) NOT NULL, \
     l_comment varchar(44) NOT NULL";

/// One measured job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    SluiceLoad,
    SluiceStagedLoad,
    SluiceAppend,
    CsvLoad,
    BinaryLoad,
    SluiceExport,
    CsvExport,
    BinaryExport,
}

impl Job {
    const LOADS: [Job; 5] = [
        Job::SluiceLoad,
        Job::SluiceStagedLoad,
        Job::SluiceAppend,
        Job::CsvLoad,
        Job::BinaryLoad,
    ];
    const EXPORTS: [Job; 3] = [Job::SluiceExport, Job::CsvExport, Job::BinaryExport];

    fn label(self) -> &'static str {
        match self {
            Self::SluiceLoad => "sluice INSERT OVERWRITE",
            Self::SluiceStagedLoad => "sluice OVERWRITE, staged",
            Self::SluiceAppend => "sluice INSERT INTO empty",
            Self::CsvLoad => "psql \\copy FROM csv",
            Self::BinaryLoad => "psql \\copy FROM binary",
            Self::SluiceExport => "sluice COPY TO parquet",
            Self::CsvExport => "psql \\copy TO csv",
            Self::BinaryExport => "psql \\copy TO binary",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::SluiceLoad => "sluice-load",
            Self::SluiceStagedLoad => "sluice-staged-load",
            Self::SluiceAppend => "sluice-append",
            Self::CsvLoad => "psql-csv-load",
            Self::BinaryLoad => "psql-binary-load",
            Self::SluiceExport => "sluice-export",
            Self::CsvExport => "psql-csv-export",
            Self::BinaryExport => "psql-binary-export",
        }
    }
}

/// The runs of one job.
#[derive(Debug)]
struct JobRuns {
    job: Job,
    runs: Vec<Run>,
    failure: Option<String>,
}

impl JobRuns {
    fn median_wall(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.wall_seconds).collect())
    }

    fn median_rss(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.max_rss_bytes as f64).collect())
    }
}

/// The files of one row count under the data folder.
#[derive(Debug)]
struct Files {
    parquet: PathBuf,
    csv: PathBuf,
    binary: PathBuf,
    out: PathBuf,
    logs: PathBuf,
}

impl Files {
    fn new(data: &Path, rows: u64) -> Self {
        Self {
            parquet: data.join(format!("lineitem-{rows}.parquet")),
            csv: data.join(format!("lineitem-{rows}.csv")),
            binary: data.join(format!("lineitem-{rows}.bin")),
            out: data.join("out"),
            logs: data.join("out").join("logs"),
        }
    }

    fn output(&self, job: Job) -> Option<PathBuf> {
        match job {
            Job::SluiceExport => Some(self.out.join("sluice.parquet")),
            Job::CsvExport => Some(self.out.join("psql.csv")),
            Job::BinaryExport => Some(self.out.join("psql.bin")),
            _ => None,
        }
    }
}

/// How to reach Postgres, with `psql` and with Sluice.
#[derive(Debug)]
pub(crate) struct Pg {
    pub(crate) psql: PathBuf,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) database: String,
    /// `schema.table`.
    pub(crate) table: String,
}

impl Pg {
    pub(crate) fn url(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }

    /// `psql` with connection flags, no `.psqlrc`, stopping at the first
    /// error.
    pub(crate) fn psql(&self) -> Command {
        let mut cmd = Command::new(&self.psql);
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-h", &self.host])
            .args(["-p", &self.port.to_string(), "-U", &self.user])
            .args(["-d", &self.database])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `sql` (one or more `-c` commands), unmeasured; returns stdout.
    pub(crate) fn exec(&self, commands: &[&str]) -> Result<String> {
        let mut cmd = self.psql();
        cmd.arg("-qAt");
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        let output = cmd
            .output()
            .with_context(|| format!("starting {}", self.psql.display()))?;
        if !output.status.success() {
            bail!(
                "psql {commands:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    pub(crate) fn count(&self) -> Result<u64> {
        let text = self.exec(&[&format!("SELECT count(*) FROM {}", self.table)])?;
        text.parse()
            .with_context(|| format!("counting the rows of {}: '{text}'", self.table))
    }

    /// `\copy` of the table to or from `file`.
    fn copy_command(&self, direction: &str, file: &Path, format: &str) -> String {
        format!(
            "\\copy {} {direction} '{}' WITH (FORMAT {format})",
            self.table,
            file.display()
        )
    }
}

/// `sluice-bench postgres`.
pub(crate) fn run(args: &PostgresArgs) -> Result<bool> {
    let sluice = match &args.sluice {
        Some(path) => std::path::absolute(path)?,
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name("sluice"),
    };
    if !sluice.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release --locked -p sluice-server \
             -p sluice-bench`, or pass --sluice",
            sluice.display()
        );
    }
    let data = std::path::absolute(&args.data)?;
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    if data.to_string_lossy().contains('\'') {
        bail!("{} has a quote in its path", data.display());
    }
    let files = Files::new(&data, args.rows);
    let pg = Pg {
        psql: args.psql.clone(),
        host: args.host.clone(),
        port: args.port,
        user: args.user.clone(),
        database: args.database.clone(),
        table: format!("public.{}", args.table),
    };
    let version = pg
        .exec(&["SHOW server_version"])
        .context("is Postgres running? pass --host, --port, --user, --database")?;
    eprintln!("Postgres {version} at {}", pg.url());

    ensure_parquet(&files.parquet, args.rows)?;
    pg.exec(&[
        &format!("DROP TABLE IF EXISTS {}", pg.table),
        &format!("CREATE TABLE {} ({COLUMNS})", pg.table),
    ])?;
    fs::create_dir_all(&files.logs)
        .with_context(|| format!("creating {}", files.logs.display()))?;
    let bench = Bench {
        sluice,
        pg,
        files,
        rows: args.rows,
        read_partitions: args.read_partitions,
    };
    bench.ensure_peer_files()?;
    for path in [&bench.files.parquet, &bench.files.csv, &bench.files.binary] {
        warm_page_cache(path)?;
    }

    let mut results: Vec<JobRuns> = Job::LOADS
        .iter()
        .chain(Job::EXPORTS.iter())
        .map(|&job| JobRuns {
            job,
            runs: vec![],
            failure: None,
        })
        .collect();
    for round in 0..args.runs {
        for group in [&Job::LOADS[..], &Job::EXPORTS[..]] {
            if group == &Job::EXPORTS[..] {
                // Loads leave fresh tuples: the first reader would set their
                // hint bits (writing every page). Vacuum first, unmeasured,
                // and make sure the table holds the rows to export.
                if bench.pg.count()? != bench.rows {
                    bench.load_unmeasured()?;
                }
                bench.pg.exec(&[&format!("VACUUM {}", bench.pg.table)])?;
            }
            let n = group.len();
            for i in 0..n {
                let job = group[(i + round as usize) % n];
                let entry = results
                    .iter_mut()
                    .find(|r| r.job == job)
                    .context("every job has an entry")?;
                if entry.failure.is_some() {
                    continue;
                }
                let log = bench
                    .files
                    .logs
                    .join(format!("{}-{}.log", job.slug(), round + 1));
                match bench.run_once(job, bench.rows, &log)? {
                    Ok(run) => {
                        eprintln!(
                            "round {}/{} {:<24} {:>8.2} s {:>8.0} MiB",
                            round + 1,
                            args.runs,
                            job.label(),
                            run.wall_seconds,
                            mib(run.max_rss_bytes)
                        );
                        entry.runs.push(run);
                    }
                    Err(failure) => {
                        eprintln!(
                            "round {}/{} {}: FAILED: {failure}",
                            round + 1,
                            args.runs,
                            job.label()
                        );
                        entry.failure = Some(failure);
                    }
                }
            }
        }
    }

    // Peak RSS flatness: the same load with a quarter of the rows.
    let quarter = (bench.rows / 4).max(1);
    let log = bench.files.logs.join("sluice-load-quarter.log");
    let quarter_run = match bench.run_once(Job::SluiceLoad, quarter, &log)? {
        Ok(run) => {
            eprintln!(
                "flatness {:<24} {:>8.2} s {:>8.0} MiB  ({quarter} rows)",
                Job::SluiceLoad.label(),
                run.wall_seconds,
                mib(run.max_rss_bytes)
            );
            Some(run)
        }
        Err(failure) => {
            eprintln!("flatness run FAILED: {failure}");
            None
        }
    };

    print!("{}", render(&bench, args, &results, quarter, quarter_run));
    Ok(results.iter().all(|r| r.failure.is_none()) && quarter_run.is_some())
}

/// What every run needs.
#[derive(Debug)]
struct Bench {
    sluice: PathBuf,
    pg: Pg,
    files: Files,
    rows: u64,
    read_partitions: u32,
}

impl Bench {
    /// `CREATE TABLE` of the Postgres table in Sluice.
    fn sluice_table(&self, partitioned: bool) -> String {
        self.sluice_table_with(partitioned, "")
    }

    /// [`Self::sluice_table`] with more `options` (`, 'key' = 'value'`).
    fn sluice_table_with(&self, partitioned: bool, options: &str) -> String {
        let mut ddl = format!(
            "CREATE TABLE li WITH ('connector' = 'postgres', 'url' = '{}', 'table' = '{}'{options}",
            self.pg.url(),
            self.pg.table
        );
        if partitioned && self.read_partitions > 1 {
            let _ = write!(
                ddl,
                ", 'scan.partition.column' = 'l_orderkey', 'scan.partition.num' = '{}'",
                self.read_partitions
            );
        }
        ddl.push_str(");\n");
        ddl
    }

    fn load_script(&self, job: Job, rows: u64) -> String {
        let limit = if rows < self.rows {
            format!(" LIMIT {rows}")
        } else {
            String::new()
        };
        let (options, insert) = match job {
            Job::SluiceStagedLoad => (", 'sink.transaction' = 'staged'", "INSERT OVERWRITE"),
            Job::SluiceAppend => ("", "INSERT INTO"),
            _ => ("", "INSERT OVERWRITE"),
        };
        format!(
            "{}CREATE EXTERNAL TABLE src STORED AS PARQUET LOCATION '{}';\n\
             {insert} li SELECT * FROM src{limit};\n",
            self.sluice_table_with(false, options),
            self.files.parquet.display()
        )
    }

    /// The command of `job`, moving `rows` rows.
    fn command(&self, job: Job, rows: u64) -> Command {
        let psql_load = |file: &Path, format: &str| {
            let mut cmd = self.pg.psql();
            cmd.arg("-c")
                .arg(format!("TRUNCATE {}", self.pg.table))
                .arg("-c")
                .arg(self.pg.copy_command("FROM", file, format));
            cmd
        };
        let psql_export = |format: &str| {
            let mut cmd = self.pg.psql();
            let out = self.files.output(job).unwrap_or_default();
            cmd.arg("-c").arg(self.pg.copy_command("TO", &out, format));
            cmd
        };
        match job {
            Job::SluiceLoad | Job::SluiceStagedLoad | Job::SluiceAppend => {
                let mut cmd = Command::new(&self.sluice);
                // A fresh run id each time, so an append is never skipped as a re-run.
                cmd.args([
                    "run",
                    "-q",
                    "--force-rerun",
                    "-e",
                    &self.load_script(job, rows),
                ]);
                cmd
            }
            Job::SluiceExport => {
                let out = self.files.output(job).unwrap_or_default();
                let script = format!(
                    "{}COPY (SELECT * FROM li) TO '{}' STORED AS PARQUET;\n",
                    self.sluice_table(true),
                    out.display()
                );
                let mut cmd = Command::new(&self.sluice);
                cmd.args(["run", "-q", "-e", &script]);
                cmd
            }
            Job::CsvLoad => psql_load(&self.files.csv, "csv"),
            Job::BinaryLoad => psql_load(&self.files.binary, "binary"),
            Job::CsvExport => psql_export("csv"),
            Job::BinaryExport => psql_export("binary"),
        }
    }

    /// Runs `job` once. The outer error is the benchmark's own; the inner
    /// one is the job's failure (non-zero exit or wrong row count).
    fn run_once(
        &self,
        job: Job,
        rows: u64,
        log: &Path,
    ) -> Result<std::result::Result<Run, String>> {
        let output = self.files.output(job);
        if let Some(out) = &output
            && let Err(e) = fs::remove_file(out)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e).with_context(|| format!("removing {}", out.display()));
        }
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = self.command(job, rows);
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if job == Job::SluiceAppend {
            self.pg.exec(&[&format!("TRUNCATE {}", self.pg.table)])?;
        }
        self.pg.exec(&["CHECKPOINT"])?;
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
        let written = match job {
            Job::SluiceLoad
            | Job::SluiceStagedLoad
            | Job::SluiceAppend
            | Job::CsvLoad
            | Job::BinaryLoad => self.pg.count()?,
            Job::SluiceExport => match output.as_deref().map(parquet_rows) {
                Some(Ok(rows)) => rows,
                Some(Err(e)) => return Ok(Err(format!("unreadable output: {e:#}"))),
                None => 0,
            },
            // psql prints `COPY <rows>`.
            Job::CsvExport | Job::BinaryExport => fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("COPY ")?.trim().parse().ok())
                .unwrap_or(0),
        };
        if written != rows {
            return Ok(Err(format!(
                "moved {written} rows, expected {rows}; log {}",
                log.display()
            )));
        }
        Ok(Ok(Run {
            wall_seconds: m.wall.as_secs_f64(),
            max_rss_bytes: m.max_rss_bytes,
        }))
    }

    /// Fills the table with Sluice, unmeasured.
    fn load_unmeasured(&self) -> Result<()> {
        let log = self.files.logs.join("prepare-load.log");
        match self.run_once(Job::SluiceLoad, self.rows, &log)? {
            Ok(_) => Ok(()),
            Err(failure) => bail!("loading the table with sluice: {failure}"),
        }
    }

    /// The CSV and binary files of the psql peers: written once, by
    /// Postgres itself (`\copy TO`) after loading the Parquet with Sluice,
    /// so they hold exactly the rows of the Parquet file in the formats
    /// `\copy FROM` reads back.
    fn ensure_peer_files(&self) -> Result<()> {
        if self.files.csv.is_file() && self.files.binary.is_file() {
            return Ok(());
        }
        eprintln!(
            "loading {} into {} once with sluice, to export the psql peers' CSV and binary files",
            self.files.parquet.display(),
            self.pg.table
        );
        self.load_unmeasured()?;
        for (path, format) in [(&self.files.csv, "csv"), (&self.files.binary, "binary")] {
            let tmp = path.with_extension("tmp");
            self.pg
                .exec(&[&self.pg.copy_command("TO", &tmp, format)])
                .with_context(|| format!("exporting {}", path.display()))?;
            fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        }
        Ok(())
    }
}

/// Makes `path` hold `rows` TPC-H lineitem rows as Parquet, generating them
/// in a child process (`sluice-bench postgres-gen`) unless the file is
/// there with that many rows. A child because a measured child's
/// `ru_maxrss` starts at this process's peak, and the generator's text pool
/// takes about 300 MiB.
pub(crate) fn ensure_parquet(path: &Path, rows: u64) -> Result<()> {
    if parquet_rows(path).ok() == Some(rows) {
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating this program")?;
    let status = Command::new(&exe)
        .arg("postgres-gen")
        .arg("--out")
        .arg(path)
        .arg("--rows")
        .arg(rows.to_string())
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("starting {} postgres-gen", exe.display()))?;
    if !status.success() {
        bail!("generating {} failed: {status}", path.display());
    }
    let written = parquet_rows(path)?;
    if written != rows {
        bail!("{} has {written} rows, expected {rows}", path.display());
    }
    Ok(())
}

/// `sluice-bench postgres-gen`: writes the first `rows` rows of TPC-H
/// `lineitem` at the smallest convenient scale factor that has them, as one
/// zstd Parquet file.
pub(crate) fn generate(args: &PostgresGenArgs) -> Result<bool> {
    let path = std::path::absolute(&args.out)?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("parquet.tmp");
    // lineitem has about 6M rows per scale factor; a little more, so that
    // one pass has them all.
    let mut scale_factor = (args.rows as f64 / LINEITEM_ROWS_SF1 * 1.05).max(0.001);
    let started = Instant::now();
    loop {
        eprintln!(
            "generating {} rows of TPC-H lineitem (SF{scale_factor:.4}) into {}",
            args.rows,
            path.display()
        );
        let written = write_lineitem_parquet(&tmp, scale_factor, args.rows)
            .with_context(|| format!("writing {}", tmp.display()))?;
        if written == args.rows {
            break;
        }
        scale_factor *= 1.5;
    }
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    eprintln!(
        "generated {} rows in {:.1} s",
        args.rows,
        started.elapsed().as_secs_f64()
    );
    Ok(true)
}

/// Writes at most `rows` rows; returns how many it wrote.
fn write_lineitem_parquet(path: &Path, scale_factor: f64, rows: u64) -> Result<u64> {
    let reader =
        LineItemArrow::new(LineItemGenerator::new(scale_factor, 1, 1)).with_batch_size(8192);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, reader.schema(), Some(props))?;
    let mut written = 0u64;
    for batch in reader {
        let batch = batch?;
        let left = usize::try_from(rows - written).unwrap_or(usize::MAX);
        let batch = if batch.num_rows() > left {
            batch.slice(0, left)
        } else {
            batch
        };
        written += batch.num_rows() as u64;
        writer.write(&batch)?;
        if written == rows {
            break;
        }
    }
    writer.into_inner()?.sync_all()?;
    Ok(written)
}

/// Rows in a Parquet file, from its footer.
fn parquet_rows(path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("reading the Parquet footer of {}", path.display()))?;
    Ok(u64::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0))
}

/// Reads `path` whole so the first run does not pay for a cold page cache.
fn warm_page_cache(path: &Path) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::copy(&mut file, &mut std::io::sink())?;
    Ok(())
}

fn render(
    bench: &Bench,
    args: &PostgresArgs,
    results: &[JobRuns],
    quarter: u64,
    quarter_run: Option<Run>,
) -> String {
    let size = |p: &Path| fs::metadata(p).map(|m| mib(m.len())).unwrap_or(0.0);
    let rows = bench.rows as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\npostgres: TPC-H lineitem, {} rows (Parquet {:.0} MiB, CSV {:.0} MiB, binary {:.0} MiB) \
         <-> {} at {}; {} rounds, round robin; sluice read partitions: {}\n",
        bench.rows,
        size(&bench.files.parquet),
        size(&bench.files.csv),
        size(&bench.files.binary),
        bench.pg.table,
        bench.pg.url(),
        args.runs,
        bench.read_partitions
    );
    let header = |s: &mut String, title: &str| {
        let _ = writeln!(
            s,
            "{title:<26} {:>9} {:>17} {:>12} {:>13}",
            "wall s", "(min - max)", "rows/s", "peak RSS MiB"
        );
    };
    for (title, group) in [
        ("Parquet -> Postgres", &Job::LOADS[..]),
        ("Postgres -> file", &Job::EXPORTS[..]),
    ] {
        header(&mut s, title);
        for job in group.iter() {
            let Some(r) = results.iter().find(|r| r.job == *job) else {
                continue;
            };
            if let Some(failure) = &r.failure {
                let first_line = failure.lines().next().unwrap_or_default();
                let _ = writeln!(s, "  {:<24} FAILED: {first_line}", job.label());
                continue;
            }
            let (Some(wall), Some(rss)) = (r.median_wall(), r.median_rss()) else {
                continue;
            };
            let walls = r.runs.iter().map(|r| r.wall_seconds);
            let min = walls.clone().fold(f64::INFINITY, f64::min);
            let max = walls.fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "  {:<24} {wall:>9.2} {:>17} {:>12.0} {:>13.0}",
                job.label(),
                format!("({min:.2} - {max:.2})"),
                rows / wall,
                rss / (1024.0 * 1024.0)
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "(medians; psql's peak RSS is the client's alone, the server backend does the \
         work; no figure is below this process's own peak, {:.0} MiB)",
        mib(measure::own_peak_rss_bytes())
    );

    let _ = writeln!(s, "\npeak RSS of each sluice run, MiB");
    for job in [
        Job::SluiceLoad,
        Job::SluiceStagedLoad,
        Job::SluiceAppend,
        Job::SluiceExport,
    ] {
        if let Some(r) = results.iter().find(|r| r.job == job) {
            let each: Vec<String> = r
                .runs
                .iter()
                .map(|r| format!("{:.0}", mib(r.max_rss_bytes)))
                .collect();
            let _ = writeln!(s, "  {:<24} {}", job.label(), each.join(", "));
        }
    }

    let wall = |job: Job| {
        results
            .iter()
            .find(|r| r.job == job && r.failure.is_none())
            .and_then(JobRuns::median_wall)
    };
    let _ = writeln!(
        s,
        "\nsluice / peer, median wall (below 1: sluice is faster)"
    );
    for (sluice, peer) in [
        (Job::SluiceLoad, Job::CsvLoad),
        (Job::SluiceLoad, Job::BinaryLoad),
        (Job::SluiceStagedLoad, Job::BinaryLoad),
        (Job::SluiceAppend, Job::BinaryLoad),
        (Job::SluiceExport, Job::CsvExport),
        (Job::SluiceExport, Job::BinaryExport),
    ] {
        let what = format!("{} vs {}", sluice.label(), peer.label());
        match (wall(sluice), wall(peer)) {
            (Some(a), Some(b)) => {
                let _ = writeln!(s, "  {what:<50} {:>6.2}x", a / b);
            }
            _ => {
                let _ = writeln!(s, "  {what:<50} {:>7}", "-");
            }
        }
    }

    let _ = writeln!(s, "\npeak RSS flatness, sluice load");
    let full = results
        .iter()
        .find(|r| r.job == Job::SluiceLoad && r.failure.is_none())
        .and_then(JobRuns::median_rss);
    match (quarter_run, full) {
        (Some(q), Some(full)) => {
            let q_rss = q.max_rss_bytes as f64;
            let _ = writeln!(
                s,
                "  {quarter} rows: {:.0} MiB ({:.2} s); {} rows: {:.0} MiB (median); \
                 N / (N/4): {:.2}x",
                q_rss / (1024.0 * 1024.0),
                q.wall_seconds,
                bench.rows,
                full / (1024.0 * 1024.0),
                full / q_rss
            );
        }
        _ => {
            let _ = writeln!(s, "  not measured");
        }
    }
    s
}

/// Median; the mean of the middle two for an even count.
pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
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

/// The last lines of a log, to show why a run failed.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_exactly_the_rows_asked_for() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("l.parquet");
        let written = write_lineitem_parquet(&path, 0.001, 1000).unwrap();
        assert_eq!(written, 1000);
        assert_eq!(parquet_rows(&path).unwrap(), 1000);
    }

    #[test]
    fn load_script_limits_the_quarter_run() {
        let bench = Bench {
            sluice: PathBuf::from("sluice"),
            pg: Pg {
                psql: PathBuf::from("psql"),
                host: "127.0.0.1".into(),
                port: 5432,
                user: "postgres".into(),
                database: "test".into(),
                table: "public.bench_lineitem".into(),
            },
            files: Files::new(Path::new("/d"), 100),
            rows: 100,
            read_partitions: 1,
        };
        let full = bench.load_script(Job::SluiceLoad, 100);
        assert!(full.contains("'url' = 'postgres://postgres@127.0.0.1:5432/test'"));
        assert!(full.contains("LOCATION '/d/lineitem-100.parquet'"));
        assert!(full.ends_with("INSERT OVERWRITE li SELECT * FROM src;\n"));
        assert!(
            bench
                .load_script(Job::SluiceLoad, 25)
                .contains("SELECT * FROM src LIMIT 25;")
        );
    }
}
