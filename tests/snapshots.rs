//! Pictures of the window in its main states, rendered by wgpu (a software Vulkan driver,
//! lavapipe, in CI) and compared with the committed PNGs under `tests/snapshots/`.
//!
//! After a deliberate change to how the window looks, regenerate them and look at every
//! changed picture before committing it:
//!
//! ```sh
//! UPDATE_SNAPSHOTS=1 cargo test --release --test snapshots
//! ```
//!
//! What differs between machines is pinned so the pictures do not: the status bar's thread
//! count and kernel path, the one-shot latencies, and the model field's text (the checkout's
//! absolute path). Benchmark numbers are fixed ones fed to the window, not measured.

mod common;

use std::time::{Duration, Instant};

use common::*;
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions, SnapshotResults};
use vit_workbench::app::state::{BottomView, Environment, Level, SensitivityReport, Settings};
use vit_workbench::app::worker::Reply;
use vit_workbench::app::{GuiOptions, WorkbenchApp};
use vit_workbench::bench::{BenchResult, Stats};
use vit_workbench::model::LayerName;
use vit_workbench::profile::{StageSummary, VariantProfile};
use vit_workbench::quant::Variant;
use vit_workbench::quant::metrics::AgreementSummary;
use vit_workbench::quant::sensitivity::{Cost, LayerSensitivity, Sensitivity};

const SIZES: [(f32, f32); 2] = [(1280.0, 820.0), (800.0, 600.0)];

fn harness(settings: Settings, size: (f32, f32)) -> Harness<'static, WorkbenchApp> {
    let app = WorkbenchApp::new(settings, &GuiOptions { offline: true, ..Default::default() });
    Harness::builder()
        .with_size(egui::Vec2::new(size.0, size.1))
        .wgpu()
        .build_ui_state(|ui, app: &mut WorkbenchApp| app.show(ui), app)
}

fn wait_for(h: &mut Harness<'static, WorkbenchApp>, what: &str, done: impl Fn(&WorkbenchApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}; notices: {:?}",
            h.state().state.notices
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pins what differs between machines and runs, then lets the layout settle.
fn settle(h: &mut Harness<'static, WorkbenchApp>, model_field: &str) {
    let st = &mut h.state_mut().state;
    st.environment = Environment { summary: "threads: 2 · int8 kernel: (pinned)".into(), detail: String::new() };
    st.model_input = model_field.into();
    for (i, r) in st.results.values_mut().enumerate() {
        r.ms = 20.0 + 10.0 * i as f64;
    }
    for _ in 0..4 {
        h.step();
    }
}

/// Renders and compares one picture; the results of a test's pictures are gathered in `all`.
fn snap(h: &mut Harness<'static, WorkbenchApp>, name: &str, all: &mut SnapshotResults) {
    // Rendering differs by a few anti-aliased pixels between drivers; a moved widget is hundreds.
    h.snapshot_options(name, &SnapshotOptions::new().threshold(1.0).max_failed_pixels(40));
    all.extend_harness(h);
}

/// The window at `size` comparing fp32 with int8 on the sample photo, both results and
/// overlays shown and the worker idle.
fn compared_with_int8(shared: &std::path::Path, size: (f32, f32)) -> Harness<'static, WorkbenchApp> {
    let mut h = harness(tiny_settings(shared, Some(Variant::Int8)), size);
    wait_for(&mut h, "both results and overlays", |a| {
        [Variant::Fp32, Variant::Int8].iter().all(|v| a.state.result(*v).is_some() && a.state.overlays.contains_key(v))
            && a.state.busy.is_none()
    });
    h
}

fn tiny_settings(shared: &std::path::Path, compare: Option<Variant>) -> Settings {
    Settings { model: timm_tiny(shared).display().to_string(), compare, ..Settings::default() }
}

const MODEL_FIELD: &str = "../shared/models/vit_tiny_patch16_224.augreg_in21k_ft_in1k";

#[test]
fn first_result() {
    let Some(shared) = shared() else { return };
    let mut all = SnapshotResults::new();
    for size in SIZES {
        let mut h = harness(tiny_settings(&shared, None), size);
        wait_for(&mut h, "the first result and its overlay", |a| {
            a.state.result(Variant::Fp32).is_some()
                && a.state.overlays.contains_key(&Variant::Fp32)
                && a.state.busy.is_none()
        });
        settle(&mut h, MODEL_FIELD);
        snap(&mut h, &format!("first_result_{}x{}", size.0, size.1), &mut all);
    }
    all.unwrap();
}

