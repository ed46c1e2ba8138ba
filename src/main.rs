//! `muse`: the command-line program of the muse compiler and runtime.

use clap::{Parser, Subcommand};
use muse_compiler::autodiff;
use muse_compiler::ir::print;
use muse_compiler::{compile_path, Compiled, Model, Options};
use muse_runtime::device::{Device, DeviceKind, DeviceOptions, Program};
use muse_runtime::inputs::random_inputs;
use muse_runtime::{checkpoint, init_params, HostTensor, Precision, RunOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "muse", version, about = "A compiler and runtime for text-to-image model architectures")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which device runs the model.
#[derive(clap::Args, Clone)]
struct DeviceArg {
    /// `cpu` (fused kernels in generated C), `interp` (the reference interpreter, op by op),
    /// `cuda` (an NVIDIA GPU), or `auto` (a GPU when there is one, else cpu).
    #[arg(long, default_value = "auto", alias = "backend", value_name = "DEVICE")]
    device: String,
}

impl DeviceArg {
    /// The chosen device (`--f64` with `auto` means the interpreter, the only one that can);
    /// for `auto`, a line on stderr says which.
    fn open(&self, f64: bool) -> Result<Box<dyn Device + Send + Sync>, String> {
        let mut kind: DeviceKind = self.device.parse().map_err(|e| format!("--device {e}"))?;
        if f64 && kind == DeviceKind::Auto {
            kind = DeviceKind::Interp;
        }
        let opts = DeviceOptions { f64, ..DeviceOptions::default() };
        let chosen = muse_runtime::device::select(kind, &opts).map_err(|e| e.to_string())?;
        if let Some(note) = chosen.note {
            eprintln!("{note}");
        }
        Ok(chosen.device)
    }
}

