//! Snodo's connectors, one folder per family: [`file`] (CSV, JSON lines, XML) and [`sql`]
//! (SQLite, PostgreSQL). Each connector's config struct is the single source of its YAML
//! schema, its documentation and its validation.

pub mod file;
pub mod inps;
pub mod sql;

use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use snodo_core::component::{DryRunSink, Sink, Source};
use snodo_core::config::yaml::{Node, Problem};
use snodo_core::config::{Check, ConnectionsFile, PipelineFile, problem};
use snodo_core::db::Db;
use snodo_core::error::{Error, Result};
use snodo_core::expr::ExprEngine;
use snodo_core::runtime::Plan;
use snodo_core::steps::{self, StepContext};

use file::csv::{CsvSink, CsvSinkConfig, CsvSource, CsvSourceConfig};
use file::jsonl::{JsonlSink, JsonlSinkConfig, JsonlSource, JsonlSourceConfig};
use file::xml::{XmlSink, XmlSinkConfig, XmlSource, XmlSourceConfig};
use sql::{SqlSink, SqlSinkConfig, SqlSource, SqlSourceConfig};

/// The source of a pipeline: exactly one of these keys.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename = "source", rename_all = "snake_case")]
pub enum SourceConfig {
    /// A delimited text file.
    Csv(CsvSourceConfig),
    /// A JSON-lines file.
    Jsonl(JsonlSourceConfig),
    /// An XML document read through a layout (and validated against its XSD).
    Xml(XmlSourceConfig),
    /// A SQL query on SQLite or PostgreSQL.
    Sql(SqlSourceConfig),
}

/// The sink of a pipeline: exactly one of these keys.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename = "sink", rename_all = "snake_case")]
pub enum SinkConfig {
    /// A delimited text file.
    Csv(CsvSinkConfig),
    /// A JSON-lines file.
    Jsonl(JsonlSinkConfig),
    /// An XML document laid out by a layout file and valid against its XSD.
    Xml(XmlSinkConfig),
    /// A table on SQLite or PostgreSQL (upsert on the natural key).
    Sql(SqlSinkConfig),
    /// An INPS SIUSS flow (PS/PSA with SINA, or SINBA): each version of each record
    /// delivered once, as a file or through the WaaS queue.
    Siuss(inps::SiussSinkConfig),
}

/// Records per batch when the pipeline does not say: large enough that per-batch costs
/// (a transaction, a COPY, an fsync) are amortised, small enough that the batches in
/// flight stay a few megabytes.
pub const DEFAULT_BATCH_SIZE: usize = 2000;

/// A pipeline file with snodo's connectors.
pub type Pipeline = PipelineFile<SourceConfig, SinkConfig>;

impl Check for SourceConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        match self {
            SourceConfig::Csv(c) => c.check(node, path, out),
            SourceConfig::Jsonl(c) => c.check(node, path, out),
            SourceConfig::Xml(c) => c.check(node, path, out),
            SourceConfig::Sql(c) => c.check(node, path, out),
        }
    }
}

impl Check for SinkConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        match self {
            SinkConfig::Csv(c) => c.check(node, path, out),
            SinkConfig::Jsonl(c) => c.check(node, path, out),
            SinkConfig::Xml(c) => c.check(node, path, out),
            SinkConfig::Siuss(c) => c.check(node, path, out),
            SinkConfig::Sql(c) => c.check(node, path, out),
        }
    }
}

/// Loads a pipeline file and checks it against the connections file: every problem of both
/// is reported with file, line and column.
pub fn load(path: &Path, connections: &ConnectionsFile) -> Result<(Pipeline, Node)> {
    let text = snodo_core::config::read_text(path)?;
    // Connection names are checked on the raw tree, so that an unknown connection is
    // reported together with every other problem of the file.
    let mut problems = Vec::new();
    if let Ok(root) = snodo_core::config::yaml::parse(&text) {
        for (section, kind) in [("source", "sql"), ("sink", "sql"), ("sink", "siuss")] {
            if let Some(n) =
                snodo_core::config::yaml::node_at(&root, &[section, kind, "connection"])
                && let snodo_core::config::yaml::NodeKind::Str(name) = &n.kind
                && let Err(e) = connections.get(name)
            {
                problems.push(problem(n, &format!("{section}.{kind}.connection"), e));
            }
        }
    }
    match snodo_core::config::parse_pipeline::<SourceConfig, SinkConfig>(&text, path) {
        Ok(ok) if problems.is_empty() => Ok(ok),
        Ok(_) => Err(Error::Config {
            file: path.to_path_buf(),
            problems,
        }),
        Err(Error::Config {
            problems: mut more, ..
        }) => {
            more.append(&mut problems);
            more.sort_by_key(|p| (p.location.line, p.location.column));
            Err(Error::Config {
                file: path.to_path_buf(),
                problems: more,
            })
        }
        Err(other) => Err(other),
    }
}

/// Checks a pipeline file without running it (`snodo lint`, which sends steps files and
/// migration definitions to their own checks).
pub fn lint(path: &Path, connections: &ConnectionsFile) -> Vec<Problem> {
    match load(path, connections) {
        Ok(_) => Vec::new(),
        Err(Error::Config { problems, .. }) => problems,
        Err(other) => vec![Problem {
            location: Default::default(),
            path: String::new(),
            message: other.to_string(),
        }],
    }
}

