use std::borrow::Cow;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use snodo_core::component::{Source, SourceContext};
use snodo_core::error::{Error, Result};
use snodo_core::mask;
use snodo_core::record::{Batch, Checkpoint, Record, Reject, Schema, SourcePosition};
use snodo_core::recycle;
use snodo_core::value::{self, DecimalStyle, Text, Value};
use tokio::sync::mpsc;

use super::config::{ColumnType, CsvSourceConfig, single_byte};

use crate::file::file_fingerprint;

/// Streams a CSV file in batches. Parsing runs on a blocking thread; memory holds one
/// batch at a time plus what the bounded channel holds.
pub struct CsvSource {
    cfg: CsvSourceConfig,
    path: PathBuf,
}

impl CsvSource {
    /// Builds the source (the file is opened when the run starts).
    pub fn new(cfg: CsvSourceConfig) -> Self {
        CsvSource {
            path: PathBuf::from(&cfg.path),
            cfg,
        }
    }
}

struct Column {
    ty: ColumnType,
}

struct Reader {
    cfg: CsvSourceConfig,
    date_format: value::DateFormat,
    datetime_format: value::DateFormat,
    schema: Arc<Schema>,
    columns: Vec<Column>,
    style: DecimalStyle,
    personal: Arc<Vec<String>>,
    header_lines: u64,
    /// Room left in each record for the fields the steps add.
    extra_fields: usize,
}

impl Reader {
    /// Converts one raw row into a record or a reject.
    fn convert(
        &self,
        raw: &csv::ByteRecord,
        pos: SourcePosition,
        spare: &mut recycle::Spare,
    ) -> std::result::Result<Record, Box<Reject>> {
        let n = self.schema.len();
        let reject = |code: &str, reason: String, values: Vec<Value>| {
            let rec = Record {
                schema: if values.len() == n {
                    self.schema.clone()
                } else {
                    Schema::new(
                        (0..values.len())
                            .map(|i| format!("field_{}", i + 1))
                            .collect(),
                    )
                },
                values,
                position: pos.clone(),
            };
            let named = rec.values.len() == n;
            Box::new(Reject {
                step: "source".into(),
                code: code.into(),
                reason: if named {
                    mask::scrub_personal(&reason, &rec, &self.personal)
                } else {
                    mask::redact_text(&reason)
                },
                position: pos.clone(),
                payload: if named {
                    mask::masked_payload(&rec, &self.personal)
                } else {
                    mask::masked_all(&rec)
                },
            })
        };
        let lossy = |raw: &csv::ByteRecord| -> Vec<Value> {
            raw.iter()
                .map(|f| {
                    Value::Str(Text::from(
                        self.cfg
                            .encoding
                            .decode(f)
                            .unwrap_or_else(|_| String::from_utf8_lossy(f)),
                    ))
                })
                .collect()
        };
        if raw.len() != n {
            return Err(reject(
                "malformed_row",
                format!(
                    "the row has {} fields but the header has {n}; check for a missing or extra `{}` or an unclosed quote",
                    raw.len(),
                    self.cfg.delimiter
                ),
                lossy(raw),
            ));
        }
        // The whole row decoded in one check when it needs no conversion (ASCII, or valid
        // UTF-8), its fields then sliced out of it: one call per row instead of one per
        // field, each of which ended in a stall reading back the check's result (the
        // per-field decode was a seventh of the reader thread's time in the CSV benchmark).
        // A field whose ends are not character boundaries of the row (a UTF-8 sequence
        // split by a delimiter) is decoded on its own, and reported on its own if invalid.
        let row = self.cfg.encoding.as_text(raw.as_slice());
        let mut values = spare.values(&recycle::POOL, n + self.extra_fields);
        for (i, field) in raw.iter().enumerate() {
            let name = &self.schema.names()[i];
            if field.len() > self.cfg.max_field_length {
                let mut vals = lossy(raw);
                vals[i] = Value::Str(format!("<{} bytes>", field.len()).into());
                return Err(reject(
                    "oversized_field",
                    format!(
                        "field `{name}` is {} bytes long, more than max_field_length {}",
                        field.len(),
                        self.cfg.max_field_length
                    ),
                    vals,
                ));
            }
            let sliced = row.and_then(|row| row.get(raw.range(i)?));
            let text = match sliced
                .map_or_else(|| self.cfg.encoding.decode(field), |t| Ok(Cow::Borrowed(t)))
            {
                Ok(t) => t,
                Err(at) => {
                    return Err(reject(
                        "encoding",
                        format!(
                            "field `{name}` is not valid UTF-8 (byte {} of the field); if the file comes from a Windows system set `encoding: windows-1252`",
                            at + 1
                        ),
                        lossy(raw),
                    ));
                }
            };
            let text = if self.cfg.trim {
                value::trim(&text)
            } else {
                &text
            };
            if text.is_empty() {
                values.push(Value::Null);
                continue;
            }
            let converted = match self.columns[i].ty {
                // Text, most fields, is pushed as it is made. Built into a `Result` first,
                // every value went through one stack slot in narrow stores read back at
                // once by wide loads, which the CPU cannot forward: 40 % of this loop's
                // samples in the CSV benchmark's profile, on the load after those stores.
                // Dry runs of 1M rows, eight alternating pairs: 1.34 -> 1.31 s (the other
                // types still take that way).
                ColumnType::String => {
                    values.push(Value::Str(Text::new(text)));
                    continue;
                }
                ColumnType::Int => value::parse_int(text).map(Value::Int),
                ColumnType::Decimal => value::parse_decimal(text, self.style).map(Value::Decimal),
                ColumnType::Date => self.date_format.date(text).map(Value::Date),
                ColumnType::Datetime => self.datetime_format.datetime(text).map(Value::DateTime),
                ColumnType::Bool => value::parse_bool(text).map(Value::Bool),
            };
            match converted {
                Ok(v) => values.push(v),
                Err(e) => {
                    let kind = match self.columns[i].ty {
                        ColumnType::Int => "invalid_int",
                        ColumnType::Decimal => "invalid_decimal",
                        ColumnType::Date => "invalid_date",
                        ColumnType::Datetime => "invalid_datetime",
                        ColumnType::Bool => "invalid_bool",
                        // Text is never converted (above).
                        ColumnType::String => "invalid",
                    };
                    return Err(reject(kind, format!("field `{name}`: {e}"), lossy(raw)));
                }
            }
        }
        Ok(Record {
            schema: self.schema.clone(),
            values,
            position: pos,
        })
    }
}

