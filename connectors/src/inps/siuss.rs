//! The `siuss` sink: INPS SIUSS flows, each version of each record delivered once.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use indexmap::IndexMap;
use sha2::{Digest, Sha256};
use snodo_core::committer::{Commit, Committer};
use snodo_core::component::{Artifact, Prepare, Prepared, SavedCheckpoint, Sink};
use snodo_core::db::Db;
use snodo_core::error::{Error, Result};
use snodo_core::record::{Batch, FieldRef, OutputField, Record, Schema};
use snodo_core::steps::StepContext;
use snodo_core::value::{Value, tagged_json_object};

use super::config::{Channel, SiussSinkConfig};
use super::ledger::{self, Delivery, FileFlow, WaasEntry};
use crate::file::output::OutputFile;
use crate::file::xml::Xmllint;
use crate::file::xml::layout::{Layout, RecordProblem, XElem};
use crate::file::xml::release::{ReleaseCheck, release_checks};
use crate::file::xml::sink::xsd_reject;
use crate::file::xml::writer::{RenderedText, WriterState, XmlWriter};

/// The file flow being written, saved with the file checkpoint.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct FileState {
    writer: WriterState,
    flow: String,
    giorno: String,
    progressivo: i64,
}

/// A record about to be delivered: its rendered element and what it does to the ledger.
struct Pending {
    rendered: RenderedText,
    delivery: Delivery,
}

/// One batch of a file flow, handed to the [`FileCommit`] task.
struct FileJob {
    deliveries: Vec<Delivery>,
    /// The batch's elements, as they go into the file.
    text: String,
    records: u64,
    /// The sink's [`FileState`] after the batch, saved with the file checkpoint.
    state: serde_json::Value,
    checkpoint: SavedCheckpoint,
}

/// Commits a file flow's batches in a task of their own (see [`Committer`]): each batch's
/// versions are staged in the ledger, then its elements are appended to the file with its
/// checkpoint, in that order, exactly as the sink did before; meanwhile the sink loop
/// looks up and logs the next batch. That is safe because `check` decides against the
/// versions INPS *has* (released with the flow, in `finish`), never against the versions
/// staged by this run. With the sink loop waiting for each stage and append, the 100k
/// benchmark left the two cores idle a third of the time (docs/benchmarks.md).
struct FileCommit {
    db: Db,
    ente: String,
    tipo: &'static str,
    flow: String,
    stats: ledger::Statistics,
    out: OutputFile,
    layout: Arc<Layout>,
    xmllint: Xmllint,
    /// The release checks, started with the first batch that adds to the file (a run with
    /// nothing new to send starts no `xmllint`) and fed each batch once it is in the file.
    checks: Option<ReleaseCheck>,
}

impl Commit for FileCommit {
    type Job = FileJob;
    async fn commit(&mut self, job: FileJob) -> Result<()> {
        ledger::stage(&self.db, &self.ente, self.tipo, &self.flow, &job.deliveries).await?;
        self.stats.written(&self.db, job.deliveries.len()).await?;
        if self.checks.is_none() && !job.text.is_empty() {
            let mut checks = ReleaseCheck::start(
                self.layout.schema.clone(),
                &self.layout.schema_file,
                self.xmllint,
            )?;
            // A resumed flow's file already holds its first batches.
            checks.feed_file(self.out.partial())?;
            self.checks = Some(checks);
        }
        self.out.set_state(job.state);
        self.out
            .append(job.text.as_bytes(), job.records, &job.checkpoint)?;
        if let Some(c) = self.checks.as_mut() {
            c.feed(job.text.as_bytes());
        }
        Ok(())
    }
}

/// What the step workers make of one record before `check` (see [`Prepare`]).
struct Prep {
    /// The ledger key, `None` when a key field is empty.
    key: Option<String>,
    /// The record asks for the cancellation of what INPS has.
    cancelled: bool,
    /// The current version rendered, with its hash and its ledger snapshot, or what
    /// breaks the XSD; `None` for a record without key or a cancelled one.
    current: Option<std::result::Result<Current, Vec<RecordProblem>>>,
}

/// A current version, rendered and checked.
struct Current {
    rendered: RenderedText,
    hash: String,
    snapshot: String,
}

