-- Nightly: one day of orders from the shop's MySQL/MariaDB database into the
-- lake (one Parquet partition per day, replaced on re-run), then that day's
-- revenue per country upserted into the Postgres warehouse. Re-running a day
-- rewrites the same partition and the same rows: nothing doubles.
--
--   SLUICE_SECRET_MYSQL_PASSWORD=... SLUICE_SECRET_PG_PASSWORD=... \
--   sluice run examples/nightly_mysql_to_postgres.sql --var run_date=2026-12-01 \
--     --var mysql_url=mysql://root@127.0.0.1:3306/shop \
--     --var pg_url=postgres://postgres@127.0.0.1:5432/test --var pg_schema=public \
--     --var lake=/data/lake
--
-- MySQL holds customers (id, name, country) and orders (id, customer_id,
-- amount, created_at). The Postgres table must exist:
--   CREATE TABLE daily_revenue (day date, country text, orders bigint,
--                               revenue numeric(12, 2), PRIMARY KEY (day, country));
SET 'pipeline.name' = 'nightly_mysql_to_postgres';

CREATE CONNECTION shop WITH (
  'type' = 'mysql',
  'url' = '${mysql_url}',
  'password' = secret('MYSQL_PASSWORD')
);
CREATE CONNECTION warehouse WITH (
  'type' = 'postgres',
  'url' = '${pg_url}',
  'password' = secret('PG_PASSWORD')
);

-- Column lists are read from the databases.
CREATE TABLE shop_orders WITH ('connection' = 'shop', 'table' = 'orders');
CREATE TABLE shop_customers WITH ('connection' = 'shop', 'table' = 'customers');

CREATE TABLE lake_orders (
  id BIGINT, customer_id INT, amount DECIMAL(10, 2), created_at TIMESTAMP, country VARCHAR,
  dt VARCHAR
) PARTITIONED BY (dt) WITH (
  'connector' = 'filesystem',
  'path' = '${lake}/orders/',
  'format' = 'parquet'
);

CREATE TABLE daily_revenue (day DATE, country VARCHAR, orders BIGINT, revenue DECIMAL(12, 2),
                            PRIMARY KEY (day, country) NOT ENFORCED)
  WITH ('connection' = 'warehouse', 'table' = '${pg_schema}.daily_revenue');

INSERT OVERWRITE lake_orders PARTITION (dt = '${run_date}')
SELECT o.id, o.customer_id, o.amount, o.created_at, c.country
FROM shop_orders o JOIN shop_customers c ON o.customer_id = c.id
WHERE o.created_at >= TIMESTAMP '${run_date} 00:00:00'
  AND o.created_at < TIMESTAMP '${run_date} 00:00:00' + INTERVAL '1' DAY;

INSERT INTO daily_revenue
SELECT CAST(dt AS DATE), country, count(*), sum(amount)
FROM lake_orders
WHERE dt = '${run_date}'
GROUP BY dt, country;
