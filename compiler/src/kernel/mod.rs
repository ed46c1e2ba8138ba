//! Kernels: the typed kernel IR and the lowering of fusion groups to it.

pub mod ir;
pub mod lower;

pub use ir::{Access, Body, BufParam, Expr, ExprId, IndexOp, KType, Kernel};
pub use lower::{lower, KernelProgram, LoweredKernel, MatMulStep, Step};
