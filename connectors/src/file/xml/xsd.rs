//! XML Schema (XSD 1.0) validation for the schemas of the flows snodo produces and reads.
//!
//! Why not a crate: the only complete validator is libxml2 (C, through the `libxml` crate,
//! which needs bindgen and is not thread-safe); the pure-Rust `xmlschema` crate is at 0.0.x
//! and validates a DOM, i.e. a whole file in memory. Snodo needs two things neither gives:
//! validating a file of 500 000 prestazioni in constant memory, and validating *one
//! record's* element so that a violation becomes a reject that names the record and the
//! pipeline field. So the schema is compiled here into a small model and instances are
//! checked event by event. libxml2 stays in the loop as the independent referee: the tests
//! run `xmllint --schema` on every produced file, and the XML sink can run it as a second
//! gate before a file is released.
//!
//! Supported, which covers the INPS SIUSS schemas (PS/PSA/SINA, SINBA) and the FatturaPA
//! schema's structure: global and local `xs:element`, named and anonymous
//! `xs:complexType` with `xs:sequence` / `xs:choice` of elements (`minOccurs`,
//! `maxOccurs`), `xs:attribute` with `use`, named and anonymous `xs:simpleType` by
//! `xs:restriction` of the built-in types (strings, `xs:date`, `xs:dateTime`, `xs:decimal`,
//! the integer types, `xs:boolean`, `xs:gYear`) and of other simple types, with the facets
//! `enumeration`, `pattern`, `length`, `minLength`, `maxLength`, `minInclusive`,
//! `maxInclusive`, `minExclusive`, `maxExclusive`, `totalDigits`, `fractionDigits`.
//! Anything else (`xs:all`, `xs:group`, `xs:import`, `xs:extension`, `xs:list`, …) is
//! refused when the schema is loaded, with its line: a construct silently skipped would
//! make "valid" a lie.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::{QName, ResolveResult};
use regex::Regex;
use rust_decimal::Decimal;
use snodo_core::error::{Error, Result};

/// The namespace of XML Schema itself.
pub const XS: &str = "http://www.w3.org/2001/XMLSchema";
/// The namespace of `xsi:` attributes (`xsi:schemaLocation`), always allowed.
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// A compiled schema.
#[derive(Debug)]
pub struct Schema {
    /// The file it was read from.
    pub file: PathBuf,
    /// `targetNamespace`, if any.
    pub target_namespace: Option<String>,
    /// `elementFormDefault="qualified"`: local elements are in the target namespace.
    pub qualified: bool,
    /// Global elements, in file order.
    pub elements: Vec<Arc<ElementDecl>>,
}

/// An element declaration.
#[derive(Debug)]
pub struct ElementDecl {
    /// Local name.
    pub name: String,
    /// Its type.
    pub ty: TypeDef,
    /// Line in the schema file.
    pub line: u32,
}

/// The type of an element.
#[derive(Debug, Clone)]
pub enum TypeDef {
    /// Text content only, no attributes.
    Simple(Arc<SimpleType>),
    /// Attributes and child elements.
    Complex(Arc<ComplexType>),
}

/// A complex type: attributes and element-only content.
#[derive(Debug)]
pub struct ComplexType {
    /// Name, for anonymous types `None`.
    pub name: Option<String>,
    /// Declared attributes.
    pub attributes: Vec<AttributeDecl>,
    /// The content model: a sequence of particles (empty for attribute-only elements).
    pub content: Vec<Particle>,
    /// Line in the schema file.
    pub line: u32,
}

impl ComplexType {
    /// The attribute declared as `name`.
    pub fn attribute(&self, name: &str) -> Option<&AttributeDecl> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// The child element declared as `name` anywhere in the content model.
    pub fn child(&self, name: &str) -> Option<&Arc<ElementDecl>> {
        fn find<'a>(ps: &'a [Particle], name: &str) -> Option<&'a Arc<ElementDecl>> {
            ps.iter().find_map(|p| match &p.term {
                Term::Element(e) if e.name == name => Some(e),
                Term::Element(_) => None,
                Term::Choice(alts) => find(alts, name),
            })
        }
        find(&self.content, name)
    }
}

/// One item of a content model with its occurrence bounds.
#[derive(Debug)]
pub struct Particle {
    /// An element or a choice of elements.
    pub term: Term,
    /// `minOccurs`.
    pub min: u32,
    /// `maxOccurs`; `None` is `unbounded`.
    pub max: Option<u32>,
}

/// What a particle matches.
#[derive(Debug)]
pub enum Term {
    /// One element.
    Element(Arc<ElementDecl>),
    /// One of several elements.
    Choice(Vec<Particle>),
}

impl Term {
    fn matches(&self, name: &str) -> Option<&Arc<ElementDecl>> {
        match self {
            Term::Element(e) => (e.name == name).then_some(e),
            Term::Choice(alts) => alts.iter().find_map(|p| p.term.matches(name)),
        }
    }

    fn describe(&self) -> String {
        match self {
            Term::Element(e) => format!("<{}>", e.name),
            Term::Choice(alts) => alts
                .iter()
                .map(|p| p.term.describe())
                .collect::<Vec<_>>()
                .join(" or "),
        }
    }
}

/// An attribute declaration.
#[derive(Debug)]
pub struct AttributeDecl {
    /// Local name.
    pub name: String,
    /// `use="required"`.
    pub required: bool,
    /// Its type.
    pub ty: Arc<SimpleType>,
    /// Line in the schema file.
    pub line: u32,
}

/// The built-in types simple types derive from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `xs:string` (whitespace preserved).
    String,
    /// `xs:normalizedString`, `xs:token` and the like (whitespace collapsed).
    Token,
    /// `xs:date`: `YYYY-MM-DD`, optional time zone.
    Date,
    /// `xs:dateTime`.
    DateTime,
    /// `xs:decimal`.
    Decimal,
    /// `xs:integer` and its unbounded derivatives.
    Integer,
    /// `xs:long`.
    Long,
    /// `xs:int`.
    Int,
    /// `xs:short`.
    Short,
    /// `xs:byte`.
    Byte,
    /// `xs:nonNegativeInteger`.
    NonNegativeInteger,
    /// `xs:positiveInteger`.
    PositiveInteger,
    /// `xs:boolean`.
    Boolean,
    /// `xs:gYear`.
    GYear,
    /// `xs:base64Binary`.
    Base64Binary,
}

impl Builtin {
    fn from_name(local: &str) -> Option<Builtin> {
        Some(match local {
            "string" | "anySimpleType" => Builtin::String,
            "normalizedString" | "token" | "NMTOKEN" | "Name" | "NCName" | "language"
            | "anyURI" => Builtin::Token,
            "date" => Builtin::Date,
            "dateTime" => Builtin::DateTime,
            "decimal" => Builtin::Decimal,
            "integer" => Builtin::Integer,
            "long" => Builtin::Long,
            "int" => Builtin::Int,
            "short" => Builtin::Short,
            "byte" => Builtin::Byte,
            "nonNegativeInteger" | "unsignedLong" | "unsignedInt" | "unsignedShort"
            | "unsignedByte" => Builtin::NonNegativeInteger,
            "positiveInteger" => Builtin::PositiveInteger,
            "boolean" => Builtin::Boolean,
            "gYear" => Builtin::GYear,
            "base64Binary" => Builtin::Base64Binary,
            _ => return None,
        })
    }

    /// The name as the XSD writes it.
    pub fn xs_name(self) -> &'static str {
        match self {
            Builtin::String => "xs:string",
            Builtin::Token => "xs:token",
            Builtin::Date => "xs:date",
            Builtin::DateTime => "xs:dateTime",
            Builtin::Decimal => "xs:decimal",
            Builtin::Integer => "xs:integer",
            Builtin::Long => "xs:long",
            Builtin::Int => "xs:int",
            Builtin::Short => "xs:short",
            Builtin::Byte => "xs:byte",
            Builtin::NonNegativeInteger => "xs:nonNegativeInteger",
            Builtin::PositiveInteger => "xs:positiveInteger",
            Builtin::Boolean => "xs:boolean",
            Builtin::GYear => "xs:gYear",
            Builtin::Base64Binary => "xs:base64Binary",
        }
    }

    fn preserves_whitespace(self) -> bool {
        self == Builtin::String
    }
}

