//! The int8 linear layer as a candle `CustomOp1`: activations are quantized per row on the fly
//! and multiplied with pre-quantized weights by [`crate::kernels::gemm_i8`].

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

use crate::kernels::gemm_i8::{self, Epilogue, PackedWeights};
use crate::kernels::selected_isa;

#[derive(Debug)]
pub struct Int8Linear {
    pub weights: PackedWeights,
    pub bias: Option<Vec<f32>>,
    /// GELU applied in the kernel's epilogue (mobile's fc1).
    pub fused_gelu: bool,
}

impl Int8Linear {
    /// Quantizes fp32 weights `[n, k]`.
    pub fn quantize(weight: &[f32], n: usize, k: usize, bias: Option<Vec<f32>>, fused_gelu: bool) -> Int8Linear {
        Int8Linear { weights: PackedWeights::quantize(weight, n, k), bias, fused_gelu }
    }

    fn epilogue(&self) -> Epilogue {
        if self.fused_gelu { Epilogue::Gelu } else { Epilogue::None }
    }

    /// `x` `[m, k]` row-major -> `[m, n]`.
    pub fn run(&self, x: &[f32], m: usize) -> Vec<f32> {
        gemm_i8::linear(selected_isa(), x, m, &self.weights, self.bias.as_deref(), self.epilogue())
    }

    /// This layer on `LayerNorm(x + y)` (`x` alone without `y`), normalised row by row as rows
    /// are quantized; `sum` receives `x + y`.
    pub fn run_normed(
        &self,
        x: &[f32],
        y: Option<&[f32]>,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        sum: &mut [f32],
    ) -> Vec<f32> {
        let (w, bias) = (&self.weights, self.bias.as_deref());
        gemm_i8::layer_norm_linear(selected_isa(), x, y, gamma, beta, eps, sum, w, bias, self.epilogue())
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
