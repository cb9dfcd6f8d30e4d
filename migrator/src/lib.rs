//! Snodo's legacy migrator: moves the tables of the legacy applications (Segretariato
//! Sociale, Web Distretti, Scheda Tecnica) into the canonical store, resumably, and proves
//! with a reconciliation report that nothing was lost.
//!
//! A migration is a list of *phases*, each recorded in the store's
//! `_snodo_migration_phase` ledger when it completes:
//!
//! 1. `load:<migration>.<table>`: one pipeline per legacy table (SQL source → trace →
//!    `columns` map → `validate` → upsert on `(ente, source_system, source_key)`), run by
//!    the ordinary pipeline runtime, so each batch commits with its checkpoint and a
//!    killed load resumes where it stopped;
//! 2. the set-based phases of [`phases::Phase`] (de-duplication, references, PIA,
//!    duplicates), each one transaction, idempotent;
//! 3. the reconciliation [`report`], written as Markdown and JSON and recorded as artifacts
//!    in the flow log.
//!
//! `run` skips phases the ledger marks done for the same definitions, so running a
//! finished migration again does nothing, and running an interrupted one resumes it.

pub mod definition;
pub mod phases;
pub mod report;
pub mod trace;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};
use snodo_connectors::sql::SqlSinkConfig;
use snodo_connectors::{Pipeline, SinkConfig};
use snodo_core::component::Artifact;
use snodo_core::config::{ConnectionsFile, StepConfig};
use snodo_core::db::Db;
use snodo_core::error::{Error, Result};
use snodo_core::flowlog::{Entry, FlowLog, RunFinished, RunStarted};
use snodo_core::runtime::{Progress, RunOptions, new_run_id};
use sqlx::Row;

pub use definition::{Definition, MigrationFile, load, load_all};
use phases::{Phase, lit};
use report::Report;

/// Creates a progress receiver for a table load: `(pipeline name, rows to read if known)`.
pub type ProgressFactory = Arc<dyn Fn(&str, Option<u64>) -> Arc<dyn Progress> + Send + Sync>;

/// Options of `migrate run`.
#[derive(Clone, Default)]
pub struct Options {
    /// Run every phase again even when the ledger says it is done (idempotent, so the
    /// store ends the same; `loaded_by_run` changes).
    pub force: bool,
    /// Who started it (`user`, `cron`).
    pub trigger: String,
    /// Where the report files go.
    pub report_dir: PathBuf,
    /// Progress bars.
    pub progress: Option<ProgressFactory>,
}

/// What one phase did.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseOutcome {
    /// Phase name (`load:web_distretti.presa_in_carico`, `dedup`…).
    pub phase: String,
    /// `done`, `skipped` (already done), `failed`, `rejects_over_limit`, `interrupted`.
    pub status: String,
    /// Flow-log run id.
    pub run_id: Option<String>,
    /// Rows read (loads) or changed (set-based phases).
    pub rows: u64,
    /// Rows written.
    pub written: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// Seconds.
    pub seconds: f64,
    /// Rows per second.
    pub rows_per_second: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// The outcome of `migrate run`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `succeeded`, `nothing_to_do`, `failed`, `rejects_over_limit`, `not_reconciled`.
    pub status: String,
    /// Every phase in order.
    pub phases: Vec<PhaseOutcome>,
    /// The report, when one was made.
    pub report: Option<Report>,
    /// Report files.
    pub report_files: Vec<String>,
}

impl Outcome {
    /// Exit code: 0 success, 1 failure, 4 rejects over the limit, 6 not reconciled,
    /// 130 interrupted.
    pub fn exit_code(&self) -> i32 {
        match self.status.as_str() {
            "succeeded" | "nothing_to_do" => 0,
            "not_reconciled" => 6,
            "rejects_over_limit" => 4,
            "interrupted" => 130,
            _ => 1,
        }
    }
}

