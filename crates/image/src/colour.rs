//! Every decoded colour type flattened to 8-bit RGB.

use image::{DynamicImage, RgbImage};

/// Flattens any decoded colour type to 8-bit RGB. Transparent areas become
/// white, not black: the dataset photos are shot on white backgrounds, so a
/// cut-out PNG should look like its uncut siblings to the model.
pub(crate) fn into_rgb8_over_white(img: DynamicImage) -> RgbImage {
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

/// CMYK as libjpeg-turbo hands it over (Adobe's inverted convention, which
/// Photoshop and Pillow write, and YCCK already turned into it) to RGB, with
/// zune-jpeg's formula so that a scaled and a full decode agree:
/// `R = C·K/255`, `G = M·K/255`, `B = Y·K/255`, rounded the same way.
pub(crate) fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    cmyk.chunks_exact(4)
        .flat_map(|p| [blinn(p[0], p[3]), blinn(p[1], p[3]), blinn(p[2], p[3])])
        .collect()
}

/// `a·b/255` rounded, without a division (Jim Blinn's trick, as zune-jpeg).
fn blinn(a: u8, b: u8) -> u8 {
    let t = u32::from(a) * u32::from(b) + 128;
    ((t + (t >> 8)) >> 8) as u8
}
