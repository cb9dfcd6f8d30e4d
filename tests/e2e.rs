//! End to end: the README example, CSV → SQLite, CSV → PostgreSQL, SQL → CSV, and the
//! flow-log commands, all through the real binary.

mod common;

use common::*;
use std::path::Path;

fn count_bad(e: &serde_json::Value) -> u64 {
    e["bad"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// The README's first command on the shipped fixture: every valid row lands in SQLite,
/// every bad row is rejected with the right reason, and the flow log shows it.
#[test]
fn readme_example_loads_the_fixture_into_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let pipeline = root().join("pipelines/esempio/assistiti_csv_sqlite.yaml");
    let out = run({
        let mut c = snodo(&cfg);
        c.arg("run").arg(&pipeline).arg("--json");
        c
    });
    assert_eq!(out.status.code(), Some(0));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expect: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("tests/fixtures/csv/assistiti_legacy.expect.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["status"], "succeeded");
    assert_eq!(summary["read"], expect["rows"]);
    assert_eq!(summary["written"], expect["valid"]);
    assert_eq!(summary["rejected"].as_u64().unwrap(), count_bad(&expect));
    let by = &summary["rejected_by_reason"];
    let bad = &expect["bad"];
    assert_eq!(by["invalid_date"], bad["invalid_date"]);
    assert_eq!(by["invalid_decimal"], bad["invalid_decimal"]);
    assert_eq!(by["malformed_row"], bad["malformed_row"]);
    assert_eq!(by["oversized_field"], bad["oversized_field"]);
    assert_eq!(by["required.cognome"], bad["missing_required"]);
    assert_eq!(by["codice_fiscale.codice_fiscale"], bad["bad_cf_check"]);
    assert_eq!(
        by["belfiore_at.comune_nascita"],
        bad["birthplace_not_valid_at_birth"]
    );

    // What landed is exact: amounts as decimals (no float), CAPs with their leading zero.
    let db = sqlite_query(
        &dir.path().join("store.db"),
        "SELECT count(*) FROM assistito",
    );
    assert_eq!(db, expect["valid"].as_u64().unwrap().to_string());
    let zero_caps = sqlite_query(
        &dir.path().join("store.db"),
        "SELECT count(*) FROM assistito WHERE cap LIKE '0%' AND length(cap) = 5",
    );
    assert!(
        zero_caps.parse::<u64>().unwrap() > 0,
        "CAPs with a leading zero must survive as text"
    );
    let typeof_isee = sqlite_query(
        &dir.path().join("store.db"),
        "SELECT DISTINCT typeof(isee) FROM assistito WHERE isee IS NOT NULL",
    );
    assert_eq!(
        typeof_isee, "text",
        "amounts are stored as exact text in SQLite, never REAL"
    );

    // Every bad id of the fixture is among the rejects, with its line and reason.
    let run_id = summary["run_id"].as_str().unwrap();
    let rejects = rejects_of(&cfg, run_id);
    assert_eq!(rejects.len() as u64, count_bad(&expect));
    // Lines are those an operator sees in an editor, also in this CRLF file: the reject's
    // line starts with the id the fixture lists for that defect.
    let raw = std::fs::read(root().join("tests/fixtures/csv/assistiti_legacy.csv")).unwrap();
    let file_lines: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
    for id in expect["bad_ids"]["invalid_date"].as_array().unwrap() {
        let id = id.as_u64().unwrap().to_string();
        let r = rejects.iter().find(|r| {
            r["code"] == "invalid_date" && {
                let line = r["position"]["line"].as_u64().unwrap() as usize;
                file_lines[line - 1].starts_with(format!("{id};").as_bytes())
            }
        });
        assert!(
            r.is_some(),
            "no invalid_date reject points at the line of id {id}"
        );
    }
    for r in &rejects {
        assert!(r["position"]["line"].as_u64().unwrap() > 1);
        assert!(!r["reason"].as_str().unwrap().is_empty());
        assert!(!r["step"].as_str().unwrap().is_empty());
    }

    let show = run({
        let mut c = snodo(&cfg);
        c.args(["runs", "show", run_id]);
        c
    });
    assert!(show.status.success());
    let text = stdout(&show);
    assert!(
        text.contains("esempio-assistiti") && text.contains("succeeded"),
        "{text}"
    );
    assert!(text.contains("steps[1].validate"), "{text}");

    let verify = run({
        let mut c = snodo(&cfg);
        c.args(["log", "verify"]);
        c
    });
    assert_eq!(verify.status.code(), Some(0));
    assert!(stdout(&verify).contains("intact"));

    // Running again changes nothing: upserts on the natural key.
    let again = run({
        let mut c = snodo(&cfg);
        c.arg("run").arg(&pipeline).arg("--json");
        c
    });
    assert_eq!(again.status.code(), Some(0));
    let db2 = sqlite_query(
        &dir.path().join("store.db"),
        "SELECT count(*) FROM assistito",
    );
    assert_eq!(db, db2);
}

/// CSV → PostgreSQL (COPY + upsert), then PostgreSQL → CSV through the SQL source, and the
/// round trip keeps every row and every amount exactly.
#[test]
fn csv_to_postgres_and_back_to_csv() {
    let (dir, pg, cfg) = pg_workspace("e2e_roundtrip");
    let (csv, expect) = generate_csv(dir.path(), 3000, 7, "0.01");
    let p = example_pipeline(dir.path(), "csv-to-pg", &csv, "pg", "");
    let out = run({
        let mut c = snodo(&cfg);
        c.arg("run").arg(&p).arg("--json");
        c
    });
    assert_eq!(out.status.code(), Some(0));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["written"], expect["valid"]);
    assert_eq!(
        pg.psql("SELECT count(*) FROM assistito"),
        expect["valid"].to_string()
    );
    assert_eq!(pg.psql("SELECT data_type FROM information_schema.columns WHERE table_name='assistito' AND column_name='isee'"), "numeric");
    let total_pg = pg.psql("SELECT coalesce(sum(isee),0) FROM assistito");

    // Back out to CSV with keyset paging over the SQL source.
    let out_csv = dir.path().join("export.csv");
    let p2 = dir.path().join("pg-to-csv.yaml");
    std::fs::write(
        &p2,
        format!(
            "pipeline: pg-to-csv\nsource:\n  sql:\n    connection: pg\n    query: SELECT id_anagrafica, codice_fiscale, isee, data_nascita FROM assistito\n    key: [id_anagrafica]\nsink:\n  csv: {{ path: {}, delimiter: \";\", decimal_separator: \",\" }}\nbatch_size: 500\n",
            out_csv.display()
        ),
    )
    .unwrap();
    let out2 = run({
        let mut c = snodo(&cfg);
        c.arg("run").arg(&p2).arg("--json");
        c
    });
    assert_eq!(out2.status.code(), Some(0));
    let s2: serde_json::Value = serde_json::from_slice(&out2.stdout).unwrap();
    assert_eq!(s2["written"], expect["valid"]);
    assert_eq!(s2["artifacts"].as_array().unwrap().len(), 1);
    let text = std::fs::read_to_string(&out_csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id_anagrafica;codice_fiscale;isee;data_nascita"
    );
    let mut ids = Vec::new();
    let mut total = rust_decimal::Decimal::ZERO;
    for l in lines {
        let f: Vec<&str> = l.split(';').collect();
        ids.push(f[0].parse::<i64>().unwrap());
        if !f[2].is_empty() {
            total += f[2]
                .replace(',', ".")
                .parse::<rust_decimal::Decimal>()
                .unwrap();
        }
    }
    assert_eq!(ids.len() as u64, expect["valid"].as_u64().unwrap());
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "keyset paging returns rows in key order, none twice"
    );
    assert_eq!(
        total.to_string(),
        total_pg,
        "amounts survive the round trip exactly"
    );
    assert!(!dir.path().join("export.csv.partial").exists());
}

