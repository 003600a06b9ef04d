//! `profile`: the profiled forward computes exactly what the plain one does, names every stage
//! (fused norm+layer as one where the variant fuses), and on ViT-B/16 writes a Chrome trace with
//! every block stage of every run, its stage sums within 10% of the un-profiled forward.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use common::*;
use serde_json::Value;
use vit_workbench::model::profiler::Profiler;
use vit_workbench::model::{Capture, Model, ModelFiles};
use vit_workbench::quant::{QuantOptions, Variant};

const FUSED: [&str; 5] = ["norm1+qkv", "attention", "proj", "norm2+fc1", "fc2"];
const SEPARATE: [&str; 7] = ["norm1", "qkv", "attention", "proj", "norm2", "fc1", "fc2"];

#[test]
fn the_profiled_forward_gives_the_same_logits_and_names_every_stage() {
    for name in ["hf_vit", "timm_deit_distilled"] {
        let source = Model::load(name, &ModelFiles::from_dir(&fixture(name)).unwrap(), None, &Device::Cpu).unwrap();
        let x = vit_workbench::bench::synthetic_input(2, source.config.image_size, &Device::Cpu).unwrap();
        for variant in [Variant::Fp32, Variant::Int8, Variant::Mobile] {
            let m = source.to_variant(variant, QuantOptions::default()).unwrap();
            let plain = m.forward(&x, Capture::NONE).unwrap().logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut prof = Profiler::default();
            let out = m.forward_profiled(&x, Capture::NONE, Some(&mut prof)).unwrap();
            let profiled = out.logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(plain, profiled, "{name} {variant}: profiling must not change the numbers");
            let stages = prof.take();
            let per_block: &[&str] = if variant == Variant::Fp32 { &SEPARATE } else { &FUSED };
            let mut expected = vec!["patch embed"];
            for _ in 0..m.config.depth {
                expected.extend(per_block);
            }
            expected.extend(["final norm", "head"]);
            assert_eq!(stages.iter().map(|s| s.stage).collect::<Vec<_>>(), expected, "{name} {variant}");
            // Stages are in time order, and a block's stages carry its number.
            assert!(stages.windows(2).all(|w| w[0].start_ms + w[0].ms <= w[1].start_ms + 1e-6));
            let blocks: Vec<usize> = stages.iter().filter_map(|s| s.block).collect();
            assert!(blocks.windows(2).all(|w| w[0] <= w[1]) && blocks.last() == Some(&(m.config.depth - 1)));
            // MACs of the qkv layer: batch · tokens · D · 3D.
            let (d, t) = (m.config.hidden, (m.config.image_size / m.config.patch).pow(2));
            let tokens = t + if name.contains("distilled") { 2 } else { 1 };
            let qkv = stages.iter().find(|s| s.stage == "qkv" || s.stage == "norm1+qkv").unwrap();
            assert_eq!(qkv.macs, (2 * tokens * d * 3 * d) as u64, "{name} {variant}");
            // Nothing is recorded without a profiler, and a second run starts afresh.
            m.forward(&x, Capture::NONE).unwrap();
            assert!(prof.take().is_empty());
        }
    }
}

/// A random-weight ViT-B/16 (timm layout): real shapes, so the timings are ViT-B's.
fn write_random_vit_b16(dir: &Path) {
    let (d, depth, mlp, classes, patch, tokens) = (768usize, 12usize, 3072usize, 1000usize, 16usize, 197usize);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut random = |shape: &[usize], scale: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("patch_embed.proj.weight".into(), random(&[d, 3, patch, patch], 0.02));
    t.insert("patch_embed.proj.bias".into(), random(&[d], 0.02));
    t.insert("cls_token".into(), random(&[1, 1, d], 0.02));
    t.insert("pos_embed".into(), random(&[1, tokens, d], 0.02));
    for i in 0..depth {
        let p = format!("blocks.{i}");
        for (n, out, inp) in [("attn.qkv", 3 * d, d), ("attn.proj", d, d), ("mlp.fc1", mlp, d), ("mlp.fc2", d, mlp)] {
            t.insert(format!("{p}.{n}.weight"), random(&[out, inp], 0.02));
            t.insert(format!("{p}.{n}.bias"), random(&[out], 0.02));
        }
        for n in ["norm1", "norm2"] {
            t.insert(format!("{p}.{n}.weight"), ones(d));
            t.insert(format!("{p}.{n}.bias"), random(&[d], 0.02));
        }
    }
    t.insert("norm.weight".into(), ones(d));
    t.insert("norm.bias".into(), random(&[d], 0.02));
    t.insert("head.weight".into(), random(&[classes, d], 0.02));
    t.insert("head.bias".into(), random(&[classes], 0.02));
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architecture": "vit_base_patch16_224",
        "num_classes": classes,
        "num_features": d,
        "global_pool": "token",
        "model_args": {"img_size": 224, "patch_size": patch, "embed_dim": d, "depth": depth, "num_heads": 12, "mlp_ratio": 4.0},
        "pretrained_cfg": {
            "input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": classes
        }
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

#[test]
fn profile_on_vit_b16_writes_a_chrome_trace_and_checks_the_stage_sum() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("vit-b16-random");
    write_random_vit_b16(&model);
    let trace = dir.path().join("t.json");
    let runs = 12;
    let out = Command::new(bin())
        .args(["profile", "--model", model.to_str().unwrap(), "--runs", &runs.to_string(), "--warmup", "2"])
        .args(["--trace", trace.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The check is printed per variant, and passed (a failure exits non-zero, saying so).
    assert_eq!(stdout.matches("within 10%").count(), 3, "{stdout}");
    assert!(!stdout.contains("NOT within"), "{stdout}");
    for stage in SEPARATE.iter().chain(&FUSED) {
        assert!(stdout.contains(stage), "{stage} missing from the table: {stdout}");
    }

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    for (variant, per_block) in [("fp32", &SEPARATE[..]), ("int8", &FUSED[..]), ("mobile", &FUSED[..])] {
        let mine: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X" && e["cat"] == variant).collect();
        for run in 0..runs {
            let of_run: Vec<&&Value> = mine.iter().filter(|e| e["args"]["run"] == run).collect();
            let block_events: Vec<&&&Value> = of_run.iter().filter(|e| !e["args"]["block"].is_null()).collect();
            assert_eq!(block_events.len(), 12 * per_block.len(), "{variant} run {run}");
            for stage in per_block {
                assert_eq!(block_events.iter().filter(|e| e["name"] == *stage).count(), 12, "{variant} {stage}");
            }
            for e in &of_run {
                assert!(e["dur"].as_f64().unwrap() >= 0.0 && e["ts"].as_f64().unwrap() >= 0.0);
            }
            assert_eq!(of_run.len(), 12 * per_block.len() + 3, "patch embed, final norm and head besides");
        }
    }
    // One named track per variant.
    assert_eq!(events.iter().filter(|e| e["ph"] == "M" && e["name"] == "thread_name").count(), 3);
}
