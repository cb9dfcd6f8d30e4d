//! The pipeline file: `source → steps → sink`, plus the reject policy.
//!
//! The doc comments on these structs are the reference documentation: `snodo schema`
//! turns them into the JSON Schema that editors use for completion and that `docs/`
//! publishes.

use std::fmt;
use std::path::Path;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::yaml::{Node, Problem};
use super::{Check, deepest, problem};
use crate::expr::ExprEngine;
use crate::value::ValueType;

/// A pipeline: one source, an ordered list of steps, one sink.
///
/// ```yaml
/// pipeline: assistiti-csv
/// source:
///   csv: { path: tests/fixtures/csv/assistiti_legacy.csv, delimiter: ";", encoding: windows-1252 }
/// steps:
///   - map:
///       codice_fiscale: upper(trim(codice_fiscale))
///   - validate:
///       codice_fiscale: { codice_fiscale: true }
/// sink:
///   sql: { connection: store, table: assistito, key: [id_anagrafica] }
/// on_error: { reject_limit: 5%, then: fail }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct PipelineFile<S, K> {
    /// Unique name of the pipeline (letters, digits, `-`, `_`, `.`). Checkpoints and the
    /// flow log are keyed by it: renaming a pipeline starts it from scratch.
    pub pipeline: String,
    /// What the pipeline does, for people reading `snodo runs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where records come from (exactly one connector).
    pub source: S,
    /// Transformations applied in order to every record.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Where records go (exactly one connector).
    pub sink: K,
    /// What to do with records that fail a step.
    #[serde(default)]
    pub on_error: OnError,
    /// Fields that hold personal data (names, addresses, phone numbers): their values are
    /// masked in rejects and logs. Codici fiscali and IBANs are masked wherever they appear,
    /// listed here or not.
    #[serde(default)]
    pub personal: Vec<String>,
    /// Records per batch (default 2000). A batch is the unit of commit and checkpoint.
    /// About ten batches are in flight between the source, the steps and the sink, so
    /// memory grows with this size and the width of the records: a bulk load of a
    /// 17-column registry into PostgreSQL ran about 10 % faster with 4000 at 86 MB instead
    /// of 60 MB (docs/benchmarks.md); the SIUSS pipelines, with about 90 fields a record,
    /// set 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Threads that run the steps, each on whole batches in turn, their output put back in
    /// the source's order (default: one fewer than the machine's cores, at least one, at
    /// most four). The source, the sink and often the database share the cores with them:
    /// on two cores one step worker loaded 1M CSV rows into PostgreSQL, and wrote the
    /// PS/PSA flow, with less CPU and memory than two (docs/benchmarks.md). More help a dry
    /// run, or steps that cost much more than reading and writing. A pipeline with an
    /// `aggregate` step always runs its steps on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub workers: Option<usize>,
    /// A pre-submission report in Italian, written after every run (dry runs too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::report::ReportConfig>,
    /// Variables read by expressions as `param("name")`, e.g. the reference year of a
    /// survey; `snodo run --var anno=2024` overrides them for one run.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub vars: IndexMap<String, String>,
}

