//! candle `CustomOp`s that run our CPU kernels inside the candle graph (CPU tensors only; the
//! forward uses candle's own ops on other devices).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

use crate::kernels::attention::{AttentionDims, attention};

/// GELU (erf) on the CPU with our vectorised kernel (within 5e-7 of the exact function):
/// candle's `gelu_erf` evaluates a scalar erf per element, which costs tens of milliseconds per
/// ViT-B forward.
pub struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "gelu-erf-vectorised"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let CpuStorage::F32(data) = storage else { candle_core::bail!("gelu: f32 only") };
        let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("gelu: input must be contiguous") };
        let mut out = data[a..b].to_vec();
        out.par_chunks_mut(16 * 1024).for_each(crate::kernels::ops::gelu_slice);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
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
        let CpuStorage::F32(data) = storage else { candle_core::bail!("attention: f32 only") };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("attention: input must be contiguous")
        };
        let (batch, tokens, width3) = layout.shape().dims3()?;
        if width3 % (3 * self.heads) != 0 {
            candle_core::bail!("attention: width {width3} is not 3 x {} heads", self.heads);
        }
        let dims = AttentionDims { batch, tokens, heads: self.heads, head_dim: width3 / 3 / self.heads };
        let probs_len = if self.with_probs { dims.probs_len() } else { 0 };
        let mut buf = vec![0f32; dims.out_len() + probs_len];
        let (out, probs) = buf.split_at_mut(dims.out_len());
        let probs = self.with_probs.then_some(probs);
        attention(crate::kernels::reference_only(), &data[a..b], dims, self.scale, out, probs);
        let len = buf.len();
        Ok((CpuStorage::F32(buf), Shape::from(len)))
    }
}
