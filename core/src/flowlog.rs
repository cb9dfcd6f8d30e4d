//! The flow log: an append-only, hash-chained journal of everything a run did.
//!
//! Every entry (run started, rejects, lineage, artifacts, run finished) is one row whose
//! `hash` is SHA-256 over its own content and the previous row's hash. Editing a row breaks
//! its hash; deleting or reordering rows breaks the chain of `prev_hash` and the
//! contiguous `seq`. What a chain cannot show on its own is the removal of the *last*
//! rows: `snodo log verify` prints the head (seq and hash) so that an auditor can note it
//! or pass it back with `--expect-head` later.
//!
//! Nothing personal is written here: payloads arrive masked, and every body is scrubbed of
//! codici fiscali, IBANs and registered secrets once more before hashing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::component::Artifact;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::record::Reject;
use crate::steps::StepCounts;

/// The hash that precedes the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A run began.
    RunStarted(RunStarted),
    /// A record was rejected.
    Reject(Reject),
    /// Which source records became which target records, for one batch.
    Lineage(Lineage),
    /// A file was produced.
    Artifact(Artifact),
    /// A run ended.
    RunFinished(RunFinished),
    /// A counterpart's outcome for something a run delivered (INPS's esito for a flow).
    Receipt(Receipt),
}

/// A counterpart's outcome for a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Receipt {
    /// What was delivered (`D969.PS.20250131.0000001`).
    pub delivery: String,
    /// The run that delivered it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_by: Option<String>,
    /// The record it carried, by key (`intervento_id=42`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// The outcome code (`OK`, `RICHIESTA_INVALIDA`, …).
    pub outcome: String,
    /// The counterpart's description, personal data scrubbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The counterpart's own identifier (`id_acquisizione_siuss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// When the counterpart processed it.
    pub processed_at: String,
}

impl Entry {
    /// The `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::RunStarted(_) => "run_started",
            Entry::Reject(_) => "reject",
            Entry::Lineage(_) => "lineage",
            Entry::Artifact(_) => "artifact",
            Entry::RunFinished(_) => "run_finished",
            Entry::Receipt(_) => "receipt",
        }
    }
}

/// The start of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunStarted {
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline file path.
    pub file: String,
    /// SHA-256 of the pipeline file's bytes: proves which version ran.
    pub file_sha256: String,
    /// snodo version.
    pub version: String,
    /// `user`, `cron`, `api`.
    pub trigger: String,
    /// True for `--dry-run`.
    pub dry_run: bool,
    /// The interrupted run this one resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
    /// Where records came from.
    pub source: String,
    /// Where records went.
    pub sink: String,
    /// Operating-system user that started the run.
    pub user: String,
    /// Start time (UTC, RFC 3339).
    pub started_at: String,
}

/// Lineage of one batch: `(source record number, target key)` pairs.
///
/// Stored compactly ([`StoredLineage`]): the target keys' common `table:column=` is
/// written once per entry instead of once per pair. Read back, the pairs are whole again, so
/// nothing but the stored text sees the difference.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(into = "StoredLineage", from = "StoredLineage")]
pub struct Lineage {
    /// The source.
    pub source: String,
    /// The target.
    pub target: String,
    /// Pairs of source record number (or source key) and target key.
    pub pairs: Vec<(String, String)>,
}

/// A lineage entry as the log stores it. Why: in a per-record lineage the target keys of
/// a batch all begin with the same `table:column=` (`assistito:id_anagrafica=`), which was
/// more than half of a 1M-row load's 44 MB of lineage text, written, hashed and scanned for
/// personal data once per record.
///
/// `target_prefix` is the first target key up to and including its first `=`, kept only
/// when every target key of the entry begins with it; the stored targets are the rest.
/// Entries written before it existed have no prefix and whole keys, and read the same.
#[derive(Serialize, Deserialize)]
struct StoredLineage {
    source: String,
    target: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    target_prefix: String,
    pairs: Vec<(String, String)>,
}

