//! Turning an [`EngineOutput`] into the text rows sqllogictest compares.
//!
//! Follows DataFusion's sqllogictest conventions: `NULL` for nulls,
//! `(empty)` for empty strings, floats and decimals rounded to 12 decimal
//! places without trailing zeros (`20`, `0.3`, `NaN`, `Infinity`), arrow's
//! display format for everything else (dates, timestamps, lists...), and a
//! multi-line last cell (e.g. an `EXPLAIN` plan) expanded to one numbered row
//! per line.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::engine::{EngineError, EngineOutput};

/// Converts what the engine produced into what sqllogictest validates.
pub(crate) fn to_db_output(
    output: EngineOutput,
) -> Result<DBOutput<DefaultColumnType>, EngineError> {
    match output {
        EngineOutput::Statement { rows_affected } => {
            Ok(DBOutput::StatementComplete(rows_affected.unwrap_or(0)))
        }
        EngineOutput::Rows { schema, .. } if schema.fields().is_empty() => {
            Ok(DBOutput::StatementComplete(0))
        }
        EngineOutput::Rows { schema, batches } => Ok(DBOutput::Rows {
            types: schema
                .fields()
                .iter()
                .map(|f| column_type(f.data_type()))
                .collect(),
            rows: batches_to_rows(&batches)?,
        }),
    }
}

/// The sqllogictest column type letter for an arrow type: `I` for integers,
/// `R` for floats and decimals, `T` for everything else.
pub(crate) fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DefaultColumnType::Integer,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => DefaultColumnType::FloatingPoint,
        DataType::Dictionary(_, value) => column_type(value),
        DataType::RunEndEncoded(_, values) => column_type(values.data_type()),
        _ => DefaultColumnType::Text,
    }
}

