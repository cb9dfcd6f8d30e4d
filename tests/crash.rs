//! Kill -9 at random moments, restart, and compare with an uninterrupted run: the final
//! state must be identical (no row lost, none duplicated), for the PostgreSQL sink (COPY +
//! upsert + checkpoint in one transaction) and for the CSV file sink (partial file +
//! atomically renamed checkpoint).

mod common;

use std::time::Instant;

use common::*;

const ROWS: u64 = 200_000;

/// Runs the pipeline to completion once (reference), then from scratch with kills.
fn crash_and_compare(
    name: &str,
    make_pipeline: &dyn Fn(&std::path::Path, &str) -> std::path::PathBuf,
    state: &dyn Fn(&std::path::Path, &str) -> String,
    progress: &dyn Fn(&std::path::Path) -> u64,
    seed: u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let pg = pg_db(&format!("crash_{name}"));
    let cfg = connections(dir.path(), Some(&pg));

    // Reference: uninterrupted.
    let reference = make_pipeline(dir.path(), "reference");
    let started = Instant::now();
    let (code, summary) = run_pipeline(&cfg, &reference);
    let full_ms = started.elapsed().as_millis() as u64;
    assert_eq!(code, 0, "{summary}");
    let expected = state(dir.path(), "reference");

    // Interrupted, then finished. The first attempt dies early, by the clock: before or
    // around the first commit, so a run that starts over is tested too. The next three die
    // on progress (about 1/5, 2/5, 3/5 of the rows committed, read from the checkpoint),
    // plus up to 40 ms so that kills land inside batches as well as between them: a kill on
    // the clock alone could come after a busy machine's run had finished.
    let crashy = make_pipeline(dir.path(), "crashy");
    let mut rng = Lcg(seed);
    let mut kills = 0;
    let attempt = || {
        let mut cmd = snodo(&cfg);
        cmd.arg("run").arg(&crashy);
        cmd
    };
    if run_and_kill(attempt(), rng.next_ms((full_ms / 8).max(50))) {
        kills += 1;
    }
    for i in 1..=3 {
        let target = ROWS * i / 5 + rng.next_ms(ROWS / 10);
        if run_and_kill_when(
            attempt(),
            || progress(dir.path()) >= target,
            rng.next_ms(40),
        ) {
            kills += 1;
        }
    }
    let (code, summary) = run_pipeline(&cfg, &crashy);
    assert_eq!(code, 0, "{summary}");
    assert!(
        kills >= 3,
        "only {kills} of 4 attempts were killed (a full run takes {full_ms} ms)"
    );
    assert_eq!(
        state(dir.path(), "crashy"),
        expected,
        "state after {kills} kills differs from the uninterrupted run"
    );

    // At least one run really resumed from a checkpoint (a kill after the first commit),
    // otherwise only "start from scratch" would have been tested.
    let runs = run({
        let mut c = snodo(&cfg);
        c.args(["runs", "--json", "--limit", "100"]);
        c
    });
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&runs.stdout).unwrap();
    let resumed = runs
        .iter()
        .filter(|r| {
            r["started"]["pipeline"]
                .as_str()
                .unwrap()
                .ends_with("crashy")
        })
        .filter(|r| !r["started"]["resumed_from"].is_null())
        .count();
    assert!(
        resumed >= 1,
        "no run resumed from a checkpoint; the {kills} kills all came before the first commit"
    );

    // The flow log of all this is intact.
    let v = run({
        let mut c = snodo(&cfg);
        c.args(["log", "verify"]);
        c
    });
    assert_eq!(v.status.code(), Some(0));
}

fn csv_input() -> std::path::PathBuf {
    static INPUT: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    INPUT
        .get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            let (p, _) = generate_csv(d.path(), ROWS, 11, "0.002");
            (d, p)
        })
        .1
        .clone()
}

/// The example CSV pipeline into PostgreSQL (connection `pg`), named `{prefix}-{variant}`
/// and writing the table `assistito_{variant}`, so that a reference run and an interrupted
/// one do not share state; `commit_rows` for its sink (0: one transaction per batch).
fn csv_to_postgres_pipeline(
    dir: &std::path::Path,
    prefix: &str,
    variant: &str,
    input: &std::path::Path,
    commit_rows: u64,
) -> std::path::PathBuf {
    let p = example_pipeline(
        dir,
        &format!("{prefix}-{variant}"),
        input,
        "pg",
        "batch_size: 2000\n",
    );
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("table: assistito", &format!("table: assistito_{variant}"))
        .replace(
            "create_table: true",
            &format!("create_table: true\n    commit_rows: {commit_rows}"),
        );
    assert!(
        text.contains("commit_rows"),
        "the example's sink has create_table"
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// Rows, distinct keys and a checksum of every row of `assistito_{variant}`.
fn table_state(db: &PgDb, variant: &str) -> String {
    db.psql(&format!(
        "SELECT count(*) || ' ' || count(DISTINCT id_anagrafica) || ' ' || md5(string_agg(t::text, '|' ORDER BY id_anagrafica)) FROM assistito_{variant} t"
    ))
}

/// Rows `pipeline` has committed so far: its checkpoint, saved in the same transaction as
/// each batch. Before the first commit the checkpoint table does not exist: no progress.
fn rows_committed(db: &PgDb, pipeline: &str) -> u64 {
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &db.port.to_string()])
        .args(["-U", "postgres", "-d", &db.name, "-At", "-c"])
        .arg(format!(
            "SELECT state FROM _snodo_checkpoint WHERE pipeline = '{pipeline}'"
        ))
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["records_written"].as_u64())
        .unwrap_or(0)
}

