//! Bad input gets a clear error and nothing is lost: malformed rows, wrong encodings,
//! invalid dates and decimals, oversized fields, broken YAML, unknown keys.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const HEADER: &str = "id;cognome;importo;data\n";

fn pipeline(dir: &Path, csv: &Path, extra_source: &str, on_error: &str) -> PathBuf {
    let p = dir.join("p.yaml");
    std::fs::write(
        &p,
        format!(
            "pipeline: bad-input\nsource:\n  csv:\n    path: {}\n    delimiter: \";\"\n    decimal_separator: \",\"\n    thousands_separator: \".\"\n    types: {{ id: int, importo: decimal, data: date }}\n{extra_source}sink:\n  jsonl: {{ path: {}/out.jsonl }}\non_error: {on_error}\n",
            csv.display(),
            dir.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn every_kind_of_bad_row_is_rejected_with_line_and_reason_and_the_rest_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let csv = dir.path().join("in.csv");
    let long = "x".repeat(300);
    std::fs::write(
        &csv,
        format!(
            "{HEADER}1;ROSSI;1.234,50;01/02/2020\n2;BIANCHI;12,34,5;01/02/2020\n3;VERDI;10,00;31/02/1980\n4;NERI;5,00\n5;{long};1,00;01/01/2001\n6;\"GIALLI; DETTO \"\"IL ROSSO\"\"\";2,00;02/02/2002\n"
        ),
    )
    .unwrap();
    let p = pipeline(
        dir.path(),
        &csv,
        "    max_field_length: 100\n",
        "{ reject_limit: 10, then: fail }",
    );
    let (code, s) = run_pipeline(&cfg, &p);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["read"], 6);
    assert_eq!(s["written"], 2);
    let r = rejects_of(&cfg, s["run_id"].as_str().unwrap());
    let by_line: std::collections::BTreeMap<u64, (String, String)> = r
        .iter()
        .map(|x| {
            (
                x["position"]["line"].as_u64().unwrap(),
                (
                    x["code"].as_str().unwrap().to_string(),
                    x["reason"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(by_line[&3].0, "invalid_decimal");
    assert!(
        by_line[&3].1.contains("importo") && by_line[&3].1.contains("12,34,5"),
        "{:?}",
        by_line[&3]
    );
    assert_eq!(by_line[&4].0, "invalid_date");
    assert!(by_line[&4].1.contains("31/02/1980") && by_line[&4].1.contains("%d/%m/%Y"));
    assert_eq!(by_line[&5].0, "malformed_row");
    assert!(by_line[&5].1.contains("3 fields") && by_line[&5].1.contains("header has 4"));
    assert_eq!(by_line[&6].0, "oversized_field");
    assert!(by_line[&6].1.contains("cognome") && by_line[&6].1.contains("300 bytes"));
    for x in &r {
        assert_eq!(x["step"], "source");
    }
    // The good rows, including the one with a quoted delimiter and doubled quotes.
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert!(out.contains("\"importo\":1234.50"), "{out}");
    assert!(out.contains("GIALLI; DETTO \\\"IL ROSSO\\\""), "{out}");
}

#[test]
fn a_windows_1252_file_read_as_utf8_is_rejected_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let csv = dir.path().join("in.csv");
    let mut bytes = HEADER.as_bytes().to_vec();
    bytes.extend_from_slice(b"1;NICOL\xd2;1,00;01/01/2000\n2;ROSSI;2,00;01/01/2000\n");
    std::fs::write(&csv, bytes).unwrap();
    let p = pipeline(dir.path(), &csv, "", "{ reject_limit: 1 }");
    let (code, s) = run_pipeline(&cfg, &p);
    assert_eq!(code, 0, "{s}");
    let r = rejects_of(&cfg, s["run_id"].as_str().unwrap());
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["code"], "encoding");
    assert!(r[0]["reason"].as_str().unwrap().contains("windows-1252"));

    // The same file declared as windows-1252 loads both rows, with the accent right.
    let p = pipeline(
        dir.path(),
        &csv,
        "    encoding: windows-1252\n",
        "{ reject_limit: 0 }",
    );
    let (code, s) = run_pipeline(&cfg, &p);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["written"], 2);
    assert!(
        std::fs::read_to_string(dir.path().join("out.jsonl"))
            .unwrap()
            .contains("NICOLÒ")
    );

    // A UTF-8 character cut in two by the delimiter: the row's bytes without delimiters
    // are valid UTF-8, each field alone is not; the field is rejected by name.
    let mut bytes = HEADER.as_bytes().to_vec();
    bytes.extend_from_slice(b"1;NICOL\xc3;\x921,00;01/01/2000\n2;ROSSI;2,00;01/01/2000\n");
    std::fs::write(&csv, bytes).unwrap();
    let p = pipeline(dir.path(), &csv, "", "{ reject_limit: 1 }");
    let (code, s) = run_pipeline(&cfg, &p);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["written"], 1);
    let r = rejects_of(&cfg, s["run_id"].as_str().unwrap());
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["code"], "encoding");
    assert!(
        r[0]["reason"].as_str().unwrap().contains("`cognome`"),
        "{}",
        r[0]["reason"]
    );
}

#[test]
fn the_reject_limit_stops_or_flags_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let csv = dir.path().join("in.csv");
    std::fs::write(
        &csv,
        format!("{HEADER}1;A;x;01/01/2000\n2;B;1,00;01/01/2000\n"),
    )
    .unwrap();
    let p = pipeline(dir.path(), &csv, "", "{ reject_limit: 0, then: fail }");
    let (code, s) = run_pipeline(&cfg, &p);
    assert_eq!(code, 4, "{s}");
    assert_eq!(s["status"], "rejects_over_limit");
    assert_eq!(s["written"], 0);
    assert!(
        !dir.path().join("out.jsonl").exists(),
        "a failed run publishes no file"
    );

    let p = pipeline(dir.path(), &csv, "", "{ reject_limit: 0, then: continue }");
    let (code, s) = run_pipeline(&cfg, &p);
    assert_eq!(code, 4, "{s}");
    assert_eq!(s["written"], 1, "`continue` loads every valid record");
}