/// A pattern facet: the XSD text and the compiled, anchored regular expression.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// As written in the schema.
    pub source: String,
    regex: Regex,
}

/// A simple type: a built-in base plus facets.
#[derive(Debug, Clone)]
pub struct SimpleType {
    /// Name, `None` for anonymous types.
    pub name: Option<String>,
    /// The built-in type at the root of the derivation.
    pub base: Builtin,
    /// Allowed values (empty: any).
    pub enumeration: Vec<String>,
    /// Patterns: the value must match one pattern of *every* group (one group per
    /// derivation step, as the XSD rules say).
    pub patterns: Vec<Vec<Pattern>>,
    /// `length`.
    pub length: Option<usize>,
    /// `minLength`.
    pub min_length: Option<usize>,
    /// `maxLength`.
    pub max_length: Option<usize>,
    /// `minInclusive`.
    pub min_inclusive: Option<Decimal>,
    /// `maxInclusive`.
    pub max_inclusive: Option<Decimal>,
    /// `minExclusive`.
    pub min_exclusive: Option<Decimal>,
    /// `maxExclusive`.
    pub max_exclusive: Option<Decimal>,
    /// `totalDigits`.
    pub total_digits: Option<u32>,
    /// `fractionDigits`.
    pub fraction_digits: Option<u32>,
    /// Line in the schema file.
    pub line: u32,
}

/// Whether collapsing the whitespace of `s` would leave it as it is, known without
/// building the collapsed copy: ASCII with no tab or line break, no space at either end and
/// no two spaces in a row. Nearly every date, number and code is; building the copy for
/// each of them was a vector and a string per value checked.
fn is_collapsed_ascii(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() != Some(&b' ')
        && b.last() != Some(&b' ')
        && b.iter()
            .all(|&c| c == b' ' || (c.is_ascii() && !c.is_ascii_whitespace() && c != 0x0b))
        && !s.contains("  ")
}

impl SimpleType {
    fn builtin(base: Builtin) -> SimpleType {
        SimpleType {
            name: None,
            base,
            enumeration: Vec::new(),
            patterns: Vec::new(),
            length: None,
            min_length: None,
            max_length: None,
            min_inclusive: None,
            max_inclusive: None,
            min_exclusive: None,
            max_exclusive: None,
            total_digits: None,
            fraction_digits: None,
            line: 0,
        }
    }

    /// Checks a value. The error names the broken rule.
    pub fn check(&self, raw: &str) -> std::result::Result<(), (Rule, String)> {
        let collapsed;
        let value = if self.base.preserves_whitespace() || is_collapsed_ascii(raw) {
            raw
        } else {
            collapsed = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            collapsed.as_str()
        };
        // The XSD collapses whitespace around numbers, but libxml2 (xmllint) refuses it
        // once a bounded numeric type is involved (` 12 ` for an `xs:int` between 1 and
        // 12). Snodo sides with the stricter reading so that both validators agree.
        if value != raw && self.has_number_bounds() {
            return Err((Rule::Type, format!("`{raw}` has spaces around the number")));
        }
        let number = self.check_lexical(value)?;
        if !self.enumeration.is_empty() && !self.enumeration.iter().any(|e| e == value) {
            let allowed = if self.enumeration.len() <= 12 {
                self.enumeration.join(", ")
            } else {
                format!(
                    "{}, … ({} values)",
                    self.enumeration[..10].join(", "),
                    self.enumeration.len()
                )
            };
            return Err((
                Rule::Enumeration,
                format!("`{value}` is not one of the allowed values ({allowed})"),
            ));
        }
        for group in &self.patterns {
            if !group.iter().any(|p| p.regex.is_match(value)) {
                let shown: Vec<&str> = group.iter().map(|p| p.source.as_str()).collect();
                return Err((
                    Rule::Pattern,
                    format!("`{value}` does not match the pattern {}", shown.join(" | ")),
                ));
            }
        }
        let chars = value.chars().count();
        if let Some(n) = self.length
            && chars != n
        {
            return Err((
                Rule::Length,
                format!("`{value}` has {chars} characters, the schema requires exactly {n}"),
            ));
        }
        if let Some(n) = self.min_length
            && chars < n
        {
            return Err((
                Rule::Length,
                format!("`{value}` has {chars} characters, the schema requires at least {n}"),
            ));
        }
        if let Some(n) = self.max_length
            && chars > n
        {
            return Err((
                Rule::Length,
                format!("`{value}` has {chars} characters, the schema allows at most {n}"),
            ));
        }
        if let Some(d) = number {
            let bound = |ok: bool, what: &str, b: &Decimal| {
                if ok {
                    Ok(())
                } else {
                    Err((Rule::Range, format!("`{value}` must be {what} {b}")))
                }
            };
            if let Some(b) = &self.min_inclusive {
                bound(d >= *b, "at least", b)?;
            }
            if let Some(b) = &self.max_inclusive {
                bound(d <= *b, "at most", b)?;
            }
            if let Some(b) = &self.min_exclusive {
                bound(d > *b, "greater than", b)?;
            }
            if let Some(b) = &self.max_exclusive {
                bound(d < *b, "less than", b)?;
            }
            let digits = value.trim_start_matches(['+', '-']);
            let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
            let frac = frac_part.trim_end_matches('0');
            let int = int_part.trim_start_matches('0');
            if let Some(n) = self.fraction_digits
                && frac.len() > n as usize
            {
                return Err((
                    Rule::Range,
                    format!("`{value}` has more than {n} decimal digits"),
                ));
            }
            if let Some(n) = self.total_digits
                && int.len() + frac.len() > n as usize
            {
                return Err((
                    Rule::Range,
                    format!("`{value}` has more than {n} digits in all"),
                ));
            }
        }
        Ok(())
    }

    fn has_number_bounds(&self) -> bool {
        self.min_inclusive.is_some()
            || self.max_inclusive.is_some()
            || self.min_exclusive.is_some()
            || self.max_exclusive.is_some()
            || self.total_digits.is_some()
            || self.fraction_digits.is_some()
    }

    /// Checks the lexical space of the base type; returns the number for numeric types.
    fn check_lexical(&self, v: &str) -> std::result::Result<Option<Decimal>, (Rule, String)> {
        let bad = |what: &str| Err((Rule::Type, format!("`{v}` is not a valid {what}")));
        match self.base {
            Builtin::String | Builtin::Token => Ok(None),
            Builtin::Date => {
                if is_xs_date(v) {
                    Ok(None)
                } else {
                    bad("xs:date (YYYY-MM-DD)")
                }
            }
            Builtin::DateTime => {
                if is_xs_datetime(v) {
                    Ok(None)
                } else {
                    bad("xs:dateTime (YYYY-MM-DDThh:mm:ss)")
                }
            }
            Builtin::GYear => {
                let digits = v.strip_prefix('-').unwrap_or(v);
                if digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
                    Ok(None)
                } else {
                    bad("xs:gYear (YYYY)")
                }
            }
            Builtin::Boolean => match v {
                "true" | "false" | "1" | "0" => Ok(None),
                _ => bad("xs:boolean (true, false, 1, 0)"),
            },
            Builtin::Base64Binary => {
                let compact: String = v.split_whitespace().collect();
                if compact.len().is_multiple_of(4)
                    && compact
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
                {
                    Ok(None)
                } else {
                    bad("xs:base64Binary")
                }
            }
            Builtin::Decimal => match parse_xs_decimal(v, false) {
                Some(d) => Ok(Some(d)),
                None => bad("xs:decimal (digits with an optional `.`, no thousands separator)"),
            },
            _ => {
                let Some(d) = parse_xs_decimal(v, true) else {
                    return bad(&format!("{} (digits only)", self.base.xs_name()));
                };
                let (lo, hi): (Option<i128>, Option<i128>) = match self.base {
                    Builtin::Long => (Some(i64::MIN as i128), Some(i64::MAX as i128)),
                    Builtin::Int => (Some(i32::MIN as i128), Some(i32::MAX as i128)),
                    Builtin::Short => (Some(i16::MIN as i128), Some(i16::MAX as i128)),
                    Builtin::Byte => (Some(i8::MIN as i128), Some(i8::MAX as i128)),
                    Builtin::NonNegativeInteger => (Some(0), None),
                    Builtin::PositiveInteger => (Some(1), None),
                    _ => (None, None),
                };
                let n = d.mantissa();
                if lo.is_some_and(|lo| n < lo) || hi.is_some_and(|hi| n > hi) {
                    return Err((
                        Rule::Range,
                        format!("`{v}` is out of the range of {}", self.base.xs_name()),
                    ));
                }
                Ok(Some(d))
            }
        }
    }
}

