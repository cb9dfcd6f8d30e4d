//! The reconciliation report: for every legacy table, what was read, migrated, merged and
//! rejected, with checksums over the keys on both sides, so that the migration team can
//! prove that every source row is in the store or listed with a reason.
//!
//! The checksum of a set of keys is the wrapping sum of the first 8 bytes of each key's
//! SHA-256. A sum, unlike a hash of the sorted list, is additive: the source's checksum
//! must equal the target's plus the rejects', and each side is computed in one streaming
//! pass in any order, in bounded memory.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use snodo_connectors::sql::values;
use snodo_core::component::SourceContext;
use snodo_core::config::ConnectionsFile;
use snodo_core::db::Db;
use snodo_core::error::{Error, Result};
use snodo_core::flowlog::FlowLog;
use snodo_core::value::Value;
use sqlx::Row;

use crate::definition::{Definition, TableMapping};
use crate::phases::lit;
use crate::trace::{key_from_position, source_key};

/// How many keys a report lists per problem; the counts are always complete.
pub const LISTED: usize = 50;

/// A count and a checksum of a set of keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeySet {
    /// Number of keys.
    pub rows: u64,
    /// Wrapping sum of the keys' SHA-256 prefixes, hex.
    #[serde(serialize_with = "hex64")]
    pub checksum: u64,
}

fn hex64<S: serde::Serializer>(v: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

/// The 64-bit digest of one key.
pub fn key_digest(key: &str) -> u64 {
    let h = Sha256::digest(key.as_bytes());
    u64::from_be_bytes(h[..8].try_into().unwrap_or([0; 8]))
}

impl KeySet {
    fn add(&mut self, key: &str) {
        self.rows += 1;
        self.checksum = self.checksum.wrapping_add(key_digest(key));
    }
    fn plus(self, other: KeySet) -> KeySet {
        KeySet {
            rows: self.rows + other.rows,
            checksum: self.checksum.wrapping_add(other.checksum),
        }
    }
}

/// One legacy table's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `migration.table`.
    pub source: String,
    /// Canonical table.
    pub target: String,
    /// Keys read from the legacy table.
    pub read: KeySet,
    /// Keys present in the canonical table.
    pub migrated: KeySet,
    /// Keys rejected (with a reason in the flow log).
    pub rejected: KeySet,
    /// Rejects by reason code.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// The rejected keys with their reason (first [`LISTED`]).
    pub rejected_keys: Vec<(String, String)>,
    /// Person rows merged with rows of another system (persons only).
    pub merged: u64,
    /// References left unresolved, by column: the legacy row points to a key that does
    /// not exist in its system (kept, with the legacy key, never dropped).
    pub orphans: BTreeMap<String, u64>,
    /// True when read = migrated + rejected, in count and checksum.
    pub reconciled: bool,
    /// Keys read but neither migrated nor rejected (first [`LISTED`]).
    pub missing_in_target: Vec<String>,
    /// Keys in the store that the legacy table does not have (first [`LISTED`]).
    pub missing_in_source: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Tenant.
    pub ente: String,
    /// When it was computed (UTC).
    pub generated_at: String,
    /// True when every table reconciles.
    pub reconciled: bool,
    /// Per legacy table.
    pub tables: Vec<TableReport>,
    /// Person de-duplication.
    pub persons: PersonReport,
    /// PIA recomputation.
    pub pia: PiaReport,
    /// Interventions repeated under a new legacy id.
    pub duplicate_interventions: u64,
}

/// De-duplication results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PersonReport {
    /// Person rows of all systems.
    pub source_rows: u64,
    /// Persons after merging.
    pub persons: u64,
    /// Persons known to more than one system.
    pub merged_persons: u64,
    /// Open review cases by kind.
    pub review_by_kind: BTreeMap<String, u64>,
    /// Review cases (kind, row a, row b, evidence), first [`LISTED`] of each kind.
    pub review: Vec<(String, String, String, String)>,
}

