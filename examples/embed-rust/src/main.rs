//! Embed the wasm-chord kernel: serve a GGUF model from an in-memory buffer and
//! stream a greedy continuation. Usage: `embed-rust KERNEL.wasm MODEL.gguf [PROMPT]`.

use std::io::Write;
use std::ops::ControlFlow;

use wasm_chord::{
    GenerateOptions, Kernel, KernelOptions, LoadOptions, MemStore, Runtime, Sampling,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(kernel), Some(model)) = (args.next(), args.next()) else {
        return Err("usage: embed-rust KERNEL.wasm MODEL.gguf [PROMPT]".into());
    };
    let prompt = args
        .next()
        .unwrap_or_else(|| "The capital of France is".into());

    // The kernel never sees a file: it asks the store for byte ranges of "model".
    let store = MemStore::new().with_enabled(false);
    store.insert("model", std::fs::read(&model)?);
    let kernel = Kernel::from_file(&kernel, &KernelOptions::default())?;
    let mut rt = Runtime::new(&kernel, store)?;
    let m = rt.load(&LoadOptions::new("model"))?;

    let ids = rt.tokenize(m, &prompt, true, true)?;
    let session = rt.new_session(m, 0)?;
    let options = GenerateOptions {
        max_tokens: 24,
        sampling: Sampling {
            temperature: 0.0, // greedy
            ..Sampling::default()
        },
        ..GenerateOptions::default()
    };
    print!("{prompt}");
    rt.generate(session, &ids, &options, |piece| {
        print!("{}", piece.text);
        let _ = std::io::stdout().flush();
        ControlFlow::Continue(())
    })?;
    println!();
    Ok(())
}
