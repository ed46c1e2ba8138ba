//! The optimizer on the GPU: the kernels of `muse_compiler::kernel::optim` rendered to CUDA
//! and run in place over the trained stretch of the parameter arena, the gradient arena
//! and the optimizer's own arenas in device memory (moments, gradient sums, weight
//! average). One launch per verb whatever the number of parameters; only the gradient
//! norm's per-row partial sums come back to the host (summed there in f64, as the CPU
//! backend does, so both give the same norm).
//!
//! With bf16 storage the program's parameters and gradients are bf16; the optimizer keeps
//! f32 master weights (an update of 1e-4 relative is below bf16's resolution of 4e-3 and
//! would be lost), updates them from the bf16 gradients, and rounds them into the
//! program's arena after each update. Its state (moments, sums, average) is f32.

use super::gpu::{DevPtr, Gpu, GpuError};
use super::program::{at, esize, f32s, run_kernel, DevBuf, Resident, ELEM};
use crate::device::{AdamStep, Grads, Optimizer, Slot};
use crate::dist::{DistError, Reduction, Wire};
use muse_compiler::ir::DType;
use muse_compiler::kernel::{optim, Kernel};
use muse_compiler::render::cuda::{self, Storage};
use std::sync::Arc;

/// Rows of the gradient norm's partial sums (each summed in f32, the rows in f64).
const NORM_ROW: usize = 1024;

/// Each verb with the buffers (bit `i`: buffer `i`) it may be asked to read or write as
/// bf16: copies between f32 and bf16 both ways, sums and norms of bf16 gradients, AdamW
/// from bf16 gradients.
const VARIANTS: &[(&str, u64)] = &[
    ("opt_copy", 0),
    ("opt_copy", 0b01),
    ("opt_copy", 0b10),
    ("opt_accumulate", 0),
    ("opt_accumulate", 0b10),
    ("opt_sum_squares", 0),
    ("opt_sum_squares", 0b01),
    ("opt_adamw", 0),
    ("opt_adamw", 0b1000),
    ("opt_ema", 0),
];