/// The ledger name of the report phase.
const REPORT_PHASE: &str = "report";

const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS _snodo_migration_phase (
    ente TEXT NOT NULL,
    phase TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    run_id TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (ente, phase))";

/// A ledger row.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerRow {
    /// Phase name.
    pub phase: String,
    /// Definition hash it ran with.
    pub sha256: String,
    /// `running`, `done`, `failed`.
    pub status: String,
    /// The run that last worked on it.
    pub run_id: Option<String>,
}

async fn ledger(db: &Db, ente: &str) -> Result<Vec<LedgerRow>> {
    phases::execute(
        db,
        "preparing the migration ledger",
        &[LEDGER_DDL.to_string()],
    )
    .await?;
    let sql = format!(
        "SELECT phase, sha256, status, run_id FROM _snodo_migration_phase WHERE ente = {}",
        lit(ente)
    );
    let what = "reading the migration ledger";
    let map = |r: &dyn Fn(usize) -> Option<String>| LedgerRow {
        phase: r(0).unwrap_or_default(),
        sha256: r(1).unwrap_or_default(),
        status: r(2).unwrap_or_default(),
        run_id: r(3),
    };
    Ok(match db {
        Db::Sqlite(p) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(p)
            .await
            .map_err(|e| Error::db(what, e))?
            .iter()
            .map(|row| map(&|i| row.get::<Option<String>, _>(i)))
            .collect(),
        Db::Postgres(p) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(p)
            .await
            .map_err(|e| Error::db(what, e))?
            .iter()
            .map(|row| map(&|i| row.get::<Option<String>, _>(i)))
            .collect(),
    })
}

async fn mark(
    db: &Db,
    ente: &str,
    phase: &str,
    sha: &str,
    status: &str,
    run_id: &str,
) -> Result<()> {
    let sql = format!(
        "INSERT INTO _snodo_migration_phase (ente, phase, sha256, status, run_id, updated_at)
         VALUES ({}, {}, {}, {}, {}, {})
         ON CONFLICT (ente, phase) DO UPDATE SET sha256 = excluded.sha256, status = excluded.status,
             run_id = excluded.run_id, updated_at = excluded.updated_at",
        lit(ente),
        lit(phase),
        lit(sha),
        lit(status),
        lit(run_id),
        lit(&chrono::Utc::now().to_rfc3339())
    );
    phases::execute(db, "updating the migration ledger", &[sql])
        .await
        .map(|_| ())
}

/// The hash the set-based phases run with: all definitions and the snodo version, so that
/// changing any definition or upgrading snodo runs them again.
fn combined_sha(defs: &[Definition]) -> String {
    let mut h = Sha256::new();
    for d in defs {
        h.update(d.sha256.as_bytes());
    }
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(h.finalize())
}

fn load_phase(d: &Definition, t: &definition::TableMapping) -> String {
    format!("load:{}.{}", d.file.migration, t.table)
}

/// The pipeline a table's load runs (without the trace step, which needs the run id).
pub fn table_pipeline(d: &Definition, t: &definition::TableMapping) -> Result<Pipeline> {
    let mut select: Vec<String> = t.columns.keys().cloned().collect();
    select.extend(snodo_store::TRACE_COLUMNS.iter().map(|s| s.to_string()));
    let mut steps = vec![StepConfig::Map(t.columns.clone())];
    if !t.validate.is_empty() {
        steps.push(StepConfig::Validate(t.validate.clone()));
    }
    steps.push(StepConfig::Select(select));
    Ok(Pipeline {
        pipeline: d.file.pipeline_name(t),
        description: Some(format!("{} → {}", t.table, t.into)),
        source: t.source_config(&d.file.source, false)?,
        steps,
        sink: SinkConfig::Sql(SqlSinkConfig {
            connection: d.file.target.clone(),
            table: t.into.clone(),
            key: vec!["ente".into(), "source_system".into(), "source_key".into()],
            create_table: false,
            types: Default::default(),
            commit_rows: 0,
        }),
        on_error: d.file.on_error.clone(),
        personal: d.file.personal.clone(),
        batch_size: d.file.batch_size,
        workers: None,
        report: None,
        vars: Default::default(),
    })
}

