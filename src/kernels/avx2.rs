//! The 256-bit int8 micro-kernels for CPUs without AVX-512 VNNI: AVX-VNNI (`vpdpbusd` on ymm)
//! and plain AVX2. Both read the same 16-channel weight blocks as the AVX-512 kernel (one block
//! is two ymm per group of 4 k) and are driven by [`super::vnni`]'s task loop.
//!
//! AVX2 has no 4-way dot product. `vpmaddubsw` (u8×i8, adjacent pairs summed into i16) would
//! saturate on shifted activations (2·255·127 > 32767), so this path keeps activations as
//! signed codes and feeds it `|a|` and `w·sign(a)` instead: pair sums stay within
//! 2·127·127 = 32258, exact. `vpmaddwd` by ones then sums pairs into i32.

use std::arch::x86_64::*;

use super::gemm_i8::{Epilogue, epilogue_row, quantize_one};
use super::vnni::{Kernel, VnniWeights};

/// Rows per tile, as in the AVX-512 kernel.
const MR: usize = 4;
/// Channels per weight block.
const NB: usize = 16;

/// Row quantization in AVX2, the same codes as [`super::gemm_i8::quantize_row_into`]:
/// `vcvtps2dq` rounds half to even (the default MXCSR mode) like the magic-number rounding,
/// NaN products are zeroed like `NaN as i8`, and max|x| ignores NaN like `f32::max`.
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2<const SHIFTED: bool>(x: &[f32], out: &mut [u8]) -> f32 {
    let k = x.len();
    assert!(out.len() >= k);
    unsafe {
        let abs_bits = _mm256_set1_epi32(0x7fff_ffff);
        let abs = |v: __m256| _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(v), abs_bits));
        let mut acc = _mm256_setzero_ps();
        let full8 = k / 8 * 8;
        for i in (0..full8).step_by(8) {
            // max(a, b) returns b when a is NaN: NaN never wins.
            acc = _mm256_max_ps(abs(_mm256_loadu_ps(x.as_ptr().add(i))), acc);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut amax = 0f32;
        for v in lanes.iter().chain(&x[full8..]) {
            amax = amax.max(v.abs());
        }
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let (inv_v, lo, hi) = (_mm256_set1_ps(inv), _mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let codes = |p: *const f32| {
            let p = _mm256_mul_ps(_mm256_loadu_ps(p), inv_v);
            let p = _mm256_and_ps(p, _mm256_cmp_ps::<_CMP_ORD_Q>(p, p));
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(p, lo), hi))
        };
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let full32 = k / 32 * 32;
        for i in (0..full32).step_by(32) {
            let p = x.as_ptr().add(i);
            let w16a = _mm256_packs_epi32(codes(p), codes(p.add(8)));
            let w16b = _mm256_packs_epi32(codes(p.add(16)), codes(p.add(24)));
            // packs interleave 128-bit lanes; the permutation restores element order.
            let mut b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w16a, w16b), order);
            if SHIFTED {
                b = _mm256_xor_si256(b, _mm256_set1_epi8(-128)); // i8 + 128 as u8
            }
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, b);
        }
        let offset: i16 = if SHIFTED { 128 } else { 0 };
        for (o, &v) in out[full32..k].iter_mut().zip(&x[full32..]) {
            *o = (quantize_one(v, inv) as i16 + offset) as u8;
        }
        amax / 127.0
    }
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn epilogue_avx2(
    acc: &[i32],
    row_sums: &[i32],
    sa: f32,
    sw: &[f32],
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    // Rust never contracts a·b + c into an FMA, so enabling it here cannot change the bits.
    epilogue_row(acc, row_sums, sa, sw, bias, epilogue, out)
}

/// Stores a block's 4×16 accumulators into `acc` (row stride 64) at block `b`.
#[inline(always)]
unsafe fn store_block(c: &[[__m256i; 2]; MR], mr: usize, b: usize, acc: &mut [i32]) {
    for (r, row) in c.iter().enumerate().take(mr) {
        for (h, v) in row.iter().enumerate() {
            unsafe { _mm256_storeu_si256(acc.as_mut_ptr().add(r * 64 + b * NB + h * 8) as *mut __m256i, *v) };
        }
    }
}

