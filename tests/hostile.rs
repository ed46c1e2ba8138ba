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

/// A small model of several kernels (a product, a row reduction, pointwise work).
const SMALL: &str = "import \"std/nn.muse\"\nmodel m {\n  input x: f32[B, 16]\n  param w: [16, 8]\n  h = softmax(x @ w)\n  output y = h * h + 1.0\n}\n";

fn kernel_files(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache)
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "so")).collect())
        .unwrap_or_default()
}

/// `muse run` of the small model through `cache`: its printed statistics.
fn run_small(dir: &Path, cache: &Path) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_muse"))
        .args(["run", dir.join("small.muse").to_str().unwrap(), "--device", "cpu", "--validate"])
        .env("MUSE_CACHE_DIR", cache)
        .env("MUSE_CFLAGS", "-O1 -march=native -fopenmp")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        code => Err(format!("exit {code:?}: {err}")),
    }
}

/// Something done to a file.
type Harm = fn(&Path);

/// Damaged kernel cache entries (cut short, changed at the same size, empty) are found by
/// their checksum and compiled again, never loaded (which was SIGBUS, SIGSEGV, or an error
/// forever).
#[test]
fn damaged_kernel_cache_entries_are_rebuilt() {
    let d = scratch("cache");
    std::fs::write(d.join("small.muse"), SMALL).unwrap();
    let cache = d.join("kernels");
    let want = run_small(&d, &cache).unwrap();
    let harms: [(&str, Harm); 3] = [
        ("cut to 1000 bytes", |p| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..1000]).unwrap()
        }),
        ("changed at the same size", |p| {
            let mut b = std::fs::read(p).unwrap();
            let n = b.len();
            b[n / 3..n / 2].fill(0xcc);
            std::fs::write(p, b).unwrap()
        }),
        ("empty", |p| std::fs::write(p, b"").unwrap()),
    ];
    for (what, harm) in harms {
        let libs = kernel_files(&cache);
        assert!(!libs.is_empty());
        libs.iter().for_each(|p| harm(p));
        assert_eq!(run_small(&d, &cache).as_deref(), Ok(want.as_str()), "{what}");
        for p in kernel_files(&cache) {
            assert!(matches!(muse_runtime::cache::read_verified(&p), Ok(Some(_))), "{what}: {} rebuilt", p.display());
        }
    }
    std::fs::remove_dir_all(&d).ok();
}

