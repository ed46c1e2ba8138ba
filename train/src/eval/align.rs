//! Caption alignment on the built-in data set, in the manner of GenEval: a deterministic
//! analyser finds the shapes an image shows (pixels classified by palette colour, grouped into
//! connected objects, each object's shape class, size and centre fitted by rendering the four
//! shapes as the data set draws them) and scores each attribute the caption asks for. The
//! captions of the data set are its ground truth, so its own images must score near 100%.

use crate::data::shapes::{coverage, BACKGROUND, COLOURS, PLACES, SHAPES};
use serde_json::{json, Value};

/// How two shapes of a caption stand to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// "to the left of"
    LeftOf,
    /// "above"
    Above,
}

/// What a caption of the built-in data set asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// "a large red circle in the top left": size, colour, shape and a cell of the 3x3 grid.
    One {
        /// Large or small.
        large: bool,
        /// Index into [`COLOURS`].
        colour: usize,
        /// Index into [`SHAPES`].
        shape: usize,
        /// Index into the 3x3 grid, row by row.
        place: usize,
    },
    /// "a red circle to the left of a blue square": two (colour, shape) pairs and a relation.
    Two {
        /// The first shape's (colour, shape).
        first: (usize, usize),
        /// Where the first stands relative to the second.
        relation: Relation,
        /// The second shape's (colour, shape).
        second: (usize, usize),
    },
}

impl Prompt {
    /// The prompt a caption of the data set states; `None` for any other text.
    pub fn parse(caption: &str) -> Option<Prompt> {
        let w: Vec<&str> = caption.split_whitespace().collect();
        let colour = |s: &str| COLOURS.iter().position(|c| c.0 == s);
        let shape = |s: &str| SHAPES.iter().position(|x| *x == s);
        if w.first() != Some(&"a") {
            return None;
        }
        if w.len() >= 5 && matches!(w[1], "large" | "small") {
            let place = PLACES.iter().position(|p| *p == w[4..].join(" "))?;
            return Some(Prompt::One { large: w[1] == "large", colour: colour(w[2])?, shape: shape(w[3])?, place });
        }
        let (relation, rest) = match w.get(3..) {
            Some(["to", "the", "left", "of", rest @ ..]) => (Relation::LeftOf, rest),
            Some(["above", rest @ ..]) => (Relation::Above, rest),
            _ => return None,
        };
        match rest {
            ["a", c, s] => {
                Some(Prompt::Two { first: (colour(w[1])?, shape(w[2])?), relation, second: (colour(c)?, shape(s)?) })
            }
            _ => None,
        }
    }
}

/// One shape found in an image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Pixels it covers (anti-aliased edges count in part).
    pub mass: f64,
    /// Centre of its pixels in 0..1 image coordinates.
    pub cx: f64,
    /// Centre of its pixels in 0..1 image coordinates.
    pub cy: f64,
    /// Index into [`SHAPES`]: the shape whose drawing fits its pixels best.
    pub shape: usize,
    /// The fitted drawing's half size in 0..1 image coordinates.
    pub r: f64,
}

impl Object {
    /// Whether it is drawn at the data set's large size (half size 0.18-0.22, small ones
    /// 0.10-0.13).
    pub fn large(&self) -> bool {
        self.r >= 0.155
    }

    /// Its cell of the 3x3 grid, row by row.
    pub fn place(&self) -> usize {
        let cell = |v: f64| ((v * 3.0).max(0.0) as usize).min(2);
        cell(self.cy) * 3 + cell(self.cx)
    }
}

/// Which palette colour a pixel (in -1..1) shows and how much of it: a pixel is a blend of a
/// palette colour with the background (edges are anti-aliased), so it belongs to the colour
/// whose blend line passes closest, if close enough and with enough of the colour.
fn classify(px: &[f32]) -> Option<(usize, f32)> {
    let (k, (alpha, off)) = (0..COLOURS.len()).map(|k| (k, blend(px, k))).min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))?;
    (alpha >= 0.25 && off <= 0.02).then_some((k, alpha))
}

/// How much of palette colour `k` a pixel holds over the background (0..1), and its
/// squared distance from that colour's blend line.
fn blend(px: &[f32], k: usize) -> (f32, f32) {
    let p: [f32; 3] = std::array::from_fn(|i| (px[i] + 1.0) / 2.0 - BACKGROUND[i]);
    let d: [f32; 3] = std::array::from_fn(|i| COLOURS[k].1[i] - BACKGROUND[i]);
    let alpha = (0..3).map(|i| p[i] * d[i]).sum::<f32>() / (0..3).map(|i| d[i] * d[i]).sum::<f32>();
    let off = (0..3).map(|i| (p[i] - alpha * d[i]).powi(2)).sum::<f32>();
    (alpha.clamp(0.0, 1.0), off)
}

