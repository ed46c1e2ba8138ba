//! The muse compiler: loading and elaborating `.muse` programs into the graph IR, with
//! diagnostics. Later passes (autodiff, fusion, code generation) live here too.

pub mod autodiff;
pub mod console;
pub mod diag;
pub mod elaborate;
pub mod fusion;
pub mod inspect;
pub mod ir;
pub mod kernel;
pub mod limits;
pub mod loader;
pub mod render;
pub mod report;
pub mod rng;
pub mod source;
pub mod stdlib;
pub mod view;
pub mod zoo;

pub use diag::{Diag, DiagClass};
pub use elaborate::{ConfigValue, Model};
pub use loader::Program;
pub use source::SourceMap;

use muse_grammar::ast;
use std::path::Path;

/// Compilation settings.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--set key=value` config overrides, applied in order.
    pub overrides: Vec<(String, String)>,
    /// Elaborate only the model with this name.
    pub model: Option<String>,
    /// The memory budget every tensor is checked against, in bytes (default:
    /// [`limits::memory_budget`]).
    pub memory_budget: Option<u64>,
}

/// What compiling a file produced: its models, or the first error; the sources either way.
#[derive(Debug)]
pub struct Compiled {
    /// Every file read (to render diagnostics and provenance).
    pub sources: SourceMap,
    /// The models, or the error that stopped compilation.
    pub result: Result<Vec<Model>, Box<Diag>>,
    /// Reading and parsing the files (each model has the reports of its own passes).
    pub parse: Option<report::PassReport>,
}

/// Stack for the recursive parser and elaborator: deep enough that the limits on nesting,
/// operators per statement and call depth are always reached first.
const STACK_BYTES: usize = 256 << 20;

/// Runs `f` on a thread with a large stack.
fn with_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("muse-compile".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(s, f)
            .expect("cannot start the compiler thread")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Compiles every model of the file at `path`.
pub fn compile_path(path: &Path, opts: &Options) -> Compiled {
    with_stack(|| {
        let t = report::PassTimer::start("parse", 0);
        finish(Program::load_path(path), t, opts)
    })
}

/// Compiles every model of source text named `name`.
pub fn compile_source(name: &str, text: &str, opts: &Options) -> Compiled {
    with_stack(|| {
        let t = report::PassTimer::start("parse", 0);
        finish(Program::load_source(name, text), t, opts)
    })
}

fn finish(loaded: Result<Program, (Program, Box<Diag>)>, timer: report::PassTimer, opts: &Options) -> Compiled {
    match loaded {
        Err((p, d)) => Compiled { sources: p.sources, result: Err(d), parse: None },
        Ok(p) => {
            let parse = timer.finish(0, format!("{} files", p.files.len()));
            let result = elaborate_all(&p, opts);
            Compiled { sources: p.sources, result, parse: Some(parse) }
        }
    }
}

fn elaborate_all(p: &Program, opts: &Options) -> Result<Vec<Model>, Box<Diag>> {
    let (root, file) = p.root_file().expect("a loaded program has a root");
    let models: Vec<&ast::ModelDef> =
        file.items.iter().filter_map(|i| if let ast::Item::Model(m) = i { Some(m) } else { None }).collect();
    let mut seen = std::collections::HashMap::new();
    for m in &models {
        if seen.insert(m.name.name.as_str(), m.name.span).is_some() {
            return Err(Diag::new(
                DiagClass::Duplicate,
                source::Loc { file: root, span: m.name.span },
                format!("model `{}` is defined twice", m.name.name),
            ));
        }
    }
    let chosen: Vec<&ast::ModelDef> = match &opts.model {
        Some(name) => {
            let found: Vec<_> = models.iter().copied().filter(|m| &m.name.name == name).collect();
            if found.is_empty() {
                let names: Vec<&str> = models.iter().map(|m| m.name.name.as_str()).collect();
                return Err(Diag::bare(
                    DiagClass::UnknownName,
                    format!("no model `{name}` in {}", p.sources.get(root).name),
                )
                .with_hint(format!("the file defines: {}", names.join(", "))));
            }
            found
        }
        None => models,
    };
    if chosen.is_empty() {
        return Err(Diag::bare(DiagClass::Invalid, format!("{} defines no model", p.sources.get(root).name))
            .with_hint("a file to check or run needs a `model Name { ... }`"));
    }
    chosen.into_iter().map(|m| elaborate::elaborate_model(p, m, root, opts)).collect()
}
