use std::sync::Arc;

use super::Step;
use crate::record::{Batch, Record, Schema};
use crate::value::Value;

/// The `select` step: keeps the listed fields, in order.
pub struct Select {
    label: String,
    fields: Vec<String>,
    out_schema: Arc<Schema>,
    cache: Option<(Arc<Schema>, Vec<Option<usize>>)>,
}

impl Select {
    /// Builds the step.
    pub fn new(label: String, fields: &[String]) -> Self {
        Select {
            label,
            fields: fields.to_vec(),
            out_schema: Schema::new(fields.to_vec()),
            cache: None,
        }
    }
}

impl Step for Select {
    fn label(&self) -> &str {
        &self.label
    }

    fn apply(&mut self, records: Vec<Record>, _batch: &mut Batch) -> Vec<Record> {
        records
            .into_iter()
            .map(|mut rec| {
                let idx = match &self.cache {
                    Some((s, idx)) if Arc::ptr_eq(s, &rec.schema) => idx.clone(),
                    _ => {
                        let idx: Vec<_> =
                            self.fields.iter().map(|f| rec.schema.index_of(f)).collect();
                        self.cache = Some((rec.schema.clone(), idx.clone()));
                        idx
                    }
                };
                let values = idx
                    .iter()
                    .map(|i| {
                        i.map(|i| std::mem::take(&mut rec.values[i]))
                            .unwrap_or(Value::Null)
                    })
                    .collect();
                Record {
                    schema: self.out_schema.clone(),
                    values,
                    position: rec.position,
                }
            })
            .collect()
    }
}
