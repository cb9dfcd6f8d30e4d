//! TLS to PostgreSQL against a real server: this binary's throwaway cluster is switched to
//! TLS with a certificate authority made by `openssl` for the test, and a role that
//! `pg_hba.conf` admits only over TLS, and one it admits only with a client certificate
//! signed by that authority. Each `ssl_mode` is tried through `snodo store migrate`, the
//! first thing an operator runs against a new store.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    succeed(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {args:?} (the openssl package makes the test's certificates)"),
    );
}

/// A certificate authority `name`.crt/.key in `dir`.
fn authority(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=snodo test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

struct Tls {
    /// The authority that signed the server's certificate and the client's.
    ca: PathBuf,
    /// The directory of the certificates.
    dir: PathBuf,
    /// Another authority, which signed nothing the server has.
    stranger: PathBuf,
    port: u16,
}

/// Turns TLS on in this binary's cluster (once): a server certificate for `localhost`
/// only (not for `127.0.0.1`, so that `verify-full` can be caught checking the name), and
/// the role `snodo_tls`, refused without TLS.
fn tls_cluster() -> &'static Tls {
    static TLS: std::sync::OnceLock<Tls> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let cluster = pg_cluster();
        let dir = cluster.dir.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        authority(&dir, "ca");
        authority(&dir, "stranger");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                "-keyout", "server.key", "-out", "server.csr",
            ],
        );
        openssl(
            &dir,
            &[
                "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
            ],
        );
        // Client certificates for the role `snodo_cert` (`cert` authentication matches the
        // certificate's CN with the user name): one from the server's authority, one from
        // the stranger.
        std::fs::write(
            dir.join("client.ext"),
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        for (name, ca) in [("client", "ca"), ("forged", "stranger")] {
            openssl(
                &dir,
                &[
                    "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=snodo_cert",
                    "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"),
                ],
            );
            openssl(
                &dir,
                &[
                    "x509", "-req", "-in", &format!("{name}.csr"), "-CA", &format!("{ca}.crt"),
                    "-CAkey", &format!("{ca}.key"), "-CAcreateserial", "-days", "2",
                    "-extfile", "client.ext", "-out", &format!("{name}.crt"),
                ],
            );
        }
        // PostgreSQL refuses a key that others can read, and reads it as its own user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();

        let admin = PgDb {
            port: cluster.port,
            name: "postgres".into(),
        };
        let hba = cluster.dir.join("data/pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!(
                "hostssl all snodo_tls 127.0.0.1/32 trust\nhost all snodo_tls 127.0.0.1/32 reject\n\
                 hostssl all snodo_tls ::1/128 trust\nhost all snodo_tls ::1/128 reject\n\
                 hostssl all snodo_cert 127.0.0.1/32 cert\nhost all snodo_cert 127.0.0.1/32 reject\n\
                 hostssl all snodo_cert ::1/128 cert\nhost all snodo_cert ::1/128 reject\n{rules}"
            ),
        )
        .unwrap();
        for sql in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", dir.join("server.crt").display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", dir.join("server.key").display()),
            format!("ALTER SYSTEM SET ssl_ca_file = '{}'", dir.join("ca.crt").display()),
            "ALTER SYSTEM SET ssl = on".into(),
            "SELECT pg_reload_conf()".into(),
            "CREATE ROLE snodo_tls LOGIN".into(),
            "CREATE DATABASE tls_store OWNER snodo_tls".into(),
            "CREATE ROLE snodo_cert LOGIN".into(),
            "CREATE DATABASE cert_store OWNER snodo_cert".into(),
        ] {
            admin.psql(&sql);
        }
        // The reload is asynchronous: wait until new sessions see it.
        let on = (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            admin.psql("SHOW ssl") == "on"
        });
        assert!(on, "the server did not turn TLS on: see {}/log", cluster.dir.display());
        Tls {
            ca: dir.join("ca.crt"),
            dir: dir.clone(),
            stranger: dir.join("stranger.crt"),
            port: cluster.port,
        }
    })
}

/// `snodo store migrate` on a store reached as `host` with `tls` (YAML flow-map entries);
/// returns whether it succeeded and its stderr.
fn migrate(dir: &Path, host: &str, tls: &str) -> (bool, String) {
    migrate_as(dir, "snodo_tls", "tls_store", host, tls)
}

/// [`migrate`] as `user`, into `database`.
fn migrate_as(dir: &Path, user: &str, database: &str, host: &str, tls: &str) -> (bool, String) {
    let t = tls_cluster();
    let cfg = dir.join("snodo.yaml");
    std::fs::write(
        &cfg,
        format!(
            "connections:\n  store:\n    postgres: {{ host: {host}, port: {}, database: {database}, user: {user}{tls} }}\n  \
             flowlog:\n    sqlite: {{ path: {}/flowlog.db }}\nflow_log:\n  connection: flowlog\n",
            t.port,
            dir.display()
        ),
    )
    .unwrap();
    let out = run({
        let mut c = snodo(&cfg);
        c.args(["store", "migrate"]);
        c
    });
    (out.status.success(), stderr(&out))
}

