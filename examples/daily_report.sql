-- Revenue per country for one day, from the lake written by
-- orders_to_parquet.sql. Run with: --var run_date=2024-03-03
CREATE EXTERNAL TABLE orders
STORED AS PARQUET
PARTITIONED BY (order_date)
LOCATION 'examples/out/lake/orders/';

CREATE EXTERNAL TABLE customers
STORED AS CSV
LOCATION 'examples/data/customers.csv'
OPTIONS ('format.has_header' 'true');

COPY (
  SELECT c.country,
         count(*)      AS orders,
         sum(o.amount) AS revenue
  FROM orders o
  JOIN customers c ON o.customer_id = c.customer_id
  WHERE o.order_date = '${run_date}'
    AND o.status <> 'CANCELLED'
  GROUP BY c.country
  ORDER BY revenue DESC
) TO 'examples/out/reports/revenue_${run_date}.csv' STORED AS CSV;

CREATE EXTERNAL TABLE report
STORED AS CSV
LOCATION 'examples/out/reports/revenue_${run_date}.csv';

SELECT * FROM report;
