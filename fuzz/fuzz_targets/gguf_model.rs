//! A GGUF file from the network: header, metadata, the config it implies, the tokenizer built
//! from its embedded vocabulary, and every tensor loaded onto the CPU backend. Anything but a
//! clean `Err` (a panic, an allocation beyond the input's size, a hang) is a finding.
#![no_main]

use guardreasoner::backend::cpu::CpuBackend;
use guardreasoner::format::MemorySource;
use guardreasoner::loader::{OpenedModel, open_gguf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(OpenedModel { mut files, tokenizer, .. }) =
        open_gguf(Box::new(MemorySource::new("fuzz.gguf", data.to_vec())))
    else {
        return;
    };
    if let Ok(ids) = tokenizer.encode_prompt("Hello, world! <|eot_id|>") {
        let _ = tokenizer.decode(&ids);
    }
    let _ = files.load(&CpuBackend::new(None), &mut |_, _| {});
});
