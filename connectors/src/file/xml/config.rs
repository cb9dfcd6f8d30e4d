use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use snodo_core::config::yaml::{Node, Problem};
use snodo_core::config::{Check, deepest, problem};

/// Writes an XML document laid out by a layout file and valid against the layout's XSD.
/// Every record is rendered and checked on its own first: a record that breaks the schema
/// is rejected, naming the field and the XSD rule, and the others still go out. The
/// finished document is validated again as a whole, in constant memory, before it is
/// renamed into place.
///
/// ```yaml
/// sink:
///   xml:
///     path: out/siuss/prestazioni.xml
///     layout: specs/siuss/ps-psa.yaml
///     params: { flow_name: D969.PS.20250131.0000001, ente_codice: D969 }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XmlSinkConfig {
    /// Path of the document. It appears only when the run completes and it validates.
    pub path: String,
    /// The layout file (see docs/xml.md), e.g. `specs/siuss/ps-psa.yaml`.
    pub layout: String,
    /// Values for the layout's `param:` bindings.
    #[serde(default)]
    pub params: IndexMap<String, String>,
    /// Where the file is meant to go, recorded in the flow log (default `local`).
    #[serde(default = "local")]
    pub destination: String,
    /// Who validates the finished document as a whole before it is released: libxml2
    /// (`xmllint --stream --schema`) or snodo's validator. Every record is validated by
    /// snodo as it is rendered either way.
    #[serde(default)]
    pub xmllint: Xmllint,
}

/// Whether libxml2's `xmllint`, a second and independent XSD implementation, validates the
/// finished document as a whole; when it does not, snodo's validator does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Xmllint {
    /// When `xmllint` is installed (the flow log records whether it ran).
    #[default]
    Auto,
    /// Always; a missing `xmllint` fails the run (install `libxml2-utils`).
    Required,
    /// Never: snodo's validator checks the whole document too.
    Off,
}

/// Reads an XML document laid out by a layout file: one record per record element (or
/// per repeated child of a grouped one), with the group's and the header's values copied
/// into each. The document is validated against the layout's XSD while it is read: a
/// record with a violation is rejected with its line; a violation outside any record
/// fails the run.
///
/// ```yaml
/// source:
///   xml: { path: in/flusso.xml, layout: specs/siuss/ps-psa.yaml }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XmlSourceConfig {
    /// Path of the document.
    pub path: String,
    /// The layout file.
    pub layout: String,
}

fn local() -> String {
    "local".into()
}

fn check_layout(node: &Node, path: &str, kind: &str, layout: &str, out: &mut Vec<Problem>) {
    if let Err(e) = super::layout::Layout::load(std::path::Path::new(layout)) {
        out.push(problem(
            deepest(node, &[kind, "layout"]),
            &format!("{path}.{kind}.layout"),
            e.to_string(),
        ));
    }
}

impl Check for XmlSinkConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        check_layout(node, path, "xml", &self.layout, out);
    }
}

impl Check for XmlSourceConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        crate::file::check_input_file(node, path, "xml", &self.path, out);
        check_layout(node, path, "xml", &self.layout, out);
    }
}