/// Legacy rows of a table, when the source can count them cheaply (SQLite, PostgreSQL):
/// for `migrate plan` and the progress bars' ETA.
async fn count_rows(
    d: &Definition,
    t: &definition::TableMapping,
    connections: &ConnectionsFile,
) -> Option<u64> {
    let definition::MigrationSource::Sql { connection, .. } = &d.file.source else {
        return None;
    };
    let cfg = connections.get(connection).ok()?;
    if matches!(cfg, snodo_core::config::ConnectionConfig::Mssql(_)) {
        return None;
    }
    let db = Db::connect(cfg, 1).await.ok()?;
    let sql = format!(
        "SELECT COUNT(*) FROM ({}) q",
        t.source_query(&d.file.source)
    );
    report::scalar(&db, &sql).await.ok().map(|n| n as u64)
}

async fn connect(connections: &ConnectionsFile, name: &str) -> Result<Db> {
    let cfg = connections.get(name).map_err(Error::Other)?;
    Db::connect(cfg, 2).await
}

/// Opens the store, applies its migrations and registers the tenant.
pub async fn open_store(defs: &[Definition], connections: &ConnectionsFile) -> Result<Db> {
    let first = defs
        .first()
        .ok_or_else(|| Error::Other("no migration definitions given".into()))?;
    let store = connect(connections, &first.file.target).await?;
    snodo_store::migrate(&store).await?;
    snodo_store::ensure_ente(&store, &first.file.ente, &first.file.ente).await?;
    Ok(store)
}

/// One line of `migrate plan`.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedPhase {
    /// Phase name.
    pub phase: String,
    /// What it does.
    pub description: String,
    /// `done` (will be skipped), `pending`, `interrupted` (will resume), `changed`
    /// (done with another definition: will run again).
    pub state: String,
    /// Legacy rows to read, for loads.
    pub rows: Option<u64>,
}

/// What `migrate run` would do, without doing it.
pub async fn plan(defs: &[Definition], connections: &ConnectionsFile) -> Result<Vec<PlannedPhase>> {
    let store = open_store(defs, connections).await?;
    let ente = &defs[0].file.ente;
    let rows = ledger(&store, ente).await?;
    let state = |phase: &str, sha: &str| match rows.iter().find(|r| r.phase == phase) {
        None => "pending".to_string(),
        Some(r) if r.status == "done" && r.sha256 == sha => "done".into(),
        Some(r) if r.status == "done" => "changed".into(),
        Some(_) => "interrupted".into(),
    };
    let mut out = Vec::new();
    for d in defs {
        for t in d.file.ordered_tables() {
            let phase = load_phase(d, t);
            out.push(PlannedPhase {
                state: state(&phase, &d.sha256),
                phase,
                description: format!("{} → {}", t.table, t.into),
                rows: count_rows(d, t, connections).await,
            });
        }
    }
    let sha = combined_sha(defs);
    for p in Phase::ALL {
        out.push(PlannedPhase {
            phase: p.name().into(),
            description: p.describe().into(),
            state: state(p.name(), &sha),
            rows: None,
        });
    }
    out.push(PlannedPhase {
        phase: REPORT_PHASE.into(),
        description: "reconciliation report (Markdown and JSON), recorded in the flow log".into(),
        state: state(REPORT_PHASE, &sha),
        rows: None,
    });
    Ok(out)
}

fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the migration: every phase not yet done, in order, then the report.
pub async fn run(
    defs: &[Definition],
    connections: &ConnectionsFile,
    log: &FlowLog,
    opts: &Options,
) -> Result<Outcome> {
    let store = open_store(defs, connections).await?;
    let ente = defs[0].file.ente.clone();
    let mut done = ledger(&store, &ente).await?;
    let is_done = |rows: &[LedgerRow], phase: &str, sha: &str| {
        !opts.force
            && rows
                .iter()
                .any(|r| r.phase == phase && r.sha256 == sha && r.status == "done")
    };
    let mut outcome = Outcome {
        status: "succeeded".into(),
        phases: Vec::new(),
        report: None,
        report_files: Vec::new(),
    };
    let mut worked = false;

    for d in defs {
        for t in d.file.ordered_tables() {
            let phase = load_phase(d, t);
            if is_done(&done, &phase, &d.sha256) {
                outcome.phases.push(skipped(&phase, &done));
                continue;
            }
            worked = true;
            let run_id = new_run_id();
            mark(&store, &ente, &phase, &d.sha256, "running", &run_id).await?;
            // Loads change what the set-based phases computed: they run again.
            let stale =
                Phase::ALL.map(|p| lit(p.name())).join(", ") + ", " + lit(REPORT_PHASE).as_str();
            phases::execute(
                &store,
                "updating the migration ledger",
                &[format!(
                    "DELETE FROM _snodo_migration_phase WHERE ente = {} AND phase IN ({stale})",
                    lit(&ente)
                )],
            )
            .await?;
            let pipeline = table_pipeline(d, t)?;
            let mut plan = snodo_connectors::plan_from(
                &d.path.display().to_string(),
                d.sha256.clone(),
                &pipeline,
                connections,
                false,
            )
            .await?;
            // Every canonical row names its legacy row and its run: the flow log keeps one
            // lineage entry per batch (source range, count) instead of millions of pairs.
            plan.lineage_per_record = false;
            for worker in plan.steps.iter_mut() {
                worker.insert(
                    0,
                    Box::new(trace::Trace::new(
                        t.key.clone(),
                        t.key_prefix.clone(),
                        &d.file.ente,
                        &d.file.source_system,
                        &run_id,
                        plan.ctx.clone(),
                    )),
                );
            }
            let total = match &opts.progress {
                Some(_) => count_rows(d, t, connections).await,
                None => None,
            };
            let progress = opts.progress.as_ref().map(|f| f(&plan.name, total));
            let started = Instant::now();
            let summary = snodo_core::runtime::run(
                plan,
                log,
                RunOptions {
                    trigger: opts.trigger.clone(),
                    dry_run: false,
                    limit: None,
                    progress,
                    run_id: Some(run_id.clone()),
                },
            )
            .await?;
            let secs = started.elapsed().as_secs_f64();
            let status = if summary.status == "succeeded" {
                "done"
            } else {
                summary.status.as_str()
            };
            outcome.phases.push(PhaseOutcome {
                phase: phase.clone(),
                status: status.to_string(),
                run_id: Some(run_id.clone()),
                rows: summary.read,
                written: summary.written,
                rejected: summary.rejected,
                seconds: secs,
                rows_per_second: if secs > 0.0 {
                    summary.read as f64 / secs
                } else {
                    0.0
                },
                error: summary.error.clone(),
            });
            if summary.status != "succeeded" {
                mark(&store, &ente, &phase, &d.sha256, "failed", &run_id).await?;
                outcome.status = match summary.status.as_str() {
                    "rejects_over_limit" | "interrupted" => summary.status.clone(),
                    _ => "failed".into(),
                };
                return Ok(outcome);
            }
            mark(&store, &ente, &phase, &d.sha256, "done", &run_id).await?;
        }
    }

    done = ledger(&store, &ente).await?;
    let sha = combined_sha(defs);
    for p in Phase::ALL {
        if is_done(&done, p.name(), &sha) {
            outcome.phases.push(skipped(p.name(), &done));
            continue;
        }
        worked = true;
        let run_id = new_run_id();
        let started_at = chrono::Utc::now();
        let started = Instant::now();
        let name = format!("migrate.{}", p.name());
        log_start(log, &run_id, &name, defs, &sha, &opts.trigger, &store).await?;
        mark(&store, &ente, p.name(), &sha, "running", &run_id).await?;
        let result = phases::execute_named(
            &store,
            &format!("migration phase `{}`", p.name()),
            p.name(),
            &p.statements(&store, &ente, &run_id),
        )
        .await;
        let secs = started.elapsed().as_secs_f64();
        let (status, rows, error) = match &result {
            Ok(n) => ("succeeded", *n, None),
            Err(e) => ("failed", 0, Some(e.to_string())),
        };
        log_finish(log, &run_id, status, rows, error.clone(), started_at, &[]).await?;
        outcome.phases.push(PhaseOutcome {
            phase: p.name().into(),
            status: if result.is_ok() {
                "done".into()
            } else {
                "failed".into()
            },
            run_id: Some(run_id.clone()),
            rows,
            written: rows,
            rejected: 0,
            seconds: secs,
            rows_per_second: if secs > 0.0 { rows as f64 / secs } else { 0.0 },
            error,
        });
        if result.is_err() {
            mark(&store, &ente, p.name(), &sha, "failed", &run_id).await?;
            outcome.status = "failed".into();
            return Ok(outcome);
        }
        mark(&store, &ente, p.name(), &sha, "done", &run_id).await?;
    }

    if is_done(&done, REPORT_PHASE, &sha) && !worked {
        outcome.phases.push(skipped(REPORT_PHASE, &done));
        outcome.status = "nothing_to_do".into();
        return Ok(outcome);
    }
    let report_run = new_run_id();
    let started = Instant::now();
    mark(&store, &ente, REPORT_PHASE, &sha, "running", &report_run).await?;
    let (report, files) =
        write_report(defs, connections, log, &store, opts, &sha, &report_run).await?;
    mark(&store, &ente, REPORT_PHASE, &sha, "done", &report_run).await?;
    let secs = started.elapsed().as_secs_f64();
    // Both sides of every table are read once: legacy keys and canonical keys.
    let keys: u64 = report
        .tables
        .iter()
        .map(|t| t.read.rows + t.migrated.rows)
        .sum();
    outcome.phases.push(PhaseOutcome {
        phase: REPORT_PHASE.into(),
        status: "done".into(),
        run_id: Some(report_run.clone()),
        rows: keys,
        written: 0,
        rejected: 0,
        seconds: secs,
        rows_per_second: if secs > 0.0 { keys as f64 / secs } else { 0.0 },
        error: None,
    });
    if !report.reconciled {
        outcome.status = "not_reconciled".into();
    }
    outcome.report = Some(report);
    outcome.report_files = files;
    Ok(outcome)
}

