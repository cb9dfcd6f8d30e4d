use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use snodo_core::component::{Artifact, Prepare, Prepared, SavedCheckpoint, Sink};
use snodo_core::db::{Db, quote_ident, quote_table};
use snodo_core::error::{Error, Result};
use snodo_core::record::{Batch, Record};
use snodo_core::steps::StepContext;
use snodo_core::value::{Value, ValueType};
use sqlx::Row;

use super::config::SqlSinkConfig;
use super::pg_writer::{self, Buffers, CopyGroup, CopyGroups, Job, PgWriter, Target, pg_literal};
use super::values::{self, BinaryType};

pub(crate) const CHECKPOINT_DDL: &str = "CREATE TABLE IF NOT EXISTS _snodo_checkpoint (
    pipeline TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL)";
pub(crate) const CHECKPOINT_GET: &str = "SELECT state FROM _snodo_checkpoint WHERE pipeline = $1";
/// The checkpoint upsert with `values` in place of its row: one text for the bound form
/// ([`CHECKPOINT_PUT`]) and the literal form the PostgreSQL writer sends with `COMMIT`.
macro_rules! checkpoint_put {
    ($values:literal) => {
        concat!(
            "INSERT INTO _snodo_checkpoint (pipeline, state, updated_at) VALUES ",
            $values,
            "\n    ON CONFLICT (pipeline) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at"
        )
    };
}
pub(crate) const CHECKPOINT_PUT: &str = checkpoint_put!("($1, $2, $3)");

/// SQLite allows 32766 bound parameters per statement; stay well below.
const SQLITE_MAX_PARAMS: usize = 30_000;

/// Upserts records into a table, one transaction per batch (or per `commit_rows` records on
/// PostgreSQL), with the checkpoint inside it.
pub struct SqlSink {
    cfg: SqlSinkConfig,
    db: Db,
    connection: String,
    pipeline: String,
    table_columns: Option<Vec<String>>,
    /// PostgreSQL: the task that commits the batches, started at the first write.
    writer: Option<PgWriter>,
    /// PostgreSQL: `COPY` data the step workers encoded ([`CopyEncoder`]), for the batches
    /// checked but not yet written, oldest first.
    encoded: VecDeque<Encoded>,
    /// PostgreSQL: what encodes the batches, on the step workers ([`Sink::preparer`]) or
    /// here; its buffers come back from the writer.
    encoder: Arc<CopyEncoder>,
    /// PostgreSQL: batches accepted but not yet handed to the writer, which are committed
    /// together once they hold `commit_rows` records.
    held: Held,
}

/// The fewest records a `COPY` carries for the sink to send it in the binary format.
///
/// Why: PostgreSQL 15 pays at the start of each binary `COPY` for up to 1000 tuple slots
/// (each pinning the table's descriptor in the transaction's resource owner; a text `COPY`
/// of such rows makes about 400), so binary `COPY`s of 2000 rows cost it more CPU than
/// text ones, and from about 5000 rows on less. 1M rows of the CSV benchmark by `psql`:
/// 2.17-2.24 s of the server's CPU in binary transactions of 8000 rows, against
/// 2.35-2.45 s in text ones of 8000 and 2.36-2.49 s of 4000 (docs/benchmarks.md).
const BINARY_MIN_ROWS: u64 = 5000;

/// Encoded batches waiting for the writer (`commit_rows`), with the checkpoint of the last
/// one. A batch waiting here is already in the flow log, as one handed to the writer is: a
/// run stopped meanwhile reads it again from the last committed checkpoint.
#[derive(Default)]
struct Held {
    groups: CopyGroups,
    records: u64,
    /// The last batch's checkpoint + `COMMIT` (see [`SqlSink::write_pg`]).
    close: Option<String>,
    /// Records of batches accepted before a hand-over to the writer failed: never
    /// committed, they stay counted as not committed, and `flush` fails on them.
    lost: u64,
}

