//! The AVX-512 VNNI int8 micro-kernel: `vpdpbusd` zmm (64 u8 x i8 products summed into 16 i32
//! lanes), 6 rows x 64 columns of accumulators in 24 registers.
//!
//! `vpdpbusd` multiplies *unsigned* bytes by signed ones, so activations are shifted to
//! `a + 128` (u8) and the shift is taken back exactly with the weights' row sums:
//! `Σ (a+128)·w = Σ a·w + 128·Σ w`.

use std::arch::x86_64::*;

use super::{BlockedWeights, Columns, Epilogue, Kernel, MR_MAX, NB, NT, Rows, epilogue_row, epilogue_rows, gelu};

/// The k loop of a full 6 × 64 tile, accumulators left in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::needless_range_loop)] // register tiles indexed by row read clearest
unsafe fn full_tile(a: Rows, w: &BlockedWeights, nb0: usize, prefetch: bool) -> [[__m512i; NT]; MR] {
    let kp = a.kp;
    let groups = kp / 4;
    unsafe {
        let (wbase, gs) = w.tile_start(nb0, NT);
        let mut c = [[_mm512_setzero_si512(); NT]; MR];
        let abase = a.data.as_ptr();
        for g in 0..groups {
            let wg = wbase.add(g * gs);
            if prefetch {
                // The first row strip meets this tile's weights cold (DRAM): fetch ahead.
                let ahead = wg.add(PREFETCH_GROUPS * gs);
                for line in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(line * 64));
                }
            }
            let w0 = _mm512_loadu_si512(wg as *const _);
            let w1 = _mm512_loadu_si512(wg.add(64) as *const _);
            let w2 = _mm512_loadu_si512(wg.add(128) as *const _);
            let w3 = _mm512_loadu_si512(wg.add(192) as *const _);
            for r in 0..MR {
                let av = _mm512_set1_epi32((abase.add(r * a.stride + g * 4) as *const i32).read_unaligned());
                c[r][0] = _mm512_dpbusd_epi32(c[r][0], av, w0);
                c[r][1] = _mm512_dpbusd_epi32(c[r][1], av, w1);
                c[r][2] = _mm512_dpbusd_epi32(c[r][2], av, w2);
                c[r][3] = _mm512_dpbusd_epi32(c[r][3], av, w3);
            }
        }
        c
    }
}

/// A full 6 × 64 strip with the epilogue applied in registers (`vcvtdq2ps`, then the same
/// scalar operations in the same order as [`epilogue_row`], so the same bits); other strips
/// go through the buffer.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn strip_fused(
    a: Rows,
    w: &BlockedWeights,
    nb0: usize,
    blocks: usize,
    mr: usize,
    first: bool,
    cols: &Columns,
    sa: &[f32],
    out: *mut f32,
) {
    if mr != MR || blocks != NT || cols.c1 - cols.c0 != NB * NT || cols.row_sums.is_empty() {
        let mut acc = [0i32; MR_MAX * NB * NT];
        // SAFETY: as for this function.
        return unsafe {
            tile(a, w, nb0, blocks, mr, &mut acc, first);
            epilogue_rows(&acc, mr, cols, sa, out, epilogue_avx512)
        };
    }
    unsafe {
        let c = full_tile(a, w, nb0, first);
        let shift = _mm512_set1_epi32(128);
        for r in 0..MR {
            let sa_r = _mm512_set1_ps(sa[r]);
            let row = out.add(r * cols.n + cols.c0);
            for b in 0..NT {
                let rs = _mm512_mullo_epi32(_mm512_loadu_si512(cols.row_sums.as_ptr().add(b * NB) as *const _), shift);
                let scale = _mm512_mul_ps(sa_r, _mm512_loadu_ps(cols.sw.as_ptr().add(b * NB)));
                let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c[r][b], rs)), scale);
                if let Some(bias) = cols.bias {
                    v = _mm512_add_ps(v, _mm512_loadu_ps(bias.as_ptr().add(b * NB)));
                }
                _mm512_storeu_ps(row.add(b * NB), v);
            }
            if cols.epilogue == Epilogue::Gelu {
                for x in std::slice::from_raw_parts_mut(row, NB * NT) {
                    *x = gelu(*x);
                }
            }
        }
    }
}

/// The row quantization of [`super::quantize_row_into`], shifted to u8 (+128), in explicit
/// AVX-512: compiled from the shared source, the saturating f32→i8 cast became one `vpinsrb` per
/// element (perf: 11% of an int8 forward). Same codes: max|x| ignores NaN like `f32::max`, NaN
/// products become 0 like `NaN as i8`, `vcvtps2dq` rounds half to even (the default MXCSR mode,
/// which Rust never changes) exactly as the magic-number rounding does on [-127, 127].
/// Returns the row's scale.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(x: &[f32], out: &mut [u8]) -> f32 {
    let k = x.len();
    assert!(out.len() >= k);
    let full = k / 16 * 16;
    let tail_mask: __mmask16 = ((1u32 << (k - full)) - 1) as __mmask16;
    unsafe {
        let abs_bits = _mm512_set1_epi32(0x7fff_ffff);
        let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_bits));
        let mut acc = _mm512_setzero_ps();
        for i in (0..full).step_by(16) {
            // max(a, b) returns b when a is NaN: NaN never wins.
            acc = _mm512_max_ps(abs(_mm512_loadu_ps(x.as_ptr().add(i))), acc);
        }
        acc = _mm512_max_ps(abs(_mm512_maskz_loadu_ps(tail_mask, x.as_ptr().add(full))), acc);
        let amax = _mm512_reduce_max_ps(acc);
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let (inv_v, lo, hi, shift) =
            (_mm512_set1_ps(inv), _mm512_set1_ps(-127.0), _mm512_set1_ps(127.0), _mm512_set1_epi32(128));
        let codes = |v: __m512| {
            let p = _mm512_mul_ps(v, inv_v);
            let p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p), p);
            _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(p, lo), hi)), shift)
        };
        for i in (0..full).step_by(16) {
            let c = codes(_mm512_loadu_ps(x.as_ptr().add(i)));
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi32_epi8(c));
        }
        if tail_mask != 0 {
            let c = codes(_mm512_maskz_loadu_ps(tail_mask, x.as_ptr().add(full)));
            _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(full) as *mut _, tail_mask, c);
        }
        amax / 127.0
    }
}

