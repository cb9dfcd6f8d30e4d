//! The PostgreSQL sink's writer: a task that owns the sink's session and commits each
//! batch (its `COPY` text and its checkpoint) in one transaction, while the runtime's sink
//! loop already logs and hands over the next batch.
//!
//! Why a task: when the sink loop waited for each `COMMIT`, PostgreSQL's work and the
//! flow log's append ran in turn at every batch, and both cores sat idle for four
//! seconds per million rows in the CSV benchmark (docs/benchmarks.md). Nothing about
//! the guarantees changes: a batch is still logged before it is committed, still
//! committed with its checkpoint, and [`Committer::flush`] tells the runtime whether
//! everything it handed over was committed, so that a run's counts stand only for
//! committed rows.
//!
//! Why batches commit asynchronously (`synchronous_commit = off` for each batch's
//! transaction): a synchronous `COMMIT` waits for PostgreSQL to flush the WAL to disk,
//! and the writer waited for 500 of those per million rows, a fifth to a quarter of the
//! CSV load's wall time (6.0-6.6 s against 4.8-4.9 s for 1M rows, docs/benchmarks.md). An
//! asynchronous commit is visible and ordered at once; only a crash of the *server* (not of
//! snodo) in the next fraction of a second can undo it, and then it undoes the batch and its
//! checkpoint together, since they are one transaction: the next run resumes from the
//! checkpoint that survived and upserts the same rows again. Before a run says what it
//! wrote (the runtime's flush, and the sink's finish), [`Task::sync`] commits one
//! synchronous transaction, which PostgreSQL only acknowledges once the WAL up to it,
//! every batch before it included, is on disk.

use std::sync::Arc;

use snodo_core::committer::{Commit, Committer};
use snodo_core::db::{quote_ident, quote_table};
use snodo_core::error::{Error, Result};
use snodo_core::record::Schema;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;

use super::values;

/// A run of a batch's records with one schema, encoded for `COPY`.
pub(super) struct CopyGroup {
    /// The records' fields: the `COPY`'s columns.
    pub schema: Arc<Schema>,
    /// `data` is in the binary format (its tuples: the writer adds the stream's header and
    /// trailer), not in the text one.
    pub binary: bool,
    /// The rows, in one part per batch: the batches a job carries go into one `COPY`
    /// without being copied into one buffer first.
    pub data: Vec<Vec<u8>>,
}

/// The `COPY` data of a batch's records, in runs of records with one schema.
pub(super) type CopyGroups = Vec<CopyGroup>;

/// What the sink knows of its target, for the writer.
pub(super) struct Target {
    /// The table as configured, for messages.
    pub table: String,
    /// The key columns.
    pub key: Vec<String>,
    /// What a database error is about (`writing to table … on connection …`).
    pub ctx: String,
}

/// Buffers for the encoded rows, handed back by the writer once it has sent them and taken
/// again by the encoders on the step workers.
///
/// Why: a batch's encoded rows are one allocation of about a megabyte, made on a step
/// worker and freed on the writer's thread; the allocator hands such blocks back to the
/// system, and the next batch faulted its pages in again: page faults, zeroing and unmapping
/// were about a twelfth of snodo's CPU in the CSV load into PostgreSQL (docs/benchmarks.md).
#[derive(Default)]
pub(super) struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl Buffers {
    /// Buffers kept at most: the jobs in the writer's queue and the batches in flight
    /// before it. More would only hold memory.
    const KEPT: usize = 8;

    /// An empty buffer, with the capacity of one handed back if there is one.
    pub fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_default()
    }

    /// Buffers larger than this are not kept: one batch of unusually large rows (long
    /// notes, documents) must not leave its size allocated for the rest of the run.
    const KEPT_BYTES: usize = 4 << 20;

    /// Keeps `buffer` (emptied) for a later batch, unless enough are kept.
    pub fn give(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() > Self::KEPT_BYTES {
            return;
        }
        buffer.clear();
        if let Ok(mut kept) = self.0.lock()
            && kept.len() < Self::KEPT
        {
            kept.push(buffer);
        }
    }
}

/// One transaction: the `COPY` data of its batches, and the statements that save the last
/// one's checkpoint and commit.
pub(super) struct Job {
    pub groups: CopyGroups,
    pub close: String,
}

/// Jobs waiting for the writer. A job is encoded rows only (about 250 bytes a record in the
/// CSV benchmark, whose records take about 1.4 KB each in memory), so
/// the sink can run this far ahead of PostgreSQL: when the server falls behind for a
/// moment (it shares the cores with the step workers), the workers keep going instead of
/// waiting for it, and the cores stay busy. Two jobs of 4000 records (the default queue)
/// against six: 1M rows of the CSV benchmark in 3.45 s against 3.25 s (medians of four
/// alternating pairs, docs/benchmarks.md).
const QUEUED: usize = 3;

/// The sink's handle on its writer task.
pub(super) type PgWriter = Committer<Task>;

