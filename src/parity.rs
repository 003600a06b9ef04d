//! Does another device compute what the CPU computes? The same model and images on the CPU and on
//! the device (`device-check`, used by `tools/gpu-check.sh`). fp32 must match within a stated
//! logit bound. int8 and mobile are different numerics on CUDA (candle's Q8_0: a scale per 32
//! weights, not our per-channel scales), so for them the top-1 agreement with the CPU variant is
//! gated, and each side's loss against its own fp32 is reported beside it.

use anyhow::{Context, Result};
use image::RgbImage;
use serde::Serialize;

use crate::device::Int8Kernel;
use crate::hub::Hub;
use crate::model::{Capture, Model};
use crate::quant::metrics::{AgreementSummary, compare_logits, summarize};
use crate::quant::{QuantOptions, Variant};
use candle_core::Device;

/// fp32 logits, device vs CPU. Both sides are fp32 with different summation orders (cuBLAS
/// and candle's kernels vs our CPU kernels), which moves ViT logits by ~1e-5..1e-4; a real bug
/// (a transposed weight, a missing bias, a wrong GELU) moves them by whole units.
pub const FP32_MAX_ABS_DLOGIT: f32 = 1e-2;
/// int8/mobile top-1, device vs CPU variant: different quantizers may flip a close call, not most.
pub const INT8_MIN_TOP1_AGREEMENT: f64 = 0.75;

