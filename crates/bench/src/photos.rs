//! Phone-sized JPEGs made on the fly from the shared sample images (never
//! written to the repository): a Fruits-360 or grocery photo upscaled to a
//! phone camera's size, sensor-like noise added, encoded at quality 90 by the
//! `image` crate. At 4032×3024 that is about 2 MB, like a phone's photo.
//!
//! Used by the fidelity test (`crates/cli/tests/it/scaled_decode.rs`) and
//! `examples/decode_rate.rs`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use fast_image_resize as fr;
use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, RgbImage};

/// Width × height of a 12-megapixel phone photo (4:3, landscape).
pub const PHONE: (u32, u32) = (4032, 3024);

/// Standard deviation, in 8-bit levels, of the noise added to every pixel
/// (luminance, plus half as much per channel): it brings a 4032×3024 JPEG
/// at quality 90 to about 2 MB.
pub const NOISE_SIGMA: f32 = 3.0;

/// `../shared` beside the repository (override with `VERGER_SHARED_DIR`).
pub fn shared_dir() -> PathBuf {
    let dir = match std::env::var_os("VERGER_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    dir.canonicalize().unwrap_or_else(|e| {
        panic!(
            "shared data directory {} is missing ({e}); it must sit beside the repository",
            dir.display()
        )
    })
}

/// `count` images of `split` (a folder of label folders), spread over the
/// labels: the first image of every label, then the second, and so on.
/// Sorted, so every run takes the same images.
pub fn pick_images(split: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let mut labels: Vec<Vec<PathBuf>> = Vec::new();
    for label in sorted_entries(split)?.into_iter().filter(|p| p.is_dir()) {
        let files = sorted_entries(&label)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
        labels.push(files);
    }
    labels.retain(|files| !files.is_empty());
    let mut picked = Vec::with_capacity(count);
    for round in 0.. {
        let before = picked.len();
        for files in &labels {
            if picked.len() == count {
                return Ok(picked);
            }
            if let Some(f) = files.get(round) {
                picked.push(f.clone());
            }
        }
        if picked.len() == before {
            break;
        }
    }
    Ok(picked)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        v.push(entry?.path());
    }
    v.sort();
    Ok(v)
}

/// The photo at `src` as a `width`×`height` JPEG (quality 90): upscaled
/// (Catmull-Rom, aspect ratio not kept), then noise with `seed`.
pub fn phone_jpeg(src: &Path, (width, height): (u32, u32), seed: u64) -> Result<Vec<u8>> {
    let img = image::open(src)
        .with_context(|| format!("cannot open {}", src.display()))?
        .into_rgb8();
    let mut big = upscale(&img, width, height)?;
    add_noise(&mut big, seed);
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90).encode_image(&DynamicImage::ImageRgb8(big))?;
    Ok(out)
}

fn upscale(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let mut dst = RgbImage::new(width, height);
    let src_view =
        fr::images::ImageRef::new(src.width(), src.height(), src.as_raw(), fr::PixelType::U8x3)?;
    let mut dst_view =
        fr::images::Image::from_slice_u8(width, height, &mut dst, fr::PixelType::U8x3)?;
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
    fr::Resizer::new().resize(&src_view, &mut dst_view, &options)?;
    Ok(dst)
}

/// Sensor-like noise: a luminance part shared by the three channels plus a
/// smaller chroma part, roughly Gaussian (sum of four uniforms).
fn add_noise(img: &mut RgbImage, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut gauss = move || {
        let mut sum = 0.0;
        for _ in 0..4 {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            sum += (state >> 40) as f32 / (1u64 << 24) as f32;
        }
        // Four uniforms on [0, 1): mean 2, variance 1/3.
        (sum - 2.0) * 1.732
    };
    for px in img.pixels_mut() {
        let luma = gauss() * NOISE_SIGMA;
        for c in px.0.iter_mut() {
            let v = f32::from(*c) + luma + gauss() * NOISE_SIGMA * 0.5;
            *c = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}
