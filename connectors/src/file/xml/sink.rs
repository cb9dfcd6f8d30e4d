use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use snodo_core::component::{Artifact, Prepare, Prepared, SavedCheckpoint, Sink};
use snodo_core::error::{Error, Result};
use snodo_core::record::{Batch, Record, Reject};
use snodo_core::steps::StepContext;

use super::config::XmlSinkConfig;
use super::layout::{Layout, RecordProblem, XElem};
use super::release::{ReleaseCheck, release_checks};
use super::writer::{RenderedText, WriterState, XmlWriter};
use crate::file::output::OutputFile;

/// Renders and checks records one by one (see [`Prepare`]): on the step workers, in
/// parallel, when the runtime prepares the batch.
struct XmlPrepare {
    layout: Arc<Layout>,
    params: indexmap::IndexMap<String, String>,
}

type Checked = Vec<std::result::Result<RenderedText, Vec<RecordProblem>>>;

impl XmlPrepare {
    fn render(&self, records: &[Record]) -> Checked {
        records
            .iter()
            .map(|r| {
                self.layout
                    .render_record(r, &self.params)
                    .map(|e| RenderedText::new(&self.layout, &e))
            })
            .collect()
    }
}

impl Prepare for XmlPrepare {
    fn prepare(&self, records: &mut [Record]) -> Prepared {
        Box::new(self.render(records))
    }
}

/// Sorts the records of a batch by what [`XmlPrepare`] made of them (rendering them now
/// when the batch was not prepared): the valid ones stay in the batch with their rendered
/// element in `pending`, the others become rejects of step `sink`, one per record, with
/// every problem of the record in the reason.
fn check_batch(
    prep: &XmlPrepare,
    batch: &mut Batch,
    ctx: &StepContext,
    pending: &mut VecDeque<RenderedText>,
) {
    // What was accepted from a batch that was never written (a dry run, a run stopped by
    // its reject limit) is forgotten: one batch at most is held, whatever the input's size.
    pending.clear();
    let records = std::mem::take(&mut batch.records);
    let checked = match batch
        .prepared
        .take()
        .and_then(|p| p.downcast::<Checked>().ok())
    {
        Some(c) if c.len() == records.len() => *c,
        _ => prep.render(&records),
    };
    let mut kept = Vec::with_capacity(records.len());
    for (r, c) in records.into_iter().zip(checked) {
        match c {
            Ok(rendered) => {
                pending.push_back(rendered);
                kept.push(r);
            }
            Err(problems) => batch.rejects.push(xsd_reject(&problems, &r, ctx)),
        }
    }
    batch.records = kept;
}

/// The rendered elements of `records`: those `check` prepared, or rendered now when the
/// batch did not go through `check` (a record that fails now is an internal error: every
/// record reaching `write` passed `check`).
fn take_rendered(
    prep: &XmlPrepare,
    records: &[Record],
    pending: &mut VecDeque<RenderedText>,
) -> Result<Vec<RenderedText>> {
    if pending.len() == records.len() {
        return Ok(pending.drain(..).collect());
    }
    pending.clear();
    records
        .iter()
        .zip(prep.render(records))
        .map(|(r, c)| {
            c.map_err(|p| {
                Error::Other(format!(
                    "record {} was not checked before being written: {}",
                    r.position,
                    p.iter().map(|p| p.reason()).collect::<Vec<_>>().join("; ")
                ))
            })
        })
        .collect()
}

/// The reject of a record whose element breaks the XSD: the first rule's code, and every
/// problem (location, field, rule) in the reason.
pub fn xsd_reject(problems: &[RecordProblem], r: &Record, ctx: &StepContext) -> Reject {
    let code = problems
        .first()
        .map(|p| p.violation.rule.code())
        .unwrap_or("xsd");
    let reason = problems
        .iter()
        .map(|p| p.reason())
        .collect::<Vec<_>>()
        .join("; ");
    ctx.reject("sink", code.to_string(), reason, r)
}

