//! The phases after the loads, each one set-based SQL that the store runs in one
//! transaction: de-duplication of persons, resolution of legacy references, PIA
//! recomputation, duplicate interventions.
//!
//! Every phase is idempotent (it recomputes its results from the loaded rows), so a
//! phase interrupted by a crash is simply run again. The SQL is written once for both
//! dialects; the two places where they differ (number formatting) are functions here.

use snodo_core::db::Db;
use snodo_core::error::{Error, Result};
use snodo_store::REFERENCES;

/// A post-load phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Persons of all systems merged into `persona`; doubtful cases to `persona_revisione`.
    Dedup,
    /// Legacy keys resolved to canonical ids.
    Resolve,
    /// PIA scores recomputed from item scores and weights.
    Pia,
    /// Repeated interventions marked with `duplicato_di`.
    Duplicates,
}

impl Phase {
    /// All phases, in the order they run.
    pub const ALL: [Phase; 4] = [Phase::Dedup, Phase::Resolve, Phase::Pia, Phase::Duplicates];

    /// The phase's name in the ledger, the flow log and the report.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Dedup => "dedup",
            Phase::Resolve => "resolve",
            Phase::Pia => "pia",
            Phase::Duplicates => "duplicates",
        }
    }

    /// What the phase does, for `migrate plan`.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Dedup => {
                "merge persons across systems: same valid codice fiscale, or no codice fiscale and the same normalised surname, name, birth date and birthplace; doubtful cases listed for review"
            }
            Phase::Resolve => {
                "resolve legacy references (person, case, operator, item…) to canonical ids"
            }
            Phase::Pia => {
                "recompute PIA dimension and total scores from current item scores and weights"
            }
            Phase::Duplicates => {
                "mark interventions repeated under a new legacy id (same case, person, service, start, amount)"
            }
        }
    }

    /// The statements of the phase for tenant `ente`, stamping `run_id`.
    pub fn statements(self, db: &Db, ente: &str, run_id: &str) -> Vec<String> {
        let e = lit(ente);
        let run = lit(run_id);
        // Fresh statistics first: right after a bulk load the planner would otherwise
        // take a table of a million rows for an empty one and pick nested loops.
        let mut statements = vec!["ANALYZE".to_string()];
        statements.extend(match self {
            Phase::Dedup => dedup(&e, &run),
            Phase::Resolve => resolve(&e),
            Phase::Pia => pia(db.dialect(), &e, &run),
            Phase::Duplicates => duplicates(&e),
        });
        statements
    }
}

