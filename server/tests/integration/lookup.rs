//! Lookup joins (`JOIN dim FOR SYSTEM_TIME AS OF ...`) against dimension
//! tables in the real Postgres and MariaDB, through `sluice run`.

use sluice_sql_tests::{Failed, Trial};

use crate::mysql::My;
use crate::postgres::Pg;
use crate::support::{Scratch, check, stderr, stdout};

pub(crate) fn trials() -> Vec<Trial> {
    vec![
        Trial::test("lookup::postgres_dimension", postgres_dimension),
        Trial::test("lookup::mysql_dimension", mysql_dimension),
    ]
}

/// Twelve orders in one CSV file; customer 5 does not exist and one order
/// has no customer.
const ORDERS: &str = "order_id,cust_id,amount\n\
    1,1,10\n2,2,20\n3,1,30\n4,3,40\n5,5,50\n6,2,60\n\
    7,1,70\n8,,80\n9,3,90\n10,2,100\n11,5,110\n12,1,120\n";

const CUSTOMERS: &str =
    "(1, 'alice', 'EU'), (2, 'bob', 'US'), (3, 'carol', 'EU'), (4, 'dave', 'US')";

fn postgres_dimension() -> Result<(), Failed> {
    let pg = Pg::new()?;
    let s = &pg.schema;
    pg.exec(&format!(
        "CREATE TABLE {s}.customers (id INT PRIMARY KEY, name TEXT, region TEXT);
         INSERT INTO {s}.customers VALUES {CUSTOMERS};"
    ))?;
    let cached = pg.declare(
        "customers",
        "customers",
        ", 'lookup.cache.max-rows' = '100'",
    );
    let uncached = pg.declare(
        "customers_nocache",
        "customers",
        ", 'lookup.cache.max-rows' = '0'",
    );
    lookup_matches_plain_join(&cached, &uncached, "PostgresScanExec")?;
    unsendable_lookup_fails_at_once(&cached)
}

/// A lookup join cannot travel to an executor yet. With every task's
/// plan sent through the executor wire format, the statement fails at
/// once, naming the operator: a plan that cannot be encoded is not retried.
fn unsendable_lookup_fails_at_once(declare: &str) -> Result<(), Failed> {
    let sc = Scratch::new();
    sc.write("in/orders.csv", ORDERS);
    let script = format!(
        "SET 'execution.runtime-mode' = 'batch';\n\
         SET 'sluice.serialize_stage_plans' = 'true';\n\
         SET 'sluice.shuffle_dir' = 'shuffle';\n\
         SET datafusion.execution.target_partitions = 2;\n\
         CREATE EXTERNAL TABLE orders (order_id BIGINT, cust_id INT, amount DOUBLE) \
           STORED AS CSV LOCATION 'in/orders.csv' OPTIONS ('format.has_header' 'true');\n\
         {declare};\n\
         SELECT c.region, count(*) FROM orders o JOIN customers FOR SYSTEM_TIME AS OF \
           o.proc_time AS c ON o.cust_id = c.id GROUP BY c.region;\n"
    );
    let o = sc.run(&["-e", &script], None);
    let err = crate::support::stderr(&o);
    check(
        o.status.code() == Some(1)
            && err.contains("LookupJoinExec cannot be sent to an executor yet")
            && !err.contains("times; last error")
            && !err.contains("Plan: "),
        "an unsendable plan fails at once, naming the operator",
        &o,
    )
}

fn mysql_dimension() -> Result<(), Failed> {
    let my = My::new()?;
    my.exec(&format!(
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(20), region VARCHAR(4));
         INSERT INTO customers VALUES {CUSTOMERS};"
    ))?;
    let cached = my.declare(
        "customers",
        "customers",
        ", 'lookup.cache.max-rows' = '100', 'lookup.cache.ttl' = '10min'",
    );
    let uncached = my.declare(
        "customers_nocache",
        "customers",
        ", 'lookup.cache.max-rows' = '0'",
    );
    lookup_matches_plain_join(&cached, &uncached, "MySqlScanExec")
}

