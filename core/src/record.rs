//! Records, their shared schema, source positions and batches.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// Field names of a record, shared by every record of a batch so that a million rows do
/// not carry a million copies of the header.
#[derive(Debug, Default)]
pub struct Schema {
    names: Vec<String>,
    /// Tells schemas apart for [`FieldRef`]'s cache; 0 (a default schema, or past the
    /// 4 billionth schema of a process) is never cached.
    id: u32,
    /// Every step and sink looks fields up by name for every record: with the standard
    /// library's SipHash these lookups were a tenth of the PS/PSA flow's instructions.
    /// Field names come from pipelines and file headers, not from untrusted peers, so a
    /// fast non-cryptographic hash is enough.
    index: HashMap<String, usize, foldhash::fast::RandomState>,
}

type Interned = HashMap<Vec<String>, Weak<Schema>, foldhash::fast::FixedState>;
/// Every live schema by its names, and the size at which dead entries are next swept.
/// Schemas are made per input file, query or step, never per record: one lock at each
/// costs nothing. Dead entries go when the map has doubled since the last sweep, so a
/// long-lived process (`snodo serve`) keeps about as many entries as live schemas.
static INTERNED: Mutex<(Interned, usize)> = Mutex::new((
    HashMap::with_hasher(foldhash::fast::FixedState::with_seed(0)),
    64,
));

impl Schema {
    /// Builds a schema, or returns the live one with the same names; a repeated name keeps
    /// its first position.
    ///
    /// Why one schema per list of names: each step worker runs its own copy of the steps,
    /// and a `map` that adds fields made a schema of its own in each worker. A
    /// [`FieldRef`] shared by the workers (a sink's layout) then saw two schema ids in
    /// turn, and looked the field up by name at almost every record (PS/PSA flow: about 7 %
    /// of the dry run's CPU). With the same names giving the same schema, its cache holds.
    pub fn new(names: Vec<String>) -> Arc<Schema> {
        let mut guard = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        let (map, sweep_at) = &mut *guard;
        if let Some(live) = map.get(&names).and_then(Weak::upgrade) {
            return live;
        }
        let mut index = HashMap::with_capacity_and_hasher(names.len(), Default::default());
        for (i, n) in names.iter().enumerate() {
            index.entry(n.clone()).or_insert(i);
        }
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let id = NEXT
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            .unwrap_or(0);
        let schema = Arc::new(Schema {
            names: names.clone(),
            id,
            index,
        });
        if map.len() >= *sweep_at {
            map.retain(|_, w| w.strong_count() > 0);
            *sweep_at = (map.len() * 2).max(64);
        }
        map.insert(names, Arc::downgrade(&schema));
        schema
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

impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

/// A field that a step, a layout or a sink reads from every record, by name.
///
/// Why not [`Record::get`]: a name lookup hashes the name and compares it, for every field
/// of every record; in the PS/PSA flow that was about 6 % of the run's CPU. Records of a
/// batch share their schema, so the position found in the first record serves the rest:
/// it is kept with the schema's id, in one atomic word so that the workers that share a
/// layout may read and replace it without a lock.
#[derive(Debug)]
pub struct FieldRef {
    name: String,
    /// `(schema id << 32) | (position + 1)` of the last schema seen, with position 0
    /// meaning "not in that schema"; 0 when none was seen yet.
    last: AtomicU64,
}

impl FieldRef {
    /// The field `name`.
    pub fn new(name: impl Into<String>) -> Self {
        FieldRef {
            name: name.into(),
            last: AtomicU64::new(0),
        }
    }

    /// The field's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The field's value in `rec`, `None` when its schema has no such field.
    pub fn get<'r>(&self, rec: &'r Record) -> Option<&'r Value> {
        self.position(&rec.schema).and_then(|i| rec.values.get(i))
    }

    /// The field's position in `schema`.
    pub fn position(&self, schema: &Schema) -> Option<usize> {
        let last = self.last.load(Ordering::Relaxed);
        if schema.id != 0 && (last >> 32) as u32 == schema.id {
            return (last as u32).checked_sub(1).map(|i| i as usize);
        }
        let found = schema.index_of(&self.name);
        if schema.id != 0 {
            let slot = found.map_or(0, |i| i as u64 + 1);
            // A schema wider than 4 billion fields cannot exist; checked all the same.
            if slot <= u32::MAX as u64 {
                self.last
                    .store((u64::from(schema.id) << 32) | slot, Ordering::Relaxed);
            }
        }
        found
    }
}

