//! The token critic's objective: judge which tokens of a trained generator's fills are the
//! data set's own.

use crate::error::Error;

use super::{compile_model, config_int, initial_params, token_model_sets, token_trainer, Setup};
use crate::critic::CriticBatches;
use crate::data::{self};
use crate::fit::{self, Batches, NoHook, Summary};
use crate::masked::MaskedBatches;
use crate::text::TextTokenizer;
use crate::trained::TrainedTokenModel;
use serde_json::{json, Value};

/// Trains a token critic on a trained generator's fills (`--generator RUN`).
pub(super) fn train(s: &Setup, mut config: Value) -> Result<Summary, Error> {
    let Setup { args, resume: _, device, run, .. } = *s;
    let (_opt, fit_cfg) = (s.opt(), |tokens_per_item| s.fit(tokens_per_item));
    let gen_dir = args.generator.as_ref().ok_or_else(|| {
        Error::Usage("a token critic needs --generator RUN_DIR (a trained masked-token model)".into())
    })?;
    let generator = TrainedTokenModel::open(gen_dir, device)?;
    let (codebook, grid) = (generator.codebook, generator.grid);
    let sets = token_model_sets(&args.sets, codebook, grid, &generator.vq.run)?;
    let model = compile_model(&args.model, &sets)?;
    let text_len = config_int(&model, "text_len")
        .ok_or_else(|| Error::Model("the model has no `text_len` config".into()))? as usize;
    let text_vocab = config_int(&model, "text_vocab")
        .ok_or_else(|| Error::Model("the model has no `text_vocab` config".into()))? as usize;
    // The critic reads captions exactly as the generator does.
    let text = TextTokenizer::load(&gen_dir.join("tokenizer.json"), text_len)?;
    if text.vocab_size() > text_vocab {
        return Err(Error::Usage(format!(
            "the generator's text tokenizer has {} entries but the critic's text_vocab is {text_vocab}",
            text.vocab_size()
        )));
    }
    text.save(&run.path.join("tokenizer.json"))?;
    config["objective"] = json!("token critic");
    config["image_tokenizer"] =
        json!({ "run": generator.vq.run, "checkpoint": generator.vq.checkpoint, "codebook": codebook, "grid": grid });
    config["generator"] = json!({ "run": gen_dir, "step": generator.step });
    run.write_config(&config)?;
    let vq_res = config_int(&generator.vq.model, "resolution")
        .ok_or_else(|| Error::Model("the image tokenizer has no `resolution` config".into()))?
        as usize;
    let data = data::open(&args.data, vq_res, args.seed, args.flip)?;
    let tokens = generator.vq.tokens(&args.data, data.as_ref(), args.samples, device)?;
    let per_item = tokens.per_item;
    let params = initial_params(&model, args)?;
    let masked = MaskedBatches::new(tokens.clone(), &text, codebook as i32, 0.0, args.batch, args.seed, 0)?;
    let mut probe = CriticBatches { masked, generator, seed: args.seed };
    let example = probe.next()?.0;
    let (mut trainer, start) = token_trainer(s, &model, &params, &example)?;
    let masked = MaskedBatches::new(tokens, &text, codebook as i32, 0.0, args.batch, args.seed, start.data_pos)?;
    let mut batches = CriticBatches { masked, generator: probe.generator, seed: args.seed };
    muse_compiler::note!(
        "train {} (token critic of {}) from step {} to {} in {}",
        model.name,
        gen_dir.display(),
        start.step,
        args.steps,
        run.path.display()
    );
    fit::fit(run, &mut trainer, &mut batches, &fit_cfg(per_item), start, &mut NoHook)
}
