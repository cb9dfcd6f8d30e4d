//! The check a finished XML document passes as a whole before it is released: libxml2's
//! `xmllint` when it runs (as configured), otherwise snodo's own validator, fed the
//! document while it is being written.
//!
//! Why one of them and not both: every record was already validated by snodo's validator
//! as it was rendered (that is what turns a bad record into a reject), so the whole-file
//! check is there to catch what no record check sees (the envelope, the order of the
//! elements) and to have a second, independent implementation of XSD look at the bytes
//! INPS will receive. `xmllint` is that second implementation; running snodo's validator
//! over the whole file as well took a sixth of the CPU of a 100k-prestazioni SIUSS flow
//! and found nothing the other two could not (docs/benchmarks.md).
//!
//! Why while it is written: each check reads the whole file, and at the end of a run they
//! were the last thing between the file and its release, on an otherwise idle machine (1.9
//! of the 12.4 s of a 100k-prestazioni SIUSS flow; docs/benchmarks.md). Fed batch by batch,
//! they run on the cores the run leaves idle, and the release waits only for the last
//! batch. Each check runs in a thread of its own and reads from a bounded queue, so memory
//! stays at a few batches whatever the document's size; [`ReleaseCheck::feed`] waits when
//! a check falls behind.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use snodo_core::error::{Error, Result};

use super::config::Xmllint;
use super::xsd::{Schema, Violation};

/// Chunks waiting for each check.
const QUEUED: usize = 4;

/// Problems reported by snodo's validator before it stops looking.
const MAX_PROBLEMS: usize = 20;

/// Bytes of `xmllint`'s messages kept for the error (the first lines are the useful ones).
const LINT_MESSAGES: usize = 64 * 1024;

type Chunk = Arc<[u8]>;

/// A document's release check, running while it is written.
pub struct ReleaseCheck {
    schema_file: PathBuf,
    check: Check,
    fed: u64,
}

/// Who checks the whole document.
enum Check {
    /// libxml2, in an `xmllint` process fed by a thread.
    Lint(SyncSender<Chunk>, JoinHandle<LintOutcome>),
    /// snodo's validator, in a thread of its own.
    Own(SyncSender<Chunk>, JoinHandle<Vec<Violation>>),
}

/// What `xmllint` said.
struct LintOutcome {
    ok: bool,
    messages: Vec<u8>,
    /// Why it could not be run or waited for.
    failure: Option<String>,
}

