//! The workbench window (eframe/egui).
//!
//! Layers: [`state`] holds what the app knows (settings that persist, results the worker sent);
//! one struct per panel draws part of it and reports what the user asked for as [`Action`]s;
//! [`WorkbenchApp::show`] turns actions into [`worker`] commands. The UI thread never decodes an
//! image, loads a model or runs inference — the worker does, and wakes the UI when it has news —
//! so a frame only draws.

mod chart_panel;
mod controls;
mod eval_panel;
pub mod frontier;
mod frontier_panel;
mod image_panel;
mod profile_panel;
mod results_panel;
mod sensitivity_panel;
pub mod state;
mod status_bar;
pub mod worker;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use egui::{Key, Modifiers, Ui};

use crate::hub::Hub;
use crate::model::LayerName;
use crate::quant::Variant;
use state::{AppState, BottomView, Level, OverlaySettings, Settings, Topic};
use worker::{Command, ImageSource, WorkerHandle};

const SAMPLE_IMAGE: &[u8] = include_bytes!("../../assets/chelsea.png");
const SETTINGS_KEY: &str = "vit-workbench-settings";

/// What a panel asks for. Panels only read [`AppState`]; every change to it, and every
/// command to the worker, goes through [`WorkbenchApp::act`].
#[derive(Clone, Debug)]
pub enum Action {
    OpenDialog,
    OpenPath(PathBuf),
    OpenBytes {
        name: String,
        bytes: Arc<Vec<u8>>,
    },
    /// The text of the image-path field changed.
    EditImagePath(String),
    /// Open an image that decoded only in part ("Open anyway" on its error).
    OpenTruncated(ImageSource),
    /// The text of the model field changed.
    EditModel(String),
    LoadModel(String),
    PickModelFolder,
    SetVariant(Variant),
    SetCompare(Option<Variant>),
    SetDevice(String),
    /// New overlay settings (the app decides whether the maps must be recomputed).
    SetOverlay(OverlaySettings),
    /// Explain this class (clicked in a top-5 list) with attribution.
    ExplainClass(usize),
    SetBenchOptions {
        warmup: usize,
        runs: usize,
        seconds: f64,
    },
    SetExportPath(String),
    Benchmark,
    Cancel,
    ChooseExportPath,
    ExportCsv,
    Dismiss(u64),
    /// Esc: the newest notice goes.
    DismissLatest,
    /// Show this view in the bottom panel.
    ShowView(BottomView),
    /// The text of the labelled-set field changed.
    EditEvalPath(String),
    /// "Evaluate folder…": choose a folder of class folders, then evaluate it.
    PickEvalFolder,
    /// "List (CSV)…": choose a `file,label` list, then evaluate it.
    PickEvalList,
    /// Evaluate the labelled folder or list at this path.
    Evaluate(String),
    /// Open a flipped image in the main view, comparing fp32 with `variant`.
    OpenFlip {
        file: PathBuf,
        variant: Variant,
    },
    SetProfileRuns(usize),
    /// Time every stage of a forward of each variant.
    Profile,
    /// Keep these layers fp32 in int8 and mobile (the rest quantized); they are rebuilt.
    SetKeepFp32(BTreeSet<LayerName>),
    /// Quantize int8 and mobile with this scheme; they are rebuilt.
    SetScheme(crate::quant::Scheme),
    /// Rank the layers by sensitivity on the current image, or on the images of a folder.
    RankLayers {
        folder: Option<PathBuf>,
    },
    /// The text of the sensitivity view's folder field changed.
    EditSensitivityFolder(String),
    /// What the frontier's y axis shows.
    SetFrontierY(frontier::FrontierY),
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
    /// Rank the layers as soon as the first result is in, then keep this many of the most
    /// sensitive fp32 (with `screenshot`: shoot once int8 and mobile are rebuilt with them).
    pub sensitivity: Option<usize>,
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
    eval: eval_panel::EvalPanel,
    profile: profile_panel::ProfilePanel,
    sensitivity: sensitivity_panel::SensitivityPanel,
    frontier: frontier_panel::FrontierPanel,
    status: status_bar::StatusBar,
    notices: status_bar::Notices,
    screenshot: Option<Screenshot>,
    /// A benchmark asked for on the command line, not started yet.
    pending_benchmark: bool,
    /// A ranking asked for on the command line: not started yet (`rank`), and the layers to
    /// keep once it is in (`keep`).
    pending_rank: bool,
    pending_keep_top: Option<usize>,
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
        settings.normalize();
        // A GPU remembered from another run or build may not be here now: start on the CPU and say why.
        let cuda = crate::device::cuda_status().clone();
        let cuda_fallback = (settings.device != "cpu").then(|| cuda.unavailable_reason()).flatten();
        if cuda_fallback.is_some() {
            settings.device = "cpu".into();
        }
        let wake_ctx: Arc<std::sync::OnceLock<egui::Context>> = Default::default();
        let wake = wake_ctx.clone();
        let hub = opts.hub.clone().unwrap_or_else(|| Hub::from_env(opts.offline));
        let worker = worker::spawn(hub, move || {
            if let Some(ctx) = wake.get() {
                ctx.request_repaint();
            }
        });
        // The image named on the command line, else the one open when the window last closed
        // (if it is still there), else the bundled sample.
        let first_image = match opts.image.clone().or_else(|| settings.last_image.clone().filter(|p| p.is_file())) {
            Some(p) => ImageSource::Path(p),
            None => ImageSource::Bytes { name: "chelsea.png (sample)".into(), bytes: Arc::new(SAMPLE_IMAGE.to_vec()) },
        };
        let mut state = AppState::with_cuda(settings, cuda);
        if let Some(why) = cuda_fallback {
            state.notify(Level::Info, Topic::Model, format!("CUDA is not available ({why}); using the CPU"));
        }
        state.decoding = Some(first_image.name());
        worker.send(Command::OpenImage(first_image));
        worker.send(Command::SetModel { spec: state.settings.model.clone(), device: state.settings.device.clone() });
        WorkbenchApp {
            state,
            worker,
            wake_ctx,
            controls: controls::ControlsPanel,
            image: image_panel::ImagePanel,
            results: results_panel::ResultsPanel,
            chart: chart_panel::ChartPanel,
            eval: eval_panel::EvalPanel,
            profile: profile_panel::ProfilePanel,
            sensitivity: sensitivity_panel::SensitivityPanel,
            frontier: frontier_panel::FrontierPanel,
            status: status_bar::StatusBar,
            notices: status_bar::Notices,
            pending_benchmark: opts.benchmark,
            pending_rank: opts.sensitivity.is_some(),
            pending_keep_top: opts.sensitivity,
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
                variants: self.state.active_variants(),
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
        let now = ctx.input(|i| i.time);
        if let Some(next) = self.state.expire_notices(now) {
            ctx.request_repaint_after(std::time::Duration::from_secs_f64(next));
        }
        let mut actions = Vec::new();
        self.input(&ctx, &mut actions);
        let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());

