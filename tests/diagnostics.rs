//! Malformed `.muse` programs: each must fail with the right class of diagnostic at the exact
//! line and column, never panic. The expected position is marked with `$` in the source; the
//! test removes the marker and computes line:column from where it stood.

use muse_compiler::{compile_source, DiagClass, Options};

/// A model prelude most cases build on: an f32 input `x` and an i32 input `ids`.
fn model(body: &str) -> String {
    format!("import \"std/nn.muse\"\nmodel m {{\n  input x: f32[B, 4]\n  input ids: i32[B, 4]\n{body}\n  output o = x\n}}\n")
}

fn marker_line_col(src: &str) -> (String, usize, usize) {
    let pos = src.find('$').expect("each case marks the error position with $");
    let clean = format!("{}{}", &src[..pos], &src[pos + 1..]);
    let before = &src[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap().chars().count() + 1;
    (clean, line, col)
}

fn expect(src: &str, class: DiagClass, needle: &str) {
    expect_with(src, class, needle, &Options::default());
}

fn expect_with(src: &str, class: DiagClass, needle: &str, opts: &Options) {
    let (clean, line, col) = marker_line_col(src);
    let c = compile_source("case.muse", &clean, opts);
    let d = match c.result {
        Ok(_) => panic!("expected a {class:?} error, but this compiled:\n{clean}"),
        Err(d) => d,
    };
    let rendered = d.render(&c.sources);
    assert_eq!(d.class, class, "wrong class for:\n{clean}\n{rendered}");
    let loc = d.loc.expect("the diagnostic has a location");
    assert_eq!(c.sources.get(loc.file).name, "case.muse", "error is not in the user's file:\n{rendered}");
    assert_eq!(d.line_col(&c.sources), Some((line, col)), "wrong position for:\n{clean}\n{rendered}");
    assert!(d.message.contains(needle), "message {:?} lacks {needle:?}", d.message);
    assert!(rendered.contains(class.code()), "the report names its class:\n{rendered}");
}

// ---- syntax ---------------------------------------------------------------

#[test]
fn syntax_unclosed_brace() {
    expect("model m {\n  output o = 1\n$", DiagClass::Syntax, "end of file");
}

#[test]
fn syntax_unclosed_paren() {
    let src = "model m {\n  h = (1 + 2$\n}\n";
    expect(src, DiagClass::Syntax, "unexpected end of line");
    let (clean, _, _) = marker_line_col(src);
    let d = compile_source("case.muse", &clean, &Options::default()).result.unwrap_err();
    assert_eq!(d.hint.as_deref(), Some("a `(` is never closed: add the missing `)`"));
}

#[test]
fn syntax_two_expressions_in_a_row() {
    expect(&model("  y = x $x"), DiagClass::Syntax, "unexpected `x`");
}

#[test]
fn syntax_keyword_as_name() {
    let src = model("  $block = 3");
    expect(&src, DiagClass::Syntax, "unexpected `block`");
    let (clean, _, _) = marker_line_col(&src);
    let d = compile_source("case.muse", &clean, &Options::default()).result.unwrap_err();
    assert!(d.hint.unwrap().contains("keyword"));
}

#[test]
fn syntax_stray_character() {
    expect(&model("  y = 3 $? 4"), DiagClass::Syntax, "unexpected `?`");
}

#[test]
fn syntax_unterminated_string() {
    let src = "import $\"std/nn.muse\nmodel m {}\n";
    expect(src, DiagClass::Syntax, "expected a string");
    let (clean, _, _) = marker_line_col(src);
    let d = compile_source("case.muse", &clean, &Options::default()).result.unwrap_err();
    assert!(d.hint.unwrap().contains("never closed"));
}

#[test]
fn syntax_input_without_element_type() {
    expect("model m {\n  input x: $[B, 4]\n}\n", DiagClass::Syntax, "unexpected `[`");
}

#[test]
fn syntax_model_without_name() {
    expect("model ${\n}\n", DiagClass::Syntax, "expected a name");
}

#[test]
fn syntax_output_without_name() {
    expect(&model("  output $= x"), DiagClass::Syntax, "unexpected `=`");
}

#[test]
fn syntax_integer_too_large() {
    expect(&model("  y = $99999999999999999999"), DiagClass::Syntax, "too large");
}

// ---- names ----------------------------------------------------------------

#[test]
fn unknown_variable() {
    expect(&model("  y = x + $foo"), DiagClass::UnknownName, "unknown name `foo`");
}

#[test]
fn unknown_block_with_suggestion() {
    let src = model("  y = $lienar(x, 4)");
    expect(&src, DiagClass::UnknownName, "`lienar`");
    let (clean, _, _) = marker_line_col(&src);
    let d = compile_source("case.muse", &clean, &Options::default()).result.unwrap_err();
    assert_eq!(d.hint.as_deref(), Some("did you mean `linear`?"));
}

#[test]
fn unknown_tensor_field() {
    expect(&model("  n = x.$shap"), DiagClass::UnknownName, "no field `shap`");
}

// ---- arity ----------------------------------------------------------------

#[test]
fn too_many_arguments() {
    expect(&model("  y = linear(x, 4, true, 0.02, $7)"), DiagClass::Arity, "takes 4 argument(s)");
}

#[test]
fn unknown_keyword_argument() {
    expect(&model("  y = linear(x, 4, $bais = true)"), DiagClass::Arity, "no parameter `bais`");
}

#[test]
fn missing_block_argument() {
    expect(&model("  y = $linear(x)"), DiagClass::Arity, "missing argument `out`");
}

#[test]
fn missing_builtin_argument() {
    expect(&model("  y = $reshape(x)"), DiagClass::Arity, "missing argument `shape`");
}

#[test]
fn destructuring_count() {
    expect(&model("  a, b = $split(x, 4)"), DiagClass::Arity, "4 values on the right, 2 names");
}

#[test]
fn argument_given_twice() {
    expect(&model("  y = sum(x, axis = 1, $axis = 0)"), DiagClass::Arity, "given twice");
}

// ---- shapes ---------------------------------------------------------------

#[test]
fn broadcast_mismatch() {
    expect(&model("  y = $x + full([3], 1.0)"), DiagClass::Shape, "do not broadcast");
}

#[test]
fn matmul_inner_mismatch() {
    expect(&model("  y = $x @ full([5, 2], 1.0)"), DiagClass::Shape, "inner sizes 4 and 5 differ");
}

#[test]
fn reshape_element_count() {
    expect(&model("  y = $reshape(x, [3, 5])"), DiagClass::Shape, "cannot reshape");
}

#[test]
fn loss_not_scalar() {
    expect(&model("  loss l = $x"), DiagClass::Shape, "a loss must be a scalar");
}

#[test]
fn param_with_batch_size() {
    expect(&model("  param w: [$x.shape[0], 4]"), DiagClass::Shape, "parameter sizes must be known");
}

#[test]
fn slice_of_symbolic_axis() {
    expect(&model("  y = slice(x, $0, 0, 1)"), DiagClass::Shape, "symbolic axis");
}

#[test]
fn axis_out_of_range() {
    expect(&model("  y = sum(x, $5)"), DiagClass::Shape, "axis 5 is out of range");
}

// ---- element types ----------------------------------------------------------

#[test]
fn add_f32_and_i32() {
    expect(&model("  y = $x + ids"), DiagClass::DType, "element types differ");
}

#[test]
fn exp_of_integers() {
    expect(&model("  y = $exp(ids)"), DiagClass::DType, "needs an f32 tensor");
}

#[test]
fn float_constant_with_integer_tensor() {
    expect(&model("  y = $ids * 0.5"), DiagClass::DType, "combined with an i32 tensor");
}

#[test]
fn integer_loss() {
    expect(&model("  loss l = $sum(ids)"), DiagClass::DType, "a loss must be f32");
}

// ---- compile-time values ----------------------------------------------------

#[test]
fn repeat_count_is_a_tensor() {
    expect(&model("  repeat $x {\n  }"), DiagClass::NotCompileTime, "repeat count");
}

#[test]
fn if_condition_is_a_tensor() {
    expect(&model("  if $x > 0 {\n  }"), DiagClass::NotCompileTime, "`if` condition");
}

#[test]
fn repeat_count_is_a_float() {
    expect(&model("  repeat $2.5 {\n  }"), DiagClass::Type, "must be an integer");
}

#[test]
fn unknown_element_type() {
    expect("model m {\n  input x: $f64[B, 4]\n  output o = x\n}\n", DiagClass::Type, "unknown element type `f64`");
}

#[test]
fn block_argument_of_wrong_kind() {
    expect(
        "block f(x: tensor, n: int) {\n  return x\n}\nmodel m {\n  input x: f32[B, 4]\n  output o = f(x, $2.5)\n}\n",
        DiagClass::Type,
        "argument `n` must be an integer",
    );
}

// ---- config -----------------------------------------------------------------

#[test]
fn unknown_config_key() {
    let opts = Options { overrides: vec![("dpth".into(), "3".into())], ..Options::default() };
    expect_with(
        "model $m {\n  config { depth = 2 }\n  input x: f32[B, 4]\n  output o = x\n}\n",
        DiagClass::UnknownConfigKey,
        "unknown config key `dpth`",
        &opts,
    );
}

#[test]
fn config_override_of_wrong_type() {
    let opts = Options { overrides: vec![("depth".into(), "two".into())], ..Options::default() };
    expect_with(
        "model m {\n  config { $depth = 2 }\n  input x: f32[B, 4]\n  output o = x\n}\n",
        DiagClass::Type,
        "needs an integer",
        &opts,
    );
}

// ---- structure --------------------------------------------------------------

#[test]
fn parameter_declared_twice() {
    expect(&model("  param w: [4] ~ zeros\n  param $w: [4] ~ zeros"), DiagClass::Duplicate, "declared twice");
}

#[test]
fn input_declared_twice() {
    expect(&model("  input $x: f32[B, 4]"), DiagClass::Duplicate, "input `x` is declared twice");
}

#[test]
fn block_named_like_a_builtin() {
    expect(
        "block $sum(x) {\n  return x\n}\nmodel m {\n  input x: f32[B, 4]\n  output o = x\n}\n",
        DiagClass::Duplicate,
        "name of a builtin",
    );
}

#[test]
fn return_in_a_model() {
    expect(&model("  $return x"), DiagClass::Invalid, "only allowed in a block");
}

#[test]
fn input_in_a_block() {
    expect(
        "block f(x) {\n  $input y: f32[B, 4]\n  return x\n}\nmodel m {\n  input x: f32[B, 4]\n  output o = f(x)\n}\n",
        DiagClass::Invalid,
        "only allowed in a model",
    );
}

#[test]
fn model_without_results() {
    expect("model $m {\n  input x: f32[B, 4]\n}\n", DiagClass::Invalid, "no output and no loss");
}

#[test]
fn user_assertion() {
    expect(&model("  $assert(1 == 2, \"widths must match\")"), DiagClass::Assert, "widths must match");
}

// ---- imports and limits -------------------------------------------------------

#[test]
fn unknown_standard_library_file() {
    expect("import $\"std/nope.muse\"\nmodel m {}\n", DiagClass::Import, "no standard library file");
}

#[test]
fn missing_relative_import() {
    expect("import $\"no/such/file.muse\"\nmodel m {}\n", DiagClass::Import, "cannot read");
}

#[test]
fn runaway_repeat() {
    expect(&model("  repeat $1000000 {\n  }"), DiagClass::Limit, "outside 0..=100000");
}

#[test]
fn endless_recursion() {
    expect(
        "block f(x) {\n  return $f(x)\n}\nmodel m {\n  input x: f32[B, 4]\n  output o = f(x)\n}\n",
        DiagClass::Limit,
        "nest deeper",
    );
}

#[test]
fn cyclic_import() {
    let dir = std::env::temp_dir().join(format!("muse-cycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.muse"), "import \"b.muse\"\nmodel m {\n  input x: f32[B, 4]\n  output o = x\n}\n")
        .unwrap();
    std::fs::write(dir.join("b.muse"), "# b imports a back\nimport \"a.muse\"\n").unwrap();
    let c = muse_compiler::compile_path(&dir.join("a.muse"), &Options::default());
    let d = c.result.unwrap_err();
    assert_eq!(d.class, DiagClass::CyclicImport);
    let loc = d.loc.unwrap();
    assert!(c.sources.get(loc.file).name.ends_with("b.muse"));
    assert_eq!(d.line_col(&c.sources), Some((2, 8)));
    assert!(d.hint.unwrap().contains("a.muse -> "));
    std::fs::remove_dir_all(&dir).ok();
}

/// An error inside a standard-library block names the user's call site in its trace.
#[test]
fn error_in_library_block_traces_to_call_site() {
    let src = format!("import \"std/attention.muse\"\n{}", model("  y = attention(x, x, 3)"));
    let c = compile_source("case.muse", &src, &Options::default());
    let d = c.result.unwrap_err();
    assert_eq!(d.class, DiagClass::Assert);
    assert_eq!(c.sources.get(d.loc.unwrap().file).name, "std/attention.muse");
    let call = d.trace.first().expect("a call trace");
    assert_eq!(c.sources.describe(*call), "case.muse:6:7");
    assert!(d.render(&c.sources).contains("case.muse:6:7"));
}
