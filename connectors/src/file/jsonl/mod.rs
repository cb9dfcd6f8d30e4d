//! JSON lines: one JSON object per line, in and out.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use snodo_core::component::{Artifact, SavedCheckpoint, Sink, Source, SourceContext};
use snodo_core::config::Check;
use snodo_core::config::yaml::{Node, Problem};
use snodo_core::error::{Error, Result};
use snodo_core::mask;
use snodo_core::record::{Batch, Checkpoint, Record, Reject, Schema, SourcePosition};
use snodo_core::value::Value;
use tokio::sync::mpsc;

use crate::file::file_fingerprint;
use crate::file::output::OutputFile;

/// Reads a JSON-lines file (`.jsonl`, `.ndjson`). Numbers with a fraction become exact
/// decimals, read from their digits.
///
/// ```yaml
/// source:
///   jsonl: { path: in/eventi.jsonl }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct JsonlSourceConfig {
    /// Path of the file.
    pub path: String,
    /// Longest accepted line in bytes (default 1 MiB); longer lines reject the record.
    #[serde(default = "max_line")]
    pub max_line_length: usize,
}

fn max_line() -> usize {
    1 << 20
}

/// Writes a JSON-lines file.
///
/// ```yaml
/// sink:
///   jsonl: { path: out/assistiti.jsonl }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct JsonlSinkConfig {
    /// Path of the file to produce. It appears only when the run completes.
    pub path: String,
    /// Where the file is meant to go, recorded in the flow log (default `local`).
    #[serde(default = "local")]
    pub destination: String,
}

fn local() -> String {
    "local".into()
}

impl Check for JsonlSourceConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        crate::file::check_input_file(node, path, "jsonl", &self.path, out);
    }
}

impl Check for JsonlSinkConfig {
    fn check(&self, _node: &Node, _path: &str, _out: &mut Vec<Problem>) {}
}

/// The JSON-lines source.
pub struct JsonlSource {
    cfg: JsonlSourceConfig,
}

impl JsonlSource {
    /// Builds the source.
    pub fn new(cfg: JsonlSourceConfig) -> Self {
        JsonlSource { cfg }
    }

