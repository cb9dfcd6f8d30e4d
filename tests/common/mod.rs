//! Shared helpers for the end-to-end tests: the `snodo` binary, a throwaway PostgreSQL
//! cluster (one per test binary, one database per test), and fixture generation.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root (tests run the binary from here so fixture paths resolve).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `snodo` command with the given connections file, run from the repository root.
pub fn snodo(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_snodo"));
    c.current_dir(root())
        .arg("--config")
        .arg(config)
        .env_remove("SNODO_CONFIG");
    c
}

/// Runs a command and returns its output, printing it for failing tests' logs.
pub fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("spawn snodo");
    eprintln!(
        "--- {:?}\nexit {:?}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a helper program (psql, python3, openssl, xmllint …) and returns its output; the
/// test fails, saying `what` and showing the program's stderr, when it cannot be started
/// or exits with an error.
pub fn succeed(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command to its end with its output discarded, and returns whether it succeeded
/// and its peak resident memory in kilobytes (`ru_maxrss` of that one child, from `wait4`).
// The child is reaped by `wait4` (which alone reports its own peak memory), not by
// `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn run_for_peak_rss(mut cmd: Command) -> (bool, u64) {
    use std::process::Stdio;
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value, and `wait4` only writes into the two
    // locals for the child spawned above, which nothing else waits for.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    (
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        usage.ru_maxrss as u64,
    )
}

/// Runs `snodo ARGS… --json` and returns the exit code and the parsed output (null when
/// the command printed no JSON, e.g. on a configuration error).
pub fn snodo_json(config: &Path, args: &[&std::ffi::OsStr]) -> (i32, serde_json::Value) {
    let out = run({
        let mut c = snodo(config);
        c.args(args).arg("--json");
        c
    });
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
    )
}

/// `snodo run PIPELINE --json`: exit code and run summary.
pub fn run_pipeline(config: &Path, pipeline: &Path) -> (i32, serde_json::Value) {
    snodo_json(config, &["run".as_ref(), pipeline.as_os_str()])
}

/// `snodo rejects RUN --json`: the rejects of a run (and of the runs it resumed).
pub fn rejects_of(config: &Path, run_id: &str) -> Vec<serde_json::Value> {
    let (code, v) = snodo_json(config, &["rejects".as_ref(), run_id.as_ref()]);
    assert_eq!(code, 0, "snodo rejects {run_id} failed");
    serde_json::from_value(v).unwrap()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A connections file in `dir` with a SQLite store, a SQLite flow log and, when given, a
/// PostgreSQL connection `pg`.
pub fn connections(dir: &Path, pg: Option<&PgDb>) -> PathBuf {
    let mut text = format!(
        "connections:\n  store:\n    sqlite: {{ path: {0}/store.db }}\n  flowlog:\n    sqlite: {{ path: {0}/flowlog.db }}\n",
        dir.display()
    );
    if let Some(pg) = pg {
        text.push_str(&format!(
            "  pg:\n    postgres: {{ host: 127.0.0.1, port: {}, database: {}, user: postgres, password: \"${{env:SNODO_TEST_PG_PASSWORD}}\" }}\n",
            pg.port, pg.name
        ));
    }
    text.push_str("flow_log:\n  connection: flowlog\n");
    let p = dir.join("snodo.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A PostgreSQL cluster started for this test binary.
pub struct PgCluster {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
}

/// One database in the shared cluster.
pub struct PgDb {
    pub port: u16,
    pub name: String,
}

impl PgDb {
    /// A sqlx URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// Runs SQL with psql and returns the unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = succeed(
            Command::new("psql").args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                &self.name,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]),
            "psql failed",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn pg_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return p;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install the postgresql package",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn as_postgres(bin: &Path, args: &[&str]) -> Command {
    if is_root() {
        // initdb refuses to run as root; the postgres system user exists wherever the
        // server package is installed.
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin).args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    }
}

/// The shared cluster, started on first use and stopped when the test process exits.
pub fn pg_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(start_cluster)
}

/// A cluster of the test's own (for a test that stops or crashes its server, which the
/// shared cluster's other tests must not see), stopped when the test process exits.
pub fn start_cluster() -> PgCluster {
    let bin = pg_bindir();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("snodo-pg-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        assert!(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success()
        );
    }
    let data = dir.join("data");
    let st = as_postgres(
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
    )
    .output()
    .unwrap();
    assert!(
        st.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let cluster = PgCluster { port, dir, bin };
    cluster.start();
    // A watchdog stops the cluster when this test process ends, however it ends.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runas} {pgctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        runas = if is_root() {
            "runuser -u postgres --"
        } else {
            ""
        },
        pgctl = cluster.bin.join("pg_ctl").display(),
        data = data.display(),
        dir = cluster.dir.display(),
    );
    // Deliberately not waited for: it must outlive this process.
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("sh").arg("-c").arg(stop).spawn().unwrap();
    cluster
}

