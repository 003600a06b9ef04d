//! Downloads against a local stand-in for the Hugging Face hub (same URLs and headers as
//! huggingface.co: `/{repo}/resolve/main/{file}`, `x-repo-commit`, `etag`, ranges): progress
//! callbacks, the standard cache layout, offline use afterwards, and a download cut off midway.

mod common;

use std::collections::HashMap;

use common::hub_server::serve;
use common::*;
use vit_workbench::hub::{DownloadEvent, Hub};

fn fixture_files() -> HashMap<String, Vec<u8>> {
    ["config.json", "model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(fixture("timm_vit").join(f)).unwrap()))
        .collect()
}

#[test]
fn download_reports_progress_fills_the_cache_and_works_offline_afterwards() {
    let files = fixture_files();
    let hub_server = serve("acme/tiny-vit", files.clone(), None, 0);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        offline: false,
        endpoint: Some(hub_server.url.clone()),
        revision: None,
        token: None,
    };
    let mut events = Vec::new();
    let model_files = hub.fetch_model("acme/tiny-vit", None, &mut |e| events.push(e)).unwrap();
    assert_eq!(std::fs::read(&model_files.weights).unwrap(), files["model.safetensors"]);
    assert_eq!(std::fs::read(&model_files.config).unwrap(), files["config.json"]);
    // The standard layout: models--owner--name/snapshots/<commit>/file.
    assert!(
        model_files
            .weights
            .starts_with(cache.path().join("models--acme--tiny-vit").join("snapshots").join("0123456789abcdef"))
    );
    // Progress: started with the true size, advanced to it, finished, for the weights.
    let size = files["model.safetensors"].len() as u64;
    assert!(
        events.contains(&DownloadEvent::Started { file: "model.safetensors".into(), total_bytes: size }),
        "{events:?}"
    );
    let last = events.iter().rev().find_map(|e| match e {
        DownloadEvent::Progress { file, bytes } if file == "model.safetensors" => Some(*bytes),
        _ => None,
    });
    assert_eq!(last, Some(size));
    assert!(events.contains(&DownloadEvent::Finished { file: "model.safetensors".into() }));
    // Offline now: from the cache, no network.
    let offline = Hub { offline: true, endpoint: Some("http://127.0.0.1:9".into()), ..hub.clone() };
    assert!(offline.is_cached("acme/tiny-vit", None));
    let again = offline.fetch_model("acme/tiny-vit", None, &mut |_| panic!("offline must not download")).unwrap();
    assert_eq!(again, model_files);
    let m = vit_workbench::model::Model::load("acme/tiny-vit", &again, None, &candle_core::Device::Cpu).unwrap();
    assert_eq!(m.config.num_classes(), 10);
}

#[test]
fn a_download_cut_off_midway_resumes_and_never_leaves_a_partial_file_in_use() {
    let files = fixture_files();
    let hub_server = serve("acme/tiny-vit", files.clone(), Some("model.safetensors"), 0);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        offline: false,
        endpoint: Some(hub_server.url.clone()),
        revision: None,
        token: None,
    };
    let got = hub.fetch_model("acme/tiny-vit", Some("model.safetensors"), &mut |_| {});
    let size = files["model.safetensors"].len();
    match got {
        // Retried within the call: resumed from where the temporary file ended.
        Ok(f) => assert_eq!(std::fs::read(&f.weights).unwrap(), files["model.safetensors"]),
        // Or failed: then nothing partial may be in the cache under the real name.
        Err(e) => {
            assert!(hub.cached("acme/tiny-vit", "model.safetensors").is_none(), "{e:#}");
            let f = hub.fetch_model("acme/tiny-vit", Some("model.safetensors"), &mut |_| {}).unwrap();
            assert_eq!(std::fs::read(&f.weights).unwrap(), files["model.safetensors"]);
        }
    }
    let ranges = hub_server.ranges.lock().unwrap().clone();
    let resumed = ranges.iter().any(|(f, r)| f == "model.safetensors" && r == &format!("bytes={}-", size / 2));
    assert!(resumed, "the second attempt did not resume from byte {}: {ranges:?}", size / 2);
}

