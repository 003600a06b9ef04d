//! Which device computes, and the truth about it: the CPU always works; a CUDA GPU needs a build
//! with the `cuda` feature *and* a machine whose driver finds a GPU. Every refusal says which of
//! the two is missing, and a GPU that is used is named (through cudarc, which candle re-exports).

use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use candle_core::Device;

/// How `int8`/`mobile` layers compute on a device. They are not the same numerics, so reports and
/// the window say which one a result used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// Ours: symmetric int8 weights with one scale per output channel, activations quantized
    /// per row on the fly, int32 accumulation (the CPU path).
    CpuPerChannelRowwise,
    /// candle's `QMatMul` with GGML Q8_0 weights: one scale per block of 32 weights along the
    /// input dimension, activations quantized to Q8_1 blocks of 32 (the CUDA path).
    CudaQ8_0,
}

impl Int8Kernel {
    pub fn for_device(device: &Device) -> Int8Kernel {
        if device.is_cpu() { Int8Kernel::CpuPerChannelRowwise } else { Int8Kernel::CudaQ8_0 }
    }

    /// The value of the CSV's `int8_kernel` column.
    pub fn id(self) -> &'static str {
        match self {
            Int8Kernel::CpuPerChannelRowwise => "cpu-per-channel-rowwise",
            Int8Kernel::CudaQ8_0 => "cuda-q8_0",
        }
    }

    /// One line for people.
    pub fn describe(self) -> &'static str {
        match self {
            Int8Kernel::CpuPerChannelRowwise => {
                "int8 = our CPU kernel: a scale per output channel, activations per row"
            }
            Int8Kernel::CudaQ8_0 => {
                "int8 = candle's Q8_0 on CUDA: a scale per block of 32 weights (not the CPU's per-channel int8)"
            }
        }
    }
}

/// Whether `--device cuda` can work here, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaStatus {
    /// This binary was built without the `cuda` feature.
    NotBuilt,
    /// Built with CUDA, but the driver reports no usable GPU (the driver's message).
    NoGpu(String),
    /// GPU 0 is usable.
    Ready { name: String },
}

impl CudaStatus {
    /// Why CUDA cannot be used, or `None` when it can.
    pub fn unavailable_reason(&self) -> Option<String> {
        match self {
            CudaStatus::NotBuilt => Some(NOT_BUILT.to_string()),
            CudaStatus::NoGpu(why) => Some(format!("this build has CUDA, but no usable GPU was found: {why}")),
            CudaStatus::Ready { .. } => None,
        }
    }
}

const NOT_BUILT: &str =
    "this binary was built without CUDA support (rebuild with `cargo build --release --features cuda`)";

/// Probes GPU 0 once per process (opening a CUDA context costs time; the answer does not change).
pub fn cuda_status() -> &'static CudaStatus {
    static STATUS: OnceLock<CudaStatus> = OnceLock::new();
    STATUS.get_or_init(|| {
        if !candle_core::utils::cuda_is_available() {
            return CudaStatus::NotBuilt;
        }
        match Device::new_cuda(0) {
            Ok(d) => CudaStatus::Ready { name: gpu_name(&d).unwrap_or_else(|| "unnamed GPU".to_string()) },
            Err(e) => CudaStatus::NoGpu(first_line(&e.to_string())),
        }
    })
}

/// `cpu`, `cuda` or `cuda:N` -> a device; a one-line error saying whether the build or the
/// machine lacks CUDA.
pub fn open(name: &str) -> Result<Device> {
    match name.trim() {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal: usize = match n.strip_prefix("cuda:") {
                Some(i) => i
                    .parse()
                    .with_context(|| format!("bad CUDA device number in `{n}` (expected cuda:0, cuda:1, ...)"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {n}: {NOT_BUILT}");
            }
            Device::new_cuda(ordinal).map_err(|e| {
                anyhow::anyhow!(
                    "--device {n}: this build has CUDA, but GPU {ordinal} cannot be used: {}",
                    first_line(&e.to_string())
                )
            })
        }
        other => bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
    }
}

/// `cpu`, or `cuda:0 (NVIDIA H200)`: what reports and the status bar print.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => {
            let ordinal = match device.location() {
                candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
                _ => 0,
            };
            match gpu_name(device) {
                Some(name) => format!("cuda:{ordinal} ({name})"),
                None => format!("cuda:{ordinal}"),
            }
        }
        Device::Metal(_) => "metal".to_string(),
    }
}

/// The GPU's name as the driver reports it (`NVIDIA H200`); `None` on the CPU.
#[cfg(feature = "cuda")]
pub fn gpu_name(device: &Device) -> Option<String> {
    let cuda = device.as_cuda_device().ok()?;
    cuda.cuda_stream().context().name().ok()
}

/// The GPU's name as the driver reports it; this build has no CUDA, so never one.
#[cfg(not(feature = "cuda"))]
pub fn gpu_name(_device: &Device) -> Option<String> {
    None
}

/// Driver errors can span lines (candle appends context); a CLI error is one line.
fn first_line(s: &str) -> String {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unknown error").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_opens_and_is_described_plainly() {
        let d = open("cpu").unwrap();
        assert!(d.is_cpu());
        assert_eq!(describe(&d), "cpu");
        assert_eq!(Int8Kernel::for_device(&d).id(), "cpu-per-channel-rowwise");
    }

    #[test]
    fn bad_names_are_refused_in_one_line() {
        for (name, want) in [("tpu", "unknown device `tpu`"), ("cuda:x", "bad CUDA device number in `cuda:x`")] {
            let e = format!("{:#}", open(name).unwrap_err());
            assert!(e.contains(want), "{name}: {e}");
            assert!(!e.contains('\n'), "{name}: {e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_the_build_lacks_it() {
        for name in ["cuda", "cuda:1"] {
            let e = format!("{:#}", open(name).unwrap_err());
            assert!(e.contains("built without CUDA support"), "{e}");
            assert!(e.contains("--features cuda"), "{e}");
            assert!(!e.contains("no usable GPU"), "{e}");
        }
        assert_eq!(cuda_status(), &CudaStatus::NotBuilt);
        assert!(cuda_status().unavailable_reason().unwrap().contains("built without CUDA"));
    }

    #[test]
    fn first_line_drops_context_lines() {
        assert_eq!(first_line("\n  DriverError(NO_DEVICE)\nbacktrace..."), "DriverError(NO_DEVICE)");
        assert_eq!(first_line(""), "unknown error");
    }
}
