//! int8 GEMM for dynamically quantized linear layers:
//! `y[i, n] = (Σ_k qa[i, k] · qw[n, k]) · sa[i] · sw[n] + bias[n]`, optionally followed by GELU.
//!
//! Scheme (torch `quantize_dynamic` with per-channel weights, but with per-row rather than
//! per-tensor activation scales, which loses less and costs nothing extra here):
//! - weights: symmetric int8 per output channel, `sw = max|w| / 127`, values in [-127, 127];
//! - activations: symmetric int8 per row (token), `sa = max|x| / 127`, quantized on every call;
//! - int32 accumulation (exact: |Σ| <= 127·127·k fits i32 for k < 133 000), fp32 epilogue.
//!
//! Rounding is half-to-even, as `torch.quantize_per_*` does.

use std::sync::Arc;

use rayon::prelude::*;

use super::{Isa, gelu_erf};

/// Weight bytes: owned, or a range of a memory-mapped export file (loaded without copying).
#[derive(Clone)]
pub enum Bytes {
    Owned(Arc<Vec<i8>>),
    Mapped { map: Arc<memmap2::Mmap>, offset: usize, len: usize },
}

impl Bytes {
    pub fn as_slice(&self) -> &[i8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, offset, len } => {
                let b = &map[*offset..*offset + *len];
                // SAFETY: i8 and u8 have the same size and alignment.
                unsafe { std::slice::from_raw_parts(b.as_ptr() as *const i8, b.len()) }
            }
        }
    }
    pub fn is_mapped(&self) -> bool {
        matches!(self, Bytes::Mapped { .. })
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} {})", if self.is_mapped() { "mapped" } else { "owned" }, self.as_slice().len())
    }
}

/// Quantized weights of one layer in the kernel's layout: row-major `[n, k]` int8, one scale
/// per output channel, and each row's sum (used by unsigned-activation SIMD paths).
#[derive(Clone, Debug)]
pub struct PackedWeights {
    pub n: usize,
    pub k: usize,
    pub data: Bytes,
    pub scales: Vec<f32>,
    pub row_sums: Vec<i32>,
    /// The AVX-512 VNNI block layout, packed on first use by that path.
    #[cfg(target_arch = "x86_64")]
    pub vnni: Arc<std::sync::OnceLock<super::vnni::VnniWeights>>,
}

/// The one layout the portable kernel reads; recorded in export files so a file packed for
/// another layout is repacked, not misread.
pub const LAYOUT: &str = "rowmajor-i8-v1";

/// Round half to even, as `f32::round_ties_even`, for |v| < 2^22. Adding and subtracting
/// 1.5·2^23 makes the FPU round at the units place in its default (ties-to-even) mode; unlike
/// `round_ties_even`, which compiles to a libm `rintf` call on baseline x86-64 (no SSE4.1), this
/// vectorises — it was a quarter of the int8 forward's time.
#[inline(always)]
fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

#[inline(always)]
pub(crate) fn quantize_one(x: f32, inv_scale: f32) -> i8 {
    // Clamp first: the magic-number rounding is exact only for small magnitudes.
    round_half_even((x * inv_scale).clamp(-127.0, 127.0)) as i8
}

impl PackedWeights {
    /// Quantizes f32 weights `[n, k]` (row-major, one row per output channel).
    pub fn quantize(w: &[f32], n: usize, k: usize) -> PackedWeights {
        assert_eq!(w.len(), n * k);
        let mut q = vec![0i8; n * k];
        let mut scales = vec![0f32; n];
        q.par_chunks_mut(k).zip(scales.par_iter_mut()).zip(w.par_chunks(k)).for_each(|((qr, s), wr)| {
            let amax = wr.iter().fold(0f32, |m, v| m.max(v.abs()));
            *s = amax / 127.0;
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            for (o, &v) in qr.iter_mut().zip(wr) {
                *o = quantize_one(v, inv);
            }
        });
        Self::from_parts(n, k, Bytes::Owned(Arc::new(q)), scales)
    }

    /// From already quantized parts (an export file), computing the row sums.
    pub fn from_parts(n: usize, k: usize, data: Bytes, scales: Vec<f32>) -> PackedWeights {
        let row_sums = data.as_slice().chunks(k).map(|r| r.iter().map(|&v| v as i32).sum()).collect();
        PackedWeights {
            n,
            k,
            data,
            scales,
            row_sums,
            #[cfg(target_arch = "x86_64")]
            vnni: Default::default(),
        }
    }

