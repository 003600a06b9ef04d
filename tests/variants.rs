//! int8 and mobile variants: agreement with torch's `quantize_dynamic` within the bound
//! rounding explains, real-weight accuracy, file sizes, and export round trips.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::*;
use vit_workbench::kernels::Isa;
use vit_workbench::kernels::gemm_i8::{self, Epilogue, PackedWeights};
use vit_workbench::model::{Capture, Model, ModelFiles};
use vit_workbench::preprocess::load_image;
use vit_workbench::quant::{QuantOptions, Variant, export, metrics};

fn vec1(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn load(name: &str) -> (Model, HashMap<String, Tensor>) {
    let dir = fixture(name);
    let model = Model::load(name, &ModelFiles::from_dir(&dir).unwrap(), None, &Device::Cpu).unwrap();
    (model, candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap())
}

/// One layer, ours vs torch, against the worst case of both schemes' rounding.
///
/// For y = Σ_j x_j w_j, quantizing x and w with rounding errors |δx| <= s_x/2, |δw| <= s_w/2
/// gives |ŷ - y| <= Σ_j (|x_j| s_w/2 + |w_j| s_x/2 + s_x s_w/4). Both results are within that
/// of the fp32 product, so |y_ours - y_torch| <= bound_ours + bound_torch. Our scales:
/// s_w = max|w_row|/127, s_x = max|x_row|/127. torch (x86/fbgemm, per-channel weights): its
/// stored weight scales, and activations per tensor, asymmetric uint8 over [min(x,0), max(x,0)]
/// with `reduce_range` (7 bits): s_x <= (max - min)/127 (8-bit would only make it smaller).
/// fp32 summation adds at most ~k·2^-24·Σ|x w| per output; 1e-5·Σ|x w| covers it.
#[test]
fn int8_linear_is_within_the_rounding_bound_of_torch() {
    let r = candle_core::safetensors::load(fixture("quant_linear/reference.safetensors"), &Device::Cpu).unwrap();
    let (x, w, b) = (vec1(&r["x"]), vec1(&r["weight"]), vec1(&r["bias"]));
    let (y_torch, y_fp32, sw_t) = (vec1(&r["y_int8_torch"]), vec1(&r["y_fp32"]), vec1(&r["torch_weight_scales"]));
    let (m, n, k) = (7, 40, 100);
    let packed = PackedWeights::quantize(&w, n, k);
    let a = gemm_i8::quantize_rows(&x, m, k);
    let mut y = vec![0f32; m * n];
    gemm_i8::gemm(Isa::Portable, &a, &packed, Some(&b), Epilogue::None, &mut y);
    let xmax = x.iter().fold(0f32, |a, v| a.max(*v));
    let xmin = x.iter().fold(0f32, |a, v| a.min(*v));
    let sx_t = (xmax - xmin) / 127.0;
    let (mut worst_ratio, mut ours_err, mut torch_err) = (0f32, 0f32, 0f32);
    for i in 0..m {
        for j in 0..n {
            let (xr, wr) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
            let (sx_o, sw_o) = (a.scales[i], packed.scales[j]);
            let bound: f32 = xr
                .iter()
                .zip(wr)
                .map(|(xv, wv)| {
                    xv.abs() * (sw_o + sw_t[j]) / 2.0
                        + wv.abs() * (sx_o + sx_t) / 2.0
                        + (sx_o * sw_o + sx_t * sw_t[j]) / 4.0
                        + 1e-5 * (xv * wv).abs()
                })
                .sum();
            let d = (y[i * n + j] - y_torch[i * n + j]).abs();
            assert!(d <= bound, "row {i} col {j}: |ours - torch| = {d} > bound {bound}");
            worst_ratio = worst_ratio.max(d / bound);
            ours_err = ours_err.max((y[i * n + j] - y_fp32[i * n + j]).abs());
            torch_err = torch_err.max((y_torch[i * n + j] - y_fp32[i * n + j]).abs());
        }
    }
    println!(
        "layer: max |ours - torch| / bound = {worst_ratio:.3}; max error vs fp32: ours {ours_err:.4}, torch {torch_err:.4}"
    );
    // Per-row activation scales must pay off on rows of very different magnitude.
    assert!(ours_err < torch_err, "ours {ours_err} vs torch {torch_err}");
}

/// Whole tiny models, quantized like torch (patch embedding left fp32). Through 2 layers of
/// LayerNorm, softmax and GELU a closed-form bound is too loose to test anything, so the
/// layer-level bound above is the rigorous check; here each rounding step of ours is at most
/// torch's (per-row activation scales <= per-tensor ones, same per-channel weights), so our
/// int8 must lose no more than torch's: RMS |Δlogit| vs fp32 at most torch's.
#[test]
fn int8_models_lose_no_more_than_torch_quantize_dynamic() {
    for name in ["hf_vit", "hf_deit", "hf_deit_distilled", "timm_vit", "timm_deit_distilled"] {
        let (model, r) = load(name);
        let torch_like = QuantOptions { patch_embed: false, ..Default::default() };
        let ours = model.to_variant(Variant::Int8, torch_like).unwrap();
        let logits = vec1(&ours.forward(&r["pixel_values"], Capture::NONE).unwrap().logits);
        let (fp32, torch) = (vec1(&r["logits"]), vec1(&r["logits_int8_torch"]));
        let rms_err =
            |a: &[f32]| (a.iter().zip(&fp32).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
        let (e_ours, e_torch) = (rms_err(&logits), rms_err(&torch));
        println!("{name}: RMS |Δlogit| vs fp32: ours {e_ours:.4}, torch {e_torch:.4}");
        assert!(e_ours <= e_torch, "{name}: ours {e_ours} vs torch {e_torch}");
        assert!(e_ours > 0.0, "{name}: int8 identical to fp32 means nothing was quantized");
    }
}

#[test]
fn mobile_matches_int8_and_fuses_what_it_claims() {
    let (model, r) = load("timm_deit_distilled");
    let int8 = model.to_variant(Variant::Int8, QuantOptions::default()).unwrap();
    let mobile = model.to_variant(Variant::Mobile, QuantOptions::default()).unwrap();
    assert!(mobile.weights.attention_scale_folded && !int8.weights.attention_scale_folded);
    assert!(mobile.weights.blocks.iter().all(|b| b.fc1.fuses_gelu()));
    assert!(!int8.weights.blocks.iter().any(|b| b.fc1.fuses_gelu()));
    let a = vec1(&int8.forward(&r["pixel_values"], Capture::NONE).unwrap().logits);
    let b = vec1(&mobile.forward(&r["pixel_values"], Capture::NONE).unwrap().logits);
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    println!("mobile vs int8: max |Δlogit| = {d:.2e}");
    // Folding the attention scale changes only float rounding, not the int8 codes.
    assert!(d < 1e-3, "{d}");
}

#[test]
fn variants_of_a_variant_are_refused() {
    let (model, _) = load("timm_vit");
    let int8 = model.to_variant(Variant::Int8, QuantOptions::default()).unwrap();
    let err = int8.to_variant(Variant::Mobile, QuantOptions::default()).unwrap_err().to_string();
    assert!(err.contains("must be made from the fp32 model"), "{err}");
}

// ---- real weights -----------------------------------------------------------------------------

#[test]
fn real_vit_tiny_int8_and_mobile_keep_top1_and_top5() {
    let Some(shared) = shared() else { return };
    let fp32 = Model::load("timm", &ModelFiles::from_dir(&timm_tiny(&shared)).unwrap(), None, &Device::Cpu).unwrap();
    let variants: Vec<Model> = [Variant::Int8, Variant::Mobile]
        .iter()
        .map(|v| fp32.to_variant(*v, QuantOptions::default()).unwrap())
        .collect();
    let photos = shared_photos(&shared);
    assert!(photos.len() >= 4);
    let imgs: Vec<_> = photos.iter().map(|p| load_image(p).unwrap()).collect();
    let report = metrics::compare_variants(&fp32, &variants.iter().collect::<Vec<_>>(), &imgs).unwrap();
    for r in &report {
        for (p, a) in photos.iter().zip(&r.per_image) {
            println!(
                "{} {}: top-1 agrees {}, top-5 overlap {}/5, KL {:.4}",
                r.variant,
                p.display(),
                a.top1_agree,
                a.top5_overlap,
                a.kl_div
            );
            assert!(a.top1_agree, "{} changed the top-1 of {}", r.variant, p.display());
            assert!(a.top5_overlap >= 4, "{} top-5 overlap {} on {}", r.variant, a.top5_overlap, p.display());
        }
        assert_eq!(r.per_layer_error.len(), 12);
    }
}

#[test]
fn real_vit_tiny_exports_are_small_and_round_trip_bit_exact() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fp32 = Model::load("vit-tiny", &ModelFiles::from_dir(&hf_tiny(&shared)).unwrap(), None, &Device::Cpu).unwrap();
    let img = load_image(&shared.join("images/coffee.png")).unwrap();
    let x = fp32.preprocess(&img).unwrap();
    let mut sizes = HashMap::new();
    for v in Variant::ALL {
        let m = fp32.to_variant(v, QuantOptions::default()).unwrap();
        let path = dir.path().join(format!("tiny-{v}.safetensors"));
        let written = export::export(&m, &path).unwrap();
        assert_eq!(written, std::fs::metadata(&path).unwrap().len());
        sizes.insert(v, written);
        let loaded = export::load(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.variant, v);
        assert_eq!(loaded.config, m.config);
        assert_eq!(loaded.recipe, m.recipe);
        if v != Variant::Fp32 {
            // The int8 weights are used straight from the memory map.
            let vit_workbench::model::vit::Linear::Int8(q) = &loaded.weights.blocks[0].qkv else { panic!("not int8") };
            assert!(q.weights.data.is_mapped());
        }
        let before = vec1(&m.forward(&x, Capture::NONE).unwrap().logits);
        let after = vec1(&loaded.forward(&x, Capture::NONE).unwrap().logits);
        assert_eq!(before, after, "{v}: logits changed across export/load");
        // And through the CLI's loader: the file is a model on its own.
        let via_spec = vit_workbench::zoo::load_model(
            path.to_str().unwrap(),
            v,
            &vit_workbench::hub::Hub::from_env(true),
            &Device::Cpu,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(vec1(&via_spec.forward(&x, Capture::NONE).unwrap().logits), before);
    }
    for v in [Variant::Int8, Variant::Mobile] {
        let ratio = sizes[&v] as f64 / sizes[&Variant::Fp32] as f64;
        println!("{v}: {} bytes, {:.1}% of fp32 ({} bytes)", sizes[&v], 100.0 * ratio, sizes[&Variant::Fp32]);
        assert!(ratio <= 0.27, "{v} file is {:.1}% of fp32", 100.0 * ratio);
    }
}

#[test]
fn compare_command_reports_sane_numbers() {
    let Some(shared) = shared() else { return };
    let out = std::process::Command::new(bin())
        .args(["compare", "--json", "--model", timm_tiny(&shared).to_str().unwrap()])
        .arg(shared.join("images/chelsea.png"))
        .arg(shared.join("images/coffee.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let fp32 = &rows[0];
    assert_eq!(fp32["variant"], "fp32");
    assert_eq!(fp32["summary"]["top1_agreement"], 1.0);
    assert_eq!(fp32["summary"]["mean_kl_div"], 0.0);
    let fp32_bytes = fp32["file_bytes"].as_u64().unwrap();
    for row in &rows[1..] {
        let s = &row["summary"];
        assert_eq!(s["images"], 2);
        assert_eq!(s["top1_agreement"], 1.0);
        let kl = s["mean_kl_div"].as_f64().unwrap();
        assert!(kl > 0.0 && kl < 0.05, "KL {kl}");
        let cos = s["min_cosine"].as_f64().unwrap();
        assert!(cos > 0.99 && cos < 1.0, "cosine {cos}");
        let dl = s["max_abs_dlogit"].as_f64().unwrap();
        assert!(dl > 0.0 && dl < 3.0, "max dlogit {dl}");
        let layers: Vec<f64> = row["per_layer_error"].as_array().unwrap().iter().map(|e| e.as_f64().unwrap()).collect();
        assert_eq!(layers.len(), 12);
        assert!(layers.iter().all(|e| *e > 0.0 && *e < 0.3), "{layers:?}");
        assert!(row["file_bytes"].as_u64().unwrap() * 4 < fp32_bytes + fp32_bytes / 10);
    }
}

// ---- export failures -------------------------------------------------------------------------

#[test]
fn export_to_an_unwritable_place_fails_cleanly_and_leaves_nothing() {
    let (model, _) = load("timm_vit");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder").join("x.safetensors");
    let err = format!("{:#}", export::export(&model, &missing).unwrap_err());
    assert!(err.contains("x.safetensors") && err.contains("does not exist"), "{err}");
    // A read-only folder (root ignores permissions, so use a path under a regular file instead).
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let err = format!("{:#}", export::export(&model, &file.join("x.safetensors")).unwrap_err());
    assert!(err.contains("x.safetensors"), "{err}");
    // An existing export is kept intact when the new one fails: write one, then fail over it.
    let target = dir.path().join("keep.safetensors");
    export::export(&model, &target).unwrap();
    let before = std::fs::read(&target).unwrap();
    let result = vit_workbench::fsutil::write_atomic_with(&target, |_| anyhow::bail!("simulated disk full"));
    assert!(result.is_err());
    assert_eq!(std::fs::read(&target).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "temporary files left behind: {leftovers:?}");
}

#[test]
fn damaged_or_newer_exports_are_refused_with_the_reason() {
    let (model, r) = load("hf_deit_distilled");
    let int8 = model.to_variant(Variant::Int8, QuantOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    export::export(&int8, &path).unwrap();
    let good = std::fs::read(&path).unwrap();
    // Round trip first.
    let loaded = export::load(&path, &Device::Cpu).unwrap();
    assert_eq!(
        vec1(&loaded.forward(&r["pixel_values"], Capture::NONE).unwrap().logits),
        vec1(&int8.forward(&r["pixel_values"], Capture::NONE).unwrap().logits)
    );
    // Truncated.
    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    let err = format!("{:#}", export::load(&path, &Device::Cpu).unwrap_err());
    assert!(err.contains("m.safetensors") && err.contains("safetensors"), "{err}");
    // A newer format version.
    let mut patched = good.clone();
    let pos = good.windows(20).position(|w| w == b"\"format_version\":\"2\"").unwrap();
    patched[pos + 18] = b'9';
    std::fs::write(&path, &patched).unwrap();
    let err = format!("{:#}", export::load(&path, &Device::Cpu).unwrap_err());
    assert!(err.contains("format version 9") && err.contains("newer"), "{err}");
}

/// The CUDA int8 path (candle's Q8_0 QMatMul) runs on the CPU too; check it computes the same
/// layer as fp32 within Q8_0's rounding.
#[test]
fn q8_0_layers_used_on_cuda_compute_the_same_layer() {
    use candle_core::Module;
    use vit_workbench::model::vit::Linear;
    let (model, _) = load("timm_vit");
    let Linear::F32 { weight, bias, .. } = &model.weights.blocks[0].fc1 else { panic!() };
    let q = Linear::q8_0(weight, bias.clone(), false).unwrap();
    let f = Linear::f32(weight.clone(), bias.clone()).unwrap();
    let x = Tensor::randn(0f32, 1.0, (5, 32), &Device::Cpu).unwrap();
    let (a, b) = (vec1(&f.forward(&x).unwrap()), vec1(&q.forward(&x).unwrap()));
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    println!("Q8_0 vs fp32 on fc1: max |Δ| = {d:.4} (outputs up to {scale:.2})");
    assert!(d > 0.0 && d < 0.05 * scale);
}
