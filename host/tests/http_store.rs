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
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasm_chord::{ByteRange, HttpStore, ModelStore, StoreError};

mod common;
use common::{bin, model, pattern, Content, Mode, RangeServer};

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
    // Read ahead: the load of the same ranges takes the prefetched bytes.
    let (r0, _) = server.counts();
    src.prefetch(&ranges);
    src.prefetch(&ranges); // once in flight, not twice
    let got = src.load_layer(&ranges).expect("prefetched layer");
    assert_eq!(&got[..], &want[..]);
    assert_eq!(
        server.counts().0 - r0,
        1,
        "one request for a prefetched layer"
    );
    // Chunks inside a read-ahead layer come from its bytes, without a request.
    let (r0, _) = server.counts();
    src.prefetch(&ranges);
    let chunks = [
        vec![ByteRange {
            offset: base + 5,
            len: 1 << 20,
        }],
        vec![ByteRange {
            offset: base + (3 << 20) + 1064 + 100,
            len: 400,
        }],
        vec![
            ByteRange {
                offset: base + (3 << 20) + 10,
                len: 20,
            },
            ByteRange {
                offset: base + (3 << 20) + 1064,
                len: 8,
            },
        ],
    ];
    for c in &chunks {
        let mut want = Vec::new();
        for r in c {
            want.extend(expect(r.offset, r.len));
        }
        assert_eq!(&src.load_layer(c).expect("chunk")[..], &want[..]);
    }
    assert_eq!(
        server.counts().0 - r0,
        1,
        "chunks of a prefetched layer cost no request"
    );
    // A range reaching past the layer's is fetched.
    let across = [ByteRange {
        offset: base + (3 << 20) + 900,
        len: 200,
    }];
    assert_eq!(
        &src.load_layer(&across).expect("across")[..],
        &expect(across[0].offset, 200)[..]
    );
    assert_eq!(server.counts().0 - r0, 2, "a range outside is asked for");
    // A read-ahead nobody asks for is dropped after PREFETCH_DEPTH others.
    let other = |i: u64| {
        [ByteRange {
            offset: (1 << 32) + i * 4096,
            len: 4096,
        }]
    };
    for i in 0..4 {
        src.prefetch(&other(i));
    }
    assert_eq!(
        &src.load_layer(&other(3)).expect("layer")[..],
        &expect((1 << 32) + 3 * 4096, 4096)[..]
    );
}

#[test]
fn http_store_typed_errors() {
    let content = Content::Pattern(3 << 20);
    for (mode, needle) in [
        (Mode::NoRange, "does not support Range requests"),
        (Mode::Short, "short body: got 524288 of 1048576 bytes"),
        (Mode::BadContentRange, "mismatched Content-Range"),
        (
            Mode::BadContentLength,
            "mismatched Content-Length: 1048575 bytes for bytes 0-1048575 (1048576 bytes)",
        ),
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

/// https: the server's certificate is checked against the trusted roots
/// (`$SSL_CERT_FILE` here, Mozilla's by default), then the bytes are the
/// file's.
#[test]
fn https_with_a_private_ca() {
    let m = model();
    let server = RangeServer::start_tls(file_content(&m), Mode::Good);
    let url = server.url();
    assert!(url.starts_with("https://"));
    let ca = common::tls_dir().join("ca.pem");
    let with_ca = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("SSL_CERT_FILE", &ca)
            .output()
            .expect("run wasm-chord")
    };
    let file = wasm_chord(&run_args(m.to_str().expect("utf8"), &[]));
    let https = with_ca(&run_args(&url, &[]));
    assert_ok("file run", &file);
    assert_ok("https run", &https);
    let (a, b) = (tokens(&stdout(&file)), tokens(&stdout(&https)));
    assert_eq!(a.len(), 16);
    assert_eq!(a, b, "https gives other tokens");
    // Mozilla's roots do not know the test CA.
    let o = wasm_chord(&["info", "-m", &url]);
    assert_error(&o, &url);
    assert_error(&o, "certificate");
    // A missing SSL_CERT_FILE is named.
    let o = Command::new(bin())
        .args(["info", "-m", &url])
        .env("SSL_CERT_FILE", "/no/such/ca.pem")
        .output()
        .expect("run wasm-chord");
    assert_error(&o, "cannot read SSL_CERT_FILE '/no/such/ca.pem'");
    // The library: roots given as PEM text.
    let pem = std::fs::read(&ca).expect("ca.pem");
    let store = HttpStore::new().with_root_certs_pem(&pem).expect("PEM");
    let src = store.open(&url).expect("open over https");
    let bytes = std::fs::read(&m).expect("model");
    assert_eq!(src.size(), bytes.len() as u64);
    assert_eq!(
        src.read_at(1000, 64).expect("read"),
        bytes[1000..1064].to_vec()
    );
    assert!(HttpStore::new().with_root_certs_pem(b"not pem").is_err());
}

/// The block cache holds at most its bound, least recently used out first.
#[test]
fn block_cache_is_bounded_lru() {
    let server = RangeServer::start(Content::Pattern(1 << 20), Mode::Good);
    // Two blocks of 4 KiB.
    let store = HttpStore::new().with_block_cache(4096, 2 * 4096);
    let src = store.open(&server.url()).expect("open");
    let requests = || server.counts().0;
    let read = |block: u64| {
        let got = src.read_at(block * 4096 + 10, 100).expect("read");
        assert_eq!(
            got,
            (block * 4096 + 10..block * 4096 + 110)
                .map(pattern)
                .collect::<Vec<_>>()
        );
    };
    let r0 = requests(); // block 0 came with the open
    read(0);
    assert_eq!(requests(), r0, "block 0 is cached by the open");
    read(1);
    read(2); // evicts block 0, the least recently used
    assert_eq!(requests(), r0 + 2);
    read(2);
    read(1);
    assert_eq!(requests(), r0 + 2, "blocks 1 and 2 are cached");
    read(0);
    assert_eq!(requests(), r0 + 3, "block 0 was evicted");
    // A read of more blocks than the cache holds goes straight to the server.
    let got = src.read_at(5000, 3 * 4096).expect("large read");
    assert_eq!(
        got,
        (5000..5000 + 3 * 4096).map(pattern).collect::<Vec<_>>()
    );
    assert_eq!(requests(), r0 + 4);
    // No cache at all: every read is a request.
    let src = HttpStore::new()
        .with_block_cache(4096, 0)
        .open(&server.url())
        .expect("open");
    let r = requests();
    assert_eq!(
        src.read_at(0, 8).expect("read"),
        (0..8).map(pattern).collect::<Vec<_>>()
    );
    assert_eq!(
        src.read_at(0, 8).expect("read"),
        (0..8).map(pattern).collect::<Vec<_>>()
    );
    assert_eq!(requests(), r + 2);
}
