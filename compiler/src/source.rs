//! Loaded source files and locations in them.

use muse_grammar::ast::Span;
use std::sync::Arc;

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A span in a particular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    /// The file.
    pub file: FileId,
    /// Byte range in it.
    pub span: Span,
}

/// One source file: its display name and text.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Name shown in diagnostics (a path, or `std/nn.muse` for the standard library).
    pub name: String,
    /// The text.
    pub text: Arc<str>,
}

/// Every file a compilation read, in load order.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    /// Adds a file and returns its id.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<Arc<str>>) -> FileId {
        self.files.push(SourceFile { name: name.into(), text: text.into() });
        FileId(self.files.len() as u32 - 1)
    }
    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }
    /// Whether no file was read.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
    /// The file with this id.
    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, loc: Loc) -> (usize, usize) {
        line_col(&self.get(loc.file).text, loc.span.start)
    }
    /// The source text of a location.
    pub fn snippet(&self, loc: Loc) -> &str {
        let t = &self.get(loc.file).text;
        t.get(loc.span.start..loc.span.end).unwrap_or("")
    }
    /// `file:line:col` of a location.
    pub fn describe(&self, loc: Loc) -> String {
        let (l, c) = self.line_col(loc);
        format!("{}:{l}:{c}", self.get(loc.file).name)
    }
}

/// 1-based line and column (in characters) of byte offset `pos` in `text`.
pub fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}
