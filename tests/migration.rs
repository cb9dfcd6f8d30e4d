//! The legacy migration end to end: the generated legacy databases (scripts/gen_legacy_db.py,
//! with its ground truth in expect.json) migrated by the `snodo` binary into SQLite and
//! PostgreSQL stores; de-duplication, rejects, PIA and duplicates checked against the
//! ground truth; re-runs; SIGKILL and resume.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value as Json;

const SYSTEMS: [(&str, &str); 3] = [
    ("segretariato", "SS"),
    ("web_distretti", "WD"),
    ("scheda_tecnica", "ST"),
];

/// Generates the legacy set (SQLite copies) and returns its ground truth.
fn generate(dir: &Path, persons: u32, seed: u32, format: &str) -> Json {
    succeed(
        Command::new("python3")
            .arg(root().join("scripts/gen_legacy_db.py"))
            .arg("--out")
            .arg(dir)
            .args([
                "--persons",
                &persons.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .args(["--format", format]),
        "generator",
    );
    serde_json::from_slice(&std::fs::read(dir.join("expect.json")).unwrap()).unwrap()
}

/// A connections file with the legacy SQLite copies in `legacy`, and the store either in
/// SQLite or in `pg`.
fn migration_connections(dir: &Path, legacy: &Path, pg: Option<&PgDb>) -> PathBuf {
    let mut text = format!(
        "connections:\n  flowlog:\n    sqlite: {{ path: {0}/flowlog.db }}\n",
        dir.display()
    );
    match pg {
        Some(pg) => {
            let c = format!(
                "    postgres: {{ host: 127.0.0.1, port: {}, database: {}, user: postgres }}\n",
                pg.port, pg.name
            );
            text.push_str(&format!("  store:\n{c}"));
            for (s, _) in SYSTEMS {
                text.push_str(&format!("  legacy_{s}:\n{c}"));
            }
        }
        None => {
            text.push_str(&format!(
                "  store:\n    sqlite: {{ path: {}/store.db }}\n",
                dir.display()
            ));
            for (s, _) in SYSTEMS {
                text.push_str(&format!(
                    "  legacy_{s}:\n    sqlite: {{ path: {}/{s}.sqlite }}\n",
                    legacy.display()
                ));
            }
        }
    }
    text.push_str("flow_log:\n  connection: flowlog\n");
    let p = dir.join("snodo.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The shipped definitions, copied into `dir` with `edit` applied to their text.
fn definitions(dir: &Path, edit: impl Fn(&str, &str) -> String) -> Vec<PathBuf> {
    SYSTEMS
        .iter()
        .map(|(s, _)| {
            let text =
                std::fs::read_to_string(root().join(format!("pipelines/migrazione/{s}.yaml")))
                    .unwrap();
            let p = dir.join(format!("{s}.yaml"));
            std::fs::write(&p, edit(s, &text)).unwrap();
            p
        })
        .collect()
}

fn migrate(config: &Path, verb: &str, defs: &[PathBuf], extra: &[&str]) -> (i32, Json) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["migrate".as_ref(), verb.as_ref()];
    args.extend(defs.iter().map(|d| d.as_os_str()));
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    snodo_json(config, &args)
}

/// Runs a query on the store (SQLite file or PostgreSQL) and returns rows of text.
fn store_rows(config_dir: &Path, pg: Option<&PgDb>, sql: &str) -> Vec<Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::{Row, ValueRef};
        let text = |v: Option<String>| v.unwrap_or_else(|| "∅".into());
        match pg {
            Some(pg) => {
                let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
                // Every column cast to text in the query keeps decoding uniform.
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let out = rows
                    .iter()
                    .map(|r| {
                        (0..r.columns().len())
                            .map(|i| text(r.try_get::<Option<String>, _>(i).unwrap()))
                            .collect()
                    })
                    .collect();
                pool.close().await;
                out
            }
            None => {
                let pool = sqlx::SqlitePool::connect(&format!(
                    "sqlite://{}/store.db",
                    config_dir.display()
                ))
                .await
                .unwrap();
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let out = rows
                    .iter()
                    .map(|r| {
                        (0..r.columns().len())
                            .map(|i| {
                                let raw = r.try_get_raw(i).unwrap();
                                if raw.is_null() {
                                    "∅".to_string()
                                } else {
                                    r.try_get::<String, _>(i)
                                        .or_else(|_| r.try_get::<i64, _>(i).map(|n| n.to_string()))
                                        .unwrap()
                                }
                            })
                            .collect()
                    })
                    .collect();
                pool.close().await;
                out
            }
        }
    })
}

