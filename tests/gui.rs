//! The window, driven the way a user drives it (egui_kittest: simulated drops, clicks and
//! keys), with the real ViT-Ti behind it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use vit_workbench::app::state::{Level, Settings};
use vit_workbench::app::worker::Command;
use vit_workbench::app::{GuiOptions, WorkbenchApp};
use vit_workbench::quant::Variant;

#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn harness(model: &Path) -> Harness<'static, WorkbenchApp> {
    let settings = Settings { model: model.display().to_string(), compare: None, ..Settings::default() };
    let app = WorkbenchApp::new(settings, &GuiOptions { offline: true, ..Default::default() });
    Harness::builder()
        .with_size(egui::Vec2::new(1280.0, 820.0))
        .build_ui_state(|ui, app: &mut WorkbenchApp| app.show(ui), app)
}

/// Steps the UI until `done` holds (the worker answers in the background), or fails.
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
    h.step();
}

fn shown_image(app: &WorkbenchApp) -> String {
    app.state.image.as_ref().map(|i| i.name.clone()).unwrap_or_default()
}

fn drop_file(h: &mut Harness<'static, WorkbenchApp>, path: &Path) {
    h.input_mut().dropped_files.push(Arc::new(Dropped(path.to_path_buf())));
    h.step();
}

#[test]
fn drop_classify_switch_variant_toggle_overlay_export() {
    let Some(shared) = shared() else { return };
    let mut h = harness(&timm_tiny(&shared));
    // The bundled sample is classified at start.
    wait_for(&mut h, "the sample's top-5", |a| a.state.result(Variant::Fp32).is_some());
    assert!(shown_image(h.state()).contains("sample"));
    h.get_by_label("Egyptian cat");

    // Drop a real photo: its top-5 appears.
    drop_file(&mut h, &shared.join("images/coffee.png"));
    wait_for(&mut h, "coffee's top-5", |a| {
        shown_image(a).contains("coffee.png") && a.state.result(Variant::Fp32).is_some()
    });
    h.get_by_label("espresso");
    let fp32_top = h.state().state.result(Variant::Fp32).unwrap().top5.clone();
    assert_eq!(fp32_top[0].label, "espresso");
    wait_for(&mut h, "the fp32 overlay", |a| a.state.overlays.contains_key(&Variant::Fp32));

    // Switch to int8 with one click: new results, for int8.
    h.get_by_label("2 int8").click();
    h.step();
    assert_eq!(h.state().state.settings.variant, Variant::Int8);
    wait_for(&mut h, "int8 results", |a| a.state.result(Variant::Int8).is_some());
    let int8_top = &h.state().state.result(Variant::Int8).unwrap().top5;
    assert_eq!(int8_top[0].label, "espresso");
    assert_ne!(int8_top[0].probability, fp32_top[0].probability, "int8 shows fp32's numbers");
    // And back with the keyboard.
    h.key_press(egui::Key::Num3);
    h.step();
    assert_eq!(h.state().state.settings.variant, Variant::Mobile);
    wait_for(&mut h, "mobile results", |a| a.state.result(Variant::Mobile).is_some());

    // Toggle the overlay off and on: the map is recomputed when it comes back with other settings.
    h.get_by_label("Attention overlay").click();
    h.step();
    assert!(!h.state().state.settings.overlay.enabled);
    h.get_by_label("Attention overlay").click();
    h.step();
    assert!(h.state().state.settings.overlay.enabled);
    wait_for(&mut h, "the mobile overlay", |a| a.state.overlays.contains_key(&Variant::Mobile));

    // Compare view: fp32 vs int8 side by side with agreement numbers.
    h.get_by_label("1 fp32").click();
    h.step();
    h.get_by_label("Compare with").click();
    wait_for(&mut h, "the compare results", |a| {
        a.state.settings.compare == Some(Variant::Int8)
            && a.state.result(Variant::Fp32).is_some()
            && a.state.result(Variant::Int8).is_some()
    });
    h.get_by_label("top-1 agreement");
    h.get_by_label("top-5 overlap");

    // Benchmark in the background (frames keep coming), then export the CSV.
    {
        let s = &mut h.state_mut().state.settings;
        s.bench_warmup = 1;
        s.bench_runs = 3;
        s.bench_seconds = 0.0;
    }
    h.get_by_label("Run benchmark").click();
    h.step();
    assert!(h.state().state.bench.running);
    let mut slowest_frame = Duration::ZERO;
    let start = Instant::now();
    while h.state().state.bench.running {
        assert!(start.elapsed() < Duration::from_secs(120), "benchmark did not finish: {:?}", h.state().state.notices);
        let t = Instant::now();
        h.step();
        slowest_frame = slowest_frame.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "slowest UI frame while the benchmark ran: {:.2} ms (logic only, no rendering)",
        slowest_frame.as_secs_f64() * 1000.0
    );
    let results = &h.state().state.bench.results;
    assert_eq!(
        results.iter().map(|r| r.variant).collect::<Vec<_>>(),
        vec![Variant::Fp32, Variant::Int8, Variant::Mobile]
    );
    assert!(h.state().state.bench.live.values().all(|s| s.len() >= 3), "live chart samples missing");

    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("gui-report.csv");
    h.state_mut().state.settings.export_path = csv_path.display().to_string();
    h.get_by_label("Export CSV").click();
    wait_for(&mut h, "the export", |a| a.state.last_export.is_some());
    let mut rd = csv::Reader::from_path(&csv_path).unwrap();
    assert_eq!(rd.headers().unwrap().iter().collect::<Vec<_>>(), vit_workbench::report::COLUMNS);
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r[11].parse::<f64>().unwrap() > 0.0), "p50_ms must be positive");
}

