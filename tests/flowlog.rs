//! The flow log is tamper-evident: editing, deleting or reordering an entry makes
//! `snodo log verify` fail with exit code 5; removing the newest entries is caught with
//! `--expect-head`. `snodo lineage` reads the record-level lineage back from it.

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

fn lineage(cfg: &Path, args: &[&str]) -> (i32, String) {
    let out = run({
        let mut c = snodo(cfg);
        c.arg("lineage").args(args);
        c
    });
    (
        out.status.code().unwrap(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// An auditor's two questions, answered from the log: which source record a target row
/// came from, and what a source record became. Keys are matched whole and as written,
/// including characters that mean something to SQL's LIKE (`_`, `%`) or to JSON (`"`); a
/// rejected record has no lineage; `--run` narrows to one run.
#[test]
fn lineage_traces_rows_back_to_their_source_records_and_forward() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let csv = dir.path().join("in.csv");
    std::fs::write(
        &csv,
        "code;nome\nA_1;Anna\n50%;Bruno\n\"x\"\"y\";Carla\nB;\nA11;Dario\n",
    )
    .unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        format!(
            "pipeline: traced\nsource:\n  csv: {{ path: {}, delimiter: \";\" }}\nsteps:\n  - validate:\n      nome: {{ required: true }}\nsink:\n  sql: {{ connection: store, table: t, key: [code], create_table: true }}\non_error: {{ reject_limit: 5 }}\n",
            csv.display()
        ),
    )
    .unwrap();
    let (code, summary) = run_pipeline(&cfg, &p);
    assert_eq!(code, 0, "{summary}");
    let run_id = summary["run_id"].as_str().unwrap().to_string();

    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, text) = lineage(&cfg, &all);
        assert_eq!(code, 0, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let one = |v: &serde_json::Value, field: &str| -> String {
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 1, "{v}");
        list[0][field].as_str().unwrap().to_string()
    };
    // Backwards, from target keys, the awkward ones included.
    assert_eq!(one(&json(&["t:code=A_1"]), "source_record"), "1");
    assert_eq!(one(&json(&["t:code=50%"]), "source_record"), "2");
    assert_eq!(one(&json(&["t:code=x\"y"]), "source_record"), "3");
    assert_eq!(one(&json(&["t:code=A11"]), "source_record"), "5");
    // Forwards, from source record numbers; the record the validation rejected went nowhere.
    let forward = json(&["1"]);
    assert_eq!(one(&forward, "target_key"), "t:code=A_1");
    assert_eq!(forward[0]["run_id"], run_id.as_str());
    assert!(
        forward[0]["source"].as_str().unwrap().starts_with("csv "),
        "{forward}"
    );
    assert_eq!(json(&["4"]), serde_json::json!([]));
    // Whole keys only: a prefix or a LIKE wildcard matches nothing.
    assert_eq!(json(&["t:code=A"]), serde_json::json!([]));
    assert_eq!(json(&["t:code=A%"]), serde_json::json!([]));

    // One run, or the runs it resumed; an unknown run is an error that names it.
    assert_eq!(
        one(&json(&["t:code=50%", "--run", &run_id]), "source_record"),
        "2"
    );
    let (code, text) = lineage(&cfg, &["1", "--run", "20000101T000000Z-000000"]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("20000101T000000Z-000000"), "{text}");
    // The text form says what it found.
    let (code, text) = lineage(&cfg, &["t:code=A_1"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("record 1") && text.contains("1 lineage pair(s)"),
        "{text}"
    );
}
