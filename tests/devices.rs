//! The device interface as the proof that a backend plugs in through it alone: `muse train
//! --device interp` (the reference interpreter, which fuses and generates nothing) trains
//! the image tokenizer and a masked-token model with the losses `--device cpu` gets; the
//! optimizer verbs of both devices agree with the host AdamW; and nothing outside the CPU
//! backend's folder and the device chooser (`runtime/src/lib.rs`) names the CPU backend's
//! types.

mod common;

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_runtime::device::{AdamStep, Grads, Slot, Tensors};
use muse_runtime::dist::{Collective, DistError, Mirror};
use muse_runtime::inputs::random_inputs;
use muse_runtime::optim::{self, AdamState, AdamW};
use muse_runtime::{init_params, Precision};
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("muse-devices-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// Runs the `muse` program with quick kernel compiles into a cache of this test's own.
fn muse(args: &[&str], cache: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_muse"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MUSE_CACHE_DIR", cache)
        .env("MUSE_CFLAGS", "-O1 -march=native -fopenmp")
        .output()
        .expect("run muse");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Equal within what f32 rounding in another order of operations leaves after a few
/// optimizer steps.
fn assert_close(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{what}: step {}: loss {x} (interp) vs {y}", i + 1);
    }
    assert!(a.windows(2).any(|w| w[0] != w[1]), "{what}: the losses move: {a:?}");
}

