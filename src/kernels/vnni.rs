//! int8 GEMM on AVX-512 VNNI (`vpdpbusd`: 64 u8×i8 products summed into 16 i32 lanes per
//! instruction).
//!
//! `vpdpbusd` multiplies *unsigned* bytes by signed ones, so activations are shifted to
//! `a + 128` (u8) and the shift is taken back exactly with the weights' row sums:
//! `Σ (a+128)·w = Σ a·w + 128·Σ w`. The result is the same integer as the portable kernel's,
//! and the epilogue is the same scalar arithmetic, so this path is bit-identical to the
//! reference (the tests check it).
//!
//! Weights are repacked once per layer into blocks of 16 output channels: for every group of 4
//! consecutive k, 64 bytes hold `w[n0..n0+16][k..k+4]` — exactly one zmm register, the operand
//! `vpdpbusd` wants. The micro-kernel keeps a 4-row × 64-column tile of i32 accumulators in 16
//! registers; each step loads 4 weight vectors and broadcasts 4 bytes of each of the 4 rows.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::gemm_i8::{Epilogue, PackedWeights, QuantizedRows, epilogue_row};

/// Output channels per weight block (one zmm of i32).
const NB: usize = 16;
/// Weight blocks per micro-kernel tile (64 columns).
const NT: usize = 4;
/// Rows per micro-kernel tile.
const MR: usize = 4;

/// Weights in the VNNI block layout: `[n_blocks][k_groups][16][4]` i8, zero-padded.
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
    pub fn pack(w: &PackedWeights) -> VnniWeights {
        let (n, k) = (w.n, w.k);
        let kp = k.div_ceil(4) * 4;
        let np = n.div_ceil(NB) * NB;
        let src = w.data.as_slice();
        let mut data = vec![0i8; np * kp];
        data.par_chunks_mut(NB * kp).enumerate().for_each(|(b, block)| {
            for j in 0..NB {
                let row = b * NB + j;
                if row >= n {
                    break;
                }
                for kk in 0..k {
                    let (g, r) = (kk / 4, kk % 4);
                    block[g * NB * 4 + j * 4 + r] = src[row * k + kk];
                }
            }
        });
        VnniWeights { n, k, kp, np, data }
    }
}

/// Activation rows shifted to u8 and zero-padded to `kp` (the padding meets zero weights).
pub fn shift_rows(a: &QuantizedRows, kp: usize) -> Vec<u8> {
    let mut out = vec![128u8; a.m * kp];
    out.par_chunks_mut(kp).zip(a.data.par_chunks(a.k.max(1))).for_each(|(o, r)| {
        for (d, &v) in o.iter_mut().zip(r) {
            *d = (v as i16 + 128) as u8;
        }
    });
    out
}

pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[m, n]` as [`super::gemm_i8::gemm`] computes it from already quantized rows. Panics if
/// the CPU lacks AVX-512 VNNI (callers dispatch on [`available`]).
pub fn gemm(
    a: &QuantizedRows,
    w: &PackedWeights,
    vw: &VnniWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let au = shift_rows(a, vw.kp);
    run(
        a.m,
        &|m0: usize, rows: usize, buf: &mut Vec<u8>, scales: &mut Vec<f32>| {
            buf.clear();
            buf.extend_from_slice(&au[m0 * vw.kp..(m0 + rows) * vw.kp]);
            scales.clear();
            scales.extend_from_slice(&a.scales[m0..m0 + rows]);
        },
        w,
        vw,
        bias,
        epilogue,
        out,
    )
}

/// The whole linear layer on f32 input `x` `[m, k]`: each task quantizes its own rows (per-row
/// symmetric int8, shifted to u8) straight into a cache-resident buffer, then multiplies them.
/// Same numbers as quantizing first and calling [`gemm`].
pub fn linear(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    vw: &VnniWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let k = w.k;
    run(
        m,
        &|m0: usize, rows: usize, buf: &mut Vec<u8>, scales: &mut Vec<f32>| {
            buf.clear();
            buf.resize(rows * vw.kp, 128);
            scales.clear();
            for r in 0..rows {
                let xr = &x[(m0 + r) * k..(m0 + r + 1) * k];
                // SAFETY: this path only runs where AVX-512 is present (asserted in `run`).
                let (s, _) = unsafe { quantize_row_avx512(xr, &mut buf[r * vw.kp..r * vw.kp + k]) };
                scales.push(s);
            }
        },
        w,
        vw,
        bias,
        epilogue,
        out,
    )
}

type FillRows<'a> = dyn Fn(usize, usize, &mut Vec<u8>, &mut Vec<f32>) + Sync + 'a;

fn run(
    m: usize,
    fill: &FillRows,
    w: &PackedWeights,
    vw: &VnniWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    assert!(available(), "AVX-512 VNNI is not available on this CPU");
    let n = w.n;
    // Parallel over row chunks; each task sweeps all columns (weights stay in L2, rows in L1).
    let row_tiles = m.div_ceil(MR);
    let chunk_rows = MR * row_tiles.div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
    out.par_chunks_mut(chunk_rows * n).enumerate().for_each(|(c, out_chunk)| {
        let m0 = c * chunk_rows;
        let rows = out_chunk.len() / n;
        let (mut au, mut scales) = (Vec::new(), Vec::new());
        fill(m0, rows, &mut au, &mut scales);
        let mut acc = vec![0i32; MR * NB * NT];
        let mut i = 0;
        while i < rows {
            let mr = MR.min(rows - i);
            let mut nb = 0;
            while nb * NB < vw.np {
                let blocks = NT.min(vw.np / NB - nb);
                // SAFETY: feature presence asserted above; slices are sized by construction.
                unsafe { tile(&au[i * vw.kp..], vw, nb, blocks, mr, &mut acc) };
                let (c0, c1) = (nb * NB, ((nb + blocks) * NB).min(n));
                for r in 0..mr {
                    let out_row = &mut out_chunk[(i + r) * n..(i + r + 1) * n];
                    let acc_row = &acc[r * NB * NT..r * NB * NT + (c1 - c0)];
                    // SAFETY: as above.
                    unsafe {
                        epilogue_avx512(
                            acc_row,
                            &w.row_sums[c0..c1],
                            scales[i + r],
                            &w.scales[c0..c1],
                            bias.map(|b| &b[c0..c1]),
                            epilogue,
                            &mut out_row[c0..c1],
                        )
                    };
                }
                nb += blocks;
            }
            i += mr;
        }
    });
}

/// The shared row quantization, compiled with AVX-512 so it vectorises; same source, same codes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(x: &[f32], out: &mut [u8]) -> (f32, f32) {
    super::gemm_i8::quantize_row_into(x, out, true)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn quantize_row_avx512(x: &[f32], out: &mut [u8]) -> (f32, f32) {
    super::gemm_i8::quantize_row_into(x, out, true)
}

/// The shared epilogue, compiled with AVX-512 so it vectorises 16-wide; same source, same bits.
#[cfg(target_arch = "x86_64")]
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

#[cfg(not(target_arch = "x86_64"))]
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

/// Accumulates `mr` rows × `blocks`·16 columns into `acc` (row-major, stride 64), shifted
/// (u8 activations), without the row-sum correction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)] // register tiles indexed by row and block read clearest
unsafe fn tile(a: &[u8], vw: &VnniWeights, nb0: usize, blocks: usize, mr: usize, acc: &mut [i32]) {
    let kp = vw.kp;
    let groups = kp / 4;
    let block_bytes = NB * kp;
    unsafe {
        let mut c = [[_mm512_setzero_si512(); NT]; MR];
        let wbase = vw.data.as_ptr().add(nb0 * block_bytes);
        let abase = a.as_ptr();
        if mr == MR && blocks == NT {
            for g in 0..groups {
                let w0 = _mm512_loadu_si512(wbase.add(g * 64) as *const _);
                let w1 = _mm512_loadu_si512(wbase.add(block_bytes + g * 64) as *const _);
                let w2 = _mm512_loadu_si512(wbase.add(2 * block_bytes + g * 64) as *const _);
                let w3 = _mm512_loadu_si512(wbase.add(3 * block_bytes + g * 64) as *const _);
                for r in 0..MR {
                    let av = _mm512_set1_epi32((abase.add(r * kp + g * 4) as *const i32).read_unaligned());
                    c[r][0] = _mm512_dpbusd_epi32(c[r][0], av, w0);
                    c[r][1] = _mm512_dpbusd_epi32(c[r][1], av, w1);
                    c[r][2] = _mm512_dpbusd_epi32(c[r][2], av, w2);
                    c[r][3] = _mm512_dpbusd_epi32(c[r][3], av, w3);
                }
            }
        } else {
            for g in 0..groups {
                for b in 0..blocks {
                    let wv = _mm512_loadu_si512(wbase.add(b * block_bytes + g * 64) as *const _);
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

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(_: &[u8], _: &VnniWeights, _: usize, _: usize, _: usize, _: &mut [i32]) {
    unreachable!("AVX-512 VNNI is x86-64 only")
}
