//! `eval` as a user meets it: the three ways of naming a class folder, a CSV list, bad class
//! names and empty folders, and accuracies that equal counting the per-image predictions, which
//! in turn equal what `classify` says of each image.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn one_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: ") && !stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}

fn put(dir: &Path, class: &str, files: &[&str]) {
    let d = dir.join(class);
    std::fs::create_dir_all(&d).unwrap();
    for (i, f) in files.iter().enumerate() {
        let src = PathBuf::from(f);
        let ext = src.extension().unwrap().to_str().unwrap();
        std::fs::copy(&src, d.join(format!("img{i}.{ext}"))).unwrap();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Checks the report against the per-image predictions it contains and returns it.
fn check_counts(json: &Path, csv: &Path) -> Value {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let preds = v["predictions"].as_array().unwrap();
    let variants = v["variants"].as_array().unwrap();
    let mut rows = csv::Reader::from_path(csv).unwrap();
    let header: Vec<String> = rows.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        &header[..9],
        ["model", "variant", "images", "top1", "top1_low", "top1_high", "top5", "top1_delta_vs_fp32", "flips"]
    );
    let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), variants.len());
    let fp32 = variants.iter().position(|x| x["variant"] == "fp32").unwrap();
    let fp32_top1 = |p: &Value| p["top"][fp32][0]["index"].as_u64().unwrap();
    for (vi, (var, row)) in variants.iter().zip(&rows).enumerate() {
        // By hand: how many images have the true class first, or among the top 5.
        let top1 = preds.iter().filter(|p| p["top"][vi][0]["index"] == p["label"]).count();
        let top5 =
            preds.iter().filter(|p| p["top"][vi].as_array().unwrap().iter().any(|r| r["index"] == p["label"])).count();
        let flips = preds.iter().filter(|p| p["top"][vi][0]["index"].as_u64().unwrap() != fp32_top1(p)).count();
        let n = preds.len() as f64;
        assert_eq!(var["top1_correct"].as_u64().unwrap() as usize, top1);
        assert_eq!(var["topk_correct"].as_u64().unwrap() as usize, top5);
        assert_eq!(var["flips"].as_array().unwrap().len(), flips);
        assert_eq!(&row[1], var["variant"].as_str().unwrap());
        assert_eq!(row[2].parse::<usize>().unwrap(), preds.len());
        let f = |i: usize| row[i].parse::<f64>().unwrap();
        assert!((f(3) - top1 as f64 / n).abs() < 1e-6, "{row:?}");
        assert!((f(6) - top5 as f64 / n).abs() < 1e-6, "{row:?}");
        assert!(f(4) <= f(3) && f(3) <= f(5) && f(4) >= 0.0 && f(5) <= 1.0, "Wilson bounds around top1: {row:?}");
        assert!(f(5) - f(4) > 0.05, "an interval over a handful of images is wide: {row:?}");
        assert_eq!(row[8].parse::<usize>().unwrap(), flips);
    }
    v
}

