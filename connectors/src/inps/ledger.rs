//! The SIUSS ledgers in the canonical store (migration 0002): what was sent per
//! prestazione, the flows released and their numbers, the WaaS queue and INPS's outcomes.
//! Every statement is plain SQL that SQLite and PostgreSQL both accept, so one body serves
//! both pools (the `both!` macro expands it once per pool type).

use std::collections::HashMap;

use snodo_core::db::Db;
use snodo_core::error::{Error, Result};
use sqlx::Row;

/// Runs `$body` with `$p` bound to the SQLite or the PostgreSQL pool.
macro_rules! both {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}
pub(crate) use both;

/// The last version of a record INPS has (or is about to have).
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// `inviato`, `accettato`, `scartato`, `da_reinviare`, `annullato`.
    pub stato: String,
    /// Hash of what was sent.
    pub hash: Option<String>,
    /// The values sent (tagged JSON of the layout's fields), to write a cancellation.
    pub record: Option<String>,
    /// INPS's description of a refusal.
    pub esito_descrizione: Option<String>,
    /// When INPS refused it.
    pub esito_il: Option<String>,
}

/// What one delivery does to the ledger.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The record's key (`intervento_id=42`).
    pub key: String,
    /// `I` (insert, or a SINBA record), `C` (cancellation).
    pub op: char,
    /// Hash of the rendered element.
    pub hash: String,
    /// The record's values, tagged JSON.
    pub record: String,
    /// The ledger had no row for `key` when the sink looked it up: staging it is expected to
    /// insert. Only a hint ([`stage`] falls back to the upsert when the key is there after
    /// all: an earlier batch of the run, still being written when this one was checked,
    /// may have staged it).
    pub new: bool,
}

fn ctx(what: &str) -> String {
    format!(
        "{what} (SIUSS ledger in the canonical store; run `snodo store migrate` if the tables are missing)"
    )
}

/// Keeps PostgreSQL's statistics of `siuss_invio` in step with a run that fills it.
///
/// Without column statistics (a new ledger, or one that a first large send is filling) the
/// planner takes `ente = $1 AND tipo = $2` for a selective condition: [`lookup`] then reads
/// every ledger row of the ente for each batch, with `chiave IN (…)` as a filter instead of
/// an index condition. Measured with `STATS=1 scripts/bench_siuss.sh`: 17 ms per lookup at
/// 50k prestazioni, 127 ms at 200k, two thirds of the run; a first send grew quadratically.
/// Autovacuum analyses only after its nap and a share of the table changed, too late for a
/// run that doubles the table, so the run analyses the ledger itself after its first write and
/// each time the rows it wrote have doubled since: about twenty `ANALYZE`s for a million
/// rows, each reading a fixed-size sample (a few milliseconds). SQLite's planner uses the whole unique index without
/// statistics, so there it does nothing.
#[derive(Debug)]
pub struct Statistics {
    /// Ledger rows this run wrote.
    written: u64,
    /// `written` at which the next `ANALYZE` is due.
    next: u64,
}

impl Default for Statistics {
    fn default() -> Self {
        Statistics {
            written: 0,
            next: 1,
        }
    }
}

impl Statistics {
    /// Counts `rows` more ledger rows written by this run and refreshes the statistics when
    /// they have doubled.
    pub async fn written(&mut self, db: &Db, rows: usize) -> Result<()> {
        self.written += rows as u64;
        if self.written < self.next {
            return Ok(());
        }
        self.next = self.written * 2;
        if let Db::Postgres(p) = db {
            tracing::debug!(rows = self.written, "ANALYZE siuss_invio");
            // Only the columns the run's statements filter on: statistics of the large ones
            // (the versions' JSON) cost the most and serve nothing. By hand on a 100k
            // ledger: 200 ms instead of 370-510 ms per ANALYZE.
            sqlx::query("ANALYZE siuss_invio (ente, tipo, chiave, in_invio_flusso)")
                .execute(p)
                .await
                .map_err(|e| Error::db(ctx("refreshing the statistics of the ledger"), e))?;
        }
        Ok(())
    }
}