/// Renders every row of `batches` as one string per cell.
pub(crate) fn batches_to_rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, EngineError> {
    // DataFusion's display defaults: durations as `1 days 2 hours ...`.
    let options = FormatOptions::default()
        .with_null("NULL")
        .with_duration_format(arrow::util::display::DurationFormat::Pretty)
        .with_display_error(false);
    let mut rows = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(array, field)| {
                let formatter = ArrayFormatter::try_new(array.as_ref(), &options)
                    .map_err(|source| render_error(field.name(), array.data_type(), source))?;
                Ok((formatter, field.name(), array.data_type()))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        for idx in 0..batch.num_rows() {
            let row = columns
                .iter()
                .zip(batch.columns())
                .map(|((formatter, name, data_type), array)| {
                    format_cell(array.as_ref(), formatter, idx)
                        .map_err(|source| render_error(name, data_type, source))
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            rows.extend(expand_row(row));
        }
    }
    Ok(rows)
}

fn render_error(column: &str, data_type: &DataType, source: ArrowError) -> EngineError {
    EngineError::Render {
        column: column.to_owned(),
        data_type: data_type.clone(),
        source,
    }
}

/// One cell as text: `NULL`, `(empty)`, a normalised number, or arrow's
/// display of the value.
fn format_cell(
    array: &dyn Array,
    formatter: &ArrayFormatter<'_>,
    idx: usize,
) -> Result<String, ArrowError> {
    if array.is_null(idx) {
        return Ok("NULL".to_owned());
    }
    // Rust's float `Display` never uses an exponent (arrow's does), which
    // the decimal normalisation below needs.
    let text = match array.data_type() {
        DataType::Float32 => {
            number_to_str(&array.as_primitive::<Float32Type>().value(idx).to_string())
        }
        DataType::Float64 => {
            number_to_str(&array.as_primitive::<Float64Type>().value(idx).to_string())
        }
        DataType::Float16
        | DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => number_to_str(&formatter.value(idx).try_to_string()?),
        // As DataFusion: a non-empty string without its trailing
        // newlines, NUL shown as `\0`.
        t if is_string(t) => {
            let text = formatter.value(idx).try_to_string()?;
            if text.is_empty() {
                return Ok("(empty)".to_owned());
            }
            return Ok(text.trim_end_matches('\n').replace('\0', "\\0"));
        }
        _ => formatter.value(idx).try_to_string()?,
    };
    Ok(text)
}

/// Strings, and dictionaries of strings.
fn is_string(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => is_string(values),
        _ => false,
    }
}

/// Decimal places kept for floats and decimals, as in DataFusion.
const ROUND_DIGITS: usize = 12;

/// Normalises a float or decimal written in plain notation the way
/// DataFusion's sqllogictest does (`BigDecimal::round(12).normalized()`):
/// rounded half-to-even to 12 decimal places, without trailing zeros, `-0`
/// as `0`; `NaN`, `Infinity` and `-Infinity` for the special values.
/// Anything else (such as exponent notation) is returned unchanged.
fn number_to_str(text: &str) -> String {
    match text {
        "NaN" | "-NaN" => return "NaN".to_owned(),
        "inf" | "+inf" | "Infinity" => return "Infinity".to_owned(),
        "-inf" | "-Infinity" => return "-Infinity".to_owned(),
        _ => {}
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return text.to_owned();
    }
    let kept_frac = &frac_part[..frac_part.len().min(ROUND_DIGITS)];
    let mut digits: Vec<u8> = int_part.bytes().chain(kept_frac.bytes()).collect();
    if let Some((&first, rest)) = frac_part
        .as_bytes()
        .get(ROUND_DIGITS..)
        .and_then(<[u8]>::split_first)
    {
        let last_kept_odd = digits.last().is_some_and(|d| (d - b'0') % 2 == 1);
        let round_up =
            first > b'5' || (first == b'5' && (rest.iter().any(|&d| d != b'0') || last_kept_odd));
        if round_up && increment(&mut digits) {
            digits.insert(0, b'1');
        }
    }
    let frac_len = kept_frac.len();
    let split = digits.len() - frac_len;
    let int_digits = String::from_utf8_lossy(&digits[..split]);
    let int_digits = match int_digits.trim_start_matches('0') {
        "" => "0",
        trimmed => trimmed,
    };
    let frac_digits = String::from_utf8_lossy(&digits[split..]);
    let frac_digits = frac_digits.trim_end_matches('0');
    let is_zero = int_digits == "0" && frac_digits.is_empty();
    let sign = if negative && !is_zero { "-" } else { "" };
    if frac_digits.is_empty() {
        format!("{sign}{int_digits}")
    } else {
        format!("{sign}{int_digits}.{frac_digits}")
    }
}

/// Adds one to a string of decimal digits; returns whether it overflowed.
fn increment(digits: &mut [u8]) -> bool {
    for d in digits.iter_mut().rev() {
        if *d == b'9' {
            *d = b'0';
        } else {
            *d += 1;
            return false;
        }
    }
    true
}

/// Expands a row whose last cell has several lines (such as an `EXPLAIN`
/// plan) into the row without that cell followed by one single-cell row per
/// line, numbered `01)`, `02)`, ... with leading spaces turned into `-`, as
/// DataFusion does. The `.slt` format has one result row per line, so a
/// multi-line value could not be written otherwise.
fn expand_row(mut row: Vec<String>) -> Vec<Vec<String>> {
    let Some(last) = row.pop() else {
        return vec![row];
    };
    if !last.contains('\n') {
        row.push(last);
        return vec![row];
    }
    let mut rows = vec![row];
    rows.extend(last.split('\n').enumerate().map(|(idx, line)| {
        let content = line.trim_start();
        let indent = "-".repeat(line.len() - content.len());
        vec![format!("{:02}){indent}{content}", idx + 1)]
    }));
    rows
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BooleanArray, Date32Array, Decimal128Array, DictionaryArray, Float32Array,
        Float64Array, Int32Array, StringArray, TimestampNanosecondArray,
    };
    use arrow::datatypes::{Field, Int32Type, Schema, TimeUnit};

    use super::*;

    fn rows_of(batch: RecordBatch) -> Vec<Vec<String>> {
        let out = to_db_output(EngineOutput::Rows {
            schema: batch.schema(),
            batches: vec![batch],
        })
        .unwrap_or_else(|e| panic!("conversion failed: {e}"));
        match out {
            DBOutput::Rows { rows, .. } => rows,
            DBOutput::StatementComplete(n) => panic!("expected rows, got statement({n})"),
            _ => panic!("unexpected output"),
        }
    }

    #[test]
    fn nulls_empty_strings_and_booleans() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "i",
                Arc::new(Int32Array::from(vec![Some(1), None])) as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![Some(""), Some("a b")])),
            ),
            ("n", Arc::new(StringArray::from(vec![None, Some("NULL")]))),
            (
                "b",
                Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
            ),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rows_of(batch),
            vec![
                vec!["1", "(empty)", "NULL", "true"],
                vec!["NULL", "a b", "NULL", "false"],
            ]
        );
    }

    #[test]
    fn floats_decimals_dates_and_timestamps() {
        let decimal = Decimal128Array::from(vec![12345, -5])
            .with_precision_and_scale(10, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        let batch = RecordBatch::try_from_iter(vec![
            (
                "f",
                Arc::new(Float64Array::from(vec![1.5, f64::NAN])) as ArrayRef,
            ),
            (
                "inf",
                Arc::new(Float64Array::from(vec![f64::INFINITY, f64::NEG_INFINITY])),
            ),
            ("d", Arc::new(decimal)),
            ("day", Arc::new(Date32Array::from(vec![19_753, 0]))),
            (
                "ts",
                Arc::new(TimestampNanosecondArray::from(vec![
                    1_706_704_496_000_000_000,
                    0,
                ])),
            ),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rows_of(batch),
            vec![
                vec![
                    "1.5",
                    "Infinity",
                    "123.45",
                    "2024-01-31",
                    "2024-01-31T12:34:56"
                ],
                vec![
                    "NaN",
                    "-Infinity",
                    "-0.05",
                    "1970-01-01",
                    "1970-01-01T00:00:00"
                ],
            ]
        );
    }

    #[test]
    fn numbers_are_normalised_like_datafusion() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "f64",
                Arc::new(Float64Array::from(vec![
                    20.0,
                    0.1 + 0.2,
                    1e20,
                    1e-7,
                    -1e-13,
                    -0.0,
                    2.0 / 3.0,
                ])) as ArrayRef,
            ),
            (
                "f32",
                Arc::new(Float32Array::from(vec![
                    0.1, 7.25, 1e10, 3.0, -2.5, 0.0, 1.0,
                ])),
            ),
            (
                "dec",
                Arc::new(
                    Decimal128Array::from(vec![2000, 1234, -5, 0, 10, 99_999, 1])
                        .with_precision_and_scale(10, 2)
                        .unwrap_or_else(|e| panic!("{e}")),
                ),
            ),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let rows = rows_of(batch);
        let column = |i: usize| -> Vec<&str> { rows.iter().map(|r| r[i].as_str()).collect() };
        assert_eq!(
            column(0),
            vec![
                "20",
                "0.3",
                "100000000000000000000",
                "0.0000001",
                "0",
                "0",
                "0.666666666667"
            ]
        );
        assert_eq!(
            column(1),
            vec!["0.1", "7.25", "10000000000", "3", "-2.5", "0", "1"]
        );
        assert_eq!(
            column(2),
            vec!["20", "12.34", "-0.05", "0", "0.1", "999.99", "0.01"]
        );
    }

    #[test]
    fn number_rounding_is_half_to_even() {
        assert_eq!(number_to_str("0.0000000000005"), "0");
        assert_eq!(number_to_str("0.0000000000015"), "0.000000000002");
        assert_eq!(number_to_str("0.00000000000050001"), "0.000000000001");
        assert_eq!(number_to_str("9.9999999999999"), "10");
        assert_eq!(number_to_str("-9.9999999999999"), "-10");
        assert_eq!(number_to_str("1e-7"), "1e-7");
        assert_eq!(number_to_str("-inf"), "-Infinity");
    }

    #[test]
    fn column_types() {
        let types: Vec<char> = [
            DataType::Int64,
            DataType::UInt8,
            DataType::Float32,
            DataType::Decimal128(10, 2),
            DataType::Utf8,
            DataType::Boolean,
            DataType::Date32,
            DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Int64)),
        ]
        .iter()
        .map(|t| sqllogictest::ColumnType::to_char(&column_type(t)))
        .collect();
        assert_eq!(types.into_iter().collect::<String>(), "IIRRTTTTTI");
    }

    #[test]
    fn dictionary_values_are_rendered() {
        let dict: DictionaryArray<Int32Type> =
            vec![Some("x"), None, Some("")].into_iter().collect();
        let batch = RecordBatch::try_from_iter(vec![("d", Arc::new(dict) as ArrayRef)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rows_of(batch),
            vec![vec!["x"], vec!["NULL"], vec!["(empty)"]]
        );
    }

    #[test]
    fn zero_columns_is_a_statement() {
        let out = to_db_output(EngineOutput::Rows {
            schema: Arc::new(Schema::empty()),
            batches: vec![],
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(out, DBOutput::StatementComplete(0)));
    }

    #[test]
    fn statement_counts() {
        let out = to_db_output(EngineOutput::Statement {
            rows_affected: Some(3),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(out, DBOutput::StatementComplete(3)));
        let out = to_db_output(EngineOutput::Statement {
            rows_affected: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(out, DBOutput::StatementComplete(0)));
    }

    #[test]
    fn empty_result_set_keeps_types() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let out = to_db_output(EngineOutput::Rows {
            schema,
            batches: vec![],
        })
        .unwrap_or_else(|e| panic!("{e}"));
        match out {
            DBOutput::Rows { types, rows } => {
                assert_eq!(
                    types,
                    vec![DefaultColumnType::Integer, DefaultColumnType::Text]
                );
                assert!(rows.is_empty());
            }
            _ => panic!("expected rows"),
        }
    }

    #[test]
    fn multi_line_last_cell_is_expanded() {
        let rows = expand_row(vec![
            "logical_plan".to_owned(),
            "Projection: a\n  TableScan: t".to_owned(),
        ]);
        assert_eq!(
            rows,
            vec![
                vec!["logical_plan".to_owned()],
                vec!["01)Projection: a".to_owned()],
                vec!["02)--TableScan: t".to_owned()],
            ]
        );
        assert_eq!(expand_row(vec!["a".to_owned()]), vec![vec!["a".to_owned()]]);
    }
}