impl ReleaseCheck {
    /// Starts the check of a document against `schema` (read from `schema_file`): by
    /// `xmllint` when configured to run and installed, otherwise by snodo's validator.
    /// Fails when `xmllint: required` and it cannot be run.
    pub fn start(schema: Arc<Schema>, schema_file: &Path, xmllint: Xmllint) -> Result<Self> {
        let run = match xmllint {
            Xmllint::Off => false,
            Xmllint::Required => true,
            Xmllint::Auto => Command::new("xmllint").arg("--version").output().is_ok(),
        };
        if run {
            let child = Command::new("xmllint")
                .args(["--noout", "--stream", "--schema"])
                .arg(schema_file)
                .arg("-")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| {
                    Error::Other(format!(
                        "running xmllint (required by the sink's `xmllint: required`): {e}; install libxml2-utils"
                    ))
                })?;
            let (tx, rx) = sync_channel(QUEUED);
            let thread = spawn("xmllint feeder", move || feed_lint(child, rx))?;
            return Ok(ReleaseCheck::new(schema_file, Check::Lint(tx, thread)));
        }
        let (tx, rx) = sync_channel::<Chunk>(QUEUED);
        let own = spawn("xsd check", move || {
            let mut input = Chunks {
                rx,
                chunk: None,
                at: 0,
            };
            let problems = schema.validate_reader(&mut input, MAX_PROBLEMS);
            // The validator may stop early (too many problems, a syntax error): the rest is
            // read and dropped, so that the writer is never left waiting on a full queue.
            input.chunk = None;
            for _ in input.rx.iter() {}
            problems
        })?;
        Ok(ReleaseCheck::new(schema_file, Check::Own(tx, own)))
    }

    fn new(schema_file: &Path, check: Check) -> Self {
        ReleaseCheck {
            schema_file: schema_file.to_path_buf(),
            check,
            fed: 0,
        }
    }

    /// Gives the checks the next bytes of the document.
    pub fn feed(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.fed += bytes.len() as u64;
        let tx = match &self.check {
            Check::Lint(tx, _) | Check::Own(tx, _) => tx,
        };
        // A check whose thread has ended has already found what it reports in `finish`.
        let _ = tx.send(Arc::from(bytes));
    }

    /// Gives the checks what `file` already holds (a resumed document's first batches).
    pub fn feed_file(&mut self, file: &Path) -> Result<()> {
        let mut f = match std::fs::File::open(file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("reading", file, e)),
        };
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| Error::io("reading", file, e))?;
            if n == 0 {
                return Ok(());
            }
            self.feed(&buf[..n]);
        }
    }

    /// Ends the document and waits for the verdict on `file`, which must hold exactly the
    /// bytes fed. Returns what checked the file, for the flow log: `xsd:NAME` (snodo's
    /// validator, which also checked every record as it was rendered) and, when it ran,
    /// `xmllint:NAME` (libxml2, on the whole file; snodo's validator then checked the
    /// records only).
    pub fn finish(self, file: &Path) -> Result<Vec<String>> {
        let ReleaseCheck {
            schema_file,
            check,
            fed,
        } = self;
        let schema_name = schema_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Closing the queue ends the document for the check.
        let verdict = match check {
            Check::Lint(tx, thread) => {
                drop(tx);
                Verdict::Lint(thread.join())
            }
            Check::Own(tx, thread) => {
                drop(tx);
                Verdict::Own(thread.join())
            }
        };
        let size = std::fs::metadata(file)
            .map_err(|e| Error::io("reading", file, e))?
            .len();
        if size != fed {
            return Err(Error::Other(format!(
                "`{}` has {size} bytes but {} were written and checked: it was changed outside snodo, so it was not released; run the pipeline again",
                file.display(),
                fed
            )));
        }
        let mut checks = vec![format!("xsd:{schema_name}")];
        match verdict {
            Verdict::Own(problems) => {
                let problems = problems.map_err(|_| {
                    Error::Other(
                        "snodo's XSD check stopped unexpectedly; the file was not released. This is a bug: please report it with the run id".into(),
                    )
                })?;
                if !problems.is_empty() {
                    return Err(Error::Other(format!(
                        "`{}` does not validate against `{}`, so it was not released (this is a bug: every record was checked on its own): {}",
                        file.display(),
                        schema_file.display(),
                        problems
                            .iter()
                            .take(10)
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    )));
                }
            }
            Verdict::Lint(outcome) => {
                let outcome = outcome.map_err(|_| {
                    Error::Other("the xmllint feeder stopped unexpectedly; the file was not released. This is a bug: please report it with the run id".into())
                })?;
                if let Some(why) = outcome.failure {
                    return Err(Error::Other(format!(
                        "xmllint could not check `{}`, so it was not released: {why}",
                        file.display()
                    )));
                }
                if !outcome.ok {
                    let msg = String::from_utf8_lossy(&outcome.messages);
                    return Err(Error::Other(format!(
                        "xmllint refuses `{}` against `{}`, so it was not released (this is a bug: every record was checked on its own): {}",
                        file.display(),
                        schema_file.display(),
                        snodo_core::mask::redact_text(
                            &msg.lines().take(10).collect::<Vec<_>>().join("; ")
                        )
                    )));
                }
                checks.push(format!("xmllint:{schema_name}"));
            }
        }
        Ok(checks)
    }
}

/// What a check's thread came back with.
enum Verdict {
    Lint(std::thread::Result<LintOutcome>),
    Own(std::thread::Result<Vec<Violation>>),
}

