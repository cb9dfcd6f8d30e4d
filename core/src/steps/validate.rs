use std::collections::HashSet;

use chrono::NaiveDate;
use indexmap::IndexMap;
use regex::Regex;

use super::{Step, StepContext, config_error};
use crate::config::FieldRule;
use crate::error::Result;
use crate::record::{Batch, FieldRef, Record};
use crate::validators::{codice_fiscale, comuni, iban, partita_iva};
use crate::value::Value;

/// A code list (`one_of`, `code_list`).
type CodeSet = HashSet<String, foldhash::fast::RandomState>;

struct CompiledRule {
    field: FieldRef,
    /// The fields `not_before` and `belfiore_at` name.
    not_before: Option<FieldRef>,
    belfiore_at: Option<FieldRef>,
    rule: FieldRule,
    min: Option<Bound>,
    max: Option<Bound>,
    pattern: Option<Regex>,
    /// The code list (`one_of`, `code_list`), looked up for every record: foldhash
    /// (seeded per process) rather than SipHash.
    allowed: Option<CodeSet>,
    /// Whether a rule reads the value's text (lengths, pattern, code list, the identifier
    /// checks, the place code): the others never make it, which for an integer or a date
    /// checked only for presence and type would mean formatting it for nothing.
    reads_text: bool,
}

/// The `validate` step: checks fields against rules.
pub struct Validate {
    label: String,
    rules: Vec<CompiledRule>,
    ctx: StepContext,
}

impl Validate {
    /// Compiles patterns and loads code lists.
    pub fn new(
        label: String,
        rules: &IndexMap<String, FieldRule>,
        ctx: StepContext,
    ) -> Result<Self> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (field, rule) in rules {
            let at = format!("{label}.{field}");
            let pattern = match &rule.pattern {
                Some(p) => Some(Regex::new(p).map_err(|e| config_error(&at, e))?),
                None => None,
            };
            let mut allowed: Option<CodeSet> =
                rule.one_of.as_ref().map(|v| v.iter().cloned().collect());
            if let Some(file) = &rule.code_list {
                let mut rdr = csv::Reader::from_path(file)
                    .map_err(|e| config_error(&at, format!("code list `{file}`: {e}")))?;
                let set = allowed.get_or_insert_with(CodeSet::default);
                for row in rdr.records() {
                    let row =
                        row.map_err(|e| config_error(&at, format!("code list `{file}`: {e}")))?;
                    if let Some(code) = row.get(0) {
                        set.insert(code.trim().to_string());
                    }
                }
            }
            let bound = |b: &Option<String>, which: &str| {
                b.as_deref()
                    .map(Bound::parse)
                    .transpose()
                    .map_err(|e| config_error(&format!("{at}.{which}"), e))
            };
            compiled.push(CompiledRule {
                field: FieldRef::new(field),
                not_before: rule.not_before.as_ref().map(FieldRef::new),
                belfiore_at: rule.belfiore_at.as_ref().map(FieldRef::new),
                rule: rule.clone(),
                min: bound(&rule.min, "min")?,
                max: bound(&rule.max, "max")?,
                reads_text: rule.min_length.is_some()
                    || rule.max_length.is_some()
                    || pattern.is_some()
                    || allowed.is_some()
                    || rule.codice_fiscale
                    || rule.partita_iva
                    || rule.iban
                    || rule.belfiore_at.is_some(),
                pattern,
                allowed,
            });
        }
        Ok(Validate {
            label,
            rules: compiled,
            ctx,
        })
    }
}

/// A `min` / `max` bound.
#[derive(Debug, Clone)]
enum Bound {
    Date(NaiveDate),
    /// The day the record is checked, so that a long-lived pipeline never goes stale.
    Today,
    Number(rust_decimal::Decimal),
}

