//! [`HttpStore`]: models read from an HTTP(S) server with Range requests.
//!
//! Model names are `http://` or `https://` URLs. Nothing is downloaded whole:
//!
//! - the first request (`Range: bytes=0-…`, one block) gives the total size
//!   (`Content-Range: bytes 0-N/TOTAL`) and the file's validators (`ETag`,
//!   `Last-Modified`), which pin it: every later request carries `If-Range`
//!   and every answer's validators are compared with the first, so a file
//!   replaced on the server is an error, never a mix of two files' bytes;
//! - small reads (the GGUF header, metadata, single tensors) go through a
//!   bounded LRU cache of fixed-size blocks;
//! - `load-layer` fetches a layer's tensors with one request (their covering
//!   range, when the gaps between them are small);
//! - every answer is checked: `206 Partial Content` (a `200` means the server
//!   ignores Range, or the file changed under `If-Range`), a `Content-Range`
//!   equal to the request, a body of exactly the requested length.
//!
//! Offsets are 64-bit end to end, so models beyond 4 GiB stream as from a file.

use std::collections::VecDeque;
use std::io::Read;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::split::{shard_paths, SplitSource};
use super::{check_range, total_len, ByteRange, Bytes, ModelStore, Source, StoreError};
use super::{FileStore, DEFAULT_MAX_REQUEST};

/// True when `name` is an `http://` or `https://` URL (the scheme in any case).
pub fn is_url(name: &str) -> bool {
    let lower = |n: usize| name.get(..n).map(str::to_ascii_lowercase);
    lower(7).as_deref() == Some("http://") || lower(8).as_deref() == Some("https://")
}

/// Default size of a cached block: 1 MiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 1 << 20;
/// Default bound on the block cache of one source: 32 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 20;
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default read timeout: the longest wait for the answer's head, and for any
/// one read of its body (a large layer may take longer in all, as long as
/// bytes keep coming).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an HTTP request for model bytes failed. `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The name is not a usable `http(s)://` URL.
    #[error("not a valid http(s) URL: {0}")]
    BadUrl(String),
    /// The server answered `200` to a Range request: it does not serve byte ranges.
    #[error("the server does not support Range requests (it answered {status} to 'Range: bytes={first}-{last}', not 206 Partial Content)")]
    NoRangeSupport {
        /// The status received.
        status: u16,
        /// First byte requested.
        first: u64,
        /// Last byte requested (inclusive).
        last: u64,
    },
    /// The `Content-Range` of a `206` is missing, malformed or not the range asked for.
    #[error(
        "mismatched Content-Range: asked for bytes {first}-{last}/{total}, the server sent '{got}'"
    )]
    ContentRange {
        /// First byte requested.
        first: u64,
        /// Last byte requested (inclusive).
        last: u64,
        /// Total size expected ("*" before it is known).
        total: String,
        /// The header received (empty when missing).
        got: String,
    },
    /// The `Content-Length` of a `206` is not the length of its `Content-Range`.
    #[error("mismatched Content-Length: {got} bytes for bytes {first}-{last} ({want} bytes)")]
    ContentLength {
        /// The length of the range.
        want: u64,
        /// The Content-Length received.
        got: u64,
        /// First byte of the range.
        first: u64,
        /// Last byte of the range (inclusive).
        last: u64,
    },
    /// The body ended before the requested length.
    #[error("short body: got {got} of {want} bytes for bytes {first}-{last}")]
    ShortBody {
        /// Bytes received.
        got: u64,
        /// Bytes requested.
        want: u64,
        /// First byte requested.
        first: u64,
        /// Last byte requested (inclusive).
        last: u64,
    },
    /// The file changed on the server since it was opened.
    #[error(
        "the model changed on the server since it was opened ({what} was {before}, now {now})"
    )]
    Changed {
        /// Which validator changed: `ETag`, `Last-Modified`, `size`, or `If-Range`.
        what: &'static str,
        /// Its value at open.
        before: String,
        /// Its value now.
        now: String,
    },
    /// The server answered with an error status.
    #[error("HTTP {status}{}", if .reason.is_empty() { String::new() } else { format!(" {}", .reason) })]
    Status {
        /// The status code.
        status: u16,
        /// Its canonical reason phrase.
        reason: String,
    },
    /// A connect or read timeout.
    #[error("timed out ({0})")]
    Timeout(String),
    /// Name resolution, connection, TLS or protocol failure.
    #[error("{0}")]
    Transport(String),
}

