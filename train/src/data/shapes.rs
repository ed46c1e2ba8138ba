//! The built-in text-to-image data set: one or two coloured shapes on a plain background,
//! with a caption that says what was drawn ("a large red circle in the top left", "a blue
//! square to the left of a green triangle"). Every sample is a pure function of (seed,
//! index), so a stream can be replayed from any position (resume) and needs nothing from
//! outside. Some (colour, shape) pairs never appear in the training split: they are the
//! held-out combinations an evaluation prompts for.

use super::Sample;
use muse_runtime::rng::mix64;

/// Shape kinds.
pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "diamond"];
/// Colour names and their RGB values.
pub const COLOURS: [(&str, [f32; 3]); 6] = [
    ("red", [0.90, 0.10, 0.10]),
    ("green", [0.10, 0.75, 0.15]),
    ("blue", [0.15, 0.25, 0.95]),
    ("yellow", [0.95, 0.85, 0.10]),
    ("purple", [0.60, 0.15, 0.75]),
    ("white", [0.95, 0.95, 0.95]),
];
/// How a caption names each cell of a 3x3 grid of positions, row by row.
const PLACES: [&str; 9] = [
    "in the top left",
    "at the top",
    "in the top right",
    "on the left",
    "in the center",
    "on the right",
    "in the bottom left",
    "at the bottom",
    "in the bottom right",
];
/// (colour, shape) pairs left out of the training split.
pub const HELD_OUT: [(&str, &str); 3] = [("green", "circle"), ("red", "triangle"), ("blue", "diamond")];
/// Dark grey background (in 0..1).
const BACKGROUND: [f32; 3] = [0.12, 0.12, 0.14];

/// Which samples a stream yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Every sample whose shapes avoid the held-out (colour, shape) pairs.
    Train,
    /// Single shapes of held-out pairs only.
    HeldOut,
}

/// The generator: resolution and seed.
#[derive(Clone, Debug)]
pub struct Shapes {
    /// Side of the square images in pixels.
    pub resolution: usize,
    /// Seed of the whole data set.
    pub seed: u64,
    /// Training or held-out samples.
    pub split: Split,
}

/// One drawn shape.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Item {
    shape: usize,
    colour: usize,
    large: bool,
    /// Centre in 0..1 image coordinates.
    cx: f32,
    cy: f32,
    /// Half size in 0..1 image coordinates.
    r: f32,
}

/// A uniform number in 0..1 from a counter.
fn unit(seed: u64, index: u64, k: u64) -> f32 {
    (mix64(seed ^ mix64(index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k)) >> 40) as f32 / (1u64 << 24) as f32
}

fn pick(seed: u64, index: u64, k: u64, n: usize) -> usize {
    ((unit(seed, index, k) * n as f32) as usize).min(n - 1)
}

impl Shapes {
    /// The training split at `resolution` with `seed`.
    pub fn new(resolution: usize, seed: u64) -> Shapes {
        Shapes { resolution, seed, split: Split::Train }
    }

    /// Sample `index` of the split: the same image and caption every time.
    pub fn sample(&self, index: u64) -> Sample {
        // Redraw (with a new counter) until the sample belongs to the split.
        for attempt in 0u64.. {
            let key = index.wrapping_mul(64).wrapping_add(attempt);
            let (items, caption) = self.draw(key);
            let held = items.iter().any(|it| HELD_OUT.contains(&(COLOURS[it.colour].0, SHAPES[it.shape])));
            let wanted = match self.split {
                Split::Train => !held,
                Split::HeldOut => held && items.len() == 1,
            };
            if wanted {
                return Sample { image: self.render(&items), caption, name: format!("shapes:{index}") };
            }
        }
        unreachable!("a sample of each split turns up within a few draws")
    }

    /// The caption of sample `index` without drawing it.
    pub fn draw_caption(&self, index: u64) -> String {
        self.draw(index.wrapping_mul(64)).1
    }

