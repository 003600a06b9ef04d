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
    ///
    /// Only the pixels inside the crop are resampled (each output pixel of PIL's separable
    /// resize depends only on its own taps, so this is the same arithmetic): a 1x16384 strip
    /// resized to shorter side 248 would otherwise need a 248x4063232 intermediate (3 GB).
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
        let region = match self.crop {
            None => {
                if nw as u64 * nh as u64 * 3 > MAX_RESIZED_BYTES {
                    bail!(
                        "the image ({w}x{h}) would be resized to {nw}x{nh}, more than the {} MiB limit of a resized image",
                        MAX_RESIZED_BYTES >> 20
                    );
                }
                Kept { left: 0, top: 0, width: nw, height: nh }
            }
            Some(c) => {
                if c.width > nw || c.height > nh {
                    bail!("cannot crop {}x{} from a {nw}x{nh} image", c.width, c.height);
                }
                let (left, top) = (crop_offset(nw, c.width, c.rounding), crop_offset(nh, c.height, c.rounding));
                Kept { left, top, width: c.width, height: c.height }
            }
        };
        Ok(pil_resize_region(img, nw, nh, region, self.filter))
    }

    /// Refuses numbers no preprocessing can use: sizes outside 1..=4096, a crop larger than
    /// the resized image, a non-finite mean, a std that is zero, negative or non-finite (its
    /// division would turn every pixel into NaN/Inf).
    pub fn validate(&self) -> Result<()> {
        let side = |what: &str, v: u32| -> Result<()> {
            if v == 0 || v > MAX_RECIPE_SIDE {
                bail!("preprocessing {what} = {v} is outside the supported range 1..={MAX_RECIPE_SIDE}");
            }
            Ok(())
        };
        let (rw, rh) = match self.resize {
            Resize::Exact { width, height } => {
                side("resize width", width)?;
                side("resize height", height)?;
                (width, height)
            }
            Resize::ShorterSide(s) => {
                side("resize shorter side", s)?;
                (s, s)
            }
        };
        if let Some(c) = self.crop {
            side("crop width", c.width)?;
            side("crop height", c.height)?;
            if c.width > rw || c.height > rh {
                bail!("preprocessing crops {}x{} out of an image resized to only {rw}x{rh}", c.width, c.height);
            }
        }
        for c in 0..3 {
            if !self.mean[c].is_finite() {
                bail!("preprocessing mean[{c}] = {} is not a finite number", self.mean[c]);
            }
            if !(self.std[c].is_finite() && self.std[c] > 0.0) {
                bail!(
                    "preprocessing std[{c}] = {} must be a positive finite number (inputs are divided by it)",
                    self.std[c]
                );
            }
        }
        Ok(())
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

/// Offset of a centre crop of `inner` in `outer`.
fn crop_offset(outer: u32, inner: u32, rounding: CropRounding) -> u32 {
    let margin = outer - inner;
    match rounding {
        CropRounding::Floor => margin / 2,
        // round(margin / 2) with ties to even: an odd margin m gives m/2 + 0.5, which rounds to
        // whichever of m/2 and m/2 + 1 is even.
        CropRounding::HalfEven => {
            let half = margin / 2;
            if margin % 2 == 1 && half % 2 == 1 { half + 1 } else { half }
        }
    }
}

/// The part of a resized image that is kept, in its pixels.
#[derive(Clone, Copy, Debug)]
struct Kept {
    left: u32,
    top: u32,
    width: u32,
    height: u32,
}

/// Largest side a recipe may resize or crop to (models take 224..518).
pub const MAX_RECIPE_SIDE: u32 = 4096;
/// Largest resized image kept whole (recipes without a crop).
pub const MAX_RESIZED_BYTES: u64 = 64 << 20;

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
                if c.width > nw || c.height > nh {
                    bail!("cannot crop {}x{} from a {nw}x{nh} image", c.width, c.height);
                }
                (crop_offset(nw, c.width, c.rounding), crop_offset(nh, c.height, c.rounding), c.width, c.height)
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

/// Coefficients of the output pixels `outputs` (a sub-range of `0..out_size`).
fn precompute_coeffs(in_size: usize, out_size: usize, outputs: std::ops::Range<usize>, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(outputs.len());
    let mut taps = vec![0i32; outputs.len() * ksize];
    let mut k = vec![0f64; ksize];
    for (slot, xx) in outputs.enumerate() {
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
            taps[slot * ksize + x] = if v < 0.0 {
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
    pil_resize_region(img, out_w, out_h, Kept { left: 0, top: 0, width: out_w, height: out_h }, filter)
}

/// `Image.resize((out_w, out_h), filter).crop(region)`, computing only the pixels of `region`:
/// the horizontal pass runs over just the input rows the kept output rows read (as PIL itself
/// does), and over just the kept columns.
fn pil_resize_region(img: &RgbImage, out_w: u32, out_h: u32, region: Kept, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (out_w as usize, out_h as usize);
    let (left, top, rw, rh) =
        (region.left as usize, region.top as usize, region.width as usize, region.height as usize);
    let src = img.as_raw();
    // Vertical taps of the kept rows decide which input rows the horizontal pass needs.
    let vertical = (out_h != in_h).then(|| precompute_coeffs(in_h, out_h, top..top + rh, filter));
    let (row_first, row_end) = match &vertical {
        Some(c) => {
            (c.bounds.iter().map(|b| b.0).min().unwrap_or(0), c.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0))
        }
        None => (top, top + rh),
    };
    let rows = row_end - row_first;
    // Horizontal pass: `rows` x `rw` intermediate.
    let mut mid = vec![0u8; rows * rw * 3];
    if out_w != in_w {
        let c = precompute_coeffs(in_w, out_w, left..left + rw, filter);
        for r in 0..rows {
            let y = row_first + r;
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let k = &c.taps[xx * c.ksize..xx * c.ksize + n];
                for ch in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss = ss.wrapping_add(row[(xmin + x) * 3 + ch] as i32 * kx);
                    }
                    mid[(r * rw + xx) * 3 + ch] = clip8(ss);
                }
            }
        }
    } else {
        for r in 0..rows {
            let y = row_first + r;
            mid[r * rw * 3..(r + 1) * rw * 3].copy_from_slice(&src[(y * in_w + left) * 3..(y * in_w + left + rw) * 3]);
        }
    }
    let out = match vertical {
        None => mid,
        Some(c) => {
            let mut dst = vec![0u8; rw * rh * 3];
            for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
                let k = &c.taps[yy * c.ksize..yy * c.ksize + n];
                for xc in 0..rw * 3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (y, &ky) in k.iter().enumerate() {
                        ss = ss.wrapping_add(mid[(ymin - row_first + y) * rw * 3 + xc] as i32 * ky);
                    }
                    dst[yy * rw * 3 + xc] = clip8(ss);
                }
            }
            dst
        }
    };
    RgbImage::from_raw(rw as u32, rh as u32, out).expect("buffer size matches dimensions")
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

