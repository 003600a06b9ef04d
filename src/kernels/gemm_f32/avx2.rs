//! AVX2 + FMA f32 tile: 16 columns (two ymm) x 6 rows, 12 accumulators of the 16 registers;
//! each k step loads two B vectors and broadcasts one A value per row. Partial columns go
//! through a stack tile (AVX2 has no cheap per-lane masks for the bias and stores).

use std::arch::x86_64::*;

use super::{BLOCK, Kernel, Tile};

pub struct Ymm;

impl Kernel for Ymm {
    const NR: usize = BLOCK;

    fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    fn rows_per_tile(_k: usize) -> usize {
        6
    }

    unsafe fn tile(t: &Tile) {
        // SAFETY: the caller's contract ([`Kernel::tile`]).
        unsafe {
            match t.rows {
                6 => tile_rows::<6>(t),
                5 => tile_rows::<5>(t),
                4 => tile_rows::<4>(t),
                3 => tile_rows::<3>(t),
                2 => tile_rows::<2>(t),
                1 => tile_rows::<1>(t),
                _ => unreachable!("{} rows", t.rows),
            }
        }
    }

    unsafe fn peak_sequence(iters: usize) -> u64 {
        unsafe { fma_loop(iters) }
    }
}

/// A tile of exactly `R` rows, so the accumulators stay in registers.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_rows<const R: usize>(t: &Tile) {
    let full = t.cols == BLOCK;
    // SAFETY: the caller's contract; partial tiles read the bias and write C through `stage`.
    unsafe {
        let mut stage = [0f32; BLOCK];
        let bias = if t.bias.is_null() {
            std::ptr::null()
        } else if full {
            t.bias
        } else {
            std::ptr::copy_nonoverlapping(t.bias, stage.as_mut_ptr(), t.cols);
            stage.as_ptr()
        };
        let (bias0, bias1) = if bias.is_null() {
            (_mm256_setzero_ps(), _mm256_setzero_ps())
        } else {
            (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)))
        };
        let mut acc = [[bias0, bias1]; R];
        for kk in 0..t.k {
            let w0 = _mm256_loadu_ps(t.b.add(kk * BLOCK));
            let w1 = _mm256_loadu_ps(t.b.add(kk * BLOCK + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*t.a.add(r * t.lda + kk));
                acc[0] = _mm256_fmadd_ps(a, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a, w1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let c = t.c.add(r * t.ldc);
            if full {
                _mm256_storeu_ps(c, acc[0]);
                _mm256_storeu_ps(c.add(8), acc[1]);
            } else {
                _mm256_storeu_ps(stage.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(stage.as_mut_ptr().add(8), acc[1]);
                std::ptr::copy_nonoverlapping(stage.as_ptr(), c, t.cols);
            }
        }
    }
}

/// 12 independent `vfmadd231ps` ymm chains from registers: the FMA throughput the tile is
/// measured against.
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop(iters: usize) -> u64 {
    // SAFETY: registers only; the caller checked the features.
    unsafe {
        std::arch::asm!(
            "vxorps xmm0, xmm0, xmm0", "vxorps xmm1, xmm1, xmm1",
            "2:",
            "vfmadd231ps ymm2, ymm0, ymm1", "vfmadd231ps ymm3, ymm0, ymm1", "vfmadd231ps ymm4, ymm0, ymm1",
            "vfmadd231ps ymm5, ymm0, ymm1", "vfmadd231ps ymm6, ymm0, ymm1", "vfmadd231ps ymm7, ymm0, ymm1",
            "vfmadd231ps ymm8, ymm0, ymm1", "vfmadd231ps ymm9, ymm0, ymm1", "vfmadd231ps ymm10, ymm0, ymm1",
            "vfmadd231ps ymm11, ymm0, ymm1", "vfmadd231ps ymm12, ymm0, ymm1", "vfmadd231ps ymm13, ymm0, ymm1",
            "dec {n}", "jnz 2b", "vzeroupper",
            n = inout(reg) iters.max(1) => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
            out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _,
            options(nostack, nomem),
        );
    }
    (iters.max(1) * 12 * 8) as u64
}
