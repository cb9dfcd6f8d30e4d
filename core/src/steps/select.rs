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
                // Moved out rather than cloned; a field listed twice is cloned from the
                // copy already taken.
                let mut values: Vec<Value> = Vec::with_capacity(idx.len());
                for (k, i) in idx.iter().enumerate() {
                    let v = match i {
                        Some(i) => match idx[..k].iter().position(|j| j == &Some(*i)) {
                            Some(first) => values[first].clone(),
                            None => std::mem::take(&mut rec.values[*i]),
                        },
                        None => Value::Null,
                    };
                    values.push(v);
                }
                Record {
                    schema: self.out_schema.clone(),
                    values,
                    position: rec.position,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SourcePosition;

    #[test]
    fn selects_in_order_with_missing_and_repeated_fields() {
        let rec = Record {
            schema: Schema::new(vec!["a".into(), "b".into()]),
            values: vec![Value::Int(1), Value::Str("x".into())],
            position: SourcePosition::default(),
        };
        let mut step = Select::new(
            "steps[0].select".into(),
            &["b".into(), "zz".into(), "b".into(), "a".into()],
        );
        let out = step.apply(vec![rec], &mut Batch::default());
        assert_eq!(
            out[0].values,
            vec![
                Value::Str("x".into()),
                Value::Null,
                Value::Str("x".into()),
                Value::Int(1)
            ]
        );
        assert_eq!(out[0].schema.names(), &["b", "zz", "b", "a"]);
    }
}
