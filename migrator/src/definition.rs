//! The migration definition: one YAML file per legacy system, saying how each of its
//! tables becomes rows of a canonical table.
//!
//! The structs here are the single source of the file's JSON Schema (`snodo schema
//! migration`), its documentation and its validation, like the pipeline file's.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use snodo_connectors::SourceConfig;
use snodo_connectors::sql::SqlSourceConfig;
use snodo_core::config::yaml::{self, Node, Problem};
use snodo_core::config::{ConnectionsFile, FieldRule, OnError, deepest, problem};
use snodo_core::error::{Error, Result};
use snodo_core::expr::ExprEngine;

/// How one legacy system migrates into the canonical store.
///
/// ```yaml
/// migration: web_distretti
/// source_system: WD
/// ente: GE
/// source: { sql: { connection: legacy_web_distretti } }
/// target: store
/// on_error: { reject_limit: 2%, then: continue }
/// tables:
///   - table: presa_in_carico
///     into: presa_in_carico
///     key: [id_pic]
///     columns:
///       persona_source_key: text(id_anagrafica)
///       servizio_territoriale: trim(servizio)
///       tipo: tipo_pic
///       data_apertura: as_date(data_apertura)
///       data_chiusura: as_date(data_chiusura)
///     validate:
///       data_apertura: { required: true }
///       data_chiusura: { not_before: data_apertura }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationFile {
    /// Name of the migration (letters, digits, `_`, `-`). Each table's load is the
    /// pipeline `migrate.<migration>.<table>` in the flow log.
    pub migration: String,
    /// What this legacy system is, for the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Short code of the legacy system, stored in every row's `source_system`
    /// (`SS` Segretariato Sociale, `WD` Web Distretti, `ST` Scheda Tecnica). Legacy keys
    /// are unique only within their system.
    pub source_system: String,
    /// The tenant (`ente.codice`) the rows belong to.
    pub ente: String,
    /// Where the legacy tables are.
    pub source: MigrationSource,
    /// Connection name of the canonical store.
    pub target: String,
    /// What to do with rows that fail a column expression or a validation rule: they are
    /// rejected with their key and reason, listed in the reconciliation report, and the
    /// policy decides whether the table's load goes on.
    #[serde(default)]
    pub on_error: OnError,
    /// Rows per batch (default 2000): the unit of commit and checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Legacy and canonical fields holding personal data, masked in rejects and logs
    /// (codici fiscali and IBANs are masked everywhere anyway).
    #[serde(default)]
    pub personal: Vec<String>,
    /// The tables, loaded in the order of the canonical store's dependencies (persons
    /// before cases before interventions) whatever their order here.
    pub tables: Vec<TableMapping>,
}

/// Where a legacy system's tables are read from.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MigrationSource {
    /// A SQLite or PostgreSQL database holding the legacy tables under their own names
    /// (a restored copy, or the output of `scripts/gen_legacy_db.py`).
    ///
    /// The connection may be SQL Server itself (`mssql:` in the connections file): the
    /// tables are then read through tiberius, page by page.
    Sql {
        /// Connection name in the connections file.
        connection: String,
        /// Schema that holds the tables: `dbo` on SQL Server, the schema the copy was
        /// restored into on PostgreSQL (e.g. `web_distretti`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schema: Option<String>,
    },
    /// A directory of CSV/BCP exports, one `<table>.csv` per table with a header row
    /// (as `bcp … queryout` or SSMS "Save results as" produce them). Empty fields are
    /// NULL; `as_date`, `as_decimal` and `as_datetime` read the Italian formats of such
    /// exports as well as ISO ones, so the same `columns` serve both kinds of source.
    Csv {
        /// The directory.
        dir: String,
        /// Field delimiter (default `;`).
        #[serde(default = "semicolon")]
        delimiter: String,
        /// Character encoding (default `windows-1252`, what SQL Server tools write).
        #[serde(default = "cp1252")]
        encoding: String,
    },
}

fn semicolon() -> String {
    ";".into()
}

fn cp1252() -> String {
    "windows-1252".into()
}

/// One legacy table and the canonical table it fills.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// The legacy table.
    pub table: String,
    /// The canonical table (see `docs/store.md`).
    pub into: String,
    /// The legacy table's primary key. The canonical row's `source_key` is these columns'
    /// values joined by `|`; pages are read and resumed in this order.
    pub key: Vec<String>,
    /// A query to read instead of the whole table (without `ORDER BY`): to join a code
    /// table or skip rows that are not data. Its rows still need the `key` columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Put before the key in `source_key` (`richiesta|ECO`), when several legacy tables
    /// of one system fill the same canonical table, as code tables do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Canonical column: expression over the legacy row's columns (the functions of
    /// pipeline `map` steps: `as_date`, `as_decimal`, `norm_name`, `is_codice_fiscale`…).
    pub columns: IndexMap<String, String>,
    /// Rules over the canonical columns, checked after `columns`: a row breaking one is
    /// rejected with every broken rule as reason.
    #[serde(default)]
    pub validate: IndexMap<String, FieldRule>,
}