#[test]
fn training_on_the_interpreter_equals_the_cpu() {
    let dir = scratch("train");
    let cache = dir.join("kernels");
    let vq_sets = [
        "--set",
        "resolution=8",
        "--set",
        "channels=4",
        "--set",
        "levels=1",
        "--set",
        "codebook=16",
        "--set",
        "code_dim=4",
        "--set",
        "groups=2",
    ];
    let mut runs = Vec::new();
    for device in ["cpu", "interp"] {
        let out = dir.join(format!("vq-{device}"));
        let mut args = vec!["train", "models/vq_tokenizer.muse", "--device", device, "--steps", "4", "--batch", "4"];
        args.extend(["--lr", "3e-3", "--warmup", "2", "--ema", "0.9", "--out", out.to_str().unwrap()]);
        args.extend(vq_sets);
        let (ok, log) = muse(&args, &cache);
        assert!(ok, "{device}: {log}");
        runs.push(common::losses(&out));
    }
    assert_close("image tokenizer", &runs[1], &runs[0]);
    // A masked-token model on the CPU-trained tokenizer's ids (encoded once and cached, so
    // both devices see the same tokens), two micro-batches per step.
    let vq = dir.join("vq-cpu");
    let mut runs = Vec::new();
    for (device, dtype) in [("cpu", "f32"), ("interp", "f32"), ("cuda-sim", "f32"), ("cuda-sim", "bf16")] {
        let out = dir.join(format!("xz-{device}-{dtype}"));
        let mut args = vec!["train", "models/mamba_xattn_xz.muse", "--device", device, "--steps", "4", "--batch", "4"];
        args.extend(["--dtype", dtype]);
        args.extend(["--accumulate", "2", "--lr", "3e-3", "--warmup", "2", "--samples", "64"]);
        args.extend(["--tokenizer", vq.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend(["--set", "dim=16", "--set", "depth=1", "--set", "text_depth=1", "--set", "text_vocab=64"]);
        args.extend(["--set", "text_len=8", "--set", "d_state=4", "--set", "heads=2"]);
        let (ok, log) = muse(&args, &cache);
        assert!(ok, "{device}: {log}");
        runs.push(common::losses(&out));
    }
    assert_close("mamba_xattn_xz", &runs[1], &runs[0]);
    // The generated CUDA (run on the CPU through kernels/cuda_sim.h), its optimizer included.
    assert_close("mamba_xattn_xz on cuda-sim", &runs[1], &runs[2]);
    // bf16 storage with f32 master weights: the same losses to bf16's precision, and they
    // fall as the f32 run's do.
    for (i, (b, f)) in runs[3].iter().zip(&runs[2]).enumerate() {
        assert!((b - f).abs() <= 2e-2 * f.abs(), "bf16: step {}: loss {b} vs {f} in f32", i + 1);
    }
    assert!(runs[3].last() < runs[3].first(), "bf16: the loss falls: {:?}", runs[3]);
    let rounded = runs[3].iter().zip(&runs[2]).any(|(b, f)| (b - f).abs() > 1e-5 * f.abs());
    assert!(rounded, "bf16 storage rounds what f32 does not: {:?} vs {:?}", runs[3], runs[2]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn auto_says_what_it_chose_and_cuda_what_is_missing() {
    let cache = scratch("auto");
    let (ok, log) = muse(&["run", "models/muse_small.muse", "--set", "depth=1", "--set", "dim=16"], &cache);
    assert!(ok, "{log}");
    assert!(log.contains("device auto: cpu"), "{log}");
    let (ok, log) = muse(&["run", "models/muse_small.muse", "--device", "cuda"], &cache);
    assert!(!ok);
    assert!(log.contains("--device cuda:") && log.contains("--device cpu"), "{log}");
    let (ok, log) = muse(&["run", "models/muse_small.muse", "--device", "tpu"], &cache);
    assert!(!ok);
    assert!(log.contains("choose cpu, interp, cuda, cuda-sim or auto"), "{log}");
    std::fs::remove_dir_all(&cache).ok();
}

/// Largest difference relative to the reference's largest magnitude.
fn rel(ours: &[f32], reference: &[f32]) -> f64 {
    let scale = reference.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64));
    let diff = ours.iter().zip(reference).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale.max(1e-30)
}

/// Each device's optimizer verbs over its resident buffers (the CPU backend's generated
/// kernels, the interpreter's host loops) against the host AdamW of `runtime/src/optim.rs`
/// applied here to the gradients read back, over 100 steps of a real model: accumulation
/// of two micro-batches, the global norm, clipping, decoupled weight decay, bias
/// correction, the moments and the weight average, each within 1e-6 relative.
#[test]
fn device_optimizers_follow_the_host_adamw() {
    let name = "mamba_xattn_xz";
    let m = common::compile_model(name, &common::tiny(name, "2"));
    let d = differentiate(&m.graph, Wrt::default());
    let mut req = vec![d.loss];
    req.extend(d.params.iter().map(|x| x.1));
    let params = init_params(&m.graph, 3, Precision::F32).unwrap();
    let batches: Vec<Tensors> = (0..2).map(|s| random_inputs(&m.graph, 2, 20 + s)).collect();
    let cfg = AdamW { lr: 1e-2, clip_norm: Some(0.5), ..AdamW::default() };
    let decay = 0.9;
    // bf16 storage: the device updates f32 master weights from its bf16 gradients, which
    // are what the host reads back and applies here too.
    for (device, bf16) in [("cpu", false), ("interp", false), ("cuda-sim", false), ("cuda-sim", true)] {
        let device = if bf16 { "cuda-sim --dtype bf16" } else { device };
        let kind = device.split(' ').next().unwrap();
        let mut p = common::device_with(kind, "optim", bf16).compile(&d.graph, &req).unwrap();
        p.attach_optimizer(&d.params).unwrap();
        p.bind(&batches[0], &params).unwrap();
        let mut host: Vec<Vec<f32>> =
            d.params.iter().map(|(n, _)| params[n].to_f64().iter().map(|&x| x as f32).collect()).collect();
        let mut ema = host.clone();
        let mut state = AdamState::new(&host.iter().map(Vec::len).collect::<Vec<_>>());
        p.optimizer().unwrap().start_ema();
        let (mut clipped, mut worst) = (0, 0.0f64);
        for t in 1..=100u64 {
            // Two micro-batches: the host sums what the device reads back.
            let mut sum: Vec<Vec<f32>> = Vec::new();
            for (i, b) in batches.iter().enumerate() {
                for (k, v) in b {
                    p.write_input(k, v).unwrap();
                }
                p.execute(t).unwrap();
                let g: Vec<Vec<f32>> = d
                    .params
                    .iter()
                    .map(|(_, g)| p.read(*g).unwrap().to_f64().iter().map(|&x| x as f32).collect())
                    .collect();
                if i == 0 {
                    sum = g;
                } else {
                    sum.iter_mut().zip(&g).for_each(|(s, g)| s.iter_mut().zip(g).for_each(|(s, g)| *s += g));
                }
                p.optimizer().unwrap().accumulate(i == 0);
            }
            let refs: Vec<&[f32]> = sum.iter().map(Vec::as_slice).collect();
            let norm = optim::global_norm(&refs) / 2.0;
            let mut opt = p.optimizer().unwrap();
            let ours = opt.gradient_norm(Grads::Accumulated) / 2.0;
            assert!((ours - norm).abs() <= 1e-6 * norm, "{device} step {t}: norm {ours} vs {norm}");
            let grad_scale = optim::clip_factor(norm, cfg.clip_norm) / 2.0;
            clipped += usize::from(norm > 0.5);
            opt.adamw(&AdamStep { cfg: cfg.clone(), lr: cfg.lr, t, grad_scale }, Grads::Accumulated);
            opt.update_ema(decay);
            drop(opt);
            let mut views: Vec<&mut [f32]> = host.iter_mut().map(Vec::as_mut_slice).collect();
            optim::step(&cfg, cfg.lr, &mut state, &mut views, &refs, grad_scale);
            for (e, p) in ema.iter_mut().zip(&host) {
                e.iter_mut().zip(p).for_each(|(e, &p)| *e = (decay * *e as f64 + (1.0 - decay) * p as f64) as f32);
            }
        }
        assert!(clipped > 10, "{device}: clipping mattered ({clipped} of 100 steps)");
        let mut opt = p.optimizer().unwrap();
        for (k, (name, _)) in d.params.iter().enumerate() {
            for (what, slot, want) in
                [("m", Slot::M, &state.m[k]), ("v", Slot::V, &state.v[k]), ("ema", Slot::Ema, &ema[k])]
            {
                let e = rel(&opt.read_state(slot, k).unwrap(), want);
                worst = worst.max(e);
                assert!(e < 1e-6, "{device}: {what} of {name}: {e:e}");
            }
        }
        drop(opt);
        for (k, (name, _)) in d.params.iter().enumerate() {
            let ours: Vec<f32> = p.read_param(name).unwrap().to_f64().iter().map(|&x| x as f32).collect();
            let e = rel(&ours, &host[k]);
            worst = worst.max(e);
            assert!(e < 1e-6, "{device}: {name} after 100 steps: {e:e}");
            let start: Vec<f32> = params[name].to_f64().iter().map(|&x| x as f32).collect();
            assert!(rel(&host[k], &start) > 1e-3, "{device}: {name} moved");
        }
        eprintln!("{device}: worst relative difference from the host AdamW after 100 steps {worst:e}");
    }
    common::forget_cache("optim");
}

/// Words that name the CPU backend's types and module.
const CPU_NAMES: &[&str] =
    &["cpu::", "CpuProgram", "CpuDevice", "CpuOptions", "CompilerSettings", "Prepared", "quiet_openmp", "GemmArgs"];

/// Whether `text` has `word` as a whole identifier (or path prefix).
fn names(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && (word.ends_with("::") || !ident(after))
    })
}