/// The `xml` sink.
pub struct XmlSink {
    cfg: XmlSinkConfig,
    layout: Arc<Layout>,
    header: Vec<XElem>,
    out: OutputFile,
    writer: XmlWriter,
    pending: VecDeque<RenderedText>,
    prep: Arc<XmlPrepare>,
    /// The release checks, fed each batch as it is appended (started with the first).
    checks: Option<ReleaseCheck>,
}

impl XmlSink {
    /// Loads the layout and renders the header: a bad layout or parameter fails here,
    /// before anything is read.
    pub fn new(cfg: XmlSinkConfig) -> Result<Self> {
        let layout = Layout::load(Path::new(&cfg.layout))?;
        let header = layout.render_header(&cfg.params)?;
        Ok(XmlSink {
            out: OutputFile::new(&cfg.path, &cfg.destination),
            writer: XmlWriter::new(layout.clone()),
            prep: Arc::new(XmlPrepare {
                layout: layout.clone(),
                params: cfg.params.clone(),
            }),
            layout,
            header,
            cfg,
            pending: VecDeque::new(),
            checks: None,
        })
    }
}

impl Sink for XmlSink {
    fn describe(&self) -> String {
        format!("xml {} (layout {})", self.cfg.path, self.cfg.layout)
    }

    fn open<'a>(&'a mut self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<SavedCheckpoint>>> {
        Box::pin(async move { self.out.open(pipeline) })
    }

