//! The one forward pass shared by ViT, DeiT and DeiT-distilled, in both checkpoint layouts.
//!
//! Written on candle tensors rather than reusing candle-transformers' ViT because we need two
//! things it does not offer: the attention probabilities of every layer (for rollout overlays),
//! and linear layers that can be swapped for quantized ones.

use anyhow::Result;
use candle_core::{D, Device, Module, Tensor};

use super::layers::{BlockLayer, LayerName};
pub use super::linear::Linear;
use super::profiler::{Profiler, stage};

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    fn fused_op(&self) -> candle_core::Result<super::fused::AddLayerNormOp> {
        Ok(super::fused::AddLayerNormOp {
            gamma: self.weight.to_vec1()?,
            beta: self.bias.to_vec1()?,
            eps: self.eps as f32,
        })
    }

    /// `(x + y, LayerNorm(x + y))`: a residual add and the norm after it, one pass on the CPU.
    pub fn add_forward(&self, x: &Tensor, y: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        if !x.device().is_cpu() {
            let sum = (x + y)?;
            let norm = self.forward(&sum)?;
            return Ok((sum, norm));
        }
        let flat = x.contiguous()?.apply_op2_no_bwd(&y.contiguous()?, &self.fused_op()?)?;
        let n = x.elem_count();
        Ok((flat.narrow(0, 0, n)?.reshape(x.shape())?, flat.narrow(0, n, n)?.reshape(x.shape())?))
    }

    /// Whether [`LayerNorm::add_forward_linear`] runs as one op (an int8 layer on the CPU).
    pub fn fuses_with(&self, linear: &Linear, device: &Device) -> bool {
        matches!(linear, Linear::Int8(_)) && device.is_cpu()
    }

    /// `(x + y, linear(LayerNorm(x + y)))` (`x` alone without `y`), GELU after the layer when
    /// `gelu`. On the CPU with an int8 layer this is one op: the norm is computed as the layer
    /// quantizes its rows, never stored (small models paid a parallel hand-off per norm).
    pub fn add_forward_linear(
        &self,
        x: &Tensor,
        y: Option<&Tensor>,
        linear: &Linear,
        gelu: bool,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (Linear::Int8(q), true) = (linear, x.device().is_cpu()) else {
            let (sum, norm) = match y {
                Some(y) => self.add_forward(x, y)?,
                None => (x.clone(), self.forward(x)?),
            };
            let out = if gelu { linear.forward_gelu(&norm)? } else { linear.forward(&norm)? };
            return Ok((sum, out));
        };
        let dims = x.dims();
        let (k, rows) = (dims[dims.len() - 1], x.elem_count() / dims[dims.len() - 1].max(1));
        let norm = self.fused_op()?;
        let op = super::fused::AddLayerNormInt8Op { norm: &norm, linear: q };
        let x2 = x.contiguous()?.reshape((rows, k))?;
        let flat = match y {
            Some(y) => x2.apply_op2_no_bwd(&y.contiguous()?.reshape((rows, k))?, &op)?,
            None => x2.apply_op1_no_bwd(&op)?,
        };
        let n = x.elem_count();
        let sum = flat.narrow(0, 0, n)?.reshape(x.shape())?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = q.weights.n;
        let out = flat.narrow(0, n, rows * q.weights.n)?.reshape(out_dims)?;
        let out = if gelu && !linear.fuses_gelu() { Linear::gelu_in_place(out)? } else { out };
        Ok((sum, out))
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !x.device().is_cpu() {
            return candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32);
        }
        let flat = x.contiguous()?.apply_op1_no_bwd(&self.fused_op()?)?;
        let n = x.elem_count();
        flat.narrow(0, n, n)?.reshape(x.shape())
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

impl Block {
    pub fn linear(&self, l: BlockLayer) -> &Linear {
        match l {
            BlockLayer::Qkv => &self.qkv,
            BlockLayer::Proj => &self.proj,
            BlockLayer::Fc1 => &self.fc1,
            BlockLayer::Fc2 => &self.fc2,
        }
    }

    fn linear_mut(&mut self, l: BlockLayer) -> &mut Linear {
        match l {
            BlockLayer::Qkv => &mut self.qkv,
            BlockLayer::Proj => &mut self.proj,
            BlockLayer::Fc1 => &mut self.fc1,
            BlockLayer::Fc2 => &mut self.fc2,
        }
    }
}

