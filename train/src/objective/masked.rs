//! The masked-token objective: Muse's cosine masking of image token ids, conditioned on
//! the captions (dropped for classifier-free guidance).

use crate::error::Error;

use super::{compile_model, config_int, initial_params, token_model_sets, token_trainer, Setup};
use crate::data;
use crate::fit::{self, Batches, NoHook, Summary};
use crate::image_tokenizer::ImageTokenizer;
use crate::masked::MaskedBatches;
use crate::text::TextTokenizer;
use serde_json::{json, Value};

/// Trains a masked-token model on the ids a trained image tokenizer (`--tokenizer RUN`)
/// gives the data set, with Muse's cosine masking and classifier-free guidance dropout.
pub(super) fn train(s: &Setup, mut config: Value) -> Result<Summary, Error> {
    let Setup { args, resume, device, run, .. } = *s;
    let (_opt, fit_cfg) = (s.opt(), |tokens_per_item| s.fit(tokens_per_item));
    let vq_dir = args.tokenizer.as_ref().ok_or_else(|| {
        Error::Usage("a masked-token model needs --tokenizer RUN_DIR (a trained image tokenizer)".into())
    })?;
    let vq = ImageTokenizer::open(vq_dir)?;
    let (codebook, grid) = vq.codebook_and_grid()?;
    let sets = token_model_sets(&args.sets, codebook, grid, vq_dir)?;
    let model = compile_model(&args.model, &sets)?;
    let text_len = config_int(&model, "text_len")
        .ok_or_else(|| Error::Model("the model has no `text_len` config".into()))? as usize;
    let text_vocab = config_int(&model, "text_vocab")
        .ok_or_else(|| Error::Model("the model has no `text_vocab` config".into()))? as usize;
    let vq_res = config_int(&vq.model, "resolution")
        .ok_or_else(|| Error::Model("the image tokenizer has no `resolution` config".into()))?
        as usize;
    let data = data::open(&args.data, vq_res, args.seed, args.flip)?;
    let tok_path = run.path.join("tokenizer.json");
    let text = if resume && tok_path.is_file() {
        TextTokenizer::load(&tok_path, text_len)?
    } else if let Some(p) = &args.text_tokenizer {
        TextTokenizer::load(p, text_len)?
    } else {
        TextTokenizer::train(&data.captions(), text_vocab, text_len)?
    };
    if text.vocab_size() > text_vocab {
        return Err(Error::Usage(format!(
            "the text tokenizer has {} entries but the model's text_vocab is {text_vocab}: --set text_vocab={}",
            text.vocab_size(),
            text.vocab_size()
        )));
    }
    if run.writer {
        text.save(&tok_path)?;
    }
    config["objective"] = json!("masked tokens");
    config["image_tokenizer"] =
        json!({ "run": vq_dir, "checkpoint": vq.checkpoint, "codebook": codebook, "grid": grid });
    run.write_config(&config)?;
    let tokens = vq.tokens(&args.data, data.as_ref(), args.samples, device)?;
    let params = initial_params(&model, args)?;
    let mut probe_batches = MaskedBatches::new(tokens.clone(), &text, codebook as i32, 0.0, args.batch, args.seed, 0)?;
    let example = probe_batches.next()?.0;
    let (mut trainer, start) = token_trainer(s, &model, &params, &example)?;
    let per_item = tokens.per_item;
    let mut batches =
        MaskedBatches::new(tokens, &text, codebook as i32, args.text_dropout, args.batch, args.seed, start.data_pos)?;
    if run.writer {
        muse_compiler::note!(
            "train {} (masked tokens, codebook {codebook}, grid {grid}) from step {} to {} in {}",
            model.name,
            start.step,
            args.steps,
            run.path.display()
        );
    }
    fit::fit(run, &mut trainer, &mut batches, &fit_cfg(per_item), start, &mut NoHook)
}