impl Bound {
    fn parse(text: &str) -> std::result::Result<Bound, String> {
        let t = text.trim();
        if t == "today" {
            return Ok(Bound::Today);
        }
        if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return Ok(Bound::Date(d));
        }
        t.parse()
            .map(Bound::Number)
            .map_err(|_| format!("`{t}` is neither a date (YYYY-MM-DD), `today` nor a number"))
    }

    /// Compares `value` with the bound: `None` when they are not comparable.
    fn cmp(&self, value: &Value, today: NaiveDate) -> Option<std::cmp::Ordering> {
        match self {
            Bound::Date(d) => date_of(Some(value)).map(|v| v.cmp(d)),
            Bound::Today => date_of(Some(value)).map(|v| v.cmp(&today)),
            Bound::Number(n) => match value {
                Value::Int(i) => Some(rust_decimal::Decimal::from(*i).cmp(n)),
                Value::Decimal(d) => Some(d.cmp(n)),
                _ => None,
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Bound::Date(d) => d.to_string(),
            Bound::Today => "today".into(),
            Bound::Number(n) => n.to_string(),
        }
    }
}

fn date_of(v: Option<&Value>) -> Option<NaiveDate> {
    match v? {
        Value::Date(d) => Some(*d),
        Value::DateTime(d) => Some(d.date()),
        Value::Str(s) => NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok(),
        _ => None,
    }
}

/// Checks one field; returns `(code, message)` for every broken rule.
/// `today` is the day the batch is checked: read once per batch, because the local clock
/// and time zone cost more than most rules (1-2 % of the CSV benchmark's CPU when read for
/// every record's codice fiscale).
fn check(r: &CompiledRule, record: &Record, broken: &mut Vec<(String, String)>, today: NaiveDate) {
    let f = r.field.name();
    let value = r.field.get(record).unwrap_or(&Value::Null);
    if value.is_missing() {
        if r.rule.required {
            broken.push((
                format!("required.{f}"),
                format!("`{f}` is required but empty"),
            ));
        }
        return;
    }
    if let Some(t) = r.rule.value_type
        && value.value_type() != Some(t)
    {
        broken.push((
            format!("type.{f}"),
            format!("`{f}` should be a {t} but is a {}", value.type_name()),
        ));
        return;
    }
    let text = if r.reads_text {
        value.text().unwrap_or_default()
    } else {
        std::borrow::Cow::Borrowed("")
    };
    let len = if r.rule.min_length.is_some() || r.rule.max_length.is_some() {
        text.chars().count()
    } else {
        0
    };
    if let Some(min) = r.rule.min_length
        && len < min
    {
        broken.push((
            format!("length.{f}"),
            format!("`{f}` has {len} characters, at least {min} required"),
        ));
    }
    if let Some(max) = r.rule.max_length
        && len > max
    {
        broken.push((
            format!("length.{f}"),
            format!("`{f}` has {len} characters, at most {max} allowed"),
        ));
    }
    if let Some(re) = &r.pattern
        && !re.is_match(&text)
    {
        broken.push((
            format!("pattern.{f}"),
            format!("`{f}` does not match the pattern `{}`", re.as_str()),
        ));
    }
    if let Some(allowed) = &r.allowed
        && !allowed.contains(crate::value::trim(&text))
    {
        broken.push((
            format!("code_list.{f}"),
            format!(
                "`{f}` = `{}` is not in the code list",
                crate::mask::redact_text(text.trim())
            ),
        ));
    }
    if r.rule.codice_fiscale
        && let Err(e) = codice_fiscale::validate_any_at(&text, today)
    {
        broken.push((
            format!("codice_fiscale.{f}"),
            format!("`{f}` is not a valid codice fiscale: {e}"),
        ));
    }
    if r.rule.partita_iva
        && let Err(e) = partita_iva::validate(&text)
    {
        broken.push((
            format!("partita_iva.{f}"),
            format!("`{f}` is not a valid partita IVA: {e}"),
        ));
    }
    if r.rule.iban
        && let Err(e) = iban::validate(&text)
    {
        broken.push((
            format!("iban.{f}"),
            format!("`{f}` is not a valid IBAN: {e}"),
        ));
    }
    for (bound, low) in [(&r.min, true), (&r.max, false)] {
        let Some(b) = bound else { continue };
        match b.cmp(value, today) {
            None => broken.push((
                format!("range.{f}"),
                format!(
                    "`{f}` is a {} and cannot be compared with {}",
                    value.type_name(),
                    b.describe()
                ),
            )),
            Some(std::cmp::Ordering::Less) if low => broken.push((
                format!("range.{f}"),
                format!(
                    "`{f}` = {} is before the minimum {}",
                    value.to_text().unwrap_or_default(),
                    b.describe()
                ),
            )),
            Some(std::cmp::Ordering::Greater) if !low => broken.push((
                format!("range.{f}"),
                format!(
                    "`{f}` = {} is after the maximum {}",
                    value.to_text().unwrap_or_default(),
                    b.describe()
                ),
            )),
            _ => {}
        }
    }
    if let Some(other) = &r.not_before
        && let Some(start) = date_of(other.get(record))
    {
        match date_of(Some(value)) {
            Some(end) if end < start => broken.push((
                format!("order.{f}"),
                format!("`{f}` = {end} is before `{other}` = {start}"),
            )),
            Some(_) => {}
            None => broken.push((
                format!("order.{f}"),
                format!("`{f}` is a {}, not a date", value.type_name()),
            )),
        }
    }
    if let Some(date_field) = &r.belfiore_at {
        // Uppercase for the lookup and the message; ASCII codes already in capitals (most
        // of them) are borrowed as they are.
        let trimmed = crate::value::trim(&text);
        let code = if trimmed
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_lowercase())
        {
            std::borrow::Cow::Borrowed(trimmed)
        } else {
            std::borrow::Cow::Owned(trimmed.to_uppercase())
        };
        match date_of(date_field.get(record)) {
            None => broken.push((
                format!("belfiore_at.{f}"),
                format!("`{f}`: cannot check the place code because `{date_field}` is not a date"),
            )),
            Some(at) => match comuni::lookup_at(&code, at) {
                comuni::PlaceCheck::Valid(_) => {}
                comuni::PlaceCheck::NotValidAt {
                    name,
                    valid_from,
                    valid_to,
                } => broken.push((
                    format!("belfiore_at.{f}"),
                    format!(
                        "`{f}` = {code} ({name}) was not valid at `{date_field}` {at}: valid {valid_from} to {valid_to}"
                    ),
                )),
                comuni::PlaceCheck::Unknown => broken.push((
                    format!("belfiore_at.{f}"),
                    format!("`{f}` = {code} is not a known comune or foreign state code"),
                )),
            },
        }
    }
}