#[test]
fn compare_with_overlay() {
    let Some(shared) = shared() else { return };
    let mut all = SnapshotResults::new();
    for size in SIZES {
        let mut h = compared_with_int8(&shared, size);
        settle(&mut h, MODEL_FIELD);
        snap(&mut h, &format!("compare_overlay_{}x{}", size.0, size.1), &mut all);
    }
    all.unwrap();
}

/// A finished benchmark of two models, with fixed numbers (measured ones change every run).
#[test]
fn benchmark_done() {
    let Some(shared) = shared() else { return };
    let mut all = SnapshotResults::new();
    for size in SIZES {
        let mut h = harness(tiny_settings(&shared, Some(Variant::Int8)), size);
        wait_for(&mut h, "the first results", |a| {
            a.state.result(Variant::Int8).is_some()
                && a.state.overlays.contains_key(&Variant::Int8)
                && a.state.busy.is_none()
        });
        let ctx = h.ctx.clone();
        let st = &mut h.state_mut().state;
        st.bench.start("google/vit-base-patch16-224".into());
        st.apply(&ctx, Reply::BenchDone(fixed_results("google/vit-base-patch16-224", [98.0, 29.5, 29.2], 346.0)));
        st.bench.start(timm_tiny(&shared).display().to_string());
        for run in 0..40 {
            for (i, v) in Variant::ALL.iter().enumerate() {
                // Slow first runs, then a plateau with some spread: what real runs look like.
                let base = [9.0, 4.8, 4.7][i];
                let ms = base * (1.0 + 0.6 * (-(run as f64) / 4.0).exp()) + 0.4 * ((run * 7 + i * 3) % 5) as f64;
                st.apply(&ctx, Reply::BenchSample { variant: *v, label: v.name().into(), ms, run });
            }
        }
        st.apply(
            &ctx,
            Reply::BenchDone(fixed_results(&timm_tiny(&shared).display().to_string(), [9.1, 4.8, 4.8], 22.9)),
        );
        settle(&mut h, MODEL_FIELD);
        snap(&mut h, &format!("benchmark_done_{}x{}", size.0, size.1), &mut all);
    }
    all.unwrap();
}

#[test]
fn an_error_notice() {
    let mut all = SnapshotResults::new();
    for size in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let settings =
            Settings { model: dir.path().join("no-such-model").display().to_string(), ..Settings::default() };
        let mut h = harness(settings, size);
        wait_for(&mut h, "the error and the sample", |a| {
            a.state.notices.iter().any(|n| n.level == Level::Error) && a.state.image.is_some() && a.state.busy.is_none()
        });
        // The notice names the path given; pin it (a temporary folder's name changes every run).
        for n in &mut h.state_mut().state.notices {
            n.text = n.text.replace(&dir.path().display().to_string(), "/home/me/models");
        }
        settle(&mut h, "/home/me/models/no-such-model");
        snap(&mut h, &format!("error_notice_{}x{}", size.0, size.1), &mut all);
    }
    all.unwrap();
}

/// A ranking of the ViT-Ti's 50 layers with fixed numbers (a measured one differs in its last
/// digits between CPU paths), in a plausible order: KL falling by rank, a few flips at the top.
fn fixed_ranking() -> Sensitivity {
    let names = LayerName::all(12, 1);
    let n = names.len();
    let layers = (0..n)
        .map(|i| {
            let layer = names[(i * 17 + 49) % n];
            let kl = 4.2e-4 * 0.86f64.powi(i as i32);
            LayerSensitivity {
                layer,
                alone: Cost { kl, flips: usize::from(i < 2), max_abs_dlogit: (0.31 * 0.93f64.powi(i as i32)) as f32 },
                all_but: Cost { kl: 1.2e-3 - 0.6 * kl, flips: 0, max_abs_dlogit: 0.55 },
                rank: i + 1,
            }
        })
        .collect();
    Sensitivity {
        variant: Variant::Int8,
        images: 1,
        all_quantized: Cost { kl: 1.2e-3, flips: 0, max_abs_dlogit: 0.58 },
        layers,
    }
}

