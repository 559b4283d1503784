//! `config.json` and `generation_config.json` (the input split at its first NUL byte), and the
//! rotary frequencies the parsed config implies.
#![no_main]

use guardreasoner::config::LlamaConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (config, generation) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let (Ok(config), Ok(generation)) = (std::str::from_utf8(config), generation.map(std::str::from_utf8).transpose())
    else {
        return;
    };
    if let Ok(parsed) = LlamaConfig::from_hf_json(config, generation)
        && parsed.head_dim <= 1 << 16
    {
        let _ = parsed.rope_inv_freq();
    }
});
