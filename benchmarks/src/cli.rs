//! Command line of `sluice-bench`.

use std::path::PathBuf;

use crate::j1::Peer;

/// Benchmarks that run Sluice and its peers on the same job in one
/// invocation and print medians and ratios.
#[derive(Debug, clap::Parser)]
#[command(name = "sluice-bench", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// What to run.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// J1: TPC-H lineitem CSV, filter on l_shipdate, project, write zstd(3)
    /// Parquet; Sluice against DataFusion (Rust), DuckDB and DataFusion
    /// (Python), run round robin.
    J1(J1Args),
    /// Generate the TPC-H lineitem CSV only (skipped when already there).
    Gen(DataArgs),
    /// Flight SQL load: concurrent clients run mixed small queries while
    /// one bulk-ingests, against one `sluice server`.
    FlightLoad(FlightLoadArgs),
    /// The 22 TPC-H queries run as stage graphs (embedded; staged batch
    /// through the shuffle store, or streaming with live exchanges) against
    /// DataFusion alone, in one process.
    TpchStaged(TpchStagedArgs),
    /// Shuffle throughput: about 2 GB through the shuffle writer and
    /// reader, against one IPC file per partition.
    Shuffle(ShuffleArgs),
    /// Shuffle worker memory: about 2 GB through one `sluice shuffle-worker`
    /// with a --memory-limit; reports its peak RSS against the limit.
    ShuffleWorker(ShuffleWorkerArgs),
    /// Postgres connector: Parquet -> Postgres and Postgres -> Parquet with
    /// `sluice run`, against `psql \copy` of CSV and binary files, round
    /// robin.
    Postgres(PostgresArgs),
    /// Generate the Parquet file of `postgres` only (run as a child of it).
    #[command(hide = true)]
    PostgresGen(PostgresGenArgs),
    /// MySQL connector: MariaDB -> Postgres with `sluice run`, against
    /// `mariadb --batch | psql \copy`, round robin.
    Mysql(MysqlArgs),
}

/// `sluice-bench postgres`.
#[derive(Debug, clap::Args)]
pub(crate) struct PostgresArgs {
    /// Rows of TPC-H lineitem to move.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rows: u64,

    /// Rounds; each round runs every job once, in turn; medians are
    /// reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: u32,

    /// Folder for the generated Parquet, the psql peers' CSV and binary
    /// files, and the outputs and logs (`out/`).
    #[arg(
        long,
        env = "SLUICE_BENCH_PG_DATA",
        default_value = "target/bench-data/pg"
    )]
    pub(crate) data: PathBuf,

    /// The `sluice` binary to measure (default: `sluice` next to this
    /// program).
    #[arg(long, env = "SLUICE_BENCH_SLUICE")]
    pub(crate) sluice: Option<PathBuf>,

    /// The `psql` client of the peers.
    #[arg(long, default_value = "psql")]
    pub(crate) psql: PathBuf,

    /// Postgres host.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,

    /// Postgres port.
    #[arg(long, default_value_t = 5432)]
    pub(crate) port: u16,

    /// Postgres user (trust or `.pgpass` authentication).
    #[arg(long, default_value = "postgres")]
    pub(crate) user: String,

    /// Postgres database.
    #[arg(long, default_value = "test")]
    pub(crate) database: String,

    /// Table in the `public` schema; dropped and created at the start.
    #[arg(long, default_value = "bench_lineitem")]
    pub(crate) table: String,

    /// Sluice's parallel range reads of the export ('scan.partition.num' on
    /// l_orderkey); 1 reads with one `COPY`, like psql.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) read_partitions: u32,
}

/// `sluice-bench mysql`.
#[derive(Debug, clap::Args)]
pub(crate) struct MysqlArgs {
    /// Rows of TPC-H lineitem to move.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rows: u64,

    /// Rounds; each round runs every job once, in turn; medians are
    /// reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: u32,

