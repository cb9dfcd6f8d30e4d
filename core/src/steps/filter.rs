use super::{Step, StepContext, config_error};
use crate::error::Result;
use crate::expr::{Expr, Native};
use crate::record::{Batch, Record};
use crate::value::Value;

/// The `filter` step: keeps records for which the expression is true.
pub struct Filter {
    label: String,
    expr: Expr,
    ctx: StepContext,
    /// For the last input schema seen: the fields the condition reads, and its native form.
    used: Option<(
        std::sync::Arc<crate::record::Schema>,
        Vec<usize>,
        Option<Native>,
    )>,
}

impl Filter {
    /// Compiles the condition.
    pub fn new(label: String, src: &str, ctx: StepContext) -> Result<Self> {
        let expr = ctx
            .engine
            .compile(src)
            .map_err(|e| config_error(&label, e))?;
        Ok(Filter {
            label,
            expr,
            ctx,
            used: None,
        })
    }
}

impl Step for Filter {
    fn label(&self) -> &str {
        &self.label
    }

    fn apply(&mut self, mut records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        // In place, as `map` (see `crate::recycle`).
        crate::record::retain_prefetching(&mut records, |rec| {
            let (_, used, native) = match &mut self.used {
                Some(p) if std::sync::Arc::ptr_eq(&p.0, &rec.schema) => p,
                slot => {
                    let used = crate::expr::referenced_fields(&[self.expr.source()], &rec.schema);
                    let native = Native::for_schema(&self.expr, &rec.schema);
                    slot.insert((rec.schema.clone(), used, native))
                }
            };
            let result = match native.as_ref().and_then(|n| n.eval(&rec.values)) {
                Some(v) => Ok(v),
                None => {
                    let mut scope = self.ctx.engine.scope_with(rec, used);
                    self.ctx.engine.eval(&self.expr, &mut scope)
                }
            };
            match result {
                Ok(Value::Bool(true)) => return true,
                Ok(Value::Bool(false)) | Ok(Value::Null) => batch.filtered += 1,
                Ok(other) => {
                    let reason = format!(
                        "filter `{}` returned a {} instead of true/false",
                        self.expr.source(),
                        other.type_name()
                    );
                    batch
                        .rejects
                        .push(self.ctx.reject(&self.label, "filter".into(), reason, rec));
                }
                Err(e) => {
                    let reason = format!("filter `{}`: {e}", self.expr.source());
                    batch
                        .rejects
                        .push(self.ctx.reject(&self.label, "filter".into(), reason, rec));
                }
            }
            false
        });
        records
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::expr::ExprEngine;
    use crate::record::{Schema, SourcePosition};

    /// A condition evaluated natively keeps, drops and rejects exactly as the step's rules
    /// say: true keeps, false and null drop, anything else is a reject naming the type;
    /// a date compared with text is simply not equal, as in Rhai.
    #[test]
    fn conditions_keep_drop_and_reject_by_their_value() {
        let ctx = StepContext::new(Arc::new(ExprEngine::new()), vec![]);
        let src = "if is_null(attivo) { () } else if attivo == \"x\" { 7 } else { eta >= 18 && attivo != \"no\" }";
        let mut filter = Filter::new("steps[0].filter".into(), src, ctx).unwrap();
        let schema = Schema::new(vec!["eta".into(), "attivo".into()]);
        assert!(Native::for_schema(&filter.expr, &schema).is_some());
        let date = Value::Date(chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap());
        let rows = [
            (Value::Int(30), Value::Str("si".into())), // kept
            (Value::Int(12), Value::Str("si".into())), // false: dropped
            (Value::Int(30), Value::Str("no".into())), // false: dropped
            (Value::Int(30), Value::Null),             // null: dropped
            (Value::Int(30), Value::Str("x".into())),  // 7: rejected
            (Value::Int(40), date),                    // a date != "no": kept
        ];
        let records: Vec<Record> = rows
            .into_iter()
            .enumerate()
            .map(|(i, (eta, attivo))| Record {
                schema: schema.clone(),
                values: vec![eta, attivo],
                position: SourcePosition {
                    record: i as u64 + 1,
                    ..SourcePosition::default()
                },
            })
            .collect();
        let mut batch = Batch::default();
        let kept = filter.apply(records, &mut batch);
        let kept: Vec<u64> = kept.iter().map(|r| r.position.record).collect();
        assert_eq!(kept, vec![1, 6]);
        assert_eq!(batch.filtered, 3);
        assert_eq!(batch.rejects.len(), 1);
        assert_eq!(batch.rejects[0].position.record, 5);
        assert!(
            batch.rejects[0].reason.contains("instead of true/false"),
            "{}",
            batch.rejects[0].reason
        );
    }
}
