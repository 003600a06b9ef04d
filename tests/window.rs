//! The window's own rules, without real weights: one write path (actions), notices, keys,
//! fields, restored settings, and the benchmark state the charts draw.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use vit_workbench::app::state::{AppState, BottomView, LiveSeries, Settings, Topic};
use vit_workbench::app::worker::{ModelSummary, Reply, Rgba};
use vit_workbench::app::{GuiOptions, WorkbenchApp};
use vit_workbench::bench::{BenchResult, Environment, stats};
use vit_workbench::quant::Variant;

fn harness_with(settings: Settings) -> Harness<'static, WorkbenchApp> {
    let app = WorkbenchApp::new(settings, &GuiOptions { offline: true, ..Default::default() });
    Harness::builder()
        .with_size(egui::Vec2::new(1280.0, 820.0))
        .build_ui_state(|ui, app: &mut WorkbenchApp| app.show(ui), app)
}

fn harness(model: &Path) -> Harness<'static, WorkbenchApp> {
    harness_with(Settings { model: model.display().to_string(), compare: None, ..Settings::default() })
}

fn wait_for(h: &mut Harness<'static, WorkbenchApp>, what: &str, done: impl Fn(&WorkbenchApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}; notices: {:?}",
            h.state().state.notices
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
}

fn errors(app: &WorkbenchApp) -> Vec<String> {
    app.state
        .notices
        .iter()
        .filter(|n| n.level == vit_workbench::app::state::Level::Error)
        .map(|n| n.text.clone())
        .collect()
}

fn key(k: egui::Key) -> egui::Event {
    egui::Event::Key { key: k, pressed: true, modifiers: egui::Modifiers::NONE, repeat: false, physical_key: None }
}

#[test]
fn variant_keys_typed_quickly_end_on_the_last_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(&dir.path().join("no-model"));
    h.step();
    // 1, 3, 2 arriving within one frame (typed 40 ms apart while a frame was busy).
    h.input_mut().events.extend([key(egui::Key::Num1), key(egui::Key::Num3), key(egui::Key::Num2)]);
    h.step();
    assert_eq!(h.state().state.settings.variant, Variant::Int8);
    h.input_mut().events.extend([key(egui::Key::Num2), key(egui::Key::Num1)]);
    h.step();
    assert_eq!(h.state().state.settings.variant, Variant::Fp32);
}

#[test]
fn an_error_notice_is_dismissed_with_esc_and_with_its_button() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(&dir.path().join("no-such-model"));
    wait_for(&mut h, "the model error", |a| !errors(a).is_empty());
    h.key_press(egui::Key::Escape);
    h.step();
    assert!(h.state().state.notices.is_empty(), "Esc must dismiss the notice");

    // Another error, dismissed with its x.
    h.state_mut().state.model_input = dir.path().join("still-missing").display().to_string();
    h.get_by_label("Load").click();
    wait_for(&mut h, "the second error", |a| errors(a).iter().any(|e| e.contains("still-missing")));
    h.get_by_label("Dismiss").click();
    h.step();
    assert!(h.state().state.notices.is_empty());
}

#[test]
fn enter_in_the_model_field_loads_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(&dir.path().join("first"));
    wait_for(&mut h, "the first error", |a| errors(a).iter().any(|e| e.contains("first")));
    let typed = dir.path().join("typed-model").display().to_string();
    h.state_mut().state.model_input = typed.clone();
    h.step();
    let field = h.get_by_role_and_label(egui::accesskit::Role::TextInput, "Model:");
    assert_eq!(field.value().as_deref(), Some(typed.as_str()));
    field.focus();
    h.step();
    h.key_press(egui::Key::Enter);
    wait_for(&mut h, "loading the typed model", |a| errors(a).iter().any(|e| e.contains("typed-model")));
}

#[test]
fn a_failed_image_error_goes_when_the_next_image_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(&dir.path().join("no-model"));
    wait_for(&mut h, "the sample image", |a| a.state.image.is_some());
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    h.state_mut().state.path_input = bad.display().to_string();
    h.get_by_label("Open path").click();
    wait_for(&mut h, "the image error", |a| errors(a).iter().any(|e| e.contains("broken.png")));
    let good = dir.path().join("good.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 10])).save(&good).unwrap();
    h.state_mut().state.path_input = good.display().to_string();
    h.get_by_label("Open path").click();
    wait_for(&mut h, "the good image", |a| a.state.image.as_ref().is_some_and(|i| i.name.contains("good.png")));
    let left = errors(h.state());
    assert!(left.iter().all(|e| !e.contains("broken.png")), "the image error stayed: {left:?}");
    // The model error is about something else and stays.
    assert!(left.iter().any(|e| e.contains("no-model")), "{left:?}");
}

#[test]
fn a_truncated_image_opens_marked_truncated_with_open_anyway() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(&dir.path().join("no-model"));
    wait_for(&mut h, "the sample image", |a| a.state.image.is_some());
    // The first 3000 bytes of a JPEG: the header and a few rows, no end-of-image marker.
    let cut = dir.path().join("cut.jpg");
    let whole = std::fs::read(shared.join("images").join("rocket.jpg")).unwrap();
    std::fs::write(&cut, &whole[..3000]).unwrap();
    h.state_mut().state.path_input = cut.display().to_string();
    h.get_by_label("Open path").click();
    wait_for(&mut h, "the truncation error", |a| errors(a).iter().any(|e| e.contains("cut.jpg")));
    let error = errors(h.state()).into_iter().find(|e| e.contains("cut.jpg")).unwrap();
    assert!(error.contains("truncated"), "{error}");
    // Refused by default: the sample is still what is shown.
    assert!(h.state().state.image.as_ref().is_some_and(|i| !i.name.contains("cut.jpg")));
    h.get_by_label("Open anyway").click();
    wait_for(&mut h, "the truncated image", |a| a.state.image.as_ref().is_some_and(|i| i.name.contains("cut.jpg")));
    let shown = h.state().state.image.as_ref().unwrap();
    assert!(shown.truncated.as_deref().is_some_and(|what| what.contains("3000 bytes")), "{:?}", shown.truncated);
    assert!(shown.caption().ends_with("TRUNCATED: part of it did not decode"), "{}", shown.caption());
    assert_eq!((shown.width, shown.height), image::image_dimensions(shared.join("images").join("rocket.jpg")).unwrap());
    let left = errors(h.state());
    assert!(left.iter().all(|e| !e.contains("cut.jpg")), "the truncation error stayed: {left:?}");
    // Only a truncation offers this: another bad image's error has no such button.
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    h.state_mut().state.path_input = bad.display().to_string();
    h.get_by_label("Open path").click();
    wait_for(&mut h, "the broken image error", |a| errors(a).iter().any(|e| e.contains("broken.png")));
    assert!(h.query_by_label("Open anyway").is_none());
}

