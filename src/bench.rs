//! Measurement, done the way careful benchmark tools do it (TFLite `benchmark_model`, trtexec,
//! optimum-benchmark): load time and the first (cold) inference reported apart, then warm-up
//! runs that are thrown away, then timed runs until both a minimum count and a minimum duration
//! are reached. Variants of one model are measured interleaved — one run of each in turn — so
//! drift in the machine (thermal, other load) hits all of them alike. Medians and percentiles,
//! not a single call, are what is reported. The CLI and the GUI's live chart both use this.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::Serialize;

use crate::hub::{DownloadEvent, Hub};
use crate::model::LayerName;
use crate::model::{Capture, Model};
use crate::quant::metrics::{AgreementSummary, compare_logits, summarize};
use crate::quant::sensitivity::KeepFp32;
use crate::quant::{QuantOptions, Scheme, Variant};

/// How long and how often to measure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchConfig {
    /// Untimed runs per variant after the first (cold) one.
    pub warmup: usize,
    /// Timed runs stop once at least this many were made...
    pub min_runs: usize,
    /// ...and at least this much time was spent in them (seconds).
    pub min_seconds: f64,
    /// Hard cap on timed runs, whatever the duration.
    pub max_runs: usize,
    /// Images per forward pass.
    pub batch: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig { warmup: 10, min_runs: 30, min_seconds: 3.0, max_runs: 100_000, batch: 1 }
    }
}

impl BenchConfig {
    /// The one place user-given options (CLI flags, the window's fields, restored settings)
    /// become a config that can run: at least one timed run, a cap of at least one (the cap
    /// wins over `min_runs`), and a finite, non-negative minimum duration. `batch` is left alone: 0 is refused with an error
    /// by [`bench_model`] rather than silently changed.
    pub fn clamped(self) -> BenchConfig {
        let min_runs = self.min_runs.max(1);
        let min_seconds = if self.min_seconds.is_finite() { self.min_seconds.max(0.0) } else { 0.0 };
        BenchConfig { min_runs, min_seconds, max_runs: self.max_runs.max(1), ..self }
    }

    /// Whether measurement is complete after `runs` timed runs taking `elapsed` seconds.
    pub fn done(&self, runs: usize, elapsed: f64) -> bool {
        runs >= self.max_runs || (runs >= self.min_runs && elapsed >= self.min_seconds)
    }
}

/// A source of time, injectable for tests of the stopping rule.
pub trait Clock {
    /// Seconds since an arbitrary origin.
    fn now(&self) -> f64;
}

pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// Summary statistics of latency samples, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Default)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for a single sample.
    pub std: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Percentile of sorted samples by linear interpolation between closest ranks (numpy's default):
/// rank = p/100 · (n - 1).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

pub fn stats(samples: &[f64]) -> Stats {
    if samples.is_empty() {
        return Stats::default();
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let mean = s.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    Stats {
        n,
        min: s[0],
        mean,
        std: var.sqrt(),
        p50: percentile(&s, 50.0),
        p90: percentile(&s, 90.0),
        p99: percentile(&s, 99.0),
        max: s[n - 1],
    }
}

/// What a benchmark reports while it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum BenchEvent {
    Phase {
        model: String,
        phase: String,
    },
    /// One timed run.
    Sample {
        model: String,
        variant: Variant,
        /// The variant as shown (`int8+fp32[3]`): a mixed form measured beside its plain variant
        /// is its own series.
        label: String,
        ms: f64,
        run: usize,
    },
    /// Warm-up progress (runs done of total, all variants together).
    Warmup {
        model: String,
        done: usize,
        total: usize,
    },
}

/// Progress of [`measure_interleaved`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MeasureEvent {
    Warmup {
        done: usize,
        total: usize,
    },
    /// Runner `runner` made its `run`-th timed run, taking `ms`.
    Sample {
        runner: usize,
        ms: f64,
        run: usize,
    },
}

