//! A KL-divergence base file (`--kl-divergence-base`, llama.cpp's format)
//! read by the kernel's reader: header, tokens, every chunk, and the
//! statistics over each stored row.
//!
//! Input: the file. Its size is given as the input's length, or (when the
//! input's last byte is odd) as a larger claimed size, as a store whose
//! size and content disagree would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_chord_kernel::eval::kld::{row_words, Reader};
use wasm_chord_kernel::eval::kld_stats::KldStats;
use wasm_chord_kernel::eval::perplexity::rows_per_chunk;

fuzz_target!(|data: &[u8]| {
    let claimed = match data.last() {
        Some(b) if b & 1 == 1 => data.len() as u64 + u64::from(*b) * 4096,
        _ => data.len() as u64,
    };
    let Ok(mut reader) = Reader::new(data, claimed) else {
        return;
    };
    let h = reader.header.clone();
    assert!(h.tokens.iter().all(|&t| (t as usize) < h.n_vocab));
    let words = row_words(h.n_vocab);
    let rows = rows_per_chunk(h.n_ctx);
    // A flat distribution as the "current model": every stored row scored
    // against it, as `kl-divergence` does.
    let lp = vec![-(h.n_vocab as f32).ln(); h.n_vocab];
    let mut stats = KldStats::default();
    for c in 0..h.n_chunk {
        let Ok(chunk) = reader.next_chunk() else {
            return;
        };
        assert_eq!(chunk.len(), rows * words, "chunk {c} has the wrong length");
        for (r, row) in chunk.chunks_exact(words).enumerate() {
            let tok = h.tokens[(c * h.n_ctx + h.n_ctx - rows + r) % h.tokens.len()];
            stats.add(&lp, row, tok as usize);
        }
    }
    assert!(reader.next_chunk().is_err(), "a chunk past n_chunk");
    let s = stats.summary();
    let _ = stats.report(&s);
});
