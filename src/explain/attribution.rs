//! Class-specific attribution: gradient-weighted attention relevance (Chefer, Gur, Wolf, ICCV 2021,
//! "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
//! Transformers", their rule for self-attention encoders):
//!
//! ```text
//! R = I;  for each layer:  R += mean_heads((∂y_c/∂A ⊙ A)⁺) · R
//! ```
//!
//! where `A` is the layer's attention probabilities and `y_c` the chosen class's logit. The map
//! is the class token's row of `R` over the patches (for two-token DeiT-distilled models, whose
//! logits average a class-token and a distillation-token head, the mean of both rows).
//!
//! The gradients need a differentiable forward. The model's own CPU forward runs through fused
//! kernels with no backward, so this module runs a reference forward in plain candle ops with
//! candle's autograd: the same weights, fp32. For int8 and mobile the reference forward is
//! fake-quantized: every linear layer uses the dequantized int8 weights and quantizes its input
//! rows exactly as the int8 kernel does, with a straight-through gradient (identity) through the
//! rounding, so each variant gets its own map from its own numbers.

use anyhow::{Context, Result, bail};
use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Shape, Tensor, Var};

use crate::model::Model;
use crate::model::linear::Linear;
use crate::quant::Scheme;

/// The relevance of one image for one class.
#[derive(Clone, Debug)]
pub struct Attribution {
    /// The class explained.
    pub class: usize,
    /// The reference forward's logits `[classes]` (for fp32 equal to the model's up to rounding;
    /// for int8/mobile the fake-quantized forward's).
    pub logits: Vec<f32>,
    /// Tokens `T` (prefix tokens included).
    pub tokens: usize,
    /// The relevance matrix `R`, `T x T` row-major.
    pub relevance: Vec<f32>,
    /// The explained row of `R` (class token, or the mean of the head tokens), `T` long.
    pub row: Vec<f32>,
}

/// int8 quantize-dequantize of a layer's input, as the int8 layer quantizes it (per row by
/// default, or by its scheme); its gradient is passed straight through (the derivative of the
/// rounding is taken as 1).
struct FakeQuantRows(Scheme);

impl CustomOp1 for FakeQuantRows {
    fn name(&self) -> &'static str {
        "fake-quant-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        let CpuStorage::F32(data) = storage else { candle_core::bail!("fake-quant-rows: input must be f32") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fake-quant-rows: input must be contiguous")
        };
        let out = crate::quant::scheme::fake_quantize(&self.0, &data[start..end], m, k);
        Ok((CpuStorage::F32(out), Shape::from((m, k))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.clone()))
    }
}

/// A linear layer of the reference forward.
struct DenseLinear {
    /// `[in, out]`.
    weight_t: Tensor,
    bias: Option<Tensor>,
    /// Quantize input rows (the layer is int8 in the model).
    fake_quant: Option<Scheme>,
}

