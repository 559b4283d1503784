//! `convert` against llama.cpp's own converter and against our loader. On the two tiny golden
//! models, the F32, F16 and Q8_0 files it writes are byte for byte the ones llama.cpp's
//! `convert_hf_to_gguf.py` wrote (tests/fixtures/tiny/NAME.json keeps the sha256 of every
//! tensor, every metadata pair and the whole file); and a converted file runs as the folder it
//! came from does with the same quantization on load.

mod common;

use candle_core::quantized::GgmlDType;
use common::tiny::{golden, tiny_folder};
use guardreasoner::backend::cpu::CpuBackend;
use guardreasoner::convert::{Target, TokenizerSource, convert};
use guardreasoner::engine::Engine;
use guardreasoner::format::MemorySource;
use guardreasoner::format::gguf::GgufFile;
use guardreasoner::format::gguf_write::metadata_bytes;
use guardreasoner::generate::{GenerateOptions, generate};
use guardreasoner::loader::{OpenedModel, open_gguf, open_path};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The tiny model `name` converted to `target`, named as llama.cpp named it.
fn converted(name: &str, target: Target) -> Vec<u8> {
    let folder = tiny_folder(name);
    let mut opened = open_path(&folder).unwrap();
    let tokenizer = std::fs::read(folder.join("tokenizer.json")).unwrap();
    let model_name =
        golden(name)["gguf"]["types"]["f32"]["metadata"]["general.name"]["value"].as_str().unwrap().to_string();
    let mut out = Vec::new();
    convert(&mut opened.files, TokenizerSource::Json(tokenizer), &model_name, target, &mut out, &mut |_, _| Ok(()))
        .unwrap();
    out
}

#[test]
fn f32_f16_and_q8_0_files_are_byte_identical_to_llama_cpps_converter() {
    for name in ["llama32", "classic"] {
        for (word, target) in [("f32", Target::F32), ("f16", Target::F16), ("q8_0", Target::Q8_0)] {
            let what = format!("{name} as {word}");
            let bytes = converted(name, target);
            let want = &golden(name)["gguf"]["types"][word];
            let mut source = MemorySource::new("converted.gguf", bytes.clone());
            let file = GgufFile::read(&mut source).unwrap_or_else(|e| panic!("{what}: our reader refuses it: {e}"));
            // Tensor by tensor first: a difference here names the tensor.
            let tensors = want["tensors"].as_array().unwrap();
            assert_eq!(file.index.tensors.len(), tensors.len(), "{what}: tensor count");
            for t in tensors {
                let tname = t["name"].as_str().unwrap();
                let entry = file.index.get(tname).unwrap_or_else(|| panic!("{what}: {tname} missing"));
                let mut shape: Vec<usize> =
                    t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                shape.reverse();
                assert_eq!(entry.shape, shape, "{what}: {tname} shape");
                assert_eq!(entry.offset, t["offset_in_file"].as_u64().unwrap(), "{what}: {tname} offset");
                let data = &bytes[entry.offset as usize..(entry.offset + entry.byte_len) as usize];
                assert_eq!(sha256(data), t["sha256"].as_str().unwrap(), "{what}: {tname} ({}) bytes", t["ggml_type"]);
            }
            for (key, value) in &file.metadata {
                let pair = metadata_bytes(key, value).unwrap();
                let golden_pair = want["metadata"][key.as_str()]["sha256_kv_bytes"].as_str();
                assert_eq!(Some(sha256(&pair).as_str()), golden_pair, "{what}: metadata {key}");
            }
            assert_eq!(file.metadata.len() as u64, want["header"]["kv_count"].as_u64().unwrap(), "{what}: key count");
            assert_eq!(bytes.len() as u64, want["file_size"].as_u64().unwrap(), "{what}: file size");
            assert_eq!(sha256(&bytes), want["file_sha256"].as_str().unwrap(), "{what}: the whole file");
        }
    }
}

