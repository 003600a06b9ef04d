//! Elementwise math written so the compiler can vectorise it: no branches in the hot
//! expressions. The same source serves every path (compiled for the baseline, for AVX2+FMA and
//! for AVX-512), and gives the same bits in each: Rust never fuses `a * b + c` on its own, and
//! the polynomials' explicit `mul_add` is one correctly rounded operation everywhere — a
//! `vfmadd` where the CPU has FMA, libm's exact `fmaf` in the baseline build (slow, but that
//! build is the reference, used only where no SIMD path applies).

// The constants of [`exp`], shared with its 16-lane form `exp16`.
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.3;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2^23: adding it rounds to an integer kept in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;
/// Polynomial for (e^r - 1 - r) / r², highest degree first.
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// e^x with relative error ~2e-7 (Cephes `expf`: range reduction by ln 2, degree-5 polynomial,
/// exponent set through the bits). Clamped to the f32 range.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Clamped with selects rather than `clamp`: the same values (NaN stays NaN), but these map
    // to one `vmaxps`/`vminps` each instead of a compare and blend per bound.
    let x = if x < EXP_MIN { EXP_MIN } else { x };
    let x = if x > EXP_MAX { EXP_MAX } else { x };
    let t = x * std::f32::consts::LOG2_E + MAGIC; // n = round(x·log2 e) sits in t's low bits
    let n = t - MAGIC;
    // n as an integer from the bits, not `n as i32`: that saturating cast is scalarised.
    let ni = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    let e = (p * r).mul_add(r, r) + 1.0;
    e * f32::from_bits(((ni + 127) << 23) as u32)
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), with the sign restored.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut p = 1.061_405_4f32;
    p = p.mul_add(t, -1.453_152_1);
    p = p.mul_add(t, 1.421_413_8);
    p = p.mul_add(t, -0.284_496_74);
    p = p.mul_add(t, 0.254_829_6);
    let y = (-(p * t)).mul_add(exp(-a * a), 1.0);
    if x < 0.0 { -y } else { y }
}

/// GELU with erf, as PyTorch's `nn.GELU()`: 0.5·x·(1 + erf(x/√2)).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU over a slice, in place.
pub fn gelu_slice(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        // SAFETY: the features were detected.
        SimdLevel::Avx512 => return unsafe { gelu_slice_avx512(v) },
        SimdLevel::Avx2Fma => return unsafe { gelu_slice_avx2(v) },
        SimdLevel::None => {}
    }
    gelu_loop(v)
}

