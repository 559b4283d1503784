//! A safetensors file from the network: the header index (offsets, shapes, dtypes checked
//! against the file) and every tensor it names read and widened to f32.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guardreasoner::fuzz::safetensors_index(data));
