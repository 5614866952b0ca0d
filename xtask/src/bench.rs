//! `cargo xtask bench-coverage`: `wasm-chord bench` on the k-quant models
//! (SmolLM2 Q4_K_M from the variants, Gemma-3-270M Q4_K_M), and when given,
//! llama.cpp's `llama-bench` with one thread on the same files in the same
//! run, with the ratio of the two.
//!
//! `cargo xtask bench --vs-llama-cpp`: the speed claim in one command —
//! `wasm-chord bench` and llama.cpp's `llama-bench -t 1` on SmolLM2-135M Q4_1
//! and Gemma-3-270M Q4_K_M, each pinned to the same core in turn, as a
//! markdown table of prompt and decode speeds and their ratios, with the CPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{show, step, Ctx, GEMMA3, SMOLLM2};

/// One measured speed.
struct Speed {
    test: String,
    ts: f64,
}

/// Prompt and generation lengths, repetitions.
const N_PROMPT: u32 = 128;
const N_GEN: u32 = 64;
const REPS: u32 = 3;

fn json_of(cmd: &mut Command) -> Result<Value> {
    let shown = show(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("`{shown}` printed no JSON"))
}

/// `program`, under `taskset -c CPU` when `cpu` is given.
fn command(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `wasm-chord bench --json`: its rows' test names and median tokens/s.
fn ours(bin: &Path, kernel: &Path, model: &Path, cpu: Option<usize>) -> Result<Vec<Speed>> {
    let v = json_of(
        command(bin, cpu)
            .arg("bench")
            .arg("-m")
            .arg(model)
            .args(["-p", &N_PROMPT.to_string(), "-n", &N_GEN.to_string()])
            .args(["-r", &REPS.to_string(), "--json"])
            .env("WASM_CHORD_KERNEL", kernel),
    )?;
    v.as_array()
        .context("wasm-chord bench: not an array")?
        .iter()
        .map(|r| {
            Ok(Speed {
                test: r["test"].as_str().context("test")?.to_string(),
                ts: r["median_ts"].as_f64().context("median_ts")?,
            })
        })
        .collect()
}

/// `llama-bench -t 1 -o json`: pp/tg tests and their average tokens/s.
fn theirs(llama_bench: &Path, model: &Path, cpu: Option<usize>) -> Result<Vec<Speed>> {
    let v = json_of(
        command(llama_bench, cpu)
            .arg("-m")
            .arg(model)
            .args([
                "-t",
                "1",
                "-p",
                &N_PROMPT.to_string(),
                "-n",
                &N_GEN.to_string(),
            ])
            .args(["-r", &REPS.to_string(), "-o", "json"]),
    )?;
    v.as_array()
        .context("llama-bench: not an array")?
        .iter()
        .map(|r| {
            let (p, g) = (r["n_prompt"].as_u64(), r["n_gen"].as_u64());
            let test = match (p, g) {
                (Some(p), Some(0)) => format!("pp{p}"),
                (Some(0), Some(g)) => format!("tg{g}"),
                _ => bail!("llama-bench: unexpected test {r}"),
            };
            Ok(Speed {
                test,
                ts: r["avg_ts"].as_f64().context("avg_ts")?,
            })
        })
        .collect()
}

impl Ctx {
    pub fn bench_coverage(&self, llama_bench: Option<&Path>) -> Result<()> {
        let bin = self.build()?;
        let kernel = self.kernel_wasm();
        let variants = self.fetch_variants()?;
        let models: Vec<(&str, PathBuf)> = vec![
            ("SmolLM2-135M Q4_K_M", variants.join("smollm2-Q4_K_M.gguf")),
            ("Gemma-3-270M Q4_K_M", self.fetch(&GEMMA3)?),
        ];
        let mut rows: Vec<(String, String, Option<f64>, Option<f64>)> = Vec::new();
        let mut failed = Vec::new();
        for (name, model) in &models {
            step(&format!("wasm-chord bench: {name}"));
            // A model the kernel cannot run yet still gets llama.cpp's figures.
            let ours = ours(&bin, &kernel, model, None).unwrap_or_else(|e| {
                println!("    {e:#}");
                failed.push(name.to_string());
                Vec::new()
            });
            let theirs = match llama_bench {
                Some(lb) => {
                    step(&format!("llama-bench -t 1: {name}"));
                    theirs(lb, model, None)?
                }
                None => Vec::new(),
            };
            let mut tests: Vec<&str> = ours.iter().map(|s| s.test.as_str()).collect();
            for t in &theirs {
                if !tests.contains(&t.test.as_str()) {
                    tests.push(&t.test);
                }
            }
            let find = |v: &[Speed], t: &str| v.iter().find(|s| s.test == t).map(|s| s.ts);
            for t in tests {
                rows.push((name.to_string(), t.into(), find(&ours, t), find(&theirs, t)));
            }
        }
        step("results (tokens/s; one thread each)");
        println!(
            "| {:<20} | {:<6} | {:>10} | {:>10} | {:>6} |",
            "model", "test", "wasm-chord", "llama.cpp", "ratio"
        );
        println!(
            "| {:-<20} | {:-<6} | {:->9}: | {:->9}: | {:->5}: |",
            "", "", "", "", ""
        );
        let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        for (name, test, ours, theirs) in rows {
            let ratio = match (ours, theirs) {
                (Some(o), Some(t)) => Some(o / t),
                _ => None,
            };
            println!(
                "| {name:<20} | {test:<6} | {:>10} | {:>10} | {:>6} |",
                num(ours),
                num(theirs),
                num(ratio)
            );
        }
        if !failed.is_empty() {
            bail!("wasm-chord bench failed on {}", failed.join(", "));
        }
        Ok(())
    }
}

/// The CPU's name from /proc/cpuinfo (`model name`), where there is one.
fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .filter(|v| !v.is_empty())
}

