//! Hugging Face hub access: the standard cache, downloads with progress, and offline mode.
//!
//! We use hf-hub 0.4 (blocking `ureq` client) rather than 1.x: 1.x pulls tokio, reqwest and the
//! xet stack (~136 crates, the slowest unit of a cold build) for features a desktop tool that
//! fetches a few files does not need. Downloads land in a temporary file that is renamed into the
//! cache only when complete, so an interrupted download never leaves a file we would later trust.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use hf_hub::{Cache, Repo, RepoType, api::Progress};

use crate::model::{ModelFiles, WEIGHT_FILES};

/// The hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`
/// (the same rules as the Python `huggingface_hub`).
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// `HF_HUB_OFFLINE` set to 1/true/yes/on.
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The access token, as the Python `huggingface_hub` finds it: `$HF_TOKEN`, else the file
/// `$HF_TOKEN_PATH`, else `$HF_HOME/token`, else `~/.cache/huggingface/token`. (hf-hub 0.4 looks
/// only beside its cache folder, which moves with `HF_HUB_CACHE`.)
pub fn token_from_env() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        return Some(t);
    }
    let path = match (std::env::var_os("HF_TOKEN_PATH"), std::env::var_os("HF_HOME")) {
        (Some(p), _) if !p.is_empty() => PathBuf::from(p),
        (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join("token"),
        _ => std::env::var_os("HOME").map(PathBuf::from)?.join(".cache").join("huggingface").join("token"),
    };
    std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// What a download reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownloadEvent {
    Started { file: String, total_bytes: u64 },
    Progress { file: String, bytes: u64 },
    Finished { file: String },
}

/// Adapts a callback to hf-hub's progress trait.
struct CallbackProgress<'a> {
    file: String,
    done: u64,
    callback: &'a mut dyn FnMut(DownloadEvent),
}

impl Progress for CallbackProgress<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_string();
        (self.callback)(DownloadEvent::Started { file: self.file.clone(), total_bytes: size as u64 });
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        (self.callback)(DownloadEvent::Progress { file: self.file.clone(), bytes: self.done });
    }
    fn finish(&mut self) {
        (self.callback)(DownloadEvent::Finished { file: self.file.clone() });
    }
}

/// The hub as this process sees it: a cache folder, and whether the network may be used.
#[derive(Clone, Debug)]
pub struct Hub {
    pub cache_dir: PathBuf,
    pub offline: bool,
    /// The hub's address (`$HF_ENDPOINT`, else huggingface.co).
    pub endpoint: Option<String>,
    /// Branch, tag or commit to fetch (`--revision`; default `main`).
    pub revision: Option<String>,
    /// Access token for private and gated repos ([`token_from_env`]).
    pub token: Option<String>,
}

impl Hub {
    /// From the environment; `force_offline` adds the `--offline` flag.
    pub fn from_env(force_offline: bool) -> Hub {
        Hub {
            cache_dir: cache_dir(),
            offline: force_offline || offline_from_env(),
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
            revision: None,
            token: token_from_env(),
        }
    }

    fn repo(&self, repo: &str) -> Repo {
        match &self.revision {
            Some(rev) => Repo::with_revision(repo.to_string(), RepoType::Model, rev.clone()),
            None => Repo::model(repo.to_string()),
        }
    }

    fn cache(&self) -> Cache {
        Cache::new(self.cache_dir.clone())
    }

    /// The cached copy of `repo/filename`, if any.
    pub fn cached(&self, repo: &str, filename: &str) -> Option<PathBuf> {
        self.cache().repo(self.repo(repo)).get(filename)
    }