/// Runs every runner `cfg.warmup` times, then measures them interleaved until each satisfies
/// the stopping rule. Returns the per-run samples (ms) of each runner.
pub fn measure_interleaved(
    cfg: &BenchConfig,
    clock: &dyn Clock,
    runners: &mut [&mut dyn FnMut() -> Result<()>],
    on_event: &mut dyn FnMut(MeasureEvent),
) -> Result<Vec<Vec<f64>>> {
    let n = runners.len();
    let total = cfg.warmup * n;
    for round in 0..cfg.warmup {
        for (i, r) in runners.iter_mut().enumerate() {
            r()?;
            on_event(MeasureEvent::Warmup { done: round * n + i + 1, total });
        }
    }
    let mut samples = vec![Vec::new(); runners.len()];
    let mut spent = vec![0f64; runners.len()];
    loop {
        let mut all_done = true;
        for (i, r) in runners.iter_mut().enumerate() {
            if cfg.done(samples[i].len(), spent[i]) {
                continue;
            }
            all_done = false;
            let t = clock.now();
            r()?;
            let dt = clock.now() - t;
            spent[i] += dt;
            samples[i].push(dt * 1000.0);
            on_event(MeasureEvent::Sample { runner: i, ms: dt * 1000.0, run: samples[i].len() });
        }
        if all_done {
            return Ok(samples);
        }
    }
}

/// Where and how the numbers were taken, recorded with every result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Environment {
    pub cpu: String,
    /// Kernel path used and the CPU's SIMD features.
    pub simd: String,
    pub threads: usize,
    /// `cpu` or `cuda`.
    pub device: String,
    /// The GPU's name on CUDA (`NVIDIA H200`); empty on the CPU.
    pub gpu: String,
    pub os: String,
    pub app_version: String,
    pub git_rev: String,
    pub candle_version: String,
    pub timestamp: String,
}

impl Environment {
    pub fn capture(device: &Device) -> Environment {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let os_name = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
        // On CUDA the int8 layers are candle's Q8_0, not our CPU kernel: do not name the latter.
        let simd = if device.is_cpu() {
            simd_summary()
        } else {
            format!(
                "int8 kernel: {}; cpu: {}",
                crate::device::Int8Kernel::CudaQ8_0.id(),
                crate::kernels::cpu_features().join(" ")
            )
        };
        Environment {
            cpu,
            simd,
            threads: rayon::current_num_threads(),
            device: device_name(device),
            gpu: crate::device::gpu_name(device).unwrap_or_default(),
            os: if kernel.is_empty() { os_name } else { format!("{os_name} (Linux {kernel})") },
            app_version: env!("CARGO_PKG_VERSION").to_string(),
            git_rev: env!("VITWB_GIT_REV").to_string(),
            candle_version: env!("VITWB_CANDLE_VERSION").to_string(),
            timestamp: utc_timestamp(std::time::SystemTime::now()),
        }
    }
}

/// `int8 kernel: avx2; f32 kernel: avx2+fma f32; cpu: avx2 fma avx512f ...`.
pub fn simd_summary() -> String {
    let path = crate::kernels::cpu_path();
    format!(
        "int8 kernel: {}; f32 kernel: {}; cpu: {}",
        path.int8.name(),
        crate::kernels::gemm_f32::path_name(path.simd),
        crate::kernels::cpu_features().join(" ")
    )
}

pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

/// ISO 8601 UTC (`2026-11-29T03:20:00Z`) without a date-time dependency.
pub fn utc_timestamp(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak-RSS counter to the current RSS (Linux >= 4.0), so a later
/// [`peak_rss_bytes`] covers only what follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One (model, variant) measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub variant: Variant,
    pub batch: usize,
    pub warmup: usize,
    /// From files to a model ready to run (checkpoint load + quantization), ms.
    pub load_ms: f64,
    /// The first inference after loading (cold caches, lazy initialisation), ms.
    pub first_ms: f64,
    pub stats: Stats,
    pub measured_seconds: f64,
    pub throughput_ips: f64,
    /// Size of the variant as an exported file.
    pub file_bytes: u64,
    pub weight_bytes: usize,
    /// Peak resident memory of the process while this model's variants ran.
    pub peak_rss_bytes: u64,
    /// Against fp32 on the benchmark images; `None` when there is no fp32 to compare with.
    pub accuracy: Option<AgreementSummary>,
    /// Which int8 numerics the quantized layers used (`cpu-per-channel-rowwise`, `cuda-q8_0`);
    /// `None` for fp32, which has none.
    pub int8_kernel: Option<String>,
    /// Layers this quantized variant keeps fp32 (mixed precision); empty for plain variants.
    pub kept_fp32: Vec<LayerName>,
    /// The quantization scheme of int8/mobile rows (`default`, `torch`, ...); empty for fp32.
    #[serde(default)]
    pub scheme: String,
    pub samples_ms: Vec<f64>,
    pub env: Environment,
}

