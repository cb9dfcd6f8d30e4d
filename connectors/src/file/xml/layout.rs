//! Layouts: how the records of a pipeline become the elements and attributes of an XML
//! flow, and how such a flow is read back into records. One declarative file per flow in
//! `specs/` (e.g. `specs/siuss/ps-psa.yaml`), checked against the flow's XSD when it is
//! loaded, so that a binding to an attribute the schema does not have, or a required
//! attribute left without a binding, is a configuration error with its line and not a
//! surprise at INPS.
//!
//! ```yaml
//! schema: PS_PSA_SINA201812.xsd          # relative to the layout file
//! root: Flusso
//! header:                                # written once, before the records
//!   - element: IdentificazioneFlusso
//!     attributes: { Nome: { param: flow_name } }
//! record:
//!   element: Beneficiario
//!   group_by: [persona_id]               # consecutive records of one person share it
//!   attributes: { CodiceFiscale: codice_fiscale }
//!   children:
//!     - element: Anagrafica
//!       attributes: { Cognome: cognome, AnnoNascita: anno_nascita }
//!     - element: PrestazioniSociali
//!       each: record                     # one per record of the group
//!       attributes:
//!         DataDSU: { field: data_dsu, format: "%Y-%m-%d" }
//!       children:
//!         - element: SINA
//!           when: sina_mobilita          # only when the field has a value
//!           children:
//!             - element: InvaliditaCivile
//!               when: invalidita
//!               children:
//!                 - element: InvCiv
//!                   for_each: invalidita # one element per item ("1,3" or a list)
//!                   text: { item: true }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use compact_str::ToCompactString;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use snodo_core::config::yaml::{self, Node, Problem};
use snodo_core::config::{child, deepest, problem};
use snodo_core::error::{Error, Result};
use snodo_core::record::{FieldRef, Record};
use snodo_core::value::{Text, Value};

use super::xsd::{ElementDecl, Schema, TypeDef, Validator, Violation};

/// A layout file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayoutFile {
    /// The XSD every document must satisfy, relative to the layout file.
    pub schema: String,
    /// The root element: a global element of the schema.
    pub root: String,
    /// Elements written once, right after the root opens and before the records (a flow's
    /// identification). Their values are usually `param:` bindings.
    #[serde(default)]
    pub header: Vec<ElementLayout>,
    /// The element each record, or each group of consecutive records, becomes.
    pub record: RecordLayout,
}

/// The element of a record.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordLayout {
    /// Element name: a child of the root in the schema.
    pub element: String,
    /// Consecutive records with the same values of these fields share one element; its
    /// children marked `each: record` repeat once per record. Order the source by these
    /// fields. Empty (the default): one element per record.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Attribute name → binding.
    #[serde(default)]
    pub attributes: IndexMap<String, Binding>,
    /// Child elements, in schema order.
    #[serde(default)]
    pub children: Vec<ElementLayout>,
}

/// A child element.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElementLayout {
    /// Element name: a child of the enclosing element in the schema.
    pub element: String,
    /// Attribute name → binding. An attribute whose value is null is left out.
    #[serde(default)]
    pub attributes: IndexMap<String, Binding>,
    /// The element's text, for elements of a simple type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Binding>,
    /// Child elements, in schema order.
    #[serde(default)]
    pub children: Vec<ElementLayout>,
    /// Write the element only when this field has a value (not null, not empty text, not
    /// an empty list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Write the element once per item of this field: a list, or text whose items are
    /// separated by commas (`"1,3"`). Bind `text: { item: true }` to the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// In a grouped record: `group` (default) writes the element once per group, from the
    /// group's first record; `record` writes it once per record. Per-record children come
    /// after the group's own children.
    #[serde(default)]
    pub each: Each,
}

/// How often a child of a grouped record is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Each {
    /// Once per group.
    #[default]
    Group,
    /// Once per record of the group.
    Record,
}

/// Where a value comes from: a field name (`cognome`), or one of the forms below.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Binding {
    /// The value of a record field.
    Field(String),
    /// The long form.
    Spec(BindingSpec),
}

