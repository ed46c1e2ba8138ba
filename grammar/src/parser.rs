//! Source text to [`ast::File`](crate::ast::File): pest parses, a Pratt parser orders infix operators.

use crate::ast::*;
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "muse.pest"]
struct MuseParser;

/// A syntax error: where, what was expected, and a hint when one helps.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    /// Where parsing stopped.
    pub span: Span,
    /// One-line explanation.
    pub message: String,
    /// How to fix it, when a fix is likely.
    pub hint: Option<String>,
}

/// Parses one `.muse` source text.
pub fn parse(src: &str) -> Result<File, SyntaxError> {
    check_limits(src)?;
    let mut pairs = MuseParser::parse(Rule::file, src).map_err(|e| convert_error(src, e))?;
    let file = pairs.next().expect("the file rule always yields one pair");
    let mut items = Vec::new();
    for p in inner(file) {
        match p.as_rule() {
            Rule::import => items.push(Item::Import(import(p))),
            Rule::block_def => items.push(Item::Block(block_def(p)?)),
            Rule::model_def => items.push(Item::Model(model_def(p)?)),
            Rule::EOI => {}
            r => unreachable!("unexpected top-level rule {r:?}"),
        }
    }
    Ok(File { items })
}

/// Deepest bracket nesting accepted.
pub const MAX_NESTING: usize = 64;
/// Most operators in one statement.
pub const MAX_OPERATORS: usize = 512;

/// Rejects text whose syntax tree would be pathologically deep (machine-made input), so
/// the recursive parser and elaborator stay far from the stack limit.
fn check_limits(src: &str) -> Result<(), SyntaxError> {
    let mut depth = 0usize;
    let mut ops = 0usize;
    let mut last_is_op = false;
    let mut chars = src.char_indices().peekable();
    let too_deep = |pos: usize, msg: String| SyntaxError {
        span: Span::new(pos, pos + 1),
        message: msg,
        hint: Some("split the expression into several statements".into()),
    };
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => {
                while chars.peek().is_some_and(|(_, c)| *c != '\n') {
                    chars.next();
                }
                continue;
            }
            '"' => {
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' | '\n' => break,
                        _ => {}
                    }
                }
                last_is_op = false;
                continue;
            }
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_deep(i, format!("brackets nest deeper than {MAX_NESTING}")));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '\n' | ';' if depth == 0 && !last_is_op => ops = 0,
            '+' | '-' | '*' | '/' | '%' | '@' | '<' | '>' | '=' | '!' | ',' => {
                ops += 1;
                if ops > MAX_OPERATORS {
                    return Err(too_deep(i, format!("more than {MAX_OPERATORS} operators in one statement")));
                }
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_is_op = matches!(c, '+' | '-' | '*' | '/' | '%' | '@' | '<' | '>' | '=' | '!' | ',' | '(' | '[');
        }
    }
    Ok(())
}

/// The children of a pair without the keyword tokens.
fn inner(p: Pair<Rule>) -> impl Iterator<Item = Pair<Rule>> {
    p.into_inner().filter(not_keyword)
}

fn not_keyword(p: &Pair<Rule>) -> bool {
    !matches!(
        p.as_rule(),
        Rule::kw_import
            | Rule::kw_config
            | Rule::kw_block
            | Rule::kw_model
            | Rule::kw_input
            | Rule::kw_output
            | Rule::kw_loss
            | Rule::kw_param
            | Rule::kw_repeat
            | Rule::kw_as
            | Rule::kw_if
            | Rule::kw_else
            | Rule::kw_return
    )
}

fn span(p: &Pair<Rule>) -> Span {
    let s = p.as_span();
    Span::new(s.start(), s.end())
}

fn ident(p: Pair<Rule>) -> Ident {
    debug_assert_eq!(p.as_rule(), Rule::ident);
    Ident { name: p.as_str().to_string(), span: span(&p) }
}

fn import(p: Pair<Rule>) -> Import {
    let sp = span(&p);
    let s = inner(p).next().expect("import has a string");
    Import { path: unescape(s), span: sp }
}

