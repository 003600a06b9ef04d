//! The ViT/DeiT network: configs of both dialects, checkpoints of every layout, one forward.
//!
//! Loading is `config.json` -> [`config::VitConfig`] (sizes checked before anything is read),
//! then checkpoint -> [`vit::VitWeights`] (every tensor named, shaped and accounted for), then
//! [`Model`] pairs them with the preprocessing recipe and a device.

pub mod checkpoint;
pub mod config;
pub mod fused;
/// The int8 layer the forward runs (here because the forward runs it; `quant` decides which
/// layers become one and re-exports this as `quant::int8`).
pub mod int8;
pub mod layers;
pub mod linear;
pub mod profiler;
/// How an int8 layer quantizes (beside [`int8`], which runs it; `quant` re-exports both).
pub mod scheme;
pub mod variant;
pub mod vit;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Serialize;

pub use config::{HeadMode, Layout, VitConfig};
pub use layers::{BlockLayer, LayerName};
use linear::Linear;
pub use variant::{Variant, parse_variants};
pub use vit::{Capture, ForwardOutput, VitWeights};

use crate::preprocess::Recipe;

/// The files a checkpoint consists of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
}

/// Weight file names we look for, in order of preference.
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

impl ModelFiles {
    /// A local folder holding `config.json` and `model.safetensors` or `pytorch_model.bin`.
    pub fn from_dir(dir: &Path) -> Result<ModelFiles> {
        let config = dir.join("config.json");
        if !config.is_file() {
            bail!("{}: no config.json in this folder", dir.display());
        }
        let weights =
            WEIGHT_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file()).with_context(|| {
                format!("{}: no model.safetensors or pytorch_model.bin in this folder", dir.display())
            })?;
        Ok(ModelFiles { config, weights })
    }
}

/// One label with its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// A loaded model, ready to classify.
#[derive(Clone, Debug)]
pub struct Model {
    /// What the user named: a hub id or a path.
    pub id: String,
    pub config: VitConfig,
    pub recipe: Recipe,
    pub weights: VitWeights,
    pub device: Device,
    pub files: ModelFiles,
    pub variant: Variant,
}

/// A variant's name for people, from what makes it: `int8`, `int8[torch]`, `int8+fp32[3]`. The
/// one rule for every place that names a variant (a model, a benchmark row, a variant the window
/// is about to build): the scheme when not the default, and the layers kept fp32 — the torch
/// scheme's fp32 patch embedding is part of the scheme, not counted as kept.
pub fn label_of(variant: Variant, scheme: scheme::Scheme, kept_fp32: &[LayerName]) -> String {
    if variant == Variant::Fp32 {
        return variant.name().to_string();
    }
    let mut label = variant.name().to_string();
    if !scheme.is_default() {
        label.push_str(&format!("[{scheme}]"));
    }
    let torch = scheme == scheme::Scheme::TORCH;
    let kept = kept_fp32.iter().filter(|l| !(torch && **l == LayerName::Patch)).count();
    if kept > 0 {
        label.push_str(&format!("+fp32[{kept}]"));
    }
    label
}

impl Model {
    /// Loads a checkpoint. `recipe` overrides the preprocessing the config implies (zoo entries
    /// whose published preprocessor config is wrong, e.g. DeiT's).
    pub fn load(id: &str, files: &ModelFiles, recipe: Option<Recipe>, device: &Device) -> Result<Model> {
        let parsed = config::load_config(&files.config)?;
        if let Some(r) = &recipe {
            r.validate().with_context(|| format!("the preprocessing given for {id}"))?;
        }
        let weights = checkpoint::load_weights(&files.weights, &parsed.config, device)?;
        Ok(Model {
            id: id.to_string(),
            recipe: recipe.unwrap_or(parsed.recipe),
            config: parsed.config,
            weights,
            device: device.clone(),
            files: files.clone(),
            variant: Variant::Fp32,
        })
    }

    /// The name shown to users: the variant, its quantization scheme when not the default, and
    /// for a quantized model that keeps some layers fp32 (mixed precision), how many:
    /// `int8`, `int8[torch]`, `int8+fp32[3]`. The torch scheme's fp32 patch embedding is part
    /// of the scheme, not counted as kept.
    pub fn label(&self) -> String {
        label_of(self.variant, self.scheme().unwrap_or_default(), &self.fp32_layers())
    }

    /// The scheme this model's int8 layers were quantized with (`None` when none is int8).
    pub fn scheme(&self) -> Option<scheme::Scheme> {
        self.weights.linears().into_iter().find_map(|(_, l)| match l {
            Linear::Int8(q) => Some(q.scheme),
            _ => None,
        })
    }