#[test]
fn the_last_image_is_reopened_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("last-seen.png");
    image::RgbImage::from_pixel(64, 48, image::Rgb([10, 200, 10])).save(&photo).unwrap();
    let mut h = harness(&dir.path().join("no-model"));
    wait_for(&mut h, "the sample", |a| a.state.image.is_some());
    h.state_mut().state.path_input = photo.display().to_string();
    h.get_by_label("Open path").click();
    wait_for(&mut h, "the photo", |a| a.state.image.as_ref().is_some_and(|i| i.name.contains("last-seen.png")));
    let saved = h.state().state.settings.clone();
    assert_eq!(saved.last_image.as_deref(), Some(photo.as_path()));
    // A new window from the saved settings opens it again.
    let mut h2 = harness_with(saved.clone());
    wait_for(&mut h2, "the photo after restart", |a| {
        a.state.image.as_ref().is_some_and(|i| i.name.contains("last-seen.png") && i.width == 64)
    });
    // Gone from disk: the sample opens instead, without an error.
    std::fs::remove_file(&photo).unwrap();
    let mut h3 = harness_with(saved);
    wait_for(&mut h3, "the sample instead", |a| a.state.image.as_ref().is_some_and(|i| i.name.contains("sample")));
    assert!(errors(h3.state()).iter().all(|e| !e.contains("last-seen")));
}

#[test]
fn compare_comes_back_after_an_exported_file() {
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("tiny.int8.safetensors");
    let out = std::process::Command::new(bin())
        .args(["export", "--model"])
        .arg(fixture("timm_vit"))
        .args(["--variant", "int8", "--out"])
        .arg(&exported)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let settings = Settings {
        model: fixture("timm_vit").display().to_string(),
        compare: Some(Variant::Mobile),
        ..Settings::default()
    };
    let mut h = harness_with(settings);
    wait_for(&mut h, "both variants", |a| {
        a.state.result(Variant::Fp32).is_some() && a.state.result(Variant::Mobile).is_some()
    });
    h.get_by_label("Compare with");

    h.state_mut().state.model_input = exported.display().to_string();
    h.get_by_label("Load").click();
    wait_for(&mut h, "the exported file", |a| {
        a.state.exported_variant() == Some(Variant::Int8) && a.state.result(Variant::Int8).is_some()
    });
    assert_eq!(h.state().state.active_variants(), vec![Variant::Int8]);
    // Other variants cannot be asked of the file; the keys say so instead of switching.
    h.key_press(egui::Key::Num3);
    h.step();
    assert_eq!(h.state().state.primary(), Variant::Int8);
    assert!(h.state().state.notices.iter().any(|n| n.text.contains("holds only int8")));

    h.state_mut().state.model_input = fixture("timm_vit").display().to_string();
    h.get_by_label("Load").click();
    wait_for(&mut h, "the full model again", |a| {
        a.state.exported_variant().is_none() && a.state.result(Variant::Mobile).is_some()
    });
    assert_eq!(h.state().state.active_variants(), vec![Variant::Fp32, Variant::Mobile], "compare was not restored");
}

#[test]
fn settings_are_made_consistent_in_one_place() {
    let mut s = Settings { variant: Variant::Int8, compare: Some(Variant::Int8), ..Settings::default() };
    s.overlay.opacity = 7.0;
    s.normalize();
    assert_eq!(s.compare, Some(Variant::Fp32), "a variant is compared with its default partner, not itself");
    assert_eq!(s.overlay.opacity, 1.0);
    assert_eq!(Variant::Fp32.default_partner(), Variant::Int8);
    let s = Settings { bench_runs: 0, bench_seconds: -3.0, ..Settings::default() };
    let cfg = s.bench_config();
    assert_eq!((cfg.min_runs, cfg.min_seconds), (1, 0.0));
}

#[test]
fn running_statistics_match_the_statistics_of_each_prefix() {
    let samples = [30.0, 20.0, 25.0, 40.0, 22.0, 22.0, 35.0, 19.0, 50.0, 21.0, 23.5];
    let mut live = LiveSeries::default();
    for (i, ms) in samples.iter().enumerate() {
        live.push(*ms);
        let s = stats(&samples[..=i]);
        assert_eq!(live.median[i], [i as f64 + 1.0, s.p50]);
        assert_eq!(live.p90[i], [i as f64 + 1.0, s.p90]);
    }
    assert_eq!(live.samples, samples);
}

fn result(model: &str, variant: Variant, p50: f64) -> BenchResult {
    BenchResult {
        model: model.into(),
        variant,
        batch: 1,
        warmup: 1,
        load_ms: 1.0,
        first_ms: 1.0,
        stats: vit_workbench::bench::Stats { n: 3, p50, ..Default::default() },
        measured_seconds: 1.0,
        throughput_ips: 1.0,
        file_bytes: 1000,
        weight_bytes: 1000,
        peak_rss_bytes: 1,
        accuracy: None,
        int8_kernel: None,
        kept_fp32: Vec::new(),
        scheme: String::new(),
        samples_ms: vec![p50],
        env: Environment {
            cpu: String::new(),
            simd: String::new(),
            threads: 1,
            device: "cpu".into(),
            os: String::new(),
            app_version: String::new(),
            git_rev: String::new(),
            candle_version: String::new(),
            timestamp: String::new(),
            gpu: String::new(),
        },
    }
}

