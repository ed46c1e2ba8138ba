//! `muse inspect`: how a model is fused (one row per kernel, why each value is written to
//! memory), its generated code, and the inspector page.

use super::cli::{load, write_stdout, DeviceArg, ModelOpts};
use muse_compiler::autodiff;
use muse_compiler::kernel::{KernelProgram, Step};
use muse_compiler::Model;
use muse_runtime::device::Device;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `muse inspect` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The .muse file.
    pub file: PathBuf,
    /// Fuse the forward and backward pass (outputs, losses and every gradient).
    #[arg(long)]
    pub backward: bool,
    /// Print only kernel N (with --emit, its code).
    #[arg(long, value_name = "N")]
    pub kernel: Option<usize>,
    /// Print generated code: `c`, `cuda` or `kernel-ir`.
    #[arg(long, value_name = "LANG")]
    pub emit: Option<String>,
    /// Batch size for the byte and FLOP counts.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..))]
    pub batch: i64,
    /// Also write one self-contained HTML page with the kernels drawn as a graph.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub opts: ModelOpts,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Inspects each model of the file.
pub fn main(a: Args) -> ExitCode {
    let Args { file, backward, kernel, emit, batch, html, opts, device } = a;
    let (c, models) = match load(&file, &opts) {
        Ok(x) => x,
        Err(code) => return code,
    };
    // `--emit c` or `--emit cuda` with `--device auto` inspects the device of that language;
    // CUDA source needs no GPU to be rendered (the simulation's source is the GPU's).
    let named = match (emit.as_deref(), device.device.as_str()) {
        (Some(lang @ ("c" | "cuda")), "auto") => {
            DeviceArg { device: if lang == "c" { "cpu" } else { "cuda-sim" }.into(), ..device.clone() }
        }
        _ => device.clone(),
    };
    let device = match named.open(false) {
        Ok(d) => d,
        Err(e) => {
            muse_compiler::note!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(lang) = emit.as_deref() {
        if lang != "kernel-ir" && device.language() != Some(lang) {
            let has = device.language().map_or("no code".to_string(), |l| format!("{l} code"));
            muse_compiler::note!(
                "error: --emit {lang}: --device {} generates {has}; choose --emit kernel-ir or its language",
                device.name()
            );
            return ExitCode::from(2);
        }
    }
    let mut text = String::new();
    for m in &models {
        let args = InspectArgs {
            device: device.as_ref(),
            backward,
            only: kernel,
            emit: emit.as_deref(),
            batch,
            html: html.as_deref(),
            verbose: opts.verbose,
            bf16: named.dtype == "bf16",
        };
        match inspect_model(m, &c.sources, &args) {
            Ok(t) => text.push_str(&t),
            Err(e) => {
                muse_compiler::note!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    write_stdout(&text)
}

/// What `muse inspect` was asked for.
struct InspectArgs<'a> {
    backward: bool,
    only: Option<usize>,
    emit: Option<&'a str>,
    batch: i64,
    html: Option<&'a Path>,
    verbose: bool,
    /// The device whose kernels are shown.
    device: &'a dyn Device,
    /// Its float buffers are bf16 (`--dtype bf16`).
    bf16: bool,
}

fn inspect_model(m: &Model, sources: &muse_compiler::SourceMap, a: &InspectArgs) -> Result<String, String> {
    let (backward, only, batch, html, verbose) = (a.backward, a.only, a.batch, a.html, a.verbose);
    let (graph, requested) = if backward {
        if m.graph.losses.is_empty() {
            return Err(format!("model {} has no loss to differentiate", m.name));
        }
        let d = autodiff::differentiate(&m.graph, autodiff::Wrt::default());
        let mut req: Vec<_> = m.graph.outputs.iter().chain(&m.graph.losses).map(|x| x.1).collect();
        req.extend(d.params.iter().map(|x| x.1));
        (d.graph, req)
    } else {
        (m.graph.clone(), m.graph.outputs.iter().chain(&m.graph.losses).map(|x| x.1).collect())
    };
    let device = a.device;
    let (program, reports) = device.fuse(&graph, &requested).ok_or_else(|| {
        format!("--device {}: it runs the graph op by op; there are no kernels to inspect", device.name())
    })?;
    if verbose {
        for r in &reports {
            muse_compiler::note!("{}: {r}", m.name);
        }
    }
    if let Some(k) = only {
        if k >= program.steps.len() {
            return Err(format!(
                "--kernel {k}: the program has {} kernels (0..{})",
                program.steps.len(),
                program.steps.len()
            ));
        }
    }
    let mut out = format!("# model {} ({})\n", m.name, if backward { "forward + backward" } else { "forward" });
    // CUDA source comes with ptxas's report of each kernel, when NVRTC is here.
    let resources = if device.language() == Some("cuda") && (a.emit == Some("cuda") || html.is_some()) {
        cuda_resources(&program, a.bf16)
    } else {
        HashMap::new()
    };
    let source = |s: &Step| {
        let name = match s {
            Step::Kernel(k) => Some(&k.kernel.name),
            Step::MatMul(mm) => mm.epilogue.as_ref().map(|e| &e.kernel.name),
        };
        let note = name.and_then(|n| resources.get(n)).map_or(String::new(), |r| format!("/* {r} */\n"));
        format!("{note}{}", device.source(&graph, s))
    };
    if let Some(lang) = a.emit {
        for (i, step) in program.steps.iter().enumerate() {
            if only.is_some_and(|k| k != i) {
                continue;
            }
            if lang == "kernel-ir" {
                match step {
                    Step::Kernel(k) => out.push_str(&k.kernel.to_string()),
                    Step::MatMul(mm) => {
                        out.push_str(&format!("/* {i}: */ {}", device.source(&graph, step)));
                        if let Some(e) = &mm.epilogue {
                            out.push_str(&e.kernel.to_string());
                        }
                    }
                }
            } else {
                if matches!(step, Step::MatMul(_)) {
                    out.push_str(&format!("/* {i}: */ "));
                }
                out.push_str(&source(step));
            }
        }
        return Ok(out);
    }
    let mut rows = muse_compiler::inspect::rows(&graph, &program, Some(sources), batch);
    if let Some(path) = html {
        let title = format!("{} ({})", m.name, if backward { "forward + backward" } else { "forward" });
        let page = muse_compiler::inspect::html(&title, &program, &rows, sources, &source);
        std::fs::write(path, page).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        muse_compiler::note!("wrote {}", path.display());
    }
    if let Some(k) = only {
        rows.retain(|r| r.id == k);
    }
    out.push_str(&muse_compiler::inspect::table(&rows, &program));
    let len = |n: muse_compiler::ir::NodeIndex| {
        graph.ty(n).shape.numel().and_then(|d| d.eval(&|_| Some(batch))).unwrap_or(0).max(0) as usize
    };
    let mem = muse_runtime::memory::plan(&graph, &program, &requested, &len);
    out.push_str(&format!(
        "memory at batch {batch}: intermediates planned into {} buffers, peak {} bytes; {} bytes without reuse ({:.1}x)\n",
        mem.slots.len(),
        mem.peak_bytes,
        mem.total_bytes,
        mem.total_bytes as f64 / mem.peak_bytes.max(1) as f64
    ));
    Ok(out)
}

/// ptxas's report (sm_90) of every CUDA kernel of `program` (float buffers in bf16 or not),
/// by kernel name: registers, spills, stack and shared memory. Empty, with a note, when
/// NVRTC is missing.
fn cuda_resources(program: &KernelProgram, bf16: bool) -> HashMap<String, String> {
    use muse_compiler::render::cuda::{render_program, Storage};
    use muse_runtime::cuda::nvrtc;
    let kernels = program.generated();
    let version = match nvrtc::version() {
        Ok((major, minor)) => format!("NVRTC {major}.{minor}"),
        Err(e) => {
            muse_compiler::note!("note: no registers or spills shown: {e}");
            return HashMap::new();
        }
    };
    let cache = muse_runtime::cache::default_cache_dir();
    let storage = if bf16 { Storage::Bf16 } else { Storage::F32 };
    match nvrtc::compile_cached(&render_program(&kernels, storage), "inspect", &nvrtc::Options::default(), &cache) {
        Ok(c) => nvrtc::resources(&c.log)
            .into_iter()
            .map(|r| {
                let line = format!(
                    "sm_90 ({version}): {} registers, {} B spilled ({} B reloaded), {} B stack, {} B shared",
                    r.registers, r.spill_stores, r.spill_loads, r.stack, r.shared
                );
                (r.kernel, line)
            })
            .collect(),
        Err(e) => {
            muse_compiler::note!("note: no registers or spills shown: {e}");
            HashMap::new()
        }
    }
}
