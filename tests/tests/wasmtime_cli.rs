//! The composed command component (`wasm-chord-cli.wasm`) in the stock
//! `wasmtime` CLI: same tokens as the native host, the golden rule, a WIT
//! that imports only WASI, and clean one-line errors.
//!
//! `cargo xtask test` sets WASMTIME_BIN, WASM_TOOLS_BIN and WASM_CHORD_CLI_WASM.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use wasm_chord_tests::*;

/// A scratch directory for this test process (preopened for messages files).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasm-chord-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn models_dir() -> PathBuf {
    smollm2().parent().unwrap().to_path_buf()
}

fn wit_of(wasm: &Path) -> String {
    let out = Command::new(env_path("WASM_TOOLS_BIN"))
        .args(["component", "wit"])
        .arg(wasm)
        .output()
        .expect("spawn wasm-tools");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The world of a component: its `import ...;` and `export ...;` lines.
fn world_lines(wit: &str) -> Vec<String> {
    wit.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("import ") || l.starts_with("export "))
        .map(str::to_string)
        .collect()
}

#[test]
fn command_component_imports_only_wasi() {
    let lines = world_lines(&wit_of(&env_path("WASM_CHORD_CLI_WASM")));
    assert!(
        lines.iter().any(|l| l == "export wasi:cli/run@0.2.0;"),
        "{lines:?}"
    );
    for l in &lines {
        assert!(
            l.starts_with("import wasi:") || l.starts_with("export wasi:cli/run@"),
            "the command component must import only WASI: {l}"
        );
    }
}

#[test]
fn kernel_imports_layer_store_and_exports_inference() {
    let lines = world_lines(&wit_of(&kernel()));
    assert!(
        lines
            .iter()
            .any(|l| l == "import wasm-chord:runtime/layer-store@0.1.0;"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "export wasm-chord:runtime/inference@0.1.0;"),
        "{lines:?}"
    );
}

