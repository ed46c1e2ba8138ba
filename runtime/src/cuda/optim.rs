//! The optimizer on the GPU: the kernels of `muse_compiler::kernel::optim` rendered to CUDA
//! and run in place over the trained stretch of the parameter arena, the gradient arena
//! and the optimizer's own arenas in device memory (moments, gradient sums, weight
//! average). One launch per verb whatever the number of parameters; only the gradient
//! norm's per-row partial sums come back to the host (summed there in f64, as the CPU
//! backend does, so both give the same norm).

use super::gpu::{DevPtr, Gpu, GpuError};
use super::program::{at, f32s, run_kernel, DevBuf, Resident, ELEM};
use crate::device::{AdamStep, Grads, Optimizer, Slot};
use muse_compiler::kernel::{optim, Kernel};
use muse_compiler::render::cuda::{self, Storage};
use std::sync::Arc;

/// Rows of the gradient norm's partial sums (each summed in f32, the rows in f64).
const NORM_ROW: usize = 1024;

/// The loaded optimizer kernels, each with its kernel IR (which chooses its launch).
pub(crate) struct Kernels<G: Gpu> {
    verbs: Vec<(G::Func, Kernel)>,
}

impl<G: Gpu> Kernels<G> {
    /// Renders, compiles (or finds in the cache) and loads the optimizer kernels.
    pub(crate) fn load(gpu: &G) -> Result<Kernels<G>, GpuError> {
        let kernels = optim::all();
        let refs: Vec<&Kernel> = kernels.iter().collect();
        let names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
        let funcs = gpu.load(&[cuda::render_program(&refs, Storage::F32)], &names)?;
        Ok(Kernels { verbs: funcs.into_iter().zip(kernels.iter().cloned()).collect() })
    }

