//! Host tensors: a shape and row-major data, the currency between the user, the
//! interpreter and (later) the backends.

use muse_compiler::ir::DType;
use std::fmt;

/// Element storage. Floats are kept as f64 so the interpreter can run in f64 on request;
/// in f32 mode every float is rounded to f32 after each op.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Floating point (the IR's f32).
    F(Vec<f64>),
    /// 32-bit integers.
    I(Vec<i32>),
    /// Booleans.
    B(Vec<bool>),
}

/// A tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Sizes, outermost first.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Data,
}

impl HostTensor {
    /// A float tensor.
    pub fn f(shape: &[usize], data: Vec<f64>) -> HostTensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?} vs {} elements", data.len());
        HostTensor { shape: shape.to_vec(), data: Data::F(data) }
    }
    /// An i32 tensor.
    pub fn i(shape: &[usize], data: Vec<i32>) -> HostTensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?} vs {} elements", data.len());
        HostTensor { shape: shape.to_vec(), data: Data::I(data) }
    }
    /// A bool tensor.
    pub fn b(shape: &[usize], data: Vec<bool>) -> HostTensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?} vs {} elements", data.len());
        HostTensor { shape: shape.to_vec(), data: Data::B(data) }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The IR element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F(_) => DType::F32,
            Data::I(_) => DType::I32,
            Data::B(_) => DType::Bool,
        }
    }
    /// The float elements; panics on other types (callers check types first).
    pub fn floats(&self) -> &[f64] {
        match &self.data {
            Data::F(v) => v,
            other => panic!("expected floats, found {:?}", dtype_of(other)),
        }
    }
    /// Every element as f64 (ints and bools converted).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f64).collect(),
            Data::B(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
        }
    }
    /// Mean, standard deviation (population), min and max of the elements as floats.
    pub fn stats(&self) -> Stats {
        let v = self.to_f64();
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Stats { mean, std: var.sqrt(), min, max }
    }
}

fn dtype_of(d: &Data) -> DType {
    match d {
        Data::F(_) => DType::F32,
        Data::I(_) => DType::I32,
        Data::B(_) => DType::Bool,
    }
}

/// Summary statistics of a tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Smallest element.
    pub min: f64,
    /// Largest element.
    pub max: f64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mean {:+.6e}  std {:.6e}  min {:+.6e}  max {:+.6e}", self.mean, self.std, self.min, self.max)
    }
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// f32 to bf16 bits as CUDA's `__float2bfloat16` does it: round to nearest, ties to even; a
/// NaN stays a NaN.
pub fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// bf16 bits to f32 (exact).
pub fn bf16_value(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}
