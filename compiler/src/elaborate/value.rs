//! Compile-time values of the elaborator: numbers, sizes, strings, lists, and tensors
//! (nodes of the graph being built).

use crate::ir::{DType, Dim};
use petgraph::stable_graph::NodeIndex;
use std::fmt;

/// A tensor value: a node of the graph with the given generation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorRef {
    /// Which graph (the model's, or a parameter initialiser's) the node belongs to.
    pub graph: u32,
    /// The node.
    pub node: NodeIndex,
}

/// A value during elaboration.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `none`.
    None,
    /// A compile-time integer.
    Int(i64),
    /// A compile-time float.
    Float(f64),
    /// A compile-time bool.
    Bool(bool),
    /// A string.
    Str(String),
    /// A symbolic size such as `B` (known sizes are `Int`).
    Dim(Dim),
    /// An element type (`f32`, `i32`, `bool`).
    DType(DType),
    /// `[a, b, ...]`.
    List(Vec<Value>),
    /// Several results of a block.
    Tuple(Vec<Value>),
    /// A tensor in the graph.
    Tensor(TensorRef),
}

impl Value {
    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "none",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a bool",
            Value::Str(_) => "a string",
            Value::Dim(_) => "a symbolic size",
            Value::DType(_) => "an element type",
            Value::List(_) => "a list",
            Value::Tuple(_) => "a tuple",
            Value::Tensor(_) => "a tensor",
        }
    }
    /// A size as a value: known sizes become `Int`.
    pub fn from_dim(d: Dim) -> Value {
        match d.as_known() {
            Some(n) => Value::Int(n),
            None => Value::Dim(d),
        }
    }
    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    /// Whether the value is a compile-time number.
    pub fn is_number(&self) -> bool {
        matches!(self, Value::Int(_) | Value::Float(_))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => write!(f, "none"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Dim(d) => write!(f, "{d}"),
            Value::DType(d) => write!(f, "{d}"),
            Value::List(v) | Value::Tuple(v) => {
                let (o, c) = if matches!(self, Value::List(_)) { ("[", "]") } else { ("(", ")") };
                write!(f, "{o}")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "{c}")
            }
            Value::Tensor(t) => write!(f, "tensor %{}", t.node.index()),
        }
    }
}
