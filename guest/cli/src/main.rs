//! `wasm-chord-cli`: the `wasm-chord` command as a wasi:cli command component.
//!
//! Built for wasm32-wasip2, this binary exports `wasi:cli/run` and imports
//! `wasm-chord:runtime/inference`. `cargo xtask build` composes it with the
//! unchanged kernel component and the wasi:filesystem layer store
//! (`guest/fs-store`) into `wasm-chord-cli.wasm`, which only imports WASI and
//! so runs in the stock `wasmtime` CLI:
//!
//! ```text
//! wasmtime run --dir MODELS wasm-chord-cli.wasm run -m MODELS/model.gguf -p "Hello"
//! ```
//!
//! The `run`, `tokenize` and `info` subcommands take the same flags and print
//! the same output (including `--json`) as the native `wasm-chord` CLI
//! (host/src/cli), minus the flags about hosting the kernel (`--kernel`,
//! `--max-guest-memory`: the WASI runtime decides those) and `bench`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

wit_bindgen::generate!({
    world: "cli",
    path: "../../wit",
    additional_derives: [serde::Serialize],
});

use wasm_chord::runtime::inference::{
    inspect, CachePolicy, ChatMessage, Error as KernelError, FileSummary, GenerateOptions,
    LoadOptions, Model, Residency, Sampling, TensorTypeCount,
};
use wasm_chord::runtime::layer_store::StoreError;

/// Run GGUF language models inside a sandboxed WebAssembly kernel.
#[derive(Debug, Parser)]
#[command(name = "wasm-chord", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from a prompt (or chat messages), streaming it to stdout.
    Run(RunArgs),
    /// Print the token ids of TEXT as a JSON array.
    Tokenize(TokenizeArgs),
    /// Describe a model: architecture, sizes, tensor types, special tokens.
    /// For a model the kernel cannot load, print what its header says (and
    /// which tensor types are unsupported), then fail.
    Info(InfoArgs),
}

/// How the model's weights are kept in the kernel.
#[derive(Debug, Clone, Args)]
struct LoadArgs {
    /// Model file (GGUF), inside a directory preopened with `wasmtime run --dir`.
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    model: PathBuf,
    /// Residency of the layer weights: resident if they fit (auto), always
    /// resident, or streamed through a bounded layer cache.
    #[arg(long, value_enum, default_value_t = ResidencyArg::Auto)]
    residency: ResidencyArg,
    /// Guest memory budget for weights in bytes (0: the kernel's default).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    max_memory: u64,
    /// Layers kept by a streamed cache (0: as many as the budget allows).
    #[arg(long, value_name = "N", default_value_t = 0)]
    cache_layers: u32,
    /// Which layers a streamed cache keeps.
    #[arg(long, value_enum, default_value_t = PolicyArg::Pinned)]
    cache_policy: PolicyArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ResidencyArg {
    Auto,
    Resident,
    Stream,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PolicyArg {
    Pinned,
    Lru,
}

#[derive(Debug, Args)]
struct TokenizeArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Treat special-token text (like "<|im_start|>") as plain text.
    #[arg(long)]
    no_special: bool,
    /// The text to tokenize.
    text: String,
}

#[derive(Debug, Args)]
struct InfoArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Print the model info as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
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
    /// Print load time, speeds and guest memory to stderr.
    #[arg(long)]
    stats: bool,
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
}

#[derive(serde::Deserialize)]
struct Message {
    role: String,
    content: String,
}

fn main() {
    // A bug must not trap with a panic dump: one line and exit code 1.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        eprintln!("error: internal error: {}", one_line(&msg));
        std::process::exit(1);
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Info(a) => info(a),
    };
    if let Err(e) = result {
        let _ = std::io::stdout().flush();
        eprintln!("error: {}", one_line(&format!("{e:#}")));
        std::process::exit(1);
    }
}

