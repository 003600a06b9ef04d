//! Mixed precision (`--keep-fp32`) and per-layer sensitivity on the shared ViT-Ti and photos:
//! the two ends are exact (every layer kept = fp32, none kept = int8), mixed files round-trip,
//! and keeping the most sensitive layers buys back accuracy.

mod common;

use std::collections::BTreeSet;

use candle_core::{Device, Tensor};
use common::*;
use vit_workbench::model::{Capture, LayerName, Model, ModelFiles};
use vit_workbench::preprocess::load_image;
use vit_workbench::quant::sensitivity::{KeepFp32, Scorer, analyze};
use vit_workbench::quant::{LayerChoices, QuantOptions, Variant, export};

fn logits(m: &Model, x: &Tensor) -> Vec<Vec<f32>> {
    m.forward(x, Capture::NONE).unwrap().logits.to_vec2::<f32>().unwrap()
}

/// The shared HF ViT-Ti (fp32) and the shared photos as one batch.
fn vit_tiny_and_photos() -> Option<(Model, Tensor)> {
    let shared = shared()?;
    let fp32 = Model::load("vit-tiny", &ModelFiles::from_dir(&hf_tiny(&shared)).unwrap(), None, &Device::Cpu).unwrap();
    let photos = shared_photos(&shared);
    assert!(photos.len() >= 4, "{photos:?}");
    let imgs: Vec<_> = photos.iter().map(|p| load_image(p).unwrap()).collect();
    let x = fp32.preprocess_batch(&imgs).unwrap();
    Some((fp32, x))
}

fn keep(names: &[&str]) -> QuantOptions {
    QuantOptions { keep_fp32: names.iter().map(|n| n.parse().unwrap()).collect(), ..Default::default() }
}

#[test]
fn every_layer_kept_is_exactly_fp32_and_none_kept_exactly_int8() {
    let Some((fp32, x)) = vit_tiny_and_photos() else { return };
    let reference = logits(&fp32, &x);
    let all: BTreeSet<LayerName> = fp32.weights.layer_names().into_iter().collect();
    assert_eq!(all.len(), 4 * 12 + 2, "patch, 4 per block, one head");
    for v in [Variant::Int8, Variant::Mobile] {
        let plain = fp32.to_variant(v, QuantOptions::default()).unwrap();
        let kept_all = fp32.to_variant(v, QuantOptions { keep_fp32: all.clone(), ..Default::default() }).unwrap();
        assert_eq!(kept_all.label(), format!("{v}+fp32[50]"));
        // Mobile folds 1/sqrt(64) = 1/8 into the kept qkv: a power of two, so still exact.
        assert_eq!(logits(&kept_all, &x), reference, "{v} with every layer fp32 must compute fp32's logits");
        let none = fp32.to_variant(v, keep(&[])).unwrap();
        assert_eq!(none.label(), v.name());
        assert_eq!(logits(&none, &x), logits(&plain, &x), "{v} keeping nothing must be {v}");
        // Assembled from layers quantized once (what sensitivity does): the same models.
        let choices = LayerChoices::new(&fp32, v, &QuantOptions::default()).unwrap();
        let m = |w| Model { weights: w, variant: v, ..fp32.clone() };
        assert_eq!(logits(&m(choices.assemble(|_| false).unwrap()), &x), logits(&plain, &x));
        assert_eq!(logits(&m(choices.assemble(|_| true).unwrap()), &x), reference);
        let some = keep(&["blocks.3.qkv", "blocks.3.fc1", "heads.0"]);
        let built = fp32.to_variant(v, some.clone()).unwrap();
        let assembled = m(choices.assemble(|n| some.keep_fp32.contains(n)).unwrap());
        assert_eq!(logits(&assembled, &x), logits(&built, &x), "{v}: assembled vs quantized mix");
    }
}

/// Mobile's graph work where its qkv and fc1 stay fp32: the scale folded into the kept qkv,
/// GELU run apart from the kept fc1; the result is int8's with the same layers kept (mobile and
/// int8 differ only in float rounding, as without mixing).
#[test]
fn mobile_keeping_qkv_and_fc1_stays_right() {
    let Some((fp32, x)) = vit_tiny_and_photos() else { return };
    let opts = keep(&["blocks.0.qkv", "blocks.0.fc1", "blocks.5.qkv", "blocks.11.fc1"]);
    let mobile = fp32.to_variant(Variant::Mobile, opts.clone()).unwrap();
    let int8 = fp32.to_variant(Variant::Int8, opts).unwrap();
    assert!(!mobile.weights.blocks[0].fc1.fuses_gelu() && mobile.weights.blocks[1].fc1.fuses_gelu());
    let (a, b) = (logits(&mobile, &x), logits(&int8, &x));
    let d = a.iter().flatten().zip(b.iter().flatten()).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    println!("mobile+fp32[4] vs int8+fp32[4]: max |dlogit| {d:.2e}");
    assert!(d < 1e-3, "{d}");
    let plain = logits(&fp32.to_variant(Variant::Int8, QuantOptions::default()).unwrap(), &x);
    assert_ne!(a, plain, "keeping layers must change something");
}

