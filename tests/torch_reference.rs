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
use std::path::Path;

mod common;

fn floats(file: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = checkpoint::load(file).unwrap().remove(name).unwrap_or_else(|| panic!("{name} in {}", file.display()));
    let Data::F(v) = &t.data else { panic!("{name} is not float") };
    (v.iter().map(|&x| x as f32).collect(), t.shape.clone())
}

#[test]
fn the_fid_inception_gives_pytorch_fids_features() {
    let Some(dir) = common::torch::reference("inception") else { return };
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
    let Some(dir) = common::torch::reference("clip") else { return };
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

#[test]
fn clips_tokenizer_and_image_preprocessing_match_transformers() {
    use muse_train::eval::clip::{for_clip_bytes, ClipTokenizer};
    let Some(dir) = common::torch::reference("clip_io") else { return };
    // transformers' CLIPTokenizer, saved as tokenizer.json, against its own ids.
    let tok = ClipTokenizer::open(&dir.join("tok/tokenizer.json")).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("captions.json")).unwrap()).unwrap();
    for (i, caption) in want["captions"].as_array().unwrap().iter().enumerate() {
        let (ids, mask) = tok.encode(caption.as_str().unwrap()).unwrap();
        let ids_want: Vec<i32> =
            want["input_ids"][i].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
        let mask_want: Vec<bool> =
            want["attention_mask"][i].as_array().unwrap().iter().map(|v| v.as_i64() == Some(1)).collect();
        assert_eq!(ids, ids_want, "{caption}");
        assert_eq!(mask, mask_want, "{caption}");
    }
    // CLIPImageProcessorPil: PIL bicubic to 224 (bit for bit), CLIP's mean and std.
    let images = checkpoint::load(&dir.join("images.safetensors")).unwrap();
    let Data::I(bytes) = &images["images"].data else { panic!("8-bit images as integers") };
    let bytes: Vec<u8> = bytes.iter().map(|&b| b as u8).collect();
    let n = images["images"].shape[0];
    let ours = for_clip_bytes(&bytes, n, 16);
    let theirs = images["pixel_values"].to_f64();
    let worst = ours.iter().zip(&theirs).fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    assert!(worst < 1e-5, "worst {worst} (one 8-bit level is {})", 1.0 / 255.0 / 0.27);
    std::fs::remove_dir_all(&dir).ok();
}