impl BenchResult {
    /// The variant as shown to users ([`Model::label`]): `int8`, `int8[torch]`, `int8+fp32[3]`.
    pub fn label(&self) -> String {
        // An empty scheme (fp32, or a row from before schemes) is the default.
        let scheme = self.scheme.parse().unwrap_or_default();
        crate::model::label_of(self.variant, scheme, &self.kept_fp32)
    }
}

/// The input a benchmark times.
pub enum BenchInput {
    /// A fixed pseudo-random normalised tensor (no image needed).
    Synthetic,
    /// Real images: the batch is made of the first `batch` of them (repeated if fewer), and
    /// every image is classified by every variant for the agreement numbers.
    Images(Vec<(String, RgbImage)>),
}

/// Deterministic pseudo-random input `[batch, 3, s, s]` in the normalised range.
pub fn synthetic_input(batch: usize, size: usize, device: &Device) -> Result<Tensor> {
    let n = batch * 3 * size * size;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    Ok(Tensor::from_vec(v, (batch, 3, size, size), device)?)
}

/// What to benchmark: the variants of one model on one input.
pub struct BenchJob<'a> {
    /// Hub id, folder or exported file.
    pub spec: &'a str,
    pub variants: &'a [Variant],
    pub cfg: &'a BenchConfig,
    pub input: &'a BenchInput,
    /// Set from another thread to stop the benchmark (it then returns [`Cancelled`]).
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
    /// Layers kept fp32 in a mixed-precision form measured beside each quantized variant
    /// (keeping none: no mixed form).
    pub keep: &'a KeepFp32,
    /// Each quantized variant is made once per scheme ([`load_variants_with`]); none: the default.
    pub schemes: &'a [Scheme],
}

/// The benchmark was stopped by the user (through [`BenchJob::cancel`]). A typed error so the
/// caller recognises it by downcast, whatever context was added on the way up.
#[derive(Debug, thiserror::Error)]
#[error("benchmark cancelled")]
pub struct Cancelled;

/// One variant, ready to be measured: everything about it that is not a timed run.
pub struct PreparedVariant {
    pub model: Model,
    /// From files to a model ready to run (checkpoint load + quantization), ms.
    pub load_ms: f64,
    /// Size as an exported file (0 off the CPU, where nothing is exported).
    pub file_bytes: u64,
    /// Against fp32 on the benchmark inputs; `None` without an fp32 reference.
    pub accuracy: Option<AgreementSummary>,
    /// The first (cold) inference on the timed input, ms.
    pub first_ms: f64,
}

/// A model's variants prepared for measurement, with the input they are timed on.
pub struct Prepared {
    pub spec: String,
    /// The model as loaded (fp32 for checkpoints, the stored variant for exported files).
    pub source: Model,
    pub variants: Vec<PreparedVariant>,
    /// `[batch, 3, s, s]`, normalised.
    pub input: Tensor,
}

/// A model as loaded and each requested variant made from it, with the time each took (the
/// shared load counted in every one). Used by `bench`, `eval` and `profile`.
pub fn load_variants(
    spec: &str,
    variants: &[Variant],
    hub: &Hub,
    device: &Device,
    on_download: &mut dyn FnMut(DownloadEvent),
) -> Result<(Model, Vec<(Model, f64)>)> {
    load_variants_with(spec, variants, &[], hub, device, on_download)
}