    /// Dequantized weights `[n, k]` (for error analysis and the CUDA path).
    pub fn dequantize(&self) -> Vec<f32> {
        let d = self.data.as_slice();
        (0..self.n * self.k).map(|i| d[i] as f32 * self.scales[i / self.k]).collect()
    }

    pub fn bytes_in_memory(&self) -> usize {
        self.n * self.k + 4 * self.scales.len() + 4 * self.row_sums.len()
    }
}

/// What happens to each output after dequantization and bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// GELU (erf) fused into the output loop: saves a full pass over the fc1 output.
    Gelu,
}

/// Rows quantized for one call.
#[derive(Clone, Debug)]
pub struct QuantizedRows {
    pub m: usize,
    pub k: usize,
    pub data: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Per-row symmetric int8 quantization of activations `[m, k]`.
pub fn quantize_rows(x: &[f32], m: usize, k: usize) -> QuantizedRows {
    assert_eq!(x.len(), m * k);
    let mut data = vec![0u8; m * k];
    let mut scales = vec![0f32; m];
    data.par_chunks_mut(k.max(1)).zip(scales.par_iter_mut()).zip(x.par_chunks(k.max(1))).for_each(|((q, s), xr)| {
        *s = quantize_row_into(xr, q);
    });
    // i8 and u8 have the same layout; the bytes above are two's-complement i8 codes.
    let data = data.into_iter().map(|b| b as i8).collect();
    QuantizedRows { m, k, data, scales }
}

/// Quantizes one row into `out` as i8 codes (stored as bytes); returns the row's scale. The
/// definition of activation rounding every SIMD quantizer reproduces (and is tested against).
#[inline(always)]
pub fn quantize_row_into(x: &[f32], out: &mut [u8]) -> f32 {
    let amax = abs_max(x);
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, inv) as u8;
    }
    amax / 127.0
}

/// max |x| with 16 independent lanes, so it vectorises (a single running `max` is a serial
/// dependency the compiler may not reorder).
#[inline(always)]
pub fn abs_max(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0f32, |m, v| m.max(v.abs()));
    lanes.iter().fold(tail, |m, v| m.max(*v))
}

/// A whole int8 linear layer on f32 input `x` `[m, k]` -> `[m, n]`: activations are quantized
/// per row and multiplied on the chosen path. The output is allocated here and, on the SIMD
/// paths, not zero-filled first (the kernel writes every element).
pub fn linear(isa: Isa, x: &[f32], m: usize, w: &PackedWeights, bias: Option<&[f32]>, epilogue: Epilogue) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k);
    #[cfg(target_arch = "x86_64")]
    {
        use super::vnni::{self, Avx2, Avx512Vnni, AvxVnni, Kernel, VnniWeights};
        let vw = || w.vnni.get_or_init(|| VnniWeights::pack(w));
        match isa {
            Isa::Avx512Vnni if Avx512Vnni::available() => {
                return vnni::linear::<Avx512Vnni>(x, m, w, vw(), bias, epilogue);
            }
            Isa::AvxVnni if AvxVnni::available() => return vnni::linear::<AvxVnni>(x, m, w, vw(), bias, epilogue),
            Isa::Avx2 if Avx2::available() => return vnni::linear::<Avx2>(x, m, w, vw(), bias, epilogue),
            _ => {}
        }
    }
    let mut out = vec![0f32; m * w.n];
    gemm(Isa::Portable, &quantize_rows(x, m, w.k), w, bias, epilogue, &mut out);
    out
}

