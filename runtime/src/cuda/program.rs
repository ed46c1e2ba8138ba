//! A graph compiled for a GPU and its buffers in device memory. The fused program's kernels
//! are rendered to CUDA C and loaded through the [`Gpu`]'s verbs; binding places inputs,
//! the parameter arena and the memory plan's slots in device memory (the device-neutral
//! [`Layout`]) and maps each matrix product onto one cuBLAS call (gathering first an
//! operand cuBLAS cannot read through its strides); executing launches each step in order
//! on the GPU's stream. Nothing crosses to the host but what a caller reads.

use super::gpu::{bf16_bits, bf16_value, operand, Batch, DevPtr, GemmCall, Gpu, GpuError, Operand};
use crate::interp::RunError;
use crate::layout::{Axis, GemmShape, Layout, Place};
use crate::tensor::{Data, HostTensor};
use muse_compiler::ir::{DType, Graph, NodeIndex};
use muse_compiler::kernel::{self, Kernel, KernelProgram, Step};
use muse_compiler::render::cuda::{self, Launch, Storage, MAX_SIZES};
use std::collections::HashMap;
use std::sync::Arc;

/// The gather of product operands cuBLAS cannot read in place (kernels/gather.cu).
pub const GATHER: &str = include_str!("../../../kernels/gather.cu");

/// Bytes per element of f32, i32 and truth values (as i32) buffers.
pub(crate) const ELEM: usize = 4;

/// Bytes per element of a buffer of `dtype`, with floats in bf16 or not.
pub(crate) fn esize(dtype: DType, bf16: bool) -> usize {
    if bf16 && dtype == DType::F32 {
        2
    } else {
        ELEM
    }
}

/// Device memory of one allocation, returned when dropped.
pub(crate) struct DevBuf<G: Gpu> {
    gpu: Arc<G>,
    /// Its address.
    pub(crate) ptr: DevPtr,
}

impl<G: Gpu> DevBuf<G> {
    /// `bytes` of zeroed device memory.
    pub(crate) fn zeroed(gpu: &Arc<G>, bytes: usize) -> Result<DevBuf<G>, GpuError> {
        Ok(DevBuf { gpu: gpu.clone(), ptr: gpu.alloc(bytes)? })
    }
    /// Device memory holding `bytes`.
    pub(crate) fn with(gpu: &Arc<G>, bytes: &[u8]) -> Result<DevBuf<G>, GpuError> {
        let b = DevBuf::zeroed(gpu, bytes.len())?;
        gpu.upload(b.ptr, bytes)?;
        Ok(b)
    }
}

impl<G: Gpu> Drop for DevBuf<G> {
    fn drop(&mut self) {
        self.gpu.free(self.ptr);
    }
}

/// `p` moved by `elems` elements of `esize` bytes.
pub(crate) fn at(p: DevPtr, elems: i64, esize: usize) -> DevPtr {
    p.wrapping_add_signed(elems * esize as i64)
}

/// The sizes as the kernels take them (`MuseSizes`).
pub(crate) fn padded(sizes: &[i64]) -> [i64; MAX_SIZES] {
    let mut s = [0i64; MAX_SIZES];
    s[..sizes.len().min(MAX_SIZES)].copy_from_slice(&sizes[..sizes.len().min(MAX_SIZES)]);
    s
}

/// Launches kernel `k` (loaded as `f`, its buffers stored as `storage`) over `bufs` at
/// `sizes`, zeroing a scatter-add's output first.
pub(crate) fn run_kernel<G: Gpu>(
    gpu: &G,
    f: G::Func,
    (k, storage): (&Kernel, Storage),
    bufs: &[DevPtr],
    sizes: &[i64],
    seed: u64,
) -> Result<(), GpuError> {
    let l = cuda::launch(k, sizes, gpu.target());
    if let Some((b, n)) = l.zero {
        let b = b as usize;
        let e = if storage.bf16(b, k.bufs[b].dtype) { 2 } else { ELEM };
        gpu.zero(bufs[b], n.max(0) as usize * e)?;
    }
    gpu.launch(f, &l, bufs, &padded(sizes), seed)
}

