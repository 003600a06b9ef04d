//! The app's state, apart from how it is drawn: persisted settings, what the worker reported,
//! notices. Panels only read it; the app changes it, through [`AppState::apply`] for worker
//! replies and `WorkbenchApp::act` for what the user asked for.

use std::collections::BTreeMap;
use std::path::PathBuf;

use egui::{ColorImage, TextureHandle, TextureOptions};
use serde::{Deserialize, Serialize};

use super::worker::{ImageSource, ModelSummary, Reply, Rgba};
pub use super::worker::{SensitivityReport, Topic};
use crate::bench::{BenchConfig, BenchResult, percentile};
use crate::explain::{AttentionMap, Colormap, HeadFusion, Request};
use crate::model::{LayerName, Prediction};
use crate::quant::{QuantOptions, Variant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverlayMode {
    /// Class-specific attribution (the class clicked in the top-5, else the top-1).
    Attribution,
    Rollout,
    Raw,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OverlaySettings {
    pub enabled: bool,
    pub mode: OverlayMode,
    pub fusion: HeadFusion,
    pub discard_ratio: f32,
    pub layer: usize,
    /// `None`: mean over heads.
    pub head: Option<usize>,
    pub opacity: f32,
    pub cmap: Colormap,
    /// The class attribution explains (clicked in the top-5); `None`: the top-1. Per image, so
    /// not persisted.
    #[serde(skip)]
    pub class: Option<usize>,
}

impl Default for OverlaySettings {
    fn default() -> Self {
        OverlaySettings {
            enabled: true,
            mode: OverlayMode::Attribution,
            // jacobgil/vit-explain's recommendation: max fusion, 90% discarded.
            fusion: HeadFusion::Max,
            discard_ratio: 0.9,
            layer: 0,
            head: None,
            opacity: crate::explain::DEFAULT_OPACITY,
            cmap: crate::explain::DEFAULT_COLORMAP,
            class: None,
        }
    }
}

impl OverlaySettings {
    pub fn map(&self) -> Request {
        match self.mode {
            OverlayMode::Attribution => Request::Attribution { class: self.class },
            OverlayMode::Rollout => {
                Request::Attention(AttentionMap::Rollout { fusion: self.fusion, discard_ratio: self.discard_ratio })
            }
            OverlayMode::Raw => Request::Attention(AttentionMap::Raw { layer: self.layer, head: self.head }),
        }
    }
}

/// What the bottom panel shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BottomView {
    /// Latency per run, p50 latency and file size.
    #[default]
    Benchmark,
    /// Accuracy on a labelled folder or list ("Evaluate folder…").
    Accuracy,
    /// Where the time of a forward goes, per stage ("Profile").
    Profile,
    /// Which layers hurt when quantized; ticks keep them fp32.
    Sensitivity,
    /// Latency and size against accuracy loss, one point per variant measured, Pareto front.
    Frontier,
}

impl BottomView {
    pub const ALL: [BottomView; 5] = [
        BottomView::Benchmark,
        BottomView::Accuracy,
        BottomView::Profile,
        BottomView::Sensitivity,
        BottomView::Frontier,
    ];

    /// What the view shows, on hover.
    pub fn hover(self) -> &'static str {
        match self {
            BottomView::Benchmark => "Latency per run, p50 latency and file size of each variant",
            BottomView::Accuracy => "Accuracy of each variant on a labelled folder or list (Evaluate folder…)",
            BottomView::Profile => "Where the time goes: every stage of a forward, per variant (Profile)",
            BottomView::Sensitivity => "Which layers hurt when quantized; tick a layer to keep it fp32",
            BottomView::Frontier => {
                "p50 latency and file size against the loss vs fp32, one point per variant; Pareto front"
            }
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            BottomView::Benchmark => "Benchmark",
            BottomView::Accuracy => "Accuracy",
            BottomView::Profile => "Stage times",
            BottomView::Sensitivity => "Sensitivity",
            BottomView::Frontier => "Frontier",
        }
    }
}

