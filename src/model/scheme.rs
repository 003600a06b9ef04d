//! How one linear layer is quantized: weight and activation granularity, activation bits and
//! zero point. The default is ours (per-channel weights, per-row symmetric 8-bit activations);
//! the `torch` preset reproduces PyTorch's `quantize_dynamic` on the x86 engine (fbgemm), so a
//! user can see what the tutorial recipe loses and where the loss comes from.
//!
//! Every scheme runs on the same int8 kernels ([`crate::kernels::gemm_i8`]): they take i8
//! activation codes with one scale per row and i8 weights with one scale per output channel.
//! Per-tensor scales are equal scales; asymmetric codes are shifted so that they fit i8 and the
//! shift is corrected with the weights' row sums before the integer sum becomes a float.
//!
//! torch's numerics, read from its source and checked element by element against
//! `torch.ops.quantized.linear_dynamic` (`tools/make_fixtures.py`):
//! - weights (`default_weight_observer`: `MinMaxObserver`, qint8, per-tensor symmetric):
//!   `scale = max(max|w| / 127.5, f32::EPSILON)` in f32, codes `clamp(rint(w · (1/scale)),
//!   -128, 127)` (fbgemm's `Quantize` multiplies by the reciprocal), so -128 occurs;
//! - activations (`linear_dynamic(reduce_range=True)`, fbgemm's `ChooseQuantizationParams`):
//!   over the whole input tensor, `[min(x,0), max(x,0)]` onto `0..=127`, the scale in f64 then
//!   f32, the zero point from whichever end has the smaller error, `rint`; codes
//!   `clamp(rint(x · (1/scale)) + zp, 0, 255)`;
//! - output: `fma(f32(Σ (q - zp)·w), scale_a · scale_w, bias)` (fbgemm's AVX2 epilogue is one
//!   fused multiply-add; a separate multiply and add differed in the last bit in a quarter of
//!   the outputs).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Result, bail};
use rayon::prelude::*;

use crate::kernels::Isa;
use crate::kernels::gemm_i8::{self, Bytes, Epilogue, PackedWeights, QuantizedRows};

/// One scale per output channel, or one per weight tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightScales {
    PerChannel,
    PerTensor,
}

/// One activation scale per row (token), or one for the whole input of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActivationScales {
    PerRow,
    PerTensor,
}

/// Symmetric activations (`zero point 0`, codes `-q..=q`) or asymmetric (unsigned codes over
/// `[min(x,0), max(x,0)]` with a zero point, as torch's `quint8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZeroPoint {
    Symmetric,
    Asymmetric,
}

/// How one linear layer is quantized. `bits` is the activations' width: 8, or 7 (torch's
/// `reduce_range`, which fbgemm's AVX2 `vpmaddubsw` needs to avoid i16 saturation); weights are
/// always int8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scheme {
    pub weights: WeightScales,
    pub activations: ActivationScales,
    pub bits: u8,
    pub zero_point: ZeroPoint,
}

impl Default for Scheme {
    fn default() -> Self {
        Scheme::DEFAULT
    }
}

/// What `--scheme` accepts, for error messages and `--help`.
pub const SCHEME_SYNTAX: &str = "`default`, `torch`, or a comma-separated list of weights=per-channel|per-tensor, \
     acts=per-row|per-tensor, bits=8|7, acts=sym|asym";

/// The schemes a command makes: each given one once, in the order given; the default when none
/// is (`--scheme torch --scheme TORCH` makes one variant, not two).
pub fn distinct_or_default(schemes: &[Scheme]) -> Vec<Scheme> {
    let mut distinct: Vec<Scheme> = Vec::new();
    for s in schemes {
        if !distinct.contains(s) {
            distinct.push(*s);
        }
    }
    if distinct.is_empty() { vec![Scheme::DEFAULT] } else { distinct }
}

impl Scheme {
    /// Ours: per-channel weights, per-row symmetric 8-bit activations.
    pub const DEFAULT: Scheme = Scheme {
        weights: WeightScales::PerChannel,
        activations: ActivationScales::PerRow,
        bits: 8,
        zero_point: ZeroPoint::Symmetric,
    };
    /// PyTorch `quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)` on the x86 engine.
    pub const TORCH: Scheme = Scheme {
        weights: WeightScales::PerTensor,
        activations: ActivationScales::PerTensor,
        bits: 7,
        zero_point: ZeroPoint::Asymmetric,
    };

    pub fn is_default(&self) -> bool {
        *self == Scheme::DEFAULT
    }

