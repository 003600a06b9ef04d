//! Explanations: class-specific attribution against a PyTorch implementation, overlays in the
//! image's own coordinates (the 3-tile strip), how much of each map lies on the object, and the
//! `explain` command as a user meets it.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::*;
use image::RgbImage;
use vit_workbench::explain::attribution::attribution;
use vit_workbench::explain::{AttentionMap, Attentions, HeadFusion, UNSEEN_DIM, heatmap};
use vit_workbench::model::{Capture, Model, ModelFiles};
use vit_workbench::preprocess::load_image;
use vit_workbench::quant::{QuantOptions, Variant};

fn load_fixture(name: &str) -> Model {
    let files = ModelFiles::from_dir(&fixture(name)).unwrap();
    Model::load(name, &files, None, &Device::Cpu).unwrap()
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// Every case of tests/fixtures/attribution.safetensors (tools/make_attribution_fixtures.py):
/// `<fixture>.<variant>.img<i>.class<c>.relevance` `[T, T]` and `.logits`.
#[test]
fn attribution_matches_pytorch_on_the_fixtures() {
    let reference = candle_core::safetensors::load(fixture("attribution.safetensors"), &Device::Cpu).unwrap();
    let mut keys: Vec<&String> = reference.keys().filter(|k| k.ends_with(".relevance")).collect();
    keys.sort();
    assert!(keys.len() >= 20, "only {} cases in the fixture", keys.len());
    let mut models: HashMap<(String, Variant), Model> = HashMap::new();
    let mut worst = 0f32;
    for key in keys {
        let parts: Vec<&str> = key.split('.').collect();
        let (name, variant) = (parts[0].to_string(), parts[1].parse::<Variant>().unwrap());
        let img: usize = parts[2].trim_start_matches("img").parse().unwrap();
        let class: usize = parts[3].trim_start_matches("class").parse().unwrap();
        let model = models
            .entry((name.clone(), variant))
            .or_insert_with(|| load_fixture(&name).to_variant(variant, QuantOptions::default()).unwrap());
        let pixels = candle_core::safetensors::load(fixture(&name).join("reference.safetensors"), &Device::Cpu)
            .unwrap()["pixel_values"]
            .narrow(0, img, 1)
            .unwrap();
        let a = attribution(model, &pixels, class).unwrap();
        let want = vec(&reference[key.as_str()]);
        let d = max_diff(&a.relevance, &want);
        let stem = key.trim_end_matches(".relevance");
        let dl = max_diff(&a.logits, &vec(&reference[&format!("{stem}.logits")]));
        println!("{stem}: max |ΔR| = {d:.2e}, max |Δlogit| = {dl:.2e}");
        assert!(d < 1e-4, "{stem}: relevance differs from PyTorch by {d}");
        // fp32 to float rounding. Fake-quantized, an input that lands within a rounding error of
        // a half step can round to the neighbouring int8 code in one implementation and not the
        // other; one such code moves a logit by ~1e-4 here, so int8 logits get 1e-3.
        let bound = if variant == Variant::Fp32 { 1e-4 } else { 1e-3 };
        assert!(dl < bound, "{stem}: reference-forward logits differ from PyTorch by {dl}");
        // Not degenerate: the patches get relevance beyond the identity.
        assert!(a.row[model.config.num_prefix_tokens()..].iter().any(|v| *v > 1e-3), "{stem}: empty map");
        worst = worst.max(d);
    }
    println!("attribution vs PyTorch: worst max |ΔR| = {worst:.2e}");
}

#[test]
fn each_variant_gets_its_own_map_and_classes_differ() {
    let fp32 = load_fixture("timm_vit");
    let int8 = fp32.to_variant(Variant::Int8, QuantOptions::default()).unwrap();
    let pixels = candle_core::safetensors::load(fixture("timm_vit").join("reference.safetensors"), &Device::Cpu)
        .unwrap()["pixel_values"]
        .narrow(0, 0, 1)
        .unwrap();
    let a = attribution(&fp32, &pixels, 0).unwrap();
    let b = attribution(&int8, &pixels, 0).unwrap();
    let c = attribution(&fp32, &pixels, 3).unwrap();
    assert!(max_diff(&a.row, &b.row) > 1e-3, "int8's map equals fp32's");
    assert!(max_diff(&a.row, &c.row) > 1e-2, "the map does not depend on the class");
    // The reference forward is the model: fp32 logits equal the fused forward's; int8's
    // fake-quantized forward is within float rounding of the int8 kernels.
    for (m, attr) in [(&fp32, &a), (&int8, &b)] {
        let logits = vec(&m.forward(&pixels, Capture::NONE).unwrap().logits);
        let d = max_diff(&attr.logits, &logits);
        println!("{}: reference forward vs model forward: {d:.2e}", m.variant);
        assert!(d < 1e-4, "{}: {d}", m.variant);
    }
    assert!(attribution(&fp32, &pixels, 10).is_err(), "class 10 of 10 accepted");
}

// ---- the explain command --------------------------------------------------------------------

/// cat | coffee | rocket, each squeezed to 400x400: a 1200x400 strip.
fn strip(shared: &std::path::Path) -> RgbImage {
    let mut out = RgbImage::new(1200, 400);
    for (i, f) in ["chelsea.png", "coffee.png", "rocket.jpg"].iter().enumerate() {
        let tile = image::imageops::resize(
            &load_image(&shared.join("images").join(f)).unwrap(),
            400,
            400,
            image::imageops::FilterType::Triangle,
        );
        image::imageops::replace(&mut out, &tile, 400 * i as i64, 0);
    }
    out
}

/// Per tile: (pixels exactly the dimmed input, mean |output - input| over the tile).
fn tile_stats(input: &RgbImage, output: &RgbImage) -> Vec<(f64, f64)> {
    let keep = 1.0 - UNSEEN_DIM;
    (0..3)
        .map(|t| {
            let (mut dimmed, mut diff, mut n) = (0usize, 0f64, 0usize);
            for y in 0..400 {
                for x in 400 * t..400 * (t + 1) {
                    let (a, b) = (input.get_pixel(x, y).0, output.get_pixel(x, y).0);
                    if (0..3).all(|c| b[c] == (a[c] as f32 * keep).round() as u8) {
                        dimmed += 1;
                    }
                    diff += (0..3).map(|c| (a[c] as f64 - b[c] as f64).abs()).sum::<f64>() / 3.0;
                    n += 1;
                }
            }
            (dimmed as f64 / n as f64, diff / n as f64)
        })
        .collect()
}

#[test]
fn overlay_covers_exactly_what_each_recipe_sees_on_a_three_tile_strip() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = strip(&shared);
    let path = dir.path().join("strip.png");
    input.save(&path).unwrap();
    for (model, crop) in [(timm_tiny(&shared), true), (hf_tiny(&shared), false)] {
        for method in ["attribution", "rollout"] {
            let out = dir.path().join(format!("out-{crop}-{method}.png"));
            let (code, stdout, err) = run(&[
                "explain",
                path.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
                "--method",
                method,
                "--out",
                out.to_str().unwrap(),
            ]);
            assert_eq!(code, 0, "{err}");
            let output = image::open(&out).unwrap().to_rgb8();
            assert_eq!(output.dimensions(), (1200, 400), "not written at the image's own size");
            let stats = tile_stats(&input, &output);
            println!("{} {method}: (dimmed share, mean |Δ|) per tile {stats:?}\n  {stdout}", model.display());
            if crop {
                // The model saw only the centre tile: left and right are the input uniformly
                // dimmed, every pixel of them, and the centre is coloured.
                assert!(stats[0].0 == 1.0 && stats[2].0 == 1.0, "{stats:?}");
                assert!(stdout.contains("espresso"), "{stdout}");
                assert!(stats[1].0 < 0.25, "centre tile mostly dimmed: {stats:?}");
            } else {
                // Squash: the whole image is seen and coloured, nothing dimmed.
                assert!(stats.iter().all(|s| s.0 < 0.01), "{stats:?}");
            }
            // Coloured tiles change visibly (the map at the default opacity over the photo).
            for (i, s) in stats.iter().enumerate() {
                if !crop || i == 1 {
                    assert!(s.1 > 20.0, "tile {i} barely coloured: {stats:?}");
                }
            }
        }
    }
}

