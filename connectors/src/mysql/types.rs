//! MySQL/MariaDB column types: how each maps to Arrow, how result values
//! (binary protocol) are decoded into Arrow builders, and how Arrow values
//! are written as SQL literals of a multi-row `INSERT`.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder,
    Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt8Builder, UInt16Builder,
    UInt32Builder, UInt64Builder,
};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int64Type, Time64MicrosecondType, TimeUnit,
    TimestampMicrosecondType, UInt64Type,
};
use chrono::{DateTime, Datelike, NaiveDate, Timelike};
use mysql_async::Column;
use mysql_async::Value;
use mysql_async::consts::{ColumnFlags, ColumnType};
use serde::{Deserialize, Serialize};

/// `character_set` of binary strings (`BINARY`, `VARBINARY`, `BLOB`).
const BINARY_CHARSET: u16 = 63;

/// How values of a column are read and written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MyKind {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    Decimal { precision: u8, scale: i8 },
    Text,
    Binary,
    Bits,
    Date,
    Time,
    DateTime,
    Timestamp,
}

impl MyKind {
    /// The Arrow type values are read as.
    pub(crate) fn data_type(&self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int8 => DataType::Int8,
            Self::Int16 => DataType::Int16,
            Self::Int32 => DataType::Int32,
            Self::Int64 => DataType::Int64,
            Self::UInt8 => DataType::UInt8,
            Self::UInt16 => DataType::UInt16,
            Self::UInt32 => DataType::UInt32,
            Self::UInt64 | Self::Bits => DataType::UInt64,
            Self::Float32 => DataType::Float32,
            Self::Float64 => DataType::Float64,
            Self::Decimal { precision, scale } if *precision <= 38 => {
                DataType::Decimal128(*precision, *scale)
            }
            Self::Decimal { precision, scale } => DataType::Decimal256(*precision, *scale),
            Self::Text => DataType::Utf8,
            Self::Binary => DataType::Binary,
            Self::Date => DataType::Date32,
            Self::Time => DataType::Time64(TimeUnit::Microsecond),
            Self::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

/// The kind of a result column, or `None` when Sluice cannot map it
/// (`GEOMETRY`, `VECTOR`, ...).
pub(crate) fn my_kind(c: &Column) -> Option<MyKind> {
    let unsigned = c.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let int = |signed: MyKind, unsigned_kind: MyKind| {
        if unsigned { unsigned_kind } else { signed }
    };
    use ColumnType::*;
    Some(match c.column_type() {
        // MySQL's BOOLEAN is TINYINT(1).
        MYSQL_TYPE_TINY if c.column_length() == 1 && !unsigned => MyKind::Bool,
        MYSQL_TYPE_TINY => int(MyKind::Int8, MyKind::UInt8),
        MYSQL_TYPE_SHORT => int(MyKind::Int16, MyKind::UInt16),
        MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG => int(MyKind::Int32, MyKind::UInt32),
        MYSQL_TYPE_LONGLONG => int(MyKind::Int64, MyKind::UInt64),
        MYSQL_TYPE_YEAR => MyKind::Int16,
        MYSQL_TYPE_FLOAT => MyKind::Float32,
        MYSQL_TYPE_DOUBLE => MyKind::Float64,
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => {
            let scale = c.decimals().min(38);
            // The display length counts the sign and the decimal point.
            let digits = c.column_length() as i64 - i64::from(scale > 0) - i64::from(!unsigned);
            MyKind::Decimal {
                precision: digits.clamp(1, 76) as u8,
                scale: scale as i8,
            }
        }
        MYSQL_TYPE_BIT if c.column_length() == 1 => MyKind::Bool,
        MYSQL_TYPE_BIT => MyKind::Bits,
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => MyKind::Date,
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => MyKind::Time,
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => MyKind::DateTime,
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => MyKind::Timestamp,
        MYSQL_TYPE_JSON | MYSQL_TYPE_ENUM | MYSQL_TYPE_SET => MyKind::Text,
        MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB => {
            let text_like = c
                .flags()
                .intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG);
            if c.character_set() == BINARY_CHARSET && !text_like {
                MyKind::Binary
            } else {
                MyKind::Text
            }
        }
        _ => return None,
    })
}

/// The column's type as MySQL spells it, for messages.
pub(crate) fn type_display(c: &Column) -> String {
    use ColumnType::*;
    let unsigned = if c.flags().contains(ColumnFlags::UNSIGNED_FLAG) {
        " unsigned"
    } else {
        ""
    };
    let binary = c.character_set() == BINARY_CHARSET;
    let base = match c.column_type() {
        MYSQL_TYPE_TINY => format!("tinyint({})", c.column_length()),
        MYSQL_TYPE_SHORT => "smallint".into(),
        MYSQL_TYPE_INT24 => "mediumint".into(),
        MYSQL_TYPE_LONG => "int".into(),
        MYSQL_TYPE_LONGLONG => "bigint".into(),
        MYSQL_TYPE_YEAR => "year".into(),
        MYSQL_TYPE_FLOAT => "float".into(),
        MYSQL_TYPE_DOUBLE => "double".into(),
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => match my_kind(c) {
            Some(MyKind::Decimal { precision, scale }) => format!("decimal({precision},{scale})"),
            _ => "decimal".into(),
        },
        MYSQL_TYPE_BIT => format!("bit({})", c.column_length()),
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => "date".into(),
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => "time".into(),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => "datetime".into(),
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => "timestamp".into(),
        MYSQL_TYPE_JSON => "json".into(),
        MYSQL_TYPE_ENUM => "enum".into(),
        MYSQL_TYPE_SET => "set".into(),
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if binary => "varbinary".into(),
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => "varchar".into(),
        MYSQL_TYPE_STRING if binary => "binary".into(),
        MYSQL_TYPE_STRING => "char".into(),
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB
            if binary =>
        {
            "blob".into()
        }
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            "text".into()
        }
        MYSQL_TYPE_GEOMETRY => "geometry".into(),
        MYSQL_TYPE_VECTOR => "vector".into(),
        other => format!("{other:?}")
            .trim_start_matches("MYSQL_TYPE_")
            .to_lowercase(),
    };
    format!("{base}{unsigned}")
}

