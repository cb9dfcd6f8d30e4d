//! Masking of personal data in everything snodo writes about records: rejects, logs,
//! error messages and the flow log.
//!
//! Two layers: values of fields the pipeline declares `personal` are masked by position,
//! and any text is scrubbed of things that *look like* a codice fiscale or an IBAN, wherever
//! they appear — a surname typed into a notes field is not caught, a codice fiscale is.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;

use crate::record::Record;
use crate::value::Value;

/// `RSSMRA80A01D969X` → `RSS***********X`: enough for an operator to recognise the
/// record in front of them, not enough to identify a person.
pub fn mask_cf(cf: &str) -> String {
    mask_keep(cf, 3, 1)
}

/// Keeps `head` leading and `tail` trailing characters and stars the rest. Short values
/// are starred entirely, so a 4-letter surname never survives.
pub fn mask_keep(s: &str, head: usize, tail: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= head + tail + 2 {
        return "*".repeat(chars.len().max(1));
    }
    let mut out = String::with_capacity(chars.len());
    out.extend(&chars[..head]);
    out.extend(std::iter::repeat_n('*', chars.len() - head - tail));
    out.extend(&chars[chars.len() - tail..]);
    out
}

fn cf_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // Omocodia letters allowed where digits are expected; case-insensitive because
        // operators type codici fiscali in lower case.
        Regex::new(
            r"(?i)\b[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]\b",
        )
        .expect("static regex")
    })
}

fn iban_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)\b[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}\b").expect("static regex"))
}

/// Scrubs codici fiscali and IBANs out of free text (error messages, reasons, log lines).
pub fn redact_text(text: &str) -> String {
    redact_cow(text).into_owned()
}

/// [`redact_text`] without a copy of a text that holds nothing to scrub (almost every
/// text: the flow log scrubs two keys per record it lineages).
pub fn redact_cow(text: &str) -> Cow<'_, str> {
    if !may_hold_code(text) {
        return crate::secret::redact_cow(text);
    }
    let step = cf_regex().replace_all(text, |c: &regex::Captures| mask_cf(&c[0]));
    let step = match iban_regex().replace_all(&step, |c: &regex::Captures| mask_keep(&c[0], 4, 3)) {
        Cow::Borrowed(_) => step,
        Cow::Owned(s) => Cow::Owned(s),
    };
    match crate::secret::redact_cow(&step) {
        Cow::Borrowed(_) => step,
        Cow::Owned(s) => Cow::Owned(s),
    }
}

/// Whether `text` has a run of at least 15 bytes that are ASCII letters or digits or part
/// of a non-ASCII character: both patterns need one (a codice fiscale is 16 characters, the
/// shortest IBAN 15), and non-ASCII bytes count because `(?i)` lets a few non-ASCII
/// letters match (the Kelvin sign is a `k`). The flow log scrubs every lineage key, most
/// of them short (`csv:file#17`); skipping the two regex searches for them saved about 3 %
/// of a CSV load's CPU, all of it on the sink's single thread.
fn may_hold_code(text: &str) -> bool {
    let mut run = 0;
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b >= 0x80 {
            run += 1;
            if run >= 15 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Masks one value: text is starred keeping its first character, other values become
/// `"***"` (a birth date is as identifying as a name).
pub fn mask_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Str(s) => serde_json::Value::String(mask_keep(s, 1, 0)),
        _ => serde_json::Value::String("***".into()),
    }
}

/// The record as JSON with `personal` fields masked and every remaining string scrubbed.
pub fn masked_payload(record: &Record, personal: &[String]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in record.iter() {
        let masked = if personal.iter().any(|p| p == name) {
            mask_value(value)
        } else {
            scrub_json(value.to_json())
        };
        map.insert(name.to_string(), masked);
    }
    serde_json::Value::Object(map)
}

/// Removes the values of `personal` fields of `record` from a message about it (a reason
/// such as "`31/02/1980` is not a valid date" would otherwise carry a birth date).
pub fn scrub_personal(text: &str, record: &Record, personal: &[String]) -> String {
    let mut out = redact_text(text);
    for (name, value) in record.iter() {
        if !personal.iter().any(|p| p == name) {
            continue;
        }
        if let Some(t) = value.to_text() {
            let t = t.trim();
            if t.chars().count() >= 2 && out.contains(t) {
                out = out.replace(t, &mask_keep(t, 1, 0));
            }
        }
    }
    out
}

/// Every value masked, for records whose fields cannot be named (a malformed row: the
/// field count does not match the header, so `personal` cannot be applied by name).
pub fn masked_all(record: &Record) -> serde_json::Value {
    serde_json::Value::Object(
        record
            .iter()
            .map(|(k, v)| (k.to_string(), mask_value(v)))
            .collect(),
    )
}

/// Scrubs every string inside a JSON value.
pub fn scrub_json(j: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match j {
        J::String(s) => J::String(match redact_cow(&s) {
            Cow::Borrowed(_) => s,
            Cow::Owned(scrubbed) => scrubbed,
        }),
        J::Array(a) => J::Array(a.into_iter().map(scrub_json).collect()),
        J::Object(o) => J::Object(o.into_iter().map(|(k, v)| (k, scrub_json(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_runs_skip_the_search_and_codes_in_any_company_are_still_found() {
        // Nothing that could be a code: unchanged, without the regex search.
        assert!(!may_hold_code("csv:assistiti.csv#17 → assistiti:id=42"));
        assert!(!may_hold_code("ABCDEFGHIJKLMN-1234")); // 14 then 4
        assert!(may_hold_code("ABCDEFGHIJKLMNO"));
        for (text, expected) in [
            (
                "cf=rssmra80a01d969x;",
                format!("cf=rss{}x;", "*".repeat(12)),
            ),
            ("(RSSMRA80A01D969X)", format!("(RSS{}X)", "*".repeat(12))),
            (
                "IT60X0542811101000000123456",
                format!("IT60{}456", "*".repeat(20)),
            ),
            // The Kelvin sign (3 bytes, outside ASCII) folds to `k` under `(?i)`: the
            // prefilter must not skip a text the pattern matches.
            ("RSSMRA80A01\u{212A}969X", format!("RSS{}X", "*".repeat(12))),
        ] {
            assert_eq!(redact_text(text), expected, "{text}");
        }
    }

    #[test]
    fn codice_fiscale_is_masked_everywhere() {
        assert_eq!(
            mask_cf("RSSMRA80A01D969X"),
            format!("RSS{}X", "*".repeat(12))
        );
        let t =
            redact_text("persona rssmra80a01d969x già presente; IBAN IT60X0542811101000000123456");
        assert!(!t.to_uppercase().contains("RSSMRA80A01D969X"), "{t}");
        assert!(!t.contains("0542811101000000123456"), "{t}");
        assert!(t.contains("rss"), "{t}");
    }

    #[test]
    fn short_values_are_fully_masked() {
        assert_eq!(mask_keep("Rua", 1, 0), "***");
        assert_eq!(mask_keep("Rossi", 1, 0), "R****");
    }
}
