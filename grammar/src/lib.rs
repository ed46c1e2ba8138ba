//! The `.muse` language front end: the pest grammar (`muse.pest`), the parser, and the AST.

pub mod ast;
mod parser;

pub use parser::{parse, SyntaxError};
