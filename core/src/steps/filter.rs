use super::{Step, StepContext, config_error};
use crate::error::Result;
use crate::expr::Expr;
use crate::record::{Batch, Record};
use crate::value::Value;

/// The `filter` step: keeps records for which the expression is true.
pub struct Filter {
    label: String,
    expr: Expr,
    ctx: StepContext,
}

impl Filter {
    /// Compiles the condition.
    pub fn new(label: String, src: &str, ctx: StepContext) -> Result<Self> {
        let expr = ctx.engine.compile(src).map_err(|e| config_error(&label, e))?;
        Ok(Filter { label, expr, ctx })
    }
}

impl Step for Filter {
    fn label(&self) -> &str {
        &self.label
    }

    fn apply(&mut self, records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        let mut out = Vec::with_capacity(records.len());
        for rec in records {
            let mut scope = self.ctx.engine.scope_for(&rec);
            match self.ctx.engine.eval(&self.expr, &mut scope) {
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
