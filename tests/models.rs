//! Every model of the research log compiles to a shape-checked graph, its parameter count at
//! paper scale matches the architecture's arithmetic, and its IR matches a golden summary.

mod common;

use muse_compiler::ir::{print, Graph};
use muse_compiler::{compile_source, ConfigValue, Model, Options};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compile(name: &str, sets: &[(&str, &str)]) -> Model {
    common::compile_model(name, sets)
}

fn config_int(m: &Model, key: &str) -> i64 {
    match m.config.iter().find(|(k, _)| k == key).map(|(_, v)| v) {
        Some(ConfigValue::Int(i)) => *i,
        other => panic!("{}: config {key} is {other:?}", m.name),
    }
}

#[test]
fn models_directory_has_every_variant() {
    let mut found: Vec<String> = std::fs::read_dir(root().join("models"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension().is_some_and(|x| x == "muse")).then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    found.sort();
    let mut want: Vec<String> =
        common::MODELS.iter().chain(muse_compiler::zoo::FEATURE_NETWORKS).map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want);
}

#[test]
fn every_model_compiles_with_parameters_and_results() {
    for name in common::MODELS {
        let m = compile(name, &[]);
        assert_eq!(&m.name, name);
        let g = &m.graph;
        assert!(g.param_count() > 0, "{name} has no parameters");
        assert!(!g.inputs.is_empty(), "{name} has no inputs");
        assert!(!g.losses.is_empty(), "{name} has no loss to train");
        for (_, l) in &g.losses {
            assert_eq!(g.ty(*l).shape.rank(), 0, "{name}: losses are scalars");
        }
        // Every parameter is used: it reaches a loss.
        for p in &g.params {
            assert!(!g.users(p.node).is_empty(), "{name}: {} is unused", p.name);
        }
    }
}

/// The research log's scale: 12 layers, width 1024, codebook 8192, a 16x16 token grid; the
/// tokenizer at 256x256 with 128 channels and four downsamplings.
#[test]
fn every_model_compiles_at_paper_scale() {
    let masked =
        [("depth", "12"), ("dim", "1024"), ("heads", "16"), ("codebook", "8192"), ("grid", "16"), ("text_len", "64")];
    for name in common::MODELS.iter().filter(|n| !common::IMAGE_MODELS.contains(n)) {
        let m = compile(name, &masked);
        let logits = m.graph.outputs.iter().find(|(n, _)| n == "logits").expect("logits").1;
        let want = if *name == "token_critic" { "f32[B, 256]" } else { "f32[B, 256, 8192]" };
        assert_eq!(m.graph.ty(logits).to_string(), want, "{name}");
    }
    let vq = compile(
        "vq_tokenizer",
        &[("channels", "128"), ("codebook", "8192"), ("resolution", "256"), ("levels", "4"), ("groups", "32")],
    );
    let codes = vq.graph.outputs.iter().find(|(n, _)| n == "codes").unwrap().1;
    assert_eq!(vq.graph.ty(codes).to_string(), "i32[B, 16, 16]");
}

#[test]
fn both_combinations_of_variants_compile() {
    compile("mamba_parallel", &[("combine", "product")]);
    let b = compile("mamba_text_b", &[("text_source", "xattn")]);
    assert!(b.graph.params.iter().any(|p| p.name == "layers.0.xattn.to_q.weight"));
    compile("mamba_text_c", &[("text_source", "xattn")]);
    compile("mamba_text_skip", &[("input_dependent", "false")]);
}

/// Muse transformer at width D, depth L, text encoder depth Lt, MLP 4D:
///   text encoder  V*D + S*D + Lt*(12D^2 + 9D) + 2D   (LN 2D*2, attention 4D^2, MLP 8D^2+5D)
///   token input   (K+1)*D + N*D
///   each layer    16D^2 + 11D                        (LN 2D*3, two attentions 8D^2, MLP 8D^2+5D)
///   head          2D + K*D
fn muse_params(k: i64, n: i64, v: i64, s: i64, d: i64, l: i64, lt: i64) -> i64 {
    v * d + s * d + lt * (12 * d * d + 9 * d) + 2 * d + (k + 1) * d + n * d + l * (16 * d * d + 11 * d) + 2 * d + k * d
}

#[test]
fn muse_base_at_paper_scale_matches_the_architecture() {
    let sets =
        [("depth", "24"), ("dim", "2048"), ("heads", "16"), ("codebook", "8192"), ("grid", "16"), ("text_len", "64")];
    let m = compile("muse_base", &sets);
    let want = muse_params(8192, 256, config_int(&m, "text_vocab"), 64, 2048, 24, config_int(&m, "text_depth"));
    let got = m.graph.param_count();
    let rel = (got - want).abs() as f64 / want as f64;
    assert!(rel < 0.05, "muse_base: {got} parameters, the architecture implies {want}");
    // The small default has the same structure.
    let small = compile("muse_small", &[]);
    assert_eq!(small.graph.param_count(), muse_params(256, 64, 1024, 16, 128, 4, 2));
}

