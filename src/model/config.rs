//! What a checkpoint's network looks like, read from the `config.json` beside it.
//!
//! Two dialects exist for the same architecture: Hugging Face transformers writes every size
//! explicitly; timm names an architecture (`vit_base_patch16_224`) and lets code supply the sizes,
//! optionally overridden by `model_args`. Both end up in one [`VitConfig`], so the rest of the
//! engine never asks where a model came from. Sizes are validated here, before any tensor is
//! allocated, so a hostile config cannot make us reserve gigabytes.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::labels;
use crate::preprocess::{Crop, CropRounding, Filter, Recipe, Resize};

/// Which naming scheme the checkpoint's tensors follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// transformers `ViTForImageClassification` / `DeiTForImageClassification[WithTeacher]`.
    Hf,
    /// timm `VisionTransformer` / `VisionTransformerDistilled`.
    Timm,
}

/// How the class logits are read off the final tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeadMode {
    /// One head on the class token.
    Cls,
    /// DeiT distilled: a head on the class token and one on the distillation token, averaged
    /// (transformers' `DeiTForImageClassificationWithTeacher`, timm's eval-mode distilled model).
    MeanClsDist,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub layout: Layout,
    /// The architecture as the config names it (for display).
    pub architecture: String,
    pub hidden: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp: usize,
    pub patch: usize,
    pub image_size: usize,
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
    /// A distillation token follows the class token (DeiT distilled).
    pub dist_token: bool,
    pub head_mode: HeadMode,
    pub labels: Vec<String>,
}

// Limits far above any real ViT (ViT-G is 1664 wide, 48 deep) that keep a lying config from
// asking for absurd allocations.
const MAX_HIDDEN: usize = 8192;
const MAX_MLP: usize = 65536;
const MAX_DEPTH: usize = 128;
const MAX_IMAGE: usize = 2048;
const MAX_CLASSES: usize = 200_000;
const MAX_PARAMS: usize = 4_000_000_000;

impl VitConfig {
    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch).pow(2)
    }
    /// Tokens per image: class (+ distillation) token and the patches.
    pub fn num_tokens(&self) -> usize {
        self.num_prefix_tokens() + self.num_patches()
    }
    pub fn num_prefix_tokens(&self) -> usize {
        1 + usize::from(self.dist_token)
    }
    /// Parameter count implied by the sizes (used to refuse absurd configs before loading).
    pub fn param_count(&self) -> usize {
        let (d, m) = (self.hidden, self.mlp);
        let block = 4 * d * d + 2 * d * m + 9 * d + m;
        let heads = if self.head_mode == HeadMode::MeanClsDist { 2 } else { 1 };
        3 * self.patch * self.patch * d
            + self.num_tokens() * d
            + self.depth * block
            + heads * (d + 1) * self.num_classes()
    }

    /// Refuses sizes no real ViT has, before anything is allocated for them.
    pub fn validate(&self) -> Result<()> {
        let check = |what: &str, v: usize, max: usize| -> Result<()> {
            if v == 0 || v > max {
                bail!("{what} = {v} is outside the supported range 1..={max}");
            }
            Ok(())
        };
        check("hidden size", self.hidden, MAX_HIDDEN)?;
        check("intermediate (MLP) size", self.mlp, MAX_MLP)?;
        check("number of layers", self.depth, MAX_DEPTH)?;
        check("number of heads", self.heads, self.hidden)?;
        check("image size", self.image_size, MAX_IMAGE)?;
        check("patch size", self.patch, self.image_size)?;
        check("number of classes", self.num_classes(), MAX_CLASSES)?;
        if !self.hidden.is_multiple_of(self.heads) {
            bail!("hidden size {} is not divisible by {} heads", self.hidden, self.heads);
        }
        if !self.image_size.is_multiple_of(self.patch) {
            bail!("image size {} is not a multiple of patch size {}", self.image_size, self.patch);
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            bail!("layer_norm_eps = {} is not a small positive number", self.layer_norm_eps);
        }
        if self.param_count() > MAX_PARAMS {
            bail!(
                "the config describes {} parameters, more than the {} this tool accepts",
                self.param_count(),
                MAX_PARAMS
            );
        }
        Ok(())
    }
}

/// A parsed `config.json` plus the preprocessing recipe its dialect implies.
#[derive(Clone, Debug)]
pub struct ParsedConfig {
    pub config: VitConfig,
    pub recipe: Recipe,
}

