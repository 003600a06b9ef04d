//! Blocked int8 GEMM for x86-64, with three micro-kernels chosen at run time:
//!
//! - **AVX-512 VNNI** (`vpdpbusd` zmm: 64 u8×i8 products summed into 16 i32 lanes);
//! - **AVX-VNNI** (the same instruction on ymm, VEX-encoded: Alder Lake and later, Zen 5);
//! - **AVX2** (no dot-product instruction: `vpmaddubsw` + `vpmaddwd`, see [`Avx2`]).
//!
//! `vpdpbusd` multiplies *unsigned* bytes by signed ones, so the VNNI kernels shift activations
//! to `a + 128` (u8) and take the shift back exactly with the weights' row sums:
//! `Σ (a+128)·w = Σ a·w + 128·Σ w`. Every kernel yields the same integers as the portable
//! kernel, and the epilogue is the same scalar arithmetic, so all paths are bit-identical to the
//! reference (the tests check it).
//!
//! Weights are repacked once per layer into blocks of 16 output channels: for every group of 4
//! consecutive k, 64 bytes hold `w[n0..n0+16][k..k+4]` — one zmm, or two ymm (channels 0–7 and
//! 8–15), the operand `vpdpbusd` wants. The driver quantizes all rows once, then runs tasks over
//! 64-column tiles; each kernel accumulates `MR`-row × 64-column tiles of i32 (6 rows for
//! AVX-512, 4 for the 16-register ymm kernels).
//! x86-64 only (the module is compiled there alone).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::SharedMut;
use super::gemm_i8::{Epilogue, PackedWeights, QuantizedRows, epilogue_row};

/// Output channels per weight block (one zmm of i32).
const NB: usize = 16;
/// Weight blocks per micro-kernel tile (64 columns).
const NT: usize = 4;
/// The most rows any micro-kernel's tile has.
const MR_MAX: usize = 8;

/// Weights in the VNNI block layout, zero-padded: per tile of 4 blocks (64 output channels),
/// `[k_groups][blocks in tile][16][4]` i8, so a task reads its weights as one stream.
#[derive(Debug)]
pub struct VnniWeights {
    pub n: usize,
    pub k: usize,
    /// k rounded up to a multiple of 4.
    pub kp: usize,
    /// n rounded up to a multiple of 16.
    pub np: usize,
    pub data: Vec<i8>,
}

impl VnniWeights {
    /// Start of the tile whose first block is `nb0` (a multiple of 4), and the bytes between its
    /// consecutive k groups.
    #[inline(always)]
    pub fn tile_start(&self, nb0: usize, blocks: usize) -> (*const i8, usize) {
        debug_assert_eq!(nb0 % NT, 0);
        // SAFETY: in bounds: tiles before this one hold nb0 full blocks of 16·kp bytes.
        (unsafe { self.data.as_ptr().add(nb0 * NB * self.kp) }, blocks * 64)
    }

    pub fn pack(w: &PackedWeights) -> VnniWeights {
        let (n, k) = (w.n, w.k);
        let kp = k.div_ceil(4) * 4;
        let np = n.div_ceil(NB) * NB;
        let blocks = np / NB;
        let src = w.data.as_slice();
        let mut data = vec![0i8; np * kp];
        // One task's 64 columns are one sequential stream: [group][block in tile][16][4].
        data.par_chunks_mut(NT * NB * kp).enumerate().for_each(|(t, tile)| {
            let bt = NT.min(blocks - t * NT);
            for b in 0..bt {
                for j in 0..NB {
                    let row = (t * NT + b) * NB + j;
                    if row >= n {
                        break;
                    }
                    for kk in 0..k {
                        let (g, r) = (kk / 4, kk % 4);
                        tile[g * bt * 64 + b * 64 + j * 4 + r] = src[row * k + kk];
                    }
                }
            }
        });
        VnniWeights { n, k, kp, np, data }
    }
}

/// The columns one task writes and what its epilogue needs, sliced to them.
pub struct Columns<'a> {
    /// Row stride of the output.
    pub n: usize,
    pub c0: usize,
    pub c1: usize,
    /// Row sums of these columns' weights (empty for unshifted kernels).
    pub row_sums: &'a [i32],
    pub sw: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub epilogue: Epilogue,
}

