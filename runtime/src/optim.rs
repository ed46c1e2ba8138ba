//! AdamW over every parameter at once, gradient clipping by global norm, and the learning
//! rate schedule (linear warmup, cosine decay). The update is PyTorch's `torch.optim.AdamW`
//! step for step, so a run can be compared with (and ported from) a PyTorch one.
//!
//! All parameters are updated in one parallel pass over fixed-size chunks; the global norm
//! sums fixed chunks in a fixed order, so a step is bit-for-bit reproducible whatever the
//! number of threads (resume depends on it).

use rayon::prelude::*;

/// Elements per unit of parallel work (and per partial sum of the global norm).
const CHUNK: usize = 1 << 14;

/// AdamW's settings. Defaults: the Muse paper's (lr 1e-4, betas 0.9/0.96, weight decay
/// 0.045), eps 1e-8 and clipping at global norm 1.0.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    /// Peak learning rate (the schedule scales it).
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (multiplied by the learning rate, as in PyTorch).
    pub weight_decay: f64,
    /// Gradients are scaled down to this global norm when above it (none: no clipping).
    pub clip_norm: Option<f64>,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 1e-4, beta1: 0.9, beta2: 0.96, eps: 1e-8, weight_decay: 0.045, clip_norm: Some(1.0) }
    }
}

/// The moments of every parameter and the number of steps taken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamState {
    /// Steps taken so far.
    pub step: u64,
    /// First moments, one per parameter (in the order the parameters are given).
    pub m: Vec<Vec<f32>>,
    /// Second moments.
    pub v: Vec<Vec<f32>>,
}

impl AdamState {
    /// Zero moments for parameters of these sizes.
    pub fn new(sizes: &[usize]) -> AdamState {
        AdamState {
            step: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }
}

/// Linear warmup to the peak, then cosine decay to `min_ratio` of it at `total` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Warmup steps.
    pub warmup: u64,
    /// Steps of the whole run.
    pub total: u64,
    /// Final learning rate as a fraction of the peak.
    pub min_ratio: f64,
}

impl Schedule {
    /// The factor on the peak learning rate for step `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup {
            return (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let t = ((step - self.warmup) as f64 / span as f64).min(1.0);
        self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// The Euclidean norm of all gradients together, summed in f64 over fixed chunks in a
/// fixed order.
pub fn global_norm(grads: &[&[f32]]) -> f64 {
    let chunks: Vec<&[f32]> = grads.iter().flat_map(|g| g.chunks(CHUNK)).collect();
    let partial: Vec<f64> = chunks.par_iter().map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum()).collect();
    partial.iter().sum::<f64>().sqrt()
}

/// The factor clipping multiplies gradients by (PyTorch's `clip_grad_norm_`: max / (norm +
/// 1e-6), at most 1).
pub fn clip_factor(norm: f64, clip: Option<f64>) -> f64 {
    match clip {
        Some(max) => (max / (norm + 1e-6)).min(1.0),
        None => 1.0,
    }
}

/// One AdamW step over every (parameter, gradient) pair with learning rate `lr`; each
/// gradient is first multiplied by `grad_scale` (clipping, averaging of accumulated steps).
pub fn step(cfg: &AdamW, lr: f64, state: &mut AdamState, params: &mut [&mut [f32]], grads: &[&[f32]], grad_scale: f64) {
    assert_eq!(params.len(), grads.len());
    assert_eq!(params.len(), state.m.len(), "optimizer state made for these parameters");
    state.step += 1;
    let t = state.step as i32;
    let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
    let decay = (1.0 - lr * cfg.weight_decay) as f32;
    let step_size = (lr / (1.0 - cfg.beta1.powi(t))) as f32;
    let bc2_sqrt = (1.0 - cfg.beta2.powi(t)).sqrt() as f32;
    let (eps, scale) = (cfg.eps as f32, grad_scale as f32);
    let mut work = Vec::new();
    for (((p, g), m), v) in params.iter_mut().zip(grads).zip(state.m.iter_mut()).zip(state.v.iter_mut()) {
        assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len(), "sizes of one parameter agree");
        for (((p, g), m), v) in
            p.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).zip(m.chunks_mut(CHUNK)).zip(v.chunks_mut(CHUNK))
        {
            work.push((p, g, m, v));
        }
    }
    work.into_par_iter().for_each(|(p, g, m, v)| {
        for i in 0..p.len() {
            let g = g[i] * scale;
            p[i] *= decay;
            m[i] += (1.0 - b1) * (g - m[i]);
            v[i] = v[i] * b2 + (1.0 - b2) * g * g;
            p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
        }
    });
}
