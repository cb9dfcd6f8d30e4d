//! The storage of records a run is done with, handed back to the sources to fill again.
//!
//! Why: in the CSV benchmark (`docs/benchmarks.md`) a tenth of snodo's CPU was the kernel
//! handing out fresh pages for the records' value vectors. The sink's side of the run
//! frees a batch once it is written; after its purge delay the allocator gives those pages
//! back to the system, and the source thread, which allocates the next batch, faults them
//! in again, each one zeroed by the kernel. Handing the emptied vectors straight back to
//! the source keeps them, and their pages, in use. Measured (1M rows, alternating pairs):
//! system time halved, snodo's CPU about 5 % less in a load; nothing in a dry run, where
//! the reused vectors' arrival cold in the source's cache costs what the faults cost.
//!
//! What is kept is bounded (`KEPT_BYTES` of value vectors, `KEPT_BATCHES` batch vectors):
//! the pool only holds what the run had in flight anyway, and what does not fit is freed
//! as before.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::record::Record;
use crate::value::Value;

/// At most this many bytes of value vectors (by capacity) are kept.
const KEPT_BYTES: usize = 8 << 20;
/// At most this many emptied batch vectors (`Vec<Record>`) are kept.
const KEPT_BATCHES: usize = 4;
/// A batch vector with room for more records than this is freed: the pool lives as long as
/// the process (the scheduler's), and one run's very large batches must not stay allocated.
const MAX_BATCH_RECORDS: usize = 16_384;
/// A value vector with room for more values than this (a very wide record) is freed: it
/// would take a narrow record's place in the pool for little gain.
const MAX_VALUES: usize = 256;

struct Kept {
    values: Vec<Vec<Value>>,
    bytes: usize,
    batches: Vec<Vec<Record>>,
}

/// A pool of emptied vectors. The process has one, [`POOL`]; tests make their own.
pub struct Pool {
    kept: Mutex<Kept>,
    /// Whether a source has taken vectors from the pool: until one does, nothing is
    /// kept (a run whose source makes its own vectors would only hold memory).
    wanted: AtomicBool,
}

/// The process's pool, shared by every run in it (the scheduler runs several).
pub static POOL: Pool = Pool::new();

fn bytes_of(v: &Vec<Value>) -> usize {
    v.capacity() * std::mem::size_of::<Value>()
}

impl Pool {
    /// An empty pool.
    pub const fn new() -> Pool {
        Pool {
            kept: Mutex::new(Kept {
                values: Vec::new(),
                bytes: 0,
                batches: Vec::new(),
            }),
            wanted: AtomicBool::new(false),
        }
    }

    /// Takes back the records of a batch that was written (or dropped): their value
    /// vectors are kept for [`Spare::values`] within the bounds, values and all.
    ///
    /// Why the values are not dropped here: this runs on the runtime's loop, where the
    /// records arrive cold, and dropping them read every value once more only for the
    /// source to fetch the same memory again to write the next record (`perf`: 4 % of
    /// snodo's CPU in this loop's drops). The source drops them as it takes a vector, on
    /// memory it is about to write, and frees their text on the thread that made it.
    pub fn give_back(&self, mut records: Vec<Record>) {
        if !self.wanted.load(Ordering::Relaxed) {
            return;
        }
        // What does not fit is dropped after the lock: a source waiting for vectors
        // should not wait for that.
        let mut spill = Vec::new();
        if let Ok(mut kept) = self.kept.lock() {
            for r in &mut records {
                let v = std::mem::take(&mut r.values);
                let size = bytes_of(&v);
                if v.capacity() == 0 || v.capacity() > MAX_VALUES || kept.bytes + size > KEPT_BYTES
                {
                    spill.push(v);
                    continue;
                }
                kept.bytes += size;
                kept.values.push(v);
            }
        }
        drop(spill);
        records.clear();
        if records.capacity() <= MAX_BATCH_RECORDS
            && let Ok(mut kept) = self.kept.lock()
            && kept.batches.len() < KEPT_BATCHES
        {
            kept.batches.push(records);
        }
    }

