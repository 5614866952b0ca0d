//! The bounded GGUF reader: a windowed cursor over a [`ByteSource`] and the
//! parser of the header, metadata and tensor table.
//!
//! The file is never read whole (it may be larger than the wasm32 address
//! space): the cursor fetches [`READ_WINDOW`]-sized windows on demand. Every
//! length read from the file is checked against the bytes left in the file
//! and against a cap *before* anything is allocated, and all offset
//! arithmetic is checked. Tensor data is never interpreted; the last window
//! may overlap the start of the data section.

use std::collections::HashMap;

use super::error::GgufError;
use super::file::{GgufFile, TensorInfo};
use super::value::{min_encoded_size, type_id, Value};
use crate::ggml_type::GgmlType;
use crate::store::{ByteSource, StoreError};

/// Bytes fetched per read from the source while parsing (1 MiB).
pub const READ_WINDOW: u64 = 1 << 20;
/// Longest metadata string value accepted (64 MiB; chat templates are KiBs).
pub const MAX_STRING_LEN: u64 = 64 << 20;
/// Longest metadata key accepted (the GGUF spec caps keys at 65535 bytes).
pub const MAX_KEY_LEN: u64 = 65_535;
/// Longest tensor name accepted.
pub const MAX_TENSOR_NAME_LEN: u64 = 65_535;
/// Most elements in one metadata array (16 Mi; vocabularies are < 1 Mi).
/// Independently, an array must fit in the bytes left in the file.
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Most memory the decoded metadata may take (256 MiB, counted as
/// `size_of::<Value>()` per value plus string bytes; a 262k-token vocabulary
/// takes ~30 MB). A file of small array elements cannot fill the guest.
pub const MAX_METADATA_DECODED: u64 = 256 << 20;
/// Deepest nesting of arrays in arrays accepted.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most tensor dimensions (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The magic at offset 0.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// Fewest bytes of one kv pair: key length, value type, a 1-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Fewest bytes of one tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;
/// Most elements preallocated for a vector whose length came from the file.
const MAX_PREALLOC: u64 = 1 << 16;

/// A forward-only cursor that reads the source through a bounded window.
pub(crate) struct Cursor<'a> {
    src: &'a dyn ByteSource,
    size: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_start: u64,
    /// Position within `buf`.
    at: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(src: &'a dyn ByteSource) -> Self {
        Cursor {
            src,
            size: src.size(),
            buf: Vec::new(),
            buf_start: 0,
            at: 0,
        }
    }

    /// Current file offset.
    pub(crate) fn pos(&self) -> u64 {
        self.buf_start + self.at as u64
    }

    /// Bytes between the current offset and the end of the file.
    pub(crate) fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos())
    }

    fn truncated(&self, what: &str, need: u64) -> GgufError {
        GgufError::Truncated {
            what: what.to_owned(),
            offset: self.pos(),
            need,
            available: self.remaining(),
        }
    }

    /// Consume `n` bytes.
    fn take(&mut self, n: u64, what: &str) -> Result<&[u8], GgufError> {
        let in_buf = (self.buf.len() - self.at) as u64;
        if n > in_buf {
            self.refill(n, what)?;
        }
        // `refill` guarantees `n` bytes in the buffer, so `n` fits a usize.
        let start = self.at;
        let end = start + n as usize;
        self.at = end;
        Ok(&self.buf[start..end])
    }

    /// Replace the window by one starting at the current offset holding at
    /// least `n` bytes.
    fn refill(&mut self, n: u64, what: &str) -> Result<(), GgufError> {
        let pos = self.pos();
        let rem = self.remaining();
        if n > rem {
            return Err(self.truncated(what, n));
        }
        let want = n.max(READ_WINDOW).min(rem);
        let want_usize = usize::try_from(want).map_err(|_| GgufError::LengthTooLarge {
            what: what.to_owned(),
            offset: pos,
            len: n,
            limit: usize::MAX as u64,
        })?;
        // Read in window-sized chunks so no single request is huge.
        let mut buf = Vec::with_capacity(want_usize);
        let mut done = 0u64;
        while done < want {
            let off = pos + done;
            let len = (want - done).min(READ_WINDOW);
            let chunk = self.src.read(off, len).map_err(|source| GgufError::Store {
                offset: off,
                len,
                source,
            })?;
            if chunk.len() as u64 != len {
                return Err(GgufError::Store {
                    offset: off,
                    len,
                    source: StoreError::Io(format!("short read: {} of {len} bytes", chunk.len())),
                });
            }
            buf.extend_from_slice(&chunk);
            done += len;
        }
        self.buf = buf;
        self.buf_start = pos;
        self.at = 0;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.bytes::<1>(what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        self.bytes(what).map(u16::from_le_bytes)
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.bytes(what).map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.bytes(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: u64 length (≤ `max`) then UTF-8 bytes.
    pub(crate) fn string(&mut self, max: u64, what: &str) -> Result<String, GgufError> {
        let len_at = self.pos();
        let len = self.u64(what)?;
        if len > max {
            return Err(GgufError::LengthTooLarge {
                what: what.to_owned(),
                offset: len_at,
                len,
                limit: max,
            });
        }
        let at = self.pos();
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                what: what.to_owned(),
                offset: at,
            }),
        }
    }
}

