//! Turns the bytes of one photo into the model's input tensor: sniff the
//! format (JPEG or PNG), decode under size limits, apply EXIF orientation,
//! flatten to RGB over white, resize to 224×224 and normalise to `[-1, 1]`
//! in NCHW planar order.
//!
//! This crate owns only that pixel pipeline. It must not know about files,
//! object storage, DataFusion or the model runtime: callers hand it bytes and
//! a buffer, and get back either the tensor or an [`ImageError`] whose
//! [`kind`](ImageError::kind) they can count and report.

use std::cell::RefCell;
use std::io::Cursor;

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Side of the square image the model takes.
pub const INPUT_SIZE: u32 = 224;

/// Number of `f32` values in one preprocessed image (NCHW planar, 3 planes).
pub const TENSOR_LEN: usize = 3 * PLANE_LEN;

const PLANE_LEN: usize = (INPUT_SIZE as usize) * (INPUT_SIZE as usize);

/// Limits that keep one hostile or absurd file from exhausting memory.
#[derive(Debug, Clone)]
pub struct PreprocessConfig {
    /// Largest `width * height` accepted, checked from the header before any
    /// pixel is decoded.
    pub max_pixels: u64,
    /// Largest amount of memory the decoder and the RGB conversion may
    /// allocate for one image.
    pub max_alloc_bytes: u64,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            // 8000x8000: well above any camera photo in the dataset, well
            // below what would make a worker swap.
            max_pixels: 64_000_000,
            max_alloc_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Why one image could not be turned into a tensor. `Display` is a one-line
/// reason meant for a person; [`ImageError::kind`] is the stable tag meant for
/// counting.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("not a recognised image format (expected JPEG or PNG)")]
    UnknownFormat,
    #[error("corrupt or truncated image: {0}")]
    Decode(String),
    #[error("image is {width}x{height} pixels, over the limit of {max_pixels} pixels")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    /// Within the pixel limit but the decoded buffers would not fit the memory
    /// budget (e.g. a 16-bit RGBA image near the pixel limit).
    #[error("decoding the image would need more than {max_alloc_bytes} bytes of memory")]
    OverMemoryLimit { max_alloc_bytes: u64 },
    /// A valid JPEG/PNG using a feature the decoder does not implement
    /// (e.g. a 12-bit or arithmetic-coded JPEG).
    #[error("unsupported image variant: {0}")]
    Unsupported(String),
}

impl ImageError {
    /// Short stable tag, suitable as a metric label or a column value.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageError::Empty => "empty",
            ImageError::UnknownFormat => "unknown_format",
            ImageError::Decode(_) => "decode",
            // Both are "this image is too big for the budget"; callers only
            // need to tell size problems from corruption.
            ImageError::TooLarge { .. } | ImageError::OverMemoryLimit { .. } => "too_large",
            ImageError::Unsupported(_) => "unsupported",
        }
    }
}

/// Decodes `bytes` and writes the normalised 224×224 tensor into `out`.
///
/// The format is sniffed from the bytes, never from a file name. Values are
/// `pixel / 127.5 - 1.0` in RGB order, NCHW planar: the whole R plane, then
/// G, then B, each row-major.
///
/// The resize is a bilinear convolution (`fast_image_resize`,
/// `FilterType::Bilinear`) to exactly 224×224 without keeping the aspect
/// ratio. Bilinear is what `tf.image.resize` and Keras
/// `image_dataset_from_directory` use by default and what an independent
/// Pillow reference (`Image.resize((224, 224), Image.BILINEAR)`) does, so the
/// features match a Python reference. `fast_image_resize` widens the kernel
/// when downscaling exactly as Pillow does, so it agrees with the Pillow
/// reference to within rounding; `tf.image.resize` without `antialias=True`
/// samples fewer source pixels on strong downscales and differs slightly.
///
/// # Panics
/// If `out.len() != TENSOR_LEN`: that is a caller bug, not a bad image.
pub fn preprocess_into(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    out: &mut [f32],
) -> Result<(), ImageError> {
    assert_eq!(
        out.len(),
        TENSOR_LEN,
        "output buffer must hold exactly one 3x224x224 tensor"
    );
    let rgb = decode_rgb_guarded(bytes, cfg)?;
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.resize(&rgb);
        normalise_planar(&scratch.resized, out);
    });
    Ok(())
}

/// Convenience wrapper around [`preprocess_into`] that allocates the tensor.
pub fn preprocess(bytes: &[u8], cfg: &PreprocessConfig) -> Result<Vec<f32>, ImageError> {
    let mut out = vec![0.0; TENSOR_LEN];
    preprocess_into(bytes, cfg, &mut out)?;
    Ok(out)
}

/// Per-thread resizer state: the resizer keeps internal buffers that would
/// otherwise be reallocated for every image.
struct Scratch {
    resizer: fr::Resizer,
    resized: Vec<u8>,
}