    /// An empty batch vector with room for `capacity` records: a kept one when there is
    /// one.
    pub fn batch(&self, capacity: usize) -> Vec<Record> {
        let mut v = self
            .kept
            .lock()
            .ok()
            .and_then(|mut k| k.batches.pop())
            .unwrap_or_default();
        v.reserve(capacity);
        v
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

/// A source's supply of value vectors: it takes the pool's whole stock when it runs out,
/// so that the lock is taken about once per batch, not once per record. The vectors still
/// hold the values of the records they carried until [`Spare::values`] hands them out.
#[derive(Default)]
pub struct Spare {
    values: Vec<Vec<Value>>,
}

impl Spare {
    /// An empty value vector with room for `capacity` values, from `pool`'s stock when it
    /// has one.
    pub fn values(&mut self, pool: &Pool, capacity: usize) -> Vec<Value> {
        if self.values.is_empty()
            && let Ok(mut kept) = pool.kept.lock()
        {
            pool.wanted.store(true, Ordering::Relaxed);
            std::mem::swap(&mut self.values, &mut kept.values);
            kept.bytes = 0;
        }
        match self.values.pop() {
            Some(mut v) => {
                // The old values are dropped here, on the thread that made them, but they
                // were last touched on the sink's side: a vector a few records ahead is
                // asked into the cache now (see `crate::record::retain_prefetching`).
                let ahead = self.values.len().checked_sub(crate::record::PREFETCH_AHEAD);
                if let Some(ahead) = ahead.map(|i| &self.values[i]) {
                    crate::record::prefetch_values(ahead);
                }
                v.clear();
                v.reserve(capacity);
                v
            }
            None => Vec::with_capacity(capacity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Schema, SourcePosition};

    fn records(n: usize, width: usize) -> Vec<Record> {
        let schema = Schema::new((0..width).map(|i| format!("f{i}")).collect());
        (0..n)
            .map(|i| Record {
                schema: schema.clone(),
                values: (0..width).map(|_| Value::Int(i as i64)).collect(),
                position: SourcePosition::default(),
            })
            .collect()
    }

    /// Vectors given back come out empty, with their room; the pool keeps no more than its
    /// bounds, and a source gets a fresh vector once the pool is dry.
    #[test]
    fn vectors_come_back_empty_and_the_pool_stays_bounded() {
        let pool = Pool::new();
        pool.give_back(records(10, 20));
        assert!(
            pool.kept.lock().unwrap().values.is_empty(),
            "nothing is kept before a source asks"
        );
        let mut spare = Spare::default();
        let fresh = spare.values(&pool, 7);
        assert!(fresh.is_empty() && fresh.capacity() >= 7);

        pool.give_back(records(10, 20));
        for _ in 0..10 {
            let v = spare.values(&pool, 5);
            assert!(v.is_empty(), "a vector comes back empty");
            assert!(v.capacity() >= 20, "with the room it had");
        }
        assert!(spare.values.is_empty(), "ten given, ten taken");
        assert_eq!(pool.kept.lock().unwrap().bytes, 0);

        // Far more than KEPT_BYTES: the pool keeps at most that much.
        let many = KEPT_BYTES / (20 * std::mem::size_of::<Value>()) * 3;
        pool.give_back(records(many, 20));
        let kept = pool.kept.lock().unwrap();
        assert!(kept.bytes <= KEPT_BYTES, "{} bytes kept", kept.bytes);
        assert!(kept.bytes > KEPT_BYTES / 2, "{} bytes kept", kept.bytes);
        assert_eq!(kept.bytes, kept.values.iter().map(bytes_of).sum::<usize>());
        drop(kept);

        // Too wide to keep.
        let before = pool.kept.lock().unwrap().values.len();
        pool.give_back(records(3, MAX_VALUES + 1));
        assert_eq!(pool.kept.lock().unwrap().values.len(), before);

        // Batch vectors: emptied, kept up to the bound.
        for _ in 0..KEPT_BATCHES + 2 {
            pool.give_back(records(2, 1));
        }
        assert_eq!(pool.kept.lock().unwrap().batches.len(), KEPT_BATCHES);
        let b = pool.batch(100);
        assert!(b.is_empty() && b.capacity() >= 100);
        assert_eq!(pool.kept.lock().unwrap().batches.len(), KEPT_BATCHES - 1);
        let mut huge = records(1, 1);
        huge.reserve(MAX_BATCH_RECORDS + 1);
        pool.give_back(huge);
        assert_eq!(
            pool.kept.lock().unwrap().batches.len(),
            KEPT_BATCHES - 1,
            "a very large batch vector is freed"
        );
    }
}
