//! Typed values carried by records.
//!
//! Money is a [`rust_decimal::Decimal`] from the moment it is parsed to the moment it is
//! written: there is no floating-point variant at all, so an amount can never be rounded
//! by accident on its way to INPS.

use std::fmt;
use std::str::FromStr;

use chrono::{NaiveDate, NaiveDateTime};
use indexmap::IndexMap;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The text of a [`Value::Str`]. Most fields of a record are short (a codice fiscale, a
/// name, a code, a postcode): kept inline they cost no allocation, where a `String` cost
/// one to make and one to free per field, a fifth of a CSV load's CPU with the kernel's
/// page work it caused (docs/benchmarks.md).
pub type Text = compact_str::CompactString;

/// One field value.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Value {
    /// Absent / SQL NULL / empty CSV field.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// An exact decimal number (amounts, rates).
    Decimal(Decimal),
    /// Text: up to 24 bytes inline, longer on the heap (see [`Text`]).
    Str(Text),
    /// A calendar date.
    Date(NaiveDate),
    /// A date and time without time zone (legacy databases store local time).
    DateTime(NaiveDateTime),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// An ordered list.
    List(Vec<Value>),
    /// A map with ordered keys, boxed: maps are rare, and unboxed this one variant would
    /// make every value 80 bytes instead of 32.
    Map(Box<IndexMap<String, Value>>),
}

/// The type of a value, as written in pipeline files (`type: decimal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// Text.
    String,
    /// 64-bit integer.
    Int,
    /// Exact decimal.
    Decimal,
    /// `true` / `false`.
    Bool,
    /// Calendar date.
    Date,
    /// Date and time.
    Datetime,
    /// Raw bytes.
    Bytes,
    /// A list of values.
    List,
    /// A map of values.
    Map,
}

impl ValueType {
    /// The type's name in pipelines, messages and tagged JSON.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Int => "int",
            ValueType::Decimal => "decimal",
            ValueType::Bool => "bool",
            ValueType::Date => "date",
            ValueType::Datetime => "datetime",
            ValueType::Bytes => "bytes",
            ValueType::List => "list",
            ValueType::Map => "map",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Value {
    /// True for [`Value::Null`] only.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// True for [`Value::Null`] and for empty text: legacy exports write both for "missing".
    pub fn is_missing(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Str(s) => s.trim().is_empty(),
            _ => false,
        }
    }

    /// The value's type, `None` for null.
    pub fn value_type(&self) -> Option<ValueType> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(_) => ValueType::Bool,
            Value::Int(_) => ValueType::Int,
            Value::Decimal(_) => ValueType::Decimal,
            Value::Str(_) => ValueType::String,
            Value::Date(_) => ValueType::Date,
            Value::DateTime(_) => ValueType::Datetime,
            Value::Bytes(_) => ValueType::Bytes,
            Value::List(_) => ValueType::List,
            Value::Map(_) => ValueType::Map,
        })
    }

    /// Name of the value's type for messages ("null" for null).
    pub fn type_name(&self) -> String {
        self.value_type()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "null".into())
    }

    /// The text, when the value is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// [`Value::to_text`] without copying text values: what the hot paths (validation,
    /// `COPY` encoding) read, once per field of every record.
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Value::Str(s) => Some(std::borrow::Cow::Borrowed(s)),
            other => other.to_text().map(std::borrow::Cow::Owned),
        }
    }

    /// Canonical text form: ISO dates, `.` as decimal separator, `true`/`false`.
    /// Used by file sinks without a locale and for hashing natural keys.
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Decimal(d) => d.normalize_keep_scale(),
            Value::Str(s) => s.to_string(),
            // NaiveDate's Display is ISO 8601 and much faster than `format("%Y-%m-%d")`,
            // which re-parses its format string on every call.
            Value::Date(d) => d.to_string(),
            Value::DateTime(d) => d.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
            Value::Bytes(b) => hex::encode(b),
            Value::List(_) | Value::Map(_) => self.to_json().to_string(),
        })
    }

    /// JSON form. Decimals become JSON numbers written exactly (no float round trip).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Decimal(d) => serde_json::Number::from_str(&d.to_string())
                .map(J::Number)
                .unwrap_or_else(|_| J::String(d.to_string())),
            Value::Str(s) => J::String(s.to_string()),
            Value::Date(_) | Value::DateTime(_) | Value::Bytes(_) => {
                J::String(self.to_text().unwrap_or_default())
            }
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// Converts JSON into a value. Numbers with a fraction or exponent become decimals,
    /// parsed from their text (serde_json keeps it with `arbitrary_precision`).
    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else {
                    let text = n.to_string();
                    Decimal::from_str(&text)
                        .or_else(|_| Decimal::from_scientific(&text))
                        .map(Value::Decimal)
                        .unwrap_or(Value::Str(text.into()))
                }
            }
            J::String(s) => Value::Str(Text::new(s)),
            J::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            J::Object(o) => Value::Map(Box::new(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            )),
        }
    }
}