#[test]
fn class_folders_by_label_name_and_index_count_like_the_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    let chelsea = fixture("preprocess/hf_vit__chelsea.png");
    let rocket = fixture("preprocess/hf_vit__rocket.png");
    // A label name in another case, and a class index.
    put(&set, "FIXTURE Class 3", &[s(&chelsea), s(&rocket)]);
    put(&set, "7", &[s(&rocket)]);
    std::fs::write(set.join("7").join("readme.txt"), "not an image: ignored").unwrap();
    let (json, csv) = (dir.path().join("e.json"), dir.path().join("e.csv"));
    let model = fixture("hf_vit");
    let (code, out, err) = run(&["eval", s(&set), "--model", s(&model), "--json", s(&json), "--csv", s(&csv)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 image(s) of 2 class(es)"), "{out}");
    let v = check_counts(&json, &csv);
    let labels: Vec<u64> = v["predictions"].as_array().unwrap().iter().map(|p| p["label"].as_u64().unwrap()).collect();
    assert_eq!(labels, [7, 3, 3], "class folders in name order");
    // Each image's fp32 top-1 is what `classify` says of it.
    for p in v["predictions"].as_array().unwrap() {
        let (code, out, err) =
            run(&["classify", p["file"].as_str().unwrap(), "--model", s(&model), "--json", "--top", "1"]);
        assert_eq!(code, 0, "{err}");
        let c: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(c[0]["top"][0]["index"], p["top"][0][0]["index"], "{}", p["file"]);
    }
}

#[test]
fn a_csv_list_names_files_relative_to_it_and_classes_any_way() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("photos")).unwrap();
    std::fs::copy(fixture("preprocess/hf_vit__chelsea.png"), dir.path().join("photos/a.png")).unwrap();
    std::fs::copy(fixture("preprocess/hf_vit__rocket.png"), dir.path().join("photos/b.png")).unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        "file,label\nphotos/a.png,fixture class 2\nphotos/b.png,9\n\"photos/a.png\",  Fixture Class 0 \n",
    )
    .unwrap();
    let (json, csv) = (dir.path().join("e.json"), dir.path().join("e.csv"));
    let (code, _, err) = run(&[
        "eval",
        s(&list),
        "--model",
        s(&fixture("timm_vit")),
        "--variants",
        "fp32,int8",
        "--json",
        s(&json),
        "--csv",
        s(&csv),
    ]);
    assert_eq!(code, 0, "{err}");
    let v = check_counts(&json, &csv);
    let labels: Vec<u64> = v["predictions"].as_array().unwrap().iter().map(|p| p["label"].as_u64().unwrap()).collect();
    assert_eq!(labels, [2, 9, 0]);
    assert_eq!(v["variants"].as_array().unwrap().len(), 2);

    // A missing file is named with its line; nothing is written.
    std::fs::write(&list, "file,label\nphotos/a.png,1\nphotos/missing.png,1\n").unwrap();
    let out_csv = dir.path().join("fresh.csv");
    let (code, _, err) = run(&["eval", s(&list), "--model", s(&fixture("timm_vit")), "--csv", s(&out_csv)]);
    assert_ne!(code, 0);
    let e = one_error_line(&err);
    assert!(e.contains("line 3") && e.contains("missing.png"), "{e}");
    assert!(!out_csv.exists());
    // A list without the columns.
    std::fs::write(&list, "path,class\nphotos/a.png,1\n").unwrap();
    let (code, _, err) = run(&["eval", s(&list), "--model", s(&fixture("timm_vit"))]);
    assert_ne!(code, 0);
    assert!(one_error_line(&err).contains("`file` and `label`"), "{err}");
}

#[test]
fn an_unknown_class_is_an_error_with_close_matches_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    put(&set, "fixture clas 4", &[s(&fixture("preprocess/hf_vit__chelsea.png"))]);
    let csv = dir.path().join("e.csv");
    std::fs::write(&csv, "an older report").unwrap();
    let (code, _, err) = run(&["eval", s(&set), "--model", s(&fixture("hf_vit")), "--csv", s(&csv)]);
    assert_ne!(code, 0);
    let e = one_error_line(&err);
    assert!(e.contains("fixture clas 4") && e.contains("close matches") && e.contains("`fixture class 4`"), "{e}");
    assert!(e.contains(s(&set)), "names the folder: {e}");
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "an older report");

    // Nothing close at all; an index out of range; a synset id for a 10-class model.
    for (name, needle) in [("zebra", "unknown class `zebra`"), ("12", "out of range"), ("n02124075", "synset id")] {
        let set = dir.path().join(format!("set-{name}"));
        put(&set, name, &[s(&fixture("preprocess/hf_vit__chelsea.png"))]);
        let (code, _, err) = run(&["eval", s(&set), "--model", s(&fixture("hf_vit"))]);
        assert_ne!(code, 0);
        assert!(one_error_line(&err).contains(needle), "{name}: {err}");
    }
}

