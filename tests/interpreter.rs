//! Every model runs forward and backward through the reference interpreter at a tiny
//! config; the backward graph stays small; gradients accumulate across micro-batches without
//! recompiling; bad inputs and parameter files fail with clear errors.

mod common;

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_runtime::inputs::random_inputs;
use muse_runtime::{checkpoint, init_params, run, HostTensor, Precision, RunError, RunOptions};
use std::collections::HashMap;

#[test]
fn every_model_runs_forward_and_backward_with_gradients_for_every_parameter() {
    for &name in common::MODELS {
        let m = common::compile_model(name, &common::tiny(name, "2"));
        let d = differentiate(&m.graph, Wrt::default());
        assert!(d.unreached.is_empty(), "{name}: a bug in the model file: {:?} do not influence any loss", d.unreached);
        let inputs = random_inputs(&m.graph, 2, 1);
        let params = init_params(&m.graph, 1, Precision::F32).unwrap();
        let v = run(&d.graph, &inputs, &params, &RunOptions::default()).unwrap();
        for (out, n) in m.graph.outputs.iter().chain(&m.graph.losses) {
            let t = v.get(*n);
            assert!(t.to_f64().iter().all(|x| x.is_finite()), "{name}: output {out} is not finite");
        }
        for (p, g) in &d.params {
            let gv = v.get(*g).to_f64();
            assert!(gv.iter().all(|x| x.is_finite()), "{name}: gradient of {p} is not finite");
            // While every hinge is active (fresh logits near 0) the last bias's gradient is
            // -1/2 for the real half and +1/2 for the generated half: exactly zero.
            if name == "vq_discriminator" && p == "disc.conv_out.bias" {
                continue;
            }
            assert!(
                gv.iter().any(|x| *x != 0.0),
                "{name}: gradient of {p} is exactly zero though it reaches the loss: an autodiff bug"
            );
        }
    }
}

#[test]
fn backward_is_at_most_three_times_forward() {
    for name in ["muse_small", "mamba_xattn_xz", "vq_tokenizer"] {
        let m = common::compile_model(name, &[]);
        let d = differentiate(&m.graph, Wrt::default());
        let ratio = (d.graph.node_count() - d.forward_nodes) as f64 / d.forward_nodes as f64;
        assert!(ratio <= 3.0, "{name}: backward/forward = {ratio:.2}");
    }
}

#[test]
fn backward_grows_linearly_with_depth() {
    for name in ["muse_small", "mamba_xattn_xz"] {
        let counts: Vec<usize> = (2..=8)
            .map(|depth| {
                let m = common::compile_model(name, &[("depth", &depth.to_string())]);
                differentiate(&m.graph, Wrt::default()).graph.node_count()
            })
            .collect();
        let steps: Vec<usize> = counts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.iter().all(|s| *s == steps[0]), "{name}: nodes per extra layer {steps:?} are not constant");
    }
}

/// A loss summed (not averaged) over the batch: the gradient of a batch of four is the sum
/// of the gradients of its two halves, all from one compiled graph (the batch is symbolic).
#[test]
fn gradients_accumulate_across_micro_batches() {
    let m = common::compile_one(
        "acc.muse",
        "import \"std/nn.muse\"\nmodel acc {\n  input x: f32[B, 3, 4]\n  input t: i32[B, 3]\n  h = rmsnorm(linear(x, 6, bias = true))\n  loss l = sum(cross_entropy(h, t))\n}\n",
    );
    let d = differentiate(&m.graph, Wrt::default());
    let params = init_params(&m.graph, 2, Precision::F64).unwrap();
    let full = random_inputs(&m.graph, 4, 9);
    let half = |lo: usize| -> HashMap<String, HostTensor> {
        full.iter()
            .map(|(k, t)| {
                let row = t.len() / t.shape[0];
                let mut shape = t.shape.clone();
                shape[0] = 2;
                let h = match &t.data {
                    muse_runtime::Data::F(v) => HostTensor::f(&shape, v[lo * row..(lo + 2) * row].to_vec()),
                    muse_runtime::Data::I(v) => HostTensor::i(&shape, v[lo * row..(lo + 2) * row].to_vec()),
                    muse_runtime::Data::B(v) => HostTensor::b(&shape, v[lo * row..(lo + 2) * row].to_vec()),
                };
                (k.clone(), h)
            })
            .collect()
    };
    let opts = RunOptions { precision: Precision::F64, seed: 0 };
    let vf = run(&d.graph, &full, &params, &opts).unwrap();
    let v0 = run(&d.graph, &half(0), &params, &opts).unwrap();
    let v1 = run(&d.graph, &half(2), &params, &opts).unwrap();
    for (name, g) in &d.params {
        let (a, b, c) = (vf.get(*g).floats(), v0.get(*g).floats(), v1.get(*g).floats());
        for i in 0..a.len() {
            assert!((a[i] - (b[i] + c[i])).abs() < 1e-12, "{name}[{i}]");
        }
    }
}

