//! Unit tests of the GGUF parser and writer: round trips, one test per
//! [`GgufError`] variant, robustness against corrupted input, and the real
//! SmolLM2 model (path in `WASM_CHORD_SMOLLM2`).

use super::*;
use crate::ggml_type::GgmlType;
use crate::store::{ByteRange, ByteSource, MemSource, StoreError};

fn parse_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::parse(&MemSource::new(bytes))
}

fn parse_writer(w: &GgufWriter) -> Result<GgufFile, GgufError> {
    parse_bytes(w.to_bytes())
}

/// Position of `needle` in `hay` (test helper; panics if absent).
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

fn patch_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn patch_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A small valid file using every value type and a few tensor types.
fn sample() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", "llama".into())
        .kv("a.u8", Value::U8(7))
        .kv("a.i8", Value::I8(-7))
        .kv("a.u16", Value::U16(700))
        .kv("a.i16", Value::I16(-700))
        .kv("a.u32", Value::U32(70_000))
        .kv("a.i32", Value::I32(-70_000))
        .kv("a.f32", Value::F32(1.5))
        .kv("a.bool", Value::Bool(true))
        .kv("a.u64", Value::U64(1 << 40))
        .kv("a.i64", Value::I64(-(1 << 40)))
        .kv("a.f64", Value::F64(2.25))
        .kv(
            "a.strings",
            Value::Array(vec!["x".into(), "yy".into(), "".into()]),
        )
        .kv(
            "a.nested",
            Value::Array(vec![
                Value::Array(vec![Value::I32(1), Value::I32(2)]),
                Value::Array(vec![]),
            ]),
        );
    w.tensor("t.f32", &[3, 2], GgmlType::F32, vec![1; 24])
        .tensor("t.q8", &[64], GgmlType::Q8_0, vec![2; 68])
        .tensor("t.q41", &[32, 1, 1, 2], GgmlType::Q4_1, vec![3; 40]);
    w
}

// ---------------------------------------------------------------- round trips

