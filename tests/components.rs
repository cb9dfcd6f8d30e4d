//! The remaining components end to end: `lookup`, `filter`, `select`, the JSON-lines
//! source, UTF-8 with BOM and ISO-8859-1 input, and the flow log kept on PostgreSQL.

mod common;

use common::*;

/// Runs a pipeline that must succeed and returns its summary.
fn run_ok(cfg: &std::path::Path, p: &std::path::Path) -> serde_json::Value {
    let (code, s) = run_pipeline(cfg, p);
    assert_eq!(code, 0, "{s}");
    s
}

/// The same 20 people exported as UTF-8 with a byte-order mark and as Latin-1 read into
/// identical records (accents included).
#[test]
fn utf8_bom_and_latin1_exports_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let mut outputs = Vec::new();
    for (file, enc) in [
        ("assistiti_small_utf8bom.csv", "utf-8"),
        ("assistiti_latin1.csv", "iso-8859-1"),
    ] {
        let out = dir.path().join(format!("{enc}.jsonl"));
        let p = dir.path().join(format!("{enc}.yaml"));
        std::fs::write(
            &p,
            format!(
                "pipeline: enc-{enc}\nsource:\n  csv: {{ path: tests/fixtures/csv/{file}, delimiter: \";\", encoding: {enc} }}\nsteps:\n  - select: [id_anagrafica, cognome, nome, codice_fiscale, indirizzo]\nsink:\n  jsonl: {{ path: {} }}\n",
                out.display()
            ),
        )
        .unwrap();
        let s = run_ok(&cfg, &p);
        assert_eq!(s["written"], 20);
        outputs.push(std::fs::read_to_string(&out).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(
        outputs[0].starts_with("{\"id_anagrafica\":\""),
        "the BOM is not part of the first column name: {}",
        &outputs[0][..40]
    );
    assert!(
        outputs[0].chars().any(|c| "àèéìòùÀÈÉÌÒÙ".contains(c)),
        "accents survive both encodings"
    );
}

/// JSON lines in, a code table lookup, a filter and a select, CSV out; a malformed JSON
/// line and an unknown code are rejected with their line.
#[test]
fn jsonl_lookup_filter_select_to_csv() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let table = dir.path().join("servizi.csv");
    std::fs::write(
        &table,
        "codice,descrizione\nSAD,Assistenza domiciliare\nCE,Contributo economico\n",
    )
    .unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\": 1, \"servizio\": \"SAD\", \"importo\": 120.50, \"attivo\": true}\n",
            "{\"id\": 2, \"servizio\": \"CE\", \"importo\": 300, \"attivo\": false}\n",
            "{\"id\": 3, \"servizio\": \"XX\", \"importo\": 10, \"attivo\": true}\n",
            "{not json}\n",
            "\n",
            "{\"id\": 5, \"servizio\": \"CE\", \"importo\": 0.10, \"attivo\": true}\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("out.csv");
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        format!(
            "pipeline: jsonl-lookup\nsource:\n  jsonl: {{ path: {} }}\nsteps:\n  - lookup: {{ table: {}, key: servizio, into: descrizione, missing: reject }}\n  - filter: attivo\n  - map:\n      importo_doppio: importo * 2\n  - select: [id, descrizione, importo_doppio]\nsink:\n  csv: {{ path: {}, delimiter: \";\", decimal_separator: \",\" }}\non_error: {{ reject_limit: 2 }}\n",
            input.display(),
            table.display(),
            out.display()
        ),
    )
    .unwrap();
    let s = run_ok(&cfg, &p);
    assert_eq!(s["read"], 5);
    assert_eq!(s["rejected"], 2);
    assert_eq!(s["filtered"], 1);
    assert_eq!(s["written"], 2);
    assert_eq!(s["rejected_by_reason"]["lookup.servizio"], 1);
    assert_eq!(s["rejected_by_reason"]["malformed_row"], 1);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "id;descrizione;importo_doppio\n1;Assistenza domiciliare;241,00\n5;Contributo economico;0,20\n"
    );
    let rejects = rejects_of(&cfg, s["run_id"].as_str().unwrap());
    let lines: Vec<u64> = rejects
        .iter()
        .map(|r| r["position"]["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![3, 4]);
    assert_eq!(rejects[0]["step"], "steps[0].lookup");
}

/// The flow log on PostgreSQL: written by runs, verified, and tampering detected.
#[test]
fn flow_log_on_postgres_verifies_and_detects_tampering() {
    let (_dir, pg, cfg) = pg_workspace("flowlog_pg");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("connection: flowlog", "connection: pg");
    std::fs::write(&cfg, text).unwrap();
    let p = root().join("pipelines/esempio/assistiti_csv_sqlite.yaml");
    let s = run_ok(&cfg, &p);
    assert_eq!(s["written"], 980);
    let n: i64 = pg.psql("SELECT count(*) FROM flow_log").parse().unwrap();
    assert!(n >= 3, "entries on PostgreSQL: {n}");
    let verify = |c: &std::path::Path| {
        run({
            let mut cmd = snodo(c);
            cmd.args(["log", "verify"]);
            cmd
        })
        .status
        .code()
    };
    assert_eq!(verify(&cfg), Some(0));
    // Lineage read back from PostgreSQL: the target row of the fixture's second record.
    let traced = run({
        let mut cmd = snodo(&cfg);
        cmd.args(["lineage", "assistito:id_anagrafica=100002", "--json"]);
        cmd
    });
    let traced: serde_json::Value = serde_json::from_str(&stdout(&traced)).unwrap();
    assert_eq!(traced.as_array().map(Vec::len), Some(1), "{traced}");
    assert_eq!(traced[0]["source_record"], "2", "{traced}");
    assert_eq!(traced[0]["run_id"], s["run_id"], "{traced}");
    pg.psql("UPDATE flow_log SET body = replace(body, 'esempio-assistiti', 'altro') WHERE seq = 1");
    assert_eq!(verify(&cfg), Some(5));
}

/// A first batch with no surviving records (all filtered) must not fix the CSV sink's
/// columns to nothing: the header and every later row are still written in full.
#[test]
fn csv_sink_survives_an_empty_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        "id,nome,attivo\n1,A,N\n2,B,N\n3,C,S\n4,D,S\n5,E,N\n",
    )
    .unwrap();
    let out = dir.path().join("out.csv");
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        format!(
            "pipeline: empty-first\nsource:\n  csv: {{ path: {}, types: {{ attivo: bool }} }}\nsteps:\n  - filter: attivo\nsink:\n  csv: {{ path: {} }}\nbatch_size: 2\n",
            input.display(),
            out.display()
        ),
    )
    .unwrap();
    let s = run_ok(&cfg, &p);
    assert_eq!(s["written"], 2);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "id,nome,attivo\n3,C,true\n4,D,true\n"
    );
}

