//! Shared helpers of the cross-host tests in `tests/tests/`.
//!
//! The tests run the real product: the `wasm-chord` binary hosting the kernel
//! component in wasmtime. `cargo xtask test` builds both, fetches the
//! reference model and sets the environment variables read here.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path in environment variable `var` (set by `cargo xtask test`).
pub fn env_path(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => panic!("{var} is not set: run the tests with `cargo xtask test`, which builds the kernel, fetches the models and sets it"),
    }
}

/// The `wasm-chord` binary.
pub fn bin() -> PathBuf {
    env_path("WASM_CHORD_BIN")
}

/// The kernel component.
pub fn kernel() -> PathBuf {
    env_path("WASM_CHORD_KERNEL")
}

/// SmolLM2-135M-Instruct Q4_1.
pub fn smollm2() -> PathBuf {
    env_path("WASM_CHORD_SMOLLM2")
}

/// SmolLM2-135M-Instruct requantized by llama.cpp into each tested type:
/// `smollm2-TYPE.gguf` (`cargo xtask fetch variants`).
pub fn variants_dir() -> PathBuf {
    env_path("WASM_CHORD_VARIANTS_DIR")
}

/// llama.cpp's tokenizer test files `ggml-vocab-NAME.gguf` (+ `.inp`, `.out`).
pub fn vocab_dir() -> PathBuf {
    env_path("WASM_CHORD_VOCAB_DIR")
}

/// Gemma-3-270M Q4_K_M (gemma3 architecture, SentencePiece vocabulary).
pub fn gemma3() -> PathBuf {
    env_path("WASM_CHORD_GEMMA3")
}

/// `wasmtime run --dir D... wasm-chord-cli.wasm ARGS`: the composed CLI under
/// stock wasmtime (`WASMTIME_BIN`, `WASM_CHORD_CLI_WASM`), with wasmtime's
/// compilation cache so every run after the first starts fast.
pub fn wasmtime_run<S: AsRef<std::ffi::OsStr>>(dirs: &[&Path], args: &[S]) -> Output {
    wasmtime_command(dirs, args)
        .output()
        .expect("spawn wasmtime")
}

/// The command [`wasmtime_run`] runs.
pub fn wasmtime_command<S: AsRef<std::ffi::OsStr>>(dirs: &[&Path], args: &[S]) -> Command {
    let mut cmd = Command::new(env_path("WASMTIME_BIN"));
    cmd.args(["run", "-C", "cache=y"]);
    for d in dirs {
        cmd.arg("--dir").arg(d);
    }
    cmd.arg(env_path("WASM_CHORD_CLI_WASM")).args(args);
    cmd
}

/// Run `cmd` with `input` on its stdin (then closed); returns the output.
pub fn output_with_stdin(mut cmd: Command, input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // From a thread: the child may write more than a pipe holds before it has read all.
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait for the child");
    // A child that exits before reading everything closes the pipe: not an
    // error here (the caller checks the output).
    let _ = writer.join().expect("stdin writer");
    out
}

/// The Node launcher, `node host-js/bin/wasm-chord.mjs ARGS`: the composed CLI
/// transpiled by jco (`cd host-js && npm ci && npm run build` first; `cargo
/// xtask test` does). Node is `node` on PATH unless `WASM_CHORD_NODE` names it.
pub fn node_run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let node = std::env::var_os("WASM_CHORD_NODE").unwrap_or_else(|| "node".into());
    let launcher = fixtures().join("../../host-js/bin/wasm-chord.mjs");
    Command::new(&node)
        .arg(&launcher)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} {}: {e}",
                node.to_string_lossy(),
                launcher.display()
            )
        })
}

/// The project's fixtures folder. (`cargo test` sets CARGO_MANIFEST_DIR at
/// run time; it wins over the compile-time value, which belongs to whichever
/// checkout built this binary first when checkouts share a target dir.)
pub fn fixtures() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("fixtures")
}

/// Run `wasm-chord ARGS` with the kernel set; returns the output.
pub fn run_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    cli_command(args).output().expect("spawn wasm-chord")
}

