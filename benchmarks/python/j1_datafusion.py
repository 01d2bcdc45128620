"""Benchmark J1 with DataFusion's Python package: TPC-H lineitem CSV -> rows
shipped since 1995 -> zstd(3) Parquet, row groups of at most 1,048,576 rows,
one file per partition. The same statements as src/bin/j1_datafusion.rs.

    python j1_datafusion.py LINEITEM_CSV OUT_DIR [TARGET_PARTITIONS]

Run by `sluice-bench j1`; needs `pip install datafusion`.
"""

import sys

import datafusion
from datafusion import SessionConfig, SessionContext


def sql_string(text: str) -> str:
    """`text` as the body of a SQL string literal."""
    return text.replace("'", "''")


def main() -> None:
    csv, out = sys.argv[1], sys.argv[2]
    partitions = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    config = (
        SessionConfig()
        .with_target_partitions(partitions)
        .set("datafusion.execution.minimum_parallel_output_files", str(partitions))
    )
    ctx = SessionContext(config)
    ctx.sql(
        f"""
        CREATE EXTERNAL TABLE lineitem (
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
        ) STORED AS CSV LOCATION '{sql_string(csv)}'
        OPTIONS ('format.has_header' 'true')
        """
    ).collect()
    batches = ctx.sql(
        f"""
        COPY (
            SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity,
                   l_extendedprice, l_discount, l_tax, l_returnflag, l_linestatus,
                   l_shipdate, l_commitdate, l_receiptdate, l_shipinstruct, l_shipmode,
                   CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(18, 4)) AS revenue
            FROM lineitem
            WHERE l_shipdate >= DATE '1995-01-01'
        ) TO '{sql_string(out)}/' STORED AS PARQUET
        OPTIONS ('format.compression' 'zstd(3)', 'format.max_row_group_size' '1048576')
        """
    ).collect()
    count = batches[0].column(0)[0].as_py()
    print(f"datafusion-python {datafusion.__version__}: COPY wrote {count} rows")


if __name__ == "__main__":
    main()
