//! `wasm-chord run --shards N` and `wasm-chord bench --shards N` (N > 1):
//! the launcher drives N kernel instances itself ([`crate::shards`]) instead
//! of running the composed CLI, which is one instance. The flags and output
//! are the guest CLI's (a subset of them: see [`RunArgs`] and [`BenchArgs`]).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser};
use wasm_chord_kernel::sample::{Sampler, SamplerConfig};

use crate::runtime::{ChatMessage, LoadOptions, Residency};
use crate::shards::Sharded;
use crate::{HostError, Kernel, KernelOptions, PathOrUrlStore};

#[derive(Debug, Args)]
struct Common {
    /// The GGUF model file.
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    model: PathBuf,
    /// Kernel instances (threads) to split the model across.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    shards: u32,
    /// Keep every layer resident (the default when the shard fits).
    #[arg(long)]
    resident: bool,
    /// Use the native shard driver even for one shard (to compare it with N;
    /// `--shards 1` alone runs the guest CLI).
    #[arg(long)]
    native: bool,
    /// The kernel component (default: $WASM_CHORD_KERNEL, else
    /// wasm-chord-kernel.wasm next to the executable).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
}

/// `wasm-chord run --shards N`.
#[derive(Debug, Parser)]
#[command(
    name = "wasm-chord run",
    about = "Generate text with the model split across N kernel instances."
)]
pub struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The prompt text (special tokens are recognised).
    #[arg(
        short = 'p',
        long,
        value_name = "PROMPT",
        required_unless_present = "messages",
        conflicts_with = "messages"
    )]
    prompt: Option<String>,
    /// Chat messages: a JSON list of {"role", "content"}, rendered with the chat template.
    #[arg(long, value_name = "FILE.json")]
    messages: Option<PathBuf>,
    /// Number of tokens to generate (at least 1).
    #[arg(
        short = 'n',
        long = "n-predict",
        value_name = "N",
        default_value_t = 128
    )]
    n_predict: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(
        long,
        value_name = "T",
        default_value_t = 0.8,
        allow_negative_numbers = true
    )]
    temp: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, value_name = "K", default_value_t = 40)]
    top_k: u32,
    /// Nucleus sampling threshold (1.0: off).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.95,
        allow_negative_numbers = true
    )]
    top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0: off).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.05,
        allow_negative_numbers = true
    )]
    min_p: f32,
    /// Penalty for repeating recent tokens (1.0: off).
    #[arg(
        long,
        value_name = "R",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, value_name = "N", default_value_t = 64)]
    repeat_last_n: u32,
    /// Seed of the random generator.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Context size (0: the kernel's default).
    #[arg(long, value_name = "N", default_value_t = 0)]
    n_ctx: u32,
    /// One JSON object per token ({"token", "text"}), then one {"stats"} line.
    #[arg(long)]
    json: bool,
    /// Print load time and speeds to stderr.
    #[arg(long)]
    stats: bool,
}

/// `wasm-chord bench --shards N`.
#[derive(Debug, Parser)]
#[command(
    name = "wasm-chord bench",
    about = "Prompt and generation speed with the model split across N kernel instances."
)]
pub struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Prompt length of the prompt-processing test (0: skip it).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_name = "N",
        default_value_t = 128
    )]
    n_prompt: u32,
    /// Tokens of the generation test (0: skip it).
    #[arg(short = 'n', long = "n-gen", value_name = "N", default_value_t = 64)]
    n_gen: u32,
    /// Repetitions of each test; the median is reported.
    #[arg(
        short = 'r',
        long = "repetitions",
        value_name = "N",
        default_value_t = 3
    )]
    repetitions: u32,
    /// Print the results as a JSON array.
    #[arg(long)]
    json: bool,
}