/// The PostgreSQL sink's binary `COPY` stores exactly what PostgreSQL's own text parsing
/// stores: the same CSV loaded by snodo (typed values sent in the binary format, the nine
/// batches carried by one transaction with `commit_rows`) and by `psql \copy` (text parsed by the server) gives
/// identical tables, value by value, over the edges of every type the binary form covers:
/// `numeric` scales and signs (`0.00` keeps its zeros, a 28-digit fraction, the largest
/// decimal, rounding to a column's scale), `integer` and `smallint` limits, an integer into a
/// `numeric` column, dates and timestamps from year 1 to 9999 on both sides of
/// PostgreSQL's epoch (2000-01-01), text with tabs, backslashes, newlines and accents, nulls.
#[test]
fn binary_copy_stores_what_postgresql_parses_from_text() {
    let (dir, pg, cfg) = pg_workspace("e2e_binary_copy");
    let columns = "id bigint PRIMARY KEY, i4 integer, i2 smallint, n numeric, n2 numeric(12,2), \
                   ni numeric, t text, v varchar(40), d date, ts timestamp, b boolean";
    pg.psql(&format!(
        "CREATE TABLE tipi ({columns}); CREATE TABLE tipi_psql ({columns})"
    ));
    let numerics = [
        "0",
        "0.00",
        "-0.5",
        "1",
        "-1",
        "10000",
        "1000000",
        "10000.0001",
        "0.0001",
        "12345678901234567890.12345678",
        "-99999999.99",
        "0.0000000000000000000000000001",
        "79228162514264337593543950335",
        "-7922816251426433759354395033.5",
        "3.14159",
        "100.10",
        "9999.9999",
        "0.1",
    ];
    let scaled = ["1.005", "-1.005", "0.00", "1234567890.12", "0.1", "-0.004"];
    let ints4 = ["2147483647", "-2147483648", "0", "-1", "65536"];
    let ints2 = ["32767", "-32768", "0", "-1", "255"];
    let dates = [
        "2000-01-01",
        "1999-12-31",
        "2000-01-02",
        "0001-01-01",
        "9999-12-31",
        "2024-02-29",
        "1900-03-01",
    ];
    let stamps = [
        "2000-01-01 00:00:00.000000",
        "1999-12-31 23:59:59.999999",
        "2024-02-29 12:34:56.123456",
        "0001-01-01 00:00:00.000000",
        "9999-12-31 23:59:59.000001",
        "1970-01-01 00:00:00.500000",
    ];
    let texts = [
        "Città di Genova",
        "\"tab\there\"",
        "back\\slash",
        "\"line\nbreak\"",
        "N",
        "\"a;b\"",
        "perché",
        "\\N",
    ];
    let mut csv = String::from("id;i4;i2;n;n2;ni;t;v;d;ts;b\n");
    let rows = 60;
    for k in 0..rows {
        let pick = |list: &[&'static str]| list[k % list.len()];
        if k % 13 == 5 {
            // Every field but the key null.
            csv.push_str(&format!("{k};;;;;;;;;;\n"));
            continue;
        }
        csv.push_str(&format!(
            "{k};{};{};{};{};{};{};{};{};{};{}\n",
            pick(&ints4),
            pick(&ints2),
            pick(&numerics),
            pick(&scaled),
            (k as i64 - 30) * 1_000_003,
            pick(&texts),
            pick(&texts),
            pick(&dates),
            pick(&stamps),
            if k % 2 == 0 { "true" } else { "false" },
        ));
    }
    let file = dir.path().join("tipi.csv");
    std::fs::write(&file, &csv).unwrap();
    let p = dir.path().join("tipi.yaml");
    std::fs::write(
        &p,
        format!(
            r#"pipeline: tipi
batch_size: 7
source:
  csv:
    path: {}
    delimiter: ";"
    date_format: "%Y-%m-%d"
    datetime_format: "%Y-%m-%d %H:%M:%S%.f"
    types: {{ id: int, i4: int, i2: int, n: decimal, n2: decimal, ni: int, d: date, ts: datetime, b: bool }}
sink:
  sql: {{ connection: pg, table: tipi, key: [id], commit_rows: 8000 }}
"#,
            file.display()
        ),
    )
    .unwrap();
    pg.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
    let (code, summary) = run_pipeline(&cfg, &p);
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary["written"], rows);
    // What the sink sent: one binary `COPY` for the nine batches (the table was there at
    // the start, so even the first batch had its column types), none in text.
    let copies = |format: &str| {
        pg.psql(&format!(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND query LIKE 'COPY \"tipi\"%' AND query LIKE '%FORMAT {format})'"
        ))
    };
    assert_eq!((copies("binary"), copies("text")), ("1".into(), "0".into()));
    pg.psql(&format!(
        "\\copy tipi_psql FROM '{}' (FORMAT csv, DELIMITER ';', HEADER true)",
        file.display()
    ));
    assert_eq!(pg.psql("SELECT count(*) FROM tipi"), rows.to_string());
    // Every row compared by its text form (scale and zeros of a numeric included).
    let differing = pg.psql(
        "SELECT string_agg(format('snodo %s / psql %s', x::text, y::text), E'\\n') \
         FROM tipi x FULL JOIN tipi_psql y ON x.id = y.id \
         WHERE x::text IS DISTINCT FROM y::text",
    );
    assert_eq!(differing, "", "rows that differ");
    // The zeros of `0.00` and the 28-digit fraction survive as written.
    assert_eq!(pg.psql("SELECT n::text FROM tipi WHERE id = 1"), "0.00");
    assert_eq!(
        pg.psql("SELECT n::text FROM tipi WHERE id = 11"),
        "0.0000000000000000000000000001"
    );
}

