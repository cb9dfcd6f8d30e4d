use std::sync::Arc;

use indexmap::IndexMap;

use super::{Step, StepContext, config_error};
use crate::error::Result;
use crate::expr::{Expr, Native};
use crate::record::{Batch, Record, Schema};
use crate::value::Value;

/// The `map` step: sets fields from expressions.
pub struct Map {
    label: String,
    targets: Vec<Target>,
    /// All expressions as one array expression: one evaluation per record instead of one
    /// per field (Rhai's per-call set-up dominated the step). The individual expressions
    /// are kept to name the failing field when a record is rejected.
    combined: Expr,
    ctx: StepContext,
    /// The layout for the last input schema seen: sources emit one schema per run, so this
    /// is computed once, not once per record.
    cache: Option<Arc<Layout>>,
    /// The values of one record when every expression is native, kept across records: a
    /// vector allocated and freed per record was 2 % of the CSV benchmark's instructions.
    scratch: Vec<Value>,
}

/// One `field: expression` of the step.
struct Target {
    field: String,
    expr: Expr,
}

/// Where things are for one input schema.
struct Layout {
    input: Arc<Schema>,
    output: Arc<Schema>,
    /// Output position of each target.
    positions: Vec<usize>,
    /// The input fields the expressions read (the Rhai scope).
    used: Vec<usize>,
    /// Each target's native form (`None`: Rhai evaluates it).
    natives: Vec<Option<Native>>,
    /// The expressions without a native form as one array expression, and the fields they
    /// read (`None` when every expression is native).
    rest: Option<(Expr, Vec<usize>)>,
    /// Whether the natives and `rest` together give every value; if not, Rhai evaluates
    /// every record.
    split: bool,
}

