//! `muse sample`: images from prompts with a trained masked-token model (MaskGIT decoding
//! with classifier-free guidance), decoded by its image tokenizer.

use super::cli::{fail, write_stdout, DeviceArg};
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
    /// Decoding steps.
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
    /// Classifier-free guidance scale (ramped up linearly over the steps).
    #[arg(long, default_value_t = 3.0)]
    pub cfg: f64,
    /// Sampling temperature of the first step (annealed to 0).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Scale of the noise that decides which tokens are re-masked (annealed to 0).
    #[arg(long, default_value_t = 4.5)]
    pub choice_temperature: f64,
    /// Seed: the same seed gives the same images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (NNN.png, grid.png, prompts.txt).
    #[arg(long, default_value = "samples")]
    pub out: PathBuf,
    /// A trained token critic's run directory: its scores choose which tokens to re-mask.
    #[arg(long, value_name = "RUN_DIR")]
    pub critic: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Samples every prompt; writes PNGs, a grid and the prompts with their judgements.
pub fn main(a: Args) -> ExitCode {
    let Args { run, prompt, prompts, steps, cfg, temperature, choice_temperature, seed, out, critic, device } = a;
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
        Err(e) => return fail(e),
    };
    match muse_train::sample::sample(&a, device.as_ref()) {
        Ok(files) => write_stdout(&files.iter().map(|f| format!("wrote {}\n", f.display())).collect::<String>()),
        Err(e) => fail(e),
    }
}
