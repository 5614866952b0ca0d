//! Errors of the host library.

use crate::bindings::exports::wasm_chord::runtime::inference as wit;
use crate::store::StoreError;

/// Every way a host call can fail. `Display` is one line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    /// The model file is malformed (bad magic, truncated, out-of-range tensor...).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The model is well-formed but uses something the kernel does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The layer store failed.
    #[error("{}", store_message(.0))]
    Store(StoreError),
    /// The context window is full.
    #[error("context full: {0}")]
    ContextFull(String),
    /// An argument is invalid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The guest memory budget does not allow this.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The kernel trapped; its instance was dropped and the next call gets a fresh one.
    #[error("the kernel trapped: {0}")]
    Trap(String),
    /// The call was cancelled ([`crate::Canceller`]); like a trap, the
    /// instance was dropped and the next call gets a fresh one.
    #[error("cancelled")]
    Cancelled,
    /// The call ran past the runtime's call timeout; the instance was dropped
    /// and the next call gets a fresh one.
    #[error("the kernel call exceeded its deadline of {} ms", .0.as_millis())]
    DeadlineExceeded(std::time::Duration),
    /// The kernel component could not be loaded, compiled or instantiated.
    #[error("{0}")]
    Kernel(String),
    /// A session handle whose KV cache was lost when the kernel trapped, or
    /// that belongs to another runtime or was closed.
    #[error("session is no longer valid: {0}")]
    StaleSession(String),
    /// A model handle that was closed or belongs to another runtime.
    #[error("model handle is no longer valid")]
    StaleModel,
}

/// A store error in words, one line (the `not-found` message already says
/// what could not be opened).
pub fn store_message(e: &StoreError) -> String {
    match e {
        StoreError::NotFound(m) => m.clone(),
        StoreError::OutOfRange(m) => format!("layer store: out of range: {m}"),
        StoreError::Io(m) => format!("layer store: I/O error: {m}"),
        StoreError::TooLarge(n) => format!("layer store: request of {n} bytes is too large"),
    }
}

/// The first line of an error's message (no backtraces, no context chain).
pub(crate) fn first_line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or("").trim().to_string()
}

impl From<wit::Error> for HostError {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::InvalidModel(m) => HostError::InvalidModel(m),
            wit::Error::Unsupported(m) => HostError::Unsupported(m),
            wit::Error::Store(s) => HostError::Store(s),
            wit::Error::ContextFull(m) => HostError::ContextFull(m),
            wit::Error::InvalidInput(m) => HostError::InvalidInput(m),
            wit::Error::OutOfMemory(m) => HostError::OutOfMemory(m),
        }
    }
}

/// A short, one-line reason for a wasmtime error: the trap code or the
/// root cause, without the wasm backtrace.
pub(crate) fn trap_reason(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        let line = first_line(trap);
        return line
            .strip_prefix("wasm trap: ")
            .unwrap_or(&line)
            .to_string();
    }
    let root = first_line(&e.root_cause());
    if root.is_empty() {
        first_line(e)
    } else {
        root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        let e: HostError =
            wit::Error::InvalidModel("GGUF magic is \"PK\\x03\\x04\", expected \"GGUF\"".into())
                .into();
        assert_eq!(
            e.to_string(),
            "invalid model: GGUF magic is \"PK\\x03\\x04\", expected \"GGUF\""
        );
        let e = HostError::Store(StoreError::NotFound(
            "cannot open 'x.gguf': No such file or directory".into(),
        ));
        assert_eq!(
            e.to_string(),
            "cannot open 'x.gguf': No such file or directory"
        );
        let e = HostError::Store(StoreError::TooLarge(5));
        assert_eq!(
            e.to_string(),
            "layer store: request of 5 bytes is too large"
        );
        assert_eq!(
            HostError::Trap("unreachable".into()).to_string(),
            "the kernel trapped: unreachable"
        );
    }
}