    /// The shapes and caption of counter `key`.
    fn draw(&self, key: u64) -> (Vec<Item>, String) {
        let s = self.seed;
        let two = self.split == Split::Train && unit(s, key, 0) < 0.4;
        let item = |k: u64, place: usize| {
            let large = unit(s, key, k) < 0.5;
            let r = if large { 0.18 + 0.04 * unit(s, key, k + 1) } else { 0.10 + 0.03 * unit(s, key, k + 1) };
            // Jitter inside the grid cell, keeping the shape inside the image.
            let (col, row) = ((place % 3) as f32, (place / 3) as f32);
            let jitter = |u: f32| (u - 0.5) * 0.1;
            let cx = ((col + 0.5) / 3.0 + jitter(unit(s, key, k + 2))).clamp(r + 0.02, 0.98 - r);
            let cy = ((row + 0.5) / 3.0 + jitter(unit(s, key, k + 3))).clamp(r + 0.02, 0.98 - r);
            Item {
                shape: pick(s, key, k + 4, SHAPES.len()),
                colour: pick(s, key, k + 5, COLOURS.len()),
                large,
                cx,
                cy,
                r,
            }
        };
        let describe = |it: &Item| {
            format!("{} {} {}", if it.large { "large" } else { "small" }, COLOURS[it.colour].0, SHAPES[it.shape])
        };
        let name = |it: &Item| format!("{} {}", COLOURS[it.colour].0, SHAPES[it.shape]);
        if !two {
            let place = pick(s, key, 1, PLACES.len());
            let it = item(10, place);
            return (vec![it], format!("a {} {}", describe(&it), PLACES[place]));
        }
        // Two shapes side by side or one above the other, in neighbouring-or-further cells.
        let horizontal = unit(s, key, 2) < 0.5;
        let line = pick(s, key, 3, 3);
        let (a, b) = if horizontal { (line * 3, line * 3 + 2) } else { (line, line + 6) };
        let (first, second) = (item(20, a), item(30, b));
        let (first, second) = if first.shape == second.shape && first.colour == second.colour {
            (first, Item { colour: (second.colour + 1) % COLOURS.len(), ..second })
        } else {
            (first, second)
        };
        let rel = if horizontal { "to the left of" } else { "above" };
        (vec![first, second], format!("a {} {rel} a {}", name(&first), name(&second)))
    }

    /// Pixels in -1..1, channels last, each pixel averaged over 4x4 sub-samples so edges are
    /// smooth at small resolutions.
    fn render(&self, items: &[Item]) -> Vec<f32> {
        let n = self.resolution;
        let mut px = vec![0.0f32; n * n * 3];
        for y in 0..n {
            for x in 0..n {
                let mut acc = [0.0f32; 3];
                for sy in 0..4 {
                    for sx in 0..4 {
                        let u = (x as f32 + (sx as f32 + 0.5) / 4.0) / n as f32;
                        let v = (y as f32 + (sy as f32 + 0.5) / 4.0) / n as f32;
                        let mut c = BACKGROUND;
                        for it in items {
                            if inside(it, u, v) {
                                c = COLOURS[it.colour].1;
                            }
                        }
                        (0..3).for_each(|k| acc[k] += c[k] / 16.0);
                    }
                }
                for k in 0..3 {
                    px[(y * n + x) * 3 + k] = acc[k] * 2.0 - 1.0;
                }
            }
        }
        px
    }
}

/// What an image shows of a one-shape caption of this data set ("a large red circle in the
/// top left"): whether the colour that covers most of the non-background pixels is the
/// caption's, and whether that colour's pixels centre in the caption's cell of the 3x3
/// grid. A yardstick for generated samples: the captions are the ground truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// The dominant colour is the caption's.
    pub colour: bool,
    /// The caption's colour sits in the caption's place.
    pub place: bool,
    /// Of the four shapes, the caption's fits the caption's colour's pixels best.
    pub shape: bool,
}