#[test]
fn input_and_parameter_errors_are_clear() {
    let m = common::compile_model("muse_small", &common::tiny("muse_small", "2"));
    let params = init_params(&m.graph, 0, Precision::F32).unwrap();
    let mut inputs = random_inputs(&m.graph, 2, 0);
    let opts = RunOptions::default();

    let mut wrong = inputs.clone();
    wrong.insert("targets".into(), HostTensor::i(&[3, 4], vec![0; 12]));
    let e = run(&m.graph, &wrong, &params, &opts).unwrap_err().to_string();
    assert!(e.contains("input `targets`") && e.contains("B = 2 (B = 2 from input `tokens`)"), "{e}");

    wrong = inputs.clone();
    wrong.insert("tokens".into(), HostTensor::f(&[2, 4], vec![0.0; 8]));
    assert!(matches!(run(&m.graph, &wrong, &params, &opts), Err(RunError::InputDType { .. })));

    inputs.insert("tokens".into(), HostTensor::i(&[2, 4], vec![0, 1, 2, 99, 0, 0, 0, 0]));
    let e = run(&m.graph, &inputs, &params, &opts).unwrap_err().to_string();
    assert!(e.contains("gather") && e.contains("index 99 is outside 0..8"), "{e}");
    inputs.remove("tokens");
    assert_eq!(run(&m.graph, &inputs, &params, &opts).unwrap_err(), RunError::MissingInput("tokens".into()));

    // A safetensors file with a mis-shaped tensor names it and both shapes.
    let dir = std::env::temp_dir().join(format!("muse-params-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.safetensors");
    let mut bad = params.clone();
    bad.insert("head.to_logits.weight".into(), HostTensor::f(&[8, 7], vec![0.0; 56]));
    checkpoint::save(&path, &bad).unwrap();
    let e = checkpoint::load_params(&m.graph, &path).unwrap_err().to_string();
    assert!(e.contains("`head.to_logits.weight` has shape [8, 7], but the model declares [7, 8]"), "{e}");
    bad.remove("layers.1.layer.mlp.fc2.bias");
    checkpoint::save(&path, &bad).unwrap();
    let e = checkpoint::load_params(&m.graph, &path).unwrap_err().to_string();
    assert!(e.contains("`layers.1.layer.mlp.fc2.bias` is not in the file"), "{e}");
    // A good file round-trips and gives the same outputs.
    checkpoint::save(&path, &params).unwrap();
    let loaded = checkpoint::load_params(&m.graph, &path).unwrap();
    assert_eq!(loaded, params);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn initialisers_are_seeded_and_follow_their_declarations() {
    let m = common::compile_model("mamba_concat", &common::tiny("mamba_concat", "2"));
    let a = init_params(&m.graph, 1, Precision::F32).unwrap();
    let b = init_params(&m.graph, 1, Precision::F32).unwrap();
    let c = init_params(&m.graph, 2, Precision::F32).unwrap();
    assert_eq!(a, b);
    assert_ne!(a["layers.0.mixer.in_proj.weight"], c["layers.0.mixer.in_proj.weight"]);
    // A_log = log(1..N) per channel, D = 1, norms start at one.
    assert_eq!(a["layers.0.mixer.A_log"].floats(), &[0.0, 2f64.ln() as f32 as f64].repeat(16));
    assert!(a["layers.0.mixer.D"].floats().iter().all(|x| *x == 1.0));
    // dt = softplus(bias) lies in [1e-3, 0.1] as Mamba initialises it.
    for b in a["layers.1.mixer.dt_proj.bias"].floats() {
        let dt = b.exp().ln_1p();
        assert!((0.00099..=0.1001).contains(&dt), "dt {dt}");
    }
    // normal(0.02): the standard deviation of a large weight is close to 0.02.
    let s = a["text_encoder.tok_emb.weight"].stats();
    assert!((s.std - 0.02).abs() < 0.004, "{s}");
}

/// The tokenizer's patch encoder gives a patch the same code whatever the rest of the image
/// holds (its conv encoder's convolutions and group norms reach across patches).
#[test]
fn the_patch_encoders_code_depends_on_its_patch_only() {
    let codes_of = |seed: u64| {
        let mut sets = common::tiny("vq_tokenizer", "2");
        sets.extend([("encoder", "patch"), ("codebook", "64"), ("code_dim", "4")]);
        let m = common::compile_model("vq_tokenizer", &sets);
        let params = init_params(&m.graph, 3, Precision::F64).unwrap();
        let a = random_inputs(&m.graph, 1, seed)["image"].to_f64();
        let mut b = random_inputs(&m.graph, 1, seed + 1)["image"].to_f64();
        // The same 2x2 patch at grid cell (1, 2) of the 8x8 image, all else different.
        for y in 2..4 {
            for x in 4..6 {
                for c in 0..3 {
                    let at = (y * 8 + x) * 3 + c;
                    b[at] = a[at];
                }
            }
        }
        let codes = m.graph.outputs.iter().find(|(n, _)| n == "codes").unwrap().1;
        let run_on = |img: Vec<f64>| {
            let inputs = HashMap::from([("image".to_string(), HostTensor::f(&[1, 8, 8, 3], img))]);
            let opts = RunOptions { precision: Precision::F64, seed: 0 };
            run(&m.graph, &inputs, &params, &opts).unwrap().get(codes).to_f64()
        };
        (run_on(a), run_on(b))
    };
    for seed in [5, 50, 500] {
        let (a, b) = codes_of(seed);
        assert_eq!(a[4 + 2], b[4 + 2], "the shared patch's code");
        assert_ne!(a, b, "codes follow the pixels: the other patches' differ");
    }
}