#[test]
fn the_bar_charts_show_every_model_benchmarked() {
    let ctx = egui::Context::default();
    let mut st = AppState::new(Settings::default());
    st.apply(&ctx, Reply::BenchDone(vec![result("a", Variant::Fp32, 30.0), result("a", Variant::Int8, 10.0)]));
    st.apply(&ctx, Reply::BenchDone(vec![result("b", Variant::Fp32, 90.0), result("b", Variant::Int8, 40.0)]));
    // Model a again: its newest numbers replace the old ones, in the same place.
    st.apply(&ctx, Reply::BenchDone(vec![result("a", Variant::Fp32, 31.0)]));
    let latest: Vec<(String, Variant, f64)> =
        st.bench.latest().iter().map(|r| (r.model.clone(), r.variant, r.stats.p50)).collect();
    assert_eq!(
        latest,
        vec![
            ("a".into(), Variant::Fp32, 31.0),
            ("a".into(), Variant::Int8, 10.0),
            ("b".into(), Variant::Fp32, 90.0),
            ("b".into(), Variant::Int8, 40.0)
        ]
    );
    assert_eq!(st.bench.results.len(), 5);
}

fn summary(spec: &str) -> ModelSummary {
    ModelSummary {
        spec: spec.into(),
        architecture: "vit".into(),
        params: 1,
        depth: 2,
        heads: 2,
        image_size: 32,
        classes: 10,
        prefix_tokens: 1,
        recipe: String::new(),
        stored_variant: Variant::Fp32,
        device: "cpu".into(),
        int8_kernel: vit_workbench::device::Int8Kernel::CpuPerChannelRowwise,
    }
}

#[test]
fn errors_go_when_what_they_were_about_succeeds() {
    let ctx = egui::Context::default();
    let mut st = AppState::new(Settings::default());
    let err = |about: Topic, what: &str| Reply::Error {
        what: what.into(),
        about,
        message: "failed".into(),
        open_anyway: None,
    };
    st.apply(&ctx, err(Topic::Model, "cannot load model hub/x"));
    st.apply(&ctx, err(Topic::Image, "cannot open image a.png"));
    st.apply(&ctx, err(Topic::Export, "cannot export r.csv"));
    assert_eq!(st.notices.len(), 3);
    st.apply(&ctx, Reply::ModelLoaded(summary("local/model")));
    let left: Vec<&str> = st.notices.iter().map(|n| n.text.as_str()).collect();
    assert!(left.iter().all(|t| !t.contains("hub/x")), "{left:?}");
    let display = Rgba { width: 1, height: 1, pixels: std::sync::Arc::new(vec![0, 0, 0, 255]) };
    st.apply(
        &ctx,
        Reply::ImageLoaded {
            image_id: 1,
            name: "b.png".into(),
            path: None,
            display,
            width: 1,
            height: 1,
            truncated: None,
        },
    );
    let left: Vec<&str> = st.notices.iter().map(|n| n.text.as_str()).collect();
    assert_eq!(left, vec!["cannot export r.csv: failed"]);
    // Info notices fade; errors stay until dismissed or resolved.
    st.notify(vit_workbench::app::state::Level::Info, Topic::Other, "done");
    assert!(st.expire_notices(100.0).is_some());
    st.expire_notices(100.0 + vit_workbench::app::state::INFO_SECONDS);
    let left: Vec<&str> = st.notices.iter().map(|n| n.text.as_str()).collect();
    assert_eq!(left, vec!["cannot export r.csv: failed"]);
}

#[test]
fn the_cli_and_the_window_know_the_same_image_formats() {
    use vit_workbench::preprocess::{IMAGE_EXTENSIONS, has_image_extension};
    for ext in IMAGE_EXTENSIONS {
        assert!(has_image_extension(Path::new(&format!("x.{}", ext.to_uppercase()))));
    }
    assert!(!has_image_extension(Path::new("x.safetensors")));
    // The CLI lists a folder by this rule.
    let dir = tempfile::tempdir().unwrap();
    for f in ["a.PNG", "b.tiff", "c.txt", "d.json"] {
        std::fs::write(dir.path().join(f), b"x").unwrap();
    }
    let found = vit_workbench::cli::expand_images(&[dir.path().to_path_buf()]).unwrap();
    let names: Vec<String> = found.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["a.PNG", "b.tiff"]);
}

/// A labelled folder for the 10-class fixture model: one folder per class, named by class
/// index, holding `per_class` images (`side` x `side`) of smooth waves with pseudo-random
/// frequencies and phases (the random-weight model tells those apart more than noise).
fn fixture_set(dir: &Path, classes: &[usize], per_class: usize, side: u32) -> std::path::PathBuf {
    let root = dir.join("labelled");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    for &c in classes {
        let class_dir = root.join(c.to_string());
        std::fs::create_dir_all(&class_dir).unwrap();
        for i in 0..per_class {
            let waves: Vec<[f32; 3]> = (0..3).map(|_| [next() * 0.3, next() * 0.3, next() * 6.3]).collect();
            let img = image::RgbImage::from_fn(side, side, |x, y| {
                let (x, y) = (x as f32, y as f32);
                let ch = |w: &[f32; 3]| (127.5 + 127.0 * (w[0] * x + w[1] * y + w[2]).sin()) as u8;
                image::Rgb([ch(&waves[0]), ch(&waves[1]), ch(&waves[2])])
            });
            img.save(class_dir.join(format!("img{i:03}.png"))).unwrap();
        }
    }
    root
}

fn fixture_settings(compare: Option<Variant>) -> Settings {
    Settings { model: fixture("timm_vit").display().to_string(), compare, ..Settings::default() }
}

/// Clicks the widget labelled `label`; the click lands in the next frame, its action in the one after.
fn click(h: &mut Harness<'static, WorkbenchApp>, label: &str) {
    h.get_by_label(label).click();
    h.step();
    h.step();
}

fn evaluate_in_window(h: &mut Harness<'static, WorkbenchApp>, set: &Path) {
    click(h, "Accuracy");
    h.state_mut().state.settings.eval_path = set.display().to_string();
    h.step();
    click(h, "Evaluate");
}

