//! XML: schemas (XSD) compiled for streaming validation, layouts that map records to
//! elements and back, and the `xml` sink and source built on them.

pub mod config;
pub mod layout;
pub mod release;
pub mod sink;
pub mod source;
pub mod writer;
pub mod xsd;

pub use config::{XmlSinkConfig, XmlSourceConfig, Xmllint};
pub use layout::Layout;
pub use sink::XmlSink;
pub use source::XmlSource;