/// [`Kernel::strip`] as a tile into a buffer, then the shared epilogue row by row.
///
/// # Safety
/// As [`Kernel::strip`].
#[allow(clippy::too_many_arguments)]
unsafe fn strip_via_buffer<K: Kernel>(
    a: &[u8],
    vw: &VnniWeights,
    nb0: usize,
    blocks: usize,
    mr: usize,
    first: bool,
    cols: &Columns,
    sa: &[f32],
    out: *mut f32,
) {
    let mut acc = [0i32; MR_MAX * NB * NT];
    let width = cols.c1 - cols.c0;
    unsafe {
        if first {
            K::first_tile(a, vw, nb0, blocks, mr, &mut acc)
        } else {
            K::tile(a, vw, nb0, blocks, mr, &mut acc)
        }
        for r in 0..mr {
            let out_row = std::slice::from_raw_parts_mut(out.add(r * cols.n + cols.c0), width);
            let acc_row = &acc[r * NB * NT..r * NB * NT + width];
            K::epilogue(acc_row, cols.row_sums, sa[r], cols.sw, cols.bias, cols.epilogue, out_row);
        }
    }
}

/// One micro-kernel family: its activation encoding, row quantization, tile and epilogue.
/// Every `unsafe fn` here has one safety condition: the CPU has the features
/// [`Kernel::available`] checks (and slices are sized as documented).
#[allow(clippy::missing_safety_doc)] // one condition for all, stated above
pub trait Kernel: Sync + Sized {
    /// Activations as `a + 128` (u8, corrected with row sums) rather than plain i8 codes.
    const SHIFTED: bool;
    /// Rows per tile (<= 8): as many as the register file holds accumulators for.
    const MR: usize;
    fn available() -> bool;
    /// Quantizes one row into `out` (`x.len()` bytes) in this kernel's encoding; returns the scale.
    unsafe fn quantize_row(x: &[f32], out: &mut [u8]) -> f32;
    /// Accumulates `mr` (<= `MR`) rows × `blocks` (<= 4) weight blocks into `acc` (row stride 64).
    unsafe fn tile(a: &[u8], vw: &VnniWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32]);
    /// [`Kernel::tile`] for a task's first row strip, which reads the weights from memory.
    unsafe fn first_tile(a: &[u8], vw: &VnniWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32]) {
        unsafe { Self::tile(a, vw, nb0, blocks, mr, acc) }
    }
    /// Rows `mr` of one tile, accumulated and written through the epilogue to `out` (row 0 of
    /// the strip, column 0; row stride `cols.n`). `first`: the task's first strip. `sa`: the
    /// strip's row scales. Caller: `out` rows × `cols.c0..c1` belong to it alone.
    #[allow(clippy::too_many_arguments)]
    unsafe fn strip(
        a: &[u8],
        vw: &VnniWeights,
        nb0: usize,
        blocks: usize,
        mr: usize,
        first: bool,
        cols: &Columns,
        sa: &[f32],
        out: *mut f32,
    ) {
        unsafe { strip_via_buffer::<Self>(a, vw, nb0, blocks, mr, first, cols, sa, out) }
    }
    /// The shared [`epilogue_row`], compiled for this kernel's ISA.
    #[allow(clippy::too_many_arguments)]
    unsafe fn epilogue(
        acc: &[i32],
        row_sums: &[i32],
        sa: f32,
        sw: &[f32],
        bias: Option<&[f32]>,
        epilogue: Epilogue,
        out: &mut [f32],
    );
}

/// AVX-512 VNNI: 24 zmm accumulators per 6×64 tile.
pub struct Avx512Vnni;
/// AVX-VNNI (256-bit `vpdpbusd`).
pub type AvxVnni = super::avx2::Ymm<true>;
/// AVX2 without VNNI.
pub type Avx2 = super::avx2::Ymm<false>;

