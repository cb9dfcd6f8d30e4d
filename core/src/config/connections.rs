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
    /// Named secret keys for keyed hashes, as references: `sinba: ${env:SNODO_SINBA_KEY}`
    /// (the key of SINBA's pseudonyms; at least 16 characters; never change it, or every
    /// minor gets a new pseudonym).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub keys: IndexMap<String, SecretRef>,
    /// What `snodo serve` exposes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<ServeConfig>,
}

/// `snodo serve`: the HTTP services the city exposes.
///
/// ```yaml
/// serve:
///   listen: 127.0.0.1:8443
///   waas:
///     connection: store
///     ente: D969
///     denominazione: Comune di Genova
///     tokens: ["${env:SNODO_WAAS_TOKEN}"]
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address and port to listen on (default `127.0.0.1:8080`). In production the
    /// e-service is published through the city's API gateway on PDND.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The INPS WaaS e-service "WAAS-SIUSS-Alimentazione" (`GET /status`, `GET /flussi`,
    /// `POST /esiti`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waas: Option<WaasConfig>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// The WaaS e-service.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaasConfig {
    /// The store connection whose `siuss_flusso` queue is served (the `connection` of the
    /// siuss pipelines with `channel: waas`).
    pub connection: String,
    /// Codice Belfiore of the ente whose flows are served (`codice_ente`).
    pub ente: String,
    /// Its name (`denominazione_ente`).
    pub denominazione: String,
    /// Bearer tokens accepted, as secret references. Today a static token agreed with
    /// the gateway; validating PDND vouchers (JWT) is a later step.
    pub tokens: Vec<SecretRef>,
    /// Path prefix of the three resources (default none: `/flussi`).
    #[serde(default)]
    pub prefix: String,
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
        /// Whether and how the connection is encrypted, with libpq's names (`sslmode`):
        /// `disable`, `prefer` (the default), `require`, `verify-ca`, `verify-full`. The
        /// data is about vulnerable people: across any network but the host itself use
        /// `verify-full`, which also proves the server is the one named in `host`.
        #[serde(default)]
        ssl_mode: PgSslMode,
        /// PEM file of the certificate authority that signed the server's certificate
        /// (libpq's `sslrootcert`), for `verify-ca` and `verify-full`. Without it the
        /// server's certificate must chain to one of the public authorities built into
        /// snodo (the Mozilla list), which an internal server's seldom does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ssl_root_cert: Option<String>,
        /// PEM file of snodo's own certificate (libpq's `sslcert`), for servers that
        /// authenticate clients by certificate (`cert` in `pg_hba.conf`, or `clientcert`).
        /// Needs `ssl_client_key`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ssl_client_cert: Option<String>,
        /// PEM file of the private key of `ssl_client_cert` (libpq's `sslkey`): a path, never
        /// the key itself; keep the file readable by snodo's user only. Its contents never
        /// appear in an error or a log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ssl_client_key: Option<String>,
    },
    /// A SQL Server database, read with tiberius: a source of pipelines and migrations
    /// (the legacy applications), never a store or the flow log.
    Mssql(MssqlConnection),
}

/// How the connection to PostgreSQL is encrypted: libpq's `sslmode` values, with their
/// meaning (TLS through rustls; no OpenSSL needed).
///
/// ```yaml
/// connections:
///   store:
///     postgres:
///       host: pg01.comune.local
///       database: snodo
///       user: snodo
///       password: ${env:SNODO_PG_PASSWORD}
///       ssl_mode: verify-full
///       ssl_root_cert: /etc/snodo/ca-comune.pem
///       # only where pg_hba.conf asks for a client certificate:
///       ssl_client_cert: /etc/snodo/snodo.crt
///       ssl_client_key: /etc/snodo/snodo.key
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PgSslMode {
    /// Plain text: the password and every row cross the network readable.
    Disable,
    /// TLS when the server offers it, plain text otherwise; the certificate is not
    /// checked. libpq's default, kept so that existing set-ups connect as before.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked, so a machine in the middle
    /// could still impersonate the server.
    Require,
    /// TLS, and the certificate must be signed by `ssl_root_cert` (or a public authority).
    VerifyCa,
    /// As `verify-ca`, and the certificate must be issued for `host`.
    VerifyFull,
}

