//! The background worker: every model load, download, quantization, inference, overlay,
//! benchmark and file write happens here, never on the UI thread. The UI sends [`Command`]s over
//! a channel; the worker answers with [`Reply`]s and wakes the UI with `request_repaint`.
//!
//! A panic inside a command is caught, reported as an error, and the worker starts again from a
//! clean state (models are reloaded on the next request): the window never dies with it.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use image::RgbImage;

use crate::bench::{BenchConfig, BenchEvent, BenchInput, BenchJob, BenchResult, bench_model};
use crate::explain::attribution::attribution;
use crate::explain::{Attentions, Colormap, Heatmap, Request, grid_heatmap, heatmap, overlay_layer};
use crate::hub::{DownloadEvent, Hub};
use crate::model::{Capture, Model, Prediction, device_from_name};
use crate::quant::sensitivity::{KeepFp32, Sensitivity, analyze};
use crate::quant::{QuantOptions, Variant};

/// Where an image comes from.
#[derive(Clone, Debug)]
pub enum ImageSource {
    Path(PathBuf),
    /// Bytes already read (the bundled sample, a dropped file's content), with a display name.
    Bytes {
        name: String,
        bytes: Arc<Vec<u8>>,
    },
}

impl ImageSource {
    /// How the image is named to the user.
    pub fn name(&self) -> String {
        match self {
            ImageSource::Path(p) => p.display().to_string(),
            ImageSource::Bytes { name, .. } => name.clone(),
        }
    }
}

/// What a command (and so its error) is about; an error notice goes away when the same kind
/// of thing next succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    Image,
    Model,
    /// Classification and overlays.
    Analysis,
    Benchmark,
    Export,
    /// Accuracy on a labelled folder or list.
    Evaluation,
    /// Where the time of a forward goes.
    Profile,
    /// Ranking the layers by sensitivity.
    Sensitivity,
    Other,
}

#[derive(Clone, Debug)]
pub enum Command {
    OpenImage(ImageSource),
    /// Open an image that decoded only in part (the user chose "Open anyway").
    OpenTruncatedImage(ImageSource),
    SetModel {
        spec: String,
        device: String,
    },
    /// Classify the current image with these variants (the first is the primary one) and
    /// compute their overlays.
    Analyze {
        variants: Vec<Variant>,
        map: Request,
        cmap: Colormap,
        opacity: f32,
    },
    /// Recompute overlays from the attention already captured.
    Overlay {
        variants: Vec<Variant>,
        map: Request,
        cmap: Colormap,
        opacity: f32,
    },
    Benchmark {
        variants: Vec<Variant>,
        cfg: BenchConfig,
    },
    ExportCsv {
        path: PathBuf,
        results: Vec<BenchResult>,
    },
    /// Accuracy of these variants (the loaded model's) on a labelled folder or `file,label` CSV.
    Evaluate {
        source: PathBuf,
        variants: Vec<Variant>,
    },
    /// Times every stage of a forward of these variants (`runs` rounds).
    Profile {
        variants: Vec<Variant>,
        runs: usize,
    },
    /// Make the int8 and mobile variants with these options from now on (the cached ones that
    /// differ are dropped, to be rebuilt when next used).
    SetQuant(QuantOptions),
    /// Rank every linear layer of `variant` by what quantizing it costs against fp32, on the
    /// current image or on the images of `folder`.
    RankLayers {
        variant: Variant,
        folder: Option<PathBuf>,
        /// How the current image is named to the user (when there is no folder).
        image_name: String,
    },
    /// Deliberately panics (tests of the recovery path).
    Crash,
}

impl Command {
    fn kind(&self) -> u8 {
        match self {
            Command::OpenImage(_) | Command::OpenTruncatedImage(_) => 0,
            Command::SetModel { .. } => 1,
            Command::Analyze { .. } => 2,
            Command::Overlay { .. } => 3,
            Command::Benchmark { .. } => 4,
            Command::ExportCsv { .. } => 5,
            Command::Crash => 6,
            Command::Evaluate { .. } => 7,
            Command::Profile { .. } => 8,
            Command::SetQuant(_) => 9,
            Command::RankLayers { .. } => 10,
        }
    }