#[test]
fn a_corrupt_dropped_file_shows_an_error_and_keeps_the_image() {
    let Some(shared) = shared() else { return };
    let mut h = harness(&timm_tiny(&shared));
    drop_file(&mut h, &shared.join("images/chelsea.png"));
    wait_for(&mut h, "chelsea's top-5", |a| {
        shown_image(a).contains("chelsea.png") && a.state.result(Variant::Fp32).is_some()
    });
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
    drop_file(&mut h, &bad);
    wait_for(&mut h, "an error notice", |a| a.state.notices.iter().any(|n| n.level == Level::Error));
    let notice = h.state().state.notices.iter().find(|n| n.level == Level::Error).unwrap().text.clone();
    assert!(notice.contains("broken.jpg"), "{notice}");
    assert!(shown_image(h.state()).contains("chelsea.png"), "the previous image must stay");
    assert!(h.state().state.result(Variant::Fp32).is_some(), "the previous results must stay");
    h.get_by_label_contains("broken.jpg");
    // Notices can be dismissed.
    h.get_by_label("Dismiss").click();
    h.step();
    assert!(h.state().state.notices.is_empty());
}

#[test]
fn a_worker_panic_is_reported_and_the_worker_recovers() {
    let Some(shared) = shared() else { return };
    let mut h = harness(&timm_tiny(&shared));
    wait_for(&mut h, "the first result", |a| a.state.result(Variant::Fp32).is_some());
    h.state().send(Command::Crash);
    wait_for(&mut h, "the crash notice", |a| a.state.notices.iter().any(|n| n.text.contains("worker restarted")));
    // The worker lost its model; loading again works.
    h.get_by_label("Load").click();
    drop_file(&mut h, &shared.join("images/coffee.png"));
    wait_for(&mut h, "results after the restart", |a| {
        shown_image(a).contains("coffee.png")
            && a.state.result(Variant::Fp32).is_some_and(|r| r.top5[0].label == "espresso")
    });
}

#[test]
fn a_missing_model_is_a_notice_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(&dir.path().join("no-such-model"));
    wait_for(&mut h, "the error notice", |a| a.state.notices.iter().any(|n| n.level == Level::Error));
    let text = &h.state().state.notices[0].text;
    assert!(text.contains("no-such-model"), "{text}");
    // The sample image is still shown.
    assert!(shown_image(h.state()).contains("sample"));
}

/// eframe storage in memory, to check what `save` persists.
#[derive(Default)]
struct MemoryStorage(std::collections::HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }
    fn flush(&mut self) {}
}

#[test]
fn settings_persist_across_restarts() {
    use eframe::App;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings { model: dir.path().display().to_string(), ..Settings::default() };
    settings.variant = Variant::Mobile;
    settings.compare = Some(Variant::Fp32);
    settings.overlay.discard_ratio = 0.5;
    settings.overlay.cmap = vit_workbench::explain::Colormap::Viridis;
    settings.export_path = "/tmp/somewhere.csv".into();
    let mut app = WorkbenchApp::new(settings.clone(), &GuiOptions { offline: true, ..Default::default() });
    let mut storage = MemoryStorage::default();
    app.save(&mut storage);
    let restored: Settings = eframe::get_value(&storage, "vit-workbench-settings").expect("settings were not saved");
    assert_eq!(restored, settings);
}