/// One run at a time per ente and flow type: held from the sink's `open` until the run
/// ends (dropped with the sink, or with the process if it dies).
///
/// Why: two runs of the same flow at once (a file and a WaaS pipeline, or a scheduled run
/// beside one started by hand) would each decide from a ledger the other is changing. A
/// key sent by one could go out again in the other's file, and a flow number taken by one
/// release could make the other's staged versions read as sent. On PostgreSQL the lock is
/// a session advisory lock on a connection of its own (so it covers runs on other
/// machines, and the server drops it when the connection ends); on SQLite, whose store is
/// a local file, an exclusive lock on a file beside it (`STORE.siuss-ENTE-TIPO.lock`,
/// left in place; the system drops the lock when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _held: Held,
}

#[derive(Debug)]
#[expect(dead_code, reason = "held only for what dropping it releases")]
enum Held {
    Postgres(sqlx::PgConnection),
    File(std::fs::File),
    /// An in-memory SQLite store: only this process can see it.
    Nothing,
}

/// Advisory lock keys: a constant for snodo's SIUSS runs (`SNOD`), then the first four bytes
/// of the SHA-256 of `ente/tipo`. A collision would only make two flows wait for each
/// other.
fn lock_keys(ente: &str, tipo: &str) -> (i32, i32) {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{ente}/{tipo}").as_bytes());
    (0x534E_4F44, i32::from_be_bytes([h[0], h[1], h[2], h[3]]))
}

/// Takes the [`RunLock`] of `ente`'s flows of type `tipo`, or fails at once when another run
/// holds it.
pub async fn lock_run(db: &Db, ente: &str, tipo: &str) -> Result<RunLock> {
    let busy = |held_by: &str| {
        Error::Other(format!(
            "another run of the SIUSS {tipo} flows of ente {ente} is in progress ({held_by}); \
             nothing was done: run again when it has finished (`snodo runs` lists the runs)"
        ))
    };
    let held = match db {
        Db::Postgres(p) => {
            use sqlx::Connection;
            let fail = |e| Error::db(ctx("taking the lock of the flow's runs"), e);
            let mut conn = sqlx::PgConnection::connect_with(&p.connect_options())
                .await
                .map_err(fail)?;
            let (k1, k2) = lock_keys(ente, tipo);
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(k1)
                .bind(k2)
                .fetch_one(&mut conn)
                .await
                .map_err(fail)?;
            if !got {
                return Err(busy(&format!(
                    "it holds PostgreSQL's advisory lock ({k1}, {k2}); see pg_locks"
                )));
            }
            Held::Postgres(conn)
        }
        Db::Sqlite(p) => {
            let store = p.connect_options().get_filename().to_path_buf();
            let name = store.to_string_lossy().into_owned();
            if name.is_empty() || name.starts_with(':') || name.starts_with("file:") {
                Held::Nothing
            } else {
                // Every run must name the same lock file, however its configuration spells
                // the store's path (the file exists: the pool has opened it).
                let store = std::fs::canonicalize(&store).unwrap_or(store);
                let path = std::path::PathBuf::from(format!(
                    "{}.siuss-{ente}-{tipo}.lock",
                    store.display()
                ));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io("opening the lock of the flow's runs", &path, e))?;
                match file.try_lock() {
                    Ok(()) => Held::File(file),
                    Err(std::fs::TryLockError::WouldBlock) => {
                        return Err(busy(&format!("it holds the lock on {}", path.display())));
                    }
                    Err(std::fs::TryLockError::Error(e)) => {
                        return Err(Error::io("locking", &path, e));
                    }
                }
            }
        }
    };
    Ok(RunLock { _held: held })
}

/// Whether the ledger holds no version of `tipo` for `ente`: before a first send, nothing
/// was ever staged or sent, so no key needs looking up.
pub async fn is_empty(db: &Db, ente: &str, tipo: &str) -> Result<bool> {
    let any: bool = both!(db, p => sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM siuss_invio WHERE ente = $1 AND tipo = $2)",
    )
    .bind(ente)
    .bind(tipo)
    .fetch_one(p)
    .await
    .map_err(|e| Error::db(ctx("reading the ledger"), e))?);
    Ok(!any)
}

