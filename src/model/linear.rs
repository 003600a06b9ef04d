//! A linear layer that can be fp32 or quantized, so one forward serves every variant.

use std::sync::Arc;

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::model::int8::Int8Linear;

#[derive(Clone, Debug)]
pub enum Linear {
    /// `y = x Wᵀ + b` with candle's matmul. The weight is also kept transposed (`[in, out]`,
    /// contiguous) so the per-call GEMM reads it in its preferred layout.
    F32 { weight: Tensor, weight_t: Tensor, bias: Option<Tensor> },
    /// Our dynamically quantized int8 kernel (CPU), bias and optional GELU fused.
    Int8(Arc<Int8Linear>),
    /// int8 on CUDA: candle's Q8_0 quantized matmul (block-wise int8 weights, 32 per scale),
    /// because our kernel is CPU-only. Numerically close to, not identical with, `Int8`.
    Q8_0 { matmul: QMatMul, bias: Option<Tensor>, in_features: usize, out_features: usize, fused_gelu: bool },
}

impl Linear {
    pub fn f32(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let weight_t = weight.t()?.contiguous()?;
        Ok(Linear::F32 { weight, weight_t, bias })
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

impl Module for Linear {
    /// `x`: `[..., in]` -> `[..., out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, k) = (dims[..dims.len() - 1].iter().product::<usize>(), dims[dims.len() - 1]);
        let x2 = x.reshape((rows, k))?;
        let y = match self {
            Linear::F32 { weight_t, bias, .. } if x2.device().is_cpu() => {
                let x2 = x2.contiguous()?;
                match bias {
                    Some(b) => x2.apply_op3_no_bwd(weight_t, b, &super::fused::F32LinearOp)?,
                    None => x2.apply_op2_no_bwd(weight_t, &super::fused::F32LinearOp)?,
                }
            }
            Linear::F32 { weight_t, bias, .. } => {
                let y = x2.matmul(weight_t)?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
            Linear::Int8(q) => x2.contiguous()?.apply_op1_no_bwd(q.as_ref())?,
            Linear::Q8_0 { matmul, bias, fused_gelu, .. } => {
                let y = matmul.forward(&x2)?;
                let y = match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                };
                if *fused_gelu { y.gelu_erf()? } else { y }
            }
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.out_features();
        y.reshape(out_dims)
    }
}