/// `out[m, n]` as [`super::gemm_i8::gemm`] computes it from already quantized rows. Panics if
/// the CPU lacks the kernel's features (callers dispatch on [`Kernel::available`]).
pub fn gemm<K: Kernel>(
    a: &QuantizedRows,
    w: &PackedWeights,
    vw: &VnniWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let k = a.k;
    // The codes in this kernel's encoding, written straight into `run`'s (padded) buffer.
    let offset: i16 = if K::SHIFTED { 128 } else { 0 };
    let fill = |m0: usize, buf: &mut [u8], scales: &mut [f32]| {
        for (r, s) in scales.iter_mut().enumerate() {
            let codes = &a.data[(m0 + r) * k..(m0 + r + 1) * k];
            for (d, &c) in buf[r * vw.kp..r * vw.kp + k].iter_mut().zip(codes) {
                *d = (c as i16 + offset) as u8;
            }
            *s = a.scales[m0 + r];
        }
    };
    assert_eq!(out.len(), a.m * w.n);
    // SAFETY: `out` holds exactly m·n elements.
    unsafe { run::<K>(a.m, &fill, w, vw, bias, epilogue, SharedMut(out.as_mut_ptr())) }
}

/// The whole linear layer on f32 input `x` `[m, k]`, into a new vector: rows are quantized
/// (per-row symmetric int8, in this kernel's encoding) in parallel, then multiplied. Same
/// numbers as quantizing first and calling [`gemm()`]. The vector is not zero-filled first: every
/// element is written by the kernel (zero-filling ViT-B's int8 outputs was 65 MB of `memset`
/// per forward).
pub fn linear<K: Kernel>(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    vw: &VnniWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let k = w.k;
    assert_eq!(x.len(), m * k);
    let fill = |m0: usize, buf: &mut [u8], scales: &mut [f32]| {
        for (r, s) in scales.iter_mut().enumerate() {
            let xr = &x[(m0 + r) * k..(m0 + r + 1) * k];
            // SAFETY: `run` asserts the kernel's features before calling `fill`.
            *s = unsafe { K::quantize_row(xr, &mut buf[r * vw.kp..r * vw.kp + k]) };
        }
    };
    let mut out = Vec::with_capacity(m * w.n);
    // SAFETY: the capacity holds m·n elements; `run` writes all of them before `set_len`.
    unsafe {
        run::<K>(m, &fill, w, vw, bias, epilogue, SharedMut(out.as_mut_ptr()));
        out.set_len(m * w.n);
    }
    out
}

/// Fills rows `m0..m0 + scales.len()` of the activation buffer (in the kernel's encoding,
/// row stride `kp`) and their scales.
type FillRows<'a> = dyn Fn(usize, &mut [u8], &mut [f32]) + Sync + 'a;

/// Rows handled by one quantization task.
const FILL_ROWS: usize = 16;

/// # Safety
/// `out` must point to `m · w.n` writable f32s that nothing else accesses during the call;
/// every one of them is written.
unsafe fn run<K: Kernel>(
    m: usize,
    fill: &FillRows,
    w: &PackedWeights,
    vw: &VnniWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: SharedMut<f32>,
) {
    assert!(K::available(), "this int8 kernel's CPU features are missing");
    let (n, kp) = (w.n, vw.kp);
    // 1. All rows quantized once, in parallel; the buffer (<= 1 MB for ViT-B) stays in L2.
    // Padding meets zero weights; 128 is the shifted encoding of 0.
    let mut au = vec![if K::SHIFTED { 128u8 } else { 0 }; m * kp];
    let mut scales = vec![0f32; m];
    au.par_chunks_mut(FILL_ROWS * kp)
        .zip(scales.par_chunks_mut(FILL_ROWS))
        .enumerate()
        .for_each(|(c, (a, s))| fill(c * FILL_ROWS, a, s));
    // 2. Parallel over 64-column tiles: each task streams its slice of the weights from memory
    //    once and sweeps every row (sweeping all columns per row chunk instead re-read the
    //    2.4 MB fc1/fc2 weights once per chunk).
    let tasks = (vw.np / NB).div_ceil(NT);
    (0..tasks).into_par_iter().for_each(|task| {
        let nb = task * NT;
        let blocks = NT.min(vw.np / NB - nb);
        let (c0, c1) = (nb * NB, ((nb + blocks) * NB).min(n));
        if c0 >= c1 {
            return;
        }
        let cols = Columns {
            n,
            c0,
            c1,
            row_sums: if K::SHIFTED { &w.row_sums[c0..c1] } else { &[] },
            sw: &w.scales[c0..c1],
            bias: bias.map(|b| &b[c0..c1]),
            epilogue,
        };
        let mut i = 0;
        while i < m {
            let mr = K::MR.min(m - i);
            // SAFETY: feature presence asserted above; slices are sized by construction; rows
            // i..i+mr, columns c0..c1 of `out` belong to this task alone.
            unsafe {
                K::strip(&au[i * kp..], vw, nb, blocks, mr, i == 0, &cols, &scales[i..i + mr], out.ptr().add(i * n))
            };
            i += mr;
        }
    });
}

