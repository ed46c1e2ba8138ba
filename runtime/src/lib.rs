//! The muse runtime. It will hold the reference interpreter (the oracle every backend is
//! compared with), the CPU and CUDA backends, the memory planner, training, sampling, data
//! loading and checkpoints; see docs/design.md. Nothing is implemented here yet: the front
//! end (grammar, elaboration, graph IR) is in `muse-compiler`.