/// `wasm-chord perplexity --shards N`.
#[derive(Debug, Parser)]
#[command(
    name = "wasm-chord perplexity",
    about = "Teacher-forced perplexity and per-token log-probabilities with the model split across N kernel instances."
)]
pub struct PerplexityArgs {
    #[command(flatten)]
    common: Common,
    /// Text file to score (tokenized once, cut into chunks of --n-ctx tokens).
    #[arg(short = 'f', long = "file", value_name = "FILE", group = "input")]
    file: Option<PathBuf>,
    /// Text to score, like -f.
    #[arg(short = 'p', long = "prompt", value_name = "TEXT", group = "input")]
    prompt: Option<String>,
    /// JSON array of token ids, scored as is (no tokenization, no BOS) from
    /// the second token on, in one pass.
    #[arg(long, value_name = "FILE.json", group = "input")]
    tokens: Option<PathBuf>,
    /// Chunk length in tokens (default 512, like llama-perplexity; with
    /// --tokens: the context is the larger of this and the sequence).
    #[arg(
        short = 'c',
        long = "n-ctx",
        visible_alias = "ctx-size",
        value_name = "N"
    )]
    n_ctx: Option<u32>,
    /// Alternatives printed per scored token with --json.
    #[arg(long, value_name = "K", default_value_t = 5)]
    top_k: u32,
    /// One JSON line per scored token, then a summary line.
    #[arg(long)]
    json: bool,
}

/// The `--shards` value in `args` (a `run` or `bench` command line without
/// the program name), if given: `Err` for a malformed one.
pub fn shards_flag(args: &[String]) -> Result<Option<u32>, String> {
    let mut it = args.iter().take_while(|a| *a != "--");
    while let Some(a) = it.next() {
        let v = if a == "--shards" {
            it.next()
                .ok_or_else(|| "--shards needs a value".to_string())?
                .as_str()
        } else if let Some(v) = a.strip_prefix("--shards=") {
            v
        } else {
            continue;
        };
        return v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .map(Some)
            .ok_or_else(|| format!("--shards must be a number from 1 to 64 (got '{v}')"));
    }
    Ok(None)
}

/// `args` without `--shards N` (for the guest CLI when N is 1).
pub fn without_shards_flag(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    let mut literal = false;
    while let Some(a) = it.next() {
        if !literal && a == "--shards" {
            it.next();
            continue;
        }
        if !literal && a.starts_with("--shards=") {
            continue;
        }
        literal |= a == "--";
        out.push(a.clone());
    }
    out
}

/// Run `run`, `bench` or `perplexity` (`sub`) with `args` (without the subcommand);
/// returns the exit code.
pub fn main(sub: &str, args: &[String], max_guest_memory: Option<u64>) -> i32 {
    let argv = std::iter::once(format!("wasm-chord {sub}")).chain(args.iter().cloned());
    let result = match sub {
        "run" => match RunArgs::try_parse_from(argv) {
            Ok(a) => run(a, max_guest_memory),
            Err(e) => return usage(e),
        },
        "perplexity" => match PerplexityArgs::try_parse_from(argv) {
            Ok(a) => perplexity(a, max_guest_memory),
            Err(e) => return usage(e),
        },
        _ => match BenchArgs::try_parse_from(argv) {
            Ok(a) => bench(a, max_guest_memory),
            Err(e) => return usage(e),
        },
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.replace('\n', " "));
            1
        }
    }
}

fn usage(e: clap::Error) -> i32 {
    let _ = e.print();
    if e.use_stderr() {
        2
    } else {
        0
    }
}

