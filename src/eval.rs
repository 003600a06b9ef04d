//! Accuracy on labelled images: top-1 / top-k of each variant with 95% Wilson intervals, the
//! change against fp32, and the images whose top-1 changed. The labelled set is a folder with one
//! sub-folder per class or a CSV list `file,label`; a class is named by an ImageNet synset id
//! (`n02124075`), a label name of the model (`Egyptian cat`, case-insensitive) or a class index.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::model::{Capture, Model, top_indices};
use crate::quant::Variant;

const IMAGENET1K_SYNSETS: &str = include_str!("../assets/imagenet1k_synsets.txt");

/// Image file extensions read from class folders.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// The 1000 ImageNet-1k synset ids in class-index order.
pub fn imagenet1k_synsets() -> Vec<&'static str> {
    IMAGENET1K_SYNSETS.lines().collect()
}

/// One labelled image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabelledImage {
    pub file: PathBuf,
    /// Class index of the model.
    pub label: usize,
}

/// Resolves class names to class indices of one model.
pub struct ClassResolver<'a> {
    labels: &'a [String],
    synsets: Option<Vec<&'static str>>,
}

impl<'a> ClassResolver<'a> {
    /// Synset ids are understood only for 1000-class (ImageNet-1k) models.
    pub fn new(labels: &'a [String]) -> ClassResolver<'a> {
        ClassResolver { labels, synsets: (labels.len() == 1000).then(imagenet1k_synsets) }
    }

    /// `n02124075`, `Egyptian cat` (any case; also one comma-separated alias such as `tench` of
    /// `tench, Tinca tinca` when it names one class only) or `285`. `origin` names where the
    /// name was read, for the error.
    pub fn resolve(&self, name: &str, origin: &str) -> Result<usize> {
        let name = name.trim();
        if let Ok(i) = name.parse::<usize>() {
            if i < self.labels.len() {
                return Ok(i);
            }
            bail!("{origin}: class index {i} is out of range (the model has {} classes)", self.labels.len());
        }
        if is_synset_id(name) {
            let Some(synsets) = &self.synsets else {
                bail!(
                    "{origin}: `{name}` is an ImageNet synset id, but the model has {} classes, not ImageNet-1k's 1000",
                    self.labels.len()
                );
            };
            return synsets
                .iter()
                .position(|s| *s == name)
                .with_context(|| format!("{origin}: `{name}` is not one of the 1000 ImageNet-1k synset ids"));
        }
        let lower = name.to_lowercase();
        if let Some(i) = self.labels.iter().position(|l| l.to_lowercase() == lower) {
            return Ok(i);
        }
        let alias: Vec<usize> = (0..self.labels.len())
            .filter(|&i| self.labels[i].split(',').any(|a| a.trim().to_lowercase() == lower))
            .collect();
        if alias.len() == 1 {
            return Ok(alias[0]);
        }
        let close = self.close_matches(&lower);
        if close.is_empty() {
            bail!("{origin}: unknown class `{name}` (not a label of the model, a synset id or a class index)");
        }
        bail!("{origin}: unknown class `{name}`; close matches: {}", close.join(", "));
    }

    /// Up to five labels that contain `lower` as a word (or whose name `lower` contains), then
    /// the nearest by edit distance.
    fn close_matches(&self, lower: &str) -> Vec<String> {
        let limit = (lower.chars().count() / 3).max(2);
        let mut scored: Vec<(usize, &String)> = self
            .labels
            .iter()
            .filter_map(|l| {
                let ll = l.to_lowercase();
                let aliases: Vec<&str> = ll.split(',').map(str::trim).collect();
                let d = aliases.iter().map(|a| edit_distance(lower, a)).min().unwrap_or(usize::MAX);
                // `cat` for `Egyptian cat`, `tabby cat` for `tabby`.
                let word = |hay: &str, needle: &str| hay.split(|c: char| !c.is_alphanumeric()).any(|w| w == needle);
                let contains = (lower.len() >= 3 && word(&ll, lower))
                    || aliases.iter().any(|a| a.len() >= 4 && (word(lower, a) || lower.contains(a)));
                if contains { Some((0, l)) } else { (d <= limit).then_some((d, l)) }
            })
            .collect();
        scored.sort_by_key(|(d, l)| (*d, l.len()));
        scored.into_iter().take(5).map(|(_, l)| format!("`{l}`")).collect()
    }
}

fn is_synset_id(s: &str) -> bool {
    s.len() == 9 && s.starts_with('n') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn is_image_file(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The labelled images of `source`: a folder of class folders, or a CSV list `file,label`
/// (paths relative to the CSV's folder). Sorted by class folder then file; never empty.
pub fn discover(source: &Path, resolver: &ClassResolver) -> Result<Vec<LabelledImage>> {
    let images = if source.is_dir() {
        discover_folder(source, resolver)?
    } else if source.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
        discover_csv(source, resolver)?
    } else if source.exists() {
        bail!("{}: expected a folder of class folders or a .csv list (file,label)", source.display());
    } else {
        bail!("{}: no such folder or file", source.display());
    };
    if images.is_empty() {
        bail!("{}: no labelled images found", source.display());
    }
    Ok(images)
}

fn discover_folder(dir: &Path, resolver: &ClassResolver) -> Result<Vec<LabelledImage>> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    classes.sort();
    if classes.is_empty() {
        bail!(
            "{}: no class folders in this folder (expected one sub-folder per class, named by synset id, label or index)",
            dir.display()
        );
    }
    let mut out = Vec::new();
    for class_dir in classes {
        let name = class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let label = resolver.resolve(&name, &class_dir.display().to_string())?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .with_context(|| format!("cannot list {}", class_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image_file(p))
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|file| LabelledImage { file, label }));
    }
    Ok(out)
}