/// Starts the writer task on `conn`, which it keeps for the whole run (the staging table
/// is temporary and lives as long as the session).
pub(super) fn start(
    conn: PoolConnection<Postgres>,
    target: Target,
    buffers: Arc<Buffers>,
) -> PgWriter {
    let task = Task {
        conn,
        buffers,
        target: quote_table(&target.table),
        t: target,
        mode: Mode::Unknown,
        staging: false,
        unsynced: false,
    };
    Committer::with_queue(task, "the PostgreSQL writer", QUEUED)
}

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not decided yet: the target's indexes have not been read.
    Unknown,
    /// `COPY` straight into the target: for new keys, a third of the upsert's cost in
    /// PostgreSQL (1M rows: 4.4 s against 13 s, docs/benchmarks.md). A batch whose keys
    /// are already there falls back to the upsert, and so does the rest of the run.
    Direct,
    /// `COPY` into a temporary staging table, then `INSERT … ON CONFLICT DO UPDATE`.
    Upsert,
}

pub(super) struct Task {
    conn: PoolConnection<Postgres>,
    /// Where the jobs' buffers go once sent.
    buffers: Arc<Buffers>,
    t: Target,
    /// The table, quoted.
    target: String,
    mode: Mode,
    /// Whether the staging table was made in this session.
    staging: bool,
    /// Whether a batch was committed since the last [`Commit::sync`].
    unsynced: bool,
}

impl Commit for Task {
    type Job = Job;
    async fn commit(&mut self, job: Job) -> Result<()> {
        let written = self.write(&job).await;
        for part in job.groups.into_iter().flat_map(|g| g.data) {
            self.buffers.give(part);
        }
        written?;
        self.unsynced = true;
        Ok(())
    }

    /// A synchronous commit of a transaction that has an id (so that it writes a commit
    /// record): PostgreSQL answers once the WAL up to that record, which holds every
    /// asynchronous commit before it, is flushed. `txid_current()` rather than its newer
    /// name `pg_current_xact_id()`, which servers before PostgreSQL 13 lack.
    async fn sync(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        sqlx::raw_sql("BEGIN; SET LOCAL synchronous_commit TO on; SELECT txid_current(); COMMIT")
            .execute(&mut *self.conn)
            .await
            .map_err(|e| {
                Error::db(
                    format!("{} (making the committed batches durable)", self.t.ctx),
                    e,
                )
            })?;
        self.unsynced = false;
        Ok(())
    }
}

impl Task {
    async fn write(&mut self, job: &Job) -> Result<()> {
        if self.mode == Mode::Unknown
            && job
                .groups
                .iter()
                .any(|g| g.data.iter().any(|d| !d.is_empty()))
        {
            self.mode = if self.has_unique_key_index().await? {
                Mode::Direct
            } else {
                Mode::Upsert
            };
        }
        loop {
            if self.mode == Mode::Upsert && !self.staging {
                self.make_staging().await?;
            }
            let direct = self.mode == Mode::Direct;
            let conn = &mut *self.conn;
            let Err(e) = write_groups(
                conn,
                &self.target,
                &self.t.key,
                &job.groups,
                direct,
                &job.close,
            )
            .await
            else {
                return Ok(());
            };
            // Nothing of the batch is kept: the transaction held only it and its checkpoint.
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            if direct && is_unique_violation(&e) {
                // A key already in the table (or twice in the batch): the unique index
                // refused the COPY, and the batch is written again by the upsert. A run
                // that meets existing keys once (a reload, an incremental load of changed
                // rows) will likely meet them again: failed attempts would only cost time.
                tracing::info!(
                    table = %self.t.table,
                    "keys already in the table: this run upserts from now on"
                );
                self.mode = Mode::Upsert;
                continue;
            }
            if e.to_string().contains("no unique or exclusion constraint") {
                return Err(Error::Input(format!(
                    "table `{}` has no primary key or unique constraint on ({}); the sink's `key` must match one",
                    self.t.table,
                    self.t.key.join(", ")
                )));
            }
            return Err(Error::db(&self.t.ctx, e));
        }
    }

    /// Whether a unique index on exactly the key columns would refuse a key already in the
    /// table: only then may a batch be copied straight in (without one, `COPY` would
    /// duplicate rows that the upsert was meant to replace).
    async fn has_unique_key_index(&mut self) -> Result<bool> {
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
        .bind(&self.target)
        .bind(&self.t.key)
        .fetch_one(&mut *self.conn)
        .await
        .map_err(|e| Error::db(&self.t.ctx, e))
    }

    /// Built from the target's columns but with none of its constraints, defaults or
    /// identity: the staging table only carries what the batch says, plus the records'
    /// order (an identity, which `COPY` fills in line order) so that the last of several
    /// records with the same key wins, as row-by-row upserts would.
    async fn make_staging(&mut self) -> Result<()> {
        for ddl in [
            format!(
                "CREATE TEMP TABLE IF NOT EXISTS snodo_staging ON COMMIT DELETE ROWS AS \
                 SELECT * FROM {} WITH NO DATA",
                self.target
            ),
            "ALTER TABLE pg_temp.snodo_staging \
             ADD COLUMN IF NOT EXISTS _snodo_ord bigint GENERATED ALWAYS AS IDENTITY"
                .to_string(),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
                .execute(&mut *self.conn)
                .await
                .map_err(|e| Error::db(&self.t.ctx, e))?;
        }
        self.staging = true;
        Ok(())
    }
}

