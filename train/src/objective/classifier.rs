//! The classifier objective: images of a captioned data set, each labelled with the words
//! its caption holds (one sigmoid per word, binary cross-entropy), for the feature network
//! whose Frechet distance `muse eval` reports on the built-in data.

use crate::error::Error;

use super::{compile_model, initial_params, train_options, Setup};
use crate::data::loader::Loader;
use crate::data::{self, Dataset};
use crate::fit::{self, Batches, NoHook, Summary};
use crate::run::Progress;
use muse_runtime::device::Tensors;
use muse_runtime::train::Trainer;
use muse_runtime::HostTensor;
use serde_json::{json, Value};
use std::sync::Arc;

/// Words too common to tell captions apart.
const STOP: [&str; 8] = ["a", "an", "the", "in", "of", "to", "at", "on"];

/// The label words of a set of captions: every distinct word but the stop words, sorted.
pub fn label_words(captions: &[String]) -> Vec<String> {
    let mut words: Vec<String> = captions
        .iter()
        .flat_map(|c| c.split_whitespace().map(|w| w.to_lowercase()))
        .filter(|w| !STOP.contains(&w.as_str()))
        .collect();
    words.sort();
    words.dedup();
    words
}

/// A caption's targets: 1 for each label word it holds.
pub fn labels(caption: &str, words: &[String]) -> Vec<f64> {
    let held: Vec<String> = caption.split_whitespace().map(|w| w.to_lowercase()).collect();
    words.iter().map(|w| f64::from(u8::from(held.contains(w)))).collect()
}

/// The overrides of a classifier run: its settings with `classes` the number of label words
/// in its config.json (what trained it, so what reopens it).
pub fn classifier_sets(sets: &[(String, String)], config: &Value) -> Option<Vec<(String, String)>> {
    let n = config["classes"].as_array()?.len();
    let mut out: Vec<(String, String)> = sets.iter().filter(|(k, _)| k != "classes").cloned().collect();
    out.push(("classes".into(), n.to_string()));
    Some(out)
}

/// Trains the classifier on `--data` (its resolution is the model's).
pub(super) fn train(s: &Setup, mut config: Value) -> Result<Summary, Error> {
    let Setup { args, resume, device, run, .. } = *s;
    let probe = compile_model(&args.model, &args.sets)?;
    let image = probe.graph.inputs.iter().find(|x| x.0 == "image").map(|x| x.1);
    let res = image
        .and_then(|n| probe.graph.ty(n).shape.0.get(1).and_then(|d| d.as_known()))
        .ok_or_else(|| Error::Model("the classifier's `image` must be [B, resolution, resolution, 3]".into()))?
        as usize;
    let data: Arc<dyn Dataset> = Arc::from(data::open(&args.data, res, args.seed, args.flip)?);
    let words = match run.config().ok().filter(|_| resume).and_then(|c| c["classes"].as_array().cloned()) {
        Some(w) => w.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        None => label_words(&data.captions()),
    };
    if words.is_empty() {
        return Err(Error::Data(format!("--data {}: the captions hold no words to classify", args.data)));
    }
    config["objective"] = json!("classifier");
    config["classes"] = json!(words);
    let sets = classifier_sets(&args.sets, &config).expect("classes were just set");
    let model = compile_model(&args.model, &sets)?;
    run.write_config(&config)?;
    let params = initial_params(&model, args)?;
    let mut batches =
        LabelledBatches { loader: Loader::start(data.clone(), args.seed, 0, args.batch, 2), res, words: words.clone() };
    let example = batches.next()?.0;
    let options = train_options(args, &[], &[]);
    let mut trainer = Trainer::with_options(&model.graph, &model.name, &params, &example, s.opt(), device, &options)?;
    let (wire, bucket) = s.args.reduction();
    trainer.set_collective(s.ranks.clone(), wire, bucket);
    if args.ema > 0.0 {
        trainer.start_ema()?;
    }
    let start = if resume { fit::restore(run, &mut trainer, &mut NoHook)? } else { Progress { step: 0, data_pos: 0 } };
    let mut batches =
        LabelledBatches { loader: Loader::start(data, args.seed, start.data_pos, args.batch, 4), res, words };
    muse_compiler::note!(
        "train {} (classifier of {} caption words, {res}x{res}, batch {}) from step {} to {} in {}",
        model.name,
        batches.words.len(),
        args.batch,
        start.step,
        args.steps,
        run.path.display()
    );
    fit::fit(run, &mut trainer, &mut batches, &s.fit(0), start, &mut NoHook)
}

/// Images with the words of their captions as targets, decoded ahead.
struct LabelledBatches {
    loader: Loader,
    res: usize,
    words: Vec<String>,
}

impl Batches for LabelledBatches {
    fn next(&mut self) -> Result<(Tensors, u64), Error> {
        let b = self
            .loader
            .next_batch()
            .ok_or_else(|| Error::Usage("the data loader stopped: no image can be read".into()))?;
        let n = b.samples.len();
        let pixels: Vec<f64> = b.samples.iter().flat_map(|s| s.image.iter().map(|&x| x as f64)).collect();
        let targets: Vec<f64> = b.samples.iter().flat_map(|s| labels(&s.caption, &self.words)).collect();
        let mut t = Tensors::new();
        t.insert("image".into(), HostTensor::f(&[n, self.res, self.res, 3], pixels));
        t.insert("labels".into(), HostTensor::f(&[n, self.words.len()], targets));
        Ok((t, b.next))
    }
    fn waited(&self) -> std::time::Duration {
        self.loader.waited()
    }
    fn skipped(&self) -> usize {
        self.loader.skipped()
    }
    fn unreadable(&self) -> Vec<String> {
        self.loader.unreadable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_words_become_targets() {
        let captions =
            ["a large red circle in the top left".to_string(), "a Blue square above a red circle".to_string()];
        let words = label_words(&captions);
        assert_eq!(words, ["above", "blue", "circle", "large", "left", "red", "square", "top"]);
        assert_eq!(labels("a red square", &words), [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
        let config = serde_json::json!({ "classes": words });
        let sets = classifier_sets(&[("classes".into(), "3".into()), ("channels".into(), "8".into())], &config);
        assert_eq!(sets.unwrap(), [("channels".to_string(), "8".to_string()), ("classes".into(), "8".into())]);
        assert_eq!(classifier_sets(&[], &serde_json::json!({})), None);
    }
}
