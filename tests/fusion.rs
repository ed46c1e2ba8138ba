//! Fusion structure: how many kernels common blocks become, and that every value written to
//! memory says why. (Numerical equality with the interpreter is tests/cpu_backend.rs.)

mod common;

use muse_compiler::fusion::{self, GroupKind};
use muse_compiler::ir::{NodeIndex, Op};
use muse_compiler::kernel::{self, KernelProgram};
use muse_compiler::Model;

fn program(body: &str, decls: &str) -> (Model, KernelProgram) {
    let src =
        format!("import \"std/nn.muse\"\nimport \"std/mamba.muse\"\nmodel t {{\n{decls}\n{body}\n  output y\n}}\n");
    let m = common::compile_one("fusion.muse", &src);
    let req: Vec<NodeIndex> = m.graph.outputs.iter().map(|x| x.1).collect();
    let plan = fusion::plan(&m.graph, &req);
    let p = kernel::lower(&m.graph, &plan);
    (m, p)
}

/// The differentiated graph and its values a training step needs: the loss and every
/// parameter's gradient.
fn loss_and_gradients(m: &Model) -> (muse_compiler::autodiff::Gradients, Vec<NodeIndex>) {
    let d = muse_compiler::autodiff::differentiate(&m.graph, Default::default());
    let mut req: Vec<NodeIndex> = m.graph.losses.iter().map(|x| x.1).collect();
    req.extend(d.params.iter().map(|x| x.1));
    (d, req)
}

/// The fusion plan of a training step (loss and every gradient) of a model given as source.
fn training_plan(file: &str, src: &str) -> (muse_compiler::autodiff::Gradients, fusion::FusionPlan) {
    let m = common::compile_one(file, src);
    let (d, req) = loss_and_gradients(&m);
    let plan = fusion::plan(&d.graph, &req);
    (d, plan)
}

fn matmuls(m: &Model) -> usize {
    m.graph.g.node_indices().filter(|&n| matches!(m.graph.node(n).op, Op::MatMul)).count()
}

#[test]
fn elementwise_chains_are_one_kernel() {
    let (_, p) = program("  y = exp(x) * 2.0 + tanh(x) - 1.0", "  input x: f32[B, 17, 33]");
    assert_eq!(p.steps.len(), 1);
}

#[test]
fn layernorm_and_softmax_are_one_kernel_each() {
    let x = "  input x: f32[B, 16, 64]";
    let (_, p) = program("  y = layernorm(x)", x);
    assert!(p.steps.len() <= 2, "layernorm: {} kernels", p.steps.len());
    let (_, p) = program("  y = softmax(x)", x);
    assert_eq!(p.steps.len(), 1, "softmax");
    let (_, p) = program("  y = rmsnorm(x) * 2.0", x);
    assert_eq!(p.steps.len(), 1, "rmsnorm");
}

#[test]
fn mamba_block_is_its_matmuls_plus_two() {
    let (m, p) = program("  y = mamba(x) as mixer", "  input x: f32[B, 16, 64]");
    let mm = matmuls(&m);
    assert_eq!(mm, 4, "in_proj, x_proj, dt_proj, out_proj");
    assert!(p.steps.len() <= mm + 2, "mamba block: {} kernels for {mm} matmuls", p.steps.len());
}

#[test]
fn selective_scan_with_prologue_and_epilogue_is_one_kernel() {
    let decls = "  input u: f32[B, 16, 32]\n  input dt: f32[B, 16, 32]\n  input z: f32[B, 16, 32]\n  input bm: f32[B, 16, 8]\n  input cm: f32[B, 16, 8]\n  param A_log: [32, 8] ~ zeros\n  param D: [32] ~ ones";
    let body = "  y = (selective_scan(u, softplus(dt), -exp(A_log), bm, cm) + u * D) * silu(z)";
    let (_, p) = program(body, decls);
    assert_eq!(p.steps.len(), 1, "the selective scan, its prologue and epilogue");
    let kernel::Step::Kernel(k) = &p.steps[0] else { panic!("a generated kernel") };
    assert_eq!(k.group.kind, GroupKind::Scan);
}