impl Held {
    /// Adds a batch's groups: a group of the same schema and format as the last one held
    /// joins it (its rows go into the same `COPY`).
    fn add(&mut self, groups: CopyGroups, records: u64, close: String) {
        for g in groups {
            match self.groups.last_mut() {
                Some(last) if Arc::ptr_eq(&last.schema, &g.schema) && last.binary == g.binary => {
                    last.data.extend(g.data);
                }
                _ => self.groups.push(g),
            }
        }
        self.records += records;
        self.close = Some(close);
    }
}

/// The target's columns whose type has a binary `COPY` form ([`BinaryType`]).
type ColumnTypes = HashMap<String, BinaryType>;

/// Encodes a batch's records for `COPY` on the step workers, so that the sink's single
/// task only sends them: encoding was a sixth of the sink's time in the CSV benchmark,
/// spent while PostgreSQL waited for the data. In the binary format when the `COPY` will
/// carry [`BINARY_MIN_ROWS`] records or more and the sink has read the target's column
/// types (not yet for the first batches of a run that creates its table), in text
/// otherwise.
struct CopyEncoder {
    /// The target's column types, set by the sink once the table is known.
    types: OnceLock<ColumnTypes>,
    /// The sink's `commit_rows`.
    commit_rows: u64,
    /// Shared with the writer, which hands the buffers back.
    buffers: Arc<Buffers>,
}

impl CopyEncoder {
    /// A batch's records as `COPY` groups, in binary if the `COPY` will carry enough rows.
    fn encode(&self, records: &[Record]) -> CopyGroups {
        let rows = self.commit_rows.max(records.len() as u64);
        let types = self.types.get().filter(|_| rows >= BINARY_MIN_ROWS);
        copy_groups(records, types, &self.buffers)
    }
}

impl Prepare for CopyEncoder {
    fn prepare(&self, records: &mut [Record]) -> Prepared {
        Box::new((records.len(), self.encode(records)))
    }
}

/// Encoded `COPY` text and the records it was made from (their address and number: the
/// runtime moves a batch's records without copying them, so they identify the batch).
struct Encoded {
    records: (usize, usize),
    groups: CopyGroups,
}

/// How many encoded batches are kept for writes to come: the runtime checks a batch
/// while the previous one is written, so two suffice; more would only be stale.
const ENCODED_KEPT: usize = 4;

/// Records of a batch normally share one schema; a source whose records differ (JSON lines
/// with optional keys) is written in runs of equal schema, so that a field absent from a
/// record is never turned into a NULL in the table. Each run in the binary format when
/// `types` has every one of its fields and each value has the binary form of its column's
/// type ([`values::copy_binary`]), in the text format otherwise.
fn copy_groups(records: &[Record], types: Option<&ColumnTypes>, buffers: &Buffers) -> CopyGroups {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let schema = records[start].schema.clone();
        let mut end = start;
        while end < records.len() && Arc::ptr_eq(&records[end].schema, &schema) {
            end += 1;
        }
        let run = &records[start..end];
        let binary = types.and_then(|types| {
            schema
                .names()
                .iter()
                .map(|n| types.get(n).copied())
                .collect::<Option<Vec<_>>>()
        });
        let mut data = buffers.take();
        let binary = binary.is_some_and(|columns| copy_binary_rows(run, &columns, &mut data));
        if !binary {
            data.clear();
            copy_text_rows(run, &mut data);
        }
        groups.push(CopyGroup {
            schema,
            binary,
            data: vec![data],
        });
        start = end;
    }
    groups
}

/// `COPY` text format, one line per record.
fn copy_text_rows(records: &[Record], data: &mut Vec<u8>) {
    data.reserve(records.len() * 256);
    for r in snodo_core::record::prefetching(records) {
        for (i, v) in r.values.iter().enumerate() {
            if i > 0 {
                data.push(b'\t');
            }
            values::copy_text(v, data);
        }
        data.push(b'\n');
    }
}