/// A definition loaded from disk.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of its bytes: a changed definition reloads its tables.
    pub sha256: String,
    /// The parsed content.
    pub file: MigrationFile,
}

impl TableMapping {
    /// The query that reads the legacy rows (SQL sources).
    pub fn source_query(&self, source: &MigrationSource) -> String {
        let schema = match source {
            MigrationSource::Sql { schema, .. } => schema.as_deref(),
            MigrationSource::Csv { .. } => None,
        };
        match (&self.query, schema) {
            (Some(q), _) => q.clone(),
            (None, Some(s)) => format!("SELECT * FROM {}.{}", ident(s), ident(&self.table)),
            (None, None) => format!("SELECT * FROM {}", ident(&self.table)),
        }
    }

    /// The pipeline source reading this table's rows: all columns, or only the key
    /// columns (`keys_only`, for the reconciliation report).
    pub fn source_config(&self, source: &MigrationSource, keys_only: bool) -> Result<SourceConfig> {
        match source {
            MigrationSource::Sql { connection, .. } => {
                let mut query = self.source_query(source);
                if keys_only {
                    let cols: Vec<String> =
                        self.key.iter().map(|k| format!("q.{}", ident(k))).collect();
                    query = format!("SELECT {} FROM ({query}) q", cols.join(", "));
                }
                Ok(SourceConfig::Sql(SqlSourceConfig {
                    connection: connection.clone(),
                    query: Some(query),
                    query_file: None,
                    key: self.key.clone(),
                    cursor: None,
                }))
            }
            MigrationSource::Csv {
                dir,
                delimiter,
                encoding,
            } => {
                let path = Path::new(dir).join(format!("{}.csv", self.table));
                // Through serde so that every other option keeps its documented default.
                let cfg = serde_json::json!({
                    "path": path.display().to_string(),
                    "delimiter": delimiter,
                    "encoding": encoding,
                });
                serde_json::from_value(cfg)
                    .map(SourceConfig::Csv)
                    .map_err(|e| Error::Other(format!("source.csv: {e}")))
            }
        }
    }
}

impl MigrationFile {
    /// The pipeline name of a table's load.
    pub fn pipeline_name(&self, table: &TableMapping) -> String {
        format!("migrate.{}.{}", self.migration, table.table)
    }

    /// The tables in load order: by the canonical table's position in the store's
    /// migrations, which define referenced tables first.
    pub fn ordered_tables(&self) -> Vec<&TableMapping> {
        let order = snodo_store::tables();
        let mut t: Vec<(usize, usize, &TableMapping)> = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let rank = order
                    .iter()
                    .position(|o| *o == t.into)
                    .unwrap_or(usize::MAX);
                (rank, i, t)
            })
            .collect();
        t.sort_by_key(|(rank, i, _)| (*rank, *i));
        t.into_iter().map(|(_, _, t)| t).collect()
    }
}

/// A column or table name as written in the generated queries: plain when it is a plain
/// identifier (every dialect, SQL Server included, reads it the same), double-quoted
/// otherwise.
fn ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_string()
    } else {
        snodo_core::db::quote_ident(name)
    }
}

