//! `muse inspect`: how a model is fused (one row per kernel, why each value is written to
//! memory), its generated code, and the inspector page.

use super::cli::{load, write_stdout, ModelOpts};
use muse_compiler::autodiff;
use muse_compiler::Model;
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
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    /// Also write one self-contained HTML page with the kernels drawn as a graph.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub opts: ModelOpts,
}

/// Inspects each model of the file.
pub fn main(a: Args) -> ExitCode {
    let Args { file, backward, kernel, emit, batch, html, opts } = a;
    let (c, models) = match load(&file, &opts) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut text = String::new();
    for m in &models {
        let args = InspectArgs {
            backward,
            only: kernel,
            emit: emit.as_deref(),
            batch,
            html: html.as_deref(),
            verbose: opts.verbose,
        };
        match inspect_model(m, &c.sources, &args) {
            Ok(t) => text.push_str(&t),
            Err(e) => {
                eprintln!("error: {e}");
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
}

fn inspect_model(m: &Model, sources: &muse_compiler::SourceMap, a: &InspectArgs) -> Result<String, String> {
    let (backward, only, emit, batch, html, verbose) = (a.backward, a.only, a.emit, a.batch, a.html, a.verbose);
    use muse_compiler::kernel::Step;
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
    let timer = muse_compiler::report::PassTimer::start("fusion", graph.node_count());
    let plan = muse_compiler::fusion::plan(&graph, &requested);
    let fused = timer.finish(
        graph.node_count(),
        format!("{} kernels, {} values in memory", plan.kernel_count(), plan.materialized.len()),
    );
    let timer = muse_compiler::report::PassTimer::start("lower", graph.node_count());
    let program = muse_compiler::kernel::lower(&graph, &plan);
    let exprs: usize = program
        .steps
        .iter()
        .map(|s| if let muse_compiler::kernel::Step::Kernel(k) = s { k.kernel.exprs.len() } else { 0 })
        .sum();
    let lowered = timer.finish(
        graph.node_count(),
        format!(
            "{exprs} kernel-IR expressions, {} products with an epilogue{}",
            program.epilogues.fused.len(),
            program.epilogues.kept.iter().map(|(_, k, why)| format!("; not {k}: {why}")).collect::<String>()
        ),
    );
    if verbose {
        eprintln!("{}: {fused}", m.name);
        eprintln!("{}: {lowered}", m.name);
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
    if let Some(lang) = emit {
        for (i, step) in program.steps.iter().enumerate() {
            if only.is_some_and(|k| k != i) {
                continue;
            }
            let emit_kernel = |k: &muse_compiler::kernel::Kernel, range: bool| match lang {
                "c" if range => Ok(muse_compiler::render::c::render_range(k).unwrap_or_default()),
                "c" => Ok(muse_compiler::render::c::render_kernel(k)),
                "kernel-ir" => Ok(k.to_string()),
                "cuda" => Err("--emit cuda: the CUDA renderer is not built yet (the next issue)".to_string()),
                other => Err(format!("--emit {other}: choose c, cuda or kernel-ir")),
            };
            match step {
                Step::MatMul(mm) => {
                    out.push_str(&format!(
                        "/* {i}: gemm template: {} = {} @ {}{} */\n",
                        muse_compiler::kernel::lower::label(&graph, mm.out),
                        muse_compiler::kernel::lower::label(&graph, mm.a),
                        muse_compiler::kernel::lower::label(&graph, mm.b),
                        if mm.epilogue.is_some() { ", then its epilogue on each finished tile" } else { "" }
                    ));
                    if let Some(e) = &mm.epilogue {
                        out.push_str(&emit_kernel(&e.kernel, true)?);
                    }
                }
                Step::Kernel(k) => out.push_str(&emit_kernel(&k.kernel, false)?),
            }
        }
        return Ok(out);
    }
    let mut rows = muse_compiler::inspect::rows(&graph, &program, Some(sources), batch);
    if let Some(path) = html {
        let title = format!("{} ({})", m.name, if backward { "forward + backward" } else { "forward" });
        let page = muse_compiler::inspect::html(&title, &graph, &program, &rows, sources);
        std::fs::write(path, page).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
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
