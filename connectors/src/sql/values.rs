//! Converting between database values and snodo values.

use std::str::FromStr;

use chrono::{Datelike, Timelike};
use rust_decimal::Decimal;
use snodo_core::value::{Text, Value, ValueType};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, TypeInfo, ValueRef};

/// A float from a legacy column becomes a decimal through its shortest text form, which is
/// what the legacy application displayed.
fn float_to_decimal(f: f64) -> Value {
    if !f.is_finite() {
        // NaN and infinities have no decimal form; keep them visible as text rather than
        // turning them into a NULL nobody asked for.
        return Value::Str(f.to_string().into());
    }
    Decimal::from_str(&f.to_string())
        .or_else(|_| Decimal::from_scientific(&format!("{f:e}")))
        .map(Value::Decimal)
        .unwrap_or(Value::Null)
}

/// How each column of a query's rows is decoded, worked out once from its type (a query's
/// rows all have its columns).
///
/// Why: deciding per value (the type's name matched against a list, then sqlx's
/// compatibility check inside `try_get`) was most of the cost of reading a row of the
/// 90-column SIUSS query; the decoding itself is cheap.
#[derive(Debug, Clone)]
pub struct PgColumns {
    columns: Vec<(String, PgKind)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Numeric,
    Float4,
    Float8,
    Date,
    Timestamp,
    Timestamptz,
    Bytea,
    Json,
    /// Text, and the types sqlx reads as text (`VARCHAR`, `BPCHAR`, `NAME`, …).
    Text,
    /// A type snodo cannot read yet: an error at its first value that is not null.
    Unsupported,
}

impl PgColumns {
    /// The columns of `row`'s query.
    pub fn of(row: &PgRow) -> PgColumns {
        use sqlx::Type;
        use sqlx::postgres::Postgres;
        let columns = row
            .columns()
            .iter()
            .map(|col| {
                let info = col.type_info();
                let kind = match info.name() {
                    "BOOL" => PgKind::Bool,
                    "INT2" => PgKind::Int2,
                    "INT4" => PgKind::Int4,
                    "INT8" => PgKind::Int8,
                    "NUMERIC" => PgKind::Numeric,
                    "FLOAT4" => PgKind::Float4,
                    "FLOAT8" => PgKind::Float8,
                    "DATE" => PgKind::Date,
                    "TIMESTAMP" => PgKind::Timestamp,
                    "TIMESTAMPTZ" => PgKind::Timestamptz,
                    "BYTEA" => PgKind::Bytea,
                    "JSON" | "JSONB" => PgKind::Json,
                    _ if <String as Type<Postgres>>::compatible(info) => PgKind::Text,
                    _ => PgKind::Unsupported,
                };
                (col.name().to_string(), kind)
            })
            .collect();
        PgColumns { columns }
    }

    /// Decodes `row`, one of this query's rows, into a vector with room for `extra` more
    /// values.
    pub fn decode(&self, row: &PgRow, extra: usize) -> Result<Vec<Value>, String> {
        use sqlx::Decode;
        use sqlx::postgres::Postgres;
        fn get<'r, T: Decode<'r, Postgres>>(
            raw: sqlx::postgres::PgValueRef<'r>,
            name: &str,
            row: &PgRow,
            i: usize,
        ) -> Result<T, String> {
            T::decode(raw).map_err(|e| {
                let ty = row.columns()[i].type_info().name();
                format!("column `{name}` ({ty}): {e}")
            })
        }
        if row.len() != self.columns.len() {
            return Err(format!(
                "a row of the query has {} columns where its first had {}",
                row.len(),
                self.columns.len()
            ));
        }
        let mut out = Vec::with_capacity(row.len() + extra);
        for (i, (name, kind)) in self.columns.iter().enumerate() {
            let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
            if raw.is_null() {
                out.push(Value::Null);
                continue;
            }
            let v = match kind {
                PgKind::Bool => Value::Bool(get(raw, name, row, i)?),
                PgKind::Int2 => Value::Int(get::<i16>(raw, name, row, i)? as i64),
                PgKind::Int4 => Value::Int(get::<i32>(raw, name, row, i)? as i64),
                PgKind::Int8 => Value::Int(get(raw, name, row, i)?),
                PgKind::Numeric => Value::Decimal(get(raw, name, row, i)?),
                PgKind::Float4 => float_to_decimal(get::<f32>(raw, name, row, i)? as f64),
                PgKind::Float8 => float_to_decimal(get::<f64>(raw, name, row, i)?),
                PgKind::Date => Value::Date(get(raw, name, row, i)?),
                PgKind::Timestamp => Value::DateTime(get(raw, name, row, i)?),
                PgKind::Timestamptz => Value::DateTime(
                    get::<chrono::DateTime<chrono::Utc>>(raw, name, row, i)?.naive_utc(),
                ),
                PgKind::Bytea => Value::Bytes(get(raw, name, row, i)?),
                PgKind::Json => Value::from_json(&get::<serde_json::Value>(raw, name, row, i)?),
                PgKind::Text => Value::Str(Text::new(get::<&str>(raw, name, row, i)?)),
                PgKind::Unsupported => {
                    return Err(format!(
                        "column `{name}` has type {}, which snodo cannot read yet; cast it to text in the query",
                        row.columns()[i].type_info().name()
                    ));
                }
            };
            out.push(v);
        }
        Ok(out)
    }
}

