//! Configuration: pipeline files and the connections file.
//!
//! Two levels, as in cargo: the *raw* structs mirror the YAML exactly (they are the single
//! source of the JSON Schema, the docs and the validation), and [`load_pipeline`] turns a
//! file into a *resolved* [`pipeline::PipelineFile`] only after every problem in it has
//! been collected with its line, column and YAML path.

pub mod connections;
pub mod pipeline;
pub mod yaml;

use std::path::Path;

use serde::de::DeserializeOwned;

pub use connections::{ConnectionConfig, ConnectionsFile, PgSslMode};
pub use pipeline::{FieldRule, LookupConfig, OnError, PipelineFile, RejectLimit, StepConfig, Then};
use yaml::{Location, Node, NodeKind, Problem};

use crate::error::{Error, Result};

/// Reads a file for configuration purposes, with the path in the error.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))
}

/// Something that can check itself after deserialisation and report problems with
/// locations. Implemented by connector configs and by the pipeline's own sections.
pub trait Check {
    /// Adds the problems of `self` (deserialised from `node`, at YAML `path`) to `out`.
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>);
}

/// A problem at `node`'s location.
pub fn problem(node: &Node, path: &str, message: impl Into<String>) -> Problem {
    Problem {
        location: node.location,
        path: path.to_string(),
        message: message.into(),
    }
}

/// Looks up a key of a mapping node.
pub fn child<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.kind {
        NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
        _ => None,
    }
}

/// Follows a path of mapping keys; returns the deepest node found (so a problem deep in a
/// missing branch still points somewhere useful).
pub fn deepest<'a>(node: &'a Node, keys: &[&str]) -> &'a Node {
    let mut cur = node;
    for k in keys {
        match child(cur, k) {
            Some(n) => cur = n,
            None => break,
        }
    }
    cur
}

fn section<T: DeserializeOwned>(node: &Node, path: &str, out: &mut Vec<Problem>) -> Option<T> {
    match yaml::from_node::<T>(node, path) {
        Ok(v) => Some(v),
        Err(mut p) => {
            out.append(&mut p);
            None
        }
    }
}

/// The optional top-level count `key` of a pipeline, which must be between 1 and `max`: a
/// value out of range is a problem at its line.
fn bounded_count(root: &Node, key: &str, max: usize, out: &mut Vec<Problem>) -> Option<usize> {
    let node = child(root, key)?;
    let n = section::<Option<usize>>(node, key, out).flatten()?;
    if !(1..=max).contains(&n) {
        out.push(problem(
            node,
            key,
            format!("{key} must be between 1 and {max}"),
        ));
    }
    Some(n)
}

/// The steps of an included file. Its problems are reported at the `include` line, each
/// naming the included file's own line and column.
fn included_steps(
    file: &str,
    at: &Node,
    path: &str,
    out: &mut Vec<Problem>,
) -> Option<Vec<StepConfig>> {
    let here = deepest(at, &["include"]);
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            out.push(problem(
                here,
                &format!("{path}.include"),
                format!("cannot read `{file}` (paths are relative to the working directory): {e}"),
            ));
            return None;
        }
    };
    let relay = |p: Problem, out: &mut Vec<Problem>| {
        out.push(problem(
            here,
            &format!("{path}.include"),
            format!(
                "{file}:{}: {}",
                p.location,
                if p.path.is_empty() {
                    p.message
                } else {
                    format!("{}: {}", p.path, p.message)
                }
            ),
        ));
    };
    let (steps, problems) = steps_file(&text, file);
    for p in problems {
        relay(p, out);
    }
    steps
}

/// Parses and checks a steps file (what `- include:` names): the steps, or `None` when
/// any of them has a problem; the problems at the file's own lines.
pub fn steps_file(text: &str, file: &str) -> (Option<Vec<StepConfig>>, Vec<Problem>) {
    let mut out = Vec::new();
    let root = match yaml::parse(text) {
        Ok(r) => r,
        Err(p) => return (None, vec![p]),
    };
    let NodeKind::Seq(items) = &root.kind else {
        out.push(problem(
            &root,
            "",
            format!("`{file}` must hold a list of steps (`- map: …`)"),
        ));
        return (None, out);
    };
    let mut inner = Vec::new();
    for (j, item) in items.iter().enumerate() {
        let p = format!("[{j}]");
        match section::<StepConfig>(item, &p, &mut out) {
            Some(StepConfig::Include(_)) => out.push(problem(item, &p, "includes do not nest")),
            Some(s) => {
                s.check(item, &p, &mut out);
                inner.push(s);
            }
            None => {}
        }
    }
    // Every step is reported, but a list with a problem is not handed out.
    if out.is_empty() {
        (Some(inner), out)
    } else {
        (None, out)
    }
}

/// What a YAML file of the project is, judged from its top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A pipeline (`pipeline:`), or anything that is not one of the others.
    Pipeline,
    /// A list of steps, the target of `- include:`.
    Steps,
    /// A migration definition (`migration:`).
    Migration,
}

/// The kind of the YAML file `text` (a file that does not parse is a pipeline, so that
/// the pipeline loader reports where it breaks).
pub fn file_kind(text: &str) -> FileKind {
    match yaml::parse(text) {
        Ok(r) if matches!(r.kind, NodeKind::Seq(_)) => FileKind::Steps,
        Ok(r) if child(&r, "migration").is_some() && child(&r, "pipeline").is_none() => {
            FileKind::Migration
        }
        _ => FileKind::Pipeline,
    }
}