impl Map {
    /// Compiles the expressions.
    pub fn new(label: String, fields: &IndexMap<String, String>, ctx: StepContext) -> Result<Self> {
        let targets = fields
            .iter()
            .map(|(f, src)| {
                ctx.engine
                    .compile(src)
                    .map(|expr| Target {
                        field: f.clone(),
                        expr,
                    })
                    .map_err(|e| config_error(&format!("{label}.{f}"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let combined = array(&ctx, &label, targets.iter().map(|t| &t.expr))?;
        Ok(Map {
            label,
            targets,
            combined,
            ctx,
            cache: None,
            scratch: Vec::new(),
        })
    }

    fn layout(&mut self, input: &Arc<Schema>) -> Arc<Layout> {
        if let Some(l) = &self.cache
            && Arc::ptr_eq(&l.input, input)
        {
            return l.clone();
        }
        let mut names = input.names().to_vec();
        let mut positions = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            match names.iter().position(|n| *n == t.field) {
                Some(p) => positions.push(p),
                None => {
                    names.push(t.field.clone());
                    positions.push(names.len() - 1);
                }
            }
        }
        let natives: Vec<Option<Native>> = self
            .targets
            .iter()
            .map(|t| Native::for_schema(&t.expr, input))
            .collect();
        let others: Vec<&Expr> = self
            .targets
            .iter()
            .zip(&natives)
            .filter(|(_, n)| n.is_none())
            .map(|(t, _)| &t.expr)
            .collect();
        // Every expression compiled alone and all together when the step was built, so
        // this cannot fail; if it did, the step would evaluate every record with Rhai.
        let rest = if others.is_empty() {
            None
        } else {
            let sources: Vec<&str> = others.iter().map(|e| e.source()).collect();
            let used = crate::expr::referenced_fields(&sources, input);
            array(&self.ctx, &self.label, others.into_iter())
                .ok()
                .map(|e| (e, used))
        };
        let sources: Vec<&str> = self.targets.iter().map(|t| t.expr.source()).collect();
        let layout = Arc::new(Layout {
            input: input.clone(),
            output: Schema::new(names),
            positions,
            used: crate::expr::referenced_fields(&sources, input),
            split: rest.is_some() || natives.iter().all(Option::is_some),
            natives,
            rest,
        });
        self.cache = Some(layout.clone());
        layout
    }

    /// One value per target, or `None` when an expression fails.
    fn evaluate(&self, rec: &Record, layout: &Layout) -> Option<Vec<Value>> {
        if layout.split
            && let Some(mut values) = self.native(rec, layout)
        {
            if let Some((rest, used)) = &layout.rest {
                let mut scope = self.ctx.engine.scope_with(rec, used);
                let Ok(Value::List(computed)) = self.ctx.engine.eval(rest, &mut scope) else {
                    return None;
                };
                let slots = values.iter_mut().filter(|v| v.is_none());
                let mut filled = 0;
                for (slot, v) in slots.zip(computed) {
                    *slot = Some(v);
                    filled += 1;
                }
                if filled != layout.natives.iter().filter(|n| n.is_none()).count() {
                    return None;
                }
            }
            return values.into_iter().collect();
        }
        let mut scope = self.ctx.engine.scope_with(rec, &layout.used);
        match self.ctx.engine.eval(&self.combined, &mut scope) {
            Ok(Value::List(values)) if values.len() == self.targets.len() => Some(values),
            _ => None,
        }
    }

    /// The native expressions' values (`None` in the places of the others), or `None` when
    /// one of them steps aside for this record: Rhai then evaluates the whole record.
    fn native(&self, rec: &Record, layout: &Layout) -> Option<Vec<Option<Value>>> {
        layout
            .natives
            .iter()
            .map(|n| match n {
                None => Some(None),
                Some(n) => n.eval(&rec.values).map(Some),
            })
            .collect()
    }
}

/// The expressions as one Rhai array expression.
fn array<'a>(
    ctx: &StepContext,
    label: &str,
    exprs: impl Iterator<Item = &'a Expr>,
) -> Result<Expr> {
    let joined: Vec<String> = exprs.map(|e| format!("({})", e.source())).collect();
    ctx.engine
        .compile(&format!("[{}]", joined.join(", ")))
        .map_err(|e| config_error(label, e))
}

impl Step for Map {
    fn label(&self) -> &str {
        &self.label
    }

    fn adds(&self) -> usize {
        self.targets.len()
    }

    fn apply(&mut self, mut records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        // In place: a new vector per step and batch was fresh memory for each (see
        // `crate::recycle`).
        crate::record::retain_prefetching(&mut records, |rec| self.apply_one(rec, batch));
        records
    }
}

impl Map {
    /// Computes `rec`'s fields; `false` when it was rejected (pushed to `batch`).
    fn apply_one(&mut self, rec: &mut Record, batch: &mut Batch) -> bool {
        let layout = self.layout(&rec.schema);
        if layout.split && layout.rest.is_none() {
            self.scratch.clear();
            let all = layout.natives.iter().all(|n| {
                n.as_ref()
                    .and_then(|n| n.eval(&rec.values))
                    .map(|v| self.scratch.push(v))
                    .is_some()
            });
            if all {
                fill(rec, &layout, self.scratch.drain(..));
                return true;
            }
            // A native expression stepped aside: Rhai evaluates the record below.
        }
        let Some(results) = self.evaluate(rec, &layout) else {
            // Find the failing field by evaluating one expression at a time.
            let mut failure = None;
            for t in &self.targets {
                let mut scope = self.ctx.engine.scope_with(rec, &layout.used);
                if let Err(e) = self.ctx.engine.eval(&t.expr, &mut scope) {
                    failure = Some((t.field.clone(), t.expr.source().to_string(), e));
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
            batch.rejects.push(
                self.ctx
                    .reject(&self.label, format!("map.{field}"), reason, rec),
            );
            return false;
        };
        fill(rec, &layout, results);
        true
    }
}

/// Puts one value per target into the record at the layout's positions and gives it the
/// output schema.
fn fill(rec: &mut Record, layout: &Layout, values: impl IntoIterator<Item = Value>) {
    rec.values.resize(layout.output.len(), Value::Null);
    for (i, v) in layout.positions.iter().zip(values) {
        rec.values[*i] = v;
    }
    rec.schema = layout.output.clone();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::ExprEngine;
    use crate::record::SourcePosition;
    use chrono::NaiveDate;

    /// A step whose expressions are all native fills each record with its own values,
    /// also after a record for which one of them stepped aside half way (a text function
    /// on a list) and Rhai took over.
    #[test]
    fn an_all_native_step_keeps_no_value_from_the_record_before() {
        let fields: IndexMap<String, String> = [("a", "upper(x)"), ("b", "upper(y)")]
            .into_iter()
            .map(|(f, e)| (f.to_string(), e.to_string()))
            .collect();
        let ctx = StepContext::new(Arc::new(ExprEngine::new()), vec![]);
        let mut map = Map::new("steps[0].map".into(), &fields, ctx).unwrap();
        let schema = Schema::new(vec!["x".into(), "y".into()]);
        let record = |x: Value, y: Value| Record {
            schema: schema.clone(),
            values: vec![x, y],
            position: SourcePosition::default(),
        };
        let batch_in = vec![
            record(Value::Str("ab".into()), Value::List(vec![Value::Int(1)])),
            record(Value::Str("cd".into()), Value::Str("ef".into())),
            record(Value::Str("gh".into()), Value::Str("ij".into())),
        ];
        let mut batch = Batch::default();
        let out = map.apply(batch_in, &mut batch);
        let last_two: Vec<(String, String)> = out
            .iter()
            .rev()
            .take(2)
            .map(|r| {
                let text = |f: &str| r.get(f).and_then(Value::to_text).unwrap_or_default();
                (text("a"), text("b"))
            })
            .collect();
        assert_eq!(
            last_two,
            [("GH".into(), "IJ".into()), ("CD".into(), "EF".into())]
        );
    }

    /// A step whose expressions are partly native and partly Rhai's gives exactly what Rhai
    /// gives, on every kind of value, each expression alone and all in one record, and a
    /// record Rhai fails on is still rejected. (`expr::native`'s own test compares the
    /// native results one by one.)
    #[test]
    fn native_and_rhai_expressions_fill_one_record_as_rhai_would() {
        let natives = [
            "upper(collapse_spaces(nome))",
            "lower( trim (nome) )",
            "norm_name(nome)",
            "text(nome)",
            "upper(trim(lower(nome)))",
            "trim(nome_completo)",
            "as_date(nome)",
            "as_datetime( nome )",
            "as_decimal(nome)",
            "as_decimal(trim(nome))",
            "upper(as_date(nome))",
            "upper(nome) + trim(nome)",
            "upper((nome))",
            "nome",
            "if is_null(nome) { \"vuoto\" } else { upper(nome) }",
        ];
        let others = ["left(nome, 2)", "upper(true)", "upper(trim(nome), 1)"];
        let sources: Vec<&str> = natives.iter().chain(&others).copied().collect();
        let fields: IndexMap<String, String> = sources
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("out{i}"), s.to_string()))
            .collect();
        let engine = Arc::new(ExprEngine::new());
        let ctx = StepContext::new(engine.clone(), vec![]);
        let mut map = Map::new("steps[0].map".into(), &fields, ctx).unwrap();

        let values = [
            Value::Null,
            Value::Str(Default::default()),
            Value::Str("  d'Angelo   nicolò \t".into()),
            Value::Str("straße ǅ Ÿ".into()),
            Value::Str("\n".into()),
            Value::Str(" 28/02/2026 ".into()),
            Value::Str("2026-02-28 10:30:00".into()),
            Value::Str("1.234,56".into()),
            Value::Str("12.50".into()),
            Value::Str("31/02/2026".into()),
            Value::Int(-5),
            Value::Decimal("12.50".parse().unwrap()),
            Value::Date(NaiveDate::from_ymd_opt(2026, 2, 28).unwrap()),
            Value::Bool(true),
        ];
        let schema = Schema::new(vec!["nome".into(), "nome completo".into()]);
        let layout = map.layout(&schema);
        let (first, last) = layout.natives.split_at(natives.len());
        assert!(
            first.iter().all(Option::is_some),
            "the `natives` are native"
        );
        // `upper(true)` is folded into a constant by Rhai's optimiser, the others are not.
        assert_eq!(last.iter().filter(|n| n.is_none()).count(), 2);
        assert!(layout.rest.is_some() && layout.split);
        let mut compared = 0;
        for v in values {
            let rec = Record {
                schema: schema.clone(),
                values: vec![v.clone(), v.clone()],
                position: SourcePosition::default(),
            };
            let expected: Vec<std::result::Result<Value, String>> = sources
                .iter()
                .map(|src| {
                    let expr = engine.compile(src).unwrap();
                    engine.eval(&expr, &mut engine.scope_with(&rec, &[0, 1]))
                })
                .collect();
            // Each expression alone, so that one failing expression does not hide the
            // others' results.
            for (src, e) in sources.iter().zip(&expected) {
                let fields: IndexMap<String, String> =
                    [("out".to_string(), src.to_string())].into_iter().collect();
                let ctx = StepContext::new(engine.clone(), vec![]);
                let mut alone = Map::new("steps[0].map".into(), &fields, ctx).unwrap();
                let mut batch = Batch::default();
                let out = alone.apply(vec![rec.clone()], &mut batch);
                match e {
                    Ok(e) => {
                        assert_eq!(out.len(), 1, "`{src}` on {v:?}: {:?}", batch.rejects);
                        assert_eq!(out[0].get("out"), Some(e), "`{src}` on {v:?}");
                        compared += 1;
                    }
                    Err(_) => assert_eq!(batch.rejects.len(), 1, "`{src}` on {v:?}"),
                }
            }
            // All together: native expressions and Rhai fill their own fields of one record.
            let mut batch = Batch::default();
            let out = map.apply(vec![rec], &mut batch);
            if expected.iter().any(|e| e.is_err()) {
                assert!(out.is_empty(), "{v:?}: Rhai fails, the record is rejected");
                assert_eq!(batch.rejects.len(), 1, "{v:?}");
                continue;
            }
            assert_eq!(out.len(), 1, "{v:?}: {:?}", batch.rejects);
            for (i, e) in expected.into_iter().enumerate() {
                assert_eq!(
                    out[0].get(&format!("out{i}")),
                    Some(&e.unwrap()),
                    "`{}` on {v:?}",
                    sources[i]
                );
            }
        }
        assert!(compared > 150, "only {compared} results compared");
    }

    /// An expression on a field the record does not have is left to Rhai, whose reject names
    /// it.
    #[test]
    fn an_expression_on_an_unknown_field_is_rejected_by_name() {
        let fields: IndexMap<String, String> = [("a".to_string(), "upper(cognme)".to_string())]
            .into_iter()
            .collect();
        let ctx = StepContext::new(Arc::new(ExprEngine::new()), vec![]);
        let mut map = Map::new("steps[0].map".into(), &fields, ctx).unwrap();
        let rec = Record {
            schema: Schema::new(vec!["cognome".into()]),
            values: vec![Value::Str("rossi".into())],
            position: SourcePosition::default(),
        };
        let mut batch = Batch::default();
        assert!(map.apply(vec![rec], &mut batch).is_empty());
        let reason = &batch.rejects[0].reason;
        assert!(reason.contains("unknown field `cognme`"), "{reason}");
    }
}
