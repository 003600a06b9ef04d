//! The core of multi-head self-attention, `softmax(q·kᵀ·scale)·v` for every head, read straight
//! from the fused qkv projection and written with heads already merged.
//!
//! Why one kernel instead of candle ops: the candle graph splits q/k/v into three contiguous
//! copies, runs two batched matmuls (each packing its operands and waking the thread pool),
//! a softmax over libm's scalar `expf`, and a transpose copy to merge heads — a quarter of an int8
//! ViT-B forward went there. Here each task owns one (image, head, block of query rows): its two
//! products go through the `gemm` crate (well-kept, AVX-512 kernels, arbitrary strides, so q, k
//! and v are read in place), the softmax is our vectorised one, and the output lands in its final
//! place. Tasks split query rows so that even 3 heads (DeiT-Ti) keep both cores busy.

use rayon::prelude::*;

use super::{SharedMut, ops};

/// Dimensions of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionDims {
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Elements of the qkv input `[B, T, 3, H, hd]`.
    pub fn qkv_len(&self) -> usize {
        self.batch * self.tokens * 3 * self.width()
    }
    /// Elements of the output `[B, T, H·hd]`.
    pub fn out_len(&self) -> usize {
        self.batch * self.tokens * self.width()
    }
    /// Elements of the attention probabilities `[B, H, T, T]`.
    pub fn probs_len(&self) -> usize {
        self.batch * self.heads * self.tokens * self.tokens
    }
}

/// `out` `[B, T, D]` = attention over `qkv` `[B, T, 3D]` (q, k, v, each `[H, hd]`), with the
/// scores scaled by `scale`; `probs` `[B, H, T, T]` receives the softmax when given.
/// `reference` runs plain loops (the portable path the fast one is tested against).
pub fn attention(
    reference: bool,
    qkv: &[f32],
    dims: AttentionDims,
    scale: f32,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
) {
    assert_eq!(qkv.len(), dims.qkv_len());
    assert_eq!(out.len(), dims.out_len());
    if let Some(p) = &probs {
        assert_eq!(p.len(), dims.probs_len());
    }
    let AttentionDims { batch, tokens: t, heads, .. } = dims;
    if t == 0 || batch == 0 {
        return;
    }
    // Enough tasks for every thread to get several (load balance), each still a real GEMM.
    let want = 4 * rayon::current_num_threads();
    let chunks = want.div_ceil(batch * heads).clamp(1, t.div_ceil(16));
    let rows_per_chunk = t.div_ceil(chunks);
    let chunks = t.div_ceil(rows_per_chunk);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let probs_ptr = probs.map(|p| SharedMut(p.as_mut_ptr()));
    (0..batch * heads * chunks).into_par_iter().for_each(|task| {
        let (bh, c) = (task / chunks, task % chunks);
        let (b, h) = (bh / heads, bh % heads);
        let i0 = c * rows_per_chunk;
        let rows = rows_per_chunk.min(t - i0);
        let mut local = Vec::new();
        let scores: &mut [f32] = match probs_ptr {
            // SAFETY: rows i0..i0+rows of head (b, h) belong to this task alone.
            Some(p) => unsafe { std::slice::from_raw_parts_mut(p.ptr().add((bh * t + i0) * t), rows * t) },
            None => {
                local.resize(rows * t, 0f32);
                &mut local
            }
        };
        // SAFETY: this task writes rows i0..i0+rows, columns of head h, of `out` alone.
        unsafe { head_rows(reference, qkv, dims, b, h, i0, rows, scale, scores, out_ptr) };
    });
}

/// One task: query rows `i0..i0 + rows` of head `h` of image `b`.
///
/// # Safety
/// `out` must point to the `[B, T, D]` output and no other task may write these rows of head `h`.
#[allow(clippy::too_many_arguments)]
unsafe fn head_rows(
    reference: bool,
    qkv: &[f32],
    dims: AttentionDims,
    b: usize,
    h: usize,
    i0: usize,
    rows: usize,
    scale: f32,
    scores: &mut [f32],
    out: SharedMut<f32>,
) {
    let AttentionDims { tokens: t, head_dim: hd, .. } = dims;
    let d = dims.width();
    let stride = 3 * d; // between consecutive tokens in qkv
    let image = b * t * stride;
    let q = image + i0 * stride + h * hd;
    let k = image + d + h * hd;
    let v = image + 2 * d + h * hd;
    let out_off = (b * t + i0) * d + h * hd;
    match reference {
        true => {
            for i in 0..rows {
                let qi = &qkv[q + i * stride..q + i * stride + hd];
                let srow = &mut scores[i * t..(i + 1) * t];
                for (j, s) in srow.iter_mut().enumerate() {
                    let kj = &qkv[k + j * stride..k + j * stride + hd];
                    *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                ops::softmax_row(srow);
                // SAFETY: the caller owns these output elements.
                let orow = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(out_off + i * d), hd) };
                orow.fill(0.0);
                for (j, p) in srow.iter().enumerate() {
                    let vj = &qkv[v + j * stride..v + j * stride + hd];
                    orow.iter_mut().zip(vj).for_each(|(o, x)| *o += p * x);
                }
            }
        }
        false => unsafe {
            let base = qkv.as_ptr();
            let s = stride as isize;
            // scores[rows, t] = scale · Q[rows, hd] · Kᵀ[hd, t]; Kᵀ(dd, j) = k[j·stride + dd].
            gemm::gemm(
                rows,
                t,
                hd,
                scores.as_mut_ptr(),
                1,
                t as isize,
                false,
                base.add(q),
                1,
                s,
                base.add(k),
                s,
                1,
                0.0f32,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
            ops::softmax_rows(scores, t);
            // out[rows, hd] = P[rows, t] · V[t, hd], written at row stride D.
            gemm::gemm(
                rows,
                hd,
                t,
                out.ptr().add(out_off),
                1,
                d as isize,
                false,
                scores.as_ptr(),
                1,
                t as isize,
                base.add(v),
                1,
                s,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        },
    }
}