impl Clone for FieldRef {
    fn clone(&self) -> Self {
        FieldRef {
            name: self.name.clone(),
            last: AtomicU64::new(self.last.load(Ordering::Relaxed)),
        }
    }
}

impl fmt::Display for FieldRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl PartialEq for FieldRef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
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
    /// Asks the CPU to start loading this record's values into its cache, for a loop that
    /// will reach the record a little later: see [`retain_prefetching`].
    #[inline]
    pub fn prefetch(&self) {
        prefetch_values(&self.values);
    }

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

/// Asks the CPU to start loading `values` into its cache (the first lines: the fields a
/// step reads are mostly among the first few dozen, and a wide record, such as the ~90
/// fields of a SIUSS record, would otherwise flood the cache with lines no step reads).
#[inline]
pub fn prefetch_values(values: &[Value]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        const LINE: usize = 64;
        const MAX: usize = 16 * LINE;
        let start = values.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(values).min(MAX)).step_by(LINE) {
            // SAFETY: `_mm_prefetch` needs SSE, which every x86-64 CPU has; a prefetch is
            // a hint that never faults and reads nothing into the program, whatever the
            // address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Records a loop over a batch asks the CPU to load ahead of the one it works on.
pub const PREFETCH_AHEAD: usize = 2;

/// The records in order, each one's successor [`PREFETCH_AHEAD`] places on asked into the
/// cache as it is handed out: for loops that read a batch (the `COPY` encoders), as
/// [`retain_prefetching`] is for the steps that filter one.
pub fn prefetching(records: &[Record]) -> impl Iterator<Item = &Record> {
    records.iter().enumerate().map(|(i, r)| {
        if let Some(ahead) = records.get(i + PREFETCH_AHEAD) {
            ahead.prefetch();
        }
        r
    })
}

/// `Vec::retain_mut` that prefetches the records a little ahead of the one `keep` looks at.
///
/// Why: the first step to read a batch's records pays for bringing them into its core's
/// cache, from the source's thread on another core: in the CSV load into PostgreSQL, 87 %
/// of the samples of the `map` step's first read of a field landed on that one load
/// (`perf annotate`), 5 % of snodo's CPU. A record's values are a vector of their own, a
/// pointer the hardware prefetcher does not follow.
pub fn retain_prefetching(records: &mut Vec<Record>, mut keep: impl FnMut(&mut Record) -> bool) {
    let mut kept = 0;
    for i in 0..records.len() {
        if let Some(ahead) = records.get(i + PREFETCH_AHEAD) {
            ahead.prefetch();
        }
        if keep(&mut records[i]) {
            records.swap(kept, i);
            kept += 1;
        }
    }
    records.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(schema: &Arc<Schema>, values: &[i64]) -> Record {
        Record {
            schema: schema.clone(),
            values: values.iter().map(|v| Value::Int(*v)).collect(),
            position: SourcePosition::default(),
        }
    }

    /// The prefetching loop keeps and drops exactly what `Vec::retain_mut` does, in the
    /// same order, and sees every record once, changes included.
    #[test]
    fn retain_prefetching_is_retain_mut() {
        let schema = Schema::new(vec!["n".into(), "seen".into()]);
        for len in [0usize, 1, 2, 3, 7, 64] {
            for pattern in [
                0u64,
                u64::MAX,
                0b1011_0110,
                0x5555_5555_5555_5555,
                0x0F0F_F0F0_1234_8765,
            ] {
                let keep = |r: &mut Record| {
                    let Value::Int(n) = r.values[0] else {
                        unreachable!()
                    };
                    r.values[1] = Value::Int(n * 10);
                    pattern >> (n as u64 % 64) & 1 == 1
                };
                let make = || {
                    (0..len as i64)
                        .map(|n| record(&schema, &[n, 0]))
                        .collect::<Vec<_>>()
                };
                let (mut a, mut b) = (make(), make());
                a.retain_mut(keep);
                retain_prefetching(&mut b, keep);
                let values = |v: &[Record]| v.iter().map(|r| r.values.clone()).collect::<Vec<_>>();
                assert_eq!(values(&a), values(&b), "len {len}, pattern {pattern:#x}");
            }
        }
    }

    #[test]
    fn a_field_ref_follows_the_schema_of_each_record() {
        let ab = Schema::new(vec!["a".into(), "b".into()]);
        let ba = Schema::new(vec!["b".into(), "a".into()]);
        let c = Schema::new(vec!["c".into()]);
        let b = FieldRef::new("b");
        // Alternating schemas with the field at different places, and one without it:
        // a position kept from the previous record must never be used for another schema.
        for _ in 0..3 {
            assert_eq!(b.get(&record(&ab, &[1, 2])), Some(&Value::Int(2)));
            assert_eq!(b.get(&record(&ab, &[3, 4])), Some(&Value::Int(4)));
            assert_eq!(b.get(&record(&ba, &[5, 6])), Some(&Value::Int(5)));
            assert_eq!(b.get(&record(&c, &[7])), None);
            assert_eq!(b.get(&record(&c, &[8])), None);
        }
        // Equal names give the same schema (see `Schema::new`).
        let ab2 = Schema::new(vec!["a".into(), "b".into()]);
        assert_eq!(ab, ab2);
        assert_eq!(b.get(&record(&ab2, &[1, 9])), Some(&Value::Int(9)));
    }

    #[test]
    fn equal_names_give_the_same_schema_while_it_lives() {
        let names = || vec!["interned a".to_string(), "interned b".to_string()];
        let first = Schema::new(names());
        let again = Schema::new(names());
        assert!(Arc::ptr_eq(&first, &again));
        assert_ne!(first.id, Schema::new(vec!["interned b".into()]).id);
        // Two workers' copies of one step extend a shared input the same way: their
        // records then share one schema, and a FieldRef shared by the workers keeps its
        // cached position instead of flipping between two schema ids.
        let (mut w1, mut w2) = (OutputField::new("added"), OutputField::new("added"));
        let (mut r1, mut r2) = (record(&first, &[1, 2]), record(&first, &[3, 4]));
        w1.set(&mut r1, Value::Int(5));
        w2.set(&mut r2, Value::Int(6));
        assert!(Arc::ptr_eq(&r1.schema, &r2.schema));
        let added = FieldRef::new("added");
        assert_eq!(added.get(&r1), Some(&Value::Int(5)));
        assert_eq!(added.get(&r2), Some(&Value::Int(6)));
        // Once no record holds it, a schema is made anew (with a new id).
        let id = first.id;
        drop((first, again, r1, r2, w1, w2));
        assert_ne!(Schema::new(names()).id, id);
    }

    #[test]
    fn dead_schemas_do_not_pile_up() {
        for i in 0..10_000 {
            drop(Schema::new(vec![format!("short-lived {i}")]));
        }
        let (map, _) = &*INTERNED.lock().unwrap();
        // Other tests' live schemas are a handful; without the sweep there would be
        // 10,000 entries more.
        assert!(map.len() < 1_000, "{} entries", map.len());
    }

    #[test]
    fn a_default_schema_is_looked_up_every_time() {
        // A schema made without `Schema::new` has id 0, which is never cached.
        let empty = Arc::new(Schema::default());
        let a = FieldRef::new("a");
        assert_eq!(a.get(&record(&empty, &[])), None);
        let s = Schema::new(vec!["a".into()]);
        assert_eq!(a.get(&record(&s, &[1])), Some(&Value::Int(1)));
        assert_eq!(a.get(&record(&empty, &[])), None);
    }

    #[test]
    fn a_field_ref_shared_by_threads_reads_each_record_right() {
        let schemas: Vec<Arc<Schema>> = (0..4)
            .map(|i| {
                // The field `x` sits at position i.
                let mut names: Vec<String> = (0..i).map(|j| format!("pad{j}")).collect();
                names.push("x".into());
                Schema::new(names)
            })
            .collect();
        let x = Arc::new(FieldRef::new("x"));
        std::thread::scope(|s| {
            for t in 0..4 {
                let x = x.clone();
                let schemas = &schemas;
                s.spawn(move || {
                    for n in 0..20_000usize {
                        let i = (n + t) % schemas.len();
                        let mut values = vec![0; i];
                        values.push(n as i64);
                        assert_eq!(
                            x.get(&record(&schemas[i], &values)),
                            Some(&Value::Int(n as i64))
                        );
                    }
                });
            }
        });
    }
}