    /// Whether activations are quantized as the default kernel path does (per row, symmetric,
    /// 8 bits): then the layer runs on that path whatever its weights' scales.
    pub fn default_activations(&self) -> bool {
        self.activations == ActivationScales::PerRow && self.bits == 8 && self.zero_point == ZeroPoint::Symmetric
    }

    /// `default`, `torch`, or the full list (`weights=per-tensor,acts=per-row,bits=8,acts=asym`),
    /// which [`Scheme::from_str`] reads back.
    pub fn name(&self) -> String {
        match *self {
            Scheme::DEFAULT => "default".into(),
            Scheme::TORCH => "torch".into(),
            s => format!(
                "weights={},acts={},bits={},acts={}",
                match s.weights {
                    WeightScales::PerChannel => "per-channel",
                    WeightScales::PerTensor => "per-tensor",
                },
                match s.activations {
                    ActivationScales::PerRow => "per-row",
                    ActivationScales::PerTensor => "per-tensor",
                },
                s.bits,
                match s.zero_point {
                    ZeroPoint::Symmetric => "sym",
                    ZeroPoint::Asymmetric => "asym",
                }
            ),
        }
    }

    /// Quantizes fp32 weights `[n, k]`. `tensors`: how many checkpoint tensors the rows came
    /// from (equal blocks of rows; 3 for a transformers q/k/v projection fused into one layer),
    /// each with its own scale when weights are per tensor.
    pub fn quantize_weights(&self, w: &[f32], n: usize, k: usize, tensors: usize) -> PackedWeights {
        match self.weights {
            WeightScales::PerChannel => PackedWeights::quantize(w, n, k),
            WeightScales::PerTensor => {
                assert!(tensors > 0 && n.is_multiple_of(tensors), "{n} rows do not split into {tensors} tensors");
                let rows = n / tensors;
                let mut codes = vec![0i8; n * k];
                let mut scales = vec![0f32; n];
                for ((block, q), s) in w.chunks(rows * k).zip(codes.chunks_mut(rows * k)).zip(scales.chunks_mut(rows)) {
                    let scale = torch_weight_scale(block);
                    let inv = 1.0 / scale;
                    q.par_iter_mut().zip(block.par_iter()).for_each(|(c, &v)| {
                        *c = (v * inv).round_ties_even().clamp(-128.0, 127.0) as i8;
                    });
                    s.fill(scale);
                }
                PackedWeights::from_parts(n, k, Bytes::Owned(Arc::new(codes)), scales)
            }
        }
    }

    /// Activations `[m, k]` -> codes for the kernel (scales all 1: the kernel then returns the
    /// exact integer sums as floats) and, per row, the scale and the zero-point correction.
    pub fn quantize_activations(&self, x: &[f32], m: usize, k: usize) -> Activations {
        assert_eq!(x.len(), m * k);
        let k1 = k.max(1);
        let params: Vec<RowParams> = match self.activations {
            ActivationScales::PerTensor => vec![self.params(min_max(x)); m],
            ActivationScales::PerRow => x.par_chunks(k1).map(|r| self.params(min_max(r))).collect(),
        };
        let mut data = vec![0i8; m * k];
        data.par_chunks_mut(k1)
            .zip(x.par_chunks(k1))
            .zip(params.par_iter())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|((q, r), p)| simd::codes(p, r, q));
        Activations { rows: QuantizedRows { m, k, data, scales: vec![1.0; m] }, params }
    }

    /// The scale and code mapping of one group of values with range `(min, max)`.
    fn params(&self, (min, max): (f32, f32)) -> RowParams {
        match self.zero_point {
            ZeroPoint::Symmetric => {
                let qmax = if self.bits == 7 { 63.0 } else { 127.0 };
                let amax = max.max(-min);
                // As the default path: codes rint(x · qmax/amax), scale amax/qmax.
                let inv = if amax > 0.0 { qmax / amax } else { 0.0 };
                RowParams { scale: amax / qmax, inv, zero_point: 0, base: 0, qmin: -qmax as i32, qmax: qmax as i32 }
            }
            ZeroPoint::Asymmetric => {
                let qmax = if self.bits == 7 { 127 } else { 255 };
                let (scale, zero_point) = choose_qparams(min, max, qmax);
                // Codes are stored as q - base in i8: base = zp for 7 bits (q - zp is within
                // ±127), 128 for 8 bits (corrected by (128 - zp)·row_sum afterwards).
                let base = if self.bits == 7 { zero_point } else { 128 };
                RowParams { scale, inv: 1.0 / scale, zero_point, base, qmin: 0, qmax: 255 }
            }
        }
    }
}

