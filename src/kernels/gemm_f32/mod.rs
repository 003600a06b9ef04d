//! f32 GEMM `C = A·B (+ bias)` with B prepacked: the fp32 linear layers and both products of
//! attention.
//!
//! Why our own rather than the `gemm` crate (which we used before and still use where no SIMD
//! path applies): the crate packs both operands on every call, including the weights, which
//! never change. With the weights packed once and the activations read in place, one tile loop
//! reaches 90-93% of the FMA peak on ViT shapes where the crate reached 75-85% (AMD Zen 4, 2
//! threads: ViT-B qkv ~108 vs ~95 GMAC/s, DeiT-Ti qkv ~104 vs ~85), and attention's small
//! per-head products no longer pay two packings each.
//!
//! This module owns the packed layout, the [`Kernel`] trait, the tiled drivers (parallel for
//! linear layers, serial for attention's tasks) and the dispatch; each SIMD family is a leaf
//! file that imports only this module:
//! - [`avx512`]: 32 columns (two zmm) x up to 14 rows;
//! - [`avx2`]: AVX2 + FMA, 16 columns (two ymm) x 6 rows.
//!
//! Results agree with the `gemm` crate and with a naive loop to f32 rounding, not to the bit:
//! every path sums k in order with one FMA per step, the crate in its own order.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;

use rayon::prelude::*;

use super::{SharedMut, SimdLevel, ops};

/// Columns per packed block: the layout every path reads (a zmm, or two ymm).
pub const BLOCK: usize = 16;
/// Columns are padded to a multiple of this, so a 32-column tile always has two blocks.
const PAD: usize = 32;

/// B `[k, n]` packed in blocks of [`BLOCK`] columns, `[n / 16][k][16]`, zero-padded to a
/// multiple of 32 columns: a tile streams each block's k rows from one contiguous run.
#[derive(Clone, Debug, Default)]
pub struct PackedB {
    pub n: usize,
    pub k: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Weights `[n, k]` (one row per output column, torch's `Linear.weight`), packed in parallel.
    pub fn from_weights(w: &[f32], n: usize, k: usize) -> PackedB {
        assert_eq!(w.len(), n * k);
        let mut b = PackedB { n, k, data: vec![0f32; n.next_multiple_of(PAD) * k] };
        if k > 0 {
            b.data.par_chunks_mut(BLOCK * k).enumerate().for_each(|(blk, dst)| {
                for j in 0..BLOCK.min(n.saturating_sub(blk * BLOCK)) {
                    let row = &w[(blk * BLOCK + j) * k..(blk * BLOCK + j + 1) * k];
                    for (kk, &v) in row.iter().enumerate() {
                        dst[kk * BLOCK + j] = v;
                    }
                }
            });
        }
        b
    }

    /// Re-packs this buffer (keeping its allocation) with `B[kk][j] = scale · src[j·stride + kk]`
    /// for `j < n`, `kk < k`: B given as rows of its transpose (attention's keys).
    pub fn pack_transposed(&mut self, src: &[f32], stride: usize, n: usize, k: usize, scale: f32) {
        self.reset(n, k);
        for j in 0..n {
            let (blk, jj) = (j / BLOCK, j % BLOCK);
            let dst = &mut self.data[blk * BLOCK * k..(blk + 1) * BLOCK * k];
            for (kk, &v) in src[j * stride..j * stride + k].iter().enumerate() {
                dst[kk * BLOCK + jj] = v * scale;
            }
        }
    }

    /// Re-packs this buffer with `B[kk][j] = src[kk·stride + j]`: B given row by row (attention's
    /// values).
    pub fn pack_rows(&mut self, src: &[f32], stride: usize, n: usize, k: usize) {
        self.reset(n, k);
        for kk in 0..k {
            let row = &src[kk * stride..kk * stride + n];
            for (blk, chunk) in row.chunks(BLOCK).enumerate() {
                let at = blk * BLOCK * k + kk * BLOCK;
                self.data[at..at + chunk.len()].copy_from_slice(chunk);
            }
        }
    }

    /// Sizes the buffer for `n` x `k`, zeroing only the padding columns (the packers write the
    /// rest).
    fn reset(&mut self, n: usize, k: usize) {
        self.n = n;
        self.k = k;
        let np = n.next_multiple_of(PAD);
        self.data.resize(np * k, 0.0);
        for j in n..np {
            let (blk, jj) = (j / BLOCK, j % BLOCK);
            for kk in 0..k {
                self.data[blk * BLOCK * k + kk * BLOCK + jj] = 0.0;
            }
        }
    }

    pub fn bytes_in_memory(&self) -> usize {
        4 * self.data.len()
    }

    /// The block of columns `16·blk ..`; `blk` below `n.next_multiple_of(32) / 16`.
    fn block(&self, blk: usize) -> *const f32 {
        self.data[blk * BLOCK * self.k..].as_ptr()
    }
}

/// One tile's operands: `rows` x `cols` outputs at `c` (row stride `ldc`) = `A[rows, k]` (row
/// stride `lda`) times the B blocks at `b` (`b_block` floats apart, 16 floats per k), plus the
/// bias at `bias` (`cols` floats; null: none). A tile of a kernel reads two blocks when its
/// `NR` is 32.
#[derive(Clone, Copy)]
pub struct Tile {
    pub rows: usize,
    pub cols: usize,
    pub k: usize,
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub b_block: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub bias: *const f32,
}

/// One micro-kernel family.
#[allow(clippy::missing_safety_doc)] // one condition for all: the CPU has `available()`'s features
pub trait Kernel: Sync {
    /// Columns per tile: 16 or 32.
    const NR: usize;
    fn available() -> bool;
    /// Rows per tile for inner dimension `k`.
    fn rows_per_tile(k: usize) -> usize;
    /// Computes one tile. `t.rows <= rows_per_tile(t.k)`, `t.cols <= NR`; the pointers cover
    /// what [`Tile`] says; the output elements are the caller's alone.
    unsafe fn tile(t: &Tile);
    /// A register-only loop of independent FMAs: the MACs performed in `iters` iterations.
    unsafe fn peak_sequence(iters: usize) -> u64;
}

/// Whether `level` has a kernel here (the x86 SIMD levels); with `SimdLevel::None` callers use
/// the `gemm` crate or plain loops.
pub fn has_kernel(level: SimdLevel) -> bool {
    #[cfg(target_arch = "x86_64")]
    match level {
        SimdLevel::Avx512 => return avx512::Zmm::available(),
        SimdLevel::Avx2Fma => return avx2::Ymm::available(),
        SimdLevel::None => {}
    }
    let _ = level;
    false
}

/// Rows per tile of `level`'s kernel for inner dimension `k` (1 without a kernel).
fn rows_per_tile(level: SimdLevel, k: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    match level {
        SimdLevel::Avx512 => return avx512::Zmm::rows_per_tile(k),
        SimdLevel::Avx2Fma => return avx2::Ymm::rows_per_tile(k),
        SimdLevel::None => {}
    }
    let _ = (level, k);
    1
}

/// Name of the path `level` runs, for reports.
pub fn path_name(level: SimdLevel) -> &'static str {
    match level {
        SimdLevel::Avx512 if has_kernel(level) => "avx512 f32",
        SimdLevel::Avx2Fma if has_kernel(level) => "avx2+fma f32",
        _ => "gemm crate",
    }
}