#[test]
fn broken_yaml_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let p = dir.path().join("broken.yaml");
    std::fs::write(
        &p,
        "pipeline: x\nsource:\n  csv: { path: a.csv\nsink:\n  jsonl: { path: b }\n",
    )
    .unwrap();
    let out = run({
        let mut c = snodo(&cfg);
        c.arg("lint").arg(&p);
        c
    });
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    assert!(text.contains(&format!("{}:", p.display())), "{text}");
    assert!(
        text.contains(":3:") || text.contains(":4:"),
        "the error names the line: {text}"
    );

    let run_out = run({
        let mut c = snodo(&cfg);
        c.arg("run").arg(&p);
        c
    });
    assert_eq!(run_out.status.code(), Some(3));
    assert!(stderr(&run_out).contains("broken.yaml:"));
}

#[test]
fn lint_reports_every_problem_with_line_column_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, HEADER).unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        format!(
            "pipeline: lint-me\nsource:\n  csv:\n    path: {}\n    delimeter: \";\"\nsteps:\n  - mapp:\n      a: upper(b)\n  - validate:\n      cap: {{ patern: \"^[0-9]{{5}}$\" }}\n  - map:\n      x: upper(\nsink:\n  sql: {{ connection: nowhere, table: t, key: [id], commit_rows: 60000 }}\non_error: {{ reject_limit: lots }}\nworkers: 0\n",
            csv.display()
        ),
    )
    .unwrap();
    let problems = lint_problems(&cfg, &p);
    let find = |needle: &str| {
        problems
            .iter()
            .find(|p| p["message"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no problem mentioning {needle}: {problems:#?}"))
    };
    let k = find("delimeter");
    assert_eq!(k["line"], 5);
    assert!(
        k["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `delimiter`")
    );
    let k = find("mapp");
    assert_eq!(k["line"], 7);
    assert_eq!(k["path"], "steps[0]");
    let k = find("patern");
    assert_eq!(k["line"], 10);
    assert!(
        k["path"]
            .as_str()
            .unwrap()
            .starts_with("steps[1].validate.cap")
    );
    let k = find("invalid expression");
    assert_eq!(k["path"], "steps[2].map.x");
    let k = find("unknown connection `nowhere`");
    assert_eq!(k["path"], "sink.sql.connection");
    let k = find("`lots` is neither a count nor a percentage");
    assert_eq!(k["path"], "on_error.reject_limit");
    let k = find("`commit_rows` is at most 50000");
    assert_eq!(
        (k["path"].as_str(), k["line"].as_u64()),
        (Some("sink.sql.commit_rows"), Some(14))
    );
    let k = find("workers must be between 1 and 64");
    assert_eq!(
        (k["path"].as_str(), k["line"].as_u64()),
        (Some("workers"), Some(16))
    );
    assert!(problems.len() >= 8, "{problems:#?}");
}

/// `snodo lint FILE --json` on a file with problems: exit code 3 and the problems.
fn lint_problems(cfg: &Path, file: &Path) -> Vec<serde_json::Value> {
    let (code, v) = snodo_json(cfg, &["lint".as_ref(), file.as_os_str()]);
    assert_eq!(code, 3, "{v}");
    serde_json::from_value(v).unwrap()
}

#[test]
fn lint_checks_steps_files_at_their_own_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    // The shipped steps file of the PS/PSA pipelines, with the pipelines that include it.
    let shipped = root().join("pipelines/siuss/ps_psa.steps.yaml");
    let out = run({
        let mut c = snodo(&cfg);
        c.arg("lint")
            .arg(&shipped)
            .arg(root().join("pipelines/siuss/ps_psa.yaml"));
        c
    });
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("2 file(s) checked, no problems"));

    let file = dir.path().join("shared.steps.yaml");
    std::fs::write(
        &file,
        "# shared steps\n- map:\n    a: upper(b)\n- mapp:\n    x: y\n- map:\n    c: upper(\n",
    )
    .unwrap();
    let problems = lint_problems(&cfg, &file);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems
            .iter()
            .any(|p| p["line"] == 4 && p["message"].as_str().unwrap().contains("mapp")),
        "the unknown step is named at line 4: {problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p["line"] == 7),
        "the broken expression is at line 7: {problems:#?}"
    );
    assert!(
        problems
            .iter()
            .all(|p| p["file"] == file.display().to_string())
    );
}

#[test]
fn lint_checks_migration_definitions_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let file = dir.path().join("m.yaml");
    std::fs::write(
        &file,
        "migration: x\nsource_system: WD\nente: GE\nsource: { sql: { connection: nowhere } }\ntarget: store\ntablez: []\n",
    )
    .unwrap();
    let problems = lint_problems(&cfg, &file);
    let messages: Vec<&str> = problems
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p["line"] == 6 && p["message"].as_str().unwrap().contains("`tables`")),
        "the misspelt key is named with the migration's own key: {messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("a pipeline has")),
        "a migration definition is not judged as a pipeline: {messages:?}"
    );
}
