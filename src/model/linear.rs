//! A linear layer that can be fp32 or quantized, so one forward serves every variant.

use std::sync::Arc;

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::kernels::{SimdLevel, cpu_path, gemm_f32};
use crate::model::int8::Int8Linear;

#[derive(Clone, Debug)]
pub enum Linear {
    /// `y = x Wᵀ + b` in fp32; `weight` `[out, in]` as loaded, `matmul` the form the product reads.
    F32 { weight: Tensor, bias: Option<Tensor>, matmul: F32Matmul },
    /// Our dynamically quantized int8 kernel (CPU), bias and optional GELU fused.
    Int8(Arc<Int8Linear>),
    /// int8 on CUDA: candle's Q8_0 quantized matmul (block-wise int8 weights, 32 per scale),
    /// because our kernel is CPU-only. Numerically close to, not identical with, `Int8`.
    Q8_0 { matmul: QMatMul, bias: Option<Tensor>, in_features: usize, out_features: usize, fused_gelu: bool },
}

impl Linear {
    pub fn f32(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let level = cpu_path().simd;
        let matmul = if weight.device().is_cpu() && gemm_f32::has_kernel(level) {
            let (n, k) = weight.dims2()?;
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
            F32Matmul::Packed(Arc::new(F32Linear {
                weights: gemm_f32::PackedB::from_weights(&w, n, k),
                bias: b,
                level,
            }))
        } else {
            F32Matmul::Transposed(weight.t()?.contiguous()?)
        };
        Ok(Linear::F32 { weight, bias, matmul })
    }

    pub fn in_features(&self) -> usize {
        match self {
            Linear::F32 { weight, .. } => weight.dims()[1],
            Linear::Int8(q) => q.weights.k,
            Linear::Q8_0 { in_features, .. } => *in_features,
        }
    }

    pub fn out_features(&self) -> usize {
        match self {
            Linear::F32 { weight, .. } => weight.dims()[0],
            Linear::Int8(q) => q.weights.n,
            Linear::Q8_0 { out_features, .. } => *out_features,
        }
    }

    /// Whether the layer applies GELU itself (mobile's fused fc1).
    pub fn fuses_gelu(&self) -> bool {
        match self {
            Linear::F32 { .. } => false,
            Linear::Int8(q) => q.fused_gelu,
            Linear::Q8_0 { fused_gelu, .. } => *fused_gelu,
        }
    }

    /// The layer followed by GELU, fused where the layer supports it.
    pub fn forward_gelu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Linear::F32 { matmul: F32Matmul::Packed(layer), .. } = self {
            // Our f32 kernel applies GELU to each tile while it is still in cache.
            return self.apply_rows(x, |x2| x2.apply_op1_no_bwd(&F32LinearOp { layer: layer.clone(), gelu: true }));
        }
        let y = self.forward(x)?;
        if self.fuses_gelu() { Ok(y) } else { Self::gelu_in_place(y) }
    }

    /// GELU of a layer's fresh output `y` (shared with no one: overwritten on the CPU).
    pub fn gelu_in_place(y: Tensor) -> candle_core::Result<Tensor> {
        if y.device().is_cpu() {
            let y = y.contiguous()?;
            y.inplace_op1(&super::fused::GeluOp)?;
            Ok(y)
        } else {
            y.gelu_erf()
        }
    }

    /// Parameter count (weights + bias).
    pub fn param_count(&self) -> usize {
        self.in_features() * self.out_features() + self.out_features() * usize::from(self.has_bias())
    }

    pub fn has_bias(&self) -> bool {
        match self {
            Linear::F32 { bias, .. } | Linear::Q8_0 { bias, .. } => bias.is_some(),
            Linear::Int8(q) => q.bias.is_some(),
        }
    }

    /// Bytes the weights occupy in memory.
    pub fn weight_bytes(&self) -> usize {
        let bias = 4 * self.out_features() * usize::from(self.has_bias());
        match self {
            Linear::F32 { weight, .. } => 4 * weight.elem_count() + bias,
            Linear::Int8(q) => q.weights.bytes_in_memory() + bias,
            // Q8_0: 34 bytes per block of 32 weights.
            Linear::Q8_0 { .. } => self.in_features() * self.out_features() / 32 * 34 + bias,
        }
    }

    /// The fp32 weight `[out, in]` (dequantized for quantized layers) and bias.
    pub fn dense_weights(&self) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            Linear::F32 { weight, bias, .. } => Ok((weight.clone(), bias.clone())),
            Linear::Int8(q) => {
                let w = Tensor::from_vec(q.weights.dequantize(), (q.weights.n, q.weights.k), &Device::Cpu)?;
                let b = q.bias.as_ref().map(|b| Tensor::from_slice(b, b.len(), &Device::Cpu)).transpose()?;
                Ok((w, b))
            }
            Linear::Q8_0 { .. } => anyhow::bail!("Q8_0 layers cannot be turned back into dense weights"),
        }
    }

    pub fn to_device(&self, device: &Device) -> Result<Linear> {
        match (self, device) {
            (Linear::F32 { weight, bias, .. }, _) => {
                Linear::f32(weight.to_device(device)?, bias.as_ref().map(|b| b.to_device(device)).transpose()?)
            }
            (Linear::Int8(_), Device::Cpu) => Ok(self.clone()),
            (Linear::Int8(q), _) => {
                let (w, b) = self.dense_weights()?;
                Linear::q8_0(&w.to_device(device)?, b.map(|b| b.to_device(device)).transpose()?, q.fused_gelu)
            }
            (Linear::Q8_0 { .. }, _) => Ok(self.clone()),
        }
    }

    /// candle's Q8_0 quantized matmul (the CUDA int8 path).
    pub fn q8_0(weight: &Tensor, bias: Option<Tensor>, fused_gelu: bool) -> Result<Linear> {
        let (out_features, in_features) = weight.dims2()?;
        let q = QTensor::quantize(weight, GgmlDType::Q8_0)?;
        Ok(Linear::Q8_0 { matmul: QMatMul::from_qtensor(q)?, bias, in_features, out_features, fused_gelu })
    }
}