/// The ranking, with its top 3 kept fp32 (int8 really rebuilt with them), then a frontier of
/// fixed benchmark numbers: fp32, int8, mobile, and mixed forms keeping 3 and 6 layers.
#[test]
fn sensitivity_and_frontier() {
    let Some(shared) = shared() else { return };
    let mut all = SnapshotResults::new();
    for size in SIZES {
        let mut h = compared_with_int8(&shared, size);
        let ctx = h.ctx.clone();
        let report =
            SensitivityReport { ranking: std::sync::Arc::new(fixed_ranking()), source: "chelsea.png (sample)".into() };
        h.state_mut().state.apply(&ctx, Reply::SensitivityDone(report));
        h.get_by_label("Sensitivity").click();
        h.step();
        h.step();
        h.get_by_label("keep top 3").click();
        wait_for(&mut h, "int8 rebuilt with 3 layers kept", |a| {
            a.state.result(Variant::Int8).is_some_and(|r| r.label == "int8+fp32[3]")
                && a.state.overlays.contains_key(&Variant::Int8)
                && a.state.busy.is_none()
        });
        settle(&mut h, MODEL_FIELD);
        snap(&mut h, &format!("sensitivity_{}x{}", size.0, size.1), &mut all);

        let model = timm_tiny(&shared).display().to_string();
        let st = &mut h.state_mut().state;
        st.apply(&ctx, Reply::BenchDone(frontier_results(&model)));
        h.get_by_label("Frontier").click();
        settle(&mut h, MODEL_FIELD);
        snap(&mut h, &format!("frontier_{}x{}", size.0, size.1), &mut all);

        // An evaluation of fp32 and the variants with the top 3 kept: top-1 becomes a y axis.
        let report = fixed_evaluation(&model);
        h.state_mut().state.apply(&ctx, Reply::EvalDone { report: std::sync::Arc::new(report), thumbnails: vec![] });
        h.step();
        h.get_by_label("top-1 on me/photos").click();
        settle(&mut h, MODEL_FIELD);
        snap(&mut h, &format!("frontier_top1_{}x{}", size.0, size.1), &mut all);
    }
    all.unwrap();
}

/// Top-1 on a labelled folder of 15 images for fp32 and the int8 and mobile keeping the top 3
/// layers fp32 (what the Accuracy view measures with those layers ticked), fixed numbers.
fn fixed_evaluation(model: &str) -> vit_workbench::eval::EvalReport {
    let top3: Vec<LayerName> = fixed_ranking().layers.iter().take(3).map(|l| l.layer).collect();
    let acc = |variant: Variant, label: &str, kept: &[LayerName], correct: usize| {
        fixed_accuracy(variant, label, kept, 15, correct)
    };
    vit_workbench::eval::EvalReport {
        model: model.into(),
        source: "/home/me/photos".into(),
        k: 5,
        classes: 3,
        variants: vec![
            acc(Variant::Fp32, "fp32", &[], 12),
            acc(Variant::Int8, "int8+fp32[3]", &top3, 12),
            acc(Variant::Mobile, "mobile+fp32[3]", &top3, 11),
        ],
        predictions: Vec::new(),
    }
}

/// fp32, int8 and mobile, and int8/mobile keeping 3 and int8 keeping 6 layers fp32: p50 ms, MB, KL.
fn frontier_results(model: &str) -> Vec<BenchResult> {
    let top: Vec<LayerName> = fixed_ranking().layers.iter().map(|l| l.layer).collect();
    let rows: [(Variant, usize, f64, f64, f64); 6] = [
        (Variant::Fp32, 0, 9.1, 22.9, 0.0),
        (Variant::Int8, 0, 4.8, 6.05, 1.2e-3),
        (Variant::Int8, 3, 5.6, 7.9, 4.1e-4),
        (Variant::Int8, 6, 6.4, 9.6, 2.2e-4),
        (Variant::Mobile, 0, 4.7, 6.1, 1.3e-3),
        (Variant::Mobile, 3, 5.9, 8.0, 4.4e-4),
    ];
    let base = fixed_results(model, [9.1, 4.8, 4.7], 22.9);
    rows.iter()
        .map(|&(variant, kept, p50, mb, kl)| {
            let mut r = base.iter().find(|r| r.variant == variant).unwrap().clone();
            r.kept_fp32 = top[..kept].to_vec();
            r.stats.p50 = p50;
            r.file_bytes = (mb * 1e6) as u64;
            r.accuracy = (variant != Variant::Fp32).then_some(AgreementSummary {
                images: 1,
                top1_agreement: 1.0,
                top5_overlap: 1.0,
                min_top5_overlap: 5,
                mean_kl_div: kl,
                max_abs_dlogit: 0.5,
                min_cosine: 0.999,
            });
            r
        })
        .collect()
}

