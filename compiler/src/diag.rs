//! Diagnostics: every error a `.muse` program can cause, with a location, a class, a
//! one-line message and a hint; rendered with miette.

use crate::source::{Loc, SourceMap};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode};
use std::fmt;

/// The class of a diagnostic; tests and tools match on it, users see it as the error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiagClass {
    /// The text does not follow the grammar.
    Syntax,
    /// A name that is not defined.
    UnknownName,
    /// Too many, too few, unknown or repeated arguments.
    Arity,
    /// Shapes that do not fit.
    Shape,
    /// Element types that do not fit.
    DType,
    /// A `--set` key the model's config does not have.
    UnknownConfigKey,
    /// Files that import each other.
    CyclicImport,
    /// A value needed at compile time (repeat count, `if` condition, shape) that is a tensor.
    NotCompileTime,
    /// A value of the wrong kind (a string where a number is needed, ...).
    Type,
    /// An imported file that can't be read.
    Import,
    /// A name defined twice.
    Duplicate,
    /// A statement in the wrong place or a malformed model.
    Invalid,
    /// A user `assert` failed.
    Assert,
    /// A program too large to elaborate (runaway `repeat` or recursion).
    Limit,
}

impl DiagClass {
    /// The code shown to users, e.g. `muse::shape`.
    pub fn code(self) -> &'static str {
        match self {
            DiagClass::Syntax => "muse::syntax",
            DiagClass::UnknownName => "muse::unknown_name",
            DiagClass::Arity => "muse::arity",
            DiagClass::Shape => "muse::shape",
            DiagClass::DType => "muse::dtype",
            DiagClass::UnknownConfigKey => "muse::unknown_config_key",
            DiagClass::CyclicImport => "muse::cyclic_import",
            DiagClass::NotCompileTime => "muse::not_compile_time",
            DiagClass::Type => "muse::type",
            DiagClass::Import => "muse::import",
            DiagClass::Duplicate => "muse::duplicate",
            DiagClass::Invalid => "muse::invalid",
            DiagClass::Assert => "muse::assert",
            DiagClass::Limit => "muse::limit",
        }
    }
}

/// A compile error with its location and the chain of block calls that led to it.
#[derive(Clone, Debug)]
pub struct Diag {
    /// Class of error.
    pub class: DiagClass,
    /// Primary location (`None` only for errors about the command line).
    pub loc: Option<Loc>,
    /// One-line explanation.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// Call sites from the innermost block call outwards.
    pub trace: Vec<Loc>,
}

/// Result type of the compiler front end.
pub type Result<T> = std::result::Result<T, Box<Diag>>;

impl Diag {
    /// A new diagnostic at `loc`.
    pub fn new(class: DiagClass, loc: Loc, message: impl Into<String>) -> Box<Diag> {
        Box::new(Diag { class, loc: Some(loc), message: message.into(), hint: None, trace: vec![] })
    }
    /// A diagnostic without a source location.
    pub fn bare(class: DiagClass, message: impl Into<String>) -> Box<Diag> {
        Box::new(Diag { class, loc: None, message: message.into(), hint: None, trace: vec![] })
    }
    /// Adds a hint.
    pub fn with_hint(mut self: Box<Self>, hint: impl Into<String>) -> Box<Diag> {
        self.hint = Some(hint.into());
        self
    }
    /// Adds an optional hint.
    pub fn with_opt_hint(mut self: Box<Self>, hint: Option<String>) -> Box<Diag> {
        if hint.is_some() {
            self.hint = hint;
        }
        self
    }
    /// `file:line:col: message` in one line.
    pub fn short(&self, sm: &SourceMap) -> String {
        match self.loc {
            Some(l) => format!("{}: {}: {}", sm.describe(l), self.class.code(), self.message),
            None => format!("{}: {}", self.class.code(), self.message),
        }
    }
    /// 1-based line and column of the primary location.
    pub fn line_col(&self, sm: &SourceMap) -> Option<(usize, usize)> {
        self.loc.map(|l| sm.line_col(l))
    }
    /// The full report with source excerpt, as miette draws it (no colours).
    pub fn render(&self, sm: &SourceMap) -> String {
        let mut out = String::new();
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor());
        let r = Rendered::new(self, sm);
        if handler.render_report(&mut out, &r).is_err() {
            return self.short(sm);
        }
        out
    }
}

