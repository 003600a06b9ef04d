//! Downloads against a local stand-in for the Hugging Face hub (same URLs and headers as
//! huggingface.co: `/{repo}/resolve/main/{file}`, `x-repo-commit`, `etag`, ranges): progress
//! callbacks, the standard cache layout, offline use afterwards, and a download cut off midway.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::*;
use vit_workbench::hub::{DownloadEvent, Hub};

struct MockHub {
    url: String,
    /// Every `Range` header the server saw, per file.
    ranges: Arc<Mutex<Vec<(String, String)>>>,
}

/// Serves `files` for `repo`; the first full download of `cut_file` is cut after half its bytes.
fn serve(repo: &str, files: HashMap<String, Vec<u8>>, cut_file: Option<&str>) -> MockHub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let ranges: Arc<Mutex<Vec<(String, String)>>> = Default::default();
    let (repo, cut_file, seen) = (repo.to_string(), cut_file.map(str::to_string), ranges.clone());
    std::thread::spawn(move || {
        let mut cut_done = false;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range:") {
                    range = Some(v.trim().to_string());
                }
            }
            let prefix = format!("/{repo}/resolve/main/");
            let file = path.strip_prefix(&prefix).map(str::to_string);
            let Some(body) = file.as_ref().and_then(|f| files.get(f)) else {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                continue;
            };
            let file = file.unwrap();
            let r = range.clone().unwrap_or_else(|| "bytes=0-".into());
            seen.lock().unwrap().push((file.clone(), r.clone()));
            let spec = r.trim_start_matches("bytes=");
            let (a, b) = spec.split_once('-').unwrap();
            let start: usize = a.parse().unwrap();
            let end: usize = if b.is_empty() { body.len() - 1 } else { b.parse().unwrap() };
            let chunk = &body[start..=end.min(body.len() - 1)];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nx-repo-commit: 0123456789abcdef\r\netag: \"etag-{}\"\r\ncontent-range: bytes {}-{}/{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                file.replace('.', "-"),
                start,
                start + chunk.len() - 1,
                body.len(),
                chunk.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let full_download = chunk.len() > 1;
            if full_download && !cut_done && cut_file.as_deref() == Some(file.as_str()) {
                // The connection drops halfway through the body.
                cut_done = true;
                let _ = stream.write_all(&chunk[..chunk.len() / 2]);
                let _ = stream.flush();
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let _ = stream.write_all(chunk);
            let _ = stream.flush();
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        }
    });
    MockHub { url, ranges }
}

fn fixture_files() -> HashMap<String, Vec<u8>> {
    ["config.json", "model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(fixture("timm_vit").join(f)).unwrap()))
        .collect()
}

#[test]
fn download_reports_progress_fills_the_cache_and_works_offline_afterwards() {
    let files = fixture_files();
    let hub_server = serve("acme/tiny-vit", files.clone(), None);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub { cache_dir: cache.path().to_path_buf(), offline: false, endpoint: Some(hub_server.url.clone()) };
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
    let hub_server = serve("acme/tiny-vit", files.clone(), Some("model.safetensors"));
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub { cache_dir: cache.path().to_path_buf(), offline: false, endpoint: Some(hub_server.url.clone()) };
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
    let hub_server = serve("acme/tiny-vit", fixture_files(), None);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub { cache_dir: cache.path().to_path_buf(), offline: false, endpoint: Some(hub_server.url) };
    let err = format!("{:#}", hub.fetch_model("acme/other", None, &mut |_| {}).unwrap_err());
    assert!(err.contains("config.json") && err.contains("acme/other"), "{err}");
}
