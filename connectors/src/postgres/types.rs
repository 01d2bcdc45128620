//! Postgres ⇄ Arrow type mapping, and the binary `COPY` encoding of values.
//!
//! | Postgres | Arrow |
//! |---|---|
//! | `boolean` | `Boolean` |
//! | `smallint`, `integer`, `bigint` | `Int16`, `Int32`, `Int64` |
//! | `real`, `double precision` | `Float32`, `Float64` |
//! | `numeric(p, s)` | `Decimal128(p, s)` (p ≤ 38), `Decimal256(p, s)` (p ≤ 76) |
//! | `numeric` (no precision) | `Decimal128(38, 18)`; values with more digits are errors |
//! | `text`, `varchar(n)`, `char(n)`, `name`, `citext`, enums | `Utf8` |
//! | `json`, `jsonb` | `Utf8` (the JSON text) |
//! | `uuid` | `Utf8` (hyphenated, lower case) |
//! | `bytea` | `Binary` |
//! | `date` | `Date32` |
//! | `time` | `Time64(µs)` |
//! | `timestamp` | `Timestamp(µs)` |
//! | `timestamptz` | `Timestamp(µs, "UTC")` |
//! | `interval` | `Interval(MonthDayNano)` |
//! | one-dimensional arrays of the above | `List` of the element type |
//! | domains | as their base type |
//!
//! Any other type is an error naming the column, unless the table sets
//! `'types.unmapped' = 'text'`, which reads it as its text form (`col::text`).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Array,
    Date32Builder, Decimal128Array, Decimal128Builder, Decimal256Array, Decimal256Builder,
    Float32Array, Float32Builder, Float64Array, Float64Builder, Int16Array, Int16Builder,
    Int32Array, Int32Builder, Int64Array, Int64Builder, IntervalMonthDayNanoArray,
    IntervalMonthDayNanoBuilder, LargeStringArray, ListArray, StringArray, StringBuilder,
    StringViewArray, Time64MicrosecondArray, Time64MicrosecondBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{
    DataType, Field, FieldRef, IntervalMonthDayNano, IntervalUnit, TimeUnit, i256,
};
use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{Kind, Type};

/// Days from 1970-01-01 to 2000-01-01, the Postgres epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Scale of `numeric` columns declared without precision.
pub(crate) const UNCONSTRAINED_NUMERIC: (u8, i8) = (38, 18);

/// How values of one column travel in binary `COPY`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum PgKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric` read as a decimal of this precision and scale.
    Numeric(u8, i8),
    /// Text-like: `text`, `varchar`, `char`, `name`, enums, `json`, and
    /// columns of unmapped types read as `col::text`.
    Text,
    Jsonb,
    Uuid,
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    /// A one-dimensional array; the element's type OID travels in the
    /// array header.
    Array(Box<PgKind>, u32),
}

impl PgKind {
    /// The Arrow type of values of this kind.
    pub(crate) fn data_type(&self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int2 => DataType::Int16,
            Self::Int4 => DataType::Int32,
            Self::Int8 => DataType::Int64,
            Self::Float4 => DataType::Float32,
            Self::Float8 => DataType::Float64,
            Self::Numeric(p, s) if *p <= 38 => DataType::Decimal128(*p, *s),
            Self::Numeric(p, s) => DataType::Decimal256(*p, *s),
            Self::Text | Self::Jsonb | Self::Uuid => DataType::Utf8,
            Self::Bytea => DataType::Binary,
            Self::Date => DataType::Date32,
            Self::Time => DataType::Time64(TimeUnit::Microsecond),
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Self::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
            Self::Array(elem, _) => {
                DataType::List(Arc::new(Field::new("item", elem.data_type(), true)))
            }
        }
    }
}