/// Hand-drawn boxes around the object of each shared photo (x0, y0, x1, y1 in its pixels): what
/// a person would point at, drawn before looking at any map.
const OBJECTS: [(&str, [f64; 4]); 4] = [
    ("chelsea.png", [120.0, 60.0, 370.0, 290.0]), // the cat's face: eyes, nose, muzzle
    ("coffee.png", [175.0, 20.0, 410.0, 310.0]),  // the cup
    ("rocket.jpg", [295.0, 125.0, 345.0, 410.0]), // the rocket
    ("astronaut.png", [110.0, 15.0, 310.0, 300.0]), // the astronaut's head and collar ring
];

/// Share of a patch map's mass on patches whose centre lies in `bbox`.
fn mass_in_box(values: &[f32], side: usize, region: vit_workbench::preprocess::Region, bbox: [f64; 4]) -> f64 {
    let total: f64 = values.iter().map(|v| *v as f64).sum();
    let mut inside = 0.0;
    for (i, v) in values.iter().enumerate() {
        let x = region.left + (i % side) as f64 / side as f64 * region.width() + region.width() / side as f64 / 2.0;
        let y = region.top + (i / side) as f64 / side as f64 * region.height() + region.height() / side as f64 / 2.0;
        if x >= bbox[0] && x < bbox[2] && y >= bbox[1] && y < bbox[3] {
            inside += *v as f64;
        }
    }
    inside / total
}