/// The shapes `image` shows (`n`^2 pixels in -1..1, channels last), largest first: connected
/// pixels of one colour (8-neighbours) covering at least 1% of the image.
pub fn objects(image: &[f32], n: usize) -> Vec<Object> {
    if n == 0 || image.len() < n * n * 3 {
        return Vec::new();
    }
    let label: Vec<Option<(usize, f32)>> = (0..n * n).map(|i| classify(&image[i * 3..i * 3 + 3])).collect();
    let mut seen = vec![false; n * n];
    let mut found = Vec::new();
    for start in 0..n * n {
        let Some((colour, _)) = label[start] else { continue };
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut pixels = Vec::new();
        while let Some(i) = stack.pop() {
            pixels.push(i);
            let (x, y) = ((i % n) as i64, (i / n) as i64);
            for (dx, dy) in (0..9).map(|k| (k % 3 - 1, k / 3 - 1)) {
                let (u, v) = (x + dx, y + dy);
                if u < 0 || v < 0 || u >= n as i64 || v >= n as i64 {
                    continue;
                }
                let j = v as usize * n + u as usize;
                if !seen[j] && label[j].is_some_and(|(c, _)| c == colour) {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        let alpha = |i: usize| label[i].map_or(0.0, |(_, a)| a as f64);
        let mass: f64 = pixels.iter().map(|&i| alpha(i)).sum();
        if mass * 100.0 < (n * n) as f64 {
            continue;
        }
        let cx = pixels.iter().map(|&i| ((i % n) as f64 + 0.5) * alpha(i)).sum::<f64>() / mass / n as f64;
        let cy = pixels.iter().map(|&i| ((i / n) as f64 + 0.5) * alpha(i)).sum::<f64>() / mass / n as f64;
        // The object's pixels, and the faint edges around it (too little of the colour to
        // be classified) as far as they lie on the colour's blend line.
        let mut cover = vec![0.0f32; n * n];
        for i in 0..n * n {
            if label[i].is_none() {
                let (a, off) = blend(&image[i * 3..i * 3 + 3], colour);
                cover[i] = if off <= 0.02 { a } else { 0.0 };
            }
        }
        pixels.iter().for_each(|&i| cover[i] = alpha(i) as f32);
        let (shape, r) = fit(&cover, n, &pixels, cx, cy, mass);
        found.push(Object { colour, mass, cx, cy, shape, r });
    }
    found.sort_by(|a, b| b.mass.total_cmp(&a.mass));
    found
}

/// Area of each shape at half size 1 (see `shapes::inside`), and how far below the
/// drawing's centre its pixels' centre lies, in half sizes.
const AREA: [f64; 4] = [std::f64::consts::PI, 2.89, 1.615, 2.0];
const CENTROID_BELOW: [f64; 4] = [0.0, 0.0, 0.233, 0.0];

/// The shape (and its half size) whose drawing differs least from `cover` (how much of each
/// pixel one object covers): for each shape a pattern search over centre and size, from
/// where the object's centre and area put it, comparing drawings rendered as the data set
/// renders them over the object's neighbourhood.
fn fit(cover: &[f32], n: usize, pixels: &[usize], cx: f64, cy: f64, mass: f64) -> (usize, f64) {
    let (x0, x1) = pixels.iter().map(|i| i % n).fold((n, 0), |(a, b), x| (a.min(x), b.max(x)));
    let (y0, y1) = pixels.iter().map(|i| i / n).fold((n, 0), |(a, b), y| (a.min(y), b.max(y)));
    let window = |lo: usize, hi: usize| lo.saturating_sub(2)..(hi + 3).min(n);
    let (xs, ys) = (window(x0, x1), window(y0, y1));
    let error = |shape: usize, p: [f64; 3]| -> f64 {
        let mut e = 0.0;
        for y in ys.clone() {
            for x in xs.clone() {
                let c = coverage(shape, p[0] as f32, p[1] as f32, p[2] as f32, x, y, n);
                e += (c - cover[y * n + x]).abs() as f64;
            }
        }
        e
    };
    let px = 1.0 / n as f64;
    let mut best = (f64::INFINITY, 0, 0.0);
    for shape in 0..SHAPES.len() {
        let r = (mass / (n * n) as f64 / AREA[shape]).sqrt().max(px);
        let mut p = [cx, cy - CENTROID_BELOW[shape] * r, r];
        let mut e = error(shape, p);
        let mut step = [px / 2.0, px / 2.0, 0.02];
        // Halve the steps when no move along one axis helps, until below 1/32 pixel.
        while step[0] > px / 32.0 {
            let mut moved = false;
            for axis in 0..3 {
                for sign in [-1.0, 1.0] {
                    let mut q = p;
                    q[axis] += sign * step[axis];
                    if q[2] <= 0.0 {
                        continue;
                    }
                    let eq = error(shape, q);
                    if eq < e {
                        (p, e, moved) = (q, eq, true);
                    }
                }
            }
            if !moved {
                step.iter_mut().for_each(|s| *s /= 2.0);
            }
        }
        if e < best.0 {
            best = (e, shape, p[2]);
        }
    }
    (best.1, best.2)
}

/// An attribute a caption asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attribute {
    /// The named colours are there (one shape: the largest object has it).
    Colour,
    /// The object of each named colour has the named shape.
    Shape,
    /// It is drawn large or small as named.
    Size,
    /// It sits in the named cell of the 3x3 grid.
    Place,
    /// Two shapes stand as named ("to the left of", "above").
    Relation,
    /// As many shapes as named, no more.
    Count,
}

impl Attribute {
    /// Every attribute, in report order.
    pub const ALL: [Attribute; 6] =
        [Attribute::Colour, Attribute::Shape, Attribute::Size, Attribute::Place, Attribute::Relation, Attribute::Count];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Colour => "colour",
            Attribute::Shape => "shape",
            Attribute::Size => "size",
            Attribute::Place => "place",
            Attribute::Relation => "relation",
            Attribute::Count => "count",
        }
    }
}

