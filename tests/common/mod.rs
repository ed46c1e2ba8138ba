//! Helpers shared by the cross-crate tests.
#![allow(dead_code)]

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
    let opts = Options { overrides: sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), model: None };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(format!("{name}.muse"));
    let c = muse_compiler::compile_path(&path, &opts);
    match c.result {
        Ok(mut m) => m.remove(0),
        Err(d) => panic!("{name}: {}", d.render(&c.sources)),
    }
}