#[test]
fn round_trip_all_value_types() {
    let w = sample();
    let bytes = w.to_bytes();
    let f = parse_bytes(bytes.clone()).expect("valid");
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.file_size, bytes.len() as u64);
    assert_eq!(f.data_offset, w.header_bytes().len() as u64);
    assert_eq!(f.data_offset % 32, 0);
    assert_eq!(f.metadata.len(), 14);
    assert_eq!(f.metadata[0].0, "general.architecture");
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get("a.u8"), Some(&Value::U8(7)));
    assert_eq!(f.get("a.i8"), Some(&Value::I8(-7)));
    assert_eq!(f.get("a.u16"), Some(&Value::U16(700)));
    assert_eq!(f.get("a.i16"), Some(&Value::I16(-700)));
    assert_eq!(f.get("a.i32"), Some(&Value::I32(-70_000)));
    assert_eq!(f.get("a.i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(f.get_u64("a.u32"), Ok(Some(70_000)));
    assert_eq!(f.get_u64("a.u64"), Ok(Some(1 << 40)));
    assert_eq!(f.get_i64("a.i64"), Ok(Some(-(1 << 40))));
    assert_eq!(f.get_f32("a.f32"), Ok(Some(1.5)));
    assert_eq!(f.get_f32("a.f64"), Ok(Some(2.25)));
    assert_eq!(f.get_bool("a.bool"), Ok(Some(true)));
    assert_eq!(f.get_str("general.architecture"), Ok(Some("llama")));
    assert_eq!(f.get_u64("missing"), Ok(None));
    let strings = f.get_array("a.strings").unwrap().unwrap();
    let strings: Vec<&str> = strings.iter().filter_map(Value::as_str).collect();
    assert_eq!(strings, ["x", "yy", ""]);
    let nested = f.get("a.nested").and_then(Value::as_array).unwrap();
    assert_eq!(nested[0], Value::Array(vec![Value::I32(1), Value::I32(2)]));
    assert_eq!(nested[1], Value::Array(vec![]));

    assert_eq!(f.tensors.len(), 3);
    let offsets = w.tensor_offsets();
    for (t, (name, off)) in f
        .tensors
        .iter()
        .zip(["t.f32", "t.q8", "t.q41"].iter().zip(&offsets))
    {
        assert_eq!(t.name, *name);
        assert_eq!(t.offset, f.data_offset + off);
        assert_eq!(t.offset % 32, 0);
    }
    let t = f.tensor("t.f32").unwrap();
    assert_eq!(
        (t.dims.as_slice(), t.ty, t.n_bytes, t.n_elements()),
        (&[3u64, 2][..], GgmlType::F32, 24, 6)
    );
    assert_eq!((t.ne0(), t.n_rows()), (3, 2));
    let q = f.tensor("t.q41").unwrap();
    assert_eq!((q.n_bytes, q.n_elements(), q.n_rows()), (40, 64, 2));
    assert_eq!(&bytes[q.offset as usize..][..40], &[3u8; 40][..]);
    assert_eq!(
        f.tensor_range("t.q8"),
        Some(ByteRange {
            offset: f.data_offset + offsets[1],
            len: 68
        })
    );
    assert_eq!(f.tensor("nope"), None);
    assert_eq!(f.tensor_range("nope"), None);
}

#[test]
fn value_accessors() {
    assert_eq!(Value::I8(-1).as_u64(), None);
    assert_eq!(Value::I64(5).as_u64(), Some(5));
    assert_eq!(Value::U64(u64::MAX).as_i64(), None);
    assert_eq!(Value::U16(3).as_i64(), Some(3));
    assert_eq!(Value::F32(1.0).as_u64(), None);
    assert_eq!(Value::U32(1).as_f32(), None);
    assert_eq!(Value::Bool(false).as_bool(), Some(false));
    assert_eq!(Value::U8(0).as_bool(), None);
    assert_eq!(Value::from("s").as_str(), Some("s"));
    assert_eq!(Value::Array(vec![]).as_array(), Some(&[][..]));
    assert_eq!(Value::String("x".into()).as_array(), None);
    assert_eq!(Value::F64(0.0).type_name(), "f64");
    assert_eq!(Value::Array(vec![]).type_id(), 9);
}

#[test]
fn version_2_and_custom_alignment() {
    let mut w = sample().version(2);
    w.alignment(64);
    let f = parse_writer(&w).expect("valid v2");
    assert_eq!(f.version, 2);
    assert_eq!(f.alignment, 64);
    assert_eq!(
        f.metadata[0],
        ("general.alignment".to_owned(), Value::U32(64))
    );
    assert_eq!(f.data_offset % 64, 0);
    assert!(f.tensors.iter().all(|t| t.offset % 64 == 0));
}

#[test]
fn empty_file_and_scalar_tensor() {
    let f = parse_writer(&GgufWriter::new()).expect("valid");
    assert!(f.metadata.is_empty() && f.tensors.is_empty());
    let mut w = GgufWriter::new();
    w.tensor("scalar", &[], GgmlType::F32, vec![0; 4]);
    let f = parse_writer(&w).expect("valid");
    let t = f.tensor("scalar").unwrap();
    assert_eq!((t.n_elements(), t.n_bytes), (1, 4));
}

#[test]
fn write_with_streams_the_same_bytes() {
    let mut w = GgufWriter::new();
    w.kv("k", Value::U32(1));
    w.tensor_decl("a", &[32, 3], GgmlType::Q4_0)
        .tensor("b", &[5], GgmlType::F32, vec![9; 20])
        .tensor_decl("c", &[7], GgmlType::F16);
    let mut out = Vec::new();
    let mut calls = Vec::new();
    w.write_with(&mut out, &mut |i, o: &mut Vec<u8>| {
        calls.push(i);
        let n = [54usize, 0, 14][i];
        o.extend(std::iter::repeat_n(i as u8 + 1, n));
        Ok(())
    })
    .unwrap();
    assert_eq!(calls, [0, 2]);
    let f = parse_bytes(out.clone()).expect("valid");
    assert_eq!(out.len(), w.to_bytes().len());
    let c = f.tensor("c").unwrap();
    assert_eq!((c.n_bytes, c.offset), (14, out.len() as u64 - 14));
    assert_eq!(out[c.offset as usize], 3);
    assert_eq!(f.tensor("a").unwrap().n_bytes, 54);
    assert_eq!(declared_size(&[32, 3], GgmlType::Q4_0), Some(54));
    assert_eq!(declared_size(&[33], GgmlType::Q4_0), None);
}

/// Metadata larger than the read window, a string longer than the window.
#[test]
fn metadata_spanning_many_windows() {
    let n = 120_000;
    let vocab: Vec<Value> = (0..n).map(|i| Value::String(format!("tok{i}"))).collect();
    let long = "z".repeat(3 * READ_WINDOW as usize + 5);
    let mut w = GgufWriter::new();
    w.kv("tokenizer.ggml.tokens", Value::Array(vocab))
        .kv("long", Value::String(long.clone()))
        .kv("after", Value::U8(1));
    w.tensor("t", &[4], GgmlType::F32, vec![0; 16]);
    let bytes = w.to_bytes();
    assert!(bytes.len() as u64 > 4 * READ_WINDOW);
    let f = parse_bytes(bytes).expect("valid");
    let toks = f.get_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(toks.len(), n);
    assert_eq!(toks[n - 1].as_str(), Some("tok119999"));
    assert_eq!(f.get_str("long").unwrap().map(str::len), Some(long.len()));
    assert_eq!(f.get_u64("after"), Ok(Some(1)));
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

// ------------------------------------------------------- one test per error

struct FailingSource;

impl ByteSource for FailingSource {
    fn size(&self) -> u64 {
        1000
    }
    fn read(&self, _offset: u64, _len: u64) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Io("disk on fire".into()))
    }
    fn load_layer(&self, _layer: u32, _ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Io("disk on fire".into()))
    }
}

