//! Elaboration: runs the compile-time part of a `.muse` program (config, `repeat`, `if`,
//! block calls) and builds the graph IR, checking shapes and element types as it goes.

mod builtins;
mod tensor_ops;
mod value;

pub use value::{TensorRef, Value};

use crate::diag::{suggest, Diag, DiagClass, Result};
use crate::ir::{DType, Dim, Graph, Op, ParamInfo, Provenance, Shape, TensorType, TypeError, TypeErrorKind};
use crate::loader::Program;
use crate::report::{PassReport, PassTimer};
use crate::source::{FileId, Loc};
use muse_grammar::ast::{self, BinOp, BlockDef, Expr, ExprKind, Ident, Span, Stmt, StmtKind, UnOp};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

/// A config value as resolved for a model (after `--set` overrides).
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigValue {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Bool.
    Bool(bool),
    /// String.
    Str(String),
}

impl std::fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigValue::Int(i) => write!(f, "{i}"),
            ConfigValue::Float(x) => write!(f, "{x:?}"),
            ConfigValue::Bool(b) => write!(f, "{b}"),
            ConfigValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// An elaborated model: its graph and resolved configuration.
#[derive(Clone, Debug)]
pub struct Model {
    /// Model name.
    pub name: String,
    /// The forward graph with inputs, parameters, outputs and losses.
    pub graph: Graph,
    /// Config keys and values in declaration order.
    pub config: Vec<(String, ConfigValue)>,
    /// Where the model was defined.
    pub loc: Loc,
    /// What each pass did, in order.
    pub reports: Vec<PassReport>,
}

/// Most nodes one model may produce before elaboration stops (runaway `repeat`).
const MAX_NODES: usize = 5_000_000;
/// Most iterations of one `repeat`.
const MAX_REPEAT: i64 = 100_000;
/// Deepest chain of block calls.
const MAX_CALL_DEPTH: usize = 128;

struct Frame {
    vars: HashMap<String, Value>,
    file: FileId,
    path: String,
    in_model: bool,
}

enum Flow {
    Normal,
    Return(Value),
}

/// An evaluated call argument.
pub(crate) struct ArgV {
    pub name: Option<Ident>,
    pub value: Value,
    pub loc: Loc,
}

pub(crate) struct Elab<'p> {
    prog: &'p Program,
    blocks: HashMap<&'p str, (FileId, &'p BlockDef)>,
    graph: Graph,
    graph_id: u32,
    next_graph_id: u32,
    init_shape: Option<Shape>,
    init_seed: u64,
    frames: Vec<Frame>,
    trace: Vec<Loc>,
    param_names: HashMap<String, Loc>,
    label_counts: HashMap<String, usize>,
    overrides: &'p [(String, String)],
    used_overrides: Vec<bool>,
    memory_budget: u64,
    config: Vec<(String, ConfigValue)>,
    saw_config: bool,
}

/// Elaborates one model of a loaded program with the options' `--set` overrides applied.
pub fn elaborate_model(prog: &Program, model: &ast::ModelDef, file: FileId, opts: &crate::Options) -> Result<Model> {
    let overrides = &opts.overrides;
    let timer = PassTimer::start("elaborate", 0);
    let mut blocks: HashMap<&str, (FileId, &BlockDef)> = HashMap::new();
    for (fid, f) in &prog.files {
        for item in &f.items {
            if let ast::Item::Block(b) = item {
                let loc = Loc { file: *fid, span: b.name.span };
                if builtins::is_builtin(&b.name.name) {
                    return Err(Diag::new(
                        DiagClass::Duplicate,
                        loc,
                        format!("block `{}` has the name of a builtin", b.name.name),
                    )
                    .with_hint("choose another name"));
                }
                if let Some((pf, pb)) = blocks.insert(&b.name.name, (*fid, b)) {
                    let prev = prog.sources.describe(Loc { file: pf, span: pb.name.span });
                    return Err(Diag::new(
                        DiagClass::Duplicate,
                        loc,
                        format!("block `{}` is defined twice", b.name.name),
                    )
                    .with_hint(format!("the other definition is at {prev}")));
                }
            }
        }
    }
    let mut e = Elab {
        prog,
        blocks,
        graph: Graph::default(),
        graph_id: 0,
        next_graph_id: 1,
        init_shape: None,
        init_seed: 0,
        frames: vec![Frame { vars: HashMap::new(), file, path: String::new(), in_model: true }],
        trace: vec![],
        param_names: HashMap::new(),
        label_counts: HashMap::new(),
        overrides,
        used_overrides: vec![false; overrides.len()],
        memory_budget: opts.memory_budget.unwrap_or_else(crate::limits::memory_budget),
        config: vec![],
        saw_config: false,
    };
    let mloc = Loc { file, span: model.name.span };
    if let Flow::Return(_) = e.exec(&model.body)? {
        unreachable!("return is rejected in models");
    }
    for (i, used) in e.used_overrides.iter().enumerate() {
        if !used {
            let key = &overrides[i].0;
            let keys: Vec<&str> = e.config.iter().map(|(k, _)| k.as_str()).collect();
            let hint = suggest(key, keys.iter().copied())
                .unwrap_or_else(|| format!("the config keys of `{}` are: {}", model.name.name, keys.join(", ")));
            return Err(Diag::new(
                DiagClass::UnknownConfigKey,
                mloc,
                format!("unknown config key `{key}` in --set for model `{}`", model.name.name),
            )
            .with_hint(hint));
        }
    }
    if e.graph.outputs.is_empty() && e.graph.losses.is_empty() {
        return Err(Diag::new(
            DiagClass::Invalid,
            mloc,
            format!("model `{}` has no output and no loss", model.name.name),
        )
        .with_hint("declare one with `output name = expr` or `loss name = expr`"));
    }
    let elaborated = timer.finish(e.graph.node_count(), format!("{} parameters", e.graph.params.len()));
    let timer = PassTimer::start("prune", e.graph.node_count());
    let removed = e.graph.prune();
    let pruned = timer.finish(e.graph.node_count(), format!("{removed} unused nodes removed"));
    Ok(Model {
        name: model.name.name.clone(),
        graph: e.graph,
        config: e.config,
        loc: mloc,
        reports: vec![elaborated, pruned],
    })
}

