//! The graph IR: primitive ops over typed tensors in a `petgraph::StableGraph`.

pub mod graph;
pub mod infer;
pub mod op;
pub mod print;
pub mod types;

pub use graph::{Graph, Node, ParamInfo, Provenance};
pub use infer::{broadcast_shapes, TypeError, TypeErrorKind};
pub use op::{BinaryOp, Op, RandomDist, ReduceOp, UnaryOp};
pub use petgraph::stable_graph::NodeIndex;
pub use types::{DType, Dim, Shape, TensorType};
