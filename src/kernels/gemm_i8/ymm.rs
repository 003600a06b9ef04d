//! The 256-bit int8 micro-kernels, for CPUs without AVX-512 VNNI, over the same 16-channel
//! weight blocks as the AVX-512 kernel (one block is two ymm per group of 4 k):
//!
//! - **AVX-VNNI** (Alder Lake and later, Zen 5): `vpdpbusd` on ymm, VEX-encoded; activations
//!   shifted to u8 like the AVX-512 kernel. 6 rows x 16 channels in 12 accumulators.
//! - **its EVEX twin**: the same tile with the AVX-512 VL encoding of the same instruction, for
//!   CPUs that have AVX-512 VNNI but not AVX-VNNI (Zen 4, Ice Lake): there the 256-bit kernel
//!   can be run, tested and measured although the VEX form is missing.
//! - **AVX2**: no 4-way byte dot product. Of the sequences measured register-only
//!   ([`CANDIDATES`]), `vpmaddwd` on i16 operands (16 products summed in pairs into 8 i32) is the
//!   fastest exact one: `vpmaddubsw` on u8 x s8 (ONNX Runtime's and fbgemm's AVX2 form)
//!   saturates on shifted activations (2·255·127 > 32767), and keeping it exact with `|a|` and
//!   `w·sign(a)` costs a `vpsignb` that runs on the same ports (AMD EPYC Zen 4, one core: i16
//!   ~94 GMAC/s, u8s8 ~80, |a|·sign ~47). Activations are quantized straight to i16 pairs;
//!   weights stay int8 in memory (pairs of k) and `vpmovsxbw` widens each 16-byte half once per
//!   tile row strip, serving all 6 rows.
//!
//! Every tile is compiled for a constant row count, so its accumulators stay in registers
//! (a row loop with a run-time bound kept them on the stack).

use std::arch::asm;
use std::arch::x86_64::*;

use super::{
    BlockedWeights, Columns, Epilogue, Kernel, MR_MAX, NB, NT, PeakSequence, Rows, epilogue_row, epilogue_rows,
    quantize_one,
};

/// A row's scale inputs in AVX2: `(max|x|, 127 / max|x|)` (0 for an all-zero row); max|x|
/// ignores NaN like `f32::max` (`vmaxps` returns its second operand when the first is NaN).
#[inline(always)]
unsafe fn row_amax_inv(x: &[f32]) -> (f32, f32) {
    let full8 = x.len() / 8 * 8;
    unsafe {
        let abs_bits = _mm256_set1_epi32(0x7fff_ffff);
        let mut acc = _mm256_setzero_ps();
        for i in (0..full8).step_by(8) {
            let v = _mm256_castsi256_ps(_mm256_and_si256(
                _mm256_castps_si256(_mm256_loadu_ps(x.as_ptr().add(i))),
                abs_bits,
            ));
            acc = _mm256_max_ps(v, acc);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut amax = 0f32;
        for v in lanes.iter().chain(&x[full8..]) {
            amax = amax.max(v.abs());
        }
        (amax, if amax > 0.0 { 127.0 / amax } else { 0.0 })
    }
}

/// The codes of 8 values at `p` as i32 lanes, the same as [`super::quantize_row_into`]'s:
/// `vcvtps2dq` rounds half to even (the default MXCSR mode) like the magic-number rounding,
/// and NaN products are zeroed like `NaN as i8`.
#[inline(always)]
unsafe fn codes8(p: *const f32, inv: f32) -> __m256i {
    unsafe {
        let v = _mm256_mul_ps(_mm256_loadu_ps(p), _mm256_set1_ps(inv));
        let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
        _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127.0)), _mm256_set1_ps(127.0)))
    }
}

/// Row quantization in AVX2, shifted to u8 (+128) for `vpdpbusd`; returns the row's scale.
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2_u8(x: &[f32], out: &mut [u8]) -> f32 {
    let k = x.len();
    assert!(out.len() >= k);
    unsafe {
        let (amax, inv) = row_amax_inv(x);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let full32 = k / 32 * 32;
        for i in (0..full32).step_by(32) {
            let p = x.as_ptr().add(i);
            let w16a = _mm256_packs_epi32(codes8(p, inv), codes8(p.add(8), inv));
            let w16b = _mm256_packs_epi32(codes8(p.add(16), inv), codes8(p.add(24), inv));
            // packs interleave 128-bit lanes; the permutation restores element order.
            let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w16a, w16b), order);
            let b = _mm256_xor_si256(b, _mm256_set1_epi8(-128)); // i8 + 128 as u8
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, b);
        }
        for (o, &v) in out[full32..k].iter_mut().zip(&x[full32..]) {
            *o = (quantize_one(v, inv) as i16 + 128) as u8;
        }
        amax / 127.0
    }
}