#[test]
fn evaluating_a_folder_in_the_window_gives_the_eval_commands_result_and_flips_open_in_compare() {
    let dir = tempfile::tempdir().unwrap();
    let set = fixture_set(dir.path(), &[0, 3, 7, 9], 12, 40);
    let mut h = harness_with(fixture_settings(Some(Variant::Int8)));
    wait_for(&mut h, "the model and the first results", |a| {
        a.state.model.is_some() && a.state.result(Variant::Int8).is_some() && a.state.busy.is_none()
    });
    assert_eq!(h.state().state.eval_variants(), vec![Variant::Fp32, Variant::Int8]);
    evaluate_in_window(&mut h, &set);
    assert!(h.state().state.eval.running || h.state().state.eval.report.is_some(), "the evaluation did not start");
    wait_for(&mut h, "the evaluation", |a| !a.state.eval.running && a.state.busy.is_none());
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
    let report = h.state().state.eval.report.clone().expect("no report");

    // The same set through `eval`: the same top-1 per image, counts and flips.
    let json = dir.path().join("eval.json");
    let (code, _, stderr) = run(&[
        "eval",
        set.to_str().unwrap(),
        "--model",
        fixture("timm_vit").to_str().unwrap(),
        "--variants",
        "fp32,int8",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let cli: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let cli_preds = cli["predictions"].as_array().unwrap();
    assert_eq!(cli_preds.len(), 48);
    assert_eq!(report.predictions.len(), 48);
    for (w, c) in report.predictions.iter().zip(cli_preds) {
        assert_eq!(w.file, c["file"].as_str().unwrap());
        for v in 0..2 {
            assert_eq!(w.top[v][0].index as u64, c["top"][v][0]["index"].as_u64().unwrap(), "{}", w.file);
        }
    }
    for (w, c) in report.variants.iter().zip(cli["variants"].as_array().unwrap()) {
        assert_eq!(w.top1_correct as u64, c["top1_correct"].as_u64().unwrap());
        assert_eq!(w.topk_correct as u64, c["topk_correct"].as_u64().unwrap());
        assert_eq!(w.flips.len(), c["flips"].as_array().unwrap().len());
    }
    // Counted by hand from the per-image predictions.
    let right = |v: usize| report.predictions.iter().filter(|p| p.top[v][0].index == p.label).count();
    assert_eq!((report.variants[0].top1_correct, report.variants[1].top1_correct), (right(0), right(1)));

    // The random fixture's int8 changes some top-1s: each is a thumbnail that opens the image
    // in the compare view, fp32 beside int8, with the top-1s the evaluation found.
    let flips = &report.variants[1].flips;
    assert!(!flips.is_empty(), "this fixture set is chosen to have int8 flips");
    assert!(flips.iter().all(|f| h.state().state.eval.thumbnails.contains_key(&f.file)));
    let flip = &flips[0];
    let name = Path::new(&flip.file).file_name().unwrap().to_string_lossy().into_owned();
    h.state_mut().state.settings.compare = None;
    click(&mut h, &format!("open {name} (int8)"));
    wait_for(&mut h, "the flipped image in the compare view", |a| {
        a.state.image.as_ref().is_some_and(|i| i.name == flip.file)
            && a.state.result(Variant::Fp32).is_some()
            && a.state.result(Variant::Int8).is_some()
    });
    let st = &h.state().state;
    assert_eq!(st.active_variants(), vec![Variant::Fp32, Variant::Int8]);
    assert_eq!(st.result(Variant::Fp32).unwrap().top5[0].label, flip.fp32);
    assert_eq!(st.result(Variant::Int8).unwrap().top5[0].label, flip.variant);
}

#[test]
fn evaluation_errors_become_notices_and_keep_the_last_report() {
    let dir = tempfile::tempdir().unwrap();
    let good = fixture_set(&dir.path().join("good"), &[1, 2], 2, 24);
    let mut h = harness_with(fixture_settings(None));
    wait_for(&mut h, "the model", |a| a.state.model.is_some() && a.state.busy.is_none());
    evaluate_in_window(&mut h, &good);
    wait_for(&mut h, "the first evaluation", |a| a.state.eval.report.is_some() && a.state.busy.is_none());
    let first = h.state().state.eval.report.clone().unwrap();

    let unknown = dir.path().join("unknown");
    std::fs::create_dir_all(unknown.join("fixture clas 4")).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let unreadable = dir.path().join("unreadable");
    std::fs::create_dir_all(unreadable.join("5")).unwrap();
    std::fs::write(unreadable.join("5").join("broken.png"), b"not a png").unwrap();
    let cases: [(&Path, &[&str]); 4] = [
        (&unknown, &["unknown class `fixture clas 4`", "`fixture class 4`"]),
        (&empty, &["no class folders"]),
        (&unreadable, &["broken.png"]),
        (&dir.path().join("missing"), &["no such folder or file"]),
    ];
    for (path, needles) in cases {
        evaluate_in_window(&mut h, path);
        wait_for(&mut h, "the error", |a| !a.state.eval.running && a.state.busy.is_none());
        let errs = errors(h.state());
        let shown = errs.iter().find(|e| e.contains(&path.display().to_string())).unwrap_or_else(|| {
            panic!("no error naming {}: {errs:?}", path.display());
        });
        for n in needles {
            assert!(shown.contains(n), "`{n}` not in: {shown}");
        }
        assert!(
            std::sync::Arc::ptr_eq(h.state().state.eval.report.as_ref().unwrap(), &first),
            "the last report changed"
        );
        h.key_press(egui::Key::Escape);
        h.step();
    }
}

#[test]
fn a_cancelled_evaluation_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let set = fixture_set(dir.path(), &[0, 1, 2, 3], 60, 160);
    let mut h = harness_with(fixture_settings(Some(Variant::Mobile)));
    wait_for(&mut h, "the model", |a| a.state.model.is_some() && a.state.busy.is_none());
    evaluate_in_window(&mut h, &set);
    wait_for(&mut h, "the first images", |a| a.state.eval.progress.0 >= 1);
    // The progress bar's Cancel (the status bar's is hidden while the view shows its own).
    click(&mut h, "Cancel");
    wait_for(&mut h, "the cancel", |a| !a.state.eval.running && a.state.busy.is_none());
    assert!(h.state().state.eval.report.is_none(), "a cancelled evaluation left a report");
    assert!(h.state().state.notices.iter().any(|n| n.text.contains("evaluation cancelled")));
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

#[test]
fn the_profile_view_times_every_stage_of_each_variant() {
    let mut h = harness_with(fixture_settings(None));
    wait_for(&mut h, "the model", |a| a.state.model.is_some() && a.state.busy.is_none());
    click(&mut h, "Stage times");
    click(&mut h, "Profile");
    assert!(h.state().state.profile.running || h.state().state.profile.report.is_some());
    wait_for(&mut h, "the profile", |a| !a.state.profile.running && a.state.busy.is_none());
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
    let report = h.state().state.profile.report.clone().expect("no profile");
    let variants: Vec<Variant> = report.iter().map(|v| v.variant).collect();
    assert_eq!(variants, Variant::ALL.to_vec());
    let stages = |i: usize| report[i].stages.iter().map(|s| (s.stage, s.count)).collect::<Vec<_>>();
    assert_eq!(
        stages(0),
        vec![
            ("patch embed", 1),
            ("norm1", 2),
            ("qkv", 2),
            ("attention", 2),
            ("proj", 2),
            ("norm2", 2),
            ("fc1", 2),
            ("fc2", 2),
            ("final norm", 1),
            ("head", 1)
        ]
    );
    assert!(stages(1).contains(&("norm1+qkv", 2)) && stages(1).contains(&("norm2+fc1", 2)), "{:?}", stages(1));
    for v in report.iter() {
        assert_eq!(v.runs.len(), h.state().state.settings.profile_runs);
        let sum: f64 = v.stages.iter().map(|s| s.p50_ms).sum();
        assert!(sum > 0.0 && v.forward_p50_ms > 0.0);
    }
    // The check against the forward without the profiler is shown, whatever its verdict.
    for v in report.iter() {
        let line = format!("{}: {:.2} / {:.2} ms", v.variant, v.stage_sum_p50_ms, v.forward_p50_ms);
        h.get_by_label_contains(&line);
    }
}

#[test]
fn evaluate_measures_fp32_and_the_variants_shown() {
    let s = |variant, compare| AppState::new(Settings { variant, compare, ..Settings::default() });
    assert_eq!(s(Variant::Fp32, Some(Variant::Int8)).eval_variants(), vec![Variant::Fp32, Variant::Int8]);
    assert_eq!(s(Variant::Int8, None).eval_variants(), vec![Variant::Fp32, Variant::Int8]);
    assert_eq!(
        s(Variant::Mobile, Some(Variant::Int8)).eval_variants(),
        vec![Variant::Fp32, Variant::Mobile, Variant::Int8]
    );
    let mut exported = s(Variant::Fp32, Some(Variant::Int8));
    exported.model = Some(ModelSummary { stored_variant: Variant::Int8, ..summary("x.safetensors") });
    assert_eq!(exported.eval_variants(), vec![Variant::Int8]);
    assert_eq!(exported.profile_variants(), vec![Variant::Int8]);
}

#[test]
fn evaluate_and_profile_wait_for_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let set = fixture_set(dir.path(), &[1], 1, 24);
    let mut h = harness_with(fixture_settings(None));
    wait_for(&mut h, "the model", |a| a.state.model.is_some() && a.state.busy.is_none());
    // As if a benchmark were running: nothing else starts, and the notice says why.
    h.state_mut().state.bench.running = true;
    evaluate_in_window(&mut h, &set);
    assert!(!h.state().state.eval.running);
    assert!(h.state().state.notices.iter().any(|n| n.text == "a benchmark is running: wait for it or cancel it"));
    click(&mut h, "Stage times");
    click(&mut h, "Profile");
    assert!(!h.state().state.profile.running);
    h.state_mut().state.bench.running = false;
    click(&mut h, "Profile");
    assert!(h.state().state.profile.running || h.state().state.profile.report.is_some());
    wait_for(&mut h, "the profile", |a| !a.state.profile.running && a.state.busy.is_none());
}

fn agreement(kl: f64, top1: f64) -> Option<vit_workbench::quant::metrics::AgreementSummary> {
    Some(vit_workbench::quant::metrics::AgreementSummary {
        images: 1,
        top1_agreement: top1,
        top5_overlap: 1.0,
        min_top5_overlap: 5,
        mean_kl_div: kl,
        max_abs_dlogit: 0.1,
        min_cosine: 1.0,
    })
}

fn layers(names: &[&str]) -> Vec<vit_workbench::model::LayerName> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

#[test]
fn the_pareto_front_is_the_points_nothing_beats() {
    use vit_workbench::app::frontier::pareto_front;
    let xy = [
        [10.0, 0.0],          // 0 fp32: slow and exact
        [4.0, 1e-3],          // 1 int8: fast and lossy
        [5.0, 2e-3],          // 2 slower and lossier than 1
        [6.0, 4e-4],          // 3 a mixed variant in between
        [6.0, 4e-4],          // 4 the same point again: on the front with it
        [12.0, 0.0],          // 5 as exact as fp32, slower
        [f64::NAN, 0.0],      // 6 not measured: never on the front, beats nothing
        [4.0, 1e-3 + 1e-9],   // 7 as fast as 1, a little lossier
        [f64::INFINITY, 0.0], // 8
    ];
    assert_eq!(pareto_front(&xy), vec![1, 3, 4, 0], "sorted by latency");
    assert_eq!(pareto_front(&[]), Vec::<usize>::new());
    assert_eq!(pareto_front(&[[1.0, 1.0]]), vec![0]);
    // Both better than the rest: one point is the whole front.
    assert_eq!(pareto_front(&[[2.0, 2.0], [1.0, 1.0], [3.0, 1.0], [1.0, 3.0]]), vec![1]);
}

#[test]
fn the_frontier_has_one_point_per_variant_and_kept_layers() {
    use vit_workbench::app::frontier::points;
    let ctx = egui::Context::default();
    let mut st = AppState::new(Settings::default());
    let with = |variant, p50, kl: Option<f64>, kept: &[&str]| BenchResult {
        accuracy: kl.and_then(|kl| agreement(kl, 1.0)),
        kept_fp32: layers(kept),
        ..result("m", variant, p50)
    };
    let top3 = ["patch", "blocks.0.fc2", "heads.0"];
    st.apply(
        &ctx,
        Reply::BenchDone(vec![
            with(Variant::Fp32, 30.0, None, &[]),
            with(Variant::Int8, 10.0, Some(1e-3), &[]),
            with(Variant::Int8, 14.0, Some(3e-4), &top3),
            // No accuracy measured for a quantized result (no fp32 reference): no y, no point.
            with(Variant::Mobile, 9.0, None, &[]),
        ]),
    );
    // The user keeps another three layers and measures again: plain int8 is replaced by its
    // newer measurement, the new set is a new point beside the old one.
    st.apply(
        &ctx,
        Reply::BenchDone(vec![
            with(Variant::Int8, 11.0, Some(1e-3), &[]),
            with(Variant::Int8, 13.0, Some(5e-4), &["blocks.1.qkv", "blocks.1.fc1", "blocks.0.proj"]),
        ]),
    );
    st.apply(
        &ctx,
        Reply::BenchDone(
            vec![with(Variant::Fp32, 90.0, None, &[])]
                .into_iter()
                .map(|mut r| {
                    r.model = "other".into();
                    r
                })
                .collect(),
        ),
    );
    let pts = points(&st.bench.latest(), "m");
    let got: Vec<(&str, f64, f64)> = pts.iter().map(|p| (p.label.as_str(), p.p50_ms, p.kl)).collect();
    assert_eq!(
        got,
        vec![("fp32", 30.0, 0.0), ("int8", 11.0, 1e-3), ("int8+fp32[3]", 14.0, 3e-4), ("int8+fp32[3] (2)", 13.0, 5e-4)]
    );
    assert_eq!(pts[2].kept_fp32, layers(&top3));
    // The bar charts show the mixed variants too, by name.
    let names: Vec<String> = st.bench.latest().iter().map(|r| r.label()).collect();
    assert_eq!(names, ["fp32", "int8", "int8+fp32[3]", "int8+fp32[3]", "mobile", "fp32"]);
}

/// The sample photo as the fixture model sees it, through a model made outside the window.
fn logits_outside_the_window(opts: vit_workbench::quant::QuantOptions) -> Vec<f32> {
    use vit_workbench::model::{Capture, Model, ModelFiles};
    let dev = candle_core::Device::Cpu;
    let fp32 = Model::load("timm_vit", &ModelFiles::from_dir(&fixture("timm_vit")).unwrap(), None, &dev).unwrap();
    let int8 = fp32.to_variant(Variant::Int8, opts).unwrap();
    let img = image::open(repo().join("assets/chelsea.png")).unwrap().to_rgb8();
    let x = int8.preprocess(&img).unwrap();
    int8.forward(&x, Capture::NONE).unwrap().logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The fixture model with fp32 beside int8, both analysed, the Sensitivity view open: the
/// harness and int8's plain logits.
fn sensitivity_view() -> (Harness<'static, WorkbenchApp>, Vec<f32>) {
    let settings = Settings {
        model: fixture("timm_vit").display().to_string(),
        compare: Some(Variant::Int8),
        ..Settings::default()
    };
    let mut h = harness_with(settings);
    wait_for(&mut h, "fp32 and int8", |a| {
        a.state.result(Variant::Fp32).is_some() && a.state.result(Variant::Int8).is_some() && a.state.busy.is_none()
    });
    let plain = h.state().state.result(Variant::Int8).unwrap().logits.clone();
    assert_eq!(h.state().state.result(Variant::Int8).unwrap().label, "int8");
    h.get_by_label("Sensitivity").click();
    h.step();
    h.step();
    (h, plain)
}

#[test]
fn ticking_a_layer_in_the_sensitivity_table_rebuilds_int8_with_it_kept() {
    use egui::accesskit::Role;
    let (mut h, plain) = sensitivity_view();
    h.get_by_label("Rank layers").click();
    wait_for(&mut h, "the ranking", |a| a.state.sensitivity.report.is_some() && !a.state.sensitivity.running);
    let ranking = h.state().state.sensitivity.report.clone().unwrap().ranking;
    // patch, 2 blocks x (qkv, proj, fc1, fc2), the head: every layer, ranked 1..=10.
    assert_eq!(ranking.layers.len(), 10);
    assert_eq!(ranking.layers.iter().map(|l| l.rank).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    assert_eq!(ranking.variant, Variant::Int8);
    assert!(h.state().state.quant.keep_fp32.is_empty(), "ranking keeps nothing by itself");

    // Tick the most sensitive layer: int8 is rebuilt in the background with it kept fp32.
    let top = ranking.layers[0].layer;
    h.get_by_role_and_label(Role::CheckBox, &top.to_string()).click();
    wait_for(&mut h, "int8 rebuilt with one layer kept", |a| {
        a.state.result(Variant::Int8).is_some_and(|r| r.label == "int8+fp32[1]") && a.state.busy.is_none()
    });
    let kept: std::collections::BTreeSet<_> = [top].into();
    assert_eq!(h.state().state.quant.keep_fp32, kept);
    let mixed = h.state().state.result(Variant::Int8).unwrap().logits.clone();
    assert_eq!(
        mixed,
        logits_outside_the_window(vit_workbench::quant::QuantOptions { keep_fp32: kept.clone(), ..Default::default() }),
        "the window's int8 is not int8 with {top} kept fp32"
    );
    assert_ne!(mixed, plain);
    // fp32's result is the same as before: only the quantized variants were rebuilt.
    assert_eq!(h.state().state.result(Variant::Fp32).unwrap().label, "fp32");

    h.get_by_label("keep top 3").click();
    wait_for(&mut h, "int8 with the top 3 kept", |a| {
        a.state.result(Variant::Int8).is_some_and(|r| r.label == "int8+fp32[3]") && a.state.busy.is_none()
    });
    assert_eq!(h.state().state.quant.keep_fp32, ranking.top(3));

    h.get_by_label("none").click();
    wait_for(&mut h, "plain int8 again", |a| {
        a.state.result(Variant::Int8).is_some_and(|r| r.label == "int8") && a.state.busy.is_none()
    });
    assert_eq!(h.state().state.result(Variant::Int8).unwrap().logits, plain);
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
}

#[test]
fn a_mixed_variant_measured_beside_its_plain_one_is_its_own_live_series() {
    let ctx = egui::Context::default();
    let mut st = AppState::new(Settings::default());
    st.bench.start("m".into());
    for (label, ms) in [("int8", 10.0), ("int8+fp32[3]", 14.0), ("int8", 11.0), ("int8+fp32[3]", 15.0)] {
        st.apply(&ctx, Reply::BenchSample { variant: Variant::Int8, label: label.into(), ms, run: 1 });
    }
    let series: Vec<(&str, Vec<f64>)> =
        st.bench.live.iter().map(|((_, label), s)| (label.as_str(), s.samples.clone())).collect();
    assert_eq!(series, vec![("int8", vec![10.0, 11.0]), ("int8+fp32[3]", vec![14.0, 15.0])]);
}

#[test]
fn a_ranking_can_be_cancelled_and_the_worker_goes_on() {
    let Some(shared) = shared() else { return };
    let settings = Settings {
        model: timm_tiny(&shared).display().to_string(),
        compare: Some(Variant::Int8),
        ..Settings::default()
    };
    let mut h = harness_with(settings);
    wait_for(&mut h, "fp32 and int8", |a| {
        a.state.result(Variant::Int8).is_some()
            && a.state.overlays.contains_key(&Variant::Int8)
            && a.state.busy.is_none()
    });
    h.get_by_label("Sensitivity").click();
    h.step();
    h.step();
    h.get_by_label("Rank layers").click();
    // 101 forwards of the ViT-Ti: cancelled after the first few.
    wait_for(&mut h, "the ranking to start", |a| a.state.sensitivity.progress.0 >= 2);
    h.get_by_label("Cancel").click();
    wait_for(&mut h, "the cancel", |a| !a.state.sensitivity.running);
    let st = &h.state().state;
    assert!(st.sensitivity.report.is_none(), "a cancelled ranking left a report");
    assert!(st.notices.iter().any(|n| n.text == "sensitivity ranking cancelled"), "{:?}", st.notices);
    assert!(st.sensitivity.progress.0 < st.sensitivity.progress.1, "it ran to the end: {:?}", st.sensitivity.progress);
    assert!(errors(h.state()).is_empty(), "{:?}", errors(h.state()));
    // The worker is fine: a ranking again runs to its end.
    h.get_by_label("Rank layers").click();
    wait_for(&mut h, "the second ranking", |a| a.state.sensitivity.report.is_some() && !a.state.sensitivity.running);
    assert_eq!(h.state().state.sensitivity.report.as_ref().unwrap().ranking.layers.len(), 50);
}

#[test]
fn ranking_on_a_bad_folder_is_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        model: fixture("timm_vit").display().to_string(),
        compare: Some(Variant::Int8),
        ..Settings::default()
    };
    let mut h = harness_with(settings);
    wait_for(&mut h, "int8", |a| a.state.result(Variant::Int8).is_some() && a.state.busy.is_none());
    h.get_by_label("Sensitivity").click();
    h.step();
    h.step();
    let rank_on = |h: &mut Harness<'static, WorkbenchApp>, folder: &Path| {
        h.state_mut().state.settings.sensitivity_folder = folder.display().to_string();
        h.step();
        h.get_by_label("Rank on folder").click();
        h.step();
        assert!(h.state().state.sensitivity.running, "the ranking did not start");
        wait_for(h, "the ranking to end", |a| !a.state.sensitivity.running && a.state.busy.is_none());
        errors(h.state())
    };
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let errs = rank_on(&mut h, &empty);
    let said = format!("cannot rank the layers on {}: no image files in this folder", empty.display());
    assert!(errs.contains(&said), "{errs:?}");
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(repo().join("assets/chelsea.png"), broken.join("a.png")).unwrap();
    std::fs::write(broken.join("b.png"), b"not a png").unwrap();
    let errs = rank_on(&mut h, &broken);
    let bad = broken.join("b.png").display().to_string();
    assert!(errs.iter().any(|e| e.contains(&format!("cannot decode image {bad}")) && !e.contains('\n')), "{errs:?}");
    assert!(h.state().state.sensitivity.report.is_none());
    // A good folder then ranks, on its images.
    std::fs::remove_file(broken.join("b.png")).unwrap();
    std::fs::copy(repo().join("assets/chelsea.png"), broken.join("c.png")).unwrap();
    rank_on(&mut h, &broken);
    let report = h.state().state.sensitivity.report.clone().expect("no ranking on the good folder");
    assert_eq!(report.ranking.images, 2);
    assert!(report.source.contains("(2 images)"), "{}", report.source);
}