    fn topic(&self) -> Topic {
        match self {
            Command::OpenImage(_) | Command::OpenTruncatedImage(_) => Topic::Image,
            Command::SetModel { .. } => Topic::Model,
            Command::Analyze { .. } | Command::Overlay { .. } => Topic::Analysis,
            Command::Benchmark { .. } => Topic::Benchmark,
            Command::ExportCsv { .. } => Topic::Export,
            Command::Evaluate { .. } => Topic::Evaluation,
            Command::Profile { .. } => Topic::Profile,
            Command::Crash => Topic::Other,
            Command::SetQuant(_) => Topic::Analysis,
            Command::RankLayers { .. } => Topic::Sensitivity,
        }
    }
}

/// What a loaded model looks like, for display.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    pub spec: String,
    pub architecture: String,
    pub params: usize,
    pub depth: usize,
    pub heads: usize,
    pub image_size: usize,
    pub classes: usize,
    pub prefix_tokens: usize,
    pub recipe: String,
    pub stored_variant: Variant,
    /// Where it runs: `cpu` or `cuda:0 (NVIDIA H200)`.
    pub device: String,
    /// How its int8/mobile variants compute there.
    pub int8_kernel: crate::device::Int8Kernel,
}

/// An RGBA image ready for a texture.
#[derive(Clone, Debug)]
pub struct Rgba {
    pub width: usize,
    pub height: usize,
    pub pixels: Arc<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub enum Reply {
    Busy(String),
    Idle,
    Download {
        file: String,
        done: u64,
        total: u64,
    },
    ImageLoaded {
        image_id: u64,
        name: String,
        /// The file it came from (not for dropped bytes or the sample).
        path: Option<PathBuf>,
        display: Rgba,
        width: u32,
        height: u32,
        /// Set when the user opened a file that decoded only in part: what was missing.
        truncated: Option<String>,
    },
    ModelLoaded(ModelSummary),
    Classified {
        image_id: u64,
        variant: Variant,
        /// The variant as computed (`int8+fp32[3]` for a mixed one).
        label: String,
        top5: Vec<Prediction>,
        logits: Vec<f32>,
        ms: f64,
    },
    Overlay {
        image_id: u64,
        variant: Variant,
        rgba: Rgba,
    },
    BenchPhase(String),
    BenchSample {
        variant: Variant,
        /// `int8+fp32[3]` for a mixed variant measured beside plain int8.
        label: String,
        ms: f64,
        run: usize,
    },
    BenchDone(Vec<BenchResult>),
    Exported {
        path: PathBuf,
        rows: usize,
    },
    /// `done` of `total` images of an evaluation classified.
    EvalProgress {
        done: usize,
        total: usize,
    },
    /// A finished evaluation, with a thumbnail of each flipped image (by file).
    EvalDone {
        report: Arc<crate::eval::EvalReport>,
        thumbnails: Vec<(String, Rgba)>,
    },
    /// `done` of `total` profiling rounds made.
    ProfileProgress {
        done: usize,
        total: usize,
    },
    /// A finished profile of `model`'s variants, measured on `threads` threads.
    Profiled {
        model: String,
        threads: usize,
        report: Arc<Vec<crate::profile::VariantProfile>>,
    },
    /// Models scored of a running sensitivity ranking.
    SensitivityProgress {
        done: usize,
        total: usize,
    },
    SensitivityDone(SensitivityReport),
    Cancelled(String),
    /// `what` failed (one line naming the file or model), the previous state is kept.
    Error {
        what: String,
        about: Topic,
        message: String,
        /// Set when the image decoded only in part: the notice offers to open it anyway.
        open_anyway: Option<ImageSource>,
    },
}

/// A finished sensitivity ranking and what it was made on.
#[derive(Clone, Debug)]
pub struct SensitivityReport {
    pub ranking: Arc<Sensitivity>,
    /// The image, or the folder and how many of its images, the layers were ranked on.
    pub source: String,
}

/// The most images of a folder a ranking runs on (they go through the model as one batch,
/// 2 x layers + 1 times).
pub const MAX_RANK_IMAGES: usize = 16;

/// The UI's handle on the worker.
pub struct WorkerHandle {
    tx: Sender<Command>,
    pub rx: Receiver<Reply>,
    pub cancel: Arc<AtomicBool>,
}

impl WorkerHandle {
    pub fn send(&self, cmd: Command) {
        // A send fails only if the worker thread is gone, which the panic guard prevents.
        let _ = self.tx.send(cmd);
    }
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Starts the worker thread. `wake` is called after every reply (the UI's `request_repaint`).
pub fn spawn(hub: Hub, wake: impl Fn() + Send + 'static) -> WorkerHandle {
    let (tx, cmd_rx) = channel::<Command>();
    let (reply_tx, rx) = channel::<Reply>();
    let cancel = Arc::new(AtomicBool::new(false));
    let cancel2 = cancel.clone();
    std::thread::Builder::new()
        .name("vit-workbench-worker".into())
        .spawn(move || {
            let out = Out { tx: reply_tx, wake: Box::new(wake), last_sample_wake: Default::default() };
            let mut state = State::new(hub);
            while let Ok(first) = cmd_rx.recv() {
                for cmd in coalesce(first, &cmd_rx) {
                    cancel2.store(false, Ordering::Relaxed);
                    let result = catch_unwind(AssertUnwindSafe(|| state.handle(cmd.clone(), &out, &cancel2)));
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            let msg = format!("{e:#}");
                            if is_cancelled(&e) {
                                out.send(Reply::Cancelled(msg));
                            } else {
                                let open_anyway = match &cmd {
                                    Command::OpenImage(src)
                                        if e.downcast_ref::<crate::preprocess::Truncated>().is_some() =>
                                    {
                                        Some(src.clone())
                                    }
                                    _ => None,
                                };
                                out.send(Reply::Error {
                                    what: describe(&cmd),
                                    about: cmd.topic(),
                                    message: msg,
                                    open_anyway,
                                });
                            }
                        }
                        Err(panic) => {
                            let msg = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "unknown panic".into());
                            if msg == CANCEL_PANIC {
                                // A model load was abandoned before it changed any state.
                                out.send(Reply::Cancelled("download cancelled".into()));
                            } else {
                                out.send(Reply::Error {
                                    what: describe(&cmd),
                                    about: cmd.topic(),
                                    message: format!("internal error, the worker restarted: {msg}"),
                                    open_anyway: None,
                                });
                                // Start over: no model or cache survives a panic. The decoded
                                // image is plain data and stays, so the window and the worker
                                // keep agreeing on what is shown.
                                let mut fresh = State::new(state.hub.clone());
                                fresh.image = state.image.take();
                                fresh.next_image_id = state.next_image_id;
                                // The window's choices stay as the window shows them.
                                fresh.quant = state.quant.clone();
                                fresh.spec = state.spec.take();
                                state = fresh;
                            }
                        }
                    }
                    out.send(Reply::Idle);
                }
            }
        })
        .expect("cannot start the worker thread");
    WorkerHandle { tx, rx, cancel }
}

