//! Where the model looked: attention rollout and raw attention maps, and how they are drawn over
//! the image (perceptual colormaps, smooth upsampling).
//!
//! Rollout (Abnar & Zuidema, 2020) multiplies the per-layer attention matrices, each fused over
//! heads, with the residual connection modelled as an identity added and every row renormalised,
//! and reads the class token's row: how much each patch flowed into the class token. The
//! `discard_ratio` drops the weakest attention weights of every layer before that (as in
//! jacobgil/vit-explain), which sharpens the map. Unlike that implementation, rows are
//! renormalised along the right axis.

use anyhow::{Result, bail};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// How the attention heads of a layer are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeadFusion {
    Mean,
    Max,
    Min,
}

/// Which map to draw.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttentionMap {
    Rollout {
        fusion: HeadFusion,
        discard_ratio: f32,
    },
    /// One layer's class-token attention; `head: None` = mean over heads.
    Raw {
        layer: usize,
        head: Option<usize>,
    },
}

/// A square grid of per-patch weights, normalised to [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub side: usize,
    pub values: Vec<f32>,
}

/// Attention probabilities of one image: per layer, `[heads, T, T]` row-major.
pub struct Attentions {
    pub heads: usize,
    pub tokens: usize,
    pub layers: Vec<Vec<f32>>,
}

impl Attentions {
    /// From a forward pass's captured attentions (`[B, heads, T, T]` each), image `index` of the batch.
    pub fn from_tensors(attentions: &[Tensor], index: usize) -> Result<Attentions> {
        let Some(first) = attentions.first() else { bail!("no attention was captured") };
        let (_, heads, tokens, _) = first.dims4()?;
        let layers = attentions
            .iter()
            .map(|a| Ok(a.get(index)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Attentions { heads, tokens, layers })
    }
}

fn fuse_heads(layer: &[f32], heads: usize, t: usize, fusion: HeadFusion) -> Vec<f32> {
    let mut out = vec![0f32; t * t];
    for (i, o) in out.iter_mut().enumerate() {
        let vals = (0..heads).map(|h| layer[h * t * t + i]);
        *o = match fusion {
            HeadFusion::Mean => vals.sum::<f32>() / heads as f32,
            HeadFusion::Max => vals.fold(f32::NEG_INFINITY, f32::max),
            HeadFusion::Min => vals.fold(f32::INFINITY, f32::min),
        };
    }
    out
}

/// The class token's rollout over all layers, as a `t x t` matrix product.
pub fn rollout(att: &Attentions, fusion: HeadFusion, discard_ratio: f32) -> Vec<f32> {
    let t = att.tokens;
    // result = I
    let mut result = vec![0f32; t * t];
    for i in 0..t {
        result[i * t + i] = 1.0;
    }
    for layer in &att.layers {
        let mut a = fuse_heads(layer, att.heads, t, fusion);
        let discard = ((t * t) as f32 * discard_ratio.clamp(0.0, 0.99)) as usize;
        if discard > 0 {
            let mut order: Vec<usize> = (0..t * t).collect();
            order.select_nth_unstable_by(discard - 1, |&x, &y| a[x].total_cmp(&a[y]));
            // Never drop the class token's attention to itself.
            for &i in &order[..discard] {
                if i != 0 {
                    a[i] = 0.0;
                }
            }
        }
        // Residual: (A + I) / 2, then each row renormalised to sum 1.
        for i in 0..t {
            a[i * t + i] += 1.0;
            let s: f32 = a[i * t..(i + 1) * t].iter().sum();
            a[i * t..(i + 1) * t].iter_mut().for_each(|v| *v /= s);
        }
        // result = a · result
        let mut next = vec![0f32; t * t];
        for i in 0..t {
            for k in 0..t {
                let aik = a[i * t + k];
                if aik == 0.0 {
                    continue;
                }
                let (row, src) = (&mut next[i * t..(i + 1) * t], &result[k * t..(k + 1) * t]);
                row.iter_mut().zip(src).for_each(|(r, s)| *r += aik * s);
            }
        }
        result = next;
    }
    result
}

/// The heatmap `map` describes, over the patch grid (prefix tokens skipped).
pub fn heatmap(att: &Attentions, prefix_tokens: usize, map: AttentionMap) -> Result<Heatmap> {
    let t = att.tokens;
    let patches = t.saturating_sub(prefix_tokens);
    let side = (patches as f64).sqrt() as usize;
    if side * side != patches || patches == 0 {
        bail!("{patches} patch tokens do not form a square grid");
    }
    let cls_row: Vec<f32> = match map {
        AttentionMap::Rollout { fusion, discard_ratio } => rollout(att, fusion, discard_ratio)[..t].to_vec(),
        AttentionMap::Raw { layer, head } => {
            let l = att.layers.get(layer).ok_or_else(|| anyhow::anyhow!("no layer {layer}"))?;
            match head {
                Some(h) if h >= att.heads => bail!("no head {h}"),
                Some(h) => l[h * t * t..h * t * t + t].to_vec(),
                None => fuse_heads(l, att.heads, t, HeadFusion::Mean)[..t].to_vec(),
            }
        }
    };
    let mut values = cls_row[prefix_tokens..].to_vec();
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let span = hi - lo;
    values.iter_mut().for_each(|v| *v = if span > 0.0 { (*v - lo) / span } else { 0.0 });
    Ok(Heatmap { side, values })
}

/// Perceptual colormaps (matplotlib's, sampled at 33 points and interpolated: within 4.5/255).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Colormap {
    Inferno,
    Viridis,
}