#[test]
fn attribution_puts_more_of_its_mass_on_the_object_than_rollout() {
    let Some(shared) = shared() else { return };
    let mut sums = [0f64; 4];
    for model_dir in [timm_tiny(&shared), hf_tiny(&shared)] {
        let files = ModelFiles::from_dir(&model_dir).unwrap();
        let model = Model::load("m", &files, None, &Device::Cpu).unwrap();
        let prefix = model.config.num_prefix_tokens();
        println!("{}", model_dir.display());
        println!(
            "  {:<14} {:<18} {:>8} {:>11} {:>14} {:>12}",
            "photo", "top-1", "box area", "attribution", "rollout max.9", "rollout mean"
        );
        for (photo, bbox) in OBJECTS {
            let img = load_image(&shared.join("images").join(photo)).unwrap();
            let region = model.recipe.seen_region(img.width(), img.height()).unwrap();
            let x = model.preprocess(&img).unwrap();
            let fwd = model.forward(&x, Capture::ATTENTIONS).unwrap();
            let top = model.top_k(&fwd.logits, 1).unwrap().remove(0).remove(0);
            let att = Attentions::from_tensors(fwd.attentions.as_deref().unwrap(), 0).unwrap();
            let attr = attribution(&model, &x, top.index).unwrap();
            let side = 14;
            let attr_patches = &attr.row[prefix..];
            // Rollout's class-token row, unnormalised, over the patches.
            let rollout = |fusion, discard_ratio| {
                let r = vit_workbench::explain::rollout(&att, fusion, discard_ratio);
                r[prefix..att.tokens].to_vec()
            };
            let area = mass_in_box(&vec![1.0; side * side], side, region, bbox);
            let a = mass_in_box(attr_patches, side, region, bbox);
            let r_max = mass_in_box(&rollout(HeadFusion::Max, 0.9), side, region, bbox);
            let r_mean = mass_in_box(&rollout(HeadFusion::Mean, 0.0), side, region, bbox);
            // The heatmap the window draws is the same map, min-max scaled.
            assert_eq!(
                heatmap(&att, prefix, AttentionMap::Rollout { fusion: HeadFusion::Mean, discard_ratio: 0.0 })
                    .unwrap()
                    .side,
                side
            );
            println!(
                "  {photo:<14} {:<18} {:>7.1}% {:>10.1}% {:>13.1}% {:>11.1}%",
                top.label,
                100.0 * area,
                100.0 * a,
                100.0 * r_max,
                100.0 * r_mean
            );
            for (s, v) in sums.iter_mut().zip([area, a, r_max, r_mean]) {
                *s += v / 8.0;
            }
        }
    }
    println!(
        "mean over 2 models x 4 photos: box area {:.1}%, attribution {:.1}%, rollout (max, 0.9) {:.1}%, rollout (mean, 0) {:.1}%",
        100.0 * sums[0],
        100.0 * sums[1],
        100.0 * sums[2],
        100.0 * sums[3]
    );
    assert!(sums[1] > sums[2] && sums[1] > sums[3], "attribution is not more on the object than rollout: {sums:?}");
}