/// Maps a Postgres column type (with its type modifier) to how Sluice reads
/// it, or `None` when it has no mapping.
pub(crate) fn pg_kind(ty: &Type, typmod: i32) -> Option<PgKind> {
    let kind = match *ty {
        Type::BOOL => PgKind::Bool,
        Type::INT2 => PgKind::Int2,
        Type::INT4 => PgKind::Int4,
        Type::INT8 => PgKind::Int8,
        Type::FLOAT4 => PgKind::Float4,
        Type::FLOAT8 => PgKind::Float8,
        Type::NUMERIC => {
            // typmod = ((precision << 16) | scale) + 4, or -1 when unconstrained.
            if typmod < 4 {
                PgKind::Numeric(UNCONSTRAINED_NUMERIC.0, UNCONSTRAINED_NUMERIC.1)
            } else {
                let m = typmod - 4;
                let precision = ((m >> 16) & 0xffff) as u8;
                // Scale is an 11-bit signed value since Postgres 15.
                let scale = (((m & 0x7ff) ^ 0x400) - 0x400) as i8;
                if precision > 76 {
                    return None;
                }
                PgKind::Numeric(precision, scale)
            }
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::UNKNOWN => {
            PgKind::Text
        }
        Type::JSONB => PgKind::Jsonb,
        Type::UUID => PgKind::Uuid,
        Type::BYTEA => PgKind::Bytea,
        Type::DATE => PgKind::Date,
        Type::TIME => PgKind::Time,
        Type::TIMESTAMP => PgKind::Timestamp,
        Type::TIMESTAMPTZ => PgKind::TimestampTz,
        Type::INTERVAL => PgKind::Interval,
        _ => match ty.kind() {
            Kind::Enum(_) => PgKind::Text,
            Kind::Domain(base) => return pg_kind(base, typmod),
            Kind::Array(elem) => {
                let inner = pg_kind(elem, typmod)?;
                if matches!(inner, PgKind::Array(..)) {
                    return None;
                }
                PgKind::Array(Box::new(inner), elem.oid())
            }
            // `citext` and other extension text types.
            _ if ty.name() == "citext" => PgKind::Text,
            _ => return None,
        },
    };
    Some(kind)
}

/// The SQL name of a column type, for error messages.
pub(crate) fn type_display(ty: &Type, typmod: i32) -> String {
    if *ty == Type::NUMERIC && typmod >= 4 {
        let m = typmod - 4;
        return format!("numeric({}, {})", (m >> 16) & 0xffff, m & 0x7ff);
    }
    ty.name().to_string()
}

/// A decoding error, before the column is known.
pub(crate) type DecodeResult<T> = std::result::Result<T, String>;

/// Accumulates one column's values from binary `COPY` fields.
pub(crate) enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Decimal128(Decimal128Builder, u8, i8),
    Decimal256(Decimal256Builder, u8, i8),
    Text(StringBuilder, bool),
    Uuid(StringBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, bool),
    Interval(IntervalMonthDayNanoBuilder),
    List {
        field: FieldRef,
        offsets: Vec<i32>,
        nulls: Vec<bool>,
        values: Box<ColumnBuilder>,
    },
}