/// torch's per-tensor symmetric qint8 weight scale (`MinMaxObserver._calculate_qparams`).
fn torch_weight_scale(w: &[f32]) -> f32 {
    let (min, max) = min_max(w);
    let amax = max.max(-min);
    (amax / 127.5).max(f32::EPSILON)
}

/// `(min(x, 0), max(x, 0))`, in 16 independent lanes so that it vectorises.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
        }
    }
    let tail = chunks.remainder().iter().fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
    (lo.iter().fold(tail.0, |a, &b| a.min(b)), hi.iter().fold(tail.1, |a, &b| a.max(b)))
}

/// Rows per parallel task of the passes here: a hand-off costs microseconds, a row of ViT-Ti
/// well under one.
const ROWS_PER_TASK: usize = 16;

/// The element loops, compiled twice: for x86-64's baseline, where `round_ties_even` and
/// `mul_add` are libm calls (glibc's `fmaf` is exact, and slow per element), and with AVX2 + FMA
/// (`vroundps`, `vfmadd`: the same results, vectorised), chosen at run time.
mod simd {
    use super::RowParams;

    #[inline(always)]
    pub(super) fn codes_generic(p: &RowParams, x: &[f32], out: &mut [i8]) {
        for (c, &v) in out.iter_mut().zip(x) {
            *c = p.code(v);
        }
    }

