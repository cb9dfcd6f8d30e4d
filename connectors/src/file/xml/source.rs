use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use quick_xml::NsReader;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use snodo_core::component::{Source, SourceContext};
use snodo_core::error::{Error, Result};
use snodo_core::mask;
use snodo_core::record::{Batch, Checkpoint, Record, Reject, Schema, SourcePosition};
use snodo_core::value::{Text, Value};
use tokio::sync::mpsc;

use super::config::XmlSourceConfig;
use super::layout::{Bind, Element, Layout};
use super::xsd::{self, Builtin, TypeDef, Validator, Violation};
use crate::file::file_fingerprint;

/// Where a value read from the document goes.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    Header,
    Group,
    Record,
}

/// Turns an attribute or text back into a typed value, by the schema's type.
fn typed(text: &str, ty: Option<Builtin>, formatted: bool) -> Value {
    let t = text.trim();
    let parsed = match ty {
        _ if formatted => None,
        Some(Builtin::Decimal) => t.parse().ok().map(Value::Decimal),
        Some(
            Builtin::Int
            | Builtin::Long
            | Builtin::Short
            | Builtin::Byte
            | Builtin::Integer
            | Builtin::NonNegativeInteger
            | Builtin::PositiveInteger,
        ) => t.parse().ok().map(Value::Int),
        Some(Builtin::Date) => chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .ok()
            .map(Value::Date),
        Some(Builtin::Boolean) => match t {
            "true" | "1" => Some(Value::Bool(true)),
            "false" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::Str(Text::new(text)))
}

/// Reads a document into records, following the layout.
pub struct Extractor<'l> {
    layout: &'l Layout,
    names: Arc<Schema>,
    index: HashMap<String, usize>,
    header: Vec<Value>,
    group: Vec<Value>,
    record: Vec<Value>,
}

/// One record read, with the line where it starts and the violations found inside it.
pub struct Extracted {
    /// The record.
    pub record: Record,
    /// Schema violations inside the record's elements.
    pub violations: Vec<Violation>,
}

impl<'l> Extractor<'l> {
    /// An extractor for `layout`: the record fields are the header parameters and every
    /// field the layout binds, in layout order.
    pub fn new(layout: &'l Layout) -> Self {
        let mut names: Vec<String> = Vec::new();
        fn params(e: &Element, out: &mut Vec<String>) {
            for (_, b) in &e.attributes {
                if let Bind::Param(p) = b
                    && !out.contains(p)
                {
                    out.push(p.clone());
                }
            }
            for c in &e.children {
                params(c, out);
            }
        }
        for h in &layout.header {
            params(h, &mut names);
        }
        for f in layout.fields() {
            if !names.contains(&f) {
                names.push(f);
            }
        }
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let n = names.len();
        Extractor {
            layout,
            names: Schema::new(names),
            index,
            header: vec![Value::Null; n],
            group: vec![Value::Null; n],
            record: vec![Value::Null; n],
        }
    }

    fn set(&mut self, scope: Scope, field: &str, v: Value) {
        if let Some(&i) = self.index.get(field) {
            let target = match scope {
                Scope::Header => &mut self.header,
                Scope::Group => &mut self.group,
                Scope::Record => &mut self.record,
            };
            target[i] = v;
        }
    }

    fn push_item(&mut self, scope: Scope, field: &str, v: Value) {
        if let Some(&i) = self.index.get(field) {
            let target = match scope {
                Scope::Header => &mut self.header,
                Scope::Group => &mut self.group,
                Scope::Record => &mut self.record,
            };
            match &mut target[i] {
                Value::List(l) => l.push(v),
                other => *other = Value::List(vec![v]),
            }
        }
    }

    fn assemble(&self, position: SourcePosition) -> Record {
        let values = (0..self.names.len())
            .map(|i| {
                for src in [&self.record, &self.group, &self.header] {
                    if !src[i].is_null() {
                        return src[i].clone();
                    }
                }
                Value::Null
            })
            .collect();
        Record {
            schema: self.names.clone(),
            values,
            position,
        }
    }

