//! From files to a `ModelFiles` + `TextTokenizer`: an HF folder (config.json,
//! generation_config.json, tokenizer.json, one or more safetensors shards) or a single GGUF file.
//! The functions over byte sources serve every target; `open_path` is the native front door.

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::format::gguf::GgufFile;
use crate::format::{safetensors, ByteSource, TensorIndex};
use crate::model::{ModelFiles, Naming};
use crate::tokenizer::TextTokenizer;

/// A model ready to load: its files and its tokenizer.
pub struct OpenedModel {
    pub files: ModelFiles,
    pub tokenizer: TextTokenizer,
}

/// An HF-style model from its small JSON files and its safetensors shards.
pub fn open_hf(config_json: &str, generation_config_json: Option<&str>, tokenizer_json: &[u8], mut shards: Vec<Box<dyn ByteSource>>) -> Result<OpenedModel> {
    let config = LlamaConfig::from_hf_json(config_json, generation_config_json)?;
    let tokenizer = TextTokenizer::from_json(tokenizer_json, config.bos_token_id)?;
    let mut index = TensorIndex::default();
    for (i, shard) in shards.iter_mut().enumerate() {
        safetensors::read_index(shard.as_mut(), i, &mut index)?;
    }
    let files = ModelFiles::new(config, index, Naming::HuggingFace, shards)?;
    Ok(OpenedModel { files, tokenizer })
}

/// A GGUF file: config, tokenizer and weights in one.
pub fn open_gguf(mut source: Box<dyn ByteSource>) -> Result<OpenedModel> {
    let gguf = GgufFile::read(source.as_mut())?;
    let config = LlamaConfig::from_gguf(&gguf)?;
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    let files = ModelFiles::new(config, gguf.index, Naming::Gguf, vec![source])?;
    Ok(OpenedModel { files, tokenizer })
}

#[cfg(not(target_arch = "wasm32"))]
pub fn open_path(path: &std::path::Path) -> Result<OpenedModel> {
    use crate::error::Error;
    use crate::format::FileSource;
    use std::fs;
    let read = |p: std::path::PathBuf| fs::read(&p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e));
    if path.is_dir() {
        let config = String::from_utf8(read(path.join("config.json"))?).map_err(|_| Error::Config("config.json is not UTF-8".into()))?;
        let generation = path.join("generation_config.json");
        let generation = if generation.exists() { Some(String::from_utf8_lossy(&read(generation)?).into_owned()) } else { None };
        let tokenizer = read(path.join("tokenizer.json"))?;
        let index_file = path.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_file.exists() {
            let json = String::from_utf8_lossy(&read(index_file.clone())?).into_owned();
            let mut names: Vec<String> = safetensors::read_shard_map(&json, &index_file.display().to_string())?.into_values().collect();
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
        Err(Error::Config(format!("{} does not exist (expected a model folder with config.json or a .gguf file)", path.display())))
    }
}