/// The backward selective scan sums the gradients of `dt` over the states inside the scan
/// (a second reduction next to `sum_n h C`'s adjoint), rather than writing a [B, L, E, N]
/// tensor for a row kernel to reduce.
#[test]
fn the_backward_scan_sums_over_the_states_itself() {
    let decls = "  input u: f32[B, 16, 32]\n  input dt: f32[B, 16, 32]\n  input bm: f32[B, 16, 8]\n  input cm: f32[B, 16, 8]\n  param A_log: [32, 8] ~ zeros\n  param W: [32] ~ ones";
    let body = "  y = sum(selective_scan(u * W, softplus(dt * W), -exp(A_log), bm, cm))\n  loss l = y";
    let (m, _) = program(body, decls);
    let (d, req) = loss_and_gradients(&m);
    let p = kernel::lower(&d.graph, &fusion::plan(&d.graph, &req));
    let scans: Vec<&kernel::LoweredKernel> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            kernel::Step::Kernel(k) if k.group.kind == GroupKind::Scan => Some(k),
            _ => None,
        })
        .collect();
    assert_eq!(scans.len(), 2, "the forward scan and the backward scan");
    let reductions = |k: &kernel::LoweredKernel| {
        k.group.members.iter().filter(|&&n| matches!(d.graph.node(n).op, Op::Reduce { .. })).count()
    };
    assert_eq!(reductions(scans[0]), 1, "forward: sum_n h C");
    assert!(reductions(scans[1]) >= 2, "backward: {} state reductions", reductions(scans[1]));
}

/// A softmax's row sum, which its backward reads spread over the row, is written once per
/// row: no broadcast is ever written to memory (it had been, [rows, 64] for a sum per row).
#[test]
fn a_row_value_read_through_a_broadcast_is_written_per_row() {
    let (m, _) = program(
        "  y = softmax(x * W) @ v\n  loss l = sum(y * y)",
        "  input x: f32[B, 8, 64]\n  input v: f32[B, 64, 16]\n  param W: [64] ~ ones",
    );
    let (d, req) = loss_and_gradients(&m);
    let plan = fusion::plan(&d.graph, &req);
    let broadcasts: Vec<_> =
        plan.materialized.keys().filter(|&&n| matches!(d.graph.node(n).op, Op::Broadcast { .. })).collect();
    assert!(broadcasts.is_empty(), "{broadcasts:?}");
    assert!(plan.materialized.keys().any(|&n| matches!(d.graph.node(n).op, Op::Reduce { .. })));
}

#[test]
fn every_value_in_memory_has_a_reason_and_every_kernel_reads_only_those() {
    let m = common::compile_model("mamba_xattn_xz", &[]);
    let d = muse_compiler::autodiff::differentiate(&m.graph, Default::default());
    let mut req: Vec<NodeIndex> = m.graph.losses.iter().map(|x| x.1).collect();
    req.extend(d.params.iter().map(|x| x.1));
    let plan = fusion::plan(&d.graph, &req);
    for g in &plan.groups {
        for r in &g.reads {
            assert!(plan.materialized.contains_key(r), "a kernel reads %{} which is not in memory", r.index());
        }
        for o in &g.outputs {
            assert!(plan.materialized.contains_key(o));
        }
    }
    // Every requested value is written by a kernel, is an input/parameter, or aliases one.
    let written: std::collections::HashSet<NodeIndex> = plan.groups.iter().flat_map(|g| g.outputs.clone()).collect();
    for r in &req {
        let src = plan.aliases.get(r).copied().unwrap_or(*r);
        let external = matches!(d.graph.node(src).op, Op::Input { .. } | Op::Param { .. });
        assert!(written.contains(&src) || external, "requested %{} is never written", r.index());
    }
}