/// The k loop of a full 6 × 64 tile, accumulators left in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::needless_range_loop)] // register tiles indexed by row read clearest
unsafe fn full_tile(a: &[u8], vw: &VnniWeights, nb0: usize, prefetch: bool) -> [[__m512i; NT]; MR] {
    let kp = vw.kp;
    let groups = kp / 4;
    let (wbase, gs) = vw.tile_start(nb0, NT);
    unsafe {
        let mut c = [[_mm512_setzero_si512(); NT]; MR];
        let abase = a.as_ptr();
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
                let av = _mm512_set1_epi32((abase.add(r * kp + g * 4) as *const i32).read_unaligned());
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
    a: &[u8],
    vw: &VnniWeights,
    nb0: usize,
    blocks: usize,
    mr: usize,
    first: bool,
    cols: &Columns,
    sa: &[f32],
    out: *mut f32,
) {
    if mr != MR || blocks != NT || cols.c1 - cols.c0 != NB * NT || cols.row_sums.is_empty() {
        return unsafe { strip_via_buffer::<Avx512Vnni>(a, vw, nb0, blocks, mr, first, cols, sa, out) };
    }
    unsafe {
        let c = full_tile(a, vw, nb0, first);
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
                    *x = super::gelu_erf(*x);
                }
            }
        }
    }
}

/// The row quantization of [`super::gemm_i8::quantize_row_into`], shifted to u8 (+128), in explicit
/// AVX-512: compiled from the shared source, the saturating f32→i8 cast became one `vpinsrb` per
/// element (perf: 11% of an int8 forward). Same codes: max|x| ignores NaN like `f32::max`, NaN
/// products become 0 like `NaN as i8`, `vcvtps2dq` rounds half to even (the default MXCSR mode,
/// which Rust never changes) exactly as the magic-number rounding does on [-127, 127].
/// Returns the row's scale.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn quantize_row_avx512(x: &[f32], out: &mut [u8]) -> f32 {
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
unsafe fn tile(a: &[u8], vw: &VnniWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32], prefetch: bool) {
    let kp = vw.kp;
    let groups = kp / 4;
    let (wbase, gs) = vw.tile_start(nb0, blocks);
    unsafe {
        let mut c = [[_mm512_setzero_si512(); NT]; MR];
        let abase = a.as_ptr();
        if mr == MR && blocks == NT {
            c = full_tile(a, vw, nb0, prefetch);
        } else {
            for g in 0..groups {
                for b in 0..blocks {
                    let wv = _mm512_loadu_si512(wbase.add(g * gs + b * 64) as *const _);
                    for r in 0..mr {
                        let av = _mm512_set1_epi32((abase.add(r * kp + g * 4) as *const i32).read_unaligned());
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
    unsafe fn tile(a: &[u8], vw: &VnniWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32]) {
        unsafe { tile(a, vw, nb0, blocks, mr, acc, false) }
    }
    unsafe fn first_tile(a: &[u8], vw: &VnniWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32]) {
        unsafe { tile(a, vw, nb0, blocks, mr, acc, true) }
    }
    unsafe fn strip(
        a: &[u8],
        vw: &VnniWeights,
        nb0: usize,
        blocks: usize,
        mr: usize,
        first: bool,
        cols: &Columns,
        sa: &[f32],
        out: *mut f32,
    ) {
        unsafe { strip_fused(a, vw, nb0, blocks, mr, first, cols, sa, out) }
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
        unsafe { epilogue_avx512(acc, row_sums, sa, sw, bias, epilogue, out) }
    }
}
