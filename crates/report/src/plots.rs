//! The report's pictures: plotters draws into an RGB buffer, `image` encodes
//! it as PNG. Text uses DejaVu Sans embedded in the binary (the `dejavu`
//! crate through plotters' `ab_glyph` renderer), so a report looks the same
//! on a machine without any font installed.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform};

use crate::input::Point;

/// The family name plotters resolves `"sans-serif"` fonts with.
const FAMILY: &str = "sans-serif";

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Registers the embedded font once per process; every plot needs it.
pub fn register_fonts() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans cannot be read".to_string())?;
            plotters::style::register_font(FAMILY, FontStyle::Bold, dejavu::sans::bold())
                .map_err(|_| "the embedded DejaVu Sans Bold cannot be read".to_string())
        })
        .clone()
}

/// Colours of the named labels, chosen to be told apart on white (after
/// Sasha Trubetskoy's "20 distinct colours", light ones darkened).
pub const PALETTE: [RGBColor; 20] = [
    RGBColor(0xe6, 0x19, 0x4b),
    RGBColor(0x3c, 0xb4, 0x4b),
    RGBColor(0x43, 0x63, 0xd8),
    RGBColor(0xf5, 0x82, 0x31),
    RGBColor(0x91, 0x1e, 0xb4),
    RGBColor(0x1f, 0xb5, 0xd6),
    RGBColor(0xf0, 0x32, 0xe6),
    RGBColor(0x8d, 0xc0, 0x2b),
    RGBColor(0x80, 0x00, 0x00),
    RGBColor(0x46, 0x99, 0x90),
    RGBColor(0xd4, 0xb0, 0x00),
    RGBColor(0x9a, 0x63, 0x24),
    RGBColor(0x00, 0x00, 0x75),
    RGBColor(0xf4, 0x9a, 0xbb),
    RGBColor(0x80, 0x80, 0x00),
    RGBColor(0xa8, 0x7c, 0xe0),
    RGBColor(0x00, 0xe0, 0x7a),
    RGBColor(0xf0, 0xa8, 0x6a),
    RGBColor(0x1b, 0x5e, 0x20),
    RGBColor(0x00, 0x00, 0x00),
];

/// The colour of every label that is not named in the scatter's legend.
pub const OTHER: RGBColor = RGBColor(0xb0, 0xb0, 0xb0);

const BAR: RGBColor = RGBColor(0x43, 0x63, 0xd8);
const LINE: RGBColor = RGBColor(0xf5, 0x82, 0x31);

/// Draws on a white `width` × `height` canvas and returns the PNG.
fn render(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> DrawResult,
) -> Result<Vec<u8>, String> {
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        draw(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    let mut png = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    );
    image::ImageEncoder::write_image(
        encoder,
        &pixels,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| format!("cannot encode the PNG: {e}"))?;
    Ok(png)
}

fn font(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

fn bold(size: u32) -> TextStyle<'static> {
    (FAMILY, size, FontStyle::Bold).into_font().into()
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Pixels a label of `chars` characters takes at 13 px (DejaVu Sans
/// averages about 0.6 em per character).
fn text_width(chars: usize, size: u32) -> u32 {
    (chars as f64 * size as f64 * 0.62).ceil() as u32
}

/// Width and height of the scree plot.
pub const SCREE_SIZE: (u32, u32) = (660, 380);

/// Scree plot: one bar per component (its share of the total variance) and
/// the cumulative share as a line.
pub fn scree(explained: &[f64]) -> Result<Vec<u8>, String> {
    let k = explained.len();
    let cumulative: Vec<f64> = explained
        .iter()
        .scan(0.0, |sum, v| {
            *sum += v;
            Some(*sum)
        })
        .collect();
    let total = cumulative.last().copied().unwrap_or(0.0);
    let top = (total * 1.18).clamp(0.05, 1.0);
    render(SCREE_SIZE.0, SCREE_SIZE.1, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "Explained variance: {} component{} keep {:.1}%",
                    k,
                    if k == 1 { "" } else { "s" },
                    total * 100.0
                ),
                bold(17),
            )
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.5..k.max(1) as f64 + 0.5, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(k.clamp(1, 25))
            .x_label_formatter(&|v| {
                let whole = v.round();
                if (v - whole).abs() < 1e-6 && whole >= 1.0 {
                    format!("PC{whole}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .x_desc("principal component")
            .y_desc("share of the total variance")
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()?;
        chart
            .draw_series(explained.iter().enumerate().map(|(i, &v)| {
                let centre = (i + 1) as f64;
                Rectangle::new([(centre - 0.4, 0.0), (centre + 0.4, v)], BAR.filled())
            }))?
            .label("each component")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], BAR.filled()));
        let line: Vec<_> = cumulative
            .iter()
            .enumerate()
            .map(|(i, &c)| ((i + 1) as f64, c))
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), LINE.stroke_width(3)))?
            .label("cumulative")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], LINE.stroke_width(3)));
        chart.draw_series(
            line.iter()
                .map(|&point| Circle::new(point, 4, LINE.filled())),
        )?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(font(13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        Ok(())
    })
}