/// The record-by-record work of the sink that depends on nothing but the configuration:
/// runs on the step workers, in parallel (see [`Prepare`]).
struct SiussPrepare {
    layout: Arc<Layout>,
    /// The layout's fields, in the order of the ledger snapshot.
    fields: Vec<FieldRef>,
    params: IndexMap<String, String>,
    key: Vec<String>,
    cancelled: String,
    operation: String,
}

impl SiussPrepare {
    /// The values the ledger keeps: the layout's fields, tagged with their types. Empty
    /// fields are left out: the layout renders a missing field as it renders a null one,
    /// and a PS record has about twenty of them, a third of the snapshot's bytes that
    /// every ledger row would carry twice (staged, then released).
    fn snapshot(&self, r: &Record) -> String {
        tagged_json_object(self.fields.iter().filter_map(|f| match f.get(r)? {
            Value::Null => None,
            v => Some((f.name(), v)),
        }))
    }

    fn prepare_records(&self, records: &mut [Record]) -> Vec<Prep> {
        let mut operation = OutputField::new(self.operation.clone());
        records
            .iter_mut()
            .map(|r| {
                let Some(key) = key_of(r, &self.key) else {
                    return Prep {
                        key: None,
                        cancelled: false,
                        current: None,
                    };
                };
                let cancelled = truthy(r.get(&self.cancelled));
                operation.set(r, Value::Str("I".into()));
                let current = (!cancelled).then(|| {
                    self.layout.render_record(r, &self.params).map(|rendered| {
                        let rendered = RenderedText::new(&self.layout, &rendered);
                        Current {
                            hash: text_hash(&rendered),
                            snapshot: self.snapshot(r),
                            rendered,
                        }
                    })
                });
                Prep {
                    key: Some(key),
                    cancelled,
                    current,
                }
            })
            .collect()
    }
}

impl Prepare for SiussPrepare {
    fn prepare(&self, records: &mut [Record]) -> Prepared {
        Box::new(self.prepare_records(records))
    }
}

/// The `siuss` sink.
pub struct SiussSink {
    cfg: SiussSinkConfig,
    layout: Arc<Layout>,
    prep: Arc<SiussPrepare>,
    db: Db,
    tipo: &'static str,
    params: IndexMap<String, String>,
    binds_operation: bool,
    /// The flow's file until the first batch; then its [`FileCommit`] task has it, until
    /// `finish` takes it back.
    out: Option<OutputFile>,
    committer: Option<Committer<FileCommit>>,
    file: FileState,
    header: Vec<XElem>,
    writer: XmlWriter,
    pending: VecDeque<Pending>,
    operation: OutputField,
    pipeline: String,
    queued: Vec<String>,
    queued_hash: Sha256,
    queued_bytes: u64,
    ledger_stats: ledger::Statistics,
    /// The ledger had no version of this ente and type when the file flow began (see
    /// `begin`): every key is new, and `check` does not look them up.
    first_send: bool,
    /// Taken in `open`: no other run of this ente's flows of this type until this one ends.
    run_lock: Option<ledger::RunLock>,
}

/// `intervento_id=42,anno=2025`: the ledger key of a record, or `None` when a key field is
/// empty.
fn key_of(r: &Record, fields: &[String]) -> Option<String> {
    let mut parts = Vec::with_capacity(fields.len());
    for f in fields {
        let v = r.get(f).and_then(Value::to_text)?;
        if v.trim().is_empty() {
            return None;
        }
        parts.push(format!("{f}={v}"));
    }
    Some(parts.join(","))
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Int(i)) => *i != 0,
        Some(Value::Str(s)) => snodo_core::value::parse_bool(s).unwrap_or(false),
        _ => false,
    }
}

/// The hash the ledger compares to tell a changed version from the one INPS has: of the
/// record's text as it goes into the file (beneficiary and prestazione).
fn text_hash(t: &RenderedText) -> String {
    let mut h = Sha256::new();
    h.update(t.open.as_bytes());
    h.update(t.body.as_bytes());
    hex::encode(h.finalize())
}