/// `COPY` binary format for records whose fields are `columns` (the tuples only: the
/// writer adds the stream's header and trailer, so that the tuples of consecutive batches
/// can go into one `COPY`), appended to `data`; `false` at the first value without a binary
/// form for its column (`data` then holds part of the run).
fn copy_binary_rows(records: &[Record], columns: &[BinaryType], data: &mut Vec<u8>) -> bool {
    let Ok(count) = i16::try_from(columns.len()) else {
        return false;
    };
    data.reserve(records.len() * 256);
    for r in snodo_core::record::prefetching(records) {
        if r.values.len() != columns.len() {
            return false; // the text form lets PostgreSQL say what is wrong with the row
        }
        data.extend_from_slice(&count.to_be_bytes());
        for (v, ty) in r.values.iter().zip(columns) {
            if !values::copy_binary(v, *ty, data) {
                return false;
            }
        }
    }
    true
}

fn identity(records: &[Record]) -> (usize, usize) {
    (records.as_ptr() as usize, records.len())
}

impl SqlSink {
    /// Builds the sink.
    pub fn new(cfg: SqlSinkConfig, db: Db, connection: &str) -> Self {
        let commit_rows = cfg.commit_rows;
        SqlSink {
            cfg,
            db,
            connection: connection.to_string(),
            pipeline: String::new(),
            table_columns: None,
            writer: None,
            encoded: VecDeque::new(),
            encoder: Arc::new(CopyEncoder {
                types: OnceLock::new(),
                commit_rows,
                buffers: Arc::default(),
            }),
            held: Held::default(),
        }
    }

    fn ctx(&self, what: &str) -> String {
        format!(
            "{what} table `{}` on connection `{}`",
            self.cfg.table, self.connection
        )
    }

    async fn existing_columns(&mut self) -> Result<Vec<String>> {
        let ctx = self.ctx("inspecting");
        let (schema, table) = match self.cfg.table.split_once('.') {
            Some((s, t)) => (Some(s.to_string()), t.to_string()),
            None => (None, self.cfg.table.clone()),
        };
        match &self.db {
            Db::Sqlite(p) => {
                let rows = sqlx::query("SELECT name FROM pragma_table_info($1)")
                    .bind(&table)
                    .fetch_all(p)
                    .await
                    .map_err(|e| Error::db(&ctx, e))?;
                Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
            }
            Db::Postgres(p) => {
                let rows = sqlx::query(
                    "SELECT column_name::text FROM information_schema.columns
                     WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2
                     ORDER BY ordinal_position",
                )
                .bind(schema)
                .bind(&table)
                .fetch_all(p)
                .await
                .map_err(|e| Error::db(&ctx, e))?;
                Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
            }
        }
    }