/// What survives a restart (eframe persistence).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model: String,
    pub variant: Variant,
    /// The second variant of the side-by-side compare view; `None` hides it.
    pub compare: Option<Variant>,
    pub device: String,
    pub overlay: OverlaySettings,
    pub export_path: String,
    pub bench_warmup: usize,
    pub bench_runs: usize,
    pub bench_seconds: f64,
    /// The folder of images typed for "Rank on folder" (empty: rank on the current image).
    pub sensitivity_folder: String,
    /// The image file open when the window closed, reopened at the next start.
    pub last_image: Option<PathBuf>,
    /// What the bottom panel shows.
    pub view: BottomView,
    /// The labelled folder or `file,label` CSV last evaluated (or typed).
    pub eval_path: String,
    /// Rounds of the window's profile (each: one forward per variant with and one without the profiler).
    pub profile_runs: usize,
    /// The frontier's y axis (top-1 needs an evaluation of the model's variants).
    pub frontier_y: super::frontier::FrontierY,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: crate::zoo::DEFAULT_MODEL.to_string(),
            variant: Variant::Fp32,
            compare: Some(Variant::Int8),
            device: "cpu".into(),
            overlay: OverlaySettings::default(),
            export_path: "vit-workbench-report.csv".into(),
            bench_warmup: 5,
            bench_runs: 20,
            bench_seconds: 2.0,
            sensitivity_folder: String::new(),
            last_image: None,
            view: BottomView::Benchmark,
            eval_path: String::new(),
            profile_runs: 10,
            frontier_y: Default::default(),
        }
    }
}

impl Settings {
    /// Makes settings from anywhere (the command line, a restored file, an action) consistent:
    /// a variant is never compared with itself, it gets its default partner instead.
    pub fn normalize(&mut self) {
        if self.compare == Some(self.variant) {
            self.compare = Some(self.variant.default_partner());
        }
        self.overlay.opacity = self.overlay.opacity.clamp(0.0, 1.0);
        self.overlay.discard_ratio = self.overlay.discard_ratio.clamp(0.0, 0.99);
        self.profile_runs = self.profile_runs.clamp(1, MAX_PROFILE_RUNS);
    }

    /// The benchmark the window runs, from the user's fields, made runnable.
    pub fn bench_config(&self) -> BenchConfig {
        BenchConfig {
            warmup: self.bench_warmup,
            min_runs: self.bench_runs,
            min_seconds: self.bench_seconds,
            ..BenchConfig::default()
        }
        .clamped()
    }

