use std::collections::VecDeque;
use std::sync::Arc;

use futures::future::BoxFuture;
use snodo_core::component::{Artifact, Prepare, Prepared, SavedCheckpoint, Sink};
use snodo_core::db::{Db, quote_ident, quote_table};
use snodo_core::error::{Error, Result};
use snodo_core::record::{Batch, Record};
use snodo_core::steps::StepContext;
use snodo_core::value::{Value, ValueType};
use sqlx::Row;

use super::config::SqlSinkConfig;
use super::pg_writer::{self, CopyGroups, Job, PgWriter, Target, pg_literal};
use super::values;

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

/// Upserts records into a table, one transaction per batch, with the checkpoint inside it.
pub struct SqlSink {
    cfg: SqlSinkConfig,
    db: Db,
    connection: String,
    pipeline: String,
    table_columns: Option<Vec<String>>,
    /// PostgreSQL: the task that commits the batches, started at the first write.
    writer: Option<PgWriter>,
    /// PostgreSQL: `COPY` text the step workers encoded ([`CopyText`]), for the batches
    /// checked but not yet written, oldest first.
    encoded: VecDeque<Encoded>,
}

/// Encodes a batch's records as `COPY` text on the step workers, so that the sink's
/// single task only sends it: encoding was a sixth of the sink's time in the CSV
/// benchmark, spent while PostgreSQL waited for the data.
struct CopyText;

impl Prepare for CopyText {
    fn prepare(&self, records: &mut [Record]) -> Prepared {
        Box::new((records.len(), copy_groups(records)))
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
/// record is never turned into a NULL in the table. `COPY` text format, one line per record.
fn copy_groups(records: &[Record]) -> CopyGroups {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let schema = records[start].schema.clone();
        let mut end = start;
        while end < records.len() && Arc::ptr_eq(&records[end].schema, &schema) {
            end += 1;
        }
        let mut data = Vec::with_capacity((end - start) * 256);
        for r in &records[start..end] {
            for (i, v) in r.values.iter().enumerate() {
                if i > 0 {
                    data.push(b'\t');
                }
                values::copy_text(v, &mut data);
            }
            data.push(b'\n');
        }
        groups.push((schema, data));
        start = end;
    }
    groups
}

fn identity(records: &[Record]) -> (usize, usize) {
    (records.as_ptr() as usize, records.len())
}

impl SqlSink {
    /// Builds the sink.
    pub fn new(cfg: SqlSinkConfig, db: Db, connection: &str) -> Self {
        SqlSink {
            cfg,
            db,
            connection: connection.to_string(),
            pipeline: String::new(),
            table_columns: None,
            writer: None,
            encoded: VecDeque::new(),
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
        let Db::Postgres(pool) = &self.db else {
            return Err(dialect_mismatch());
        };
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
            copy_groups(records)
        });
        for (schema, _) in &groups {
            self.check_fields(schema.names())?;
        }

        // The checkpoint travels with the COMMIT, in one simple-protocol message.
        let close = format!(
            concat!(checkpoint_put!("({}, {}, {})"), ";\nCOMMIT"),
            pg_literal(&self.pipeline)?,
            pg_literal(state)?,
            pg_literal(now)?
        );
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
                self.writer.insert(pg_writer::start(conn, target))
            }
        };
        writer
            .commit(Job { groups, close }, records.len() as u64)
            .await
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
        Box::pin(async { Ok(()) })
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
            Db::Postgres(_) => Some(Arc::new(CopyText)),
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
            match &mut self.writer {
                Some(w) => w.flush().await,
                None => Ok(()),
            }
        })
    }

    fn uncommitted(&self) -> u64 {
        self.writer.as_ref().map_or(0, PgWriter::uncommitted)
    }
}
