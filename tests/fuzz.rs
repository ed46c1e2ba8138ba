//! Property-based fuzzing of the parser and elaborator: mutated model files and random token
//! streams must compile or fail with a diagnostic whose location lies inside the text, and
//! never panic; every model of `models/` with extreme config values (`--set` 0, negatives,
//! huge values, other kinds) goes through compile, autodiff, fusion, C rendering and the
//! interpreter at a small memory budget without a panic or an abort. Runs briefly in the test
//! suite; `MUSE_FUZZ_CASES=N` runs longer (docs/testing.md records the long runs).

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_compiler::ir::NodeIndex;
use muse_compiler::{compile_path, compile_source, zoo, Options};
use muse_runtime::inputs::random_inputs;
use muse_runtime::{budget, init_params, run, Precision, RunOptions};
use proptest::prelude::*;
use std::path::PathBuf;

fn cases() -> u32 {
    std::env::var("MUSE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48)
}

fn seeds() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut files: Vec<String> = Vec::new();
    for d in [dir.clone(), dir.join("std")] {
        let mut paths: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|x| x == "muse") {
                files.push(std::fs::read_to_string(p).unwrap());
            }
        }
    }
    files
}

/// Tokens of the language, including ones that are easy to misuse.
const TOKENS: &[&str] = &[
    "model",
    "block",
    "import",
    "config",
    "input",
    "output",
    "loss",
    "param",
    "repeat",
    "as",
    "if",
    "else",
    "return",
    "true",
    "false",
    "none",
    "and",
    "or",
    "not",
    "x",
    "h",
    "B",
    "f32",
    "i32",
    "bool",
    "linear",
    "mamba",
    "sum",
    "reshape",
    "split",
    "scan",
    "take",
    "where",
    "mean",
    "layernorm",
    "attention",
    "0",
    "1",
    "-1",
    "2",
    "4",
    "16",
    "1e-5",
    "0.5",
    "\"std/nn.muse\"",
    "\"s\"",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "==",
    "+=",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "@",
    "<",
    ">=",
    "~",
    ".",
    ".shape",
    "\n",
    "  ",
    "#c\n",
    ";",
    "\\\n",
];

/// Compiles and checks the invariants; a panic fails the property.
fn check(text: &str) -> Result<(), TestCaseError> {
    let c = compile_source("fuzz.muse", text, &Options::default());
    if let Err(d) = &c.result {
        if let Some(loc) = d.loc {
            let len = c.sources.get(loc.file).text.len();
            prop_assert!(
                loc.span.start <= loc.span.end && loc.span.end <= len,
                "span {:?} outside {len} bytes",
                loc.span
            );
        }
        let rendered = d.render(&c.sources);
        prop_assert!(!rendered.is_empty());
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, usize),
    Duplicate(usize, usize, usize),
    Replace(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (any::<usize>(), 1usize..80, any::<usize>()).prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(a, t)| Mutation::Replace(a, t)),
    ]
}

fn boundary(s: &str, i: usize) -> usize {
    let mut i = i % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(mut s: String, m: &Mutation) -> String {
    match *m {
        Mutation::Delete(a, n) => {
            let a = boundary(&s, a);
            let b = boundary(&s, a + n);
            if b > a {
                s.replace_range(a..b, "");
            }
        }
        Mutation::Insert(a, t) => {
            let a = boundary(&s, a);
            s.insert_str(a, TOKENS[t]);
        }
        Mutation::Duplicate(a, n, b) => {
            let a = boundary(&s, a);
            let e = boundary(&s, a + n).max(a);
            let piece = s[a..e].to_string();
            let b = boundary(&s, b);
            s.insert_str(b, &piece);
        }
        Mutation::Replace(a, t) => {
            let a = boundary(&s, a);
            let word_end =
                s[a..].find(|c: char| !c.is_alphanumeric() && c != '_').map(|k| a + k.max(1)).unwrap_or(s.len());
            let e = boundary(&s, word_end);
            s.replace_range(a..e, TOKENS[t]);
        }
    }
    s
}

/// Config values a careless or hostile `--set` gives.
const EXTREMES: &[&str] = &[
    "0",
    "-1",
    "-7",
    "1",
    "2",
    "3",
    "5",
    "1000000",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "0.5",
    "-0.0",
    "1e300",
    "nan",
    "inf",
    "true",
    "\"patch\"",
    "[]",
    "none",
];

/// The budget the extreme configs compile and run at.
const SMALL_BUDGET: u64 = 64 << 20;

fn model_path(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(format!("{name}.muse"))
}

/// Each model's config keys (at its tiny config), computed once.
fn config_keys() -> &'static Vec<Vec<String>> {
    static KEYS: std::sync::OnceLock<Vec<Vec<String>>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        zoo::MODELS
            .iter()
            .map(|name| {
                let c = compile_path(&model_path(name), &tiny_options(name, &[]));
                c.result.expect("the tiny config compiles")[0].config.iter().map(|(k, _)| k.clone()).collect()
            })
            .collect()
    })
}

fn tiny_options(name: &str, extra: &[(String, String)]) -> Options {
    let mut overrides: Vec<(String, String)> =
        zoo::tiny(name, "3").iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    overrides.extend(extra.iter().cloned());
    Options { overrides, memory_budget: Some(SMALL_BUDGET), ..Options::default() }
}