#[test]
fn sibling_elementwise_kernels_share_one_pass() {
    let m = common::compile_one(
        "siblings.muse",
        "model s {\n  input x: f32[B, 33]\n  output a = exp(x) * 2.0\n  output b = tanh(x) + x\n}\n",
    );
    let req: Vec<NodeIndex> = m.graph.outputs.iter().map(|x| x.1).collect();
    let plan = fusion::plan(&m.graph, &req);
    assert_eq!(plan.groups.len(), 1, "two outputs over one input in one kernel");
    assert_eq!(plan.groups[0].outputs.len(), 2);
    // A kernel that reads the other's output cannot join it.
    let m = common::compile_one(
        "chain.muse",
        "import \"std/nn.muse\"\nmodel s {\n  input x: f32[B, 33]\n  output a = exp(x) * 2.0\n  output b = softmax(a) + x\n}\n",
    );
    let req: Vec<NodeIndex> = m.graph.outputs.iter().map(|x| x.1).collect();
    let plan = fusion::plan(&m.graph, &req);
    assert!(plan.groups.len() >= 2);
}

#[test]
fn a_convolution_computes_its_activated_input_once() {
    // conv2d reads silu(x) through nine tap views of the padded input; inlined, each output
    // element would evaluate every tap's exp. The activation is stored once instead, and
    // the patch kernel only gathers.
    for (shape, pre) in [("8, 8, 4", "x"), ("32, 32, 32", "group_norm(x, 8)"), ("16, 16, 64", "group_norm(x, 8)")] {
        let src = format!(
            "import \"std/conv.muse\"\nmodel t {{\n  input x: f32[B, {shape}]\n  output y = conv2d(silu({pre}), 4) as conv\n}}\n"
        );
        let m = common::compile_one("conv.muse", &src);
        let req: Vec<NodeIndex> = m.graph.outputs.iter().map(|x| x.1).collect();
        let plan = fusion::plan(&m.graph, &req);
        let reasons: Vec<_> = plan.materialized.values().copied().collect();
        assert!(reasons.contains(&fusion::CutReason::ReadThroughManyViews), "{shape}: {reasons:?}");
        let p = kernel::lower(&m.graph, &plan);
        let exps = p
            .steps
            .iter()
            .filter_map(|s| if let kernel::Step::Kernel(k) = s { Some(k) } else { None })
            .filter(|k| {
                k.kernel
                    .exprs
                    .iter()
                    .any(|e| matches!(e.expr, kernel::ir::Expr::Unary(muse_compiler::ir::UnaryOp::Exp, _)))
            })
            .count();
        assert_eq!(exps, 1, "{shape}: one kernel evaluates the activation");
    }
}

#[test]
fn only_selects_with_costly_branches_become_branches() {
    use muse_compiler::render::c::render_kernel;
    let kernels = |src: &str| -> Vec<String> {
        let m = common::compile_one("sel.muse", src);
        let req: Vec<NodeIndex> = m.graph.outputs.iter().map(|x| x.1).collect();
        let plan = fusion::plan(&m.graph, &req);
        kernel::lower(&m.graph, &plan)
            .steps
            .iter()
            .filter_map(|s| if let kernel::Step::Kernel(k) = s { Some(render_kernel(&k.kernel)) } else { None })
            .collect()
    };
    // A convolution's taps: each branch gathers through offsets and bounds of its own, so
    // the patch kernel computes only the taken one.
    let conv = kernels(
        "import \"std/conv.muse\"\nmodel t {\n  input x: f32[B, 8, 8, 4]\n  output y = conv2d(x, 4) as conv\n}\n",
    );
    assert!(conv.iter().any(|c| c.contains("if (")), "{}", conv.join("\n"));
    // A plain `where` stays a branch-free select that vectorizes.
    let relu = kernels("model t {\n  input x: f32[B, 64]\n  output y = where(x > 0.0, x * 2.0, 0.0)\n}\n");
    assert!(relu.iter().all(|c| !c.contains("if (")), "{}", relu.join("\n"));
}

