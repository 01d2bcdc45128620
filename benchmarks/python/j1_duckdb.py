"""Benchmark J1 with DuckDB: TPC-H lineitem CSV -> rows shipped since 1995 ->
zstd(3) Parquet, row groups of at most 1,048,576 rows, one file per thread.

    python j1_duckdb.py LINEITEM_CSV OUT_DIR [THREADS]

Run by `sluice-bench j1`; needs `pip install duckdb`. Keep in step with
benchmarks/j1.sql. DuckDB's other settings are its defaults.
"""

import sys

import duckdb


def sql_string(text: str) -> str:
    """`text` as the body of a SQL string literal."""
    return text.replace("'", "''")


def main() -> None:
    csv, out = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    count = con.execute(
        f"""
        COPY (
            SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity,
                   l_extendedprice, l_discount, l_tax, l_returnflag, l_linestatus,
                   l_shipdate, l_commitdate, l_receiptdate, l_shipinstruct, l_shipmode,
                   CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(18, 4)) AS revenue
            FROM read_csv('{sql_string(csv)}', header = true, delim = ',', quote = '"',
                columns = {{
                    'l_orderkey': 'BIGINT',
                    'l_partkey': 'BIGINT',
                    'l_suppkey': 'BIGINT',
                    'l_linenumber': 'INTEGER',
                    'l_quantity': 'DECIMAL(15, 2)',
                    'l_extendedprice': 'DECIMAL(15, 2)',
                    'l_discount': 'DECIMAL(15, 2)',
                    'l_tax': 'DECIMAL(15, 2)',
                    'l_returnflag': 'VARCHAR',
                    'l_linestatus': 'VARCHAR',
                    'l_shipdate': 'DATE',
                    'l_commitdate': 'DATE',
                    'l_receiptdate': 'DATE',
                    'l_shipinstruct': 'VARCHAR',
                    'l_shipmode': 'VARCHAR',
                    'l_comment': 'VARCHAR'
                }})
            WHERE l_shipdate >= DATE '1995-01-01'
        ) TO '{sql_string(out)}' (
            FORMAT PARQUET,
            COMPRESSION ZSTD,
            COMPRESSION_LEVEL 3,
            ROW_GROUP_SIZE 1048576,
            PER_THREAD_OUTPUT true
        )
        """
    ).fetchall()
    print(f"duckdb {duckdb.__version__}: COPY wrote {count[0][0]} rows")


if __name__ == "__main__":
    main()
