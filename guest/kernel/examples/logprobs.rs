//! Native debug harness: teacher-forced log-probabilities of a token list.
//!
//! ```text
//! cargo run -p wasm-chord-kernel --release --example logprobs -- MODEL.gguf TOKENS [--top K] [--dump FILE]
//! ```
//! TOKENS is a JSON file holding an array of token ids, or ids separated by
//! commas. Prints one JSON line per scored position (the log-probability of
//! token i given tokens ..i, and the top K), like `wasm-chord perplexity
//! --tokens F --json`; `--dump FILE` also writes every position's raw logits
//! (little-endian f32), to compare two builds bit for bit.

use std::io::Write;
use wasm_chord_kernel::model::{LoadOptions, Model, Session};
use wasm_chord_kernel::sample::log_softmax;
use wasm_chord_kernel::store::MemSource;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model), Some(tokens)) = (args.first(), args.get(1)) else {
        return Err("usage: logprobs MODEL.gguf TOKENS [--top K] [--dump FILE]".into());
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let top_k: usize = flag("--top").map_or(Ok(5), |s| s.parse())?;
    let tokens: Vec<u32> = if std::path::Path::new(tokens).is_file() {
        serde_json::from_str(&std::fs::read_to_string(tokens)?)?
    } else {
        tokens
            .split(',')
            .map(|t| t.trim().parse())
            .collect::<Result<_, _>>()?
    };
    let m = Model::load(
        Box::new(MemSource::new(std::fs::read(model)?)),
        &LoadOptions::default(),
    )?;
    let mut s = Session::new(&m, tokens.len() as u32 + 1)?;
    let mut dump = Vec::new();
    let mut lp = vec![0f32; m.cfg.n_vocab];
    let mut out = std::io::stdout().lock();
    let mut err = None;
    s.eval(&m, &tokens[..tokens.len() - 1], 0, &mut |i, logits| {
        dump.extend(logits.iter().flat_map(|x| x.to_le_bytes()));
        log_softmax(logits, &mut lp);
        let next = tokens[i + 1];
        let top = wasm_chord_kernel::model::session::top_of(&lp, top_k);
        let line = serde_json::json!({
            "pos": i + 1, "token": next, "logprob": lp[next as usize], "top": top,
        });
        if let Err(e) = writeln!(out, "{line}") {
            err = Some(e);
        }
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    if let Some(path) = flag("--dump") {
        std::fs::write(path, dump)?;
    }
    Ok(())
}