/// [`load_variants`], each quantized variant once per scheme (in the order given; fp32 once).
/// `schemes` empty: the default scheme, and an exported file's variant as it is stored; given,
/// an exported file whose scheme is not among them is refused.
pub fn load_variants_with(
    spec: &str,
    variants: &[Variant],
    schemes: &[Scheme],
    hub: &Hub,
    device: &Device,
    on_download: &mut dyn FnMut(DownloadEvent),
) -> Result<(Model, Vec<(Model, f64)>)> {
    if variants.is_empty() {
        bail!("no variants given");
    }
    let t0 = Instant::now();
    let source = crate::zoo::load_model_as_is(spec, hub, device, on_download)?;
    let base_load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let explicit = !schemes.is_empty();
    let schemes = crate::quant::scheme::distinct_or_default(schemes);
    let mut made = Vec::new();
    for v in variants {
        // fp32, and the variant an exported file holds, exist once: no scheme makes them again.
        let stored = *v != Variant::Fp32 && *v == source.variant;
        if stored && explicit {
            schemes.iter().try_for_each(|s| crate::quant::check_scheme(&source, s))?;
        }
        let once = *v == Variant::Fp32 || stored;
        for scheme in if once { &schemes[..1] } else { &schemes[..] } {
            let t = Instant::now();
            let m = source
                .to_variant(*v, QuantOptions::with_scheme(*scheme))
                .with_context(|| format!("cannot make the {v} variant of {spec}"))?;
            made.push((m, base_load_ms + t.elapsed().as_secs_f64() * 1000.0));
        }
    }
    Ok((source, made))
}

