//! A GGUF file from the network: header, metadata, the config it implies, the tokenizer built
//! from its embedded vocabulary, and every tensor loaded onto the CPU backend. Anything but a
//! clean `Err` (a panic, an allocation beyond the input's size, a hang) is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guardreasoner::fuzz::gguf_model(data));