/// Compiles a model with `extra` settings at the small budget and, where it compiles and its
/// tensors fit, differentiates, fuses and renders it and runs it on the interpreter: any
/// error is fine, a panic fails.
fn compile_and_run(name: &str, extra: &[(String, String)], batch: usize) -> Result<(), TestCaseError> {
    let c = compile_path(&model_path(name), &tiny_options(name, extra));
    let models = match c.result {
        Ok(m) => m,
        Err(d) => {
            prop_assert!(!d.render(&c.sources).is_empty());
            return Ok(());
        }
    };
    for m in models {
        let g = &m.graph;
        if budget::check_within(g, &|_| Some(batch as i64), SMALL_BUDGET).is_err() {
            continue;
        }
        // The interpreter keeps every value: all of them together must fit as well.
        let total: u128 = g
            .g
            .node_indices()
            .map(|n| {
                g.ty(n).shape.0.iter().map(|d| d.eval(&|_| Some(batch as i64)).unwrap_or(0) as u128).product::<u128>()
            })
            .sum::<u128>()
            * 8;
        let mut requested: Vec<NodeIndex> = g.outputs.iter().chain(&g.losses).map(|x| x.1).collect();
        if !g.losses.is_empty() {
            let d = differentiate(g, Wrt::default());
            requested = g.losses.iter().map(|x| x.1).chain(d.params.iter().map(|p| p.1)).collect();
            let (program, _) = muse_compiler::kernel::fuse(&d.graph, &requested);
            for k in program.generated() {
                prop_assert!(!muse_compiler::render::c::render_kernel(k).is_empty());
            }
        } else {
            let (program, _) = muse_compiler::kernel::fuse(g, &requested);
            for k in program.generated() {
                prop_assert!(!muse_compiler::render::c::render_kernel(k).is_empty());
            }
        }
        if total > (SMALL_BUDGET as u128) * 4 {
            continue;
        }
        let params = match init_params(g, 1, Precision::F32) {
            Ok(p) => p,
            Err(_) => continue,
        };
        let inputs = random_inputs(g, batch, 2);
        let _ = run(g, &inputs, &params, &RunOptions::default());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn extreme_config_values_never_panic_or_abort(
        model in 0..zoo::MODELS.len(),
        sets in prop::collection::vec((0usize..1000, 0..EXTREMES.len()), 1..3),
        batch in 1usize..3,
    ) {
        let name = zoo::MODELS[model];
        let keys = &config_keys()[model];
        let extra: Vec<(String, String)> =
            sets.iter().map(|&(k, v)| (keys[k % keys.len()].clone(), EXTREMES[v].to_string())).collect();
        compile_and_run(name, &extra, batch)?;
    }

    #[test]
    fn mutated_models_never_panic(file in 0usize..1000, muts in prop::collection::vec(mutation(), 1..6)) {
        let seeds = seeds();
        let mut text = seeds[file % seeds.len()].clone();
        for m in &muts {
            text = apply(text, m);
        }
        check(&text)?;
    }

    #[test]
    fn random_token_streams_never_panic(toks in prop::collection::vec(0..TOKENS.len(), 0..120)) {
        let text: Vec<&str> = toks.iter().map(|&t| TOKENS[t]).collect();
        check(&text.join(" "))?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check(&text)?;
    }
}

/// Inputs the fuzzer found or that stress the limits; kept as regression cases.
#[test]
fn corpus() {
    let deep = format!("model m {{\n  y = {}1{}\n}}\n", "(".repeat(5000), ")".repeat(5000));
    let long = format!("model m {{\n  input x: f32[B]\n  y = x{}\n  output y\n}}\n", " + x".repeat(100_000));
    let negs = format!("model m {{\n  y = {}1\n}}\n", "- ".repeat(100_000));
    let nots = format!("model m {{\n  y = {}true\n}}\n", "not ".repeat(100_000));
    let lines = format!("model m {{\n  input x: f32[B]\n  y = x{}\n  output y\n}}\n", " +\n x".repeat(100_000));
    for text in [deep, long, negs, nots, lines] {
        let c = compile_source("corpus.muse", &text, &Options::default());
        assert!(c.result.is_err(), "pathological input is rejected with a diagnostic");
    }
    for text in [
        "",
        "\n\n",
        "model",
        "model m",
        "model m {",
        "block f(",
        "import",
        "\u{feff}model m {}",
        "model m { output o = 1 }",
    ] {
        let c = compile_source("corpus.muse", text, &Options::default());
        assert!(c.result.is_err(), "{text:?} is rejected");
        check(text).unwrap();
    }
}

/// What the extreme-config fuzzer found: with `depth=0` the backward graph's node indices
/// were not in topological order, and a row kernel whose second reduction feeds the first's
/// input lowered its phases in index order (a panic in kernel lowering). Fixed by ordering
/// row and scan kernel members topologically.
#[test]
fn found_by_the_config_fuzzer() {
    for name in ["muse_small", "mamba_xattn_xz", "mamba_then_xattn"] {
        compile_and_run(name, &[("depth".into(), "0".into())], 1).unwrap();
    }
}