impl HttpError {
    /// As the WIT `store-error`, with the URL in front.
    fn into_store(self, url: &str) -> StoreError {
        let msg = format!("{url}: {self}");
        match self {
            HttpError::Status {
                status: 404 | 410, ..
            }
            | HttpError::BadUrl(_) => StoreError::NotFound(msg),
            _ => StoreError::Io(msg),
        }
    }
}

impl From<ureq::Error> for HttpError {
    fn from(e: ureq::Error) -> Self {
        match e {
            ureq::Error::Timeout(t) => HttpError::Timeout(t.to_string()),
            ureq::Error::BadUri(u) => HttpError::BadUrl(u),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                HttpError::Timeout(io.to_string())
            }
            ureq::Error::Io(io) => HttpError::Transport(super::io_reason(&io)),
            other => HttpError::Transport(other.to_string()),
        }
    }
}

/// Serves models from HTTP(S) servers with Range requests.
///
/// Model names are URLs (`https://host/path/model.gguf`); a split model's
/// first shard (`…-00001-of-0000N.gguf`) opens all its shards. One agent
/// (connection pool, TLS with the Mozilla root certificates) is shared by
/// every source it opens.
#[derive(Clone)]
pub struct HttpStore {
    agent: ureq::Agent,
    /// Trusted roots for https (`None`: Mozilla's, from webpki-roots).
    roots: Option<Arc<Vec<ureq::tls::Certificate<'static>>>>,
    block_size: u64,
    cache_bytes: u64,
    max_request: u64,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl std::fmt::Debug for HttpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStore")
            .field("custom_roots", &self.roots.as_ref().map(|r| r.len()))
            .field("block_size", &self.block_size)
            .field("cache_bytes", &self.cache_bytes)
            .field("max_request", &self.max_request)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for HttpStore {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpStore {
    /// A store with 1 MiB blocks, a 32 MiB block cache per source, requests
    /// of at most [`DEFAULT_MAX_REQUEST`] bytes, a 10 s connect timeout and a
    /// 60 s read timeout; https trusts Mozilla's root certificates.
    pub fn new() -> Self {
        Self::build(
            None,
            DEFAULT_BLOCK_SIZE,
            DEFAULT_CACHE_BYTES,
            DEFAULT_MAX_REQUEST,
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_READ_TIMEOUT,
        )
    }

    /// [`HttpStore::new`], trusting the certificates of the PEM file named
    /// by `$SSL_CERT_FILE` instead of Mozilla's roots when it is set (a
    /// model server with a private CA).
    pub fn from_env() -> Result<Self, StoreError> {
        let store = Self::new();
        match std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
            None => Ok(store),
            Some(path) => {
                let shown = std::path::Path::new(&path).display().to_string();
                let pem = std::fs::read(&path).map_err(|e| {
                    StoreError::Io(format!(
                        "cannot read SSL_CERT_FILE '{shown}': {}",
                        super::io_reason(&e)
                    ))
                })?;
                store
                    .with_root_certs_pem(&pem)
                    .map_err(|e| StoreError::Io(format!("SSL_CERT_FILE '{shown}': {e}")))
            }
        }
    }

    /// Trust the certificates in `pem` (PEM text, one or more) for https,
    /// instead of Mozilla's roots.
    pub fn with_root_certs_pem(self, pem: &[u8]) -> Result<Self, HttpError> {
        let certs = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(HttpError::Transport(format!("bad PEM: {e}")))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err(HttpError::Transport(
                "no certificate in the PEM text".into(),
            ));
        }
        Ok(Self::build(
            Some(Arc::new(certs)),
            self.block_size,
            self.cache_bytes,
            self.max_request,
            self.connect_timeout,
            self.read_timeout,
        ))
    }