impl Step for Validate {
    fn label(&self) -> &str {
        &self.label
    }

    fn apply(&mut self, mut records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        // In place: a new vector per step and batch was fresh memory for each (see
        // `crate::recycle`).
        let mut broken = Vec::new();
        let today = chrono::Local::now().date_naive();
        crate::record::retain_prefetching(&mut records, |rec| {
            broken.clear();
            for r in &self.rules {
                check(r, rec, &mut broken, today);
            }
            if broken.is_empty() {
                return true;
            }
            let code = broken[0].0.clone();
            let reason = broken
                .iter()
                .map(|b| b.1.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            batch
                .rejects
                .push(self.ctx.reject(&self.label, code, reason, rec));
            false
        });
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::ExprEngine;
    use crate::record::{Schema, SourcePosition};
    use std::sync::Arc;

    fn validate(rules: &str, fields: &[(&str, Value)]) -> Vec<String> {
        let rules: IndexMap<String, FieldRule> = serde_json::from_str(rules).unwrap();
        let ctx = StepContext::new(Arc::new(ExprEngine::new()), Vec::new());
        let mut step = Validate::new("steps[0].validate".into(), &rules, ctx).unwrap();
        let rec = Record {
            schema: Schema::new(fields.iter().map(|f| f.0.to_string()).collect()),
            values: fields.iter().map(|f| f.1.clone()).collect(),
            position: SourcePosition::default(),
        };
        let mut batch = Batch::default();
        step.apply(vec![rec], &mut batch);
        batch.rejects.iter().map(|r| r.reason.clone()).collect()
    }

    fn day(s: &str) -> Value {
        Value::Date(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap())
    }

    #[test]
    fn dates_outside_min_and_max_are_rejected() {
        let rules = r#"{"data_nascita": {"min": "1900-01-01", "max": "today"}}"#;
        assert!(validate(rules, &[("data_nascita", day("1950-06-01"))]).is_empty());
        let old = validate(rules, &[("data_nascita", day("1899-12-31"))]);
        assert!(old[0].contains("before the minimum 1900-01-01"), "{old:?}");
        let future = validate(rules, &[("data_nascita", day("2999-01-01"))]);
        assert!(future[0].contains("after the maximum today"), "{future:?}");
        assert!(validate(rules, &[("data_nascita", Value::Null)]).is_empty());
    }

    /// Rules on the text of a typed value read its canonical text (only those rules make
    /// it): a five-digit postcode read as an integer, a date as `YYYY-MM-DD`.
    #[test]
    fn text_rules_read_the_text_of_typed_values() {
        let rules = r#"{"cap": {"pattern": "^[0-9]{5}$", "max_length": 5}, "nato": {"min_length": 10, "max_length": 10, "pattern": "^19"}, "id": {"required": true, "type": "int"}}"#;
        let ok = [
            ("cap", Value::Int(16121)),
            ("nato", day("1950-06-01")),
            ("id", Value::Int(7)),
        ];
        assert!(validate(rules, &ok).is_empty());
        let bad = [
            ("cap", Value::Int(161210)),
            ("nato", day("2001-06-01")),
            ("id", Value::Int(7)),
        ];
        let r = validate(rules, &bad).join(" | ");
        assert!(
            r.contains("`cap` has 6 characters, at most 5 allowed"),
            "{r}"
        );
        assert!(r.contains("`cap` does not match the pattern"), "{r}");
        assert!(r.contains("`nato` does not match the pattern `^19`"), "{r}");
        assert!(
            !r.contains("`nato` has"),
            "a date's text has 10 characters: {r}"
        );
    }

    /// Place codes typed by hand (lower case, spaces) are checked as their capitals, and
    /// named so in the message.
    #[test]
    fn place_codes_are_checked_in_capitals() {
        let rules = r#"{"comune": {"belfiore_at": "nato"}}"#;
        for code in ["D969", " d969 ", "d969"] {
            let ok = [
                ("comune", Value::Str(code.into())),
                ("nato", day("1980-01-01")),
            ];
            assert!(validate(rules, &ok).is_empty(), "{code:?}");
        }
        let bad = [
            ("comune", Value::Str(" z999 ".into())),
            ("nato", day("1980-01-01")),
        ];
        let r = validate(rules, &bad).join(" | ");
        assert!(r.contains("`comune` = Z999 is not a known"), "{r}");
    }

    #[test]
    fn numeric_bounds_compare_exactly() {
        let rules = r#"{"importo": {"min": "0"}}"#;
        assert!(
            validate(
                rules,
                &[("importo", Value::Decimal("0.00".parse().unwrap()))]
            )
            .is_empty()
        );
        let r = validate(
            rules,
            &[("importo", Value::Decimal("-0.01".parse().unwrap()))],
        );
        assert!(
            r[0].contains("`importo` = -0.01 is before the minimum 0"),
            "{r:?}"
        );
    }

    #[test]
    fn an_end_before_its_start_is_rejected() {
        let rules = r#"{"data_chiusura": {"not_before": "data_apertura"}}"#;
        let ok = [
            ("data_apertura", day("2020-01-01")),
            ("data_chiusura", day("2020-01-01")),
        ];
        assert!(validate(rules, &ok).is_empty());
        let bad = [
            ("data_apertura", day("2020-01-02")),
            ("data_chiusura", day("2020-01-01")),
        ];
        let r = validate(rules, &bad);
        assert!(
            r[0].contains("`data_chiusura` = 2020-01-01 is before `data_apertura` = 2020-01-02"),
            "{r:?}"
        );
        let open = [
            ("data_apertura", day("2020-01-02")),
            ("data_chiusura", Value::Null),
        ];
        assert!(validate(rules, &open).is_empty());
    }

    #[test]
    fn a_bound_that_is_neither_date_nor_number_is_a_config_error() {
        let rules: IndexMap<String, FieldRule> =
            serde_json::from_str(r#"{"x": {"min": "yesterday"}}"#).unwrap();
        let ctx = StepContext::new(Arc::new(ExprEngine::new()), Vec::new());
        let err = Validate::new("steps[1].validate".into(), &rules, ctx)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("steps[1].validate.x.min") && err.contains("yesterday"),
            "{err}"
        );
    }
}
