//! Conversions between Sluice and Flight SQL: result types clients can
//! read, statement parameters, and errors as gRPC statuses.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use sluice_connectors::ErrorClass;
use sluice_planner::caret_snippet;
use sluice_planner::error::PlannerError;
use tonic::Status;

/// The schema clients receive: with `cast_views`, `Utf8View` and
/// `BinaryView` become `Utf8` and `Binary` (common JDBC drivers cannot read
/// view types). Dictionaries are always sent as their values.
pub(crate) fn client_schema(schema: &Schema, cast_views: bool) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            f.as_ref()
                .clone()
                .with_data_type(client_type(f.data_type(), cast_views))
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn client_type(t: &DataType, cast_views: bool) -> DataType {
    match t {
        DataType::Utf8View if cast_views => DataType::Utf8,
        DataType::BinaryView if cast_views => DataType::Binary,
        DataType::Dictionary(_, v) => client_type(v, cast_views),
        DataType::List(f) => DataType::List(Arc::new(
            f.as_ref()
                .clone()
                .with_data_type(client_type(f.data_type(), cast_views)),
        )),
        DataType::LargeList(f) => DataType::LargeList(Arc::new(
            f.as_ref()
                .clone()
                .with_data_type(client_type(f.data_type(), cast_views)),
        )),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| {
                    Arc::new(
                        f.as_ref()
                            .clone()
                            .with_data_type(client_type(f.data_type(), cast_views)),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Casts `batch` to `schema` (from [`client_schema`]).
pub(crate) fn to_client_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    if batch.schema().fields() == schema.fields() {
        // View columns out of joins and filters may pin far larger buffers,
        // which IPC would send in full.
        return sluice_shuffle::format::compact_views(batch.clone())
            .with_schema(Arc::clone(schema));
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// Numbers `?` placeholders as `$1`, `$2`, ... (DataFusion resolves only
/// numbered ones), working on tokens so strings and comments are kept.
/// Returns the SQL and the number of distinct parameters.
pub(crate) fn number_placeholders(sql: &str) -> Result<(String, usize), Status> {
    let tokens = tokenize(sql)?;
    let mut next = 0usize;
    let mut max_numbered = 0usize;
    let mut out = String::with_capacity(sql.len());
    for t in tokens {
        match t {
            Token::Placeholder(p) if p == "?" => {
                next += 1;
                out.push_str(&format!("${next}"));
            }
            Token::Placeholder(p) => {
                if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                    max_numbered = max_numbered.max(n);
                }
                out.push_str(&p);
            }
            other => out.push_str(&other.to_string()),
        }
    }
    if next > 0 && max_numbered > 0 {
        return Err(Status::invalid_argument(
            "the statement mixes '?' and '$n' parameters; use one style",
        ));
    }
    Ok((out, next.max(max_numbered)))
}

/// Replaces `$n` placeholders with the SQL literals of `values[n-1]`.
pub(crate) fn bind_placeholders(sql: &str, values: &[ScalarValue]) -> Result<String, Status> {
    let tokens = tokenize(sql)?;
    let mut out = String::with_capacity(sql.len());
    for t in tokens {
        match t {
            Token::Placeholder(p) if p.starts_with('$') => {
                let n: usize = p[1..].parse().map_err(|_| {
                    Status::invalid_argument(format!("parameter '{p}' is not $1, $2, ..."))
                })?;
                let v = n
                    .checked_sub(1)
                    .and_then(|i| values.get(i))
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "parameter {p} has no value: {} parameters were bound",
                            values.len()
                        ))
                    })?;
                out.push_str(&sql_literal(v)?);
            }
            other => out.push_str(&other.to_string()),
        }
    }
    Ok(out)
}

fn tokenize(sql: &str) -> Result<Vec<Token>, Status> {
    Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| Status::invalid_argument(format!("syntax error: {e}")))
}

/// A value as SQL text, through DataFusion's unparser.
fn sql_literal(v: &ScalarValue) -> Result<String, Status> {
    use datafusion::logical_expr::Expr;
    use datafusion::sql::unparser::Unparser;
    let v = match v {
        ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => ScalarValue::Utf8(s.clone()),
        other => other.clone(),
    };
    if v.is_null() {
        return Ok("NULL".into());
    }
    Unparser::default()
        .expr_to_sql(&Expr::Literal(v.clone(), None))
        .map(|e| e.to_string())
        .map_err(|e| {
            Status::invalid_argument(format!(
                "cannot use a parameter of type {} here: {}",
                v.data_type(),
                e.strip_backtrace()
            ))
        })
}

/// The rows of a parameter batch as lists of values.
pub(crate) fn parameter_rows(batch: &RecordBatch) -> Result<Vec<Vec<ScalarValue>>, Status> {
    (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, row))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Status::invalid_argument(format!("bad parameter value: {e}")))
        })
        .collect()
}

/// A planner error as a gRPC status with the CLI's message: position and a
/// caret under the offending text.
pub(crate) fn status_of(e: &PlannerError, sql: &str) -> Status {
    let mut msg = String::new();
    if let Some((line, column)) = e.position() {
        msg.push_str(&format!("line {line}, column {column}: "));
        msg.push_str(&e.to_string());
        let snippet = caret_snippet(sql, line, column);
        if !snippet.is_empty() {
            msg.push('\n');
            msg.push_str(&snippet);
        }
    } else {
        msg.push_str(&e.to_string());
    }
    match e {
        PlannerError::Unsupported { .. } => Status::unimplemented(msg),
        _ => match e.class() {
            ErrorClass::User => Status::invalid_argument(msg),
            ErrorClass::External => Status::unavailable(msg),
            ErrorClass::Internal => Status::internal(msg),
        },
    }
}

/// A DataFusion error raised while streaming a result.
pub(crate) fn status_of_datafusion(e: datafusion::error::DataFusionError) -> Status {
    let e = PlannerError::from(e);
    status_of(&e, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_are_numbered_outside_strings() {
        let (sql, n) =
            number_placeholders("SELECT '?', a FROM t WHERE a = ? AND b = ? -- ?").unwrap();
        assert_eq!(sql, "SELECT '?', a FROM t WHERE a = $1 AND b = $2 -- ?");
        assert_eq!(n, 2);
        let (_, n) = number_placeholders("SELECT $2, $1").unwrap();
        assert_eq!(n, 2);
        assert!(number_placeholders("SELECT ?, $1").is_err());
    }

    #[test]
    fn placeholders_bind_as_literals() {
        let sql = bind_placeholders(
            "INSERT INTO t VALUES ($1, $2, $3)",
            &[
                ScalarValue::Int64(Some(7)),
                ScalarValue::Utf8(Some("it's".into())),
                ScalarValue::Null,
            ],
        )
        .unwrap();
        assert_eq!(sql, "INSERT INTO t VALUES (7, 'it''s', NULL)");
        assert!(bind_placeholders("SELECT $2", &[ScalarValue::Int64(Some(1))]).is_err());
    }

    #[test]
    fn view_types_are_cast_for_clients() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8View, true),
            Field::new(
                "d",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
        ]);
        let cast = client_schema(&schema, true);
        assert_eq!(cast.field(0).data_type(), &DataType::Utf8);
        assert_eq!(cast.field(1).data_type(), &DataType::Utf8);
        let kept = client_schema(&schema, false);
        assert_eq!(kept.field(0).data_type(), &DataType::Utf8View);
    }
}