impl Scratch {
    fn resize(&mut self, src: &RgbImage) {
        let options = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
        let src_view =
            fr::images::ImageRef::new(src.width(), src.height(), src.as_raw(), fr::PixelType::U8x3)
                .expect("RgbImage buffer always matches its dimensions");
        let mut dst = fr::images::Image::from_slice_u8(
            INPUT_SIZE,
            INPUT_SIZE,
            &mut self.resized,
            fr::PixelType::U8x3,
        )
        .expect("scratch buffer is sized for 224x224 RGB");
        self.resizer
            .resize(&src_view, &mut dst, &options)
            .expect("source and destination are both non-empty U8x3 images");
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        resizer: fr::Resizer::new(),
        resized: vec![0; 3 * PLANE_LEN],
    });
}

fn normalise_planar(rgb: &[u8], out: &mut [f32]) {
    let (r_plane, rest) = out.split_at_mut(PLANE_LEN);
    let (g_plane, b_plane) = rest.split_at_mut(PLANE_LEN);
    let planes = r_plane.iter_mut().zip(g_plane).zip(b_plane);
    for (((r, g), b), px) in planes.zip(rgb.chunks_exact(3)) {
        *r = f32::from(px[0]) / 127.5 - 1.0;
        *g = f32::from(px[1]) / 127.5 - 1.0;
        *b = f32::from(px[2]) / 127.5 - 1.0;
    }
}

/// One malformed file must cost one error row, not the worker: a panic in a
/// third-party decoder is turned into a decode error.
fn decode_rgb_guarded(bytes: &[u8], cfg: &PreprocessConfig) -> Result<RgbImage, ImageError> {
    std::panic::catch_unwind(|| decode_rgb(bytes, cfg)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(ImageError::Decode(one_line(&format!(
            "decoder panicked: {msg}"
        ))))
    })
}

fn decode_rgb(bytes: &[u8], cfg: &PreprocessConfig) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
        _ => return Err(ImageError::UnknownFormat),
    };

    // Our own header read, before any decoder exists: the PNG decoder reads
    // ahead to the first IDAT and the JPEG decoder copies the whole input, so
    // this is the cheapest point to refuse a file that claims huge dimensions.
    let header = read_header(bytes, format);
    if let Some((w, h)) = header.dimensions {
        check_pixels(w, h, cfg)?;
    }
    if let Some(scan_start) = header.scan_start
        && !jpeg_has_end_marker(bytes, scan_start)
    {
        return Err(ImageError::Decode(
            "JPEG data ends before its end-of-image marker (file is truncated)".to_string(),
        ));
    }

    // Second guard, enforced inside the decoders themselves. A side can never
    // exceed `max_pixels` when the other side is at least 1.
    let side = u32::try_from(cfg.max_pixels).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(cfg.max_alloc_bytes);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_decoder_error(e, cfg))?;

    // The header parser above may not have found the frame header (odd
    // marker layouts), so the decoder's view is checked as well.
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, cfg)?;

    // A broken EXIF block is common in camera files and does not make the
    // pixels unusable, so it falls back to "no transform".
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);

    let needs_rgb_copy =
        decoder.color_type() != image::ColorType::Rgb8 || orientation != Orientation::NoTransforms;
    let extra = if needs_rgb_copy {
        u64::from(w) * u64::from(h) * 3
    } else {
        0
    };
    if decoder.total_bytes().saturating_add(extra) > cfg.max_alloc_bytes {
        return Err(ImageError::OverMemoryLimit {
            max_alloc_bytes: cfg.max_alloc_bytes,
        });
    }

    let img = DynamicImage::from_decoder(decoder).map_err(|e| map_decoder_error(e, cfg))?;
    // Flatten before rotating: the rotation then copies 3 bytes per pixel
    // instead of up to 8.
    let mut img = DynamicImage::ImageRgb8(into_rgb8_over_white(img));
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

fn check_pixels(width: u32, height: u32, cfg: &PreprocessConfig) -> Result<(), ImageError> {
    if u64::from(width) * u64::from(height) > cfg.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max_pixels: cfg.max_pixels,
        });
    }
    Ok(())
}

fn map_decoder_error(err: image::ImageError, cfg: &PreprocessConfig) -> ImageError {
    match err {
        image::ImageError::Limits(_) => ImageError::OverMemoryLimit {
            max_alloc_bytes: cfg.max_alloc_bytes,
        },
        image::ImageError::Unsupported(e) => ImageError::Unsupported(one_line(&e.to_string())),
        other => ImageError::Decode(one_line(&other.to_string())),
    }
}

/// Error texts end up in single report lines and CSV-like columns.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the headers say, read without decoding. Every field is `None` when
/// the header cannot be found; the decoder then has the last word.
#[derive(Debug, Default, PartialEq)]
struct HeaderInfo {
    dimensions: Option<(u32, u32)>,
    /// JPEG only: offset of the first start-of-scan marker.
    scan_start: Option<usize>,
}