fn load(
    c: &Common,
    max_guest_memory: Option<u64>,
    n_ctx: u32,
) -> Result<(Sharded, Duration), String> {
    if !c.model.is_file() {
        return Err(format!(
            "cannot open model '{}': not a regular file",
            c.model.display()
        ));
    }
    let kernel = Kernel::from_file(
        crate::kernel::locate_kernel(c.kernel.as_deref())?,
        &KernelOptions {
            max_guest_memory,
            // A one-shot command: Ctrl-C ends the process.
            uninterruptible: true,
            ..KernelOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut opts = LoadOptions::new(c.model.to_string_lossy().into_owned());
    if c.resident {
        opts.residency = Residency::Resident;
    }
    let started = Instant::now();
    let store = PathOrUrlStore::from_env().map_err(|e| e.to_string())?;
    let sh = Sharded::new(&kernel, Arc::new(store), &opts, c.shards, n_ctx)
        .map_err(|e| e.to_string())?;
    if sh.count() < c.shards as usize {
        eprintln!(
            "wasm-chord: the model splits into {} shard(s), not {}: its {} key/value heads and quant blocks allow no more",
            sh.count(),
            c.shards,
            sh.info().n_head_kv
        );
    }
    Ok((sh, started.elapsed()))
}

fn err(e: HostError) -> String {
    e.to_string()
}

fn rate(n: u32, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if n == 0 || s <= 0.0 {
        0.0
    } else {
        f64::from(n) / s
    }
}

/// Generate: prompt through every shard, then one token at a time, sampled
/// on the host from the merged logits with the kernel's own sampler.
fn run(a: RunArgs, max_guest_memory: Option<u64>) -> Result<(), String> {
    let sampling = SamplerConfig {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed,
    };
    let mut sampler = Sampler::new(sampling).map_err(|e| e.to_string())?;
    if a.n_predict == 0 {
        return Err("-n must be at least 1 (got 0)".into());
    }
    let messages = match &a.messages {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read '{}': {e}", p.display()))?;
            let v: Vec<serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| format!("'{}' is not a JSON list of messages: {e}", p.display()))?;
            let mut out = Vec::new();
            for m in v {
                let field = |k: &str| {
                    m.get(k)
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                        .ok_or_else(|| {
                            format!("'{}': every message needs a string \"{k}\"", p.display())
                        })
                };
                out.push(ChatMessage {
                    role: field("role")?,
                    content: field("content")?,
                });
            }
            Some(out)
        }
        None => None,
    };
    let (mut sh, load_time) = load(&a.common, max_guest_memory, a.n_ctx)?;
    let (rt, model) = sh.first();
    let text = match (&messages, &a.prompt) {
        (Some(m), _) => rt.apply_chat_template(model, m, true).map_err(err)?,
        (None, Some(p)) => p.clone(),
        (None, None) => return Err("give a prompt with -p or chat messages with --messages".into()),
    };
    let prompt = rt.tokenize(model, &text, true, true).map_err(err)?;
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if prompt.len() as u32 >= sh.n_ctx() {
        return Err(format!(
            "context full: the prompt has {} tokens, n_ctx is {}",
            prompt.len(),
            sh.n_ctx()
        ));
    }
    let eos = sh.info().eos_token;
    let n_vocab = sh.info().n_vocab;
    let banned: Vec<u32> = if a.ignore_eos {
        eos.into_iter().collect()
    } else {
        Vec::new()
    };
    let started = Instant::now();
    let mut logits = Vec::new();
    sh.eval(&prompt, prompt.len() - 1, &mut |_, l| logits = l.to_vec())
        .map_err(err)?;
    let prompt_time = started.elapsed();
    let gen_started = Instant::now();
    let mut history = prompt.clone();
    let mut generated: Vec<u32> = Vec::new();
    let mut shown = String::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let reason = loop {
        let token = sampler.sample(&mut logits, &history, &banned);
        if token >= n_vocab {
            return Err(format!("sampled token {token} is outside the vocabulary"));
        }
        if !a.ignore_eos && Some(token) == eos {
            break "eos";
        }
        generated.push(token);
        history.push(token);
        // The text that became complete: the decoded generation minus what
        // was shown, held back while it ends inside a UTF-8 sequence.
        let (rt, model) = sh.first();
        let all = rt.detokenize(model, &generated).map_err(err)?;
        let piece = if all.ends_with('\u{fffd}') || !all.starts_with(&shown) {
            String::new()
        } else {
            all[shown.len()..].to_string()
        };
        shown.push_str(&piece);
        let w = if a.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"token": token, "text": piece})
            )
        } else {
            write!(out, "{piece}")
        };
        if let Err(e) = w.and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(format!("cannot write to stdout: {e}"));
        }
        if generated.len() as u32 >= a.n_predict {
            break "length";
        }
        if sh.n_past() + 1 >= sh.n_ctx() {
            break "context";
        }
        sh.eval(&[token], 0, &mut |_, l| logits = l.to_vec())
            .map_err(err)?;
    };
    let gen_time = gen_started.elapsed();
    let n_gen = generated.len() as u32;
    let prompt_tps = rate(prompt.len() as u32, prompt_time);
    let gen_tps = rate(n_gen.saturating_sub(1), gen_time);
    if a.json {
        let line = serde_json::json!({"stats": {
            "prompt_tokens": prompt.len(),
            "prompt_tokens_per_second": prompt_tps,
            "generated_tokens": n_gen,
            "generated_tokens_per_second": gen_tps,
            "load_time_ms": load_time.as_secs_f64() * 1e3,
            "stop_reason": reason,
            "shards": sh.count(),
            "streamed": sh.info().streamed,
        }});
        writeln!(out, "{line}").map_err(|e| format!("cannot write to stdout: {e}"))?;
    } else if !shown.is_empty() && !shown.ends_with('\n') {
        writeln!(out).map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    if a.stats {
        eprintln!("load time: {:.0} ms", load_time.as_secs_f64() * 1e3);
        eprintln!("shards: {}", sh.count());
        eprintln!("prompt: {} tokens, {prompt_tps:.2} tokens/s", prompt.len());
        eprintln!("generated: {n_gen} tokens, {gen_tps:.2} tokens/s");
        eprintln!("stop reason: {reason}");
    }
    Ok(())
}

