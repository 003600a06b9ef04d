//! Where a forward's time goes: every stage of a real forward timed per variant (medians over
//! runs), checked against the same forward without profiling, and written as a Chrome trace.

use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::bench::{Stats, stats, synthetic_input};
use crate::model::profiler::{Profiler, StageTiming};
use crate::model::{Capture, Model};
use crate::quant::Variant;

/// The stage sum may differ from the un-profiled forward's p50 by at most this fraction.
pub const TOLERANCE: f64 = 0.10;

/// One stage, summed over the blocks, median over the runs.
#[derive(Clone, Debug, Serialize)]
pub struct StageSummary {
    pub stage: &'static str,
    /// How many times it runs per forward (the number of blocks for block stages, else 1).
    pub count: usize,
    pub p50_ms: f64,
    /// p50_ms / the stage sum.
    pub share: f64,
    /// Multiply-accumulates per forward (0: not a matmul).
    pub macs: u64,
}

impl StageSummary {
    pub fn gmacs_per_s(&self) -> Option<f64> {
        (self.macs > 0 && self.p50_ms > 0.0).then(|| self.macs as f64 / (self.p50_ms * 1e6))
    }
}

/// One variant profiled.
#[derive(Clone, Debug, Serialize)]
pub struct VariantProfile {
    pub variant: Variant,
    /// The norms are fused into the int8 layers after them (one stage each).
    pub fused: bool,
    pub stages: Vec<StageSummary>,
    /// Median over runs of the sum of every stage of a forward.
    pub stage_sum_p50_ms: f64,
    /// The same forward without a profiler, interleaved with the profiled runs.
    pub forward: Stats,
    /// The profiled forward, end to end.
    pub profiled: Stats,
    pub forward_p50_ms: f64,
    /// Every stage of every profiled run.
    #[serde(skip)]
    pub runs: Vec<Vec<StageTiming>>,
}

impl VariantProfile {
    /// Whether the stage sum is within [`TOLERANCE`] of the un-profiled forward's p50.
    pub fn within_tolerance(&self) -> bool {
        (self.stage_sum_p50_ms - self.forward_p50_ms).abs() <= TOLERANCE * self.forward_p50_ms
    }
}

fn median(v: &[f64]) -> f64 {
    stats(v).p50
}

/// Profiles each model on one synthetic image: `warmup` untimed runs, then `runs` rounds in which
/// each model makes one forward without profiling and one with (interleaved, so both see the
/// same machine).
pub fn profile(models: &[&Model], warmup: usize, runs: usize) -> Result<Vec<VariantProfile>> {
    profile_cancellable(models, warmup, runs, None, &mut |_, _| {})
}

/// The profiling was stopped by the user (the window's Cancel); a typed error the worker
/// recognises by downcast.
#[derive(Debug, thiserror::Error)]
#[error("profiling cancelled")]
pub struct Cancelled;

