use std::collections::HashMap;

use super::{Step, StepContext, config_error};
use crate::config::LookupConfig;
use crate::config::pipeline::Missing;
use crate::error::Result;
use crate::record::{Batch, OutputField, Record};
use crate::value::{Text, Value};

/// The `lookup` step: translates a code through a code table held in memory (code tables
/// are small: thousands of rows, not millions).
pub struct Lookup {
    label: String,
    key: String,
    into: OutputField,
    missing: Missing,
    table: HashMap<String, String>,
    ctx: StepContext,
}

impl Lookup {
    /// Loads the table.
    pub fn new(label: String, cfg: &LookupConfig, ctx: StepContext) -> Result<Self> {
        let at = format!("{label}.table");
        let delim = cfg
            .delimiter
            .as_deref()
            .unwrap_or(",")
            .as_bytes()
            .first()
            .copied()
            .unwrap_or(b',');
        let mut rdr = csv::ReaderBuilder::new()
            .delimiter(delim)
            .from_path(&cfg.table)
            .map_err(|e| config_error(&at, format!("`{}`: {e}", cfg.table)))?;
        let headers = rdr
            .headers()
            .map_err(|e| config_error(&at, format!("`{}`: {e}", cfg.table)))?
            .clone();
        let col = |name: &Option<String>, default: usize| -> Result<usize> {
            match name {
                None if headers.len() > default => Ok(default),
                None => Err(config_error(
                    &at,
                    format!("`{}` needs at least two columns", cfg.table),
                )),
                Some(n) => headers.iter().position(|h| h == n).ok_or_else(|| {
                    config_error(
                        &at,
                        format!(
                            "`{}` has no column `{n}` (columns: {})",
                            cfg.table,
                            headers.iter().collect::<Vec<_>>().join(", ")
                        ),
                    )
                }),
            }
        };
        let m = col(&cfg.match_column, 0)?;
        let v = col(&cfg.value_column, 1)?;
        let mut table = HashMap::new();
        for row in rdr.records() {
            let row = row.map_err(|e| config_error(&at, format!("`{}`: {e}", cfg.table)))?;
            if let (Some(k), Some(val)) = (row.get(m), row.get(v)) {
                table.insert(k.trim().to_string(), val.to_string());
            }
        }
        Ok(Lookup {
            label,
            key: cfg.key.clone(),
            into: OutputField::new(cfg.into.clone()),
            missing: cfg.missing,
            table,
            ctx,
        })
    }
}

impl Step for Lookup {
    fn label(&self) -> &str {
        &self.label
    }

    fn adds(&self) -> usize {
        1
    }

    fn apply(&mut self, mut records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        // In place, as `map` (see `crate::recycle`).
        crate::record::retain_prefetching(&mut records, |rec| {
            let code = rec.get(&self.key).and_then(Value::to_text);
            let found = code.as_deref().and_then(|c| self.table.get(c.trim()));
            let value = match (found, self.missing) {
                (Some(v), _) => Value::Str(Text::new(v)),
                (None, _) if code.is_none() => Value::Null,
                (None, Missing::Null) => Value::Null,
                (None, Missing::Keep) => Value::Str(code.unwrap_or_default().into()),
                (None, Missing::Reject) => {
                    let reason = format!(
                        "`{}` = `{}` is not in the code table",
                        self.key,
                        crate::mask::redact_text(code.as_deref().unwrap_or(""))
                    );
                    batch.rejects.push(self.ctx.reject(
                        &self.label,
                        format!("lookup.{}", self.key),
                        reason,
                        rec,
                    ));
                    return false;
                }
            };
            self.into.set(rec, value);
            true
        });
        records
    }
}
