//! Helpers shared by the cross-crate tests.
#![allow(dead_code)]

pub mod torch;

use muse_compiler::{compile_source, Model, Options};

/// Compiles source text with one model, panicking with the rendered diagnostic on error.
pub fn compile_one(name: &str, src: &str) -> Model {
    let c = compile_source(name, src, &Options::default());
    match c.result {
        Ok(mut m) => m.remove(0),
        Err(d) => panic!("{}", d.render(&c.sources)),
    }
}

/// Compiles a model file of `models/` with config overrides.
pub fn compile_model(name: &str, sets: &[(&str, &str)]) -> Model {
    let opts =
        Options { overrides: sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Options::default() };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(format!("{name}.muse"));
    let c = muse_compiler::compile_path(&path, &opts);
    match c.result {
        Ok(mut m) => {
            assert_eq!(m.len(), 1, "{name}: one model per file");
            m.remove(0)
        }
        Err(d) => panic!("{name}: {}", d.render(&c.sources)),
    }
}

#[allow(unused_imports)]
pub use muse_compiler::zoo::{tiny, IMAGE_MODELS, MODELS, OPTIONS};

/// Where a test's compiled kernels go: `MUSE_TEST_KEEP` (kept between runs), else a folder
/// of its own in the temp folder.
pub fn kernel_cache(tag: &str) -> std::path::PathBuf {
    std::env::var("MUSE_TEST_KEEP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join(format!("muse-test-{tag}-{}", std::process::id())))
}

/// A device as the tests use it: quick compiles (the same numbers), kernels cached under
/// `tag`.
pub fn device(kind: &str, tag: &str) -> Box<dyn muse_runtime::device::Device + Send + Sync> {
    device_with(kind, tag, false)
}

/// As [`device`], with float buffers in bf16 (`--dtype bf16`) when `bf16`.
pub fn device_with(kind: &str, tag: &str, bf16: bool) -> Box<dyn muse_runtime::device::Device + Send + Sync> {
    let opts = muse_runtime::device::DeviceOptions {
        cache_dir: Some(kernel_cache(tag)),
        quick: true,
        bf16,
        ..Default::default()
    };
    muse_runtime::select(kind.parse().expect("a device name"), &opts).expect("the device is available").device
}

/// The CPU device (see [`device`]).
pub fn cpu(tag: &str) -> Box<dyn muse_runtime::device::Device + Send + Sync> {
    device("cpu", tag)
}

/// Removes a test's kernel cache unless `MUSE_TEST_KEEP` keeps it.
pub fn forget_cache(tag: &str) {
    if std::env::var_os("MUSE_TEST_KEEP").is_none() {
        std::fs::remove_dir_all(kernel_cache(tag)).ok();
    }
}

/// The loss of every step of a run, from its metrics.jsonl.
pub fn losses(run: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

/// Compares `actual` with the golden file at `path` (relative to the repository); with
/// `MUSE_BLESS=1` writes it instead.
pub fn check_golden(path: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var_os("MUSE_BLESS").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden {}; run with MUSE_BLESS=1 to create it", path.display()));
    if want != actual {
        let diff: Vec<String> = want
            .lines()
            .zip(actual.lines())
            .filter(|(a, b)| a != b)
            .take(8)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "{} changed ({} vs {} lines); first differences:\n{}\nIf the change is intended, rerun with MUSE_BLESS=1.",
            path.display(),
            want.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}
