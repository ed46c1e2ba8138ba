//! `muse run` and `muse grad`: a model on random inputs on the chosen device (validated
//! against the interpreter or timed kernel by kernel when asked); output statistics, or the
//! loss and every parameter's gradient norm.

use super::cli::{load, write_stdout, DeviceArg, ModelOpts};
use muse_compiler::autodiff;
use muse_compiler::Model;
use muse_runtime::device::{Program, Tensors};
use muse_runtime::inputs::{file_inputs, random_inputs};
use muse_runtime::{checkpoint, init_params, HostTensor, Precision, RunOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// What `muse run` and `muse grad` take.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The .muse file.
    pub file: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub opts: ModelOpts,
}

/// Where inputs and parameters come from and how a model runs.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Where inputs come from: `random` (normal floats, fair-coin masks, ids uniform over
    /// the range their uses accept) or a safetensors file holding each input by name (the
    /// batch is read off its shapes; f64 tensors keep their precision with `--f64`).
    #[arg(long, default_value = "random", value_name = "random|FILE")]
    pub inputs: String,
    /// Save the outputs and losses (`muse grad`: the loss and each parameter's gradient as
    /// `grad/NAME`) to a safetensors file, in f64 with `--f64`.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Seed of the random inputs and of parameter initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Batch size (the value of every symbolic size).
    #[arg(long, default_value_t = 2, value_parser = muse_train::ranges::at_least_one)]
    pub batch: usize,
    /// Load parameters from a safetensors file instead of initialising them.
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// Compute in f64 instead of f32 (the interpreter only).
    #[arg(long)]
    pub f64: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Run the device's kernels and the interpreter side by side and report the first kernel
    /// whose output differs (also with MUSE_VALIDATE=1).
    #[arg(long)]
    pub validate: bool,
    /// Time every kernel of a (warm) run and list the slowest.
    #[arg(long)]
    pub profile: bool,
}