// Hot loops are plain `for` loops in `#[inline(always)]` functions: iterator adapters such as
// `for_each`/`fold` are separate generic functions, compiled *without* the caller's
// `#[target_feature]` (perf showed softmax running in SSE registers that way).
#[inline(always)]
fn gelu_loop(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = gelu(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_slice_avx512(v: &mut [f32]) {
    gelu_loop(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_slice_avx2(v: &mut [f32]) {
    gelu_loop(v)
}

pub use super::SimdLevel;

/// Which compilation of the elementwise kernels runs ([`super::cpu_path`]).
pub fn simd_level() -> SimdLevel {
    super::cpu_path().simd
}

/// Softmax of one row, in place: `e^(x - max) / Σ`. Max and sum use 16 independent lanes so
/// the loops vectorise; `exp` is ours (candle's softmax calls libm's scalar `expf`).
#[inline(always)]
pub fn softmax_row(v: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(chunks.remainder()) {
        max = max.max(x);
    }
    let mut sums = [0f32; 16];
    let mut chunks = v.chunks_exact_mut(16);
    for c in &mut chunks {
        for i in 0..16 {
            c[i] = exp(c[i] - max);
            sums[i] += c[i];
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    for s in sums {
        sum += s;
    }
    let inv = 1.0 / sum;
    for x in v.iter_mut() {
        *x *= inv;
    }
}

/// [`softmax_row`] on every row of `v` (`row_len` wide), vectorised where the CPU allows.
pub fn softmax_rows(v: &mut [f32], row_len: usize) {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        // SAFETY: the features were detected.
        SimdLevel::Avx512 => return unsafe { softmax_rows_avx512(v, row_len) },
        SimdLevel::Avx2Fma => return unsafe { softmax_rows_avx2(v, row_len) },
        SimdLevel::None => {}
    }
    softmax_loop(v, row_len)
}

#[inline(always)]
fn softmax_loop(v: &mut [f32], row_len: usize) {
    for row in v.chunks_mut(row_len.max(1)) {
        softmax_row(row);
    }
}

/// Softmax rows in explicit AVX-512: the shared source compiled to 2.5 cycles per element
/// (NaN-aware `max`/`clamp` become compare + blend per element); here max is `vmaxps`, the
/// tail is masked, and exp is [`exp16`]. Same formula, within 1e-6 of the portable rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows_avx512(v: &mut [f32], row_len: usize) {
    use std::arch::x86_64::*;
    if row_len == 0 {
        return;
    }
    let full = row_len / 16 * 16;
    let tail: __mmask16 = ((1u32 << (row_len - full)) - 1) as __mmask16;
    for row in v.chunks_mut(row_len) {
        let p = row.as_mut_ptr();
        unsafe {
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            for i in (0..full).step_by(16) {
                m = _mm512_max_ps(m, _mm512_loadu_ps(p.add(i)));
            }
            m = _mm512_mask_max_ps(m, tail, m, _mm512_maskz_loadu_ps(tail, p.add(full)));
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
            let mut sum = _mm512_setzero_ps();
            for i in (0..full).step_by(16) {
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
                _mm512_storeu_ps(p.add(i), e);
                sum = _mm512_add_ps(sum, e);
            }
            if tail != 0 {
                let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, p.add(full)), max));
                _mm512_mask_storeu_ps(p.add(full), tail, e);
                sum = _mm512_mask_add_ps(sum, tail, sum, e);
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
            for i in (0..full).step_by(16) {
                _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv));
            }
            if tail != 0 {
                _mm512_mask_storeu_ps(p.add(full), tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, p.add(full)), inv));
            }
        }
    }
}

/// [`exp`] on 16 lanes: the same range reduction and polynomial.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_MIN)), _mm512_set1_ps(EXP_MAX));
    let t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), _mm512_set1_ps(MAGIC));
    let n = _mm512_sub_ps(t, _mm512_set1_ps(MAGIC));
    let ni = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(MAGIC.to_bits() as i32));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x));
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0));
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127))));
    _mm512_mul_ps(e, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(v: &mut [f32], row_len: usize) {
    softmax_loop(v, row_len)
}

/// Σ (x - mean)² in f64 over 8 independent lanes (vectorises; a single running sum is a
/// serial chain). f64 because LayerNorm rows of the residual stream can carry a mean far
/// larger than their spread, and an f32 sum of 768 such values is off by more than 1e-6 after
/// normalising.
#[inline(always)]
fn centred_sum_sq(x: &[f32], mean: f64) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            let d = c[i] as f64 - mean;
            lanes[i] += d * d;
        }
    }
    let mut total = 0f64;
    for &v in chunks.remainder() {
        total += (v as f64 - mean) * (v as f64 - mean);
    }
    for l in lanes {
        total += l;
    }
    total
}

/// `sum = x + y`, then `norm = LayerNorm(sum)·gamma + beta` for one row. Two passes for the
/// variance (Σ(x − mean)²): the one-pass Σx² − mean² loses digits when |mean| ≫ std.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm_row(
    x: &[f32],
    y: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    sum: &mut [f32],
    norm: &mut [f32],
) {
    let d = sum.len();
    let (x, gamma, beta, norm) = (&x[..d], &gamma[..d], &beta[..d], &mut norm[..d]);
    match y {
        Some(y) => {
            let y = &y[..d];
            for i in 0..d {
                sum[i] = x[i] + y[i];
            }
        }
        None => sum.copy_from_slice(x),
    }
    let mean = row_sum(sum) / d as f64;
    let var = centred_sum_sq(sum, mean) / d as f64;
    let inv_std = (1.0 / (var + eps as f64).sqrt()) as f32;
    let mean = mean as f32;
    for i in 0..d {
        norm[i] = (sum[i] - mean) * inv_std * gamma[i] + beta[i];
    }
}