#[test]
fn explain_refuses_bad_requests_with_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("timm_vit");
    let m = model.to_str().unwrap();
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let i = img.to_str().unwrap();
    let png = dir.path().join("out.png");
    let o = png.to_str().unwrap();
    let image_bytes = std::fs::read(&img).unwrap();
    let plain_file = dir.path().join("notes");
    std::fs::write(&plain_file, "mine").unwrap();
    let plain = plain_file.display().to_string();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["explain", i, "--model", m, "--class", "10", "--out", o], vec!["--class 10", "10 classes"]),
        (vec!["explain", i, "--model", m, "--method", "rollout", "--class", "1", "--out", o], vec!["--class"]),
        (
            vec!["explain", i, "--model", m, "--method", "raw", "--layer", "2", "--out", o],
            vec!["--layer 2", "2 layers"],
        ),
        (vec!["explain", i, "--model", m, "--method", "raw", "--head", "5", "--out", o], vec!["--head 5"]),
        (vec!["explain", i, i, "--model", m, "--out", o], vec!["out.png", "2 images"]),
        (vec!["explain", i, "--model", m, "--out", "/nonexistent/dir/x.png"], vec!["/nonexistent/dir"]),
        (vec!["explain", i, "--model", m, "--out", "/tmp/x.jpg"], vec!["/tmp/x.jpg", ".png"]),
        (vec!["explain", i, "--model", m, "--out", i], vec!["refusing to overwrite"]),
        (vec!["explain", i, "--model", m, "--out", plain.as_str()], vec!["is a file, not a folder"]),
        (vec!["explain", "/nonexistent/cat.png", "--model", m, "--out", o], vec!["/nonexistent/cat.png"]),
        (vec!["explain", i, "--model", m, "--opacity", "2", "--out", o], vec!["--opacity"]),
    ];
    for (args, needles) in cases {
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert_one_line_error(&err, &needles);
    }
    assert!(!png.exists(), "a failed explain left a file");
    // The input image and the user's file are untouched by the refused writes.
    assert_eq!(std::fs::read(&img).unwrap(), image_bytes);
    assert_eq!(std::fs::read_to_string(&plain_file).unwrap(), "mine");
}

