//! Views of one photo: the whole photo and crops of it, each also
//! mirrored, as issue 14's study defines them (FINDINGS §6). Training on
//! the crops as extra rows and averaging the views' features at serve time
//! took closed-set top-1 on real grocery photos from 0.62 to 0.77: zooming
//! in gives the network more pixels per fruit.
//!
//! A view is cut from the *decoded* photo (W × H): the box's pixels are
//! copied out first (so the resize filter never reads outside the box),
//! resized to 224×224 exactly as the whole photo is (antialiased bilinear),
//! and a mirrored view is that result flipped left–right.

use image::RgbImage;

use crate::{INPUT_SIZE, PLANE_LEN, TENSOR_LEN};

/// Where a crop sits in the photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Centre,
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

impl Anchor {
    /// Study order: centre, then the corners clockwise from top-left.
    pub const ALL: [Anchor; 5] = [
        Anchor::Centre,
        Anchor::TopLeft,
        Anchor::TopRight,
        Anchor::BottomLeft,
        Anchor::BottomRight,
    ];

    fn short(self) -> &'static str {
        match self {
            Anchor::Centre => "c",
            Anchor::TopLeft => "tl",
            Anchor::TopRight => "tr",
            Anchor::BottomLeft => "bl",
            Anchor::BottomRight => "br",
        }
    }
}

/// An integer pixel rectangle `[x0, x0 + width) × [y0, y0 + height)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewBox {
    pub x0: u32,
    pub y0: u32,
    pub width: u32,
    pub height: u32,
}

/// One view: the whole photo or a crop at `scale` of its width and height.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// `None`: the whole photo.
    pub crop: Option<(Anchor, f32)>,
    pub mirrored: bool,
}

impl View {
    /// The whole photo, as it is: what `features/` holds.
    pub const WHOLE: View = View {
        crop: None,
        mirrored: false,
    };

    /// `full`, `c0.6`, `tl0.5`, …; mirrored views end in `-m`.
    pub fn name(&self) -> String {
        let base = match self.crop {
            None => "full".to_string(),
            Some((anchor, scale)) => format!("{}{scale}", anchor.short()),
        };
        if self.mirrored {
            format!("{base}-m")
        } else {
            base
        }
    }

    /// The box of this view in a `width × height` photo. A crop is
    /// `round(s·W) × round(s·H)` (round = ⌊v + 0.5⌋, at least 1 pixel),
    /// centred with integer division or flush with a corner.
    pub fn view_box(&self, width: u32, height: u32) -> ViewBox {
        let Some((anchor, scale)) = self.crop else {
            return ViewBox {
                x0: 0,
                y0: 0,
                width,
                height,
            };
        };
        let side =
            |full: u32| ((f64::from(scale) * f64::from(full) + 0.5).floor() as u32).clamp(1, full);
        let (cw, ch) = (side(width), side(height));
        let (x0, y0) = match anchor {
            Anchor::Centre => ((width - cw) / 2, (height - ch) / 2),
            Anchor::TopLeft => (0, 0),
            Anchor::TopRight => (width - cw, 0),
            Anchor::BottomLeft => (0, height - ch),
            Anchor::BottomRight => (width - cw, height - ch),
        };
        ViewBox {
            x0,
            y0,
            width: cw,
            height: ch,
        }
    }
}

/// The whole photo and the 5 crops at each of `scales`, then all of those
/// mirrored, in that order.
pub fn views(scales: &[f32]) -> Vec<View> {
    let mut unmirrored = vec![View {
        crop: None,
        mirrored: false,
    }];
    for &scale in scales {
        unmirrored.extend(Anchor::ALL.map(|a| View {
            crop: Some((a, scale)),
            mirrored: false,
        }));
    }
    let mirrored = unmirrored.iter().map(|v| View {
        mirrored: true,
        ..*v
    });
    let mut all = unmirrored.clone();
    all.extend(mirrored);
    all
}

/// The 22 training views: (full + 5 crops at 0.6 + 5 at 0.5) × mirror.
pub fn training_views() -> Vec<View> {
    views(&[0.6, 0.5])
}

/// The 12 serving views, whose features are averaged: (full + 5 crops at 0.6) × mirror.
pub fn serving_views() -> Vec<View> {
    views(&[0.6])
}

/// A named set of views, as a run, a classifier and the service record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewSet {
    /// [`training_views`]: 22 views, extra training rows.
    Training,
    /// [`serving_views`]: 12 views, whose features are averaged.
    Serving,
}