/// The shared epilogue, compiled with AVX-512 so it vectorises 16-wide; same source, same bits.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn epilogue_avx512(
    acc: &[i32],
    row_sums: &[i32],
    sa: f32,
    sw: &[f32],
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    epilogue_row(acc, row_sums, sa, sw, bias, epilogue, out)
}

/// Rows per AVX-512 tile: 6 × 4 accumulators + 4 weight vectors + a broadcast fit the 32 zmm
/// registers, and each weight vector loaded serves 6 rows (4 rows reached ~82% of peak,
/// weight loads from L2 being the limit).
const MR: usize = 6;
/// How many k groups ahead the first strip prefetches weights (16 x 256 B = 4 KB).
const PREFETCH_GROUPS: usize = 16;

/// Accumulates `mr` rows × `blocks`·16 columns into `acc` (row-major, stride 64), shifted
/// (u8 activations), without the row-sum correction.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)] // register tiles indexed by row and block read clearest
unsafe fn tile(a: Rows, w: &BlockedWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32], prefetch: bool) {
    let groups = a.kp / 4;
    unsafe {
        let (wbase, gs) = w.tile_start(nb0, blocks);
        let mut c = [[_mm512_setzero_si512(); NT]; MR];
        let abase = a.data.as_ptr();
        if mr == MR && blocks == NT {
            c = full_tile(a, w, nb0, prefetch);
        } else {
            for g in 0..groups {
                for b in 0..blocks {
                    let wv = _mm512_loadu_si512(wbase.add(g * gs + b * 64) as *const _);
                    for r in 0..mr {
                        let av = _mm512_set1_epi32((abase.add(r * a.stride + g * 4) as *const i32).read_unaligned());
                        c[r][b] = _mm512_dpbusd_epi32(c[r][b], av, wv);
                    }
                }
            }
        }
        for r in 0..mr {
            for b in 0..blocks {
                _mm512_storeu_si512(acc.as_mut_ptr().add(r * NB * NT + b * NB) as *mut _, c[r][b]);
            }
        }
    }
}

/// AVX-512 VNNI: 24 zmm accumulators per 6 x 64 tile.
pub struct Avx512Vnni;

impl Kernel for Avx512Vnni {
    const SHIFTED: bool = true;
    const MR: usize = MR;
    fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    unsafe fn quantize_row(x: &[f32], out: &mut [u8]) -> f32 {
        unsafe { quantize_row_avx512(x, out) }
    }
    unsafe fn strip(
        a: Rows,
        w: &BlockedWeights,
        nb0: usize,
        blocks: usize,
        mr: usize,
        first: bool,
        cols: &Columns,
        sa: &[f32],
        out: *mut f32,
    ) {
        unsafe { strip_fused(a, w, nb0, blocks, mr, first, cols, sa, out) }
    }
    unsafe fn peak_sequence(iters: usize) -> u64 {
        unsafe { vpdpbusd_loop(iters) }
    }
}

/// 12 independent `vpdpbusd` zmm chains, registers only: the tile's inner instruction at its
/// throughput. Returns the MACs performed. In assembly, like the ymm peaks: the same loop in
/// intrinsics ran at ~60% of this rate on AMD Zen 4.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vpdpbusd_loop(iters: usize) -> u64 {
    // SAFETY: registers only; the caller checked the features.
    unsafe {
        std::arch::asm!(
            "2:",
            "vpdpbusd zmm4, zmm0, zmm1", "vpdpbusd zmm5, zmm0, zmm2", "vpdpbusd zmm6, zmm0, zmm3",
            "vpdpbusd zmm7, zmm0, zmm1", "vpdpbusd zmm8, zmm0, zmm2", "vpdpbusd zmm9, zmm0, zmm3",
            "vpdpbusd zmm10, zmm0, zmm1", "vpdpbusd zmm11, zmm0, zmm2", "vpdpbusd zmm12, zmm0, zmm3",
            "vpdpbusd zmm13, zmm0, zmm1", "vpdpbusd zmm14, zmm0, zmm2", "vpdpbusd zmm15, zmm0, zmm3",
            "dec {n}", "jnz 2b", "vzeroupper",
            n = inout(reg) iters.max(1) => _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
            out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            options(nostack, nomem),
        );
    }
    (iters.max(1) * 12 * 64) as u64
}
