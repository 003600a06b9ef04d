//! The workbench window (eframe/egui).
//!
//! Layers: [`state`] holds what the app knows (settings that persist, results the worker sent);
//! one struct per panel draws part of it and reports what the user asked for as [`Action`]s;
//! [`WorkbenchApp::show`] turns actions into [`worker`] commands. The UI thread never decodes an
//! image, loads a model or runs inference — the worker does, and wakes the UI when it has news —
//! so a frame only draws.

mod chart_panel;
mod controls;
mod image_panel;
mod results_panel;
pub mod state;
mod status_bar;
pub mod worker;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use egui::{Key, Modifiers, Ui};

use crate::bench::BenchConfig;
use crate::hub::Hub;
use crate::quant::Variant;
use state::{AppState, Level, Settings};
use worker::{Command, ImageSource, WorkerHandle};

const SAMPLE_IMAGE: &[u8] = include_bytes!("../../assets/chelsea.png");
const SETTINGS_KEY: &str = "vit-workbench-settings";

/// What a panel asks for.
#[derive(Clone, Debug)]
pub enum Action {
    OpenDialog,
    OpenPath(PathBuf),
    OpenBytes {
        name: String,
        bytes: Arc<Vec<u8>>,
    },
    LoadModel(String),
    PickModelFolder,
    SetVariant(Variant),
    SetCompare(Option<Variant>),
    SetDevice(String),
    RecomputeOverlay,
    /// Explain this class (clicked in a top-5 list) with attribution.
    ExplainClass(usize),
    Benchmark,
    Cancel,
    ChooseExportPath,
    ExportCsv,
    Dismiss(u64),
}

/// Command-line choices for the window.
#[derive(Clone, Debug, Default)]
pub struct GuiOptions {
    pub image: Option<PathBuf>,
    pub model: Option<String>,
    pub variant: Option<Variant>,
    /// The compare view's second variant (`Some(None)`: no compare view).
    pub compare: Option<Option<Variant>>,
    /// Save a PNG of the window once the first result is on screen, then exit.
    pub screenshot: Option<PathBuf>,
    /// Run a benchmark as soon as the first result is in (with `screenshot`: shoot after it).
    pub benchmark: bool,
    pub offline: bool,
    /// The hub to use instead of the one the environment describes (tests).
    pub hub: Option<Hub>,
}

/// How a `--screenshot` run ended.
pub type ScreenshotOutcome = Arc<Mutex<Option<Result<PathBuf, String>>>>;

struct Screenshot {
    path: PathBuf,
    ready_frames: u32,
    requested: bool,
    captured: Arc<Mutex<Option<Arc<egui::ColorImage>>>>,
    outcome: ScreenshotOutcome,
}

pub struct WorkbenchApp {
    pub state: AppState,
    worker: WorkerHandle,
    /// The UI's context, for the worker to wake it; known from the first frame on.
    wake_ctx: Arc<std::sync::OnceLock<egui::Context>>,
    controls: controls::ControlsPanel,
    image: image_panel::ImagePanel,
    results: results_panel::ResultsPanel,
    chart: chart_panel::ChartPanel,
    status: status_bar::StatusBar,
    notices: status_bar::Notices,
    screenshot: Option<Screenshot>,
    /// A benchmark asked for on the command line, not started yet.
    pending_benchmark: bool,
}

