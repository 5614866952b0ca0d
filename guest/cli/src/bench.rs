//! `wasm-chord bench`: prompt processing and generation speed, like llama-bench.
//! Timing uses the WASI monotonic clock (`std::time::Instant`).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;

use crate::args::{check_model, human_bytes, human_params, kernel_error, LoadArgs};
use crate::run::rate;
use crate::wasm_chord::runtime::inference::{GenerateOptions, Model, Sampling, Session};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Prompt length of the prompt-processing test, in tokens (0: skip it).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_name = "N",
        default_value_t = 128
    )]
    n_prompt: u32,
    /// Tokens of the generation test (0: skip it); each is one evaluation.
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

/// The result of one test.
#[derive(Debug, serde::Serialize)]
struct Row {
    model: String,
    size_bytes: u64,
    params: u64,
    test: String,
    n_prompt: u32,
    n_gen: u32,
    median_ts: f64,
    avg_ts: f64,
    stddev_ts: f64,
    samples_ts: Vec<f64>,
}

fn greedy(max_tokens: u32) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: Sampling {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        },
        ignore_eos: true,
        stop: Vec::new(),
    }
}

/// One timed generation: (prompt tokens, prompt time, generated tokens, generation time).
fn timed(
    session: &Session,
    prompt: &[u32],
    max_tokens: u32,
) -> Result<(u32, Duration, u32, Duration)> {
    let started = Instant::now();
    let g = session
        .generate(prompt, &greedy(max_tokens))
        .map_err(kernel_error)?;
    let prompt_done = Instant::now();
    let mut generated = 0;
    while g.next().map_err(kernel_error)?.is_some() {
        generated += 1;
    }
    let ended = Instant::now();
    Ok((
        g.prompt_tokens(),
        prompt_done.duration_since(started),
        generated,
        ended.duration_since(prompt_done),
    ))
}

/// `n` tokens of ordinary text (a fixed sentence repeated), BOS first if the model adds one.
fn prompt_tokens(model: &Model, n: u32) -> Result<Vec<u32>> {
    let text =
        "The quick brown fox jumps over the lazy dog while the sun sets slowly behind the hills. ";
    let mut ids = model.tokenize(text, true, false).map_err(kernel_error)?;
    let body = model.tokenize(text, false, false).map_err(kernel_error)?;
    if body.is_empty() {
        bail!("the model's tokenizer produced no tokens for the benchmark text");
    }
    let n = n as usize;
    while ids.len() < n {
        ids.extend_from_slice(&body);
    }
    ids.truncate(n);
    Ok(ids)
}

fn stats(samples: &[f64]) -> (f64, f64, f64) {
    let n = samples.len() as f64;
    let avg = samples.iter().sum::<f64>() / n;
    let var = if samples.len() > 1 {
        samples.iter().map(|s| (s - avg).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    };
    (median, avg, var.sqrt())
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.repetitions == 0 {
        bail!("-r must be at least 1 (got 0)");
    }
    if a.n_prompt == 0 && a.n_gen == 0 {
        bail!("nothing to measure: -p and -n are both 0");
    }
    check_model(&a.load.model)?;
    let (model, _) = a.load.load()?;
    let info = model.info();
    let n_ctx = a.n_prompt.max(a.n_gen).saturating_add(16);
    let session = model.new_session(n_ctx).map_err(kernel_error)?;
    let main_type = info
        .tensor_types
        .iter()
        .filter(|(t, _)| t != "F32")
        .max_by_key(|(_, n)| *n)
        .map_or("?", |(t, _)| t.as_str());
    let label = format!(
        "{} {} {}",
        info.architecture,
        human_params(info.n_params).replace(' ', ""),
        main_type
    );

    // Warm-up (not measured).
    let warm = prompt_tokens(&model, 8.min(a.n_prompt.max(1)))?;
    session.reset();
    timed(&session, &warm, 1)?;

    let mut rows = Vec::new();
    let mut measure = |test: String, n_prompt: u32, n_gen: u32| -> Result<()> {
        let mut samples = Vec::new();
        for _ in 0..a.repetitions {
            session.reset();
            let ts = if n_gen == 0 {
                let prompt = prompt_tokens(&model, n_prompt)?;
                let (n, t, _, _) = timed(&session, &prompt, 1)?;
                f64::from(n) / t.as_secs_f64().max(1e-9)
            } else {
                let prompt = prompt_tokens(&model, 1)?;
                let (_, _, n, t) = timed(&session, &prompt, n_gen.saturating_add(1))?;
                rate(n.saturating_sub(1), t)
            };
            samples.push(ts);
        }
        let (median_ts, avg_ts, stddev_ts) = stats(&samples);
        rows.push(Row {
            model: label.clone(),
            size_bytes: info.file_size,
            params: info.n_params,
            test,
            n_prompt,
            n_gen,
            median_ts,
            avg_ts,
            stddev_ts,
            samples_ts: samples,
        });
        Ok(())
    };
    if a.n_prompt > 0 {
        measure(format!("pp{}", a.n_prompt), a.n_prompt, 0)?;
    }
    if a.n_gen > 0 {
        measure(format!("tg{}", a.n_gen), 0, a.n_gen)?;
    }

    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "| {:<30} | {:>10} | {:>10} | {:<8} | {:>7} | {:>20} |",
        "model", "size", "params", "backend", "test", "t/s"
    );
    println!(
        "| {:-<30} | {:->9}: | {:->9}: | {:-<8} | {:->6}: | {:->19}: |",
        "", "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<30} | {:>10} | {:>10} | {:<8} | {:>7} | {:>20} |",
            r.model,
            human_bytes(r.size_bytes),
            human_params(r.params),
            "wasmtime",
            r.test,
            format!("{:.2} ± {:.2}", r.median_ts, r.stddev_ts)
        );
    }
    Ok(())
}