/// The command [`run_cli`] runs.
pub fn cli_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("WASM_CHORD_KERNEL", kernel());
    cmd
}

/// One case of a golden file (llama.cpp's outputs).
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub id: String,
    pub prompt: String,
    #[serde(default)]
    pub messages: Option<serde_json::Value>,
    pub prompt_tokens: Vec<u32>,
    pub greedy_tokens: Vec<u32>,
    pub greedy_text: String,
    pub top5_logprobs: Vec<Option<Vec<(u32, f64)>>>,
}

/// A golden file.
#[derive(Debug, Deserialize)]
pub struct Golden {
    pub model: String,
    pub n_predict: usize,
    #[serde(default)]
    pub near_tie: Option<f64>,
    pub cases: Vec<GoldenCase>,
}

impl Golden {
    pub fn load(name: &str) -> Golden {
        let path = fixtures().join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn near_tie(&self) -> f64 {
        self.near_tie.unwrap_or(0.75)
    }
}

/// The fixture rule (fixtures/README.md): greedy tokens equal llama.cpp's
/// until the first difference; there, ours must be one that llama.cpp's top-5
/// rates within `near_tie` of its choice (or the step has no top-5). Returns
/// the index of the first difference, if any.
pub fn check_greedy(
    case: &GoldenCase,
    ours: &[u32],
    near_tie: f64,
) -> Result<Option<usize>, String> {
    let n = case.greedy_tokens.len();
    if ours.len() < n {
        return Err(format!(
            "{}: generated {} tokens, expected {n}",
            case.id,
            ours.len()
        ));
    }
    for (i, (&got, &want)) in ours.iter().zip(&case.greedy_tokens).enumerate() {
        if got == want {
            continue;
        }
        let Some(top5) = &case.top5_logprobs[i] else {
            return Ok(Some(i)); // parting at a null step passes
        };
        let lp = |t: u32| top5.iter().find(|e| e.0 == t).map(|e| e.1);
        let chosen = lp(want).ok_or_else(|| {
            format!(
                "{}: step {i}: llama.cpp's token {want} missing from its top-5",
                case.id
            )
        })?;
        return match lp(got) {
            Some(l) if chosen - l <= near_tie => Ok(Some(i)),
            Some(l) => Err(format!(
                "{}: step {i}: we chose {} (llama.cpp logprob {l:.3}), llama.cpp chose {want} ({chosen:.3}): gap {:.3} > {near_tie}",
                case.id,
                got,
                chosen - l
            )),
            None => Err(format!(
                "{}: step {i}: we chose {}, not in llama.cpp's top-5 {:?} (it chose {want})",
                case.id, got, top5
            )),
        };
    }
    Ok(None)
}

/// Parse `--json` output of `wasm-chord run`: the token ids and the stats line.
pub fn parse_run_json(stdout: &[u8]) -> (Vec<u32>, String, serde_json::Value) {
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut stats = serde_json::Value::Null;
    for line in String::from_utf8_lossy(stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        if let Some(s) = v.get("stats") {
            stats = s.clone();
        } else {
            tokens.push(v["token"].as_u64().expect("token") as u32);
            text.push_str(v["text"].as_str().expect("text"));
        }
    }
    (tokens, text, stats)
}

/// A command's exit code, stdout and stderr, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Assert that a failed command printed one clean error line.
pub fn assert_clean_error(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "{what}: expected failure, got success; stderr: {stderr}"
    );
    assert!(
        stderr.starts_with("error: "),
        "{what}: stderr should start with 'error: ': {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: expected one line: {stderr:?}"
    );
    // Nothing from a file may reach the terminal as a control sequence.
    assert!(
        !stderr.trim_end_matches('\n').chars().any(char::is_control),
        "{what}: stderr holds control characters: {stderr:?}"
    );
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "wasm backtrace",
        "wasm trap",
        "stack backtrace",
    ] {
        assert!(
            !stderr.contains(bad),
            "{what}: stderr contains {bad:?}: {stderr}"
        );
    }
    stderr
}