impl WorkbenchApp {
    /// A new app: starts the worker and asks it for the first image and model.
    pub fn new(mut settings: Settings, opts: &GuiOptions) -> WorkbenchApp {
        if let Some(m) = &opts.model {
            settings.model = m.clone();
        }
        if let Some(c) = opts.compare {
            settings.compare = c;
        }
        if let Some(v) = opts.variant {
            settings.variant = v;
        }
        if settings.compare == Some(settings.variant) {
            settings.compare = None;
        }
        let wake_ctx: Arc<std::sync::OnceLock<egui::Context>> = Default::default();
        let wake = wake_ctx.clone();
        let hub = opts.hub.clone().unwrap_or_else(|| Hub::from_env(opts.offline));
        let worker = worker::spawn(hub, move || {
            if let Some(ctx) = wake.get() {
                ctx.request_repaint();
            }
        });
        worker.send(Command::OpenImage(match &opts.image {
            Some(p) => ImageSource::Path(p.clone()),
            None => ImageSource::Bytes { name: "chelsea.png (sample)".into(), bytes: Arc::new(SAMPLE_IMAGE.to_vec()) },
        }));
        worker.send(Command::SetModel { spec: settings.model.clone(), device: settings.device.clone() });
        WorkbenchApp {
            state: AppState::new(settings),
            worker,
            wake_ctx,
            controls: controls::ControlsPanel,
            image: image_panel::ImagePanel,
            results: results_panel::ResultsPanel,
            chart: chart_panel::ChartPanel,
            status: status_bar::StatusBar,
            notices: status_bar::Notices,
            pending_benchmark: opts.benchmark,
            screenshot: opts.screenshot.clone().map(|path| Screenshot {
                path,
                ready_frames: 0,
                requested: false,
                captured: Default::default(),
                outcome: Default::default(),
            }),
        }
    }

    /// Where a `--screenshot` run reports how it ended.
    pub fn screenshot_outcome(&self) -> Option<ScreenshotOutcome> {
        self.screenshot.as_ref().map(|s| s.outcome.clone())
    }

    /// Sends a command to the worker (tests use this to exercise the recovery path).
    pub fn send(&self, cmd: Command) {
        self.worker.send(cmd);
    }

    fn analyze(&self) {
        if self.state.image.is_some() && self.state.model.is_some() {
            let o = &self.state.settings.overlay;
            self.worker.send(Command::Analyze {
                variants: self.state.settings.active_variants(),
                map: o.map(),
                cmap: o.cmap,
                opacity: o.opacity,
            });
        }
    }

    /// One frame.
    pub fn show(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        self.wake_ctx.get_or_init(|| ctx.clone());
        let mut new_inputs = false;
        while let Ok(reply) = self.worker.rx.try_recv() {
            new_inputs |= self.state.apply(&ctx, reply);
        }
        if new_inputs {
            self.analyze();
        }
        let mut actions = Vec::new();
        self.input(&ctx, &mut actions);
        let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());

