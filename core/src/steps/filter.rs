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
    used: Option<(std::sync::Arc<crate::record::Schema>, Vec<usize>)>,
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
            let used = match &self.used {
                Some((s, u)) if std::sync::Arc::ptr_eq(s, &rec.schema) => u.clone(),
                _ => {
                    let u = crate::expr::referenced_fields(&[self.expr.source()], &rec.schema);
                    self.used = Some((rec.schema.clone(), u.clone()));
                    u
                }
            };
            let mut scope = self.ctx.engine.scope_with(&rec, &used);
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
