//! A GGUF writer, for tests and for generating synthetic models.
//!
//! It writes what it is told: sizes of tensors given with data are the data
//! lengths, metadata is written as given. So it can also produce malformed
//! files for negative tests (wrong sizes, heterogeneous arrays, bad
//! alignment values, ...).

use std::io::{self, Write};

use super::reader::{DEFAULT_ALIGNMENT, MAGIC};
use super::value::{type_id, Value};
use crate::ggml_type::GgmlType;

/// One tensor to write.
#[derive(Clone, Debug)]
struct WTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    /// The data, or None for a tensor declared with [`GgufWriter::tensor_decl`].
    data: Option<Vec<u8>>,
}

impl WTensor {
    /// Bytes of data this tensor occupies in the file.
    fn size(&self) -> u64 {
        match &self.data {
            Some(d) => d.len() as u64,
            None => declared_size(&self.dims, self.ty).unwrap_or(0),
        }
    }
}

/// The data size of a tensor of type `ty` and dims `dims` (ne0 first), or
/// None if ne0 is not a whole number of blocks or the size overflows.
pub fn declared_size(dims: &[u64], ty: GgmlType) -> Option<u64> {
    let ne0 = dims.first().copied().unwrap_or(1);
    dims.iter()
        .skip(1)
        .try_fold(ty.row_bytes(ne0)?, |acc, &d| acc.checked_mul(d))
}

/// Builds a GGUF file: metadata in insertion order, then tensors in
/// insertion order, each aligned.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    kvs: Vec<(String, Value)>,
    tensors: Vec<WTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn pad_len(pos: u64, align: u64) -> u64 {
    let a = align.max(1);
    (a - pos % a) % a
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The payload of `v` (without its type id).
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => {
            // Homogeneous arrays: the first element's type (u8 if empty).
            put_u32(out, a.first().map_or(type_id::U8, Value::type_id));
            put_u64(out, a.len() as u64);
            for e in a {
                put_value(out, e);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

impl GgufWriter {
    /// An empty GGUF v3 file with alignment 32.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Set the version field (any value, for negative tests).
    pub fn version(mut self, v: u32) -> Self {
        self.version = v;
        self
    }

    /// Set the data alignment. Unless a `general.alignment` kv was added
    /// explicitly, one is written (as u32, first) when `a` is not 32. The
    /// layout uses `max(a, 1)`.
    pub fn alignment(&mut self, a: u64) {
        self.alignment = a;
    }

    /// Add a metadata pair (duplicates are written as given).
    pub fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        self.kvs.push((key.to_owned(), v));
        self
    }

    /// Add a tensor with its data (size = `data.len()`, not checked).
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push(WTensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ty,
            data: Some(data),
        });
        self
    }

    /// Declare a tensor whose data [`write_with`](Self::write_with) asks
    /// for; its size is computed from dims and type (0 if invalid).
    pub fn tensor_decl(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> &mut Self {
        self.tensors.push(WTensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ty,
            data: None,
        });
        self
    }

    fn alignment_kv(&self) -> Option<Value> {
        let explicit = self.kvs.iter().any(|(k, _)| k == "general.alignment");
        if explicit || self.alignment == DEFAULT_ALIGNMENT {
            return None;
        }
        Some(match u32::try_from(self.alignment) {
            Ok(a) => Value::U32(a),
            Err(_) => Value::U64(self.alignment),
        })
    }

    /// Offsets of the tensors' data relative to the data section.
    pub fn tensor_offsets(&self) -> Vec<u64> {
        let mut off = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                off += pad_len(off, self.alignment);
                let o = off;
                off += t.size();
                o
            })
            .collect()
    }

    /// Everything before the data section: header, metadata, tensor table
    /// and padding. Its length is the data section's absolute offset.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        put_u32(&mut out, self.version);
        put_u64(&mut out, self.tensors.len() as u64);
        let align_kv = self.alignment_kv();
        put_u64(
            &mut out,
            self.kvs.len() as u64 + u64::from(align_kv.is_some()),
        );
        let kvs = align_kv
            .map(|v| ("general.alignment".to_owned(), v))
            .into_iter()
            .chain(self.kvs.iter().cloned());
        for (k, v) in kvs {
            put_str(&mut out, &k);
            put_u32(&mut out, v.type_id());
            put_value(&mut out, &v);
        }
        for (t, off) in self.tensors.iter().zip(self.tensor_offsets()) {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.ty.id());
            put_u64(&mut out, off);
        }
        let pad = pad_len(out.len() as u64, self.alignment);
        out.resize(out.len() + pad as usize, 0);
        out
    }

    /// Write the file to `w`, streaming: the header, then each tensor's data
    /// in order with alignment padding between. Tensors added with data are
    /// written directly; for those declared with
    /// [`tensor_decl`](Self::tensor_decl), `data(i, w)` is called and must
    /// write exactly the declared size. A multi-GiB file never sits in memory.
    pub fn write_with<W: Write>(
        &self,
        w: &mut W,
        data: &mut dyn FnMut(usize, &mut W) -> io::Result<()>,
    ) -> io::Result<()> {
        w.write_all(&self.header_bytes())?;
        let zeros = [0u8; 256];
        let mut pos = 0u64;
        for (i, (t, off)) in self.tensors.iter().zip(self.tensor_offsets()).enumerate() {
            let mut pad = off - pos;
            while pad > 0 {
                let n = pad.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..n])?;
                pad -= n as u64;
            }
            match &t.data {
                Some(d) => w.write_all(d)?,
                None => data(i, w)?,
            }
            pos = off + t.size();
        }
        Ok(())
    }

    /// The whole file in memory; declared tensors are zero-filled.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let sizes: Vec<u64> = self.tensors.iter().map(WTensor::size).collect();
        let res = self.write_with(&mut out, &mut |i, w: &mut Vec<u8>| {
            let n = sizes.get(i).copied().unwrap_or(0);
            w.resize(w.len() + n as usize, 0);
            Ok(())
        });
        // Writing to a Vec cannot fail.
        debug_assert!(res.is_ok());
        out
    }
}