impl<'p> Elab<'p> {
    fn frame(&self) -> &Frame {
        self.frames.last().expect("a frame is always active")
    }
    fn frame_mut(&mut self) -> &mut Frame {
        self.frames.last_mut().expect("a frame is always active")
    }
    pub(crate) fn loc(&self, span: Span) -> Loc {
        Loc { file: self.frame().file, span }
    }
    pub(crate) fn err(&self, class: DiagClass, span: Span, msg: impl Into<String>) -> Box<Diag> {
        self.err_at(class, self.loc(span), msg)
    }
    pub(crate) fn err_at(&self, class: DiagClass, loc: Loc, msg: impl Into<String>) -> Box<Diag> {
        let mut d = Diag::new(class, loc, msg);
        d.trace = self.trace.iter().rev().copied().collect();
        d
    }
    pub(crate) fn type_err(&self, loc: Loc, e: TypeError) -> Box<Diag> {
        let class = match e.kind {
            TypeErrorKind::Shape => DiagClass::Shape,
            TypeErrorKind::DType => DiagClass::DType,
        };
        self.err_at(class, loc, e.message).with_opt_hint(e.hint)
    }
    pub(crate) fn prov(&self, loc: Loc) -> Provenance {
        Provenance { loc: Some(loc), path: self.frame().path.clone(), grad: false }
    }

    /// Adds an op to the current graph, turning type errors into diagnostics at `loc`.
    pub(crate) fn apply(&mut self, op: Op, operands: &[NodeIndex], loc: Loc) -> Result<NodeIndex> {
        if self.graph.node_count() >= MAX_NODES {
            return Err(self
                .err_at(DiagClass::Limit, loc, format!("the model has more than {MAX_NODES} nodes"))
                .with_hint("a `repeat` count or a recursion is probably far larger than intended"));
        }
        let prov = self.prov(loc);
        let n = self.graph.apply(op, operands, prov).map_err(|e| self.type_err(loc, e))?;
        self.check_size(self.graph.ty(n), loc)?;
        Ok(n)
    }
    pub(crate) fn leaf(&mut self, op: Op, ty: TensorType, loc: Loc) -> Result<NodeIndex> {
        self.check_size(&ty, loc)?;
        let prov = self.prov(loc);
        Ok(self.graph.leaf(op, ty, prov))
    }

    /// Refuses a tensor with a size below 1, or one that cannot fit the memory budget even
    /// with every symbolic size (the batch) at 1: later passes and the allocator may assume
    /// every tensor is non-empty and addressable.
    fn check_size(&self, ty: &TensorType, loc: Loc) -> Result<()> {
        if let Some(d) = ty.shape.0.iter().find(|d| d.coeff < 1) {
            return Err(self
                .err_at(DiagClass::Shape, loc, format!("this makes a tensor {ty}, with a size of {}", d.coeff))
                .with_hint("every size must be at least 1: a config value (`--set`) or a size computed from one is 0 or negative"));
        }
        let bytes =
            ty.shape.0.iter().try_fold(ty.dtype.size_bytes() as u128, |acc, d| acc.checked_mul(d.coeff as u128));
        let budget = self.memory_budget;
        match bytes {
            Some(b) if b <= budget as u128 => Ok(()),
            _ => {
                let size =
                    bytes.map_or_else(|| "more bytes than 128 bits count".to_string(), crate::limits::format_bytes);
                Err(self
                    .err_at(
                        DiagClass::Limit,
                        loc,
                        format!(
                            "this makes a tensor {ty} of {size} (with every symbolic size at 1), more than the memory budget of {}",
                            crate::limits::format_bytes(budget as u128)
                        ),
                    )
                    .with_hint(format!(
                        "a size is far larger than intended; the budget is the machine's memory unless {} says otherwise",
                        crate::limits::MEMORY_LIMIT_VAR
                    )))
            }
        }
    }
    pub(crate) fn tref(&self, node: NodeIndex) -> Value {
        Value::Tensor(TensorRef { graph: self.graph_id, node })
    }
    pub(crate) fn ty(&self, n: NodeIndex) -> &TensorType {
        self.graph.ty(n)
    }

