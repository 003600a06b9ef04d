//! Every supported image format and pixel layout decodes, and converts to RGB as PIL's
//! `convert("RGB")` would (the models' reference pipelines), with EXIF orientation applied.

use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba, RgbaImage};
use vit_workbench::preprocess::{Recipe, decode_image};

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

fn gradient_rgb(w: u32, h: u32) -> image::RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 37 % 256) as u8, (y * 53 % 256) as u8, ((x + y) * 11 % 256) as u8]))
}

#[test]
fn lossless_formats_round_trip_exactly() {
    let src = gradient_rgb(13, 7);
    for format in [ImageFormat::Png, ImageFormat::Bmp, ImageFormat::Tiff, ImageFormat::WebP] {
        let bytes = encode(&DynamicImage::ImageRgb8(src.clone()), format);
        let got = decode_image(&bytes).unwrap_or_else(|e| panic!("{format:?}: {e:#}"));
        assert_eq!(got, src, "{format:?}");
    }
}

#[test]
fn jpeg_decodes_close_to_its_source() {
    let src = ImageBuffer::from_fn(32, 32, |x, _| Rgb([(x * 8) as u8, 128, 200]));
    let bytes = encode(&DynamicImage::ImageRgb8(src.clone()), ImageFormat::Jpeg);
    let got = decode_image(&bytes).unwrap();
    let max = got.as_raw().iter().zip(src.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(max < 24, "JPEG too far from source: {max}");
}

#[test]
fn grey_and_alpha_convert_like_pil() {
    let grey = ImageBuffer::from_fn(4, 3, |x, y| Luma([(x * 60 + y) as u8]));
    let got = decode_image(&encode(&DynamicImage::ImageLuma8(grey.clone()), ImageFormat::Png)).unwrap();
    for (g, p) in grey.pixels().zip(got.pixels()) {
        assert_eq!(p.0, [g.0[0]; 3]);
    }
    // Alpha is dropped, not composited on white or black.
    let rgba: RgbaImage = ImageBuffer::from_fn(4, 3, |x, y| Rgba([x as u8 * 50, y as u8 * 70, 9, (x * 80) as u8]));
    let got = decode_image(&encode(&DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Png)).unwrap();
    for (a, p) in rgba.pixels().zip(got.pixels()) {
        assert_eq!(p.0, [a.0[0], a.0[1], a.0[2]]);
    }
    let la = ImageBuffer::from_fn(2, 2, |x, _| LumaA([x as u8 * 100 + 5, 0u8]));
    let got = decode_image(&encode(&DynamicImage::ImageLumaA8(la), ImageFormat::Png)).unwrap();
    assert_eq!(got.get_pixel(1, 0).0, [105; 3]);
}

#[test]
fn sixteen_bit_converts_like_pil() {
    // PIL reads 16-bit RGB PNGs keeping the high byte, and clips 16-bit grey (`I;16`) to 0..255.
    let vals = [0u16, 255, 256, 257, 1000, 32767, 65535, 65280];
    let rgb16: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(vals.len() as u32, 1, |x, _| Rgb([vals[x as usize]; 3]));
    let got = decode_image(&encode(&DynamicImage::ImageRgb16(rgb16), ImageFormat::Png)).unwrap();
    let expected_high_byte = [0u8, 0, 1, 1, 3, 127, 255, 255];
    assert_eq!(got.pixels().map(|p| p.0[0]).collect::<Vec<_>>(), expected_high_byte);
    let grey16: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_fn(vals.len() as u32, 1, |x, _| Luma([vals[x as usize]]));
    let got = decode_image(&encode(&DynamicImage::ImageLuma16(grey16), ImageFormat::Png)).unwrap();
    let expected_clipped = [0u8, 255, 255, 255, 255, 255, 255, 255];
    assert_eq!(got.pixels().map(|p| p.0[1]).collect::<Vec<_>>(), expected_clipped);
}

#[test]
fn gif_uses_the_first_frame() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame};
    let red = RgbaImage::from_pixel(6, 4, Rgba([255, 0, 0, 255]));
    let blue = RgbaImage::from_pixel(6, 4, Rgba([0, 0, 255, 255]));
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut bytes);
        enc.encode_frames(
            [red, blue].into_iter().map(|f| Frame::from_parts(f, 0, 0, Delay::from_numer_denom_ms(100, 1))),
        )
        .unwrap();
    }
    let got = decode_image(&bytes).unwrap();
    assert_eq!(got.dimensions(), (6, 4));
    assert!(got.pixels().all(|p| p.0[0] > 200 && p.0[2] < 50), "not the first (red) frame");
}

