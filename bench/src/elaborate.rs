//! Elaboration time: parse + elaborate every model at its default config and the
//! paper-scale 24-layer muse_base, several runs each; prints min and median.
//!
//! `cargo run --release -p muse-bench --bin elaborate [RUNS]`

use muse_compiler::{compile_path, Options};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn time(path: &Path, opts: &Options, runs: usize) -> (f64, f64, usize) {
    let mut ms = Vec::with_capacity(runs);
    let mut nodes = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let c = compile_path(path, opts);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        match c.result {
            Ok(models) => nodes = models.iter().map(|m| m.graph.node_count()).sum(),
            Err(d) => panic!("{}", d.render(&c.sources)),
        }
    }
    ms.sort_by(f64::total_cmp);
    (ms[0], ms[ms.len() / 2], nodes)
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
    let paper = Options {
        overrides: [
            ("depth", "24"),
            ("dim", "2048"),
            ("heads", "16"),
            ("codebook", "8192"),
            ("grid", "16"),
            ("text_len", "64"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Options::default()
    };
    println!("{:<44} {:>9} {:>10} {:>8}", "model", "min ms", "median ms", "nodes");
    let (min, med, nodes) = time(&models.join("muse_base.muse"), &paper, runs);
    println!("{:<44} {min:>9.2} {med:>10.2} {nodes:>8}", "muse_base, paper scale (24 layers, 2048 wide)");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&models)
        .expect("models/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "muse"))
        .collect();
    files.sort();
    for f in files {
        let (min, med, nodes) = time(&f, &Options::default(), runs);
        let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        println!("{name:<44} {min:>9.2} {med:>10.2} {nodes:>8}");
    }
}
