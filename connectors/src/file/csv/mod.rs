//! CSV files: legacy exports (semicolons, Windows-1252, Italian dates and decimal commas)
//! in, and delimited files out.

mod config;
mod sink;
mod source;

pub use config::{ColumnType, CsvSinkConfig, CsvSourceConfig};
pub use sink::CsvSink;
pub use source::CsvSource;