/// A command stopped by the user's Cancel (each long job has its own typed error).
fn is_cancelled(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::bench::Cancelled>().is_some()
        || e.downcast_ref::<crate::eval::Cancelled>().is_some()
        || e.downcast_ref::<crate::profile::Cancelled>().is_some()
}

/// Drops commands made stale by a later one of the same kind (dragging a slider sends many
/// overlay requests; only the last matters). Order is otherwise kept.
fn coalesce(first: Command, rx: &Receiver<Command>) -> Vec<Command> {
    let mut all = vec![first];
    while let Ok(c) = rx.try_recv() {
        all.push(c);
    }
    // Options are absolute (the newest replaces the rest); commands keep their order.
    let keep_last_only = |k: u8| matches!(k, 2 | 3 | 7);
    let mut out: Vec<Command> = Vec::new();
    for (i, c) in all.iter().enumerate() {
        let superseded = keep_last_only(c.kind()) && all[i + 1..].iter().any(|later| later.kind() == c.kind());
        if !superseded {
            out.push(c.clone());
        }
    }
    out
}

fn describe(cmd: &Command) -> String {
    match cmd {
        Command::OpenImage(src) | Command::OpenTruncatedImage(src) => format!("cannot open image {}", src.name()),
        Command::SetModel { spec, .. } => format!("cannot load model {spec}"),
        Command::Analyze { .. } => "cannot classify".into(),
        Command::Overlay { .. } => "cannot draw the attention overlay".into(),
        Command::Benchmark { .. } => "benchmark failed".into(),
        Command::ExportCsv { path, .. } => format!("cannot export {}", path.display()),
        Command::Evaluate { source, .. } => format!("cannot evaluate {}", source.display()),
        Command::Profile { .. } => "profiling failed".into(),
        Command::Crash => "crash test".into(),
        Command::SetQuant(_) => "cannot change the quantization options".into(),
        Command::RankLayers { folder: Some(f), .. } => format!("cannot rank the layers on {}", f.display()),
        Command::RankLayers { .. } => "cannot rank the layers".into(),
    }
}