/// Decodes a SQLite row, into a vector with room for `extra` more values. SQLite types
/// values, not columns, so each value says what it is.
pub fn sqlite_row(row: &SqliteRow, extra: usize) -> Result<Vec<Value>, String> {
    let mut out = Vec::with_capacity(row.len() + extra);
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let ty = raw.type_info().name().to_string();
        let err = |e: sqlx::Error| format!("column `{}` ({ty}): {e}", col.name());
        let v = match ty.as_str() {
            "INTEGER" => Value::Int(row.try_get(i).map_err(err)?),
            "REAL" => float_to_decimal(row.try_get::<f64, _>(i).map_err(err)?),
            "BLOB" => Value::Bytes(row.try_get(i).map_err(err)?),
            _ => Value::Str(Text::new(row.try_get::<&str, _>(i).map_err(err)?)),
        };
        out.push(v);
    }
    Ok(out)
}

/// The column type used by `create_table`.
pub fn sql_type(t: ValueType, dialect: &str) -> &'static str {
    match (t, dialect) {
        (ValueType::Int, "postgres") => "BIGINT",
        (ValueType::Decimal, "postgres") => "NUMERIC",
        (ValueType::Bool, "postgres") => "BOOLEAN",
        (ValueType::Date, "postgres") => "DATE",
        (ValueType::Datetime, "postgres") => "TIMESTAMP",
        (ValueType::Bytes, "postgres") => "BYTEA",
        (ValueType::List | ValueType::Map, "postgres") => "JSONB",
        (_, "postgres") => "TEXT",
        // SQLite: decimals and dates are stored as text so that no amount is ever turned
        // into a floating-point REAL.
        (ValueType::Int | ValueType::Bool, _) => "INTEGER",
        (ValueType::Bytes, _) => "BLOB",
        _ => "TEXT",
    }
}