#[test]
fn a_missing_repo_file_is_a_clear_error() {
    let hub_server = serve("acme/tiny-vit", fixture_files(), None, 0);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        offline: false,
        endpoint: Some(hub_server.url),
        revision: None,
        token: None,
    };
    let err = format!("{:#}", hub.fetch_model("acme/other", None, &mut |_| {}).unwrap_err());
    assert!(err.contains("config.json") && err.contains("acme/other"), "{err}");
}

#[test]
fn a_zoo_weight_name_that_is_gone_falls_back_to_the_other_format() {
    // The repo ships only pytorch_model.bin although safetensors was asked for first.
    let files: HashMap<String, Vec<u8>> = ["config.json", "pytorch_model.bin"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(fixture("hf_vit_bin").join(f)).unwrap()))
        .collect();
    let hub_server = serve("acme/bin-only", files.clone(), None, 0);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        offline: false,
        endpoint: Some(hub_server.url),
        revision: None,
        token: None,
    };
    let f = hub.fetch_model("acme/bin-only", Some("model.safetensors"), &mut |_| {}).unwrap();
    assert!(f.weights.ends_with("pytorch_model.bin"));
    assert_eq!(std::fs::read(&f.weights).unwrap(), files["pytorch_model.bin"]);
}

/// (path, Authorization header) of each request a test server saw.
type SeenRequests = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A hub that answers 401 to everything, recording each request's path and Authorization.
fn serve_401() -> (String, SeenRequests) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: SeenRequests = Default::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("authorization:") {
                    auth = v.trim().to_string();
                }
            }
            log.lock().unwrap().push((line.split_whitespace().nth(1).unwrap_or("").to_string(), auth));
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nx-error-code: GatedRepo\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (url, seen)
}

#[test]
fn hf_token_and_revision_are_sent_and_a_401_explains_tokens_once() {
    let (url, seen) = serve_401();
    let cache = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["download", "acme/gated", "--revision", "v1.0"])
        .env("HF_ENDPOINT", &url)
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HOME", home.path())
        .env("HF_TOKEN", "hf_secret")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("HTTP 401") && err.contains("gated") && err.contains("token was sent"), "{err}");
    assert_eq!(err.matches("acme/gated").count(), 1, "said more than once: {err}");
    let first = std::mem::take(&mut *seen.lock().unwrap());
    assert!(!first.is_empty());
    assert!(first.iter().all(|(path, _)| path.contains("/acme/gated/resolve/v1.0/")), "{first:?}");
    assert!(first.iter().all(|(_, auth)| auth == "bearer hf_secret"), "{first:?}");
    // Without a token, the message says how to set one; the token file of HF_HOME counts.
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        offline: false,
        endpoint: Some(url.clone()),
        revision: None,
        token: None,
    };
    let e = format!("{:#}", hub.fetch_model("acme/gated", None, &mut |_| {}).unwrap_err());
    assert!(e.contains("HF_TOKEN") && e.contains("no token"), "{e}");
    std::fs::write(home.path().join("token"), "hf_from_file\n").unwrap();
    seen.lock().unwrap().clear();
    let out = std::process::Command::new(bin())
        .args(["download", "acme/gated"])
        .env("HF_ENDPOINT", &url)
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HOME", home.path())
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let second = seen.lock().unwrap().clone();
    assert!(!second.is_empty() && second.iter().all(|(_, auth)| auth == "bearer hf_from_file"), "{second:?}");
}

#[test]
fn an_unreachable_hub_is_reported_once_with_its_cause() {
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        offline: false,
        endpoint: Some("http://127.0.0.1:9".into()),
        revision: None,
        token: None,
    };
    let e = format!("{:#}", hub.fetch_model("acme/tiny", None, &mut |_| {}).unwrap_err());
    assert_eq!(e.matches("Connection refused").count(), 1, "{e}");
    assert_eq!(e.matches("acme/tiny").count(), 1, "{e}");
    assert!(e.contains("--offline"), "{e}");
}
