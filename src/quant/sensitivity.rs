//! Which layers hurt when quantized: every linear layer quantized alone (the rest fp32), and
//! kept fp32 alone (the rest quantized), each scored against fp32 on the same images. The
//! ranking picks the layers a mixed-precision variant keeps fp32 (`--keep-fp32 auto:K`,
//! `auto:kl=X`).
//!
//! Every layer is quantized once ([`LayerChoices`]); the 2 x L models are assembled from those
//! layers by swapping them in (shared, not copied), and each runs all images as one batch.

use std::collections::BTreeSet;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use serde::Serialize;

use super::metrics::compare_logits;
use super::{LayerChoices, QuantOptions, Variant, check_layer_names};
use crate::model::vit::VitWeights;
use crate::model::{Capture, LayerName, Model};

/// The column that ranks layers: mean KL(p_fp32 ‖ p) with only that layer quantized.
pub const RANK_KEY: &str = "kl_alone";

/// A model's outputs against fp32 over a set of images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Cost {
    /// Mean KL(p_fp32 ‖ p) over the images, nats.
    pub kl: f64,
    /// Images whose top-1 differs from fp32's.
    pub flips: usize,
    /// Largest |logit - fp32 logit| over all images and classes.
    pub max_abs_dlogit: f32,
}

/// One layer's sensitivity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerSensitivity {
    pub layer: LayerName,
    /// Only this layer quantized, every other one fp32.
    pub alone: Cost,
    /// Every layer quantized but this one.
    pub all_but: Cost,
    /// 1 = the most sensitive (largest `alone.kl`; ties: smaller `all_but.kl`, then forward order).
    pub rank: usize,
}

/// The ranking of every layer of one variant.
#[derive(Clone, Debug, Serialize)]
pub struct Sensitivity {
    pub variant: Variant,
    pub images: usize,
    /// The whole variant (every layer quantized) against fp32.
    pub all_quantized: Cost,
    /// Most sensitive first.
    pub layers: Vec<LayerSensitivity>,
}

impl Sensitivity {
    /// The `k` most sensitive layers.
    pub fn top(&self, k: usize) -> BTreeSet<LayerName> {
        self.layers.iter().take(k).map(|l| l.layer).collect()
    }
}

/// fp32's logits on `inputs` and the scorer of other weight sets against them.
pub struct Scorer<'a> {
    fp32: &'a Model,
    inputs: &'a Tensor,
    reference: Vec<Vec<f32>>,
}

impl<'a> Scorer<'a> {
    /// `inputs`: the images as one batch `[N, 3, S, S]`, preprocessed for `fp32`.
    pub fn new(fp32: &'a Model, inputs: &'a Tensor) -> Result<Scorer<'a>> {
        let reference = fp32.forward(inputs, Capture::NONE)?.logits.to_vec2::<f32>()?;
        Ok(Scorer { fp32, inputs, reference })
    }

    /// `weights` (of `variant`) against fp32.
    pub fn cost(&self, variant: Variant, weights: VitWeights) -> Result<Cost> {
        let model = Model { weights, variant, ..self.fp32.clone() };
        let logits = model.forward(self.inputs, Capture::NONE)?.logits.to_vec2::<f32>()?;
        let mut c = Cost::default();
        for (r, o) in self.reference.iter().zip(&logits) {
            let a = compare_logits(r, o);
            c.kl += a.kl_div;
            c.flips += usize::from(!a.top1_agree);
            c.max_abs_dlogit = c.max_abs_dlogit.max(a.max_abs_dlogit);
        }
        c.kl /= self.reference.len().max(1) as f64;
        Ok(c)
    }
}

