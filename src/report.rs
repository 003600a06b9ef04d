//! The CSV benchmark report: one row per (model, variant, device, threads, batch), a fixed
//! column order (tests pin it), written atomically.

use std::path::Path;

use anyhow::Result;

use crate::bench::BenchResult;
use crate::quant::Variant;

/// The report's columns, in order. The first 30 are the documented core schema; columns are
/// only ever appended.
pub const COLUMNS: &[&str] = &[
    "model",
    "variant",
    "device",
    "threads",
    "batch",
    "runs",
    "load_ms",
    "first_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "throughput_ips",
    "file_bytes",
    "weight_bytes",
    "peak_rss_bytes",
    "top1_agreement",
    "top5_overlap",
    "kl_div",
    "max_abs_dlogit",
    "cpu",
    "simd",
    "os",
    "app_version",
    "git_rev",
    "candle_version",
    "timestamp",
    // Appended after the core schema.
    "warmup",
    "measured_s",
    "speedup_vs_fp32",
    "size_vs_fp32",
    "min_cosine",
    "agreement_images",
    "int8_kernel",
    "gpu",
    "kept_fp32",
    "scheme",
];

/// Columns of the per-run samples CSV.
pub const RAW_COLUMNS: &[&str] =
    &["model", "variant", "device", "threads", "batch", "run", "ms", "kept_fp32", "scheme"];

fn num(v: f64) -> String {
    // Enough digits to round-trip the milliseconds we measure; no exponent for readability.
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" { "0".to_string() } else { s.to_string() }
}

/// The report row of `r`; `all` gives the fp32 result of the same model for the relative
/// columns.
pub fn row(r: &BenchResult, all: &[BenchResult]) -> Vec<String> {
    let fp32 = all.iter().find(|o| {
        o.model == r.model && o.variant == Variant::Fp32 && o.batch == r.batch && o.env.device == r.env.device
    });
    let s = &r.stats;
    let acc = r.accuracy.as_ref();
    let opt = |v: Option<f64>| v.map(num).unwrap_or_default();
    vec![
        r.model.clone(),
        r.variant.name().to_string(),
        r.env.device.clone(),
        r.env.threads.to_string(),
        r.batch.to_string(),
        s.n.to_string(),
        num(r.load_ms),
        num(r.first_ms),
        num(s.mean),
        num(s.std),
        num(s.min),
        num(s.p50),
        num(s.p90),
        num(s.p99),
        num(s.max),
        num(r.throughput_ips),
        r.file_bytes.to_string(),
        r.weight_bytes.to_string(),
        r.peak_rss_bytes.to_string(),
        opt(acc.map(|a| a.top1_agreement)),
        opt(acc.map(|a| a.top5_overlap)),
        opt(acc.map(|a| a.mean_kl_div)),
        opt(acc.map(|a| a.max_abs_dlogit as f64)),
        r.env.cpu.clone(),
        r.env.simd.clone(),
        r.env.os.clone(),
        r.env.app_version.clone(),
        r.env.git_rev.clone(),
        r.env.candle_version.clone(),
        r.env.timestamp.clone(),
        r.warmup.to_string(),
        num(r.measured_seconds),
        opt(fp32.filter(|_| s.p50 > 0.0).map(|f| f.stats.p50 / s.p50)),
        opt(fp32.filter(|f| f.file_bytes > 0).map(|f| r.file_bytes as f64 / f.file_bytes as f64)),
        opt(acc.map(|a| a.min_cosine)),
        acc.map(|a| a.images.to_string()).unwrap_or_default(),
        r.int8_kernel.clone().unwrap_or_default(),
        r.env.gpu.clone(),
        crate::quant::export::join_layers(&r.kept_fp32, ";"),
        r.scheme.clone(),
    ]
}

/// The whole report as CSV text.
pub fn to_csv(results: &[BenchResult]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS)?;
    for r in results {
        w.write_record(row(r, results))?;
    }
    Ok(w.into_inner()?)
}

/// Per-run samples as CSV text.
pub fn raw_to_csv(results: &[BenchResult]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(RAW_COLUMNS)?;
    for r in results {
        for (i, ms) in r.samples_ms.iter().enumerate() {
            w.write_record([
                r.model.clone(),
                r.variant.name().to_string(),
                r.env.device.clone(),
                r.env.threads.to_string(),
                r.batch.to_string(),
                (i + 1).to_string(),
                num(*ms),
                crate::quant::export::join_layers(&r.kept_fp32, ";"),
                r.scheme.clone(),
            ])?;
        }
    }
    Ok(w.into_inner()?)
}

/// Writes the report atomically: an error leaves no partial file (and an old report intact).
pub fn write_csv(path: &Path, results: &[BenchResult]) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_csv(results)?)
}

pub fn write_raw_csv(path: &Path, results: &[BenchResult]) -> Result<()> {
    crate::fsutil::write_atomic(path, &raw_to_csv(results)?)
}
