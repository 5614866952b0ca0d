//! A parsed GGUF file: metadata and tensor table, with O(1) lookups.

use std::collections::HashMap;

use super::error::GgufError;
use super::value::Value;
use crate::ggml_type::GgmlType;
use crate::store::{ByteRange, ByteSource};

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Tensor name ("blk.0.attn_q.weight").
    pub name: String,
    /// Dimensions, `ne[0]` (innermost, contiguous) first; 0 to 4 of them,
    /// each ≥ 1.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// ABSOLUTE file offset of the data (aligned).
    pub offset: u64,
    /// Bytes of data; `offset + n_bytes` is inside the file.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of the dims; validated not to overflow).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// `ne[0]`, the row length (1 for a 0-dimensional tensor).
    pub fn ne0(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: product of all dims but the first.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// The data's byte range in the file.
    pub fn range(&self) -> ByteRange {
        ByteRange {
            offset: self.offset,
            len: self.n_bytes,
        }
    }
}

/// A parsed GGUF file (header, metadata, tensor table; no tensor data).
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// `general.alignment` (default 32).
    pub alignment: u64,
    /// ABSOLUTE offset of the data section.
    pub data_offset: u64,
    /// Size of the whole file.
    pub file_size: u64,
    /// Metadata, in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    pub(super) key_index: HashMap<String, usize>,
    pub(super) tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Parse the header, metadata and tensor table from `src`, reading it
    /// through a bounded window (never the whole file, never tensor data).
    /// Never panics on malformed input.
    pub fn parse(src: &dyn ByteSource) -> Result<GgufFile, GgufError> {
        super::reader::parse(src)
    }

    /// Add the tensors of another shard of a split model (llama.cpp's
    /// gguf-split), parsed from bytes that start at `base` in the same source.
    pub fn append_shard(&mut self, shard: GgufFile, base: u64) -> Result<(), GgufError> {
        for mut t in shard.tensors {
            if self.tensor_index.contains_key(&t.name) {
                return Err(GgufError::DuplicateTensor {
                    name: t.name,
                    offset: base,
                });
            }
            t.offset = t
                .offset
                .checked_add(base)
                .ok_or_else(|| GgufError::OffsetOverflow {
                    what: format!("tensor '{}' in the shard at {base}", t.name),
                })?;
            self.tensor_index.insert(t.name.clone(), self.tensors.len());
            self.tensors.push(t);
        }
        Ok(())
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The data byte range of the tensor named `name`.
    pub fn tensor_range(&self, name: &str) -> Option<ByteRange> {
        self.tensor(name).map(TensorInfo::range)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| GgufError::WrongType {
                key: key.to_owned(),
                expected,
                found: v.type_name(),
            }),
        }
    }

    /// `key` as a non-negative integer of any width; `Ok(None)` if absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "non-negative integer", Value::as_u64)
    }

    /// `key` as an integer fitting an `i64`; `Ok(None)` if absent.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.typed(key, "integer", Value::as_i64)
    }

    /// `key` as an f32 (`F32` or `F64`); `Ok(None)` if absent.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.typed(key, "float", Value::as_f32)
    }

    /// `key` as a string; `Ok(None)` if absent.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "string", Value::as_str)
    }

    /// `key` as a bool; `Ok(None)` if absent.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "bool", Value::as_bool)
    }

    /// `key` as an array; `Ok(None)` if absent.
    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>, GgufError> {
        self.typed(key, "array", Value::as_array)
    }

    /// `general.architecture` ("llama", ...), if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}
