//! Bad input gives a clear error, never a panic: truncated or corrupt files, wrong magic, ranges
//! past the end, unknown dtypes, shapes that disagree with the config, impossible prompts.

mod common;

use common::*;
use guardreasoner::backend::cpu::CpuBackend;
use guardreasoner::engine::Engine;
use guardreasoner::loader::OpenedModel;

fn err_text<T>(r: guardreasoner::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn micro_gguf_bytes() -> Vec<u8> {
    let freqs = vec![1.0; MICRO_HEAD_DIM / 2];
    micro_gguf(&micro_tensors(1), candle_core::quantized::GgmlDType::Q8_0, &freqs)
}

#[test]
fn truncated_gguf_at_every_region() {
    let bytes = micro_gguf_bytes();
    // Cut inside the magic, the metadata, the tensor index and the tensor data.
    // (The file ends in alignment padding, so cut 40 bytes: into the last tensor.)
    for cut in [3, 40, bytes.len() / 10, bytes.len() / 2, bytes.len() - 40] {
        let msg = err_text(open_micro_gguf(bytes[..cut].to_vec()));
        assert!(msg.contains("micro.gguf"), "cut at {cut}: message names the file: {msg}");
    }
}

#[test]
fn truncated_tensor_data_names_the_problem() {
    let bytes = micro_gguf_bytes();
    let msg = err_text(open_micro_gguf(bytes[..bytes.len() - 100].to_vec()));
    assert!(msg.contains("past the end") || msg.contains("remaining"), "{msg}");
}

#[test]
fn wrong_magic() {
    let mut bytes = micro_gguf_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(err_text(open_micro_gguf(bytes)).contains("not a GGUF file"));
    let html = b"<!DOCTYPE html><html><body>404 Not Found</body></html>".to_vec();
    assert!(err_text(open_micro_gguf(html.clone())).contains("not a GGUF file"));
    assert!(err_text(open_micro_hf(html, &micro_config_json())).contains("micro.safetensors"));
}

#[test]
fn unknown_ggml_type() {
    let mut bytes = micro_gguf_bytes();
    // The first tensor's type field follows its name and dims; corrupt every u32 equal to Q8_0's
    // id (8) in the tensor index region to an unassigned id.
    let needle = b"token_embd.weight";
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("tensor name in file") + needle.len();
    let type_at = at + 4 + 2 * 8; // n_dims u32, two u64 dims
    bytes[type_at..type_at + 4].copy_from_slice(&250u32.to_le_bytes());
    let msg = err_text(open_micro_gguf(bytes));
    assert!(msg.contains("micro.gguf"), "{msg}");
}

fn safetensors_with_header(header: serde_json::Value, data_len: usize) -> Vec<u8> {
    let h = header.to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data_len));
    out
}

#[test]
fn safetensors_range_past_end() {
    let bytes = safetensors_with_header(
        serde_json::json!({"model.norm.weight": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}}),
        64,
    );
    let msg = err_text(open_micro_hf(bytes, &micro_config_json()));
    assert!(msg.contains("past the end") || msg.contains("truncated"), "{msg}");
}

/// Bytes after the last tensor (a resume answered with the whole file appends it to the part
/// already there) are refused, not read as weights.
#[test]
fn safetensors_with_bytes_after_its_tensors() {
    let header = serde_json::json!({"model.norm.weight": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}});
    let msg = err_text(open_micro_hf(safetensors_with_header(header.clone(), 129), &micro_config_json()));
    assert!(msg.contains("but its tensors end at byte"), "{msg}");
    // Exactly covered, the file gets past the reader (to the next check: missing tensors).
    let msg = err_text(open_micro_hf(safetensors_with_header(header, 128), &micro_config_json()));
    assert!(!msg.contains("tensors end at byte"), "{msg}");
}