impl Lineage {
    /// The prefix the stored form takes out of every target key (see [`StoredLineage`]);
    /// empty when the keys do not share one, or when it cannot be scrubbed apart from the
    /// keys (see [`scrubs_apart`]).
    fn target_prefix(&self) -> &str {
        let Some((_, first)) = self.pairs.first() else {
            return "";
        };
        let Some(prefix) = first.find('=').map(|i| &first[..=i]) else {
            return "";
        };
        if scrubs_apart(prefix) && self.pairs.iter().all(|(_, t)| t.starts_with(prefix)) {
            prefix
        } else {
            ""
        }
    }
}

/// Whether a key prefix and the rest of each key can be scrubbed separately with the
/// result of scrubbing the whole keys: the prefix holds nothing to scrub (so a search for
/// a key finds it as written), and no registered secret begins with an end of it (one
/// could then straddle the `=` and escape both scrubs). A codice fiscale or an IBAN cannot
/// straddle it: the `=` breaks the run of letters and digits both need.
fn scrubs_apart(prefix: &str) -> bool {
    matches!(
        crate::mask::redact_cow(prefix),
        std::borrow::Cow::Borrowed(_)
    ) && crate::secret::ends_completing(prefix).is_empty()
}

impl From<Lineage> for StoredLineage {
    fn from(l: Lineage) -> StoredLineage {
        let target_prefix = l.target_prefix().to_string();
        let cut = target_prefix.len();
        StoredLineage {
            pairs: l
                .pairs
                .into_iter()
                .map(|(s, t)| (s, t[cut..].to_string()))
                .collect(),
            source: l.source,
            target: l.target,
            target_prefix,
        }
    }
}

impl From<StoredLineage> for Lineage {
    fn from(s: StoredLineage) -> Lineage {
        let prefix = s.target_prefix;
        Lineage {
            source: s.source,
            target: s.target,
            pairs: if prefix.is_empty() {
                s.pairs
            } else {
                s.pairs
                    .into_iter()
                    .map(|(from, rest)| (from, format!("{prefix}{rest}")))
                    .collect()
            },
        }
    }
}

/// An entry's stored text: its JSON with every string scrubbed of personal data and
/// secrets ([`crate::mask::scrub_json`]).
fn body(e: &Entry) -> String {
    match e {
        Entry::Lineage(l) => lineage_body(l),
        _ => crate::mask::scrub_json(serde_json::to_value(e).unwrap_or_default()).to_string(),
    }
}

/// The body of a lineage entry, written straight from its pairs: exactly the text of the
/// general path (a test compares them), without building a JSON tree of two strings per
/// record and a scrubbed copy of it. The general path was a tenth of the sink loop's CPU
/// in the 1M-row CSV load, the loop that sets that load's pace.
fn lineage_body(l: &Lineage) -> String {
    let prefix = l.target_prefix();
    let body = lineage_body_with(l, prefix);
    // A secret registered (by another run of this process) while the pairs were scrubbed
    // could straddle the prefix: checked again now that they are, the registry only grows.
    if prefix.is_empty() || scrubs_apart(prefix) {
        body
    } else {
        lineage_body_with(l, "")
    }
}

