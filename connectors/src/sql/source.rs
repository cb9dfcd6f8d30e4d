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

    /// `SELECT * FROM (query) q [WHERE (order cols) > (params)] ORDER BY … LIMIT n`.
    /// Row-value comparison works on both PostgreSQL and SQLite (3.15+).
    fn page_sql(&self, after: bool, limit: usize) -> String {
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
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", cols.join(", ")));
        sql
    }

    async fn read_all(
        self,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> Result<()> {
        let mut after: Option<Vec<Value>> = from.as_ref().and_then(|c| {
            c.get("after")?
                .as_array()?
                .iter()
                .map(Value::from_tagged_json)
                .collect::<Option<Vec<_>>>()
        });
        let mut record_no = from
            .as_ref()
            .and_then(|c| c.get("record"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let mut schema: Option<Arc<Schema>> = None;
        let mut order_idx: Vec<usize> = Vec::new();
        let mut key_idx: Vec<usize> = Vec::new();
        let mut total = 0u64;
        let mut seq = 0;
        loop {
            let mut limit = ctx.batch_size;
            if let Some(l) = ctx.limit {
                if total >= l {
                    return Ok(());
                }
                limit = limit.min((l - total) as usize);
            }
            let sql = sqlx::AssertSqlSafe(self.page_sql(after.is_some(), limit));
            let ctx_msg = "reading a page of the source query";
            let rows: Vec<(Vec<String>, Vec<Value>)> = match &self.db {
                Db::Postgres(p) => {
                    let mut q = sqlx::query(sql);
                    for v in after.iter().flatten() {
                        q = values::bind_pg(q, v);
                    }
                    let rows = q.fetch_all(p).await.map_err(|e| Error::db(ctx_msg, e))?;
                    rows.iter()
                        .map(|r| {
                            let names = r.columns().iter().map(|c| c.name().to_string()).collect();
                            values::pg_row(r).map(|v| (names, v))
                        })
                        .collect::<std::result::Result<_, _>>()
                        .map_err(Error::Input)?
                }
                Db::Sqlite(p) => {
                    let mut q = sqlx::query(sql);
                    for v in after.iter().flatten() {
                        q = values::bind_sqlite(q, v);
                    }
                    let rows = q.fetch_all(p).await.map_err(|e| Error::db(ctx_msg, e))?;
                    rows.iter()
                        .map(|r| {
                            let names = r.columns().iter().map(|c| c.name().to_string()).collect();
                            values::sqlite_row(r).map(|v| (names, v))
                        })
                        .collect::<std::result::Result<_, _>>()
                        .map_err(Error::Input)?
                }
            };
            if rows.is_empty() {
                return Ok(());
            }
            let n = rows.len();
            seq += 1;
            let mut batch = Batch {
                seq,
                ..Default::default()
            };
            for (names, vals) in rows {
                if schema.is_none() {
                    let find = |c: &String| {
                        names.iter().position(|n| n == c).ok_or_else(|| {
                            Error::Input(format!(
                                "the query returns no column `{c}` (needed by `key`/`cursor`); columns: {}",
                                names.join(", ")
                            ))
                        })
                    };
                    order_idx = self.order.iter().map(find).collect::<Result<_>>()?;
                    key_idx = self.key.iter().map(find).collect::<Result<_>>()?;
                    schema = Some(Schema::new(names));
                }
                record_no += 1;
                let keyset = super::Keyset {
                    key: &self.key,
                    key_idx: &key_idx,
                    order: &self.order,
                    order_idx: &order_idx,
                };
                let schema = schema.clone().unwrap_or_default();
                keyset.push(&mut batch, &schema, vals, record_no, &mut after)?;
            }
            batch.read = n as u64;
            total += n as u64;
            batch.checkpoint = super::page_checkpoint(&after, record_no);
            if tx.send(batch).await.is_err() {
                return Ok(());
            }
            if n < limit {
                return Ok(());
            }
        }
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
