//! GuardReasoner Web's core: Llama inference (formats, tokenizer, forward pass, generation) and
//! the GuardReasoner protocol (prompt, reasoning parser, scoring). Knows nothing of JS or the
//! terminal; compiles to wasm32-unknown-unknown as well as natively.

pub mod backend;
pub mod batch;
pub mod config;
pub mod convert;
pub mod engine;
pub mod error;
pub mod format;
pub mod fuzz;
pub mod generate;
pub mod guard;
pub mod loader;
pub mod model;
pub mod session;
#[cfg(not(target_arch = "wasm32"))]
pub mod synth;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