pub const RISK_COVERAGE_SIZE: (u32, u32) = (660, 400);

/// The risk–coverage curve: accuracy among the answered photos against the
/// share answered, as the max-softmax threshold sweeps; `operating` (the
/// classifier's own threshold) is marked.
pub fn risk_coverage(curve: &[(f64, f64)], operating: (f64, f64)) -> Result<Vec<u8>, String> {
    let low = curve
        .iter()
        .chain(std::iter::once(&operating))
        .map(|p| p.1)
        .fold(1.0f64, f64::min);
    let bottom = ((low - 0.05) * 20.0).floor().max(0.0) / 20.0;
    render(RISK_COVERAGE_SIZE.0, RISK_COVERAGE_SIZE.1, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption("Risk–coverage: answer less, be right more often", bold(17))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..1.0, bottom..1.0)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .x_desc("photos of known labels answered")
            .y_desc("right among the answered")
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()?;
        chart
            .draw_series(LineSeries::new(curve.to_vec(), LINE.stroke_width(3)))?
            .label("max-softmax threshold swept")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], LINE.stroke_width(3)));
        chart
            .draw_series(std::iter::once(Circle::new(operating, 7, BAR.filled())))?
            .label("the classifier's operating point")
            .legend(|(x, y)| Circle::new((x + 7, y), 5, BAR.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .label_font(font(13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        Ok(())
    })
}

/// Side of a photo thumbnail, pixels.
pub const THUMBNAIL_SIDE: u32 = 112;

/// A PNG thumbnail (at most [`THUMBNAIL_SIDE`] a side) of the photo in
/// `bytes`; decoding is bounded (64 Mpx, 512 MiB), a bad file is an error.
pub fn thumbnail(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let photo = reader.decode().map_err(|e| e.to_string())?;
    let small = photo.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE).to_rgb8();
    let mut png = Vec::new();
    small
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(png)
}

/// Which labels the scatter names: the most frequent ones, one colour each;
/// the rest share the grey "other".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Legend {
    /// Labels `0..named` (by decreasing count) have `PALETTE[i]`.
    pub named: usize,
    pub other_labels: usize,
    pub other_images: u64,
}

impl Legend {
    pub fn of(labels: &[(String, u64)]) -> Legend {
        let named = labels.len().min(PALETTE.len());
        Legend {
            named,
            other_labels: labels.len() - named,
            other_images: labels[named..].iter().map(|(_, n)| n).sum(),
        }
    }

    pub fn colour(&self, label: usize) -> RGBColor {
        if label < self.named {
            PALETTE[label]
        } else {
            OTHER
        }
    }
}

/// Components 1 and 2 of the sampled rows, coloured by label, with the
/// legend beside the plot.
pub fn scatter(
    points: &[Point],
    labels: &[(String, u64)],
    explained: &[f64],
) -> Result<Vec<u8>, String> {
    let legend = Legend::of(labels);
    let rows = legend.named + usize::from(legend.other_labels > 0);
    let legend_width = 330;
    let height = (680).max(70 + rows as u32 * 24);
    let (x_range, y_range) = bounds(points);
    let share = |i: usize| {
        explained
            .get(i)
            .map(|v| format!(" ({:.1}% of the variance)", v * 100.0))
            .unwrap_or_default()
    };
    render(1120, height, |root| {
        root.fill(&WHITE)?;
        let (plot, key) = root.split_horizontally(1120 - legend_width);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!("PCA components 1 and 2 ({} images)", points.len()),
                bold(17),
            )
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc(format!("PC1{}", share(0)))
            .y_desc(format!("PC2{}", share(1)))
            .label_style(font(13))
            .axis_desc_style(font(14))
            .light_line_style(BLACK.mix(0.05))
            .draw()?;
        // Grey first, so the named labels are drawn over it.
        chart.draw_series(
            points
                .iter()
                .filter(|p| p.label >= legend.named)
                .map(|p| Circle::new((p.x, p.y), 2, OTHER.mix(0.6).filled())),
        )?;
        chart.draw_series(
            points
                .iter()
                .filter(|p| p.label < legend.named)
                .map(|p| Circle::new((p.x, p.y), 3, PALETTE[p.label].mix(0.8).filled())),
        )?;

        key.draw(&Text::new("Label (images)", (12, 22), bold(14)))?;
        let mut y = 52;
        for (i, (name, count)) in labels.iter().take(legend.named).enumerate() {
            key.draw(&Rectangle::new(
                [(12, y), (26, y + 14)],
                PALETTE[i].filled(),
            ))?;
            key.draw(&Text::new(
                format!("{} ({count})", shorten(name, 30)),
                (34, y),
                font(13),
            ))?;
            y += 24;
        }
        if legend.other_labels > 0 {
            key.draw(&Rectangle::new([(12, y), (26, y + 14)], OTHER.filled()))?;
            key.draw(&Text::new(
                format!(
                    "other ({} label{}, {} images)",
                    legend.other_labels,
                    if legend.other_labels == 1 { "" } else { "s" },
                    legend.other_images
                ),
                (34, y),
                font(13),
            ))?;
        }
        Ok(())
    })
}

