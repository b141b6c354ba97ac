use std::io::Cursor;
use std::time::{Duration, Instant};

use image::codecs::jpeg::JpegEncoder;
use image::{
    DynamicImage, GrayImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba, RgbaImage,
};

use super::*;

const SIDE: usize = INPUT_SIZE as usize;

fn norm(v: u8) -> f32 {
    f32::from(v) / 127.5 - 1.0
}

/// Value of `plane` (0 = R, 1 = G, 2 = B) at column `x`, row `y`.
fn at(t: &[f32], plane: usize, x: usize, y: usize) -> f32 {
    t[plane * PLANE_LEN + y * SIDE + x]
}

fn plane(t: &[f32], p: usize) -> &[f32] {
    &t[p * PLANE_LEN..(p + 1) * PLANE_LEN]
}

fn png(img: &DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

fn jpeg(img: &DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 100)
        .encode_image(img)
        .unwrap();
    out
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w.max(2).saturating_sub(1).max(1)).min(255) as u8,
            (y * 255 / h.max(2).saturating_sub(1).max(1)).min(255) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

fn run(bytes: &[u8]) -> Result<Vec<f32>, ImageError> {
    preprocess(bytes, &PreprocessConfig::default())
}

fn assert_close(actual: f32, expected: f32, tol: f32, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual}, expected {expected} ± {tol}"
    );
}

// --- hand-made PNG pieces -------------------------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn ihdr(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&width.to_be_bytes());
    d.extend_from_slice(&height.to_be_bytes());
    d.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    d
}