impl PgCluster {
    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.dir.join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        as_postgres(&self.bin.join("pg_ctl"), &all)
            .output()
            .unwrap()
    }

    /// Starts the server (again, after [`PgCluster::crash`]: it recovers from its WAL).
    pub fn start(&self) {
        // pg_stat_statements (shipped with the server) lets a test see which statements a
        // sink sent, such as the PostgreSQL writer's durability barrier.
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c shared_preload_libraries=pg_stat_statements",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let st = self.pg_ctl(&["-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"]);
        assert!(
            st.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }

    /// Stops the server as a crash would: `pg_ctl -m immediate`, no shutdown checkpoint,
    /// every connection cut.
    pub fn crash(&self) {
        let st = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        assert!(
            st.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }

    /// A fresh database `name` in this cluster.
    pub fn db(&self, name: &str) -> PgDb {
        let admin = PgDb {
            port: self.port,
            name: "postgres".into(),
        };
        admin.psql(&format!("DROP DATABASE IF EXISTS {name}"));
        admin.psql(&format!("CREATE DATABASE {name}"));
        PgDb {
            port: self.port,
            name: name.to_string(),
        }
    }
}

/// What a PostgreSQL test starts from: a temporary directory, a fresh database `name` in
/// the shared cluster, and a connections file naming it `pg` (its password from
/// `SNODO_TEST_PG_PASSWORD`, which this sets).
pub fn pg_workspace(name: &str) -> (tempfile::TempDir, PgDb, PathBuf) {
    // SAFETY: set before the test starts any thread that reads it; every test sets the
    // same value.
    unsafe { std::env::set_var("SNODO_TEST_PG_PASSWORD", "test-only-password") };
    let dir = tempfile::tempdir().unwrap();
    let pg = pg_db(name);
    let cfg = connections(dir.path(), Some(&pg));
    (dir, pg, cfg)
}

/// A fresh database in the shared cluster.
pub fn pg_db(name: &str) -> PgDb {
    pg_cluster().db(name)
}

/// Generates a legacy CSV with the project's generator; returns the file and its
/// expectations (counts of valid and bad rows by kind).
pub fn generate_csv(
    dir: &Path,
    rows: u64,
    seed: u64,
    bad_rate: &str,
) -> (PathBuf, serde_json::Value) {
    let out = dir.join(format!("legacy_{rows}_{seed}.csv"));
    let expect = dir.join(format!("legacy_{rows}_{seed}.expect.json"));
    succeed(
        Command::new("python3")
            .arg(root().join("scripts/gen_legacy_csv.py"))
            .args([
                "--rows",
                &rows.to_string(),
                "--seed",
                &seed.to_string(),
                "--bad-rate",
                bad_rate,
            ])
            .arg("--out")
            .arg(&out)
            .arg("--expect")
            .arg(&expect),
        "generator",
    );
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(&expect).unwrap()).unwrap();
    (out, e)
}

/// Writes the shipped example pipeline with its source path and sink connection replaced.
pub fn example_pipeline(
    dir: &Path,
    name: &str,
    csv: &Path,
    sink_connection: &str,
    extra: &str,
) -> PathBuf {
    let text = std::fs::read_to_string(root().join("pipelines/esempio/assistiti_csv_sqlite.yaml"))
        .unwrap();
    let text = text
        .replace(
            "path: tests/fixtures/csv/assistiti_legacy.csv",
            &format!("path: {}", csv.display()),
        )
        .replace(
            "connection: store",
            &format!("connection: {sink_connection}"),
        )
        .replace("pipeline: esempio-assistiti", &format!("pipeline: {name}"));
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, format!("{text}{extra}")).unwrap();
    p
}

/// Runs statements on a SQLite file directly (not through snodo, which is under test).
pub fn sqlite_exec(db: &Path, statements: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", db.display()))
            .await
            .unwrap();
        for s in statements {
            sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
}

/// The first column of a query on a SQLite file, one line per row.
pub fn sqlite_query(db: &Path, sql: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Row;
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.iter()
            .map(|r| {
                r.try_get::<i64, _>(0)
                    .map(|v| v.to_string())
                    .or_else(|_| r.try_get::<String, _>(0))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// A small deterministic generator of kill delays, so a failure can be replayed.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next delay, below `max` milliseconds.
    pub fn next_ms(&mut self, max: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % max
    }
}

/// Starts `cmd` and SIGKILLs it after `ms` milliseconds (or lets it finish if faster).
/// Returns true if it was killed before finishing.
pub fn run_and_kill(cmd: Command, ms: u64) -> bool {
    run_and_kill_when(cmd, || true, ms)
}

/// Starts `cmd`, waits until `ready()` holds (polled every 5 ms), then SIGKILLs it `ms`
/// milliseconds later, or lets it finish if it is faster. Killing on progress rather than
/// on the clock keeps a test's kills mid-run however busy the machine is.
pub fn run_and_kill_when(mut cmd: Command, ready: impl Fn() -> bool, ms: u64) -> bool {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut deadline: Option<std::time::Instant> = None;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "run failed on its own: {st:?}");
            return false;
        }
        let now = std::time::Instant::now();
        match deadline {
            None if ready() => deadline = Some(now + std::time::Duration::from_millis(ms)),
            Some(d) if now >= d => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                return true;
            }
            _ => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