/// The kernel table counts a product's FLOPs as 2 m n k, also when k is the batch (a weight
/// gradient's product sums over the rows of the batch).
#[test]
fn kernel_table_counts_products_over_a_symbolic_inner_length() {
    use muse_compiler::autodiff::{differentiate, Wrt};
    let (m, _) = program(
        "  h = x @ W\n  y = sum(h * h)\n  loss l = y",
        "  input x: f32[B, 16]\n  param W: [16, 8] ~ normal(0.02)",
    );
    let d = differentiate(&m.graph, Wrt::default());
    let req: Vec<NodeIndex> = d.params.iter().map(|x| x.1).collect();
    let p = kernel::lower(&d.graph, &fusion::plan(&d.graph, &req));
    let rows = muse_compiler::inspect::rows(&d.graph, &p, None, 32);
    let flops: Vec<u64> = rows.iter().filter(|r| r.kind == "matmul").map(|r| r.flops).collect();
    // The gradient of W, transpose(x) @ dh: 2 * 16 * 8 * 32; the forward x @ W as many, plus
    // its epilogue's (dh = 2 h dy runs on its tiles).
    assert!(flops.contains(&(2 * 16 * 8 * 32)), "{flops:?}");
    assert!(flops.iter().all(|&f| f >= 2 * 16 * 8 * 32), "{flops:?}");
}

/// Attention's head merge ([B, H, L, D] -> [B, L, H * D]) feeding a projection is read in place
/// by the product (offset tables for its rows and columns): no copy kernel.
#[test]
fn a_head_merge_is_read_in_place_by_the_product() {
    let (_, p) = program(
        "  y = reshape(permute(h, [0, 2, 1, 3]), [-1, 64]) @ W",
        "  input h: f32[B, 4, 16, 16]\n  param W: [64, 32] ~ normal(0.02)",
    );
    assert_eq!(p.steps.len(), 1, "{:?}", p.steps.iter().map(|s| s.reads()).collect::<Vec<_>>());
    let kernel::Step::MatMul(m) = &p.steps[0] else { panic!("a product") };
    assert_eq!(m.a_view.axes.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2], "rows and columns are two runs");
}

/// A linear layer's bias and activation run as the product's epilogue, on each finished tile;
/// a head-merging permute after a product stays a kernel of its own, with its reason.
#[test]
fn bias_and_activation_are_the_products_epilogue() {
    use muse_compiler::kernel::epilogue::NotEpilogue;
    let (_, p) = program(
        "  y = tanh(x @ W + bias)",
        "  input x: f32[B, 16, 64]\n  param W: [64, 32] ~ normal(0.02)\n  param bias: [32] ~ zeros",
    );
    assert_eq!(p.steps.len(), 1, "the product with its epilogue");
    let kernel::Step::MatMul(m) = &p.steps[0] else { panic!("a product") };
    assert!(m.epilogue.is_some());
    let (_, p) =
        program("  y = permute(x @ W, [0, 2, 1])", "  input x: f32[B, 16, 64]\n  param W: [64, 32] ~ normal(0.02)");
    assert_eq!(p.epilogues.fused.len(), 0);
    assert_eq!(p.epilogues.kept.iter().map(|k| k.2).collect::<Vec<_>>(), vec![NotEpilogue::ReadsOtherElements]);
}

/// A GELU's tanh is recomputed where it is needed, not stored: in a training step of an MLP
/// the first product writes its result and, as its epilogue, the GELU (the second product's
/// operand); the backward recomputes the tanh from the stored product.
#[test]
fn a_gelus_tanh_is_recomputed_not_stored() {
    let src = concat!(
        "import \"std/nn.muse\"\nmodel t {\n  input x: f32[B, 16, 32]\n",
        "  h = gelu(linear(x, 64) as fc1)\n  y = linear(h, 32) as fc2\n",
        "  loss l = mean(y * y)\n}\n"
    );
    let (d, plan) = training_plan("gelu.muse", src);
    // Stored elementwise values are the products' operands (the GELU, the backward's
    // gradients) and the loss; none is stored because several kernels use it (the tanh, or
    // `1 + tanh`, as before).
    let shared: Vec<String> = plan
        .materialized
        .iter()
        .filter(|(_, r)| **r == fusion::CutReason::MultipleUsers)
        .map(|(n, _)| format!("%{} {:?}", n.index(), d.graph.node(*n).op))
        .collect();
    assert!(shared.is_empty(), "written because several kernels use them: {shared:?}");
    let p = kernel::lower(&d.graph, &plan);
    let fc1 = p.steps.iter().find_map(|s| match s {
        kernel::Step::MatMul(mm) if mm.epilogue.is_some() => Some(mm),
        _ => None,
    });
    assert!(fc1.is_some(), "the first product has the GELU as its epilogue");
}