    /// Makes sure the table exists and every field of `records` is one of its columns.
    async fn ensure_table(&mut self, records: &[Record]) -> Result<()> {
        if self.table_columns.is_some() {
            return Ok(());
        }
        let mut cols = self.existing_columns().await?;
        if cols.is_empty() {
            if !self.cfg.create_table {
                return Err(Error::Input(format!(
                    "table `{}` does not exist on connection `{}`; create it, or set `create_table: true` in the sink",
                    self.cfg.table, self.connection
                )));
            }
            let Some(first) = records.first() else {
                return Ok(());
            };
            let dialect = self.db.dialect();
            let mut defs = Vec::new();
            for (i, name) in first.schema.names().iter().enumerate() {
                let ty = self.cfg.types.get(name).copied().unwrap_or_else(|| {
                    records
                        .iter()
                        .find_map(|r| r.values.get(i).and_then(Value::value_type))
                        .unwrap_or(ValueType::String)
                });
                defs.push(format!(
                    "{} {}",
                    quote_ident(name),
                    values::sql_type(ty, dialect)
                ));
            }
            let keys: Vec<String> = self.cfg.key.iter().map(|k| quote_ident(k)).collect();
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
                quote_table(&self.cfg.table),
                defs.join(", "),
                keys.join(", ")
            );
            let ctx = self.ctx("creating");
            match &self.db {
                Db::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(ddl))
                    .execute(p)
                    .await
                    .map(|_| ()),
                Db::Postgres(p) => sqlx::query(sqlx::AssertSqlSafe(ddl))
                    .execute(p)
                    .await
                    .map(|_| ()),
            }
            .map_err(|e| Error::db(&ctx, e))?;
            cols = self.existing_columns().await?;
        }
        for k in &self.cfg.key {
            if !cols.contains(k) {
                return Err(Error::Input(format!(
                    "key column `{k}` is not a column of table `{}` (columns: {})",
                    self.cfg.table,
                    cols.join(", ")
                )));
            }
        }
        self.table_columns = Some(cols);
        self.load_column_types().await
    }

    /// PostgreSQL: reads the types of the target's columns for the binary `COPY`, once the
    /// table exists (at the start of a run for a table that is there, else once the sink
    /// made it: the batches encoded before that go as text).
    async fn load_column_types(&mut self) -> Result<()> {
        let Db::Postgres(p) = &self.db else {
            return Ok(());
        };
        if self.encoder.types.get().is_some() {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT attname::text, atttypid::int8 FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(quote_table(&self.cfg.table))
        .fetch_all(p)
        .await
        .map_err(|e| Error::db(self.ctx("inspecting"), e))?;
        if rows.is_empty() {
            return Ok(()); // not there yet
        }
        let types = rows
            .iter()
            .filter_map(|r| {
                let oid = u32::try_from(r.get::<i64, _>(1)).ok()?;
                Some((r.get::<String, _>(0), BinaryType::from_oid(oid)?))
            })
            .collect();
        let _ = self.encoder.types.set(types);
        Ok(())
    }

    fn check_fields(&self, names: &[String]) -> Result<()> {
        let cols = self.table_columns.as_deref().unwrap_or(&[]);
        for n in names {
            if !cols.contains(n) {
                return Err(Error::Input(format!(
                    "field `{n}` is not a column of table `{}` (columns: {}); drop it with a `select` step or add the column",
                    self.cfg.table,
                    cols.join(", ")
                )));
            }
        }
        for k in &self.cfg.key {
            if !names.contains(k) {
                return Err(Error::Input(format!(
                    "the records have no field `{k}`, which is the sink's key"
                )));
            }
        }
        Ok(())
    }

    /// `table:k1=v1,k2=v2`: the lineage key of a record, made once per record on the sink's
    /// loop, in one allocation.
    fn target_key(&self, r: &Record) -> String {
        let mut out = String::with_capacity(self.cfg.table.len() + 32);
        out.push_str(&self.cfg.table);
        out.push(':');
        for (i, k) in self.cfg.key.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            match r.get(k) {
                // Integer keys (most of them) written in place, not through a string each.
                Some(Value::Int(i)) => {
                    use std::fmt::Write;
                    let _ = write!(out, "{i}"); // writing into a String cannot fail
                }
                Some(v) => {
                    if let Some(text) = v.to_text() {
                        out.push_str(&text);
                    }
                }
                None => {}
            }
        }
        out
    }

    async fn write_sqlite(&mut self, records: &[Record], state: &str, now: &str) -> Result<()> {
        let Db::Sqlite(pool) = &self.db else {
            return Err(dialect_mismatch());
        };
        let ctx = self.ctx("writing to");
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| Error::db(&ctx, e))?;
        // Records of one batch normally share a schema; group runs of the same schema.
        let mut start = 0;
        while start < records.len() {
            let schema = records[start].schema.clone();
            let names = schema.names().to_vec();
            self.check_fields(&names)?;
            let per_stmt = (SQLITE_MAX_PARAMS / names.len().max(1)).max(1);
            let mut end = start;
            while end < records.len()
                && end - start < per_stmt
                && std::sync::Arc::ptr_eq(&records[end].schema, &schema)
            {
                end += 1;
            }
            let row = format!("({})", vec!["?"; names.len()].join(", "));
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {} {}",
                quote_table(&self.cfg.table),
                names
                    .iter()
                    .map(|n| quote_ident(n))
                    .collect::<Vec<_>>()
                    .join(", "),
                vec![row.as_str(); end - start].join(", "),
                update_clause(&self.cfg.key, &names)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in &records[start..end] {
                for v in &r.values {
                    q = values::bind_sqlite(q, v);
                }
            }
            q.execute(&mut *tx).await.map_err(|e| Error::db(&ctx, e))?;
            start = end;
        }
        sqlx::query(CHECKPOINT_PUT)
            .bind(&self.pipeline)
            .bind(state)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(&ctx, e))?;
        tx.commit().await.map_err(|e| Error::db(&ctx, e))?;
        Ok(())
    }

    async fn write_pg(&mut self, records: &[Record], state: &str, now: &str) -> Result<()> {
        // The text the workers encoded for these records, or encoded here.
        let id = identity(records);
        let mut groups = None;
        while !records.is_empty()
            && let Some(e) = self.encoded.pop_front()
        {
            if e.records == id {
                groups = Some(e.groups);
                break;
            }
        }
        let groups = groups.unwrap_or_else(|| {
            if !records.is_empty() {
                tracing::debug!(
                    table = %self.cfg.table,
                    records = records.len(),
                    "COPY text encoded by the sink: not prepared on a worker"
                );
            }
            self.encoder.encode(records)
        });
        for g in &groups {
            self.check_fields(g.schema.names())?;
        }

        // The checkpoint travels with the COMMIT, in one simple-protocol message.
        let close = format!(
            concat!(checkpoint_put!("({}, {}, {})"), ";\nCOMMIT"),
            pg_literal(&self.pipeline)?,
            pg_literal(state)?,
            pg_literal(now)?
        );
        self.held.add(groups, records.len() as u64, close);
        // A batch with no records left (all filtered or rejected) only moves the held
        // checkpoint on; `finish` and `flush` send what is held.
        if self.held.records < self.cfg.commit_rows {
            return Ok(());
        }
        self.hand_over(records.len() as u64).await
    }

    /// Hands the held batches to the writer as one job. `current` records of them are the
    /// batch being written now: if the hand-over fails, that batch's `write` fails and the
    /// runtime does not count it, while the batches held before it were accepted and stay
    /// counted as not committed ([`Sink::uncommitted`]).
    async fn hand_over(&mut self, current: u64) -> Result<()> {
        let Some(close) = self.held.close.take() else {
            return Ok(());
        };
        let held = std::mem::take(&mut self.held);
        self.held.lost = held.lost;
        let accepted_before = held.records.saturating_sub(current);
        let sent = self.send(held.groups, close, held.records).await;
        if sent.is_err() {
            self.held.lost += accepted_before;
        }
        sent
    }

    /// Sends one job to the writer, starting it if need be.
    async fn send(&mut self, groups: CopyGroups, close: String, records: u64) -> Result<()> {
        let Db::Postgres(pool) = &self.db else {
            return Err(dialect_mismatch());
        };
        let writer = match &mut self.writer {
            Some(w) => w,
            None => {
                let ctx = self.ctx("writing to");
                let conn = pool.acquire().await.map_err(|e| Error::db(&ctx, e))?;
                let target = Target {
                    table: self.cfg.table.clone(),
                    key: self.cfg.key.clone(),
                    ctx,
                };
                self.writer
                    .insert(pg_writer::start(conn, target, self.encoder.buffers.clone()))
            }
        };
        writer.commit(Job { groups, close }, records).await
    }

    async fn save(&mut self, records: &[Record], checkpoint: &SavedCheckpoint) -> Result<()> {
        if !records.is_empty() {
            self.ensure_table(records).await?;
        }
        let state = serde_json::to_string(checkpoint).map_err(|e| Error::Other(e.to_string()))?;
        let now = chrono::Utc::now().to_rfc3339();
        match self.db {
            Db::Sqlite(_) => self.write_sqlite(records, &state, &now).await,
            Db::Postgres(_) => self.write_pg(records, &state, &now).await,
        }
    }
}