#[rustfmt::skip]
const VIRIDIS: [[u8; 3]; 33] = [
    [68, 1, 84], [71, 13, 96], [72, 24, 106], [72, 35, 116], [71, 45, 123], [69, 55, 129], [66, 64, 134], [62, 73, 137],
    [59, 82, 139], [55, 91, 141], [51, 99, 141], [47, 107, 142], [44, 114, 142], [41, 122, 142], [38, 130, 142],
    [35, 137, 142], [33, 145, 140], [31, 152, 139], [31, 160, 136], [34, 167, 133], [40, 174, 128], [50, 182, 122],
    [63, 188, 115], [78, 195, 107], [94, 201, 98], [112, 207, 87], [132, 212, 75], [152, 216, 62], [173, 220, 48],
    [194, 223, 35], [216, 226, 25], [236, 229, 27], [253, 231, 37],
];
#[rustfmt::skip]
const INFERNO: [[u8; 3]; 33] = [
    [0, 0, 4], [4, 3, 18], [11, 7, 36], [21, 11, 55], [33, 12, 74], [47, 10, 91], [61, 9, 101], [74, 12, 107],
    [87, 16, 110], [100, 21, 110], [113, 25, 110], [125, 30, 109], [138, 34, 106], [151, 39, 102], [163, 44, 97],
    [176, 49, 91], [188, 55, 84], [199, 62, 76], [210, 70, 68], [219, 80, 59], [228, 90, 49], [235, 102, 40],
    [241, 115, 29], [246, 128, 19], [249, 142, 9], [251, 157, 7], [252, 172, 17], [251, 188, 33], [249, 203, 53],
    [245, 219, 76], [242, 234, 105], [243, 246, 138], [252, 255, 164],
];

impl Colormap {
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Inferno => "inferno",
            Colormap::Viridis => "viridis",
        }
    }
    /// Colour of `v` in [0, 1].
    pub fn map(self, v: f32) -> [u8; 3] {
        let lut = match self {
            Colormap::Inferno => &INFERNO,
            Colormap::Viridis => &VIRIDIS,
        };
        let x = v.clamp(0.0, 1.0) * 32.0;
        let i = (x as usize).min(31);
        let f = x - i as f32;
        let (a, b) = (lut[i], lut[i + 1]);
        [0, 1, 2].map(|c| (a[c] as f32 * (1.0 - f) + b[c] as f32 * f).round() as u8)
    }
}

