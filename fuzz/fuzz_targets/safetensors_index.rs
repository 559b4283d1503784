//! A safetensors file from the network: the header index (offsets, shapes, dtypes checked
//! against the file) and every tensor it names read and widened to f32.
#![no_main]

use guardreasoner::format::safetensors::read_index;
use guardreasoner::format::{HostTensor, MemorySource, TensorIndex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut source = MemorySource::new("fuzz.safetensors", data.to_vec());
    let mut index = TensorIndex::default();
    if read_index(&mut source, 0, &mut index).is_err() {
        return;
    }
    for entry in index.tensors.values() {
        if let Ok(tensor) = HostTensor::read(&mut source, entry) {
            let _ = tensor.to_f32();
        }
    }
});