/// Errors are printed on one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A kernel error as one line, worded like the native host's.
fn kernel_error(e: KernelError) -> anyhow::Error {
    let msg = match e {
        KernelError::InvalidModel(m) => format!("invalid model: {m}"),
        KernelError::Unsupported(m) => format!("unsupported: {m}"),
        KernelError::Store(StoreError::NotFound(m)) => m,
        KernelError::Store(StoreError::OutOfRange(m)) => format!("layer store: out of range: {m}"),
        KernelError::Store(StoreError::Io(m)) => format!("layer store: I/O error: {m}"),
        KernelError::Store(StoreError::TooLarge(n)) => {
            format!("layer store: request of {n} bytes is too large")
        }
        KernelError::ContextFull(m) => format!("context full: {m}"),
        KernelError::InvalidInput(m) => format!("invalid input: {m}"),
        KernelError::OutOfMemory(m) => format!("out of memory: {m}"),
    };
    anyhow::anyhow!(msg)
}

/// An I/O error's message without the "(os error N)" suffix.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Fail early, before loading, when the model file cannot be opened.
fn check_model(path: &Path) -> Result<()> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) => bail!("cannot open model '{shown}': {}", io_reason(&e)),
        Ok(m) if m.is_dir() => {
            bail!("cannot open model '{shown}': is a directory, not a regular file")
        }
        Ok(m) if !m.is_file() => bail!("cannot open model '{shown}': not a regular file"),
        Ok(_) => {
            std::fs::File::open(path)
                .map_err(|e| anyhow::anyhow!("cannot open model '{shown}': {}", io_reason(&e)))?;
            Ok(())
        }
    }
}

impl LoadArgs {
    fn options(&self) -> Result<LoadOptions> {
        let name = self
            .model
            .to_str()
            .with_context(|| format!("model path '{}' is not valid UTF-8", self.model.display()))?;
        Ok(LoadOptions {
            model: name.to_string(),
            residency: match self.residency {
                ResidencyArg::Auto => Residency::Auto,
                ResidencyArg::Resident => Residency::Resident,
                ResidencyArg::Stream => Residency::Streaming,
            },
            max_memory: self.max_memory,
            cache_layers: self.cache_layers,
            cache_policy: match self.cache_policy {
                PolicyArg::Pinned => CachePolicy::Pinned,
                PolicyArg::Lru => CachePolicy::Lru,
            },
        })
    }

    /// Check the file, then load it in the kernel; returns the model and the time it took.
    fn load(&self) -> Result<(Model, Duration)> {
        check_model(&self.model)?;
        let options = self.options()?;
        let t = Instant::now();
        let model = Model::load(&options).map_err(kernel_error)?;
        Ok((model, t.elapsed()))
    }
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let (model, _) = a.load.load()?;
    let ids = model
        .tokenize(&a.text, true, !a.no_special)
        .map_err(kernel_error)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
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
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read messages '{}': {}",
            path.display(),
            io_reason(&e)
        )
    })?;
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
fn rate(n: u32, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if n == 0 || s <= 0.0 {
        0.0
    } else {
        f64::from(n) / s
    }
}