impl Value {
    /// JSON that keeps the type (`{"date": "2024-01-31"}`), for checkpoints: a cursor
    /// value must come back as the same type to be compared by the database.
    pub fn to_tagged_json(&self) -> serde_json::Value {
        let tag = self.type_name();
        let v = match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            other => serde_json::Value::String(other.to_text().unwrap_or_default()),
        };
        serde_json::json!({ tag: v })
    }

    /// Appends `{"tag":value}` as JSON text: the bytes `to_tagged_json().to_string()` gives,
    /// without building the JSON tree (the SIUSS ledger keeps one per field of every record
    /// sent, and building them was a third of the PS/PSA flow's instructions).
    pub fn write_tagged_json(&self, out: &mut Vec<u8>) {
        // Type names are plain ASCII words: nothing to escape.
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(self.value_type().map_or("null", ValueType::name).as_bytes());
        out.extend_from_slice(b"\":");
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            other => write_json_string(&other.text().unwrap_or_default(), out),
        }
        out.push(b'}');
    }

    /// Reverses [`Value::to_tagged_json`].
    pub fn from_tagged_json(j: &serde_json::Value) -> Option<Value> {
        let (tag, v) = j.as_object()?.iter().next()?;
        let text = v.as_str();
        Some(match tag.as_str() {
            "null" => Value::Null,
            "bool" => Value::Bool(v.as_bool()?),
            "int" => Value::Int(text?.parse().ok()?),
            "decimal" => Value::Decimal(Decimal::from_str(text?).ok()?),
            "string" => Value::Str(Text::new(text?)),
            "date" => Value::Date(NaiveDate::parse_from_str(text?, "%Y-%m-%d").ok()?),
            "datetime" => {
                Value::DateTime(NaiveDateTime::parse_from_str(text?, "%Y-%m-%dT%H:%M:%S%.f").ok()?)
            }
            "bytes" => Value::Bytes(hex::decode(text?).ok()?),
            _ => return None,
        })
    }
}