fn discover_csv(path: &Path, resolver: &ClassResolver) -> Result<Vec<LabelledImage>> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let headers = reader.headers().with_context(|| format!("{}: cannot read the header", path.display()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(file_col), Some(label_col)) = (col("file"), col("label")) else {
        bail!(
            "{}: the header must have the columns `file` and `label` (it has: {})",
            path.display(),
            headers.iter().collect::<Vec<_>>().join(",")
        );
    };
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.with_context(|| format!("{}: line {line} is not valid CSV", path.display()))?;
        let (Some(file), Some(label)) = (record.get(file_col), record.get(label_col)) else {
            bail!("{}: line {line} lacks the file or the label", path.display());
        };
        if file.is_empty() {
            bail!("{}: line {line} has an empty file name", path.display());
        }
        let label = resolver.resolve(label, &format!("{} line {line}", path.display()))?;
        let file = base.join(file);
        if !file.is_file() {
            bail!("{} line {line}: {} does not exist", path.display(), file.display());
        }
        out.push(LabelledImage { file, label });
    }
    Ok(out)
}

/// The first `n` images taken round-robin over the classes, so a limited run still sees every
/// class (in the original order within each).
pub fn limit_across_classes(images: Vec<LabelledImage>, n: usize) -> Vec<LabelledImage> {
    if n >= images.len() {
        return images;
    }
    let mut classes: Vec<(usize, std::collections::VecDeque<LabelledImage>)> = Vec::new();
    for img in images {
        match classes.iter_mut().find(|(l, _)| *l == img.label) {
            Some((_, q)) => q.push_back(img),
            None => classes.push((img.label, std::iter::once(img).collect())),
        }
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        for (_, q) in &mut classes {
            if out.len() < n
                && let Some(img) = q.pop_front()
            {
                out.push(img);
            }
        }
    }
    out
}