/// Σ x in f64 over 8 lanes (see [`centred_sum_sq`]).
#[inline(always)]
fn row_sum(x: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] += c[i] as f64;
        }
    }
    let mut total = 0f64;
    for &v in chunks.remainder() {
        total += v as f64;
    }
    for l in lanes {
        total += l;
    }
    total
}

/// [`add_layer_norm_row`] over `[rows, d]` (`y` absent: LayerNorm of `x` alone), rows spread over
/// rayon's pool, vectorised where the CPU allows. `sum` and `norm` are `[rows, d]`.
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm(
    reference: bool,
    x: &[f32],
    y: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    sum: &mut [f32],
    norm: &mut [f32],
) {
    use rayon::prelude::*;
    let d = gamma.len();
    assert!(d > 0 && beta.len() == d && x.len().is_multiple_of(d) && sum.len() == x.len() && norm.len() == x.len());
    if let Some(y) = y {
        assert_eq!(y.len(), x.len());
    }
    // Tasks of >= 32K elements: a hand-off to another core costs microseconds, so small models'
    // rows (DeiT-Ti: 197 x 192) are better done by fewer threads.
    let chunk = (32usize * 1024).div_ceil(d).max(1) * d;
    let level = if reference { SimdLevel::None } else { simd_level() };
    sum.par_chunks_mut(chunk).zip(norm.par_chunks_mut(chunk)).enumerate().for_each(|(c, (s, n))| {
        let xs = &x[c * chunk..c * chunk + s.len()];
        let ys = y.map(|y| &y[c * chunk..c * chunk + s.len()]);
        add_layer_norm_serial(level, xs, ys, gamma, beta, eps, s, n);
    });
}