    /// The node of a tensor value, checking that it belongs to the graph being built.
    pub(crate) fn node_of(&self, t: TensorRef, loc: Loc) -> Result<NodeIndex> {
        if t.graph != self.graph_id {
            let msg = if self.init_shape.is_some() {
                "a parameter initialiser can only use constants and random numbers, not tensors of the model"
            } else {
                "this tensor belongs to a parameter initialiser"
            };
            return Err(self.err_at(DiagClass::Invalid, loc, msg));
        }
        Ok(t.node)
    }

    // ---- statements -------------------------------------------------------

    fn exec(&mut self, stmts: &[Stmt]) -> Result<Flow> {
        for s in stmts {
            if let Flow::Return(v) = self.stmt(s)? {
                return Ok(Flow::Return(v));
            }
        }
        Ok(Flow::Normal)
    }

    fn model_only(&self, s: &Stmt, what: &str) -> Result<()> {
        if !self.frame().in_model {
            return Err(self
                .err(DiagClass::Invalid, s.span, format!("`{what}` is only allowed in a model, not in a block"))
                .with_hint("pass tensors to blocks as arguments and return results with `return`"));
        }
        Ok(())
    }

    fn stmt(&mut self, s: &Stmt) -> Result<Flow> {
        match &s.kind {
            StmtKind::Config(entries) => {
                self.model_only(s, "config")?;
                if self.saw_config {
                    return Err(self.err(DiagClass::Duplicate, s.span, "a model has one `config` block"));
                }
                self.saw_config = true;
                for entry in entries {
                    self.config_entry(entry)?;
                }
            }
            StmtKind::Input { name, dtype, dims } => {
                self.model_only(s, "input")?;
                let dt = DType::from_name(&dtype.name).ok_or_else(|| {
                    self.err(DiagClass::Type, dtype.span, format!("unknown element type `{}`", dtype.name))
                        .with_hint("element types are f32, i32 and bool")
                })?;
                let mut shape = Vec::new();
                for d in dims {
                    shape.push(self.eval_dim(d, true)?);
                }
                self.check_new_name(name, &self.graph.inputs.iter().map(|x| x.0.clone()).collect::<Vec<_>>(), "input")?;
                let loc = self.loc(name.span);
                let n = self.leaf(Op::Input { name: name.name.clone() }, TensorType::new(dt, Shape(shape)), loc)?;
                self.graph.inputs.push((name.name.clone(), n));
                let v = self.tref(n);
                self.frame_mut().vars.insert(name.name.clone(), v);
            }
            StmtKind::Output { name, value } | StmtKind::Loss { name, value } => {
                let is_loss = matches!(s.kind, StmtKind::Loss { .. });
                self.model_only(s, if is_loss { "loss" } else { "output" })?;
                let (v, span) = match value {
                    Some(e) => (self.eval(e)?, e.span),
                    None => (self.lookup(&name.name, name.span)?, name.span),
                };
                let loc = self.loc(span);
                let n = self.expect_tensor(&v, loc, if is_loss { "a loss" } else { "an output" })?;
                let existing: Vec<String> =
                    self.graph.outputs.iter().chain(&self.graph.losses).map(|x| x.0.clone()).collect();
                self.check_new_name(name, &existing, if is_loss { "loss" } else { "output" })?;
                if is_loss {
                    let ty = self.ty(n).clone();
                    if ty.shape.rank() != 0 {
                        return Err(self
                            .err_at(DiagClass::Shape, loc, format!("a loss must be a scalar, this is {}", ty.shape))
                            .with_hint("reduce it, e.g. with mean(x, axis=none)"));
                    }
                    if ty.dtype != DType::F32 {
                        return Err(self.err_at(
                            DiagClass::DType,
                            loc,
                            format!("a loss must be f32, this is {}", ty.dtype),
                        ));
                    }
                    self.graph.losses.push((name.name.clone(), n));
                } else {
                    self.graph.outputs.push((name.name.clone(), n));
                }
                if value.is_some() {
                    let tv = self.tref(n);
                    self.frame_mut().vars.insert(name.name.clone(), tv);
                }
            }
            StmtKind::Repeat { count, label, index, body } => {
                let n = self.eval(count)?;
                let n = self.expect_int(&n, self.loc(count.span), "a repeat count")?;
                if !(0..=MAX_REPEAT).contains(&n) {
                    return Err(self.err(
                        DiagClass::Limit,
                        count.span,
                        format!("repeat count {n} is outside 0..={MAX_REPEAT}"),
                    ));
                }
                let seg = label.as_ref().map(|l| l.name.clone()).unwrap_or_else(|| "layers".into());
                let saved = self.frame().path.clone();
                for i in 0..n {
                    let p = join_path(&saved, &format!("{seg}.{i}"));
                    self.frame_mut().path = p;
                    if let Some(ix) = index {
                        self.frame_mut().vars.insert(ix.name.clone(), Value::Int(i));
                    }
                    let flow = self.exec(body);
                    self.frame_mut().path = saved.clone();
                    if let Flow::Return(v) = flow? {
                        return Ok(Flow::Return(v));
                    }
                }
            }
            StmtKind::If { cond, then, otherwise } => {
                let c = self.eval(cond)?;
                let c = self.expect_bool(&c, self.loc(cond.span), "an `if` condition")?;
                let branch = if c { Some(then) } else { otherwise.as_ref() };
                if let Some(b) = branch {
                    return self.exec(b);
                }
            }
            StmtKind::Return(exprs) => {
                if self.frame().in_model {
                    return Err(self
                        .err(DiagClass::Invalid, s.span, "`return` is only allowed in a block")
                        .with_hint("a model declares its results with `output` and `loss`"));
                }
                let mut vals = Vec::new();
                for e in exprs {
                    vals.push(self.eval(e)?);
                }
                let v = if vals.len() == 1 { vals.pop().expect("one value") } else { Value::Tuple(vals) };
                return Ok(Flow::Return(v));
            }
            StmtKind::Assign { targets, value } => {
                let v = self.eval(value)?;
                if targets.len() == 1 {
                    self.frame_mut().vars.insert(targets[0].name.clone(), v);
                } else {
                    let parts = match v {
                        Value::Tuple(p) | Value::List(p) => p,
                        other => {
                            return Err(self.err(
                                DiagClass::Type,
                                value.span,
                                format!("cannot unpack {} into {} names", other.kind(), targets.len()),
                            ))
                        }
                    };
                    if parts.len() != targets.len() {
                        return Err(self.err(
                            DiagClass::Arity,
                            value.span,
                            format!("{} values on the right, {} names on the left", parts.len(), targets.len()),
                        ));
                    }
                    for (t, p) in targets.iter().zip(parts) {
                        self.frame_mut().vars.insert(t.name.clone(), p);
                    }
                }
            }
            StmtKind::AugAssign { target, op, value } => {
                let old = self.lookup(&target.name, target.span)?;
                let rhs = self.eval(value)?;
                let v = self.binary(*op, old, rhs, self.loc(s.span))?;
                self.frame_mut().vars.insert(target.name.clone(), v);
            }
            StmtKind::Expr(e) => {
                self.eval(e)?;
            }
        }
        Ok(Flow::Normal)
    }