/// The points' extent plus a margin (a unit square around a single point).
fn bounds(points: &[Point]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let extent = |values: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if !lo.is_finite() || !hi.is_finite() {
            return -1.0..1.0;
        }
        let pad = ((hi - lo) * 0.05).max(1e-6);
        if hi - lo < 1e-9 {
            return lo - 1.0..hi + 1.0;
        }
        lo - pad..hi + pad
    };
    (
        extent(&mut points.iter().map(|p| p.x)),
        extent(&mut points.iter().map(|p| p.y)),
    )
}

/// Bars in the counts chart at most; the page's table lists every label.
pub const MAX_BARS: usize = 60;

/// Images per label as horizontal bars, most frequent at the top (the
/// [`MAX_BARS`] most frequent labels when there are more).
pub fn label_counts(labels: &[(String, u64)]) -> Result<Vec<u8>, String> {
    let shown = &labels[..labels.len().min(MAX_BARS)];
    let rows = shown.len().max(1);
    let longest = shown
        .iter()
        .map(|(name, _)| shorten(name, 34).chars().count())
        .max()
        .unwrap_or(4);
    let label_area = (text_width(longest, 13) + 16).clamp(60, 280);
    let max = shown.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1) as f64;
    let height = (100 + rows as u32 * 19).max(220);
    let caption = if labels.len() > shown.len() {
        format!(
            "Images per label: the {} largest of {} labels",
            shown.len(),
            labels.len()
        )
    } else {
        format!("Images per label ({} labels)", labels.len())
    };
    render(720, height, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(caption, bold(17))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0f64..max * 1.12, (0..rows - 1).into_segmented())?;
        // Row r (from the bottom) shows label rows - 1 - r: the largest on top.
        let name_of = |row: usize| {
            shown
                .get(rows.wrapping_sub(1).wrapping_sub(row))
                .map(|(name, _)| shorten(name, 34))
                .unwrap_or_default()
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(row) => name_of(*row),
                _ => String::new(),
            })
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("images")
            .label_style(font(12))
            .axis_desc_style(font(14))
            .draw()?;
        chart.draw_series(shown.iter().enumerate().map(|(i, (_, count))| {
            let row = rows - 1 - i;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (*count as f64, SegmentValue::Exact(row + 1)),
                ],
                BAR.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))?;
        chart.draw_series(shown.iter().enumerate().map(|(i, (_, count))| {
            let row = rows - 1 - i;
            Text::new(
                format!(" {count}"),
                (*count as f64, SegmentValue::CenterOf(row)),
                font(11).pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))?;
        Ok(())
    })
}

