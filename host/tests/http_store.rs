//! The HTTP layer store (`-m http://…`) against a Range server on loopback:
//! the same tokens as the file store (resident and streamed), `info`, and a
//! clear one-line error (exit 1) for a server without Range support, a short
//! body, a mismatched `Content-Range` and a file replaced between requests;
//! the library's `HttpStore` on a synthetic model beyond 4 GiB.
//!
//! The CLI tests need `WASM_CHORD_KERNEL` and `WASM_CHORD_SMOLLM2` (`cargo
//! xtask test` sets them; `run` also needs the app component next to the
//! binary, which `cargo xtask build` puts there).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasm_chord::{ByteRange, HttpStore, ModelStore, StoreError};

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn bin() -> PathBuf {
    env_path("WASM_CHORD_BIN").unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wasm-chord")))
}

fn model() -> PathBuf {
    assert!(
        env_path("WASM_CHORD_KERNEL").is_some(),
        "set WASM_CHORD_KERNEL and WASM_CHORD_SMOLLM2 (cargo xtask test does)"
    );
    env_path("WASM_CHORD_SMOLLM2").expect("set WASM_CHORD_SMOLLM2 (cargo xtask test does)")
}

/// How the test server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Range requests with a fixed strong ETag and If-Range, as a file server.
    Good,
    /// Ignores Range: always 200 with the whole file.
    NoRange,
    /// 206 with the right headers, but the connection closes halfway through the body.
    Short,
    /// 206 with a Content-Range one byte off the request.
    BadContentRange,
    /// A new ETag on every answer, If-Range ignored (the file "changes").
    EtagChanges,
}

/// The bytes served: a file's, or a synthetic pattern of any size.
#[derive(Clone)]
enum Content {
    Bytes(Arc<Vec<u8>>),
    Pattern(u64),
}

/// Byte `i` of the synthetic pattern.
fn pattern(i: u64) -> u8 {
    (i ^ (i >> 13) ^ (i >> 29)).wrapping_mul(31) as u8
}

