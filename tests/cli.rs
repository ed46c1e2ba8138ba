//! The `muse` program as a user runs it: exit codes, what goes to stdout and stderr.

use std::path::PathBuf;
use std::process::Command;

fn muse(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_muse"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run muse");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn model_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "muse"))
        .map(|p| format!("models/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    v.sort();
    v
}

#[test]
fn check_every_model() {
    let files = model_files();
    let mut args = vec!["check"];
    args.extend(files.iter().map(String::as_str));
    let (code, out, err) = muse(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches(" ok\n").count(), files.len());
    assert_eq!(out.matches("  parameters: ").count(), files.len());
    assert!(out.contains("models/mamba_xattn_xz.muse: model mamba_xattn_xz ok"));
    assert!(out.contains("outputs: logits f32[B, 64, 256]"));
}

#[test]
fn check_with_overrides_prints_the_larger_count() {
    let (_, small, _) = muse(&["check", "models/muse_small.muse"]);
    let (code, big, err) = muse(&["check", "models/muse_small.muse", "--set", "depth=12", "--set", "dim=256"]);
    assert_eq!(code, 0, "{err}");
    let count = |s: &str| -> i64 {
        let line = s.lines().find(|l| l.contains("parameters:")).unwrap();
        line.split_whitespace().nth(1).unwrap().replace(',', "").parse().unwrap()
    };
    assert!(count(&big) > 4 * count(&small));
}

#[test]
fn bad_override_and_bad_file_fail_with_diagnostics() {
    let (code, _, err) = muse(&["check", "models/muse_small.muse", "--set", "depht=3"]);
    assert_eq!(code, 1);
    assert!(err.contains("muse::unknown_config_key") && err.contains("did you mean `depth`?"), "{err}");
    let (code, _, err) = muse(&["check", "models/muse_small.muse", "--set", "depth"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected KEY=VALUE"), "{err}");
    let (code, _, err) = muse(&["check", "no/such/file.muse"]);
    assert_eq!(code, 1);
    assert!(err.contains("muse::import") && err.contains("cannot read"), "{err}");
}

#[test]
fn malformed_file_reports_line_and_column() {
    let dir = std::env::temp_dir().join(format!("muse-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.muse");
    std::fs::write(&f, "model m {\n  input x: f32[B, 4]\n  output y = x @ x\n}\n").unwrap();
    let (code, out, err) = muse(&["check", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("muse::shape") && err.contains("bad.muse:3:14"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn graph_as_text_and_dot() {
    let (code, text, err) = muse(&["graph", "models/mamba_xattn_xz.muse"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.starts_with("# model mamba_xattn_xz ("));
    assert!(text.contains("= scan "));
    assert!(text.contains("param layers.0.mixer.in_proj.weight"));
    let (code, dot, _) = muse(&["graph", "--dot", "models/mamba_xattn_xz.muse"]);
    assert_eq!(code, 0);
    assert!(dot.starts_with("digraph"));
    assert!(dot.trim_end().ends_with('}'));
}

#[test]
fn run_grad_and_backward_graph() {
    let tiny = [
        "--set",
        "depth=1",
        "--set",
        "dim=8",
        "--set",
        "heads=2",
        "--set",
        "codebook=7",
        "--set",
        "grid=2",
        "--set",
        "text_len=3",
        "--set",
        "text_vocab=11",
        "--set",
        "text_depth=1",
        "--set",
        "d_state=2",
    ];
    let mut args = vec!["run", "models/mamba_xattn_xz.muse", "--seed", "3"];
    args.extend(tiny);
    let (code, out, err) = muse(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("output logits [2, 4, 7] f32: mean"), "{out}");
    assert!(out.contains("loss masked_ce [] f32: mean"), "{out}");
    let (_, again, _) = muse(&args);
    assert_eq!(out, again, "a seeded run is reproducible");

    args[0] = "grad";
    let (code, out, err) = muse(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("layers.0.mixer.in_proj.weight"), "{out}");
    assert!(out.contains("global norm"), "{out}");
    assert!(!out.contains("no gradient reaches"), "{out}");
    // --profile: the time by kernel kind, the whole pass timed as one, the slowest kernels.
    args.push("--profile");
    let (code, _, err) = muse(&args);
    assert_eq!(code, 0, "{err}");
    let line = err.lines().find(|l| l.starts_with("profile: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("ms the whole pass, median of 5") && line.contains("matmul"), "{line}");
    assert!(err.lines().filter(|l| l.contains(" GF/s ")).count() >= 5, "{err}");

    let (code, out, _) = muse(&["graph", "--stats", "models/muse_small.muse"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("muse_small: forward 1104 nodes, backward "), "{out}");
    let (code, out, _) = muse(&["graph", "--backward", "models/muse_small.muse"]);
    assert_eq!(code, 0);
    assert!(out.contains("# grad of layers.0.layer.self_attn"), "{out}");

    let (code, _, err) = muse(&["run", "models/muse_small.muse", "--params", "no/such.safetensors"]);
    assert_eq!(code, 1);
    assert!(err.contains("no/such.safetensors"), "{err}");
}

#[test]
fn inspect_table_and_html_page() {
    let (code, out, err) = muse(&["inspect", "models/mamba_xattn_xz.muse", "--set", "depth=1"]);
    assert_eq!(code, 0, "{err}");
    let is_row = |l: &str| {
        let mut w = l.split_whitespace();
        w.next().is_some_and(|t| t.parse::<usize>().is_ok())
            && w.next().is_some_and(|k| {
                let kernel = |k: &str| k.starts_with('k') && k[1..].parse::<usize>().is_ok();
                k == "gemm" || k.strip_prefix("gemm+").is_some_and(kernel) || kernel(k)
            })
    };
    let kernels = out.lines().filter(|l| is_row(l)).count();
    assert!(out.contains(&format!("{kernels} kernels; values written to memory, by reason:")), "{out}");
    assert!(out.contains(" scan ") && out.contains(" row ") && out.contains("memory at batch 8"), "{out}");
    let dir = std::env::temp_dir().join(format!("muse-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("p.html");
    let (code, _, err) =
        muse(&["inspect", "models/mamba_xattn_xz.muse", "--set", "depth=1", "--html", page.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg"));
    assert_eq!(html.matches("<g class=\"kernel ").count(), kernels, "one box per kernel");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "self-contained");
    // The embedded data cannot close its script element early.
    let data = html.split("<script id=\"kernels\" type=\"application/json\">").nth(1).unwrap();
    let data = data.split("</script>").next().unwrap();
    assert!(data.starts_with('[') && data.ends_with(']') && !data.contains('<'));
    let (code, out, _) =
        muse(&["inspect", "models/mamba_xattn_xz.muse", "--set", "depth=1", "--kernel", "1", "--emit", "c"]);
    assert_eq!(code, 0);
    assert!(out.contains("void k1(void **bufs, const int64_t *sizes, uint64_t seed)"), "{out}");
    // CUDA source needs no GPU: `--emit cuda` renders it (the simulation's source is the GPU's).
    let (code, out, err) =
        muse(&["inspect", "models/mamba_xattn_xz.muse", "--set", "depth=1", "--kernel", "1", "--emit", "cuda"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("__global__ void __launch_bounds__(256) k1("), "{out}");
    // With NVRTC here, each kernel comes with ptxas's report.
    if muse_runtime::cuda::libs::nvrtc().is_ok() {
        assert!(out.contains("sm_90 (NVRTC ") && out.contains(" registers, 0 B spilled"), "{out}");
    }
    let (code, _, err) = muse(&["inspect", "models/mamba_xattn_xz.muse", "--device", "interp"]);
    assert_eq!(code, 2);
    assert!(err.contains("no kernels to inspect"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `muse check models/*.muse | head -1`: a reader that closes the pipe early is no error
/// (the output is written at once, and a broken pipe ends the program quietly).
#[test]
fn a_closed_pipe_is_not_an_error() {
    let files = model_files();
    let mut child = Command::new(env!("CARGO_BIN_EXE_muse"))
        .arg("check")
        .args(&files)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run muse");
    // Closed long before the models are compiled and the report is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("muse ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{:?}: {err}", out.status);
}

/// The run configuration is defined once: what the command line gives is what config.json
/// keeps and `--resume` reloads; with `--resume` only the run's length may change
/// (`--steps N` or `--steps=N`), and any other setting is refused by name.
#[test]
fn resume_takes_the_stored_configuration_and_refuses_other_settings() {
    let dir = std::env::temp_dir().join(format!("muse-cli-resume-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    let cache = dir.join("kernels");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_muse"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("MUSE_CACHE_DIR", &cache)
            .env("MUSE_CFLAGS", "-O1 -march=native -fopenmp")
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let sets = ["--set", "resolution=8", "--set", "channels=4", "--set", "levels=1", "--set", "codebook=8"];
    let mut args = vec!["train", "models/vq_tokenizer.muse", "--steps", "2", "--batch", "2", "--lr", "0.002"];
    args.extend(["--stage", "8:1:3", "--stage", "8:2", "--out", out, "--set", "code_dim=4", "--set", "groups=2"]);
    args.extend(sets);
    let (ok, err) = run(&args);
    assert!(ok, "{err}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/config.json")).unwrap()).unwrap();
    let a = &config["args"];
    assert_eq!((a["lr"].as_f64(), a["batch"].as_u64(), a["steps"].as_u64()), (Some(0.002), Some(2), Some(2)));
    assert_eq!(a["stages"], serde_json::json!([[8, 1, 3, 1], [8, 2, 2, 1]]), "stage batches default to --batch");
    assert_eq!(a["sets"][0], serde_json::json!(["code_dim", "4"]));
    let (ok, err) = run(&["train", "--resume", out, "--lr", "0.1", "--set", "depth=3"]);
    assert!(!ok && err.contains("not --lr, --set"), "{err}");
    let (ok, err) = run(&["train", "models/vq_tokenizer.muse", "--resume", out]);
    assert!(!ok && err.contains("not both"), "{err}");
    let (ok, err) = run(&["train", "--resume", out, "--steps=3"]);
    assert!(ok, "{err}");
    let lines = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 3, "resumed to step 3");
    let (ok, err) = run(&["train", "models/vq_tokenizer.muse", "--batch", "0"]);
    assert!(!ok && err.contains("--batch") && err.contains("at least 1"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_and_grad_read_inputs_from_safetensors_and_save_in_f64() {
    use muse_runtime::{checkpoint, Data, HostTensor};
    let dir = std::env::temp_dir().join(format!("muse-cli-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.muse");
    std::fs::write(
        &file,
        "model scale {\n  input x: f32[B, 3]\n  input keep: bool[B, 3]\n  param w: [3] ~ ones\n  \
         output y = x * w * 2.0\n  loss l = sum(where(keep, x * w, 0.0))\n}\n",
    )
    .unwrap();
    // Values no f32 holds: an f64 run must give them back exactly.
    let x = [0.1, 1.0 / 3.0, -2.7, 1e-9, 7.25, 0.3];
    let keep = [true, false, true, true, true, false];
    let inputs = dir.join("in.safetensors");
    let tensors = [
        ("x".to_string(), HostTensor::f(&[2, 3], x.to_vec())),
        ("keep".to_string(), HostTensor::b(&[2, 3], keep.to_vec())),
        ("unused".to_string(), HostTensor::i(&[1], vec![5])),
    ];
    checkpoint::save_as(&inputs, &tensors.into_iter().collect(), checkpoint::FloatWidth::F64).unwrap();
    let (f, i, o) = (file.to_str().unwrap(), inputs.to_str().unwrap(), dir.join("out.safetensors"));
    let (code, out, err) =
        muse(&["run", f, "--inputs", i, "--f64", "--device", "interp", "--save", o.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("batch 2"), "the batch comes from the file: {out}");
    let saved = checkpoint::load(&o).unwrap();
    let Data::F(y) = &saved["y"].data else { panic!("y is float") };
    let want: Vec<f64> = x.iter().map(|v| v * 2.0).collect();
    assert_eq!(y, &want, "f64 in, f64 out");
    let raw = std::fs::read(&o).unwrap();
    assert!(String::from_utf8_lossy(&raw[..200.min(raw.len())]).contains("F64"), "stored as F64");
    // Gradients under grad/NAME: d l / d w_j = sum of x[b, j] where kept.
    let (code, _, err) =
        muse(&["grad", f, "--inputs", i, "--f64", "--device", "interp", "--save", o.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let saved = checkpoint::load(&o).unwrap();
    let Data::F(g) = &saved["grad/w"].data else { panic!("a float gradient") };
    let want: Vec<f64> = (0..3).map(|j| (0..2).filter(|b| keep[b * 3 + j]).map(|b| x[b * 3 + j]).sum()).collect();
    assert_eq!(g, &want);
    // What is wrong with a file is said.
    let bad = dir.join("bad.safetensors");
    checkpoint::save(&bad, &[("x".to_string(), HostTensor::f(&[2, 3], x.to_vec()))].into()).unwrap();
    let (code, _, err) = muse(&["run", f, "--inputs", bad.to_str().unwrap(), "--device", "interp"]);
    assert_eq!(code, 1);
    assert!(err.contains("input `keep` is not in the file (it has: x)"), "{err}");
    let wrong = [
        ("x".to_string(), HostTensor::f(&[2, 3], x.to_vec())),
        ("keep".to_string(), HostTensor::b(&[3, 3], vec![true; 9])),
    ];
    checkpoint::save(&bad, &wrong.into_iter().collect()).unwrap();
    let (code, _, err) = muse(&["run", f, "--inputs", bad.to_str().unwrap(), "--device", "interp"]);
    assert!(code == 1 && err.contains("`B` is 2 in input"), "{err}");
    let (code, _, err) = muse(&["run", f, "--inputs", "/nonexistent.safetensors", "--device", "interp"]);
    assert!(code == 1 && err.contains("--inputs") && err.contains("nonexistent"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fid_of_two_feature_files_is_pytorch_fids() {
    // The fixtures' reference value (pytorch-fid's formula on the same .npy files).
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/fid/expected.json").unwrap()).unwrap();
    let want = expected["cases"][0]["fid"].as_f64().unwrap();
    let (code, out, err) = muse(&["fid", "tests/fixtures/fid/relu_a.npy", "tests/fixtures/fid/relu_b.npy"]);
    assert_eq!(code, 0, "{err}");
    let got: f64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((got - want).abs() < 1e-3 * want, "{got} vs {want}");
    assert!(out.contains("600 and 500 images"), "{out}");
    let (code, _, err) = muse(&["fid", "shapes", "tests/fixtures/fid/relu_a.npy"]);
    assert!(code == 1 && err.contains("--fid-weights"), "{err}");
    let (code, _, err) = muse(&["fid", "nowhere", "shapes"]);
    assert!(code == 1 && err.contains("not a folder of images"), "{err}");
}
