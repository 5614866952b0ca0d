//! Command-line validation: these fail before the kernel is needed.

use std::process::{Command, Output};

fn wasm_chord(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasm-chord"))
        .args(args)
        .env_remove("WASM_CHORD_KERNEL")
        .output()
        .expect("run wasm-chord")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 1 and exactly one `error: ...` line.
fn assert_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn zero_tokens_is_rejected() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi", "-n", "0"]),
        "-n must be at least 1",
    );
}

#[test]
fn nan_temperature_is_rejected() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi", "--temp", "nan"]),
        "--temp",
    );
}

#[test]
fn negative_temperature_is_rejected() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi", "--temp", "-1"]),
        "--temp",
    );
}

#[test]
fn bad_top_p_is_rejected() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi", "--top-p", "1.5"]),
        "--top-p",
    );
}

#[test]
fn missing_model_is_reported_before_the_kernel() {
    assert_error(
        &wasm_chord(&["run", "-m", "x.gguf", "-p", "hi"]),
        "cannot open model 'x.gguf': No such file or directory",
    );
    assert_error(
        &wasm_chord(&["info", "-m", "x.gguf"]),
        "cannot open model 'x.gguf'",
    );
    assert_error(
        &wasm_chord(&["tokenize", "-m", "x.gguf", "hello"]),
        "cannot open model 'x.gguf'",
    );
}

#[test]
fn directory_model_is_reported() {
    let dir = std::env::temp_dir();
    let dir = dir.to_str().expect("utf8 temp dir");
    assert_error(
        &wasm_chord(&["run", "-m", dir, "-p", "hi"]),
        "is a directory, not a regular file",
    );
}

#[test]
fn missing_app_is_explained() {
    // An existing file that is not a model (run time value: see tests/src/lib.rs).
    let model = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
        + "/Cargo.toml";
    let o = wasm_chord(&["info", "-m", &model, "--app", "/nonexistent/app.wasm"]);
    assert_error(
        &o,
        "cannot read the app component '/nonexistent/app.wasm': No such file or directory",
    );
}

