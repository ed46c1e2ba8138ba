//! Kernels: the typed kernel IR, the lowering of fusion groups to it, and the products'
//! epilogues.

pub mod epilogue;
pub mod ir;
pub mod lower;

pub use ir::{Access, Body, BufParam, Expr, ExprId, IndexOp, KType, Kernel};
pub use lower::{lower, KernelProgram, LoweredKernel, MatMulStep, Step};
