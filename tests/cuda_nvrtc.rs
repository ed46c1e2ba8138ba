//! The generated CUDA C of every model, forward and backward, f32 and bf16 storage, and the
//! optimizer's kernels, compiled by NVRTC to cubins for sm_90 (H100/H200) and sm_80 (A100),
//! with ptxas's report checked: no spills, and registers and shared memory within what the
//! launch allows (256 threads a block). Needs NVRTC (scripts/fetch-cuda.sh); CI sets
//! MUSE_REQUIRE_NVRTC=1 so that a missing NVRTC fails instead of skipping.

mod common;

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_compiler::ir::NodeIndex;
use muse_compiler::kernel::{Kernel, Step};
use muse_compiler::render::cuda::{self, Storage, MAX_BLOCK};
use muse_runtime::cuda::{libs, nvrtc};

/// Registers a thread may hold when 256 threads share a multiprocessor's 64K.
const MAX_REGISTERS: u32 = (65536 / MAX_BLOCK) as u32;
/// Static shared memory a block may declare.
const MAX_SHARED: u32 = 48 * 1024;

/// Whether NVRTC is here; if not, CI fails and a developer is told how to get it.
fn nvrtc_or_skip() -> bool {
    match libs::nvrtc() {
        Ok(_) => true,
        Err(e) if std::env::var_os("MUSE_REQUIRE_NVRTC").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

/// Kernels of every program, each distinct kernel once (models share most of theirs),
/// renamed `u<n>`.
#[derive(Default)]
struct Distinct {
    seen: std::collections::HashSet<String>,
    kernels: Vec<Kernel>,
    total: usize,
}

impl Distinct {
    fn add(&mut self, k: &Kernel) {
        self.total += 1;
        let text = cuda::render_kernel(&Kernel { name: "k".into(), ..k.clone() }, Storage::F32);
        if self.seen.insert(text) {
            let name = format!("u{}", self.kernels.len());
            self.kernels.push(Kernel { name, ..k.clone() });
        }
    }
}

/// Compiles `kernels` for `arch` and `storage` in units of at most 300, two at a time, and
/// checks ptxas's report; the number of kernels checked.
fn compile_and_check(kernels: &[Kernel], storage: Storage, arch: u32) -> usize {
    let units: Vec<&[Kernel]> = kernels.chunks(300).collect();
    let check = |(i, unit): (usize, &&[Kernel])| -> usize {
        let refs: Vec<&Kernel> = unit.iter().collect();
        let source = cuda::render_program(&refs, storage);
        let opts = nvrtc::Options { arch, report: true };
        let what = format!("unit {i} {storage:?} sm_{arch}");
        let c = nvrtc::compile(&source, &format!("unit{i}"), &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(c.cubin.len() > 64, "{what}: a cubin");
        let res = nvrtc::resources(&c.log);
        assert_eq!(res.len(), unit.len(), "{what}: a report per kernel:\n{}", c.log);
        for r in &res {
            let at = format!("{what} {}", r.kernel);
            let k = unit.iter().find(|k| k.name == r.kernel).expect("a kernel of the unit");
            assert_eq!(
                (r.spill_stores, r.spill_loads),
                (0, 0),
                "{at}: spills ({r:?}) in\n{}",
                cuda::render_kernel(k, storage)
            );
            assert!(r.registers > 0 && r.registers <= MAX_REGISTERS, "{at}: {} registers", r.registers);
            assert!(r.shared <= MAX_SHARED, "{at}: {} bytes of shared memory", r.shared);
        }
        res.len()
    };
    std::thread::scope(|s| {
        let mut done = 0;
        for pair in units.iter().enumerate().collect::<Vec<_>>().chunks(2) {
            let handles: Vec<_> = pair.iter().map(|&u| s.spawn(move || check(u))).collect();
            done +=
                handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).sum::<usize>();
        }
        done
    })
}

#[test]
fn every_kernel_of_every_model_compiles_for_sm90_and_sm80_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = nvrtc::version().unwrap();
    let mut distinct = Distinct::default();
    let plain = common::MODELS.iter().map(|&n| (n, None));
    let options = common::OPTIONS.iter().map(|&(n, k, v)| (n, Some((k, v))));
    for (model, option) in plain.chain(options) {
        let mut sets = common::tiny(model, "3");
        sets.extend(option);
        let m = common::compile_model(model, &sets);
        let d = differentiate(&m.graph, Wrt::default());
        let mut nodes: Vec<NodeIndex> = m.graph.outputs.iter().chain(&m.graph.losses).map(|o| o.1).collect();
        nodes.extend(d.params.iter().map(|p| p.1));
        let (program, _) = muse_compiler::kernel::fuse(&d.graph, &nodes);
        for s in &program.steps {
            match s {
                Step::Kernel(k) => distinct.add(&k.kernel),
                Step::MatMul(m) => m.epilogue.iter().for_each(|e| distinct.add(&e.kernel)),
            }
        }
    }
    muse_compiler::kernel::optim::all().iter().for_each(|k| distinct.add(k));
    let mut checked = 0;
    for (storage, arch) in [(Storage::F32, 90), (Storage::Bf16, 90), (Storage::F32, 80), (Storage::Bf16, 80)] {
        checked += compile_and_check(&distinct.kernels, storage, arch);
    }
    println!(
        "NVRTC {major}.{minor}: {} kernels of every model and the optimizer, {} distinct; {checked} compilations checked (f32 and bf16, sm_90 and sm_80): no spills",
        distinct.total,
        distinct.kernels.len()
    );
}

/// The cubin cache: a second compilation of the same source and options comes from disk,
/// the same bytes; other options or another source compile anew; a damaged entry is
/// compiled again.
/// The runtime's hand-written gathers (kernels/gather.cu, 4- and 2-byte elements) compile for both
/// architectures with the same resource limits as generated code.
#[test]
fn the_gather_kernel_compiles_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in [90, 80] {
        let opts = nvrtc::Options { arch, report: true };
        let c = nvrtc::compile(muse_runtime::cuda::program::GATHER, "gather", &opts).unwrap_or_else(|e| panic!("{e}"));
        let r = nvrtc::resources(&c.log);
        let mut names: Vec<&str> = r.iter().map(|r| r.kernel.as_str()).collect();
        names.sort();
        assert_eq!(names, ["muse_gather", "muse_gather16"], "{}", c.log);
        for r in &r {
            assert_eq!((r.spill_stores, r.spill_loads), (0, 0), "sm_{arch}: {r:?}");
            assert!(r.registers > 0 && r.registers <= MAX_REGISTERS, "sm_{arch}: {r:?}");
        }
    }
}