impl Content {
    fn len(&self) -> u64 {
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
struct RangeServer {
    port: u16,
    requests: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RangeServer {
    fn start(content: Content, mode: Mode) -> Self {
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
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (content, r, b) = (content.clone(), Arc::clone(&r), Arc::clone(&b));
                std::thread::spawn(move || {
                    let _ = serve_conn(conn, &content, mode, &r, &b);
                });
            }
        });
        RangeServer {
            port,
            requests,
            body_bytes,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/model.gguf", self.port)
    }

    fn counts(&self) -> (u64, u64) {
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

fn serve_conn(
    conn: TcpStream,
    content: &Content,
    mode: Mode,
    requests: &AtomicU64,
    body_bytes: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = std::io::BufWriter::with_capacity(256 << 10, conn);
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
                let (ca, cb) = match mode {
                    Mode::BadContentRange => (a + 1, b + 1),
                    _ => (a, b),
                };
                write!(
                    out,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {ca}-{cb}/{size}\r\nContent-Length: {len}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n\r\n"
                )?;
                if mode == Mode::Short {
                    content.write(&mut out, a, a + len / 2)?;
                    out.flush()?;
                    body_bytes.fetch_add(len / 2, Ordering::Relaxed);
                    return Ok(()); // closes the connection
                }
                content.write(&mut out, a, b + 1)?;
                out.flush()?;
                body_bytes.fetch_add(len, Ordering::Relaxed);
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

fn wasm_chord(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run wasm-chord")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what}: exit {:?}, stderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Exit code 1 and exactly one `error: ...` line containing `needle`.
fn assert_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The token ids of a `run --json` output.
fn tokens(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("token").and_then(|t| t.as_u64()))
        .collect()
}

fn run_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        "-m",
        model,
        "-p",
        "The capital of France is",
        "-n",
        "16",
        "--temp",
        "0",
        "--ignore-eos",
        "--json",
    ];
    a.extend_from_slice(extra);
    a
}

fn file_content(path: &PathBuf) -> Content {
    Content::Bytes(Arc::new(std::fs::read(path).expect("read the model")))
}

#[test]
fn run_over_http_equals_the_file_store() {
    let m = model();
    let path = m.to_str().expect("utf8");
    let server = RangeServer::start(file_content(&m), Mode::Good);
    let url = server.url();
    for extra in [&[][..], &["--stream", "--cache-layers", "4"][..]] {
        let t = Instant::now();
        let file = wasm_chord(&run_args(path, extra));
        let file_time = t.elapsed();
        assert_ok("file run", &file);
        let before = server.counts();
        let t = Instant::now();
        let http = wasm_chord(&run_args(&url, extra));
        let http_time = t.elapsed();
        assert_ok("http run", &http);
        let after = server.counts();
        let (a, b) = (tokens(&stdout(&file)), tokens(&stdout(&http)));
        assert_eq!(a.len(), 16, "{}", stdout(&file));
        assert_eq!(a, b, "{extra:?}: the HTTP store gives other tokens");
        eprintln!(
            "run -n 16 {extra:?}: file {:.2} s, http {:.2} s, {} requests, {} body bytes (model {} bytes)",
            file_time.as_secs_f64(),
            http_time.as_secs_f64(),
            after.0 - before.0,
            after.1 - before.1,
            std::fs::metadata(&m).expect("stat").len()
        );
    }
}

#[test]
fn info_over_http() {
    let m = model();
    let server = RangeServer::start(file_content(&m), Mode::Good);
    let url = server.url();
    let t = Instant::now();
    let file = wasm_chord(&["info", "--json", "-m", m.to_str().expect("utf8")]);
    let file_time = t.elapsed();
    let t = Instant::now();
    let http = wasm_chord(&["info", "--json", "-m", &url]);
    let http_time = t.elapsed();
    assert_ok("file info", &file);
    assert_ok("http info", &http);
    let json = |o: &Output| -> serde_json::Value {
        serde_json::from_str(stdout(o).trim()).expect("info --json is JSON")
    };
    let (a, b) = (json(&file), json(&http));
    assert!(a["n_layers"].as_u64().is_some_and(|n| n > 0), "{a}");
    assert_eq!(
        a["file_size"].as_u64(),
        Some(std::fs::metadata(&m).expect("stat").len())
    );
    // Everything `info` says is the same through either store.
    assert_eq!(a, b);
    let (req, bytes) = server.counts();
    eprintln!(
        "info: file {:.2} s, http {:.2} s, {req} requests, {bytes} body bytes",
        file_time.as_secs_f64(),
        http_time.as_secs_f64()
    );
    assert!(bytes > 0);
}

#[test]
fn bad_servers_give_one_clear_error() {
    let m = model();
    let content = file_content(&m);
    for (mode, needle) in [
        (Mode::NoRange, "does not support Range requests"),
        (Mode::Short, "short body"),
        (Mode::BadContentRange, "mismatched Content-Range"),
        (Mode::EtagChanges, "changed on the server"),
    ] {
        let server = RangeServer::start(content.clone(), mode);
        let url = server.url();
        for args in [
            vec!["info", "-m", &url],
            run_args(&url, &[]),
            vec!["tokenize", "-m", &url, "hello"],
        ] {
            let o = wasm_chord(&args);
            assert_error(&o, needle);
            assert_error(&o, &url);
        }
    }
    // Nothing listening, and a missing file.
    let server = RangeServer::start(content, Mode::Good);
    let gone = format!("http://127.0.0.1:{}/model.gguf", {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    });
    assert_error(&wasm_chord(&["info", "-m", &gone]), &gone);
    drop(server);
}

/// The library's store: u64 offsets beyond 4 GiB, the block cache, load-layer
/// as one request, each failure typed.
#[test]
fn http_store_beyond_4_gib() {
    let size = (5u64 << 30) + 12_345;
    let server = RangeServer::start(Content::Pattern(size), Mode::Good);
    let store = HttpStore::new();
    let src = store.open(&server.url()).expect("open");
    assert_eq!(src.size(), size);
    let expect = |o: u64, n: u64| (o..o + n).map(pattern).collect::<Vec<u8>>();
    // Small reads: cached blocks; the second read of the same block is free.
    let off = (4u64 << 30) + 1_000_000;
    assert_eq!(src.read_at(off, 100).expect("read"), expect(off, 100));
    let (r0, _) = server.counts();
    assert_eq!(
        src.read_at(off + 200, 50).expect("read"),
        expect(off + 200, 50)
    );
    assert_eq!(server.counts().0, r0, "a cached block is not fetched again");
    // A read across two blocks.
    let off = (1u64 << 32) + (1 << 20) - 10;
    assert_eq!(src.read_at(off, 20).expect("read"), expect(off, 20));
    // The end of the file, and past it.
    assert_eq!(src.read_at(size - 5, 5).expect("read"), expect(size - 5, 5));
    assert!(matches!(
        src.read_at(size - 5, 6),
        Err(StoreError::OutOfRange(_))
    ));
    // A layer: adjacent ranges beyond 4 GiB, one request.
    let base = (4u64 << 30) + 3;
    let ranges = [
        ByteRange {
            offset: base,
            len: 3 << 20,
        },
        ByteRange {
            offset: base + (3 << 20),
            len: 1000,
        },
        ByteRange {
            offset: base + (3 << 20) + 1000 + 64,
            len: 500,
        },
    ];
    let (r0, _) = server.counts();
    let got = src.load_layer(&ranges).expect("layer");
    assert_eq!(server.counts().0 - r0, 1, "one request for the layer");
    let mut want = expect(base, (3 << 20) + 1000);
    want.extend(expect(base + (3 << 20) + 1064, 500));
    assert_eq!(&got[..], &want[..]);
}

#[test]
fn http_store_typed_errors() {
    let content = Content::Pattern(3 << 20);
    for (mode, needle) in [
        (Mode::NoRange, "does not support Range requests"),
        (Mode::Short, "short body: got 524288 of 1048576 bytes"),
        (Mode::BadContentRange, "mismatched Content-Range"),
    ] {
        let server = RangeServer::start(content.clone(), mode);
        match HttpStore::new().open(&server.url()) {
            Err(StoreError::Io(m)) => {
                assert!(m.contains(needle), "{mode:?}: {m}");
                assert!(m.starts_with(&server.url()), "{m}");
            }
            Err(other) => panic!("{mode:?}: expected io, got {other:?}"),
            Ok(_) => panic!("{mode:?}: must fail"),
        }
    }
    // A file that changes after open: the next read fails, not mixed bytes.
    let server = RangeServer::start(content, Mode::EtagChanges);
    let src = HttpStore::new().open(&server.url()).expect("open");
    match src.read_at(2 << 20, 10) {
        Err(StoreError::Io(m)) => {
            assert!(m.contains("ETag was \"v0\", now \"v1\""), "{m}")
        }
        other => panic!("expected io, got {other:?}"),
    }
    // 404 is not-found.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let missing = format!("http://127.0.0.1:{port}/missing.gguf");
    match HttpStore::new().open(&missing) {
        Err(StoreError::NotFound(m)) => assert_eq!(m, format!("{missing}: HTTP 404 Not Found")),
        other => panic!("expected not-found, got {:?}", other.map(|s| s.size())),
    }
}

/// A server that accepts and never answers: a timeout, not a hang.
#[test]
fn http_store_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let store = HttpStore::new().with_timeouts(Duration::from_secs(2), Duration::from_millis(300));
    let t = Instant::now();
    match store.open(&format!("http://127.0.0.1:{port}/m.gguf")) {
        Err(StoreError::Io(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("expected a timeout, got {:?}", other.map(|s| s.size())),
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// `wasm-chord serve -m URL`, its completion at temperature 0, the same as
/// with the file; returns the completion text.
fn serve_completion(model: &str) -> String {
    use std::process::Stdio;
    let mut child = Command::new(bin())
        .args(["serve", "-m", model, "--port", "0", "--alias", "m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start wasm-chord serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the address line");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .map(str::to_string);
    let result = base.map(|base| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let health = agent
            .get(format!("{base}/health"))
            .call()
            .expect("GET /health");
        assert_eq!(health.status().as_u16(), 200);
        let mut r = agent
            .post(format!("{base}/v1/completions"))
            .header("Content-Type", "application/json")
            .send(
                serde_json::json!({
                    "model": "m", "prompt": "The capital of France is",
                    "max_tokens": 8, "temperature": 0
                })
                .to_string(),
            )
            .expect("POST /v1/completions");
        let body = r.body_mut().read_to_string().expect("body");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["choices"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text: {body}"))
            .to_string()
    });
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
}

#[test]
fn serve_over_http_equals_the_file_store() {
    let m = model();
    let server = RangeServer::start(file_content(&m), Mode::Good);
    let file = serve_completion(m.to_str().expect("utf8"));
    let http = serve_completion(&server.url());
    assert!(!file.is_empty());
    assert_eq!(file, http);
    assert!(server.counts().1 >= std::fs::metadata(&m).expect("stat").len());
}
