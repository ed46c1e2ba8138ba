//! Writes a grid of the built-in data set's samples and their captions:
//! `cargo run --release -p muse-train --example shapes_grid -- OUT.png [RES] [N]`
use muse_train::data::shapes::Shapes;
use muse_train::picture::{grid, save_png, to_rgb8};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).map(String::as_str).unwrap_or("shapes.png");
    let res: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let n: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);
    let d = Shapes::new(res, 0);
    let samples: Vec<_> = (0..n).map(|i| d.sample(i)).collect();
    let imgs: Vec<_> = samples.iter().map(|s| to_rgb8(&s.image, res)).collect();
    for (i, s) in samples.iter().enumerate() {
        println!("{i}: {}", s.caption);
    }
    save_png(&grid(&imgs, 4, 2), std::path::Path::new(out)).expect("writes");
}
