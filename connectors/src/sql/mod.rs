//! SQL databases: SQLite and PostgreSQL, read with keyset paging and written with
//! transactional upserts on the natural key (PostgreSQL through `COPY` into a staging table).
//!
//! SQL Server is read through tiberius ([`mssql`]): a `sql` source whose connection is
//! `mssql:` uses it. Oracle is not part of this family yet.

mod config;
pub mod mssql;
mod sink;
mod source;
pub mod values;

pub use config::{SqlSinkConfig, SqlSourceConfig};
pub use sink::SqlSink;
pub use source::SqlSource;
