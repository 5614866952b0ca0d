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

/// One row of `--vs-llama-cpp`: a model, the lengths, and what else our run gets.
struct Case<'a> {
    name: String,
    model: &'a Path,
    n_prompt: u32,
    n_gen: u32,
    reps: u32,
    /// Extra `wasm-chord bench` arguments (llama.cpp gets none: it holds the model resident).
    ours_args: &'a [&'a str],
}

/// `wasm-chord bench --json`: its rows' test names and median tokens/s.
fn ours(bin: &Path, kernel: &Path, case: &Case, cpu: Option<usize>) -> Result<Vec<Speed>> {
    let v = json_of(
        command(bin, cpu)
            .arg("bench")
            .arg("-m")
            .arg(case.model)
            .args([
                "-p",
                &case.n_prompt.to_string(),
                "-n",
                &case.n_gen.to_string(),
            ])
            .args(["-r", &case.reps.to_string(), "--json"])
            .args(case.ours_args)
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
fn theirs(llama_bench: &Path, case: &Case, cpu: Option<usize>) -> Result<Vec<Speed>> {
    let v = json_of(
        command(llama_bench, cpu)
            .arg("-m")
            .arg(case.model)
            .args([
                "-t",
                "1",
                "-p",
                &case.n_prompt.to_string(),
                "-n",
                &case.n_gen.to_string(),
            ])
            .args(["-r", &case.reps.to_string(), "-o", "json"]),
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
            let case = Case {
                name: name.to_string(),
                model,
                n_prompt: N_PROMPT,
                n_gen: N_GEN,
                reps: REPS,
                ours_args: &[],
            };
            // A model the kernel cannot run yet still gets llama.cpp's figures.
            let ours = ours(&bin, &kernel, &case, None).unwrap_or_else(|e| {
                println!("    {e:#}");
                failed.push(name.to_string());
                Vec::new()
            });
            let theirs = match llama_bench {
                Some(lb) => {
                    step(&format!("llama-bench -t 1: {name}"));
                    theirs(lb, &case, None)?
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
    /// `large`: a model over 4 GiB, streamed by us through a 1 GiB guest
    /// (`--max-guest-memory 1073741824`, no other flag) against llama.cpp
    /// holding it resident.
    pub fn bench_vs_llama_cpp(
        &self,
        llama_bench: Option<&Path>,
        cpu: usize,
        large: Option<&Path>,
    ) -> Result<()> {
        if let Some(large) = large {
            if !large.is_file() {
                bail!(
                    "--large: '{}' is not a file (the 5.7 GB model: \
                     `cargo xtask large --padded` makes it)",
                    large.display()
                );
            }
        }
        let bin = self.build()?;
        let kernel = self.kernel_wasm();
        let llama_bench = match llama_bench {
            Some(p) => p.to_path_buf(),
            None => self.llama_bench()?,
        };
        let (smollm2, gemma3) = (self.fetch(&SMOLLM2)?, self.fetch(&GEMMA3)?);
        let mut cases = vec![
            Case {
                name: "SmolLM2-135M Q4_1".into(),
                model: &smollm2,
                n_prompt: N_PROMPT,
                n_gen: N_GEN,
                reps: REPS,
                ours_args: &[],
            },
            Case {
                name: "SmolLM2-135M Q4_1, 1024-token prompt".into(),
                model: &smollm2,
                n_prompt: 1024,
                n_gen: 0,
                reps: REPS,
                ours_args: &[],
            },
            Case {
                name: "Gemma-3-270M Q4_K_M".into(),
                model: &gemma3,
                n_prompt: N_PROMPT,
                n_gen: N_GEN,
                reps: REPS,
                ours_args: &[],
            },
        ];
        if let Some(large) = large {
            let gb = std::fs::metadata(large)?.len() as f64 / 1e9;
            cases.push(Case {
                name: format!(
                    "{} ({gb:.1} GB), ours streamed through a 1 GiB guest, llama.cpp resident",
                    large.file_name().unwrap_or_default().to_string_lossy()
                ),
                model: large,
                n_prompt: 32,
                n_gen: 16,
                reps: 1,
                ours_args: &["--max-guest-memory", "1073741824"],
            });
        }
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
        let mut rows = Vec::new();
        for case in &cases {
            step(&format!("wasm-chord bench: {}", case.name));
            let ours = ours(&bin, &kernel, case, cpu)?;
            step(&format!("llama-bench -t 1: {}", case.name));
            let theirs = theirs(&llama_bench, case, cpu)?;
            let (pp, tg) = (format!("pp{}", case.n_prompt), format!("tg{}", case.n_gen));
            let pair = |t: &str, n: u32| -> Result<Option<[f64; 2]>> {
                Ok(if n == 0 {
                    None
                } else {
                    Some([find(&ours, t)?, find(&theirs, t)?])
                })
            };
            rows.push((case, pair(&pp, case.n_prompt)?, pair(&tg, case.n_gen)?));
        }
        step("results");
        let pinned = match cpu {
            Some(c) => format!("pinned to core {c} (`taskset -c {c}`)"),
            None => "not pinned".to_string(),
        };
        println!(
            "CPU: {}; one thread each, {pinned}; wasm-chord: median, llama.cpp: mean of the \
             repetitions.\n",
            cpu_name().unwrap_or_else(|| "unknown".into())
        );
        println!(
            "| model | prompt t/s (wasm-chord / llama.cpp) | ratio | decode t/s (wasm-chord / llama.cpp) | ratio | runs |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | --- |");
        let cell = |v: Option<[f64; 2]>| match v {
            Some([o, t]) => (format!("{o:.2} / {t:.2}"), format!("**{:.2}x**", o / t)),
            None => ("—".to_string(), "—".to_string()),
        };
        for (case, pp, tg) in rows {
            let ((p, pr), (g, gr)) = (cell(pp), cell(tg));
            println!(
                "| {} | {p} | {pr} | {g} | {gr} | -p {} -n {} -r {} |",
                case.name, case.n_prompt, case.n_gen, case.reps
            );
        }
        Ok(())
    }
}