/// Ranks every linear layer of `fp32`'s `variant` by what quantizing it costs on `inputs` (one
/// batch). `progress(done, total)` is called after each of the 2 x layers + 1 scored models; an
/// error it returns (a cancelled window job) stops the analysis and is returned as it is.
pub fn analyze(
    fp32: &Model,
    variant: Variant,
    opts: &QuantOptions,
    inputs: &Tensor,
    progress: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Sensitivity> {
    let choices = LayerChoices::new(fp32, variant, opts)?;
    let scorer = Scorer::new(fp32, inputs)?;
    let names = fp32.weights.layer_names();
    let total = 2 * names.len() + 1;
    let all_quantized = scorer.cost(variant, choices.assemble(|_| false)?)?;
    progress(1, total)?;
    let mut layers = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let alone = scorer.cost(variant, choices.assemble(|n| n != name)?)?;
        progress(2 + 2 * i, total)?;
        let all_but = scorer.cost(variant, choices.assemble(|n| n == name)?)?;
        progress(3 + 2 * i, total)?;
        layers.push(LayerSensitivity { layer: *name, alone, all_but, rank: 0 });
    }
    layers.sort_by(|a, b| {
        b.alone.kl.total_cmp(&a.alone.kl).then(a.all_but.kl.total_cmp(&b.all_but.kl)).then(a.layer.cmp(&b.layer))
    });
    layers.iter_mut().enumerate().for_each(|(i, l)| l.rank = i + 1);
    Ok(Sensitivity { variant, images: scorer.reference.len(), all_quantized, layers })
}

/// The layers a mixed-precision variant keeps fp32, as the user gives them (`--keep-fp32`).
#[derive(Clone, Debug, PartialEq)]
pub enum KeepFp32 {
    /// Named layers (`none`: no layer).
    Layers(BTreeSet<LayerName>),
    /// Every layer (the variant then computes exactly what fp32 does).
    All,
    /// `auto:K`: the K most sensitive layers by [`analyze`]'s ranking.
    Top(usize),
    /// `auto:kl=X`: the most sensitive layers, added in rank order until the mean KL vs fp32 is
    /// at most X.
    UntilKl(f64),
}

impl KeepFp32 {
    pub fn is_none(&self) -> bool {
        matches!(self, KeepFp32::Layers(s) if s.is_empty())
    }

    /// Whether resolving it needs images (the sensitivity ranking).
    pub fn needs_images(&self) -> bool {
        matches!(self, KeepFp32::Top(_) | KeepFp32::UntilKl(_))
    }

    /// The layers of `fp32`'s `variant` to keep. `inputs` (one batch of preprocessed images)
    /// is needed for the `auto:` forms; a note on what was chosen goes to `note`.
    pub fn resolve(
        &self,
        fp32: &Model,
        variant: Variant,
        opts: &QuantOptions,
        inputs: Option<&Tensor>,
        note: &mut dyn FnMut(String),
    ) -> Result<BTreeSet<LayerName>> {
        let ranking = match (self.needs_images(), inputs) {
            (false, _) => None,
            (true, Some(x)) => Some(analyze(fp32, variant, opts, x, &mut |_, _| Ok(()))?),
            (true, None) => bail!("--keep-fp32 auto:... needs images to rank the layers on"),
        };
        self.resolve_ranked(fp32, opts, ranking.as_ref(), inputs, note)
    }