    /// Reads `input`, calling `emit` for every record (stop by returning false).
    /// Violations outside the records (the root, the header, the structure between
    /// records) are returned; those inside a group but outside its records are given to
    /// every record of the group.
    pub fn read<R: BufRead>(
        &mut self,
        input: R,
        mut emit: impl FnMut(Extracted) -> bool,
    ) -> Result<Vec<Violation>> {
        let layout = self.layout;
        let mut reader = NsReader::from_reader(input);
        reader.config_mut().expand_empty_elements = true;
        let mut validator = Validator::new(&layout.schema);
        let mut routed = Routed::default();
        let mut buf = Vec::new();
        let mut line: u64 = 1;
        let mut text = String::new();
        let grouped = !layout.group_by.is_empty();
        // The layout element of each open XML element (None: not in the layout).
        let mut stack: Vec<(Option<&Element>, Scope)> = Vec::new();
        let mut record_no: u64 = 0;
        let mut record_start: Option<(u64, u64)> = None;
        let mut in_group = false;
        loop {
            buf.clear();
            let byte = reader.buffer_position();
            let (ns, ev) = match reader.read_resolved_event_into(&mut buf) {
                Ok(x) => x,
                Err(e) => {
                    routed.outside.push(Violation {
                        line: Some(line),
                        path: String::new(),
                        attribute: None,
                        rule: xsd::Rule::Syntax,
                        message: format!("not well-formed XML: {e}"),
                        xsd_line: 0,
                    });
                    break;
                }
            };
            let ns = match ns {
                ResolveResult::Bound(n) => Some(n.0.to_string()),
                _ => None,
            };
            match ev {
                Event::Start(e) => {
                    // Text before a child element (indentation) belongs to the parent.
                    validator.text(&text);
                    text.clear();
                    let name = e.local_name().as_ref().to_string();
                    let mut attrs = Vec::new();
                    for a in e.attributes().flatten() {
                        let (ans, local) = reader.resolver().resolve_attribute(a.key);
                        if matches!(ans, ResolveResult::Bound(n) if n.0 == xsd::XSI)
                            || a.key.0 == "xmlns"
                            || a.key.0.starts_with("xmlns:")
                        {
                            continue;
                        }
                        let v = a
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map(|c| c.into_owned())
                            .unwrap_or_default();
                        attrs.push((local.as_ref().to_string(), v));
                    }
                    let (le, scope) = match stack.last() {
                        None => (None, Scope::Header),
                        Some((None, s)) if stack.len() == 1 => {
                            if name == layout.record.name {
                                let s = if grouped { Scope::Group } else { Scope::Record };
                                (Some(&layout.record), s)
                            } else {
                                (layout.header.iter().find(|h| h.name == name), *s)
                            }
                        }
                        Some((Some(parent), s)) => {
                            let c = parent.children.iter().find(|c| c.name == name);
                            let s = match c {
                                Some(c) if c.per_record && stack.len() == 2 => Scope::Record,
                                _ => *s,
                            };
                            (c, s)
                        }
                        Some((None, s)) => (None, *s),
                    };
                    let is_record_element = le.is_some_and(|l| std::ptr::eq(l, &layout.record));
                    if is_record_element && grouped {
                        self.group.iter_mut().for_each(|v| *v = Value::Null);
                        routed.group.clear();
                        in_group = true;
                    }
                    let is_record_start = (is_record_element && !grouped)
                        || le.is_some_and(|l| l.per_record && stack.len() == 2);
                    if is_record_start {
                        self.record.iter_mut().for_each(|v| *v = Value::Null);
                        record_start = Some((line, byte));
                    }
                    validator.start_at(line, &name, ns.as_deref(), &attrs);
                    routed.route(&validator, record_start.is_some(), in_group);
                    if let Some(l) = le
                        && let TypeDef::Complex(ct) = &l.decl.ty
                    {
                        for (attr, bind) in &l.attributes {
                            let Some((_, raw)) = attrs.iter().find(|(k, _)| k == attr) else {
                                continue;
                            };
                            let ty = ct.attribute(attr).map(|a| a.ty.base);
                            match bind {
                                Bind::Field(f, fmt) => {
                                    let v = typed(raw, ty, fmt.is_some());
                                    self.set(scope, f.name(), v);
                                }
                                Bind::Param(p) => {
                                    self.set(Scope::Header, p, Value::Str(Text::new(raw)))
                                }
                                Bind::Const(_) | Bind::Item(_) => {}
                            }
                        }
                    }
                    stack.push((le, scope));
                }
                Event::End(_) => {
                    validator.text(&text);
                    if let Some((Some(l), scope)) = stack.last().copied()
                        && let Some(bind) = &l.text
                    {
                        let base = match &l.decl.ty {
                            TypeDef::Simple(s) => Some(s.base),
                            TypeDef::Complex(_) => None,
                        };
                        match bind {
                            Bind::Field(f, fmt) => {
                                let v = typed(&text, base, fmt.is_some());
                                self.set(scope, f.name(), v);
                            }
                            Bind::Item(fmt) => {
                                if let Some(f) = &l.for_each {
                                    let v = typed(&text, base, fmt.is_some());
                                    self.push_item(scope, f.name(), v);
                                }
                            }
                            Bind::Param(_) | Bind::Const(_) => {}
                        }
                    }
                    text.clear();
                    validator.end();
                    routed.route(&validator, record_start.is_some(), in_group);
                    let (le, _) = stack.pop().unwrap_or((None, Scope::Header));
                    let is_record_element = le.is_some_and(|l| std::ptr::eq(l, &layout.record));
                    if is_record_element && grouped {
                        in_group = false;
                    }
                    let is_record_end = (is_record_element && !grouped)
                        || le.is_some_and(|l| l.per_record && stack.len() == 2);
                    if is_record_end && let Some((l0, b0)) = record_start.take() {
                        record_no += 1;
                        let mut violations = routed.group.clone();
                        violations.append(&mut routed.record);
                        let record = self.assemble(SourcePosition {
                            record: record_no,
                            line: Some(l0),
                            byte: Some(b0),
                            key: None,
                        });
                        if !emit(Extracted { record, violations }) {
                            return Ok(routed.outside);
                        }
                    }
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
                        other => {
                            return Err(Error::Input(format!(
                                "line {line}: unknown entity `&{other};` (DTD entities are refused)"
                            )));
                        }
                    },
                },
                Event::DocType(_) => {
                    return Err(Error::Input(format!(
                        "line {line}: a DOCTYPE is refused (no DTDs, no entity expansion)"
                    )));
                }
                Event::Decl(d) => {
                    if let Err(msg) = xsd::check_declaration(&d) {
                        return Err(Error::Input(format!("line {line}: {msg}")));
                    }
                }
                Event::Eof => break,
                _ => {}
            }
            line += count_newlines(&buf);
        }
        let all = validator.finish();
        routed.outside.extend(all.into_iter().skip(routed.seen));
        Ok(routed.outside)
    }
}

