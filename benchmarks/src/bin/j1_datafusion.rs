//! J1 with plain DataFusion, built from the same Cargo.lock as `sluice`: the
//! honest measure of what Sluice adds on top of DataFusion.
//!
//! `j1_datafusion LINEITEM_CSV OUT_DIR [--target-partitions N]` registers the
//! CSV with an explicit schema and runs one `COPY (SELECT ...) TO` writing
//! zstd(3) Parquet with row groups of at most 1,048,576 rows, in N files.
//! Keep the SQL in step with `benchmarks/j1.sql` and `benchmarks/python/`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{SessionConfig, SessionContext};

/// J1 with plain DataFusion.
#[derive(Debug, Parser)]
struct Args {
    /// The TPC-H lineitem CSV, with a header.
    csv: PathBuf,
    /// Folder to write the Parquet files into.
    out: PathBuf,
    /// Target partitions, and so output files.
    #[arg(long, default_value_t = 4)]
    target_partitions: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = SessionConfig::new().with_target_partitions(args.target_partitions);
    // One output file per partition, as Sluice's sink writes (the default is
    // 4; pinned so the file count follows --target-partitions).
    config.options_mut().set(
        "datafusion.execution.minimum_parallel_output_files",
        &args.target_partitions.to_string(),
    )?;
    let ctx = SessionContext::new_with_config(config);

    let create = format!(
        "CREATE EXTERNAL TABLE lineitem (
            l_orderkey BIGINT,
            l_partkey BIGINT,
            l_suppkey BIGINT,
            l_linenumber INT,
            l_quantity DECIMAL(15, 2),
            l_extendedprice DECIMAL(15, 2),
            l_discount DECIMAL(15, 2),
            l_tax DECIMAL(15, 2),
            l_returnflag VARCHAR,
            l_linestatus VARCHAR,
            l_shipdate DATE,
            l_commitdate DATE,
            l_receiptdate DATE,
            l_shipinstruct VARCHAR,
            l_shipmode VARCHAR,
            l_comment VARCHAR
        ) STORED AS CSV LOCATION '{}'
        OPTIONS ('format.has_header' 'true')",
        sql_string(&args.csv)
    );
    let copy = format!(
        "COPY (
            SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity,
                   l_extendedprice, l_discount, l_tax, l_returnflag, l_linestatus,
                   l_shipdate, l_commitdate, l_receiptdate, l_shipinstruct, l_shipmode,
                   CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(18, 4)) AS revenue
            FROM lineitem
            WHERE l_shipdate >= DATE '1995-01-01'
        ) TO '{}/' STORED AS PARQUET
        OPTIONS ('format.compression' 'zstd(3)', 'format.max_row_group_size' '1048576')",
        sql_string(&args.out)
    );
    ctx.sql(&create)
        .await
        .context("registering lineitem")?
        .collect()
        .await?;
    let result = ctx
        .sql(&copy)
        .await
        .context("planning the COPY")?
        .collect()
        .await
        .context("running the COPY")?;
    // The rows written, as DataFusion reports them.
    println!("{}", pretty_format_batches(&result)?);
    Ok(())
}

/// `path` as the body of a SQL string literal.
fn sql_string(path: &std::path::Path) -> String {
    path.display().to_string().replace('\'', "''")
}