/// Columns of one parallel task of [`linear`]: a task streams its weights once (64 x 768 x 4
/// = 192 KB for ViT-B, L2-resident) while sweeping the rows.
const TASK_COLUMNS: usize = 64;
/// Activation bytes beyond which rows are swept in chunks that stay in L2 (batches).
const UNCHUNKED_BYTES: usize = 1024 * 1024;
const CHUNK_BYTES: usize = 512 * 1024;

/// The fp32 linear layer `x [m, k] · W + bias` with W packed ([`PackedB::from_weights`]),
/// optionally followed by GELU, on `level`'s kernel (which must exist: [`has_kernel`]). Tasks
/// over 64-column slices and, for narrow layers and batches, row chunks.
pub fn linear(level: SimdLevel, x: &[f32], m: usize, w: &PackedB, bias: Option<&[f32]>, gelu: bool) -> Vec<f32> {
    assert!(x.len() == m * w.k && bias.is_none_or(|b| b.len() == w.n));
    assert!(has_kernel(level), "no f32 kernel for {level:?}");
    let n = w.n;
    let mut out = Vec::with_capacity(m * n);
    if m == 0 || n == 0 {
        return out;
    }
    let col_tasks = n.div_ceil(TASK_COLUMNS);
    let want = 4 * rayon::current_num_threads();
    let bytes = m * w.k * 4;
    let for_cache = if bytes > UNCHUNKED_BYTES { bytes.div_ceil(CHUNK_BYTES) } else { 1 };
    let chunks = want.div_ceil(col_tasks).max(for_cache).clamp(1, m.div_ceil(8));
    // Whole tiles per chunk, so only the last chunk has a short tile.
    let chunk_rows = m.div_ceil(chunks).next_multiple_of(rows_per_tile(level, w.k));
    let chunks = m.div_ceil(chunk_rows);
    let dst = SharedMut(out.as_mut_ptr());
    (0..chunks * col_tasks).into_par_iter().for_each(|task| {
        let (chunk, ct) = (task / col_tasks, task % col_tasks);
        let rows = chunk * chunk_rows..((chunk + 1) * chunk_rows).min(m);
        let cols = ct * TASK_COLUMNS..((ct + 1) * TASK_COLUMNS).min(n);
        // SAFETY: the kernel exists (asserted); x holds m·k, w is packed for n x k, `out` has
        // capacity m·n and this task alone writes these rows x columns.
        unsafe {
            let a = x.as_ptr().add(rows.start * w.k);
            let c = dst.ptr().add(rows.start * n);
            tiles(level, rows.len(), cols.clone(), a, w.k, w, c, n, bias);
            if gelu {
                for r in 0..rows.len() {
                    let seg = std::slice::from_raw_parts_mut(c.add(r * n + cols.start), cols.len());
                    ops::gelu_slice(seg);
                }
            }
        }
    });
    // SAFETY: the tasks wrote every element.
    unsafe { out.set_len(m * n) };
    out
}

