//! The fusion inspection report: one row per kernel (what it fuses, where in the `.muse`
//! source it came from, bytes moved, FLOPs, launch shape) and why each value that crosses
//! between kernels is written to memory.

use crate::fusion::{CutReason, GroupKind};
use crate::ir::{Graph, NodeIndex, Op};
use crate::kernel::{KernelProgram, Step};
use crate::source::SourceMap;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// One row of the kernel table.
#[derive(Clone, Debug)]
pub struct KernelRow {
    /// Position in the program.
    pub id: usize,
    /// Kernel name (`k12`) or `gemm`.
    pub name: String,
    /// Kind (pointwise, reduce, matmul, scan, scatter_add).
    pub kind: String,
    /// Op names computed in the kernel, with counts.
    pub ops: BTreeMap<&'static str, usize>,
    /// `file:line` of every `.muse` line the kernel's nodes came from.
    pub lines: BTreeSet<String>,
    /// Bytes read from buffers (each buffer once) at batch size `batch`.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Floating-point operations (elementwise ops count one per element; matmul 2MNK).
    pub flops: u64,
    /// Lanes x inner steps.
    pub launch: String,
    /// Whether the kernel computes part of the backward pass.
    pub backward: bool,
    /// The materialized values it reads, with the reason each was written to memory.
    pub inputs: Vec<(NodeIndex, CutReason)>,
}

fn numel(g: &Graph, n: NodeIndex, batch: i64) -> u64 {
    g.ty(n).shape.numel().and_then(|d| d.eval(&|_| Some(batch))).unwrap_or(0).max(0) as u64
}

fn bytes(g: &Graph, n: NodeIndex, batch: i64) -> u64 {
    numel(g, n, batch) * g.ty(n).dtype.size_bytes() as u64
}

/// The kernel table of a program at batch size `batch`.
pub fn rows(g: &Graph, p: &KernelProgram, sources: Option<&SourceMap>, batch: i64) -> Vec<KernelRow> {
    let mut out = Vec::new();
    for (id, step) in p.steps.iter().enumerate() {
        let (group, name, epilogue) = match step {
            Step::Kernel(k) => (&k.group, k.kernel.name.clone(), None),
            Step::MatMul(m) => match &m.epilogue {
                Some(e) => (&m.group, format!("gemm+{}", e.kernel.name), Some(&e.group)),
                None => (&m.group, "gemm".to_string(), None),
            },
        };
        let mut ops = BTreeMap::new();
        let mut lines = BTreeSet::new();
        let mut flops = 0u64;
        let mut all: Vec<NodeIndex> = [Some(group), epilogue]
            .into_iter()
            .flatten()
            .flat_map(|g| g.inlined.iter().chain(&g.outputs).copied())
            .collect();
        all.sort();
        all.dedup();
        for &n in &all {
            let node = g.node(n);
            if !node.op.is_view() && !node.op.is_leaf() {
                *ops.entry(node.op.name()).or_insert(0) += 1;
            }
            flops += match &node.op {
                Op::MatMul => {
                    // The inner length may be symbolic (a weight gradient sums over the batch).
                    let s = &g.ty(g.operands(n)[0]).shape;
                    let k = s.0[s.rank() - 1].eval(&|_| Some(batch)).unwrap_or(0).max(0) as u64;
                    2 * numel(g, n, batch) * k
                }
                Op::Unary(_) | Op::Binary(_) | Op::Select => numel(g, n, batch),
                Op::Reduce { .. } | Op::Scan { .. } | Op::ScatterAdd { .. } => {
                    numel(g, g.operands(n)[0], batch) * if matches!(node.op, Op::Scan { .. }) { 2 } else { 1 }
                }
                _ => 0,
            };
            if let (Some(sm), Some(loc)) = (sources, node.prov.loc) {
                let (l, _) = sm.line_col(loc);
                lines.insert(format!("{}:{l}", sm.get(loc.file).name));
            }
        }
        // An epilogue reads the product's tiles from cache, not memory.
        let from_memory = |n: &NodeIndex| !matches!(step, Step::MatMul(m) if m.out == *n && m.epilogue.is_some());
        let bytes_read = step.reads().iter().filter(|n| from_memory(n)).map(|&n| bytes(g, n, batch)).sum();
        let launch = match step {
            Step::MatMul(m) => format!("gemm {}", g.ty(m.out).shape),
            Step::Kernel(k) => match k.kernel.launch_shape(batch) {
                (lanes, 1, 1) => format!("{lanes} lanes"),
                (lanes, inner, 1) => format!("{lanes} x {inner}"),
                (lanes, inner, states) => format!("{lanes} x {inner} x {states}"),
            },
        };
        let kind = match group.kind {
            GroupKind::Pointwise => "pointwise",
            GroupKind::Row => "row",
            GroupKind::MatMul => "matmul",
            GroupKind::Scan => "scan",
            GroupKind::ScatterAdd => "scatter_add",
        };
        let inputs = step.reads().iter().filter(|n| from_memory(n)).map(|n| (*n, p.materialized[n])).collect();
        out.push(KernelRow {
            id,
            name,
            kind: kind.into(),
            ops,
            lines,
            bytes_read,
            bytes_written: step.writes().iter().map(|&o| bytes(g, o, batch)).sum(),
            flops,
            launch,
            backward: g.node(group.root).prov.grad,
            inputs,
        });
    }
    out
}

