use std::sync::Arc;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use snodo_core::component::{Source, SourceContext};
use snodo_core::db::{Db, quote_ident};
use snodo_core::error::{Error, Result};
use snodo_core::record::{Batch, Checkpoint, Schema};
use snodo_core::value::Value;
use sqlx::{Column, Row};
use tokio::sync::mpsc;

use super::config::SqlSourceConfig;
use super::values;

/// Reads a query page by page with keyset paging.
pub struct SqlSource {
    db: Db,
    query: String,
    order: Vec<String>,
    key: Vec<String>,
    incremental: bool,
    describe: String,
}

impl SqlSource {
    /// Builds the source. `query` is the user's query, already read from `query_file`.
    pub fn new(cfg: &SqlSourceConfig, db: Db, query: String, connection: &str) -> Self {
        let mut order = Vec::new();
        if let Some(c) = &cfg.cursor {
            order.push(c.clone());
        }
        for k in &cfg.key {
            if !order.contains(k) {
                order.push(k.clone());
            }
        }
        SqlSource {
            describe: format!("sql {connection} ({})", db.dialect()),
            db,
            query: query.trim().trim_end_matches(';').to_string(),
            order,
            key: cfg.key.clone(),
            incremental: cfg.cursor.is_some(),
        }
    }

    /// `SELECT * FROM (query) q [WHERE (order cols) > (params)] ORDER BY … [LIMIT n]`.
    /// Row-value comparison works on both PostgreSQL and SQLite (3.15+).
    fn page_sql(&self, after: bool, limit: Option<usize>) -> String {
        let cols: Vec<String> = self
            .order
            .iter()
            .map(|c| format!("q.{}", quote_ident(c)))
            .collect();
        // The newline keeps a trailing `-- comment` in the user's query from swallowing
        // the closing parenthesis.
        let mut sql = format!("SELECT * FROM ({}\n) AS q", self.query);
        if after {
            let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
            sql.push_str(&format!(
                " WHERE ({}) > ({})",
                cols.join(", "),
                params.join(", ")
            ));
        }
        sql.push_str(&format!(" ORDER BY {}", cols.join(", ")));
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        sql
    }

