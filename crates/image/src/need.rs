//! How much memory decoding one image will take, from its headers alone, so
//! that a service can reserve it from a shared budget before decoding.
//!
//! The figures follow the decode paths of [`crate::decode`] buffer by
//! buffer and round up where a path may or may not copy (an alpha channel a
//! `tRNS` chunk may add, an orientation that may be "no transform"), so
//! that [`preprocess_into`](crate::preprocess_into) with
//! `max_alloc_bytes` set to the need never refuses an image its need
//! admitted.

use image::ImageFormat;
use image::metadata::Orientation;

use crate::decode::check_pixels;
use crate::header::{HeaderInfo, read_header};
use crate::scaled::{choose_eighths, coefficient_bytes};
use crate::{INPUT_SIZE, ImageError, PreprocessConfig, TENSOR_LEN};

/// Bytes one decode of an image allocates at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeNeed {
    /// On the path the decode takes: the DCT-scaled output for a large
    /// JPEG, every pixel otherwise.
    pub bytes: u64,
    /// On the full-size path: what a JPEG needs if libjpeg-turbo declines it
    /// and it falls back to the full decoder (equal to `bytes` otherwise).
    pub full_decode_bytes: u64,
}

/// The memory [`preprocess_into`](crate::preprocess_into) will need for
/// `bytes` under `cfg`, read from the headers without decoding a pixel.
/// Refuses what the decode would refuse before any pixel: an empty file, an
/// unknown format, a header over the pixel limit. When the headers do not
/// say the dimensions, the need is `cfg.max_alloc_bytes`, the most the
/// decoder will allocate anyway.
pub fn decode_need(bytes: &[u8], cfg: &PreprocessConfig) -> Result<DecodeNeed, ImageError> {
    let format = crate::decode::sniff(bytes)?;
    let header = read_header(bytes, format);
    let Some((w, h)) = header.dimensions else {
        let all = cfg.max_alloc_bytes;
        return Ok(DecodeNeed {
            bytes: all,
            full_decode_bytes: all,
        });
    };
    check_pixels(w, h, cfg)?;
    // The resize keeps a 224-wide copy of every source row, and the tensor.
    let resize = u64::from(INPUT_SIZE) * u64::from(w.max(h)) * 4 + TENSOR_LEN as u64 * 4;
    let full = match format {
        ImageFormat::Png => png_need(bytes, w, h),
        _ => jpeg_full_need(bytes, &header, w, h),
    } + resize;
    let scaled = (format == ImageFormat::Jpeg && cfg.scaled_jpeg_decode)
        .then(|| jpeg_scaled_need(&header, w, h))
        .flatten()
        .map_or(full, |need| need + resize);
    Ok(DecodeNeed {
        bytes: scaled.min(full),
        full_decode_bytes: full,
    })
}

fn pixels(w: u32, h: u32) -> u64 {
    u64::from(w) * u64::from(h)
}

/// The decoded image at its stored colour type (palette expanded, an alpha
/// channel added when a `tRNS` chunk is present), the RGB copy unless it is
/// already 8-bit RGB, and a rotated copy when an `eXIf` chunk may rotate it.
fn png_need(bytes: &[u8], w: u32, h: u32) -> u64 {
    let (bit_depth, colour_type) = (bytes.get(24).copied(), bytes.get(25).copied());
    let chunks = png_chunks_before_data(bytes);
    let alpha = u64::from(chunks.transparency);
    let channels = match colour_type {
        Some(0) => 1 + alpha,
        Some(2 | 3) => 3 + alpha,
        Some(4) => 2,
        _ => 4,
    };
    let sample_bytes = if bit_depth == Some(16) { 2 } else { 1 };
    let decoded = pixels(w, h) * channels * sample_bytes;
    let rgb_copy = if channels == 3 && sample_bytes == 1 {
        0
    } else {
        pixels(w, h) * 3
    };
    let rotated = if chunks.exif { pixels(w, h) * 3 } else { 0 };
    decoded + rgb_copy + rotated
}

#[derive(Default)]
struct PngChunks {
    transparency: bool,
    exif: bool,
}

/// Walks the chunks up to the first `IDAT` (after it no chunk changes the
/// decoded layout that matters here).
fn png_chunks_before_data(bytes: &[u8]) -> PngChunks {
    let mut found = PngChunks::default();
    let mut at = 8;
    while let (Some(len), Some(kind)) = (bytes.get(at..at + 4), bytes.get(at + 4..at + 8)) {
        match kind {
            b"IDAT" => break,
            b"tRNS" => found.transparency = true,
            b"eXIf" => found.exif = true,
            _ => {}
        }
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        at = at.saturating_add(12).saturating_add(len);
    }
    found
}

fn needs_rotation(header: &HeaderInfo) -> bool {
    header
        .orientation
        .is_some_and(|o| o != Orientation::NoTransforms)
}

/// The full decoder (zune-jpeg through `image`): its copy of the input,
/// every pixel of every component, the whole image's coefficients for a
/// progressive JPEG, the RGB copy unless it decodes to RGB, and the
/// rotated copy.
fn jpeg_full_need(bytes: &[u8], header: &HeaderInfo, w: u32, h: u32) -> u64 {
    let components = header.frame.as_ref().map_or(4, |f| f.sampling.len().max(1)) as u64;
    let coefficients = header
        .frame
        .as_ref()
        .filter(|f| f.is_progressive())
        .map_or(0, |f| coefficient_bytes(f, w, h));
    let rgb_copy = if components == 3 { 0 } else { pixels(w, h) * 3 };
    let rotated = if needs_rotation(header) {
        pixels(w, h) * 3
    } else {
        0
    };
    bytes.len() as u64 + pixels(w, h) * components + coefficients + rgb_copy + rotated
}

/// libjpeg-turbo at a reduced scale, when [`crate::decode`] takes that
/// path: the scaled output (4 bytes a pixel for CMYK), its RGB conversion
/// and rotated copy, and the full-size coefficients of a progressive JPEG.
fn jpeg_scaled_need(header: &HeaderInfo, w: u32, h: u32) -> Option<u64> {
    let frame = header.frame.as_ref().filter(|f| f.is_huffman_8bit_dct())?;
    let eighths = choose_eighths(w, h, INPUT_SIZE)?;
    let side = |s: u32| (u64::from(s) * u64::from(eighths)).div_ceil(8);
    let scaled = side(w) * side(h);
    let cmyk = frame.sampling.len() == 4;
    let output = scaled * if cmyk { 4 } else { 3 };
    let converted = if cmyk { scaled * 3 } else { 0 };
    let rotated = if needs_rotation(header) {
        scaled * 3
    } else {
        0
    };
    let coefficients = if frame.is_progressive() {
        coefficient_bytes(frame, w, h)
    } else {
        0
    };
    Some(output + converted + rotated + coefficients)
}
