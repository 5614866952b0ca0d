//! The layer cache: every weight access of the forward pass goes through it.
//!
//! Resident mode is the policy that pins every layer; streaming pins some and
//! loads the others on each pass. Layers are used cyclically (0..L every
//! token), so plain LRU with fewer slots than layers evicts exactly the layer
//! needed next; the default `Pinned` policy keeps layers `0..K-1` and streams
//! the rest through one slot (hit rate (K-1)/L per pass).

use super::weights::{LayerData, LayerPlan};
use crate::store::ByteSource;
use crate::Result;
use std::rc::Rc;

/// Which layers a streamed cache keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// A fixed set of layers stays; one slot rotates through the rest.
    Pinned,
    /// Least recently used.
    Lru,
}

/// Cache counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub bytes_loaded: u64,
    pub load_nanos: u64,
}

/// Monotonic clock for load timing (no clock on bare targets: zero).
fn now_nanos() -> u64 {
    #[cfg(any(not(target_arch = "wasm32"), target_os = "wasi"))]
    {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
    #[cfg(all(target_arch = "wasm32", not(target_os = "wasi")))]
    {
        0
    }
}

/// Bounded cache of layers (blocks `0..n_blocks` plus the always-resident head).
pub struct LayerCache {
    plans: Vec<LayerPlan>,
    slots: Vec<Option<Rc<LayerData>>>,
    pinned: Vec<bool>,
    last_use: Vec<u64>,
    tick: u64,
    policy: Policy,
    /// Blocks that may be resident at once.
    capacity: usize,
    n_blocks: usize,
    /// Streamed blocks are read chunk by chunk by their matmuls
    /// ([`LayerData::load_chunked`]) rather than loaded whole.
    chunked: bool,
    stats: CacheStats,
}

impl LayerCache {
    /// A cache over `plans` (blocks, then the head) holding at most `capacity`
    /// blocks. `capacity >= n_blocks` is resident mode.
    pub fn new(plans: Vec<LayerPlan>, capacity: usize, policy: Policy) -> LayerCache {
        let n = plans.len();
        let n_blocks = n.saturating_sub(1);
        let capacity = capacity.clamp(1, n_blocks.max(1));
        let n_pinned = if capacity >= n_blocks {
            n_blocks
        } else if policy == Policy::Pinned {
            capacity - 1
        } else {
            0
        };
        let mut pinned = vec![false; n];
        for p in pinned.iter_mut().take(n_pinned) {
            *p = true;
        }
        if n > 0 {
            pinned[n - 1] = true; // the head
        }
        LayerCache {
            plans,
            slots: vec![None; n],
            pinned,
            last_use: vec![0; n],
            tick: 0,
            policy,
            capacity,
            n_blocks,
            // LRU caches whatever was loaded last, so it loads whole layers.
            chunked: policy == Policy::Pinned,
            stats: CacheStats::default(),
        }
    }

    /// Whether streamed blocks are read chunk by chunk as their matmuls use
    /// them (the default) or loaded whole.
    pub fn set_chunked(&mut self, chunked: bool) {
        self.chunked = chunked;
    }

    /// Whether every block stays resident.
    pub fn is_resident(&self) -> bool {
        self.capacity >= self.n_blocks
    }

    /// Blocks that may be resident at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The plan of layer `l`.
    pub fn plan(&self, l: usize) -> &LayerPlan {
        &self.plans[l]
    }

    /// Index of the head layer.
    pub fn head_index(&self) -> usize {
        self.n_blocks
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Layers resident now.
    pub fn resident_layers(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Bytes of weights resident now.
    pub fn resident_bytes(&self) -> u64 {
        self.slots.iter().flatten().map(|d| d.bytes() as u64).sum()
    }

    /// Load every pinned layer now (resident mode loads the whole model here,
    /// so a damaged file fails at load, not mid-generation).
    pub fn warm(&mut self, src: &dyn ByteSource) -> Result<()> {
        for l in 0..self.plans.len() {
            if self.pinned[l] {
                self.layer(src, l)?;
            }
        }
        Ok(())
    }

    /// Ask the store to read ahead layer `l` if it is not resident.
    pub fn prefetch(&self, src: &dyn ByteSource, l: usize) {
        if l < self.plans.len() && self.slots[l].is_none() {
            src.prefetch(l as u32, &self.plans[l].ranges);
        }
    }

    /// Layer `l`, from the cache or loaded through `src`.
    pub fn layer(&mut self, src: &dyn ByteSource, l: usize) -> Result<Rc<LayerData>> {
        self.tick += 1;
        if let Some(d) = &self.slots[l] {
            self.stats.hits += 1;
            self.last_use[l] = self.tick;
            return Ok(Rc::clone(d));
        }
        self.stats.misses += 1;
        if l < self.n_blocks {
            self.make_room(l);
        }
        let t0 = now_nanos();
        // Pinned layers (every layer of a resident cache, the head) are
        // repacked for the fast kernels once; a layer streamed in for one
        // pass is used as loaded (repacking it would cost a pass over its
        // bytes per load for little gain: streaming is bound by the copy).
        let pack = self.pinned[l];
        let data = Rc::new(if pack || !self.chunked {
            LayerData::load(src, l, &self.plans[l], pack)?
        } else {
            // A block streamed for one pass: only its vectors now, its
            // matrices chunk by chunk as the matmuls use them.
            LayerData::load_chunked(src, l, &self.plans[l])?
        });
        self.stats.load_nanos += now_nanos().saturating_sub(t0);
        self.stats.bytes_loaded += data.bytes() as u64;
        self.slots[l] = Some(Rc::clone(&data));
        self.last_use[l] = self.tick;
        Ok(data)
    }

    /// Evict blocks until one more fits.
    fn make_room(&mut self, incoming: usize) {
        loop {
            let resident: Vec<usize> = (0..self.n_blocks)
                .filter(|&b| self.slots[b].is_some())
                .collect();
            if resident.len() < self.capacity {
                return;
            }
            let victim = match self.policy {
                Policy::Pinned => resident
                    .iter()
                    .copied()
                    .find(|&b| !self.pinned[b] && b != incoming),
                Policy::Lru => resident
                    .iter()
                    .copied()
                    .filter(|&b| b != incoming && !(self.is_resident() && self.pinned[b]))
                    .min_by_key(|&b| self.last_use[b]),
            };
            match victim {
                Some(v) => {
                    self.slots[v] = None;
                    self.stats.evictions += 1;
                }
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ByteRange, MemSource};

    /// `n` blocks + head, each 16 bytes with no tensors.
    fn cache(n: usize, capacity: usize, policy: Policy) -> (LayerCache, MemSource) {
        let plans = (0..=n)
            .map(|l| LayerPlan {
                ranges: vec![ByteRange {
                    offset: 16 * l as u64,
                    len: 16,
                }],
                tensors: vec![],
                bytes: 16,
            })
            .collect();
        let src = MemSource::new((0..16 * (n + 1)).map(|i| (i / 16) as u8).collect());
        (LayerCache::new(plans, capacity, policy), src)
    }

    fn passes(c: &mut LayerCache, src: &MemSource, n: usize, passes: usize) {
        for _ in 0..passes {
            for l in 0..n {
                let d = c.layer(src, l).unwrap();
                assert_eq!(d.plan_index, l);
                assert!(c.resident_layers() <= c.capacity() + 1);
            }
            c.layer(src, n).unwrap();
        }
    }

    #[test]
    fn pinned_hits_k_minus_one_per_pass() {
        let (mut c, src) = cache(6, 3, Policy::Pinned);
        passes(&mut c, &src, 6, 1);
        let first = c.stats();
        passes(&mut c, &src, 6, 4);
        let s = c.stats();
        // Per later pass: 2 pinned blocks + the head hit, 4 streamed blocks miss.
        assert_eq!(s.hits - first.hits, 4 * 3);
        assert_eq!(s.misses - first.misses, 4 * 4);
        assert!(!c.is_resident());
    }

    #[test]
    fn lru_thrashes_on_cyclic_access() {
        let (mut c, src) = cache(6, 3, Policy::Lru);
        passes(&mut c, &src, 6, 5);
        let s = c.stats();
        assert_eq!(s.hits, 4, "only the head hits after the first pass");
        assert_eq!(s.misses, 5 * 6 + 1);
    }

    #[test]
    fn resident_loads_once() {
        let (mut c, src) = cache(4, 99, Policy::Pinned);
        assert!(c.is_resident());
        c.warm(&src).unwrap();
        assert_eq!(c.stats().misses, 5);
        passes(&mut c, &src, 4, 3);
        assert_eq!(c.stats().misses, 5);
        assert_eq!(c.stats().evictions, 0);
        assert_eq!(c.resident_bytes(), 5 * 16);
    }

    #[test]
    fn store_errors_propagate() {
        let (mut c, _) = cache(2, 2, Policy::Pinned);
        let short = MemSource::new(vec![0; 20]);
        assert!(matches!(c.layer(&short, 1), Err(crate::Error::Store(_))));
    }
}
