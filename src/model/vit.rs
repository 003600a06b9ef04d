//! The one forward pass shared by ViT, DeiT and DeiT-distilled, in both checkpoint layouts.
//!
//! Written on candle tensors rather than reusing candle-transformers' ViT because we need two
//! things it does not offer: the attention probabilities of every layer (for rollout overlays),
//! and linear layers that can be swapped for quantized ones.

use anyhow::Result;
use candle_core::{D, Device, Module, Tensor};

/// A dense layer `y = x Wᵀ + b`. The weight is kept transposed (`[in, out]`, contiguous) so the
/// per-call matmul reads it in the layout the GEMM wants.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`, as checkpoints store it.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    weight_t: Tensor,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let weight_t = weight.t()?.contiguous()?;
        Ok(Linear { weight, bias, weight_t })
    }
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
    fn to_device(&self, device: &Device) -> Result<Linear> {
        Linear::new(self.weight.to_device(device)?, self.bias.as_ref().map(|b| b.to_device(device)).transpose()?)
    }
}

impl Module for Linear {
    /// `x`: `[..., in]` -> `[..., out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, k) = (dims[..dims.len() - 1].iter().product::<usize>(), dims[dims.len() - 1]);
        let y = x.reshape((rows, k))?.matmul(&self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_features();
        y.reshape(out_dims)
    }
}

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
    }
}

#[derive(Clone, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    /// q, k and v fused: `[3D, D]`.
    pub qkv: Linear,
    pub proj: Linear,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// The canonical weight set every checkpoint layout is mapped onto.
#[derive(Clone, Debug)]
pub struct VitWeights {
    /// The patch-embedding convolution flattened to `[D, 3·P·P]`.
    pub patch: Linear,
    pub cls_token: Tensor,
    pub dist_token: Option<Tensor>,
    /// `[1, T, D]`.
    pub pos_embed: Tensor,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    /// Classifier heads with the token each reads; logits are their mean.
    pub heads: Vec<(Linear, usize)>,
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ForwardOutput {
    /// `[B, classes]`.
    pub logits: Tensor,
    /// Per layer, the softmax attention probabilities `[B, heads, T, T]`, when asked for.
    pub attentions: Option<Vec<Tensor>>,
    /// Per layer, the block's output `[B, T, D]`, when asked for (quantization error by layer).
    pub block_outputs: Option<Vec<Tensor>>,
}

/// What to keep from inside the network besides the logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    pub attentions: bool,
    pub block_outputs: bool,
}

impl Capture {
    pub const NONE: Capture = Capture { attentions: false, block_outputs: false };
    pub const ATTENTIONS: Capture = Capture { attentions: true, block_outputs: false };
}

impl VitWeights {
    pub fn to_device(&self, device: &Device) -> Result<VitWeights> {
        if matches!(device, Device::Cpu) {
            return Ok(self.clone());
        }
        let ln = |l: &LayerNorm| -> Result<LayerNorm> {
            Ok(LayerNorm { weight: l.weight.to_device(device)?, bias: l.bias.to_device(device)?, eps: l.eps })
        };
        Ok(VitWeights {
            patch: self.patch.to_device(device)?,
            cls_token: self.cls_token.to_device(device)?,
            dist_token: self.dist_token.as_ref().map(|t| t.to_device(device)).transpose()?,
            pos_embed: self.pos_embed.to_device(device)?,
            blocks: self
                .blocks
                .iter()
                .map(|b| {
                    Ok(Block {
                        norm1: ln(&b.norm1)?,
                        qkv: b.qkv.to_device(device)?,
                        proj: b.proj.to_device(device)?,
                        norm2: ln(&b.norm2)?,
                        fc1: b.fc1.to_device(device)?,
                        fc2: b.fc2.to_device(device)?,
                    })
                })
                .collect::<Result<_>>()?,
            norm: ln(&self.norm)?,
            heads: self.heads.iter().map(|(h, t)| Ok((h.to_device(device)?, *t))).collect::<Result<_>>()?,
        })
    }