fn fixed_results(model: &str, p50: [f64; 3], fp32_mb: f64) -> Vec<BenchResult> {
    let sizes = [fp32_mb, fp32_mb * 0.264, fp32_mb * 0.268];
    Variant::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| BenchResult {
            model: model.into(),
            variant: *v,
            batch: 1,
            warmup: 5,
            load_ms: 100.0,
            first_ms: 2.0 * p50[i],
            stats: Stats {
                n: 40,
                min: p50[i] * 0.95,
                mean: p50[i],
                std: 0.3,
                p50: p50[i],
                p90: p50[i] * 1.08,
                p99: p50[i] * 1.2,
                max: p50[i] * 1.3,
            },
            measured_seconds: 2.0,
            throughput_ips: 1000.0 / p50[i],
            file_bytes: (sizes[i] * 1e6) as u64,
            weight_bytes: (sizes[i] * 1e6) as usize,
            peak_rss_bytes: 500_000_000,
            accuracy: None,
            int8_kernel: None,
            kept_fp32: Vec::new(),
            scheme: String::new(),
            samples_ms: vec![p50[i]; 40],
            env: vit_workbench::bench::Environment {
                cpu: "pinned".into(),
                simd: "pinned".into(),
                threads: 2,
                device: "cpu".into(),
                os: "linux".into(),
                app_version: "0".into(),
                git_rev: "0".into(),
                candle_version: "0".into(),
                timestamp: "2026-11-29T00:00:00Z".into(),
                gpu: String::new(),
            },
        })
        .collect()
}

/// A labelled set made from the shared photos, the three ways of naming a class mixed: each
/// photo as it is, scaled down, mirrored, centre-cropped and in grey.
fn labelled_photos(shared: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("photos");
    for (photo, class) in [("chelsea.png", "n02124075"), ("coffee.png", "espresso"), ("rocket.jpg", "657")] {
        let img = image::open(shared.join("images").join(photo)).unwrap().to_rgb8();
        let stem = photo.split('.').next().unwrap();
        let class_dir = root.join(class);
        std::fs::create_dir_all(&class_dir).unwrap();
        let (w, h) = img.dimensions();
        let crop = image::imageops::crop_imm(&img, w * 15 / 100, h * 15 / 100, w * 7 / 10, h * 7 / 10).to_image();
        let grey = image::DynamicImage::ImageLuma8(image::imageops::grayscale(&img)).to_rgb8();
        let versions = [
            ("", img.clone()),
            ("-small", image::imageops::resize(&img, w * 6 / 10, h * 6 / 10, image::imageops::FilterType::Triangle)),
            ("-mirrored", image::imageops::flip_horizontal(&img)),
            ("-crop", crop),
            ("-grey", grey),
        ];
        for (suffix, v) in versions {
            v.save(class_dir.join(format!("{stem}{suffix}.png"))).unwrap();
        }
    }
    root
}

/// "Evaluate folder…" on the labelled photos with the HF ViT-Ti, then its one flipped image
/// (the grey coffee: fp32 says espresso, int8 cup) clicked open in the compare view.
#[test]
fn accuracy_view() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let set = labelled_photos(&shared, dir.path());
    let mut all = SnapshotResults::new();
    for size in SIZES {
        let settings = Settings {
            model: hf_tiny(&shared).display().to_string(),
            compare: Some(Variant::Int8),
            view: BottomView::Accuracy,
            eval_path: set.display().to_string(),
            ..Settings::default()
        };
        let mut h = harness(settings, size);
        wait_for(&mut h, "the first results", |a| {
            a.state.result(Variant::Int8).is_some()
                && a.state.overlays.contains_key(&Variant::Int8)
                && a.state.busy.is_none()
        });
        h.get_by_label("Evaluate").click();
        wait_for(&mut h, "the evaluation", |a| a.state.eval.report.is_some() && a.state.busy.is_none());
        let report = h.state().state.eval.report.clone().unwrap();
        assert_eq!(report.predictions.len(), 15);
        let flips = &report.variants[1].flips;
        assert!(!flips.is_empty(), "the set is chosen to have a flipped image; notices: {:?}", h.state().state.notices);
        let name = std::path::Path::new(&flips[0].file).file_name().unwrap().to_string_lossy().into_owned();
        h.get_by_label(&format!("open {name} (int8)")).click();
        wait_for(&mut h, "the flipped image compared", |a| {
            a.state.image.as_ref().is_some_and(|i| i.name.ends_with(&name))
                && [Variant::Fp32, Variant::Int8]
                    .iter()
                    .all(|v| a.state.result(*v).is_some() && a.state.overlays.contains_key(v))
                && a.state.busy.is_none()
        });
        // The temporary folder's name changes every run: pin it where it is shown.
        let st = &mut h.state_mut().state;
        let tmp = dir.path().display().to_string();
        st.settings.eval_path = set.display().to_string().replace(&tmp, "/home/me");
        if let Some(img) = st.image.as_mut() {
            img.name = img.name.replace(&tmp, "/home/me");
        }
        let mut pinned = (*report).clone();
        pinned.source = pinned.source.replace(&tmp, "/home/me");
        st.eval.report = Some(std::sync::Arc::new(pinned));
        settle(&mut h, "../shared/models/vit-tiny-patch16-224");
        snap(&mut h, &format!("accuracy_{}x{}", size.0, size.1), &mut all);
    }
    all.unwrap();
}