fn read_header(bytes: &[u8], format: ImageFormat) -> HeaderInfo {
    match format {
        ImageFormat::Png => HeaderInfo {
            dimensions: png_dimensions(bytes),
            scan_start: None,
        },
        ImageFormat::Jpeg => jpeg_layout(bytes),
        _ => HeaderInfo::default(),
    }
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn png_dimensions(b: &[u8]) -> Option<(u32, u32)> {
    // Signature (8), IHDR length (4), "IHDR" (4), width (4), height (4):
    // the PNG spec requires IHDR to be the first chunk.
    if b.get(12..16)? != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(b.get(16..20)?.try_into().ok()?);
    let h = u32::from_be_bytes(b.get(20..24)?.try_into().ok()?);
    Some((w, h))
}

/// Walks the marker segments up to the first scan. Segments are skipped by
/// their length, so an EXIF thumbnail (a whole JPEG inside APP1) is never
/// mistaken for the main image.
fn jpeg_layout(b: &[u8]) -> HeaderInfo {
    let mut info = HeaderInfo::default();
    let mut i = 2; // after SOI
    while let Some(&0xFF) = b.get(i) {
        // Any number of 0xFF fill bytes may precede a marker code.
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { break };
        i += 1;
        match marker {
            // Markers without a length field.
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 => break,
            0xDA => {
                info.scan_start = Some(i - 2);
                break;
            }
            // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC), which share
            // the range. Layout: length(2) precision(1) height(2) width(2).
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if let (Some(h), Some(w)) = (be_u16(b, i + 3), be_u16(b, i + 5)) {
                    info.dimensions = Some((u32::from(w), u32::from(h)));
                }
            }
            _ => {}
        }
        match be_u16(b, i) {
            Some(len) if len >= 2 => i += usize::from(len),
            _ => break,
        }
    }
    info
}

/// The JPEG decoder pads a truncated scan with mid-gray and reports success,
/// which would turn a half-uploaded photo into silently wrong features. Inside
/// entropy-coded data every 0xFF is followed by 0x00 or a restart code, so an
/// end-of-image marker after the first scan is the reliable sign of a whole
/// file; trailing bytes after it (some cameras append data) are fine.
fn jpeg_has_end_marker(bytes: &[u8], scan_start: usize) -> bool {
    bytes[scan_start..]
        .windows(2)
        .rev()
        .any(|w| w == [0xFF, 0xD9])
}

/// Flattens any decoded colour type to 8-bit RGB. Transparent areas become
/// white, not black: the dataset photos are shot on white backgrounds, so a
/// cut-out PNG should look like its uncut siblings to the model.
fn into_rgb8_over_white(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let rgb: Vec<u8> = match img {
        DynamicImage::ImageRgb8(buf) => return buf,
        DynamicImage::ImageLuma8(buf) => buf.as_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(buf) => buf
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let v = over_white_u8(p[0], p[1]);
                [v, v, v]
            })
            .collect(),
        DynamicImage::ImageRgba8(buf) => rgba8_over_white(buf.as_raw()),
        DynamicImage::ImageLuma16(buf) => buf
            .as_raw()
            .iter()
            .flat_map(|&v| {
                let v = u16_to_u8(v);
                [v, v, v]
            })
            .collect(),
        DynamicImage::ImageLumaA16(buf) => buf
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let v = over_white_u16(p[0], p[1]);
                [v, v, v]
            })
            .collect(),
        DynamicImage::ImageRgb16(buf) => buf.as_raw().iter().map(|&v| u16_to_u8(v)).collect(),
        DynamicImage::ImageRgba16(buf) => buf
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                [
                    over_white_u16(p[0], p[3]),
                    over_white_u16(p[1], p[3]),
                    over_white_u16(p[2], p[3]),
                ]
            })
            .collect(),
        // Float images never come out of the JPEG or PNG decoders; going
        // through RGBA8 keeps them correct should that change.
        other => rgba8_over_white(other.to_rgba8().as_raw()),
    };
    RgbImage::from_raw(w, h, rgb).expect("3 bytes per pixel were produced")
}

fn rgba8_over_white(raw: &[u8]) -> Vec<u8> {
    raw.chunks_exact(4)
        .flat_map(|p| {
            [
                over_white_u8(p[0], p[3]),
                over_white_u8(p[1], p[3]),
                over_white_u8(p[2], p[3]),
            ]
        })
        .collect()
}

/// `c·α + 255·(1−α)`, rounded.
fn over_white_u8(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

fn over_white_u16(c: u16, a: u16) -> u8 {
    let (c, a) = (u64::from(c), u64::from(a));
    let v = (c * a + 65535 * (65535 - a) + 32767) / 65535;
    u16_to_u8(v as u16)
}

/// Rounds to the nearest 8-bit level (65535 / 255 = 257).
fn u16_to_u8(v: u16) -> u8 {
    ((u32::from(v) + 128) / 257) as u8
}

#[cfg(test)]
mod tests;