/// Appends a value in PostgreSQL `COPY ... (FORMAT text)` form.
pub fn copy_text(v: &Value, out: &mut Vec<u8>) {
    use std::io::Write;
    match v {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
        Value::Bytes(b) => {
            out.extend_from_slice(b"\\\\x");
            out.extend_from_slice(hex::encode(b).as_bytes());
        }
        // Numbers and dates never hold a character COPY escapes: their canonical text
        // (`Value::to_text`, the same `Display`) is written straight into the buffer
        // instead of into a string of its own first.
        Value::Int(i) => {
            let _ = write!(out, "{i}"); // writing into a Vec cannot fail
        }
        Value::Decimal(d) => {
            let _ = write!(out, "{d}");
        }
        // Four-digit years (all of a registry's) digit by digit; chrono's `Display`, which
        // also writes signed and five-digit years, for the rest.
        Value::Date(d) if (0..=9999).contains(&d.year()) => {
            let digits = |n: u32, width: usize, out: &mut Vec<u8>| {
                for k in (0..width).rev() {
                    out.push(b'0' + (n / 10u32.pow(k as u32) % 10) as u8);
                }
            };
            digits(d.year() as u32, 4, out);
            out.push(b'-');
            digits(d.month(), 2, out);
            out.push(b'-');
            digits(d.day(), 2, out);
        }
        Value::Date(d) => {
            let _ = write!(out, "{d}");
        }
        other => {
            let text = other.text().unwrap_or_default();
            let bytes = text.as_bytes();
            // Most fields need no escape: copy them whole rather than byte by byte. Short
            // fields (names, codes: most of a registry) are checked in one plain pass;
            // memchr's setup cost per call was 4 % of a CSV load's CPU. Long ones (notes)
            // go to memchr, several bytes at a time.
            let special = if bytes.len() < 32 {
                // One comparison for the three control characters (and the other controls
                // below `\r`, which then take the careful path and come out unchanged).
                bytes.iter().any(|&b| b <= b'\r' || b == b'\\')
            } else {
                memchr::memchr3(b'\\', b'\t', b'\n', bytes).is_some()
                    || memchr::memchr(b'\r', bytes).is_some()
            };
            if !special {
                out.extend_from_slice(bytes);
                return;
            }
            for &b in bytes {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        }
    }
}

/// A column type whose binary `COPY` form snodo writes, from the column's type OID.
///
/// Why binary: PostgreSQL parses no text then (numbers, dates, escapes), a good part of
/// what the backend, which shares the cores with snodo's step workers, spends on a `COPY`:
/// 1M rows of the CSV benchmark in transactions of 8000 cost it 2.13-2.18 s of CPU in
/// binary against 2.34-2.98 s in text (docs/benchmarks.md; the sink sends binary only for
/// `COPY`s of 5000 rows or more, see `BINARY_MIN_ROWS`). Only the built-in types below: a
/// domain, an array or any other type keeps the text form, which PostgreSQL converts as it
/// always did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryType {
    /// `boolean`.
    Bool,
    /// `smallint`.
    Int2,
    /// `integer`.
    Int4,
    /// `bigint`.
    Int8,
    /// `numeric` (with or without precision and scale: PostgreSQL applies them to binary
    /// input as to text).
    Numeric,
    /// `text`, `varchar`, `varchar(n)`.
    Text,
    /// `date`.
    Date,
    /// `timestamp` (without time zone: snodo's date-times are local, as legacy databases
    /// keep them; a `timestamptz` column stays on the text form, read in the session's time
    /// zone).
    Timestamp,
    /// `bytea`.
    Bytea,
}

impl BinaryType {
    /// The type of a column from its `pg_attribute.atttypid` (built-in OIDs, fixed in
    /// PostgreSQL's catalog), or `None` for a type written as text.
    pub fn from_oid(oid: u32) -> Option<Self> {
        Some(match oid {
            16 => BinaryType::Bool,
            17 => BinaryType::Bytea,
            20 => BinaryType::Int8,
            21 => BinaryType::Int2,
            23 => BinaryType::Int4,
            25 | 1043 => BinaryType::Text,
            1082 => BinaryType::Date,
            1114 => BinaryType::Timestamp,
            1700 => BinaryType::Numeric,
            _ => return None,
        })
    }
}

/// What starts a binary `COPY` stream: the signature, no flags, no header extension.
pub const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// What ends a binary `COPY` stream: a tuple of -1 fields.
pub const COPY_BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// PostgreSQL's epoch for dates and timestamps (checked when compiling).
const PG_EPOCH: chrono::NaiveDate = match chrono::NaiveDate::from_ymd_opt(2000, 1, 1) {
    Some(d) => d,
    None => panic!("2000-01-01 is a date"),
};

