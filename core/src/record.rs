//! Records, their shared schema, source positions and batches.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// Field names of a record, shared by every record of a batch so that a million rows do
/// not carry a million copies of the header.
#[derive(Debug, Default, PartialEq)]
pub struct Schema {
    names: Vec<String>,
    /// Every step and sink looks fields up by name for every record: with the standard
    /// library's SipHash these lookups were a tenth of the PS/PSA flow's instructions.
    /// Field names come from pipelines and file headers, not from untrusted peers, so a
    /// fast non-cryptographic hash is enough.
    index: HashMap<String, usize, foldhash::fast::RandomState>,
}

impl Schema {
    /// Builds a schema; a repeated name keeps its first position.
    pub fn new(names: Vec<String>) -> Arc<Schema> {
        let mut index = HashMap::with_capacity_and_hasher(names.len(), Default::default());
        for (i, n) in names.iter().enumerate() {
            index.entry(n.clone()).or_insert(i);
        }
        Arc::new(Schema { names, index })
    }

    /// Field names in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Position of a field.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One field a step writes into every record: the record's schema extended with the field
/// when it lacks it. Records of a batch share their schema, so the extended schema is
/// computed once per input schema and shared in turn.
#[derive(Debug, Clone)]
pub struct OutputField {
    name: String,
    cache: Option<(Arc<Schema>, Arc<Schema>, usize)>,
}

impl OutputField {
    /// The field `name`.
    pub fn new(name: impl Into<String>) -> Self {
        OutputField {
            name: name.into(),
            cache: None,
        }
    }

    /// Sets the field of `rec` to `value`, adding it to the schema if needed.
    pub fn set(&mut self, rec: &mut Record, value: Value) {
        let (schema, idx) = match &self.cache {
            Some((i, o, idx)) if Arc::ptr_eq(i, &rec.schema) => (o.clone(), *idx),
            _ => {
                let (out, idx) = match rec.schema.index_of(&self.name) {
                    Some(i) => (rec.schema.clone(), i),
                    None => {
                        let mut names = rec.schema.names().to_vec();
                        names.push(self.name.clone());
                        let n = names.len() - 1;
                        (Schema::new(names), n)
                    }
                };
                self.cache = Some((rec.schema.clone(), out.clone(), idx));
                (out, idx)
            }
        };
        rec.values.resize(schema.len(), Value::Null);
        rec.values[idx] = value;
        rec.schema = schema;
    }
}

/// Where a record came from, precise enough for an operator to open the source and find it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// 1-based record number in the source (header excluded).
    pub record: u64,
    /// 1-based line where the record starts, for text sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Byte offset where the record starts, for files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte: Option<u64>,
    /// Natural key in the source, for databases (`id=42`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}", self.record)?;
        if let Some(l) = self.line {
            write!(f, ", line {l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ", key {k}")?;
        }
        Ok(())
    }
}

/// One record: values in schema order plus where it came from.
#[derive(Clone, Debug)]
pub struct Record {
    /// The shared field names.
    pub schema: Arc<Schema>,
    /// One value per schema field.
    pub values: Vec<Value>,
    /// Source position.
    pub position: SourcePosition,
}

impl Record {
    /// Value of a field, `None` when the field does not exist.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.schema.index_of(name).and_then(|i| self.values.get(i))
    }

    /// Iterates `(name, value)` pairs in schema order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.schema
            .names()
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
    }

    /// The record as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.iter()
                .map(|(k, v)| (k.to_string(), v.to_json()))
                .collect(),
        )
    }
}

/// A record that did not make it, with why and where.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reject {
    /// The step that rejected it: `source`, `steps[1].validate`, `sink`.
    pub step: String,
    /// Short machine-friendly reason code (`invalid_date`, `codice_fiscale`, `malformed_row`...).
    pub code: String,
    /// What is wrong, in words, personal data masked.
    pub reason: String,
    /// Where the record came from.
    pub position: SourcePosition,
    /// The record as read, personal data masked.
    pub payload: serde_json::Value,
}

/// An opaque source position from which a source can resume (byte offset, cursor value).
pub type Checkpoint = serde_json::Value;

/// What flows between stages: records, the rejects found so far in them, and the source
/// checkpoint reached after the last record of the batch.
#[derive(Debug, Default)]
pub struct Batch {
    /// Sequence number of the batch in the run (1-based).
    pub seq: u64,
    /// Records still alive.
    pub records: Vec<Record>,
    /// Rejected records of this batch.
    pub rejects: Vec<Reject>,
    /// Records dropped on purpose by `filter` steps.
    pub filtered: u64,
    /// Records read from the source for this batch (alive + rejected + filtered).
    pub read: u64,
    /// Source position after this batch.
    pub checkpoint: Checkpoint,
    /// Bytes of input consumed so far, for progress bars (0 when unknown).
    pub bytes_read: u64,
    /// What the sink's [`crate::component::Prepare`] made of `records`, if it ran.
    pub prepared: Option<crate::component::Prepared>,
}
