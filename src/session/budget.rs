//! The memory budget: a KV cache and the working memory of a prompt read at that length must fit
//! beside the weights, checked before anything loads.

use crate::backend::cpu::CpuBackend;
use crate::engine::{Engine, PREFILL_CHUNK, PREFIX_MAX};
use crate::error::{Error, Result};

/// Most bytes the KV cache may take where memory is known to be tight: wasm32 addresses 4 GiB,
/// which the weights on the CPU share.
#[cfg(target_arch = "wasm32")]
pub(super) const WASM_MEMORY: u64 = 4 << 30;

/// Memory the wasm heap keeps beside the weights, the cache and a forward pass's working memory:
/// the tokenizer, the text, the allocator's slack.
#[cfg(target_arch = "wasm32")]
pub(super) const WASM_RESERVE: u64 = 128 << 20;

/// Refuses, before anything loads, a KV cache that cannot be held together with the working
/// memory of a prompt read at that length (`forward_scratch_bytes`): in wasm the two and the
/// CPU weights share 4 GiB; natively they must fit the memory the system has available beside
/// the weights. Names the sizes and the options that shrink them. (The GPU's limits are checked
/// when its cache is allocated.)
pub(super) fn check_cache_budget(
    config: &crate::config::LlamaConfig,
    weight_bytes: u64,
    context: usize,
    batch: usize,
) -> Result<()> {
    #[cfg(target_arch = "wasm32")]
    let limit = Some(WASM_MEMORY.saturating_sub(weight_bytes.min(WASM_MEMORY) + WASM_RESERVE));
    // Natively: the memory the system says is available (Linux), less the weights.
    #[cfg(not(target_arch = "wasm32"))]
    let limit: Option<u64> = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((kib * 1024).saturating_sub(weight_bytes))
    });
    match limit {
        Some(limit) => check_budget_within(config, context, batch, limit),
        None => Ok(()),
    }
}

/// `check_cache_budget` against a known number of bytes.
pub(super) fn check_budget_within(
    config: &crate::config::LlamaConfig,
    context: usize,
    batch: usize,
    limit: u64,
) -> Result<()> {
    // The cache and a prompt chunk's working memory at `context` positions.
    let need = |context: usize| {
        let positions = context.min(config.max_position_embeddings).max(1) as u64;
        let chunk = positions.min(PREFILL_CHUNK as u64);
        let scratch = crate::backend::cpu::forward_scratch_bytes(config, positions, chunk, batch as u64);
        (Engine::<CpuBackend>::cache_bytes(config, context, batch, PREFIX_MAX), scratch)
    };
    let fits = |context: usize| {
        let (cache, scratch) = need(context);
        cache.saturating_add(scratch) <= limit
    };
    if fits(context) {
        return Ok(());
    }
    // The longest context that fits at this batch (both needs grow with it).
    let (mut lo, mut hi) = (0, context); // fits(lo) or lo == 0; !fits(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { lo = mid } else { hi = mid }
    }
    let advice = match lo {
        0 => "not even a context of 1 fits beside these weights: use a smaller quantization (--quant q4; the quant load option in JS) or the GPU".to_string(),
        lo => format!("a context of at most {lo} tokens fits at this batch"),
    };
    let (cache, scratch) = need(context);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(Error::Other(format!(
        "a KV cache of {context} tokens for {batch} conversation{} needs {:.2} GiB, and reading a prompt that long {:.2} GiB more, more than the {:.2} GiB of memory left beside the weights; lower the context or the batch (--context, --batch; the context and batch load options in JS): {advice}",
        if batch == 1 { "" } else { "s" },
        gib(cache),
        gib(scratch),
        gib(limit)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The KV cache alone may fit where the cache and the working memory of a prompt read at that
    /// length do not: the budget counts both and says so, naming the knobs.
    #[test]
    pub(super) fn the_memory_budget_counts_a_prompts_working_memory_beside_the_cache() {
        let config = crate::config::LlamaConfig::from_hf_json(&crate::synth::hf_config().to_string(), None).unwrap();
        let context = 16384;
        let cache = Engine::<CpuBackend>::cache_bytes(&config, context, 1, PREFIX_MAX);
        let scratch = crate::backend::cpu::forward_scratch_bytes(&config, context as u64, PREFILL_CHUNK as u64, 1);
        // A 128-row chunk's layer activations (its 3 x 8192 feed-forward values a row)
        // dominate: attention holds one head's scores per thread, never a (heads, rows,
        // positions) tensor of them.
        assert!(scratch > 4 * 128 * 3 * 8192 && scratch < 32 * 128 * 16384 * 4 / 4, "{scratch}");
        assert!(check_budget_within(&config, context, 1, cache + scratch).is_ok());
        let msg = check_budget_within(&config, context, 1, cache + scratch / 2).unwrap_err().to_string();
        assert!(msg.contains("a KV cache of 16384 tokens for 1 conversation needs 1.0"), "{msg}");
        assert!(msg.contains("reading a prompt that long 0.") && msg.contains("--context, --batch"), "{msg}");
        // What would fit: the longest context within the limit, and one more position is over it.
        let most: usize = msg.rsplit_once("at most ").unwrap().1.split(' ').next().unwrap().parse().unwrap();
        assert!(msg.ends_with(&format!("a context of at most {most} tokens fits at this batch")), "{msg}");
        assert!(check_budget_within(&config, most, 1, cache + scratch / 2).is_ok());
        assert!(check_budget_within(&config, most + 1, 1, cache + scratch / 2).is_err());
        let none = check_budget_within(&config, 4096, 1, 1 << 20).unwrap_err().to_string();
        assert!(none.contains("not even a context of 1 fits") && none.contains("--quant q4"), "{none}");
        // A context that fits, and a batch that does not.
        assert!(check_budget_within(&config, 4096, 1, cache + scratch / 2).is_ok());
        assert!(check_budget_within(&config, 4096, 16, cache + scratch / 2).is_err());
    }
}
