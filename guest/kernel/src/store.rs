//! Where model bytes come from: the host's `layer-store`, seen from the kernel.

use thiserror::Error;

/// A byte range in a model source (absolute offset, length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// Errors of a byte source (mirrors the WIT `store-error`).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("model not found: {0}")]
    NotFound(String),
    #[error("out of range: {0}")]
    OutOfRange(String),
    #[error("i/o error: {0}")]
    Io(String),
    #[error("request of {0} bytes is too large")]
    TooLarge(u64),
}

/// Counters a source keeps (mirrors the WIT `store-stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub total_bytes: u64,
    pub bytes_served: u64,
    pub reads: u64,
    pub layer_loads: u64,
    pub read_nanos: u64,
    pub max_offset_served: u64,
    pub memory64: bool,
}

/// An opened model: bytes addressed with 64-bit offsets.
///
/// The component implements it over the imported WIT `source`; native tests
/// implement it over a `Vec<u8>` ([`MemSource`]).
pub trait ByteSource {
    /// Total size in bytes.
    fn size(&self) -> u64;
    /// Read exactly `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError>;
    /// Gather `ranges` into one buffer, in order.
    fn load_layer(&self, layer: u32, ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError>;
    /// Non-blocking hint that `ranges` of `layer` are wanted next.
    fn prefetch(&self, _layer: u32, _ranges: &[ByteRange]) {}
    /// Counters.
    fn stats(&self) -> StoreStats {
        StoreStats {
            total_bytes: self.size(),
            ..StoreStats::default()
        }
    }
    /// True where the source lives in 64-bit storage beyond 4 GiB.
    fn is_memory64(&self) -> bool {
        false
    }
}

/// A source over bytes in memory (tests, small models).
pub struct MemSource {
    pub bytes: Vec<u8>,
}

impl MemSource {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    fn slice(&self, offset: u64, len: u64) -> Result<&[u8], StoreError> {
        let end = offset.checked_add(len).ok_or_else(|| {
            StoreError::OutOfRange(format!("offset {offset} + len {len} overflows"))
        })?;
        if end > self.bytes.len() as u64 {
            return Err(StoreError::OutOfRange(format!(
                "range {offset}..{end} past the end ({} bytes)",
                self.bytes.len()
            )));
        }
        Ok(&self.bytes[offset as usize..end as usize])
    }
}

impl ByteSource for MemSource {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        Ok(self.slice(offset, len)?.to_vec())
    }
    fn load_layer(&self, _layer: u32, ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for r in ranges {
            out.extend_from_slice(self.slice(r.offset, r.len)?);
        }
        Ok(out)
    }
}
