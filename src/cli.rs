//! The command line: `classify`, `models`, `download`. Every failure is one line on stderr that
//! names the file and the problem, and a non-zero exit; nothing panics on bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::hub::{DownloadEvent, Hub};
use candle_core::Device;

use crate::model::{Prediction, device_from_name};
use crate::preprocess::load_image;
use crate::quant::metrics::compare_variants;
use crate::quant::{Variant, export, parse_variants};
use crate::zoo::{DEFAULT_MODEL, ModelSource, ZOO, load_model, load_model_as_is};

#[derive(Parser, Debug)]
#[command(
    name = "vit-workbench",
    version,
    about = "Classify images with ViT/DeiT and measure what quantization costs and loses.",
    long_about = "Without a command, opens the workbench window (on IMAGE, if given).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Image to open in the window.
    pub image: Option<PathBuf>,
    /// Model for the window: hub id, folder or exported file.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Variant for the window.
    #[arg(long)]
    pub variant: Option<Variant>,
    /// Second variant of the window's compare view (fp32, int8, mobile, or none).
    #[arg(long)]
    pub compare: Option<String>,
    /// Save a PNG of the window once the first result is shown, then exit.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Run a benchmark in the window once the first result is shown.
    #[arg(long)]
    pub benchmark: bool,
    /// Use only the local Hugging Face cache (same as HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    pub offline: bool,
    /// Threads for every kernel (default: physical cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the top-K labels of each image.
    Classify {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Hub id or local folder.
        #[arg(long, short, default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// cpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// fp32, int8 or mobile (default: fp32, or the variant an exported file holds).
        #[arg(long)]
        variant: Option<Variant>,
    },
    /// Write a variant of a model as one self-contained file (safetensors + metadata).
    Export {
        #[arg(long, short, default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(long, default_value = "int8")]
        variant: Variant,
        #[arg(long)]
        out: PathBuf,
    },
    /// What each variant loses against fp32 on the same images: agreement, KL, per-layer error.
    Compare {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long, short, default_value = DEFAULT_MODEL)]
        model: String,
        /// Comma-separated; fp32 is always the reference.
        #[arg(long, default_value = "fp32,int8,mobile")]
        variants: String,
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Measure latency, size and accuracy of variants; print a table, write CSV/JSON reports.
    Bench(BenchArgs),
    /// Write each image with the explanation overlay drawn over the part the model saw, as the
    /// window draws it, at the image's own size.
    Explain(ExplainArgs),
    /// Measure each CPU kernel (int8 per SIMD path, fp32, attention, elementwise) on ViT-B/16
    /// shapes against this machine's int8 peak.
    Kernels {
        /// Minimum seconds of timed calls per kernel.
        #[arg(long, default_value_t = 1.0)]
        min_seconds: f64,
    },
    /// List the model zoo and what is already cached.
    Models,
    /// Download a model into the Hugging Face cache.
    Download { model: String },
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Comma-separated hub ids, folders or exported files.
    #[arg(long, default_value = DEFAULT_MODEL)]
    models: String,
    /// Comma-separated (default: fp32,int8,mobile; for an exported file, the variant it holds).
    #[arg(long)]
    variants: Option<String>,
    /// Image files or folders: timed on the first (batch) image(s); agreement over all of them.
    /// Without images a synthetic input is timed.
    #[arg(long, num_args = 1..)]
    images: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Untimed warm-up runs per variant.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Minimum timed runs per variant.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Minimum seconds of timed runs per variant.
    #[arg(long, default_value_t = 3.0)]
    min_seconds: f64,
    /// Maximum timed runs per variant.
    #[arg(long, default_value_t = 100_000)]
    max_runs: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write the report as CSV (schema in the README).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write every result, samples included, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the per-run samples as CSV.
    #[arg(long)]
    raw: Option<PathBuf>,
}