/// [`profile`], reporting each finished round as `(done, runs)` and stopping with [`Cancelled`]
/// before the next round once `cancel` is set.
pub fn profile_cancellable(
    models: &[&Model],
    warmup: usize,
    runs: usize,
    cancel: Option<&std::sync::atomic::AtomicBool>,
    on_round: &mut dyn FnMut(usize, usize),
) -> Result<Vec<VariantProfile>> {
    let cancelled = || cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed));
    let Some(first) = models.first() else { bail!("no variants to profile") };
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let x = synthetic_input(1, first.config.image_size, &first.device)?;
    let mut profiler = Profiler::default();
    for _ in 0..warmup {
        for m in models {
            m.forward(&x, Capture::NONE)?;
            m.forward_profiled(&x, Capture::NONE, Some(&mut profiler))?;
            profiler.take();
        }
    }
    let mut plain = vec![Vec::new(); models.len()];
    let mut profiled = vec![Vec::new(); models.len()];
    let mut stage_runs: Vec<Vec<Vec<StageTiming>>> = vec![Vec::new(); models.len()];
    for run in 0..runs {
        if cancelled() {
            return Err(Cancelled.into());
        }
        for (i, m) in models.iter().enumerate() {
            // Alternate which of the pair goes first: the second finds the caches the first warmed.
            for profiled_now in [run % 2 == 1, run % 2 == 0] {
                let t = Instant::now();
                if profiled_now {
                    m.forward_profiled(&x, Capture::NONE, Some(&mut profiler))?;
                    profiled[i].push(t.elapsed().as_secs_f64() * 1000.0);
                    stage_runs[i].push(profiler.take());
                } else {
                    m.forward(&x, Capture::NONE)?;
                    plain[i].push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        on_round(run + 1, runs);
    }
    Ok(models
        .iter()
        .zip(plain)
        .zip(profiled)
        .zip(stage_runs)
        .map(|(((m, plain), profiled), runs)| summarise(m, &plain, &profiled, runs))
        .collect())
}

fn summarise(m: &Model, plain: &[f64], profiled: &[f64], runs: Vec<Vec<StageTiming>>) -> VariantProfile {
    // Stage order as in the first run.
    let mut names: Vec<&'static str> = Vec::new();
    for s in &runs[0] {
        if !names.contains(&s.stage) {
            names.push(s.stage);
        }
    }
    let stage_sum_p50_ms = median(&runs.iter().map(|r| r.iter().map(|s| s.ms).sum()).collect::<Vec<f64>>());
    let stages = names
        .iter()
        .map(|&name| {
            let of = |r: &Vec<StageTiming>| r.iter().filter(|s| s.stage == name).map(|s| s.ms).sum::<f64>();
            let p50_ms = median(&runs.iter().map(of).collect::<Vec<_>>());
            let in_first = runs[0].iter().filter(|s| s.stage == name);
            StageSummary {
                stage: name,
                count: in_first.clone().count(),
                p50_ms,
                share: if stage_sum_p50_ms > 0.0 { p50_ms / stage_sum_p50_ms } else { 0.0 },
                macs: in_first.map(|s| s.macs).sum(),
            }
        })
        .collect();
    let forward = stats(plain);
    VariantProfile {
        variant: m.variant,
        fused: names.contains(&"norm1+qkv"),
        stages,
        stage_sum_p50_ms,
        forward_p50_ms: forward.p50,
        forward,
        profiled: stats(profiled),
        runs,
    }
}

/// The table `profile` prints.
pub fn table(model: &str, report: &[VariantProfile]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let runs = report.first().map_or(0, |v| v.runs.len());
    let _ = writeln!(
        s,
        "{model}: cpu, {} threads, batch 1, synthetic input; medians over {runs} runs; {}",
        rayon::current_num_threads(),
        crate::bench::simd_summary()
    );
    for v in report {
        let how = if v.fused {
            "each norm fused into the int8 layer after it: timed as one stage"
        } else {
            "norms and layers run separately"
        };
        let _ = writeln!(s, "\n{} ({how})", v.variant);
        let _ = writeln!(s, "{:<18} {:>5} {:>9} {:>7} {:>9}", "stage", "x", "ms", "%", "GMAC/s");
        for st in &v.stages {
            let line = format!(
                "{:<18} {:>5} {:>9.3} {:>6.1}% {:>9}",
                st.stage,
                st.count,
                st.p50_ms,
                100.0 * st.share,
                st.gmacs_per_s().map(|g| format!("{g:.1}")).unwrap_or_default()
            );
            let _ = writeln!(s, "{}", line.trim_end());
        }
        let ratio = v.stage_sum_p50_ms / v.forward_p50_ms;
        let _ = writeln!(
            s,
            "stage sum {:.2} ms; forward without profiling p50 {:.2} ms (profiled forward p50 {:.2} ms); sum/forward {:.3}: {}",
            v.stage_sum_p50_ms,
            v.forward_p50_ms,
            v.profiled.p50,
            ratio,
            if v.within_tolerance() { "within 10%" } else { "NOT within 10%" }
        );
    }
    s
}

/// A Chrome trace (Trace Event Format): one complete event per stage per run, one track per
/// variant; opens in ui.perfetto.dev and chrome://tracing.
pub fn chrome_trace(report: &[VariantProfile]) -> Value {
    let mut events = Vec::new();
    for (vi, v) in report.iter().enumerate() {
        let tid = vi + 1;
        events
            .push(json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": v.variant.name()}}));
        for (run, stages) in v.runs.iter().enumerate() {
            for st in stages {
                events.push(json!({
                    "name": st.stage,
                    "cat": v.variant.name(),
                    "ph": "X",
                    "ts": st.start_ms * 1000.0,
                    "dur": st.ms * 1000.0,
                    "pid": 1,
                    "tid": tid,
                    "args": {"run": run, "block": st.block, "macs": st.macs},
                }));
            }
        }
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}
