//! `wasm-chord run`: generate text.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::args::{cache_line, file_error, human_bytes, kernel_error, store_line, LoadArgs};
use crate::wasm_chord::runtime::inference::{
    CacheStats, ChatMessage, GenerateOptions, Piece, Sampling,
};
use crate::wasm_chord::runtime::layer_store::StoreStats;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// The prompt text (special tokens like "<|im_start|>" are recognised).
    #[arg(
        short = 'p',
        long,
        value_name = "PROMPT",
        required_unless_present = "messages",
        conflicts_with = "messages"
    )]
    prompt: Option<String>,
    /// Chat messages: a JSON list of {"role": ..., "content": ...}, rendered with
    /// the model's chat template (with the generation prompt) instead of --prompt.
    #[arg(long, value_name = "FILE.json")]
    messages: Option<PathBuf>,
    #[command(flatten)]
    pub gen: GenArgs,
    /// Print one JSON object per token ({"token", "text"}), then one {"stats"} line.
    #[arg(long)]
    json: bool,
    /// Print load time, speeds and peak guest memory to stderr.
    #[arg(long)]
    stats: bool,
}

/// Generation flags shared by `run` and `chat`: length, sampling, context.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of tokens to generate (at least 1).
    #[arg(
        short = 'n',
        long = "n-predict",
        value_name = "N",
        default_value_t = 128
    )]
    n_predict: u32,
    /// Sampling temperature; 0 is greedy (always the most likely token).
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
    /// Nucleus sampling: keep the smallest set of tokens with probability >= P (1.0: off).
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
    /// Context size (0: the kernel's default, 4096 capped at the training context).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub n_ctx: u32,
}

/// One `--json` line per token.
#[derive(serde::Serialize)]
struct TokenLine<'a> {
    pub token: u32,
    pub text: &'a str,
}

/// Write `piece` as one `--json` token line.
pub fn write_token_line(out: &mut impl Write, piece: &Piece) -> std::io::Result<()> {
    let line = TokenLine {
        token: piece.token,
        text: &piece.text,
    };
    writeln!(out, "{}", serde_json::to_string(&line)?)
}

/// The last `--json` line.
#[derive(serde::Serialize)]
struct StatsLine<'a> {
    stats: RunStats<'a>,
}

#[derive(serde::Serialize)]
struct RunStats<'a> {
    prompt_tokens: u32,
    prompt_tokens_per_second: f64,
    generated_tokens: u32,
    generated_tokens_per_second: f64,
    load_time_ms: f64,
    peak_guest_memory_bytes: u64,
    stop_reason: &'a str,
    cache: CacheStats,
    store: Option<StoreStats>,
}

#[derive(serde::Deserialize)]
struct Message {
    role: String,
    content: String,
}

impl GenArgs {
    /// Check every numeric argument before any work is done.
    pub fn validate(&self) -> Result<()> {
        if self.n_predict == 0 {
            bail!("-n must be at least 1 (got 0)");
        }
        if !self.temp.is_finite() || self.temp < 0.0 {
            bail!("--temp must be a finite number >= 0 (got {})", self.temp);
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            bail!("--top-p must be between 0 and 1 (got {})", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail!("--min-p must be between 0 and 1 (got {})", self.min_p);
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            bail!(
                "--repeat-penalty must be a finite number > 0 (got {})",
                self.repeat_penalty
            );
        }
        Ok(())
    }

    pub fn generate_options(&self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.n_predict,
            sampling: Sampling {
                temperature: self.temp,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                seed: self.seed,
            },
            ignore_eos: self.ignore_eos,
            stop: Vec::new(),
        }
    }
}

fn read_messages(path: &PathBuf) -> Result<Vec<ChatMessage>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| file_error("cannot read messages", path, &e))?;
    let list: Vec<Message> = serde_json::from_str(&text).with_context(|| {
        format!(
            "messages '{}' must be a JSON list of {{\"role\", \"content\"}} objects",
            path.display()
        )
    })?;
    if list.is_empty() {
        bail!("messages '{}' is an empty list", path.display());
    }
    Ok(list
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
        })
        .collect())
}

/// Tokens per second, 0 when nothing was timed.
pub fn rate(n: u32, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if n == 0 || s <= 0.0 {
        0.0
    } else {
        f64::from(n) / s
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    a.gen.validate()?;
    crate::args::check_model(&a.load.model)?;
    let messages = a.messages.as_ref().map(read_messages).transpose()?;
    let (model, load_time) = a.load.load()?;
    let text = match (&messages, &a.prompt) {
        (Some(m), _) => model.apply_chat_template(m, true).map_err(kernel_error)?,
        (None, Some(p)) => p.clone(),
        (None, None) => bail!("give a prompt with -p or chat messages with --messages"),
    };
    let prompt = model.tokenize(&text, true, true).map_err(kernel_error)?;
    let session = model.new_session(a.gen.n_ctx).map_err(kernel_error)?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let started = Instant::now();
    let generation = session
        .generate(&prompt, &a.gen.generate_options())
        .map_err(kernel_error)?;
    let prompt_time = started.elapsed();
    let gen_started = Instant::now();
    let mut generated = 0u32;
    let mut ends_with_newline = true;
    while let Some(piece) = generation.next().map_err(kernel_error)? {
        generated += 1;
        let r = if a.json {
            write_token_line(&mut out, &piece)
        } else {
            if !piece.text.is_empty() {
                ends_with_newline = piece.text.ends_with('\n');
            }
            write!(out, "{}", piece.text)
        };
        if let Err(e) = r.and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e).context("cannot write to stdout");
        }
    }
    let generation_time = gen_started.elapsed();
    let prompt_tokens = generation.prompt_tokens();
    let reason = generation.stop_reason().unwrap_or_else(|| "unknown".into());
    drop(generation);
    let cache = model.cache_stats();
    let store = model.store_stats();
    // Linear memory never shrinks, so its size now is its peak.
    let peak = cache.guest_memory;
    let load_ms = load_time.as_secs_f64() * 1e3;
    let prompt_tps = rate(prompt_tokens, prompt_time);
    // Like llama.cpp, n generated tokens take n - 1 evaluations.
    let gen_tps = rate(generated.saturating_sub(1), generation_time);
    if a.json {
        let line = StatsLine {
            stats: RunStats {
                prompt_tokens,
                prompt_tokens_per_second: prompt_tps,
                generated_tokens: generated,
                generated_tokens_per_second: gen_tps,
                load_time_ms: load_ms,
                peak_guest_memory_bytes: peak,
                stop_reason: &reason,
                cache,
                store: Some(store),
            },
        };
        writeln!(out, "{}", serde_json::to_string(&line)?).context("cannot write to stdout")?;
    } else if !ends_with_newline {
        writeln!(out).context("cannot write to stdout")?;
    }
    out.flush().context("cannot write to stdout")?;
    if a.stats {
        eprintln!("load time: {load_ms:.0} ms");
        eprintln!("prompt: {prompt_tokens} tokens, {prompt_tps:.2} tokens/s");
        eprintln!("generated: {generated} tokens, {gen_tps:.2} tokens/s");
        eprintln!("peak guest memory: {} ({peak} bytes)", human_bytes(peak));
        eprintln!("stop reason: {reason}");
        eprintln!("{}", cache_line(&cache));
        eprintln!("{}", store_line(&store));
    }
    Ok(())
}