/// How `explain` computes its map.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExplainMethod {
    /// Class-specific gradient-weighted attention relevance (Chefer et al. 2021).
    Attribution,
    /// Attention rollout (class-agnostic).
    Rollout,
    /// One layer's class-token attention (class-agnostic).
    Raw,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionArg {
    Mean,
    Max,
    Min,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColormapArg {
    Inferno,
    Viridis,
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Hub id, folder or exported file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// fp32, int8 or mobile (default: fp32, or the variant an exported file holds).
    #[arg(long)]
    variant: Option<Variant>,
    #[arg(long, value_enum, default_value = "attribution")]
    method: ExplainMethod,
    /// Class index to explain (attribution; default: the top-1 class).
    #[arg(long)]
    class: Option<usize>,
    /// Layer of the raw attention map (default: the last).
    #[arg(long)]
    layer: Option<usize>,
    /// Head of the raw attention map (default: the mean of the heads).
    #[arg(long)]
    head: Option<usize>,
    /// Rollout's head fusion.
    #[arg(long, value_enum, default_value = "max")]
    fusion: FusionArg,
    /// Rollout's share of the weakest attention weights dropped per layer, 0..0.99.
    #[arg(long, default_value_t = 0.9)]
    discard: f32,
    /// Opacity of the map, 0..1.
    #[arg(long, default_value_t = crate::explain::DEFAULT_OPACITY)]
    opacity: f32,
    #[arg(long, value_enum, default_value = "inferno")]
    colormap: ColormapArg,
    /// A .png file (one image), or a folder (created if missing) for `<stem>.<method>.png` files.
    #[arg(long, required = true)]
    out: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    crate::kernels::init_threads(cli.threads);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let hub = Hub::from_env(cli.offline);
    match cli.command {
        None => crate::app::run(crate::app::GuiOptions {
            image: cli.image,
            model: cli.model,
            variant: cli.variant,
            compare: match cli.compare.as_deref() {
                None => None,
                Some("none") => Some(None),
                Some(v) => Some(Some(v.parse()?)),
            },
            screenshot: cli.screenshot,
            benchmark: cli.benchmark,
            offline: cli.offline,
            hub: None,
        }),
        Some(Command::Models) => list_models(&hub),
        Some(Command::Kernels { min_seconds }) => {
            // On a pool worker, as the model's forward runs.
            let report = rayon::scope(|_| crate::kernels::bench::run(min_seconds));
            print!("{}", crate::kernels::bench::table(&report));
            Ok(())
        }
        Some(Command::Bench(args)) => bench(&hub, &args),
        Some(Command::Explain(args)) => explain(&hub, &args),
        Some(Command::Download { model }) => {
            let source = ModelSource::parse(&model)?;
            let (files, _) = source.resolve(&hub, &mut download_bar())?;
            println!("{model}: {} and {}", files.config.display(), files.weights.display());
            Ok(())
        }
        Some(Command::Classify { images, model, top, json, device, variant }) => {
            classify(&hub, &images, &model, top, json, &device, variant)
        }
        Some(Command::Export { model, variant, out }) => {
            let m = load_model(&model, variant, &hub, &Device::Cpu, &mut download_bar())?;
            let bytes = export::export(&m, &out)?;
            println!("{} ({variant}): wrote {} ({})", m.id, out.display(), human_bytes(bytes));
            Ok(())
        }
        Some(Command::Compare { images, model, variants, json }) => compare(&hub, &images, &model, &variants, json),
    }
}

/// A progress bar on stderr fed by download events.
pub fn download_bar() -> impl FnMut(DownloadEvent) {
    let mut bar: Option<ProgressBar> = None;
    move |ev| match ev {
        DownloadEvent::Started { file, total_bytes } => {
            let b = ProgressBar::new(total_bytes);
            b.set_style(
                ProgressStyle::with_template("{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message(file);
            bar = Some(b);
        }
        DownloadEvent::Progress { bytes, .. } => {
            if let Some(b) = &bar {
                b.set_position(bytes);
            }
        }
        DownloadEvent::Finished { .. } => {
            if let Some(b) = bar.take() {
                b.finish();
            }
        }
    }
}

fn list_models(hub: &Hub) -> Result<()> {
    println!("Hugging Face cache: {}{}", hub.cache_dir.display(), if hub.offline { " (offline)" } else { "" });
    println!("{:<48} {:<24} {:>7}  {:<8} preprocessing", "model", "family", "params", "cached");
    for e in ZOO {
        let cached = if hub.is_cached(e.id, Some(e.weights)) { "yes" } else { "no" };
        let recipe = match e.recipe {
            Some(r) => r().describe(),
            None => e.note.to_string(),
        };
        println!("{:<48} {:<24} {:>6.1}M  {:<8} {}", e.id, e.family, e.params_millions, cached, recipe);
    }
    println!(
        "\nAny local folder with config.json + model.safetensors or pytorch_model.bin (transformers or timm layout) works too."
    );
    Ok(())
}

#[derive(Serialize)]
struct ImageResult<'a> {
    image: String,
    model: &'a str,
    variant: &'a str,
    top: Vec<Prediction>,
}

fn classify(
    hub: &Hub,
    images: &[PathBuf],
    model_spec: &str,
    k: usize,
    json: bool,
    device: &str,
    variant: Option<Variant>,
) -> Result<()> {
    let device = device_from_name(device)?;
    let model = load_model_default(model_spec, variant, hub, &device)?;
    let variant_name = model.variant.name();
    let k = k.clamp(1, model.config.num_classes());
    let mut results = Vec::new();
    for path in images {
        let img = load_image(path)?;
        let top = model.classify(&img, k).with_context(|| format!("cannot classify {}", path.display()))?;
        results.push(ImageResult { image: path.display().to_string(), model: model_spec, variant: variant_name, top });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            println!("{}  ({}, {}, {})", r.image, r.model, r.variant, if device.is_cpu() { "cpu" } else { "cuda" });
            for (i, p) in r.top.iter().enumerate() {
                println!("  {:>2}. {:<40} {:>7.3}%  [{}]", i + 1, p.label, p.probability * 100.0, p.index);
            }
        }
    }
    Ok(())
}

/// Loads `spec` as `variant`, or as it is stored when no variant is asked for (an exported file
/// holds one variant; a checkpoint is fp32).
fn load_model_default(spec: &str, variant: Option<Variant>, hub: &Hub, device: &Device) -> Result<crate::model::Model> {
    let model = load_model_as_is(spec, hub, device, &mut download_bar())?;
    match variant {
        Some(v) => model.to_variant(v, Default::default()),
        None => Ok(model),
    }
}

/// Where `explain` writes the picture of each image.
fn explain_outputs(images: &[PathBuf], out: &std::path::Path, method: ExplainMethod) -> Result<Vec<PathBuf>> {
    let is_png = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let outputs: Vec<PathBuf> = if is_png && !out.is_dir() {
        if images.len() > 1 {
            anyhow::bail!(
                "--out {} is one PNG file but {} images were given: pass a folder instead",
                out.display(),
                images.len()
            );
        }
        crate::fsutil::check_writable(out)?;
        vec![out.to_path_buf()]
    } else {
        if out.exists() && !out.is_dir() {
            anyhow::bail!("--out {} is a file, not a folder: give a .png file name or a folder", out.display());
        }
        if out.extension().is_some() && !out.is_dir() {
            anyhow::bail!("--out {}: expected a .png file or a folder", out.display());
        }
        if !out.is_dir() {
            std::fs::create_dir(out).with_context(|| format!("cannot create the folder {}", out.display()))?;
        }
        let suffix = format!("{method:?}").to_lowercase();
        images
            .iter()
            .map(|p| {
                let stem = p.file_stem().with_context(|| format!("{}: not a file name", p.display()))?;
                Ok(out.join(format!("{}.{suffix}.png", stem.to_string_lossy())))
            })
            .collect::<Result<_>>()?
    };
    // Never overwrite an input, and never write two results to one file.
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
    for (i, o) in outputs.iter().enumerate() {
        if let Some(j) = outputs[..i].iter().position(|x| x == o) {
            anyhow::bail!(
                "{} and {} would both be written to {}: give them different names or explain them separately",
                images[j].display(),
                images[i].display(),
                o.display()
            );
        }
        if let Some(c) = canonical(o)
            && let Some(img) = images.iter().find(|p| canonical(p) == Some(c.clone()))
        {
            anyhow::bail!("--out {} is the input image {}: refusing to overwrite it", o.display(), img.display());
        }
    }
    Ok(outputs)
}

fn explain(hub: &Hub, a: &ExplainArgs) -> Result<()> {
    use crate::explain::{AttentionMap, Colormap, HeadFusion, Request, explain_image, render};
    if !(0.0..=1.0).contains(&a.opacity) {
        anyhow::bail!("--opacity {} is outside 0..1", a.opacity);
    }
    if !(0.0..1.0).contains(&a.discard) {
        anyhow::bail!("--discard {} is outside 0..0.99", a.discard);
    }
    if a.class.is_some() && a.method != ExplainMethod::Attribution {
        anyhow::bail!(
            "--class applies to --method attribution only (rollout and raw attention do not depend on the class)"
        );
    }
    if (a.layer.is_some() || a.head.is_some()) && a.method != ExplainMethod::Raw {
        anyhow::bail!("--layer and --head apply to --method raw only");
    }
    let outputs = explain_outputs(&a.images, &a.out, a.method)?;
    let model = load_model_default(&a.model, a.variant, hub, &Device::Cpu)?;
    let c = &model.config;
    if let Some(k) = a.class.filter(|k| *k >= c.num_classes()) {
        anyhow::bail!("--class {k}: {} has {} classes (0..{})", a.model, c.num_classes(), c.num_classes() - 1);
    }
    let layer = a.layer.unwrap_or(c.depth - 1);
    if layer >= c.depth {
        anyhow::bail!("--layer {layer}: {} has {} layers (0..{})", a.model, c.depth, c.depth - 1);
    }
    if let Some(h) = a.head.filter(|h| *h >= c.heads) {
        anyhow::bail!("--head {h}: {} has {} heads per layer (0..{})", a.model, c.heads, c.heads - 1);
    }
    let request = match a.method {
        ExplainMethod::Attribution => Request::Attribution { class: a.class },
        ExplainMethod::Rollout => Request::Attention(AttentionMap::Rollout {
            fusion: match a.fusion {
                FusionArg::Mean => HeadFusion::Mean,
                FusionArg::Max => HeadFusion::Max,
                FusionArg::Min => HeadFusion::Min,
            },
            discard_ratio: a.discard,
        }),
        ExplainMethod::Raw => Request::Attention(AttentionMap::Raw { layer, head: a.head }),
    };
    let cmap = match a.colormap {
        ColormapArg::Inferno => Colormap::Inferno,
        ColormapArg::Viridis => Colormap::Viridis,
    };
    for (path, out) in a.images.iter().zip(&outputs) {
        let img = load_image(path)?;
        let e = explain_image(&model, &img, request).with_context(|| format!("cannot explain {}", path.display()))?;
        let picture = render(&img, &e, cmap, a.opacity);
        let mut png = Vec::new();
        picture.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        crate::fsutil::write_atomic(out, &png)?;
        let top = &e.top[0];
        let what = match e.class {
            Some(k) => {
                let label = c.labels.get(k).cloned().unwrap_or_else(|| format!("class {k}"));
                format!("attribution for [{k}] {label}")
            }
            None => format!("{:?}", a.method).to_lowercase(),
        };
        let r = e.region;
        let seen = if r.covers(img.width(), img.height()) {
            "the whole image".to_string()
        } else {
            format!("x {:.0}..{:.0}, y {:.0}..{:.0}", r.left, r.right, r.top, r.bottom)
        };
        println!(
            "{}: top-1 {} {:.1}% [{}]; {what} ({}) -> {} ({}x{}, model saw {seen})",
            path.display(),
            top.label,
            100.0 * top.probability,
            top.index,
            model.variant,
            out.display(),
            img.width(),
            img.height()
        );
    }
    Ok(())
}

/// `1234567` -> `1.23 MB`.
pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1_000_000_000 => format!("{:.2} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.2} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

fn compare(hub: &Hub, images: &[PathBuf], model_spec: &str, variants: &str, json: bool) -> Result<()> {
    let variants = parse_variants(variants)?;
    let reference = load_model_as_is(model_spec, hub, &Device::Cpu, &mut download_bar())?;
    if reference.variant != Variant::Fp32 {
        anyhow::bail!(
            "compare needs the fp32 model as its reference, and {model_spec} holds {} weights: pass the original checkpoint (or an fp32 export) with --model",
            reference.variant
        );
    }
    let others = variants.iter().map(|v| reference.to_variant(*v, Default::default())).collect::<Result<Vec<_>>>()?;
    let imgs = images.iter().map(|p| load_image(p)).collect::<Result<Vec<_>>>()?;
    let report = compare_variants(&reference, &others.iter().collect::<Vec<_>>(), &imgs)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let fp32_size = report.iter().find(|r| r.variant == Variant::Fp32).map(|r| r.file_bytes);
    println!(
        "{} on {} image(s), cpu, {} threads; reference: fp32",
        reference.id,
        imgs.len(),
        rayon::current_num_threads()
    );
    println!(
        "{:<7} {:>10} {:>7} {:>12} {:>7} {:>7} {:>10} {:>10} {:>10}",
        "variant", "file", "vs fp32", "weights mem", "top-1", "top-5", "KL mean", "max|dlog|", "min cos"
    );
    for r in &report {
        let s = &r.summary;
        let rel = fp32_size.map(|f| format!("{:.1}%", 100.0 * r.file_bytes as f64 / f as f64)).unwrap_or_default();
        println!(
            "{:<7} {:>10} {:>7} {:>12} {:>6.0}% {:>6.0}% {:>10.2e} {:>10.4} {:>10.6}",
            r.variant.name(),
            human_bytes(r.file_bytes),
            rel,
            human_bytes(r.weight_bytes as u64),
            100.0 * s.top1_agreement,
            100.0 * s.top5_overlap,
            s.mean_kl_div,
            s.max_abs_dlogit,
            s.min_cosine
        );
    }
    let quantized: Vec<_> = report.iter().filter(|r| r.variant != Variant::Fp32).collect();
    if !quantized.is_empty() {
        println!("\nper-layer relative error of each block's output vs fp32 (mean over images):");
        print!("{:<6}", "block");
        for r in &quantized {
            print!(" {:>10}", r.variant.name());
        }
        println!();
        for layer in 0..reference.config.depth {
            print!("{layer:<6}");
            for r in &quantized {
                print!(" {:>10.5}", r.per_layer_error[layer]);
            }
            println!();
        }
        for r in &quantized {
            let jumps: Vec<f64> = r
                .per_layer_error
                .iter()
                .scan(0.0, |prev, e| {
                    let d = e - *prev;
                    *prev = *e;
                    Some(d)
                })
                .collect();
            if let Some((i, d)) = jumps.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
                println!("{}: the largest error increase is at block {i} (+{d:.5})", r.variant.name());
            }
        }
    }
    println!("\nper image (top-1 of each variant):");
    let model_outs: Vec<_> = std::iter::once(&reference).chain(others.iter()).collect();
    for (p, img) in images.iter().zip(&imgs) {
        let mut line = format!("{}:", p.display());
        for (i, m) in model_outs.iter().enumerate().skip(1) {
            let top = m.classify(img, 1)?;
            line.push_str(&format!("  {} {} {:.3}", variants[i - 1].name(), top[0].label, top[0].probability));
        }
        println!("{line}");
    }
    Ok(())
}

/// Files named directly, and the image files inside named folders (sorted).
pub fn expand_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| crate::preprocess::has_image_extension(f))
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!("{}: no image files in this folder", p.display());
            }
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn bench(hub: &Hub, a: &BenchArgs) -> Result<()> {
    use crate::bench::{BenchConfig, BenchEvent, BenchInput, BenchJob, bench_model};
    // Fail before minutes of measuring, not after.
    for p in [&a.csv, &a.json, &a.raw].into_iter().flatten() {
        crate::fsutil::check_writable(p)?;
    }
    let given_variants = a.variants.as_deref().map(parse_variants).transpose()?;
    let device = device_from_name(&a.device)?;
    let cfg = BenchConfig {
        warmup: a.warmup,
        min_runs: a.runs,
        min_seconds: a.min_seconds,
        max_runs: a.max_runs,
        batch: a.batch,
    }
    .clamped();
    let input = if a.images.is_empty() {
        BenchInput::Synthetic
    } else {
        let files = expand_images(&a.images)?;
        BenchInput::Images(files.iter().map(|f| Ok((f.display().to_string(), load_image(f)?))).collect::<Result<_>>()?)
    };
    let models: Vec<&str> = a.models.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut results = Vec::new();
    for spec in &models {
        let variants = match &given_variants {
            Some(v) => v.clone(),
            // An exported file holds one variant: measure that one unless told otherwise.
            None => match export::stored_variant(std::path::Path::new(spec)) {
                Some(v) => vec![v],
                None => Variant::ALL.to_vec(),
            },
        };
        let bar = ProgressBar::new((variants.len() * (cfg.warmup + cfg.min_runs)) as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(spec.to_string());
        let mut samples_seen = 0u64;
        let job = BenchJob { spec, variants: &variants, cfg: &cfg, input: &input, cancel: None };
        let r = bench_model(&job, hub, &device, &mut download_bar(), &mut |ev| match ev {
            BenchEvent::Phase { phase, .. } => bar.set_message(phase),
            BenchEvent::Warmup { done, .. } => bar.set_position(done as u64),
            BenchEvent::Sample { variant, ms, .. } => {
                samples_seen += 1;
                let pos = (variants.len() * cfg.warmup) as u64 + samples_seen;
                if pos > bar.length().unwrap_or(0) {
                    bar.set_length(pos);
                }
                bar.set_position(pos);
                bar.set_message(format!("{variant} {ms:.2} ms"));
            }
        })?;
        bar.finish_and_clear();
        results.extend(r);
    }
    print_bench_table(&results);
    if let Some(p) = &a.csv {
        crate::report::write_csv(p, &results)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.raw {
        crate::report::write_raw_csv(p, &results)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.json {
        crate::fsutil::write_atomic(p, serde_json::to_string_pretty(&results)?.as_bytes())?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn print_bench_table(results: &[crate::bench::BenchResult]) {
    let Some(first) = results.first() else { return };
    let e = &first.env;
    println!("cpu: {} | {} | threads: {} | device: {} | batch {}", e.cpu, e.simd, e.threads, e.device, first.batch);
    println!(
        "{:<44} {:<7} {:>9} {:>9} {:>9} {:>8} {:>10} {:>7} {:>6} {:>6} {:>9}",
        "model", "variant", "p50 ms", "p90 ms", "first ms", "speedup", "file", "size", "top-1", "top-5", "KL"
    );
    let mut notes = Vec::new();
    for r in results {
        let fp32 = results.iter().find(|o| o.model == r.model && o.variant == Variant::Fp32);
        let speed = fp32.map(|f| f.stats.p50 / r.stats.p50);
        let size = fp32.filter(|f| f.file_bytes > 0).map(|f| r.file_bytes as f64 / f.file_bytes as f64);
        let acc = r.accuracy.as_ref();
        println!(
            "{:<44} {:<7} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>10} {:>7} {:>6} {:>6} {:>9}",
            r.model,
            r.variant.name(),
            r.stats.p50,
            r.stats.p90,
            r.first_ms,
            speed.map(|s| format!("{s:.2}x")).unwrap_or_default(),
            human_bytes(r.file_bytes),
            size.map(|s| format!("{:.1}%", 100.0 * s)).unwrap_or_default(),
            acc.map(|a| format!("{:.0}%", 100.0 * a.top1_agreement)).unwrap_or_default(),
            acc.map(|a| format!("{:.0}%", 100.0 * a.top5_overlap)).unwrap_or_default(),
            acc.map(|a| format!("{:.1e}", a.mean_kl_div)).unwrap_or_default(),
        );
        if let Some(s) = speed.filter(|s| *s < 1.0) {
            notes.push(format!("{} {} is {:.2}x SLOWER than fp32 here", r.model, r.variant, 1.0 / s));
        }
    }
    println!(
        "(p50/p90 over {} timed runs after {} warm-up; speed-up = fp32 p50 / variant p50)",
        first.stats.n, first.warmup
    );
    for n in notes {
        println!("note: {n}");
    }
}