/// The 4 bytes of group `g` of row `r`, broadcast to every 32-bit lane.
#[inline(always)]
unsafe fn broadcast_group(a: &[u8], kp: usize, r: usize, g: usize) -> __m256i {
    unsafe { _mm256_set1_epi32((a.as_ptr().add(r * kp + g * 4) as *const i32).read_unaligned()) }
}

#[target_feature(enable = "avx2,avxvnni")]
#[allow(clippy::needless_range_loop)] // register tiles indexed by row read clearest
unsafe fn tile_avxvnni(a: &[u8], vw: &VnniWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32]) {
    let kp = vw.kp;
    let (wbase, gs) = vw.tile_start(nb0, blocks);
    unsafe {
        for b in 0..blocks {
            let wb = wbase.add(b * 64);
            let mut c = [[_mm256_setzero_si256(); 2]; MR];
            for g in 0..kp / 4 {
                let w0 = _mm256_loadu_si256(wb.add(g * gs) as *const __m256i);
                let w1 = _mm256_loadu_si256(wb.add(g * gs + 32) as *const __m256i);
                for r in 0..mr {
                    let av = broadcast_group(a, kp, r, g);
                    c[r][0] = _mm256_dpbusd_avx_epi32(c[r][0], av, w0);
                    c[r][1] = _mm256_dpbusd_avx_epi32(c[r][1], av, w1);
                }
            }
            store_block(&c, mr, b, acc);
        }
    }
}

#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_avx2(a: &[u8], vw: &VnniWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32]) {
    let kp = vw.kp;
    let (wbase, gs) = vw.tile_start(nb0, blocks);
    unsafe {
        let ones = _mm256_set1_epi16(1);
        for b in 0..blocks {
            let wb = wbase.add(b * 64);
            let mut c = [[_mm256_setzero_si256(); 2]; MR];
            for g in 0..kp / 4 {
                let w0 = _mm256_loadu_si256(wb.add(g * gs) as *const __m256i);
                let w1 = _mm256_loadu_si256(wb.add(g * gs + 32) as *const __m256i);
                for r in 0..mr {
                    let av = broadcast_group(a, kp, r, g);
                    let abs_a = _mm256_abs_epi8(av);
                    for (h, w) in [w0, w1].into_iter().enumerate() {
                        let pairs = _mm256_maddubs_epi16(abs_a, _mm256_sign_epi8(w, av));
                        c[r][h] = _mm256_add_epi32(c[r][h], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            store_block(&c, mr, b, acc);
        }
    }
}

/// The 256-bit kernels: AVX-VNNI when `VNNI` (shifted u8 activations, `vpdpbusd` ymm), plain
/// AVX2 otherwise (signed activations, `vpmaddubsw` + `vpmaddwd`). Named [`super::vnni::AvxVnni`]
/// and [`super::vnni::Avx2`].
pub struct Ymm<const VNNI: bool>;

impl<const VNNI: bool> Kernel for Ymm<VNNI> {
    const SHIFTED: bool = VNNI;
    const MR: usize = MR;
    fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && (!VNNI || is_x86_feature_detected!("avxvnni"))
    }
    unsafe fn quantize_row(x: &[f32], out: &mut [u8]) -> f32 {
        unsafe { quantize_row_avx2::<VNNI>(x, out) }
    }
    unsafe fn tile(a: &[u8], vw: &VnniWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32]) {
        unsafe { if VNNI { tile_avxvnni(a, vw, nb0, blocks, mr, acc) } else { tile_avx2(a, vw, nb0, blocks, mr, acc) } }
    }
    unsafe fn epilogue(
        acc: &[i32],
        row_sums: &[i32],
        sa: f32,
        sw: &[f32],
        bias: Option<&[f32]>,
        epilogue: Epilogue,
        out: &mut [f32],
    ) {
        unsafe { epilogue_avx2(acc, row_sums, sa, sw, bias, epilogue, out) }
    }
}
