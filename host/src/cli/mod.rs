//! Command-line interface of `wasm-chord`.

mod bench;
mod info;
mod kld;
mod perplexity;
mod run;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use wasm_chord::{CachePolicy, FileStore, Kernel, KernelOptions, LoadOptions, Residency, Runtime};

/// Run GGUF language models inside a sandboxed WebAssembly kernel.
#[derive(Debug, Parser)]
#[command(name = "wasm-chord", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from a prompt (or chat messages), streaming it to stdout.
    Run(run::RunArgs),
    /// Print the token ids of TEXT as a JSON array.
    Tokenize(TokenizeArgs),
    /// Describe a model: architecture, sizes, tensor types, special tokens.
    /// For a model the kernel cannot load, print what its header says (and
    /// which tensor types are unsupported), then fail.
    Info(info::InfoArgs),
    /// Measure prompt processing and generation speed, like llama-bench.
    Bench(bench::BenchArgs),
    /// Teacher-forced perplexity, per-token log-probabilities and KL divergence,
    /// like llama-perplexity.
    Perplexity(perplexity::PerplexityArgs),
}

/// Where the kernel component is and how it runs.
#[derive(Debug, Clone, Args)]
pub struct KernelArgs {
    /// Kernel component (.wasm). Default: $WASM_CHORD_KERNEL, else
    /// wasm-chord-kernel.wasm next to this executable.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Cap on the kernel's linear memory in bytes (default 4 GiB).
    #[arg(long, value_name = "BYTES")]
    max_guest_memory: Option<u64>,
}

/// How the model's weights are kept in the kernel.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Model file (GGUF).
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    model: PathBuf,
    /// Residency of the layer weights: resident if they fit (auto), always
    /// resident, or streamed through a bounded layer cache.
    #[arg(long, value_enum, default_value_t = ResidencyArg::Auto)]
    residency: ResidencyArg,
    /// Keep every layer resident (same as --residency resident).
    #[arg(long, conflicts_with_all = ["stream", "residency"])]
    resident: bool,
    /// Stream layers through a bounded cache (same as --residency stream).
    #[arg(long, conflicts_with = "residency")]
    stream: bool,
    /// Guest memory budget in bytes the kernel plans the layer cache for
    /// (0: --max-guest-memory if given, else the kernel's default: resident
    /// below 3 GiB of weights, else 1 GiB). Three quarters go to weights.
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
    #[command(flatten)]
    kernel: KernelArgs,
    /// Treat special-token text (like "<|im_start|>") as plain text.
    #[arg(long)]
    no_special: bool,
    /// The text to tokenize.
    text: String,
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Info(a) => info::info(a),
        Command::Bench(a) => bench::bench(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
    }
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    check_model(&a.load.model)?;
    let (mut rt, model, _) = start(&a.kernel, &a.load)?;
    let ids = rt.tokenize(model, &a.text, true, !a.no_special)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

impl LoadArgs {
    fn options(&self) -> Result<LoadOptions> {
        let name = self
            .model
            .to_str()
            .with_context(|| format!("model path '{}' is not valid UTF-8", self.model.display()))?;
        let mut o = LoadOptions::new(name);
        o.residency = match self.residency {
            _ if self.resident => Residency::Resident,
            _ if self.stream => Residency::Streaming,
            ResidencyArg::Auto => Residency::Auto,
            ResidencyArg::Resident => Residency::Resident,
            ResidencyArg::Stream => Residency::Streaming,
        };
        o.max_memory = self.max_memory;
        o.cache_layers = self.cache_layers;
        o.cache_policy = match self.cache_policy {
            PolicyArg::Pinned => CachePolicy::Pinned,
            PolicyArg::Lru => CachePolicy::Lru,
        };
        Ok(o)
    }
}

/// Fail early, before starting the kernel, when the model file cannot be opened.
pub fn check_model(path: &Path) -> Result<()> {
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

/// An I/O error's message without the "(os error N)" suffix.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Find the kernel component: --kernel, $WASM_CHORD_KERNEL, next to the executable.
pub fn kernel_path(args: &KernelArgs) -> Result<PathBuf> {
    if let Some(p) = &args.kernel {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("WASM_CHORD_KERNEL").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let beside = exe.with_file_name("wasm-chord-kernel.wasm");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "cannot find the kernel component: no --kernel, no WASM_CHORD_KERNEL, and no '{}'; run `cargo xtask build` to build it",
        beside.display()
    )
}

/// Compile (or take from the cache) the kernel, instantiate it, and load the model.
/// Returns the runtime, the model, and the time it took.
pub fn start(
    k: &KernelArgs,
    load: &LoadArgs,
) -> Result<(Runtime, wasm_chord::Model, std::time::Duration)> {
    let t = std::time::Instant::now();
    let (mut rt, options) = runtime(k, load)?;
    let model = rt.load(&options)?;
    Ok((rt, model, t.elapsed()))
}

/// A runtime on a fresh kernel instance with the file store, and the load
/// options of `load` (the guest budget defaulting to --max-guest-memory).
pub fn runtime(k: &KernelArgs, load: &LoadArgs) -> Result<(Runtime, LoadOptions)> {
    let mut options = load.options()?;
    if options.max_memory == 0 {
        options.max_memory = k.max_guest_memory.unwrap_or(0);
    }
    let path = kernel_path(k)?;
    let kernel = Kernel::from_file(
        &path,
        &KernelOptions {
            max_guest_memory: k.max_guest_memory,
            ..KernelOptions::default()
        },
    )?;
    let rt = Runtime::new(&kernel, FileStore::new())?;
    Ok((rt, options))
}

/// Layer cache counters in words.
pub fn cache_line(c: &wasm_chord::CacheStats) -> String {
    let lookups = c.hits + c.misses;
    let rate = if lookups > 0 {
        100.0 * c.hits as f64 / lookups as f64
    } else {
        0.0
    };
    format!(
        "layer cache: {} hits, {} misses ({rate:.1}% hit rate), {} evictions, {} loaded in {:.0} ms; {}/{} layers resident ({}); guest memory {}",
        c.hits,
        c.misses,
        c.evictions,
        human_bytes(c.bytes_loaded),
        c.load_nanos as f64 / 1e6,
        c.resident_layers,
        c.total_layers,
        human_bytes(c.resident_bytes),
        human_bytes(c.guest_memory),
    )
}

/// Layer store counters in words.
pub fn store_line(s: &wasm_chord::StoreStats) -> String {
    format!(
        "layer store: {} served in {} reads and {} layer loads ({:.0} ms), highest offset {} of {}{}",
        human_bytes(s.bytes_served),
        s.reads,
        s.layer_loads,
        s.read_nanos as f64 / 1e6,
        s.max_offset_served,
        s.total_bytes,
        if s.memory64 { ", 64-bit storage" } else { "" },
    )
}

/// Bytes as "93.80 MiB".
pub fn human_bytes(n: u64) -> String {
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
pub fn human_params(n: u64) -> String {
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