#[test]
fn the_exported_csv_names_the_layers_each_row_kept() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("report.csv");
    let mut h = harness(&dir.path().join("no-model"));
    let ctx = h.ctx.clone();
    let top = ["blocks.0.fc2", "heads.0"];
    let st = &mut h.state_mut().state;
    st.apply(
        &ctx,
        Reply::BenchDone(vec![
            result("m", Variant::Int8, 10.0),
            BenchResult { kept_fp32: layers(&top), ..result("m", Variant::Int8, 12.0) },
        ]),
    );
    st.settings.export_path = csv.display().to_string();
    h.step();
    h.get_by_label("Export CSV").click();
    wait_for(&mut h, "the CSV", |a| a.state.last_export.is_some());
    let mut rows = csv::Reader::from_path(&csv).unwrap();
    let at = rows.headers().unwrap().iter().position(|c| c == "kept_fp32").expect("no kept_fp32 column");
    let kept: Vec<String> = rows.records().map(|r| r.unwrap()[at].to_string()).collect();
    assert_eq!(kept, ["", "blocks.0.fc2;heads.0"]);
}

#[test]
fn the_window_names_a_variant_before_it_is_built_as_the_model_will() {
    use vit_workbench::app::state::planned_label;
    use vit_workbench::model::{Model, ModelFiles};
    use vit_workbench::quant::{QuantOptions, Scheme};
    let fp32 =
        Model::load("timm_vit", &ModelFiles::from_dir(&fixture("timm_vit")).unwrap(), None, &candle_core::Device::Cpu)
            .unwrap();
    for scheme in [Scheme::DEFAULT, Scheme::TORCH] {
        for keep in [&[][..], &["patch", "blocks.0.fc2"][..], &["blocks.1.qkv"][..]] {
            let opts =
                QuantOptions { keep_fp32: layers(keep).into_iter().collect(), scheme, ..QuantOptions::default() };
            for v in Variant::ALL {
                let made = fp32.to_variant(v, opts.clone()).unwrap();
                assert_eq!(planned_label(v, &opts), made.label(), "{v} {scheme} {keep:?}");
            }
        }
    }
}

