//! Privacy: with a known secret and known codici fiscali, run the suite's pipelines (with
//! debug logs), provoke errors, list runs and rejects, then search every output and the
//! flow-log files: zero hits.

mod common;

use std::path::Path;

use common::*;

const SECRET: &str = "Sup3r-S3cret-Pw-4711";

fn codici_fiscali(csv: &Path) -> Vec<String> {
    let bytes = std::fs::read(csv).unwrap();
    let text: String = bytes.iter().map(|&b| b as char).collect();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split(';').nth(3))
        .filter(|cf| cf.len() == 16)
        .map(str::to_string)
        .collect()
}

#[test]
fn no_secret_and_no_codice_fiscale_in_logs_errors_or_flow_log() {
    // SAFETY: set before any thread of this test reads it.
    unsafe { std::env::set_var("SNODO_TEST_PG_PASSWORD", SECRET) };
    let dir = tempfile::tempdir().unwrap();
    let pg = pg_db("privacy");
    let cfg = connections(dir.path(), Some(&pg));
    let (csv, _) = generate_csv(dir.path(), 2000, 3, "0.05");
    let cfs = codici_fiscali(&csv);
    assert!(
        cfs.len() > 1000,
        "the fixture must carry codici fiscali for this test to mean anything"
    );

    let mut outputs = Vec::new();
    let mut record = |out: std::process::Output| {
        outputs.push(stdout(&out));
        outputs.push(stderr(&out));
        out
    };

    // Every pipeline shape of the suite, with debug logs in both formats.
    for (name, sink, fmt) in [("priv-sqlite", "store", "text"), ("priv-pg", "pg", "json")] {
        let p = example_pipeline(dir.path(), name, &csv, sink, "");
        let out = record(run({
            let mut c = snodo(&cfg);
            c.args(["-vv", "--log-format", fmt, "run"])
                .arg(&p)
                .arg("--json");
            c
        }));
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            s["rejected"].as_u64().unwrap() > 50,
            "rejects must be exercised: {s}"
        );
        let run_id = s["run_id"].as_str().unwrap().to_string();
        record(run({
            let mut c = snodo(&cfg);
            c.args(["rejects", &run_id, "--json"]);
            c
        }));
        record(run({
            let mut c = snodo(&cfg);
            c.args(["runs", "show", &run_id, "--json"]);
            c
        }));
    }
    // A failing connection: the error is printed, the password is not.
    let bad_cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("database: privacy", "database: no_such_db"),
    )
    .unwrap();
    let p = example_pipeline(dir.path(), "priv-bad", &csv, "pg", "");
    let out = record(run({
        let mut c = snodo(&bad_cfg);
        c.args(["-vv", "run"]).arg(&p);
        c
    }));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no_such_db"),
        "the error still says what failed"
    );
    // A literal secret in a connections file is refused without being echoed.
    let literal = dir.path().join("literal.yaml");
    std::fs::write(
        &literal,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("\"${env:SNODO_TEST_PG_PASSWORD}\"", SECRET),
    )
    .unwrap();
    let out = record(run({
        let mut c = snodo(&literal);
        c.arg("lint").arg(&p);
        c
    }));
    assert_eq!(out.status.code(), Some(3));
    record(run({
        let mut c = snodo(&cfg);
        c.args(["runs", "--json"]);
        c
    }));

    // Search: every output, and the flow-log database files byte by byte.
    let mut haystacks: Vec<(String, String)> = outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| (format!("output {i}"), o))
        .collect();
    for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with("flowlog.db") {
            let bytes = std::fs::read(f.path()).unwrap();
            haystacks.push((name, bytes.iter().map(|&b| b as char).collect()));
        }
    }
    assert!(haystacks.iter().any(|(n, _)| n == "flowlog.db"));
    for (name, hay) in &haystacks {
        assert!(!hay.contains(SECRET), "the secret leaked into {name}");
        let upper = hay.to_uppercase();
        for cf in &cfs {
            assert!(
                !upper.contains(cf.as_str()),
                "codice fiscale {}… leaked into {name}",
                &cf[..3]
            );
        }
    }
}
