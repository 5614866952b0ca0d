//! Counters of what each opened source served ([`StoreStats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{ByteRange, Bytes, Source, StoreError, StoreStats};

/// Atomic counters kept for one opened source.
#[derive(Debug, Default)]
pub struct SourceCounters {
    total_bytes: AtomicU64,
    bytes_served: AtomicU64,
    reads: AtomicU64,
    layer_loads: AtomicU64,
    read_nanos: AtomicU64,
    max_offset_served: AtomicU64,
    memory64: bool,
}

impl SourceCounters {
    /// A snapshot of the counters.
    pub fn snapshot(&self) -> StoreStats {
        StoreStats {
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            layer_loads: self.layer_loads.load(Ordering::Relaxed),
            read_nanos: self.read_nanos.load(Ordering::Relaxed),
            max_offset_served: self.max_offset_served.load(Ordering::Relaxed),
            memory64: self.memory64,
        }
    }
}

/// A source with its counters: what the kernel's `source` resource holds.
pub struct TrackedSource {
    /// Name the kernel opened it with.
    pub name: String,
    inner: Box<dyn Source>,
    counters: Arc<SourceCounters>,
}

impl TrackedSource {
    /// Wrap `inner`, opened as `name` from a store whose `is_enabled` is `memory64`.
    pub fn new(name: String, inner: Box<dyn Source>, memory64: bool) -> Self {
        let counters = SourceCounters {
            total_bytes: AtomicU64::new(inner.size()),
            memory64,
            ..SourceCounters::default()
        };
        Self {
            name,
            inner,
            counters: Arc::new(counters),
        }
    }

    /// The shared counters (still readable after the source is dropped).
    pub fn counters(&self) -> Arc<SourceCounters> {
        Arc::clone(&self.counters)
    }

    /// Size of the source.
    pub fn size(&self) -> u64 {
        self.inner.size()
    }

    /// Serve a `read` and count it.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let t = Instant::now();
        let out = self.inner.read_at(offset, len)?;
        self.count(t, out.len() as u64, offset.saturating_add(len));
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Serve a `load-layer` and count it. The time counted is the source's;
    /// wasmtime's copy of the bytes into guest memory comes after (for a
    /// view of a mapping, it is the whole copy: the guest's cache timings
    /// show it).
    pub fn load_layer(&self, ranges: &[ByteRange]) -> Result<Bytes, StoreError> {
        let t = Instant::now();
        let out = self.inner.load_layer(ranges)?;
        let max_end = ranges
            .iter()
            .map(|r| r.offset.saturating_add(r.len))
            .max()
            .unwrap_or(0);
        self.count(t, out.len() as u64, max_end);
        self.counters.layer_loads.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Pass a prefetch hint on.
    pub fn prefetch(&self, ranges: &[ByteRange]) {
        self.inner.prefetch(ranges);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }

    fn count(&self, started: Instant, bytes: u64, end: u64) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let c = &self.counters;
        c.bytes_served.fetch_add(bytes, Ordering::Relaxed);
        c.read_nanos.fetch_add(nanos, Ordering::Relaxed);
        c.max_offset_served.fetch_max(end, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for TrackedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedSource")
            .field("name", &self.name)
            .field("size", &self.inner.size())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemStore, ModelStore};

    #[test]
    fn tracked_counters() {
        let store = MemStore::new();
        store.insert("m", vec![0u8; 64]);
        let src = TrackedSource::new("m".into(), store.open("m").expect("open"), false);
        src.read(0, 8).expect("read");
        src.load_layer(&[
            ByteRange {
                offset: 16,
                len: 16,
            },
            ByteRange { offset: 40, len: 8 },
        ])
        .expect("layer");
        assert!(src.read(60, 8).is_err());
        let s = src.stats();
        assert_eq!(s.total_bytes, 64);
        assert_eq!(s.bytes_served, 32);
        assert_eq!(s.reads, 1);
        assert_eq!(s.layer_loads, 1);
        assert_eq!(s.max_offset_served, 48);
        assert!(!s.memory64);
    }
}