#[test]
fn only_the_cpu_backend_and_the_chooser_name_the_cpu_backend() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The CUDA simulation compiles its C++ with the CPU backend's compiler and cache (and
    // its tests set that compiler's flags): it is a GPU hosted by the CPU backend.
    let allowed = [
        root.join("runtime/src/cpu"),
        root.join("runtime/src/lib.rs"),
        root.join("runtime/src/cuda/sim.rs"),
        root.join("runtime/src/cuda/tests.rs"),
        root.join(file!()),
    ];
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let skip = p.file_name().is_some_and(|n| n == "target" || n.to_string_lossy().starts_with('.'));
            if p.is_dir() && !skip {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !allowed.iter().any(|a| p.starts_with(a)) {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 50, "the walk found the sources ({} files)", files.len());
    let mut offenders = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if let Some(w) = CPU_NAMES.iter().find(|w| names(line, w)) {
                offenders.push(format!("{}:{}: {w}", f.strip_prefix(root).unwrap().display(), n + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "outside the CPU backend, use the device interface:\n{}", offenders.join("\n"));
    // The check itself sees a use when there is one.
    assert!(names("use muse_runtime::cpu::CpuProgram;", "cpu::") && names("x: CompilerSettings,", "CompilerSettings"));
    assert!(!names("MyCpuProgramX", "CpuProgram") && !names("prepared", "Prepared"));
}

/// Counts the sums a collective is asked for, summing as [`Mirror`] does.
struct Counting(Mirror, std::sync::atomic::AtomicUsize);

impl Collective for Counting {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn sum_f32(&self, data: &mut [f32]) -> Result<(), DistError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.sum_f32(data)
    }
    fn sum_f64(&self, data: &mut [f64]) -> Result<(), DistError> {
        self.0.sum_f64(data)
    }
    fn sum_bf16(&self, data: &mut [u16]) -> Result<(), DistError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.sum_bf16(data)
    }
    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<(), DistError> {
        self.0.broadcast(data, root)
    }
}

