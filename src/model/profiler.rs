//! Per-stage timing of a forward pass. Off by default: the forward takes an
//! `Option<&mut Profiler>`, and with `None` a stage is only its closure (no clock read, no
//! allocation). Stages are timed on the calling thread; every CPU op is synchronous, so a
//! stage's time is its kernels' time. (On CUDA, ops are asynchronous and stage times are launch
//! times: profile on the CPU.)

use std::time::Instant;

/// One stage of one forward.
#[derive(Clone, Debug, PartialEq)]
pub struct StageTiming {
    /// `patch embed`, `norm1+qkv` (fused), `norm1`, `qkv`, `attention`, `proj`, `norm2+fc1`
    /// (fused), `norm2`, `fc1`, `fc2`, `final norm`, `head`.
    pub stage: &'static str,
    /// The transformer block, `None` outside the blocks.
    pub block: Option<usize>,
    /// Start, ms since the profiler was made.
    pub start_ms: f64,
    pub ms: f64,
    /// Multiply-accumulates of the stage's matmuls (0 for element-wise stages).
    pub macs: u64,
}

/// Collects [`StageTiming`]s; reuse one across runs (clear it with [`Profiler::take`]).
#[derive(Debug)]
pub struct Profiler {
    origin: Instant,
    stages: Vec<StageTiming>,
}

impl Default for Profiler {
    fn default() -> Self {
        Profiler { origin: Instant::now(), stages: Vec::with_capacity(128) }
    }
}

impl Profiler {
    /// The stages recorded since the last call, in order.
    pub fn take(&mut self) -> Vec<StageTiming> {
        std::mem::take(&mut self.stages)
    }

    /// Runs `f` as stage `stage`.
    pub fn time<R>(&mut self, stage: &'static str, block: Option<usize>, macs: u64, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        let end = Instant::now();
        self.stages.push(StageTiming {
            stage,
            block,
            start_ms: (t - self.origin).as_secs_f64() * 1000.0,
            ms: (end - t).as_secs_f64() * 1000.0,
            macs,
        });
        r
    }
}

/// False in builds with the `no-profiler` feature: the reference the cost of the profiler
/// (compiled in, switched off) is measured against.
pub const PROFILER_COMPILED_IN: bool = !cfg!(feature = "no-profiler");

/// Runs `f`, timed as a stage when a profiler is given.
#[inline(always)]
pub fn stage<R>(
    prof: Option<&mut Profiler>,
    stage: &'static str,
    block: Option<usize>,
    macs: impl FnOnce() -> u64,
    f: impl FnOnce() -> R,
) -> R {
    match prof {
        Some(p) if PROFILER_COMPILED_IN => p.time(stage, block, macs(), f),
        _ => f(),
    }
}