    fn begin<'a>(&'a mut self, resume: Option<&'a SavedCheckpoint>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.out.begin(resume)?;
            self.writer.state = match resume {
                Some(_) => serde_json::from_value(self.out.state().clone()).unwrap_or_default(),
                None => WriterState::default(),
            };
            Ok(())
        })
    }

    fn check<'a>(
        &'a mut self,
        batch: &'a mut Batch,
        ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            check_batch(&self.prep, batch, ctx, &mut self.pending);
            Ok(())
        })
    }

    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        Some(self.prep.clone())
    }

    fn keys(&self, records: &[Record]) -> Vec<String> {
        let first = self.writer.state.records;
        (1..=records.len() as u64)
            .map(|i| format!("{}#{}", self.cfg.path, first + i))
            .collect()
    }

    fn write<'a>(
        &'a mut self,
        records: &'a [Record],
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let rendered = take_rendered(&self.prep, records, &mut self.pending)?;
            let mut text = String::with_capacity(rendered.len() * 1024);
            if !rendered.is_empty() && !self.writer.state.started {
                self.writer.start_document(&self.header, &mut text);
            }
            for r in &rendered {
                self.writer.write_text(r, &mut text);
            }
            self.out.set_state(
                serde_json::to_value(&self.writer.state)
                    .map_err(|e| Error::Other(e.to_string()))?,
            );
            if self.checks.is_none() {
                // A resumed document's file already holds its first batches.
                let mut checks = ReleaseCheck::start(
                    self.layout.schema.clone(),
                    &self.layout.schema_file,
                    self.cfg.xmllint,
                )?;
                checks.feed_file(self.out.partial())?;
                self.checks = Some(checks);
            }
            self.out
                .append(text.as_bytes(), rendered.len() as u64, checkpoint)?;
            if let Some(c) = self.checks.as_mut() {
                c.feed(text.as_bytes());
            }
            Ok(())
        })
    }

    fn finish<'a>(
        &'a mut self,
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<Vec<Artifact>>> {
        Box::pin(async move {
            if self.writer.state.records == 0 {
                tracing::info!(path = %self.cfg.path, "no records to write: no document is produced");
                self.out.discard()?;
                return Ok(Vec::new());
            }
            let mut tail = String::new();
            self.writer.end_document(&mut tail);
            self.out.append_tail(tail.as_bytes())?;
            let checks = match self.checks.take() {
                Some(mut c) => {
                    c.feed(tail.as_bytes());
                    c.finish(self.out.partial())?
                }
                // A resumed document whose batches were all written before the run
                // stopped: none went through this run's `write`, so it is checked whole.
                None => release_checks(
                    self.layout.schema.clone(),
                    &self.layout.schema_file,
                    self.out.partial(),
                    self.cfg.xmllint,
                )?,
            };
            let mut artifact = self.out.finish(checkpoint)?;
            artifact.checks = checks;
            Ok(vec![artifact])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snodo_core::expr::ExprEngine;
    use snodo_core::record::{Schema, SourcePosition};
    use snodo_core::value::Value;

    /// A sink writing `<r><n v="…"/>…</r>` into `dir`, with a layout and schema of its own.
    fn sink(dir: &Path) -> XmlSink {
        std::fs::write(
            dir.join("n.xsd"),
            r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="r"><xs:complexType><xs:sequence>
    <xs:element name="n" maxOccurs="unbounded"><xs:complexType>
      <xs:attribute name="v" type="xs:int" use="required"/>
    </xs:complexType></xs:element>
  </xs:sequence></xs:complexType></xs:element>
</xs:schema>"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("n.yaml"),
            "schema: n.xsd\nroot: r\nrecord:\n  element: n\n  attributes:\n    v: v\n",
        )
        .unwrap();
        let cfg: XmlSinkConfig = serde_json::from_value(serde_json::json!({
            "path": dir.join("out.xml").display().to_string(),
            "layout": dir.join("n.yaml").display().to_string(),
            "xmllint": "off",
        }))
        .unwrap();
        XmlSink::new(cfg).unwrap()
    }

    fn batch(values: &[&str], first: u64) -> Batch {
        let schema = Schema::new(vec!["v".to_string()]);
        Batch {
            seq: first,
            records: values
                .iter()
                .enumerate()
                .map(|(i, v)| Record {
                    schema: schema.clone(),
                    values: vec![Value::Str((*v).into())],
                    position: SourcePosition {
                        record: first + i as u64,
                        ..Default::default()
                    },
                })
                .collect(),
            rejects: Vec::new(),
            filtered: 0,
            read: values.len() as u64,
            checkpoint: serde_json::Value::Null,
            bytes_read: 0,
            prepared: None,
        }
    }

    fn checkpoint() -> SavedCheckpoint {
        SavedCheckpoint {
            fingerprint: String::new(),
            position: serde_json::Value::Null,
            done: false,
            run_id: "t".into(),
            records_read: 0,
            records_written: 0,
            records_rejected: 0,
        }
    }

    #[tokio::test]
    async fn writes_checks_as_it_goes_and_rejects_what_breaks_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        let ctx = StepContext::new(Arc::new(ExprEngine::new()), Vec::new());
        assert!(s.open("p").await.unwrap().is_none());
        s.begin(None).await.unwrap();
        for (i, values) in [&["1", "2"][..], &["x", "3"][..]].into_iter().enumerate() {
            let mut b = batch(values, 1 + 2 * i as u64);
            s.check(&mut b, &ctx).await.unwrap();
            s.write(&b.records, &checkpoint()).await.unwrap();
            if i == 1 {
                assert_eq!(b.rejects.len(), 1, "`x` is not an xs:int");
                assert!(b.rejects[0].reason.contains("v"), "{}", b.rejects[0].reason);
            }
        }
        let done = SavedCheckpoint {
            done: true,
            ..checkpoint()
        };
        let artifacts = s.finish(&done).await.unwrap();
        assert_eq!(artifacts[0].checks, vec!["xsd:n.xsd".to_string()]);
        assert_eq!(artifacts[0].rows, 3);
        let text = std::fs::read_to_string(dir.path().join("out.xml")).unwrap();
        assert!(
            text.contains(r#"<n v="1"/>"#)
                && text.contains(r#"<n v="3"/>"#)
                && !text.contains(r#"v="x""#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_batch_checked_but_never_written_is_not_kept() {
        // A dry run checks every batch and writes none: the sink must not hold them all.
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        let ctx = StepContext::new(Arc::new(ExprEngine::new()), Vec::new());
        for i in 0..10 {
            let mut b = batch(&["1", "2", "3"], 1 + 3 * i);
            s.check(&mut b, &ctx).await.unwrap();
        }
        assert_eq!(s.pending.len(), 3);
    }
}