/// A fresh temporary folder for one test (`name` should be unique per test).
pub fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasm-chord-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// Teacher-forced scoring against a golden file (see [`teacher_forced`]).
#[derive(Debug, Clone)]
pub struct TeacherForced {
    /// Scored steps (every generated token of every case).
    pub steps: usize,
    /// Steps where our top-1 is llama.cpp's greedy token.
    pub same_top1: usize,
    /// |our logprob - llama.cpp's| over llama.cpp's top-5 entries, sorted.
    pub diffs: Vec<f64>,
    /// Where the largest difference is.
    pub worst: String,
    /// llama.cpp top-5 entries missing from our top-50 (each a failure).
    pub missing: Vec<String>,
}

impl TeacherForced {
    /// Percentage of steps whose top-1 is llama.cpp's greedy token.
    pub fn top1_percent(&self) -> f64 {
        100.0 * self.same_top1 as f64 / self.steps.max(1) as f64
    }

    pub fn median(&self) -> f64 {
        self.diffs
            .get(self.diffs.len() / 2)
            .copied()
            .unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.diffs.last().copied().unwrap_or(f64::NAN)
    }

    /// The acceptance rule: top-1 agreement >= `min_top1` percent, median and
    /// max |Δ logprob| within bounds, no llama.cpp top-5 entry missing from our top-50.
    pub fn check(&self, min_top1: f64, max_median: f64, max_max: f64) -> Result<(), String> {
        let mut bad = Vec::new();
        if self.steps == 0 || self.diffs.is_empty() {
            bad.push("nothing was compared".to_string());
        }
        let pct = self.top1_percent();
        if pct.is_nan() || pct < min_top1 {
            bad.push(format!("top-1 agreement {pct:.1}% < {min_top1}%"));
        }
        let median = self.median();
        if median.is_nan() || median > max_median {
            bad.push(format!("median |Δ logprob| {median:.4} > {max_median}"));
        }
        let max = self.max();
        if max.is_nan() || max > max_max {
            bad.push(format!(
                "max |Δ logprob| {max:.4} > {max_max} ({})",
                self.worst
            ));
        }
        if let Some(first) = self.missing.first() {
            bad.push(format!(
                "{} llama.cpp top-5 entries not in our top-50, first: {first}",
                self.missing.len()
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }

    /// The default rule: >= 90% top-1, median <= 0.15, max <= 1.0.
    pub fn check_default(&self) -> Result<(), String> {
        self.check(90.0, 0.15, 1.0)
    }
}

impl std::fmt::Display for TeacherForced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "teacher-forced: top-1 = llama.cpp's greedy at {}/{} ({:.1}%); |logprob - llama.cpp's| over {} top-5 entries: median {:.4}, max {:.4} ({})",
            self.same_top1,
            self.steps,
            self.top1_percent(),
            self.diffs.len(),
            self.median(),
            self.max(),
            self.worst
        )?;
        if !self.missing.is_empty() {
            write!(
                f,
                "; {} entries missing from our top-50",
                self.missing.len()
            )?;
        }
        Ok(())
    }
}

/// A tag of extra CLI arguments for a scratch directory's name: runs of
/// the same model with other arguments get a directory of their own
/// (tests run in parallel).
fn arg_tag(extra: &[&str]) -> String {
    extra
        .iter()
        .map(|a| format!("-{}", a.trim_start_matches('-')))
        .collect()
}

/// Score each case's prompt + llama.cpp's greedy tokens teacher-forced with
/// `wasm-chord perplexity -m MODEL --tokens F --json --top-k 50` and compare
/// every step with the golden file: is our top-1 llama.cpp's greedy token, and
/// how far are our log-probabilities of llama.cpp's top-5 from its own.
/// Panics when the CLI fails or prints something malformed.
pub fn teacher_forced(model: &Path, golden: &Golden) -> TeacherForced {
    teacher_forced_ctx(model, golden, None)
}