    fn read_all(
        self,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> Result<()> {
        let path = PathBuf::from(&self.cfg.path);
        let mut file = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        let (mut byte, mut line_no) = match &from {
            Some(c) => (
                c.get("byte").and_then(|v| v.as_u64()).unwrap_or(0),
                c.get("line").and_then(|v| v.as_u64()).unwrap_or(0),
            ),
            None => (0, 0),
        };
        file.seek(SeekFrom::Start(byte))
            .map_err(|e| Error::io("seeking", &path, e))?;
        let mut rdr = BufReader::with_capacity(1 << 16, file);
        let mut schema: Option<Arc<Schema>> = None;
        let mut buf = Vec::new();
        let mut seq = 0;
        let mut total = 0u64;
        loop {
            seq += 1;
            let mut batch = Batch {
                seq,
                ..Default::default()
            };
            let mut done = false;
            while batch.read < ctx.batch_size as u64 {
                if ctx.limit.is_some_and(|l| total >= l) {
                    done = true;
                    break;
                }
                buf.clear();
                // Bounded read: a line longer than the limit is consumed but not kept.
                let n = read_line_bounded(&mut rdr, &mut buf, self.cfg.max_line_length)
                    .map_err(|e| Error::io("reading", &path, e))?;
                if n == 0 {
                    done = true;
                    break;
                }
                let start = byte;
                byte += n as u64;
                line_no += 1;
                let text = trim_line(&buf);
                if text.is_empty() && n <= self.cfg.max_line_length {
                    continue;
                }
                batch.read += 1;
                total += 1;
                let pos = SourcePosition {
                    record: line_no,
                    line: Some(line_no),
                    byte: Some(start),
                    key: None,
                };
                let bad = |code: &str, reason: String, pos: SourcePosition| Reject {
                    step: "source".into(),
                    code: code.into(),
                    reason: mask::redact_text(&reason),
                    position: pos,
                    payload: serde_json::Value::Null,
                };
                if n > self.cfg.max_line_length {
                    batch.rejects.push(bad(
                        "oversized_field",
                        format!(
                            "line is {n} bytes, more than max_line_length {}",
                            self.cfg.max_line_length
                        ),
                        pos,
                    ));
                    continue;
                }
                match serde_json::from_slice::<serde_json::Value>(text) {
                    Ok(serde_json::Value::Object(obj)) => {
                        let same = schema.as_ref().is_some_and(|s| {
                            s.len() == obj.len()
                                && s.names().iter().zip(obj.keys()).all(|(a, b)| a == b)
                        });
                        if !same {
                            schema = Some(Schema::new(obj.keys().cloned().collect()));
                        }
                        let values = obj.values().map(Value::from_json).collect();
                        batch.records.push(Record {
                            schema: schema.clone().unwrap_or_default(),
                            values,
                            position: pos,
                        });
                    }
                    Ok(other) => batch.rejects.push(bad(
                        "malformed_row",
                        format!(
                            "line {line_no} holds a JSON {} instead of an object",
                            json_kind(&other)
                        ),
                        pos,
                    )),
                    Err(e) => batch.rejects.push(bad(
                        "malformed_row",
                        format!("line {line_no} is not valid JSON: {e}"),
                        pos,
                    )),
                }
            }
            batch.checkpoint = serde_json::json!({ "byte": byte, "line": line_no });
            batch.bytes_read = byte;
            if batch.read > 0 && tx.blocking_send(batch).is_err() {
                return Ok(());
            }
            if done {
                return Ok(());
            }
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

fn trim_line(buf: &[u8]) -> &[u8] {
    let mut end = buf.len();
    while end > 0 && (buf[end - 1] == b'\n' || buf[end - 1] == b'\r' || buf[end - 1] == b' ') {
        end -= 1;
    }
    &buf[..end]
}

/// Reads one line, keeping at most `max + 1` bytes of it; returns the full line length.
fn read_line_bounded(
    r: &mut impl BufRead,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = r.fill_buf()?;
        if available.is_empty() {
            return Ok(total);
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let keep = chunk.len().min((max + 1).saturating_sub(out.len()));
        out.extend_from_slice(&chunk[..keep]);
        let used = chunk.len();
        total += used;
        r.consume(used);
        if found {
            return Ok(total);
        }
    }
}

impl Source for JsonlSource {
    fn fingerprint(&self) -> String {
        file_fingerprint(std::path::Path::new(&self.cfg.path))
    }
    fn size_hint(&self) -> Option<u64> {
        std::fs::metadata(&self.cfg.path).ok().map(|m| m.len())
    }
    fn describe(&self) -> String {
        format!("jsonl {}", self.cfg.path)
    }
    fn run(
        self: Box<Self>,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> BoxFuture<'static, Result<()>> {
        let me = *self;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || me.read_all(from, ctx, tx))
                .await
                .map_err(|e| {
                    Error::Other(format!("the JSON-lines reader stopped unexpectedly: {e}"))
                })?
        })
    }
}

/// The JSON-lines sink.
pub struct JsonlSink {
    cfg: JsonlSinkConfig,
    out: OutputFile,
}

impl JsonlSink {
    /// Builds the sink.
    pub fn new(cfg: JsonlSinkConfig) -> Self {
        JsonlSink {
            out: OutputFile::new(&cfg.path, &cfg.destination),
            cfg,
        }
    }
}

impl Sink for JsonlSink {
    fn describe(&self) -> String {
        format!("jsonl {}", self.cfg.path)
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
            let mut data = Vec::with_capacity(records.len() * 256);
            for r in records {
                serde_json::to_writer(&mut data, &r.to_json())
                    .map_err(|e| Error::Other(format!("encoding JSON: {e}")))?;
                data.push(b'\n');
            }
            self.out.append(&data, records.len() as u64, checkpoint)?;
            Ok(())
        })
    }
    fn finish<'a>(
        &'a mut self,
        checkpoint: &'a SavedCheckpoint,
    ) -> BoxFuture<'a, Result<Vec<Artifact>>> {
        Box::pin(async move { Ok(vec![self.out.finish(checkpoint)?]) })
    }
}
