//! The canonical social-services store: one schema, applied to PostgreSQL (production) or
//! SQLite (the embedded default) by numbered migrations.
//!
//! Each migration is written once, in `store/migrations/NNNN_name.sql`, with a handful of
//! type tokens (`{id}`, `{decimal}`, `{date}` …) that [`render`] turns into each dialect's
//! types, and `{postgres}` at the start of a line that only PostgreSQL runs. Two hand-kept copies of the DDL would drift; a full schema DSL would be a second
//! language to learn for people who already read SQL.
//!
//! Applied migrations are recorded in `_snodo_store_migrations` with the SHA-256 of their
//! rendered text, so an edited migration that was already applied is refused instead of
//! silently leaving two databases with different schemas.

use sha2::{Digest, Sha256};
use snodo_core::db::Db;
use snodo_core::error::{Error, Result};
use sqlx::Row;

/// One numbered migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version number: migrations run in this order, each exactly once.
    pub version: i64,
    /// Short name.
    pub name: &'static str,
    /// The SQL with type tokens.
    pub sql: &'static str,
}

/// Every migration of the store, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "canonical",
        sql: include_str!("../migrations/0001_canonical.sql"),
    },
    Migration {
        version: 2,
        name: "flussi_inps",
        sql: include_str!("../migrations/0002_flussi_inps.sql"),
    },
    Migration {
        version: 3,
        name: "ledger_fillfactor",
        sql: include_str!("../migrations/0003_ledger_fillfactor.sql"),
    },
    Migration {
        version: 4,
        name: "ledger_lazy_release",
        sql: include_str!("../migrations/0004_ledger_lazy_release.sql"),
    },
];

/// A reference from one canonical table to another, kept as the legacy key as loaded
/// (`key_column`) and the canonical id the migrator resolves (`id_column`). Both sides
/// come from the same source system: legacy keys are only unique within their system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    /// The referencing table.
    pub table: &'static str,
    /// The column that receives the canonical id.
    pub id_column: &'static str,
    /// The column holding the legacy key.
    pub key_column: &'static str,
    /// The referenced table. `persona` is reached through `persona_fonte`, whose rows the
    /// de-duplication phase links to the merged person.
    pub target: &'static str,
}

const fn r(
    table: &'static str,
    id_column: &'static str,
    key_column: &'static str,
    target: &'static str,
) -> Reference {
    Reference {
        table,
        id_column,
        key_column,
        target,
    }
}