    /// Folder for the generated Parquet (which fills the MariaDB table) and
    /// the logs (`out/logs/`).
    #[arg(
        long,
        env = "SLUICE_BENCH_MY_DATA",
        default_value = "target/bench-data/mysql"
    )]
    pub(crate) data: PathBuf,

    /// The `sluice` binary to measure (default: `sluice` next to this
    /// program).
    #[arg(long, env = "SLUICE_BENCH_SLUICE")]
    pub(crate) sluice: Option<PathBuf>,

    /// The `mariadb` client of the peer.
    #[arg(long, default_value = "mariadb")]
    pub(crate) mariadb_client: PathBuf,

    /// MariaDB host.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) my_host: String,

    /// MariaDB port.
    #[arg(long, default_value_t = 3306)]
    pub(crate) my_port: u16,

    /// MariaDB user (no password).
    #[arg(long, default_value = "root")]
    pub(crate) my_user: String,

    /// MariaDB database; holds the source table `bench_lineitem`, kept
    /// between invocations.
    #[arg(long, default_value = "test")]
    pub(crate) my_database: String,

    /// The `psql` client of the peer.
    #[arg(long, default_value = "psql")]
    pub(crate) psql: PathBuf,

    /// Postgres host.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,

    /// Postgres port.
    #[arg(long, default_value_t = 5432)]
    pub(crate) port: u16,

    /// Postgres user (trust or `.pgpass` authentication).
    #[arg(long, default_value = "postgres")]
    pub(crate) user: String,

    /// Postgres database; `public.bench_lineitem_from_mysql` is dropped and
    /// created at the start.
    #[arg(long, default_value = "test")]
    pub(crate) database: String,

    /// Sluice's parallel range reads of the MariaDB table
    /// ('scan.partition.num' on l_orderkey); 1 reads with one query, like
    /// the mariadb client.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) read_partitions: u32,
}

/// `sluice-bench postgres-gen`.
#[derive(Debug, clap::Args)]
pub(crate) struct PostgresGenArgs {
    /// The Parquet file to write.
    #[arg(long)]
    pub(crate) out: PathBuf,

    /// Rows of TPC-H lineitem to write.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rows: u64,
}

/// `sluice-bench tpch-staged`.
#[derive(Debug, clap::Args)]
pub(crate) struct TpchStagedArgs {
    /// Folder for the generated Parquet (`sf<SCALE>/<table>/`).
    #[arg(
        long,
        env = "SLUICE_BENCH_DATA",
        default_value = "target/bench-data/tpch"
    )]
    pub(crate) data: PathBuf,

    /// TPC-H scale factor.
    #[arg(long, default_value_t = 1.0, value_parser = parse_scale_factor)]
    pub(crate) scale_factor: f64,

    /// Rounds per query; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: u32,

    /// `target_partitions` of both engines.
    #[arg(long, default_value_t = 2)]
    pub(crate) partitions: usize,

    /// Sluice's task slots.
    #[arg(long, default_value_t = 2)]
    pub(crate) slots: usize,

    /// How Sluice's stage graphs run: `batch` (staged, through the shuffle
    /// store) or `streaming` (every task at once, live exchanges).
    #[arg(long, default_value = "batch", value_parser = ["batch", "streaming"])]
    pub(crate) mode: String,

    /// Only these queries, comma-separated (`q10,q18`); all 22 by default.
    #[arg(long)]
    pub(crate) queries: Option<String>,

    /// Also run every query on a loopback cluster of real processes: a
    /// coordinator, 2 executors (slots/2 each, so the cluster has the same
    /// task slots) and a shuffle worker, over Flight SQL.
    #[arg(long)]
    pub(crate) cluster: bool,

    /// The `sluice` binary of the cluster (default: `sluice` next to this
    /// program).
    #[arg(long, env = "SLUICE_BENCH_SLUICE")]
    pub(crate) sluice: Option<PathBuf>,
}

/// `sluice-bench shuffle`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShuffleArgs {
    /// Gigabytes (in memory, 10^9 bytes) to shuffle per run.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) gb: f64,

    /// Output partitions.
    #[arg(long, default_value_t = 8)]
    pub(crate) partitions: usize,

    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: u32,

    /// Block compression: lz4, zstd or none.
    #[arg(long, default_value = "lz4")]
    pub(crate) compression: String,

    /// Directory (on the disk to measure) for the written data.
    #[arg(long, default_value = "target")]
    pub(crate) dir: PathBuf,
}

