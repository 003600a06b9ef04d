//! The app's state, apart from how it is drawn: persisted settings, what the worker reported,
//! notices. Panels read and change it; only [`AppState::apply`] turns worker replies into state.

use std::collections::BTreeMap;
use std::path::PathBuf;

use egui::{ColorImage, TextureHandle, TextureOptions};
use serde::{Deserialize, Serialize};

use super::worker::{ModelSummary, Reply, Rgba};
use crate::bench::BenchResult;
use crate::explain::{AttentionMap, Colormap, HeadFusion, Request};
use crate::model::Prediction;
use crate::quant::Variant;

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
        }
    }
}

impl Settings {
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
    pub text: String,
}

pub struct ShownImage {
    pub id: u64,
    pub name: String,
    pub texture: TextureHandle,
    pub width: u32,
    pub height: u32,
}

#[derive(Clone, Debug)]
pub struct VariantResult {
    pub image_id: u64,
    pub top5: Vec<Prediction>,
    pub logits: Vec<f32>,
    pub ms: f64,
}

#[derive(Default)]
pub struct BenchState {
    pub running: bool,
    pub phase: String,
    /// Timed samples of the running (or last) benchmark, per variant, in order.
    pub live: BTreeMap<Variant, Vec<f64>>,
    /// Every result gathered since the app started (what "Export CSV" writes).
    pub results: Vec<BenchResult>,
}

pub struct AppState {
    pub settings: Settings,
    pub image: Option<ShownImage>,
    pub model: Option<ModelSummary>,
    pub results: BTreeMap<Variant, VariantResult>,
    pub overlays: BTreeMap<Variant, TextureHandle>,
    pub bench: BenchState,
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
}

impl AppState {
    pub fn new(settings: Settings) -> AppState {
        AppState {
            model_input: settings.model.clone(),
            settings,
            image: None,
            model: None,
            results: BTreeMap::new(),
            overlays: BTreeMap::new(),
            bench: BenchState::default(),
            busy: None,
            download: None,
            notices: Vec::new(),
            next_notice: 1,
            path_input: String::new(),
            needs_analysis: false,
            last_export: None,
        }
    }

    pub fn notify(&mut self, level: Level, text: impl Into<String>) {
        let text = text.into();
        // The same message twice in a row is one notice.
        if self.notices.last().is_some_and(|n| n.text == text) {
            return;
        }
        self.notices.push(Notice { id: self.next_notice, level, text });
        self.next_notice += 1;
        if self.notices.len() > 6 {
            self.notices.remove(0);
        }
    }

    pub fn dismiss(&mut self, id: u64) {
        self.notices.retain(|n| n.id != id);
    }

    /// The result of the current image for `v`, if computed.
    pub fn result(&self, v: Variant) -> Option<&VariantResult> {
        let id = self.image.as_ref()?.id;
        self.results.get(&v).filter(|r| r.image_id == id)
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
            Reply::ImageLoaded { image_id, name, display, width, height } => {
                let texture =
                    ctx.load_texture(format!("image-{image_id}"), to_color_image(&display), TextureOptions::LINEAR);
                self.image = Some(ShownImage { id: image_id, name, texture, width, height });
                self.overlays.clear();
                self.settings.overlay.class = None;
                return true;
            }
            Reply::ModelLoaded(summary) => {
                self.settings.model = summary.spec.clone();
                if summary.stored_variant != Variant::Fp32 {
                    // An exported int8/mobile file cannot be turned into other variants.
                    self.settings.variant = summary.stored_variant;
                    self.settings.compare = None;
                }
                self.model = Some(summary);
                self.results.clear();
                self.overlays.clear();
                self.settings.overlay.class = None;
                return true;
            }
            Reply::Classified { image_id, variant, top5, logits, ms } => {
                self.results.insert(variant, VariantResult { image_id, top5, logits, ms });
            }
            Reply::Overlay { image_id, variant, rgba } => {
                if self.image.as_ref().is_some_and(|i| i.id == image_id) {
                    let tex =
                        ctx.load_texture(format!("overlay-{variant}"), to_color_image(&rgba), TextureOptions::LINEAR);
                    self.overlays.insert(variant, tex);
                }
            }
            Reply::BenchPhase(p) => self.bench.phase = p,
            Reply::BenchSample { variant, ms, .. } => self.bench.live.entry(variant).or_default().push(ms),
            Reply::BenchDone(results) => {
                self.bench.running = false;
                self.bench.phase = "done".into();
                let slower: Vec<String> = results
                    .iter()
                    .filter_map(|r| {
                        let f = results.iter().find(|o| o.variant == Variant::Fp32)?;
                        (r.stats.p50 > f.stats.p50)
                            .then(|| format!("{} is {:.2}x slower than fp32", r.variant, r.stats.p50 / f.stats.p50))
                    })
                    .collect();
                self.notify(
                    Level::Info,
                    format!(
                        "benchmark done: {} results{}",
                        results.len(),
                        if slower.is_empty() { String::new() } else { format!(" — {}", slower.join(", ")) }
                    ),
                );
                self.bench.results.extend(results);
            }
            Reply::Exported { path, rows } => {
                self.notify(Level::Info, format!("exported {rows} benchmark rows to {}", path.display()));
                self.last_export = Some(path);
            }
            Reply::Cancelled(what) => {
                self.bench.running = false;
                self.notify(Level::Info, what);
            }
            Reply::Error { what, message } => {
                self.bench.running = false;
                self.notify(Level::Error, format!("{what}: {message}"));
            }
        }
        false
    }
}

fn to_color_image(rgba: &Rgba) -> ColorImage {
    ColorImage::from_rgba_unmultiplied([rgba.width, rgba.height], &rgba.pixels)
}
