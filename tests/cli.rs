//! The command line as a user meets it: output formats and one-line errors for bad input.

mod common;

use std::process::Command;

use common::*;

#[test]
fn classify_json_has_the_documented_shape() {
    let Some(shared) = shared() else { return };
    let model = timm_tiny(&shared);
    let img = shared.join("images/coffee.png");
    let (code, out, err) =
        run(&["classify", img.to_str().unwrap(), "--model", model.to_str().unwrap(), "--top", "3", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let r = &list[0];
    assert_eq!(r["image"], img.to_str().unwrap());
    assert_eq!(r["model"], model.to_str().unwrap());
    assert_eq!(r["variant"], "fp32");
    let top = r["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["label"], "espresso");
    assert_eq!(top[0]["index"], 967);
    let p: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
    assert!(p.windows(2).all(|w| w[0] >= w[1]) && p[0] <= 1.0 && p[2] > 0.0);
}

#[test]
fn classify_text_lists_top_k_for_each_image() {
    let Some(shared) = shared() else { return };
    let model = hf_tiny(&shared);
    let a = shared.join("images/chelsea.png");
    let b = shared.join("images/coffee.png");
    let (code, out, err) =
        run(&["classify", a.to_str().unwrap(), b.to_str().unwrap(), "--model", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Egyptian cat") && out.contains("espresso"), "{out}");
    assert_eq!(out.lines().filter(|l| l.trim_start().starts_with("1.")).count(), 2);
    assert_eq!(out.lines().filter(|l| l.trim_start().starts_with("5.")).count(), 2);
}

#[test]
fn classify_a_folder_classifies_every_image_in_it() {
    let Some(shared) = shared() else { return };
    let model = hf_tiny(&shared);
    let dir = shared.join("images");
    let (code, out, err) = run(&["classify", dir.to_str().unwrap(), "--model", model.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut expected: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg" | "jpeg")))
        .map(|p| p.display().to_string())
        .collect();
    expected.sort();
    let got: Vec<String> = v.as_array().unwrap().iter().map(|r| r["image"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, expected);
    // A folder without images is an error naming it, not an empty success.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&["classify", empty.path().to_str().unwrap(), "--model", model.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &[&empty.path().display().to_string(), "no image files"]);
}

#[test]
fn an_absolute_path_that_does_not_exist_is_a_missing_folder_not_a_hub_id() {
    let img = fixture("preprocess/hf_vit__chelsea.png");
    for spec in ["/nonexistent", "/nonexistent/model", "models/vit/", "a/b/c"] {
        let (code, _, err) = run(&["classify", img.to_str().unwrap(), "--model", spec]);
        assert_ne!(code, 0);
        assert_one_line_error(&err, &[spec, "no such folder"]);
        assert!(!err.contains("hub"), "{spec} was looked up on the hub: {err}");
    }
}

#[test]
fn missing_image_is_a_one_line_error() {
    let model = fixture("timm_vit");
    let (code, _, err) = run(&["classify", "/nonexistent/cat.png", "--model", model.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["/nonexistent/cat.png"]);
}

#[test]
fn corrupt_image_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    let mut bytes = std::fs::read(fixture("preprocess/hf_vit__chelsea.png")).unwrap();
    bytes.truncate(200);
    std::fs::write(&bad, bytes).unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "this is not an image").unwrap();
    let model = fixture("timm_vit");
    for f in [&bad, &text] {
        let (code, _, err) = run(&["classify", f.to_str().unwrap(), "--model", model.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert_one_line_error(&err, &[f.to_str().unwrap()]);
    }
}

#[test]
fn wrong_tensor_shape_names_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("model");
    copy_fixture("hf_vit", &m);
    // Claim 3 layers' worth of MLP width the checkpoint does not have.
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 64", "\"intermediate_size\": 48");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let (code, _, err) = run(&["classify", img.to_str().unwrap(), "--model", m.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(
        &err,
        &["model.safetensors", "vit.encoder.layer.0.intermediate.dense.weight", "[64, 32]", "[48, 32]"],
    );
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("model");
    copy_fixture("hf_vit", &m);
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("ViTForImageClassification", "SwinForImageClassification");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let (code, _, err) = run(&["classify", img.to_str().unwrap(), "--model", m.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["config.json", "SwinForImageClassification"]);
}

#[test]
fn corrupt_checkpoint_and_config_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("preprocess/hf_vit__chelsea.png");
    // Truncated weights.
    let m = dir.path().join("truncated");
    copy_fixture("timm_vit", &m);
    let w = std::fs::read(m.join("model.safetensors")).unwrap();
    std::fs::write(m.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let (code, _, err) = run(&["classify", img.to_str().unwrap(), "--model", m.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["model.safetensors"]);
    // config.json that is not JSON.
    let m = dir.path().join("badjson");
    copy_fixture("timm_vit", &m);
    std::fs::write(m.join("config.json"), "{ not json").unwrap();
    let (code, _, err) = run(&["classify", img.to_str().unwrap(), "--model", m.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["config.json", "not valid JSON"]);
}

#[test]
fn offline_cache_miss_says_what_is_missing_and_how_to_get_it() {
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let (code, _, err) =
        run(&["classify", img.to_str().unwrap(), "--model", "google/vit-base-patch16-224", "--offline"]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["config.json", "google/vit-base-patch16-224", "offline", "vit-workbench download"]);
}

#[test]
fn models_lists_the_zoo_with_cache_state() {
    let (code, out, err) = run(&["models"]);
    assert_eq!(code, 0, "{err}");
    for id in [
        "google/vit-base-patch16-224",
        "facebook/deit-tiny-patch16-224",
        "facebook/deit-base-distilled-patch16-224",
        "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    ] {
        let line = out.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} missing: {out}"));
        assert!(line.contains(" no "), "{line}");
    }
    assert!(out.contains("shorter side 256 bicubic, centre crop 224x224, ImageNet mean/std"), "{out}");
    assert!(out.contains("vitwb-empty-cache"));
}

#[test]
fn models_marks_cached_entries() {
    // A fake hub cache laid out as huggingface_hub does, holding the shared ViT-Ti as the timm repo.
    let Some(shared) = shared() else { return };
    let cache = tempfile::tempdir().unwrap();
    let snap = cache.path().join("models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k");
    std::fs::create_dir_all(snap.join("refs")).unwrap();
    std::fs::write(snap.join("refs/main"), "abc123").unwrap();
    let files = snap.join("snapshots/abc123");
    std::fs::create_dir_all(&files).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::os::unix::fs::symlink(timm_tiny(&shared).join(f), files.join(f)).unwrap();
    }
    let out = Command::new(bin()).args(["models"]).env("HF_HUB_CACHE", cache.path()).output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let line = out.lines().find(|l| l.starts_with("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k")).unwrap();
    assert!(line.contains(" yes "), "{line}");
    // And classify loads it by hub id, offline, from that cache.
    let img = shared.join("images/chelsea.png");
    let out = Command::new(bin())
        .args([
            "classify",
            img.to_str().unwrap(),
            "--model",
            "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
            "--offline",
            "--top",
            "1",
        ])
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Egyptian cat"), "{stdout}");
}

#[test]
fn global_flags_work_before_the_command_and_window_options_there_are_refused() {
    // `--threads 2 models` once read `models` as the window's image.
    let (code, out, err) = run(&["--threads", "2", "models"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("google/vit-base-patch16-224"), "{out}");
    let (code, _, err) = run(&["--model", "x", "models"]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["--model before the command", "put the command first"]);
}

#[test]
fn a_sweeps_footer_gives_the_range_of_timed_runs() {
    // Batch 1 and 4 under one time rule stop at different counts: the footer must give the
    // range the CSV holds, not the first row's count.
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("sweep.csv");
    let model = fixture("timm_vit");
    let (code, out, err) = run(&[
        "bench",
        "--warmup",
        "0",
        "--runs",
        "1",
        "--min-seconds",
        "0.3",
        "--variants",
        "fp32",
        "--batch",
        "1,4",
        "--models",
        model.to_str().unwrap(),
        "--csv",
        csv_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let counts: Vec<usize> = csv_columns(&csv_path, &["runs"]).iter().map(|r| r[0].parse().unwrap()).collect();
    let (lo, hi) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    assert!(lo < hi, "batch 4 should stop at fewer runs than batch 1: {counts:?}");
    assert!(out.contains(&format!("over {lo}-{hi} timed runs")), "{out}");
}

#[test]
fn a_forced_kernel_path_that_cannot_be_honoured_is_refused() {
    // A typo in a tier run must not measure the best path under the wrong name.
    let with_isa = |isa: &str, args: &[&str]| {
        let out = Command::new(bin()).args(args).env("VITWB_ISA", isa).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for bad in ["AVX2", "bogus", ""] {
        let (code, stderr) = with_isa(bad, &["kernels", "--list-paths"]);
        assert_eq!(code, 1, "VITWB_ISA={bad:?}: {stderr}");
        assert_one_line_error(&stderr, &["VITWB_ISA", "not a kernel path", "avx512-vnni"]);
    }
    // Every path the CPU lists is accepted, and the portable one always is.
    let (code, out, err) = run(&["kernels", "--list-paths"]);
    assert_eq!(code, 0, "{err}");
    for path in out.lines() {
        let (code, stderr) = with_isa(path, &["kernels", "--list-paths"]);
        assert_eq!(code, 0, "{path}: {stderr}");
    }
    assert!(out.lines().any(|l| l == "portable"), "{out}");
    // A known path this CPU lacks (if any) is refused with what the CPU runs.
    let all = ["portable", "avx2", "avx-vnni", "avx-vnni-evex", "avx512-vnni"];
    if let Some(missing) = all.iter().find(|p| !out.lines().any(|l| l == **p)) {
        let (code, stderr) = with_isa(missing, &["kernels", "--list-paths"]);
        assert_eq!(code, 1, "{stderr}");
        assert_one_line_error(&stderr, &["VITWB_ISA", "cannot run", "portable"]);
    }
}

#[test]
fn kernels_labels_follow_the_forced_path_and_rate_every_simd_gemm_against_its_peak() {
    let kernels = |isa: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(["kernels", "--threads", "1", "--min-seconds", "0.01"]);
        if let Some(isa) = isa {
            cmd.env("VITWB_ISA", isa);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Under the portable path, attention and the elementwise kernels say what actually runs.
    let portable = kernels(Some("portable"));
    let row = |text: &str, kernel: &str| {
        text.lines().filter(|l| l.starts_with(kernel)).map(str::to_string).collect::<Vec<_>>()
    };
    assert!(row(&portable, "attention").iter().all(|l| !l.contains("SIMD") && !l.contains("avx")), "{portable}");
    assert!(row(&portable, "GELU").iter().all(|l| l.contains("portable")), "{portable}");
    // Every int8 and f32 GEMM row of a SIMD path has a percentage of its measured peak; rates
    // keep digits even when small.
    let best = kernels(None);
    for l in best.lines().filter(|l| l.starts_with("int8 linear") || l.starts_with("f32 linear")) {
        let simd = !l.contains(" portable ") && !l.contains("gemm crate");
        assert_eq!(simd, l.trim_end().ends_with('%'), "{l}");
    }
    assert!(row(&portable, "GELU").iter().all(|l| !l.contains(" 0.0 ")), "{portable}");
}