/// PIA results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PiaReport {
    /// Assessments.
    pub assessments: u64,
    /// Assessments with a recomputed total.
    pub recomputed: u64,
    /// Assessments whose legacy total was empty.
    pub legacy_missing: u64,
    /// Assessments whose recomputed total differs from the legacy one.
    pub differences: u64,
    /// (assessment key, legacy total, recomputed total), first [`LISTED`].
    pub listed: Vec<(String, String, String)>,
}

async fn stream_keys(
    db: &Db,
    sql: String,
    mut each: impl FnMut(Vec<Value>) -> Result<()>,
) -> Result<()> {
    let what = "reading keys for the reconciliation report";
    match db {
        Db::Sqlite(p) => {
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(p);
            while let Some(r) = rows.try_next().await.map_err(|e| Error::db(what, e))? {
                each(values::sqlite_row(&r, 0).map_err(Error::Input)?)?;
            }
        }
        Db::Postgres(p) => {
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(p);
            let mut columns: Option<values::PgColumns> = None;
            while let Some(r) = rows.try_next().await.map_err(|e| Error::db(what, e))? {
                let columns = columns.get_or_insert_with(|| values::PgColumns::of(&r));
                each(columns.decode(&r, 0).map_err(Error::Input)?)?;
            }
        }
    }
    Ok(())
}

/// One number from a query.
pub async fn scalar(db: &Db, sql: &str) -> Result<i64> {
    let what = "counting for the reconciliation report";
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match db {
        Db::Sqlite(p) => sqlx::query(sql)
            .fetch_one(p)
            .await
            .map(|r| r.get::<i64, _>(0)),
        Db::Postgres(p) => sqlx::query(sql)
            .fetch_one(p)
            .await
            .map(|r| r.get::<i64, _>(0)),
    }
    .map_err(|e| Error::db(what, e))
}

