//! A local stand-in for the Hugging Face hub (same URLs and headers as huggingface.co:
//! `/{repo}/resolve/main/{file}`, `x-repo-commit`, `etag`, byte ranges), for download tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

pub struct MockHub {
    pub url: String,
    /// Every `Range` header the server saw, per file.
    pub ranges: Arc<Mutex<Vec<(String, String)>>>,
}

/// Serves `files` for `repo`; the first full download of `cut_file` is cut after half its bytes;
/// bodies are sent in 4 kB pieces `delay_ms` apart (0: at once).
pub fn serve(repo: &str, files: HashMap<String, Vec<u8>>, cut_file: Option<&str>, delay_ms: u64) -> MockHub {
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
            for piece in chunk.chunks(if delay_ms > 0 { 4096 } else { chunk.len().max(1) }) {
                if stream.write_all(piece).is_err() {
                    break;
                }
                let _ = stream.flush();
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            }
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        }
    });
    MockHub { url, ranges }
}
