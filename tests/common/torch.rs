//! The reference outputs of PyTorch (scripts/torch_reference.py) for the tests that compare
//! with it, and the Python that makes them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A Python with PyTorch and the packages the reference script needs (`MUSE_TORCH_PYTHON`,
/// else scripts/fetch-torch.sh's, else `python3`), or why there is none.
pub fn torch_python() -> Result<String, String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("muse/torch-2.15.0/bin/python"))
        .filter(|p| p.is_file());
    let py = std::env::var("MUSE_TORCH_PYTHON")
        .ok()
        .or_else(|| cache.map(|p| p.display().to_string()))
        .unwrap_or_else(|| "python3".into());
    let probe =
        Command::new(&py).args(["-c", "import torch, torchvision, pytorch_fid, transformers, safetensors"]).output();
    match probe {
        Ok(o) if o.status.success() => Ok(py),
        Ok(o) => {
            Err(format!("{py} lacks a package: {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")))
        }
        Err(e) => Err(format!("{py}: {e}")),
    }
}

/// Runs the reference script for `what` into a fresh folder; `None` when skipped.
pub fn reference(what: &str) -> Option<PathBuf> {
    let py = match torch_python() {
        Ok(py) => py,
        Err(why) => {
            let how = "run scripts/fetch-torch.sh once, or set MUSE_TORCH_PYTHON to a Python that has them";
            assert!(std::env::var_os("MUSE_REQUIRE_TORCH").is_none(), "MUSE_REQUIRE_TORCH is set but {why}");
            eprintln!("skipped: {why} ({how})");
            return None;
        }
    };
    let out = std::env::temp_dir().join(format!("muse-torch-{what}-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/torch_reference.py");
    let run = Command::new(&py).arg(&script).arg(what).arg(&out).output().expect("run the reference script");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    Some(out)
}
