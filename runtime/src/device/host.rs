//! The optimizer of devices whose memory is the host's (the CPU backend, the interpreter):
//! AdamW, clipping norms, accumulation and the weight average over host slices, in
//! parallel over fixed chunks so that a step is bit-for-bit the same whatever the threads
//! (resume depends on it). Its AdamW is [`crate::optim::step`], the oracle of every
//! generated optimizer.

use super::{AdamStep, Grads, Optimizer, Slot};
use crate::dist::{self, DistError, Reduction};
use crate::optim::{self, AdamState};
use muse_compiler::ir::NodeIndex;
use rayon::prelude::*;
use std::borrow::Cow;

/// Elements per unit of parallel work.
const CHUNK: usize = 1 << 16;

/// Buffers of a host program that an optimizer updates in place.
pub trait HostBuffers {
    /// Each pair's parameter buffer and the gradient the last execution left, in order.
    /// A gradient that is itself a parameter's buffer comes as a copy.
    fn params_and_grads(&mut self, pairs: &[(String, NodeIndex)]) -> Vec<(&mut [f32], Cow<'_, [f32]>)>;
}

/// Optimizer state kept in host memory beside a program's parameters.
#[derive(Clone, Debug, Default)]
pub struct HostState {
    /// The (parameter, gradient) pairs, in optimizer order.
    pub pairs: Vec<(String, NodeIndex)>,
    /// AdamW's moments (its step count is the caller's).
    pub adam: AdamState,
    /// Gradient sums over micro-batches (allocated on first use).
    acc: Vec<Vec<f32>>,
    /// The weight average, when one runs.
    ema: Option<Vec<Vec<f32>>>,
}

impl HostState {
    /// Zero state for `pairs` whose parameters have these sizes.
    pub fn new(pairs: &[(String, NodeIndex)], sizes: &[usize]) -> HostState {
        HostState { pairs: pairs.to_vec(), adam: AdamState::new(sizes), acc: Vec::new(), ema: None }
    }
}

/// The host optimizer over one program's buffers.
pub struct HostStep<'a, B: HostBuffers + ?Sized> {
    /// The state.
    pub state: &'a mut HostState,
    /// The program's buffers.
    pub buffers: &'a mut B,
}

/// Runs `f` over chunk-sized pieces of paired slices in parallel.
fn chunked<T: Send, U: Sync>(work: Vec<(&mut [T], &[U])>, f: impl Fn(&mut [T], &[U]) + Sync) {
    let pieces: Vec<(&mut [T], &[U])> =
        work.into_iter().flat_map(|(a, b)| a.chunks_mut(CHUNK).zip(b.chunks(CHUNK))).collect();
    pieces.into_par_iter().for_each(|(a, b)| f(a, b));
}

impl<B: HostBuffers + ?Sized> Optimizer for HostStep<'_, B> {
    fn accumulate(&mut self, first: bool) {
        let pg = self.buffers.params_and_grads(&self.state.pairs);
        if first || self.state.acc.len() != pg.len() {
            self.state.acc = pg.iter().map(|(_, g)| g.to_vec()).collect();
            return;
        }
        let work: Vec<(&mut [f32], &[f32])> =
            self.state.acc.iter_mut().zip(&pg).map(|(a, (_, g))| (a.as_mut_slice(), &**g)).collect();
        chunked(work, |a, g| a.iter_mut().zip(g).for_each(|(a, g)| *a += g));
    }

    fn gradient_norm(&mut self, grads: Grads) -> f64 {
        match grads {
            Grads::Accumulated => optim::global_norm(&self.state.acc.iter().map(Vec::as_slice).collect::<Vec<_>>()),
            Grads::Pass => {
                let pg = self.buffers.params_and_grads(&self.state.pairs);
                optim::global_norm(&pg.iter().map(|(_, g)| &**g).collect::<Vec<_>>())
            }
        }
    }

    fn combine_gradients(&mut self, grads: Grads, reduce: &Reduction) -> Result<Grads, DistError> {
        // The last pass's gradients are borrowed from the buffers: combined in the
        // accumulators instead.
        if grads == Grads::Pass || self.state.acc.is_empty() {
            self.accumulate(true);
        }
        let mut flat: Vec<f32> = self.state.acc.iter().flatten().copied().collect();
        dist::sum_host(&mut flat, reduce)?;
        let mut at = 0;
        for a in &mut self.state.acc {
            let len = a.len();
            a.copy_from_slice(&flat[at..at + len]);
            at += len;
        }
        Ok(Grads::Accumulated)
    }

    fn adamw(&mut self, step: &AdamStep, grads: Grads) {
        let (mut params, direct): (Vec<&mut [f32]>, Vec<Cow<[f32]>>) =
            self.buffers.params_and_grads(&self.state.pairs).into_iter().unzip();
        let g: Vec<&[f32]> = match grads {
            Grads::Pass => direct.iter().map(|g| &**g).collect(),
            Grads::Accumulated => self.state.acc.iter().map(Vec::as_slice).collect(),
        };
        self.state.adam.step = step.t - 1;
        optim::step(&step.cfg, step.lr, &mut self.state.adam, &mut params, &g, step.grad_scale);
    }

    fn start_ema(&mut self) {
        let pg = self.buffers.params_and_grads(&self.state.pairs);
        self.state.ema = Some(pg.iter().map(|(p, _)| p.to_vec()).collect());
    }

    fn update_ema(&mut self, decay: f64) {
        let Some(ema) = self.state.ema.as_mut() else { return };
        let pg = self.buffers.params_and_grads(&self.state.pairs);
        let work: Vec<(&mut [f32], &[f32])> =
            ema.iter_mut().zip(&pg).map(|(e, (p, _))| (e.as_mut_slice(), &**p)).collect();
        chunked(work, |e, p| {
            for (e, &p) in e.iter_mut().zip(p) {
                *e = (decay * *e as f64 + (1.0 - decay) * p as f64) as f32;
            }
        });
    }

    fn has_ema(&self) -> bool {
        self.state.ema.is_some()
    }

    fn read_state(&mut self, slot: Slot, k: usize) -> Option<Vec<f32>> {
        match slot {
            Slot::M => self.state.adam.m.get(k).cloned(),
            Slot::V => self.state.adam.v.get(k).cloned(),
            Slot::Ema => self.state.ema.as_ref()?.get(k).cloned(),
        }
    }

    fn write_state(&mut self, slot: Slot, k: usize, values: &[f32]) -> bool {
        let target = match slot {
            Slot::M => self.state.adam.m.get_mut(k),
            Slot::V => self.state.adam.v.get_mut(k),
            Slot::Ema => self.state.ema.as_mut().and_then(|e| e.get_mut(k)),
        };
        match target {
            Some(t) if t.len() == values.len() => {
                t.copy_from_slice(values);
                true
            }
            _ => false,
        }
    }
}
