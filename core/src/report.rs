//! The pre-submission report ("rapporto di controllo pre-invio"): after a run, in Italian,
//! what would be refused and why, record by record, in the manner of the error reports
//! INPS sends back — but before anything is sent. Written from the run's rejects in the
//! flow log, page by page, so a run with many rejects does not need them all in memory
//! (only their positions, to list a re-read batch once).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::component::Artifact;
use crate::error::{Error, Result};
use crate::flowlog::FlowLog;
use crate::runtime::RunSummary;

/// A report written after every run of the pipeline, dry runs included.
///
/// ```yaml
/// report:
///   path: out/siuss/controllo-ps.txt
///   title: Flusso PS/PSA-SINA verso INPS SIUSS
///   show: [codice_fiscale, protocollo_domanda]
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Where the report goes; `{run_id}` is replaced by the run's id. Replaced at every run.
    pub path: String,
    /// A title under the heading (the flow's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Fields of the rejected records shown to identify them (masked as in the flow log:
    /// `RSS***********X`).
    #[serde(default)]
    pub show: Vec<String>,
}

/// The Italian description of a reject's reason code.
pub fn descrizione(code: &str) -> &'static str {
    let head = code.split('.').next().unwrap_or(code);
    match code {
        "xsd.required" => "attributo obbligatorio mancante",
        "xsd.pattern" => "valore non conforme al formato richiesto dallo schema",
        "xsd.enumeration" => "valore non previsto dalla codifica dello schema",
        "xsd.length" => "lunghezza del valore non ammessa dallo schema",
        "xsd.type" => "valore non valido per il tipo di dato (data o numero)",
        "xsd.range" => "valore fuori dall'intervallo ammesso",
        "xsd.structure" => "struttura del record non conforme allo schema",
        "xsd.unknown_attribute" => "attributo non previsto dallo schema",
        "xml.syntax" => "carattere o sintassi non ammessi in un documento XML",
        "siuss.key" => "identificativo della prestazione mancante",
        "siuss.cancellation" => "impossibile comporre l'annullamento della versione già inviata",
        "inps.da_correggere" => "scartato da INPS in un invio precedente: da correggere",
        "invalid_date" => "data non valida",
        "invalid_decimal" => "importo o numero non valido",
        "invalid_int" => "numero intero non valido",
        "malformed_row" => "riga malformata",
        "oversized_field" => "campo troppo lungo",
        "encoding" => "carattere non rappresentabile nella codifica del file",
        _ => match head {
            "codice_fiscale" => "codice fiscale non valido (struttura o carattere di controllo)",
            "partita_iva" => "partita IVA non valida",
            "iban" => "IBAN non valido",
            "belfiore_at" => "codice catastale del comune non valido alla data indicata",
            "required" => "dato obbligatorio mancante",
            "lookup" => "codice non presente nella tabella di decodifica",
            "pattern" | "one_of" | "code_list" => "valore non ammesso",
            "length" => "lunghezza non ammessa",
            "type" => "tipo di dato non corretto",
            "min" | "max" | "not_before" => "valore fuori dall'intervallo ammesso",
            "map" => "dato non convertibile",
            "xsd" => "valore non conforme allo schema",
            _ => "dato non valido",
        },
    }
}

fn it_number(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(c);
    }
    out
}