fn checkpoint_of(p: &csv::Position, line: u64) -> Checkpoint {
    serde_json::json!({ "byte": p.byte(), "line": line, "record": p.record() })
}

/// Line numbers counted from the bytes themselves. The csv crate's own count is one short
/// per record in CRLF files (csv issue #395), and Windows exports are CRLF: an operator
/// told "line 45" must find the record on line 45. A second sequential reader follows the
/// parser and counts `\n` up to each record's start byte.
struct LineCounter {
    reader: BufReader<File>,
    byte: u64,
    line: u64,
}

impl LineCounter {
    fn new(path: &std::path::Path, byte: u64, line: u64) -> std::io::Result<Self> {
        let mut f = File::open(path)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(byte))?;
        Ok(LineCounter {
            reader: BufReader::with_capacity(1 << 16, f),
            byte,
            line,
        })
    }

    /// The 1-based line on which the byte at offset `target` lies.
    fn line_at(&mut self, target: u64) -> std::io::Result<u64> {
        use std::io::BufRead;
        while self.byte < target {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let take = buf.len().min((target - self.byte) as usize);
            self.line += memchr::memchr_iter(b'\n', &buf[..take]).count() as u64;
            self.byte += take as u64;
            self.reader.consume(take);
        }
        Ok(self.line)
    }
}

fn position_from(c: &Checkpoint) -> Option<csv::Position> {
    let mut p = csv::Position::new();
    p.set_byte(c.get("byte")?.as_u64()?)
        .set_line(c.get("line")?.as_u64()?)
        .set_record(c.get("record")?.as_u64()?);
    Some(p)
}

