//! `cargo xtask golden`: make a golden file (tests/fixtures/README.md's
//! format) with llama.cpp's `llama-server`: for each case of an existing
//! golden file, the same prompt is tokenized, then decoded greedily (top_k=1,
//! EOS masked by `ignore_eos`) on the CPU with the top-5 log-probabilities of
//! every step. A development command: the server is the user's build.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::step;

/// What `golden` needs.
pub struct GoldenArgs {
    pub server: PathBuf,
    pub model: PathBuf,
    pub cases: PathBuf,
    pub out: PathBuf,
    pub near_tie: Option<f64>,
    pub server_args: Vec<String>,
}

/// The running server; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(args: &GoldenArgs) -> Result<Server> {
        // A free port on the loopback interface.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let log = std::env::temp_dir().join(format!("wasm-chord-llama-server-{port}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("create '{}'", log.display()))?;
        let child = Command::new(&args.server)
            .arg("-m")
            .arg(&args.model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", "2048", "-np", "1", "--no-webui"])
            // One thread: the outputs do not depend on the thread count (the
            // Q4_1 golden reproduces exactly with 1 and 2), and ggml's spinning
            // thread pool is 20-50x slower on a busy machine.
            .args(["-t", "1"])
            .args(&args.server_args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start '{}'", args.server.display()))?;
        let mut server = Server { child, port, log };
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "llama-server exited ({status}) before it was ready:\n{}",
                    server.log_tail()
                );
            }
            if let Ok((200, _)) = server.request("GET", "/health", None) {
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("llama-server not ready after 300 s:\n{}", server.log_tail());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// One HTTP/1.1 request (`Connection: close`); returns the status and body.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("HTTP response without a header end")?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut body = raw[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad HTTP status line in {head:?}"))?;
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body)?;
        }
        Ok((status, body))
    }

    /// POST a JSON body to `path`; the JSON answer.
    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let (status, bytes) = self.request("POST", path, Some(body))?;
        if status != 200 {
            bail!(
                "POST {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes).with_context(|| format!("POST {path}: not JSON"))
    }

    /// Token ids of `text` as llama.cpp's server tokenizes a completion prompt.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let v = self.post(
            "/tokenize",
            &json!({"content": text, "add_special": true, "parse_special": true}),
        )?;
        serde_json::from_value(v["tokens"].clone()).context("/tokenize: tokens")
    }

    /// The bytes of each token (its piece as llama.cpp renders it).
    fn pieces(&self, ids: &[u32]) -> Result<Vec<Vec<u8>>> {
        let v = self.post(
            "/tokenize",
            &json!({"content": ids, "with_pieces": true, "parse_special": true}),
        )?;
        let toks = v["tokens"].as_array().context("/tokenize: tokens")?;
        if toks.len() != ids.len() {
            bail!(
                "/tokenize returned {} pieces for {} ids",
                toks.len(),
                ids.len()
            );
        }
        toks.iter()
            .map(|t| match &t["piece"] {
                Value::String(s) => Ok(s.as_bytes().to_vec()),
                Value::Array(a) => a
                    .iter()
                    .map(|b| b.as_u64().map(|b| b as u8).context("piece byte"))
                    .collect(),
                other => Err(anyhow!("/tokenize: bad piece {other}")),
            })
            .collect()
    }
}

/// Decode an HTTP chunked body.
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).context("truncated chunk")?);
        b = b.get(size + 2..).context("truncated chunk")?;
    }
}

/// llama.cpp server's `validate_utf8` (tools/server/server-common.cpp): the
/// length of `text` without a multi-byte sequence cut off at its end.
fn validate_utf8(text: &[u8]) -> usize {
    let len = text.len();
    for i in 1..=len.min(4) {
        let c = text[len - i];
        if (c & 0xE0) == 0xC0 && i < 2 || (c & 0xF0) == 0xE0 && i < 3 || (c & 0xF8) == 0xF0 && i < 4
        {
            return len - i;
        }
    }
    len
}

fn round5(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}

