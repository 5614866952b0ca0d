//! Unit tests of the GGUF parser and writer: round trips, one test per
//! [`GgufError`] variant, robustness against corrupted input, and the real
//! SmolLM2 model (path in `WASM_CHORD_SMOLLM2`).

mod errors;
mod robust;

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