/// Host bytes of a tensor as a buffer holds it (floats in bf16 or not).
pub(crate) fn bytes_of(t: &HostTensor, bf16: bool) -> Vec<u8> {
    match &t.data {
        Data::F(v) if bf16 => v.iter().flat_map(|&x| bf16_bits(x as f32).to_le_bytes()).collect(),
        Data::F(v) => v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
        Data::I(v) => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        Data::B(v) => v.iter().flat_map(|&x| i32::from(x).to_le_bytes()).collect(),
    }
}

/// f32s from host bytes.
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

/// A tensor of `dtype` and `shape` from a buffer's bytes (floats in bf16 or not).
fn tensor_of(bytes: &[u8], dtype: DType, shape: Vec<usize>, bf16: bool) -> HostTensor {
    if bf16 && dtype == DType::F32 {
        let v = bytes.chunks_exact(2).map(|c| bf16_value(u16::from_le_bytes([c[0], c[1]])) as f64).collect();
        return HostTensor { shape, data: Data::F(v) };
    }
    let words = bytes.chunks_exact(4).map(|c| c.try_into().expect("4 bytes"));
    let data = match dtype {
        DType::F32 => Data::F(words.map(|w| f32::from_le_bytes(w) as f64).collect()),
        DType::I32 => Data::I(words.map(i32::from_le_bytes).collect()),
        DType::Bool => Data::B(words.map(|w| i32::from_le_bytes(w) != 0).collect()),
    };
    HostTensor { shape, data }
}

/// A GPU error as a run error.
pub(crate) fn run_error(e: GpuError) -> RunError {
    RunError::Program(e.0)
}

/// A graph compiled for a GPU.
pub struct GpuProgram<G: Gpu> {
    gpu: Arc<G>,
    /// The kernels and products, in order.
    pub program: KernelProgram,
    /// The CUDA translation units it was compiled from.
    pub units: Vec<String>,
    /// The values it computes.
    pub requested: Vec<NodeIndex>,
    /// How float buffers are stored.
    pub storage: Storage,
    /// Per step: the kernel, or a product's epilogue (run over the whole result after it).
    funcs: Vec<Option<G::Func>>,
    /// The gathers of 4-byte and 2-byte elements.
    gather: [G::Func; 2],
}

impl<G: Gpu> GpuProgram<G> {
    /// Fuses, lowers, renders and loads what computing `requested` takes, float buffers
    /// stored as `storage` (f32 or bf16).
    pub fn compile(
        gpu: &Arc<G>,
        g: &Graph,
        requested: &[NodeIndex],
        storage: Storage,
    ) -> Result<GpuProgram<G>, GpuError> {
        Self::compile_edited(gpu, g, requested, storage, &|_| {})
    }

    /// As [`GpuProgram::compile`], with `edit` applied to each translation unit before it is
    /// compiled (the tests' mutations of generated code).
    pub fn compile_edited(
        gpu: &Arc<G>,
        g: &Graph,
        requested: &[NodeIndex],
        storage: Storage,
        edit: &dyn Fn(&mut String),
    ) -> Result<GpuProgram<G>, GpuError> {
        let (program, _) = kernel::fuse(g, requested);
        if program.symbols.len() > MAX_SIZES {
            return Err(GpuError(format!(
                "the program has {} symbolic sizes; generated CUDA takes at most {MAX_SIZES}",
                program.symbols.len()
            )));
        }
        let kernels = program.generated();
        let mut units = render_units(&kernels, storage);
        units.push(GATHER.to_string());
        units.iter_mut().for_each(edit);
        let mut names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
        names.extend(["muse_gather", "muse_gather16"]);
        let mut loaded = gpu.load(&units, &names)?;
        let gather16 = loaded.pop().expect("the gathers were loaded");
        let gather = [loaded.pop().expect("the gathers were loaded"), gather16];
        let mut loaded = loaded.into_iter();
        let funcs = program
            .steps
            .iter()
            .map(|s| match s {
                Step::Kernel(_) | Step::MatMul(kernel::MatMulStep { epilogue: Some(_), .. }) => loaded.next(),
                Step::MatMul(_) => None,
            })
            .collect();
        Ok(GpuProgram { gpu: gpu.clone(), program, units, requested: requested.to_vec(), storage, funcs, gather })
    }

