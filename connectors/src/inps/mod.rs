//! INPS: the SIUSS flows (PS/PSA with SINA, SINBA) delivered as files for the web upload
//! or queued for the WaaS e-service that INPS pulls, with the ledgers that make every
//! version of a record go out exactly once, and the e-service itself.

pub mod config;
pub mod ledger;
pub mod siuss;
pub mod waas;

pub use config::SiussSinkConfig;
pub use siuss::SiussSink;