    fn check_new_name(&self, name: &Ident, existing: &[String], what: &str) -> Result<()> {
        if existing.iter().any(|x| x == &name.name) {
            return Err(self.err(DiagClass::Duplicate, name.span, format!("{what} `{}` is declared twice", name.name)));
        }
        Ok(())
    }

    fn config_entry(&mut self, entry: &ast::ConfigEntry) -> Result<()> {
        let default = self.eval(&entry.value)?;
        let key = &entry.key.name;
        let loc = self.loc(entry.value.span);
        let mut cv = match default {
            Value::Int(i) => ConfigValue::Int(i),
            Value::Float(f) => ConfigValue::Float(f),
            Value::Bool(b) => ConfigValue::Bool(b),
            Value::Str(s) => ConfigValue::Str(s),
            other => {
                return Err(self
                    .err_at(DiagClass::Type, loc, format!("config value `{key}` is {}", other.kind()))
                    .with_hint("config values are integers, floats, bools or strings"))
            }
        };
        if self.config.iter().any(|(k, _)| k == key) {
            return Err(self.err(DiagClass::Duplicate, entry.key.span, format!("config key `{key}` is set twice")));
        }
        if let Some(i) = self.overrides.iter().rposition(|(k, _)| k == key) {
            self.used_overrides.iter_mut().zip(self.overrides).for_each(|(u, (k, _))| *u |= k == key);
            let raw = self.overrides[i].1.trim();
            let parsed = match &cv {
                ConfigValue::Int(_) => raw.replace('_', "").parse().ok().map(ConfigValue::Int),
                ConfigValue::Float(_) => raw.parse().ok().map(ConfigValue::Float),
                ConfigValue::Bool(_) => raw.parse().ok().map(ConfigValue::Bool),
                ConfigValue::Str(_) => Some(ConfigValue::Str(raw.trim_matches('"').to_string())),
            };
            cv = parsed.ok_or_else(|| {
                let want = match cv {
                    ConfigValue::Int(_) => "an integer",
                    ConfigValue::Float(_) => "a number",
                    ConfigValue::Bool(_) => "true or false",
                    ConfigValue::Str(_) => "a string",
                };
                self.err(DiagClass::Type, entry.key.span, format!("--set {key}={raw}: `{key}` needs {want}"))
                    .with_hint(format!("the default is {}", entry_default_text(&self.prog.sources, loc)))
            })?;
        }
        let v = match &cv {
            ConfigValue::Int(i) => Value::Int(*i),
            ConfigValue::Float(f) => Value::Float(*f),
            ConfigValue::Bool(b) => Value::Bool(*b),
            ConfigValue::Str(s) => Value::Str(s.clone()),
        };
        self.frame_mut().vars.insert(key.clone(), v);
        self.config.push((key.clone(), cv));
        Ok(())
    }

