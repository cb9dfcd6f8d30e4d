use std::collections::VecDeque;
use std::sync::Arc;

use futures::future::BoxFuture;
use snodo_core::component::{Artifact, Prepare, Prepared, SavedCheckpoint, Sink};
use snodo_core::db::{Db, quote_ident, quote_table};
use snodo_core::error::{Error, Result};
use snodo_core::record::{Batch, Record, Schema};
use snodo_core::steps::StepContext;
use snodo_core::value::{Value, ValueType};
use sqlx::pool::PoolConnection;
use sqlx::{Postgres, Row};

use super::config::SqlSinkConfig;
use super::values;

pub(crate) const CHECKPOINT_DDL: &str = "CREATE TABLE IF NOT EXISTS _snodo_checkpoint (
    pipeline TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL)";
pub(crate) const CHECKPOINT_GET: &str = "SELECT state FROM _snodo_checkpoint WHERE pipeline = $1";
pub(crate) const CHECKPOINT_PUT: &str =
    "INSERT INTO _snodo_checkpoint (pipeline, state, updated_at) VALUES ($1, $2, $3)
    ON CONFLICT (pipeline) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at";

/// SQLite allows 32766 bound parameters per statement; stay well below.
const SQLITE_MAX_PARAMS: usize = 30_000;

/// Upserts records into a table, one transaction per batch, with the checkpoint inside it.
pub struct SqlSink {
    cfg: SqlSinkConfig,
    db: Db,
    connection: String,
    pipeline: String,
    table_columns: Option<Vec<String>>,
    /// PostgreSQL: one connection for the whole run, because the staging table is
    /// temporary and lives as long as the session.
    pg: Option<PoolConnection<Postgres>>,
    /// Decided, and the staging table made, at the first batch with records.
    pg_write: PgWrite,
    /// PostgreSQL: `COPY` text the step workers encoded ([`CopyText`]), for the batches
    /// checked but not yet written, oldest first.
    encoded: VecDeque<Encoded>,
}

/// The `COPY` text of a batch's records, in runs of records with one schema.
type CopyGroups = Vec<(Arc<Schema>, Vec<u8>)>;

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

