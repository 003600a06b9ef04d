//! Why the model chose a class, and where it looked: class-specific attribution ([`attribution`]),
//! attention rollout and raw attention maps, and how a map is drawn over the image (perceptual
//! colormaps, smooth upsampling, over exactly the region of the image the model saw).
//!
//! Rollout (Abnar & Zuidema, 2020) multiplies the per-layer attention matrices, each fused over
//! heads, with the residual connection modelled as an identity added and every row renormalised,
//! and reads the class token's row: how much each patch flowed into the class token. The
//! `discard_ratio` drops the weakest attention weights of every layer before that (as in
//! jacobgil/vit-explain), which sharpens the map. Unlike that implementation, rows are
//! renormalised along the right axis.

pub mod attribution;

use anyhow::{Result, bail};
use candle_core::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::preprocess::Region;

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

/// A row of per-token weights as a heatmap over the patch grid: prefix tokens skipped, values
/// scaled to [0, 1] (min to max).
pub fn grid_heatmap(row: &[f32], prefix_tokens: usize) -> Result<Heatmap> {
    let patches = row.len().saturating_sub(prefix_tokens);
    let side = (patches as f64).sqrt() as usize;
    if side * side != patches || patches == 0 {
        bail!("{patches} patch tokens do not form a square grid");
    }
    let mut values = row[prefix_tokens..].to_vec();
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let span = hi - lo;
    values.iter_mut().for_each(|v| *v = if span > 0.0 { (*v - lo) / span } else { 0.0 });
    Ok(Heatmap { side, values })
}