#[test]
fn safetensors_unknown_dtype_and_bad_header() {
    let bytes =
        safetensors_with_header(serde_json::json!({"x": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}), 16);
    assert!(err_text(open_micro_hf(bytes, &micro_config_json())).contains("I64"));
    let bytes =
        safetensors_with_header(serde_json::json!({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}), 8);
    assert!(err_text(open_micro_hf(bytes, &micro_config_json())).contains("needs"));
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert!(err_text(open_micro_hf(huge, &micro_config_json())).contains("header length"));
    let mut not_json = 5u64.to_le_bytes().to_vec();
    not_json.extend_from_slice(b"{{{{{");
    assert!(err_text(open_micro_hf(not_json, &micro_config_json())).contains("JSON"));
}

#[test]
fn shape_that_disagrees_with_config() {
    let tensors = micro_tensors(1);
    let mut config = micro_config_json();
    config["intermediate_size"] = serde_json::json!(MICRO_FF * 2);
    let msg = err_text(open_micro_hf(safetensors_bf16(&tensors), &config));
    assert!(msg.contains("gate_proj") && msg.contains("config implies"), "{msg}");
    // A missing tensor.
    let fewer: Vec<_> = tensors.iter().filter(|(n, _, _)| !n.contains("layers.1.mlp.up_proj")).cloned().collect();
    assert!(err_text(open_micro_hf(safetensors_bf16(&fewer), &micro_config_json())).contains("missing"));
}

#[test]
fn unsupported_config() {
    let mut config = micro_config_json();
    config["model_type"] = serde_json::json!("mistral");
    assert!(err_text(open_micro_hf(safetensors_bf16(&micro_tensors(1)), &config)).contains("only Llama"));
    let mut config = micro_config_json();
    config["num_key_value_heads"] = serde_json::json!(3);
    assert!(err_text(open_micro_hf(safetensors_bf16(&micro_tensors(1)), &config)).contains("KV heads"));
    assert!(err_text(guardreasoner::config::LlamaConfig::from_hf_json("{not json", None)).contains("config.json"));
}

/// transformers 5's `rope_parameters` is read, and a malformed one is an error, never dropped
/// (llama3 scaling silently lost would change every long-context answer).
#[test]
fn rope_parameters_read_or_refused() {
    use guardreasoner::config::LlamaConfig;
    let with = |params: serde_json::Value| {
        let mut config = micro_config_json();
        config.as_object_mut().unwrap().remove("rope_theta");
        config.as_object_mut().unwrap().remove("rope_scaling");
        config["rope_parameters"] = params;
        LlamaConfig::from_hf_json(&config.to_string(), None)
    };
    let llama3 = serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let cfg = with(llama3.clone()).unwrap();
    assert_eq!(cfg.rope_theta, 500000.0);
    assert_eq!(cfg.rope_scaling.as_ref().map(|s| s.factor), Some(32.0));
    let mut bad = llama3.clone();
    bad["factor"] = serde_json::json!("32");
    assert!(err_text(with(bad)).contains("rope_parameters"));
    let mut bad = llama3.clone();
    bad["rope_theta"] = serde_json::json!("5e5");
    assert!(err_text(with(bad)).contains("rope_theta"));
    let mut bad = llama3;
    bad["high_freq_factor"] = serde_json::json!(1.0);
    assert!(err_text(with(bad)).contains("high_freq_factor > low_freq_factor"));
    assert!(err_text(with(serde_json::json!([1, 2]))).contains("expected an object"));
}

fn micro_engine(context: usize) -> (Engine<CpuBackend>, guardreasoner::tokenizer::TextTokenizer) {
    let OpenedModel { mut files, tokenizer, .. } =
        open_micro_hf(safetensors_bf16(&micro_tensors(1)), &micro_config_json()).unwrap();
    let backend = CpuBackend::new(None);
    let weights = files.load(&backend, &mut |_, _| {}).unwrap();
    (Engine::new(backend, files.config.clone(), weights, context, 1, 0).unwrap(), tokenizer)
}