#[test]
fn mixed_exports_record_their_fp32_layers_and_load_back_identically() {
    let Some((fp32, x)) = vit_tiny_and_photos() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (v, names) in [
        (Variant::Int8, vec!["patch", "blocks.0.fc2", "heads.0"]),
        (Variant::Mobile, vec!["blocks.0.qkv", "blocks.0.fc1", "blocks.7.fc2"]),
    ] {
        let m = fp32.to_variant(v, keep(&names)).unwrap();
        let path = dir.path().join(format!("mixed-{v}.safetensors"));
        export::export(&m, &path).unwrap();
        let loaded = export::load(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.variant, v);
        assert_eq!(loaded.label(), format!("{v}+fp32[3]"));
        let stored: Vec<String> = loaded.fp32_layers().iter().map(ToString::to_string).collect();
        let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        expected.sort_by_key(|n| n.parse::<LayerName>().unwrap());
        assert_eq!(stored, expected);
        assert_eq!(logits(&loaded, &x), logits(&m, &x), "{v}: the loaded mixed file computes what was exported");
        let (_, meta) = safetensors::SafeTensors::read_metadata(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()[export::FP32_LAYERS_KEY], expected.join(","));
    }
}

#[test]
fn keep_fp32_on_the_command_line() {
    let Some(shared) = shared() else { return };
    let model = hf_tiny(&shared);
    let model = model.to_str().unwrap();
    let img = shared.join("images/chelsea.png");
    let img = img.to_str().unwrap();
    let classify = |variant: &str, keep: Option<&str>| {
        let mut args = vec!["classify", img, "--model", model, "--variant", variant, "--json", "--top", "5"];
        if let Some(k) = keep {
            args.extend(["--keep-fp32", k]);
        }
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v[0]["variant"].as_str().unwrap().to_string(), v[0]["top"].clone())
    };
    let (fp32_label, fp32_top) = classify("fp32", None);
    let (int8_label, int8_top) = classify("int8", None);
    assert_eq!((fp32_label.as_str(), int8_label.as_str()), ("fp32", "int8"));
    assert_eq!(classify("int8", Some("all")), ("int8+fp32[50]".to_string(), fp32_top));
    assert_eq!(classify("int8", Some("none")), ("int8".to_string(), int8_top));
    assert_eq!(classify("mobile", Some("blocks.0.fc2,heads.0")).0, "mobile+fp32[2]");

    // Unknown names: one line naming the model, the name and every valid form.
    let (code, _, err) = run(&["classify", img, "--model", model, "--variant", "int8", "--keep-fp32", "blocks.12.fc2"]);
    assert_ne!(code, 0);
    assert_one_line_error(
        &err,
        &["vit-tiny-patch16-224", "blocks.12.fc2", "patch", "blocks.N.qkv|proj|fc1|fc2", "0..=11", "heads.0"],
    );
    let (code, _, err) = run(&["classify", img, "--model", model, "--variant", "int8", "--keep-fp32", "blocks.0.fc9"]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["blocks.0.fc9", "not a layer name", "auto:K"]);
    // Keeping layers of fp32 is refused, not ignored.
    let (code, _, err) = run(&["classify", img, "--model", model, "--keep-fp32", "heads.0"]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["--keep-fp32", "--variant int8"]);
}

