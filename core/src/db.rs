//! Opening the two database kinds snodo runs on. A small enum rather than sqlx's `Any`
//! driver: `Any` cannot carry dates or decimals, and the two dialects differ anyway.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::{ConnectionConfig, PgSslMode};
use crate::error::{Error, Result};

/// A connection pool to SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub enum Db {
    /// Embedded SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

impl Db {
    /// Connects. SQLite files (and their directory) are created when missing, in WAL mode
    /// so that `snodo runs` can read while a run writes.
    pub async fn connect(cfg: &ConnectionConfig, max_connections: u32) -> Result<Db> {
        let what = format!("connecting to {}", cfg.describe());
        match cfg {
            ConnectionConfig::Sqlite { path } => {
                if let Some(dir) = std::path::Path::new(path).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::io("creating directory", dir, e))?;
                }
                let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
                    .map_err(|e| Error::db(&what, e))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30));
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(opts)
                    .await
                    .map_err(|e| Error::db(&what, e))?;
                Ok(Db::Sqlite(pool))
            }
            ConnectionConfig::Mssql(_) => Err(Error::Other(format!(
                "{what}: SQL Server connections are read by `sql` sources (through tiberius); \
                 a store, a sink or the flow log must be SQLite or PostgreSQL"
            ))),
            ConnectionConfig::Postgres {
                ssl_mode,
                ssl_root_cert,
                ssl_client_cert,
                ssl_client_key,
                ..
            } => {
                let url = cfg
                    .url()
                    .map_err(|e| Error::Other(format!("{what}: {e}")))?;
                let mut opts = PgConnectOptions::from_str(&url)
                    .map_err(|e| Error::db(&what, e))?
                    .ssl_mode(match ssl_mode {
                        PgSslMode::Disable => sqlx::postgres::PgSslMode::Disable,
                        PgSslMode::Prefer => sqlx::postgres::PgSslMode::Prefer,
                        PgSslMode::Require => sqlx::postgres::PgSslMode::Require,
                        PgSslMode::VerifyCa => sqlx::postgres::PgSslMode::VerifyCa,
                        PgSslMode::VerifyFull => sqlx::postgres::PgSslMode::VerifyFull,
                    });
                // The PEM files are read here rather than by the driver at connect time, so
                // that a wrong path is reported as a missing file, not as a failed handshake.
                let read = |setting: &str, path: &str| {
                    std::fs::read(path).map_err(|e| {
                        Error::Other(format!("{what}: cannot read its {setting} `{path}`: {e}"))
                    })
                };
                if let Some(ca) = ssl_root_cert {
                    opts = opts
                        .ssl_root_cert_from_pem(read("certificate authority (ssl_root_cert)", ca)?);
                }
                if let (Some(cert), Some(key)) = (ssl_client_cert, ssl_client_key) {
                    opts = opts
                        .ssl_client_cert_from_pem(read(
                            "client certificate (ssl_client_cert)",
                            cert,
                        )?)
                        .ssl_client_key_from_pem(read("client key (ssl_client_key)", key)?);
                }
                let opts = opts
                    .application_name("snodo")
                    // Keyset pages are one prepared statement run with a new key each time.
                    // After five runs PostgreSQL may switch to a generic plan that ignores
                    // the key and sorts the whole query for every page (quadratic: measured
                    // on the SIUSS query, scripts/bench_siuss.sh); a plan per key keeps each
                    // page an index range scan.
                    .options([("plan_cache_mode", "force_custom_plan")]);
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await
                    .map_err(|e| Error::db(&what, e))?;
                Ok(Db::Postgres(pool))
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn dialect(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }
}

/// Quotes an SQL identifier (table or column name) for both dialects. Names come from
/// pipeline files, so they are quoted rather than trusted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a possibly schema-qualified table name (`schema.table`).
pub fn quote_table(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}
