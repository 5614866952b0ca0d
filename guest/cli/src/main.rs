//! `wasm-chord`: the command line, as a wasi:cli command component.
//!
//! Built for wasm32-wasip2, this binary exports `wasi:cli/run` and imports
//! `wasm-chord:runtime/inference`. `cargo xtask build` composes it with the
//! kernel component and the wasi:filesystem layer store (`guest/fs-store`)
//! into `wasm-chord-cli.wasm`, which only imports WASI and so runs in the
//! stock `wasmtime` CLI:
//!
//! ```text
//! wasmtime run --dir MODELS wasm-chord-cli.wasm run -m MODELS/model.gguf -p "Hello"
//! ```
//!
//! Every launcher (native `wasm-chord`, Node, `wasmtime run`) runs this one
//! program. Files named in arguments (`-m`, `-f`, `--tokens`, `--messages`,
//! KL-divergence base files) are opened through WASI: they must lie in a
//! directory the launcher preopened. Scoring arithmetic lives in the kernel
//! crate (`wasm_chord_kernel::eval`).

mod args;
mod bench;
mod chat;
mod info;
mod perplexity;
mod run;
mod tokenize;

use std::io::Write;

use clap::{Parser, Subcommand};

wit_bindgen::generate!({
    world: "cli",
    path: "../../wit",
    additional_derives: [serde::Serialize],
});

/// Run GGUF language models inside a sandboxed WebAssembly kernel.
#[derive(Debug, Parser)]
#[command(
    name = "wasm-chord",
    // Usage lines say `wasm-chord` whatever argv[0] the launcher passes.
    bin_name = "wasm-chord",
    version,
    about,
    long_about = None,
    after_help = "The native launcher also accepts, before or after the subcommand's own flags:\n  \
                  --app PATH                 the composed CLI component (wasm-chord-app.wasm) to run\n  \
                  --max-guest-memory BYTES   cap on each guest linear memory (default 4 GiB)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from a prompt (or chat messages), streaming it to stdout.
    Run(run::RunArgs),
    /// Chat with the model on stdin/stdout, in its chat template; each turn
    /// evaluates only the new tokens (the KV cache is kept across turns).
    Chat(chat::ChatArgs),
    /// Print the token ids of TEXT as a JSON array.
    Tokenize(tokenize::TokenizeArgs),
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
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::chat(a),
        Command::Tokenize(a) => tokenize::tokenize(a),
        Command::Info(a) => info::info(a),
        Command::Bench(a) => bench::bench(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
    };
    if let Err(e) = result {
        let _ = std::io::stdout().flush();
        eprintln!("error: {}", one_line(&format!("{e:#}")));
        std::process::exit(1);
    }
}

/// Errors are printed on one line, control characters escaped.
fn one_line(s: &str) -> String {
    let joined = s
        .split('\n')
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(" ");
    args::printable(&joined).into_owned()
}
