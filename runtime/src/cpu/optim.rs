//! The CPU backend's optimizer: the kernels of `muse_compiler::kernel::optim`, rendered to
//! C and compiled like a model's, run in place over the trained stretch of the parameter
//! arena, the gradient arena and the optimizer's own arenas (moments, gradient sums, weight
//! average). One launch per verb whatever the number of parameters.

use super::compile::{self, CompileError, CompilerSettings};
use super::Prepared;
use crate::device::{AdamStep, Grads, Optimizer, Slot};
use crate::dist::{self, DistError, Reduction};
use muse_compiler::kernel::optim;
use muse_compiler::render::c;
use std::ffi::c_void;
use std::sync::Arc;

/// Rows of the gradient norm's partial sums (each summed in f32, the rows in f64).
const NORM_ROW: usize = 1024;

/// One compiled optimizer kernel.
#[derive(Clone)]
struct Verb {
    entry: compile::KernelFn,
}

/// The compiled optimizer kernels.
pub(crate) struct Kernels {
    adamw: Verb,
    sum_squares: Verb,
    accumulate: Verb,
    copy: Verb,
    ema: Verb,
    /// Keeps the functions loaded.
    _library: Arc<compile::Library>,
}

impl Kernels {
    /// Renders and compiles (or finds in the kernel cache) the optimizer kernels.
    pub(crate) fn compile(settings: &CompilerSettings) -> Result<Kernels, CompileError> {
        let kernels = optim::all();
        let refs: Vec<&muse_compiler::kernel::Kernel> = kernels.iter().collect();
        let source = c::render_program(&refs, &[], refs.len());
        super::quiet_openmp();
        let lib = compile::compile(&source, settings)?;
        let verb = |name: &str| -> Result<Verb, CompileError> { Ok(Verb { entry: lib.kernel(name)? }) };
        Ok(Kernels {
            adamw: verb("opt_adamw")?,
            sum_squares: verb("opt_sum_squares")?,
            accumulate: verb("opt_accumulate")?,
            copy: verb("opt_copy")?,
            ema: verb("opt_ema")?,
            _library: lib.clone(),
        })
    }
}

/// Calls kernel `f` over buffers `bufs` with run-time sizes `sizes`.
fn launch(f: &Verb, bufs: &mut [*mut f32], sizes: &[i64]) {
    let mut args: Vec<*mut c_void> = bufs.iter().map(|&p| p as *mut c_void).collect();
    // SAFETY: each caller passes buffers of at least the lengths `sizes` gives the kernel
    // (the trained stretch, or its rows), of f32, in the kernel's parameter order; the
    // kernels update elements in place at the index they read.
    unsafe { (f.entry)(args.as_mut_ptr(), sizes.as_ptr(), 0) };
}

/// The optimizer's state, beside the program's arenas.
pub(crate) struct State {
    /// The trained parameters' lengths, in order (their offsets follow).
    lens: Vec<usize>,
    m: Vec<f32>,
    v: Vec<f32>,
    acc: Vec<f32>,
    ema: Option<Vec<f32>>,
    partial: Vec<f32>,
    kernels: Arc<Kernels>,
}

impl State {
    /// Zero state for parameters of these lengths.
    pub(crate) fn new(lens: Vec<usize>, kernels: Arc<Kernels>) -> State {
        let n: usize = lens.iter().sum();
        State { m: vec![0.0; n], v: vec![0.0; n], acc: Vec::new(), ema: None, partial: Vec::new(), lens, kernels }
    }
    fn len(&self) -> usize {
        self.m.len()
    }
    fn range(&self, k: usize) -> Option<std::ops::Range<usize>> {
        let off: usize = self.lens.get(..k)?.iter().sum();
        Some(off..off + *self.lens.get(k)?)
    }
}

/// The optimizer verbs over one program's buffers.
pub(crate) struct Step<'a> {
    pub(crate) state: &'a mut State,
    pub(crate) prep: &'a mut Prepared,
}

impl Step<'_> {
    /// The trained parameters and their gradients, as the program holds them now.
    fn arenas(&mut self) -> (*mut f32, *mut f32) {
        assert_eq!(self.prep.layout.trained_len, self.state.len(), "the program was bound for this optimizer");
        self.prep.trained_arenas().unwrap_or((std::ptr::null_mut(), std::ptr::null_mut()))
    }
    /// The trained parameters and the gradients `which` names.
    fn params_and(&mut self, which: Grads) -> (*mut f32, *mut f32) {
        let (p, g) = self.arenas();
        match which {
            Grads::Pass => (p, g),
            Grads::Accumulated => (p, self.state.acc.as_mut_ptr()),
        }
    }
}