    async fn read_all(
        self,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> Result<()> {
        let after: Option<Vec<Value>> = from.as_ref().and_then(|c| {
            c.get("after")?
                .as_array()?
                .iter()
                .map(Value::from_tagged_json)
                .collect::<Option<Vec<_>>>()
        });
        let record_no = from
            .as_ref()
            .and_then(|c| c.get("record"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let mut reader = Reader {
            source: &self,
            after,
            record_no,
            total: 0,
            seq: 0,
            layout: None,
            batch: Batch::default(),
        };
        match &self.db {
            Db::Postgres(p) => reader.stream_postgres(p, &ctx, &tx).await,
            Db::Sqlite(p) => reader.pages_sqlite(p, &ctx, &tx).await,
        }
    }
}

/// The state of one read: where it is, and the batch being filled.
struct Reader<'a> {
    source: &'a SqlSource,
    /// The ordering values of the last row read (the keyset position).
    after: Option<Vec<Value>>,
    record_no: u64,
    /// Rows read by this run (for `--limit`).
    total: u64,
    seq: u64,
    /// The schema, and the positions of the ordering and key columns, from the first row.
    layout: Option<(Arc<Schema>, Vec<usize>, Vec<usize>)>,
    batch: Batch,
}

impl Reader<'_> {
    /// PostgreSQL: one ordered query from the checkpoint, read through a cursor a batch at
    /// a time. Keyset pages re-plan the query for each page, and over a join PostgreSQL
    /// costs a LIMITed page as a share of the whole join: merge joins and nested loops that
    /// start from the first row of the other table, so every page read all the persons
    /// before it (the SIUSS query: 40 ms per page of 500 at 1M prestazioni and growing,
    /// quadratic; docs/benchmarks.md). One query reads each row once.
    ///
    /// Why a cursor rather than the query's own result: PostgreSQL plans a plain query for
    /// its total cost, and for the SIUSS query that meant sorting all 1M interventions
    /// before the first row came out, 3 s in which the rest of the run had nothing to do.
    /// A cursor is planned to return its first rows soon (`cursor_tuple_fraction`), here by
    /// walking the `(persona_id, id)` index: the rows flow from the start, and the whole
    /// read even cost PostgreSQL less CPU (6.8 s against 7.5 s). Rows are fetched one batch
    /// at a time, so memory stays at one batch, and a killed run resumes with the same query
    /// from its checkpoint.
    async fn stream_postgres(
        &mut self,
        pool: &sqlx::PgPool,
        ctx: &SourceContext,
        tx: &mpsc::Sender<Batch>,
    ) -> Result<()> {
        use futures::TryStreamExt;
        let ctx_msg = "reading the source query";
        let sql = self
            .source
            .page_sql(self.after.is_some(), ctx.limit.map(|l| l as usize));
        let mut conn = pool.acquire().await.map_err(|e| Error::db(ctx_msg, e))?;
        // A run that stops early (an error, the runtime's end) leaves the transaction open:
        // the connection is closed rather than handed back to the pool in that state.
        conn.close_on_drop();
        // A cursor lives in a transaction; a read-only one, since a source never writes.
        sqlx::raw_sql("BEGIN READ ONLY")
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::db(ctx_msg, e))?;
        let mut declare = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DECLARE snodo_source NO SCROLL CURSOR FOR {sql}"
        )));
        for v in self.after.iter().flatten() {
            declare = values::bind_pg(declare, v);
        }
        declare
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::db(ctx_msg, e))?;
        let per_fetch = ctx.batch_size.max(1);
        // Not kept prepared: the statement's text is the same for every query, and a cached
        // one would describe the columns of the first cursor it met on this connection.
        let fetch = format!("FETCH FORWARD {per_fetch} FROM snodo_source");
        let mut columns: Option<values::PgColumns> = None;
        loop {
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(fetch.as_str()))
                .persistent(false)
                .fetch(&mut *conn);
            let mut fetched = 0;
            while let Some(row) = rows.try_next().await.map_err(|e| Error::db(ctx_msg, e))? {
                fetched += 1;
                let vals = columns
                    .get_or_insert_with(|| values::PgColumns::of(&row))
                    .decode(&row, ctx.extra_fields)
                    .map_err(Error::Input)?;
                if self.layout.is_none() {
                    let names = row.columns().iter().map(|c| c.name().to_string()).collect();
                    self.set_layout(names)?;
                }
                self.push(vals)?;
                if self.batch.read as usize >= ctx.batch_size && !self.send(tx).await {
                    return Ok(());
                }
            }
            if fetched < per_fetch {
                break;
            }
        }
        self.send(tx).await;
        // Ends the transaction and the cursor.
        sqlx::raw_sql("COMMIT")
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::db(ctx_msg, e))?;
        Ok(())
    }

    /// SQLite: keyset pages, each a fresh query from the last row of the previous one; the
    /// connection is free between pages and SQLite's nested loops start at the key.
    async fn pages_sqlite(
        &mut self,
        pool: &sqlx::SqlitePool,
        ctx: &SourceContext,
        tx: &mpsc::Sender<Batch>,
    ) -> Result<()> {
        let ctx_msg = "reading a page of the source query";
        loop {
            let mut limit = ctx.batch_size;
            if let Some(l) = ctx.limit {
                if self.total >= l {
                    return Ok(());
                }
                limit = limit.min((l - self.total) as usize);
            }
            let sql = self.source.page_sql(self.after.is_some(), Some(limit));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for v in self.after.iter().flatten() {
                q = values::bind_sqlite(q, v);
            }
            let rows = q.fetch_all(pool).await.map_err(|e| Error::db(ctx_msg, e))?;
            let n = rows.len();
            for row in &rows {
                let vals = values::sqlite_row(row, ctx.extra_fields).map_err(Error::Input)?;
                if self.layout.is_none() {
                    let names = row.columns().iter().map(|c| c.name().to_string()).collect();
                    self.set_layout(names)?;
                }
                self.push(vals)?;
            }
            if !self.send(tx).await || n < limit {
                return Ok(());
            }
        }
    }

    /// Finds the ordering and key columns among the query's columns.
    fn set_layout(&mut self, names: Vec<String>) -> Result<()> {
        let find = |c: &String| {
            names.iter().position(|n| n == c).ok_or_else(|| {
                Error::Input(format!(
                    "the query returns no column `{c}` (needed by `key`/`cursor`); columns: {}",
                    names.join(", ")
                ))
            })
        };
        let order_idx = self.source.order.iter().map(find).collect::<Result<_>>()?;
        let key_idx = self.source.key.iter().map(find).collect::<Result<_>>()?;
        self.layout = Some((Schema::new(names), order_idx, key_idx));
        Ok(())
    }

    /// Adds one row to the batch being filled and moves the keyset position to it.
    fn push(&mut self, vals: Vec<Value>) -> Result<()> {
        let Some((schema, order_idx, key_idx)) = &self.layout else {
            return Err(Error::Other(
                "internal error: a row before the columns".into(),
            ));
        };
        self.record_no += 1;
        let keyset = super::Keyset {
            key: &self.source.key,
            key_idx,
            order: &self.source.order,
            order_idx,
        };
        keyset.push(
            &mut self.batch,
            schema,
            vals,
            self.record_no,
            &mut self.after,
        )?;
        self.batch.read += 1;
        self.total += 1;
        Ok(())
    }

    /// Hands on the batch being filled, if it has rows, with the checkpoint after its last
    /// row. `false` when the pipeline stopped taking batches.
    async fn send(&mut self, tx: &mpsc::Sender<Batch>) -> bool {
        if self.batch.read == 0 {
            return true;
        }
        self.seq += 1;
        let mut batch = std::mem::take(&mut self.batch);
        batch.seq = self.seq;
        batch.checkpoint = super::page_checkpoint(&self.after, self.record_no);
        tx.send(batch).await.is_ok()
    }
}

impl Source for SqlSource {
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.query.as_bytes());
        h.update(self.order.join(",").as_bytes());
        format!("sql|{}", hex::encode(h.finalize()))
    }

    fn incremental(&self) -> bool {
        self.incremental
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn run(
        self: Box<Self>,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> BoxFuture<'static, Result<()>> {
        Box::pin(self.read_all(from, ctx, tx))
    }
}