    /// `repo/filename` from the cache, downloading it when missing (unless offline).
    pub fn fetch(&self, repo: &str, filename: &str, progress: &mut dyn FnMut(DownloadEvent)) -> Result<PathBuf> {
        if let Some(p) = self.cached(repo, filename) {
            return Ok(p);
        }
        if self.offline {
            bail!(
                "`{filename}` of `{repo}` is not in the Hugging Face cache ({}) and offline mode is on; \
                 run `vit-workbench download {repo}` once with network access (without --offline / HF_HUB_OFFLINE), \
                 or pass a local folder to --model",
                self.cache_dir.display()
            );
        }
        // Retries resume from where the temporary file ends (HTTP Range), not from zero.
        let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(self.cache())
            .with_progress(false)
            .with_retries(2)
            .with_token(self.token.clone());
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder.build().context("cannot set up the Hugging Face client")?;
        let cb = CallbackProgress { file: filename.to_string(), done: 0, callback: progress };
        api.repo(self.repo(repo)).download_with_progress(filename, cb).map_err(|e| self.explain(e, repo, filename))
    }

    /// One line for a failed download: the cause once (not hf-hub's chain, which repeats a DNS
    /// failure per layer), and for 401/403 what tokens and gated models have to do with it.
    fn explain(&self, e: hf_hub::api::sync::ApiError, repo: &str, filename: &str) -> anyhow::Error {
        let mut root: &dyn std::error::Error = &e;
        while let Some(next) = root.source() {
            root = next;
        }
        let (top, cause) = (e.to_string(), root.to_string());
        let status =
            |code: &str| top.contains(&format!("status code {code}")) || cause.contains(&format!("status code {code}"));
        let what = format!("cannot download `{filename}` of `{repo}` from the Hugging Face hub");
        if status("401") || status("403") {
            let token = if self.token.is_some() {
                "a token was sent: check that it is valid and that its account has accepted the model's terms"
            } else {
                "no token is set: set HF_TOKEN (or log in with `huggingface-cli login`)"
            };
            return anyhow::anyhow!(
                "{what}: access denied (HTTP {}): the repo is private or gated (accept its terms on its hub page), \
                 or does not exist; {token}",
                if status("401") { 401 } else { 403 }
            );
        }
        if status("404") {
            let rev = self.revision.as_deref().unwrap_or("main");
            return anyhow::anyhow!("{what}: no such file at revision `{rev}` (HTTP 404)");
        }
        let hint = "without network, use --offline with a cached model, or a local folder";
        anyhow::anyhow!("{what}: {cause} ({hint})")
    }

    /// Whether a model's config and one weight file are cached.
    pub fn is_cached(&self, repo: &str, weights: Option<&str>) -> bool {
        self.cached(repo, "config.json").is_some()
            && match weights {
                Some(w) => self.cached(repo, w).is_some(),
                None => WEIGHT_FILES.iter().any(|w| self.cached(repo, w).is_some()),
            }
    }

    /// config.json, preprocessor_config.json (when the repo has one) and the weights of a repo.
    /// `weights`: the weight file name when known; otherwise safetensors is tried, then `.bin`.
    pub fn fetch_model(
        &self,
        repo: &str,
        weights: Option<&str>,
        progress: &mut dyn FnMut(DownloadEvent),
    ) -> Result<ModelFiles> {
        let config = self.fetch(repo, "config.json", progress)?;
        // Optional: timm repos have none. A failure here only means the default recipe is used.
        let _ = self.fetch(repo, "preprocessor_config.json", progress);
        // The known weight file first (when given), then the others: repos add safetensors
        // conversions over time, and a zoo entry should not break when they do.
        let mut order: Vec<&str> = weights.into_iter().collect();
        order.extend(WEIGHT_FILES.iter().copied().filter(|w| Some(*w) != weights));
        let mut errors = Vec::new();
        let mut found = None;
        for w in order {
            match self.fetch(repo, w, progress) {
                Ok(p) => {
                    found = Some(p);
                    break;
                }
                // Only a file that is not there is worth trying the next name for; a network or
                // access failure would only repeat itself.
                Err(e) if format!("{e:#}").contains("HTTP 404") || self.offline => errors.push(format!("{e:#}")),
                Err(e) => return Err(e),
            }
        }
        let weights = found.with_context(|| errors.join("; "))?;
        // hf-hub links every file of a revision into one snapshot folder, so the preprocessor
        // config sits beside config.json, where the config loader looks for it.
        Ok(ModelFiles { config, weights })
    }
}