/// Accumulates the values of one column into an Arrow array.
pub(crate) enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt8(UInt8Builder),
    UInt16(UInt16Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    /// Decimal text, cast exactly to the decimal type when the batch ends.
    Decimal(StringBuilder, DataType),
    Text(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
}

impl ColumnBuilder {
    pub(crate) fn new(kind: &MyKind, capacity: usize) -> Self {
        match kind {
            MyKind::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            MyKind::Int8 => Self::Int8(Int8Builder::with_capacity(capacity)),
            MyKind::Int16 => Self::Int16(Int16Builder::with_capacity(capacity)),
            MyKind::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            MyKind::Int64 => Self::Int64(Int64Builder::with_capacity(capacity)),
            MyKind::UInt8 => Self::UInt8(UInt8Builder::with_capacity(capacity)),
            MyKind::UInt16 => Self::UInt16(UInt16Builder::with_capacity(capacity)),
            MyKind::UInt32 => Self::UInt32(UInt32Builder::with_capacity(capacity)),
            MyKind::UInt64 | MyKind::Bits => Self::UInt64(UInt64Builder::with_capacity(capacity)),
            MyKind::Float32 => Self::Float32(Float32Builder::with_capacity(capacity)),
            MyKind::Float64 => Self::Float64(Float64Builder::with_capacity(capacity)),
            MyKind::Decimal { .. } => Self::Decimal(
                StringBuilder::with_capacity(capacity, capacity * 8),
                kind.data_type(),
            ),
            MyKind::Text => Self::Text(StringBuilder::with_capacity(capacity, capacity * 16)),
            MyKind::Binary => Self::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            MyKind::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            MyKind::Time => Self::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            MyKind::DateTime => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity), None)
            }
            MyKind::Timestamp => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                Some("UTC".into()),
            ),
        }
    }

    /// Appends one value; the error says why it cannot be read.
    pub(crate) fn append(&mut self, v: Value) -> Result<(), String> {
        if v == Value::NULL {
            self.append_null();
            return Ok(());
        }
        fn range<T: TryFrom<i128>>(v: i128) -> Result<T, String> {
            T::try_from(v).map_err(|_| format!("value {v} is out of range"))
        }
        let int = |v: &Value| -> Result<i128, String> {
            match v {
                Value::Int(i) => Ok(*i as i128),
                Value::UInt(u) => Ok(*u as i128),
                Value::Bytes(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.trim().parse::<i128>().ok())
                    .ok_or_else(|| format!("'{}' is not an integer", String::from_utf8_lossy(b))),
                other => Err(format!("unexpected value {other:?} for an integer column")),
            }
        };
        match self {
            Self::Bool(b) => b.append_value(match &v {
                Value::Bytes(bits) => bits.iter().any(|x| *x != 0),
                other => int(other)? != 0,
            }),
            Self::Int8(b) => b.append_value(range(int(&v)?)?),
            Self::Int16(b) => b.append_value(range(int(&v)?)?),
            Self::Int32(b) => b.append_value(range(int(&v)?)?),
            Self::Int64(b) => b.append_value(range(int(&v)?)?),
            Self::UInt8(b) => b.append_value(range(int(&v)?)?),
            Self::UInt16(b) => b.append_value(range(int(&v)?)?),
            Self::UInt32(b) => b.append_value(range(int(&v)?)?),
            Self::UInt64(b) => b.append_value(match &v {
                // BIT(n): big-endian bytes.
                Value::Bytes(bits) if bits.len() <= 8 => {
                    bits.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
                }
                other => range(int(other)?)?,
            }),
            Self::Float32(b) => b.append_value(match v {
                Value::Float(f) => f,
                Value::Double(d) => d as f32,
                other => int(&other)? as f32,
            }),
            Self::Float64(b) => b.append_value(match v {
                Value::Double(d) => d,
                Value::Float(f) => f64::from(f),
                other => int(&other)? as f64,
            }),
            Self::Decimal(b, _) => match v {
                Value::Bytes(s) => b.append_value(
                    std::str::from_utf8(&s).map_err(|_| "decimal text is not UTF-8".to_string())?,
                ),
                other => return Err(format!("unexpected value {other:?} for a decimal column")),
            },
            Self::Text(b) => match v {
                Value::Bytes(s) => b.append_value(std::str::from_utf8(&s).map_err(|_| {
                    "the value is not valid UTF-8; declare the column as BYTES (VARBINARY) \
                     or convert it in a 'query' with CONVERT(col USING utf8mb4)"
                        .to_string()
                })?),
                other => return Err(format!("unexpected value {other:?} for a text column")),
            },
            Self::Binary(b) => match v {
                Value::Bytes(s) => b.append_value(s),
                other => return Err(format!("unexpected value {other:?} for a binary column")),
            },
            Self::Date(b) => match v {
                Value::Date(y, m, d, ..) => {
                    let date = date(y, m, d)?;
                    b.append_value(Date32Type::from_naive_date(date));
                }
                other => return Err(format!("unexpected value {other:?} for a date column")),
            },
            Self::Time(b) => match v {
                Value::Time(neg, days, h, m, s, us) => {
                    let micros = ((i64::from(days) * 24 + i64::from(h)) * 60 + i64::from(m)) * 60
                        + i64::from(s);
                    let micros = micros * 1_000_000 + i64::from(us);
                    if neg || micros >= 86_400_000_000 {
                        return Err(format!(
                            "TIME value {}{days} days {h:02}:{m:02}:{s:02} is not a time of day; \
                             read it as a duration with TIME_TO_SEC(col) in a 'query'",
                            if neg { "-" } else { "" }
                        ));
                    }
                    b.append_value(micros);
                }
                other => return Err(format!("unexpected value {other:?} for a time column")),
            },
            Self::Timestamp(b, _) => match v {
                Value::Date(y, mo, d, h, mi, s, us) => {
                    let ts = date(y, mo, d)?
                        .and_hms_micro_opt(u32::from(h), u32::from(mi), u32::from(s), us)
                        .ok_or_else(|| {
                            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} is not a time")
                        })?;
                    b.append_value(ts.and_utc().timestamp_micros());
                }
                other => return Err(format!("unexpected value {other:?} for a datetime column")),
            },
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int8(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::UInt8(b) => b.append_null(),
            Self::UInt16(b) => b.append_null(),
            Self::UInt32(b) => b.append_null(),
            Self::UInt64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b, _) | Self::Text(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Timestamp(b, _) => b.append_null(),
        }
    }

    /// The array of the values appended since the last call.
    pub(crate) fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int8(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::UInt8(b) => Arc::new(b.finish()),
            Self::UInt16(b) => Arc::new(b.finish()),
            Self::UInt32(b) => Arc::new(b.finish()),
            Self::UInt64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal(b, t) => {
                let text: ArrayRef = Arc::new(b.finish());
                let out = cast(&text, t).map_err(|e| e.to_string())?;
                if out.null_count() != text.null_count() {
                    return Err(format!("a decimal value does not fit {t}"));
                }
                out
            }
            Self::Text(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Timestamp(b, tz) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
        })
    }
}

