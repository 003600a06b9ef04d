//! Variants of a model: fp32 (the reference), int8 (torch `quantize_dynamic` equivalent) and
//! mobile (int8 plus the graph work `optimize_for_mobile` does, stored as one self-contained
//! file), how to make them, store them, and measure what they lose.

pub mod export;
pub mod int8;
pub mod metrics;
pub mod scheme;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::vit::{Block, Linear, VitWeights};
use int8::Int8Linear;
pub use scheme::Scheme;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Fp32,
    Int8,
    Mobile,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Fp32, Variant::Int8, Variant::Mobile];
    pub fn name(self) -> &'static str {
        match self {
            Variant::Fp32 => "fp32",
            Variant::Int8 => "int8",
            Variant::Mobile => "mobile",
        }
    }

    /// What `self` is compared with by default: fp32 is the reference for the quantized
    /// variants, and fp32 itself is compared with int8 (the window's compare view).
    pub fn default_partner(self) -> Variant {
        if self == Variant::Fp32 { Variant::Int8 } else { Variant::Fp32 }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Variant> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Ok(Variant::Fp32),
            "int8" | "i8" => Ok(Variant::Int8),
            "mobile" => Ok(Variant::Mobile),
            other => bail!("unknown variant `{other}` (expected fp32, int8 or mobile)"),
        }
    }
}

/// Parses `fp32,int8,mobile`.
pub fn parse_variants(list: &str) -> Result<Vec<Variant>> {
    let mut v = Vec::new();
    for s in list.split(',').filter(|s| !s.trim().is_empty()) {
        let x: Variant = s.parse()?;
        if !v.contains(&x) {
            v.push(x);
        }
    }
    if v.is_empty() {
        bail!("no variants given");
    }
    Ok(v)
}

/// Choices in how a model is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantOptions {
    /// Quantize the patch embedding too. torch's `quantize_dynamic({nn.Linear})` leaves it fp32
    /// (it is a Conv2d there); here it is a linear layer on flattened patches, and quantizing
    /// it is what brings a ViT-Ti file under 27% of fp32 (its fp32 patch and position weights
    /// alone are 3% of the model). On by default; off reproduces torch's choice exactly.
    pub patch_embed: bool,
    /// How each quantized layer's weights and inputs are quantized ([`scheme`]).
    pub scheme: Scheme,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions { patch_embed: true, scheme: Scheme::DEFAULT }
    }
}

impl QuantOptions {
    /// The defaults with `scheme`. The `torch` preset also leaves the patch embedding fp32, as
    /// torch does (it is a Conv2d there, not an `nn.Linear`), so its numbers are torch's.
    pub fn with_scheme(scheme: Scheme) -> QuantOptions {
        QuantOptions { patch_embed: scheme != Scheme::TORCH, scheme }
    }
}

/// The scheme a model's int8 layers use (`None` when none is int8).
pub fn model_scheme(model: &crate::model::Model) -> Option<Scheme> {
    let w = &model.weights;
    std::iter::once(&w.patch)
        .chain(w.blocks.iter().flat_map(|b| [&b.qkv, &b.proj, &b.fc1, &b.fc2]))
        .chain(w.heads.iter().map(|(h, _)| h))
        .find_map(|l| match l {
            Linear::Int8(q) => Some(q.scheme),
            _ => None,
        })
}

/// Refuses to use `model` (an exported quantized file) as if it had been quantized with
/// `wanted`: its scheme is fixed; another needs the fp32 model.
pub fn check_scheme(model: &crate::model::Model, wanted: &Scheme) -> Result<()> {
    match model_scheme(model) {
        Some(have) if have != *wanted => bail!(
            "{} holds {} weights quantized with scheme `{have}`; scheme `{wanted}` must be made from the fp32 model",
            model.files.weights.display(),
            model.variant
        ),
        _ => Ok(()),
    }
}

/// A variant's name for people: `int8`, or `int8[torch]` when its scheme is not the default.
pub fn variant_label(model: &crate::model::Model) -> String {
    match model_scheme(model) {
        Some(s) if !s.is_default() => format!("{}[{}]", model.variant, s),
        _ => model.variant.to_string(),
    }
}