fn ident_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks what serde cannot: canonical tables and columns exist, expressions compile,
/// connections are known, one legacy table per canonical table and system.
fn check(f: &MigrationFile, root: &Node, connections: &ConnectionsFile, out: &mut Vec<Problem>) {
    let at = |keys: &[&str]| deepest(root, keys);
    if !ident_ok(&f.migration) {
        out.push(problem(
            at(&["migration"]),
            "migration",
            "use letters, digits, `_` and `-` only: it becomes part of pipeline names",
        ));
    }
    for (key, v) in [("source_system", &f.source_system), ("ente", &f.ente)] {
        if !(1..=16).contains(&v.len())
            || !v
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            out.push(problem(
                at(&[key]),
                key,
                format!("`{v}` must be 1–16 upper-case letters, digits or `_` (e.g. `WD`, `GE`)"),
            ));
        }
    }
    match &f.source {
        MigrationSource::Sql { connection, .. } => {
            if let Err(e) = connections.get(connection) {
                out.push(problem(
                    at(&["source", "sql", "connection"]),
                    "source.sql.connection",
                    e,
                ));
            }
        }
        MigrationSource::Csv {
            dir,
            delimiter,
            encoding,
        } => {
            if !Path::new(dir).is_dir() {
                out.push(problem(
                    at(&["source", "csv", "dir"]),
                    "source.csv.dir",
                    format!(
                        "directory `{dir}` not found (paths are relative to the working directory)"
                    ),
                ));
            }
            if delimiter.chars().count() != 1 {
                out.push(problem(
                    at(&["source", "csv", "delimiter"]),
                    "source.csv.delimiter",
                    "the delimiter is one character",
                ));
            }
            let probe = serde_json::json!({ "path": "x", "encoding": encoding });
            if let Err(e) =
                serde_json::from_value::<snodo_connectors::file::csv::CsvSourceConfig>(probe)
            {
                out.push(problem(
                    at(&["source", "csv", "encoding"]),
                    "source.csv.encoding",
                    e.to_string(),
                ));
            }
        }
    }
    if let Err(e) = connections.get(&f.target) {
        out.push(problem(at(&["target"]), "target", e));
    }
    if f.tables.is_empty() {
        out.push(problem(at(&["tables"]), "tables", "no tables to migrate"));
    }
    let engine = ExprEngine::new();
    let tables_node = at(&["tables"]);
    for (i, t) in f.tables.iter().enumerate() {
        let node = match &tables_node.kind {
            yaml::NodeKind::Seq(items) => items.get(i).unwrap_or(tables_node),
            _ => tables_node,
        };
        let path = format!("tables[{i}]");
        let Some(cols) = snodo_store::columns(&t.into) else {
            out.push(problem(
                deepest(node, &["into"]),
                &format!("{path}.into"),
                format!(
                    "`{}` is not a canonical table; the store has: {}",
                    t.into,
                    snodo_store::tables().join(", ")
                ),
            ));
            continue;
        };
        let sharing = f.tables.iter().filter(|o| o.into == t.into).count();
        if sharing > 1 && t.key_prefix.is_none() {
            out.push(problem(
                deepest(node, &["into"]),
                &format!("{path}.into"),
                format!(
                    "{sharing} legacy tables fill `{}`: give each one a distinct `key_prefix` so their keys cannot collide",
                    t.into
                ),
            ));
        }
        if t.key.is_empty() {
            out.push(problem(
                deepest(node, &["key"]),
                &format!("{path}.key"),
                "`key` needs the legacy primary key's columns",
            ));
        }
        for (c, src) in &t.columns {
            let cnode = deepest(node, &["columns", c]);
            if snodo_store::TRACE_COLUMNS.contains(&c.as_str()) {
                out.push(problem(
                    cnode,
                    &format!("{path}.columns.{c}"),
                    format!("`{c}` is set by the migrator itself"),
                ));
            } else if !cols.iter().any(|k| k == c) {
                let names: Vec<&str> = cols.iter().map(String::as_str).collect();
                let hint = yaml::suggest(c, &names)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                out.push(problem(
                    cnode,
                    &format!("{path}.columns.{c}"),
                    format!("`{}` has no column `{c}`{hint}", t.into),
                ));
            }
            if let Err(e) = engine.compile(src) {
                out.push(problem(cnode, &format!("{path}.columns.{c}"), e));
            }
        }
        for field in t.validate.keys() {
            if !t.columns.contains_key(field) {
                out.push(problem(
                    deepest(node, &["validate", field]),
                    &format!("{path}.validate.{field}"),
                    format!("`{field}` is not one of this table's `columns`"),
                ));
            }
        }
    }
}

/// Loads and checks a definition, reporting every problem with file, line and column.
pub fn load(path: &Path, connections: &ConnectionsFile) -> Result<Definition> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    let fail = |problems: Vec<Problem>| Error::Config {
        file: path.to_path_buf(),
        problems,
    };
    let root = yaml::parse(&text).map_err(|p| fail(vec![p]))?;
    let file: MigrationFile = yaml::from_node(&root, "").map_err(fail)?;
    let mut problems = Vec::new();
    check(&file, &root, connections, &mut problems);
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.location.line, p.location.column));
        return Err(fail(problems));
    }
    Ok(Definition {
        path: path.to_path_buf(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        file,
    })
}