/// [`teacher_forced`] in a session of `n_ctx` positions (`--n-ctx`; None:
/// the sequence's length), for models whose function depends on the
/// context size as llama.cpp's does (LongRoPE).
pub fn teacher_forced_ctx(model: &Path, golden: &Golden, n_ctx: Option<u32>) -> TeacherForced {
    teacher_forced_with(model, golden, n_ctx, &[])
}

/// [`teacher_forced_ctx`] with `extra` arguments for `wasm-chord perplexity`
/// (e.g. `--shards 2`).
pub fn teacher_forced_with(
    model: &Path,
    golden: &Golden,
    n_ctx: Option<u32>,
    extra: &[&str],
) -> TeacherForced {
    let stem = model.file_stem().unwrap_or_default().to_string_lossy();
    let ctx_tag = n_ctx.map_or(String::new(), |n| format!("-ctx{n}"));
    let extra_tag = arg_tag(extra);
    let dir = tmp_dir(&format!("teacher-{stem}{ctx_tag}{extra_tag}"));
    let mut r = TeacherForced {
        steps: 0,
        same_top1: 0,
        diffs: Vec::new(),
        worst: String::new(),
        missing: Vec::new(),
    };
    let mut worst = 0.0f64;
    for case in &golden.cases {
        let mut seq = case.prompt_tokens.clone();
        seq.extend(&case.greedy_tokens);
        let f = dir.join(format!("{}.json", case.id));
        std::fs::write(&f, serde_json::to_vec(&seq).unwrap()).unwrap();
        let mut args: Vec<std::ffi::OsString> = vec![
            "perplexity".into(),
            "-m".into(),
            model.into(),
            "--tokens".into(),
            f.clone().into(),
            "--json".into(),
            "--top-k".into(),
            "50".into(),
        ];
        if let Some(n) = n_ctx {
            args.extend(["--n-ctx".into(), n.to_string().into()]);
        }
        args.extend(extra.iter().map(Into::into));
        let out = run_cli(&args);
        assert!(
            out.status.success(),
            "{}: wasm-chord perplexity failed: {}",
            case.id,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        let (summary, scored) = lines.split_last().expect("perplexity printed nothing");
        assert_eq!(summary["n_tokens"].as_u64(), Some(seq.len() as u64 - 1));
        assert!(summary["perplexity"].as_f64().unwrap() > 1.0);
        assert_eq!(scored.len(), seq.len() - 1, "{}", case.id);
        let n_prompt = case.prompt_tokens.len();
        for (step, &want) in case.greedy_tokens.iter().enumerate() {
            let s = &scored[n_prompt + step - 1];
            let pos = n_prompt + step;
            assert_eq!(s["pos"].as_u64(), Some(pos as u64));
            assert_eq!(s["token"].as_u64(), Some(u64::from(want)));
            let top: Vec<(u32, f64)> = serde_json::from_value(s["top"].clone()).unwrap();
            assert_eq!(top.len(), 50);
            r.steps += 1;
            if top[0].0 == want {
                r.same_top1 += 1;
            }
            let Some(theirs) = &case.top5_logprobs[step] else {
                continue;
            };
            for &(tok, lp) in theirs {
                let ours = if tok == want {
                    s["logprob"].as_f64()
                } else {
                    top.iter().find(|e| e.0 == tok).map(|e| e.1)
                };
                let Some(ours) = ours else {
                    r.missing
                        .push(format!("{} step {step} token {tok} ({lp:.4})", case.id));
                    continue;
                };
                let d = (ours - lp).abs();
                if d > worst {
                    worst = d;
                    r.worst = format!(
                        "{} step {step} token {tok}: ours {ours:.4}, llama.cpp {lp:.4}",
                        case.id
                    );
                }
                r.diffs.push(d);
            }
        }
    }
    r.diffs.sort_by(f64::total_cmp);
    r
}

/// Free-running greedy decoding against a golden file (see [`greedy_parity`]).
#[derive(Debug, Clone, Default)]
pub struct GreedyParity {
    pub cases: usize,
    /// Cases token-for-token equal to llama.cpp's.
    pub exact: usize,
    /// (case, step) where we parted from llama.cpp at a near tie.
    pub parted: Vec<(String, usize)>,
    /// Failures of the fixture rule, one line each.
    pub failures: Vec<String>,
}

impl std::fmt::Display for GreedyParity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "greedy: {}/{} cases token-for-token equal to llama.cpp",
            self.exact, self.cases
        )?;
        if !self.parted.is_empty() {
            let p: Vec<String> = self
                .parted
                .iter()
                .map(|(id, i)| format!("{id}@{i}"))
                .collect();
            write!(f, "; parted at near ties: {}", p.join(", "))?;
        }
        if !self.failures.is_empty() {
            write!(f, "; {} failed", self.failures.len())?;
        }
        Ok(())
    }
}