/// [`add_layer_norm`] on the calling thread, compiled for `level` (which the CPU must have:
/// a level from [`simd_level`] or `None`). For callers that are already one parallel task.
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm_serial(
    level: SimdLevel,
    x: &[f32],
    y: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    sum: &mut [f32],
    norm: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match level {
        // SAFETY: the level's features were detected (`simd_level` never reports more).
        SimdLevel::Avx512 => return unsafe { add_layer_norm_rows_avx512(x, y, gamma, beta, eps, sum, norm) },
        SimdLevel::Avx2Fma => return unsafe { add_layer_norm_rows_avx2(x, y, gamma, beta, eps, sum, norm) },
        SimdLevel::None => {}
    }
    let _ = level;
    add_layer_norm_rows(x, y, gamma, beta, eps, sum, norm);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn add_layer_norm_rows(
    x: &[f32],
    y: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    sum: &mut [f32],
    norm: &mut [f32],
) {
    let d = gamma.len();
    for (r, (sr, nr)) in sum.chunks_mut(d).zip(norm.chunks_mut(d)).enumerate() {
        #[allow(clippy::manual_map)] // `Option::map` takes a closure: compiled without AVX-512
        let yr = match y {
            Some(y) => Some(&y[r * d..(r + 1) * d]),
            None => None,
        };
        add_layer_norm_row(&x[r * d..(r + 1) * d], yr, gamma, beta, eps, sr, nr);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn add_layer_norm_rows_avx512(
    x: &[f32],
    y: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    sum: &mut [f32],
    norm: &mut [f32],
) {
    add_layer_norm_rows(x, y, gamma, beta, eps, sum, norm)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn add_layer_norm_rows_avx2(
    x: &[f32],
    y: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    sum: &mut [f32],
    norm: &mut [f32],
) {
    add_layer_norm_rows(x, y, gamma, beta, eps, sum, norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf64(x: f64) -> f64 {
        // High-precision reference: the series for small |x|, the continued fraction otherwise.
        if x.abs() < 2.5 {
            let mut sum = x;
            let mut term = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            let a = x.abs();
            let mut f = 0.0;
            for n in (1..120).rev() {
                f = n as f64 / 2.0 / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            (1.0 - erfc) * x.signum()
        }
    }

    #[test]
    fn gelu_is_within_1e6_of_the_exact_function() {
        let mut worst = 0f64;
        let mut x = -10.0f32;
        while x <= 10.0 {
            let exact = 0.5 * x as f64 * (1.0 + erf64(x as f64 / std::f64::consts::SQRT_2));
            worst = worst.max((gelu(x) as f64 - exact).abs());
            x += 0.001;
        }
        println!("max |gelu - exact| on [-10, 10]: {worst:.2e}");
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let e = x as f64;
            worst = worst.max(((exp(x) as f64) - e.exp()).abs() / e.exp());
            x += 0.01;
        }
        assert!(worst < 5e-7, "{worst}");
    }

    #[test]
    fn softmax_matches_f64_within_1e6() {
        for len in [1, 7, 16, 197, 200] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.9).collect();
            let mut v = row.clone();
            softmax_rows(&mut v, len);
            let max = row.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x as f64));
            let sum: f64 = row.iter().map(|x| (*x as f64 - max).exp()).sum();
            for (x, p) in row.iter().zip(&v) {
                let exact = (*x as f64 - max).exp() / sum;
                assert!((*p as f64 - exact).abs() <= 1e-6 * exact.max(1e-3), "len {len}: {p} vs {exact}");
            }
        }
    }

    #[test]
    fn add_layer_norm_matches_f64_and_the_portable_path() {
        for (rows, d) in [(1usize, 192usize), (7, 768), (197, 384), (3, 100)] {
            let x: Vec<f32> = (0..rows * d).map(|i| ((i * 7919 % 1000) as f32 / 100.0 - 5.0) + 30.0).collect();
            let y: Vec<f32> = (0..rows * d).map(|i| (i * 104729 % 997) as f32 / 500.0 - 1.0).collect();
            let gamma: Vec<f32> = (0..d).map(|i| 0.5 + (i % 13) as f32 / 10.0).collect();
            let beta: Vec<f32> = (0..d).map(|i| (i % 7) as f32 / 10.0 - 0.3).collect();
            let mut out = [vec![0f32; rows * d], vec![0f32; rows * d], vec![0f32; rows * d], vec![0f32; rows * d]];
            let [s, n, s_ref, n_ref] = &mut out;
            add_layer_norm(false, &x, Some(&y), &gamma, &beta, 1e-6, s, n);
            add_layer_norm(true, &x, Some(&y), &gamma, &beta, 1e-6, s_ref, n_ref);
            assert!(n.iter().zip(n_ref.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "SIMD vs portable");
            assert_eq!(s, s_ref);
            for r in 0..rows {
                // The f32 sum is an output of its own; the reference normalises exactly that.
                let row: Vec<f64> = (0..d).map(|j| s[r * d + j] as f64).collect();
                let mean = row.iter().sum::<f64>() / d as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
                for j in 0..d {
                    let exact = (row[j] - mean) / (var + 1e-6).sqrt() * gamma[j] as f64 + beta[j] as f64;
                    let got = n[r * d + j] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                        "{rows}x{d} [{r},{j}]: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_paths_agree_within_1e6() {
        for len in [1, 5, 16, 197, 208] {
            let row: Vec<f32> = (0..3 * len).map(|i| ((i * 7919 % 61) as f32 - 30.0) * 0.37).collect();
            let mut fast = row.clone();
            softmax_rows(&mut fast, len);
            let mut reference = row.clone();
            softmax_loop(&mut reference, len);
            for (a, b) in fast.iter().zip(&reference) {
                assert!((a - b).abs() <= 1e-6 * b.max(1e-3), "len {len}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn vectorised_and_scalar_gelu_agree_bitwise() {
        let mut v: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5000.0) / 700.0).collect();
        let scalar: Vec<f32> = v.iter().map(|x| gelu(*x)).collect();
        gelu_slice(&mut v);
        assert!(v.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