/// `made` with, after each quantized variant, the same variant keeping `keep`'s layers fp32.
fn with_mixed(
    source: &Model,
    made: Vec<(Model, f64)>,
    keep: &KeepFp32,
    input: &BenchInput,
) -> Result<Vec<(Model, f64)>> {
    if source.variant != Variant::Fp32 {
        bail!(
            "--keep-fp32 needs the fp32 model (mixed variants are made from it); {} holds {}",
            source.display_name(),
            source.label()
        );
    }
    let calibration = if keep.needs_images() {
        let imgs = match input {
            BenchInput::Images(imgs) => imgs.iter().map(|(_, i)| i.clone()).collect(),
            BenchInput::Synthetic => {
                log::warn!("no --images: --keep-fp32 ranks the layers on the bundled sample photo");
                vec![crate::quant::sensitivity::sample_image()?]
            }
        };
        Some(source.preprocess_batch(&imgs)?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (model, load_ms) in made {
        let (variant, scheme) = (model.variant, model.scheme().unwrap_or_default());
        out.push((model, load_ms));
        if variant == Variant::Fp32 {
            continue;
        }
        let t = Instant::now();
        let opts = QuantOptions::with_scheme(scheme);
        let kept = keep.resolve(source, variant, &opts, calibration.as_ref(), &mut |n| log::info!("{n}"))?;
        if kept.is_empty() {
            continue; // the plain variant already is this one
        }
        let mixed = source.to_variant(variant, QuantOptions { keep_fp32: kept, ..opts })?;
        out.push((mixed, load_ms + t.elapsed().as_secs_f64() * 1000.0));
    }
    Ok(out)
}

/// The timed input of a job: a synthetic tensor, or the first `batch` images (repeated if fewer).
pub fn timed_input(source: &Model, batch: usize, input: &BenchInput) -> Result<Tensor> {
    match input {
        BenchInput::Synthetic => synthetic_input(batch, source.config.image_size, &source.device),
        BenchInput::Images(imgs) => {
            if imgs.is_empty() {
                bail!("no images to benchmark on");
            }
            let batch: Vec<RgbImage> = (0..batch).map(|i| imgs[i % imgs.len()].1.clone()).collect();
            source.preprocess_batch(&batch)
        }
    }
}

/// Phase 1: load, make the variants, learn their sizes and accuracy against fp32, build the
/// timed input and make the first (cold) inference of each. Each quantized variant is made once
/// per scheme of the job, with its mixed-precision form beside it when the job keeps layers
/// fp32; the `auto:` forms rank the layers on the benchmark images, or on the bundled sample
/// photo when the input is synthetic.
pub fn prepare(
    job: &BenchJob,
    hub: &Hub,
    device: &Device,
    on_download: &mut dyn FnMut(DownloadEvent),
    on_event: &mut dyn FnMut(BenchEvent),
) -> Result<Prepared> {
    let BenchJob { spec, variants, cfg, input, keep, schemes, .. } = *job;
    if variants.is_empty() {
        bail!("no variants to benchmark");
    }
    if cfg.batch == 0 {
        bail!("batch size must be at least 1");
    }
    let phase = |on_event: &mut dyn FnMut(BenchEvent), p: &str| {
        on_event(BenchEvent::Phase { model: spec.to_string(), phase: p.to_string() })
    };
    phase(on_event, "loading");
    let (source, made) = load_variants_with(spec, variants, schemes, hub, device, on_download)?;
    let made = if keep.is_none() {
        made
    } else {
        phase(on_event, "mixed precision");
        with_mixed(&source, made, keep, input)?
    };

    phase(on_event, "sizes and accuracy");
    let reference = (source.variant == Variant::Fp32).then_some(&source);
    let synthetic_logits = match (reference, input) {
        (Some(r), BenchInput::Synthetic) => {
            let x = synthetic_input(1, r.config.image_size, device)?;
            Some((r.forward(&x, Capture::NONE)?.logits.flatten_all()?.to_vec1::<f32>()?, x))
        }
        _ => None,
    };
    let mut prepared = Vec::new();
    for (model, load_ms) in made {
        // Serialised only to learn the size a user would get from `export`.
        let file_bytes = if model.device.is_cpu() { crate::quant::export::serialize(&model)?.len() as u64 } else { 0 };
        let accuracy = match (reference, input, &synthetic_logits) {
            (Some(r), BenchInput::Images(imgs), _) => Some(agreement_over(r, &model, imgs)?),
            (Some(_), BenchInput::Synthetic, Some((rl, x))) => {
                let ml = model.forward(x, Capture::NONE)?.logits.flatten_all()?.to_vec1::<f32>()?;
                Some(summarize(&[compare_logits(rl, &ml)]))
            }
            _ => None,
        };
        prepared.push(PreparedVariant { model, load_ms, file_bytes, accuracy, first_ms: 0.0 });
    }

    let x = timed_input(&source, cfg.batch, input)?;
    phase(on_event, "first inference");
    for p in &mut prepared {
        let t = Instant::now();
        run_once(&p.model, &x)?;
        p.first_ms = t.elapsed().as_secs_f64() * 1000.0;
    }
    Ok(Prepared { spec: spec.to_string(), source, variants: prepared, input: x })
}

/// Phase 2: warm-up and interleaved timed runs. Returns the samples (ms) of each variant and the
/// process's peak resident memory over them. Stops with [`Cancelled`] when the job's flag is set.
pub fn measure(
    prepared: &Prepared,
    cfg: &BenchConfig,
    cancel: Option<&std::sync::atomic::AtomicBool>,
    on_event: &mut dyn FnMut(BenchEvent),
) -> Result<(Vec<Vec<f64>>, u64)> {
    let spec = prepared.spec.as_str();
    let cancelled = || cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed));
    on_event(BenchEvent::Phase { model: spec.to_string(), phase: "warm-up".to_string() });
    reset_peak_rss();
    let clock = SystemClock::default();
    let x = &prepared.input;
    let mut closures: Vec<Box<dyn FnMut() -> Result<()>>> = prepared
        .variants
        .iter()
        .map(|p| {
            Box::new(move || {
                if cancelled() {
                    return Err(Cancelled.into());
                }
                run_once(&p.model, x)
            }) as Box<dyn FnMut() -> Result<()>>
        })
        .collect();
    let mut runners: Vec<&mut dyn FnMut() -> Result<()>> =
        closures.iter_mut().map(|c| c.as_mut() as &mut dyn FnMut() -> Result<()>).collect();
    // Named once, not between timed runs.
    let labels: Vec<String> = prepared.variants.iter().map(|p| p.model.label()).collect();
    let mut measuring_announced = false;
    let samples = measure_interleaved(cfg, &clock, &mut runners, &mut |ev| match ev {
        MeasureEvent::Warmup { done, total } => on_event(BenchEvent::Warmup { model: spec.to_string(), done, total }),
        MeasureEvent::Sample { runner, ms, run } => {
            if !measuring_announced {
                measuring_announced = true;
                on_event(BenchEvent::Phase { model: spec.to_string(), phase: "measuring".to_string() });
            }
            let variant = prepared.variants[runner].model.variant;
            let label = labels[runner].clone();
            on_event(BenchEvent::Sample { model: spec.to_string(), variant, label, ms, run });
        }
    })?;
    Ok((samples, peak_rss_bytes().unwrap_or(0)))
}

