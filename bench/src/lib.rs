//! What the benchmark programs share.

use muse_compiler::{compile_path, Model, Options};
use std::path::PathBuf;

/// Where the model files are: `models/` under the working folder (the benchmarks run from
/// the repository's root, also on a machine the binaries were carried to), else the
/// repository this crate was built in.
pub fn models_dir() -> PathBuf {
    let here = PathBuf::from("models");
    if here.is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// Model file `name` of `models/` with config overrides `sets`.
pub fn model_file(name: &str, sets: &[(&str, &str)]) -> Model {
    let opts =
        Options { overrides: sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Options::default() };
    let c = compile_path(&models_dir().join(format!("{name}.muse")), &opts);
    c.result.unwrap_or_else(|d| panic!("{name}: {}", d.render(&c.sources))).remove(0)
}