/// `n` tokens of the bench text (the guest bench's), BOS first if the model adds one.
fn bench_tokens(sh: &mut Sharded, n: u32) -> Result<Vec<u32>, String> {
    let text =
        "The quick brown fox jumps over the lazy dog while the sun sets slowly behind the hills. ";
    let (rt, model) = sh.first();
    let mut ids = rt.tokenize(model, text, true, false).map_err(err)?;
    let body = rt.tokenize(model, text, false, false).map_err(err)?;
    if body.is_empty() {
        return Err("the model's tokenizer produced no tokens for the benchmark text".into());
    }
    while ids.len() < n as usize {
        ids.extend_from_slice(&body);
    }
    ids.truncate(n as usize);
    Ok(ids)
}

/// Process CPU time (all threads) in seconds.
fn cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes into the struct we own.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            return tv(ru.ru_utime) + tv(ru.ru_stime);
        }
    }
    0.0
}

#[derive(serde::Serialize)]
struct Row {
    model: String,
    size_bytes: u64,
    params: u64,
    test: String,
    n_prompt: u32,
    n_gen: u32,
    shards: usize,
    median_ts: f64,
    avg_ts: f64,
    stddev_ts: f64,
    samples_ts: Vec<f64>,
    /// Median CPU time (all threads) per token, in milliseconds.
    cpu_ms_per_token: f64,
    /// Median CPU time per token of the busiest shard's thread, in
    /// milliseconds: the critical path when every shard has a core.
    busiest_shard_cpu_ms_per_token: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

fn bench(a: BenchArgs, max_guest_memory: Option<u64>) -> Result<(), String> {
    if a.repetitions == 0 {
        return Err("-r must be at least 1 (got 0)".into());
    }
    if a.n_prompt == 0 && a.n_gen == 0 {
        return Err("nothing to measure: -p and -n are both 0".into());
    }
    let n_ctx = a.n_prompt.max(a.n_gen).saturating_add(16);
    let (mut sh, _) = load(&a.common, max_guest_memory, n_ctx)?;
    let info = sh.info().clone();
    let main_type = info
        .tensor_types
        .iter()
        .filter(|(t, _)| t != "F32")
        .max_by_key(|(_, n)| *n)
        .map_or("?", |(t, _)| t.as_str());
    let label = format!("{} {}", info.architecture, main_type);
    // Warm-up.
    let warm = bench_tokens(&mut sh, 8.min(a.n_prompt.max(1)))?;
    sh.reset().map_err(err)?;
    sh.eval(&warm, warm.len() - 1, &mut |_, _| {})
        .map_err(err)?;
    let mut rows = Vec::new();
    let mut tests = Vec::new();
    if a.n_prompt > 0 {
        tests.push((format!("pp{}", a.n_prompt), a.n_prompt, 0));
    }
    if a.n_gen > 0 {
        tests.push((format!("tg{}", a.n_gen), 0, a.n_gen));
    }
    for (test, n_prompt, n_gen) in tests {
        let mut samples = Vec::new();
        let mut cpu = Vec::new();
        let mut busiest = Vec::new();
        for _ in 0..a.repetitions {
            sh.reset().map_err(err)?;
            let before = sh.shard_cpu_seconds().map_err(err)?;
            let (n, t, c) = if n_gen == 0 {
                let prompt = bench_tokens(&mut sh, n_prompt)?;
                let (t0, c0) = (Instant::now(), cpu_seconds());
                sh.eval(&prompt, prompt.len() - 1, &mut |_, _| {})
                    .map_err(err)?;
                (prompt.len() as u32, t0.elapsed(), cpu_seconds() - c0)
            } else {
                // Like the guest bench: one prompt token, then greedy tokens
                // one evaluation each.
                let first = bench_tokens(&mut sh, 1)?;
                let mut next = 0u32;
                sh.eval(&first, 0, &mut |_, l| {
                    next = wasm_chord_kernel::sample::argmax(l)
                })
                .map_err(err)?;
                let (t0, c0) = (Instant::now(), cpu_seconds());
                for _ in 0..n_gen {
                    let tok = next;
                    sh.eval(&[tok], 0, &mut |_, l| {
                        next = wasm_chord_kernel::sample::argmax(l)
                    })
                    .map_err(err)?;
                }
                (n_gen, t0.elapsed(), cpu_seconds() - c0)
            };
            let after = sh.shard_cpu_seconds().map_err(err)?;
            let top = after
                .iter()
                .zip(&before)
                .map(|(a, b)| a - b)
                .fold(0.0, f64::max);
            samples.push(rate(n, t));
            cpu.push(c * 1e3 / f64::from(n.max(1)));
            busiest.push(top * 1e3 / f64::from(n.max(1)));
        }
        let avg = samples.iter().sum::<f64>() / samples.len() as f64;
        let var = if samples.len() > 1 {
            samples.iter().map(|s| (s - avg).powi(2)).sum::<f64>() / (samples.len() - 1) as f64
        } else {
            0.0
        };
        rows.push(Row {
            model: label.clone(),
            size_bytes: info.file_size,
            params: info.n_params,
            test,
            n_prompt,
            n_gen,
            shards: sh.count(),
            median_ts: median(&samples),
            avg_ts: avg,
            stddev_ts: var.sqrt(),
            samples_ts: samples,
            cpu_ms_per_token: median(&cpu),
            busiest_shard_cpu_ms_per_token: median(&busiest),
        });
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "| {:<24} | {:>6} | {:>7} | {:>20} | {:>12} | {:>18} |",
        "model", "shards", "test", "t/s", "CPU ms/token", "busiest shard ms/t"
    );
    println!(
        "| {:-<24} | {:->5}: | {:->6}: | {:->19}: | {:->11}: | {:->17}: |",
        "", "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<24} | {:>6} | {:>7} | {:>20} | {:>12.2} | {:>18.2} |",
            r.model,
            r.shards,
            r.test,
            format!("{:.2} ± {:.2}", r.median_ts, r.stddev_ts),
            r.cpu_ms_per_token,
            r.busiest_shard_cpu_ms_per_token
        );
    }
    Ok(())
}