/// Opens a source. A `sql` source on a SQL Server connection reads through tiberius,
/// on SQLite or PostgreSQL through sqlx; the YAML is the same.
pub async fn open_source(
    config: &SourceConfig,
    connections: &ConnectionsFile,
) -> Result<Box<dyn Source>> {
    Ok(match config {
        SourceConfig::Csv(c) => Box::new(CsvSource::new(c.clone())),
        SourceConfig::Jsonl(c) => Box::new(JsonlSource::new(c.clone())),
        SourceConfig::Xml(c) => Box::new(XmlSource::new(c.clone())),
        SourceConfig::Sql(c) => {
            let conn = connections.get(&c.connection).map_err(Error::Other)?;
            let query = match (&c.query, &c.query_file) {
                (Some(q), _) => q.clone(),
                (None, Some(f)) => {
                    std::fs::read_to_string(f).map_err(|e| Error::io("reading", f, e))?
                }
                (None, None) => {
                    return Err(Error::Other(
                        "source.sql needs `query` or `query_file`".into(),
                    ));
                }
            };
            match conn {
                snodo_core::config::ConnectionConfig::Mssql(m) => {
                    let client = sql::mssql::connect(m).await?;
                    Box::new(sql::mssql::MssqlSource::new(
                        c,
                        client,
                        query,
                        &c.connection,
                    ))
                }
                other => {
                    let db = Db::connect(other, 2).await?;
                    Box::new(SqlSource::new(c, db, query, &c.connection))
                }
            }
        }
    })
}

/// The sink itself, or for a dry run a sink that writes nothing but still runs the real
/// sink's checks.
fn dry_or_real(dry_run: bool, real: Box<dyn Sink>) -> Box<dyn Sink> {
    if dry_run {
        Box::new(DryRunSink {
            target: real.describe(),
            checks: Some(real),
        })
    } else {
        real
    }
}

/// Turns a loaded pipeline into a runnable plan: connections opened, steps compiled, code
/// tables loaded.
pub async fn plan(
    path: &Path,
    pipeline: &Pipeline,
    connections: &ConnectionsFile,
    dry_run: bool,
) -> Result<Plan> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let file_sha256 = hex::encode(Sha256::digest(&bytes));
    plan_from(
        &path.display().to_string(),
        file_sha256,
        pipeline,
        connections,
        dry_run,
    )
    .await
}

/// Like [`plan`], for a pipeline built in memory (the migrator derives one per legacy
/// table): `file` and `file_sha256` name the definition it came from in the flow log.
pub async fn plan_from(
    file: &str,
    file_sha256: String,
    pipeline: &Pipeline,
    connections: &ConnectionsFile,
    dry_run: bool,
) -> Result<Plan> {
    let open = |name: &str| -> Result<snodo_core::config::ConnectionConfig> {
        connections.get(name).cloned().map_err(Error::Other)
    };
    let source = open_source(&pipeline.source, connections).await?;
    let sink: Box<dyn Sink> = match &pipeline.sink {
        // A dry run never connects to the target database.
        SinkConfig::Sql(c) if dry_run => Box::new(DryRunSink {
            target: format!("sql {} table {}", c.connection, c.table),
            checks: None,
        }),
        SinkConfig::Sql(c) => {
            let db = Db::connect(&open(&c.connection)?, 2).await?;
            Box::new(SqlSink::new(c.clone(), db, &c.connection))
        }
        SinkConfig::Csv(c) => dry_or_real(dry_run, Box::new(CsvSink::new(c.clone()))),
        SinkConfig::Jsonl(c) => dry_or_real(dry_run, Box::new(JsonlSink::new(c.clone()))),
        SinkConfig::Xml(c) => dry_or_real(dry_run, Box::new(XmlSink::new(c.clone())?)),
        SinkConfig::Siuss(c) => {
            // Dry runs connect too: the checks read what INPS already has.
            let db = Db::connect(&open(&c.connection)?, 2).await?;
            dry_or_real(dry_run, Box::new(inps::SiussSink::new(c.clone(), db)?))
        }
    };
    let key_names = pipeline.steps.iter().filter_map(|s| match s {
        snodo_core::config::StepConfig::Pseudonym(p) => Some(p.key.as_str()),
        _ => None,
    });
    let ctx = StepContext {
        keys: Arc::new(connections.resolve_keys(key_names).map_err(Error::Other)?),
        ..StepContext::new(
            Arc::new(ExprEngine::with_vars(pipeline.vars.clone())),
            pipeline.personal.clone(),
        )
    };
    // Ordered steps (aggregate) see every record, in order, on one worker.
    let ordered = pipeline
        .steps
        .iter()
        .any(|s| matches!(s, snodo_core::config::StepConfig::Aggregate(_)));
    let workers = if ordered {
        1
    } else {
        pipeline
            .workers
            .unwrap_or_else(snodo_core::runtime::default_workers)
    };
    let steps = (0..workers)
        .map(|_| steps::build(&pipeline.steps, &ctx))
        .collect::<Result<Vec<_>>>()?;
    let limit = pipeline
        .on_error
        .reject_limit
        .parse()
        .map_err(|e| Error::Other(format!("on_error.reject_limit: {e}")))?;
    Ok(Plan {
        name: pipeline.pipeline.clone(),
        file: file.to_string(),
        file_sha256,
        source,
        steps,
        sink,
        limit,
        limit_text: pipeline.on_error.reject_limit.to_string(),
        then: pipeline.on_error.then,
        batch_size: pipeline.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        ctx,
        lineage_per_record: true,
        report: pipeline.report.clone(),
        resumable: !ordered,
    })
}