/// Appends `v` as one field of a binary `COPY` tuple for a column of type `ty` (its length,
/// then its bytes), or returns `false`, appending nothing, when the binary form would not
/// mean exactly what the text form means: another kind of value than the column's (a text
/// for a number column), an integer out of the column's range, a date or date-time outside
/// the years 1-9999, a date-time finer than a microsecond. The caller then writes the batch
/// as text, and PostgreSQL converts or refuses the value as it always did.
pub fn copy_binary(v: &Value, ty: BinaryType, out: &mut Vec<u8>) -> bool {
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    match (v, ty) {
        (Value::Null, _) => out.extend_from_slice(&(-1i32).to_be_bytes()),
        (Value::Bool(b), BinaryType::Bool) => field(out, &[u8::from(*b)]),
        (Value::Int(i), BinaryType::Int8) => field(out, &i.to_be_bytes()),
        (Value::Int(i), BinaryType::Int4) => match i32::try_from(*i) {
            Ok(i) => field(out, &i.to_be_bytes()),
            Err(_) => return false,
        },
        (Value::Int(i), BinaryType::Int2) => match i16::try_from(*i) {
            Ok(i) => field(out, &i.to_be_bytes()),
            Err(_) => return false,
        },
        (Value::Int(i), BinaryType::Numeric) => numeric_binary(&Decimal::from(*i), out),
        (Value::Decimal(d), BinaryType::Numeric) => numeric_binary(d, out),
        (Value::Str(s), BinaryType::Text) => {
            if s.len() > i32::MAX as usize {
                return false;
            }
            field(out, s.as_bytes())
        }
        (Value::Date(d), BinaryType::Date) if (1..=9999).contains(&d.year()) => {
            let days = d.signed_duration_since(PG_EPOCH).num_days() as i32;
            field(out, &days.to_be_bytes())
        }
        (Value::DateTime(t), BinaryType::Timestamp)
            if (1..=9999).contains(&t.year()) && t.nanosecond() % 1000 == 0 =>
        {
            let Some(micros) = t
                .signed_duration_since(PG_EPOCH.and_time(chrono::NaiveTime::MIN))
                .num_microseconds()
            else {
                return false;
            };
            field(out, &micros.to_be_bytes())
        }
        (Value::Bytes(b), BinaryType::Bytea) if b.len() <= i32::MAX as usize => field(out, b),
        _ => return false,
    }
    true
}

