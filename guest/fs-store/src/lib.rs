//! A `layer-store` component over wasi:filesystem.
//!
//! Model names are paths, resolved by the WASI runtime against its preopened
//! directories (`wasmtime run --dir MODELS ...`): a path outside them cannot be
//! opened. Each request is bounds-checked and served with a positioned read
//! (seek + read) into a fresh buffer, so the file is never copied whole into
//! this component's memory. Offsets are 64-bit; a file larger than 4 GiB is
//! served like any other, so `is-enabled` is true.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::Instant;

wit_bindgen::generate!({ world: "fs-store", path: "../../wit" });

use exports::wasm_chord::runtime::layer_store::{
    ByteRange, Guest, GuestSource, Source, StoreError, StoreStats,
};

/// Largest request served at once: the largest buffer a 32-bit guest can hold.
const MAX_REQUEST: u64 = i32::MAX as u64;

struct FsStore;

export!(FsStore);

impl Guest for FsStore {
    type Source = FileSource;

    fn open(name: String) -> Result<Source, StoreError> {
        FileSource::open(&name).map(Source::new)
    }

    fn is_enabled() -> bool {
        true
    }
}

/// An opened model file and the counters of what it served.
pub struct FileSource {
    name: String,
    file: RefCell<File>,
    size: u64,
    bytes_served: Cell<u64>,
    reads: Cell<u64>,
    layer_loads: Cell<u64>,
    read_nanos: Cell<u64>,
    max_offset_served: Cell<u64>,
}

/// An I/O error's message without the "(os error N)" suffix.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Check that `[offset, offset + len)` lies inside `size` bytes and that `len`
/// is at most [`MAX_REQUEST`]; returns the end offset.
fn check_range(offset: u64, len: u64, size: u64) -> Result<u64, StoreError> {
    if len > MAX_REQUEST {
        return Err(StoreError::TooLarge(len));
    }
    let end = offset.checked_add(len).ok_or_else(|| {
        StoreError::OutOfRange(format!(
            "offset {offset} + length {len} overflows a 64-bit offset (source is {size} bytes)"
        ))
    })?;
    if end > size {
        return Err(StoreError::OutOfRange(format!(
            "bytes {offset}..{end} requested, but the source is {size} bytes"
        )));
    }
    Ok(end)
}

impl FileSource {
    fn open(name: &str) -> Result<Self, StoreError> {
        let fail = |why: String| StoreError::NotFound(format!("cannot open '{name}': {why}"));
        let meta = std::fs::metadata(name).map_err(|e| fail(io_reason(&e)))?;
        if meta.is_dir() {
            return Err(fail("is a directory, not a regular file".into()));
        }
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let file = File::open(name).map_err(|e| fail(io_reason(&e)))?;
        let size = file
            .metadata()
            .map_err(|e| StoreError::Io(format!("cannot stat '{name}': {}", io_reason(&e))))?
            .len();
        Ok(Self {
            name: name.to_string(),
            file: RefCell::new(file),
            size,
            bytes_served: Cell::new(0),
            reads: Cell::new(0),
            layer_loads: Cell::new(0),
            read_nanos: Cell::new(0),
            max_offset_served: Cell::new(0),
        })
    }

    /// Append `len` bytes at `offset` to `out` (the range is already checked).
    fn read_into(&self, out: &mut Vec<u8>, offset: u64, len: u64) -> Result<(), StoreError> {
        let io = |e: std::io::Error| {
            StoreError::Io(format!(
                "cannot read {len} bytes at {offset} of '{}': {}",
                self.name,
                io_reason(&e)
            ))
        };
        let start = out.len();
        let n = usize::try_from(len).map_err(|_| StoreError::TooLarge(len))?;
        out.try_reserve_exact(n)
            .map_err(|_| StoreError::TooLarge(len))?;
        out.resize(start + n, 0);
        let mut file = self.file.borrow_mut();
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.read_exact(&mut out[start..]).map_err(io)?;
        Ok(())
    }

    /// Count a served request of `bytes` bytes ending at `end`, started at `t`.
    fn count(&self, bytes: u64, end: u64, t: Instant) {
        let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.bytes_served
            .set(self.bytes_served.get().saturating_add(bytes));
        self.read_nanos
            .set(self.read_nanos.get().saturating_add(nanos));
        self.max_offset_served
            .set(self.max_offset_served.get().max(end));
    }
}

impl GuestSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let t = Instant::now();
        let end = check_range(offset, len, self.size)?;
        let mut out = Vec::new();
        self.read_into(&mut out, offset, len)?;
        self.reads.set(self.reads.get() + 1);
        self.count(len, end, t);
        Ok(out)
    }

    fn load_layer(&self, _layer: u32, ranges: Vec<ByteRange>) -> Result<Vec<u8>, StoreError> {
        let t = Instant::now();
        let total = ranges
            .iter()
            .try_fold(0u64, |acc, r| acc.checked_add(r.len))
            .ok_or(StoreError::TooLarge(u64::MAX))?;
        if total > MAX_REQUEST {
            return Err(StoreError::TooLarge(total));
        }
        let mut end = 0;
        for r in &ranges {
            end = end.max(check_range(r.offset, r.len, self.size)?);
        }
        let mut out = Vec::new();
        let cap = usize::try_from(total).map_err(|_| StoreError::TooLarge(total))?;
        out.try_reserve_exact(cap)
            .map_err(|_| StoreError::TooLarge(total))?;
        for r in &ranges {
            self.read_into(&mut out, r.offset, r.len)?;
        }
        self.layer_loads.set(self.layer_loads.get() + 1);
        self.count(total, end, t);
        Ok(out)
    }

    fn prefetch(&self, _layer: u32, _ranges: Vec<ByteRange>) {
        // Only a hint; wasi:filesystem has no advisory read-ahead worth a call here.
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            total_bytes: self.size,
            bytes_served: self.bytes_served.get(),
            reads: self.reads.get(),
            layer_loads: self.layer_loads.get(),
            read_nanos: self.read_nanos.get(),
            max_offset_served: self.max_offset_served.get(),
            memory64: true,
        }
    }
}
