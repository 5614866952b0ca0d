//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/` (nightly, libFuzzer)
//! run for a while each, and their seed corpora.
//!
//! Seeds (`fuzz/seeds/TARGET`, committed, small) are written by
//! [`write_seeds`]; what libFuzzer finds goes to `fuzz/corpus/TARGET` and
//! crashes to `fuzz/artifacts/TARGET` (neither committed).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use wasm_chord_kernel::ggml_type::GgmlType;
use wasm_chord_kernel::gguf::{GgufFile, GgufWriter, Value};
use wasm_chord_kernel::store::{ByteSource, MemSource};
use wasm_chord_kernel::synth::{self, SynthArch, SynthSpec, SynthVocab};

/// The targets, and the largest input libFuzzer makes for each.
pub const TARGETS: [(&str, usize); 5] = [
    ("gguf_load", 64 << 10),
    ("split_load", 64 << 10),
    ("tokenize", 4096),
    ("chat_template", 8192),
    ("kld_read", 16 << 10),
];

/// More libFuzzer flags of a target (none today: the chat template's
/// namespace cycles that leaked are refused since, and leak checks are on).
fn extra_flags(_target: &str) -> &'static [&'static str] {
    &[]
}

/// libFuzzer's limits: a legitimate input stays far below both.
const TIMEOUT_SECS: u32 = 10;
const RSS_LIMIT_MB: u32 = 2048;

/// What one target's run did.
pub struct Outcome {
    pub target: String,
    pub execs: u64,
    pub seconds: f64,
    /// CPU seconds (user + system) of the run, where /proc tells them.
    pub cpu: Option<f64>,
    pub crashed: bool,
}

/// CPU seconds used by this process's waited-for children (Linux: fields
/// `cutime` and `cstime` of /proc/self/stat, in 1/100 s).
fn children_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(13)? + ticks(14)?) as f64 / 100.0)
}

/// Install cargo-fuzz from crates.io unless `cargo fuzz` works.
fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        crate::step("install cargo-fuzz (crates.io)");
        let status = Command::new("cargo")
            .args(["install", "--locked", "cargo-fuzz"])
            .status()
            .context("cannot run `cargo install cargo-fuzz`")?;
        if !status.success() {
            bail!("`cargo install cargo-fuzz` failed ({status})");
        }
    }
    Ok(())
}

/// `cargo +nightly fuzz ...` in `fuzz/`, free of the stable toolchain's
/// environment that `cargo xtask` runs in.
fn cargo_fuzz(root: &Path, target_dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .arg("fuzz")
        .current_dir(root.join("fuzz"))
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC");
    c
}

