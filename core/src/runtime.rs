//! Runs a pipeline: source task → step workers → sink, connected by bounded channels.
//!
//! The steps are CPU-bound, so batches are dealt round-robin to one worker thread per core
//! (each with its own instances of the steps) and collected in the same round-robin order:
//! the sink sees batches in source order without a reordering buffer, which keeps
//! checkpoints monotonic. After its steps, a worker also runs the sink's
//! [`crate::component::Prepare`] on the batch (rendering and checking records for an XML
//! sink), so that this work too is spread over the cores instead of waiting on the one sink.
//!
//! Per batch, in this order: rejects and lineage go to the flow log, then the sink commits
//! the records together with the source checkpoint (for a sink whose checks do not depend
//! on the previous batch being written, while the next batch's entries go to the flow log). A crash before the commit means the
//! batch is read again by the next run (its flow-log entries are then de-duplicated by
//! position); a crash after it means the next run starts after it. Either way the target
//! ends exactly as after an uninterrupted run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::component::{Artifact, SavedCheckpoint, Sink, Source, SourceContext};
use crate::config::pipeline::{Limit, Then};
use crate::error::{Error, Result};
use crate::flowlog::{Entry, FlowLog, Lineage, RunFinished, RunStarted};
use crate::record::Batch;
use crate::steps::{self, Step, StepContext, StepCounts};

/// How many step workers to run when the pipeline does not say (`workers`): one fewer than
/// the cores, at least one, at most four (beyond that the source or the sink is the
/// bottleneck).
///
/// Why not one per core: the source's thread, the sink's loop and writer, and usually the
/// database itself run beside the workers. On two cores a second worker only made them all
/// take turns: 1M CSV rows into PostgreSQL took 3.35 s of snodo's CPU with one worker
/// against 3.55 s with two (ten alternating pairs, wall 3.02 s against 3.13 s, 71 MB
/// against 80 MB), and the PS/PSA flow 30.1-31.0 s against 32.5-34.5 s, with less of
/// PostgreSQL's CPU too (docs/benchmarks.md). A dry run, with no database beside it, is
/// the case that loses: 1.56 s against 1.44 s.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Batches in flight between two stages: enough to keep both cores busy, small enough that
/// memory does not depend on input size.
const CHANNEL_DEPTH: usize = 1;

/// Percentages are judged once this many records have been read.
const MIN_SAMPLE: u64 = 1000;

/// Receives progress updates (the CLI draws a bar; tests ignore them).
pub trait Progress: Send + Sync {
    /// Called after every batch with totals for this run.
    fn update(&self, records_read: u64, bytes_read: u64);
    /// Called once at the end.
    fn finish(&self);
}

/// Options of one run.
pub struct RunOptions {
    /// Who or what started the run: `user`, `cron`, `api`.
    pub trigger: String,
    /// `--dry-run`: the sink is replaced and nothing is written.
    pub dry_run: bool,
    /// `--limit N`.
    pub limit: Option<u64>,
    /// Progress receiver.
    pub progress: Option<Arc<dyn Progress>>,
    /// The run id to use, when the caller needs it before the run starts (the migrator
    /// stamps it into every row as `loaded_by_run`); a new one otherwise.
    pub run_id: Option<String>,
}

