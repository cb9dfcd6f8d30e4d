//! Snodo's engine: typed values and records, pipeline configuration (raw YAML → resolved
//! model), the expression language, the steps, checkpoints, the hash-chained flow log and
//! the domain validators (codice fiscale, partita IVA, IBAN, Belfiore codes).
//!
//! Connectors live in `snodo-connectors`; this crate only defines the [`component::Source`]
//! and [`component::Sink`] contracts they implement, so that the runtime can be tested
//! without any of them.

pub mod committer;
pub mod component;
pub mod config;
pub mod db;
pub mod error;
pub mod expr;
pub mod flowlog;
pub mod mask;
pub mod record;
pub mod recycle;
pub mod report;
pub mod runtime;
pub mod secret;
pub mod steps;
pub mod validators;
pub mod value;

pub use error::{Error, Result};
pub use record::{Batch, Record, Schema, SourcePosition};
pub use value::Value;

/// Version of snodo recorded in every run of the flow log.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