fn skipped(phase: &str, rows: &[LedgerRow]) -> PhaseOutcome {
    PhaseOutcome {
        phase: phase.to_string(),
        status: "skipped".into(),
        run_id: rows
            .iter()
            .find(|r| r.phase == phase)
            .and_then(|r| r.run_id.clone()),
        rows: 0,
        written: 0,
        rejected: 0,
        seconds: 0.0,
        rows_per_second: 0.0,
        error: None,
    }
}

async fn log_start(
    log: &FlowLog,
    run_id: &str,
    name: &str,
    defs: &[Definition],
    sha: &str,
    trigger: &str,
    store: &Db,
) -> Result<()> {
    let files = defs
        .iter()
        .map(|d| d.path.display().to_string())
        .collect::<Vec<_>>();
    log.append(
        run_id,
        &[Entry::RunStarted(RunStarted {
            pipeline: name.to_string(),
            file: files.join(", "),
            file_sha256: sha.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            trigger: trigger.to_string(),
            dry_run: false,
            resumed_from: None,
            source: format!("canonical store ({})", store.dialect()),
            sink: format!("canonical store ({})", store.dialect()),
            user: user(),
            started_at: chrono::Utc::now().to_rfc3339(),
        })],
    )
    .await
}

async fn log_finish(
    log: &FlowLog,
    run_id: &str,
    status: &str,
    rows: u64,
    error: Option<String>,
    started_at: chrono::DateTime<chrono::Utc>,
    artifacts: &[Artifact],
) -> Result<()> {
    let mut entries: Vec<Entry> = artifacts.iter().cloned().map(Entry::Artifact).collect();
    let now = chrono::Utc::now();
    entries.push(Entry::RunFinished(RunFinished {
        status: status.to_string(),
        read: rows,
        written: rows,
        error,
        finished_at: now.to_rfc3339(),
        duration_ms: (now - started_at).num_milliseconds().max(0) as u64,
        ..Default::default()
    }));
    log.append(run_id, &entries).await
}

