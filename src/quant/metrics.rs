//! What a variant loses against fp32 on the same input: the numbers users of every
//! quantization tool ask for, per image and per layer.

use anyhow::Result;
use candle_core::Tensor;
use serde::Serialize;

use crate::model::top_indices;

/// A variant's logits against the fp32 logits of the same image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogitAgreement {
    pub top1_agree: bool,
    /// How many of fp32's top-5 classes are in the variant's top-5.
    pub top5_overlap: usize,
    /// The size of a top-5: 5, or the class count of models with fewer classes.
    pub top5_size: usize,
    /// KL(p_fp32 || p_variant) in nats.
    pub kl_div: f64,
    pub max_abs_dlogit: f32,
    /// Cosine similarity of the two logit vectors.
    pub cosine: f64,
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    v.iter().map(|&x| x as f64 - lse).collect()
}

/// Compares one image's logits.
pub fn compare_logits(reference: &[f32], other: &[f32]) -> LogitAgreement {
    assert_eq!(reference.len(), other.len());
    let (tr, to) = (top_indices(reference, 5), top_indices(other, 5));
    let (lr, lo) = (log_softmax(reference), log_softmax(other));
    let kl = lr.iter().zip(&lo).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0);
    let dot: f64 = reference.iter().zip(other).map(|(a, b)| *a as f64 * *b as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let denom = norm(reference) * norm(other);
    LogitAgreement {
        top1_agree: tr[0] == to[0],
        top5_overlap: tr.iter().filter(|i| to.contains(i)).count(),
        top5_size: tr.len(),
        kl_div: kl,
        max_abs_dlogit: reference.iter().zip(other).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max),
        cosine: if denom > 0.0 { dot / denom } else { 1.0 },
    }
}

/// Relative error ‖y − y_ref‖ / ‖y_ref‖ of each block's output.
pub fn layer_errors(reference: &[Tensor], other: &[Tensor]) -> Result<Vec<f64>> {
    reference
        .iter()
        .zip(other)
        .map(|(r, o)| {
            let r = r.flatten_all()?.to_dtype(candle_core::DType::F64)?;
            let o = o.flatten_all()?.to_dtype(candle_core::DType::F64)?;
            let num = (&o - &r)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
            let den = r.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
            Ok(if den > 0.0 { num / den } else { num })
        })
        .collect()
}

/// Agreement over a set of images.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgreementSummary {
    pub images: usize,
    /// Fraction of images whose top-1 matches fp32.
    pub top1_agreement: f64,
    /// Mean top-5 overlap as a fraction (overlap / 5, or of the class count when smaller).
    pub top5_overlap: f64,
    pub min_top5_overlap: usize,
    pub mean_kl_div: f64,
    pub max_abs_dlogit: f32,
    pub min_cosine: f64,
}