/// The published JSON Schemas are exactly what the config structs generate: docs and
/// editor completion cannot drift from the code.
#[test]
fn published_schemas_match_the_config_structs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    for (args, file) in [
        (vec!["schema"], "specs/pipeline.schema.json"),
        (
            vec!["schema", "--connections"],
            "specs/connections.schema.json",
        ),
        (vec!["schema", "--migration"], "specs/migration.schema.json"),
    ] {
        let out = run({
            let mut c = snodo(&cfg);
            c.args(&args);
            c
        });
        assert!(out.status.success());
        let published = std::fs::read_to_string(root().join(file)).unwrap();
        assert_eq!(
            stdout(&out),
            published,
            "{file} is stale: regenerate it with `snodo {}` > {file}",
            args.join(" ")
        );
    }
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("specs/pipeline.schema.json")).unwrap(),
    )
    .unwrap();
    let text = schema.to_string();
    for needle in [
        "reject_limit",
        "belfiore_at",
        "decimal_separator",
        "create_table",
        "cursor",
    ] {
        assert!(text.contains(needle), "schema lacks {needle}");
    }
}

/// SQLite → JSON lines with a cursor: the second run reads only what changed; `--dry-run`
/// writes nothing and moves no checkpoint; `--limit` stops early and the next run resumes.
#[test]
fn sqlite_source_is_incremental_and_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let db = dir.path().join("store.db");
    incremental_source(dir.path(), &cfg, "store", &|sql| sqlite_exec(&db, &[sql]));
}