/// Every reference between canonical tables.
pub const REFERENCES: &[Reference] = &[
    r("nucleo_membro", "nucleo_id", "nucleo_source_key", "nucleo"),
    r(
        "nucleo_membro",
        "persona_id",
        "persona_source_key",
        "persona",
    ),
    r(
        "segnalazione",
        "persona_id",
        "persona_source_key",
        "persona",
    ),
    r(
        "segnalazione",
        "segnalante_persona_id",
        "segnalante_source_key",
        "persona",
    ),
    r(
        "segnalazione_richiesta",
        "segnalazione_id",
        "segnalazione_source_key",
        "segnalazione",
    ),
    r(
        "segnalazione_problema",
        "segnalazione_id",
        "segnalazione_source_key",
        "segnalazione",
    ),
    r(
        "presa_in_carico",
        "persona_id",
        "persona_source_key",
        "persona",
    ),
    r(
        "presa_in_carico_operatore",
        "presa_in_carico_id",
        "presa_in_carico_source_key",
        "presa_in_carico",
    ),
    r(
        "presa_in_carico_operatore",
        "operatore_id",
        "operatore_source_key",
        "operatore",
    ),
    r(
        "presa_in_carico_tipizzazione",
        "presa_in_carico_id",
        "presa_in_carico_source_key",
        "presa_in_carico",
    ),
    r(
        "presa_in_carico_trasferimento",
        "presa_in_carico_id",
        "presa_in_carico_source_key",
        "presa_in_carico",
    ),
    r(
        "valutazione_modulo",
        "sezione_id",
        "sezione_source_key",
        "valutazione_sezione",
    ),
    r(
        "valutazione_voce",
        "modulo_id",
        "modulo_source_key",
        "valutazione_modulo",
    ),
    r("valutazione", "persona_id", "persona_source_key", "persona"),
    r(
        "valutazione_risposta",
        "valutazione_id",
        "valutazione_source_key",
        "valutazione",
    ),
    r(
        "valutazione_risposta",
        "voce_id",
        "voce_source_key",
        "valutazione_voce",
    ),
    r("intervento", "persona_id", "persona_source_key", "persona"),
    r(
        "intervento",
        "presa_in_carico_id",
        "presa_in_carico_source_key",
        "presa_in_carico",
    ),
    r(
        "intervento",
        "catalogo_id",
        "catalogo_source_key",
        "intervento_catalogo",
    ),
    r(
        "intervento",
        "fornitore_id",
        "fornitore_source_key",
        "fornitore",
    ),
    r("isee", "persona_id", "persona_source_key", "persona"),
    r(
        "valutazione_sina",
        "persona_id",
        "persona_source_key",
        "persona",
    ),
    r(
        "provvedimento_ag",
        "persona_id",
        "persona_source_key",
        "persona",
    ),
    r(
        "provvedimento_ag",
        "presa_in_carico_id",
        "presa_in_carico_source_key",
        "presa_in_carico",
    ),
    r(
        "valutazione_minore",
        "persona_id",
        "persona_source_key",
        "persona",
    ),
    r(
        "valutazione_minore",
        "presa_in_carico_id",
        "presa_in_carico_source_key",
        "presa_in_carico",
    ),
];

/// The columns of `table` as the migrations define them (trace columns included, the
/// surrogate `id` excluded), or `None` for an unknown table.
pub fn columns(table: &str) -> Option<Vec<String>> {
    let sql = MIGRATIONS.iter().find_map(|m| {
        let start = m.sql.find(&format!("CREATE TABLE {table} ("))?;
        let end = start + m.sql[start..].find(");")?;
        Some(&m.sql[start..end])
    })?;
    let added = MIGRATIONS
        .iter()
        .flat_map(|m| m.sql.lines())
        .filter_map(|l| {
            l.trim()
                .strip_prefix(&format!("ALTER TABLE {table} ADD COLUMN "))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        });
    Some(
        sql.lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("--") && !l.starts_with("UNIQUE"))
            .filter(|l| !l.starts_with("PRIMARY KEY"))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "id")
            .map(str::to_string)
            .chain(added)
            .collect(),
    )
}

/// The columns every canonical table carries for traceability.
pub const TRACE_COLUMNS: [&str; 4] = ["ente", "source_system", "source_key", "loaded_by_run"];

const TOKENS: &[(&str, &str, &str)] = &[
    // (token, postgres, sqlite)
    (
        "{id}",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "INTEGER PRIMARY KEY",
    ),
    ("{ref}", "BIGINT", "INTEGER"),
    ("{int}", "BIGINT", "INTEGER"),
    ("{decimal}", "NUMERIC", "TEXT"),
    ("{date}", "DATE", "TEXT"),
    ("{timestamp}", "TIMESTAMP", "TEXT"),
    ("{bool}", "BOOLEAN", "INTEGER"),
    // A statement only PostgreSQL has (a storage setting): a comment on SQLite.
    ("{postgres}", "", "--"),
];

/// Renders a migration for `dialect` (`postgres` or `sqlite`).
pub fn render(sql: &str, dialect: &str) -> String {
    let mut out = sql.to_string();
    for (token, pg, lite) in TOKENS {
        out = out.replace(token, if dialect == "postgres" { pg } else { lite });
    }
    out
}

