//! The core of multi-head self-attention, `softmax(q·kᵀ·scale)·v` for every head, read straight
//! from the fused qkv projection and written with heads already merged.
//!
//! Why one kernel instead of candle ops: the candle graph splits q/k/v into three contiguous
//! copies, runs two batched matmuls (each packing its operands and waking the thread pool),
//! a softmax over libm's scalar `expf`, and a transpose copy to merge heads — a quarter of an int8
//! ViT-B forward went there. Here each head's scaled keys and values are packed once for our f32
//! kernel ([`super::gemm_f32`]), then each task owns one (image, head, block of query rows): q is
//! read in place, the softmax is our vectorised one over rows padded to whole vectors, and the
//! output lands in its final place. Tasks split query rows so that even 3 heads (DeiT-Ti) keep
//! both cores busy. Without an f32 kernel (no AVX2+FMA) the products go through the `gemm`
//! crate, which reads q, k and v in place with strides.

use std::cell::RefCell;
use std::sync::Mutex;

use rayon::prelude::*;

use super::gemm_f32::{self, PackedB};
use super::{SharedMut, SimdLevel, ops};

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
    // Enough tasks for every thread to get several (load balance: DeiT-Ti's 3 heads in 9 tasks
    // left one core a task behind), each still a real GEMM.
    let want = 8 * rayon::current_num_threads();
    let chunks = want.div_ceil(batch * heads).clamp(1, t.div_ceil(16));
    let rows_per_chunk = t.div_ceil(chunks);
    let chunks = t.div_ceil(rows_per_chunk);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let probs_ptr = probs.map(|p| SharedMut(p.as_mut_ptr()));
    // With our f32 kernel, each head's scaled keys and its values are packed once, by one
    // parallel pass, for all the head's tasks.
    let level = ops::simd_level();
    // The buffers are reused from call to call: fresh ones (1.3 MB for ViT-B) cost page faults.
    let mut packed = PACKED_HEADS.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
    if !reference && gemm_f32::has_kernel(level) {
        packed.resize_with(batch * heads, Default::default);
        // Keys and values as separate tasks, so 3 heads still split evenly over 2 cores.
        packed
            .par_iter_mut()
            .enumerate()
            .flat_map(|(bh, (keys, values))| [(bh, Operand::Keys(keys)), (bh, Operand::Values(values))])
            .for_each(|(bh, operand)| pack_head(qkv, dims, bh / heads, bh % heads, scale, operand));
    } else {
        packed.clear();
    }
    (0..batch * heads * chunks).into_par_iter().for_each(|task| {
        let (bh, c) = (task / chunks, task % chunks);
        let i0 = c * rows_per_chunk;
        let rows = rows_per_chunk.min(t - i0);
        let task_rows = QueryRows { b: bh / heads, h: bh % heads, i0, rows };
        let mut local = Vec::new();
        if let Some((keys, values)) = packed.get(bh) {
            // Scores rows padded to whole vectors, so the softmax has no scalar tail.
            let padded = t.next_multiple_of(gemm_f32::BLOCK);
            SCORES.with_borrow_mut(|scores| {
                if scores.len() < rows * padded {
                    scores.resize(rows * padded, 0f32);
                }
                // SAFETY: rows i0..i0+rows of head (b, h) belong to this task alone.
                let probs = probs_ptr
                    .map(|p| unsafe { std::slice::from_raw_parts_mut(p.ptr().add((bh * t + i0) * t), rows * t) });
                let scores = &mut scores[..rows * padded];
                // SAFETY: as below.
                unsafe { head_rows_packed(level, qkv, dims, task_rows, keys, values, scores, probs, out_ptr) };
            });
            return;
        }
        let scores: &mut [f32] = match probs_ptr {
            // SAFETY: rows i0..i0+rows of head (b, h) belong to this task alone.
            Some(p) => unsafe { std::slice::from_raw_parts_mut(p.ptr().add((bh * t + i0) * t), rows * t) },
            None => {
                local.resize(rows * t, 0f32);
                &mut local
            }
        };
        // SAFETY: this task writes rows i0..i0+rows, columns of head h, of `out` alone.
        unsafe { head_rows(reference, qkv, dims, task_rows, scale, scores, out_ptr) };
    });
    // Kept for the next call unless a large batch made them big (a window open for hours should
    // not hold a batch-256 run's 300 MB).
    let bytes: usize = packed.iter().map(|(k, v)| k.bytes_in_memory() + v.bytes_in_memory()).sum();
    if bytes <= KEEP_PACKED_BYTES
        && let Ok(mut pool) = PACKED_HEADS.lock()
    {
        *pool = packed;
    }
}

