//! The int8 linear layer as a candle `CustomOp1`: activations are quantized on the fly (per row
//! by default, or as its [`Scheme`] says) and multiplied with pre-quantized weights by
//! [`crate::kernels::gemm_i8`].

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

use super::scheme::{self, Scheme};
use crate::kernels::gemm_i8::{self, Epilogue, PackedWeights};
use crate::kernels::{Isa, ops, selected_isa};

#[derive(Debug)]
pub struct Int8Linear {
    pub weights: PackedWeights,
    pub bias: Option<Vec<f32>>,
    /// GELU applied in the kernel's epilogue (mobile's fc1).
    pub fused_gelu: bool,
    /// How the weights were quantized and how inputs are.
    pub scheme: Scheme,
}

impl Int8Linear {
    /// Quantizes fp32 weights `[n, k]` with the default scheme.
    pub fn quantize(weight: &[f32], n: usize, k: usize, bias: Option<Vec<f32>>, fused_gelu: bool) -> Int8Linear {
        Self::quantize_with(weight, n, k, bias, fused_gelu, Scheme::DEFAULT, 1)
    }

    /// Quantizes fp32 weights `[n, k]` with `scheme`; `tensors` as [`Scheme::quantize_weights`].
    pub fn quantize_with(
        weight: &[f32],
        n: usize,
        k: usize,
        bias: Option<Vec<f32>>,
        fused_gelu: bool,
        scheme: Scheme,
        tensors: usize,
    ) -> Int8Linear {
        Int8Linear { weights: scheme.quantize_weights(weight, n, k, tensors), bias, fused_gelu, scheme }
    }

    fn epilogue(&self) -> Epilogue {
        if self.fused_gelu { Epilogue::Gelu } else { Epilogue::None }
    }

    /// `x` `[m, k]` row-major -> `[m, n]`.
    pub fn run(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (isa, bias) = (selected_isa(), self.bias.as_deref());
        if self.scheme.default_activations() {
            gemm_i8::linear(isa, x, m, &self.weights, bias, self.epilogue())
        } else {
            scheme::linear(&self.scheme, isa, x, m, &self.weights, bias, self.epilogue())
        }
    }

    /// This layer on `LayerNorm(x + y)` (`x` alone without `y`), normalised row by row as rows
    /// are quantized: one buffer holding the sum `x + y`, then the layer's output.
    pub fn run_normed(&self, x: &[f32], y: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
        let (isa, w, bias) = (selected_isa(), &self.weights, self.bias.as_deref());
        if self.scheme.default_activations() {
            return gemm_i8::layer_norm_linear(isa, x, y, gamma, beta, eps, w, bias, self.epilogue());
        }
        // Per-tensor parameters need every row normalised before the first is quantized.
        let (mut sum, mut norm) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        ops::add_layer_norm(isa == Isa::Portable, x, y, gamma, beta, eps, &mut sum, &mut norm);
        sum.extend_from_slice(&self.run(&norm, x.len() / w.k.max(1)));
        sum
    }
}

impl CustomOp1 for Int8Linear {
    fn name(&self) -> &'static str {
        "int8-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        if k != self.weights.k {
            candle_core::bail!("int8-linear: input has {k} features, the layer expects {}", self.weights.k);
        }
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("int8-linear: input must be f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("int8-linear: input must be contiguous");
        };
        let out = self.run(&data[start..end], m);
        Ok((CpuStorage::F32(out), Shape::from((m, self.weights.n))))
    }
}
