//! Generated bindings of the `kernel` world and the host side of `layer-store`.

use wasmtime::component::{Resource, ResourceTable};

use crate::store::{ByteRange, ModelStore, SourceCounters, StoreError, TrackedSource};
use std::sync::Arc;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "kernel",
    with: {
        "wasm-chord:runtime/layer-store.source": crate::store::TrackedSource,
    },
    imports: { default: trappable },
    additional_derives: [serde::Serialize],
});

use self::wasm_chord::runtime::layer_store as ls;

/// The part of the store data the `layer-store` import needs.
pub struct LayerStoreHost<'a> {
    /// The embedder's model store.
    pub store: &'a dyn ModelStore,
    /// Resources handed to the guest.
    pub table: &'a mut ResourceTable,
    /// Counters of every source opened, by name (latest last).
    pub opened: &'a mut Vec<(String, Arc<SourceCounters>)>,
}

impl From<StoreError> for ls::StoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ls::StoreError::NotFound(m),
            StoreError::OutOfRange(m) => ls::StoreError::OutOfRange(m),
            StoreError::Io(m) => ls::StoreError::Io(m),
            StoreError::TooLarge(n) => ls::StoreError::TooLarge(n),
        }
    }
}

impl From<ls::StoreError> for StoreError {
    fn from(e: ls::StoreError) -> Self {
        match e {
            ls::StoreError::NotFound(m) => StoreError::NotFound(m),
            ls::StoreError::OutOfRange(m) => StoreError::OutOfRange(m),
            ls::StoreError::Io(m) => StoreError::Io(m),
            ls::StoreError::TooLarge(n) => StoreError::TooLarge(n),
        }
    }
}

fn ranges(r: &[ls::ByteRange]) -> Vec<ByteRange> {
    r.iter()
        .map(|r| ByteRange {
            offset: r.offset,
            len: r.len,
        })
        .collect()
}

impl ls::Host for LayerStoreHost<'_> {
    fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<TrackedSource>, ls::StoreError>> {
        let source = match self.store.open(&name) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.into())),
        };
        let tracked = TrackedSource::new(name.clone(), source, self.store.is_enabled());
        self.opened.push((name, tracked.counters()));
        Ok(Ok(self.table.push(tracked)?))
    }

    fn is_enabled(&mut self) -> wasmtime::Result<bool> {
        Ok(self.store.is_enabled())
    }
}

impl ls::HostSource for LayerStoreHost<'_> {
    fn size(&mut self, this: Resource<TrackedSource>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.size())
    }

    fn read(
        &mut self,
        this: Resource<TrackedSource>,
        offset: u64,
        len: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, ls::StoreError>> {
        Ok(self.table.get(&this)?.read(offset, len).map_err(Into::into))
    }

    fn load_layer(
        &mut self,
        this: Resource<TrackedSource>,
        _layer: u32,
        r: Vec<ls::ByteRange>,
    ) -> wasmtime::Result<Result<Vec<u8>, ls::StoreError>> {
        Ok(self
            .table
            .get(&this)?
            .load_layer(&ranges(&r))
            .map_err(Into::into))
    }

    fn prefetch(
        &mut self,
        this: Resource<TrackedSource>,
        _layer: u32,
        r: Vec<ls::ByteRange>,
    ) -> wasmtime::Result<()> {
        self.table.get(&this)?.prefetch(&ranges(&r));
        Ok(())
    }

    fn stats(&mut self, this: Resource<TrackedSource>) -> wasmtime::Result<ls::StoreStats> {
        let s = self.table.get(&this)?.stats();
        Ok(ls::StoreStats {
            total_bytes: s.total_bytes,
            bytes_served: s.bytes_served,
            reads: s.reads,
            layer_loads: s.layer_loads,
            read_nanos: s.read_nanos,
            max_offset_served: s.max_offset_served,
            memory64: s.memory64,
        })
    }

    fn drop(&mut self, this: Resource<TrackedSource>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