/// Runs each model of the file (`grad`: differentiates its loss).
pub fn main(a: Args, grad: bool) -> ExitCode {
    let Args { file, run, opts } = a;
    let (_, models) = match load(&file, &opts) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut text = String::new();
    for m in &models {
        let r = if grad { grad_model(m, &run) } else { run_model(m, &run) };
        match r {
            Ok(t) => text.push_str(&t),
            Err(e) => {
                muse_compiler::note!("error: {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    write_stdout(&text)
}

/// Inputs, parameters, interpreter settings and the batch for `muse run` and `muse grad`.
fn prepare(g: &muse_compiler::ir::Graph, run: &RunArgs) -> Result<(Tensors, Tensors, RunOptions, usize), String> {
    let precision = if run.f64 { Precision::F64 } else { Precision::F32 };
    if run.inputs == "random" {
        // Before the inputs or parameters are made.
        muse_runtime::budget::check_batch(g, run.batch).map_err(|e| e.to_string())?;
    }
    let params = match &run.params {
        Some(p) => checkpoint::load_params(g, p).map_err(|e| e.to_string())?,
        None => init_params(g, run.seed, precision).map_err(|e| e.to_string())?,
    };
    let (inputs, batch) = if run.inputs == "random" {
        (random_inputs(g, run.batch, run.seed), run.batch)
    } else {
        let file = checkpoint::load(std::path::Path::new(&run.inputs)).map_err(|e| format!("--inputs {e}"))?;
        file_inputs(g, &file).map_err(|e| format!("--inputs {}: {e}", run.inputs))?
    };
    Ok((inputs, params, RunOptions { precision, seed: run.seed }, batch))
}

/// Writes `tensors` to `--save`, f64 with `--f64`.
fn save(run: &RunArgs, tensors: &HashMap<String, HostTensor>) -> Result<(), String> {
    let Some(path) = &run.save else { return Ok(()) };
    let width = if run.f64 { checkpoint::FloatWidth::F64 } else { checkpoint::FloatWidth::F32 };
    checkpoint::save_as(path, tensors, width).map_err(|e| format!("--save {e}"))?;
    muse_compiler::note!("saved {} tensors to {}", tensors.len(), path.display());
    Ok(())
}

/// Computes `requested` on the chosen device (validating its kernels against the
/// interpreter, or timing them, when asked); returns the values and a line about how they
/// were computed.
fn execute(
    g: &muse_compiler::ir::Graph,
    requested: &[muse_compiler::ir::NodeIndex],
    run: &RunArgs,
) -> Result<(HashMap<muse_compiler::ir::NodeIndex, HostTensor>, String), String> {
    let (inputs, params, ro, batch) = prepare(g, run)?;
    let validate = run.validate || std::env::var_os("MUSE_VALIDATE").is_some_and(|v| v != "0");
    let device = run.device.open(run.f64)?;
    let mut program = device.compile(g, requested).map_err(|e| e.to_string())?;
    if validate {
        let v = muse_runtime::validate::validate(program.as_mut(), &inputs, &params, ro.seed, 1e-4)
            .map_err(|e| e.to_string())?;
        if let Some(m) = v.first_mismatch {
            return Err(format!(
                "validate: kernel {} (step {} of {}, computing {}) differs from the interpreter by {:.3e} (relative)",
                m.kernel,
                m.step,
                program.launches(),
                m.value,
                m.error
            ));
        }
        muse_compiler::note!(
            "validate: {} kernels match the interpreter (worst relative error {:.3e})",
            v.checked,
            v.worst
        );
    }
    if run.profile {
        program.bind(&inputs, &params).map_err(|e| e.to_string())?;
        profile(program.as_mut(), batch as i64, ro.seed)?;
    }
    let vals = program.run(&inputs, &params, ro.seed).map_err(|e| e.to_string())?;
    Ok((vals, format!("batch {batch}, seed {}; device {}, {} launches", ro.seed, device.name(), program.launches())))
}

/// Times every step of a bound program (after a warm-up run) and lists the slowest.
fn profile(program: &mut dyn Program, batch: i64, seed: u64) -> Result<(), String> {
    program.execute(seed).map_err(|e| e.to_string())?;
    let runs = std::env::var("MUSE_PROFILE_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let ms = program.profile(seed, runs).map_err(|e| e.to_string())?;
    // The whole pass timed as one: on a shared machine it exceeds the sum of each
    // kernel's median, which leaves out every kernel's slow runs.
    let mut whole = Vec::new();
    for _ in 0..runs.max(1) {
        let t = std::time::Instant::now();
        program.execute(seed).map_err(|e| e.to_string())?;
        whole.push(t.elapsed().as_secs_f64() * 1e3);
    }
    whole.sort_by(f64::total_cmp);
    let pass = whole[whole.len() / 2];
    let Some(kernels) = program.kernels() else {
        muse_compiler::note!(
            "profile: the interpreter runs {} ops in {pass:.3} ms (median of {})",
            program.launches(),
            whole.len()
        );
        return Ok(());
    };
    let rows = muse_compiler::inspect::rows(program.graph(), kernels, None, batch);
    let total: f64 = ms.iter().sum();
    let mut order: Vec<usize> = (0..ms.len()).collect();
    order.sort_by(|a, b| ms[*b].total_cmp(&ms[*a]));
    let mut by_kind: Vec<(String, f64, usize)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        match by_kind.iter_mut().find(|k| k.0 == r.kind) {
            Some(k) => {
                k.1 += ms[i];
                k.2 += 1;
            }
            None => by_kind.push((r.kind.to_string(), ms[i], 1)),
        }
    }
    by_kind.sort_by(|a, b| b.1.total_cmp(&a.1));
    let kinds: Vec<String> = by_kind.iter().map(|(k, t, n)| format!("{k} {t:.1} ms ({n})")).collect();
    muse_compiler::note!(
        "profile: {} launches, {total:.3} ms in all ({pass:.3} ms the whole pass, median of {}): {}; the slowest:",
        ms.len(),
        whole.len(),
        kinds.join(", ")
    );
    // MUSE_PROFILE_TOP=N lists N kernels instead of 12.
    let top = std::env::var("MUSE_PROFILE_TOP").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    for &i in order.iter().take(top) {
        let r = &rows[i];
        let ops: Vec<String> =
            r.ops.iter().map(|(k, v)| if *v > 1 { format!("{k}x{v}") } else { k.to_string() }).collect();
        muse_compiler::note!(
            "  {:>8.3} ms {:>5.1}% {:>6.1} GF/s {:>4} {:<6} {:<11} {:<4} {:<18} {}",
            ms[i],
            100.0 * ms[i] / total.max(1e-12),
            r.flops as f64 / (ms[i] * 1e6).max(1e-12),
            i,
            r.name,
            r.kind,
            if r.backward { "bwd" } else { "fwd" },
            r.launch,
            ops.join(" ")
        );
    }
    Ok(())
}

fn run_model(m: &Model, run: &RunArgs) -> Result<String, String> {
    let requested: Vec<_> = m.graph.outputs.iter().chain(&m.graph.losses).map(|x| x.1).collect();
    let (vals, how) = execute(&m.graph, &requested, run)?;
    let mut out = format!("model {} ({how})\n", m.name);
    let mut saved = HashMap::new();
    for (kind, list) in [("output", &m.graph.outputs), ("loss", &m.graph.losses)] {
        for (name, n) in list {
            let t = &vals[n];
            out.push_str(&format!("  {kind} {name} {:?} {}: {}\n", t.shape, t.dtype(), t.stats()));
            saved.insert(name.clone(), t.clone());
        }
    }
    save(run, &saved)?;
    Ok(out)
}

fn grad_model(m: &Model, run: &RunArgs) -> Result<String, String> {
    if m.graph.losses.is_empty() {
        return Err(format!("model {} has no loss to differentiate", m.name));
    }
    let d = autodiff::differentiate(&m.graph, autodiff::Wrt::default());
    let mut requested = vec![d.loss];
    requested.extend(d.params.iter().map(|x| x.1));
    let (vals, how) = execute(&d.graph, &requested, run)?;
    let loss = vals[&d.loss].to_f64()[0];
    let mut out = format!("model {} ({how}): loss {loss:.6}\n", m.name);
    let loss_name = m.graph.losses.iter().map(|l| l.0.as_str()).collect::<Vec<_>>().join("+");
    let mut saved: HashMap<String, HostTensor> = [(loss_name, vals[&d.loss].clone())].into();
    let width = d.params.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut total = 0.0;
    for (name, n) in &d.params {
        let v = vals[n].to_f64();
        saved.insert(format!("grad/{name}"), vals[n].clone());
        let sq: f64 = v.iter().map(|x| x * x).sum();
        total += sq;
        out.push_str(&format!("  {name:<width$}  {:.6e}\n", sq.sqrt()));
    }
    out.push_str(&format!("  {:<width$}  {:.6e}\n", "global norm", total.sqrt()));
    if !d.unreached.is_empty() {
        out.push_str(&format!("  no gradient reaches: {}\n", d.unreached.join(", ")));
    }
    save(run, &saved)?;
    Ok(out)
}