/// The "where the time goes" view with fixed stage times (measured ones change every run).
#[test]
fn profile_view() {
    let Some(shared) = shared() else { return };
    let mut all = SnapshotResults::new();
    for size in SIZES {
        let settings = Settings { view: BottomView::Profile, ..tiny_settings(&shared, None) };
        let mut h = harness(settings, size);
        wait_for(&mut h, "the first result", |a| {
            a.state.result(Variant::Fp32).is_some()
                && a.state.overlays.contains_key(&Variant::Fp32)
                && a.state.busy.is_none()
        });
        let ctx = h.ctx.clone();
        h.state_mut().state.apply(
            &ctx,
            Reply::Profiled {
                model: timm_tiny(&shared).display().to_string(),
                threads: 2,
                report: std::sync::Arc::new(fixed_profile()),
            },
        );
        settle(&mut h, MODEL_FIELD);
        snap(&mut h, &format!("profile_{}x{}", size.0, size.1), &mut all);
    }
    all.unwrap();
}

/// ViT-Ti's stages as `profile` reports them (ms, summed over the 12 blocks), fixed.
fn fixed_profile() -> Vec<VariantProfile> {
    const M: u64 = 1_000_000;
    let fp32: [(&'static str, usize, f64, u64); 10] = [
        ("patch embed", 1, 0.80, 29 * M),
        ("norm1", 12, 0.54, 0),
        ("qkv", 12, 10.88, 261 * M),
        ("attention", 12, 13.13, 179 * M),
        ("proj", 12, 1.96, 87 * M),
        ("norm2", 12, 0.45, 0),
        ("fc1", 12, 16.29, 349 * M),
        ("fc2", 12, 20.28, 349 * M),
        ("final norm", 1, 0.05, 0),
        ("head", 1, 0.05, M / 5),
    ];
    let int8: [(&'static str, usize, f64, u64); 8] = [
        ("patch embed", 1, 0.40, 29 * M),
        ("norm1+qkv", 12, 2.72, 261 * M),
        ("attention", 12, 9.08, 179 * M),
        ("proj", 12, 0.64, 87 * M),
        ("norm2+fc1", 12, 8.97, 349 * M),
        ("fc2", 12, 2.09, 349 * M),
        ("final norm", 1, 0.04, 0),
        ("head", 1, 0.02, M / 5),
    ];
    let mobile: Vec<_> = int8.iter().map(|&(s, c, ms, macs)| (s, c, ms * 1.02, macs)).collect();
    let variant = |variant: Variant, stages: &[(&'static str, usize, f64, u64)], forward_p50: f64| {
        let sum: f64 = stages.iter().map(|s| s.2).sum();
        let st = |p50: f64| Stats {
            n: 20,
            min: p50 * 0.97,
            mean: p50,
            std: 0.2,
            p50,
            p90: p50 * 1.05,
            p99: p50 * 1.1,
            max: p50 * 1.12,
        };
        VariantProfile {
            variant,
            fused: variant != Variant::Fp32,
            stages: stages
                .iter()
                .map(|&(stage, count, p50_ms, macs)| StageSummary { stage, count, p50_ms, share: p50_ms / sum, macs })
                .collect(),
            stage_sum_p50_ms: sum,
            forward: st(forward_p50),
            profiled: st(sum * 1.03),
            forward_p50_ms: forward_p50,
            runs: vec![Vec::new(); 20],
        }
    };
    vec![
        variant(Variant::Fp32, &fp32, 63.6),
        variant(Variant::Int8, &int8, 25.1),
        variant(Variant::Mobile, &mobile, 24.9),
    ]
}