/// A diagnostic paired with the sources, so miette can draw it.
struct Rendered {
    class: DiagClass,
    message: String,
    help: Option<String>,
    src: Option<NamedSource<String>>,
    label: Option<(usize, usize)>,
}

impl Rendered {
    fn new(d: &Diag, sm: &SourceMap) -> Rendered {
        let mut help = d.hint.clone().unwrap_or_default();
        if !d.trace.is_empty() {
            let calls: Vec<String> = d.trace.iter().map(|l| sm.describe(*l)).collect();
            if !help.is_empty() {
                help.push('\n');
            }
            help.push_str(&format!("in the block called at {}", calls.join(", called at ")));
        }
        let mut message = elide_long_runs(&d.message);
        let (src, label) = match d.loc {
            Some(l) if lines_around(&sm.get(l.file).text, l.span.start).any(|line| line.len() > MAX_SHOWN_LINE) => {
                // A snippet of a megabyte-long line helps no one: the place is named instead.
                message.push_str(&format!(" (at {})", sm.describe(l)));
                (None, None)
            }
            Some(l) => {
                let f = sm.get(l.file);
                let len = l.span.end.saturating_sub(l.span.start);
                (Some(NamedSource::new(f.name.clone(), f.text.to_string())), Some((l.span.start, len)))
            }
            None => (None, None),
        };
        let help = elide_long_runs(&help);
        Rendered { class: d.class, message, help: (!help.is_empty()).then_some(help), src, label }
    }
}

/// The longest source line a diagnostic shows as a snippet.
const MAX_SHOWN_LINE: usize = 500;
/// The longest run of characters without a space a message shows in full.
const MAX_SHOWN_RUN: usize = 120;

/// The line holding byte `at` of `text` and the lines on either side of it (what a snippet shows).
fn lines_around(text: &str, at: usize) -> impl Iterator<Item = &str> {
    let b = text.as_bytes();
    let at = at.min(b.len());
    let line_start = |i: usize| b[..i].iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
    let line_end = |i: usize| b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p);
    let start = line_start(line_start(at).saturating_sub(1));
    let end = line_end((line_end(at) + 1).min(b.len()));
    // Both ends lie at a newline or an end of the text: character boundaries.
    text.get(start..end).unwrap_or_default().lines()
}

/// `s` with every run of more than [`MAX_SHOWN_RUN`] characters without a space (a runaway
/// identifier or string) cut to its ends and its length.
fn elide_long_runs(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(4096));
    let mut run: Vec<char> = Vec::new();
    let flush = |run: &mut Vec<char>, out: &mut String| {
        if run.len() > MAX_SHOWN_RUN {
            out.extend(&run[..40]);
            out.push_str(&format!("...({} characters)...", run.len()));
            out.extend(&run[run.len() - 10..]);
        } else {
            out.extend(run.iter());
        }
        run.clear();
    };
    for c in s.chars() {
        if c.is_whitespace() {
            flush(&mut run, &mut out);
            out.push(c);
        } else {
            run.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.class.code()))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.src.as_ref().map(|s| s as &dyn SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (s, l) = self.label?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(Some("here".into()), (s, l)))))
    }
}

/// The closest of `candidates` to `name` by edit distance, if close enough to suggest.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(name, c);
        if d <= (name.len() / 3).max(1) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Optimal string alignment distance: insertions, deletions, substitutions and adjacent
/// transpositions each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("depht", ["depth", "dim"]).as_deref(), Some("did you mean `depth`?"));
        assert_eq!(suggest("lienar", ["linear", "layernorm"]).as_deref(), Some("did you mean `linear`?"));
        assert_eq!(suggest("zzz", ["depth", "dim"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }
}
