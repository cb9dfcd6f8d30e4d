//! `snodo`: the command line. It parses arguments and calls the crates; nothing else.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use snodo_connectors::Pipeline;
use snodo_core::config::ConnectionsFile;
use snodo_core::db::Db;
use snodo_core::error::{Error, format_problem};
use snodo_core::flowlog::FlowLog;
use snodo_core::runtime::{self, Progress, RunOptions, RunSummary};

// glibc's allocator kept a separate arena per worker thread and let the resident size
// grow with batch churn; mimalloc keeps it flat and allocates faster (measured in
// docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's option setter, linked in by `libmimalloc-sys`. Declared here rather than
// through that crate's `extended` feature, which pulls in another dependency for two
// calls. The option numbers are the same in mimalloc v2 and v3 (`mimalloc.h`).
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Makes mimalloc commit memory only as pages are used and hand freed pages back after
/// 10 ms. Its defaults (commit whole arenas, purge after a delay) keep what a batch freed
/// resident while the next batches allocate: the PS/PSA flow held 139 MB at 50k
/// prestazioni with them and 78 MB without, about 5 % slower (docs/benchmarks.md). Handing
/// pages back at once (a delay of 0) cost a fifth of the CSV load's CPU in the kernel,
/// returning pages and faulting them back; once PostgreSQL's commits stopped waiting for
/// the disk that load became CPU-bound, and 10 ms took 0.3-0.7 s of CPU off 1M rows
/// (about 4 % of the wall time over seven alternating pairs) for 2-4 MB more. 100 ms was
/// tried again in the eleventh round: it halves the kernel's share once more, but freed
/// memory then lingers in bursts (single CSV runs of 104-109 MB with batches of 4000, up
/// to 98 MB with 3000, against 79-83 MB at 10 ms), too near the 100 MB target for a gain
/// that batches of 3000 did not show beyond the noise.
fn tune_allocator() {
    // SAFETY: called at the start of `main`, before any other thread exists (the setter
    // is not thread-safe); both options take plain integers.
    unsafe {
        mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        mi_option_set(MI_OPTION_PURGE_DELAY, 10);
    }
}

const AFTER_HELP: &str = "\
Exit codes:
  0    success
  1    the run failed (I/O, database, internal error)
  2    wrong command-line usage
  3    invalid configuration (pipeline or connections file); `snodo lint` found problems
  4    the reject limit of the pipeline was exceeded
  5    `snodo log verify` found the flow log altered
  6    `snodo migrate run|verify`: the migration does not reconcile (see the report)
  130  interrupted (Ctrl-C); run the same command again to resume