/// A SQL string literal. Phases inline the tenant code and run id (both validated or
/// generated, never user free text) so that one statement text serves both dialects.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn dedup(e: &str, run: &str) -> Vec<String> {
    let same =
        "o.ente = persona_fonte.ente AND o.chiave_anagrafica = persona_fonte.chiave_anagrafica";
    vec![
        format!("UPDATE persona_fonte SET chiave_persona = NULL, persona_id = NULL WHERE ente = {e}"),
        // 1. A valid codice fiscale is the person.
        format!(
            "UPDATE persona_fonte SET chiave_persona = 'CF:' || codice_fiscale
             WHERE ente = {e} AND cf_valido = TRUE"
        ),
        // 2. No codice fiscale: the person whose registry data is the same, if exactly
        //    one codice fiscale carries that data.
        format!(
            "UPDATE persona_fonte SET chiave_persona = (
                SELECT CASE WHEN COUNT(DISTINCT o.codice_fiscale) = 1 THEN 'CF:' || MIN(o.codice_fiscale) END
                FROM persona_fonte o WHERE {same} AND o.cf_valido = TRUE)
             WHERE ente = {e} AND codice_fiscale IS NULL AND chiave_anagrafica IS NOT NULL"
        ),
        // 3. No codice fiscale anywhere for that data: the registry data is the person.
        format!(
            "UPDATE persona_fonte SET chiave_persona = 'AN:' || chiave_anagrafica
             WHERE ente = {e} AND chiave_persona IS NULL AND codice_fiscale IS NULL
               AND chiave_anagrafica IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM persona_fonte o WHERE {same} AND o.codice_fiscale IS NOT NULL)"
        ),
        // 4. Anything else (invalid codice fiscale, ambiguous match) stands alone.
        format!(
            "UPDATE persona_fonte SET chiave_persona = 'SRC:' || source_system || ':' || source_key
             WHERE ente = {e} AND chiave_persona IS NULL"
        ),
        // The merged persons: the best source row (valid codice fiscale first, then the
        // most recent change) gives the attributes.
        format!(
            "INSERT INTO persona (ente, chiave, source_system, source_key, loaded_by_run, codice_fiscale,
                 cognome, nome, sesso, data_nascita, comune_nascita, cittadinanza, comune_residenza,
                 residente, data_decesso, valid_from, fonti)
             SELECT ente, chiave_persona, 'SNODO', chiave_persona, {run},
                 CASE WHEN cf_valido = TRUE THEN codice_fiscale END,
                 cognome, nome, sesso, data_nascita, comune_nascita, cittadinanza, comune_residenza,
                 residente, data_decesso, valid_from, n
             FROM (SELECT f.*,
                     ROW_NUMBER() OVER (PARTITION BY chiave_persona
                         ORDER BY CASE WHEN cf_valido = TRUE THEN 0 ELSE 1 END, valid_from DESC NULLS LAST,
                                  source_system, source_key) AS rn,
                     COUNT(*) OVER (PARTITION BY chiave_persona) AS n
                   FROM persona_fonte f WHERE ente = {e}) best
             WHERE rn = 1
             ON CONFLICT (ente, chiave) DO UPDATE SET
                 codice_fiscale = excluded.codice_fiscale, cognome = excluded.cognome,
                 nome = excluded.nome, sesso = excluded.sesso, data_nascita = excluded.data_nascita,
                 comune_nascita = excluded.comune_nascita, cittadinanza = excluded.cittadinanza,
                 comune_residenza = excluded.comune_residenza, residente = excluded.residente,
                 data_decesso = excluded.data_decesso, valid_from = excluded.valid_from,
                 fonti = excluded.fonti, loaded_by_run = excluded.loaded_by_run"
        ),
        format!(
            "DELETE FROM persona WHERE ente = {e} AND NOT EXISTS (
                SELECT 1 FROM persona_fonte f WHERE f.ente = persona.ente AND f.chiave_persona = persona.chiave)"
        ),
        format!(
            "UPDATE persona_fonte SET persona_id = p.id FROM persona p
             WHERE persona_fonte.ente = {e} AND p.ente = persona_fonte.ente
               AND p.chiave = persona_fonte.chiave_persona"
        ),
        // Review list: decisions already taken (stato other than `aperta`) are kept.
        format!("DELETE FROM persona_revisione WHERE ente = {e} AND stato = 'aperta'"),
        review(
            e,
            run,
            "cf_non_valido",
            "codice fiscale non valido; cognome, nome, data e luogo di nascita uguali a un'altra scheda",
            "a.codice_fiscale IS NOT NULL AND (a.cf_valido IS NULL OR a.cf_valido <> TRUE)
             AND b.chiave_anagrafica = a.chiave_anagrafica",
        ),
        review(
            e,
            run,
            "cf_diversi_stessi_dati",
            "codici fiscali validi e diversi con cognome, nome, data e luogo di nascita uguali (omonimi o omocodia)",
            "a.cf_valido = TRUE AND b.cf_valido = TRUE AND a.codice_fiscale < b.codice_fiscale
             AND b.chiave_anagrafica = a.chiave_anagrafica",
        ),
        review(
            e,
            run,
            "abbinamento_ambiguo",
            "scheda senza codice fiscale i cui dati corrispondono a più codici fiscali",
            "a.codice_fiscale IS NULL AND a.chiave_persona LIKE 'SRC:%' AND b.cf_valido = TRUE
             AND b.chiave_anagrafica = a.chiave_anagrafica",
        ),
        review(
            e,
            run,
            "nome_diverso",
            "cognome, data e luogo di nascita uguali, nome diverso, almeno una scheda senza codice fiscale valido",
            "b.cognome_norm = a.cognome_norm AND b.data_nascita = a.data_nascita
             AND b.comune_nascita = a.comune_nascita AND a.nome_norm < b.nome_norm
             AND (a.cf_valido IS NULL OR a.cf_valido <> TRUE OR b.cf_valido IS NULL OR b.cf_valido <> TRUE)",
        ),
    ]
}