/// One transformation step. Each list item has exactly one key, the step kind.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename = "step", rename_all = "snake_case")]
pub enum StepConfig {
    /// Sets fields from expressions: `field: expression`. Every expression sees the record
    /// as it entered the step (like SQL `SELECT`), so the order of the keys does not matter.
    /// A failing expression (e.g. `date("31/02/1980", "%d/%m/%Y")`) rejects the record.
    ///
    /// ```yaml
    /// - map:
    ///     codice_fiscale: upper(trim(codice_fiscale))
    ///     data_nascita: date(data_nascita, "%d/%m/%Y")
    ///     isee: decimal_it(isee)
    /// ```
    Map(IndexMap<String, String>),
    /// Keeps the records for which the expression is `true`; the others are counted as
    /// filtered (not rejected). `filter: "is_null(data_decesso)"`.
    Filter(String),
    /// Checks fields against rules; a record breaking any rule is rejected with every
    /// broken rule in the reason.
    ///
    /// ```yaml
    /// - validate:
    ///     codice_fiscale: { required: true, codice_fiscale: true }
    ///     comune_nascita: { belfiore_at: data_nascita }
    ///     cap: { pattern: "^[0-9]{5}$" }
    /// ```
    Validate(IndexMap<String, FieldRule>),
    /// Translates a code through a code table (a CSV file in `mappings/`).
    Lookup(LookupConfig),
    /// Keeps only the listed fields, in this order (fields not present become null).
    Select(Vec<String>),
    /// Replaces an identifier with a stable, keyed pseudonym (HMAC-SHA-256 with a key of
    /// the connections file, base32). SINBA's `IDBeneficiario`:
    ///
    /// ```yaml
    /// - pseudonym: { field: codice_fiscale, into: id_beneficiario, key: sinba }
    /// ```
    Pseudonym(PseudonymConfig),
    /// Groups records and computes per group: counts, distinct counts and exact decimal
    /// sums. The input must be ordered by `group_by` (and, within a group, by the fields
    /// of `count_distinct`): a group is written when the next one starts, so memory does
    /// not depend on the input. A pipeline with an `aggregate` runs on one worker and is
    /// not resumed: an interrupted run starts over (its file output is discarded).
    ///
    /// ```yaml
    /// - aggregate:
    ///     group_by: [area_istat, servizio_istat]
    ///     count_distinct: { utenti: persona_id }
    ///     sum: { spesa: spesa_anno }
    /// ```
    Aggregate(AggregateConfig),
    /// The steps of another file (a YAML list of steps), in its place: for pipelines that
    /// share their transformations and differ in their sink. Paths are relative to the
    /// working directory; an included file cannot include others.
    ///
    /// ```yaml
    /// - include: pipelines/siuss/ps_psa.steps.yaml
    /// ```
    Include(String),
}

/// The `aggregate` step.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The fields that make a group (copied into the output record).
    pub group_by: Vec<String>,
    /// Output field → the number of records of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<String>,
    /// Output field → input field: the number of distinct values in the group (nulls not
    /// counted). Order the input by this field within each group.
    #[serde(default)]
    pub count_distinct: IndexMap<String, String>,
    /// Output field → input field: the exact sum of its numbers (nulls skipped; a value
    /// that is not a number rejects the record).
    #[serde(default)]
    pub sum: IndexMap<String, String>,
}

/// The `pseudonym` step.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PseudonymConfig {
    /// The identifier (e.g. `codice_fiscale`); trimmed and upper-cased first.
    pub field: String,
    /// The field that receives the pseudonym.
    pub into: String,
    /// The name of a key under `keys:` in the connections file (at least 16 characters).
    pub key: String,
    /// Characters of the pseudonym, 5 bits each (default 20: SINBA's maximum, 100 bits).
    #[serde(default = "pseudonym_length")]
    pub length: usize,
}

fn pseudonym_length() -> usize {
    20
}

impl StepConfig {
    /// The step kind as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            StepConfig::Map(_) => "map",
            StepConfig::Filter(_) => "filter",
            StepConfig::Validate(_) => "validate",
            StepConfig::Lookup(_) => "lookup",
            StepConfig::Select(_) => "select",
            StepConfig::Pseudonym(_) => "pseudonym",
            StepConfig::Include(_) => "include",
            StepConfig::Aggregate(_) => "aggregate",
        }
    }
}

/// Rules for one field of a `validate` step. All given rules are checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
pub struct FieldRule {
    /// The field must be present and not empty.
    #[serde(default)]
    pub required: bool,
    /// The value must have this type (convert it in a `map` step first: `date(...)`,
    /// `decimal_it(...)`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
    /// Minimum length in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    /// Maximum length in characters (e.g. the size of the target column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// A regular expression the whole value must match (anchor it with `^…$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The allowed values (a code list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    /// A code list file: the allowed values are the first column of this CSV (header
    /// skipped), e.g. `mappings/istat/cittadinanze.csv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_list: Option<String>,
    /// A personal codice fiscale (16 characters, check character, omocodia allowed) or a
    /// numeric one (11 digits).
    #[serde(default)]
    pub codice_fiscale: bool,
    /// A partita IVA (11 digits with check digit).
    #[serde(default)]
    pub partita_iva: bool,
    /// An IBAN (ISO 13616 check digits and country length).
    #[serde(default)]
    pub iban: bool,
    /// The smallest allowed value: a date (`1900-01-01`, or `today`) for date fields, a
    /// number for numeric ones. `data_nascita: { min: "1900-01-01", max: today }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    /// The largest allowed value, as for `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// The value (a date) must not be earlier than the date in the named field, when that
    /// field is set: `data_chiusura: { not_before: data_apertura }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// The value is a Belfiore code (comune or foreign state) that was valid at the date
    /// held in the named field (e.g. the birth date): comuni merge, split and change code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub belfiore_at: Option<String>,
}