/// The kernel table as text, with a summary of why values were written to memory.
pub fn table(rows: &[KernelRow], p: &KernelProgram) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>4}  {:<6} {:<11} {:>4}  {:>10} {:>10} {:>11}  {:<16} {:<44} source",
        "id", "kernel", "kind", "pass", "read B", "written B", "FLOPs", "launch", "ops"
    );
    for r in rows {
        let ops: Vec<String> =
            r.ops.iter().map(|(k, v)| if *v > 1 { format!("{k}x{v}") } else { k.to_string() }).collect();
        let mut ops = ops.join(" ");
        if ops.len() > 44 {
            ops.truncate(41);
            ops.push_str("...");
        }
        let lines: Vec<&String> = r.lines.iter().take(3).collect();
        let more = if r.lines.len() > 3 { format!(" +{}", r.lines.len() - 3) } else { String::new() };
        let _ = writeln!(
            s,
            "{:>4}  {:<6} {:<11} {:>4}  {:>10} {:>10} {:>11}  {:<16} {:<44} {}{}",
            r.id,
            r.name,
            r.kind,
            if r.backward { "bwd" } else { "fwd" },
            r.bytes_read,
            r.bytes_written,
            r.flops,
            r.launch,
            ops,
            lines.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(", "),
            more
        );
    }
    let mut reasons: BTreeMap<CutReason, usize> = BTreeMap::new();
    for r in p.materialized.values() {
        *reasons.entry(*r).or_default() += 1;
    }
    let _ = writeln!(s, "\n{} kernels; values written to memory, by reason:", rows.len());
    for (r, k) in reasons {
        let _ = writeln!(s, "  {k:>6}  {r}");
    }
    s
}