/// The long form of a binding: exactly one of `field`, `param`, `value`, `item`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingSpec {
    /// A record field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A parameter of the sink (`params:` in the pipeline, or one the sink computes, such
    /// as `flow_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// A constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The current item of a `for_each`.
    #[serde(default)]
    pub item: bool,
    /// For dates: a chrono format (`"%m/%Y"` for SINBA's `MM/YYYY`); dates are written
    /// `YYYY-MM-DD` (`xs:date`) otherwise. Text holding an ISO date is formatted too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// A resolved binding.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    /// A record field, with an optional date format.
    Field(FieldRef, Option<String>),
    /// A sink parameter.
    Param(String),
    /// A constant.
    Const(String),
    /// The `for_each` item, with an optional date format.
    Item(Option<String>),
}

impl Bind {
    /// The record field this binding reads, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Bind::Field(f, _) => Some(f.name()),
            _ => None,
        }
    }
}

/// A resolved element of a layout.
#[derive(Debug)]
pub struct Element {
    /// Name.
    pub name: String,
    /// Its declaration in the schema.
    pub decl: Arc<ElementDecl>,
    /// Attributes in layout order.
    pub attributes: Vec<(String, Bind)>,
    /// Text binding.
    pub text: Option<Bind>,
    /// Children in layout order.
    pub children: Vec<Element>,
    /// Written only when this field has a value.
    pub when: Option<FieldRef>,
    /// Repeated per item of this field.
    pub for_each: Option<FieldRef>,
    /// Repeated per record of a group.
    pub per_record: bool,
}

/// A layout checked against its schema.
#[derive(Debug)]
pub struct Layout {
    /// The layout file.
    pub file: PathBuf,
    /// The compiled schema.
    pub schema: Arc<Schema>,
    /// The schema file.
    pub schema_file: PathBuf,
    /// Root element name.
    pub root: String,
    /// Namespace of the documents (the schema's target namespace).
    pub namespace: Option<String>,
    /// Header elements.
    pub header: Vec<Element>,
    /// The record element.
    pub record: Element,
    /// Grouping fields.
    pub group_by: Vec<String>,
    /// The same, looked up in records.
    group_fields: Vec<FieldRef>,
    /// Every field the record element may write (attribute and text bindings, `for_each`):
    /// the fields checked for characters XML cannot carry.
    written: Vec<FieldRef>,
}

/// A rendered element: names and values as they will be written.
///
/// Names and values are [`Text`], inline up to 24 bytes: element and attribute names and
/// most values (codes, dates, amounts) fit, so rendering a record of ninety fields no
/// longer allocates a string for each name and each value.
#[derive(Debug, Clone, PartialEq)]
pub struct XElem {
    /// Name.
    pub name: Text,
    /// Attributes, in order.
    pub attrs: Vec<(Text, Text)>,
    /// Text content.
    pub text: Option<Text>,
    /// Children.
    pub children: Vec<XElem>,
    /// Repeated per record of a group (only meaningful for the record element's children).
    pub per_record: bool,
}

/// One record rendered and checked.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The record element with the group's children and this record's.
    pub element: XElem,
    /// The values of the `group_by` fields.
    pub group: Vec<String>,
}

/// What is wrong with a record's element, with the field it came from.
#[derive(Debug, Clone)]
pub struct RecordProblem {
    /// The schema violation.
    pub violation: Violation,
    /// The record field bound to the offending attribute or text, when there is one.
    pub field: Option<String>,
}

impl RecordProblem {
    /// The reject reason: the XSD path, the field and the rule.
    pub fn reason(&self) -> String {
        let mut s = self.violation.path.clone();
        if let Some(a) = &self.violation.attribute {
            s.push_str("/@");
            s.push_str(a);
        }
        if let Some(f) = &self.field {
            s.push_str(&format!(" (field `{f}`)"));
        }
        s.push_str(": ");
        s.push_str(&self.violation.message);
        if self.violation.xsd_line > 0 {
            s.push_str(&format!(" [XSD line {}]", self.violation.xsd_line));
        }
        s
    }
}