impl DenseLinear {
    fn new(l: &Linear) -> Result<DenseLinear> {
        let (w, b) = l.dense_weights()?;
        Ok(DenseLinear {
            weight_t: w.t()?.contiguous()?,
            bias: b,
            fake_quant: match l {
                Linear::Int8(q) => Some(q.scheme),
                _ => None,
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().context("scalar input")?;
        let mut x2 = x.reshape((x.elem_count() / k, k))?.contiguous()?;
        if let Some(scheme) = self.fake_quant {
            x2 = x2.apply_op1(FakeQuantRows(scheme))?;
        }
        let mut y = x2.matmul(&self.weight_t)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight_t.dim(1)?;
        Ok(y.reshape(out)?)
    }
}

/// LayerNorm in differentiable candle ops.
fn layer_norm(x: &Tensor, ln: &crate::model::vit::LayerNorm) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + ln.eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(&ln.weight)?.broadcast_add(&ln.bias)?)
}

/// Explains `class` for `pixels` (`[1, 3, S, S]`, normalised, on the CPU) with `model`'s own
/// weights (fp32, or fake-quantized int8/mobile).
pub fn attribution(model: &Model, pixels: &Tensor, class: usize) -> Result<Attribution> {
    if !pixels.device().is_cpu() || !model.device.is_cpu() {
        bail!("attribution runs on the CPU only (the model is on {:?})", model.device);
    }
    let c = &model.config;
    let (b, ch, h, wd) = pixels.dims4()?;
    if b != 1 || ch != 3 || h != c.image_size || wd != c.image_size {
        bail!("attribution takes one image of 3x{s}x{s}, got {b}x{ch}x{h}x{wd}", s = c.image_size);
    }
    if class >= c.num_classes() {
        bail!("class {class} does not exist (the model has {} classes: 0..{})", c.num_classes(), c.num_classes() - 1);
    }
    let w = &model.weights;
    let (heads, p) = (c.heads, c.patch);
    let (gh, gw) = (h / p, wd / p);
    let patches = pixels.reshape((1, ch, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((
        1,
        gh * gw,
        ch * p * p,
    ))?;
    let x = DenseLinear::new(&w.patch)?.forward(&patches)?;
    let d = x.dim(2)?;
    let mut prefix = vec![w.cls_token.clone()];
    if let Some(dist) = &w.dist_token {
        prefix.push(dist.clone());
    }
    prefix.push(x);
    let mut x = Tensor::cat(&prefix, 1)?.broadcast_add(&w.pos_embed)?;
    let t = x.dim(1)?;
    let hd = d / heads;
    let scale = if w.attention_scale_folded { 1.0 } else { (hd as f64).powf(-0.5) };

    // Each layer's attention is used as `A + Z` with `Z` a zero variable: numerically `A`, and the
    // gradient candle keeps for `Z` is ∂y_c/∂A (it drops the gradients of intermediate tensors).
    let mut probes = Vec::with_capacity(w.blocks.len());
    let mut attentions = Vec::with_capacity(w.blocks.len());
    for blk in &w.blocks {
        let qkv = DenseLinear::new(&blk.qkv)?.forward(&layer_norm(&x, &blk.norm1)?)?;
        let qkv = qkv.reshape((1, t, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let a = candle_nn::ops::softmax(&q.matmul(&k.t()?)?, D::Minus1)?;
        let probe = Var::zeros((1, heads, t, t), DType::F32, pixels.device())?;
        let o = (&a + probe.as_tensor())?.matmul(&v)?.transpose(1, 2)?.reshape((1, t, d))?;
        x = (x + DenseLinear::new(&blk.proj)?.forward(&o)?)?;
        let hmid = DenseLinear::new(&blk.fc1)?.forward(&layer_norm(&x, &blk.norm2)?)?.gelu_erf()?;
        x = (&x + DenseLinear::new(&blk.fc2)?.forward(&hmid)?)?;
        probes.push(probe);
        attentions.push(a.detach());
    }
    let x = layer_norm(&x, &w.norm)?;
    let mut logits: Option<Tensor> = None;
    for (head, token) in &w.heads {
        let l = DenseLinear::new(head)?.forward(&x.narrow(1, *token, 1)?.squeeze(1)?)?;
        logits = Some(match logits {
            Some(acc) => (acc + l)?,
            None => l,
        });
    }
    let logits = (logits.context("the model has no classifier head")? / w.heads.len() as f64)?;
    let grads = logits.narrow(1, class, 1)?.sum_all()?.backward()?;

    // R = I; R += mean_heads((grad ⊙ A)⁺) · R, layer by layer.
    let mut r = Tensor::eye(t, DType::F32, pixels.device())?;
    for (a, probe) in attentions.iter().zip(&probes) {
        let grad = grads.get(probe.as_tensor()).context("no gradient reached an attention layer")?;
        let cam = (grad * a)?.relu()?.mean(1)?.squeeze(0)?;
        r = (&r + cam.matmul(&r)?)?;
    }
    let relevance = r.flatten_all()?.to_vec1::<f32>()?;
    let mut row = vec![0f32; t];
    for (_, token) in &w.heads {
        for (o, v) in row.iter_mut().zip(&relevance[token * t..(token + 1) * t]) {
            *o += v / w.heads.len() as f32;
        }
    }
    Ok(Attribution { class, logits: logits.flatten_all()?.to_vec1()?, tokens: t, relevance, row })
}