fn js_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Keeps `</script>` and `<!--` out of the embedded data.
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One self-contained HTML page: the kernels drawn as a graph (one coloured box per kernel,
/// arrows for the buffers between them, layered by dependency depth); clicking a kernel shows
/// its code as `code` gives it (the device's generated source) and the `.muse` lines it
/// came from.
pub fn html(
    title: &str,
    p: &KernelProgram,
    rows: &[KernelRow],
    sources: &SourceMap,
    code: &dyn Fn(&crate::kernel::Step) -> String,
) -> String {
    // Which kernel writes each value.
    let mut writer: std::collections::HashMap<NodeIndex, usize> = std::collections::HashMap::new();
    for (i, s) in p.steps.iter().enumerate() {
        for o in s.writes() {
            writer.insert(o, i);
        }
    }
    let mut edges: Vec<(usize, usize, String)> = Vec::new();
    for r in rows {
        for (n, reason) in &r.inputs {
            if let Some(&w) = writer.get(n) {
                edges.push((w, r.id, reason.describe().to_string()));
            }
        }
    }
    // Layers by longest path from the sources.
    let mut depth = vec![0usize; rows.len()];
    for r in rows {
        for (w, to, _) in edges.iter().filter(|e| e.1 == r.id) {
            depth[*to] = depth[*to].max(depth[*w] + 1);
        }
    }
    let mut in_layer: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pos = vec![(0usize, 0usize); rows.len()];
    for r in rows {
        let k = in_layer.entry(depth[r.id]).or_insert(0);
        pos[r.id] = (*k, depth[r.id]);
        *k += 1;
    }
    let (bw, bh, gx, gy) = (190usize, 46usize, 30usize, 44usize);
    let width = in_layer.values().max().copied().unwrap_or(1) * (bw + gx) + gx;
    let height = (in_layer.len().max(1)) * (bh + gy) + gy;
    let xy = |id: usize| (gx + pos[id].0 * (bw + gx), gy + pos[id].1 * (bh + gy));
    let mut svg =
        format!("<svg id=\"graph\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">\n");
    svg.push_str("<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#888\"/></marker></defs>\n");
    for (w, to, reason) in &edges {
        let (x1, y1) = xy(*w);
        let (x2, y2) = xy(*to);
        svg.push_str(&format!(
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"edge\" marker-end=\"url(#arrow)\"><title>{}</title></line>\n",
            x1 + bw / 2,
            y1 + bh,
            x2 + bw / 2,
            y2,
            html_escape(reason)
        ));
    }
    for r in rows {
        let (x, y) = xy(r.id);
        let ops: Vec<String> = r.ops.keys().map(|k| k.to_string()).collect();
        let mut label = ops.join(" ");
        if label.len() > 26 {
            label.truncate(24);
            label.push_str("..");
        }
        svg.push_str(&format!(
            "<g class=\"kernel {kind}{bwd}\" data-id=\"{id}\" transform=\"translate({x},{y})\"><rect width=\"{bw}\" height=\"{bh}\" rx=\"6\"/><text x=\"8\" y=\"18\">{id}: {name} ({kind})</text><text x=\"8\" y=\"36\" class=\"ops\">{ops}</text></g>\n",
            kind = r.kind,
            bwd = if r.backward { " bwd" } else { "" },
            id = r.id,
            name = html_escape(&r.name),
            ops = html_escape(&label),
        ));
    }
    svg.push_str("</svg>\n");

    // Per-kernel details as JSON.
    let mut data = String::from("[");
    for (i, r) in rows.iter().enumerate() {
        let code = code(&p.steps[r.id]);
        let mut lines = Vec::new();
        for l in &r.lines {
            let (file, no) = l.rsplit_once(':').unwrap_or((l, "0"));
            let no: usize = no.parse().unwrap_or(0);
            let src = find_line(sources, file, no).unwrap_or_default();
            lines.push(format!("{}: {}", l, src.trim()));
        }
        let inputs: Vec<String> =
            r.inputs.iter().map(|(n, why)| format!("%{} ({})", n.index(), why.describe())).collect();
        if i > 0 {
            data.push(',');
        }
        data.push_str(&format!(
            "{{\"id\":{},\"name\":{},\"kind\":{},\"backward\":{},\"launch\":{},\"read\":{},\"written\":{},\"flops\":{},\"ops\":{},\"lines\":[{}],\"inputs\":[{}],\"code\":{}}}",
            r.id,
            js_escape(&r.name),
            js_escape(&r.kind),
            r.backward,
            js_escape(&r.launch),
            r.bytes_read,
            r.bytes_written,
            r.flops,
            js_escape(&r.ops.iter().map(|(k, v)| format!("{k}x{v}")).collect::<Vec<_>>().join(" ")),
            lines.iter().map(|l| js_escape(l)).collect::<Vec<_>>().join(","),
            inputs.iter().map(|l| js_escape(l)).collect::<Vec<_>>().join(","),
            js_escape(&code)
        ));
    }
    data.push(']');
    let summary = table(rows, p);
    let reasons = summary.lines().skip_while(|l| !l.contains("kernels;")).collect::<Vec<_>>().join("\n");
    format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>muse inspect: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 0; display: flex; height: 100vh; }}
#left {{ flex: 3; overflow: auto; border-right: 1px solid #ccc; }}
#right {{ flex: 2; overflow: auto; padding: 12px; }}
.kernel rect {{ stroke: #333; stroke-width: 1; cursor: pointer; }}
.kernel text {{ font-size: 11px; pointer-events: none; font-family: monospace; }}
.kernel .ops {{ fill: #333; }}
.kernel.bwd rect {{ stroke-dasharray: 4 2; }}
.kernel.selected rect {{ stroke: #d00; stroke-width: 3; }}
.pointwise rect {{ fill: #8ecae6; }} .row rect {{ fill: #ffb703; }} .scan rect {{ fill: #fb8500; }}
.matmul rect {{ fill: #90be6d; }} .scatter_add rect {{ fill: #b5e48c; }}
.edge {{ stroke: #888; stroke-width: 1; }}
pre {{ background: #f6f6f6; padding: 8px; font-size: 11px; white-space: pre; overflow: auto; }}
h1 {{ font-size: 16px; }} h2 {{ font-size: 14px; margin-bottom: 4px; }}
</style></head>
<body>
<div id="left">{svg}</div>
<div id="right"><h1>muse inspect: {title}</h1>
<p>{n} kernels. Click a kernel to see its code and the <code>.muse</code> lines it came from.
Solid borders: forward; dashed: backward. Arrows are buffers in memory.</p>
<pre id="summary">{reasons}</pre>
<div id="detail"><p>No kernel selected.</p></div></div>
<script id="kernels" type="application/json">{data}</script>
<script>
"use strict";
const kernels = JSON.parse(document.getElementById("kernels").textContent);
function esc(s) {{ const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }}
function show(id) {{
  const k = kernels[id];
  document.querySelectorAll(".kernel.selected").forEach(e => e.classList.remove("selected"));
  document.querySelector(`.kernel[data-id="${{id}}"]`).classList.add("selected");
  document.getElementById("detail").innerHTML =
    `<h2>${{k.id}}: ${{esc(k.name)}} (${{esc(k.kind)}}, ${{k.backward ? "backward" : "forward"}})</h2>` +
    `<p>launch ${{esc(k.launch)}}; reads ${{k.read}} B, writes ${{k.written}} B, ${{k.flops}} FLOPs</p>` +
    `<p>ops: ${{esc(k.ops)}}</p>` +
    `<h2>.muse lines</h2><pre class="lines">${{esc(k.lines.join("\n"))}}</pre>` +
    `<h2>reads (why in memory)</h2><pre>${{esc(k.inputs.join("\n"))}}</pre>` +
    `<h2>generated code</h2><pre class="code">${{esc(k.code)}}</pre>`;
}}
document.querySelectorAll(".kernel").forEach(e => e.addEventListener("click", () => show(+e.dataset.id)));
// Self-test for the browser check (tests/browser/inspect_html.sh): click every kernel.
if (location.hash === "#selftest") {{
  let ok = 0;
  document.querySelectorAll(".kernel").forEach(e => {{
    e.dispatchEvent(new MouseEvent("click", {{ bubbles: true }}));
    const code = document.querySelector("#detail .code");
    if (code && code.textContent.length > 0 && document.querySelector("#detail h2").textContent.startsWith(e.dataset.id + ":")) ok++;
  }});
  document.title = `selftest ${{ok}}/${{kernels.length}}`;
  document.body.setAttribute("data-selftest", `${{ok}}/${{kernels.length}}`);
}}
</script>
</body></html>
"##,
        title = html_escape(title),
        svg = svg,
        n = rows.len(),
        reasons = html_escape(&reasons),
        data = data,
    )
}

fn find_line(sources: &SourceMap, file: &str, line: usize) -> Option<String> {
    for i in 0.. {
        let id = crate::source::FileId(i);
        if i as usize >= sources.len() {
            return None;
        }
        let f = sources.get(id);
        if f.name == file {
            return f.text.lines().nth(line.saturating_sub(1)).map(str::to_string);
        }
    }
    None
}