/// A UTF-8 BOM before a quoted first column name: the name is `id`, not `"id"`.
#[test]
fn bom_before_a_quoted_header_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = connections(dir.path(), None);
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        b"\xEF\xBB\xBF\"id\",\"nome\"\n1,\"Nicol\xC3\xB2\"\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        format!(
            "pipeline: bom\nsource:\n  csv: {{ path: {}, types: {{ id: int }} }}\nsink:\n  jsonl: {{ path: {} }}\n",
            input.display(),
            out.display()
        ),
    )
    .unwrap();
    let s = run_ok(&cfg, &p);
    assert_eq!(s["written"], 1);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "{\"id\":1,\"nome\":\"Nicolò\"}\n"
    );
}

/// The PostgreSQL sink copies new keys straight into the table and falls back to the
/// upsert as soon as a batch holds a key that is already there (or twice in the batch):
/// either way the last record of a key wins. A table without a unique index on the key is
/// never copied into (that would duplicate rows): the run fails and names the constraint.
#[test]
fn postgres_sink_copies_new_keys_and_upserts_the_rest() {
    let (dir, pg, cfg) = pg_workspace("sink_write_modes");
    let load = |name: &str, table: &str, lines: &[(i64, &str)]| {
        let input = dir.path().join(format!("{name}.jsonl"));
        let text: String = lines
            .iter()
            .map(|(id, nome)| format!("{{\"id\": {id}, \"nome\": \"{nome}\"}}\n"))
            .collect();
        std::fs::write(&input, text).unwrap();
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "pipeline: {name}\nsource:\n  jsonl: {{ path: {} }}\nsink:\n  sql: {{ connection: pg, table: {table}, key: [id], create_table: true }}\nbatch_size: 3\n",
                input.display()
            ),
        )
        .unwrap();
        run({
            let mut c = snodo(&cfg);
            c.args(["-vv", "run"]).arg(&p).arg("--json");
            c
        })
    };
    let switched = |o: &std::process::Output| stderr(o).contains("upserts from now on");
    let rows = |table: &str| {
        pg.psql(&format!(
            "SELECT string_agg(id || '=' || nome, ' ' ORDER BY id) FROM {table}"
        ))
    };

    // First batch: new keys, copied. Second batch: key 5 twice, refused by the index,
    // upserted (the later record wins); the third batch stays on the upsert.
    let first = load(
        "first",
        "persone",
        &[
            (1, "a"),
            (2, "b"),
            (3, "c"),
            (4, "d"),
            (5, "e"),
            (5, "E"),
            (6, "f"),
        ],
    );
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(switched(&first), "{}", stderr(&first));
    assert_eq!(rows("persone"), "1=a 2=b 3=c 4=d 5=E 6=f");

    // A clean load copies without ever switching, with the COPY text the step workers
    // encoded (the sink encodes only what was not prepared).
    let clean = load("clean", "altre", &[(1, "a"), (2, "b"), (3, "c"), (4, "d")]);
    assert_eq!(clean.status.code(), Some(0), "{}", stderr(&clean));
    assert!(!switched(&clean), "{}", stderr(&clean));
    assert!(
        !stderr(&clean).contains("not prepared on a worker"),
        "{}",
        stderr(&clean)
    );
    assert_eq!(rows("altre"), "1=a 2=b 3=c 4=d");

    // Existing keys are updated, new ones added.
    let again = load("again", "persone", &[(2, "B"), (7, "g")]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(switched(&again), "{}", stderr(&again));
    assert_eq!(rows("persone"), "1=a 2=B 3=c 4=d 5=E 6=f 7=g");

    pg.psql("CREATE TABLE senza_chiave (id bigint, nome text)");
    let refused = load("refused", "senza_chiave", &[(1, "a"), (1, "b")]);
    assert_ne!(refused.status.code(), Some(0));
    let said = format!("{}{}", stdout(&refused), stderr(&refused));
    assert!(
        said.contains("no primary key or unique constraint on (id)"),
        "{said}"
    );
    assert!(!switched(&refused), "{}", stderr(&refused));
    assert_eq!(pg.psql("SELECT count(*) FROM senza_chiave"), "0");
}