/// A pipeline ready to run: everything resolved, nothing left to fail on configuration.
pub struct Plan {
    /// Pipeline name.
    pub name: String,
    /// Pipeline file.
    pub file: String,
    /// SHA-256 of the file.
    pub file_sha256: String,
    /// The source.
    pub source: Box<dyn Source>,
    /// The steps, one independent set per worker thread (at least one set).
    pub steps: Vec<Vec<Box<dyn Step>>>,
    /// The sink.
    pub sink: Box<dyn Sink>,
    /// Reject limit.
    pub limit: Limit,
    /// The limit as written (for messages).
    pub limit_text: String,
    /// Action when the limit is exceeded.
    pub then: Then,
    /// Records per batch.
    pub batch_size: usize,
    /// Step context (personal fields).
    pub ctx: StepContext,
    /// Log one lineage pair per record (default). When false, each batch's lineage entry
    /// holds one pair: the range of source positions and the number of records. For
    /// targets whose rows carry their own lineage (the canonical store's `source_system`,
    /// `source_key`, `loaded_by_run`), where per-record pairs would only copy millions of
    /// keys into the flow log.
    pub lineage_per_record: bool,
    /// The pre-submission report to write after the run.
    pub report: Option<crate::report::ReportConfig>,
    /// False when a step keeps state across batches (`aggregate`): an interrupted run
    /// then starts over instead of resuming, since that state was not saved.
    pub resumable: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Pipeline name.
    pub pipeline: String,
    /// `succeeded`, `limited` (stopped by `--limit`; the next run continues),
    /// `rejects_over_limit`, `failed`, `interrupted`.
    pub status: String,
    /// The run this one resumed.
    pub resumed_from: Option<String>,
    /// Records read by this run.
    pub read: u64,
    /// Records written by this run.
    pub written: u64,
    /// Records rejected by this run.
    pub rejected: u64,
    /// Records filtered by this run.
    pub filtered: u64,
    /// Rejects by reason code.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Per-step counts.
    pub steps: Vec<StepCounts>,
    /// What the sink's own checks did (records refused by the XSD, records with nothing
    /// new to deliver).
    pub sink_checks: StepCounts,
    /// Files produced.
    pub artifacts: Vec<Artifact>,
    /// Seconds.
    pub seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// True for dry runs.
    pub dry_run: bool,
}

impl RunSummary {
    /// The exit code documented in the README.
    pub fn exit_code(&self) -> i32 {
        match self.status.as_str() {
            "succeeded" | "limited" => 0,
            "rejects_over_limit" => 4,
            "interrupted" => 130,
            _ => 1,
        }
    }
}

/// Counts carried over from the runs a resumed run continues.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    read: u64,
    written: u64,
    rejected: u64,
}

/// How a record's source is named in lineage: its key, else its record number.
fn source_of(r: &crate::record::Record) -> String {
    r.position
        .key
        .clone()
        .unwrap_or_else(|| r.position.record.to_string())
}

/// A new run id: sortable by time, unique enough across processes on one machine.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now();
    let nanos = now.timestamp_subsec_nanos() as u64;
    let mix = (nanos ^ ((std::process::id() as u64) << 20)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{}-{:06x}", now.format("%Y%m%dT%H%M%SZ"), mix >> 40)
}