/// Rows of text columns from a query (small result sets only: lists capped by LIMIT).
async fn texts(db: &Db, sql: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    stream_keys(db, sql.to_string(), |vals| {
        out.push(
            vals.iter()
                .map(|v| v.to_text().unwrap_or_default())
                .collect(),
        );
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Streams the `source_key` of every legacy row, through the same source kind the load
/// used (SQLite, PostgreSQL, SQL Server or CSV). Rows the source itself cannot read (a
/// malformed CSV line) have no key: they are `record N`, as their rejects are.
async fn stream_source_keys(
    d: &Definition,
    t: &TableMapping,
    connections: &ConnectionsFile,
    mut each: impl FnMut(String),
) -> Result<()> {
    let cfg = t.source_config(&d.file.source, true)?;
    let source = snodo_connectors::open_source(&cfg, connections).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let ctx = SourceContext {
        batch_size: 5000,
        limit: None,
        personal: std::sync::Arc::new(d.file.personal.clone()),
        extra_fields: 0,
    };
    let task = tokio::spawn(source.run(None, ctx, tx));
    let prefix = t.key_prefix.as_deref();
    while let Some(batch) = rx.recv().await {
        for r in &batch.records {
            each(source_key(
                prefix,
                t.key.iter().map(|k| r.get(k).unwrap_or(&Value::Null)),
            ));
        }
        for r in &batch.rejects {
            each(format!("record {}", r.position.record));
        }
    }
    task.await
        .map_err(|e| Error::Other(format!("reading the keys of {}: {e}", t.table)))?
}

/// The `source_key` a reject belongs to: the one the trace step stamped on the record,
/// else the key of its source position, else its record number.
fn reject_key(
    payload: &serde_json::Value,
    position: &snodo_core::record::SourcePosition,
    prefix: Option<&str>,
) -> String {
    if let Some(k) = payload.get("source_key").and_then(|v| v.as_str()) {
        return k.to_string();
    }
    match &position.key {
        Some(k) => key_from_position(prefix, k),
        None => format!("record {}", position.record),
    }
}

/// The condition selecting the canonical rows of one legacy table; `alias` qualifies the
/// columns (`f.` or empty).
fn target_filter(t: &TableMapping, d: &Definition, alias: &str) -> String {
    let mut w = format!(
        "{alias}ente = {} AND {alias}source_system = {}",
        lit(&d.file.ente),
        lit(&d.file.source_system)
    );
    if let Some(p) = &t.key_prefix {
        w.push_str(&format!(
            " AND {alias}source_key LIKE {}",
            lit(&format!("{p}|%"))
        ));
    }
    w
}

/// Reconciles one table. `last_run` is the run that completed its load (its resume chain
/// holds the rejects).
pub async fn table_report(
    d: &Definition,
    t: &TableMapping,
    connections: &ConnectionsFile,
    store: &Db,
    log: &FlowLog,
    last_run: Option<&str>,
) -> Result<TableReport> {
    let prefix = t.key_prefix.as_deref();
    let mut read = KeySet::default();
    stream_source_keys(d, t, connections, |k| read.add(&k)).await?;

    // Rejects are few (bounded by the reject policy), so they are held in memory.
    let mut rejects: HashMap<String, (String, String)> = HashMap::new();
    if let Some(run) = last_run {
        log.for_each_reject(run, |r| {
            // The reason is kept short: only the first keys are listed with it, and the
            // flow log has it in full.
            let mut reason = r.reason;
            if reason.len() > 300 {
                let cut = (0..=300)
                    .rev()
                    .find(|&i| reason.is_char_boundary(i))
                    .unwrap_or(0);
                reason.truncate(cut);
                reason.push('…');
            }
            rejects
                .entry(reject_key(&r.payload, &r.position, prefix))
                .or_insert((r.code, reason));
        })
        .await?;
    }
    let filter = target_filter(t, d, "");
    let mut migrated = KeySet::default();
    stream_keys(
        store,
        format!("SELECT source_key FROM {} WHERE {filter}", t.into),
        |vals| {
            let k = vals.first().and_then(Value::to_text).unwrap_or_default();
            // A key rejected once and loaded later (after a fix) is not a reject any more.
            rejects.remove(&k);
            migrated.add(&k);
            Ok(())
        },
    )
    .await?;
    let mut rejected = KeySet::default();
    let mut by_reason = BTreeMap::new();
    let mut listed: Vec<(String, String)> = Vec::new();
    for (k, (code, reason)) in &rejects {
        rejected.add(k);
        *by_reason.entry(code.clone()).or_insert(0) += 1;
        listed.push((k.clone(), reason.clone()));
    }
    listed.sort();
    listed.truncate(LISTED);

    let reconciled = read == migrated.plus(rejected);
    let (mut missing_in_target, mut missing_in_source) = (Vec::new(), Vec::new());
    if !reconciled {
        // Diagnosis only: digests of both sides are held in memory (8 bytes per key).
        let mut target_digests = HashSet::new();
        stream_keys(
            store,
            format!("SELECT source_key FROM {} WHERE {filter}", t.into),
            |vals| {
                target_digests.insert(key_digest(
                    &vals.first().and_then(Value::to_text).unwrap_or_default(),
                ));
                Ok(())
            },
        )
        .await?;
        let mut source_digests = HashSet::new();
        stream_source_keys(d, t, connections, |k| {
            let dg = key_digest(&k);
            source_digests.insert(dg);
            if !target_digests.contains(&dg)
                && !rejects.contains_key(&k)
                && missing_in_target.len() < LISTED
            {
                missing_in_target.push(k);
            }
        })
        .await?;
        stream_keys(
            store,
            format!("SELECT source_key FROM {} WHERE {filter}", t.into),
            |vals| {
                let k = vals.first().and_then(Value::to_text).unwrap_or_default();
                if !source_digests.contains(&key_digest(&k)) && missing_in_source.len() < LISTED {
                    missing_in_source.push(k);
                }
                Ok(())
            },
        )
        .await?;
    }

    let merged = if t.into == "persona_fonte" {
        scalar(
            store,
            &format!(
                "SELECT COUNT(*) FROM persona_fonte f JOIN persona p ON p.id = f.persona_id
                 WHERE {} AND p.fonti > 1",
                target_filter(t, d, "f.")
            ),
        )
        .await? as u64
    } else {
        0
    };
    let mut orphans = BTreeMap::new();
    for r in snodo_store::REFERENCES.iter().filter(|r| r.table == t.into) {
        let n = scalar(
            store,
            &format!(
                "SELECT COUNT(*) FROM {} WHERE {filter} AND {} IS NOT NULL AND {} IS NULL",
                t.into, r.key_column, r.id_column
            ),
        )
        .await?;
        if n > 0 {
            orphans.insert(r.key_column.to_string(), n as u64);
        }
    }
    Ok(TableReport {
        source: format!("{}.{}", d.file.migration, t.table),
        target: t.into.clone(),
        read,
        migrated,
        rejected,
        rejected_by_reason: by_reason,
        rejected_keys: listed,
        merged,
        orphans,
        reconciled,
        missing_in_target,
        missing_in_source,
    })
}

/// The store-wide parts: persons, PIA, duplicates.
pub async fn store_report(store: &Db, ente: &str) -> Result<(PersonReport, PiaReport, u64)> {
    let e = lit(ente);
    let count = |sql: String| async move { scalar(store, &sql).await.map(|n| n as u64) };
    let mut persons = PersonReport {
        source_rows: count(format!(
            "SELECT COUNT(*) FROM persona_fonte WHERE ente = {e}"
        ))
        .await?,
        persons: count(format!("SELECT COUNT(*) FROM persona WHERE ente = {e}")).await?,
        merged_persons: count(format!(
            "SELECT COUNT(*) FROM persona WHERE ente = {e} AND fonti > 1"
        ))
        .await?,
        ..Default::default()
    };
    for row in texts(
        store,
        &format!(
            "SELECT tipo, COUNT(*) FROM persona_revisione WHERE ente = {e} AND stato = 'aperta' GROUP BY tipo ORDER BY tipo"
        ),
    )
    .await?
    {
        let kind = row[0].clone();
        persons
            .review_by_kind
            .insert(kind.clone(), row[1].parse().unwrap_or(0));
        for r in texts(
            store,
            &format!(
                "SELECT tipo, fonte_a, fonte_b, evidenza FROM persona_revisione
                 WHERE ente = {e} AND stato = 'aperta' AND tipo = {} ORDER BY fonte_a, fonte_b LIMIT {LISTED}",
                lit(&kind)
            ),
        )
        .await?
        {
            persons
                .review
                .push((r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()));
        }
    }
    let differs = "v.pia_totale_legacy IS NOT NULL AND (v.pia_totale IS NULL OR
        CAST(ROUND(v.pia_totale_legacy * 100) AS BIGINT) <> CAST(ROUND(v.pia_totale * 100) AS BIGINT))";
    let mut pia = PiaReport {
        assessments: count(format!("SELECT COUNT(*) FROM valutazione WHERE ente = {e}")).await?,
        recomputed: count(format!(
            "SELECT COUNT(*) FROM valutazione WHERE ente = {e} AND pia_totale IS NOT NULL"
        ))
        .await?,
        legacy_missing: count(format!(
            "SELECT COUNT(*) FROM valutazione WHERE ente = {e} AND pia_totale_legacy IS NULL"
        ))
        .await?,
        differences: count(format!(
            "SELECT COUNT(*) FROM valutazione v WHERE v.ente = {e} AND {differs}"
        ))
        .await?,
        listed: Vec::new(),
    };
    for r in texts(
        store,
        &format!(
            "SELECT v.source_system || ':' || v.source_key, CAST(v.pia_totale_legacy AS TEXT), CAST(v.pia_totale AS TEXT)
             FROM valutazione v WHERE v.ente = {e} AND {differs} ORDER BY v.source_system, v.source_key LIMIT {LISTED}"
        ),
    )
    .await?
    {
        pia.listed.push((r[0].clone(), r[1].clone(), r[2].clone()));
    }
    let dups = count(format!(
        "SELECT COUNT(*) FROM intervento WHERE ente = {e} AND duplicato_di IS NOT NULL"
    ))
    .await?;
    Ok((persons, pia, dups))
}

impl Report {
    /// The report in Markdown, in Italian: it is handed to the social-services director.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let esito = if self.reconciled {
            "RICONCILIATA: ogni riga di origine è nel nuovo archivio o è elencata con il motivo dello scarto."
        } else {
            "NON RICONCILIATA: alcune righe di origine non sono né nel nuovo archivio né tra gli scarti (vedi sotto)."
        };
        s.push_str(&format!(
            "# Rapporto di riconciliazione della migrazione\n\nEnte: {}  \nGenerato: {}  \nEsito: **{esito}**\n\n",
            self.ente, self.generated_at
        ));
        s.push_str("## Tabelle di origine\n\n| Origine | Destinazione | Lette | Migrate | Scartate | Unite | Orfani | Checksum origine | Checksum migrate+scartate | Esito |\n|---|---|---:|---:|---:|---:|---|---|---|---|\n");
        for t in &self.tables {
            let orphans = t
                .orphans
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {:016x} | {:016x} | {} |\n",
                t.source,
                t.target,
                t.read.rows,
                t.migrated.rows,
                t.rejected.rows,
                t.merged,
                if orphans.is_empty() {
                    "—".into()
                } else {
                    orphans
                },
                t.read.checksum,
                t.migrated.plus(t.rejected).checksum,
                if t.reconciled { "ok" } else { "**DIFFERENZA**" }
            ));
        }
        let rejected: Vec<&TableReport> =
            self.tables.iter().filter(|t| t.rejected.rows > 0).collect();
        if !rejected.is_empty() {
            s.push_str("\n## Righe scartate\n\nOgni scarto è nel registro dei flussi (`snodo rejects RUN`) con il motivo completo.\n");
            for t in rejected {
                s.push_str(&format!("\n### {}\n\n", t.source));
                for (code, n) in &t.rejected_by_reason {
                    s.push_str(&format!("- `{code}`: {n}\n"));
                }
                s.push_str("\n| Chiave | Motivo |\n|---|---|\n");
                for (k, r) in &t.rejected_keys {
                    s.push_str(&format!("| {k} | {} |\n", r.replace('|', "\\|")));
                }
                if t.rejected.rows as usize > t.rejected_keys.len() {
                    s.push_str(&format!(
                        "\n(prime {} di {})\n",
                        t.rejected_keys.len(),
                        t.rejected.rows
                    ));
                }
            }
        }
        for t in self.tables.iter().filter(|t| !t.reconciled) {
            s.push_str(&format!(
                "\n## Differenze in {}\n\nMancanti nel nuovo archivio (né migrate né scartate): {}\n\nPresenti nel nuovo archivio ma non nell'origine: {}\n",
                t.source,
                if t.missing_in_target.is_empty() { "—".into() } else { t.missing_in_target.join(", ") },
                if t.missing_in_source.is_empty() { "—".into() } else { t.missing_in_source.join(", ") },
            ));
        }
        let p = &self.persons;
        s.push_str(&format!(
            "\n## Persone\n\nSchede anagrafiche di origine: {}  \nPersone dopo l'unificazione: {}  \nPersone presenti in più sistemi: {}\n",
            p.source_rows, p.persons, p.merged_persons
        ));
        if !p.review.is_empty() {
            s.push_str("\n### Da verificare (non unite automaticamente)\n\n| Tipo | Scheda A | Scheda B | Evidenza |\n|---|---|---|---|\n");
            for (k, a, b, ev) in &p.review {
                s.push_str(&format!("| {k} | {a} | {b} | {ev} |\n"));
            }
            for (k, n) in &p.review_by_kind {
                s.push_str(&format!("\n{k}: {n} casi"));
            }
            s.push('\n');
        }
        let pia = &self.pia;
        s.push_str(&format!(
            "\n## Scheda Tecnica: PIA\n\nValutazioni: {}  \nTotale PIA ricalcolato: {}  \nTotale legacy assente: {}  \nTotale ricalcolato diverso dal legacy: {}\n",
            pia.assessments, pia.recomputed, pia.legacy_missing, pia.differences
        ));
        if !pia.listed.is_empty() {
            s.push_str("\n| Valutazione | PIA legacy | PIA ricalcolato |\n|---|---:|---:|\n");
            for (k, l, r) in &pia.listed {
                s.push_str(&format!("| {k} | {l} | {r} |\n"));
            }
        }
        s.push_str(&format!(
            "\n## Interventi duplicati\n\nInterventi ripetuti con un nuovo identificativo (marcati `duplicato_di`, non cancellati): {}\n",
            self.duplicate_interventions
        ));
        s
    }
}