    /// [`KeepFp32::resolve`] with the ranking already made (the window has it on screen):
    /// `ranking` (of the variant to mix) and `inputs` are needed for the `auto:` forms.
    pub fn resolve_ranked(
        &self,
        fp32: &Model,
        opts: &QuantOptions,
        ranking: Option<&Sensitivity>,
        inputs: Option<&Tensor>,
        note: &mut dyn FnMut(String),
    ) -> Result<BTreeSet<LayerName>> {
        let ranked = || ranking.context("--keep-fp32 auto:... needs the sensitivity ranking");
        match self {
            KeepFp32::Layers(s) => {
                check_layer_names(&fp32.weights, s)?;
                Ok(s.clone())
            }
            KeepFp32::All => Ok(fp32.weights.layer_names().into_iter().collect()),
            KeepFp32::Top(k) => {
                let s = ranked()?;
                let keep = s.top(*k);
                note(format!("{}: keeping fp32 the {} most sensitive layers: {}", s.variant, keep.len(), list(&keep)));
                Ok(keep)
            }
            KeepFp32::UntilKl(target) => {
                let s = ranked()?;
                let x = inputs.context("--keep-fp32 auto:kl=X needs images to measure the KL on")?;
                let choices = LayerChoices::new(fp32, s.variant, opts)?;
                let scorer = Scorer::new(fp32, x)?;
                let mut keep = BTreeSet::new();
                let mut kl = s.all_quantized.kl;
                for l in &s.layers {
                    if kl <= *target {
                        break;
                    }
                    keep.insert(l.layer);
                    kl = scorer.cost(s.variant, choices.assemble(|n| keep.contains(n))?)?.kl;
                }
                note(format!(
                    "{}: mean KL {:.3e} with {} layer(s) kept fp32 (target {target:e}, all quantized {:.3e}): {}",
                    s.variant,
                    kl,
                    keep.len(),
                    s.all_quantized.kl,
                    if keep.is_empty() { "none".to_string() } else { list(&keep) }
                ));
                Ok(keep)
            }
        }
    }
}

/// The photo the `auto:` forms rank layers on when a command has no images of its own (`export`,
/// `bench` without `--images`): the window's sample photo, built in.
pub fn sample_image() -> Result<image::RgbImage> {
    const SAMPLE: &[u8] = include_bytes!("../../assets/chelsea.png");
    Ok(image::load_from_memory(SAMPLE)?.to_rgb8())
}

fn list(names: &BTreeSet<LayerName>) -> String {
    names.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

impl FromStr for KeepFp32 {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<KeepFp32> {
        let s = s.trim();
        let forms = "expected `none`, `all`, `auto:K`, `auto:kl=X` or layer names like blocks.0.fc2,heads.0";
        match s {
            "" | "none" => return Ok(KeepFp32::Layers(BTreeSet::new())),
            "all" => return Ok(KeepFp32::All),
            _ => {}
        }
        if let Some(auto) = s.strip_prefix("auto:") {
            if let Some(x) = auto.strip_prefix("kl=") {
                return match x.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 => Ok(KeepFp32::UntilKl(v)),
                    _ => bail!("--keep-fp32 {s}: `{x}` is not a KL target (a finite number >= 0)"),
                };
            }
            return match auto.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(KeepFp32::Top(k)),
                _ => bail!("--keep-fp32 {s}: `{auto}` is not a layer count (a whole number >= 1); {forms}"),
            };
        }
        let mut set = BTreeSet::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.parse::<LayerName>() {
                Ok(n) => set.insert(n),
                Err(_) => bail!("--keep-fp32: `{item}` is not a layer name; {forms}"),
            };
        }
        Ok(KeepFp32::Layers(set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_forms_parse() {
        assert_eq!("none".parse::<KeepFp32>().unwrap(), KeepFp32::Layers(BTreeSet::new()));
        assert_eq!("all".parse::<KeepFp32>().unwrap(), KeepFp32::All);
        assert_eq!("auto:3".parse::<KeepFp32>().unwrap(), KeepFp32::Top(3));
        assert_eq!("auto:kl=1e-3".parse::<KeepFp32>().unwrap(), KeepFp32::UntilKl(1e-3));
        let KeepFp32::Layers(s) = "blocks.0.fc2, heads.0".parse::<KeepFp32>().unwrap() else { panic!() };
        assert_eq!(s.into_iter().collect::<Vec<_>>(), ["blocks.0.fc2".parse().unwrap(), LayerName::Head(0)]);
        for bad in ["auto:0", "auto:x", "auto:kl=-1", "auto:kl=nan", "blocks.0.fc3", "all,patch"] {
            assert!(bad.parse::<KeepFp32>().is_err(), "{bad}");
        }
    }
}