#[test]
fn choosing_the_torch_scheme_rebuilds_int8_as_torch_quantizes_it() {
    use vit_workbench::quant::{QuantOptions, Scheme};
    let (mut h, plain) = sensitivity_view();
    // The scheme box shows the current scheme; its list offers the others.
    h.get_by_label("scheme").click();
    for _ in 0..6 {
        h.step();
    }
    h.get_by_label("torch").click();
    wait_for(&mut h, "int8 rebuilt with the torch scheme", |a| {
        a.state.result(Variant::Int8).is_some_and(|r| r.label == "int8[torch]") && a.state.busy.is_none()
    });
    assert_eq!(h.state().state.quant.scheme, Scheme::TORCH);
    // The same logits as `--scheme torch` outside the window.
    let got = h.state().state.result(Variant::Int8).unwrap().logits.clone();
    assert_eq!(got, logits_outside_the_window(QuantOptions::with_scheme(Scheme::TORCH)));
    assert_ne!(got, plain);
}

/// At the smallest window size the views' tabs are one row along the bottom panel's top edge,
/// each view starts at the panel's left edge (no tab column beside it), and the benchmark's
/// options fit on one line, leaving the rest of the panel to the charts.
#[test]
fn at_800x600_the_view_tabs_are_a_row_and_the_benchmark_options_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings { model: dir.path().join("no-model").display().to_string(), ..Settings::default() };
    let app = WorkbenchApp::new(settings, &GuiOptions { offline: true, ..Default::default() });
    let mut h = Harness::builder()
        .with_size(egui::Vec2::new(800.0, 600.0))
        .build_ui_state(|ui, app: &mut WorkbenchApp| app.show(ui), app);
    let ctx = h.ctx.clone();
    let two_models = ["google/vit-base-patch16-224", "models/vit_tiny_patch16_224.augreg_in21k_ft_in1k"];
    for (m, ms) in two_models.iter().zip([98.0, 9.1]) {
        let rows = Variant::ALL.iter().map(|v| result(m, *v, ms)).collect();
        h.state_mut().state.apply(&ctx, Reply::BenchDone(rows));
    }
    for _ in 0..4 {
        h.step();
    }
    let tabs: Vec<egui::Rect> = BottomView::ALL.iter().map(|v| h.get_by_label(v.title()).rect()).collect();
    for (v, r) in BottomView::ALL.iter().zip(&tabs) {
        assert!(r.left() >= 0.0 && r.right() <= 800.0, "{} tab at {r:?}", v.title());
        assert!((r.center().y - tabs[0].center().y).abs() < 1.0, "{} tab not in the row: {tabs:?}", v.title());
    }
    let run = h.get_by_label("Run benchmark").rect();
    assert!(run.top() >= tabs[0].bottom(), "options {run:?} overlap the tabs {tabs:?}");
    assert!(run.left() <= tabs[0].left() + 1.0, "the view starts right of the tabs: {run:?} vs {tabs:?}");
    let export = h.get_by_label("Export CSV").rect();
    let gathered = h.get_by_label("6 results").rect();
    for r in [export, gathered] {
        assert!((r.center().y - run.center().y).abs() < 1.0, "the options wrapped: {run:?} vs {r:?}");
        assert!(r.right() <= 800.0, "cut at the window's edge: {r:?}");
    }
}

