//! `muse fid A B`: the FID between two image sets (folders, the built-in data set, or
//! features in `.npy` files), as pytorch-fid computes it.

use super::cli::{fail, write_stdout, DeviceArg};
use muse_train::eval::features::FeatureNet;
use muse_train::eval::fid::{statistics, ImageSet};
use muse_train::eval::frechet::frechet_distance;
use std::path::PathBuf;
use std::process::ExitCode;

/// What `muse fid` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The first set: a folder of images, `shapes[:RES]` (the built-in data), or a .npy file
    /// of features.
    pub a: String,
    /// The second set, likewise.
    pub b: String,
    /// The FID Inception's weights (safetensors; scripts/convert_weights.py), for image sets.
    #[arg(long, value_name = "FILE")]
    pub fid_weights: Option<PathBuf>,
    /// Images read from each set at most.
    #[arg(long, default_value_t = 10_000, value_parser = muse_train::ranges::at_least_one)]
    pub samples: usize,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Prints the FID.
pub fn main(a: Args) -> ExitCode {
    let run = || -> Result<String, String> {
        let (sa, sb) =
            (ImageSet::parse(&a.a).map_err(|e| e.to_string())?, ImageSet::parse(&a.b).map_err(|e| e.to_string())?);
        let needs_net = !matches!((&sa, &sb), (ImageSet::Features(_), ImageSet::Features(_)));
        let mut net = match (&a.fid_weights, needs_net) {
            (Some(w), true) => {
                let device = a.device.open(false)?;
                Some(FeatureNet::inception(w, device.as_ref()).map_err(|e| e.to_string())?)
            }
            (None, true) => return Err("image sets need --fid-weights (the FID Inception's weights)".into()),
            _ => None,
        };
        let ga = statistics(&sa, net.as_mut(), a.samples).map_err(|e| format!("{}: {e}", a.a))?;
        let gb = statistics(&sb, net.as_mut(), a.samples).map_err(|e| format!("{}: {e}", a.b))?;
        let fid = frechet_distance(&ga, &gb).map_err(|e| e.to_string())?;
        Ok(format!("FID {fid:.6} ({} and {} images)\n", ga.count, gb.count))
    };
    match run() {
        Ok(t) => write_stdout(&t),
        Err(e) => fail(e),
    }
}