        egui::Panel::top("controls").show(ui, |ui| {
            ui.add_space(4.0);
            self.controls.ui(ui, &mut self.state, &mut actions);
            self.notices.ui(ui, &self.state, &mut actions);
            ui.add_space(2.0);
        });
        egui::Panel::bottom("status").show(ui, |ui| self.status.ui(ui, &self.state, &mut actions));
        egui::Panel::bottom("chart")
            .resizable(true)
            .default_size(230.0)
            .show(ui, |ui| self.chart.ui(ui, &mut self.state, &mut actions));
        egui::Panel::right("results").resizable(true).default_size(360.0).size_range(260.0..=560.0).show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| self.results.ui(ui, &self.state, &mut actions));
        });
        egui::CentralPanel::default().show(ui, |ui| self.image.ui(ui, &mut self.state, hovering, &mut actions));

        if self.pending_benchmark && self.state.result(self.state.settings.variant).is_some() {
            self.pending_benchmark = false;
            actions.push(Action::Benchmark);
        }
        for a in actions {
            self.act(a);
        }
        self.screenshot_step(&ctx);
        if self.state.busy.is_some() && !self.state.bench.running {
            // Spinners move; a running benchmark wakes the UI itself, sparingly.
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }

    fn input(&mut self, ctx: &egui::Context, actions: &mut Vec<Action>) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        if let Some(f) = dropped.first() {
            let path = f.path().to_path_buf();
            if path.is_file() {
                actions.push(Action::OpenPath(path));
            } else {
                match f.bytes() {
                    Ok(bytes) => {
                        actions.push(Action::OpenBytes { name: path.display().to_string(), bytes: Arc::new(bytes) })
                    }
                    Err(e) => {
                        self.state.notify(Level::Error, format!("cannot read the dropped file {}: {e}", path.display()))
                    }
                }
            }
        }
        if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::O)) {
            actions.push(Action::OpenDialog);
        }
        if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::E)) {
            actions.push(Action::ExportCsv);
        }
        if !ctx.egui_wants_keyboard_input() {
            for (key, v) in [(Key::Num1, Variant::Fp32), (Key::Num2, Variant::Int8), (Key::Num3, Variant::Mobile)] {
                if ctx.input_mut(|i| i.consume_key(Modifiers::NONE, key)) {
                    actions.push(Action::SetVariant(v));
                }
            }
        }
    }

    fn act(&mut self, action: Action) {
        let s = &mut self.state;
        match action {
            Action::OpenDialog => match file_dialog() {
                Some(dialog) => {
                    if let Some(p) = dialog
                        .add_filter("images", &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"])
                        .pick_file()
                    {
                        self.act(Action::OpenPath(p));
                    }
                }
                None => s.notify(Level::Info, NO_DIALOG),
            },
            Action::OpenPath(p) => self.worker.send(Command::OpenImage(ImageSource::Path(p))),
            Action::OpenBytes { name, bytes } => {
                self.worker.send(Command::OpenImage(ImageSource::Bytes { name, bytes }))
            }
            Action::LoadModel(spec) if !spec.is_empty() => {
                s.model_input = spec.clone();
                self.worker.send(Command::SetModel { spec, device: s.settings.device.clone() });
            }
            Action::LoadModel(_) => s.notify(Level::Info, "name a model first: a hub id, a folder or an exported file"),
            Action::PickModelFolder => match file_dialog() {
                Some(dialog) => {
                    if let Some(p) = dialog.pick_folder() {
                        self.act(Action::LoadModel(p.display().to_string()));
                    }
                }
                None => s.notify(
                    Level::Info,
                    "no folder dialog is available here: type or paste the model folder into the field and press Load",
                ),
            },
            Action::SetVariant(v) => {
                let exported = s.model.as_ref().is_some_and(|m| m.stored_variant != Variant::Fp32);
                if exported && s.model.as_ref().is_some_and(|m| m.stored_variant != v) {
                    s.notify(Level::Info, "this exported file holds one variant; load the fp32 model to switch");
                    return;
                }
                if s.settings.variant != v {
                    s.settings.variant = v;
                    if s.settings.compare == Some(v) {
                        s.settings.compare = Some(if v == Variant::Fp32 { Variant::Int8 } else { Variant::Fp32 });
                    }
                    self.analyze();
                }
            }
            Action::SetCompare(c) => {
                s.settings.compare = c;
                self.analyze();
            }
            Action::SetDevice(d) => {
                s.settings.device = d.clone();
                self.worker.send(Command::SetModel { spec: s.settings.model.clone(), device: d });
            }
            Action::RecomputeOverlay => {
                let o = &s.settings.overlay;
                self.worker.send(Command::Overlay {
                    variants: s.settings.active_variants(),
                    map: o.map(),
                    cmap: o.cmap,
                    opacity: o.opacity,
                });
            }
            Action::ExplainClass(class) => {
                let o = &mut s.settings.overlay;
                o.class = Some(class);
                o.mode = state::OverlayMode::Attribution;
                o.enabled = true;
                self.act(Action::RecomputeOverlay);
            }
            Action::Benchmark => {
                s.bench.running = true;
                s.bench.live.clear();
                s.bench.phase = "starting".into();
                let variants = match s.model.as_ref().map(|m| m.stored_variant) {
                    Some(Variant::Fp32) | None => Variant::ALL.to_vec(),
                    Some(v) => vec![v],
                };
                let cfg = BenchConfig {
                    warmup: s.settings.bench_warmup,
                    min_runs: s.settings.bench_runs.max(1),
                    min_seconds: s.settings.bench_seconds.max(0.0),
                    ..BenchConfig::default()
                };
                self.worker.send(Command::Benchmark { variants, cfg });
            }
            Action::Cancel => self.worker.cancel(),
            Action::ChooseExportPath => match file_dialog() {
                Some(dialog) => {
                    if let Some(p) =
                        dialog.add_filter("CSV", &["csv"]).set_file_name("vit-workbench-report.csv").save_file()
                    {
                        s.settings.export_path = p.display().to_string();
                    }
                }
                None => s.notify(Level::Info, "no save dialog is available here: type the CSV path into the field"),
            },
            Action::ExportCsv => {
                if s.bench.results.is_empty() {
                    s.notify(Level::Info, "nothing to export yet: run a benchmark first");
                } else {
                    self.worker.send(Command::ExportCsv {
                        path: PathBuf::from(s.settings.export_path.trim()),
                        results: s.bench.results.clone(),
                    });
                }
            }
            Action::Dismiss(id) => s.dismiss(id),
        }
    }

    /// `--screenshot`: once the first result and its overlay have been drawn, capture the
    /// window, save it, and close.
    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let Some(shot) = self.screenshot.as_mut() else { return };
        if let Some(img) = shot.captured.lock().unwrap().take() {
            let result = save_png(&shot.path, &img).map(|_| shot.path.clone()).map_err(|e| format!("{e:#}"));
            *shot.outcome.lock().unwrap() = Some(result);
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if shot.requested {
            ctx.request_repaint();
            return;
        }
        if let Some(err) = self.state.notices.iter().find(|n| n.level == Level::Error) {
            *shot.outcome.lock().unwrap() = Some(Err(err.text.clone()));
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        let primary = self.state.settings.variant;
        let ready = self.state.result(primary).is_some()
            && (!self.state.settings.overlay.enabled || self.state.overlays.contains_key(&primary))
            && !self.pending_benchmark
            && !self.state.bench.running;
        if ready {
            shot.ready_frames += 1;
            // One more frame so what is captured is what was drawn with the result.
            if shot.ready_frames >= 3 {
                shot.requested = true;
                let slot = shot.captured.clone();
                let wake = ctx.clone();
                ctx.request_screenshot(move |img| {
                    *slot.lock().unwrap() = Some(img);
                    wake.request_repaint();
                });
            }
            // Draw the next frames now; until ready, the worker wakes the UI when it has news.
            ctx.request_repaint();
        }
    }
}

const NO_DIALOG: &str = "no file dialog is available here (no desktop portal): drag an image onto the window, or paste its path into the field and press Open path";

/// A native file dialog, or `None` where none can appear (rfd's xdg portal needs a session bus;
/// without one it would silently return nothing, which looks like a cancel).
fn file_dialog() -> Option<rfd::FileDialog> {
    if cfg!(target_os = "linux") && std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        return None;
    }
    Some(rfd::FileDialog::new())
}