/// What INPS has of `keys`, from the view `siuss_inviato` (migration 0004): a version staged
/// in a released flow counts as sent.
pub async fn lookup(
    db: &Db,
    ente: &str,
    tipo: &str,
    keys: &[String],
) -> Result<HashMap<String, Sent>> {
    let mut out = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT chiave, stato, hash, record, esito_descrizione, esito_il FROM siuss_inviato \
             WHERE ente = $1 AND tipo = $2 AND chiave IN ({})",
            marks.join(", ")
        );
        let rows = both!(db, p => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(ente).bind(tipo);
            for k in chunk {
                q = q.bind(k);
            }
            q.fetch_all(p).await.map_err(|e| Error::db(ctx("reading what was sent"), e))?
                .into_iter()
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        Sent {
                            stato: r.get::<Option<String>, _>(1).unwrap_or_default(),
                            hash: r.get(2),
                            record: r.get(3),
                            esito_descrizione: r.get(4),
                            esito_il: r.get(5),
                        },
                    )
                })
                .collect::<Vec<_>>()
        });
        out.extend(rows);
    }
    Ok(out)
}

/// The next number of `tipo` for `giorno` (`AAAAMMGG`): one more than the last released.
pub async fn next_number(db: &Db, ente: &str, tipo: &str, giorno: &str) -> Result<i64> {
    let last: Option<i64> = both!(db, p => sqlx::query_scalar(
        "SELECT ultimo FROM siuss_progressivo WHERE ente = $1 AND tipo = $2 AND giorno = $3",
    )
    .bind(ente)
    .bind(tipo)
    .bind(giorno)
    .fetch_optional(p)
    .await
    .map_err(|e| Error::db(ctx("reading the flow numbers"), e))?);
    Ok(last.unwrap_or(0) + 1)
}

/// Rows per staging statement on SQLite: 7 binds each stays under its bind limit, and one
/// statement per few hundred rows keeps the round trips off the critical path (one
/// `INSERT` per record made the PS/PSA benchmark wait on them). PostgreSQL takes the
/// whole batch as arrays in one statement.
const STAGE_ROWS: usize = 500;