/// How many store migrations `database` of the TLS cluster has applied.
fn migrations_in(database: &str) -> u32 {
    let store = PgDb {
        port: tls_cluster().port,
        name: database.into(),
    };
    store
        .psql("SELECT count(*) FROM _snodo_store_migrations")
        .parse()
        .unwrap()
}

#[test]
fn verify_full_connects_to_the_server_named_by_the_given_authority() {
    let dir = tempfile::tempdir().unwrap();
    let t = tls_cluster();
    let ca = t.ca.display();
    let (ok, err) = migrate(
        dir.path(),
        "localhost",
        &format!(", ssl_mode: verify-full, ssl_root_cert: {ca}"),
    );
    assert!(ok, "{err}");
    // The role is refused without TLS, so reaching the store proves the session was
    // encrypted; the migrations are there.
    assert!(migrations_in("tls_store") >= 4);
    // `require` encrypts without checking the certificate; `verify-ca` checks the
    // authority but not the name (the certificate is for localhost, not 127.0.0.1).
    for tls in [
        ", ssl_mode: require".to_string(),
        format!(", ssl_mode: verify-ca, ssl_root_cert: {ca}"),
        String::new(), // prefer, the default: TLS since the server offers it
    ] {
        let (ok, err) = migrate(dir.path(), "127.0.0.1", &tls);
        assert!(ok, "{tls}: {err}");
    }
}

#[test]
fn a_server_that_cannot_prove_its_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = tls_cluster();
    for (host, tls, expect) in [
        // The certificate is for localhost only.
        (
            "127.0.0.1",
            format!(", ssl_mode: verify-full, ssl_root_cert: {}", t.ca.display()),
            "certificate",
        ),
        // Signed by an authority the operator did not name.
        (
            "localhost",
            format!(
                ", ssl_mode: verify-full, ssl_root_cert: {}",
                t.stranger.display()
            ),
            "certificate",
        ),
        // No public authority signed it either.
        (
            "localhost",
            ", ssl_mode: verify-full".to_string(),
            "certificate",
        ),
        // Plain text, which pg_hba.conf refuses for this role.
        ("localhost", ", ssl_mode: disable".to_string(), "snodo_tls"),
        // A missing authority file is named as such.
        (
            "localhost",
            ", ssl_mode: verify-full, ssl_root_cert: /nonexistent/ca.pem".to_string(),
            "certificate authority (ssl_root_cert) `/nonexistent/ca.pem`",
        ),
    ] {
        let (ok, err) = migrate(dir.path(), host, &tls);
        assert!(!ok, "{host}{tls} connected");
        assert!(
            err.contains("connecting to postgres snodo_tls@"),
            "{host}{tls}: {err}"
        );
        assert!(
            err.contains(expect),
            "{host}{tls}: expected {expect:?} in: {err}"
        );
    }
}

#[test]
fn an_unknown_ssl_mode_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = migrate(dir.path(), "localhost", ", ssl_mode: verify");
    assert!(!ok);
    assert!(err.contains("snodo.yaml:3:"), "{err}");
    assert!(err.contains("ssl_mode"), "{err}");
}

#[test]
fn a_client_certificate_signed_by_the_servers_authority_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let t = tls_cluster();
    let at = |f: &str| t.dir.join(f).display().to_string();
    let tls = |cert: &str, key: &str| {
        format!(
            ", ssl_mode: verify-full, ssl_root_cert: {}, ssl_client_cert: {cert}, ssl_client_key: {key}",
            at("ca.crt")
        )
    };
    let (ok, err) = migrate_as(
        dir.path(),
        "snodo_cert",
        "cert_store",
        "localhost",
        &tls(&at("client.crt"), &at("client.key")),
    );
    assert!(ok, "{err}");
    // pg_hba.conf admits the role only with a certificate: the session had one.
    assert!(migrations_in("cert_store") >= 4);

    // A key whose contents are not a key: the error names the connection and never shows
    // what the file holds.
    let garbage = dir.path().join("garbage.key");
    let secret = "NOT-A-KEY-s3cr3t-material-0123456789";
    std::fs::write(
        &garbage,
        format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let refused = [
        // No certificate at all: pg_hba.conf's `cert` refuses the role.
        (
            format!(", ssl_mode: verify-full, ssl_root_cert: {}", at("ca.crt")),
            "requires a valid client certificate",
        ),
        // A certificate for the right name from an authority the server does not trust.
        (tls(&at("forged.crt"), &at("forged.key")), "UnknownCA"),
        // A certificate with another certificate's key.
        (tls(&at("client.crt"), &at("forged.key")), "KeyMismatch"),
        // A missing key file is named as such.
        (
            tls(&at("client.crt"), "/nonexistent/snodo.key"),
            "client key (ssl_client_key) `/nonexistent/snodo.key`",
        ),
        (
            tls(&at("client.crt"), &garbage.display().to_string()),
            "error with configuration",
        ),
    ];
    for (tls, expect) in refused {
        let (ok, err) = migrate_as(dir.path(), "snodo_cert", "cert_store", "localhost", &tls);
        assert!(!ok, "{tls} connected");
        assert!(
            err.contains("connecting to postgres snodo_cert@") && err.contains(expect),
            "{tls}: expected {expect:?} in: {err}"
        );
        assert!(
            !err.contains(secret),
            "{tls}: the key's contents leaked: {err}"
        );
    }
}