/// The loaded optimizer kernels: each variant's function, kernel IR (which chooses its
/// launch) and storage.
pub(crate) struct Kernels<G: Gpu> {
    verbs: Vec<(G::Func, Kernel, Storage, &'static str, u64)>,
}

impl<G: Gpu> Kernels<G> {
    /// Renders, compiles (or finds in the cache) and loads the optimizer kernels.
    pub(crate) fn load(gpu: &G) -> Result<Kernels<G>, GpuError> {
        let all = optim::all();
        let variants: Vec<(Kernel, Storage, &'static str, u64)> = VARIANTS
            .iter()
            .map(|&(name, mask)| {
                let k = all.iter().find(|k| k.name == name).expect("optim::all has every verb");
                (Kernel { name: format!("{name}_m{mask}"), ..k.clone() }, Storage::Mask(mask), name, mask)
            })
            .collect();
        let each: Vec<(&Kernel, Storage)> = variants.iter().map(|(k, st, _, _)| (k, *st)).collect();
        let names: Vec<&str> = variants.iter().map(|(k, ..)| k.name.as_str()).collect();
        let funcs = gpu.load(&[cuda::render_program_each(&each)], &names)?;
        let verbs = funcs.into_iter().zip(variants).map(|(f, (k, st, name, mask))| (f, k, st, name, mask)).collect();
        Ok(Kernels { verbs })
    }

    /// Verb `name` with the buffers of `mask` in bf16.
    fn verb(&self, name: &str, mask: u64) -> (G::Func, &Kernel, Storage) {
        let v =
            self.verbs.iter().find(|v| v.3 == name && v.4 == mask).expect("every variant the verbs ask for is loaded");
        (v.0, &v.1, v.2)
    }
}

/// The optimizer's state in device memory, beside a binding's arenas.
pub(crate) struct State<G: Gpu> {
    gpu: Arc<G>,
    /// The trained parameters' lengths, in order (their offsets follow).
    lens: Vec<usize>,
    m: DevBuf<G>,
    v: DevBuf<G>,
    acc: Option<DevBuf<G>>,
    ema: Option<DevBuf<G>>,
    /// The gradient norm's partial sums.
    partial: DevBuf<G>,
    /// AdamW's scalars of the step.
    hyper: DevBuf<G>,
    /// f32 master weights of the trained parameters, when the program stores bf16.
    master: Option<DevBuf<G>>,
    kernels: Arc<Kernels<G>>,
    /// The gradients rounded to bf16 for the wire (f32 gradients, `--reduce-dtype bf16`).
    wire: Option<DevBuf<G>>,
    /// Stretches (gradients, offset, length) of reductions through `wire` still to be
    /// widened back into their f32 gradients.
    pending: Vec<(DevPtr, usize, usize)>,
    /// The first failure of a verb (the verbs return no errors; the next execution does).
    pub(crate) error: Option<GpuError>,
}

impl<G: Gpu> State<G> {
    /// Zero state for parameters of these lengths, beside `resident` (whose bf16 parameters,
    /// if so, become the f32 master weights).
    pub(crate) fn new(
        gpu: &Arc<G>,
        lens: Vec<usize>,
        kernels: Arc<Kernels<G>>,
        resident: &Resident<G>,
    ) -> Result<State<G>, GpuError> {
        let n: usize = lens.iter().sum();
        let mut state = State {
            m: DevBuf::zeroed(gpu, n * ELEM)?,
            v: DevBuf::zeroed(gpu, n * ELEM)?,
            partial: DevBuf::zeroed(gpu, (n / NORM_ROW + 1) * ELEM)?,
            hyper: DevBuf::zeroed(gpu, 8 * ELEM)?,
            acc: None,
            ema: None,
            master: None,
            gpu: gpu.clone(),
            lens,
            kernels,
            wire: None,
            pending: Vec::new(),
            error: None,
        };
        if resident.bf16 {
            let master = DevBuf::zeroed(gpu, n * ELEM)?;
            state.launch("opt_copy", 0b10, &[master.ptr, resident.param_arena], &[n as i64])?;
            state.master = Some(master);
        }
        Ok(state)
    }
    fn len(&self) -> usize {
        self.lens.iter().sum()
    }
    fn range(&self, k: usize) -> Option<(usize, usize)> {
        let off: usize = self.lens.get(..k)?.iter().sum();
        Some((off, *self.lens.get(k)?))
    }
    /// Launches verb `name` (the buffers of `mask` in bf16) over `bufs` at `sizes`.
    fn launch(&self, name: &str, mask: u64, bufs: &[DevPtr], sizes: &[i64]) -> Result<(), GpuError> {
        let (f, k, storage) = self.kernels.verb(name, mask);
        run_kernel(&*self.gpu, f, (k, storage), bufs, sizes, 0)
    }

    /// The `k`-th trained parameter's f32 master weights, when the program stores bf16.
    pub(crate) fn read_master(&self, k: usize) -> Result<Option<Vec<f32>>, GpuError> {
        let (Some(master), Some((off, len))) = (&self.master, self.range(k)) else { return Ok(None) };
        let mut bytes = vec![0u8; len * ELEM];
        self.gpu.download(at(master.ptr, off as i64, ELEM), &mut bytes)?;
        Ok(Some(f32s(&bytes)))
    }

    /// Overwrites the `k`-th trained parameter's master weights (none kept: nothing to do).
    pub(crate) fn write_master(&self, k: usize, values: &[f32]) -> Result<(), GpuError> {
        let (Some(master), Some((off, len))) = (&self.master, self.range(k)) else { return Ok(()) };
        if len != values.len() {
            return Err(GpuError(format!("parameter {k}: {} values for {len}", values.len())));
        }
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.gpu.upload(at(master.ptr, off as i64, ELEM), &bytes)
    }
    /// Starts the sum over the ranks of `r` of the `len` gradients at element `off` of `g`
    /// (bf16 when `bf16`): bf16 gradients travel as they are, f32 ones as f32 or rounded
    /// into the wire buffer when the wire is bf16 (widened back by
    /// [`State::finish_reductions`]). The kernels issued after it do not wait for it.
    pub(crate) fn reduce(
        &mut self,
        g: DevPtr,
        (off, len): (usize, usize),
        bf16: bool,
        r: &Reduction,
    ) -> Result<(), GpuError> {
        if len == 0 {
            return Ok(());
        }
        if bf16 || r.wire == Wire::F32 {
            let p = at(g, off as i64, esize(DType::F32, bf16));
            return self.gpu.all_reduce(r.ranks, p, len, bf16);
        }
        if self.wire.is_none() {
            self.wire = Some(DevBuf::zeroed(&self.gpu, self.len() * 2)?);
        }
        let w = at(self.wire.as_ref().expect("allocated above").ptr, off as i64, 2);
        self.launch("opt_copy", 0b01, &[w, at(g, off as i64, ELEM)], &[len as i64])?;
        self.gpu.all_reduce(r.ranks, w, len, true)?;
        self.pending.push((g, off, len));
        Ok(())
    }