#[test]
fn cubins_are_cached_by_source_options_and_version() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("muse-cubins-{}", std::process::id()));
    let optim = muse_compiler::kernel::optim::all();
    let refs: Vec<&Kernel> = optim.iter().collect();
    let src = cuda::render_program(&refs, Storage::F32);
    let opts = nvrtc::Options::default();
    let first = nvrtc::compile_cached(&src, "optim", &opts, &dir).unwrap();
    let again = nvrtc::compile_cached(&src, "optim", &opts, &dir).unwrap();
    assert!(!first.cached && again.cached && first.cubin == again.cubin && first.log == again.log);
    let sm80 = nvrtc::compile_cached(&src, "optim", &nvrtc::Options { arch: 80, ..opts.clone() }, &dir).unwrap();
    assert!(!sm80.cached && sm80.cubin != first.cubin);
    let other = nvrtc::compile_cached(&format!("{src}\n// another source"), "optim", &opts, &dir).unwrap();
    assert!(!other.cached);
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        if f.path().extension().is_some_and(|e| e == "cubin") {
            std::fs::write(f.path(), b"").unwrap();
        }
    }
    let damaged = nvrtc::compile_cached(&src, "optim", &opts, &dir).unwrap();
    assert!(!damaged.cached && damaged.cubin == first.cubin);
    std::fs::remove_dir_all(&dir).ok();
}

/// A compile error shows NVRTC's log and the generated lines it names, numbered.
#[test]
fn an_nvrtc_error_shows_its_log_and_the_numbered_source() {
    if !nvrtc_or_skip() {
        return;
    }
    let src = "extern \"C\" __global__ void broken(float *x) {\n  x[0] = undefined_thing;\n}\n";
    let e = nvrtc::compile(src, "broken", &nvrtc::Options::default()).expect_err("an error").to_string();
    assert!(e.contains("undefined_thing"), "{e}");
    assert!(e.contains("    2 |   x[0] = undefined_thing;"), "{e}");
}