    /// Evaluates a dimension; in input declarations an unknown capitalised name is a
    /// symbolic size (the batch `B`).
    fn eval_dim(&mut self, e: &Expr, allow_symbols: bool) -> Result<Dim> {
        if let ExprKind::Name(n) = &e.kind {
            if allow_symbols && !self.frame().vars.contains_key(n) && n.starts_with(|c: char| c.is_ascii_uppercase()) {
                return Ok(Dim::sym(n));
            }
        }
        let v = self.eval(e)?;
        let loc = self.loc(e.span);
        self.value_to_dim(&v, loc)
    }

    pub(crate) fn value_to_dim(&self, v: &Value, loc: Loc) -> Result<Dim> {
        match v {
            Value::Int(i) if *i >= 0 => Ok(Dim::known(*i)),
            Value::Int(i) => Err(self.err_at(DiagClass::Shape, loc, format!("a size must not be negative, got {i}"))),
            Value::Dim(d) => Ok(d.clone()),
            Value::Float(f) if f.fract() == 0.0 && *f >= 0.0 => Err(self
                .err_at(DiagClass::Type, loc, format!("a size must be an integer, got the float {f:?}"))
                .with_hint("use // for integer division, or int(x)")),
            other => Err(self.err_at(DiagClass::Type, loc, format!("a size must be an integer, got {}", other.kind()))),
        }
    }

    // ---- expressions ------------------------------------------------------

    fn lookup(&mut self, name: &str, span: Span) -> Result<Value> {
        if let Some(v) = self.frame().vars.get(name) {
            return Ok(v.clone());
        }
        if let Some(d) = DType::from_name(name) {
            return Ok(Value::DType(d));
        }
        if name == "pi" {
            return Ok(Value::Float(std::f64::consts::PI));
        }
        if self.init_shape.is_some() && (name == "zeros" || name == "ones") {
            return builtins::init_fill(self, if name == "ones" { 1.0 } else { 0.0 }, self.loc(span));
        }
        let mut cands: Vec<&str> = self.frame().vars.keys().map(String::as_str).collect();
        cands.extend(self.blocks.keys().copied());
        let hint = suggest(name, cands);
        let msg = if self.blocks.contains_key(name) || builtins::is_builtin(name) {
            format!("`{name}` is a function; call it with `{name}(...)`")
        } else {
            format!("unknown name `{name}`")
        };
        Err(self.err(DiagClass::UnknownName, span, msg).with_opt_hint(hint))
    }