/// The same from PostgreSQL, which streams one ordered query instead of keyset pages: the
/// checkpoint after each batch, `--limit` and the resumed query must give the same reads.
#[test]
fn postgres_source_is_incremental_and_dry_run_changes_nothing() {
    let (dir, pg, cfg) = pg_workspace("e2e_incremental");
    incremental_source(dir.path(), &cfg, "pg", &|sql| {
        pg.psql(sql);
    });
}

fn incremental_source(dir: &Path, cfg: &Path, connection: &str, exec: &dyn Fn(&str)) {
    exec(
        "CREATE TABLE evento (id INTEGER PRIMARY KEY, codice TEXT, importo TEXT, aggiornato TEXT)",
    );
    for i in 1..=25 {
        exec(&format!(
            "INSERT INTO evento VALUES ({i}, 'E{i:03}', '{i}.50', '2026-01-{:02}')",
            i % 28 + 1
        ));
    }
    let out_path = dir.join("eventi.jsonl");
    let p = dir.join("inc.yaml");
    std::fs::write(
        &p,
        format!(
            "pipeline: eventi-incrementali\nsource:\n  sql:\n    connection: {connection}\n    query: SELECT id, codice, importo, aggiornato FROM evento\n    key: [id]\n    cursor: aggiornato\nsteps:\n  - map:\n      importo: decimal(importo)\nsink:\n  jsonl: {{ path: {} }}\nbatch_size: 7\n",
            out_path.display()
        ),
    )
    .unwrap();
    let go = |extra: &[&str]| -> serde_json::Value {
        let out = run({
            let mut c = snodo(cfg);
            c.arg("run").arg(&p).arg("--json").args(extra);
            c
        });
        assert_eq!(out.status.code(), Some(0));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let dry = go(&["--dry-run"]);
    assert_eq!(dry["read"], 25);
    assert!(!out_path.exists(), "a dry run writes nothing");

    let first = go(&["--limit", "10"]);
    assert_eq!(first["read"], 10);
    let rest = go(&[]);
    assert_eq!(
        rest["read"], 15,
        "the run after --limit resumes after the 10th record"
    );
    assert!(rest["resumed_from"].is_string());
    let lines = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(lines.lines().count(), 25);
    assert!(lines.contains("\"importo\":1.50"), "{lines}");

    exec("INSERT INTO evento VALUES (26, 'E026', '9.99', '2026-02-01')");
    exec("UPDATE evento SET codice = 'E003-bis', aggiornato = '2026-02-02' WHERE id = 3");
    let inc = go(&[]);
    assert_eq!(inc["read"], 2, "only the new and the changed row: {inc}");
    let lines = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.contains("E003-bis") && lines.contains("E026"));
}