/// The heatmap `map` describes, over the patch grid (prefix tokens skipped).
pub fn heatmap(att: &Attentions, prefix_tokens: usize, map: AttentionMap) -> Result<Heatmap> {
    let t = att.tokens;
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
    grid_heatmap(&cls_row, prefix_tokens)
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

/// The heatmap value at a point of the grid's own square, `(u, v)` in [0, 1]²: bilinear between
/// patch centres, so the map is smooth rather than blocky.
fn sample(h: &Heatmap, u: f64, v: f64) -> f32 {
    let s = h.side as f64;
    let at = |x: usize, y: usize| h.values[y.min(h.side - 1) * h.side + x.min(h.side - 1)];
    let gy = (v * s - 0.5).clamp(0.0, s - 1.0);
    let gx = (u * s - 0.5).clamp(0.0, s - 1.0);
    let (x0, y0, fx, fy) = (gx as usize, gy as usize, gx.fract() as f32, gy.fract() as f32);
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
    let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// The heatmap upsampled to `width x height` and coloured: RGBA with opaque alpha.
pub fn colorize(h: &Heatmap, width: usize, height: usize, cmap: Colormap) -> Vec<u8> {
    let mut out = vec![0u8; width * height * 4];
    for y in 0..height {
        for x in 0..width {
            let v = sample(h, (x as f64 + 0.5) / width as f64, (y as f64 + 0.5) / height as f64);
            let c = cmap.map(v);
            out[(y * width + x) * 4..(y * width + x) * 4 + 4].copy_from_slice(&[c[0], c[1], c[2], 255]);
        }
    }
    out
}

/// How much the part of the image the model did not see is darkened (alpha of black over it).
pub const UNSEEN_DIM: f32 = 0.6;
/// The outline drawn around the part the model saw.
pub const OUTLINE: [u8; 3] = [255, 255, 255];

/// Width of the outline, in pixels of an image of this size (visible at any display size).
fn outline_width(width: usize, height: usize) -> f64 {
    (width.min(height) as f64 / 200.0).max(1.5)
}

/// The overlay as one straight-alpha RGBA layer of `width x height`, the way the window and the
/// `explain` command draw it over the image: the map coloured with `cmap` at `opacity` over
/// `region` (what the model saw, in this layer's pixels), the rest darkened by [`UNSEEN_DIM`],
/// and an [`OUTLINE`] just outside the region. A region covering the whole image (squash
/// recipes) has no dimmed part and no outline.
pub fn overlay_layer(
    h: &Heatmap,
    region: Region,
    width: usize,
    height: usize,
    cmap: Colormap,
    opacity: f32,
) -> Vec<u8> {
    let mut out = vec![0u8; width * height * 4];
    let alpha = (opacity.clamp(0.0, 1.0) * 255.0).round() as u8;
    let dim = (UNSEEN_DIM * 255.0).round() as u8;
    let line = outline_width(width, height);
    for y in 0..height {
        let cy = y as f64 + 0.5;
        for x in 0..width {
            let cx = x as f64 + 0.5;
            let px = &mut out[(y * width + x) * 4..(y * width + x) * 4 + 4];
            let inside = cx >= region.left && cx < region.right && cy >= region.top && cy < region.bottom;
            if inside {
                let v = sample(h, (cx - region.left) / region.width(), (cy - region.top) / region.height());
                let c = cmap.map(v);
                px.copy_from_slice(&[c[0], c[1], c[2], alpha]);
                continue;
            }
            // Distance from the pixel centre to the region (0 inside it).
            let dx = (region.left - cx).max(cx - region.right).max(0.0);
            let dy = (region.top - cy).max(cy - region.bottom).max(0.0);
            if dx.hypot(dy) < line {
                px.copy_from_slice(&[OUTLINE[0], OUTLINE[1], OUTLINE[2], 255]);
            } else {
                px.copy_from_slice(&[0, 0, 0, dim]);
            }
        }
    }
    out
}

/// `layer` (straight-alpha RGBA, same size) drawn over `img`: the pixels the window shows.
pub fn compose(img: &RgbImage, layer: &[u8]) -> RgbImage {
    let mut out = img.clone();
    for (px, l) in out.pixels_mut().zip(layer.chunks_exact(4)) {
        let a = l[3] as f32 / 255.0;
        for (p, &c) in px.0.iter_mut().zip(l) {
            *p = (c as f32 * a + *p as f32 * (1.0 - a)).round() as u8;
        }
    }
    out
}

/// The overlay's opacity and colormap when nothing else is chosen (the window's defaults too).
pub const DEFAULT_OPACITY: f32 = 0.6;
pub const DEFAULT_COLORMAP: Colormap = Colormap::Inferno;

/// What to explain an image with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Request {
    /// Class-specific attribution; `None`: the model's top-1 class.
    Attribution { class: Option<usize> },
    /// A class-agnostic attention map (rollout or raw).
    Attention(AttentionMap),
}

/// One image explained by one model.
pub struct Explained {
    /// The model's top-5 on the image.
    pub top: Vec<crate::model::Prediction>,
    /// The class explained (attribution only).
    pub class: Option<usize>,
    pub heat: Heatmap,
    /// The part of the image the model saw, in the image's pixels.
    pub region: Region,
}

/// Classifies `img` with `model` and computes the map `request` asks for.
pub fn explain_image(model: &crate::model::Model, img: &RgbImage, request: Request) -> Result<Explained> {
    let region = model.recipe.seen_region(img.width(), img.height())?;
    let x = model.preprocess(img)?;
    let capture = matches!(request, Request::Attention(_));
    let fwd =
        model.forward(&x, if capture { crate::model::Capture::ATTENTIONS } else { crate::model::Capture::NONE })?;
    let top = model.top_k(&fwd.logits, 5)?.remove(0);
    let prefix = model.config.num_prefix_tokens();
    let (heat, class) = match request {
        Request::Attribution { class } => {
            let class = class.unwrap_or(top[0].index);
            let a = attribution::attribution(model, &x.to_device(&candle_core::Device::Cpu)?, class)?;
            (grid_heatmap(&a.row, prefix)?, Some(class))
        }
        Request::Attention(map) => {
            let att = Attentions::from_tensors(fwd.attentions.as_deref().unwrap_or_default(), 0)?;
            (heatmap(&att, prefix, map)?, None)
        }
    };
    Ok(Explained { top, class, heat, region })
}

/// The image at its own size with the overlay drawn over it as the window draws it.
pub fn render(img: &RgbImage, e: &Explained, cmap: Colormap, opacity: f32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    compose(img, &overlay_layer(&e.heat, e.region, w, h, cmap, opacity))
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

    fn noise(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + y * 13) as u8, ((x * 31) ^ y) as u8, (x + y * 3) as u8]))
    }

    #[test]
    fn overlay_colours_only_the_seen_region_and_dims_the_rest_uniformly() {
        let h = Heatmap { side: 2, values: vec![0.0, 1.0, 0.5, 0.25] };
        let (w, hh) = (120, 40);
        let region = Region { left: 41.9, top: 1.9, right: 78.1, bottom: 38.1 };
        let img = noise(w, hh);
        let out = compose(&img, &overlay_layer(&h, region, w as usize, hh as usize, Colormap::Inferno, 0.6));
        let keep = 1.0 - UNSEEN_DIM;
        for (x, y, p) in out.enumerate_pixels() {
            let src = img.get_pixel(x, y);
            if !(38..=82).contains(&x) {
                // Far from the region: the image, darkened by the same factor everywhere.
                for c in 0..3 {
                    assert_eq!(p.0[c], (src.0[c] as f32 * keep).round() as u8, "({x},{y})");
                }
            } else if (45..75).contains(&x) && (5..35).contains(&y) {
                let want = Colormap::Inferno.map(sample(
                    &h,
                    (x as f64 + 0.5 - region.left) / region.width(),
                    (y as f64 + 0.5 - region.top) / region.height(),
                ));
                for ((&o, &w), &i) in p.0.iter().zip(&want).zip(&src.0) {
                    let blended = (w as f32 * 0.6 + i as f32 * 0.4).round();
                    assert!((o as f32 - blended).abs() <= 1.0, "({x},{y})");
                }
            }
        }
        // The outline sits just outside the left edge, on the row through the middle.
        assert_eq!(out.get_pixel(40, 20).0, OUTLINE);
        // The map's own orientation: low values top-left, high top-right.
        assert!(out.get_pixel(76, 4).0[0] > out.get_pixel(44, 4).0[0]);
    }

    #[test]
    fn overlay_over_the_whole_image_has_no_dim_and_no_outline() {
        let h = Heatmap { side: 2, values: vec![1.0; 4] };
        let layer = overlay_layer(
            &h,
            Region { left: 0.0, top: 0.0, right: 50.0, bottom: 30.0 },
            50,
            30,
            Colormap::Viridis,
            1.0,
        );
        let top = Colormap::Viridis.map(1.0);
        assert!(layer.chunks_exact(4).all(|p| p == [top[0], top[1], top[2], 255]));
    }
}
