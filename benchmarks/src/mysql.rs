//! `sluice-bench mysql`: MariaDB -> Postgres through the `mysql` and
//! `postgres` connectors, against the clients' own pipe
//! `mariadb --batch | psql \copy`, in one invocation, round robin.
//!
//! The MariaDB table holds the first N rows of TPC-H `lineitem`, filled
//! once (and kept between invocations) by `sluice run` from a generated
//! Parquet file; that fill is timed once and reported for information.
//! Every measured run is a child process measured with [`measure`] (wall
//! time and peak RSS from `wait4`). Both servers do much of the work and are
//! not measured. Before each run, outside the measurement: `CHECKPOINT` and
//! `sync`, so no run pays for another's writeback.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cli::MysqlArgs;
use crate::datagen::mib;
use crate::measure;
use crate::postgres::{COLUMNS, Pg, ensure_parquet, log_tail, median};
use crate::report::Run;

/// The source table in the MariaDB database.
const MY_TABLE: &str = "bench_lineitem";

/// The target table in Postgres (`schema.table`).
const PG_TABLE: &str = "public.bench_lineitem_from_mysql";

/// Columns of the MariaDB table: the MySQL types of the Postgres
/// [`COLUMNS`], so both ends hold the same values.
const MY_COLUMNS: &str = "l_orderkey BIGINT NOT NULL, \
     l_partkey BIGINT NOT NULL, \
     l_suppkey BIGINT NOT NULL, \
     l_linenumber INT NOT NULL, \
     l_quantity DECIMAL(15, 2) NOT NULL, \
     l_extendedprice DECIMAL(15, 2) NOT NULL, \
     l_discount DECIMAL(15, 2) NOT NULL, \
     l_tax DECIMAL(15, 2) NOT NULL, \
     l_returnflag CHAR(1) NOT NULL, \
     l_linestatus CHAR(1) NOT NULL, \
     l_shipdate DATE NOT NULL, \
     l_commitdate DATE NOT NULL, \
     l_receiptdate DATE NOT NULL, \
     l_shipinstruct VARCHAR(25) NOT NULL, \
     l_shipmode VARCHAR(10) NOT NULL, \
     l_comment VARCHAR(44) NOT NULL";

/// One measured job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Sluice,
    Pipe,
}

impl Job {
    const ALL: [Job; 2] = [Job::Sluice, Job::Pipe];

