//! SQL databases: SQLite and PostgreSQL, read with keyset paging and written with
//! transactional upserts on the natural key (PostgreSQL through `COPY` into a staging table).
//!
//! SQL Server is read through tiberius ([`mssql`]): a `sql` source whose connection is
//! `mssql:` uses it. Oracle is not part of this family yet.

mod config;
pub mod mssql;
mod pg_writer;
mod sink;
pub(crate) use sink::{CHECKPOINT_DDL, CHECKPOINT_GET, CHECKPOINT_PUT};
mod source;
pub mod values;

pub use config::{SqlSinkConfig, SqlSourceConfig};

use std::sync::Arc;

use snodo_core::error::{Error, Result};
use snodo_core::record::{Batch, Checkpoint, Record, Schema, SourcePosition};
use snodo_core::value::Value;

/// Where a keyset-paged query stands, and how its rows become records. Both SQL sources
/// (sqlx and tiberius) go through it, so their source positions (`id=42`) and checkpoints
/// (`{"after": [...], "record": n}`) are the same whatever the database.
pub(crate) struct Keyset<'a> {
    /// Key columns (the source position) and their indexes in the row.
    pub key: &'a [String],
    pub key_idx: &'a [usize],
    /// Ordering columns (cursor, then key) and their indexes in the row.
    pub order: &'a [String],
    pub order_idx: &'a [usize],
}

impl Keyset<'_> {
    /// Appends one decoded row to `batch` as record number `record_no`, and moves `after`
    /// to its ordering values.
    pub fn push(
        &self,
        batch: &mut Batch,
        schema: &Arc<Schema>,
        vals: Vec<Value>,
        record_no: u64,
        after: &mut Option<Vec<Value>>,
    ) -> Result<()> {
        let key = self
            .key
            .iter()
            .zip(self.key_idx)
            .map(|(name, &i)| format!("{name}={}", vals[i].to_text().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",");
        let next: Vec<Value> = self.order_idx.iter().map(|&i| vals[i].clone()).collect();
        if let Some(pos) = next.iter().position(Value::is_null) {
            // `(a, b) > (NULL, …)` is never true: paging would silently stop here.
            return Err(Error::Input(format!(
                "the source query returned NULL in `{}` (record {record_no}), which orders the pages; \
                 filter such rows out or COALESCE the column in the query",
                self.order[pos]
            )));
        }
        *after = Some(next);
        batch.records.push(Record {
            schema: schema.clone(),
            values: vals,
            position: SourcePosition {
                record: record_no,
                line: None,
                byte: None,
                key: Some(key),
            },
        });
        Ok(())
    }
}

/// The checkpoint after a page: the last ordering values and the records read so far.
pub(crate) fn page_checkpoint(after: &Option<Vec<Value>>, record_no: u64) -> Checkpoint {
    serde_json::json!({
        "after": after.iter().flatten().map(Value::to_tagged_json).collect::<Vec<_>>(),
        "record": record_no,
    })
}
pub use sink::SqlSink;
pub use source::SqlSource;