/// A layernorm's forward writes its output and its rows' statistics only: the backward
/// recomputes `x - mean` and `(x - mean) rstd` from the input, which is in memory anyway,
/// instead of reading two more tensors of the input's size.
#[test]
fn a_layernorm_writes_its_output_and_row_statistics_only() {
    let src = concat!(
        "import \"std/nn.muse\"\nmodel t {\n  input x: f32[B, 16, 64]\n  h = layernorm(x) as norm\n",
        "  y = linear(h, 32) as out\n  loss l = mean(y * y)\n}\n"
    );
    let (d, plan) = training_plan("ln.muse", src);
    let x = d.graph.inputs.iter().find(|i| i.0 == "x").expect("input x").1;
    let full = d.graph.ty(x).shape.clone();
    let norm = plan.groups.iter().find(|g| g.kind == GroupKind::Row).expect("the layernorm's row kernel");
    let written_full: Vec<_> = norm.outputs.iter().filter(|o| d.graph.ty(**o).shape == full).collect();
    assert_eq!(written_full.len(), 1, "only the output is written in full: {written_full:?}");
    assert!(norm.outputs.len() >= 2, "the rows' statistics are written too");
}

/// A residual stream summed from several branches is written once and read by the next
/// layernorm, not summed again from every branch in each layernorm after it (the last one
/// reads the stream and the last branch: its sum has no other reader).
#[test]
fn a_residual_sum_is_written_not_resummed_in_every_norm() {
    let (m, p) = program(
        concat!(
            "  h1 = x + linear(layernorm(x) as n1, 64) as l1\n",
            "  h2 = h1 + linear(layernorm(h1) as n2, 64) as l2\n",
            "  h3 = h2 + linear(layernorm(h2) as n3, 64) as l3\n",
            "  y = layernorm(h3) as n4"
        ),
        "  input x: f32[B, 16, 64]",
    );
    let elems = |n: NodeIndex| m.graph.ty(n).shape.numel().and_then(|d| d.eval(&|_| Some(8)));
    let full = elems(m.graph.outputs[0].1);
    for s in &p.steps {
        let kernel::Step::Kernel(k) = s else { continue };
        let full_reads = s.reads().into_iter().filter(|r| elems(*r) == full).count();
        assert!(full_reads <= 2, "{} reads {full_reads} tensors of the stream's size", k.kernel.name);
    }
}

/// A softmax's exp, which its backward needs, is written rather than recomputed there: a
/// transcendental per element costs more than reading it back.
#[test]
fn a_softmaxs_exp_is_written_for_its_backward() {
    let src = concat!(
        "import \"std/nn.muse\"\nmodel t {\n  input x: f32[B, 64, 16]\n  input r: f32[B, 64, 32]\n",
        "  param v: [16, 32] ~ normal(0.02)\n  param w: [16] ~ ones\n",
        // The product and the tanh after it keep the backward's row kernel apart (a linear
        // loss would fold the softmax's backward into its forward kernel).
        "  loss l = sum(tanh(softmax(x * w) @ v) * r)\n}\n"
    );
    let (d, plan) = training_plan("softmax.muse", src);
    let exp_written =
        plan.materialized.keys().any(|n| matches!(d.graph.node(*n).op, Op::Unary(u) if u.name() == "exp"));
    assert!(exp_written, "the exp is written once, not recomputed by the backward");
}
