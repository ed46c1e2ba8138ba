//! Captions to token ids with the `tokenizers` crate: a `tokenizer.json` the user supplies
//! (T5's, CLIP's, ...) or a word-level one trained here on the data set's captions and
//! saved next to the checkpoints. Ids are cut or padded to the model's text length; the
//! mask marks real tokens.

use crate::error::Error;

use std::path::Path;
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, Tokenizer};

/// The padding token of tokenizers trained here (id 0).
pub const PAD: &str = "[PAD]";
/// The unknown-word token of tokenizers trained here (id 1).
pub const UNK: &str = "[UNK]";

/// A text tokenizer and the length captions are padded to.
pub struct TextTokenizer {
    tok: Tokenizer,
    pad: u32,
    /// Tokens per caption.
    pub len: usize,
}

impl TextTokenizer {
    /// Reads a `tokenizer.json`.
    pub fn load(path: &Path, len: usize) -> Result<TextTokenizer, Error> {
        let tok = Tokenizer::from_file(path)
            .map_err(|e| Error::Usage(format!("{}: not a usable tokenizer.json ({e})", path.display())))?;
        let pad = ["[PAD]", "<pad>", "<|endoftext|>", "</s>"].iter().find_map(|t| tok.token_to_id(t)).unwrap_or(0);
        Ok(TextTokenizer { tok, pad, len })
    }

    /// Trains a lower-cased word-level tokenizer on `captions`, keeping at most `vocab`
    /// entries (the model's text vocabulary) with `[PAD]` = 0 and `[UNK]` = 1.
    pub fn train(captions: &[String], vocab: usize, len: usize) -> Result<TextTokenizer, Error> {
        let model = WordLevel::builder()
            .unk_token(UNK.into())
            .build()
            .map_err(|e| Error::Usage(format!("building the text tokenizer: {e}")))?;
        let mut tok = Tokenizer::new(model);
        tok.with_normalizer(Some(Lowercase));
        tok.with_pre_tokenizer(Some(Whitespace {}));
        let trainer = WordLevelTrainer::builder()
            .vocab_size(vocab)
            .min_frequency(1)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(PAD, true), AddedToken::from(UNK, true)])
            .build()
            .map_err(|e| Error::Usage(format!("building the text tokenizer's trainer: {e}")))?;
        let mut trainer = TrainerWrapper::from(trainer);
        tok.train(&mut trainer, captions.iter())
            .map_err(|e| Error::Usage(format!("training the text tokenizer: {e}")))?;
        let pad = tok.token_to_id(PAD).unwrap_or(0);
        Ok(TextTokenizer { tok, pad, len })
    }

    /// Writes `tokenizer.json` (atomically).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let json = self.tok.to_string(true).map_err(Error::format(path))?;
        crate::run::write_atomic(path, json.as_bytes())
    }

    /// Entries in the vocabulary (every id is below this).
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Token ids and mask of a caption, cut or padded to `len`. An empty caption (the null
    /// condition of classifier-free guidance) is one visible padding token, so attention
    /// over the text always has a key.
    pub fn encode(&self, caption: &str) -> Result<(Vec<i32>, Vec<bool>), Error> {
        let enc = self.tok.encode(caption, false).map_err(|e| Error::Usage(format!("tokenizing {caption:?}: {e}")))?;
        let mut ids: Vec<i32> = enc.get_ids().iter().take(self.len).map(|&i| i as i32).collect();
        let mut mask = vec![true; ids.len()];
        if ids.is_empty() {
            ids.push(self.pad as i32);
            mask.push(true);
        }
        ids.resize(self.len, self.pad as i32);
        mask.resize(self.len, false);
        Ok((ids, mask))
    }

    /// The null condition: what an empty caption encodes to.
    pub fn null(&self) -> (Vec<i32>, Vec<bool>) {
        self.encode("").expect("an empty caption encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_word_level_round_trips_through_tokenizer_json() {
        let caps: Vec<String> = ["a large red circle on the left", "a blue square above a green triangle"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let t = TextTokenizer::train(&caps, 64, 6).unwrap();
        assert_eq!(t.vocab_size(), 2 + 12, "two special tokens and twelve words");
        let (ids, mask) = t.encode("A Large RED circle").unwrap();
        assert_eq!(mask, vec![true, true, true, true, false, false]);
        assert!(ids[..4].iter().all(|&i| i >= 2), "known words: {ids:?}");
        assert_eq!(ids[4..], [0, 0]);
        let (unk, _) = t.encode("a purple circle").unwrap();
        assert_eq!(unk[1], 1, "unknown word");
        let (long, m) = t.encode("a b c d e f g h").unwrap();
        assert_eq!((long.len(), m.iter().filter(|&&x| x).count()), (6, 6));
        assert_eq!(t.null(), (vec![0; 6], vec![true, false, false, false, false, false]));
        let dir = std::env::temp_dir().join(format!("muse-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        t.save(&dir.join("tokenizer.json")).unwrap();
        let back = TextTokenizer::load(&dir.join("tokenizer.json"), 6).unwrap();
        assert_eq!(back.encode("a large red circle").unwrap(), t.encode("a large red circle").unwrap());
        std::fs::remove_dir_all(&dir).ok();
        assert!(TextTokenizer::load(&dir.join("missing.json"), 6).is_err());
    }
}
