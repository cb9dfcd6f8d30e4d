use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use snodo_core::config::yaml::{Node, Problem};
use snodo_core::config::{Check, deepest, problem};
use snodo_core::value::DecimalStyle;

use crate::file::encoding::Encoding;

/// Reads a delimited text file.
///
/// ```yaml
/// source:
///   csv:
///     path: tests/fixtures/csv/assistiti_legacy.csv
///     delimiter: ";"
///     encoding: windows-1252
///     decimal_separator: ","
///     date_format: "%d/%m/%Y"
///     types: { isee: decimal, data_nascita: date, id_anagrafica: int }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct CsvSourceConfig {
    /// Path of the file (relative to the working directory).
    pub path: String,
    /// Field delimiter, one character (default `,`; legacy Italian exports use `;`).
    #[serde(default = "comma")]
    pub delimiter: String,
    /// Quote character (default `"`).
    #[serde(default = "dquote")]
    pub quote: String,
    /// True when the first line holds the column names (default true).
    #[serde(default = "yes")]
    pub header: bool,
    /// Column names: required when `header` is false; when given with a header they
    /// replace the header's names (same count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Character encoding (default `utf-8`; a UTF-8 byte-order mark is skipped).
    #[serde(default)]
    pub encoding: Encoding,
    /// Columns converted while reading; the others stay text. A value that does not
    /// convert rejects the row with its line number.
    #[serde(default)]
    pub types: IndexMap<String, ColumnType>,
    /// Format of `date` columns (chrono syntax, default `%d/%m/%Y`).
    #[serde(default = "it_date")]
    pub date_format: String,
    /// Format of `datetime` columns (default `%d/%m/%Y %H:%M:%S`).
    #[serde(default = "it_datetime")]
    pub datetime_format: String,
    /// Decimal separator of `decimal` columns: `.` (default) or `,`.
    #[serde(default = "dot")]
    pub decimal_separator: String,
    /// Thousands separator accepted in `decimal` columns (e.g. `.` with `decimal_separator: ","`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thousands_separator: Option<String>,
    /// Longest accepted field, in bytes (default 10000); longer fields reject the row.
    #[serde(default = "max_field")]
    pub max_field_length: usize,
    /// Trim spaces around every field (default true: fixed-width habits of old exports).
    #[serde(default = "yes")]
    pub trim: bool,
}

/// The type a column is converted to while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Text (the default for columns not listed).
    String,
    /// 64-bit integer.
    Int,
    /// Exact decimal, using `decimal_separator` and `thousands_separator`.
    Decimal,
    /// Date, using `date_format`.
    Date,
    /// Date and time, using `datetime_format`.
    Datetime,
    /// Boolean: S/N, 1/0, true/false.
    Bool,
}

/// Writes a delimited text file.
///
/// ```yaml
/// sink:
///   csv: { path: out/assistiti.csv, delimiter: ";", encoding: windows-1252, decimal_separator: "," }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct CsvSinkConfig {
    /// Path of the file to produce. It appears only when the run completes.
    pub path: String,
    /// Field delimiter (default `,`).
    #[serde(default = "comma")]
    pub delimiter: String,
    /// Write a header line (default true).
    #[serde(default = "yes")]
    pub header: bool,
    /// Columns to write, in order (default: the fields of the first record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Character encoding (default `utf-8`). A character the encoding cannot represent
    /// fails the run with the record and field named.
    #[serde(default)]
    pub encoding: Encoding,
    /// Decimal separator (default `.`).
    #[serde(default = "dot")]
    pub decimal_separator: String,
    /// Format of dates (default ISO `%Y-%m-%d`).
    #[serde(default = "iso_date")]
    pub date_format: String,
    /// Line terminator: `lf` (default) or `crlf` (for Windows consumers).
    #[serde(default)]
    pub line_ending: LineEnding,
    /// Where the file is meant to go, recorded in the flow log (default `local`).
    #[serde(default = "local")]
    pub destination: String,
}

/// Line terminator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LineEnding {
    /// `\n`
    #[default]
    Lf,
    /// `\r\n`
    Crlf,
}

fn comma() -> String {
    ",".into()
}
fn dquote() -> String {
    "\"".into()
}
fn dot() -> String {
    ".".into()
}
fn yes() -> bool {
    true
}
fn it_date() -> String {
    "%d/%m/%Y".into()
}
fn it_datetime() -> String {
    "%d/%m/%Y %H:%M:%S".into()
}
fn iso_date() -> String {
    "%Y-%m-%d".into()
}
fn max_field() -> usize {
    10_000
}
fn local() -> String {
    "local".into()
}

/// A one-byte ASCII character from a config string.
pub(crate) fn single_byte(s: &str) -> Option<u8> {
    (s.len() == 1 && s.is_ascii()).then(|| s.as_bytes()[0])
}

pub(crate) fn check_single(
    node: &Node,
    path: &str,
    key: &str,
    value: &str,
    out: &mut Vec<Problem>,
) {
    if single_byte(value).is_none() {
        out.push(problem(
            deepest(node, &["csv", key]),
            &format!("{path}.csv.{key}"),
            format!("`{key}` must be one ASCII character, found `{value}`"),
        ));
    }
}

impl CsvSourceConfig {
    /// The decimal style of `decimal` columns.
    pub fn decimal_style(&self) -> DecimalStyle {
        DecimalStyle {
            decimal: self.decimal_separator.chars().next().unwrap_or('.'),
            thousands: self
                .thousands_separator
                .as_deref()
                .and_then(|s| s.chars().next()),
        }
    }
}

impl Check for CsvSourceConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        check_single(node, path, "delimiter", &self.delimiter, out);
        check_single(node, path, "quote", &self.quote, out);
        check_format(node, path, "date_format", &self.date_format, out);
        check_format(node, path, "datetime_format", &self.datetime_format, out);
        check_single(
            node,
            path,
            "decimal_separator",
            &self.decimal_separator,
            out,
        );
        if let Some(t) = &self.thousands_separator {
            check_single(node, path, "thousands_separator", t, out);
            if t == &self.decimal_separator {
                out.push(problem(
                    deepest(node, &["csv", "thousands_separator"]),
                    &format!("{path}.csv.thousands_separator"),
                    "the thousands separator must differ from the decimal separator",
                ));
            }
        }
        if !self.header && self.columns.is_none() {
            out.push(problem(
                deepest(node, &["csv"]),
                &format!("{path}.csv"),
                "without a header line, `columns` must name the columns",
            ));
        }
        crate::file::check_input_file(node, path, "csv", &self.path, out);
    }
}

impl Check for CsvSinkConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        check_single(node, path, "delimiter", &self.delimiter, out);
        check_single(
            node,
            path,
            "decimal_separator",
            &self.decimal_separator,
            out,
        );
        check_format(node, path, "date_format", &self.date_format, out);
    }
}

fn check_format(node: &Node, path: &str, key: &str, value: &str, out: &mut Vec<Problem>) {
    if let Err(e) = snodo_core::value::DateFormat::new(value) {
        out.push(problem(
            deepest(node, &["csv", key]),
            &format!("{path}.csv.{key}"),
            e,
        ));
    }
}