        let top = egui::Panel::top("controls").show(ui, |ui| {
            ui.add_space(4.0);
            self.controls.ui(ui, &self.state, &mut actions);
            ui.add_space(2.0);
        });
        egui::Panel::bottom("status").show(ui, |ui| self.status.ui(ui, &self.state, &mut actions));
        // Side panels start in proportion to the window, so 800x600 still leaves room for the image.
        let screen = ctx.content_rect().size();
        // The views' tabs are a row above them, so every view has the panel's full width (a
        // side column took 112 px of the 800 a small window has); the row's height is added.
        let bottom_h = (screen.y * 0.3).clamp(170.0, 260.0) + VIEW_TABS_HEIGHT;
        egui::Panel::bottom("chart").exact_size(bottom_h).show(ui, |ui| {
            view_tabs(ui, &self.state, &mut actions);
            match self.state.settings.view {
                BottomView::Benchmark => self.chart.ui(ui, &self.state, &mut actions),
                BottomView::Accuracy => self.eval.ui(ui, &self.state, &mut actions),
                BottomView::Profile => self.profile.ui(ui, &self.state, &mut actions),
                BottomView::Sensitivity => self.sensitivity.ui(ui, &self.state, &mut actions),
                BottomView::Frontier => self.frontier.ui(ui, &self.state, &mut actions),
            }
        });
        egui::Panel::right("results")
            .resizable(true)
            .default_size((screen.x * 0.28).clamp(260.0, 360.0))
            .size_range(240.0..=(screen.x * 0.45).max(240.0))
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.results.ui(ui, &self.state, &mut actions));
            });
        egui::CentralPanel::default().show(ui, |ui| self.image.ui(ui, &self.state, hovering, &mut actions));
        // Notices float over the window below the top bar: they never push the layout.
        self.notices.ui(&ctx, top.response.rect.bottom(), &self.state, &mut actions);

        // With --sensitivity too, the benchmark waits for the layers to be kept, measures the
        // mixed variants beside the plain ones, and the frontier is shown.
        let ranking_first = self.pending_rank || self.pending_keep_top.is_some() || self.state.sensitivity.running;
        if self.pending_benchmark && self.state.result(self.state.primary()).is_some() && !ranking_first {
            self.pending_benchmark = false;
            actions.push(Action::Benchmark);
            if self.state.sensitivity.report.is_some() {
                actions.push(Action::ShowView(BottomView::Frontier));
            }
        }
        if self.pending_rank && self.state.result(self.state.primary()).is_some() {
            self.pending_rank = false;
            actions.push(Action::RankLayers { folder: None });
        }
        // Once the ranking is in (a failed one leaves an error, which ends a screenshot run).
        if !self.pending_rank
            && !self.state.sensitivity.running
            && let (Some(k), Some(r)) = (self.pending_keep_top, &self.state.sensitivity.report)
        {
            self.pending_keep_top = None;
            actions.push(Action::SetKeepFp32(r.ranking.top(k)));
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
                    Err(e) => self.state.notify(
                        Level::Error,
                        Topic::Image,
                        format!("cannot read the dropped file {}: {e}", path.display()),
                    ),
                }
            }
        }
        if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::O)) {
            actions.push(Action::OpenDialog);
        }
        if ctx.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::E)) {
            actions.push(Action::ExportCsv);
        }
        // Esc closes an open menu first (egui does that); otherwise it dismisses the newest notice.
        if !self.state.notices.is_empty()
            && !egui::Popup::is_any_open(ctx)
            && ctx.input_mut(|i| i.consume_key(Modifiers::NONE, Key::Escape))
        {
            actions.push(Action::DismissLatest);
        }
        if !ctx.egui_wants_keyboard_input()
            && let Some(v) = ctx.input(|i| last_variant_key(&i.events))
        {
            actions.push(Action::SetVariant(v));
        }
    }

    /// Applies one action: the only place the app's state changes in response to the user.
    /// Changes how the window quantizes (`change` says whether anything changed); int8 and mobile
    /// are then rebuilt in the background. An exported file holds its variant as it was made.
    fn requantize(&mut self, what: &str, change: impl FnOnce(&mut crate::quant::QuantOptions) -> bool) -> bool {
        let s = &mut self.state;
        if let Some(held) = s.exported_variant() {
            let text = format!("this exported file holds {held} as it was made; load the fp32 model to {what}");
            s.notify(Level::Info, Topic::Other, text);
            return false;
        }
        if !change(&mut s.quant) {
            return false;
        }
        // The worker drops the variants made otherwise; the next analysis rebuilds them.
        self.worker.send(Command::SetQuant(s.quant.clone()));
        self.analyze();
        true
    }

    fn act(&mut self, action: Action) {
        let s = &mut self.state;
        match action {
            Action::OpenDialog => match file_dialog() {
                Some(dialog) => {
                    if let Some(p) = dialog.add_filter("images", &crate::preprocess::IMAGE_EXTENSIONS).pick_file() {
                        self.act(Action::OpenPath(p));
                    }
                }
                None => s.notify(Level::Info, Topic::Other, NO_DIALOG),
            },
            Action::OpenPath(p) => {
                s.decoding = Some(p.display().to_string());
                self.worker.send(Command::OpenImage(ImageSource::Path(p)));
            }
            Action::OpenBytes { name, bytes } => {
                s.decoding = Some(name.clone());
                self.worker.send(Command::OpenImage(ImageSource::Bytes { name, bytes }))
            }
            Action::OpenTruncated(source) => {
                s.decoding = Some(source.name());
                self.worker.send(Command::OpenTruncatedImage(source));
            }
            Action::EditImagePath(text) => s.path_input = text,
            Action::EditModel(text) => s.model_input = text,
            Action::LoadModel(spec) if !spec.trim().is_empty() => {
                let spec = spec.trim().to_string();
                s.model_input = spec.clone();
                self.worker.send(Command::SetModel { spec, device: s.settings.device.clone() });
            }
            Action::LoadModel(_) => {
                s.notify(Level::Info, Topic::Model, "name a model first: a hub id, a folder or an exported file")
            }
            Action::PickModelFolder => match file_dialog() {
                Some(dialog) => {
                    if let Some(p) = dialog.pick_folder() {
                        self.act(Action::LoadModel(p.display().to_string()));
                    }
                }
                None => s.notify(
                    Level::Info,
                    Topic::Other,
                    "no folder dialog is available here: type or paste the model folder into the field and press Load",
                ),
            },
            Action::SetVariant(v) => {
                if let Some(held) = s.exported_variant().filter(|held| *held != v) {
                    s.notify(
                        Level::Info,
                        Topic::Other,
                        format!("this exported file holds only {held}; load the fp32 model to switch to {v}"),
                    );
                    return;
                }
                if s.settings.variant != v {
                    s.settings.variant = v;
                    s.settings.normalize();
                    self.analyze();
                }
            }
            Action::SetCompare(c) => {
                s.settings.compare = c;
                s.settings.normalize();
                self.analyze();
            }
            Action::SetDevice(d) => {
                if d != "cpu"
                    && let Some(why) = s.cuda.unavailable_reason()
                {
                    s.notify(Level::Error, Topic::Model, format!("CUDA is not available: {why}"));
                    return;
                }
                s.settings.device = d.clone();
                self.worker.send(Command::SetModel { spec: s.settings.model.clone(), device: d });
            }
            Action::SetOverlay(new) => {
                let old = std::mem::replace(&mut s.settings.overlay, new);
                let o = &s.settings.overlay;
                // The on/off switch is applied when drawing; the rest needs new layers (the worker
                // keeps the last map, so opacity and colormap changes only redraw it).
                let restyled = o.cmap != old.cmap || o.opacity != old.opacity;
                if o.enabled && (o.map() != old.map() || restyled || !old.enabled) {
                    self.worker.send(Command::Overlay {
                        variants: s.active_variants(),
                        map: o.map(),
                        cmap: o.cmap,
                        opacity: o.opacity,
                    });
                }
            }
            Action::ExplainClass(class) => {
                let mut o = s.settings.overlay.clone();
                o.class = Some(class);
                o.mode = state::OverlayMode::Attribution;
                o.enabled = true;
                self.act(Action::SetOverlay(o));
            }
            Action::SetBenchOptions { warmup, runs, seconds } => {
                s.settings.bench_warmup = warmup;
                s.settings.bench_runs = runs;
                s.settings.bench_seconds = seconds;
            }
            Action::SetExportPath(p) => s.settings.export_path = p,
            Action::Benchmark => {
                s.bench.start(s.settings.model.clone());
                let variants = match s.exported_variant() {
                    Some(v) => vec![v],
                    None => Variant::ALL.to_vec(),
                };
                self.worker.send(Command::Benchmark { variants, cfg: s.settings.bench_config() });
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
                None => s.notify(
                    Level::Info,
                    Topic::Other,
                    "no save dialog is available here: type the CSV path into the field",
                ),
            },
            Action::ExportCsv => {
                if s.bench.results.is_empty() {
                    s.notify(Level::Info, Topic::Export, "nothing to export yet: run a benchmark first");
                } else {
                    self.worker.send(Command::ExportCsv {
                        path: PathBuf::from(s.settings.export_path.trim()),
                        results: s.bench.results.clone(),
                    });
                }
            }
            Action::ShowView(v) => s.settings.view = v,
            Action::EditEvalPath(text) => s.settings.eval_path = text,
            Action::PickEvalFolder => match file_dialog() {
                Some(dialog) => {
                    if let Some(p) = dialog.set_title("A folder with one sub-folder per class").pick_folder() {
                        self.act(Action::Evaluate(p.display().to_string()));
                    }
                }
                None => s.notify(Level::Info, Topic::Other, NO_EVAL_DIALOG),
            },
            Action::PickEvalList => match file_dialog() {
                Some(dialog) => {
                    if let Some(p) = dialog.add_filter("file,label list", &["csv"]).pick_file() {
                        self.act(Action::Evaluate(p.display().to_string()));
                    }
                }
                None => s.notify(Level::Info, Topic::Other, NO_EVAL_DIALOG),
            },
            Action::Evaluate(path) => {
                let path = path.trim().to_string();
                if path.is_empty() {
                    s.notify(Level::Info, Topic::Evaluation, "name a labelled folder or a file,label CSV first");
                } else if s.may_start_long_job(Topic::Evaluation) {
                    s.settings.eval_path = path.clone();
                    s.settings.view = BottomView::Accuracy;
                    s.eval.running = true;
                    s.eval.progress = (0, 0);
                    s.eval.source = path.clone();
                    self.worker.send(Command::Evaluate { source: PathBuf::from(path), variants: s.eval_variants() });
                }
            }
            Action::OpenFlip { file, variant } => {
                // fp32 beside the variant that changed its mind: the compare view shows both.
                s.settings.variant = Variant::Fp32;
                s.settings.compare = Some(variant);
                s.settings.normalize();
                self.act(Action::OpenPath(file));
            }
            Action::SetProfileRuns(n) => {
                s.settings.profile_runs = n;
                s.settings.normalize();
            }
            Action::Profile => {
                if s.may_start_long_job(Topic::Profile) {
                    s.settings.view = BottomView::Profile;
                    s.profile.running = true;
                    s.profile.progress = (0, s.settings.profile_runs);
                    self.worker
                        .send(Command::Profile { variants: s.profile_variants(), runs: s.settings.profile_runs });
                }
            }
            Action::SetKeepFp32(keep) => {
                self.requantize("choose layers kept fp32", |q| {
                    let changed = q.keep_fp32 != keep;
                    q.keep_fp32 = keep;
                    changed
                });
            }
            Action::SetScheme(scheme) => {
                let changed = self.requantize("choose a scheme", |q| {
                    // The torch preset's patch embedding stays fp32, as in `--scheme torch`.
                    let patch_embed = crate::quant::QuantOptions::with_scheme(scheme).patch_embed;
                    let changed = q.scheme != scheme;
                    *q = crate::quant::QuantOptions { scheme, patch_embed, ..q.clone() };
                    changed
                });
                if changed {
                    // A ranking belongs to the scheme it was made under.
                    self.state.sensitivity.report = None;
                }
            }
            Action::RankLayers { folder } => {
                if s.may_start_long_job(Topic::Sensitivity) {
                    s.settings.view = BottomView::Sensitivity;
                    s.sensitivity.running = true;
                    s.sensitivity.progress = (0, 0);
                    let image_name = s.image.as_ref().map_or_else(String::new, |i| i.name.clone());
                    self.worker.send(Command::RankLayers { variant: s.sensitivity_variant(), folder, image_name });
                }
            }
            Action::EditSensitivityFolder(text) => s.settings.sensitivity_folder = text,
            Action::SetFrontierY(y) => s.settings.frontier_y = y,
            Action::Dismiss(id) => s.dismiss(id),
            Action::DismissLatest => {
                if let Some(id) = s.notices.last().map(|n| n.id) {
                    s.dismiss(id);
                }
            }
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
        // Every pane shown: with a compare view, both variants' results and overlays.
        let shown = self.state.active_variants();
        let ready = shown.iter().all(|v| self.state.result(*v).is_some())
            && (!self.state.settings.overlay.enabled || shown.iter().all(|v| self.state.overlays.contains_key(v)))
            && !self.pending_benchmark
            && !self.state.bench.running
            && !self.pending_rank
            && self.pending_keep_top.is_none()
            && !self.state.sensitivity.running
            // Variants rebuilt with other options are shown once their new result is in.
            && shown.iter().all(|v| self.state.label(*v) == state::planned_label(*v, &self.state.quant))
            && (self.state.quant.keep_fp32.is_empty() || self.state.busy.is_none());
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

/// The variant of the last of the keys 1, 2, 3 pressed this frame, in the order they were
/// pressed (keys typed quickly can arrive in one frame; the last one wins).
fn last_variant_key(events: &[egui::Event]) -> Option<Variant> {
    events.iter().rev().find_map(|e| match e {
        egui::Event::Key { key, pressed: true, modifiers, .. } if modifiers.is_none() => match key {
            Key::Num1 => Some(Variant::Fp32),
            Key::Num2 => Some(Variant::Int8),
            Key::Num3 => Some(Variant::Mobile),
            _ => None,
        },
        _ => None,
    })
}

const NO_EVAL_DIALOG: &str = "no file dialog is available here (no desktop portal): type or paste the labelled folder or CSV into the field and press Evaluate";

/// The bottom panel's views, as a row of tabs along its top edge.
fn view_tabs(ui: &mut Ui, state: &AppState, actions: &mut Vec<Action>) {
    ui.horizontal(|ui| {
        ui.set_height(VIEW_TABS_HEIGHT - ui.spacing().item_spacing.y);
        for v in BottomView::ALL {
            let tab = egui::Button::selectable(state.settings.view == v, v.title());
            if ui.add(tab).on_hover_text(v.hover()).clicked() {
                actions.push(Action::ShowView(v));
            }
        }
    });
}

/// The tab row's height, spacing below it included.
const VIEW_TABS_HEIGHT: f32 = 24.0;

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
    let mut viewport = egui::ViewportBuilder::default().with_title("vit-workbench").with_min_inner_size([800.0, 600.0]);
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