#[test]
fn err_store() {
    let e = GgufFile::parse(&FailingSource).unwrap_err();
    assert!(matches!(
        &e,
        GgufError::Store { offset: 0, len: 1000, source: StoreError::Io(m) } if m == "disk on fire"
    ));
    assert_eq!(
        crate::Error::from(e),
        crate::Error::Store(StoreError::Io("disk on fire".into()))
    );
}

#[test]
fn err_bad_magic() {
    let mut bytes = sample().to_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let e = parse_bytes(bytes).unwrap_err();
    assert_eq!(e, GgufError::BadMagic { found: *b"GGML" });
    assert!(e.to_string().contains("GGML"), "{e}");
    assert!(matches!(
        crate::Error::from(e),
        crate::Error::InvalidModel(_)
    ));
}

#[test]
fn err_unsupported_version() {
    for v in [0, 1, 4, u32::MAX] {
        let e = parse_writer(&sample().version(v)).unwrap_err();
        assert_eq!(e, GgufError::UnsupportedVersion { version: v });
        assert!(matches!(
            crate::Error::from(e),
            crate::Error::Unsupported(_)
        ));
    }
}

#[test]
fn err_truncated_header() {
    let bytes = sample().to_bytes();
    let e = parse_bytes(bytes[..2].to_vec()).unwrap_err();
    assert!(
        matches!(&e, GgufError::Truncated { what, offset: 0, need: 4, available: 2 } if what == "magic")
    );
    let e = parse_bytes(bytes[..20].to_vec()).unwrap_err();
    assert!(
        matches!(&e, GgufError::Truncated { what, offset: 16, .. } if what == "metadata kv count")
    );
    assert!(e.to_string().contains("offset 16"), "{e}");
}

