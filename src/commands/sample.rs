//! `muse sample`: images from prompts with a trained masked-token model (MaskGIT decoding
//! with classifier-free guidance), decoded by its image tokenizer.

use super::cli::{fail, write_stdout, DecodingArg, DeviceArg, PickArg};
use std::path::PathBuf;
use std::process::ExitCode;

/// What `muse sample` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The masked-token model's run directory.
    pub run: PathBuf,
    /// A prompt (repeatable).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A file with one prompt per line.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    #[command(flatten)]
    pub decoding: DecodingArg,
    /// Output folder (NNN.png, grid.png, prompts.txt).
    #[arg(long, default_value = "samples")]
    pub out: PathBuf,
    /// A trained token critic's run directory: its scores choose which tokens to re-mask.
    #[arg(long, value_name = "RUN_DIR")]
    pub critic: Option<PathBuf>,
    /// Images decoded at once.
    #[arg(long, default_value_t = 64, value_parser = muse_train::ranges::at_least_one)]
    pub batch: usize,
    #[command(flatten)]
    pub pick: PickArg,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Samples every prompt; writes PNGs, a grid and the prompts with their judgements.
pub fn main(a: Args) -> ExitCode {
    let Args { run, prompt, prompts, decoding, out, critic, batch, pick, device } = a;
    let mut all = prompt;
    if let Some(f) = prompts {
        match std::fs::read_to_string(&f) {
            Ok(t) => all.extend(t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from)),
            Err(e) => {
                muse_compiler::note!("error: {}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let a = muse_train::sample::SampleArgs {
        run,
        prompts: all,
        decoding: decoding.decoding(),
        out,
        critic,
        batch,
        pick: pick.pick(),
    };
    let device = match device.open(false) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    match muse_train::sample::sample(&a, device.as_ref()) {
        Ok(files) => write_stdout(&files.iter().map(|f| format!("wrote {}\n", f.display())).collect::<String>()),
        Err(e) => fail(e),
    }
}