/// Score `tokens` from position `first` on (>= 1) from a fresh context:
/// `f(pos, token, logprobs)` for each, as the kernel's `score_with` does,
/// from the merged logits (log-softmax on the host, in the kernel's code).
fn score_with(
    sh: &mut Sharded,
    tokens: &[u32],
    first: usize,
    f: &mut dyn FnMut(usize, u32, &[f32]),
) -> Result<(), String> {
    if first == 0 || first >= tokens.len() {
        return Err(format!(
            "score: first ({first}) must be in 1..{} (the number of tokens)",
            tokens.len()
        ));
    }
    sh.reset().map_err(err)?;
    let mut lp = vec![0f32; sh.info().n_vocab as usize];
    // Logits of index i predict token i + 1.
    sh.eval(&tokens[..tokens.len() - 1], first - 1, &mut |i, logits| {
        wasm_chord_kernel::sample::log_softmax(logits, &mut lp);
        f(i + 1, tokens[i + 1], &lp);
    })
    .map_err(err)
}

/// `wasm-chord perplexity --shards N`: the guest CLI's `perplexity` (its
/// chunking, running estimate and `--json` lines, from the kernel crate's
/// `eval` module) over the sharded model; KL-divergence files are the
/// guest's only.
fn perplexity(a: PerplexityArgs, max_guest_memory: Option<u64>) -> Result<(), String> {
    use wasm_chord_kernel::eval::perplexity::{out_of_vocab, Chunking, Nll, DEFAULT_N_CTX};
    use wasm_chord_kernel::model::session::top_of;
    if let Some(n) = a.n_ctx {
        if n < 2 {
            return Err(format!("--n-ctx must be at least 2 (got {n})"));
        }
    }
    let text = match (&a.file, &a.prompt) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read '{}': {e}", f.display()))?,
        ),
        (_, Some(p)) => Some(p.clone()),
        _ => None,
    };
    if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err("the text to score is empty".into());
    }
    let given = match &a.tokens {
        Some(f) => {
            let shown = f.display();
            let t =
                std::fs::read_to_string(f).map_err(|e| format!("cannot read '{shown}': {e}"))?;
            let tokens: Vec<u32> = serde_json::from_str(&t)
                .map_err(|_| format!("'{shown}' is not a JSON array of token ids"))?;
            if tokens.len() < 2 {
                return Err(format!(
                    "'{shown}' holds {} token(s); scoring needs at least 2",
                    tokens.len()
                ));
            }
            Some(tokens)
        }
        None => None,
    };
    if text.is_none() && given.is_none() {
        return Err("nothing to score: give -f FILE, -p TEXT or --tokens FILE.json".into());
    }
    let n_ctx = match &given {
        Some(t) => a
            .n_ctx
            .unwrap_or(0)
            .max(u32::try_from(t.len()).unwrap_or(u32::MAX)),
        None => a.n_ctx.unwrap_or(DEFAULT_N_CTX),
    };
    if given.is_none() && n_ctx < 4 {
        return Err(format!(
            "--n-ctx {n_ctx} is too small: a chunk needs at least 4 tokens"
        ));
    }
    let (mut sh, _) = load(&a.common, max_guest_memory, n_ctx)?;
    let n_vocab = sh.info().n_vocab as usize;
    let top_k = if a.json { a.top_k as usize } else { 0 };
    if top_k > n_vocab {
        return Err(format!(
            "score: top-k {top_k} exceeds the vocabulary ({n_vocab})"
        ));
    }
    let print = |pos: usize, token: u32, lp: &[f32]| {
        if a.json {
            let line = serde_json::json!({
                "pos": pos, "token": token, "logprob": lp[token as usize], "top": top_of(lp, top_k)
            });
            println!("{line}");
        }
    };
    let progress = |s: &str| {
        if !a.json {
            print!("{s}");
            let _ = std::io::stdout().flush();
        }
    };
    let mut nll = Nll::default();
    let started = Instant::now();
    let evaluated = if let Some(tokens) = given {
        if let Some((i, t)) = out_of_vocab(&tokens, n_vocab) {
            return Err(format!(
                "token {i} is {t}, outside the model's vocabulary of {n_vocab}"
            ));
        }
        score_with(&mut sh, &tokens, 1, &mut |pos, tok, lp| {
            nll.add(lp[tok as usize]);
            print(pos, tok, lp);
        })?;
        progress(&format!("[1]{:.4},\n", nll.ppl()));
        tokens.len()
    } else {
        let text = text.unwrap_or_default();
        let (rt, model) = sh.first();
        let tokens = rt.tokenize(model, &text, true, false).map_err(err)?;
        let info = sh.info();
        let bos = if info.add_bos { info.bos_token } else { None };
        let chunking = Chunking::new(tokens.len(), n_ctx as usize).map_err(|e| e.to_string())?;
        let first = chunking.first();
        for c in 0..chunking.n_chunk {
            let chunk = chunking.chunk(&tokens, c, bos);
            let base = c * chunking.n_ctx;
            score_with(&mut sh, &chunk, first, &mut |pos, tok, lp| {
                nll.add(lp[tok as usize]);
                print(base + pos, tok, lp);
            })?;
            progress(&format!("[{}]{:.4},", c + 1, nll.ppl()));
        }
        progress("\n");
        chunking.n_evaluated()
    };
    if a.json {
        let line = serde_json::json!({"perplexity": nll.ppl(), "n_tokens": nll.count});
        println!("{line}");
    } else {
        println!("{}", nll.final_estimate());
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "scored {} tokens ({evaluated} evaluated) in {secs:.2} s: {:.2} tokens/s",
        nll.count,
        evaluated as f64 / secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_shards_flag() {
        assert_eq!(shards_flag(&v(&["-m", "x", "--shards", "2"])), Ok(Some(2)));
        assert_eq!(shards_flag(&v(&["--shards=3", "-m", "x"])), Ok(Some(3)));
        assert_eq!(shards_flag(&v(&["-m", "x"])), Ok(None));
        // After `--` it is the prompt's, not ours.
        assert_eq!(shards_flag(&v(&["-p", "--", "--shards", "2"])), Ok(None));
        for bad in [
            &["--shards"][..],
            &["--shards", "0"],
            &["--shards=65"],
            &["--shards", "two"],
        ] {
            assert!(shards_flag(&v(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            without_shards_flag(&v(&["run", "--shards", "1", "-m", "x", "--shards=1"])),
            v(&["run", "-m", "x"])
        );
        assert_eq!(
            without_shards_flag(&v(&["run", "--", "--shards", "1"])),
            v(&["run", "--", "--shards", "1"])
        );
    }
}
