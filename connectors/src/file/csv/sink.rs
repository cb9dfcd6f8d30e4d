use futures::future::BoxFuture;
use snodo_core::component::{Artifact, SavedCheckpoint, Sink};
use snodo_core::error::{Error, Result};
use snodo_core::record::Record;
use snodo_core::value::Value;

use super::config::{CsvSinkConfig, LineEnding, single_byte};
use crate::file::output::OutputFile;

/// Writes records as delimited text through a crash-safe [`OutputFile`].
pub struct CsvSink {
    cfg: CsvSinkConfig,
    out: OutputFile,
    columns: Option<Vec<String>>,
}

impl CsvSink {
    /// Builds the sink.
    pub fn new(cfg: CsvSinkConfig) -> Self {
        CsvSink {
            out: OutputFile::new(&cfg.path, &cfg.destination),
            columns: cfg.columns.clone(),
            cfg,
        }
    }

    fn render(&self, v: &Value) -> String {
        match v {
            Value::Null => String::new(),
            Value::Decimal(d) => {
                let s = d.to_string();
                if self.cfg.decimal_separator == "." {
                    s
                } else {
                    s.replace('.', &self.cfg.decimal_separator)
                }
            }
            Value::Date(d) => d.format(&self.cfg.date_format).to_string(),
            other => other.to_text().unwrap_or_default(),
        }
    }

    fn encode(&mut self, records: &[Record]) -> Result<Vec<u8>> {
        let delimiter = single_byte(&self.cfg.delimiter).unwrap_or(b',');
        let terminator = match self.cfg.line_ending {
            LineEnding::Lf => csv::Terminator::Any(b'\n'),
            LineEnding::Crlf => csv::Terminator::CRLF,
        };
        let mut w = csv::WriterBuilder::new()
            .delimiter(delimiter)
            .terminator(terminator)
            .from_writer(Vec::with_capacity(records.len() * 128));
        // Columns come from the configuration or from the first record ever written; a
        // batch with no records (all rejected or filtered) must not fix them to nothing.
        if self.columns.is_none() {
            match records.first() {
                Some(r) => self.columns = Some(r.schema.names().to_vec()),
                None => return Ok(Vec::new()),
            }
        }
        let columns = self.columns.clone().unwrap_or_default();
        let mut buf = Vec::new();
        let mut fields: Vec<Vec<u8>> = Vec::with_capacity(columns.len());
        let csv_err = |e: csv::Error| Error::Other(format!("encoding CSV: {e}"));
        if self.cfg.header && self.out.is_empty() {
            fields.clear();
            for c in &columns {
                buf.clear();
                self.cfg.encoding.encode(c, &mut buf).map_err(|ch| {
                    Error::Input(format!(
                        "column name `{c}` has `{ch}`, which {:?} cannot represent",
                        self.cfg.encoding
                    ))
                })?;
                fields.push(buf.clone());
            }
            w.write_record(&fields).map_err(csv_err)?;
        }
        for (i, r) in records.iter().enumerate() {
            fields.clear();
            for c in &columns {
                let text = r.get(c).map(|v| self.render(v)).unwrap_or_default();
                buf.clear();
                self.cfg.encoding.encode(&text, &mut buf).map_err(|ch| {
                    Error::Input(format!(
                        "output row {} (source {}): field `{c}` has the character `{ch}`, which the output encoding cannot represent; \
                         clean it in a `map` step or write UTF-8",
                        self.out.rows() + i as u64 + 1,
                        r.position
                    ))
                })?;
                fields.push(buf.clone());
            }
            w.write_record(&fields).map_err(csv_err)?;
        }
        w.into_inner()
            .map_err(|e| Error::Other(format!("encoding CSV: {e}")))
    }
}

impl Sink for CsvSink {
    fn describe(&self) -> String {
        format!("csv {}", self.cfg.path)
    }

    fn open<'a>(&'a mut self, pipeline: &'a str) -> BoxFuture<'a, Result<Option<SavedCheckpoint>>> {
        Box::pin(async move { self.out.open(pipeline) })
    }

    fn begin<'a>(&'a mut self, resume: Option<&'a SavedCheckpoint>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.out.begin(resume) })
    }

    fn keys(&self, records: &[Record]) -> Vec<String> {
        let first = self.out.rows();
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
            let data = self.encode(records)?;
            self.out.append(&data, records.len() as u64, checkpoint)?;
            Ok(())
        })
    }

    fn finish<'a>(
        &'a mut self,
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<Vec<Artifact>>> {
        Box::pin(async move {
            if self.out.is_empty() && self.cfg.header && self.columns.is_some() {
                // No records at all but known columns: publish a file with just the header,
                // so the consumer sees an empty delivery rather than a missing one.
                let data = self.encode(&[])?;
                self.out.append(&data, 0, checkpoint)?;
            }
            Ok(vec![self.out.finish(checkpoint)?])
        })
    }
}
