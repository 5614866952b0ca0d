//! GGUF parse + model load from an in-memory file, then the model used as a
//! host would (template, tokenize, a few tokens through the forward pass).
//!
//! Input: one byte of options (bit 0: streamed load under a small budget),
//! then the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_chord_kernel::gguf::GgufFile;
use wasm_chord_kernel::store::MemSource;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    let src = MemSource::new(file.to_vec());
    if let Ok(g) = GgufFile::parse(&src) {
        // Every tensor the parser accepts lies inside the file.
        for t in &g.tensors {
            let r = t.range();
            assert!(
                r.offset
                    .checked_add(r.len)
                    .is_some_and(|e| e <= file.len() as u64),
                "tensor {} ({}+{}) lies outside a {}-byte file",
                t.name,
                r.offset,
                r.len,
                file.len()
            );
        }
    }
    // The seed at the end of the file picks the tokens evaluated.
    let tail = &file[file.len().saturating_sub(2)..];
    wasm_chord_fuzz::load_and_use(Box::new(src), selector, tail);
});
