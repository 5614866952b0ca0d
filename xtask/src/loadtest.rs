//! `cargo xtask loadtest`: N concurrent streaming chat clients on loopback
//! against `wasm-chord serve` (and, with `--vs-llama-server`, against
//! llama.cpp's `llama-server` on the same model in the same run): errors by
//! kind, time to first token, aggregate tokens per second, and the server's
//! resident memory sampled over the run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{step, Ctx, SMOLLM2};

/// What `cargo xtask loadtest` was asked for.
pub struct LoadArgs {
    pub clients: usize,
    pub seconds: u64,
    pub parallel: u32,
    pub max_tokens: u32,
    pub ctx_size: u32,
    /// `Some(None)`: llama-server from the llama.cpp tools cache.
    pub vs_llama_server: Option<Option<PathBuf>>,
    /// llama-server's `-t` and `-tb`.
    pub llama_threads: u32,
    pub model: Option<PathBuf>,
}

/// One request.
struct Outcome {
    /// Time to the first content token.
    ttft: Option<Duration>,
    /// Tokens received (the usage's count when complete, else content chunks).
    tokens: u64,
    error: Option<String>,
    /// Still running at the end of the window: the client hung up (not an error).
    cut: bool,
}

/// Everything measured against one server.
struct Report {
    name: String,
    wall: Duration,
    outcomes: Vec<Outcome>,
    /// (seconds since start, RSS bytes).
    rss: Vec<(f64, u64)>,
}

/// A server process, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// Wait until `GET base/health` answers 200.
fn wait_healthy(base: &str, child: &mut Child, limit: Duration) -> Result<()> {
    let agent = agent();
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited ({status}) before it was ready");
        }
        if let Ok(r) = agent.get(format!("{base}/health")).call() {
            if r.status().as_u16() == 200 {
                return Ok(());
            }
        }
        if t.elapsed() > limit {
            bail!("the server at {base} was not ready within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_wasm_chord(bin: &Path, kernel: &Path, model: &Path, a: &LoadArgs) -> Result<Server> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("-m")
        .arg(model)
        .args(["--port", "0", "--parallel", &a.parallel.to_string()])
        .args(["--ctx-size", &a.ctx_size.to_string()])
        // Every client may wait: the 503s then only come from a real overload.
        .args(["--queue", &a.clients.to_string()])
        .env("WASM_CHORD_KERNEL", kernel)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("    {}", crate::show(&cmd));
    let mut child = cmd.spawn().context("cannot start wasm-chord serve")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line of wasm-chord serve: {line:?}"))?
        .to_string();
    let mut s = Server { child, base };
    wait_healthy(&s.base.clone(), &mut s.child, Duration::from_secs(60))?;
    Ok(s)
}

fn start_llama_server(exe: &Path, model: &Path, a: &LoadArgs) -> Result<Server> {
    let port = free_port()?;
    let mut cmd = Command::new(exe);
    cmd.arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        // -np slots of ctx-size each (llama-server divides -c among them),
        // by default one thread per slot: as many as wasm-chord's instances.
        .args(["-np", &a.parallel.to_string()])
        .args(["-c", &(a.ctx_size * a.parallel).to_string()])
        .args(["-t", &a.llama_threads.to_string()])
        .args(["-tb", &a.llama_threads.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    println!("    {}", crate::show(&cmd));
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start '{}'", exe.display()))?;
    let mut s = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_healthy(&s.base.clone(), &mut s.child, Duration::from_secs(120))?;
    Ok(s)
}

/// Resident set size of `pid` (Linux `/proc`).
fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

const TOPICS: [&str; 8] = [
    "a lighthouse keeper",
    "the moon",
    "a lost cat",
    "a bakery at dawn",
    "a chess game",
    "an old map",
    "a rainy train station",
    "a robot gardener",
];

/// One streamed chat completion: time to the first content token, tokens.
/// A request still running at `end` is abandoned (the client hangs up).
fn one_request(agent: &ureq::Agent, base: &str, body: &Value, end: Instant) -> Outcome {
    let fail = |e: String| Outcome {
        ttft: None,
        tokens: 0,
        error: Some(e),
        cut: false,
    };
    let sent = Instant::now();
    let Some(left) = end.checked_duration_since(sent) else {
        return Outcome {
            ttft: None,
            tokens: 0,
            error: None,
            cut: true,
        };
    };
    let r = match agent
        .post(format!("{base}/v1/chat/completions"))
        .header("Content-Type", "application/json")
        .config()
        .timeout_global(Some(left))
        .build()
        .send(body.to_string())
    {
        Ok(r) => r,
        Err(ureq::Error::Timeout(_)) => {
            return Outcome {
                ttft: None,
                tokens: 0,
                error: None,
                cut: true,
            }
        }
        Err(e) => return fail(format!("transport: {e}")),
    };
    let status = r.status().as_u16();
    if status != 200 {
        return fail(format!("HTTP {status}"));
    }
    let mut ttft = None;
    let mut chunks = 0u64;
    let mut usage = None;
    let mut done = false;
    let reader = BufReader::new(r.into_body().into_reader());
    for line in reader.lines() {
        let line = match line {
            Ok(l) => l,
            Err(_) if Instant::now() >= end => break,
            Err(e) => return fail(format!("stream read: {e}")),
        };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) => return fail("stream: a chunk is not JSON".into()),
        };
        if v.get("error").is_some() {
            return fail("stream: error event".into());
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n);
        }
        if v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            chunks += 1;
            ttft.get_or_insert_with(|| sent.elapsed());
        }
    }
    if !done {
        if Instant::now() >= end {
            return Outcome {
                ttft,
                tokens: chunks,
                error: None,
                cut: true,
            };
        }
        return fail("stream: ended without [DONE]".into());
    }
    Outcome {
        ttft,
        tokens: usage.unwrap_or(chunks),
        error: None,
        cut: false,
    }
}