impl SiussSink {
    /// Builds the sink: loads the layout and checks the ente's header values.
    pub fn new(cfg: SiussSinkConfig, db: Db) -> Result<Self> {
        let layout = Layout::load(Path::new(&cfg.layout))?;
        let cf = match snodo_core::secret::parse_reference(&cfg.ente.cf_operatore) {
            Some(_) => snodo_core::secret::SecretRef(cfg.ente.cf_operatore.clone())
                .resolve()
                .map_err(|e| Error::Other(format!("sink.siuss.ente.cf_operatore: {e}")))?
                .expose()
                .to_string(),
            None => cfg.ente.cf_operatore.clone(),
        };
        let tipo = cfg.flow.code();
        let mut params = IndexMap::new();
        params.insert("ente_codice".to_string(), cfg.ente.codice.clone());
        params.insert(
            "ente_denominazione".to_string(),
            cfg.ente.denominazione.clone(),
        );
        params.insert("ente_indirizzo".to_string(), cfg.ente.indirizzo.clone());
        params.insert("cf_operatore".to_string(), cf);
        params.insert(
            "flow_name".to_string(),
            format!("{}.{tipo}.00000000.0000000", cfg.ente.codice),
        );
        // A bad ente code or operator fails now, before anything is read.
        layout.render_header(&params)?;
        let binds_operation = layout.fields().contains(&cfg.operation);
        let out = match cfg.channel {
            Channel::File => {
                let dir = cfg.dir.clone().unwrap_or_else(|| "out/siuss".into());
                Some(OutputFile::new(
                    PathBuf::from(dir).join(format!(".{}-in-corso.xml", tipo.to_lowercase())),
                    "INPS SIUSS (upload)",
                ))
            }
            Channel::Waas => None,
        };
        Ok(SiussSink {
            writer: XmlWriter::new(layout.clone()),
            prep: Arc::new(SiussPrepare {
                fields: layout.fields().into_iter().map(FieldRef::new).collect(),
                layout: layout.clone(),
                params: params.clone(),
                key: cfg.key.clone(),
                cancelled: cfg.cancelled.clone(),
                operation: cfg.operation.clone(),
            }),
            layout,
            db,
            tipo,
            params,
            binds_operation,
            out,
            committer: None,
            file: FileState::default(),
            header: Vec::new(),
            pending: VecDeque::new(),
            operation: OutputField::new(cfg.operation.clone()),
            pipeline: String::new(),
            queued: Vec::new(),
            queued_hash: Sha256::new(),
            queued_bytes: 0,
            ledger_stats: ledger::Statistics::default(),
            first_send: false,
            run_lock: None,
            cfg,
        })
    }

    /// The record with the operation field set.
    fn with_operation(&mut self, mut r: Record, op: char) -> Record {
        self.operation
            .set(&mut r, Value::Str(op.to_string().into()));
        r
    }

    fn restore(&self, json: &str, like: &Record) -> Option<Record> {
        let serde_json::Value::Object(m) = serde_json::from_str(json).ok()? else {
            return None;
        };
        let names: Vec<String> = m.keys().cloned().collect();
        let values = m
            .values()
            .map(|v| Value::from_field_json(v).unwrap_or(Value::Null))
            .collect();
        Some(Record {
            schema: Schema::new(names),
            values,
            position: like.position.clone(),
        })
    }

    /// The cancellation (C) of the version INPS has, rebuilt from the ledger's values.
    fn cancellation(
        &mut self,
        has: &ledger::Sent,
        like: &Record,
        key: &str,
    ) -> std::result::Result<Option<(Record, Pending)>, String> {
        let Some(old) = has.record.as_deref().and_then(|j| self.restore(j, like)) else {
            return Ok(None);
        };
        let old = self.with_operation(old, 'C');
        let rendered = self
            .layout
            .render_record(&old, &self.params)
            .map_err(|p| p.iter().map(|p| p.reason()).collect::<Vec<_>>().join("; "))?;
        let rendered = RenderedText::new(&self.layout, &rendered);
        let delivery = Delivery {
            key: key.to_string(),
            op: 'C',
            hash: has.hash.clone().unwrap_or_default(),
            record: self.prep.snapshot(&old),
            new: false,
        };
        Ok(Some((old, Pending { rendered, delivery })))
    }

    fn flow_name(&self, giorno: &str, n: i64) -> String {
        format!("{}.{}.{giorno}.{n:07}", self.cfg.ente.codice, self.tipo)
    }

