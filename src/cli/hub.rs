//! A Hugging Face repo id (`owner/name`) as a model folder: from the local Hugging Face cache
//! when it holds the files, else downloaded into that cache through the `hf-hub` crate, in the
//! layout the Python `huggingface_hub` uses (`models--owner--name/{blobs,snapshots,refs}`), so
//! either tool reuses what the other fetched. See ARCHITECTURE.md §5 (the CLI).

use anyhow::{Context, Result, bail};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

/// The files of an HF-style model folder the loader reads (besides the weights).
const CONFIG: &str = "config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const TOKENIZER: &str = "tokenizer.json";
const SHARD_INDEX: &str = "model.safetensors.index.json";
const SINGLE_SHARD: &str = "model.safetensors";
/// The Hub, when `HF_ENDPOINT` does not name another.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Tries per file after a dropped connection; each resumes where the last one stopped.
const RETRIES: usize = 5;

/// Whether `word` reads as a Hub repo id: `owner/name`, each part of letters, digits, `-_.`.
pub fn is_repo_id(word: &str) -> bool {
    let parts: Vec<&str> = word.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && *part != "."
                && *part != ".."
                && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The Hub cache folder, as `huggingface_hub` finds it: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|home| PathBuf::from(home).join("hub")))
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface/hub")))
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// The weight files a snapshot folder needs: its index's shards, or the single file.
fn weight_files(folder: &Path) -> Option<Vec<String>> {
    match std::fs::read_to_string(folder.join(SHARD_INDEX)) {
        Ok(index) => {
            let index: serde_json::Value = serde_json::from_str(&index).ok()?;
            let mut names: Vec<String> =
                index.get("weight_map")?.as_object()?.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
            names.sort();
            names.dedup();
            Some(names)
        }
        Err(_) => Some(vec![SINGLE_SHARD.to_string()]),
    }
}

/// Whether a snapshot folder holds everything the loader needs.
fn complete(folder: &Path) -> bool {
    folder.join(CONFIG).is_file()
        && folder.join(TOKENIZER).is_file()
        && weight_files(folder).is_some_and(|names| names.iter().all(|name| folder.join(name).is_file()))
}

/// The snapshot of `repo` at `revision` already in the cache, when it is complete: the one
/// `refs/<revision>` names, the folder of a commit hash, or (for `main` in a cache without refs,
/// as some tools leave it) the newest snapshot.
fn cached(hub: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let root = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snapshots = root.join("snapshots");
    let named = std::fs::read_to_string(root.join("refs").join(revision))
        .ok()
        .map(|commit| snapshots.join(commit.trim()))
        .or_else(|| Some(snapshots.join(revision)).filter(|p| p.is_dir()));
    if let Some(folder) = named {
        return complete(&folder).then_some(folder);
    }
    if revision != "main" {
        return None;
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| complete(&e.path()))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// The HTTP status of a failed request, when it got that far.
fn status(err: &ApiError) -> Option<u16> {
    match err {
        ApiError::RequestError(e) => match e.as_ref() {
            ureq::Error::StatusCode(code) => Some(*code),
            _ => None,
        },
        ApiError::TooManyRetries(inner) => status(inner),
        _ => None,
    }
}

/// The model folder for `repo` at `revision`: the cached snapshot when complete (no network),
/// else downloaded into the cache with a progress bar per file (`progress`), resuming partial
/// files and retrying dropped connections. `HF_ENDPOINT`, `HF_TOKEN` (or the token file
/// `hf auth login` writes) and `HF_HUB_OFFLINE` are honoured.
pub fn snapshot(repo: &str, revision: &str, progress: bool) -> Result<PathBuf> {
    let hub = cache_dir().context("no Hugging Face cache folder: set HF_HOME or HOME")?;
    if let Some(folder) = cached(&hub, repo, revision) {
        return Ok(folder);
    }
    let name = repo.rsplit('/').next().unwrap_or(repo);
    let by_hand = format!(
        "or fetch it another way (`hf download {repo} --local-dir models/{name}`) and pass --model models/{name}"
    );
    if env_set("HF_HUB_OFFLINE") {
        bail!(
            "{repo} (revision {revision}) is not in the local Hugging Face cache ({}), and HF_HUB_OFFLINE is set: unset it to download it, {by_hand}",
            hub.display()
        );
    }
    let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.trim().is_empty());
    let endpoint = endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/').to_string();
    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(hub.clone())
        .with_endpoint(endpoint.clone())
        .with_progress(false)
        .with_retries(RETRIES)
        .with_user_agent("guardreasoner", env!("CARGO_PKG_VERSION"));
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        builder = builder.with_token(Some(token.trim().to_string()));
    }
    let api = builder.build().context("setting up the Hugging Face Hub client")?;
    let remote = api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string()));
    if progress {
        eprintln!("downloading {repo} (revision {revision}) from {endpoint} into {}", hub.display());
    }
    let fetch = |file: &str| -> std::result::Result<PathBuf, ApiError> {
        if progress {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_message(file.to_string());
            remote.download_with_progress(file, bar)
        } else {
            remote.download_with_progress(file, ())
        }
    };
    let explain = |file: &str, err: ApiError| -> anyhow::Error {
        match status(&err) {
            Some(401 | 403) => anyhow::anyhow!(
                "{endpoint} refused {repo}/{file} (HTTP {}): the repo is gated or private; accept its terms on the Hub and set HF_TOKEN (or run `hf auth login`)",
                status(&err).unwrap_or_default()
            ),
            Some(404) if file == CONFIG => anyhow::anyhow!(
                "{repo} at revision {revision} has no {CONFIG} on {endpoint} (no such repo or revision, or a private one: set HF_TOKEN); a .gguf-only repo: download the file and pass its path"
            ),
            Some(code) => anyhow::anyhow!("downloading {repo}/{file} from {endpoint} failed: HTTP {code}"),
            None => anyhow::anyhow!(
                "cannot download {repo}/{file} from {endpoint} ({err}), and it is not in the local Hugging Face cache ({}): check the network (or HF_ENDPOINT), {by_hand}",
                hub.display()
            ),
        }
    };
    let config = fetch(CONFIG).map_err(|e| explain(CONFIG, e))?;
    let folder = config.parent().context("a cached file has no folder")?.to_path_buf();
    let mut files = vec![TOKENIZER.to_string()];
    for optional in [GENERATION_CONFIG, SHARD_INDEX] {
        match fetch(optional) {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(explain(optional, e)),
        }
    }
    files.extend(weight_files(&folder).with_context(|| format!("{repo}: {SHARD_INDEX} has no weight_map"))?);
    for file in &files {
        let path = fetch(file).map_err(|e| explain(file, e))?;
        if path.parent() != Some(folder.as_path()) {
            bail!("{repo} changed on the Hub while downloading (a new commit): run the command again");
        }
    }
    if !complete(&folder) {
        bail!("{repo}: the downloaded snapshot {} is missing files", folder.display());
    }
    Ok(folder)
}