#[test]
fn err_truncated_in_kv() {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", "llama".into());
    let bytes = w.to_bytes();
    let at = find(&bytes, b"llama") + 2;
    let e = parse_bytes(bytes[..at].to_vec()).unwrap_err();
    assert_eq!(
        e,
        GgufError::Truncated {
            what: "string value of key 'general.architecture'".into(),
            offset: at as u64 - 2,
            need: 5,
            available: 2,
        }
    );
    assert!(e.to_string().contains(&format!("offset {}", at - 2)), "{e}");
    // Inside an array: the elements are checked against the bytes left first.
    let bytes = sample().to_bytes();
    let at = find(&bytes, b"a.strings") + 9 + 4 + 4 + 8 + 8 + 1;
    let e = parse_bytes(bytes[..at].to_vec()).unwrap_err();
    assert!(
        matches!(&e, GgufError::Truncated { what, .. }
        if what == "array of 3 elements of key 'a.strings'"),
        "{e:?}"
    );
}

#[test]
fn err_truncated_in_tensor_table() {
    let mut w = GgufWriter::new();
    w.tensor("t.q41", &[32, 1, 1, 2], GgmlType::Q4_1, vec![3; 40]);
    let bytes = w.to_bytes();
    let at = find(&bytes, b"t.q41") + 5 + 4 + 24 + 3; // inside the 4th dim
    let e = parse_bytes(bytes[..at].to_vec()).unwrap_err();
    assert_eq!(
        e,
        GgufError::Truncated {
            what: "dimension of tensor 't.q41'".into(),
            offset: at as u64 - 3,
            need: 8,
            available: 3,
        }
    );
}

#[test]
fn err_length_too_large() {
    // String value length 2^63: clean error, no allocation.
    let mut w = GgufWriter::new();
    w.kv("a", Value::String("x".into()));
    let mut bytes = w.to_bytes();
    assert_eq!(&bytes[24..33], &[1, 0, 0, 0, 0, 0, 0, 0, b'a']);
    patch_u64(&mut bytes, 37, 1 << 63);
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(&e, GgufError::LengthTooLarge { what, offset: 37, len, limit }
        if what.contains("key 'a'") && *len == 1 << 63 && *limit == MAX_STRING_LEN),
        "{e:?}"
    );
    // Key length 2^63.
    let mut bytes = w.to_bytes();
    patch_u64(&mut bytes, 24, 1 << 63);
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(&e, GgufError::LengthTooLarge { what, offset: 24, .. } if what.contains("metadata entry #0")),
        "{e:?}"
    );
    // Array count 2^63.
    let mut w = GgufWriter::new();
    w.kv("arr", Value::Array(vec![Value::U8(1)]));
    let mut bytes = w.to_bytes();
    let count_at = 24 + 8 + 3 + 4 + 4;
    patch_u64(&mut bytes, count_at, 1 << 63);
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(&e, GgufError::LengthTooLarge { what, len, .. } if what.starts_with("array length") && *len == 1 << 63),
        "{e:?}"
    );
    // Array count within the cap but more than the bytes left: truncated.
    let mut bytes = w.to_bytes();
    patch_u64(&mut bytes, count_at, 1000);
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(&e, GgufError::Truncated { need: 1000, .. }),
        "{e:?}"
    );
}

#[test]
fn err_count_too_large() {
    let mut bytes = sample().to_bytes();
    patch_u64(&mut bytes, 16, u64::MAX); // kv count
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "metadata entries",
                count: u64::MAX,
                ..
            }
        ),
        "{e:?}"
    );
    let mut bytes = sample().to_bytes();
    patch_u64(&mut bytes, 8, 1 << 40); // tensor count
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(e, GgufError::CountTooLarge { what: "tensors", count, .. } if count == 1 << 40),
        "{e:?}"
    );
}

#[test]
fn err_invalid_utf8() {
    let mut w = GgufWriter::new();
    w.kv("k", Value::String("ab".into()));
    let mut bytes = w.to_bytes();
    let at = find(&bytes, b"ab");
    bytes[at] = 0xff;
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(&e, GgufError::InvalidUtf8 { what, offset } if what.contains("key 'k'") && *offset == at as u64),
        "{e:?}"
    );
}

