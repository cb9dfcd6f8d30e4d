//! The steps of a pipeline. Each step takes the records of a batch and keeps, changes,
//! drops (filter) or rejects them; rejects carry the step's label, the reason, the source
//! position and the masked record.

mod aggregate;
mod filter;
mod lookup;
mod map;
mod pseudonym;
mod select;
mod validate;

use std::sync::Arc;

use crate::config::StepConfig;
use crate::error::{Error, Result};
use crate::expr::ExprEngine;
use crate::mask;
use crate::record::{Batch, Record, Reject};

pub use aggregate::Aggregate;
pub use filter::Filter;
pub use lookup::Lookup;
pub use map::Map;
pub use pseudonym::Pseudonym;
pub use select::Select;
pub use validate::Validate;

/// Counters of one step over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepCounts {
    /// The step's label (`steps[0].map`).
    pub step: String,
    /// Records that entered.
    pub input: u64,
    /// Records that left.
    pub output: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Records dropped by a filter.
    pub filtered: u64,
}

/// What every step shares: the expression engine and the personal fields to mask.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The sandboxed expression engine.
    pub engine: Arc<ExprEngine>,
    /// Fields masked in rejects.
    pub personal: Arc<Vec<String>>,
    /// The named keys of the connections file (`keys:`), resolved.
    pub keys: Arc<indexmap::IndexMap<String, crate::secret::Secret>>,
}

impl StepContext {
    /// A context with no keys.
    pub fn new(engine: Arc<ExprEngine>, personal: Vec<String>) -> Self {
        StepContext {
            engine,
            personal: Arc::new(personal),
            keys: Arc::default(),
        }
    }
}

impl StepContext {
    /// Builds a reject for `record`.
    pub fn reject(&self, step: &str, code: String, reason: String, record: &Record) -> Reject {
        Reject {
            step: step.to_string(),
            code,
            reason: mask::scrub_personal(&reason, record, &self.personal),
            position: record.position.clone(),
            payload: mask::masked_payload(record, &self.personal),
        }
    }
}

/// One step of the runtime.
pub trait Step: Send {
    /// The label used in rejects and counts: `steps[2].validate`.
    fn label(&self) -> &str;
    /// Processes `records`: returns those that go on, pushing rejects into `batch.rejects`
    /// and counting filtered ones in `batch.filtered`.
    fn apply(&mut self, records: Vec<Record>, batch: &mut Batch) -> Vec<Record>;
    /// At most how many fields the step adds to a record (a `map` to new names).
    fn adds(&self) -> usize {
        0
    }
    /// Called once after the last batch: records the step still holds (the last group of
    /// an `aggregate`). Most steps hold nothing.
    fn finish(&mut self, _batch: &mut Batch) -> Vec<Record> {
        Vec::new()
    }
    /// A problem that makes the step's output wrong as a whole (input not ordered as an
    /// `aggregate` needs): the run fails instead of publishing it.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// Builds the runtime steps of a pipeline.
pub fn build(configs: &[StepConfig], ctx: &StepContext) -> Result<Vec<Box<dyn Step>>> {
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let label = format!("steps[{i}].{}", c.kind());
            let step: Box<dyn Step> = match c {
                StepConfig::Map(fields) => Box::new(Map::new(label, fields, ctx.clone())?),
                StepConfig::Filter(src) => Box::new(Filter::new(label, src, ctx.clone())?),
                StepConfig::Validate(rules) => Box::new(Validate::new(label, rules, ctx.clone())?),
                StepConfig::Lookup(l) => Box::new(Lookup::new(label, l, ctx.clone())?),
                StepConfig::Select(f) => Box::new(Select::new(label, f)),
                StepConfig::Pseudonym(p) => Box::new(Pseudonym::new(label, p, ctx)?),
                StepConfig::Aggregate(a) => Box::new(Aggregate::new(label, a, ctx.clone())),
                StepConfig::Include(f) => {
                    return Err(config_error(
                        &label,
                        format!("`include: {f}` inside an included file: includes do not nest"),
                    ));
                }
            };
            Ok(step)
        })
        .collect()
}

/// Runs `records` through all steps, updating `counts` (one per step).
pub fn run_all(steps: &mut [Box<dyn Step>], batch: &mut Batch, counts: &mut [StepCounts]) {
    let records = std::mem::take(&mut batch.records);
    batch.records = apply_counted(steps, counts, records, batch);
}

/// `records` through `steps` in order, each step's counts updated.
fn apply_counted(
    steps: &mut [Box<dyn Step>],
    counts: &mut [StepCounts],
    mut records: Vec<Record>,
    batch: &mut Batch,
) -> Vec<Record> {
    for (step, count) in steps.iter_mut().zip(counts.iter_mut()) {
        let before_rejects = batch.rejects.len();
        let before_filtered = batch.filtered;
        count.input += records.len() as u64;
        records = step.apply(records, batch);
        count.output += records.len() as u64;
        count.rejected += (batch.rejects.len() - before_rejects) as u64;
        count.filtered += batch.filtered - before_filtered;
    }
    records
}

/// After the last batch: the records the steps still hold, each passed through the steps
/// after the one that held it, into `batch`.
pub fn finish_all(steps: &mut [Box<dyn Step>], batch: &mut Batch, counts: &mut [StepCounts]) {
    for i in 0..steps.len() {
        let held = steps[i].finish(batch);
        counts[i].output += held.len() as u64;
        let mut records = apply_counted(&mut steps[i + 1..], &mut counts[i + 1..], held, batch);
        batch.records.append(&mut records);
    }
}

pub(crate) fn config_error(label: &str, message: impl std::fmt::Display) -> Error {
    Error::Other(format!("{label}: {message}"))
}
