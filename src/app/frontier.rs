//! The trade-off the frontier view draws: one point per (variant, layers kept fp32) measured
//! for a model, what it costs (p50 latency, file size) against what it loses (mean KL vs fp32
//! on the benchmark's images), and which points are Pareto-optimal. Pure functions of the
//! benchmark results, so the window and the tests compute the same front.

use serde::{Deserialize, Serialize};

use crate::bench::BenchResult;
use crate::eval::EvalReport;
use crate::model::LayerName;
use crate::quant::Variant;

/// One measured (variant, options) of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontierPoint {
    /// `int8+fp32[3]`; a second different set of 3 kept layers gets ` (2)` appended.
    pub label: String,
    pub variant: Variant,
    pub kept_fp32: Vec<LayerName>,
    pub p50_ms: f64,
    pub file_mb: f64,
    /// Mean KL(p_fp32 ‖ p) over the benchmark's images, nats (0 for fp32, the reference).
    pub kl: f64,
    /// Share of those images whose top-1 is fp32's.
    pub top1_agreement: f64,
    pub images: usize,
}

/// The newest point of each (variant, kept layers) of `model` in `latest` (one result per
/// such pair, as `BenchState::latest` gives them). A quantized result without an accuracy
/// measurement (no fp32 reference, e.g. an exported file benchmarked alone) has no y: left out.
pub fn points(latest: &[&BenchResult], model: &str) -> Vec<FrontierPoint> {
    let mut out: Vec<FrontierPoint> = Vec::new();
    for r in latest.iter().filter(|r| r.model == model) {
        let (kl, top1, images) = match (&r.accuracy, r.variant) {
            (Some(a), _) => (a.mean_kl_div, a.top1_agreement, a.images),
            (None, Variant::Fp32) => (0.0, 1.0, 0),
            (None, _) => continue,
        };
        let base = r.label();
        let same = out.iter().filter(|p| p.label == base || p.label.starts_with(&format!("{base} ("))).count();
        let label = if same == 0 { base } else { format!("{base} ({})", same + 1) };
        out.push(FrontierPoint {
            label,
            variant: r.variant,
            kept_fp32: r.kept_fp32.clone(),
            p50_ms: r.stats.p50,
            file_mb: r.file_bytes as f64 / 1e6,
            kl,
            top1_agreement: top1,
            images,
        });
    }
    out
}

/// The indices of the Pareto-optimal points of `xy` when both coordinates are costs (smaller is
/// better): no other point is at most as large in both and smaller in one. Sorted by x, then y,
/// so joining them draws the front as a staircase-free polyline. Identical points are all on the
/// front when one is; points with a non-finite coordinate are never on it.
pub fn pareto_front(xy: &[[f64; 2]]) -> Vec<usize> {
    let finite = |p: &[f64; 2]| p[0].is_finite() && p[1].is_finite();
    let dominates = |a: &[f64; 2], b: &[f64; 2]| a[0] <= b[0] && a[1] <= b[1] && (a[0] < b[0] || a[1] < b[1]);
    let mut front: Vec<usize> =
        (0..xy.len()).filter(|&i| finite(&xy[i]) && !xy.iter().any(|o| finite(o) && dominates(o, &xy[i]))).collect();
    front.sort_by(|&a, &b| xy[a][0].total_cmp(&xy[b][0]).then(xy[a][1].total_cmp(&xy[b][1])));
    front
}

/// What the frontier's y axis measures: the loss against fp32 on the benchmark's images, or the
/// top-1 accuracy on a labelled folder the Accuracy view evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrontierY {
    #[default]
    MeanKl,
    Top1,
}

/// Each point's top-1 accuracy (0..1) in `report`, an evaluation of `model`: `None` for a point
/// whose very variant it did not measure (same variant, same scheme and the same layers kept
/// fp32 — a mixed form is not its plain variant), and for all when it evaluated another model.
pub fn eval_top1(pts: &[FrontierPoint], report: &EvalReport, model: &str) -> Vec<Option<f64>> {
    pts.iter()
        .map(|p| {
            if report.model != model {
                return None;
            }
            // The label names variant and scheme; a second set of as many kept layers gets ` (2)`.
            let same_label = |label: &str| p.label == label || p.label.starts_with(&format!("{label} ("));
            report
                .variants
                .iter()
                .find(|v| v.variant == p.variant && v.kept_fp32 == p.kept_fp32 && same_label(&v.label))
                .map(|v| v.top1)
        })
        .collect()
}

/// The Pareto front of (cost, y) points for `y`: mean KL is a cost (smaller is better), top-1
/// accuracy a gain (larger is better). Indices as [`pareto_front`] gives them.
pub fn front_for(xy: &[[f64; 2]], y: FrontierY) -> Vec<usize> {
    match y {
        FrontierY::MeanKl => pareto_front(xy),
        FrontierY::Top1 => pareto_front(&xy.iter().map(|p| [p[0], -p[1]]).collect::<Vec<_>>()),
    }
}
