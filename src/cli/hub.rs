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

/// Whether a file name from the Hub (a shard named by the index) stays in the model folder: one
/// plain name, as the loader also requires. A name with `/`, `\\`, `..` or an absolute path
/// would have the download write outside the snapshot.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\']) && !name.contains("..")
}

/// The weight files a snapshot folder needs: its index's shards, or the single file. An index
/// that names a shard outside the folder is an error, before anything is fetched.
fn weight_files(folder: &Path) -> Result<Vec<String>> {
    let index = match std::fs::read_to_string(folder.join(SHARD_INDEX)) {
        Ok(index) => index,
        Err(_) => return Ok(vec![SINGLE_SHARD.to_string()]),
    };
    let index: serde_json::Value =
        serde_json::from_str(&index).with_context(|| format!("{SHARD_INDEX} is not JSON"))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{SHARD_INDEX} has no weight_map"))?;
    let mut names = Vec::new();
    for value in map.values() {
        let name = value.as_str().with_context(|| format!("{SHARD_INDEX}: a weight_map value is not a file name"))?;
        if !plain_file_name(name) {
            bail!("{SHARD_INDEX} names the shard {name:?}, which leaves the model folder: refused");
        }
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Whether a snapshot folder holds everything the loader needs.
fn complete(folder: &Path) -> bool {
    folder.join(CONFIG).is_file()
        && folder.join(TOKENIZER).is_file()
        && weight_files(folder).is_ok_and(|names| names.iter().all(|name| folder.join(name).is_file()))
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
    // Only a cache without any refs (some tools leave none): with refs, another revision's
    // snapshot must not stand in for `main`.
    let has_refs = std::fs::read_dir(root.join("refs")).is_ok_and(|mut entries| entries.next().is_some());
    if revision != "main" || has_refs {
        return None;
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| complete(&e.path()))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// hf-hub's progress hook: forwards to the bar (when shown) and keeps the size the Hub announced,
/// which the downloaded file is checked against.
struct Watch {
    bar: Option<indicatif::ProgressBar>,
    size: Option<u64>,
}

impl hf_hub::api::Progress for &mut Watch {
    fn init(&mut self, size: usize, filename: &str) {
        self.size = Some(size as u64);
        if let Some(bar) = &mut self.bar {
            hf_hub::api::Progress::init(bar, size, filename);
        }
    }
    fn update(&mut self, size: usize) {
        if let Some(bar) = &mut self.bar {
            hf_hub::api::Progress::update(bar, size);
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = &mut self.bar {
            hf_hub::api::Progress::finish(bar);
        }
    }
}

/// Checks a downloaded file against what the Hub said of it: its size, and for a file stored by
/// content (an LFS file, whose blob is named by its SHA-256, as the Hub's ETag) its digest. A
/// server that ignored a resume's `Range` would otherwise leave a file that starts right and ends
/// wrong. On a mismatch the blob and its link are removed, so the next run fetches it again.
fn verify(pointer: &Path, expected_size: Option<u64>) -> Result<()> {
    use sha2::Digest;
    let blob = std::fs::canonicalize(pointer).with_context(|| format!("reading {}", pointer.display()))?;
    let size = std::fs::metadata(&blob).with_context(|| format!("reading {}", blob.display()))?.len();
    let etag = blob.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let mut problem =
        expected_size.filter(|&want| want != size).map(|want| format!("{size} bytes where the Hub said {want}"));
    if problem.is_none() && etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut hasher = sha2::Sha256::new();
        let mut file = std::fs::File::open(&blob).with_context(|| format!("reading {}", blob.display()))?;
        std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", blob.display()))?;
        let digest = format!("{:x}", hasher.finalize());
        if digest != etag.to_ascii_lowercase() {
            problem = Some(format!("its SHA-256 is {digest}, not {etag}"));
        }
    }
    if let Some(problem) = problem {
        let _ = std::fs::remove_file(pointer);
        let _ = std::fs::remove_file(&blob);
        bail!("the download of {} is corrupt ({problem}); it was removed: run the command again", pointer.display());
    }
    Ok(())
}

/// A file the repo does not have (HTTP 404): fine for the optional ones.
#[derive(Debug)]
struct Missing(String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the repo has no {}", self.0)
    }
}

impl std::error::Error for Missing {}

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
    let explain = |file: &str, err: ApiError| -> anyhow::Error {
        if let ApiError::LockAcquisition(path) = &err {
            return anyhow::anyhow!(
                "another process is downloading {repo}/{file} into the same cache (lock {}): wait for it, then run again",
                path.display()
            );
        }
        match status(&err) {
            // The Hub answers 401 for a repo that does not exist too, when asked without a token.
            Some(401 | 403) => anyhow::anyhow!(
                "{endpoint} refused {repo}/{file} (HTTP {}): no such repo (check the name; {repo} is no file or folder here either), or it is gated or private: accept its terms on the Hub and set HF_TOKEN (or run `hf auth login`)",
                status(&err).unwrap_or_default()
            ),
            Some(404) if file == CONFIG => anyhow::anyhow!(
                "{repo} at revision {revision} has no {CONFIG} on {endpoint} (no such repo or revision, or a private one: set HF_TOKEN); a .gguf-only repo: download the file and pass its path"
            ),
            Some(404) => anyhow::Error::new(Missing(file.to_string())),
            Some(code) => anyhow::anyhow!("downloading {repo}/{file} from {endpoint} failed: HTTP {code}"),
            None => anyhow::anyhow!(
                "cannot download {repo}/{file} from {endpoint} ({err}), and it is not in the local Hugging Face cache ({}): check the network (or HF_ENDPOINT), {by_hand}",
                hub.display()
            ),
        }
    };
    let fetch = |file: &str| -> Result<PathBuf> {
        let mut watch = Watch {
            bar: progress.then(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_message(file.to_string());
                bar
            }),
            size: None,
        };
        let path = remote.download_with_progress(file, &mut watch).map_err(|e| explain(file, e))?;
        verify(&path, watch.size)?;
        Ok(path)
    };
    let config = fetch(CONFIG)?;
    let folder = config.parent().context("a cached file has no folder")?.to_path_buf();
    let mut files = vec![TOKENIZER.to_string()];
    for optional in [GENERATION_CONFIG, SHARD_INDEX] {
        if folder.join(optional).is_file() {
            continue;
        }
        if let Err(e) = fetch(optional) {
            // Absent from the repo is fine for these two; anything else is not.
            if e.downcast_ref::<Missing>().is_none() {
                return Err(e);
            }
        }
    }
    files.extend(weight_files(&folder).with_context(|| repo.to_string())?);
    for file in &files {
        // A file a broken earlier run already finished is not fetched again.
        if folder.join(file).is_file() {
            continue;
        }
        let path = fetch(file)?;
        if path.parent() != Some(folder.as_path()) {
            bail!("{repo} changed on the Hub while downloading (a new commit): run the command again");
        }
    }
    if !complete(&folder) {
        bail!("{repo}: the downloaded snapshot {} is missing files", folder.display());
    }
    Ok(folder)
}
