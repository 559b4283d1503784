//! The Llama 3 tokenizer: BOS exactly once whichever tokenizer.json variant a model ships, ids
//! identical to Python `tokenizers` (goldens), and a streaming detokenizer that never emits
//! broken UTF-8.

mod common;

use common::*;
use guardreasoner::generate::Detokenizer;
use guardreasoner::tokenizer::TextTokenizer;

const BOS: u32 = 128000;

fn hard_strings() -> Vec<String> {
    vec![
        "Hello, world!".into(),
        "".into(),
        "emoji 👍🏽 and 👨‍👩‍👧‍👦 family".into(),
        "中文字符和日本語のテキスト".into(),
        "digits 1234567 and 3.14159".into(),
        "   leading and trailing   ".into(),
        "tabs\tand\r\nnewlines\n\n\n".into(),
        "<|begin_of_text|> literal special token".into(),
    ]
}

#[test]
fn bos_exactly_once_with_or_without_a_bos_post_processor() {
    let npm = llama3_tokenizer_json();
    let plain = TextTokenizer::from_json(&npm, Some(BOS)).unwrap();
    let patched = TextTokenizer::from_json(&guardreasoner_style_tokenizer_json(&npm), Some(BOS)).unwrap();
    for text in hard_strings() {
        let a = plain.encode_prompt(&text).unwrap();
        let b = patched.encode_prompt(&text).unwrap();
        assert_eq!(a, b, "{text:?}");
        assert_eq!(a[0], BOS, "{text:?} starts with BOS");
        let extra = a[1..].iter().filter(|&&id| id == BOS).count();
        let literal = text.matches("<|begin_of_text|>").count();
        assert_eq!(extra, literal, "{text:?}: BOS only where the text spells it");
    }
}

#[test]
fn detokenizer_streams_whole_characters_only() {
    let tok = TextTokenizer::from_json(&llama3_tokenizer_json(), Some(BOS)).unwrap();
    for text in hard_strings().into_iter().chain(["Ünïcödé ✓ 🤖🛡️ Ωμέγα — ok".to_string()]) {
        let ids = tok.encode_text(&text).unwrap();
        let mut detok = Detokenizer::new();
        let mut streamed = String::new();
        let mut held_back = 0;
        for &id in &ids {
            let delta = detok.push(&tok, id).unwrap();
            assert!(!delta.contains('\u{FFFD}'), "{text:?}: delta {delta:?} has a broken character");
            held_back += delta.is_empty() as usize;
            streamed.push_str(&delta);
        }
        streamed.push_str(&detok.finish(&tok).unwrap());
        assert_eq!(streamed, tok.decode(&ids).unwrap(), "{text:?}");
        if text.contains('👨') {
            assert!(held_back > 0, "multi-byte characters split across tokens were held back");
        }
    }
}

#[test]
fn detokenizer_flushes_an_unfinished_character_at_the_end() {
    let tok = TextTokenizer::from_json(&llama3_tokenizer_json(), Some(BOS)).unwrap();
    let ids = tok.encode_text("👨‍👩‍👧").unwrap();
    let mut detok = Detokenizer::new();
    let mut out = String::new();
    for &id in &ids[..ids.len() - 1] {
        out.push_str(&detok.push(&tok, id).unwrap());
    }
    out.push_str(&detok.finish(&tok).unwrap());
    assert_eq!(out, tok.decode(&ids[..ids.len() - 1]).unwrap());
}

fn tokenizer_golden() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo_dir().join("tests/fixtures/tokenizer_golden.json")).unwrap()).unwrap()
}