/// The weights of a network that are not linear layers: what a loader reads before asking for
/// the linear layers by name ([`VitWeights::assemble`]).
pub struct DenseWeights {
    pub cls_token: Tensor,
    pub dist_token: Option<Tensor>,
    pub pos_embed: Tensor,
    /// `(norm1, norm2)` of each block; their count is the depth.
    pub block_norms: Vec<(LayerNorm, LayerNorm)>,
    pub norm: LayerNorm,
    /// The token each classifier head reads; their count is the number of heads.
    pub head_tokens: Vec<usize>,
    pub attention_scale_folded: bool,
}

impl DenseWeights {
    /// Reads the dense tensors of a network of config `c` by their exported names (those of
    /// [`VitWeights::dense_tensors`]), asking `tensor(name, shape)` for each.
    pub fn read(
        c: &super::VitConfig,
        attention_scale_folded: bool,
        mut tensor: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<DenseWeights> {
        let (d, eps) = (c.hidden, c.layer_norm_eps);
        let mut ln = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: tensor(&format!("{name}.weight"), &[d])?,
                bias: tensor(&format!("{name}.bias"), &[d])?,
                eps,
            })
        };
        let block_norms = (0..c.depth)
            .map(|i| Ok((ln(&format!("blocks.{i}.norm1"))?, ln(&format!("blocks.{i}.norm2"))?)))
            .collect::<Result<_>>()?;
        let norm = ln("norm")?;
        Ok(DenseWeights {
            cls_token: tensor("cls_token", &[1, 1, d])?,
            dist_token: if c.dist_token { Some(tensor("dist_token", &[1, 1, d])?) } else { None },
            pos_embed: tensor("pos_embed", &[1, c.num_tokens(), d])?,
            block_norms,
            norm,
            head_tokens: (0..super::layers::head_count(c)).collect(),
            attention_scale_folded,
        })
    }
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
    /// The attention scale 1/sqrt(head_dim) is already folded into the q rows of every `qkv`
    /// (a mobile graph optimisation), so the forward must not apply it again.
    pub attention_scale_folded: bool,
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
    /// Builds weights from their dense parts, asking `linear` for every linear layer by name in
    /// forward order (the one place a loader's names meet the struct's fields).
    pub fn assemble(dense: DenseWeights, mut linear: impl FnMut(&LayerName) -> Result<Linear>) -> Result<VitWeights> {
        let patch = linear(&LayerName::Patch)?;
        let mut blocks = Vec::with_capacity(dense.block_norms.len());
        for (i, (norm1, norm2)) in dense.block_norms.into_iter().enumerate() {
            let mut l = |b| linear(&LayerName::Block(i, b));
            let (qkv, proj, fc1, fc2) =
                (l(BlockLayer::Qkv)?, l(BlockLayer::Proj)?, l(BlockLayer::Fc1)?, l(BlockLayer::Fc2)?);
            blocks.push(Block { norm1, qkv, proj, norm2, fc1, fc2 });
        }
        let heads = dense
            .head_tokens
            .iter()
            .enumerate()
            .map(|(i, &token)| Ok((linear(&LayerName::Head(i))?, token)))
            .collect::<Result<_>>()?;
        Ok(VitWeights {
            patch,
            cls_token: dense.cls_token,
            dist_token: dense.dist_token,
            pos_embed: dense.pos_embed,
            blocks,
            norm: dense.norm,
            heads,
            attention_scale_folded: dense.attention_scale_folded,
        })
    }

    /// Every linear layer's name, in forward order.
    pub fn layer_names(&self) -> Vec<LayerName> {
        LayerName::all(self.blocks.len(), self.heads.len())
    }

    /// The layer called `name`, if this network has it.
    pub fn linear(&self, name: &LayerName) -> Option<&Linear> {
        match *name {
            LayerName::Patch => Some(&self.patch),
            LayerName::Block(i, l) => self.blocks.get(i).map(|b| b.linear(l)),
            LayerName::Head(i) => self.heads.get(i).map(|(h, _)| h),
        }
    }

    fn linear_mut(&mut self, name: &LayerName) -> Option<&mut Linear> {
        match *name {
            LayerName::Patch => Some(&mut self.patch),
            LayerName::Block(i, l) => self.blocks.get_mut(i).map(|b| b.linear_mut(l)),
            LayerName::Head(i) => self.heads.get_mut(i).map(|(h, _)| h),
        }
    }

    /// Every linear layer with its name, in forward order.
    pub fn linears(&self) -> Vec<(LayerName, &Linear)> {
        self.layer_names().into_iter().filter_map(|n| self.linear(&n).map(|l| (n, l))).collect()
    }

    /// The same network with every linear layer replaced by `f(name, layer)`; everything else is
    /// shared (tensors are reference-counted, int8 layers behind `Arc`), so swapping a few layers
    /// costs only those layers.
    pub fn map_linears(&self, mut f: impl FnMut(&LayerName, &Linear) -> Result<Linear>) -> Result<VitWeights> {
        let mut out = self.clone();
        for name in self.layer_names() {
            let new = f(&name, self.linear(&name).expect("a name of this network"))?;
            *out.linear_mut(&name).expect("a name of this network") = new;
        }
        Ok(out)
    }

    /// The same network with every tensor outside the linear layers replaced by `f(name, tensor)`
    /// (names as in [`VitWeights::dense_tensors`]).
    pub fn map_dense(&self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<VitWeights> {
        let mut out = self.clone();
        let mut apply = |name: String, t: &mut Tensor| -> Result<()> {
            *t = f(&name, t)?;
            Ok(())
        };
        apply("cls_token".into(), &mut out.cls_token)?;
        apply("pos_embed".into(), &mut out.pos_embed)?;
        if let Some(d) = out.dist_token.as_mut() {
            apply("dist_token".into(), d)?;
        }
        for (i, b) in out.blocks.iter_mut().enumerate() {
            for (n, l) in [("norm1", &mut b.norm1), ("norm2", &mut b.norm2)] {
                apply(format!("blocks.{i}.{n}.weight"), &mut l.weight)?;
                apply(format!("blocks.{i}.{n}.bias"), &mut l.bias)?;
            }
        }
        apply("norm.weight".into(), &mut out.norm.weight)?;
        apply("norm.bias".into(), &mut out.norm.bias)?;
        Ok(out)
    }

    /// The linear layers held in fp32.
    pub fn fp32_layers(&self) -> Vec<LayerName> {
        self.linears().into_iter().filter(|(_, l)| matches!(l, Linear::F32 { .. })).map(|(n, _)| n).collect()
    }

    pub fn to_device(&self, device: &Device) -> Result<VitWeights> {
        if matches!(device, Device::Cpu) {
            return Ok(self.clone());
        }
        self.map_linears(|_, l| l.to_device(device))?.map_dense(|_, t| Ok(t.to_device(device)?))
    }

    /// Names (as in exported files) of the tensors holding NaN or Inf: fp32 weights and biases,
    /// int8 scales and biases, tokens, position embedding, norms.
    pub fn non_finite_tensors(&self) -> Vec<String> {
        fn finite(t: &Tensor) -> bool {
            t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map(|v| v.iter().all(|x| x.is_finite())).unwrap_or(true)
        }
        let mut bad = Vec::new();
        for (name, l) in self.linears() {
            match l {
                Linear::F32 { weight, bias, .. } => {
                    if !finite(weight) {
                        bad.push(format!("{name}.weight"));
                    }
                    if bias.as_ref().is_some_and(|b| !finite(b)) {
                        bad.push(format!("{name}.bias"));
                    }
                }
                Linear::Int8(q) => {
                    if q.weights.scales.iter().any(|x| !x.is_finite()) {
                        bad.push(format!("{name}.scale"));
                    }
                    if q.bias.as_ref().is_some_and(|b| b.iter().any(|x| !x.is_finite())) {
                        bad.push(format!("{name}.bias"));
                    }
                }
                Linear::Q8_0 { bias, .. } => {
                    if bias.as_ref().is_some_and(|b| !finite(b)) {
                        bad.push(format!("{name}.bias"));
                    }
                }
            }
        }
        for (name, t) in self.dense_tensors() {
            if !finite(t) {
                bad.push(name);
            }
        }
        bad
    }

    /// Warns about NaN/Inf weights: such a checkpoint loads (to be inspected) but cannot give
    /// meaningful results; quantizing or exporting it is refused.
    pub fn check_finite(&self, origin: &std::path::Path) {
        let bad = self.non_finite_tensors();
        if !bad.is_empty() {
            log::warn!("{}: non-finite (NaN/Inf) weights in {}", origin.display(), list_names(&bad));
        }
    }

    /// The fp32 tensors outside linear layers (tokens, position embedding, norms).
    pub fn dense_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = vec![("cls_token".to_string(), &self.cls_token), ("pos_embed".to_string(), &self.pos_embed)];
        if let Some(d) = &self.dist_token {
            v.push(("dist_token".to_string(), d));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            for (n, l) in [("norm1", &b.norm1), ("norm2", &b.norm2)] {
                v.push((format!("blocks.{i}.{n}.weight"), &l.weight));
                v.push((format!("blocks.{i}.{n}.bias"), &l.bias));
            }
        }
        v.push(("norm.weight".to_string(), &self.norm.weight));
        v.push(("norm.bias".to_string(), &self.norm.bias));
        v
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        self.linears().iter().map(|(_, l)| l.param_count()).sum::<usize>()
            + self.dense_tensors().iter().map(|(_, t)| t.elem_count()).sum::<usize>()
    }

    /// Bytes of weights in memory.
    pub fn weight_bytes(&self) -> usize {
        self.linears().iter().map(|(_, l)| l.weight_bytes()).sum::<usize>()
            + 4 * self.dense_tensors().iter().map(|(_, t)| t.elem_count()).sum::<usize>()
    }
}