fn unescape(p: Pair<Rule>) -> String {
    let inner = inner(p).next().map(|i| i.as_str()).unwrap_or("");
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn block_def(p: Pair<Rule>) -> Result<BlockDef, SyntaxError> {
    let sp = span(&p);
    let mut it = inner(p);
    let name = ident(it.next().expect("block name"));
    let mut formals = Vec::new();
    let mut body = Vec::new();
    for q in it {
        match q.as_rule() {
            Rule::formals => {
                for f in inner(q) {
                    formals.push(formal(f)?);
                }
            }
            Rule::body => body = stmts(q)?,
            r => unreachable!("block: {r:?}"),
        }
    }
    Ok(BlockDef { name, formals, body, span: sp })
}

fn formal(p: Pair<Rule>) -> Result<Formal, SyntaxError> {
    let mut it = inner(p);
    let name = ident(it.next().expect("formal name"));
    let mut kind = None;
    let mut default = None;
    for q in it {
        match q.as_rule() {
            Rule::ident => kind = Some(ident(q)),
            Rule::expr => default = Some(expr(q)?),
            r => unreachable!("formal: {r:?}"),
        }
    }
    Ok(Formal { name, kind, default })
}

fn model_def(p: Pair<Rule>) -> Result<ModelDef, SyntaxError> {
    let sp = span(&p);
    let mut it = inner(p);
    let name = ident(it.next().expect("model name"));
    let body = stmts(it.next().expect("model body"))?;
    Ok(ModelDef { name, body, span: sp })
}

fn stmts(body: Pair<Rule>) -> Result<Vec<Stmt>, SyntaxError> {
    inner(body).map(stmt).collect()
}

fn stmt(p: Pair<Rule>) -> Result<Stmt, SyntaxError> {
    let sp = span(&p);
    let rule = p.as_rule();
    let mut it = inner(p);
    let kind = match rule {
        Rule::config => {
            let mut entries = Vec::new();
            for e in it {
                let mut kv = inner(e);
                let key = ident(kv.next().expect("config key"));
                let value = expr(kv.next().expect("config value"))?;
                entries.push(ConfigEntry { key, value });
            }
            StmtKind::Config(entries)
        }
        Rule::input_decl => {
            let name = ident(it.next().expect("input name"));
            let mut ty = it.next().expect("input type").into_inner().filter(not_keyword);
            let dtype = ident(ty.next().expect("dtype"));
            let dims = ty.map(expr).collect::<Result<_, _>>()?;
            StmtKind::Input { name, dtype, dims }
        }
        Rule::output_decl | Rule::loss_decl => {
            let name = ident(it.next().expect("name"));
            let value = it.next().map(expr).transpose()?;
            if rule == Rule::output_decl {
                StmtKind::Output { name, value }
            } else {
                StmtKind::Loss { name, value }
            }
        }
        Rule::repeat_stmt => {
            let count = expr(it.next().expect("repeat count"))?;
            let mut label = None;
            let mut index = None;
            let mut body = Vec::new();
            for q in it {
                match q.as_rule() {
                    Rule::ident if label.is_none() => label = Some(ident(q)),
                    Rule::ident => index = Some(ident(q)),
                    Rule::body => body = stmts(q)?,
                    r => unreachable!("repeat: {r:?}"),
                }
            }
            StmtKind::Repeat { count, label, index, body }
        }
        Rule::if_stmt => {
            let cond = expr(it.next().expect("if condition"))?;
            let then = stmts(it.next().expect("if body"))?;
            let otherwise = match it.next() {
                None => None,
                Some(q) if q.as_rule() == Rule::if_stmt => Some(vec![stmt(q)?]),
                Some(q) => Some(stmts(q)?),
            };
            StmtKind::If { cond, then, otherwise }
        }
        Rule::return_stmt => StmtKind::Return(it.map(expr).collect::<Result<_, _>>()?),
        Rule::assign => {
            let mut targets = Vec::new();
            let mut value = None;
            for q in it {
                match q.as_rule() {
                    Rule::ident => targets.push(ident(q)),
                    Rule::expr => value = Some(expr(q)?),
                    r => unreachable!("assign: {r:?}"),
                }
            }
            StmtKind::Assign { targets, value: value.expect("assign value") }
        }
        Rule::aug_assign => {
            let target = ident(it.next().expect("target"));
            let op = match it.next().expect("op").as_str() {
                "+=" => BinOp::Add,
                "-=" => BinOp::Sub,
                "*=" => BinOp::Mul,
                _ => BinOp::Div,
            };
            let value = expr(it.next().expect("value"))?;
            StmtKind::AugAssign { target, op, value }
        }
        Rule::expr_stmt => StmtKind::Expr(expr(it.next().expect("expression"))?),
        r => unreachable!("statement rule {r:?}"),
    };
    Ok(Stmt { kind, span: sp })
}

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::or, Assoc::Left))
            .op(Op::infix(Rule::and, Assoc::Left))
            .op(Op::prefix(Rule::not))
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::floordiv, Assoc::Left)
                | Op::infix(Rule::rem, Assoc::Left)
                | Op::infix(Rule::matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg))
    })
}

fn expr(p: Pair<Rule>) -> Result<Expr, SyntaxError> {
    debug_assert_eq!(p.as_rule(), Rule::expr);
    pratt_expr(p.into_inner())
}

