//! SQL databases: SQLite and PostgreSQL, read with keyset paging and written with
//! transactional upserts on the natural key (PostgreSQL through `COPY` into a staging table).
//!
//! SQL Server (tiberius) and Oracle connectors belong to the migration work and are not
//! part of this family yet.

mod config;
mod sink;
mod source;
pub mod values;

pub use config::{SqlSinkConfig, SqlSourceConfig};
pub use sink::SqlSink;
pub use source::SqlSource;
