//! [`FileStore`]: model files from the local file system, memory-mapped.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::split::{shard_paths, SplitSource};
use super::{
    check_range, total_len, ByteRange, Bytes, ModelStore, Source, StoreError, DEFAULT_MAX_REQUEST,
};

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
        // Open first, then check what was opened: a path checked before it is
        // opened can be swapped meanwhile (a FIFO would block the open forever).
        // O_NONBLOCK makes opening a FIFO return at once; it changes nothing
        // for regular files.
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
        let file: File = options.open(path).map_err(|e| {
            StoreError::NotFound(format!("cannot open '{shown}': {}", io_reason(&e)))
        })?;
        let meta = file
            .metadata()
            .map_err(|e| StoreError::Io(format!("cannot stat '{shown}': {}", io_reason(&e))))?;
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
        let size = meta.len();
        let map = if size == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only. Like every mmap-based reader we
            // rely on the file not being truncated while it is served; a
            // concurrent truncation is outside this program's control.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| StoreError::Io(format!("cannot map '{shown}': {}", io_reason(&e))))?;
            Some(Arc::new(map))
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
        if let Some(paths) = shard_paths(path) {
            let shards = paths
                .iter()
                .map(|p| Ok(Box::new(self.open_path(p)?) as Box<dyn Source>))
                .collect::<Result<Vec<_>, StoreError>>()?;
            return Ok(Box::new(
                SplitSource::new(shards).with_max_request(self.max_request),
            ));
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
    map: Option<Arc<memmap2::Mmap>>,
    size: u64,
    max_request: u64,
}

impl MmapSource {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().map_or(&[], |m| &m[..])
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

    fn load_layer(&self, ranges: &[ByteRange]) -> Result<Bytes, StoreError> {
        let total = total_len(ranges)?;
        if total > self.max_request {
            return Err(StoreError::TooLarge(total));
        }
        // Check every range, merging those that follow each other in the file.
        let mut bounds: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            let (start, end) = check_range(r.offset, r.len, self.size, self.max_request)?;
            match bounds.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ if start == end => {}
                _ => bounds.push((start, end)),
            }
        }
        match (bounds.as_slice(), &self.map) {
            ([], _) | (_, None) => Ok(Bytes::new()),
            // One span of the file (a layer's tensors are stored together):
            // a view of the map, which the host copies straight into guest
            // memory. No host buffer, so no page faults on a fresh one.
            (&[(start, end)], Some(map)) => Ok(Bytes::from_owner(MapView {
                map: Arc::clone(map),
                start,
                end,
            })),
            (spans, Some(map)) => {
                let cap = usize::try_from(total).map_err(|_| StoreError::TooLarge(total))?;
                let mut out = Vec::with_capacity(cap);
                for &(start, end) in spans {
                    out.extend_from_slice(&map[start..end]);
                }
                Ok(Bytes::from(out))
            }
        }
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

/// Bytes `start..end` of a shared memory map (checked against its size).
struct MapView {
    map: Arc<memmap2::Mmap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapView {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};

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
    fn one_span_is_a_view_of_the_map() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let (path, _g) = temp_file(&data);
        let src = FileStore::new().open_path(&path).expect("open");
        // Adjacent ranges merge into one span of the file: no copy.
        let got = src
            .load_layer(&[
                ByteRange {
                    offset: 100,
                    len: 50,
                },
                ByteRange {
                    offset: 150,
                    len: 0,
                },
                ByteRange {
                    offset: 150,
                    len: 900,
                },
            ])
            .expect("span");
        assert_eq!(&got[..], &data[100..1050]);
        assert_eq!(got.as_ptr(), src.bytes()[100..].as_ptr());
        // The view keeps the map alive after the source is gone.
        drop(src);
        assert_eq!(&got[..], &data[100..1050]);
        let empty = FileStore::new().open_path(&path).expect("open");
        assert!(empty.load_layer(&[]).expect("no ranges").is_empty());
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
        assert_eq!(src.load_layer(&ok), Ok(Bytes::from(vec![7u8; 8])));
    }

    /// A FIFO is refused at once: the check is made on the opened descriptor,
    /// and the open does not wait for a writer.
    #[cfg(unix)]
    #[test]
    fn fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("wasm-chord-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("model.gguf");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(FileStore::new().open_path(&path).map(|_| ()));
        });
        // Generous: the open returns at once; a blocked one never returns.
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("opening a FIFO must not block");
        match r {
            Err(StoreError::NotFound(m)) => assert!(m.ends_with("not a regular file"), "{m}"),
            other => panic!("expected not-found, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
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
}