/// The first logits and 12 greedy tokens of a fixed prompt on `model` loaded by `backend`.
fn run(OpenedModel { mut files, .. }: OpenedModel, backend: CpuBackend) -> (Vec<f32>, Vec<u32>) {
    let weights = files.load(&backend, &mut |_, _| {}).unwrap();
    let mut engine = Engine::new(backend, files.config.clone(), weights, 256, 1, 0).unwrap();
    let opts = GenerateOptions { max_new_tokens: 12, stop_ids: vec![], keep_first_logits: true };
    let prompt = [128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13];
    let out = pollster::block_on(generate(&mut engine, &prompt, &opts, &|| false, &mut |_| Ok(()))).unwrap();
    (out.first_logits.unwrap(), out.tokens)
}

#[test]
fn a_converted_file_runs_as_its_folder_quantized_on_load() {
    for (name, target, dtype) in [
        ("classic", Target::Q8_0, GgmlDType::Q8_0),
        ("classic", Target::Q4_0, GgmlDType::Q4_0),
        ("llama32", Target::Q8_0, GgmlDType::Q8_0),
        ("llama32", Target::Q4_1, GgmlDType::Q4_1),
    ] {
        let what = format!("{name} as {}", target.name());
        let file = open_gguf(Box::new(MemorySource::new("converted.gguf", converted(name, target)))).unwrap();
        // The file's blocks as they are, against the folder quantized to the same blocks on load.
        let (logits, tokens) = run(file, CpuBackend::new(None));
        let (want_logits, want_tokens) = run(open_path(&tiny_folder(name)).unwrap(), CpuBackend::new(Some(dtype)));
        assert_eq!(tokens, want_tokens, "{what}: greedy tokens");
        if name == "classic" {
            // Same weights, same rope: the same bits.
            assert_eq!(logits, want_logits, "{what}: logits");
        } else {
            // llama3 scaling as rope_freqs.weight divides the frequencies where the folder's
            // config interpolates them: the last bit of a frequency may differ.
            let worst = logits.iter().zip(&want_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-3, "{what}: logits differ by up to {worst}");
        }
    }
}

#[test]
fn matrices_whose_rows_do_not_fill_blocks_stay_f16_and_other_tokenizers_are_refused() {
    // zoo_mqa: hidden 40 and intermediate 80 are not whole 32-blocks; attn_output's rows (4 heads
    // of 8) are.
    let folder = tiny_folder("zoo_mqa");
    let mut opened = open_path(&folder).unwrap();
    let tokenizer = std::fs::read(folder.join("tokenizer.json")).unwrap();
    let mut out = Vec::new();
    let report = convert(
        &mut opened.files,
        TokenizerSource::Json(tokenizer.clone()),
        "Zoo",
        Target::Q8_0,
        &mut out,
        &mut |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(report.kept_f16.len(), 1 + 2 * 6, "the embedding and six matrices a layer: {:?}", report.kept_f16);
    assert!(!report.kept_f16.iter().any(|n| n.contains("attn_output")), "{:?}", report.kept_f16);
    let file = open_gguf(Box::new(MemorySource::new("zoo.gguf", out))).unwrap();
    let (_, tokens) = run(file, CpuBackend::new(None));
    let (_, want) = run(open_path(&folder).unwrap(), CpuBackend::new(None));
    assert_eq!(tokens, want, "greedy tokens of the f16 file and the bf16 folder");

    let mut opened = open_path(&folder).unwrap();
    let err = convert(
        &mut opened.files,
        TokenizerSource::Json(br#"{"model": {"type": "Unigram", "vocab": []}}"#.to_vec()),
        "x",
        Target::Q8_0,
        &mut Vec::new(),
        &mut |_, _| Ok(()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("Llama 3 tokenizers"), "{err}");
    assert!(Target::parse("q5_k").unwrap_err().to_string().contains("f32, f16, q8_0, q4_0 or q4_1"));
}