/// Writes a batch's `COPY` groups in one transaction, closed by `close` (the checkpoint and
/// `COMMIT`), committed asynchronously (see the module's documentation). The transaction is
/// opened and closed by hand so that a batch costs four round trips (`BEGIN`, the `COPY`
/// and its data, checkpoint + `COMMIT`) instead of seven: on a loaded machine the server
/// process waits for a core at each one. On error the caller rolls back.
async fn write_groups(
    conn: &mut sqlx::PgConnection,
    target: &str,
    key: &[String],
    groups: &CopyGroups,
    direct: bool,
    close: &str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::raw_sql("BEGIN; SET LOCAL synchronous_commit TO off")
        .execute(&mut *conn)
        .await?;
    let several = groups.len() > 1;
    for group in groups {
        let names = group.schema.names();
        let format = if group.binary { "binary" } else { "text" };
        let col_list = names
            .iter()
            .map(|n| quote_ident(n))
            .collect::<Vec<_>>()
            .join(", ");
        if direct {
            let copy = format!("COPY {target} ({col_list}) FROM STDIN (FORMAT {format})");
            copy_in(conn, &copy, &group.data, group.binary).await?;
            continue;
        }
        if several {
            sqlx::raw_sql("TRUNCATE snodo_staging")
                .execute(&mut *conn)
                .await?;
        }
        let copy = format!("COPY snodo_staging ({col_list}) FROM STDIN (FORMAT {format})");
        copy_in(conn, &copy, &group.data, group.binary).await?;
        let keys = key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let upsert = format!(
            "INSERT INTO {target} ({col_list}) SELECT DISTINCT ON ({keys}) {col_list} FROM snodo_staging ORDER BY {keys}, _snodo_ord DESC {update}",
            update = super::sink::update_clause(key, names)
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(upsert))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(close.to_string()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Sends `data` (in the statement's format, in parts) with the `COPY … FROM STDIN`
/// statement `copy`; binary tuples between the format's header and trailer.
async fn copy_in(
    conn: &mut sqlx::PgConnection,
    copy: &str,
    data: &[Vec<u8>],
    binary: bool,
) -> std::result::Result<(), sqlx::Error> {
    let mut c = conn.copy_in_raw(copy).await?;
    let (header, trailer): (&[u8], &[u8]) = if binary {
        (values::COPY_BINARY_HEADER, values::COPY_BINARY_TRAILER)
    } else {
        (&[], &[])
    };
    let chunks = std::iter::once(header)
        .chain(data.iter().flat_map(|part| part.chunks(1 << 20)))
        .chain(std::iter::once(trailer))
        .filter(|c| !c.is_empty());
    for chunk in chunks {
        if let Err(e) = c.send(chunk).await {
            // The server may refuse while the data is still being sent; ending the COPY
            // leaves the connection usable for the rollback.
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

/// A PostgreSQL string literal in the escape form (`E'…'`), read the same whatever
/// `standard_conforming_strings` says. A text with a NUL cannot be stored in PostgreSQL at
/// all.
pub(super) fn pg_literal(text: &str) -> Result<String> {
    if text.contains('\0') {
        return Err(Error::Input(
            "a NUL character cannot be stored in PostgreSQL (pipeline name or checkpoint)".into(),
        ));
    }
    Ok(format!(
        "E'{}'",
        text.replace('\\', "\\\\").replace('\'', "''")
    ))
}

#[cfg(test)]
mod tests {
    use super::{Buffers, pg_literal};

    /// A buffer handed back comes out again empty with its capacity, and no more than
    /// `KEPT` are held.
    #[test]
    fn buffers_come_back_empty_and_are_kept_within_bounds() {
        let b = Buffers::default();
        assert_eq!(b.take().capacity(), 0);
        let mut v = Vec::with_capacity(1000);
        v.extend_from_slice(b"rows");
        b.give(v);
        let again = b.take();
        assert!(again.is_empty() && again.capacity() >= 1000);
        for _ in 0..Buffers::KEPT + 5 {
            b.give(Vec::with_capacity(10));
        }
        assert_eq!(b.0.lock().unwrap().len(), Buffers::KEPT);
        let b = Buffers::default();
        b.give(Vec::with_capacity(Buffers::KEPT_BYTES + 1));
        assert!(
            b.0.lock().unwrap().is_empty(),
            "an oversized buffer is let go"
        );
    }

    #[test]
    fn literals_escape_quotes_and_backslashes_and_refuse_nul() {
        assert_eq!(pg_literal("plain").unwrap(), "E'plain'");
        assert_eq!(pg_literal(r"a'b\c").unwrap(), r"E'a''b\\c'");
        assert!(pg_literal("a\0b").is_err());
    }
}
