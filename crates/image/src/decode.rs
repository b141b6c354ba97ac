//! Bytes → oriented 8-bit RGB image, under the pixel limit and the memory
//! budget. JPEGs large enough are decoded at a reduced DCT scale
//! ([`crate::scaled`]); everything else goes through the `image` crate's
//! decoders at full size.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::colour::into_rgb8_over_white;
use crate::header::{jpeg_has_end_marker, read_header};
use crate::scaled::{Scaled, choose_eighths, decode_scaled};
use crate::{ImageError, PreprocessConfig};

/// Which decoder produced the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodePath {
    /// Every stored pixel was decoded (`image`: zune-jpeg or png).
    Full,
    /// A JPEG decoded by libjpeg-turbo at `eighths`/8 of its stored size.
    Scaled { eighths: u32 },
}

/// One malformed file must cost one error row, not the worker: a panic in a
/// third-party decoder is turned into a decode error.
pub(crate) fn decode_rgb_guarded(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    min_side: u32,
) -> Result<(RgbImage, DecodePath), ImageError> {
    std::panic::catch_unwind(|| decode_rgb(bytes, cfg, min_side)).unwrap_or_else(|payload| {
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

/// The format of `bytes`, JPEG or PNG, from its first bytes; anything else
/// (or nothing) is refused before any decoder exists.
pub(crate) fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => Ok(f),
        _ => Err(ImageError::UnknownFormat),
    }
}

/// Decodes `bytes` to RGB, EXIF orientation applied. With
/// `cfg.scaled_jpeg_decode`, a JPEG is decoded at the smallest scale that
/// keeps both sides at least `min_side` pixels (see
/// [`choose_eighths`]); otherwise at full size.
fn decode_rgb(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    min_side: u32,
) -> Result<(RgbImage, DecodePath), ImageError> {
    let format = sniff(bytes)?;

    // Our own header read, before any decoder exists: the PNG decoder reads
    // ahead to the first IDAT and the JPEG decoders copy or parse the whole
    // input, so this is the cheapest point to refuse a file that claims huge
    // dimensions. The limit is on the stored size, whatever scale the pixels
    // are decoded at.
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

    if cfg.scaled_jpeg_decode
        && let Some((w, h)) = header.dimensions
        && let Some(frame) = header.frame.as_ref().filter(|f| f.is_huffman_8bit_dct())
        && let Some(eighths) = choose_eighths(w, h, min_side)
    {
        let orientation = header.orientation.unwrap_or(Orientation::NoTransforms);
        let needs_rotation = orientation != Orientation::NoTransforms;
        if let Scaled::Done(rgb) =
            decode_scaled(bytes, frame, (w, h), eighths, needs_rotation, cfg)?
        {
            let mut img = DynamicImage::ImageRgb8(rgb);
            img.apply_orientation(orientation);
            return Ok((img.into_rgb8(), DecodePath::Scaled { eighths }));
        }
    }
    decode_full(bytes, format, cfg).map(|rgb| (rgb, DecodePath::Full))
}

/// Every pixel, through the `image` crate (zune-jpeg, png).
fn decode_full(
    bytes: &[u8],
    format: ImageFormat,
    cfg: &PreprocessConfig,
) -> Result<RgbImage, ImageError> {
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

pub(crate) fn check_pixels(
    width: u32,
    height: u32,
    cfg: &PreprocessConfig,
) -> Result<(), ImageError> {
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
