//! What every subcommand shares: the model and residency flags, loading,
//! errors worded like the native host's, and numbers in words.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::wasm_chord::runtime::inference::{
    CachePolicy, CacheStats, Error as KernelError, KvCacheType, LoadOptions, Model, Residency,
};
use crate::wasm_chord::runtime::layer_store::{StoreError, StoreStats};

/// How the model's weights are kept in the kernel.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Model file (GGUF).
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    pub model: PathBuf,
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
    /// (0: --max-guest-memory if the launcher was given it, else the kernel's
    /// default: resident below 3 GiB of weights, else 1 GiB). Three quarters
    /// go to weights.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    max_memory: u64,
    /// Layers kept by a streamed cache (0: as many as the budget allows).
    #[arg(long, value_name = "N", default_value_t = 0)]
    cache_layers: u32,
    /// Which layers a streamed cache keeps.
    #[arg(long, value_enum, default_value_t = PolicyArg::Pinned)]
    cache_policy: PolicyArg,
    /// What the KV cache stores: f16 (2 bytes per value, llama.cpp's default
    /// and its attention arithmetic, so its scores) or f32 (4 bytes per
    /// value, as llama.cpp's --cache-type-k/-v f32: attention in f32 for
    /// every token, closer to exact math and faster in long contexts)
    #[arg(long, value_enum, default_value_t = KvCacheArg::F16)]
    kv_cache: KvCacheArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KvCacheArg {
    F16,
    F32,
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

/// The native launcher's `--max-guest-memory`, which it passes as
/// `WASM_CHORD_MAX_GUEST_MEMORY`: the default budget (0: none given).
fn launcher_cap() -> Result<u64> {
    match std::env::var("WASM_CHORD_MAX_GUEST_MEMORY") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("WASM_CHORD_MAX_GUEST_MEMORY is not a byte count: '{v}'")),
        Err(_) => Ok(0),
    }
}

impl LoadArgs {
    pub fn options(&self) -> Result<LoadOptions> {
        let name = self
            .model
            .to_str()
            .with_context(|| format!("model path '{}' is not valid UTF-8", self.model.display()))?;
        Ok(LoadOptions {
            model: name.to_string(),
            residency: match self.residency {
                _ if self.resident => Residency::Resident,
                _ if self.stream => Residency::Streaming,
                ResidencyArg::Auto => Residency::Auto,
                ResidencyArg::Resident => Residency::Resident,
                ResidencyArg::Stream => Residency::Streaming,
            },
            max_memory: match self.max_memory {
                0 => launcher_cap()?,
                n => n,
            },
            cache_layers: self.cache_layers,
            cache_policy: match self.cache_policy {
                PolicyArg::Pinned => CachePolicy::Pinned,
                PolicyArg::Lru => CachePolicy::Lru,
            },
            kv_cache: match self.kv_cache {
                KvCacheArg::F16 => KvCacheType::F16,
                KvCacheArg::F32 => KvCacheType::F32,
            },
        })
    }

    /// Check the file, then load it in the kernel; returns the model and the time it took.
    pub fn load(&self) -> Result<(Model, Duration)> {
        check_model(&self.model)?;
        let options = self.options()?;
        let t = Instant::now();
        let model = Model::load(&options).map_err(kernel_error)?;
        Ok((model, t.elapsed()))
    }
}

/// A kernel error as one line, worded like the native host's.
/// `s` with control characters (C0, DEL, C1) and bidirectional-override
/// characters escaped as `\u{1b}`-style text: strings from a model file
/// (names, keys, messages quoting them) never reach the terminal as escape
/// sequences.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let risky =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(risky) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if risky(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

pub fn kernel_error(e: KernelError) -> anyhow::Error {
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

/// An I/O error's message without the "(os error N)" suffix (which names
/// the host's errno and so differs between hosts).
pub fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `what 'path': reason` for a failed file operation.
pub fn file_error(what: &str, path: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("{what} '{}': {}", path.display(), io_reason(e))
}

/// Fail early, before loading, when the model file cannot be opened.
/// An `http://` or `https://` URL is the host's store's to open and check.
pub fn check_model(path: &Path) -> Result<()> {
    if path.to_str().is_some_and(is_url) {
        return Ok(());
    }
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

/// True when `name` is an `http://` or `https://` URL (the scheme in any case).
pub fn is_url(name: &str) -> bool {
    let lower = |n: usize| name.get(..n).map(str::to_ascii_lowercase);
    lower(7).as_deref() == Some("http://") || lower(8).as_deref() == Some("https://")
}

/// Layer cache counters in words.
pub fn cache_line(c: &CacheStats) -> String {
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
pub fn store_line(s: &StoreStats) -> String {
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
