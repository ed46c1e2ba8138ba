//! Training throughput of every token-model variant in models/ on a device (`MUSE_DEVICE`,
//! default auto): one training step
//! (forward, backward, clipping, AdamW) over compiled kernels at the default config, batch
//! 16, random inputs; median of REPEATS steps after two warm-up steps. Prints one JSON object
//! per line: {"case", "impl", "ms", "note"} with images/s, tokens/s and memory in the note.
//!
//! `cargo run --release -p muse-bench --bin train [REPEATS] [MODEL...]`

use muse_compiler::{compile_path, Options};
use muse_runtime::device::{DeviceKind, DeviceOptions};
use muse_runtime::inputs::random_inputs;
use muse_runtime::optim::AdamW;
use muse_runtime::select;
use muse_runtime::train::Trainer;
use muse_runtime::{init_params, Precision};
use std::time::Instant;

/// Peak resident memory of this process so far (VmHWM), in bytes.
fn peak_rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()))
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repeats: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let only: Vec<&str> = args.iter().skip(2).map(String::as_str).collect();
    let batch = 16;
    // MUSE_DEVICE chooses the device (default auto).
    let kind: DeviceKind = std::env::var("MUSE_DEVICE").unwrap_or_else(|_| "auto".into()).parse().expect("a device");
    let device = select(kind, &DeviceOptions::default()).expect("the device is available").device;
    // Every model of models/ that trains on tokens (the image tokenizer's inputs are images).
    let dir = muse_bench::models_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("models/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "muse"))
        .collect();
    files.sort();
    for path in files {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if name == "muse_base" || !(only.is_empty() || only.contains(&name.as_str())) {
            continue; // muse_base at its default size is the paper's, too large for this bench
        }
        let c = compile_path(&path, &Options::default());
        let m = c.result.unwrap_or_else(|d| panic!("{}", d.render(&c.sources))).remove(0);
        if !m.graph.inputs.iter().any(|(n, _)| n == "tokens") {
            continue;
        }
        let name = name.as_str();
        let inputs = random_inputs(&m.graph, batch, 1);
        let params = init_params(&m.graph, 1, Precision::F32).expect("initialises");
        let count: usize = params.values().map(|p| p.len()).sum();
        let mut t =
            Trainer::new(&m.graph, name, &params, &inputs, AdamW::default(), device.as_ref()).expect("compiles");
        let mut step = || t.step(&[&inputs], 1e-4, 0).expect("runs");
        step();
        step();
        let mut ms: Vec<f64> = (0..repeats)
            .map(|_| {
                let s = Instant::now();
                step();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        let med = ms[ms.len() / 2];
        let tokens = inputs.get("tokens").map_or(0, |x| x.len());
        // Parameters, gradients' planned share and AdamW's two moments: 4 bytes each.
        let state_mb = (count * 3 * 4) as f64 / 1e6;
        println!(
            "{{\"case\": \"train {name} B={batch}\", \"impl\": \"muse\", \"ms\": {med:.3}, \"note\": \"{:.1} images/s, {:.0} tokens/s, {} launches, planned intermediates {:.1} MB + params/AdamW {:.1} MB, peak RSS so far {:.0} MB\"}}",
            batch as f64 / (med / 1e3),
            tokens as f64 / (med / 1e3),
            t.launches(),
            t.planned_bytes() as f64 / 1e6,
            state_mb,
            peak_rss() as f64 / 1e6
        );
    }
}
