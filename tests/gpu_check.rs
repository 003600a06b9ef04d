//! The prepared GPU check (`tools/gpu-check.sh`) run end to end with the CPU as its device, so the
//! script cannot rot while no GPU is around; the device's truthful refusals; the random-weight
//! model generator it relies on.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use vit_workbench::report::COLUMNS;

fn gpu_check(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new("bash").arg(repo().join("tools/gpu-check.sh")).arg("run").arg(out).args(extra).output().unwrap()
}

#[test]
fn gpu_check_script_runs_end_to_end_on_the_cpu() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpu-out");
    let (model, images) = (hf_tiny(&shared), shared.join("images"));
    let r = gpu_check(
        &out,
        &[
            "--device",
            "cpu",
            "--quick",
            "--bin",
            bin().to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&r.stderr));

    // Parity: CPU against itself must be exact for fp32 and agree fully for int8/mobile.
    let parity: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("parity.json")).unwrap()).unwrap();
    assert_eq!(parity["device"], "cpu");
    assert_eq!(parity["pass"], true);
    assert_eq!(parity["images"].as_array().unwrap().len(), 4);
    let variants = parity["variants"].as_array().unwrap();
    let names: Vec<&str> = variants.iter().map(|v| v["variant"].as_str().unwrap()).collect();
    assert_eq!(names, ["fp32", "int8", "mobile"]);
    for v in variants {
        assert_eq!(v["device_vs_cpu"]["max_abs_dlogit"].as_f64().unwrap(), 0.0, "{v}");
        assert_eq!(v["device_vs_cpu"]["top1_agreement"].as_f64().unwrap(), 1.0, "{v}");
    }
    assert_eq!(variants[1]["device_int8_kernel"], "cpu-per-channel-rowwise");
    assert!(variants[0]["device_int8_kernel"].is_null());
    // Quantization on the real ViT-Ti keeps the photos' top-1 (what the README reports).
    assert_eq!(variants[1]["cpu_vs_fp32"]["top1_agreement"].as_f64().unwrap(), 1.0);

    // Bench: one report, both batches, every variant, the README's columns.
    let mut rd = csv::Reader::from_path(out.join("bench.csv")).unwrap();
    assert_eq!(rd.headers().unwrap().iter().collect::<Vec<_>>(), COLUMNS);
    let col = |c: &str| COLUMNS.iter().position(|x| *x == c).unwrap();
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    let keys: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r[col("model")].to_string(), r[col("variant")].to_string(), r[col("batch")].to_string()))
        .collect();
    let want: Vec<(String, String, String)> = ["1", "4"]
        .iter()
        .flat_map(|b| ["fp32", "int8", "mobile"].map(|v| ("tiny-random".to_string(), v.to_string(), b.to_string())))
        .collect();
    assert_eq!(keys, want, "model names are the README's, not the temporary folder");
    for r in &rows {
        assert_eq!(&r[col("device")], "cpu");
        assert_eq!(&r[col("gpu")], "");
        let want = if &r[col("variant")] == "fp32" { "" } else { "cpu-per-channel-rowwise" };
        assert_eq!(&r[col("int8_kernel")], want);
        assert!(r[col("p50_ms")].parse::<f64>().unwrap() > 0.0);
    }
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap();
    assert!(summary.contains("gpu-check: PASS") && summary.contains("fp32 max |dlogit|"), "{summary}");
    assert!(out.join("log.txt").is_file() && out.join("bench-b4-raw.csv").is_file());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_check_on_a_cuda_device_without_cuda_says_so_and_fails() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpu-out");
    let (model, images) = (hf_tiny(&shared), shared.join("images"));
    let r = gpu_check(
        &out,
        &[
            "--quick",
            "--bin",
            bin().to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(!r.status.success(), "{stdout}");
    assert!(stdout.contains("--device cuda: this binary was built without CUDA support"), "{stdout}");
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap();
    assert!(summary.contains("gpu-check: FAIL (parity bench-b1 bench-b4)"), "{summary}");
    assert!(!out.join("bench.csv").exists(), "no report when nothing was measured");
}

#[test]
fn gpu_check_without_a_binary_stops_before_doing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let r = gpu_check(&dir.path().join("out"), &["--payload", dir.path().join("none").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(stderr.contains("no executable (run `tools/gpu-check.sh prepare` first"), "{stderr}");
    assert!(!dir.path().join("out").exists());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn device_flags_refuse_cuda_in_a_cpu_build_in_one_line() {
    let img = repo().join("assets").join("chelsea.png");
    for args in [
        vec!["classify", "--device", "cuda", "--model", fixture("hf_vit").to_str().unwrap()],
        vec!["bench", "--device", "cuda:1", "--models", fixture("hf_vit").to_str().unwrap()],
        vec!["device-check", "--model", fixture("hf_vit").to_str().unwrap()],
    ] {
        let mut c = Command::new(bin());
        c.args(&args);
        if args[0] != "bench" {
            c.arg(&img);
        }
        let r = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("built without CUDA support") && stderr.contains("--features cuda"), "{stderr}");
    }
}

#[test]
fn random_models_load_and_run_like_downloaded_ones() {
    let dir = tempfile::tempdir().unwrap();
    let r = Command::new(bin())
        .args(["random-models", "--presets", "tiny-random", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let model = dir.path().join("tiny-random");
    let img = repo().join("assets").join("chelsea.png");
    let r = Command::new(bin())
        .args(["classify", "--json", "--top", "3", "--model"])
        .arg(&model)
        .arg(&img)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let json: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let top = json[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    // Random weights: a real distribution over 10 classes, not a constant.
    let p: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
    assert!(p[0] > 0.0 && p[0] < 1.0 && p[0] >= p[2], "{p:?}");
    assert!(top[0]["label"].as_str().unwrap().starts_with("LABEL_"));
    // Unknown presets are refused by name, and nothing is written for them.
    let r =
        Command::new(bin()).args(["random-models", "--presets", "vit-huge", "--out"]).arg(dir.path()).output().unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown random model `vit-huge`"));
    assert!(!dir.path().join("vit-huge").exists());
}

#[test]
fn gpu_check_unpacks_a_gzipped_payload() {
    // The layout `prepare` writes: vit-workbench.gz, models/vit-tiny-patch16-224, images/. The
    // binary here is a gzip'd launcher of the test build (the real one is built with CUDA).
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload");
    std::fs::create_dir_all(payload.join("images")).unwrap();
    copy_fixture("hf_vit", &payload.join("models").join("vit-tiny-patch16-224"));
    std::fs::copy(repo().join("assets").join("chelsea.png"), payload.join("images").join("chelsea.png")).unwrap();
    let launcher = payload.join("vit-workbench");
    std::fs::write(&launcher, format!("#!/bin/sh\nexec '{}' \"$@\"\n", bin().display())).unwrap();
    assert!(Command::new("gzip").arg(&launcher).status().unwrap().success());
    let out = dir.path().join("out");
    let r = gpu_check(&out, &["--device", "cpu", "--quick", "--payload", payload.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&r.stderr));
    assert!(stdout.contains("vit-workbench 0.1.0"), "the unpacked binary ran: {stdout}");
    let parity: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("parity.json")).unwrap()).unwrap();
    assert_eq!(parity["pass"], true);
    assert!(parity["images"][0].as_str().unwrap().ends_with("chelsea.png"));
    assert!(std::fs::read_to_string(out.join("summary.txt")).unwrap().contains("gpu-check: PASS"));
}