    fn build(
        roots: Option<Arc<Vec<ureq::tls::Certificate<'static>>>>,
        block_size: u64,
        cache_bytes: u64,
        max_request: u64,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Self {
        let tls = ureq::tls::TlsConfig::builder().root_certs(match &roots {
            Some(certs) => ureq::tls::RootCerts::Specific(Arc::clone(certs)),
            None => ureq::tls::RootCerts::WebPki,
        });
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            // Statuses are checked here, with the URL in the message.
            .http_status_as_error(false)
            .timeout_connect(Some(connect_timeout))
            .timeout_recv_response(Some(read_timeout))
            .timeout_per_read(Some(read_timeout))
            .user_agent(concat!("wasm-chord/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpStore {
            agent: ureq::Agent::new_with_config(config),
            roots,
            block_size: block_size.max(1),
            cache_bytes,
            max_request,
            connect_timeout,
            read_timeout,
        }
    }

    /// Change the connect and read timeouts.
    pub fn with_timeouts(self, connect: Duration, read: Duration) -> Self {
        Self::build(
            self.roots,
            self.block_size,
            self.cache_bytes,
            self.max_request,
            connect,
            read,
        )
    }

    /// Change the block size and the bound on each source's block cache (bytes).
    pub fn with_block_cache(mut self, block_size: u64, cache_bytes: u64) -> Self {
        self.block_size = block_size.max(1);
        self.cache_bytes = cache_bytes;
        self
    }

    /// Change the largest request served at once (bytes).
    pub fn with_max_request(mut self, max_request: u64) -> Self {
        self.max_request = max_request;
        self
    }

    /// Open `url` directly (what [`ModelStore::open`] does for a single file).
    pub fn open_url(&self, url: &str) -> Result<HttpSource, StoreError> {
        HttpSource::open(self, url).map_err(|e| e.into_store(url))
    }
}

impl ModelStore for HttpStore {
    fn open(&self, name: &str) -> Result<Box<dyn Source>, StoreError> {
        if !is_url(name) {
            return Err(HttpError::BadUrl(name.to_string()).into_store(name));
        }
        if let Some(urls) = shard_urls(name) {
            let shards = urls
                .iter()
                .map(|u| Ok(Box::new(self.open_url(u)?) as Box<dyn Source>))
                .collect::<Result<Vec<_>, StoreError>>()?;
            return Ok(Box::new(
                SplitSource::new(shards).with_max_request(self.max_request),
            ));
        }
        Ok(Box::new(self.open_url(name)?))
    }

    fn is_enabled(&self) -> bool {
        true
    }
}

/// The URLs of all shards when `url` names the first shard of a split model.
fn shard_urls(url: &str) -> Option<Vec<String>> {
    // Only the path: a query string or fragment is not part of the file name.
    if url.contains(['?', '#']) {
        return None;
    }
    let (base, _) = url.rsplit_once('/')?;
    let paths = shard_paths(std::path::Path::new(url))?;
    paths
        .iter()
        .map(|p| Some(format!("{base}/{}", p.file_name()?.to_str()?)))
        .collect()
}

/// Files by path, models by URL: what the `wasm-chord` launcher and server
/// open `-m` with.
#[derive(Debug, Clone, Default)]
pub struct PathOrUrlStore {
    /// Serves paths.
    pub files: FileStore,
    /// Serves `http://` and `https://` URLs.
    pub http: HttpStore,
}

impl PathOrUrlStore {
    /// The default stores, with [`HttpStore::from_env`] (`$SSL_CERT_FILE`).
    pub fn from_env() -> Result<Self, StoreError> {
        Ok(PathOrUrlStore {
            files: FileStore::new(),
            http: HttpStore::from_env()?,
        })
    }
}

impl ModelStore for PathOrUrlStore {
    fn open(&self, name: &str) -> Result<Box<dyn Source>, StoreError> {
        if is_url(name) {
            self.http.open(name)
        } else {
            self.files.open(name)
        }
    }

    fn is_enabled(&self) -> bool {
        true
    }
}

/// What pins the file: its validators at open.
#[derive(Debug, Clone)]
struct Pin {
    size: u64,
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Pin {
    /// The `If-Range` value: a strong ETag, else the date (a weak ETag may
    /// not be used there).
    fn if_range(&self) -> Option<&str> {
        match (&self.etag, &self.last_modified) {
            (Some(e), _) if !e.starts_with("W/") => Some(e),
            (_, Some(d)) => Some(d),
            _ => None,
        }
    }
}

/// A model file on an HTTP server, served by [`HttpStore`].
///
/// `prefetch` fetches a layer on a background thread; the `load-layer` of
/// the same ranges that follows waits for it instead of asking again, and so
/// does a `load-layer` of ranges inside it (the kernel streams a large
/// layer's matrices in chunks): those are served from the read-ahead bytes,
/// which stay until [`PREFETCH_DEPTH`] newer read-aheads replace them.
pub struct HttpSource {
    core: Arc<SourceCore>,
    pending: Mutex<VecDeque<Pending>>,
}

/// Layers a source reads ahead at most (the kernel asks for layer `l + 1`
/// just before it loads layer `l`, so two are in flight at the same time).
pub const PREFETCH_DEPTH: usize = 2;

/// A layer being read ahead.
struct Pending {
    key: Vec<(u64, u64)>,
    ahead: Arc<Mutex<Ahead>>,
}

/// A read-ahead's state: in flight, or its result.
enum Ahead {
    Waiting(std::sync::mpsc::Receiver<Result<Bytes, StoreError>>),
    /// `None`: the read failed or its thread died (ask again).
    Done(Option<Bytes>),
}

impl Ahead {
    /// The layer's bytes, waiting for them if need be.
    fn bytes(&mut self) -> Option<Bytes> {
        if let Ahead::Waiting(rx) = self {
            *self = Ahead::Done(rx.recv().ok().and_then(Result::ok));
        }
        match self {
            Ahead::Done(b) => b.clone(),
            Ahead::Waiting(_) => None,
        }
    }
}

/// `want` cut from the bytes of the layer `key` (its ranges one after the
/// other), when every range of `want` lies inside one of `key`'s.
fn cut(key: &[(u64, u64)], layer: &Bytes, want: &[ByteRange]) -> Option<Bytes> {
    let at = |r: &ByteRange| {
        let mut pos = 0u64;
        for &(o, l) in key {
            if r.offset >= o && r.offset + r.len <= o + l {
                return Some((pos + r.offset - o) as usize);
            }
            pos += l;
        }
        None
    };
    let place = |r: &ByteRange| {
        let p = at(r)?;
        (p + r.len as usize <= layer.len()).then_some(p..p + r.len as usize)
    };
    match want {
        [r] => Some(layer.slice(place(r)?)),
        _ => {
            let mut out = Vec::with_capacity(want.iter().map(|r| r.len as usize).sum());
            for r in want {
                out.extend_from_slice(&layer[place(r)?]);
            }
            Some(Bytes::from(out))
        }
    }
}

fn key(ranges: &[ByteRange]) -> Vec<(u64, u64)> {
    ranges.iter().map(|r| (r.offset, r.len)).collect()
}

/// What an [`HttpSource`] shares with its read-ahead threads.
struct SourceCore {
    url: String,
    agent: ureq::Agent,
    pin: Pin,
    block_size: u64,
    max_request: u64,
    /// Blocks of `block_size` bytes (the last may be shorter), by index.
    cache: Option<Mutex<lru::LruCache<u64, Arc<Vec<u8>>>>>,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource")
            .field("url", &self.core.url)
            .field("size", &self.core.pin.size)
            .field("etag", &self.core.pin.etag)
            .finish_non_exhaustive()
    }
}

/// Parse `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`).
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?, total))
}