/// Judges `image` (`resolution`^2 pixels in -1..1, channels last) against `caption`; `None`
/// when the caption is not a one-shape caption of this data set.
pub fn judge(image: &[f32], resolution: usize, caption: &str) -> Option<Judgement> {
    let words: Vec<&str> = caption.split_whitespace().collect();
    if words.len() < 5 || words[0] != "a" || !matches!(words[1], "large" | "small") {
        return None;
    }
    let colour = COLOURS.iter().position(|c| c.0 == words[2])?;
    SHAPES.iter().position(|s| *s == words[3])?;
    let place = PLACES.iter().position(|p| *p == words[4..].join(" "))?;
    let n = resolution;
    if image.len() < n * n * 3 || n == 0 {
        return None;
    }
    // A pixel is a blend of a palette colour with the background (edges are anti-aliased):
    // it votes for the colour whose blend line passes closest, weighted by how much of the
    // colour it holds.
    let mut votes = [0.0f64; COLOURS.len()];
    let (mut sx, mut sy, mut own) = (0.0f64, 0.0f64, 0.0f64);
    let mut coverage = vec![0.0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            let px: Vec<f32> = (0..3).map(|k| (image[(y * n + x) * 3 + k] + 1.0) / 2.0 - BACKGROUND[k]).collect();
            let blend = |c: &[f32; 3]| {
                let d: Vec<f32> = (0..3).map(|k| c[k] - BACKGROUND[k]).collect();
                let alpha = (0..3).map(|k| px[k] * d[k]).sum::<f32>() / (0..3).map(|k| d[k] * d[k]).sum::<f32>();
                let off = (0..3).map(|k| (px[k] - alpha * d[k]).powi(2)).sum::<f32>();
                (alpha.clamp(0.0, 1.0), off)
            };
            let Some((k, (alpha, off))) =
                COLOURS.iter().map(|c| blend(&c.1)).enumerate().min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            else {
                continue;
            };
            if alpha < 0.25 || off > 0.02 {
                continue;
            }
            votes[k] += alpha as f64;
            if k == colour {
                coverage[y * n + x] = alpha;
                sx += (x as f64 + 0.5) * alpha as f64;
                sy += (y as f64 + 0.5) * alpha as f64;
                own += alpha as f64;
            }
        }
    }
    let (best, &count) = votes.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
    // A shape is at least a few pixels: less is noise, not a drawing.
    let visible = |k: f64| k * 100.0 >= (n * n) as f64;
    let colour_ok = visible(count) && best == colour;
    let place_ok = visible(own) && {
        let (cx, cy) = (sx / own / n as f64, sy / own / n as f64);
        let cell = ((cy * 3.0) as usize).min(2) * 3 + ((cx * 3.0) as usize).min(2);
        cell == place
    };
    let shape = SHAPES.iter().position(|s| *s == words[3])?;
    let shape_ok = visible(own) && best_shape(&coverage, n, sx / own / n as f64, sy / own / n as f64) == shape;
    Some(Judgement { colour: colour_ok, place: place_ok, shape: shape_ok })
}

/// The shape whose drawing (at the best size and position near the pixels' centre) differs
/// least from `coverage`, how much of each pixel one colour covers.
fn best_shape(coverage: &[f32], n: usize, cx: f64, cy: f64) -> usize {
    let px = 1.0 / n as f32;
    let mut best = (f32::INFINITY, 0);
    for shape in 0..SHAPES.len() {
        for r in (0..=18).map(|i| 0.06 + 0.01 * i as f32) {
            for (ox, oy) in (0..9).map(|k| ((k % 3) as f32 - 1.0, (k / 3) as f32 - 1.0)) {
                let it = Item {
                    shape,
                    colour: 0,
                    large: false,
                    cx: cx as f32 + ox * px / 2.0,
                    cy: cy as f32 + oy * px / 2.0,
                    r,
                };
                let mut err = 0.0f32;
                for y in 0..n {
                    for x in 0..n {
                        let mut cover = 0.0f32;
                        for sub in 0..4 {
                            let u = (x as f32 + 0.25 + 0.5 * (sub % 2) as f32) * px;
                            let v = (y as f32 + 0.25 + 0.5 * (sub / 2) as f32) * px;
                            cover += if inside(&it, u, v) { 0.25 } else { 0.0 };
                        }
                        err += (cover - coverage[y * n + x]).abs();
                    }
                }
                if err < best.0 {
                    best = (err, shape);
                }
            }
        }
    }
    best.1
}