impl Linear {
    /// `f` on `x` seen as rows `[.., in]` -> `[rows, out]`, reshaped back to `[..., out]`.
    fn apply_rows(
        &self,
        x: &Tensor,
        f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, k) = (dims[..dims.len() - 1].iter().product::<usize>(), dims[dims.len() - 1]);
        let y = f(&x.reshape((rows, k))?.contiguous()?)?;
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_features();
        y.reshape(out_dims)
    }
}

impl Module for Linear {
    /// `x`: `[..., in]` -> `[..., out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply_rows(x, |x2| self.forward_rows(x2))
    }
}

impl Linear {
    /// The layer on contiguous rows `[rows, in]`.
    fn forward_rows(&self, x2: &Tensor) -> candle_core::Result<Tensor> {
        Ok(match self {
            Linear::F32 { matmul: F32Matmul::Packed(layer), .. } => {
                x2.apply_op1_no_bwd(&F32LinearOp { layer: layer.clone(), gelu: false })?
            }
            Linear::F32 { matmul: F32Matmul::Transposed(weight_t), bias, .. } if x2.device().is_cpu() => match bias {
                Some(b) => x2.apply_op3_no_bwd(weight_t, b, &super::fused::F32LinearOp)?,
                None => x2.apply_op2_no_bwd(weight_t, &super::fused::F32LinearOp)?,
            },
            Linear::F32 { matmul: F32Matmul::Transposed(weight_t), bias, .. } => {
                let y = x2.matmul(weight_t)?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Linear::Int8(q) => x2.apply_op1_no_bwd(q.as_ref())?,
            Linear::Q8_0 { matmul, bias, fused_gelu, .. } => {
                let y = matmul.forward(x2)?;
                let y = match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                if *fused_gelu { y.gelu_erf()? } else { y }
            }
        })
    }
}

/// How an fp32 layer multiplies.
#[derive(Clone, Debug)]
pub enum F32Matmul {
    /// Weights packed once for our f32 kernel (CPUs with AVX2+FMA or AVX-512).
    Packed(Arc<F32Linear>),
    /// The weight transposed (`[in, out]`, contiguous), read by the `gemm` crate on CPUs without
    /// our kernel and by candle's matmul on CUDA.
    Transposed(Tensor),
}

/// An fp32 layer's weights in [`gemm_f32`]'s packed layout, with its bias and the path it was
/// packed for.
#[derive(Debug)]
pub struct F32Linear {
    pub weights: gemm_f32::PackedB,
    pub bias: Option<Vec<f32>>,
    pub level: SimdLevel,
}

/// [`F32Linear`] as a candle op on `[m, k]` rows, GELU fused when `gelu`.
struct F32LinearOp {
    layer: Arc<F32Linear>,
    gelu: bool,
}

impl candle_core::CustomOp1 for F32LinearOp {
    fn name(&self) -> &'static str {
        "linear-f32-packed"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (m, k) = layout.shape().dims2()?;
        let l = &self.layer;
        if k != l.weights.k {
            candle_core::bail!("linear: input has {k} features, the layer expects {}", l.weights.k);
        }
        let candle_core::CpuStorage::F32(data) = storage else { candle_core::bail!("linear: input must be f32") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("linear: input must be contiguous")
        };
        let out = gemm_f32::linear(l.level, &data[start..end], m, &l.weights, l.bias.as_deref(), self.gelu);
        Ok((candle_core::CpuStorage::F32(out), candle_core::Shape::from((m, l.weights.n))))
    }
}
