//! `wasm-chord run`: generate text.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use wasm_chord::{ChatMessage, GenerateOptions, Sampling};

use super::{check_model, human_bytes, start, KernelArgs, LoadArgs};

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
    n_ctx: u32,
    /// Print one JSON object per token ({"token", "text"}), then one {"stats"} line.
    #[arg(long)]
    json: bool,
    /// Print load time, speeds and peak guest memory to stderr.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    kernel: KernelArgs,
}

/// One `--json` line per token.
#[derive(serde::Serialize)]
struct TokenLine<'a> {
    token: u32,
    text: &'a str,
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
    cache: wasm_chord::CacheStats,
    store: Option<wasm_chord::StoreStats>,
}

#[derive(serde::Deserialize)]
struct Message {
    role: String,
    content: String,
}

impl RunArgs {
    /// Check every numeric argument before any work is done.
    fn validate(&self) -> Result<()> {
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

    fn generate_options(&self) -> GenerateOptions {
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
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read messages '{}'", path.display()))?;
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

pub fn run(a: RunArgs) -> Result<()> {
    a.validate()?;
    check_model(&a.load.model)?;
    let messages = a.messages.as_ref().map(read_messages).transpose()?;
    let (mut rt, model, load_time) = start(&a.kernel, &a.load)?;
    let text = match (&messages, &a.prompt) {
        (Some(m), _) => rt.apply_chat_template(model, m, true)?,
        (None, Some(p)) => p.clone(),
        (None, None) => bail!("give a prompt with -p or chat messages with --messages"),
    };
    let prompt = rt.tokenize(model, &text, true, true)?;
    let session = rt.new_session(model, a.n_ctx)?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_failed: Option<std::io::Error> = None;
    let mut ends_with_newline = true;
    let stats = rt.generate(session, &prompt, &a.generate_options(), |piece| {
        let r = if a.json {
            let line = TokenLine {
                token: piece.token,
                text: &piece.text,
            };
            match serde_json::to_string(&line) {
                Ok(line) => writeln!(out, "{line}"),
                Err(e) => Err(std::io::Error::other(e)),
            }
        } else {
            if !piece.text.is_empty() {
                ends_with_newline = piece.text.ends_with('\n');
            }
            write!(out, "{}", piece.text)
        };
        match r.and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_failed {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(e).context("cannot write to stdout");
    }
    let peak = rt.peak_guest_memory_bytes();
    let cache = rt.cache_stats(model)?;
    let store = rt.store_stats(model);
    let load_ms = load_time.as_secs_f64() * 1e3;
    if a.json {
        let line = StatsLine {
            stats: RunStats {
                prompt_tokens: stats.prompt_tokens,
                prompt_tokens_per_second: stats.prompt_tokens_per_second(),
                generated_tokens: stats.generated_tokens,
                generated_tokens_per_second: stats.generated_tokens_per_second(),
                load_time_ms: load_ms,
                peak_guest_memory_bytes: peak,
                stop_reason: &stats.stop_reason,
                cache,
                store,
            },
        };
        let line = serde_json::to_string(&line)?;
        writeln!(out, "{line}").context("cannot write to stdout")?;
    } else if !ends_with_newline {
        writeln!(out).context("cannot write to stdout")?;
    }
    out.flush().context("cannot write to stdout")?;
    if a.stats {
        eprintln!("load time: {load_ms:.0} ms");
        eprintln!(
            "prompt: {} tokens, {:.2} tokens/s",
            stats.prompt_tokens,
            stats.prompt_tokens_per_second()
        );
        eprintln!(
            "generated: {} tokens, {:.2} tokens/s",
            stats.generated_tokens,
            stats.generated_tokens_per_second()
        );
        eprintln!("peak guest memory: {} ({peak} bytes)", human_bytes(peak));
        eprintln!("stop reason: {}", stats.stop_reason);
        eprintln!("{}", super::cache_line(&cache));
        if let Some(s) = &store {
            eprintln!("{}", super::store_line(s));
        }
    }
    Ok(())
}