fn run(a: RunArgs) -> Result<()> {
    a.validate()?;
    check_model(&a.load.model)?;
    let messages = a.messages.as_ref().map(read_messages).transpose()?;
    let (model, load_time) = a.load.load()?;
    let text = match (&messages, &a.prompt) {
        (Some(m), _) => model.apply_chat_template(m, true).map_err(kernel_error)?,
        (None, Some(p)) => p.clone(),
        (None, None) => bail!("give a prompt with -p or chat messages with --messages"),
    };
    let prompt = model.tokenize(&text, true, true).map_err(kernel_error)?;
    let session = model.new_session(a.n_ctx).map_err(kernel_error)?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let started = Instant::now();
    let generation = session
        .generate(&prompt, &a.generate_options())
        .map_err(kernel_error)?;
    let prompt_time = started.elapsed();
    let gen_started = Instant::now();
    let mut generated = 0u32;
    let mut ends_with_newline = true;
    while let Some(piece) = generation.next().map_err(kernel_error)? {
        generated += 1;
        let r = if a.json {
            let line = TokenLine {
                token: piece.token,
                text: &piece.text,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)
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
    // Linear memory never shrinks, so its size now is its peak.
    let peak = model.cache_stats().guest_memory;
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
        eprintln!("kernel guest memory: {} ({peak} bytes)", human_bytes(peak));
        eprintln!("stop reason: {reason}");
    }
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    check_model(&a.load.model)?;
    let options = a.load.options()?;
    // The header alone names every tensor type, even where loading fails.
    let summary = inspect(&options.model).map_err(kernel_error)?;
    let model = match Model::load(&options) {
        Ok(m) => m,
        Err(e @ KernelError::Unsupported(_)) if !a.json => {
            print_summary(&summary);
            return Err(kernel_error(e));
        }
        Err(e) => return Err(kernel_error(e)),
    };
    let i = model.info();
    if a.json {
        println!("{}", serde_json::to_string(&i)?);
        return Ok(());
    }
    let token = |t: Option<u32>| t.map_or_else(|| "none".to_string(), |t| t.to_string());
    let types = types_line(&summary.tensor_types);
    println!("architecture: {}", i.architecture);
    println!(
        "name:         {}",
        if i.name.is_empty() { "-" } else { &i.name }
    );
    println!(
        "params:       {} ({})",
        human_params(i.n_params),
        i.n_params
    );
    println!("layers:       {}", i.n_layers);
    println!("embd:         {}", i.n_embd);
    println!("heads:        {}", i.n_head);
    println!("kv heads:     {}", i.n_head_kv);
    println!("ff:           {}", i.n_ff);
    println!("ctx train:    {}", i.n_ctx_train);
    println!("vocab:        {}", i.n_vocab);
    println!(
        "file size:    {} ({} bytes)",
        human_bytes(i.file_size),
        i.file_size
    );
    if i.n_tensors == 0 {
        println!("weights:      none (vocabulary-only file: tokenize and detokenize only)");
    } else {
        println!(
            "weights:      {} ({} bytes)",
            human_bytes(i.weight_bytes),
            i.weight_bytes
        );
    }
    println!("tensors:      {}", i.n_tensors);
    println!("tensor types: {types}");
    println!("bos:          {}", token(i.bos_token));
    println!("eos:          {}", token(i.eos_token));
    println!("add bos:      {}", i.add_bos);
    println!(
        "chat template: {}",
        i.chat_template.as_ref().map_or_else(
            || "none".to_string(),
            |t| format!("yes ({} chars)", t.len())
        )
    );
    println!("streamed:     {}", i.streamed);
    Ok(())
}

/// What the header says, for a model the kernel cannot load.
fn print_summary(s: &FileSummary) {
    println!(
        "architecture: {}",
        if s.architecture.is_empty() {
            "-"
        } else {
            &s.architecture
        }
    );
    println!(
        "name:         {}",
        if s.name.is_empty() { "-" } else { &s.name }
    );
    println!(
        "params:       {} ({})",
        human_params(s.n_params),
        s.n_params
    );
    println!(
        "file size:    {} ({} bytes)",
        human_bytes(s.file_size),
        s.file_size
    );
    println!(
        "tensor data:  {} ({} bytes)",
        human_bytes(s.tensor_bytes),
        s.tensor_bytes
    );
    println!("tensors:      {}", s.n_tensors);
    println!("tensor types: {}", types_line(&s.tensor_types));
}

/// "F32 x 61, Q4_K x 120 (unsupported: IQ2_XXS x 7)".
fn types_line(types: &[TensorTypeCount]) -> String {
    let list = |supported: bool| {
        types
            .iter()
            .filter(|t| t.supported == supported)
            .map(|t| format!("{} x {}", t.name, t.count))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (list(true), list(false)) {
        (ok, bad) if bad.is_empty() => ok,
        (ok, bad) if ok.is_empty() => format!("unsupported: {bad}"),
        (ok, bad) => format!("{ok} (unsupported: {bad})"),
    }
}

/// Bytes as "93.80 MiB".
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// A parameter count as "134.52 M".
fn human_params(n: u64) -> String {
    let v = n as f64;
    if v >= 1e9 {
        format!("{:.2} B", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} K", v / 1e3)
    } else {
        format!("{n}")
    }
}