/// Reads `config.json` (and `preprocessor_config.json` beside it, for transformers checkpoints).
pub fn load_config(path: &Path) -> Result<ParsedConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let preprocessor = path.with_file_name("preprocessor_config.json");
    parse_config(&json, preprocessor.exists().then_some(preprocessor.as_path()))
        .with_context(|| format!("unsupported model config {}", path.display()))
}

pub fn parse_config(json: &Value, preprocessor: Option<&Path>) -> Result<ParsedConfig> {
    if !json.is_object() {
        bail!("expected a JSON object");
    }
    let parsed = if json.get("architectures").is_some() || json.get("model_type").is_some() {
        parse_hf(json, preprocessor)?
    } else if json.get("architecture").is_some() || json.get("pretrained_cfg").is_some() {
        parse_timm(json)?
    } else {
        bail!("neither a transformers config (no `architectures`/`model_type`) nor a timm config (no `architecture`)");
    };
    parsed.config.validate()?;
    parsed.recipe.validate()?;
    Ok(parsed)
}

fn get_usize(json: &Value, key: &str) -> Result<Option<usize>> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .with_context(|| format!("`{key}` must be a non-negative integer, found {v}")),
    }
}

fn require_usize(json: &Value, key: &str) -> Result<usize> {
    get_usize(json, key)?.with_context(|| format!("missing `{key}`"))
}

fn floats3(v: &Value, key: &str) -> Result<[f32; 3]> {
    let arr = v.as_array().with_context(|| format!("`{key}` must be a list of 3 numbers"))?;
    match arr.as_slice() {
        [a, b, c] => {
            let f = |x: &Value| x.as_f64().map(|x| x as f32).with_context(|| format!("`{key}` must hold numbers"));
            Ok([f(a)?, f(b)?, f(c)?])
        }
        [a] => {
            let x = a.as_f64().with_context(|| format!("`{key}` must hold numbers"))? as f32;
            Ok([x; 3])
        }
        _ => bail!("`{key}` must be a list of 3 numbers"),
    }
}

fn parse_hf(json: &Value, preprocessor: Option<&Path>) -> Result<ParsedConfig> {
    let arch = json.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str).unwrap_or("").to_string();
    let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
    let (dist_token, head_mode) = match arch.as_str() {
        "ViTForImageClassification" => (false, HeadMode::Cls),
        "DeiTForImageClassification" => (true, HeadMode::Cls),
        "DeiTForImageClassificationWithTeacher" => (true, HeadMode::MeanClsDist),
        other => bail!(
            "unknown architecture `{other}` (model_type `{model_type}`): supported are ViTForImageClassification, \
             DeiTForImageClassification and DeiTForImageClassificationWithTeacher"
        ),
    };
    let act = json.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
    if act != "gelu" {
        bail!("hidden_act `{act}` is not supported (only the exact erf `gelu` of ViT/DeiT)");
    }
    if let Some(c) = get_usize(json, "num_channels")?
        && c != 3
    {
        bail!("num_channels = {c}: only RGB (3) models are supported");
    }
    let labels = hf_labels(json)?;
    let config = VitConfig {
        layout: Layout::Hf,
        architecture: arch,
        hidden: require_usize(json, "hidden_size")?,
        depth: require_usize(json, "num_hidden_layers")?,
        heads: require_usize(json, "num_attention_heads")?,
        mlp: require_usize(json, "intermediate_size")?,
        patch: require_usize(json, "patch_size")?,
        image_size: require_usize(json, "image_size")?,
        layer_norm_eps: json.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12),
        qkv_bias: json.get("qkv_bias").and_then(Value::as_bool).unwrap_or(true),
        dist_token,
        head_mode,
        labels,
    };
    let recipe = match preprocessor {
        Some(p) => hf_recipe(p, config.image_size)?,
        None => Recipe::hf_vit(config.image_size as u32),
    };
    Ok(ParsedConfig { config, recipe })
}