/// Row quantization in AVX2 to little-endian i16 codes (the AVX2 kernel's operand), `out`
/// holding `2 · x.len()` bytes; returns the row's scale.
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2_i16(x: &[f32], out: &mut [u8]) -> f32 {
    let k = x.len();
    assert!(out.len() >= 2 * k);
    unsafe {
        let (amax, inv) = row_amax_inv(x);
        let full16 = k / 16 * 16;
        for i in (0..full16).step_by(16) {
            let p = x.as_ptr().add(i);
            // packs interleaves 128-bit lanes; the permutation restores element order.
            let w16 =
                _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(codes8(p, inv), codes8(p.add(8), inv)));
            _mm256_storeu_si256(out.as_mut_ptr().add(2 * i) as *mut __m256i, w16);
        }
        for (o, &v) in out[2 * full16..2 * k].chunks_exact_mut(2).zip(&x[full16..]) {
            o.copy_from_slice(&(quantize_one(v, inv) as i16).to_le_bytes());
        }
        amax / 127.0
    }
}

/// The shared epilogue compiled for AVX2 (8-wide). Rust never contracts a·b + c into an FMA,
/// so enabling it cannot change the bits.
#[target_feature(enable = "avx2,fma")]
unsafe fn epilogue_avx2(
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

/// Stores one block's `R` x 16 accumulators into `acc` (row stride 64) at block `b`.
#[inline(always)]
unsafe fn store_block<const R: usize>(c: &[[__m256i; 2]; R], b: usize, acc: &mut [i32]) {
    for (r, row) in c.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            unsafe { _mm256_storeu_si256(acc.as_mut_ptr().add(r * NB * NT + b * NB + h * 8) as *mut __m256i, *v) };
        }
    }
}

/// The 4 bytes at `p`, broadcast to every 32-bit lane.
#[inline(always)]
unsafe fn broadcast4(p: *const u8) -> __m256i {
    unsafe { _mm256_set1_epi32((p as *const i32).read_unaligned()) }
}

/// A `vpdpbusd` ymm tile, `R` rows x each block of the tile, compiled for one encoding.
macro_rules! vnni_tile {
    ($name:ident, $features:literal, $dpbusd:ident) => {
        #[target_feature(enable = $features)]
        #[allow(clippy::needless_range_loop)] // register tiles indexed by row read clearest
        unsafe fn $name<const R: usize>(a: Rows, w: &BlockedWeights, nb0: usize, blocks: usize, acc: &mut [i32]) {
            unsafe {
                let (wbase, gs) = w.tile_start(nb0, blocks);
                let abase = a.data.as_ptr();
                for b in 0..blocks {
                    let wb = wbase.add(b * 64);
                    let mut c = [[_mm256_setzero_si256(); 2]; R];
                    for g in 0..a.kp / 4 {
                        let w0 = _mm256_loadu_si256(wb.add(g * gs) as *const __m256i);
                        let w1 = _mm256_loadu_si256(wb.add(g * gs + 32) as *const __m256i);
                        for r in 0..R {
                            let av = broadcast4(abase.add(r * a.stride + g * 4));
                            c[r][0] = $dpbusd(c[r][0], av, w0);
                            c[r][1] = $dpbusd(c[r][1], av, w1);
                        }
                    }
                    store_block(&c, b, acc);
                }
            }
        }
    };
}

vnni_tile!(tile_avxvnni, "avx2,avxvnni", _mm256_dpbusd_avx_epi32);
vnni_tile!(tile_avxvnni_evex, "avx2,avx512f,avx512vl,avx512vnni", _mm256_dpbusd_epi32);

/// The AVX2 tile: `R` rows x each block; per pair of k, each 16-byte weight half widened to
/// i16 once (`vpmovsxbw`) and multiplied with every row's i16 pair (`vpmaddwd`).
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_avx2<const R: usize>(a: Rows, w: &BlockedWeights, nb0: usize, blocks: usize, acc: &mut [i32]) {
    unsafe {
        let (wbase, gs) = w.tile_start(nb0, blocks);
        let abase = a.data.as_ptr();
        for b in 0..blocks {
            let wb = wbase.add(b * 32);
            let mut c = [[_mm256_setzero_si256(); 2]; R];
            for p in 0..a.kp / 2 {
                let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(p * gs) as *const __m128i));
                let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(p * gs + 16) as *const __m128i));
                for r in 0..R {
                    let av = broadcast4(abase.add(r * a.stride + p * 4));
                    c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(av, w0));
                    c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(av, w1));
                }
            }
            store_block(&c, b, acc);
        }
    }
}