    /// Makes the work from now on wait for every reduction started, and widens what
    /// travelled as bf16 back into the f32 gradients.
    pub(crate) fn finish_reductions(&mut self) -> Result<(), GpuError> {
        self.gpu.join_reductions()?;
        let Some(w) = self.wire.as_ref().map(|w| w.ptr) else { return Ok(()) };
        for (g, off, len) in std::mem::take(&mut self.pending) {
            self.launch("opt_copy", 0b10, &[at(g, off as i64, ELEM), at(w, off as i64, 2)], &[len as i64])?;
        }
        Ok(())
    }

    /// The buffer of `slot`, if kept.
    fn slot(&self, slot: Slot) -> Option<DevPtr> {
        match slot {
            Slot::M => Some(self.m.ptr),
            Slot::V => Some(self.v.ptr),
            Slot::Ema => self.ema.as_ref().map(|e| e.ptr),
        }
    }
}

/// The optimizer verbs over one binding's buffers.
pub(crate) struct Step<'a, G: Gpu> {
    pub(crate) state: &'a mut State<G>,
    pub(crate) resident: &'a Resident<G>,
}

impl<G: Gpu> Step<'_, G> {
    /// Records the first failure.
    fn keep<T>(&mut self, r: Result<T, GpuError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.state.error.get_or_insert(e);
                None
            }
        }
    }
    /// The trained parameters (their f32 master weights, if kept) and the gradients of the
    /// last execution, as the binding holds them now.
    fn arenas(&mut self) -> Result<(DevPtr, DevPtr), GpuError> {
        assert_eq!(self.resident.layout.trained_len, self.state.len(), "the program was bound for this optimizer");
        let g = self.resident.grad_arena.ok_or_else(|| GpuError("the program keeps no gradients".into()))?;
        let p = self.state.master.as_ref().map_or(self.resident.param_arena, |m| m.ptr);
        Ok((p, g))
    }
    /// Whether the program's gradients are bf16.
    fn bf16(&self) -> bool {
        self.resident.bf16
    }
    /// The trained parameters and the gradients `which` names, with whether those are bf16.
    fn params_and(&mut self, which: Grads) -> Result<(DevPtr, DevPtr, bool), GpuError> {
        let (p, g) = self.arenas()?;
        Ok(match (which, &self.state.acc) {
            (Grads::Accumulated, Some(acc)) => (p, acc.ptr, false),
            _ => (p, g, self.bf16()),
        })
    }
    fn try_accumulate(&mut self, first: bool) -> Result<(), GpuError> {
        let n = self.state.len();
        let (_, g) = self.arenas()?;
        if self.state.acc.is_none() {
            self.state.acc = Some(DevBuf::zeroed(&self.state.gpu, n * ELEM)?);
        }
        let acc = self.state.acc.as_ref().map(|a| a.ptr).expect("allocated above");
        let mask = if self.bf16() { 0b10 } else { 0 };
        self.state.launch(if first { "opt_copy" } else { "opt_accumulate" }, mask, &[acc, g], &[n as i64])
    }
    fn try_norm(&mut self, which: Grads) -> Result<f64, GpuError> {
        let n = self.state.len();
        let (_, g, bf16) = self.params_and(which)?;
        let mask = u64::from(bf16);
        let (rows, tail) = (n / NORM_ROW, n % NORM_ROW);
        let partial = self.state.partial.ptr;
        if rows > 0 {
            self.state.launch("opt_sum_squares", mask, &[g, partial], &[rows as i64, NORM_ROW as i64])?;
        }
        self.state.gpu.zero(at(partial, rows as i64, ELEM), ELEM)?;
        if tail > 0 {
            let rest = at(g, (rows * NORM_ROW) as i64, esize(DType::F32, bf16));
            self.state.launch("opt_sum_squares", mask, &[rest, at(partial, rows as i64, ELEM)], &[1, tail as i64])?;
        }
        let mut bytes = vec![0u8; (rows + 1) * ELEM];
        self.state.gpu.download(partial, &mut bytes)?;
        Ok(f32s(&bytes).iter().map(|&x| x as f64).sum::<f64>().sqrt())
    }
    fn try_adamw(&mut self, step: &AdamStep, which: Grads) -> Result<(), GpuError> {
        let n = self.state.len();
        let (p, g, bf16) = self.params_and(which)?;
        let c = &step.cfg;
        let hyper = optim::adamw_scalars(c.beta1, c.beta2, c.eps, c.weight_decay, step.lr, step.t, step.grad_scale);
        let bytes: Vec<u8> = hyper.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.state.gpu.upload(self.state.hyper.ptr, &bytes)?;
        let bufs = [p, self.state.m.ptr, self.state.v.ptr, g, self.state.hyper.ptr];
        self.state.launch("opt_adamw", if bf16 { 0b1000 } else { 0 }, &bufs, &[n as i64])?;
        if self.state.master.is_some() {
            // The updated master weights, rounded, are what the program computes with.
            self.state.launch("opt_copy", 0b01, &[self.resident.param_arena, p], &[n as i64])?;
        }
        Ok(())
    }
    fn try_combine(&mut self, which: Grads, reduce: &Reduction) -> Result<(), GpuError> {
        let n = self.state.len();
        let (_, g, bf16) = self.params_and(which)?;
        self.state.reduce(g, (0, n), bf16, reduce)?;
        self.state.finish_reductions()
    }

    fn try_start_ema(&mut self) -> Result<(), GpuError> {
        let n = self.state.len();
        let (p, _) = self.arenas()?;
        let ema = DevBuf::zeroed(&self.state.gpu, n * ELEM)?;
        self.state.launch("opt_copy", 0, &[ema.ptr, p], &[n as i64])?;
        self.state.ema = Some(ema);
        Ok(())
    }
    fn try_update_ema(&mut self, decay: f64) -> Result<(), GpuError> {
        let n = self.state.len();
        let (p, _) = self.arenas()?;
        let Some(ema) = self.state.ema.as_ref().map(|e| e.ptr) else { return Ok(()) };
        self.state.gpu.upload(self.state.hyper.ptr, &((1.0 - decay) as f32).to_le_bytes())?;
        self.state.launch("opt_ema", 0, &[ema, p, self.state.hyper.ptr], &[n as i64])
    }
}

