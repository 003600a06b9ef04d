//! The engine against the reference implementations: tiny random-weight models in every layout
//! (logits and attention within 1e-4 of transformers/timm), PIL-exact preprocessing, and the
//! real ViT-Ti in both layouts.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::*;
use vit_workbench::model::{Capture, Model, ModelFiles};
use vit_workbench::preprocess::{Recipe, load_image};

fn load_fixture(name: &str) -> (Model, HashMap<String, Tensor>) {
    let dir = fixture(name);
    let files = ModelFiles::from_dir(&dir).unwrap();
    let model = Model::load(name, &files, None, &Device::Cpu).unwrap();
    let reference = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    (model, reference)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn check_parity(name: &str) {
    let (model, r) = load_fixture(name);
    let out = model.forward(&r["pixel_values"], Capture::ATTENTIONS).unwrap();
    let dl = max_abs_diff(&out.logits, &r["logits"]);
    let atts = out.attentions.unwrap();
    assert_eq!(atts.len(), model.config.depth);
    let mut da = 0f32;
    for (i, a) in atts.iter().enumerate() {
        da = da.max(max_abs_diff(a, &r[&format!("attn.{i}")]));
    }
    println!("{name}: max |Δlogit| = {dl:.2e}, max |Δattention| = {da:.2e}");
    assert!(dl < 1e-4, "{name}: logits differ by {dl}");
    assert!(da < 1e-4, "{name}: attentions differ by {da}");
    // The logits must not be trivially equal to something degenerate.
    let spread = r["logits"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(spread.iter().any(|v| v.abs() > 0.1), "{name}: fixture logits are degenerate");
}

#[test]
fn parity_hf_vit() {
    check_parity("hf_vit");
}

#[test]
fn parity_hf_vit_pytorch_bin() {
    check_parity("hf_vit_bin");
}

#[test]
fn parity_hf_deit() {
    check_parity("hf_deit");
}

#[test]
fn parity_hf_deit_distilled() {
    check_parity("hf_deit_distilled");
}

#[test]
fn parity_timm_vit() {
    check_parity("timm_vit");
}

#[test]
fn parity_timm_deit_distilled() {
    check_parity("timm_deit_distilled");
}

#[test]
fn attention_capture_is_off_by_default_and_does_not_change_logits() {
    let (model, r) = load_fixture("timm_vit");
    let plain = model.forward(&r["pixel_values"], Capture::NONE).unwrap();
    assert!(plain.attentions.is_none());
    let captured = model.forward(&r["pixel_values"], Capture::ATTENTIONS).unwrap();
    assert_eq!(max_abs_diff(&plain.logits, &captured.logits), 0.0);
    // Each attention row is a probability distribution.
    let a = &captured.attentions.unwrap()[0];
    let sums = a.sum(3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
}

/// candle-transformers' own ViT on the same HF checkpoint: an independent implementation.
#[test]
fn hf_vit_matches_candle_transformers() {
    use candle_transformers::models::vit;
    let dir = fixture("hf_vit");
    let (model, r) = load_fixture("hf_vit");
    let c = &model.config;
    let cfg = vit::Config {
        hidden_size: c.hidden,
        num_hidden_layers: c.depth,
        num_attention_heads: c.heads,
        intermediate_size: c.mlp,
        hidden_act: candle_nn::Activation::Gelu,
        layer_norm_eps: c.layer_norm_eps,
        image_size: c.image_size,
        patch_size: c.patch,
        num_channels: 3,
        qkv_bias: c.qkv_bias,
    };
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            candle_core::DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let reference = vit::Model::new(&cfg, c.num_classes(), vb).unwrap();
    let theirs = reference.forward(&r["pixel_values"]).unwrap();
    let ours = model.forward(&r["pixel_values"], Capture::NONE).unwrap().logits;
    let d = max_abs_diff(&ours, &theirs);
    println!("candle-transformers vit vs ours: max |Δlogit| = {d:.2e}");
    assert!(d < 1e-4);
}

// ---- preprocessing ---------------------------------------------------------------------------

fn recipe_by_name(name: &str) -> Recipe {
    use vit_workbench::preprocess::{Crop, CropRounding, Filter, Resize};
    match name {
        "hf_vit" => Recipe::hf_vit(224),
        "deit" => Recipe::deit(224),
        "timm_crop90_bicubic" => Recipe {
            resize: Resize::ShorterSide(248),
            filter: Filter::Bicubic,
            crop: Some(Crop { width: 224, height: 224, rounding: CropRounding::HalfEven }),
            mean: [0.5; 3],
            std: [0.5; 3],
        },
        other => panic!("unknown recipe {other}"),
    }
}

#[test]
fn preprocessing_matches_pil() {
    let Some(shared) = shared() else { return };
    let dir = fixture("preprocess");
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    assert_eq!(entries.len(), 6);
    let mut worst = 0u8;
    for path in entries {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let (recipe, photo) = stem.split_once("__").unwrap();
        let photo_path = ["png", "jpg"]
            .iter()
            .map(|e| shared.join("images").join(format!("{photo}.{e}")))
            .find(|p| p.exists())
            .unwrap();
        let ours = recipe_by_name(recipe).resize_and_crop(&load_image(&photo_path).unwrap()).unwrap();
        let theirs = image::open(&path).unwrap().to_rgb8();
        assert_eq!(ours.dimensions(), theirs.dimensions());
        let (mut max, mut differing) = (0u8, 0usize);
        for (a, b) in ours.as_raw().iter().zip(theirs.as_raw()) {
            let d = a.abs_diff(*b);
            max = max.max(d);
            differing += usize::from(d > 0);
        }
        println!("{recipe} on {photo}: max deviation {max}/255, {differing} of {} values differ", ours.as_raw().len());
        worst = worst.max(max);
        assert!(max <= 2, "{stem}: {max}/255 off PIL");
        if photo_path.extension().unwrap() == "png" {
            // Lossless source: no decoder differences, so the resampler must be exact.
            assert_eq!(max, 0, "{stem}: PIL's resampling is not reproduced exactly");
        }
    }
    println!("worst deviation from PIL over all recipes and photos: {worst}/255");
}

// ---- real weights ----------------------------------------------------------------------------

fn reference_top(photo: &str, layout: &str) -> (String, f32) {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("real_reference.json")).unwrap()).unwrap();
    let t = &j[photo][layout][0];
    (t["label"].as_str().unwrap().to_string(), t["probability"].as_f64().unwrap() as f32)
}

#[test]
fn real_vit_tiny_both_layouts_identical_logits() {
    let Some(shared) = shared() else { return };
    let timm = Model::load("timm", &ModelFiles::from_dir(&timm_tiny(&shared)).unwrap(), None, &Device::Cpu).unwrap();
    let hf = Model::load("hf", &ModelFiles::from_dir(&hf_tiny(&shared)).unwrap(), None, &Device::Cpu).unwrap();
    let img = load_image(&shared.join("images/chelsea.png")).unwrap();
    let x = timm.preprocess(&img).unwrap();
    let a = timm.forward(&x, Capture::NONE).unwrap().logits;
    let b = hf.forward(&x, Capture::NONE).unwrap().logits;
    let d = max_abs_diff(&a, &b);
    println!("timm vs HF layout on the same input: max |Δlogit| = {d:.2e}");
    assert!(d < 1e-4);
}

#[test]
fn real_vit_tiny_classifies_photos_like_the_references() {
    let Some(shared) = shared() else { return };
    // (photo, layout, expected top-1, probability listed in ../shared/README.md)
    let cases = [
        ("chelsea.png", "timm", "Egyptian cat", 0.81),
        ("coffee.png", "timm", "espresso", 0.94),
        ("chelsea.png", "hf", "Egyptian cat", 0.74),
        ("coffee.png", "hf", "espresso", 0.97),
    ];
    let timm = Model::load("timm", &ModelFiles::from_dir(&timm_tiny(&shared)).unwrap(), None, &Device::Cpu).unwrap();
    let hf = Model::load("hf", &ModelFiles::from_dir(&hf_tiny(&shared)).unwrap(), None, &Device::Cpu).unwrap();
    for (photo, layout, label, readme_p) in cases {
        let model = if layout == "timm" { &timm } else { &hf };
        let top = model.classify(&load_image(&shared.join("images").join(photo)).unwrap(), 5).unwrap();
        let (ref_label, ref_p) = reference_top(photo, layout);
        println!(
            "{layout} {photo}: {} {:.4} (PyTorch+PIL {ref_label} {ref_p:.4}, README {readme_p})",
            top[0].label, top[0].probability
        );
        assert_eq!(top[0].label, label);
        assert_eq!(ref_label, label);
        assert!(
            (top[0].probability - readme_p).abs() <= 0.02,
            "{layout} {photo}: {} vs README {readme_p}",
            top[0].probability
        );
        assert!((top[0].probability - ref_p).abs() <= 0.02);
    }
}