fn layout_problem(node: &Node, path: &str, msg: impl Into<String>) -> Problem {
    problem(node, path, msg)
}

impl Layout {
    /// Reads a layout and checks it against its schema. Every problem is reported with the
    /// layout file's line and column.
    pub fn load(path: &Path) -> Result<Arc<Layout>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let fail = |problems: Vec<Problem>| Error::Config {
            file: path.to_path_buf(),
            problems,
        };
        let root = yaml::parse(&text).map_err(|p| fail(vec![p]))?;
        let raw: LayoutFile = yaml::from_node(&root, "").map_err(fail)?;
        let schema_file = path.parent().unwrap_or(Path::new(".")).join(&raw.schema);
        let schema = match Schema::load(&schema_file) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                return Err(fail(vec![layout_problem(
                    deepest(&root, &["schema"]),
                    "schema",
                    e.to_string(),
                )]));
            }
        };
        let mut problems = Vec::new();
        let Some(root_decl) = schema.element(&raw.root).cloned() else {
            return Err(fail(vec![layout_problem(
                deepest(&root, &["root"]),
                "root",
                format!(
                    "<{}> is not a global element of `{}` (it has: {})",
                    raw.root,
                    schema_file.display(),
                    schema
                        .elements
                        .iter()
                        .map(|e| e.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )]));
        };
        let mut header = Vec::new();
        let header_node = child(&root, "header");
        for (i, h) in raw.header.iter().enumerate() {
            let node = header_node
                .and_then(|n| yaml::node_at(n, &[&i.to_string()]))
                .unwrap_or(&root);
            if let Some(e) = resolve(
                h,
                &root_decl,
                node,
                &format!("header[{i}]"),
                false,
                &mut problems,
            ) {
                header.push(e);
            }
        }
        let rec_node = child(&root, "record").unwrap_or(&root);
        let as_element = ElementLayout {
            element: raw.record.element.clone(),
            attributes: raw.record.attributes.clone(),
            text: None,
            children: raw.record.children.clone(),
            when: None,
            for_each: None,
            each: Each::Group,
        };
        let grouped = !raw.record.group_by.is_empty();
        let record = resolve(
            &as_element,
            &root_decl,
            rec_node,
            "record",
            grouped,
            &mut problems,
        );
        if grouped {
            let mut seen_per_record = false;
            for (i, c) in raw.record.children.iter().enumerate() {
                if c.each == Each::Record {
                    seen_per_record = true;
                } else if seen_per_record {
                    let n = child(rec_node, "children")
                        .and_then(|n| yaml::node_at(n, &[&i.to_string()]))
                        .unwrap_or(rec_node);
                    problems.push(layout_problem(
                        n,
                        &format!("record.children[{i}]"),
                        "a per-group child cannot follow `each: record` children: records are appended to the group's element",
                    ));
                }
            }
            if !seen_per_record {
                problems.push(layout_problem(
                    rec_node,
                    "record.group_by",
                    "a grouped record needs at least one child with `each: record`",
                ));
            }
        }
        problems.sort_by_key(|p| (p.location.line, p.location.column));
        match record {
            Some(record) if problems.is_empty() => Ok(Arc::new(Layout {
                written: written_fields(&record)
                    .into_iter()
                    .map(FieldRef::new)
                    .collect(),
                group_fields: raw.record.group_by.iter().map(FieldRef::new).collect(),
                file: path.to_path_buf(),
                namespace: schema.target_namespace.clone(),
                schema,
                schema_file,
                root: raw.root,
                header,
                record,
                group_by: raw.record.group_by,
            })),
            _ => Err(fail(if problems.is_empty() {
                vec![layout_problem(&root, "", "the layout is incomplete")]
            } else {
                problems
            })),
        }
    }

    /// Every record field the layout reads (for `when`, `for_each`, bindings, grouping).
    pub fn fields(&self) -> Vec<String> {
        fn walk(e: &Element, out: &mut Vec<String>) {
            for (_, b) in &e.attributes {
                if let Some(f) = b.field() {
                    out.push(f.to_string());
                }
            }
            if let Some(f) = e.text.as_ref().and_then(Bind::field) {
                out.push(f.to_string());
            }
            out.extend(e.when.iter().map(|f| f.name().to_string()));
            out.extend(e.for_each.iter().map(|f| f.name().to_string()));
            for c in &e.children {
                walk(c, out);
            }
        }
        let mut out = self.group_by.clone();
        walk(&self.record, &mut out);
        for h in &self.header {
            walk(h, &mut out);
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|f| seen.insert(f.clone()));
        out
    }

    /// Renders the header elements with `params` and checks them: a missing or invalid
    /// parameter is an error.
    pub fn render_header(&self, params: &IndexMap<String, String>) -> Result<Vec<XElem>> {
        let ctx = RenderCtx {
            record: None,
            params,
            item: None,
        };
        let mut out = Vec::new();
        for h in &self.header {
            render(h, &ctx, &mut out, None, "")?;
        }
        self.check_header(&out)?;
        Ok(out)
    }

    /// Renders one record and checks its element against the schema. On success the
    /// element is ready to write; otherwise every problem is returned, each with its field.
    pub fn render_record(
        &self,
        record: &Record,
        params: &IndexMap<String, String>,
    ) -> std::result::Result<Rendered, Vec<RecordProblem>> {
        let ctx = RenderCtx {
            record: Some(record),
            params,
            item: None,
        };
        // Most records pass: render them without the field places, and only when a check
        // fails render again with them, to name each problem's field.
        let mut out = Vec::new();
        if let Err(e) = render(&self.record, &ctx, &mut out, None, &self.root) {
            return Err(vec![RecordProblem {
                violation: Violation {
                    line: None,
                    path: format!("{}/{}", self.root, self.record.name),
                    attribute: None,
                    rule: super::xsd::Rule::Syntax,
                    message: e.to_string(),
                    xsd_line: 0,
                },
                field: None,
            }]);
        }
        let element = out.pop().unwrap_or_else(|| XElem {
            name: self.record.name.as_str().into(),
            attrs: Vec::new(),
            text: None,
            children: Vec::new(),
            per_record: false,
        });
        let violations = self.validate_element(&element);
        let suspect = self
            .written
            .iter()
            .any(|f| forbidden_char(f.get(record)).is_some());
        if violations.is_empty() && !suspect {
            let group = self.group_of(record);
            return Ok(Rendered { element, group });
        }
        let mut fields = FieldPlaces::new();
        // The same rendering succeeded above.
        let _ = render(
            &self.record,
            &ctx,
            &mut Vec::new(),
            Some(&mut fields),
            &self.root,
        );
        let mut problems = Vec::new();
        for v in violations {
            let field = fields
                .iter()
                .find(|(p, a, _)| *p == v.path && *a == v.attribute)
                .map(|(_, _, f)| f.clone());
            problems.push(RecordProblem {
                violation: v,
                field,
            });
        }
        for (path, attr, field) in &fields {
            if let Some(bad) = forbidden_char(record.get(field)) {
                problems.push(RecordProblem {
                    violation: Violation {
                        line: None,
                        path: path.clone(),
                        attribute: attr.clone(),
                        rule: super::xsd::Rule::Syntax,
                        message: format!(
                            "the value holds the control character U+{:04X}, which XML 1.0 cannot carry",
                            bad as u32
                        ),
                        xsd_line: 0,
                    },
                    field: Some(field.clone()),
                });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let group = self.group_of(record);
        Ok(Rendered { element, group })
    }

    /// The values of `record`'s `group_by` fields, as text.
    fn group_of(&self, record: &Record) -> Vec<String> {
        self.group_fields
            .iter()
            .map(|g| g.get(record).and_then(Value::to_text).unwrap_or_default())
            .collect()
    }

    fn validate_element(&self, e: &XElem) -> Vec<Violation> {
        let mut v = Validator::fragment(&self.schema, self.record.decl.clone(), &self.root);
        feed(&mut v, e);
        v.finish()
    }

    /// Checks the rendered header against the schema: a bad parameter is a configuration
    /// error of the sink, reported before anything is written.
    pub fn check_header(&self, header: &[XElem]) -> Result<()> {
        for h in header {
            let Some(decl) = self.header.iter().find(|d| d.name == h.name) else {
                continue;
            };
            let mut v = Validator::fragment(&self.schema, decl.decl.clone(), &self.root);
            feed(&mut v, h);
            let problems = v.finish();
            if !problems.is_empty() {
                return Err(Error::Input(format!(
                    "the flow header does not satisfy `{}`: {}; check the sink's `params`",
                    self.schema_file.display(),
                    problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
        }
        Ok(())
    }
}

/// The first character of `value`'s text that XML 1.0 cannot carry (a control character
/// other than tab and line breaks, U+FFFE, U+FFFF). Only text can hold one: numbers, dates
/// and booleans are written with digits, signs and separators, and used to be turned into
/// a string here only to be scanned (checked for every field of every record).
fn forbidden_char(value: Option<&Value>) -> Option<char> {
    fn scan(text: &str) -> Option<char> {
        // Bytes first: a control character is a byte below 0x20, and U+FFFE and U+FFFF
        // start with 0xEF in UTF-8; most text has neither.
        if !text
            .bytes()
            .any(|b| (b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r') || b == 0xEF)
        {
            return None;
        }
        text.chars().find(|&c| {
            (c < ' ' && c != '\t' && c != '\n' && c != '\r') || c == '\u{FFFE}' || c == '\u{FFFF}'
        })
    }
    match value? {
        Value::Str(s) => scan(s),
        // A list is written item by item (`for_each`): each item's own text, not the list's
        // JSON form, which escapes control characters out of sight.
        Value::List(items) => items.iter().find_map(|i| forbidden_char(Some(i))),
        v @ Value::Map(_) => v.text().and_then(|t| scan(&t)),
        _ => None,
    }
}

/// The fields `e` and its children write (see [`Layout::written`]).
fn written_fields(e: &Element) -> Vec<String> {
    fn walk(e: &Element, out: &mut Vec<String>) {
        out.extend(
            e.attributes
                .iter()
                .filter_map(|(_, b)| b.field().map(str::to_string)),
        );
        out.extend(e.text.as_ref().and_then(Bind::field).map(str::to_string));
        out.extend(e.for_each.iter().map(|f| f.name().to_string()));
        for c in &e.children {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out.sort();
    out.dedup();
    out
}

fn feed(v: &mut Validator, e: &XElem) {
    v.start(&e.name, None, &e.attrs);
    if let Some(t) = &e.text {
        v.text(t);
    }
    for c in &e.children {
        feed(v, c);
    }
    v.end();
}

struct RenderCtx<'a> {
    record: Option<&'a Record>,
    params: &'a IndexMap<String, String>,
    item: Option<&'a str>,
}

fn present(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Str(s)) => !s.trim().is_empty(),
        Some(Value::List(l)) => !l.is_empty(),
        Some(_) => true,
    }
}

/// The items of a `for_each` field: list elements, or comma-separated text.
pub fn items(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::List(l)) => l.iter().filter_map(Value::to_text).collect(),
        Some(Value::Str(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => other.to_text().into_iter().collect(),
    }
}

/// The text of a value as XML writes it.
pub fn format_value(v: &Value, format: Option<&str>) -> Option<Text> {
    Some(match (v, format) {
        (Value::Null, _) => return None,
        (Value::Date(d), Some(f)) => d.format(f).to_compact_string(),
        // `xs:date`: NaiveDate's Display is exactly `%Y-%m-%d` (sign and all) and much
        // faster than `format`, which re-parses its format string on every call.
        (Value::Date(d), None) => d.to_compact_string(),
        (Value::DateTime(d), Some(f)) => d.format(f).to_compact_string(),
        (Value::DateTime(d), None) => d.format("%Y-%m-%dT%H:%M:%S").to_compact_string(),
        (Value::Str(s), Some(f)) => {
            let head = s.get(..10).unwrap_or(s);
            match chrono::NaiveDate::parse_from_str(head, "%Y-%m-%d") {
                Ok(d) => d.format(f).to_compact_string(),
                Err(_) => s.clone(),
            }
        }
        (Value::Str(s), None) => s.clone(),
        (Value::Bool(b), _) => Text::const_new(if *b { "true" } else { "false" }),
        (Value::Int(i), _) => i.to_compact_string(),
        // What `Value::to_text` writes: the scale the amount was read with.
        (Value::Decimal(d), _) => d.to_compact_string(),
        (other, _) => other.to_text()?.into(),
    })
}

fn value_of(b: &Bind, ctx: &RenderCtx) -> Result<Option<Text>> {
    Ok(match b {
        Bind::Field(f, fmt) => ctx
            .record
            .and_then(|r| f.get(r))
            .and_then(|v| format_value(v, fmt.as_deref())),
        Bind::Param(p) => Some(
            ctx.params
                .get(p)
                .map(|v| Text::from(v.as_str()))
                .ok_or_else(|| {
                    Error::Other(format!(
                        "the layout needs the parameter `{p}`: set it in the sink's `params`"
                    ))
                })?,
        ),
        Bind::Const(c) => Some(c.as_str().into()),
        Bind::Item(fmt) => ctx
            .item
            .map(|i| format_value(&Value::Str(i.into()), fmt.as_deref()).unwrap_or_default()),
    })
}

/// Where each written field lands: (element path in the validator's convention, attribute
/// or `None` for the text, field).
type FieldPlaces = Vec<(String, Option<String>, String)>;

/// Renders `e` (and its repetitions) into `out`. `fields`, when given, collects where each
/// bound attribute and text was written, so a violation can name its field; the paths cost
/// a string per element, so a record that passes its checks is rendered without them.
fn render(
    e: &Element,
    ctx: &RenderCtx,
    out: &mut Vec<XElem>,
    mut fields: Option<&mut FieldPlaces>,
    parent_path: &str,
) -> Result<()> {
    if let Some(w) = &e.when
        && !present(ctx.record.and_then(|r| w.get(r)))
    {
        return Ok(());
    }
    let repetitions: Vec<Option<String>> = match &e.for_each {
        Some(f) => items(ctx.record.and_then(|r| f.get(r)))
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None],
    };
    for item in &repetitions {
        let ctx = RenderCtx {
            record: ctx.record,
            params: ctx.params,
            item: item.as_deref().or(ctx.item),
        };
        let path = match &fields {
            None => String::new(),
            Some(_) if parent_path.is_empty() => e.name.clone(),
            Some(_) => {
                let index = out.iter().filter(|x| x.name == e.name).count() + 1;
                format!("{parent_path}/{}[{index}]", e.name)
            }
        };
        let mut x = XElem {
            name: e.name.as_str().into(),
            attrs: Vec::with_capacity(e.attributes.len()),
            text: None,
            children: Vec::new(),
            per_record: e.per_record,
        };
        for (name, b) in &e.attributes {
            if let Some(v) = value_of(b, &ctx)? {
                x.attrs.push((name.as_str().into(), v));
            }
            if let (Some(fields), Some(f)) = (fields.as_deref_mut(), b.field()) {
                fields.push((path.clone(), Some(name.clone()), f.to_string()));
            }
        }
        if let Some(t) = &e.text {
            x.text = value_of(t, &ctx)?;
            if let Some(fields) = fields.as_deref_mut() {
                let f = t
                    .field()
                    .or_else(|| e.for_each.as_ref().map(FieldRef::name))
                    .map(str::to_string);
                if let Some(f) = f {
                    fields.push((path.clone(), None, f));
                }
            }
        }
        for c in &e.children {
            render(c, &ctx, &mut x.children, fields.as_deref_mut(), &path)?;
        }
        out.push(x);
    }
    Ok(())
}

fn resolve_binding(
    b: &Binding,
    node: &Node,
    path: &str,
    in_for_each: bool,
    problems: &mut Vec<Problem>,
) -> Option<Bind> {
    match b {
        Binding::Field(f) if f.trim().is_empty() => {
            problems.push(layout_problem(node, path, "an empty field name"));
            None
        }
        Binding::Field(f) => Some(Bind::Field(FieldRef::new(f), None)),
        Binding::Spec(s) => {
            let given = [
                s.field.is_some(),
                s.param.is_some(),
                s.value.is_some(),
                s.item,
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if given != 1 {
                problems.push(layout_problem(
                    node,
                    path,
                    "a binding has exactly one of `field`, `param`, `value`, `item`",
                ));
                return None;
            }
            if let Some(fmt) = &s.format {
                let probe = chrono::NaiveDate::from_ymd_opt(2000, 1, 2)
                    .map(|d| {
                        use std::fmt::Write;
                        let mut out = String::new();
                        write!(out, "{}", d.format(fmt)).is_ok()
                    })
                    .unwrap_or(false);
                if !probe {
                    problems.push(layout_problem(
                        deepest(node, &["format"]),
                        &format!("{path}.format"),
                        format!("`{fmt}` is not a valid date format"),
                    ));
                }
            }
            if s.item && !in_for_each {
                problems.push(layout_problem(
                    node,
                    path,
                    "`item` is only meaningful inside an element with `for_each`",
                ));
            }
            Some(if let Some(f) = &s.field {
                Bind::Field(FieldRef::new(f), s.format.clone())
            } else if let Some(p) = &s.param {
                Bind::Param(p.clone())
            } else if let Some(v) = &s.value {
                Bind::Const(v.clone())
            } else {
                Bind::Item(s.format.clone())
            })
        }
    }
}

fn resolve(
    e: &ElementLayout,
    parent: &Arc<ElementDecl>,
    node: &Node,
    path: &str,
    grouped: bool,
    problems: &mut Vec<Problem>,
) -> Option<Element> {
    let TypeDef::Complex(parent_ct) = &parent.ty else {
        problems.push(layout_problem(
            deepest(node, &["element"]),
            &format!("{path}.element"),
            format!(
                "<{}> holds only text: it has no child elements",
                parent.name
            ),
        ));
        return None;
    };
    let Some(decl) = parent_ct.child(&e.element).cloned() else {
        let mut names = Vec::new();
        fn collect(ps: &[super::xsd::Particle], out: &mut Vec<String>) {
            for p in ps {
                match &p.term {
                    super::xsd::Term::Element(e) => out.push(e.name.clone()),
                    super::xsd::Term::Choice(c) => collect(c, out),
                }
            }
        }
        collect(&parent_ct.content, &mut names);
        problems.push(layout_problem(
            deepest(node, &["element"]),
            &format!("{path}.element"),
            format!(
                "the schema has no <{}> inside <{}> (it has: {})",
                e.element,
                parent.name,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ));
        return None;
    };
    let mut attributes = Vec::new();
    let attrs_node = child(node, "attributes");
    match &decl.ty {
        TypeDef::Complex(ct) => {
            for (name, b) in &e.attributes {
                let n = attrs_node.and_then(|a| child(a, name)).unwrap_or(node);
                let p = format!("{path}.attributes.{name}");
                if ct.attribute(name).is_none() {
                    problems.push(layout_problem(
                        n,
                        &p,
                        format!(
                            "<{}> has no attribute `{name}` in the schema (it has: {})",
                            decl.name,
                            ct.attributes
                                .iter()
                                .map(|a| a.name.clone())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                    continue;
                }
                if let Some(bind) = resolve_binding(b, n, &p, e.for_each.is_some(), problems) {
                    attributes.push((name.clone(), bind));
                }
            }
            for a in ct.attributes.iter().filter(|a| a.required) {
                if !e.attributes.contains_key(&a.name) {
                    problems.push(layout_problem(
                        attrs_node.unwrap_or(node),
                        &format!("{path}.attributes"),
                        format!(
                            "the schema requires attribute `{}` on <{}> (schema line {}); bind it",
                            a.name, decl.name, a.line
                        ),
                    ));
                }
            }
            if e.text.is_some() {
                problems.push(layout_problem(
                    deepest(node, &["text"]),
                    &format!("{path}.text"),
                    format!("<{}> holds elements, not text", decl.name),
                ));
            }
        }
        TypeDef::Simple(_) => {
            if !e.attributes.is_empty() {
                problems.push(layout_problem(
                    attrs_node.unwrap_or(node),
                    &format!("{path}.attributes"),
                    format!("<{}> holds only text: it has no attributes", decl.name),
                ));
            }
            if e.text.is_none() {
                problems.push(layout_problem(
                    node,
                    path,
                    format!("<{}> holds text: bind it with `text:`", decl.name),
                ));
            }
        }
    }
    let text = e.text.as_ref().and_then(|t| {
        resolve_binding(
            t,
            deepest(node, &["text"]),
            &format!("{path}.text"),
            e.for_each.is_some(),
            problems,
        )
    });
    let mut children = Vec::new();
    let children_node = child(node, "children");
    for (i, c) in e.children.iter().enumerate() {
        let n = children_node
            .and_then(|cn| yaml::node_at(cn, &[&i.to_string()]))
            .unwrap_or(node);
        if c.each == Each::Record && !grouped {
            problems.push(layout_problem(
                deepest(n, &["each"]),
                &format!("{path}.children[{i}].each"),
                "`each: record` is allowed only on the direct children of a grouped record",
            ));
        }
        if let Some(r) = resolve(
            c,
            &decl,
            n,
            &format!("{path}.children[{i}]"),
            false,
            problems,
        ) {
            children.push(r);
        }
    }
    Some(Element {
        name: e.element.clone(),
        decl,
        attributes,
        text,
        children,
        when: e.when.as_ref().map(FieldRef::new),
        for_each: e.for_each.as_ref().map(FieldRef::new),
        per_record: e.each == Each::Record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn dates_are_written_as_xs_date_unless_a_format_is_given() {
        for (y, m, d) in [
            (2024, 2, 29),
            (999, 1, 1),
            (1, 12, 31),
            (9999, 12, 31),
            (-44, 3, 15),
        ] {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            assert_eq!(
                format_value(&Value::Date(date), None),
                Some(date.format("%Y-%m-%d").to_string().into()),
                "{date:?}"
            );
        }
        let date = NaiveDate::from_ymd_opt(2024, 2, 9).unwrap();
        assert_eq!(
            format_value(&Value::Date(date), None).unwrap(),
            "2024-02-09"
        );
        assert_eq!(
            format_value(&Value::Date(date), Some("%m/%Y")).unwrap(),
            "02/2024"
        );
        // Text holding an ISO date is formatted too; other text is kept.
        assert_eq!(
            format_value(&Value::Str("2024-02-09".into()), Some("%m/%Y")).unwrap(),
            "02/2024"
        );
        assert_eq!(
            format_value(&Value::Str("n/d".into()), Some("%m/%Y")).unwrap(),
            "n/d"
        );
        assert_eq!(format_value(&Value::Null, None), None);
    }

    #[test]
    fn forbidden_characters_are_found_in_text_and_lists_only() {
        let s = |t: &str| Value::Str(t.into());
        assert_eq!(forbidden_char(Some(&s("Via Roma 1\tscala B\r\n"))), None);
        assert_eq!(forbidden_char(Some(&s("GE-2025\u{1}-1"))), Some('\u{1}'));
        assert_eq!(forbidden_char(Some(&s("a\u{FFFE}"))), Some('\u{FFFE}'));
        assert_eq!(forbidden_char(Some(&s("\u{FFFF}"))), Some('\u{FFFF}'));
        // Lead byte 0xEF without being U+FFFE/U+FFFF (fullwidth letters, U+FEFF).
        assert_eq!(forbidden_char(Some(&s("ｆｕｌｌ \u{FEFF} àèìòù"))), None);
        let list = Value::List(vec![s("ok"), s("bad\u{7}")]);
        assert_eq!(forbidden_char(Some(&list)), Some('\u{7}'));
        assert_eq!(forbidden_char(Some(&Value::Int(-42))), None);
        assert_eq!(forbidden_char(Some(&Value::Null)), None);
        assert_eq!(forbidden_char(None), None);
    }
}