/// `system:key` → persona id, for every migrated person row.
fn persons_by_source(dir: &Path, pg: Option<&PgDb>) -> BTreeMap<String, String> {
    store_rows(
        dir,
        pg,
        "SELECT source_system || ':' || source_key, CAST(persona_id AS TEXT) FROM persona_fonte",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect()
}

fn code_of(system: &str) -> &'static str {
    SYSTEMS
        .iter()
        .find(|(s, _)| *s == system)
        .map(|(_, c)| *c)
        .unwrap()
}

fn member_key(m: &Json) -> String {
    format!(
        "{}:{}",
        code_of(m["system"].as_str().unwrap()),
        m["id_anagrafica"]
    )
}

/// A digest of the store's content that does not depend on surrogate ids or run ids:
/// what an uninterrupted and a resumed migration must agree on.
fn content_digest(dir: &Path, pg: Option<&PgDb>) -> Vec<String> {
    let mut out = Vec::new();
    for (table, cols) in [
        (
            "persona_fonte",
            "codice_fiscale, cognome, nome, data_nascita, chiave_persona",
        ),
        ("persona", "chiave, codice_fiscale, cognome, fonti"),
        ("persona_revisione", "tipo, fonte_a, fonte_b, stato"),
        (
            "presa_in_carico",
            "persona_source_key, servizio_territoriale, data_apertura, data_chiusura",
        ),
        ("intervento", "persona_source_key, importo, data_inizio"),
        ("valutazione", "pia_totale, pia_totale_legacy"),
        ("valutazione_pia", "dimensione, punteggio"),
        ("valutazione_risposta", "valore"),
        ("segnalazione", "persona_source_key, esito"),
        ("codice", "dominio, codice"),
    ] {
        let cols: Vec<String> = cols
            .split(", ")
            .map(|c| format!("COALESCE(CAST({c} AS TEXT), '∅')"))
            .collect();
        let sql = format!(
            "SELECT ente || '|' || source_system || '|' || source_key || '|' || {} FROM {table} ORDER BY 1",
            cols.join(" || '|' || ")
        );
        for r in store_rows(dir, pg, &sql) {
            out.push(format!("{table}|{}", r[0]));
        }
    }
    for (table, refs) in [
        (
            "intervento",
            "persona_id IS NULL, presa_in_carico_id IS NULL, duplicato_di IS NULL",
        ),
        (
            "valutazione_risposta",
            "valutazione_id IS NULL, voce_id IS NULL",
        ),
    ] {
        for r in store_rows(
            dir,
            pg,
            &format!(
                "SELECT CAST(COUNT(*) AS TEXT), CAST(SUM(CASE WHEN {} THEN 1 ELSE 0 END) AS TEXT) FROM {table}",
                refs.replace(", ", " OR ")
            ),
        ) {
            out.push(format!("{table} refs|{}", r.join("|")));
        }
    }
    out
}