#[test]
fn palette_png_expands_to_its_colours() {
    // A 2x1 palette PNG written by hand: palette [green, magenta], pixels [1, 0].
    fn chunk(t: &[u8], d: &[u8]) -> Vec<u8> {
        let mut c = (d.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(t);
        c.extend_from_slice(d);
        let mut crc_in = t.to_vec();
        crc_in.extend_from_slice(d);
        c.extend_from_slice(&crc32(&crc_in).to_be_bytes());
        c
    }
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &[0, 0, 0, 2, 0, 0, 0, 1, 8, 3, 0, 0, 0]));
    png.extend(chunk(b"PLTE", &[0, 255, 0, 255, 0, 255]));
    let raw = [0u8, 1, 0]; // filter byte, then indices
    let mut z = Vec::new();
    {
        use std::io::Write;
        // zlib stream with a stored (uncompressed) block.
        z.extend_from_slice(&[0x78, 0x01, 0x01]);
        z.extend_from_slice(&(raw.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
        z.write_all(&raw).unwrap();
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &raw {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    }
    png.extend(chunk(b"IDAT", &z));
    png.extend(chunk(b"IEND", &[]));
    let got = decode_image(&png).unwrap();
    assert_eq!(got.get_pixel(0, 0).0, [255, 0, 255]);
    assert_eq!(got.get_pixel(1, 0).0, [0, 255, 0]);
}

/// A JPEG with an EXIF APP1 segment saying "rotate 90° clockwise to display" (orientation 6).
fn jpeg_with_orientation(img: &image::RgbImage, orientation: u16) -> Vec<u8> {
    let jpeg = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg);
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    // Left half black, right half white, 32x16: rotated 90° clockwise it becomes 16x32 with the
    // black half on top.
    let src = ImageBuffer::from_fn(32, 16, |x, _| if x < 16 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) });
    let got = decode_image(&jpeg_with_orientation(&src, 6)).unwrap();
    assert_eq!(got.dimensions(), (16, 32));
    assert!(got.get_pixel(8, 4).0[0] < 40, "top should be black");
    assert!(got.get_pixel(8, 28).0[0] > 215, "bottom should be white");
    let upright = decode_image(&jpeg_with_orientation(&src, 1)).unwrap();
    assert_eq!(upright.dimensions(), (32, 16));
}

#[test]
fn tiny_and_thin_images_still_preprocess() {
    for (w, h) in [(1, 1), (1, 300), (300, 1), (2, 3)] {
        let img = gradient_rgb(w, h);
        for recipe in [Recipe::hf_vit(224), Recipe::deit(224)] {
            let out = recipe.resize_and_crop(&img).unwrap_or_else(|e| panic!("{w}x{h}: {e:#}"));
            assert_eq!(out.dimensions(), (224, 224));
        }
    }
}

#[test]
fn garbage_and_empty_bytes_are_errors_not_panics() {
    assert!(decode_image(&[]).is_err());
    assert!(decode_image(b"GIF89a garbage").is_err());
    let mut png = encode(&DynamicImage::ImageRgb8(gradient_rgb(64, 64)), ImageFormat::Png);
    png.truncate(png.len() / 2);
    assert!(decode_image(&png).is_err());
}