#[test]
fn err_unknown_value_type() {
    let mut w = GgufWriter::new();
    w.kv("k", Value::U8(1));
    let mut bytes = w.to_bytes();
    patch_u32(&mut bytes, 24 + 8 + 1, 13);
    let e = parse_bytes(bytes).unwrap_err();
    assert_eq!(
        e,
        GgufError::UnknownValueType {
            key: "k".into(),
            ty: 13,
            offset: 33
        }
    );
    // As an array element type.
    let mut w = GgufWriter::new();
    w.kv("k", Value::Array(vec![Value::U8(1)]));
    let mut bytes = w.to_bytes();
    patch_u32(&mut bytes, 24 + 8 + 1 + 4, 99);
    let e = parse_bytes(bytes).unwrap_err();
    assert_eq!(
        e,
        GgufError::UnknownValueType {
            key: "k".into(),
            ty: 99,
            offset: 37
        }
    );
}

#[test]
fn err_invalid_bool() {
    let mut w = GgufWriter::new();
    w.kv("flag", Value::Bool(true));
    let mut bytes = w.to_bytes();
    let at = 24 + 8 + 4 + 4;
    assert_eq!(bytes[at], 1);
    bytes[at] = 2;
    let e = parse_bytes(bytes).unwrap_err();
    assert_eq!(
        e,
        GgufError::InvalidBool {
            key: "flag".into(),
            byte: 2,
            offset: at as u64
        }
    );
}

#[test]
fn err_nesting_too_deep() {
    let mut v = Value::U8(0);
    for _ in 0..MAX_ARRAY_DEPTH {
        v = Value::Array(vec![v]);
    }
    let mut w = GgufWriter::new();
    w.kv("ok", v.clone());
    assert!(parse_writer(&w).is_ok());
    w.kv("deep", Value::Array(vec![v]));
    let e = parse_writer(&w).unwrap_err();
    assert!(
        matches!(&e, GgufError::NestingTooDeep { key, max: MAX_ARRAY_DEPTH, .. } if key == "deep"),
        "{e:?}"
    );
}

#[test]
fn err_duplicate_key() {
    let mut w = GgufWriter::new();
    w.kv("a", Value::U8(1))
        .kv("b", Value::U8(1))
        .kv("a", Value::U8(2));
    let e = parse_writer(&w).unwrap_err();
    assert!(
        matches!(&e, GgufError::DuplicateKey { key, .. } if key == "a"),
        "{e:?}"
    );
}

#[test]
fn err_duplicate_tensor() {
    let mut w = GgufWriter::new();
    w.tensor("t", &[1], GgmlType::F32, vec![0; 4])
        .tensor("t", &[1], GgmlType::F32, vec![0; 4]);
    let e = parse_writer(&w).unwrap_err();
    assert!(
        matches!(&e, GgufError::DuplicateTensor { name, .. } if name == "t"),
        "{e:?}"
    );
}

