use std::sync::Arc;

use indexmap::IndexMap;

use super::{Step, StepContext, config_error};
use crate::error::Result;
use crate::expr::Expr;
use crate::record::{Batch, Record, Schema};

/// The `map` step: sets fields from expressions.
pub struct Map {
    label: String,
    targets: Vec<(String, Expr)>,
    /// All expressions as one array expression: one evaluation per record instead of one
    /// per field (Rhai's per-call set-up dominated the step). The individual expressions
    /// are kept to name the failing field when a record is rejected.
    combined: Expr,
    ctx: StepContext,
    /// The output schema for the last input schema seen: sources emit one schema per run,
    /// so this is computed once, not once per record.
    cache: Option<Layout>,
}

/// For one input schema: the output schema, where each target goes, and which input
/// fields the expressions read.
type Layout = (Arc<Schema>, Arc<Schema>, Vec<usize>, Vec<usize>);

impl Map {
    /// Compiles the expressions.
    pub fn new(label: String, fields: &IndexMap<String, String>, ctx: StepContext) -> Result<Self> {
        let targets = fields
            .iter()
            .map(|(f, src)| {
                ctx.engine
                    .compile(src)
                    .map(|e| (f.clone(), e))
                    .map_err(|e| config_error(&format!("{label}.{f}"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let joined = targets
            .iter()
            .map(|(_, e)| format!("({})", e.source()))
            .collect::<Vec<_>>()
            .join(", ");
        let combined = ctx
            .engine
            .compile(&format!("[{joined}]"))
            .map_err(|e| config_error(&label, e))?;
        Ok(Map {
            label,
            targets,
            combined,
            ctx,
            cache: None,
        })
    }

    /// Output schema, target positions and the input fields the expressions read.
    fn layout(&mut self, input: &Arc<Schema>) -> (Arc<Schema>, Vec<usize>, Vec<usize>) {
        if let Some((i, o, idx, used)) = &self.cache
            && Arc::ptr_eq(i, input)
        {
            return (o.clone(), idx.clone(), used.clone());
        }
        let mut names = input.names().to_vec();
        let mut idx = Vec::with_capacity(self.targets.len());
        for (f, _) in &self.targets {
            match names.iter().position(|n| n == f) {
                Some(p) => idx.push(p),
                None => {
                    names.push(f.clone());
                    idx.push(names.len() - 1);
                }
            }
        }
        let out = Schema::new(names);
        let sources: Vec<&str> = self.targets.iter().map(|(_, e)| e.source()).collect();
        let used = crate::expr::referenced_fields(&sources, input);
        self.cache = Some((input.clone(), out.clone(), idx.clone(), used.clone()));
        (out, idx, used)
    }
}

impl Step for Map {
    fn label(&self) -> &str {
        &self.label
    }

    fn apply(&mut self, records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        let mut out = Vec::with_capacity(records.len());
        for mut rec in records {
            let (schema, idx, used) = self.layout(&rec.schema);
            let mut scope = self.ctx.engine.scope_with(&rec, &used);
            let results = match self.ctx.engine.eval(&self.combined, &mut scope) {
                Ok(crate::value::Value::List(values)) if values.len() == self.targets.len() => {
                    values
                }
                _ => {
                    // Find the failing field by evaluating one expression at a time.
                    let mut failure = None;
                    for (field, expr) in &self.targets {
                        let mut scope = self.ctx.engine.scope_with(&rec, &used);
                        if let Err(e) = self.ctx.engine.eval(expr, &mut scope) {
                            failure = Some((field.clone(), expr.source().to_string(), e));
                            break;
                        }
                    }
                    let (field, src, e) = failure.unwrap_or_else(|| {
                        (
                            String::new(),
                            self.combined.source().to_string(),
                            "the expressions did not produce one value per field".into(),
                        )
                    });
                    let reason = format!("field `{field}` = `{src}`: {e}");
                    batch.rejects.push(self.ctx.reject(
                        &self.label,
                        format!("map.{field}"),
                        reason,
                        &rec,
                    ));
                    continue;
                }
            };
            rec.values.resize(schema.len(), crate::value::Value::Null);
            for (i, v) in idx.iter().zip(results) {
                rec.values[*i] = v;
            }
            rec.schema = schema;
            out.push(rec);
        }
        out
    }
}