    /// The variants to classify with: the current one first, then the compare one.
    pub fn active_variants(&self) -> Vec<Variant> {
        let mut v = vec![self.variant];
        if let Some(c) = self.compare.filter(|c| *c != self.variant) {
            v.push(c);
        }
        v
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

#[derive(Clone, Debug)]
pub struct Notice {
    pub id: u64,
    pub level: Level,
    /// What the notice is about: an error goes away when that thing next succeeds.
    pub topic: Topic,
    pub text: String,
    /// The image decoded only in part: the notice offers to open it anyway.
    pub open_anyway: Option<ImageSource>,
    /// When it was first drawn (egui time), for info notices to fade out.
    pub shown_at: Option<f64>,
}

/// How long an info notice stays; errors stay until dismissed or resolved.
pub const INFO_SECONDS: f64 = 8.0;
/// The most notices kept at once (the oldest go first).
const MAX_NOTICES: usize = 4;

pub struct ShownImage {
    pub id: u64,
    pub name: String,
    pub texture: TextureHandle,
    pub width: u32,
    pub height: u32,
    /// Set when the user opened a file that decoded only in part: what was missing.
    pub truncated: Option<String>,
}

impl ShownImage {
    /// The line under the image. The truncation mark goes last: a narrow pane cuts from the left.
    pub fn caption(&self) -> String {
        let mark = if self.truncated.is_some() { "  TRUNCATED: part of it did not decode" } else { "" };
        format!("{}  ({}x{}){mark}", self.name, self.width, self.height)
    }
}

#[derive(Clone, Debug)]
pub struct VariantResult {
    pub image_id: u64,
    /// The variant as computed: `int8`, or `int8+fp32[3]` when it kept layers fp32.
    pub label: String,
    pub top5: Vec<Prediction>,
    pub logits: Vec<f32>,
    pub ms: f64,
}

/// The timed samples of one variant in a running benchmark, with the running median and p90
/// updated as each sample arrives (not recomputed from all samples every frame).
#[derive(Clone, Debug, Default)]
pub struct LiveSeries {
    /// Samples in the order they were measured, ms.
    pub samples: Vec<f64>,
    sorted: Vec<f64>,
    /// `[run, median of runs 1..=run]`.
    pub median: Vec<[f64; 2]>,
    /// `[run, p90 of runs 1..=run]`.
    pub p90: Vec<[f64; 2]>,
}

impl LiveSeries {
    pub fn push(&mut self, ms: f64) {
        self.samples.push(ms);
        let at = self.sorted.partition_point(|x| x.total_cmp(&ms).is_le());
        self.sorted.insert(at, ms);
        let run = self.samples.len() as f64;
        self.median.push([run, percentile(&self.sorted, 50.0)]);
        self.p90.push([run, percentile(&self.sorted, 90.0)]);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[derive(Default)]
pub struct BenchState {
    pub running: bool,
    pub phase: String,
    /// The model of the running (or last) benchmark.
    pub model: String,
    /// Timed samples of the running (or last) benchmark, per variant, in order.
    /// Keyed by variant and its label: `int8` and `int8+fp32[3]` measured in one run are two series.
    pub live: BTreeMap<(Variant, String), LiveSeries>,
    /// Every result gathered since the app started (what "Export CSV" writes).
    pub results: Vec<BenchResult>,
}

impl BenchState {
    pub fn start(&mut self, model: String) {
        self.running = true;
        self.live.clear();
        self.phase = "starting".into();
        self.model = model;
    }

    /// The newest result of each (model, variant, scheme, layers kept fp32), in the order the
    /// models were first benchmarked, variants in their usual order (a plain variant before its
    /// mixed forms, otherwise in the order first measured): what the charts show.
    pub fn latest(&self) -> Vec<&BenchResult> {
        let mut models: Vec<&str> = Vec::new();
        for r in &self.results {
            if !models.contains(&r.model.as_str()) {
                models.push(&r.model);
            }
        }
        let mut out = Vec::new();
        for m in models {
            for v in Variant::ALL {
                let mut forms: Vec<(&str, &[LayerName])> = Vec::new();
                for r in self.results.iter().filter(|r| r.model == m && r.variant == v) {
                    let form = (r.scheme.as_str(), r.kept_fp32.as_slice());
                    if !forms.contains(&form) {
                        forms.push(form);
                    }
                }
                forms.sort_by_key(|(_, kept)| !kept.is_empty());
                for (scheme, kept) in forms {
                    let same =
                        |r: &&BenchResult| r.model == m && r.variant == v && r.scheme == scheme && r.kept_fp32 == kept;
                    out.extend(self.results.iter().rev().find(same));
                }
            }
        }
        out
    }
}

/// The most profiling rounds the window asks for.
pub const MAX_PROFILE_RUNS: usize = 200;

/// The accuracy view: an evaluation running or finished.
#[derive(Default)]
pub struct EvalState {
    pub running: bool,
    /// Images classified of the running evaluation: (done, total).
    pub progress: (usize, usize),
    /// The folder or list of the running evaluation.
    pub source: String,
    /// The last finished evaluation (kept until the next one finishes: a failed or cancelled
    /// run leaves it as it was).
    pub report: Option<std::sync::Arc<crate::eval::EvalReport>>,
    /// Thumbnails of the report's flipped images, by file.
    pub thumbnails: BTreeMap<String, TextureHandle>,
}

/// The "where the time goes" view.
#[derive(Default)]
pub struct ProfileState {
    pub running: bool,
    /// Rounds made of the running profile: (done, total).
    pub progress: (usize, usize),
    /// The model of the last profile, and the threads it ran on.
    pub model: String,
    pub threads: usize,
    pub report: Option<std::sync::Arc<Vec<crate::profile::VariantProfile>>>,
}

/// The sensitivity view: a ranking running or finished.
#[derive(Default)]
pub struct SensitivityState {
    pub running: bool,
    /// Models scored of the running ranking: (done, total).
    pub progress: (usize, usize),
    /// The last finished ranking (a cancelled or failed one leaves it as it was; a new model
    /// drops it, its layers being another model's).
    pub report: Option<SensitivityReport>,
}

/// The machine the numbers come from, for the status bar.
#[derive(Clone, Debug)]
pub struct Environment {
    /// Threads and the int8 kernel path.
    pub summary: String,
    /// The CPU's SIMD features.
    pub detail: String,
}

impl Environment {
    pub fn detect() -> Environment {
        Environment {
            summary: format!(
                "threads: {} · int8 kernel: {}",
                rayon::current_num_threads(),
                crate::kernels::selected_isa().name()
            ),
            detail: crate::bench::simd_summary(),
        }
    }
}

pub struct AppState {
    pub settings: Settings,
    /// Shown in the status bar (snapshot tests pin it: it differs between machines).
    pub environment: Environment,
    pub image: Option<ShownImage>,
    pub model: Option<ModelSummary>,
    pub results: BTreeMap<Variant, VariantResult>,
    pub overlays: BTreeMap<Variant, TextureHandle>,
    pub bench: BenchState,
    pub eval: EvalState,
    pub profile: ProfileState,
    pub busy: Option<String>,
    pub download: Option<(String, u64, u64)>,
    pub notices: Vec<Notice>,
    next_notice: u64,
    /// Text of the "path" field (paste a file path or a model folder).
    pub path_input: String,
    pub model_input: String,
    /// Set when the model changed and results must be recomputed once it is loaded.
    pub needs_analysis: bool,
    pub last_export: Option<PathBuf>,
    /// Whether CUDA can be used here, probed once at start.
    pub cuda: crate::device::CudaStatus,
    /// The image being decoded (asked for, not arrived yet).
    pub decoding: Option<String>,
    /// How the window's int8 and mobile variants are made (layers kept fp32); the worker holds
    /// the same, sent with every change. Per model: a new model starts from the default.
    pub quant: QuantOptions,
    pub sensitivity: SensitivityState,
}

impl AppState {
    pub fn new(settings: Settings) -> AppState {
        Self::with_cuda(settings, crate::device::cuda_status().clone())
    }

    /// A state for a machine where CUDA is as `cuda` says (tests pass each case).
    pub fn with_cuda(settings: Settings, cuda: crate::device::CudaStatus) -> AppState {
        AppState {
            model_input: settings.model.clone(),
            settings,
            environment: Environment::detect(),
            image: None,
            model: None,
            results: BTreeMap::new(),
            overlays: BTreeMap::new(),
            bench: BenchState::default(),
            eval: EvalState::default(),
            profile: ProfileState::default(),
            busy: None,
            download: None,
            notices: Vec::new(),
            next_notice: 1,
            path_input: String::new(),
            needs_analysis: false,
            last_export: None,
            cuda,
            decoding: None,
            quant: QuantOptions::default(),
            sensitivity: SensitivityState::default(),
        }
    }

    pub fn notify(&mut self, level: Level, topic: Topic, text: impl Into<String>) {
        let text = text.into();
        // The same message again replaces the old one (and restarts its time).
        self.notices.retain(|n| n.text != text);
        self.notices.push(Notice { id: self.next_notice, level, topic, text, open_anyway: None, shown_at: None });
        self.next_notice += 1;
        if self.notices.len() > MAX_NOTICES {
            self.notices.remove(0);
        }
    }

    pub fn dismiss(&mut self, id: u64) {
        self.notices.retain(|n| n.id != id);
    }

    /// `topic` succeeded: its errors no longer apply.
    fn resolved(&mut self, topic: Topic) {
        self.notices.retain(|n| !(n.level == Level::Error && n.topic == topic));
    }

    /// Drops info notices older than [`INFO_SECONDS`] at egui time `now`; returns the seconds
    /// until the next one expires, if any.
    pub fn expire_notices(&mut self, now: f64) -> Option<f64> {
        for n in &mut self.notices {
            n.shown_at.get_or_insert(now);
        }
        let expired = |n: &Notice| n.level == Level::Info && n.shown_at.is_some_and(|t| now - t >= INFO_SECONDS);
        self.notices.retain(|n| !expired(n));
        self.notices
            .iter()
            .filter(|n| n.level == Level::Info)
            .filter_map(|n| n.shown_at.map(|t| INFO_SECONDS - (now - t)))
            .reduce(f64::min)
    }

    /// The variant an exported int8/mobile file holds (it cannot become another one).
    pub fn exported_variant(&self) -> Option<Variant> {
        self.model.as_ref().map(|m| m.stored_variant).filter(|v| *v != Variant::Fp32)
    }

    /// The variants shown: the settings' choice, or only the one an exported file holds. The
    /// settings keep the user's choice, so it comes back with the next full model.
    pub fn active_variants(&self) -> Vec<Variant> {
        match self.exported_variant() {
            Some(v) => vec![v],
            None => self.settings.active_variants(),
        }
    }

    /// The variants "Evaluate folder…" measures: fp32 (the reference every change is counted
    /// against) and the non-fp32 variants shown; an exported file's only variant on its own.
    pub fn eval_variants(&self) -> Vec<Variant> {
        if let Some(v) = self.exported_variant() {
            return vec![v];
        }
        let mut out = vec![Variant::Fp32];
        out.extend(self.active_variants().into_iter().filter(|v| *v != Variant::Fp32));
        out
    }

    /// The variants "Profile" times: all of them, or an exported file's only one.
    pub fn profile_variants(&self) -> Vec<Variant> {
        match self.exported_variant() {
            Some(v) => vec![v],
            None => Variant::ALL.to_vec(),
        }
    }

    /// Whether a long job that needs the model may start now; if not, says why under `topic`.
    pub fn may_start_long_job(&mut self, topic: Topic) -> bool {
        if self.model.is_none() {
            self.notify(Level::Info, topic, "load a model first");
            false
        } else if let Some(job) = self.long_job() {
            self.notify(Level::Info, topic, format!("{job} is running: wait for it or cancel it"));
            false
        } else {
            true
        }
    }

    /// The long job running, if any (one at a time: they share the worker and the CPU).
    pub fn long_job(&self) -> Option<&'static str> {
        if self.bench.running {
            Some("a benchmark")
        } else if self.eval.running {
            Some("an evaluation")
        } else if self.profile.running {
            Some("a profile")
        } else if self.sensitivity.running {
            Some("a sensitivity ranking")
        } else {
            None
        }
    }

    /// The variant shown first.
    pub fn primary(&self) -> Variant {
        self.active_variants()[0]
    }

    /// The result of the current image for `v`, if computed.
    pub fn result(&self, v: Variant) -> Option<&VariantResult> {
        let id = self.image.as_ref()?.id;
        self.results.get(&v).filter(|r| r.image_id == id)
    }

    /// How `v` is named to the user: as its shown result was computed (`int8+fp32[3]`), else
    /// as the current options will make it.
    pub fn label(&self, v: Variant) -> String {
        match self.result(v) {
            Some(r) => r.label.clone(),
            None => planned_label(v, &self.quant),
        }
    }

    /// The quantized variant the sensitivity view ranks: the one shown first if quantized, else
    /// the compare one, else int8.
    pub fn sensitivity_variant(&self) -> Variant {
        self.active_variants().into_iter().find(|v| *v != Variant::Fp32).unwrap_or(Variant::Int8)
    }

    /// Applies one worker reply. Returns `true` when a new model or image arrived (the caller
    /// then asks for a new analysis).
    pub fn apply(&mut self, ctx: &egui::Context, reply: Reply) -> bool {
        match reply {
            Reply::Busy(s) => self.busy = Some(s),
            Reply::Idle => {
                self.busy = None;
                self.download = None;
            }
            Reply::Download { file, done, total } => {
                let total = if total > 0 { total } else { self.download.as_ref().map_or(0, |d| d.2) };
                self.download = Some((file, done, total));
            }
            Reply::ImageLoaded { image_id, name, path, display, width, height, truncated } => {
                let texture =
                    ctx.load_texture(format!("image-{image_id}"), to_color_image(&display), TextureOptions::LINEAR);
                self.image = Some(ShownImage { id: image_id, name, texture, width, height, truncated });
                self.overlays.clear();
                self.settings.overlay.class = None;
                self.decoding = None;
                if path.is_some() {
                    self.settings.last_image = path;
                }
                self.resolved(Topic::Image);
                return true;
            }
            Reply::ModelLoaded(summary) => {
                // Layers kept fp32 are another model's names: a new model starts from the default
                // (the worker applies the same rule), the same one on another device keeps them.
                if self.model.as_ref().is_none_or(|m| m.spec != summary.spec) {
                    self.quant = QuantOptions::default();
                    self.sensitivity.report = None;
                }
                self.settings.model = summary.spec.clone();
                self.model = Some(summary);
                self.resolved(Topic::Model);
                self.results.clear();
                self.overlays.clear();
                self.settings.overlay.class = None;
                return true;
            }
            Reply::Classified { image_id, variant, label, top5, logits, ms } => {
                self.results.insert(variant, VariantResult { image_id, label, top5, logits, ms });
                self.resolved(Topic::Analysis);
            }
            Reply::Overlay { image_id, variant, rgba } => {
                if self.image.as_ref().is_some_and(|i| i.id == image_id) {
                    let tex =
                        ctx.load_texture(format!("overlay-{variant}"), to_color_image(&rgba), TextureOptions::LINEAR);
                    self.overlays.insert(variant, tex);
                    self.resolved(Topic::Analysis);
                }
            }
            Reply::BenchPhase(p) => self.bench.phase = p,
            Reply::BenchSample { variant, label, ms, .. } => {
                self.bench.live.entry((variant, label)).or_default().push(ms)
            }
            Reply::BenchDone(results) => {
                self.bench.running = false;
                self.bench.phase = "done".into();
                let slower: Vec<String> = results
                    .iter()
                    .filter_map(|r| {
                        let f = results.iter().find(|o| o.variant == Variant::Fp32)?;
                        (r.stats.p50 > f.stats.p50)
                            .then(|| format!("{} is {:.2}x slower than fp32", r.label(), r.stats.p50 / f.stats.p50))
                    })
                    .collect();
                self.resolved(Topic::Benchmark);
                self.notify(
                    Level::Info,
                    Topic::Benchmark,
                    format!(
                        "benchmark done: {} results{}",
                        results.len(),
                        if slower.is_empty() { String::new() } else { format!(" — {}", slower.join(", ")) }
                    ),
                );
                self.bench.results.extend(results);
            }
            Reply::Exported { path, rows } => {
                self.resolved(Topic::Export);
                self.notify(
                    Level::Info,
                    Topic::Export,
                    format!("exported {rows} benchmark rows to {}", path.display()),
                );
                self.last_export = Some(path);
            }
            Reply::EvalProgress { done, total } => self.eval.progress = (done, total),
            Reply::EvalDone { report, thumbnails } => {
                self.eval.running = false;
                self.eval.thumbnails = thumbnails
                    .into_iter()
                    .enumerate()
                    .map(|(i, (file, rgba))| {
                        let tex = ctx.load_texture(format!("flip-{i}"), to_color_image(&rgba), TextureOptions::LINEAR);
                        (file, tex)
                    })
                    .collect();
                self.resolved(Topic::Evaluation);
                self.eval.report = Some(report);
            }
            Reply::ProfileProgress { done, total } => self.profile.progress = (done, total),
            Reply::Profiled { model, threads, report } => {
                self.profile.running = false;
                self.profile.model = model;
                self.profile.threads = threads;
                self.profile.report = Some(report);
                self.resolved(Topic::Profile);
            }
            Reply::SensitivityProgress { done, total } => self.sensitivity.progress = (done, total),
            Reply::SensitivityDone(report) => {
                self.sensitivity.running = false;
                self.resolved(Topic::Sensitivity);
                self.sensitivity.report = Some(report);
            }
            Reply::Cancelled(what) => {
                // One command runs at a time: whichever it was has stopped.
                self.bench.running = false;
                self.eval.running = false;
                self.profile.running = false;
                self.sensitivity.running = false;
                self.notify(Level::Info, Topic::Other, what);
            }
            Reply::Error { what, about, message, open_anyway } => {
                if about == Topic::Benchmark {
                    self.bench.running = false;
                }
                if about == Topic::Evaluation {
                    self.eval.running = false;
                }
                if about == Topic::Profile {
                    self.profile.running = false;
                }
                if about == Topic::Image {
                    self.decoding = None;
                }
                if about == Topic::Sensitivity {
                    self.sensitivity.running = false;
                }
                self.notify(Level::Error, about, format!("{what}: {message}"));
                if let Some(notice) = self.notices.last_mut() {
                    notice.open_anyway = open_anyway;
                }
            }
        }
        false
    }
}

/// `int8`, `int8[torch]`, or `int8+fp32[3]` when `opts` keeps 3 layers fp32: as
/// `Model::label` will name the variant `opts` make (the torch scheme's fp32 patch embedding is
/// part of the scheme, not a kept layer).
pub fn planned_label(v: Variant, opts: &QuantOptions) -> String {
    let kept: Vec<LayerName> = opts.keep_fp32.iter().copied().collect();
    crate::model::label_of(v, opts.scheme, &kept)
}

fn to_color_image(rgba: &Rgba) -> ColorImage {
    ColorImage::from_rgba_unmultiplied([rgba.width, rgba.height], &rgba.pixels)
}