impl HttpSource {
    fn open(store: &HttpStore, url: &str) -> Result<Self, HttpError> {
        Ok(HttpSource {
            core: Arc::new(SourceCore::open(store, url)?),
            pending: Mutex::new(VecDeque::new()),
        })
    }
}

impl SourceCore {
    fn open(store: &HttpStore, url: &str) -> Result<Self, HttpError> {
        let blocks = usize::try_from(store.cache_bytes / store.block_size).unwrap_or(usize::MAX);
        let mut src = SourceCore {
            url: url.to_string(),
            agent: store.agent.clone(),
            pin: Pin {
                size: 0,
                etag: None,
                last_modified: None,
            },
            block_size: store.block_size,
            max_request: store.max_request,
            cache: NonZeroUsize::new(blocks).map(|n| Mutex::new(lru::LruCache::new(n))),
        };
        // The first block: size and validators from the answer, and the
        // GGUF header, which the kernel reads next.
        let first = src.fetch(0, store.block_size, None)?;
        src.pin = first.pin;
        if let Some(cache) = &src.cache {
            if !first.body.is_empty() {
                lock(cache).put(0, Arc::new(first.body));
            }
        }
        Ok(src)
    }

    /// GET bytes `offset..offset + len` (`len` > 0). Before the file is
    /// pinned (`pin` = None) the answer may be shorter than asked, at the
    /// end of the file; afterwards it must be exactly the range.
    fn fetch(&self, offset: u64, len: u64, pin: Option<&Pin>) -> Result<Fetched, HttpError> {
        let last = offset + len - 1;
        let mut req = self
            .agent
            .get(&self.url)
            .header("Range", format!("bytes={offset}-{last}"));
        if let Some(v) = pin.and_then(Pin::if_range) {
            req = req.header("If-Range", v);
        }
        let mut resp = req.call()?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header("etag");
        let last_modified = header("last-modified");
        let content_range = header("content-range");
        if status == 416 && pin.is_none() && offset == 0 {
            // Nothing to serve at byte 0: an empty file ("bytes */0").
            if let Some(("*", "0")) = content_range
                .as_deref()
                .and_then(|v| v.trim().strip_prefix("bytes "))
                .and_then(|v| v.split_once('/'))
            {
                return Ok(Fetched {
                    body: Vec::new(),
                    pin: Pin {
                        size: 0,
                        etag,
                        last_modified,
                    },
                });
            }
        }
        if status == 200 {
            // Under If-Range a 200 means the validator no longer matches.
            if let (Some(p), Some(v)) = (pin, pin.and_then(Pin::if_range)) {
                let now = etag.or(last_modified).unwrap_or_else(|| "none".into());
                return Err(HttpError::Changed {
                    what: if p.etag.as_deref() == Some(v) {
                        "ETag"
                    } else {
                        "Last-Modified"
                    },
                    before: v.to_string(),
                    now,
                });
            }
            return Err(HttpError::NoRangeSupport {
                status,
                first: offset,
                last,
            });
        }
        if status != 206 {
            if status >= 400 {
                return Err(HttpError::Status {
                    status,
                    reason: resp
                        .status()
                        .canonical_reason()
                        .unwrap_or_default()
                        .to_string(),
                });
            }
            return Err(HttpError::NoRangeSupport {
                status,
                first: offset,
                last,
            });
        }
        let got_range = content_range.clone().unwrap_or_default();
        let mismatch = |total: String| HttpError::ContentRange {
            first: offset,
            last,
            total,
            got: got_range.clone(),
        };
        let (first, got_last, total) = content_range
            .as_deref()
            .and_then(parse_content_range)
            .ok_or_else(|| mismatch(pin.map_or("*".into(), |p| p.size.to_string())))?;
        let pin_now = match pin {
            Some(p) => {
                if total != Some(p.size) || first != offset || got_last != last {
                    if let Some(t) = total.filter(|&t| t != p.size) {
                        return Err(HttpError::Changed {
                            what: "size",
                            before: p.size.to_string(),
                            now: t.to_string(),
                        });
                    }
                    return Err(mismatch(p.size.to_string()));
                }
                for (what, before, now) in [
                    ("ETag", &p.etag, &etag),
                    ("Last-Modified", &p.last_modified, &last_modified),
                ] {
                    if let (Some(b), Some(n)) = (before, now) {
                        if b != n {
                            return Err(HttpError::Changed {
                                what,
                                before: b.clone(),
                                now: n.clone(),
                            });
                        }
                    }
                }
                p.clone()
            }
            None => {
                // The first answer: the server may clamp the end to the file.
                let Some(size) = total else {
                    return Err(mismatch("*".into()));
                };
                if first != offset || got_last > last || got_last >= size || got_last < first {
                    return Err(mismatch(size.to_string()));
                }
                if got_last != last && got_last != size - 1 {
                    return Err(mismatch(size.to_string()));
                }
                Pin {
                    size,
                    etag,
                    last_modified,
                }
            }
        };
        let want = got_last - first + 1;
        match resp.body().content_length() {
            Some(n) if n != want => {
                return Err(HttpError::ContentLength {
                    want,
                    got: n,
                    first,
                    last: got_last,
                })
            }
            _ => {}
        }
        let cap = usize::try_from(want).map_err(|_| HttpError::Transport("too large".into()))?;
        let mut body = vec![0u8; cap];
        let mut reader = resp.body_mut().with_config().limit(want).reader();
        let mut got = 0usize;
        while got < cap {
            match reader.read(&mut body[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(HttpError::Timeout(format!(
                        "after {got} of {want} bytes for bytes {offset}-{got_last}"
                    )))
                }
                // A connection closed before Content-Length: a short body.
                Err(_) => break,
            }
        }
        if got < cap {
            return Err(HttpError::ShortBody {
                got: got as u64,
                want,
                first: offset,
                last: got_last,
            });
        }
        Ok(Fetched { body, pin: pin_now })
    }

