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
            .collect::<Result<_>>()?;
        Ok(Map {
            label,
            targets,
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
            let mut results = Vec::with_capacity(self.targets.len());
            let mut failure = None;
            for (field, expr) in &self.targets {
                match self.ctx.engine.eval(expr, &mut scope) {
                    Ok(v) => results.push(v),
                    Err(e) => {
                        failure = Some((field.clone(), e));
                        break;
                    }
                }
            }
            if let Some((field, e)) = failure {
                let reason = format!(
                    "field `{field}` = `{}`: {e}",
                    expr_src(&self.targets, &field)
                );
                batch.rejects.push(self.ctx.reject(
                    &self.label,
                    format!("map.{field}"),
                    reason,
                    &rec,
                ));
                continue;
            }
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

fn expr_src<'a>(targets: &'a [(String, Expr)], field: &str) -> &'a str {
    targets
        .iter()
        .find(|(f, _)| f == field)
        .map(|(_, e)| e.source())
        .unwrap_or("")
}
