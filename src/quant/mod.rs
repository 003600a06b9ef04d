//! Variants of a model: fp32 (the reference), int8 (torch `quantize_dynamic` equivalent) and
//! mobile (int8 plus the graph work `optimize_for_mobile` does, stored as one self-contained
//! file), how to make them, store them, and measure what they lose.

pub mod export;
pub mod metrics;
pub mod sensitivity;

/// The int8 layer the forward runs lives in `model`; re-exported here under its old path.
pub use crate::model::int8;
pub use crate::model::scheme::{self, Scheme};
pub use crate::model::variant::{Variant, parse_variants};

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Result, bail};
use candle_core::{Device, Tensor};

use crate::model::layers::{BlockLayer, LayerName};
use crate::model::vit::{Linear, VitWeights};
use crate::model::{Layout, Model};
use int8::Int8Linear;

/// Choices in how a model is quantized (the one carrier of them: the CLI, the window and the
/// benchmark all pass one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantOptions {
    /// Quantize the patch embedding too. torch's `quantize_dynamic({nn.Linear})` leaves it fp32
    /// (it is a Conv2d there); here it is a linear layer on flattened patches, and quantizing
    /// it is what brings a ViT-Ti file under 27% of fp32 (its fp32 patch and position weights
    /// alone are 3% of the model). On by default; off reproduces torch's choice exactly.
    pub patch_embed: bool,
    /// Layers left fp32 in a quantized variant (mixed precision). Empty: every layer quantized.
    pub keep_fp32: BTreeSet<LayerName>,
    /// How each quantized layer's weights and inputs are quantized ([`scheme`]).
    pub scheme: Scheme,
}

impl Default for QuantOptions {
    fn default() -> Self {
        QuantOptions { patch_embed: true, keep_fp32: BTreeSet::new(), scheme: Scheme::DEFAULT }
    }
}

impl QuantOptions {
    /// The defaults with `scheme`. The `torch` preset also leaves the patch embedding fp32, as
    /// torch does (it is a Conv2d there, not an `nn.Linear`), so its numbers are torch's.
    pub fn with_scheme(scheme: Scheme) -> QuantOptions {
        QuantOptions { patch_embed: scheme != Scheme::TORCH, scheme, ..QuantOptions::default() }
    }

    /// Whether the quantized variants hold `name` in fp32.
    pub fn keeps_fp32(&self, name: &LayerName) -> bool {
        self.keep_fp32.contains(name) || (*name == LayerName::Patch && !self.patch_embed)
    }
}

/// Refuses to use `model` (an exported quantized file) as if it had been quantized with
/// `wanted`: its scheme is fixed; another needs the fp32 model.
pub fn check_scheme(model: &Model, wanted: &Scheme) -> Result<()> {
    match model.scheme() {
        Some(have) if have != *wanted => bail!(
            "{} holds {} weights quantized with scheme `{have}`; scheme `{wanted}` must be made from the fp32 model",
            model.display_name(),
            model.variant
        ),
        _ => Ok(()),
    }
}

/// `patch, blocks.N.qkv|proj|fc1|fc2 for N in 0..=11, heads.0`: the layer names of `w`, for
/// error messages.
pub fn describe_layer_names(w: &VitWeights) -> String {
    let blocks = match w.blocks.len() {
        0 => String::new(),
        n => format!(", blocks.N.qkv|proj|fc1|fc2 for N in 0..={}", n - 1),
    };
    let heads: Vec<String> = (0..w.heads.len()).map(|i| LayerName::Head(i).to_string()).collect();
    format!("patch{blocks}, {}", heads.join(", "))
}

