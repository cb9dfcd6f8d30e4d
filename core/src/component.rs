//! The contracts between the runtime and the connectors.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::Result;
use crate::record::{Batch, Checkpoint, Record};
use crate::steps::StepContext;

/// What a source needs to know to produce batches.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Records per batch.
    pub batch_size: usize,
    /// Stop after this many records (`--limit`).
    pub limit: Option<u64>,
    /// Fields masked in rejects produced by the source itself.
    pub personal: Arc<Vec<String>>,
    /// How many fields the steps may add to a record (see [`crate::steps::Step::adds`]): a
    /// source that makes room for them spares each record a reallocation later.
    pub extra_fields: usize,
}

/// A source of records. It runs in its own task and sends batches into a bounded channel,
/// so a slow sink slows the source down instead of filling memory.
pub trait Source: Send {
    /// Identifies the input, so that a checkpoint is reused only for the same input
    /// (a file's path, size and modification time; a query's text).
    fn fingerprint(&self) -> String;
    /// True when the source reads only what changed since the last completed run
    /// (a SQL query with a `cursor`): its final checkpoint is the next run's start.
    fn incremental(&self) -> bool {
        false
    }
    /// Total input size in bytes when known, for progress bars.
    fn size_hint(&self) -> Option<u64> {
        None
    }
    /// Human-readable description for the flow log (no secrets).
    fn describe(&self) -> String;
    /// Streams batches, starting after `from` (or at the beginning), until the input ends
    /// or the receiver is dropped.
    fn run(
        self: Box<Self>,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> BoxFuture<'static, Result<()>>;
}

/// The checkpoint a sink stores atomically with the data it commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedCheckpoint {
    /// The source fingerprint it belongs to.
    pub fingerprint: String,
    /// Where the source resumes.
    pub position: Checkpoint,
    /// True once the run that wrote it completed.
    pub done: bool,
    /// The run that wrote it.
    pub run_id: String,
    /// Records read from the start of the input up to `position`.
    pub records_read: u64,
    /// Records written to the sink from the start of the input up to `position`.
    pub records_written: u64,
    /// Records rejected from the start of the input up to `position`: a resumed run judges
    /// the reject limit on the whole input, as an uninterrupted run would.
    #[serde(default)]
    pub records_rejected: u64,
}

/// A file or object a run produced, recorded in the flow log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// Where it is.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Records in it.
    pub rows: u64,
    /// Where it is meant to go (`local`, `INPS`, ...).
    pub destination: String,
    /// The checks the content passed before it was released (`xsd:PS_PSA_SINA201812.xsd`,
    /// `xmllint`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
}

/// What a sink's [`Prepare`] made of a batch's records, carried with the batch to
/// [`Sink::check`], which downcasts it to its own type.
pub type Prepared = Box<dyn std::any::Any + Send>;

/// The part of a sink's per-record work that needs none of its run state: rendering a
/// record into the target format and checking it. The runtime calls it on the step
/// workers, after the steps, so that the batches are prepared in parallel while the sink
/// (which is one) writes the previous batch. Without it that work sat on the sink's
/// single thread and left a core idle (the PS/PSA flow spent most of its time there).
pub trait Prepare: Send + Sync {
    /// Prepares `records` (the sink may set fields it writes itself, such as an
    /// operation code). The result must describe them one by one, in order: `check`
    /// trusts it only for a batch of that many records.
    fn prepare(&self, records: &mut [Record]) -> Prepared;
}

/// A sink. Every `write` commits the records *and* the checkpoint together, so a crash
/// between two writes loses nothing and a restart duplicates nothing.
pub trait Sink: Send {
    /// Human-readable description for the flow log (no secrets).
    fn describe(&self) -> String;
    /// Prepares the target and returns the checkpoint saved by a previous run, if any.
    fn open<'a>(&'a mut self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<SavedCheckpoint>>>;
    /// Called once before the first write: `resume` is the checkpoint the run continues
    /// from, `None` to start from scratch (a file sink then discards any partial output).
    fn begin<'a>(&'a mut self, resume: Option<&'a SavedCheckpoint>) -> BoxFuture<'a, Result<()>>;
    /// The key each record will have in the target (`assistito:id_anagrafica=42`,
    /// `out/x.csv#17`), for lineage. Called before `write`, so that lineage is logged
    /// before the data it describes is committed.
    fn keys(&self, records: &[Record]) -> Vec<String>;
    /// Looks at a batch before it is written. A sink that renders records into a strict
    /// format (XML against its XSD) moves the records it cannot write into
    /// `batch.rejects` (built with `ctx.reject`, step `sink`), and may drop records it has
    /// nothing to deliver for (counted in `batch.filtered`). Runs in dry runs too: that is
    /// how an operator learns, before anything is sent, which records would be refused.
    fn check<'a>(
        &'a mut self,
        _batch: &'a mut Batch,
        _ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// The work `check` can have done in advance on the step workers (see [`Prepare`]);
    /// `None` when there is none. `check` must still work on a batch that was not
    /// prepared.
    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        None
    }
    /// Whether `check` and `keys` of a batch may be called before the previous batch is
    /// written. The runtime then logs a batch while the sink writes the previous one. A
    /// sink whose checks read what it wrote (the SIUSS ledger) or keep per-batch state
    /// between `check` and `write` must say no, the default.
    fn checks_ahead(&self) -> bool {
        false
    }
    /// Writes `records` and saves `checkpoint` atomically. A sink may commit in the
    /// background (the PostgreSQL sink does) and return once the batch is handed over: it
    /// then reports a failed commit at a later `write` or at [`Sink::flush`].
    fn write<'a>(
        &'a mut self,
        records: &'a [Record],
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<()>>;
    /// Waits until every batch `write` accepted is committed, and fails if one was not.
    /// The runtime calls it however the run ended, before it reports what was written.
    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Records `write` accepted that were not committed (after a failed `flush`): the
    /// run's written count leaves them out.
    fn uncommitted(&self) -> u64 {
        0
    }
    /// Marks the checkpoint done and publishes what was written (renames a file into place).
    fn finish<'a>(
        &'a mut self,
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<Vec<Artifact>>>;
}

/// A sink that writes nothing: `--dry-run`. Checkpoints are not saved either, so a dry
/// run never changes where the next real run starts. The real sink's [`Sink::check`]
/// still runs when it is given, so a dry run reports every record the sink would refuse.
#[derive(Default)]
pub struct DryRunSink {
    /// Description of the sink that would have been written.
    pub target: String,
    /// The real sink, only for its checks.
    pub checks: Option<Box<dyn Sink>>,
}

impl Sink for DryRunSink {
    fn describe(&self) -> String {
        format!("dry run (would write to {})", self.target)
    }
    fn check<'a>(
        &'a mut self,
        batch: &'a mut Batch,
        ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<()>> {
        match &mut self.checks {
            Some(inner) => inner.check(batch, ctx),
            None => Box::pin(async { Ok(()) }),
        }
    }
    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        self.checks.as_ref().and_then(|c| c.preparer())
    }
    fn open<'a>(
        &'a mut self,
        _pipeline: &'a str,
    ) -> BoxFuture<'a, Result<Option<SavedCheckpoint>>> {
        Box::pin(async { Ok(None) })
    }
    fn begin<'a>(&'a mut self, _resume: Option<&'a SavedCheckpoint>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn keys(&self, records: &[Record]) -> Vec<String> {
        vec![String::new(); records.len()]
    }
    fn write<'a>(
        &'a mut self,
        _records: &'a [Record],
        _checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn finish<'a>(
        &'a mut self,
        _checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<Vec<Artifact>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
