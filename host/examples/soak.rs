//! Soak test of the native host (`cargo xtask soak --minutes N` runs it).
//!
//! One process, one [`Runtime`] (as each `wasm-chord serve` pool slot has):
//!
//! 1. For N minutes, in a loop: load the model (resident, every third
//!    iteration streamed through a 4-layer cache), render the chat template,
//!    tokenize, generate 24 sampled tokens, score 48 tokens with the top 5,
//!    close everything. The process RSS is sampled every minute; after the
//!    first minute (warm-up: the guest memory grows to its working size once)
//!    it may grow by at most `--max-growth-mib`, else the soak fails.
//! 2. `--traps` trap-and-recover cycles on a second runtime whose kernel caps
//!    guest memory at `--trap-cap-mib`: the model is loaded resident under the
//!    cap, then a second resident copy is loaded. That one runs the guest out
//!    of memory: the host's limiter refuses `memory.grow`, the guest's
//!    allocator aborts, and wasmtime reports a trap (`HostError::Trap`). The
//!    runtime drops the instance; the next calls get a fresh one. Measured per
//!    cycle: the time from the trap to the first answer of the fresh instance
//!    (`inspect`, which needs no model), and to the first answer that needs
//!    the model again (`tokenize`, which reloads it, as a pooled server does).
//!
//! Prints one line per sample and a final JSON summary; exit 1 on failure.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use wasm_chord::{
    ChatMessage, FileStore, GenerateOptions, HostError, Kernel, KernelOptions, LoadOptions,
    Residency, Runtime, Sampling,
};

