//! The first step of every table load: stamps the legacy row with the trace columns every
//! canonical row carries (`ente`, `source_system`, `source_key`, `loaded_by_run`).
//!
//! It is a native step rather than a `map` expression because `source_key` must be
//! byte-for-byte the text the reconciliation report computes from the legacy table:
//! both use [`source_key`] on the same [`Value`]s.

use std::sync::Arc;

use snodo_core::record::{Batch, Record, Schema};
use snodo_core::steps::{Step, StepContext};
use snodo_core::value::Value;

/// The canonical `source_key` of a legacy row: its key values joined by `|`, after an
/// optional prefix.
pub fn source_key<'a>(prefix: Option<&str>, values: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    if let Some(p) = prefix {
        out.push_str(p);
        out.push('|');
    }
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        out.push_str(&v.to_text().unwrap_or_default());
    }
    out
}

/// Turns the key of a reject's source position (`id_pic=3,id_operatore=7`, as the SQL
/// source writes it) back into a `source_key`.
pub fn key_from_position(prefix: Option<&str>, position_key: &str) -> String {
    let values: Vec<Value> = position_key
        .split(',')
        .map(|part| Value::Str(part.split_once('=').map(|(_, v)| v).unwrap_or(part).into()))
        .collect();
    source_key(prefix, &values)
}

/// The trace step.
pub struct Trace {
    label: String,
    key: Vec<String>,
    prefix: Option<String>,
    constants: [Value; 3],
    ctx: StepContext,
    cache: Option<(Arc<Schema>, Arc<Schema>, Vec<usize>)>,
}

impl Trace {
    /// A trace step for rows of a table keyed by `key`.
    pub fn new(
        key: Vec<String>,
        prefix: Option<String>,
        ente: &str,
        source_system: &str,
        run_id: &str,
        ctx: StepContext,
    ) -> Trace {
        Trace {
            label: "trace".into(),
            key,
            prefix,
            constants: [
                Value::Str(ente.into()),
                Value::Str(source_system.into()),
                Value::Str(run_id.into()),
            ],
            ctx,
            cache: None,
        }
    }
}

impl Step for Trace {
    fn label(&self) -> &str {
        &self.label
    }

    fn apply(&mut self, records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        let mut out = Vec::with_capacity(records.len());
        for mut rec in records {
            let fresh = !matches!(&self.cache, Some((i, _, _)) if Arc::ptr_eq(i, &rec.schema));
            if fresh {
                let mut names = rec.schema.names().to_vec();
                let idx = self
                    .key
                    .iter()
                    .map(|k| rec.schema.index_of(k).unwrap_or(usize::MAX))
                    .collect();
                names.extend(
                    ["ente", "source_system", "source_key", "loaded_by_run"].map(String::from),
                );
                self.cache = Some((rec.schema.clone(), Schema::new(names), idx));
            }
            let Some((_, schema, idx)) = &self.cache else {
                continue;
            };
            if let Some(missing) = idx.iter().position(|&i| i == usize::MAX) {
                let reason = format!(
                    "the legacy row has no key column `{}`; columns: {}",
                    self.key[missing],
                    rec.schema.names().join(", ")
                );
                batch.rejects.push(
                    self.ctx
                        .reject(&self.label, "trace.key".into(), reason, &rec),
                );
                continue;
            }
            if let Some(null) = idx.iter().position(|&i| rec.values[i].is_missing()) {
                let reason = format!("the key column `{}` is empty", self.key[null]);
                batch.rejects.push(
                    self.ctx
                        .reject(&self.label, "trace.key".into(), reason, &rec),
                );
                continue;
            }
            let key = source_key(self.prefix.as_deref(), idx.iter().map(|&i| &rec.values[i]));
            let [ente, system, run] = &self.constants;
            rec.values.extend([
                ente.clone(),
                system.clone(),
                Value::Str(key.into()),
                run.clone(),
            ]);
            rec.schema = schema.clone();
            out.push(rec);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snodo_core::expr::ExprEngine;
    use snodo_core::record::SourcePosition;

    fn ctx() -> StepContext {
        StepContext::new(Arc::new(ExprEngine::new()), Vec::new())
    }

    #[test]
    fn keys_join_with_a_bar_and_round_trip_through_reject_positions() {
        let vals = [Value::Int(3), Value::Str("2020-01-01".into())];
        assert_eq!(source_key(None, &vals), "3|2020-01-01");
        assert_eq!(
            source_key(Some("richiesta"), &[Value::Str("ECO".into())]),
            "richiesta|ECO"
        );
        assert_eq!(
            key_from_position(None, "id_pic=3,data_inizio=2020-01-01"),
            "3|2020-01-01"
        );
        assert_eq!(
            key_from_position(Some("problema"), "cod=ECO"),
            "problema|ECO"
        );
    }

    #[test]
    fn rows_get_trace_columns_and_rows_without_key_are_rejected() {
        let mut t = Trace::new(vec!["id".into()], None, "GE", "WD", "run-1", ctx());
        let schema = Schema::new(vec!["id".into(), "nome".into()]);
        let row = |id: Value| Record {
            schema: schema.clone(),
            values: vec![id, Value::Str("x".into())],
            position: SourcePosition::default(),
        };
        let mut batch = Batch::default();
        let out = t.apply(vec![row(Value::Int(7)), row(Value::Null)], &mut batch);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].get("source_key"), Some(&Value::Str("7".into())));
        assert_eq!(out[0].get("ente"), Some(&Value::Str("GE".into())));
        assert_eq!(
            out[0].get("loaded_by_run"),
            Some(&Value::Str("run-1".into()))
        );
        assert_eq!(batch.rejects.len(), 1);
        assert_eq!(batch.rejects[0].code, "trace.key");
    }
}
