//! Split GGUF models (llama.cpp's gguf-split: `NAME-00001-of-0000N.gguf`):
//! the shards are served as one source in which shard `k` is the region
//! starting at `k * SHARD_STRIDE`. The kernel parses each region as a GGUF
//! file and loads the model from all of them.

use super::{total_len, ByteRange, Bytes, Source, StoreError, DEFAULT_MAX_REQUEST};
use std::path::{Path, PathBuf};

/// Address-space stride between shards (1 TiB): shard `k` starts at `k << 40`.
pub const SHARD_STRIDE: u64 = 1 << 40;

/// If `path` names the first shard of a split model, the paths of all shards.
pub fn shard_paths(path: &Path) -> Option<Vec<PathBuf>> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    // "...-00001-of-00003"
    let (head, count) = stem.rsplit_once("-of-")?;
    let (prefix, first) = head.rsplit_once('-')?;
    if first != "00001" || count.len() != 5 || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = count.parse().ok()?;
    if n < 2 {
        return None;
    }
    Some(
        (1..=n)
            .map(|k| path.with_file_name(format!("{prefix}-{k:05}-of-{count}.gguf")))
            .collect(),
    )
}

/// Several shards (any [`Source`]s) behind one 64-bit address space.
pub struct SplitSource {
    shards: Vec<Box<dyn Source>>,
    max_request: u64,
}

impl std::fmt::Debug for SplitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitSource")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl SplitSource {
    /// Shard `k` of `shards` is served at offsets from `k * SHARD_STRIDE`.
    /// Requests are limited to [`DEFAULT_MAX_REQUEST`] bytes in all.
    pub fn new(shards: Vec<Box<dyn Source>>) -> Self {
        SplitSource {
            shards,
            max_request: DEFAULT_MAX_REQUEST,
        }
    }

    /// Change the largest request served at once (bytes, over all shards).
    pub fn with_max_request(mut self, max_request: u64) -> Self {
        self.max_request = max_request;
        self
    }

    /// The shard holding `[offset, offset + len)` and the offset inside it.
    fn locate(&self, offset: u64, len: u64) -> Result<(&dyn Source, u64), StoreError> {
        let k = offset / SHARD_STRIDE;
        let shard = self.shards.get(k as usize).ok_or_else(|| {
            StoreError::OutOfRange(format!(
                "offset {offset} is in shard {} but the model has {} shards",
                k + 1,
                self.shards.len()
            ))
        })?;
        let inner = offset % SHARD_STRIDE;
        if inner.checked_add(len).is_none_or(|end| end > SHARD_STRIDE) {
            return Err(StoreError::OutOfRange(format!(
                "bytes {offset}+{len} cross the end of shard {}",
                k + 1
            )));
        }
        Ok((shard.as_ref(), inner))
    }
}

impl Source for SplitSource {
    fn size(&self) -> u64 {
        let last = self.shards.len().saturating_sub(1) as u64;
        last * SHARD_STRIDE + self.shards.last().map_or(0, |s| s.size())
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        if len > self.max_request {
            return Err(StoreError::TooLarge(len));
        }
        let (shard, inner) = self.locate(offset, len)?;
        shard.read_at(inner, len)
    }

    fn load_layer(&self, ranges: &[ByteRange]) -> Result<Bytes, StoreError> {
        // The whole gathered buffer is one request, as for one file.
        let total = total_len(ranges)?;
        if total > self.max_request {
            return Err(StoreError::TooLarge(total));
        }
        // One range (a layer's tensors stored together): the shard's own
        // answer, a view of its map where it has one.
        if let [r] = ranges {
            let (shard, inner) = self.locate(r.offset, r.len)?;
            return shard.load_layer(&[ByteRange {
                offset: inner,
                len: r.len,
            }]);
        }
        let cap = usize::try_from(total).map_err(|_| StoreError::TooLarge(total))?;
        let mut out = Vec::with_capacity(cap);
        for r in ranges {
            let (shard, inner) = self.locate(r.offset, r.len)?;
            out.extend_from_slice(&shard.load_layer(&[ByteRange {
                offset: inner,
                len: r.len,
            }])?);
        }
        Ok(Bytes::from(out))
    }

    fn prefetch(&self, ranges: &[ByteRange]) {
        for r in ranges {
            if let Ok((shard, inner)) = self.locate(r.offset, r.len) {
                shard.prefetch(&[ByteRange {
                    offset: inner,
                    len: r.len,
                }]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        let p = shard_paths(Path::new("/m/llama-00001-of-00003.gguf")).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], Path::new("/m/llama-00003-of-00003.gguf"));
        assert!(shard_paths(Path::new("/m/llama-00002-of-00003.gguf")).is_none());
        assert!(shard_paths(Path::new("/m/llama.gguf")).is_none());
        assert!(shard_paths(Path::new("/m/x-00001-of-00001.gguf")).is_none());
    }

    /// A layer gathered from several shards obeys the store's request limit
    /// as a whole, like one file's (each shard alone is under it).
    #[test]
    fn layer_across_shards_obeys_max_request() {
        use crate::store::{MemStore, ModelStore};
        let mem = MemStore::new();
        mem.insert("a", vec![1u8; 8]);
        mem.insert("b", vec![2u8; 8]);
        let shards = vec![mem.open("a").unwrap(), mem.open("b").unwrap()];
        let split = SplitSource::new(shards).with_max_request(10);
        let ranges = [
            ByteRange { offset: 0, len: 6 },
            ByteRange {
                offset: SHARD_STRIDE,
                len: 6,
            },
        ];
        assert!(matches!(
            split.load_layer(&ranges),
            Err(StoreError::TooLarge(12))
        ));
        assert_eq!(
            split.load_layer(&ranges[..1]).unwrap(),
            vec![1u8; 6],
            "a request under the limit is served"
        );
        assert!(matches!(
            split.read_at(SHARD_STRIDE, 11),
            Err(StoreError::TooLarge(11))
        ));
    }
}