#[test]
fn stock_wasmtime_greedy_matches_golden_and_native() {
    let golden = Golden::load("smollm2-135m-instruct-q4_1.golden.json");
    let model = smollm2();
    let models = models_dir();
    let dir = scratch("wasmtime-golden");
    for case in &golden.cases {
        let mut args: Vec<OsString> = vec!["run".into(), "-m".into(), model.clone().into()];
        args.extend(["-n", "32", "--temp", "0", "--ignore-eos", "--json"].map(Into::into));
        if let Some(messages) = &case.messages {
            let f = dir.join(format!("{}.json", case.id));
            std::fs::write(&f, serde_json::to_vec(messages).unwrap()).unwrap();
            args.extend(["--messages".into(), f.into()]);
        } else {
            args.extend(["-p".into(), case.prompt.clone().into()]);
        }
        let wasi = wasmtime_run(&[&models, &dir], &args);
        assert!(
            wasi.status.success(),
            "{}: wasmtime: {}",
            case.id,
            String::from_utf8_lossy(&wasi.stderr)
        );
        let native = run_cli(&args);
        assert!(
            native.status.success(),
            "{}: native: {}",
            case.id,
            String::from_utf8_lossy(&native.stderr)
        );
        let (tokens, text, stats) = parse_run_json(&wasi.stdout);
        let (native_tokens, native_text, _) = parse_run_json(&native.stdout);
        assert_eq!(tokens.len(), 32, "{}: generated tokens", case.id);
        assert_eq!(
            stats["prompt_tokens"].as_u64(),
            Some(case.prompt_tokens.len() as u64),
            "{}: prompt tokens",
            case.id
        );
        assert_eq!(stats["generated_tokens"].as_u64(), Some(32), "{}", case.id);
        assert_eq!(
            tokens, native_tokens,
            "{}: stock wasmtime and the native host differ",
            case.id
        );
        assert_eq!(text, native_text, "{}", case.id);
        if let Err(e) = check_greedy(case, &tokens, golden.near_tie()) {
            panic!("{e}\nours: {tokens:?}\ntext: {text:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stock_wasmtime_tokenize_and_info_match_native() {
    let golden = Golden::load("smollm2-135m-instruct-q4_1.golden.json");
    let model = smollm2();
    let models = models_dir();
    for case in golden.cases.iter().filter(|c| c.messages.is_none()) {
        let args: Vec<OsString> = vec![
            "tokenize".into(),
            "-m".into(),
            model.clone().into(),
            case.prompt.clone().into(),
        ];
        let out = wasmtime_run(&[&models], &args);
        assert!(
            out.status.success(),
            "{}: {}",
            case.id,
            String::from_utf8_lossy(&out.stderr)
        );
        let ids: Vec<u32> = serde_json::from_slice(&out.stdout).expect("JSON array");
        assert_eq!(ids, case.prompt_tokens, "case {}", case.id);
    }
    let args: Vec<OsString> = vec!["info".into(), "-m".into(), model.into(), "--json".into()];
    let wasi = wasmtime_run(&[&models], &args);
    assert!(
        wasi.status.success(),
        "{}",
        String::from_utf8_lossy(&wasi.stderr)
    );
    let native = run_cli(&args);
    assert!(native.status.success());
    let a: serde_json::Value = serde_json::from_slice(&wasi.stdout).expect("JSON");
    let b: serde_json::Value = serde_json::from_slice(&native.stdout).expect("JSON");
    assert_eq!(a, b, "info --json differs from the native host's");
    assert_eq!(a["architecture"], "llama");
}

#[test]
fn stock_wasmtime_errors_are_one_clean_line() {
    let models = models_dir();
    let outside = fixtures().join("smollm2-135m-instruct-q4_1.golden.json");
    assert!(outside.is_file());
    let missing = models.join("no-such-model.gguf");
    let cases: [(&str, &Path, &str); 3] = [
        ("outside the preopened dir", &outside, "cannot open model"),
        ("missing file", &missing, "No such file or directory"),
        ("directory", &models, "is a directory"),
    ];
    for (what, path, expect) in cases {
        let out = wasmtime_run(
            &[&models],
            &[
                "run".as_ref(),
                "-m".as_ref(),
                path.as_os_str(),
                "-p".as_ref(),
                "Hello".as_ref(),
            ],
        );
        let stderr = assert_clean_error(&out, what);
        assert_eq!(out.status.code(), Some(1), "{what}: exit code");
        assert!(stderr.contains(expect), "{what}: {stderr:?}");
        assert!(out.stdout.is_empty(), "{what}: stdout not empty");
    }
}

/// `info` on a model with a tensor type the kernel cannot compute with
/// (SmolLM2 with one norm retyped from F32 to I32, the same size): both CLIs
/// print what the header says, naming every type and the unsupported one,
/// then fail with one clean line.
#[test]
fn info_names_unsupported_tensor_types() {
    let dir = scratch("unsupported-type");
    let mut bytes = std::fs::read(smollm2()).unwrap();
    let name = b"blk.0.attn_norm.weight";
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name);
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("tensor entry");
    // The entry: name, n_dims (u32), the dims (u64 each), the type (u32).
    let dims_at = at + key.len();
    assert_eq!(bytes[dims_at..dims_at + 4], 1u32.to_le_bytes());
    let ty_at = dims_at + 4 + 8;
    assert_eq!(bytes[ty_at..ty_at + 4], 0u32.to_le_bytes(), "F32");
    bytes[ty_at..ty_at + 4].copy_from_slice(&26u32.to_le_bytes());
    let path = dir.join("smol-i32.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let args: Vec<OsString> = vec!["info".into(), "-m".into(), path.clone().into()];
    let native = run_cli(&args);
    let wasi = wasmtime_run(&[&dir], &args);
    for (host, out) in [("native", &native), ("wasmtime", &wasi)] {
        let err = assert_clean_error(out, host);
        assert!(
            err.contains("blk.0.attn_norm.weight has type I32"),
            "{host}: {err}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("architecture: llama\n"),
            "{host}: {stdout}"
        );
        assert!(
            stdout.contains(
                "\ntensor types: F32 x 60, Q4_1 x 210, Q8_0 x 1 (unsupported: I32 x 1)\n"
            ),
            "{host}: {stdout}"
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&native.stdout),
        String::from_utf8_lossy(&wasi.stdout)
    );
    // A loadable model: every type is supported.
    let model = smollm2();
    let ok = run_cli(&["info", "-m", model.to_str().unwrap()]);
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout)
        .contains("\ntensor types: F32 x 61, Q4_1 x 210, Q8_0 x 1\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}
