//! `muse check`: parse and elaborate files, report parameters, inputs and outputs.

use super::cli::{compile, group_digits, options, write_stdout, ModelOpts};
use muse_compiler::Model;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `muse check` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub opts: ModelOpts,
}

/// Checks every file; fails when one does not compile.
pub fn main(a: Args) -> ExitCode {
    let Args { files, opts } = a;
    let verbose = opts.verbose;
    let opts = match options(&opts) {
        Ok(o) => o,
        Err(e) => {
            muse_compiler::note!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut failed, mut text) = (0, String::new());
    for f in &files {
        match compile(f, &opts, verbose) {
            Ok((_, models)) => models.iter().for_each(|m| text.push_str(&report(f, m))),
            Err(()) => failed += 1,
        }
    }
    // Written at once, so that a closed pipe (`muse check ... | head -1`) is no error.
    let written = write_stdout(&text);
    if failed > 0 {
        muse_compiler::note!("{failed} of {} file(s) failed", files.len());
        return ExitCode::FAILURE;
    }
    written
}

/// The lines `muse check` prints for one model.
fn report(file: &Path, m: &Model) -> String {
    let g = &m.graph;
    let mut out = format!("{}: model {} ok\n", file.display(), m.name);
    out += &format!("  parameters: {} in {} tensors\n", group_digits(g.param_count()), g.params.len());
    let show = |list: &[(String, muse_compiler::ir::NodeIndex)]| {
        list.iter().map(|(n, i)| format!("{n} {}", g.ty(*i))).collect::<Vec<_>>().join(", ")
    };
    out += &format!("  inputs:  {}\n", show(&g.inputs));
    if !g.outputs.is_empty() {
        out += &format!("  outputs: {}\n", show(&g.outputs));
    }
    if !g.losses.is_empty() {
        out += &format!("  losses:  {}\n", show(&g.losses));
    }
    out += &format!("  graph:   {} nodes\n", g.node_count());
    out
}