/// Data parallelism on every device through its own verbs: a step of two ranks that hold
/// the same micro-batch ([`Mirror`]: every sum doubles) must equal one process stepping over
/// that micro-batch twice. A gradient summed before its last write, summed twice, never
/// summed, or overwritten after its sum (a copy into the gradient arena) breaks the
/// equality by a factor of two. On the CUDA runtime the sum runs in buckets of 1 KiB during
/// the backward pass (many sums, each when its gradients are final); bf16 on the wire
/// rounds each gradient to bf16 before it is doubled.
#[test]
fn summing_gradients_over_ranks_equals_one_process_on_every_device() {
    use muse_runtime::dist::{Mirror, Wire};
    use muse_runtime::train::Trainer;
    use std::sync::Arc;
    // Two parameters with one gradient (`w + v`): it is computed once, in `w`'s place in
    // the gradient arena, and copied to `v`'s after the pass (the bucket after the copies).
    let copied = "model copies {\n  input x: f32[6]\n  param w: [6] ~ normal(0.5)\n  param v: [6] ~ normal(0.5)\n  loss l = sum(tanh((w + v) * x) * x)\n}\n";
    let models = [
        ("mamba_xattn_xz", common::compile_model("mamba_xattn_xz", &common::tiny("mamba_xattn_xz", "2"))),
        ("muse_small", common::compile_model("muse_small", &common::tiny("muse_small", "2"))),
        ("copies", common::compile_one("copies.muse", copied)),
    ];
    for (name, m) in &models {
        let params = init_params(&m.graph, 5, Precision::F32).unwrap();
        let batch = random_inputs(&m.graph, 2, 31);
        for device in ["cpu", "interp", "cuda-sim", "cuda-sim --dtype bf16"] {
            let bf16 = device.ends_with("bf16");
            let dev = common::device_with(device.split(' ').next().unwrap(), "ranks", bf16);
            let cfg = AdamW { lr: 1e-2, clip_norm: Some(1.0), ..AdamW::default() };
            let trainer = || Trainer::new(&m.graph, name, &params, &batch, cfg.clone(), &*dev).unwrap();
            let (mut alone, mut mirrored, mut narrow) = (trainer(), trainer(), trainer());
            let sums = Arc::new(Counting(Mirror(2), Default::default()));
            mirrored.set_collective(sums.clone(), Wire::F32, 1024);
            narrow.set_collective(Arc::new(Mirror(2)), Wire::Bf16, 1024);
            let (mut la, mut lm) = (vec![], vec![]);
            for step in 0..3 {
                la.push(alone.step_shard(&[(0, &batch), (0, &batch)], 2, 1e-2, step).unwrap().loss);
                lm.push(mirrored.step_shard(&[(0, &batch)], 2, 1e-2, step).unwrap().loss);
                narrow.step_shard(&[(0, &batch)], 2, 1e-2, step).unwrap();
            }
            let what = format!("{name} on {device}");
            assert_close(&format!("{what}: losses"), &la, &lm);
            let calls = sums.1.load(std::sync::atomic::Ordering::Relaxed);
            if device.starts_with("cuda-sim") && *name != "copies" {
                assert!(calls >= 3 * 4, "{what}: {calls} sums in 3 steps: the buckets did not split");
            } else if !device.starts_with("cuda-sim") {
                assert_eq!(calls, 3, "{what}: one sum of every gradient per step");
            }
            let (pa, pm, pn) = (alone.params().unwrap(), mirrored.params().unwrap(), narrow.params().unwrap());
            let mut rounded = 0.0f64;
            for (k, a) in &pa {
                let (a, b, c) = (a.to_f64(), pm[k].to_f64(), pn[k].to_f64());
                let scale = a.iter().fold(1e-3f64, |s, x| s.max(x.abs()));
                let worst = a.iter().zip(&b).fold(0.0f64, |w, (x, y)| w.max((x - y).abs()));
                assert!(worst <= 1e-6 * scale, "{what}: {k} differs by {worst} at scale {scale}");
                let off = a.iter().zip(&c).fold(0.0f64, |w, (x, y)| w.max((x - y).abs()));
                assert!(off <= 2e-2 * scale, "{what}: bf16 on the wire moved {k} by {off} at scale {scale}");
                rounded = rounded.max(off);
            }
            if !bf16 {
                assert!(rounded > 0.0, "{what}: bf16 on the wire changed nothing");
            }
        }
    }
}
