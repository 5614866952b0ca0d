//! One test per [`GgufError`] variant (malformed files built with the
//! writer or by patching its bytes).

use super::*;

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
fn err_metadata_too_large() {
    // One u8 array element more than the budget holds decoded values (a
    // `Value` is 32 bytes natively, fewer on wasm32), in two arrays each
    // within the array-length limit; the second goes over.
    let n: u64 = crate::gguf::reader::MAX_METADATA_DECODED
        / std::mem::size_of::<crate::gguf::Value>() as u64
        + 1;
    let half = n.div_ceil(2);
    let mut b = Vec::with_capacity(2 * half as usize + 128);
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&2u64.to_le_bytes()); // kvs
    for key in [&b"big.one"[..], &b"big.two"[..]] {
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&9u32.to_le_bytes()); // array
        b.extend_from_slice(&0u32.to_le_bytes()); // of u8
        b.extend_from_slice(&half.to_le_bytes());
        b.resize(b.len() + half as usize, 0);
    }
    let Err(e) = parse_bytes(b) else {
        panic!("{} array elements were accepted", 2 * half)
    };
    assert!(
        matches!(&e, GgufError::MetadataTooLarge { key, .. } if key == "big.two"),
        "{e:?}"
    );
    assert!(e.to_string().contains("big.two"), "{e}");
    assert!(matches!(
        crate::Error::from(e),
        crate::Error::InvalidModel(_)
    ));
}

#[test]
fn err_overlapping_tensors() {
    // "b" is patched to start inside "a"'s 64 bytes (aligned, in bounds).
    let mut w = GgufWriter::new();
    w.tensor("a", &[16], GgmlType::F32, vec![0; 64])
        .tensor("b", &[8], GgmlType::F32, vec![0; 32]);
    let mut bytes = w.to_bytes();
    let at = find(&bytes, &[1, 0, 0, 0, 0, 0, 0, 0, b'b']) + 9 + 4 + 8 + 4;
    patch_u64(&mut bytes, at, 32);
    let e = parse_bytes(bytes).unwrap_err();
    assert!(
        matches!(&e, GgufError::OverlappingTensors { first, second, .. } if first == "a" && second == "b"),
        "{e:?}"
    );
    assert!(e.to_string().contains("overlap"), "{e}");
    assert!(matches!(
        crate::Error::from(e),
        crate::Error::InvalidModel(_)
    ));
    // The same data twice (tied by offset) is refused too.
    let mut w = GgufWriter::new();
    w.tensor("a", &[8], GgmlType::F32, vec![0; 32])
        .tensor("b", &[8], GgmlType::F32, vec![0; 32]);
    let mut bytes = w.to_bytes();
    let at = find(&bytes, &[1, 0, 0, 0, 0, 0, 0, 0, b'b']) + 9 + 4 + 8 + 4;
    patch_u64(&mut bytes, at, 0);
    assert!(matches!(
        parse_bytes(bytes),
        Err(GgufError::OverlappingTensors { .. })
    ));
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
