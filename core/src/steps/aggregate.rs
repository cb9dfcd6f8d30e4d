use std::collections::HashSet;
use std::sync::Arc;

use rust_decimal::Decimal;

use super::{Step, StepContext};
use crate::config::pipeline::AggregateConfig;
use crate::record::{Batch, Record, Schema, SourcePosition};
use crate::value::{DecimalStyle, Value, parse_decimal};

/// The group being accumulated.
struct Group {
    key: Vec<Value>,
    position: SourcePosition,
    count: u64,
    distinct: Vec<(u64, Option<Value>)>,
    sums: Vec<Decimal>,
}

/// The `aggregate` step: streams over input ordered by the group fields, so only the
/// current group is in memory; the names of groups already written are kept (a handful)
/// to catch input that is not ordered, which would otherwise split a group silently.
pub struct Aggregate {
    label: String,
    cfg: AggregateConfig,
    ctx: StepContext,
    out_schema: Arc<Schema>,
    current: Option<Group>,
    closed: HashSet<Vec<String>>,
    failed: Option<String>,
}

fn text_key(key: &[Value]) -> Vec<String> {
    key.iter()
        .map(|v| v.to_text().unwrap_or_default())
        .collect()
}

fn number(v: &Value) -> Result<Option<Decimal>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Int(i) => Ok(Some(Decimal::from(*i))),
        Value::Decimal(d) => Ok(Some(*d)),
        Value::Str(s) if s.trim().is_empty() => Ok(None),
        Value::Str(s) => parse_decimal(s, DecimalStyle::DOT).map(Some),
        other => Err(format!("a {} is not a number", other.type_name())),
    }
}

/// Orders values the way a keyset-paged source delivers them: numbers by value, text by
/// its bytes.
fn before(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Ok(Some(x)), Ok(Some(y))) if !matches!(a, Value::Str(_)) => x < y,
        _ => a.to_text().unwrap_or_default() < b.to_text().unwrap_or_default(),
    }
}

impl Aggregate {
    /// Builds the step.
    pub fn new(label: String, cfg: &AggregateConfig, ctx: StepContext) -> Self {
        let mut names = cfg.group_by.clone();
        names.extend(cfg.count.iter().cloned());
        names.extend(cfg.count_distinct.keys().cloned());
        names.extend(cfg.sum.keys().cloned());
        Aggregate {
            label,
            out_schema: Schema::new(names),
            cfg: cfg.clone(),
            ctx,
            current: None,
            closed: HashSet::new(),
            failed: None,
        }
    }

    fn emit(&mut self, g: Group) -> Record {
        self.closed.insert(text_key(&g.key));
        let mut values = g.key;
        if self.cfg.count.is_some() {
            values.push(Value::Int(g.count as i64));
        }
        values.extend(g.distinct.iter().map(|(n, _)| Value::Int(*n as i64)));
        values.extend(g.sums.into_iter().map(Value::Decimal));
        Record {
            schema: self.out_schema.clone(),
            values,
            position: g.position,
        }
    }

    fn add(&mut self, rec: &Record, batch: &mut Batch) -> Option<Record> {
        let key: Vec<Value> = self
            .cfg
            .group_by
            .iter()
            .map(|f| rec.get(f).cloned().unwrap_or(Value::Null))
            .collect();
        let mut sums = Vec::with_capacity(self.cfg.sum.len());
        for (out, field) in &self.cfg.sum {
            match number(rec.get(field).unwrap_or(&Value::Null)) {
                Ok(n) => sums.push(n.unwrap_or_default()),
                Err(e) => {
                    batch.rejects.push(self.ctx.reject(
                        &self.label,
                        format!("aggregate.{out}"),
                        format!("`{field}` cannot be summed into `{out}`: {e}"),
                        rec,
                    ));
                    return None;
                }
            }
        }
        let mut finished = None;
        if self.current.as_ref().is_some_and(|g| g.key != key) {
            finished = self.current.take().map(|g| self.emit(g));
        }
        if self.current.is_none() && self.closed.contains(&text_key(&key)) {
            self.failed = Some(format!(
                "{}: the input is not ordered by {}: group {:?} appears again at {}; order the source by these fields",
                self.label,
                self.cfg.group_by.join(", "),
                text_key(&key),
                rec.position
            ));
        }
        let g = self.current.get_or_insert_with(|| Group {
            key,
            position: rec.position.clone(),
            count: 0,
            distinct: vec![(0, None); self.cfg.count_distinct.len()],
            sums: vec![Decimal::ZERO; self.cfg.sum.len()],
        });
        g.count += 1;
        for (slot, field) in g.distinct.iter_mut().zip(self.cfg.count_distinct.values()) {
            let v = rec.get(field).cloned().unwrap_or(Value::Null);
            if v.is_null() {
                continue;
            }
            match &slot.1 {
                Some(last) if *last == v => {}
                Some(last) if before(&v, last) => {
                    self.failed = Some(format!(
                        "{}: `{field}` is not ordered within its group at {}; order the source by {}, then `{field}`",
                        self.label,
                        rec.position,
                        self.cfg.group_by.join(", ")
                    ));
                }
                _ => {
                    slot.0 += 1;
                    slot.1 = Some(v);
                }
            }
        }
        for (acc, n) in g.sums.iter_mut().zip(sums) {
            *acc += n;
        }
        finished
    }
}

impl Step for Aggregate {
    fn label(&self) -> &str {
        &self.label
    }

    fn apply(&mut self, records: Vec<Record>, batch: &mut Batch) -> Vec<Record> {
        let mut out = Vec::new();
        for r in &records {
            if let Some(done) = self.add(r, batch) {
                out.push(done);
            }
        }
        out
    }

    fn finish(&mut self, _batch: &mut Batch) -> Vec<Record> {
        self.current
            .take()
            .map(|g| self.emit(g))
            .into_iter()
            .collect()
    }

    fn failure(&self) -> Option<String> {
        self.failed.clone()
    }
}
