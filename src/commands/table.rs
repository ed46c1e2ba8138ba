//! `muse table`: the research log's results table from run directories, as Markdown, with
//! plots of the runs' losses, alignment against step and samples.

use super::cli::{fail, write_stdout};
use muse_train::eval::table::{markdown, plots, RunSummary};
use std::path::PathBuf;
use std::process::ExitCode;

/// What `muse table` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Run directories, one row each (evaluated with `muse eval` for the metric columns).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder for table.md, loss.svg, alignment.svg and samples.png.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
}

/// Reads every run, writes the table and plots, prints the table.
pub fn main(a: Args) -> ExitCode {
    let mut runs = Vec::new();
    for r in &a.runs {
        match RunSummary::read(r) {
            Ok(s) => runs.push(s),
            Err(e) => return fail(format!("{}: {e}", r.display())),
        }
    }
    let table = markdown(&runs);
    let files = match plots(&runs, &a.out) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let md = a.out.join("table.md");
    let rows: String = runs.iter().enumerate().map(|(i, r)| format!("{}. {}\n", i + 1, r.name)).collect();
    let columns: String = muse_train::eval::table::sample_prompts(&runs)
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}. {p}\n", i + 1))
        .collect();
    let text = format!(
        "{table}\nRows of samples.png, top to bottom:\n\n{rows}\nIts columns, left to right (the first prompts of the evaluation):\n\n{columns}"
    );
    if let Err(e) = muse_train::run::write_atomic(&md, text.as_bytes()) {
        return fail(e);
    }
    let written: String = std::iter::once(&md).chain(&files).map(|f| format!("wrote {}\n", f.display())).collect();
    write_stdout(&format!("{text}\n{written}"))
}
