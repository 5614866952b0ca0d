//! Split models (llama.cpp's gguf-split, `NAME-0000k-of-0000N.gguf`).
//!
//! A host serves the shards as one source in which shard `k` is the region
//! starting at `k * SHARD_STRIDE`. Shard 0 holds the metadata; every shard is
//! a GGUF file of its own, parsed here and merged into one tensor table with
//! absolute offsets.

use crate::gguf::GgufFile;
use crate::store::{ByteRange, ByteSource, StoreError};
use crate::{Error, Result};

/// Address-space stride between shards (1 TiB).
pub const SHARD_STRIDE: u64 = 1 << 40;
/// More shards than this is not a real model.
const MAX_SHARDS: u64 = 4096;

/// A window `[base, base + len)` of a source, seen as a source of its own.
struct Region<'a> {
    src: &'a dyn ByteSource,
    base: u64,
    len: u64,
}

impl ByteSource for Region<'_> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => self.src.read(self.base + offset, len),
            _ => Err(StoreError::OutOfRange(format!(
                "bytes {offset}+{len} past the end of a shard of {} bytes",
                self.len
            ))),
        }
    }
    fn load_layer(&self, _layer: u32, ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for r in ranges {
            out.extend(self.read(r.offset, r.len)?);
        }
        Ok(out)
    }
}

/// Parse the model behind `src`: one GGUF file, or every shard of a split one.
pub fn parse_all(src: &dyn ByteSource) -> Result<GgufFile> {
    let total = src.size();
    let mut g = GgufFile::parse(src)?;
    let count = g.get_u64("split.count")?.unwrap_or(1);
    if count <= 1 {
        return Ok(g);
    }
    if count > MAX_SHARDS {
        return Err(Error::InvalidModel(format!(
            "split.count {count} is absurd"
        )));
    }
    let have = total.div_ceil(SHARD_STRIDE);
    if have < count {
        return Err(Error::InvalidModel(format!(
            "the model is split in {count} shards, but the store serves {have} (serve NAME-00001-of-{count:05}.gguf with its siblings)"
        )));
    }
    let mut ends = vec![shard_end(&g, 0)];
    for k in 1..count {
        let base = k * SHARD_STRIDE;
        let region = Region {
            src,
            base,
            len: (total - base).min(SHARD_STRIDE),
        };
        let shard = GgufFile::parse(&region).map_err(|e| {
            Error::InvalidModel(format!("shard {} of {count}: {}", k + 1, Error::from(e)))
        })?;
        let no = shard.get_u64("split.no")?.unwrap_or(k);
        if no != k {
            return Err(Error::InvalidModel(format!(
                "shard {} of {count} says it is split.no {no}",
                k + 1
            )));
        }
        ends.push(shard_end(&shard, base));
        g.append_shard(shard, base)?;
    }
    // Every shard must hold all its tensor data: one byte at the end of each
    // proves it, so a truncated shard fails here and not mid-generation.
    for (k, end) in ends.into_iter().enumerate() {
        if end > 0 {
            src.read(end - 1, 1).map_err(|e| {
                Error::InvalidModel(format!("shard {} of {count} is truncated: {e}", k + 1))
            })?;
        }
    }
    Ok(g)
}

/// Absolute end of the last tensor of a shard parsed at `base`.
fn shard_end(g: &GgufFile, base: u64) -> u64 {
    g.tensors
        .iter()
        .map(|t| base + t.offset + t.n_bytes)
        .max()
        .unwrap_or(0)
}
