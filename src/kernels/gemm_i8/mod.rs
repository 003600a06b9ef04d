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
//!
//! This module owns what every path shares — the types, the [`Kernel`] trait, the blocked
//! weight layout, the tiled driver, the dispatch, the epilogue — and the portable path. Each
//! SIMD path is a leaf file that imports only this module (the shape of candle's `cpu/mod.rs`
//! + `avx.rs`, and of the gemm crate's common/micro-kernel split):
//! - [`avx512`]: AVX-512 VNNI (`vpdpbusd` zmm, 6 rows x 64 columns);
//! - [`ymm`]: the 256-bit kernels — AVX-VNNI (`vpdpbusd` ymm), its EVEX twin for CPUs that
//!   have AVX-512 VNNI but not AVX-VNNI, and plain AVX2 (`vpmaddubsw` on |a| and w·sign(a)).
//!
//! Every path produces the same integer sums and applies the same scalar epilogue, so all are
//! bit-identical (tests/kernels.rs checks each, the portable one included, against a naive loop).

#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod ymm;

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use wide::{i16x8, i32x4};

pub use super::Isa;
use super::{SharedMut, SimdLevel, gelu_erf, ops};

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
    /// The SIMD paths' block layout, packed on first use by one of them.
    pub blocked: Arc<OnceLock<BlockedWeights>>,
    /// The same in pairs of k (the AVX2 path's layout), packed on first use by it.
    pub blocked_pairs: Arc<OnceLock<BlockedWeights>>,
    /// The portable path's layout (i16), packed on first use by it.
    pub widened: Arc<OnceLock<WidenedWeights>>,
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
            blocked: Default::default(),
            blocked_pairs: Default::default(),
            widened: Default::default(),
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

/// What a call multiplies: f32 rows to quantize, rows quantized already, or rows to
/// normalise first.
#[derive(Clone, Copy)]
enum Source<'a> {
    F32(&'a [f32]),
    Codes(&'a QuantizedRows),
    Normed(NormInput<'a>),
}

/// Rows `LayerNorm(x + y)` (or of `x` alone), as [`super::ops::add_layer_norm`] computes them,
/// with the sum `x + y` written to `sum`.
#[derive(Clone, Copy)]
struct NormInput<'a> {
    x: &'a [f32],
    y: Option<&'a [f32]>,
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
    level: SimdLevel,
    /// `[m, k]`; rows are written by whichever task normalises them.
    sum: SharedMut<f32>,
}

impl NormInput<'_> {
    /// Rows `i0..i0 + rows`: their sums into `sum`, their norms into `norm` (`rows · k`).
    ///
    /// # Safety
    /// No other task may touch these rows of `sum` during the call.
    unsafe fn rows(&self, i0: usize, rows: usize, norm: &mut [f32]) {
        let k = self.gamma.len();
        let span = i0 * k..(i0 + rows) * k;
        // SAFETY: `sum` holds m·k elements; these rows are the caller's alone.
        let sum = unsafe { std::slice::from_raw_parts_mut(self.sum.ptr().add(span.start), rows * k) };
        let y = self.y.map(|y| &y[span.clone()]);
        ops::add_layer_norm_serial(self.level, &self.x[span], y, self.gamma, self.beta, self.eps, sum, norm);
    }
}

/// A whole int8 linear layer on f32 input `x` `[m, k]` -> `[m, n]`: activations are quantized
/// per row and multiplied on the path `isa` (the portable one where this CPU lacks it). The
/// output is allocated here and not zero-filled first (every path writes every element).
pub fn linear(isa: Isa, x: &[f32], m: usize, w: &PackedWeights, bias: Option<&[f32]>, epilogue: Epilogue) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k);
    run_on(isa, m, Source::F32(x), w, bias, epilogue)
}

