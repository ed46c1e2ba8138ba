//! The graph IR: a `StableGraph` of primitive ops with types and provenance; edges are
//! operands, weighted by their position.

use super::infer::{infer, TypeError};
use super::op::Op;
use super::types::TensorType;
use crate::source::Loc;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// Where a node came from: the `.muse` text and the block path of the call that made it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Provenance {
    /// Source location, if the node was written by a user (not made by a pass).
    pub loc: Option<Loc>,
    /// Dotted block path (`layers.3.mixer`), empty at model level.
    pub path: String,
    /// Made by autodiff: part of the backward pass of the node at `loc`.
    pub grad: bool,
}

/// A node: an op, its result type and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Result type.
    pub ty: TensorType,
    /// Origin.
    pub prov: Provenance,
}

/// A trainable parameter: its name, node and initialiser.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// Full dotted name, as in a safetensors file.
    pub name: String,
    /// Its `param` node in the graph.
    pub node: NodeIndex,
    /// Type (always f32).
    pub ty: TensorType,
    /// A graph without inputs whose output `init` is the initial value.
    pub init: Graph,
    /// Where it was declared.
    pub loc: Loc,
}

/// A dataflow graph of primitive ops, with its named inputs, parameters, outputs and losses.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The nodes; each edge weight is the operand position at the target.
    pub g: StableGraph<Node, u32>,
    /// Model inputs by name.
    pub inputs: Vec<(String, NodeIndex)>,
    /// Trainable parameters in declaration order.
    pub params: Vec<ParamInfo>,
    /// Named outputs.
    pub outputs: Vec<(String, NodeIndex)>,
    /// Named scalar losses.
    pub losses: Vec<(String, NodeIndex)>,
}

impl Graph {
    /// Adds a node without operands (input, param, const, iota, random) of the given type.
    pub fn leaf(&mut self, op: Op, ty: TensorType, prov: Provenance) -> NodeIndex {
        debug_assert!(op.is_leaf());
        self.g.add_node(Node { op, ty, prov })
    }

    /// Adds `op` over `operands`, inferring and checking its type.
    pub fn apply(&mut self, op: Op, operands: &[NodeIndex], prov: Provenance) -> Result<NodeIndex, TypeError> {
        let tys: Vec<&TensorType> = operands.iter().map(|&n| &self.g[n].ty).collect();
        let ty = infer(&op, &tys)?;
        let n = self.g.add_node(Node { op, ty, prov });
        for (i, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, n, i as u32);
        }
        Ok(n)
    }

    /// The node with this index.
    pub fn node(&self, n: NodeIndex) -> &Node {
        &self.g[n]
    }

    /// Type of a node's result.
    pub fn ty(&self, n: NodeIndex) -> &TensorType {
        &self.g[n].ty
    }

    /// Operands of a node, in order.
    pub fn operands(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut es: Vec<(u32, NodeIndex)> =
            self.g.edges_directed(n, Direction::Incoming).map(|e| (*e.weight(), e.source())).collect();
        es.sort_by_key(|e| e.0);
        es.into_iter().map(|e| e.1).collect()
    }

    /// Nodes that use `n` as an operand (each once).
    pub fn users(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut u: Vec<NodeIndex> = self.g.neighbors_directed(n, Direction::Outgoing).collect();
        u.sort();
        u.dedup();
        u
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// Nodes in an order where every operand comes before its users; among ready nodes the
    /// oldest comes first, so elaborated graphs print in source order.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, HashMap};
        let mut pending: HashMap<NodeIndex, usize> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for n in self.g.node_indices() {
            let k = self.g.edges_directed(n, Direction::Incoming).count();
            if k == 0 {
                ready.push(Reverse(n));
            } else {
                pending.insert(n, k);
            }
        }
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let c = pending.get_mut(&e.target()).expect("a user has pending operands");
                *c -= 1;
                if *c == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        assert_eq!(order.len(), self.g.node_count(), "the graph IR is acyclic by construction");
        order
    }

    /// Total number of trainable scalars (parameters have known shapes).
    pub fn param_count(&self) -> i64 {
        self.params.iter().map(|p| p.ty.shape.numel().and_then(|d| d.as_known()).unwrap_or(0)).sum()
    }

    /// Removes nodes that no output, loss or parameter depends on; returns how many.
    pub fn prune(&mut self) -> usize {
        let mut live = std::collections::HashSet::new();
        let mut stack: Vec<NodeIndex> = self
            .outputs
            .iter()
            .chain(&self.losses)
            .chain(&self.inputs)
            .map(|(_, n)| *n)
            .chain(self.params.iter().map(|p| p.node))
            .collect();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.g.neighbors_directed(n, Direction::Incoming));
            }
        }
        let dead: Vec<NodeIndex> = self.g.node_indices().filter(|n| !live.contains(n)).collect();
        for n in &dead {
            self.g.remove_node(*n);
        }
        dead.len()
    }
}
