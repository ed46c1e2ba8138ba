//! `muse eval`: sample a trained generator at evaluation scale with fixed seeds, score the
//! images with every metric muse can compute, and record them in the run's `eval.json`.

use super::cli::{fail, write_stdout, DecodingArg, DeviceArg, PickArg};
use muse_train::eval::{evaluate, EvalArgs, Prompts};
use std::path::PathBuf;
use std::process::ExitCode;

/// What `muse eval` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The masked-token model's run directory.
    pub run: PathBuf,
    /// Images to generate.
    #[arg(long, default_value_t = 256, value_parser = muse_train::ranges::at_least_one)]
    pub samples: usize,
    /// `data` (captions of the run's data set from a stream training never read, scored
    /// beside their real images), `held-out` (the built-in set's unseen colour-shape pairs),
    /// or a file with one prompt per line (used in turn).
    #[arg(long, default_value = "data", value_name = "data|held-out|FILE")]
    pub prompts: Prompts,
    /// A trained classifier run (models/shapes_classifier.muse): the Frechet distance between
    /// its features of the generated and the real images (not comparable to Inception FID).
    #[arg(long, value_name = "RUN_DIR")]
    pub classifier: Option<PathBuf>,
    /// The FID Inception's weights (safetensors with PyTorch's names; scripts/convert_weights.py
    /// converts pytorch-fid's checkpoint): the FID between generated and real images.
    #[arg(long, value_name = "FILE")]
    pub fid_weights: Option<PathBuf>,
    /// CLIP ViT-B/32 weights (safetensors with Hugging Face CLIPModel's names): the CLIP
    /// score, with --clip-tokenizer.
    #[arg(long, value_name = "FILE", requires = "clip_tokenizer")]
    pub clip_weights: Option<PathBuf>,
    /// CLIP's tokenizer.json (Hugging Face's openai/clip-vit-base-patch32).
    #[arg(long, value_name = "FILE", requires = "clip_weights")]
    pub clip_tokenizer: Option<PathBuf>,
    /// Images generated at once.
    #[arg(long, default_value_t = 64, value_parser = muse_train::ranges::at_least_one)]
    pub batch: usize,
    #[command(flatten)]
    pub decoding: DecodingArg,
    #[command(flatten)]
    pub pick: PickArg,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// Evaluates the run; prints the evaluation as JSON.
pub fn main(a: Args) -> ExitCode {
    let device = match a.device.open(false) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let args = EvalArgs {
        run: a.run.clone(),
        samples: a.samples,
        prompts: a.prompts,
        decoding: a.decoding.decoding(),
        batch: a.batch,
        pick: a.pick.pick(),
        classifier: a.classifier.clone(),
        fid_weights: a.fid_weights.clone(),
        clip: a.clip_weights.clone().zip(a.clip_tokenizer.clone()),
    };
    match evaluate(&args, device.as_ref()) {
        Ok(e) => write_stdout(&format!(
            "{}\nrecorded in {}\n",
            serde_json::to_string_pretty(&e).expect("JSON values serialise"),
            a.run.join("eval.json").display()
        )),
        Err(e) => fail(e),
    }
}
