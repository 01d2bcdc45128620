-- Clean the raw orders export and publish it as a Parquet table partitioned
-- by day. Re-running it replaces the table atomically: readers see the old
-- or the new version, never a mix.
SET 'pipeline.name' = 'orders_to_lake';

CREATE EXTERNAL TABLE raw_orders (
  order_id    BIGINT,
  customer_id BIGINT,
  order_ts    TIMESTAMP,
  status      VARCHAR,
  amount      DECIMAL(12, 2),
  currency    VARCHAR
) STORED AS CSV LOCATION 'examples/data/orders.csv'
OPTIONS ('format.has_header' 'true');

CREATE TABLE orders (
  order_id    BIGINT,
  customer_id BIGINT,
  order_ts    TIMESTAMP,
  status      VARCHAR,
  amount      DECIMAL(12, 2),
  currency    VARCHAR,
  order_date  DATE,
  PRIMARY KEY (order_id) NOT ENFORCED
) PARTITIONED BY (order_date) WITH (
  'connector' = 'filesystem',
  'path' = 'examples/out/lake/orders/',
  'format' = 'parquet',
  'format.compression' = 'zstd(3)'
);

INSERT OVERWRITE orders
SELECT order_id,
       customer_id,
       order_ts,
       upper(trim(status)),
       amount,
       upper(currency),
       CAST(order_ts AS DATE)
FROM raw_orders
WHERE amount IS NOT NULL;

SELECT order_date, count(*) AS orders, sum(amount) AS revenue
FROM orders
GROUP BY order_date
ORDER BY order_date;