/// The heatmap upsampled to `width x height` (bilinear between patch centres, so it is smooth
/// rather than blocky) and coloured: RGBA with opaque alpha; opacity is applied when drawn.
pub fn colorize(h: &Heatmap, width: usize, height: usize, cmap: Colormap) -> Vec<u8> {
    let mut out = vec![0u8; width * height * 4];
    let s = h.side as f32;
    let at = |x: usize, y: usize| h.values[y.min(h.side - 1) * h.side + x.min(h.side - 1)];
    for y in 0..height {
        let gy = ((y as f32 + 0.5) / height as f32 * s - 0.5).max(0.0);
        let (y0, fy) = (gy as usize, gy.fract());
        for x in 0..width {
            let gx = ((x as f32 + 0.5) / width as f32 * s - 0.5).max(0.0);
            let (x0, fx) = (gx as usize, gx.fract());
            let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
            let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
            let c = cmap.map(top * (1.0 - fy) + bottom * fy);
            out[(y * width + x) * 4..(y * width + x) * 4 + 4].copy_from_slice(&[c[0], c[1], c[2], 255]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 prefix token + 4 patches; every head attends from every token to patch `p` only.
    fn focused(p: usize, layers: usize) -> Attentions {
        let t = 5;
        let mut l = vec![0f32; 2 * t * t];
        for h in 0..2 {
            for i in 0..t {
                l[h * t * t + i * t + 1 + p] = 1.0;
            }
        }
        Attentions { heads: 2, tokens: t, layers: vec![l; layers] }
    }

    #[test]
    fn rollout_rows_stay_distributions_and_find_the_attended_patch() {
        let att = focused(2, 3);
        let r = rollout(&att, HeadFusion::Mean, 0.0);
        for i in 0..5 {
            let s: f32 = r[i * 5..(i + 1) * 5].iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row {i} sums to {s}");
        }
        let h = heatmap(&att, 1, AttentionMap::Rollout { fusion: HeadFusion::Mean, discard_ratio: 0.0 }).unwrap();
        assert_eq!(h.side, 2);
        let best = h.values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(best, 2);
        assert_eq!(h.values[2], 1.0);
    }

    #[test]
    fn one_layer_rollout_is_the_residual_average() {
        // A uniform attention (0.2 everywhere) with the identity added and rows renormalised:
        // diagonal (0.2 + 1) / 2 = 0.6, elsewhere 0.1.
        let t = 5;
        let att = Attentions { heads: 1, tokens: t, layers: vec![vec![0.2; t * t]] };
        let r = rollout(&att, HeadFusion::Max, 0.0);
        assert!((r[0] - 0.6).abs() < 1e-6 && (r[1] - 0.1).abs() < 1e-6);
    }

    #[test]
    fn raw_attention_reads_the_cls_row_of_one_head() {
        let mut att = focused(1, 2);
        // Head 1 of layer 1 looks at patch 3 instead.
        let t = 5;
        for i in 0..t {
            att.layers[1][t * t + i * t + 2] = 0.0;
            att.layers[1][t * t + i * t + 4] = 1.0;
        }
        let h = heatmap(&att, 1, AttentionMap::Raw { layer: 1, head: Some(1) }).unwrap();
        assert_eq!(h.values, vec![0.0, 0.0, 0.0, 1.0]);
        let mean = heatmap(&att, 1, AttentionMap::Raw { layer: 1, head: None }).unwrap();
        assert_eq!(mean.values, vec![0.0, 1.0, 0.0, 1.0]);
        assert!(heatmap(&att, 1, AttentionMap::Raw { layer: 5, head: None }).is_err());
    }

    #[test]
    fn colormaps_hit_matplotlib_endpoints_and_upsampling_is_smooth() {
        assert_eq!(Colormap::Viridis.map(0.0), [68, 1, 84]);
        assert_eq!(Colormap::Viridis.map(1.0), [253, 231, 37]);
        assert_eq!(Colormap::Inferno.map(0.0), [0, 0, 4]);
        assert_eq!(Colormap::Inferno.map(1.0), [252, 255, 164]);
        let h = Heatmap { side: 2, values: vec![0.0, 1.0, 0.0, 1.0] };
        let img = colorize(&h, 8, 8, Colormap::Inferno);
        // Along a row the red channel rises monotonically from left to right, with steps between.
        let reds: Vec<u8> = (0..8).map(|x| img[(4 * 8 + x) * 4]).collect();
        assert!(reds.windows(2).all(|w| w[0] <= w[1]), "{reds:?}");
        assert!(reds.iter().collect::<std::collections::HashSet<_>>().len() > 3, "not smooth: {reds:?}");
    }
}