#[derive(Clone, Debug, Serialize)]
pub struct VariantParity {
    pub variant: Variant,
    /// int8 numerics on each side (`None` for fp32).
    pub cpu_int8_kernel: Option<String>,
    pub device_int8_kernel: Option<String>,
    /// The device's logits against the CPU's, same variant.
    pub device_vs_cpu: AgreementSummary,
    /// What quantization costs on each side, against that side's fp32.
    pub cpu_vs_fp32: AgreementSummary,
    pub device_vs_fp32: AgreementSummary,
    pub pass: bool,
    /// The rule applied, with the numbers.
    pub verdict: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ParityReport {
    pub model: String,
    /// `cuda:0 (NVIDIA H200)`, or `cpu` when the check runs CPU against CPU (testing the tool).
    pub device: String,
    pub images: Vec<String>,
    pub variants: Vec<VariantParity>,
    pub pass: bool,
}

/// The rule for one variant.
pub fn judge(variant: Variant, device_vs_cpu: &AgreementSummary) -> (bool, String) {
    if variant == Variant::Fp32 {
        let d = device_vs_cpu.max_abs_dlogit;
        let ok = d <= FP32_MAX_ABS_DLOGIT;
        (ok, format!("fp32 max |dlogit| {d:.3e} {} bound {FP32_MAX_ABS_DLOGIT:.0e}", if ok { "<=" } else { ">" }))
    } else {
        let a = device_vs_cpu.top1_agreement;
        let ok = a >= INT8_MIN_TOP1_AGREEMENT;
        (
            ok,
            format!(
                "{variant} top-1 agreement with the CPU {:.0}% {} {:.0}%",
                100.0 * a,
                if ok { ">=" } else { "<" },
                100.0 * INT8_MIN_TOP1_AGREEMENT
            ),
        )
    }
}

fn logits(m: &Model, img: &RgbImage) -> Result<Vec<f32>> {
    let x = m.preprocess(img)?;
    Ok(m.forward(&x, Capture::NONE)?.logits.flatten_all()?.to_vec1::<f32>()?)
}

/// Runs `spec` (an fp32 checkpoint) on the CPU and on `device` over `images`.
pub fn check(
    spec: &str,
    hub: &Hub,
    device: &Device,
    variants: &[Variant],
    images: &[(String, RgbImage)],
) -> Result<ParityReport> {
    if images.is_empty() {
        anyhow::bail!("no images to compare on");
    }
    let mut no_download = |_: crate::hub::DownloadEvent| {};
    let cpu_fp32 = crate::zoo::load_model_as_is(spec, hub, &Device::Cpu, &mut no_download)?;
    if cpu_fp32.variant != Variant::Fp32 {
        anyhow::bail!("{spec}: the device check needs an fp32 checkpoint (this is an exported {})", cpu_fp32.variant);
    }
    let dev_fp32 = crate::zoo::load_model_as_is(spec, hub, device, &mut no_download)?;
    let fp32_logits = |m: &Model| images.iter().map(|(_, img)| logits(m, img)).collect::<Result<Vec<_>>>();
    let (cpu_ref, dev_ref) = (fp32_logits(&cpu_fp32)?, fp32_logits(&dev_fp32)?);
    let mut out = Vec::new();
    for &v in variants {
        let make = |m: &Model| {
            m.to_variant(v, QuantOptions::default()).with_context(|| format!("cannot make the {v} variant of {spec}"))
        };
        let (cpu_m, dev_m) = (make(&cpu_fp32)?, make(&dev_fp32)?);
        let (cpu_l, dev_l) = (fp32_logits(&cpu_m)?, fp32_logits(&dev_m)?);
        let summary = |a: &[Vec<f32>], b: &[Vec<f32>]| {
            summarize(&a.iter().zip(b).map(|(a, b)| compare_logits(a, b)).collect::<Vec<_>>())
        };
        let device_vs_cpu = summary(&cpu_l, &dev_l);
        let (pass, verdict) = judge(v, &device_vs_cpu);
        let kernel = |d: &Device| (v != Variant::Fp32).then(|| Int8Kernel::for_device(d).id().to_string());
        out.push(VariantParity {
            variant: v,
            cpu_int8_kernel: kernel(&Device::Cpu),
            device_int8_kernel: kernel(device),
            cpu_vs_fp32: summary(&cpu_ref, &cpu_l),
            device_vs_fp32: summary(&dev_ref, &dev_l),
            device_vs_cpu,
            pass,
            verdict,
        });
    }
    Ok(ParityReport {
        model: spec.to_string(),
        device: crate::device::describe(device),
        images: images.iter().map(|(n, _)| n.clone()).collect(),
        pass: out.iter().all(|v| v.pass),
        variants: out,
    })
}

/// The report as a table for people.
pub fn table(r: &ParityReport) -> String {
    let mut s = format!("{} on {} vs cpu, {} image(s)\n", r.model, r.device, r.images.len());
    s.push_str(&format!(
        "{:<7} {:>11} {:>9} {:>10} {:>13} {:>13}  {}\n",
        "variant", "max|dlogit|", "top-1", "min cos", "cpu vs fp32", "dev vs fp32", "verdict"
    ));
    for v in &r.variants {
        s.push_str(&format!(
            "{:<7} {:>11.3e} {:>8.0}% {:>10.6} {:>12.0}% {:>12.0}%  {} {}\n",
            v.variant.name(),
            v.device_vs_cpu.max_abs_dlogit,
            100.0 * v.device_vs_cpu.top1_agreement,
            v.device_vs_cpu.min_cosine,
            100.0 * v.cpu_vs_fp32.top1_agreement,
            100.0 * v.device_vs_fp32.top1_agreement,
            if v.pass { "PASS" } else { "FAIL" },
            v.verdict
        ));
    }
    for v in &r.variants {
        if let (Some(c), Some(d)) = (&v.cpu_int8_kernel, &v.device_int8_kernel)
            && c != d
        {
            s.push_str(&format!(
                "note: {} is {c} on the CPU and {d} on the device: not the same numerics\n",
                v.variant
            ));
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(top1: f64, dlogit: f32) -> AgreementSummary {
        AgreementSummary {
            images: 4,
            top1_agreement: top1,
            top5_overlap: 1.0,
            min_top5_overlap: 5,
            mean_kl_div: 0.0,
            max_abs_dlogit: dlogit,
            min_cosine: 1.0,
        }
    }

    #[test]
    fn fp32_is_judged_by_its_logit_bound_and_int8_by_top1() {
        assert!(judge(Variant::Fp32, &summary(1.0, 3e-4)).0);
        let (ok, why) = judge(Variant::Fp32, &summary(1.0, 0.5));
        assert!(!ok && why.contains("5.000e-1 > bound 1e-2"), "{why}");
        // int8 may differ in logits by a lot (other quantizer) and still pass on agreement...
        assert!(judge(Variant::Int8, &summary(0.75, 3.0)).0);
        // ...but not when most top-1s flip.
        let (ok, why) = judge(Variant::Mobile, &summary(0.5, 0.1));
        assert!(!ok && why.contains("50% < 75%"), "{why}");
    }
}