fn pratt_expr(pairs: Pairs<Rule>) -> Result<Expr, SyntaxError> {
    pratt()
        .map_primary(postfixed)
        .map_prefix(|op, rhs| {
            let rhs = rhs?;
            let sp = span(&op).join(rhs.span);
            let u = if op.as_rule() == Rule::neg { UnOp::Neg } else { UnOp::Not };
            Ok(Expr { kind: ExprKind::Unary(u, Box::new(rhs)), span: sp })
        })
        .map_infix(|lhs, op, rhs| {
            let (lhs, rhs) = (lhs?, rhs?);
            let b = match op.as_rule() {
                Rule::or => BinOp::Or,
                Rule::and => BinOp::And,
                Rule::eq => BinOp::Eq,
                Rule::ne => BinOp::Ne,
                Rule::lt => BinOp::Lt,
                Rule::le => BinOp::Le,
                Rule::gt => BinOp::Gt,
                Rule::ge => BinOp::Ge,
                Rule::add => BinOp::Add,
                Rule::sub => BinOp::Sub,
                Rule::mul => BinOp::Mul,
                Rule::div => BinOp::Div,
                Rule::floordiv => BinOp::FloorDiv,
                Rule::rem => BinOp::Rem,
                Rule::matmul => BinOp::MatMul,
                r => unreachable!("infix {r:?}"),
            };
            let sp = lhs.span.join(rhs.span);
            Ok(Expr { kind: ExprKind::Binary(b, Box::new(lhs), Box::new(rhs)), span: sp })
        })
        .parse(pairs)
}

fn postfixed(p: Pair<Rule>) -> Result<Expr, SyntaxError> {
    let mut it = inner(p);
    let mut e = primary(it.next().expect("primary"))?;
    for q in it {
        let sp = e.span.join(span(&q));
        e = match q.as_rule() {
            Rule::member => {
                let name = ident(inner(q).next().expect("member name"));
                Expr { kind: ExprKind::Member(Box::new(e), name), span: sp }
            }
            Rule::index => {
                let i = expr(inner(q).next().expect("index"))?;
                Expr { kind: ExprKind::Index(Box::new(e), Box::new(i)), span: sp }
            }
            r => unreachable!("postfix {r:?}"),
        };
    }
    Ok(e)
}

fn primary(p: Pair<Rule>) -> Result<Expr, SyntaxError> {
    let sp = span(&p);
    let kind = match p.as_rule() {
        Rule::int => {
            let digits: String = p.as_str().chars().filter(|c| *c != '_').collect();
            let v = digits.parse::<i64>().map_err(|_| SyntaxError {
                span: sp,
                message: format!("integer literal `{}` is too large", p.as_str()),
                hint: Some("integers are 64-bit signed".into()),
            })?;
            ExprKind::Int(v)
        }
        Rule::float => ExprKind::Float(p.as_str().parse::<f64>().map_err(|_| SyntaxError {
            span: sp,
            message: format!("malformed float literal `{}`", p.as_str()),
            hint: None,
        })?),
        Rule::boolean => ExprKind::Bool(p.as_str() == "true"),
        Rule::none => ExprKind::None,
        Rule::string => ExprKind::Str(unescape(p)),
        Rule::ident => ExprKind::Name(p.as_str().to_string()),
        Rule::paren => return expr(inner(p).next().expect("parenthesised")),
        Rule::list => ExprKind::List(inner(p).map(expr).collect::<Result<_, _>>()?),
        Rule::call => {
            let mut it = inner(p);
            let callee = ident(it.next().expect("callee"));
            let mut args = Vec::new();
            let mut label = None;
            for q in it {
                match q.as_rule() {
                    Rule::args => {
                        for a in inner(q) {
                            args.push(arg(a)?);
                        }
                    }
                    Rule::ident => label = Some(ident(q)),
                    r => unreachable!("call: {r:?}"),
                }
            }
            ExprKind::Call { callee, args, label }
        }
        Rule::param_expr => {
            let mut it = inner(p);
            let name = ident(it.next().expect("param name"));
            let shape =
                it.next().expect("param shape").into_inner().filter(not_keyword).map(expr).collect::<Result<_, _>>()?;
            let init = it.next().map(expr).transpose()?.map(Box::new);
            ExprKind::Param { name, shape, init }
        }
        r => unreachable!("primary {r:?}"),
    };
    Ok(Expr { kind, span: sp })
}

fn arg(p: Pair<Rule>) -> Result<Arg, SyntaxError> {
    let mut it = inner(p);
    let first = it.next().expect("argument");
    if first.as_rule() == Rule::ident {
        let value = expr(it.next().expect("keyword value"))?;
        Ok(Arg { name: Some(ident(first)), value })
    } else {
        Ok(Arg { name: None, value: expr(first)? })
    }
}

