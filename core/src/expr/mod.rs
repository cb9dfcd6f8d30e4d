//! The expression language of `map` and `filter` steps.
//!
//! Built on [Rhai](https://rhai.rs) rather than a home-made parser: it is maintained,
//! embeddable, and can be sandboxed. Snodo configures it so that:
//! * only *expressions* compile (no statements, loops or function definitions);
//! * there is **no floating-point type**: the crate is built with `no_float` + `decimal`,
//!   so `importo * 1.1` computes with exact decimals and money never passes through a float;
//! * nothing reaches the outside world: Rhai has no file, network or environment access,
//!   `print`/`debug` are silenced, `eval` is disabled;
//! * execution is bounded (operations, call depth, string/array/map sizes).
//!
//! Record fields are variables (`upper(trim(cognome))`); a field whose name is not an
//! identifier is reachable with non-alphanumeric characters replaced by `_`.
//! A missing value is Rhai's unit `()`; the string functions below pass it through, so
//! `upper(trim(nome))` on an empty field yields null rather than an error.
//!
//! The commonest shapes (field cleaning, `if`/`else` over comparisons, `coalesce`) are
//! evaluated without the interpreter by [`Native`], always with Rhai's result.

use chrono::{Datelike, NaiveDate, NaiveDateTime};
use indexmap::IndexMap;
use rhai::{AST, Dynamic, Engine, EvalAltResult, ImmutableString, Scope};
use rust_decimal::Decimal;

use crate::record::Record;
use crate::validators;
use crate::value::{self, DecimalStyle, Text, Value, ValueType};

mod native;
pub use native::Native;

type FnResult = Result<Dynamic, Box<EvalAltResult>>;

/// A compiled expression and its source text (for messages).
#[derive(Clone, Debug)]
pub struct Expr {
    ast: AST,
    source: String,
}

impl Expr {
    /// The expression as written in the pipeline.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// A sandboxed expression engine with snodo's function library.
pub struct ExprEngine {
    engine: Engine,
}

impl std::fmt::Debug for ExprEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExprEngine")
    }
}

impl Default for ExprEngine {
    fn default() -> Self {
        Self::new()
    }
}

fn err(msg: impl Into<String>) -> Box<EvalAltResult> {
    msg.into().into()
}

/// The text of a value for the text functions: `None` for null; dates in ISO form (Rhai
/// would print the type's name).
fn text_of(v: &Dynamic) -> Option<String> {
    if v.is_unit() {
        None
    } else if v.is_string() {
        v.clone()
            .into_immutable_string()
            .ok()
            .map(|s| s.to_string())
    } else if let Some(d) = v.read_lock::<NaiveDate>() {
        Some(d.format(DATE_TEXT).to_string())
    } else if let Some(d) = v.read_lock::<NaiveDateTime>() {
        Some(d.format(DATETIME_TEXT).to_string())
    } else {
        Some(v.to_string())
    }
}

/// How `text()`, `to_string()` and the text functions write a date and a date-time.
const DATE_TEXT: &str = "%Y-%m-%d";
const DATETIME_TEXT: &str = "%Y-%m-%dT%H:%M:%S";

/// Applies a text function, passing null through.
fn on_text<T: AsRef<str>>(v: Dynamic, f: impl Fn(&str) -> T) -> Dynamic {
    match text_of(&v) {
        None => Dynamic::UNIT,
        Some(s) => Dynamic::from(ImmutableString::from(f(&s).as_ref())),
    }
}

/// Parses text into a decimal with `style`; empty text is null, a decimal passes through.
fn to_decimal(v: Dynamic, style: DecimalStyle) -> FnResult {
    if let Ok(d) = v.as_decimal() {
        return Ok(Dynamic::from_decimal(d));
    }
    if let Ok(i) = v.as_int() {
        return Ok(Dynamic::from_decimal(Decimal::from(i)));
    }
    match text_of(&v) {
        None => Ok(Dynamic::UNIT),
        Some(s) if s.trim().is_empty() => Ok(Dynamic::UNIT),
        Some(s) => value::parse_decimal(&s, style)
            .map(Dynamic::from_decimal)
            .map_err(err),
    }
}

fn to_date(v: Dynamic, fmt: &str) -> FnResult {
    if v.is::<NaiveDate>() {
        return Ok(v);
    }
    match text_of(&v) {
        None => Ok(Dynamic::UNIT),
        Some(s) if s.trim().is_empty() => Ok(Dynamic::UNIT),
        Some(s) => value::parse_date(&s, fmt).map(Dynamic::from).map_err(err),
    }
}

fn to_datetime(v: Dynamic, fmt: &str) -> FnResult {
    if v.is::<NaiveDateTime>() {
        return Ok(v);
    }
    match text_of(&v) {
        None => Ok(Dynamic::UNIT),
        Some(s) if s.trim().is_empty() => Ok(Dynamic::UNIT),
        Some(s) => value::parse_datetime(&s, fmt)
            .map(Dynamic::from)
            .map_err(err),
    }
}

