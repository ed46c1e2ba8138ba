//! The grammar on its own: what each construct parses to, operator precedence, spans, and
//! where syntax errors are reported.

use muse_grammar::ast::*;
use muse_grammar::parse;

fn model_body(src: &str) -> Vec<Stmt> {
    let f = parse(&format!("model m {{\n{src}\n}}\n")).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    match f.items.into_iter().next().unwrap() {
        Item::Model(m) => m.body,
        other => panic!("{other:?}"),
    }
}

fn one_expr(src: &str) -> Expr {
    match model_body(&format!("  y = {src}")).remove(0).kind {
        StmtKind::Assign { value, .. } => value,
        other => panic!("{other:?}"),
    }
}

/// Fully parenthesised rendering of an expression, to check precedence.
fn show(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(i) => i.to_string(),
        ExprKind::Float(f) => format!("{f:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::None => "none".into(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Name(n) => n.clone(),
        ExprKind::List(v) => format!("[{}]", v.iter().map(show).collect::<Vec<_>>().join(", ")),
        ExprKind::Unary(UnOp::Neg, x) => format!("(-{})", show(x)),
        ExprKind::Unary(UnOp::Not, x) => format!("(not {})", show(x)),
        ExprKind::Binary(op, a, b) => format!("({} {op} {})", show(a), show(b)),
        ExprKind::Call { callee, args, label } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}={}", n.name, show(&a.value)),
                    None => show(&a.value),
                })
                .collect();
            let l = label.as_ref().map(|l| format!(" as {}", l.name)).unwrap_or_default();
            format!("{}({}){l}", callee.name, args.join(", "))
        }
        ExprKind::Member(x, n) => format!("{}.{}", show(x), n.name),
        ExprKind::Index(x, i) => format!("{}[{}]", show(x), show(i)),
        ExprKind::Param { name, shape, init } => format!(
            "param {}: [{}]{}",
            name.name,
            shape.iter().map(show).collect::<Vec<_>>().join(", "),
            init.as_ref().map(|i| format!(" ~ {}", show(i))).unwrap_or_default()
        ),
    }
}

#[test]
fn arithmetic_precedence_and_associativity() {
    assert_eq!(show(&one_expr("1 + 2 * 3")), "(1 + (2 * 3))");
    assert_eq!(show(&one_expr("1 - 2 - 3")), "((1 - 2) - 3)");
    assert_eq!(show(&one_expr("a @ b + c")), "((a @ b) + c)");
    assert_eq!(show(&one_expr("-a * b")), "((-a) * b)");
    assert_eq!(show(&one_expr("a // 2 % 3")), "((a // 2) % 3)");
    assert_eq!(show(&one_expr("(1 + 2) * 3")), "((1 + 2) * 3)");
}

#[test]
fn logic_and_comparison_precedence() {
    assert_eq!(show(&one_expr("a < b and b <= c or not d == e")), "(((a < b) and (b <= c)) or (not (d == e)))");
    assert_eq!(show(&one_expr("x != none")), "(x != none)");
}

#[test]
fn postfix_calls_labels_members_and_indexing() {
    assert_eq!(show(&one_expr("linear(x, 4, bias = true) as proj")), "linear(x, 4, bias=true) as proj");
    assert_eq!(show(&one_expr("x.shape[-1]")), "x.shape[(-1)]");
    assert_eq!(show(&one_expr("f(g(x) as a) as b")), "f(g(x) as a) as b");
}

#[test]
fn literals() {
    assert_eq!(show(&one_expr("1_000")), "1000");
    assert_eq!(show(&one_expr("1e-5")), "1e-5");
    assert_eq!(show(&one_expr(".5")), "0.5");
    assert_eq!(show(&one_expr("2.")), "2.0");
    assert_eq!(show(&one_expr("\"a\\\"b\"")), "\"a\\\"b\"");
    assert_eq!(show(&one_expr("[1, [2, 3], true, none]")), "[1, [2, 3], true, none]");
}

#[test]
fn inline_parameter_with_initialiser() {
    assert_eq!(show(&one_expr("e + param pos: [n, d] ~ normal(0.02)")), "(e + param pos: [n, d] ~ normal(0.02))");
}