/// zlib stream made of one stored (uncompressed) deflate block.
fn stored_zlib(data: &[u8]) -> Vec<u8> {
    let len = data.len() as u16;
    let mut out = vec![0x78, 0x01, 0x01];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

#[test]
fn crc32_helper_matches_known_value() {
    // The hand-made PNGs below are only meaningful if the CRC is right.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

// --- error cases ----------------------------------------------------------

#[test]
fn zero_bytes_is_empty() {
    let err = run(&[]).unwrap_err();
    assert!(matches!(err, ImageError::Empty), "{err:?}");
    assert_eq!(err.kind(), "empty");
    assert_eq!(err.to_string(), "empty file (0 bytes)");
}

#[test]
fn random_bytes_are_unknown_format() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect();
    assert!(!bytes.starts_with(&[0xFF, 0xD8]) && !bytes.starts_with(b"\x89PNG"));
    let err = run(&bytes).unwrap_err();
    assert!(matches!(err, ImageError::UnknownFormat), "{err:?}");
    assert_eq!(err.kind(), "unknown_format");
    assert_eq!(
        err.to_string(),
        "not a recognised image format (expected JPEG or PNG)"
    );
}

#[test]
fn formats_other_than_jpeg_and_png_are_unknown() {
    // A real GIF header: the image crate recognises it, this crate must not.
    let err = run(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap_err();
    assert!(matches!(err, ImageError::UnknownFormat), "{err:?}");
}

#[test]
fn truncated_png_is_decode_error() {
    let bytes = png(&DynamicImage::ImageRgb8(gradient(64, 64)));
    let err = run(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err, ImageError::Decode(_)), "{err:?}");
    assert_eq!(err.kind(), "decode");
    let text = err.to_string();
    assert!(text.starts_with("corrupt or truncated image: "), "{text}");
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn truncated_jpeg_never_panics_and_is_reported() {
    // zune-jpeg alone would pad the missing scan data with gray and succeed;
    // the end-of-image check turns that into an error.
    let bytes = jpeg(&DynamicImage::ImageRgb8(gradient(64, 64)));
    for cut in [bytes.len() - 1, bytes.len() / 2, 200, 4] {
        match run(&bytes[..cut]) {
            Err(ImageError::Decode(msg)) => assert!(!msg.is_empty()),
            Err(other) => panic!("cut at {cut}: expected Decode, got {other:?}"),
            Ok(_) => panic!("cut at {cut}: a truncated JPEG decoded as if whole"),
        }
    }
}

#[test]
fn png_header_claiming_50000_squared_is_refused_fast() {
    let mut bytes = PNG_SIGNATURE.to_vec();
    png_chunk(&mut bytes, b"IHDR", &ihdr(50_000, 50_000, 8, 2));
    png_chunk(&mut bytes, b"IEND", &[]);
    let started = Instant::now();
    let err = run(&bytes).unwrap_err();
    let took = started.elapsed();
    match err {
        ImageError::TooLarge {
            width,
            height,
            max_pixels,
        } => assert_eq!((width, height, max_pixels), (50_000, 50_000, 64_000_000)),
        ref other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(err.kind(), "too_large");
    assert_eq!(
        err.to_string(),
        "image is 50000x50000 pixels, over the limit of 64000000 pixels"
    );
    assert!(took < Duration::from_millis(200), "took {took:?}");
}

#[test]
fn jpeg_header_claiming_huge_dimensions_is_too_large() {
    // SOI, an APP0 to skip over, then SOF0 for 60000x40000, no scan data.
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xAA, 0xBB];
    bytes.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
    bytes.extend_from_slice(&40_000u16.to_be_bytes());
    bytes.extend_from_slice(&60_000u16.to_be_bytes());
    bytes.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    let err = run(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 60_000,
                height: 40_000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn max_pixels_is_configurable() {
    let bytes = png(&DynamicImage::ImageRgb8(gradient(100, 100)));
    let cfg = PreprocessConfig {
        max_pixels: 9_999,
        ..PreprocessConfig::default()
    };
    let err = preprocess(&bytes, &cfg).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 100,
                height: 100,
                max_pixels: 9_999
            }
        ),
        "{err:?}"
    );
    let cfg = PreprocessConfig {
        max_pixels: 10_000,
        ..PreprocessConfig::default()
    };
    assert!(preprocess(&bytes, &cfg).is_ok());
}

#[test]
fn memory_budget_is_enforced() {
    // 100x100 RGB needs 30 000 bytes decoded.
    let bytes = png(&DynamicImage::ImageRgb8(gradient(100, 100)));
    let cfg = PreprocessConfig {
        max_alloc_bytes: 20_000,
        ..PreprocessConfig::default()
    };
    let err = preprocess(&bytes, &cfg).unwrap_err();
    assert_eq!(err.kind(), "too_large", "{err:?}");
    assert!(err.to_string().contains("20000 bytes"), "{err}");
}

#[test]
fn kinds_are_stable_tags() {
    let cases = [
        (ImageError::Empty, "empty"),
        (ImageError::UnknownFormat, "unknown_format"),
        (ImageError::Decode("x".into()), "decode"),
        (
            ImageError::TooLarge {
                width: 1,
                height: 1,
                max_pixels: 0,
            },
            "too_large",
        ),
        (
            ImageError::OverMemoryLimit { max_alloc_bytes: 1 },
            "too_large",
        ),
        (ImageError::Unsupported("x".into()), "unsupported"),
    ];
    for (err, kind) in cases {
        assert_eq!(err.kind(), kind, "{err:?}");
    }
}

// --- pixel pipeline -------------------------------------------------------

#[test]
fn png_at_input_size_passes_through_exactly() {
    // No resampling happens at 224x224, so every value is checkable: this
    // pins RGB order, NCHW planar layout, row-major order and the formula.
    let img = gradient(INPUT_SIZE, INPUT_SIZE);
    let t = run(&png(&DynamicImage::ImageRgb8(img.clone()))).unwrap();
    assert_eq!(t.len(), TENSOR_LEN);
    for (x, y, px) in img.enumerate_pixels() {
        for c in 0..3 {
            assert_eq!(
                at(&t, c, x as usize, y as usize),
                norm(px[c]),
                "channel {c} at ({x},{y})"
            );
        }
    }
}

#[test]
fn preprocess_and_preprocess_into_agree() {
    let bytes = jpeg(&DynamicImage::ImageRgb8(gradient(300, 200)));
    let a = run(&bytes).unwrap();
    let mut b = vec![f32::NAN; TENSOR_LEN];
    preprocess_into(&bytes, &PreprocessConfig::default(), &mut b).unwrap();
    assert_eq!(a, b);
    assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
}

#[test]
fn uniform_gray_normalises_to_the_same_value_everywhere() {
    let expected = 128.0f32 / 127.5 - 1.0;
    let img = RgbImage::from_pixel(300, 170, Rgb([128, 128, 128]));
    let t = run(&png(&DynamicImage::ImageRgb8(img))).unwrap();
    for (i, &v) in t.iter().enumerate() {
        assert_eq!(v, expected, "index {i}");
    }
}

#[test]
fn one_by_one_image_fills_the_whole_tensor() {
    let img = RgbImage::from_pixel(1, 1, Rgb([10, 20, 30]));
    let t = run(&png(&DynamicImage::ImageRgb8(img))).unwrap();
    for (p, v) in [10u8, 20, 30].into_iter().enumerate() {
        assert!(plane(&t, p).iter().all(|&x| x == norm(v)), "plane {p}");
    }
}

#[test]
fn left_red_right_blue_lands_in_the_right_planes() {
    let img = RgbImage::from_fn(100, 50, |x, _| {
        if x < 50 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let t = run(&png(&DynamicImage::ImageRgb8(img))).unwrap();
    for y in [0, 100, SIDE - 1] {
        // Left edge: red.
        assert_eq!(at(&t, 0, 0, y), 1.0);
        assert_eq!(at(&t, 1, 0, y), -1.0);
        assert_eq!(at(&t, 2, 0, y), -1.0);
        // Right edge: blue.
        assert_eq!(at(&t, 0, SIDE - 1, y), -1.0);
        assert_eq!(at(&t, 1, SIDE - 1, y), -1.0);
        assert_eq!(at(&t, 2, SIDE - 1, y), 1.0);
    }
    assert!(plane(&t, 1).iter().all(|&v| v == -1.0), "green is empty");
}

#[test]
fn jpeg_colours_survive() {
    let img = RgbImage::from_fn(64, 64, |x, _| {
        if x < 32 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let t = run(&jpeg(&DynamicImage::ImageRgb8(img))).unwrap();
    // JPEG is lossy and subsamples chroma: allow a few levels.
    let tol = 12.0 / 127.5;
    assert_close(at(&t, 0, 10, 112), 1.0, tol, "R left");
    assert_close(at(&t, 2, 10, 112), -1.0, tol, "B left");
    assert_close(at(&t, 0, 210, 112), -1.0, tol, "R right");
    assert_close(at(&t, 2, 210, 112), 1.0, tol, "B right");
}

fn assert_gray_planes(t: &[f32]) {
    assert_eq!(plane(t, 0), plane(t, 1));
    assert_eq!(plane(t, 1), plane(t, 2));
}

#[test]
fn grayscale_png_gives_identical_planes() {
    let img = GrayImage::from_fn(90, 60, |x, y| Luma([((x * 3 + y) % 256) as u8]));
    let t = run(&png(&DynamicImage::ImageLuma8(img))).unwrap();
    assert_gray_planes(&t);
    assert!(
        plane(&t, 0).iter().any(|&v| v != plane(&t, 0)[0]),
        "the gradient must survive"
    );
}

#[test]
fn grayscale_jpeg_gives_identical_planes() {
    let img = GrayImage::from_fn(90, 60, |x, y| Luma([((x * 3 + y) % 256) as u8]));
    let t = run(&jpeg(&DynamicImage::ImageLuma8(img))).unwrap();
    assert_gray_planes(&t);
}

#[test]
fn sixteen_bit_png_is_scaled_to_eight_bit() {
    // 0x8080 is exactly 128 * 257.
    let img: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_pixel(10, 10, Rgb([0xFFFF, 0x8080, 0]));
    let t = run(&png(&DynamicImage::ImageRgb16(img))).unwrap();
    assert!(plane(&t, 0).iter().all(|&v| v == 1.0));
    assert!(plane(&t, 1).iter().all(|&v| v == norm(128)));
    assert!(plane(&t, 2).iter().all(|&v| v == -1.0));

    let gray16 = ImageBuffer::<Luma<u16>, _>::from_pixel(5, 5, Luma([0x8080]));
    let t = run(&png(&DynamicImage::ImageLuma16(gray16))).unwrap();
    assert!(t.iter().all(|&v| v == norm(128)));
}

#[test]
fn transparent_rgba_pixel_becomes_white() {
    // Left pixel: fully transparent *black*; dropping alpha would leave it
    // black, compositing over white makes it white.
    let mut img = RgbaImage::new(2, 1);
    img.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
    img.put_pixel(1, 0, Rgba([0, 0, 255, 255]));
    let t = run(&png(&DynamicImage::ImageRgba8(img))).unwrap();
    for p in 0..3 {
        assert_eq!(at(&t, p, 0, 0), 1.0, "plane {p} left");
    }
    assert_eq!(at(&t, 0, SIDE - 1, 0), -1.0);
    assert_eq!(at(&t, 2, SIDE - 1, 0), 1.0);
}

#[test]
fn half_transparent_pixel_is_blended_with_white() {
    let img = RgbaImage::from_pixel(4, 4, Rgba([0, 0, 0, 128]));
    let t = run(&png(&DynamicImage::ImageRgba8(img))).unwrap();
    // 0·128/255 + 255·127/255 = 127.
    assert!(t.iter().all(|&v| v == norm(127)));
}

#[test]
fn transparent_gray_alpha_and_16_bit_alpha_become_white() {
    let la = ImageBuffer::<LumaA<u8>, _>::from_pixel(3, 3, LumaA([0, 0]));
    let t = run(&png(&DynamicImage::ImageLumaA8(la))).unwrap();
    assert!(t.iter().all(|&v| v == 1.0));

    let la16 = ImageBuffer::<LumaA<u16>, _>::from_pixel(3, 3, LumaA([0, 0]));
    let t = run(&png(&DynamicImage::ImageLumaA16(la16))).unwrap();
    assert!(t.iter().all(|&v| v == 1.0));

    let rgba16 = ImageBuffer::<Rgba<u16>, _>::from_pixel(3, 3, Rgba([0, 0, 0, 0]));
    let t = run(&png(&DynamicImage::ImageRgba16(rgba16))).unwrap();
    assert!(t.iter().all(|&v| v == 1.0));

    let opaque16 = ImageBuffer::<Rgba<u16>, _>::from_pixel(3, 3, Rgba([0, 0xFFFF, 0, 0xFFFF]));
    let t = run(&png(&DynamicImage::ImageRgba16(opaque16))).unwrap();
    assert!(plane(&t, 0).iter().all(|&v| v == -1.0));
    assert!(plane(&t, 1).iter().all(|&v| v == 1.0));
}

#[test]
fn palette_png_with_transparency_works() {
    // 2x1, 8-bit indexed: index 0 is transparent black, index 1 opaque blue.
    let mut bytes = PNG_SIGNATURE.to_vec();
    png_chunk(&mut bytes, b"IHDR", &ihdr(2, 1, 8, 3));
    png_chunk(&mut bytes, b"PLTE", &[0, 0, 0, 0, 0, 255]);
    png_chunk(&mut bytes, b"tRNS", &[0]);
    png_chunk(&mut bytes, b"IDAT", &stored_zlib(&[0, 0, 1]));
    png_chunk(&mut bytes, b"IEND", &[]);
    let t = run(&bytes).unwrap();
    for p in 0..3 {
        assert_eq!(at(&t, p, 0, 5), 1.0, "plane {p}: transparent -> white");
    }
    assert_eq!(at(&t, 0, SIDE - 1, 5), -1.0);
    assert_eq!(at(&t, 1, SIDE - 1, 5), -1.0);
    assert_eq!(at(&t, 2, SIDE - 1, 5), 1.0);
}

/// APP1 segment holding a little-endian TIFF with a single Orientation tag.
fn exif_orientation_segment(orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // count
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no IFD1
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&payload);
    seg
}

#[test]
fn exif_orientation_6_rotates_clockwise() {
    // 2:1 landscape, red on the left. Orientation 6 means "rotate 90° CW to
    // display", which brings the left side to the top.
    let img = RgbImage::from_fn(128, 64, |x, _| {
        if x < 64 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let plain = jpeg(&DynamicImage::ImageRgb8(img));
    let mut rotated = plain[..2].to_vec();
    rotated.extend_from_slice(&exif_orientation_segment(6));
    rotated.extend_from_slice(&plain[2..]);

    let tol = 12.0 / 127.5;
    let t = run(&rotated).unwrap();
    assert_close(at(&t, 0, 112, 10), 1.0, tol, "top is red");
    assert_close(at(&t, 2, 112, 10), -1.0, tol, "top is not blue");
    assert_close(at(&t, 0, 112, 213), -1.0, tol, "bottom is not red");
    assert_close(at(&t, 2, 112, 213), 1.0, tol, "bottom is blue");

    // Control: the same pixels without the EXIF segment stay side by side.
    let t = run(&plain).unwrap();
    assert_close(at(&t, 0, 10, 112), 1.0, tol, "unrotated left is red");
    assert_close(at(&t, 2, 213, 112), 1.0, tol, "unrotated right is blue");
}

#[test]
fn resizer_is_reusable_across_sizes_on_one_thread() {
    // The thread-local resizer must not carry state from one image into the
    // next: same bytes, same tensor, whatever came in between.
    let a = png(&DynamicImage::ImageRgb8(gradient(500, 80)));
    let b = jpeg(&DynamicImage::ImageRgb8(gradient(33, 700)));
    let first = run(&a).unwrap();
    run(&b).unwrap();
    assert_eq!(run(&a).unwrap(), first);
}

#[test]
fn header_parsers_read_dimensions() {
    let p = png(&DynamicImage::ImageRgb8(gradient(123, 45)));
    assert_eq!(
        read_header(&p, ImageFormat::Png).dimensions,
        Some((123, 45))
    );
    let j = jpeg(&DynamicImage::ImageRgb8(gradient(123, 45)));
    let info = read_header(&j, ImageFormat::Jpeg);
    assert_eq!(info.dimensions, Some((123, 45)));
    let sos = info.scan_start.expect("encoded JPEG has a scan");
    assert_eq!(&j[sos..sos + 2], &[0xFF, 0xDA]);
    assert_eq!(
        read_header(&j[..10], ImageFormat::Jpeg),
        HeaderInfo::default()
    );
}

#[test]
fn jpeg_with_trailing_bytes_after_end_marker_still_decodes() {
    let img = DynamicImage::ImageRgb8(gradient(80, 60));
    let whole = jpeg(&img);
    let mut padded = whole.clone();
    padded.extend_from_slice(b"trailing vendor data");
    assert_eq!(run(&padded).unwrap(), run(&whole).unwrap());
}

// --- scaled JPEG decode ---------------------------------------------------

fn no_scaling() -> PreprocessConfig {
    PreprocessConfig {
        scaled_jpeg_decode: false,
        ..PreprocessConfig::default()
    }
}

/// Decoded size and the decoder that made it, with the default config.
fn decoded(bytes: &[u8]) -> ((u32, u32), DecodePath) {
    let (rgb, path) =
        decode::decode_rgb_guarded(bytes, &PreprocessConfig::default(), INPUT_SIZE).unwrap();
    (rgb.dimensions(), path)
}

/// Low-frequency colour pattern: what a photo looks like at 224×224, so a
/// scaled and a full decode must agree closely.
fn smooth(w: u32, h: u32) -> RgbImage {
    use std::f32::consts::TAU;
    RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        Rgb([
            (128.0 + 100.0 * (TAU * 3.0 * u).sin()) as u8,
            (128.0 + 100.0 * (TAU * 2.0 * v).cos()) as u8,
            (255.0 * (u + v) / 2.0) as u8,
        ])
    })
}

/// Mean and largest absolute difference, in 8-bit levels.
fn level_diffs(a: &[f32], b: &[f32]) -> (f32, f32) {
    let diffs = a.iter().zip(b).map(|(x, y)| (x - y).abs() * 127.5);
    let (sum, max) = diffs.fold((0.0, 0.0f32), |(s, m), d| (s + d, m.max(d)));
    (sum / a.len() as f32, max)
}

/// The scaled decode's tensor is within a few levels of the full decode's.
fn assert_scaled_matches_full(bytes: &[u8], what: &str) {
    let scaled = run(bytes).unwrap();
    let full = preprocess(bytes, &no_scaling()).unwrap();
    let (mean, max) = level_diffs(&scaled, &full);
    assert!(
        mean < 1.0 && max < 12.0,
        "{what}: mean {mean:.2}, max {max:.1} levels"
    );
}

fn turbo_encode(pixels: &[u8], w: u32, h: u32, format: turbojpeg::PixelFormat) -> TurboJpeg {
    TurboJpeg {
        pixels: pixels.to_vec(),
        w,
        h,
        format,
        progressive: false,
        colorspace: None,
    }
}

/// JPEGs the `image` encoder cannot write (progressive, CMYK, YCCK), made
/// with libjpeg-turbo's encoder.
struct TurboJpeg {
    pixels: Vec<u8>,
    w: u32,
    h: u32,
    format: turbojpeg::PixelFormat,
    progressive: bool,
    colorspace: Option<turbojpeg::Colorspace>,
}

impl TurboJpeg {
    fn encode(&self) -> Vec<u8> {
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(92).unwrap();
        c.set_subsamp(turbojpeg::Subsamp::Sub2x2).unwrap();
        c.set_progressive(self.progressive).unwrap();
        if let Some(cs) = self.colorspace {
            c.set_colorspace(cs).unwrap();
        }
        let channels = self.format.size();
        c.compress_to_vec(turbojpeg::Image {
            pixels: self.pixels.as_slice(),
            width: self.w as usize,
            pitch: self.w as usize * channels,
            height: self.h as usize,
            format: self.format,
        })
        .unwrap()
    }
}

#[test]
fn scale_is_the_smallest_eighth_that_keeps_224_a_side() {
    use scaled::choose_eighths;
    let cases = [
        ((4032, 3024), Some(1)), // 504x378
        ((3024, 4032), Some(1)),
        ((1785, 1785), Some(1)), // 224x224 exactly (rounded up)
        ((1784, 1784), Some(2)), // 223 at 1/8, 446 at 1/4
        ((2000, 1500), Some(2)), // 500x375
        ((1000, 750), Some(3)),  // 375x282
        ((600, 450), Some(4)),   // 300x225
        ((447, 447), Some(4)),   // 224x224
        ((446, 446), None),      // 223 at 1/2: decoded in full
        ((348, 348), None),
        ((100, 100), None),
        ((225, 3000), None), // the short side cannot shrink
        ((3000, 225), None),
        ((1, 65535), None),
    ];
    for ((w, h), want) in cases {
        assert_eq!(choose_eighths(w, h, INPUT_SIZE), want, "{w}x{h}");
    }
}

#[test]
fn phone_sized_jpeg_is_decoded_at_one_eighth() {
    let bytes = jpeg(&DynamicImage::ImageRgb8(smooth(4032, 3024)));
    assert_eq!(
        decoded(&bytes),
        ((504, 378), DecodePath::Scaled { eighths: 1 })
    );
    assert_eq!(
        decode_rgb(&bytes, &PreprocessConfig::default())
            .unwrap()
            .dimensions(),
        (504, 378)
    );
    let full = decode_rgb(&bytes, &no_scaling()).unwrap();
    assert_eq!(full.dimensions(), (4032, 3024));
    assert_scaled_matches_full(&bytes, "4032x3024");
}

#[test]
fn each_scale_agrees_with_the_full_decode() {
    for ((w, h), eighths, out) in [
        ((2000, 1500), 2, (500, 375)),
        ((1000, 750), 3, (375, 282)),
        ((600, 450), 4, (300, 225)),
        ((450, 600), 4, (225, 300)),
    ] {
        let bytes = jpeg(&DynamicImage::ImageRgb8(smooth(w, h)));
        assert_eq!(
            decoded(&bytes),
            (out, DecodePath::Scaled { eighths }),
            "{w}x{h}"
        );
        assert_scaled_matches_full(&bytes, &format!("{w}x{h}"));
    }
}

#[test]
fn small_and_thin_jpegs_are_decoded_in_full() {
    for (w, h) in [(446, 446), (348, 348), (100, 100), (225, 3000), (3000, 225)] {
        let bytes = jpeg(&DynamicImage::ImageRgb8(smooth(w, h)));
        assert_eq!(decoded(&bytes), ((w, h), DecodePath::Full), "{w}x{h}");
    }
    let png_bytes = png(&DynamicImage::ImageRgb8(smooth(1200, 900)));
    assert_eq!(decoded(&png_bytes), ((1200, 900), DecodePath::Full));
}

#[test]
fn no_scaling_decodes_every_pixel() {
    let bytes = jpeg(&DynamicImage::ImageRgb8(smooth(1200, 900)));
    let (rgb, path) = decode::decode_rgb_guarded(&bytes, &no_scaling(), INPUT_SIZE).unwrap();
    assert_eq!((rgb.dimensions(), path), ((1200, 900), DecodePath::Full));
}

#[test]
fn every_exif_orientation_is_applied_after_scaling() {
    // 2:1 landscape, red left half, blue right half, green band on top.
    let img = RgbImage::from_fn(1024, 512, |x, y| {
        if y < 64 {
            Rgb([0, 255, 0])
        } else if x < 512 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let plain = jpeg(&DynamicImage::ImageRgb8(img));
    for orientation in 1..=8u16 {
        let mut bytes = plain[..2].to_vec();
        bytes.extend_from_slice(&exif_orientation_segment(orientation));
        bytes.extend_from_slice(&plain[2..]);
        let (size, path) = decoded(&bytes);
        let want = if orientation >= 5 {
            (256, 512)
        } else {
            (512, 256)
        };
        assert_eq!(size, want, "orientation {orientation}");
        assert_eq!(
            path,
            DecodePath::Scaled { eighths: 4 },
            "orientation {orientation}"
        );
        // The full decoder reads the orientation through zune-jpeg; both
        // must turn the image the same way.
        let scaled = run(&bytes).unwrap();
        let full = preprocess(&bytes, &no_scaling()).unwrap();
        let (mean, _) = level_diffs(&scaled, &full);
        assert!(
            mean < 1.0,
            "orientation {orientation}: mean {mean:.2} levels"
        );
    }
}

#[test]
fn exif_orientation_6_with_scaling_puts_the_left_side_on_top() {
    let img = RgbImage::from_fn(2048, 1024, |x, _| {
        if x < 1024 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let plain = jpeg(&DynamicImage::ImageRgb8(img));
    let mut rotated = plain[..2].to_vec();
    rotated.extend_from_slice(&exif_orientation_segment(6));
    rotated.extend_from_slice(&plain[2..]);
    assert_eq!(
        decoded(&rotated),
        ((256, 512), DecodePath::Scaled { eighths: 2 })
    );
    let tol = 12.0 / 127.5;
    let t = run(&rotated).unwrap();
    assert_close(at(&t, 0, 112, 10), 1.0, tol, "top is red");
    assert_close(at(&t, 2, 112, 10), -1.0, tol, "top is not blue");
    assert_close(at(&t, 0, 112, 213), -1.0, tol, "bottom is not red");
    assert_close(at(&t, 2, 112, 213), 1.0, tol, "bottom is blue");
}

#[test]
fn progressive_jpeg_is_scaled() {
    let img = smooth(1600, 1200);
    let mut enc = turbo_encode(img.as_raw(), 1600, 1200, turbojpeg::PixelFormat::RGB);
    enc.progressive = true;
    let bytes = enc.encode();
    let info = read_header(&bytes, ImageFormat::Jpeg);
    assert!(info.frame.as_ref().unwrap().is_progressive());
    assert_eq!(
        decoded(&bytes),
        ((400, 300), DecodePath::Scaled { eighths: 2 })
    );
    assert_scaled_matches_full(&bytes, "progressive");
}

#[test]
fn grey_jpeg_is_scaled_and_stays_grey() {
    let img = DynamicImage::ImageRgb8(smooth(1600, 1200)).to_luma8();
    let bytes = jpeg(&DynamicImage::ImageLuma8(img));
    assert_eq!(
        decoded(&bytes),
        ((400, 300), DecodePath::Scaled { eighths: 2 })
    );
    let t = run(&bytes).unwrap();
    assert_gray_planes(&t);
    assert_scaled_matches_full(&bytes, "grey");
}

#[test]
fn cmyk_and_ycck_jpegs_are_scaled_with_the_full_decoders_colours() {
    // Stored as Adobe does (inverted): C = R, M = G, Y = B, K = 255 means
    // "no ink", so the pixel is (R, G, B); a darker band has K = 128.
    let (w, h) = (1600u32, 1200u32);
    let rgb = smooth(w, h);
    let mut cmyk = Vec::with_capacity((w * h * 4) as usize);
    for (_, y, px) in rgb.enumerate_pixels() {
        let k = if y < h / 4 { 128 } else { 255 };
        cmyk.extend_from_slice(&[px[0], px[1], px[2], k]);
    }
    for colorspace in [turbojpeg::Colorspace::CMYK, turbojpeg::Colorspace::YCCK] {
        let mut enc = turbo_encode(&cmyk, w, h, turbojpeg::PixelFormat::CMYK);
        enc.colorspace = Some(colorspace);
        let bytes = enc.encode();
        assert_eq!(
            decoded(&bytes),
            ((400, 300), DecodePath::Scaled { eighths: 2 }),
            "{colorspace:?}"
        );
        assert_scaled_matches_full(&bytes, &format!("{colorspace:?}"));
        // And the colours are the RGB ones: bottom-left is smooth()'s pixel.
        let t = run(&bytes).unwrap();
        let want = rgb.get_pixel(0, h - 1);
        for c in 0..3 {
            assert_close(
                at(&t, c, 0, SIDE - 1),
                norm(want[c]),
                16.0 / 127.5,
                &format!("{colorspace:?} channel {c}"),
            );
        }
    }
}

#[test]
fn memory_budget_counts_the_scaled_pixels() {
    // 2000x2000 RGB: 12 MB at full size, 250x250x3 = 187 500 bytes at 1/8.
    let bytes = jpeg(&DynamicImage::ImageRgb8(smooth(2000, 2000)));
    let budget = |max_alloc_bytes, scaled_jpeg_decode| PreprocessConfig {
        max_alloc_bytes,
        scaled_jpeg_decode,
        ..PreprocessConfig::default()
    };
    assert!(preprocess(&bytes, &budget(1_000_000, true)).is_ok());
    let err = preprocess(&bytes, &budget(1_000_000, false)).unwrap_err();
    assert!(matches!(err, ImageError::OverMemoryLimit { .. }), "{err:?}");
    let err = preprocess(&bytes, &budget(150_000, true)).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::OverMemoryLimit {
                max_alloc_bytes: 150_000
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), "too_large");
}

#[test]
fn memory_budget_counts_a_progressive_jpegs_full_size_coefficients() {
    // 2000x2000, 4:2:0: 250x250 luma blocks + 2 x 125x125 chroma blocks of
    // 128 bytes = 12 MB of coefficients, kept whatever the output scale.
    let img = smooth(2000, 2000);
    let mut enc = turbo_encode(img.as_raw(), 2000, 2000, turbojpeg::PixelFormat::RGB);
    let baseline = enc.encode();
    enc.progressive = true;
    let progressive = enc.encode();
    let cfg = PreprocessConfig {
        max_alloc_bytes: 1_000_000,
        ..PreprocessConfig::default()
    };
    assert!(preprocess(&baseline, &cfg).is_ok());
    let err = preprocess(&progressive, &cfg).unwrap_err();
    assert!(matches!(err, ImageError::OverMemoryLimit { .. }), "{err:?}");
    let cfg = PreprocessConfig {
        max_alloc_bytes: 13_000_000,
        ..PreprocessConfig::default()
    };
    assert!(preprocess(&progressive, &cfg).is_ok());
}

#[test]
fn pixel_limit_is_on_the_stored_size_even_when_scaled() {
    // 1/8 would decode 250x250, but the file is 4 megapixels.
    let bytes = jpeg(&DynamicImage::ImageRgb8(smooth(2000, 2000)));
    let cfg = PreprocessConfig {
        max_pixels: 3_999_999,
        ..PreprocessConfig::default()
    };
    let err = preprocess(&bytes, &cfg).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 2000,
                height: 2000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_large_jpeg_is_reported_not_scaled() {
    let bytes = jpeg(&DynamicImage::ImageRgb8(smooth(1200, 900)));
    for cut in [bytes.len() - 1, bytes.len() * 3 / 4, bytes.len() / 2, 700] {
        match run(&bytes[..cut]) {
            Err(ImageError::Decode(msg)) => assert!(!msg.is_empty()),
            other => panic!("cut at {cut}: expected Decode, got {other:?}"),
        }
    }
}

#[test]
fn corrupt_scan_data_gets_the_full_decoders_verdict() {
    // Bytes flipped inside the entropy-coded data, end marker intact:
    // libjpeg-turbo only warns, and the file goes to the full decoder, so
    // the answer (pixels or error) is the one it gave before scaling.
    let bytes = jpeg(&DynamicImage::ImageRgb8(smooth(1200, 900)));
    let sos = read_header(&bytes, ImageFormat::Jpeg).scan_start.unwrap();
    for (i, at_frac) in [0.3, 0.5, 0.8].into_iter().enumerate() {
        let mut broken = bytes.clone();
        let start = sos + 200 + ((bytes.len() - sos - 400) as f64 * at_frac) as usize;
        for b in &mut broken[start..start + 40] {
            *b = if *b == 0xFF { 0x00 } else { 0xFF - *b };
        }
        let scaled = run(&broken);
        let full = preprocess(&broken, &no_scaling());
        match (&scaled, &full) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "case {i}: scaled path was used"),
            (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind(), "case {i}"),
            _ => panic!("case {i}: scaled {scaled:?} vs full {full:?}"),
        }
    }
}

#[test]
fn rgb_to_tensor_into_is_the_second_half_of_preprocess() {
    let bytes = jpeg(&DynamicImage::ImageRgb8(smooth(1000, 750)));
    let cfg = PreprocessConfig::default();
    let rgb = decode_rgb(&bytes, &cfg).unwrap();
    let mut t = vec![f32::NAN; TENSOR_LEN];
    rgb_to_tensor_into(&rgb, &mut t);
    assert_eq!(t, run(&bytes).unwrap());
}

/// With `max_alloc_bytes` set to the need `decode_need` reads from the
/// headers, every kind of image still decodes: the need covers what the
/// decoders check and allocate.
#[test]
fn decode_need_admits_every_kind_of_image() {
    let rgb = smooth(900, 700);
    let dynamic = DynamicImage::ImageRgb8(rgb.clone());
    let mut rotated = jpeg(&dynamic)[..2].to_vec();
    rotated.extend_from_slice(&exif_orientation_segment(6));
    rotated.extend_from_slice(&jpeg(&dynamic)[2..]);
    let mut progressive = turbo_encode(rgb.as_raw(), 900, 700, turbojpeg::PixelFormat::RGB);
    progressive.progressive = true;
    let cmyk: Vec<u8> = rgb.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    let mut cmyk = turbo_encode(&cmyk, 900, 700, turbojpeg::PixelFormat::CMYK);
    cmyk.colorspace = Some(turbojpeg::Colorspace::CMYK);
    // Indexed with a transparent entry: decodes to RGBA.
    let mut palette = PNG_SIGNATURE.to_vec();
    png_chunk(&mut palette, b"IHDR", &ihdr(2, 1, 8, 3));
    png_chunk(&mut palette, b"PLTE", &[0, 0, 0, 0, 0, 255]);
    png_chunk(&mut palette, b"tRNS", &[0]);
    png_chunk(&mut palette, b"IDAT", &stored_zlib(&[0, 0, 1]));
    png_chunk(&mut palette, b"IEND", &[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("png palette with tRNS", palette),
        ("png rgb", png(&dynamic)),
        (
            "png grey",
            png(&DynamicImage::ImageLuma8(dynamic.to_luma8())),
        ),
        (
            "png rgba",
            png(&DynamicImage::ImageRgba8(dynamic.to_rgba8())),
        ),
        (
            "png rgb16",
            png(&DynamicImage::ImageRgb16(dynamic.to_rgb16())),
        ),
        (
            "png la16",
            png(&DynamicImage::ImageLumaA16(dynamic.to_luma_alpha16())),
        ),
        ("jpeg", jpeg(&dynamic)),
        (
            "jpeg small",
            jpeg(&DynamicImage::ImageRgb8(smooth(300, 200))),
        ),
        (
            "jpeg grey",
            jpeg(&DynamicImage::ImageLuma8(dynamic.to_luma8())),
        ),
        ("jpeg rotated", rotated),
        ("jpeg progressive", progressive.encode()),
        ("jpeg cmyk", cmyk.encode()),
    ];
    for (what, bytes) in cases {
        let need = decode_need(&bytes, &PreprocessConfig::default()).unwrap();
        assert!(need.bytes <= need.full_decode_bytes, "{what}: {need:?}");
        let tight = PreprocessConfig {
            max_alloc_bytes: need.bytes,
            ..PreprocessConfig::default()
        };
        preprocess(&bytes, &tight).unwrap_or_else(|e| panic!("{what}: {e} with {need:?}"));
        let full = PreprocessConfig {
            max_alloc_bytes: need.full_decode_bytes,
            ..no_scaling()
        };
        preprocess(&bytes, &full).unwrap_or_else(|e| panic!("{what} in full: {e} with {need:?}"));
    }
}

#[test]
fn decode_need_is_read_from_the_header_and_refuses_what_decoding_would() {
    // A decompression bomb: the header alone says 7900 × 7900 RGB.
    let mut bomb = PNG_SIGNATURE.to_vec();
    png_chunk(&mut bomb, b"IHDR", &ihdr(7900, 7900, 8, 2));
    let need = decode_need(&bomb, &PreprocessConfig::default()).unwrap();
    assert!(need.bytes >= 7900 * 7900 * 3, "{need:?}");
    assert!(need.bytes < 7900 * 7900 * 4, "{need:?}");
    // A phone photo decoded at 1/8 scale needs far less than in full.
    let photo = jpeg(&DynamicImage::ImageRgb8(smooth(4000, 3000)));
    let need = decode_need(&photo, &PreprocessConfig::default()).unwrap();
    assert!(need.bytes * 4 < need.full_decode_bytes, "{need:?}");
    assert!(need.full_decode_bytes >= 4000 * 3000 * 3, "{need:?}");

    let kinds = |bytes: &[u8]| {
        decode_need(bytes, &PreprocessConfig::default())
            .unwrap_err()
            .kind()
    };
    assert_eq!(kinds(b""), "empty");
    assert_eq!(kinds(b"plain text, not an image"), "unknown_format");
    let mut huge = PNG_SIGNATURE.to_vec();
    png_chunk(&mut huge, b"IHDR", &ihdr(50_000, 50_000, 8, 2));
    assert_eq!(kinds(&huge), "too_large");
}