    /// Bytes `offset..offset + len`, exactly, from the pinned file.
    fn get(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        self.fetch(offset, len, Some(&self.pin))
            .map(|f| f.body)
            .map_err(|e| e.into_store(&self.url))
    }

    /// Blocks `first..=last`, from the cache or fetched (the missing ones
    /// with one request).
    fn blocks(
        &self,
        cache: &Mutex<lru::LruCache<u64, Arc<Vec<u8>>>>,
        first: u64,
        last: u64,
    ) -> Result<Vec<Arc<Vec<u8>>>, StoreError> {
        let mut have: Vec<Option<Arc<Vec<u8>>>> = {
            let mut c = lock(cache);
            (first..=last).map(|b| c.get(&b).cloned()).collect()
        };
        let missing = |have: &[Option<Arc<Vec<u8>>>]| {
            let lo = have.iter().position(Option::is_none)?;
            let hi = have.iter().rposition(Option::is_none)?;
            Some((lo, hi))
        };
        if let Some((lo, hi)) = missing(&have) {
            let start = (first + lo as u64) * self.block_size;
            let end = ((first + hi as u64 + 1) * self.block_size).min(self.pin.size);
            let bytes = self.get(start, end - start)?;
            let mut c = lock(cache);
            for (i, chunk) in bytes.chunks(self.block_size as usize).enumerate() {
                let block = Arc::new(chunk.to_vec());
                c.put(first + (lo + i) as u64, Arc::clone(&block));
                have[lo + i] = Some(block);
            }
        }
        have.into_iter()
            .map(|b| b.ok_or_else(|| StoreError::Io(format!("{}: block cache", self.url))))
            .collect()
    }
}