const CANCEL_PANIC: &str = "vit-workbench: cancelled by the user";

struct Out {
    tx: Sender<Reply>,
    wake: Box<dyn Fn() + Send>,
    last_sample_wake: std::cell::Cell<Option<Instant>>,
}

/// Benchmark samples wake the UI at most this often: every repaint costs CPU (a lot under a
/// software renderer) that the measurement would otherwise lose to drawing.
const SAMPLE_WAKE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

impl Out {
    fn send(&self, r: Reply) {
        let throttle =
            matches!(r, Reply::BenchSample { .. } | Reply::EvalProgress { .. } | Reply::ProfileProgress { .. });
        let _ = self.tx.send(r);
        if throttle {
            if self.last_sample_wake.get().is_some_and(|t| t.elapsed() < SAMPLE_WAKE_INTERVAL) {
                return;
            }
            self.last_sample_wake.set(Some(Instant::now()));
        }
        (self.wake)();
    }
}

struct State {
    hub: Hub,
    next_image_id: u64,
    image: Option<(u64, Arc<RgbImage>)>,
    /// The loaded model as stored (fp32 for checkpoints) and the variants made from it.
    source: Option<Model>,
    /// What the user named the source model by (the benchmark loads it again from there).
    spec: Option<String>,
    variants: HashMap<Variant, Model>,
    /// Attention of the current image per variant, for overlay changes without a new forward.
    attentions: HashMap<Variant, (u64, Attentions)>,
    /// The current image as the model's input, and each variant's top-1 on it (attribution).
    input: Option<(u64, candle_core::Tensor)>,
    top1: HashMap<Variant, usize>,
    /// The last map per variant: an opacity or colormap change redraws it without recomputing.
    maps: HashMap<Variant, (u64, Request, Heatmap)>,
    /// How int8 and mobile are made (the window's choice, e.g. layers kept fp32).
    quant: QuantOptions,
}

/// The images of `dir` (by extension, sorted by name), at most [`MAX_RANK_IMAGES`]. Errors do
/// not repeat the folder: the notice names it.
fn images_in(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file() && crate::preprocess::has_image_extension(f))
        .collect();
    if found.is_empty() {
        bail!("no image files in this folder");
    }
    found.sort();
    found.truncate(MAX_RANK_IMAGES);
    Ok(found)
}

/// Longest side of the image shown in the window (the model always sees the full image).
const DISPLAY_MAX_SIDE: u32 = 1024;

/// Longest side of a flipped image's thumbnail in the accuracy view.
pub const THUMBNAIL_SIDE: u32 = 96;
/// Thumbnails made per evaluation; further flipped images are listed without one.
const MAX_THUMBNAILS: usize = 64;
/// Untimed rounds before the window's profile.
const PROFILE_WARMUP: usize = 2;

/// A small RGBA copy of the image file at `path`, at most [`THUMBNAIL_SIDE`] on its longer side.
pub fn thumbnail(path: &Path) -> Result<Rgba> {
    let img = crate::preprocess::load_image(path)?;
    let (w, h) = img.dimensions();
    // `imageops::thumbnail` fills the size it is given: keep the aspect.
    let s = (THUMBNAIL_SIDE as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1));
    let small = image::imageops::thumbnail(&img, tw, th);
    let pixels: Vec<u8> = small.pixels().flat_map(|p| [p.0[0], p.0[1], p.0[2], 255]).collect();
    Ok(Rgba { width: small.width() as usize, height: small.height() as usize, pixels: Arc::new(pixels) })
}