/// Make the golden file.
pub fn golden(args: &GoldenArgs) -> Result<()> {
    let cases_text = std::fs::read_to_string(&args.cases)
        .with_context(|| format!("cannot read '{}'", args.cases.display()))?;
    let input: Value = serde_json::from_str(&cases_text)
        .with_context(|| format!("'{}' is not JSON", args.cases.display()))?;
    let n_predict = input["n_predict"].as_u64().unwrap_or(32);
    let cases = input["cases"]
        .as_array()
        .with_context(|| format!("'{}' has no cases", args.cases.display()))?;
    step(&format!(
        "llama-server on {} ({} cases, {n_predict} tokens each)",
        args.model.display(),
        cases.len()
    ));
    let server = Server::start(args)?;
    let mut out_cases = Vec::new();
    for case in cases {
        let id = case["id"].as_str().context("case without id")?;
        let prompt = case["prompt"].as_str().context("case without prompt")?;
        let prompt_tokens = server.tokenize(prompt)?;
        if let Some(want) = case.get("prompt_tokens") {
            let want: Vec<u32> = serde_json::from_value(want.clone())?;
            if want != prompt_tokens {
                bail!("{id}: llama.cpp tokenizes the prompt as {prompt_tokens:?}, the cases file says {want:?}");
            }
        }
        let v = server.post(
            "/completion",
            &json!({
                "prompt": prompt,
                "n_predict": n_predict,
                "top_k": 1,
                "n_probs": 5,
                "ignore_eos": true,
                "cache_prompt": false,
                "return_tokens": true,
                "stream": false,
            }),
        )?;
        let tokens: Vec<u32> =
            serde_json::from_value(v["tokens"].clone()).context("/completion: tokens")?;
        if tokens.len() as u64 != n_predict {
            bail!(
                "{id}: llama-server generated {} tokens, not {n_predict}",
                tokens.len()
            );
        }
        let probs = v["completion_probabilities"]
            .as_array()
            .context("/completion: completion_probabilities")?;
        // The server reports no probabilities for a token after which the
        // text ends inside a UTF-8 sequence: those steps are null.
        let pieces = server.pieces(&tokens)?;
        let mut text = Vec::new();
        let mut next = probs.iter();
        let mut top5 = Vec::new();
        for (step, (&tok, piece)) in tokens.iter().zip(&pieces).enumerate() {
            text.extend_from_slice(piece);
            if validate_utf8(&text) < text.len() {
                top5.push(Value::Null);
                continue;
            }
            let p = next
                .next()
                .with_context(|| format!("{id}: no probabilities left for step {step}"))?;
            if p["id"].as_u64() != Some(u64::from(tok)) {
                bail!(
                    "{id}: step {step}: probabilities of token {}, generated {tok}",
                    p["id"]
                );
            }
            let top: Vec<Value> = p["top_logprobs"]
                .as_array()
                .with_context(|| format!("{id}: step {step}: no top_logprobs"))?
                .iter()
                .map(|e| {
                    let lp = e["logprob"].as_f64().context("logprob")?;
                    Ok(json!([e["id"].as_u64().context("id")?, round5(lp)]))
                })
                .collect::<Result<_>>()?;
            if top.len() != 5 {
                bail!("{id}: step {step}: {} top entries, not 5", top.len());
            }
            top5.push(Value::Array(top));
        }
        if next.next().is_some() {
            bail!("{id}: more probabilities than steps with complete text");
        }
        let content = v["content"].as_str().context("/completion: content")?;
        if content.as_bytes() != text.as_slice() {
            bail!("{id}: content {content:?} is not the tokens' text");
        }
        println!(
            "    {id}: {} prompt tokens, {content:?}",
            prompt_tokens.len()
        );
        // Fields in the fixture's order.
        let mut c: Vec<(&str, Value)> = vec![("id", id.into())];
        if let Some(m) = case.get("messages") {
            c.push(("messages", m.clone()));
        }
        c.extend([
            ("prompt", prompt.into()),
            ("prompt_tokens", json!(prompt_tokens)),
            ("greedy_tokens", json!(tokens)),
            ("greedy_text", content.into()),
            ("top5_logprobs", Value::Array(top5)),
        ]);
        out_cases.push(c);
    }
    drop(server);
    let model = args
        .model
        .file_name()
        .context("model path without a file name")?
        .to_string_lossy()
        .into_owned();
    write_golden(&args.out, &model, n_predict, args.near_tie, &out_cases)?;
    println!("    wrote {}", args.out.display());
    Ok(())
}

/// The golden file: the fixture format, one field per line and one step of
/// `top5_logprobs` per line (small and readable in diffs).
fn write_golden(
    path: &Path,
    model: &str,
    n_predict: u64,
    near_tie: Option<f64>,
    cases: &[Vec<(&str, Value)>],
) -> Result<()> {
    let s = |v: &Value| v.to_string();
    let mut o = String::from("{\n");
    o += &format!(" \"model\": {},\n", s(&model.into()));
    o += " \"reference\": \"llama.cpp llama-server, greedy (top_k=1), top-5 log-probabilities per generated step\",\n";
    if let Some(t) = near_tie {
        o += &format!(" \"near_tie\": {t},\n");
    }
    o += &format!(" \"n_predict\": {n_predict},\n \"cases\": [\n");
    for (i, c) in cases.iter().enumerate() {
        o += "  {\n";
        let fields: Vec<String> = c
            .iter()
            .map(|(k, v)| {
                let val = match (*k, v) {
                    ("top5_logprobs", Value::Array(steps)) => {
                        let lines: Vec<String> =
                            steps.iter().map(|st| format!("    {}", s(st))).collect();
                        format!("[\n{}\n   ]", lines.join(",\n"))
                    }
                    _ => s(v),
                };
                format!("   {}: {val}", s(&(*k).into()))
            })
            .collect();
        o += &fields.join(",\n");
        o += if i + 1 < cases.len() {
            "\n  },\n"
        } else {
            "\n  }\n"
        };
    }
    o += " ]\n}\n";
    std::fs::write(path, o).with_context(|| format!("cannot write '{}'", path.display()))
}
