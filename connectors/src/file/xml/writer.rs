//! Streams rendered records into an XML document: the root and header once, then one
//! element per record or per group of records, then the closing tags. Only the few bytes
//! of the current batch are ever in memory; the one piece of state that crosses batches
//! (which group is open) is saved with the checkpoint so that a resumed run continues the
//! same element.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::layout::{Layout, Rendered, XElem};

/// What survives between batches, saved with the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WriterState {
    /// The `group_by` values of the element left open by the last batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_group: Option<Vec<String>>,
    /// Record elements (groups) written.
    pub groups: u64,
    /// Records written.
    pub records: u64,
    /// True once the root element and the header are written.
    pub started: bool,
}

/// Serialises records as the layout says.
pub struct XmlWriter {
    layout: Arc<Layout>,
    /// The state, public so that sinks can save and restore it.
    pub state: WriterState,
}

/// Escapes text for an attribute value. Newlines and tabs become character references:
/// written raw, attribute-value normalisation would turn them into spaces.
pub fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

/// Escapes element text (`\r` as a reference so that it survives end-of-line handling).
pub fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

fn indent(depth: usize, out: &mut String) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn start_tag(e: &XElem, depth: usize, out: &mut String, xmlns: Option<&str>, close: bool) {
    indent(depth, out);
    out.push('<');
    out.push_str(&e.name);
    if let Some(ns) = xmlns {
        out.push_str(" xmlns=\"");
        escape_attr(ns, out);
        out.push('"');
    }
    for (k, v) in &e.attrs {
        out.push(' ');
        out.push_str(k);
        out.push_str("=\"");
        escape_attr(v, out);
        out.push('"');
    }
    out.push_str(if close { "/>\n" } else { ">" });
}

fn end_tag(name: &str, depth: usize, out: &mut String) {
    indent(depth, out);
    out.push_str("</");
    out.push_str(name);
    out.push_str(">\n");
}

/// Writes a whole element at `depth`.
pub fn write_element(e: &XElem, depth: usize, out: &mut String) {
    if e.children.is_empty() && e.text.is_none() {
        start_tag(e, depth, out, None, true);
        return;
    }
    start_tag(e, depth, out, None, false);
    if let Some(t) = &e.text {
        escape_text(t, out);
        out.push_str("</");
        out.push_str(&e.name);
        out.push_str(">\n");
        return;
    }
    out.push('\n');
    for c in &e.children {
        write_element(c, depth + 1, out);
    }
    end_tag(&e.name, depth, out);
}

/// A rendered record as the text it becomes in the document. Sinks build it on the step
/// workers, so that only these bytes, not element trees (several times larger), wait in
/// the channels between the workers and the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedText {
    /// The values of the `group_by` fields.
    pub group: Vec<String>,
    /// For a grouped layout, the record element's start tag and its group children,
    /// written when the group opens; empty otherwise.
    pub open: String,
    /// The record's own part: its per-record children (grouped layout) or its whole
    /// element.
    pub body: String,
}

impl RenderedText {
    /// The text of `r` as `layout` places it in a document.
    pub fn new(layout: &Layout, r: &Rendered) -> Self {
        let e = &r.element;
        if layout.group_by.is_empty() {
            let mut body = String::with_capacity(1024);
            write_element(e, 1, &mut body);
            return RenderedText {
                group: r.group.clone(),
                open: String::new(),
                body,
            };
        }
        let mut open = String::with_capacity(512);
        start_tag(e, 1, &mut open, None, false);
        open.push('\n');
        for c in e.children.iter().filter(|c| !c.per_record) {
            write_element(c, 2, &mut open);
        }
        let mut body = String::with_capacity(512);
        for c in e.children.iter().filter(|c| c.per_record) {
            write_element(c, 2, &mut body);
        }
        RenderedText {
            group: r.group.clone(),
            open,
            body,
        }
    }
}

impl XmlWriter {
    /// A writer for `layout`.
    pub fn new(layout: Arc<Layout>) -> Self {
        XmlWriter {
            layout,
            state: WriterState::default(),
        }
    }

    /// The XML declaration, the root's start tag and the header.
    pub fn start_document(&mut self, header: &[XElem], out: &mut String) {
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<");
        out.push_str(&self.layout.root);
        if let Some(ns) = &self.layout.namespace {
            out.push_str(" xmlns=\"");
            escape_attr(ns, out);
            out.push('"');
        }
        out.push_str(">\n");
        for h in header {
            write_element(h, 1, out);
        }
        self.state.started = true;
    }

    /// Appends one record: a new element, or the record's part of the open group's.
    pub fn write(&mut self, r: &Rendered, out: &mut String) {
        let text = RenderedText::new(&self.layout, r);
        self.write_text(&text, out);
    }

    /// Appends one record already turned into text (see [`RenderedText`]).
    pub fn write_text(&mut self, r: &RenderedText, out: &mut String) {
        self.state.records += 1;
        if self.layout.group_by.is_empty() {
            out.push_str(&r.body);
            self.state.groups += 1;
            return;
        }
        if self.state.open_group.as_ref() != Some(&r.group) {
            if self.state.open_group.is_some() {
                end_tag(&self.layout.record.name, 1, out);
            }
            out.push_str(&r.open);
            self.state.open_group = Some(r.group.clone());
            self.state.groups += 1;
        }
        out.push_str(&r.body);
    }

    /// Closes the open group and the root.
    pub fn end_document(&mut self, out: &mut String) {
        if self.state.open_group.take().is_some() {
            end_tag(&self.layout.record.name, 1, out);
        }
        end_tag(&self.layout.root, 0, out);
    }

    /// A complete document with one record: the WaaS channel's unit (one beneficiary, one
    /// prestazione per flow).
    pub fn single(layout: &Arc<Layout>, header: &[XElem], r: &RenderedText) -> String {
        let mut w = XmlWriter::new(layout.clone());
        let mut out = String::with_capacity(2048);
        w.start_document(header, &mut out);
        w.write_text(r, &mut out);
        w.end_document(&mut out);
        out
    }
}