#[test]
fn a_cancelled_benchmark_leaves_consistent_state() {
    let Some(shared) = shared() else { return };
    let mut h = harness(&timm_tiny(&shared));
    wait_for(&mut h, "the first result", |a| a.state.result(Variant::Fp32).is_some());
    {
        let s = &mut h.state_mut().state.settings;
        s.bench_warmup = 0;
        s.bench_runs = 100_000;
        s.bench_seconds = 600.0;
    }
    h.get_by_label("Run benchmark").click();
    wait_for(&mut h, "the first timed runs", |a| a.state.bench.live.values().map(|s| s.len()).sum::<usize>() >= 3);
    h.get_by_label("Cancel").click();
    wait_for(&mut h, "the cancellation", |a| !a.state.bench.running);
    let st = &h.state().state;
    assert!(st.notices.iter().any(|n| n.text.contains("cancelled")), "{:?}", st.notices);
    assert!(st.notices.iter().all(|n| n.level != Level::Error), "{:?}", st.notices);
    assert!(st.bench.results.is_empty(), "a cancelled run must not add results");
    // The worker is free again: a short benchmark completes and the classifier still answers.
    {
        let s = &mut h.state_mut().state.settings;
        s.bench_runs = 2;
        s.bench_seconds = 0.0;
    }
    h.get_by_label("Run benchmark").click();
    h.step();
    wait_for(&mut h, "a benchmark after the cancel", |a| !a.state.bench.running && !a.state.bench.results.is_empty());
    assert_eq!(h.state().state.bench.results.len(), 3);
}

#[test]
fn a_cancelled_download_leaves_consistent_state() {
    use vit_workbench::hub::Hub;
    let files: std::collections::HashMap<String, Vec<u8>> = ["config.json", "model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(fixture("timm_vit").join(f)).unwrap()))
        .collect();
    // A slow hub: ~100 kB of weights at 4 kB per 100 ms.
    let server = common::hub_server::serve("acme/slow-vit", files, None, 100);
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        offline: false,
        endpoint: Some(server.url.clone()),
        revision: None,
        token: None,
    };
    let settings = Settings { model: "acme/slow-vit".into(), compare: None, ..Settings::default() };
    let app = WorkbenchApp::new(settings, &GuiOptions { hub: Some(hub.clone()), ..Default::default() });
    let mut h = Harness::builder()
        .with_size(egui::Vec2::new(1280.0, 820.0))
        .build_ui_state(|ui, app: &mut WorkbenchApp| app.show(ui), app);
    wait_for(&mut h, "download progress", |a| {
        a.state.download.as_ref().is_some_and(|d| d.0 == "model.safetensors" && d.1 > 0)
    });
    h.get_by_label("Cancel").click();
    wait_for(&mut h, "the cancellation", |a| {
        a.state.busy.is_none() && a.state.notices.iter().any(|n| n.text.contains("cancelled"))
    });
    assert!(h.state().state.model.is_none(), "a cancelled download must not leave a half-loaded model");
    assert!(
        hub.cached("acme/slow-vit", "model.safetensors").is_none(),
        "a partial download is in the cache under its real name"
    );
    // The worker is free: a local model loads and classifies.
    let Some(shared) = shared() else { return };
    h.state_mut().state.model_input = timm_tiny(&shared).display().to_string();
    h.get_by_label("Load").click();
    wait_for(&mut h, "results after the cancel", |a| {
        a.state.model.is_some() && a.state.result(Variant::Fp32).is_some()
    });
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_remembered_in_a_cpu_build_falls_back_and_the_toggle_says_why() {
    let settings =
        Settings { model: fixture("hf_vit").display().to_string(), device: "cuda".into(), ..Settings::default() };
    let app = WorkbenchApp::new(settings, &GuiOptions { offline: true, ..Default::default() });
    let mut h = Harness::builder()
        .with_size(egui::Vec2::new(1280.0, 820.0))
        .build_ui_state(|ui, app: &mut WorkbenchApp| app.show(ui), app);
    wait_for(&mut h, "the model", |a| a.state.model.is_some());
    let s = &h.state().state;
    assert_eq!(s.settings.device, "cpu");
    let notice = s.notices.iter().find(|n| n.text.contains("CUDA is not available")).expect("no fallback notice");
    assert!(
        notice.text.contains("built without CUDA support") && notice.text.contains("using the CPU"),
        "{}",
        notice.text
    );
    assert_eq!(s.model.as_ref().unwrap().device, "cpu");
    h.get_by_label_contains("device: CPU");
    h.get_by_label_contains("int8 kernel:");
    // The CUDA button is there but disabled; hovering it says why.
    use egui_kittest::kittest::NodeT;
    let cuda = h.get_by_label("CUDA");
    assert!(cuda.accesskit_node().is_disabled());
    cuda.hover();
    for _ in 0..60 {
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.get_by_label_contains("CUDA is not available: this binary was built without CUDA support");
}
