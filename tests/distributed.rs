//! Data-parallel training under `mpirun` (Open MPI from the distribution's packages): two
//! ranks give the losses and weights of one process taking the same global batch, runs
//! resume across numbers of ranks, and a rank that dies ends the run promptly with a message
//! naming it. Skipped with a note where `mpirun` is missing; CI requires it
//! (`MUSE_REQUIRE_MPI=1`, `.ci/run` installs Open MPI).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mpirun_present() -> bool {
    let found = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("MUSE_REQUIRE_MPI").as_deref() != Ok("1"),
            "MUSE_REQUIRE_MPI=1 but mpirun is missing: install openmpi-bin and libopenmpi-dev"
        );
        eprintln!("mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev): data-parallel tests skipped");
    }
    found
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("muse-dist-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `muse ARGS` on `ranks` processes (`mpirun -np N` when more than one).
fn muse(ranks: usize, dir: &Path, args: &[&str]) -> Command {
    let exe = env!("CARGO_BIN_EXE_muse");
    let mut c = if ranks > 1 {
        let mut c = Command::new("mpirun");
        // Root in containers, more ranks than cores on small machines: both allowed here.
        c.args(["-np", &ranks.to_string(), "--oversubscribe", exe]);
        c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        c
    } else {
        Command::new(exe)
    };
    c.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MUSE_CACHE_DIR", dir.join("kernels"))
        .env("MUSE_CFLAGS", "-O1 -march=native -fopenmp")
        // One core per rank, as the ranks of one machine share it.
        .env("OMP_NUM_THREADS", "1");
    c
}

fn succeed(mut c: Command) -> Output {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{:?}\n{}", c, String::from_utf8_lossy(&o.stderr));
    o
}

const GENERATOR: &[&str] = &[
    "models/mamba_xattn_xz.muse",
    "--set",
    "dim=32",
    "--set",
    "depth=2",
    "--set",
    "heads=2",
    "--set",
    "text_depth=1",
    "--set",
    "text_vocab=64",
    "--set",
    "text_len=12",
    "--set",
    "d_state=4",
    "--samples",
    "256",
    "--batch",
    "4",
    "--accumulate",
    "2",
    "--warmup",
    "5",
    "--checkpoint-every",
    "10",
    "--device",
    "cpu",
];

/// A tiny image tokenizer for the generator's tokens.
fn tokenizer(dir: &Path) -> PathBuf {
    let vq = dir.join("vq");
    let sets = ["resolution=8", "channels=8", "levels=1", "codebook=32", "code_dim=8", "groups=2"];
    let mut args = vec!["train", "models/vq_tokenizer.muse", "--steps", "30", "--batch", "8", "--lr", "3e-3"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    args.extend(["--warmup", "5", "--device", "cpu", "--out", vq.to_str().unwrap()]);
    succeed(muse(1, dir, &args));
    vq
}

fn generator(ranks: usize, dir: &Path, vq: &Path, out: &Path, steps: &str) -> Output {
    let mut args = vec!["train"];
    args.extend(GENERATOR);
    args.extend(["--tokenizer", vq.to_str().unwrap(), "--steps", steps, "--out", out.to_str().unwrap()]);
    succeed(muse(ranks, dir, &args))
}

fn resume(ranks: usize, dir: &Path, run: &Path, steps: &str) -> Output {
    succeed(muse(ranks, dir, &["train", "--resume", run.to_str().unwrap(), "--steps", steps]))
}

/// (step, loss) of every metrics line.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn weights(run: &Path, step: u64) -> muse_runtime::Tensors {
    muse_runtime::checkpoint::load(&run.join(format!("checkpoints/step-{step:08}.safetensors"))).unwrap()
}

#[track_caller]
fn assert_same_run(a: &Path, b: &Path, step: u64) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), lb.len());
    for ((sa, x), (sb, y)) in la.iter().zip(&lb) {
        assert_eq!(sa, sb);
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "step {sa}: loss {x} vs {y}");
    }
    let (wa, wb) = (weights(a, step), weights(b, step));
    assert_eq!(wa.keys().collect::<std::collections::BTreeSet<_>>(), wb.keys().collect());
    for (k, t) in &wa {
        let (x, y) = (t.to_f64(), wb[k].to_f64());
        let scale = x.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let worst = x.iter().zip(&y).fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst <= 1e-5 * scale, "{k}: differs by {worst} at scale {scale}");
    }
}

