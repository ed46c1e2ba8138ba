//! What a hostile or careless user does to the `muse` program (the cases of docs/testing.md's
//! "Failure cases" table): each ends in a clear error, exit code 1 or 2, never a panic
//! (101), an abort (134) or a hang, and never in loss of a run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The budget these tests run at, whatever the machine's memory.
const BUDGET: &str = "2G";

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("muse-hostile-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn muse_in(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_muse"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MUSE_MEMORY_LIMIT", BUDGET)
        .env("MUSE_CACHE_DIR", dir.join("kernels"))
        .env("MUSE_CFLAGS", "-O1 -march=native -fopenmp")
        .stdin(Stdio::null())
        .output()
        .expect("run muse");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs muse and requires a clean failure whose message has every one of `wanted`.
#[track_caller]
fn refused(dir: &Path, args: &[&str], wanted: &[&str]) -> String {
    let (code, err) = muse_in(dir, args);
    assert!(
        (code == 1 || code == 2) && !err.contains("panicked") && !err.contains("memory allocation"),
        "muse {}: exit {code}\n{err}",
        args.join(" ")
    );
    for w in wanted {
        assert!(err.contains(w), "muse {}: no `{w}` in\n{err}", args.join(" "));
    }
    err
}

#[test]
fn sizes_of_zero_are_shape_errors_at_the_line_that_makes_them() {
    let d = scratch("zero");
    for cmd in ["check", "run", "grad", "inspect"] {
        let err = refused(&d, &[cmd, "models/muse_small.muse", "--set", "dim=0"], &["muse::shape", "with a size of 0"]);
        assert!(err.contains("std/nn.muse:27"), "the embedding's parameter declaration: {err}");
    }
    refused(&d, &["run", "models/vq_tokenizer.muse", "--set", "channels=0"], &["with a size of 0"]);
    refused(&d, &["run", "models/vq_tokenizer.muse", "--set", "codebook=0"], &["with a size of 0"]);
    // Was "0*B is not divisible by 0*B".
    refused(&d, &["check", "models/muse_small.muse", "--set", "grid=0"], &["i32[B, 0]"]);
    refused(&d, &["check", "models/muse_small.muse", "--set", "dim=-8"], &["muse::shape"]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn tensors_beyond_the_memory_budget_are_refused_before_allocation() {
    let d = scratch("budget");
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let input = write("input.muse", "model m {\n  input x: f32[B, 100000, 100000]\n  output y = x * 2.0\n}\n");
    let err =
        refused(&d, &["run", &input, "--device", "interp"], &["muse::limit", "f32[B, 100000, 100000]", "37.3 GiB"]);
    assert!(err.contains("input.muse:2"), "{err}");
    refused(&d, &["run", &input, "--device", "cpu"], &["muse::limit"]);
    let linear =
        write("linear.muse", "model m {\n  input x: f32[B, 4]\n  param w: [4000000, 4000000]\n  output y = x\n}\n");
    refused(&d, &["check", &linear], &["muse::limit", "58.2 TiB"]);
    // Fits at batch 1, not at a hundred million.
    let err = refused(
        &d,
        &["run", "models/muse_small.muse", "--batch", "100000000", "--device", "cpu"],
        &["would be", "more than the memory budget of 2.0 GiB"],
    );
    assert!(err.contains("100000000"), "{err}");
    // Compile-time values doubled in a repeat.
    let s = write(
        "str.muse",
        "model m {\n  s = \"ab\"\n  repeat 64 {\n    s = s + s\n  }\n  input x: f32[B, 4]\n  output y = x\n}\n",
    );
    refused(&d, &["check", &s], &["muse::limit", "compile-time string"]);
    let l = write(
        "list.muse",
        "model m {\n  l = [1]\n  repeat 64 {\n    l = l + l\n  }\n  input x: f32[B, 4]\n  output y = x\n}\n",
    );
    refused(&d, &["check", &l], &["compile-time list"]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn sources_users_really_write_are_read_or_named_briefly() {
    let d = scratch("source");
    // A byte-order mark is not an invisible unexpected character.
    let bom = d.join("bom.muse");
    std::fs::write(&bom, "\u{feff}model m {\n  input x: f32[B, 4]\n  output y = x * 2.0\n}\n").unwrap();
    let (code, err) = muse_in(&d, &["check", bom.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // A megabyte identifier is named in a few hundred bytes, not echoed in full.
    let long = d.join("long.muse");
    let name = "a".repeat(1_000_000);
    std::fs::write(&long, format!("model m {{\n  input x: f32[B, 4]\n  output y = {name}\n}}\n")).unwrap();
    let err =
        refused(&d, &["check", long.to_str().unwrap()], &["unknown name", "(1000002 characters)", "long.muse:3:"]);
    assert!(err.len() < 2000, "{} bytes of error", err.len());
    std::fs::remove_dir_all(&d).ok();
}

/// Progress lines go to stderr: a reader of `muse train ... 2>&1 | head` that goes away
/// must not end the run in a panic.
#[test]
fn training_outlives_a_closed_stderr() {
    let d = scratch("stderr");
    let out = d.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_muse"))
        .args(["train", "models/vq_tokenizer.muse", "--steps", "60", "--batch", "2", "--device", "cpu"])
        .args(["--set", "resolution=8", "--set", "channels=4", "--set", "levels=1", "--set", "codebook=8"])
        .args(["--set", "code_dim=4", "--set", "groups=2", "--out", out.to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MUSE_CACHE_DIR", d.join("kernels"))
        .env("MUSE_CFLAGS", "-O1 -march=native -fopenmp")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let latest = std::fs::read_to_string(out.join("latest.json")).unwrap();
    assert!(latest.contains("\"step\":60"), "{latest}");
    std::fs::remove_dir_all(&d).ok();
}