/// Calls `$tile::<R>` for the run-time row count `$mr` (1..=6).
macro_rules! with_rows {
    ($tile:ident, $mr:expr, $($arg:expr),*) => {
        match $mr {
            1 => $tile::<1>($($arg),*),
            2 => $tile::<2>($($arg),*),
            3 => $tile::<3>($($arg),*),
            4 => $tile::<4>($($arg),*),
            5 => $tile::<5>($($arg),*),
            6 => $tile::<6>($($arg),*),
            _ => unreachable!("tiles have at most 6 rows"),
        }
    };
}

/// The AVX-VNNI kernel (VEX `vpdpbusd` ymm). 6 rows: 12 accumulators, 2 weight vectors and a
/// broadcast fill the 16 ymm registers.
pub struct AvxVnni;
/// [`AvxVnni`]'s tile in the EVEX encoding (AVX-512 VL + VNNI); same operations, same results.
pub struct AvxVnniEvex;
/// Plain AVX2 (`vpmaddwd` on i16): 6 rows, 12 accumulators, 2 weights and a broadcast.
pub struct Avx2;

/// [`Kernel::strip`] for the ymm kernels: the tile into a buffer, then the epilogue row by row.
macro_rules! ymm_strip {
    ($tile:ident) => {
        unsafe fn strip(
            a: Rows,
            w: &BlockedWeights,
            nb0: usize,
            blocks: usize,
            mr: usize,
            _first: bool,
            cols: &Columns,
            sa: &[f32],
            out: *mut f32,
        ) {
            let mut acc = [0i32; MR_MAX * NB * NT];
            unsafe {
                with_rows!($tile, mr, a, w, nb0, blocks, &mut acc);
                epilogue_rows(&acc, mr, cols, sa, out, epilogue_avx2)
            }
        }
    };
}

impl Kernel for AvxVnni {
    const SHIFTED: bool = true;
    const MR: usize = 6;
    fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("avxvnni")
    }
    unsafe fn quantize_row(x: &[f32], out: &mut [u8]) -> f32 {
        unsafe { quantize_row_avx2_u8(x, out) }
    }
    ymm_strip!(tile_avxvnni);
    unsafe fn peak_sequence(iters: usize) -> u64 {
        unsafe { dpbusd_ymm_loop::<true>(iters) }
    }
}

impl Kernel for AvxVnniEvex {
    const SHIFTED: bool = true;
    const MR: usize = 6;
    fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }
    unsafe fn quantize_row(x: &[f32], out: &mut [u8]) -> f32 {
        unsafe { quantize_row_avx2_u8(x, out) }
    }
    ymm_strip!(tile_avxvnni_evex);
    unsafe fn peak_sequence(iters: usize) -> u64 {
        unsafe { dpbusd_ymm_loop::<false>(iters) }
    }
}

impl Kernel for Avx2 {
    const SHIFTED: bool = false;
    const ACT_BYTES: usize = 2;
    const K_GROUP: usize = 2;
    const MR: usize = 6;
    fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    unsafe fn quantize_row(x: &[f32], out: &mut [u8]) -> f32 {
        unsafe { quantize_row_avx2_i16(x, out) }
    }
    ymm_strip!(tile_avx2);
    unsafe fn peak_sequence(iters: usize) -> u64 {
        unsafe { i16_madd_loop(iters) }
    }
}

// ---- Register-only peaks --------------------------------------------------------------------
// Written in assembly: the same loops in intrinsics have loop-invariant products, which the
// compiler hoists out of the loop (only the accumulating instruction would be timed).

/// 12 independent `vpdpbusd` ymm chains (`VEX`: the AVX-VNNI encoding, else EVEX).
#[target_feature(enable = "avx2")]
#[rustfmt::skip]
unsafe fn dpbusd_ymm_loop<const VEX: bool>(iters: usize) -> u64 {
    macro_rules! chains {
        ($p:literal) => {
            concat!(
                $p, " vpdpbusd ymm4, ymm0, ymm1\n", $p, " vpdpbusd ymm5, ymm0, ymm2\n", $p, " vpdpbusd ymm6, ymm0, ymm3\n",
                $p, " vpdpbusd ymm7, ymm0, ymm1\n", $p, " vpdpbusd ymm8, ymm0, ymm2\n", $p, " vpdpbusd ymm9, ymm0, ymm3\n",
                $p, " vpdpbusd ymm10, ymm0, ymm1\n", $p, " vpdpbusd ymm11, ymm0, ymm2\n", $p, " vpdpbusd ymm12, ymm0, ymm3\n",
                $p, " vpdpbusd ymm13, ymm0, ymm1\n", $p, " vpdpbusd ymm14, ymm0, ymm2\n", $p, " vpdpbusd ymm15, ymm0, ymm3\n",
            )
        };
    }
    macro_rules! run {
        ($p:literal) => {
            // SAFETY: registers only; the caller checked the instruction's features.
            unsafe {
                asm!("2:", chains!($p), "dec {n}", "jnz 2b", "vzeroupper", n = inout(reg) iters.max(1) => _,
                    out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
                    out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                    options(nostack, nomem))
            }
        };
    }
    if VEX { run!("{{vex}}") } else { run!("{{evex}}") }
    (iters.max(1) * 12 * 32) as u64
}