impl State {
    fn new(hub: Hub) -> State {
        State {
            hub,
            next_image_id: 1,
            image: None,
            source: None,
            spec: None,
            variants: HashMap::new(),
            attentions: HashMap::new(),
            input: None,
            top1: HashMap::new(),
            maps: HashMap::new(),
            quant: QuantOptions::default(),
        }
    }

    fn handle(&mut self, cmd: Command, out: &Out, cancel: &AtomicBool) -> Result<()> {
        match cmd {
            Command::OpenImage(src) => self.open_image(src, false, out),
            Command::OpenTruncatedImage(src) => self.open_image(src, true, out),
            Command::SetModel { spec, device } => self.set_model(&spec, &device, out, cancel),
            Command::Analyze { variants, map, cmap, opacity } => self.analyze(&variants, map, cmap, opacity, out),
            Command::Overlay { variants, map, cmap, opacity } => self.overlays(&variants, map, cmap, opacity, out),
            Command::Benchmark { variants, cfg } => self.benchmark(&variants, &cfg, out, cancel),
            Command::ExportCsv { path, results } => {
                out.send(Reply::Busy(format!("writing {}", path.display())));
                crate::report::write_csv(&path, &results)?;
                out.send(Reply::Exported { path, rows: results.len() });
                Ok(())
            }
            Command::Evaluate { source, variants } => self.evaluate(&source, &variants, out, cancel),
            Command::Profile { variants, runs } => self.profile(&variants, runs, out, cancel),
            Command::Crash => panic!("deliberate crash for testing"),
            Command::SetQuant(opts) => {
                self.set_quant(opts);
                Ok(())
            }
            Command::RankLayers { variant, folder, image_name } => {
                self.rank_layers(variant, folder, image_name, out, cancel)
            }
        }
    }