    /// Launches per execution.
    pub fn launches(&self) -> usize {
        self.program.steps.len()
    }

    /// Places inputs, parameters and the planned intermediates in device memory; the
    /// parameters of `trained` first in the parameter arena, their gradients side by side in
    /// the plan's arena.
    pub fn bind(
        &self,
        g: &Graph,
        inputs: &HashMap<String, HostTensor>,
        params: &HashMap<String, HostTensor>,
        trained: &[(String, NodeIndex)],
    ) -> Result<Resident<G>, RunError> {
        let layout = Layout::new(g, &self.program, &self.requested, inputs, params, trained)?;
        Resident::new(&self.gpu, layout, inputs, params, &self.program, self.storage, self.gather).map_err(run_error)
    }

    /// Runs step `i` over resident buffers.
    pub fn run_step(&self, i: usize, r: &Resident<G>, seed: u64) -> Result<(), GpuError> {
        let gpu = &*self.gpu;
        let sizes = &r.layout.sizes;
        match &self.program.steps[i] {
            Step::Kernel(k) => {
                let bufs: Vec<DevPtr> = k.buffers.iter().map(|n| r.ptrs[n]).collect();
                let f = self.funcs[i].expect("kernel steps are loaded");
                run_kernel(gpu, f, (&k.kernel, self.storage), &bufs, sizes, seed)
            }
            Step::MatMul(m) => {
                let p = &r.products[&i];
                for (f, l, bufs, s) in &p.gathers {
                    gpu.launch(*f, l, bufs, s, 0)?;
                }
                gpu.gemm(&p.call)?;
                match (&m.epilogue, self.funcs[i]) {
                    (Some(e), Some(f)) => {
                        let bufs: Vec<DevPtr> = e.buffers.iter().map(|n| r.ptrs[n]).collect();
                        run_kernel(gpu, f, (&e.kernel, self.storage), &bufs, sizes, seed)
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Runs every step and waits for the GPU (so that a caller's timing is the GPU's, and a
    /// kernel's fault is this execution's error); `observe` (step, value, tensor) after each
    /// step's writes, stopping when it returns false.
    pub fn execute(
        &self,
        g: &Graph,
        r: &Resident<G>,
        seed: u64,
        observe: Option<&mut dyn FnMut(usize, NodeIndex, HostTensor) -> bool>,
    ) -> Result<(), GpuError> {
        self.execute_with(g, r, seed, observe, &mut |_| Ok(()))
    }

    /// As [`GpuProgram::execute`], calling `after(i)` once step `i` is issued, and
    /// `after(steps)` once the trained gradients computed outside the gradient arena are
    /// copied there, before the final wait.
    pub fn execute_with(
        &self,
        g: &Graph,
        r: &Resident<G>,
        seed: u64,
        mut observe: Option<&mut dyn FnMut(usize, NodeIndex, HostTensor) -> bool>,
        after: &mut dyn FnMut(usize) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        for i in 0..self.program.steps.len() {
            self.run_step(i, r, seed)?;
            after(i)?;
            if let Some(observe) = observe.as_mut() {
                for out in self.program.steps[i].writes() {
                    if !observe(i, out, r.read(g, out)?.expect("a step's output is stored")) {
                        return Ok(());
                    }
                }
            }
        }
        // Once per pass: a later copy would undo what the optimizer's verbs do there (the
        // sum over ranks).
        r.gather_gradients()?;
        after(self.program.steps.len())?;
        self.gpu.synchronize()
    }

    /// Runs the program `runs` times, timing each step between synchronisations: the median
    /// milliseconds per step, in order.
    pub fn profile(&self, r: &Resident<G>, seed: u64, runs: usize) -> Result<Vec<f64>, GpuError> {
        self.gpu.synchronize()?;
        crate::device::median_step_times(self.program.steps.len(), runs, |i| {
            self.run_step(i, r, seed)?;
            self.gpu.synchronize()
        })
    }
}

/// The kernels as CUDA translation units, a few dozen kernels each (NVRTC compiles the
/// units in parallel; the simulation's compiler too).
pub fn render_units(kernels: &[&Kernel], storage: Storage) -> Vec<String> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let per_unit = kernels.len().div_ceil(cores * 2).max(32);
    kernels.chunks(per_unit).map(|c| cuda::render_program(c, storage)).collect()
}

/// One product as the GPU runs it: gathers of operands into contiguous scratch, then one
/// cuBLAS call.
struct Product<G: Gpu> {
    /// The gather kernel, its launch, buffers and sizes, per gathered operand.
    gathers: Vec<Gather<G>>,
    call: GemmCall,
}

/// One launch of a gather kernel.
type Gather<G> = (<G as Gpu>::Func, Launch, [DevPtr; 5], [i64; MAX_SIZES]);

/// A product operand ready for cuBLAS: where each batch element starts, and how it is read.
struct Ready {
    starts: Vec<DevPtr>,
    op: Operand,
}

/// The buffers of one binding in device memory.
pub struct Resident<G: Gpu> {
    /// Where every value lives.
    pub layout: Layout,
    /// The address of every stored value (before aliases).
    ptrs: HashMap<NodeIndex, DevPtr>,
    /// The parameter arena.
    pub(crate) param_arena: DevPtr,
    /// The gradient arena (the plan's arena slot), when gradients are pinned.
    pub(crate) grad_arena: Option<DevPtr>,
    slot_ptrs: Vec<DevPtr>,
    external: HashMap<NodeIndex, DevPtr>,
    products: HashMap<usize, Product<G>>,
    /// Floats are stored in bf16.
    pub(crate) bf16: bool,
    gpu: Arc<G>,
    /// Every allocation, returned when the binding is dropped.
    _bufs: Vec<DevBuf<G>>,
}

impl<G: Gpu> Resident<G> {
    fn new(
        gpu: &Arc<G>,
        layout: Layout,
        inputs: &HashMap<String, HostTensor>,
        params: &HashMap<String, HostTensor>,
        program: &KernelProgram,
        storage: Storage,
        gather: [G::Func; 2],
    ) -> Result<Resident<G>, GpuError> {
        let bf16 = storage == Storage::Bf16;
        let fsize = esize(DType::F32, bf16);
        let mut bufs = Vec::new();
        let mut keep = |b: DevBuf<G>| {
            let p = b.ptr;
            bufs.push(b);
            p
        };
        let mut external = HashMap::new();
        for (n, held) in &layout.external {
            let t = Layout::source(held, inputs, params);
            external.insert(*n, keep(DevBuf::with(gpu, &bytes_of(t, bf16))?));
        }
        let slot_ptrs: Vec<DevPtr> = layout
            .plan
            .slots
            .iter()
            .map(|&(dtype, n)| DevBuf::zeroed(gpu, n * esize(dtype, bf16)).map(&mut keep))
            .collect::<Result<_, _>>()?;
        let arena: Vec<u8> = if bf16 {
            layout.arena(params).iter().flat_map(|&x| bf16_bits(x).to_le_bytes()).collect()
        } else {
            layout.arena(params).iter().flat_map(|x| x.to_le_bytes()).collect()
        };
        let param_arena = keep(DevBuf::with(gpu, &arena)?);
        let mut ptrs = external.clone();
        for (n, &(off, _)) in &layout.param_at {
            ptrs.insert(*n, at(param_arena, off as i64, fsize));
        }
        for (n, &k) in &layout.plan.slot_of {
            let off = layout.plan.offset_of.get(n).copied().unwrap_or(0);
            ptrs.insert(*n, at(slot_ptrs[k], off as i64, esize(layout.plan.slots[k].0, bf16)));
        }
        let grad_arena = layout.plan.arena.map(|k| slot_ptrs[k]);
        let mut products = HashMap::new();
        for (i, step) in program.steps.iter().enumerate() {
            if let Step::MatMul(m) = step {
                let shape = &layout.gemms[&i];
                let (a, b, out) = (ptrs[&m.a_view.base], ptrs[&m.b_view.base], ptrs[&m.out]);
                let g = if bf16 { gather[1] } else { gather[0] };
                products.insert(i, product(gpu, shape, (a, b, out), (fsize, g), &mut keep)?);
            }
        }
        Ok(Resident {
            layout,
            ptrs,
            param_arena,
            grad_arena,
            slot_ptrs,
            external,
            products,
            bf16,
            gpu: gpu.clone(),
            _bufs: bufs,
        })
    }

    /// The address of a requested or planned value.
    pub(crate) fn addr(&self, n: NodeIndex) -> Option<DevPtr> {
        let fsize = esize(DType::F32, self.bf16);
        Some(match self.layout.place(n)? {
            Place::External(src) => self.external[&src],
            Place::Param(off) => at(self.param_arena, off as i64, fsize),
            Place::Slot(k, off) => at(self.slot_ptrs[k], off as i64, esize(self.layout.plan.slots[k].0, self.bf16)),
        })
    }

    /// Bytes per element of node `n`'s buffer.
    fn esize_of(&self, g: &Graph, n: NodeIndex) -> usize {
        esize(g.ty(n).dtype, self.bf16)
    }

    /// A requested or planned value (none for another node).
    pub fn read(&self, g: &Graph, n: NodeIndex) -> Result<Option<HostTensor>, GpuError> {
        let (Some(shape), Some(p)) = (self.layout.shapes.get(&n), self.addr(n)) else { return Ok(None) };
        let mut bytes = vec![0u8; shape.iter().product::<usize>() * self.esize_of(g, n)];
        self.gpu.download(p, &mut bytes)?;
        Ok(Some(tensor_of(&bytes, g.ty(n).dtype, shape.clone(), self.bf16)))
    }

    /// Parameter `name` as it is now.
    pub fn read_param(&self, g: &Graph, name: &str) -> Result<Option<HostTensor>, GpuError> {
        let (Some(&n), Some(shape)) = (self.layout.params.get(name), self.layout.param_shapes.get(name)) else {
            return Ok(None);
        };
        let Some(p) = self.addr(n) else { return Ok(None) };
        let mut bytes = vec![0u8; shape.iter().product::<usize>() * self.esize_of(g, n)];
        self.gpu.download(p, &mut bytes)?;
        Ok(Some(tensor_of(&bytes, g.ty(n).dtype, shape.clone(), self.bf16)))
    }

    /// Overwrites parameter `name` (false when the graph has none).
    pub fn write_param(&self, name: &str, t: &HostTensor) -> Result<bool, RunError> {
        let (Some(&n), Some(shape)) = (self.layout.params.get(name), self.layout.param_shapes.get(name)) else {
            return Ok(false);
        };
        let Some(p) = self.addr(n) else { return Ok(false) };
        if t.len() != shape.iter().product::<usize>() {
            return Err(RunError::ParamShape {
                name: name.to_string(),
                expected: shape.clone(),
                found: t.shape.clone(),
            });
        }
        self.gpu.upload(p, &bytes_of(t, self.bf16)).map_err(run_error)?;
        Ok(true)
    }

    /// Overwrites input `name` for the next execution (the bound shape and type).
    pub fn write_input(&self, name: &str, t: &HostTensor, dtype: DType) -> Result<(), RunError> {
        let Some((n, shape)) = self.layout.inputs.get(name) else { return Ok(()) };
        if &t.shape != shape {
            return Err(RunError::InputShape {
                name: name.to_string(),
                expected: format!("{shape:?} (the shape this program was bound to)"),
                found: t.shape.clone(),
                why: "a bound program keeps its batch size".into(),
            });
        }
        let same =
            matches!((&t.data, dtype), (Data::F(_), DType::F32) | (Data::I(_), DType::I32) | (Data::B(_), DType::Bool));
        if !same {
            return Err(RunError::InputDType {
                name: name.to_string(),
                expected: dtype.to_string(),
                found: t.dtype().to_string(),
            });
        }
        self.gpu.upload(self.external[n], &bytes_of(t, self.bf16)).map_err(run_error)
    }

    /// The forms of cuBLAS call the products use (the tests' check that each is reached).
    #[cfg(test)]
    pub(crate) fn product_forms(&self) -> Vec<&'static str> {
        let mut forms = Vec::new();
        for p in self.products.values() {
            let c = &p.call;
            if c.op_a.trans || c.op_b.trans {
                forms.push("transposed");
            }
            if !p.gathers.is_empty() {
                forms.push("gathered");
            }
            match c.batch {
                Batch::Strided { a, b, .. } if c.count > 1 => {
                    forms.push("strided batch");
                    if a == 0 || b == 0 {
                        forms.push("broadcast");
                    }
                }
                Batch::Pointers => forms.push("pointer batch"),
                Batch::Strided { .. } => {}
            }
        }
        forms.sort();
        forms.dedup();
        forms
    }

    /// Copies the trained gradients the program did not compute in the gradient arena to
    /// their places there (device to device), once after each execution.
    pub(crate) fn gather_gradients(&self) -> Result<(), GpuError> {
        let Some(arena) = self.grad_arena else { return Ok(()) };
        let fsize = esize(DType::F32, self.bf16);
        for &(off, g) in &self.layout.grad_copies {
            let len: usize = self.layout.shapes[&g].iter().product();
            let src = self.addr(g).ok_or_else(|| GpuError(format!("gradient {g:?} is not stored")))?;
            self.gpu.copy(at(arena, off as i64, fsize), src, len * fsize)?;
        }
        Ok(())
    }
}

/// Whether `v` steps by one non-negative amount; that amount.
fn arithmetic(v: &[i64]) -> Option<i64> {
    let d = if v.len() > 1 { v[1] - v[0] } else { 0 };
    (d >= 0 && v.windows(2).all(|w| w[1] - w[0] == d)).then_some(d)
}

/// The offsets an axis gives its `n` positions.
fn offsets(a: &Axis, n: usize) -> Vec<i64> {
    (0..n).map(|i| a.offset(i) as i64).collect()
}

/// The product of `shape` over operands based at `a` and `b` into `out`: one cuBLAS call,
/// after gathering an operand it cannot read in place. Row-major `out = A B` is the
/// column-major `out^T = B^T A^T`, so cuBLAS's left operand is our `B`.
fn product<G: Gpu>(
    gpu: &Arc<G>,
    s: &GemmShape,
    (a, b, out): (DevPtr, DevPtr, DevPtr),
    (fsize, gather): (usize, G::Func),
    keep: &mut dyn FnMut(DevBuf<G>) -> DevPtr,
) -> Result<Product<G>, GpuError> {
    let (rows, inner, cols) = (s.rows as i64, s.inner as i64, s.cols as i64);
    let batch = s.a_offsets.len();
    let mut gathers = Vec::new();
    // One operand, `p x q` as cuBLAS sees it (our matrix transposed): read in place when
    // cuBLAS can, else gathered into a contiguous `r x c` row-major copy of our matrix.
    let mut ready = |base: DevPtr,
                     offs: &[i64],
                     (r, c): (usize, usize),
                     (ra, ca): (&Axis, &Axis),
                     gathers: &mut Vec<Gather<G>>|
     -> Result<Ready, GpuError> {
        if let (Axis::Stride(sr), Axis::Stride(sc)) = (ra, ca) {
            // Our r x c matrix transposed is c x r with strides (sc, sr).
            if let Some(op) = operand(c as i64, *sc as i64, r as i64, *sr as i64) {
                return Ok(Ready { starts: offs.iter().map(|&o| at(base, o, fsize)).collect(), op });
            }
        }
        let words = |v: Vec<i64>| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let scratch = keep(DevBuf::zeroed(gpu, (batch * r * c).max(1) * fsize)?);
        let o = keep(DevBuf::with(gpu, &words(offs.to_vec()))?);
        let rt = keep(DevBuf::with(gpu, &words(offsets(ra, r)))?);
        let ct = keep(DevBuf::with(gpu, &words(offsets(ca, c)))?);
        let total = (batch * r * c) as i64;
        let t = gpu.target();
        let block = t.max_block.min(cuda::MAX_BLOCK);
        let l =
            Launch { grid: ((total + block - 1) / block).clamp(1, t.max_grid) as u32, block: block as u32, zero: None };
        gathers.push((gather, l, [scratch, base, o, rt, ct], padded(&[batch as i64, r as i64, c as i64])));
        // Contiguous rows of `c`: cuBLAS reads our matrix transposed in place (also when empty).
        let op = Operand { trans: false, ld: (c as i64).max(1) };
        Ok(Ready { starts: (0..batch).map(|t| at(scratch, (t * r * c) as i64, fsize)).collect(), op })
    };
    let left = ready(b, &s.b_offsets, (s.inner, s.cols), (&s.b_rows, &s.b_cols), &mut gathers)?;
    let right = ready(a, &s.a_offsets, (s.rows, s.inner), (&s.a_rows, &s.a_cols), &mut gathers)?;
    let outs: Vec<DevPtr> = (0..batch).map(|t| at(out, t as i64 * rows * cols, fsize)).collect();
    let diffs = |v: &[DevPtr]| -> Vec<i64> { v.iter().map(|&p| p.wrapping_sub(v[0]) as i64 / fsize as i64).collect() };
    let strided = match (arithmetic(&diffs(&left.starts)), arithmetic(&diffs(&right.starts))) {
        (Some(sa), Some(sb)) if batch > 0 => Some(Batch::Strided { a: sa, b: sb, c: rows * cols }),
        _ => None,
    };
    let (pa, pb, pc, batch_kind) = match strided {
        Some(kind) => (left.starts[0], right.starts[0], out, kind),
        None => {
            // cuBLAS's batched form: arrays of pointers in device memory.
            let array = |v: &[DevPtr]| -> Vec<u8> { v.iter().flat_map(|p| p.to_le_bytes()).collect() };
            let pa = keep(DevBuf::with(gpu, &array(&left.starts))?);
            let pb = keep(DevBuf::with(gpu, &array(&right.starts))?);
            let pc = keep(DevBuf::with(gpu, &array(&outs))?);
            (pa, pb, pc, Batch::Pointers)
        }
    };
    let call = GemmCall {
        m: cols,
        n: rows,
        k: inner,
        a: pa,
        op_a: left.op,
        b: pb,
        op_b: right.op,
        c: pc,
        ldc: cols.max(1),
        count: batch as i64,
        batch: batch_kind,
        bf16: fsize == 2,
    };
    Ok(Product { gathers, call })
}