/// The whole schema for `dialect`, as `snodo store schema` prints it.
pub fn schema_sql(dialect: &str) -> String {
    MIGRATIONS
        .iter()
        .map(|m| {
            format!(
                "-- migration {:04} {}\n{}",
                m.version,
                m.name,
                render(m.sql, dialect)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Table names created by the migrations, in order.
pub fn tables() -> Vec<String> {
    MIGRATIONS
        .iter()
        .flat_map(|m| m.sql.lines())
        .filter_map(|l| l.trim().strip_prefix("CREATE TABLE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// What [`migrate`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrateReport {
    /// `postgres` or `sqlite`.
    pub dialect: String,
    /// Versions applied now.
    pub applied: Vec<i64>,
    /// Versions that were already there.
    pub already: Vec<i64>,
}

const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS _snodo_store_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    applied_at TEXT NOT NULL)";

/// Brings the store up to the latest migration. Each migration runs in one transaction
/// together with its ledger row, so a crash leaves it either applied or not at all.
pub async fn migrate(db: &Db) -> Result<MigrateReport> {
    let dialect = db.dialect();
    let mut report = MigrateReport {
        dialect: dialect.to_string(),
        applied: Vec::new(),
        already: Vec::new(),
    };
    let ctx = |what: &str| format!("{what} the canonical store ({dialect})");
    match db {
        Db::Sqlite(p) => {
            sqlx::raw_sql(LEDGER_DDL)
                .execute(p)
                .await
                .map_err(|e| Error::db(ctx("preparing"), e))?;
        }
        Db::Postgres(p) => {
            sqlx::raw_sql(LEDGER_DDL)
                .execute(p)
                .await
                .map_err(|e| Error::db(ctx("preparing"), e))?;
        }
    }
    for m in MIGRATIONS {
        let sql = render(m.sql, dialect);
        let sha = hex::encode(Sha256::digest(sql.as_bytes()));
        let existing: Option<String> = match db {
            Db::Sqlite(p) => {
                sqlx::query("SELECT sha256 FROM _snodo_store_migrations WHERE version = $1")
                    .bind(m.version)
                    .fetch_optional(p)
                    .await
                    .map_err(|e| Error::db(ctx("reading the migrations of"), e))?
                    .map(|r| r.get(0))
            }
            Db::Postgres(p) => {
                sqlx::query("SELECT sha256 FROM _snodo_store_migrations WHERE version = $1")
                    .bind(m.version)
                    .fetch_optional(p)
                    .await
                    .map_err(|e| Error::db(ctx("reading the migrations of"), e))?
                    .map(|r| r.get(0))
            }
        };
        match existing {
            Some(s) if s == sha => {
                report.already.push(m.version);
                continue;
            }
            Some(_) => {
                return Err(Error::Other(format!(
                    "store migration {:04} ({}) was changed after it was applied to this database; \
                     restore the original file and add a new migration instead",
                    m.version, m.name
                )));
            }
            None => {}
        }
        let now = chrono::Utc::now().to_rfc3339();
        let what = ctx(&format!(
            "applying migration {:04} {} to",
            m.version, m.name
        ));
        macro_rules! apply {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.map_err(|e| Error::db(&what, e))?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(&what, e))?;
                sqlx::query(
                    "INSERT INTO _snodo_store_migrations (version, name, sha256, applied_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(m.version)
                .bind(m.name)
                .bind(&sha)
                .bind(&now)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(&what, e))?;
                tx.commit().await.map_err(|e| Error::db(&what, e))?;
            }};
        }
        match db {
            Db::Sqlite(p) => apply!(p),
            Db::Postgres(p) => apply!(p),
        }
        tracing::info!(
            version = m.version,
            name = m.name,
            "store migration applied"
        );
        report.applied.push(m.version);
    }
    Ok(report)
}

/// Makes sure the tenant `codice` exists.
pub async fn ensure_ente(db: &Db, codice: &str, denominazione: &str) -> Result<()> {
    let sql = "INSERT INTO ente (codice, denominazione, tipo) VALUES ($1, $2, 'comune')
               ON CONFLICT (codice) DO NOTHING";
    let what = format!("registering ente `{codice}`");
    match db {
        Db::Sqlite(p) => sqlx::query(sql)
            .bind(codice)
            .bind(denominazione)
            .execute(p)
            .await
            .map(|_| ()),
        Db::Postgres(p) => sqlx::query(sql)
            .bind(codice)
            .bind(denominazione)
            .execute(p)
            .await
            .map(|_| ()),
    }
    .map_err(|e| Error::db(&what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_is_replaced_in_both_dialects() {
        for d in ["postgres", "sqlite"] {
            let sql = schema_sql(d);
            for (token, _, _) in TOKENS {
                assert!(!sql.contains(token), "{token} left in {d}");
            }
            assert!(!sql.contains('{'), "an unknown token is left in {d}");
        }
    }

    #[test]
    fn every_table_but_ente_carries_the_trace_columns() {
        let names = tables();
        assert!(names.len() > 20, "{names:?}");
        // `siuss_*` are the flows' own ledgers, not canonical data (0002 says so).
        for t in names
            .iter()
            .filter(|t| *t != "ente" && !t.starts_with("siuss_"))
        {
            let sql = MIGRATIONS
                .iter()
                .map(|m| m.sql)
                .find(|s| s.contains(&format!("CREATE TABLE {t} (")))
                .unwrap();
            let start = sql.find(&format!("CREATE TABLE {t} (")).unwrap();
            let body = &sql[start..start + sql[start..].find(");").unwrap()];
            for c in TRACE_COLUMNS {
                assert!(body.contains(&format!("    {c} ")), "{t} lacks {c}");
            }
            assert!(
                body.contains("UNIQUE (ente, source_system, source_key)")
                    || body.contains("UNIQUE (ente, chiave)")
                    || body.contains("UNIQUE (ente, tipo, fonte_a, fonte_b)"),
                "{t} has no natural key"
            );
        }
    }

    #[test]
    fn every_reference_names_real_columns() {
        for r in REFERENCES {
            let cols = columns(r.table).unwrap_or_else(|| panic!("no table {}", r.table));
            assert!(cols.iter().any(|c| c == r.id_column), "{r:?}");
            assert!(cols.iter().any(|c| c == r.key_column), "{r:?}");
            assert!(columns(r.target).is_some(), "{r:?}");
        }
        let p = columns("presa_in_carico").unwrap();
        assert!(p.contains(&"data_apertura".to_string()) && !p.contains(&"id".to_string()));
        assert!(columns("nessuna").is_none());
    }

    #[tokio::test]
    async fn migrating_sqlite_twice_applies_once_and_creates_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = snodo_core::config::ConnectionConfig::Sqlite {
            path: dir.path().join("s.db").display().to_string(),
        };
        let db = Db::connect(&cfg, 1).await.unwrap();
        let first = migrate(&db).await.unwrap();
        assert_eq!(first.applied, vec![1, 2, 3, 4]);
        let second = migrate(&db).await.unwrap();
        assert!(second.applied.is_empty());
        assert_eq!(second.already, vec![1, 2, 3, 4]);
        let i = columns("intervento").unwrap();
        assert!(
            i.contains(&"annullato".to_string()),
            "ALTER-added columns count: {i:?}"
        );
        let Db::Sqlite(p) = &db else { unreachable!() };
        for t in tables() {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = $1")
                .bind(&t)
                .fetch_one(p)
                .await
                .unwrap();
            assert_eq!(n, 1, "table {t} missing");
        }
        ensure_ente(&db, "GE", "Comune di Genova").await.unwrap();
        ensure_ente(&db, "GE", "Comune di Genova").await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ente")
            .fetch_one(p)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn an_applied_migration_that_changed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = snodo_core::config::ConnectionConfig::Sqlite {
            path: dir.path().join("s.db").display().to_string(),
        };
        let db = Db::connect(&cfg, 1).await.unwrap();
        migrate(&db).await.unwrap();
        let Db::Sqlite(p) = &db else { unreachable!() };
        sqlx::query("UPDATE _snodo_store_migrations SET sha256 = 'x'")
            .execute(p)
            .await
            .unwrap();
        let err = migrate(&db).await.unwrap_err().to_string();
        assert!(err.contains("was changed after it was applied"), "{err}");
    }
}
