#![allow(dead_code)]
pub mod hub_server;

use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests").join("fixtures").join(name)
}

/// `../shared` beside the checkout (real weights and photos). In CI its absence is a failure;
/// elsewhere the test says it is skipped.
pub fn shared() -> Option<PathBuf> {
    let dir = repo().join("..").join("shared");
    if dir.join("models").is_dir() && dir.join("images").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("../shared (real weights and photos) is missing, and CI is set: these tests must run in CI");
    }
    eprintln!("SKIPPED: ../shared is missing (real-weight tests need it)");
    None
}

pub fn timm_tiny(shared: &std::path::Path) -> PathBuf {
    shared.join("models").join("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
}

pub fn hf_tiny(shared: &std::path::Path) -> PathBuf {
    shared.join("models").join("vit-tiny-patch16-224")
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vit-workbench"))
}

/// Copies the files of fixture `name` into the folder `to` (created), to damage them there.
pub fn copy_fixture(name: &str, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// Runs the binary offline with an empty hub cache: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", std::env::temp_dir().join("vitwb-empty-cache"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `stderr` is one line, `error: ...`, holding every needle, and no panic message.
pub fn assert_one_line_error(stderr: &str, needles: &[&str]) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks `{n}`: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// One variant's row of an evaluation with fixed numbers (tests that draw or match an
/// `EvalReport` without running one): `correct` of `images` top-1, every top-5 right.
pub fn fixed_accuracy(
    variant: vit_workbench::model::Variant,
    label: &str,
    kept: &[vit_workbench::model::LayerName],
    images: usize,
    correct: usize,
) -> vit_workbench::eval::VariantAccuracy {
    vit_workbench::eval::VariantAccuracy {
        variant,
        label: label.into(),
        kept_fp32: kept.to_vec(),
        images,
        top1_correct: correct,
        topk_correct: images,
        top1: correct as f64 / images as f64,
        top1_low: 0.0,
        top1_high: 1.0,
        topk: 1.0,
        topk_low: 0.0,
        topk_high: 1.0,
        top1_delta_vs_fp32: None,
        flips: Vec::new(),
    }
}

/// The shared photos (`images/*.png|jpg`), sorted by path.
pub fn shared_photos(shared: &std::path::Path) -> Vec<PathBuf> {
    let mut photos: Vec<PathBuf> = std::fs::read_dir(shared.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg")))
        .collect();
    photos.sort();
    photos
}

/// The values of `columns` (found by header name) in every row of the CSV file at `path`.
pub fn csv_columns(path: &std::path::Path, columns: &[&str]) -> Vec<Vec<String>> {
    let mut rd = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_string).collect();
    let at: Vec<usize> =
        columns.iter().map(|c| header.iter().position(|h| h == c).unwrap_or_else(|| panic!("no column {c}"))).collect();
    rd.records().map(|r| r.unwrap()).map(|r| at.iter().map(|&i| r[i].to_string()).collect()).collect()
}