/// Mamba block (SPEC-models.md section 5) at width D, E = 2D, state Nst, R = ceil(D/16), conv 4:
///   in_proj 2E*D, conv1d 4E + E, x_proj (R + 2 Nst) E, dt_proj E R + E, A_log E Nst, D E,
///   out_proj D E.
fn mamba_params(d: i64, nst: i64) -> i64 {
    let e = 2 * d;
    let r = (d + 15) / 16;
    2 * e * d + 5 * e + (r + 2 * nst) * e + e * r + e + e * nst + e + d * e
}

#[test]
fn mamba_xattn_xz_at_paper_scale_matches_the_architecture() {
    let sets = [("depth", "12"), ("dim", "1024"), ("heads", "16"), ("codebook", "8192"), ("grid", "16")];
    let m = compile("mamba_xattn_xz", &sets);
    let (d, k, n) = (1024, 8192, 256);
    let (v, s, lt) = (config_int(&m, "text_vocab"), config_int(&m, "text_len"), config_int(&m, "text_depth"));
    let text = v * d + s * d + lt * (12 * d * d + 9 * d) + 2 * d;
    let layer = d + 4 * d * d + mamba_params(d, 16); // rmsnorm, cross-attention, mixer
    let want = text + (k + 1) * d + n * d + 12 * layer + 2 * d + k * d;
    assert_eq!(m.graph.param_count(), want);
}

#[test]
fn parameter_names_follow_the_safetensors_convention() {
    let m = compile("mamba_concat", &[]);
    let names: Vec<&str> = m.graph.params.iter().map(|p| p.name.as_str()).collect();
    for want in [
        "layers.3.mixer.in_proj.weight",
        "layers.3.mixer.conv1d.weight",
        "layers.3.mixer.conv1d.bias",
        "layers.3.mixer.x_proj.weight",
        "layers.3.mixer.dt_proj.weight",
        "layers.3.mixer.dt_proj.bias",
        "layers.3.mixer.A_log",
        "layers.3.mixer.D",
        "layers.3.mixer.out_proj.weight",
        "layers.0.norm.weight",
    ] {
        assert!(names.contains(&want), "missing {want} in {names:?}");
    }
    let conv = m.graph.params.iter().find(|p| p.name == "layers.0.mixer.conv1d.weight").unwrap();
    assert_eq!(conv.ty.to_string(), "f32[256, 1, 4]");
}

/// A summary that changes whenever elaboration does: node count, op histogram, every
/// parameter with its shape, inputs, outputs and losses.
fn summary(g: &Graph) -> String {
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for n in g.g.node_indices() {
        *ops.entry(g.node(n).op.name()).or_default() += 1;
    }
    let mut s = format!("nodes {}\nparameters {} in {} tensors\n", g.node_count(), g.param_count(), g.params.len());
    for (op, k) in ops {
        s.push_str(&format!("op {op} {k}\n"));
    }
    for (kind, list) in [("input", &g.inputs), ("output", &g.outputs), ("loss", &g.losses)] {
        for (name, n) in list {
            s.push_str(&format!("{kind} {name} {}\n", g.ty(*n)));
        }
    }
    for p in &g.params {
        s.push_str(&format!("param {} {} init-nodes {}\n", p.name, p.ty, p.init.node_count()));
    }
    s
}

fn check_golden(file: &str, actual: &str) {
    common::check_golden(&format!("tests/golden/{file}"), actual);
}

#[test]
fn golden_summaries_of_every_model() {
    for name in common::MODELS {
        let m = compile(name, &[]);
        check_golden(&format!("{name}.txt"), &summary(&m.graph));
    }
}

/// The full IR text of a tiny model: every node, type and provenance.
#[test]
fn golden_ir_of_a_tiny_model() {
    let src = "import \"std/nn.muse\"\n\nmodel tiny {\n  config { width = 8 }\n  input x: f32[B, 3, width]\n  h = rmsnorm(x)\n  output y = linear(h, 4, bias = true) as proj\n  loss l = mean(y * y)\n}\n";
    let c = compile_source("tiny.muse", src, &Options::default());
    let m = c.result.as_ref().map_err(|d| d.render(&c.sources)).unwrap();
    check_golden("tiny.ir", &print::to_text(&m[0].graph, Some(&c.sources)));
}

#[test]
fn dot_output_groups_nodes_by_block() {
    let m = compile("muse_small", &[]);
    let dot = print::to_dot(&m.graph, "muse_small");
    assert!(dot.starts_with("digraph \"muse_small\" {"));
    assert!(dot.contains("label=\"layers\""));
    assert!(dot.contains("label=\"mixer\"") || dot.contains("label=\"self_attn\""));
    assert_eq!(dot.matches('{').count(), dot.matches('}').count());
}

#[test]
fn elaboration_is_deterministic() {
    let a = compile("mamba_xattn_xz", &[]);
    let b = compile("mamba_xattn_xz", &[]);
    assert_eq!(print::to_text(&a.graph, None), print::to_text(&b.graph, None));
    let _ = Path::new("");
}