#[test]
fn err_too_many_dims() {
    let mut w = GgufWriter::new();
    w.tensor("t4", &[1, 1, 1, 1], GgmlType::F32, vec![0; 4]);
    assert!(parse_writer(&w).is_ok());
    w.tensor("t5", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4]);
    let e = parse_writer(&w).unwrap_err();
    assert!(
        matches!(&e, GgufError::TooManyDims { tensor, n_dims: 5, max: 4, .. } if tensor == "t5"),
        "{e:?}"
    );
    let mut bytes = w.to_bytes();
    let at = find(&bytes, b"t5") + 2;
    patch_u32(&mut bytes, at, u32::MAX);
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(
            &e,
            GgufError::TooManyDims {
                n_dims: u32::MAX,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn err_zero_dim() {
    let mut w = GgufWriter::new();
    w.tensor("z", &[4, 0], GgmlType::F32, vec![]);
    let e = parse_writer(&w).unwrap_err();
    assert!(
        matches!(&e, GgufError::ZeroDim { tensor, index: 1, .. } if tensor == "z"),
        "{e:?}"
    );
}

#[test]
fn err_element_count_overflow() {
    for dims in [
        &[1u64 << 32, 1 << 32][..],
        &[1 << 31, 1 << 32],
        &[u64::MAX, 2, 1, 1],
    ] {
        let mut w = GgufWriter::new();
        w.tensor("big", dims, GgmlType::F32, vec![]);
        let e = parse_writer(&w).unwrap_err();
        assert!(
            matches!(&e, GgufError::ElementCountOverflow { tensor, .. } if tensor == "big"),
            "{e:?}"
        );
    }
}

#[test]
fn err_size_overflow() {
    let mut w = GgufWriter::new();
    w.tensor("big", &[1 << 31, 1 << 31], GgmlType::F64, vec![]); // 2^62 × 8 bytes
    let e = parse_writer(&w).unwrap_err();
    assert!(
        matches!(&e, GgufError::SizeOverflow { tensor, ty: GgmlType::F64, .. } if tensor == "big"),
        "{e:?}"
    );
}

#[test]
fn err_unknown_ggml_type() {
    let mut w = GgufWriter::new();
    w.tensor("weird", &[4], GgmlType::F32, vec![0; 16]);
    let mut bytes = w.to_bytes();
    let at = find(&bytes, b"weird") + 5 + 4 + 8;
    patch_u32(&mut bytes, at, 4); // id 4 (removed Q4_2)
    let e = parse_bytes(bytes).unwrap_err();
    assert_eq!(
        e,
        GgufError::UnknownGgmlType {
            tensor: "weird".into(),
            id: 4,
            offset: at as u64
        }
    );
    assert!(
        e.to_string().contains("'weird'") && e.to_string().contains("id 4"),
        "{e}"
    );
}

#[test]
fn err_partial_block() {
    let mut w = GgufWriter::new();
    w.tensor("q", &[48, 2], GgmlType::Q4_1, vec![0; 60]);
    let e = parse_writer(&w).unwrap_err();
    assert_eq!(
        e,
        GgufError::PartialBlock {
            tensor: "q".into(),
            ne0: 48,
            ty: GgmlType::Q4_1,
            block_size: 32
        }
    );
}

#[test]
fn err_bad_alignment() {
    for a in [0u64, 3, 48] {
        let mut w = sample();
        w.alignment(a);
        let e = parse_writer(&w).unwrap_err();
        assert_eq!(e, GgufError::BadAlignment { value: a });
    }
    let mut w = GgufWriter::new();
    w.kv("general.alignment", Value::U64((1 << 40) + 1));
    let e = parse_writer(&w).unwrap_err();
    assert_eq!(
        e,
        GgufError::BadAlignment {
            value: (1 << 40) + 1
        }
    );
    let mut w = GgufWriter::new();
    w.kv("general.alignment", Value::U32(0));
    assert_eq!(
        parse_writer(&w).unwrap_err(),
        GgufError::BadAlignment { value: 0 }
    );
}

#[test]
fn err_wrong_type() {
    let mut w = GgufWriter::new();
    w.kv("general.alignment", "32".into());
    let e = parse_writer(&w).unwrap_err();
    assert_eq!(
        e,
        GgufError::WrongType {
            key: "general.alignment".into(),
            expected: "u32",
            found: "string"
        }
    );
    let f = parse_writer(&sample()).unwrap();
    let e = f.get_u64("general.architecture").unwrap_err();
    assert!(
        matches!(&e, GgufError::WrongType { key, found: "string", .. } if key == "general.architecture")
    );
    assert!(matches!(
        f.get_u64("a.i8"),
        Err(GgufError::WrongType { found: "i8", .. })
    ));
    assert!(matches!(
        f.get_f32("a.u32"),
        Err(GgufError::WrongType { found: "u32", .. })
    ));
    assert!(matches!(
        f.get_str("a.u8"),
        Err(GgufError::WrongType {
            expected: "string",
            ..
        })
    ));
    assert!(matches!(
        f.get_bool("a.u8"),
        Err(GgufError::WrongType {
            expected: "bool",
            ..
        })
    ));
    assert!(matches!(
        f.get_array("a.u8"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        f.get_i64("a.f32"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(
        matches!(crate::Error::from(e), crate::Error::InvalidModel(m) if m.contains("general.architecture"))
    );
}

#[test]
fn err_misaligned_tensor() {
    let mut w = GgufWriter::new();
    w.tensor("a", &[8], GgmlType::F32, vec![0; 32])
        .tensor("b", &[8], GgmlType::F32, vec![0; 32]);
    let mut bytes = w.to_bytes();
    let at = find(&bytes, &[1, 0, 0, 0, 0, 0, 0, 0, b'b']) + 9 + 4 + 8 + 4;
    patch_u64(&mut bytes, at, 16);
    let e = parse_bytes(bytes).unwrap_err();
    assert_eq!(
        e,
        GgufError::MisalignedTensor {
            tensor: "b".into(),
            offset: 16,
            alignment: 32
        }
    );
}

#[test]
fn err_tensor_out_of_bounds() {
    let mut w = GgufWriter::new();
    w.tensor("a", &[8], GgmlType::F32, vec![0; 32])
        .tensor("b", &[64], GgmlType::F32, vec![0; 100]); // needs 256
    let bytes = w.to_bytes();
    let size = bytes.len() as u64;
    let e = parse_bytes(bytes).unwrap_err();
    let want_offset = size - 100;
    assert_eq!(
        e,
        GgufError::TensorOutOfBounds {
            tensor: "b".into(),
            offset: want_offset,
            size: 256,
            file_size: size
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("'b'") && msg.contains(&want_offset.to_string()) && msg.contains("256"),
        "{msg}"
    );
    // Relative offset far past the end.
    let mut bytes = w.to_bytes();
    let at = find(&bytes, &[1, 0, 0, 0, 0, 0, 0, 0, b'b']) + 9 + 4 + 8 + 4;
    patch_u64(&mut bytes, at, 1 << 40);
    assert!(matches!(
        parse_bytes(bytes),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
}

#[test]
fn err_offset_overflow() {
    let mut w = GgufWriter::new();
    w.tensor("a", &[8], GgmlType::F32, vec![0; 32]);
    let mut bytes = w.to_bytes();
    let at = find(&bytes, b"a") + 1 + 4 + 8 + 4;
    patch_u64(&mut bytes, at, u64::MAX - 31); // aligned, but data_offset + it overflows
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(&e, GgufError::OffsetOverflow { what } if what.contains("'a'")),
        "{e:?}"
    );
}

/// A source that returns fewer bytes than asked.
struct ShortSource(Vec<u8>);

impl ByteSource for ShortSource {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let end = (offset + len).min(self.0.len() as u64) as usize;
        Ok(self.0[offset as usize..end.saturating_sub(1).max(offset as usize)].to_vec())
    }
    fn load_layer(&self, _layer: u32, _ranges: &[ByteRange]) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Io("unused".into()))
    }
}

#[test]
fn err_short_read_is_a_store_error() {
    let e = GgufFile::parse(&ShortSource(sample().to_bytes())).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::Store {
                offset: 0,
                source: StoreError::Io(_),
                ..
            }
        ),
        "{e:?}"
    );
}

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

/// A file-backed source using positioned reads.
#[cfg(unix)]
struct FileSource {
    file: std::fs::File,
    size: u64,
    reads: std::cell::Cell<u64>,
    bytes: std::cell::Cell<u64>,
}

#[cfg(unix)]
impl ByteSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
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

#[cfg(unix)]
#[test]
fn real_smollm2_q4_1() {
    let Some(path) = std::env::var_os("WASM_CHORD_SMOLLM2") else {
        eprintln!("note: WASM_CHORD_SMOLLM2 is unset; skipping the real-model GGUF test");
        return;
    };
    let file = std::fs::File::open(&path).expect("open WASM_CHORD_SMOLLM2");
    let size = file.metadata().expect("metadata").len();
    let src = FileSource {
        file,
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