/// `LayerNorm(x + y)` (or of `x` alone, `y` absent) followed by this int8 linear layer, the norm
/// computed row by row as rows are quantized instead of as a pass of its own: the result
/// equals [`super::ops::add_layer_norm`] then [`linear`] to the bit. Saves small models a
/// parallel hand-off and a pass over memory per norm.
///
/// Returns one new buffer: the sum `x + y` `[m, k]` (the residual stream) followed by the
/// layer's output `[m, n]`, both written in place (the candle op returns them as one tensor;
/// building it from two vectors cost a copy of the output and a zero-fill per layer).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_linear(
    isa: Isa,
    x: &[f32],
    y: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let k = w.k;
    assert!(gamma.len() == k && beta.len() == k && x.len().is_multiple_of(k.max(1)));
    assert!(y.is_none_or(|y| y.len() == x.len()) && bias.is_none_or(|b| b.len() == w.n));
    let m = x.len() / k.max(1);
    let len = x.len() + m * w.n;
    let mut buf: Vec<f32> = Vec::with_capacity(len);
    let level = if isa == Isa::Portable { SimdLevel::None } else { ops::simd_level() };
    let base = buf.as_mut_ptr();
    let norm = NormInput { x, y, gamma, beta, eps, level, sum: SharedMut(base) };
    // SAFETY: the capacity holds the m·k sums (every row is normalised once, writing its sum)
    // and the m·n outputs after them (every path writes all of them) before `set_len`.
    unsafe {
        run_into(isa, m, Source::Normed(norm), w, bias, epilogue, SharedMut(base.add(x.len())));
        buf.set_len(len);
    }
    buf
}

/// `out[m, n]` = dequant(a · wᵀ) + bias, then the epilogue, from already quantized rows.
pub fn gemm(isa: Isa, a: &QuantizedRows, w: &PackedWeights, bias: Option<&[f32]>, epilogue: Epilogue, out: &mut [f32]) {
    assert_eq!(a.k, w.k, "inner dimensions differ");
    assert_eq!(out.len(), a.m * w.n);
    out.copy_from_slice(&run_on(isa, a.m, Source::Codes(a), w, bias, epilogue));
}

/// [`gemm`] into a new vector (no copy through a caller's buffer).
pub fn gemm_to_vec(
    isa: Isa,
    a: &QuantizedRows,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    assert_eq!(a.k, w.k, "inner dimensions differ");
    run_on(isa, a.m, Source::Codes(a), w, bias, epilogue)
}

fn run_on(isa: Isa, m: usize, src: Source, w: &PackedWeights, bias: Option<&[f32]>, epilogue: Epilogue) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * w.n);
    // SAFETY: the capacity holds m·n elements, and every path writes all of them before
    // `set_len`.
    unsafe {
        run_into(isa, m, src, w, bias, epilogue, SharedMut(out.as_mut_ptr()));
        out.set_len(m * w.n);
    }
    out
}

/// The layer into `dst` on `isa`'s path (the portable one where this CPU lacks it).
///
/// # Safety
/// `dst` points to `m · w.n` writable f32s that nothing else accesses during the call; every
/// one of them is written.
unsafe fn run_into(
    isa: Isa,
    m: usize,
    src: Source,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    dst: SharedMut<f32>,
) {
    if let Some(b) = bias {
        assert_eq!(b.len(), w.n);
    }
    // SAFETY: the caller's contract; `run::<K>` is only reached where `K::available()`.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            use self::avx512::Avx512Vnni;
            use self::ymm::{Avx2, AvxVnni, AvxVnniEvex};
            match isa {
                Isa::Avx512Vnni if Avx512Vnni::available() => run::<Avx512Vnni>(m, src, w, bias, epilogue, dst),
                Isa::AvxVnniEvex if AvxVnniEvex::available() => run::<AvxVnniEvex>(m, src, w, bias, epilogue, dst),
                Isa::AvxVnni if AvxVnni::available() => run::<AvxVnni>(m, src, w, bias, epilogue, dst),
                Isa::Avx2 if Avx2::available() => run::<Avx2>(m, src, w, bias, epilogue, dst),
                _ => portable(m, src, w, bias, epilogue, dst),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            portable(m, src, w, bias, epilogue, dst);
        }
    }
}