/// How the PostgreSQL sink writes a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgWrite {
    /// Not decided yet: the target's indexes have not been read, the staging table not made.
    Unknown,
    /// `COPY` straight into the target: for new keys, a third of the upsert's cost in
    /// PostgreSQL (1M rows: 4.4 s against 13 s, docs/benchmarks.md). A batch whose keys
    /// are already there falls back to the upsert, and so does the rest of the run.
    Direct,
    /// `COPY` into a temporary staging table, then `INSERT … ON CONFLICT DO UPDATE`.
    Upsert,
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
            pg: None,
            pg_write: PgWrite::Unknown,
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

    fn target_key(&self, r: &Record) -> String {
        let parts: Vec<String> = self
            .cfg
            .key
            .iter()
            .map(|k| {
                format!(
                    "{k}={}",
                    r.get(k).and_then(Value::to_text).unwrap_or_default()
                )
            })
            .collect();
        format!("{}:{}", self.cfg.table, parts.join(","))
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

    /// Whether a unique index on exactly the key columns would refuse a key already in the
    /// table: only then may a batch be copied straight in (without one, `COPY` would
    /// duplicate rows that the upsert was meant to replace).
    async fn has_unique_key_index(&mut self, ctx: &str) -> Result<bool> {
        let conn = self
            .pg
            .as_deref_mut()
            .ok_or_else(|| Error::Other("no connection".into()))?;
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indimmediate
                 AND i.indpred IS NULL AND i.indexprs IS NULL
                 AND i.indnkeyatts = cardinality($2::text[])
                 AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a
                      WHERE a.attrelid = i.indrelid
                        AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]))
                   = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))",
        )
        .bind(quote_table(&self.cfg.table))
        .bind(&self.cfg.key)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| Error::db(ctx, e))
    }

    async fn write_pg(&mut self, records: &[Record], state: &str, now: &str) -> Result<()> {
        let ctx = self.ctx("writing to");
        let Db::Postgres(pool) = &self.db else {
            return Err(dialect_mismatch());
        };
        if self.pg.is_none() {
            self.pg = Some(pool.acquire().await.map_err(|e| Error::db(&ctx, e))?);
        }
        let target = quote_table(&self.cfg.table);
        if self.pg_write == PgWrite::Unknown && !records.is_empty() {
            self.pg_write = if self.has_unique_key_index(&ctx).await? {
                PgWrite::Direct
            } else {
                PgWrite::Upsert
            };
            // Built from the target's columns but with none of its constraints, defaults
            // or identity: the staging table only carries what the batch says, plus the
            // records' order (an identity, which `COPY` fills in line order) so that the
            // last of several records with the same key wins, as row-by-row upserts would.
            let conn = self
                .pg
                .as_deref_mut()
                .ok_or_else(|| Error::Other("no connection".into()))?;
            for ddl in [
                format!(
                    "CREATE TEMP TABLE IF NOT EXISTS snodo_staging ON COMMIT DELETE ROWS AS \
                     SELECT * FROM {target} WITH NO DATA"
                ),
                "ALTER TABLE pg_temp.snodo_staging \
                 ADD COLUMN IF NOT EXISTS _snodo_ord bigint GENERATED ALWAYS AS IDENTITY"
                    .to_string(),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(ddl))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| Error::db(&ctx, e))?;
            }
        }

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

        let keys: Vec<String> = self.cfg.key.iter().map(|k| quote_ident(k)).collect();
        let table = &self.cfg.table;
        let conn = self
            .pg
            .as_deref_mut()
            .ok_or_else(|| Error::Other("no connection".into()))?;
        let mut tx = sqlx::Connection::begin(conn)
            .await
            .map_err(|e| Error::db(&ctx, e))?;
        let several = groups.len() > 1;
        for (schema, data) in &groups {
            let names = schema.names();
            let col_list = names
                .iter()
                .map(|n| quote_ident(n))
                .collect::<Vec<_>>()
                .join(", ");
            if self.pg_write == PgWrite::Direct {
                // Under a savepoint: a key already in the table (or twice in the batch)
                // makes the unique index refuse the COPY, and the batch is written again
                // by the upsert below.
                let mut attempt = sqlx::Connection::begin(&mut *tx)
                    .await
                    .map_err(|e| Error::db(&ctx, e))?;
                let copy = format!("COPY {target} ({col_list}) FROM STDIN (FORMAT text)");
                match copy_in(&mut attempt, &copy, data).await {
                    Ok(()) => {
                        attempt.commit().await.map_err(|e| Error::db(&ctx, e))?;
                        continue;
                    }
                    Err(e) if is_unique_violation(&e) => {
                        attempt.rollback().await.map_err(|e| Error::db(&ctx, e))?;
                        // A run that meets existing keys once (a reload, an incremental
                        // load of changed rows) will likely meet them again: the failed
                        // attempts would only cost time.
                        tracing::info!(
                            table = %table,
                            "keys already in the table: this run upserts from now on"
                        );
                        self.pg_write = PgWrite::Upsert;
                    }
                    Err(e) => return Err(Error::db(&ctx, e)),
                }
            }
            if several {
                sqlx::query("TRUNCATE snodo_staging")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(&ctx, e))?;
            }
            let copy = format!("COPY snodo_staging ({col_list}) FROM STDIN (FORMAT text)");
            copy_in(&mut tx, &copy, data)
                .await
                .map_err(|e| Error::db(&ctx, e))?;
            let upsert = format!(
                "INSERT INTO {target} ({col_list}) SELECT DISTINCT ON ({k}) {col_list} FROM snodo_staging ORDER BY {k}, _snodo_ord DESC {update}",
                k = keys.join(", "),
                update = update_clause(&self.cfg.key, names)
            );
            let key_list = self.cfg.key.join(", ");
            sqlx::query(sqlx::AssertSqlSafe(upsert))
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if e.to_string().contains("no unique or exclusion constraint") {
                        Error::Input(format!(
                            "table `{table}` has no primary key or unique constraint on ({key_list}); the sink's `key` must match one"
                        ))
                    } else {
                        Error::db(&ctx, e)
                    }
                })?;
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
fn update_clause(key: &[String], names: &[String]) -> String {
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

/// Sends `data` (COPY text format) with the `COPY … FROM STDIN` statement `copy`.
async fn copy_in(
    conn: &mut sqlx::PgConnection,
    copy: &str,
    data: &[u8],
) -> std::result::Result<(), sqlx::Error> {
    let mut c = conn.copy_in_raw(copy).await?;
    for chunk in data.chunks(1 << 20) {
        if let Err(e) = c.send(chunk).await {
            // The server may refuse while the data is still being sent; ending the COPY
            // leaves the connection usable for the savepoint's rollback.
            let _ = c.abort("snodo: batch refused").await;
            return Err(e);
        }
    }
    c.finish().await.map(|_| ())
}

/// Whether PostgreSQL refused a row because its key is already there (`unique_violation`).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
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
            Ok(Vec::new())
        })
    }
}