/// Validates a finished document before it is released (see [`ReleaseCheck`]), for a sink
/// that checks the file once it is complete.
pub fn release_checks(
    schema: Arc<Schema>,
    schema_file: &Path,
    file: &Path,
    xmllint: Xmllint,
) -> Result<Vec<String>> {
    let mut checks = ReleaseCheck::start(schema, schema_file, xmllint)?;
    checks.feed_file(file)?;
    checks.finish(file)
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::Other(format!("starting the {name} thread: {e}")))
}

/// Writes the chunks into `xmllint`'s standard input, then waits for its verdict. Its
/// messages are read by a thread of their own: with both pipes full (a document with many
/// problems), `xmllint` and this thread would each wait for the other.
fn feed_lint(mut child: Child, rx: Receiver<Chunk>) -> LintOutcome {
    let messages = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = LINT_MESSAGES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            kept
        })
    });
    let mut stdin = child.stdin.take();
    let mut failure = None;
    for chunk in rx.iter() {
        if let Some(w) = stdin.as_mut()
            && let Err(e) = w.write_all(&chunk)
        {
            // xmllint stopped reading (it gave up on the document): its exit status and
            // messages say why; the rest of the document is dropped.
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                failure = Some(format!("writing to xmllint: {e}"));
            }
            stdin = None;
        }
    }
    drop(stdin);
    let status = child.wait();
    let messages = messages.and_then(|t| t.join().ok()).unwrap_or_default();
    match status {
        Ok(s) => LintOutcome {
            ok: s.success() && failure.is_none(),
            messages,
            failure,
        },
        Err(e) => LintOutcome {
            ok: false,
            messages,
            failure: Some(format!("waiting for xmllint: {e}")),
        },
    }
}

