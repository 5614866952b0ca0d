//! Errors of the GGUF parser.
//!
//! Every variant carries enough context to find the problem in the file:
//! the metadata key, the tensor name and/or the byte offset involved.

use crate::ggml_type::GgmlType;
use crate::store::StoreError;
use thiserror::Error;

/// Why a GGUF file could not be parsed (or a metadata value not read).
#[derive(Clone, Debug, Error, PartialEq)]
pub enum GgufError {
    /// The byte source failed (or returned fewer bytes than requested).
    #[error("store read of {len} bytes at offset {offset} failed: {source}")]
    Store {
        offset: u64,
        len: u64,
        #[source]
        source: StoreError,
    },
    /// The file does not start with `GGUF`.
    #[error(
        "bad magic: expected \"GGUF\" (47 47 55 46), found {found:02x?} ({:?})",
        String::from_utf8_lossy(found)
    )]
    BadMagic { found: [u8; 4] },
    /// A GGUF version other than 2 or 3.
    #[error("unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { version: u32 },
    /// The file ends before `what` could be read completely.
    #[error("truncated file: reading {what} at offset {offset} needs {need} bytes, only {available} remain")]
    Truncated {
        what: String,
        offset: u64,
        need: u64,
        available: u64,
    },
    /// A string or array length is beyond the parser's caps
    /// (see [`MAX_STRING_LEN`](super::MAX_STRING_LEN) and friends).
    #[error("{what} at offset {offset}: length {len} exceeds the limit of {limit}")]
    LengthTooLarge {
        what: String,
        offset: u64,
        len: u64,
        limit: u64,
    },
    /// The header claims more kv pairs or tensors than the file could hold.
    #[error("header claims {count} {what}, but the {available} bytes after the header can hold at most {max}")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        max: u64,
        available: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    /// A metadata value type id outside 0..=12.
    #[error("key '{key}': unknown value type {ty} at offset {offset}")]
    UnknownValueType { key: String, ty: u32, offset: u64 },
    /// A bool byte other than 0 or 1.
    #[error("key '{key}': bool byte {byte} at offset {offset} is neither 0 nor 1")]
    InvalidBool { key: String, byte: u8, offset: u64 },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`](super::MAX_ARRAY_DEPTH).
    #[error("key '{key}': arrays nested deeper than {max} levels at offset {offset}")]
    NestingTooDeep {
        key: String,
        offset: u64,
        max: usize,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key '{key}' at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },
    /// The same tensor name appears twice.
    #[error("duplicate tensor name '{name}' at offset {offset}")]
    DuplicateTensor { name: String, offset: u64 },
    /// More than [`MAX_DIMS`](super::MAX_DIMS) dimensions.
    #[error("tensor '{tensor}': {n_dims} dimensions at offset {offset} (at most {max})")]
    TooManyDims {
        tensor: String,
        n_dims: u32,
        max: u32,
        offset: u64,
    },
    /// A dimension of zero elements.
    #[error("tensor '{tensor}': dimension {index} is zero (dims {dims:?})")]
    ZeroDim {
        tensor: String,
        index: usize,
        dims: Vec<u64>,
    },
    /// The element count does not fit in an `i64`.
    #[error("tensor '{tensor}': element count of dims {dims:?} overflows")]
    ElementCountOverflow { tensor: String, dims: Vec<u64> },
    /// The byte size of the tensor does not fit in a `u64`.
    #[error("tensor '{tensor}': byte size of {ty} dims {dims:?} overflows")]
    SizeOverflow {
        tensor: String,
        ty: GgmlType,
        dims: Vec<u64>,
    },
    /// A ggml type id this kernel does not know.
    #[error("tensor '{tensor}': unknown ggml type id {id} at offset {offset}")]
    UnknownGgmlType {
        tensor: String,
        id: u32,
        offset: u64,
    },
    /// `ne[0]` is not a whole number of blocks of the tensor's type.
    #[error("tensor '{tensor}': row of {ne0} elements is not a whole number of {ty} blocks of {block_size}")]
    PartialBlock {
        tensor: String,
        ne0: u64,
        ty: GgmlType,
        block_size: u64,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment = {value} is not a nonzero power of two")]
    BadAlignment { value: u64 },
    /// A metadata value has another type than the one asked for.
    #[error("key '{key}': expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A tensor's (relative) data offset is not a multiple of the alignment.
    #[error("tensor '{tensor}': data offset {offset} (relative) is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    /// A tensor's data extends past the end of the file.
    #[error("tensor '{tensor}': data at offset {offset} of {size} bytes extends past the end of the file ({file_size} bytes)")]
    TensorOutOfBounds {
        tensor: String,
        offset: u64,
        size: u64,
        file_size: u64,
    },
    /// The metadata decodes to more memory than the budget allows.
    #[error("key '{key}': the metadata decodes to more than {limit} bytes")]
    MetadataTooLarge { key: String, limit: u64 },
    /// Two tensors' data overlap (llama.cpp requires them laid out in turn).
    #[error("tensors '{first}' and '{second}': data overlap at offset {offset}")]
    OverlappingTensors {
        first: String,
        second: String,
        offset: u64,
    },
    /// Offset arithmetic overflows a `u64`.
    #[error("{what}: offset arithmetic overflows")]
    OffsetOverflow { what: String },
}

impl GgufError {
    /// Add `ctx` ("key 'x'", "tensor #3") to the location of errors that
    /// were raised by the low-level reader without it.
    pub(crate) fn in_context(self, ctx: impl FnOnce() -> String) -> Self {
        match self {
            GgufError::Truncated {
                what,
                offset,
                need,
                available,
            } => GgufError::Truncated {
                what: format!("{what} of {}", ctx()),
                offset,
                need,
                available,
            },
            GgufError::LengthTooLarge {
                what,
                offset,
                len,
                limit,
            } => GgufError::LengthTooLarge {
                what: format!("{what} of {}", ctx()),
                offset,
                len,
                limit,
            },
            GgufError::InvalidUtf8 { what, offset } => GgufError::InvalidUtf8 {
                what: format!("{what} of {}", ctx()),
                offset,
            },
            other => other,
        }
    }
}

impl From<GgufError> for crate::Error {
    fn from(e: GgufError) -> Self {
        match e {
            GgufError::Store { source, .. } => crate::Error::Store(source),
            GgufError::UnsupportedVersion { .. } => crate::Error::Unsupported(e.to_string()),
            other => crate::Error::InvalidModel(other.to_string()),
        }
    }
}