#[test]
fn sensitivity_ranks_every_layer_and_keeping_the_top_3_lowers_kl() {
    let Some((fp32, x)) = vit_tiny_and_photos() else { return };
    let mut calls = 0;
    let s = analyze(&fp32, Variant::Int8, &QuantOptions::default(), &x, &mut |_, total| {
        calls += 1;
        assert_eq!(total, 101);
        Ok(())
    })
    .unwrap();
    assert_eq!(calls, 101);
    // A progress callback's error stops the analysis where it is and comes back unchanged.
    let mut seen = 0;
    let err = analyze(&fp32, Variant::Int8, &QuantOptions::default(), &x, &mut |done, _| {
        seen = done;
        if done == 3 { anyhow::bail!("cancelled by the user") } else { Ok(()) }
    })
    .unwrap_err();
    assert_eq!((err.to_string().as_str(), seen), ("cancelled by the user", 3));
    let names: BTreeSet<LayerName> = s.layers.iter().map(|l| l.layer).collect();
    assert_eq!(names.len(), 50, "every layer once: patch, 4 x 12 blocks, head");
    assert_eq!(s.layers.iter().map(|l| l.rank).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
    assert!(s.layers.windows(2).all(|w| w[0].alone.kl >= w[1].alone.kl), "ranked by kl_alone");
    assert!(s.layers.iter().all(|l| l.alone.kl > 0.0), "quantizing any layer changes the logits");

    let top3 = s.top(3);
    let scorer = Scorer::new(&fp32, &x).unwrap();
    let mixed = fp32.to_variant(Variant::Int8, QuantOptions { keep_fp32: top3.clone(), ..Default::default() }).unwrap();
    let mixed_cost = scorer.cost(Variant::Int8, mixed.weights.clone()).unwrap();
    println!(
        "mean KL vs fp32 over {} photos: int8 {:.3e}, int8 keeping {:?} fp32 {:.3e}",
        s.images,
        s.all_quantized.kl,
        top3.iter().map(ToString::to_string).collect::<Vec<_>>(),
        mixed_cost.kl
    );
    assert!(mixed_cost.kl < s.all_quantized.kl, "{} vs {}", mixed_cost.kl, s.all_quantized.kl);

    // auto:K is that ranking's top K; auto:kl=X stops at the first prefix meeting X.
    let opts = QuantOptions::default();
    let resolve =
        |k: &str| k.parse::<KeepFp32>().unwrap().resolve_ranked(&fp32, &opts, Some(&s), Some(&x), &mut |_| {}).unwrap();
    assert_eq!(resolve("auto:3"), top3);
    let target = mixed_cost.kl.max(s.all_quantized.kl / 2.0);
    let chosen = resolve(&format!("auto:kl={target}"));
    let with_chosen = fp32.to_variant(Variant::Int8, QuantOptions { keep_fp32: chosen.clone(), ..Default::default() });
    let chosen_cost = scorer.cost(Variant::Int8, with_chosen.unwrap().weights).unwrap();
    println!("auto:kl={target:.3e} keeps {} layer(s): KL {:.3e}", chosen.len(), chosen_cost.kl);
    assert!(chosen_cost.kl <= target);
    assert_eq!(chosen, s.top(chosen.len()), "a prefix of the ranking");
    assert!(resolve("auto:kl=1").is_empty(), "int8 already meets a KL of 1");
}

#[test]
fn sensitivity_command_writes_one_csv_row_per_layer() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("sens.csv");
    let model = hf_tiny(&shared);
    let images = shared.join("images");
    let (code, out, err) = run(&[
        "sensitivity",
        images.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--csv",
        csv_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("50 layers ranked by kl_alone"), "{out}");
    let mut rd = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header[..6], ["layer", "kl_alone", "kl_all_but", "flips", "max_abs_dlogit", "rank"]);
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 50);
    for (i, r) in rows.iter().enumerate() {
        assert!(r[0].parse::<LayerName>().is_ok(), "{:?}", r);
        assert_eq!(r[5].parse::<usize>().unwrap(), i + 1);
        assert!(r[1].parse::<f64>().unwrap() >= 0.0 && r[2].parse::<f64>().unwrap() >= 0.0);
    }
    // A variant that is not quantized, or an output that is an input, is refused in one line.
    let (code, _, err) =
        run(&["sensitivity", images.to_str().unwrap(), "--model", model.to_str().unwrap(), "--variant", "fp32"]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["int8 or mobile"]);
    let chelsea = images.join("chelsea.png");
    let (code, _, err) = run(&[
        "sensitivity",
        chelsea.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--csv",
        chelsea.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "{err}");
}

/// `bench --keep-fp32` measures each quantized variant also as a mixed one: its own row, labelled
/// in the table, the kept layers in the CSV's `kept_fp32` (`;`-separated). A tiny fixture model
/// and one run each: this checks the report, not the speed.
#[test]
fn bench_rows_name_the_kept_layers() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("bench.csv");
    let model = fixture("timm_vit");
    let (code, out, err) = run(&[
        "bench",
        "--models",
        model.to_str().unwrap(),
        "--variants",
        "fp32,int8",
        "--keep-fp32",
        "heads.0,blocks.0.fc2",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--min-seconds",
        "0",
        "--csv",
        csv_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("int8+fp32[2]"), "{out}");
    let mut rd = csv::Reader::from_path(&csv_path).unwrap();
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_string).collect();
    let col = |c: &str| header.iter().position(|h| h == c).unwrap();
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    let cells: Vec<(&str, &str)> = rows.iter().map(|r| (&r[col("variant")], &r[col("kept_fp32")])).collect();
    assert_eq!(cells, [("fp32", ""), ("int8", ""), ("int8", "blocks.0.fc2;heads.0")]);
    // The mixed row is compared with the same fp32 row as plain int8.
    assert!(!rows[2][col("speedup_vs_fp32")].is_empty() && !rows[2][col("kl_div")].is_empty());
}

/// The metadata's list of fp32 layers is checked against what the file stores: a file whose
/// list was edited (the checksums cover tensors, not metadata) is refused, naming both lists.
#[test]
fn a_mixed_file_whose_fp32_list_disagrees_is_refused() {
    let fp32 =
        Model::load("timm_vit", &ModelFiles::from_dir(&fixture("timm_vit")).unwrap(), None, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.safetensors");
    export::export(&fp32.to_variant(Variant::Int8, keep(&["heads.0"])).unwrap(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"][export::FP32_LAYERS_KEY], "heads.0");
    header["__metadata__"][export::FP32_LAYERS_KEY] = "patch".into();
    let mut text = serde_json::to_vec(&header).unwrap();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut edited = (text.len() as u64).to_le_bytes().to_vec();
    edited.extend_from_slice(&text);
    edited.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, edited).unwrap();
    let err = format!("{:#}", export::load(&path, &Device::Cpu).unwrap_err());
    assert!(err.contains("lists fp32 layers [patch] but it stores [heads.0]"), "{err}");
}