#[test]
fn two_ranks_train_as_one_process_and_resume_across_rank_counts() {
    if !mpirun_present() {
        return;
    }
    let dir = scratch("equal");
    let vq = tokenizer(&dir);
    let (one, two) = (dir.join("one"), dir.join("two"));
    generator(1, &dir, &vq, &one, "20");
    let out = generator(2, &dir, &vq, &two, "20");
    // Rank 0 alone speaks for the run and writes it.
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.matches("trained ").count(), 1, "{said}");
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(two.join("metrics.jsonl")).unwrap().lines().last().unwrap())
            .unwrap();
    assert_eq!(last["ranks"], 2);
    assert!(last["allreduce_s"].as_f64().unwrap() > 0.0);
    assert_same_run(&one, &two, 20);
    // bf16 on the wire: the same first loss (no update yet), then close to f32's, not equal.
    let narrow = dir.join("narrow");
    let mut args = vec!["train", "--reduce-dtype", "bf16"];
    args.extend(GENERATOR);
    args.extend(["--tokenizer", vq.to_str().unwrap(), "--steps", "20", "--out", narrow.to_str().unwrap()]);
    succeed(muse(2, &dir, &args));
    let (wide, thin) = (losses(&two), losses(&narrow));
    assert_eq!(wide[0], thin[0]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(narrow.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["args"]["reduce_dtype"], "bf16", "{config}");
    let (wa, wb) = (weights(&two, 20), weights(&narrow, 20));
    let mut moved = 0.0f64;
    for (k, t) in &wa {
        let (x, y) = (t.to_f64(), wb[k].to_f64());
        let scale = x.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let worst = x.iter().zip(&y).fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst <= 5e-2 * scale, "{k}: bf16 on the wire moved it by {worst} at scale {scale}");
        moved = moved.max(worst);
    }
    assert!(moved > 0.0, "--reduce-dtype bf16 changed nothing");
    // A two-rank checkpoint resumed by one process, and a one-process checkpoint by two.
    let (two_then_one, one_then_two) = (dir.join("two-then-one"), dir.join("one-then-two"));
    succeed({
        let mut c = Command::new("cp");
        c.args(["-r", two.to_str().unwrap(), two_then_one.to_str().unwrap()]);
        c
    });
    succeed({
        let mut c = Command::new("cp");
        c.args(["-r", one.to_str().unwrap(), one_then_two.to_str().unwrap()]);
        c
    });
    resume(1, &dir, &two_then_one, "30");
    resume(2, &dir, &one_then_two, "30");
    assert_same_run(&two_then_one, &one_then_two, 30);
    // A global batch the ranks cannot share is refused before anything runs.
    let mut args = vec!["train"];
    args.extend(GENERATOR.iter().map(|a| if *a == "2" { "3" } else { a }));
    assert!(args.windows(2).any(|w| w == ["--accumulate", "3"]));
    let bad = dir.join("bad");
    args.extend(["--tokenizer", vq.to_str().unwrap(), "--out", bad.to_str().unwrap()]);
    let o = muse(2, &dir, &args).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("multiple of 2"));
    assert!(!bad.exists(), "nothing written");
    std::fs::remove_dir_all(&dir).ok();
}