/// Loads and validates a pipeline file, collecting *all* problems: each top-level section
/// and each step is deserialised on its own, so that a mistake in step 1 does not hide one
/// in step 4; then semantic checks run on whatever parsed.
pub fn load_pipeline<S, K>(path: &Path) -> Result<(PipelineFile<S, K>, Node)>
where
    S: DeserializeOwned + Check,
    K: DeserializeOwned + Check,
{
    let text = read_text(path)?;
    parse_pipeline(&text, path)
}

/// [`load_pipeline`] on text already read.
pub fn parse_pipeline<S, K>(text: &str, path: &Path) -> Result<(PipelineFile<S, K>, Node)>
where
    S: DeserializeOwned + Check,
    K: DeserializeOwned + Check,
{
    let fail = |problems: Vec<Problem>| Error::Config {
        file: path.to_path_buf(),
        problems,
    };
    let root = yaml::parse(text).map_err(|p| fail(vec![p]))?;
    let mut problems = Vec::new();
    let NodeKind::Map(entries) = &root.kind else {
        return Err(fail(vec![problem(
            &root,
            "",
            "a pipeline file is a mapping with keys `pipeline`, `source`, `steps`, `sink`",
        )]));
    };
    const KNOWN: &[&str] = &[
        "pipeline",
        "description",
        "source",
        "steps",
        "sink",
        "on_error",
        "personal",
        "batch_size",
        "workers",
        "report",
        "vars",
    ];
    for (k, _) in entries {
        if !KNOWN.contains(&k.name.as_str()) {
            let hint = yaml::suggest(&k.name, KNOWN)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            problems.push(Problem {
                location: k.location,
                path: String::new(),
                message: format!(
                    "unknown key `{}`{hint}; a pipeline has: {}",
                    k.name,
                    KNOWN.join(", ")
                ),
            });
        }
    }
    let missing = |key: &str, problems: &mut Vec<Problem>| {
        problems.push(problem(&root, "", format!("missing key `{key}`")));
    };

    let name: Option<String> = match child(&root, "pipeline") {
        Some(n) => section(n, "pipeline", &mut problems),
        None => {
            missing("pipeline", &mut problems);
            None
        }
    };
    if let (Some(n), Some(node)) = (&name, child(&root, "pipeline"))
        && (n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
    {
        problems.push(problem(
            node,
            "pipeline",
            "a pipeline name uses only letters, digits, `-`, `_` and `.` (it names checkpoints and runs)",
        ));
    }
    let description: Option<String> = child(&root, "description")
        .and_then(|n| section::<Option<String>>(n, "description", &mut problems))
        .flatten();

    let source: Option<S> = match child(&root, "source") {
        Some(n) => section::<S>(n, "source", &mut problems)
            .inspect(|s| s.check(n, "source", &mut problems)),
        None => {
            missing("source", &mut problems);
            None
        }
    };
    let sink: Option<K> = match child(&root, "sink") {
        Some(n) => {
            section::<K>(n, "sink", &mut problems).inspect(|s| s.check(n, "sink", &mut problems))
        }
        None => {
            missing("sink", &mut problems);
            None
        }
    };

    let mut steps = Vec::new();
    let mut steps_ok = true;
    if let Some(n) = child(&root, "steps") {
        match &n.kind {
            NodeKind::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("steps[{i}]");
                    match section::<StepConfig>(item, &p, &mut problems) {
                        Some(StepConfig::Include(file)) => {
                            match included_steps(&file, item, &p, &mut problems) {
                                Some(mut inner) => steps.append(&mut inner),
                                None => steps_ok = false,
                            }
                        }
                        Some(s) => {
                            s.check(item, &p, &mut problems);
                            steps.push(s);
                        }
                        None => steps_ok = false,
                    }
                }
            }
            NodeKind::Null => {}
            _ => problems.push(problem(n, "steps", "`steps` is a list: `- map: {...}`")),
        }
    }
    let on_error: OnError = child(&root, "on_error")
        .and_then(|n| section(n, "on_error", &mut problems))
        .unwrap_or_default();
    if let Err(e) = on_error.reject_limit.parse() {
        problems.push(problem(
            deepest(&root, &["on_error", "reject_limit"]),
            "on_error.reject_limit",
            e,
        ));
    }
    let personal: Vec<String> = child(&root, "personal")
        .and_then(|n| section(n, "personal", &mut problems))
        .unwrap_or_default();
    let batch_size = bounded_count(&root, "batch_size", 1_000_000, &mut problems);
    let workers = bounded_count(&root, "workers", 64, &mut problems);

    let vars: indexmap::IndexMap<String, String> = child(&root, "vars")
        .and_then(|n| section(n, "vars", &mut problems))
        .unwrap_or_default();
    let report: Option<crate::report::ReportConfig> = child(&root, "report")
        .and_then(|n| section::<Option<crate::report::ReportConfig>>(n, "report", &mut problems))
        .flatten();

    problems.sort_by_key(|p| (p.location.line, p.location.column));
    problems.dedup();
    match (name, source, sink) {
        (Some(pipeline), Some(source), Some(sink)) if problems.is_empty() && steps_ok => Ok((
            PipelineFile {
                pipeline,
                description,
                source,
                steps,
                sink,
                on_error,
                personal,
                batch_size,
                workers,
                report,
                vars,
            },
            root,
        )),
        _ => {
            if problems.is_empty() {
                problems.push(Problem {
                    location: Location { line: 1, column: 1 },
                    path: String::new(),
                    message: "the pipeline is incomplete".into(),
                });
            }
            Err(fail(problems))
        }
    }
}
