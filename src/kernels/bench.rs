//! `vit-workbench kernels`: throughput of each kernel on ViT-B/16's shapes, per instruction-set
//! path, against this machine's measured peak — so a regression or a slow path shows as a
//! number, not a hunch. Median of timed calls after warm-up, like the model benchmark.

use std::time::Instant;

use rayon::prelude::*;

use super::attention::{AttentionDims, attention};
use super::gemm_f32::{self, PackedB};
use super::gemm_i8::{self, Epilogue, PackedWeights};
use super::linear_f32::linear_f32;
use super::{Isa, SimdLevel, available_isas, ops};

/// One measured kernel.
#[derive(Clone, Debug)]
pub struct KernelResult {
    pub kernel: String,
    pub path: String,
    pub shape: String,
    pub p50_us: f64,
    /// Useful work per second: GMAC/s for products, G elements/s for elementwise kernels.
    pub rate: f64,
    pub unit: &'static str,
    /// Fraction of the measured peak of this path's own instruction sequence (int8 products).
    pub of_peak: Option<f64>,
}

fn median_us(mut f: impl FnMut(), min_seconds: f64) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 10 || start.elapsed().as_secs_f64() < min_seconds {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        if samples.len() >= 10_000 {
            break;
        }
    }
    median(&mut samples)
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 }
}

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Peak int8 GMAC/s of `threads` cores each running `isa`'s inner instruction sequence from
/// registers only ([`gemm_i8::peak_macs_per_second`]), or `None` (portable, or missing here).
pub fn peak_gmacs(isa: Isa, threads: usize) -> Option<f64> {
    gemm_i8::peak_macs_per_second(isa)?;
    let per_thread: Vec<Option<f64>> =
        (0..threads).into_par_iter().map(|_| gemm_i8::peak_macs_per_second(isa)).collect();
    Some(per_thread.into_iter().flatten().sum::<f64>() / 1e9)
}

