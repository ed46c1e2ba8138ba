//! Human-readable text and Graphviz DOT renderings of a graph.

use super::graph::Graph;
use crate::source::SourceMap;
use petgraph::stable_graph::NodeIndex;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

fn numbering(g: &Graph) -> (Vec<NodeIndex>, HashMap<NodeIndex, usize>) {
    let order = g.topo_order();
    let ids = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    (order, ids)
}

/// The graph as text, one node a line in dependency order:
/// `%7 = matmul %5, %6 : f32[B*64, 512]  # layers.0.mixer.in_proj  (model.muse:12:9)`.
pub fn to_text(g: &Graph, sources: Option<&SourceMap>) -> String {
    let (order, ids) = numbering(g);
    let mut out = String::new();
    let name_of = |n: NodeIndex, list: &[(String, NodeIndex)]| {
        list.iter().filter(|(_, m)| *m == n).map(|(s, _)| s.clone()).collect::<Vec<_>>()
    };
    for n in order {
        let node = g.node(n);
        let ops: Vec<String> = g.operands(n).iter().map(|o| format!("%{}", ids[o])).collect();
        let _ = write!(out, "%{} = {}", ids[&n], node.op);
        if !ops.is_empty() {
            let _ = write!(out, " {}", ops.join(", "));
        }
        let _ = write!(out, " : {}", node.ty);
        if !node.prov.path.is_empty() || node.prov.grad {
            let _ = write!(out, "  #{} {}", if node.prov.grad { " grad of" } else { "" }, node.prov.path);
        }
        if let (Some(sm), Some(loc)) = (sources, node.prov.loc) {
            let _ = write!(out, "  ({})", sm.describe(loc));
        }
        for o in name_of(n, &g.outputs) {
            let _ = write!(out, "  -> output {o}");
        }
        for o in name_of(n, &g.losses) {
            let _ = write!(out, "  -> loss {o}");
        }
        out.push('\n');
    }
    out
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The graph in Graphviz DOT, with nodes grouped into nested clusters by block path.
pub fn to_dot(g: &Graph, title: &str) -> String {
    let (order, ids) = numbering(g);
    // path -> nodes directly in it
    let mut groups: BTreeMap<String, Vec<NodeIndex>> = BTreeMap::new();
    for &n in &order {
        groups.entry(g.node(n).prov.path.clone()).or_default().push(n);
    }
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(title));
    let _ = writeln!(out, "  rankdir=TB; node [shape=box, fontname=\"monospace\", fontsize=10];");
    // Emit clusters as a tree: open/close as the sorted path list is walked.
    let mut open: Vec<String> = Vec::new();
    let mut cluster_id = 0;
    for (path, nodes) in &groups {
        let segs: Vec<&str> = if path.is_empty() { vec![] } else { path.split('.').collect() };
        let common = open.iter().zip(&segs).take_while(|(a, b)| a == *b).count();
        while open.len() > common {
            open.pop();
            let _ = writeln!(out, "{}}}", "  ".repeat(open.len() + 1));
        }
        for s in &segs[common..] {
            cluster_id += 1;
            let _ = writeln!(
                out,
                "{}subgraph cluster_{} {{ label=\"{}\"; style=rounded;",
                "  ".repeat(open.len() + 1),
                cluster_id,
                dot_escape(s)
            );
            open.push(s.to_string());
        }
        for n in nodes {
            let node = g.node(*n);
            let _ = writeln!(
                out,
                "{}n{} [label=\"%{} {}\\n{}\"];",
                "  ".repeat(open.len() + 1),
                ids[n],
                ids[n],
                dot_escape(&node.op.to_string()),
                node.ty
            );
        }
    }
    while open.pop().is_some() {
        let _ = writeln!(out, "{}}}", "  ".repeat(open.len() + 1));
    }
    for &n in &order {
        for (i, o) in g.operands(n).iter().enumerate() {
            let _ = writeln!(out, "  n{} -> n{} [label=\"{}\", fontsize=8];", ids[o], ids[&n], i);
        }
    }
    for (name, n) in g.outputs.iter().chain(&g.losses) {
        let _ = writeln!(
            out,
            "  \"out_{0}\" [label=\"{0}\", shape=ellipse]; n{1} -> \"out_{0}\";",
            dot_escape(name),
            ids[n]
        );
    }
    out.push_str("}\n");
    out
}