/// `C[rows, cols] = A[rows, k] · B[:, cols] (+ bias[cols])` on the calling thread, with `level`'s
/// kernel ([`has_kernel`]). `cols` starts at a multiple of 32 and may run into B's zero padding
/// up to the next multiple of 16 (those columns come out 0, plus the bias); C's columns are
/// addressed from column 0 (`c` is row 0, column 0).
///
/// # Safety
/// `a` covers `rows` rows of `b.k` floats `lda` apart; `c` covers `rows` rows of `ldc >=
/// cols.end` floats that nothing else accesses during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tiles(
    level: SimdLevel,
    rows: usize,
    cols: std::ops::Range<usize>,
    a: *const f32,
    lda: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    bias: Option<&[f32]>,
) {
    debug_assert!(cols.start.is_multiple_of(PAD) && cols.end <= b.n.next_multiple_of(BLOCK));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's bounds; each kernel only where available.
    unsafe {
        match level {
            SimdLevel::Avx512 if avx512::Zmm::available() => {
                return sweep::<avx512::Zmm>(rows, cols, a, lda, b, c, ldc, bias);
            }
            SimdLevel::Avx2Fma if avx2::Ymm::available() => {
                return sweep::<avx2::Ymm>(rows, cols, a, lda, b, c, ldc, bias);
            }
            _ => {}
        }
    }
    let _ = (rows, a, lda, c, ldc, bias);
    panic!("no f32 kernel for {level:?}");
}

/// Column tiles outer (a tile's B blocks stay in cache), row tiles inner.
///
/// # Safety
/// As [`tiles`], with `K` available.
#[allow(clippy::too_many_arguments)]
unsafe fn sweep<K: Kernel>(
    rows: usize,
    cols: std::ops::Range<usize>,
    a: *const f32,
    lda: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    bias: Option<&[f32]>,
) {
    let mr = K::rows_per_tile(b.k);
    let mut j = cols.start;
    while j < cols.end {
        let width = K::NR.min(cols.end - j);
        let mut i = 0;
        while i < rows {
            let t = Tile {
                rows: mr.min(rows - i),
                cols: width,
                k: b.k,
                // SAFETY (all three): within the caller's bounds.
                a: unsafe { a.add(i * lda) },
                lda,
                b: b.block(j / BLOCK),
                b_block: BLOCK * b.k,
                c: unsafe { c.add(i * ldc + j) },
                ldc,
                bias: bias.map_or(std::ptr::null(), |v| unsafe { v.as_ptr().add(j) }),
            };
            // SAFETY: as above.
            unsafe { K::tile(&t) };
            i += mr;
        }
        j += width;
    }
}

/// The register-only FMA peak of `level`'s kernel on one core, in MACs per second (best of
/// several short runs), or `None` without a kernel.
pub fn peak_macs_per_second(level: SimdLevel) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let seq: unsafe fn(usize) -> u64 = match level {
            SimdLevel::Avx512 if avx512::Zmm::available() => avx512::Zmm::peak_sequence,
            SimdLevel::Avx2Fma if avx2::Ymm::available() => avx2::Ymm::peak_sequence,
            _ => return None,
        };
        // SAFETY: the features were checked above.
        unsafe { seq(200_000) };
        let best = (0..10)
            .map(|_| {
                let t = std::time::Instant::now();
                // SAFETY: as above.
                let macs = unsafe { seq(500_000) };
                macs as f64 / t.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max);
        Some(best)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level;
        None
    }
}