#[test]
fn lines_continue_inside_brackets_and_after_operators() {
    assert_eq!(show(&one_expr("f(\n  a,\n  b,\n)")), "f(a, b)");
    assert_eq!(show(&one_expr("a +\n  b")), "(a + b)");
    assert_eq!(show(&one_expr("[\n 1,\n 2\n]")), "[1, 2]");
    assert_eq!(show(&one_expr("a \\\n + b")), "(a + b)");
}

#[test]
fn statements() {
    let body = model_body(
        "  config { a = 1, b = a * 2\n c = true }\n  input x: f32[B, 4]\n  x, y = split(x, 2)\n  x += 1; y -= 2\n  repeat 3 as layers[i] {\n  }\n  if a > 0 {\n  } else if b {\n  } else {\n  }\n  output o = x\n  loss l\n  assert(true, \"ok\")",
    );
    let kinds: Vec<&str> = body
        .iter()
        .map(|s| match &s.kind {
            StmtKind::Config(e) => {
                assert_eq!(e.len(), 3);
                "config"
            }
            StmtKind::Input { dims, .. } => {
                assert_eq!(dims.len(), 2);
                "input"
            }
            StmtKind::Assign { targets, .. } => {
                assert_eq!(targets.len(), 2);
                "assign"
            }
            StmtKind::AugAssign { .. } => "aug",
            StmtKind::Repeat { label, index, .. } => {
                assert_eq!(label.as_ref().unwrap().name, "layers");
                assert_eq!(index.as_ref().unwrap().name, "i");
                "repeat"
            }
            StmtKind::If { otherwise, .. } => {
                assert!(matches!(otherwise.as_ref().unwrap()[0].kind, StmtKind::If { .. }));
                "if"
            }
            StmtKind::Output { value, .. } => {
                assert!(value.is_some());
                "output"
            }
            StmtKind::Loss { value, .. } => {
                assert!(value.is_none());
                "loss"
            }
            StmtKind::Expr(_) => "expr",
            StmtKind::Return(_) => "return",
        })
        .collect();
    assert_eq!(kinds, ["config", "input", "assign", "aug", "aug", "repeat", "if", "output", "loss", "expr"]);
}

#[test]
fn blocks_with_kinds_and_defaults() {
    let f = parse("block f(x: tensor, n: int = 2,\n   flag = false,) {\n  return x, n\n}\n").unwrap();
    let Item::Block(b) = &f.items[0] else { panic!() };
    assert_eq!(b.formals.len(), 3);
    assert_eq!(b.formals[1].kind.as_ref().unwrap().name, "int");
    assert!(b.formals[2].default.is_some());
    assert!(matches!(&b.body[0].kind, StmtKind::Return(v) if v.len() == 2));
}

#[test]
fn keywords_are_not_names_but_prefixes_are() {
    assert_eq!(
        show(&one_expr("inputs + outputs + losses + modeling + iffy")),
        "((((inputs + outputs) + losses) + modeling) + iffy)"
    );
    assert!(parse("model m {\n  model = 1\n}\n").is_err());
}

#[test]
fn spans_point_at_the_source() {
    let src = "model m {\n  y = foo(1)\n}\n";
    let f = parse(src).unwrap();
    let Item::Model(m) = &f.items[0] else { panic!() };
    let StmtKind::Assign { value, targets } = &m.body[0].kind else { panic!() };
    assert_eq!(&src[value.span.start..value.span.end], "foo(1)");
    assert_eq!(&src[targets[0].span.start..targets[0].span.end], "y");
    assert_eq!(&src[m.name.span.start..m.name.span.end], "m");
}

#[test]
fn comments_and_blank_lines() {
    let f = parse(
        "# header\n\nimport \"std/nn.muse\" # trailing\n\n# between\nmodel m { # open\n  # inside\n  y = 1 # end\n}\n",
    )
    .unwrap();
    assert_eq!(f.items.len(), 2);
}

#[test]
fn one_statement_per_line() {
    let e = parse("model m {\n  y = 1 z = 2\n}\n").unwrap_err();
    assert_eq!(e.span.start, "model m {\n  y = 1 ".len());
}