/// Run every case of `golden` with `wasm-chord run --temp 0 --ignore-eos
/// --json` on `model` and apply the fixture rule ([`check_greedy`]); the
/// prompt must tokenize to the golden's token count, and equal tokens must
/// give equal text. Panics when the CLI fails.
pub fn greedy_parity(model: &Path, golden: &Golden) -> GreedyParity {
    greedy_parity_ctx(model, golden, None)
}

/// [`greedy_parity`] in a session of `n_ctx` positions (`--n-ctx`; None:
/// the CLI's default).
pub fn greedy_parity_ctx(model: &Path, golden: &Golden, n_ctx: Option<u32>) -> GreedyParity {
    greedy_parity_with(model, golden, n_ctx, &[])
}

/// [`greedy_parity_ctx`] with `extra` arguments to `wasm-chord run`.
pub fn greedy_parity_with(
    model: &Path,
    golden: &Golden,
    n_ctx: Option<u32>,
    extra: &[&str],
) -> GreedyParity {
    let stem = model.file_stem().unwrap_or_default().to_string_lossy();
    let ctx_tag = n_ctx.map_or(String::new(), |n| format!("-ctx{n}"));
    let extra_tag = arg_tag(extra);
    let dir = tmp_dir(&format!("greedy-{stem}{ctx_tag}{extra_tag}"));
    let mut r = GreedyParity {
        cases: golden.cases.len(),
        ..Default::default()
    };
    for case in &golden.cases {
        let mut args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "-m".into(),
            model.into(),
            "-n".into(),
            golden.n_predict.to_string().into(),
        ];
        args.extend(["--temp", "0", "--ignore-eos", "--json"].map(Into::into));
        args.extend(extra.iter().map(Into::into));
        if let Some(n) = n_ctx {
            args.extend(["--n-ctx".into(), n.to_string().into()]);
        }
        if let Some(messages) = &case.messages {
            let f = dir.join(format!("{}.json", case.id));
            std::fs::write(&f, serde_json::to_vec(messages).unwrap()).unwrap();
            args.extend(["--messages".into(), f.into()]);
        } else {
            args.extend(["-p".into(), case.prompt.clone().into()]);
        }
        let out = run_cli(&args);
        assert!(
            out.status.success(),
            "{}: wasm-chord run failed: {}",
            case.id,
            String::from_utf8_lossy(&out.stderr)
        );
        let (tokens, text, stats) = parse_run_json(&out.stdout);
        if stats["prompt_tokens"].as_u64() != Some(case.prompt_tokens.len() as u64) {
            r.failures.push(format!(
                "{}: {} prompt tokens, llama.cpp {}",
                case.id,
                stats["prompt_tokens"],
                case.prompt_tokens.len()
            ));
            continue;
        }
        match check_greedy(case, &tokens, golden.near_tie()) {
            Ok(None) if text != case.greedy_text => r.failures.push(format!(
                "{}: same tokens, other text: {text:?} vs {:?}",
                case.id, case.greedy_text
            )),
            Ok(None) => r.exact += 1,
            Ok(Some(i)) => r.parted.push((case.id.clone(), i)),
            Err(e) => r.failures.push(format!("{e}; ours: {tokens:?} {text:?}")),
        }
    }
    r
}
