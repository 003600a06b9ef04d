//! AVX-512 f32 tile: 32 columns (two zmm) x up to 14 rows, 28 accumulators in registers; each
//! k step loads two B vectors and broadcasts one A value per row (an embedded-broadcast FMA
//! operand). Partial columns use masked loads and stores.

use std::arch::x86_64::*;

use super::{BLOCK, Kernel, Tile};

pub struct Zmm;

impl Kernel for Zmm {
    const NR: usize = 2 * BLOCK;

    fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    /// 14 rows use 28 of the 32 registers. With long rows (fc2, k = 3072) 8 rows ran faster on
    /// AMD Zen 4 (~103 vs ~85 GMAC/s): 14 row streams plus 2 weight streams outrun the
    /// hardware prefetcher.
    fn rows_per_tile(k: usize) -> usize {
        if k <= 1024 { 14 } else { 8 }
    }

    unsafe fn tile(t: &Tile) {
        // SAFETY: the caller's contract ([`Kernel::tile`]).
        unsafe {
            // A tile of at most 16 columns (the last one of attention's 197 keys) computes one
            // vector per row instead of two.
            if t.cols <= BLOCK { by_rows::<1>(t) } else { by_rows::<2>(t) }
        }
    }

    unsafe fn peak_sequence(iters: usize) -> u64 {
        unsafe { fma_loop(iters) }
    }
}

/// [`tile_rows`] for `t.rows`, with `V` vectors (16 columns each) per row.
#[target_feature(enable = "avx512f")]
unsafe fn by_rows<const V: usize>(t: &Tile) {
    // SAFETY: the caller's contract.
    unsafe {
        match t.rows {
            14 => tile_rows::<14, V>(t),
            13 => tile_rows::<13, V>(t),
            12 => tile_rows::<12, V>(t),
            11 => tile_rows::<11, V>(t),
            10 => tile_rows::<10, V>(t),
            9 => tile_rows::<9, V>(t),
            8 => tile_rows::<8, V>(t),
            7 => tile_rows::<7, V>(t),
            6 => tile_rows::<6, V>(t),
            5 => tile_rows::<5, V>(t),
            4 => tile_rows::<4, V>(t),
            3 => tile_rows::<3, V>(t),
            2 => tile_rows::<2, V>(t),
            1 => tile_rows::<1, V>(t),
            _ => unreachable!("{} rows", t.rows),
        }
    }
}

/// A tile of exactly `R` rows and `V` vectors a row, so the accumulators stay in registers.
#[target_feature(enable = "avx512f")]
unsafe fn tile_rows<const R: usize, const V: usize>(t: &Tile) {
    let m0: __mmask16 = if t.cols >= 16 { 0xffff } else { (1u16 << t.cols) - 1 };
    let m1: __mmask16 = if t.cols >= 32 {
        0xffff
    } else if t.cols > 16 {
        (1u16 << (t.cols - 16)) - 1
    } else {
        0
    };
    // SAFETY: the caller's contract; masked lanes are neither read nor written.
    unsafe {
        let (bias0, bias1) = if t.bias.is_null() {
            (_mm512_setzero_ps(), _mm512_setzero_ps())
        } else {
            (_mm512_maskz_loadu_ps(m0, t.bias), _mm512_maskz_loadu_ps(m1, t.bias.add(16)))
        };
        let bias = [bias0, bias1];
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for acc in acc.iter_mut() {
            acc.copy_from_slice(&bias[..V]);
        }
        let blocks: [*const f32; V] = std::array::from_fn(|v| t.b.add(v * t.b_block));
        for kk in 0..t.k {
            let w: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(blocks[v].add(kk * BLOCK)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*t.a.add(r * t.lda + kk));
                for v in 0..V {
                    acc[v] = _mm512_fmadd_ps(a, w[v], acc[v]);
                }
            }
        }
        let masks = [m0, m1];
        for (r, acc) in acc.iter().enumerate() {
            let c = t.c.add(r * t.ldc);
            for v in 0..V {
                _mm512_mask_storeu_ps(c.add(v * BLOCK), masks[v], acc[v]);
            }
        }
    }
}

/// 24 independent `vfmadd231ps` zmm chains from registers: the FMA throughput the tile is
/// measured against. In assembly, as the int8 peaks are.
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop(iters: usize) -> u64 {
    // SAFETY: registers only; the caller checked the features.
    unsafe {
        std::arch::asm!(
            "vxorps xmm0, xmm0, xmm0", "vxorps xmm1, xmm1, xmm1",
            "2:",
            "vfmadd231ps zmm8, zmm0, zmm1", "vfmadd231ps zmm9, zmm0, zmm1", "vfmadd231ps zmm10, zmm0, zmm1",
            "vfmadd231ps zmm11, zmm0, zmm1", "vfmadd231ps zmm12, zmm0, zmm1", "vfmadd231ps zmm13, zmm0, zmm1",
            "vfmadd231ps zmm14, zmm0, zmm1", "vfmadd231ps zmm15, zmm0, zmm1", "vfmadd231ps zmm16, zmm0, zmm1",
            "vfmadd231ps zmm17, zmm0, zmm1", "vfmadd231ps zmm18, zmm0, zmm1", "vfmadd231ps zmm19, zmm0, zmm1",
            "vfmadd231ps zmm20, zmm0, zmm1", "vfmadd231ps zmm21, zmm0, zmm1", "vfmadd231ps zmm22, zmm0, zmm1",
            "vfmadd231ps zmm23, zmm0, zmm1", "vfmadd231ps zmm24, zmm0, zmm1", "vfmadd231ps zmm25, zmm0, zmm1",
            "vfmadd231ps zmm26, zmm0, zmm1", "vfmadd231ps zmm27, zmm0, zmm1", "vfmadd231ps zmm28, zmm0, zmm1",
            "vfmadd231ps zmm29, zmm0, zmm1", "vfmadd231ps zmm30, zmm0, zmm1", "vfmadd231ps zmm31, zmm0, zmm1",
            "dec {n}", "jnz 2b", "vzeroupper",
            n = inout(reg) iters.max(1) => _,
            out("zmm0") _, out("zmm1") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
            out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _, out("zmm24") _, out("zmm25") _,
            out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            options(nostack, nomem),
        );
    }
    (iters.max(1) * 24 * 16) as u64
}
