//! `muse export`: a run's trained parameters as one safetensors file in PyTorch's layouts
//! (names as the `.muse` file declares them; linear weights [out, in], convolutions
//! [out, in, kh, kw]), without optimizer state, for loading into the same architecture
//! elsewhere.

use super::cli::{fail, write_stdout, PickArg};
use std::path::PathBuf;
use std::process::ExitCode;

/// What `muse export` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The run directory.
    pub run: PathBuf,
    /// Where to write (default: RUN_DIR/model.safetensors).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub pick: PickArg,
}

/// Writes the chosen checkpoint's parameters.
pub fn main(a: Args) -> ExitCode {
    let out = a.out.clone().unwrap_or_else(|| a.run.join("model.safetensors"));
    match muse_train::trained::export(&a.run, a.pick.pick(), &out) {
        Ok(t) => write_stdout(&t),
        Err(e) => fail(e),
    }
}
