//! What the file's headers say, read without any decoder: dimensions for the
//! pixel limit, and for JPEG the frame type, the EXIF orientation and where
//! the entropy-coded data starts (for the truncation check).

use image::ImageFormat;
use image::metadata::Orientation;

/// What the headers say. Every field is `None` when it cannot be found; the
/// decoder then has the last word.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct HeaderInfo {
    /// Width and height as stored (before EXIF orientation).
    pub dimensions: Option<(u32, u32)>,
    /// JPEG only: offset of the first start-of-scan marker.
    pub scan_start: Option<usize>,
    /// JPEG only: the first frame header (SOFn).
    pub frame: Option<JpegFrame>,
    /// JPEG only: the orientation of the last EXIF APP1 segment before the
    /// first scan, read as `image` reads it (the same segment zune-jpeg keeps).
    pub orientation: Option<Orientation>,
}

/// A JPEG frame header (SOFn).
#[derive(Debug, PartialEq)]
pub(crate) struct JpegFrame {
    /// The SOF marker code, 0xC0..=0xCF.
    pub marker: u8,
    /// Bits per sample (8 or 12; 16 for lossless).
    pub precision: u8,
    /// Horizontal and vertical sampling factors of each component.
    pub sampling: Vec<(u8, u8)>,
}

impl JpegFrame {
    /// Huffman-coded, 8-bit, baseline/extended sequential (SOF0, SOF1) or
    /// progressive (SOF2): the frames the scaled JPEG path takes.
    pub fn is_huffman_8bit_dct(&self) -> bool {
        matches!(self.marker, 0xC0..=0xC2) && self.precision == 8
    }

    pub fn is_progressive(&self) -> bool {
        matches!(self.marker, 0xC2 | 0xC6 | 0xCA | 0xCE)
    }
}

pub(crate) fn read_header(bytes: &[u8], format: ImageFormat) -> HeaderInfo {
    match format {
        ImageFormat::Png => HeaderInfo {
            dimensions: png_dimensions(bytes),
            ..HeaderInfo::default()
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
            // the range. Layout: length(2) precision(1) height(2) width(2)
            // components(1), then id(1) sampling(1) table(1) per component.
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if let (Some(h), Some(w)) = (be_u16(b, i + 3), be_u16(b, i + 5)) {
                    info.dimensions = Some((u32::from(w), u32::from(h)));
                }
                if info.frame.is_none() {
                    info.frame = jpeg_frame(b, i, marker);
                }
            }
            // APP1: EXIF ("Exif\0\0" then a TIFF structure). A later segment
            // replaces an earlier one, as in zune-jpeg.
            0xE1 => {
                if let Some(len) = be_u16(b, i)
                    && let Some(payload) = b.get(i + 2..i + usize::from(len))
                    && let Some(tiff) = payload.strip_prefix(b"Exif\0\0")
                {
                    info.orientation = Some(
                        Orientation::from_exif_chunk(tiff).unwrap_or(Orientation::NoTransforms),
                    );
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

/// The frame header whose length field starts at `at`.
fn jpeg_frame(b: &[u8], at: usize, marker: u8) -> Option<JpegFrame> {
    let precision = *b.get(at + 2)?;
    let count = usize::from(*b.get(at + 7)?);
    let sampling = (0..count)
        .map(|c| {
            let s = *b.get(at + 8 + 3 * c + 1)?;
            Some((s >> 4, s & 0x0F))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(JpegFrame {
        marker,
        precision,
        sampling,
    })
}

/// The JPEG decoders pad a truncated scan (zune-jpeg with mid-gray, libjpeg
/// with a warning) and report success, which would turn a half-uploaded photo
/// into silently wrong features. Inside entropy-coded data every 0xFF is
/// followed by 0x00 or a restart code, so an end-of-image marker after the
/// first scan is the reliable sign of a whole file; trailing bytes after it
/// (some cameras append data) are fine.
pub(crate) fn jpeg_has_end_marker(bytes: &[u8], scan_start: usize) -> bool {
    bytes[scan_start..]
        .windows(2)
        .rev()
        .any(|w| w == [0xFF, 0xD9])
}