/// Appends a decimal as a `numeric` field (PostgreSQL's `numeric_send` layout: digit
/// count, weight of the first digit, sign, display scale, all big-endian `i16`, then the
/// digits in base 10000). Written here rather than through sqlx's encoder because that one
/// sends every zero with scale 0: `0.00` would be stored as `0`, where the text form keeps
/// `0.00`.
fn numeric_binary(d: &Decimal, out: &mut Vec<u8>) {
    let scale = d.scale(); // 0..=28
    // Digits after the point, padded to whole base-10000 digits: at most 2^96 * 1000,
    // well inside a u128.
    let pad = (4 - scale % 4) % 4;
    let mut m = d.mantissa().unsigned_abs() * 10u128.pow(pad);
    let fraction_digits = ((scale + pad) / 4) as i16;
    // Least significant first; at most 8 (32 decimal digits).
    let mut digits = [0i16; 10];
    let mut n = 0;
    // Amounts fit in 64 bits: a division of a u128 is a library call, of a u64 one
    // instruction.
    if let Ok(mut small) = u64::try_from(m) {
        while small != 0 {
            digits[n] = (small % 10_000) as i16;
            small /= 10_000;
            n += 1;
        }
        m = 0;
    }
    while m != 0 {
        digits[n] = (m % 10_000) as i16;
        m /= 10_000;
        n += 1;
    }
    // Trailing zero digits carry nothing: the display scale keeps the zeros' places.
    let low = digits[..n].iter().take_while(|&&g| g == 0).count();
    let count = (n - low) as i16;
    let weight = if count == 0 {
        0
    } else {
        n as i16 - fraction_digits - 1
    };
    let sign: i16 = if count > 0 && d.is_sign_negative() {
        0x4000
    } else {
        0
    };
    out.extend_from_slice(&(8 + 2 * i32::from(count)).to_be_bytes());
    for h in [count, weight, sign, scale as i16] {
        out.extend_from_slice(&h.to_be_bytes());
    }
    for g in digits[low..n].iter().rev() {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

/// Binds a value to a SQLite statement: decimals and dates as canonical text.
pub fn bind_sqlite<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    v: &Value,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    match v {
        Value::Null => q.bind(None::<String>),
        Value::Bool(b) => q.bind(*b),
        Value::Int(i) => q.bind(*i),
        Value::Bytes(b) => q.bind(b.clone()),
        other => q.bind(other.to_text().unwrap_or_default()),
    }
}

/// Binds a value to a PostgreSQL statement with its native type.
pub fn bind_pg<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    v: &Value,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match v {
        Value::Null => q.bind(None::<String>),
        Value::Bool(b) => q.bind(*b),
        Value::Int(i) => q.bind(*i),
        Value::Decimal(d) => q.bind(*d),
        Value::Date(d) => q.bind(*d),
        Value::DateTime(d) => q.bind(*d),
        Value::Bytes(b) => q.bind(b.clone()),
        Value::Str(s) => q.bind(s.to_string()),
        other => q.bind(other.to_json()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What PostgreSQL's binary input would store differently from the text form, or
    /// refuse, is not written in binary: nothing is appended and the caller sends text
    /// (the e2e test `binary_copy_stores_what_postgresql_parses_from_text` compares the
    /// accepted values with PostgreSQL's own parse).
    #[test]
    fn copy_binary_refuses_what_the_binary_form_cannot_say() {
        let date = |y, m, d| Value::Date(chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap());
        let refused = [
            (Value::Int(i64::from(i32::MAX) + 1), BinaryType::Int4),
            (Value::Int(i64::from(i16::MIN) - 1), BinaryType::Int2),
            (Value::Str("12".into()), BinaryType::Int8),
            (Value::Decimal(Decimal::ONE), BinaryType::Int8),
            (date(10000, 1, 1), BinaryType::Date),
            (date(0, 12, 31), BinaryType::Date),
            (
                Value::DateTime(
                    chrono::NaiveDate::from_ymd_opt(2024, 1, 1)
                        .unwrap()
                        .and_hms_nano_opt(0, 0, 0, 1)
                        .unwrap(),
                ),
                BinaryType::Timestamp,
            ),
            (Value::Bool(true), BinaryType::Text),
        ];
        for (v, ty) in refused {
            let mut out = vec![7];
            assert!(!copy_binary(&v, ty, &mut out), "{v:?} as {ty:?}");
            assert_eq!(out, [7], "nothing appended for {v:?}");
        }
        let mut out = Vec::new();
        assert!(copy_binary(
            &Value::Bytes(vec![0, 255]),
            BinaryType::Bytea,
            &mut out
        ));
        assert!(copy_binary(&Value::Null, BinaryType::Bytea, &mut out));
        assert!(copy_binary(&date(2000, 1, 2), BinaryType::Date, &mut out));
        assert_eq!(
            out,
            [
                0, 0, 0, 2, 0, 255, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 4, 0, 0, 0, 1
            ]
        );
    }

    #[test]
    fn copy_text_escapes_what_copy_needs() {
        let mut out = Vec::new();
        copy_text(&Value::Str("a\tb\\c\nd".into()), &mut out);
        assert_eq!(out, b"a\\tb\\\\c\\nd");
        out.clear();
        copy_text(&Value::Null, &mut out);
        assert_eq!(out, b"\\N");
        out.clear();
        copy_text(&Value::Str("ROSSI MARIA".into()), &mut out);
        copy_text(&Value::Str("x\r".into()), &mut out);
        assert_eq!(out, b"ROSSI MARIAx\\r", "unescaped text is copied whole");
        // Other control characters take the careful path and come out as they are.
        out.clear();
        copy_text(&Value::Str("a\u{1}b\u{b}c\u{c}".into()), &mut out);
        assert_eq!(out, b"a\x01b\x0bc\x0c");
        // Short and long texts take different checks; each escape is found in both.
        for special in ["\\", "\t", "\n", "\r"] {
            for len in [1, 31, 32, 200] {
                let text = format!("{}{special}", "n".repeat(len - 1));
                out.clear();
                copy_text(&Value::Str(text.as_str().into()), &mut out);
                let escaped = format!("{}{}", "n".repeat(len - 1), special.escape_default());
                assert_eq!(String::from_utf8_lossy(&out), escaped, "{len} {special:?}");
            }
        }
        assert_eq!(float_to_decimal(0.1).to_text().unwrap(), "0.1");
        // Numbers and dates are written as their canonical text.
        for v in [
            Value::Int(-42),
            Value::Int(i64::MIN),
            Value::Decimal("850.00".parse().unwrap()),
            Value::Decimal("-0.001".parse().unwrap()),
            Value::Date(chrono::NaiveDate::from_ymd_opt(2026, 2, 28).unwrap()),
            Value::Date(chrono::NaiveDate::from_ymd_opt(33, 1, 5).unwrap()),
            Value::Date(chrono::NaiveDate::from_ymd_opt(0, 12, 31).unwrap()),
            Value::Date(chrono::NaiveDate::from_ymd_opt(9999, 10, 9).unwrap()),
            Value::Date(chrono::NaiveDate::from_ymd_opt(10000, 1, 1).unwrap()),
            Value::Date(chrono::NaiveDate::from_ymd_opt(-44, 3, 15).unwrap()),
        ] {
            out.clear();
            copy_text(&v, &mut out);
            assert_eq!(
                String::from_utf8(out.clone()).unwrap(),
                v.to_text().unwrap()
            );
        }
    }
}
