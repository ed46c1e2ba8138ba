//! Loads a root file and everything it imports: `std/...` from the embedded standard
//! library, other paths relative to the importing file. Cycles are errors.

use crate::diag::{Diag, DiagClass, Result};
use crate::source::{FileId, Loc, SourceMap};
use crate::stdlib;
use muse_grammar::ast::{self, Span};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A root file with all its imports, parsed.
#[derive(Debug, Default)]
pub struct Program {
    /// Every file read.
    pub sources: SourceMap,
    /// Parsed files, in load order (imports before importers).
    pub files: Vec<(FileId, ast::File)>,
    /// The file the user named.
    pub root: Option<FileId>,
}

/// Where a file comes from; decides how its own imports resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Origin {
    Disk(PathBuf),
    Std(String),
    Memory(String),
}

impl Program {
    /// Loads the file at `path` and its imports. Errors are returned with the sources read so far.
    pub fn load_path(path: &Path) -> std::result::Result<Program, (Program, Box<Diag>)> {
        let mut p = Program::default();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return Err((p, Diag::bare(DiagClass::Import, format!("cannot read {}: {e}", path.display())))),
        };
        let origin = Origin::Disk(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()));
        let mut loader = Loader { prog: &mut p, done: HashMap::new(), stack: vec![] };
        let r = loader.load(origin, path.display().to_string(), text);
        match r {
            Ok(id) => {
                p.root = Some(id);
                Ok(p)
            }
            Err(d) => Err((p, d)),
        }
    }

    /// Loads source text given directly (tests, tools); relative imports resolve from the
    /// current directory.
    pub fn load_source(name: &str, text: &str) -> std::result::Result<Program, (Program, Box<Diag>)> {
        let mut p = Program::default();
        let mut loader = Loader { prog: &mut p, done: HashMap::new(), stack: vec![] };
        let r = loader.load(Origin::Memory(name.to_string()), name.to_string(), text.to_string());
        match r {
            Ok(id) => {
                p.root = Some(id);
                Ok(p)
            }
            Err(d) => Err((p, d)),
        }
    }

    /// The parsed root file.
    pub fn root_file(&self) -> Option<(FileId, &ast::File)> {
        let r = self.root?;
        self.files.iter().find(|(id, _)| *id == r).map(|(id, f)| (*id, f))
    }
}

struct Loader<'a> {
    prog: &'a mut Program,
    done: HashMap<Origin, FileId>,
    stack: Vec<(Origin, String)>,
}

impl Loader<'_> {
    fn load(&mut self, origin: Origin, name: String, text: String) -> Result<FileId> {
        // A byte-order mark (some Windows editors write one) is not part of the program.
        let text = match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => text,
        };
        let id = self.prog.sources.add(name.clone(), text.as_str());
        let file = muse_grammar::parse(&text).map_err(|e| {
            Diag::new(DiagClass::Syntax, Loc { file: id, span: e.span }, e.message).with_opt_hint(e.hint)
        })?;
        self.stack.push((origin.clone(), name));
        for item in &file.items {
            if let ast::Item::Import(imp) = item {
                let at = Loc { file: id, span: imp.span };
                let (child, child_name, child_text) = self.resolve(&origin, imp, at)?;
                if let Some(pos) = self.stack.iter().position(|(o, _)| *o == child) {
                    let mut cycle: Vec<String> = self.stack[pos..].iter().map(|(_, n)| n.clone()).collect();
                    cycle.push(child_name);
                    return Err(Diag::new(
                        DiagClass::CyclicImport,
                        Loc { file: id, span: string_span(imp) },
                        "cyclic import",
                    )
                    .with_hint(format!("the files import each other: {}", cycle.join(" -> "))));
                }
                if self.done.contains_key(&child) {
                    continue;
                }
                let cid = self.load(child.clone(), child_name, child_text)?;
                self.done.insert(child, cid);
            }
        }
        self.stack.pop();
        self.done.insert(origin, id);
        self.prog.files.push((id, file));
        Ok(id)
    }

    fn resolve(&self, from: &Origin, imp: &ast::Import, at: Loc) -> Result<(Origin, String, String)> {
        let at = Loc { file: at.file, span: string_span(imp) };
        if let Some(rest) = imp.path.strip_prefix("std/") {
            let Some(text) = stdlib::get(rest) else {
                let names: Vec<String> = stdlib::FILES.iter().map(|(n, _)| format!("std/{n}")).collect();
                return Err(Diag::new(DiagClass::Import, at, format!("no standard library file `{}`", imp.path))
                    .with_hint(format!("the standard library has {}", names.join(", "))));
            };
            return Ok((Origin::Std(rest.to_string()), imp.path.clone(), text.to_string()));
        }
        let base = match from {
            Origin::Disk(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            Origin::Memory(_) => PathBuf::from("."),
            Origin::Std(_) => {
                return Err(Diag::new(DiagClass::Import, at, "the standard library imports only `std/` files"));
            }
        };
        let path = base.join(&imp.path);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Diag::new(DiagClass::Import, at, format!("cannot read `{}`: {e}", path.display()))
                .with_hint("paths are relative to the importing file; the standard library is under `std/`")
        })?;
        let canon = path.canonicalize().unwrap_or(path.clone());
        Ok((Origin::Disk(canon), path.display().to_string(), text))
    }
}

/// The span of the quoted path inside an import statement.
fn string_span(imp: &ast::Import) -> Span {
    let len = imp.path.len() + 2;
    Span::new(imp.span.end.saturating_sub(len).max(imp.span.start), imp.span.end)
}