/// Records the versions written into the file flow `flow` (not released yet), in one
/// transaction. When a key occurs twice (the C of a correction, then its I), the later
/// delivery is the one staged, as if the rows were applied one by one.
pub async fn stage(
    db: &Db,
    ente: &str,
    tipo: &str,
    flow: &str,
    deliveries: &[Delivery],
) -> Result<()> {
    // One statement cannot touch a row twice (PostgreSQL refuses `ON CONFLICT DO UPDATE`
    // on a key repeated in its VALUES), so only each key's last delivery is kept.
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(deliveries.len());
    for (i, d) in deliveries.iter().enumerate() {
        last.insert(d.key.as_str(), i);
    }
    let rows: Vec<&Delivery> = deliveries
        .iter()
        .enumerate()
        .filter(|(i, d)| last.get(d.key.as_str()) == Some(i))
        .map(|(_, d)| d)
        .collect();
    // A key staged before keeps that version in `in_invio_*` after its flow is released
    // (the release writes no ledger row, migration 0004). Staging the key again must first
    // move what INPS has into the sent columns, or that version would be lost: the view
    // `siuss_inviato`, which resolves it for every reader, is read for the row's old state,
    // so the two cannot disagree. The subquery runs only for keys already in the ledger
    // (a conflict): a first send pays nothing for it.
    const UPSERT: &str = "ON CONFLICT (ente, tipo, chiave) DO UPDATE SET
           (stato, hash, record, id_flusso, run_id, inviato_il, esito, esito_descrizione, esito_il) =
             (SELECT v.stato, v.hash, v.record, v.id_flusso, v.run_id, v.inviato_il, v.esito, v.esito_descrizione, v.esito_il
              FROM siuss_inviato v WHERE v.id = siuss_invio.id),
           in_invio_hash = EXCLUDED.in_invio_hash,
           in_invio_record = EXCLUDED.in_invio_record, in_invio_operazione = EXCLUDED.in_invio_operazione,
           in_invio_flusso = EXCLUDED.in_invio_flusso";
    match db {
        // The columns as arrays: PostgreSQL plans each statement once and reads the rows
        // from four binds, instead of a statement of 500 rows × 4 binds.
        //
        // Keys the ledger did not have when the sink looked them up (all of them in a first
        // send) are inserted without `ON CONFLICT`: PostgreSQL's speculative insertion (an
        // index probe, then the insert, then a confirmation) cost a third more than a plain
        // insert of the same 500 rows of a kilobyte (by hand, 100k rows: 0.8-1.2 s against
        // 0.6-0.8 s, docs/benchmarks.md), and staging the ledger is PostgreSQL's largest
        // share of the PS/PSA flow. A key staged meanwhile (the lookup is a hint, see
        // `Delivery::new`) makes the plain insert fail as a whole; the batch is then
        // staged by the upsert alone, as before the split.
        Db::Postgres(p) => {
            let fail = |e| Error::db(ctx("staging a file flow"), e);
            let mut conn = p.acquire().await.map_err(fail)?;
            let (new, known): (Vec<&Delivery>, Vec<&Delivery>) = rows.iter().partition(|d| d.new);
            let staged = if new.is_empty() || known.is_empty() {
                let conflict = if new.is_empty() { UPSERT } else { "" };
                pg_stage(&mut conn, ente, tipo, flow, &rows, conflict).await
            } else {
                // One transaction for the two, as the single statement was.
                async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    pg_stage(&mut tx, ente, tipo, flow, &new, "").await?;
                    pg_stage(&mut tx, ente, tipo, flow, &known, UPSERT).await?;
                    tx.commit().await
                }
                .await
            };
            match staged {
                Err(e) if is_unique_violation(&e) => {
                    tracing::debug!(
                        flow,
                        "a key looked up as new was in the ledger: the batch is upserted"
                    );
                    pg_stage(&mut conn, ente, tipo, flow, &rows, UPSERT)
                        .await
                        .map_err(fail)?;
                }
                other => other.map_err(fail)?,
            }
        }
        Db::Sqlite(p) => {
            let mut tx = p
                .begin()
                .await
                .map_err(|e| Error::db(ctx("staging a file flow"), e))?;
            for chunk in rows.chunks(STAGE_ROWS) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        let b = 3 + i * 4;
                        format!(
                            "($1, $2, ${}, ${}, ${}, ${}, $3)",
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 4
                        )
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO siuss_invio (ente, tipo, chiave, in_invio_hash, in_invio_record, in_invio_operazione, in_invio_flusso)
                     VALUES {} {UPSERT}",
                    values.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(ente)
                    .bind(tipo)
                    .bind(flow);
                for d in chunk {
                    q = q
                        .bind(&d.key)
                        .bind(&d.hash)
                        .bind(&d.record)
                        .bind(d.op.to_string());
                }
                q.execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(ctx("staging a file flow"), e))?;
            }
            tx.commit()
                .await
                .map_err(|e| Error::db(ctx("staging a file flow"), e))?;
        }
    }
    Ok(())
}

/// One statement staging `rows` in the file flow `flow`: a plain insert when `conflict` is
/// empty, else the upsert it names.
async fn pg_stage(
    conn: &mut sqlx::PgConnection,
    ente: &str,
    tipo: &str,
    flow: &str,
    rows: &[&Delivery],
    conflict: &str,
) -> std::result::Result<(), sqlx::Error> {
    let col = |f: fn(&Delivery) -> &str| rows.iter().map(|d| f(d)).collect::<Vec<&str>>();
    let ops: Vec<String> = rows.iter().map(|d| d.op.to_string()).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO siuss_invio (ente, tipo, chiave, in_invio_hash, in_invio_record, in_invio_operazione, in_invio_flusso)
         SELECT $1, $2, k, h, r, o, $3 FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) AS t(k, h, r, o)
         {conflict}"
    )))
    .bind(ente)
    .bind(tipo)
    .bind(flow)
    .bind(col(|d| &d.key))
    .bind(col(|d| &d.hash))
    .bind(col(|d| &d.record))
    .bind(ops)
    .execute(conn)
    .await
    .map(|_| ())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Forgets what was staged for file flows that were never released (a run that starts
/// over discards its partial file, so those versions never left).
pub async fn clear_staged(db: &Db, ente: &str, tipo: &str) -> Result<u64> {
    let n = both!(db, p => sqlx::query(
        "UPDATE siuss_invio SET in_invio_hash = NULL, in_invio_record = NULL, in_invio_operazione = NULL, in_invio_flusso = NULL
         WHERE ente = $1 AND tipo = $2 AND in_invio_flusso IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM siuss_flusso f WHERE f.id_flusso = siuss_invio.in_invio_flusso)",
    )
    .bind(ente)
    .bind(tipo)
    .execute(p)
    .await
    .map_err(|e| Error::db(ctx("discarding an abandoned flow"), e))?
    .rows_affected());
    Ok(n)
}

