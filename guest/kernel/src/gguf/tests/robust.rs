//! Robustness (truncation, corruption), offsets beyond 4 GiB and the real
//! SmolLM2 model.

use super::*;

// ----------------------------------------------------------- robustness

/// Truncate a valid file at every length and corrupt random bytes: parse
/// must return (Ok or Err) without panicking.
#[test]
fn robust_against_truncation_and_corruption() {
    let bytes = sample().to_bytes();
    assert!(parse_bytes(bytes.clone()).is_ok());
    for len in 0..bytes.len() {
        assert!(
            parse_bytes(bytes[..len].to_vec()).is_err(),
            "truncated at {len}"
        );
    }
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut n_ok = 0;
    for _ in 0..600 {
        let mut b = bytes.clone();
        let flips = 1 + next() % 4;
        for _ in 0..flips {
            let i = (next() % b.len() as u64) as usize;
            b[i] = match next() % 4 {
                0 => 0xff,
                1 => 0,
                _ => next() as u8,
            };
        }
        if next() % 3 == 0 {
            let cut = (next() % b.len() as u64) as usize;
            b.truncate(cut);
        }
        if let Ok(f) = parse_bytes(b.clone()) {
            n_ok += 1;
            for t in &f.tensors {
                assert!(t.offset + t.n_bytes <= b.len() as u64);
            }
        }
    }
    // Most corruptions land in tensor data or harmless places.
    assert!(n_ok > 0);
}

// ----------------------------------------------------------- the real model

/// A file-backed source (seek and read, so that it also runs on wasm32-wasip2,
/// where `cargo xtask test` maps the models directory into the guest).
struct FileSource {
    file: std::cell::RefCell<std::fs::File>,
    size: u64,
    reads: std::cell::Cell<u64>,
    bytes: std::cell::Cell<u64>,
}

impl ByteSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut buf = vec![0u8; len as usize];
        let mut file = self.file.borrow_mut();
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        self.reads.set(self.reads.get() + 1);
        self.bytes.set(self.bytes.get() + len);
        Ok(buf)
    }
    fn load_layer(&self, _layer: u32, ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for r in ranges {
            out.extend(self.read(r.offset, r.len)?);
        }
        Ok(out)
    }
}

#[test]
fn real_smollm2_q4_1() {
    let Some(path) = std::env::var_os("WASM_CHORD_SMOLLM2") else {
        eprintln!("note: WASM_CHORD_SMOLLM2 is unset; skipping the real-model GGUF test");
        return;
    };
    let file = std::fs::File::open(&path).expect("open WASM_CHORD_SMOLLM2");
    let size = file.metadata().expect("metadata").len();
    let src = FileSource {
        file: file.into(),
        size,
        reads: 0.into(),
        bytes: 0.into(),
    };
    let t0 = std::time::Instant::now();
    let f = GgufFile::parse(&src).expect("parse SmolLM2");
    let dt = t0.elapsed();
    eprintln!(
        "parsed {} kv, {} tensors in {dt:?} with {} reads, {} bytes",
        f.metadata.len(),
        f.tensors.len(),
        src.reads.get(),
        src.bytes.get()
    );
    assert!(src.bytes.get() < f.data_offset + READ_WINDOW);
    assert_eq!(f.version, 3);
    assert_eq!(f.file_size, size);
    assert_eq!(f.metadata.len(), 33);
    assert_eq!(f.tensors.len(), 272);
    assert_eq!(f.get_str("general.architecture"), Ok(Some("llama")));
    assert_eq!(f.get_u64("llama.block_count"), Ok(Some(30)));
    let count = |ty| f.tensors.iter().filter(|t| t.ty == ty).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::F32), 61);
    assert_eq!(count(GgmlType::Q8_0), 1);
    let emb = f.tensor("token_embd.weight").expect("token_embd.weight");
    assert_eq!(emb.ty, GgmlType::Q8_0);
    assert_eq!(emb.dims, [576, 49152]);
    assert_eq!(emb.offset, 1_785_664);
    assert_eq!(emb.n_bytes, 576 / 32 * 34 * 49152);
    let vocab = f
        .get_array("tokenizer.ggml.tokens")
        .unwrap()
        .expect("vocab");
    assert_eq!(vocab.len(), 49152);
    let merges = f
        .get_array("tokenizer.ggml.merges")
        .unwrap()
        .expect("merges");
    assert_eq!(merges.len(), 48900);
    // Tensors do not overlap and stay inside the file.
    let mut ranges: Vec<_> = f
        .tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.n_bytes))
        .collect();
    ranges.sort_unstable();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
    assert!(ranges.last().unwrap().1 <= size);
    assert!(ranges[0].0 >= f.data_offset);
}

/// A source that serves `head` and zeros up to `size`, recording reads.
struct SparseSource {
    head: Vec<u8>,
    size: u64,
    max_read: std::cell::Cell<u64>,
}

impl ByteSource for SparseSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(StoreError::OutOfRange(format!("{offset}+{len}")));
        }
        self.max_read.set(self.max_read.get().max(len));
        Ok((offset..offset + len)
            .map(|i| self.head.get(i as usize).copied().unwrap_or(0))
            .collect())
    }
    fn load_layer(&self, _layer: u32, _ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Io("unused".into()))
    }
}

/// Offsets beyond 4 GiB, without the file in memory.
#[test]
fn offsets_beyond_4_gib() {
    let mut w = GgufWriter::new();
    w.tensor_decl("huge", &[1 << 20, 1 << 10, 5], GgmlType::F32) // 20 GiB
        .tensor_decl("after", &[64, 2], GgmlType::Q8_0);
    let head = w.header_bytes();
    let offsets = w.tensor_offsets();
    let size = head.len() as u64 + offsets[1] + 136;
    let src = SparseSource {
        head,
        size,
        max_read: 0.into(),
    };
    let f = GgufFile::parse(&src).expect("valid");
    let huge = f.tensor("huge").unwrap();
    assert_eq!(huge.n_bytes, 20 << 30);
    let after = f.tensor("after").unwrap();
    assert!(after.offset > 20 << 30);
    assert_eq!(after.offset + after.n_bytes, size);
    assert!(src.max_read.get() <= READ_WINDOW);
    // One byte short: out of bounds.
    let src = SparseSource {
        size: size - 1,
        ..src
    };
    assert!(matches!(
        GgufFile::parse(&src),
        Err(GgufError::TensorOutOfBounds { tensor, .. }) if tensor == "after"
    ));
}