/// `ON CONFLICT (key) DO UPDATE SET` every non-key column (or `DO NOTHING` when the
/// record has only key columns).
pub(super) fn update_clause(key: &[String], names: &[String]) -> String {
    let sets: Vec<String> = names
        .iter()
        .filter(|n| !key.contains(n))
        .map(|n| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
        .collect();
    let keys: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    if sets.is_empty() {
        format!("ON CONFLICT ({}) DO NOTHING", keys.join(", "))
    } else {
        format!(
            "ON CONFLICT ({}) DO UPDATE SET {}",
            keys.join(", "),
            sets.join(", ")
        )
    }
}

fn dialect_mismatch() -> Error {
    Error::Other("internal error: dialect mismatch in the SQL sink".into())
}

impl Sink for SqlSink {
    fn describe(&self) -> String {
        format!("sql {} table {}", self.connection, self.cfg.table)
    }

    fn open<'a>(&'a mut self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<SavedCheckpoint>>> {
        Box::pin(async move {
            self.pipeline = pipeline.to_string();
            let ctx = format!("reading the checkpoint on connection `{}`", self.connection);
            let row = match &self.db {
                Db::Sqlite(p) => {
                    sqlx::query(CHECKPOINT_DDL)
                        .execute(p)
                        .await
                        .map_err(|e| Error::db(&ctx, e))?;
                    sqlx::query(CHECKPOINT_GET)
                        .bind(pipeline)
                        .fetch_optional(p)
                        .await
                        .map_err(|e| Error::db(&ctx, e))?
                        .map(|r| r.get::<String, _>(0))
                }
                Db::Postgres(p) => {
                    sqlx::query(CHECKPOINT_DDL)
                        .execute(p)
                        .await
                        .map_err(|e| Error::db(&ctx, e))?;
                    sqlx::query(CHECKPOINT_GET)
                        .bind(pipeline)
                        .fetch_optional(p)
                        .await
                        .map_err(|e| Error::db(&ctx, e))?
                        .map(|r| r.get::<String, _>(0))
                }
            };
            row.map(|s| {
                serde_json::from_str(&s).map_err(|e| {
                    Error::Other(format!(
                        "the checkpoint of `{pipeline}` in _snodo_checkpoint is unreadable ({e}); delete that row to start over"
                    ))
                })
            })
            .transpose()
        })
    }

    fn begin<'a>(&'a mut self, _resume: Option<&'a SavedCheckpoint>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.load_column_types())
    }

    fn keys(&self, records: &[Record]) -> Vec<String> {
        records.iter().map(|r| self.target_key(r)).collect()
    }

    /// `check` only keeps the text the workers encoded, found again by the records it was
    /// made from, and `keys` reads the records alone.
    fn checks_ahead(&self) -> bool {
        true
    }

    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        match self.db {
            Db::Postgres(_) => Some(self.encoder.clone()),
            Db::Sqlite(_) => None,
        }
    }

    fn check<'a>(
        &'a mut self,
        batch: &'a mut Batch,
        _ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<()>> {
        if let Some(p) = batch.prepared.take()
            && let Ok(prepared) = p.downcast::<(usize, CopyGroups)>()
            && prepared.0 == batch.records.len()
        {
            if self.encoded.len() == ENCODED_KEPT {
                self.encoded.pop_front();
            }
            self.encoded.push_back(Encoded {
                records: identity(&batch.records),
                groups: prepared.1,
            });
        }
        Box::pin(async { Ok(()) })
    }

    fn write<'a>(
        &'a mut self,
        records: &'a [Record],
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.save(records, checkpoint))
    }

    fn finish<'a>(
        &'a mut self,
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<Vec<Artifact>>> {
        Box::pin(async move {
            self.save(&[], checkpoint).await?;
            self.flush().await?;
            Ok(Vec::new())
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.held.lost > 0 {
                // A hand-over failed and its batches went nowhere: the run must not count
                // them as written (the runtime subtracts `uncommitted` when this fails).
                return Err(Error::Other(format!(
                    "{} records held for `commit_rows` could not be handed to the PostgreSQL writer: not written",
                    self.held.lost
                )));
            }
            self.hand_over(0).await?;
            match &mut self.writer {
                Some(w) => w.flush().await,
                None => Ok(()),
            }
        })
    }

    fn uncommitted(&self) -> u64 {
        self.held.records + self.held.lost + self.writer.as_ref().map_or(0, PgWriter::uncommitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snodo_core::record::{Schema, SourcePosition};

    fn record(schema: &Arc<Schema>, values: Vec<Value>) -> Record {
        Record {
            schema: schema.clone(),
            values,
            position: SourcePosition::default(),
        }
    }

    fn types() -> ColumnTypes {
        [("id", BinaryType::Int8), ("n", BinaryType::Numeric)]
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect()
    }

    /// A run of records goes in the binary format only when every value has the binary
    /// form of its column's type; one text in a `numeric` column sends the run as text,
    /// which PostgreSQL parses (or refuses) as it always did. A field the table's types do
    /// not cover, or no types yet, is text too.
    #[test]
    fn a_value_without_its_columns_binary_form_sends_the_run_as_text() {
        let s = Schema::new(vec!["id".into(), "n".into()]);
        let typed = vec![
            record(
                &s,
                vec![Value::Int(1), Value::Decimal("1.50".parse().unwrap())],
            ),
            record(&s, vec![Value::Int(2), Value::Null]),
        ];
        let g = copy_groups(&typed, Some(&types()), &Buffers::default());
        assert_eq!(g.len(), 1);
        assert!(g[0].binary);
        // Two fields, then the first one: 8 bytes of 1.
        assert_eq!(&g[0].data[0][..14], b"\0\x02\0\0\0\x08\0\0\0\0\0\0\0\x01");

        let mut mixed = typed;
        mixed.push(record(&s, vec![Value::Int(3), Value::Str("4,5".into())]));
        let g = copy_groups(&mixed, Some(&types()), &Buffers::default());
        assert!(!g[0].binary);
        assert_eq!(g[0].data, [b"1\t1.50\n2\t\\N\n3\t4,5\n".to_vec()]);

        assert!(!copy_groups(&mixed[..1], None, &Buffers::default())[0].binary);
        let other = Schema::new(vec!["id".into(), "note".into()]);
        let r = [record(&other, vec![Value::Int(1), Value::Str("x".into())])];
        assert!(!copy_groups(&r, Some(&types()), &Buffers::default())[0].binary);
    }

    /// Held batches of one schema and format join one group (one `COPY`), their parts kept
    /// apart and in order; another schema or format starts a group of its own. The last
    /// batch's checkpoint closes the transaction, and every record is counted.
    #[test]
    fn held_batches_join_one_copy_per_schema_and_format() {
        let s = Schema::new(vec!["id".into()]);
        let t = Schema::new(vec!["id".into(), "x".into()]);
        let group = |schema: &Arc<Schema>, binary, data: &[u8]| CopyGroup {
            schema: schema.clone(),
            binary,
            data: vec![data.to_vec()],
        };
        let mut held = Held::default();
        held.add(vec![group(&s, true, b"a")], 2, "first".into());
        held.add(vec![group(&s, true, b"b")], 3, "second".into());
        assert_eq!(held.groups.len(), 1);
        assert_eq!(held.groups[0].data, [b"a".to_vec(), b"b".to_vec()]);
        held.add(
            vec![group(&s, false, b"c"), group(&t, false, b"d")],
            4,
            "third".into(),
        );
        let shapes: Vec<(usize, bool, usize)> = held
            .groups
            .iter()
            .map(|g| (g.schema.len(), g.binary, g.data.len()))
            .collect();
        assert_eq!(shapes, [(1, true, 2), (1, false, 1), (2, false, 1)]);
        assert_eq!(held.records, 9);
        assert_eq!(held.close.as_deref(), Some("third"));
    }
}