/// `clients` threads streaming chat completions at `base` for `seconds`,
/// sampling the RSS of `pid` every second.
fn load(name: &str, base: &str, pid: u32, a: &LoadArgs) -> Result<Report> {
    step(&format!(
        "{name}: {} streaming clients for {} s",
        a.clients, a.seconds
    ));
    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut v = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = rss(pid) {
                    v.push((start.elapsed().as_secs_f64(), r));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            if let Some(r) = rss(pid) {
                v.push((start.elapsed().as_secs_f64(), r));
            }
            v
        })
    };
    let mut handles = Vec::new();
    for i in 0..a.clients {
        let base = base.to_string();
        let outcomes = Arc::clone(&outcomes);
        let max_tokens = a.max_tokens;
        handles.push(std::thread::spawn(move || {
            let agent = agent();
            let mut j = 0usize;
            while Instant::now() < end {
                let topic = TOPICS[(i + j) % TOPICS.len()];
                let body = json!({
                    "messages": [{"role": "user",
                                  "content": format!("Tell me a short story about {topic} (story {i}-{j}).")}],
                    "max_tokens": max_tokens,
                    "temperature": 0.8,
                    "seed": (i * 100_000 + j) as u64,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                });
                let o = one_request(&agent, &base, &body, end);
                let busy = o.error.as_deref() == Some("HTTP 503");
                outcomes.lock().expect("outcomes").push(o);
                if busy {
                    // Retry-After: 1.
                    std::thread::sleep(Duration::from_secs(1));
                }
                j += 1;
            }
        }));
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    }
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let rss = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the RSS sampler panicked"))?;
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    Ok(Report {
        name: name.to_string(),
        wall,
        outcomes,
        rss,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

/// The table's rows for one report, and whether it had errors other than 503.
fn rows(r: &Report) -> (Vec<(String, String)>, bool) {
    let ok: Vec<&Outcome> = r.outcomes.iter().filter(|o| o.error.is_none()).collect();
    let completed = ok.iter().filter(|o| !o.cut).count();
    let cut = ok.len() - completed;
    // Their wait is not in the TTFT percentiles.
    let cut_early = ok.iter().filter(|o| o.cut && o.ttft.is_none()).count();
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &r.outcomes {
        if let Some(e) = &o.error {
            *errors.entry(e.as_str()).or_default() += 1;
        }
    }
    let mut ttft: Vec<Duration> = ok.iter().filter_map(|o| o.ttft).collect();
    ttft.sort();
    let tokens: u64 = ok.iter().map(|o| o.tokens).sum();
    let errs = if errors.is_empty() {
        "none".to_string()
    } else {
        errors
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let bad = errors.keys().any(|k| *k != "HTTP 503");
    let rss_start = r.rss.first().map_or(0, |x| x.1);
    let rss_max = r.rss.iter().map(|x| x.1).max().unwrap_or(0);
    let rss_end = r.rss.last().map_or(0, |x| x.1);
    (
        vec![
            ("requests completed".into(), completed.to_string()),
            (
                "in flight at the end (cut; before a first token)".into(),
                format!("{cut} ({cut_early})"),
            ),
            ("errors by kind".into(), errs),
            ("TTFT p50".into(), ms(percentile(&ttft, 0.5))),
            ("TTFT p99".into(), ms(percentile(&ttft, 0.99))),
            ("tokens received".into(), tokens.to_string()),
            (
                "tokens/s (aggregate)".into(),
                format!("{:.1}", tokens as f64 / r.wall.as_secs_f64()),
            ),
            ("wall time".into(), format!("{:.1} s", r.wall.as_secs_f64())),
            (
                "RSS start / max / end".into(),
                format!("{} / {} / {}", mib(rss_start), mib(rss_max), mib(rss_end)),
            ),
        ],
        bad,
    )
}

impl Ctx {
    pub fn loadtest(&self, a: &LoadArgs) -> Result<()> {
        let llama = match &a.vs_llama_server {
            None => None,
            Some(Some(p)) => Some(p.clone()),
            Some(None) => {
                let home = std::env::var_os("HOME").context("HOME is not set")?;
                let p = PathBuf::from(home).join(".cache/llama-cpp-tools/bin/llama-server");
                if !p.is_file() {
                    bail!(
                        "no llama-server at '{}': pass its path, --vs-llama-server PATH",
                        p.display()
                    );
                }
                Some(p)
            }
        };
        let bin = self.build()?;
        let kernel = self.kernel_wasm();
        let model = match &a.model {
            Some(m) => m.clone(),
            None => self.fetch(&SMOLLM2)?,
        };
        let mut reports = Vec::new();
        {
            step("start wasm-chord serve");
            let srv = start_wasm_chord(&bin, &kernel, &model, a)?;
            reports.push(load("wasm-chord serve", &srv.base, srv.child.id(), a)?);
        }
        if let Some(exe) = &llama {
            step("start llama-server");
            let srv = start_llama_server(exe, &model, a)?;
            reports.push(load("llama-server", &srv.base, srv.child.id(), a)?);
        }
        step("results");
        println!(
            "model {}; {} streaming chat clients for {} s, max_tokens {}, temperature 0.8; \
             --parallel {} (wasm-chord: {} instances of --ctx-size {}; llama-server: \
             -np {} -t {} -c {}); loopback; {} CPUs, shared with other work: timings are noisy",
            model
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            a.clients,
            a.seconds,
            a.max_tokens,
            a.parallel,
            a.parallel,
            a.ctx_size,
            a.parallel,
            a.llama_threads,
            a.ctx_size * a.parallel,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        let table: Vec<(Vec<(String, String)>, bool)> = reports.iter().map(rows).collect();
        let mut header = "| |".to_string();
        let mut rule = "|---|".to_string();
        for r in &reports {
            header.push_str(&format!(" {} |", r.name));
            rule.push_str("---|");
        }
        println!("{header}\n{rule}");
        for i in 0..table[0].0.len() {
            let mut line = format!("| {} |", table[0].0[i].0);
            for (rows, _) in &table {
                line.push_str(&format!(" {} |", rows[i].1));
            }
            println!("{line}");
        }
        for (r, (_, bad)) in reports.iter().zip(&table) {
            if *bad {
                bail!("{}: errors other than 503 (see the table)", r.name);
            }
        }
        Ok(())
    }
}
