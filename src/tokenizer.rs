//! Text <-> token ids: a Hugging Face `tokenizers::Tokenizer`, from a `tokenizer.json` or built
//! from the BPE vocabulary GGUF carries (`tokenizer.ggml.*`, as llama.cpp's `llama-vocab.cpp`
//! reads it). BOS is added by us, exactly once, whether or not the file's post-processor adds it.

use crate::error::{Error, Result};
use crate::format::gguf::{GgufFile, value_u64};
use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// Llama 3's pre-tokenizer split (its tokenizer.json; llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

pub struct TextTokenizer {
    inner: Tokenizer,
    /// Prepended to every prompt when set.
    bos_id: Option<u32>,
}

impl TextTokenizer {
    /// From `tokenizer.json` bytes. `bos_id` comes from the model config.
    pub fn from_json(bytes: &[u8], bos_id: Option<u32>) -> Result<Self> {
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        Ok(Self { inner, bos_id })
    }

    /// From GGUF metadata (`tokenizer.ggml.model` "gpt2": byte-level BPE).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let values = gguf.get_array(key).ok_or_else(|| Error::Tokenizer(format!("GGUF lacks {key}")))?;
            values
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(Error::Tokenizer(format!("{key} holds a non-string: {other:?}"))),
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("bad merge {m:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        // Llama 3's tokenizer.json sets ignore_merges: whole words in the vocabulary win.
        let ignore_merges = matches!(pre, "llama-bpe" | "llama3" | "smaug-bpe");
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("GGUF BPE: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        if let Some(types) = gguf.get_array("tokenizer.ggml.token_type") {
            let added: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter_map(|(ty, tok)| match value_u64(ty) {
                    Some(TOKEN_TYPE_CONTROL) => Some(AddedToken::from(tok.clone(), true)),
                    Some(TOKEN_TYPE_USER_DEFINED) => Some(AddedToken::from(tok.clone(), false)),
                    _ => None,
                })
                .collect();
            inner.add_special_tokens(added).map_err(|e| Error::Tokenizer(e.to_string()))?;
        }
        let add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(true);
        let bos_id = if add_bos { gguf.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32) } else { None };
        Ok(Self { inner, bos_id })
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Ids for a prompt: BOS (when the model uses one) followed by the text's tokens. Special
    /// token texts inside `text` (e.g. a literal `<|begin_of_text|>`) become their ids, as HF
    /// `tokenizers` does.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos_id.into_iter().collect();
        ids.extend(self.encode_text(text)?);
        Ok(ids)
    }

    /// The text's tokens alone, no BOS.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included. Incomplete UTF-8 shows as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    Ok(match pre {
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            let split = Split::new(SplitPattern::Regex(LLAMA3_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            Sequence::new(vec![split.into(), byte_level(false).into()]).into()
        }
        // SmolLM's tokenizer.json: each digit alone, then GPT-2's byte-level split.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        "gpt2" | "default" => byte_level(true).into(),
        other => {
            return Err(Error::Tokenizer(format!(
                "GGUF pre-tokenizer {other:?} is not supported (llama-bpe, smollm, gpt2)"
            )));
        }
    })
}