/// Computes the reconciliation report (no writes to the store).
pub async fn reconcile(
    defs: &[Definition],
    connections: &ConnectionsFile,
    log: &FlowLog,
    store: &Db,
) -> Result<Report> {
    let ente = defs[0].file.ente.clone();
    let rows = ledger(store, &ente).await?;
    let mut tables = Vec::new();
    for d in defs {
        for t in d.file.ordered_tables() {
            let phase = load_phase(d, t);
            let last_run = rows
                .iter()
                .find(|r| r.phase == phase)
                .and_then(|r| r.run_id.clone());
            tables.push(
                report::table_report(d, t, connections, store, log, last_run.as_deref()).await?,
            );
        }
    }
    let (persons, pia, dups) = report::store_report(store, &ente).await?;
    // A load that never completed cannot reconcile, even if its counts happen to.
    let all_loaded = defs.iter().all(|d| {
        d.file.ordered_tables().iter().all(|t| {
            rows.iter()
                .any(|r| r.phase == load_phase(d, t) && r.status == "done" && r.sha256 == d.sha256)
        })
    });
    Ok(Report {
        ente,
        generated_at: chrono::Utc::now().to_rfc3339(),
        reconciled: all_loaded && tables.iter().all(|t| t.reconciled),
        tables,
        persons,
        pia,
        duplicate_interventions: dups,
    })
}

async fn write_report(
    defs: &[Definition],
    connections: &ConnectionsFile,
    log: &FlowLog,
    store: &Db,
    opts: &Options,
    sha: &str,
    run_id: &str,
) -> Result<(Report, Vec<String>)> {
    let started_at = chrono::Utc::now();
    log_start(
        log,
        run_id,
        "migrate.report",
        defs,
        sha,
        &opts.trigger,
        store,
    )
    .await?;
    let report = reconcile(defs, connections, log, store).await?;
    phases::failpoint("report");
    std::fs::create_dir_all(&opts.report_dir)
        .map_err(|e| Error::io("creating", &opts.report_dir, e))?;
    let mut artifacts = Vec::new();
    let mut files = Vec::new();
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Other(format!("serialising the report: {e}")))?;
    for (ext, body) in [("md", report.to_markdown()), ("json", json)] {
        let path = opts
            .report_dir
            .join(format!("riconciliazione-{run_id}.{ext}"));
        write_atomic(&path, body.as_bytes())?;
        artifacts.push(Artifact {
            path: path.display().to_string(),
            size: body.len() as u64,
            sha256: hex::encode(Sha256::digest(body.as_bytes())),
            rows: report.tables.len() as u64,
            destination: "local".into(),
            checks: Vec::new(),
        });
        files.push(path.display().to_string());
    }
    let status = if report.reconciled {
        "succeeded"
    } else {
        "failed"
    };
    let error = (!report.reconciled)
        .then(|| "the migration does not reconcile: see the report".to_string());
    log_finish(
        log,
        run_id,
        status,
        report.tables.len() as u64,
        error,
        started_at,
        &artifacts,
    )
    .await?;
    Ok((report, files))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e))
}