/// How one image answers its caption: each attribute the caption asks for, right or wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The caption's attributes in report order, each with whether the image has it.
    pub attributes: Vec<(Attribute, bool)>,
    /// A one-shape caption (else two shapes).
    pub one: bool,
}

impl Verdict {
    /// Right in every attribute (GenEval's per-image score).
    pub fn all(&self) -> bool {
        self.attributes.iter().all(|a| a.1)
    }

    /// Whether `a` was asked for and is right.
    pub fn get(&self, a: Attribute) -> Option<bool> {
        self.attributes.iter().find(|x| x.0 == a).map(|x| x.1)
    }

    /// "colour right, shape wrong, ..." for listings.
    pub fn describe(&self) -> String {
        let yes = |b: bool| if b { "right" } else { "wrong" };
        self.attributes.iter().map(|(a, b)| format!("{} {}", a.name(), yes(*b))).collect::<Vec<_>>().join(", ")
    }
}

/// Judges `image` (`n`^2 pixels in -1..1, channels last) against `caption`; `None` when the
/// caption is not one of the data set's.
pub fn judge(image: &[f32], n: usize, caption: &str) -> Option<Verdict> {
    let prompt = Prompt::parse(caption)?;
    Some(judge_prompt(&objects(image, n), prompt))
}

/// Judges the objects found in an image against a prompt.
pub fn judge_prompt(found: &[Object], prompt: Prompt) -> Verdict {
    // `found` is largest first, so the first object of a colour is its largest.
    let of_colour = |c: usize| found.iter().filter(move |o| o.colour == c);
    match prompt {
        Prompt::One { large, colour, shape, place } => {
            let target = of_colour(colour).next();
            let has = |f: &dyn Fn(&Object) -> bool| target.is_some_and(f);
            Verdict {
                attributes: vec![
                    (Attribute::Colour, found.first().is_some_and(|o| o.colour == colour)),
                    (Attribute::Shape, has(&|o| o.shape == shape)),
                    (Attribute::Size, has(&|o| o.large() == large)),
                    (Attribute::Place, has(&|o| o.place() == place)),
                    (Attribute::Count, found.len() == 1),
                ],
                one: true,
            }
        }
        Prompt::Two { first, relation, second } => {
            // The largest object of each named colour stands for it; with one colour named
            // twice, its two largest, assigned so that more shapes agree.
            let (a, b) = if first.0 == second.0 {
                let mut two = of_colour(first.0);
                let (x, y) = (two.next(), two.next());
                let agree = |p: Option<&Object>, q: Option<&Object>| {
                    usize::from(p.is_some_and(|o| o.shape == first.1))
                        + usize::from(q.is_some_and(|o| o.shape == second.1))
                };
                if agree(y, x) > agree(x, y) {
                    (y, x)
                } else {
                    (x, y)
                }
            } else {
                (of_colour(first.0).next(), of_colour(second.0).next())
            };
            let stands = match (a, b) {
                (Some(a), Some(b)) => {
                    let (dx, dy) = (b.cx - a.cx, b.cy - a.cy);
                    match relation {
                        Relation::LeftOf => dx > dy.abs(),
                        Relation::Above => dy > dx.abs(),
                    }
                }
                _ => false,
            };
            Verdict {
                attributes: vec![
                    (Attribute::Colour, a.is_some() && b.is_some()),
                    (Attribute::Shape, a.is_some_and(|o| o.shape == first.1) && b.is_some_and(|o| o.shape == second.1)),
                    (Attribute::Relation, stands),
                    (Attribute::Count, found.len() == 2),
                ],
                one: false,
            }
        }
    }
}