/// The value of `name=N` in the first line of `text` that mentions
/// `operator` and the metric.
fn metric(text: &str, operator: &str, name: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.contains(operator) && l.contains(&format!("{name}=")))?;
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn lookup_matches_plain_join(cached: &str, uncached: &str, scan: &str) -> Result<(), Failed> {
    let sc = Scratch::new();
    sc.write("in/orders.csv", ORDERS);
    let lookup = |table: &str, join: &str| {
        format!(
            "SELECT o.order_id, o.amount, c.name, c.region FROM orders o \
             {join} {table} FOR SYSTEM_TIME AS OF o.proc_time AS c ON o.cust_id = c.id \
             ORDER BY o.order_id"
        )
    };
    let plain = |join: &str| {
        format!(
            "SELECT o.order_id, o.amount, c.name, c.region FROM orders o \
             {join} customers AS c ON o.cust_id = c.id ORDER BY o.order_id"
        )
    };
    // One partition and small batches: the cache is shared by batches,
    // and its counters are exact.
    let script = format!(
        "SET datafusion.execution.target_partitions = 1;\n\
         SET datafusion.execution.batch_size = 3;\n\
         CREATE EXTERNAL TABLE orders (order_id BIGINT, cust_id INT, amount DOUBLE) \
           STORED AS CSV LOCATION 'in/orders.csv' OPTIONS ('format.has_header' 'true');\n\
         {cached};\n{uncached};\n\
         EXPLAIN {};\n\
         EXPLAIN ANALYZE {};\n\
         EXPLAIN ANALYZE {};\n\
         {};\n{};\n{};\n{};\n\
         {};\n",
        lookup("customers", "LEFT JOIN"),
        lookup("customers", "JOIN"),
        lookup("customers_nocache", "JOIN"),
        lookup("customers", "JOIN"),
        plain("JOIN"),
        lookup("customers", "LEFT JOIN"),
        plain("LEFT JOIN"),
        // A further condition on the dimension: EU customers only.
        "SELECT o.order_id, c.name FROM orders o JOIN customers FOR SYSTEM_TIME AS OF \
         o.proc_time AS c ON o.cust_id = c.id AND c.region = 'EU' ORDER BY o.order_id",
    );
    let o = sc.run(&["--format", "csv", "-e", &script], None);
    check(o.status.code() == Some(0), "lookup joins run", &o)?;
    let out = stdout(&o);
    let explain = out
        .split("physical_plan")
        .nth(1)
        .ok_or("no EXPLAIN output")?;
    let explain = &explain[..explain.find("plan_type").unwrap_or(explain.len())];
    check(
        explain.contains("LookupJoinExec: strategy=lookup, table=customers, join_type=Left")
            && explain.contains("cache_max_rows=100")
            && !explain.contains(scan),
        "EXPLAIN shows the lookup join and no scan of the whole dimension",
        &o,
    )?;
    // Distinct keys 1, 2, 3 and 5 each miss once; later batches hit.
    let (hits, misses) = (
        metric(&out, "LookupJoinExec", "cache_hits"),
        metric(&out, "LookupJoinExec", "cache_misses"),
    );
    check(
        misses == Some(4) && hits.is_some_and(|h| h > 0),
        &format!("the cache answers repeated keys (hits {hits:?}, misses {misses:?})"),
        &o,
    )?;
    let second = out
        .match_indices("LookupJoinExec")
        .nth(2)
        .map(|(i, _)| &out[i..])
        .ok_or("no second EXPLAIN ANALYZE")?;
    let (hits, misses) = (
        metric(second, "LookupJoinExec", "cache_hits"),
        metric(second, "LookupJoinExec", "cache_misses"),
    );
    check(
        hits == Some(0) && misses.is_some_and(|m| m > 4),
        &format!(
            "with the cache off every batch looks its keys up (hits {hits:?}, misses {misses:?})"
        ),
        &o,
    )?;
    // The result sets follow the EXPLAIN output, in script order.
    let mut results: Vec<&str> = out
        .split("order_id,amount,name,region\n")
        .skip(1)
        .map(|r| r.split("order_id,").next().unwrap_or(r))
        .collect();
    results.push(out.split("order_id,name\n").nth(1).unwrap_or_default());
    check(results.len() == 5, "five result sets", &o)?;
    check(
        results[0] == results[1] && results[0].contains("4,40.0,carol,EU"),
        "the inner lookup join equals the plain join",
        &o,
    )?;
    check(
        results[2] == results[3]
            && results[2].contains("5,50.0,,")
            && results[2].contains("8,80.0,,"),
        "the left lookup join equals the plain left join, unmatched orders kept",
        &o,
    )?;
    check(
        results[4].starts_with("1,alice\n3,alice\n4,carol\n7,alice\n9,carol\n12,alice\n"),
        "a further ON condition filters the looked-up rows",
        &o,
    )?;

    // A lookup table that is not the looked-up side of an equi-join, and
    // one whose connector cannot look keys up.
    let bad = format!(
        "CREATE EXTERNAL TABLE orders (order_id BIGINT, cust_id INT, amount DOUBLE) \
           STORED AS CSV LOCATION 'in/orders.csv' OPTIONS ('format.has_header' 'true');\n\
         {cached};\n\
         SELECT * FROM orders o JOIN customers FOR SYSTEM_TIME AS OF o.proc_time AS c ON o.cust_id > c.id;\n"
    );
    let o = sc.run(&["-e", &bad], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("lookup table 'customers'")
            && stderr(&o).contains("equality join"),
        "a lookup without an equality condition is an error",
        &o,
    )?;
    let bad = "CREATE EXTERNAL TABLE orders (order_id BIGINT, cust_id INT, amount DOUBLE) \
           STORED AS CSV LOCATION 'in/orders.csv' OPTIONS ('format.has_header' 'true');\n\
         SELECT * FROM orders o JOIN orders FOR SYSTEM_TIME AS OF o.proc_time AS p ON o.cust_id = p.order_id;\n";
    let o = sc.run(&["-e", bad], None);
    check(
        o.status.code() != Some(0)
            && stderr(&o).contains("filesystem connector, which cannot answer key lookups"),
        "a file table cannot be a lookup dimension",
        &o,
    )?;
    let bad = format!("{cached};\nSELECT * FROM customers FOR SYSTEM_TIME AS OF 1 AS c;\n");
    let o = sc.run(&["-e", &bad], None);
    check(
        o.status.code() != Some(0) && stderr(&o).contains("equality join"),
        "a lookup table read on its own is an error",
        &o,
    )?;
    Ok(())
}