/// Runs a plan to the end, writing the flow log as it goes.
pub async fn run(mut plan: Plan, log: &FlowLog, opts: RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let run_id = opts.run_id.clone().unwrap_or_else(new_run_id);

    let saved = plan.sink.open(&plan.name).await?;
    let fingerprint = plan.source.fingerprint();
    let (from, resumed_from, base) = match &saved {
        Some(s) if s.fingerprint == fingerprint && !s.done && !plan.resumable => {
            tracing::info!(
                interrupted = %s.run_id,
                "an interrupted run is not resumed: this pipeline aggregates, so it starts over"
            );
            (None, None, Totals::default())
        }
        Some(s) if s.fingerprint == fingerprint && !s.done => (
            Some(s.position.clone()),
            Some(s.run_id.clone()),
            Totals {
                read: s.records_read,
                written: s.records_written,
                rejected: s.records_rejected,
            },
        ),
        Some(s) if s.fingerprint == fingerprint && plan.source.incremental() => {
            (Some(s.position.clone()), None, Totals::default())
        }
        _ => (None, None, Totals::default()),
    };
    let resume = saved.as_ref().filter(|_| resumed_from.is_some());
    plan.sink.begin(resume).await?;
    if let Some(r) = &resumed_from {
        tracing::info!(run = %run_id, resumes = %r, "resuming an interrupted run from its checkpoint");
    }

    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    log.append(
        &run_id,
        &[Entry::RunStarted(RunStarted {
            pipeline: plan.name.clone(),
            file: plan.file.clone(),
            file_sha256: plan.file_sha256.clone(),
            version: crate::VERSION.into(),
            trigger: opts.trigger.clone(),
            dry_run: opts.dry_run,
            resumed_from: resumed_from.clone(),
            source: plan.source.describe(),
            sink: plan.sink.describe(),
            user,
            started_at: chrono::Utc::now().to_rfc3339(),
        })],
    )
    .await?;

    let mut summary = RunSummary {
        run_id: run_id.clone(),
        pipeline: plan.name.clone(),
        status: "running".into(),
        resumed_from,
        read: 0,
        written: 0,
        rejected: 0,
        filtered: 0,
        rejected_by_reason: BTreeMap::new(),
        steps: plan
            .steps
            .first()
            .map(|s| s.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|s| StepCounts {
                step: s.label().to_string(),
                ..Default::default()
            })
            .collect(),
        sink_checks: StepCounts {
            step: "sink".into(),
            ..Default::default()
        },
        artifacts: Vec::new(),
        seconds: 0.0,
        error: None,
        dry_run: opts.dry_run,
    };

    let mut outcome = pump(&mut plan, log, &opts, &mut summary, from, fingerprint, base).await;
    // A sink may commit in the background: whatever ended the run, what it reports as
    // written must have been committed.
    if let Err(e) = plan.sink.flush().await {
        summary.written = summary.written.saturating_sub(plan.sink.uncommitted());
        summary.status = "failed".into();
        match &outcome {
            Err(_) => tracing::debug!(
                error = %crate::mask::redact_text(&e.to_string()),
                "the sink's last commits failed too"
            ),
            Ok(_) => outcome = Err(e),
        }
    }

    summary.seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(Some(last)) => match plan.sink.finish(&last).await {
            Ok(artifacts) => {
                summary.artifacts = artifacts;
                if summary.status == "running" {
                    summary.status = "succeeded".into();
                }
            }
            Err(e) => {
                summary.status = "failed".into();
                summary.error = Some(crate::mask::redact_text(&e.to_string()));
            }
        },
        Ok(None) => {}
        Err(e) => {
            if summary.status == "running" {
                summary.status = "failed".into();
            }
            summary.error = Some(crate::mask::redact_text(&e.to_string()));
        }
    }
    if let Some(p) = &opts.progress {
        p.finish();
    }
    if let Some(cfg) = &plan.report {
        match crate::report::write(cfg, &summary, &plan.file, log).await {
            Ok(a) => summary.artifacts.push(a),
            Err(e) => tracing::error!(error = %e, "the pre-submission report could not be written"),
        }
    }

    let mut tail: Vec<Entry> = summary
        .artifacts
        .iter()
        .cloned()
        .map(Entry::Artifact)
        .collect();
    tail.push(Entry::RunFinished(RunFinished {
        status: summary.status.clone(),
        read: summary.read,
        written: summary.written,
        rejected: summary.rejected,
        filtered: summary.filtered,
        rejected_by_reason: summary.rejected_by_reason.clone(),
        steps: summary
            .steps
            .iter()
            .chain(Some(&summary.sink_checks).filter(|c| c.rejected + c.filtered > 0))
            .cloned()
            .collect(),
        error: summary.error.clone(),
        finished_at: chrono::Utc::now().to_rfc3339(),
        duration_ms: (summary.seconds * 1000.0) as u64,
    }));
    log.append(&run_id, &tail).await?;
    Ok(summary)
}

