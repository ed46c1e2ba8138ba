//! Training and sampling of muse models over compiled kernels: data sets, text tokenizers,
//! run directories with atomic checkpoints, the training loops and MaskGIT sampling.

pub mod adversary;
pub mod config;
pub mod critic;
pub mod data;
pub mod error;
pub mod eval;
pub mod fit;
pub mod image_tokenizer;
pub mod masked;
pub mod meter;
pub mod objective;
pub mod picture;
pub mod ranges;
pub mod run;
pub mod sample;
pub mod text;
pub mod trained;
pub mod vq;
