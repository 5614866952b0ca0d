//! Layer stores: where the kernel's bytes come from.
//!
//! The kernel never touches files. It asks the host to `open` a model by name
//! and then reads byte ranges from the returned source with 64-bit offsets.
//! An embedder implements [`ModelStore`] (and [`Source`]) to serve models
//! from anywhere; [`FileStore`] (memory-mapped files) and [`MemStore`]
//! (in-memory buffers) are provided.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Largest request (in bytes) a provided store serves in one call: 2 GiB.
pub const DEFAULT_MAX_REQUEST: u64 = 2 << 30;

/// Why a store refused or failed a request (mirrors the WIT `store-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The named model does not exist or cannot be opened.
    #[error("not found: {0}")]
    NotFound(String),
    /// The requested range is not inside the source.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// An I/O error while reading.
    #[error("I/O error: {0}")]
    Io(String),
    /// The request (in bytes) is larger than the store serves at once.
    #[error("request of {0} bytes is too large")]
    TooLarge(u64),
}

/// A contiguous range of bytes in a source (mirrors the WIT `byte-range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// Absolute byte offset from the start of the source.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

/// Counters a source keeps about the bytes it served (mirrors the WIT
/// `store-stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Size of the source in bytes.
    pub total_bytes: u64,
    /// Bytes copied into the guest so far.
    pub bytes_served: u64,
    /// Number of `read` calls served.
    pub reads: u64,
    /// Number of `load-layer` calls served.
    pub layer_loads: u64,
    /// Wall-clock nanoseconds spent serving reads and layer loads.
    pub read_nanos: u64,
    /// Highest end offset (exclusive) of any range served so far.
    pub max_offset_served: u64,
    /// True where the host keeps the model in 64-bit storage (beyond 4 GiB).
    pub memory64: bool,
}

/// Storage of models that the kernel opens by name.
///
/// Implementations must be cheap to call from the kernel's thread; they are
/// shared by every instance a [`crate::Runtime`] creates.
pub trait ModelStore: Send + Sync + 'static {
    /// Open the model called `name` (a path, a URL, a key: the store decides).
    fn open(&self, name: &str) -> Result<Box<dyn Source>, StoreError>;
    /// True where the store keeps models in 64-bit storage beyond 4 GiB.
    fn is_enabled(&self) -> bool;
}

/// An opened model: bytes addressed with 64-bit offsets.
///
/// The host wraps every source with counters ([`StoreStats`]); a source only
/// serves bytes.
pub trait Source: Send + Sync + 'static {
    /// Total size in bytes.
    fn size(&self) -> u64;
    /// Read `len` bytes at `offset`.
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError>;
    /// Gather `ranges` into one buffer, in order.
    ///
    /// The default implementation calls [`Source::read_at`] for each range.
    fn load_layer(&self, ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        let total = total_len(ranges)?;
        let mut out =
            Vec::with_capacity(usize::try_from(total).map_err(|_| StoreError::TooLarge(total))?);
        for r in ranges {
            out.extend_from_slice(&self.read_at(r.offset, r.len)?);
        }
        Ok(out)
    }
    /// Non-blocking hint that `ranges` are wanted soon. The default does nothing.
    fn prefetch(&self, _ranges: &[ByteRange]) {}
}

/// Sum of the lengths of `ranges`, or `too-large` when it overflows.
fn total_len(ranges: &[ByteRange]) -> Result<u64, StoreError> {
    ranges
        .iter()
        .try_fold(0u64, |acc, r| acc.checked_add(r.len))
        .ok_or(StoreError::TooLarge(u64::MAX))
}