fn lineage_body_with(l: &Lineage, prefix: &str) -> String {
    fn text(out: &mut Vec<u8>, s: &str) {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, crate::mask::redact_cow(s).as_ref());
    }
    let mut out = Vec::with_capacity(64 + prefix.len() + l.pairs.len() * 20);
    out.extend_from_slice(br#"{"kind":"lineage","source":"#);
    text(&mut out, &l.source);
    out.extend_from_slice(br#","target":"#);
    text(&mut out, &l.target);
    if !prefix.is_empty() {
        out.extend_from_slice(br#","target_prefix":"#);
        text(&mut out, prefix);
    }
    out.extend_from_slice(br#","pairs":["#);
    for (i, (from, to)) in l.pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        text(&mut out, from);
        out.push(b',');
        // Every target begins with the prefix (`target_prefix` checked it, or it is empty).
        text(&mut out, &to[prefix.len()..]);
        out.push(b']');
    }
    out.extend_from_slice(b"]}");
    // serde_json writes valid UTF-8 around whole strings.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The end of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RunFinished {
    /// `succeeded`, `failed`, `interrupted`.
    pub status: String,
    /// Records read by this run.
    pub read: u64,
    /// Records written by this run.
    pub written: u64,
    /// Records rejected by this run.
    pub rejected: u64,
    /// Records dropped by filters.
    pub filtered: u64,
    /// Rejects by reason code.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Per-step counts.
    pub steps: Vec<StepCounts>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// End time (UTC, RFC 3339).
    pub finished_at: String,
    /// Duration in milliseconds.
    pub duration_ms: u64,
}

/// One stored row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Time written (UTC, RFC 3339).
    pub ts: String,
    /// The run it belongs to.
    pub run_id: String,
    /// Entry kind.
    pub kind: String,
    /// The entry as JSON text (exactly the hashed bytes).
    pub body: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

impl StoredEntry {
    /// Parses the body.
    pub fn entry(&self) -> Result<Entry> {
        serde_json::from_str(&self.body)
            .map_err(|e| Error::Other(format!("flow log entry {} is not readable: {e}", self.seq)))
    }
}

/// Computes an entry's hash. Fields are length-prefixed so that moving text from one field
/// to the next cannot produce the same bytes.
pub fn entry_hash(seq: i64, ts: &str, run_id: &str, kind: &str, body: &str, prev: &str) -> String {
    let mut h = Sha256::new();
    for part in [seq.to_string().as_str(), ts, run_id, kind, body, prev] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The result of [`FlowLog::verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Entries checked.
    pub entries: u64,
    /// Last sequence number.
    pub head_seq: i64,
    /// Last hash: note it to detect later removal of the newest entries.
    pub head_hash: String,
    /// Problems found (empty when intact).
    pub problems: Vec<String>,
}

/// A run as listed by `snodo runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// How it started.
    pub started: RunStarted,
    /// How it ended, if it did.
    pub finished: Option<RunFinished>,
}

impl RunInfo {
    /// `running` for a run without an end (or one killed before it could write it).
    pub fn status(&self) -> &str {
        self.finished
            .as_ref()
            .map(|f| f.status.as_str())
            .unwrap_or("running or killed")
    }
}

/// The flow log.
#[derive(Debug, Clone)]
pub struct FlowLog {
    db: Db,
}

const SCHEMA_SQLITE: &str = "CREATE TABLE IF NOT EXISTS flow_log (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL)";
const SCHEMA_PG: &str = "CREATE TABLE IF NOT EXISTS flow_log (
    seq BIGINT PRIMARY KEY,
    ts TEXT NOT NULL,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL)";
const INDEX: &str = "CREATE INDEX IF NOT EXISTS flow_log_run ON flow_log (run_id, kind)";
const INDEX_KIND: &str = "CREATE INDEX IF NOT EXISTS flow_log_kind ON flow_log (kind, seq)";
const INSERT: &str = "INSERT INTO flow_log (seq, ts, run_id, kind, body, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)";
const HEAD: &str = "SELECT seq, hash FROM flow_log ORDER BY seq DESC LIMIT 1";
const SELECT: &str = "SELECT seq, ts, run_id, kind, body, prev_hash, hash FROM flow_log";

/// Chains `bodies` after the current head inside an open, locked transaction and commits.
/// A macro because the two databases' transaction types share no usable trait.
macro_rules! append_chain {
    ($tx:ident, $bodies:expr, $ts:expr, $run_id:expr, $ctx:expr) => {{
        let head = sqlx::query(HEAD)
            .fetch_optional(&mut *$tx)
            .await
            .map_err(|e| Error::db($ctx, e))?;
        let (mut seq, mut prev): (i64, String) = match head {
            Some(r) => (
                r.try_get::<i64, _>(0).map_err(|e| Error::db($ctx, e))?,
                r.try_get::<String, _>(1).map_err(|e| Error::db($ctx, e))?,
            ),
            None => (0, GENESIS.to_string()),
        };
        for (body, kind) in $bodies {
            seq += 1;
            let hash = entry_hash(seq, $ts, $run_id, kind, body, &prev);
            sqlx::query(INSERT)
                .bind(seq)
                .bind($ts)
                .bind($run_id)
                .bind(*kind)
                .bind(body)
                .bind(&prev)
                .bind(&hash)
                .execute(&mut *$tx)
                .await
                .map_err(|e| Error::db($ctx, e))?;
            prev = hash;
        }
        $tx.commit().await.map_err(|e| Error::db($ctx, e))?;
    }};
}

fn row_to_entry<R: Row>(r: &R) -> StoredEntry
where
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    StoredEntry {
        seq: r.try_get("seq").unwrap_or_default(),
        ts: r.try_get("ts").unwrap_or_default(),
        run_id: r.try_get("run_id").unwrap_or_default(),
        kind: r.try_get("kind").unwrap_or_default(),
        body: r.try_get("body").unwrap_or_default(),
        prev_hash: r.try_get("prev_hash").unwrap_or_default(),
        hash: r.try_get("hash").unwrap_or_default(),
    }
}

impl FlowLog {
    /// Opens (and creates) the flow log.
    pub async fn open(db: Db) -> Result<FlowLog> {
        let ctx = "creating the flow log table";
        match &db {
            Db::Sqlite(p) => {
                for s in [SCHEMA_SQLITE, INDEX, INDEX_KIND] {
                    sqlx::query(s)
                        .execute(p)
                        .await
                        .map_err(|e| Error::db(ctx, e))?;
                }
            }
            Db::Postgres(p) => {
                // Two processes creating the table at once would race on the catalog.
                let mut tx = p.begin().await.map_err(|e| Error::db(ctx, e))?;
                sqlx::query("SELECT pg_advisory_xact_lock(7366221)")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(ctx, e))?;
                for s in [SCHEMA_PG, INDEX, INDEX_KIND] {
                    sqlx::query(s)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| Error::db(ctx, e))?;
                }
                tx.commit().await.map_err(|e| Error::db(ctx, e))?;
            }
        }
        Ok(FlowLog { db })
    }

    /// Appends entries of one run atomically, chaining each to the previous one.
    pub async fn append(&self, run_id: &str, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let ctx = "writing to the flow log";
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let bodies: Vec<(String, &'static str)> =
            entries.iter().map(|e| (body(e), e.kind())).collect();
        match &self.db {
            Db::Sqlite(p) => {
                // IMMEDIATE takes the write lock before reading the head, so two processes
                // appending at once cannot both chain to the same previous entry.
                let mut tx = p
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(|e| Error::db(ctx, e))?;
                append_chain!(tx, &bodies, &ts, run_id, ctx);
            }
            Db::Postgres(p) => {
                let mut tx = p.begin().await.map_err(|e| Error::db(ctx, e))?;
                sqlx::query("LOCK TABLE flow_log IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(ctx, e))?;
                append_chain!(tx, &bodies, &ts, run_id, ctx);
            }
        }
        Ok(())
    }

    async fn query(&self, sql: String, binds: &[&str]) -> Result<Vec<StoredEntry>> {
        let ctx = "reading the flow log";
        let sql = sqlx::AssertSqlSafe(sql);
        match &self.db {
            Db::Sqlite(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                let rows = q.fetch_all(p).await.map_err(|e| Error::db(ctx, e))?;
                Ok(rows.iter().map(row_to_entry).collect())
            }
            Db::Postgres(p) => {
                let mut q = sqlx::query(sql);
                for b in binds {
                    q = q.bind(*b);
                }
                let rows = q.fetch_all(p).await.map_err(|e| Error::db(ctx, e))?;
                Ok(rows.iter().map(row_to_entry).collect())
            }
        }
    }

    /// Recomputes the whole chain. Reads in pages so memory stays flat on large logs.
    pub async fn verify(&self) -> Result<Verification> {
        let mut v = Verification {
            entries: 0,
            head_seq: 0,
            head_hash: GENESIS.into(),
            problems: Vec::new(),
        };
        // Start below any sequence number, so that rows forged with `seq <= 0` are read
        // (and reported, since the chain starts at 1) rather than skipped.
        let mut last_seq = i64::MIN;
        loop {
            let page = self
                .query(
                    format!("{SELECT} WHERE seq > {last_seq} ORDER BY seq LIMIT 5000"),
                    &[],
                )
                .await?;
            if page.is_empty() {
                break;
            }
            for e in &page {
                v.entries += 1;
                if e.seq <= v.head_seq {
                    v.problems.push(format!(
                        "entry {} is out of sequence (the chain starts at 1 and only grows): a forged or moved entry",
                        e.seq
                    ));
                } else if e.seq != v.head_seq + 1 {
                    v.problems.push(format!(
                        "entry {} follows entry {}: entries {}..{} are missing",
                        e.seq,
                        v.head_seq,
                        v.head_seq + 1,
                        e.seq - 1
                    ));
                }
                if e.prev_hash != v.head_hash {
                    v.problems.push(format!(
                        "entry {} does not chain to the entry before it (deleted, inserted or reordered entries)",
                        e.seq
                    ));
                }
                let h = entry_hash(e.seq, &e.ts, &e.run_id, &e.kind, &e.body, &e.prev_hash);
                if h != e.hash {
                    v.problems.push(format!(
                        "entry {} ({} of run {}) was altered: its content does not match its hash",
                        e.seq, e.kind, e.run_id
                    ));
                }
                v.head_seq = e.seq;
                v.head_hash = e.hash.clone();
            }
            last_seq = v.head_seq;
            if v.problems.len() > 100 {
                v.problems.push("too many problems; stopped".into());
                break;
            }
        }
        Ok(v)
    }

    /// The newest runs first.
    pub async fn runs(&self, limit: u32) -> Result<Vec<RunInfo>> {
        let started = self
            .query(
                format!("{SELECT} WHERE kind = 'run_started' ORDER BY seq DESC LIMIT {limit}"),
                &[],
            )
            .await?;
        let mut out = Vec::with_capacity(started.len());
        for s in started {
            out.push(self.run_info(s).await?);
        }
        Ok(out)
    }

    async fn run_info(&self, started: StoredEntry) -> Result<RunInfo> {
        let Entry::RunStarted(st) = started.entry()? else {
            return Err(Error::Other(format!(
                "entry {} is not a run start",
                started.seq
            )));
        };
        let fin = self
            .query(
                format!(
                    "{SELECT} WHERE run_id = $1 AND kind = 'run_finished' ORDER BY seq DESC LIMIT 1"
                ),
                &[&started.run_id],
            )
            .await?;
        let finished = match fin.first().map(|f| f.entry()).transpose()? {
            Some(Entry::RunFinished(f)) => Some(f),
            _ => None,
        };
        Ok(RunInfo {
            run_id: started.run_id,
            started: st,
            finished,
        })
    }

    /// One run, or an error naming the id that was not found.
    pub async fn run(&self, run_id: &str) -> Result<RunInfo> {
        let s = self
            .query(
                format!("{SELECT} WHERE run_id = $1 AND kind = 'run_started' LIMIT 1"),
                &[run_id],
            )
            .await?;
        match s.into_iter().next() {
            Some(s) => self.run_info(s).await,
            None => Err(Error::Other(format!(
                "no run `{run_id}` in the flow log; `snodo runs` lists them"
            ))),
        }
    }

    /// Entries of one kind for a run.
    pub async fn entries(&self, run_id: &str, kind: &str) -> Result<Vec<StoredEntry>> {
        self.query(
            format!("{SELECT} WHERE run_id = $1 AND kind = $2 ORDER BY seq"),
            &[run_id, kind],
        )
        .await
    }

    /// The runs a run resumed, oldest first, ending with the run itself.
    pub async fn resume_chain(&self, run_id: &str) -> Result<Vec<RunInfo>> {
        let mut chain = vec![self.run(run_id).await?];
        while let Some(prev) = chain.last().and_then(|r| r.started.resumed_from.clone()) {
            if chain.iter().any(|r| r.run_id == prev) || chain.len() > 1000 {
                break;
            }
            chain.push(self.run(&prev).await?);
        }
        chain.reverse();
        Ok(chain)
    }

    /// Rejects of a run *including the runs it resumed*, de-duplicated by step and source
    /// position: a batch that a killed run rejected and its successor re-read is listed once.
    pub async fn rejects(&self, run_id: &str) -> Result<Vec<Reject>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for run in self.resume_chain(run_id).await? {
            for e in self.entries(&run.run_id, "reject").await? {
                if let Entry::Reject(r) = e.entry()?
                    && seen.insert((r.step.clone(), r.position.record))
                {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(|r| r.position.record);
        Ok(out)
    }

    /// Calls `f` with every reject of a run and of the runs it resumed, read page by page
    /// so that memory does not grow with the number of rejects (the migration report reads
    /// tens of thousands). A batch a killed run rejected and its successor re-read is
    /// passed twice: the caller de-duplicates by its own key.
    pub async fn for_each_reject(&self, run_id: &str, mut f: impl FnMut(Reject)) -> Result<()> {
        for run in self.resume_chain(run_id).await? {
            let mut last = i64::MIN;
            loop {
                let page = self
                    .query(
                        format!(
                            "{SELECT} WHERE run_id = $1 AND kind = 'reject' AND seq > {last} ORDER BY seq LIMIT 2000"
                        ),
                        &[&run.run_id],
                    )
                    .await?;
                let Some(tail) = page.last() else { break };
                last = tail.seq;
                for e in &page {
                    if let Entry::Reject(r) = e.entry()? {
                        f(r);
                    }
                }
            }
        }
        Ok(())
    }

    /// Calls `f` with every lineage pair that names `key` on either side (a source record
    /// number or key, or a target key as the sink wrote it), oldest first, with the entry it
    /// is in; only in `run` and the runs it resumed when given. Read page by page (a 1M-row
    /// load logs 180 MB of pairs), and only entries whose text holds the key as a whole JSON
    /// string are parsed. Keys are matched as the log stores them: a codice fiscale or
    /// an IBAN is masked there, so it cannot be searched.
    pub async fn for_each_lineage(
        &self,
        key: &str,
        run: Option<&str>,
        mut f: impl FnMut(&StoredEntry, &Lineage, &str, &str),
    ) -> Result<()> {
        // Text as it appears in a body, as a LIKE pattern (`\` escapes `\`, `%`, `_`).
        fn like(text: &str) -> String {
            let mut pattern = String::from("%");
            for c in text.chars() {
                if matches!(c, '\\' | '%' | '_') {
                    pattern.push('\\');
                }
                pattern.push(c);
            }
            pattern.push('%');
            pattern
        }
        let json = |s: &str| serde_json::Value::from(s).to_string();
        // The key as a whole JSON string (a source key, or a target key of an entry written
        // without a prefix), or its `table:column=` as the entry's prefix and the rest as a
        // string of the pairs (see `StoredLineage`).
        let whole = like(&json(key));
        let (prefix, rest) = match key.find('=') {
            Some(i) => (
                like(&format!("\"target_prefix\":{}", json(&key[..=i]))),
                like(&json(&key[i + 1..])),
            ),
            None => (whole.clone(), whole.clone()),
        };
        let runs: Vec<Option<String>> = match run {
            Some(id) => self
                .resume_chain(id)
                .await?
                .into_iter()
                .map(|r| Some(r.run_id))
                .collect(),
            None => vec![None],
        };
        for run in runs {
            let mut last = i64::MIN;
            loop {
                let run_clause = if run.is_some() { "AND run_id = $4" } else { "" };
                let mut binds = vec![whole.as_str(), prefix.as_str(), rest.as_str()];
                binds.extend(run.as_deref());
                let page = self
                    .query(
                        format!(
                            "{SELECT} WHERE kind = 'lineage' AND (body LIKE $1 ESCAPE '\\' \
                             OR (body LIKE $2 ESCAPE '\\' AND body LIKE $3 ESCAPE '\\')) {run_clause} \
                             AND seq > {last} ORDER BY seq LIMIT 20"
                        ),
                        &binds,
                    )
                    .await?;
                let Some(tail) = page.last() else { break };
                last = tail.seq;
                for e in &page {
                    if let Entry::Lineage(l) = e.entry()? {
                        for (from, to) in &l.pairs {
                            if from == key || to == key {
                                f(e, &l, from, to);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The database behind the log.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_field_and_their_boundaries() {
        let base = entry_hash(1, "t", "r", "k", "{}", GENESIS);
        assert_ne!(base, entry_hash(2, "t", "r", "k", "{}", GENESIS));
        assert_ne!(base, entry_hash(1, "t", "r", "k", "{ }", GENESIS));
        assert_ne!(
            entry_hash(1, "ab", "c", "k", "", ""),
            entry_hash(1, "a", "bc", "k", "", "")
        );
    }

    #[test]
    fn a_lineage_body_is_the_general_path_text_scrubbed_alike() {
        crate::secret::register("lineage-test-secret");
        let l = Lineage {
            source: "csv:assistiti \"2025\".csv".into(),
            target: "sql:pg/assistito".into(),
            pairs: vec![
                ("csv:assistiti.csv#17".into(), "id_anagrafica=42".into()),
                // A key that is a codice fiscale, one with an IBAN, one with a secret,
                // and text that JSON escapes: each scrubbed or escaped as the general path.
                ("#18".into(), "codice_fiscale=RSSMRA80A01D969X".into()),
                (
                    "#19\n\t\u{1}".into(),
                    "iban=IT60X0542811101000000123456".into(),
                ),
                ("àèì \\ /".into(), "token=lineage-test-secret".into()),
            ],
        };
        let general =
            crate::mask::scrub_json(serde_json::to_value(Entry::Lineage(l.clone())).unwrap())
                .to_string();
        let fast = body(&Entry::Lineage(l.clone()));
        assert_eq!(fast, general);
        assert!(!fast.contains("RSSMRA80A01D969X") && !fast.contains("lineage-test-secret"));
        // And it reads back as the entry, its keys scrubbed.
        let back: Entry = serde_json::from_str(&fast).unwrap();
        let Entry::Lineage(back) = back else {
            panic!("{fast}")
        };
        assert_eq!(back.pairs.len(), 4);
        assert_eq!(back.pairs[0], l.pairs[0]);
        assert_eq!(
            back.pairs[1].1,
            format!("codice_fiscale=RSS{}X", "*".repeat(12))
        );
        // No pairs at all.
        let empty = Lineage {
            pairs: Vec::new(),
            ..l
        };
        assert_eq!(
            body(&Entry::Lineage(empty.clone())),
            crate::mask::scrub_json(serde_json::to_value(Entry::Lineage(empty)).unwrap())
                .to_string()
        );
    }

    /// Target keys sharing `table:column=` are stored with it once, and read back whole;
    /// the rests are scrubbed as whole keys would be; a secret that the shared prefix would
    /// split is not split; an entry written before the compact form reads as it did.
    #[test]
    fn lineage_target_keys_share_their_prefix_in_the_stored_text() {
        let pair = |s: &str, t: &str| (s.to_string(), t.to_string());
        let l = Lineage {
            source: "csv in.csv".into(),
            target: "sql store table t".into(),
            pairs: vec![
                pair("1", "t:k=100001"),
                pair("2", "t:k=RSSMRA80A01D969X"),
                pair("3", "t:k=\"q\" %_"),
            ],
        };
        let text = body(&Entry::Lineage(l.clone()));
        assert_eq!(
            text,
            crate::mask::scrub_json(serde_json::to_value(Entry::Lineage(l.clone())).unwrap())
                .to_string()
        );
        assert_eq!(text.matches("t:k=").count(), 1, "{text}");
        assert!(text.contains(r#""target_prefix":"t:k=""#), "{text}");
        assert!(text.contains(r#"["1","100001"]"#), "{text}");
        assert!(!text.contains("RSSMRA80A01D969X"), "{text}");
        let Entry::Lineage(back) = serde_json::from_str(&text).unwrap() else {
            panic!("{text}")
        };
        assert_eq!(back.pairs[0], l.pairs[0]);
        assert_eq!(back.pairs[2], l.pairs[2]);
        assert_eq!(back.pairs[1].1, format!("t:k=RSS{}X", "*".repeat(12)));

        // Keys of different columns keep their whole text.
        let mixed = Lineage {
            pairs: vec![pair("1", "t:k=1"), pair("2", "t:j=2")],
            ..l.clone()
        };
        let text = body(&Entry::Lineage(mixed.clone()));
        assert!(
            !text.contains("target_prefix") && text.contains(r#""t:j=2""#),
            "{text}"
        );

        // `t:w=` ends with the secret's `w=`: a rest could complete it, so the keys keep
        // their whole text, which is then scrubbed.
        crate::secret::register("w=Straddle99");
        let straddling = Lineage {
            pairs: vec![pair("1", "t:w=1"), pair("2", "t:w=Straddle99")],
            ..l.clone()
        };
        let text = body(&Entry::Lineage(straddling.clone()));
        assert!(!text.contains("Straddle99"), "{text}");
        assert!(!text.contains("target_prefix"), "{text}");
        // A prefix that is itself scrubbed (here a codice fiscale in it) is not taken out
        // either: a search for the key as the log shows it must still find it whole.
        let scrubbed = Lineage {
            pairs: vec![
                pair("1", "RSSMRA80A01D969X:k=1"),
                pair("2", "RSSMRA80A01D969X:k=2"),
            ],
            ..l.clone()
        };
        let text = body(&Entry::Lineage(scrubbed));
        assert!(
            !text.contains("target_prefix") && !text.contains("RSSMRA80A01D969X"),
            "{text}"
        );

        // The form written before: no prefix, whole keys.
        let old = r#"{"kind":"lineage","source":"csv in.csv","target":"sql store table t","pairs":[["1","t:k=100001"]]}"#;
        let Entry::Lineage(back) = serde_json::from_str(old).unwrap() else {
            panic!("{old}")
        };
        assert_eq!(back.pairs, vec![pair("1", "t:k=100001")]);
    }

    /// A target key is found in an entry stored with its prefix taken out and in one
    /// stored whole (keys of different columns, as every entry written before the compact
    /// form); a source key likewise; a part of a key finds nothing.
    #[tokio::test]
    async fn a_key_is_found_in_entries_of_either_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db").display().to_string();
        let db = Db::connect(
            &crate::config::connections::ConnectionConfig::Sqlite { path },
            1,
        )
        .await
        .unwrap();
        let log = FlowLog::open(db).await.unwrap();
        let pair = |s: &str, t: &str| (s.to_string(), t.to_string());
        let lineage = |pairs| {
            Entry::Lineage(Lineage {
                source: "csv in.csv".into(),
                target: "sql store".into(),
                pairs,
            })
        };
        let compact = lineage(vec![pair("1", "t:k=10"), pair("2", "t:k=20_%")]);
        let whole = lineage(vec![pair("3", "t:k=30"), pair("4", "u:j=40")]);
        log.append("run-1", &[compact, whole]).await.unwrap();
        let bodies: Vec<String> = log
            .query(format!("{SELECT} WHERE kind = 'lineage' ORDER BY seq"), &[])
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.body)
            .collect();
        assert!(bodies[0].contains("target_prefix"), "{bodies:?}");
        assert!(!bodies[1].contains("target_prefix"), "{bodies:?}");
        let found = |key: &'static str| {
            let log = &log;
            async move {
                let mut hits = Vec::new();
                log.for_each_lineage(key, None, |_, _, from, to| {
                    hits.push(format!("{from}->{to}"))
                })
                .await
                .unwrap();
                hits
            }
        };
        assert_eq!(found("t:k=10").await, ["1->t:k=10"]);
        assert_eq!(found("t:k=20_%").await, ["2->t:k=20_%"]);
        assert_eq!(found("t:k=30").await, ["3->t:k=30"]);
        assert_eq!(found("u:j=40").await, ["4->u:j=40"]);
        assert_eq!(found("2").await, ["2->t:k=20_%"]);
        assert!(found("t:k=1").await.is_empty());
        assert!(found("t:k=").await.is_empty());
    }
}