/// Appends `s` as a JSON string, quoted and escaped as `serde_json` writes it.
fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Serialising a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"name":"text","other":{"tag":value},…}` for fields with distinct names: strings as
/// plain JSON strings, every other value as [`Value::to_tagged_json`] gives it; read back
/// field by field with [`Value::from_field_json`].
///
/// Why strings are not tagged: the SIUSS ledger keeps one of these for every record it
/// sends, most fields are strings, and `{"string":…}` around each was a third of the
/// object's bytes (1M ledger rows: 1.4 GB → 1.0 GB, and a tenth less of PostgreSQL's
/// work to store them, docs/benchmarks.md).
pub fn tagged_json_object<'a>(fields: impl IntoIterator<Item = (&'a str, &'a Value)>) -> String {
    let mut out = Vec::with_capacity(1024);
    out.push(b'{');
    for (name, v) in fields {
        if out.len() > 1 {
            out.push(b',');
        }
        write_json_string(name, &mut out);
        out.push(b':');
        match v {
            Value::Str(s) => write_json_string(s, &mut out),
            other => other.write_tagged_json(&mut out),
        }
    }
    out.push(b'}');
    // Only whole UTF-8 strings and ASCII were appended.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Value {
    /// Reads one field of a [`tagged_json_object`]: a plain string, or a tagged value
    /// (which is also how objects written before strings went untagged hold strings).
    pub fn from_field_json(j: &serde_json::Value) -> Option<Value> {
        match j {
            serde_json::Value::String(s) => Some(Value::Str(Text::new(s))),
            other => Value::from_tagged_json(other),
        }
    }
}

trait NormalizeKeepScale {
    fn normalize_keep_scale(&self) -> String;
}
impl NormalizeKeepScale for Decimal {
    /// Decimals keep the scale they were read with (`850,00` stays `850.00`): an amount's
    /// precision is part of what the source system said.
    fn normalize_keep_scale(&self) -> String {
        self.to_string()
    }
}

/// How decimal numbers are written in a text source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecimalStyle {
    /// The decimal separator: `.` or `,`.
    pub decimal: char,
    /// The optional thousands separator (`.` in Italian exports, often absent).
    pub thousands: Option<char>,
}

impl DecimalStyle {
    /// `1234.56`
    pub const DOT: DecimalStyle = DecimalStyle {
        decimal: '.',
        thousands: None,
    };
    /// `1.234,56` (Italian)
    pub const ITALIAN: DecimalStyle = DecimalStyle {
        decimal: ',',
        thousands: Some('.'),
    };
}

/// [`str::trim`], answered from two bytes when the text begins and ends with a visible
/// ASCII character, as almost every field of an export does. Why: `str::trim` decodes a
/// character at each end and asks the Unicode tables about it; the CSV reader, the text
/// functions and the validators trim every field, and in the CSV benchmark those calls
/// were about 6 % of the instructions of a run.
pub fn trim(text: &str) -> &str {
    // The ASCII characters that are Unicode `White_Space`, which `str::trim` removes.
    fn visible(b: u8) -> bool {
        b.is_ascii() && !matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
    }
    match text.as_bytes() {
        [] => text,
        [first, .., last] if visible(*first) && visible(*last) => text,
        [only] if visible(*only) => text,
        _ => text.trim(),
    }
}

/// [`trim`] and ASCII capitals, borrowing the text when it already is both: codes (a
/// codice fiscale, a Belfiore code) arrive that way from stores and exports, and are
/// looked up for every record.
pub fn trim_ascii_upper(text: &str) -> std::borrow::Cow<'_, str> {
    let t = trim(text);
    if t.bytes().any(|b| b.is_ascii_lowercase()) {
        std::borrow::Cow::Owned(t.to_ascii_uppercase())
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

/// Parses a decimal number written in `style`. Thousands separators are accepted only in
/// well-formed groups of three, so `12.34,5` or `1,2,3` are errors rather than guesses.
pub fn parse_decimal(text: &str, style: DecimalStyle) -> Result<Decimal, String> {
    let t = trim(text);
    let fail = || format!("`{}` is not a decimal number", crate::mask::redact_text(t));
    if t.is_empty() {
        return Err(fail());
    }
    let (negative, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if let Some(parsed) = decimal_in_one_pass(body.as_bytes(), style) {
        // At most 28 digits: always a decimal's mantissa and scale.
        let mut d = parsed
            .and_then(|(mantissa, scale)| Decimal::try_from_i128_with_scale(mantissa, scale).ok())
            .ok_or_else(fail)?;
        // As the general parser: a zero has no sign (`-0,00` is `0.00`).
        d.set_sign_negative(negative && !d.is_zero());
        return Ok(d);
    }
    decimal_in_parts(body, negative, style).ok_or_else(fail)
}

/// The mantissa and scale of an unsigned amount in one pass over its bytes, checking what
/// [`decimal_in_parts`] checks; `None` when that general path must decide (more than 28
/// digits, or a style whose separators are not ASCII), `Some(None)` for text that is not
/// an amount. Why: the general path splits and walks the text four times with character
/// iterators, about 900 instructions for `5.346,48`; every amount of every legacy row
/// comes through here.
fn decimal_in_one_pass(body: &[u8], style: DecimalStyle) -> Option<Option<(i128, u32)>> {
    // Separators that are digits (nonsense, but one character is all the configuration
    // asks) are left to the general path, which splits at them before reading digits.
    let plain = |b: &u8| b.is_ascii() && !b.is_ascii_digit();
    let decimal = u8::try_from(style.decimal).ok().filter(plain)?;
    let thousands = match style.thousands {
        None => None,
        Some(c) => Some(u8::try_from(c).ok().filter(|b| plain(b) && *b != decimal)?),
    };
    let (mut mantissa, mut digits, mut scale) = (0i128, 0usize, 0u32);
    // Digits in the current group of the integer part, and separators seen.
    let (mut group, mut groups) = (0usize, 0usize);
    let mut in_fraction = false;
    // Groups after a separator have three digits; the first one to three.
    let group_ok = |group: usize, groups: usize| {
        if groups == 0 { true } else { group == 3 }
    };
    for &b in body {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                if digits > 28 {
                    return None;
                }
                mantissa = mantissa * 10 + i128::from(b - b'0');
                if in_fraction {
                    scale += 1;
                } else {
                    group += 1;
                }
            }
            _ if b == decimal && !in_fraction => {
                if !group_ok(group, groups) {
                    return Some(None);
                }
                in_fraction = true;
            }
            _ if Some(b) == thousands && !in_fraction => {
                let fits = if groups == 0 {
                    (1..=3).contains(&group)
                } else {
                    group == 3
                };
                if !fits {
                    return Some(None);
                }
                groups += 1;
                group = 0;
            }
            _ => return Some(None),
        }
    }
    if (!in_fraction && !group_ok(group, groups)) || digits == 0 || (in_fraction && scale == 0) {
        return Some(None);
    }
    Some(Some((mantissa, scale)))
}

/// The general path of [`parse_decimal`] for an unsigned `body`: split at the decimal
/// separator, thousands groups checked, then parsed; `None` for text that is not an amount.
fn decimal_in_parts(body: &str, negative: bool, style: DecimalStyle) -> Option<Decimal> {
    let mut parts = body.split(style.decimal);
    let int_part = parts.next().unwrap_or("");
    let frac_part = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let separator = style.thousands.filter(|sep| int_part.contains(*sep));
    if let Some(sep) = separator {
        let mut groups = int_part.split(sep);
        let first_ok = groups.next().is_some_and(|g| (1..=3).contains(&g.len()));
        if !first_ok || !groups.all(|g| g.len() == 3) {
            return None;
        }
    }
    let int_digits = || int_part.chars().filter(move |c| Some(*c) != separator);
    let frac = frac_part.unwrap_or("");
    if int_digits().next().is_none() && frac.is_empty() {
        return None;
    }
    if !int_digits().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac_part.is_some() && frac.is_empty() {
        return None;
    }
    // Up to 28 digits fit the decimal's 96-bit mantissa whatever they are. Longer numbers
    // take the general parser, which decides what fits.
    let digits = int_digits().count() + frac.len();
    if digits <= 28 {
        let mantissa = int_digits()
            .chain(frac.chars())
            .fold(0i128, |m, c| m * 10 + i128::from(c as u8 - b'0'));
        let mut d = Decimal::try_from_i128_with_scale(mantissa, frac.len() as u32).ok()?;
        // As the general parser: a zero has no sign (`-0,00` is `0.00`).
        d.set_sign_negative(negative && mantissa != 0);
        return Some(d);
    }
    let sign = if negative { "-" } else { "" };
    let int_digits: String = int_digits().collect();
    let normal = if frac.is_empty() {
        format!("{sign}{int_digits}")
    } else {
        format!("{sign}{int_digits}.{frac}")
    };
    Decimal::from_str_exact(&normal).ok()
}

/// Parses a date with an explicit chrono format (`%d/%m/%Y`). There is no guessing: a
/// legacy system that writes `01/02/2020` means one thing, and the pipeline says which.
pub fn parse_date(text: &str, format: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text.trim(), format).map_err(|e| {
        format!(
            "`{}` is not a valid date for format `{format}` ({e})",
            crate::mask::redact_text(text.trim())
        )
    })
}

/// A date or date-time format parsed once, for columns converted millions of times.
#[derive(Clone, Debug)]
pub struct DateFormat {
    text: String,
    items: Vec<chrono::format::Item<'static>>,
    /// For `%d/%m/%Y`, `%Y-%m-%d` and their kin: the positions of day, month and year in
    /// ten-character text, read without chrono's general parser.
    fixed: Option<FixedDate>,
}

/// A date format of two-digit day and month and four-digit year, in some order, with one
/// separator: where each number starts and the separator.
#[derive(Clone, Copy, Debug)]
struct FixedDate {
    day: usize,
    month: usize,
    year: usize,
    separator: u8,
}

impl FixedDate {
    fn of(format: &str) -> Option<FixedDate> {
        let (order, separator) = match format.as_bytes() {
            [b'%', b'd', s, b'%', b'm', t, b'%', b'Y'] if s == t => ((0, 3, 6), *s),
            [b'%', b'Y', s, b'%', b'm', t, b'%', b'd'] if s == t => ((8, 5, 0), *s),
            _ => return None,
        };
        matches!(separator, b'/' | b'-' | b'.').then_some(FixedDate {
            day: order.0,
            month: order.1,
            year: order.2,
            separator,
        })
    }

    /// The date, when `text` is exactly in this form with digits only; `None` sends it to
    /// chrono, which reads shorter forms (`1/2/2020`) and explains what is wrong.
    fn date(&self, text: &str) -> Option<NaiveDate> {
        let b = text.as_bytes();
        if b.len() != 10 {
            return None;
        }
        let (s1, s2) = if self.year == 0 { (4, 7) } else { (2, 5) };
        if b[s1] != self.separator || b[s2] != self.separator {
            return None;
        }
        let number = |at: usize, len: usize| -> Option<u32> {
            b[at..at + len].iter().try_fold(0u32, |n, d| {
                d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
            })
        };
        NaiveDate::from_ymd_opt(
            number(self.year, 4)? as i32,
            number(self.month, 2)?,
            number(self.day, 2)?,
        )
    }
}

impl DateFormat {
    /// Parses a chrono format string; an invalid one is an error naming it.
    pub fn new(format: &str) -> Result<Self, String> {
        let items = chrono::format::StrftimeItems::new(format)
            .parse_to_owned()
            .map_err(|_| format!("`{format}` is not a valid date format"))?;
        Ok(DateFormat {
            text: format.to_string(),
            items,
            fixed: FixedDate::of(format),
        })
    }

    fn parsed(&self, text: &str) -> Result<chrono::format::Parsed, chrono::format::ParseError> {
        let mut p = chrono::format::Parsed::new();
        chrono::format::parse(&mut p, text.trim(), self.items.iter())?;
        Ok(p)
    }

    /// Parses a date.
    pub fn date(&self, text: &str) -> Result<NaiveDate, String> {
        if let Some(d) = self.fixed.and_then(|f| f.date(text.trim())) {
            return Ok(d);
        }
        self.parsed(text)
            .and_then(|p| p.to_naive_date())
            .map_err(|e| {
                format!(
                    "`{}` is not a valid date for format `{}` ({e})",
                    crate::mask::redact_text(text.trim()),
                    self.text
                )
            })
    }

    /// Parses a date-time.
    pub fn datetime(&self, text: &str) -> Result<NaiveDateTime, String> {
        self.parsed(text)
            .and_then(|p| p.to_naive_datetime_with_offset(0))
            .map_err(|e| {
                format!(
                    "`{}` is not a valid date-time for format `{}` ({e})",
                    crate::mask::redact_text(text.trim()),
                    self.text
                )
            })
    }
}

/// Parses a date-time with an explicit chrono format.
pub fn parse_datetime(text: &str, format: &str) -> Result<NaiveDateTime, String> {
    NaiveDateTime::parse_from_str(text.trim(), format).map_err(|e| {
        format!(
            "`{}` is not a valid date-time for format `{format}` ({e})",
            crate::mask::redact_text(text.trim())
        )
    })
}

/// Parses an integer, allowing surrounding spaces.
pub fn parse_int(text: &str) -> Result<i64, String> {
    trim(text).parse::<i64>().map_err(|_| {
        format!(
            "`{}` is not an integer",
            crate::mask::redact_text(text.trim())
        )
    })
}

/// Parses a boolean as legacy systems write it: `1/0`, `S/N` (sì/no), `true/false`, `Y/N`.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "s" | "si" | "sì" | "y" | "yes" | "true" | "t" => Ok(true),
        "0" | "n" | "no" | "false" | "f" => Ok(false),
        other => Err(format!(
            "`{other}` is not a boolean (expected S/N, 1/0, true/false)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass amount parser accepts and refuses exactly what the general path does,
    /// with the same value, on every text of up to five characters from the characters an
    /// amount is made of (and a few it is not), in both styles.
    #[test]
    fn decimal_in_one_pass_is_the_general_path() {
        let alphabet = ['0', '1', '9', '.', ',', '-', 'a', ' '];
        let odd = |decimal, thousands| DecimalStyle { decimal, thousands };
        for style in [
            DecimalStyle::DOT,
            DecimalStyle::ITALIAN,
            odd('.', Some(',')),
            odd(',', None),
            odd('0', None),
            odd(',', Some('1')),
        ] {
            let mut texts = vec![String::new()];
            for _ in 0..5 {
                let longer: Vec<String> = texts
                    .iter()
                    .filter(|t| t.len() == texts.last().map_or(0, String::len))
                    .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                    .collect();
                texts.extend(longer);
            }
            texts.extend(
                [
                    "1.234.567,89",
                    "12.34,5",
                    "1.234",
                    "1.234.567.89",
                    "1.23.456",
                    "1234.567",
                    "+5",
                ]
                .map(String::from),
            );
            texts.extend([
                "9".repeat(28),
                "9".repeat(29),
                format!("{}.5", "1".repeat(28)),
            ]);
            for t in &texts {
                let general = decimal_in_parts(t, false, style);
                let fast = decimal_in_one_pass(t.as_bytes(), style);
                match fast {
                    None => assert!(
                        t.len() > 28 || style.decimal == '0' || style.thousands == Some('1'),
                        "{t:?} left to the general path"
                    ),
                    Some(fast) => assert_eq!(
                        fast.and_then(|(m, s)| Decimal::try_from_i128_with_scale(m, s).ok()),
                        general,
                        "{t:?} {style:?}"
                    ),
                }
            }
        }
        assert_eq!(
            parse_decimal("-0,00", DecimalStyle::ITALIAN)
                .unwrap()
                .to_string(),
            "0.00"
        );
        assert_eq!(
            parse_decimal("-1.234,50", DecimalStyle::ITALIAN)
                .unwrap()
                .to_string(),
            "-1234.50"
        );
    }

    /// The fast trim is `str::trim` on every kind of end: ASCII spaces and controls,
    /// Unicode spaces (no-break, ideographic, next line), letters, one character, none.
    #[test]
    fn trim_is_str_trim() {
        let ends = [
            "", " ", "\t", "\n", "\r", "\u{0B}", "\u{0C}", "\u{1F}", "\u{85}", "\u{A0}",
            "\u{3000}", "a", "Z", "9", "à", ";", "\u{7F}",
        ];
        let middles = ["", "x", "ROSSI MARIA", " a b ", "ò"];
        for a in ends {
            for m in middles {
                for b in ends {
                    let t = format!("{a}{m}{b}");
                    assert_eq!(trim(&t), t.trim(), "{t:?}");
                }
            }
        }
    }

    /// A record is a vector of values, a batch thousands of records: a wide variant (an
    /// unboxed map) would make every value of every record wider.
    #[test]
    fn a_value_is_four_words_and_short_text_is_inline() {
        assert!(
            std::mem::size_of::<Value>() <= 32,
            "{}",
            std::mem::size_of::<Value>()
        );
        let Value::Str(cf) = Value::Str(Text::new("RSSMRA85T10A562S")) else {
            unreachable!()
        };
        assert!(!cf.is_heap_allocated());
        assert!(Text::new("x".repeat(25)).is_heap_allocated());
    }

    #[test]
    fn italian_decimals_parse_exactly() {
        let it = DecimalStyle::ITALIAN;
        assert_eq!(
            parse_decimal("12.345,67", it).unwrap().to_string(),
            "12345.67"
        );
        assert_eq!(parse_decimal("850,00", it).unwrap().to_string(), "850.00");
        assert_eq!(parse_decimal("0,50", it).unwrap().to_string(), "0.50");
        assert_eq!(parse_decimal("-1.000", it).unwrap().to_string(), "-1000");
        assert_eq!(parse_decimal(" 7 ", it).unwrap().to_string(), "7");
        for bad in [
            "12,34,5", "abc", "1.23,4.5", "12.34,5", "", ",", "1,", "1..000",
        ] {
            assert!(parse_decimal(bad, it).is_err(), "{bad} accepted");
        }
        assert_eq!(
            parse_decimal("1234.5", DecimalStyle::DOT)
                .unwrap()
                .to_string(),
            "1234.5"
        );
        assert!(parse_decimal("1,5", DecimalStyle::DOT).is_err());
    }

    /// Dates read by position give what chrono gives for the same format, and what chrono
    /// refuses is still refused (by chrono, with its explanation).
    #[test]
    fn fixed_dates_equal_chronos_reading() {
        let texts = [
            "29/02/2024",
            "29/02/2023",
            "31/04/2020",
            "01/01/0000",
            "1/2/2020",
            "01/2/2020",
            "00/01/2020",
            "12/13/2020",
            "2024-02-29",
            "2024/02/29",
            "2024.02.29",
            "29.02.2024",
            "29-02-2024",
            " 05/11/1950 ",
            "05/11/1950x",
            "0a/11/1950",
            "+5/11/1950",
            "05/11/-950",
            "99/99/9999",
            "31/12/9999",
        ];
        let mut fast = 0;
        for format in ["%d/%m/%Y", "%Y-%m-%d", "%d.%m.%Y", "%Y/%m/%d", "%d-%m-%Y"] {
            let f = DateFormat::new(format).unwrap();
            assert!(f.fixed.is_some(), "{format}");
            for t in texts {
                let chrono = NaiveDate::parse_from_str(t.trim(), format).ok();
                assert_eq!(f.date(t).ok(), chrono, "{t} as {format}");
                fast += usize::from(f.fixed.and_then(|x| x.date(t.trim())).is_some());
            }
        }
        assert!(fast >= 8, "{fast}");
        assert!(DateFormat::new("%d/%m/%y").unwrap().fixed.is_none());
        assert!(DateFormat::new("%d/%m-%Y").unwrap().fixed.is_none());
    }

    /// The digits accumulated directly give what the general parser gives on the same
    /// number, sign of zero and scale included, up to the longest numbers it takes.
    #[test]
    fn decimals_read_digit_by_digit_equal_the_general_parser() {
        let it = DecimalStyle::ITALIAN;
        let mut inputs: Vec<String> = [
            "0",
            "-0",
            "-0,00",
            "+5",
            "007,50",
            "1.234.567,89",
            ",5",
            "-,05",
            "100",
            "1.000",
            "9999999999999999999999999999",
            "99999999999999999999999999,99",
            "0,0000000000000000000000000001",
            "-79228162514264337593543950,335",
            "12345678901234567890123456789",
            "7922816251426433759354395033,5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Amounts as exports write them, from cents to billions.
        let mut x: u64 = 12345;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let cents = x >> (x % 50 + 14);
            let (int, frac) = (cents / 100, cents % 100);
            let sign = if x.is_multiple_of(7) { "-" } else { "" };
            inputs.push(format!("{sign}{int},{frac:02}"));
            inputs.push(format!("{sign}{int}"));
        }
        let mut compared = 0;
        for text in &inputs {
            let general = {
                let t = text.replace('.', "").replace(',', ".");
                let t = if t.starts_with('.') || t.starts_with("-.") {
                    t.replacen('.', "0.", 1)
                } else {
                    t
                };
                Decimal::from_str_exact(&t)
            };
            match (parse_decimal(text, it), general) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.to_string(), b.to_string(), "{text}");
                    assert_eq!(a.is_sign_negative(), b.is_sign_negative(), "{text}");
                    compared += 1;
                }
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{text}: {a:?} against {b:?}"),
            }
        }
        assert!(compared > 4000, "{compared}");
    }

    #[test]
    fn dates_need_their_format() {
        assert_eq!(
            parse_date("01/02/2020", "%d/%m/%Y").unwrap(),
            NaiveDate::from_ymd_opt(2020, 2, 1).unwrap()
        );
        assert!(parse_date("31/02/1980", "%d/%m/%Y").is_err());
        assert!(parse_date("1980-13-01", "%d/%m/%Y").is_err());
    }

    #[test]
    fn preparsed_formats_agree_with_chrono() {
        let f = DateFormat::new("%d/%m/%Y").unwrap();
        assert_eq!(
            f.date("01/02/2020").unwrap(),
            parse_date("01/02/2020", "%d/%m/%Y").unwrap()
        );
        let e = f.date("31/02/1980").unwrap_err();
        assert!(e.contains("31/02/1980") && e.contains("%d/%m/%Y"), "{e}");
        let t = DateFormat::new("%d/%m/%Y %H:%M:%S").unwrap();
        assert_eq!(
            t.datetime("01/02/2020 10:11:12").unwrap(),
            parse_datetime("01/02/2020 10:11:12", "%d/%m/%Y %H:%M:%S").unwrap()
        );
        assert!(DateFormat::new("%Q").is_err());
    }

    #[test]
    fn tagged_json_round_trips() {
        let mut fields = Vec::new();
        for v in [
            Value::Int(42),
            Value::Decimal(Decimal::from_str("12.50").unwrap()),
            Value::Str("00118".into()),
            Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
            Value::DateTime(
                NaiveDate::from_ymd_opt(2024, 2, 29)
                    .unwrap()
                    .and_hms_opt(10, 1, 2)
                    .unwrap(),
            ),
            Value::Null,
            Value::Bool(false),
            Value::Str("\"quoted\" \\ \u{1} tab\t nicolò €".into()),
            Value::Bytes(vec![0, 255]),
        ] {
            assert_eq!(
                Value::from_tagged_json(&v.to_tagged_json()),
                Some(v.clone())
            );
            // The direct writer gives the same bytes as serialising the JSON tree.
            let mut written = Vec::new();
            v.write_tagged_json(&mut written);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                v.to_tagged_json().to_string()
            );
            fields.push((format!("campo \"{}\"", fields.len()), v));
        }
        // The object: strings plain, the rest tagged, as serde_json would write them; each
        // field reads back as the value it was, and so does a string tagged the old way.
        let mut tree = serde_json::Map::new();
        for (name, v) in &fields {
            let j = match v {
                Value::Str(s) => serde_json::Value::String(s.to_string()),
                other => other.to_tagged_json(),
            };
            tree.insert(name.clone(), j);
        }
        let object = tagged_json_object(fields.iter().map(|(n, v)| (n.as_str(), v)));
        assert_eq!(object, serde_json::Value::Object(tree).to_string());
        let read: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&object).unwrap();
        for ((name, v), (read_name, j)) in fields.iter().zip(&read) {
            assert_eq!(
                (name, Some(v)),
                (read_name, Value::from_field_json(j).as_ref())
            );
            assert_eq!(
                Value::from_field_json(&v.to_tagged_json()).as_ref(),
                Some(v)
            );
        }
        assert!(object.contains(r#""campo \"2\"":"00118""#), "{object}");
        assert_eq!(tagged_json_object([]), "{}");
    }

    #[test]
    fn json_numbers_keep_their_digits() {
        let j: serde_json::Value =
            serde_json::from_str(r#"{"a": 0.1, "b": 12345678901234567.89}"#).unwrap();
        let v = Value::from_json(&j);
        let Value::Map(m) = v else { panic!() };
        assert_eq!(m["a"], Value::Decimal(Decimal::from_str("0.1").unwrap()));
        assert_eq!(m["b"].to_text().unwrap(), "12345678901234567.89");
    }
}
