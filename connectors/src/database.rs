//! What the database connectors (Postgres, MySQL) share: which filters a
//! database may evaluate, range partitioning of parallel reads, and how
//! declared columns are checked against the database's.

use std::time::Duration;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{Expr, Operator};
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::Dialect;
use sha2::{Digest, Sha256};

use crate::error::{ConnectorError, Result};
use crate::options::TableOptions;
use crate::sink::WriteMode;

/// Which filters a database evaluates exactly as DataFusion does, as far as
/// a pushed filter must keep every row DataFusion would keep (pushed
/// filters are Inexact: DataFusion re-checks the rows it gets).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PushdownRules {
    /// String `<`, `>`, `BETWEEN` (collations differ from byte order).
    pub(crate) string_ordering: bool,
    /// String comparisons under `NOT`, `<>` or `NOT IN`. A case-insensitive
    /// collation makes `=` match more rows (harmless) but `<>` fewer.
    pub(crate) string_negation: bool,
    /// Time-zone-less timestamp literals (seconds to microseconds), for
    /// comparisons with `DATETIME` columns.
    pub(crate) naive_timestamps: bool,
}

/// Whether `expr` may be sent to the database.
pub(crate) fn pushable(expr: &Expr, schema: &Schema, rules: PushdownRules) -> bool {
    pushable_in(expr, schema, rules, false)
}

fn pushable_in(expr: &Expr, schema: &Schema, rules: PushdownRules, negated: bool) -> bool {
    let p = |e: &Expr| pushable_in(e, schema, rules, negated);
    let strings_ok = |es: &[&Expr], ordering: bool, negating: bool| {
        !es.iter().any(|e| is_string(e, schema))
            || ((!ordering || rules.string_ordering)
                && (!(negated || negating) || rules.string_negation))
    };
    match expr {
        Expr::Column(_) => true,
        Expr::Literal(v, _) => {
            matches!(
                v,
                ScalarValue::Boolean(_)
                    | ScalarValue::Int8(_)
                    | ScalarValue::Int16(_)
                    | ScalarValue::Int32(_)
                    | ScalarValue::Int64(_)
                    | ScalarValue::UInt8(_)
                    | ScalarValue::UInt16(_)
                    | ScalarValue::UInt32(_)
                    | ScalarValue::Float32(_)
                    | ScalarValue::Float64(_)
                    | ScalarValue::Decimal128(..)
                    | ScalarValue::Utf8(_)
                    | ScalarValue::Utf8View(_)
                    | ScalarValue::LargeUtf8(_)
                    | ScalarValue::Date32(_)
            ) || (rules.naive_timestamps
                && matches!(
                    v,
                    ScalarValue::TimestampSecond(_, None)
                        | ScalarValue::TimestampMillisecond(_, None)
                        | ScalarValue::TimestampMicrosecond(_, None)
                ))
        }
        Expr::BinaryExpr(b) => {
            let ok = match b.op {
                Operator::And | Operator::Or => true,
                Operator::Eq => strings_ok(&[&b.left, &b.right], false, false),
                Operator::NotEq => strings_ok(&[&b.left, &b.right], false, true),
                Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                    strings_ok(&[&b.left, &b.right], true, false)
                }
                _ => false,
            };
            ok && p(&b.left) && p(&b.right)
        }
        Expr::Not(e) => pushable_in(e, schema, rules, !negated),
        Expr::IsNull(e) | Expr::IsNotNull(e) => p(e),
        Expr::InList(l) => {
            strings_ok(&[&l.expr], false, l.negated) && p(&l.expr) && l.list.iter().all(p)
        }
        Expr::Between(b) => {
            strings_ok(&[&b.expr, &b.low, &b.high], true, b.negated)
                && p(&b.expr)
                && p(&b.low)
                && p(&b.high)
        }
        Expr::Like(l) => {
            l.escape_char.is_none()
                && !l.case_insensitive
                && (!(negated || l.negated) || rules.string_negation)
                && p(&l.expr)
                && p(&l.pattern)
        }
        _ => false,
    }
}

/// Whether `e` is a string literal or a string column of `schema`.
fn is_string(e: &Expr, schema: &Schema) -> bool {
    let string_type =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8);
    match e {
        Expr::Literal(v, _) => string_type(&v.data_type()),
        Expr::Column(c) => schema
            .field_with_name(&c.name)
            .map(|f| string_type(f.data_type()))
            .unwrap_or(true),
        _ => true,
    }
}

/// SQL text of a pushable filter in `dialect`, with unqualified column names.
pub(crate) fn filter_sql(expr: &Expr, dialect: &dyn Dialect) -> Option<String> {
    let expr = expr
        .clone()
        .transform(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                c.name,
            )))),
            e => Ok(Transformed::no(e)),
        })
        .ok()?
        .data;
    Unparser::new(dialect)
        .expr_to_sql(&expr)
        .ok()
        .map(|e| e.to_string())
}