#[test]
fn bad_launcher_flags_exit_2() {
    let o = wasm_chord(&[
        "run",
        "-m",
        "x.gguf",
        "-p",
        "hi",
        "--max-guest-memory",
        "lots",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--max-guest-memory must be a number of bytes"));
}

/// Through the launcher a usage error exits 1: WASI 0.2's `exit` carries
/// only success or failure.
#[test]
fn usage_errors_fail() {
    for (args, code) in [
        (&["run", "-p", "hi"][..], 1),
        (&["run", "-m", "x.gguf"], 1),
        (&["bench", "-p", "1"], 1),
    ] {
        let o = wasm_chord(args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("Usage: wasm-chord"), "{}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}

/// Model paths relative to the current directory, through `..`, and
/// absolute reach the guest and the store as with any command-line tool.
#[test]
fn paths_resolve_like_a_native_tool() {
    let root = std::env::temp_dir().join(format!("wasm-chord-paths-{}", std::process::id()));
    let work = root.join("work");
    std::fs::create_dir_all(work.join("sub")).expect("dirs");
    std::fs::write(root.join("bad.gguf"), b"PK\x03\x04 not a gguf").expect("write");
    std::fs::write(work.join("sub/bad.gguf"), b"PK\x03\x04 not a gguf").expect("write");
    let abs = root.join("bad.gguf");
    for model in ["sub/bad.gguf", "../bad.gguf", abs.to_str().expect("utf8")] {
        let o = Command::new(env!("CARGO_BIN_EXE_wasm-chord"))
            .args(["info", "-m", model])
            .current_dir(&work)
            .output()
            .expect("run wasm-chord");
        // The guest found the file and the kernel read it through the store.
        assert_error(&o, "invalid model:");
    }
    for model in ["sub/none.gguf", "../none.gguf"] {
        let o = Command::new(env!("CARGO_BIN_EXE_wasm-chord"))
            .args(["info", "-m", model])
            .current_dir(&work)
            .output()
            .expect("run wasm-chord");
        assert_error(
            &o,
            &format!("cannot open model '{model}': No such file or directory"),
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn help_describes_every_flag() {
    for sub in ["run", "tokenize", "info", "bench"] {
        let o = wasm_chord(&[sub, "--help"]);
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout);
        for line in text.lines().filter(|l| l.trim_start().starts_with('-')) {
            // "  -m, --model <MODEL>  Model file (GGUF)": a description follows the flag.
            let parts: Vec<&str> = line.trim().splitn(2, "  ").collect();
            assert!(
                parts.len() == 2 && !parts[1].trim().is_empty(),
                "{sub}: undocumented flag: {line}"
            );
        }
    }
}

/// With the real kernel and SmolLM2 (set by `cargo xtask test`): JSON output.
/// WASM_CHORD_KERNEL and WASM_CHORD_SMOLLM2, which `cargo xtask test` sets.
fn kernel_and_model() -> (std::ffi::OsString, std::ffi::OsString) {
    match (
        std::env::var_os("WASM_CHORD_KERNEL"),
        std::env::var_os("WASM_CHORD_SMOLLM2"),
    ) {
        (Some(k), Some(m)) => (k, m),
        _ => panic!("set WASM_CHORD_KERNEL and WASM_CHORD_SMOLLM2 (cargo xtask test does)"),
    }
}

/// `--max-guest-memory` is also the guest's budget: a cap below the model's
/// weights makes the kernel stream them instead of trapping at the cap.
#[test]
fn guest_memory_cap_is_the_budget() {
    let (kernel, model) = kernel_and_model();
    let cap: u64 = 120_000_000;
    let o = Command::new(env!("CARGO_BIN_EXE_wasm-chord"))
        .arg("run")
        .arg("-m")
        .arg(&model)
        .args(["-p", "The capital of France is", "-n", "4", "--temp", "0"])
        .args(["--json", "--max-guest-memory", &cap.to_string()])
        .env("WASM_CHORD_KERNEL", &kernel)
        .output()
        .expect("run wasm-chord");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out.lines().last().expect("a stats line");
    let v: serde_json::Value = serde_json::from_str(last).expect("JSON");
    let stats = &v["stats"];
    let (resident, total) = (
        stats["cache"]["resident_layers"].as_u64().unwrap(),
        stats["cache"]["total_layers"].as_u64().unwrap(),
    );
    assert!(resident < total, "streamed: {stats}");
    assert!(
        stats["peak_guest_memory_bytes"].as_u64().unwrap() <= cap,
        "{stats}"
    );
}

#[test]
fn json_run_end_to_end() {
    let (kernel, model) = kernel_and_model();
    let o = Command::new(env!("CARGO_BIN_EXE_wasm-chord"))
        .arg("run")
        .arg("-m")
        .arg(&model)
        .args([
            "-p",
            "The capital of France is",
            "-n",
            "4",
            "--temp",
            "0",
            "--ignore-eos",
            "--json",
        ])
        .env("WASM_CHORD_KERNEL", &kernel)
        .output()
        .expect("run wasm-chord");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 5, "{out}");
    for l in &lines[..4] {
        assert!(l["token"].is_u64() && l["text"].is_string(), "{l}");
    }
    let stats = &lines[4]["stats"];
    assert_eq!(stats["generated_tokens"], 4);
    assert_eq!(stats["stop_reason"], "length");
    assert!(stats["peak_guest_memory_bytes"].as_u64().unwrap_or(0) > 0);

    // A malformed model: one line, exit 1.
    let bad = std::env::temp_dir().join(format!("wasm-chord-bad-{}.gguf", std::process::id()));
    std::fs::write(&bad, b"PK\x03\x04 not a gguf file, padding padding padding").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_wasm-chord"))
        .arg("info")
        .arg("-m")
        .arg(&bad)
        .env("WASM_CHORD_KERNEL", &kernel)
        .output()
        .expect("run wasm-chord");
    let _ = std::fs::remove_file(&bad);
    assert_error(&o, "invalid model:");

    // A guest that traps (here: out of memory under a 100 MB cap): one line, exit 1.
    let o = Command::new(env!("CARGO_BIN_EXE_wasm-chord"))
        .arg("run")
        .arg("-m")
        .arg(&model)
        // (a budget above the cap: the guest plans to hold every layer)
        .args(["-p", "hi", "-n", "2", "--max-guest-memory", "100000000"])
        .args(["--max-memory", "3000000000"])
        .output()
        .expect("run wasm-chord");
    assert_error(&o, "the wasm-chord component trapped: ");
    let err = stderr(&o);
    assert!(err.contains("raise --max-guest-memory"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
}

/// Ctrl-C (SIGINT) stops a running generation: one `error: interrupted`
/// line, exit code 130, the text generated so far already printed.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_generation() {
    use std::io::Read;
    let (_, model) = kernel_and_model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasm-chord"))
        .arg("run")
        .arg("-m")
        .arg(&model)
        .args(["-p", "Once upon a time", "-n", "100000", "--ignore-eos"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run wasm-chord");
    // Wait until text streams, then press Ctrl-C.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    if stdout.read_exact(&mut first).is_err() {
        let o = child.wait_with_output().expect("wait");
        panic!("no generated text; stderr: {}", stderr(&o));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let o = child.wait_with_output().expect("wait");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "stderr: {err}");
    assert_eq!(err.trim_end(), "error: interrupted");
}