/// Largest image file read (a 16384x16384 RGB PNG or JPEG is far smaller).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// A decoded image, and whether its file ended before its data did.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    pub image: RgbImage,
    /// Set when the file was truncated and the caller allowed it: what was missing.
    pub truncated: Option<String>,
}

/// Decodes an image file (JPEG, PNG, WebP, BMP, GIF first frame, TIFF), applies its EXIF
/// orientation and converts it to RGB as PIL's `convert("RGB")` does. A truncated file is an
/// error, as in PIL ("image file is truncated").
pub fn load_image(path: &Path) -> Result<RgbImage> {
    Ok(load_image_with(path, false)?.image)
}

/// [`load_image`]; with `allow_truncated`, a truncated file gives what decoded, marked as such.
pub fn load_image_with(path: &Path, allow_truncated: bool) -> Result<LoadedImage> {
    let bytes = read_image_file(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_image_with(&bytes, allow_truncated).with_context(|| format!("cannot decode image {}", path.display()))
}

/// Reads at most [`MAX_IMAGE_FILE_BYTES`] of a regular file. FIFOs, devices and sockets are
/// refused from their metadata, before opening (opening a FIFO blocks until a writer comes).
fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        bail!("{}", not_a_file(&meta.file_type()));
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        bail!(
            "the file is {} MiB, more than the {} MiB limit for an image",
            meta.len() >> 20,
            MAX_IMAGE_FILE_BYTES >> 20
        );
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Were the path swapped for a FIFO after the check, opening must not block either.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("{}", not_a_file(&meta.file_type()));
    }
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(meta.len() as usize).context("not enough memory to read the file")?;
    file.take(MAX_IMAGE_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        bail!("the file holds more than the {} MiB limit for an image", MAX_IMAGE_FILE_BYTES >> 20);
    }
    Ok(bytes)
}

fn not_a_file(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "it is a FIFO (named pipe), not an image file";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "it is a device, not an image file";
        }
        if ft.is_socket() {
            return "it is a socket, not an image file";
        }
    }
    if ft.is_dir() { "it is a folder, not an image file" } else { "it is not a regular file" }
}

/// [`load_image`] on bytes already in memory (drag-and-drop, fuzzing).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    Ok(decode_image_with(bytes, false)?.image)
}