/// `[+-]?(\d+(\.\d*)?|\.\d+)`, or digits only for integers.
fn parse_xs_decimal(v: &str, integer: bool) -> Option<Decimal> {
    let body = v.strip_prefix(['+', '-']).unwrap_or(v);
    let (int, frac) = match body.split_once('.') {
        Some(_) if integer => return None,
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let ok = match frac {
        None => !int.is_empty() && digits(int),
        Some(f) => digits(int) && digits(f) && !(int.is_empty() && f.is_empty()),
    };
    if !ok {
        return None;
    }
    let normal = format!(
        "{}{}{}",
        if v.starts_with('-') { "-" } else { "" },
        if int.is_empty() { "0" } else { int },
        frac.filter(|f| !f.is_empty())
            .map(|f| format!(".{f}"))
            .unwrap_or_default()
    );
    // Numbers beyond 28 digits exist lexically but not in this model; refusing them is
    // stricter than the XSD, never looser.
    normal.parse::<Decimal>().ok()
}

fn split_timezone(v: &str) -> Option<&str> {
    if let Some(rest) = v.strip_suffix('Z') {
        return Some(rest);
    }
    if v.len() > 6 {
        let (head, tz) = v.split_at(v.len() - 6);
        let b = tz.as_bytes();
        if (b[0] == b'+' || b[0] == b'-')
            && b[3] == b':'
            && tz[1..3].bytes().all(|c| c.is_ascii_digit())
            && tz[4..6].bytes().all(|c| c.is_ascii_digit())
        {
            return Some(head);
        }
    }
    Some(v)
}

fn is_xs_date(v: &str) -> bool {
    let Some(d) = split_timezone(v) else {
        return false;
    };
    d.len() == 10
        && d.as_bytes()[4] == b'-'
        && d.as_bytes()[7] == b'-'
        && NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok()
}

fn is_xs_datetime(v: &str) -> bool {
    let Some(d) = split_timezone(v) else {
        return false;
    };
    let Some((date, time)) = d.split_once('T') else {
        return false;
    };
    if !is_xs_date(date) || time.len() < 8 {
        return false;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    hms.len() == 8
        && chrono::NaiveTime::parse_from_str(hms, "%H:%M:%S").is_ok()
        && !frac.is_empty()
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// What kind of rule a violation broke; it becomes the reject's reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A required attribute is missing.
    Required,
    /// An attribute the schema does not declare.
    Unknown,
    /// A value outside the enumeration.
    Enumeration,
    /// A value not matching the pattern.
    Pattern,
    /// A value too short or too long.
    Length,
    /// A value not in the lexical space of its type (a bad date, a bad number).
    Type,
    /// A number out of range or with too many digits.
    Range,
    /// Elements missing, unexpected or out of order.
    Structure,
    /// The document is not well-formed XML, or uses something snodo refuses (DTDs).
    Syntax,
}

impl Rule {
    /// The reason code of the reject: `xsd.pattern`, `xsd.required`, …
    pub fn code(self) -> &'static str {
        match self {
            Rule::Required => "xsd.required",
            Rule::Unknown => "xsd.unknown_attribute",
            Rule::Enumeration => "xsd.enumeration",
            Rule::Pattern => "xsd.pattern",
            Rule::Length => "xsd.length",
            Rule::Type => "xsd.type",
            Rule::Range => "xsd.range",
            Rule::Structure => "xsd.structure",
            Rule::Syntax => "xml.syntax",
        }
    }
}

/// One problem found in an instance document.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Line in the instance, when validating a file.
    pub line: Option<u64>,
    /// Element path: `Flusso/Beneficiario[2]/PrestazioniSociali[1]`.
    pub path: String,
    /// The attribute at fault, if the problem is an attribute's.
    pub attribute: Option<String>,
    /// The kind of rule.
    pub rule: Rule,
    /// What is wrong (may contain the value: mask before logging).
    pub message: String,
    /// Line of the rule in the schema (0 when not applicable).
    pub xsd_line: u32,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        write!(f, "{}", self.path)?;
        if let Some(a) = &self.attribute {
            write!(f, "/@{a}")?;
        }
        write!(f, ": {}", self.message)?;
        if self.xsd_line > 0 {
            write!(f, " (schema line {})", self.xsd_line)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Loading the schema.

/// The schema file as a tree, with QName-valued attributes already resolved (their
/// prefixes are only meaningful where they appear).
#[derive(Debug)]
struct XNode {
    local: String,
    is_xs: bool,
    attrs: Vec<(String, String)>,
    qnames: HashMap<String, (Option<String>, String)>,
    children: Vec<XNode>,
    line: u32,
}

impl XNode {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn xs_children(&self) -> impl Iterator<Item = &XNode> {
        self.children
            .iter()
            .filter(|c| c.is_xs && c.local != "annotation")
    }
}

/// Counts lines incrementally over the text being parsed.
struct Lines<'a> {
    text: &'a [u8],
    pos: usize,
    line: u64,
}

impl Lines<'_> {
    fn at(&mut self, offset: u64) -> u64 {
        let offset = (offset as usize).min(self.text.len());
        if offset >= self.pos {
            self.line += self.text[self.pos..offset]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
        } else {
            self.line = 1 + self.text[..offset].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        self.pos = offset;
        self.line
    }
}

fn parse_tree(text: &str, file: &Path) -> Result<XNode> {
    let err = |line: u64, msg: String| {
        Error::Input(format!("schema `{}` line {line}: {msg}", file.display()))
    };
    let mut reader = NsReader::from_str(text);
    reader.config_mut().expand_empty_elements = true;
    let mut lines = Lines {
        text: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    let mut stack: Vec<XNode> = Vec::new();
    let mut root = None;
    loop {
        let start = reader.buffer_position();
        let (is_xs, ev) = match reader.read_resolved_event() {
            Ok((ns, ev)) => (matches!(ns, ResolveResult::Bound(n) if n.0 == XS), ev),
            Err(e) => {
                let at = reader.error_position();
                return Err(err(lines.at(at), e.to_string()));
            }
        };
        let line = lines.at(start) as u32;
        match ev {
            Event::Start(e) => {
                let mut attrs = Vec::new();
                let mut qnames = HashMap::new();
                for a in e.attributes() {
                    let a = a.map_err(|x| err(line as u64, x.to_string()))?;
                    let key = a.key.0.to_string();
                    let value = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|x| err(line as u64, x.to_string()))?
                        .into_owned();
                    if matches!(key.as_str(), "type" | "base" | "ref") {
                        let (rns, local) = reader.resolver().resolve_element(QName(&value));
                        let rns = match rns {
                            ResolveResult::Bound(n) => Some(n.0.to_string()),
                            ResolveResult::Unbound => None,
                            ResolveResult::Unknown(p) => {
                                return Err(err(
                                    line as u64,
                                    format!("`{key}=\"{value}\"` uses the undeclared prefix `{p}`"),
                                ));
                            }
                        };
                        qnames.insert(key.clone(), (rns, local.as_ref().to_string()));
                    }
                    attrs.push((key, value));
                }
                let node = XNode {
                    local: e.local_name().as_ref().to_string(),
                    is_xs,
                    attrs,
                    qnames,
                    children: Vec::new(),
                    line,
                };
                stack.push(node);
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| err(line as u64, "unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Eof => break,
            Event::DocType(_) => {
                return Err(err(
                    line as u64,
                    "a DOCTYPE in a schema is not supported".into(),
                ));
            }
            _ => {}
        }
    }
    root.ok_or_else(|| err(1, "no root element".into()))
}

impl Schema {
    /// Reads and compiles a schema file.
    pub fn load(path: &Path) -> Result<Schema> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        Self::parse(&text, path)
    }

    /// Compiles schema text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Schema> {
        let root = parse_tree(text, path)?;
        if !(root.is_xs && root.local == "schema") {
            return Err(Error::Input(format!(
                "`{}` is not an XML Schema (its root is <{}>)",
                path.display(),
                root.local
            )));
        }
        let mut c = Compiler {
            file: path.to_path_buf(),
            target: root.attr("targetNamespace").map(str::to_string),
            simple_defs: HashMap::new(),
            complex_defs: HashMap::new(),
            simple_done: HashMap::new(),
            complex_done: HashMap::new(),
            depth: 0,
        };
        for child in root.xs_children() {
            match child.local.as_str() {
                "simpleType" | "complexType" => {
                    let Some(name) = child.attr("name") else {
                        return Err(c.err(child.line, "a top-level type needs a `name`"));
                    };
                    if child.local == "simpleType" {
                        c.simple_defs.insert(name.to_string(), child);
                    } else {
                        c.complex_defs.insert(name.to_string(), child);
                    }
                }
                "element" => {}
                other => {
                    return Err(c.err(
                        child.line,
                        &format!("`xs:{other}` is not supported by snodo's validator"),
                    ));
                }
            }
        }
        let mut elements = Vec::new();
        for child in root.xs_children().filter(|c| c.local == "element") {
            elements.push(Arc::new(c.element(child)?));
        }
        Ok(Schema {
            file: path.to_path_buf(),
            target_namespace: c.target,
            qualified: root.attr("elementFormDefault") == Some("qualified"),
            elements,
        })
    }

    /// The global element `name`.
    pub fn element(&self, name: &str) -> Option<&Arc<ElementDecl>> {
        self.elements.iter().find(|e| e.name == name)
    }

    /// Validates a whole document read from `input`, in constant memory. Returns at most
    /// `max` violations (the count of the others is in the last message).
    pub fn validate_reader<R: std::io::BufRead>(&self, input: R, max: usize) -> Vec<Violation> {
        let mut v = Validator::new(self);
        let mut reader = NsReader::from_reader(input);
        reader.config_mut().expand_empty_elements = true;
        let mut buf = Vec::new();
        let mut line_counter = ByteLines::default();
        let mut text = String::new();
        loop {
            buf.clear();
            v.set_line(line_counter.line.max(1));
            let res = reader.read_resolved_event_into(&mut buf);
            let (ns, ev) = match res {
                Ok(x) => x,
                Err(e) => {
                    v.push(Violation {
                        line: Some(line_counter.line),
                        path: v.path(),
                        attribute: None,
                        rule: Rule::Syntax,
                        message: format!("not well-formed XML: {e}"),
                        xsd_line: 0,
                    });
                    break;
                }
            };
            match &ev {
                Event::Start(e) => {
                    if !text.is_empty() {
                        v.text(&text);
                        text.clear();
                    }
                    let ns = match ns {
                        ResolveResult::Bound(n) => Some(n.0.to_string()),
                        _ => None,
                    };
                    let mut attrs = Vec::new();
                    for a in e.attributes() {
                        match a {
                            Ok(a) => {
                                let (ans, local) = reader.resolver().resolve_attribute(a.key);
                                let skip = matches!(ans, ResolveResult::Bound(n) if n.0 == XSI)
                                    || a.key.0 == "xmlns"
                                    || a.key.0.starts_with("xmlns:");
                                if skip {
                                    continue;
                                }
                                let value = a
                                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                    .map(|c| c.into_owned())
                                    .unwrap_or_else(|_| a.value.to_string());
                                attrs.push((local.as_ref().to_string(), value));
                            }
                            Err(e) => v.push(Violation {
                                line: Some(line_counter.line),
                                path: v.path(),
                                attribute: None,
                                rule: Rule::Syntax,
                                message: format!("malformed attribute: {e}"),
                                xsd_line: 0,
                            }),
                        }
                    }
                    v.start(e.local_name().as_ref(), ns.as_deref(), &attrs);
                }
                Event::End(_) => {
                    v.text(&text);
                    text.clear();
                    v.end();
                }
                Event::Text(t) => text.push_str(&t.xml10_content()),
                Event::CData(t) => text.push_str(&t.xml10_content()),
                Event::GeneralRef(r) => match r.resolve_char_ref() {
                    Ok(Some(c)) => text.push(c),
                    _ => match r.as_ref() {
                        "lt" => text.push('<'),
                        "gt" => text.push('>'),
                        "amp" => text.push('&'),
                        "apos" => text.push('\''),
                        "quot" => text.push('"'),
                        other => v.push(Violation {
                            line: Some(line_counter.line),
                            path: v.path(),
                            attribute: None,
                            rule: Rule::Syntax,
                            message: format!(
                                "unknown entity `&{other};` (DTD entities are refused)"
                            ),
                            xsd_line: 0,
                        }),
                    },
                },
                Event::DocType(_) => {
                    v.push(Violation {
                        line: Some(line_counter.line),
                        path: String::new(),
                        attribute: None,
                        rule: Rule::Syntax,
                        message: "a DOCTYPE is refused (no DTDs, no entity expansion)".into(),
                        xsd_line: 0,
                    });
                    break;
                }
                Event::Decl(d) => {
                    if let Err(msg) = check_declaration(d) {
                        v.push(Violation {
                            line: Some(line_counter.line.max(1)),
                            path: String::new(),
                            attribute: None,
                            rule: Rule::Syntax,
                            message: msg,
                            xsd_line: 0,
                        });
                        break;
                    }
                }
                Event::Eof => break,
                _ => {}
            }
            line_counter.feed(&buf);
            if v.violations.len() > max {
                break;
            }
        }
        v.finish()
    }
}

/// The XML declaration: version 1.0, UTF-8 (the only encoding the flows use and the only
/// one this reader decodes).
pub fn check_declaration(d: &quick_xml::events::BytesDecl) -> std::result::Result<(), String> {
    match d.version() {
        Ok(v) if v == "1.0" => {}
        Ok(v) => return Err(format!("XML version `{v}` is not supported (only 1.0)")),
        Err(e) => return Err(format!("malformed XML declaration: {e}")),
    }
    match d.encoding() {
        None => {}
        Some(Ok(e)) if e.eq_ignore_ascii_case("utf-8") => {}
        Some(Ok(e)) => {
            return Err(format!(
                "encoding `{e}` is not supported: the flows are UTF-8; convert the file first"
            ));
        }
        Some(Err(e)) => return Err(format!("malformed XML declaration: {e}")),
    }
    match d.standalone() {
        None => Ok(()),
        Some(Ok(s)) if s == "yes" || s == "no" => Ok(()),
        Some(_) => Err("malformed XML declaration: `standalone` is `yes` or `no`".into()),
    }
}

#[derive(Default)]
struct ByteLines {
    line: u64,
}

impl ByteLines {
    fn feed(&mut self, bytes: &[u8]) {
        if self.line == 0 {
            self.line = 1;
        }
        self.line += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

// ---------------------------------------------------------------------------------------
// Compiling the tree into the model.

struct Compiler<'t> {
    file: PathBuf,
    target: Option<String>,
    simple_defs: HashMap<String, &'t XNode>,
    complex_defs: HashMap<String, &'t XNode>,
    simple_done: HashMap<String, Arc<SimpleType>>,
    complex_done: HashMap<String, Arc<ComplexType>>,
    depth: usize,
}

/// Type definitions nest (an element's type declares elements of other types): deeper
/// than this is a recursive schema, which none of the flows has.
const MAX_DEPTH: usize = 64;

impl<'t> Compiler<'t> {
    fn err(&self, line: u32, msg: &str) -> Error {
        Error::Input(format!(
            "schema `{}` line {line}: {msg}",
            self.file.display()
        ))
    }

    fn unsupported(&self, n: &XNode) -> Error {
        self.err(
            n.line,
            &format!(
                "`xs:{}` is not supported by snodo's validator (see the list in docs/xml.md)",
                n.local
            ),
        )
    }

    fn enter(&mut self, line: u32) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(
                line,
                "type definitions nest too deeply (a recursive schema?)",
            ));
        }
        Ok(())
    }

    fn element(&mut self, n: &'t XNode) -> Result<ElementDecl> {
        self.enter(n.line)?;
        let result = self.element_inner(n);
        self.depth -= 1;
        result
    }

    fn element_inner(&mut self, n: &'t XNode) -> Result<ElementDecl> {
        for unsupported in ["ref", "substitutionGroup", "abstract", "fixed", "default"] {
            if n.attr(unsupported).is_some() {
                return Err(self.err(
                    n.line,
                    &format!(
                        "`xs:element` with `{unsupported}` is not supported by snodo's validator"
                    ),
                ));
            }
        }
        let Some(name) = n.attr("name") else {
            return Err(self.err(n.line, "`xs:element` needs a `name`"));
        };
        let ty = if let Some((ns, local)) = n.qnames.get("type") {
            self.type_ref(ns.as_deref(), local, n.line)?
        } else {
            let mut inline = n.xs_children();
            match inline.next() {
                Some(c) if c.local == "complexType" => {
                    TypeDef::Complex(Arc::new(self.complex_type(c, None)?))
                }
                Some(c) if c.local == "simpleType" => {
                    TypeDef::Simple(Arc::new(self.simple_type(c, None)?))
                }
                Some(c) => return Err(self.unsupported(c)),
                None => TypeDef::Simple(Arc::new(SimpleType::builtin(Builtin::String))),
            }
        };
        Ok(ElementDecl {
            name: name.to_string(),
            ty,
            line: n.line,
        })
    }

    fn type_ref(&mut self, ns: Option<&str>, local: &str, line: u32) -> Result<TypeDef> {
        if ns == Some(XS) {
            return match Builtin::from_name(local) {
                Some(b) => Ok(TypeDef::Simple(Arc::new(SimpleType::builtin(b)))),
                None => Err(self.err(
                    line,
                    &format!(
                        "the built-in type `xs:{local}` is not supported by snodo's validator"
                    ),
                )),
            };
        }
        if ns.is_some() && ns != self.target.as_deref() {
            return Err(self.err(
                line,
                &format!("type `{local}` is in another namespace (`xs:import` is not supported)"),
            ));
        }
        if self.complex_defs.contains_key(local) {
            return Ok(TypeDef::Complex(self.complex_named(local, line)?));
        }
        Ok(TypeDef::Simple(self.simple_named(local, line)?))
    }

    fn simple_named(&mut self, name: &str, line: u32) -> Result<Arc<SimpleType>> {
        if let Some(t) = self.simple_done.get(name) {
            return Ok(t.clone());
        }
        let Some(node) = self.simple_defs.get(name).copied() else {
            return Err(self.err(line, &format!("unknown simple type `{name}`")));
        };
        self.enter(line)?;
        let t = self.simple_type(node, Some(name.to_string()));
        self.depth -= 1;
        let t = Arc::new(t?);
        self.simple_done.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn complex_named(&mut self, name: &str, line: u32) -> Result<Arc<ComplexType>> {
        if let Some(t) = self.complex_done.get(name) {
            return Ok(t.clone());
        }
        let Some(node) = self.complex_defs.get(name).copied() else {
            return Err(self.err(line, &format!("unknown complex type `{name}`")));
        };
        self.enter(line)?;
        let t = self.complex_type(node, Some(name.to_string()));
        self.depth -= 1;
        let t = Arc::new(t?);
        self.complex_done.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn simple_type(&mut self, n: &'t XNode, name: Option<String>) -> Result<SimpleType> {
        let mut children = n.xs_children();
        let Some(r) = children.next() else {
            return Err(self.err(n.line, "`xs:simpleType` without a restriction"));
        };
        if r.local != "restriction" {
            return Err(self.unsupported(r));
        }
        let mut t = match r.qnames.get("base") {
            Some((ns, local)) => match self.type_ref(ns.as_deref(), local, r.line)? {
                TypeDef::Simple(s) => (*s).clone(),
                TypeDef::Complex(_) => {
                    return Err(self.err(r.line, "a simple type cannot restrict a complex type"));
                }
            },
            None => match r.xs_children().find(|c| c.local == "simpleType") {
                Some(inner) => self.simple_type(inner, None)?,
                None => return Err(self.err(r.line, "`xs:restriction` needs a `base`")),
            },
        };
        t.name = name;
        t.line = n.line;
        let mut enumeration = Vec::new();
        let mut patterns = Vec::new();
        for f in r.xs_children() {
            let value = f.attr("value").unwrap_or_default();
            let number = |c: &Compiler| {
                value
                    .parse::<Decimal>()
                    .map_err(|_| c.err(f.line, &format!("`{value}` is not a number")))
            };
            let count = |c: &Compiler| {
                value
                    .parse::<usize>()
                    .map_err(|_| c.err(f.line, &format!("`{value}` is not a count")))
            };
            match f.local.as_str() {
                "enumeration" => enumeration.push(value.to_string()),
                "pattern" => patterns.push(Pattern {
                    source: value.to_string(),
                    regex: translate_pattern(value)
                        .and_then(|re| Regex::new(&re).map_err(|e| e.to_string()))
                        .map_err(|e| {
                            self.err(
                                f.line,
                                &format!("pattern `{value}` cannot be compiled: {e}"),
                            )
                        })?,
                }),
                "length" => t.length = Some(count(self)?),
                "minLength" => t.min_length = Some(count(self)?),
                "maxLength" => t.max_length = Some(count(self)?),
                "minInclusive" => t.min_inclusive = Some(number(self)?),
                "maxInclusive" => t.max_inclusive = Some(number(self)?),
                "minExclusive" => t.min_exclusive = Some(number(self)?),
                "maxExclusive" => t.max_exclusive = Some(number(self)?),
                "totalDigits" => t.total_digits = Some(count(self)? as u32),
                "fractionDigits" => t.fraction_digits = Some(count(self)? as u32),
                "whiteSpace" | "simpleType" => {}
                _ => return Err(self.unsupported(f)),
            }
        }
        if !enumeration.is_empty() {
            t.enumeration = enumeration;
        }
        if !patterns.is_empty() {
            t.patterns.push(patterns);
        }
        Ok(t)
    }

    fn complex_type(&mut self, n: &'t XNode, name: Option<String>) -> Result<ComplexType> {
        if n.attr("mixed") == Some("true") || n.attr("abstract") == Some("true") {
            return Err(self.err(
                n.line,
                "mixed or abstract complex types are not supported by snodo's validator",
            ));
        }
        let mut attributes = Vec::new();
        let mut content = Vec::new();
        for c in n.xs_children() {
            match c.local.as_str() {
                "attribute" => attributes.push(self.attribute(c)?),
                "sequence" if content.is_empty() => {
                    let (min, max) = self.occurs(c)?;
                    if (min, max) != (1, Some(1)) {
                        return Err(self.err(
                            c.line,
                            "a repeated `xs:sequence` is not supported by snodo's validator",
                        ));
                    }
                    content = self.particles(c)?;
                }
                "choice" if content.is_empty() => {
                    let (min, max) = self.occurs(c)?;
                    content = vec![Particle {
                        term: Term::Choice(self.particles(c)?),
                        min,
                        max,
                    }];
                }
                _ => return Err(self.unsupported(c)),
            }
        }
        Ok(ComplexType {
            name,
            attributes,
            content,
            line: n.line,
        })
    }

    fn attribute(&mut self, n: &'t XNode) -> Result<AttributeDecl> {
        if n.attr("ref").is_some() || n.attr("fixed").is_some() {
            return Err(self.err(
                n.line,
                "`xs:attribute` with `ref` or `fixed` is not supported by snodo's validator",
            ));
        }
        let Some(name) = n.attr("name") else {
            return Err(self.err(n.line, "`xs:attribute` needs a `name`"));
        };
        let ty = match n.qnames.get("type") {
            Some((ns, local)) => match self.type_ref(ns.as_deref(), local, n.line)? {
                TypeDef::Simple(s) => s,
                TypeDef::Complex(_) => {
                    return Err(self.err(n.line, "an attribute cannot have a complex type"));
                }
            },
            None => match n.xs_children().find(|c| c.local == "simpleType") {
                Some(s) => Arc::new(self.simple_type(s, None)?),
                None => Arc::new(SimpleType::builtin(Builtin::String)),
            },
        };
        Ok(AttributeDecl {
            name: name.to_string(),
            required: n.attr("use") == Some("required"),
            ty,
            line: n.line,
        })
    }

    fn occurs(&self, n: &XNode) -> Result<(u32, Option<u32>)> {
        let min = match n.attr("minOccurs") {
            None => 1,
            Some(v) => v
                .parse()
                .map_err(|_| self.err(n.line, &format!("minOccurs `{v}` is not a count")))?,
        };
        let max = match n.attr("maxOccurs") {
            None => Some(1),
            Some("unbounded") => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| self.err(n.line, &format!("maxOccurs `{v}` is not a count")))?,
            ),
        };
        Ok((min, max))
    }

    fn particles(&mut self, n: &'t XNode) -> Result<Vec<Particle>> {
        let mut out = Vec::new();
        for c in n.xs_children() {
            let (min, max) = self.occurs(c)?;
            let term = match c.local.as_str() {
                "element" => Term::Element(Arc::new(self.element(c)?)),
                "choice" => Term::Choice(self.particles(c)?),
                "sequence" if (min, max) == (1, Some(1)) => {
                    out.extend(self.particles(c)?);
                    continue;
                }
                _ => return Err(self.unsupported(c)),
            };
            out.push(Particle { term, min, max });
        }
        Ok(out)
    }
}

