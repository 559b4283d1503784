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
        assert_eq!(plain.encode_prompt(text).unwrap(), want, "{name}: npm tokenizer.json + our BOS");
        assert_eq!(plain.encode_text(text).unwrap(), id_list(&case["unpatched"]["ids"]), "{name}: no-BOS ids");
        assert_eq!(patched.decode(&want).unwrap(), case["patched"]["decoded"].as_str().unwrap(), "{name}: decode");
    }
}

#[test]
fn ids_match_python_tokenizers_on_guardreasoner_prompts() {
    use sha2::{Digest, Sha256};
    let tok = TextTokenizer::from_json(&llama3_tokenizer_json(), Some(BOS)).unwrap();
    let golden = tokenizer_golden();
    let items = golden["guardreasoner_prompt"]["items"].as_array().unwrap();
    let bench: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(shared_dir().join("guardreasoner/benchmark/0_0_SimpleSafetyTests.json")).unwrap()).unwrap();
    assert_eq!(items.len(), bench.len());
    for (item, golden_item) in bench.iter().zip(items) {
        let input = item["input"].as_str().unwrap();
        let prompt = input.strip_prefix("Human user:\n").and_then(|s| s.strip_suffix("\n\nAI assistant:\nNone\n\n")).expect("a request-only item");
        let text = guardreasoner::guard::guard_prompt(prompt, None);
        assert_eq!(text, format!("{}\n{input}", item["instruction"].as_str().unwrap()));
        let ids = tok.encode_prompt(&text).unwrap();
        let index = golden_item["index"].as_u64().unwrap();
        assert_eq!(ids, id_list(&golden_item["ids"]), "item {index}: ids");
        let decoded = tok.decode(&ids).unwrap();
        assert_eq!(format!("{:x}", Sha256::digest(decoded.as_bytes())), golden_item["decoded_sha256"].as_str().unwrap(), "item {index}: decoded text");
    }
}