    /// `out[j] = fma(raw_j, s_a·s_w[j], bias[j])`, `raw_j` the kernel's sum plus `correction ·
    /// row_sums[j]`.
    #[inline(always)]
    pub(super) fn epilogue_generic(
        row: &mut [f32],
        sa: f32,
        correction: i32,
        sw: &[f32],
        row_sums: &[i32],
        bias: Option<&[f32]>,
    ) {
        let n = row.len();
        let (sw, row_sums) = (&sw[..n], &row_sums[..n]);
        if correction != 0 {
            for (o, &r) in row.iter_mut().zip(row_sums) {
                *o = (*o as i64 + correction as i64 * r as i64) as f32;
            }
        }
        match bias {
            Some(b) => {
                let b = &b[..n];
                for j in 0..n {
                    row[j] = row[j].mul_add(sa * sw[j], b[j]);
                }
            }
            None => {
                for j in 0..n {
                    row[j] *= sa * sw[j];
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn codes_avx2(p: &RowParams, x: &[f32], out: &mut [i8]) {
        codes_generic(p, x, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn epilogue_avx2(row: &mut [f32], sa: f32, correction: i32, sw: &[f32], row_sums: &[i32], bias: Option<&[f32]>) {
        epilogue_generic(row, sa, correction, sw, row_sums, bias)
    }

    fn has_avx2_fma() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    pub fn codes(p: &RowParams, x: &[f32], out: &mut [i8]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { codes_avx2(p, x, out) };
        }
        codes_generic(p, x, out)
    }

    pub fn epilogue(row: &mut [f32], sa: f32, correction: i32, sw: &[f32], row_sums: &[i32], bias: Option<&[f32]>) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: as above.
            return unsafe { epilogue_avx2(row, sa, correction, sw, row_sums, bias) };
        }
        epilogue_generic(row, sa, correction, sw, row_sums, bias)
    }
}

/// fbgemm's (and ATen's) `ChooseQuantizationParams` for `qmin = 0`, no sparsity preservation,
/// no power-of-two scale: `(scale, zero_point)`.
fn choose_qparams(min: f32, max: f32, qmax: i32) -> (f32, i32) {
    const SMALL_SCALE_THRESHOLD: f32 = 6.1e-5;
    let (mut min, mut max) = (min.min(0.0), max.max(0.0));
    let mut scale = (max as f64 - min as f64) / qmax as f64;
    if scale as f32 == 0.0 || (1.0 / scale as f32).is_infinite() {
        scale = 0.1;
    }
    if scale < SMALL_SCALE_THRESHOLD as f64 {
        let org = scale as f32;
        scale = SMALL_SCALE_THRESHOLD as f64;
        if min == 0.0 {
            max = SMALL_SCALE_THRESHOLD * qmax as f32;
        } else if max == 0.0 {
            min = -SMALL_SCALE_THRESHOLD * qmax as f32;
        } else {
            let amplifier = SMALL_SCALE_THRESHOLD / org;
            min *= amplifier;
            max *= amplifier;
        }
    }
    let from_min = -(min as f64) / scale;
    let from_max = qmax as f64 - max as f64 / scale;
    let err_min = -(min as f64 / scale).abs();
    let err_max = qmax as f64 - (max as f64 / scale).abs();
    let initial = if err_min < err_max { from_min } else { from_max };
    let zero_point = if initial < 0.0 {
        0
    } else if initial > qmax as f64 {
        qmax
    } else {
        initial.round_ties_even() as i32
    };
    (scale as f32, zero_point)
}

/// How one row's values become codes.
#[derive(Clone, Copy, Debug)]
pub struct RowParams {
    pub scale: f32,
    inv: f32,
    pub zero_point: i32,
    /// Stored code = q - base.
    base: i32,
    qmin: i32,
    qmax: i32,
}

impl RowParams {
    #[inline(always)]
    fn code(&self, v: f32) -> i8 {
        let q = ((v * self.inv).round_ties_even() as i32 + self.zero_point).clamp(self.qmin, self.qmax);
        // q - zp is within ±127 for 7 bits and q - 128 within i8 for 8 bits; clamp anyway.
        (q - self.base).clamp(-128, 127) as i8
    }

    /// What the stored codes miss of Σ (q - zp)·w, per unit of the weights' row sum.
    fn correction(&self) -> i32 {
        self.base - self.zero_point
    }

    /// The value a code stands for.
    fn dequantize(&self, c: i8) -> f32 {
        (c as i32 + self.base - self.zero_point) as f32 * self.scale
    }
}

/// Quantized activations: codes with unit scales, and each row's real parameters.
pub struct Activations {
    pub rows: QuantizedRows,
    pub params: Vec<RowParams>,
}

/// `x` `[m, k]` through a layer quantized with `scheme` (activations not the default path's):
/// codes by the scheme, the integer sums by the kernel, then `fma(sum, s_a·s_w, bias)` and
/// the epilogue here.
pub fn linear(
    scheme: &Scheme,
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let a = scheme.quantize_activations(x, m, w.k);
    // The same weights (codes and packed layouts are shared) with unit scales: the kernel's
    // output is then f32(Σ code·w), exact below 2^24 and rounded as fbgemm's conversion.
    let unit = PackedWeights { scales: vec![1.0; w.n], ..w.clone() };
    let mut out = gemm_i8::gemm_to_vec(isa, &a.rows, &unit, None, Epilogue::None);
    out.par_chunks_mut(w.n.max(1)).zip(a.params.par_iter()).with_min_len(ROWS_PER_TASK).for_each(|(row, p)| {
        simd::epilogue(row, p.scale, p.correction(), &w.scales, &w.row_sums, bias);
        if epilogue == Epilogue::Gelu {
            // The vectorised GELU the unfused forward applies (int8's fc1 then equals mobile's).
            crate::kernels::ops::gelu_slice(row);
        }
    });
    out
}

/// Quantize-dequantize of activations `[m, k]` as [`linear`] quantizes them (the explanation's
/// fake-quantized forward).
pub fn fake_quantize(scheme: &Scheme, x: &[f32], m: usize, k: usize) -> Vec<f32> {
    if scheme.default_activations() {
        let q = gemm_i8::quantize_rows(x, m, k);
        return q.data.iter().enumerate().map(|(i, &c)| c as f32 * q.scales[i / k.max(1)]).collect();
    }
    let a = scheme.quantize_activations(x, m, k);
    a.rows.data.iter().enumerate().map(|(i, &c)| a.params[i / k.max(1)].dequantize(c)).collect()
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Scheme {
    type Err = anyhow::Error;
    /// `default`, `torch`, or `key=value` items over the default (`acts` takes a granularity
    /// or a zero-point mode, so it may appear twice).
    fn from_str(s: &str) -> Result<Scheme> {
        let text = s.trim().to_ascii_lowercase();
        match text.as_str() {
            "default" => return Ok(Scheme::DEFAULT),
            "torch" => return Ok(Scheme::TORCH),
            "" => bail!("empty quantization scheme (expected {SCHEME_SYNTAX})"),
            _ => {}
        }
        let mut scheme = Scheme::DEFAULT;
        for item in text.split(',').map(str::trim) {
            let Some((key, value)) = item.split_once('=') else {
                bail!("unknown quantization scheme item `{item}` (expected {SCHEME_SYNTAX})");
            };
            match (key.trim(), value.trim()) {
                ("weights" | "w", "per-channel") => scheme.weights = WeightScales::PerChannel,
                ("weights" | "w", "per-tensor") => scheme.weights = WeightScales::PerTensor,
                ("acts" | "a", "per-row") => scheme.activations = ActivationScales::PerRow,
                ("acts" | "a", "per-tensor") => scheme.activations = ActivationScales::PerTensor,
                ("acts" | "a", "sym" | "symmetric") => scheme.zero_point = ZeroPoint::Symmetric,
                ("acts" | "a", "asym" | "asymmetric") => scheme.zero_point = ZeroPoint::Asymmetric,
                ("bits", "8") => scheme.bits = 8,
                ("bits", "7") => scheme.bits = 7,
                _ => bail!("unknown quantization scheme item `{item}` (expected {SCHEME_SYNTAX})"),
            }
        }
        Ok(scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_presets_are_recognised() {
        for s in ["default", "torch", "weights=per-tensor", "acts=per-tensor,bits=7", "acts=asym", "bits=7,acts=sym"] {
            let scheme: Scheme = s.parse().unwrap();
            assert_eq!(scheme.name().parse::<Scheme>().unwrap(), scheme, "{s}");
        }
        let torch: Scheme = "weights=per-tensor,acts=per-tensor,bits=7,acts=asym".parse().unwrap();
        assert_eq!(torch, Scheme::TORCH);
        assert_eq!(torch.name(), "torch");
        assert_eq!("weights=per-channel".parse::<Scheme>().unwrap().name(), "default");
        for bad in ["", "fast", "bits=4", "weights=per-row", "acts"] {
            let err = bad.parse::<Scheme>().unwrap_err().to_string();
            assert!(err.contains("torch") && err.contains("per-tensor") && !err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn torch_activation_parameters_match_fbgemm_on_hand_cases() {
        // [-1, 3] onto 0..=127: scale 4/127; zero point 127 - 3·127/4 = 31.75 -> 32.
        let (s, zp) = choose_qparams(-1.0, 3.0, 127);
        assert_eq!((s, zp), ((4.0f64 / 127.0) as f32, 32));
        // All-positive input: the range is extended to 0, zero point 0.
        assert_eq!(choose_qparams(0.5, 2.0, 127).1, 0);
        // All zero: scale 0.1 (torch's fallback), zero point 0.
        assert_eq!(choose_qparams(0.0, 0.0, 127), (0.1, 0));
        // Codes of asymmetric 7-bit are q - zp and stay within ±127.
        let x = [-1.0f32, 3.0, 0.0, 1.0];
        let a = Scheme::TORCH.quantize_activations(&x, 1, 4);
        assert_eq!(a.rows.data, vec![-32, 95, 0, 32]);
        assert_eq!(a.params[0].correction(), 0);
    }

    #[test]
    fn both_compilations_of_the_element_loops_agree_to_the_bit() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
        let sw: Vec<f32> = (0..1000).map(|i| 1e-3 + (i % 17) as f32 * 1e-4).collect();
        let sums: Vec<i32> = (0..1000).map(|i: i32| (i % 301) - 150).collect();
        for scheme in [Scheme::TORCH, "bits=7".parse().unwrap(), "acts=asym".parse().unwrap()] {
            let p = scheme.params(min_max(&x));
            let (mut a, mut b) = (vec![0i8; x.len()], vec![0i8; x.len()]);
            simd::codes(&p, &x, &mut a);
            simd::codes_generic(&p, &x, &mut b);
            assert_eq!(a, b, "{scheme}");
            for bias in [Some(&x[..]), None] {
                let (mut a, mut b) = (x.clone(), x.clone());
                simd::epilogue(&mut a, 0.37, p.correction(), &sw, &sums, bias);
                simd::epilogue_generic(&mut b, 0.37, p.correction(), &sw, &sums, bias);
                assert!(a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits()), "{scheme}");
            }
        }
    }

    #[test]
    fn torch_weights_use_the_half_step_scale_and_reach_minus_128() {
        let w = [-2.55f32, 1.0, 0.0, 2.0];
        let p = Scheme::TORCH.quantize_weights(&w, 2, 2, 1);
        assert_eq!(p.scales, vec![2.55 / 127.5; 2]);
        assert_eq!(p.data.as_slice()[0], -128);
        // Per tensor over blocks: each block has its own scale.
        let p = Scheme::TORCH.quantize_weights(&w, 2, 2, 2);
        assert_eq!(p.scales, vec![2.55 / 127.5, 2.0 / 127.5]);
    }
}