/// The frontier's top-1 axis: each point takes the accuracy the Accuracy view measured for that
/// very variant (scheme and kept layers included), and the front then maximises it.
#[test]
fn the_frontier_can_show_top1_on_the_evaluated_folder() {
    use vit_workbench::app::frontier::{FrontierY, eval_top1, front_for, points};
    use vit_workbench::eval::EvalReport;
    let top3 = ["patch", "blocks.0.fc2", "heads.0"];
    let other3 = ["blocks.1.qkv", "blocks.1.fc1", "blocks.0.proj"];
    let with = |variant, p50, kl: f64, kept: &[&str]| BenchResult {
        accuracy: agreement(kl, 1.0),
        kept_fp32: layers(kept),
        ..result("m", variant, p50)
    };
    let results = [
        with(Variant::Fp32, 30.0, 0.0, &[]),
        with(Variant::Int8, 10.0, 1e-3, &[]),
        with(Variant::Int8, 14.0, 3e-4, &top3),
        with(Variant::Int8, 13.0, 5e-4, &other3),
        with(Variant::Mobile, 9.0, 1.1e-3, &[]),
    ];
    let latest: Vec<&BenchResult> = results.iter().collect();
    let pts = points(&latest, "m");
    let labels: Vec<&str> = pts.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["fp32", "int8", "int8+fp32[3]", "int8+fp32[3] (2)", "mobile"]);
    let acc = |variant, label: &str, kept: &[&str], correct: usize| {
        fixed_accuracy(variant, label, &layers(kept), 10, correct)
    };
    // The window evaluated fp32, int8 keeping the top 3, and mobile.
    let report = EvalReport {
        model: "m".into(),
        source: "photos".into(),
        k: 5,
        classes: 3,
        variants: vec![
            acc(Variant::Fp32, "fp32", &[], 8),
            acc(Variant::Int8, "int8+fp32[3]", &top3, 8),
            acc(Variant::Mobile, "mobile", &[], 7),
        ],
        predictions: Vec::new(),
    };
    // Plain int8 and the other 3 layers kept were not evaluated: no top-1 for them.
    assert_eq!(eval_top1(&pts, &report, "m"), [Some(0.8), None, Some(0.8), None, Some(0.7)]);
    assert_eq!(eval_top1(&pts, &report, "another model"), [None; 5]);
    // fp32 (30 ms, 80%), int8+fp32[3] (14 ms, 80%), mobile (9 ms, 70%): as accurate as fp32
    // and faster, the mixed int8 beats it; mobile is the fastest. By KL the same x would make
    // the smallest y the best.
    let xy = [[30.0, 80.0], [14.0, 80.0], [9.0, 70.0]];
    assert_eq!(front_for(&xy, FrontierY::Top1), [2, 1]);
    assert_eq!(front_for(&xy, FrontierY::MeanKl), [2]);
}