/// The confusion matrix as a heat map: rows are true labels, columns
/// predicted ones, each cell shaded by its share of the row (the recall on
/// the diagonal), with the count written in when cells are large enough.
pub fn confusion(labels: &[String], matrix: &[Vec<u64>]) -> Result<Vec<u8>, String> {
    let n = labels.len().max(1);
    let cell = (760 / n as u32).clamp(3, 28);
    let label_size = (cell.saturating_sub(3)).min(13);
    let names = label_size >= 8;
    let label_area = if names {
        let longest = labels
            .iter()
            .map(|l| shorten(l, 28).chars().count())
            .max()
            .unwrap_or(4);
        (text_width(longest, label_size) + 12).clamp(40, 240)
    } else {
        24
    };
    let (left, top) = (label_area + 30, 50);
    let side = n as u32 * cell;
    let width = (left + side + 30).max(420);
    let height = top + side + label_area + 40;
    render(width, height, |root| {
        root.fill(&WHITE)?;
        root.draw(&Text::new(
            "Confusion matrix (rows: true label, columns: predicted)",
            (14, 14),
            bold(15),
        ))?;
        for (i, row) in matrix.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (j, &count) in row.iter().enumerate() {
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                let (x, y) = (left + j as u32 * cell, top + i as u32 * cell);
                let shade = heat(share);
                root.draw(&Rectangle::new(
                    [(x as i32, y as i32), ((x + cell) as i32, (y + cell) as i32)],
                    shade.filled(),
                ))?;
                if cell >= 22 && count > 0 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    root.draw(&Text::new(
                        count.to_string(),
                        ((x + cell / 2) as i32, (y + cell / 2) as i32),
                        font(10)
                            .color(&ink)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ))?;
                }
            }
        }
        // The frame and the diagonal's place, for orientation.
        root.draw(&Rectangle::new(
            [
                (left as i32, top as i32),
                ((left + side) as i32, (top + side) as i32),
            ],
            BLACK.mix(0.5).stroke_width(1),
        ))?;
        if names {
            for (i, label) in labels.iter().enumerate() {
                let middle = (top + i as u32 * cell + cell / 2) as i32;
                root.draw(&Text::new(
                    shorten(label, 28),
                    (left as i32 - 6, middle),
                    font(label_size).pos(Pos::new(HPos::Right, VPos::Center)),
                ))?;
                let centre = (left + i as u32 * cell + cell / 2) as i32;
                root.draw(&Text::new(
                    shorten(label, 28),
                    (centre + label_size as i32 / 2, (top + side + 6) as i32),
                    font(label_size).transform(FontTransform::Rotate90),
                ))?;
            }
        } else {
            root.draw(&Text::new(
                format!("{n} labels, in the order of the table below"),
                (left as i32, (top + side + 8) as i32),
                font(12),
            ))?;
        }
        root.draw(&Text::new(
            "true label",
            (12, (top + side / 2) as i32),
            font(13)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
        root.draw(&Text::new(
            "predicted label",
            ((left + side / 2) as i32, (height - 22) as i32),
            font(13).pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
        Ok(())
    })
}

/// White (0) to dark blue (1).
fn heat(share: f64) -> RGBColor {
    let t = share.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * t).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> image::RgbImage {
        image::load_from_memory(png).unwrap().to_rgb8()
    }

    /// Pixels that are neither white nor near-white.
    fn ink(img: &image::RgbImage) -> usize {
        img.pixels()
            .filter(|p| p.0.iter().any(|&c| c < 200))
            .count()
    }

    #[test]
    fn plots_have_ink_and_text() {
        register_fonts().unwrap();
        let scree = decode(&scree(&[0.3, 0.2, 0.1]).unwrap());
        assert_eq!(scree.dimensions(), SCREE_SIZE);
        assert!(ink(&scree) > 5_000, "scree has almost no ink");

        let labels: Vec<(String, u64)> = (0..30)
            .map(|i| (format!("label {i}"), 100 - i as u64))
            .collect();
        let points: Vec<Point> = (0..600)
            .map(|i| Point {
                label: i % 30,
                x: (i as f64 * 0.1).sin(),
                y: (i as f64 * 0.37).cos(),
            })
            .collect();
        let scatter = decode(&scatter(&points, &labels, &[0.3, 0.2]).unwrap());
        assert!(ink(&scatter) > 5_000);

        let counts = decode(&label_counts(&labels).unwrap());
        assert!(ink(&counts) > 5_000);

        let names: Vec<String> = labels.iter().map(|(l, _)| l.clone()).collect();
        let matrix: Vec<Vec<u64>> = (0..30)
            .map(|i| {
                (0..30)
                    .map(|j| if i == j { 9 } else { (i + j) as u64 % 2 })
                    .collect()
            })
            .collect();
        let heat_map = decode(&confusion(&names, &matrix).unwrap());
        assert!(ink(&heat_map) > 5_000);
    }

    #[test]
    fn legend_names_the_largest_labels_and_groups_the_rest() {
        let labels: Vec<(String, u64)> = (0..150)
            .map(|i| (format!("l{i}"), 1000 - i as u64))
            .collect();
        let legend = Legend::of(&labels);
        assert_eq!(legend.named, PALETTE.len());
        assert_eq!(legend.other_labels, 130);
        assert_eq!(
            legend.other_images,
            (20..150).map(|i| 1000 - i as u64).sum::<u64>()
        );
        assert_eq!(legend.colour(0), PALETTE[0]);
        assert_eq!(legend.colour(149), OTHER);
        let few = Legend::of(&labels[..3]);
        assert_eq!((few.named, few.other_labels, few.other_images), (3, 0, 0));
    }

    #[test]
    fn palette_colours_are_distinct_and_not_grey() {
        for (i, a) in PALETTE.iter().enumerate() {
            assert_ne!(*a, OTHER);
            for b in &PALETTE[i + 1..] {
                let d: i32 = [(a.0, b.0), (a.1, b.1), (a.2, b.2)]
                    .iter()
                    .map(|&(x, y)| (x as i32 - y as i32).abs())
                    .sum();
                assert!(d > 60, "{a:?} and {b:?} are too close");
            }
        }
    }

    #[test]
    fn shorten_cuts_on_characters() {
        assert_eq!(shorten("Äpfel Grün", 20), "Äpfel Grün");
        assert_eq!(shorten("Äpfel Grün", 4), "Äpf…");
    }
}
