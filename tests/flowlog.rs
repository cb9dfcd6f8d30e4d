//! The flow log is tamper-evident: editing, deleting or reordering an entry makes
//! `snodo log verify` fail with exit code 5; removing the newest entries is caught with
//! `--expect-head`.

mod common;

use std::path::Path;

use common::*;

/// A log with a few runs in it, in a directory of its own.
fn populated_log() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "id;nome\n1;A\n2;B\n3;\n").unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        format!(
            "pipeline: log-me\nsource:\n  csv: {{ path: {}, delimiter: \";\", types: {{ id: int }} }}\nsteps:\n  - validate:\n      nome: {{ required: true }}\nsink:\n  sql: {{ connection: store, table: t, key: [id], create_table: true }}\non_error: {{ reject_limit: 5 }}\n",
            csv.display()
        ),
    )
    .unwrap();
    for _ in 0..2 {
        let out = run({
            let mut c = snodo(&cfg);
            c.arg("run").arg(&p);
            c
        });
        assert_eq!(out.status.code(), Some(0));
    }
    (dir, cfg)
}

fn verify(cfg: &Path, extra: &[&str]) -> (i32, String) {
    let out = run({
        let mut c = snodo(cfg);
        c.args(["log", "verify"]).args(extra);
        c
    });
    (out.status.code().unwrap(), stdout(&out))
}

fn entries(db: &Path) -> i64 {
    sqlite_query(db, "SELECT count(*) FROM flow_log")
        .parse()
        .unwrap()
}

#[test]
fn an_intact_log_verifies() {
    let (dir, cfg) = populated_log();
    assert!(entries(&dir.path().join("flowlog.db")) >= 6);
    let (code, text) = verify(&cfg, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact"));
}

#[test]
fn an_edited_entry_is_detected() {
    let (dir, cfg) = populated_log();
    sqlite_exec(
        &dir.path().join("flowlog.db"),
        &[
            "UPDATE flow_log SET body = replace(body, '\"written\":2', '\"written\":9') WHERE kind = 'run_finished'",
        ],
    );
    let (code, text) = verify(&cfg, &[]);
    assert_eq!(code, 5, "{text}");
    assert!(text.contains("altered"), "{text}");
}

#[test]
fn a_deleted_entry_is_detected() {
    let (dir, cfg) = populated_log();
    sqlite_exec(
        &dir.path().join("flowlog.db"),
        &["DELETE FROM flow_log WHERE seq = 3"],
    );
    let (code, text) = verify(&cfg, &[]);
    assert_eq!(code, 5, "{text}");
    assert!(text.contains("missing"), "{text}");
}

#[test]
fn a_deleted_entry_with_renumbered_and_rehashed_successors_is_still_detected() {
    // A forger who deletes entry 3 and renumbers the rest still cannot fix the hashes
    // without recomputing the whole chain, which changes every later hash.
    let (dir, cfg) = populated_log();
    sqlite_exec(
        &dir.path().join("flowlog.db"),
        &[
            "DELETE FROM flow_log WHERE seq = 3",
            "UPDATE flow_log SET seq = seq - 1 WHERE seq > 3",
        ],
    );
    let (code, text) = verify(&cfg, &[]);
    assert_eq!(code, 5, "{text}");
}

#[test]
fn reordered_entries_are_detected() {
    let (dir, cfg) = populated_log();
    sqlite_exec(
        &dir.path().join("flowlog.db"),
        &[
            "UPDATE flow_log SET seq = -2 WHERE seq = 2",
            "UPDATE flow_log SET seq = 2 WHERE seq = 3",
            "UPDATE flow_log SET seq = 3 WHERE seq = -2",
        ],
    );
    let (code, text) = verify(&cfg, &[]);
    assert_eq!(code, 5, "{text}");
    assert!(text.contains("does not chain"), "{text}");
}

#[test]
fn removing_the_newest_entries_is_caught_with_the_noted_head() {
    let (dir, cfg) = populated_log();
    let out = run({
        let mut c = snodo(&cfg);
        c.args(["log", "verify", "--json"]);
        c
    });
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let head = v["head_hash"].as_str().unwrap().to_string();
    sqlite_exec(
        &dir.path().join("flowlog.db"),
        &["DELETE FROM flow_log WHERE seq = (SELECT max(seq) FROM flow_log)"],
    );
    let (code, _) = verify(&cfg, &[]);
    assert_eq!(code, 0, "a chain alone cannot see a cut tail");
    let (code, text) = verify(&cfg, &["--expect-head", &head]);
    assert_eq!(code, 5, "{text}");
}

#[test]
fn an_entry_forged_before_the_chain_is_detected() {
    let (dir, cfg) = populated_log();
    sqlite_exec(
        &dir.path().join("flowlog.db"),
        &[
            "INSERT INTO flow_log (seq, ts, run_id, kind, body, prev_hash, hash) SELECT -1, ts, run_id, kind, body, prev_hash, hash FROM flow_log WHERE seq = 1",
        ],
    );
    let (code, text) = verify(&cfg, &[]);
    assert_eq!(code, 5, "{text}");
    assert!(text.contains("out of sequence"), "{text}");
}
