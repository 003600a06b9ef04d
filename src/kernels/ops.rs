//! Elementwise math written so the compiler can vectorise it: no libm calls, no branches in the
//! hot expressions. The same source serves every path (compiled once for the baseline and once
//! with AVX-512 enabled), and Rust never fuses `a * b + c` on its own, so both compilations give
//! the same bits.

/// e^x with relative error ~2e-7 (Cephes `expf`: range reduction by ln 2, degree-5 polynomial,
/// exponent set through the bits). Clamped to the f32 range.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + MAGIC) - MAGIC; // round to nearest
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), with the sign restored.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4f32;
    p = p * t - 1.453_152_1;
    p = p * t + 1.421_413_8;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
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
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        unsafe { gelu_slice_avx512(v) };
        return;
    }
    v.iter_mut().for_each(|x| *x = gelu(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_slice_avx512(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = gelu(*x));
}

/// Softmax of one row, in place: `e^(x - max) / Σ`. Max and sum use 16 independent lanes so
/// the loops vectorise; `exp` is ours (candle's softmax calls libm's scalar `expf`).
#[inline(always)]
pub fn softmax_row(v: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = l.max(*x);
        }
    }
    let max = lanes.iter().chain(chunks.remainder()).fold(f32::NEG_INFINITY, |m, x| m.max(*x));
    let mut sums = [0f32; 16];
    let mut chunks = v.chunks_exact_mut(16);
    for c in &mut chunks {
        for (s, x) in sums.iter_mut().zip(c) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / (sums.iter().sum::<f32>() + sum);
    v.iter_mut().for_each(|x| *x *= inv);
}

/// [`softmax_row`] on every row of `v` (`row_len` wide), vectorised where the CPU allows.
pub fn softmax_rows(v: &mut [f32], row_len: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        unsafe { softmax_rows_avx512(v, row_len) };
        return;
    }
    v.chunks_mut(row_len.max(1)).for_each(softmax_row);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows_avx512(v: &mut [f32], row_len: usize) {
    v.chunks_mut(row_len.max(1)).for_each(softmax_row);
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
    fn vectorised_and_scalar_gelu_agree_bitwise() {
        let mut v: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5000.0) / 700.0).collect();
        let scalar: Vec<f32> = v.iter().map(|x| gelu(*x)).collect();
        gelu_slice(&mut v);
        assert!(v.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
