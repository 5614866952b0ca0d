//! GGUF (v2 and v3): a bounded parser and a writer.
//!
//! [`GgufFile::parse`] reads the header, metadata and tensor table through a
//! [`ByteSource`](crate::store::ByteSource) in bounded windows (files may be
//! larger than the wasm32 address space) and validates everything before
//! allocating; it never reads tensor data and never panics on malformed
//! input. [`GgufWriter`] builds files for tests and synthetic models.
//!
//! Caps: [`MAX_STRING_LEN`], [`MAX_KEY_LEN`], [`MAX_TENSOR_NAME_LEN`],
//! [`MAX_ARRAY_LEN`], [`MAX_ARRAY_DEPTH`], [`MAX_DIMS`]; counts and lengths
//! are also bounded by the bytes left in the file.

pub mod error;
pub mod file;
pub mod reader;
pub mod value;
pub mod writer;

#[cfg(test)]
mod tests;

pub use error::GgufError;
pub use file::{GgufFile, TensorInfo};
pub use reader::{
    DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_DIMS, MAX_KEY_LEN,
    MAX_STRING_LEN, MAX_TENSOR_NAME_LEN, READ_WINDOW,
};
pub use value::Value;
pub use writer::{declared_size, GgufWriter};