/// `a, b, c` (at most 8 shown, then how many more).
pub fn list_names(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    let more = if names.len() > 8 { format!(" and {} more", names.len() - 8) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// Runs the network on `pixels` `[B, 3, H, W]` (already normalised).
pub fn forward(w: &VitWeights, heads: usize, patch: usize, pixels: &Tensor, capture: Capture) -> Result<ForwardOutput> {
    forward_profiled(w, heads, patch, pixels, capture, None)
}

/// [`forward`], each stage timed into `prof` when one is given. Where a norm is fused into the
/// int8 layer after it, the fused op is one stage (`norm1+qkv`, `norm2+fc1`); elsewhere the norm
/// and the layer are two. A norm stage includes the residual add before it.
pub fn forward_profiled(
    w: &VitWeights,
    heads: usize,
    patch: usize,
    pixels: &Tensor,
    capture: Capture,
    mut prof: Option<&mut Profiler>,
) -> Result<ForwardOutput> {
    let (b, c, h, wd) = pixels.dims4()?;
    let (gh, gw) = (h / patch, wd / patch);
    let d = w.patch.out_features();
    let patch_macs = || (b * gh * gw * c * patch * patch * d) as u64;
    let mut x = stage(prof.as_deref_mut(), "patch embed", None, patch_macs, || -> Result<Tensor> {
        // Patchify: [B, C, gh, P, gw, P] -> [B, gh, gw, C, P, P] -> [B, N, C·P·P], the conv's order.
        let patches = pixels
            .reshape((b, c, gh, patch, gw, patch))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, c * patch * patch))?;
        let x = w.patch.forward(&patches)?;
        let mut prefix = vec![w.cls_token.broadcast_as((b, 1, d))?];
        if let Some(dist) = &w.dist_token {
            prefix.push(dist.broadcast_as((b, 1, d))?);
        }
        prefix.push(x);
        Ok(Tensor::cat(&prefix, 1)?.broadcast_add(&w.pos_embed)?)
    })?;
    let t = x.dim(1)?;

    // Mobile's weights already carry the scale in q.
    let scale = if w.attention_scale_folded { 1.0 } else { ((d / heads) as f64).powf(-0.5) };
    let mut attentions = capture.attentions.then(Vec::new);
    let mut block_outputs = capture.block_outputs.then(Vec::new);
    // Each norm is computed together with the residual add before it and the linear layer after
    // it (`add_forward_linear`): `qkv` is the input of the next attention.
    let mut normed = None;
    let mut qkv = match w.blocks.first() {
        Some(first) => norm_linear(prof.as_deref_mut(), 0, NORM1_QKV, &first.norm1, &x, None, &first.qkv, false)?.1,
        None => {
            normed = Some(stage(prof.as_deref_mut(), "final norm", None, || 0, || w.norm.forward(&x))?);
            x.clone() // unused: no block reads it
        }
    };
    for (i, blk) in w.blocks.iter().enumerate() {
        let with_probs = attentions.is_some();
        let attention_macs = || (2 * b * t * t * d) as u64;
        let (o, att) = stage(prof.as_deref_mut(), "attention", Some(i), attention_macs, || {
            if qkv.device().is_cpu() {
                attention_cpu(&qkv, heads, scale, with_probs)
            } else {
                attention_graph(&qkv, heads, scale, with_probs)
            }
        })?;
        if let (Some(a), Some(att)) = (attentions.as_mut(), att) {
            a.push(att);
        }
        let proj =
            stage(prof.as_deref_mut(), "proj", Some(i), || linear_macs(&blk.proj, b * t), || blk.proj.forward(&o))?;
        let (x1, hmid) = norm_linear(prof.as_deref_mut(), i, NORM2_FC1, &blk.norm2, &x, Some(&proj), &blk.fc1, true)?;
        let mlp =
            stage(prof.as_deref_mut(), "fc2", Some(i), || linear_macs(&blk.fc2, b * t), || blk.fc2.forward(&hmid))?;
        match w.blocks.get(i + 1) {
            Some(next) => {
                (x, qkv) =
                    norm_linear(prof.as_deref_mut(), i + 1, NORM1_QKV, &next.norm1, &x1, Some(&mlp), &next.qkv, false)?
            }
            None => {
                let (sum, n) = stage(prof.as_deref_mut(), "final norm", None, || 0, || w.norm.add_forward(&x1, &mlp))?;
                (x, normed) = (sum, Some(n));
            }
        }
        if let Some(o) = block_outputs.as_mut() {
            o.push(x.clone());
        }
    }
    let x = normed.expect("the final norm follows the last block");
    let head_macs = || w.heads.iter().map(|(h, _)| linear_macs(h, b)).sum();
    let logits = stage(prof, "head", None, head_macs, || -> Result<Tensor> {
        let mut logits: Option<Tensor> = None;
        for (head, token) in &w.heads {
            let l = head.forward(&x.narrow(1, *token, 1)?.squeeze(1)?)?;
            logits = Some(match logits {
                Some(acc) => (acc + l)?,
                None => l,
            });
        }
        Ok((logits.expect("at least one head") / w.heads.len() as f64)?)
    })?;
    Ok(ForwardOutput { logits, attentions, block_outputs })
}