/// Phase 3: one result row per variant from what was prepared and measured.
pub fn assemble(
    prepared: &Prepared,
    cfg: &BenchConfig,
    samples: Vec<Vec<f64>>,
    peak_rss_bytes: u64,
    env: &Environment,
) -> Vec<BenchResult> {
    prepared
        .variants
        .iter()
        .zip(samples)
        .map(|(p, samples_ms)| {
            let st = stats(&samples_ms);
            BenchResult {
                model: prepared.spec.clone(),
                variant: p.model.variant,
                batch: cfg.batch,
                warmup: cfg.warmup,
                load_ms: p.load_ms,
                first_ms: p.first_ms,
                measured_seconds: samples_ms.iter().sum::<f64>() / 1000.0,
                throughput_ips: if st.mean > 0.0 { cfg.batch as f64 * 1000.0 / st.mean } else { 0.0 },
                stats: st,
                file_bytes: p.file_bytes,
                weight_bytes: p.model.weight_bytes(),
                peak_rss_bytes,
                accuracy: p.accuracy.clone(),
                int8_kernel: (p.model.variant != Variant::Fp32).then(|| {
                    let kernel = crate::device::Int8Kernel::for_device(&p.model.device).id();
                    // Our CPU kernels under another scheme are not per-channel/per-row numerics.
                    match p.model.scheme().filter(|s| !s.is_default()) {
                        Some(_) if p.model.device.is_cpu() => "cpu-scheme".to_string(),
                        _ => kernel.to_string(),
                    }
                }),
                kept_fp32: p.model.fp32_layers(),
                scheme: p.model.scheme().map(|s| s.name()).unwrap_or_default(),
                samples_ms,
                env: env.clone(),
            }
        })
        .collect()
}

/// Benchmarks the variants of one model: [`prepare`], [`measure`], [`assemble`]. `on_event` sees
/// phases and every timed sample.
pub fn bench_model(
    job: &BenchJob,
    hub: &Hub,
    device: &Device,
    on_download: &mut dyn FnMut(DownloadEvent),
    on_event: &mut dyn FnMut(BenchEvent),
) -> Result<Vec<BenchResult>> {
    let prepared = prepare(job, hub, device, on_download, on_event)?;
    let (samples, peak) = measure(&prepared, job.cfg, job.cancel, on_event)?;
    Ok(assemble(&prepared, job.cfg, samples, peak, &Environment::capture(device)))
}

/// One forward pass, finished: on CUDA the device is synchronised so the time is the kernel's,
/// not the launch's.
fn run_once(m: &Model, x: &Tensor) -> Result<()> {
    let out = m.forward(x, Capture::NONE)?;
    if !m.device.is_cpu() {
        m.device.synchronize()?;
    }
    drop(out);
    Ok(())
}

