//! The Rust half of scripts/gpu-check.sh: the checks of the CUDA backend that need a GPU.
//! Each also runs on `cuda-sim`, which is what the script's dry run on a machine without a
//! GPU does. Run from the repository's root (it reads `models/`).
//!
//! - `gpu_check models DEVICE [tiny|bench] [f32|bf16]`: every model's forward and backward
//!   (outputs, losses, every parameter's gradient) on DEVICE against the CPU backend,
//!   relative error below 1e-3 (f32) or 2e-2 (bf16 storage); at the tests' tiny configs or
//!   at each model's own (bench) config.
//! - `gpu_check train DEVICE STEPS`: training steps (forward, backward, clipping, AdamW on
//!   the device) of a small mamba_xattn_xz on DEVICE against the CPU: every loss and the
//!   final weights (what compute-sanitizer runs).
//! - `gpu_check kernels DEVICE`: each kernel of the Mamba block's forward and backward, a
//!   layernorm and a softmax, timed on DEVICE against its memory floor (bytes it must move
//!   at the H200's measured 4.3 TB/s).
//!
//! - `gpu_check reduce DEVICE`: data parallelism's device half with one rank (NCCL with one
//!   rank on a GPU; the host sum on the simulation): a training pass whose gradients are
//!   summed in buckets while its backward pass runs, f32 and bf16 on the wire and one bucket
//!   for all, must leave exactly the gradients of a plain pass (bf16: each rounded to bf16).
//!
//! Every result is also one JSON line `{"check", "case", "value", "limit", "ok", "note"}` on
//! stdout, which the script turns into its table. Exits 1 when a check fails.

use muse_bench::model_file;
use muse_compiler::autodiff::{differentiate, Wrt};
use muse_compiler::ir::NodeIndex;
use muse_compiler::{compile_source, zoo, Options};
use muse_runtime::device::{Device, DeviceKind, DeviceOptions, Tensors};
use muse_runtime::inputs::random_inputs;
use muse_runtime::optim::AdamW;
use muse_runtime::train::Trainer;
use muse_runtime::validate::{relative_error, relative_l2};
use muse_runtime::{init_params, select, Precision};

/// Bytes per second the H200 copies (measured: docs/cuda.md).
const H200_BYTES_PER_S: f64 = 4.3e12;
/// Relative error allowed against the CPU backend in f32.
const F32_LIMIT: f64 = 1e-3;
/// Relative error allowed for forward values (outputs, losses) with bf16 storage.
const BF16_LIMIT: f64 = 2e-2;
/// Relative Euclidean error allowed for gradients with bf16 storage: a sanity bound (the
/// gradients point the same way), not a precision. Gradients that are small sums of large
/// terms lose most of their digits when the terms are rounded to bf16: measured through
/// the simulation at the tiny configs, up to 0.6 (a Mamba block's `x_proj` through the
/// reverse scan), while every forward value stays within 1.6e-2 (docs/cuda.md).
const BF16_GRAD_LIMIT: f64 = 1.0;

fn device(kind: &str) -> Box<dyn Device + Send + Sync> {
    device_as(kind, false)
}

/// The device `kind`, float buffers in bf16 when `bf16`.
fn device_as(kind: &str, bf16: bool) -> Box<dyn Device + Send + Sync> {
    let kind: DeviceKind = kind.parse().unwrap_or_else(|e| panic!("{e}"));
    // Quick compiles of generated C and of the simulation (the same numbers, less waiting).
    match select(kind, &DeviceOptions { quick: true, bf16, ..Default::default() }) {
        Ok(s) => s.device,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2)
        }
    }
}

/// One result: printed for a person and as a JSON line for the script.
fn report(check: &str, case: &str, value: f64, limit: f64, note: &str) -> bool {
    line(check, case, value, limit, note, false)
}

/// A result that is a goal, not a check: recorded, never failing the run.
fn goal(check: &str, case: &str, value: f64, limit: f64, note: &str) {
    line(check, case, value, limit, note, true);
}