/// Inserts review pairs `(a, b)` of `persona_fonte` rows matching `cond`, each pair once.
fn review(e: &str, run: &str, kind: &str, evidence: &str, cond: &str) -> String {
    format!(
        "INSERT INTO persona_revisione (ente, source_system, source_key, loaded_by_run, tipo, fonte_a, fonte_b, evidenza, stato)
         SELECT DISTINCT a.ente, 'SNODO', {kind} || ':' || a.source_system || ':' || a.source_key || '/' || b.source_system || ':' || b.source_key,
             {run}, {kind}, a.source_system || ':' || a.source_key, b.source_system || ':' || b.source_key, {evidence}, 'aperta'
         FROM persona_fonte a JOIN persona_fonte b
           ON b.ente = a.ente AND NOT (b.source_system = a.source_system AND b.source_key = a.source_key)
         WHERE a.ente = {e} AND a.chiave_persona <> b.chiave_persona AND {cond}
         ON CONFLICT DO NOTHING",
        kind = lit(kind),
        evidence = lit(evidence),
    )
}

fn resolve(e: &str) -> Vec<String> {
    REFERENCES
        .iter()
        .map(|r| {
            let (target, column) = if r.target == "persona" {
                ("persona_fonte", "persona_id")
            } else {
                (r.target, "id")
            };
            // A join, not a subquery per row: the store's unique index on
            // (ente, source_system, source_key) serves it in both dialects. Rows already
            // right are not rewritten, so a rerun costs a read. Loads never delete, so a
            // resolved reference cannot go stale.
            format!(
                "UPDATE {t} SET {id} = x.{column} FROM {target} x
                 WHERE {t}.ente = {e} AND x.ente = {t}.ente AND x.source_system = {t}.source_system
                   AND x.source_key = {t}.{key}
                   AND ({t}.{id} IS NULL OR {t}.{id} <> x.{column})",
                t = r.table,
                id = r.id_column,
                key = r.key_column,
            )
        })
        .collect()
}

/// An item's score and its weight in hundredths, as integers.
const SCORE: &str = "CAST(r.valore AS BIGINT)";
const WEIGHT: &str = "CAST(ROUND(vo.peso_pia * 100) AS BIGINT)";

/// Current answers to weighted PIA items (joined as `r` and `vo`).
const PIA_ITEMS: &str = "r.valid_to IS NULL AND vo.tipo_valore = 'PIA'
    AND r.valore IN ('1', '2', '3', '4', '5') AND vo.peso_pia IS NOT NULL";

/// The weighted mean of the scores in hundredths, rounded half up:
/// `round(sum(score·weight) / sum(weight), 2)` computed on integers so that both dialects
/// give exactly the same result without floating point.
fn pia_mean() -> String {
    format!(
        "CASE WHEN SUM({WEIGHT}) > 0 THEN
            (200 * CAST(SUM({SCORE} * {WEIGHT}) AS BIGINT) + CAST(SUM({WEIGHT}) AS BIGINT))
            / (2 * CAST(SUM({WEIGHT}) AS BIGINT)) END"
    )
}

/// Hundredths (an integer expression) as a two-decimal number in `dialect`.
fn hundredths(dialect: &str, x: &str) -> String {
    if dialect == "postgres" {
        format!("ROUND(CAST({x} AS NUMERIC) / 100, 2)")
    } else {
        // The store keeps decimals as text in SQLite (its NUMERIC would be a float).
        format!("CASE WHEN ({x}) IS NOT NULL THEN printf('%d.%02d', ({x}) / 100, ({x}) % 100) END")
    }
}