#[derive(clap::Args, Clone)]
struct ModelOpts {
    /// Override a config value, e.g. `--set depth=24` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Only this model of the file.
    #[arg(long)]
    model: Option<String>,
    /// Print what each compiler pass did (nodes in and out, time) to stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and elaborate .muse files; print parameter counts and input/output shapes.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        opts: ModelOpts,
    },
    /// Print a model's graph IR as text, or as Graphviz DOT with `--dot`.
    Graph {
        /// The .muse file.
        file: PathBuf,
        /// Graphviz DOT, nodes grouped by block path.
        #[arg(long)]
        dot: bool,
        /// The differentiated graph: forward and backward pass.
        #[arg(long)]
        backward: bool,
        /// Only node counts: forward, backward and their ratio.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        opts: ModelOpts,
    },
    /// Show how a model is fused into kernels: one row per kernel and why values are cut.
    Inspect {
        /// The .muse file.
        file: PathBuf,
        /// Fuse the forward and backward pass (outputs, losses and every gradient).
        #[arg(long)]
        backward: bool,
        /// Print only kernel N (with --emit, its code).
        #[arg(long, value_name = "N")]
        kernel: Option<usize>,
        /// Print generated code: `c`, `cuda` or `kernel-ir`.
        #[arg(long, value_name = "LANG")]
        emit: Option<String>,
        /// Batch size for the byte and FLOP counts.
        #[arg(long, default_value_t = 8)]
        batch: i64,
        /// Also write one self-contained HTML page with the kernels drawn as a graph.
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
        #[command(flatten)]
        opts: ModelOpts,
    },
    /// Run a model on random inputs with the reference interpreter; print output statistics.
    Run {
        /// The .muse file.
        file: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        opts: ModelOpts,
    },
    /// Train a model on a data set over compiled kernels: an image tokenizer (a model with
    /// an `image` input) or a masked-token model (with `--tokenizer`, a trained one's run).
    Train {
        /// The .muse file (omit with --resume).
        file: Option<PathBuf>,
        #[command(flatten)]
        train: Box<TrainFlags>,
        /// Override a config value, e.g. `--set depth=8` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Encode a data set into image token ids with a trained image tokenizer (cached in its
    /// run directory; `muse train` does this on its own when it needs to).
    Tokenize {
        /// The image tokenizer's run directory.
        run: PathBuf,
        /// `shapes` (built in) or a folder of images.
        #[arg(long, default_value = "shapes")]
        data: String,
        /// Items to encode from an unlimited data set (a folder is encoded whole).
        #[arg(long, default_value_t = 8192)]
        samples: usize,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Generate images from prompts with a trained masked-token model (MaskGIT decoding with
    /// classifier-free guidance), decoded by its image tokenizer; writes PNGs and a grid.
    Sample {
        /// The masked-token model's run directory.
        run: PathBuf,
        /// A prompt (repeatable).
        #[arg(long)]
        prompt: Vec<String>,
        /// A file with one prompt per line.
        #[arg(long, value_name = "FILE")]
        prompts: Option<PathBuf>,
        /// Decoding steps.
        #[arg(long, default_value_t = 12)]
        steps: usize,
        /// Classifier-free guidance scale (ramped up linearly over the steps).
        #[arg(long, default_value_t = 3.0)]
        cfg: f64,
        /// Sampling temperature of the first step (annealed to 0).
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Scale of the noise that decides which tokens are re-masked (annealed to 0).
        #[arg(long, default_value_t = 4.5)]
        choice_temperature: f64,
        /// Seed: the same seed gives the same images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output folder (NNN.png, grid.png, prompts.txt).
        #[arg(long, default_value = "samples")]
        out: PathBuf,
        /// A trained token critic's run directory: its scores choose which tokens to re-mask.
        #[arg(long, value_name = "RUN_DIR")]
        critic: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Differentiate a model's loss; print the loss and every parameter's gradient norm.
    Grad {
        /// The .muse file.
        file: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        opts: ModelOpts,
    },
}

#[derive(clap::Args, Clone)]
struct TrainFlags {
    /// `shapes` (the built-in data set) or a folder of images with captions
    /// (metadata.jsonl, or IMAGE.png + IMAGE.txt).
    #[arg(long, default_value = "shapes")]
    data: String,
    /// Optimizer steps of the whole run.
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Images per micro-batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// The run directory (config, tokenizers, checkpoints, metrics.jsonl).
    #[arg(long, default_value = "runs/run")]
    out: PathBuf,
    /// Continue the run in this directory exactly where its last checkpoint left it.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
    /// Seed of initialisation, data order, masking and text dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Peak learning rate (AdamW, betas 0.9/0.96).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.045)]
    weight_decay: f64,
    /// Clip gradients to this global norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// A trained image tokenizer's run directory (masked-token models).
    #[arg(long, value_name = "RUN_DIR")]
    tokenizer: Option<PathBuf>,
    /// A tokenizer.json for the captions (default: train a word-level one on them).
    #[arg(long, value_name = "FILE")]
    text_tokenizer: Option<PathBuf>,
    /// A trained masked-token model's run directory whose fills a token critic learns to judge.
    #[arg(long, value_name = "RUN_DIR")]
    generator: Option<PathBuf>,
    /// Items of the built-in data set to encode into tokens for masked-token training.
    #[arg(long, default_value_t = 8192)]
    samples: usize,
    /// Save a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 200)]
    checkpoint_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Skip steps whose loss is NaN or infinite instead of stopping.
    #[arg(long)]
    skip_nonfinite: bool,
    /// Keep an exponential moving average of the weights with this decay (0: none).
    #[arg(long, default_value_t = 0.0)]
    ema: f64,
    /// Probability of training a sample without its caption (classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    text_dropout: f64,
    /// Random horizontal flips of folder images.
    #[arg(long)]
    flip: bool,
    /// Progressive resolution (image tokenizers): RES:UNTIL_STEP[:BATCH[:ACCUMULATE]], one per
    /// stage in order, e.g. `--stage 16:400:32 --stage 32:1000:16:2`; the last ends the run.
    #[arg(long = "stage")]
    stages: Vec<String>,
    /// Initial weights from a safetensors file: each tensor named like a parameter replaces
    /// its random initialisation (e.g. a pretrained text encoder's `text_encoder.*`).
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Leave these parameters untrained: `text` (the text encoder) or a parameter path such as
    /// `layers.0` (repeatable).
    #[arg(long, value_name = "NAME")]
    freeze: Vec<String>,
    /// The image tokenizer's discriminator model, when it has an adversarial term (default:
    /// vq_discriminator.muse beside the tokenizer's file).
    #[arg(long, value_name = "FILE")]
    discriminator: Option<PathBuf>,
}

fn train_command(file: Option<PathBuf>, t: &TrainFlags, set: &[String]) -> Result<String, String> {
    let device = t.device.open(false)?;
    let (args, resume) = match (&t.resume, file) {
        (Some(run), _) => {
            let mut a = muse_train::session::TrainArgs::from_run(run)?;
            // Only the length of the run may change on resuming.
            if std::env::args().any(|x| x == "--steps") {
                a.steps = t.steps;
                if let Some(last) = a.stages.last_mut() {
                    last.until = t.steps;
                }
            }
            (a, true)
        }
        (None, Some(model)) => {
            let mut sets = Vec::new();
            for s in set {
                let (k, v) = s.split_once('=').ok_or_else(|| format!("--set {s}: expected KEY=VALUE"))?;
                sets.push((k.trim().to_string(), v.trim().to_string()));
            }
            let stages = t
                .stages
                .iter()
                .map(|s| muse_train::session::Stage::parse(s, t.batch, t.accumulate))
                .collect::<Result<Vec<_>, _>>()?;
            // With stages, the run ends where the last one does unless --steps says otherwise.
            let steps = match stages.last() {
                Some(last) if !std::env::args().any(|x| x == "--steps") => last.until,
                _ => t.steps,
            };
            let a = muse_train::session::TrainArgs {
                model,
                sets,
                data: t.data.clone(),
                steps,
                batch: t.batch,
                accumulate: t.accumulate,
                out: t.out.clone(),
                seed: t.seed,
                lr: t.lr,
                warmup: t.warmup,
                weight_decay: t.weight_decay,
                clip: t.clip,
                tokenizer: t.tokenizer.clone(),
                text_tokenizer: t.text_tokenizer.clone(),
                generator: t.generator.clone(),
                samples: t.samples,
                checkpoint_every: t.checkpoint_every,
                keep: t.keep,
                skip_nonfinite: t.skip_nonfinite,
                ema: t.ema,
                text_dropout: t.text_dropout,
                flip: t.flip,
                init: t.init.clone(),
                freeze: t.freeze.clone(),
                discriminator: t.discriminator.clone(),
                stages,
            };
            (a, false)
        }
        (None, None) => return Err("give a .muse file to train, or --resume RUN_DIR".into()),
    };
    let s = muse_train::session::train(&args, resume, device.as_ref())?;
    if s.first_loss.is_nan() {
        return Ok(format!(
            "{}: the run has finished its {} steps (--resume {} --steps N continues it to N)\n",
            args.out.display(),
            args.steps,
            args.out.display()
        ));
    }
    Ok(format!(
        "trained {}: loss {:.4} -> {:.4}, {:.1} images/s, {:.1}% of the time waiting for data, {} steps skipped; run in {}\n",
        args.model.display(),
        s.first_loss,
        s.last_loss,
        s.items_per_s,
        100.0 * s.wait_fraction,
        s.skipped_steps,
        args.out.display()
    ))
}

fn tokenize_command(run: &Path, data: &str, samples: usize, device: &DeviceArg) -> Result<String, String> {
    let device = device.open(false)?;
    let vq = muse_train::session::ImageTokenizer::open(run)?;
    let res = vq
        .model
        .config
        .iter()
        .find(|(k, _)| k == "resolution")
        .and_then(|(_, v)| if let muse_compiler::ConfigValue::Int(i) = v { Some(*i as usize) } else { None })
        .ok_or("the image tokenizer has no `resolution` config")?;
    let d = muse_train::data::open(data, res, 0, false)?;
    let t = vq.tokens(data, d.as_ref(), samples, device.as_ref())?;
    let (codebook, grid) = vq.codebook_and_grid()?;
    let mut used = vec![false; codebook as usize];
    t.ids.iter().for_each(|&i| used[i as usize] = true);
    let mut text = format!(
        "{} items as {grid}x{grid} tokens; {} of {codebook} codes used\n",
        t.len(),
        used.iter().filter(|&&u| u).count()
    );
    let r = vq.judge_reconstructions(d.as_ref(), 256, device.as_ref())?;
    if r.judged > 0 {
        text.push_str(&format!(
            "reconstructions of {} one-shape images, judged against their captions: colour right in {}, place in {}, shape in {} (large shapes {} of {})\n",
            r.judged, r.colour, r.place, r.shape, r.large.1, r.large.0
        ));
    }
    Ok(text)
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Where inputs come from (only `random` for now: normal floats, fair-coin masks,
    /// ids uniform over the range their uses accept).
    #[arg(long, default_value = "random")]
    inputs: String,
    /// Seed of the random inputs and of parameter initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Batch size (the value of every symbolic size).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Load parameters from a safetensors file instead of initialising them.
    #[arg(long, value_name = "FILE")]
    params: Option<PathBuf>,
    /// Compute in f64 instead of f32 (the interpreter only).
    #[arg(long)]
    f64: bool,
    #[command(flatten)]
    device: DeviceArg,
    /// Run the device's kernels and the interpreter side by side and report the first kernel
    /// whose output differs (also with MUSE_VALIDATE=1).
    #[arg(long)]
    validate: bool,
    /// Time every kernel of a (warm) run and list the slowest.
    #[arg(long)]
    profile: bool,
}

fn options(o: &ModelOpts) -> Result<Options, String> {
    let mut overrides = Vec::new();
    for s in &o.set {
        let Some((k, v)) = s.split_once('=') else {
            return Err(format!("--set {s}: expected KEY=VALUE, e.g. --set depth=24"));
        };
        overrides.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(Options { overrides, model: o.model.clone() })
}

fn compile(file: &Path, opts: &Options, verbose: bool) -> Result<(Compiled, Vec<Model>), ()> {
    let c = compile_path(file, opts);
    if verbose {
        if let Some(r) = &c.parse {
            eprintln!("{}: {r}", file.display());
        }
        for m in c.result.iter().flatten() {
            for r in &m.reports {
                eprintln!("{}: {r}", m.name);
            }
        }
    }
    match &c.result {
        Ok(models) => {
            let models = models.clone();
            Ok((c, models))
        }
        Err(d) => {
            eprintln!("{}", d.render(&c.sources));
            Err(())
        }
    }
}

fn group_digits(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(file: &Path, m: &Model) {
    let g = &m.graph;
    println!("{}: model {} ok", file.display(), m.name);
    println!("  parameters: {} in {} tensors", group_digits(g.param_count()), g.params.len());
    let show = |list: &[(String, muse_compiler::ir::NodeIndex)]| {
        list.iter().map(|(n, i)| format!("{n} {}", g.ty(*i))).collect::<Vec<_>>().join(", ")
    };
    println!("  inputs:  {}", show(&g.inputs));
    if !g.outputs.is_empty() {
        println!("  outputs: {}", show(&g.outputs));
    }
    if !g.losses.is_empty() {
        println!("  losses:  {}", show(&g.losses));
    }
    println!("  graph:   {} nodes", g.node_count());
}

/// Tensors by name.
type Tensors = HashMap<String, HostTensor>;

/// Parses the model options and compiles `file`; on failure the diagnostics are printed
/// and the exit code is returned.
fn load(file: &Path, o: &ModelOpts) -> Result<(Compiled, Vec<Model>), ExitCode> {
    let opts = options(o).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    compile(file, &opts, o.verbose).map_err(|()| ExitCode::FAILURE)
}

/// Inputs, parameters and interpreter settings for `muse run` and `muse grad`.
fn prepare(g: &muse_compiler::ir::Graph, run: &RunArgs) -> Result<(Tensors, Tensors, RunOptions), String> {
    if run.inputs != "random" {
        return Err(format!("--inputs {}: only `random` is supported", run.inputs));
    }
    if run.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let precision = if run.f64 { Precision::F64 } else { Precision::F32 };
    let params = match &run.params {
        Some(p) => checkpoint::load_params(g, p).map_err(|e| e.to_string())?,
        None => init_params(g, run.seed, precision).map_err(|e| e.to_string())?,
    };
    let inputs = random_inputs(g, run.batch, run.seed);
    Ok((inputs, params, RunOptions { precision, seed: run.seed }))
}

/// Computes `requested` on the chosen device (validating its kernels against the
/// interpreter, or timing them, when asked); returns the values and a line about how they
/// were computed.
fn execute(
    g: &muse_compiler::ir::Graph,
    requested: &[muse_compiler::ir::NodeIndex],
    run: &RunArgs,
) -> Result<(HashMap<muse_compiler::ir::NodeIndex, HostTensor>, String), String> {
    let (inputs, params, ro) = prepare(g, run)?;
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
        eprintln!("validate: {} kernels match the interpreter (worst relative error {:.3e})", v.checked, v.worst);
    }
    if run.profile {
        program.bind(&inputs, &params).map_err(|e| e.to_string())?;
        profile(program.as_mut(), run.batch as i64, ro.seed)?;
    }
    let vals = program.run(&inputs, &params, ro.seed).map_err(|e| e.to_string())?;
    Ok((vals, format!("device {}, {} launches", device.name(), program.launches())))
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
        eprintln!(
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
    eprintln!(
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
        eprintln!(
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
    let mut out = format!("model {} (batch {}, seed {}; {how})\n", m.name, run.batch, run.seed);
    for (kind, list) in [("output", &m.graph.outputs), ("loss", &m.graph.losses)] {
        for (name, n) in list {
            let t = &vals[n];
            out.push_str(&format!("  {kind} {name} {:?} {}: {}\n", t.shape, t.dtype(), t.stats()));
        }
    }
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
    let mut out = format!("model {} (batch {}, seed {}; {how}): loss {loss:.6}\n", m.name, run.batch, run.seed);
    let width = d.params.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut total = 0.0;
    for (name, n) in &d.params {
        let v = vals[n].to_f64();
        let sq: f64 = v.iter().map(|x| x * x).sum();
        total += sq;
        out.push_str(&format!("  {name:<width$}  {:.6e}\n", sq.sqrt()));
    }
    out.push_str(&format!("  {:<width$}  {:.6e}\n", "global norm", total.sqrt()));
    if !d.unreached.is_empty() {
        out.push_str(&format!("  no gradient reaches: {}\n", d.unreached.join(", ")));
    }
    Ok(out)
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

/// Writes to stdout; a closed pipe (`muse graph ... | head`) is not an error.
fn write_stdout(text: &str) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write output: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // Before any thread exists (see `quiet_threads`).
    muse_runtime::device::quiet_threads();
    let cli = Cli::parse();
    let is_grad = matches!(cli.command, Command::Grad { .. });
    match cli.command {
        Command::Check { files, opts } => {
            let verbose = opts.verbose;
            let opts = match options(&opts) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut failed = 0;
            for f in &files {
                match compile(f, &opts, verbose) {
                    Ok((_, models)) => models.iter().for_each(|m| report(f, m)),
                    Err(()) => failed += 1,
                }
            }
            if failed > 0 {
                eprintln!("{failed} of {} file(s) failed", files.len());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Command::Graph { file, dot, backward, stats, opts } => {
            let (c, models) = match load(&file, &opts) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let mut text = String::new();
            for m in &models {
                let diff = (backward || stats)
                    .then(|| {
                        (!m.graph.losses.is_empty())
                            .then(|| autodiff::differentiate(&m.graph, autodiff::Wrt::default()))
                    })
                    .flatten();
                if (backward || stats) && diff.is_none() {
                    eprintln!("error: model {} has no loss to differentiate", m.name);
                    return ExitCode::FAILURE;
                }
                if opts.verbose {
                    if let Some(d) = &diff {
                        eprintln!("{}: {}", m.name, d.report);
                    }
                }
                let g = diff.as_ref().map(|d| &d.graph).unwrap_or(&m.graph);
                if stats {
                    let fwd = m.graph.node_count();
                    let total = g.node_count();
                    text.push_str(&format!(
                        "{}: forward {fwd} nodes, backward {} nodes, backward/forward {:.2}\n",
                        m.name,
                        total - fwd,
                        (total - fwd) as f64 / fwd as f64
                    ));
                } else if dot {
                    text.push_str(&print::to_dot(g, &m.name));
                } else {
                    text.push_str(&format!("# model {} ({} nodes)\n", m.name, g.node_count()));
                    text.push_str(&print::to_text(g, Some(&c.sources)));
                }
            }
            write_stdout(&text)
        }
        Command::Inspect { file, backward, kernel, emit, batch, html, opts } => {
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
        Command::Train { file, train, set } => match train_command(file, &train, &set) {
            Ok(t) => write_stdout(&t),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Sample {
            run,
            prompt,
            prompts,
            steps,
            cfg,
            temperature,
            choice_temperature,
            seed,
            out,
            critic,
            device,
        } => {
            let mut all = prompt;
            if let Some(f) = prompts {
                match std::fs::read_to_string(&f) {
                    Ok(t) => all.extend(t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from)),
                    Err(e) => {
                        eprintln!("error: {}: {e}", f.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            let a = muse_train::sample::SampleArgs {
                run,
                prompts: all,
                steps,
                cfg,
                temperature,
                choice_temperature,
                seed,
                out,
                critic,
            };
            let device = match device.open(false) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match muse_train::sample::sample(&a, device.as_ref()) {
                Ok(files) => {
                    write_stdout(&files.iter().map(|f| format!("wrote {}\n", f.display())).collect::<String>())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tokenize { run, data, samples, device } => match tokenize_command(&run, &data, samples, &device) {
            Ok(t) => write_stdout(&t),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { file, run, opts } | Command::Grad { file, run, opts } => {
            let (_, models) = match load(&file, &opts) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let mut text = String::new();
            for m in &models {
                let r = if is_grad { grad_model(m, &run) } else { run_model(m, &run) };
                match r {
                    Ok(t) => text.push_str(&t),
                    Err(e) => {
                        eprintln!("error: {}: {e}", file.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            write_stdout(&text)
        }
    }
}