fn date(y: u16, m: u8, d: u8) -> Result<NaiveDate, String> {
    NaiveDate::from_ymd_opt(i32::from(y), u32::from(m), u32::from(d)).ok_or_else(|| {
        if y == 0 && m == 0 && d == 0 {
            "the zero date '0000-00-00' has no Arrow value; read it as NULL with \
             NULLIF(col, '0000-00-00') in a 'query'"
                .to_string()
        } else {
            format!("{y:04}-{m:02}-{d:02} is not a valid date")
        }
    })
}

/// An Arrow column prepared for writing as SQL literals.
pub(crate) struct LiteralWriter {
    array: ArrayRef,
}

impl LiteralWriter {
    /// Prepares `array`; the error says which Arrow type cannot be written.
    pub(crate) fn try_new(array: &ArrayRef) -> Result<Self, String> {
        let t = array.data_type();
        let want = match t {
            DataType::Null | DataType::Boolean => None,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                Some(DataType::Int64)
            }
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                Some(DataType::UInt64)
            }
            DataType::Float16 | DataType::Float32 => Some(DataType::Float32),
            DataType::Float64 => None,
            DataType::Utf8 => None,
            DataType::Binary => None,
            DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
                Some(DataType::Binary)
            }
            DataType::Date32 | DataType::Date64 => Some(DataType::Date32),
            DataType::Time32(_) | DataType::Time64(_) => {
                Some(DataType::Time64(TimeUnit::Microsecond))
            }
            DataType::Timestamp(_, tz) => {
                Some(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
            }
            DataType::List(_)
            | DataType::LargeList(_)
            | DataType::Struct(_)
            | DataType::Map(..)
            | DataType::Union(..) => {
                return Err(format!(
                    "{t} values cannot be written to MySQL; convert them in the query \
                     (e.g. to a JSON string)"
                ));
            }
            // Decimals, large and view strings, intervals: their text form.
            _ => Some(DataType::Utf8),
        };
        let array = match want {
            Some(w) if &w != t => {
                let out = cast(array, &w).map_err(|e| e.to_string())?;
                if out.null_count() > array.null_count() {
                    return Err(format!("some {t} values cannot be converted to {w}"));
                }
                out
            }
            _ => Arc::clone(array),
        };
        Ok(Self { array })
    }

    /// Appends the literal of row `i` to `sql`.
    pub(crate) fn write(&self, i: usize, sql: &mut String) -> Result<(), String> {
        let a = &self.array;
        if a.is_null(i) {
            sql.push_str("NULL");
            return Ok(());
        }
        match a.data_type() {
            DataType::Boolean => sql.push_str(if a.as_boolean().value(i) { "1" } else { "0" }),
            DataType::Int64 => {
                let _ = write!(sql, "{}", a.as_primitive::<Int64Type>().value(i));
            }
            DataType::UInt64 => {
                let _ = write!(sql, "{}", a.as_primitive::<UInt64Type>().value(i));
            }
            DataType::Float32 => {
                let v = a.as_primitive::<Float32Type>().value(i);
                finite(f64::from(v))?;
                let _ = write!(sql, "{v:e}");
            }
            DataType::Float64 => {
                let v = a.as_primitive::<Float64Type>().value(i);
                finite(v)?;
                let _ = write!(sql, "{v:e}");
            }
            DataType::Utf8 => quote_string(a.as_string::<i32>().value(i), sql),
            DataType::Binary => {
                let bytes = a.as_binary::<i32>().value(i);
                sql.push_str("X'");
                for b in bytes {
                    let _ = write!(sql, "{b:02x}");
                }
                sql.push('\'');
            }
            DataType::Date32 => {
                let d = a
                    .as_primitive::<Date32Type>()
                    .value_as_date(i)
                    .ok_or("bad date")?;
                let _ = write!(sql, "'{:04}-{:02}-{:02}'", d.year(), d.month(), d.day());
            }
            DataType::Time64(_) => {
                let t = a
                    .as_primitive::<Time64MicrosecondType>()
                    .value_as_time(i)
                    .ok_or("bad time")?;
                let _ = write!(
                    sql,
                    "'{:02}:{:02}:{:02}.{:06}'",
                    t.hour(),
                    t.minute(),
                    t.second(),
                    t.nanosecond() / 1000
                );
            }
            DataType::Timestamp(..) => {
                // The UTC instant; sessions run with time_zone = '+00:00'.
                let micros = a.as_primitive::<TimestampMicrosecondType>().value(i);
                let t = DateTime::from_timestamp_micros(micros)
                    .ok_or("timestamp out of range")?
                    .naive_utc();
                let _ = write!(sql, "'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f"));
            }
            DataType::Null => sql.push_str("NULL"),
            other => return Err(format!("cannot write {other} values")),
        }
        Ok(())
    }
}