/// Refuses names `w` does not have, listing the valid ones.
pub fn check_layer_names<'a>(w: &VitWeights, names: impl IntoIterator<Item = &'a LayerName>) -> Result<()> {
    let unknown: Vec<String> = names.into_iter().filter(|n| w.linear(n).is_none()).map(ToString::to_string).collect();
    if !unknown.is_empty() {
        bail!("no layer {} in this model; its layers are {}", unknown.join(", "), describe_layer_names(w));
    }
    Ok(())
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
    let (w, b, n, k) = scaled_weights(l, row_scale)?;
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

/// An fp32 layer's weights `[n, k]` and bias on the CPU, the first rows times `row_scale`'s factor.
#[allow(clippy::type_complexity)]
fn scaled_weights(l: &Linear, row_scale: Option<(usize, f32)>) -> Result<(Vec<f32>, Option<Vec<f32>>, usize, usize)> {
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
    Ok((w, b, n, k))
}

/// Makes each layer of one variant, quantized or kept fp32: the one rule [`quantize`] and
/// [`LayerChoices`] share, so a mixed model is the same whichever built it.
struct LayerMaker {
    variant: Variant,
    device: Device,
    /// Mobile folds 1/sqrt(head_dim) into the q rows of every qkv: `(rows, factor)`.
    fold: Option<(usize, f32)>,
    scheme: Scheme,
    /// Checkpoint tensors a qkv layer came from: 3 in the transformers layout (q, k, v), 1 in
    /// timm's; per-tensor weight scales follow them.
    qkv_tensors: usize,
}

impl LayerMaker {
    fn new(
        w: &VitWeights,
        variant: Variant,
        heads: usize,
        layout: Layout,
        scheme: Scheme,
        device: &Device,
    ) -> LayerMaker {
        let d = w.cls_token.dims()[2];
        let fold = (variant == Variant::Mobile).then(|| (d, ((d / heads) as f32).powf(-0.5)));
        let qkv_tensors = if layout == Layout::Hf { 3 } else { 1 };
        LayerMaker { variant, device: device.clone(), fold, scheme, qkv_tensors }
    }

    /// `l` (fp32) as the variant holds layer `name`: quantized, or fp32 when `keep`. Mobile's
    /// forward skips the attention scale in every block, so a kept qkv carries it folded in too
    /// (exact when it is a power of two, as for head_dim 64); a kept fc1 simply runs GELU apart.
    fn layer(&self, name: &LayerName, l: &Linear, keep: bool) -> Result<Linear> {
        let is = |b| matches!(name, LayerName::Block(_, x) if *x == b);
        let fold = self.fold.filter(|_| is(BlockLayer::Qkv));
        match (keep, fold) {
            (true, None) => Ok(l.clone()),
            (true, Some(_)) => {
                let (w, b, n, k) = scaled_weights(l, fold)?;
                let dev = match l {
                    Linear::F32 { weight, .. } => weight.device().clone(),
                    _ => Device::Cpu,
                };
                Linear::f32(Tensor::from_vec(w, (n, k), &dev)?, b.map(|b| Tensor::from_vec(b, n, &dev)).transpose()?)
            }
            (false, _) => {
                let fused_gelu = self.variant == Variant::Mobile && is(BlockLayer::Fc1);
                let tensors = if is(BlockLayer::Qkv) { self.qkv_tensors } else { 1 };
                quantize_linear(l, &self.device, fused_gelu, fold, self.scheme, tensors)
            }
        }
    }
}

/// Builds a variant's weights from fp32 weights. `heads` is the attention head count (mobile
/// folds 1/sqrt(head_dim) into the q projection). Layers `opts` keeps are left fp32. `layout`
/// says whether q, k and v were one tensor (timm) or three (transformers), which per-tensor
/// weight scales follow.
pub fn quantize(
    w: &VitWeights,
    variant: Variant,
    heads: usize,
    layout: Layout,
    opts: QuantOptions,
    device: &Device,
) -> Result<VitWeights> {
    if variant == Variant::Fp32 {
        return Ok(w.clone());
    }
    check_layer_names(w, &opts.keep_fp32)?;
    // Scales computed from NaN/Inf weights turn them into finite garbage: refuse instead.
    let bad = w.non_finite_tensors();
    if !bad.is_empty() {
        bail!("cannot quantize to {variant}: non-finite (NaN/Inf) weights in {}", crate::model::vit::list_names(&bad));
    }
    let maker = LayerMaker::new(w, variant, heads, layout, opts.scheme, device);
    let mut out = w.map_linears(|name, l| maker.layer(name, l, opts.keeps_fp32(name)))?;
    out.attention_scale_folded = variant == Variant::Mobile;
    Ok(out)
}

/// Every layer of one variant made both ways, once: quantized, and kept fp32. Any mix of the
/// two is then assembled by swapping layers (shared, not copied), which is what sensitivity
/// analysis needs: 2 x 50 mixed ViT-Ti models from 50 quantizations, not 5000.
pub struct LayerChoices {
    variant: Variant,
    kept: VitWeights,
    quantized: VitWeights,
}

impl LayerChoices {
    /// `fp32` must be an fp32 model; `opts` applies to the quantized side (its keep set is
    /// ignored: every layer is made both ways).
    pub fn new(fp32: &Model, variant: Variant, opts: &QuantOptions) -> Result<LayerChoices> {
        if fp32.variant != Variant::Fp32 || variant == Variant::Fp32 {
            bail!("layer choices need an fp32 model and a quantized variant (got {} -> {variant})", fp32.variant);
        }
        let all = QuantOptions { keep_fp32: fp32.weights.layer_names().into_iter().collect(), ..opts.clone() };
        // The rest of `opts` (the scheme) carries through to both sides.
        let none = QuantOptions { keep_fp32: BTreeSet::new(), patch_embed: true, ..opts.clone() };
        let c = &fp32.config;
        let make = |o: QuantOptions| quantize(&fp32.weights, variant, c.heads, c.layout, o, &fp32.device);
        Ok(LayerChoices { variant, kept: make(all)?, quantized: make(none)? })
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The variant's weights with the layers `keep` says fp32, the rest quantized.
    pub fn assemble(&self, keep: impl Fn(&LayerName) -> bool) -> Result<VitWeights> {
        self.quantized.map_linears(|name, l| {
            Ok(if keep(name) { self.kept.linear(name).expect("same network").clone() } else { l.clone() })
        })
    }
}

/// The model-level entry point of this module: an inherent method of [`Model`] defined here
/// (not in `model`), so that `model` never depends on `quant`.
impl Model {
    /// This model as another variant (quantized from its fp32 weights), `opts.keep_fp32` left fp32.
    pub fn to_variant(&self, variant: Variant, opts: QuantOptions) -> Result<Model> {
        if variant == self.variant && (variant == Variant::Fp32 || opts.keep_fp32.is_empty()) {
            return Ok(self.clone());
        }
        if self.variant != Variant::Fp32 {
            bail!(
                "{} holds {} weights; the {variant} variant must be made from the fp32 model (the original checkpoint or an fp32 export)",
                self.display_name(),
                self.label()
            );
        }
        let weights = quantize(&self.weights, variant, self.config.heads, self.config.layout, opts, &self.device)?;
        Ok(Model { weights, variant, ..self.clone() })
    }
}
