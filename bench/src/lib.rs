//! What the benchmark programs share.

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