fn line(check: &str, case: &str, value: f64, limit: f64, note: &str, goal: bool) -> bool {
    let ok = value <= limit;
    let verdict = match (goal, ok) {
        (false, true) => "ok",
        (false, false) => "FAIL",
        (true, true) => "goal met",
        (true, false) => "goal missed",
    };
    println!("{check:<8} {case:<44} {value:>11.3e} (limit {limit:.0e}) {verdict} {note}");
    let note = note.replace('\\', "\\\\").replace('"', "\\\"");
    // JSON as Python reads it (`Infinity` for a failure that has no error to measure).
    let value = if value.is_finite() { format!("{value:e}") } else { "Infinity".into() };
    println!(
        "{{\"check\": \"{check}\", \"case\": \"{case}\", \"value\": {value}, \"limit\": {limit:e}, \"ok\": {ok}, \"goal\": {goal}, \"note\": \"{note}\"}}"
    );
    ok
}

/// Every model's forward and backward on `dev` (float buffers in `dtype`) against the CPU
/// backend in f32.
fn models(dev: &str, scale: &str, dtype: &str) -> bool {
    let bf16 = dtype == "bf16";
    let limit = if bf16 { BF16_LIMIT } else { F32_LIMIT };
    let (ours, cpu) = (device_as(dev, bf16), device("cpu"));
    let mut ok = true;
    let plain = zoo::MODELS.iter().map(|&n| (n, None));
    let options = zoo::OPTIONS.iter().map(|&(n, k, v)| (n, Some((k, v))));
    for (name, option) in plain.chain(options) {
        // muse_base at its own config is the paper's 632M model: its tiny config only.
        if scale == "bench" && name == "muse_base" {
            continue;
        }
        let mut sets = if scale == "tiny" { zoo::tiny(name, "3") } else { Vec::new() };
        sets.extend(option);
        let m = model_file(name, &sets);
        let d = differentiate(&m.graph, Wrt::default());
        let mut requested: Vec<(String, NodeIndex)> = m.graph.outputs.iter().chain(&m.graph.losses).cloned().collect();
        requested.extend(d.params.iter().map(|(n, g)| (format!("grad {n}"), *g)));
        let nodes: Vec<NodeIndex> = requested.iter().map(|r| r.1).collect();
        let batch = if scale == "tiny" { 2 } else { 4 };
        let inputs = random_inputs(&m.graph, batch, 7);
        let params = init_params(&m.graph, 7, Precision::F32).expect("initialises");
        let mut theirs = cpu.compile(&d.graph, &nodes).expect("the CPU compiles");
        let reference = theirs.run(&inputs, &params, 0).expect("the CPU runs");
        let mut mine = match ours.compile(&d.graph, &nodes) {
            Ok(p) => p,
            Err(e) => {
                ok &= report("models", &format!("{name} {scale} {dtype}"), f64::INFINITY, limit, &format!("{e}"));
                continue;
            }
        };
        let got = match mine.run(&inputs, &params, 0) {
            Ok(v) => v,
            Err(e) => {
                ok &= report("models", &format!("{name} {scale} {dtype}"), f64::INFINITY, limit, &format!("{e}"));
                continue;
            }
        };
        // The largest error of the forward values and of the gradients, and where. In bf16
        // a gradient is measured by its relative Euclidean norm (see the bf16 limits).
        let mut worst = [(0.0f64, String::new()), (0.0f64, String::new())];
        for (what, n) in &requested {
            let grad = what.starts_with("grad ");
            let e =
                if bf16 && grad { relative_l2(&got[n], &reference[n]) } else { relative_error(&got[n], &reference[n]) };
            let w = &mut worst[usize::from(grad)];
            if e > w.0 || e.is_nan() {
                *w = (if e.is_nan() { f64::INFINITY } else { e }, what.clone());
            }
        }
        let case = format!("{name}{} {scale} {dtype}", option.map(|(k, v)| format!(" {k}={v}")).unwrap_or_default());
        let note = |at: &str| format!("{} launches, {} values, worst at {at}", mine.launches(), requested.len());
        if bf16 {
            ok &= report("models", &format!("{case} forward"), worst[0].0, BF16_LIMIT, &note(&worst[0].1));
            ok &= report("models", &format!("{case} gradients (L2)"), worst[1].0, BF16_GRAD_LIMIT, &note(&worst[1].1));
        } else {
            let w = if worst[0].0 >= worst[1].0 { &worst[0] } else { &worst[1] };
            ok &= report("models", &case, w.0, F32_LIMIT, &note(&w.1));
        }
    }
    ok
}