/// Formats tried, in order, by `as_date` / `as_datetime`: the ISO forms databases return
/// and the Italian form of BCP/CSV exports. Unambiguous with each other, unlike `%m/%d`.
const LENIENT_DATE: [&str; 2] = ["%Y-%m-%d", "%d/%m/%Y"];
const LENIENT_DATETIME: [&str; 6] = [
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%Y-%m-%dT%H:%M",
];

/// A date from a date, a datetime (its day) or text in one of [`LENIENT_DATE`] /
/// [`LENIENT_DATETIME`]: one migration definition then reads a database copy and a CSV
/// export of the same table.
fn lenient_date(v: Dynamic) -> FnResult {
    if v.is::<NaiveDate>() {
        return Ok(v);
    }
    if let Some(dt) = v.clone().try_cast::<NaiveDateTime>() {
        return Ok(Dynamic::from(dt.date()));
    }
    match text_of(&v) {
        None => Ok(Dynamic::UNIT),
        Some(s) if s.trim().is_empty() => Ok(Dynamic::UNIT),
        Some(s) => {
            let t = s.trim();
            LENIENT_DATE
                .iter()
                .find_map(|f| NaiveDate::parse_from_str(t, f).ok())
                .or_else(|| {
                    LENIENT_DATETIME
                        .iter()
                        .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
                        .map(|d| d.date())
                })
                .map(Dynamic::from)
                .ok_or_else(|| err(format!("`{t}` is not a date (YYYY-MM-DD or DD/MM/YYYY)")))
        }
    }
}

fn lenient_datetime(v: Dynamic) -> FnResult {
    if v.is::<NaiveDateTime>() {
        return Ok(v);
    }
    if let Some(d) = v.clone().try_cast::<NaiveDate>() {
        return Ok(Dynamic::from(d.and_time(chrono::NaiveTime::MIN)));
    }
    match text_of(&v) {
        None => Ok(Dynamic::UNIT),
        Some(s) if s.trim().is_empty() => Ok(Dynamic::UNIT),
        Some(s) => {
            let t = s.trim();
            LENIENT_DATETIME
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
                .or_else(|| {
                    LENIENT_DATE
                        .iter()
                        .find_map(|f| NaiveDate::parse_from_str(t, f).ok())
                        .map(|d| d.and_time(chrono::NaiveTime::MIN))
                })
                .map(Dynamic::from)
                .ok_or_else(|| {
                    err(format!(
                        "`{t}` is not a date and time (YYYY-MM-DD HH:MM:SS or DD/MM/YYYY HH:MM:SS)"
                    ))
                })
        }
    }
}

/// A decimal from a number or from text with a dot (`1234.56`, databases) or a comma
/// (`1234,56` or `1.234,56`, Italian exports) as decimal separator.
fn lenient_decimal(v: Dynamic) -> FnResult {
    match text_of(&v) {
        Some(s) if v.is_string() && s.contains(',') => to_decimal(v, DecimalStyle::ITALIAN),
        _ => to_decimal(v, DecimalStyle::DOT),
    }
}

