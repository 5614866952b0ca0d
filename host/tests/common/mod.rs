//! Shared by the host's integration tests: paths from the environment and a
//! small HTTP/1.1 server with Range support that can misbehave on purpose.
#![allow(dead_code)] // each test file uses a part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub fn bin() -> PathBuf {
    env_path("WASM_CHORD_BIN").unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wasm-chord")))
}

pub fn model() -> PathBuf {
    assert!(
        env_path("WASM_CHORD_KERNEL").is_some(),
        "set WASM_CHORD_KERNEL and WASM_CHORD_SMOLLM2 (cargo xtask test does)"
    );
    env_path("WASM_CHORD_SMOLLM2").expect("set WASM_CHORD_SMOLLM2 (cargo xtask test does)")
}

/// How the test server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Range requests with a fixed strong ETag and If-Range, as a file server.
    Good,
    /// Ignores Range: always 200 with the whole file.
    NoRange,
    /// 206 with the right headers, but the connection closes halfway through the body.
    Short,
    /// 206 with a Content-Range one byte off the request.
    BadContentRange,
    /// 206 with the right Content-Range, but a Content-Length (and body) one byte shorter.
    BadContentLength,
    /// A new ETag on every answer, If-Range ignored (the file "changes").
    EtagChanges,
}

/// The bytes served: a file's, or a synthetic pattern of any size.
#[derive(Clone)]
pub enum Content {
    Bytes(Arc<Vec<u8>>),
    Pattern(u64),
}

/// Byte `i` of the synthetic pattern.
pub fn pattern(i: u64) -> u8 {
    (i ^ (i >> 13) ^ (i >> 29)).wrapping_mul(31) as u8
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Pattern(n) => *n,
        }
    }

    fn write(&self, out: &mut impl Write, start: u64, end: u64) -> std::io::Result<()> {
        match self {
            Content::Bytes(b) => out.write_all(&b[start as usize..end as usize]),
            Content::Pattern(_) => {
                let mut buf = Vec::with_capacity(64 << 10);
                let mut pos = start;
                while pos < end {
                    let n = (end - pos).min(64 << 10);
                    buf.clear();
                    buf.extend((pos..pos + n).map(pattern));
                    out.write_all(&buf)?;
                    pos += n;
                }
                Ok(())
            }
        }
    }
}

/// A small HTTP/1.1 server with Range support (keep-alive, one thread per
/// connection) that counts requests and body bytes. Stops on drop.
pub struct RangeServer {
    pub port: u16,
    tls: bool,
    requests: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RangeServer {
    pub fn start(content: Content, mode: Mode) -> Self {
        Self::start_with(content, mode, None)
    }

    /// The same server over TLS, with the certificate of `tests/tls`
    /// (`localhost` and 127.0.0.1, signed by `tests/tls/ca.pem`, valid to 2126).
    pub fn start_tls(content: Content, mode: Mode) -> Self {
        Self::start_with(content, mode, Some(tls_config()))
    }

    fn start_with(content: Content, mode: Mode, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicU64::new(0));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, b, s) = (
            Arc::clone(&requests),
            Arc::clone(&body_bytes),
            Arc::clone(&stop),
        );
        let is_tls = tls.is_some();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (content, r, b) = (content.clone(), Arc::clone(&r), Arc::clone(&b));
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let _ = match tls {
                        Some(cfg) => match rustls::ServerConnection::new(cfg) {
                            Ok(c) => serve_conn(
                                rustls::StreamOwned::new(c, conn),
                                &content,
                                mode,
                                &r,
                                &b,
                            ),
                            Err(_) => Ok(()),
                        },
                        None => serve_conn(conn, &content, mode, &r, &b),
                    };
                });
            }
        });
        RangeServer {
            port,
            tls: is_tls,
            requests,
            body_bytes,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT` (every path serves the same content).
    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("{}/model.gguf", self.base())
    }

    pub fn counts(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.body_bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for RangeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The tests' TLS directory (at run time: binaries are reused across checkouts).
pub fn tls_dir() -> PathBuf {
    let host = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    PathBuf::from(host).join("tests").join("tls")
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = tls_dir();
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    Arc::new(cfg)
}

fn serve_conn<S: Read + Write>(
    conn: S,
    content: &Content,
    mode: Mode,
    requests: &AtomicU64,
    body_bytes: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    let size = content.len();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut range = None;
        let mut if_range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "if-range" => if_range = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let n = requests.fetch_add(1, Ordering::Relaxed);
        let mut out = std::io::BufWriter::with_capacity(256 << 10, reader.get_mut());
        let etag = match mode {
            Mode::EtagChanges => format!("\"v{n}\""),
            _ => "\"v1\"".to_string(),
        };
        let stale = mode == Mode::Good && if_range.as_deref().is_some_and(|v| v != etag);
        let span = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| {
                let a: u64 = a.parse().ok()?;
                let b: u64 = if b.is_empty() {
                    size - 1
                } else {
                    b.parse().ok()?
                };
                Some((a, b.min(size.saturating_sub(1))))
            });
        match span {
            Some((a, b)) if mode != Mode::NoRange && !stale => {
                if a >= size || a > b {
                    write!(
                        out,
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n\r\n"
                    )?;
                    out.flush()?;
                    continue;
                }
                let len = b - a + 1;
                // The length sent (and announced in Content-Length).
                let sent = if mode == Mode::BadContentLength {
                    len - 1
                } else {
                    len
                };
                let (ca, cb) = match mode {
                    Mode::BadContentRange => (a + 1, b + 1),
                    _ => (a, b),
                };
                write!(
                    out,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {ca}-{cb}/{size}\r\nContent-Length: {sent}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n\r\n"
                )?;
                if mode == Mode::Short {
                    content.write(&mut out, a, a + len / 2)?;
                    out.flush()?;
                    body_bytes.fetch_add(len / 2, Ordering::Relaxed);
                    return Ok(()); // closes the connection
                }
                content.write(&mut out, a, a + sent)?;
                out.flush()?;
                body_bytes.fetch_add(sent, Ordering::Relaxed);
            }
            _ => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nETag: {etag}\r\n\r\n"
                )?;
                content.write(&mut out, 0, size)?;
                out.flush()?;
                body_bytes.fetch_add(size, Ordering::Relaxed);
            }
        }
    }
}