    fn open_image(&mut self, src: ImageSource, allow_truncated: bool, out: &Out) -> Result<()> {
        // Large images take seconds to decode: say so.
        out.send(Reply::Busy(format!("decoding {}", src.name())));
        let (name, loaded) = match &src {
            ImageSource::Path(p) => (p.display().to_string(), crate::preprocess::load_image_with(p, allow_truncated)?),
            ImageSource::Bytes { name, bytes } => {
                (name.clone(), crate::preprocess::decode_image_with(bytes, allow_truncated)?)
            }
        };
        let (img, truncated) = (loaded.image, loaded.truncated);
        let (w, h) = img.dimensions();
        let shown = if w.max(h) > DISPLAY_MAX_SIDE {
            let s = DISPLAY_MAX_SIDE as f64 / w.max(h) as f64;
            let (dw, dh) = (((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1));
            image::imageops::resize(&img, dw, dh, image::imageops::FilterType::Triangle)
        } else {
            img.clone()
        };
        let rgba: Vec<u8> = shown.pixels().flat_map(|p| [p.0[0], p.0[1], p.0[2], 255]).collect();
        let id = self.next_image_id;
        self.next_image_id += 1;
        self.image = Some((id, Arc::new(img)));
        self.attentions.clear();
        self.maps.clear();
        self.top1.clear();
        out.send(Reply::ImageLoaded {
            image_id: id,
            name,
            path: match src {
                ImageSource::Path(p) => Some(p),
                ImageSource::Bytes { .. } => None,
            },
            display: Rgba { width: shown.width() as usize, height: shown.height() as usize, pixels: Arc::new(rgba) },
            width: w,
            height: h,
            truncated,
        });
        Ok(())
    }

    fn set_model(&mut self, spec: &str, device: &str, out: &Out, cancel: &AtomicBool) -> Result<()> {
        let device = device_from_name(device)?;
        out.send(Reply::Busy(format!("loading {spec}")));
        let mut progress = |ev: DownloadEvent| {
            if cancel.load(Ordering::Relaxed) {
                // hf-hub's download loop cannot be interrupted otherwise; the panic is caught
                // by the worker, the partial download stays a temporary file hf-hub ignores.
                std::panic::panic_any(CANCEL_PANIC.to_string());
            }
            match ev {
                DownloadEvent::Started { file, total_bytes } => {
                    out.send(Reply::Download { file, done: 0, total: total_bytes })
                }
                DownloadEvent::Progress { file, bytes } => out.send(Reply::Download { file, done: bytes, total: 0 }),
                DownloadEvent::Finished { .. } => {}
            }
        };
        let model = crate::zoo::load_model_as_is(spec, &self.hub, &device, &mut progress)?;
        let c = &model.config;
        let summary = ModelSummary {
            spec: spec.to_string(),
            architecture: c.architecture.clone(),
            params: model.weights.param_count(),
            depth: c.depth,
            heads: c.heads,
            image_size: c.image_size,
            classes: c.num_classes(),
            prefix_tokens: c.num_prefix_tokens(),
            recipe: model.recipe.describe(),
            stored_variant: model.variant,
            device: crate::device::describe(&model.device),
            int8_kernel: crate::device::Int8Kernel::for_device(&model.device),
        };
        self.variants.clear();
        self.attentions.clear();
        self.maps.clear();
        self.top1.clear();
        // Kept layers name another model's layers; the same model (on another device) keeps
        // them. The window's state applies the same rule.
        if self.spec.as_deref() != Some(spec) {
            self.quant = QuantOptions::default();
        }
        self.variants.insert(model.variant, model.clone());
        self.source = Some(model);
        self.spec = Some(spec.to_string());
        out.send(Reply::ModelLoaded(summary));
        Ok(())
    }

    fn variant(&mut self, v: Variant, out: &Out) -> Result<&Model> {
        if !self.variants.contains_key(&v) {
            let source = self.source.as_ref().context("no model is loaded")?;
            let kept = self.quant.keep_fp32.len();
            out.send(Reply::Busy(match kept {
                0 => format!("quantizing to {v}"),
                n => format!("quantizing to {v}, {n} layer(s) kept fp32"),
            }));
            let m = source.to_variant(v, self.quant.clone())?;
            self.variants.insert(v, m);
        }
        Ok(&self.variants[&v])
    }

    fn analyze(&mut self, variants: &[Variant], map: Request, cmap: Colormap, opacity: f32, out: &Out) -> Result<()> {
        let Some((image_id, img)) = self.image.clone() else { bail!("no image is open") };
        for &v in variants {
            let model = self.variant(v, out)?;
            let label = model.label();
            out.send(Reply::Busy(format!("classifying with {label}")));
            let x = model.preprocess(&img)?;
            let t = Instant::now();
            let fwd = model.forward(&x, Capture::ATTENTIONS)?;
            let top5 = model.top_k(&fwd.logits, 5)?.remove(0);
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let logits = fwd.logits.flatten_all()?.to_vec1::<f32>()?;
            let att = Attentions::from_tensors(fwd.attentions.as_deref().unwrap_or_default(), 0)?;
            self.top1.insert(v, top5[0].index);
            out.send(Reply::Classified { image_id, variant: v, label, top5, logits, ms });
            self.attentions.insert(v, (image_id, att));
            self.input = Some((image_id, x));
        }
        self.overlays(variants, map, cmap, opacity, out)
    }

    fn overlays(&mut self, variants: &[Variant], map: Request, cmap: Colormap, opacity: f32, out: &Out) -> Result<()> {
        let Some((image_id, img)) = self.image.clone() else { return Ok(()) };
        let Some(source) = self.source.as_ref() else { return Ok(()) };
        let prefix = source.config.num_prefix_tokens();
        let (w, h) = img.dimensions();
        let s = (DISPLAY_MAX_SIDE as f64 / w.max(h) as f64).min(1.0);
        let (ow, oh) = (((w as f64 * s).round() as usize).max(1), ((h as f64 * s).round() as usize).max(1));
        // What the model saw, in the displayed copy's pixels: the map covers it, the rest is dimmed.
        let region = source.recipe.seen_region(w, h)?.scaled(ow as f64 / w as f64, oh as f64 / h as f64);
        for &v in variants {
            let Some((id, _)) = self.attentions.get(&v) else { continue };
            if *id != image_id {
                continue;
            }
            let heat = match self.maps.get(&v) {
                Some((id, m, heat)) if *id == image_id && *m == map => heat.clone(),
                _ => {
                    let heat = self.heatmap(v, image_id, map, prefix, out)?;
                    self.maps.insert(v, (image_id, map, heat.clone()));
                    heat
                }
            };
            let rgba = overlay_layer(&heat, region, ow, oh, cmap, opacity);
            out.send(Reply::Overlay {
                image_id,
                variant: v,
                rgba: Rgba { width: ow, height: oh, pixels: Arc::new(rgba) },
            });
        }
        Ok(())
    }

    fn heatmap(&mut self, v: Variant, image_id: u64, map: Request, prefix: usize, out: &Out) -> Result<Heatmap> {
        match map {
            Request::Attention(m) => heatmap(&self.attentions[&v].1, prefix, m),
            Request::Attribution { class } => {
                let x = match &self.input {
                    Some((id, x)) if *id == image_id => x.to_device(&candle_core::Device::Cpu)?,
                    _ => bail!("the image has not been classified yet"),
                };
                let class = class.or_else(|| self.top1.get(&v).copied()).context("no class to explain")?;
                out.send(Reply::Busy(format!("attribution for class {class} ({v})")));
                let model = self.variant(v, out)?;
                if !model.device.is_cpu() {
                    bail!("attribution needs the model on the CPU; choose Rollout or Raw on {:?}", model.device);
                }
                grid_heatmap(&attribution(model, &x, class)?.row, prefix)
            }
        }
    }

    /// `eval` on the loaded model's variants, the very models the main view classifies with, so
    /// a flipped image opened from the results shows the same top-1s.
    fn evaluate(&mut self, source: &Path, variants: &[Variant], out: &Out, cancel: &AtomicBool) -> Result<()> {
        use crate::eval::{ClassResolver, discover, evaluate_cancellable};
        let spec = self.spec.clone().context("no model is loaded")?;
        let labels = self.source.as_ref().context("no model is loaded")?.config.labels.clone();
        out.send(Reply::Busy(format!("reading {}", source.display())));
        let images = discover(source, &ClassResolver::new(&labels))?;
        for &v in variants {
            self.variant(v, out)?;
        }
        let models: Vec<&Model> = variants.iter().map(|v| &self.variants[v]).collect();
        out.send(Reply::Busy(format!("evaluating {}", source.display())));
        out.send(Reply::EvalProgress { done: 0, total: images.len() });
        let name = source.display().to_string();
        let report = evaluate_cancellable(&spec, &name, &models, &images, 5, Some(cancel), &mut |done, total| {
            out.send(Reply::EvalProgress { done, total })
        })?;
        let mut thumbnails: Vec<(String, Rgba)> = Vec::new();
        for flip in report.variants.iter().flat_map(|v| &v.flips) {
            if thumbnails.len() >= MAX_THUMBNAILS || thumbnails.iter().any(|(f, _)| *f == flip.file) {
                continue;
            }
            // Decoded a moment ago; if it is gone now, its entry shows without a picture.
            if let Ok(t) = thumbnail(Path::new(&flip.file)) {
                thumbnails.push((flip.file.clone(), t));
            }
        }
        out.send(Reply::EvalDone { report: Arc::new(report), thumbnails });
        Ok(())
    }

    fn profile(&mut self, variants: &[Variant], runs: usize, out: &Out, cancel: &AtomicBool) -> Result<()> {
        let spec = self.spec.clone().context("no model is loaded")?;
        for &v in variants {
            self.variant(v, out)?;
        }
        let models: Vec<&Model> = variants.iter().map(|v| &self.variants[v]).collect();
        if models.iter().any(|m| !m.device.is_cpu()) {
            bail!("stages can only be timed on the CPU (GPU ops are asynchronous): switch the device to CPU");
        }
        out.send(Reply::Busy("profiling".into()));
        out.send(Reply::ProfileProgress { done: 0, total: runs });
        let report =
            crate::profile::profile_cancellable(&models, PROFILE_WARMUP, runs, Some(cancel), &mut |done, total| {
                out.send(Reply::ProfileProgress { done, total })
            })?;
        out.send(Reply::Profiled { model: spec, threads: rayon::current_num_threads(), report: Arc::new(report) });
        Ok(())
    }

    fn set_quant(&mut self, opts: QuantOptions) {
        if opts == self.quant {
            return;
        }
        self.quant = opts;
        // Every variant made with the old options goes (an exported file's own variant stays:
        // it is the model as loaded, not made here).
        let stored = self.source.as_ref().map(|m| m.variant);
        let stale: Vec<Variant> =
            self.variants.keys().copied().filter(|v| *v != Variant::Fp32 && Some(*v) != stored).collect();
        for v in stale {
            self.variants.remove(&v);
            self.attentions.remove(&v);
            self.maps.remove(&v);
            self.top1.remove(&v);
        }
    }

    fn rank_layers(
        &mut self,
        variant: Variant,
        folder: Option<PathBuf>,
        image_name: String,
        out: &Out,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let source = self.source.as_ref().context("no model is loaded")?;
        if source.variant != Variant::Fp32 {
            bail!(
                "ranking layers needs the fp32 model as the reference, and {} holds {} weights: load the original checkpoint",
                source.display_name(),
                source.label()
            );
        }
        let (x, on) = match folder {
            None => {
                let (_, img) = self.image.as_ref().context("no image is open")?;
                (source.preprocess(img)?, image_name)
            }
            Some(dir) => {
                let files = images_in(&dir)?;
                out.send(Reply::Busy(format!("reading {} images of {}", files.len(), dir.display())));
                let imgs = files.iter().map(|f| crate::preprocess::load_image(f)).collect::<Result<Vec<_>>>()?;
                (source.preprocess_batch(&imgs)?, format!("{} ({} images)", dir.display(), imgs.len()))
            }
        };
        out.send(Reply::Busy(format!("ranking the layers of {variant} on {on}")));
        // The ranking is of single layers: it starts from every layer quantized, whatever is kept now.
        let opts = QuantOptions { keep_fp32: Default::default(), ..self.quant.clone() };
        let ranked = analyze(source, variant, &opts, &x, &mut |done, total| {
            if cancel.load(Ordering::Relaxed) {
                return Err(crate::bench::Cancelled.into());
            }
            out.send(Reply::SensitivityProgress { done, total });
            Ok(())
        });
        match ranked {
            Ok(ranking) => {
                out.send(Reply::SensitivityDone(SensitivityReport { ranking: Arc::new(ranking), source: on }))
            }
            // Stopped between two models; nothing of the worker's state was changed.
            Err(e) if e.downcast_ref::<crate::bench::Cancelled>().is_some() => {
                out.send(Reply::Cancelled("sensitivity ranking cancelled".into()))
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn benchmark(&mut self, variants: &[Variant], cfg: &BenchConfig, out: &Out, cancel: &AtomicBool) -> Result<()> {
        let source = self.source.as_ref().context("no model is loaded")?;
        let spec = self.spec.clone().context("no model is loaded")?;
        let device = source.device.clone();
        let input = match &self.image {
            Some((_, img)) => BenchInput::Images(vec![("image".into(), (**img).clone())]),
            None => BenchInput::Synthetic,
        };
        out.send(Reply::Busy("benchmarking".into()));
        // Beside each quantized variant, its mixed form with the layers the window keeps fp32:
        // both measured in one run, for the frontier.
        let keep = KeepFp32::Layers(self.quant.keep_fp32.clone());
        let schemes = [self.quant.scheme];
        let job = BenchJob {
            spec: &spec,
            variants,
            cfg,
            input: &input,
            cancel: Some(cancel),
            keep: &keep,
            schemes: &schemes,
        };
        let results = bench_model(&job, &self.hub, &device, &mut |_| {}, &mut |ev| match ev {
            BenchEvent::Phase { phase, .. } => out.send(Reply::BenchPhase(phase)),
            BenchEvent::Warmup { done, total, .. } => out.send(Reply::BenchPhase(format!("warm-up {done}/{total}"))),
            BenchEvent::Sample { variant, label, ms, run, .. } => {
                out.send(Reply::BenchSample { variant, label, ms, run })
            }
        })?;
        out.send(Reply::BenchDone(results));
        Ok(())
    }
}
