//! Our CPU kernels, behind one interface with run-time CPU-feature dispatch.
//!
//! Why our own: candle's quantized matmul (`QMatMul`) has no batched path, is slower than its
//! own f32 matmul at ViT widths 192/384, and its K-quants need widths divisible by 256; torch's
//! `quantize_dynamic` equivalent — int8 weights per output channel, activations quantized per
//! row on the fly, int32 accumulation, fp32 epilogue — has no candle implementation at all.
//! For f32 products the `gemm` crate (candle's own backend, with its AVX-512 kernels enabled)
//! was our first choice, but it packs both operands on every call; the weights never change,
//! so [`gemm_f32`] packs them once and reads activations in place (90-94% of the FMA peak on
//! ViT-B shapes where the crate reached 80-85%). The crate stays for CPUs without AVX2+FMA.
//! Around the products we add what candle's graph lacked: attention read in place from the qkv
//! projection, a vectorised softmax, GELU and residual-add + LayerNorm, and no hand-offs
//! between small ops.
//!
//! - [`gemm_i8`]: the int8 linear layer — types, `Kernel` trait, blocked driver, dispatch and
//!   portable path in the parent; one leaf file per SIMD family (`avx512`, `ymm`).
//! - [`gemm_f32`]: f32 GEMM with prepacked B — the fp32 linear layers and attention's products;
//!   types, `Kernel` trait, drivers and dispatch in the parent, one leaf per SIMD family.
//! - [`linear_f32`]: the fp32 linear layer through the `gemm` crate (CPUs without AVX2+FMA).
//! - [`attention`]: multi-head attention over the fused qkv projection.
//! - [`ops`]: GELU, exp, softmax, residual add + LayerNorm.
//! - [`mod@bench`]: the `vit-workbench kernels` micro-benchmark.
//!
//! Every kernel has a portable implementation that is the reference forever: faster SIMD paths
//! are added behind [`Isa`] and tested against it (`tests/kernels.rs`). The path is resolved once
//! per process into a [`CpuPath`] that every kernel honours, so `VITWB_ISA=portable` runs the
//! portable code everywhere (the f32 products then go through the `gemm` crate, which chooses
//! its own instructions) and `VITWB_ISA=avx2` runs what an AVX2-only CPU would, f32 products
//! included.
//! The kernels reach candle as `CustomOp`s (`crate::model::fused`, `crate::quant::int8`); on
//! CUDA, candle's own ops are used instead.

pub mod attention;
pub mod bench;
pub mod gemm_f32;
pub mod gemm_i8;
pub mod linear_f32;
pub mod ops;

use std::sync::OnceLock;

/// An instruction-set level a kernel can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, any CPU: the reference.
    Portable,
    Avx2,
    AvxVnni,
    /// The AVX-VNNI kernel in the EVEX (AVX-512 VL) encoding of the same instruction: CPUs with
    /// AVX-512 VNNI but without AVX-VNNI (Zen 4, Ice Lake) run and test the 256-bit kernel.
    AvxVnniEvex,
    Avx512Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::AvxVnniEvex => "avx-vnni-evex",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    pub const ALL: [Isa; 5] = [Isa::Portable, Isa::Avx2, Isa::AvxVnni, Isa::AvxVnniEvex, Isa::Avx512Vnni];

    /// The compilation of the elementwise kernels that goes with this path.
    pub fn simd_level(self) -> SimdLevel {
        match self {
            Isa::Portable => SimdLevel::None,
            Isa::Avx2 | Isa::AvxVnni | Isa::AvxVnniEvex => SimdLevel::Avx2Fma,
            Isa::Avx512Vnni => SimdLevel::Avx512,
        }
    }
}

/// Which compilation of the elementwise kernels (GELU, softmax, LayerNorm) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    None,
    Avx2Fma,
    Avx512,
}

/// The kernel paths of this process, resolved once ([`cpu_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuPath {
    /// The int8 GEMM path.
    pub int8: Isa,
    /// The elementwise kernels' compilation (GELU, softmax, LayerNorm); `None` with the
    /// portable path, so `VITWB_ISA=portable` means plain Rust everywhere.
    pub simd: SimdLevel,
}

/// The best elementwise compilation this CPU runs.
fn best_simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return SimdLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return SimdLevel::Avx2Fma;
        }
    }
    SimdLevel::None
}