/// Check a value type id read at `offset`.
fn check_value_type(ty: u32, key: &str, offset: u64) -> Result<u64, GgufError> {
    min_encoded_size(ty).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_owned(),
        ty,
        offset,
    })
}

/// Read a value of (already checked) type `ty`.
fn read_value(
    cur: &mut Cursor,
    ty: u32,
    key: &str,
    depth: usize,
    budget: &mut u64,
) -> Result<Value, GgufError> {
    use type_id::*;
    let at = cur.pos();
    let over = || GgufError::MetadataTooLarge {
        key: key.to_owned(),
        limit: MAX_METADATA_DECODED,
    };
    *budget = budget
        .checked_sub(std::mem::size_of::<Value>() as u64)
        .ok_or_else(over)?;
    Ok(match ty {
        U8 => Value::U8(cur.u8("u8 value")?),
        I8 => Value::I8(cur.u8("i8 value")? as i8),
        U16 => Value::U16(cur.u16("u16 value")?),
        I16 => Value::I16(cur.u16("i16 value")? as i16),
        U32 => Value::U32(cur.u32("u32 value")?),
        I32 => Value::I32(cur.u32("i32 value")? as i32),
        F32 => Value::F32(f32::from_bits(cur.u32("f32 value")?)),
        U64 => Value::U64(cur.u64("u64 value")?),
        I64 => Value::I64(cur.u64("i64 value")? as i64),
        F64 => Value::F64(f64::from_bits(cur.u64("f64 value")?)),
        BOOL => match cur.u8("bool value")? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            byte => {
                return Err(GgufError::InvalidBool {
                    key: key.to_owned(),
                    byte,
                    offset: at,
                })
            }
        },
        STRING => {
            let s = cur.string(MAX_STRING_LEN, "string value")?;
            *budget = budget.checked_sub(s.len() as u64).ok_or_else(over)?;
            Value::String(s)
        }
        ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::NestingTooDeep {
                    key: key.to_owned(),
                    offset: at,
                    max: MAX_ARRAY_DEPTH,
                });
            }
            let elem_at = cur.pos();
            let elem_ty = cur.u32("array element type")?;
            let min = check_value_type(elem_ty, key, elem_at)?;
            let count_at = cur.pos();
            let count = cur.u64("array length")?;
            if count > MAX_ARRAY_LEN {
                return Err(GgufError::LengthTooLarge {
                    what: "array length".into(),
                    offset: count_at,
                    len: count,
                    limit: MAX_ARRAY_LEN,
                });
            }
            // count ≤ 2^24 and min ≤ 12: no overflow.
            let need = count * min;
            if need > cur.remaining() {
                return Err(cur.truncated(&format!("array of {count} elements"), need));
            }
            let mut v = Vec::with_capacity(count.min(MAX_PREALLOC) as usize);
            for _ in 0..count {
                v.push(read_value(cur, elem_ty, key, depth + 1, budget)?);
            }
            Value::Array(v)
        }
        _ => {
            return Err(GgufError::UnknownValueType {
                key: key.to_owned(),
                ty,
                offset: at,
            })
        }
    })
}

