//! candle `CustomOp`s that run our CPU kernels inside the candle graph (CPU tensors only; the
//! forward uses candle's own ops on other devices).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, InplaceOp1, Layout, Shape};

use crate::kernels::attention::{AttentionDims, attention};

/// GELU (erf) on the CPU with our vectorised kernel (within 5e-7 of the exact function), in
/// place: candle's `gelu_erf` evaluates a scalar erf per element, which costs tens of
/// milliseconds per ViT-B forward. Only for tensors the caller just produced and owns alone.
pub struct GeluOp;

impl InplaceOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "gelu-erf-vectorised"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let CpuStorage::F32(data) = storage else { candle_core::bail!("gelu: f32 only") };
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("gelu: input must be contiguous") };
        data[a..b].par_chunks_mut(16 * 1024).for_each(crate::kernels::ops::gelu_slice);
        Ok(())
    }
}

/// Attention over the fused qkv projection `[B, T, 3D]` ([`crate::kernels::attention`]).
/// The result is one flat tensor: the output `[B, T, D]`, followed by the probabilities
/// `[B, H, T, T]` when `with_probs` (a CustomOp returns a single tensor; the caller narrows).
pub struct AttentionOp {
    pub heads: usize,
    pub scale: f32,
    pub with_probs: bool,
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention-fused"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, "attention")?;
        let (batch, tokens, width3) = layout.shape().dims3()?;
        if width3 % (3 * self.heads) != 0 {
            candle_core::bail!("attention: width {width3} is not 3 x {} heads", self.heads);
        }
        let dims = AttentionDims { batch, tokens, heads: self.heads, head_dim: width3 / 3 / self.heads };
        let probs_len = if self.with_probs { dims.probs_len() } else { 0 };
        let mut buf = vec![0f32; dims.out_len() + probs_len];
        let (out, probs) = buf.split_at_mut(dims.out_len());
        let probs = self.with_probs.then_some(probs);
        attention(crate::kernels::reference_only(), qkv, dims, self.scale, out, probs);
        let len = buf.len();
        Ok((CpuStorage::F32(buf), Shape::from(len)))
    }
}

/// `(x + y, LayerNorm(x + y))` in one pass ([`crate::kernels::ops::add_layer_norm`]): the
/// residual add and the norm that follows it. Without `y` (a [`CustomOp1`]), LayerNorm of `x`.
/// The result is the flat sum followed by the flat norm.
pub struct AddLayerNormOp {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

impl AddLayerNormOp {
    fn run(&self, x: &[f32], y: Option<&[f32]>, shape: &Shape) -> candle_core::Result<(CpuStorage, Shape)> {
        if shape.dims().last() != Some(&self.gamma.len()) {
            candle_core::bail!("layer-norm: input {shape:?} does not end in width {}", self.gamma.len());
        }
        let mut buf = vec![0f32; 2 * x.len()];
        let (sum, norm) = buf.split_at_mut(x.len());
        let reference = crate::kernels::reference_only();
        crate::kernels::ops::add_layer_norm(reference, x, y, &self.gamma, &self.beta, self.eps, sum, norm);
        let len = buf.len();
        Ok((CpuStorage::F32(buf), Shape::from(len)))
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{what}: f32 only") };
    let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("{what}: input must be contiguous") };
    Ok(&data[a..b])
}

impl CustomOp1 for AddLayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(contiguous_f32(storage, layout, "layer-norm")?, None, layout.shape())
    }
}

impl CustomOp2 for AddLayerNormOp {
    fn name(&self) -> &'static str {
        "add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("add-layer-norm: shapes differ, {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let x = contiguous_f32(s1, l1, "add-layer-norm")?;
        self.run(x, Some(contiguous_f32(s2, l2, "add-layer-norm")?), l1.shape())
    }
}

/// `(x + y, int8_linear(LayerNorm(x + y)))` in one op: the residual add, the norm and the next
/// int8 layer ([`crate::kernels::gemm_i8::layer_norm_linear`], the norm computed as rows are
/// quantized). Without `y` (a [`CustomOp1`]), the norm of `x`. The result is the flat sum
/// followed by the flat linear output; equal to the unfused ops to the bit.
pub struct AddLayerNormInt8Op<'a> {
    pub norm: &'a AddLayerNormOp,
    pub linear: &'a super::int8::Int8Linear,
}

impl AddLayerNormInt8Op<'_> {
    fn run(&self, x: &[f32], y: Option<&[f32]>, shape: &Shape) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = self.norm.gamma.len();
        if shape.dims().last() != Some(&k) || self.linear.weights.k != k {
            candle_core::bail!(
                "layer-norm-linear: input {shape:?}, norm width {k}, layer input {}",
                self.linear.weights.k
            );
        }
        let buf = self.linear.run_normed(x, y, &self.norm.gamma, &self.norm.beta, self.norm.eps);
        let len = buf.len();
        Ok((CpuStorage::F32(buf), Shape::from(len)))
    }
}

impl CustomOp1 for AddLayerNormInt8Op<'_> {
    fn name(&self) -> &'static str {
        "layer-norm-int8-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(contiguous_f32(storage, layout, "layer-norm-linear")?, None, layout.shape())
    }
}

impl CustomOp2 for AddLayerNormInt8Op<'_> {
    fn name(&self) -> &'static str {
        "add-layer-norm-int8-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("add-layer-norm-linear: shapes differ, {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let x = contiguous_f32(s1, l1, "add-layer-norm-linear")?;
        self.run(x, Some(contiguous_f32(s2, l2, "add-layer-norm-linear")?), l1.shape())
    }
}

/// The fp32 linear layer ([`crate::kernels::linear_f32`]) as a candle op. Inputs: `x` `[m, k]`,
/// `Wᵀ` `[k, n]` (both contiguous), optional bias `[n]`.
pub struct F32LinearOp;

impl F32LinearOp {
    fn run(
        x: &[f32],
        xl: &Layout,
        wt: &[f32],
        wl: &Layout,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (k2, n) = wl.shape().dims2()?;
        if k != k2 || bias.is_some_and(|b| b.len() != n) {
            candle_core::bail!("linear: shapes {:?} x {:?} do not fit", xl.shape(), wl.shape());
        }
        let out = crate::kernels::linear_f32::linear_f32(x, m, k, wt, n, bias);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

impl CustomOp2 for F32LinearOp {
    fn name(&self) -> &'static str {
        "linear-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::run(contiguous_f32(s1, l1, "linear")?, l1, contiguous_f32(s2, l2, "linear")?, l2, None)
    }
}

impl CustomOp3 for F32LinearOp {
    fn name(&self) -> &'static str {
        "linear-f32-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = contiguous_f32(s3, l3, "linear bias")?;
        Self::run(contiguous_f32(s1, l1, "linear")?, l1, contiguous_f32(s2, l2, "linear")?, l2, Some(bias))
    }
}
