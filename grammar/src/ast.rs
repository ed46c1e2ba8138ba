//! The abstract syntax tree of a `.muse` file. Every node carries the byte span it came from.

use std::fmt;

/// A byte range `[start, end)` in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The span from `start` to `end`.
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn join(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// A name with the place it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it was written.
    pub span: Span,
}

/// A parsed file: imports, blocks and models in source order.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    /// Top-level items in source order.
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `import "path"`.
    Import(Import),
    /// `block name(args) { }`.
    Block(BlockDef),
    /// `model name { }`.
    Model(ModelDef),
}

/// `import "path"`.
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    /// The path as written, without quotes.
    pub path: String,
    /// The whole statement.
    pub span: Span,
}

/// A reusable block definition.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    /// Block name.
    pub name: Ident,
    /// Formal parameters.
    pub formals: Vec<Formal>,
    /// Statements of the body.
    pub body: Vec<Stmt>,
    /// The whole definition.
    pub span: Span,
}

/// One formal parameter of a block: `name[: kind][= default]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Formal {
    /// Parameter name.
    pub name: Ident,
    /// Optional kind annotation (`tensor`, `int`, `float`, `bool`, `string`, `list`, `any`).
    pub kind: Option<Ident>,
    /// Optional default value.
    pub default: Option<Expr>,
}

/// A model definition.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    /// Model name.
    pub name: Ident,
    /// Statements of the body.
    pub body: Vec<Stmt>,
    /// The whole definition.
    pub span: Span,
}

/// A statement with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    /// What the statement is.
    pub kind: StmtKind,
    /// Where it was written.
    pub span: Span,
}

/// The kinds of statement.
#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `config { key = value, ... }`.
    Config(Vec<ConfigEntry>),
    /// `input name: dtype[dims]`.
    Input {
        /// Input name.
        name: Ident,
        /// Element type name (`f32`, `i32`, `bool`).
        dtype: Ident,
        /// Dimension expressions.
        dims: Vec<Expr>,
    },
    /// `output name [= expr]`.
    Output {
        /// Output name.
        name: Ident,
        /// Value, or the variable of the same name when absent.
        value: Option<Expr>,
    },
    /// `loss name [= expr]`.
    Loss {
        /// Loss name.
        name: Ident,
        /// Value, or the variable of the same name when absent.
        value: Option<Expr>,
    },
    /// `repeat count [as label[index]] { body }`.
    Repeat {
        /// Compile-time iteration count.
        count: Expr,
        /// Path segment for parameters created inside (default `layers`).
        label: Option<Ident>,
        /// Variable bound to the iteration index.
        index: Option<Ident>,
        /// Statements unrolled once per iteration.
        body: Vec<Stmt>,
    },
    /// Compile-time `if cond { } else { }`.
    If {
        /// Compile-time condition.
        cond: Expr,
        /// Taken when true.
        then: Vec<Stmt>,
        /// Taken when false (an `else if` is a nested `If`).
        otherwise: Option<Vec<Stmt>>,
    },
    /// `return a[, b, ...]`.
    Return(Vec<Expr>),
    /// `a[, b, ...] = expr`.
    Assign {
        /// Assigned names; several destructure a tuple.
        targets: Vec<Ident>,
        /// Value.
        value: Expr,
    },
    /// `a += expr` and friends.
    AugAssign {
        /// Updated name.
        target: Ident,
        /// The arithmetic operator.
        op: BinOp,
        /// Right-hand side.
        value: Expr,
    },
    /// An expression evaluated for its effect (e.g. `assert(...)`, a `param`).
    Expr(Expr),
}

/// `key = value` inside `config { }`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigEntry {
    /// Key.
    pub key: Ident,
    /// Value expression (may use earlier keys).
    pub value: Expr,
}

/// An expression with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What the expression is.
    pub kind: ExprKind,
    /// Where it was written.
    pub span: Span,
}

/// The kinds of expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// Integer literal.
    Int(i64),
    /// Float literal.
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `none`.
    None,
    /// String literal.
    Str(String),
    /// A name.
    Name(String),
    /// `[a, b, ...]`.
    List(Vec<Expr>),
    /// Prefix operator.
    Unary(UnOp, Box<Expr>),
    /// Infix operator.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `f(args) [as label]`.
    Call {
        /// Called block or builtin.
        callee: Ident,
        /// Arguments, positional then keyword.
        args: Vec<Arg>,
        /// Optional path segment naming the call's parameters.
        label: Option<Ident>,
    },
    /// `x.name`.
    Member(Box<Expr>, Ident),
    /// `x[i]`.
    Index(Box<Expr>, Box<Expr>),
    /// `param name: [shape] [~ init]`.
    Param {
        /// Parameter name (last path segment).
        name: Ident,
        /// Dimension expressions.
        shape: Vec<Expr>,
        /// Initialiser expression.
        init: Option<Box<Expr>>,
    },
}

/// A call argument, positional or `name = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// Keyword, if any.
    pub name: Option<Ident>,
    /// Value.
    pub value: Expr,
}

/// Prefix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// `-x`.
    Neg,
    /// `not x`.
    Not,
}

/// Infix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`.
    Add,
    /// `-`.
    Sub,
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `//`.
    FloorDiv,
    /// `%`.
    Rem,
    /// `@`.
    MatMul,
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `and`.
    And,
    /// `or`.
    Or,
}

impl fmt::Display for BinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Rem => "%",
            BinOp::MatMul => "@",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        };
        f.write_str(s)
    }
}
