//! What the user chooses about the backend (device, quantization, GPU kernel), from each front
//! door's words to one `BackendChoice`.

use crate::backend::cpu_blocks;
#[cfg(feature = "gpu")]
use crate::backend::gpu::GpuQuant;
use crate::backend::gpu::LinearKernel;
use crate::error::{Error, Result};
use candle_core::quantized::GgmlDType;
use serde::Serialize;

/// The KV cache, in tokens, of runs whose requests are not known at load (the CLI's `predict`
/// and `bench`, the JS API's `context`).
pub const DEFAULT_CONTEXT: usize = 4096;

/// The value a user's word names in a table of words (case and spaces aside), the first word of
/// each value being its name: `Device::WORDS`, `Quant::WORDS`, `convert::Target::WORDS`.
pub fn word_value<T: Copy>(words: &[(&'static str, T)], word: &str) -> Option<T> {
    let word = word.trim().to_ascii_lowercase();
    words.iter().find(|(w, _)| *w == word).map(|&(_, value)| value)
}

/// A value's name: its first word in the table.
pub fn word_name<T: PartialEq>(words: &[(&'static str, T)], value: &T) -> &'static str {
    words.iter().find(|(_, v)| v == value).map_or("", |(w, _)| w)
}

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The GPU when one can be set up, else the CPU (the reason is kept as the fallback note).
    Auto,
    Cpu,
    /// WebGPU: wgpu over Vulkan natively, the browser's WebGPU in wasm.
    Gpu,
}

impl Device {
    /// Every word the user may say for a device (case and spaces aside), the first of each
    /// device its name. The JS API's words (www/protocol.js `BACKENDS`) are checked against
    /// these by tests/browser/vocabulary.test.mjs.
    pub const WORDS: [(&'static str, Device); 4] =
        [("auto", Device::Auto), ("cpu", Device::Cpu), ("gpu", Device::Gpu), ("webgpu", Device::Gpu)];

    /// The user's word: `auto`, `cpu`, `gpu` (or `webgpu`).
    pub fn parse(word: &str) -> Result<Self> {
        word_value(&Self::WORDS, word).ok_or_else(|| {
            let word = word.trim().to_ascii_lowercase();
            Error::Other(format!("unknown backend `{word}`: expected auto, cpu or gpu (webgpu)"))
        })
    }

    pub fn name(self) -> &'static str {
        word_name(&Self::WORDS, &self)
    }
}

/// How float weights are stored once loaded. Quantized GGUF weights keep their own blocks
/// whatever this says (on the GPU they become its 8-bit or 4-bit blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    /// Keep the file's types, with f32 math (exact): bf16 stays bf16 on the CPU; the GPU holds
    /// f32 (f16 as packed f16 pairs).
    None,
    /// 8-bit blocks of 32 (GGML Q8_0 on the CPU): near-lossless, about a quarter of f32.
    Q8,
    /// 4-bit blocks of 32 (GGML Q4_0 on the CPU): about an eighth of f32, some accuracy cost.
    Q4,
}

impl Quant {
    /// Every word the user may say for a quantization (case and spaces aside), the first of
    /// each its name (checked against www/protocol.js `QUANTS` as `Device::WORDS` is).
    pub const WORDS: [(&'static str, Quant); 6] = [
        ("none", Quant::None),
        ("f32", Quant::None),
        ("q8", Quant::Q8),
        ("q8_0", Quant::Q8),
        ("q4", Quant::Q4),
        ("q4_0", Quant::Q4),
    ];

    /// The user's word: `none` (or `f32`), `q8` (or `q8_0`), `q4` (or `q4_0`).
    pub fn parse(word: &str) -> Result<Self> {
        word_value(&Self::WORDS, word).ok_or_else(|| {
            let word = word.trim().to_ascii_lowercase();
            Error::Other(format!("unknown quantization `{word}`: expected none (f32), q8 (q8_0) or q4 (q4_0)"))
        })
    }

    pub fn name(self) -> &'static str {
        word_name(&Self::WORDS, &self)
    }

    pub(super) fn cpu(self) -> Option<GgmlDType> {
        match self {
            Quant::None => None,
            Quant::Q8 => Some(GgmlDType::Q8_0),
            Quant::Q4 => Some(GgmlDType::Q4_0),
        }
    }

    #[cfg(feature = "gpu")]
    pub(super) fn gpu(self) -> GpuQuant {
        match self {
            Quant::None => GpuQuant::F32,
            Quant::Q8 => GpuQuant::Q8,
            Quant::Q4 => GpuQuant::Q4,
        }
    }
}

/// The GPU's matrix kernel, by the user's word: `auto`, `cooperative`, `row-per-thread`.
pub fn parse_linear_kernel(word: &str) -> Result<LinearKernel> {
    match word.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(LinearKernel::Auto),
        "cooperative" => Ok(LinearKernel::Cooperative),
        "row-per-thread" | "rows" => Ok(LinearKernel::RowPerThread),
        other => Err(Error::Other(format!(
            "unknown GPU matrix kernel `{other}`: expected auto, cooperative or row-per-thread"
        ))),
    }
}

/// Everything the user chooses about the backend: one value every front door builds from its
/// own words (`Device::parse`, `Quant::parse`, `parse_linear_kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChoice {
    pub device: Device,
    pub quant: Quant,
    pub linear: LinearKernel,
    /// Let the GPU's matrix kernel multiply in f16 where the adapter offers `shader-f16`
    /// (`GpuOptions::f16`); off, every product is f32.
    pub gpu_f16: bool,
    /// Stands in for the GPU adapter's buffer binding limit when lower (tests of what a small
    /// GPU refuses); None: the adapter's own.
    pub gpu_max_binding_bytes: Option<u64>,
    /// Test hook: the load asks the GPU for one buffer over its size limit, which it refuses
    /// as it would one it has no memory for (also `GUARDREASONER_GPU_REFUSE_BUFFER=1`).
    pub gpu_refuse_buffer: bool,
}

impl Default for BackendChoice {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            quant: Quant::None,
            linear: LinearKernel::Auto,
            gpu_f16: true,
            gpu_max_binding_bytes: None,
            gpu_refuse_buffer: false,
        }
    }
}