/// A tensor info as read, before offsets are resolved.
struct RawTensor {
    info: TensorInfo,
    rel_offset: u64,
}

/// Read one tensor info (`i` is its index, for messages).
fn read_tensor_info(cur: &mut Cursor, i: u64) -> Result<RawTensor, GgufError> {
    let name = cur
        .string(MAX_TENSOR_NAME_LEN, "tensor name")
        .map_err(|e| e.in_context(|| format!("tensor #{i}")))?;
    let ctx = || format!("tensor '{name}'");
    let dims_at = cur.pos();
    let n_dims = cur.u32("n_dims").map_err(|e| e.in_context(ctx))?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            tensor: name,
            n_dims,
            max: MAX_DIMS,
            offset: dims_at,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64("dimension").map_err(|e| e.in_context(ctx))?);
    }
    let type_at = cur.pos();
    let type_id = cur.u32("ggml type").map_err(|e| e.in_context(ctx))?;
    let rel_offset = cur.u64("data offset").map_err(|e| e.in_context(ctx))?;

    if let Some(index) = dims.iter().position(|&d| d == 0) {
        return Err(GgufError::ZeroDim {
            tensor: name,
            index,
            dims,
        });
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64);
    if n_elements.is_none() {
        return Err(GgufError::ElementCountOverflow { tensor: name, dims });
    }
    let Some(ty) = GgmlType::from_id(type_id) else {
        return Err(GgufError::UnknownGgmlType {
            tensor: name,
            id: type_id,
            offset: type_at,
        });
    };
    let ne0 = dims.first().copied().unwrap_or(1);
    let block_size = ty.block_size() as u64;
    if ne0 % block_size != 0 {
        return Err(GgufError::PartialBlock {
            tensor: name,
            ne0,
            ty,
            block_size,
        });
    }
    // The product of all dims fits, so the product of the outer ones does.
    let rows: u64 = dims.iter().skip(1).product();
    let n_bytes = ty.row_bytes(ne0).and_then(|r| r.checked_mul(rows));
    let Some(n_bytes) = n_bytes else {
        return Err(GgufError::SizeOverflow {
            tensor: name,
            ty,
            dims,
        });
    };
    Ok(RawTensor {
        info: TensorInfo {
            name,
            dims,
            ty,
            offset: 0,
            n_bytes,
        },
        rel_offset,
    })
}