/// A code-table lookup.
///
/// ```yaml
/// - lookup:
///     table: mappings/esempio/cittadinanza.csv
///     key: cittadinanza        # field of the record
///     into: cittadinanza_iso   # field to set
///     missing: reject
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct LookupConfig {
    /// The code table: a UTF-8 CSV file with a header.
    pub table: String,
    /// The record field holding the code to translate.
    pub key: String,
    /// The field to set with the translation.
    pub into: String,
    /// The table column matched against `key` (default: the first column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_column: Option<String>,
    /// The table column copied into `into` (default: the second column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_column: Option<String>,
    /// The table's field delimiter (default `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    /// What to do when the code is not in the table.
    #[serde(default)]
    pub missing: Missing,
}

/// What a lookup does with a code it cannot find.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// Reject the record (default: an unknown code is usually a data error).
    #[default]
    Reject,
    /// Set the target field to null.
    Null,
    /// Copy the code unchanged.
    Keep,
}

/// The reject policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
pub struct OnError {
    /// How many rejected records are tolerated: a count (`100`) or a percentage of the
    /// records read (`"0.5%"`). Default `0`: any reject breaks the policy.
    #[serde(default)]
    pub reject_limit: RejectLimit,
    /// What happens when the limit is exceeded: `fail` stops the run at once (what was
    /// committed stays committed and the next run resumes after it); `continue` loads all
    /// valid records and ends the run as failed.
    #[serde(default)]
    pub then: Then,
}

/// A reject limit as written: count or percentage.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RejectLimit {
    /// An absolute number of rejected records.
    Count(u64),
    /// A percentage such as `"0.5%"`, or a number written as text.
    Text(String),
}

impl Default for RejectLimit {
    fn default() -> Self {
        RejectLimit::Count(0)
    }
}

/// A parsed reject limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// At most this many rejects.
    Count(u64),
    /// At most this fraction (0.0–1.0) of the records read, in parts per million so that
    /// the comparison is exact integer arithmetic.
    PartsPerMillion(u64),
}

impl RejectLimit {
    /// Parses the limit.
    pub fn parse(&self) -> Result<Limit, String> {
        match self {
            RejectLimit::Count(n) => Ok(Limit::Count(*n)),
            RejectLimit::Text(t) => {
                let t = t.trim();
                if let Some(p) = t.strip_suffix('%') {
                    let d = crate::value::parse_decimal(p, crate::value::DecimalStyle::DOT)
                        .map_err(|_| format!("`{t}` is not a percentage like `0.5%`"))?;
                    let ppm = d * rust_decimal::Decimal::from(10_000);
                    if ppm.is_sign_negative() || ppm > rust_decimal::Decimal::from(1_000_000) {
                        return Err(format!("`{t}` must be between 0% and 100%"));
                    }
                    Ok(Limit::PartsPerMillion(
                        ppm.trunc().to_string().parse().unwrap_or(0),
                    ))
                } else {
                    t.parse::<u64>()
                        .map(Limit::Count)
                        .map_err(|_| format!("`{t}` is neither a count nor a percentage"))
                }
            }
        }
    }
}

impl fmt::Display for RejectLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectLimit::Count(n) => write!(f, "{n}"),
            RejectLimit::Text(t) => f.write_str(t),
        }
    }
}

impl Limit {
    /// True when `rejected` out of `read` breaks the limit. Percentages are judged only
    /// from `min_sample` records on, so that three bad rows at the top of a file of a
    /// million do not stop the run.
    pub fn exceeded(&self, rejected: u64, read: u64, min_sample: u64) -> bool {
        match *self {
            Limit::Count(n) => rejected > n,
            Limit::PartsPerMillion(ppm) => {
                read >= min_sample
                    && (rejected as u128) * 1_000_000 > (ppm as u128) * (read as u128)
            }
        }
    }
}