#[derive(Parser)]
struct Args {
    /// The kernel component (wasm-chord-kernel.wasm).
    #[arg(long)]
    kernel: PathBuf,
    /// The model (SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    model: String,
    /// Minutes of the generate/score/reload loop.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Trap-and-recover cycles after the loop.
    #[arg(long, default_value_t = 1000)]
    traps: u32,
    /// RSS growth allowed after the first minute, in MiB.
    #[arg(long, default_value_t = 64)]
    max_growth_mib: u64,
    /// Guest memory cap of the trapping runtime, in MiB: room for one
    /// resident copy of the model, not two.
    #[arg(long, default_value_t = 192)]
    trap_cap_mib: u64,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 60)]
    sample_seconds: u64,
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One iteration of the loop: load, template, tokenize, generate, score, close.
fn iteration(rt: &mut Runtime, model: &str, i: u64) -> Result<(u32, usize), HostError> {
    let mut opts = LoadOptions::new(model);
    if i % 3 == 2 {
        opts.residency = Residency::Streaming;
        opts.cache_layers = 4;
    }
    let m = rt.load(&opts)?;
    let messages = [
        ChatMessage {
            role: "system".into(),
            content: "You are a helpful assistant.".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: format!("Tell me something about the number {i}."),
        },
    ];
    let text = rt.apply_chat_template(m, &messages, true)?;
    let prompt = rt.tokenize(m, &text, true, true)?;
    let s = rt.new_session(m, 512)?;
    let options = GenerateOptions {
        max_tokens: 24,
        sampling: Sampling {
            seed: i,
            ..Sampling::default()
        },
        ignore_eos: true,
        stop: Vec::new(),
    };
    let stats = rt.generate(s, &prompt, &options, |_| ControlFlow::Continue(()))?;
    let s2 = rt.new_session(m, 512)?;
    let mut tokens = prompt.clone();
    tokens.truncate(48);
    let scores = rt.score(s2, &tokens, 1, 5)?;
    if scores.len() + 1 != tokens.len() {
        return Err(HostError::Kernel(format!(
            "score returned {} rows for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    rt.close_session(s)?;
    rt.close_session(s2)?;
    rt.close_model(m)?;
    Ok((stats.generated_tokens, scores.len()))
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> Result<bool, HostError> {
    let mut ok = true;
    let kernel = Kernel::from_file(&args.kernel, &KernelOptions::default())?;
    let mut rt = Runtime::new(&kernel, FileStore::new())?;

    // 1. The loop.
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.minutes * 60.0);
    let every = Duration::from_secs(args.sample_seconds.max(1));
    let mut samples = vec![(0.0f64, rss_bytes())];
    eprintln!("soak: t=0.0 min rss={:.1} MiB", mib(samples[0].1));
    let mut next_sample = started + every;
    let (mut iterations, mut generated, mut scored) = (0u64, 0u64, 0u64);
    while Instant::now() < until {
        let (g, s) = iteration(&mut rt, &args.model, iterations)?;
        iterations += 1;
        generated += u64::from(g);
        scored += s as u64;
        if Instant::now() >= next_sample {
            let t = started.elapsed().as_secs_f64() / 60.0;
            let rss = rss_bytes();
            samples.push((t, rss));
            eprintln!(
                "soak: t={t:.1} min rss={:.1} MiB guest={:.1} MiB iterations={iterations}",
                mib(rss),
                mib(rt.guest_memory_bytes())
            );
            next_sample += every;
        }
    }
    let end = rss_bytes();
    samples.push((started.elapsed().as_secs_f64() / 60.0, end));
    let start_rss = samples[0].1;
    let max_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
    // After warm-up: from the first sample at or after one minute (or the
    // first sample after the start, in a shorter soak).
    let warm = samples
        .iter()
        .skip(1)
        .find(|s| s.0 >= 1.0)
        .or(samples.get(1))
        .map_or(start_rss, |s| s.1);
    let growth = max_rss.saturating_sub(warm);
    let growth_ok = growth <= args.max_growth_mib << 20;
    if !growth_ok {
        eprintln!(
            "soak: FAILED: RSS grew {:.1} MiB after warm-up (bound {} MiB)",
            mib(growth),
            args.max_growth_mib
        );
        ok = false;
    }
    if rt.instances_created() != 1 {
        eprintln!(
            "soak: FAILED: the loop's runtime made {} instances (a trap?)",
            rt.instances_created()
        );
        ok = false;
    }
    drop(rt);

    // 2. Trap and recover.
    let capped = Kernel::from_file(
        &args.kernel,
        &KernelOptions {
            max_guest_memory: Some(args.trap_cap_mib << 20),
            ..KernelOptions::default()
        },
    )?;
    let mut rt = Runtime::new(&capped, FileStore::new())?;
    let mut resident = LoadOptions::new(&args.model);
    resident.residency = Residency::Resident;
    let m = rt.load(&resident)?;
    let reference = rt.tokenize(m, "The capital of France is", true, true)?;
    let mut to_instance = Vec::new();
    let mut to_model = Vec::new();
    let mut trap_reason = String::new();
    let traps_started = Instant::now();
    for _ in 0..args.traps {
        let before = rt.instances_created();
        match rt.load(&resident) {
            Err(HostError::Trap(reason)) => trap_reason = reason,
            other => {
                eprintln!("soak: FAILED: the second resident copy did not trap: {other:?}");
                ok = false;
                break;
            }
        }
        let trapped = Instant::now();
        let summary = rt.inspect(&args.model)?;
        let instance = trapped.elapsed();
        let tokens = rt.tokenize(m, "The capital of France is", true, true)?;
        let model = trapped.elapsed();
        if tokens != reference || summary.n_tensors == 0 || rt.instances_created() != before + 1 {
            eprintln!("soak: FAILED: the fresh instance answered differently");
            ok = false;
            break;
        }
        to_instance.push(instance);
        to_model.push(model);
    }
    let traps_time = traps_started.elapsed();
    to_instance.sort();
    to_model.sort();
    let summary = serde_json::json!({
        "minutes": args.minutes,
        "iterations": iterations,
        "generated_tokens": generated,
        "scored_positions": scored,
        "rss_mib": {
            "start": mib(start_rss),
            "after_warmup": mib(warm),
            "max": mib(max_rss),
            "end": mib(end),
            "growth_after_warmup": mib(growth),
            "bound": args.max_growth_mib,
        },
        "rss_samples_mib": samples.iter().map(|s| (s.0, mib(s.1))).collect::<Vec<_>>(),
        "traps": {
            "cycles": to_model.len(),
            "guest_memory_cap_mib": args.trap_cap_mib,
            "reason": trap_reason,
            "fresh_instance_ms": {"p50": ms(percentile(&to_instance, 0.5)), "p99": ms(percentile(&to_instance, 0.99)), "max": ms(to_instance.last().copied().unwrap_or_default())},
            "model_reloaded_ms": {"p50": ms(percentile(&to_model, 0.5)), "p99": ms(percentile(&to_model, 0.99)), "max": ms(to_model.last().copied().unwrap_or_default())},
            "seconds": traps_time.as_secs_f64(),
        },
        "ok": ok,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    Ok(ok)
}