/// Moves batches from the source through the steps into the sink. Returns the last
/// checkpoint when the input was consumed (or the limit reached), `None` when the run
/// stopped early by policy or interruption.
#[allow(clippy::too_many_arguments)]
async fn pump(
    plan: &mut Plan,
    log: &FlowLog,
    opts: &RunOptions,
    summary: &mut RunSummary,
    from: Option<serde_json::Value>,
    fingerprint: String,
    base: Totals,
) -> Result<Option<SavedCheckpoint>> {
    let source = std::mem::replace(&mut plan.source, Box::new(NoSource));
    let src_desc = source.describe();
    let sink_desc = plan.sink.describe();
    let (tx_src, mut rx_src) = mpsc::channel::<Batch>(CHANNEL_DEPTH);
    let sctx = SourceContext {
        batch_size: plan.batch_size,
        limit: opts.limit,
        personal: plan.ctx.personal.clone(),
        // Every worker has the same steps; the first one's say what they add.
        extra_fields: plan
            .steps
            .first()
            .map(|steps| steps.iter().map(|s| s.adds()).sum())
            .unwrap_or(0),
    };
    let source_task = tokio::spawn(source.run(from.clone(), sctx, tx_src));

    let worker_steps = std::mem::take(&mut plan.steps);
    let step_labels: Vec<String> = worker_steps
        .first()
        .map(|w| w.iter().map(|s| s.label().to_string()).collect())
        .unwrap_or_default();
    let mut to_workers = Vec::new();
    let mut from_workers = Vec::new();
    let mut worker_threads = Vec::new();
    let failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let preparer = plan.sink.preparer();
    for mut steps in worker_steps {
        let preparer = preparer.clone();
        let prepare = move |batch: &mut Batch| {
            if let Some(p) = &preparer {
                batch.prepared = Some(p.prepare(&mut batch.records));
            }
        };
        let (tx_in, mut rx_in) = mpsc::channel::<Batch>(1);
        let (tx_out, rx_out) = mpsc::channel::<(Batch, Vec<StepCounts>)>(1);
        let labels = step_labels.clone();
        let failure = failure.clone();
        worker_threads.push(tokio::task::spawn_blocking(move || {
            let fresh = || -> Vec<StepCounts> {
                labels
                    .iter()
                    .map(|l| StepCounts {
                        step: l.clone(),
                        ..Default::default()
                    })
                    .collect()
            };
            let report = |steps: &[Box<dyn Step>]| {
                if let Some(f) = steps.iter().find_map(|s| s.failure())
                    && let Ok(mut slot) = failure.lock()
                {
                    slot.get_or_insert(f);
                }
            };
            let mut last: Option<(u64, serde_json::Value, u64)> = None;
            let mut ended = true;
            while let Some(mut batch) = rx_in.blocking_recv() {
                let mut counts = fresh();
                steps::run_all(&mut steps, &mut batch, &mut counts);
                report(&steps);
                prepare(&mut batch);
                last = Some((batch.seq, batch.checkpoint.clone(), batch.bytes_read));
                if tx_out.blocking_send((batch, counts)).is_err() {
                    ended = false;
                    break;
                }
            }
            // The input is over: what steps still hold (an aggregate's last group) goes
            // out as one more batch, at the last batch's checkpoint.
            if ended {
                let (seq, checkpoint, bytes_read) = last.unwrap_or_default();
                let mut batch = Batch {
                    seq: seq + 1,
                    checkpoint,
                    bytes_read,
                    ..Default::default()
                };
                let mut counts = fresh();
                steps::finish_all(&mut steps, &mut batch, &mut counts);
                report(&steps);
                prepare(&mut batch);
                if !batch.records.is_empty() || !batch.rejects.is_empty() {
                    let _ = tx_out.blocking_send((batch, counts));
                }
            }
        }));
        to_workers.push(tx_in);
        from_workers.push(rx_out);
    }
    let n_workers = to_workers.len().max(1);
    let dealer = tokio::spawn(async move {
        let mut k = 0usize;
        while let Some(batch) = rx_src.recv().await {
            if to_workers[k % n_workers].send(batch).await.is_err() {
                break;
            }
            k += 1;
        }
    });
    let mut next_worker = 0usize;

    let mut last = SavedCheckpoint {
        fingerprint,
        position: from.unwrap_or(serde_json::Value::Null),
        done: false,
        run_id: summary.run_id.clone(),
        records_read: base.read,
        records_written: base.written,
        records_rejected: base.rejected,
    };
    let mut stopped_early = false;
    // The last batch logged but not yet written, with its checkpoint, when the sink lets
    // the next batch be checked before this one is written.
    let overlap = plan.sink.checks_ahead();
    let mut pending: Option<(Vec<crate::record::Record>, SavedCheckpoint)> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = tokio::select! {
            b = async {
                match from_workers.get_mut(next_worker % n_workers) {
                    Some(rx) => rx.recv().await,
                    None => None,
                }
            } => b,
            _ = &mut ctrl_c => {
                summary.status = "interrupted".into();
                summary.error = Some("interrupted by the user; run again to resume".into());
                stopped_early = true;
                break;
            }
        };
        let Some((mut batch, counts)) = next else {
            break;
        };
        next_worker += 1;
        if let Some(f) = failure.lock().ok().and_then(|f| f.clone()) {
            summary.status = "failed".into();
            summary.error = Some(f);
            stopped_early = true;
            break;
        }
        let before = (batch.records.len(), batch.rejects.len(), batch.filtered);
        plan.sink.check(&mut batch, &plan.ctx).await?;
        summary.sink_checks.input += before.0 as u64;
        summary.sink_checks.output += batch.records.len() as u64;
        summary.sink_checks.rejected += (batch.rejects.len() - before.1) as u64;
        summary.sink_checks.filtered += batch.filtered - before.2;
        for (total, c) in summary.steps.iter_mut().zip(counts) {
            total.input += c.input;
            total.output += c.output;
            total.rejected += c.rejected;
            total.filtered += c.filtered;
        }
        summary.read += batch.read;
        summary.filtered += batch.filtered;
        summary.rejected += batch.rejects.len() as u64;
        for r in &batch.rejects {
            *summary
                .rejected_by_reason
                .entry(r.code.clone())
                .or_default() += 1;
        }

        let exceeded = plan.limit.exceeded(
            base.rejected + summary.rejected,
            base.read + summary.read,
            MIN_SAMPLE,
        );
        if exceeded && plan.then == Then::Fail {
            log.append(
                &summary.run_id,
                &batch
                    .rejects
                    .iter()
                    .cloned()
                    .map(Entry::Reject)
                    .collect::<Vec<_>>(),
            )
            .await?;
            summary.status = "rejects_over_limit".into();
            let err = Error::RejectLimit {
                rejected: summary.rejected,
                read: summary.read,
                limit: plan.limit_text.clone(),
                run_id: summary.run_id.clone(),
            };
            summary.error = Some(err.to_string());
            stopped_early = true;
            break;
        }

        let checkpoint = SavedCheckpoint {
            position: batch.checkpoint.clone(),
            records_read: last.records_read + batch.read,
            records_written: last.records_written + batch.records.len() as u64,
            records_rejected: last.records_rejected + batch.rejects.len() as u64,
            ..last.clone()
        };
        // Rejects and lineage are logged before the records are committed: if the run dies
        // in between, the next run re-reads the batch and logs it again, and readers of the
        // log de-duplicate by source position. The other order could lose lineage of
        // committed records.
        let mut entries: Vec<Entry> = batch.rejects.into_iter().map(Entry::Reject).collect();
        if !opts.dry_run && !batch.records.is_empty() {
            let keys = plan.sink.keys(&batch.records);
            entries.push(Entry::Lineage(Lineage {
                source: src_desc.clone(),
                target: sink_desc.clone(),
                pairs: if plan.lineage_per_record {
                    batch
                        .records
                        .iter()
                        .zip(keys)
                        .map(|(r, k)| (source_of(r), k))
                        .collect()
                } else {
                    let first = batch.records.first().map(source_of).unwrap_or_default();
                    let last = batch.records.last().map(source_of).unwrap_or_default();
                    vec![(
                        format!("{first} .. {last}"),
                        format!(
                            "{} records (lineage in the target rows)",
                            batch.records.len()
                        ),
                    )]
                },
            }));
        }
        if overlap {
            // This batch's entries go to the flow log while the sink commits the previous
            // batch: every batch is still logged before it is committed, and the two
            // databases work at the same time instead of in turn (the flow log's commit
            // took a quarter of the sink's time in the CSV benchmark).
            let previous = pending.take();
            let run_id = &summary.run_id;
            let (logged, written) = tokio::join!(log.append(run_id, &entries), async {
                match &previous {
                    Some((records, checkpoint)) => plan.sink.write(records, checkpoint).await,
                    None => Ok(()),
                }
            });
            written?;
            logged?;
            if let Some((records, checkpoint)) = previous {
                summary.written += records.len() as u64;
                last = checkpoint;
                crate::recycle::POOL.give_back(records);
            }
            pending = Some((batch.records, checkpoint));
        } else {
            log.append(&summary.run_id, &entries).await?;
            plan.sink.write(&batch.records, &checkpoint).await?;
            summary.written += batch.records.len() as u64;
            last = checkpoint;
            crate::recycle::POOL.give_back(std::mem::take(&mut batch.records));
        }
        if exceeded && summary.status == "running" {
            // then: continue — keep loading, remember the verdict.
            summary.status = "rejects_over_limit".into();
        }
        if let Some(p) = &opts.progress {
            p.update(summary.read, batch.bytes_read);
        }
    }
    // Whatever ended the loop, the batch already logged is committed: an interrupted or
    // failed run keeps every batch before the one that stopped it, as it always has.
    if let Some((records, checkpoint)) = pending.take() {
        plan.sink.write(&records, &checkpoint).await?;
        summary.written += records.len() as u64;
        last = checkpoint;
    }
    drop(from_workers);
    dealer.abort();
    let source_result = source_task
        .await
        .map_err(|e| Error::Other(format!("the source task stopped unexpectedly: {e}")))?;
    // A worker that died (a panic in a step) closes its channel exactly like the end of
    // the input would: it must fail the run, never let a truncated output be published.
    let mut worker_failure = None;
    for w in worker_threads {
        if let Err(e) = w.await {
            worker_failure = Some(Error::Other(format!(
                "a step worker stopped unexpectedly ({e}); nothing after the last committed batch was written. This is a bug: please report it with the run id"
            )));
        }
    }
    if stopped_early {
        return Ok(None);
    }
    if let Some(e) = worker_failure {
        return Err(e);
    }
    source_result?;
    if summary.status == "running" && opts.limit.is_some_and(|l| summary.read >= l) {
        // `--limit` stops like an interruption: what was read is committed, the output is
        // not published, and the next run continues after the last record read.
        summary.status = "limited".into();
        return Ok(None);
    }
    if summary.status == "rejects_over_limit" {
        summary.error = Some(
            Error::RejectLimit {
                rejected: summary.rejected,
                read: summary.read,
                limit: plan.limit_text.clone(),
                run_id: summary.run_id.clone(),
            }
            .to_string(),
        );
    }
    last.done = true;
    Ok(Some(last))
}

/// Placeholder left in the plan once the real source has moved into its task.
struct NoSource;

impl Source for NoSource {
    fn fingerprint(&self) -> String {
        String::new()
    }
    fn describe(&self) -> String {
        "none".into()
    }
    fn run(
        self: Box<Self>,
        _from: Option<serde_json::Value>,
        _ctx: SourceContext,
        _tx: mpsc::Sender<Batch>,
    ) -> futures::future::BoxFuture<'static, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
