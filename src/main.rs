//! `muse`: the command-line program of the muse compiler and runtime. Each command is a
//! module of `commands/`; this file only parses and dispatches.

mod commands;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use commands::{check, eval, export, fid, graph, inspect, run, sample, table, tokenize, train};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "muse", version, about = "A compiler and runtime for text-to-image model architectures")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and elaborate .muse files; print parameter counts and input/output shapes.
    Check(check::Args),
    /// Print a model's graph IR as text, or as Graphviz DOT with `--dot`.
    Graph(graph::Args),
    /// Show how a model is fused into kernels: one row per kernel and why values are cut.
    Inspect(inspect::Args),
    /// Run a model on random inputs on a device; print output statistics.
    Run(run::Args),
    /// Train a model on a data set over compiled kernels: an image tokenizer (a model with
    /// an `image` input) or a masked-token model (with `--tokenizer`, a trained one's run).
    Train(Box<train::Args>),
    /// Encode a data set into image token ids with a trained image tokenizer (cached in its
    /// run directory; `muse train` does this on its own when it needs to).
    Tokenize(tokenize::Args),
    /// Generate images from prompts with a trained masked-token model (MaskGIT decoding with
    /// classifier-free guidance), decoded by its image tokenizer; writes PNGs and a grid.
    Sample(sample::Args),
    /// Sample a trained generator at evaluation scale with fixed seeds and score the images
    /// (caption alignment on the built-in data); recorded in the run's eval.json.
    Eval(eval::Args),
    /// The FID between two image sets (folders, the built-in data, or .npy features).
    Fid(fid::Args),
    /// Write a run's trained parameters as one safetensors file in PyTorch's layouts.
    Export(export::Args),
    /// The results table of runs (method, parameters, steps, batch, FID, CLIP, alignment) as
    /// Markdown, with plots of their losses, alignment against step and samples.
    Table(table::Args),
    /// Differentiate a model's loss; print the loss and every parameter's gradient norm.
    Grad(run::Args),
}

fn main() -> ExitCode {
    // Before any thread exists (see `quiet_threads`).
    muse_runtime::quiet_threads();
    // Parsed by hand so that a command can tell the flags a user gave from defaults.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Check(a) => check::main(a),
        Command::Graph(a) => graph::main(a),
        Command::Inspect(a) => inspect::main(a),
        Command::Run(a) => run::main(a, false),
        Command::Grad(a) => run::main(a, true),
        Command::Train(a) => train::main(*a, matches.subcommand_matches("train").expect("the train command")),
        Command::Tokenize(a) => tokenize::main(a),
        Command::Sample(a) => sample::main(a),
        Command::Eval(a) => eval::main(a),
        Command::Table(a) => table::main(a),
        Command::Export(a) => export::main(a),
        Command::Fid(a) => fid::main(a),
    }
}
