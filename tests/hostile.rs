//! Hostile inputs at every entry point: each gets a result or an error that names the file and
//! the problem — never a panic, never an unbounded allocation, never executed code.

mod common;

use std::io::Cursor;
use std::panic::catch_unwind;
use std::path::Path;
use std::process::Command;

use candle_core::Device;
use common::*;
use image::{DynamicImage, ImageFormat, RgbImage};
use vit_workbench::model::{Model, ModelFiles};
use vit_workbench::preprocess::{MAX_IMAGE_SIDE, decode_image};

fn png_chunk(t: &[u8], d: &[u8]) -> Vec<u8> {
    let mut c = (d.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(t);
    c.extend_from_slice(d);
    let mut crc = 0xffff_ffffu32;
    for &b in t.iter().chain(d) {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    c.extend_from_slice(&(!crc).to_be_bytes());
    c
}

#[test]
fn a_decompression_bomb_header_is_refused_before_allocating() {
    // A 100000 x 100000 RGB PNG header (30 GB of pixels) with a tiny body.
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[0x78, 0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(png_chunk(b"IEND", &[]));
    let start = std::time::Instant::now();
    let err = format!("{:#}", decode_image(&png).unwrap_err());
    assert!(err.to_lowercase().contains("limit") || err.contains("dimension"), "{err}");
    assert!(start.elapsed().as_secs() < 2, "took too long: it allocated");
    // The limit still admits wide panoramas up to the stated side.
    let wide = DynamicImage::ImageRgb8(RgbImage::new(MAX_IMAGE_SIDE, 2));
    assert_eq!(decode_image(&encode(&wide, ImageFormat::Png)).unwrap().dimensions(), (MAX_IMAGE_SIDE, 2));
    let too_wide = DynamicImage::ImageRgb8(RgbImage::new(MAX_IMAGE_SIDE + 1, 2));
    assert!(decode_image(&encode(&too_wide, ImageFormat::Png)).is_err());
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

#[test]
fn truncated_and_corrupt_files_of_every_format_never_panic() {
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 77])));
    let formats =
        [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Bmp, ImageFormat::Gif, ImageFormat::Tiff];
    let mut outcomes = Vec::new();
    for format in formats {
        let bytes = encode(&img, format);
        for cut in [0usize, 8, 16, 64, bytes.len() / 2, bytes.len() - 1] {
            let data = bytes[..cut].to_vec();
            let r = catch_unwind(|| decode_image(&data).map(|i| i.dimensions()).map_err(|e| format!("{e:#}")));
            let r = r.unwrap_or_else(|_| panic!("{format:?} cut at {cut} panicked"));
            if let Err(e) = &r {
                assert!(!e.is_empty());
            }
            outcomes.push((format, cut, r.is_ok()));
        }
        // Flipped bytes in the body.
        let mut flipped = bytes.clone();
        for i in (bytes.len() / 3..bytes.len()).step_by(7) {
            flipped[i] ^= 0x5a;
        }
        let r = catch_unwind(|| decode_image(&flipped).map(|i| i.dimensions()).map_err(|e| format!("{e:#}")));
        assert!(r.is_ok(), "{format:?} with flipped bytes panicked");
    }
    // The empty and header-only cuts are always errors.
    assert!(outcomes.iter().filter(|o| o.1 <= 8).all(|o| !o.2));
}

fn load_err(dir: &Path) -> String {
    let files = ModelFiles::from_dir(dir).unwrap();
    format!("{:#}", Model::load("hostile", &files, None, &Device::Cpu).unwrap_err())
}

/// A safetensors file from (name, dtype, shape, bytes) entries, with a header we control.
fn safetensors(entries: &[(&str, &str, Vec<usize>, usize, usize)], data: &[u8]) -> Vec<u8> {
    let header: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(n, dt, shape, a, b)| {
            (n.to_string(), serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [a, b]}))
        })
        .collect();
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