/// An AVX2 register-only loop: `ymm2` set to 16-bit ones, then per iteration `$chain!` on 8
/// (accumulator, weight, temporary) register triples; `ymm0` and `ymm1` hold activations.
/// Evaluates to the MACs done, `$macs` per chain.
macro_rules! avx2_loop {
    ($iters:expr, $macs:expr, $chain:ident) => {{
        // SAFETY: registers only; AVX2 checked by the caller.
        unsafe {
            asm!("vpcmpeqw ymm2, ymm2, ymm2", "vpsrlw ymm2, ymm2, 15", "2:",
                $chain!("ymm5", "ymm3", "ymm13"), $chain!("ymm6", "ymm4", "ymm14"),
                $chain!("ymm7", "ymm3", "ymm15"), $chain!("ymm8", "ymm4", "ymm13"),
                $chain!("ymm9", "ymm3", "ymm14"), $chain!("ymm10", "ymm4", "ymm15"),
                $chain!("ymm11", "ymm3", "ymm13"), $chain!("ymm12", "ymm4", "ymm14"),
                "dec {n}", "jnz 2b", "vzeroupper", n = inout(reg) $iters.max(1) => _,
                out("ymm2") _, out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
                out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack, nomem));
            }
        ($iters.max(1) * 8 * $macs) as u64
    }};
}

#[rustfmt::skip]
macro_rules! sign_chain {
    ($acc:literal, $w:literal, $t:literal) => {
        concat!("vpsignb ", $t, ", ", $w, ", ymm0\n", "vpmaddubsw ", $t, ", ymm1, ", $t, "\n",
            "vpmaddwd ", $t, ", ", $t, ", ymm2\n", "vpaddd ", $acc, ", ", $acc, ", ", $t, "\n")
    };
}
#[rustfmt::skip]
macro_rules! u8s8_chain {
    ($acc:literal, $w:literal, $t:literal) => {
        concat!("vpmaddubsw ", $t, ", ymm1, ", $w, "\n", "vpmaddwd ", $t, ", ", $t, ", ymm2\n",
            "vpaddd ", $acc, ", ", $acc, ", ", $t, "\n")
    };
}
#[rustfmt::skip]
macro_rules! i16_chain {
    ($acc:literal, $w:literal, $t:literal) => {
        concat!("vpmaddwd ", $t, ", ymm0, ", $w, "\n", "vpaddd ", $acc, ", ", $acc, ", ", $t, "\n")
    };
}

/// `vpsignb`, `vpmaddubsw` on |a| and w·sign(a), `vpmaddwd` by ones, `vpaddd`: exact.
#[target_feature(enable = "avx2")]
unsafe fn sign_maddubs_loop(iters: usize) -> u64 {
    avx2_loop!(iters, 32, sign_chain)
}

/// ONNX Runtime's and fbgemm's AVX2 sequence on u8 x s8: `vpmaddubsw`, `vpmaddwd`, `vpaddd`.
/// One instruction fewer than the sign form, but `vpmaddubsw` saturates on large pairs.
#[target_feature(enable = "avx2")]
unsafe fn u8s8_loop(iters: usize) -> u64 {
    avx2_loop!(iters, 32, u8s8_chain)
}

/// The AVX2 path's sequence: `vpmaddwd` on i16 operands and `vpaddd`. Exact; half the products
/// per instruction of the byte forms, but one multiply-port instruction per 16.
#[target_feature(enable = "avx2")]
unsafe fn i16_madd_loop(iters: usize) -> u64 {
    avx2_loop!(iters, 16, i16_chain)
}

/// The AVX2 int8 sequences the AVX2 path was chosen from, each as a register-only loop
/// (name, loop returning its MACs). Each needs AVX2.
pub const CANDIDATES: [(&str, PeakSequence); 3] = [
    ("avx2 i16: vpmaddwd+vpaddd (exact; ours)", i16_madd_loop),
    ("avx2 u8s8: vpmaddubsw+vpmaddwd+vpaddd (saturates)", u8s8_loop),
    ("avx2 |a|·sign: vpsignb+vpmaddubsw+vpmaddwd+vpaddd (exact)", sign_maddubs_loop),
];