fn to_vec2(t: &Tensor) -> Result<(Vec<f32>, usize, usize)> {
    let (n, k) = t.dims2()?;
    Ok((t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?, n, k))
}

/// One fp32 linear layer -> int8 (our kernel on CPU, candle's Q8_0 on CUDA).
/// `row_scale` multiplies the first `rows_scaled` output rows (folding the attention scale).
/// `tensors`: the checkpoint tensors the layer's rows came from ([`Scheme::quantize_weights`]).
fn quantize_linear(
    l: &Linear,
    device: &Device,
    fused_gelu: bool,
    row_scale: Option<(usize, f32)>,
    scheme: Scheme,
    tensors: usize,
) -> Result<Linear> {
    let Linear::F32 { weight, bias, .. } = l else {
        bail!("only fp32 layers can be quantized (this one is already quantized)");
    };
    let (mut w, n, k) = to_vec2(weight)?;
    let mut b = bias.as_ref().map(|b| b.to_device(&Device::Cpu)?.to_vec1::<f32>()).transpose()?;
    if let Some((rows, s)) = row_scale {
        w[..rows * k].iter_mut().for_each(|v| *v *= s);
        if let Some(b) = b.as_mut() {
            b[..rows].iter_mut().for_each(|v| *v *= s);
        }
    }
    if device.is_cpu() {
        Ok(Linear::Int8(Arc::new(Int8Linear::quantize_with(&w, n, k, b, fused_gelu, scheme, tensors))))
    } else if !scheme.is_default() {
        bail!(
            "quantization scheme `{scheme}` runs on our CPU int8 kernels; CUDA int8 is candle's Q8_0 (use --device cpu)"
        )
    } else {
        let wt = Tensor::from_vec(w, (n, k), device)?;
        let bt = b.map(|b| Tensor::from_vec(b, n, device)).transpose()?;
        Linear::q8_0(&wt, bt, fused_gelu)
    }
}

/// Builds a variant's weights from fp32 weights. `heads` is the attention head count (mobile
/// folds 1/sqrt(head_dim) into the q projection); `layout` says whether q, k and v were one
/// tensor (timm) or three (transformers), which per-tensor weight scales follow.
pub fn quantize(
    w: &VitWeights,
    variant: Variant,
    heads: usize,
    layout: crate::model::Layout,
    opts: QuantOptions,
    device: &Device,
) -> Result<VitWeights> {
    if variant == Variant::Fp32 {
        return Ok(w.clone());
    }
    // Scales computed from NaN/Inf weights turn them into finite garbage: refuse instead.
    let bad = w.non_finite_tensors();
    if !bad.is_empty() {
        bail!("cannot quantize to {variant}: non-finite (NaN/Inf) weights in {}", crate::model::vit::list_names(&bad));
    }
    let mobile = variant == Variant::Mobile;
    let d = w.cls_token.dims()[2];
    let fold = mobile.then(|| (d, ((d / heads) as f32).powf(-0.5)));
    let qkv_tensors = if layout == crate::model::Layout::Hf { 3 } else { 1 };
    let s = opts.scheme;
    let blocks = w
        .blocks
        .iter()
        .map(|b| {
            Ok(Block {
                norm1: b.norm1.clone(),
                qkv: quantize_linear(&b.qkv, device, false, fold, s, qkv_tensors)?,
                proj: quantize_linear(&b.proj, device, false, None, s, 1)?,
                norm2: b.norm2.clone(),
                fc1: quantize_linear(&b.fc1, device, mobile, None, s, 1)?,
                fc2: quantize_linear(&b.fc2, device, false, None, s, 1)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(VitWeights {
        patch: if opts.patch_embed { quantize_linear(&w.patch, device, false, None, s, 1)? } else { w.patch.clone() },
        cls_token: w.cls_token.clone(),
        dist_token: w.dist_token.clone(),
        pos_embed: w.pos_embed.clone(),
        blocks,
        norm: w.norm.clone(),
        heads: w
            .heads
            .iter()
            .map(|(h, t)| Ok((quantize_linear(h, device, false, None, s, 1)?, *t)))
            .collect::<Result<_>>()?,
        attention_scale_folded: mobile,
    })
}