#[test]
fn empty_folders_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("hf_vit");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = run(&["eval", s(&empty), "--model", s(&model)]);
    assert_ne!(code, 0);
    assert!(one_error_line(&err).contains("no class folders"), "{err}");
    // Class folders without a single image.
    std::fs::create_dir_all(empty.join("3")).unwrap();
    std::fs::write(empty.join("3").join("notes.txt"), "x").unwrap();
    let (code, _, err) = run(&["eval", s(&empty), "--model", s(&model)]);
    assert_ne!(code, 0);
    assert!(one_error_line(&err).contains("no labelled images"), "{err}");
    // An empty CSV list, and a path that is not there.
    let list = dir.path().join("list.csv");
    std::fs::write(&list, "file,label\n").unwrap();
    let (code, _, err) = run(&["eval", s(&list), "--model", s(&model)]);
    assert_ne!(code, 0);
    assert!(one_error_line(&err).contains("no labelled images"), "{err}");
    let (code, _, err) = run(&["eval", "/nonexistent/set", "--model", s(&model)]);
    assert_ne!(code, 0);
    assert!(one_error_line(&err).contains("/nonexistent/set"), "{err}");
}

#[test]
fn a_corrupt_image_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    put(&set, "1", &[s(&fixture("preprocess/hf_vit__chelsea.png"))]);
    std::fs::write(set.join("1").join("broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let json = dir.path().join("e.json");
    let (code, _, err) = run(&["eval", s(&set), "--model", s(&fixture("hf_vit")), "--json", s(&json)]);
    assert_ne!(code, 0);
    assert!(one_error_line(&err).contains("broken.png"), "{err}");
    assert!(!json.exists());
}

#[test]
fn real_photos_by_synset_label_and_index_agree_with_classify() {
    let Some(shared) = shared() else { return };
    let model = timm_tiny(&shared);
    let img = |n: &str| shared.join("images").join(n).to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("set");
    put(&set, "n02124075", &[&img("chelsea.png")]); // Egyptian cat, by synset id
    put(&set, "Espresso", &[&img("coffee.png")]); // by label name
    put(&set, "812", &[&img("rocket.jpg"), &img("astronaut.png")]); // space shuttle, by index
    let (json, csv) = (dir.path().join("e.json"), dir.path().join("e.csv"));
    let (code, out, err) = run(&["eval", s(&set), "--model", s(&model), "--json", s(&json), "--csv", s(&csv)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("top-1") && out.contains("int8") && out.contains("mobile"), "{out}");
    let v = check_counts(&json, &csv);
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.iter().map(|p| p["label"].as_u64().unwrap()).collect::<Vec<_>>(), [812, 812, 967, 285]);
    for (vi, variant) in ["fp32", "int8", "mobile"].iter().enumerate() {
        assert_eq!(v["variants"][vi]["variant"], *variant);
        let files: Vec<&str> = preds.iter().map(|p| p["file"].as_str().unwrap()).collect();
        let mut args = vec!["classify"];
        args.extend(&files);
        args.extend(["--model", s(&model), "--json", "--top", "5", "--variant", variant]);
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        let c: Value = serde_json::from_str(&out).unwrap();
        for (p, c) in preds.iter().zip(c.as_array().unwrap()) {
            assert_eq!(c["image"], p["file"]);
            let idx =
                |t: &Value| t.as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect::<Vec<_>>();
            assert_eq!(idx(&c["top"]), idx(&p["top"][vi]), "{variant} {}", p["file"]);
        }
    }
    // The cat and the espresso are right for every variant.
    for vi in 0..3 {
        assert!(v["variants"][vi]["top1_correct"].as_u64().unwrap() >= 2, "{}", v["variants"][vi]);
    }
}