fn finite(v: f64) -> Result<(), String> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "{v} cannot be stored in MySQL (no NaN or infinity); filter or NULLIF it in the query"
        ))
    }
}

/// Appends `s` as a MySQL string literal. Sessions never set
/// `NO_BACKSLASH_ESCAPES` and use utf8mb4, so backslash escaping is exact.
pub(crate) fn quote_string(s: &str, sql: &mut String) {
    sql.reserve(s.len() + 2);
    sql.push('\'');
    for c in s.chars() {
        match c {
            '\'' => sql.push_str("\\'"),
            '\\' => sql.push_str("\\\\"),
            '\0' => sql.push_str("\\0"),
            '\n' => sql.push_str("\\n"),
            '\r' => sql.push_str("\\r"),
            '\x1a' => sql.push_str("\\Z"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        quote_string("it's a \\ test\n\0", &mut s);
        assert_eq!(s, "'it\\'s a \\\\ test\\n\\0'");
    }

    #[test]
    fn literals_of_each_type() {
        let mut sql = String::new();
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(arrow::array::Int32Array::from(vec![Some(-3), None])),
            Arc::new(arrow::array::Float64Array::from(vec![0.1, 2.5])),
            Arc::new(
                arrow::array::Decimal128Array::from(vec![12345, -5])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from(vec![1_000_001, 0])
                    .with_timezone("UTC"),
            ),
            Arc::new(arrow::array::BinaryArray::from(vec![&b"\x01\xff"[..], b""])),
        ];
        for a in &arrays {
            let w = LiteralWriter::try_new(a).unwrap();
            w.write(0, &mut sql).unwrap();
            sql.push(',');
            w.write(1, &mut sql).unwrap();
            sql.push(';');
        }
        assert_eq!(
            sql,
            "-3,NULL;1e-1,2.5e0;'123.45','-0.05';'1970-01-01 00:00:01.000001','1970-01-01 00:00:00.000000';X'01ff',X'';"
        );
        let nan: ArrayRef = Arc::new(arrow::array::Float64Array::from(vec![f64::NAN]));
        assert!(
            LiteralWriter::try_new(&nan)
                .unwrap()
                .write(0, &mut sql)
                .is_err()
        );
    }
}