Examples:
  snodo run pipelines/esempio/assistiti_csv_sqlite.yaml
  snodo run pipelines/esempio/assistiti_csv_sqlite.yaml --dry-run --limit 100
  snodo lint pipelines/**/*.yaml
  snodo runs
  snodo runs show 20261123T194455Z-3fa2b1
  snodo rejects 20261123T194455Z-3fa2b1
  snodo log verify --json
  snodo store migrate
  snodo migrate plan pipelines/migrazione/*.yaml
  snodo migrate run pipelines/migrazione/*.yaml
  snodo migrate verify pipelines/migrazione/*.yaml --json";

const MIGRATE_HELP: &str = "\
Phases: one load per legacy table (resumable from its last committed batch), then dedup,
resolve, pia, duplicates and the reconciliation report. Each completed phase is recorded in
the store; `run` skips what is done, so after a crash `resume` (or `run`) continues.

Exit codes: 0 done or nothing to do, 1 failure, 3 invalid definitions, 4 a table exceeded
its reject limit, 6 the migration does not reconcile, 130 interrupted.

Examples:
  python3 scripts/gen_legacy_db.py --out data/legacy --persons 2000 --seed 1 --format sqlite
  snodo migrate plan pipelines/migrazione/*.yaml
  snodo migrate run pipelines/migrazione/*.yaml
  snodo migrate resume pipelines/migrazione/*.yaml
  snodo migrate verify pipelines/migrazione/*.yaml --json > riconciliazione.json
  snodo rejects RUN_ID        # the rejected rows of one table load, with key and reason

Guide: docs/migration.md";

/// Snodo: migrations and information flows for municipal social services.
///
/// A pipeline (YAML) reads records from a source, passes them through steps (map,
/// filter, validate, lookup, select) and writes them to a sink, in batches, with a
/// checkpoint committed with every batch: a run that is killed resumes where it stopped.
/// Every run is recorded in a hash-chained flow log.
#[derive(Parser)]
#[command(name = "snodo", version, after_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    /// Connections file naming every system (databases) once.
    #[arg(
        long,
        global = true,
        env = "SNODO_CONFIG",
        default_value = "snodo.yaml"
    )]
    config: PathBuf,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More log detail (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline.
    ///
    /// Resumes automatically from the checkpoint of an interrupted run of the same
    /// pipeline on the same input.
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Read and transform, but write nothing and save no checkpoint.
        #[arg(long)]
        dry_run: bool,
        /// Stop after this many records, as if interrupted: what was read is committed
        /// and the next run continues after it (files are published only by a complete run).
        #[arg(long)]
        limit: Option<u64>,
        /// Print the run summary as JSON on standard output.
        #[arg(long)]
        json: bool,
        /// Who starts the run, recorded in the flow log.
        #[arg(long, default_value = "user", value_parser = ["user", "cron", "api"])]
        trigger: String,
        /// Set a pipeline variable for this run, read by expressions as `param("NAME")`
        /// (overrides `vars:` in the file); repeatable: `--var anno=2024`.
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// Check pipeline files and report every problem with file:line:column. A file that
    /// is a YAML list is a steps file (the target of `- include:`) and is checked step by
    /// step; a file with `migration:` is checked as a migration definition. So
    /// `snodo lint pipelines/*/*.yaml` covers them all.
    Lint {
        /// Pipeline files, steps files and migration definitions.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print problems as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of pipeline files (or of the connections file, or of
    /// migration definitions).
    Schema {
        /// Print the schema of the connections file instead.
        #[arg(long)]
        connections: bool,
        /// Print the schema of migration definitions instead.
        #[arg(long, conflicts_with = "connections")]
        migration: bool,
    },
    /// List runs from the flow log, newest first; `runs show ID` for one.
    Runs {
        #[command(subcommand)]
        show: Option<RunsCommand>,
        /// How many runs to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the rejected records of a run (and of the runs it resumed).
    Rejects {
        /// Run id.
        run_id: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Trace a record through the flow log: the target key a source record became, or the
    /// source record a target row came from.
    ///
    /// KEY is matched whole against both sides of every lineage pair: a source record
    /// number or key as the source names it (`1532`) or a target key as the sink writes it
    /// (`assistito:id_anagrafica=101532`; `runs show` names the sink). A record read again
    /// after a resumed run is listed once per run that logged it. Migration loads log key
    /// ranges, not pairs: their lineage is in the target rows (`source_system`,
    /// `source_key`, `loaded_by_run`).
    #[command(
        after_help = "Examples:\n  snodo lineage assistito:id_anagrafica=101532\n  snodo lineage 1532 --run 20261205T164221Z-8a3841 --json"
    )]
    Lineage {
        /// A source record number or key, or a target key.
        key: String,
        /// Only this run (and the runs it resumed).
        #[arg(long)]
        run: Option<String>,
        /// Print as JSON (a list; empty when nothing matches).
        #[arg(long)]
        json: bool,
    },
    /// Flow log operations.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Migrate legacy databases into the canonical store (one definition file per
    /// legacy system; give all of them together so persons are merged across systems).
    #[command(after_help = MIGRATE_HELP)]
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// The canonical store: apply its schema migrations, print its schema.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Serve the e-services the ente exposes: the INPS WaaS e-service (GET /status,
    /// GET /flussi?since=MS&limit=N, POST /esiti) from `serve.waas` in the connections
    /// file. Runs until Ctrl-C.
    #[command(after_help = SERVE_HELP)]
    Serve {
        /// Address to listen on (default: `serve.listen`, else 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
    },
}

const SERVE_HELP: &str = "\
The WaaS e-service hands INPS the flows queued by siuss pipelines with `channel: waas`
(one beneficiary and one prestazione each, oldest first) and records INPS's outcomes.
Every request needs `Authorization: Bearer TOKEN` with a token of `serve.waas.tokens`.

Example connections file section:
  serve:
    listen: 127.0.0.1:8443
    waas:
      connection: store
      ente: D969
      denominazione: Comune di Genova
      tokens: [\"${env:SNODO_WAAS_TOKEN}\"]

Try it:
  SNODO_WAAS_TOKEN=s3cret snodo serve &
  curl -H 'Authorization: Bearer s3cret' 'http://127.0.0.1:8443/flussi?since=0&limit=10'

Guide: docs/siuss.md";

#[derive(Subcommand)]
enum MigrateCommand {
    /// Check the definitions and show the phases: done, pending, interrupted, and the
    /// legacy rows each load will read. Changes nothing but the store's schema.
    Plan {
        /// Migration definitions (pipelines/migrazione/*.yaml).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run every phase not yet done: table loads (resumable), person de-duplication,
    /// references, PIA, duplicates; then write the reconciliation report.
    Run {
        /// Migration definitions.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Run phases again even if done (idempotent: the store ends the same).
        #[arg(long)]
        force: bool,
        /// Where to write the report (default: $SNODO_DATA_DIR/reports).
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        /// Who starts the run, recorded in the flow log.
        #[arg(long, default_value = "user", value_parser = ["user", "cron", "api"])]
        trigger: String,
    },
    /// Continue an interrupted migration (the same as `run` without `--force`).
    Resume {
        /// Migration definitions.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write the report.
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the reconciliation report; exit code 6 when it does not reconcile.
    Verify {
        /// Migration definitions.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print the report as JSON instead of Markdown.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Apply the store's pending schema migrations (each once, in one transaction).
    Migrate {
        /// Connection name of the store in the connections file.
        #[arg(long, default_value = "store")]
        connection: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the store's DDL for a dialect.
    Schema {
        /// `sqlite` or `postgres`.
        #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
        dialect: String,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Show one run: source, sink, counts per step, rejects by reason, artifacts.
    Show {
        /// Run id.
        run_id: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Recompute the hash chain of the flow log; exit code 5 if anything was altered,
    /// deleted or reordered.
    Verify {
        /// Also require the log to end with this hash (noted from an earlier verify), which
        /// detects removal of the newest entries.
        #[arg(long)]
        expect_head: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing(format: LogFormat, verbose: u8) {
    // sqlx reports statements over one second as warnings; the set-based phases of a
    // migration take longer by design, so these show only with -v.
    let default = match verbose {
        0 => "warn,sqlx::query=error",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNODO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn update(&self, records: u64, bytes: u64) {
        if bytes > 0 {
            self.0.set_position(bytes);
        }
        let secs = self.0.elapsed().as_secs_f64().max(0.001);
        self.0.set_message(format!(
            "{records} records, {:.0} records/s",
            records as f64 / secs
        ));
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn progress(size: Option<u64>, json: bool) -> Option<Arc<dyn Progress>> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match size {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(Arc::new(Bar(bar)))
}

impl Cli {
    /// The connections file `--config` names. Any file but the default `snodo.yaml` must
    /// exist; the default is read when present, else the embedded defaults apply (the
    /// SQLite store and flow log).
    fn connections(&self) -> Result<ConnectionsFile, Error> {
        ConnectionsFile::load(&self.config, self.config != Path::new("snodo.yaml"))
    }

    /// The flow log the connections file names.
    async fn flow_log(&self) -> Result<FlowLog, Error> {
        open_log(&self.connections()?).await
    }
}

async fn open_log(conns: &ConnectionsFile) -> Result<FlowLog, Error> {
    let cfg = conns.flow_log_connection().map_err(Error::Other)?;
    FlowLog::open(Db::connect(&cfg, 2).await?).await
}

fn print_summary(s: &RunSummary) {
    let verdict = match s.status.as_str() {
        "succeeded" => "succeeded",
        "rejects_over_limit" => "FAILED: too many rejects",
        "interrupted" => "interrupted",
        "limited" => "stopped at --limit (the next run continues from here)",
        _ => "FAILED",
    };
    println!(
        "run {}  pipeline {}  {verdict} in {:.1} s{}",
        s.run_id,
        s.pipeline,
        s.seconds,
        if s.dry_run {
            "  (dry run: nothing written)"
        } else {
            ""
        }
    );
    if let Some(r) = &s.resumed_from {
        println!("  resumed interrupted run {r}");
    }
    println!(
        "  read {}  written {}  rejected {}  filtered {}",
        s.read, s.written, s.rejected, s.filtered
    );
    if !s.rejected_by_reason.is_empty() {
        println!("  rejected by reason:");
        for (reason, n) in &s.rejected_by_reason {
            println!("    {reason:<40} {n:>8}");
        }
    }
    for a in &s.artifacts {
        println!(
            "  wrote {} ({} rows, {} bytes, sha256 {})",
            a.path, a.rows, a.size, a.sha256
        );
    }
    if let Some(e) = &s.error {
        println!("  error: {e}");
    }
    println!(
        "  details: snodo runs show {}    rejects: snodo rejects {}",
        s.run_id, s.run_id
    );
}

/// `NAME=VALUE` of `--var`.
fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not NAME=VALUE (e.g. --var anno=2024)")),
    }
}

async fn cmd_run(
    cli: &Cli,
    pipeline: &Path,
    dry_run: bool,
    limit: Option<u64>,
    json: bool,
    trigger: &str,
    vars: &[(String, String)],
) -> Result<i32, Error> {
    let conns = cli.connections()?;
    let (mut p, _) = snodo_connectors::load(pipeline, &conns)?;
    for (name, value) in vars {
        p.vars.insert(name.clone(), value.clone());
    }
    let log = open_log(&conns).await?;
    let plan = snodo_connectors::plan(pipeline, &p, &conns, dry_run).await?;
    let progress = progress(plan.source.size_hint(), json);
    let summary = runtime::run(
        plan,
        &log,
        RunOptions {
            trigger: trigger.to_string(),
            dry_run,
            limit,
            progress,
            run_id: None,
        },
    )
    .await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        print_summary(&summary);
    }
    Ok(summary.exit_code())
}

fn cmd_lint(cli: &Cli, files: &[PathBuf], json: bool) -> Result<i32, Error> {
    let conns = match cli.connections() {
        Ok(c) => c,
        Err(Error::Config { file, problems }) => {
            for p in &problems {
                eprintln!("{}", format_problem(&file, p));
            }
            return Ok(3);
        }
        Err(e) => return Err(e),
    };
    let mut all = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let problems = match snodo_core::config::file_kind(&text) {
            snodo_core::config::FileKind::Migration => match snodo_migrator::load(f, &conns) {
                Ok(_) => Vec::new(),
                Err(Error::Config { problems, .. }) => problems,
                Err(e) => vec![snodo_core::config::yaml::Problem {
                    location: Default::default(),
                    path: String::new(),
                    message: e.to_string(),
                }],
            },
            snodo_core::config::FileKind::Steps => {
                snodo_core::config::steps_file(&text, &f.display().to_string()).1
            }
            snodo_core::config::FileKind::Pipeline => snodo_connectors::lint(f, &conns),
        };
        for p in problems {
            all.push((f.clone(), p));
        }
    }
    if json {
        let items: Vec<_> = all
            .iter()
            .map(|(f, p)| {
                serde_json::json!({
                    "file": f.display().to_string(),
                    "line": p.location.line,
                    "column": p.location.column,
                    "path": p.path,
                    "message": p.message,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        );
    } else {
        for (f, p) in &all {
            println!("{}", format_problem(f, p));
        }
        if all.is_empty() {
            println!("{} file(s) checked, no problems", files.len());
        } else {
            println!("{} problem(s) in {} file(s)", all.len(), files.len());
        }
    }
    Ok(if all.is_empty() { 0 } else { 3 })
}

async fn cmd_runs(
    cli: &Cli,
    show: &Option<RunsCommand>,
    limit: u32,
    json: bool,
) -> Result<i32, Error> {
    let log = cli.flow_log().await?;
    match show {
        None => {
            let runs = log.runs(limit).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&runs).unwrap_or_default()
                );
                return Ok(0);
            }
            println!(
                "{:<24} {:<28} {:<20} {:>9} {:>9} {:>9}  started",
                "run", "pipeline", "status", "read", "written", "rejected"
            );
            for r in runs {
                let (read, written, rejected) = r
                    .finished
                    .as_ref()
                    .map(|f| (f.read, f.written, f.rejected))
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<28} {:<20} {:>9} {:>9} {:>9}  {}",
                    r.run_id,
                    r.started.pipeline,
                    r.status(),
                    read,
                    written,
                    rejected,
                    r.started.started_at
                );
            }
            Ok(0)
        }
        Some(RunsCommand::Show { run_id, json: j }) => {
            let r = log.run(run_id).await?;
            let artifacts = log.entries(run_id, "artifact").await?;
            let artifacts: Vec<serde_json::Value> = artifacts
                .iter()
                .filter_map(|e| serde_json::from_str(&e.body).ok())
                .collect();
            if json || *j {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "run": r, "artifacts": artifacts })
                    )
                    .unwrap_or_default()
                );
                return Ok(0);
            }
            let s = &r.started;
            println!("run        {}", r.run_id);
            println!(
                "pipeline   {} ({}, sha256 {})",
                s.pipeline, s.file, s.file_sha256
            );
            println!("version    snodo {}", s.version);
            println!(
                "trigger    {} by {}{}",
                s.trigger,
                s.user,
                if s.dry_run { " (dry run)" } else { "" }
            );
            if let Some(p) = &s.resumed_from {
                println!("resumes    {p}");
            }
            println!("source     {}", s.source);
            println!("sink       {}", s.sink);
            println!("started    {}", s.started_at);
            match &r.finished {
                None => println!(
                    "status     no end recorded: still running, or killed (the next run resumes it)"
                ),
                Some(f) => {
                    println!("finished   {} ({} ms)", f.finished_at, f.duration_ms);
                    println!("status     {}", f.status);
                    println!(
                        "records    read {}  written {}  rejected {}  filtered {}",
                        f.read, f.written, f.rejected, f.filtered
                    );
                    for st in &f.steps {
                        println!(
                            "  {:<24} in {:>9}  out {:>9}  rejected {:>7}  filtered {:>7}",
                            st.step, st.input, st.output, st.rejected, st.filtered
                        );
                    }
                    if !f.rejected_by_reason.is_empty() {
                        println!("rejected by reason:");
                        for (k, n) in &f.rejected_by_reason {
                            println!("  {k:<40} {n:>8}");
                        }
                    }
                    if let Some(e) = &f.error {
                        println!("error      {e}");
                    }
                }
            }
            for a in artifacts {
                println!(
                    "artifact   {} rows={} size={} sha256={} → {}",
                    a["path"].as_str().unwrap_or(""),
                    a["rows"],
                    a["size"],
                    a["sha256"].as_str().unwrap_or(""),
                    a["destination"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
    }
}

async fn cmd_rejects(cli: &Cli, run_id: &str, json: bool) -> Result<i32, Error> {
    let log = cli.flow_log().await?;
    let rejects = log.rejects(run_id).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rejects).unwrap_or_default()
        );
        return Ok(0);
    }
    for r in &rejects {
        println!("{} [{}] {} — {}", r.position, r.step, r.code, r.reason);
    }
    println!("{} rejected record(s)", rejects.len());
    Ok(0)
}

/// One lineage pair that names the key asked for.
#[derive(serde::Serialize)]
struct LineageMatch {
    run_id: String,
    /// The entry's position in the flow log and its time.
    seq: i64,
    ts: String,
    source: String,
    source_record: String,
    target: String,
    target_key: String,
}

async fn cmd_lineage(cli: &Cli, key: &str, run: Option<&str>, json: bool) -> Result<i32, Error> {
    let log = cli.flow_log().await?;
    let mut found = Vec::new();
    log.for_each_lineage(key, run, |e, l, from, to| {
        found.push(LineageMatch {
            run_id: e.run_id.clone(),
            seq: e.seq,
            ts: e.ts.clone(),
            source: l.source.clone(),
            source_record: from.to_string(),
            target: l.target.clone(),
            target_key: to.to_string(),
        })
    })
    .await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&found).unwrap_or_default()
        );
        return Ok(0);
    }
    for m in &found {
        println!(
            "{}  run {}  {} record {}  →  {} {}",
            m.ts, m.run_id, m.source, m.source_record, m.target, m.target_key
        );
    }
    if found.is_empty() {
        println!(
            "no lineage entry names `{key}` (keys are matched whole, as the flow log stores them)"
        );
    } else {
        println!("{} lineage pair(s)", found.len());
    }
    Ok(0)
}

async fn cmd_verify(cli: &Cli, expect_head: &Option<String>, json: bool) -> Result<i32, Error> {
    let log = cli.flow_log().await?;
    let mut v = log.verify().await?;
    if let Some(h) = expect_head
        && !v.head_hash.eq_ignore_ascii_case(h)
    {
        v.problems.push(format!(
            "the log ends with hash {} (entry {}), not the expected {h}: newest entries were removed or the hash is from another log",
            v.head_hash, v.head_seq
        ));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if v.problems.is_empty() {
        println!(
            "flow log intact: {} entries, head {} {}",
            v.entries, v.head_seq, v.head_hash
        );
    } else {
        for p in &v.problems {
            println!("TAMPERED: {p}");
        }
    }
    Ok(if v.problems.is_empty() { 0 } else { 5 })
}

/// One bar per table load, with rows/s and ETA against the legacy row count.
fn table_bars(json: bool) -> Option<snodo_migrator::ProgressFactory> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let multi = indicatif::MultiProgress::new();
    Some(Arc::new(move |name: &str, total: Option<u64>| {
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{prefix:40} [{elapsed_precise}] {wide_bar} {pos}/{len} rows {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner(),
        };
        let bar = multi.add(bar);
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Arc::new(RowBar(bar)) as Arc<dyn Progress>
    }))
}

struct RowBar(ProgressBar);

impl Progress for RowBar {
    fn update(&self, records: u64, _bytes: u64) {
        self.0.set_position(records);
    }
    fn finish(&self) {
        self.0.finish();
    }
}

fn load_definitions(
    cli: &Cli,
    files: &[PathBuf],
) -> Result<(ConnectionsFile, Vec<snodo_migrator::Definition>), Error> {
    let conns = cli.connections()?;
    let defs = snodo_migrator::load_all(files, &conns)?;
    Ok((conns, defs))
}

fn print_outcome(o: &snodo_migrator::Outcome) {
    for p in &o.phases {
        let detail = if p.status == "skipped" {
            "already done".to_string()
        } else {
            format!(
                "{} rows, {} written, {} rejected, {:.1} s, {:.0} rows/s",
                p.rows, p.written, p.rejected, p.seconds, p.rows_per_second
            )
        };
        println!("  {:<50} {:<10} {detail}", p.phase, p.status);
        if let Some(e) = &p.error {
            println!("      error: {e}");
        }
    }
    let verdict = match o.status.as_str() {
        "succeeded" => "migration complete and reconciled",
        "nothing_to_do" => "nothing to do: every phase is done (use --force to run again)",
        "not_reconciled" => "FAILED: the migration does not reconcile; read the report",
        "rejects_over_limit" => {
            "STOPPED: too many rejects in a table; fix the definition or the data and run again"
        }
        "interrupted" => "interrupted: `snodo migrate resume` continues where it stopped",
        _ => "FAILED: `snodo migrate resume` continues after the cause is fixed",
    };
    println!("{verdict}");
    if let Some(r) = &o.report {
        let rejected: u64 = r.tables.iter().map(|t| t.rejected.rows).sum();
        let read: u64 = r.tables.iter().map(|t| t.read.rows).sum();
        println!(
            "  {} legacy rows read, {} rejected with a reason; {} person rows became {} persons; {} cases to review; {} PIA totals differ from the legacy ones",
            read,
            rejected,
            r.persons.source_rows,
            r.persons.persons,
            r.persons.review_by_kind.values().sum::<u64>(),
            r.pia.differences
        );
    }
    for f in &o.report_files {
        println!("  report: {f}");
    }
}

async fn cmd_migrate(cli: &Cli, command: &MigrateCommand) -> Result<i32, Error> {
    match command {
        MigrateCommand::Plan { files, json } => {
            let (conns, defs) = load_definitions(cli, files)?;
            let plan = snodo_migrator::plan(&defs, &conns).await?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).unwrap_or_default()
                );
            } else {
                for p in &plan {
                    let rows = p.rows.map(|n| format!("{n} rows")).unwrap_or_default();
                    println!(
                        "  {:<50} {:<12} {:>12}  {}",
                        p.phase, p.state, rows, p.description
                    );
                }
            }
            Ok(0)
        }
        MigrateCommand::Run {
            files,
            force,
            report_dir,
            json,
            trigger,
        } => migrate_run(cli, files, *force, report_dir, *json, trigger).await,
        MigrateCommand::Resume {
            files,
            report_dir,
            json,
        } => migrate_run(cli, files, false, report_dir, *json, "user").await,
        MigrateCommand::Verify { files, json } => {
            let (conns, defs) = load_definitions(cli, files)?;
            let log = open_log(&conns).await?;
            let store = snodo_migrator::open_store(&defs, &conns).await?;
            let report = snodo_migrator::reconcile(&defs, &conns, &log, &store).await?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.to_markdown());
            }
            Ok(if report.reconciled { 0 } else { 6 })
        }
    }
}

async fn migrate_run(
    cli: &Cli,
    files: &[PathBuf],
    force: bool,
    report_dir: &Option<PathBuf>,
    json: bool,
    trigger: &str,
) -> Result<i32, Error> {
    let (conns, defs) = load_definitions(cli, files)?;
    let log = open_log(&conns).await?;
    let opts = snodo_migrator::Options {
        force,
        trigger: trigger.to_string(),
        report_dir: report_dir
            .clone()
            .unwrap_or_else(|| snodo_core::config::connections::default_data_dir().join("reports")),
        progress: table_bars(json),
    };
    let outcome = snodo_migrator::run(&defs, &conns, &log, &opts).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome).unwrap_or_default()
        );
    } else {
        print_outcome(&outcome);
    }
    Ok(outcome.exit_code())
}

async fn cmd_store(cli: &Cli, command: &StoreCommand) -> Result<i32, Error> {
    match command {
        StoreCommand::Schema { dialect } => {
            print!("{}", snodo_store::schema_sql(dialect));
            Ok(0)
        }
        StoreCommand::Migrate { connection, json } => {
            let conns = cli.connections()?;
            let cfg = conns.get(connection).map_err(Error::Other)?;
            let db = Db::connect(cfg, 1).await?;
            let r = snodo_store::migrate(&db).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                println!(
                    "store `{connection}` ({}): applied {:?}, already there {:?}",
                    r.dialect, r.applied, r.already
                );
            }
            Ok(0)
        }
    }
}

async fn dispatch(cli: &Cli) -> Result<i32, Error> {
    match &cli.command {
        Command::Run {
            pipeline,
            dry_run,
            limit,
            json,
            trigger,
            vars,
        } => cmd_run(cli, pipeline, *dry_run, *limit, *json, trigger, vars).await,
        Command::Lint { files, json } => cmd_lint(cli, files, *json),
        Command::Schema {
            connections,
            migration,
        } => {
            let schema = if *connections {
                schemars::schema_for!(ConnectionsFile)
            } else if *migration {
                schemars::schema_for!(snodo_migrator::MigrationFile)
            } else {
                schemars::schema_for!(Pipeline)
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            Ok(0)
        }
        Command::Runs { show, limit, json } => cmd_runs(cli, show, *limit, *json).await,
        Command::Rejects { run_id, json } => cmd_rejects(cli, run_id, *json).await,
        Command::Lineage { key, run, json } => cmd_lineage(cli, key, run.as_deref(), *json).await,
        Command::Log {
            command: LogCommand::Verify { expect_head, json },
        } => cmd_verify(cli, expect_head, *json).await,
        Command::Migrate { command } => cmd_migrate(cli, command).await,
        Command::Store { command } => cmd_store(cli, command).await,
        Command::Serve { listen } => cmd_serve(cli, listen.as_deref()).await,
    }
}

async fn cmd_serve(cli: &Cli, listen: Option<&str>) -> Result<i32, Error> {
    let conns = cli.connections()?;
    let log = Arc::new(open_log(&conns).await?);
    let (waas, prefix) = snodo_connectors::inps::waas::from_config(&conns, log).await?;
    let addr = listen
        .map(str::to_string)
        .or_else(|| conns.serve.as_ref().map(|s| s.listen.clone()))
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::Other(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    eprintln!(
        "snodo serve: WaaS e-service on http://{bound}{prefix} (/status, /flussi, /esiti); Ctrl-C stops it"
    );
    let app = snodo_connectors::inps::waas::router(waas, &prefix);
    snodo_connectors::inps::waas::serve(listener, app).await?;
    Ok(0)
}

fn main() -> ExitCode {
    tune_allocator();
    // `snodo runs | head` must end quietly, as other Unix tools do, instead of panicking
    // on a closed pipe.
    #[cfg(unix)]
    // SAFETY: called before any thread is started; restores the default disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format, cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match rt.block_on(dispatch(&cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", snodo_core::mask::redact_text(&e.to_string()));
            e.exit_code()
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