#[test]
fn checkpoints_that_lie_are_refused_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("timm_vit", &m);
    let w = m.join("model.safetensors");
    // A header whose offsets point past the end of the file.
    std::fs::write(&w, safetensors(&[("cls_token", "F32", vec![1, 1, 32], 0, 4_000_000)], &[0u8; 128])).unwrap();
    let e = load_err(&m);
    assert!(e.contains("model.safetensors") && e.contains("safetensors"), "{e}");
    // A header claiming an absurd length.
    let mut absurd = (u64::MAX / 2).to_le_bytes().to_vec();
    absurd.extend_from_slice(b"{}");
    std::fs::write(&w, absurd).unwrap();
    assert!(load_err(&m).contains("model.safetensors"));
    // Integer weights where floats belong.
    std::fs::write(&w, safetensors(&[("cls_token", "I64", vec![1, 1, 32], 0, 256)], &[0u8; 256])).unwrap();
    let e = load_err(&m);
    assert!(e.contains("cls_token") && e.contains("dtype"), "{e}");
    // A plausible file with one tensor only: the rest are named as missing.
    std::fs::write(&w, safetensors(&[("cls_token", "F32", vec![1, 1, 32], 0, 128)], &[0u8; 128])).unwrap();
    let e = load_err(&m);
    assert!(e.contains("missing tensor"), "{e}");
}

#[test]
fn extra_tensors_are_refused_and_missing_ones_named() {
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("timm_vit", &m);
    let w = m.join("model.safetensors");
    let mut t: HashMap<String, candle_core::Tensor> = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    t.insert(
        "blocks.0.ls1.gamma".into(),
        candle_core::Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &w).unwrap();
    let e = load_err(&m);
    assert!(e.contains("unexpected tensor") && e.contains("blocks.0.ls1.gamma"), "{e}");
    t.remove("blocks.0.ls1.gamma");
    t.remove("blocks.1.mlp.fc2.bias");
    candle_core::safetensors::save(&t, &w).unwrap();
    let e = load_err(&m);
    assert!(e.contains("missing tensor `blocks.1.mlp.fc2.bias`"), "{e}");
}

#[test]
fn nan_weights_load_with_a_warning() {
    let Some(_) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("timm_vit", &m);
    let w = m.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let nan = candle_core::Tensor::new(&[f32::NAN; 64 * 32], &Device::Cpu).unwrap().reshape((64, 32)).unwrap();
    t.insert("blocks.0.mlp.fc1.weight".into(), nan);
    candle_core::safetensors::save(&t, &w).unwrap();
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let out =
        Command::new(bin()).args(["classify", img.to_str().unwrap(), "--model", m.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning") && stderr.contains("non-finite") && stderr.contains("block 0 fc1"), "{stderr}");
}

#[test]
fn absurd_configs_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("hf_vit", &m);
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    for (from, to, needle) in [
        ("\"hidden_size\": 32", "\"hidden_size\": 1000000000", "hidden size"),
        ("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 100000", "number of layers"),
        ("\"num_attention_heads\": 2", "\"num_attention_heads\": 3", "not divisible"),
        ("\"patch_size\": 8", "\"patch_size\": 7", "multiple of patch size"),
        ("\"hidden_size\": 32", "\"hidden_size\": -5", "hidden_size"),
    ] {
        assert!(cfg.contains(from), "{from}");
        std::fs::write(m.join("config.json"), cfg.replace(from, to)).unwrap();
        let start = std::time::Instant::now();
        let e = load_err(&m);
        assert!(e.contains("config.json") && e.contains(needle), "{to}: {e}");
        assert!(start.elapsed().as_millis() < 500);
    }
}

#[test]
fn a_pickle_that_would_run_code_is_refused_and_runs_nothing() {
    let marker = Path::new("/tmp/vit-workbench-pwned");
    let _ = std::fs::remove_file(marker);
    let e = load_err(&fixture("hostile/evil_pickle"));
    assert!(e.contains("pytorch_model.bin"), "{e}");
    assert!(!marker.exists(), "the pickle was executed");
}

#[test]
fn an_unwritable_cache_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let hub = vit_workbench::hub::Hub {
        cache_dir: file.join("hub"),
        offline: false,
        endpoint: Some("http://127.0.0.1:9".into()),
    };
    let e = format!("{:#}", hub.fetch_model("acme/tiny", None, &mut |_| {}).unwrap_err());
    assert!(e.contains("acme/tiny") && e.contains("config.json"), "{e}");
}

#[test]
fn a_cmyk_jpeg_decodes_to_its_colours() {
    // 24x16: left half red, right half blue, saved by PIL as a CMYK JPEG.
    let img = vit_workbench::preprocess::load_image(&fixture("hostile/cmyk.jpg")).unwrap();
    assert_eq!(img.dimensions(), (24, 16));
    let (left, right) = (img.get_pixel(2, 8).0, img.get_pixel(20, 8).0);
    assert!(left[0] > 150 && left[2] < 90, "left should be red: {left:?}");
    assert!(right[2] > 150 && right[0] < 90, "right should be blue: {right:?}");
}