    fn label(self) -> &'static str {
        match self {
            Self::Sluice => "sluice mysql -> postgres",
            Self::Pipe => "mariadb | psql \\copy",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Sluice => "sluice",
            Self::Pipe => "mariadb-psql",
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

/// How to reach MariaDB, with the `mariadb` client and with Sluice.
#[derive(Debug)]
struct My {
    client: PathBuf,
    host: String,
    port: u16,
    user: String,
    database: String,
}

impl My {
    fn url(&self) -> String {
        format!(
            "mysql://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }

    /// `database.table` of the source table.
    fn table(&self) -> String {
        format!("{}.{MY_TABLE}", self.database)
    }

    /// The client's connection flags.
    fn connection_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.host.clone(),
            "-P".into(),
            self.port.to_string(),
            "-u".into(),
            self.user.clone(),
        ]
    }

    /// Runs `sql`, unmeasured; returns stdout (tab-separated, no header).
    fn exec(&self, sql: &str) -> Result<String> {
        let output = Command::new(&self.client)
            .args(self.connection_args())
            .args(["--batch", "--skip-column-names", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting {}", self.client.display()))?;
        if !output.status.success() {
            bail!(
                "{} -e {sql:?} failed ({}): {}",
                self.client.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn count(&self) -> Result<u64> {
        let table = self.table();
        let text = self.exec(&format!("SELECT COUNT(*) FROM {table}"))?;
        text.parse()
            .with_context(|| format!("counting the rows of {table}: '{text}'"))
    }
}

/// `sluice-bench mysql`.
pub(crate) fn run(args: &MysqlArgs) -> Result<bool> {
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
    let my = My {
        client: args.mariadb_client.clone(),
        host: args.my_host.clone(),
        port: args.my_port,
        user: args.my_user.clone(),
        database: args.my_database.clone(),
    };
    let pg = Pg {
        psql: args.psql.clone(),
        host: args.host.clone(),
        port: args.port,
        user: args.user.clone(),
        database: args.database.clone(),
        table: PG_TABLE.to_string(),
    };
    let my_version = my
        .exec("SELECT VERSION(), @@innodb_buffer_pool_size")
        .context("is MariaDB running? pass --my-host, --my-port, --my-user, --my-database")?;
    let (my_version, buffer_pool) = my_version
        .split_once('\t')
        .map(|(v, b)| (v.to_string(), b.parse::<u64>().ok()))
        .unwrap_or((my_version.clone(), None));
    eprintln!("MariaDB {my_version} at {}", my.url());
    let pg_version = pg
        .exec(&["SHOW server_version"])
        .context("is Postgres running? pass --host, --port, --user, --database")?;
    eprintln!("Postgres {pg_version} at {}", pg.url());

    pg.exec(&[
        &format!("DROP TABLE IF EXISTS {}", pg.table),
        &format!("CREATE TABLE {} ({COLUMNS})", pg.table),
    ])?;
    let logs = data.join("out").join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let bench = Bench {
        sluice,
        my,
        pg,
        parquet: data.join(format!("lineitem-{}.parquet", args.rows)),
        logs,
        rows: args.rows,
        read_partitions: args.read_partitions,
    };
    let fill = bench.prepare_source()?;
    let setup = Setup {
        my_version,
        buffer_pool,
        fill,
    };

    let mut results: Vec<JobRuns> = Job::ALL
        .iter()
        .map(|&job| JobRuns {
            job,
            runs: vec![],
            failure: None,
        })
        .collect();
    let n = Job::ALL.len();
    for round in 0..args.runs {
        for i in 0..n {
            let job = Job::ALL[(i + round as usize) % n];
            let entry = results
                .iter_mut()
                .find(|r| r.job == job)
                .context("every job has an entry")?;
            if entry.failure.is_some() {
                continue;
            }
            let log = bench.logs.join(format!("{}-{}.log", job.slug(), round + 1));
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

    // Peak RSS flatness: the same transfer with a quarter of the rows.
    let quarter = (bench.rows / 4).max(1);
    let log = bench.logs.join("sluice-quarter.log");
    let quarter_run = match bench.run_once(Job::Sluice, quarter, &log)? {
        Ok(run) => {
            eprintln!(
                "flatness {:<24} {:>8.2} s {:>8.0} MiB  ({quarter} rows)",
                Job::Sluice.label(),
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

    print!(
        "{}",
        render(&bench, args, &setup, &results, quarter, quarter_run)
    );
    Ok(results.iter().all(|r| r.failure.is_none()) && quarter_run.is_some())
}

/// What the header and the setup line report.
#[derive(Debug)]
struct Setup {
    my_version: String,
    buffer_pool: Option<u64>,
    /// The measured fill of the MariaDB table; `None` when it already held
    /// the rows.
    fill: Option<Run>,
}

/// What every run needs.
#[derive(Debug)]
struct Bench {
    sluice: PathBuf,
    my: My,
    pg: Pg,
    /// The generated rows that fill the MariaDB table.
    parquet: PathBuf,
    logs: PathBuf,
    rows: u64,
    read_partitions: u32,
}

impl Bench {
    /// `CREATE TABLE` of the MariaDB table in Sluice, as `name`.
    fn mysql_table(&self, name: &str, partitioned: bool) -> String {
        let mut ddl = format!(
            "CREATE TABLE {name} WITH ('connector' = 'mysql', 'url' = '{}', 'table' = '{MY_TABLE}'",
            self.my.url()
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

    /// Parquet -> MariaDB, the unmeasured setup (timed once).
    fn fill_script(&self) -> String {
        format!(
            "CREATE EXTERNAL TABLE src STORED AS PARQUET LOCATION '{}';\n\
             {}INSERT OVERWRITE my_li SELECT * FROM src;\n",
            self.parquet.display(),
            self.mysql_table("my_li", false)
        )
    }

    /// MariaDB -> Postgres, `rows` rows: the measured job.
    fn transfer_script(&self, rows: u64) -> String {
        let limit = if rows < self.rows {
            format!(" LIMIT {rows}")
        } else {
            String::new()
        };
        format!(
            "{}CREATE TABLE dst WITH ('connector' = 'postgres', 'url' = '{}', 'table' = '{}');\n\
             INSERT OVERWRITE dst SELECT * FROM src{limit};\n",
            self.mysql_table("src", true),
            self.pg.url(),
            self.pg.table
        )
    }

    /// The peer: the `mariadb` client's tab-separated batch output (with
    /// backslash escapes, which is Postgres' text `COPY` format) piped
    /// into `psql \copy ... FROM STDIN`, as one `sh -c` script.
    fn pipe_script(&self) -> String {
        let mut mariadb = vec![self.my.client.display().to_string()];
        mariadb.extend(self.my.connection_args());
        mariadb.extend(
            ["--quick", "--batch", "--skip-column-names", "-e"]
                .iter()
                .map(|s| s.to_string()),
        );
        mariadb.push(format!("SELECT * FROM {}", self.my.table()));
        let psql = [
            self.pg.psql.display().to_string(),
            "-X".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-h".into(),
            self.pg.host.clone(),
            "-p".into(),
            self.pg.port.to_string(),
            "-U".into(),
            self.pg.user.clone(),
            "-d".into(),
            self.pg.database.clone(),
            "-c".into(),
            format!("TRUNCATE {}", self.pg.table),
            "-c".into(),
            format!("\\copy {} FROM STDIN", self.pg.table),
        ];
        let words = |w: &[String]| {
            w.iter()
                .map(|s| shell_quote(s))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!("{} | {}", words(&mariadb), words(&psql))
    }

    /// `sluice run` of `script`.
    fn sluice(&self, script: &str) -> Command {
        let mut cmd = Command::new(&self.sluice);
        cmd.args(["run", "-q", "-e", script]);
        cmd
    }

    /// The command of `job`, moving `rows` rows.
    fn command(&self, job: Job, rows: u64) -> Command {
        match job {
            Job::Sluice => self.sluice(&self.transfer_script(rows)),
            Job::Pipe => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(self.pipe_script());
                cmd
            }
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
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = self.command(job, rows);
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        self.pg.exec(&["CHECKPOINT"])?;
        measure::sync_disks();
        // For the pipe, `wait4` on `sh` reports the largest of the
        // processes it waited for: `mariadb` or `psql`.
        let m = measure::run(&mut cmd)?;
        // Writeback of this run's rows is not the next run's cost.
        measure::sync_disks();
        if !m.status.success() {
            return Ok(Err(format!(
                "{}; log {}:\n{}",
                m.status,
                log.display(),
                log_tail(log)
            )));
        }
        // Also catches a failed `mariadb` in the pipe, whose status `sh`
        // does not return: `psql` then copies fewer rows.
        let written = self.pg.count()?;
        if written != rows {
            return Ok(Err(format!(
                "moved {written} rows, expected {rows}; log {}:\n{}",
                log.display(),
                log_tail(log)
            )));
        }
        Ok(Ok(Run {
            wall_seconds: m.wall.as_secs_f64(),
            max_rss_bytes: m.max_rss_bytes,
        }))
    }

    /// Makes the MariaDB table hold the first `rows` rows of `lineitem`:
    /// kept when it has that many rows, otherwise created afresh and
    /// filled by `sluice run` from the generated Parquet, measured once.
    fn prepare_source(&self) -> Result<Option<Run>> {
        let table = self.my.table();
        self.my.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {table} ({MY_COLUMNS}) ENGINE=InnoDB"
        ))?;
        // Also reads the table once, which the first measured run would pay
        // for otherwise.
        let held = self.my.count()?;
        if held == self.rows {
            eprintln!("{table} already holds {held} rows");
            return Ok(None);
        }
        ensure_parquet(&self.parquet, self.rows)?;
        self.my.exec(&format!(
            "DROP TABLE {table}; CREATE TABLE {table} ({MY_COLUMNS}) ENGINE=InnoDB"
        ))?;
        eprintln!(
            "filling {table} with {} rows from {} with sluice",
            self.rows,
            self.parquet.display()
        );
        let log = self.logs.join("fill-mariadb.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = self.sluice(&self.fill_script());
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        measure::sync_disks();
        let m = measure::run(&mut cmd)?;
        measure::sync_disks();
        if !m.status.success() {
            bail!(
                "filling {table} with sluice failed: {}; log {}:\n{}",
                m.status,
                log.display(),
                log_tail(&log)
            );
        }
        let written = self.my.count()?;
        if written != self.rows {
            bail!(
                "filling {table} with sluice wrote {written} rows, expected {}; log {}",
                self.rows,
                log.display()
            );
        }
        let run = Run {
            wall_seconds: m.wall.as_secs_f64(),
            max_rss_bytes: m.max_rss_bytes,
        };
        eprintln!(
            "filled {table} in {:.2} s, {:.0} MiB",
            run.wall_seconds,
            mib(run.max_rss_bytes)
        );
        Ok(Some(run))
    }
}

/// `s` as one `sh` word: as is when it has only safe characters, else in
/// single quotes.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=@,+%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn render(
    bench: &Bench,
    args: &MysqlArgs,
    setup: &Setup,
    results: &[JobRuns],
    quarter: u64,
    quarter_run: Option<Run>,
) -> String {
    let rows = bench.rows as f64;
    let mut s = String::new();
    let buffer_pool = setup
        .buffer_pool
        .map(|b| format!(", InnoDB buffer pool {:.0} MiB", mib(b)))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "\nmysql: TPC-H lineitem, {} rows, {} at {} (MariaDB {}{buffer_pool}) -> {} at {}; \
         {} rounds, round robin; sluice read partitions: {}\n",
        bench.rows,
        bench.my.table(),
        bench.my.url(),
        setup.my_version,
        bench.pg.table,
        bench.pg.url(),
        args.runs,
        bench.read_partitions
    );
    let _ = writeln!(
        s,
        "{:<26} {:>9} {:>17} {:>12} {:>13}",
        "MariaDB -> Postgres", "wall s", "(min - max)", "rows/s", "peak RSS MiB"
    );
    for job in Job::ALL {
        let Some(r) = results.iter().find(|r| r.job == job) else {
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
    let _ = writeln!(
        s,
        "\n(medians; the pipe's peak RSS is its largest process, mariadb or psql; the servers \
         do much of the work and are not measured; no figure is below this process's own \
         peak, {:.0} MiB)",
        mib(measure::own_peak_rss_bytes())
    );

    match setup.fill {
        Some(fill) => {
            let _ = writeln!(
                s,
                "\nParquet -> MariaDB (sluice, setup): {:.2} s, {:.0} rows/s, peak RSS {:.0} MiB \
                 (one run, for information)",
                fill.wall_seconds,
                rows / fill.wall_seconds,
                mib(fill.max_rss_bytes)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "\nParquet -> MariaDB (sluice, setup): not run, {} already held {} rows",
                bench.my.table(),
                bench.rows
            );
        }
    }

    let _ = writeln!(s, "\npeak RSS of each sluice run, MiB");
    if let Some(r) = results.iter().find(|r| r.job == Job::Sluice) {
        let each: Vec<String> = r
            .runs
            .iter()
            .map(|r| format!("{:.0}", mib(r.max_rss_bytes)))
            .collect();
        let _ = writeln!(s, "  {:<24} {}", Job::Sluice.label(), each.join(", "));
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
    let what = format!("vs {}", Job::Pipe.label());
    match (wall(Job::Sluice), wall(Job::Pipe)) {
        (Some(a), Some(b)) => {
            let _ = writeln!(s, "  {what:<36} {:>6.2}x", a / b);
        }
        _ => {
            let _ = writeln!(s, "  {what:<36} {:>7}", "-");
        }
    }

    let _ = writeln!(s, "\npeak RSS flatness, {}", Job::Sluice.label());
    let full = results
        .iter()
        .find(|r| r.job == Job::Sluice && r.failure.is_none())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(read_partitions: u32) -> Bench {
        Bench {
            sluice: PathBuf::from("sluice"),
            my: My {
                client: PathBuf::from("mariadb"),
                host: "127.0.0.1".into(),
                port: 3306,
                user: "root".into(),
                database: "test".into(),
            },
            pg: Pg {
                psql: PathBuf::from("psql"),
                host: "127.0.0.1".into(),
                port: 5432,
                user: "postgres".into(),
                database: "test".into(),
                table: PG_TABLE.into(),
            },
            parquet: PathBuf::from("/d/lineitem-100.parquet"),
            logs: PathBuf::from("/d/out/logs"),
            rows: 100,
            read_partitions,
        }
    }

    #[test]
    fn transfer_script_reads_mysql_and_overwrites_postgres() {
        let b = bench(1);
        let full = b.transfer_script(100);
        assert!(full.starts_with(
            "CREATE TABLE src WITH ('connector' = 'mysql', \
             'url' = 'mysql://root@127.0.0.1:3306/test', 'table' = 'bench_lineitem');\n"
        ));
        assert!(full.contains(
            "CREATE TABLE dst WITH ('connector' = 'postgres', \
             'url' = 'postgres://postgres@127.0.0.1:5432/test', \
             'table' = 'public.bench_lineitem_from_mysql');\n"
        ));
        assert!(full.ends_with("INSERT OVERWRITE dst SELECT * FROM src;\n"));
        assert!(!full.contains("scan.partition"));
        assert!(
            b.transfer_script(25)
                .ends_with("INSERT OVERWRITE dst SELECT * FROM src LIMIT 25;\n")
        );
    }

    #[test]
    fn read_partitions_split_the_source_only() {
        let b = bench(4);
        assert!(b.transfer_script(100).contains(
            "'table' = 'bench_lineitem', 'scan.partition.column' = 'l_orderkey', \
             'scan.partition.num' = '4');\n"
        ));
        assert!(!b.fill_script().contains("scan.partition"));
    }

    #[test]
    fn fill_script_loads_the_parquet() {
        assert_eq!(
            bench(1).fill_script(),
            "CREATE EXTERNAL TABLE src STORED AS PARQUET LOCATION '/d/lineitem-100.parquet';\n\
             CREATE TABLE my_li WITH ('connector' = 'mysql', \
             'url' = 'mysql://root@127.0.0.1:3306/test', 'table' = 'bench_lineitem');\n\
             INSERT OVERWRITE my_li SELECT * FROM src;\n"
        );
    }

    #[test]
    fn pipe_script_quotes_for_sh() {
        assert_eq!(
            bench(1).pipe_script(),
            "mariadb -h 127.0.0.1 -P 3306 -u root --quick --batch --skip-column-names \
             -e 'SELECT * FROM test.bench_lineitem' | psql -X -v ON_ERROR_STOP=1 \
             -h 127.0.0.1 -p 5432 -U postgres -d test \
             -c 'TRUNCATE public.bench_lineitem_from_mysql' \
             -c '\\copy public.bench_lineitem_from_mysql FROM STDIN'"
        );
    }

    #[test]
    fn shell_quote_escapes_quotes() {
        assert_eq!(shell_quote("abc-1.2/x"), "abc-1.2/x");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