/// Parallel read settings (`scan.partition.*`).
#[derive(Debug, Clone)]
pub(crate) struct PartitionSpec {
    pub(crate) column: String,
    pub(crate) num: usize,
    pub(crate) bounds: Option<(i64, i64)>,
}

/// Reads the `scan.partition.*` options.
pub(crate) fn partition_spec(options: &TableOptions) -> Result<Option<PartitionSpec>> {
    let Some(column) = options.literal("scan.partition.column")? else {
        for key in [
            "scan.partition.num",
            "scan.partition.lower-bound",
            "scan.partition.upper-bound",
        ] {
            if options.get(key).is_some() {
                return Err(ConnectorError::InvalidOption {
                    key: key.into(),
                    reason: "needs 'scan.partition.column' (a numeric or date column)".into(),
                });
            }
        }
        return Ok(None);
    };
    let int = |key: &str| -> Result<Option<i64>> {
        options
            .literal(key)?
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| ConnectorError::InvalidOption {
                        key: key.into(),
                        reason: format!("'{v}' is not an integer"),
                    })
            })
            .transpose()
    };
    let num = int("scan.partition.num")?.unwrap_or(4);
    if !(1..=1024).contains(&num) {
        return Err(ConnectorError::InvalidOption {
            key: "scan.partition.num".into(),
            reason: format!("{num} is not between 1 and 1024"),
        });
    }
    let bounds = match (
        int("scan.partition.lower-bound")?,
        int("scan.partition.upper-bound")?,
    ) {
        (Some(lo), Some(hi)) if lo <= hi => Some((lo, hi)),
        (None, None) => None,
        _ => {
            return Err(ConnectorError::InvalidOption {
                key: "scan.partition.lower-bound".into(),
                reason: "set both bounds, lower <= upper, or neither (then min and max are read)"
                    .into(),
            });
        }
    };
    Ok(Some(PartitionSpec {
        column: column.to_string(),
        num: num as usize,
        bounds,
    }))
}

/// Conditions on the (quoted) column `col` splitting `lo..=hi` into at most
/// `n` ranges of equal width. The first range also takes NULLs and values
/// below `lo`, the last values above `hi`, so every row is read once.
pub(crate) fn range_conditions(col: &str, lo: i64, hi: i64, n: usize) -> Vec<String> {
    let span = (hi as i128 - lo as i128 + 1).max(1);
    let n = (n.max(1) as i128).min(span);
    let cut = |i: i128| (lo as i128 + span * i / n) as i64;
    (0..n)
        .map(|i| {
            let mut conds = vec![];
            if i > 0 {
                conds.push(format!("{col} >= {}", cut(i)));
            }
            if i + 1 < n {
                conds.push(format!("{col} < {}", cut(i + 1)));
            }
            let cond = conds.join(" AND ");
            match (i, cond.is_empty()) {
                (0, true) => "1 = 1".to_string(),
                (0, false) => format!("({cond} OR {col} IS NULL)"),
                _ => cond,
            }
        })
        .collect()
}

/// The `SELECT` of each partition: `select` from `source`, filtered by the
/// pushed filters and the partition's range, limited when nothing filters.
pub(crate) fn partition_queries(
    select: &str,
    source: &str,
    pushed: &[String],
    ranges: &[Option<String>],
    limit: Option<usize>,
) -> Vec<String> {
    ranges
        .iter()
        .map(|range| {
            let conds: Vec<String> = pushed
                .iter()
                .chain(range)
                .map(|c| format!("({c})"))
                .collect();
            let mut sql = format!("SELECT {select} FROM {source}");
            if !conds.is_empty() {
                sql.push_str(" WHERE ");
                sql.push_str(&conds.join(" AND "));
            }
            if let Some(n) = limit {
                sql.push_str(&format!(" LIMIT {n}"));
            }
            sql
        })
        .collect()
}

/// How `CREATE TABLE` spells an Arrow type, for hints.
pub(crate) fn sql_type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "VARCHAR".into(),
        DataType::Binary => "BYTEA".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        DataType::Interval(_) => "INTERVAL".into(),
        DataType::List(f) => format!("{}[]", sql_type_name(f.data_type())),
        other => other.to_string(),
    }
}

/// Whether a declared type may stand for a database column's type: the
/// same kind of value (integers for integers, text for text, ...), perhaps
/// of another width or unit. Values are cast; a value that does not fit is
/// an error when it is read or written.
pub(crate) fn same_family(a: &DataType, b: &DataType) -> bool {
    use DataType::*;
    fn family(t: &DataType) -> u8 {
        match t {
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => 1,
            Float16 | Float32 | Float64 => 2,
            Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) => 3,
            Utf8 | LargeUtf8 | Utf8View => 4,
            Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => 5,
            Date32 | Date64 => 6,
            Time32(_) | Time64(_) => 7,
            Timestamp(_, None) => 8,
            Timestamp(_, Some(_)) => 9,
            Interval(_) | Duration(_) => 10,
            Boolean => 11,
            List(_) | LargeList(_) | ListView(_) | FixedSizeList(..) => 12,
            _ => 0,
        }
    }
    match (a, b) {
        (List(x), List(y)) => same_family(x.data_type(), y.data_type()),
        _ => a == b || (family(a) != 0 && family(a) == family(b)),
    }
}

