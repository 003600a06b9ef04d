//! `vit-workbench kernels`: throughput of each kernel on ViT-B/16's shapes, per instruction-set
//! path, against this machine's measured peak — so a regression or a slow path shows as a
//! number, not a hunch. Median of timed calls after warm-up, like the model benchmark.

use std::time::Instant;

use rayon::prelude::*;

use super::attention::{AttentionDims, attention};
use super::gemm_i8::{self, Epilogue, PackedWeights};
use super::linear_f32::linear_f32;
use super::{available_isas, ops};

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
    /// Fraction of the peak measured by [`peak_gmacs`] (products only).
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
    crate::bench::stats(&samples).p50
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

/// Peak int8 multiply-accumulates per second of `threads` cores running nothing but
/// independent `vpdpbusd` (AVX-512 VNNI), or `None` where the instruction is missing.
pub fn peak_gmacs(threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vnni") {
        let per_core: Vec<f64> = (0..threads)
            .into_par_iter()
            .map(|_| {
                let iters = 2_000_000;
                let t = Instant::now();
                // SAFETY: the feature was detected above.
                let sink = unsafe { vpdpbusd_loop(iters) };
                std::hint::black_box(sink);
                iters as f64 * 12.0 * 64.0 / t.elapsed().as_secs_f64() / 1e9
            })
            .collect();
        return Some(per_core.iter().sum());
    }
    let _ = threads;
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vpdpbusd_loop(iters: usize) -> i32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-5));
    let mut c = [_mm512_setzero_si512(); 12];
    for _ in 0..iters {
        for acc in c.iter_mut() {
            *acc = _mm512_dpbusd_epi32(*acc, a, b);
        }
    }
    let mut s = _mm512_setzero_si512();
    for acc in c {
        s = _mm512_add_epi32(s, acc);
    }
    _mm512_reduce_add_epi32(s)
}

/// All kernels measured, with the conditions they were measured under.
#[derive(Clone, Debug)]
pub struct KernelReport {
    pub threads: usize,
    /// [`peak_gmacs`] for these threads, measured once.
    pub peak: Option<f64>,
    pub results: Vec<KernelResult>,
}

/// Runs every kernel on ViT-B/16 shapes (197 tokens, width 768, MLP 3072, 12 heads).
pub fn run(min_seconds: f64) -> KernelReport {
    let threads = rayon::current_num_threads();
    let peak = peak_gmacs(threads);
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
                of_peak: peak.map(|p| rate / p),
            });
        }
        // The fp32 linear layer, as the model's F32 layers call it.
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
    for reference in [true, false] {
        let p50 = median_us(|| attention(reference, &qkv, dims, 0.125, &mut o, None), min_seconds);
        out.push(KernelResult {
            kernel: "attention (12 heads)".into(),
            path: if reference { "portable" } else { "gemm crate + SIMD softmax" }.into(),
            shape: format!("{m} tokens x 64"),
            p50_us: p50,
            rate: (2 * 12 * m * m * 64) as f64 / p50 / 1e3,
            unit: "GMAC/s",
            of_peak: None,
        });
    }
    let mut v = pseudo_random(m * 3072, 5);
    let p50 = median_us(|| v.par_chunks_mut(16 * 1024).for_each(ops::gelu_slice), min_seconds);
    out.push(elementwise("GELU (erf)", "best", m * 3072, p50));
    let (x, y) = (pseudo_random(m * 768, 1), pseudo_random(m * 768, 2));
    let (g, b) = (vec![1.0f32; 768], vec![0.0f32; 768]);
    let (mut s, mut nrm) = (vec![0f32; m * 768], vec![0f32; m * 768]);
    for reference in [true, false] {
        let p50 =
            median_us(|| ops::add_layer_norm(reference, &x, Some(&y), &g, &b, 1e-6, &mut s, &mut nrm), min_seconds);
        out.push(elementwise("add + LayerNorm", if reference { "portable" } else { "best" }, m * 768, p50));
    }
    let mut sm = pseudo_random(12 * m * 208, 9);
    let p50 = median_us(|| sm.par_chunks_mut(208 * 16).for_each(|c| ops::softmax_rows(c, 208)), min_seconds);
    out.push(elementwise("softmax rows of 208", "best", sm.len(), p50));
    KernelReport { threads, peak, results: out }
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
    let mut s = format!(
        "threads: {} | cpu features: {} | int8 peak (vpdpbusd only): {}\n",
        report.threads,
        super::cpu_features().join(" "),
        report.peak.map_or("n/a".into(), |p| format!("{p:.0} GMAC/s"))
    );
    s += &format!("{:<24} {:<26} {:<18} {:>10} {:>14} {:>8}\n", "kernel", "path", "shape", "p50 us", "rate", "of peak");
    for r in &report.results {
        s += &format!(
            "{:<24} {:<26} {:<18} {:>10.1} {:>7.1} {:<6} {:>8}\n",
            r.kernel,
            r.path,
            r.shape,
            r.p50_us,
            r.rate,
            r.unit,
            r.of_peak.map_or(String::new(), |p| format!("{:.0}%", p * 100.0))
        );
    }
    s
}
