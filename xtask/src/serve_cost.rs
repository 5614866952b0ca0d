//! `cargo xtask serve-cost`: what a request costs the composed `wasi:http`
//! component under stock `wasmtime serve` — in a fresh instance (wasmtime's
//! default for WASIp2 components: the model is loaded per request) and in a
//! reused one (`--max-instance-reuse-count`) — against a warm native
//! `wasm-chord serve`. 1-token chat completions, requests alternated between
//! the three servers, medians of time to the response and of the server
//! process's CPU time per request (user + sys from /proc, Linux).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub struct Paths {
    pub wasmtime: PathBuf,
    pub http_wasm: PathBuf,
    pub bin: PathBuf,
    pub kernel: PathBuf,
    pub model: PathBuf,
}

/// A server child, killed on drop.
struct Server {
    child: Child,
    base: String,
    started: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` under `taskset -c CPU` when `cpu` is given.
fn command(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Start `cmd`; its `stderr` (or stdout) line starting with `prefix` gives the
/// base URL. The rest of that stream is drained in a thread.
fn start(mut cmd: Command, prefix: &str, on_stderr: bool) -> Result<Server> {
    if on_stderr {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let shown = format!("{cmd:?}");
    let t = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let stream: Box<dyn std::io::Read + Send> = if on_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let mut lines = BufReader::new(stream).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix(prefix) {
                    break url.trim().trim_end_matches('/').to_string();
                }
            }
            _ => {
                let status = child.wait()?;
                bail!("{shown} exited before listening ({status})");
            }
        }
    };
    let started = t.elapsed();
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Ok(Server {
        child,
        base,
        started,
    })
}

fn wasmtime_serve(
    p: &Paths,
    cpu: Option<usize>,
    cache: bool,
    more: &[String],
    extra: &[&str],
) -> Result<Server> {
    let models = p.model.parent().context("the model has no directory")?;
    let mut c = command(&p.wasmtime, cpu);
    c.arg("serve")
        .args(["-C", if cache { "cache=y" } else { "cache=n" }])
        .args(["-S", "cli", "--addr", "127.0.0.1:0", "--dir"])
        .arg(models)
        .arg(format!("--env=WASM_CHORD_MODEL={}", p.model.display()))
        .args(more)
        .args(extra)
        .arg(&p.http_wasm);
    start(c, "Serving HTTP on ", true)
}

/// User + system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32, tick: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("bad /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?)
    };
    // utime and stime: fields 14 and 15, counted after the ')'.
    Ok((ticks(11)? + ticks(12)?) / tick)
}

/// Clock ticks per second (`getconf CLK_TCK`, else Linux's usual 100).
fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct Sample {
    /// Until the response head arrived (a whole response is computed first).
    time: Duration,
    cpu: f64,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Sample {
    fn header(&self, name: &str) -> Option<f64> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse().ok())
    }
}

fn request(
    agent: &ureq::Agent,
    server: &Server,
    path: &str,
    body: Option<&Value>,
    tick: f64,
) -> Result<Sample> {
    let url = format!("{}{path}", server.base);
    let cpu0 = cpu_seconds(server.child.id(), tick)?;
    let t = Instant::now();
    let mut r = match body {
        Some(b) => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(b.to_string()),
        None => agent.get(&url).call(),
    }
    .with_context(|| format!("request to {url}"))?;
    let time = t.elapsed();
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let text = r.body_mut().read_to_string()?;
    if status != 200 {
        bail!("{url}: {status}: {text}");
    }
    // Let the server finish the request before reading its CPU time.
    std::thread::sleep(Duration::from_millis(100));
    let cpu = cpu_seconds(server.child.id(), tick)? - cpu0;
    Ok(Sample {
        time,
        cpu,
        headers,
        body: serde_json::from_str(&text)?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(p: &Paths, cpu: Option<usize>, rounds: usize, more: &[String]) -> Result<()> {
    let tick = clock_tick();
    // Startup: compiling the component, then with wasmtime's cache filled.
    let cold = wasmtime_serve(p, cpu, false, more, &[])?.started;
    drop(wasmtime_serve(p, cpu, true, more, &[])?);
    let fresh = wasmtime_serve(p, cpu, true, more, &[])?;
    let reused = wasmtime_serve(
        p,
        cpu,
        true,
        more,
        &[
            "--max-instance-reuse-count",
            "1000000",
            "--idle-instance-timeout",
            "3600s",
        ],
    )?;
    let mut c = command(&p.bin, cpu);
    c.arg("serve")
        .arg("-m")
        .arg(&p.model)
        .args(["--port", "0"])
        .env("WASM_CHORD_KERNEL", &p.kernel);
    let native = start(c, "listening on ", false)?;

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let chat = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                      "temperature": 0, "max_tokens": 1});
    // The reused instance and the native pool load the model once.
    for s in [&reused, &native] {
        request(&agent, s, "/v1/chat/completions", Some(&chat), tick)?;
    }
    let mut rows: [Vec<Sample>; 4] = Default::default();
    let mut replies = std::collections::BTreeSet::new();
    let mut prompt_tokens = 0;
    for _ in 0..rounds {
        let f = request(&agent, &fresh, "/v1/chat/completions", Some(&chat), tick)?;
        if f.header("x-wasm-chord-instance-requests") != Some(1.0) {
            bail!("wasmtime serve reused an instance without --max-instance-reuse-count");
        }
        let m = request(&agent, &fresh, "/v1/models", None, tick)?;
        let r = request(&agent, &reused, "/v1/chat/completions", Some(&chat), tick)?;
        let n = request(&agent, &native, "/v1/chat/completions", Some(&chat), tick)?;
        for s in [&f, &r, &n] {
            replies.insert(s.body["choices"][0]["message"]["content"].to_string());
            prompt_tokens = s.body["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        }
        for (row, s) in rows.iter_mut().zip([f, m, r, n]) {
            row.push(s);
        }
    }
    let [f, m, r, n] = &rows;
    let t = |v: &[Sample]| median(v.iter().map(|s| ms(s.time)).collect());
    let c = |v: &[Sample]| median(v.iter().map(|s| s.cpu * 1e3).collect());
    let h = |v: &[Sample], name: &str| median(v.iter().filter_map(|s| s.header(name)).collect());
    println!(
        "1-token chat completion ({prompt_tokens}-token prompt), medians of {rounds} requests alternated between the servers{}{}:\n",
        cpu.map(|c| format!(", every server on cpu {c}"))
            .unwrap_or_default(),
        if more.is_empty() {
            String::new()
        } else {
            format!(", wasmtime serve {}", more.join(" "))
        }
    );
    println!("| server | time to the response | CPU per request |");
    println!("|---|---|---|");
    println!(
        "| `wasmtime serve`, fresh instance (default) | {:.0} ms (model load {:.0} ms, of which layers {:.0} ms) | {:.0} ms |",
        t(f),
        h(f, "x-wasm-chord-model-load-ms"),
        h(f, "x-wasm-chord-layer-load-ms"),
        c(f)
    );
    println!(
        "| `wasmtime serve --max-instance-reuse-count`, reused instance | {:.0} ms | {:.0} ms |",
        t(r),
        c(r)
    );
    println!(
        "| `wasm-chord serve` (native, warm) | {:.0} ms | {:.0} ms |",
        t(n),
        c(n)
    );
    println!(
        "\nfresh / reused {:.2}, fresh / native {:.2}, reused / native {:.2}",
        t(f) / t(r),
        t(f) / t(n),
        t(r) / t(n)
    );
    println!(
        "GET /v1/models in a fresh instance (no model load): {:.1} ms",
        t(m)
    );
    println!(
        "startup to listening: wasmtime serve {:.2} s compiling the component (-C cache=n), {:.2} s with -C cache=y; native serve {:.2} s (model loaded)",
        cold.as_secs_f64(),
        fresh.started.as_secs_f64(),
        native.started.as_secs_f64()
    );
    if replies.len() != 1 {
        bail!("the servers gave different greedy replies: {replies:?}");
    }
    Ok(())
}
