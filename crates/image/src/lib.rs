//! Turns the bytes of one photo into the model's input tensor, in three
//! steps that can be used on their own:
//!
//! 1. **decode** ([`decode_rgb`]): sniff the format (JPEG or PNG), refuse a
//!    header over the pixel limit, decode under a memory budget, apply EXIF
//!    orientation and flatten to 8-bit RGB over white. A JPEG whose sides are
//!    at least twice 224 is decoded at a reduced scale (1/8, 1/4, 3/8 or 1/2,
//!    the smallest that keeps both sides at least 224) by libjpeg-turbo's DCT
//!    scaling, so a 12-megapixel photo never exists at full size;
//! 2. **resize** to 224×224 (bilinear convolution, antialiased like Pillow);
//! 3. **normalise** to `pixel / 127.5 - 1` in NCHW planar order
//!    (steps 2 and 3: [`rgb_to_tensor_into`]).
//!
//! [`preprocess_into`] runs all three. [`views`] cuts crops of a decoded
//! photo (and mirrors them) before steps 2–3: the views issue 14's recipe
//! trains on and averages at serve time. [`decode_need`] tells from the
//! headers alone how much memory step 1 will take, so that a service can
//! reserve it from a shared budget first.
//!
//! ```
//! use verger_image::{PreprocessConfig, TENSOR_LEN, preprocess};
//!
//! let mut png = Vec::new();
//! image::DynamicImage::new_rgb8(640, 480)
//!     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
//!     .unwrap();
//! let tensor = preprocess(&png, &PreprocessConfig::default()).unwrap();
//! assert_eq!(tensor.len(), TENSOR_LEN);
//! assert!(tensor.iter().all(|&v| v == -1.0)); // black
//! ```
//!
//! This crate owns only that pixel pipeline. It must not know about files,
//! object storage, DataFusion or the model runtime: callers hand it bytes and
//! a buffer, and get back either the tensor or an [`ImageError`] whose
//! [`kind`](ImageError::kind) they can count and report.

mod colour;
mod decode;
mod header;
mod need;
mod scaled;
mod tensor;
pub mod views;

use image::RgbImage;

#[cfg(test)]
use decode::DecodePath;
use decode::decode_rgb_guarded;
#[cfg(test)]
use header::{HeaderInfo, read_header};
pub use need::{DecodeNeed, decode_need};

/// Side of the square image the model takes.
pub const INPUT_SIZE: u32 = 224;

/// Number of `f32` values in one preprocessed image (NCHW planar, 3 planes).
pub const TENSOR_LEN: usize = 3 * PLANE_LEN;

const PLANE_LEN: usize = (INPUT_SIZE as usize) * (INPUT_SIZE as usize);

/// Limits that keep one hostile or absurd file from exhausting memory, and
/// how JPEGs are decoded.
#[derive(Debug, Clone)]
pub struct PreprocessConfig {
    /// Largest `width * height` accepted, checked on the dimensions stored in
    /// the header (whatever scale a JPEG is then decoded at) before any pixel
    /// is decoded.
    pub max_pixels: u64,
    /// Largest amount of memory the decoder and the RGB conversion may
    /// allocate for one image, counted on what is actually decoded: for a
    /// scaled JPEG, the scaled pixels (plus, for a progressive JPEG, its
    /// full-size DCT coefficients, which the decoder keeps at any scale).
    pub max_alloc_bytes: u64,
    /// Decode a large JPEG at the smallest DCT scale (1/8, 1/4, 3/8 or 1/2)
    /// whose result is still at least 224 pixels on each side, then resize
    /// as usual. `false` decodes every pixel (zune-jpeg), as before; the
    /// features of the two agree to a cosine of about 0.99.
    pub scaled_jpeg_decode: bool,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            // 8000x8000: well above any camera photo in the dataset, well
            // below what would make a worker swap.
            max_pixels: 64_000_000,
            max_alloc_bytes: 512 * 1024 * 1024,
            scaled_jpeg_decode: true,
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

/// Decodes `bytes` and writes the normalised 224×224 tensor into `out`:
/// [`decode_rgb`], then [`rgb_to_tensor_into`].
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
/// For a large JPEG the resize starts from the DCT-scaled decode, as Pillow
/// does after `img.draft("RGB", (224, 224))`.
///
/// # Panics
/// If `out.len() != TENSOR_LEN`: that is a caller bug, not a bad image.
pub fn preprocess_into(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    out: &mut [f32],
) -> Result<(), ImageError> {
    assert_tensor_len(out);
    let rgb = decode_rgb(bytes, cfg)?;
    tensor::rgb_to_tensor(&rgb, out);
    Ok(())
}

/// Convenience wrapper around [`preprocess_into`] that allocates the tensor.
pub fn preprocess(bytes: &[u8], cfg: &PreprocessConfig) -> Result<Vec<f32>, ImageError> {
    let mut out = vec![0.0; TENSOR_LEN];
    preprocess_into(bytes, cfg, &mut out)?;
    Ok(out)
}

/// The decode step of [`preprocess_into`] on its own: `bytes` → RGB, EXIF
/// orientation applied, alpha composited over white.
///
/// The image is as large as the resize needs, not necessarily the stored
/// size: with [`PreprocessConfig::scaled_jpeg_decode`] a JPEG whose sides
/// are both at least 448 comes back reduced by 1/8, 1/4, 3/8 or 1/2 (the
/// smallest of those that leaves both sides at least 224); a 4032×3024
/// photo comes back 504×378. PNGs and smaller JPEGs come back at full size.
/// Benchmarks time this and [`rgb_to_tensor_into`] separately.
pub fn decode_rgb(bytes: &[u8], cfg: &PreprocessConfig) -> Result<RgbImage, ImageError> {
    decode_rgb_guarded(bytes, cfg, INPUT_SIZE).map(|(rgb, _path)| rgb)
}

/// The resize and normalise steps of [`preprocess_into`] on their own: any
/// non-empty RGB image → the 224×224 tensor in `out`.
///
/// # Panics
/// If `out.len() != TENSOR_LEN` or `rgb` has no pixels: caller bugs
/// ([`decode_rgb`] never returns an empty image).
pub fn rgb_to_tensor_into(rgb: &RgbImage, out: &mut [f32]) {
    assert_tensor_len(out);
    assert!(
        rgb.width() > 0 && rgb.height() > 0,
        "cannot resize an empty image"
    );
    tensor::rgb_to_tensor(rgb, out);
}

fn assert_tensor_len(out: &[f32]) {
    assert_eq!(
        out.len(),
        TENSOR_LEN,
        "output buffer must hold exactly one 3x224x224 tensor"
    );
}

#[cfg(test)]
mod tests;