/// The action once the reject limit is exceeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    /// Stop the run.
    #[default]
    Fail,
    /// Keep loading valid records; the run ends as failed.
    Continue,
}

impl Check for StepConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        let engine = ExprEngine::new();
        let kind = self.kind();
        match self {
            StepConfig::Map(fields) => {
                if fields.is_empty() {
                    out.push(problem(
                        node,
                        path,
                        "`map` needs at least one `field: expression`",
                    ));
                }
                for (field, src) in fields {
                    if let Err(e) = engine.compile(src) {
                        let n = deepest(node, &[kind, field]);
                        out.push(problem(n, &format!("{path}.{kind}.{field}"), e));
                    }
                }
            }
            StepConfig::Filter(src) => {
                if let Err(e) = engine.compile(src) {
                    out.push(problem(
                        deepest(node, &[kind]),
                        &format!("{path}.{kind}"),
                        e,
                    ));
                }
            }
            StepConfig::Validate(rules) => {
                for (field, rule) in rules {
                    let n = deepest(node, &[kind, field]);
                    let p = format!("{path}.{kind}.{field}");
                    if let Some(re) = &rule.pattern
                        && let Err(e) = regex::Regex::new(re)
                    {
                        out.push(problem(
                            deepest(n, &["pattern"]),
                            &format!("{p}.pattern"),
                            format!("invalid regular expression: {e}"),
                        ));
                    }
                    if let Some(f) = &rule.code_list
                        && !Path::new(f).is_file()
                    {
                        out.push(problem(
                            deepest(n, &["code_list"]),
                            &format!("{p}.code_list"),
                            format!("code list `{f}` not found (paths are relative to the working directory)"),
                        ));
                    }
                    if let (Some(a), Some(b)) = (rule.min_length, rule.max_length)
                        && a > b
                    {
                        out.push(problem(n, &p, "min_length is greater than max_length"));
                    }
                }
            }
            StepConfig::Lookup(l) => {
                if !Path::new(&l.table).is_file() {
                    out.push(problem(
                        deepest(node, &[kind, "table"]),
                        &format!("{path}.{kind}.table"),
                        format!("code table `{}` not found (paths are relative to the working directory)", l.table),
                    ));
                }
                if let Some(d) = &l.delimiter
                    && d.len() != 1
                {
                    out.push(problem(
                        deepest(node, &[kind, "delimiter"]),
                        &format!("{path}.{kind}.delimiter"),
                        "the delimiter is one ASCII character",
                    ));
                }
            }
            StepConfig::Select(fields) => {
                if fields.is_empty() {
                    out.push(problem(node, path, "`select` needs at least one field"));
                }
            }
            // Expanded by the loader: a remaining one is reported there.
            StepConfig::Include(_) => {}
            StepConfig::Aggregate(a) => {
                if a.group_by.is_empty() {
                    out.push(problem(
                        deepest(node, &[kind, "group_by"]),
                        &format!("{path}.{kind}.group_by"),
                        "`group_by` needs at least one field",
                    ));
                }
                if a.count.is_none() && a.count_distinct.is_empty() && a.sum.is_empty() {
                    out.push(problem(
                        deepest(node, &[kind]),
                        &format!("{path}.{kind}"),
                        "an `aggregate` computes at least one of `count`, `count_distinct`, `sum`",
                    ));
                }
            }
            StepConfig::Pseudonym(p) => {
                if !(8..=52).contains(&p.length) {
                    out.push(problem(
                        deepest(node, &[kind, "length"]),
                        &format!("{path}.{kind}.length"),
                        "a pseudonym has between 8 and 52 characters (52 is the whole HMAC)",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_limits_parse_and_judge_exactly() {
        let l = RejectLimit::Text("0.5%".into()).parse().unwrap();
        assert_eq!(l, Limit::PartsPerMillion(5000));
        assert!(!l.exceeded(5, 1000, 100));
        assert!(l.exceeded(6, 1000, 100));
        assert!(
            !l.exceeded(6, 10, 100),
            "below the sample size a percentage does not trip"
        );
        assert!(RejectLimit::Count(0).parse().unwrap().exceeded(1, 1, 0));
        assert!(RejectLimit::Text("abc".into()).parse().is_err());
        assert!(RejectLimit::Text("150%".into()).parse().is_err());
    }
}