/// Check that `[offset, offset + len)` lies inside a source of `size` bytes
/// and that `len` is at most `max`; returns the range as `usize` bounds.
pub fn check_range(
    offset: u64,
    len: u64,
    size: u64,
    max: u64,
) -> Result<(usize, usize), StoreError> {
    if len > max {
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
    let start = usize::try_from(offset).map_err(|_| StoreError::TooLarge(offset))?;
    let end = usize::try_from(end).map_err(|_| StoreError::TooLarge(end))?;
    Ok((start, end))
}

/// Serves files from the local file system, memory-mapped.
///
/// Model names are paths. The file is mapped, never copied whole into the
/// host heap; each request copies only the bytes asked for.
#[derive(Debug, Clone)]
pub struct FileStore {
    max_request: u64,
}

impl Default for FileStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FileStore {
    /// A file store that serves at most [`DEFAULT_MAX_REQUEST`] bytes per request.
    pub fn new() -> Self {
        Self {
            max_request: DEFAULT_MAX_REQUEST,
        }
    }

    /// Change the largest request served at once (bytes).
    pub fn with_max_request(mut self, max_request: u64) -> Self {
        self.max_request = max_request;
        self
    }

    /// Open `path` directly (what [`ModelStore::open`] does).
    pub fn open_path(&self, path: &Path) -> Result<MmapSource, StoreError> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            StoreError::NotFound(format!("cannot open '{shown}': {}", io_reason(&e)))
        })?;
        if meta.is_dir() {
            return Err(StoreError::NotFound(format!(
                "cannot open '{shown}': is a directory, not a regular file"
            )));
        }
        if !meta.is_file() {
            return Err(StoreError::NotFound(format!(
                "cannot open '{shown}': not a regular file"
            )));
        }
        let file = File::open(path).map_err(|e| {
            StoreError::NotFound(format!("cannot open '{shown}': {}", io_reason(&e)))
        })?;
        let size = file
            .metadata()
            .map_err(|e| StoreError::Io(format!("cannot stat '{shown}': {}", io_reason(&e))))?
            .len();
        let map = if size == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only. Like every mmap-based reader we
            // rely on the file not being truncated while it is served; a
            // concurrent truncation is outside this program's control.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| StoreError::Io(format!("cannot map '{shown}': {}", io_reason(&e))))?;
            Some(map)
        };
        Ok(MmapSource {
            map,
            size,
            max_request: self.max_request,
        })
    }
}

/// The message of an I/O error without the "(os error N)" suffix.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl ModelStore for FileStore {
    fn open(&self, name: &str) -> Result<Box<dyn Source>, StoreError> {
        let path = Path::new(name);
        if let Some(paths) = crate::split::shard_paths(path) {
            let shards = paths
                .iter()
                .map(|p| self.open_path(p))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Box::new(crate::split::SplitSource::new(shards)));
        }
        Ok(Box::new(self.open_path(path)?))
    }

    fn is_enabled(&self) -> bool {
        true
    }
}

/// A memory-mapped file served by [`FileStore`].
#[derive(Debug)]
pub struct MmapSource {
    map: Option<memmap2::Mmap>,
    size: u64,
    max_request: u64,
}

impl MmapSource {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl Source for MmapSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let (start, end) = check_range(offset, len, self.size, self.max_request)?;
        Ok(self.bytes()[start..end].to_vec())
    }

    fn load_layer(&self, ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        let total = total_len(ranges)?;
        if total > self.max_request {
            return Err(StoreError::TooLarge(total));
        }
        let mut bounds = Vec::with_capacity(ranges.len());
        for r in ranges {
            bounds.push(check_range(r.offset, r.len, self.size, self.max_request)?);
        }
        let cap = usize::try_from(total).map_err(|_| StoreError::TooLarge(total))?;
        let mut out = Vec::with_capacity(cap);
        let bytes = self.bytes();
        for (start, end) in bounds {
            out.extend_from_slice(&bytes[start..end]);
        }
        Ok(out)
    }

    fn prefetch(&self, ranges: &[ByteRange]) {
        #[cfg(unix)]
        if let Some(map) = &self.map {
            for r in ranges {
                // Only a hint: ignore ranges outside the file and errors.
                if let Ok((start, end)) = check_range(r.offset, r.len, self.size, u64::MAX) {
                    // madvise wants a page-aligned start.
                    let aligned = start & !4095;
                    let _ = map.advise_range(memmap2::Advice::WillNeed, aligned, end - aligned);
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ranges;
    }
}

/// Serves models held in memory, by name. For embedding examples and tests.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    models: Arc<RwLock<HashMap<String, Arc<[u8]>>>>,
    enabled: bool,
    max_request: Option<u64>,
}

impl MemStore {
    /// An empty store; `is_enabled` is false (a store limited to small models).
    pub fn new() -> Self {
        Self::default()
    }

    /// Set what [`ModelStore::is_enabled`] reports.
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Change the largest request served at once (default [`DEFAULT_MAX_REQUEST`]).
    pub fn with_max_request(mut self, max_request: u64) -> Self {
        self.max_request = Some(max_request);
        self
    }

    /// Add (or replace) the model called `name`.
    pub fn insert(&self, name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) {
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        models.insert(name.into(), bytes.into());
    }
}

impl ModelStore for MemStore {
    fn open(&self, name: &str) -> Result<Box<dyn Source>, StoreError> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let bytes = models.get(name).cloned().ok_or_else(|| {
            StoreError::NotFound(format!("no model named '{name}' in the memory store"))
        })?;
        Ok(Box::new(MemSource {
            bytes,
            max_request: self.max_request.unwrap_or(DEFAULT_MAX_REQUEST),
        }))
    }

    fn is_enabled(&self) -> bool {
        self.enabled
    }
}

