//! wasm-chord native host: runs the wasm-chord kernel component with wasmtime.
//!
//! ```no_run
//! use wasm_chord::{FileStore, Kernel, KernelOptions, LoadOptions, GenerateOptions, Runtime};
//! # fn main() -> Result<(), wasm_chord::HostError> {
//! let kernel = Kernel::from_file("wasm-chord-kernel.wasm", &KernelOptions::default())?;
//! let mut rt = Runtime::new(&kernel, FileStore::new())?;
//! let model = rt.load(&LoadOptions::new("SmolLM2-135M-Instruct.Q4_1.gguf"))?;
//! let prompt = rt.tokenize(model, "The capital of France is", true, true)?;
//! let session = rt.new_session(model, 0)?;
//! rt.generate(session, &prompt, &GenerateOptions::default(), |piece| {
//!     print!("{}", piece.text);
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! # Ok(()) }
//! ```
//!
//! The kernel never touches files: it opens models by name through a
//! [`ModelStore`] ([`FileStore`] maps files; [`MemStore`] serves buffers).

pub mod bindings;
pub mod error;
pub mod interrupt;
pub mod kernel;
pub mod launcher;
pub mod runtime;
pub mod serve;
pub mod shard_cli;
pub mod shards;
mod state;
mod store;

pub use store::http;
pub use store::split;

pub use error::HostError;
pub use interrupt::Canceller;
pub use kernel::{default_cache_dir, Kernel, KernelOptions, DEFAULT_MAX_GUEST_MEMORY};
pub use runtime::{
    CachePolicy, CacheStats, ChatMessage, FileSummary, GenerateOptions, GenerationStats,
    KvCacheType, LoadOptions, Model, ModelInfo, Piece, PieceLogprobs, Residency, Runtime, Sampling,
    Session, ShardInfo, ShardSpec, Step, TensorTypeCount, TokenLogprob, TokenScore,
};
pub use shards::Sharded;
pub use store::{
    ByteRange, FileStore, HttpStore, MemStore, ModelStore, PathOrUrlStore, Source, StoreError,
    StoreStats,
};