/// [`decode_image`], optionally accepting a truncated file (see [`LoadedImage::truncated`]).
pub fn decode_image_with(bytes: &[u8], allow_truncated: bool) -> Result<LoadedImage> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    let mut reader = ImageReader::new(BufReader::new(Cursor::new(bytes)))
        .with_guessed_format()
        .context("cannot guess the image format")?;
    let Some(format) = reader.format() else {
        bail!("not a supported image format (JPEG, PNG, WebP, BMP, GIF, TIFF)");
    };
    reader.limits(limits());
    let truncated_or = |e: image::ImageError| match ended_early(&e) {
        true => anyhow::anyhow!("image file is truncated: {}", missing_part(format, bytes)),
        false => e.into(),
    };
    let mut decoder = reader.into_decoder().map_err(truncated_or)?;
    // `into_decoder` does not count the pixel buffer against the limits (`decode` would):
    // reserve it here, so the 512 MiB holds for the decoded image plus the decoder's own
    // allocations, and the RGB copy made below is bounded the same way.
    let (w, h) = decoder.dimensions();
    let mut remaining = limits();
    let pixel_bytes = decoder.total_bytes();
    let rgb_bytes = w as u64 * h as u64 * 3;
    if remaining.reserve(pixel_bytes).is_err() || rgb_bytes > MAX_IMAGE_ALLOC {
        bail!(
            "the image is {w}x{h} ({:?}): decoding it needs {} MiB, more than the {} MiB limit",
            decoder.color_type(),
            pixel_bytes.max(rgb_bytes) >> 20,
            MAX_IMAGE_ALLOC >> 20
        );
    }
    decoder.set_limits(remaining)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(truncated_or)?;
    let truncated = truncation(format, bytes, &img);
    if let Some(what) = &truncated
        && !allow_truncated
    {
        return Err(Truncated(what.clone()).into());
    }
    img.apply_orientation(orientation);
    Ok(LoadedImage { image: to_rgb_like_pil(img), truncated })
}

/// The error for a file that decoded only in part when that was not allowed; a caller can
/// find it in the error chain (the window then offers to open the image anyway).
#[derive(Debug)]
pub struct Truncated(pub String);

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "image file is truncated: {} (the command line's --allow-truncated uses what decoded)", self.0)
    }
}

impl std::error::Error for Truncated {}

/// Whether a file that decoded ended before its data did, and what was missing. Decoders
/// that fill a cut-off image with grey instead of failing are checked here (JPEG).
fn truncation(format: image::ImageFormat, bytes: &[u8], img: &DynamicImage) -> Option<String> {
    match format {
        image::ImageFormat::Jpeg if !jpeg_is_complete(bytes) => {
            let (w, h) = (img.width(), img.height());
            let missing = uniform_bottom_rows(img);
            let what = if missing > 0 {
                format!(
                    "about {:.0}% of the rows (the bottom {missing} of {h}, {w} wide) did not decode",
                    100.0 * missing as f64 / h as f64
                )
            } else {
                "its last scans are missing".to_string()
            };
            Some(format!("the JPEG data stops after {} bytes without its end-of-image marker; {what}", bytes.len()))
        }
        _ => None,
    }
}

/// Whether a decoder failed because the data ran out (each decoder words it its own way).
fn ended_early(e: &image::ImageError) -> bool {
    if let image::ImageError::IoError(io) = e
        && io.kind() == std::io::ErrorKind::UnexpectedEof
    {
        return true;
    }
    let m = e.to_string().to_ascii_lowercase();
    m.contains("end of file") || m.contains("fill whole buffer") || m.contains("unexpected eof")
}

/// What is known of a cut-off file's missing part.
fn missing_part(format: image::ImageFormat, bytes: &[u8]) -> String {
    let have = bytes.len();
    let name = format!("{format:?}").to_uppercase();
    // BMP headers state the file size.
    let declared = match format {
        image::ImageFormat::Bmp if have >= 6 => {
            Some(u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize)
        }
        _ => None,
    };
    match declared {
        Some(d) if d > have => format!("the {name} data stops after {have} of its {d} bytes ({} missing)", d - have),
        _ => format!("the {name} data stops after {have} bytes, before the image is complete"),
    }
}

/// Walks a JPEG's segments and entropy-coded scans; true when an end-of-image marker is reached.
fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i < b.len() {
        if b[i] != 0xFF {
            i += 1; // stray bytes between segments: tolerated, as decoders do
            continue;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { return false };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else { return false };
        i += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not stuffing (FF00) or a restart.
            while i + 1 < b.len() {
                if b[i] == 0xFF && b[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&b[i + 1]) && b[i + 1] != 0xFF {
                    break;
                }
                i += 1;
            }
            if i + 1 >= b.len() {
                return false;
            }
        }
    }
    false
}

/// Rows at the bottom that all equal the last pixel: where a cut-off JPEG was filled in.
fn uniform_bottom_rows(img: &DynamicImage) -> u32 {
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return 0;
    }
    let last = *rgb.get_pixel(w - 1, h - 1);
    (0..h).rev().take_while(|&y| (0..w).all(|x| *rgb.get_pixel(x, y) == last)).count() as u32
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