/// Whether `taskset` (util-linux) runs here.
fn have_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Ctx {
    pub fn bench_vs_llama_cpp(&self, llama_bench: Option<&Path>, cpu: usize) -> Result<()> {
        let bin = self.build()?;
        let kernel = self.kernel_wasm();
        let llama_bench = match llama_bench {
            Some(p) => p.to_path_buf(),
            None => self.llama_bench()?,
        };
        let models = [
            ("SmolLM2-135M Q4_1", self.fetch(&SMOLLM2)?),
            ("Gemma-3-270M Q4_K_M", self.fetch(&GEMMA3)?),
        ];
        let cpu = if have_taskset() {
            Some(cpu)
        } else {
            println!("    taskset not found: the runs are not pinned to a core");
            None
        };
        let find = |v: &[Speed], t: &str| {
            v.iter()
                .find(|s| s.test == t)
                .map(|s| s.ts)
                .with_context(|| format!("no {t} result"))
        };
        let (pp, tg) = (format!("pp{N_PROMPT}"), format!("tg{N_GEN}"));
        let mut rows = Vec::new();
        for (name, model) in &models {
            step(&format!("wasm-chord bench: {name}"));
            let ours = ours(&bin, &kernel, model, cpu)?;
            step(&format!("llama-bench -t 1: {name}"));
            let theirs = theirs(&llama_bench, model, cpu)?;
            rows.push((
                *name,
                [find(&ours, &pp)?, find(&theirs, &pp)?],
                [find(&ours, &tg)?, find(&theirs, &tg)?],
            ));
        }
        step("results");
        let pinned = match cpu {
            Some(c) => format!("pinned to core {c} (`taskset -c {c}`)"),
            None => "not pinned".to_string(),
        };
        println!(
            "CPU: {}; one thread each, {pinned}; {N_PROMPT}-token prompt, {N_GEN} tokens \
             generated, {REPS} repetitions (wasm-chord: median, llama.cpp: mean).\n",
            cpu_name().unwrap_or_else(|| "unknown".into())
        );
        println!(
            "| model | prompt t/s (wasm-chord / llama.cpp) | ratio | decode t/s (wasm-chord / llama.cpp) | ratio |"
        );
        println!("| --- | ---: | ---: | ---: | ---: |");
        for (name, [po, pt], [go, gt]) in rows {
            println!(
                "| {name} | {po:.1} / {pt:.1} | **{:.2}x** | {go:.1} / {gt:.1} | **{:.2}x** |",
                po / pt,
                go / gt
            );
        }
        Ok(())
    }
}