/// A pipeline `name` that loads JSON lines `{"id": N, "nome": "nN"}` for `ids`, in batches
/// of 3, into the PostgreSQL table `name` keyed on `id` (`sink_extra` is added to the sink's
/// options).
fn numbered_rows_pipeline(
    dir: &std::path::Path,
    name: &str,
    ids: &[i64],
    sink_extra: &str,
) -> std::path::PathBuf {
    let input = dir.join(format!("{name}.jsonl"));
    let text: String = ids
        .iter()
        .map(|id| format!("{{\"id\": {id}, \"nome\": \"n{id}\"}}\n"))
        .collect();
    std::fs::write(&input, text).unwrap();
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!(
            "pipeline: {name}\nsource:\n  jsonl: {{ path: {} }}\nsink:\n  sql: {{ connection: pg, table: {name}, key: [id]{sink_extra} }}\nbatch_size: 3\n",
            input.display()
        ),
    )
    .unwrap();
    p
}

/// The PostgreSQL sink commits in the background while the run reads on, so a batch that
/// PostgreSQL refuses is learnt about after later batches were handed over. The run must
/// still fail, report as written exactly the rows committed (not those handed over), keep
/// its checkpoint at the last committed batch, and resume from there once the cause is
/// fixed: in the end every row is in the table once.
#[test]
fn postgres_sink_failure_counts_only_committed_rows_and_resumes() {
    let (dir, pg, cfg) = pg_workspace("sink_background_failure");
    pg.psql("CREATE TABLE limitati (id bigint PRIMARY KEY, nome text, CONSTRAINT sotto_100 CHECK (id < 100))");
    // Batches of 3: [1 2 3] [4 5 6] [7 8 9] [200 10 11] [12 13 14] [15]; the fourth is
    // refused by the check constraint.
    let ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 200, 10, 11, 12, 13, 14, 15];
    let p = numbered_rows_pipeline(dir.path(), "limitati", &ids, "");

    let (code, failed) = run_pipeline(&cfg, &p);
    assert_ne!(code, 0, "{failed}");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap_or("").contains("sotto_100"),
        "{failed}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM limitati"), "9");
    assert_eq!(failed["written"], 9, "{failed}");

    pg.psql("ALTER TABLE limitati DROP CONSTRAINT sotto_100");
    let resumed = run_ok(&cfg, &p);
    assert_eq!(resumed["status"], "succeeded", "{resumed}");
    assert_eq!(
        pg.psql("SELECT count(*), count(DISTINCT id), sum(id) FROM limitati"),
        format!("16|16|{}", ids.iter().sum::<i64>())
    );
}