/// Whether point (u, v) lies inside the shape.
fn inside(it: &Item, u: f32, v: f32) -> bool {
    let (dx, dy) = ((u - it.cx) / it.r, (v - it.cy) / it.r);
    match SHAPES[it.shape] {
        "circle" => dx * dx + dy * dy <= 1.0,
        "square" => dx.abs() <= 0.85 && dy.abs() <= 0.85,
        // Apex up, base at the bottom.
        "triangle" => (-0.9..=0.8).contains(&dy) && dx.abs() <= (dy + 0.9) / 1.7 * 0.95,
        "diamond" => dx.abs() + dy.abs() <= 1.0,
        other => unreachable!("shape {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_and_split() {
        let d = Shapes::new(32, 7);
        assert_eq!(d.sample(5), d.sample(5));
        assert_ne!(d.sample(5).caption, d.sample(6).caption);
        let held = Shapes { split: Split::HeldOut, ..d.clone() };
        for i in 0..200 {
            let c = d.sample(i).caption;
            for (colour, shape) in HELD_OUT {
                assert!(!c.contains(&format!("{colour} {shape}")), "training caption {c:?} uses a held-out pair");
            }
            let h = held.sample(i).caption;
            assert!(HELD_OUT.iter().any(|(c, s)| h.contains(&format!("{c} {s}"))), "{h:?}");
        }
    }

    #[test]
    fn the_judge_agrees_with_the_drawings_and_not_with_other_captions() {
        // On the data set's own one-shape samples the caption is right, so the judge must say
        // so; against another sample's caption (another colour) it must not.
        let d = Shapes::new(16, 11);
        let (mut judged, mut colour, mut place, mut wrong) = (0, 0, 0, 0);
        let (mut shape, mut large, mut large_right, mut wrong_shape) = (0, 0, 0, 0);
        for i in 0..300 {
            let s = d.sample(i);
            let Some(j) = judge(&s.image, 16, &s.caption) else { continue };
            judged += 1;
            colour += usize::from(j.colour);
            place += usize::from(j.place);
            shape += usize::from(j.shape);
            if s.caption.contains("large") {
                large += 1;
                large_right += usize::from(j.shape);
                let words: Vec<&str> = s.caption.split(' ').collect();
                let other = SHAPES.iter().find(|&&x| x != words[3]).expect("another shape");
                let reshaped = s.caption.replacen(words[3], other, 1);
                wrong_shape += usize::from(judge(&s.image, 16, &reshaped).expect("still a caption").shape);
            }
            let other = COLOURS.iter().find(|c| !s.caption.contains(c.0)).expect("another colour").0;
            let words: Vec<&str> = s.caption.split(' ').collect();
            let swapped = s.caption.replacen(words[2], other, 1);
            wrong += usize::from(judge(&s.image, 16, &swapped).expect("still a caption").colour);
        }
        assert!(judged > 100, "{judged} one-shape captions");
        assert_eq!((colour, place), (judged, judged), "of {judged}");
        // Shapes of a large size are told apart at 16x16; small ones (3-4 pixels across) are
        // right in ~3 of 4.
        assert_eq!(large_right, large, "large shapes");
        assert_eq!(wrong_shape, 0, "another shape's caption");
        assert!(shape * 10 >= judged * 8, "shape right in {shape} of {judged}");
        assert_eq!(wrong, 0);
        assert_eq!(judge(&d.sample(0).image, 16, "a blue square to the left of a green triangle"), None);
    }

    #[test]
    fn the_caption_says_what_was_drawn() {
        // Check the pixels against the caption: the named colour covers a visible area and
        // sits in the named part of the image.
        let d = Shapes::new(32, 3);
        let mut checked = 0;
        for i in 0..100 {
            let s = d.sample(i);
            let words: Vec<&str> = s.caption.split(' ').collect();
            if words.len() < 4 || s.caption.contains(" of ") || s.caption.contains("above") {
                continue;
            }
            let colour = COLOURS.iter().find(|c| c.0 == words[2]).expect("caption names a colour").1;
            let (mut count, mut sx, mut sy) = (0usize, 0.0f32, 0.0f32);
            for y in 0..32 {
                for x in 0..32 {
                    let p = &s.image[(y * 32 + x) * 3..][..3];
                    if (0..3).all(|k| (p[k] - (colour[k] * 2.0 - 1.0)).abs() < 0.05) {
                        count += 1;
                        sx += x as f32;
                        sy += y as f32;
                    }
                }
            }
            assert!(count > 8, "{}: {count} pixels of the colour", s.caption);
            let (mx, my) = (sx / count as f32 / 32.0, sy / count as f32 / 32.0);
            if s.caption.ends_with("left") {
                assert!(mx < 0.45, "{}: centre x {mx}", s.caption);
            }
            if s.caption.ends_with("right") {
                assert!(mx > 0.55, "{}: centre x {mx}", s.caption);
            }
            if s.caption.contains(" top") {
                assert!(my < 0.45, "{}: centre y {my}", s.caption);
            }
            if s.caption.contains(" bottom") {
                assert!(my > 0.55, "{}: centre y {my}", s.caption);
            }
            checked += 1;
        }
        assert!(checked > 20);
    }
}
