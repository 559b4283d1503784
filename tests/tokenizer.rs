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