/// Step workers run whole batches in turn and the sink takes their output back in the
/// source's order: three workers write what one writes, byte for byte, with the same
/// rejects at the same lines. On two cores the default is one worker, so the pipeline
/// asks for three here; with small batches each worker gets many.
#[test]
fn step_workers_keep_the_source_order_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let (csv, expect) = generate_csv(dir.path(), 3000, 11, "0.02");
    let mut outputs = Vec::new();
    for workers in [1, 3] {
        let out = dir.path().join(format!("out_{workers}.jsonl"));
        let p = example_pipeline(
            dir.path(),
            &format!("workers-{workers}"),
            &csv,
            "store",
            &format!("batch_size: 37\nworkers: {workers}\n"),
        );
        // The example's SQL sink becomes a JSON-lines file, which keeps the order it was given.
        let text = std::fs::read_to_string(&p).unwrap();
        let (head, tail) = text.split_once("sink:\n").unwrap();
        let rest = &tail[tail.find("on_error:").unwrap()..];
        std::fs::write(
            &p,
            format!(
                "{head}sink:\n  jsonl: {{ path: {} }}\n{rest}",
                out.display()
            ),
        )
        .unwrap();
        let (code, summary) = run_pipeline(&cfg, &p);
        assert_eq!(code, 0, "{summary}");
        assert_eq!(summary["written"], expect["valid"]);
        let rejects: Vec<(String, String)> = rejects_of(&cfg, summary["run_id"].as_str().unwrap())
            .iter()
            .map(|r| (r["position"].to_string(), r["code"].to_string()))
            .collect();
        assert_eq!(rejects.len() as u64, count_bad(&expect));
        outputs.push((std::fs::read_to_string(&out).unwrap(), rejects));
    }
    let ids: Vec<i64> = outputs[0]
        .0
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id_anagrafica"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len() as u64, expect["valid"].as_u64().unwrap());
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "the source's order");
    assert!(
        outputs[0] == outputs[1],
        "three workers wrote something else than one"
    );
}
