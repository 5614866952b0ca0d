//! `wasm-chord`: run GGUF language models inside a sandboxed WebAssembly kernel.
//!
//! This executable is a launcher: it runs the composed CLI component
//! (`wasm-chord-app.wasm`, see [`wasm_chord::launcher`]) with the
//! memory-mapped layer store. Every subcommand is the guest's (`guest/cli`)
//! except `serve` ([`wasm_chord::serve`]), which runs here natively.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use wasm_chord::launcher::{self, LauncherArgs};

fn main() -> ExitCode {
    // A bug must not print a panic dump: one line, like every other error.
    // (The hook's text is "panicked at FILE:LINE:COL:" and the message.)
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error: {}", one_line(&info.to_string()));
    }));
    let argv: Vec<OsString> = std::env::args_os().collect();
    let args = match LauncherArgs::parse(argv.iter().skip(1).cloned()) {
        Ok(a) => a,
        Err(e) => return fail(&e.to_string(), e.exit_code()),
    };
    // `serve` is the native host's own subcommand (an HTTP server on a pool of
    // kernel instances); everything else is the guest CLI's.
    if args.subcommand() == Some("serve") {
        let rest: Vec<String> = match args.guest.iter().position(|a| a == "serve") {
            Some(i) => args.guest[..i]
                .iter()
                .chain(&args.guest[i + 1..])
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        return exit_code(wasm_chord::serve::main(&rest, args.max_guest_memory));
    }
    // `run`, `bench` and `perplexity` with `--shards N` (N > 1) drive N
    // kernel instances natively (issue 19); with `--shards 1` they are the
    // guest's as usual.
    let mut args = args;
    if let Some(sub @ ("run" | "bench" | "perplexity")) = args.subcommand() {
        let sub = sub.to_string();
        let at = args.guest.iter().position(|a| *a == sub).unwrap_or(0);
        match wasm_chord::shard_cli::shards_flag(&args.guest[at + 1..]) {
            Err(e) => return fail(&e, 2),
            Ok(Some(n)) if n > 1 || args.guest.iter().any(|a| a == "--native") => {
                let rest: Vec<String> = args.guest[..at]
                    .iter()
                    .chain(&args.guest[at + 1..])
                    .cloned()
                    .collect();
                return exit_code(wasm_chord::shard_cli::main(
                    &sub,
                    &rest,
                    args.max_guest_memory,
                ));
            }
            Ok(Some(_)) => args.guest = wasm_chord::shard_cli::without_shards_flag(&args.guest),
            Ok(None) => {}
        }
    }
    match launcher::run(&args) {
        Ok(code) => {
            let _ = std::io::stdout().flush();
            exit_code(code)
        }
        Err(e) => fail(&e.to_string(), e.exit_code()),
    }
}

fn fail(msg: &str, code: i32) -> ExitCode {
    eprintln!("error: {}", one_line(msg));
    exit_code(code)
}

/// A guest's exit code as the process's (outside 0..=255: failure).
fn exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}

/// Errors are printed on one line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(" ")
}