/// Translates an XSD regular expression into the `regex` crate's syntax, anchored (XSD
/// patterns always match the whole value).
pub fn translate_pattern(xsd: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(xsd.len() + 8);
    out.push_str("^(?:");
    let chars: Vec<char> = xsd.chars().collect();
    let mut i = 0;
    let mut class_depth = 0usize;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&e) = chars.get(i + 1) else {
                    return Err("the pattern ends with a lone `\\`".into());
                };
                i += 2;
                let inside = class_depth > 0;
                let piece = match e {
                    's' => r" \t\n\r".to_string(),
                    'S' => r"^ \t\n\r".to_string(),
                    'i' => r"\p{L}_:".to_string(),
                    'c' => r"\p{L}\p{Nd}\p{Mn}._:\-".to_string(),
                    'w' => r"^\p{P}\p{Z}\p{C}".to_string(),
                    'W' => r"\p{P}\p{Z}\p{C}".to_string(),
                    'p' | 'P' => {
                        let rest: String = chars[i..].iter().collect();
                        let Some(end) = rest.find('}') else {
                            return Err("`\\p{` without `}`".into());
                        };
                        let name = rest.trim_start_matches('{')[..end - 1].to_string();
                        i += end + 1;
                        let negate = e == 'P';
                        let body = match name.as_str() {
                            "IsBasicLatin" => r"\x{0}-\x{7F}".to_string(),
                            "IsLatin-1Supplement" => r"\x{80}-\x{FF}".to_string(),
                            "IsLatinExtended-A" => r"\x{100}-\x{17F}".to_string(),
                            n if n.starts_with("Is") => {
                                return Err(format!(
                                    "the block escape `\\p{{{n}}}` is not supported"
                                ));
                            }
                            n => {
                                let token = format!("\\{e}{{{n}}}");
                                out.push_str(&token);
                                continue;
                            }
                        };
                        match (inside, negate) {
                            (true, false) => body,
                            (false, false) => format!("[{body}]"),
                            (false, true) => format!("[^{body}]"),
                            (true, true) => {
                                return Err(
                                    "a negated block escape inside a class is not supported".into(),
                                );
                            }
                        }
                    }
                    'd' | 'D' | 'n' | 'r' | 't' | '\\' | '|' | '.' | '-' | '^' | '?' | '*'
                    | '+' | '{' | '}' | '(' | ')' | '[' | ']' => format!("\\{e}"),
                    other => return Err(format!("unknown escape `\\{other}`")),
                };
                // Class-like escapes need brackets outside a class; a negated one cannot be
                // merged into an enclosing class.
                match e {
                    's' | 'S' | 'i' | 'c' | 'w' | 'W' if !inside => {
                        out.push('[');
                        out.push_str(&piece);
                        out.push(']');
                    }
                    'S' | 'w' if inside => {
                        return Err(format!("`\\{e}` inside a character class is not supported"));
                    }
                    _ => out.push_str(&piece),
                }
                continue;
            }
            '[' => {
                class_depth += 1;
                out.push('[');
                if chars.get(i + 1) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
            }
            ']' if class_depth > 0 => {
                class_depth -= 1;
                out.push(']');
            }
            '-' if class_depth > 0 && chars.get(i + 1) == Some(&'[') => {
                // XSD class subtraction `[a-z-[aeiou]]` is `[a-z--[aeiou]]` here.
                out.push_str("--");
            }
            '&' | '~' if class_depth > 0 => {
                out.push('\\');
                out.push(c);
            }
            '^' | '$' if class_depth == 0 => {
                // Anchors do not exist in XSD: these are literal characters.
                out.push('\\');
                out.push(c);
            }
            '.' if class_depth == 0 => out.push_str(r"[^\n\r]"),
            _ => out.push(c),
        }
        i += 1;
    }
    if class_depth > 0 {
        return Err("unclosed `[`".into());
    }
    out.push_str(")$");
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Validating instances.