/// A name reduced for matching: accents removed (Unicode NFD without combining marks),
/// upper case, only the letters A–Z kept. `D'Angelo`, `DANGELO` and `d angelo` become
/// `DANGELO`; `Nicolò` and `NICOLO'` become `NICOLO`.
pub fn norm_name(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfd()
        .filter(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn collapse_spaces(s: &str) -> Text {
    // Most names arrive collapsed already (ASCII words, one space between them): copied
    // whole after one pass over the bytes instead of split into words and joined again.
    fn collapsed(bytes: &[u8]) -> bool {
        let mut after_space = true; // so that a leading space is caught
        for &b in bytes {
            match b {
                b' ' if after_space => return false,
                b' ' => after_space = true,
                b'\t' | b'\n' | 0x0B | 0x0C | b'\r' => return false,
                _ if !b.is_ascii() => return false,
                _ => after_space = false,
            }
        }
        bytes.is_empty() || !after_space
    }
    if collapsed(s.as_bytes()) {
        return Text::new(s);
    }
    let mut out = Text::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// A change of case: `ascii` in place on an inline copy for the usual ASCII text (a short
/// name then costs no allocation), else `full`, the Unicode mapping. For ASCII the two
/// agree by definition.
fn change_case(s: &str, ascii: fn(&mut str), full: fn(&str) -> String) -> Text {
    if s.is_ascii() {
        let mut t = Text::new(s);
        ascii(t.as_mut_str());
        t
    } else {
        Text::from(full(s))
    }
}

/// A function from text to text.
type TextFn = fn(&str) -> Text;

/// The functions from text to text, which pass null through: registered in Rhai and
/// evaluated by [`Native`] expressions, from this one table so that the two cannot disagree.
const TEXT_FUNCTIONS: [(&str, TextFn); 6] = [
    ("upper", |s| {
        change_case(s, str::make_ascii_uppercase, str::to_uppercase)
    }),
    ("lower", |s| {
        change_case(s, str::make_ascii_lowercase, str::to_lowercase)
    }),
    ("trim", |s| Text::new(crate::value::trim(s))),
    ("collapse_spaces", collapse_spaces),
    ("text", |s| Text::new(s)),
    ("norm_name", |s| Text::from(norm_name(s))),
];

/// The conversions of one value, registered in Rhai and called directly by [`Native`]
/// expressions, from this one table like [`TEXT_FUNCTIONS`]: the lenient conversions
/// every migration maps its legacy text columns with (`as_date(data_dsu)`).
/// Each with the type it yields: a value already of that type, or null, is what the
/// conversion gives back, which native expressions use to skip it.
const VALUE_FUNCTIONS: [(&str, ValueFn, ValueType); 3] = [
    ("as_date", lenient_date, ValueType::Date),
    ("as_datetime", lenient_datetime, ValueType::Datetime),
    ("as_decimal", lenient_decimal, ValueType::Decimal),
];

/// A conversion of one value, as Rhai calls it.
type ValueFn = fn(Dynamic) -> FnResult;

/// Whole years from `birth` to `at`; -1 when `at` is before `birth`.
fn age_at(birth: NaiveDate, at: NaiveDate) -> i64 {
    at.years_since(birth).map(i64::from).unwrap_or(-1)
}

/// A Belfiore code of a foreign state (`Z100`): born or living abroad.
fn is_foreign_place(code: &str) -> bool {
    let c = crate::value::trim(code);
    c.len() == 4 && c.starts_with(['Z', 'z'])
}

/// The date of the machine's clock, in its time zone.
fn today() -> NaiveDate {
    chrono::Local::now().date_naive()
}

fn bool_check(v: Dynamic, check: impl Fn(&str) -> bool) -> bool {
    text_of(&v).is_some_and(|s| check(&s))
}

/// The part of `[start, end]` (an open end runs to 31 December of `year`) that falls in
/// `year`, and the whole period's length, in days (both ends included).
fn year_days(start: NaiveDate, end: Option<NaiveDate>, year: i64) -> Option<(i64, i64)> {
    let y = i32::try_from(year).ok()?;
    let (jan1, dec31) = (
        NaiveDate::from_ymd_opt(y, 1, 1)?,
        NaiveDate::from_ymd_opt(y, 12, 31)?,
    );
    let end = end.unwrap_or(dec31.max(start));
    if end < start {
        return Some((0, 0));
    }
    let whole = (end - start).num_days() + 1;
    let (a, b) = (start.max(jan1), end.min(dec31));
    let part = if b < a { 0 } else { (b - a).num_days() + 1 };
    Some((part, whole))
}

fn optional_date(v: &Dynamic) -> std::result::Result<Option<NaiveDate>, Box<EvalAltResult>> {
    if v.is_unit() {
        return Ok(None);
    }
    let d = lenient_date(v.clone())?;
    Ok(d.try_cast::<NaiveDate>())
}

impl ExprEngine {
    /// Builds the sandboxed engine.
    pub fn new() -> Self {
        Self::with_vars(IndexMap::new())
    }

    /// The engine with the pipeline's `vars` (overridden by `snodo run --var`), read by
    /// `param("name")`.
    pub fn with_vars(vars: IndexMap<String, String>) -> Self {
        let mut e = Engine::new();
        e.on_print(|_| {});
        e.on_debug(|_, _, _| {});
        e.disable_symbol("eval");
        e.set_max_operations(50_000);
        e.set_max_call_levels(16);
        e.set_max_expr_depths(64, 32);
        e.set_max_string_size(1 << 20);
        e.set_max_array_size(10_000);
        e.set_max_map_size(10_000);
        // Calls with constant arguments are evaluated once, when the pipeline compiles:
        // `age_at(data_nascita, ymd(2026, 1, 1))` builds its date once, not per record.
        // Every registered function is pure (no I/O, no state) and all but `today` give
        // the same result for the same arguments; `today` is registered as volatile.
        e.set_optimization_level(rhai::OptimizationLevel::Full);

        // Text.
        for (name, f) in TEXT_FUNCTIONS {
            e.register_fn(name, move |v: Dynamic| on_text(v, f));
        }
        // Rhai's own `trim(string)` trims in place and returns nothing; this typed
        // registration takes precedence so that `upper(trim(x))` means what it says.
        e.register_fn("trim", |s: ImmutableString| ImmutableString::from(s.trim()));
        e.register_fn("is_empty", |s: ImmutableString| s.trim().is_empty());
        e.register_fn("left", |v: Dynamic, n: i64| {
            on_text(v, |s| s.chars().take(n.max(0) as usize).collect::<String>())
        });
        e.register_fn("pad_left", |v: Dynamic, n: i64, c: char| {
            on_text(v, |s| {
                let len = s.chars().count();
                // Bounded like every other string in the sandbox.
                let n = n.clamp(0, 1 << 16) as usize;
                let mut out: String = std::iter::repeat_n(c, n.saturating_sub(len)).collect();
                out.push_str(s);
                out
            })
        });
        e.register_fn("len", |v: Dynamic| {
            text_of(&v).map(|s| s.chars().count() as i64).unwrap_or(0)
        });
        e.register_fn("is_null", |v: Dynamic| v.is_unit());
        e.register_fn("is_empty", |v: Dynamic| {
            text_of(&v).is_none_or(|s| s.trim().is_empty())
        });
        e.register_fn("nullif_empty", |v: Dynamic| {
            if text_of(&v).is_none_or(|s| s.trim().is_empty()) {
                Dynamic::UNIT
            } else {
                v
            }
        });
        e.register_fn(
            "coalesce",
            |a: Dynamic, b: Dynamic| if a.is_unit() { b } else { a },
        );
        e.register_fn("coalesce", |a: Dynamic, b: Dynamic, c: Dynamic| {
            if !a.is_unit() {
                a
            } else if !b.is_unit() {
                b
            } else {
                c
            }
        });

        // Numbers: exact decimals only.
        e.register_fn("decimal", |v: Dynamic| to_decimal(v, DecimalStyle::DOT));
        e.register_fn("decimal_it", |v: Dynamic| {
            to_decimal(v, DecimalStyle::ITALIAN)
        });
        e.register_fn("int", |v: Dynamic| -> FnResult {
            if let Ok(i) = v.as_int() {
                return Ok(Dynamic::from_int(i));
            }
            match text_of(&v) {
                None => Ok(Dynamic::UNIT),
                Some(s) if s.trim().is_empty() => Ok(Dynamic::UNIT),
                Some(s) => value::parse_int(&s).map(Dynamic::from_int).map_err(err),
            }
        });
        e.register_fn("bool", |v: Dynamic| -> FnResult {
            if let Ok(b) = v.as_bool() {
                return Ok(Dynamic::from_bool(b));
            }
            match text_of(&v) {
                None => Ok(Dynamic::UNIT),
                Some(s) if s.trim().is_empty() => Ok(Dynamic::UNIT),
                Some(s) => value::parse_bool(&s).map(Dynamic::from_bool).map_err(err),
            }
        });

        // INPS codes yes/no as 1/2 (PresaCarico, SINBA's flags): `si_no(bool_field)`.
        e.register_fn("si_no", |v: Dynamic| -> FnResult {
            let b = if let Ok(b) = v.as_bool() {
                Some(b)
            } else if let Ok(i) = v.as_int() {
                Some(i != 0)
            } else {
                match text_of(&v) {
                    None => None,
                    Some(s) if s.trim().is_empty() => None,
                    Some(s) => Some(value::parse_bool(&s).map_err(err)?),
                }
            };
            Ok(match b {
                Some(true) => Dynamic::from(ImmutableString::from("1")),
                Some(false) => Dynamic::from(ImmutableString::from("2")),
                None => Dynamic::UNIT,
            })
        });
        // A list of codes separated by commas, sorted and without repetitions: what SQL's
        // `string_agg` gives without `DISTINCT`, which SQLite does not allow with a
        // separator.
        e.register_fn("sorted_unique", |v: Dynamic| -> Dynamic {
            match text_of(&v) {
                None => Dynamic::UNIT,
                Some(s) => {
                    let mut items: Vec<&str> = s
                        .split(',')
                        .map(str::trim)
                        .filter(|i| !i.is_empty())
                        .collect();
                    items.sort_unstable();
                    items.dedup();
                    if items.is_empty() {
                        Dynamic::UNIT
                    } else {
                        Dynamic::from(ImmutableString::from(items.join(",")))
                    }
                }
            }
        });

        // Dates: the format is always explicit.
        e.register_type_with_name::<NaiveDate>("date");
        e.register_type_with_name::<NaiveDateTime>("datetime");
        e.register_fn("date", |v: Dynamic, fmt: &str| to_date(v, fmt));
        e.register_fn("datetime", |v: Dynamic, fmt: &str| to_datetime(v, fmt));
        e.register_fn("to_string", |d: &mut NaiveDate| {
            d.format(DATE_TEXT).to_string()
        });
        e.register_fn("to_string", |d: &mut NaiveDateTime| {
            d.format(DATETIME_TEXT).to_string()
        });
        // chrono reports an unknown specifier (`%Q`) only while writing, as a formatting
        // error that `to_string` would turn into a panic: written by hand, it is a reject.
        e.register_fn("format", |d: NaiveDate, fmt: &str| -> FnResult {
            use std::fmt::Write;
            let mut out = String::new();
            write!(out, "{}", d.format(fmt)).map_err(|_| {
                err(format!(
                    "`{fmt}` is not a valid date format (chrono's strftime, e.g. `%d/%m/%Y`)"
                ))
            })?;
            Ok(Dynamic::from(ImmutableString::from(out)))
        });
        e.register_fn("year", |d: NaiveDate| d.year() as i64);
        e.register_fn("month", |d: NaiveDate| d.month() as i64);
        e.register_fn("day", |d: NaiveDate| d.day() as i64);
        e.register_fn("date_of", |d: NaiveDateTime| d.date());
        e.register_fn("ymd", |y: i64, m: i64, d: i64| -> FnResult {
            NaiveDate::from_ymd_opt(y as i32, m as u32, d as u32)
                .map(Dynamic::from)
                .ok_or_else(|| err(format!("{y}-{m}-{d} is not a calendar date")))
        });
        e.register_fn("add_days", |d: NaiveDate, n: i64| -> FnResult {
            chrono::TimeDelta::try_days(n)
                .and_then(|delta| d.checked_add_signed(delta))
                .map(Dynamic::from)
                .ok_or_else(|| err("date out of range"))
        });
        e.register_fn("age_at", age_at);
        e.register_fn("==", |a: NaiveDate, b: NaiveDate| a == b);
        e.register_fn("!=", |a: NaiveDate, b: NaiveDate| a != b);
        e.register_fn("<", |a: NaiveDate, b: NaiveDate| a < b);
        e.register_fn("<=", |a: NaiveDate, b: NaiveDate| a <= b);
        e.register_fn(">", |a: NaiveDate, b: NaiveDate| a > b);
        e.register_fn(">=", |a: NaiveDate, b: NaiveDate| a >= b);

        // Lenient conversions for data whose format varies between copies of one table.
        for (name, f, _) in VALUE_FUNCTIONS {
            e.register_fn(name, f);
        }
        // Volatile: the full optimisation (set above) must not fold it into the date the
        // pipeline was compiled on.
        rhai::FuncRegistration::new("today")
            .with_volatility(true)
            .register_into_engine(&mut e, today);

        // Domain validators and decoders.
        e.register_fn("is_codice_fiscale", |v: Dynamic| {
            bool_check(v, |s| validators::codice_fiscale::validate(s).is_ok())
        });
        e.register_fn("is_partita_iva", |v: Dynamic| {
            bool_check(v, |s| validators::partita_iva::validate(s).is_ok())
        });
        e.register_fn("is_iban", |v: Dynamic| {
            bool_check(v, |s| validators::iban::validate(s).is_ok())
        });
        e.register_fn("cf_birth_date", |v: Dynamic| -> Dynamic {
            text_of(&v)
                .and_then(|s| validators::codice_fiscale::validate(&s).ok())
                .and_then(|i| i.birth_date)
                .map(Dynamic::from)
                .unwrap_or(Dynamic::UNIT)
        });
        e.register_fn("cf_sex", |v: Dynamic| -> Dynamic {
            text_of(&v)
                .and_then(|s| validators::codice_fiscale::validate(&s).ok())
                .map(|i| Dynamic::from(ImmutableString::from(if i.female { "F" } else { "M" })))
                .unwrap_or(Dynamic::UNIT)
        });
        e.register_fn("comune_valid_at", |code: Dynamic, at: NaiveDate| {
            bool_check(code, |c| {
                matches!(
                    validators::comuni::lookup_at(c.trim(), at),
                    validators::comuni::PlaceCheck::Valid { .. }
                )
            })
        });
        e.register_fn("istat_code", |code: Dynamic, at: NaiveDate| -> Dynamic {
            text_of(&code)
                .and_then(|c| validators::comuni::istat_code_at(c.trim(), at))
                .map(|s| Dynamic::from(ImmutableString::from(s)))
                .unwrap_or(Dynamic::UNIT)
        });
        e.register_fn("istat_region", |code: Dynamic, at: NaiveDate| -> Dynamic {
            text_of(&code)
                .and_then(|c| validators::comuni::istat_region_at(c.trim(), at))
                .map(|s| Dynamic::from(ImmutableString::from(s)))
                .unwrap_or(Dynamic::UNIT)
        });
        e.register_fn("is_foreign_place", |code: Dynamic| {
            bool_check(code, is_foreign_place)
        });
        // Variables of the pipeline: `param("anno")`. An unknown name is an error, not null,
        // so that a typo cannot silently select nothing.
        e.register_fn("param", move |name: &str| -> FnResult {
            vars.get(name)
                .map(|v| Dynamic::from(ImmutableString::from(v.as_str())))
                .ok_or_else(|| {
                    err(format!(
                        "no variable `{name}`: define it under `vars:` in the pipeline or pass `--var {name}=…`"
                    ))
                })
        });
        // Whether the period [start, end] (end null: still open) touches `year`.
        e.register_fn(
            "in_year",
            |start: Dynamic, end: Dynamic, year: i64| -> FnResult {
                let Some(s) = optional_date(&start)? else {
                    return Ok(Dynamic::from_bool(false));
                };
                let (part, _) = year_days(s, optional_date(&end)?, year)
                    .ok_or_else(|| err(format!("`{year}` is not a year")))?;
                Ok(Dynamic::from_bool(part > 0))
            },
        );
        // The share of `amount` that falls in `year`, in proportion to the days of the
        // period [start, end] inside it (an open period runs to 31 December), rounded to
        // the cent. Exact decimals throughout.
        e.register_fn(
            "year_share",
            |amount: Dynamic, start: Dynamic, end: Dynamic, year: i64| -> FnResult {
                let amount = lenient_decimal(amount)?;
                let Some(a) = amount.clone().try_cast::<Decimal>() else {
                    return Ok(Dynamic::UNIT);
                };
                let Some(s) = optional_date(&start)? else {
                    return Ok(Dynamic::UNIT);
                };
                let (part, whole) = year_days(s, optional_date(&end)?, year)
                    .ok_or_else(|| err(format!("`{year}` is not a year")))?;
                if whole == 0 {
                    return Ok(Dynamic::from_decimal(Decimal::ZERO));
                }
                let share = a * Decimal::from(part) / Decimal::from(whole);
                Ok(Dynamic::from_decimal(share.round_dp_with_strategy(
                    2,
                    rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                )))
            },
        );
        e.register_fn("mask", |v: Dynamic| {
            on_text(v, |s| crate::mask::mask_keep(s, 1, 0))
        });

        ExprEngine { engine: e }
    }

    /// Compiles one expression. The error quotes the expression and Rhai's position.
    pub fn compile(&self, source: &str) -> Result<Expr, String> {
        self.engine
            .compile_expression(source)
            .map(|ast| Expr {
                ast,
                source: source.to_string(),
            })
            .map_err(|e| format!("invalid expression `{source}`: {e}"))
    }

    /// Builds the scope with only the fields at `indices` (see [`referenced_fields`]):
    /// converting every field of a wide record for an expression that reads two of them
    /// would dominate the cost of a `map` step.
    pub fn scope_with(&self, record: &Record, indices: &[usize]) -> Scope<'static> {
        let mut scope = Scope::with_capacity(indices.len());
        let names = record.schema.names();
        for &i in indices {
            if let (Some(name), Some(value)) = (names.get(i), record.values.get(i)) {
                scope.push_dynamic(identifier(name), to_dynamic(value));
            }
        }
        scope
    }

    /// Evaluates `expr` in `scope`.
    pub fn eval(&self, expr: &Expr, scope: &mut Scope<'static>) -> Result<Value, String> {
        self.engine
            .eval_ast_with_scope::<Dynamic>(scope, &expr.ast)
            .map(from_dynamic)
            .map_err(|e| describe(&e))
    }
}

/// Rhai's messages are good but carry positions inside the one-line expression that mean
/// little to a reader of a reject; keep the message, drop the position.
fn describe(e: &EvalAltResult) -> String {
    match e {
        EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
        EvalAltResult::ErrorVariableNotFound(name, _) => {
            format!("unknown field `{name}` (fields are variables; check the spelling)")
        }
        EvalAltResult::ErrorTooManyOperations(_) => {
            "expression exceeded its execution budget".into()
        }
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => describe(inner),
        other => other.to_string(),
    }
}

/// Positions of the schema fields whose variable name appears as a word in any of the
/// expressions. Over-inclusion (a word inside a string literal) only costs a conversion;
/// a field that is really used is never left out.
pub fn referenced_fields(sources: &[&str], schema: &crate::record::Schema) -> Vec<usize> {
    let mut words = std::collections::HashSet::new();
    for src in sources {
        for w in src.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !w.is_empty() {
                words.insert(w);
            }
        }
    }
    schema
        .names()
        .iter()
        .enumerate()
        .filter(|(_, n)| words.contains(identifier(n).as_str()))
        .map(|(i, _)| i)
        .collect()
}

/// Field name → Rhai variable name.
pub fn identifier(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.as_bytes()[0].is_ascii_digit() {
        s.insert(0, '_');
    }
    s
}

/// Converts a record value into a Rhai value.
pub fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Int(i) => Dynamic::from_int(*i),
        Value::Decimal(d) => Dynamic::from_decimal(*d),
        Value::Str(s) => Dynamic::from(ImmutableString::from(s.as_str())),
        Value::Date(d) => Dynamic::from(*d),
        Value::DateTime(d) => Dynamic::from(*d),
        Value::Bytes(b) => Dynamic::from_blob(b.clone()),
        Value::List(l) => Dynamic::from_array(l.iter().map(to_dynamic).collect()),
        Value::Map(m) => Dynamic::from_map(
            m.iter()
                .map(|(k, v)| (k.as_str().into(), to_dynamic(v)))
                .collect(),
        ),
    }
}

