//! The INPS WaaS e-service "WAAS-SIUSS-Alimentazione" (`specs/siuss/waas-api-comuni.yaml`)
//! that the ente exposes and INPS calls:
//!
//! * `GET /status`: the service is up (problem+json, as the OpenAPI says);
//! * `GET /flussi?since=MS&limit=N`: the queued flows with `ts_flusso` after `since`
//!   (milliseconds), oldest first, at most `limit` (default 10, at most 100); an empty list
//!   when there is nothing new;
//! * `POST /esiti`: INPS's outcomes, stored and linked to the run and the record that
//!   produced each flow; a refused record goes back to the operators for correction.
//!
//! Authentication is a bearer token compared in constant time with the configured ones
//! (`serve.waas.tokens`). PDND voucher validation (JWT signed by PDND, audience and
//! purpose) is not done here yet: put the service behind the gateway that validates them.
//! Every response with flows and every outcome received is recorded in the flow log.

// Handlers refuse a request by returning the finished HTTP response; it is large, but it is
// built once per refused request and returned straight to axum, so boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use snodo_core::db::Db;
use snodo_core::error::{Error, Result};
use snodo_core::flowlog::{Entry, FlowLog, Lineage, Receipt, RunFinished, RunStarted};
use snodo_core::secret::Secret;
use sqlx::Row;

use super::ledger::both;

/// What the e-service needs.
pub struct Waas {
    /// The store holding the queue.
    pub db: Db,
    /// The connection's name, for descriptions.
    pub connection: String,
    /// `codice_ente`.
    pub ente: String,
    /// `denominazione_ente`.
    pub denominazione: String,
    /// Accepted bearer tokens.
    pub tokens: Vec<Secret>,
    /// The flow log.
    pub log: Arc<FlowLog>,
}

fn problem(status: StatusCode, title: &str, detail: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// Constant-time comparison: how long a wrong token takes to refuse says nothing about
/// how much of it was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(w: &Waas, headers: &HeaderMap) -> std::result::Result<(), Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        w.tokens.iter().fold(false, |acc, t| {
            acc | same(g.as_bytes(), t.expose().as_bytes())
        })
    });
    if ok {
        return Ok(());
    }
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "a valid bearer token is required (Authorization: Bearer …)",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(r)
}

fn internal(e: Error) -> Response {
    tracing::error!(error = %e, "WaaS request failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        "the request could not be served; the ente's operators have the details in the log",
    )
}

/// The e-service's routes under `prefix`.
pub fn router(w: Arc<Waas>, prefix: &str) -> Router {
    let p = prefix.trim_end_matches('/');
    Router::new()
        .route(&format!("{p}/status"), get(status))
        .route(&format!("{p}/flussi"), get(flussi))
        .route(&format!("{p}/esiti"), post(esiti))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "Not Found",
                "this e-service has /status, /flussi and /esiti",
            )
        })
        .with_state(w)
}

async fn status(State(w): State<Arc<Waas>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&w, &headers) {
        return r;
    }
    let alive = both!(&w.db, p => sqlx::query("SELECT 1").execute(p).await.is_ok());
    if alive {
        problem(StatusCode::OK, "OK", "the service is running")
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "the store holding the flows cannot be reached",
        )
    }
}

/// `since` and `limit` as the OpenAPI defines them; a 400 problem names the parameter.
fn parse_query(q: Option<&str>) -> std::result::Result<(i64, i64), Response> {
    let bad = |d: String| problem(StatusCode::BAD_REQUEST, "Bad Request", d);
    let mut since = None;
    let mut limit = None;
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let int = |name: &str| -> std::result::Result<i64, Response> {
            if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!(
                    "`{name}` must be a non-negative integer, not `{v}`"
                )));
            }
            v.parse::<i64>()
                .map_err(|_| bad(format!("`{name}` is out of range")))
        };
        match k {
            "since" => since = Some(int("since")?),
            "limit" => limit = Some(int("limit")?),
            _ => {}
        }
    }
    let since = since.ok_or_else(|| {
        bad("`since` is required: the ts_flusso (milliseconds) of the last flow acquired, 0 the first time".into())
    })?;
    let limit = limit.unwrap_or(10);
    if limit > 100 {
        return Err(bad(format!("`limit` is at most 100, not {limit}")));
    }
    Ok((since, limit))
}

