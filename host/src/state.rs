//! The data of the wasmtime store a kernel instance runs in: WASI, the
//! resource table, the memory limiter and the layer store.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::LayerStoreHost;
use crate::interrupt::Interrupt;
use crate::store::{ModelStore, SourceCounters};

/// Tracks guest linear memory (sum over memories) and its peak, applies a
/// cap of `max` bytes per memory, and remembers whether it refused a growth.
pub(crate) struct MemoryTracker {
    limits: StoreLimits,
    pub(crate) current: u64,
    pub(crate) peak: u64,
    pub(crate) refused: bool,
}

impl MemoryTracker {
    pub(crate) fn new(max: u64) -> MemoryTracker {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        MemoryTracker {
            limits: StoreLimitsBuilder::new().memory_size(max).build(),
            current: 0,
            peak: 0,
            refused: false,
        }
    }
}

impl ResourceLimiter for MemoryTracker {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !ok;
        if ok {
            let grow = desired.saturating_sub(current) as u64;
            self.current = self.current.saturating_add(grow);
            self.peak = self.peak.max(self.current);
        }
        Ok(ok)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The growth was counted when it was allowed; a failed growth is
        // rare (the OS refused) and leaves the count slightly high.
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Data of the wasmtime store every kernel instance runs in.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) memory: MemoryTracker,
    pub(crate) models: Arc<dyn ModelStore>,
    pub(crate) opened: Vec<(String, Arc<SourceCounters>)>,
    /// Cancellation and the deadline of the call in progress.
    pub(crate) interrupt: Interrupt,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// What the `layer-store` import sees of the store data.
    pub(crate) fn layer_store(&mut self) -> LayerStoreHost<'_> {
        LayerStoreHost {
            store: &*self.models,
            table: &mut self.table,
            opened: &mut self.opened,
        }
    }
}
