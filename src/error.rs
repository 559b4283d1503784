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
    /// A failure inside a compute backend (shape mismatch, allocation). Shown as it is: which
    /// backend failed is no help to a user, the message is.
    #[error("{0}")]
    Backend(String),
    /// The GPU device is gone (a driver reset, the browser reclaiming it, `device.destroy()`):
    /// nothing on it can run again. The JS API and the evaluator recognise the message's start
    /// (`GPU_LOST_PREFIX`).
    #[error("the GPU device was lost ({0}); load the model again, or use the CPU backend")]
    GpuLost(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How every `Error::GpuLost` message starts.
pub const GPU_LOST_PREFIX: &str = "the GPU device was lost";

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

/// `len` zeroed values, or an error naming `what` and its size when the memory cannot be had: a
/// wasm heap at its 4 GiB, or a machine out of memory, is an error the user can act on, not an
/// abort of the worker or the process. Zeroed by the allocator (calloc), so pages nobody writes
/// are never touched: a large KV cache costs memory only as it fills.
pub fn try_zeroed<T: bytemuck::Zeroable>(len: usize, what: impl FnOnce() -> String) -> Result<Vec<T>> {
    let size = std::mem::size_of::<T>();
    let refused = |what: String| {
        let mib = (len as u128 * size as u128) >> 20;
        Error::Other(format!(
            "out of memory: {what} needs {mib} MiB more than can be had; use a smaller model or quantization, or a smaller context or batch"
        ))
    };
    if len == 0 || size == 0 {
        return Ok(std::iter::repeat_with(T::zeroed).take(len).collect());
    }
    let Ok(layout) = std::alloc::Layout::array::<T>(len) else { return Err(refused(what())) };
    // SAFETY: the layout's size is non-zero (len > 0 and T is not zero-sized).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(refused(what()));
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `len` values of T, which
    // is what a Vec of capacity `len` frees; every byte is zero, a valid T (`Zeroable`).
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set:
/// a user sees what went wrong, not the library's stack.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other.to_string(),
    }
}