fn save_png(path: &std::path::Path, img: &egui::ColorImage) -> Result<()> {
    let [w, h] = img.size;
    let raw: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
    let rgba =
        image::RgbaImage::from_raw(w as u32, h as u32, raw).ok_or_else(|| anyhow::anyhow!("bad screenshot buffer"))?;
    let mut bytes = Vec::new();
    rgba.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::fsutil::write_atomic(path, &bytes)
}

impl eframe::App for WorkbenchApp {
    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.screenshot.is_none() {
            eframe::set_value(storage, SETTINGS_KEY, &self.state.settings);
        }
    }
}

/// Opens the window; returns when it is closed.
pub fn run(opts: GuiOptions) -> Result<()> {
    let screenshot_mode = opts.screenshot.is_some();
    let mut viewport = egui::ViewportBuilder::default().with_title("vit-workbench").with_min_inner_size([900.0, 600.0]);
    viewport = viewport.with_inner_size([1280.0, 820.0]);
    let native = eframe::NativeOptions {
        viewport,
        // A screenshot run is deterministic: no restored settings or window geometry.
        persist_window: !screenshot_mode,
        ..Default::default()
    };
    let outcome: ScreenshotOutcome = Default::default();
    let outcome2 = outcome.clone();
    eframe::run_native(
        "vit-workbench",
        native,
        Box::new(move |cc| {
            let settings = match (screenshot_mode, cc.storage) {
                (false, Some(storage)) => eframe::get_value(storage, SETTINGS_KEY).unwrap_or_default(),
                _ => Settings::default(),
            };
            let mut app = WorkbenchApp::new(settings, &opts);
            if let Some(shot) = app.screenshot.as_mut() {
                shot.outcome = outcome2;
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))?;
    if screenshot_mode {
        return match outcome.lock().unwrap().clone() {
            Some(Ok(p)) => {
                println!("screenshot saved to {}", p.display());
                Ok(())
            }
            Some(Err(e)) => anyhow::bail!("no screenshot: {e}"),
            None => anyhow::bail!("no screenshot: the window closed before the first result"),
        };
    }
    Ok(())
}