    fn verb(&self, name: &str) -> &(G::Func, Kernel) {
        self.verbs.iter().find(|(_, k)| k.name == name).expect("optim::all has every verb")
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
    kernels: Arc<Kernels<G>>,
    /// The first failure of a verb (the verbs return no errors; the next execution does).
    pub(crate) error: Option<GpuError>,
}

impl<G: Gpu> State<G> {
    /// Zero state for parameters of these lengths.
    pub(crate) fn new(gpu: &Arc<G>, lens: Vec<usize>, kernels: Arc<Kernels<G>>) -> Result<State<G>, GpuError> {
        let n: usize = lens.iter().sum();
        Ok(State {
            m: DevBuf::zeroed(gpu, n * ELEM)?,
            v: DevBuf::zeroed(gpu, n * ELEM)?,
            partial: DevBuf::zeroed(gpu, (n / NORM_ROW + 1) * ELEM)?,
            hyper: DevBuf::zeroed(gpu, 8 * ELEM)?,
            acc: None,
            ema: None,
            gpu: gpu.clone(),
            lens,
            kernels,
            error: None,
        })
    }
    fn len(&self) -> usize {
        self.lens.iter().sum()
    }
    fn range(&self, k: usize) -> Option<(usize, usize)> {
        let off: usize = self.lens.get(..k)?.iter().sum();
        Some((off, *self.lens.get(k)?))
    }
    /// Launches verb `name` over `bufs` at `sizes`.
    fn launch(&self, name: &str, bufs: &[DevPtr], sizes: &[i64]) -> Result<(), GpuError> {
        let (f, k) = self.kernels.verb(name);
        run_kernel(&*self.gpu, *f, k, bufs, sizes, 0)
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
    /// The trained parameters and their gradients, as the binding holds them now.
    fn arenas(&mut self) -> Result<(DevPtr, DevPtr), GpuError> {
        assert_eq!(self.resident.layout.trained_len, self.state.len(), "the program was bound for this optimizer");
        self.resident.gather_gradients()?;
        let g = self.resident.grad_arena.ok_or_else(|| GpuError("the program keeps no gradients".into()))?;
        Ok((self.resident.param_arena, g))
    }
    /// The trained parameters and the gradients `which` names.
    fn params_and(&mut self, which: Grads) -> Result<(DevPtr, DevPtr), GpuError> {
        let (p, g) = self.arenas()?;
        Ok(match (which, &self.state.acc) {
            (Grads::Accumulated, Some(acc)) => (p, acc.ptr),
            _ => (p, g),
        })
    }
    fn try_accumulate(&mut self, first: bool) -> Result<(), GpuError> {
        let n = self.state.len();
        let (_, g) = self.arenas()?;
        if self.state.acc.is_none() {
            self.state.acc = Some(DevBuf::zeroed(&self.state.gpu, n * ELEM)?);
        }
        let acc = self.state.acc.as_ref().map(|a| a.ptr).expect("allocated above");
        self.state.launch(if first { "opt_copy" } else { "opt_accumulate" }, &[acc, g], &[n as i64])
    }
    fn try_norm(&mut self, which: Grads) -> Result<f64, GpuError> {
        let n = self.state.len();
        let (_, g) = self.params_and(which)?;
        let (rows, tail) = (n / NORM_ROW, n % NORM_ROW);
        let partial = self.state.partial.ptr;
        if rows > 0 {
            self.state.launch("opt_sum_squares", &[g, partial], &[rows as i64, NORM_ROW as i64])?;
        }
        self.state.gpu.zero(at(partial, rows as i64), ELEM)?;
        if tail > 0 {
            let rest = at(g, (rows * NORM_ROW) as i64);
            self.state.launch("opt_sum_squares", &[rest, at(partial, rows as i64)], &[1, tail as i64])?;
        }
        let mut bytes = vec![0u8; (rows + 1) * ELEM];
        self.state.gpu.download(partial, &mut bytes)?;
        Ok(f32s(&bytes).iter().map(|&x| x as f64).sum::<f64>().sqrt())
    }
    fn try_adamw(&mut self, step: &AdamStep, which: Grads) -> Result<(), GpuError> {
        let n = self.state.len();
        let (p, g) = self.params_and(which)?;
        let c = &step.cfg;
        let hyper = optim::adamw_scalars(c.beta1, c.beta2, c.eps, c.weight_decay, step.lr, step.t, step.grad_scale);
        let bytes: Vec<u8> = hyper.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.state.gpu.upload(self.state.hyper.ptr, &bytes)?;
        let bufs = [p, self.state.m.ptr, self.state.v.ptr, g, self.state.hyper.ptr];
        self.state.launch("opt_adamw", &bufs, &[n as i64])
    }
    fn try_start_ema(&mut self) -> Result<(), GpuError> {
        let n = self.state.len();
        let (p, _) = self.arenas()?;
        let ema = DevBuf::zeroed(&self.state.gpu, n * ELEM)?;
        self.state.launch("opt_copy", &[ema.ptr, p], &[n as i64])?;
        self.state.ema = Some(ema);
        Ok(())
    }
    fn try_update_ema(&mut self, decay: f64) -> Result<(), GpuError> {
        let n = self.state.len();
        let (p, _) = self.arenas()?;
        let Some(ema) = self.state.ema.as_ref().map(|e| e.ptr) else { return Ok(()) };
        self.state.gpu.upload(self.state.hyper.ptr, &((1.0 - decay) as f32).to_le_bytes())?;
        self.state.launch("opt_ema", &[ema, p, self.state.hyper.ptr], &[n as i64])
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
        let r = self.state.gpu.download(at(p, off as i64), &mut bytes);
        self.keep(r)?;
        Some(f32s(&bytes))
    }

    fn write_state(&mut self, slot: Slot, k: usize, values: &[f32]) -> bool {
        let Some((off, _)) = self.state.range(k).filter(|r| r.1 == values.len()) else { return false };
        let Some(p) = self.state.slot(slot) else { return false };
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let r = self.state.gpu.upload(at(p, off as i64), &bytes);
        self.keep(r).is_some()
    }
}