/// The image tokenizer with its discriminator (from step 20) and dead-code re-seeding (at
/// step 50), and a token critic of a generator, each on two ranks against one process:
/// the same losses and weights (the re-seeding counts the codes of the step's last
/// micro-batch, whichever rank ran it; that rank sends its images and reconstructions to
/// the others, and every rank takes the same discriminator step).
#[test]
fn tokenizer_and_critic_train_on_two_ranks_as_one_process() {
    if !mpirun_present() {
        return;
    }
    let dir = scratch("objectives");
    let sets = [
        "resolution=8",
        "channels=8",
        "levels=1",
        "codebook=32",
        "code_dim=8",
        "groups=2",
        "adversarial=0.1",
        "disc_start=20",
        "disc_layers=1",
        "disc_channels=8",
    ];
    let vq = |ranks: usize, out: &Path| {
        let mut args = vec!["train", "models/vq_tokenizer.muse", "--steps", "60", "--batch", "4", "--accumulate", "2"];
        for s in &sets {
            args.extend(["--set", s]);
        }
        args.extend(["--lr", "3e-3", "--warmup", "5", "--checkpoint-every", "30", "--device", "cpu"]);
        args.extend(["--out", out.to_str().unwrap()]);
        succeed(muse(ranks, &dir, &args))
    };
    let (one, two) = (dir.join("vq-one"), dir.join("vq-two"));
    let said = String::from_utf8_lossy(&vq(1, &one).stderr).to_string();
    assert!(said.contains("re-seeded"), "the run re-seeds dead codes: {said}");
    vq(2, &two);
    assert_same_run(&one, &two, 60);
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(two.join("metrics.jsonl")).unwrap().lines().last().unwrap())
            .unwrap();
    assert!(last["disc_loss"].is_number() && last["ranks"] == 2, "{last}");
    // The named losses are the step's (every micro-batch of every rank), as one process's.
    let lines = |run: &Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    for (a, b) in lines(&one).iter().zip(lines(&two)) {
        let (pa, pb) = (a["losses"].as_object().unwrap(), b["losses"].as_object().unwrap());
        assert_eq!(pa.len(), pb.len());
        let total: f64 = pa.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - a["loss"].as_f64().unwrap()).abs() <= 1e-6 * total.abs().max(1.0), "{a}");
        for (k, v) in pa {
            let (x, y) = (v.as_f64().unwrap(), pb[k].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "step {}: {k} {x} vs {y}", a["step"]);
        }
    }
    // A critic of a generator of that tokenizer.
    let generator = dir.join("gen");
    let mut args = vec!["train"];
    args.extend(GENERATOR);
    args.extend(["--tokenizer", one.to_str().unwrap(), "--steps", "5", "--out", generator.to_str().unwrap()]);
    succeed(muse(1, &dir, &args));
    let critic = |ranks: usize, out: &Path| {
        let mut args = vec!["train", "models/token_critic.muse", "--generator", generator.to_str().unwrap()];
        for s in ["dim=32", "depth=1", "heads=2", "text_depth=1", "text_vocab=64", "text_len=12"] {
            args.extend(["--set", s]);
        }
        args.extend(["--samples", "256", "--batch", "4", "--accumulate", "2", "--steps", "10", "--warmup", "2"]);
        args.extend(["--checkpoint-every", "10", "--device", "cpu", "--out", out.to_str().unwrap()]);
        succeed(muse(ranks, &dir, &args))
    };
    let (c1, c2) = (dir.join("critic-one"), dir.join("critic-two"));
    critic(1, &c1);
    critic(2, &c2);
    assert_same_run(&c1, &c2, 10);
    std::fs::remove_dir_all(&dir).ok();
}

/// The PID of the process of rank `rank` whose command line mentions `run`.
fn rank_pid(run: &Path, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        (has(&cmd, run.to_str()?.as_bytes()) && has(&env, want.as_bytes()) && !has(&cmd, b"mpirun")).then_some(pid)
    })
}

#[test]
fn a_rank_that_dies_ends_the_run_promptly_and_it_resumes() {
    if !mpirun_present() {
        return;
    }
    let dir = scratch("kill");
    let vq = tokenizer(&dir);
    let run = dir.join("run");
    let mut args = vec!["train"];
    args.extend(GENERATOR);
    args.extend(["--tokenizer", vq.to_str().unwrap(), "--steps", "1000000", "--out", run.to_str().unwrap()]);
    let mut launch = muse(2, &dir, &args);
    let mut job = launch.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while !run.join("latest.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(180), "no checkpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    let victim = rank_pid(&run, 1).expect("rank 1 runs");
    Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "the run outlived its rank 1 by 10 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = job.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!status.success() && said.contains("rank 1"), "{status:?}: {said}");
    // Only the steps since the last checkpoint are lost: the resumed run's log goes on from it.
    let latest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("latest.json")).unwrap()).unwrap();
    let at = latest["step"].as_u64().unwrap();
    resume(2, &dir, &run, &(at + 5).to_string());
    let steps: Vec<u64> = losses(&run).iter().map(|x| x.0).collect();
    assert_eq!(steps, (1..=at + 5).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).ok();
}

