use std::collections::HashSet;

use chrono::NaiveDate;
use indexmap::IndexMap;
use regex::Regex;

use super::{Step, StepContext, config_error};
use crate::config::FieldRule;
use crate::error::Result;
use crate::record::{Batch, Record};
use crate::validators::{codice_fiscale, comuni, iban, partita_iva};
use crate::value::Value;

struct CompiledRule {
    field: String,
    rule: FieldRule,
    pattern: Option<Regex>,
    allowed: Option<HashSet<String>>,
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
            let mut allowed: Option<HashSet<String>> =
                rule.one_of.as_ref().map(|v| v.iter().cloned().collect());
            if let Some(file) = &rule.code_list {
                let mut rdr = csv::Reader::from_path(file)
                    .map_err(|e| config_error(&at, format!("code list `{file}`: {e}")))?;
                let set = allowed.get_or_insert_with(HashSet::new);
                for row in rdr.records() {
                    let row =
                        row.map_err(|e| config_error(&at, format!("code list `{file}`: {e}")))?;
                    if let Some(code) = row.get(0) {
                        set.insert(code.trim().to_string());
                    }
                }
            }
            compiled.push(CompiledRule {
                field: field.clone(),
                rule: rule.clone(),
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

fn date_of(v: Option<&Value>) -> Option<NaiveDate> {
    match v? {
        Value::Date(d) => Some(*d),
        Value::DateTime(d) => Some(d.date()),
        Value::Str(s) => NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok(),
        _ => None,
    }
}

/// Checks one field; returns `(code, message)` for every broken rule.
fn check(r: &CompiledRule, record: &Record, broken: &mut Vec<(String, String)>) {
    let f = &r.field;
    let value = record.get(f).unwrap_or(&Value::Null);
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
    let text = match value {
        Value::Str(s) => s.clone(),
        other => other.to_text().unwrap_or_default(),
    };
    let len = text.chars().count();
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
        && !allowed.contains(text.trim())
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
        && let Err(e) = codice_fiscale::validate_any(&text)
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
    if let Some(date_field) = &r.rule.belfiore_at {
        let code = text.trim().to_uppercase();
        match date_of(record.get(date_field)) {
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

    fn apply(&mut self, records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        let mut out = Vec::with_capacity(records.len());
        let mut broken = Vec::new();
        for rec in records {
            broken.clear();
            for r in &self.rules {
                check(r, &rec, &mut broken);
            }
            if broken.is_empty() {
                out.push(rec);
            } else {
                let code = broken[0].0.clone();
                let reason = broken
                    .iter()
                    .map(|b| b.1.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                batch
                    .rejects
                    .push(self.ctx.reject(&self.label, code, reason, &rec));
            }
        }
        out
    }
}