/// Checks a finished migration against the generator's ground truth.
fn check_ground_truth(dir: &Path, pg: Option<&PgDb>, expect: &Json, outcome: &Json) {
    let report = &outcome["report"];
    assert_eq!(report["reconciled"], true, "report: {report:#}");
    for t in report["tables"].as_array().unwrap() {
        assert_eq!(t["reconciled"], true, "{t:#}");
        assert_eq!(
            t["read"]["rows"].as_u64().unwrap(),
            t["migrated"]["rows"].as_u64().unwrap() + t["rejected"]["rows"].as_u64().unwrap(),
            "{t:#}"
        );
        let name = t["source"].as_str().unwrap();
        let expected = expect["tables"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in expect.json"));
        assert_eq!(
            t["read"]["rows"].as_u64().unwrap(),
            expected,
            "{name}: rows read"
        );
    }

    // True duplicates are merged; near-misses are kept apart and listed for review.
    let persons = persons_by_source(dir, pg);
    let clusters = expect["clusters"].as_array().unwrap();
    assert!(!clusters.is_empty());
    for c in clusters {
        let ids: BTreeSet<&String> = c["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                persons
                    .get(&member_key(m))
                    .unwrap_or_else(|| panic!("{m} not migrated"))
            })
            .collect();
        assert_eq!(ids.len(), 1, "cluster {c} not merged into one person");
    }
    let reviews: BTreeSet<(String, String)> = store_rows(
        dir,
        pg,
        "SELECT fonte_a, fonte_b FROM persona_revisione WHERE stato = 'aperta'",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect();
    let near = expect["near_misses"].as_array().unwrap();
    let mut kinds = BTreeSet::new();
    for n in near {
        kinds.insert(n["kind"].as_str().unwrap().to_string());
        let m: Vec<String> = n["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(member_key)
            .collect();
        let ids: BTreeSet<&String> = m
            .iter()
            .map(|k| persons.get(k).unwrap_or_else(|| panic!("{k} not migrated")))
            .collect();
        assert_eq!(ids.len(), m.len(), "near-miss {n} was merged");
        assert!(
            reviews.contains(&(m[0].clone(), m[1].clone()))
                || reviews.contains(&(m[1].clone(), m[0].clone())),
            "near-miss {n} not listed for review"
        );
    }
    assert!(kinds.len() >= 3, "{kinds:?}");
    let distinct: BTreeSet<&String> = persons.values().collect();
    assert_eq!(
        distinct.len() as u64,
        report["persons"]["persons"].as_u64().unwrap()
    );

    // Bad rows are rejected with their key and a reason naming the field.
    let rejected: BTreeMap<String, BTreeMap<String, String>> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["source"].as_str().unwrap().to_string(),
                t["rejected_keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| {
                        (
                            k[0].as_str().unwrap().to_string(),
                            k[1].as_str().unwrap().to_string(),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    for (kind, field) in [
        ("impossible_birth_date", "data_nascita"),
        ("closure_before_opening", "data_chiusura"),
        ("negative_amount", "importo"),
    ] {
        let dirty: Vec<&Json> = expect["dirty"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == kind)
            .collect();
        assert!(!dirty.is_empty(), "no {kind} in the generated set");
        for d in dirty {
            let table = format!(
                "{}.{}",
                d["system"].as_str().unwrap(),
                d["table"].as_str().unwrap()
            );
            let reason = rejected
                .get(&table)
                .and_then(|r| r.get(d["key"].as_str().unwrap()))
                .unwrap_or_else(|| {
                    panic!(
                        "{d} not rejected; rejects of {table}: {:?}",
                        rejected.get(&table)
                    )
                });
            assert!(reason.contains(field), "{d}: {reason}");
        }
    }
    // Orphans are kept with their legacy key and counted, never dropped.
    for d in expect["dirty"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "orphan_person")
    {
        let table = format!(
            "{}.{}",
            d["system"].as_str().unwrap(),
            d["table"].as_str().unwrap()
        );
        let t = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["source"] == table.as_str())
            .unwrap();
        assert!(
            t["orphans"]["persona_source_key"].as_u64().unwrap_or(0) > 0,
            "{table}: {t:#}"
        );
    }

    // Duplicated interventions are marked, not deleted.
    let dup_keys: BTreeSet<String> = store_rows(
        dir,
        pg,
        "SELECT source_key FROM intervento WHERE duplicato_di IS NOT NULL",
    )
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    for d in expect["dirty"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "duplicate_intervento")
    {
        assert!(
            dup_keys.contains(d["key"].as_str().unwrap()),
            "{d} not marked"
        );
    }

    // PIA: exactly the legacy totals the generator made wrong differ from the recomputed ones.
    let expected: BTreeMap<String, (String, String)> = expect["pia"]["legacy_mismatch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                format!("ST:{}", m["id_scheda"]),
                (
                    m["legacy"].as_str().unwrap().to_string(),
                    m["expected"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(
        report["pia"]["differences"].as_u64().unwrap(),
        expected.len() as u64,
        "{:#}",
        report["pia"]
    );
    for l in report["pia"]["listed"].as_array().unwrap() {
        let (legacy, recomputed) = expected
            .get(l[0].as_str().unwrap())
            .unwrap_or_else(|| panic!("{l} is not a difference the generator made"));
        let num = |s: &str| s.parse::<f64>().unwrap();
        assert_eq!(num(l[1].as_str().unwrap()), num(legacy), "{l}");
        assert_eq!(num(l[2].as_str().unwrap()), num(recomputed), "{l}");
    }
}

#[test]
fn full_migration_into_sqlite_reconciles_and_matches_the_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("legacy");
    let expect = generate(&legacy, 300, 11, "sqlite");
    let config = migration_connections(dir.path(), &legacy, None);
    let defs = definitions(dir.path(), |_, t| t.to_string());
    let reports = dir.path().join("reports");
    let reports_arg = reports.display().to_string();

    let (code, plan) = migrate(&config, "plan", &defs, &[]);
    assert_eq!(code, 0);
    assert!(
        plan.as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "pending"),
        "{plan:#}"
    );

    let (code, outcome) = migrate(&config, "run", &defs, &["--report-dir", &reports_arg]);
    assert_eq!(code, 0, "{outcome:#}");
    assert_eq!(outcome["status"], "succeeded");
    check_ground_truth(dir.path(), None, &expect, &outcome);

    // The report files are artifacts of a run in the flow log, with their hashes.
    let files: Vec<&str> = outcome["report_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2);
    let md = std::fs::read_to_string(files.iter().find(|f| f.ends_with(".md")).unwrap()).unwrap();
    assert!(
        md.contains("RICONCILIATA") && md.contains("web_distretti.presa_in_carico"),
        "{md}"
    );
    let (code, runs) = snodo_json(
        &config,
        &["runs".as_ref(), "--limit".as_ref(), "1".as_ref()],
    );
    assert_eq!(code, 0);
    let id = runs[0]["run_id"].as_str().unwrap().to_string();
    let (_, shown) = snodo_json(&config, &["runs".as_ref(), "show".as_ref(), id.as_ref()]);
    let text = shown.to_string();
    assert!(
        text.contains("migrate.report") && text.contains("riconciliazione-"),
        "{shown:#}"
    );

    // verify agrees, and running a finished migration again does nothing.
    let before = content_digest(dir.path(), None);
    let (code, verified) = migrate(&config, "verify", &defs, &[]);
    assert_eq!(code, 0);
    assert_eq!(verified["reconciled"], true);
    let (code, again) = migrate(&config, "run", &defs, &["--report-dir", &reports_arg]);
    assert_eq!(code, 0);
    assert_eq!(again["status"], "nothing_to_do", "{again:#}");
    assert_eq!(before, content_digest(dir.path(), None));

    // Forced, every phase runs again and the content is the same.
    let (code, forced) = migrate(
        &config,
        "run",
        &defs,
        &["--force", "--report-dir", &reports_arg],
    );
    assert_eq!(code, 0, "{forced:#}");
    assert_eq!(forced["status"], "succeeded");
    assert_eq!(before, content_digest(dir.path(), None));

    // A row deleted from the store behind the migrator's back is caught by verify.
    let store = dir.path().join("store.db");
    let victim = sqlite_query(
        &store,
        "SELECT source_key FROM presa_in_carico WHERE source_system = 'WD' ORDER BY id LIMIT 1",
    );
    sqlite_exec(
        &store,
        &[&format!(
            "DELETE FROM presa_in_carico WHERE source_key = '{}'",
            victim.trim()
        )],
    );
    let (code, broken) = migrate(&config, "verify", &defs, &[]);
    assert_eq!(code, 6, "{broken:#}");
    let t = broken["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source"] == "web_distretti.presa_in_carico")
        .unwrap();
    assert_eq!(t["reconciled"], false);
    assert_eq!(t["missing_in_target"][0], victim.trim());
}

#[test]
fn full_migration_from_and_into_postgresql_gives_the_same_result_as_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let legacy_pg = dir.path().join("legacy_pg");
    let expect = generate(&legacy_pg, 300, 11, "pgsql");
    let pg = pg_db("migration_full");
    for (s, _) in SYSTEMS {
        succeed(
            Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pg.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    &pg.name,
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-f",
                ])
                .arg(legacy_pg.join(format!("{s}.sql"))),
            &format!("loading {s}"),
        );
    }
    let config = migration_connections(dir.path(), &legacy_pg, Some(&pg));
    let defs = definitions(dir.path(), |s, t| {
        t.replace(
            &format!("connection: legacy_{s} }}"),
            &format!("connection: legacy_{s}, schema: {s} }}"),
        )
    });
    let reports = dir.path().join("reports").display().to_string();
    let (code, outcome) = migrate(&config, "run", &defs, &["--report-dir", &reports]);
    assert_eq!(code, 0, "{outcome:#}");
    check_ground_truth(dir.path(), Some(&pg), &expect, &outcome);

    // The same legacy set migrated into SQLite gives the same numbers.
    let lite_dir = dir.path().join("lite");
    let legacy_lite = lite_dir.join("legacy");
    generate(&legacy_lite, 300, 11, "sqlite");
    let lite_config = migration_connections(&lite_dir, &legacy_lite, None);
    let lite_defs = definitions(&lite_dir, |_, t| t.to_string());
    let (code, lite) = migrate(&lite_config, "run", &lite_defs, &["--report-dir", &reports]);
    assert_eq!(code, 0);
    for key in ["persons", "pia"] {
        assert_eq!(outcome["report"][key], lite["report"][key], "{key}");
    }
    let pick = |o: &Json| -> Vec<(Json, Json, Json)> {
        o["report"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["source"].clone(),
                    t["read"].clone(),
                    t["rejected"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(pick(&outcome), pick(&lite));
    let (code, again) = migrate(&config, "run", &defs, &["--report-dir", &reports]);
    assert_eq!(code, 0);
    assert_eq!(again["status"], "nothing_to_do");
}

/// Kills the migration with SIGKILL at random moments of the loads and inside each
/// set-based phase, resumes it each time, and compares the end state with an
/// uninterrupted migration of the same data.
#[test]
fn a_migration_killed_in_every_phase_resumes_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("legacy");
    generate(&legacy, 2000, 23, "sqlite");
    // Small batches: many commits, so kills land between and inside them.
    let small = |_: &str, t: &str| {
        let t = t
            .replace("batch_size: 5000", "batch_size: 40")
            .replace("batch_size: 2000", "batch_size: 40");
        assert!(
            t.contains("batch_size: 40"),
            "a definition lost its batch_size"
        );
        t
    };

    let clean_dir = dir.path().join("clean");
    std::fs::create_dir_all(&clean_dir).unwrap();
    let clean_config = migration_connections(&clean_dir, &legacy, None);
    let clean_defs = definitions(&clean_dir, small);
    let reports = dir.path().join("reports").display().to_string();
    let (code, clean) = migrate(
        &clean_config,
        "run",
        &clean_defs,
        &["--report-dir", &reports],
    );
    assert_eq!(code, 0, "{clean:#}");
    let expected = content_digest(&clean_dir, None);

    let crash_dir = dir.path().join("crash");
    std::fs::create_dir_all(&crash_dir).unwrap();
    let config = migration_connections(&crash_dir, &legacy, None);
    let defs = definitions(&crash_dir, small);
    let spawn = |failpoint: Option<&str>| {
        let mut c = snodo(&config);
        c.args(["migrate", "run", "--json", "--report-dir", &reports])
            .args(&defs);
        if let Some(f) = failpoint {
            c.env("SNODO_FAILPOINT", f);
        }
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    // Random kills during the loads (a pseudo-random sequence, reproducible).
    let mut seed: u64 = 0x5eed;
    let mut kills = 0;
    for _ in 0..6 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = 100 + (seed >> 33) % 600;
        let mut child = spawn(None);
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 2,
        "the migration finished before it could be killed"
    );
    // On a fast machine the last attempts may have finished the whole migration. Forget
    // the set-based phases (not the loads, whose resumption is what the kills tested) so
    // that each of them runs, and crashes, below.
    sqlite_exec(
        &crash_dir.join("store.db"),
        &["DELETE FROM _snodo_migration_phase WHERE phase NOT LIKE 'load:%'"],
    );
    // Then a crash inside each set-based phase, before its commit, and in the report.
    for phase in ["dedup", "resolve", "pia", "duplicates", "report"] {
        // Each attempt redoes the phase the previous one died in, then dies in this one.
        let status = spawn(Some(phase)).wait().unwrap();
        assert!(
            !status.success(),
            "failpoint {phase} was not reached: {status:?}"
        );
    }
    let (code, resumed) = migrate(&config, "resume", &defs, &["--report-dir", &reports]);
    assert_eq!(code, 0, "{resumed:#}");
    let (code, verified) = migrate(&config, "verify", &defs, &[]);
    assert_eq!(code, 0, "{verified:#}");
    assert_eq!(content_digest(&crash_dir, None), expected);
    assert_eq!(verified["persons"], clean["report"]["persons"]);
}

#[test]
fn full_migration_from_csv_exports_reconciles_and_matches_the_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("export");
    // BCP-style exports: `;`, Windows-1252, dd/mm/yyyy dates, decimal commas, CRLF.
    let expect = generate(&legacy, 300, 11, "csv");
    let config = migration_connections(dir.path(), &legacy, None);
    let defs = definitions(dir.path(), |s, t| {
        t.replace(
            &format!("source: {{ sql: {{ connection: legacy_{s} }} }}"),
            &format!("source: {{ csv: {{ dir: {} }} }}", legacy.join(s).display()),
        )
    });
    let reports = dir.path().join("reports").display().to_string();
    let (code, outcome) = migrate(&config, "run", &defs, &["--report-dir", &reports]);
    assert_eq!(code, 0, "{outcome:#}");
    check_ground_truth(dir.path(), None, &expect, &outcome);
    // Accented text survived the Windows-1252 decoding.
    let names = store_rows(
        dir.path(),
        None,
        "SELECT cognome FROM persona_fonte WHERE cognome LIKE '%''%' OR nome LIKE '%ò%' OR nome LIKE '%ù%'",
    );
    assert!(
        !names.is_empty(),
        "no accented or apostrophe names came through"
    );
}

#[test]
fn a_bad_definition_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = migration_connections(dir.path(), dir.path(), None);
    let defs = definitions(dir.path(), |s, t| {
        if *s == *"web_distretti" {
            t.replace(
                "      tipo: upper(trim(tipo_pic))",
                "      tipo_caso: upper(trim(tipo_pic))",
            )
            .replace("target: store", "target: nowhere")
        } else {
            t.to_string()
        }
    });
    let out = run({
        let mut c = snodo(&config);
        c.args(["migrate", "plan"]).args(&defs);
        c
    });
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    let file = defs[1].display().to_string();
    assert!(err.contains(&format!("{file}:")), "{err}");
    assert!(
        err.contains("`presa_in_carico` has no column `tipo_caso`"),
        "{err}"
    );
    assert!(err.contains("unknown connection `nowhere`"), "{err}");
    let line = std::fs::read_to_string(&defs[1])
        .unwrap()
        .lines()
        .position(|l| l.contains("tipo_caso:"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(":{line}:")),
        "line {line} not named: {err}"
    );
}