/// Loads several definitions; all their problems are reported together. Two
/// definitions for the same source system and tenant would overwrite each other's rows.
pub fn load_all(paths: &[PathBuf], connections: &ConnectionsFile) -> Result<Vec<Definition>> {
    let mut defs = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match load(p, connections) {
            Ok(d) => defs.push(d),
            Err(e) => errors.push(e),
        }
    }
    if errors.len() == 1 {
        return Err(errors.remove(0));
    }
    if !errors.is_empty() {
        return Err(Error::Several(errors));
    }
    for (i, a) in defs.iter().enumerate() {
        for b in &defs[i + 1..] {
            if a.file.source_system == b.file.source_system && a.file.ente == b.file.ente {
                return Err(Error::Other(format!(
                    "{} and {} both migrate source system `{}` of ente `{}`: their rows would overwrite each other",
                    a.path.display(),
                    b.path.display(),
                    a.file.source_system,
                    a.file.ente
                )));
            }
            if a.file.migration == b.file.migration {
                return Err(Error::Other(format!(
                    "{} and {} have the same `migration` name `{}`",
                    a.path.display(),
                    b.path.display(),
                    a.file.migration
                )));
            }
        }
    }
    if let Some(first) = defs.first()
        && let Some(other) = defs
            .iter()
            .find(|d| d.file.ente != first.file.ente || d.file.target != first.file.target)
    {
        return Err(Error::Other(format!(
            "{} migrates into ente `{}` / target `{}` but {} into `{}` / `{}`: run one tenant and store at a time",
            first.path.display(),
            first.file.ente,
            first.file.target,
            other.path.display(),
            other.file.ente,
            other.file.target
        )));
    }
    Ok(defs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections() -> ConnectionsFile {
        ConnectionsFile::parse(
            "connections:\n  store: { sqlite: { path: /tmp/x.db } }\n  legacy: { sqlite: { path: /tmp/y.db } }\n",
            Path::new("snodo.yaml"),
        )
        .unwrap()
    }

    fn problems(yaml: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("def.yaml");
        std::fs::write(&p, yaml).unwrap();
        match load(&p, &connections()) {
            Ok(_) => Vec::new(),
            Err(Error::Config { problems, .. }) => problems
                .iter()
                .map(|p| {
                    format!(
                        "{}:{} {}: {}",
                        p.location.line, p.location.column, p.path, p.message
                    )
                })
                .collect(),
            Err(other) => panic!("{other}"),
        }
    }

    const HEAD: &str = "migration: wd\nsource_system: WD\nente: GE\nsource: { sql: { connection: legacy } }\ntarget: store\ntables:\n";

    #[test]
    fn a_good_definition_loads_and_orders_tables_by_dependency() {
        let yaml = format!(
            "{HEAD}  - table: pic\n    into: presa_in_carico\n    key: [id_pic]\n    columns: {{ tipo: tipo_pic }}\n  - table: anagrafica\n    into: persona_fonte\n    key: [id_anagrafica]\n    columns: {{ cognome: trim(cognome) }}\n"
        );
        assert!(problems(&yaml).is_empty(), "{:?}", problems(&yaml));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("def.yaml");
        std::fs::write(&p, &yaml).unwrap();
        let d = load(&p, &connections()).unwrap();
        let order: Vec<&str> = d
            .file
            .ordered_tables()
            .iter()
            .map(|t| t.table.as_str())
            .collect();
        assert_eq!(order, ["anagrafica", "pic"]);
        assert_eq!(
            d.file.pipeline_name(d.file.ordered_tables()[0]),
            "migrate.wd.anagrafica"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let yaml = format!(
            "{HEAD}  - table: pic\n    into: presa_in_carico\n    key: []\n    columns:\n      tipo_caso: tipo_pic\n      source_key: id_pic\n      tipo: upper(\n    validate:\n      data_apertura: {{ required: true }}\n  - table: x\n    into: nessuna\n    key: [id]\n    columns: {{}}\n"
        );
        let p = problems(&yaml);
        let all = p.join("\n");
        assert!(all.contains("tables[0].key: `key` needs"), "{all}");
        assert!(
            all.contains(
                "11:18 tables[0].columns.tipo_caso: `presa_in_carico` has no column `tipo_caso`"
            ),
            "{all}"
        );
        assert!(
            all.contains(
                "tables[0].columns.source_key: `source_key` is set by the migrator itself"
            ),
            "{all}"
        );
        assert!(all.contains("tables[0].columns.tipo:"), "{all}");
        assert!(all.contains("tables[0].validate.data_apertura: `data_apertura` is not one of this table's `columns`"), "{all}");
        assert!(
            all.contains("tables[1].into: `nessuna` is not a canonical table"),
            "{all}"
        );
    }

    #[test]
    fn tables_sharing_a_canonical_table_need_key_prefixes() {
        let yaml = format!(
            "{HEAD}  - table: tab_a\n    into: codice\n    key: [cod]\n    columns: {{ codice: cod }}\n  - table: tab_b\n    into: codice\n    key: [cod]\n    key_prefix: b\n    columns: {{ codice: cod }}\n"
        );
        let p = problems(&yaml).join("\n");
        assert!(
            p.contains("tables[0].into: 2 legacy tables fill `codice`"),
            "{p}"
        );
        assert!(!p.contains("tables[1].into"), "{p}");
    }
}