fn millis_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

async fn flussi(State(w): State<Arc<Waas>>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = authorize(&w, &headers) {
        return r;
    }
    let (since, limit) = match parse_query(q.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let rows: Vec<(String, String, i64, String)> = match both!(&w.db, p => sqlx::query(
        "SELECT id_flusso, tipo, ts_flusso, xml FROM siuss_flusso
         WHERE ente = $1 AND canale = 'waas' AND ts_flusso > $2 ORDER BY ts_flusso LIMIT $3",
    )
    .bind(&w.ente)
    .bind(since)
    .bind(limit)
    .fetch_all(p)
    .await
    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect()))
    {
        Ok(r) => r,
        Err(e) => return internal(Error::db("reading the WaaS queue", e)),
    };
    let elenco: Vec<serde_json::Value> = rows
        .iter()
        .map(|(id, tipo, ts, xml)| {
            serde_json::json!({
                "codice_ente": w.ente,
                "denominazione_ente": w.denominazione,
                "id_flusso": id,
                "tipo": if tipo == "SINBA" { "SINBA" } else { "PS_PSA_SINA" },
                "ts_flusso": millis_to_rfc3339(*ts),
                "flusso": data_encoding::BASE64.encode(xml.as_bytes()),
            })
        })
        .collect();
    if !rows.is_empty() {
        let pairs = rows
            .iter()
            .map(|(id, ..)| (id.clone(), "INPS".to_string()))
            .collect();
        if let Err(e) = log_request(
            &w,
            "waas.flussi",
            &format!(
                "siuss_flusso on `{}` (since {since}, limit {limit})",
                w.connection
            ),
            "INPS WaaS GET /flussi",
            vec![Entry::Lineage(Lineage {
                source: format!("siuss_flusso on `{}`", w.connection),
                target: "INPS WaaS GET /flussi".into(),
                pairs,
            })],
            rows.len() as u64,
        )
        .await
        {
            // Personal data may not leave without a trace: no log, no flows.
            return internal(e);
        }
    }
    let mut r = (
        StatusCode::OK,
        serde_json::json!({ "elenco_flussi": elenco }).to_string(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// One request recorded as a run of its own: what was read, what went where.
async fn log_request(
    w: &Waas,
    name: &str,
    source: &str,
    sink: &str,
    entries: Vec<Entry>,
    count: u64,
) -> Result<()> {
    let run_id = snodo_core::runtime::new_run_id();
    let now = chrono::Utc::now().to_rfc3339();
    let mut all = vec![Entry::RunStarted(RunStarted {
        pipeline: name.into(),
        file: String::new(),
        file_sha256: String::new(),
        version: snodo_core::VERSION.into(),
        trigger: "api".into(),
        dry_run: false,
        resumed_from: None,
        source: source.into(),
        sink: sink.into(),
        user: "INPS (WaaS bearer token)".into(),
        started_at: now.clone(),
    })];
    all.extend(entries);
    all.push(Entry::RunFinished(RunFinished {
        status: "succeeded".into(),
        read: count,
        written: count,
        finished_at: now,
        ..Default::default()
    }));
    w.log.append(&run_id, &all).await
}

/// A queued flow as an outcome finds it: ente, tipo, record key, operation, run.
type QueuedFlow = (String, String, Option<String>, Option<String>, String);

/// One outcome as INPS posts it.
#[derive(Debug, Deserialize)]
struct Esito {
    id_flusso: String,
    tipo: String,
    ts_flusso: String,
    ts_acquisizione: String,
    codice_esito: String,
    #[serde(default)]
    descrizione_esito: Option<String>,
    #[serde(default)]
    id_acquisizione_siuss: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ElencoEsiti {
    #[serde(default)]
    elenco_esiti: Vec<Esito>,
}

const CODICI_ESITO: [&str; 4] = [
    "OK",
    "DATI_NON_TROVATI",
    "RICHIESTA_INVALIDA",
    "ERRORE_GENERICO",
];

fn validate_esiti(body: &[u8]) -> std::result::Result<ElencoEsiti, String> {
    let e: ElencoEsiti = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not a valid ElencoEsiti: {e}"))?;
    if e.elenco_esiti.len() > 100 {
        return Err(format!(
            "elenco_esiti has {} items, at most 100",
            e.elenco_esiti.len()
        ));
    }
    for (i, x) in e.elenco_esiti.iter().enumerate() {
        if !CODICI_ESITO.contains(&x.codice_esito.as_str()) {
            return Err(format!(
                "elenco_esiti[{i}].codice_esito `{}` is not one of {}",
                x.codice_esito,
                CODICI_ESITO.join(", ")
            ));
        }
        if x.tipo != "PS_PSA_SINA" && x.tipo != "SINBA" {
            return Err(format!(
                "elenco_esiti[{i}].tipo `{}` is not PS_PSA_SINA or SINBA",
                x.tipo
            ));
        }
        for (field, v) in [
            ("ts_flusso", &x.ts_flusso),
            ("ts_acquisizione", &x.ts_acquisizione),
        ] {
            if chrono::DateTime::parse_from_rfc3339(v).is_err() {
                return Err(format!(
                    "elenco_esiti[{i}].{field} `{v}` is not a date-time (RFC 3339)"
                ));
            }
        }
        if x.id_flusso.is_empty() || x.id_flusso.len() > 64 {
            return Err(format!(
                "elenco_esiti[{i}].id_flusso must have 1 to 64 characters"
            ));
        }
    }
    Ok(e)
}

/// The ledger state after an outcome, by the flow's operation.
fn stato_after(codice: &str, op: &str) -> &'static str {
    match (codice, op) {
        ("OK", "C") | ("DATI_NON_TROVATI", "C") => "annullato",
        ("OK", _) => "accettato",
        // A refused cancellation: INPS still has the version it had.
        (_, "C") => "inviato",
        ("ERRORE_GENERICO", _) => "da_reinviare",
        _ => "scartato",
    }
}

async fn esiti(State(w): State<Arc<Waas>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&w, &headers) {
        return r;
    }
    let elenco = match validate_esiti(&body) {
        Ok(e) => e,
        Err(d) => return problem(StatusCode::BAD_REQUEST, "Bad Request", d),
    };
    let now = chrono::Utc::now().to_rfc3339();
    let mut receipts = Vec::new();
    let result: Result<()> = async {
        both!(&w.db, p => {
            let mut tx = p.begin().await.map_err(|e| Error::db("storing esiti", e))?;
            for x in &elenco.elenco_esiti {
                let flow = sqlx::query(
                    "SELECT ente, tipo, chiave, operazione, run_id FROM siuss_flusso WHERE id_flusso = $1",
                )
                .bind(&x.id_flusso)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| Error::db("storing esiti", e))?;
                let flow: Option<QueuedFlow> =
                    flow.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)));
                let inserted = sqlx::query(
                    "INSERT INTO siuss_esito (id_flusso, tipo, ts_flusso, ts_acquisizione, codice_esito, descrizione_esito, id_acquisizione_siuss, noto, ricevuto_il)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id_flusso, ts_acquisizione, codice_esito) DO NOTHING",
                )
                .bind(&x.id_flusso)
                .bind(&x.tipo)
                .bind(&x.ts_flusso)
                .bind(&x.ts_acquisizione)
                .bind(&x.codice_esito)
                .bind(&x.descrizione_esito)
                .bind(&x.id_acquisizione_siuss)
                .bind(flow.is_some())
                .bind(&now)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db("storing esiti", e))?
                .rows_affected();
                if inserted == 0 {
                    // INPS retries what it believes undelivered: the same outcome twice
                    // changes nothing.
                    continue;
                }
                match &flow {
                    Some((ente, tipo, Some(chiave), op, _)) => {
                        let stato = stato_after(&x.codice_esito, op.as_deref().unwrap_or("I"));
                        // Only the version this flow carried: an outcome for an older flow
                        // must not overwrite the state of a newer one.
                        sqlx::query(
                            "UPDATE siuss_invio SET stato = $1, esito = $2, esito_descrizione = $3, esito_il = $4
                             WHERE ente = $5 AND tipo = $6 AND chiave = $7 AND id_flusso = $8",
                        )
                        .bind(stato)
                        .bind(&x.codice_esito)
                        .bind(&x.descrizione_esito)
                        .bind(&x.ts_acquisizione)
                        .bind(ente)
                        .bind(tipo)
                        .bind(chiave)
                        .bind(&x.id_flusso)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| Error::db("storing esiti", e))?;
                    }
                    Some(_) => {}
                    None => tracing::warn!(id_flusso = %x.id_flusso, "esito for a flow this ente never queued: stored, not linked"),
                }
                receipts.push(Entry::Receipt(Receipt {
                    delivery: x.id_flusso.clone(),
                    delivered_by: flow.as_ref().map(|f| f.4.clone()),
                    record: flow.as_ref().and_then(|f| f.2.clone()),
                    outcome: x.codice_esito.clone(),
                    description: x
                        .descrizione_esito
                        .as_deref()
                        .map(snodo_core::mask::redact_text),
                    reference: x.id_acquisizione_siuss.clone(),
                    processed_at: x.ts_acquisizione.clone(),
                }));
            }
            tx.commit().await.map_err(|e| Error::db("storing esiti", e))?;
        });
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // Not 2xx: INPS sends the outcomes again later.
        return internal(e);
    }
    if !receipts.is_empty() {
        let n = receipts.len() as u64;
        if let Err(e) = log_request(
            &w,
            "waas.esiti",
            "INPS WaaS POST /esiti",
            &format!("siuss_esito on `{}`", w.connection),
            receipts,
            n,
        )
        .await
        {
            tracing::error!(error = %e, "esiti stored but not recorded in the flow log");
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Serves the e-service on `listener` until Ctrl-C (or SIGTERM's default handling stops
/// the process); requests in flight are completed first.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Error::Other(format!("the WaaS e-service stopped: {e}")))
}

/// Builds the e-service from the connections file's `serve.waas`.
pub async fn from_config(
    conns: &snodo_core::config::ConnectionsFile,
    log: Arc<FlowLog>,
) -> Result<(Arc<Waas>, String)> {
    let cfg = conns
        .serve
        .as_ref()
        .and_then(|s| s.waas.as_ref())
        .ok_or_else(|| {
            Error::Other(
                "the connections file has no `serve.waas` section: nothing to serve (see docs/siuss.md)".into(),
            )
        })?;
    if cfg.tokens.is_empty() {
        return Err(Error::Other(
            "serve.waas.tokens is empty: the e-service never runs without authentication".into(),
        ));
    }
    let tokens = cfg
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.resolve()
                .map_err(|e| Error::Other(format!("serve.waas.tokens[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let conn = conns.get(&cfg.connection).map_err(Error::Other)?;
    let db = Db::connect(conn, 4).await?;
    Ok((
        Arc::new(Waas {
            db,
            connection: cfg.connection.clone(),
            ente: cfg.ente.clone(),
            denominazione: cfg.denominazione.clone(),
            tokens,
            log,
        }),
        cfg.prefix.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_follow_the_openapi() {
        assert_eq!(parse_query(Some("since=0")).ok(), Some((0, 10)));
        assert_eq!(
            parse_query(Some("since=1490000000000&limit=100")).ok(),
            Some((1_490_000_000_000, 100))
        );
        assert_eq!(parse_query(Some("limit=0&since=5")).ok(), Some((5, 0)));
        for bad in [
            None,
            Some(""),
            Some("since=-1"),
            Some("since=abc"),
            Some("since=1&limit=101"),
            Some("since=99999999999999999999"),
        ] {
            assert!(parse_query(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn outcomes_move_the_ledger() {
        assert_eq!(stato_after("OK", "I"), "accettato");
        assert_eq!(stato_after("OK", "C"), "annullato");
        assert_eq!(stato_after("RICHIESTA_INVALIDA", "I"), "scartato");
        assert_eq!(stato_after("ERRORE_GENERICO", "I"), "da_reinviare");
        assert_eq!(stato_after("RICHIESTA_INVALIDA", "C"), "inviato");
        assert_eq!(stato_after("DATI_NON_TROVATI", "C"), "annullato");
    }
}