impl ViewSet {
    pub fn views(self) -> Vec<View> {
        match self {
            ViewSet::Training => training_views(),
            ViewSet::Serving => serving_views(),
        }
    }

    /// The views' names, in order.
    pub fn names(self) -> Vec<String> {
        self.views().iter().map(View::name).collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ViewSet::Training => "training",
            ViewSet::Serving => "serving",
        }
    }
}

impl std::fmt::Display for ViewSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ViewSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "training" => Ok(ViewSet::Training),
            "serving" => Ok(ViewSet::Serving),
            other => Err(format!(
                "unknown view set {other:?}: expected \"training\" (22 views) or \"serving\" (12)"
            )),
        }
    }
}

/// The views named `names` (as [`View::name`] spells them), in that order.
pub fn views_named(names: &[String]) -> Result<Vec<View>, String> {
    let known = training_views();
    names
        .iter()
        .map(|name| {
            known
                .iter()
                .find(|v| &v.name() == name)
                .copied()
                .ok_or_else(|| format!("unknown view {name:?}"))
        })
        .collect()
}

/// Decodes `bytes` once and writes the tensor of every view into `out`
/// (`views.len() × TENSOR_LEN`, back to back). The first view of both
/// sets is the whole photo, exactly what [`crate::preprocess_into`] makes.
///
/// # Panics
/// If `out.len() != views.len() * TENSOR_LEN` (a caller bug).
pub fn preprocess_views_into(
    bytes: &[u8],
    cfg: &crate::PreprocessConfig,
    views: &[View],
    out: &mut [f32],
) -> Result<(), crate::ImageError> {
    assert_eq!(out.len(), views.len() * TENSOR_LEN, "one tensor per view");
    let rgb = crate::decode_rgb(bytes, cfg)?;
    for (view, tensor) in views.iter().zip(out.chunks_exact_mut(TENSOR_LEN)) {
        view_to_tensor_into(&rgb, view, tensor);
    }
    Ok(())
}

/// Writes the 224×224 tensor of `view` of `rgb` into `out`.
///
/// # Panics
/// If `out.len() != TENSOR_LEN` or `rgb` is empty (caller bugs).
pub fn view_to_tensor_into(rgb: &RgbImage, view: &View, out: &mut [f32]) {
    let b = view.view_box(rgb.width(), rgb.height());
    if view.crop.is_none() {
        crate::rgb_to_tensor_into(rgb, out);
    } else {
        let crop = image::imageops::crop_imm(rgb, b.x0, b.y0, b.width, b.height).to_image();
        crate::rgb_to_tensor_into(&crop, out);
    }
    if view.mirrored {
        mirror_in_place(out);
    }
}

/// Every view of `rgb`, tensors back to back (`views.len() × TENSOR_LEN`).
pub fn views_to_tensors(rgb: &RgbImage, views: &[View]) -> Vec<f32> {
    let mut out = vec![0.0; views.len() * TENSOR_LEN];
    for (view, tensor) in views.iter().zip(out.chunks_exact_mut(TENSOR_LEN)) {
        view_to_tensor_into(rgb, view, tensor);
    }
    out
}