/// The SHA-256 registered for a released flow, or `None` when it was never released.
pub async fn released(db: &Db, flow: &str) -> Result<Option<String>> {
    Ok(both!(db, p => sqlx::query_scalar::<_, Option<String>>(
        "SELECT sha256 FROM siuss_flusso WHERE id_flusso = $1",
    )
    .bind(flow)
    .fetch_optional(p)
    .await
    .map_err(|e| Error::db(ctx("reading the flow registry"), e))?)
    .map(Option::unwrap_or_default))
}

/// A file flow to release.
pub struct FileFlow<'a> {
    /// Ente code.
    pub ente: &'a str,
    /// `PS` or `SINBA`.
    pub tipo: &'a str,
    /// `AAAAMMGG`.
    pub giorno: &'a str,
    /// Its number in the day.
    pub progressivo: i64,
    /// `EEEE.PS.AAAAMMGG.NNNNNNN`.
    pub id_flusso: &'a str,
    /// The run that wrote it.
    pub run_id: &'a str,
    /// Where the file is published.
    pub path: &'a str,
    /// Its SHA-256.
    pub sha256: &'a str,
    /// Entries in it.
    pub records: i64,
}

/// Releases a file flow, in one transaction: its number (which must be the next one:
/// no gaps, no repeats) and its registry row. The registry row alone makes the versions
/// staged in the flow the versions INPS has (the view `siuss_inviato`): no ledger row is
/// rewritten, so releasing a million prestazioni costs what releasing ten does.
pub async fn release_file(db: &Db, f: &FileFlow<'_>) -> Result<()> {
    let what = ctx(&format!("releasing flow {}", f.id_flusso));
    let now = chrono::Utc::now().to_rfc3339();
    both!(db, p => {
        let mut tx = p.begin().await.map_err(|e| Error::db(&what, e))?;
        let taken: i64 = sqlx::query_scalar(
            "INSERT INTO siuss_progressivo (ente, tipo, giorno, ultimo) VALUES ($1, $2, $3, 1)
             ON CONFLICT (ente, tipo, giorno) DO UPDATE SET ultimo = siuss_progressivo.ultimo + 1
             RETURNING ultimo",
        )
        .bind(f.ente)
        .bind(f.tipo)
        .bind(f.giorno)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| Error::db(&what, e))?;
        if taken != f.progressivo {
            return Err(Error::Other(format!(
                "flow {} cannot be released: number {taken} is the next one for {} of {}, not {} \
                 (another run released a flow meanwhile); run the pipeline again to write a new flow",
                f.id_flusso, f.tipo, f.giorno, f.progressivo
            )));
        }
        sqlx::query(
            "INSERT INTO siuss_flusso (ente, tipo, id_flusso, giorno, progressivo, canale, run_id, path, sha256, records, creato_il)
             VALUES ($1, $2, $3, $4, $5, 'file', $6, $7, $8, $9, $10)",
        )
        .bind(f.ente)
        .bind(f.tipo)
        .bind(f.id_flusso)
        .bind(f.giorno)
        .bind(f.progressivo)
        .bind(f.run_id)
        .bind(f.path)
        .bind(f.sha256)
        .bind(f.records)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db(&what, e))?;
        tx.commit().await.map_err(|e| Error::db(&what, e))?;
    });
    Ok(())
}

/// One WaaS entry to queue: a delivery and the function that renders its document once
/// its `id_flusso` is known.
pub struct WaasEntry<'a> {
    /// The ledger change.
    pub delivery: &'a Delivery,
    /// Renders the XML document for an `id_flusso`.
    pub render: Box<dyn Fn(&str) -> String + Send + Sync + 'a>,
}