    async fn choose_file_flow(&mut self) -> Result<()> {
        let giorno = chrono::Local::now().format("%Y%m%d").to_string();
        let n = ledger::next_number(&self.db, &self.cfg.ente.codice, self.tipo, &giorno).await?;
        self.file = FileState {
            writer: WriterState::default(),
            flow: self.flow_name(&giorno, n),
            giorno,
            progressivo: n,
        };
        Ok(())
    }

    fn header_for(&self, flow: &str) -> Result<Vec<XElem>> {
        let mut p = self.params.clone();
        p.insert("flow_name".into(), flow.to_string());
        self.layout.render_header(&p)
    }

    fn target(&self) -> PathBuf {
        PathBuf::from(self.cfg.dir.clone().unwrap_or_else(|| "out/siuss".into()))
            .join(format!("{}.xml", self.file.flow))
    }
}

impl Sink for SiussSink {
    fn describe(&self) -> String {
        match self.cfg.channel {
            Channel::File => format!(
                "siuss {} file flows in {} (layout {})",
                self.tipo,
                self.cfg.dir.as_deref().unwrap_or("out/siuss"),
                self.cfg.layout
            ),
            Channel::Waas => format!(
                "siuss {} WaaS queue on `{}` (layout {})",
                self.tipo, self.cfg.connection, self.cfg.layout
            ),
        }
    }

    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        Some(self.prep.clone())
    }

    fn open<'a>(&'a mut self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<SavedCheckpoint>>> {
        Box::pin(async move {
            self.pipeline = pipeline.to_string();
            // Before anything is read: a checkpoint, the ledger and the flow numbers are
            // only this run's to decide from once no other run of the flow can change them.
            self.run_lock =
                Some(ledger::lock_run(&self.db, &self.cfg.ente.codice, self.tipo).await?);
            match self.cfg.channel {
                Channel::Waas => match ledger::checkpoint(&self.db, pipeline).await? {
                    Some(s) => serde_json::from_str(&s).map(Some).map_err(|e| {
                        Error::Other(format!(
                            "the checkpoint of `{pipeline}` in _snodo_checkpoint is unreadable ({e}); delete that row to start over"
                        ))
                    }),
                    None => Ok(None),
                },
                Channel::File => {
                    let Some(out) = self.out.as_mut() else {
                        return Ok(None);
                    };
                    let saved = out.open(pipeline)?;
                    let Some(saved) = saved.filter(|s| !s.done) else {
                        return Ok(None);
                    };
                    let state: FileState =
                        serde_json::from_value(out.state().clone()).unwrap_or_default();
                    if state.flow.is_empty() {
                        return Ok(Some(saved));
                    }
                    // Killed after the flow was released in the store but before the file
                    // was renamed into place: publish it now, as released.
                    if let Some(sha) = ledger::released(&self.db, &state.flow).await? {
                        let done = SavedCheckpoint {
                            done: true,
                            ..saved
                        };
                        let a = out.adopt_complete(&done, &sha)?;
                        tracing::warn!(flow = %state.flow, path = %a.path, "completed the publication of a flow released by an interrupted run");
                        return Ok(Some(done));
                    }
                    Ok(Some(saved))
                }
            }
        })
    }

    fn begin<'a>(&'a mut self, resume: Option<&'a SavedCheckpoint>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.cfg.channel == Channel::Waas {
                return Ok(());
            }
            if let Some(out) = self.out.as_mut() {
                out.begin(resume)?;
            }
            let restored: Option<FileState> = match (resume, &self.out) {
                (Some(_), Some(out)) => serde_json::from_value(out.state().clone()).ok(),
                _ => None,
            };
            match restored.filter(|s| !s.flow.is_empty()) {
                Some(s) => self.file = s,
                None => {
                    let n =
                        ledger::clear_staged(&self.db, &self.cfg.ente.codice, self.tipo).await?;
                    if n > 0 {
                        tracing::info!(
                            records = n,
                            "discarded versions staged in a flow that was never released"
                        );
                    }
                    self.choose_file_flow().await?;
                }
            }
            // A first send (the city's whole history of prestazioni, the one flow of a
            // million records) would look up each key in a ledger that can only have the
            // keys this run staged itself, and the source gives each key once: PostgreSQL
            // spent 3.1 s of a 1M-prestazioni run on those lookups (docs/benchmarks.md).
            // Asked once here, after the versions of an unreleased flow were discarded. A
            // key that does come twice is still staged once: its second insert meets the
            // first and is upserted (`ledger::stage`), as with a lookup that ran before
            // the first was staged. Not for WaaS, where each record is released as it is
            // written and a repeated key must be compared with what INPS has.
            self.first_send = ledger::is_empty(&self.db, &self.cfg.ente.codice, self.tipo).await?;
            if self.first_send {
                tracing::info!(
                    ente = %self.cfg.ente.codice,
                    tipo = self.tipo,
                    "first send: the ledger has no version of this flow type, keys are not looked up"
                );
            }
            self.writer.state = self.file.writer.clone();
            self.header = self.header_for(&self.file.flow)?;
            let target = self.target();
            if let Some(out) = self.out.as_mut() {
                out.set_target(target);
            }
            Ok(())
        })
    }

    fn check<'a>(
        &'a mut self,
        batch: &'a mut Batch,
        ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // What `check` decided for a batch that was never written (a dry run, or a run
            // stopped by its reject limit) is forgotten: the deliveries of one batch at
            // most are held, whatever the input's size. Without this a dry run of 100k
            // prestazioni held every rendered record (398 MB at the end).
            self.pending.clear();
            let mut records = std::mem::take(&mut batch.records);
            // 1. The current versions, rendered and checked on the step workers (or now,
            //    for a batch that did not go through them).
            let preps = match batch
                .prepared
                .take()
                .and_then(|p| p.downcast::<Vec<Prep>>().ok())
            {
                Some(p) if p.len() == records.len() => *p,
                _ => self.prep.prepare_records(&mut records),
            };
            struct Candidate {
                record: Record,
                key: String,
                cancelled: bool,
                current: Option<Current>,
            }
            let mut candidates = Vec::with_capacity(records.len());
            for (r, p) in records.into_iter().zip(preps) {
                let Some(key) = p.key else {
                    batch.rejects.push(ctx.reject(
                        "sink",
                        "siuss.key".into(),
                        format!(
                            "the record has no value for the key field(s) {}: it cannot be tracked across deliveries",
                            self.cfg.key.join(", ")
                        ),
                        &r,
                    ));
                    continue;
                };
                match p.current {
                    Some(Err(problems)) => batch.rejects.push(xsd_reject(&problems, &r, ctx)),
                    current => candidates.push(Candidate {
                        record: r,
                        key,
                        cancelled: p.cancelled,
                        current: current.and_then(|c| c.ok()),
                    }),
                }
            }
            // 2. What INPS already has.
            let sent = if self.first_send {
                HashMap::new()
            } else {
                let keys: Vec<String> = candidates.iter().map(|c| c.key.clone()).collect();
                ledger::lookup(&self.db, &self.cfg.ente.codice, self.tipo, &keys).await?
            };
            // 3. Decide.
            let mut out = Vec::with_capacity(candidates.len());
            for c in candidates {
                let prior = sent.get(&c.key);
                let has = prior.filter(|s| matches!(s.stato.as_str(), "inviato" | "accettato"));
                let hash = c.current.as_ref().map(|c| c.hash.as_str()).unwrap_or("");
                let unchanged = prior.and_then(|s| s.hash.as_deref()) == Some(hash);
                let correction =
                    !c.cancelled && has.is_some() && !unchanged && self.binds_operation;
                if c.cancelled || correction {
                    // The version INPS has is cancelled first (then, for a correction, the
                    // new one follows).
                    let why = if c.cancelled {
                        "cancellation"
                    } else {
                        "correction"
                    };
                    match has.map(|h| self.cancellation(h, &c.record, &c.key)) {
                        Some(Ok(Some((old, pending)))) => {
                            self.pending.push_back(pending);
                            out.push(old);
                        }
                        Some(Err(problems)) => {
                            batch.rejects.push(ctx.reject(
                                "sink",
                                "siuss.cancellation".into(),
                                format!("the {why} of the version INPS has cannot be written: {problems}"),
                                &c.record,
                            ));
                            continue;
                        }
                        Some(Ok(None)) | None => {}
                    }
                    if c.cancelled {
                        if has.is_none() {
                            // Never sent, or already cancelled: nothing to tell INPS.
                            batch.filtered += 1;
                        }
                        continue;
                    }
                }
                let Some(current) = c.current else { continue };
                match prior {
                    Some(s) if unchanged && matches!(s.stato.as_str(), "inviato" | "accettato") => {
                        batch.filtered += 1;
                        continue;
                    }
                    Some(s) if unchanged && s.stato == "scartato" => {
                        batch.rejects.push(ctx.reject(
                            "sink",
                            "inps.da_correggere".into(),
                            format!(
                                "INPS refused this version on {}: {}; correct the record: it is sent again once it changes",
                                s.esito_il.as_deref().unwrap_or("?"),
                                s.esito_descrizione.as_deref().unwrap_or("no description")
                            ),
                            &c.record,
                        ));
                        continue;
                    }
                    _ => {}
                }
                let delivery = Delivery {
                    key: c.key,
                    op: 'I',
                    hash: current.hash,
                    record: current.snapshot,
                    new: prior.is_none(),
                };
                self.pending.push_back(Pending {
                    rendered: current.rendered,
                    delivery,
                });
                out.push(c.record);
            }
            batch.records = out;
            Ok(())
        })
    }

    fn keys(&self, records: &[Record]) -> Vec<String> {
        (0..records.len())
            .map(|i| match self.pending.get(i) {
                Some(p) => format!("siuss {} {} ({})", self.tipo, p.delivery.key, p.delivery.op),
                None => String::new(),
            })
            .collect()
    }

    fn write<'a>(
        &'a mut self,
        records: &'a [Record],
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if self.pending.len() != records.len() {
                return Err(Error::Other(format!(
                    "internal error: {} records to write but {} checked; nothing was written",
                    records.len(),
                    self.pending.len()
                )));
            }
            let batch: Vec<Pending> = self.pending.drain(..).collect();
            let ente = self.cfg.ente.codice.clone();
            match self.cfg.channel {
                Channel::File => {
                    let mut text = String::with_capacity(batch.len() * 1024);
                    if !batch.is_empty() && !self.writer.state.started {
                        self.writer.start_document(&self.header, &mut text);
                    }
                    for p in &batch {
                        self.writer.write_text(&p.rendered, &mut text);
                    }
                    self.file.writer = self.writer.state.clone();
                    let job = FileJob {
                        records: batch.len() as u64,
                        deliveries: batch.into_iter().map(|p| p.delivery).collect(),
                        text,
                        state: serde_json::to_value(&self.file)
                            .map_err(|e| Error::Other(e.to_string()))?,
                        checkpoint: checkpoint.clone(),
                    };
                    let records = job.records;
                    let committer = match &mut self.committer {
                        Some(c) => c,
                        None => {
                            let out = self.out.take().ok_or_else(|| {
                                Error::Other("internal error: file flow without output".into())
                            })?;
                            let task = FileCommit {
                                layout: self.layout.clone(),
                                xmllint: self.cfg.xmllint,
                                checks: None,
                                db: self.db.clone(),
                                ente,
                                tipo: self.tipo,
                                flow: self.file.flow.clone(),
                                stats: std::mem::take(&mut self.ledger_stats),
                                out,
                            };
                            self.committer
                                .insert(Committer::start(task, "the SIUSS file-flow writer"))
                        }
                    };
                    committer.commit(job, records).await
                }
                Channel::Waas => {
                    let layout = self.layout.clone();
                    let params = self.params.clone();
                    let entries: Vec<WaasEntry> = batch
                        .iter()
                        .map(|p| {
                            let layout = layout.clone();
                            let params = params.clone();
                            let rendered = &p.rendered;
                            WaasEntry {
                                delivery: &p.delivery,
                                render: Box::new(move |id: &str| {
                                    let mut params = params.clone();
                                    params.insert("flow_name".into(), id.to_string());
                                    // The header was checked with the same values and a
                                    // valid name when the sink was built.
                                    let header = layout.render_header(&params).unwrap_or_default();
                                    XmlWriter::single(&layout, &header, rendered)
                                }),
                            }
                        })
                        .collect();
                    let giorno = chrono::Local::now().format("%Y%m%d").to_string();
                    let codice = self.cfg.ente.codice.clone();
                    let tipo = self.tipo;
                    let cp = serde_json::to_string(checkpoint)
                        .map_err(|e| Error::Other(e.to_string()))?;
                    let ids = ledger::enqueue(
                        &self.db,
                        &ente,
                        tipo,
                        &checkpoint.run_id,
                        &entries,
                        &self.pipeline,
                        &cp,
                        |n| (giorno.clone(), format!("{codice}.{tipo}.{giorno}.{n:07}")),
                    )
                    .await?;
                    self.ledger_stats.written(&self.db, ids.len()).await?;
                    for (id, p) in ids.iter().zip(&batch) {
                        self.queued_hash.update(id.as_bytes());
                        self.queued_hash.update(p.delivery.hash.as_bytes());
                        self.queued_bytes += 1;
                    }
                    self.queued.extend(ids);
                    Ok(())
                }
            }
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match &mut self.committer {
                Some(c) => c.flush().await,
                None => Ok(()),
            }
        })
    }

    fn uncommitted(&self) -> u64 {
        self.committer.as_ref().map_or(0, Committer::uncommitted)
    }

    fn finish<'a>(
        &'a mut self,
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<Vec<Artifact>>> {
        Box::pin(async move {
            match self.cfg.channel {
                Channel::Waas => {
                    let cp = serde_json::to_string(checkpoint)
                        .map_err(|e| Error::Other(e.to_string()))?;
                    ledger::save_checkpoint(&self.db, &self.pipeline, &cp).await?;
                    if self.queued.is_empty() {
                        return Ok(Vec::new());
                    }
                    let first = self.queued.first().cloned().unwrap_or_default();
                    let last = self.queued.last().cloned().unwrap_or_default();
                    Ok(vec![Artifact {
                        path: format!("siuss_flusso {first} … {last}"),
                        size: self.queued_bytes,
                        sha256: hex::encode(std::mem::take(&mut self.queued_hash).finalize()),
                        rows: self.queued.len() as u64,
                        destination: "INPS SIUSS (WaaS, pulled by INPS)".into(),
                        checks: vec![format!(
                            "xsd:{}",
                            self.layout
                                .schema_file
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        )],
                    }])
                }
                Channel::File => {
                    let mut checks = None;
                    if let Some(c) = self.committer.take() {
                        let back = c.finish().await?;
                        self.out = Some(back.out);
                        checks = back.checks;
                    }
                    let target = self.target().display().to_string();
                    let out = self.out.as_mut().ok_or_else(|| {
                        Error::Other("internal error: file flow without output".into())
                    })?;
                    if self.writer.state.records == 0 {
                        tracing::info!(
                            flow = self.tipo,
                            "nothing new to send: no flow is released and no number is used"
                        );
                        out.discard()?;
                        return Ok(Vec::new());
                    }
                    let mut tail = String::new();
                    self.writer.end_document(&mut tail);
                    out.append_tail(tail.as_bytes())?;
                    let checks = match checks {
                        Some(mut c) => {
                            c.feed(tail.as_bytes());
                            c.finish(out.partial())?
                        }
                        // A resumed flow whose batches were all written before the run
                        // stopped: none added to the file in this run, so it is checked
                        // whole.
                        None => release_checks(
                            self.layout.schema.clone(),
                            &self.layout.schema_file,
                            out.partial(),
                            self.cfg.xmllint,
                        )?,
                    };
                    let (size, sha) = out.content_hash()?;
                    ledger::release_file(
                        &self.db,
                        &FileFlow {
                            ente: &self.cfg.ente.codice,
                            tipo: self.tipo,
                            giorno: &self.file.giorno,
                            progressivo: self.file.progressivo,
                            id_flusso: &self.file.flow,
                            run_id: &checkpoint.run_id,
                            path: &target,
                            sha256: &sha,
                            records: self.writer.state.records as i64,
                        },
                    )
                    .await?;
                    let mut a = out.finish_hashed(checkpoint, size, sha)?;
                    a.checks = checks;
                    Ok(vec![a])
                }
            }
        })
    }
}