impl<G: Gpu> Optimizer for Step<'_, G> {
    fn accumulate(&mut self, first: bool) {
        let r = self.try_accumulate(first);
        self.keep(r);
    }

    fn gradient_norm(&mut self, which: Grads) -> f64 {
        let r = self.try_norm(which);
        self.keep(r).unwrap_or(f64::NAN)
    }

    fn adamw(&mut self, step: &AdamStep, which: Grads) {
        let r = self.try_adamw(step, which);
        self.keep(r);
    }

    fn combine_gradients(&mut self, which: Grads, reduce: &Reduction) -> Result<Grads, DistError> {
        self.try_combine(which, reduce).map_err(|e| DistError(e.0))?;
        Ok(which)
    }

    fn start_ema(&mut self) {
        let r = self.try_start_ema();
        self.keep(r);
    }

    fn update_ema(&mut self, decay: f64) {
        let r = self.try_update_ema(decay);
        self.keep(r);
    }

    fn has_ema(&self) -> bool {
        self.state.ema.is_some()
    }

    fn read_state(&mut self, slot: Slot, k: usize) -> Option<Vec<f32>> {
        let (off, len) = self.state.range(k)?;
        let p = self.state.slot(slot)?;
        let mut bytes = vec![0u8; len * ELEM];
        let r = self.state.gpu.download(at(p, off as i64, ELEM), &mut bytes);
        self.keep(r)?;
        Some(f32s(&bytes))
    }

    fn write_state(&mut self, slot: Slot, k: usize, values: &[f32]) -> bool {
        let Some((off, _)) = self.state.range(k).filter(|r| r.1 == values.len()) else { return false };
        let Some(p) = self.state.slot(slot) else { return false };
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let r = self.state.gpu.upload(at(p, off as i64, ELEM), &bytes);
        self.keep(r).is_some()
    }
}
