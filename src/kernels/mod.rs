//! Our CPU kernels, behind one interface with run-time CPU-feature dispatch.
//!
//! Why our own: candle's quantized matmul (`QMatMul`) has no batched path, is slower than its
//! own f32 matmul at ViT widths 192/384, and its K-quants need widths divisible by 256; torch's
//! `quantize_dynamic` equivalent — int8 weights per output channel, activations quantized per
//! row on the fly, int32 accumulation, fp32 epilogue — has no candle implementation at all.
//! For f32 products a well-kept crate does reach the goal — `gemm`, candle's own backend, once
//! its AVX-512 kernels are enabled — so we call it rather than write one; around it we add
//! what candle's graph lacked: attention read in place from the qkv projection, a vectorised
//! softmax, GELU and residual-add + LayerNorm, and no hand-offs between small ops.
//!
//! - [`gemm_i8`]: the int8 linear layer (entry point, portable reference, shared epilogue);
//!   [`vnni`] (AVX-512 VNNI, and the blocked driver) and [`avx2`] (AVX-VNNI, AVX2): its SIMD paths.
//! - [`linear_f32`]: the fp32 linear layer through the `gemm` crate.
//! - [`attention`]: multi-head attention over the fused qkv projection.
//! - [`ops`]: GELU, exp, softmax, residual add + LayerNorm.
//! - [`mod@bench`]: the `vit-workbench kernels` micro-benchmark.
//!
//! Every kernel has a portable implementation that is the reference forever: faster SIMD paths
//! are added behind [`Isa`] (or [`ops::SimdLevel`]) and tested against it (`tests/kernels.rs`).
//! The kernels reach candle as `CustomOp`s (`crate::model::fused`, `crate::quant::int8`); on
//! CUDA, candle's own ops are used instead.

pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod bench;
pub mod gemm_i8;
pub mod linear_f32;
pub mod ops;
#[cfg(target_arch = "x86_64")]
pub mod vnni;

use std::sync::OnceLock;

/// An instruction-set level a kernel can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, any CPU: the reference.
    Portable,
    Avx2,
    AvxVnni,
    Avx512Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
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
        if is_x86_feature_detected!("avxvnni") {
            f.push("avxvnni");
        }
    }
    f
}

/// The kernel paths this build has implementations for, that this CPU can run.
pub fn available_isas() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut v = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        use vnni::Kernel;
        if vnni::Avx2::available() {
            v.push(Isa::Avx2);
        }
        if vnni::AvxVnni::available() {
            v.push(Isa::AvxVnni);
        }
        if vnni::Avx512Vnni::available() {
            v.push(Isa::Avx512Vnni);
        }
    }
    v
}

/// The path used by default: the best available, or `VITWB_ISA=<name>` to force one (for
/// comparisons and for testing a path on a machine that has better ones).
pub fn selected_isa() -> Isa {
    static SELECTED: OnceLock<Isa> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        let available = available_isas();
        if let Ok(want) = std::env::var("VITWB_ISA") {
            if let Some(isa) = available.iter().find(|i| i.name() == want) {
                return *isa;
            }
            eprintln!("warning: VITWB_ISA={want} is not available here; using {}", available.last().unwrap().name());
        }
        *available.iter().max().unwrap()
    })
}

/// Whether `VITWB_ISA=portable` asks for the reference kernels everywhere (also for the f32
/// kernels that have no [`Isa`] levels of their own).
/// Read once: it is asked on every kernel call.
pub fn reference_only() -> bool {
    static REFERENCE: OnceLock<bool> = OnceLock::new();
    *REFERENCE.get_or_init(|| std::env::var("VITWB_ISA").is_ok_and(|v| v == Isa::Portable.name()))
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