/// Queues WaaS entries and saves the pipeline's checkpoint, in one transaction: numbers
/// (per ente, type and day) and `ts_flusso` values (per ente, strictly increasing) are
/// taken under row locks held until commit, so INPS, reading `ts_flusso > since`, can never
/// see a later entry before an earlier one.
#[allow(clippy::too_many_arguments)]
pub async fn enqueue(
    db: &Db,
    ente: &str,
    tipo: &str,
    run_id: &str,
    entries: &[WaasEntry<'_>],
    pipeline: &str,
    checkpoint: &str,
    naming: impl Fn(i64) -> (String, String),
) -> Result<Vec<String>> {
    let what = ctx("queueing WaaS flows");
    let now = chrono::Utc::now();
    let now_text = now.to_rfc3339();
    let n = entries.len() as i64;
    let (giorno, _) = naming(0);
    let mut ids = Vec::with_capacity(entries.len());
    both!(db, p => {
        let mut tx = p.begin().await.map_err(|e| Error::db(&what, e))?;
        if n > 0 {
            let last_ts: i64 = sqlx::query_scalar(
                "INSERT INTO siuss_progressivo (ente, tipo, giorno, ultimo) VALUES ($1, 'TS', '', $2)
                 ON CONFLICT (ente, tipo, giorno) DO UPDATE SET ultimo = CASE
                   WHEN siuss_progressivo.ultimo + $3 > $2 THEN siuss_progressivo.ultimo + $3 ELSE $2 END
                 RETURNING ultimo",
            )
            .bind(ente)
            .bind(now.timestamp_millis() + n - 1)
            .bind(n)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| Error::db(&what, e))?;
            let last_no: i64 = sqlx::query_scalar(
                "INSERT INTO siuss_progressivo (ente, tipo, giorno, ultimo) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (ente, tipo, giorno) DO UPDATE SET ultimo = siuss_progressivo.ultimo + $4
                 RETURNING ultimo",
            )
            .bind(ente)
            .bind(tipo)
            .bind(&giorno)
            .bind(n)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| Error::db(&what, e))?;
            for (i, e) in entries.iter().enumerate() {
                let no = last_no - n + 1 + i as i64;
                let ts = last_ts - n + 1 + i as i64;
                let (_, id) = naming(no);
                let xml = (e.render)(&id);
                let d = e.delivery;
                sqlx::query(
                    "INSERT INTO siuss_flusso (ente, tipo, id_flusso, giorno, progressivo, canale, run_id, ts_flusso, chiave, operazione, xml, records, creato_il)
                     VALUES ($1, $2, $3, $4, $5, 'waas', $6, $7, $8, $9, $10, 1, $11)",
                )
                .bind(ente)
                .bind(tipo)
                .bind(&id)
                .bind(&giorno)
                .bind(no)
                .bind(run_id)
                .bind(ts)
                .bind(&d.key)
                .bind(d.op.to_string())
                .bind(&xml)
                .bind(&now_text)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(&what, e))?;
                sqlx::query(
                    "INSERT INTO siuss_invio (ente, tipo, chiave, stato, hash, record, id_flusso, run_id, inviato_il)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (ente, tipo, chiave) DO UPDATE SET stato = EXCLUDED.stato, hash = EXCLUDED.hash,
                       record = EXCLUDED.record, id_flusso = EXCLUDED.id_flusso, run_id = EXCLUDED.run_id,
                       inviato_il = EXCLUDED.inviato_il, esito = NULL, esito_descrizione = NULL, esito_il = NULL,
                       in_invio_hash = NULL, in_invio_record = NULL, in_invio_operazione = NULL, in_invio_flusso = NULL",
                )
                .bind(ente)
                .bind(tipo)
                .bind(&d.key)
                .bind(if d.op == 'C' { "annullato" } else { "inviato" })
                .bind(&d.hash)
                .bind(&d.record)
                .bind(&id)
                .bind(run_id)
                .bind(&now_text)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(&what, e))?;
                ids.push(id);
            }
        }
        sqlx::query(crate::sql::CHECKPOINT_PUT)
            .bind(pipeline)
            .bind(checkpoint)
            .bind(&now_text)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(&what, e))?;
        tx.commit().await.map_err(|e| Error::db(&what, e))?;
    });
    Ok(ids)
}