impl CsvSource {
    fn read_all(
        self,
        from: Option<Checkpoint>,
        ctx: SourceContext,
        tx: mpsc::Sender<Batch>,
    ) -> Result<()> {
        let cfg = self.cfg;
        let path = self.path;
        let open = || File::open(&path).map_err(|e| Error::io("opening", &path, e));
        let delimiter = single_byte(&cfg.delimiter).unwrap_or(b',');
        let quote = single_byte(&cfg.quote).unwrap_or(b'"');
        let builder = || {
            let mut b = csv::ReaderBuilder::new();
            b.delimiter(delimiter)
                .quote(quote)
                .has_headers(false)
                .flexible(true);
            b
        };
        let read_err = |e: csv::Error| Error::Input(format!("reading `{}`: {e}", path.display()));
        // A UTF-8 byte-order mark is skipped before the CSV parser sees it, so that a quoted
        // first column name is parsed as quoted.
        let mut probe = [0u8; 3];
        let bom = std::io::Read::read(&mut open()?, &mut probe)
            .map(|n| n == 3 && probe == [0xEF, 0xBB, 0xBF])
            .unwrap_or(false);
        let mut start = csv::Position::new();
        start.set_line(1).set_byte(if bom { 3 } else { 0 });
        let mut rdr = builder().from_reader(BufReader::with_capacity(1 << 16, open()?));
        rdr.seek(start.clone()).map_err(read_err)?;

        // The header is always read from the top, also when resuming mid-file.
        let mut names: Vec<String> = Vec::new();
        let mut header_lines = 0;
        if cfg.header {
            let mut head = csv::ByteRecord::new();
            if !rdr.read_byte_record(&mut head).map_err(read_err)? {
                return Ok(()); // empty file: nothing to do
            }
            header_lines = 1;
            for f in head.iter() {
                let name = cfg.encoding.decode(f).map_err(|_| {
                    Error::Input(format!(
                        "the header of `{}` is not valid UTF-8; set `encoding: windows-1252` if it comes from Windows",
                        path.display()
                    ))
                })?;
                names.push(name.trim().to_string());
            }
        }
        if let Some(cols) = &cfg.columns {
            if cfg.header && cols.len() != names.len() {
                return Err(Error::Input(format!(
                    "`columns` lists {} names but the header of `{}` has {}",
                    cols.len(),
                    path.display(),
                    names.len()
                )));
            }
            names = cols.clone();
        }
        for t in cfg.types.keys() {
            if !names.contains(t) {
                return Err(Error::Input(format!(
                    "`types` names the column `{t}` but `{}` has no such column (columns: {})",
                    path.display(),
                    names.join(", ")
                )));
            }
        }
        let columns = names
            .iter()
            .map(|n| Column {
                ty: cfg.types.get(n).copied().unwrap_or(ColumnType::String),
            })
            .collect();
        let reader = Reader {
            date_format: value::DateFormat::new(&cfg.date_format).map_err(Error::Input)?,
            datetime_format: value::DateFormat::new(&cfg.datetime_format).map_err(Error::Input)?,
            style: cfg.decimal_style(),
            schema: Schema::new(names),
            columns,
            personal: ctx.personal.clone(),
            header_lines,
            extra_fields: ctx.extra_fields,
            cfg: cfg.clone(),
        };

        // Resuming: the header was read from the top above; the records continue at the
        // checkpoint.
        let io_err = |e: std::io::Error| Error::io("reading", &path, e);
        let mut lines = match from.as_ref().and_then(position_from) {
            Some(pos) => {
                let counter = LineCounter::new(&path, pos.byte(), pos.line()).map_err(io_err)?;
                rdr.seek(pos).map_err(read_err)?;
                counter
            }
            None => LineCounter::new(&path, 0, 1).map_err(io_err)?,
        };

        let mut seq = 0u64;
        let mut total = 0u64;
        let mut raw = csv::ByteRecord::new();
        let mut spare = recycle::Spare::default();
        loop {
            seq += 1;
            let mut batch = Batch {
                seq,
                records: recycle::POOL.batch(ctx.batch_size),
                ..Default::default()
            };
            let mut done = false;
            while batch.read < ctx.batch_size as u64 {
                if ctx.limit.is_some_and(|l| total >= l) {
                    done = true;
                    break;
                }
                if !rdr.read_byte_record(&mut raw).map_err(read_err)? {
                    done = true;
                    break;
                }
                let p = raw.position().cloned().unwrap_or_else(csv::Position::new);
                // Skip blank lines as every spreadsheet tool does.
                if raw.len() == 1 && raw.get(0).is_some_and(|f| f.is_empty()) {
                    continue;
                }
                let pos = SourcePosition {
                    record: p.record() + 1 - reader.header_lines,
                    // `+ 1`: in CRLF files the parser reports a record as starting on the
                    // `\n` that ends the previous one; counting that byte puts the record
                    // on its own line, and in LF files the first byte is never a `\n`.
                    line: Some(lines.line_at(p.byte() + 1).map_err(io_err)?),
                    byte: Some(p.byte()),
                    key: None,
                };
                batch.read += 1;
                total += 1;
                match reader.convert(&raw, pos, &mut spare) {
                    Ok(r) => batch.records.push(r),
                    Err(rej) => batch.rejects.push(*rej),
                }
            }
            let pos = rdr.position().clone();
            batch.checkpoint = checkpoint_of(&pos, lines.line_at(pos.byte()).map_err(io_err)?);
            batch.bytes_read = pos.byte();
            if batch.read > 0 && tx.blocking_send(batch).is_err() {
                return Ok(()); // the run stopped; nothing more to read
            }
            if done {
                return Ok(());
            }
        }
    }
}

impl Source for CsvSource {
    fn fingerprint(&self) -> String {
        file_fingerprint(&self.path)
    }

    fn size_hint(&self) -> Option<u64> {
        std::fs::metadata(&self.path).ok().map(|m| m.len())
    }

    fn describe(&self) -> String {
        format!("csv {}", self.path.display())
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
                .map_err(|e| Error::Other(format!("the CSV reader stopped unexpectedly: {e}")))?
        })
    }
}
