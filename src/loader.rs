//! From files to a `ModelFiles` + `TextTokenizer`: an HF folder (config.json,
//! generation_config.json, tokenizer.json, one or more safetensors shards) or a single GGUF file.
//! The functions over byte sources serve every target; `open_path` is the native front door.

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::format::gguf::GgufFile;
use crate::format::{ByteSource, TensorIndex, safetensors};
use crate::model::{ModelFiles, Naming};
use crate::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A model ready to load: its files, its tokenizer, and what it is by content.
pub struct OpenedModel {
    pub files: ModelFiles,
    pub tokenizer: TextTokenizer,
    pub identity: ModelIdentity,
}

/// A model identified by its content, not by how its path was spelled: the bytes of its files and
/// a SHA-256 of every file's length and header (GGUF metadata and tensor infos; the safetensors
/// JSON header) and, for HF folders, of the config, generation config and tokenizer. Weight bytes
/// are not read (hashing 2.5 GB would cost more than a benchmark item). Benchmark runs record it
/// in `run.json` (ARCHITECTURE.md §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub bytes: u64,
    pub sha256: String,
}

/// Header bytes hashed per file at most: GGUF headers carry the tokenizer (a few MB for Llama 3).
const MAX_HASHED_HEADER_BYTES: u64 = 64 << 20;

fn identify(sources: &mut [Box<dyn ByteSource>], index: &TensorIndex, side_files: &[&[u8]]) -> Result<ModelIdentity> {
    let mut hash = Sha256::new();
    let mut bytes = 0;
    for (shard, source) in sources.iter_mut().enumerate() {
        let data_start =
            index.tensors.values().filter(|t| t.shard == shard).map(|t| t.offset).min().unwrap_or(source.len());
        let header = source.read_vec(0, data_start.min(source.len()).min(MAX_HASHED_HEADER_BYTES))?;
        hash.update(source.len().to_le_bytes());
        hash.update((header.len() as u64).to_le_bytes());
        hash.update(&header);
        bytes += source.len();
    }
    for file in side_files {
        hash.update((file.len() as u64).to_le_bytes());
        hash.update(file);
    }
    let sha256 = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(ModelIdentity { bytes, sha256 })
}

/// An HF-style model from its small JSON files and its safetensors shards.
pub fn open_hf(
    config_json: &str,
    generation_config_json: Option<&str>,
    tokenizer_json: &[u8],
    mut shards: Vec<Box<dyn ByteSource>>,
) -> Result<OpenedModel> {
    let config = LlamaConfig::from_hf_json(config_json, generation_config_json)?;
    let tokenizer = TextTokenizer::from_json(tokenizer_json, config.bos_token_id)?;
    let mut index = TensorIndex::default();
    for (i, shard) in shards.iter_mut().enumerate() {
        safetensors::read_index(shard.as_mut(), i, &mut index)?;
    }
    let side_files = [config_json.as_bytes(), generation_config_json.unwrap_or("").as_bytes(), tokenizer_json];
    let identity = identify(&mut shards, &index, &side_files)?;
    let files = ModelFiles::new(config, index, Naming::HuggingFace, shards)?;
    Ok(OpenedModel { files, tokenizer, identity })
}

/// A GGUF file: config, tokenizer and weights in one.
pub fn open_gguf(mut source: Box<dyn ByteSource>) -> Result<OpenedModel> {
    let gguf = GgufFile::read(source.as_mut())?;
    let config = LlamaConfig::from_gguf(&gguf)?;
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    let mut sources = vec![source];
    let identity = identify(&mut sources, &gguf.index, &[])?;
    let files = ModelFiles::new(config, gguf.index, Naming::Gguf, sources)?;
    Ok(OpenedModel { files, tokenizer, identity })
}

#[cfg(not(target_arch = "wasm32"))]
pub fn open_path(path: &std::path::Path) -> Result<OpenedModel> {
    use crate::error::Error;
    use crate::format::FileSource;
    use std::fs;
    let read = |p: std::path::PathBuf| fs::read(&p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e));
    if path.is_dir() {
        let lacking: Vec<&str> = ["config.json", "tokenizer.json"]
            .into_iter()
            .chain((!path.join("model.safetensors.index.json").exists()).then_some("model.safetensors"))
            .filter(|name| !path.join(name).exists())
            .collect();
        if !lacking.is_empty() {
            return Err(Error::Config(format!(
                "{} lacks {}: a model folder holds config.json, tokenizer.json and model.safetensors \
                 (or model.safetensors.index.json and its shards), as on the Hugging Face Hub; or give a .gguf file",
                path.display(),
                lacking.join(", ")
            )));
        }
        let config = String::from_utf8(read(path.join("config.json"))?)
            .map_err(|_| Error::Config("config.json is not UTF-8".into()))?;
        let generation = path.join("generation_config.json");
        let generation =
            if generation.exists() { Some(String::from_utf8_lossy(&read(generation)?).into_owned()) } else { None };
        let tokenizer = read(path.join("tokenizer.json"))?;
        let index_file = path.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_file.exists() {
            let json = String::from_utf8_lossy(&read(index_file.clone())?).into_owned();
            let mut names: Vec<String> =
                safetensors::read_shard_map(&json, &index_file.display().to_string())?.into_values().collect();
            names.sort();
            names.dedup();
            names
        } else {
            vec!["model.safetensors".to_string()]
        };
        let mut shards: Vec<Box<dyn ByteSource>> = Vec::new();
        for name in shard_names {
            if name.contains('/') || name.contains("..") {
                return Err(Error::format(path.display(), format!("shard name {name:?} leaves the model folder")));
            }
            shards.push(Box::new(FileSource::open(&path.join(&name))?));
        }
        open_hf(&config, generation.as_deref(), &tokenizer, shards)
    } else if path.exists() {
        open_gguf(Box::new(FileSource::open(path)?))
    } else {
        Err(Error::Config(format!(
            "{} does not exist (expected a model folder with config.json or a .gguf file)",
            path.display()
        )))
    }
}