/// Writes the report of `summary` and returns it as an artifact for the flow log.
pub async fn write(
    cfg: &ReportConfig,
    summary: &RunSummary,
    pipeline_file: &str,
    log: &FlowLog,
) -> Result<Artifact> {
    let path = PathBuf::from(cfg.path.replace("{run_id}", &summary.run_id));
    let mut details = String::new();
    let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut n = 0u64;
    log.for_each_reject(&summary.run_id, |r| {
        if !seen.insert((r.step.clone(), r.position.record)) {
            return;
        }
        n += 1;
        *by_code.entry(r.code.clone()).or_default() += 1;
        let mut origin = format!("record {}", r.position.record);
        if let Some(l) = r.position.line {
            let _ = write!(origin, ", riga {l}");
        }
        if let Some(k) = &r.position.key {
            let _ = write!(origin, ", chiave {k}");
        }
        let _ = writeln!(details, "N. {n} — {origin} (fase {})", r.step);
        let shown: Vec<String> = cfg
            .show
            .iter()
            .filter_map(|f| {
                r.payload.get(f).filter(|v| !v.is_null()).map(|v| {
                    format!(
                        "{f}: {}",
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    )
                })
            })
            .collect();
        if !shown.is_empty() {
            let _ = writeln!(details, "    {}", shown.join("   "));
        }
        let _ = writeln!(details, "    Errore {}: {}", r.code, descrizione(&r.code));
        let _ = writeln!(details, "    Dettaglio: {}", r.reason);
        details.push('\n');
    })
    .await?;

    let mut out = String::new();
    out.push_str("RAPPORTO DI CONTROLLO PRE-INVIO\n");
    if let Some(t) = &cfg.title {
        out.push_str(t);
        out.push('\n');
    }
    out.push('\n');
    let when = chrono::Local::now().format("%d/%m/%Y %H:%M");
    let _ = writeln!(out, "Pipeline:     {} ({pipeline_file})", summary.pipeline);
    let _ = writeln!(
        out,
        "Esecuzione:   {} del {when}{}",
        summary.run_id,
        if summary.dry_run {
            " — PROVA: nessun dato è stato inviato"
        } else {
            ""
        }
    );
    let esito = match summary.status.as_str() {
        "succeeded" if n == 0 => "CONFORME: nessuno scarto".to_string(),
        "succeeded" => format!(
            "CONFORME CON SCARTI: {} record scartati, gli altri sono nel flusso",
            it_number(n)
        ),
        "rejects_over_limit" => format!(
            "NON CONFORME: {} scarti, oltre il limite della pipeline{}",
            it_number(n),
            if summary.dry_run {
                ""
            } else {
                "; i record validi sono stati comunque elaborati"
            }
        ),
        "limited" => {
            "PARZIALE: interrotta con --limit, la prossima esecuzione continua".to_string()
        }
        "interrupted" => {
            "INTERROTTA: la prossima esecuzione riprende dal punto raggiunto".to_string()
        }
        _ => format!(
            "NON COMPLETATA: {}",
            summary.error.as_deref().unwrap_or("errore")
        ),
    };
    let _ = writeln!(out, "Esito:        {esito}");
    let sink = summary.sink_checks.filtered;
    let _ = writeln!(
        out,
        "Record:       letti {}, inviati {}, scartati {}, non reinviati perché invariati {}",
        it_number(summary.read),
        it_number(summary.written),
        it_number(n),
        it_number(sink)
    );
    for a in &summary.artifacts {
        let _ = writeln!(
            out,
            "Prodotto:     {} ({} record, SHA-256 {}){}",
            a.path,
            it_number(a.rows),
            a.sha256,
            if a.checks.is_empty() {
                String::new()
            } else {
                format!(", controlli superati: {}", a.checks.join(", "))
            }
        );
    }
    if !by_code.is_empty() {
        out.push_str("\nRIEPILOGO DEGLI SCARTI PER MOTIVO\n");
        for (code, k) in &by_code {
            let _ = writeln!(
                out,
                "  {code:<34} {:>8}  {}",
                it_number(*k),
                descrizione(code)
            );
        }
        out.push_str("\nDETTAGLIO DEGLI SCARTI\n\n");
        out.push_str(&details);
    }
    out.push_str(
        "I dati personali sono mascherati. Dettagli: snodo runs show ID; elenco: snodo rejects ID.\n",
    );
    write_atomic(&path, out.as_bytes())?;
    Ok(Artifact {
        path: path.display().to_string(),
        size: out.len() as u64,
        sha256: hex::encode(Sha256::digest(out.as_bytes())),
        rows: n,
        destination: "operatori (rapporto di controllo)".into(),
        checks: Vec::new(),
    })
}

fn write_atomic(path: &Path, body: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(body)
        .map_err(|e| Error::io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming", &tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_code_has_an_italian_description() {
        assert_eq!(
            descrizione("codice_fiscale.codice_fiscale"),
            "codice fiscale non valido (struttura o carattere di controllo)"
        );
        assert_eq!(
            descrizione("required.cognome"),
            "dato obbligatorio mancante"
        );
        assert_eq!(
            descrizione("lookup.cittadinanza"),
            "codice non presente nella tabella di decodifica"
        );
        assert!(descrizione("xsd.pattern").contains("formato"));
        assert_eq!(it_number(1234567), "1.234.567");
        assert_eq!(it_number(12), "12");
    }
}
