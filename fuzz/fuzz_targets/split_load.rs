//! A split model (gguf-split shards) served as one sparse source, shard `k`
//! at `k * SHARD_STRIDE`: the kernel's shard parsing, merging and range
//! requests across shards (`Region` windows, `load_layer` gathers).
//!
//! Input: one byte of options (bit 0: streamed load), then the shards
//! separated by the 8 bytes `SHARD_SEPARATOR` (at most `MAX_SHARDS`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_chord_kernel::model::split::SHARD_STRIDE;
use wasm_chord_kernel::store::{ByteRange, ByteSource, StoreError};

/// Between two shards in an input.
const SHARD_SEPARATOR: &[u8; 8] = b"\0SHARD>\0";
const MAX_SHARDS: usize = 8;

/// Shards laid out as the native host's split store lays them out.
struct Sparse {
    shards: Vec<Vec<u8>>,
}

impl Sparse {
    fn slice(&self, offset: u64, len: u64) -> Result<&[u8], StoreError> {
        let k = (offset / SHARD_STRIDE) as usize;
        let at = offset % SHARD_STRIDE;
        let shard = self
            .shards
            .get(k)
            .ok_or_else(|| StoreError::OutOfRange(format!("no shard at offset {offset}")))?;
        match at.checked_add(len) {
            Some(end) if end <= shard.len() as u64 => Ok(&shard[at as usize..end as usize]),
            _ => Err(StoreError::OutOfRange(format!(
                "{offset}+{len} past the end of shard {k}"
            ))),
        }
    }
}

impl ByteSource for Sparse {
    fn size(&self) -> u64 {
        let last = self.shards.len() as u64 - 1;
        last * SHARD_STRIDE + self.shards[last as usize].len() as u64
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
    fn is_memory64(&self) -> bool {
        // Several TiB of address space: only a 64-bit store serves it.
        true
    }
}

fn split(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() + 1 < MAX_SHARDS {
        match data.windows(8).position(|w| w == SHARD_SEPARATOR) {
            Some(i) => {
                out.push(data[..i].to_vec());
                data = &data[i + 8..];
            }
            None => break,
        }
    }
    out.push(data.to_vec());
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let src = Sparse {
        shards: split(rest),
    };
    wasm_chord_fuzz::load_and_use(
        Box::new(src),
        selector,
        &rest[rest.len().saturating_sub(2)..],
    );
});