/// The same with `commit_rows`: batches wait in the sink for their transaction ([1 2 3]
/// [4 5 6] go together, [7 8 9] [200 10 11] together and are refused; then some thousand
/// more rows, so that the refusal comes back while later batches wait in the sink or are
/// being handed over). Written are the six rows committed: not the batches waiting in the
/// sink when the failure came back, nor those handed over with or after the refused one.
#[test]
fn postgres_sink_failure_with_commit_rows_counts_only_committed_rows_and_resumes() {
    let (dir, pg, cfg) = pg_workspace("sink_grouped_failure");
    pg.psql("CREATE TABLE raggruppati (id bigint PRIMARY KEY, nome text, CONSTRAINT sotto_100 CHECK (id < 100 OR id >= 1000))");
    let ids: Vec<i64> = [1, 2, 3, 4, 5, 6, 7, 8, 9, 200, 10, 11]
        .into_iter()
        .chain(1000..4000)
        .collect();
    let p = numbered_rows_pipeline(dir.path(), "raggruppati", &ids, ", commit_rows: 6");

    let (code, failed) = run_pipeline(&cfg, &p);
    assert_ne!(code, 0, "{failed}");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(pg.psql("SELECT count(*) FROM raggruppati"), "6");
    assert_eq!(failed["written"], 6, "{failed}");
    assert!(failed["read"].as_u64().unwrap() > 12, "{failed}");

    pg.psql("ALTER TABLE raggruppati DROP CONSTRAINT sotto_100");
    let resumed = run_ok(&cfg, &p);
    assert_eq!(resumed["status"], "succeeded", "{resumed}");
    assert_eq!(
        pg.psql("SELECT count(*), count(DISTINCT id), sum(id) FROM raggruppati"),
        format!("{0}|{0}|{1}", ids.len(), ids.iter().sum::<i64>())
    );
}

/// The PostgreSQL sink commits each batch asynchronously (PostgreSQL acknowledges it
/// before its WAL is on disk; a server crash may undo the last batches together with their
/// checkpoint), so before the run says what it wrote, the sink must commit one synchronous
/// transaction, which waits for the WAL of every batch before it. A test cannot crash the
/// machine under the server, so this one reads what the sink sent, by pg_stat_statements.
#[test]
fn postgres_sink_commits_batches_asynchronously_and_makes_them_durable_before_it_ends() {
    let (dir, pg, cfg) = pg_workspace("sink_durability");
    pg.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
    pg.psql("SELECT pg_stat_statements_reset()");
    let ids: Vec<i64> = (1..=10).collect();
    let p = numbered_rows_pipeline(dir.path(), "durevoli", &ids, ", create_table: true");
    let done = run_ok(&cfg, &p);
    assert_eq!(done["written"], 10, "{done}");
    assert_eq!(pg.psql("SELECT count(*) FROM durevoli"), "10");
    let calls = |query: &str| -> i64 {
        pg.psql(&format!(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND query = '{query}'"
        ))
        .parse()
        .unwrap()
    };
    // Four batches of rows, then the final checkpoint: each its own asynchronous commit.
    assert!(
        calls("SET LOCAL synchronous_commit TO off") >= 4,
        "{}",
        pg.psql("SELECT string_agg(query || ' ×' || calls, E'\\n') FROM pg_stat_statements")
    );
    // The barrier: a synchronous transaction with an id (it writes a commit record),
    // after the batches (the runtime's flush) and after the final checkpoint (the finish).
    assert!(calls("SET LOCAL synchronous_commit TO on") >= 1);
    assert!(calls("SELECT txid_current()") >= 1);
}