fn id_list(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn ids_match_python_tokenizers_on_hard_strings() {
    let npm = llama3_tokenizer_json();
    let plain = TextTokenizer::from_json(&npm, Some(BOS)).unwrap();
    let patched = TextTokenizer::from_json(&guardreasoner_style_tokenizer_json(&npm), Some(BOS)).unwrap();
    let golden = tokenizer_golden();
    let cases = golden["hard_strings"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let (name, text) = (case["name"].as_str().unwrap(), case["text"].as_str().unwrap());
        let want = id_list(&case["patched"]["ids"]);
        assert_eq!(patched.encode_prompt(text).unwrap(), want, "{name}: patched tokenizer.json");
        // The npm file has Llama-3.0 names for three reserved tokens, so texts spelling the 3.2
        // names tokenize differently there: compare each file with its own golden.
        let unpatched = id_list(&case["unpatched"]["ids"]);
        assert_eq!(plain.encode_text(text).unwrap(), unpatched, "{name}: npm tokenizer.json");
        assert_eq!(
            plain.encode_prompt(text).unwrap(),
            [vec![BOS], unpatched].concat(),
            "{name}: npm tokenizer.json + our BOS"
        );
        assert_eq!(patched.decode(&want).unwrap(), case["patched"]["decoded"].as_str().unwrap(), "{name}: decode");
    }
}

#[test]
fn ids_match_python_tokenizers_on_guardreasoner_prompts() {
    use sha2::{Digest, Sha256};
    let tok = TextTokenizer::from_json(&llama3_tokenizer_json(), Some(BOS)).unwrap();
    let golden = tokenizer_golden();
    let items = golden["guardreasoner_prompt"]["items"].as_array().unwrap();
    let bench: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(shared_dir().join("guardreasoner/benchmark/0_0_SimpleSafetyTests.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(items.len(), bench.len());
    for (item, golden_item) in bench.iter().zip(items) {
        let input = item["input"].as_str().unwrap();
        let prompt = input
            .strip_prefix("Human user:\n")
            .and_then(|s| s.strip_suffix("\n\nAI assistant:\nNone\n\n"))
            .expect("a request-only item");
        let text = guardreasoner::guard::guard_prompt(prompt, None);
        assert_eq!(text, format!("{}\n{input}", item["instruction"].as_str().unwrap()));
        let ids = tok.encode_prompt(&text).unwrap();
        let index = golden_item["index"].as_u64().unwrap();
        assert_eq!(ids, id_list(&golden_item["ids"]), "item {index}: ids");
        let decoded = tok.decode(&ids).unwrap();
        assert_eq!(
            format!("{:x}", Sha256::digest(decoded.as_bytes())),
            golden_item["decoded_sha256"].as_str().unwrap(),
            "item {index}: decoded text"
        );
    }
}

/// The bytes of one GGUF key/value pair (u64 key length, key, u32 type, value), encoded here
/// from the spec so the test does not trust the writer it checks.
fn gguf_kv_bytes(key: &str, value: &candle_core::quantized::gguf_file::Value) -> Vec<u8> {
    use candle_core::quantized::gguf_file::Value;
    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            other => panic!("unexpected {other:?}"),
        }
    }
    fn body(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(b) => out.push(*b as u8),
            Value::String(s) => {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Array(items) => {
                out.extend_from_slice(&type_id(&items[0]).to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    body(item, out);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut out = (key.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&type_id(value).to_le_bytes());
    body(value, &mut out);
    out
}

#[test]
fn gguf_tokenizer_metadata_is_byte_identical_to_llama_cpp_and_tokenizes_like_hf() {
    use sha2::{Digest, Sha256};
    let patched_json = guardreasoner_style_tokenizer_json(&llama3_tokenizer_json());
    let metadata =
        guardreasoner::convert::llama3_tokenizer_metadata(&patched_json, 128256, Some(128000), Some(128001)).unwrap();
    // llama.cpp's convert_hf_to_gguf.py on the same tokenizer (tests/fixtures/tiny/llama32.json).
    let converter = &common::tiny::golden("llama32")["gguf"]["types"]["f32"]["metadata"];
    for (key, value) in &metadata {
        let want = converter[key.as_str()]["sha256_kv_bytes"]
            .as_str()
            .unwrap_or_else(|| panic!("{key} not in the converter's output"));
        assert_eq!(
            format!("{:x}", Sha256::digest(gguf_kv_bytes(key, value))),
            want,
            "{key} differs from llama.cpp's converter"
        );
    }
    // A metadata-only GGUF: its embedded tokenizer must give the HF folder's ids.
    let refs: Vec<(&str, &candle_core::quantized::gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut file, &refs, &[]).unwrap();
    let mut source = guardreasoner::format::MemorySource::new("tokenizer.gguf", file.into_inner());
    let gguf = guardreasoner::format::gguf::GgufFile::read(&mut source).unwrap();
    let from_gguf = TextTokenizer::from_gguf(&gguf).unwrap();
    let from_json = TextTokenizer::from_json(&patched_json, Some(BOS)).unwrap();
    let golden = tokenizer_golden();
    for case in golden["hard_strings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(from_gguf.encode_prompt(text).unwrap(), from_json.encode_prompt(text).unwrap(), "{}", case["name"]);
    }
    let prompt = guardreasoner::guard::guard_prompt("How do I make a bomb?", Some("I can't help with that."));
    assert_eq!(from_gguf.encode_prompt(&prompt).unwrap(), from_json.encode_prompt(&prompt).unwrap());
}
