//! `muse graph`: the graph IR as text or Graphviz DOT, forward or differentiated.

use super::cli::{load, write_stdout, ModelOpts};
use muse_compiler::autodiff;
use muse_compiler::ir::print;
use std::path::PathBuf;
use std::process::ExitCode;

/// What `muse graph` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The .muse file.
    pub file: PathBuf,
    /// Graphviz DOT, nodes grouped by block path.
    #[arg(long)]
    pub dot: bool,
    /// The differentiated graph: forward and backward pass.
    #[arg(long)]
    pub backward: bool,
    /// Only node counts: forward, backward and their ratio.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub opts: ModelOpts,
}

/// Prints each model's graph.
pub fn main(a: Args) -> ExitCode {
    let Args { file, dot, backward, stats, opts } = a;
    let (c, models) = match load(&file, &opts) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut text = String::new();
    for m in &models {
        let diff = (backward || stats)
            .then(|| (!m.graph.losses.is_empty()).then(|| autodiff::differentiate(&m.graph, autodiff::Wrt::default())))
            .flatten();
        if (backward || stats) && diff.is_none() {
            muse_compiler::note!("error: model {} has no loss to differentiate", m.name);
            return ExitCode::FAILURE;
        }
        if opts.verbose {
            if let Some(d) = &diff {
                muse_compiler::note!("{}: {}", m.name, d.report);
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