/// The PostgreSQL source reads every column type it knows into the value it stands for
/// (numbers exact, dates as dates, text types as text, NULL as null), the same in every
/// row, and names the column of a type it cannot read.
#[test]
fn postgres_source_reads_each_column_type() {
    let (dir, pg, cfg) = pg_workspace("source_types");
    pg.psql(
        "CREATE TABLE tipi (id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, n numeric, f4 float4,
           f8 float8, d date, ts timestamp, tz timestamptz, by bytea, j json, jb jsonb,
           v varchar(10), c char(3), t text, nm name, iv interval);
         INSERT INTO tipi VALUES
           (1, true, -2, 40000, 1234.50, 0.5, 0.1, '2024-02-29', '2024-02-29 13:45:01',
            '2024-02-29 13:45:01+02', '\\x00ff', '{\"a\": [1, 2]}', '{\"b\": \"x\"}', 'città',
            'ab', 'testo', 'nome', '1 day'),
           (2, false, 7, -1, -0.001, -1.25, 1e20, '1900-01-01', '1900-01-01 00:00:00',
            '1900-01-01 00:00:00+00', '\\x', '[]', 'null', '', 'xyz', 'x''y', 'n', '2 days'),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL)",
    );
    let read = |name: &str, query: &str| {
        let out = dir.path().join(format!("{name}.jsonl"));
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "pipeline: {name}\nsource:\n  sql:\n    connection: pg\n    query: {query}\n    key: [id]\nsink:\n  jsonl: {{ path: {} }}\nbatch_size: 2\n",
                out.display()
            ),
        )
        .unwrap();
        let o = run({
            let mut c = snodo(&cfg);
            c.args(["run"]).arg(&p).arg("--json");
            c
        });
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (o, lines)
    };
    let (o, rows) = read(
        "tipi",
        "SELECT id, b, i2, i4, n, f4, f8, d, ts, tz, by, j, jb, v, c, t, nm FROM tipi",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // What PostgreSQL holds, as snodo's values write it in JSON: exact numbers with their
    // scale, a float through its shortest text, timestamptz in UTC, bytea in hex, char(n)
    // padded as PostgreSQL pads it, JSON as JSON (a JSON `null` is null).
    let expected: serde_json::Value = serde_json::from_str(
        r#"[
        {"id": 1, "b": true, "i2": -2, "i4": 40000, "n": 1234.50, "f4": 0.5, "f8": 0.1,
         "d": "2024-02-29", "ts": "2024-02-29T13:45:01", "tz": "2024-02-29T11:45:01",
         "by": "00ff", "j": {"a": [1, 2]}, "jb": {"b": "x"}, "v": "città", "c": "ab ",
         "t": "testo", "nm": "nome"},
        {"id": 2, "b": false, "i2": 7, "i4": -1, "n": -0.001, "f4": -1.25,
         "f8": 100000000000000000000, "d": "1900-01-01", "ts": "1900-01-01T00:00:00",
         "tz": "1900-01-01T00:00:00", "by": "", "j": [], "jb": null, "v": "", "c": "xyz",
         "t": "x'y", "nm": "n"},
        {"id": 3, "b": null, "i2": null, "i4": null, "n": null, "f4": null, "f8": null,
         "d": null, "ts": null, "tz": null, "by": null, "j": null, "jb": null, "v": null,
         "c": null, "t": null, "nm": null}
    ]"#,
    )
    .unwrap();
    assert_eq!(serde_json::Value::Array(rows), expected);
    // The scale of a numeric survives (1234.50, not 1234.5): the comparison above keeps
    // the digits as written.

    // A type snodo cannot read: the run fails naming the column and what to do, but only
    // when a value is there (a query whose values of it are all NULL reads).
    let (o, _) = read("intervallo", "SELECT id, iv FROM tipi");
    assert_ne!(o.status.code(), Some(0));
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        said.contains("column `iv` has type INTERVAL") && said.contains("cast it to text"),
        "{said}"
    );
    let (o, rows) = read(
        "intervallo_nullo",
        "SELECT id, iv FROM tipi WHERE iv IS NULL",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(rows, vec![serde_json::json!({"id": 3, "iv": null})]);
}
