//! One module per command; `cli` holds what they share.

pub mod check;
pub mod cli;
pub mod eval;
pub mod export;
pub mod fid;
pub mod graph;
pub mod inspect;
pub mod run;
pub mod sample;
pub mod table;
pub mod tokenize;
pub mod train;
