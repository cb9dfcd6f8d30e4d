//! The connections file (`snodo.yaml`): every external system is named once here, and
//! pipelines refer to it by name. Secrets are references (`${env:…}`, `${file:…}`).
//!
//! ```yaml
//! connections:
//!   store:
//!     sqlite: { path: data/store.db }
//!   canonical:
//!     postgres:
//!       host: db.comune.local
//!       database: snodo
//!       user: snodo
//!       password: ${env:SNODO_PG_PASSWORD}
//! flow_log:
//!   connection: canonical
//! ```

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::yaml::{self, NodeKind, Problem};
use super::{child, deepest, problem, read_text};
use crate::error::{Error, Result};
use crate::secret::{SecretRef, parse_reference};

/// The connections file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
pub struct ConnectionsFile {
    /// Named connections, used by pipelines as `connection: NAME`.
    #[serde(default)]
    pub connections: IndexMap<String, ConnectionConfig>,
    /// Where the flow log lives. Default: the SQLite file `data/flowlog.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_log: Option<FlowLogConfig>,
}

/// One database connection.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionConfig {
    /// An embedded SQLite database file (created if missing).
    Sqlite {
        /// Path of the database file.
        path: String,
    },
    /// A PostgreSQL server.
    Postgres {
        /// Host name or IP address.
        host: String,
        /// TCP port (default 5432).
        #[serde(default = "default_pg_port")]
        port: u16,
        /// Database name.
        database: String,
        /// User name.
        user: String,
        /// Password reference: `${env:NAME}` or `${file:/path}`. Omit for trust/peer auth.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<SecretRef>,
    },
}

fn default_pg_port() -> u16 {
    5432
}

/// Where the flow log is kept.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct FlowLogConfig {
    /// Name of a connection in `connections` (SQLite or PostgreSQL).
    pub connection: String,
}

impl ConnectionsFile {
    /// Reads `path`, or returns the embedded defaults when `path` does not exist and
    /// `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<ConnectionsFile> {
        if !path.exists() && !required {
            return Ok(ConnectionsFile::default());
        }
        let text = read_text(path)?;
        Self::parse(&text, path)
    }

    /// Parses and checks the file, collecting every problem.
    pub fn parse(text: &str, path: &Path) -> Result<ConnectionsFile> {
        let fail = |problems: Vec<Problem>| Error::Config {
            file: path.to_path_buf(),
            problems,
        };
        let root = yaml::parse(text).map_err(|p| fail(vec![p]))?;
        let file: ConnectionsFile = yaml::from_node(&root, "").map_err(fail)?;
        let mut problems = Vec::new();
        for (name, conn) in &file.connections {
            let node = deepest(&root, &["connections", name]);
            if let ConnectionConfig::Postgres {
                password: Some(p), ..
            } = conn
                && parse_reference(&p.0).is_none()
            {
                let n = child(node, "postgres")
                    .and_then(|pg| child(pg, "password"))
                    .unwrap_or(node);
                problems.push(problem(
                    n,
                    &format!("connections.{name}.postgres.password"),
                    "a password must be a reference such as `${env:SNODO_PG_PASSWORD}` or \
                     `${file:/run/secrets/pg}`; never write a secret in a file",
                ));
            }
        }
        if let Some(fl) = &file.flow_log
            && !file.connections.contains_key(&fl.connection)
        {
            problems.push(problem(
                deepest(&root, &["flow_log", "connection"]),
                "flow_log.connection",
                format!(
                    "unknown connection `{}`; defined: {}",
                    fl.connection,
                    file.connections
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if !matches!(root.kind, NodeKind::Map(_)) {
            problems.push(problem(&root, "", "the connections file is a mapping"));
        }
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(fail(problems))
        }
    }

    /// The connection named `name`, or an error that lists the defined ones.
    pub fn get(&self, name: &str) -> std::result::Result<&ConnectionConfig, String> {
        self.connections.get(name).ok_or_else(|| {
            let defined: Vec<_> = self.connections.keys().cloned().collect();
            format!(
                "unknown connection `{name}`; defined in the connections file: {}",
                if defined.is_empty() {
                    "none".to_string()
                } else {
                    defined.join(", ")
                }
            )
        })
    }

    /// The flow log's connection: the configured one, or the embedded SQLite default.
    pub fn flow_log_connection(&self) -> std::result::Result<ConnectionConfig, String> {
        match &self.flow_log {
            Some(fl) => self.get(&fl.connection).cloned(),
            None => Ok(ConnectionConfig::Sqlite {
                path: default_data_dir().join("flowlog.db").display().to_string(),
            }),
        }
    }
}

/// Directory of the embedded defaults: `$SNODO_DATA_DIR` or `./data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("SNODO_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"))
}

impl ConnectionConfig {
    /// A connection URL for sqlx, with the password resolved. Only the driver sees it.
    pub fn url(&self) -> std::result::Result<String, String> {
        match self {
            ConnectionConfig::Sqlite { path } => Ok(format!("sqlite://{path}?mode=rwc")),
            ConnectionConfig::Postgres {
                host,
                port,
                database,
                user,
                password,
            } => {
                let pw = match password {
                    Some(p) => format!(":{}", urlencode(p.resolve()?.expose())),
                    None => String::new(),
                };
                Ok(format!(
                    "postgres://{}{pw}@{host}:{port}/{}",
                    urlencode(user),
                    urlencode(database)
                ))
            }
        }
    }

    /// A description safe to print: no password.
    pub fn describe(&self) -> String {
        match self {
            ConnectionConfig::Sqlite { path } => format!("sqlite {path}"),
            ConnectionConfig::Postgres {
                host,
                port,
                database,
                user,
                ..
            } => format!("postgres {user}@{host}:{port}/{database}"),
        }
    }
}

/// Percent-encodes a URL component. Written here because it is six lines and only ever
/// applied to user names, database names and passwords.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_password_is_a_lint_error_that_does_not_echo_it() {
        let text = "connections:\n  pg:\n    postgres:\n      host: h\n      database: d\n      user: u\n      password: hunter2-literal\n";
        let err = ConnectionsFile::parse(text, Path::new("snodo.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("snodo.yaml:7:"), "{err}");
        assert!(err.contains("connections.pg.postgres.password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn env_password_resolves_into_url_only() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("SNODO_TEST_PW_CONN", "p@ss w0rd!") };
        let text = "connections:\n  pg:\n    postgres: { host: h, database: d, user: u, password: \"${env:SNODO_TEST_PW_CONN}\" }\n";
        let f = ConnectionsFile::parse(text, Path::new("snodo.yaml")).unwrap();
        let c = f.get("pg").unwrap();
        assert_eq!(c.url().unwrap(), "postgres://u:p%40ss%20w0rd%21@h:5432/d");
        assert!(!c.describe().contains("p@ss"));
        assert!(
            f.get("nope")
                .unwrap_err()
                .contains("defined in the connections file: pg")
        );
    }
}
