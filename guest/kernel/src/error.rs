//! The kernel's error type; one variant per WIT `error` case.

use crate::store::StoreError;
use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, Error, PartialEq)]
pub enum Error {
    /// The model file is malformed.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// Well-formed, but not supported by this kernel.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The layer store failed.
    #[error("layer store: {0}")]
    Store(#[from] StoreError),
    /// The context window is full.
    #[error("context full: {0}")]
    ContextFull(String),
    /// An argument is invalid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The guest memory budget does not allow this.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
}
