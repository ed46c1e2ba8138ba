//! Kernels: the typed kernel IR, the lowering of fusion groups to it, the products'
//! epilogues, and the optimizer's kernels.

pub mod analysis;
pub mod epilogue;
pub mod ir;
pub mod lower;
pub mod optim;

pub use ir::{Access, Body, BufParam, Expr, ExprId, IndexOp, KType, Kernel};
pub use lower::{lower, KernelProgram, LoweredKernel, MatMulStep, Step};
