//! `muse`: the command-line program of the muse compiler and runtime.

use clap::{Parser, Subcommand};
use muse_compiler::ir::print;
use muse_compiler::{compile_path, Compiled, Model, Options};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "muse",
    version,
    about = "A compiler and runtime for text-to-image model architectures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        #[command(flatten)]
        opts: ModelOpts,
    },
}

fn options(o: &ModelOpts) -> Result<Options, String> {
    let mut overrides = Vec::new();
    for s in &o.set {
        let Some((k, v)) = s.split_once('=') else {
            return Err(format!(
                "--set {s}: expected KEY=VALUE, e.g. --set depth=24"
            ));
        };
        overrides.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(Options {
        overrides,
        model: o.model.clone(),
    })
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
    println!(
        "  parameters: {} in {} tensors",
        group_digits(g.param_count()),
        g.params.len()
    );
    let show = |list: &[(String, muse_compiler::ir::NodeIndex)]| {
        list.iter()
            .map(|(n, i)| format!("{n} {}", g.ty(*i)))
            .collect::<Vec<_>>()
            .join(", ")
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
    let cli = Cli::parse();
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
        Command::Graph { file, dot, opts } => {
            let verbose = opts.verbose;
            let opts = match options(&opts) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let Ok((c, models)) = compile(&file, &opts, verbose) else {
                return ExitCode::FAILURE;
            };
            let mut text = String::new();
            for m in &models {
                if dot {
                    text.push_str(&print::to_dot(&m.graph, &m.name));
                } else {
                    text.push_str(&format!(
                        "# model {} ({} nodes)\n",
                        m.name,
                        m.graph.node_count()
                    ));
                    text.push_str(&print::to_text(&m.graph, Some(&c.sources)));
                }
            }
            write_stdout(&text)
        }
    }
}