pub fn summarize(items: &[LogitAgreement]) -> AgreementSummary {
    let n = items.len().max(1) as f64;
    AgreementSummary {
        images: items.len(),
        top1_agreement: items.iter().filter(|a| a.top1_agree).count() as f64 / n,
        top5_overlap: items.iter().map(|a| a.top5_overlap as f64 / a.top5_size.max(1) as f64).sum::<f64>() / n,
        min_top5_overlap: items.iter().map(|a| a.top5_overlap).min().unwrap_or(0),
        mean_kl_div: items.iter().map(|a| a.kl_div).sum::<f64>() / n,
        max_abs_dlogit: items.iter().map(|a| a.max_abs_dlogit).fold(0.0, f32::max),
        min_cosine: items.iter().map(|a| a.cosine).fold(1.0, f64::min),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_agree_perfectly() {
        let l = [1.0, 3.0, -2.0, 0.5, 2.0, 0.0, -1.0];
        let a = compare_logits(&l, &l);
        assert!(a.top1_agree && a.top5_overlap == 5 && a.kl_div == 0.0 && a.max_abs_dlogit == 0.0);
        assert!((a.cosine - 1.0).abs() < 1e-12);
    }

    #[test]
    fn top5_overlap_of_a_model_with_fewer_than_5_classes_is_out_of_its_class_count() {
        // 3 classes: identical logits overlap fully (3 of 3), not 3 of 5.
        let l = [0.5f32, -1.0, 2.0];
        let a = compare_logits(&l, &l);
        assert_eq!((a.top5_overlap, a.top5_size), (3, 3));
        assert_eq!(summarize(&[a]).top5_overlap, 1.0);
        let other = compare_logits(&[1.0, 3.0, -2.0, 0.5, 2.0, 0.0, -1.0], &[3.0, 1.0, -2.0, 0.5, -9.0, 0.0, -1.0]);
        assert_eq!(other.top5_size, 5);
    }

    #[test]
    fn kl_and_overlap_match_hand_computation() {
        // p = softmax([0, ln 3]) = [1/4, 3/4]; q = softmax([ln 3, 0]) = [3/4, 1/4].
        let (a, b) = ([0.0f32, 3f32.ln()], [3f32.ln(), 0.0f32]);
        let r = compare_logits(&a, &b);
        let expected = 0.25 * (0.25f64 / 0.75).ln() + 0.75 * (0.75f64 / 0.25).ln();
        assert!((r.kl_div - expected).abs() < 1e-6, "{} vs {expected}", r.kl_div);
        assert!(!r.top1_agree);
        assert_eq!(r.top5_overlap, 2);
        assert!((r.max_abs_dlogit - 3f32.ln()).abs() < 1e-6);
    }
}

/// Everything `compare` reports for one variant against fp32.
#[derive(Clone, Debug, Serialize)]
pub struct VariantComparison {
    pub variant: crate::quant::Variant,
    /// As shown to users: `int8+fp32[3]` for a mixed-precision variant.
    pub label: String,
    /// Layers a quantized variant keeps fp32 (mixed precision).
    pub fp32_layers: Vec<crate::model::LayerName>,
    /// The quantization scheme (`None` for fp32).
    pub scheme: Option<String>,
    /// Size of the variant as an exported file.
    pub file_bytes: u64,
    pub weight_bytes: usize,
    pub per_image: Vec<LogitAgreement>,
    pub summary: AgreementSummary,
    /// Mean over images of each block's relative output error.
    pub per_layer_error: Vec<f64>,
}

/// Runs `reference` (fp32) and every variant on the same preprocessed inputs and compares.
pub fn compare_variants(
    reference: &crate::model::Model,
    variants: &[&crate::model::Model],
    images: &[image::RgbImage],
) -> Result<Vec<VariantComparison>> {
    use crate::model::Capture;
    let capture = Capture { attentions: false, block_outputs: true };
    let inputs = images.iter().map(|i| reference.preprocess(i)).collect::<Result<Vec<_>>>()?;
    let ref_outs = inputs.iter().map(|x| reference.forward(x, capture)).collect::<Result<Vec<_>>>()?;
    let mut result = Vec::new();
    for v in variants {
        let mut per_image = Vec::new();
        let mut layer_sum = vec![0f64; reference.config.depth];
        for (x, r) in inputs.iter().zip(&ref_outs) {
            let o = v.forward(x, capture)?;
            let rl = r.logits.flatten_all()?.to_vec1::<f32>()?;
            let ol = o.logits.flatten_all()?.to_vec1::<f32>()?;
            per_image.push(compare_logits(&rl, &ol));
            let errs = layer_errors(
                r.block_outputs.as_deref().unwrap_or_default(),
                o.block_outputs.as_deref().unwrap_or_default(),
            )?;
            layer_sum.iter_mut().zip(errs).for_each(|(s, e)| *s += e);
        }
        let n = inputs.len().max(1) as f64;
        result.push(VariantComparison {
            variant: v.variant,
            label: v.label(),
            fp32_layers: v.fp32_layers(),
            scheme: v.scheme().map(|s| s.name()),
            file_bytes: crate::quant::export::serialize(v)?.len() as u64,
            weight_bytes: v.weight_bytes(),
            summary: summarize(&per_image),
            per_image,
            per_layer_error: layer_sum.into_iter().map(|s| s / n).collect(),
        });
    }
    Ok(result)
}