/// The MPI binding's collectives against their definitions, on two ranks: this test binary
/// runs itself under `mpirun` (the test below, ignored unless launched so).
#[test]
fn mpi_collectives_match_their_definitions() {
    if !mpirun_present() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let o = Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe"])
        .arg(exe)
        .args(["--exact", "mpi_collectives_on_each_rank", "--ignored", "--nocapture", "--test-threads=1"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("MUSE_MPI_CHILD", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{said}");
    assert_eq!(said.matches("1 passed").count(), 2, "both ranks ran the checks: {said}");
    if std::env::var_os("MUSE_REQUIRE_NCCL").is_some() {
        assert_eq!(said.matches("bootstrapped over MPI").count(), 2, "MUSE_REQUIRE_NCCL: {said}");
    }
}

#[test]
#[ignore = "run on two ranks by mpi_collectives_match_their_definitions"]
fn mpi_collectives_on_each_rank() {
    use muse_runtime::tensor::{bf16_bits, bf16_value};
    if std::env::var_os("MUSE_MPI_CHILD").is_none() {
        return;
    }
    let c = muse_runtime::dist::from_environment().unwrap();
    assert_eq!(c.size(), 2);
    let values = |r: usize| -> Vec<f32> { (0..3000).map(|i| ((i * 7 + r * 13) % 101) as f32 * 0.37 - 11.3).collect() };
    let (a, b) = (values(0), values(1));
    // f32 and f64: one addition of the two ranks' values (the same in either order).
    let mut mine = values(c.rank());
    c.sum_f32(&mut mine).unwrap();
    assert!(mine.iter().zip(a.iter().zip(&b)).all(|(s, (x, y))| *s == x + y));
    let mut wide: Vec<f64> = values(c.rank()).iter().map(|&x| x as f64 / 3.0).collect();
    c.sum_f64(&mut wide).unwrap();
    assert!(wide.iter().zip(a.iter().zip(&b)).all(|(s, (x, y))| *s == *x as f64 / 3.0 + *y as f64 / 3.0));
    // bf16: every partial sum rounded to nearest even, element by element (the type is two
    // bytes, so no element is split).
    let bits = |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| bf16_bits(x * 1.001)).collect() };
    let mut narrow = bits(&values(c.rank()));
    c.sum_bf16(&mut narrow).unwrap();
    let want: Vec<u16> =
        bits(&a).iter().zip(bits(&b)).map(|(&x, y)| bf16_bits(bf16_value(x) + bf16_value(y))).collect();
    assert_eq!(narrow, want);
    assert!(want.iter().zip(a.iter().zip(&b)).any(|(w, (x, y))| bf16_value(*w) != (x * 1.001 + y * 1.001)));
    // Broadcast from rank 1.
    let mut bytes: Vec<u8> = if c.rank() == 1 { (0..=255).collect() } else { vec![0; 256] };
    c.broadcast(&mut bytes, 1).unwrap();
    assert_eq!(bytes, (0..=255).collect::<Vec<u8>>());
    // NCCL's bootstrap where NCCL is installed: both ranks hold rank 0's unique id.
    match muse_runtime::cuda::nccl::Nccl::get() {
        Ok(nccl) => {
            let id = nccl.shared_id(&*c).unwrap();
            let hash = id.internal.iter().fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u8 as u64)) >> 12;
            assert!(hash != 0 && muse_runtime::dist::agree(&*c, hash).unwrap(), "ranks hold different NCCL ids");
            println!("NCCL {} bootstrapped over MPI", nccl.version_string());
        }
        Err(e) => println!("NCCL's bootstrap not checked: {e}"),
    }
}