#[test]
fn empty_prompt_too_long_prompt_and_bad_ids() {
    let (mut e, tok) = micro_engine(MICRO_CONTEXT);
    assert!(err_text(e.prefill(&[])).contains("empty"));
    // Only BOS for an empty text: a valid one-token prompt.
    assert_eq!(tok.encode_prompt("").unwrap(), vec![256]);
    let long = tok.encode_prompt(&"x".repeat(MICRO_CONTEXT + 5)).unwrap();
    let msg = err_text(e.prefill(&long));
    assert!(msg.contains("context"), "{msg}");
    assert!(err_text(e.prefill(&[1, 2, 999_999])).contains("vocabulary"));
    // Still usable.
    assert!(e.prefill(&[256, 3, 4]).is_ok());
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let (mut e, _) = micro_engine(16);
    let opts =
        guardreasoner::generate::GenerateOptions { max_new_tokens: 100, stop_ids: vec![], keep_first_logits: false };
    let out =
        pollster::block_on(guardreasoner::generate::generate(&mut e, &[256, 1, 2, 3], &opts, &|| false, &mut |_| {
            Ok(())
        }))
        .unwrap();
    assert_eq!(out.stop, guardreasoner::generate::StopReason::ContextFull);
    assert_eq!(4 + out.tokens.len(), 16 + 1, "fills the cache, plus the last predicted token");
}

/// A file whose weights are NaN (a broken conversion) fails with a message that says so, not with
/// an argmax error from the inside of the engine.
#[test]
fn weights_that_are_not_numbers_are_named() {
    let mut tensors = micro_tensors(1);
    let norm = tensors.iter_mut().find(|(name, _, _)| name == "model.norm.weight").unwrap();
    norm.2.fill(f32::NAN);
    let OpenedModel { mut files, .. } = open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap();
    let backend = CpuBackend::new(None);
    let weights = files.load(&backend, &mut |_, _| {}).unwrap();
    let mut e = Engine::new(backend, files.config.clone(), weights, MICRO_CONTEXT, 1, 0).unwrap();
    let opts =
        guardreasoner::generate::GenerateOptions { max_new_tokens: 4, stop_ids: vec![], keep_first_logits: false };
    let msg = err_text(pollster::block_on(guardreasoner::generate::generate(
        &mut e,
        &[256, 1, 2],
        &opts,
        &|| false,
        &mut |_| Ok(()),
    )));
    assert!(msg.contains("is NaN") && msg.contains("model file"), "{msg}");
}

#[test]
fn missing_model_path() {
    let msg = err_text(guardreasoner::loader::open_path(std::path::Path::new("/nonexistent/model.gguf")));
    assert!(msg.contains("does not exist"), "{msg}");
}

/// A file that claims more than memory can hold (a 1 EiB tensor behind a source that says it has
/// the bytes) is an out-of-memory error from `try_reserve`, not an abort of the process.
#[test]
fn an_allocation_that_cannot_be_had_is_an_error() {
    use guardreasoner::format::ByteSource;
    struct Huge;
    impl ByteSource for Huge {
        fn len(&self) -> u64 {
            1 << 61
        }
        fn read_at(&mut self, _: u64, _: &mut [u8]) -> guardreasoner::Result<()> {
            Ok(())
        }
        fn name(&self) -> &str {
            "huge.gguf"
        }
    }
    let msg = err_text(Huge.read_vec(0, 1 << 60));
    assert!(msg.contains("out of memory") && msg.contains("huge.gguf"), "{msg}");
}

/// Inputs the fuzzers found (scripts/fuzz.sh), kept as they were found: each must be a clean
/// error. `gguf-shape-overflow.gguf`: a tensor whose dimensions multiply past u64 (a panic in
/// the element count before).
#[test]
fn fuzzer_findings_are_clean_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/gguf_model");
    let bytes = std::fs::read(dir.join("gguf-shape-overflow.gguf")).unwrap();
    let source = guardreasoner::format::MemorySource::new("gguf-shape-overflow.gguf", bytes);
    let msg = err_text(guardreasoner::loader::open_gguf(Box::new(source)));
    assert!(msg.contains("more elements than can exist"), "{msg}");
}