/// Violations sorted by where they belong.
#[derive(Default)]
struct Routed {
    seen: usize,
    record: Vec<Violation>,
    group: Vec<Violation>,
    outside: Vec<Violation>,
}

impl Routed {
    fn route(&mut self, v: &Validator, in_record: bool, in_group: bool) {
        let new = v.violations_since(self.seen);
        self.seen += new.len();
        let target = if in_record {
            &mut self.record
        } else if in_group {
            &mut self.group
        } else {
            &mut self.outside
        };
        target.extend(new);
    }
}

fn count_newlines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// The `xml` source.
pub struct XmlSource {
    cfg: XmlSourceConfig,
}

impl XmlSource {
    /// Builds the source.
    pub fn new(cfg: XmlSourceConfig) -> Self {
        XmlSource { cfg }
    }

    fn read_all(
        self,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> Result<()> {
        let layout = Layout::load(Path::new(&self.cfg.layout))?;
        let path = Path::new(&self.cfg.path);
        let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // Records are grouped and nested, so there is no byte offset to resume from: a
        // resumed run reads the document again and skips the records already delivered.
        let skip = from
            .as_ref()
            .and_then(|c| c.get("records"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let mut ex = Extractor::new(&layout);
        let mut batch = Batch {
            seq: 1,
            ..Default::default()
        };
        let mut delivered = 0u64;
        let mut stopped = false;
        let personal = ctx.personal.clone();
        let outside = ex.read(std::io::BufReader::with_capacity(1 << 16, file), |x| {
            let n = x.record.position.record;
            if n <= skip {
                return true;
            }
            if ctx.limit.is_some_and(|l| delivered >= l) {
                stopped = true;
                return false;
            }
            delivered += 1;
            batch.read += 1;
            if x.violations.is_empty() {
                batch.records.push(x.record);
            } else {
                let code = x.violations[0].rule.code().to_string();
                let reason = x
                    .violations
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                batch.rejects.push(Reject {
                    step: "source".into(),
                    code,
                    reason: mask::scrub_personal(&reason, &x.record, &personal),
                    position: x.record.position.clone(),
                    payload: mask::masked_payload(&x.record, &personal),
                });
            }
            if batch.read as usize >= ctx.batch_size {
                let seq = batch.seq;
                let mut full = std::mem::replace(
                    &mut batch,
                    Batch {
                        seq: seq + 1,
                        ..Default::default()
                    },
                );
                full.checkpoint = serde_json::json!({ "records": n });
                full.bytes_read = size;
                if tx.blocking_send(full).is_err() {
                    stopped = true;
                    return false;
                }
            }
            true
        })?;
        if !outside.is_empty() && !stopped {
            return Err(Error::Input(format!(
                "`{}` does not satisfy `{}` outside its records: {}",
                path.display(),
                layout.schema_file.display(),
                mask::redact_text(
                    &outside
                        .iter()
                        .take(10)
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            )));
        }
        if batch.read > 0 {
            batch.checkpoint = serde_json::json!({ "records": skip + delivered });
            batch.bytes_read = size;
            let _ = tx.blocking_send(batch);
        }
        Ok(())
    }
}

impl Source for XmlSource {
    fn fingerprint(&self) -> String {
        file_fingerprint(Path::new(&self.cfg.path))
    }
    fn size_hint(&self) -> Option<u64> {
        std::fs::metadata(&self.cfg.path).ok().map(|m| m.len())
    }
    fn describe(&self) -> String {
        format!("xml {} (layout {})", self.cfg.path, self.cfg.layout)
    }
    fn run(
        self: Box<Self>,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.read_all(from, ctx, tx))
                .await
                .map_err(|e| Error::Other(format!("the XML reader stopped unexpectedly: {e}")))?
        })
    }
}