struct Frame {
    name: String,
    index: usize,
    ty: Option<TypeDef>,
    pos: usize,
    count: u32,
    text: String,
    children: Vec<(String, usize)>,
}

/// Checks a document, or one element of it, fed as events. Used on whole files (by
/// [`Schema::validate_reader`]) and on the element one record renders (by the XML sink).
pub struct Validator<'s> {
    schema: &'s Schema,
    expect: Option<Arc<ElementDecl>>,
    prefix: String,
    stack: Vec<Frame>,
    violations: Vec<Violation>,
    line: Option<u64>,
    root_seen: bool,
    check_namespaces: bool,
    /// Which of an element's declared attributes it has (scratch, reused per element).
    seen: Vec<bool>,
}

impl<'s> Validator<'s> {
    /// A validator for a whole document.
    pub fn new(schema: &'s Schema) -> Self {
        Validator {
            schema,
            expect: None,
            prefix: String::new(),
            stack: Vec::new(),
            violations: Vec::new(),
            line: None,
            root_seen: false,
            check_namespaces: true,
            seen: Vec::new(),
        }
    }

    /// A validator for one element declared by `decl`, found at `path` (for messages, e.g.
    /// `Flusso`). Namespaces are not checked: the caller renders the names itself.
    pub fn fragment(schema: &'s Schema, decl: Arc<ElementDecl>, path: &str) -> Self {
        Validator {
            expect: Some(decl),
            prefix: path.to_string(),
            check_namespaces: false,
            ..Validator::new(schema)
        }
    }