    pub(crate) fn eval(&mut self, e: &Expr) -> Result<Value> {
        let loc = self.loc(e.span);
        match &e.kind {
            ExprKind::Int(i) => Ok(Value::Int(*i)),
            ExprKind::Float(f) => Ok(Value::Float(*f)),
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::None => Ok(Value::None),
            ExprKind::Str(s) => Ok(Value::Str(s.clone())),
            ExprKind::Name(n) => self.lookup(n, e.span),
            ExprKind::List(items) => {
                let mut v = Vec::with_capacity(items.len());
                for i in items {
                    v.push(self.eval(i)?);
                }
                Ok(Value::List(v))
            }
            ExprKind::Unary(op, x) => {
                let v = self.eval(x)?;
                self.unary(*op, v, loc)
            }
            ExprKind::Binary(op, a, b) => {
                let a = self.eval(a)?;
                let b = self.eval(b)?;
                self.binary(*op, a, b, loc)
            }
            ExprKind::Call { callee, args, label } => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    let value = self.eval(&a.value)?;
                    vals.push(ArgV { name: a.name.clone(), value, loc: self.loc(a.value.span) });
                }
                self.call(callee, vals, label.as_ref(), loc)
            }
            ExprKind::Member(x, name) => {
                let v = self.eval(x)?;
                self.member(v, name, loc)
            }
            ExprKind::Index(x, i) => {
                let v = self.eval(x)?;
                let iv = self.eval(i)?;
                self.index(v, iv, loc, self.loc(i.span))
            }
            ExprKind::Param { name, shape, init } => self.param(name, shape, init.as_deref(), loc),
        }
    }

    fn member(&mut self, v: Value, name: &Ident, loc: Loc) -> Result<Value> {
        let t = match &v {
            Value::Tensor(t) => self.node_of(*t, loc)?,
            other => {
                return Err(self.err(
                    DiagClass::Type,
                    name.span,
                    format!("{} has no field `{}`", other.kind(), name.name),
                ))
            }
        };
        let ty = self.ty(t).clone();
        match name.name.as_str() {
            "shape" => Ok(Value::List(ty.shape.0.into_iter().map(Value::from_dim).collect())),
            "rank" => Ok(Value::Int(ty.shape.rank() as i64)),
            "dtype" => Ok(Value::DType(ty.dtype)),
            other => Err(self
                .err(DiagClass::UnknownName, name.span, format!("a tensor has no field `{other}`"))
                .with_hint("tensors have `.shape`, `.rank` and `.dtype`")),
        }
    }

    fn index(&mut self, v: Value, i: Value, loc: Loc, iloc: Loc) -> Result<Value> {
        match v {
            Value::List(items) | Value::Tuple(items) => {
                let idx = self.expect_int(&i, iloc, "an index")?;
                let n = items.len() as i64;
                let k = if idx < 0 { idx + n } else { idx };
                if !(0..n).contains(&k) {
                    return Err(self.err_at(
                        DiagClass::Shape,
                        iloc,
                        format!("index {idx} is out of range for {n} items"),
                    ));
                }
                Ok(items[k as usize].clone())
            }
            Value::Tensor(_) => Err(self
                .err_at(DiagClass::Type, loc, "tensors are not indexed with [ ]")
                .with_hint("use index(x, axis, i) or slice(x, axis, start, end)")),
            other => Err(self.err_at(DiagClass::Type, loc, format!("{} cannot be indexed", other.kind()))),
        }
    }

    fn unary(&mut self, op: UnOp, v: Value, loc: Loc) -> Result<Value> {
        match (op, v) {
            (UnOp::Neg, Value::Int(i)) => {
                i.checked_neg().map(Value::Int).ok_or_else(|| self.err_at(DiagClass::Limit, loc, "integer overflow"))
            }
            (UnOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
            (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            (op, Value::Tensor(t)) => {
                let n = self.node_of(t, loc)?;
                let u = if op == UnOp::Neg { crate::ir::UnaryOp::Neg } else { crate::ir::UnaryOp::Not };
                let r = self.apply(Op::Unary(u), &[n], loc)?;
                Ok(self.tref(r))
            }
            (op, other) => {
                let what = if op == UnOp::Neg { "`-`" } else { "`not`" };
                Err(self.err_at(DiagClass::Type, loc, format!("{what} cannot be applied to {}", other.kind())))
            }
        }
    }

    pub(crate) fn binary(&mut self, op: BinOp, a: Value, b: Value, loc: Loc) -> Result<Value> {
        if matches!(a, Value::None) || matches!(b, Value::None) {
            // `x != none` tests whether an optional argument was given, at compile time.
            return match op {
                BinOp::Eq => Ok(Value::Bool(a == b)),
                BinOp::Ne => Ok(Value::Bool(a != b)),
                _ => Err(self.err_at(DiagClass::Type, loc, format!("`{op}` with none"))),
            };
        }
        if matches!(a, Value::Tensor(_)) || matches!(b, Value::Tensor(_)) {
            return tensor_ops::tensor_binary(self, op, a, b, loc);
        }
        tensor_ops::const_binary(self, op, a, b, loc)
    }

    // ---- parameters -------------------------------------------------------

    fn param(&mut self, name: &Ident, shape: &[Expr], init: Option<&Expr>, loc: Loc) -> Result<Value> {
        if self.init_shape.is_some() {
            return Err(self.err_at(DiagClass::Invalid, loc, "a `param` cannot be declared inside an initialiser"));
        }
        let full = join_path(&self.frame().path, &name.name);
        let mut dims = Vec::new();
        for d in shape {
            let dim = self.eval_dim(d, false)?;
            if dim.as_known().is_none() {
                return Err(self
                    .err(DiagClass::Shape, d.span, format!("parameter sizes must be known, got {dim}"))
                    .with_hint("a parameter can't depend on the batch size"));
            }
            dims.push(dim);
        }
        let shape = Shape(dims);
        if let Some(prev) = self.param_names.get(&full) {
            let prev = self.prog.sources.describe(*prev);
            return Err(self
                .err(DiagClass::Duplicate, name.span, format!("parameter `{full}` is declared twice"))
                .with_hint(format!(
                    "the first is at {prev}; name one of the calls differently with `... as other_name`"
                )));
        }
        self.param_names.insert(full.clone(), self.loc(name.span));
        let init_graph = self.init_graph(&full, &shape, init, loc)?;
        let ty = TensorType::new(DType::F32, shape);
        let n = self.leaf(Op::Param { name: full.clone() }, ty.clone(), self.loc(name.span))?;
        self.graph.params.push(ParamInfo { name: full, node: n, ty, init: init_graph, loc: self.loc(name.span) });
        let v = self.tref(n);
        self.frame_mut().vars.insert(name.name.clone(), v.clone());
        Ok(v)
    }

    /// Elaborates an initialiser into a graph of its own whose output `init` has the
    /// parameter's shape; `normal(0.02)` when none is given.
    fn init_graph(&mut self, full: &str, shape: &Shape, init: Option<&Expr>, loc: Loc) -> Result<Graph> {
        let saved_graph = std::mem::take(&mut self.graph);
        let saved_id = self.graph_id;
        self.graph_id = self.next_graph_id;
        self.next_graph_id += 1;
        self.init_shape = Some(shape.clone());
        self.init_seed = fnv1a(full.as_bytes());
        let result = (|| -> Result<NodeIndex> {
            let (v, vloc) = match init {
                Some(e) => (self.eval(e)?, self.loc(e.span)),
                None => (builtins::init_random(self, crate::ir::RandomDist::Normal, 0.0, 0.02, loc)?, loc),
            };
            let n = match v {
                Value::Tensor(t) => self.node_of(t, vloc)?,
                v if v.is_number() => {
                    let x = v.as_f64().expect("number");
                    self.leaf(Op::Const { value: x }, TensorType::new(DType::F32, shape.clone()), vloc)?
                }
                other => {
                    return Err(self
                        .err_at(
                            DiagClass::Type,
                            vloc,
                            format!("an initialiser must be a number or a tensor, got {}", other.kind()),
                        )
                        .with_hint("e.g. `~ normal(0.02)`, `~ zeros`, `~ uniform(-0.1, 0.1)`"))
                }
            };
            if self.ty(n).dtype != DType::F32 {
                return Err(self.err_at(
                    DiagClass::DType,
                    vloc,
                    format!("an initialiser must be f32, got {}", self.ty(n).dtype),
                ));
            }
            let got = self.ty(n).shape.clone();
            let b = crate::ir::broadcast_shapes(&got, shape).map_err(|e| self.type_err(vloc, e))?;
            if &b != shape {
                return Err(self.err_at(
                    DiagClass::Shape,
                    vloc,
                    format!("the initialiser has shape {got}, the parameter {shape}"),
                ));
            }
            tensor_ops::broadcast_to(self, n, shape, vloc)
        })();
        let mut g = std::mem::replace(&mut self.graph, saved_graph);
        self.graph_id = saved_id;
        self.init_shape = None;
        let out = result?;
        g.outputs.push(("init".into(), out));
        g.prune();
        Ok(g)
    }

    // ---- calls ------------------------------------------------------------

    fn call(&mut self, callee: &Ident, args: Vec<ArgV>, label: Option<&Ident>, loc: Loc) -> Result<Value> {
        if let Some(&(file, def)) = self.blocks.get(callee.name.as_str()) {
            return self.call_block(callee, file, def, args, label, loc);
        }
        if builtins::is_builtin(&callee.name) {
            if let Some(l) = label {
                return Err(self
                    .err(
                        DiagClass::Invalid,
                        l.span,
                        format!("`{}` is a builtin and has no parameters to name", callee.name),
                    )
                    .with_hint("`as name` names the parameters of a block call"));
            }
            return builtins::call(self, callee, args, loc);
        }
        let mut cands: Vec<&str> = builtins::names().collect();
        cands.extend(self.blocks.keys().copied());
        Err(self
            .err(DiagClass::UnknownName, callee.span, format!("unknown block or function `{}`", callee.name))
            .with_opt_hint(suggest(&callee.name, cands).or_else(|| {
                Some("blocks from the standard library need an import, e.g. `import \"std/nn.muse\"`".into())
            })))
    }

    /// Matches arguments to formal names: positional first, then keywords. Returns one slot per formal.
    pub(crate) fn match_args(
        &self,
        what: &str,
        callee: &Ident,
        formals: &[&str],
        args: Vec<ArgV>,
    ) -> Result<Vec<Option<ArgV>>> {
        let mut slots: Vec<Option<ArgV>> = formals.iter().map(|_| None).collect();
        let mut pos = 0;
        for a in args {
            match &a.name {
                None => {
                    if pos >= formals.len() {
                        return Err(self
                            .err_at(
                                DiagClass::Arity,
                                a.loc,
                                format!("{what} `{}` takes {} argument(s), got more", callee.name, formals.len()),
                            )
                            .with_hint(format!("its parameters are ({})", formals.join(", "))));
                    }
                    slots[pos] = Some(a);
                    pos += 1;
                }
                Some(k) => {
                    let Some(i) = formals.iter().position(|f| *f == k.name) else {
                        return Err(self
                            .err(
                                DiagClass::Arity,
                                k.span,
                                format!("{what} `{}` has no parameter `{}`", callee.name, k.name),
                            )
                            .with_hint(
                                suggest(&k.name, formals.iter().copied())
                                    .unwrap_or_else(|| format!("its parameters are ({})", formals.join(", "))),
                            ));
                    };
                    if slots[i].is_some() {
                        return Err(self.err(
                            DiagClass::Arity,
                            k.span,
                            format!("argument `{}` is given twice", k.name),
                        ));
                    }
                    slots[i] = Some(a);
                }
            }
        }
        Ok(slots)
    }

    fn call_block(
        &mut self,
        callee: &Ident,
        file: FileId,
        def: &'p BlockDef,
        args: Vec<ArgV>,
        label: Option<&Ident>,
        loc: Loc,
    ) -> Result<Value> {
        if self.trace.len() >= MAX_CALL_DEPTH {
            return Err(self
                .err_at(DiagClass::Limit, loc, format!("block calls nest deeper than {MAX_CALL_DEPTH}"))
                .with_hint("a block probably calls itself without end"));
        }
        let names: Vec<&str> = def.formals.iter().map(|f| f.name.name.as_str()).collect();
        let slots = self.match_args("block", callee, &names, args)?;
        let parent_path = self.frame().path.clone();
        let seg = match label {
            Some(l) => l.name.clone(),
            None => {
                let key = format!("{parent_path}/{}", callee.name);
                let c = self.label_counts.entry(key).or_insert(0);
                *c += 1;
                if *c == 1 {
                    callee.name.clone()
                } else {
                    format!("{}_{}", callee.name, *c - 1)
                }
            }
        };
        self.frames.push(Frame { vars: HashMap::new(), file, path: join_path(&parent_path, &seg), in_model: false });
        self.trace.push(loc);
        let r = (|| -> Result<Value> {
            for (f, slot) in def.formals.iter().zip(slots) {
                let v = match slot {
                    Some(a) => {
                        self.check_kind(f, &a.value, a.loc)?;
                        a.value
                    }
                    None => match &f.default {
                        Some(d) => self.eval(d)?,
                        None => {
                            let at = *self.trace.last().expect("call site");
                            return Err(self
                                .err_at(
                                    DiagClass::Arity,
                                    at,
                                    format!("missing argument `{}` of block `{}`", f.name.name, def.name.name),
                                )
                                .with_hint(format!("its parameters are ({})", names.join(", "))));
                        }
                    },
                };
                let v = coerce_kind(f, v);
                self.frame_mut().vars.insert(f.name.name.clone(), v);
            }
            match self.exec(&def.body)? {
                Flow::Return(v) => Ok(v),
                Flow::Normal => Ok(Value::None),
            }
        })();
        self.trace.pop();
        self.frames.pop();
        r
    }

    fn check_kind(&self, f: &ast::Formal, v: &Value, loc: Loc) -> Result<()> {
        let Some(k) = &f.kind else { return Ok(()) };
        let ok = match k.name.as_str() {
            "tensor" => matches!(v, Value::Tensor(_) | Value::None),
            "int" => matches!(v, Value::Int(_)),
            "size" => matches!(v, Value::Int(_) | Value::Dim(_)),
            "float" => v.is_number(),
            "bool" => matches!(v, Value::Bool(_)),
            "string" => matches!(v, Value::Str(_)),
            "list" => matches!(v, Value::List(_)),
            "dtype" => matches!(v, Value::DType(_)),
            "any" => true,
            other => {
                let at = Loc { file: self.frames[self.frames.len() - 1].file, span: k.span };
                return Err(self
                    .err_at(DiagClass::Type, at, format!("unknown parameter kind `{other}`"))
                    .with_hint("kinds are tensor, int, size, float, bool, string, list, dtype, any"));
            }
        };
        if !ok {
            return Err(self.err_at(
                DiagClass::Type,
                loc,
                format!("argument `{}` must be {} but is {}", f.name.name, kind_article(&k.name), v.kind()),
            ));
        }
        Ok(())
    }

    // ---- value checks -----------------------------------------------------

    pub(crate) fn expect_tensor(&self, v: &Value, loc: Loc, what: &str) -> Result<NodeIndex> {
        match v {
            Value::Tensor(t) => self.node_of(*t, loc),
            other => Err(self.err_at(DiagClass::Type, loc, format!("{what} must be a tensor, got {}", other.kind()))),
        }
    }
    pub(crate) fn expect_int(&self, v: &Value, loc: Loc, what: &str) -> Result<i64> {
        match v {
            Value::Int(i) => Ok(*i),
            Value::Tensor(_) => Err(self
                .err_at(
                    DiagClass::NotCompileTime,
                    loc,
                    format!("{what} must be known at compile time, but this is a tensor"),
                )
                .with_hint("use config values, literals or `.shape` sizes")),
            Value::Dim(d) => Err(self.err_at(
                DiagClass::NotCompileTime,
                loc,
                format!("{what} must be a known integer, but {d} is symbolic"),
            )),
            other => Err(self.err_at(DiagClass::Type, loc, format!("{what} must be an integer, got {}", other.kind()))),
        }
    }
    pub(crate) fn expect_bool(&self, v: &Value, loc: Loc, what: &str) -> Result<bool> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::Tensor(_) => Err(self
                .err_at(
                    DiagClass::NotCompileTime,
                    loc,
                    format!("{what} must be known at compile time, but this is a tensor"),
                )
                .with_hint("for a per-element choice use where(cond, a, b)")),
            other => Err(self.err_at(DiagClass::Type, loc, format!("{what} must be a bool, got {}", other.kind()))),
        }
    }
    pub(crate) fn expect_f64(&self, v: &Value, loc: Loc, what: &str) -> Result<f64> {
        match v {
            Value::Int(_) | Value::Float(_) => Ok(v.as_f64().expect("number")),
            Value::Tensor(_) => Err(self.err_at(
                DiagClass::NotCompileTime,
                loc,
                format!("{what} must be a compile-time number, but this is a tensor"),
            )),
            other => Err(self.err_at(DiagClass::Type, loc, format!("{what} must be a number, got {}", other.kind()))),
        }
    }
}

fn coerce_kind(f: &ast::Formal, v: Value) -> Value {
    match (f.kind.as_ref().map(|k| k.name.as_str()), v) {
        (Some("float"), Value::Int(i)) => Value::Float(i as f64),
        (_, v) => v,
    }
}

fn kind_article(k: &str) -> String {
    match k {
        "int" | "integer" => "an integer".into(),
        "any" => "anything".into(),
        "size" => "a size".into(),
        "dtype" => "an element type".into(),
        other => format!("a {other}"),
    }
}

fn entry_default_text(sm: &crate::source::SourceMap, loc: Loc) -> String {
    format!("`{}`", sm.snippet(loc))
}

/// `a.b` with empty parts dropped.
pub(crate) fn join_path(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// A stable 64-bit hash (FNV-1a) for deriving seeds from names.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
