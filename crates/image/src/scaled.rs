//! JPEG decoding at a reduced scale: libjpeg-turbo (through the `turbojpeg`
//! crate) runs a smaller inverse DCT per 8×8 block, so a 1/8-scale decode
//! never produces the other 63 of every 64 pixels. The entropy decoding still
//! reads every coefficient, which is why the gain is about 3× rather than 64×.
//!
//! Only the frames it handles exactly like the full decoder are taken here:
//! Huffman-coded 8-bit sequential or progressive JPEGs that can be reduced to
//! at most half size. Anything else, and any file libjpeg-turbo complains
//! about (even a mere warning), goes to the full decoder, so errors, lenient
//! recovery and unsupported variants stay exactly what they were.

use std::cell::RefCell;

use image::RgbImage;
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor};

use crate::colour::cmyk_to_rgb;
use crate::header::JpegFrame;
use crate::{ImageError, PreprocessConfig};

/// Largest scale the scaled path uses, in eighths: below half size there is
/// nothing to gain (the entropy decoding dominates), and images too small to
/// be halved keep today's full decode.
const MAX_EIGHTHS: u32 = 4;

/// The smallest DCT scale, in eighths (1/8, 2/8, 3/8 or 4/8), whose output
/// still has at least `min_side` pixels on each side; `None` when even half
/// size would be smaller (the image is decoded at full size).
///
/// libjpeg-turbo also offers 5/8…7/8, but they save little decode time and
/// only move a small image further from the full-size reference.
pub(crate) fn choose_eighths(width: u32, height: u32, min_side: u32) -> Option<u32> {
    let scaled = |side: u32, eighths: u32| (u64::from(side) * u64::from(eighths)).div_ceil(8);
    (1..=MAX_EIGHTHS).find(|&m| {
        scaled(width, m) >= u64::from(min_side) && scaled(height, m) >= u64::from(min_side)
    })
}

/// What the scaled path did with one JPEG.
pub(crate) enum Scaled {
    /// Decoded at `eighths`/8 of the stored size (not yet oriented).
    Done(RgbImage),
    /// Not for this path (or libjpeg-turbo refused it): decode in full.
    FullDecode,
}

/// Decodes `bytes` at `eighths`/8 scale. The caller has already checked the
/// pixel limit and the end-of-image marker, and that `frame` is one this
/// path takes ([`JpegFrame::is_huffman_8bit_dct`]).
///
/// The memory budget is checked here, before the pixel buffer exists, on
/// what this decode allocates: the scaled output, the RGB copy when the
/// pixels need converting or rotating, and for a progressive JPEG the
/// coefficients of the whole image, which libjpeg-turbo keeps at full size
/// whatever the scale.
pub(crate) fn decode_scaled(
    bytes: &[u8],
    frame: &JpegFrame,
    (width, height): (u32, u32),
    eighths: u32,
    needs_rotation: bool,
    cfg: &PreprocessConfig,
) -> Result<Scaled, ImageError> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => match Decompressor::new() {
                Ok(d) => slot.insert(d),
                Err(_) => return Ok(Scaled::FullDecode),
            },
        };
        let result = decode_with(
            decompressor,
            bytes,
            frame,
            (width, height),
            eighths,
            needs_rotation,
            cfg,
        );
        if matches!(result, Ok(Scaled::FullDecode)) {
            // A handle that just failed is not reused: the next image gets a
            // fresh one.
            *slot = None;
        }
        result
    })
}

thread_local! {
    /// One libjpeg-turbo handle per thread, reused across images.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

fn decode_with(
    decompressor: &mut Decompressor,
    bytes: &[u8],
    frame: &JpegFrame,
    (width, height): (u32, u32),
    eighths: u32,
    needs_rotation: bool,
    cfg: &PreprocessConfig,
) -> Result<Scaled, ImageError> {
    let Ok(header) = decompressor.read_header(bytes) else {
        return Ok(Scaled::FullDecode);
    };
    // Our header walk and libjpeg-turbo must agree on what is being decoded.
    if (header.width, header.height) != (width as usize, height as usize)
        || header.is_lossless
        || header.is_arithmetic
    {
        return Ok(Scaled::FullDecode);
    }
    let factor = ScalingFactor::new(eighths as usize, 8);
    if decompressor.set_scaling_factor(factor).is_err() {
        return Ok(Scaled::FullDecode);
    }
    let scaled = header.scaled(factor);
    let cmyk = matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK);
    let (format, channels) = if cmyk {
        (PixelFormat::CMYK, 4)
    } else {
        (PixelFormat::RGB, 3)
    };

    let pixels = scaled.width as u64 * scaled.height as u64;
    let output = pixels * channels;
    let rgb_copy = if cmyk || needs_rotation {
        pixels * 3
    } else {
        0
    };
    let coefficients = if header.is_progressive || frame.is_progressive() {
        coefficient_bytes(frame, width, height)
    } else {
        0
    };
    if output.saturating_add(rgb_copy).saturating_add(coefficients) > cfg.max_alloc_bytes {
        return Err(ImageError::OverMemoryLimit {
            max_alloc_bytes: cfg.max_alloc_bytes,
        });
    }

    let mut buf = vec![0u8; output as usize];
    let target = Image {
        pixels: buf.as_mut_slice(),
        width: scaled.width,
        pitch: scaled.width * channels as usize,
        height: scaled.height,
        format,
    };
    if decompressor.decompress(bytes, target).is_err() {
        return Ok(Scaled::FullDecode);
    }
    if cmyk {
        buf = cmyk_to_rgb(&buf);
    }
    let image = RgbImage::from_raw(scaled.width as u32, scaled.height as u32, buf)
        .expect("the buffer was sized for the scaled image");
    Ok(Scaled::Done(image))
}

/// Bytes of the DCT coefficients of the whole image (2 bytes each, 64 per
/// 8×8 block of every component), which libjpeg-turbo holds for a
/// progressive JPEG, rounded up to whole MCUs.
pub(crate) fn coefficient_bytes(frame: &JpegFrame, width: u32, height: u32) -> u64 {
    let h_max = frame.sampling.iter().map(|s| s.0).max().unwrap_or(1).max(1);
    let v_max = frame.sampling.iter().map(|s| s.1).max().unwrap_or(1).max(1);
    let mcus_x = u64::from(width).div_ceil(8 * u64::from(h_max));
    let mcus_y = u64::from(height).div_ceil(8 * u64::from(v_max));
    frame
        .sampling
        .iter()
        .map(|&(h, v)| mcus_x * u64::from(h) * mcus_y * u64::from(v) * 64 * 2)
        .sum()
}