fn hf_labels(json: &Value) -> Result<Vec<String>> {
    let n = match (json.get("id2label").and_then(Value::as_object), get_usize(json, "num_labels")?) {
        (Some(map), _) => map.len(),
        (None, Some(n)) => n,
        (None, None) => bail!("no `id2label` or `num_labels`: the classifier size is unknown"),
    };
    if n == 0 || n > MAX_CLASSES {
        bail!("number of classes = {n} is outside the supported range 1..={MAX_CLASSES}");
    }
    let mut labels: Vec<Option<String>> = vec![None; n];
    if let Some(map) = json.get("id2label").and_then(Value::as_object) {
        for (k, v) in map {
            let i: usize = k.parse().with_context(|| format!("id2label key `{k}` is not an index"))?;
            let slot = labels.get_mut(i).with_context(|| format!("id2label index {i} is out of range 0..{n}"))?;
            *slot = Some(v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
        }
    }
    Ok(labels.into_iter().enumerate().map(|(i, l)| l.unwrap_or_else(|| format!("LABEL_{i}"))).collect())
}

/// A size from a config as u32, saturating so that [`Recipe::validate`] names the real value's
/// excess instead of a wrapped-around one.
fn side(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// `preprocessor_config.json` of ViTImageProcessor / DeiTImageProcessor (the PIL-based ones).
fn hf_recipe(path: &Path, image_size: usize) -> Result<Recipe> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let p: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let mut recipe = Recipe::hf_vit(image_size as u32);
    let filter = match p.get("resample").and_then(Value::as_u64) {
        None => recipe.filter,
        Some(n) => {
            Filter::from_pil_code(n).with_context(|| format!("{}: unsupported resample code {n}", path.display()))?
        }
    };
    recipe.filter = filter;
    if let Some(size) = p.get("size") {
        recipe.resize = match (get_usize(size, "height")?, get_usize(size, "width")?, get_usize(size, "shortest_edge")?)
        {
            (Some(h), Some(w), _) => Resize::Exact { width: side(w), height: side(h) },
            (_, _, Some(s)) => Resize::ShorterSide(side(s)),
            _ => match size.as_u64() {
                Some(s) => Resize::Exact { width: side(s as usize), height: side(s as usize) },
                None => bail!("{}: `size` has neither height/width nor shortest_edge", path.display()),
            },
        };
    }
    if p.get("do_center_crop").and_then(Value::as_bool).unwrap_or(false)
        && let Some(c) = p.get("crop_size")
    {
        let (h, w) = match (get_usize(c, "height")?, get_usize(c, "width")?) {
            (Some(h), Some(w)) => (h, w),
            _ => {
                let s = c.as_u64().with_context(|| format!("{}: bad crop_size", path.display()))? as usize;
                (s, s)
            }
        };
        // transformers' center_crop floors the offsets (numpy integer division).
        recipe.crop = Some(Crop { width: side(w), height: side(h), rounding: CropRounding::Floor });
    }
    if let Some(m) = p.get("image_mean") {
        recipe.mean = floats3(m, "image_mean")?;
    }
    if let Some(s) = p.get("image_std") {
        recipe.std = floats3(s, "image_std")?;
    }
    Ok(recipe)
}

/// Sizes of timm's named ViT/DeiT variants: (width, depth, heads).
fn timm_size(name: &str) -> Option<(usize, usize, usize)> {
    const SIZES: [(&str, (usize, usize, usize)); 6] = [
        ("tiny", (192, 12, 3)),
        ("small", (384, 12, 6)),
        ("medium", (512, 12, 8)),
        ("base", (768, 12, 12)),
        ("large", (1024, 24, 16)),
        ("huge", (1280, 32, 16)),
    ];
    let parts: Vec<&str> = name.split('_').collect();
    SIZES.iter().find(|(s, _)| parts.contains(s)).map(|(_, v)| *v)
}

/// The number after a prefix in a timm architecture name (`patch16` -> 16, `224` -> 224).
fn timm_name_number(name: &str, prefix: &str) -> Option<usize> {
    name.split('_').filter_map(|p| p.strip_prefix(prefix)).filter_map(|rest| rest.parse().ok()).next_back()
}

fn parse_timm(json: &Value) -> Result<ParsedConfig> {
    let arch = json.get("architecture").and_then(Value::as_str).unwrap_or("").to_string();
    let base = arch.split('.').next().unwrap_or("");
    if !(base.starts_with("vit_") || base.starts_with("deit_")) {
        bail!("unknown timm architecture `{arch}`: supported are vit_* and deit_* models");
    }
    let empty = Value::Object(Default::default());
    let args = json.get("model_args").unwrap_or(&empty);
    const KNOWN_ARGS: [&str; 8] =
        ["img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "num_classes"];
    if let Some(obj) = args.as_object()
        && let Some(k) = obj.keys().find(|k| !KNOWN_ARGS.contains(&k.as_str()))
    {
        bail!("timm model_args `{k}` is not supported (plain ViT/DeiT only)");
    }
    let global_pool = json.get("global_pool").and_then(Value::as_str).unwrap_or("token");
    if global_pool != "token" {
        bail!("timm global_pool `{global_pool}` is not supported (class-token models only)");
    }
    let named = timm_size(base);
    let pick = |key: &str, from_name: Option<usize>| -> Result<usize> {
        get_usize(args, key)?
            .or(from_name)
            .with_context(|| format!("`{key}` is neither in model_args nor implied by the name `{arch}`"))
    };
    let hidden = pick("embed_dim", named.map(|s| s.0))?;
    let depth = pick("depth", named.map(|s| s.1))?;
    let heads = pick("num_heads", named.map(|s| s.2))?;
    let mlp_ratio = args.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0);
    let pcfg = json.get("pretrained_cfg").unwrap_or(&empty);
    let input_size = pcfg.get("input_size").and_then(Value::as_array);
    let image_from_cfg = input_size.and_then(|s| s.last()).and_then(Value::as_u64).map(|v| v as usize);
    let image_size = pick("img_size", image_from_cfg.or(timm_name_number(base, "")))?;
    let patch = pick("patch_size", timm_name_number(base, "patch"))?;
    let num_classes = get_usize(json, "num_classes")?.or(get_usize(pcfg, "num_classes")?).unwrap_or(1000);
    if num_classes == 0 || num_classes > MAX_CLASSES {
        bail!("num_classes = {num_classes} is outside the supported range 1..={MAX_CLASSES}");
    }
    let labels = match pcfg.get("label_names").and_then(Value::as_array) {
        Some(names) if names.len() == num_classes => {
            names.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect()
        }
        _ if num_classes == 1000 => labels::imagenet1k(),
        _ => (0..num_classes).map(|i| format!("class {i}")).collect(),
    };
    let distilled = base.contains("distilled");
    let config = VitConfig {
        layout: Layout::Timm,
        architecture: arch.clone(),
        hidden,
        depth,
        heads,
        mlp: (hidden as f64 * mlp_ratio).round() as usize,
        patch,
        image_size,
        layer_norm_eps: 1e-6,
        qkv_bias: args.get("qkv_bias").and_then(Value::as_bool).unwrap_or(true),
        dist_token: distilled,
        head_mode: if distilled { HeadMode::MeanClsDist } else { HeadMode::Cls },
        labels,
    };
    let recipe = timm_recipe(pcfg, image_size)?;
    Ok(ParsedConfig { config, recipe })
}

/// timm's `resolve_data_config` + `transforms_imagenet_eval`: resize the shorter side to
/// floor(size / crop_pct), centre-crop `size` (torchvision rounding), normalise.
fn timm_recipe(pcfg: &Value, image_size: usize) -> Result<Recipe> {
    let crop_pct = match pcfg.get("crop_pct") {
        None | Some(Value::Null) => 0.875,
        Some(v) => v.as_f64().with_context(|| format!("`crop_pct` must be a number, found {v}"))?,
    };
    // timm's models use 0.875..1.0; below 0.1 the resize before the crop grows past any use.
    if !(0.1..=1.0).contains(&crop_pct) {
        bail!("crop_pct = {crop_pct} is outside 0.1..=1.0 (the resize before the crop is size / crop_pct)");
    }
    let filter = match pcfg.get("interpolation").and_then(Value::as_str).unwrap_or("bicubic") {
        "bicubic" => Filter::Bicubic,
        "bilinear" => Filter::Bilinear,
        "lanczos" => Filter::Lanczos,
        other => bail!("interpolation `{other}` is not supported"),
    };
    let mean = pcfg.get("mean").map(|m| floats3(m, "mean")).transpose()?.unwrap_or([0.485, 0.456, 0.406]);
    let std = pcfg.get("std").map(|s| floats3(s, "std")).transpose()?.unwrap_or([0.229, 0.224, 0.225]);
    let size = image_size as u32;
    let scale = (image_size as f64 / crop_pct).floor() as u32;
    let crop = Some(Crop { width: size, height: size, rounding: CropRounding::HalfEven });
    let resize = match pcfg.get("crop_mode").and_then(Value::as_str).unwrap_or("center") {
        "center" => Resize::ShorterSide(scale),
        "squash" => Resize::Exact { width: scale, height: scale },
        other => bail!("crop_mode `{other}` is not supported"),
    };
    Ok(Recipe { resize, filter, crop, mean, std })
}
