//! Training steps over compiled kernels against an independent reference: gradients from
//! the reference interpreter (f64) and AdamW written out here from the algorithm in
//! PyTorch's documentation, step by step.

mod common;

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_runtime::device::Tensors;
use muse_runtime::inputs::random_inputs;
use muse_runtime::optim::{self, AdamState, AdamW, Schedule};
use muse_runtime::train::{TrainOptions, Trainer};
use muse_runtime::{init_params, run, Precision, RunOptions};
use std::collections::HashMap;

/// PyTorch's AdamW as documented, in f64, one parameter at a time.
struct PlainAdamW {
    m: HashMap<String, Vec<f64>>,
    v: HashMap<String, Vec<f64>>,
    t: i32,
}

impl PlainAdamW {
    fn step(&mut self, cfg: &AdamW, lr: f64, params: &mut Tensors, grads: &HashMap<String, Vec<f64>>) {
        self.t += 1;
        let norm = grads.values().flatten().map(|g| g * g).sum::<f64>().sqrt();
        let clip = cfg.clip_norm.map_or(1.0, |c| (c / (norm + 1e-6)).min(1.0));
        for (name, g) in grads {
            let p = params.get_mut(name).unwrap();
            let mut theta = p.to_f64();
            let m = self.m.entry(name.clone()).or_insert_with(|| vec![0.0; g.len()]);
            let v = self.v.entry(name.clone()).or_insert_with(|| vec![0.0; g.len()]);
            for i in 0..g.len() {
                let gi = g[i] * clip;
                theta[i] -= lr * cfg.weight_decay * theta[i];
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * gi;
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * gi * gi;
                let mhat = m[i] / (1.0 - cfg.beta1.powi(self.t));
                let vhat = v[i] / (1.0 - cfg.beta2.powi(self.t));
                theta[i] -= lr * mhat / (vhat.sqrt() + cfg.eps);
            }
            *p = muse_runtime::HostTensor::f(&p.shape.clone(), theta);
        }
    }
}

/// The interpreter's (f64) loss and gradients of every parameter.
fn reference_grads(m: &muse_compiler::Model, params: &Tensors, inputs: &Tensors) -> (f64, HashMap<String, Vec<f64>>) {
    let d = differentiate(&m.graph, Wrt::default());
    let v = run(&d.graph, inputs, params, &RunOptions { precision: Precision::F64, seed: 0 }).unwrap();
    let grads = d.params.iter().map(|(n, g)| (n.clone(), v.get(*g).to_f64())).collect();
    (v.get(d.loss).to_f64()[0], grads)
}