/// The 95% Wilson score interval of `successes` out of `n` (0..1 bounds; (0, 1) for n = 0).
pub fn wilson_interval(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    const Z: f64 = 1.959_963_984_540_054;
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let z2 = Z * Z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// One class of a prediction list.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranked {
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// One image's predictions by every variant.
#[derive(Clone, Debug, Serialize)]
pub struct ImagePredictions {
    pub file: String,
    pub label: usize,
    pub label_name: String,
    /// Per variant (same order as [`EvalReport::variants`]): the top-k, most probable first.
    pub top: Vec<Vec<Ranked>>,
}

/// An image whose top-1 differs between fp32 and a variant.
#[derive(Clone, Debug, Serialize)]
pub struct Flip {
    pub file: String,
    pub label: String,
    pub fp32: String,
    pub variant: String,
    /// `fp32`, the variant's name, or `neither`.
    pub right: String,
}

/// Accuracy of one variant.
#[derive(Clone, Debug, Serialize)]
pub struct VariantAccuracy {
    pub variant: Variant,
    /// The variant as shown (`int8+fp32[3]`, `int8[torch]`), from the model evaluated.
    pub label: String,
    /// Layers this variant keeps fp32, as benchmark rows list them (the window matches the two).
    pub kept_fp32: Vec<crate::model::LayerName>,
    pub images: usize,
    pub top1_correct: usize,
    pub topk_correct: usize,
    pub top1: f64,
    pub top1_low: f64,
    pub top1_high: f64,
    pub topk: f64,
    pub topk_low: f64,
    pub topk_high: f64,
    /// top1 - fp32's top1; `None` without fp32 among the variants.
    pub top1_delta_vs_fp32: Option<f64>,
    pub flips: Vec<Flip>,
}

/// Everything `eval` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub source: String,
    pub k: usize,
    pub classes: usize,
    pub variants: Vec<VariantAccuracy>,
    pub predictions: Vec<ImagePredictions>,
}

/// Classifies every image once per variant (decoded and preprocessed once, shared by all) and
/// counts. The variants must share one preprocessing (variants of one model do). Each image
/// goes through the same single-image forward as `classify`, so top-1 is identical to it.
pub fn evaluate(
    model_spec: &str,
    source: &str,
    models: &[&Model],
    images: &[LabelledImage],
    k: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    evaluate_cancellable(model_spec, source, models, images, k, None, on_progress)
}

/// The evaluation was stopped by the user (the window's Cancel); a typed error the worker
/// recognises by downcast. Nothing of the run is kept.
#[derive(Debug, thiserror::Error)]
#[error("evaluation cancelled")]
pub struct Cancelled;

/// [`evaluate`], stopping with [`Cancelled`] before the next image once `cancel` is set.
pub fn evaluate_cancellable(
    model_spec: &str,
    source: &str,
    models: &[&Model],
    images: &[LabelledImage],
    k: usize,
    cancel: Option<&std::sync::atomic::AtomicBool>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let first = models.first().context("no variants to evaluate")?;
    let labels = &first.config.labels;
    let k = k.clamp(1, labels.len().max(1));
    let mut predictions = Vec::with_capacity(images.len());
    for (n, img) in images.iter().enumerate() {
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(Cancelled.into());
        }
        let rgb = crate::preprocess::load_image(&img.file)?;
        let x = first.preprocess(&rgb).with_context(|| format!("cannot preprocess {}", img.file.display()))?;
        let mut top = Vec::with_capacity(models.len());
        for m in models {
            let logits = m
                .forward(&x, Capture::NONE)
                .with_context(|| format!("cannot classify {} ({})", img.file.display(), m.variant))?
                .logits;
            let probs = crate::model::vit::softmax(&logits)?.flatten_all()?.to_vec1::<f32>()?;
            top.push(
                top_indices(&probs, k)
                    .into_iter()
                    .map(|i| Ranked { index: i, label: label_of(labels, i), probability: probs[i] })
                    .collect(),
            );
        }
        predictions.push(ImagePredictions {
            file: img.file.display().to_string(),
            label: img.label,
            label_name: label_of(labels, img.label),
            top,
        });
        on_progress(n + 1, images.len());
    }
    Ok(summarise(model_spec, source, models, predictions, k, labels.len()))
}

fn label_of(labels: &[String], i: usize) -> String {
    labels.get(i).cloned().unwrap_or_else(|| format!("class {i}"))
}

