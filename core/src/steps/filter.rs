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

    fn apply(&mut self, records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        let mut out = Vec::with_capacity(records.len());
        for rec in records {
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
                    let mut scope = self.ctx.engine.scope_with(&rec, used);
                    self.ctx.engine.eval(&self.expr, &mut scope)
                }
            };
            match result {
                Ok(Value::Bool(true)) => out.push(rec),
                Ok(Value::Bool(false)) | Ok(Value::Null) => batch.filtered += 1,
                Ok(other) => {
                    let reason = format!(
                        "filter `{}` returned a {} instead of true/false",
                        self.expr.source(),
                        other.type_name()
                    );
                    batch
                        .rejects
                        .push(self.ctx.reject(&self.label, "filter".into(), reason, &rec));
                }
                Err(e) => {
                    let reason = format!("filter `{}`: {e}", self.expr.source());
                    batch
                        .rejects
                        .push(self.ctx.reject(&self.label, "filter".into(), reason, &rec));
                }
            }
        }
        out
    }
}