/// The first `bytes` bytes of the SHA-256 of `s`, in hex: short, stable
/// names for staging tables and locks derived from job and task ids.
pub(crate) fn hash_hex(s: &str, bytes: usize) -> String {
    Sha256::digest(s.as_bytes())[..bytes]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses `connect.timeout`-style durations: `10s`, `500ms`, `2min`.
pub(crate) fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "min" | "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

/// The `connect.timeout` option (default 10 s).
pub(crate) fn connect_timeout(options: &TableOptions) -> Result<Duration> {
    match options.literal("connect.timeout")? {
        Some(v) => parse_duration(v).ok_or_else(|| ConnectorError::InvalidOption {
            key: "connect.timeout".into(),
            reason: format!("'{v}' is not a duration; use e.g. '10s' or '500ms'"),
        }),
        None => Ok(Duration::from_secs(10)),
    }
}

/// The rows an overwrite replaces, as a `WHERE` clause (with its leading
/// space): none for a whole-table overwrite, `col = 'value' AND ...` for
/// `INSERT OVERWRITE t PARTITION (col = 'value', ...)`. `None` for modes
/// that replace nothing. The database compares the text literal with the
/// column under its own rules (type coercion, collation).
pub(crate) fn overwrite_filter(
    mode: &WriteMode,
    quote_ident: fn(&str) -> String,
    quote_literal: fn(&str) -> String,
) -> Option<String> {
    match mode {
        WriteMode::Overwrite => Some(String::new()),
        WriteMode::OverwriteStatic(spec) => Some(format!(
            " WHERE {}",
            spec.iter()
                .map(|(c, v)| format!("{} = {}", quote_ident(c), quote_literal(v)))
                .collect::<Vec<_>>()
                .join(" AND ")
        )),
        WriteMode::Append | WriteMode::OverwriteDynamic => None,
    }
}

/// Refuses the write modes a database table does not support, and a
/// `PARTITION` spec naming a column the table lacks.
pub(crate) fn check_write_mode(
    connector: &str,
    name: &str,
    schema: &Schema,
    mode: &WriteMode,
) -> Result<()> {
    match mode {
        WriteMode::Append | WriteMode::Overwrite => Ok(()),
        WriteMode::OverwriteStatic(spec) => {
            for (c, _) in spec {
                if schema.field_with_name(c).is_err() {
                    return Err(ConnectorError::SchemaMismatch {
                        target: name.to_string(),
                        reason: format!(
                            "PARTITION names '{c}', which is not a column of the table"
                        ),
                    });
                }
            }
            Ok(())
        }
        WriteMode::OverwriteDynamic => Err(ConnectorError::UnsupportedWrite {
            target: name.to_string(),
            reason: format!(
                "{connector} tables replace rows by value only for the values given: \
                 write INSERT OVERWRITE t PARTITION (col = 'value') SELECT ..., \
                 or overwrite the whole table"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Field;
    use std::ops::Not;

    use datafusion::logical_expr::{col, lit};
    use datafusion::sql::unparser::dialect::MySqlDialect;

    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ])
    }

    #[test]
    fn ranges_cover_every_value_once() {
        let r = range_conditions("k", 1, 10, 3);
        assert_eq!(
            r,
            vec!["(k < 4 OR k IS NULL)", "k >= 4 AND k < 7", "k >= 7"]
        );
        assert_eq!(range_conditions("k", 5, 5, 4), vec!["1 = 1"]);
    }

    #[test]
    fn string_filters_follow_the_rules() {
        let s = schema();
        let strict = PushdownRules {
            string_ordering: false,
            string_negation: false,
            naive_timestamps: false,
        };
        assert!(pushable(&col("name").eq(lit("a")), &s, strict));
        assert!(!pushable(&col("name").not_eq(lit("a")), &s, strict));
        assert!(!pushable(&col("name").eq(lit("a")).not(), &s, strict));
        assert!(!pushable(&col("name").lt(lit("a")), &s, strict));
        assert!(pushable(&col("id").not_eq(lit(3)), &s, strict));
        assert!(pushable(&col("id").lt(lit(3)).not(), &s, strict));
        let pg = PushdownRules {
            string_ordering: false,
            string_negation: true,
            naive_timestamps: false,
        };
        assert!(pushable(&col("name").not_eq(lit("a")), &s, pg));
        assert_eq!(
            filter_sql(&col("id").gt(lit(3)), &MySqlDialect {}).unwrap(),
            "(`id` > 3)"
        );
    }
}