/// Training steps of a small mamba_xattn_xz on `dev` and on the CPU backend, from the same
/// parameters over the same batches: each step's loss and the final weights.
fn train(dev: &str, steps: usize) -> bool {
    let sets = [
        ("dim", "16"),
        ("depth", "1"),
        ("text_depth", "1"),
        ("text_vocab", "64"),
        ("text_len", "8"),
        ("d_state", "4"),
        ("heads", "2"),
        ("grid", "4"),
        ("codebook", "16"),
    ];
    let m = model_file("mamba_xattn_xz", &sets);
    let batches: Vec<Tensors> = (0..steps.max(1)).map(|s| random_inputs(&m.graph, 4, 100 + s as u64)).collect();
    let params = init_params(&m.graph, 3, Precision::F32).expect("initialises");
    let run = |d: &dyn Device| -> Result<(Vec<f64>, Tensors), String> {
        let mut t = Trainer::new(&m.graph, "mamba_xattn_xz", &params, &batches[0], AdamW::default(), d)
            .map_err(|e| e.to_string())?;
        let mut losses = Vec::new();
        for (s, b) in batches.iter().enumerate() {
            losses.push(t.step(&[b], 3e-3, s as u64).map_err(|e| e.to_string())?.loss);
        }
        Ok((losses, t.params().map_err(|e| e.to_string())?))
    };
    let (want, want_params) = run(device("cpu").as_ref()).expect("the CPU trains");
    let (got, got_params) = match run(device(dev).as_ref()) {
        Ok(r) => r,
        Err(e) => return report("train", &format!("mamba_xattn_xz {steps} steps"), f64::INFINITY, F32_LIMIT, &e),
    };
    let loss_err = got.iter().zip(&want).map(|(a, b)| ((a - b) / b.abs().max(1e-12)).abs()).fold(0.0, f64::max);
    let weight_err = want_params
        .iter()
        .map(|(n, w)| got_params.get(n).map_or(f64::INFINITY, |g| relative_error(g, w)))
        .fold(0.0, f64::max);
    let note = format!("losses {:.5} -> {:.5} on {dev}", got[0], got[got.len() - 1]);
    let a = report("train", &format!("mamba_xattn_xz {steps} steps: losses"), loss_err, F32_LIMIT, &note);
    let b =
        report("train", &format!("mamba_xattn_xz {steps} steps: weights"), weight_err, F32_LIMIT, "every parameter");
    a && b
}

/// One rank's reductions over a pass of a small mamba_xattn_xz on `dev`: the gradients a
/// pass leaves, then the same pass summed over the one rank in buckets during the backward
/// pass, which must change nothing (f32 on the wire) or round each gradient to bf16.
fn reduce(dev: &str) -> bool {
    use muse_runtime::dist::{Reduction, Solo, Wire};
    use muse_runtime::tensor::{bf16_bits, bf16_value};
    if dev == "cuda" {
        match muse_runtime::cuda::nccl::Nccl::get() {
            Ok(n) => println!("NCCL {} from {}", n.version_string(), n.file.display()),
            Err(e) => return report("reduce", "NCCL loads", f64::INFINITY, 0.0, &e),
        }
    }
    let m = model_file("mamba_xattn_xz", &[("dim", "32"), ("depth", "2"), ("d_state", "4"), ("grid", "4")]);
    let d = differentiate(&m.graph, Wrt::default());
    let mut req = vec![d.loss];
    req.extend(d.params.iter().map(|x| x.1));
    let params = init_params(&m.graph, 3, Precision::F32).expect("initialises");
    let batch = random_inputs(&m.graph, 4, 7);
    let mut ok = true;
    for (wire, bucket) in [(Wire::F32, 4096), (Wire::Bf16, 4096), (Wire::F32, 1 << 30)] {
        let case = format!("one rank, {wire:?} wire, {bucket} B buckets");
        let run = || -> Result<(f64, bool), String> {
            let dev = device(dev);
            let mut p = dev.compile(&d.graph, &req).map_err(|e| e.to_string())?;
            p.attach_optimizer(&d.params).map_err(|e| e.to_string())?;
            p.bind(&batch, &params).map_err(|e| e.to_string())?;
            let grads = |p: &dyn muse_runtime::device::Program| -> Result<Vec<Vec<f64>>, String> {
                d.params.iter().map(|(_, g)| p.read(*g).map(|t| t.to_f64()).map_err(|e| e.to_string())).collect()
            };
            p.execute(1).map_err(|e| e.to_string())?;
            let plain = grads(&*p)?;
            let reduction = Reduction { ranks: &Solo, wire, bucket_bytes: bucket };
            let overlapped = p.execute_reducing(1, &reduction).map_err(|e| e.to_string())?;
            let summed = grads(&*p)?;
            let want = |x: f64| match wire {
                Wire::F32 => x,
                Wire::Bf16 => bf16_value(bf16_bits(x as f32)) as f64,
            };
            let worst = plain
                .iter()
                .flatten()
                .zip(summed.iter().flatten())
                .map(|(&a, &b)| (want(a) - b).abs() / a.abs().max(1e-30))
                .fold(0.0, f64::max);
            Ok((worst, overlapped))
        };
        ok &= match run() {
            Ok((worst, overlapped)) => {
                let how = if overlapped { "summed during the backward pass" } else { "summed after the pass" };
                report("reduce", &case, worst, 0.0, how)
            }
            Err(e) => report("reduce", &case, f64::INFINITY, 0.0, &e),
        };
    }
    ok
}