/// The paths every kernel uses: the best this CPU has, or `VITWB_ISA=<name>` to force one
/// (for comparisons, and for testing a path on a machine that has better ones). Read once.
pub fn cpu_path() -> CpuPath {
    static PATH: OnceLock<CpuPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        let available = available_isas();
        let best = *available.iter().max().unwrap();
        // The command line refuses a name that cannot be honoured ([`forced_path_problem`])
        // before any kernel runs; a library caller gets the best path and a warning.
        let int8 = match std::env::var("VITWB_ISA") {
            Ok(want) => match available.iter().find(|i| i.name() == want) {
                Some(isa) => *isa,
                None => {
                    eprintln!("warning: VITWB_ISA={want} is not available here; using {}", best.name());
                    best
                }
            },
            Err(_) => best,
        };
        // The elementwise kernels follow a forced path down, never above what the CPU has.
        let simd = if int8 == best { best_simd_level() } else { int8.simd_level().min_with(best_simd_level()) };
        CpuPath { int8, simd }
    })
}

impl SimdLevel {
    fn rank(self) -> u8 {
        match self {
            SimdLevel::None => 0,
            SimdLevel::Avx2Fma => 1,
            SimdLevel::Avx512 => 2,
        }
    }
    fn min_with(self, other: SimdLevel) -> SimdLevel {
        if self.rank() <= other.rank() { self } else { other }
    }
}

/// Why `VITWB_ISA` cannot be honoured, when it is set to a name that is not a path or to a path
/// this CPU lacks: a measurement of "the avx2 path" must not silently run another one.
pub fn forced_path_problem() -> Option<String> {
    let want = std::env::var("VITWB_ISA").ok()?;
    let names = |isas: &[Isa]| isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ");
    if !Isa::ALL.iter().any(|i| i.name() == want) {
        return Some(format!("VITWB_ISA={want:?} is not a kernel path (paths: {})", names(&Isa::ALL)));
    }
    let available = available_isas();
    (!available.iter().any(|i| i.name() == want))
        .then(|| format!("VITWB_ISA={want}: this CPU cannot run that path (it runs: {})", names(&available)))
}

/// The CPU's SIMD features relevant to our kernels, detected at run time.
pub fn cpu_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if is_x86_feature_detected!("fma") {
            f.push("fma");
        }
        if is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        if is_x86_feature_detected!("avx512bw") {
            f.push("avx512bw");
        }
        if is_x86_feature_detected!("avx512vnni") {
            f.push("avx512vnni");
        }
        if is_x86_feature_detected!("avx512vl") {
            f.push("avx512vl");
        }
        if is_x86_feature_detected!("avxvnni") {
            f.push("avxvnni");
        }
    }
    f
}

/// The int8 kernel paths this build has that this CPU can run.
pub fn available_isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|&isa| gemm_i8::isa_available(isa)).collect()
}

/// The int8 path in use ([`cpu_path`]).
pub fn selected_isa() -> Isa {
    cpu_path().int8
}

/// Whether the portable code runs everywhere (`VITWB_ISA=portable`).
pub fn reference_only() -> bool {
    cpu_path().int8 == Isa::Portable
}

/// A raw pointer for parallel tasks that each write a disjoint part of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);
// SAFETY: only handed to tasks that write disjoint elements (each use site says which).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    // A method, so closures capture the wrapper (Send + Sync), not its raw-pointer field.
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }
}

/// GELU with erf, as PyTorch's `nn.GELU()` and transformers' "gelu" (within 1e-6).
pub use ops::gelu as gelu_erf;

/// Sets the number of threads every kernel uses — ours (rayon's global pool) and candle's
/// (which reads `RAYON_NUM_THREADS` for its GEMM) — so numbers are comparable and the two pools
/// never oversubscribe the cores. Default: the physical core count. Must run before any kernel
/// does (thread pools start once per process); returns the count in effect.
pub fn init_threads(requested: Option<usize>) -> usize {
    let n = requested.filter(|&n| n > 0).unwrap_or_else(num_cpus::get_physical).max(1);
    // SAFETY: called at start-up, before any other thread exists.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        // candle's own element-wise pool (still used for a few small ops per forward) spins
        // 25 000 rounds after each op by default, on a core our kernels need next.
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "500");
        }
    }
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    rayon::current_num_threads()
}