#[test]
fn explain_writes_every_method_into_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("hf_vit");
    let a = fixture("preprocess/hf_vit__chelsea.png");
    let b = fixture("preprocess/deit__rocket.png");
    let out = dir.path().join("maps");
    for method in ["attribution", "rollout", "raw"] {
        let (code, stdout, err) = run(&[
            "explain",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--method",
            method,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(stdout.lines().count(), 2, "{stdout}");
        for stem in ["hf_vit__chelsea", "deit__rocket"] {
            let f = out.join(format!("{stem}.{method}.png"));
            assert_eq!(
                (image::open(&f).unwrap().width(), image::open(&f).unwrap().height()),
                (224, 224),
                "{}",
                f.display()
            );
        }
    }
    // Two inputs with one stem would collide: refused before anything is computed.
    let other = dir.path().join("hf_vit__chelsea.jpg");
    std::fs::copy(fixture("hostile/cmyk.jpg"), &other).unwrap();
    let (code, _, err) = run(&[
        "explain",
        a.to_str().unwrap(),
        other.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &["would both be written"]);
}

// ---- exported files on the command line ------------------------------------------------------

#[test]
fn exported_files_work_without_variant_and_name_themselves_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("timm_vit");
    let file = dir.path().join("tiny.int8.safetensors");
    let f = file.to_str().unwrap();
    let (code, _, err) = run(&["export", "--model", model.to_str().unwrap(), "--variant", "int8", "--out", f]);
    assert_eq!(code, 0, "{err}");
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let i = img.to_str().unwrap();
    // classify and explain default to the variant the file holds.
    let (code, out, err) = run(&["classify", i, "--model", f]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("int8"), "{out}");
    let png = dir.path().join("e.png");
    let (code, out, err) = run(&["explain", i, "--model", f, "--out", png.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(int8)") && png.is_file(), "{out}");
    // Asking for another variant says what the file holds and names the file given.
    let (code, _, err) = run(&["classify", i, "--model", f, "--variant", "mobile"]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &[f, "holds int8", "fp32 model"]);
    // bench measures the file's own variant.
    let (code, out, err) =
        run(&["bench", "--models", f, "--warmup", "1", "--runs", "2", "--min-seconds", "0", "--threads", "1"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with(f)).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(rows[0].contains("int8"), "{out}");
    let (code, _, err) = run(&["bench", "--models", f, "--variants", "fp32", "--warmup", "1", "--runs", "2"]);
    assert_ne!(code, 0);
    assert!(err.contains(f) && err.contains("holds int8"), "{err}");
    // compare needs fp32 and says so, naming the file.
    let (code, _, err) = run(&["compare", i, "--model", f]);
    assert_ne!(code, 0);
    assert_one_line_error(&err, &[f, "needs the fp32 model", "int8"]);
}

// ---- the window's worker draws the same overlay ------------------------------------------------

#[test]
fn the_window_overlay_covers_only_the_seen_region_and_follows_the_clicked_class() {
    use vit_workbench::app::worker::{Command as WorkerCommand, ImageSource, Reply, spawn};
    use vit_workbench::explain::{Colormap, Request};
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strip.png");
    strip(&shared).save(&path).unwrap();
    let hub = vit_workbench::hub::Hub::from_env(true);
    let worker = spawn(hub, || {});
    worker.send(WorkerCommand::OpenImage(ImageSource::Path(path)));
    worker.send(WorkerCommand::SetModel { spec: timm_tiny(&shared).display().to_string(), device: "cpu".into() });
    let next_overlay = |worker: &vit_workbench::app::worker::WorkerHandle| loop {
        match worker.rx.recv_timeout(std::time::Duration::from_secs(120)).expect("no overlay from the worker") {
            Reply::Overlay { rgba, .. } => return rgba,
            Reply::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    };
    let analyze =
        |map| WorkerCommand::Analyze { variants: vec![Variant::Fp32], map, cmap: Colormap::Inferno, opacity: 0.6 };
    worker.send(analyze(Request::Attribution { class: None }));
    let top1 = next_overlay(&worker);
    // Shown scaled to 1024 px wide: the left and right tiles are only dimmed (black at the dim
    // alpha), every pixel of them; the centre tile holds the map at the chosen opacity.
    let (w, h) = (top1.width, top1.height);
    assert_eq!((w, h), (1024, 341));
    let dim = (UNSEEN_DIM * 255.0).round() as u8;
    let px = |x: usize, y: usize| &top1.pixels[(y * w + x) * 4..(y * w + x) * 4 + 4];
    for y in 0..h {
        for x in (0..w / 3).chain(2 * w / 3 + 1..w) {
            assert_eq!(px(x, y), [0, 0, 0, dim], "({x},{y}) is not just dimmed");
        }
    }
    assert!((w * 37 / 100..w * 63 / 100).all(|x| px(x, h / 2)[3] == 153), "the seen part is not at opacity 0.6");
    // Another class gives another map over the same region.
    worker.send(analyze(Request::Attribution { class: Some(968) })); // cup
    let cup = next_overlay(&worker);
    assert_ne!(cup.pixels, top1.pixels, "the clicked class does not change the map");
    assert_eq!(&cup.pixels[..4], &[0, 0, 0, dim]);
}

#[test]
fn clicking_a_top5_class_in_the_window_explains_that_class() {
    use egui_kittest::Harness;
    use egui_kittest::kittest::Queryable;
    use vit_workbench::app::state::{OverlayMode, Settings};
    use vit_workbench::app::{GuiOptions, WorkbenchApp};
    let settings = Settings { model: fixture("timm_vit").display().to_string(), compare: None, ..Settings::default() };
    let app = WorkbenchApp::new(settings, &GuiOptions { offline: true, ..Default::default() });
    let mut h = Harness::builder()
        .with_size(egui::Vec2::new(1280.0, 820.0))
        .build_ui_state(|ui, app: &mut WorkbenchApp| app.show(ui), app);
    let start = std::time::Instant::now();
    let wait = |h: &mut Harness<'static, WorkbenchApp>, what: &str, done: &dyn Fn(&WorkbenchApp) -> bool| {
        while !done(h.state()) {
            assert!(start.elapsed().as_secs() < 60, "timed out waiting for {what}: {:?}", h.state().state.notices);
            h.step();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        h.step();
    };
    // Attribution is the default overlay, for the top-1.
    wait(&mut h, "the first overlay", &|a| a.state.overlays.contains_key(&Variant::Fp32));
    let o = &h.state().state.settings.overlay;
    assert_eq!((o.mode, o.class), (OverlayMode::Attribution, None));
    let top5 = h.state().state.result(Variant::Fp32).unwrap().top5.clone();
    let first = h.state().state.overlays[&Variant::Fp32].id();
    // Click the second class: it becomes the explained one and a new map arrives.
    h.get_by_label(&top5[1].label).click();
    h.step();
    assert_eq!(h.state().state.settings.overlay.class, Some(top5[1].index));
    wait(&mut h, "the second class's overlay", &|a| {
        a.state.overlays.get(&Variant::Fp32).is_some_and(|t| t.id() != first)
    });
    assert!(h.state().state.notices.iter().all(|n| n.level != vit_workbench::app::state::Level::Error));
}
