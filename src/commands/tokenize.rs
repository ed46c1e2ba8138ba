//! `muse tokenize`: a data set as image token ids (cached in the tokenizer's run) and how
//! its reconstructions judge.

use super::cli::{write_stdout, DeviceArg};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `muse tokenize` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The image tokenizer's run directory.
    pub run: PathBuf,
    /// `shapes` (built in) or a folder of images.
    #[arg(long, default_value = "shapes")]
    pub data: String,
    /// Items to encode from an unlimited data set (a folder is encoded whole).
    #[arg(long, default_value_t = 8192, value_parser = muse_train::ranges::at_least_one)]
    pub samples: usize,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Encodes the data set and reports.
pub fn main(a: Args) -> ExitCode {
    match tokenize_command(&a.run, &a.data, a.samples, &a.device) {
        Ok(t) => write_stdout(&t),
        Err(e) => super::cli::fail(e),
    }
}

fn tokenize_command(run: &Path, data: &str, samples: usize, device: &DeviceArg) -> Result<String, String> {
    let device = device.open(false)?;
    let vq = muse_train::image_tokenizer::ImageTokenizer::open(run)?;
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
    if r.judged() > 0 {
        text.push_str(&format!(
            "reconstructions of {} images judged against their captions: {}\n",
            r.judged(),
            r.summary()
        ));
    }
    Ok(text)
}
