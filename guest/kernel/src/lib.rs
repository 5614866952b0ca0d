//! The wasm-chord inference kernel.
//!
//! Plain Rust with no WIT in it: it compiles natively (fast unit tests,
//! profiling) and to wasm32 (the component in `guest/component` wraps it).
//! Model bytes come only through [`store::ByteSource`].

pub mod error;
pub mod eval;
pub mod ggml_type;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod relay;
pub mod sample;
pub mod store;
pub mod synth;
pub mod tokenizer;

pub use error::{Error, Result};
