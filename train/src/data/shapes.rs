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
pub const PLACES: [&str; 9] = [
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
pub const BACKGROUND: [f32; 3] = [0.12, 0.12, 0.14];

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
                for sub in 0..16 {
                    let (u, v) = subsample(x, y, n, sub);
                    let mut c = BACKGROUND;
                    for it in items {
                        if inside(it.shape, it.cx, it.cy, it.r, u, v) {
                            c = COLOURS[it.colour].1;
                        }
                    }
                    (0..3).for_each(|k| acc[k] += c[k] / 16.0);
                }
                for k in 0..3 {
                    px[(y * n + x) * 3 + k] = acc[k] * 2.0 - 1.0;
                }
            }
        }
        px
    }
}

/// Sample point `sub` (of a 4x4 grid) of pixel (`x`, `y`) in 0..1 image coordinates.
fn subsample(x: usize, y: usize, n: usize, sub: usize) -> (f32, f32) {
    let at = |p: usize, k: usize| (p as f32 + ((k % 4) as f32 + 0.5) / 4.0) / n as f32;
    (at(x, sub), at(y, sub / 4))
}

/// How much of pixel (`x`, `y`) of an `n` x `n` image a shape of half size `r` centred at
/// (`cx`, `cy`) covers, sampled as the data set renders (what an analyser fits a drawing with).
pub fn coverage(shape: usize, cx: f32, cy: f32, r: f32, x: usize, y: usize, n: usize) -> f32 {
    (0..16)
        .filter(|&sub| {
            let (u, v) = subsample(x, y, n, sub);
            inside(shape, cx, cy, r, u, v)
        })
        .count() as f32
        / 16.0
}

/// Whether point (u, v) lies inside a shape of half size `r` centred at (`cx`, `cy`).
fn inside(shape: usize, cx: f32, cy: f32, r: f32, u: f32, v: f32) -> bool {
    let (dx, dy) = ((u - cx) / r, (v - cy) / r);
    match shape {
        0 => dx * dx + dy * dy <= 1.0,
        1 => dx.abs() <= 0.85 && dy.abs() <= 0.85,
        // Apex up, base at the bottom.
        2 => (-0.9..=0.8).contains(&dy) && dx.abs() <= (dy + 0.9) / 1.7 * 0.95,
        _ => dx.abs() + dy.abs() <= 1.0,
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