impl Optimizer for Step<'_> {
    fn accumulate(&mut self, first: bool) {
        let n = self.state.len();
        let (_, g) = self.arenas();
        if self.state.acc.len() != n {
            self.state.acc = vec![0.0; n];
        }
        let f = if first { &self.state.kernels.copy } else { &self.state.kernels.accumulate };
        launch(f, &mut [self.state.acc.as_mut_ptr(), g], &[n as i64]);
    }

    fn gradient_norm(&mut self, which: Grads) -> f64 {
        let n = self.state.len();
        let (_, g) = self.params_and(which);
        let (rows, tail) = (n / NORM_ROW, n % NORM_ROW);
        self.state.partial.resize(rows + 1, 0.0);
        let partial = self.state.partial.as_mut_ptr();
        if rows > 0 {
            launch(&self.state.kernels.sum_squares, &mut [g, partial], &[rows as i64, NORM_ROW as i64]);
        }
        self.state.partial[rows] = 0.0;
        if tail > 0 {
            // SAFETY: `rows * NORM_ROW + tail` is the stretch's length; `partial` has rows + 1.
            let (rest, last) = unsafe { (g.add(rows * NORM_ROW), partial.add(rows)) };
            launch(&self.state.kernels.sum_squares, &mut [rest, last], &[1, tail as i64]);
        }
        self.state.partial.iter().map(|&x| x as f64).sum::<f64>().sqrt()
    }

    fn combine_gradients(&mut self, which: Grads, reduce: &Reduction) -> Result<Grads, DistError> {
        let n = self.state.len();
        let (_, g) = self.params_and(which);
        if n > 0 && !g.is_null() {
            // SAFETY: `g` is the gradient arena (or the accumulators) of `n` floats, and
            // nothing else reads or writes it during the call.
            dist::sum_host(unsafe { std::slice::from_raw_parts_mut(g, n) }, reduce)?;
        }
        Ok(which)
    }

    fn adamw(&mut self, step: &AdamStep, which: Grads) {
        let n = self.state.len();
        let (p, g) = self.params_and(which);
        let c = &step.cfg;
        let mut hyper = optim::adamw_scalars(c.beta1, c.beta2, c.eps, c.weight_decay, step.lr, step.t, step.grad_scale);
        let bufs = [p, self.state.m.as_mut_ptr(), self.state.v.as_mut_ptr(), g, hyper.as_mut_ptr()];
        launch(&self.state.kernels.adamw, &mut { bufs }, &[n as i64]);
    }

    fn start_ema(&mut self) {
        let n = self.state.len();
        let (p, _) = self.arenas();
        let mut ema = vec![0.0f32; n];
        launch(&self.state.kernels.copy, &mut [ema.as_mut_ptr(), p], &[n as i64]);
        self.state.ema = Some(ema);
    }

    fn update_ema(&mut self, decay: f64) {
        let n = self.state.len();
        let (p, _) = self.arenas();
        let Some(ema) = self.state.ema.as_mut() else { return };
        let mut hyper = [(1.0 - decay) as f32];
        launch(&self.state.kernels.ema, &mut [ema.as_mut_ptr(), p, hyper.as_mut_ptr()], &[n as i64]);
    }

    fn has_ema(&self) -> bool {
        self.state.ema.is_some()
    }

    fn read_state(&mut self, slot: Slot, k: usize) -> Option<Vec<f32>> {
        let r = self.state.range(k)?;
        let v = match slot {
            Slot::M => &self.state.m,
            Slot::V => &self.state.v,
            Slot::Ema => self.state.ema.as_ref()?,
        };
        Some(v[r].to_vec())
    }

    fn write_state(&mut self, slot: Slot, k: usize, values: &[f32]) -> bool {
        let Some(r) = self.state.range(k).filter(|r| r.len() == values.len()) else { return false };
        let v = match slot {
            Slot::M => &mut self.state.m,
            Slot::V => &mut self.state.v,
            Slot::Ema => match self.state.ema.as_mut() {
                Some(e) => e,
                None => return false,
            },
        };
        v[r].copy_from_slice(values);
        true
    }
}