/// Counts per variant from the per-image predictions.
pub fn summarise(
    model_spec: &str,
    source: &str,
    models: &[&Model],
    predictions: Vec<ImagePredictions>,
    k: usize,
    classes: usize,
) -> EvalReport {
    let variants: Vec<Variant> = models.iter().map(|m| m.variant).collect();
    let fp32 = variants.iter().position(|v| *v == Variant::Fp32);
    let n = predictions.len();
    let mut out: Vec<VariantAccuracy> = variants
        .iter()
        .enumerate()
        .map(|(vi, &variant)| {
            let top1_correct = predictions.iter().filter(|p| p.top[vi][0].index == p.label).count();
            let topk_correct = predictions.iter().filter(|p| p.top[vi].iter().any(|r| r.index == p.label)).count();
            let flips = match fp32 {
                Some(f) if f != vi => predictions
                    .iter()
                    .filter(|p| p.top[vi][0].index != p.top[f][0].index)
                    .map(|p| Flip {
                        file: p.file.clone(),
                        label: p.label_name.clone(),
                        fp32: p.top[f][0].label.clone(),
                        variant: p.top[vi][0].label.clone(),
                        right: if p.top[f][0].index == p.label {
                            "fp32".into()
                        } else if p.top[vi][0].index == p.label {
                            variant.name().into()
                        } else {
                            "neither".into()
                        },
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let (top1_low, top1_high) = wilson_interval(top1_correct, n);
            let (topk_low, topk_high) = wilson_interval(topk_correct, n);
            let frac = |c: usize| if n == 0 { 0.0 } else { c as f64 / n as f64 };
            VariantAccuracy {
                variant,
                label: models[vi].label(),
                kept_fp32: models[vi].fp32_layers(),
                images: n,
                top1_correct,
                topk_correct,
                top1: frac(top1_correct),
                top1_low,
                top1_high,
                topk: frac(topk_correct),
                topk_low,
                topk_high,
                top1_delta_vs_fp32: None,
                flips,
            }
        })
        .collect();
    if let Some(f) = fp32 {
        let base = out[f].top1;
        for v in &mut out {
            v.top1_delta_vs_fp32 = Some(v.top1 - base);
        }
    }
    EvalReport { model: model_spec.to_string(), source: source.to_string(), k, classes, variants: out, predictions }
}

/// The CSV report's columns, in order (documented in the README; only ever appended to).
pub const CSV_COLUMNS: &[&str] = &[
    "model",
    "variant",
    "images",
    "top1",
    "top1_low",
    "top1_high",
    "top5",
    "top1_delta_vs_fp32",
    "flips",
    "top_k",
    "topk_low",
    "topk_high",
    "top1_correct",
    "topk_correct",
    "source",
];

/// One row per (model, variant).
pub fn to_csv(report: &EvalReport) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_COLUMNS)?;
    for v in &report.variants {
        w.write_record([
            report.model.clone(),
            v.variant.name().to_string(),
            v.images.to_string(),
            format!("{:.6}", v.top1),
            format!("{:.6}", v.top1_low),
            format!("{:.6}", v.top1_high),
            format!("{:.6}", v.topk),
            v.top1_delta_vs_fp32.map(|d| format!("{d:.6}")).unwrap_or_default(),
            v.flips.len().to_string(),
            report.k.to_string(),
            format!("{:.6}", v.topk_low),
            format!("{:.6}", v.topk_high),
            v.top1_correct.to_string(),
            v.topk_correct.to_string(),
            report.source.clone(),
        ])?;
    }
    Ok(w.into_inner()?)
}

/// The table `eval` prints.
pub fn table(report: &EvalReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let k = report.k;
    let _ = writeln!(
        s,
        "{:<7} {:>7} {:>17} {:>7} {:>17} {:>13} {:>6}",
        "variant",
        "top-1",
        "95% CI",
        format!("top-{k}"),
        "95% CI",
        "top-1 vs fp32",
        "flips"
    );
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    for v in &report.variants {
        let delta = match (v.variant, v.top1_delta_vs_fp32) {
            (Variant::Fp32, _) | (_, None) => "-".to_string(),
            (_, Some(d)) => format!("{:+.1} pp", 100.0 * d),
        };
        let flips = if v.variant == Variant::Fp32 || v.top1_delta_vs_fp32.is_none() {
            "-".to_string()
        } else {
            v.flips.len().to_string()
        };
        let _ = writeln!(
            s,
            "{:<7} {:>7} {:>17} {:>7} {:>17} {:>13} {:>6}",
            v.variant.name(),
            pct(v.top1),
            format!("[{:.1}, {:.1}]", 100.0 * v.top1_low, 100.0 * v.top1_high),
            pct(v.topk),
            format!("[{:.1}, {:.1}]", 100.0 * v.topk_low, 100.0 * v.topk_high),
            delta,
            flips
        );
    }
    for v in &report.variants {
        if v.flips.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{}: {} image(s) changed top-1 against fp32:", v.variant, v.flips.len());
        for f in &v.flips {
            let _ = writeln!(
                s,
                "  {}  (true: {})  fp32: {} -> {}: {}  right: {}",
                f.file, f.label, f.fp32, v.variant, f.variant, f.right
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_bounds_match_closed_forms() {
        // 0 of n: upper = z²/(n + z²); n of n: lower = n/(n + z²).
        let z2 = 1.959_963_984_540_054f64.powi(2);
        let (lo, hi) = wilson_interval(0, 10);
        assert_eq!(lo, 0.0);
        assert!((hi - z2 / (10.0 + z2)).abs() < 1e-12);
        let (lo, hi) = wilson_interval(10, 10);
        assert!((lo - 10.0 / (10.0 + z2)).abs() < 1e-12 && (hi - 1.0).abs() < 1e-12);
        // 2 of 4 is symmetric about 0.5: [0.1500, 0.8500].
        let (lo, hi) = wilson_interval(2, 4);
        assert!((lo - 0.150_039).abs() < 1e-6 && (hi - 0.849_961).abs() < 1e-6, "{lo} {hi}");
        assert_eq!(wilson_interval(0, 0), (0.0, 1.0));
    }

    #[test]
    fn classes_resolve_by_index_label_alias_and_synset() {
        let labels = crate::labels::imagenet1k();
        let r = ClassResolver::new(&labels);
        assert_eq!(r.resolve("285", "x").unwrap(), 285);
        assert_eq!(r.resolve("egyptian CAT", "x").unwrap(), 285);
        assert_eq!(r.resolve("n02124075", "x").unwrap(), 285);
        assert_eq!(r.resolve("n01440764", "x").unwrap(), 0);
        assert!(r.resolve("1000", "x").unwrap_err().to_string().contains("out of range"));
        let e = r.resolve("expresso", "set/expresso").unwrap_err().to_string();
        assert!(e.starts_with("set/expresso: unknown class `expresso`") && e.contains("`espresso`"), "{e}");
        let e = r.resolve("cat", "x").unwrap_err().to_string();
        assert!(e.contains("`Egyptian cat`") && e.contains("`tiger cat`"), "{e}");
        // An alias of a comma-separated label names its class when it is the only one.
        let short = vec!["tench, Tinca tinca".to_string(), "goldfish".to_string()];
        assert_eq!(ClassResolver::new(&short).resolve("Tinca tinca", "x").unwrap(), 0);
        assert!(ClassResolver::new(&short).resolve("n01440764", "x").unwrap_err().to_string().contains("2 classes"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn limit_takes_images_round_robin_over_classes() {
        let img = |f: &str, label| LabelledImage { file: f.into(), label };
        let all = vec![img("a1", 1), img("a2", 1), img("a3", 1), img("b1", 2), img("c1", 3), img("c2", 3)];
        let files = |v: Vec<LabelledImage>| v.into_iter().map(|i| i.file.display().to_string()).collect::<Vec<_>>();
        assert_eq!(files(limit_across_classes(all.clone(), 4)), ["a1", "b1", "c1", "a2"]);
        assert_eq!(limit_across_classes(all.clone(), 10).len(), 6);
    }
}