/// Each kernel of a few programs timed on `dev` against its memory floor. On a GPU: the
/// benchmarks' shapes; on the simulation, small ones (its times say nothing of a GPU).
fn kernels(dev: &str) -> bool {
    let gpu = dev == "cuda";
    let (rows, batch) = if gpu { (8192, 8) } else { (64, 1) };
    let cases = [
        (
            "mamba block fwd+bwd",
            "import \"std/mamba.muse\"\nmodel mb {\n  input x: f32[B, 64, 128]\n  input r: f32[B, 64, 128]\n  y = mamba(x) as mixer\n  loss l = sum(y * r)\n}\n".to_string(),
            true,
        ),
        (
            "layernorm",
            format!("import \"std/nn.muse\"\nmodel n {{\n  input x: f32[{rows}, 1024]\n  output y = layernorm(x)\n}}\n"),
            false,
        ),
        (
            "softmax",
            format!("import \"std/nn.muse\"\nmodel n {{\n  input x: f32[{rows}, 1024]\n  output y = softmax(x)\n}}\n"),
            false,
        ),
    ];
    let d = device(dev);
    println!("{:<22} {:<6} {:<10} {:>10} {:>10} {:>8}", "program", "step", "kind", "ms", "floor ms", "x floor");
    for (name, src, backward) in cases {
        let c = compile_source("gpu_check.muse", &src, &Options::default());
        let m = c.result.unwrap_or_else(|e| panic!("{}", e.render(&c.sources))).remove(0);
        let (g, req) = if backward {
            let df = differentiate(&m.graph, Wrt::default());
            let mut req = vec![df.loss];
            req.extend(df.params.iter().map(|x| x.1));
            (df.graph, req)
        } else {
            (m.graph.clone(), m.graph.outputs.iter().map(|x| x.1).collect())
        };
        let mut p = d.compile(&g, &req).expect("compiles");
        let inputs = random_inputs(&g, batch, 1);
        let params = init_params(&g, 1, Precision::F32).expect("initialises");
        p.bind(&inputs, &params).expect("binds");
        p.execute(0).expect("runs");
        let times = p.profile(0, if gpu { 20 } else { 1 }).expect("profiles");
        let table = muse_compiler::inspect::rows(&g, p.kernels().expect("a fusing device"), None, batch as i64);
        for (row, ms) in table.iter().zip(&times) {
            let floor = (row.bytes_read + row.bytes_written) as f64 / H200_BYTES_PER_S * 1e3;
            println!("{name:<22} {:<6} {:<10} {ms:>10.4} {floor:>10.4} {:>8.2}", row.name, row.kind, ms / floor);
            let case = format!("{name} {} ({})", row.name, row.kind);
            let note = if gpu { "goal: within 2x of the memory floor" } else { "cuda-sim: not a GPU timing" };
            if row.kind == "scan" || !backward {
                goal("kernels", &case, ms / floor, 2.0, note);
            }
        }
    }
    true
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let ok = match arg(1, "").as_str() {
        "models" => models(&arg(2, "cuda"), &arg(3, "tiny"), &arg(4, "f32")),
        "train" => train(&arg(2, "cuda"), arg(3, "5").parse().expect("a step count")),
        "kernels" => kernels(&arg(2, "cuda")),
        "reduce" => reduce(&arg(2, "cuda")),
        _ => {
            eprintln!("usage: gpu_check models DEVICE [tiny|bench] [f32|bf16] | train DEVICE STEPS | kernels DEVICE | reduce DEVICE");
            std::process::exit(2)
        }
    };
    std::process::exit(if ok { 0 } else { 1 })
}
