//! From image file to model input, reproducing the reference pipelines pixel for pixel.
//!
//! Models are evaluated by their authors with PIL: `Image.convert("RGB")`, then `Image.resize`
//! (two separable passes, horizontal first, with the filter widened by the scale factor when
//! shrinking — PIL's antialiasing — and fixed-point 8-bit rounding between the passes), then a
//! centre crop, then normalisation. Close calls between similar classes flip on small pixel
//! differences, so this module ports PIL's `Resample.c` arithmetic exactly instead of using the
//! `image` crate's resizers, which filter differently.

use std::io::{BufReader, Cursor};
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

/// PIL's resampling filters that ViT/DeiT configs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// PIL's `Image.Resampling` codes as stored in transformers' `preprocessor_config.json`.
    pub fn from_pil_code(code: u64) -> Option<Filter> {
        match code {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                fn sinc(x: f64) -> f64 {
                    if x == 0.0 { 1.0 } else { (x * std::f64::consts::PI).sin() / (x * std::f64::consts::PI) }
                }
                if (-3.0..3.0).contains(&x) { sinc(x) * sinc(x / 3.0) } else { 0.0 }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resize {
    /// Resize to exactly this size (transformers' ViTImageProcessor).
    Exact { width: u32, height: u32 },
    /// Shorter side to this length, aspect kept (torchvision `Resize(int)`).
    ShorterSide(u32),
}

/// How a centre crop rounds an odd margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CropRounding {
    /// torchvision `CenterCrop`: Python's `round`, half to even.
    HalfEven,
    /// transformers `center_crop`: integer division.
    Floor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crop {
    pub width: u32,
    pub height: u32,
    pub rounding: CropRounding,
}

/// Everything that turns a decoded RGB image into a model input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub resize: Resize,
    pub filter: Filter,
    pub crop: Option<Crop>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Recipe {
    /// google/vit-*: straight to size x size, bilinear, mean = std = 0.5.
    pub fn hf_vit(size: u32) -> Recipe {
        Recipe {
            resize: Resize::Exact { width: size, height: size },
            filter: Filter::Bilinear,
            crop: None,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }
    /// The DeiT evaluation recipe: shorter side to size/0.875 (256 for 224) bicubic, centre crop,
    /// ImageNet mean/std.
    pub fn deit(size: u32) -> Recipe {
        Recipe {
            resize: Resize::ShorterSide((size as f64 / 0.875).floor() as u32),
            filter: Filter::Bicubic,
            crop: Some(Crop { width: size, height: size, rounding: CropRounding::HalfEven }),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
    /// The model's input size this recipe produces (width, height).
    pub fn output_size(&self) -> (u32, u32) {
        match (self.crop, self.resize) {
            (Some(c), _) => (c.width, c.height),
            (None, Resize::Exact { width, height }) => (width, height),
            (None, Resize::ShorterSide(s)) => (s, s),
        }
    }
    /// A one-line description for listings.
    pub fn describe(&self) -> String {
        let filter = format!("{:?}", self.filter).to_lowercase();
        let resize = match self.resize {
            Resize::Exact { width, height } => format!("resize {width}x{height} {filter}"),
            Resize::ShorterSide(s) => format!("shorter side {s} {filter}"),
        };
        let crop = self.crop.map(|c| format!(", centre crop {}x{}", c.width, c.height)).unwrap_or_default();
        let norm = if self.mean == IMAGENET_MEAN && self.std == IMAGENET_STD {
            "ImageNet mean/std".to_string()
        } else {
            format!("mean {:?} std {:?}", self.mean, self.std)
        };
        format!("{resize}{crop}, {norm}")
    }

    /// Resize and crop: the 8-bit image the model will see.
    pub fn resize_and_crop(&self, img: &RgbImage) -> Result<RgbImage> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            bail!("the image is empty ({w}x{h})");
        }
        let (nw, nh) = match self.resize {
            Resize::Exact { width, height } => (width, height),
            Resize::ShorterSide(s) => shorter_side_size(w, h, s),
        };
        if nw == 0 || nh == 0 {
            bail!("the image ({w}x{h}) is too thin to resize to {nw}x{nh}");
        }
        let resized = pil_resize(img, nw, nh, self.filter);
        match self.crop {
            None => Ok(resized),
            Some(c) => center_crop(&resized, c),
        }
    }

    /// Normalised CHW floats of an already resized/cropped image.
    pub fn normalize(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (px.0[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// Image -> `[1, 3, H, W]` tensor.
    pub fn to_tensor(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        let prepared = self.resize_and_crop(img)?;
        let (w, h) = prepared.dimensions();
        Ok(Tensor::from_vec(self.normalize(&prepared), (1, 3, h as usize, w as usize), device)?)
    }
}

/// torchvision's `_compute_resized_output_size` for an int size.
fn shorter_side_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as u32; // Python int(): truncation
    if w <= h { (size, new_long) } else { (new_long, size) }
}

/// The top-left corner of a centre crop of `crop` from a `w x h` image.
fn crop_origin(w: u32, h: u32, crop: Crop) -> Result<(u32, u32)> {
    if crop.width > w || crop.height > h {
        bail!("cannot crop {}x{} from a {w}x{h} image", crop.width, crop.height);
    }
    let offset = |outer: u32, inner: u32| -> u32 {
        let margin = outer - inner;
        match crop.rounding {
            CropRounding::Floor => margin / 2,
            // round(margin / 2) with ties to even: an odd margin m gives m/2 + 0.5, which rounds to
            // whichever of m/2 and m/2 + 1 is even.
            CropRounding::HalfEven => {
                let half = margin / 2;
                if margin % 2 == 1 && half % 2 == 1 { half + 1 } else { half }
            }
        }
    };
    Ok((offset(w, crop.width), offset(h, crop.height)))
}

fn center_crop(img: &RgbImage, crop: Crop) -> Result<RgbImage> {
    let (left, top) = crop_origin(img.width(), img.height(), crop)?;
    Ok(image::imageops::crop_imm(img, left, top, crop.width, crop.height).to_image())
}

/// A rectangle in an image's own pixel coordinates (edges, not pixel centres; may be fractional).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Region {
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
}

impl Region {
    pub fn width(&self) -> f64 {
        self.right - self.left
    }
    pub fn height(&self) -> f64 {
        self.bottom - self.top
    }
    /// The same region in an image scaled by `sx`, `sy` (a display copy of the image).
    pub fn scaled(&self, sx: f64, sy: f64) -> Region {
        Region { left: self.left * sx, top: self.top * sy, right: self.right * sx, bottom: self.bottom * sy }
    }
    /// Whether the region is the whole `w x h` image (to within a hundredth of a pixel).
    pub fn covers(&self, w: u32, h: u32) -> bool {
        const EPS: f64 = 0.01;
        self.left <= EPS && self.top <= EPS && self.right >= w as f64 - EPS && self.bottom >= h as f64 - EPS
    }
}

impl Recipe {
    /// The part of a `width x height` image the model sees: the model's input square mapped back
    /// through the resize (a linear map of edges, as PIL's resampler places pixel centres) and
    /// the centre crop (with the same rounding as [`Recipe::resize_and_crop`]). Squash recipes
    /// (no crop) see the whole image.
    pub fn seen_region(&self, width: u32, height: u32) -> Result<Region> {
        if width == 0 || height == 0 {
            bail!("the image is empty ({width}x{height})");
        }
        let (nw, nh) = match self.resize {
            Resize::Exact { width, height } => (width, height),
            Resize::ShorterSide(s) => shorter_side_size(width, height, s),
        };
        if nw == 0 || nh == 0 {
            bail!("the image ({width}x{height}) is too thin to resize to {nw}x{nh}");
        }
        let (left, top, cw, ch) = match self.crop {
            None => (0, 0, nw, nh),
            Some(c) => {
                let (l, t) = crop_origin(nw, nh, c)?;
                (l, t, c.width, c.height)
            }
        };
        let (sx, sy) = (width as f64 / nw as f64, height as f64 / nh as f64);
        Ok(Region {
            left: left as f64 * sx,
            top: top as f64 * sy,
            right: (left + cw) as f64 * sx,
            bottom: (top + ch) as f64 * sy,
        })
    }
}

// ---- PIL's Resample.c, ported exactly ------------------------------------------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, tap count; and fixed-point taps (`ksize` per pixel).
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    taps: Vec<i32>,
    ksize: usize,
}

fn precompute_coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut taps = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero; the max(0) below makes that equal to floor here.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..xmax {
            let v = if ww != 0.0 { k[x] / ww } else { k[x] };
            // normalize_coeffs_8bpc
            taps[xx * ksize + x] = if v < 0.0 {
                (-0.5 + v * (1u32 << PRECISION_BITS) as f64) as i32
            } else {
                (0.5 + v * (1u32 << PRECISION_BITS) as f64) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { bounds, taps, ksize }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((w, h), filter)` on an RGB image.
pub fn pil_resize(img: &RgbImage, out_w: u32, out_h: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (out_w as usize, out_h as usize);
    let mut src: Vec<u8> = img.as_raw().clone();
    let (mut w, h) = (in_w, in_h);
    if out_w != in_w {
        let c = precompute_coeffs(in_w, out_w, filter);
        let mut dst = vec![0u8; out_w * h * 3];
        for y in 0..h {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let k = &c.taps[xx * c.ksize..xx * c.ksize + n];
                for ch in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss = ss.wrapping_add(row[(xmin + x) * 3 + ch] as i32 * kx);
                    }
                    dst[(y * out_w + xx) * 3 + ch] = clip8(ss);
                }
            }
        }
        src = dst;
        w = out_w;
    }
    if out_h != in_h {
        let c = precompute_coeffs(in_h, out_h, filter);
        let mut dst = vec![0u8; w * out_h * 3];
        for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
            let k = &c.taps[yy * c.ksize..yy * c.ksize + n];
            for xc in 0..w * 3 {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (y, &ky) in k.iter().enumerate() {
                    ss = ss.wrapping_add(src[(ymin + y) * w * 3 + xc] as i32 * ky);
                }
                dst[yy * w * 3 + xc] = clip8(ss);
            }
        }
        src = dst;
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, src).expect("buffer size matches dimensions")
}

// ---- decoding ------------------------------------------------------------------------------

/// Decoder limits: a decompression bomb (a tiny file declaring 100000x100000 pixels) is refused
/// from its header, before any pixel buffer is allocated.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
pub const MAX_IMAGE_ALLOC: u64 = 512 * 1024 * 1024;

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_IMAGE_SIDE);
    l.max_image_height = Some(MAX_IMAGE_SIDE);
    l.max_alloc = Some(MAX_IMAGE_ALLOC);
    l
}

/// File extensions of the formats we decode (lower case): the CLI's folder listing and the
/// window's open dialog both use this list.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// Whether `path` names a file of a format we decode, by its extension (any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decodes an image file (JPEG, PNG, WebP, BMP, GIF first frame, TIFF), applies its EXIF
/// orientation and converts it to RGB as PIL's `convert("RGB")` does.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_image(&bytes).with_context(|| format!("cannot decode image {}", path.display()))
}

/// [`load_image`] on bytes already in memory (drag-and-drop, fuzzing).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    let mut reader = ImageReader::new(BufReader::new(Cursor::new(bytes)))
        .with_guessed_format()
        .context("cannot guess the image format")?;
    if reader.format().is_none() {
        bail!("not a supported image format (JPEG, PNG, WebP, BMP, GIF, TIFF)");
    }
    reader.limits(limits());
    let mut decoder = reader.into_decoder()?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder)?;
    img.apply_orientation(orientation);
    Ok(to_rgb_like_pil(img))
}

/// PIL's `convert("RGB")`: alpha is dropped (not composited), grey is replicated, 16-bit RGB
/// keeps the high byte, and 16-bit grey is *clipped* to 0..255 (PIL's `I;16 -> RGB`), which
/// whitens most 16-bit grey photos — the models' reference pipelines see exactly that.
fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgb16(i) => map_rgb(i.width(), i.height(), i.pixels().map(|p| p.0.map(|v| (v >> 8) as u8))),
        DynamicImage::ImageRgba16(i) => {
            map_rgb(i.width(), i.height(), i.pixels().map(|p| [p.0[0], p.0[1], p.0[2]].map(|v| (v >> 8) as u8)))
        }
        DynamicImage::ImageLuma16(i) => map_rgb(i.width(), i.height(), i.pixels().map(|p| [p.0[0].min(255) as u8; 3])),
        DynamicImage::ImageLumaA16(i) => map_rgb(i.width(), i.height(), i.pixels().map(|p| [p.0[0].min(255) as u8; 3])),
        // 8-bit grey, grey+alpha, RGBA and float images: the image crate's conversion drops alpha
        // and replicates grey exactly as PIL does.
        other => other.to_rgb8(),
    }
}

fn map_rgb(w: u32, h: u32, px: impl Iterator<Item = [u8; 3]>) -> RgbImage {
    let raw: Vec<u8> = px.flatten().collect();
    RgbImage::from_raw(w, h, raw).expect("buffer size matches dimensions")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// timm's ViT-Ti recipe: shorter side floor(224 / 0.9) = 248 bicubic, centre crop 224.
    fn crop_recipe() -> Recipe {
        Recipe {
            resize: Resize::ShorterSide(248),
            filter: Filter::Bicubic,
            crop: Some(Crop { width: 224, height: 224, rounding: CropRounding::HalfEven }),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    fn close(a: Region, b: Region) -> bool {
        [(a.left, b.left), (a.top, b.top), (a.right, b.right), (a.bottom, b.bottom)]
            .iter()
            .all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn crop_recipes_see_the_centre_of_wide_tall_and_square_images() {
        let r = crop_recipe();
        // 1200x400 -> 744x248, crop origin (260, 12): edges scale by 1200/744 and 400/248.
        let wide = r.seen_region(1200, 400).unwrap();
        let want = Region {
            left: 260.0 * 1200.0 / 744.0,
            top: 12.0 * 400.0 / 248.0,
            right: 484.0 * 1200.0 / 744.0,
            bottom: 236.0 * 400.0 / 248.0,
        };
        assert!(close(wide, want), "{wide:?}");
        assert!((wide.left - 419.355).abs() < 1e-3 && (wide.right - 780.645).abs() < 1e-3);
        // The transpose sees the transposed region.
        let tall = r.seen_region(400, 1200).unwrap();
        assert!(close(tall, Region { left: want.top, top: want.left, right: want.bottom, bottom: want.right }));
        // Square: 248x248, crop origin (12, 12).
        let sq = r.seen_region(500, 500).unwrap();
        let e = 12.0 * 500.0 / 248.0;
        assert!(close(sq, Region { left: e, top: e, right: 500.0 - e, bottom: 500.0 - e }), "{sq:?}");
        assert!(!sq.covers(500, 500));
        // An odd margin rounds half to even like torchvision: 1000x331 -> 749x248, margin 525 -> 262.
        let odd = r.seen_region(1000, 331).unwrap();
        assert!((odd.left - 262.0 * 1000.0 / 749.0).abs() < 1e-9, "{odd:?}");
    }

    #[test]
    fn squash_recipes_see_the_whole_image() {
        let r = Recipe::hf_vit(224);
        for (w, h) in [(1200, 400), (400, 1200), (500, 500), (1, 1)] {
            let reg = r.seen_region(w, h).unwrap();
            assert!(close(reg, Region { left: 0.0, top: 0.0, right: w as f64, bottom: h as f64 }), "{w}x{h}");
            assert!(reg.covers(w, h));
        }
        assert!(r.seen_region(0, 5).is_err());
    }

    /// Green inside `region`, red elsewhere.
    fn painted(w: u32, h: u32, region: Region) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
            let inside = cx > region.left && cx < region.right && cy > region.top && cy < region.bottom;
            if inside { image::Rgb([0, 255, 0]) } else { image::Rgb([255, 0, 0]) }
        })
    }

    #[test]
    fn the_region_is_what_the_pipeline_actually_crops() {
        // Paint the mapped region: the model's input must be green except where the resampling
        // filter reaches across the edge (2 pixels). Paint it 3 input pixels smaller on each side:
        // the input's outermost pixels must then be red. Together they pin the edges.
        for recipe in [crop_recipe(), Recipe::deit(224), Recipe::hf_vit(224)] {
            for (w, h) in [(1200, 400), (400, 1200), (500, 500), (333, 517)] {
                let reg = recipe.seen_region(w, h).unwrap();
                let input = recipe.resize_and_crop(&painted(w, h, reg)).unwrap();
                let (iw, ih) = input.dimensions();
                for (x, y, p) in input.enumerate_pixels() {
                    if x >= 2 && y >= 2 && x < iw - 2 && y < ih - 2 {
                        assert!(p.0[1] > 200 && p.0[0] < 60, "{recipe:?} {w}x{h}: ({x},{y}) is {p:?}");
                    }
                }
                if recipe.crop.is_none() {
                    continue; // the region is the whole image: nothing outside it
                }
                let (px, py) = (reg.width() / iw as f64 * 3.0, reg.height() / ih as f64 * 3.0);
                let inner =
                    Region { left: reg.left + px, top: reg.top + py, right: reg.right - px, bottom: reg.bottom - py };
                let input = recipe.resize_and_crop(&painted(w, h, inner)).unwrap();
                for (x, y) in [(0, ih / 2), (iw - 1, ih / 2), (iw / 2, 0), (iw / 2, ih - 1)] {
                    let p = input.get_pixel(x, y);
                    assert!(p.0[0] > 200, "{recipe:?} {w}x{h}: edge pixel ({x},{y}) is {p:?}, expected red");
                }
            }
        }
    }
}
