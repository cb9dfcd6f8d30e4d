use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use snodo_core::config::yaml::{Node, Problem};
use snodo_core::config::{Check, deepest, problem};
use snodo_core::value::ValueType;

/// Reads rows from a SQLite or PostgreSQL query, page by page, ordered by `key` (keyset
/// paging: each page starts after the last key of the previous one, so a crash resumes at
/// the right row and no page holds more than `batch_size` rows).
///
/// ```yaml
/// source:
///   sql:
///     connection: canonical
///     query: SELECT id, codice_fiscale, updated_at FROM persona
///     key: [id]
///     cursor: updated_at    # incremental: only rows changed since the last completed run
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct SqlSourceConfig {
    /// Name of a connection in the connections file.
    pub connection: String,
    /// The query (without `ORDER BY` / `LIMIT`: snodo adds them). Either this or `query_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A file holding the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_file: Option<String>,
    /// Columns that identify a row uniquely; pages are ordered and resumed by them.
    pub key: Vec<String>,
    /// A column that grows whenever a row changes (`updated_at`, a rowversion). With it,
    /// each run reads only rows after the previous completed run's last value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Writes rows into a table with an upsert on the natural key, one transaction per batch
/// (or per `commit_rows` records on PostgreSQL) that also stores the pipeline's checkpoint.
///
/// ```yaml
/// sink:
///   sql:
///     connection: store
///     table: assistito
///     key: [id_anagrafica]
///     create_table: true
///     types: { isee: decimal, data_nascita: date }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct SqlSinkConfig {
    /// Name of a connection in the connections file.
    pub connection: String,
    /// Target table (`schema.table` allowed on PostgreSQL).
    pub table: String,
    /// The natural key: the columns of the table's primary key or unique constraint.
    pub key: Vec<String>,
    /// Create the table when it does not exist, with column types taken from `types` and
    /// otherwise from the first batch's values, and the key as primary key.
    #[serde(default)]
    pub create_table: bool,
    /// Column types for `create_table`.
    #[serde(default)]
    pub types: IndexMap<String, ValueType>,
    /// PostgreSQL, for bulk loads: commit in transactions of at least this many records,
    /// several batches in one (with the checkpoint of the last), instead of one transaction
    /// per batch; at most 50000. Only the batches' encoded rows wait, not the records (in
    /// the CSV benchmark about 250 bytes a record against about 1.4 KB for a record in
    /// flight), and up to four transactions' worth are in memory; a transaction of 5000
    /// records or more is sent in PostgreSQL's binary `COPY` format, which costs the server
    /// less than text to take in (docs/benchmarks.md). A batch PostgreSQL refuses rolls back
    /// the batches grouped with it; the next run reads them again from the last committed
    /// checkpoint, as after a crash. 0 (the default): one transaction per batch. SQLite
    /// commits one per batch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub commit_rows: u64,
}

/// The largest `commit_rows`: four transactions of encoded rows stay within a few tens of
/// megabytes for registry-sized records.
const MAX_COMMIT_ROWS: u64 = 50_000;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Check for SqlSourceConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        let n = deepest(node, &["sql"]);
        match (&self.query, &self.query_file) {
            (None, None) | (Some(_), Some(_)) => out.push(problem(
                n,
                &format!("{path}.sql"),
                "give exactly one of `query` and `query_file`",
            )),
            (None, Some(f)) if !std::path::Path::new(f).is_file() => out.push(problem(
                deepest(node, &["sql", "query_file"]),
                &format!("{path}.sql.query_file"),
                format!("file `{f}` not found (paths are relative to the working directory)"),
            )),
            _ => {}
        }
        if self.key.is_empty() {
            out.push(problem(
                deepest(node, &["sql", "key"]),
                &format!("{path}.sql.key"),
                "`key` needs at least one column: pages are ordered and resumed by it",
            ));
        }
    }
}

impl Check for SqlSinkConfig {
    fn check(&self, node: &Node, path: &str, out: &mut Vec<Problem>) {
        if self.key.is_empty() {
            out.push(problem(
                deepest(node, &["sql", "key"]),
                &format!("{path}.sql.key"),
                "`key` needs at least one column: writes are upserts on it",
            ));
        }
        if self.table.trim().is_empty() {
            out.push(problem(
                deepest(node, &["sql", "table"]),
                &format!("{path}.sql.table"),
                "`table` is empty",
            ));
        }
        if self.commit_rows > MAX_COMMIT_ROWS {
            out.push(problem(
                deepest(node, &["sql", "commit_rows"]),
                &format!("{path}.sql.commit_rows"),
                format!(
                    "`commit_rows` is at most {MAX_COMMIT_ROWS}: the encoded rows of up to four transactions are in memory; past a few thousand records a transaction saves nothing more"
                ),
            ));
        }
    }
}