impl ColumnBuilder {
    /// A builder for `kind` with room for `capacity` values.
    pub(crate) fn new(kind: &PgKind, capacity: usize) -> Self {
        match kind {
            PgKind::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            PgKind::Int2 => Self::Int2(Int16Builder::with_capacity(capacity)),
            PgKind::Int4 => Self::Int4(Int32Builder::with_capacity(capacity)),
            PgKind::Int8 => Self::Int8(Int64Builder::with_capacity(capacity)),
            PgKind::Float4 => Self::Float4(Float32Builder::with_capacity(capacity)),
            PgKind::Float8 => Self::Float8(Float64Builder::with_capacity(capacity)),
            PgKind::Numeric(p, s) if *p <= 38 => {
                Self::Decimal128(Decimal128Builder::with_capacity(capacity), *p, *s)
            }
            PgKind::Numeric(p, s) => {
                Self::Decimal256(Decimal256Builder::with_capacity(capacity), *p, *s)
            }
            PgKind::Text => {
                Self::Text(StringBuilder::with_capacity(capacity, capacity * 16), false)
            }
            PgKind::Jsonb => {
                Self::Text(StringBuilder::with_capacity(capacity, capacity * 16), true)
            }
            PgKind::Uuid => Self::Uuid(StringBuilder::with_capacity(capacity, capacity * 36)),
            PgKind::Bytea => Self::Bytea(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            PgKind::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            PgKind::Time => Self::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            PgKind::Timestamp => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity), false)
            }
            PgKind::TimestampTz => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity), true)
            }
            PgKind::Interval => {
                Self::Interval(IntervalMonthDayNanoBuilder::with_capacity(capacity))
            }
            PgKind::Array(elem, _) => {
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Self::List {
                    field: Arc::new(Field::new("item", elem.data_type(), true)),
                    offsets,
                    nulls: Vec::with_capacity(capacity),
                    values: Box::new(Self::new(elem, capacity)),
                }
            }
        }
    }

    /// Appends one value in Postgres' binary format, or a null.
    pub(crate) fn append(&mut self, value: Option<&[u8]>) -> DecodeResult<()> {
        let Some(v) = value else {
            self.append_null();
            return Ok(());
        };
        match self {
            Self::Bool(b) => b.append_value(fixed::<1>(v)?[0] != 0),
            Self::Int2(b) => b.append_value(i16::from_be_bytes(fixed(v)?)),
            Self::Int4(b) => b.append_value(i32::from_be_bytes(fixed(v)?)),
            Self::Int8(b) => b.append_value(i64::from_be_bytes(fixed(v)?)),
            Self::Float4(b) => b.append_value(f32::from_be_bytes(fixed(v)?)),
            Self::Float8(b) => b.append_value(f64::from_be_bytes(fixed(v)?)),
            Self::Decimal128(b, p, s) => {
                let value = match decode_numeric_i128(v, *s) {
                    Some(n) => n,
                    None => decode_numeric(v, *s)?
                        .to_i128()
                        .ok_or_else(|| format!("numeric value does not fit decimal({p}, {s})"))?,
                };
                // `p` is at most 38, so `10^p` fits an i128.
                if value.unsigned_abs() >= 10_u128.pow(u32::from(*p)) {
                    return Err(format!("numeric value does not fit decimal({p}, {s})"));
                }
                b.append_value(value)
            }
            Self::Decimal256(b, p, s) => {
                let n = decode_numeric(v, *s)?;
                if !fits_precision(n, *p) {
                    return Err(format!("numeric value does not fit decimal({p}, {s})"));
                }
                b.append_value(n)
            }
            Self::Text(b, jsonb) => {
                let bytes = if *jsonb {
                    match v.split_first() {
                        Some((1, rest)) => rest,
                        _ => return Err("unknown jsonb binary version".into()),
                    }
                } else {
                    v
                };
                b.append_value(std::str::from_utf8(bytes).map_err(|e| e.to_string())?)
            }
            Self::Uuid(b) => {
                let u = uuid::Uuid::from_bytes(fixed(v)?);
                b.append_value(
                    u.hyphenated()
                        .encode_lower(&mut uuid::Uuid::encode_buffer()),
                )
            }
            Self::Bytea(b) => b.append_value(v),
            Self::Date(b) => {
                let days = i32::from_be_bytes(fixed(v)?);
                if days == i32::MAX || days == i32::MIN {
                    return Err("date 'infinity' has no Arrow value".into());
                }
                b.append_value(days + PG_EPOCH_DAYS)
            }
            Self::Time(b) => b.append_value(i64::from_be_bytes(fixed(v)?)),
            Self::Timestamp(b, _) => {
                let micros = i64::from_be_bytes(fixed(v)?);
                if micros == i64::MAX || micros == i64::MIN {
                    return Err("timestamp 'infinity' has no Arrow value".into());
                }
                b.append_value(micros + PG_EPOCH_MICROS)
            }
            Self::Interval(b) => {
                let raw: [u8; 16] = fixed(v)?;
                let micros = i64::from_be_bytes(raw[0..8].try_into().expect("8 bytes"));
                let days = i32::from_be_bytes(raw[8..12].try_into().expect("4 bytes"));
                let months = i32::from_be_bytes(raw[12..16].try_into().expect("4 bytes"));
                b.append_value(IntervalMonthDayNano::new(months, days, micros * 1000))
            }
            Self::List {
                offsets,
                nulls,
                values,
                ..
            } => {
                let count = decode_array(v, values)?;
                let last = *offsets.last().expect("offsets start at 0");
                offsets.push(last + count);
                nulls.push(true);
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int2(b) => b.append_null(),
            Self::Int4(b) => b.append_null(),
            Self::Int8(b) => b.append_null(),
            Self::Float4(b) => b.append_null(),
            Self::Float8(b) => b.append_null(),
            Self::Decimal128(b, ..) => b.append_null(),
            Self::Decimal256(b, ..) => b.append_null(),
            Self::Text(b, _) | Self::Uuid(b) => b.append_null(),
            Self::Bytea(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Timestamp(b, _) => b.append_null(),
            Self::Interval(b) => b.append_null(),
            Self::List { offsets, nulls, .. } => {
                let last = *offsets.last().expect("offsets start at 0");
                offsets.push(last);
                nulls.push(false);
            }
        }
    }

    /// The values appended so far, as an array; the builder starts over.
    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int2(b) => Arc::new(b.finish()),
            Self::Int4(b) => Arc::new(b.finish()),
            Self::Int8(b) => Arc::new(b.finish()),
            Self::Float4(b) => Arc::new(b.finish()),
            Self::Float8(b) => Arc::new(b.finish()),
            Self::Decimal128(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .expect("precision checked by the mapping"),
            ),
            Self::Decimal256(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .expect("precision checked by the mapping"),
            ),
            Self::Text(b, _) | Self::Uuid(b) => Arc::new(b.finish()),
            Self::Bytea(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Timestamp(b, tz) => {
                let a = b.finish();
                Arc::new(if *tz { a.with_timezone("UTC") } else { a })
            }
            Self::Interval(b) => Arc::new(b.finish()),
            Self::List {
                field,
                offsets,
                nulls,
                values,
            } => {
                let offsets = std::mem::replace(offsets, vec![0]);
                let nulls = NullBuffer::from(std::mem::take(nulls));
                let values = values.finish();
                Arc::new(ListArray::new(
                    Arc::clone(field),
                    OffsetBuffer::new(offsets.into()),
                    values,
                    (nulls.null_count() > 0).then_some(nulls),
                ))
            }
        }
    }
}