/// The `general.alignment` of `metadata`, validated.
fn alignment_of(
    metadata: &[(String, Value)],
    index: &HashMap<String, usize>,
) -> Result<u64, GgufError> {
    const KEY: &str = "general.alignment";
    let Some(&i) = index.get(KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let v = &metadata[i].1;
    let a = v.as_u64().ok_or_else(|| GgufError::WrongType {
        key: KEY.to_owned(),
        expected: "u32",
        found: v.type_name(),
    })?;
    if a == 0 || !a.is_power_of_two() {
        return Err(GgufError::BadAlignment { value: a });
    }
    Ok(a)
}

/// Parse the header, metadata and tensor table of the GGUF file in `src`.
pub(crate) fn parse(src: &dyn ByteSource) -> Result<GgufFile, GgufError> {
    let mut cur = Cursor::new(src);
    let file_size = cur.size;

    let magic = cur.bytes::<4>("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32("version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = cur.u64("tensor count")?;
    let n_kv = cur.u64("metadata kv count")?;

    let available = cur.remaining();
    let max_kv = available / MIN_KV_SIZE;
    if n_kv > max_kv {
        return Err(GgufError::CountTooLarge {
            what: "metadata entries",
            count: n_kv,
            max: max_kv,
            available,
        });
    }

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv.min(MAX_PREALLOC) as usize);
    let mut key_index: HashMap<String, usize> =
        HashMap::with_capacity(n_kv.min(MAX_PREALLOC) as usize);
    let mut budget = MAX_METADATA_DECODED;
    for i in 0..n_kv {
        let key_at = cur.pos();
        let key = cur
            .string(MAX_KEY_LEN, "metadata key")
            .map_err(|e| e.in_context(|| format!("metadata entry #{i}")))?;
        let ctx = || format!("key '{key}'");
        let ty_at = cur.pos();
        let ty = cur.u32("value type").map_err(|e| e.in_context(ctx))?;
        check_value_type(ty, &key, ty_at)?;
        let value =
            read_value(&mut cur, ty, &key, 0, &mut budget).map_err(|e| e.in_context(ctx))?;
        if key_index.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                key,
                offset: key_at,
            });
        }
        key_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }
    let alignment = alignment_of(&metadata, &key_index)?;

    let available = cur.remaining();
    let max_tensors = available / MIN_TENSOR_INFO_SIZE;
    if n_tensors > max_tensors {
        return Err(GgufError::CountTooLarge {
            what: "tensors",
            count: n_tensors,
            max: max_tensors,
            available,
        });
    }
    let mut raw = Vec::with_capacity(n_tensors.min(MAX_PREALLOC) as usize);
    let mut tensor_index: HashMap<String, usize> =
        HashMap::with_capacity(n_tensors.min(MAX_PREALLOC) as usize);
    for i in 0..n_tensors {
        let at = cur.pos();
        let t = read_tensor_info(&mut cur, i)?;
        if tensor_index.contains_key(&t.info.name) {
            return Err(GgufError::DuplicateTensor {
                name: t.info.name,
                offset: at,
            });
        }
        tensor_index.insert(t.info.name.clone(), raw.len());
        raw.push(t);
    }

    let table_end = cur.pos();
    let data_offset = table_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| GgufError::OffsetOverflow {
            what: format!("data start ({table_end} aligned to {alignment})"),
        })?;

    let mut tensors = Vec::with_capacity(raw.len());
    for RawTensor {
        mut info,
        rel_offset,
    } in raw
    {
        if rel_offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                tensor: info.name,
                offset: rel_offset,
                alignment,
            });
        }
        let Some(abs) = data_offset.checked_add(rel_offset) else {
            return Err(GgufError::OffsetOverflow {
                what: format!(
                    "tensor '{}' data offset {data_offset} + {rel_offset}",
                    info.name
                ),
            });
        };
        let end = abs.checked_add(info.n_bytes);
        if end.is_none_or(|end| end > file_size) {
            return Err(GgufError::TensorOutOfBounds {
                tensor: info.name,
                offset: abs,
                size: info.n_bytes,
                file_size,
            });
        }
        info.offset = abs;
        tensors.push(info);
    }
    // No two tensors may share bytes (empty tensors hold none).
    let mut spans: Vec<(u64, u64, usize)> = tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.n_bytes > 0)
        .map(|(i, t)| (t.offset, t.offset + t.n_bytes, i))
        .collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            return Err(GgufError::OverlappingTensors {
                first: tensors[a].name.clone(),
                second: tensors[b].name.clone(),
                offset: start,
            });
        }
    }

    Ok(GgufFile {
        version,
        alignment,
        data_offset,
        file_size,
        metadata,
        tensors,
        key_index,
        tensor_index,
    })
}