/// Whether this CPU can run `isa`'s int8 kernel.
pub fn isa_available(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Portable => true,
            Isa::Avx2 => ymm::Avx2::available(),
            Isa::AvxVnni => ymm::AvxVnni::available(),
            Isa::AvxVnniEvex => ymm::AvxVnniEvex::available(),
            Isa::Avx512Vnni => avx512::Avx512Vnni::available(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        isa == Isa::Portable
    }
}

/// A register-only loop of some instruction sequence: given an iteration count, it returns the
/// MACs it performed ([`Kernel::peak_sequence`], [`ymm::CANDIDATES`]).
pub type PeakSequence = unsafe fn(usize) -> u64;

/// MACs per second of one core running `seq`: the best of several short runs, since a peak is
/// what the core does when nothing else interrupts it (a shared machine only ever slows a run).
fn time_sequence(seq: PeakSequence) -> f64 {
    // SAFETY (both calls): callers pass sequences whose CPU features were detected.
    unsafe { seq(200_000) }; // the core's clock settles
    (0..10)
        .map(|_| {
            let t = std::time::Instant::now();
            let macs = unsafe { seq(500_000) };
            macs as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// The register-only peak of `isa`'s inner instruction sequence on one core, in int8
/// multiply-accumulates per second ([`Kernel::peak_sequence`]); `None` for the portable path
/// (its instructions are the compiler's choice) and for paths this CPU lacks.
pub fn peak_macs_per_second(isa: Isa) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use self::avx512::Avx512Vnni;
        use self::ymm::{Avx2, AvxVnni, AvxVnniEvex};
        if !isa_available(isa) {
            return None;
        }
        match isa {
            Isa::Portable => None,
            Isa::Avx2 => Some(time_sequence(Avx2::peak_sequence)),
            Isa::AvxVnni => Some(time_sequence(AvxVnni::peak_sequence)),
            Isa::AvxVnniEvex => Some(time_sequence(AvxVnniEvex::peak_sequence)),
            Isa::Avx512Vnni => Some(time_sequence(Avx512Vnni::peak_sequence)),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, time_sequence);
        None
    }
}

/// Register-only peaks (name, MACs per second on one core) of the AVX2 int8 instruction
/// sequences the AVX2 path was chosen from ([`ymm::CANDIDATES`]); empty without AVX2.
pub fn avx2_candidate_peaks() -> Vec<(&'static str, f64)> {
    #[cfg(target_arch = "x86_64")]
    if ymm::Avx2::available() {
        return ymm::CANDIDATES.iter().map(|&(name, seq)| (name, time_sequence(seq))).collect();
    }
    Vec::new()
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

// ---- The portable path -------------------------------------------------------------------

/// Lanes of one portable vector: 8 x i16 (128 bits, what every target's baseline has).
const LANES: usize = 8;

/// The portable path's weight layout: each row widened to i16 and zero-padded to a multiple of
/// [`LANES`], as `wide` vectors. i16 because every target's vector unit multiplies 16-bit lanes
/// and sums adjacent products into 32 bits in one instruction (`wide::i16x8::dot`: SSE2
/// `pmaddwd`, NEON `vmull` + `vpaddq`, wasm `i32x4.dot_i16x8`); the plain i8 x i8 loops this
/// replaces compiled to one scalar multiply per element on x86-64's baseline (~5 GMAC/s a core).
#[derive(Debug)]
pub struct WidenedWeights {
    /// `[n][k.div_ceil(LANES)]`.
    rows: Vec<i16x8>,
}

fn widen(codes: &[i8], out: &mut [i16x8]) {
    for (v, chunk) in out.iter_mut().zip(codes.chunks(LANES)) {
        let mut lanes = [0i16; LANES];
        for (l, &c) in lanes.iter_mut().zip(chunk) {
            *l = c as i16;
        }
        *v = i16x8::new(lanes);
    }
}

impl WidenedWeights {
    pub fn pack(w: &PackedWeights) -> WidenedWeights {
        let kv = w.k.div_ceil(LANES);
        let mut rows = vec![i16x8::ZERO; w.n * kv];
        if kv > 0 {
            rows.par_chunks_mut(kv).zip(w.data.as_slice().par_chunks(w.k)).for_each(|(dst, row)| widen(row, dst));
        }
        WidenedWeights { rows }
    }
}

/// Dot products of `R` activation rows with `C` weight rows (all `kv` vectors long): each
/// loaded vector serves `C` (or `R`) products, so the register tile rather than the loads
/// bounds the rate (SSE2, ViT-B fc1 shape, one core: 2 x 4 ~38 GMAC/s, 1 x 4 ~29).
#[inline(always)]
fn dot_tile<const R: usize, const C: usize>(a: [&[i16x8]; R], w: [&[i16x8]; C]) -> [[i32; C]; R] {
    let kv = a[0].len();
    let w = w.map(|row| &row[..kv]);
    let mut acc = [[i32x4::ZERO; C]; R];
    for i in 0..kv {
        let av: [i16x8; R] = std::array::from_fn(|r| a[r][i]);
        for c in 0..C {
            let wv = w[c][i];
            for r in 0..R {
                acc[r][c] += av[r].dot(wv);
            }
        }
    }
    acc.map(|row| row.map(|v| v.reduce_add()))
}

/// Portable tile: 2 rows x 4 output channels.
const PORTABLE_ROWS: usize = 2;
const PORTABLE_CHANNELS: usize = 4;
/// Columns per portable task: its widened weights (64 x k x 2 bytes) stay in L2 while it
/// sweeps every row.
const PORTABLE_COLUMNS: usize = 64;

/// The portable path: rows quantized by the shared rule and widened once, then tasks over
/// column blocks, each sweeping every row pair with [`dot_tile`]; exact integer sums and the
/// shared epilogue.
///
/// # Safety
/// `out` must point to `m · w.n` writable f32s that nothing else accesses during the call.
unsafe fn portable(
    m: usize,
    src: Source,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: SharedMut<f32>,
) {
    let (n, k) = (w.n, w.k);
    let kv = k.div_ceil(LANES);
    let owned;
    let a = match src {
        Source::Codes(a) => a,
        Source::F32(x) => {
            owned = quantize_rows(x, m, k);
            &owned
        }
        Source::Normed(norm) => {
            let mut normed = vec![0f32; m * k];
            // SAFETY: this call owns every row of `sum`.
            unsafe { norm.rows(0, m, &mut normed) };
            owned = quantize_rows(&normed, m, k);
            &owned
        }
    };
    let mut a16 = vec![i16x8::ZERO; m * kv];
    if kv > 0 {
        a16.par_chunks_mut(kv).zip(a.data.par_chunks(k)).for_each(|(dst, row)| widen(row, dst));
    }
    let widened = w.widened.get_or_init(|| WidenedWeights::pack(w));
    let row_of = |i: usize| &a16[i * kv..(i + 1) * kv];
    let col_tasks = n.div_ceil(PORTABLE_COLUMNS);
    let (row_chunks, chunk_rows) = row_split(m, kv * 16, col_tasks, PORTABLE_ROWS);
    (0..col_tasks * row_chunks).into_par_iter().for_each(|task| {
        let (chunk, task) = (task / col_tasks, task % col_tasks);
        let (r0, r1) = (chunk * chunk_rows, ((chunk + 1) * chunk_rows).min(m));
        let (c0, c1) = (task * PORTABLE_COLUMNS, ((task + 1) * PORTABLE_COLUMNS).min(n));
        let weight_row = |j: usize| &widened.rows[j.min(n - 1) * kv..(j.min(n - 1) + 1) * kv];
        let mut acc = [[0i32; PORTABLE_COLUMNS]; PORTABLE_ROWS];
        let mut i = r0;
        while i < r1 {
            let rows = PORTABLE_ROWS.min(r1 - i);
            for j in (c0..c1).step_by(PORTABLE_CHANNELS) {
                // Channels past c1 repeat the last row (computed, never stored).
                let w4: [&[i16x8]; PORTABLE_CHANNELS] = std::array::from_fn(|c| weight_row(j + c));
                let jj = j - c0;
                if rows == PORTABLE_ROWS {
                    let d = dot_tile::<PORTABLE_ROWS, PORTABLE_CHANNELS>(std::array::from_fn(|r| row_of(i + r)), w4);
                    for r in 0..PORTABLE_ROWS {
                        acc[r][jj..jj + PORTABLE_CHANNELS].copy_from_slice(&d[r]);
                    }
                } else {
                    acc[0][jj..jj + PORTABLE_CHANNELS]
                        .copy_from_slice(&dot_tile::<1, PORTABLE_CHANNELS>([row_of(i)], w4)[0]);
                }
            }
            for (r, acc_row) in acc.iter().enumerate().take(rows) {
                // SAFETY: row i + r, columns c0..c1 of `out` belong to this task alone.
                let row = unsafe { std::slice::from_raw_parts_mut(out.ptr().add((i + r) * n + c0), c1 - c0) };
                let sw = &w.scales[c0..c1];
                epilogue_row(&acc_row[..c1 - c0], &[], a.scales[i + r], sw, bias.map(|b| &b[c0..c1]), epilogue, row);
            }
            i += rows;
        }
    });
}

// ---- The blocked SIMD driver ------------------------------------------------------------

/// Output channels per weight block (one zmm of i32, two ymm).
pub const NB: usize = 16;
/// Weight blocks per task tile (64 columns).
pub const NT: usize = 4;
/// The most rows any micro-kernel's tile has.
pub const MR_MAX: usize = 8;

/// Weights in the SIMD paths' block layout, zero-padded: for every group of `G` consecutive k,
/// `16·G` bytes hold `w[n0..n0+16][k..k+G]`. With G = 4 that is one zmm, or two ymm (channels
/// 0-7 and 8-15), the operand `vpdpbusd` wants; with G = 2, two 16-byte halves that
/// `vpmovsxbw` widens into the i16 pairs `vpmaddwd` wants. Per tile of [`NT`] blocks (64
/// output channels) the layout is `[k groups][block in tile][16][G]`, so a task reads its
/// weights as one stream.
#[derive(Debug)]
pub struct BlockedWeights {
    pub n: usize,
    pub k: usize,
    /// k rounded up to a multiple of 4.
    pub kp: usize,
    /// n rounded up to a multiple of 16.
    pub np: usize,
    /// k per group: 4 or 2.
    pub group: usize,
    data: Vec<i8>,
}

impl BlockedWeights {
    /// Start of the tile whose first block is `nb0`, and the bytes between its consecutive k
    /// groups.
    ///
    /// # Safety
    /// `nb0` must be a multiple of [`NT`] below `np / NB`; reads from the pointer must stay
    /// within the tile's `kp / group` groups of `blocks · 16 · group` bytes.
    #[inline(always)]
    pub unsafe fn tile_start(&self, nb0: usize, blocks: usize) -> (*const i8, usize) {
        debug_assert!(nb0.is_multiple_of(NT) && nb0 < self.np / NB);
        // SAFETY: tiles before this one hold nb0 full blocks of 16·kp bytes (caller's bounds).
        (unsafe { self.data.as_ptr().add(nb0 * NB * self.kp) }, blocks * NB * self.group)
    }

    /// Packs `w` in groups of `group` k (4 or 2).
    pub fn pack(w: &PackedWeights, group: usize) -> BlockedWeights {
        assert!(group == 4 || group == 2);
        let (n, k) = (w.n, w.k);
        let kp = k.div_ceil(4) * 4;
        let np = n.div_ceil(NB) * NB;
        let blocks = np / NB;
        let src = w.data.as_slice();
        let mut data = vec![0i8; np * kp];
        data.par_chunks_mut(NT * NB * kp).enumerate().for_each(|(t, tile)| {
            let bt = NT.min(blocks - t * NT);
            for b in 0..bt {
                for j in 0..NB {
                    let row = (t * NT + b) * NB + j;
                    if row >= n {
                        break;
                    }
                    for kk in 0..k {
                        let (g, r) = (kk / group, kk % group);
                        tile[(g * bt + b) * NB * group + j * group + r] = src[row * k + kk];
                    }
                }
            }
        });
        BlockedWeights { n, k, kp, np, group, data }
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

/// One tile's activations as a kernel reads them: `mr` rows from `data`, `stride` bytes apart,
/// each `kp` codes in the kernel's encoding ([`Kernel::ACT_BYTES`] bytes each).
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [u8],
    pub stride: usize,
    pub kp: usize,
}

/// One micro-kernel family: its activation encoding, row quantization, tile and epilogue.
/// Every `unsafe fn` here has one safety condition: the CPU has the features
/// [`Kernel::available`] checks (and slices are sized as documented).
#[allow(clippy::missing_safety_doc)] // one condition for all, stated above
pub trait Kernel: Sync + Sized {
    /// Activations as `a + 128` (u8, corrected with row sums) rather than plain i8 codes.
    const SHIFTED: bool;
    /// Bytes per activation code: 1 (i8, or u8 when shifted), or 2 (i16).
    const ACT_BYTES: usize = 1;
    /// k per weight group of [`BlockedWeights`] this kernel reads: 4, or 2.
    const K_GROUP: usize = 4;
    /// Rows per tile (<= [`MR_MAX`]): as many as the register file holds accumulators for.
    const MR: usize;
    fn available() -> bool;
    /// Quantizes one row into `out` (`x.len() · ACT_BYTES` bytes) in this kernel's encoding;
    /// returns the scale.
    unsafe fn quantize_row(x: &[f32], out: &mut [u8]) -> f32;
    /// Already quantized codes into `out` (`codes.len() · ACT_BYTES` bytes) in this encoding.
    fn encode_codes(codes: &[i8], out: &mut [u8]) {
        let offset: i16 = if Self::SHIFTED { 128 } else { 0 };
        match Self::ACT_BYTES {
            1 => out.iter_mut().zip(codes).for_each(|(d, &c)| *d = (c as i16 + offset) as u8),
            _ => out
                .chunks_exact_mut(2)
                .zip(codes)
                .for_each(|(d, &c)| d.copy_from_slice(&(c as i16 + offset).to_le_bytes())),
        }
    }
    /// Rows `mr` (<= `MR`) x `blocks` (<= [`NT`]) weight blocks of one tile, through the
    /// epilogue, into `out` (row 0 of the strip, column 0; row stride `cols.n`). `first`: the
    /// task's first strip (its weights come from memory). `sa`: the strip's row scales.
    /// Caller: `out` rows x `cols.c0..c1` belong to it alone.
    #[allow(clippy::too_many_arguments)]
    unsafe fn strip(
        a: Rows,
        w: &BlockedWeights,
        nb0: usize,
        blocks: usize,
        mr: usize,
        first: bool,
        cols: &Columns,
        sa: &[f32],
        out: *mut f32,
    );
    /// The register-only loop of this kernel's inner instruction sequence (no memory operands,
    /// independent accumulators): the MACs it performed in `iters` iterations. Its rate is the
    /// peak the kernel's tile is measured against.
    unsafe fn peak_sequence(iters: usize) -> u64;
}

/// Rows handled by one quantization task.
const FILL_ROWS: usize = 16;

/// The blocked driver: every row quantized once in the kernel's encoding, in parallel (the
/// buffer, <= 1 MB for ViT-B, stays in L2), then tasks over 64-column tiles; each task streams
/// its slice of the weights from memory once and sweeps every row (sweeping all columns per
/// row chunk instead re-read the 2.4 MB fc1/fc2 weights once per chunk).
///
/// # Safety
/// `K::available()`; `out` must point to `m · w.n` writable f32s that nothing else accesses
/// during the call; every one of them is written.
unsafe fn run<K: Kernel>(
    m: usize,
    src: Source,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: SharedMut<f32>,
) {
    let bw = match K::K_GROUP {
        4 => w.blocked.get_or_init(|| BlockedWeights::pack(w, 4)),
        _ => w.blocked_pairs.get_or_init(|| BlockedWeights::pack(w, 2)),
    };
    let (n, k, kp) = (w.n, w.k, bw.kp);
    let stride = kp * K::ACT_BYTES;
    let code_bytes = k * K::ACT_BYTES;
    // Padding meets zero weights; 128 is the shifted encoding of 0.
    let zero = if K::SHIFTED { 128u8 } else { 0 };
    let mut au = vec![zero; m * stride];
    let mut scales = vec![0f32; m];
    let fill = |c: usize, rows: &mut [u8], s: &mut [f32]| {
        let mut normed = Vec::new();
        if let Source::Normed(norm) = &src {
            normed.resize(s.len() * k, 0f32);
            // SAFETY: rows of chunk c are this call's alone.
            unsafe { norm.rows(c * FILL_ROWS, s.len(), &mut normed) };
        }
        for (r, (row, scale)) in rows.chunks_mut(stride).zip(s.iter_mut()).enumerate() {
            let i = c * FILL_ROWS + r;
            match src {
                // SAFETY: the caller checked the kernel's features.
                Source::F32(x) => *scale = unsafe { K::quantize_row(&x[i * k..(i + 1) * k], &mut row[..code_bytes]) },
                // SAFETY: as above.
                Source::Normed(_) => {
                    *scale = unsafe { K::quantize_row(&normed[r * k..(r + 1) * k], &mut row[..code_bytes]) }
                }
                Source::Codes(a) => {
                    K::encode_codes(&a.data[i * k..(i + 1) * k], &mut row[..code_bytes]);
                    *scale = a.scales[i];
                }
            }
        }
    };
    // A hand-off to another core costs microseconds: small layers (DeiT-Ti: 197 x 192) are
    // quantized by the calling thread alone.
    if m * k < SERIAL_FILL_ELEMENTS {
        au.chunks_mut(FILL_ROWS * stride)
            .zip(scales.chunks_mut(FILL_ROWS))
            .enumerate()
            .for_each(|(c, (r, s))| fill(c, r, s));
    } else {
        au.par_chunks_mut(FILL_ROWS * stride)
            .zip(scales.par_chunks_mut(FILL_ROWS))
            .enumerate()
            .for_each(|(c, (r, s))| fill(c, r, s));
    }
    let col_tasks = (bw.np / NB).div_ceil(NT);
    let (row_chunks, chunk_rows) = row_split(m, stride, col_tasks, K::MR);
    (0..col_tasks * row_chunks).into_par_iter().for_each(|task| {
        let (chunk, task) = (task / col_tasks, task % col_tasks);
        let (r0, r1) = (chunk * chunk_rows, ((chunk + 1) * chunk_rows).min(m));
        let nb = task * NT;
        let blocks = NT.min(bw.np / NB - nb);
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
        let mut i = r0;
        while i < r1 {
            let mr = K::MR.min(r1 - i);
            let rows = Rows { data: &au[i * stride..], stride, kp };
            // SAFETY: features checked by the caller; slices are sized by construction; rows
            // i..i+mr, columns c0..c1 of `out` belong to this task alone.
            unsafe { K::strip(rows, bw, nb, blocks, mr, i == r0, &cols, &scales[i..i + mr], out.ptr().add(i * n)) };
            i += mr;
        }
    });
}

/// Below this many activation elements a layer's rows are quantized without a parallel hand-off.
const SERIAL_FILL_ELEMENTS: usize = 64 * 1024;

/// Activation bytes one row chunk may hold: every column task sweeps its chunk, so the chunk
/// must stay in L2 (batch 8 of ViT-B: 1576 rows x 3072 = 4.8 MB was re-read from L3 by each of
/// fc2's 12 tasks).
const CHUNK_ACTIVATION_BYTES: usize = 256 * 1024;
/// Activations up to this size are not chunked for the cache: one image's rows (ViT-B fc2:
/// 197 x 3072 = 605 KB) ran slower in chunks, since every chunk re-reads the task's weights.
const UNCHUNKED_ACTIVATION_BYTES: usize = 1024 * 1024;

/// How to split `m` rows (of `row_bytes` activation bytes each) across tasks: `(chunks, rows
/// per chunk)`, chunks a multiple of `mr` rows. Narrow layers get enough chunks that
/// `col_tasks` column tiles make several tasks per thread (DeiT-Ti's proj and fc2 have 3 tiles
/// and left a core idle); batches whose activations pass [`UNCHUNKED_ACTIVATION_BYTES`] get
/// chunks of [`CHUNK_ACTIVATION_BYTES`]. Wide
/// layers of one image keep one chunk, so each task streams its weights once. Tasks are
/// numbered chunk-major, so the threads work on the same chunk at the same time.
fn row_split(m: usize, row_bytes: usize, col_tasks: usize, mr: usize) -> (usize, usize) {
    let want = 4 * rayon::current_num_threads();
    let for_threads = want.div_ceil(col_tasks.max(1));
    let bytes = m * row_bytes;
    let for_cache = if bytes > UNCHUNKED_ACTIVATION_BYTES { bytes.div_ceil(CHUNK_ACTIVATION_BYTES) } else { 1 };
    let chunks = for_threads.max(for_cache).clamp(1, m.div_ceil(mr).max(1));
    let rows = m.div_ceil(chunks).next_multiple_of(mr).max(mr);
    (m.div_ceil(rows).max(1), rows)
}

/// The tail of a [`Kernel::strip`]: accumulators stored in `acc` (row stride `NB·NT`), then the
/// shared epilogue row by row through `epilogue` (the kernel's compilation of [`epilogue_row`]).
///
/// # Safety
/// As [`Kernel::strip`].
pub unsafe fn epilogue_rows(acc: &[i32], mr: usize, cols: &Columns, sa: &[f32], out: *mut f32, epilogue: EpilogueFn) {
    let width = cols.c1 - cols.c0;
    for r in 0..mr {
        // SAFETY: the caller owns these output elements.
        let out_row = unsafe { std::slice::from_raw_parts_mut(out.add(r * cols.n + cols.c0), width) };
        let acc_row = &acc[r * NB * NT..r * NB * NT + width];
        // SAFETY: `epilogue` is compiled for features the caller checked.
        unsafe { epilogue(acc_row, cols.row_sums, sa[r], cols.sw, cols.bias, cols.epilogue, out_row) };
    }
}

/// [`epilogue_row`] compiled for some ISA.
pub type EpilogueFn = unsafe fn(&[i32], &[i32], f32, &[f32], Option<&[f32]>, Epilogue, &mut [f32]);

/// GELU (erf), for kernels that apply the epilogue in registers.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    gelu_erf(x)
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
