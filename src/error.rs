//! One error type for the core. Every failure that input (a file, a URL, a prompt) can cause is a
//! variant with a message a person can act on; nothing in the core panics on bad input.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading bytes failed (missing file, short read, network error surfaced by a byte source).
    /// The cause is part of the message and deliberately not a `source()`, so a printed chain
    /// (anyhow's `{:#}`) states it once.
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
    /// The bytes are not a valid model file of the claimed format.
    #[error("invalid model file {file}: {message}")]
    Format { file: String, message: String },
    /// The model's configuration is missing something or is not a Llama model we can run.
    #[error("unsupported model: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The prompt cannot be run as asked (empty, longer than the context).
    #[error("{0}")]
    Prompt(String),
    #[error("cancelled")]
    Cancelled,
    /// A failure inside a compute backend (shape mismatch, allocation).
    #[error("backend: {0}")]
    Backend(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn format(file: impl fmt::Display, message: impl fmt::Display) -> Self {
        Error::Format { file: file.to_string(), message: message.to_string() }
    }
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io { context: context.to_string(), cause: source }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Backend(candle_message(&e))
    }
}

/// `len` default values, or an error naming `what` and its size when the memory cannot be had
/// (`try_reserve`): a wasm heap at its 4 GiB, or a machine out of memory, is an error the user
/// can act on, not an abort of the worker or the process.
pub fn try_zeroed<T: Clone + Default>(len: usize, what: impl FnOnce() -> String) -> Result<Vec<T>> {
    let mut v = Vec::new();
    if v.try_reserve_exact(len).is_err() {
        let mib = (len as u128 * std::mem::size_of::<T>() as u128) >> 20;
        return Err(Error::Other(format!(
            "out of memory: {} needs {mib} MiB more than can be had; use a smaller model or quantization, or a smaller context or batch",
            what()
        )));
    }
    v.resize(len, T::default());
    Ok(v)
}

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set:
/// a user sees what went wrong, not the library's stack.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other.to_string(),
    }
}
