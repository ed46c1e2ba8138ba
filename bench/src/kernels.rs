//! CPU backend benchmarks, the muse side of bench/run.sh: (a) a fused elementwise chain
//! over 16M floats against measured copy bandwidth, (b) layernorm and softmax, (c) the
//! Mamba block forward+backward, (d) one training step (with AdamW) of muse_small and
//! mamba_xattn_xz.
//! Prints one JSON object per line: {"case": ..., "ms": median, "note": ...}.
//!
//! `cargo run --release -p muse-bench --bin kernels [REPEATS]`

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_compiler::ir::{Graph, NodeIndex};
use muse_compiler::{compile_source, Model, Options};
use muse_runtime::device::{Device, DeviceKind, DeviceOptions};
use muse_runtime::inputs::random_inputs;
use muse_runtime::optim::AdamW;
use muse_runtime::select;
use muse_runtime::train::Trainer;
use muse_runtime::{init_params, Precision};
use std::time::Instant;

fn model_src(src: &str) -> Model {
    let c = compile_source("bench.muse", src, &Options::default());
    c.result.unwrap_or_else(|d| panic!("{}", d.render(&c.sources))).remove(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The device the benchmarks run on (`MUSE_DEVICE`, default `auto`).
fn device() -> Box<dyn Device + Send + Sync> {
    let kind: DeviceKind = std::env::var("MUSE_DEVICE").unwrap_or_else(|_| "auto".into()).parse().expect("a device");
    select(kind, &DeviceOptions::default()).expect("the device is available").device
}

/// Median milliseconds of an execution over bound buffers (compilation and copies excluded).
fn time_program(g: &Graph, requested: &[NodeIndex], batch: usize, repeats: usize) -> (f64, usize) {
    let mut p = device().compile(g, requested).expect("compiles");
    let inputs = random_inputs(g, batch, 1);
    let params = init_params(g, 1, Precision::F32).expect("initialises");
    p.bind(&inputs, &params).expect("binds");
    p.execute(0).expect("runs"); // warm-up
    let ms = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            p.execute(0).expect("runs");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    (median(ms), p.launches())
}

fn emit(case: &str, ms: f64, note: &str) {
    println!("{{\"case\": \"{case}\", \"impl\": \"muse\", \"ms\": {ms:.4}, \"note\": \"{note}\"}}");
}

fn fwd_bwd(m: &Model) -> (Graph, Vec<NodeIndex>) {
    let d = differentiate(&m.graph, Wrt::default());
    let mut req = vec![d.loss];
    req.extend(d.params.iter().map(|x| x.1));
    (d.graph, req)
}

use muse_bench::model_file;

fn main() {
    let repeats: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    // `MUSE_BENCH_ONLY=train`: only (d), for bench/run.sh's rounds that alternate muse's
    // training step with torch.compile's in the same minutes.
    if std::env::var("MUSE_BENCH_ONLY").as_deref() != Ok("train") {
        kernel_cases(repeats);
    }
    train_cases(repeats);
}

/// (a), (b), GEMM alone and (c).
fn kernel_cases(repeats: usize) {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);

    // (a) copy bandwidth with every core, then the fused chain.
    let n = 16 * 1024 * 1024;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let copy_ms = median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                std::thread::scope(|s| {
                    let chunk = n.div_ceil(threads);
                    for (d, x) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                        s.spawn(move || d.copy_from_slice(x));
                    }
                });
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let gbs = |ms: f64| 2.0 * n as f64 * 4.0 / (ms * 1e-3) / 1e9;
    emit("copy_16M", copy_ms, &format!("{:.1} GB/s read+write, {threads} threads", gbs(copy_ms)));
    let chain = model_src("model c {\n  input x: f32[16777216]\n  output y = (x * 1.5 + 0.5) * x - 0.25\n}\n");
    let (ms, k) = time_program(&chain.graph, &[chain.graph.outputs[0].1], 1, repeats);
    emit("elementwise_16M", ms, &format!("{:.1} GB/s, {:.0}% of copy, {k} kernel", gbs(ms), 100.0 * copy_ms / ms));

    // (b) layernorm and softmax over [8192, 1024].
    for (case, body) in [("layernorm_8192x1024", "layernorm(x)"), ("softmax_8192x1024", "softmax(x)")] {
        let m = model_src(&format!(
            "import \"std/nn.muse\"\nmodel n {{\n  input x: f32[8192, 1024]\n  output y = {body}\n}}\n"
        ));
        let (ms, k) = time_program(&m.graph, &[m.graph.outputs[0].1], 1, repeats);
        emit(case, ms, &format!("{k} kernels"));
    }

    // GEMM alone (the `gemm` crate through muse's template), two shapes of the models.
    for (case, m, k, n) in [("gemm_512x512x512", 512, 512, 512), ("gemm_512x128x512", 512, 128, 512)] {
        let g = model_src(&format!(
            "model g {{\n  input a: f32[{m}, {k}]\n  input b: f32[{k}, {n}]\n  output y = a @ b\n}}\n"
        ));
        let (ms, _) = time_program(&g.graph, &[g.graph.outputs[0].1], 1, repeats);
        let gflops = 2.0 * (m * k * n) as f64 / (ms * 1e-3) / 1e9;
        emit(case, ms, &format!("{gflops:.1} GFLOP/s"));
    }

    // (c) the Mamba block forward+backward: batch 8, 64 tokens, width 128, state 16.
    let mb = model_src(
        "import \"std/mamba.muse\"\nmodel mb {\n  input x: f32[B, 64, 128]\n  input r: f32[B, 64, 128]\n  y = mamba(x) as mixer\n  loss l = sum(y * r)\n}\n",
    );
    let (g, req) = fwd_bwd(&mb);
    let (ms, k) = time_program(&g, &req, 8, repeats);
    emit("mamba_block_fwd_bwd", ms, &format!("{k} launches"));
}

/// (d) one training step (forward, backward, global-norm clipping, AdamW) of two models at
/// their default configs, batch 16; the same step as bench/peers_train.py. With
/// `MUSE_BENCH_RESEARCH=1`, at the research log's scale instead (12 layers, width 1024, 256
/// image tokens, batch 32: `MUSE_PEERS_SCALE=research` there).
fn train_cases(repeats: usize) {
    let research = std::env::var("MUSE_BENCH_RESEARCH").as_deref() == Ok("1");
    let (sets, b): (&[(&str, &str)], usize) = if research {
        (&[("dim", "1024"), ("depth", "12"), ("grid", "16"), ("heads", "16"), ("codebook", "8192")], 32)
    } else {
        (&[], 16)
    };
    for name in ["muse_small", "mamba_xattn_xz"] {
        let m = model_file(name, sets);
        let batch = random_inputs(&m.graph, b, 1);
        let params = init_params(&m.graph, 1, Precision::F32).expect("initialises");
        let mut t =
            Trainer::new(&m.graph, name, &params, &batch, AdamW::default(), device().as_ref()).expect("compiles");
        let mut step = || t.step(&[&batch], 1e-4, 0).expect("runs");
        let first = step().loss;
        step();
        let ms = median(
            (0..repeats.min(10))
                .map(|_| {
                    let t = Instant::now();
                    step();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        );
        let count: usize = params.values().map(|p| p.len()).sum();
        emit(
            &format!("train {name} B={b}"),
            ms,
            &format!("{} launches + AdamW, {count} params, first loss {first:.3}", t.launches()),
        );
    }
}