    /// The linear layers a quantized model holds in fp32 (empty for fp32 itself, where all are).
    pub fn fp32_layers(&self) -> Vec<LayerName> {
        if self.variant == Variant::Fp32 { Vec::new() } else { self.weights.fp32_layers() }
    }

    /// The name used in errors: an exported file by its path as given, otherwise the id.
    pub fn display_name(&self) -> String {
        if self.files.config == self.files.weights { self.files.weights.display().to_string() } else { self.id.clone() }
    }

    /// Bytes of weights in memory.
    pub fn weight_bytes(&self) -> usize {
        self.weights.weight_bytes()
    }

    pub fn forward(&self, pixels: &Tensor, capture: Capture) -> Result<ForwardOutput> {
        self.forward_profiled(pixels, capture, None)
    }

    /// [`Model::forward`], each stage timed into `profiler` when one is given.
    pub fn forward_profiled(
        &self,
        pixels: &Tensor,
        capture: Capture,
        profiler: Option<&mut profiler::Profiler>,
    ) -> Result<ForwardOutput> {
        let (_, c, h, w) = pixels.dims4()?;
        let s = self.config.image_size;
        if c != 3 || h != s || w != s {
            bail!("input is {c}x{h}x{w}, the model expects 3x{s}x{s}");
        }
        let on_pool = |capture: Capture, profiler: Option<&mut profiler::Profiler>| {
            let run = move || {
                vit::forward_profiled(&self.weights, self.config.heads, self.config.patch, pixels, capture, profiler)
            };
            if pixels.device().is_cpu() && rayon::current_thread_index().is_none() {
                // Run the whole pass on a worker of the kernels' pool: each parallel kernel then
                // starts and joins inside the pool (work-stealing) instead of the calling thread
                // sleeping on and being woken from it ~150 times per ViT-B forward.
                rayon::scope(|_| run())
            } else {
                run()
            }
        };
        let out = on_pool(capture, profiler)?;
        // NaN/Inf logits are an error, never a result: say where they first appear.
        if !all_finite(&out.logits)? {
            let traced = on_pool(Capture { block_outputs: true, ..capture }, None)?;
            let blocks = traced.block_outputs.unwrap_or_default();
            let place = match blocks.iter().map(all_finite).position(|ok| !matches!(ok, Ok(true))) {
                Some(0) => format!("the output of block 0 of {} (or the patch embedding before it)", blocks.len()),
                Some(i) => format!("the output of block {i} of {}", blocks.len()),
                None => "the final norm or the classifier head (every block's output is finite)".to_string(),
            };
            bail!("{} ({}): the logits are NaN/Inf; non-finite values first appear in {place}", self.id, self.variant);
        }
        Ok(out)
    }

    /// Image -> normalised `[1, 3, S, S]` input on the model's device.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        let (w, h) = self.recipe.output_size();
        let s = self.config.image_size as u32;
        if (w, h) != (s, s) {
            bail!("the preprocessing produces {w}x{h} images but the model expects {s}x{s}");
        }
        self.recipe.to_tensor(img, &self.device)
    }

    /// Stacks several preprocessed images into one batch.
    pub fn preprocess_batch(&self, imgs: &[RgbImage]) -> Result<Tensor> {
        let ts = imgs.iter().map(|i| self.preprocess(i)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&ts, 0)?)
    }

    /// Top-k predictions for each image in a batch of logits `[B, classes]`.
    pub fn top_k(&self, logits: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
        let probs = vit::softmax(logits)?.to_vec2::<f32>()?;
        Ok(probs.iter().map(|p| top_k(p, &self.config.labels, k)).collect())
    }

    /// Classifies one image.
    pub fn classify(&self, img: &RgbImage, k: usize) -> Result<Vec<Prediction>> {
        let out = self.forward(&self.preprocess(img)?, Capture::NONE)?;
        Ok(self.top_k(&out.logits, k)?.remove(0))
    }
}

fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?.iter().all(|v| v.is_finite()))
}

/// The `k` most probable classes, most probable first (ties by lower index).
pub fn top_k(probs: &[f32], labels: &[String], k: usize) -> Vec<Prediction> {
    top_indices(probs, k)
        .into_iter()
        .map(|i| Prediction {
            index: i,
            label: labels.get(i).cloned().unwrap_or_else(|| format!("class {i}")),
            probability: probs[i],
        })
        .collect()
}

/// Indices of the `k` largest values, largest first (ties by lower index): the one ranking rule
/// for predictions and for agreement metrics.
pub fn top_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// `cpu` or `cuda` (`cuda:N`) -> a candle device; see [`crate::device::open`].
pub use crate::device::open as device_from_name;