fn fixed<const N: usize>(v: &[u8]) -> DecodeResult<[u8; N]> {
    v.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", v.len()))
}

fn fits_precision(v: i256, precision: u8) -> bool {
    let limit = i256::from_i128(10).wrapping_pow(u32::from(precision));
    v < limit && v > limit.wrapping_neg()
}

/// [`decode_numeric`] in `i128` arithmetic, for the values that fit it:
/// `None` sends everything else (overflow, NaN, digits beyond the scale)
/// to the general path, which also words the errors.
fn decode_numeric_i128(v: &[u8], scale: i8) -> Option<i128> {
    let header = v.get(..8)?;
    let ndigits = usize::try_from(i16::from_be_bytes([header[0], header[1]])).ok()?;
    let weight = i32::from(i16::from_be_bytes([header[2], header[3]]));
    let negative = match u16::from_be_bytes([header[4], header[5]]) {
        0x0000 => false,
        0x4000 => true,
        _ => return None,
    };
    // The base-10000 digits as one integer: the value times 10000^(ndigits - 1 - weight).
    let mut acc: i128 = 0;
    for d in v.get(8..8 + 2 * ndigits)?.chunks_exact(2) {
        acc = acc
            .checked_mul(10_000)?
            .checked_add(i128::from(i16::from_be_bytes([d[0], d[1]])))?;
    }
    let exp = 4 * (weight + 1 - ndigits as i32) + i32::from(scale);
    let acc = if exp >= 0 {
        acc.checked_mul(10_i128.checked_pow(exp.unsigned_abs())?)?
    } else {
        let div = 10_i128.checked_pow(exp.unsigned_abs())?;
        if acc % div != 0 {
            return None;
        }
        acc / div
    };
    Some(if negative { -acc } else { acc })
}

