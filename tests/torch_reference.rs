//! muse's feature networks against PyTorch itself: scripts/torch_reference.py builds each
//! network with random weights (pytorch-fid's FID Inception-v3, transformers' CLIP
//! ViT-B/32; no download), and muse must give the same features from the same weights and
//! inputs. Skipped, saying how to run it,
//! where no Python with torch, torchvision, pytorch-fid, transformers and safetensors is found
//! (scripts/fetch-torch.sh makes one; `MUSE_TORCH_PYTHON` names another);
//! `MUSE_REQUIRE_TORCH=1` makes that a failure instead.

use muse_runtime::device::{DeviceKind, DeviceOptions};
use muse_runtime::{checkpoint, select, Data};
use muse_train::eval::features::FeatureNet;
use muse_train::eval::preprocess::resize_bilinear;
use std::path::{Path, PathBuf};

mod common;
use std::process::Command;

/// A Python with PyTorch and the packages the reference script needs (`MUSE_TORCH_PYTHON`,
/// else scripts/fetch-torch.sh's, else `python3`), or why there is none.
fn torch_python() -> Result<String, String> {
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
fn reference(what: &str) -> Option<PathBuf> {
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

fn floats(file: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = checkpoint::load(file).unwrap().remove(name).unwrap_or_else(|| panic!("{name} in {}", file.display()));
    let Data::F(v) = &t.data else { panic!("{name} is not float") };
    (v.iter().map(|&x| x as f32).collect(), t.shape.clone())
}

#[test]
fn the_fid_inception_gives_pytorch_fids_features() {
    let Some(dir) = reference("inception") else { return };
    let device = select(DeviceKind::Cpu, &DeviceOptions::default()).unwrap().device;
    let mut net = FeatureNet::inception(&dir.join("weights.safetensors"), device.as_ref()).unwrap();
    assert_eq!((net.resolution, net.dim), (299, 2048));
    let (image, shape) = floats(&dir.join("inputs.safetensors"), "image");
    let n = shape[0];
    let ours = net.features(&image, n).unwrap();
    let (theirs, _) = floats(&dir.join("expected.safetensors"), "features");
    let scale = theirs.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let worst = ours.iter().zip(&theirs).fold(0f64, |m, (a, &b)| m.max((a - b as f64).abs()));
    assert!(scale > 1.0, "features of some size: {scale}");
    assert!(worst / scale < 1e-4, "worst difference {worst} of features up to {scale}");
    // pytorch-fid's preprocessing: bilinear to 299 (align_corners=False), then 2x - 1.
    let (small, s) = floats(&dir.join("inputs.safetensors"), "small");
    let (resized, _) = floats(&dir.join("inputs.safetensors"), "resized");
    let per = s[1] * s[2] * 3;
    for i in 0..s[0] {
        let r = resize_bilinear(&small[i * per..(i + 1) * per], s[1], s[2], 3, 299, 299);
        let want = &resized[i * 299 * 299 * 3..(i + 1) * 299 * 299 * 3];
        let worst = r.iter().zip(want).fold(0f32, |m, (a, b)| m.max((2.0 * a - 1.0 - b).abs()));
        assert!(worst < 1e-5, "image {i}: resized differs by {worst}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn clip_gives_transformers_embeddings() {
    let Some(dir) = reference("clip") else { return };
    let m = common::compile_model("clip_vit_b32", &[]);
    assert_eq!(m.graph.param_count(), 151_277_313, "ViT-B/32's parameter count");
    let params = checkpoint::load_params(&m.graph, &dir.join("weights.safetensors")).unwrap();
    let inputs = checkpoint::load(&dir.join("inputs.safetensors")).unwrap();
    let device = select(DeviceKind::Cpu, &DeviceOptions::default()).unwrap().device;
    let wanted: Vec<_> = m.graph.outputs.iter().map(|o| o.1).collect();
    let mut program = device.compile(&m.graph, &wanted).unwrap();
    let out = program.run(&inputs, &params, 0).unwrap();
    let expected = checkpoint::load(&dir.join("expected.safetensors")).unwrap();
    for (name, node) in &m.graph.outputs {
        let (ours, theirs) = (out[node].to_f64(), expected[name].to_f64());
        let scale = theirs.iter().fold(0f64, |a, v| a.max(v.abs()));
        let worst = ours.iter().zip(&theirs).fold(0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(scale > 1e-3 && worst / scale < 1e-4, "{name}: worst {worst} of values up to {scale}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