/// The most packed-head memory kept between calls (ViT-B at batch 8 uses ~10 MB).
const KEEP_PACKED_BYTES: usize = 64 << 20;

/// One task's share of attention: query rows `i0..i0 + rows` of head `h` of image `b`.
#[derive(Clone, Copy)]
struct QueryRows {
    b: usize,
    h: usize,
    i0: usize,
    rows: usize,
}

/// Packed heads kept between calls (taken by one call at a time; a concurrent call packs into
/// fresh buffers).
static PACKED_HEADS: Mutex<Vec<(PackedB, PackedB)>> = Mutex::new(Vec::new());

thread_local! {
    /// Each worker's score rows, kept between calls for the same reason.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One of a head's two packed operands.
enum Operand<'a> {
    Keys(&'a mut PackedB),
    Values(&'a mut PackedB),
}

/// Head `h` of image `b` packed for [`gemm_f32`]: `scale · Kᵀ` `[hd, T]`, or `V` `[T, hd]`.
fn pack_head(qkv: &[f32], dims: AttentionDims, b: usize, h: usize, scale: f32, operand: Operand) {
    let AttentionDims { tokens: t, head_dim: hd, .. } = dims;
    let d = dims.width();
    let image = &qkv[b * t * 3 * d..(b + 1) * t * 3 * d];
    match operand {
        Operand::Keys(keys) => keys.pack_transposed(&image[d + h * hd..], 3 * d, t, hd, scale),
        Operand::Values(values) => values.pack_rows(&image[2 * d + h * hd..], 3 * d, hd, t),
    }
}

/// One task on our f32 kernel: scores = q·(scale·Kᵀ) with q read in place, softmax, then
/// out = P·V written at its place in the merged-heads output. `scores` is `rows` rows of T
/// rounded up to 16; `probs` (rows x T) receives the softmax when given.
///
/// # Safety
/// As [`head_rows`]; `level` has an f32 kernel.
#[allow(clippy::too_many_arguments)]
unsafe fn head_rows_packed(
    level: SimdLevel,
    qkv: &[f32],
    dims: AttentionDims,
    task: QueryRows,
    keys: &PackedB,
    values: &PackedB,
    scores: &mut [f32],
    probs: Option<&mut [f32]>,
    out: SharedMut<f32>,
) {
    let AttentionDims { tokens: t, head_dim: hd, .. } = dims;
    let QueryRows { b, h, i0, rows } = task;
    let d = dims.width();
    let padded = t.next_multiple_of(gemm_f32::BLOCK);
    let q = (b * t + i0) * 3 * d + h * hd;
    // SAFETY: q rows i0..i0+rows lie in qkv (stride 3D); scores holds rows x padded; the
    // output rows of this head are the caller's.
    unsafe {
        gemm_f32::tiles(level, rows, 0..padded, qkv[q..].as_ptr(), 3 * d, keys, scores.as_mut_ptr(), padded, None);
    }
    for row in scores.chunks_exact_mut(padded) {
        // exp(-inf - max) is 0 (our exp clamps to ~1e-38): the padding adds nothing to the sum.
        row[t..].fill(f32::NEG_INFINITY);
    }
    ops::softmax_rows(scores, padded);
    if let Some(p) = probs {
        for (dst, src) in p.chunks_exact_mut(t).zip(scores.chunks_exact(padded)) {
            dst.copy_from_slice(&src[..t]);
        }
    }
    // SAFETY: as above; P's rows are read for their first t columns only.
    unsafe {
        let o = out.ptr().add((b * t + i0) * d + h * hd);
        gemm_f32::tiles(level, rows, 0..hd, scores.as_ptr(), padded, values, o, d, None);
    }
}

/// One task's query rows ([`QueryRows`]) with the `gemm` crate, or plain loops when `reference`.
///
/// # Safety
/// `out` must point to the `[B, T, D]` output and no other task may write these rows of head `h`.
#[allow(clippy::too_many_arguments)]
unsafe fn head_rows(
    reference: bool,
    qkv: &[f32],
    dims: AttentionDims,
    task: QueryRows,
    scale: f32,
    scores: &mut [f32],
    out: SharedMut<f32>,
) {
    let AttentionDims { tokens: t, head_dim: hd, .. } = dims;
    let QueryRows { b, h, i0, rows } = task;
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
