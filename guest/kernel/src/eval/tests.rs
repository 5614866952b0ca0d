//! Unit tests of the scoring module.

use super::kld::{self, Header, Reader, Writer};
use super::kld_stats::{median, percentile, KldStats};
use super::perplexity::{Chunking, Nll};
use super::EvalError;
use crate::sample::log_softmax;

fn lsm(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    log_softmax(x, &mut out);
    out
}

fn header_bytes(n_ctx: i32, n_vocab: i32, n_chunk: i32) -> Vec<u8> {
    let mut b = kld::MAGIC.to_vec();
    for v in [n_ctx, n_vocab, n_chunk] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn open(bytes: &[u8]) -> Result<Reader<&[u8]>, EvalError> {
    Reader::new(bytes, bytes.len() as u64)
}

#[test]
fn chunking_scores_the_second_half() {
    let c = Chunking::new(1000, 128).unwrap();
    assert_eq!((c.n_chunk, c.first(), c.scored_per_chunk()), (7, 65, 63));
    assert_eq!(c.n_evaluated(), 896);
    let tokens: Vec<u32> = (0..1000).collect();
    let ch = c.chunk(&tokens, 2, Some(1));
    assert_eq!((ch[0], ch[1], ch.len()), (1, 257, 128));
    assert_eq!(c.chunk(&tokens, 2, None)[0], 256);
    assert_eq!(
        Chunking::new(100, 128),
        Err(EvalError::TooFewTokens {
            n_tokens: 100,
            n_ctx: 128
        })
    );
    assert_eq!(Chunking::new(100, 3), Err(EvalError::ContextTooSmall(3)));
}

#[test]
fn nll_matches_llama_perplexity() {
    let mut n = Nll::default();
    assert_eq!(n.uncertainty(), None);
    for lp in [-1.0f32, -2.0, -3.0] {
        n.add(lp);
    }
    assert!((n.ppl() - 2f64.exp()).abs() < 1e-9);
    // var = 14/3 - 4 = 2/3, unc = sqrt(var / 2) * e^2
    let u = n.uncertainty().unwrap();
    assert!((u - (1.0f64 / 3.0).sqrt() * 2f64.exp()).abs() < 1e-9);
    assert_eq!(
        n.final_estimate(),
        format!("Final estimate: PPL = {:.4} +/- {:.5}", n.ppl(), u)
    );
}

#[test]
fn quantized_row_round_trips() {
    let row = lsm(&[1.0, 3.0, -2.0, 0.5, -30.0]);
    let mut w = vec![0u16; kld::row_words(row.len())];
    assert_eq!(w.len(), 6 + 4);
    kld::quantize_row(&row, &mut w);
    let mut s = KldStats::default();
    assert!(s.add(&row, &w, 1));
    assert!(s.kld().0.abs() < 1e-5, "{:?}", s.kld());
    assert_eq!(s.n_same_top, 1);
    assert!((s.sum_nll - s.sum_nll_base).abs() < 1e-3);
    // A different distribution diverges.
    let other = lsm(&[3.0, 1.0, -2.0, 0.5, -30.0]);
    assert!(s.add(&other, &w, 1));
    assert!(s.klds[1] > 0.5, "{:?}", s.klds);
    assert_eq!(s.n_same_top, 1);
    // Bad shapes are refused, not indexed.
    assert!(!s.add(&other, &w[..5], 1));
    assert!(!s.add(&other, &w, 9));
}

#[test]
fn percentiles() {
    let v = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(median(&v), 2.5);
    assert_eq!(percentile(&v, 0.5), 2.5);
    assert_eq!(percentile(&v, 1.0), 4.0);
    assert_eq!(percentile(&[], 0.5), 0.0);
}

#[test]
fn base_file_writes_and_reads_back() {
    let (n_ctx, n_vocab, n_chunk) = (8, 5, 2);
    let header = Header {
        n_ctx,
        n_vocab,
        n_chunk,
        tokens: (0..16).map(|i| i % 5).collect(),
    };
    let rows_per_chunk = n_ctx - 1 - n_ctx / 2;
    let mut w = Writer::new(Vec::new(), &header).unwrap();
    let mut rows = Vec::new();
    for c in 0..n_chunk {
        let mut chunk = Vec::new();
        for r in 0..rows_per_chunk {
            chunk.extend(lsm(&[c as f32, r as f32, 1.0, -1.0, 0.5]));
        }
        w.write_rows(&chunk).unwrap();
        rows.push(chunk);
    }
    assert!(matches!(
        w.write_rows(&[0.0; 3]),
        Err(EvalError::BadLength { .. })
    ));
    let bytes = w.finish().unwrap();
    let expected = kld::layout(8, 5, 2).unwrap().file_bytes;
    assert_eq!(bytes.len() as u64, expected);
    assert_eq!(expected, 20 + 4 * 16 + 2 * 3 * 10 * 2);

    let mut r = open(&bytes).unwrap();
    assert_eq!(r.header, header);
    for chunk in &rows {
        let stored = r.next_chunk().unwrap().to_vec();
        let mut s = KldStats::default();
        for (row, b) in chunk
            .chunks_exact(n_vocab)
            .zip(stored.chunks_exact(kld::row_words(n_vocab)))
        {
            assert!(s.add(row, b, 2));
        }
        assert!(s.kld().0.abs() < 1e-5);
    }
    assert_eq!(r.next_chunk().err(), Some(EvalError::NoMoreChunks));
}

#[test]
fn malformed_base_files_are_typed_errors() {
    // The brief's case: a 20-byte file whose sizes overflow.
    let b = header_bytes(1145324614, 22, 1 << 30);
    assert_eq!(b.len(), 20);
    assert!(
        matches!(open(&b), Err(EvalError::TooLarge { .. })),
        "{:?}",
        open(&b).err()
    );
    // Huge but representable sizes: truncated, nothing allocated.
    let b = header_bytes(i32::MAX, i32::MAX, i32::MAX);
    assert!(matches!(
        open(&b),
        Err(EvalError::TooLarge { .. }) | Err(EvalError::Truncated { .. })
    ));
    // 2^40 logits: representable on 64-bit (then the file is too short), not
    // in a wasm32 address space (then too large) — either way nothing is
    // allocated.
    let b = header_bytes(1 << 20, 1 << 20, 1);
    let got = open(&b).err();
    if cfg!(target_pointer_width = "64") {
        assert!(matches!(got, Some(EvalError::Truncated { .. })), "{got:?}");
    } else {
        assert!(matches!(got, Some(EvalError::TooLarge { .. })), "{got:?}");
    }
    assert_eq!(open(b"").err(), Some(EvalError::NotKldFile));
    assert_eq!(open(b"_logits").err(), Some(EvalError::NotKldFile));
    assert_eq!(
        open(b"GGUF\0\0\0\0\0\0\0\0").err(),
        Some(EvalError::NotKldFile)
    );
    assert_eq!(
        open(b"_logits_\x08\0").err(),
        Some(EvalError::TruncatedHeader { got: 10 })
    );
    for (c, v, n) in [(3, 5, 1), (8, 0, 1), (8, 5, 0), (-8, 5, 1), (8, 5, -1)] {
        assert!(
            matches!(
                open(&header_bytes(c, v, n)),
                Err(EvalError::InvalidHeader { .. })
            ),
            "{c} {v} {n}"
        );
    }
    // A valid file with a byte too many, a byte too few, a bad token.
    let header = Header {
        n_ctx: 4,
        n_vocab: 3,
        n_chunk: 1,
        tokens: vec![0, 1, 2, 0],
    };
    let mut w = Writer::new(Vec::new(), &header).unwrap();
    w.write_rows(&lsm(&[0.0, 1.0, 2.0])).unwrap();
    let good = w.finish().unwrap();
    assert!(open(&good).is_ok());
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        open(&long),
        Err(EvalError::TrailingData { extra: 1, .. })
    ));
    assert!(matches!(
        open(&good[..good.len() - 1]),
        Err(EvalError::Truncated { .. })
    ));
    let mut bad = good.clone();
    bad[20 + 4..20 + 8].copy_from_slice(&7i32.to_le_bytes());
    assert_eq!(
        open(&bad).err(),
        Some(EvalError::TokenOutOfRange {
            index: 1,
            token: 7,
            n_vocab: 3
        })
    );
    // A size that lies (a stream shorter than claimed) is an I/O error, not a panic.
    assert!(matches!(
        Reader::new(&good[..30], good.len() as u64),
        Err(EvalError::Io(_))
    ));
}

#[test]
fn layout_overflow_is_checked() {
    assert!(kld::layout(u64::MAX, 2, 2).is_err());
    assert!(kld::layout(8, u64::MAX, 1).is_err());
    assert!(kld::layout(1 << 40, 1 << 40, 1 << 40).is_err());
    assert!(kld::layout(512, 49152, 10).is_ok());
}

#[test]
fn writer_refuses_bad_headers() {
    let h = Header {
        n_ctx: 4,
        n_vocab: 3,
        n_chunk: 2,
        tokens: vec![0; 3],
    };
    assert!(matches!(
        Writer::new(Vec::new(), &h),
        Err(EvalError::BadLength { .. })
    ));
    let h = Header {
        n_ctx: 2,
        n_vocab: 3,
        n_chunk: 1,
        tokens: vec![0; 2],
    };
    assert!(matches!(
        Writer::new(Vec::new(), &h),
        Err(EvalError::InvalidHeader { .. })
    ));
}