/// How the connection to SQL Server is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MssqlEncrypt {
    /// No TLS at all, not even for the login: the password crosses the network only
    /// obfuscated (TDS does not encrypt it). Use it only on a trusted network, for old
    /// servers that speak nothing but TLS 1.0 (see `trust_server_certificate`), or put an
    /// stunnel in front of them instead.
    Off,
    /// TLS when the server offers it, plain text when the server has no certificate.
    #[default]
    On,
    /// TLS or no connection.
    Required,
}

/// A SQL Server database (SQL authentication).
///
/// ```yaml
/// connections:
///   siuss:
///     mssql:
///       host: sql01.comune.local
///       database: SIUSS
///       user: snodo_reader
///       password: ${env:SNODO_SIUSS_PASSWORD}
///       encrypt: on
///       trust_server_certificate: true   # the server's certificate is self-signed
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MssqlConnection {
    /// Host name or IP address.
    pub host: String,
    /// TCP port. Default 1433; with `instance`, leave it out and the SQL Server Browser
    /// (UDP 1434) is asked for the instance's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Database name.
    pub database: String,
    /// SQL Server login.
    pub user: String,
    /// Password reference: `${env:NAME}` or `${file:/path}`; never the password itself.
    pub password: SecretRef,
    /// Named instance (`SQLEXPRESS` in `host\SQLEXPRESS`), resolved through the SQL Server
    /// Browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// `off`, `on` (default) or `required`.
    #[serde(default)]
    pub encrypt: MssqlEncrypt,
    /// Accept the server's certificate without checking it (self-signed certificates, the
    /// norm on internal SQL Servers). The traffic is still encrypted, but a machine in the
    /// middle could impersonate the server.
    ///
    /// Old servers (SQL Server 2008–2014 without the TLS 1.2 updates) speak only TLS 1.0,
    /// which rustls cannot do at all: trusting the certificate does not help there. For
    /// such servers use `encrypt: off` on a trusted network, or reach them through an
    /// stunnel that speaks TLS 1.2 to snodo.
    #[serde(default)]
    pub trust_server_certificate: bool,
    /// Name shown in the server's session list (`APP_NAME()`, Activity Monitor).
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// Seconds allowed to open the connection and log in.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

fn default_application_name() -> String {
    "snodo".into()
}

fn default_connect_timeout() -> u64 {
    30
}

impl MssqlConnection {
    /// `host:port`, or `host\instance` (with `:port` when given). No secrets.
    pub fn address(&self) -> String {
        match (&self.instance, self.port) {
            (Some(i), Some(p)) => format!("{}\\{i}:{p}", self.host),
            (Some(i), None) => format!("{}\\{i}", self.host),
            (None, p) => format!("{}:{}", self.host, p.unwrap_or(1433)),
        }
    }

    /// A description safe to print: no password.
    pub fn describe(&self) -> String {
        format!("mssql {}@{}/{}", self.user, self.address(), self.database)
    }

    /// "connecting to SQL Server …" for error messages. No secrets.
    pub fn connecting(&self) -> String {
        format!(
            "connecting to SQL Server {}, database `{}` as `{}`",
            self.address(),
            self.database,
            self.user
        )
    }
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
            let (kind, password) = match conn {
                ConnectionConfig::Postgres { password, .. } => ("postgres", password.as_ref()),
                ConnectionConfig::Mssql(m) => ("mssql", Some(&m.password)),
                ConnectionConfig::Sqlite { .. } => ("sqlite", None),
            };
            if let Some(p) = password
                && parse_reference(&p.0).is_none()
            {
                let n = child(node, kind)
                    .and_then(|pg| child(pg, "password"))
                    .unwrap_or(node);
                problems.push(problem(
                    n,
                    &format!("connections.{name}.{kind}.password"),
                    "a password must be a reference such as `${env:SNODO_PG_PASSWORD}` or \
                     `${file:/run/secrets/pg}`; never write a secret in a file",
                ));
            }
            if let ConnectionConfig::Postgres {
                ssl_client_cert,
                ssl_client_key,
                ..
            } = conn
                && ssl_client_cert.is_some() != ssl_client_key.is_some()
            {
                let (given, missing) = if ssl_client_cert.is_some() {
                    ("ssl_client_cert", "ssl_client_key")
                } else {
                    ("ssl_client_key", "ssl_client_cert")
                };
                let pg = child(node, kind).unwrap_or(node);
                problems.push(problem(
                    child(pg, given).unwrap_or(pg),
                    &format!("connections.{name}.{kind}.{given}"),
                    format!("`{given}` needs `{missing}` too: a client certificate is presented with its private key"),
                ));
            }
        }
        for (name, key) in &file.keys {
            if parse_reference(&key.0).is_none() {
                problems.push(problem(
                    deepest(&root, &["keys", name]),
                    &format!("keys.{name}"),
                    "a key must be a reference such as `${env:SNODO_SINBA_KEY}` or `${file:/run/secrets/sinba}`; never write a secret in a file",
                ));
            }
        }
        if let Some(w) = file.serve.as_ref().and_then(|s| s.waas.as_ref()) {
            for (i, t) in w.tokens.iter().enumerate() {
                if parse_reference(&t.0).is_none() {
                    problems.push(problem(
                        deepest(&root, &["serve", "waas", "tokens"]),
                        &format!("serve.waas.tokens[{i}]"),
                        "a token must be a reference such as `${env:SNODO_WAAS_TOKEN}`; never write a secret in a file",
                    ));
                }
            }
            if !file.connections.contains_key(&w.connection) {
                problems.push(problem(
                    deepest(&root, &["serve", "waas", "connection"]),
                    "serve.waas.connection",
                    format!("unknown connection `{}`", w.connection),
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

    /// Resolves the keys named in `names` (those a pipeline uses; an unknown name is left
    /// for the step to report). The error names the key, never a value.
    pub fn resolve_keys<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> std::result::Result<IndexMap<String, crate::secret::Secret>, String> {
        names
            .into_iter()
            .filter_map(|k| self.keys.get(k).map(|r| (k, r)))
            .map(|(k, r)| {
                r.resolve()
                    .map(|s| (k.to_string(), s))
                    .map_err(|e| format!("key `{k}`: {e}"))
            })
            .collect()
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
            ConnectionConfig::Mssql(m) => Err(format!(
                "{} is a SQL Server connection: it can be read by a `sql` source, not used as a store or flow log",
                m.describe()
            )),
            ConnectionConfig::Postgres {
                host,
                port,
                database,
                user,
                password,
                ..
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
            ConnectionConfig::Mssql(m) => m.describe(),
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
    fn a_client_certificate_without_its_key_is_a_lint_error_at_its_line() {
        for (given, missing) in [
            ("ssl_client_cert", "ssl_client_key"),
            ("ssl_client_key", "ssl_client_cert"),
        ] {
            let text = format!(
                "connections:\n  pg:\n    postgres:\n      host: h\n      database: d\n      user: u\n      {given}: /etc/snodo/x.pem\n"
            );
            let err = ConnectionsFile::parse(&text, Path::new("snodo.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("snodo.yaml:7:"), "{err}");
            assert!(
                err.contains(&format!("connections.pg.postgres.{given}"))
                    && err.contains(&format!("needs `{missing}`")),
                "{err}"
            );
        }
        let both = "connections:\n  pg:\n    postgres: { host: h, database: d, user: u, ssl_client_cert: c.pem, ssl_client_key: k.pem }\n";
        assert!(ConnectionsFile::parse(both, Path::new("snodo.yaml")).is_ok());
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