/// The quantized CPU kernel GUARDREASONER_CPU_KERNEL=avx512-vnni|avx2|portable forces (for
/// comparing them), if set; unset, the fastest this CPU has runs.
pub fn cpu_kernel_from_env() -> Result<Option<cpu_blocks::Kernel>> {
    let Some(name) = std::env::var_os("GUARDREASONER_CPU_KERNEL") else { return Ok(None) };
    let name = name.to_string_lossy();
    let kernel = cpu_blocks::Kernel::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
        Error::Other(format!(
            "GUARDREASONER_CPU_KERNEL={name} is not a kernel: use one of {}",
            cpu_blocks::Kernel::ALL.map(|k| k.name()).join(", ")
        ))
    })?;
    Ok(Some(kernel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn every_spelling_of_a_choice_maps_to_one_value() {
        for (words, quant) in [
            (["none", "f32", "F32"], Quant::None),
            (["q8", "q8_0", "Q8_0"], Quant::Q8),
            (["q4", "q4_0", " q4 "], Quant::Q4),
        ] {
            for word in words {
                assert_eq!(Quant::parse(word).unwrap(), quant, "{word}");
            }
        }
        for (word, device) in [
            ("cpu", Device::Cpu),
            ("gpu", Device::Gpu),
            ("webgpu", Device::Gpu),
            ("WebGPU", Device::Gpu),
            ("auto", Device::Auto),
        ] {
            assert_eq!(Device::parse(word).unwrap(), device, "{word}");
        }
        assert_eq!(parse_linear_kernel("row-per-thread").unwrap(), LinearKernel::RowPerThread);
    }

    #[test]
    pub(super) fn unknown_words_are_refused_by_name() {
        for (err, word) in [
            (Quant::parse("q5").unwrap_err(), "q5"),
            (Quant::parse("").unwrap_err(), ""),
            (Device::parse("tpu").unwrap_err(), "tpu"),
            (parse_linear_kernel("fast").unwrap_err(), "fast"),
        ] {
            assert!(err.to_string().contains(&format!("`{word}`")), "{err}");
        }
    }
}