    fn set_line(&mut self, line: u64) {
        self.line = Some(line);
    }

    /// [`start`](Self::start) for an element at `line` of the document.
    pub fn start_at<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        line: u64,
        name: &str,
        ns: Option<&str>,
        attrs: &[(K, V)],
    ) {
        self.line = Some(line);
        self.start(name, ns, attrs);
    }

    /// How many violations were found so far.
    pub fn violation_count(&self) -> usize {
        self.violations.len()
    }

    /// The violations found after the first `from`.
    pub fn violations_since(&self, from: usize) -> Vec<Violation> {
        self.violations
            .get(from..)
            .map(<[Violation]>::to_vec)
            .unwrap_or_default()
    }

    fn push(&mut self, v: Violation) {
        self.violations.push(v);
    }

    fn path(&self) -> String {
        let mut parts = Vec::with_capacity(self.stack.len() + 1);
        if !self.prefix.is_empty() {
            parts.push(self.prefix.clone());
        }
        for (i, f) in self.stack.iter().enumerate() {
            if i == 0 && self.expect.is_none() {
                parts.push(f.name.clone());
            } else {
                parts.push(format!("{}[{}]", f.name, f.index));
            }
        }
        parts.join("/")
    }

    fn violation(&mut self, attribute: Option<&str>, rule: Rule, message: String, xsd_line: u32) {
        let v = Violation {
            line: self.line,
            path: self.path(),
            attribute: attribute.map(str::to_string),
            rule,
            message,
            xsd_line,
        };
        self.push(v);
    }

    /// An element starts. `attrs` are the attributes without namespace declarations and
    /// `xsi:` attributes.
    pub fn start<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        name: &str,
        ns: Option<&str>,
        attrs: &[(K, V)],
    ) {
        let decl = if self.stack.is_empty() {
            if self.root_seen {
                self.stack.push(self.frame(name, 1, None));
                self.violation(None, Rule::Structure, "a second root element".into(), 0);
                return;
            }
            self.root_seen = true;
            let found = match &self.expect {
                Some(d) => (d.name == name).then(|| d.clone()),
                None => self.schema.element(name).cloned(),
            };
            if self.check_namespaces && ns != self.schema.target_namespace.as_deref() {
                let expected = self.schema.target_namespace.clone().unwrap_or_default();
                self.stack.push(self.frame(name, 1, None));
                self.violation(
                    None,
                    Rule::Structure,
                    format!(
                        "<{name}> is in namespace `{}`, the schema expects `{expected}`",
                        ns.unwrap_or("")
                    ),
                    0,
                );
                self.stack.pop();
            }
            if found.is_none() {
                let expected = match &self.expect {
                    Some(d) => format!("<{}>", d.name),
                    None => self
                        .schema
                        .elements
                        .iter()
                        .map(|e| format!("<{}>", e.name))
                        .collect::<Vec<_>>()
                        .join(" or "),
                };
                self.stack.push(self.frame(name, 1, None));
                self.violation(
                    None,
                    Rule::Structure,
                    format!("root element <{name}>, the schema expects {expected}"),
                    0,
                );
                return;
            }
            found
        } else {
            let child = self.advance(name);
            if child.is_some() && self.check_namespaces {
                let expected = if self.schema.qualified {
                    self.schema.target_namespace.as_deref()
                } else {
                    None
                };
                if ns != expected {
                    let n = name.to_string();
                    self.violation(
                        None,
                        Rule::Structure,
                        format!(
                            "<{n}> is in namespace `{}`, the schema expects `{}`",
                            ns.unwrap_or(""),
                            expected.unwrap_or("")
                        ),
                        0,
                    );
                }
            }
            child
        };
        let index = match self.stack.last_mut() {
            Some(parent) => match parent.children.iter_mut().find(|(n, _)| n == name) {
                Some((_, c)) => {
                    *c += 1;
                    *c
                }
                None => {
                    parent.children.push((name.to_string(), 1));
                    1
                }
            },
            None => 1,
        };
        let ty = decl.as_ref().map(|d| d.ty.clone());
        self.stack.push(self.frame(name, index, ty));
        self.check_attributes(attrs);
    }

    fn frame(&self, name: &str, index: usize, ty: Option<TypeDef>) -> Frame {
        Frame {
            name: name.to_string(),
            index,
            ty,
            pos: 0,
            count: 0,
            text: String::new(),
            children: Vec::new(),
        }
    }

    fn check_attributes<K: AsRef<str>, V: AsRef<str>>(&mut self, attrs: &[(K, V)]) {
        let Some(top) = self.stack.last() else { return };
        match &top.ty {
            None => {}
            Some(TypeDef::Simple(_)) => {
                for (k, _) in attrs {
                    self.violation(
                        Some(k.as_ref()),
                        Rule::Unknown,
                        "the schema declares no attributes for this element".into(),
                        0,
                    );
                }
            }
            Some(TypeDef::Complex(ct)) => {
                let ct = ct.clone();
                let mut seen = std::mem::take(&mut self.seen);
                seen.clear();
                seen.resize(ct.attributes.len(), false);
                // Documents (and snodo's layouts) mostly write attributes in the schema's
                // order, so the declaration after the last one found is tried first: finding
                // each by name, and then each required one among the attributes, cost a
                // PS/PSA record about 4,000 instructions per element in string comparisons.
                let mut next = 0;
                for (k, v) in attrs {
                    let k = k.as_ref();
                    let found = match ct.attributes.get(next) {
                        Some(a) if a.name == k => Some(next),
                        _ => ct.attributes.iter().position(|a| a.name == k),
                    };
                    match found {
                        Some(i) => {
                            seen[i] = true;
                            next = i + 1;
                            let decl = &ct.attributes[i];
                            if let Err((rule, msg)) = decl.ty.check(v.as_ref()) {
                                self.violation(Some(k), rule, msg, decl.ty.line.max(decl.line));
                            }
                        }
                        None => {
                            let known: Vec<&str> =
                                ct.attributes.iter().map(|a| a.name.as_str()).collect();
                            self.violation(
                                Some(k),
                                Rule::Unknown,
                                format!(
                                    "the schema does not declare this attribute (declared: {})",
                                    if known.is_empty() {
                                        "none".to_string()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                                ct.line,
                            );
                        }
                    }
                }
                for (decl, _) in ct
                    .attributes
                    .iter()
                    .zip(&seen)
                    .filter(|(a, seen)| a.required && !**seen)
                {
                    self.violation(
                        Some(&decl.name),
                        Rule::Required,
                        "required attribute missing".into(),
                        decl.line,
                    );
                }
                self.seen = seen;
            }
        }
    }

    /// Moves the parent's content model forward over a child named `name`.
    fn advance(&mut self, name: &str) -> Option<Arc<ElementDecl>> {
        let top = self.stack.len() - 1;
        let ct = match &self.stack[top].ty {
            Some(TypeDef::Complex(ct)) => ct.clone(),
            Some(TypeDef::Simple(_)) => {
                self.violation(
                    None,
                    Rule::Structure,
                    format!("<{name}> is not allowed: this element holds only text"),
                    0,
                );
                return None;
            }
            None => return None,
        };
        let (pos, count) = (self.stack[top].pos, self.stack[top].count);
        // Where does `name` fit from the current position on?
        let mut found = None;
        for (j, p) in ct.content.iter().enumerate().skip(pos) {
            if let Some(d) = p.term.matches(name) {
                let used = if j == pos { count } else { 0 };
                if p.max.is_none_or(|m| used < m) {
                    found = Some((j, d.clone()));
                    break;
                }
            }
        }
        let Some((j, decl)) = found else {
            let allowed: Vec<String> = ct
                .content
                .iter()
                .skip(pos)
                .map(|p| p.term.describe())
                .collect();
            self.violation(
                None,
                Rule::Structure,
                if allowed.is_empty() {
                    format!("<{name}> is not allowed here: nothing more may follow")
                } else if ct.content.iter().any(|p| p.term.matches(name).is_some()) {
                    format!(
                        "<{name}> is out of order or repeated too often (next allowed: {})",
                        allowed.join(", ")
                    )
                } else {
                    format!(
                        "<{name}> is not allowed here (allowed: {})",
                        allowed.join(", ")
                    )
                },
                0,
            );
            return None;
        };
        for (k, p) in ct.content.iter().enumerate().take(j).skip(pos) {
            let used = if k == pos { count } else { 0 };
            if used < p.min {
                self.violation(
                    None,
                    Rule::Structure,
                    format!("{} is missing before <{name}>", p.term.describe()),
                    decl.line,
                );
            }
        }
        let f = &mut self.stack[top];
        if j != pos {
            f.pos = j;
            f.count = 0;
        }
        f.count += 1;
        Some(decl)
    }

    /// Text inside the current element.
    pub fn text(&mut self, t: &str) {
        let Some(top) = self.stack.last_mut() else {
            return;
        };
        match &top.ty {
            Some(TypeDef::Simple(_)) => top.text.push_str(t),
            Some(TypeDef::Complex(_)) if !t.trim().is_empty() => {
                let shown: String = t.trim().chars().take(20).collect();
                self.violation(
                    None,
                    Rule::Structure,
                    format!("text `{shown}` is not allowed here: this element holds only elements"),
                    0,
                );
            }
            _ => {}
        }
    }

    /// The current element ends.
    pub fn end(&mut self) {
        let Some(top) = self.stack.last() else {
            return;
        };
        match top.ty.clone() {
            Some(TypeDef::Simple(st)) => {
                let text = top.text.clone();
                if let Err((rule, msg)) = st.check(&text) {
                    self.violation(None, rule, msg, st.line);
                }
            }
            Some(TypeDef::Complex(ct)) => {
                let (pos, count) = (top.pos, top.count);
                for (k, p) in ct.content.iter().enumerate().skip(pos) {
                    let used = if k == pos { count } else { 0 };
                    if used < p.min {
                        self.violation(
                            None,
                            Rule::Structure,
                            format!("{} is missing", p.term.describe()),
                            ct.line,
                        );
                    }
                }
            }
            None => {}
        }
        self.stack.pop();
    }

    /// Ends validation and returns every violation found.
    pub fn finish(mut self) -> Vec<Violation> {
        if !self.stack.is_empty() {
            let open = self.path();
            self.violation(
                None,
                Rule::Syntax,
                format!("the document ends inside {open}"),
                0,
            );
        } else if !self.root_seen {
            self.violation(
                None,
                Rule::Syntax,
                "the document has no root element".into(),
                0,
            );
        }
        self.violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(body: &str) -> Schema {
        let text = format!(
            r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns="urn:t" targetNamespace="urn:t" elementFormDefault="qualified">{body}</xs:schema>"#
        );
        Schema::parse(&text, Path::new("t.xsd")).unwrap()
    }

    fn check(s: &Schema, doc: &str) -> Vec<Violation> {
        s.validate_reader(doc.as_bytes(), 100)
    }

    #[test]
    fn patterns_translate_to_anchored_regexes_with_xsd_semantics() {
        let p = |x: &str| Regex::new(&translate_pattern(x).unwrap()).unwrap();
        let cf = p(r"([A-Za-z]{6}\d{2}[A-Za-z]\d{2}[A-Za-z][A-Za-z0-9]{3}[A-Za-z])|(\d{11} {0,5})");
        assert!(cf.is_match("RSSMRA85T10A562S"));
        assert!(cf.is_match("12345678901  "));
        assert!(!cf.is_match("RSSMRA85T10A562SX"), "patterns are anchored");
        assert!(!cf.is_match("xRSSMRA85T10A562S"));
        let month = p(r"((0[1-9])|(1[0-2]))[/](19|20)[0-9]{2}");
        assert!(
            month.is_match("03/2012") && !month.is_match("13/2012") && !month.is_match("2012-03")
        );
        assert!(p("a$b").is_match("a$b"), "`$` is a literal in XSD");
        assert!(p(r"[a-z-[aeiou]]+").is_match("bcd") && !p(r"[a-z-[aeiou]]+").is_match("bad"));
        assert!(
            p(r"[\p{IsBasicLatin}]{1,3}").is_match("ab") && !p(r"[\p{IsBasicLatin}]").is_match("é")
        );
        assert!(p(".").is_match("x") && !p(".").is_match("\n"));
        assert!(translate_pattern(r"\p{IsGreek}").is_err());
    }

    #[test]
    fn simple_types_check_facets_and_lexical_spaces() {
        let s = schema(
            r#"<xs:simpleType name="Code"><xs:restriction base="xs:string"><xs:minLength value="5"/><xs:maxLength value="10"/></xs:restriction></xs:simpleType>
               <xs:simpleType name="Month"><xs:restriction base="xs:int"><xs:minInclusive value="1"/><xs:maxInclusive value="12"/></xs:restriction></xs:simpleType>
               <xs:simpleType name="Sex"><xs:restriction base="xs:string"><xs:enumeration value="1"/><xs:enumeration value="2"/></xs:restriction></xs:simpleType>
               <xs:element name="R"><xs:complexType>
                 <xs:attribute name="c" type="Code" use="required"/>
                 <xs:attribute name="m" type="Month"/>
                 <xs:attribute name="s" type="Sex"/>
                 <xs:attribute name="d" type="xs:date"/>
                 <xs:attribute name="n" type="xs:decimal"/>
               </xs:complexType></xs:element>"#,
        );
        assert!(
            check(
                &s,
                r#"<R xmlns="urn:t" c="A1.02" m="12" s="2" d="2025-02-28" n="-12.50"/>"#
            )
            .is_empty()
        );
        let v = check(
            &s,
            r#"<R xmlns="urn:t" c="A1" m="13" s="3" d="2025-02-30" n="1.234,5" x="?"/>"#,
        );
        let rules: Vec<(Option<&str>, Rule)> =
            v.iter().map(|v| (v.attribute.as_deref(), v.rule)).collect();
        assert_eq!(
            rules,
            vec![
                (Some("c"), Rule::Length),
                (Some("m"), Rule::Range),
                (Some("s"), Rule::Enumeration),
                (Some("d"), Rule::Type),
                (Some("n"), Rule::Type),
                (Some("x"), Rule::Unknown),
            ],
            "{v:#?}"
        );
        let v = check(&s, r#"<R xmlns="urn:t"/>"#);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].attribute.as_deref(), v[0].rule),
            (Some("c"), Rule::Required)
        );
        assert_eq!(v[0].path, "R");
    }

    #[test]
    fn content_models_report_missing_unexpected_and_out_of_order_elements() {
        let s = schema(
            r#"<xs:element name="F"><xs:complexType><xs:sequence>
                 <xs:element name="H" type="xs:string"/>
                 <xs:element name="B" maxOccurs="unbounded"><xs:complexType><xs:sequence>
                    <xs:element name="A" maxOccurs="2" type="xs:string"/>
                    <xs:element name="Z" minOccurs="0" type="xs:gYear"/>
                 </xs:sequence></xs:complexType></xs:element>
               </xs:sequence></xs:complexType></xs:element>"#,
        );
        assert!(
            check(
                &s,
                r#"<F xmlns="urn:t"><H>x</H><B><A/><A/><Z>2020</Z></B><B><A/></B></F>"#
            )
            .is_empty()
        );
        let v = check(&s, r#"<F xmlns="urn:t"><B><A/></B></F>"#);
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(
            v[0].message.contains("<H> is missing before <B>"),
            "{}",
            v[0]
        );
        let v = check(&s, r#"<F xmlns="urn:t"><H/><B><A/><A/><A/></B></F>"#);
        assert!(v[0].message.contains("repeated too often"), "{}", v[0]);
        assert_eq!(v[0].path, "F/B[1]");
        let v = check(&s, "<F xmlns=\"urn:t\"><H/><B><Z>20x0</Z></B>\n</F>");
        let msgs: Vec<String> = v.iter().map(|v| v.to_string()).collect();
        assert_eq!(v.len(), 2, "{msgs:#?}");
        assert!(msgs[0].contains("<A> is missing before <Z>"));
        assert_eq!(v[1].rule, Rule::Type);
        assert_eq!(v[1].path, "F/B[1]/Z[1]");
        let v = check(&s, r#"<F xmlns="urn:other"><H/><B><A/></B></F>"#);
        assert!(v.iter().any(|v| v.message.contains("namespace")), "{v:#?}");
        let v = check(&s, r#"<F xmlns="urn:t"><H/><B><A/></B>"#);
        assert!(v.iter().any(|v| v.rule == Rule::Syntax), "{v:#?}");
        let v = check(
            &s,
            r#"<!DOCTYPE F [<!ENTITY x "y">]><F xmlns="urn:t"><H>&x;</H></F>"#,
        );
        assert!(v.iter().any(|v| v.message.contains("DOCTYPE")), "{v:#?}");
    }

    #[test]
    fn unsupported_constructs_are_refused_with_their_line() {
        let text = "<xs:schema xmlns:xs=\"http://www.w3.org/2001/XMLSchema\">\n<xs:element name=\"A\"><xs:complexType>\n<xs:all/></xs:complexType></xs:element></xs:schema>";
        let e = Schema::parse(text, Path::new("x.xsd"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.xsd` line 3") && e.contains("xs:all"), "{e}");
    }

    #[test]
    fn the_collapse_shortcut_only_skips_values_collapsing_leaves_alone() {
        let collapse = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        for s in [
            "",
            "2025-01-31",
            "GE-2025-1",
            "a b c",
            " a",
            "a ",
            "a  b",
            "a\tb",
            "a\nb",
            "a\rb",
            "a\x0bb",
            "a\x0cb",
            "à b",
            "a\u{a0}b",
            "12.50",
            "-7",
        ] {
            if is_collapsed_ascii(s) {
                assert_eq!(collapse(s), s, "{s:?}");
            }
        }
        assert!(is_collapsed_ascii("2025-01-31") && is_collapsed_ascii("a b"));
        assert!(!is_collapsed_ascii(" 12 ") && !is_collapsed_ascii("a\x0bb"));
    }
}
