-- Benchmark J1: TPC-H lineitem CSV -> rows shipped since 1995 -> zstd(3)
-- Parquet, row groups of at most 1,048,576 rows.
-- Run by `sluice-bench j1` as
--   sluice run --quiet --target-partitions 4 --var data=DIR --var out=DIR benchmarks/j1.sql
-- where DIR `data` holds lineitem.csv and `out` receives the Parquet files.
-- Keep in step with src/bin/j1_datafusion.rs and python/.

CREATE EXTERNAL TABLE lineitem (
  l_orderkey      BIGINT,
  l_partkey       BIGINT,
  l_suppkey       BIGINT,
  l_linenumber    INT,
  l_quantity      DECIMAL(15, 2),
  l_extendedprice DECIMAL(15, 2),
  l_discount      DECIMAL(15, 2),
  l_tax           DECIMAL(15, 2),
  l_returnflag    VARCHAR,
  l_linestatus    VARCHAR,
  l_shipdate      DATE,
  l_commitdate    DATE,
  l_receiptdate   DATE,
  l_shipinstruct  VARCHAR,
  l_shipmode      VARCHAR,
  l_comment       VARCHAR
) STORED AS CSV LOCATION '${data}/lineitem.csv'
OPTIONS ('format.has_header' 'true');

CREATE TABLE j1_out (
  l_orderkey      BIGINT,
  l_partkey       BIGINT,
  l_suppkey       BIGINT,
  l_linenumber    INT,
  l_quantity      DECIMAL(15, 2),
  l_extendedprice DECIMAL(15, 2),
  l_discount      DECIMAL(15, 2),
  l_tax           DECIMAL(15, 2),
  l_returnflag    VARCHAR,
  l_linestatus    VARCHAR,
  l_shipdate      DATE,
  l_commitdate    DATE,
  l_receiptdate   DATE,
  l_shipinstruct  VARCHAR,
  l_shipmode      VARCHAR,
  revenue         DECIMAL(18, 4)
) WITH (
  'connector' = 'filesystem',
  'path' = '${out}/',
  'format' = 'parquet',
  'format.compression' = 'zstd(3)',
  'format.max_row_group_size' = '1048576'
);

INSERT OVERWRITE j1_out
SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity,
       l_extendedprice, l_discount, l_tax, l_returnflag, l_linestatus,
       l_shipdate, l_commitdate, l_receiptdate, l_shipinstruct, l_shipmode,
       CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(18, 4)) AS revenue
FROM lineitem
WHERE l_shipdate >= DATE '1995-01-01';