/// Verdicts added up: per attribute, per kind of caption and overall.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Alignment {
    /// (right, judged) per attribute, in [`Attribute::ALL`] order.
    pub attributes: [(usize, usize); 6],
    /// (right in everything, judged) of one-shape captions.
    pub one: (usize, usize),
    /// (right in everything, judged) of two-shape captions.
    pub two: (usize, usize),
    /// Prompts that are not captions of the data set (not judged).
    pub unjudged: usize,
}

impl Alignment {
    /// Adds one image's verdict (`None`: its prompt was not judged).
    pub fn add(&mut self, v: Option<&Verdict>) {
        let Some(v) = v else {
            self.unjudged += 1;
            return;
        };
        for (a, right) in &v.attributes {
            let i = Attribute::ALL.iter().position(|x| x == a).expect("every attribute is listed");
            self.attributes[i].0 += usize::from(*right);
            self.attributes[i].1 += 1;
        }
        let kind = if v.one { &mut self.one } else { &mut self.two };
        kind.0 += usize::from(v.all());
        kind.1 += 1;
    }

    /// Images judged.
    pub fn judged(&self) -> usize {
        self.one.1 + self.two.1
    }

    /// Fraction right in every attribute (GenEval's overall score), `None` if none judged.
    pub fn overall(&self) -> Option<f64> {
        let n = self.judged();
        (n > 0).then(|| (self.one.0 + self.two.0) as f64 / n as f64)
    }

    /// Fraction right of attribute `a`, `None` if never asked.
    pub fn fraction(&self, a: Attribute) -> Option<f64> {
        let i = Attribute::ALL.iter().position(|x| *x == a)?;
        let (right, n) = self.attributes[i];
        (n > 0).then(|| right as f64 / n as f64)
    }

    /// As JSON: overall, per kind and per attribute, each with its counts.
    pub fn to_json(&self) -> Value {
        let part = |(right, n): (usize, usize)| json!({ "right": right, "judged": n, "fraction": (n > 0).then(|| right as f64 / n as f64) });
        let attributes: serde_json::Map<String, Value> = Attribute::ALL
            .iter()
            .zip(self.attributes)
            .filter(|(_, c)| c.1 > 0)
            .map(|(a, c)| (a.name().into(), part(c)))
            .collect();
        json!({
            "overall": part((self.one.0 + self.two.0, self.judged())),
            "one_shape": part(self.one),
            "two_shapes": part(self.two),
            "attributes": attributes,
            "unjudged": self.unjudged,
        })
    }