/// Left–right flip of a 224×224 NCHW tensor: column x becomes 223 − x.
fn mirror_in_place(tensor: &mut [f32]) {
    let side = INPUT_SIZE as usize;
    for plane in tensor.chunks_exact_mut(PLANE_LEN) {
        for row in plane.chunks_exact_mut(side) {
            row.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crop(anchor: Anchor, scale: f32) -> View {
        View {
            crop: Some((anchor, scale)),
            mirrored: false,
        }
    }

    #[test]
    fn boxes_follow_the_study_on_a_square_photo() {
        // FINDINGS §6: 348×348 at 0.6 → 209 px, c = (69, 69), tr = (139, 0).
        let c = crop(Anchor::Centre, 0.6).view_box(348, 348);
        assert_eq!(
            c,
            ViewBox {
                x0: 69,
                y0: 69,
                width: 209,
                height: 209
            }
        );
        let tr = crop(Anchor::TopRight, 0.6).view_box(348, 348);
        assert_eq!(
            tr,
            ViewBox {
                x0: 139,
                y0: 0,
                width: 209,
                height: 209
            }
        );
        let br = crop(Anchor::BottomRight, 0.5).view_box(348, 348);
        assert_eq!(
            br,
            ViewBox {
                x0: 174,
                y0: 174,
                width: 174,
                height: 174
            }
        );
        let full = View {
            crop: None,
            mirrored: true,
        }
        .view_box(348, 348);
        assert_eq!(
            full,
            ViewBox {
                x0: 0,
                y0: 0,
                width: 348,
                height: 348
            }
        );
    }

    #[test]
    fn boxes_round_half_up_and_centre_with_integer_division_when_not_square() {
        // 464 × 348 at 0.6: 278.4 → 278, 208.8 → 209; centre (93, 69).
        let c = crop(Anchor::Centre, 0.6).view_box(464, 348);
        assert_eq!(
            c,
            ViewBox {
                x0: 93,
                y0: 69,
                width: 278,
                height: 209
            }
        );
        let bl = crop(Anchor::BottomLeft, 0.6).view_box(464, 348);
        assert_eq!(
            bl,
            ViewBox {
                x0: 0,
                y0: 139,
                width: 278,
                height: 209
            }
        );
        // 0.5 × 5 = 2.5 rounds up to 3; (5 − 3) / 2 = 1.
        let c = crop(Anchor::Centre, 0.5).view_box(5, 5);
        assert_eq!(
            c,
            ViewBox {
                x0: 1,
                y0: 1,
                width: 3,
                height: 3
            }
        );
        let tiny = crop(Anchor::TopLeft, 0.5).view_box(1, 1);
        assert_eq!((tiny.width, tiny.height), (1, 1), "never empty");
    }

    #[test]
    fn view_sets_are_the_studys_in_order() {
        let train: Vec<String> = training_views().iter().map(View::name).collect();
        assert_eq!(train.len(), 22);
        assert_eq!(&train[..3], ["full", "c0.6", "tl0.6"]);
        assert_eq!(train[6], "c0.5");
        assert_eq!(train[11], "full-m");
        assert_eq!(train[21], "br0.5-m");
        let serve: Vec<String> = serving_views().iter().map(View::name).collect();
        assert_eq!(serve.len(), 12);
        assert!(
            serve.iter().all(|s| train.contains(s)),
            "serving views are training views"
        );
    }

    #[test]
    fn view_sets_parse_print_and_name_their_views() {
        for set in [ViewSet::Training, ViewSet::Serving] {
            assert_eq!(set.as_str().parse::<ViewSet>(), Ok(set));
            let names = set.names();
            assert_eq!(names[0], "full", "the whole photo comes first");
            assert_eq!(views_named(&names).unwrap(), set.views());
        }
        assert!("all".parse::<ViewSet>().unwrap_err().contains("training"));
        assert!(views_named(&["zoom".into()]).is_err());
        let json = serde_json::to_string(&ViewSet::Serving).unwrap();
        assert_eq!(json, "\"serving\"");
    }

    #[test]
    fn the_first_view_of_preprocess_views_is_the_plain_tensor() {
        let rgb = RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(rgb)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let cfg = crate::PreprocessConfig::default();
        let views = ViewSet::Serving.views();
        let mut out = vec![0.0; views.len() * TENSOR_LEN];
        preprocess_views_into(&png, &cfg, &views, &mut out).unwrap();
        let plain = crate::preprocess(&png, &cfg).unwrap();
        assert_eq!(&out[..TENSOR_LEN], plain.as_slice());
        assert_ne!(
            &out[TENSOR_LEN..2 * TENSOR_LEN],
            plain.as_slice(),
            "a crop differs"
        );
        assert!(preprocess_views_into(b"", &cfg, &views, &mut out).is_err());
    }

    #[test]
    fn a_mirrored_view_is_the_column_flip_and_a_crop_sees_only_its_box() {
        // Left half red, right half blue: the top-left crop at 0.5 is all red.
        let rgb = RgbImage::from_fn(100, 60, |x, _| {
            if x < 50 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let plain = views_to_tensors(
            &rgb,
            &[View {
                crop: None,
                mirrored: false,
            }],
        );
        let mirrored = views_to_tensors(
            &rgb,
            &[View {
                crop: None,
                mirrored: true,
            }],
        );
        let side = INPUT_SIZE as usize;
        for (y, x) in [(0, 0), (10, 5), (223, 100)] {
            assert_eq!(mirrored[y * side + x], plain[y * side + side - 1 - x]);
        }
        assert_eq!(plain[0], 1.0, "red at the left");
        assert_eq!(mirrored[0], -1.0, "blue at the left once mirrored");
        let tl = views_to_tensors(&rgb, &[crop(Anchor::TopLeft, 0.5)]);
        let (red, blue) = (&tl[..PLANE_LEN], &tl[2 * PLANE_LEN..]);
        assert!(red.iter().all(|&v| v == 1.0) && blue.iter().all(|&v| v == -1.0));
    }
}