/// `sluice-bench shuffle-worker`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShuffleWorkerArgs {
    /// The `sluice` binary that runs the worker.
    #[arg(
        long,
        env = "SLUICE_BENCH_SLUICE",
        default_value = "target/release/sluice"
    )]
    pub(crate) sluice: PathBuf,

    /// The worker's --memory-limit.
    #[arg(long, default_value = "256MB")]
    pub(crate) memory_limit: String,

    /// Gigabytes (10^9 bytes) of blocks to push.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) gb: f64,

    /// Concurrent writers (task attempts).
    #[arg(long, default_value_t = 8)]
    pub(crate) streams: usize,

    /// Output partitions per attempt.
    #[arg(long, default_value_t = 8)]
    pub(crate) partitions: usize,

    /// Directory (on the disk to measure) for the worker's store.
    #[arg(long, default_value = "target")]
    pub(crate) dir: PathBuf,
}

/// `sluice-bench flight-load`.
#[derive(Debug, clap::Args)]
pub(crate) struct FlightLoadArgs {
    /// The `sluice` binary to serve with.
    #[arg(
        long,
        env = "SLUICE_BENCH_SLUICE",
        default_value = "target/release/sluice"
    )]
    pub(crate) sluice: PathBuf,

    /// Concurrent query clients.
    #[arg(long, default_value_t = 32)]
    pub(crate) clients: usize,

    /// How long to run.
    #[arg(long, default_value_t = 60)]
    pub(crate) seconds: u64,
}

/// Where the data lives and how much of it.
#[derive(Debug, clap::Args)]
pub(crate) struct DataArgs {
    /// Folder for the generated data (`sf<SCALE>/lineitem.csv`) and the
    /// peers' outputs and logs (`out/`).
    #[arg(long, env = "SLUICE_BENCH_DATA", default_value = "target/bench-data")]
    pub(crate) data: PathBuf,

    /// TPC-H scale factor: 1 is about 6M lineitem rows (770 MB of CSV);
    /// 0.01 makes a smoke run.
    #[arg(long, env = "SLUICE_BENCH_SCALE_FACTOR", default_value_t = 1.0, value_parser = parse_scale_factor)]
    pub(crate) scale_factor: f64,
}

/// `sluice-bench j1`.
#[derive(Debug, clap::Args)]
pub(crate) struct J1Args {
    #[command(flatten)]
    pub(crate) data: DataArgs,

    /// Rounds; each round runs every peer once, in turn.
    #[arg(long, env = "SLUICE_BENCH_RUNS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: u32,

    /// The `sluice` binary to measure.
    #[arg(
        long,
        env = "SLUICE_BENCH_SLUICE",
        default_value = "target/release/sluice"
    )]
    pub(crate) sluice: PathBuf,

    /// The DataFusion-only peer (default: `j1_datafusion` next to this
    /// program).
    #[arg(long, env = "SLUICE_BENCH_DATAFUSION")]
    pub(crate) datafusion: Option<PathBuf>,

    /// Python interpreter that has the `duckdb` and `datafusion` packages.
    #[arg(long, env = "SLUICE_BENCH_PYTHON", default_value = ".venv/bin/python")]
    pub(crate) python: PathBuf,

    /// Parallelism pinned for every peer: target partitions, DuckDB
    /// threads, and so the number of output files.
    #[arg(long, env = "SLUICE_BENCH_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) partitions: u32,

    /// Peers to run, comma separated.
    #[arg(
        long,
        env = "SLUICE_BENCH_PEERS",
        value_enum,
        value_delimiter = ',',
        default_value = "sluice,datafusion,duckdb,datafusion-python"
    )]
    pub(crate) peers: Vec<Peer>,
}

fn parse_scale_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(sf) if sf.is_finite() && sf > 0.0 => Ok(sf),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}