/// Decodes a binary `numeric` into an integer scaled by `10^scale`.
fn decode_numeric(v: &[u8], scale: i8) -> DecodeResult<i256> {
    if v.len() < 8 {
        return Err("truncated numeric".into());
    }
    let ndigits = i16::from_be_bytes([v[0], v[1]]) as usize;
    let weight = i16::from_be_bytes([v[2], v[3]]) as i32;
    let sign = u16::from_be_bytes([v[4], v[5]]);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("numeric 'NaN' has no decimal value".into()),
        _ => return Err("numeric 'Infinity' has no decimal value".into()),
    }
    if v.len() < 8 + 2 * ndigits {
        return Err("truncated numeric".into());
    }
    let ten = i256::from_i128(10);
    let mut acc = i256::ZERO;
    for i in 0..ndigits {
        let digit = i16::from_be_bytes([v[8 + 2 * i], v[9 + 2 * i]]) as i128;
        // This digit is worth 10000^(weight - i); scaled by 10^scale.
        let exp = 4 * (weight - i as i32) + i32::from(scale);
        if exp >= 0 {
            let term = i256::from_i128(digit)
                .checked_mul(ten.checked_pow(exp as u32).ok_or("numeric overflow")?)
                .ok_or("numeric overflow")?;
            acc = acc.checked_add(term).ok_or("numeric overflow")?;
        } else {
            let div = 10_i128
                .checked_pow((-exp) as u32)
                .ok_or("numeric has more digits than the scale")?;
            if digit % div != 0 {
                return Err(format!(
                    "numeric value has more than {scale} digits after the decimal point"
                ));
            }
            acc = acc
                .checked_add(i256::from_i128(digit / div))
                .ok_or("numeric overflow")?;
        }
    }
    Ok(if sign == 0x4000 {
        acc.wrapping_neg()
    } else {
        acc
    })
}

/// Decodes a binary one-dimensional array into `values`; returns the
/// number of elements.
fn decode_array(v: &[u8], values: &mut ColumnBuilder) -> DecodeResult<i32> {
    let int = |at: usize| -> DecodeResult<i32> {
        v.get(at..at + 4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| "truncated array".to_string())
    };
    let ndim = int(0)?;
    if ndim == 0 {
        return Ok(0);
    }
    if ndim != 1 {
        return Err(format!(
            "{ndim}-dimensional arrays are not supported; only one-dimensional arrays map to lists"
        ));
    }
    let len = int(12)?;
    let mut at = 20;
    for _ in 0..len {
        let n = int(at)?;
        at += 4;
        if n < 0 {
            values.append(None)?;
        } else {
            let end = at + n as usize;
            let bytes = v.get(at..end).ok_or("truncated array")?;
            values.append(Some(bytes))?;
            at = end;
        }
    }
    Ok(len)
}

/// Writes one column's values in Postgres' binary format.
pub(crate) struct ColumnEncoder {
    array: ArrayRef,
    kind: PgKind,
}

impl ColumnEncoder {
    /// An encoder of `array` into a column of `kind`. Fails when the Arrow
    /// type cannot be written to that column.
    pub(crate) fn try_new(array: ArrayRef, kind: &PgKind) -> DecodeResult<Self> {
        let ok = match (kind, array.data_type()) {
            (PgKind::Text | PgKind::Jsonb | PgKind::Uuid, t) => {
                matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
            }
            (PgKind::Array(elem, _), DataType::List(f)) => f.data_type() == &elem.data_type(),
            (k, t) => {
                &k.data_type() == t
                    || matches!(
                        (k, t),
                        (
                            PgKind::Timestamp | PgKind::TimestampTz,
                            DataType::Timestamp(TimeUnit::Microsecond, _)
                        )
                    )
            }
        };
        if !ok {
            return Err(format!(
                "cannot write {} values into a column read as {}",
                array.data_type(),
                kind.data_type()
            ));
        }
        Ok(Self {
            array,
            kind: kind.clone(),
        })
    }

    /// Appends the field (length and value) of row `i` to `buf`.
    pub(crate) fn encode(&self, i: usize, buf: &mut BytesMut) -> DecodeResult<()> {
        encode_value(self.array.as_ref(), &self.kind, i, buf)
    }
}