/// Four processes compile into one empty cache while a fifth writer damages every entry it
/// finds: each process gives the result of a private cache, and the cache ends valid.
#[test]
fn concurrent_compiles_survive_a_cache_being_damaged() {
    let d = scratch("cache-race");
    std::fs::write(d.join("small.muse"), SMALL).unwrap();
    let want = run_small(&d, &d.join("private")).unwrap();
    let cache = d.join("shared");
    std::fs::create_dir_all(&cache).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let vandal = {
        let (stop, cache) = (stop.clone(), cache.clone());
        std::thread::spawn(move || {
            let mut harmed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for p in kernel_files(&cache) {
                    if let Ok(b) = std::fs::read(&p) {
                        if b.len() > 1000 {
                            // In place (not a new file): what a failing disk or a stray writer does.
                            let f = std::fs::OpenOptions::new().write(true).open(&p);
                            if f.and_then(|f| f.set_len(1000)).is_ok() {
                                harmed += 1;
                            }
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            harmed
        })
    };
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (d, cache) = (d.clone(), cache.clone());
            std::thread::spawn(move || run_small(&d, &cache))
        })
        .collect();
    for r in runs {
        assert_eq!(r.join().unwrap().as_deref(), Ok(want.as_str()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let harmed = vandal.join().unwrap();
    assert!(harmed > 0, "the vandal found entries to damage");
    // Whatever it left is found and mended by the next run.
    assert_eq!(run_small(&d, &cache).as_deref(), Ok(want.as_str()));
    for p in kernel_files(&cache) {
        assert!(matches!(muse_runtime::cache::read_verified(&p), Ok(Some(_))), "{} valid", p.display());
    }
    std::fs::remove_dir_all(&d).ok();
}

/// An empty MUSE_CACHE_DIR means the default cache, not the current folder.
#[test]
fn an_empty_cache_variable_is_unset() {
    let d = scratch("empty-var");
    std::fs::write(d.join("small.muse"), SMALL).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_muse"))
        .args(["run", "small.muse", "--device", "cpu"])
        .current_dir(&d)
        .env("MUSE_CACHE_DIR", "")
        .env("XDG_CACHE_HOME", d.join("xdg"))
        .env("MUSE_CFLAGS", "-O1 -march=native -fopenmp")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let here: Vec<String> =
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(here.len(), 2, "only small.muse and xdg/: {here:?}");
    assert!(!kernel_files(&d.join("xdg/muse/kernels")).is_empty());
    std::fs::remove_dir_all(&d).ok();
}

/// Every numeric flag is range-checked, and the message says the range.
#[test]
fn flags_out_of_range_are_refused_with_the_range() {
    let d = scratch("flags");
    let out = d.join("run");
    let out = out.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "models/vq_tokenizer.muse", "--out", out];
        a.extend(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (train(&["--lr=-1"]), "above 0"),
        (train(&["--lr", "nan"]), "not a finite number"),
        (train(&["--batch", "0"]), "at least 1"),
        (train(&["--steps", "0"]), "at least 1"),
        (train(&["--ema", "1"]), "below 1"),
        (train(&["--text-dropout", "2"]), "from 0 to 1"),
        (train(&["--weight-decay=-0.1"]), "at least 0"),
        (train(&["--keep", "0"]), "at least 1"),
        (["sample", "x", "--cfg", "nan"].map(String::from).to_vec(), "not a finite number"),
        (["sample", "x", "--temperature=-1"].map(String::from).to_vec(), "at least 0"),
        (["sample", "x", "--steps", "0"].map(String::from).to_vec(), "at least 1"),
        (["eval", "x", "--batch", "0"].map(String::from).to_vec(), "at least 1"),
        (["run", "models/muse_small.muse", "--batch", "0"].map(String::from).to_vec(), "at least 1"),
        (["inspect", "models/muse_small.muse", "--batch", "0"].map(String::from).to_vec(), "1.."),
    ];
    for (args, why) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&d, &args, &[why]);
    }
    assert!(!Path::new(out).exists(), "nothing ran");
    // A generator's run given as the image tokenizer is named as such.
    let fake = d.join("generator-run");
    std::fs::create_dir_all(&fake).unwrap();
    let config = serde_json::json!({"args": {"model": "models/muse_small.muse"}, "source_hash": "0"});
    std::fs::write(fake.join("config.json"), config.to_string()).unwrap();
    let args = ["train", "models/muse_small.muse", "--tokenizer", fake.to_str().unwrap(), "--out", out];
    refused(&d, &args, &["not of an image tokenizer"]);
    // A run file the objective would not read is refused, not ignored.
    let args = ["train", "models/vq_tokenizer.muse", "--tokenizer", fake.to_str().unwrap(), "--out", out];
    refused(&d, &args, &["an image tokenizer, which does not use --tokenizer"]);
    let args = ["train", "models/muse_small.muse", "--generator", fake.to_str().unwrap(), "--out", out];
    refused(&d, &args, &["a masked-token model, which does not use --generator"]);
    assert!(!Path::new(out).join("config.json").exists(), "no run was started");
    std::fs::remove_dir_all(&d).ok();
}

/// Two `muse train` processes on one `--out`: the second is refused with the first's PID
/// and writes nothing; the first's run is whole.
#[test]
fn a_second_trainer_on_one_run_directory_is_refused() {
    let d = scratch("two-trainers");
    let out = d.join("run");
    let args = |steps: &str| {
        let mut a: Vec<String> = ["train", "models/vq_tokenizer.muse", "--batch", "2", "--device", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for s in ["resolution=8", "channels=4", "levels=1", "codebook=8", "code_dim=4", "groups=2"] {
            a.extend(["--set".to_string(), s.to_string()]);
        }
        a.extend(["--steps".into(), steps.into(), "--checkpoint-every".into(), "50".into()]);
        a.extend(["--out".into(), out.to_str().unwrap().into()]);
        a
    };
    let mut first = Command::new(env!("CARGO_BIN_EXE_muse"))
        .args(args("1000000"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MUSE_CACHE_DIR", d.join("kernels"))
        .env("MUSE_CFLAGS", "-O1 -march=native -fopenmp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until the first holds the lock and has written a checkpoint.
    let started = std::time::Instant::now();
    while !out.join("latest.json").exists() {
        assert!(started.elapsed().as_secs() < 120, "the first trainer never checkpointed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    let second: Vec<String> = args("10");
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let err = refused(&d, &second, &["in use", &format!("PID {}", first.id())]);
    let mut resume = vec!["train", "--resume", out.to_str().unwrap()];
    refused(&d, &resume, &["in use"]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(std::fs::read_to_string(out.join("config.json")).unwrap(), config, "{err}");
    // Once the first is gone its run resumes.
    resume.extend(["--steps", "60"]);
    let (code, err) = muse_in(&d, &resume);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(&d).ok();
}