/// `out[m, n]` = dequant(a · wᵀ) + bias, then the epilogue.
pub fn gemm(isa: Isa, a: &QuantizedRows, w: &PackedWeights, bias: Option<&[f32]>, epilogue: Epilogue, out: &mut [f32]) {
    assert_eq!(a.k, w.k, "inner dimensions differ");
    assert_eq!(out.len(), a.m * w.n);
    if let Some(b) = bias {
        assert_eq!(b.len(), w.n);
    }
    #[cfg(target_arch = "x86_64")]
    {
        use super::vnni::{self, Avx2, Avx512Vnni, AvxVnni, Kernel, VnniWeights};
        let vw = || w.vnni.get_or_init(|| VnniWeights::pack(w));
        match isa {
            Isa::Avx512Vnni if Avx512Vnni::available() => {
                return vnni::gemm::<Avx512Vnni>(a, w, vw(), bias, epilogue, out);
            }
            Isa::AvxVnni if AvxVnni::available() => return vnni::gemm::<AvxVnni>(a, w, vw(), bias, epilogue, out),
            Isa::Avx2 if Avx2::available() => return vnni::gemm::<Avx2>(a, w, vw(), bias, epilogue, out),
            _ => {}
        }
    }
    portable(a, w, bias, epilogue, out)
}

/// The dequantize + bias (+ GELU) epilogue of one output row segment, shared by every path so
/// they agree to the bit. `acc` holds Σ (a+128)·w when `row_sums` corrects the shift, or Σ a·w
/// with `row_sums` empty.
#[inline(always)]
pub fn epilogue_row(
    acc: &[i32],
    row_sums: &[i32],
    sa: f32,
    sw: &[f32],
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let n = out.len();
    let (acc, sw) = (&acc[..n], &sw[..n]);
    // Straight loops without per-element branches, so each one vectorises.
    if row_sums.is_empty() {
        for j in 0..n {
            out[j] = acc[j] as f32 * (sa * sw[j]);
        }
    } else {
        let row_sums = &row_sums[..n];
        for j in 0..n {
            out[j] = (acc[j] - 128 * row_sums[j]) as f32 * (sa * sw[j]);
        }
    }
    if let Some(b) = bias {
        for (o, b) in out.iter_mut().zip(&b[..n]) {
            *o += b;
        }
    }
    if epilogue == Epilogue::Gelu {
        for o in out.iter_mut() {
            *o = gelu_erf(*o);
        }
    }
}

/// The reference: exact integer dot products, fp32 epilogue, rows spread over rayon's pool.
fn portable(a: &QuantizedRows, w: &PackedWeights, bias: Option<&[f32]>, epilogue: Epilogue, out: &mut [f32]) {
    let (k, n) = (a.k, w.n);
    let wd = w.data.as_slice();
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let ar = &a.data[i * k..(i + 1) * k];
        let acc: Vec<i32> =
            (0..n).map(|j| ar.iter().zip(&wd[j * k..(j + 1) * k]).map(|(&x, &y)| x as i32 * y as i32).sum()).collect();
        epilogue_row(&acc, &[], a.scales[i], &w.scales, bias, epilogue, row);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_is_symmetric_per_row_and_rounds_half_to_even() {
        // max 127 -> scale 1: values land exactly on .5 and must round to even.
        let x = [127.0, 0.5, 1.5, 2.5, -2.5, -127.0];
        let q = quantize_rows(&x, 1, 6);
        assert_eq!(q.scales, vec![1.0]);
        assert_eq!(q.data, vec![127, 0, 2, 2, -2, -127]);
        let zero = quantize_rows(&[0.0; 4], 1, 4);
        assert_eq!(zero.data, vec![0; 4]);
    }

    #[test]
    fn gemm_matches_a_hand_computed_product() {
        // a = [[127, 0], [0, -127]] (scale 1 per row), w = [[1, 0], [0, 1], [1, 1]] (scale 1/127).
        let a = quantize_rows(&[127.0, 0.0, 0.0, -127.0], 2, 2);
        let w = PackedWeights::quantize(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2);
        let mut out = vec![0f32; 6];
        gemm(Isa::Portable, &a, &w, Some(&[0.5, 0.0, -1.0]), Epilogue::None, &mut out);
        assert_eq!(out, vec![127.5, 0.0, 126.0, 0.5, -127.0, -128.0]);
        assert_eq!(w.row_sums, vec![127, 127, 254]);
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::round_half_even;

    #[test]
    fn magic_rounding_equals_round_ties_even_on_the_quantized_range() {
        // Every quarter step in [-128, 128] and a dense sweep of arbitrary values.
        for i in -512..=512 {
            let v = i as f32 / 4.0;
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
        let mut x = -127.9f32;
        while x < 127.9 {
            assert_eq!(round_half_even(x), x.round_ties_even(), "{x}");
            x += 0.0137;
        }
    }
}