fn pia(dialect: &str, e: &str, run: &str) -> Vec<String> {
    let value = hundredths(dialect, &pia_mean());
    vec![
        format!("DELETE FROM valutazione_pia WHERE ente = {e}"),
        format!(
            "INSERT INTO valutazione_pia (ente, source_system, source_key, loaded_by_run, valutazione_id, dimensione, punteggio)
             SELECT v.ente, v.source_system, v.source_key || '|' || vo.dimensione_pia, {run}, v.id, vo.dimensione_pia, {value}
             FROM valutazione v
             JOIN valutazione_risposta r ON r.valutazione_id = v.id
             JOIN valutazione_voce vo ON vo.id = r.voce_id
             WHERE v.ente = {e} AND vo.dimensione_pia IS NOT NULL AND {PIA_ITEMS}
             GROUP BY v.id, v.ente, v.source_system, v.source_key, vo.dimensione_pia"
        ),
        format!(
            "UPDATE valutazione SET pia_totale = NULL
             WHERE ente = {e} AND pia_totale IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM valutazione_risposta r JOIN valutazione_voce vo ON vo.id = r.voce_id
                WHERE r.valutazione_id = valutazione.id AND {PIA_ITEMS})"
        ),
        format!(
            "UPDATE valutazione SET pia_totale = m.value
             FROM (SELECT r.valutazione_id AS vid, {value} AS value
                   FROM valutazione_risposta r JOIN valutazione_voce vo ON vo.id = r.voce_id
                   WHERE r.ente = {e} AND {PIA_ITEMS}
                   GROUP BY r.valutazione_id) m
             WHERE valutazione.id = m.vid"
        ),
    ]
}

fn duplicates(e: &str) -> Vec<String> {
    // The first row (lowest id, i.e. first loaded in legacy key order) of each group of
    // identical interventions is the original; the others point to it.
    let same = "ente, source_system, persona_source_key, presa_in_carico_source_key,
                catalogo_source_key, data_inizio, importo";
    vec![
        format!(
            "UPDATE intervento SET duplicato_di = NULL WHERE ente = {e} AND duplicato_di IS NOT NULL"
        ),
        format!(
            "UPDATE intervento SET duplicato_di = d.first_id
             FROM (SELECT id, MIN(id) OVER (PARTITION BY {same}) AS first_id
                   FROM intervento WHERE ente = {e}) d
             WHERE intervento.id = d.id AND d.first_id < d.id"
        ),
    ]
}

/// Test hook: with `SNODO_FAILPOINT=<name>` the process aborts at that point, as a power
/// cut or `kill -9` would. The crash tests use it to stop a migration inside each
/// set-based phase (after its statements ran, before its commit), which random kills
/// rarely hit because those phases are short.
pub fn failpoint(name: &str) {
    if std::env::var("SNODO_FAILPOINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// Runs `statements` in one transaction; `name` is the failpoint before the commit.
pub async fn execute(db: &Db, what: &str, statements: &[String]) -> Result<u64> {
    execute_named(db, what, "", statements).await
}

/// [`execute`] with a failpoint name.
pub async fn execute_named(db: &Db, what: &str, name: &str, statements: &[String]) -> Result<u64> {
    let mut rows = 0;
    macro_rules! go {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await.map_err(|e| Error::db(what, e))?;
            for s in statements {
                let r = sqlx::query(sqlx::AssertSqlSafe(s.clone()))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(&format!("{what}: {}", first_line(s)), e))?;
                rows += r.rows_affected();
            }
            failpoint(name);
            tx.commit().await.map_err(|e| Error::db(what, e))?;
        }};
    }
    match db {
        Db::Sqlite(p) => go!(p),
        Db::Postgres(p) => go!(p),
    }
    Ok(rows)
}

fn first_line(s: &str) -> String {
    s.split_whitespace().take(8).collect::<Vec<_>>().join(" ")
}
