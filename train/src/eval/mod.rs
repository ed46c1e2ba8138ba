//! Evaluation: caption alignment on the built-in data set and Frechet distances between
//! feature sets.

pub mod align;
pub mod frechet;