/// The checkpoint a WaaS pipeline saved with its last queued batch.
pub async fn checkpoint(db: &Db, pipeline: &str) -> Result<Option<String>> {
    let what = ctx("reading the checkpoint");
    Ok(both!(db, p => {
        sqlx::query(crate::sql::CHECKPOINT_DDL)
            .execute(p)
            .await
            .map_err(|e| Error::db(&what, e))?;
        sqlx::query_scalar(crate::sql::CHECKPOINT_GET)
            .bind(pipeline)
            .fetch_optional(p)
            .await
            .map_err(|e| Error::db(&what, e))?
    }))
}

/// Saves a checkpoint outside a batch (the final `done` one).
pub async fn save_checkpoint(db: &Db, pipeline: &str, checkpoint: &str) -> Result<()> {
    let what = ctx("saving the checkpoint");
    let now = chrono::Utc::now().to_rfc3339();
    both!(db, p => sqlx::query(crate::sql::CHECKPOINT_PUT)
        .bind(pipeline)
        .bind(checkpoint)
        .bind(&now)
        .execute(p)
        .await
        .map(|_| ())
        .map_err(|e| Error::db(&what, e))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = snodo_core::config::ConnectionConfig::Sqlite {
            path: dir.path().join("store.db").display().to_string(),
        };
        let db = Db::connect(&cfg, 1).await.unwrap();
        snodo_store::migrate(&db).await.unwrap();
        (dir, db)
    }

    fn delivery(key: &str, op: char, version: &str) -> Delivery {
        Delivery {
            key: key.into(),
            op,
            hash: format!("h-{version}"),
            record: format!("{{\"v\":\"{version}\"}}"),
            new: false,
        }
    }

    /// The name of the test's flow number `progressivo`.
    fn flow_id(progressivo: i64) -> String {
        format!("GE.PS.20261204.{progressivo:07}")
    }

    /// Stages `deliveries` in the test's flow number `progressivo`.
    async fn stage_in(db: &Db, progressivo: i64, deliveries: &[Delivery]) {
        stage(db, "GE", "PS", &flow_id(progressivo), deliveries)
            .await
            .unwrap();
    }

    async fn release(db: &Db, progressivo: i64, run: &str) -> String {
        let id = flow_id(progressivo);
        release_file(
            db,
            &FileFlow {
                ente: "GE",
                tipo: "PS",
                giorno: "20261204",
                progressivo,
                id_flusso: &id,
                run_id: run,
                path: "/out/flow.xml",
                sha256: "00",
                records: 1,
            },
        )
        .await
        .unwrap();
        id
    }

    /// (stato, hash) of each key INPS has, by the view.
    async fn has(db: &Db, keys: &[&str]) -> Vec<Option<(String, Option<String>)>> {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let sent = lookup(db, "GE", "PS", &keys).await.unwrap();
        keys.iter()
            .map(|k| sent.get(k).map(|s| (s.stato.clone(), s.hash.clone())))
            .collect()
    }

    fn sent(stato: &str, version: &str) -> Option<(String, Option<String>)> {
        Some((stato.into(), Some(format!("h-{version}"))))
    }

    /// The release writes no ledger row, so the version a released flow carried stays in
    /// the staging columns until the key is staged again. Staging it again must keep that
    /// version as the one INPS has: if the new flow is then abandoned, INPS still has it,
    /// with the run and time of its own release.
    #[tokio::test]
    async fn a_version_released_without_rewriting_its_row_survives_a_later_abandoned_flow() {
        let (_dir, db) = store().await;
        // Nothing staged is sent until its flow is released.
        stage_in(&db, 1, &[delivery("a", 'I', "1"), delivery("b", 'I', "1")]).await;
        assert_eq!(
            has(&db, &["a", "b"]).await,
            [Some((String::new(), None)), Some((String::new(), None))]
        );
        let first = release(&db, 1, "run-1").await;
        assert_eq!(
            has(&db, &["a", "b"]).await,
            [sent("inviato", "1"), sent("inviato", "1")]
        );

        // A correction of `a` and the withdrawal of `b`, staged in flow 2 and released.
        stage_in(&db, 2, &[delivery("a", 'I', "2"), delivery("b", 'C', "1")]).await;
        assert_eq!(
            has(&db, &["a", "b"]).await,
            [sent("inviato", "1"), sent("inviato", "1")],
            "a staged version is not sent before its release"
        );
        release(&db, 2, "run-2").await;
        assert_eq!(
            has(&db, &["a", "b"]).await,
            [sent("inviato", "2"), sent("annullato", "1")]
        );

        // Flow 3 stages `a` again and is never released: its version is discarded and
        // flow 2's is the one INPS has, as released by run-2.
        stage_in(&db, 3, &[delivery("a", 'I', "3")]).await;
        assert_eq!(clear_staged(&db, "GE", "PS").await.unwrap(), 1);
        assert_eq!(
            has(&db, &["a", "b"]).await,
            [sent("inviato", "2"), sent("annullato", "1")]
        );
        let Db::Sqlite(p) = &db else { unreachable!() };
        let row: (String, String, Option<String>) = sqlx::query_as(
            "SELECT id_flusso, run_id, in_invio_flusso FROM siuss_inviato WHERE chiave = 'a'",
        )
        .fetch_one(p)
        .await
        .unwrap();
        assert_eq!(row, ("GE.PS.20261204.0000002".into(), "run-2".into(), None));
        let b: (String, String) =
            sqlx::query_as("SELECT id_flusso, run_id FROM siuss_inviato WHERE chiave = 'b'")
                .fetch_one(p)
                .await
                .unwrap();
        assert_eq!(b, ("GE.PS.20261204.0000002".into(), "run-2".into()));
        // Nothing of flow 1 is left but its registry row.
        assert_ne!(row.0, first);
    }

    /// An outcome INPS refused, recorded on a version sent by WaaS, is cleared when a file
    /// flow carrying a new version is released, and a WaaS send supersedes a version staged
    /// in a released file flow.
    #[tokio::test]
    async fn a_release_clears_the_outcome_of_the_version_it_replaces() {
        let (_dir, db) = store().await;
        let Db::Sqlite(p) = &db else { unreachable!() };
        sqlx::query(
            "INSERT INTO siuss_invio (ente, tipo, chiave, stato, hash, record, id_flusso, run_id, esito, esito_descrizione)
             VALUES ('GE', 'PS', 'a', 'scartato', 'h-0', '{}', 'GE.PS.20261203.0000001', 'run-0', 'RICHIESTA_INVALIDA', 'CF errato')",
        )
        .execute(p)
        .await
        .unwrap();
        let before = lookup(&db, "GE", "PS", &["a".into()]).await.unwrap();
        assert_eq!(before["a"].stato, "scartato");
        assert_eq!(before["a"].esito_descrizione.as_deref(), Some("CF errato"));
        stage_in(&db, 1, &[delivery("a", 'I', "1")]).await;
        assert_eq!(
            lookup(&db, "GE", "PS", &["a".into()]).await.unwrap()["a"],
            before["a"]
        );
        release(&db, 1, "run-1").await;
        let after = lookup(&db, "GE", "PS", &["a".into()]).await.unwrap();
        assert_eq!(
            after["a"],
            Sent {
                stato: "inviato".into(),
                hash: Some("h-1".into()),
                record: Some("{\"v\":\"1\"}".into()),
                esito_descrizione: None,
                esito_il: None,
            }
        );

        // A WaaS send of a new version replaces the one the file flow carried.
        checkpoint(&db, "ps-waas").await.unwrap();
        let v2 = delivery("a", 'I', "2");
        let ids = enqueue(
            &db,
            "GE",
            "PS",
            "run-2",
            &[WaasEntry {
                delivery: &v2,
                render: Box::new(|id| format!("<flusso id='{id}'/>")),
            }],
            "ps-waas",
            "{}",
            |n| ("20261204".into(), format!("GE.PS.20261204.{n:07}")),
        )
        .await
        .unwrap();
        assert_eq!(ids, ["GE.PS.20261204.0000002"]);
        assert_eq!(clear_staged(&db, "GE", "PS").await.unwrap(), 0);
        let row: (String, String, String, Option<String>) = sqlx::query_as(
            "SELECT v.hash, v.id_flusso, v.run_id, i.in_invio_flusso FROM siuss_inviato v JOIN siuss_invio i USING (id)",
        )
        .fetch_one(p)
        .await
        .unwrap();
        assert_eq!(
            row,
            (
                "h-2".into(),
                "GE.PS.20261204.0000002".into(),
                "run-2".into(),
                None
            )
        );
    }
}