fn encode_value(
    array: &dyn Array,
    kind: &PgKind,
    i: usize,
    buf: &mut BytesMut,
) -> DecodeResult<()> {
    if array.is_null(i) {
        buf.put_i32(-1);
        return Ok(());
    }
    macro_rules! prim {
        ($ty:ty, $n:expr, $put:ident) => {{
            let a = array.as_any().downcast_ref::<$ty>().expect("type checked");
            buf.put_i32($n);
            buf.$put(a.value(i));
        }};
    }
    match kind {
        PgKind::Bool => {
            let a = array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .expect("type checked");
            buf.put_i32(1);
            buf.put_u8(u8::from(a.value(i)));
        }
        PgKind::Int2 => prim!(Int16Array, 2, put_i16),
        PgKind::Int4 => prim!(Int32Array, 4, put_i32),
        PgKind::Int8 => prim!(Int64Array, 8, put_i64),
        PgKind::Float4 => prim!(Float32Array, 4, put_f32),
        PgKind::Float8 => prim!(Float64Array, 8, put_f64),
        PgKind::Numeric(_, s) => {
            let v = if let Some(a) = array.as_any().downcast_ref::<Decimal128Array>() {
                i256::from_i128(a.value(i))
            } else {
                array
                    .as_any()
                    .downcast_ref::<Decimal256Array>()
                    .expect("type checked")
                    .value(i)
            };
            if !v.to_i128().is_some_and(|v| encode_numeric_i128(v, *s, buf)) {
                encode_numeric(v, *s, buf);
            }
        }
        PgKind::Text | PgKind::Jsonb | PgKind::Uuid => {
            let s = string_value(array, i);
            match kind {
                PgKind::Jsonb => {
                    buf.put_i32(s.len() as i32 + 1);
                    buf.put_u8(1);
                    buf.put_slice(s.as_bytes());
                }
                PgKind::Uuid => {
                    let u = uuid::Uuid::parse_str(s)
                        .map_err(|e| format!("'{s}' is not a UUID: {e}"))?;
                    buf.put_i32(16);
                    buf.put_slice(u.as_bytes());
                }
                _ => {
                    buf.put_i32(s.len() as i32);
                    buf.put_slice(s.as_bytes());
                }
            }
        }
        PgKind::Bytea => {
            let a = array
                .as_any()
                .downcast_ref::<BinaryArray>()
                .expect("type checked");
            let v = a.value(i);
            buf.put_i32(v.len() as i32);
            buf.put_slice(v);
        }
        PgKind::Date => {
            let a = array
                .as_any()
                .downcast_ref::<Date32Array>()
                .expect("type checked");
            buf.put_i32(4);
            buf.put_i32(a.value(i) - PG_EPOCH_DAYS);
        }
        PgKind::Time => prim!(Time64MicrosecondArray, 8, put_i64),
        PgKind::Timestamp | PgKind::TimestampTz => {
            let a = array
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .expect("type checked");
            buf.put_i32(8);
            buf.put_i64(a.value(i) - PG_EPOCH_MICROS);
        }
        PgKind::Interval => {
            let a = array
                .as_any()
                .downcast_ref::<IntervalMonthDayNanoArray>()
                .expect("type checked");
            let v = a.value(i);
            buf.put_i32(16);
            buf.put_i64(v.nanoseconds / 1000);
            buf.put_i32(v.days);
            buf.put_i32(v.months);
        }
        PgKind::Array(elem, elem_type) => {
            let a = array
                .as_any()
                .downcast_ref::<ListArray>()
                .expect("type checked");
            let values = a.value(i);
            let len_at = buf.len();
            buf.put_i32(0); // patched below
            let start = buf.len();
            buf.put_i32(1); // dimensions
            buf.put_i32(i32::from(values.null_count() > 0));
            buf.put_u32(*elem_type);
            buf.put_i32(values.len() as i32);
            buf.put_i32(1); // lower bound
            for j in 0..values.len() {
                encode_value(values.as_ref(), elem, j, buf)?;
            }
            let len = (buf.len() - start) as i32;
            buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    Ok(())
}

fn string_value(array: &dyn Array, i: usize) -> &str {
    if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
        a.value(i)
    } else if let Some(a) = array.as_any().downcast_ref::<StringViewArray>() {
        a.value(i)
    } else {
        array
            .as_any()
            .downcast_ref::<LargeStringArray>()
            .expect("type checked")
            .value(i)
    }
}

/// [`encode_numeric`] in integer arithmetic, without allocating: the path
/// of every value whose digits, aligned to base-10000 groups, fit a `u128`.
/// Returns false, having written nothing, for the others.
fn encode_numeric_i128(v: i128, scale: i8, buf: &mut BytesMut) -> bool {
    // A negative scale means trailing zeros: shift them into the digits.
    let (magnitude, scale) = match u32::try_from(scale) {
        Ok(scale) => (v.unsigned_abs(), scale),
        Err(_) => {
            let shifted = 10_u128
                .checked_pow(u32::from(scale.unsigned_abs()))
                .and_then(|p| v.unsigned_abs().checked_mul(p));
            match shifted {
                Some(m) => (m, 0),
                None => return false,
            }
        }
    };
    // Pad the fraction to whole groups, so the point falls between two.
    let pad = (4 - scale % 4) % 4;
    let Some(mut rest) = magnitude.checked_mul(10_u128.pow(pad)) else {
        return false;
    };
    let frac_groups = ((scale + pad) / 4) as i32;
    // Base-10000 groups, least significant first; u128::MAX has 39 digits.
    let mut groups = [0_i16; 10];
    let mut n = 0;
    while rest > u128::from(u64::MAX) {
        groups[n] = (rest % 10_000) as i16;
        rest /= 10_000;
        n += 1;
    }
    let mut rest = rest as u64;
    while rest != 0 {
        groups[n] = (rest % 10_000) as i16;
        rest /= 10_000;
        n += 1;
    }
    // Trailing zero groups are not sent; leading ones never arise.
    let low = groups[..n].iter().take_while(|g| **g == 0).count();
    let digits = &groups[low..n];
    let (weight, sign, dscale) = match digits.first() {
        None => (0, 0, 0),
        Some(&lowest) => {
            // Display scale: the fraction digits the value needs, as in `encode_numeric`.
            let mut dscale = (4 * (frac_groups - low as i32)).max(0);
            if dscale > 0 {
                let mut g = lowest;
                while g % 10 == 0 {
                    g /= 10;
                    dscale -= 1;
                }
            }
            let sign = if v < 0 { 0x4000 } else { 0 };
            (n as i32 - 1 - frac_groups, sign, dscale)
        }
    };
    buf.put_i32(8 + 2 * digits.len() as i32);
    buf.put_i16(digits.len() as i16);
    buf.put_i16(weight as i16);
    buf.put_u16(sign);
    buf.put_i16(dscale as i16);
    for g in digits.iter().rev() {
        buf.put_i16(*g);
    }
    true
}

/// Encodes `v / 10^scale` as a binary `numeric`: the general path, for
/// values beyond [`encode_numeric_i128`].
fn encode_numeric(v: i256, scale: i8, buf: &mut BytesMut) {
    let negative = v < i256::ZERO;
    // A negative scale means trailing zeros: shift them into the digits.
    let v = if scale < 0 {
        v.wrapping_mul(i256::from_i128(10).wrapping_pow(u32::from(scale.unsigned_abs())))
    } else {
        v
    };
    let digits_str = v.wrapping_abs().to_string();
    let scale = scale.max(0) as usize;
    // Split into integer and fraction digit strings.
    let padded = if digits_str.len() <= scale {
        format!("{}{}", "0".repeat(scale + 1 - digits_str.len()), digits_str)
    } else {
        digits_str
    };
    let (int_part, frac_part) = padded.split_at(padded.len() - scale);
    // Base-10000 groups: integer part padded on the left, fraction on the right.
    let int_pad = (4 - int_part.len() % 4) % 4;
    let int_digits = format!("{}{}", "0".repeat(int_pad), int_part);
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let frac_digits = format!("{}{}", frac_part, "0".repeat(frac_pad));
    let mut groups: Vec<i16> = int_digits
        .as_bytes()
        .chunks(4)
        .chain(frac_digits.as_bytes().chunks(4))
        .map(|c| {
            std::str::from_utf8(c)
                .expect("ascii")
                .parse()
                .expect("digits")
        })
        .collect();
    let mut weight = (int_digits.len() / 4) as i16 - 1;
    // Strip leading and trailing zero groups.
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    buf.put_i32(8 + 2 * groups.len() as i32);
    buf.put_i16(groups.len() as i16);
    buf.put_i16(weight);
    buf.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    });
    // Display scale: the digits the value needs, so an unconstrained
    // `numeric` keeps `7` as `7`; a `numeric(p, s)` column applies its own scale.
    buf.put_i16(frac_part.trim_end_matches('0').len() as i16);
    for g in groups {
        buf.put_i16(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_numeric(v: i128, p: u8, s: i8) -> i128 {
        let mut buf = BytesMut::new();
        encode_numeric(i256::from_i128(v), s, &mut buf);
        let mut b = ColumnBuilder::new(&PgKind::Numeric(p, s), 1);
        b.append(Some(&buf[4..])).unwrap();
        let a = b.finish();
        a.as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap()
            .value(0)
    }

    #[test]
    fn numeric_binary_round_trips() {
        for (v, p, s) in [
            (0, 10, 2),
            (1, 10, 2),
            (-1, 10, 2),
            (123_456_789, 12, 4),
            (-100_000_000, 20, 0),
            (99_999_999_999_999_999_999_999_999_999_999_999, 38, 10),
            (5, 5, 5),
            (10_000, 9, 0),
        ] {
            assert_eq!(roundtrip_numeric(v, p, s), v, "value {v} scale {s}");
        }
    }

    /// Values of every size, sign and trailing-zero count (xorshift, fixed seed).
    fn sample_numerics() -> impl Iterator<Item = (i128, i8)> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..200_000).map(move |i| {
            let bits = (next() % 128) as u32;
            let wide = (u128::from(next()) << 64 | u128::from(next())) as i128;
            let mut v = if bits == 0 { 0 } else { wide >> (128 - bits) };
            if i % 5 == 0 {
                v = v / 10_000 * 10_000;
            }
            if next() % 2 == 0 {
                v = v.wrapping_neg();
            }
            (v, (next() % 46) as i8 - 6)
        })
    }

    #[test]
    fn numeric_fast_paths_agree_with_the_general_ones() {
        let (mut encoded, mut decoded) = (0, 0);
        for (v, scale) in sample_numerics() {
            let mut fast = BytesMut::new();
            if !encode_numeric_i128(v, scale, &mut fast) {
                assert!(fast.is_empty());
                continue;
            }
            let mut general = BytesMut::new();
            encode_numeric(i256::from_i128(v), scale, &mut general);
            assert_eq!(fast, general, "encoding {v} at scale {scale}");
            encoded += 1;
            for read_scale in [scale, scale.saturating_add(3), scale.saturating_sub(2)] {
                let general = decode_numeric(&fast[4..], read_scale)
                    .ok()
                    .and_then(|n| n.to_i128());
                if let Some(n) = decode_numeric_i128(&fast[4..], read_scale) {
                    assert_eq!(Some(n), general, "decoding {v} at scale {read_scale}");
                    decoded += 1;
                }
            }
        }
        // Most samples fit the fast paths; the rest took the general ones.
        assert!(
            encoded > 150_000 && decoded > 300_000,
            "{encoded} {decoded}"
        );
    }

    #[test]
    fn numeric_with_more_fraction_digits_than_the_scale_is_an_error() {
        let mut buf = BytesMut::new();
        encode_numeric(i256::from_i128(12_345), 3, &mut buf); // 12.345
        let mut b = ColumnBuilder::new(&PgKind::Numeric(10, 2), 1);
        let err = b.append(Some(&buf[4..])).unwrap_err();
        assert!(err.contains("more than 2 digits"), "{err}");
    }

    #[test]
    fn numeric_typmod_gives_precision_and_scale() {
        let typmod = ((12 << 16) | 2) + 4;
        assert_eq!(
            pg_kind(&Type::NUMERIC, typmod),
            Some(PgKind::Numeric(12, 2))
        );
        assert_eq!(pg_kind(&Type::NUMERIC, -1), Some(PgKind::Numeric(38, 18)));
        assert_eq!(pg_kind(&Type::POINT, -1), None);
    }
}