/// Run `targets` (all when empty) for `seconds` each, one after another,
/// one libFuzzer job each. Fails if any crashed.
pub fn run(root: &Path, target_dir: &Path, seconds: u32, only: Option<&str>) -> Result<()> {
    let targets: Vec<(&str, usize)> = match only {
        None => TARGETS.to_vec(),
        Some(t) => vec![*TARGETS.iter().find(|(n, _)| *n == t).with_context(|| {
            format!(
                "no fuzz target {t} (targets: {})",
                TARGETS.map(|t| t.0).join(", ")
            )
        })?],
    };
    ensure_cargo_fuzz()?;
    crate::step("build the fuzz targets (nightly, ASan, debug assertions)");
    let status = cargo_fuzz(root, target_dir)
        .args(["build", "-O", "-a"])
        .status()
        .context("cannot run `cargo +nightly fuzz build`")?;
    if !status.success() {
        bail!("`cargo +nightly fuzz build` failed ({status})");
    }
    let mut outcomes = Vec::new();
    for (t, max_len) in targets {
        crate::step(&format!("fuzz {t} for {seconds} s"));
        let corpus = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let start = Instant::now();
        let cpu0 = children_cpu();
        let mut child = cargo_fuzz(root, target_dir)
            .args(["run", "-O", "-a", t])
            .arg(&corpus)
            .arg(root.join("fuzz/seeds").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={max_len}"))
            .arg(format!("-timeout={TIMEOUT_SECS}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg("-print_final_stats=1")
            .args(extra_flags(t))
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `cargo fuzz run {t}`"))?;
        // libFuzzer reports on stderr: passed on as it comes, stats kept.
        let mut execs = 0;
        let stderr = child.stderr.take().context("no stderr")?;
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            eprintln!("{line}");
            if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
                execs = v.trim().parse().unwrap_or(execs);
            }
        }
        let crashed = !child.wait()?.success();
        outcomes.push(Outcome {
            target: t.to_string(),
            execs,
            seconds: start.elapsed().as_secs_f64(),
            cpu: children_cpu().zip(cpu0).map(|(b, a)| b - a),
            crashed,
        });
    }
    println!(
        "\n{:<14} {:>12} {:>9} {:>9}  result",
        "target", "executions", "seconds", "CPU s"
    );
    for o in &outcomes {
        println!(
            "{:<14} {:>12} {:>9.0} {:>9}  {}",
            o.target,
            o.execs,
            o.seconds,
            o.cpu.map_or("?".into(), |c| format!("{c:.0}")),
            if o.crashed {
                "CRASH (see fuzz/artifacts)"
            } else {
                "ok"
            }
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashed)
        .map(|o| o.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}", crashed.join(", "));
    }
    Ok(())
}

/// A tiny llama or gemma3 model with the byte vocabulary (a few KB).
fn tiny(arch: SynthArch, ty: GgmlType, n_embd: usize, template: Option<&str>) -> Vec<u8> {
    let spec = SynthSpec {
        n_layers: 2,
        n_embd,
        n_ff: 2 * n_embd,
        n_head: 2,
        n_head_kv: 1,
        weight_type: ty,
        separate_output: false,
        seed: 1,
        arch,
    };
    let mut v = SynthVocab::bytes();
    v.chat_template = template.map(String::from);
    synth::to_bytes(&spec, &v)
}

/// A parsed GGUF file re-written with `extra` metadata and only the tensors
/// `keep` selects (data copied).
fn rewrite(
    bytes: &[u8],
    extra: &[(&str, Value)],
    metadata: bool,
    keep: impl Fn(usize) -> bool,
) -> Result<Vec<u8>> {
    let src = MemSource::new(bytes.to_vec());
    let g = GgufFile::parse(&src)?;
    let mut w = GgufWriter::new();
    if metadata {
        for (k, v) in &g.metadata {
            w.kv(k, v.clone());
        }
    }
    for (k, v) in extra {
        w.kv(k, v.clone());
    }
    for (_, t) in g.tensors.iter().enumerate().filter(|(i, _)| keep(*i)) {
        w.tensor(&t.name, &t.dims, t.ty, src.read(t.offset, t.n_bytes)?);
    }
    Ok(w.to_bytes())
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
const GEMMA: &str = "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}";
const MACROS: &str = "{%- macro fmt(m) -%}{{ m.role | upper }}: {{ m.content | replace('\\n', ' ') | tojson }}{%- endmacro -%}{%- set ns = namespace(n=0) -%}{%- for m in messages if m.content -%}{%- set ns.n = ns.n + 1 -%}{{ fmt(m) }}{{ '\\n' if not loop.last }}{%- endfor -%}{{ ns.n ~ ' messages' }}{% if strftime_now is defined %} {{ strftime_now('%d %b %Y') }}{% endif %}";

/// Write every target's seed corpus into `fuzz/seeds` (replacing it).
pub fn write_seeds(root: &Path) -> Result<()> {
    let dir = root.join("fuzz/seeds");
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    let with = |sel: u8, b: &[u8]| [&[sel][..], b].concat();

    // GGUF: tiny models (F16 llama, Q8_0 llama with a template, F32 gemma3),
    // a vocabulary-only file; one of them streamed.
    let llama = tiny(SynthArch::Llama, GgmlType::F16, 8, None);
    let q8 = tiny(SynthArch::Llama, GgmlType::Q8_0, 32, Some(CHATML));
    let gemma = tiny(
        SynthArch::Gemma3 {
            head_dim: 4,
            n_swa: 2,
            swa_period: 2,
            final_softcap: Some(30.0),
        },
        GgmlType::F32,
        8,
        Some(GEMMA),
    );
    let vocab_only = rewrite(&llama, &[], true, |_| false)?;
    for (name, bytes) in [
        ("llama-f16", &llama),
        ("llama-q8_0-chatml", &q8),
        ("gemma3-f32", &gemma),
        ("vocab-only", &vocab_only),
    ] {
        let streamed = u8::from(name.ends_with("chatml"));
        seeds.push(("gguf_load", name.to_string(), with(streamed, bytes)));
    }

    // Split: shard 1 of 2 holds the metadata and the first tensors, shard 2
    // the rest (`split.no` 1).
    let n_tensors = GgufFile::parse(&MemSource::new(llama.clone()))?
        .tensors
        .len();
    let half = n_tensors / 2;
    let shard0 = rewrite(
        &llama,
        &[
            ("split.no", Value::U16(0)),
            ("split.count", Value::U16(2)),
            ("split.tensors.count", Value::I32(n_tensors as i32)),
        ],
        true,
        |i| i < half,
    )?;
    let shard1 = rewrite(
        &llama,
        &[("split.no", Value::U16(1)), ("split.count", Value::U16(2))],
        false,
        |i| i >= half,
    )?;
    let sep = b"\0SHARD>\0";
    let split = [&shard0[..], sep, &shard1[..]].concat();
    seeds.push(("split_load", "llama-2-shards".into(), with(0, &split)));
    seeds.push((
        "split_load",
        "llama-2-shards-stream".into(),
        with(1, &split),
    ));

    // Tokenize: option byte = vocabulary << 2 | parse_special << 1 | add_special.
    let texts = [
        "Hello world",
        "The capital of France is",
        "  leading spaces and\ttabs\n\nnewlines   ",
        "I'm sure you'd've done it, don't you?",
        "3.14159 12345678 1,000,000",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<s></s><unk>",
        "Ünïcödé: 日本語のテキスト, 한국어, emoji 🦙🔥, combining e\u{301}",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "<start_of_turn>user\nhello<end_of_turn>",
    ];
    for (i, text) in texts.iter().enumerate() {
        for vocab in 0..6u8 {
            let opts = vocab << 2 | (i % 4) as u8;
            seeds.push((
                "tokenize",
                format!("text{i}-vocab{vocab}"),
                with(opts, text.as_bytes()),
            ));
        }
    }

    // Chat templates: template, then NUL-separated role/content pairs.
    let conv = "\0system\0You are terse.\0user\0Hello!\0assistant\0Hi.\0user\0Bye <|im_end|>";
    for (name, t) in [
        ("chatml", CHATML),
        ("llama2", LLAMA2),
        ("gemma", GEMMA),
        ("macros", MACROS),
    ] {
        seeds.push((
            "chat_template",
            name.into(),
            with(1, format!("{t}{conv}").as_bytes()),
        ));
        seeds.push((
            "chat_template",
            format!("{name}-one-user"),
            with(0, format!("{t}\0user\0x").as_bytes()),
        ));
    }

    // The two crashes this target found (a namespace stored in itself: a
    // leak, and a stack overflow when printed), kept as regression seeds.
    for (name, t) in [
        (
            "namespace-cycle-leak",
            "{% set ns = namespace() %}{% set ns.n = ns %}",
        ),
        (
            "namespace-cycle-print",
            "{% set ns = namespace() %}{% set ns.n = ns %}{{ ns }}",
        ),
    ] {
        seeds.push((
            "chat_template",
            name.into(),
            with(1, format!("{t}\0user\0x").as_bytes()),
        ));
    }

    // KL-divergence base files written by the kernel's writer: 1 and 2
    // chunks of n_ctx 8 over a vocabulary of 5 and 40.
    for (n_ctx, n_vocab, n_chunk) in [(8usize, 5usize, 1usize), (8, 40, 2), (4, 3, 3)] {
        use wasm_chord_kernel::eval::kld::{Header, Writer};
        use wasm_chord_kernel::eval::perplexity::rows_per_chunk;
        let tokens: Vec<u32> = (0..n_ctx * n_chunk)
            .map(|i| (i * 7 % n_vocab) as u32)
            .collect();
        let header = Header {
            n_ctx,
            n_vocab,
            n_chunk,
            tokens,
        };
        let mut w = Writer::new(Vec::new(), &header)?;
        for c in 0..n_chunk {
            let rows: Vec<f32> = (0..rows_per_chunk(n_ctx) * n_vocab)
                .map(|i| ((i * 13 + c) % 17) as f32 * 0.5 - 4.0)
                .collect();
            w.write_rows(&rows)?;
        }
        seeds.push((
            "kld_read",
            format!("ctx{n_ctx}-vocab{n_vocab}-chunks{n_chunk}"),
            w.finish()?,
        ));
    }

    for (t, _) in TARGETS {
        let d = dir.join(t);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
    }
    for (t, name, bytes) in &seeds {
        std::fs::write(dir.join(t).join(name), bytes)?;
    }
    let total: usize = seeds.iter().map(|s| s.2.len()).sum();
    println!(
        "wrote {} seeds ({} KB) into {}",
        seeds.len(),
        total / 1024,
        dir.display()
    );
    Ok(())
}
