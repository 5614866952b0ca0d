//! Generated bindings of the `kernel` world and the host side of `layer-store`.

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::StoreContextMut;

use crate::store::{Bytes, ModelStore, SourceCounters, TrackedSource};
use std::sync::Arc;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "kernel",
    with: {
        "wasm-chord:runtime/layer-store.source": crate::store::TrackedSource,
    },
    imports: { default: trappable },
    additional_derives: [serde::Serialize, PartialEq],
});

use self::wasm_chord::runtime::layer_store as ls;

/// Replace the generated `load-layer` (which must return a `Vec<u8>`) with
/// one that returns the source's [`Bytes`]: wasmtime copies them into the
/// buffer the guest's `cabi_realloc` gives, straight from the memory map of
/// a [`crate::FileStore`], with no host buffer in between. Call it after the
/// generated `add_to_linker`; `table` finds the resource table in the data.
pub(crate) fn link_load_layer<T: 'static>(
    linker: &mut Linker<T>,
    table: fn(&mut T) -> &mut ResourceTable,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut inst = linker.instance("wasm-chord:runtime/layer-store@0.1.0")?;
    inst.func_wrap(
        "[method]source.load-layer",
        move |mut store: StoreContextMut<'_, T>,
              (this, _layer, ranges): (Resource<TrackedSource>, u32, Vec<ls::ByteRange>)|
              -> wasmtime::Result<(Result<Bytes, ls::StoreError>,)> {
            let src = table(store.data_mut()).get(&this)?;
            Ok((src.load_layer(&ranges),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The part of the store data the `layer-store` import needs.
pub struct LayerStoreHost<'a> {
    /// The embedder's model store.
    pub store: &'a dyn ModelStore,
    /// Resources handed to the guest.
    pub table: &'a mut ResourceTable,
    /// Counters of every source opened, by name (latest last).
    pub opened: &'a mut Vec<(String, Arc<SourceCounters>)>,
}

impl ls::Host for LayerStoreHost<'_> {
    fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<TrackedSource>, ls::StoreError>> {
        let source = match self.store.open(&name) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
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
        Ok(self.table.get(&this)?.read(offset, len))
    }

    fn load_layer(
        &mut self,
        this: Resource<TrackedSource>,
        _layer: u32,
        r: Vec<ls::ByteRange>,
    ) -> wasmtime::Result<Result<Vec<u8>, ls::StoreError>> {
        // Only for linkers without [`link_load_layer`]: one more copy.
        Ok(self.table.get(&this)?.load_layer(&r).map(Vec::from))
    }

    fn prefetch(
        &mut self,
        this: Resource<TrackedSource>,
        _layer: u32,
        r: Vec<ls::ByteRange>,
    ) -> wasmtime::Result<()> {
        self.table.get(&this)?.prefetch(&r);
        Ok(())
    }

    fn stats(&mut self, this: Resource<TrackedSource>) -> wasmtime::Result<ls::StoreStats> {
        Ok(self.table.get(&this)?.stats())
    }

    fn drop(&mut self, this: Resource<TrackedSource>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
