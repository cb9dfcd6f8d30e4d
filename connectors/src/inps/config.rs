use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use snodo_core::config::yaml::{Node, Problem};
use snodo_core::config::{Check, deepest, problem};

use crate::file::xml::Xmllint;

/// Delivers a SIUSS flow to INPS (PS/PSA with SINA, or SINBA), exactly once per version of
/// each record. Every record is rendered through the flow's layout and checked against the
/// official XSD (violations are rejects naming the record, the field and the rule); then
/// a ledger in the canonical store decides what goes out: a new record is inserted
/// (`TipoOperazione` I), an unchanged one is skipped, a changed one is corrected
/// (cancellation C of the version INPS has, then the new one) and a withdrawn one is
/// cancelled. Flows are named `EEEE.PS.AAAAMMGG.NNNNNNN` and numbered without gaps.
///
/// ```yaml
/// sink:
///   siuss:
///     connection: store
///     flow: ps
///     layout: specs/siuss/ps-psa.yaml
///     channel: file            # one XML with every beneficiary, for the web upload
///     dir: out/siuss
///     key: [intervento_id]
///     ente: { codice: D969, denominazione: Comune di Genova, indirizzo: D969, cf_operatore: "${env:SNODO_SIUSS_CF_OPERATORE}" }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SiussSinkConfig {
    /// The canonical store's connection: it holds the ledgers (`snodo store migrate`).
    pub connection: String,
    /// Which flow: `ps` (PS/PSA with SINA) or `sinba`.
    pub flow: SiussFlow,
    /// The flow's layout (`specs/siuss/ps-psa.yaml`, `specs/siuss/sinba.yaml`).
    pub layout: String,
    /// `file`: one document with every beneficiary, published in `dir` for the upload
    /// on the INPS portal. `waas`: one document per beneficiary and prestazione, queued in
    /// the store for INPS to pull through the WaaS e-service (`snodo serve`).
    #[serde(default)]
    pub channel: Channel,
    /// Directory of file flows; each file is named after its flow
    /// (`D969.PS.20250131.0000001.xml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The fields that identify a record across runs (a prestazione: its canonical id;
    /// SINBA: the pseudonym and the year).
    pub key: Vec<String>,
    /// The ente sending the flow.
    pub ente: EnteConfig,
    /// A boolean field: true for a withdrawn prestazione, whose cancellation is sent if
    /// INPS has it (default `annullato`).
    #[serde(default = "cancelled")]
    pub cancelled: String,
    /// The field the layout binds to `TipoOperazione`, set by the sink (default
    /// `tipo_operazione`; SINBA has none).
    #[serde(default = "operation")]
    pub operation: String,
    /// Who validates a file flow as a whole before it is released: libxml2's `xmllint`
    /// (by default when installed) or snodo's validator. Every record is validated by
    /// snodo as it is rendered either way.
    #[serde(default)]
    pub xmllint: Xmllint,
}

/// The two SIUSS flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SiussFlow {
    /// PS/PSA with the SINA block (`PS_PSA_SINA201812.xsd`).
    Ps,
    /// Minors and families (`SINBA.xsd`).
    Sinba,
}

impl SiussFlow {
    /// The type in flow names and in the ledgers: `PS`, `SINBA`.
    pub fn code(self) -> &'static str {
        match self {
            SiussFlow::Ps => "PS",
            SiussFlow::Sinba => "SINBA",
        }
    }

    /// The type in the WaaS API: `PS_PSA_SINA`, `SINBA`.
    pub fn waas(self) -> &'static str {
        match self {
            SiussFlow::Ps => "PS_PSA_SINA",
            SiussFlow::Sinba => "SINBA",
        }
    }
}

/// How a SIUSS flow is delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A file for the web upload.
    #[default]
    File,
    /// The WaaS queue.
    Waas,
}

/// The ente in the flow header (`<Ente>`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnteConfig {
    /// `Codice`: the ente's code with INPS (the Belfiore code for a comune); also the
    /// first part of flow names.
    pub codice: String,
    /// `Denominazione`.
    pub denominazione: String,
    /// `Indirizzo`: the Belfiore code of the ente's seat (4 characters).
    pub indirizzo: String,
    /// `CFOperatore`: the codice fiscale of the operator responsible for the flow, or a
    /// reference to it (`${env:SNODO_SIUSS_CF_OPERATORE}`).
    pub cf_operatore: String,
}

fn cancelled() -> String {
    "annullato".into()
}

fn operation() -> String {
    "tipo_operazione".into()
}

impl Check for SiussSinkConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        if let Err(e) = crate::file::xml::Layout::load(std::path::Path::new(&self.layout)) {
            out.push(problem(
                deepest(node, &["siuss", "layout"]),
                &format!("{path}.siuss.layout"),
                e.to_string(),
            ));
        }
        if self.channel == Channel::File && self.dir.is_none() {
            out.push(problem(
                deepest(node, &["siuss"]),
                &format!("{path}.siuss.dir"),
                "a file flow needs `dir`, where the flow files are published",
            ));
        }
        if self.key.is_empty() {
            out.push(problem(
                deepest(node, &["siuss", "key"]),
                &format!("{path}.siuss.key"),
                "`key` names the fields that identify a record across runs",
            ));
        }
        let codice = &self.ente.codice;
        if codice.is_empty() || codice.len() > 32 || codice.contains('.') {
            out.push(problem(
                deepest(node, &["siuss", "ente", "codice"]),
                &format!("{path}.siuss.ente.codice"),
                "the ente code has 1 to 32 characters and no `.` (it starts every flow name)",
            ));
        }
    }
}