/// The queue of chunks, read as one stream.
struct Chunks {
    rx: Receiver<Chunk>,
    chunk: Option<Chunk>,
    at: usize,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(out.len());
            out[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Chunks {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.chunk.as_ref().is_none_or(|c| self.at >= c.len()) {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = Some(c);
                    self.at = 0;
                }
                // The writer is done: end of the document.
                Err(_) => return Ok(&[]),
            }
        }
        Ok(self.chunk.as_ref().map_or(&[][..], |c| &c[self.at..]))
    }

    fn consume(&mut self, n: usize) {
        self.at += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> (Arc<Schema>, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let xsd = dir.path().join("n.xsd");
        std::fs::write(
            &xsd,
            r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="r"><xs:complexType><xs:sequence>
    <xs:element name="n" type="xs:int" maxOccurs="unbounded"/>
  </xs:sequence></xs:complexType></xs:element>
</xs:schema>"#,
        )
        .unwrap();
        (Arc::new(Schema::load(&xsd).unwrap()), xsd, dir)
    }

    /// Writes `doc` to a file and feeds it in chunks of `step` bytes, as a sink would.
    fn check(doc: &str, step: usize, xmllint: Xmllint) -> Result<Vec<String>> {
        let (schema, xsd, dir) = schema();
        let file = dir.path().join("doc.xml");
        std::fs::write(&file, doc).unwrap();
        let mut c = ReleaseCheck::start(schema, &xsd, xmllint)?;
        for part in doc.as_bytes().chunks(step) {
            c.feed(part);
        }
        c.finish(&file)
    }

    fn numbers(n: usize, bad_at: Option<usize>) -> String {
        let mut doc = String::from("<r>\n");
        for i in 0..n {
            if Some(i) == bad_at {
                doc.push_str("<n>not a number</n>\n");
            } else {
                doc.push_str(&format!("<n>{i}</n>\n"));
            }
        }
        doc.push_str("</r>\n");
        doc
    }

    fn has_xmllint() -> bool {
        Command::new("xmllint").arg("--version").output().is_ok()
    }

    #[test]
    fn a_valid_document_fed_in_pieces_passes_either_check() {
        let mut lints = vec![Xmllint::Off, Xmllint::Auto];
        if has_xmllint() {
            lints.push(Xmllint::Required);
        }
        for lint in lints {
            // Chunk boundaries inside tags and numbers must not matter.
            for step in [1, 7, 4096] {
                let checks = check(&numbers(2000, None), step, lint).unwrap();
                let expected = if lint == Xmllint::Off || !has_xmllint() {
                    vec!["xsd:n.xsd"]
                } else {
                    vec!["xsd:n.xsd", "xmllint:n.xsd"]
                };
                assert_eq!(checks, expected, "{lint:?}, chunks of {step}");
            }
        }
    }

    #[test]
    fn xmllint_when_it_runs_checks_the_file_instead_of_snodo() {
        if !has_xmllint() {
            eprintln!("xmllint is not installed: skipped");
            return;
        }
        // A problem in the middle: each check reports it in its own words, which shows
        // which of them looked at the file.
        let doc = numbers(100, Some(50));
        let e = check(&doc, 64, Xmllint::Required).unwrap_err().to_string();
        assert!(
            e.contains("xmllint refuses") && e.contains("not released"),
            "{e}"
        );
        let e = check(&doc, 64, Xmllint::Off).unwrap_err().to_string();
        assert!(
            e.contains("does not validate") && e.contains("line 52"),
            "{e}"
        );
    }

    #[test]
    fn an_invalid_document_is_refused_with_its_line_even_when_it_has_many_problems() {
        let e = check(&numbers(3000, Some(2500)), 100, Xmllint::Off)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not validate") && e.contains("2502"), "{e}");
        // Thousands of problems: neither check may leave the writer waiting on a full
        // queue or a full pipe.
        let mut doc = String::from("<r>\n");
        for _ in 0..20_000 {
            doc.push_str("<n>x</n>\n");
        }
        doc.push_str("</r>\n");
        let e = check(&doc, 64, Xmllint::Off).unwrap_err().to_string();
        assert!(e.contains("does not validate"), "{e}");
        if has_xmllint() {
            let e = check(&doc, 64, Xmllint::Required).unwrap_err().to_string();
            assert!(e.contains("xmllint refuses"), "{e}");
        }
    }

    #[test]
    fn xmllint_alone_refusing_stops_the_release() {
        if !has_xmllint() {
            eprintln!("xmllint is not installed: skipped");
            return;
        }
        // Well-formed for snodo's reader up to the point xmllint sees garbage after the
        // root: a second root element.
        let (schema, xsd, dir) = schema();
        let file = dir.path().join("doc.xml");
        let doc = format!("{}<r><n>1</n></r>\n", numbers(10, None));
        std::fs::write(&file, &doc).unwrap();
        let mut c = ReleaseCheck::start(schema, &xsd, Xmllint::Required).unwrap();
        c.feed(doc.as_bytes());
        let e = c.finish(&file).unwrap_err().to_string();
        assert!(e.contains("not released"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_what_was_fed_is_not_released() {
        let (schema, xsd, dir) = schema();
        let file = dir.path().join("doc.xml");
        let doc = numbers(10, None);
        std::fs::write(&file, format!("{doc}<!-- added -->\n")).unwrap();
        let mut c = ReleaseCheck::start(schema, &xsd, Xmllint::Off).unwrap();
        c.feed(doc.as_bytes());
        let e = c.finish(&file).unwrap_err().to_string();
        assert!(e.contains("changed outside snodo"), "{e}");
    }

    #[test]
    fn a_resumed_document_is_checked_from_its_first_byte() {
        let (schema, xsd, dir) = schema();
        let file = dir.path().join("doc.xml");
        let doc = numbers(100, Some(3));
        let (first, rest) = doc.split_at(doc.len() / 2);
        std::fs::write(&file, first).unwrap();
        let mut c = ReleaseCheck::start(schema, &xsd, Xmllint::Off).unwrap();
        c.feed_file(&file).unwrap();
        std::fs::write(&file, &doc).unwrap();
        c.feed(rest.as_bytes());
        let e = c.finish(&file).unwrap_err().to_string();
        assert!(
            e.contains("does not validate") && e.contains("line 5"),
            "{e}"
        );
    }
}