    /// Warns (stderr) about NaN/Inf weights: such a checkpoint loads but cannot give meaningful
    /// results, and the user should know before trusting them.
    pub fn check_finite(&self, origin: &std::path::Path) {
        let mut bad = Vec::new();
        let mut check = |name: String, t: &Tensor| {
            if let Ok(v) = t.flatten_all().and_then(|t| t.to_vec1::<f32>())
                && v.iter().any(|x| !x.is_finite())
            {
                bad.push(name);
            }
        };
        check("patch".into(), &self.patch.weight);
        check("pos_embed".into(), &self.pos_embed);
        for (i, b) in self.blocks.iter().enumerate() {
            for (n, l) in [("qkv", &b.qkv), ("proj", &b.proj), ("fc1", &b.fc1), ("fc2", &b.fc2)] {
                check(format!("block {i} {n}"), &l.weight);
            }
        }
        for (h, _) in &self.heads {
            check("head".into(), &h.weight);
        }
        if !bad.is_empty() {
            eprintln!("warning: {}: non-finite (NaN/Inf) weights in {}", origin.display(), bad.join(", "));
        }
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        let lin = |l: &Linear| l.weight.elem_count() + l.bias.as_ref().map_or(0, |b| b.elem_count());
        let ln = |l: &LayerNorm| 2 * l.weight.elem_count();
        lin(&self.patch)
            + self.cls_token.elem_count()
            + self.dist_token.as_ref().map_or(0, |t| t.elem_count())
            + self.pos_embed.elem_count()
            + self
                .blocks
                .iter()
                .map(|b| ln(&b.norm1) + ln(&b.norm2) + lin(&b.qkv) + lin(&b.proj) + lin(&b.fc1) + lin(&b.fc2))
                .sum::<usize>()
            + ln(&self.norm)
            + self.heads.iter().map(|(h, _)| lin(h)).sum::<usize>()
    }
}

/// Runs the network on `pixels` `[B, 3, H, W]` (already normalised).
pub fn forward(w: &VitWeights, heads: usize, patch: usize, pixels: &Tensor, capture: Capture) -> Result<ForwardOutput> {
    let (b, c, h, wd) = pixels.dims4()?;
    let (gh, gw) = (h / patch, wd / patch);
    // Patchify: [B, C, gh, P, gw, P] -> [B, gh, gw, C, P, P] -> [B, N, C·P·P], the conv's order.
    let patches = pixels
        .reshape((b, c, gh, patch, gw, patch))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((b, gh * gw, c * patch * patch))?;
    let x = w.patch.forward(&patches)?;
    let d = x.dim(2)?;
    let mut prefix = vec![w.cls_token.broadcast_as((b, 1, d))?];
    if let Some(dist) = &w.dist_token {
        prefix.push(dist.broadcast_as((b, 1, d))?);
    }
    prefix.push(x);
    let mut x = Tensor::cat(&prefix, 1)?.broadcast_add(&w.pos_embed)?;

    let t = x.dim(1)?;
    let hd = d / heads;
    let scale = (hd as f64).powf(-0.5);
    let mut attentions = capture.attentions.then(Vec::new);
    let mut block_outputs = capture.block_outputs.then(Vec::new);
    for blk in &w.blocks {
        let qkv = blk.qkv.forward(&blk.norm1.forward(&x)?)?;
        // [B, T, 3, H, hd] -> [3, B, H, T, hd]
        let qkv = qkv.reshape((b, t, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        if let Some(a) = attentions.as_mut() {
            a.push(att);
        }
        x = (x + blk.proj.forward(&o)?)?;
        let hmid = blk.fc1.forward(&blk.norm2.forward(&x)?)?.gelu_erf()?;
        x = (&x + blk.fc2.forward(&hmid)?)?;
        if let Some(o) = block_outputs.as_mut() {
            o.push(x.clone());
        }
    }
    let x = w.norm.forward(&x)?;
    let mut logits: Option<Tensor> = None;
    for (head, token) in &w.heads {
        let l = head.forward(&x.narrow(1, *token, 1)?.squeeze(1)?)?;
        logits = Some(match logits {
            Some(acc) => (acc + l)?,
            None => l,
        });
    }
    let logits = (logits.expect("at least one head") / w.heads.len() as f64)?;
    Ok(ForwardOutput { logits, attentions, block_outputs })
}

/// Softmax over the last dimension, as probabilities.
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(logits, D::Minus1)?)
}