    /// One line: "overall 41% of 96 (one shape 50%, two 20%); colour 90%, shape 60%, ...".
    pub fn summary(&self) -> String {
        let pct = |(right, n): (usize, usize)| {
            if n == 0 {
                "-".to_string()
            } else {
                format!("{:.0}%", 100.0 * right as f64 / n as f64)
            }
        };
        let per: Vec<String> = Attribute::ALL
            .iter()
            .zip(self.attributes)
            .filter(|(_, c)| c.1 > 0)
            .map(|(a, c)| format!("{} {}", a.name(), pct(c)))
            .collect();
        format!(
            "alignment {} of {} images right in every attribute (one shape {}, two shapes {}); {}",
            pct((self.one.0 + self.two.0, self.judged())),
            self.judged(),
            pct(self.one),
            pct(self.two),
            per.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::{Shapes, Split};

    /// Every attribute's fraction over the data set's own images with their captions.
    fn score(d: &Shapes, count: u64, caption: impl Fn(&str) -> Option<String>) -> Alignment {
        let mut a = Alignment::default();
        for i in 0..count {
            let s = d.sample(i);
            if let Some(c) = caption(&s.caption) {
                a.add(judge(&s.image, d.resolution, &c).as_ref());
            }
        }
        a
    }

    #[test]
    fn captions_parse_into_what_they_ask_for() {
        assert_eq!(
            Prompt::parse("a large red circle in the top left"),
            Some(Prompt::One { large: true, colour: 0, shape: 0, place: 0 })
        );
        assert_eq!(
            Prompt::parse("a blue square to the left of a green triangle"),
            Some(Prompt::Two { first: (2, 1), relation: Relation::LeftOf, second: (1, 2) })
        );
        assert_eq!(
            Prompt::parse("a white diamond above a white square"),
            Some(Prompt::Two { first: (5, 3), relation: Relation::Above, second: (5, 1) })
        );
        for other in [
            "",
            "a",
            "a large red circle",
            "a huge red circle at the top",
            "a red circle near a blue square",
            "a red circle above blue square",
            "an orange circle above a red square",
        ] {
            assert_eq!(Prompt::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn the_data_sets_own_images_score_near_everything() {
        for (res, split) in [(16, Split::Train), (32, Split::Train), (16, Split::HeldOut)] {
            let d = Shapes { split, ..Shapes::new(res, 5) };
            let a = score(&d, 300, |c| Some(c.to_string()));
            assert_eq!(a.judged(), 300);
            muse_compiler::note!("{res}px {split:?}: {}", a.summary());
            for attr in Attribute::ALL {
                if let Some(f) = a.fraction(attr) {
                    assert!(f >= 0.97, "{res}px {split:?}: {} right in {f:.3}; {}", attr.name(), a.summary());
                }
            }
            assert!(a.overall().expect("judged") >= 0.95, "{res}px {split:?}: {}", a.summary());
        }
    }

    #[test]
    fn captions_that_say_something_else_score_wrong() {
        // Each caption altered in one attribute: that attribute must come out wrong.
        let swap = |w: &str, list: &[&str]| {
            let i = list.iter().position(|x| *x == w).expect("listed");
            list[(i + 1) % list.len()].to_string()
        };
        let colours: Vec<&str> = COLOURS.iter().map(|c| c.0).collect();
        let d = Shapes::new(32, 9);
        let alter = |c: &str, attr: Attribute| -> Option<String> {
            let mut w: Vec<String> = c.split(' ').map(String::from).collect();
            let one = matches!(w[1].as_str(), "large" | "small");
            match (attr, one) {
                (Attribute::Colour, true) => w[2] = swap(&w[2], &colours),
                (Attribute::Shape, true) => w[3] = swap(&w[3], &SHAPES),
                (Attribute::Size, true) => w[1] = swap(&w[1], &["large", "small"]),
                (Attribute::Place, true) => {
                    return Some(format!("{} {}", w[..4].join(" "), swap(&w[4..].join(" "), &PLACES)))
                }
                (Attribute::Colour, false) => w[1] = swap(&w[1], &colours),
                (Attribute::Shape, false) => w[2] = swap(&w[2], &SHAPES),
                // Reversed: the second named first.
                (Attribute::Relation, false) => {
                    let n = w.len();
                    let (a, b) = ((w[1].clone(), w[2].clone()), (w[n - 2].clone(), w[n - 1].clone()));
                    (w[1], w[2], w[n - 2], w[n - 1]) = (b.0, b.1, a.0, a.1);
                }
                _ => return None,
            }
            Some(w.join(" "))
        };
        for attr in [Attribute::Colour, Attribute::Shape, Attribute::Size, Attribute::Place, Attribute::Relation] {
            let a = score(&d, 300, |c| alter(c, attr));
            let f = a.fraction(attr).expect("asked");
            assert!(f <= 0.03, "{} altered, still right in {f:.3}: {}", attr.name(), a.summary());
        }
    }

    #[test]
    fn a_blank_or_noisy_image_finds_nothing() {
        let n = 16;
        let blank: Vec<f32> = (0..n * n * 3).map(|i| BACKGROUND[i % 3] * 2.0 - 1.0).collect();
        assert!(objects(&blank, n).is_empty());
        let noise: Vec<f32> = (0..n * n * 3).map(|i| ((i * 7919 % 256) as f32 / 128.0) - 1.0).collect();
        let v = judge(&noise, n, "a large red circle in the center").expect("a caption");
        assert!(!v.all(), "{v:?}");
        assert_eq!(judge(&blank, n, "a drawing of a cat"), None);
        assert!(objects(&blank[..10], n).is_empty());
    }
}