/// A model held in memory, served by [`MemStore`].
#[derive(Debug, Clone)]
pub struct MemSource {
    bytes: Arc<[u8]>,
    max_request: u64,
}

impl Source for MemSource {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let (start, end) = check_range(offset, len, self.size(), self.max_request)?;
        Ok(self.bytes[start..end].to_vec())
    }
}

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

    /// Serve a `load-layer` and count it.
    pub fn load_layer(&self, ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
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
    use std::io::Write;

    fn temp_file(bytes: &[u8]) -> (std::path::PathBuf, impl Drop) {
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wasm-chord-store-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("model.bin");
        let mut f = File::create(&path).expect("create");
        f.write_all(bytes).expect("write");
        (path, Cleanup(dir))
    }

    #[test]
    fn file_store_reads_and_gathers() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let (path, _g) = temp_file(&data);
        let store = FileStore::new();
        let src = store.open(path.to_str().expect("utf8")).expect("open");
        assert_eq!(src.size(), 10_000);
        assert_eq!(src.read_at(0, 4).expect("read"), vec![0, 1, 2, 3]);
        assert_eq!(src.read_at(9_999, 1).expect("read"), vec![data[9_999]]);
        assert_eq!(
            src.read_at(10_000, 0).expect("empty read at end"),
            Vec::<u8>::new()
        );
        let got = src
            .load_layer(&[
                ByteRange { offset: 10, len: 2 },
                ByteRange {
                    offset: 300,
                    len: 3,
                },
            ])
            .expect("gather");
        assert_eq!(got, vec![10, 11, 44, 45, 46]);
        src.prefetch(&[
            ByteRange {
                offset: 5000,
                len: 100,
            },
            ByteRange {
                offset: u64::MAX,
                len: 5,
            },
        ]);
        assert!(store.is_enabled());
    }

    #[test]
    fn file_store_bounds() {
        let (path, _g) = temp_file(&[7u8; 100]);
        let store = FileStore::new();
        let src = store.open(path.to_str().expect("utf8")).expect("open");
        match src.read_at(90, 20) {
            Err(StoreError::OutOfRange(m)) => {
                assert!(m.contains("90..110") && m.contains("100 bytes"), "{m}")
            }
            other => panic!("expected out-of-range, got {other:?}"),
        }
        assert!(matches!(
            src.read_at(101, 0),
            Err(StoreError::OutOfRange(_))
        ));
        match src.read_at(u64::MAX, 2) {
            Err(StoreError::OutOfRange(m)) => assert!(m.contains("overflows"), "{m}"),
            other => panic!("expected out-of-range, got {other:?}"),
        }
        assert_eq!(
            src.read_at(0, u64::MAX),
            Err(StoreError::TooLarge(u64::MAX))
        );
        assert_eq!(
            src.read_at(0, DEFAULT_MAX_REQUEST + 1),
            Err(StoreError::TooLarge(DEFAULT_MAX_REQUEST + 1))
        );
        let overflow = [
            ByteRange {
                offset: 0,
                len: u64::MAX,
            },
            ByteRange { offset: 0, len: 2 },
        ];
        assert!(matches!(
            src.load_layer(&overflow),
            Err(StoreError::TooLarge(_))
        ));
        let past = [
            ByteRange { offset: 0, len: 2 },
            ByteRange { offset: 99, len: 2 },
        ];
        assert!(matches!(
            src.load_layer(&past),
            Err(StoreError::OutOfRange(_))
        ));
        let small = FileStore::new().with_max_request(10);
        let src = small.open(path.to_str().expect("utf8")).expect("open");
        assert_eq!(src.read_at(0, 11), Err(StoreError::TooLarge(11)));
        let two = [
            ByteRange { offset: 0, len: 6 },
            ByteRange { offset: 10, len: 6 },
        ];
        assert_eq!(src.load_layer(&two), Err(StoreError::TooLarge(12)));
        // Refused requests leave the source serving valid ones.
        assert_eq!(src.read_at(95, 5), Ok(vec![7u8; 5]));
        let ok = [
            ByteRange { offset: 0, len: 4 },
            ByteRange { offset: 96, len: 4 },
        ];
        assert_eq!(src.load_layer(&ok), Ok(vec![7u8; 8]));
    }

    #[test]
    fn file_store_open_errors() {
        let store = FileStore::new();
        match store.open("/definitely/not/here.gguf") {
            Err(StoreError::NotFound(m)) => {
                assert_eq!(
                    m,
                    "cannot open '/definitely/not/here.gguf': No such file or directory"
                )
            }
            other => panic!("expected not-found, got {:?}", other.map(|s| s.size())),
        }
        let dir = std::env::temp_dir();
        match store.open(dir.to_str().expect("utf8")) {
            Err(StoreError::NotFound(m)) => {
                assert!(m.contains("is a directory, not a regular file"), "{m}")
            }
            other => panic!("expected not-found, got {:?}", other.map(|s| s.size())),
        }
        #[cfg(unix)]
        match store.open("/dev/null") {
            Err(StoreError::NotFound(m)) => assert!(m.contains("not a regular file"), "{m}"),
            other => panic!("expected not-found, got {:?}", other.map(|s| s.size())),
        }
    }

    #[test]
    fn empty_file() {
        let (path, _g) = temp_file(&[]);
        let src = FileStore::new()
            .open(path.to_str().expect("utf8"))
            .expect("open");
        assert_eq!(src.size(), 0);
        assert_eq!(src.read_at(0, 0).expect("empty"), Vec::<u8>::new());
        assert!(matches!(src.read_at(0, 1), Err(StoreError::OutOfRange(_))));
    }

    #[test]
    fn mem_store() {
        let store = MemStore::new();
        assert!(!store.is_enabled());
        assert!(store.clone().with_enabled(true).is_enabled());
        store.insert("a", vec![1u8, 2, 3, 4, 5]);
        let src = store.open("a").expect("open");
        assert_eq!(src.size(), 5);
        assert_eq!(src.read_at(1, 3).expect("read"), vec![2, 3, 4]);
        assert!(matches!(src.read_at(4, 2), Err(StoreError::OutOfRange(_))));
        assert!(matches!(
            src.read_at(u64::MAX, 1),
            Err(StoreError::OutOfRange(_))
        ));
        let got = src
            .load_layer(&[
                ByteRange { offset: 4, len: 1 },
                ByteRange { offset: 0, len: 2 },
            ])
            .expect("gather");
        assert_eq!(got, vec![5, 1, 2]);
        assert!(matches!(store.open("b"), Err(StoreError::NotFound(_))));
        let small = store.clone().with_max_request(2);
        assert_eq!(
            small.open("a").expect("open").read_at(0, 3),
            Err(StoreError::TooLarge(3))
        );
    }

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
