-- Publish the lake written by orders_to_parquet.sql to Postgres:
-- customers are upserted on their key, the daily revenue table is replaced
-- inside one Postgres transaction (views and grants on it survive), and the
-- order facts of one day are appended once, however often the script re-runs.
--
--   sluice run examples/orders_to_parquet.sql
--   SLUICE_SECRET_PG_PASSWORD=... sluice run examples/lake_to_postgres.sql \
--     --var run_date=2024-03-03 --var pg_url=postgres://postgres@127.0.0.1:5432/test
--
-- The Postgres tables must exist (Sluice does not create database tables):
--   CREATE TABLE customers (customer_id bigint PRIMARY KEY, name text, country text);
--   CREATE TABLE daily_revenue (order_date date, country text, orders bigint, revenue numeric(14, 2));
--   CREATE TABLE order_facts (order_id bigint, customer_id bigint, order_date date, amount numeric(12, 2));
SET 'pipeline.name' = 'lake_to_postgres';

CREATE CONNECTION pg WITH (
  'type' = 'postgres',
  'url' = '${pg_url}',
  'password' = secret('PG_PASSWORD')
);

CREATE EXTERNAL TABLE lake_orders
STORED AS PARQUET
PARTITIONED BY (order_date)
LOCATION 'examples/out/lake/orders/';

CREATE EXTERNAL TABLE customer_csv
STORED AS CSV
LOCATION 'examples/data/customers.csv'
OPTIONS ('format.has_header' 'true');

-- Column lists are read from Postgres.
CREATE TABLE customers (customer_id BIGINT, name VARCHAR, country VARCHAR,
                        PRIMARY KEY (customer_id) NOT ENFORCED)
  WITH ('connection' = 'pg', 'table' = 'public.customers');
CREATE TABLE daily_revenue WITH ('connection' = 'pg', 'table' = 'public.daily_revenue');
CREATE TABLE order_facts WITH ('connection' = 'pg', 'table' = 'public.order_facts');

INSERT INTO customers SELECT customer_id, name, country FROM customer_csv;

INSERT OVERWRITE daily_revenue
SELECT o.order_date, c.country, count(*) AS orders, sum(o.amount) AS revenue
FROM lake_orders o JOIN customer_csv c ON o.customer_id = c.customer_id
WHERE o.status <> 'CANCELLED'
GROUP BY o.order_date, c.country;

INSERT INTO order_facts
SELECT order_id, customer_id, order_date, amount
FROM lake_orders
WHERE order_date = '${run_date}';

SELECT country, orders, revenue FROM daily_revenue WHERE order_date = '${run_date}' ORDER BY revenue DESC;
