//! The models the workbench knows by name, each with its exact preprocessing recipe.
//!
//! A zoo entry only adds what the hub files get wrong or leave out: which weight file exists
//! (facebook/deit-* ship only `pytorch_model.bin`) and, for DeiT, the recipe its authors
//! evaluated with (their `preprocessor_config.json` says mean = std = 0.5, which is wrong).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;

use crate::hub::{DownloadEvent, Hub};
use crate::model::{Model, ModelFiles};
use crate::preprocess::Recipe;
use crate::quant::{QuantOptions, Variant};

#[derive(Clone, Debug)]
pub struct ZooEntry {
    pub id: &'static str,
    pub family: &'static str,
    pub params_millions: f32,
    /// The weight file the repo ships.
    pub weights: &'static str,
    /// Overrides the recipe the repo's own configs imply.
    pub recipe: Option<fn() -> Recipe>,
    pub note: &'static str,
}

fn deit_recipe() -> Recipe {
    Recipe::deit(224)
}

pub const DEFAULT_MODEL: &str = "google/vit-base-patch16-224";

pub const ZOO: &[ZooEntry] = &[
    ZooEntry {
        id: "google/vit-base-patch16-224",
        family: "ViT-B/16 (HF)",
        params_millions: 86.6,
        weights: "model.safetensors",
        recipe: None,
        note: "resize 224x224 bilinear, mean=std=0.5",
    },
    ZooEntry {
        id: "facebook/deit-tiny-patch16-224",
        family: "DeiT-Ti (HF)",
        params_millions: 5.7,
        weights: "pytorch_model.bin",
        recipe: Some(deit_recipe),
        note: "DeiT recipe",
    },
    ZooEntry {
        id: "facebook/deit-small-patch16-224",
        family: "DeiT-S (HF)",
        params_millions: 22.1,
        weights: "pytorch_model.bin",
        recipe: Some(deit_recipe),
        note: "DeiT recipe",
    },
    ZooEntry {
        id: "facebook/deit-base-patch16-224",
        family: "DeiT-B (HF)",
        params_millions: 86.6,
        weights: "pytorch_model.bin",
        recipe: Some(deit_recipe),
        note: "DeiT recipe",
    },
    ZooEntry {
        id: "facebook/deit-base-distilled-patch16-224",
        family: "DeiT-B distilled (HF)",
        params_millions: 87.3,
        weights: "pytorch_model.bin",
        recipe: Some(deit_recipe),
        note: "cls + distillation heads averaged",
    },
    ZooEntry {
        id: "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        family: "ViT-Ti/16 (timm)",
        params_millions: 5.7,
        weights: "model.safetensors",
        recipe: None,
        note: "recipe from pretrained_cfg",
    },
    ZooEntry {
        id: "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
        family: "ViT-S/16 (timm)",
        params_millions: 22.1,
        weights: "model.safetensors",
        recipe: None,
        note: "recipe from pretrained_cfg",
    },
    ZooEntry {
        id: "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
        family: "ViT-B/16 (timm)",
        params_millions: 86.6,
        weights: "model.safetensors",
        recipe: None,
        note: "recipe from pretrained_cfg",
    },
    ZooEntry {
        id: "timm/deit_tiny_patch16_224.fb_in1k",
        family: "DeiT-Ti (timm)",
        params_millions: 5.7,
        weights: "model.safetensors",
        recipe: None,
        note: "recipe from pretrained_cfg",
    },
    ZooEntry {
        id: "timm/deit_small_patch16_224.fb_in1k",
        family: "DeiT-S (timm)",
        params_millions: 22.1,
        weights: "model.safetensors",
        recipe: None,
        note: "recipe from pretrained_cfg",
    },
    ZooEntry {
        id: "timm/deit_base_distilled_patch16_224.fb_in1k",
        family: "DeiT-B distilled (timm)",
        params_millions: 87.3,
        weights: "model.safetensors",
        recipe: None,
        note: "recipe from pretrained_cfg",
    },
];

pub fn find(id: &str) -> Option<&'static ZooEntry> {
    ZOO.iter().find(|e| e.id == id)
}

/// Where a `--model` argument points.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// A folder with config.json + weights.
    Dir(PathBuf),
    /// A hub repo id.
    Hub(String),
    /// A file exported by `vit-workbench export` (any variant).
    Exported(PathBuf),
}

impl ModelSource {
    /// An existing path is local; anything else that looks like `owner/name` is a hub id.
    pub fn parse(spec: &str) -> Result<ModelSource> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::Dir(path.to_path_buf()));
        }
        if path.is_file() {
            if crate::quant::export::is_exported(path) {
                return Ok(ModelSource::Exported(path.to_path_buf()));
            }
            // A weight or config file inside a model folder means that folder.
            if let Some(parent) = path.parent().filter(|p| p.join("config.json").is_file()) {
                let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                return Ok(ModelSource::Dir(parent.to_path_buf()));
            }
            bail!("{spec}: neither a vit-workbench export nor a file inside a model folder with a config.json");
        }
        if is_hub_id(spec) {
            Ok(ModelSource::Hub(spec.to_string()))
        } else {
            bail!("{spec}: no such folder, and not a Hugging Face model id (owner/name)")
        }
    }

    /// Resolves to files on disk (downloading if needed) and the zoo's recipe override, if any.
    pub fn resolve(&self, hub: &Hub, progress: &mut dyn FnMut(DownloadEvent)) -> Result<(ModelFiles, Option<Recipe>)> {
        match self {
            ModelSource::Dir(d) => Ok((ModelFiles::from_dir(d)?, None)),
            ModelSource::Exported(f) => Ok((ModelFiles { config: f.clone(), weights: f.clone() }, None)),
            ModelSource::Hub(id) => {
                let entry = find(id);
                let files = hub.fetch_model(id, entry.map(|e| e.weights), progress)?;
                Ok((files, entry.and_then(|e| e.recipe).map(|f| f())))
            }
        }
    }
}

/// `owner/name` as the hub spells repo ids: two parts of letters, digits, `-`, `_` and `.`, each
/// starting with a letter or digit, no `--` or `..`, at most 96 characters. Anything else that
/// is not an existing path (`/nonexistent`, `models/vit/`, `C:\\x`) is a missing folder, not a
/// repo to look up over the network.
pub fn is_hub_id(spec: &str) -> bool {
    let part_ok = |p: &str| {
        p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.contains("--")
            && !p.contains("..")
    };
    let mut parts = spec.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(owner), Some(name), None) => spec.len() <= 96 && part_ok(owner) && part_ok(name),
        _ => false,
    }
}

/// Loads whatever `spec` names (hub id, folder or exported file) as the requested variant.
/// Variants other than the file's own are quantized from fp32 weights.
pub fn load_model(
    spec: &str,
    variant: Variant,
    hub: &Hub,
    device: &Device,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<Model> {
    load_model_as_is(spec, hub, device, progress)?.to_variant(variant, QuantOptions::default())
}

/// Loads whatever `spec` names in the variant it is stored as (fp32 for checkpoints).
pub fn load_model_as_is(
    spec: &str,
    hub: &Hub,
    device: &Device,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<Model> {
    let source = ModelSource::parse(spec)?;
    match &source {
        ModelSource::Exported(f) => crate::quant::export::load(f, device),
        _ => {
            let (files, recipe) = source.resolve(hub, progress)?;
            Model::load(spec, &files, recipe, device).with_context(|| format!("cannot load model `{spec}`"))
        }
    }
}
