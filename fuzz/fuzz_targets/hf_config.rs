//! `config.json` and `generation_config.json` (the input split at its first NUL byte), and the
//! rotary frequencies the parsed config implies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guardreasoner::fuzz::hf_config(data));