#[test]
fn sigkill_during_csv_to_postgres_loses_and_duplicates_nothing() {
    // SAFETY: set before any thread of this test reads it.
    unsafe { std::env::set_var("SNODO_TEST_PG_PASSWORD", "test-only-password") };
    let input = csv_input();
    let make = |dir: &std::path::Path, variant: &str| {
        // Three batches of 2000 per transaction, in the binary COPY format: the bulk-load
        // path, whose batches wait in the sink before they go to PostgreSQL.
        csv_to_postgres_pipeline(dir, "crash-pg", variant, &input, 6000)
    };
    let db = PgDb {
        port: pg_cluster().port,
        name: "crash_pg".into(),
    };
    let state = |_dir: &std::path::Path, variant: &str| table_state(&db, variant);
    let progress = |_dir: &std::path::Path| rows_committed(&db, "crash-pg-crashy");
    crash_and_compare("pg", &make, &state, &progress, 0x5eed_0001);
}

#[test]
fn sigkill_during_csv_to_csv_file_loses_and_duplicates_nothing() {
    unsafe { std::env::set_var("SNODO_TEST_PG_PASSWORD", "test-only-password") };
    let input = csv_input();
    let make = |dir: &std::path::Path, variant: &str| {
        let out = dir.join(format!("{variant}.csv"));
        let p = example_pipeline(
            dir,
            &format!("crash-csv-{variant}"),
            &input,
            "store",
            "batch_size: 2000\n",
        );
        let text = std::fs::read_to_string(&p).unwrap();
        let sink_start = text.find("sink:").unwrap();
        let sink_end = text.find("on_error:").unwrap();
        let text = format!(
            "{}sink:\n  csv: {{ path: {}, delimiter: \";\" }}\n{}",
            &text[..sink_start],
            out.display(),
            &text[sink_end..]
        );
        std::fs::write(&p, text).unwrap();
        p
    };
    let state = |dir: &std::path::Path, variant: &str| {
        let bytes = std::fs::read(dir.join(format!("{variant}.csv"))).unwrap();
        let lines = bytes.iter().filter(|&&b| b == b'\n').count();
        use sha2::Digest;
        format!("{lines} {}", hex::encode(sha2::Sha256::digest(&bytes)))
    };
    // Rows in the partial file so far, from the checkpoint renamed into place after each.
    let progress = |dir: &std::path::Path| -> u64 {
        std::fs::read(dir.join("crashy.csv.checkpoint.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["rows"].as_u64())
            .unwrap_or(0)
    };
    crash_and_compare("csv", &make, &state, &progress, 0x5eed_0002);
}

/// PostgreSQL itself crashing in the middle of a load (`pg_ctl -m immediate`: no shutdown
/// checkpoint, every connection cut) while the sink commits its batches asynchronously: the
/// run must fail with a clear error instead of hanging, and once the server is back the next
/// run must end in exactly the state of an uninterrupted one. A batch the crash undid is
/// undone together with its checkpoint, so the rerun loads it again; one it kept is not
/// loaded twice.
#[test]
fn postgresql_crashing_during_a_load_loses_and_duplicates_nothing() {
    // SAFETY: set before any thread of this test reads it.
    unsafe { std::env::set_var("SNODO_TEST_PG_PASSWORD", "test-only-password") };
    let input = csv_input();
    let cluster = start_cluster();
    let pg = cluster.db("server_crash");
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), Some(&pg));
    let make =
        |variant: &str| csv_to_postgres_pipeline(dir.path(), "server-crash", variant, &input, 0);
    let state = |variant: &str| table_state(&pg, variant);

    let reference = make("reference");
    let (code, summary) = run_pipeline(&cfg, &reference);
    assert_eq!(code, 0, "{summary}");
    let expected = state("reference");

    // The server crashes once about a third of the rows are committed.
    let crashy = make("crashy");
    let mut child = snodo(&cfg)
        .arg("run")
        .arg(&crashy)
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while rows_committed(&pg, "server-crash-crashy") < ROWS / 3 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the load ended before the server could be crashed"
        );
        assert!(Instant::now() < deadline, "the load made no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    cluster.crash();

    // The run fails, and says why, within a bounded time.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "snodo still runs a minute after its server crashed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let failed = child.wait_with_output().unwrap();
    assert_ne!(failed.status.code(), Some(0), "{}", stdout(&failed));
    let summary: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap_or_default();
    assert_eq!(
        summary["status"],
        "failed",
        "{}{}",
        stdout(&failed),
        stderr(&failed)
    );

    cluster.start();
    let (code, summary) = run_pipeline(&cfg, &crashy);
    assert_eq!(code, 0, "{summary}");
    assert!(
        !summary["resumed_from"].is_null(),
        "the rerun started over instead of resuming: {summary}"
    );
    assert_eq!(
        state("crashy"),
        expected,
        "state after a server crash differs from the uninterrupted run"
    );
}