fn linear_macs(l: &Linear, rows: usize) -> u64 {
    (rows * l.in_features() * l.out_features()) as u64
}

/// Stage names of a norm and the layer after it: fused, the norm alone, the layer alone.
const NORM1_QKV: [&str; 3] = ["norm1+qkv", "norm1", "qkv"];
const NORM2_FC1: [&str; 3] = ["norm2+fc1", "norm2", "fc1"];

/// [`LayerNorm::add_forward_linear`] for block `block`: one stage where it is one op (an int8
/// layer on the CPU), a norm stage and a layer stage otherwise (the same calls it makes then).
#[allow(clippy::too_many_arguments)]
fn norm_linear(
    prof: Option<&mut Profiler>,
    block: usize,
    names: [&'static str; 3],
    norm: &LayerNorm,
    x: &Tensor,
    y: Option<&Tensor>,
    linear: &Linear,
    gelu: bool,
) -> Result<(Tensor, Tensor)> {
    let macs = || linear_macs(linear, x.elem_count() / linear.in_features().max(1));
    match prof {
        Some(p) if super::profiler::PROFILER_COMPILED_IN && !norm.fuses_with(linear, x.device()) => {
            let (sum, normed) = p.time(names[1], Some(block), 0, || match y {
                Some(y) => norm.add_forward(x, y),
                None => Ok((x.clone(), norm.forward(x)?)),
            })?;
            let out = p.time(names[2], Some(block), macs(), || {
                if gelu { linear.forward_gelu(&normed) } else { linear.forward(&normed) }
            })?;
            Ok((sum, out))
        }
        prof => Ok(stage(prof, names[0], Some(block), macs, || norm.add_forward_linear(x, y, linear, gelu))?),
    }
}

/// Attention on the CPU in one kernel ([`crate::kernels::attention`]): output `[B, T, D]` and,
/// when asked, the probabilities `[B, H, T, T]`.
fn attention_cpu(qkv: &Tensor, heads: usize, scale: f64, with_probs: bool) -> Result<(Tensor, Option<Tensor>)> {
    let (b, t, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let op = super::fused::AttentionOp { heads, scale: scale as f32, with_probs };
    let flat = qkv.contiguous()?.apply_op1_no_bwd(&op)?;
    let out = flat.narrow(0, 0, b * t * d)?.reshape((b, t, d))?;
    let probs =
        with_probs.then(|| flat.narrow(0, b * t * d, b * heads * t * t)?.reshape((b, heads, t, t))).transpose()?;
    Ok((out, probs))
}

/// The same attention as candle ops (any device).
fn attention_graph(qkv: &Tensor, heads: usize, scale: f64, with_probs: bool) -> Result<(Tensor, Option<Tensor>)> {
    let (b, t, d3) = qkv.dims3()?;
    let (d, hd) = (d3 / 3, d3 / 3 / heads);
    // [B, T, 3, H, hd] -> [3, B, H, T, hd]
    let qkv = qkv.reshape((b, t, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?;
    let q = (qkv.get(0)?.contiguous()? * scale)?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
    let out = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
    Ok((out, with_probs.then_some(att)))
}

/// Softmax over the last dimension, as probabilities.
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(logits, D::Minus1)?)
}