/// An answer's body and the validators it came with.
struct Fetched {
    body: Vec<u8>,
    pin: Pin,
}

/// The cache's lock; a poisoned lock (a panic elsewhere) still holds valid blocks.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Source for HttpSource {
    fn size(&self) -> u64 {
        self.core.pin.size
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.core.read_at(offset, len)
    }

    fn load_layer(&self, ranges: &[ByteRange]) -> Result<Bytes, StoreError> {
        let k = key(ranges);
        // The read-ahead of these ranges (taken), or of a layer holding them
        // (kept for the layer's other chunks).
        let (ahead, whole) = {
            let mut pending = lock(&self.pending);
            match pending.iter().position(|p| p.key == k) {
                Some(i) => (pending.remove(i), true),
                None => {
                    let inside = |p: &&Pending| {
                        k.iter().all(|&(o, l)| {
                            p.key.iter().any(|&(po, pl)| o >= po && o + l <= po + pl)
                        })
                    };
                    let p = pending.iter().find(inside).map(|p| Pending {
                        key: p.key.clone(),
                        ahead: Arc::clone(&p.ahead),
                    });
                    (p, false)
                }
            }
        };
        // A read-ahead that failed or died answers nothing: ask again.
        if let Some(p) = ahead {
            if let Some(layer) = lock(&p.ahead).bytes() {
                if whole {
                    return Ok(layer);
                }
                if let Some(b) = cut(&p.key, &layer, ranges) {
                    return Ok(b);
                }
            }
        }
        self.core.load_layer(ranges)
    }

    fn prefetch(&self, ranges: &[ByteRange]) {
        let k = key(ranges);
        let mut pending = lock(&self.pending);
        if ranges.is_empty() || pending.iter().any(|p| p.key == k) {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let core = Arc::clone(&self.core);
        let ranges = ranges.to_vec();
        let spawned = std::thread::Builder::new()
            .name("wasm-chord-http-prefetch".into())
            .spawn(move || {
                let _ = tx.send(core.load_layer(&ranges));
            });
        if spawned.is_err() {
            return; // only a hint
        }
        pending.push_back(Pending {
            key: k,
            ahead: Arc::new(Mutex::new(Ahead::Waiting(rx))),
        });
        // The oldest read-ahead is dropped (its thread finishes and its
        // bytes are freed once no chunk holds them).
        while pending.len() > PREFETCH_DEPTH {
            pending.pop_front();
        }
    }
}