/// Human names for the grammar rules that appear in "expected ..." messages.
fn rule_name(r: &Rule) -> Option<&'static str> {
    Some(match r {
        Rule::ident => "a name",
        Rule::expr | Rule::postfixed => "an expression",
        Rule::int => "an integer",
        Rule::float => "a number",
        Rule::string => "a string in double quotes",
        Rule::import | Rule::block_def | Rule::model_def => "`import`, `block` or `model`",
        Rule::body => "`{`",
        Rule::tensor_type => "a tensor type like f32[B, 16]",
        Rule::shape => "a shape like [4, 8]",
        Rule::config_entry => "`key = value`",
        Rule::formal | Rule::formals => "a parameter name",
        Rule::args | Rule::arg => "an argument",
        Rule::infix
        | Rule::add
        | Rule::sub
        | Rule::mul
        | Rule::div
        | Rule::floordiv
        | Rule::rem
        | Rule::matmul
        | Rule::eq
        | Rule::ne
        | Rule::lt
        | Rule::le
        | Rule::gt
        | Rule::ge
        | Rule::and
        | Rule::or => "an operator",
        Rule::member | Rule::index => "`.` or `[`",
        Rule::EOI => "end of file",
        Rule::aug_op => "`+=`",
        _ => return None,
    })
}

fn convert_error(src: &str, e: pest::error::Error<Rule>) -> SyntaxError {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let end = src[pos..].chars().next().map(|c| pos + c.len_utf8()).unwrap_or(pos);
    let found = describe_at(src, pos);
    let mut expected: Vec<&str> = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => positives.iter().filter_map(rule_name).collect(),
        ErrorVariant::CustomError { .. } => vec![],
    };
    expected.sort();
    expected.dedup();
    let message = if expected.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("unexpected {found}; expected {}", expected.join(" or "))
    };
    SyntaxError { span: Span::new(pos, end), message, hint: syntax_hint(src, pos) }
}

fn describe_at(src: &str, pos: usize) -> String {
    let rest = &src[pos..];
    match rest.chars().next() {
        None => "end of file".into(),
        Some('\n') | Some('\r') => "end of line".into(),
        Some(c) if c.is_alphanumeric() || c == '_' => {
            let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            format!("`{word}`")
        }
        Some(c) => format!("`{c}`"),
    }
}

/// The reserved words of the language.
pub const KEYWORDS: &[&str] = &[
    "import", "config", "block", "model", "input", "output", "loss", "param", "repeat", "as", "if", "else", "return",
    "true", "false", "none", "and", "or", "not",
];

/// Likely fixes for the commonest slips, judged from the text around the error.
fn syntax_hint(src: &str, pos: usize) -> Option<String> {
    let before = src[..pos].trim_end_matches([' ', '\t']);
    let rest = &src[pos..];
    let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    if KEYWORDS.contains(&word.as_str()) {
        return Some(format!("`{word}` is a keyword and can't be used as a name; rename it"));
    }
    let opens = |o: char, c: char| {
        let mut depth = 0i32;
        for ch in src[..pos].chars() {
            if ch == o {
                depth += 1
            } else if ch == c {
                depth -= 1
            }
        }
        depth
    };
    if rest.is_empty() && opens('{', '}') > 0 {
        return Some("a `{` is never closed: add the missing `}`".into());
    }
    if rest.starts_with('"') && !rest[1..].split('\n').next().unwrap_or("").contains('"') {
        return Some("this string is never closed: add `\"` before the end of the line".into());
    }
    if rest.starts_with(['\n', '\r']) || rest.is_empty() {
        if opens('(', ')') > 0 {
            return Some("a `(` is never closed: add the missing `)`".into());
        }
        if opens('[', ']') > 0 {
            return Some("a `[` is never closed: add the missing `]`".into());
        }
    }
    if before.ends_with([',', '(', '[']) && (rest.starts_with('\n') || rest.is_empty()) {
        return None;
    }
    if rest.starts_with(':') && before.ends_with(|c: char| c.is_alphanumeric()) {
        return Some("parameters are declared with `param name: [dims] ~ init`".into());
    }
    if rest.starts_with("=") && !rest.starts_with("==") {
        return Some("did you mean `==` for a comparison?".into());
    }
    if before.ends_with(|c: char| c.is_alphanumeric() || c == ')' || c == ']')
        && rest.starts_with(|c: char| c.is_alphanumeric() || c == '(')
    {
        return Some("two expressions in a row: a missing operator, comma or line break?".into());
    }
    None
}