fn max_diff(a: &Tensors, b: &Tensors) -> f64 {
    let mut worst = 0.0f64;
    for (name, t) in a {
        for (x, y) in t.to_f64().iter().zip(b[name].to_f64()) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

#[test]
fn fused_training_steps_follow_the_reference() {
    // Large lr and small clip so that both clipping and the moments matter within 3 steps.
    let cfg = AdamW { lr: 1e-2, clip_norm: Some(0.5), ..AdamW::default() };
    for name in ["muse_small", "mamba_xattn_xz"] {
        let m = common::compile_model(name, &common::tiny(name, "2"));
        let params0 = init_params(&m.graph, 3, Precision::F32).unwrap();
        let batches: Vec<Tensors> = (0..3).map(|s| random_inputs(&m.graph, 2, 10 + s)).collect();
        let mut t =
            Trainer::new(&m.graph, name, &params0, &batches[0], cfg.clone(), common::cpu(name).as_ref()).unwrap();
        let mut reference = params0.clone();
        let mut plain = PlainAdamW { m: HashMap::new(), v: HashMap::new(), t: 0 };
        for (s, b) in batches.iter().enumerate() {
            let (loss, grads) = reference_grads(&m, &reference, b);
            let norm = grads.values().flatten().map(|g| g * g).sum::<f64>().sqrt();
            let stats = t.step(&[b], cfg.lr, 0).unwrap();
            assert!(stats.applied);
            assert!((stats.loss - loss).abs() < 1e-4 * loss.abs(), "{name} step {s}: loss {} vs {loss}", stats.loss);
            assert!(
                (stats.grad_norm - norm).abs() < 1e-4 * norm,
                "{name} step {s}: norm {} vs {norm}",
                stats.grad_norm
            );
            assert!(norm > 0.5, "{name}: the test means to exercise clipping (norm {norm})");
            plain.step(&cfg, cfg.lr, &mut reference, &grads);
        }
        // Each step moves a parameter by about lr; f32 rounding of the gradients may move
        // an update by a small fraction of that.
        let diff = max_diff(&t.params().unwrap(), &reference);
        assert!(diff < 1e-2 * cfg.lr, "{name}: parameters after 3 steps differ by {diff:e}");
        assert!(max_diff(&params0, &reference) > cfg.lr, "{name}: the parameters moved");
    }
}

/// `--freeze text`: the text encoder keeps its values bit for bit, is left out of the
/// gradient norm, and every other parameter follows the reference AdamW exactly as before;
/// a frozen parameter set from outside (the PatchGAN copy) is what the next pass reads.
#[test]
fn frozen_parameters_stay_and_the_rest_follow_the_reference() {
    let cfg = AdamW { lr: 1e-2, clip_norm: Some(0.5), ..AdamW::default() };
    let name = "muse_small";
    let m = common::compile_model(name, &common::tiny(name, "2"));
    let params0 = init_params(&m.graph, 3, Precision::F32).unwrap();
    let batches: Vec<Tensors> = (0..3).map(|s| random_inputs(&m.graph, 2, 10 + s)).collect();
    let options = TrainOptions { frozen: vec!["text_encoder".into()], ..TrainOptions::default() };
    let mut t = Trainer::with_options(
        &m.graph,
        name,
        &params0,
        &batches[0],
        cfg.clone(),
        common::cpu("freeze").as_ref(),
        &options,
    )
    .unwrap();
    let is_text = |n: &str| n.starts_with("text_encoder.");
    assert!(t.trained().all(|n| !is_text(n)));
    assert_eq!(t.trained().count(), params0.keys().filter(|n| !is_text(n)).count());
    let mut reference = params0.clone();
    let mut plain = PlainAdamW { m: HashMap::new(), v: HashMap::new(), t: 0 };
    for b in &batches {
        let (_, mut grads) = reference_grads(&m, &reference, b);
        grads.retain(|n, _| !is_text(n));
        let norm = grads.values().flatten().map(|g| g * g).sum::<f64>().sqrt();
        let stats = t.step(&[b], cfg.lr, 0).unwrap();
        assert!((stats.grad_norm - norm).abs() < 1e-4 * norm, "norm {} vs {norm} without the frozen", stats.grad_norm);
        plain.step(&cfg, cfg.lr, &mut reference, &grads);
    }
    let after = t.params().unwrap();
    for (k, v) in &params0 {
        if is_text(k) {
            assert_eq!(&after[k], v, "{k} is frozen");
        }
    }
    assert!(max_diff(&after, &reference) < 1e-2 * cfg.lr);
    assert!(max_diff(&params0, &reference) > cfg.lr, "the rest moved");
    // A frozen parameter set from outside is read by the next pass and reported back (not a
    // constant shift, which the layernorm after it would remove).
    let key = "text_encoder.pos_emb".to_string();
    let shifted =
        params0[&key].to_f64().iter().enumerate().map(|(i, x)| ((x + (i as f64).sin()) as f32) as f64).collect();
    let moved = muse_runtime::HostTensor::f(&params0[&key].shape, shifted);
    let (loss_before, _) = t.gradients(&batches[0], 0).unwrap();
    t.set_params(&[(key.clone(), moved.clone())].into()).unwrap();
    let (loss_after, _) = t.gradients(&batches[0], 0).unwrap();
    assert_ne!(loss_before, loss_after);
    assert_eq!(t.params().unwrap()[&key], moved);
    let nothing = TrainOptions { frozen: vec!["text".into()], ..TrainOptions::default() };
    let err =
        Trainer::with_options(&m.graph, name, &params0, &batches[0], cfg, common::cpu("freeze").as_ref(), &nothing)
            .err()
            .expect("`text` names no parameter path");
    assert!(err.to_string().contains("no parameter is named `text`"), "{err}");
}

#[test]
fn accumulated_micro_batches_average_their_gradients() {
    let name = "mamba_xattn_xz";
    let m = common::compile_model(name, &common::tiny(name, "2"));
    let params0 = init_params(&m.graph, 4, Precision::F32).unwrap();
    let (a, b) = (random_inputs(&m.graph, 2, 1), random_inputs(&m.graph, 2, 2));
    let cfg = AdamW { lr: 1e-2, clip_norm: None, ..AdamW::default() };
    let mut t = Trainer::new(&m.graph, name, &params0, &a, cfg.clone(), common::cpu("acc").as_ref()).unwrap();
    let stats = t.step(&[&a, &b], cfg.lr, 0).unwrap();
    let ((la, ga), (lb, gb)) = (reference_grads(&m, &params0, &a), reference_grads(&m, &params0, &b));
    assert!((stats.loss - (la + lb) / 2.0).abs() < 1e-4);
    let mean: HashMap<String, Vec<f64>> =
        ga.iter().map(|(k, x)| (k.clone(), x.iter().zip(&gb[k]).map(|(x, y)| (x + y) / 2.0).collect())).collect();
    let mut reference = params0.clone();
    PlainAdamW { m: HashMap::new(), v: HashMap::new(), t: 0 }.step(&cfg, cfg.lr, &mut reference, &mean);
    let diff = max_diff(&t.params().unwrap(), &reference);
    assert!(diff < 1e-2 * cfg.lr, "parameters differ by {diff:e}");
}

/// The moving average kept on the device beside the parameters follows `e = d e + (1 - d) p`
/// from the initial parameters, computed here from the host copies after every step; a
/// trainer given it back (a resumed run) carries it on exactly.
#[test]
fn the_weight_average_follows_the_parameters() {
    let name = "muse_small";
    let m = common::compile_model(name, &common::tiny(name, "2"));
    let params0 = init_params(&m.graph, 5, Precision::F32).unwrap();
    let batch = random_inputs(&m.graph, 2, 3);
    let cfg = AdamW { lr: 1e-2, ..AdamW::default() };
    let mut t = Trainer::new(&m.graph, name, &params0, &batch, cfg.clone(), common::cpu("ema").as_ref()).unwrap();
    assert!(t.ema().unwrap().is_none());
    t.start_ema().unwrap();
    let decay = 0.9;
    let mut expect = params0.clone();
    for step in 0..3 {
        t.step(&[&batch], cfg.lr, step).unwrap();
        t.update_ema(decay).unwrap();
        let p = t.params().unwrap();
        for (k, e) in expect.iter_mut() {
            let v = e
                .to_f64()
                .iter()
                .zip(p[k].to_f64())
                .map(|(e, p)| ((decay * e + (1.0 - decay) * p) as f32) as f64)
                .collect();
            *e = muse_runtime::HostTensor::f(&e.shape.clone(), v);
        }
    }
    let ema = t.ema().unwrap().unwrap();
    // The device averages in f32 (`e += (p - e) (1 - d)`), the host here in f64: a rounding
    // apart per step on values of magnitude about 1.
    assert!(max_diff(&ema, &expect) < 1e-6, "{:e}", max_diff(&ema, &expect));
    assert!(max_diff(&ema, &t.params().unwrap()) > 0.0, "the average lags the parameters");
    let mut resumed =
        Trainer::new(&m.graph, name, &t.params().unwrap(), &batch, cfg.clone(), common::cpu("ema").as_ref()).unwrap();
    resumed.start_ema().unwrap();
    resumed.set_ema(&ema).unwrap();
    assert_eq!(max_diff(&resumed.ema().unwrap().unwrap(), &ema), 0.0);
}

#[test]
fn a_fixed_batch_is_learned() {
    for name in ["muse_small", "mamba_xattn_xz"] {
        let m = common::compile_model(name, &common::tiny(name, "3"));
        let params = init_params(&m.graph, 5, Precision::F32).unwrap();
        let batch = random_inputs(&m.graph, 4, 6);
        let cfg = AdamW { lr: 1e-2, ..AdamW::default() };
        let mut t = Trainer::new(&m.graph, name, &params, &batch, cfg.clone(), common::cpu("fit").as_ref()).unwrap();
        let first = t.step(&[&batch], cfg.lr, 0).unwrap().loss;
        let mut last = first;
        for _ in 0..60 {
            last = t.step(&[&batch], cfg.lr, 0).unwrap().loss;
        }
        assert!(last < 0.5 * first, "{name}: loss {first} -> {last}");
    }
}

#[test]
fn a_non_finite_loss_changes_nothing() {
    let name = "muse_small";
    let m = common::compile_model(name, &common::tiny(name, "2"));
    let mut params = init_params(&m.graph, 5, Precision::F32).unwrap();
    let w = params.get_mut("head.norm_f.weight").expect("the head's norm has a weight");
    *w = muse_runtime::HostTensor::f(&w.shape.clone(), vec![f64::NAN; w.len()]);
    let batch = random_inputs(&m.graph, 2, 6);
    let mut t = Trainer::new(&m.graph, name, &params, &batch, AdamW::default(), common::cpu("nan").as_ref()).unwrap();
    let stats = t.step(&[&batch], 1e-3, 0).unwrap();
    assert!(!stats.applied && stats.loss.is_nan());
    assert_eq!(t.steps_taken, 0);
    let after = t.params().unwrap();
    let finite = |ts: &Tensors| {
        ts.iter().filter(|(k, _)| *k != "head.norm_f.weight").map(|(_, v)| v.clone()).collect::<Vec<_>>()
    };
    let mut a = finite(&after);
    let mut b = finite(&params);
    a.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
    b.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
    assert_eq!(a, b, "no parameter changed");
}

#[test]
fn adamw_chunks_and_threads_do_not_change_results() {
    // Sizes straddling the parallel chunk size: the update and the norm are per element
    // and per fixed chunk, so they equal a sequential f64 computation closely and are
    // identical across repeated runs.
    let sizes = [1usize, 5, (1 << 14) + 3, 40_000];
    let grads: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| ((i * 7 + k) % 13) as f32 * 0.1 - 0.6).collect())
        .collect();
    let grad_refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let exact = grads.iter().flatten().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt();
    assert!((optim::global_norm(&grad_refs) - exact).abs() < 1e-9 * exact);
    let run = || {
        let mut ps: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.5; n]).collect();
        let mut st = AdamState::new(&sizes);
        for _ in 0..3 {
            let mut refs: Vec<&mut [f32]> = ps.iter_mut().map(Vec::as_mut_slice).collect();
            optim::step(&AdamW::default(), 1e-3, &mut st, &mut refs, &grad_refs, 0.5);
        }
        ps
    };
    assert_eq!(run(), run());
}

#[test]
fn schedule_warms_up_then_decays_to_the_floor() {
    let s = Schedule { warmup: 10, total: 110, min_ratio: 0.1 };
    assert!((s.factor(0) - 0.1).abs() < 1e-12);
    assert!((s.factor(9) - 1.0).abs() < 1e-12);
    assert!((s.factor(10) - 1.0).abs() < 1e-12);
    assert!((s.factor(60) - 0.55).abs() < 1e-12);
    assert!((s.factor(110) - 0.1).abs() < 1e-12);
    assert!((s.factor(500) - 0.1).abs() < 1e-12);
}
