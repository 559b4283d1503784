//! The Llama 3 tokenizer: BOS exactly once whichever tokenizer.json variant a model ships, ids
//! identical to Python `tokenizers` (goldens), and a streaming detokenizer that never emits
//! broken UTF-8.

mod common;

use common::*;
use guardreasoner::generate::Detokenizer;
use guardreasoner::tokenizer::TextTokenizer;

const BOS: u32 = 128000;

/// GuardReasoner-1B's own tokenizer.json differs from the npm file in two ways that matter
/// here: Llama 3.2 names for three reserved tokens, and a post-processor that adds BOS.
pub fn guardreasoner_style_tokenizer_json(npm: &[u8]) -> Vec<u8> {
    let mut t: serde_json::Value = serde_json::from_slice(npm).unwrap();
    let renames = [(128004u64, "<|finetune_right_pad_id|>"), (128008, "<|eom_id|>"), (128010, "<|python_tag|>")];
    for tok in t["added_tokens"].as_array_mut().unwrap() {
        if let Some((_, name)) = renames.iter().find(|(id, _)| tok["id"].as_u64() == Some(*id)) {
            tok["content"] = serde_json::json!(name);
        }
    }
    t["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [BOS], "tokens": ["<|begin_of_text|>"]}}
    });
    serde_json::to_vec(&t).unwrap()
}

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