impl SourceCore {
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        check_range(offset, len, self.pin.size, self.max_request)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bs = self.block_size;
        let (first, last) = (offset / bs, (offset + len - 1) / bs);
        // Reads of more than a few blocks bypass the cache.
        let cache = match &self.cache {
            Some(c) if last - first < 4 && (last - first + 1) * bs <= self.cache_capacity() => c,
            _ => return self.get(offset, len),
        };
        let blocks = self.blocks(cache, first, last)?;
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        let end = offset + len;
        for (i, b) in blocks.iter().enumerate() {
            let base = (first + i as u64) * bs;
            let from = (pos - base) as usize;
            let to = ((end - base).min(b.len() as u64)) as usize;
            if from > to {
                return Err(StoreError::Io(format!("{}: block cache", self.url)));
            }
            out.extend_from_slice(&b[from..to]);
            pos = base + to as u64;
        }
        if out.len() as u64 != len {
            return Err(StoreError::Io(format!(
                "{}: {} of {len} bytes at {offset} in the block cache",
                self.url,
                out.len()
            )));
        }
        Ok(out)
    }

    fn load_layer(&self, ranges: &[ByteRange]) -> Result<Bytes, StoreError> {
        let total = total_len(ranges)?;
        if total > self.max_request {
            return Err(StoreError::TooLarge(total));
        }
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            check_range(r.offset, r.len, self.pin.size, self.max_request)?;
            let (start, end) = (r.offset, r.offset + r.len);
            match spans.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ if start == end => {}
                _ => spans.push((start, end)),
            }
        }
        let (Some(lo), Some(hi)) = (
            spans.iter().map(|s| s.0).min(),
            spans.iter().map(|s| s.1).max(),
        ) else {
            return Ok(Bytes::new());
        };
        // One request for the layer when the gaps between its tensors are
        // small (at most an eighth of it, or one block).
        let cover = hi - lo;
        if spans.len() == 1
            || (cover <= self.max_request && cover - total <= (total / 8).max(self.block_size))
        {
            let all = self.get(lo, cover)?;
            if spans.len() == 1 {
                return Ok(Bytes::from(all));
            }
            let mut out = Vec::with_capacity(total as usize);
            for (s, e) in spans {
                out.extend_from_slice(&all[(s - lo) as usize..(e - lo) as usize]);
            }
            return Ok(Bytes::from(out));
        }
        let mut out = Vec::with_capacity(total as usize);
        for (s, e) in spans {
            out.extend_from_slice(&self.get(s, e - s)?);
        }
        Ok(Bytes::from(out))
    }
}

impl SourceCore {
    /// Bytes the block cache may hold.
    fn cache_capacity(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| {
            (lock(c).cap().get() as u64).saturating_mul(self.block_size)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(is_url("http://h/m.gguf"));
        assert!(is_url("HTTPS://h/m.gguf"));
        assert!(!is_url("http:/m.gguf"));
        assert!(!is_url("models/http://x"));
        assert!(!is_url("ftp://h/m.gguf"));
        assert!(!is_url(""));
        assert_eq!(
            shard_urls("http://h:8/d/m-00001-of-00002.gguf"),
            Some(vec![
                "http://h:8/d/m-00001-of-00002.gguf".to_string(),
                "http://h:8/d/m-00002-of-00002.gguf".to_string()
            ])
        );
        assert_eq!(shard_urls("http://h/m.gguf"), None);
        assert_eq!(shard_urls("http://h/m-00001-of-00002.gguf?x=1"), None);
    }

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-99/5000000000"),
            Some((0, 99, Some(5_000_000_000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn errors_are_typed_and_one_line() {
        let e = HttpError::Status {
            status: 404,
            reason: "Not Found".into(),
        }
        .into_store("http://h/m");
        assert_eq!(
            e,
            StoreError::NotFound("http://h/m: HTTP 404 Not Found".into())
        );
        let e = HttpError::NoRangeSupport {
            status: 200,
            first: 0,
            last: 9,
        }
        .into_store("http://h/m");
        match e {
            StoreError::Io(m) => assert!(m.contains("does not support Range requests"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_connection_is_an_error() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let store = HttpStore::new().with_timeouts(Duration::from_secs(5), Duration::from_secs(5));
        match store.open(&format!("http://127.0.0.1:{port}/m.gguf")) {
            Err(StoreError::Io(m)) => assert!(m.starts_with("http://127.0.0.1:"), "{m}"),
            Err(other) => panic!("expected io, got {other:?}"),
            Ok(_) => panic!("nothing listens there"),
        }
    }
}