/// Converts a Rhai value back into a record value.
pub fn from_dynamic(d: Dynamic) -> Value {
    if d.is_unit() {
        return Value::Null;
    }
    if let Ok(b) = d.as_bool() {
        return Value::Bool(b);
    }
    if let Ok(i) = d.as_int() {
        return Value::Int(i);
    }
    if let Ok(x) = d.as_decimal() {
        return Value::Decimal(x);
    }
    if d.is_string() {
        return Value::Str(
            d.into_immutable_string()
                .map(|s| Text::new(&s))
                .unwrap_or_default(),
        );
    }
    if let Ok(c) = d.as_char() {
        return Value::Str(Text::from(c.to_string()));
    }
    if d.is::<NaiveDate>() {
        return d
            .try_cast::<NaiveDate>()
            .map(Value::Date)
            .unwrap_or(Value::Null);
    }
    if d.is::<NaiveDateTime>() {
        return d
            .try_cast::<NaiveDateTime>()
            .map(Value::DateTime)
            .unwrap_or(Value::Null);
    }
    if d.is_blob() {
        return Value::Bytes(d.into_blob().unwrap_or_default());
    }
    if d.is_array() {
        return Value::List(
            d.into_array()
                .unwrap_or_default()
                .into_iter()
                .map(from_dynamic)
                .collect(),
        );
    }
    if d.is_map() {
        if let Some(m) = d.try_cast::<rhai::Map>() {
            return Value::Map(Box::new(
                m.into_iter()
                    .map(|(k, v)| (k.to_string(), from_dynamic(v)))
                    .collect(),
            ));
        }
        return Value::Null;
    }
    Value::Str(d.to_string().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Schema, SourcePosition};

    fn dec(s: &str) -> Decimal {
        std::str::FromStr::from_str(s).unwrap()
    }

    /// The copy of collapsed text gives what splitting into words and joining gives, on
    /// text that is collapsed, that is not, and that only Unicode calls spaced.
    #[test]
    fn collapse_spaces_copies_collapsed_text_as_it_is() {
        let joined = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        for s in [
            "",
            " ",
            "A",
            "ROSSI",
            "DE LUCA",
            "DE  LUCA",
            " DE LUCA",
            "DE LUCA ",
            "DE\tLUCA",
            "DE\u{A0}LUCA",
            "NICOLÒ ROSSI",
            "A B C",
            "A\u{1F}B",
            "  ",
            "A\r\n",
        ] {
            assert_eq!(collapse_spaces(s).as_str(), joined(s), "{s:?}");
        }
    }

    fn rec(fields: &[(&str, Value)]) -> Record {
        Record {
            schema: Schema::new(fields.iter().map(|f| f.0.to_string()).collect()),
            values: fields.iter().map(|f| f.1.clone()).collect(),
            position: SourcePosition::default(),
        }
    }

    fn eval(src: &str, r: &Record) -> Result<Value, String> {
        let e = ExprEngine::new();
        let x = e.compile(src)?;
        let all: Vec<usize> = (0..r.values.len()).collect();
        e.eval(&x, &mut e.scope_with(r, &all))
    }

    #[test]
    fn money_is_exact() {
        let r = rec(&[("importo", Value::Str("1.234,10".into()))]);
        // 0.1 + 0.2 is the classic float failure; here it must be exactly 0.3.
        assert_eq!(eval("0.1 + 0.2", &r).unwrap(), Value::Decimal(dec("0.3")));
        assert_eq!(
            eval("decimal_it(importo) * 3", &r).unwrap(),
            Value::Decimal(dec("3702.30"))
        );
        assert!(eval("decimal_it(\"12,34,5\")", &r).is_err());
    }

    #[test]
    fn text_functions_pass_null_through() {
        let r = rec(&[
            ("cf", Value::Str("  rssmra80a01d969x ".into())),
            ("n", Value::Null),
        ]);
        assert_eq!(
            eval("upper(trim(cf))", &r).unwrap(),
            Value::Str("RSSMRA80A01D969X".into())
        );
        assert_eq!(eval("upper(trim(n))", &r).unwrap(), Value::Null);
        assert_eq!(
            eval("coalesce(n, \"x\")", &r).unwrap(),
            Value::Str("x".into())
        );
    }

    #[test]
    fn dates_parse_with_explicit_format_and_compare() {
        let r = rec(&[("d", Value::Str("29/02/2024".into()))]);
        assert_eq!(
            eval("date(d, \"%d/%m/%Y\")", &r).unwrap(),
            Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
        );
        assert_eq!(
            eval("date(d, \"%d/%m/%Y\") < ymd(2025, 1, 1)", &r).unwrap(),
            Value::Bool(true)
        );
        // Text functions write dates in ISO form (Rhai alone would write the type's name).
        assert_eq!(
            eval(
                "text(date(d, \"%d/%m/%Y\")) + \" \" + upper(as_datetime(d))",
                &r
            )
            .unwrap(),
            Value::Str("2024-02-29 2024-02-29T00:00:00".into())
        );
        assert_eq!(
            eval("format(date(d, \"%d/%m/%Y\"), \"%Y%m%d\")", &r).unwrap(),
            Value::Str("20240229".into())
        );
        // An unknown specifier is an error of the record, not a panic of the run.
        let e = eval("format(date(d, \"%d/%m/%Y\"), \"%Q\")", &r).unwrap_err();
        assert!(e.contains("`%Q` is not a valid date format"), "{e}");
        let bad = rec(&[("d", Value::Str("31/02/1980".into()))]);
        let e = eval("date(d, \"%d/%m/%Y\")", &bad).unwrap_err();
        assert!(e.contains("31/02/1980") && e.contains("%d/%m/%Y"), "{e}");
    }

    #[test]
    fn sandbox_has_no_statements_or_unbounded_work() {
        let e = ExprEngine::new();
        assert!(e.compile("let x = 1; x").is_err());
        assert!(
            e.compile("eval(\"1\")").is_err() || {
                let x = e.compile("eval(\"1\")").unwrap();
                e.eval(&x, &mut Scope::new()).is_err()
            }
        );
        // A huge string is refused by the size limit, not allowed to eat memory.
        let x = e.compile("\"x\".pad(2000000, 'y')").unwrap();
        assert!(e.eval(&x, &mut Scope::new()).is_err());
    }

    #[test]
    fn codes_are_chosen_with_if_expressions_and_places_have_regions() {
        let r = rec(&[
            ("sesso", Value::Str("F".into())),
            ("pic", Value::Null),
            ("nascita", Value::Str("Z100".into())),
            ("residenza", Value::Str("D969".into())),
        ]);
        assert_eq!(
            eval(r#"if sesso == "M" { "1" } else { "2" }"#, &r).unwrap(),
            Value::Str("2".into())
        );
        assert_eq!(
            eval(r#"if is_null(pic) { "2" } else { "1" }"#, &r).unwrap(),
            Value::Str("2".into())
        );
        assert_eq!(
            eval("is_foreign_place(nascita)", &r).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            eval(r#"sorted_unique("A2.06,A1.02, A2.06,")"#, &r).unwrap(),
            Value::Str("A1.02,A2.06".into())
        );
        assert_eq!(eval(r#"si_no("S")"#, &r).unwrap(), Value::Str("1".into()));
        assert_eq!(eval("si_no(0)", &r).unwrap(), Value::Str("2".into()));
        assert_eq!(eval("si_no(pic)", &r).unwrap(), Value::Null);
        // An open period runs to the end of the year: 1 July 2023 – 31 December 2024 is
        // 550 days, 366 of them in 2024 (a leap year).
        assert_eq!(
            eval(r#"year_share("550.00", "2023-07-01", (), 2024)"#, &r).unwrap(),
            Value::Decimal("366.00".parse().unwrap())
        );
        assert_eq!(
            eval(
                r#"year_share("1000", "2024-12-01", "2025-01-30", 2025)"#,
                &r
            )
            .unwrap(),
            Value::Decimal("491.80".parse().unwrap()),
            "30 of 61 days"
        );
        assert_eq!(
            eval(r#"in_year("2023-01-01", "2023-12-31", 2024)"#, &r).unwrap(),
            Value::Bool(false)
        );
        assert_eq!(
            eval(r#"in_year("2023-01-01", (), 2024)"#, &r).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            eval("is_foreign_place(residenza)", &r).unwrap(),
            Value::Bool(false)
        );
        assert_eq!(
            eval("istat_region(residenza, ymd(2025, 1, 1))", &r).unwrap(),
            Value::Str("07".into())
        );
    }

    #[test]
    fn lenient_conversions_read_database_and_export_forms_alike() {
        let r = rec(&[
            ("iso", Value::Str("1980-03-07".into())),
            ("it", Value::Str("07/03/1980".into())),
            ("ts", Value::Str("1980-03-07 10:11:12".into())),
            ("bad", Value::Str("31/02/1980".into())),
            ("dot", Value::Str("1234.50".into())),
            ("comma", Value::Str("1.234,50".into())),
            ("empty", Value::Str(" ".into())),
        ]);
        let day = Value::Date(NaiveDate::from_ymd_opt(1980, 3, 7).unwrap());
        assert_eq!(eval("as_date(iso)", &r).unwrap(), day);
        assert_eq!(eval("as_date(it)", &r).unwrap(), day);
        assert_eq!(eval("as_date(ts)", &r).unwrap(), day);
        assert_eq!(eval("as_date(empty)", &r).unwrap(), Value::Null);
        let e = eval("as_date(bad)", &r).unwrap_err();
        assert!(e.contains("31/02/1980") && e.contains("not a date"), "{e}");
        assert_eq!(
            eval("as_datetime(it)", &r).unwrap(),
            Value::DateTime(
                NaiveDate::from_ymd_opt(1980, 3, 7)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
            )
        );
        assert_eq!(
            eval("as_decimal(dot)", &r).unwrap(),
            Value::Decimal(dec("1234.50"))
        );
        assert_eq!(
            eval("as_decimal(comma)", &r).unwrap(),
            Value::Decimal(dec("1234.50"))
        );
    }

    #[test]
    fn names_are_normalised_for_matching() {
        assert_eq!(norm_name("D'Angelo"), "DANGELO");
        assert_eq!(norm_name("d  angelo"), "DANGELO");
        assert_eq!(norm_name("Nicolò"), "NICOLO");
        assert_eq!(norm_name("NICOLO'"), "NICOLO");
        assert_eq!(norm_name("Dell’Acqua"), "DELLACQUA");
        let r = rec(&[("n", Value::Str("Mariù".into()))]);
        assert_eq!(
            eval("norm_name(n)", &r).unwrap(),
            Value::Str("MARIU".into())
        );
        assert_eq!(
            eval(
                "norm_name(missing_is_null)",
                &rec(&[("missing_is_null", Value::Null)])
            )
            .unwrap(),
            Value::Null
        );
    }

    #[test]
    fn case_changes_agree_with_unicode_for_ascii_and_accented_text() {
        for s in ["rossi", "D'Angelo-Bianchi 2", "nicolò", "straße", "ÀÉÌ", ""] {
            let r = rec(&[("s", Value::Str(s.into()))]);
            assert_eq!(
                eval("upper(s)", &r).unwrap(),
                Value::Str(s.to_uppercase().into()),
                "{s}"
            );
            assert_eq!(
                eval("lower(s)", &r).unwrap(),
                Value::Str(s.to_lowercase().into()),
                "{s}"
            );
        }
    }

    #[test]
    fn trim_returns_the_trimmed_text() {
        let r = rec(&[("s", Value::Str(" m ".into()))]);
        assert_eq!(eval("upper(trim(s))", &r).unwrap(), Value::Str("M".into()));
        assert_eq!(eval("trim(s)", &r).unwrap(), Value::Str("m".into()));
        assert_eq!(eval("is_empty(\"  \")", &r).unwrap(), Value::Bool(true));
    }

    #[test]
    fn unknown_field_is_named() {
        let r = rec(&[("a", Value::Int(1))]);
        let e = eval("b + 1", &r).unwrap_err();
        assert!(e.contains("`b`"), "{e}");
    }
}