/// All kernels measured, with the conditions they were measured under.
#[derive(Clone, Debug)]
pub struct KernelReport {
    pub threads: usize,
    /// [`peak_gmacs`] of each SIMD path for these threads, measured once.
    pub peaks: Vec<(Isa, f64)>,
    /// The AVX2 candidate sequences' peaks for these threads (GMAC/s).
    pub avx2_candidates: Vec<(&'static str, f64)>,
    /// The f32 FMA peak of each f32 kernel for these threads (GMAC/s).
    pub f32_peaks: Vec<(SimdLevel, f64)>,
    pub results: Vec<KernelResult>,
}

/// Peaks in GMAC/s per int8 path and per f32 kernel.
type Peaks = (Vec<(Isa, f64)>, Vec<(SimdLevel, f64)>);

/// Register-only peaks of every int8 path and every f32 kernel for `threads` threads.
fn measure_peaks(threads: usize) -> Peaks {
    let int8 = available_isas().into_iter().filter_map(|isa| peak_gmacs(isa, threads).map(|p| (isa, p))).collect();
    let f32 = f32_levels()
        .into_iter()
        .filter_map(|level| {
            let per_thread: Vec<Option<f64>> =
                (0..threads).into_par_iter().map(|_| gemm_f32::peak_macs_per_second(level)).collect();
            per_thread.iter().all(Option::is_some).then(|| (level, per_thread.into_iter().flatten().sum::<f64>() / 1e9))
        })
        .collect();
    (int8, f32)
}

/// The larger of two measurements of each peak: a peak is what the cores do undisturbed, and a
/// busy host only ever lowers one.
fn max_peaks<T: PartialEq + Copy>(a: Vec<(T, f64)>, b: &[(T, f64)]) -> Vec<(T, f64)> {
    a.into_iter().map(|(k, p)| (k, b.iter().find(|(kb, _)| *kb == k).map_or(p, |(_, pb)| p.max(*pb)))).collect()
}

/// Runs every kernel on ViT-B/16 shapes (197 tokens, width 768, MLP 3072, 12 heads). The peaks
/// are measured before and after the kernels (the larger counts), so one disturbed peak run
/// does not put a kernel above 100%.
pub fn run(min_seconds: f64) -> KernelReport {
    let threads = rayon::current_num_threads();
    let (peaks_before, f32_peaks_before) = measure_peaks(threads);
    let avx2_candidates = gemm_i8::avx2_candidate_peaks()
        .into_iter()
        .map(|(name, per_core)| (name, per_core * threads as f64 / 1e9))
        .collect();
    let f32_levels = f32_levels();
    let mut out = Vec::new();
    let m = 197;
    for (name, k, n) in [("qkv", 768, 2304), ("proj", 768, 768), ("fc1", 768, 3072), ("fc2", 3072, 768)] {
        let x = pseudo_random(m * k, k as u32);
        let w = PackedWeights::quantize(&pseudo_random(n * k, n as u32), n, k);
        let bias = pseudo_random(n, 7);
        let macs = (m * k * n) as f64;
        for isa in available_isas() {
            let p50 = median_us(
                || {
                    std::hint::black_box(gemm_i8::linear(isa, &x, m, &w, Some(&bias), Epilogue::None));
                },
                min_seconds,
            );
            let rate = macs / p50 / 1e3;
            out.push(KernelResult {
                kernel: format!("int8 linear {name}"),
                path: isa.name().into(),
                shape: format!("{m}x{k} -> {n}"),
                p50_us: p50,
                rate,
                unit: "GMAC/s",
                of_peak: None,
            });
        }
        // The fp32 linear layer: our kernel on each f32 path, and the `gemm` crate.
        let w32 = pseudo_random(n * k, 3);
        let packed = PackedB::from_weights(&w32, n, k);
        for &level in &f32_levels {
            let p50 = median_us(
                || {
                    std::hint::black_box(gemm_f32::linear(level, &x, m, &packed, Some(&bias), false));
                },
                min_seconds,
            );
            let rate = macs / p50 / 1e3;
            out.push(KernelResult {
                kernel: format!("f32 linear {name}"),
                path: gemm_f32::path_name(level).into(),
                shape: format!("{m}x{k} -> {n}"),
                p50_us: p50,
                rate,
                unit: "GMAC/s",
                of_peak: None,
            });
        }
        let wt = pseudo_random(k * n, 3);
        let p50 = median_us(
            || {
                std::hint::black_box(linear_f32(&x, m, k, &wt, n, Some(&bias)));
            },
            min_seconds,
        );
        out.push(KernelResult {
            kernel: format!("f32 linear {name}"),
            path: "gemm crate".into(),
            shape: format!("{m}x{k} -> {n}"),
            p50_us: p50,
            rate: macs / p50 / 1e3,
            unit: "GMAC/s",
            of_peak: None,
        });
    }
    let dims = AttentionDims { batch: 1, tokens: m, heads: 12, head_dim: 64 };
    let qkv = pseudo_random(dims.qkv_len(), 11);
    let mut o = vec![0f32; dims.out_len()];
    // The elementwise kernels and attention run on this process's path (`VITWB_ISA` forces it).
    let level = ops::simd_level();
    let simd_name = match level {
        SimdLevel::Avx512 => "avx512",
        SimdLevel::Avx2Fma => "avx2+fma",
        SimdLevel::None => "portable",
    };
    for reference in [true, false] {
        let p50 = median_us(|| attention(reference, &qkv, dims, 0.125, &mut o, None), min_seconds);
        let path = match (reference, gemm_f32::has_kernel(level)) {
            (true, _) => "portable loops".to_string(),
            (false, true) => format!("{} + {simd_name} softmax", gemm_f32::path_name(level)),
            (false, false) => "gemm crate + portable softmax".to_string(),
        };
        out.push(KernelResult {
            kernel: "attention (12 heads)".into(),
            path,
            shape: format!("{m} tokens x 64"),
            p50_us: p50,
            rate: (2 * 12 * m * m * 64) as f64 / p50 / 1e3,
            unit: "GMAC/s",
            of_peak: None,
        });
    }
    let mut v = pseudo_random(m * 3072, 5);
    let p50 = median_us(|| v.par_chunks_mut(16 * 1024).for_each(ops::gelu_slice), min_seconds);
    out.push(elementwise("GELU (erf)", simd_name, m * 3072, p50));
    let (x, y) = (pseudo_random(m * 768, 1), pseudo_random(m * 768, 2));
    let (g, b) = (vec![1.0f32; 768], vec![0.0f32; 768]);
    let (mut s, mut nrm) = (vec![0f32; m * 768], vec![0f32; m * 768]);
    for reference in [true, false] {
        let p50 =
            median_us(|| ops::add_layer_norm(reference, &x, Some(&y), &g, &b, 1e-6, &mut s, &mut nrm), min_seconds);
        out.push(elementwise("add + LayerNorm", if reference { "portable" } else { simd_name }, m * 768, p50));
    }
    let mut sm = pseudo_random(12 * m * 208, 9);
    let p50 = median_us(|| sm.par_chunks_mut(208 * 16).for_each(|c| ops::softmax_rows(c, 208)), min_seconds);
    out.push(elementwise("softmax rows of 208", simd_name, sm.len(), p50));
    let (peaks_after, f32_peaks_after) = measure_peaks(threads);
    let peaks = max_peaks(peaks_before, &peaks_after);
    let f32_peaks = max_peaks(f32_peaks_before, &f32_peaks_after);
    for r in &mut out {
        let peak = if r.kernel.starts_with("int8 linear") {
            peaks.iter().find(|(isa, _)| isa.name() == r.path).map(|(_, p)| *p)
        } else if r.kernel.starts_with("f32 linear") {
            f32_peaks.iter().find(|(level, _)| gemm_f32::path_name(*level) == r.path).map(|(_, p)| *p)
        } else {
            None
        };
        r.of_peak = peak.map(|p| r.rate / p);
    }
    KernelReport { threads, peaks, avx2_candidates, f32_peaks, results: out }
}

/// The f32 kernels this CPU has (each measured, whatever path `VITWB_ISA` forces, as the int8
/// paths are).
fn f32_levels() -> Vec<SimdLevel> {
    [SimdLevel::Avx2Fma, SimdLevel::Avx512].into_iter().filter(|&l| gemm_f32::has_kernel(l)).collect()
}

fn elementwise(kernel: &str, path: &str, elements: usize, p50_us: f64) -> KernelResult {
    KernelResult {
        kernel: kernel.into(),
        path: path.into(),
        shape: format!("{elements} elements"),
        p50_us,
        rate: elements as f64 / p50_us / 1e3,
        unit: "Gelem/s",
        of_peak: None,
    }
}

/// The results as a table, with the peak it compares against.
pub fn table(report: &KernelReport) -> String {
    let mut s = format!("threads: {} | cpu features: {}\n", report.threads, super::cpu_features().join(" "));
    s += "int8 peaks, each path's inner instruction sequence from registers only, all threads:\n";
    for (isa, p) in &report.peaks {
        s += &format!("  {:<14} {p:>7.0} GMAC/s\n", isa.name());
    }
    if !report.avx2_candidates.is_empty() {
        s += "AVX2 candidate sequences (same measurement):\n";
        for (name, p) in &report.avx2_candidates {
            s += &format!("  {name:<66} {p:>7.0} GMAC/s\n");
        }
    }
    if !report.f32_peaks.is_empty() {
        s += "f32 peaks, each f32 kernel's FMA from registers only, all threads:\n";
        for (level, p) in &report.f32_peaks {
            s += &format!("  {:<14} {p:>7.0} GMAC/s\n", gemm_f32::path_name(*level));
        }
    }
    s += &format!("{:<24} {:<32} {:<18} {:>10} {:>14} {:>8}\n", "kernel", "path", "shape", "p50 us", "rate", "of peak");
    for r in &report.results {
        // Slow portable elementwise kernels run at hundredths of a G/s: keep two digits.
        let rate = if r.rate < 10.0 { format!("{:.2}", r.rate) } else { format!("{:.1}", r.rate) };
        s += &format!(
            "{:<24} {:<32} {:<18} {:>10.1} {:>7} {:<6} {:>8}\n",
            r.kernel,
            r.path,
            r.shape,
            r.p50_us,
            rate,
            r.unit,
            r.of_peak.map_or(String::new(), |p| format!("{:.0}%", p * 100.0))
        );
    }
    if report.results.iter().any(|r| r.of_peak.is_some_and(|p| p > 1.0)) {
        s += "note: a rate above 100% of its peak means both peak runs were disturbed (a busy host): rerun on a quiet machine\n";
    }
    s
}
