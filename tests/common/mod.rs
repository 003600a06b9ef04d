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