fn agreement_over(reference: &Model, m: &Model, imgs: &[(String, RgbImage)]) -> Result<AgreementSummary> {
    let mut items = Vec::new();
    for (_, img) in imgs {
        let x = reference.preprocess(img)?;
        let a = reference.forward(&x, Capture::NONE)?.logits.flatten_all()?.to_vec1::<f32>()?;
        let b = m.forward(&x, Capture::NONE)?.logits.flatten_all()?.to_vec1::<f32>()?;
        items.push(compare_logits(&a, &b));
    }
    Ok(summarize(&items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn percentiles_match_hand_computed_values() {
        // n = 1: every percentile is the sample.
        let one = stats(&[7.0]);
        assert_eq!((one.min, one.p50, one.p90, one.p99, one.max, one.std), (7.0, 7.0, 7.0, 7.0, 7.0, 0.0));
        // Odd n = 5, unsorted input: p50 is the middle; p90 at rank 3.6 = 4 + 0.6·(10 - 4) = 7.6.
        let odd = stats(&[10.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!(odd.p50, 3.0);
        assert!((odd.p90 - 7.6).abs() < 1e-12);
        assert!((odd.p99 - (4.0 + 0.96 * 6.0)).abs() < 1e-12);
        assert_eq!(odd.mean, 4.0);
        // sample std: deviations 6, -3, 0, -2, -1 -> 50 / 4.
        assert!((odd.std - 12.5f64.sqrt()).abs() < 1e-12);
        // Even n = 4: p50 halfway between the middle two; p90 at rank 2.7 = 3 + 0.7·(5 - 3).
        let even = stats(&[1.0, 2.0, 3.0, 5.0]);
        assert_eq!(even.p50, 2.5);
        assert!((even.p90 - 4.4).abs() < 1e-12);
        assert_eq!((even.min, even.max), (1.0, 5.0));
        // n = 2.
        let two = stats(&[2.0, 4.0]);
        assert_eq!((two.p50, two.p99), (3.0, 2.0 + 0.99 * 2.0));
    }

    struct FakeClock(Cell<f64>);
    impl Clock for FakeClock {
        fn now(&self) -> f64 {
            self.0.get()
        }
    }

    fn run_with(cfg: &BenchConfig, step: f64) -> (Vec<Vec<f64>>, usize) {
        let clock = FakeClock(Cell::new(0.0));
        let calls = Cell::new(0usize);
        let mut f = || {
            clock.0.set(clock.0.get() + step);
            calls.set(calls.get() + 1);
            Ok(())
        };
        let mut g = || {
            clock.0.set(clock.0.get() + step * 2.0);
            Ok(())
        };
        let mut runners: Vec<&mut dyn FnMut() -> Result<()>> = vec![&mut f, &mut g];
        let s = measure_interleaved(cfg, &clock, &mut runners, &mut |_| {}).unwrap();
        (s, calls.get())
    }

    #[test]
    fn stops_at_min_runs_when_runs_are_slow() {
        // 0.5 s a run, min 3 runs or 1 s: the count is the binding limit for the slow runner
        // too (3 runs · 1 s = 3 s >= 1 s).
        let cfg = BenchConfig { warmup: 2, min_runs: 3, min_seconds: 1.0, max_runs: 1000, batch: 1 };
        let (s, calls) = run_with(&cfg, 0.5);
        assert_eq!(s[0].len(), 3);
        assert_eq!(s[1].len(), 3);
        assert_eq!(calls, 2 + 3, "warm-up runs are made but not timed");
        assert!(s[0].iter().all(|&ms| (ms - 500.0).abs() < 1e-9));
        assert!(s[1].iter().all(|&ms| (ms - 1000.0).abs() < 1e-9));
    }

    #[test]
    fn stops_at_min_duration_when_runs_are_fast() {
        // 10 ms a run, min 3 runs and 1 s: the duration binds: 100 runs of the first runner,
        // 50 of the second (20 ms each).
        let cfg = BenchConfig { warmup: 0, min_runs: 3, min_seconds: 1.0, max_runs: 100_000, batch: 1 };
        let (s, _) = run_with(&cfg, 0.01);
        assert!((100..=101).contains(&s[0].len()), "{}", s[0].len());
        assert!((50..=51).contains(&s[1].len()), "{}", s[1].len());
    }

    #[test]
    fn max_runs_caps_measurement() {
        let cfg = BenchConfig { warmup: 0, min_runs: 3, min_seconds: 1e9, max_runs: 7, batch: 1 };
        let (s, _) = run_with(&cfg, 0.01);
        assert_eq!((s[0].len(), s[1].len()), (7, 7));
    }

    #[test]
    fn clamped_config_always_runs() {
        let wild = BenchConfig { warmup: 0, min_runs: 0, min_seconds: f64::NAN, max_runs: 0, batch: 4 };
        let c = wild.clamped();
        assert_eq!((c.min_runs, c.max_runs, c.min_seconds, c.batch), (1, 1, 0.0, 4));
        let c = BenchConfig { min_seconds: -5.0, ..BenchConfig::default() }.clamped();
        assert_eq!(c.min_seconds, 0.0);
        let c = BenchConfig { min_seconds: f64::INFINITY, ..BenchConfig::default() }.clamped();
        assert_eq!(c.min_seconds, 0.0);
        // Sane values pass through; the cap still wins over min_runs.
        let sane = BenchConfig { warmup: 3, min_runs: 50, min_seconds: 2.5, max_runs: 10, batch: 2 };
        assert_eq!(sane.clone().clamped(), sane);
        assert!(!c.done(0, 1e9), "no result without a timed run");
    }

    #[test]
    fn timestamps_are_iso_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_923_296); // 2026-11-29T03:34:56Z
        assert_eq!(utc_timestamp(t), "2026-11-29T03:34:56Z");
        assert_eq!(utc_timestamp(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00Z");
    }
}
